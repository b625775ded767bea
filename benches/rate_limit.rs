//! The local rate-limit check on the request path: one GCRA step for a key in a
//! store already holding 100k keys, for a keyed policy and for a route-wide one.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::config::units::Rate;
use tollgate::policy::rate_limit::{LocalLimiter, quota};

fn bench(c: &mut Criterion) {
    let rate: Rate = "1000000/s".parse().expect("rate");
    let q = quota(&rate, 1000).expect("quota");
    let keyed = LocalLimiter::new(q, false, 100_000);
    for k in 0..100_000u64 {
        keyed.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    let mut i = 0u64;
    c.bench_function("rate_limit/local_keyed_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % 100_000;
            black_box(keyed.check(black_box(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
        })
    });
    let shared = LocalLimiter::new(q, true, 1);
    c.bench_function("rate_limit/local_route_bucket", |b| {
        b.iter(|| black_box(shared.check(0)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
