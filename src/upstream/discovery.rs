//! DNS discovery (`targets: [{dns: host:port}]`, `[{srv: name}]`): the
//! targets of an upstream follow A/AAAA or SRV records, looked up in the
//! background and never on the request path.
//!
//! A `Discovered` belongs to one config version of one upstream. It holds the
//! current `TargetSet` behind an `ArcSwap` (a request loads it once, at its
//! first pick) and one lookup task per source, which ends when the config
//! version is gone. After each lookup the set is rebuilt from every source's
//! last good answer; a target whose address stays keeps its `TargetState`
//! (health, circuit, in-flight count, ejection), so only real changes move
//! traffic. A reload that keeps the sources starts from the previous
//! version's answers, so it never empties the upstream while it looks up.
//!
//! A failed lookup keeps the last good answer (counted; logged when the
//! source starts and stops failing). An empty answer (no such name, or no
//! records) keeps it for `keep_stale`, then empties the source. The next
//! lookup comes after `refresh`, or after the records' TTL when that is
//! shorter, but never sooner than `MIN_INTERVAL`. hickory-resolver speaks
//! DNS; its cache is off, so each lookup asks the name servers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::proto::rr::{RData, Record};
use http::uri::{Authority, Scheme};
use prometheus::IntCounter;
use tokio::sync::watch;
use tokio::time::Instant;

use super::balancer::Strategy;
use super::pool::UpstreamClient;
use super::{Origin, Target, TargetSet, TargetState};
use crate::metrics::TargetFamilies;

/// The shortest time between two lookups of one source, whatever the TTL says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(300);

/// `last_error` of a source whose lookups answer empty.
const NO_RECORDS: &str = "no records";

/// What one `dns` / `srv` entry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A and AAAA records of `host`, each address on `port`.
    Dns { host: String, port: u16 },
    /// SRV records of `name`: each record's target host on its port.
    Srv { name: String },
}

/// One `dns` / `srv` entry of `targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub query: Query,
    pub weight: u32,
    pub refresh: Duration,
    pub keep_stale: Duration,
}

impl Source {
    /// The entry as `/upstreams` and the metrics name it: `host:port` or the SRV name.
    pub fn label(&self) -> String {
        match &self.query {
            Query::Dns { host, port } => format!("{host}:{port}"),
            Query::Srv { name } => name.clone(),
        }
    }

    /// `dns` or `srv`.
    pub fn kind(&self) -> &'static str {
        match self.query {
            Query::Dns { .. } => "dns",
            Query::Srv { .. } => "srv",
        }
    }

    fn origin(&self) -> Origin {
        match &self.query {
            Query::Dns { .. } => Origin::Dns(self.label().into()),
            Query::Srv { .. } => Origin::Srv(self.label().into()),
        }
    }
}

/// One address a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: u16,
}

/// A lookup's result: the addresses (never empty) and how long they are valid.
struct Answer {
    found: Vec<Found>,
    ttl: Option<Duration>,
}

enum LookupError {
    /// No such name, or no records of the type.
    Empty,
    Failed(String),
}

/// The state of one source, as `/upstreams` shows it.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// The last good answer (what the set is built from).
    pub found: Vec<Found>,
    /// Whether a lookup has finished, well or not.
    pub looked_up: bool,
    pub last_error: Option<String>,
    /// Since when lookups have answered empty while `found` was kept.
    pub empty_since: Option<Instant>,
    /// When the last lookup finished, and when the next is due.
    pub last_lookup: Option<Instant>,
    pub next_lookup: Option<Instant>,
}

/// What the set of one config version is built from, besides the answers.
pub struct Builder {
    pub upstream: Arc<str>,
    pub strategy: Strategy,
    /// The `url:` targets, first in every set.
    pub fixed: Vec<Target>,
    pub client: Arc<UpstreamClient>,
    pub metrics: TargetFamilies,
    /// With health checks, a new target's gauge starts at its state's verdict.
    pub health: bool,
    pub outlier: bool,
}

/// The followed targets of one upstream in one config version.
pub struct Discovered {
    set: ArcSwap<TargetSet>,
    /// Bumped after each change of the set (the health checks follow it).
    changed: watch::Sender<u64>,
    builder: Builder,
    sources: Vec<Source>,
    resolvers: Option<Vec<SocketAddr>>,
    status: Mutex<Vec<SourceStatus>>,
    /// `tollgate_dns_lookups_total` per source: [ok, empty, failed].
    lookups: Vec<[IntCounter; 3]>,
}

impl Discovered {
    /// The discovery of a config version. With `previous` (the last version
    /// of this upstream) over the same sources and name servers, it starts
    /// from its answers and its targets' states; otherwise the set starts
    /// with the `url:` targets only, until the first lookups answer.
    pub fn new(
        builder: Builder,
        sources: Vec<Source>,
        resolvers: Option<Vec<SocketAddr>>,
        lookups: Vec<[IntCounter; 3]>,
        previous: Option<&Discovered>,
    ) -> Arc<Discovered> {
        let carried = previous.filter(|p| p.sources == sources && p.resolvers == resolvers);
        let status = match carried {
            Some(p) => p.lock_status().clone(),
            None => vec![SourceStatus::default(); sources.len()],
        };
        let old = carried.map(|p| p.current());
        let set = build_set(&builder, &sources, &status, old.as_deref(), false);
        let (changed, _) = watch::channel(0);
        let d = Arc::new(Discovered {
            set: ArcSwap::from_pointee(set),
            changed,
            builder,
            sources,
            resolvers,
            status: Mutex::new(status),
            lookups,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            match resolver(d.resolvers.as_deref()) {
                Ok(r) => {
                    for i in 0..d.sources.len() {
                        tokio::spawn(follow(Arc::downgrade(&d), r.clone(), i));
                    }
                }
                Err(e) => d.resolver_failed(&e),
            }
        }
        d
    }

    pub fn upstream(&self) -> &str {
        &self.builder.upstream
    }

    /// The set as it is now.
    pub fn current(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }

    /// A receiver that sees every change of the set.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Each source's state, in `sources()` order.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.lock_status().clone()
    }

    /// Whether every source has been looked up at least once (or carried an
    /// answer over from the previous config version).
    pub fn settled(&self) -> bool {
        self.lock_status().iter().all(|s| s.looked_up)
    }

    /// Waits until `settled`, for at most `limit`.
    pub async fn settle(&self, limit: Duration) {
        let mut changes = self.subscribe();
        let _ = tokio::time::timeout(limit, async {
            while !self.settled() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Vec<SourceStatus>> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No resolver could be made (e.g. no /etc/resolv.conf): every source
    /// fails, once, and says why.
    fn resolver_failed(&self, e: &str) {
        tracing::warn!(upstream = %self.builder.upstream, error = %e, "no DNS resolver: dns and srv targets stay empty");
        for (s, c) in self.lock_status().iter_mut().zip(&self.lookups) {
            s.looked_up = true;
            s.last_error = Some(format!("no resolver: {e}"));
            c[2].inc();
        }
    }

    /// Applies one lookup of source `i`; returns when to look again.
    fn apply(&self, i: usize, result: Result<Answer, LookupError>, now: Instant) -> Instant {
        let source = &self.sources[i];
        let name = source.label();
        let up = &*self.builder.upstream;
        let mut status = self.lock_status();
        let s = &mut status[i];
        let first = !s.looked_up;
        s.looked_up = true;
        s.last_lookup = Some(now);
        let mut wait = source.refresh;
        let before = s.found.clone();
        match result {
            Ok(answer) => {
                self.lookups[i][0].inc();
                if s.last_error.take().is_some() {
                    tracing::info!(upstream = up, source = %name, addresses = answer.found.len(), "DNS lookups answer again");
                }
                s.empty_since = None;
                if let Some(ttl) = answer.ttl {
                    wait = wait.min(ttl);
                }
                s.found = answer.found;
            }
            Err(LookupError::Empty) => {
                self.lookups[i][1].inc();
                let since = *s.empty_since.get_or_insert(now);
                if s.last_error.as_deref() != Some(NO_RECORDS) {
                    tracing::warn!(upstream = up, source = %name, kept = s.found.len(), keep_stale_s = source.keep_stale.as_secs(), "DNS answers no addresses; keeping the last ones for now");
                }
                s.last_error = Some(NO_RECORDS.into());
                if now.duration_since(since) >= source.keep_stale && !s.found.is_empty() {
                    tracing::warn!(upstream = up, source = %name, "DNS has answered no addresses for keep_stale: the source is now empty");
                    s.found.clear();
                }
            }
            Err(LookupError::Failed(e)) => {
                self.lookups[i][2].inc();
                // Logged when failures start (not at each failed lookup).
                if s.last_error.as_deref().is_none_or(|l| l == NO_RECORDS) {
                    tracing::warn!(upstream = up, source = %name, error = %e, kept = s.found.len(), "DNS lookup failed; keeping the last addresses");
                }
                s.last_error = Some(e);
            }
        }
        let next = now + wait.max(MIN_INTERVAL);
        s.next_lookup = Some(next);
        if s.found == before {
            if first {
                // Nothing changed, but whoever waits for the first lookups can go on.
                drop(status);
                self.changed.send_modify(|v| *v += 1);
            }
        } else {
            let old = self.current();
            // Addresses of the first lookups are the upstream's start, not a
            // target joining: they do not ramp.
            let ramp = !(first && before.is_empty() && old.len() == self.builder.fixed.len());
            let set = build_set(&self.builder, &self.sources, &status, Some(&old), ramp);
            drop(status);
            tracing::info!(upstream = up, source = %name, targets = set.len(), "targets changed");
            let keep: Vec<Authority> = set.targets.iter().map(|t| t.authority.clone()).collect();
            for gone in old.targets.iter().filter(|t| !keep.contains(&t.authority)) {
                self.builder.metrics.forget(up, &gone.label);
            }
            self.set.store(Arc::new(set));
            self.builder
                .client
                .retain_endpoints(|a| keep.iter().any(|k| k == a));
            self.changed.send_modify(|v| *v += 1);
        }
        next
    }
}

/// The set from the `url:` targets and every source's answer. A target whose
/// URL was in `old` keeps its state; a new one gets a fresh state that starts
/// its slow start now when `ramp`.
fn build_set(
    b: &Builder,
    sources: &[Source],
    status: &[SourceStatus],
    old: Option<&TargetSet>,
    ramp: bool,
) -> TargetSet {
    let mut targets = b.fixed.clone();
    for (source, s) in sources.iter().zip(status) {
        for f in &s.found {
            let url = format!("http://{}", f.addr);
            if targets.iter().any(|t| *t.url == *url) {
                continue;
            }
            let Ok(authority) = Authority::try_from(f.addr.to_string()) else {
                continue;
            };
            let kept = old.and_then(|o| o.targets.iter().find(|t| *t.url == *url));
            let state = match kept {
                Some(t) => t.state.clone(),
                None => {
                    let state = Arc::new(TargetState::default());
                    if ramp {
                        state.joined.set(Instant::now());
                    }
                    state
                }
            };
            let label: Arc<str> = authority.as_str().into();
            let (metrics, ejections) = match kept {
                Some(t) => (t.metrics.clone(), t.ejections.clone()),
                None => {
                    let m = b.metrics.target(&b.upstream, &label);
                    m.healthy.set(i64::from(
                        !b.health || state.healthy.load(std::sync::atomic::Ordering::Relaxed),
                    ));
                    let e = b.outlier.then(|| b.metrics.ejections(&b.upstream, &label));
                    (m, e)
                }
            };
            targets.push(Target {
                url: url.into(),
                endpoint: b.client.endpoint(&Scheme::HTTP, &authority),
                scheme: Scheme::HTTP,
                authority,
                label,
                weight: source.weight.saturating_mul(f.weight.max(1)),
                priority: f.priority,
                origin: source.origin(),
                state,
                metrics,
                ejections,
            });
        }
    }
    TargetSet::new(b.strategy.clone(), targets)
}

/// The resolver: the given name servers (UDP, then TCP for truncated
/// answers), or those of /etc/resolv.conf. No cache: each lookup asks.
fn resolver(servers: Option<&[SocketAddr]>) -> Result<TokioResolver, String> {
    let mut builder = match servers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                Default::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| e.to_string())
}

/// The lookup loop of source `i`, while its config version lives.
async fn follow(d: Weak<Discovered>, resolver: TokioResolver, i: usize) {
    loop {
        let Some(query) = d.upgrade().map(|d| d.sources[i].query.clone()) else {
            return;
        };
        let result = lookup(&resolver, &query).await;
        let Some(discovered) = d.upgrade() else {
            return;
        };
        let next = discovered.apply(i, result, Instant::now());
        drop(discovered);
        tokio::time::sleep_until(next).await;
    }
}

async fn lookup(resolver: &TokioResolver, query: &Query) -> Result<Answer, LookupError> {
    match query {
        Query::Dns { host, port } => {
            let (ips, ttl) = lookup_ips(resolver, host).await?;
            Ok(Answer {
                found: ips
                    .into_iter()
                    .map(|ip| Found {
                        addr: SocketAddr::new(ip, *port),
                        weight: 1,
                        priority: 0,
                    })
                    .collect(),
                ttl,
            })
        }
        Query::Srv { name } => lookup_srv(resolver, name).await,
    }
}

fn lookup_error(e: hickory_resolver::net::NetError) -> LookupError {
    if e.is_no_records_found() {
        LookupError::Empty
    } else {
        LookupError::Failed(e.to_string())
    }
}

fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

/// The shortest TTL of `records`.
fn min_ttl<'a>(records: impl IntoIterator<Item = &'a Record>) -> Option<Duration> {
    records
        .into_iter()
        .map(|r| Duration::from_secs(u64::from(r.ttl)))
        .min()
}

async fn lookup_ips(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Option<Duration>), LookupError> {
    let found = resolver.lookup_ip(host).await.map_err(lookup_error)?;
    let mut ips: Vec<IpAddr> = found.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(LookupError::Empty);
    }
    Ok((ips, min_ttl(found.as_lookup().answers())))
}

/// SRV records, each target's addresses from the answer's additional
/// section or, when it has none, a lookup of its own. A target that does not
/// resolve is left out; when none does, the lookup failed.
async fn lookup_srv(resolver: &TokioResolver, name: &str) -> Result<Answer, LookupError> {
    let srv = resolver.srv_lookup(name).await.map_err(lookup_error)?;
    let mut ttl = min_ttl(srv.answers());
    let mut found = Vec::new();
    let mut unresolved = Vec::new();
    for record in srv.answers() {
        let RData::SRV(s) = &record.data else {
            continue;
        };
        let additional: Vec<IpAddr> = srv
            .additionals()
            .iter()
            .filter(|r| r.name == s.target)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        let ips = if additional.is_empty() {
            match lookup_ips(resolver, &s.target.to_ascii()).await {
                Ok((ips, t)) => {
                    ttl = shorter(ttl, t);
                    ips
                }
                Err(_) => {
                    unresolved.push(s.target.to_ascii());
                    continue;
                }
            }
        } else {
            additional
        };
        for ip in ips {
            let f = Found {
                addr: SocketAddr::new(ip, s.port),
                weight: u32::from(s.weight),
                priority: s.priority,
            };
            if !found.iter().any(|g: &Found| g.addr == f.addr) {
                found.push(f);
            }
        }
    }
    if found.is_empty() {
        return Err(match unresolved.first() {
            Some(t) => LookupError::Failed(format!("no SRV target resolves (first: {t})")),
            None => LookupError::Empty,
        });
    }
    Ok(Answer { found, ttl })
}
