//! TEMPORARY balancer; replaced by the real one from the balancer work.
use std::sync::atomic::{AtomicUsize, Ordering};
pub enum Strategy {
    RoundRobin,
    LeastRequest,
    Random,
    IpHash,
    HeaderHash(http::HeaderName),
    CookieHash(String),
}
impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(_s: &str) -> Result<Self, String> {
        Ok(Strategy::RoundRobin)
    }
}
pub struct PickContext<'a> {
    pub client_ip: std::net::IpAddr,
    pub headers: &'a http::HeaderMap,
}
pub struct Balancer {
    n: usize,
    next: AtomicUsize,
}
impl Balancer {
    pub fn new(_strategy: Strategy, weights: &[u32]) -> Balancer {
        Balancer {
            n: weights.len(),
            next: AtomicUsize::new(0),
        }
    }
    pub fn pick(
        &self,
        _ctx: &PickContext<'_>,
        _load: impl Fn(usize) -> u32,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.n)
            .map(|k| (start + k) % self.n)
            .find(|&i| eligible(i))
    }
}
