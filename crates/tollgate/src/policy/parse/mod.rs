//! Reading a policy file: TOML or JSON text to a validated [`Policy`], or every problem at once.
//!
//! The text is parsed into a small tree that keeps source positions (TOML) and is then walked by
//! hand-written, schema-driven readers that record each problem and keep going, so one run lists
//! everything that is wrong, each with its path (`budget[2].tokens_per_minute`) and, for TOML, its
//! line and column.

use std::fmt;
use std::io::Read;
use std::path::Path;

use super::Policy;

mod read;
mod schema;
mod suggest;
mod summary;
mod tree;
mod units;

/// Largest policy accepted, in bytes (1 MiB). Larger input is refused before it is parsed.
pub(crate) const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// The syntax of a policy text. Both have the same schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML, the usual form (`policy.toml`).
    Toml,
    /// JSON, for generated policies (`policy.json`).
    Json,
}

impl Format {
    /// Guesses the format of a text: JSON if the first non-whitespace character is `{`, else TOML.
    ///
    /// ```
    /// use tollgate::policy::Format;
    /// assert_eq!(Format::detect("  {\"version\": 1}"), Format::Json);
    /// assert_eq!(Format::detect("version = 1"), Format::Toml);
    /// ```
    pub fn detect(text: &str) -> Format {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// One problem in a policy file.
///
/// Displays as `line 14, column 20: budget[2].tokens_per_minute: must be a positive number, got
/// 0; use a positive number or remove the line` (the location is left out when unknown, the path
/// when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where in the schema: `budget[2].tokens_per_minute`, `upstream[0].auth.keys[1]`,
    /// `prices."gpt-4o".input` (0-based indexes). Empty for problems with the whole text (syntax,
    /// encoding, size, I/O).
    pub path: String,
    /// 1-based line of the offending key or value (TOML, and JSON syntax errors).
    pub line: Option<u32>,
    /// 1-based column, in characters, of the offending key or value.
    pub column: Option<u32>,
    /// What is wrong and what to do about it. Never contains a secret's value.
    pub message: String,
}

impl PolicyError {
    /// An error about the whole text, without a location.
    fn whole(message: impl Into<String>) -> PolicyError {
        PolicyError {
            path: String::new(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a policy; the policy is refused as a whole.
///
/// Displays a count header, then one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors {
    /// The problems, in the order they appear in the file (TOML) or in schema order (JSON).
    pub errors: Vec<PolicyError>,
}

impl PolicyErrors {
    fn one(error: PolicyError) -> PolicyErrors {
        PolicyErrors {
            errors: vec![error],
        }
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "the policy has {n} error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

fn check_size(len: usize) -> Result<(), PolicyErrors> {
    if len > MAX_POLICY_BYTES {
        return Err(PolicyErrors::one(PolicyError::whole(format!(
            "policy is {:.1} MB; the limit is 1 MiB",
            len as f64 / 1e6
        ))));
    }
    Ok(())
}

impl Policy {
    /// Parses and validates a policy text in the given format.
    ///
    /// ```
    /// use tollgate::policy::{Format, Policy};
    /// let text = r#"
    /// version = 1
    /// [[budget]]
    /// name = "global"
    /// requests_per_minute = 600
    /// "#;
    /// let policy = Policy::parse(text, Format::Toml).unwrap();
    /// assert_eq!(policy.budgets[0].limits[0].amount, 600.0);
    ///
    /// let err = Policy::parse("version = 2", Format::Toml).unwrap_err();
    /// assert_eq!(err.errors[0].path, "version");
    /// assert_eq!(err.errors[0].line, Some(1));
    /// ```
    pub fn parse(text: &str, format: Format) -> Result<Policy, PolicyErrors> {
        check_size(text.len())?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let (root, src) = match format {
            Format::Toml => (tree::from_toml(text), Some(text)),
            Format::Json => (tree::from_json(text), None),
        };
        let root = root.map_err(|e| {
            let (line, column) = match (e.line_col, e.pos) {
                (Some((l, c)), _) => (Some(l), Some(c)),
                (None, Some(pos)) => {
                    let (l, c) = tree::line_col(text, pos);
                    (Some(l), Some(c))
                }
                (None, None) => (None, None),
            };
            let syntax = match format {
                Format::Toml => "TOML",
                Format::Json => "JSON",
            };
            PolicyErrors::one(PolicyError {
                path: String::new(),
                line,
                column,
                message: format!("invalid {syntax}: {}", e.message),
            })
        })?;
        let mut cx = read::Cx::new(src);
        let policy = schema::policy(&mut cx, &root);
        if cx.errors.is_empty() {
            return policy.ok_or_else(|| {
                PolicyErrors::one(PolicyError::whole(
                    "the policy was refused without a reason; this is a bug in tollgate, please \
                     report it with the policy file",
                ))
            });
        }
        // Errors with a position in file order; the sort is stable, so JSON keeps schema order.
        cx.errors.sort_by_key(|(pos, _)| pos.unwrap_or(usize::MAX));
        Err(PolicyErrors {
            errors: cx.errors.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// Parses and validates a TOML policy.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyErrors> {
        Policy::parse(text, Format::Toml)
    }

    /// Parses and validates a JSON policy.
    pub fn from_json(text: &str) -> Result<Policy, PolicyErrors> {
        Policy::parse(text, Format::Json)
    }

    /// Parses and validates a policy from raw bytes, which must be UTF-8. `None` detects the
    /// format (see [`Format::detect`]).
    ///
    /// ```
    /// use tollgate::policy::Policy;
    /// let err = Policy::from_bytes(b"version = \"\xff\"", None).unwrap_err();
    /// assert!(err.errors[0].message.contains("byte 11"));
    /// ```
    pub fn from_bytes(bytes: &[u8], format: Option<Format>) -> Result<Policy, PolicyErrors> {
        check_size(bytes.len())?;
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.valid_up_to();
                let valid = std::str::from_utf8(&bytes[..at]).unwrap_or("");
                let (line, column) = tree::line_col(valid, at);
                return Err(PolicyErrors::one(PolicyError {
                    path: String::new(),
                    line: Some(line),
                    column: Some(column),
                    message: format!(
                        "the policy is not valid UTF-8 at byte {at}; save the file as UTF-8"
                    ),
                }));
            }
        };
        Policy::parse(text, format.unwrap_or_else(|| Format::detect(text)))
    }

    /// Reads, parses and validates a policy file. The format follows the extension (`.json`,
    /// `.toml`), else it is detected. A file over 1 MiB is refused without being read; I/O errors
    /// are reported as a [`PolicyError`] with an empty path.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyErrors> {
        let io = |e: std::io::Error| {
            PolicyErrors::one(PolicyError::whole(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        };
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Some(Format::Json),
            Some(e) if e.eq_ignore_ascii_case("toml") => Some(Format::Toml),
            _ => None,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if let Ok(meta) = file.metadata() {
            check_size(usize::try_from(meta.len()).unwrap_or(usize::MAX))?;
        }
        // Read one byte past the limit, so a file that grew (or a pipe) is still refused.
        let mut bytes = Vec::new();
        file.take(MAX_POLICY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Policy::from_bytes(&bytes, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_of_one_error() {
        let e = PolicyError {
            path: "budget[2].tokens_per_minute".into(),
            line: Some(14),
            column: Some(20),
            message: "must be a positive number, got 0; use a positive number or remove the line"
                .into(),
        };
        assert_eq!(
            e.to_string(),
            "line 14, column 20: budget[2].tokens_per_minute: must be a positive number, got 0; \
             use a positive number or remove the line"
        );
        assert_eq!(PolicyError::whole("x").to_string(), "x");
    }

    #[test]
    fn display_of_many_errors() {
        let errs = PolicyErrors {
            errors: vec![PolicyError::whole("a"), PolicyError::whole("b")],
        };
        assert_eq!(errs.to_string(), "the policy has 2 errors:\n  a\n  b");
        let one = PolicyErrors::one(PolicyError::whole("a"));
        assert_eq!(one.to_string(), "the policy has 1 error:\n  a");
    }

    #[test]
    fn size_message() {
        let e = check_size(50_000_000).unwrap_err();
        assert_eq!(e.errors[0].message, "policy is 50.0 MB; the limit is 1 MiB");
        assert!(check_size(MAX_POLICY_BYTES).is_ok());
    }

    #[test]
    fn detection() {
        assert_eq!(Format::detect("\u{feff}\n {}"), Format::Json);
        assert_eq!(Format::detect("# comment\nversion = 1"), Format::Toml);
        assert_eq!(Format::detect(""), Format::Toml);
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = Policy::from_toml("version = 1\nname = \n").unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].line, Some(2));
        let e = Policy::from_json("{\n  \"version\": 1,\n}").unwrap_err();
        assert_eq!(e.errors[0].line, Some(3));
    }
}
