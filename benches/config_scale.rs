//! What a config of 1,000 and 10,000 routes costs to load, the way a reload
//! does it (minus reading the file): YAML parse, `${ENV}` substitution,
//! per-item deserialize and validation (`config::load_str_with_env`), compile
//! into the runtime `Snapshot` (`snapshot::build::compile`), and the whole
//! swap on a running gateway (`App::reload`: compile against the live
//! carry-over state, swap, retain, forget removed metric series, diff).
//!
//! The config is `tests/it/support/scale.rs`: prefix, exact, tenant-host and regex
//! routes over N/33 upstreams with auth, rate limits, header rewrites.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tollgate::config::{LoadedConfig, load_str_with_env};
use tollgate::metrics::Metrics;
use tollgate::snapshot::build::compile;
use tollgate::snapshot::carryover::Carryover;
use tollgate::{App, BuildOptions};

#[path = "../tests/it/support/scale.rs"]
mod scale;

const SIZES: [usize; 2] = [1_000, 10_000];

fn yaml(routes: usize, variant: u8) -> String {
    scale::Scale {
        routes,
        variant,
        server: "listeners:\n  - name: http\n    bind: 127.0.0.1:0".into(),
        targets: scale::private_targets,
    }
    .yaml()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> LoadedConfig {
    match load_str_with_env(text, "scale.yaml", &no_env) {
        Ok(l) => l,
        Err(e) => panic!("the scale config must load: {e}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

fn config_scale(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("config_scale");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for n in SIZES {
        let texts = [yaml(n, 0), yaml(n, 1)];

        // Parse + validate: everything before compile.
        group.bench_with_input(BenchmarkId::new("load", n), &texts[0], |b, text| {
            b.iter(|| load(black_box(text)))
        });

        // Compile into a Snapshot, first version (no state to carry over).
        let loaded = load(&texts[0]);
        group.bench_with_input(BenchmarkId::new("compile_cold", n), &loaded, |b, loaded| {
            // Inside the runtime, as in the gateway (limiters start sweepers).
            let _guard = rt.enter();
            b.iter(|| {
                let metrics = Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
                let carry = Carryover::default();
                compile(black_box(loaded), &metrics, &carry)
                    .unwrap_or_else(|e| panic!("the scale config must compile: {e}"))
            })
        });

        // A whole reload on a running gateway, alternating the two variants:
        // load + compile + swap + retain + metric cleanup + diff.
        let app: App = rt.block_on(async {
            tollgate::build(load(&texts[0]), BuildOptions::default())
                .await
                .unwrap_or_else(|e| panic!("gateway: {e}"))
        });
        let mut next = 1;
        group.bench_function(BenchmarkId::new("reload", n), |b| {
            b.iter(|| {
                let loaded = load(&texts[next]);
                next ^= 1;
                rt.block_on(app.reload(loaded))
                    .unwrap_or_else(|e| panic!("reload: {e:?}"))
            })
        });
        rt.block_on(app.shutdown());
    }
    group.finish();
}

criterion_group!(benches, config_scale);
criterion_main!(benches);
