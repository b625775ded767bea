//! The config loader on arbitrary text: YAML parsing, `${VAR}` substitution,
//! per-section deserialization and validation never panic, and every error
//! they report points into the text (a line and column from 1), since the
//! text itself was given (line 0 is only for a file that cannot be read).
//!
//! cd fuzz && mkdir -p corpus/config_load &&
//!   cargo +nightly fuzz run config_load corpus/config_load ../config -- -max_total_time=60

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::load_str_with_env;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A small fixed environment: substitution paths run, nothing leaks in.
    let env = |name: &str| match name {
        "PORT" => Some("8080".to_string()),
        "HOST" => Some("127.0.0.1".to_string()),
        _ => None,
    };
    if let Err(errors) = load_str_with_env(text, "fuzz.yaml", &env) {
        assert!(!errors.0.is_empty(), "an error result with no error");
        for e in &errors.0 {
            assert!(
                e.line >= 1 && e.column >= 1,
                "an error without a position: {e:?}\n--- input ---\n{text}"
            );
            assert!(!e.message.is_empty(), "an error without a message: {e:?}");
        }
    }
});
