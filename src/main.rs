//! The `tollgate` command: parses arguments, sets up logging, calls the library,
//! and maps the outcome to an exit code (0 clean, 1 bad config or usage, 2
//! runtime failure).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate::access_log::LogFormat;
use tollgate::config::{self, LoadedConfig};
use tollgate::{App, BuildOptions, demo, explain, k6};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An API gateway reverse proxy")]
struct Cli {
    /// Config file [default: $TOLLGATE_CONFIG, else ./tollgate.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format [default: text on a terminal, json otherwise]
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    /// Access log destination: stdout, off, or a file path (appended to)
    #[arg(
        long,
        global = true,
        value_name = "stdout|off|FILE",
        default_value = "stdout"
    )]
    access_log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default)
    Run,
    /// Check a config file: print `ok` or every error with file:line:column
    Validate,
    /// Run a complete demo: the gateway on 127.0.0.1:8080 before two echo upstreams
    Demo,
    /// Explain which route a request would take, and why the others did not match
    Routes {
        /// The request path, optionally with ?query
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long)]
        host: Option<String>,
        /// A request header as NAME:VALUE (repeatable)
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
    },
    /// Write a k6 script with one scenario per route (see docs/reference/cli.md)
    K6 {
        /// Write the script to FILE instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// An API key for the `auth.api_keys` set NAME (repeatable)
        #[arg(long = "api-key", value_name = "NAME=KEY")]
        api_keys: Vec<String>,
        /// A user and password for the `auth.basic` provider NAME (repeatable)
        #[arg(long = "basic", value_name = "NAME=USER:PASS")]
        basic: Vec<String>,
        /// A token to send as is for the `auth.jwt` policy NAME (repeatable)
        #[arg(long = "jwt", value_name = "NAME=TOKEN")]
        jwt: Vec<String>,
        /// Sign tokens for the JWT policy NAME with this PEM private key (RS*, PS*, ES*, EdDSA)
        #[arg(long = "jwt-key", value_name = "NAME=PEMFILE")]
        jwt_keys: Vec<String>,
        /// An opaque token, active at the introspection endpoint of the
        /// `auth.introspection` policy NAME, to send as is (repeatable)
        #[arg(long = "token", value_name = "NAME=TOKEN")]
        tokens: Vec<String>,
        /// Sign tokens for the JWT policy NAME with its HS* `secret` from the config (repeatable)
        #[arg(long = "mint-jwt", value_name = "NAME")]
        mint: Vec<String>,
        /// Virtual users per scenario
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        vus: u32,
        /// How long each scenario runs (rate-limited routes send one request)
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// How long minted tokens stay valid
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        token_ttl: std::time::Duration,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

fn runtime(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let format = match cli.log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None if std::io::stderr().is_terminal() => LogFormat::Text,
        None => LogFormat::Json,
    };
    init_logging(format);
    match run(cli, format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tollgate: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("tollgate.yaml"))
}

fn load(path: &Path) -> Result<LoadedConfig, Failure> {
    config::load_file(path).map_err(|errors| {
        let n = errors.0.len();
        usage(anyhow::anyhow!(
            "{} has {n} error{}:\n{errors}",
            path.display(),
            if n == 1 { "" } else { "s" }
        ))
    })
}

fn run(cli: Cli, format: LogFormat) -> Result<(), Failure> {
    let path = config_path(&cli);
    let access_log = cli.access_log.clone();
    match cli.command.unwrap_or(Command::Run) {
        Command::Validate => {
            load(&path)?;
            println!("ok");
            Ok(())
        }
        Command::Routes {
            path: target,
            method,
            host,
            headers,
        } => {
            let loaded = load(&path)?;
            let probe = probe(method, host, target, &headers).map_err(usage)?;
            let rt = runtime_for_cli().map_err(runtime)?;
            let text = rt.block_on(async {
                let metrics = tollgate::metrics::Metrics::new()?;
                let carry = tollgate::snapshot::carryover::Carryover::default();
                let snap = tollgate::snapshot::build::compile(&loaded, &metrics, &carry)?;
                // dns and srv targets: show what the name servers answer.
                for up in &snap.upstreams {
                    if let tollgate::upstream::Targets::Discovered(d) = &up.targets {
                        d.settle(std::time::Duration::from_secs(5)).await;
                    }
                }
                anyhow::Ok(explain::explain(&snap, &loaded.config, &probe))
            });
            print!("{}", text.map_err(usage)?);
            Ok(())
        }
        Command::K6 {
            out,
            api_keys,
            basic,
            jwt,
            jwt_keys,
            tokens,
            mint,
            vus,
            duration,
            token_ttl,
        } => {
            let mut creds =
                k6_credentials(&api_keys, &basic, &jwt, &jwt_keys, &mint).map_err(usage)?;
            for a in &tokens {
                let (name, token) = name_value("--token", a).map_err(usage)?;
                creds.introspection.insert(name.into(), token.into());
            }
            if duration.is_zero() {
                return Err(usage(anyhow::anyhow!("--duration must be above zero")));
            }
            let loaded = load(&path)?;
            let settings = k6::Settings {
                vus,
                duration,
                token_ttl,
                source: path.display().to_string(),
                now: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let rt = runtime_for_cli().map_err(runtime)?;
            let script = rt
                .block_on(async {
                    let metrics = tollgate::metrics::Metrics::new()?;
                    let carry = tollgate::snapshot::carryover::Carryover::default();
                    let snap = tollgate::snapshot::build::compile(&loaded, &metrics, &carry)?;
                    anyhow::Ok(k6::generate(&snap, &loaded.config, &creds, &settings)?)
                })
                .map_err(usage)?;
            for (route, reason) in &script.skipped {
                eprintln!("tollgate k6: route {route}: not exercised: {reason}");
            }
            match out {
                Some(file) => std::fs::write(&file, &script.text)
                    .with_context(|| format!("--out {}", file.display()))
                    .map_err(runtime)?,
                None => print!("{}", script.text),
            }
            eprintln!(
                "tollgate k6: {} scenario(s), {} route(s) left out",
                script.scenarios,
                script.skipped.len()
            );
            Ok(())
        }
        Command::Run => {
            let loaded = load(&path)?;
            let rt = runtime_for_server().map_err(runtime)?;
            let sink = access_log_sink(&access_log)?;
            rt.block_on(serve(loaded, Some(path), format, sink))
        }
        Command::Demo => {
            let rt = runtime_for_server().map_err(runtime)?;
            let sink = access_log_sink(&access_log)?;
            rt.block_on(async {
                let a = demo::start_echo("echo-a").await.map_err(runtime)?;
                let b = demo::start_echo("echo-b").await.map_err(runtime)?;
                let env = move |k: &str| match k {
                    "TOLLGATE_DEMO_ECHO_A" => Some(a.to_string()),
                    "TOLLGATE_DEMO_ECHO_B" => Some(b.to_string()),
                    _ => std::env::var(k).ok(),
                };
                let loaded =
                    config::load_str_with_env(demo::DEMO_CONFIG, "<demo>", &env).map_err(|e| {
                        runtime(anyhow::anyhow!("the embedded demo config is invalid:\n{e}"))
                    })?;
                serve(loaded, None, format, sink).await
            })
        }
    }
}

fn probe(
    method: String,
    host: Option<String>,
    target: String,
    headers: &[String],
) -> anyhow::Result<explain::Probe> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).context("--method")?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header `{h}`: expected NAME:VALUE"))?;
        map.append(
            HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("--header `{h}`"))?,
            HeaderValue::from_str(v.trim()).with_context(|| format!("--header `{h}`"))?,
        );
    }
    if !target.starts_with('/') {
        anyhow::bail!("the path must start with `/`, got `{target}`");
    }
    Ok(explain::Probe {
        method,
        host,
        target,
        headers: map,
    })
}

/// `NAME=VALUE` of a credential flag.
fn name_value<'a>(flag: &str, arg: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => Ok((name, value)),
        _ => anyhow::bail!("{flag} `{arg}`: expected NAME=VALUE"),
    }
}

/// The credential flags of `tollgate k6`, parsed (PEM files read).
fn k6_credentials(
    api_keys: &[String],
    basic: &[String],
    jwt: &[String],
    jwt_keys: &[String],
    mint: &[String],
) -> anyhow::Result<k6::Credentials> {
    let mut creds = k6::Credentials::default();
    for a in api_keys {
        let (name, key) = name_value("--api-key", a)?;
        creds.api_keys.insert(name.into(), key.into());
    }
    for a in basic {
        let (name, pair) = name_value("--basic", a)?;
        let (user, pass) = pair
            .split_once(':')
            .with_context(|| format!("--basic {name}: expected NAME=USER:PASS"))?;
        creds.basic.insert(name.into(), (user.into(), pass.into()));
    }
    for a in jwt {
        let (name, token) = name_value("--jwt", a)?;
        creds.jwt.insert(name.into(), token.into());
    }
    for a in jwt_keys {
        let (name, file) = name_value("--jwt-key", a)?;
        let pem = std::fs::read(file).with_context(|| format!("--jwt-key {name}: {file}"))?;
        creds.jwt_keys.insert(name.into(), pem);
    }
    creds.mint.extend(mint.iter().cloned());
    Ok(creds)
}

fn runtime_for_server() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn runtime_for_cli() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `--access-log`: stdout, off, or a file opened for appending.
fn access_log_sink(dest: &str) -> Result<Option<Box<dyn std::io::Write + Send>>, Failure> {
    Ok(match dest {
        "off" => None,
        "stdout" | "-" => Some(Box::new(std::io::stdout())),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--access-log {path}"))
                .map_err(runtime)?;
            Some(Box::new(file))
        }
    })
}

/// Runs the gateway until SIGTERM/SIGINT; SIGHUP reloads `path`.
async fn serve(
    loaded: LoadedConfig,
    path: Option<PathBuf>,
    format: LogFormat,
    access_log: Option<Box<dyn std::io::Write + Send>>,
) -> Result<(), Failure> {
    let is_demo = path.is_none();
    // Handlers first: a SIGTERM that arrives while the listeners come up must
    // drain, not kill the process with the default action.
    let signals = Signals::install().map_err(runtime)?;
    let opts = BuildOptions {
        access_log,
        log_format: format,
        watch_debounce: path.is_some().then_some(tollgate::DEFAULT_WATCH_DEBOUNCE),
        config_file: path.clone().map(tollgate::reload::ConfigFile::new),
    };
    let version = loaded.version.clone();
    let app = tollgate::build(loaded, opts).await.map_err(|e| match e {
        tollgate::StartError::Compile(_) => usage(e),
        _ => runtime(e),
    })?;
    tracing::info!(%version, "tollgate started");
    if is_demo {
        let gw = app
            .listener_addr("http")
            .ok_or_else(|| runtime(anyhow::anyhow!("demo listener missing")))?;
        eprintln!("{}", demo::instructions(gw, app.admin_addr()));
    }
    signals.wait(&app, path.as_deref()).await;
    tracing::info!("shutting down: draining in-flight requests");
    app.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM / SIGINT end the process gracefully; SIGHUP reloads.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns when the process should shut down.
    async fn wait(mut self, app: &App, path: Option<&Path>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => reload(app, path).await,
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Signals)
    }

    async fn wait(self, _app: &App, _path: Option<&Path>) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn reload(app: &App, path: Option<&Path>) {
    if path.is_none() {
        tracing::info!("the demo has no config file to reload");
        return;
    }
    // The reloader logs the outcome (every error on failure) and counts it.
    let _ = app.reload_file(tollgate::reload::Trigger::Signal).await;
}
