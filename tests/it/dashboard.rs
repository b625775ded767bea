//! The dashboard at `/ui/` in a real headless Chromium, driven through
//! chromedriver (WebDriver): it asks for the admin token, then shows the routes
//! and target states that the JSON API reports, a target going down turns red
//! within one refresh, `/explain` answers from its form, and the browser logs
//! no error on the way. Skipped, with a printed reason, without `chromium` and
//! `chromedriver` (Debian's packages); `TOLLGATE_REQUIRE_BROWSER=1` (set by CI)
//! makes that a failure.

use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::*;

const TOKEN: &str = "dashboard-test-token-0123456789";
/// Configured in a route's header edit: must never reach the page.
const HEADER_SECRET: &str = "Bearer upstream-s3cret-value";

/// A chromedriver process and one browser session on it; both end on drop.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {n}")])
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        (found.status.success() && !path.is_empty()).then_some(path)
    })
}

/// Starts chromedriver and a headless Chromium session, or says why not.
async fn browser() -> Option<Browser> {
    let (Some(chromium), Some(chromedriver)) = (
        find(&["chromium", "chromium-browser"]),
        find(&["chromedriver"]),
    ) else {
        let why = "chromium and chromedriver are not installed \
                   (apt-get install -y chromium chromium-driver)";
        assert!(
            std::env::var_os("TOLLGATE_REQUIRE_BROWSER").is_none(),
            "TOLLGATE_REQUIRE_BROWSER is set but {why}"
        );
        eprintln!("skipping the dashboard browser test: {why}");
        return None;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Browser {
        client: None,
        driver,
        _profile: profile,
    };
    let webdriver = format!("http://127.0.0.1:{port}");
    wait_until("chromedriver to answer /status", async || {
        match get(&format!("{webdriver}/status")).await {
            Ok(r) if r.json()["value"]["ready"] == true => Ok(()),
            Ok(r) => Err(r.text()),
            Err(e) => Err(e),
        }
    })
    .await;
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            // Without the background-networking flags Chromium keeps trying
            // hosts this machine cannot reach.
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a chromium session");
    browser.client = Some(client);
    Some(browser)
}

/// chromedriver's log of the page: console messages, script errors, failed
/// loads (`POST /session/{id}/se/log`, a Chromium extension to WebDriver).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Log entries at SEVERE level so far (the log is drained by each read).
async fn errors_logged(client: &Client) -> Vec<Value> {
    let entries = client.issue_cmd(BrowserLog).await.expect("browser log");
    entries
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect()
}

async fn js(client: &Client, script: &str) -> Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("script {script}: {e}"))
}

/// Fills the explain form with `path` and `host`, submits it, and returns the
/// route the page names once its answer for this path is shown.
async fn explain(client: &Client, path: &str, host: &str) -> String {
    let form = client.find(Locator::Css("#explain")).await.unwrap();
    for (field, value) in [("path", path), ("host", host)] {
        let input = form
            .find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap();
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = format!("[data-explained-path=\"{path}\"] [data-explained-route]");
    let verdict = client
        .wait()
        .for_element(Locator::Css(&shown))
        .await
        .unwrap();
    verdict.text().await.unwrap()
}

async fn admin_json(gw: &Gateway, path: &str) -> Value {
    let req = http::Request::get(gw.admin_url(path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(empty())
        .unwrap();
    let r = send(req).await.unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn config() -> String {
    format!(
        "server:
  listeners:
    - name: http
      bind: 127.0.0.1:0
  admin:
    bind: 127.0.0.1:0
    token: {TOKEN}
upstreams:
  app:
    targets: [{{ url: 'http://${{A}}' }}, {{ url: 'http://${{B}}' }}]
    health_check: {{ path: {HEALTH_PATH}, interval: 200ms, timeout: 100ms,
                    unhealthy_threshold: 1, healthy_threshold: 1 }}
rate_limits:
  tight: {{ rate: 1/m, burst: 1 }}
routes:
  - name: api
    match: {{ path_prefix: /api, methods: [GET, POST] }}
    upstream: app
    request_headers:
      set: {{ Authorization: '{HEADER_SECRET}' }}
  - name: limited
    match: {{ path: /limited }}
    rate_limit: [tight]
    respond: {{ status: 200, body: ok }}
  - name: ping
    match: {{ path: /ping, hosts: [ping.example.com] }}
    respond: {{ status: 200, body: pong }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_reports_and_a_target_going_down_in_one_refresh() {
    let Some(browser) = browser().await else {
        return;
    };
    let client = browser.client.as_ref().unwrap();
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let gw = Gateway::start(&config(), &[("A", a.host_port()), ("B", b.host_port())]).await;
    wait_until("both targets healthy", async || {
        let u = admin_json(&gw, "/upstreams").await;
        let targets = u["upstreams"][0]["targets"].as_array().unwrap().clone();
        if targets.iter().all(|t| t["healthy"] == true) {
            Ok(())
        } else {
            Err(u.to_string())
        }
    })
    .await;

    // A second per refresh keeps the test short; the default is two.
    client
        .goto(&gw.admin_url("/ui/?refresh=1"))
        .await
        .expect("open /ui/");
    // The page knows the API wants a token and asks before fetching.
    let token = client
        .wait()
        .for_element(Locator::Css("#login:not([hidden]) #token"))
        .await
        .expect("the token form");
    token.send_keys(TOKEN).await.unwrap();
    client
        .find(Locator::Css("#login button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Routes: exactly those of /config, in its order.
    let config = admin_json(&gw, "/config").await;
    let want: Vec<Value> = config["config"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    wait_until("the routes table", async || {
        let shown = js(
            client,
            "return [...document.querySelectorAll('#routes tbody tr')].map(r => r.dataset.route)",
        )
        .await;
        if shown.as_array() == Some(&want) {
            Ok(())
        } else {
            Err(format!("{shown} (want {want:?})"))
        }
    })
    .await;
    let version = js(
        client,
        "return document.getElementById('version').textContent",
    )
    .await;
    assert_eq!(version, config["version"]);
    let api_row = js(
        client,
        "return document.querySelector('tr[data-route=api]').textContent",
    )
    .await;
    let api_row = api_row.as_str().unwrap();
    assert!(
        api_row.contains("prefix /api") && api_row.contains("GET | POST"),
        "{api_row}"
    );
    let limited_row = js(
        client,
        "return document.querySelector('tr[data-route=limited]').textContent",
    )
    .await;
    assert!(
        limited_row.as_str().unwrap().contains("rate limit tight"),
        "{limited_row}"
    );

    // Targets: each one /upstreams lists, in the state it reports.
    let states = async || {
        js(
            client,
            "return Object.fromEntries([...document.querySelectorAll('tr.target')]
                .map(r => [r.dataset.target, r.dataset.state]))",
        )
        .await
    };
    let targets = admin_json(&gw, "/upstreams").await["upstreams"][0]["targets"].clone();
    wait_until("the targets table", async || {
        let shown = states().await;
        let all = targets.as_array().unwrap().iter().all(|t| {
            let want = if t["healthy"] == true { "up" } else { "down" };
            shown[t["target"].as_str().unwrap()] == want
        });
        if all && shown.as_object().unwrap().len() == 2 {
            Ok(())
        } else {
            Err(format!("{shown} vs {targets}"))
        }
    })
    .await;

    // Live numbers: traffic on `api` shows as requests per second, a 429 on
    // `limited` as rejections.
    for _ in 0..2 {
        get(&gw.url("/limited")).await.unwrap();
    }
    wait_until("req/s and 429/s on the routes table", async || {
        for _ in 0..5 {
            assert_eq!(get(&gw.url("/api/x")).await.unwrap().status, 200);
        }
        let seen = js(
            client,
            "const cell = (r, i) => document.querySelector(`tr[data-route=${r}]`).children[i].textContent;
             return [parseFloat(cell('api', 4)), cell('limited', 7)]",
        )
        .await;
        let rps = seen[0].as_f64().unwrap_or(0.0);
        let limited = seen[1].as_str().unwrap_or("–");
        if rps > 0.0 && limited != "–" && limited.parse::<f64>().is_ok_and(|v| v > 0.0) {
            Ok(())
        } else {
            Err(seen.to_string())
        }
    })
    .await;

    // A target going down: red by the end of the first refresh that began
    // after /upstreams said so.
    b.control.set_unhealthy(true);
    wait_until("/upstreams to report b down", async || {
        let u = admin_json(&gw, "/upstreams").await;
        let down = u["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["target"] == b.host_port().as_str() && t["healthy"] == false);
        if down { Ok(()) } else { Err(u.to_string()) }
    })
    .await;
    let refreshes = async || {
        js(client, "return Number(document.body.dataset.refreshes)")
            .await
            .as_u64()
            .unwrap()
    };
    let at = refreshes().await;
    wait_until("two more refreshes", async || {
        let n = refreshes().await;
        if n >= at + 2 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    let shown = states().await;
    assert_eq!(shown[b.host_port().as_str()], "down", "{shown}");
    assert_eq!(shown[a.host_port().as_str()], "up", "{shown}");
    let colour = js(
        client,
        &format!(
            "return getComputedStyle(document.querySelector('tr[data-target=\"{}\"]')).backgroundColor",
            b.host_port()
        ),
    )
    .await;
    // `rgb(r, g, b)`, or `rgba(0, 0, 0, 0)` when the row has no colour.
    let rgba: Vec<f64> = colour
        .as_str()
        .unwrap()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|n| n.parse().ok())
        .collect();
    let opaque = rgba.get(3).is_none_or(|a| *a > 0.5);
    assert!(
        opaque && rgba[0] > rgba[1] + 16.0 && rgba[0] > rgba[2] + 16.0,
        "the down target's row is not red: {colour}"
    );

    // The explain form asks /explain on the live config.
    assert_eq!(explain(client, "/ping", "ping.example.com").await, "ping");
    // A route that sets a credential upstream: its whole answer is on the
    // page, the credential is not.
    assert_eq!(explain(client, "/api/x", "").await, "api");
    let answer = js(
        client,
        "return document.querySelector('#explained pre').textContent",
    )
    .await;
    assert!(answer.as_str().unwrap().contains("<redacted>"), "{answer}");

    // The start of the process is in the reload list.
    let reloads = js(
        client,
        "return document.querySelectorAll('#reloads li').length",
    )
    .await;
    assert_eq!(reloads, 1);

    // Read-only, and no secret on the page.
    let controls = js(
        client,
        "return [...document.querySelectorAll('button, input[type=submit]')].map(b => b.textContent)",
    )
    .await;
    assert_eq!(controls, json!(["Use token", "Explain"]));
    let html = js(client, "return document.documentElement.outerHTML").await;
    let html = html.as_str().unwrap();
    assert!(
        !html.contains("upstream-s3cret-value"),
        "a secret on the page"
    );
    assert!(!html.contains(TOKEN), "the token on the page");
    let after = admin_json(&gw, "/reloads").await;
    assert_eq!(
        after["reloads"].as_array().unwrap().len(),
        1,
        "the page reloaded something"
    );

    let errors = errors_logged(client).await;
    assert!(errors.is_empty(), "the browser logged errors: {errors:?}");
    browser.client.clone().unwrap().close().await.unwrap();
    gw.shutdown().await;
}
