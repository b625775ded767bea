//! Where each key and value sits in the YAML text, indexed by key path
//! (`routes[1].match.path_prefix`), so errors found after deserializing can still
//! name file:line:column. serde_yaml's `Value` keeps no positions, hence a second
//! pass over the text with yaml-rust2's marked event parser.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// Where whole-document errors point when nothing better is known.
    pub const START: Position = Position { line: 1, column: 1 };

    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// One value in the document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    /// The key naming this value, when its parent is a mapping.
    pub key: Option<Position>,
    pub value: Position,
    /// An unquoted scalar: after `${ENV}` substitution it is re-read as YAML so
    /// `max_connections: ${MAXCONN}` can become a number.
    pub plain_scalar: bool,
    /// A mapping or a sequence rather than a scalar.
    pub collection: bool,
}

/// Key path -> node. Paths use the same spelling as error messages: map keys by
/// name joined with `.`, sequence items as zero-based `[i]`.
#[derive(Debug, Default)]
pub(crate) struct PositionIndex {
    nodes: HashMap<String, Node>,
}

impl PositionIndex {
    /// Index `text`. A document yaml-rust2 cannot parse gives an empty index: the
    /// YAML syntax error itself is reported from serde_yaml's parse.
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        match parser.load(&mut builder, false) {
            Ok(()) => PositionIndex {
                nodes: builder.nodes,
            },
            Err(_) => PositionIndex::default(),
        }
    }

    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The key naming `path` (falling back to its value, then to ancestors).
    pub fn key_position(&self, path: &str) -> Position {
        self.nearest(path)
            .map(|n| n.key.unwrap_or(n.value))
            .unwrap_or(Position::START)
    }

    /// Where an error about the value at `path` reads best: at a scalar itself, but
    /// at the key of a block mapping or sequence (whose first item may be lines
    /// further down).
    pub fn error_position(&self, path: &str) -> Position {
        match self.nearest(path) {
            Some(n) if n.collection => n.key.unwrap_or(n.value),
            Some(n) => n.value,
            None => Position::START,
        }
    }

    fn nearest(&self, path: &str) -> Option<&Node> {
        let mut p = path;
        loop {
            if let Some(n) = self.nodes.get(p) {
                return Some(n);
            }
            p = parent(p)?;
        }
    }
}

/// The path one level up: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> `` (the root).
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return Some(&path[..i]);
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

/// `parent` + `key`, as written in messages.
pub(crate) fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(crate) fn item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

enum Frame {
    Map {
        path: String,
        /// The key read and waiting for its value.
        key: Option<(String, Position)>,
        /// No key seen yet.
        first: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    nodes: HashMap<String, Node>,
}

impl Builder {
    /// The path of a value starting at `pos`, and the key naming it; `None` when
    /// the event is a mapping key rather than a value.
    fn place(
        &mut self,
        key_text: Option<&str>,
        pos: Position,
    ) -> Option<(String, Option<Position>)> {
        match self.stack.last_mut() {
            None => Some((String::new(), None)),
            Some(Frame::Seq { path, next }) => {
                let p = item(path, *next);
                *next += 1;
                Some((p, None))
            }
            Some(Frame::Map { path, key, first }) => match key.take() {
                Some((k, key_pos)) => Some((child(path, &k), Some(key_pos))),
                None => {
                    // yaml-rust2 marks a block mapping's start after its first
                    // key; the key itself is where a reader sees the mapping begin.
                    if std::mem::take(first)
                        && let Some(node) = self.nodes.get_mut(path.as_str())
                    {
                        node.value = pos;
                    }
                    // A complex key (a mapping or sequence used as a key) has no
                    // name we could print; its contents are indexed under `?`.
                    *key = Some((key_text.unwrap_or("?").to_owned(), pos));
                    None
                }
            },
        }
    }

    fn record(
        &mut self,
        path: String,
        key: Option<Position>,
        value: Position,
        plain_scalar: bool,
        collection: bool,
    ) {
        // The root's marker lands after its first key; whole-document errors read
        // better at the start of the file.
        if path.is_empty() {
            return;
        }
        self.nodes.insert(
            path,
            Node {
                key,
                value,
                plain_scalar,
                collection,
            },
        );
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Position::from_marker(mark);
        match ev {
            Event::Scalar(text, style, _, _) => {
                if let Some((path, key)) = self.place(Some(&text), pos) {
                    self.record(path, key, pos, style == TScalarStyle::Plain, false);
                }
            }
            Event::Alias(_) => {
                if let Some((path, key)) = self.place(Some("*alias"), pos) {
                    self.record(path, key, pos, false, false);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = match self.place(None, pos) {
                    Some((path, key)) => {
                        self.record(path.clone(), key, pos, false, true);
                        path
                    }
                    None => "?".to_owned(),
                };
                self.stack.push(if is_map {
                    Frame::Map {
                        path,
                        key: None,
                        first: true,
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
server:
  listeners:
    - name: http
      bind: 127.0.0.1:8080
routes:
  - name: a
    match: { path: /x }
  - name: b
    match:
      path_prefix: \"/api\"
";

    fn pos(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn keys_and_values_have_one_based_positions() {
        let idx = PositionIndex::build(DOC);
        let n = idx.node("server.listeners[0].bind").unwrap();
        assert_eq!(n.key, Some(pos(4, 7)));
        assert_eq!(n.value, pos(4, 13));
        assert!(n.plain_scalar);
        let n = idx.node("routes[0].match.path").unwrap();
        assert_eq!((n.key, n.value), (Some(pos(7, 14)), pos(7, 20)));
        let n = idx.node("routes[1].match.path_prefix").unwrap();
        assert_eq!(n.value, pos(10, 20));
        assert!(!n.plain_scalar, "a quoted scalar is not plain");
        assert_eq!(idx.node("routes[1]").unwrap().value.line, 8);
    }

    #[test]
    fn block_collections_point_at_their_key() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(idx.error_position("routes[1].match"), pos(9, 5));
        assert_eq!(idx.error_position("routes[1].name"), pos(8, 11));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let idx = PositionIndex::build(DOC);
        // `match: { path: /x }` is a flow mapping on the key's line.
        assert_eq!(idx.error_position("routes[0].match.methods"), pos(7, 5));
        // A sequence item that is a block mapping starts at its first key.
        assert_eq!(idx.key_position("routes[0].timeout"), pos(6, 5));
        assert_eq!(idx.error_position("nowhere.at.all"), Position::START);
    }

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn broken_yaml_gives_an_empty_index() {
        let idx = PositionIndex::build("a: [1, 2\nb: c");
        assert!(idx.node("a").is_none());
    }
}
