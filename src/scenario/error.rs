//! Scenario errors, and where in the file they point.
//!
//! serde-saphyr locates its own errors (syntax, unknown keys, wrong types).
//! Semantic problems found after parsing name a key path instead; the file is
//! then read once more into a tree of located nodes ([`Node`]) to turn that
//! path into a line and column.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

/// A position in a scenario: `origin:line:column`, or `origin` alone when
/// the position is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file's path, or the origin given to
    /// [`Scenario::from_str`](super::Scenario::from_str).
    pub origin: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column, in characters; 0 when unknown.
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.origin),
            line => write!(f, "{}:{line}:{}", self.origin, self.column),
        }
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A scenario file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The scenario is not valid YAML, does not fit the format (unknown or
    /// missing key, wrong type, unknown value), or is inconsistent (a value
    /// out of range, a step after the workload ends, ...). Displayed as
    /// `file:line:column: key: message` and an indented `hint:` line.
    #[error("{location}: {}{message}\n  hint: {hint}", key_prefix(.key))]
    Invalid {
        /// Where the offending node is.
        location: Location,
        /// Its key path, e.g. `steps[2].at`; empty for the whole document.
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
}

fn key_prefix(key: &str) -> String {
    match key {
        "" => String::new(),
        key => format!("{key}: "),
    }
}

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// The key path serde_path_to_error recorded.
pub(super) fn key_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Unknown => None,
        })
        .collect()
}

/// `steps[2].at`
fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) if out.is_empty() => out.push_str(key),
            Seg::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    printable(&out)
}

/// Control characters escaped, so that user text cannot garble a terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A problem with the node at `path`, not yet located in the text.
pub(super) struct Problem {
    pub(super) path: Vec<Seg>,
    pub(super) message: String,
    pub(super) hint: String,
}

impl Problem {
    /// The error for this problem, pointing at the node at `path` in `text`
    /// (or at its deepest ancestor present there).
    pub(super) fn locate(self, text: &str, origin: &str) -> ScenarioError {
        let at = locate(text, &self.path);
        self.at(at, origin)
    }

    fn at(self, at: Option<serde_saphyr::Location>, origin: &str) -> ScenarioError {
        let (line, column) = at
            .filter(|l| *l != serde_saphyr::Location::UNKNOWN)
            .map_or((0, 0), |l| (l.line(), l.column()));
        ScenarioError::Invalid {
            location: Location {
                origin: origin.to_owned(),
                line,
                column,
            },
            key: display_path(&self.path),
            message: self.message,
            hint: self.hint,
        }
    }
}

/// The error for a serde-saphyr failure at key `path`.
pub(super) fn from_yaml(
    err: &serde_saphyr::Error,
    path: Vec<Seg>,
    text: &str,
    origin: &str,
) -> ScenarioError {
    let message = printable(&UserMessageFormatter.format_message(err.without_snippet()));
    // serde-saphyr puts a missing key where its mapping ends; the mapping's
    // start is where a reader looks for it.
    let at = if message.starts_with("missing field") {
        locate(text, &path).or_else(|| err.location())
    } else {
        err.location()
    };
    let hint = hint_for(&message).to_owned();
    Problem {
        path,
        message,
        hint,
    }
    .at(at, origin)
}

fn hint_for(message: &str) -> &'static str {
    const HINTS: [(&str, &str); 8] = [
        (
            "unknown field",
            "remove the key or fix its spelling; scenarios/README.md lists every key",
        ),
        ("unknown variant", "use one of the values listed"),
        (
            "missing field",
            "add the key; scenarios/README.md says what it takes",
        ),
        (
            "invalid duration",
            "durations look like `500ms`, `20s` or `1m 30s`",
        ),
        ("invalid u", "this key takes a whole number, e.g. `4`"),
        ("invalid bool", "write `true` or `false`"),
        ("duplicate", "give each key once per mapping"),
        (
            "expected mapping",
            "write `key: value` lines here; scenarios/README.md documents the format",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or(
            "check the YAML syntax and the value's type; scenarios/README.md documents the format",
            |(_, hint)| hint,
        )
}

/// Where the node at `path` is in `text`: the node itself, or its deepest
/// ancestor present there. `None` if `text` does not parse.
fn locate(text: &str, path: &[Seg]) -> Option<serde_saphyr::Location> {
    let root: Spanned<Node> =
        serde_saphyr::from_str_with_options(text, super::yaml_options()).ok()?;
    let mut node = &root;
    for seg in path {
        let child = match (&node.value, seg) {
            (Node::Map(entries), Seg::Key(key)) => {
                entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            (Node::Seq(items), Seg::Index(index)) => items.get(*index),
            _ => None,
        };
        match child {
            Some(child) => node = child,
            None => break,
        }
    }
    Some(node.referenced)
}

/// A YAML node with the locations of its children; scalars are not kept.
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}
