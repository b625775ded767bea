//! Config reload (docs/guide/reload.md): every trigger — the file watcher, SIGHUP,
//! `POST /reload` — goes through one `Reloader`, which runs one reload at a time:
//! load -> validate -> compile -> open new listeners -> swap the snapshot ->
//! close removed listeners. Nothing changes until every step that can fail has
//! passed, so an invalid file (or a port that cannot be bound) leaves the
//! running version untouched.
//!
//! Requests load the snapshot once, so in-flight requests finish on the version
//! they began with; connections are never closed by a reload, except those of a
//! listener removed from the file, which are drained gracefully.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::schema::Config;
use crate::config::{ConfigErrors, LoadedConfig};
use crate::server::tls::TlsListeners;
use crate::server::{self, ConnSettings, Lifecycle};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::snapshot::build::compile;

/// `${VAR}` lookups for a config file.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where the running config comes from, for reloads.
#[derive(Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// `${VAR}` lookups (the process environment in `main`).
    pub env: EnvLookup,
}

impl ConfigFile {
    /// A config file whose `${VAR}`s come from the process environment.
    pub fn new(path: PathBuf) -> Self {
        ConfigFile {
            path,
            env: Arc::new(|k| std::env::var(k).ok()),
        }
    }
}

/// What started a reload (for the log and the reload history).
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    FileChange,
    Signal,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

/// How many reloads `GET /reloads` remembers.
const HISTORY: usize = 20;
/// At most this many changed settings are listed per reload.
const DIFF_LINES: usize = 200;

/// One reload, as `GET /reloads` and the dashboard show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// When it ended, RFC 3339.
    pub at: String,
    /// `start` for the version the process started with, else the trigger.
    pub trigger: &'static str,
    pub result: &'static str,
    /// The version running before.
    pub from_version: Option<String>,
    /// The version running after (the same as before when it failed).
    pub version: String,
    pub changes: Changes,
    /// Each setting that differs, with its old and new value, secrets
    /// redacted; `null` on the side where it is absent.
    pub diff: Vec<DiffLine>,
    /// More settings differ than `diff` lists.
    pub diff_truncated: bool,
    pub errors: Vec<String>,
}

/// One changed setting: `routes[api].match.path_prefix`, `/a` -> `/b`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiffLine {
    pub path: String,
    pub before: Value,
    pub after: Value,
}

/// Names of what a reload added, removed or changed: `route:NAME`,
/// `upstream:NAME`, `jwt:NAME`, `api_key:NAME`, `rate_limit:NAME`, `cors:NAME`,
/// `listener:NAME`, and the sections `server.limits`, `server.admin`,
/// `server.trusted_proxies`, `server.path_normalization`, `server.shutdown_grace`,
/// `redis`, `tracing`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// A successful reload.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub version: String,
    pub changes: Changes,
}

/// One reason a reload was refused.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadError {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
            if let (Some(l), Some(c)) = (self.line, self.column) {
                write!(f, "{l}:{c}:")?;
            }
            write!(f, " ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)
    }
}

fn plain_error(path: impl Into<String>, message: impl Into<String>) -> ReloadError {
    ReloadError {
        file: None,
        line: None,
        column: None,
        path: path.into(),
        message: message.into(),
    }
}

fn config_errors(errors: ConfigErrors) -> Vec<ReloadError> {
    errors
        .0
        .into_iter()
        .map(|e| ReloadError {
            file: Some(e.file),
            line: (e.line != 0).then_some(e.line),
            column: (e.line != 0).then_some(e.column),
            path: e.path,
            message: e.message,
        })
        .collect()
}

/// A client listener accepting right now.
struct RunningListener {
    name: String,
    bind: String,
    addr: SocketAddr,
    /// Cancelling it stops this listener's accept loop and drains its
    /// connections gracefully (a child of the process-wide stop token).
    stop: CancellationToken,
    /// Cancelling it cuts what is left of them, tunnels included (a child of
    /// the process-wide abort token).
    abort: CancellationToken,
}

/// The listener table; the async mutex around it serializes reloads.
struct Listeners {
    running: Vec<RunningListener>,
}

pub struct Reloader {
    shared: Arc<Shared>,
    file: Option<ConfigFile>,
    listeners: tokio::sync::Mutex<Listeners>,
    /// Names and bound addresses, readable without waiting for a reload.
    addrs: Mutex<Vec<(String, SocketAddr)>>,
    life: Lifecycle,
    max_connections: Arc<Semaphore>,
    /// The live certificates of the TLS listeners, by listener name.
    tls: TlsListeners,
    /// The last reloads, oldest first.
    history: Mutex<std::collections::VecDeque<ReloadRecord>>,
}

impl Reloader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        file: Option<ConfigFile>,
        life: Lifecycle,
        max_connections: Arc<Semaphore>,
        tls: TlsListeners,
    ) -> Self {
        let start = ReloadRecord {
            at: now_rfc3339(),
            trigger: "start",
            result: "success",
            from_version: None,
            version: shared.snapshot.load().version.clone(),
            changes: Changes::default(),
            diff: Vec::new(),
            diff_truncated: false,
            errors: Vec::new(),
        };
        Reloader {
            tls,
            shared,
            file,
            listeners: tokio::sync::Mutex::new(Listeners {
                running: Vec::new(),
            }),
            addrs: Mutex::new(Vec::new()),
            life,
            max_connections,
            history: Mutex::new([start].into()),
        }
    }

    /// The last reloads (and the start), newest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history.iter().rev().cloned().collect()
    }

    fn remember(&self, record: ReloadRecord) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(record);
    }

    pub fn config_file(&self) -> Option<&ConfigFile> {
        self.file.as_ref()
    }

    /// The client listeners accepting now, with their bound addresses.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts the listeners bound at startup.
    pub(crate) async fn start_listeners(
        &self,
        bound: Vec<(String, String, TcpListener)>,
        settings: Arc<ConnSettings>,
    ) -> std::io::Result<()> {
        let mut table = self.listeners.lock().await;
        for (name, bind, listener) in bound {
            self.spawn_listener(&mut table, name, bind, listener, settings.clone())?;
        }
        Ok(())
    }

    fn spawn_listener(
        &self,
        table: &mut Listeners,
        name: String,
        bind: String,
        listener: TcpListener,
        settings: Arc<ConnSettings>,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(listener = %name, %addr, "listening");
        let stop = self.life.stop.child_token();
        let abort = self.life.abort.child_token();
        let life = Lifecycle {
            stop: stop.clone(),
            abort: abort.clone(),
            tracker: self.life.tracker.clone(),
        };
        tokio::spawn(server::accept_loop(
            listener,
            name.as_str().into(),
            self.shared.clone(),
            settings,
            self.max_connections.clone(),
            life,
            self.tls.get(&name),
        ));
        table.running.push(RunningListener {
            name,
            bind,
            addr,
            stop,
            abort,
        });
        self.publish_addrs(table);
        Ok(())
    }

    fn publish_addrs(&self, table: &Listeners) {
        *self.addrs.lock().unwrap_or_else(PoisonError::into_inner) = table
            .running
            .iter()
            .map(|l| (l.name.clone(), l.addr))
            .collect();
    }

    /// Re-reads the config file and applies it. Every call counts in
    /// `tollgate_config_reloads_total`, whether or not the file changed.
    pub async fn reload(&self, trigger: Trigger) -> Result<Reloaded, Vec<ReloadError>> {
        let Some(file) = self.file.clone() else {
            let e = plain_error("", "this gateway was not started from a config file");
            return Err(self.failed(trigger, vec![e]));
        };
        let mut table = self.listeners.lock().await;
        let path = file.path.clone();
        let env = file.env.clone();
        let loaded =
            tokio::task::spawn_blocking(move || crate::config::load_file_with_env(&path, &*env))
                .await;
        match loaded {
            Ok(Ok(loaded)) => self.apply_locked(&mut table, loaded, trigger).await,
            Ok(Err(errors)) => Err(self.failed(trigger, config_errors(errors))),
            Err(e) => Err(self.failed(trigger, vec![plain_error("", e.to_string())])),
        }
    }

    /// Applies an already loaded (validated) config.
    pub async fn apply(
        &self,
        loaded: LoadedConfig,
        trigger: Trigger,
    ) -> Result<Reloaded, Vec<ReloadError>> {
        let mut table = self.listeners.lock().await;
        self.apply_locked(&mut table, loaded, trigger).await
    }

    fn failed(&self, trigger: Trigger, errors: Vec<ReloadError>) -> Vec<ReloadError> {
        self.shared.metrics.config_reloads_failure.inc();
        for e in &errors {
            tracing::error!(?trigger, error = %e, "config reload failed; the old config keeps serving");
        }
        let version = self.shared.snapshot.load().version.clone();
        self.remember(ReloadRecord {
            at: now_rfc3339(),
            trigger: trigger.as_str(),
            result: "failure",
            from_version: Some(version.clone()),
            version,
            changes: Changes::default(),
            diff: Vec::new(),
            diff_truncated: false,
            errors: errors.iter().map(ToString::to_string).collect(),
        });
        errors
    }

    async fn apply_locked(
        &self,
        table: &mut Listeners,
        loaded: LoadedConfig,
        trigger: Trigger,
    ) -> Result<Reloaded, Vec<ReloadError>> {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let old = shared.snapshot.load_full();
        // New certificates are read first and put in service only if the whole
        // version goes through.
        let staged_tls = match self.tls.stage(&loaded) {
            Ok(t) => t,
            Err(e) => return Err(self.failed(trigger, vec![plain_error(e.path, e.message)])),
        };
        // Compiling a large config takes a while (about 0.3 s for 10,000
        // routes): off the runtime's workers, so requests keep flowing.
        let compiling = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let compiled = compile(&loaded, &shared.metrics, &shared.carryover);
                (loaded, compiled)
            })
        };
        let (loaded, snapshot) = match compiling.await {
            Ok((loaded, Ok(s))) => (loaded, s),
            Ok((_, Err(e))) => {
                return Err(self.failed(trigger, vec![plain_error(e.path, e.message)]));
            }
            Err(e) => {
                let message = format!("compiling the configuration failed: {e}");
                return Err(self.failed(trigger, vec![plain_error(String::new(), message)]));
            }
        };

        // Bind the listeners that are new (or moved) before changing anything:
        // a port that cannot be bound refuses the whole reload.
        let wanted = &loaded.config.server.listeners;
        let mut opened = Vec::new();
        let mut errors = Vec::new();
        for (i, l) in wanted.iter().enumerate() {
            let running = table
                .running
                .iter()
                .any(|r| r.name == l.name && r.bind == l.bind);
            if running {
                continue;
            }
            match TcpListener::bind(&l.bind).await {
                Ok(listener) => opened.push((l.name.clone(), l.bind.clone(), listener)),
                Err(e) => errors.push(plain_error(
                    format!("server.listeners[{i}].bind"),
                    format!("cannot listen on {}: {e}", l.bind),
                )),
            }
        }
        if !errors.is_empty() {
            // Undo what compile registered for names the old version lacks.
            forget_stale(metrics, &snapshot, &old);
            shared.carryover.retain(&old);
            return Err(self.failed(trigger, errors));
        }

        let snapshot = Arc::new(snapshot);
        metrics.set_config_version(&snapshot.version);
        shared.snapshot.store(snapshot.clone());
        staged_tls.commit();
        shared.carryover.retain(&snapshot);
        shared.carryover.sync_health(&snapshot);
        forget_stale(metrics, &old, &snapshot);

        // Close listeners no longer wanted (or moved), then start the new ones.
        // Its connections, tunnels included, get `shutdown_grace` to finish,
        // as at shutdown; what is left then is cut.
        let grace = loaded.config.server.shutdown_grace.get();
        table.running.retain(|r| {
            let keep = wanted.iter().any(|l| l.name == r.name && l.bind == r.bind);
            if !keep {
                tracing::info!(listener = %r.name, addr = %r.addr, "closing listener");
                r.stop.cancel();
                let abort = r.abort.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    abort.cancel();
                });
            }
            keep
        });
        let settings = Arc::new(ConnSettings::new(&loaded.config.server.limits));
        for (name, bind, listener) in opened {
            if let Err(e) =
                self.spawn_listener(table, name.clone(), bind, listener, settings.clone())
            {
                tracing::error!(listener = %name, error = %e, "listener could not start");
            }
        }
        self.publish_addrs(table);

        // Comparing two large configs takes a while too (serializing each entry).
        let comparing = {
            let (old, new) = (old.clone(), snapshot.clone());
            tokio::task::spawn_blocking(move || {
                let changes = diff(&old.source.config, &new.source.config);
                let secrets = [&old.source.secrets[..], &new.source.secrets[..]].concat();
                let lines = details(&old.source.config, &new.source.config, &changes, &secrets);
                (changes, lines)
            })
        };
        let (changes, (lines, truncated)) = comparing.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "comparing the configurations failed");
            (Changes::default(), (Vec::new(), false))
        });
        if changes.changed.iter().any(|c| c == "server.admin") {
            tracing::warn!("server.admin changed: the admin listener moves only on restart");
        }
        metrics.config_reloads_success.inc();
        metrics
            .config_last_reload_success
            .set(crate::shared::unix_now());
        tracing::info!(
            ?trigger,
            version = %loaded.version,
            added = ?changes.added,
            removed = ?changes.removed,
            changed = ?changes.changed,
            "config reloaded"
        );
        self.remember(ReloadRecord {
            at: now_rfc3339(),
            trigger: trigger.as_str(),
            result: "success",
            from_version: Some(old.version.clone()),
            version: loaded.version.clone(),
            changes: changes.clone(),
            diff: lines,
            diff_truncated: truncated,
            errors: Vec::new(),
        });
        Ok(Reloaded {
            version: loaded.version.clone(),
            changes,
        })
    }

    /// Watches the config file and every file it names, through their
    /// directories (so rename-and-replace and Kubernetes `..data` symlink swaps
    /// are seen), and reloads `debounce` after the last change.
    pub fn watch(self: &Arc<Self>, debounce: Duration) -> Result<(), String> {
        use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
        use notify_debouncer_full::{
            DebounceEventResult, Debouncer, RecommendedCache, new_debouncer,
        };
        type Watcher = Debouncer<RecommendedWatcher, RecommendedCache>;

        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let filter = names.clone();
        let mut debouncer = new_debouncer(debounce, None, move |res: DebounceEventResult| {
            let Ok(events) = res else { return };
            let names = filter.lock().unwrap_or_else(PoisonError::into_inner);
            let relevant = events.iter().any(|e| {
                !matches!(e.kind, EventKind::Access(_))
                    && e.paths.iter().any(|p| {
                        // The kubelet writes a new `..<timestamp>` directory,
                        // then swaps the `..data` symlink to it in one rename:
                        // only that rename means the files changed, never the
                        // half-written directory before it.
                        p.file_name()
                            .is_some_and(|n| names.contains(n) || n == "..data")
                    })
            });
            if relevant {
                // A full channel already holds a pending reload: coalesce.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| e.to_string())?;

        let mut dirs: HashSet<PathBuf> = HashSet::new();
        let mut sync = move |debouncer: &mut Watcher, files: &[PathBuf]| {
            let mut wanted = HashSet::new();
            let mut wanted_names = HashSet::new();
            for f in std::iter::once(&file.path).chain(files) {
                if let Some(n) = f.file_name() {
                    wanted_names.insert(n.to_os_string());
                }
                wanted.insert(dir_of(f));
            }
            *names.lock().unwrap_or_else(PoisonError::into_inner) = wanted_names;
            for d in dirs.difference(&wanted) {
                let _ = debouncer.unwatch(d);
            }
            for d in wanted.difference(&dirs) {
                if let Err(e) = debouncer.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch for config changes");
                }
            }
            dirs = wanted;
        };
        sync(&mut debouncer, &self.shared.snapshot.load().source.files);

        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = rx.recv() => if got.is_none() { break },
                    _ = me.life.stop.cancelled() => break,
                }
                let _ = me.reload(Trigger::FileChange).await;
                sync(&mut debouncer, &me.shared.snapshot.load().source.files);
            }
            debouncer.stop_nonblocking();
        });
        Ok(())
    }
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Drops the metric series of routes, upstreams and targets `old` had and `new`
/// does not. (By hashed name: with 10,000 routes a pairwise scan took seconds.)
fn forget_stale(metrics: &crate::metrics::Metrics, old: &Snapshot, new: &Snapshot) {
    let routes: HashSet<&str> = new.routes.iter().map(|r| &*r.name).collect();
    let removed: Vec<&str> = old
        .routes
        .iter()
        .map(|r| &*r.name)
        .filter(|name| !routes.contains(name))
        .collect();
    metrics.forget_routes(&removed);
    let upstreams: std::collections::HashMap<&str, &crate::upstream::Upstream> =
        new.upstreams.iter().map(|u| (&*u.name, u)).collect();
    for u in &old.upstreams {
        match upstreams.get(&*u.name) {
            None => metrics.forget_upstream(&u.name),
            Some(n) => {
                let (old_set, new_set) = (u.current(), n.current());
                for t in &old_set.targets {
                    if !new_set.targets.iter().any(|nt| nt.label == t.label) {
                        metrics.forget_target(&u.name, &t.label);
                    }
                }
            }
        }
    }
}

/// What differs between two configs, by name.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut changes = Changes::default();
    let routes = |c: &Config| -> BTreeMap<String, u64> {
        c.routes
            .iter()
            .map(|r| (r.name.clone(), fingerprint(r)))
            .collect()
    };
    let listeners = |c: &Config| -> BTreeMap<String, u64> {
        c.server
            .listeners
            .iter()
            .map(|l| (l.name.clone(), fingerprint(l)))
            .collect()
    };
    compare(&mut changes, "route", &routes(old), &routes(new));
    compare(
        &mut changes,
        "upstream",
        &values(&old.upstreams),
        &values(&new.upstreams),
    );
    compare(
        &mut changes,
        "jwt",
        &values(&old.auth.jwt),
        &values(&new.auth.jwt),
    );
    compare(
        &mut changes,
        "api_key",
        &values(&old.auth.api_keys),
        &values(&new.auth.api_keys),
    );
    compare(
        &mut changes,
        "rate_limit",
        &values(&old.rate_limits),
        &values(&new.rate_limits),
    );
    compare(
        &mut changes,
        "basic",
        &values(&old.auth.basic),
        &values(&new.auth.basic),
    );
    compare(
        &mut changes,
        "introspection",
        &values(&old.auth.introspection),
        &values(&new.auth.introspection),
    );
    compare(
        &mut changes,
        "external",
        &values(&old.auth.external),
        &values(&new.auth.external),
    );
    compare(
        &mut changes,
        "consumer",
        &values(&old.consumers),
        &values(&new.consumers),
    );
    compare(
        &mut changes,
        "consumer_group",
        &values(&old.consumer_groups),
        &values(&new.consumer_groups),
    );
    compare(&mut changes, "cors", &values(&old.cors), &values(&new.cors));
    compare(&mut changes, "listener", &listeners(old), &listeners(new));
    let sections: [(&str, Value, Value); 7] = [
        (
            "server.limits",
            to_value(&old.server.limits),
            to_value(&new.server.limits),
        ),
        (
            "server.admin",
            to_value(&old.server.admin),
            to_value(&new.server.admin),
        ),
        (
            "server.trusted_proxies",
            to_value(&old.server.trusted_proxies),
            to_value(&new.server.trusted_proxies),
        ),
        (
            "server.path_normalization",
            to_value(&old.server.path_normalization),
            to_value(&new.server.path_normalization),
        ),
        (
            "server.shutdown_grace",
            to_value(&old.server.shutdown_grace),
            to_value(&new.server.shutdown_grace),
        ),
        ("redis", to_value(&old.redis), to_value(&new.redis)),
        ("tracing", to_value(&old.tracing), to_value(&new.tracing)),
    ];
    for (name, a, b) in sections {
        if a != b {
            changes.changed.push(name.to_string());
        }
    }
    changes
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The settings behind each name in `changes`, compared leaf by leaf with
/// their secrets redacted. Only the named entries are serialized, so the
/// cost follows the size of the change, not of the config.
fn details(
    old: &Config,
    new: &Config,
    changes: &Changes,
    secrets: &[String],
) -> (Vec<DiffLine>, bool) {
    let mut lines = Vec::new();
    let names = changes
        .added
        .iter()
        .chain(&changes.removed)
        .chain(&changes.changed);
    for name in names {
        let (Some(label), Some(a), Some(b)) = (
            label(name),
            entry(old, name, secrets),
            entry(new, name, secrets),
        ) else {
            continue;
        };
        compare_values(&label, &a, &b, &mut lines);
        if lines.len() > DIFF_LINES {
            lines.truncate(DIFF_LINES);
            return (lines, true);
        }
    }
    (lines, false)
}

/// Where a name of `Changes` sits in the config, as the diff shows it.
fn label(name: &str) -> Option<String> {
    let (kind, entry) = name.split_once(':').unwrap_or((name, ""));
    Some(match kind {
        "route" => format!("routes[{entry}]"),
        "upstream" => format!("upstreams.{entry}"),
        "jwt" => format!("auth.jwt.{entry}"),
        "api_key" => format!("auth.api_keys.{entry}"),
        "basic" => format!("auth.basic.{entry}"),
        "introspection" => format!("auth.introspection.{entry}"),
        "external" => format!("auth.external.{entry}"),
        "rate_limit" => format!("rate_limits.{entry}"),
        "cors" => format!("cors.{entry}"),
        "listener" => format!("server.listeners[{entry}]"),
        section if entry.is_empty() => section.to_string(),
        _ => return None,
    })
}

/// The redacted JSON of one named entry of `config` (`null` when it has none).
/// It is redacted in place in a config-shaped tree, so the rules of
/// `GET /config` apply unchanged.
fn entry(config: &Config, name: &str, secrets: &[String]) -> Option<Value> {
    use serde_json::json;
    let (kind, key) = name.split_once(':').unwrap_or((name, ""));
    let v = |x: Option<Value>| x.unwrap_or(Value::Null);
    let (mut tree, pointer) = match kind {
        "route" => {
            let r = config.routes.iter().find(|r| r.name == key).map(to_value);
            (json!({"routes": [v(r)]}), "/routes/0".to_string())
        }
        "listener" => {
            let l = config.server.listeners.iter().find(|l| l.name == key);
            (
                json!({"server": {"listeners": [v(l.map(to_value))]}}),
                "/server/listeners/0".to_string(),
            )
        }
        "upstream" => (
            json!({"upstreams": {key: v(config.upstreams.get(key).map(to_value))}}),
            format!("/upstreams/{key}"),
        ),
        "jwt" => (
            json!({"auth": {"jwt": {key: v(config.auth.jwt.get(key).map(to_value))}}}),
            format!("/auth/jwt/{key}"),
        ),
        "api_key" => (
            json!({"auth": {"api_keys": {key: v(config.auth.api_keys.get(key).map(to_value))}}}),
            format!("/auth/api_keys/{key}"),
        ),
        "basic" => (
            json!({"auth": {"basic": {key: v(config.auth.basic.get(key).map(to_value))}}}),
            format!("/auth/basic/{key}"),
        ),
        "introspection" => (
            json!({"auth": {"introspection": {key: v(config.auth.introspection.get(key).map(to_value))}}}),
            format!("/auth/introspection/{key}"),
        ),
        "external" => (
            json!({"auth": {"external": {key: v(config.auth.external.get(key).map(to_value))}}}),
            format!("/auth/external/{key}"),
        ),
        "rate_limit" => (
            json!({"rate_limits": {key: v(config.rate_limits.get(key).map(to_value))}}),
            format!("/rate_limits/{key}"),
        ),
        "cors" => (
            json!({"cors": {key: v(config.cors.get(key).map(to_value))}}),
            format!("/cors/{key}"),
        ),
        "server.limits" => (
            json!({"server": {"limits": to_value(&config.server.limits)}}),
            "/server/limits".into(),
        ),
        "server.admin" => (
            json!({"server": {"admin": to_value(&config.server.admin)}}),
            "/server/admin".into(),
        ),
        "server.trusted_proxies" => (
            json!({"server": {"trusted_proxies": to_value(&config.server.trusted_proxies)}}),
            "/server/trusted_proxies".into(),
        ),
        "server.path_normalization" => (
            json!({"server": {"path_normalization": to_value(&config.server.path_normalization)}}),
            "/server/path_normalization".into(),
        ),
        "server.shutdown_grace" => (
            json!({"server": {"shutdown_grace": to_value(&config.server.shutdown_grace)}}),
            "/server/shutdown_grace".into(),
        ),
        "redis" => (json!({"redis": to_value(&config.redis)}), "/redis".into()),
        "tracing" => (
            json!({"tracing": to_value(&config.tracing)}),
            "/tracing".into(),
        ),
        _ => return None,
    };
    crate::config::redact::redact_tree(&mut tree, secrets);
    tree.pointer_mut(&pointer).map(Value::take)
}

/// Appends one line per leaf that differs between `a` and `b` below `path`.
/// An object or list present on one side only is one line with all of it.
fn compare_values(path: &str, a: &Value, b: &Value, out: &mut Vec<DiffLine>) {
    if out.len() > DIFF_LINES || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let child = format!("{path}.{k}");
                compare_values(&child, va, y.get(k).unwrap_or(&Value::Null), out);
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    compare_values(&format!("{path}.{k}"), &Value::Null, vb, out);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                compare_values(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ => out.push(DiffLine {
            path: path.to_string(),
            before: a.clone(),
            after: b.clone(),
        }),
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A 64-bit hash of an entry's JSON form: comparing entries by it needs no
/// JSON tree per entry (10,000 routes made 20,000 trees per reload).
fn fingerprint<T: Serialize>(v: &T) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(v).unwrap_or_default())
}

fn values<T: Serialize>(m: &BTreeMap<String, T>) -> BTreeMap<String, u64> {
    m.iter().map(|(k, v)| (k.clone(), fingerprint(v))).collect()
}

fn compare(
    changes: &mut Changes,
    kind: &str,
    old: &BTreeMap<String, u64>,
    new: &BTreeMap<String, u64>,
) {
    for (name, v) in new {
        match old.get(name) {
            None => changes.added.push(format!("{kind}:{name}")),
            Some(o) if o != v => changes.changed.push(format!("{kind}:{name}")),
            Some(_) => {}
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            changes.removed.push(format!("{kind}:{name}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn diff_names_added_removed_and_changed_entries() {
        let a = load_str(
            "
upstreams:
  u: { targets: [{ url: 'http://127.0.0.1:1' }] }
  gone: { targets: [{ url: 'http://127.0.0.1:2' }] }
routes:
  - { name: keep, match: { path: /k }, upstream: u }
  - { name: edit, match: { path: /e }, upstream: u }
  - { name: old, match: { path: /o }, upstream: gone }
",
            "a.yaml",
        )
        .unwrap();
        let b = load_str(
            "
upstreams:
  u: { targets: [{ url: 'http://127.0.0.1:1' }, { url: 'http://127.0.0.1:3' }] }
routes:
  - { name: keep, match: { path: /k }, upstream: u }
  - { name: edit, match: { path: /e2 }, upstream: u }
  - { name: new, match: { path: /n }, upstream: u }
server:
  limits: { idle_timeout: 5s }
",
            "b.yaml",
        )
        .unwrap();
        let c = diff(&a.config, &b.config);
        assert_eq!(c.added, vec!["route:new"]);
        assert_eq!(c.removed, vec!["route:old", "upstream:gone"]);
        assert_eq!(c.changed, vec!["route:edit", "upstream:u", "server.limits"]);
        assert_eq!(diff(&a.config, &a.config), Changes::default());
    }
}
