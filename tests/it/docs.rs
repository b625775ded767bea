//! The documentation is checked like code.
//!
//! 1. Every relative Markdown link (`[text](path)`, `[text](path#anchor)`,
//!    `[text](#anchor)`, and reference definitions `[id]: path`) in README.md,
//!    CONTRIBUTING.md / CHANGELOG.md when present, docs/**/*.md and
//!    benches/README.md must point at a file or directory that exists; an
//!    `#anchor` into a Markdown file must match one of its headings, slugged the
//!    way GitHub does it.
//! 2. Every fenced block tagged exactly ```` ```yaml ```` in those files is a
//!    complete tollgate config and must pass tollgate's own loader and
//!    validator, with an empty environment (as the files in `config/` do, see
//!    tests/config_examples.rs). Pieces of a config, and YAML that is not a
//!    tollgate config, are tagged ```` ```yaml fragment ```` and skipped. The
//!    convention is written down in docs/reference/README.md.
//!
//! A failure names the file and line of every broken link and invalid example.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tollgate::config::load_str_with_env;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files under the documentation's contract.
fn doc_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = Vec::new();
    for name in [
        "README.md",
        "CONTRIBUTING.md",
        "CHANGELOG.md",
        "benches/README.md",
    ] {
        let path = root.join(name);
        if path.is_file() {
            files.push(path);
        }
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `path` relative to the repository, with `..` and `.` resolved lexically.
fn relative(path: &Path) -> String {
    use std::path::Component;
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    clean
        .strip_prefix(root())
        .unwrap_or(&clean)
        .display()
        .to_string()
}

/// A fenced code block: its info string, the 1-based line of its first content
/// line, and its content with the fence's indentation removed.
struct Block {
    info: String,
    first_line: usize,
    text: String,
}

/// One Markdown file split into prose lines (with their 1-based numbers) and
/// fenced code blocks.
struct Parsed {
    prose: Vec<(usize, String)>,
    blocks: Vec<Block>,
}

fn parse(text: &str) -> Parsed {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    // (fence char, fence length, indentation, block being filled)
    let mut open: Option<(char, usize, usize, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        let fence = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        match &mut open {
            Some((c, len, fence_indent, block)) => {
                let run = fence(*c);
                if run >= *len && trimmed[run..].trim().is_empty() {
                    let (_, _, _, block) = open.take().expect("an open block");
                    blocks.push(block);
                } else {
                    let cut = indent.min(*fence_indent);
                    block.text.push_str(&line[cut..]);
                    block.text.push('\n');
                }
            }
            None => {
                let (c, run) = match (fence('`'), fence('~')) {
                    (n, _) if n >= 3 => ('`', n),
                    (_, n) if n >= 3 => ('~', n),
                    _ => {
                        prose.push((number, line.to_string()));
                        continue;
                    }
                };
                let info = trimmed[run..].trim().to_string();
                open = Some((
                    c,
                    run,
                    indent,
                    Block {
                        info,
                        first_line: number + 1,
                        text: String::new(),
                    },
                ));
            }
        }
    }
    if let Some((_, _, _, block)) = open {
        // An unclosed fence runs to the end of the file, as in CommonMark.
        blocks.push(block);
    }
    Parsed { prose, blocks }
}

/// The line without its code spans (`` `[not](a link)` ``).
fn strip_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        // Find the closing run of exactly the same length.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = chars[j..].iter().take_while(|&&c| c == '`').count();
                if n == run {
                    close = Some(j + n);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push_str("``");
                i = end;
            }
            None => {
                // No closing run: the backticks are literal.
                for _ in 0..run {
                    out.push('`');
                }
                i += run;
            }
        }
    }
    out
}

/// The destinations of the inline links and images of one prose line, and of a
/// reference definition (`[id]: destination`).
fn link_targets(line: &str) -> Vec<String> {
    let line = strip_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(end) = trimmed.find("]:")
    {
        let label = &trimmed[1..end];
        if !label.is_empty() && !label.contains('[') {
            if let Some(dest) = trimmed[end + 2..].split_whitespace().next() {
                targets.push(dest.trim_matches(['<', '>']).to_string());
            }
            return targets;
        }
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        // The destination ends at the matching `)`; nested parentheses are allowed.
        let mut depth = 0usize;
        let mut end = None;
        for (k, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(k);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let inside = after[..end].trim();
        // `(path "title")`: the destination is the first word.
        let dest = if let Some(stripped) = inside.strip_prefix('<') {
            stripped.split('>').next().unwrap_or("")
        } else {
            inside.split_whitespace().next().unwrap_or("")
        };
        if !dest.is_empty() {
            targets.push(dest.to_string());
        }
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped (except `-`
/// and `_`), spaces to hyphens. Inline markup is reduced to its text first.
fn slug(heading: &str) -> String {
    // `[text](url)` -> text
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c.to_lowercase().collect::<String>())
            } else if c == ' ' {
                Some("-".to_string())
            } else {
                None
            }
        })
        .collect()
}

/// Every anchor a Markdown file offers: its headings' slugs, with GitHub's
/// `-1`, `-2`... suffixes for repeated ones.
fn anchors(parsed: &Parsed) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for (_, line) in &parsed.prose {
        let trimmed = line.trim_start();
        let level = trimmed.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) || line.len() - trimmed.len() > 3 {
            continue;
        }
        let rest = &trimmed[level..];
        if !(rest.is_empty() || rest.starts_with(' ')) {
            continue;
        }
        let text = rest.trim().trim_end_matches('#').trim();
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        out.insert(anchor);
    }
    out
}

fn is_external(target: &str) -> bool {
    let scheme_end = target.find(':');
    let first_sep = target.find(['/', '#', '?']);
    match (scheme_end, first_sep) {
        (Some(c), Some(s)) => c < s,
        (Some(_), None) => true,
        _ => false,
    }
}

#[test]
fn relative_links_resolve() {
    let root = root();
    let files = doc_files();
    assert!(
        files.len() >= 5,
        "expected README.md and the docs/ tree, found {files:?}"
    );
    let mut anchor_cache: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    let mut anchors_of = |path: &Path| -> HashSet<String> {
        anchor_cache
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                anchors(&parse(&text))
            })
            .clone()
    };
    let mut broken = String::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable Markdown file");
        let parsed = parse(&text);
        let dir = file.parent().expect("a file has a directory");
        for (number, line) in &parsed.prose {
            for target in link_targets(line) {
                if is_external(&target) {
                    continue;
                }
                checked += 1;
                let (path_part, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let path_part = path_part.split('?').next().unwrap_or("");
                let resolved = if path_part.is_empty() {
                    file.clone()
                } else if let Some(from_root) = path_part.strip_prefix('/') {
                    root.join(from_root)
                } else {
                    dir.join(path_part.replace("%20", " "))
                };
                let at = format!("{}:{number}", relative(file));
                if !resolved.exists() {
                    let _ = writeln!(
                        broken,
                        "{at}: broken link `{target}`: {} does not exist",
                        relative(&resolved)
                    );
                    continue;
                }
                let Some(anchor) = anchor.filter(|a| !a.is_empty()) else {
                    continue;
                };
                if resolved.extension().is_some_and(|e| e == "md") {
                    let offered = anchors_of(&resolved);
                    if !offered.contains(&anchor.to_lowercase()) {
                        let _ = writeln!(
                            broken,
                            "{at}: broken link `{target}`: {} has no heading with the anchor `#{anchor}`",
                            relative(&resolved)
                        );
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken links in the documentation:\n{broken}"
    );
    assert!(
        checked >= 20,
        "only {checked} relative links found: is the link parser broken?"
    );
}

#[test]
fn yaml_examples_are_valid_configs() {
    let mut invalid = String::new();
    let mut validated = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).expect("a readable Markdown file");
        let name = relative(&file);
        for block in parse(&text).blocks {
            let mut words = block.info.split_whitespace();
            let lang = words.next().unwrap_or("");
            if !matches!(lang, "yaml" | "yml") || words.next().is_some() {
                continue;
            }
            validated += 1;
            let source = format!("{name} (example at line {})", block.first_line);
            // No environment: an example must not depend on the reader's machine.
            if let Err(errors) = load_str_with_env(&block.text, &source, &|_| None) {
                let _ = writeln!(
                    invalid,
                    "{name}:{}: this ```yaml example is not a valid tollgate config \
                     (tag it ```yaml fragment if it is not meant to be a whole one):",
                    block.first_line
                );
                for e in &errors.0 {
                    let line = if e.line == 0 {
                        block.first_line
                    } else {
                        block.first_line + e.line - 1
                    };
                    let path = if e.path.is_empty() {
                        String::new()
                    } else {
                        format!(" {}:", e.path)
                    };
                    let _ = writeln!(invalid, "  {name}:{line}:{}:{path} {}", e.column, e.message);
                }
            }
        }
    }
    assert!(
        invalid.is_empty(),
        "invalid config examples in the documentation:\n{invalid}"
    );
    assert!(
        validated >= 3,
        "only {validated} complete ```yaml examples found: are they all tagged as fragments?"
    );
}

#[test]
fn the_checker_itself_sees_links_code_and_anchors() {
    let parsed = parse(
        "# Title\n\nSee [a](a.md#x) and `[b](not-a-link)`.\n\n```yaml\nroutes: []\n```\n\n## Title\n## A `code` heading, with: punctuation!\n",
    );
    let links: Vec<String> = parsed
        .prose
        .iter()
        .flat_map(|(_, l)| link_targets(l))
        .collect();
    assert_eq!(links, vec!["a.md#x".to_string()]);
    assert_eq!(parsed.blocks.len(), 1);
    assert_eq!(parsed.blocks[0].info, "yaml");
    assert_eq!(parsed.blocks[0].first_line, 6);
    assert_eq!(parsed.blocks[0].text, "routes: []\n");
    let offered = anchors(&parsed);
    for a in ["title", "title-1", "a-code-heading-with-punctuation"] {
        assert!(offered.contains(a), "{a} missing from {offered:?}");
    }
    assert_eq!(
        link_targets("[ref]: ../x.md \"title\""),
        vec!["../x.md".to_string()]
    );
    assert!(is_external("https://example.com/a"));
    assert!(is_external("mailto:a@example.com"));
    assert!(!is_external("../config/full.yaml"));
    assert!(!is_external("#anchor"));
}
