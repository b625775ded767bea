//! Every example under `config/` must stay valid: they are what users copy.

use std::path::Path;

use tollgate::config::load_file_with_env;

#[test]
fn every_shipped_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // No environment: an example must not depend on the machine it runs on.
            if let Err(errors) = load_file_with_env(&path, &|_| None) {
                panic!("{} is invalid:\n{errors}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected minimal.yaml and full.yaml, found {checked} files"
    );
}

/// The benchmark configs (`benches/compare.sh`, `benches/k6/`) are run by
/// users too; they get their ports from the environment, with defaults.
#[test]
fn the_benchmark_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // compare.sh generates the JWKS at run time; any valid JWKS file will do here.
    let jwks = root.join("config/examples/jwks.json");
    let env = |name: &str| (name == "TOLLGATE_BENCH_JWKS").then(|| jwks.display().to_string());
    for file in [
        "benches/bench.yaml",
        "benches/bench-policy.yaml",
        "benches/bench-cache.yaml",
        "benches/k6/reload.yaml",
    ] {
        if let Err(errors) = load_file_with_env(&root.join(file), &env) {
            panic!("{file} is invalid:\n{errors}");
        }
    }
}
