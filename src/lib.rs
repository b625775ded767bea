//! tollgate: an API gateway reverse proxy.
//!
//! `build` turns a loaded config into a running `App`: the snapshot compiled and
//! published, the listeners bound, the admin API up. `main.rs` and the tests
//! start the gateway through this same function.

// The request path answers errors; it never panics on them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod compression;
pub mod config;
pub mod conn;
pub mod demo;
pub mod error;
pub mod explain;
pub mod headers;
pub mod idempotency;
pub mod k6;
pub mod metrics;
pub mod normalize;
#[cfg(feature = "otel")]
pub mod otel;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod router;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod steering;
pub mod store_breaker;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod upstream;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use access_log::{AccessLog, LogFormat};
use config::LoadedConfig;
use metrics::Metrics;
use server::tls::TlsListeners;
use server::{ConnSettings, Lifecycle};
use snapshot::build::{CompileError, compile};
use snapshot::carryover::Carryover;

pub use shared::Shared;
use shared::unix_now;

pub struct BuildOptions {
    /// Where access-log lines go (stdout in `main`); `None`: no access log.
    pub access_log: Option<Box<dyn Write + Send>>,
    pub log_format: LogFormat,
    /// The file the config came from: SIGHUP and `POST /reload` re-read it.
    /// `None` (the demo, tests from text): reloads are refused.
    pub config_file: Option<reload::ConfigFile>,
    /// Watch `config_file` and the files it names, reloading this long after
    /// the last change. `None`: no watching.
    pub watch_debounce: Option<Duration>,
}

/// The file watcher's default debounce in `main`.
pub const DEFAULT_WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            access_log: None,
            log_format: LogFormat::Json,
            config_file: None,
            watch_debounce: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error("cannot listen on {addr} for listener `{listener}`: {source}")]
    Bind {
        listener: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running gateway.
pub struct App {
    reloader: Arc<reload::Reloader>,
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    life: Lifecycle,
    grace: Duration,
}

pub async fn build(loaded: LoadedConfig, opts: BuildOptions) -> Result<App, StartError> {
    let metrics = Metrics::new()?;
    let carryover = Carryover::default();
    let snapshot = compile(&loaded, &metrics, &carryover)?;
    let tls = TlsListeners::new(&loaded)?;
    metrics.set_config_version(&snapshot.version);
    metrics.config_last_reload_success.set(unix_now());
    let server_cfg = &loaded.config.server;

    // Bind everything before serving anything, so a taken port fails the start
    // cleanly instead of leaving a half-started gateway.
    let mut bound = Vec::new();
    for l in &server_cfg.listeners {
        let listener = bind(&l.name, &l.bind).await?;
        bound.push((l.name.clone(), listener));
    }
    let admin = match &server_cfg.admin {
        Some(a) => Some(bind("admin", &a.bind).await?),
        None => None,
    };

    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        metrics,
        carryover,
        access_log: AccessLog::new(opts.access_log, opts.log_format),
        in_flight: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
    });
    // As after every swap: the carryover now knows the running version (its
    // DNS discovery, for the first reload to start from).
    shared.carryover.retain(&shared.snapshot.load());
    shared.carryover.sync_health(&shared.snapshot.load());
    let life = Lifecycle {
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    let settings = Arc::new(ConnSettings::new(&server_cfg.limits));
    let max_connections = Arc::new(Semaphore::new(server_cfg.limits.max_connections));

    let reloader = Arc::new(reload::Reloader::new(
        shared.clone(),
        opts.config_file,
        life.clone(),
        max_connections,
        tls,
    ));
    let bound = server_cfg
        .listeners
        .iter()
        .zip(bound)
        .map(|(l, (name, listener))| (name, l.bind.clone(), listener))
        .collect();
    reloader
        .start_listeners(bound, settings)
        .await
        .map_err(|source| StartError::Bind {
            listener: "?".into(),
            addr: "?".into(),
            source,
        })?;
    let admin = match admin {
        Some(listener) => {
            let addr = local_addr("admin", &listener)?;
            tracing::info!(%addr, "admin listening");
            tokio::spawn(admin::serve(
                listener,
                shared.clone(),
                reloader.clone(),
                life.clone(),
            ));
            Some(addr)
        }
        None => None,
    };
    if let Some(debounce) = opts.watch_debounce
        && let Err(e) = reloader.watch(debounce)
    {
        tracing::warn!(error = %e, "cannot watch the config file; SIGHUP and POST /reload still work");
    }

    Ok(App {
        reloader,
        admin,
        shared,
        life,
        grace: server_cfg.shutdown_grace.get(),
    })
}

async fn bind(name: &str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener: name.to_string(),
            addr: addr.to_string(),
            source,
        })
}

fn local_addr(name: &str, l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        listener: name.to_string(),
        addr: "?".into(),
        source,
    })
}

impl App {
    /// The bound address of the listener called `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// The client listeners accepting now (reloads open and close them).
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.reloader.listener_addrs()
    }

    pub fn reloader(&self) -> &Arc<reload::Reloader> {
        &self.reloader
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swaps in an already loaded config version (see `reload::Reloader`).
    /// Requests already running finish on the version they started with; the
    /// next request sees the new one.
    pub async fn reload(
        &self,
        loaded: LoadedConfig,
    ) -> Result<reload::Reloaded, Vec<reload::ReloadError>> {
        self.reloader.apply(loaded, reload::Trigger::Admin).await
    }

    /// Re-reads the config file (what SIGHUP does).
    pub async fn reload_file(
        &self,
        trigger: reload::Trigger,
    ) -> Result<reload::Reloaded, Vec<reload::ReloadError>> {
        self.reloader.reload(trigger).await
    }

    /// Graceful shutdown: `/readyz` turns 503, listeners stop accepting, in-flight
    /// requests get up to `shutdown_grace` to finish, then what is left is cut.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.life.stop.cancel();
        self.life.tracker.close();
        if tokio::time::timeout(self.grace, self.life.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "shutdown grace period over; closing the remaining connections");
            self.life.abort.cancel();
            self.life.tracker.wait().await;
        }
        self.life.abort.cancel();
        // Every request has ended and queued its span: send them.
        #[cfg(feature = "otel")]
        if let Some(spans) = &self.shared.snapshot.load().spans
            && !spans.flush(otel::SHUTDOWN_FLUSH).await
        {
            tracing::warn!(
                within = ?otel::SHUTDOWN_FLUSH,
                "spans still queued at shutdown were not all exported"
            );
        }
    }
}
