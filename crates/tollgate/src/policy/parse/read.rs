//! Error-collecting readers over the document tree.
//!
//! Every reader takes the error list, a node and its path, and returns `Some(value)` or records
//! what is wrong and returns `None`. Callers read every field before combining them, so one bad
//! value never hides the next.

use std::time::Duration;

use super::PolicyError;
use super::suggest::nearest;
use super::tree::{Key, Kind, Node, line_col};
use super::units::{check_http_url, parse_duration, parse_secret, quote};
use crate::policy::SecretRef;

/// The error list being built, and the text the offsets point into (TOML only).
pub(crate) struct Cx<'s> {
    src: Option<&'s str>,
    /// Errors and the byte offset each is about, in the order found.
    pub errors: Vec<(Option<usize>, PolicyError)>,
    /// While true, messages never repeat string values (inside `auth`, where a secret may sit in
    /// the wrong field).
    pub redact: bool,
}

impl<'s> Cx<'s> {
    pub fn new(src: Option<&'s str>) -> Cx<'s> {
        Cx {
            src,
            errors: Vec::new(),
            redact: false,
        }
    }

    /// Records an error about `path`, located at `pos` when known.
    pub fn err(&mut self, path: &str, pos: Option<usize>, message: impl Into<String>) {
        let (line, column) = match (self.src, pos) {
            (Some(src), Some(pos)) => {
                let (l, c) = line_col(src, pos);
                (Some(l), Some(c))
            }
            _ => (None, None),
        };
        self.errors.push((
            pos,
            PolicyError {
                path: path.to_owned(),
                line,
                column,
                message: message.into(),
            },
        ));
    }

    /// The value as a message shows it: numbers and booleans as written, strings quoted (or only
    /// "a string" while redacting), containers by type.
    pub fn show(&self, node: &Node) -> String {
        match &node.kind {
            Kind::Str(s) if !self.redact => quote(s),
            Kind::Int(i) => i.to_string(),
            Kind::BigInt(text, _) => text.clone(),
            Kind::Float(f) => show_float(*f),
            Kind::Bool(b) => b.to_string(),
            _ => node.type_name().to_owned(),
        }
    }
}

pub(crate) fn show_float(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{f:?}")
    }
}

/// Appends a key to a path: `budget[2]` + `burst`, or `prices` + `"gpt-4o"` (quoted unless it is a
/// plain word).
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let key = if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Appends an array index to a path.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A table of the document, with its path.
pub(crate) struct Table<'n> {
    pub entries: &'n [(Key, Node)],
    pub pos: Option<usize>,
    pub path: String,
}

impl<'n> Table<'n> {
    /// Reads `node` as a table; `example` shows the expected shape in the error.
    pub fn read(cx: &mut Cx, node: &'n Node, path: &str, example: &str) -> Option<Table<'n>> {
        match &node.kind {
            Kind::Table(entries) => Some(Table {
                entries,
                pos: node.pos,
                path: path.to_owned(),
            }),
            _ => {
                cx.err(
                    path,
                    node.pos,
                    format!("must be a table such as {example}, got {}", cx.show(node)),
                );
                None
            }
        }
    }

    /// Reports every key not in `allowed`, with the nearest allowed key when one is close.
    pub fn check_keys(&self, cx: &mut Cx, allowed: &[&str]) {
        for (key, _) in self.entries {
            if !allowed.contains(&key.name.as_str()) {
                let hint = match nearest(&key.name, allowed) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("the fields here are {}", allowed.join(", ")),
                };
                cx.err(
                    &join(&self.path, &key.name),
                    key.pos,
                    format!("unknown field `{}`; {hint}", key.name),
                );
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    pub fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// A required field: missing is an error that shows `example`.
    pub fn req<T>(
        &self,
        cx: &mut Cx,
        name: &str,
        example: &str,
        read: impl FnOnce(&mut Cx, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        match self.get(name) {
            Some(node) => read(cx, node, &self.path(name)),
            None => {
                cx.err(
                    &self.path(name),
                    self.pos,
                    format!("is required; add {example}"),
                );
                None
            }
        }
    }

    /// An optional field with a default.
    pub fn opt<T>(
        &self,
        cx: &mut Cx,
        name: &str,
        default: T,
        read: impl FnOnce(&mut Cx, &'n Node, &str) -> Option<T>,
    ) -> Option<T> {
        match self.get(name) {
            Some(node) => read(cx, node, &self.path(name)),
            None => Some(default),
        }
    }

    /// An optional field without a default: `Some(None)` when absent, `None` when invalid.
    pub fn maybe<T>(
        &self,
        cx: &mut Cx,
        name: &str,
        read: impl FnOnce(&mut Cx, &'n Node, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.get(name) {
            Some(node) => read(cx, node, &self.path(name)).map(Some),
            None => Some(None),
        }
    }
}

/// Reads the items of an array; `example` shows the expected shape in the error.
pub(crate) fn array<'n>(
    cx: &mut Cx,
    node: &'n Node,
    path: &str,
    example: &str,
) -> Option<&'n [Node]> {
    match &node.kind {
        Kind::Array(items) => Some(items),
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be an array such as {example}, got {}", cx.show(node)),
            );
            None
        }
    }
}

pub(crate) fn string<'n>(cx: &mut Cx, node: &'n Node, path: &str) -> Option<&'n str> {
    match &node.kind {
        Kind::Str(s) => Some(s),
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be a string, got {}", cx.show(node)),
            );
            None
        }
    }
}

/// A non-empty string.
pub(crate) fn name(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    if s.trim().is_empty() {
        cx.err(
            path,
            node.pos,
            "must not be empty; write a name such as \"openai\"",
        );
        return None;
    }
    Some(s.to_owned())
}

pub(crate) fn boolean(cx: &mut Cx, node: &Node, path: &str) -> Option<bool> {
    match node.kind {
        Kind::Bool(b) => Some(b),
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be true or false, got {}", cx.show(node)),
            );
            None
        }
    }
}

/// A whole number in `min..=max`. A float with no fraction (JSON `5.0`) is accepted.
pub(crate) fn whole(cx: &mut Cx, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    let value = match node.kind {
        Kind::Int(i) => Some(i),
        Kind::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => Some(f as i128),
        // Only the sign matters beyond this: the value is out of range either way.
        Kind::Float(f) if f.is_finite() && f.fract() == 0.0 => {
            Some(if f > 0.0 { i128::MAX } else { i128::MIN })
        }
        Kind::BigInt(_, f) => Some(if f > 0.0 { i128::MAX } else { i128::MIN }),
        _ => None,
    };
    let expected = if min == 1 && max >= u64::from(u32::MAX) {
        "a positive whole number".to_owned()
    } else if max >= u64::from(u32::MAX) {
        format!("a whole number of at least {min}")
    } else {
        format!("a whole number from {min} to {max}")
    };
    match value {
        Some(v) if v >= i128::from(min) && v <= i128::from(max) => u64::try_from(v).ok(),
        // Above the range: name the range, as "a positive whole number" would not say why.
        Some(v) if v > i128::from(max) => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a whole number from {min} to {max}, got {}{}",
                    cx.show(node),
                    beyond_toml(node)
                ),
            );
            None
        }
        Some(_) if matches!(node.kind, Kind::Int(_) | Kind::Float(_) | Kind::BigInt(..)) => {
            let fix = if min == 1 {
                "; use a positive number or remove the line"
            } else {
                ""
            };
            cx.err(
                path,
                node.pos,
                format!(
                    "must be {expected}, got {}{}{fix}",
                    cx.show(node),
                    beyond_toml(node)
                ),
            );
            None
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be {expected}, got {}", cx.show(node)),
            );
            None
        }
    }
}

/// Largest TOML integer (TOML's are 64-bit; JSON integers are read up to 2^64 - 1).
pub(crate) const TOML_INT_MAX: i64 = i64::MAX;

/// What to add after a value shown in a message when it is a TOML integer beyond 64 bits
/// (`", which is beyond TOML's 64-bit integers (...)"`); else nothing.
pub(crate) fn beyond_toml(node: &Node) -> String {
    match node.kind {
        Kind::BigInt(..) => format!(
            ", which is beyond TOML's 64-bit integers (-{} to {TOML_INT_MAX})",
            i128::from(TOML_INT_MAX) + 1
        ),
        _ => String::new(),
    }
}

/// A finite number.
pub(crate) fn number(cx: &mut Cx, node: &Node, path: &str, expected: &str) -> Option<f64> {
    let value = match node.kind {
        Kind::Int(i) => i as f64,
        Kind::Float(f) => f,
        Kind::BigInt(..) => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be {expected}, got {}{}",
                    cx.show(node),
                    beyond_toml(node)
                ),
            );
            return None;
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be {expected}, got {}", cx.show(node)),
            );
            return None;
        }
    };
    if !value.is_finite() {
        cx.err(
            path,
            node.pos,
            format!(
                "must be a finite number, got {}; write {expected}",
                show_float(value)
            ),
        );
        return None;
    }
    Some(value)
}

/// A finite number > 0.
pub(crate) fn positive(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = number(cx, node, path, "a positive number")?;
    if v <= 0.0 {
        cx.err(
            path,
            node.pos,
            format!(
                "must be a positive number, got {}; use a positive number or remove the line",
                cx.show(node)
            ),
        );
        return None;
    }
    Some(v)
}

/// A finite number >= 0.
pub(crate) fn non_negative(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = number(cx, node, path, "a number of at least 0")?;
    if v < 0.0 {
        cx.err(
            path,
            node.pos,
            format!("must be 0 or more, got {}", cx.show(node)),
        );
        return None;
    }
    Some(v)
}

/// A finite number in (0, 1].
pub(crate) fn fraction(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    let v = number(cx, node, path, "a number above 0 and at most 1")?;
    if v <= 0.0 || v > 1.0 {
        cx.err(
            path,
            node.pos,
            format!(
                "must be above 0 and at most 1, got {}; write a fraction such as 0.5",
                cx.show(node)
            ),
        );
        return None;
    }
    Some(v)
}

/// A duration string greater than zero.
pub(crate) fn duration(cx: &mut Cx, node: &Node, path: &str) -> Option<Duration> {
    let text = match &node.kind {
        Kind::Str(s) => s,
        Kind::Int(i) => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a duration string with a unit; write \"{i}s\" (units: ms, s, m, h, d)"
                ),
            );
            return None;
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be a duration such as \"30s\", got {}", cx.show(node)),
            );
            return None;
        }
    };
    match parse_duration(text) {
        Ok(d) if d.is_zero() => {
            cx.err(
                path,
                node.pos,
                "must be longer than zero; write a duration such as \"1s\"",
            );
            None
        }
        Ok(d) => Some(d),
        Err(why) => {
            cx.err(path, node.pos, format!("{} {why}", quote(text)));
            None
        }
    }
}

/// A secret reference. Messages never contain the value.
pub(crate) fn secret(cx: &mut Cx, node: &Node, path: &str) -> Option<SecretRef> {
    let Kind::Str(text) = &node.kind else {
        cx.err(
            path,
            node.pos,
            format!(
                "must be a string such as \"env:NAME\" or \"file:PATH\", got {}",
                node.type_name()
            ),
        );
        return None;
    };
    match parse_secret(text) {
        Ok(s) => Some(s),
        Err(why) => {
            cx.err(path, node.pos, why);
            None
        }
    }
}

/// An `http://` or `https://` URL.
pub(crate) fn http_url(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    match check_http_url(s) {
        Ok(()) => Some(s.to_owned()),
        Err(why) => {
            cx.err(path, node.pos, why);
            None
        }
    }
}

/// One of a fixed set of words.
pub(crate) fn choice<T: Copy>(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    options: &[(&str, T)],
) -> Option<T> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let listed = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let Kind::Str(s) = &node.kind else {
        cx.err(
            path,
            node.pos,
            format!("must be one of {listed}, got {}", cx.show(node)),
        );
        return None;
    };
    if let Some((_, v)) = options.iter().find(|(n, _)| *n == s.as_str()) {
        return Some(*v);
    }
    let hint = match nearest(s, &names) {
        Some(near) => format!("; did you mean \"{near}\"?"),
        None => String::new(),
    };
    cx.err(
        path,
        node.pos,
        format!("must be one of {listed}, got {}{hint}", cx.show(node)),
    );
    None
}

/// A string or an array of strings, each with its node (for positions).
pub(crate) fn strings<'n>(
    cx: &mut Cx,
    node: &'n Node,
    path: &str,
) -> Option<Vec<(&'n str, &'n Node)>> {
    match &node.kind {
        Kind::Str(s) => Some(vec![(s.as_str(), node)]),
        Kind::Array(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match string(cx, item, &index(path, i)) {
                    Some(s) => out.push((s, item)),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a string or an array of strings, got {}",
                    cx.show(node)
                ),
            );
            None
        }
    }
}
