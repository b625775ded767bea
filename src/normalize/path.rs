//! One canonical spelling of a request path, so that the router, the policies,
//! the access log and the upstream all see the same path
//! (docs/reference/path-normalization.md has the rules and a table of examples).
//!
//! In one pass over the bytes: escapes of unreserved characters are decoded
//! (`%61` -> `a`, `%2E` -> `.`), every other escape is kept with uppercase hex,
//! bytes that may not stand raw in a path are escaped, dot-segments are resolved
//! (encoded ones too; a segment that is a dot-segment once its `;params` are
//! cut off counts as one), and empty segments are merged. `%25` is never
//! decoded, so a path is never decoded twice. A path that is already canonical
//! is borrowed, not copied.

use std::borrow::Cow;

use crate::config::schema::{EscapedSlashes, PathNormalization};

/// Why a path has no canonical spelling: the request is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// `%2F`, `%5C` or a raw `\` while `escaped_slashes` is `reject`.
    EscapedSlash,
    /// `%00`.
    NulByte,
    /// More `..` segments than there are segments to climb out of.
    AboveRoot,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::InvalidEscape => "the request path has an invalid percent-escape",
            PathError::EscapedSlash => "the request path has an encoded slash or backslash",
            PathError::NulByte => "the request path has a NUL byte",
            PathError::AboveRoot => "the request path climbs above the root",
        }
    }
}

/// A normalised path: the one forwarded upstream, and the one routes match on
/// when they differ (path parameters cut off each segment).
#[derive(Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    pub path: Cow<'a, str>,
    /// `Some` only when the path has `;` parameters: `/admin;jsessionid=1`
    /// matches as `/admin` and is forwarded unchanged.
    pub match_path: Option<String>,
}

impl NormalPath<'_> {
    /// The path routes match on.
    pub fn for_matching(&self) -> &str {
        self.match_path.as_deref().unwrap_or(&self.path)
    }
}

/// Byte classes of a path: what may stand raw, and what only escaped.
const UNRESERVED: u8 = 1;
/// sub-delims, `:` and `@`: the rest of RFC 3986's `pchar`.
const PCHAR_OTHER: u8 = 2;

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            UNRESERVED
        } else if matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        ) {
            PCHAR_OTHER
        } else {
            0
        };
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

/// Normalises `path` (the path of a request target, without its query).
pub fn normalize<'a>(
    path: &'a str,
    rules: &PathNormalization,
) -> Result<NormalPath<'a>, PathError> {
    let normal = if is_canonical(path.as_bytes(), rules.merge_slashes) {
        Cow::Borrowed(path)
    } else {
        let built = rebuild(path.as_bytes(), rules)?;
        if built == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(built)
        }
    };
    let match_path = normal.contains(';').then(|| strip_params(&normal));
    Ok(NormalPath {
        path: normal,
        match_path,
    })
}

/// The fast check: raw pchars and slashes only, no empty segment (when merging)
/// and no dot-segment. Most paths pass it and are used as they are.
fn is_canonical(path: &[u8], merge_slashes: bool) -> bool {
    // The asterisk-form of OPTIONS, and anything not starting at the root,
    // have no segments to resolve.
    if path.first() != Some(&b'/') {
        return path == b"*";
    }
    let mut seg_start = 1;
    for i in 1..=path.len() {
        let b = path.get(i).copied();
        if b.is_some_and(|b| b != b'/') {
            if CLASS[b.unwrap_or_default() as usize] == 0 {
                return false;
            }
            continue;
        }
        let seg = &path[seg_start..i];
        // An empty segment is fine only as the trailing slash.
        if seg.is_empty() && b.is_some() && merge_slashes {
            return false;
        }
        if is_dot_segment(seg) {
            return false;
        }
        seg_start = i + 1;
    }
    true
}

/// `.` or `..`, once `;params` are cut off.
fn is_dot_segment(seg: &[u8]) -> bool {
    let base = seg.split(|&b| b == b';').next().unwrap_or_default();
    base == b"." || base == b".."
}

/// The slow path: decodes, re-escapes and resolves segment by segment.
fn rebuild(path: &[u8], rules: &PathNormalization) -> Result<String, PathError> {
    if path.first() != Some(&b'/') {
        // Not origin-form (http only lets `*` through here): nothing to resolve.
        return Ok(String::from_utf8_lossy(path).into_owned());
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut seg: Vec<u8> = Vec::new();
    let mut i = 1;
    loop {
        let b = path.get(i).copied();
        let separator = match b {
            None | Some(b'/') => true,
            Some(b'\\') => match rules.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => {
                    seg.extend_from_slice(b"%5C");
                    false
                }
                EscapedSlashes::Decode => true,
            },
            Some(b'%') => {
                let value = path
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?))
                    .ok_or(PathError::InvalidEscape)?;
                i += 2;
                match value {
                    0 => return Err(PathError::NulByte),
                    b'/' | b'\\' => match rules.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => {
                            push_escape(&mut seg, value);
                            false
                        }
                        EscapedSlashes::Decode => true,
                    },
                    v if CLASS[v as usize] == UNRESERVED => {
                        seg.push(v);
                        false
                    }
                    v => {
                        push_escape(&mut seg, v);
                        false
                    }
                }
            }
            Some(b) if CLASS[b as usize] != 0 => {
                seg.push(b);
                false
            }
            // A raw NUL is refused like `%00` (escaping it would make a path
            // this function itself refuses).
            Some(0) => return Err(PathError::NulByte),
            Some(b) => {
                push_escape(&mut seg, b);
                false
            }
        };
        if separator {
            let last = b.is_none();
            end_segment(&mut out, &seg, last, rules.merge_slashes)?;
            seg.clear();
            if last {
                break;
            }
        }
        i += 1;
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was pushed: raw non-ASCII bytes were escaped.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Appends one segment to `out` (`/a/b`, without a trailing slash until the
/// last segment asks for one), resolving `.` and `..` (RFC 3986 §5.2.4).
fn end_segment(out: &mut Vec<u8>, seg: &[u8], last: bool, merge: bool) -> Result<(), PathError> {
    let base = seg.split(|&b| b == b';').next().unwrap_or_default();
    if base == b"." {
        // Dropped; as the last segment it leaves the directory: `/a/.` is `/a/`.
    } else if base == b".." {
        if out.is_empty() {
            return Err(PathError::AboveRoot);
        }
        let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
        out.truncate(cut);
    } else if seg.is_empty() {
        if last || !merge {
            out.push(b'/');
        }
        return Ok(());
    } else {
        out.push(b'/');
        out.extend_from_slice(seg);
        return Ok(());
    }
    if last {
        out.push(b'/');
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
}

/// `path` with each segment's `;params` cut off.
fn strip_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(escaped_slashes: EscapedSlashes, merge_slashes: bool) -> PathNormalization {
        PathNormalization {
            escaped_slashes,
            merge_slashes,
        }
    }

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, &PathNormalization::default()).map(|n| n.path.into_owned())
    }

    #[test]
    fn table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/admin", Ok("/admin")),
            ("/admin/", Ok("/admin/")),
            ("//admin", Ok("/admin")),
            ("///admin//x//", Ok("/admin/x/")),
            ("/x/../admin", Ok("/admin")),
            ("/./admin", Ok("/admin")),
            ("/%2e/admin", Ok("/admin")),
            ("/x/%2e%2e/admin", Ok("/admin")),
            ("/x/%2e%2E/admin", Ok("/admin")),
            ("/x/.%2e/admin", Ok("/admin")),
            ("/%61dmin", Ok("/admin")),
            ("/%41%44MIN", Ok("/ADMIN")),
            ("/admin%2f", Err(EscapedSlash)),
            ("/x/..%2fadmin", Err(EscapedSlash)),
            ("/admin%5c", Err(EscapedSlash)),
            ("/admin\\x", Err(EscapedSlash)),
            ("/admin;x", Ok("/admin;x")),
            ("/x/..;/admin", Ok("/admin")),
            ("/x/.;y/admin", Ok("/x/admin")),
            ("/%2561dmin", Ok("/%2561dmin")),
            ("/a%3fb", Ok("/a%3Fb")),
            ("/a%c3%a9", Ok("/a%C3%A9")),
            ("/a\u{e9}", Ok("/a%C3%A9")),
            ("/a\"b{c}", Ok("/a%22b%7Bc%7D")),
            ("/admin/.", Ok("/admin/")),
            ("/admin/..", Ok("/")),
            ("/admin/x/..", Ok("/admin/")),
            ("/admin.", Ok("/admin.")),
            ("/admin...", Ok("/admin...")),
            ("/..", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/../admin", Err(AboveRoot)),
            ("/%2e%2e/admin", Err(AboveRoot)),
            ("/a%", Err(InvalidEscape)),
            ("/a%2", Err(InvalidEscape)),
            ("/a%zz", Err(InvalidEscape)),
            ("/a%00", Err(NulByte)),
            ("/a\0b", Err(NulByte)),
            ("*", Ok("*")),
            ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
            ("/~user/-_.", Ok("/~user/-_.")),
            ("/%7euser", Ok("/~user")),
        ];
        for (input, want) in cases {
            let got = norm(input);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{input}");
        }
    }

    #[test]
    fn escaped_slash_modes() {
        let keep = rules(EscapedSlashes::Keep, true);
        let decode = rules(EscapedSlashes::Decode, true);
        let cases = [
            ("/a%2fb", "/a%2Fb", "/a/b"),
            ("/x/..%2Fadmin", "/x/..%2Fadmin", "/admin"),
            ("/a%5cb", "/a%5Cb", "/a/b"),
            ("/a\\b", "/a%5Cb", "/a/b"),
            ("/a%2F%2Fb", "/a%2F%2Fb", "/a/b"),
        ];
        for (input, kept, decoded) in cases {
            assert_eq!(
                normalize(input, &keep).map(|n| n.path),
                Ok(kept.into()),
                "{input}"
            );
            assert_eq!(
                normalize(input, &decode).map(|n| n.path),
                Ok(decoded.into()),
                "{input}"
            );
        }
    }

    #[test]
    fn slashes_kept_when_not_merging() {
        let r = rules(EscapedSlashes::Reject, false);
        let cases = [
            ("//admin", "//admin"),
            ("/a//b/", "/a//b/"),
            ("/a//../b", "/a/b"),
            ("/a/./b", "/a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize(input, &r).map(|n| n.path),
                Ok(want.into()),
                "{input}"
            );
        }
    }

    #[test]
    fn params_do_not_hide_segments() {
        let n =
            normalize("/admin;jsessionid=1/x;v=2", &PathNormalization::default()).expect("valid");
        assert_eq!(n.path, "/admin;jsessionid=1/x;v=2");
        assert_eq!(n.for_matching(), "/admin/x");
        // An encoded semicolon is data, not a parameter.
        let n = normalize("/admin%3bx", &PathNormalization::default()).expect("valid");
        assert_eq!(n.for_matching(), "/admin%3Bx");
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/api/users/7", "/a/b/", "/a;b", "/a%2Fb"] {
            let keep = rules(EscapedSlashes::Keep, true);
            let n = normalize(p, &keep).expect("valid");
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p}");
        }
    }

    /// A small deterministic generator (xorshift): paths drawn from the
    /// characters that matter, so every branch is hit many times.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn path(&mut self) -> String {
            const PIECES: &[&str] = &[
                "/", "/", "a", "B", ".", "..", "%2e", "%2E", "%2f", "%5C", "\\", "%61", "%41",
                "%25", "%3b", ";", "%", "%g", "%00", "~", "-", "é", "\"", ":", "@", "%c3%a9", "x",
            ];
            let len = (self.next() % 12) as usize;
            let mut s = String::from("/");
            for _ in 0..len {
                s.push_str(PIECES[(self.next() % PIECES.len() as u64) as usize]);
            }
            s
        }
    }

    /// Normalising twice equals normalising once, and no output has `//`
    /// (when merging), a dot-segment, an escape of an unreserved character, a
    /// lowercase escape or a byte that may not stand raw.
    #[test]
    fn properties_hold_for_generated_paths() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let modes = [
            rules(EscapedSlashes::Reject, true),
            rules(EscapedSlashes::Keep, true),
            rules(EscapedSlashes::Decode, true),
            rules(EscapedSlashes::Keep, false),
        ];
        let mut checked = 0;
        for _ in 0..20_000 {
            let input = g.path();
            for r in &modes {
                let Ok(once) = normalize(&input, r) else {
                    continue;
                };
                checked += 1;
                let twice = normalize(&once.path, r).expect("a normal path normalises");
                assert_eq!(twice.path, once.path, "idempotent: {input:?}");
                assert_eq!(twice.match_path, once.match_path, "{input:?}");
                assert_output_is_canonical(&once.path, r, &input);
            }
        }
        assert!(checked > 10_000, "too few valid paths generated: {checked}");
    }

    fn assert_output_is_canonical(out: &str, r: &PathNormalization, input: &str) {
        let b = out.as_bytes();
        assert_eq!(b[0], b'/', "{input:?} -> {out:?}");
        if r.merge_slashes {
            assert!(!out.contains("//"), "{input:?} -> {out:?}");
        }
        for seg in out.split('/') {
            assert!(!is_dot_segment(seg.as_bytes()), "{input:?} -> {out:?}");
        }
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let h = &b[i + 1..i + 3];
                assert!(
                    h.iter()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
                    "{input:?} -> {out:?}"
                );
                let v = hex(h[0]).unwrap() << 4 | hex(h[1]).unwrap();
                assert_ne!(CLASS[v as usize], UNRESERVED, "{input:?} -> {out:?}");
                i += 3;
            } else {
                assert!(
                    b[i] == b'/' || CLASS[b[i] as usize] != 0,
                    "{input:?} -> {out:?}"
                );
                i += 1;
            }
        }
    }
}
