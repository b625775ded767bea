//! The crate's imports run one way: a module uses only modules in lower layers,
//! or modules listed before it in its own layer (docs/ARCHITECTURE.md,
//! "Dependency rules"). This test reads every `crate::` path in `src/` and
//! fails on one that runs upward, naming the file, the import and the rule.
//! Unit tests (`#[cfg(test)] mod … { }`) may use anything and are skipped.

use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top. Within a layer, the order is the allowed direction too.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "tls",
            "config",
            "error",
            "headers",
            "conn",
            "proxy_protocol",
            "otel",
            "metrics",
            "normalize",
            "body",
            "store_breaker",
            "testing",
        ],
    ),
    (
        "domain",
        &[
            "router",
            "access_log",
            "compression",
            "policy",
            "upstream",
            "idempotency",
            "steering",
            "cache",
        ],
    ),
    ("state", &["snapshot", "shared"]),
    ("builder", &["snapshot::build"]),
    ("request path", &["explain", "k6", "proxy"]),
    ("edges", &["server", "reload", "admin", "demo"]),
    ("root", &["lib"]),
];

/// (layer index, position in the layer) of a unit.
fn rank(unit: &str) -> Option<(usize, usize)> {
    LAYERS
        .iter()
        .enumerate()
        .find_map(|(l, (_, units))| units.iter().position(|u| *u == unit).map(|p| (l, p)))
}

/// The unit a path below `crate::` belongs to: its first segment, except the
/// snapshot builder, which is a layer of its own.
fn unit_of(segments: &[&str]) -> String {
    match segments {
        ["snapshot", "build", ..] => "snapshot::build".into(),
        [first, ..] => (*first).into(),
        [] => "lib".into(),
    }
}

/// The unit a source file belongs to.
fn unit_of_file(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["lib"] | ["main"] => "lib".into(),
        [first, "mod"] => (*first).into(),
        _ => unit_of(&parts),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments, string and character literals blanked out
/// (line breaks kept, so line numbers stay true).
fn blank_literals(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // Copies `b[from..to]` as spaces, keeping line breaks.
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for &c in &b[from..to.min(b.len())] {
            out.push(if c == b'\n' { b'\n' } else { b' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            i + 2 + find(&rest[2..], b"*/").map_or(rest.len(), |p| p + 2)
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"…", r#"…"#, br"…": ends at the quote and as many hashes.
            let open = rest.iter().position(|&c| c == b'"').unwrap() + 1;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            i + open + find(&rest[open..], &close).map_or(rest.len(), |p| p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            i + j + 1
        } else if rest[0] == b'\'' && char_literal_len(rest).is_some() {
            i + char_literal_len(rest).unwrap()
        } else {
            out.push(b[i]);
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        i = end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The number of `#` of a raw string literal starting here, if one does.
fn raw_string_start(s: &[u8]) -> Option<usize> {
    let s = s.strip_prefix(b"b").unwrap_or(s);
    let s = s.strip_prefix(b"r")?;
    let hashes = s.iter().take_while(|&&c| c == b'#').count();
    (s.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// The length of a character literal starting here (`'a'`, `'\''`, `'\u{..}'`),
/// or `None` for a lifetime.
fn char_literal_len(s: &[u8]) -> Option<usize> {
    if s.get(1) == Some(&b'\\') {
        let close = s[2..].iter().position(|&c| c == b'\'')?;
        return Some(2 + close + if close == 0 { 2 } else { 1 });
    }
    let c = std::str::from_utf8(&s[1..s.len().min(5)])
        .ok()
        .or_else(|| std::str::from_utf8(&s[1..s.len().min(2)]).ok())?
        .chars()
        .next()?;
    let n = 1 + c.len_utf8();
    (s.get(n) == Some(&b'\'')).then_some(n + 1)
}

/// The code of a file as the layer rules see it: no comments, no literals, no
/// `#[cfg(test)]` modules.
fn code_only(src: &str) -> String {
    let code = blank_literals(src);
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    const ATTR: &str = "#[cfg(test)]";
    while let Some(at) = code[i..].find(ATTR) {
        let start = i + at;
        out.push_str(&code[i..start]);
        let after = start + ATTR.len();
        let rest = code[after..].trim_start();
        let is_mod = rest.starts_with("mod ")
            && rest
                .find('{')
                .is_some_and(|o| rest.find(';').is_none_or(|s| o < s));
        if !is_mod {
            i = after;
            continue;
        }
        let open = after + (code.len() - after - rest.len()) + rest.find('{').unwrap();
        let mut depth = 0usize;
        let mut j = open;
        while j < b.len() {
            match b[j] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        out.extend(
            code[start..(j + 1).min(b.len())]
                .chars()
                .filter(|&c| c == '\n'),
        );
        i = (j + 1).min(b.len());
    }
    out.push_str(&code[i..]);
    out
}

/// The paths of one use-tree or path expression that starts at `s` (just
/// after `crate::`), as segment lists; returns them and the bytes consumed.
fn parse_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if i < b.len() && b[i] == b'{' {
        i += 1;
        let mut all = Vec::new();
        loop {
            skip_ws(&mut i);
            if i >= b.len() || b[i] == b'}' {
                i += 1;
                break;
            }
            let (paths, used) = parse_tree(&s[i..]);
            all.extend(paths);
            i += used;
            skip_ws(&mut i);
            if i < b.len() && b[i] == b',' {
                i += 1;
            }
        }
        return (all, i);
    }
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    let ident = s[start..i].to_string();
    if ident.is_empty() {
        // `*` or something this reader does not follow: no segment.
        return (vec![vec![]], i.max(1));
    }
    if s[i..].starts_with("::") {
        let (rest, used) = parse_tree(&s[i + 2..]);
        let paths = rest
            .into_iter()
            .map(|mut p| {
                p.insert(0, ident.clone());
                p
            })
            .collect();
        return (paths, i + 2 + used);
    }
    (vec![vec![ident]], i)
}

struct Import {
    line: usize,
    path: String,
    unit: String,
}

fn imports(code: &str) -> Vec<Import> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        let before = code[..start].chars().next_back();
        from = start + "crate::".len();
        // `$crate::` in macros, or `foo_crate::`: not this crate's path.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let (paths, used) = parse_tree(&code[from..]);
        let line = code[..start].matches('\n').count() + 1;
        for p in paths {
            let segs: Vec<&str> = p.iter().map(String::as_str).collect();
            if segs.is_empty() || segs == ["self"] {
                continue;
            }
            out.push(Import {
                line,
                path: format!("crate::{}", segs.join("::")),
                unit: unit_of(&segs),
            });
        }
        from += used;
    }
    out
}

/// The units a name directly below `crate::` may be: a module, or an item of
/// lib.rs (`crate::Shared` and the like count as the root).
fn known_module(root: &Path, unit: &str) -> bool {
    let first = unit.split("::").next().unwrap();
    root.join(format!("{first}.rs")).exists() || root.join(first).is_dir()
}

#[test]
fn imports_run_only_downward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let me = unit_of_file(rel);
        let Some(my_rank) = rank(&me) else {
            broken.push(format!(
                "src/{}: module `{me}` is in no layer; add it to LAYERS in tests/it/layers.rs \
                 and to docs/ARCHITECTURE.md",
                rel.display()
            ));
            continue;
        };
        let code = code_only(&fs::read_to_string(file).unwrap());
        for import in imports(&code) {
            checked += 1;
            let unit = if known_module(&root, &import.unit) {
                import.unit.clone()
            } else {
                "lib".to_string()
            };
            if unit == me {
                continue;
            }
            let Some(their_rank) = rank(&unit) else {
                broken.push(format!(
                    "src/{}:{}: `{}`: module `{unit}` is in no layer",
                    rel.display(),
                    import.line,
                    import.path
                ));
                continue;
            };
            if their_rank >= my_rank {
                let (my_layer, their_layer) = (LAYERS[my_rank.0].0, LAYERS[their_rank.0].0);
                let rule = if my_rank.0 == their_rank.0 {
                    format!(
                        "within the {my_layer} layer, `{me}` may only use modules listed before it"
                    )
                } else {
                    format!(
                        "`{me}` ({my_layer}) may not use `{unit}` ({their_layer}): imports run \
                         only to lower layers"
                    )
                };
                broken.push(format!(
                    "src/{}:{}: `{}`: {rule}",
                    rel.display(),
                    import.line,
                    import.path
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} imports found: the reader is broken"
    );
    assert!(
        broken.is_empty(),
        "{} import(s) break the layer rules:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// The reader itself: groups, nesting, inline paths, comments, strings and
/// test modules.
#[test]
fn the_reader_finds_what_a_file_imports() {
    let src = r#"
use crate::{a::{b, c::D}, e};
// use crate::commented;
/* crate::block */
const S: &str = "crate::in_a_string";
const C: char = '"'; const Q: u8 = b'{'; fn l<'a>(x: &'a str) {}
fn f() { crate::g::h(); $crate::macro_path; }
use crate::snapshot::build::compile;
#[cfg(test)]
mod tests {
    use crate::proxy::Exchange;
}
use crate::after_tests;
"#;
    let found: Vec<(usize, String, String)> = imports(&code_only(src))
        .into_iter()
        .map(|i| (i.line, i.path, i.unit))
        .collect();
    let want = [
        (2, "crate::a::b", "a"),
        (2, "crate::a::c::D", "a"),
        (2, "crate::e", "e"),
        (7, "crate::g::h", "g"),
        (8, "crate::snapshot::build::compile", "snapshot::build"),
        (13, "crate::after_tests", "after_tests"),
    ];
    let want: Vec<(usize, String, String)> = want
        .iter()
        .map(|(l, p, u)| (*l, p.to_string(), u.to_string()))
        .collect();
    assert_eq!(found, want);
    assert_eq!(
        unit_of_file(Path::new("snapshot/build.rs")),
        "snapshot::build"
    );
    assert_eq!(unit_of_file(Path::new("snapshot/mod.rs")), "snapshot");
    assert_eq!(unit_of_file(Path::new("snapshot/carryover.rs")), "snapshot");
    assert_eq!(unit_of_file(Path::new("main.rs")), "lib");
    assert_eq!(unit_of_file(Path::new("policy/jwt.rs")), "policy");
}
