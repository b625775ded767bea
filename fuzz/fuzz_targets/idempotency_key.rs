//! `Idempotency-Key` parsing and the store-key scope on arbitrary header
//! values: never a panic; an accepted key is 1 to 255 printable ASCII bytes;
//! the structured-field spelling of an accepted key (quoted, `"` and `\`
//! escaped) is read as the same key; a value sent twice is refused; and two
//! different (key, caller) pairs never share a store key.
//!
//! cargo +nightly fuzz run idempotency_key -- -max_total_time=60

#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate::idempotency::{IDEMPOTENCY_KEY, read_key, storage_key};

fn key_of(values: &[&HeaderValue]) -> Result<Option<String>, ()> {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(IDEMPOTENCY_KEY.clone(), (*v).clone());
    }
    read_key(&h)
        .map(|k| k.map(|k| k.into_owned()))
        .map_err(|_| ())
}

fuzz_target!(|data: &[u8]| {
    let (left, right) = data.split_at(data.len() / 2);
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(Some(key)) = key_of(&[&value]) else {
        return;
    };
    assert!((1..=255).contains(&key.len()), "{key:?}");
    assert!(key.bytes().all(|b| (0x20..0x7f).contains(&b)), "{key:?}");

    let mut quoted = String::from("\"");
    for c in key.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    let quoted = HeaderValue::from_str(&quoted).expect("printable ASCII is a header value");
    assert_eq!(key_of(&[&quoted]), Ok(Some(key.clone())), "{quoted:?}");
    assert_eq!(key_of(&[&value, &value]), Err(()), "sent twice");

    // Splitting the input into two scopes at any point never collides with
    // the whole input as a key.
    if let (Ok(a), Ok(b)) = (std::str::from_utf8(left), std::str::from_utf8(right)) {
        assert_ne!(
            storage_key("r", a, b),
            storage_key("r", &key, ""),
            "({a:?}, {b:?}) and ({key:?}, \"\")"
        );
    }
});
