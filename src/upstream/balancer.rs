//! Choosing one target of an upstream for a request: the `balance` strategies
//! of docs/reference/config.md (round robin, least request, random, and three consistent-hash
//! flavours). A `Balancer` is built once per configuration version and shared
//! by every request through an `Arc`; `pick` neither locks nor allocates.
//!
//! Health, circuit state and "already tried by a retry" live elsewhere and
//! reach `pick` as the `eligible` predicate, so the balancer stays pure.
//!
//! Consistent hashing uses weighted rendezvous (highest random weight) hashing
//! rather than a ring: it needs no per-target virtual-node table, moves exactly
//! the removed target's keys on removal (and about `1/n` on addition) with no
//! virtual-node variance, and "the next target when the chosen one is
//! ineligible" is simply the next-highest score, which also spreads a failed
//! target's keys over all the others instead of onto one ring neighbour. Its
//! cost is O(targets) per pick, which is cheap for the tens of targets an
//! upstream has.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::headers::cookie_value;

/// The longest precomputed round-robin sequence. Weights whose (gcd-reduced)
/// sum exceeds it are scaled down proportionally, trading a little precision
/// in the ratios for bounded memory per upstream.
const MAX_SEQUENCE: u64 = 4096;

/// How many random draws `least_request` and `random` try before falling
/// back to a scan when targets are ineligible.
const RANDOM_ATTEMPTS: usize = 3;

/// A `balance` strategy, as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastRequest,
    Random,
    IpHash,
    HeaderHash(HeaderName),
    CookieHash(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseStrategyError {
    #[error(
        "unknown balance strategy {0:?}: expected round_robin, least_request, random, \
         ip_hash, header_hash:<name> or cookie_hash:<name>"
    )]
    Unknown(String),
    #[error(
        "header_hash needs a valid header name after the colon (header_hash:<name>), got {0:?}"
    )]
    BadHeaderName(String),
    #[error("cookie_hash needs a cookie name after the colon (cookie_hash:<name>), got {0:?}")]
    BadCookieName(String),
}

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    fn from_str(s: &str) -> Result<Strategy, ParseStrategyError> {
        match s {
            "round_robin" => return Ok(Strategy::RoundRobin),
            "least_request" => return Ok(Strategy::LeastRequest),
            "random" => return Ok(Strategy::Random),
            "ip_hash" => return Ok(Strategy::IpHash),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("header_hash:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(Strategy::HeaderHash)
                .map_err(|_| ParseStrategyError::BadHeaderName(name.to_owned()));
        }
        if let Some(name) = s.strip_prefix("cookie_hash:") {
            return if crate::config::values::is_cookie_name(name) {
                Ok(Strategy::CookieHash(name.to_owned()))
            } else {
                Err(ParseStrategyError::BadCookieName(name.to_owned()))
            };
        }
        Err(ParseStrategyError::Unknown(s.to_owned()))
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::RoundRobin => f.write_str("round_robin"),
            Strategy::LeastRequest => f.write_str("least_request"),
            Strategy::Random => f.write_str("random"),
            Strategy::IpHash => f.write_str("ip_hash"),
            Strategy::HeaderHash(name) => write!(f, "header_hash:{name}"),
            Strategy::CookieHash(name) => write!(f, "cookie_hash:{name}"),
        }
    }
}

/// What a strategy may look at to choose.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
}

/// Chooses targets for one upstream. Targets are identified by their index in
/// the weights given at construction.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    weights: Box<[u32]>,
    /// Running sums of `weights`, for weighted random draws.
    cumulative: Box<[u64]>,
    /// The smooth weighted round-robin order, stepped by `cursor`; also the
    /// fallback for hash strategies when the request carries no key.
    sequence: Box<[u32]>,
    cursor: AtomicUsize,
    /// Per-target seeds for rendezvous hashing, derived from a stable identity.
    seeds: Box<[u64]>,
    /// With equal weights, rendezvous can compare raw hashes and skip the logarithm.
    uniform_weights: bool,
}

impl Balancer {
    /// A balancer whose targets are identified by position. Fine for every
    /// strategy; for the hash strategies prefer [`Balancer::with_ids`] so that
    /// removing a target from the middle of the list does not remap others.
    /// A weight of 0 counts as 1 (validation rejects it before this point).
    pub fn new(strategy: Strategy, weights: &[u32]) -> Balancer {
        let seeds = (0..weights.len() as u64)
            .map(|i| xxh3_64(&i.to_le_bytes()))
            .collect();
        Balancer::build(strategy, weights, seeds)
    }

    /// A balancer whose targets carry a stable identity (e.g. their URL), so
    /// consistent hashing keeps each key's target across reloads that add,
    /// remove or reorder other targets.
    pub fn with_ids<'a>(
        strategy: Strategy,
        targets: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Balancer {
        let (seeds, weights): (Vec<u64>, Vec<u32>) = targets
            .into_iter()
            .map(|(id, weight)| (xxh3_64(id.as_bytes()), weight))
            .unzip();
        Balancer::build(strategy, &weights, seeds.into())
    }

    fn build(strategy: Strategy, weights: &[u32], seeds: Box<[u64]>) -> Balancer {
        let weights: Box<[u32]> = weights.iter().map(|&w| w.max(1)).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        let uniform_weights = weights.windows(2).all(|w| w[0] == w[1]);
        Balancer {
            strategy,
            sequence: smooth_sequence(&weights),
            weights,
            cumulative,
            cursor: AtomicUsize::new(0),
            seeds,
            uniform_weights,
        }
    }

    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The number of targets.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Picks a target index, or `None` when no target is eligible.
    ///
    /// `load(i)`: in-flight requests on target `i` (used by `least_request`).
    /// `eligible(i)`: false for targets to skip (unhealthy, circuit open,
    /// already tried by a retry).
    pub fn pick(
        &self,
        ctx: &PickContext<'_>,
        load: impl Fn(usize) -> u32,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match &self.strategy {
            Strategy::RoundRobin => self.pick_round_robin(&eligible),
            Strategy::LeastRequest => self.pick_least_request(&load, &eligible),
            Strategy::Random => self.pick_random(&eligible),
            Strategy::IpHash => self.pick_hashed(Some(ip_key(ctx.client_ip)), &eligible),
            Strategy::HeaderHash(name) => {
                let key = ctx
                    .headers
                    .get(name)
                    .map(|v| v.as_bytes())
                    .filter(|v| !v.is_empty())
                    .map(xxh3_64);
                self.pick_hashed(key, &eligible)
            }
            Strategy::CookieHash(name) => {
                let key = cookie_value(ctx.headers, name).map(xxh3_64);
                self.pick_hashed(key, &eligible)
            }
        }
    }

    /// `pick` while some targets take only `factor(i)` of their weight (slow
    /// start): round robin and random draw by effective weight, least_request
    /// draws its two candidates that way and compares load per effective
    /// weight. Hash strategies keep each key where it is (no ramp).
    pub fn pick_ramped(
        &self,
        ctx: &PickContext<'_>,
        load: impl Fn(usize) -> u32,
        eligible: impl Fn(usize) -> bool,
        factor: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let weight = |i: usize| f64::from(self.weights[i]) * factor(i);
        match &self.strategy {
            Strategy::RoundRobin | Strategy::Random => self.draw_weighted(&weight, &eligible, None),
            Strategy::LeastRequest => {
                let first = self.draw_weighted(&weight, &eligible, None)?;
                let Some(second) = self.draw_weighted(&weight, &eligible, Some(first)) else {
                    return Some(first);
                };
                // load / weight, compared without dividing; a tie keeps the first draw.
                let a = f64::from(load(first)) * weight(second);
                let b = f64::from(load(second)) * weight(first);
                Some(if b < a { second } else { first })
            }
            _ => self.pick(ctx, load, eligible),
        }
    }

    /// A draw over the eligible targets (but `except`) in proportion to `weight`.
    fn draw_weighted(
        &self,
        weight: &impl Fn(usize) -> f64,
        eligible: &impl Fn(usize) -> bool,
        except: Option<usize>,
    ) -> Option<usize> {
        let candidates = || (0..self.len()).filter(|&i| Some(i) != except && eligible(i));
        let total: f64 = candidates().map(weight).sum();
        if total <= 0.0 {
            return candidates().next();
        }
        let mut r = fastrand::f64() * total;
        let mut last = None;
        for i in candidates() {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        // Rounding left a sliver past the last one.
        last
    }

    /// Steps the shared cursor along the smooth sequence; an ineligible target
    /// passes its turn to the next eligible one in the sequence.
    fn pick_round_robin(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.sequence[start.wrapping_add(k) % len] as usize)
            .find(|&i| eligible(i))
    }

    /// Power of two random choices: of two distinct random eligible targets,
    /// the one with fewer in-flight requests per unit of weight.
    fn pick_least_request(
        &self,
        load: &impl Fn(usize) -> u32,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.len();
        let first = self.random_eligible(n, eligible)?;
        let second = (0..RANDOM_ATTEMPTS)
            .filter(|_| n > 1)
            // Uniform over the targets other than `first`.
            .map(|_| (first + 1 + fastrand::usize(..n - 1)) % n)
            .find(|&i| eligible(i))
            .or_else(|| scan_from(fastrand::usize(..n), n).find(|&i| i != first && eligible(i)));
        let Some(second) = second else {
            return Some(first);
        };
        // Compare load/weight without division: a/wa < b/wb <=> a*wb < b*wa.
        let cost = |i: usize, other: usize| u64::from(load(i)) * u64::from(self.weights[other]);
        let (a, b) = (cost(first, second), cost(second, first));
        Some(match a.cmp(&b) {
            std::cmp::Ordering::Less => first,
            std::cmp::Ordering::Greater => second,
            std::cmp::Ordering::Equal if self.weights[second] > self.weights[first] => second,
            std::cmp::Ordering::Equal => first,
        })
    }

    /// A uniformly random eligible target: a few draws, then a scan from a
    /// random offset so that an almost-all-down upstream still finds the
    /// survivor and an all-down one returns `None`.
    fn random_eligible(&self, n: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        (0..RANDOM_ATTEMPTS)
            .map(|_| fastrand::usize(..n))
            .find(|&i| eligible(i))
            .or_else(|| scan_from(fastrand::usize(..n), n).find(|&i| eligible(i)))
    }

    /// Weighted random. When the draw lands on an ineligible target, draws
    /// again over the eligible targets' weights only, so the survivors keep
    /// their relative shares.
    fn pick_random(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let drawn = self.target_at(fastrand::u64(..total));
        if eligible(drawn) {
            return Some(drawn);
        }
        let eligible_total: u64 = (0..self.len())
            .filter(|&i| eligible(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if eligible_total == 0 {
            return None;
        }
        let mut r = fastrand::u64(..eligible_total);
        (0..self.len()).filter(|&i| eligible(i)).find(|&i| {
            let w = u64::from(self.weights[i]);
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })
    }

    fn target_at(&self, r: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// Weighted rendezvous hashing: every target scores the key, the highest
    /// eligible score wins. Without a key, round robin.
    fn pick_hashed(&self, key: Option<u64>, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let Some(key) = key else {
            return self.pick_round_robin(eligible);
        };
        let key = key.to_le_bytes();
        let hash = |i: usize| xxh3_64_with_seed(&key, self.seeds[i]);
        let candidates = (0..self.len()).filter(|&i| eligible(i));
        if self.uniform_weights {
            candidates.max_by_key(|&i| (hash(i), i))
        } else {
            candidates
                .map(|i| (i, weighted_score(hash(i), self.weights[i])))
                .max_by(|(i, a), (j, b)| a.total_cmp(b).then(i.cmp(j)))
                .map(|(i, _)| i)
        }
    }
}

/// Indices `start, start+1, ..` wrapping around, each once.
fn scan_from(start: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (start + k) % n)
}

/// The weighted rendezvous score `w / -ln(u)` with `u` uniform in (0, 1):
/// the target with the highest score is then chosen with probability
/// proportional to its weight.
pub(crate) fn weighted_score(hash: u64, weight: u32) -> f64 {
    // The top 53 bits as a float strictly inside (0, 1).
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

fn ip_key(ip: IpAddr) -> u64 {
    // An IPv4 client seen through a dual-stack socket hashes like plain IPv4.
    match ip.to_canonical() {
        IpAddr::V4(v4) => xxh3_64(&v4.octets()),
        IpAddr::V6(v6) => xxh3_64(&v6.octets()),
    }
}

/// NGINX's smooth weighted round robin, unrolled into a sequence once so
/// picking is one atomic increment: weights 5,1,1 give a,a,b,a,c,a,a.
fn smooth_sequence(weights: &[u32]) -> Box<[u32]> {
    let weights = bounded_weights(weights);
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(&weights) {
            *c += i64::from(w);
        }
        // The first of the largest, as NGINX does, keeps the order stable.
        let Some((best, _)) = current.iter().enumerate().rev().max_by_key(|&(_, &c)| c) else {
            break;
        };
        current[best] -= total;
        sequence.push(best as u32);
    }
    sequence.into_boxed_slice()
}

/// Weights reduced by their gcd and, when their sum is still above
/// `MAX_SEQUENCE`, scaled down proportionally (each kept at least 1).
fn bounded_weights(weights: &[u32]) -> Vec<u32> {
    let reduce = |ws: Vec<u32>| {
        let g = ws.iter().copied().fold(0, gcd).max(1);
        ws.into_iter().map(|w| w / g).collect::<Vec<u32>>()
    };
    let reduced = reduce(weights.iter().map(|&w| w.max(1)).collect());
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total <= MAX_SEQUENCE {
        return reduced;
    }
    reduce(
        reduced
            .iter()
            .map(|&w| {
                let scaled = (u64::from(w) * MAX_SEQUENCE).div_ceil(total);
                u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
            })
            .collect(),
    )
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use http::HeaderValue;

    use super::*;

    fn ctx(headers: &HeaderMap) -> PickContext<'_> {
        PickContext {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            headers,
        }
    }

    fn no_load(_: usize) -> u32 {
        0
    }

    fn all(_: usize) -> bool {
        true
    }

    fn picks(b: &Balancer, headers: &HeaderMap, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(&ctx(headers), no_load, all).unwrap())
            .collect()
    }

    fn counts(b: &Balancer, n: usize) -> Vec<usize> {
        let mut counts = vec![0; b.len()];
        for i in picks(b, &HeaderMap::new(), n) {
            counts[i] += 1;
        }
        counts
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        h
    }

    #[test]
    fn parses_and_prints_strategies() {
        for s in [
            "round_robin",
            "least_request",
            "random",
            "ip_hash",
            "header_hash:x-user-id",
            "cookie_hash:session",
        ] {
            assert_eq!(s.parse::<Strategy>().unwrap().to_string(), s);
        }
        assert_eq!(
            "header_hash:X-User-Id".parse::<Strategy>(),
            Ok(Strategy::HeaderHash(HeaderName::from_static("x-user-id")))
        );
        for bad in ["roundrobin", "", "header_hash", "cookie_hash:"] {
            let err = bad.parse::<Strategy>().unwrap_err().to_string();
            assert!(
                err.contains("expected") || err.contains("needs"),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            "header_hash:bad name".parse::<Strategy>(),
            Err(ParseStrategyError::BadHeaderName(_))
        ));
        assert!(matches!(
            "cookie_hash:a;b".parse::<Strategy>(),
            Err(ParseStrategyError::BadCookieName(_))
        ));
    }

    #[test]
    fn smooth_round_robin_interleaves_like_nginx() {
        let b = Balancer::new(Strategy::RoundRobin, &[5, 1, 1]);
        assert_eq!(
            picks(&b, &HeaderMap::new(), 14),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
        // Weights are reduced by their gcd, so the cycle stays short.
        assert_eq!(smooth_sequence(&[10, 20]).len(), 3);
        assert_eq!(&*smooth_sequence(&[1, 1, 1]), [0, 1, 2]);
    }

    #[test]
    fn round_robin_is_exactly_proportional() {
        let b = Balancer::new(Strategy::RoundRobin, &[3, 2, 1]);
        assert_eq!(counts(&b, 6000), [3000, 2000, 1000]);
    }

    #[test]
    fn huge_weights_are_scaled_to_a_bounded_sequence() {
        let seq = smooth_sequence(&[1_000_000, 999_999, 1]);
        assert!(seq.len() as u64 <= MAX_SEQUENCE + 3, "{}", seq.len());
        let ones = seq.iter().filter(|&&i| i == 2).count();
        assert!(ones >= 1, "a weight-1 target still gets turns");
        let zeros = seq.iter().filter(|&&i| i == 0).count() as f64;
        assert!((zeros / seq.len() as f64 - 0.5).abs() < 0.01);
    }

    #[test]
    fn random_is_roughly_proportional() {
        let b = Balancer::new(Strategy::Random, &[1, 2, 7]);
        let n = 100_000;
        let got = counts(&b, n);
        for (count, want) in got.iter().zip([0.1, 0.2, 0.7]) {
            let share = *count as f64 / n as f64;
            assert!((share - want).abs() < 0.02, "{got:?}");
        }
    }

    #[test]
    fn ineligible_targets_are_skipped_by_every_strategy() {
        let strategies = [
            Strategy::RoundRobin,
            Strategy::LeastRequest,
            Strategy::Random,
            Strategy::IpHash,
            Strategy::HeaderHash(HeaderName::from_static("x-user")),
            Strategy::CookieHash("session".into()),
        ];
        let h = headers(&[("x-user", "u1"), ("cookie", "session=s1")]);
        for strategy in strategies {
            let b = Balancer::new(strategy.clone(), &[5, 1, 1, 2]);
            for _ in 0..200 {
                let got = b.pick(&ctx(&h), no_load, |i| i == 1 || i == 3);
                assert!(matches!(got, Some(1 | 3)), "{strategy}: {got:?}");
                assert_eq!(b.pick(&ctx(&h), no_load, |i| i == 2), Some(2), "{strategy}");
                assert_eq!(b.pick(&ctx(&h), no_load, |_| false), None, "{strategy}");
            }
            let empty = Balancer::new(strategy.clone(), &[]);
            assert_eq!(empty.pick(&ctx(&h), no_load, all), None, "{strategy}");
        }
    }

    #[test]
    fn round_robin_passes_an_ineligible_turn_on() {
        let b = Balancer::new(Strategy::RoundRobin, &[5, 1, 1]);
        let got: Vec<usize> = (0..7)
            .map(|_| {
                b.pick(&ctx(&HeaderMap::new()), no_load, |i| i != 0)
                    .unwrap()
            })
            .collect();
        // Sequence a,a,b,a,c,a,a: each skipped `a` yields the next eligible entry.
        assert_eq!(got, [1, 1, 1, 2, 2, 1, 1]);
    }

    #[test]
    fn random_keeps_survivor_shares_when_one_is_ineligible() {
        let b = Balancer::new(Strategy::Random, &[8, 1, 3]);
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            let i = b
                .pick(&ctx(&HeaderMap::new()), no_load, |i| i != 0)
                .unwrap();
            counts[i] += 1;
        }
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_target() {
        let b = Balancer::new(Strategy::LeastRequest, &[1, 1]);
        let h = HeaderMap::new();
        for _ in 0..1000 {
            assert_eq!(b.pick(&ctx(&h), |i| [0, 100][i], all), Some(0));
            assert_eq!(b.pick(&ctx(&h), |i| [100, 0][i], all), Some(1));
        }
        // Over many targets the busiest is never chosen (it never wins a pair).
        let b = Balancer::new(Strategy::LeastRequest, &[1; 5]);
        for _ in 0..1000 {
            assert_ne!(
                b.pick(&ctx(&h), |i| if i == 4 { 50 } else { 1 }, all),
                Some(4)
            );
        }
        // Load is per unit of weight: 10 in flight on weight 10 beats 2 on weight 1.
        let b = Balancer::new(Strategy::LeastRequest, &[10, 1]);
        assert_eq!(b.pick(&ctx(&h), |i| [10, 2][i], all), Some(0));
        let one = Balancer::new(Strategy::LeastRequest, &[3]);
        assert_eq!(one.pick(&ctx(&h), |_| 1000, all), Some(0));
        assert_eq!(one.pick(&ctx(&h), |_| 0, |_| false), None);
    }

    #[test]
    fn the_same_key_always_maps_to_the_same_target() {
        let b = Balancer::new(
            Strategy::HeaderHash(HeaderName::from_static("x-user")),
            &[1; 7],
        );
        let h = headers(&[("x-user", "alice")]);
        let first = b.pick(&ctx(&h), no_load, all);
        assert!(first.is_some());
        for _ in 0..100 {
            assert_eq!(b.pick(&ctx(&h), no_load, all), first);
        }
        // And the same for a fresh balancer (no hidden state), and for ip_hash.
        let again = Balancer::new(
            Strategy::HeaderHash(HeaderName::from_static("x-user")),
            &[1; 7],
        );
        assert_eq!(again.pick(&ctx(&h), no_load, all), first);
        let ip = Balancer::new(Strategy::IpHash, &[1; 7]);
        let at = |addr: IpAddr| {
            ip.pick(
                &PickContext {
                    client_ip: addr,
                    headers: &h,
                },
                no_load,
                all,
            )
        };
        let v4 = Ipv4Addr::new(203, 0, 113, 9);
        assert_eq!(at(IpAddr::V4(v4)), at(IpAddr::V4(v4)));
        assert_eq!(at(IpAddr::V4(v4)), at(IpAddr::V6(v4.to_ipv6_mapped())));
        assert_eq!(
            at(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            at(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }

    /// Maps `keys` through a header-hash balancer over the given target ids.
    fn assignment(ids: &[String], keys: &[String]) -> Vec<String> {
        let b = Balancer::with_ids(
            Strategy::HeaderHash(HeaderName::from_static("x-key")),
            ids.iter().map(|id| (id.as_str(), 1)),
        );
        keys.iter()
            .map(|key| {
                let mut h = HeaderMap::new();
                h.insert("x-key", HeaderValue::from_str(key).unwrap());
                ids[b.pick(&ctx(&h), no_load, all).unwrap()].clone()
            })
            .collect()
    }

    #[test]
    fn consistent_hashing_moves_few_keys() {
        let ids: Vec<String> = (0..10).map(|i| format!("http://10.0.0.{i}:80")).collect();
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let before = assignment(&ids, &keys);

        // Balanced to begin with.
        let mut per_target: HashMap<&str, usize> = HashMap::new();
        for t in &before {
            *per_target.entry(t).or_default() += 1;
        }
        assert!(
            per_target.values().all(|&c| (800..1200).contains(&c)),
            "{per_target:?}"
        );

        // Removing a target from the middle remaps only that target's keys.
        let removed = ids[3].clone();
        let fewer: Vec<String> = ids.iter().filter(|id| **id != removed).cloned().collect();
        let after = assignment(&fewer, &keys);
        for (b, a) in before.iter().zip(&after) {
            if *b != removed {
                assert_eq!(b, a);
            }
        }

        // Adding an 11th moves about 1/11 of the keys, all to the newcomer.
        let mut more = ids.clone();
        more.push("http://10.0.0.99:80".into());
        let after = assignment(&more, &keys);
        let moved: Vec<&String> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a)
            .map(|(_, a)| a)
            .collect();
        let share = moved.len() as f64 / keys.len() as f64;
        assert!(share > 0.05 && share < 0.15, "moved {share}");
        assert!(moved.iter().all(|a| **a == more[10]));
    }

    #[test]
    fn weighted_hashing_is_proportional() {
        let b = Balancer::new(
            Strategy::HeaderHash(HeaderName::from_static("x-key")),
            &[3, 1],
        );
        let mut counts = [0usize; 2];
        for i in 0..10_000 {
            let mut h = HeaderMap::new();
            h.insert("x-key", HeaderValue::from_str(&i.to_string()).unwrap());
            counts[b.pick(&ctx(&h), no_load, all).unwrap()] += 1;
        }
        let share = counts[0] as f64 / 10_000.0;
        assert!((share - 0.75).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn an_ineligible_hashed_target_hands_over_deterministically() {
        let b = Balancer::new(
            Strategy::HeaderHash(HeaderName::from_static("x-user")),
            &[1; 5],
        );
        let h = headers(&[("x-user", "bob")]);
        let home = b.pick(&ctx(&h), no_load, all).unwrap();
        let fallback = b.pick(&ctx(&h), no_load, |i| i != home).unwrap();
        assert_ne!(fallback, home);
        for _ in 0..50 {
            assert_eq!(b.pick(&ctx(&h), no_load, |i| i != home), Some(fallback));
        }
        // Excluding both leads to a third, still stable, target.
        let third = b.pick(&ctx(&h), no_load, |i| i != home && i != fallback);
        assert!(third.is_some_and(|t| t != home && t != fallback));
        assert_eq!(
            b.pick(&ctx(&h), no_load, |i| i != home && i != fallback),
            third
        );
    }

    #[test]
    fn cookies_are_parsed_from_every_cookie_header() {
        let h = headers(&[("cookie", "a=1; session=xyz")]);
        assert_eq!(cookie_value(&h, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(&h, "sess"), None);
        let h = headers(&[("cookie", "a=1"), ("cookie", "theme=dark;session=\"q\"")]);
        assert_eq!(cookie_value(&h, "session"), Some(&b"q"[..]));
        let h = headers(&[("cookie", "session=; other=2"), ("cookie", "novalue")]);
        assert_eq!(cookie_value(&h, "session"), None);
        assert_eq!(cookie_value(&h, "novalue"), None);

        // Same cookie value, same target, whatever else the header holds.
        let b = Balancer::new(Strategy::CookieHash("session".into()), &[1; 9]);
        let one = headers(&[("cookie", "session=xyz")]);
        let other = headers(&[("cookie", "lang=en"), ("cookie", "session=xyz; a=1")]);
        assert_eq!(
            b.pick(&ctx(&one), no_load, all),
            b.pick(&ctx(&other), no_load, all)
        );
    }

    #[test]
    fn a_missing_key_falls_back_to_round_robin() {
        let none = HeaderMap::new();
        let b = Balancer::new(
            Strategy::HeaderHash(HeaderName::from_static("x-user")),
            &[1, 1, 1],
        );
        assert_eq!(picks(&b, &none, 6), [0, 1, 2, 0, 1, 2]);
        let empty = headers(&[("x-user", "")]);
        assert_eq!(picks(&b, &empty, 3), [0, 1, 2]);
        let b = Balancer::new(Strategy::CookieHash("session".into()), &[2, 1]);
        let other_cookie = headers(&[("cookie", "lang=en")]);
        assert_eq!(picks(&b, &other_cookie, 6), [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn ramped_picks_follow_the_effective_weights() {
        let h = HeaderMap::new();
        let n = 100_000;
        for strategy in [
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::LeastRequest,
        ] {
            let b = Balancer::new(strategy.clone(), &[1, 1, 2]);
            let mut counts = [0usize; 3];
            for _ in 0..n {
                let i = b
                    .pick_ramped(&ctx(&h), no_load, all, |i| if i == 0 { 0.5 } else { 1.0 })
                    .unwrap();
                counts[i] += 1;
            }
            // Effective weights 0.5, 1, 2.
            for (c, want) in counts.iter().zip([0.5 / 3.5, 1.0 / 3.5, 2.0 / 3.5]) {
                let share = *c as f64 / n as f64;
                assert!((share - want).abs() < 0.01, "{strategy}: {counts:?}");
            }
            assert_eq!(
                b.pick_ramped(&ctx(&h), no_load, |i| i == 2, |_| 0.1),
                Some(2)
            );
            assert_eq!(b.pick_ramped(&ctx(&h), no_load, |_| false, |_| 0.1), None);
        }
        // least_request still prefers the idle one among its two draws.
        let b = Balancer::new(Strategy::LeastRequest, &[1, 1]);
        for _ in 0..200 {
            assert_eq!(
                b.pick_ramped(&ctx(&h), |i| [0, 9][i], all, |_| 0.5),
                Some(0)
            );
        }
    }

    #[test]
    fn concurrent_picks_add_up() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Balancer>();

        let b = Arc::new(Balancer::new(Strategy::RoundRobin, &[1, 1, 2]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut counts = [0usize; 3];
                    let h = HeaderMap::new();
                    for _ in 0..10_000 {
                        counts[b.pick(&ctx(&h), no_load, all).unwrap()] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = [0usize; 3];
        for t in threads {
            for (sum, c) in total.iter_mut().zip(t.join().unwrap()) {
                *sum += c;
            }
        }
        // Every cursor value is handed out once, so the split is exact.
        assert_eq!(total, [10_000, 10_000, 20_000]);
    }
}
