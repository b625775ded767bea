//! The path normaliser on arbitrary input: it never panics, its output is a
//! valid URI path, normalising it again changes nothing, and no output keeps
//! `//` (when merging), a dot-segment or an escape of an unreserved character;
//! a path that is not origin-form comes back unchanged.
//!
//! cargo +nightly fuzz run normalize_path -- -max_total_time=60

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::schema::{EscapedSlashes, PathNormalization};
use tollgate::normalize::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(input) = std::str::from_utf8(rest) else {
        return;
    };
    let rules = PathNormalization {
        escaped_slashes: match mode % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
        merge_slashes: mode & 0x80 == 0,
    };
    let Ok(once) = normalize(input, &rules) else {
        return;
    };
    let out: &str = &once.path;
    // Only origin-form paths have segments to resolve; anything else (`*`,
    // the empty path of an authority-form CONNECT) is handed back as it is.
    if !input.starts_with('/') {
        assert_eq!(out, input, "not origin-form: unchanged");
        return;
    }
    http::uri::PathAndQuery::try_from(out).expect("the output is a valid URI path");
    let twice = normalize(out, &rules).expect("a normal path normalises");
    assert_eq!(twice.path, once.path, "idempotent");
    assert_eq!(twice.match_path, once.match_path);
    assert!(out.starts_with('/'));
    if rules.merge_slashes {
        assert!(!out.contains("//"), "{input:?} -> {out:?}");
    }
    for seg in once.for_matching().split('/') {
        assert!(seg != "." && seg != "..", "{input:?} -> {out:?}");
    }
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let hex = &out[i + 1..i + 3];
            assert_eq!(hex, hex.to_ascii_uppercase(), "{input:?} -> {out:?}");
            let v = u8::from_str_radix(hex, 16).expect("hex");
            let unreserved = v.is_ascii_alphanumeric() || b"-._~".contains(&v);
            assert!(!unreserved, "{input:?} -> {out:?}");
        }
    }
});
