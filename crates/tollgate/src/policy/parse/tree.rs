//! One small document tree for both file formats, with source offsets where the format has them.
//!
//! TOML is read with `toml::de::DeTable`, which keeps the span of every key and value; JSON is read
//! into a `serde_json::Value`, which keeps none. The schema walker reads only this tree.

use toml::de::{DeTable, DeValue};

/// A value of the document and the byte offset where it starts (TOML only).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub pos: Option<usize>,
}

/// A table key and the byte offset where it starts (TOML only).
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub pos: Option<usize>,
}

/// The kinds of value both formats share (plus TOML's date-times, which the schema never uses).
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Str(String),
    Int(i128),
    /// A TOML integer outside TOML's 64-bit range, which TOML refuses: as written, and its value
    /// (approximately). Every reader refuses it with a message saying so.
    BigInt(String, f64),
    Float(f64),
    Bool(bool),
    Datetime,
    Null,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

impl Node {
    /// A short description of the value's type, for "must be X, got Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) | Kind::BigInt(..) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date-time",
            Kind::Null => "null",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// A syntax error: message and, for TOML, the byte offset.
pub(crate) struct SyntaxError {
    pub message: String,
    pub pos: Option<usize>,
    pub line_col: Option<(u32, u32)>,
}

/// Reads a TOML document.
pub(crate) fn from_toml(text: &str) -> Result<Node, SyntaxError> {
    match DeTable::parse(text) {
        Ok(table) => {
            let span = table.span();
            let entries = table.into_inner();
            Ok(Node {
                kind: Kind::Table(toml_table(entries)),
                pos: Some(span.start),
            })
        }
        Err(e) => Err(SyntaxError {
            message: e.message().trim().to_owned(),
            pos: e.span().map(|s| s.start),
            line_col: None,
        }),
    }
}

fn toml_table(table: DeTable<'_>) -> Vec<(Key, Node)> {
    table
        .into_iter()
        .map(|(k, v)| {
            let key = Key {
                name: k.get_ref().to_string(),
                pos: Some(k.span().start),
            };
            let pos = Some(v.span().start);
            (key, toml_value(v.into_inner(), pos))
        })
        .collect()
}

fn toml_value(value: DeValue<'_>, pos: Option<usize>) -> Node {
    let kind = match value {
        DeValue::String(s) => Kind::Str(s.into_owned()),
        // The parser reads integers of any length; TOML's are 64-bit.
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Kind::Int(i128::from(n)),
            Err(_) => Kind::BigInt(i.to_string(), approximate(i.as_str(), i.radix())),
        },
        DeValue::Float(f) => Kind::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Kind::Bool(b),
        DeValue::Datetime(_) => Kind::Datetime,
        DeValue::Array(items) => Kind::Array(
            items
                .into_iter()
                .map(|item| {
                    let pos = Some(item.span().start);
                    toml_value(item.into_inner(), pos)
                })
                .collect(),
        ),
        DeValue::Table(t) => Kind::Table(toml_table(t)),
    };
    Node { kind, pos }
}

/// The value of an integer's digits (`from_str_radix` form: an optional sign, then digits): the
/// nearest `f64` for decimal digits, close to it otherwise. Only used to tell a huge value from a
/// hugely negative one and to say how large it is.
fn approximate(digits: &str, radix: u32) -> f64 {
    if radix == 10 {
        return digits.parse().unwrap_or(f64::NAN);
    }
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.strip_prefix('+').unwrap_or(digits)),
    };
    let value = digits
        .chars()
        .filter_map(|c| c.to_digit(radix))
        .fold(0.0, |v, d| v * f64::from(radix) + f64::from(d));
    if negative { -value } else { value }
}

/// Reads a JSON document.
pub(crate) fn from_json(text: &str) -> Result<Node, SyntaxError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => Ok(json_value(v)),
        Err(e) => {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
            let line_col = (e.line() > 0).then(|| {
                (
                    u32::try_from(e.line()).unwrap_or(u32::MAX),
                    u32::try_from(e.column().max(1)).unwrap_or(u32::MAX),
                )
            });
            Err(SyntaxError {
                message,
                pos: None,
                line_col,
            })
        }
    }
}

fn json_value(value: serde_json::Value) -> Node {
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::Null,
        Value::Bool(b) => Kind::Bool(b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Kind::Int(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Kind::Int(i128::from(u))
            } else {
                Kind::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Kind::Str(s),
        Value::Array(items) => Kind::Array(items.into_iter().map(json_value).collect()),
        Value::Object(map) => Kind::Table(
            map.into_iter()
                .map(|(k, v)| (Key { name: k, pos: None }, json_value(v)))
                .collect(),
        ),
    };
    Node { kind, pos: None }
}

/// The 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, pos: usize) -> (u32, u32) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // "bé = " is 5 characters and 6 bytes.
        assert_eq!(line_col(text, 12), (2, 6));
    }

    #[test]
    fn toml_integers_beyond_64_bits_are_kept_as_written() {
        let root = from_toml(
            "a = 9223372036854775807\nb = 9223372036854775808\nc = -9223372036854775809\n\
             d = 0x7fffffffffffffffff\ne = 1_000_000_000_000_000_000_000\n",
        )
        .ok()
        .expect("valid toml");
        let Kind::Table(entries) = &root.kind else {
            panic!("root is a table")
        };
        let kinds: Vec<String> = entries
            .iter()
            .map(|(_, v)| format!("{:?}", v.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                "Int(9223372036854775807)",
                "BigInt(\"9223372036854775808\", 9.223372036854776e18)",
                "BigInt(\"-9223372036854775809\", -9.223372036854776e18)",
                "BigInt(\"0x7fffffffffffffffff\", 2.3611832414348226e21)",
                "BigInt(\"1000000000000000000000\", 1e21)",
            ]
        );
    }

    #[test]
    fn toml_spans_point_at_keys_and_values() {
        let text = "x = 1\n[t]\nname = \"n\"\n[[a]]\nv = [1, 2]\n";
        let root = from_toml(text).ok().expect("valid toml");
        let Kind::Table(entries) = &root.kind else {
            panic!("root is a table")
        };
        let (k, v) = entries.iter().find(|(k, _)| k.name == "x").expect("x");
        assert_eq!(line_col(text, k.pos.expect("pos")), (1, 1));
        assert_eq!(line_col(text, v.pos.expect("pos")), (1, 5));
        let (_, a) = entries.iter().find(|(k, _)| k.name == "a").expect("a");
        let Kind::Array(items) = &a.kind else {
            panic!("array")
        };
        let Kind::Table(inner) = &items[0].kind else {
            panic!("table")
        };
        let (_, v) = &inner[0];
        assert_eq!(line_col(text, v.pos.expect("pos")), (5, 5));
        let Kind::Array(nums) = &v.kind else {
            panic!("array")
        };
        assert_eq!(line_col(text, nums[1].pos.expect("pos")), (5, 9));
    }
}
