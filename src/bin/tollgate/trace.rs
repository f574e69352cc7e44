//! Trace files for `tollgate simulate`: one JSON object per line, each a call.

use serde_json::{Map, Value, json};
use tollgate::tokens::Usage;
use tollgate::{Call, Outcome, Prompt};

use crate::count::type_name;

/// Every field a trace row may have; `note` is free text for people and is ignored.
pub(crate) const FIELDS: &[&str] = &[
    "at_ms",
    "tenant",
    "model",
    "upstream",
    "key",
    "route",
    "priority",
    "prompt",
    "prompt_tokens",
    "request",
    "max_tokens",
    "latency_ms",
    "usage",
    "status",
    "headers",
    "note",
];

/// The prompt of a row, in whichever form the row gives it.
#[derive(Debug, Clone)]
pub(crate) enum RowPrompt {
    /// No prompt field: zero prompt tokens.
    None,
    /// `prompt_tokens`.
    Tokens(u64),
    /// `prompt`: text counted with the model's tokenizer.
    Text(String),
    /// `request`: an OpenAI chat request.
    Request(Value),
}

/// One call of a trace.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// 1-based line in the trace file.
    pub line: usize,
    /// Arrival time in virtual milliseconds.
    pub at_ms: u64,
    pub tenant: String,
    pub model: String,
    pub upstream: String,
    pub key: String,
    pub route: String,
    pub priority: i16,
    pub prompt: RowPrompt,
    pub max_tokens: Option<u64>,
    /// How long the call runs once admitted.
    pub latency_ms: u64,
    /// Usage the response reported.
    pub usage: Option<Usage>,
    /// HTTP status of the response.
    pub status: Option<u16>,
}

impl Row {
    /// The call the engine sees.
    pub(crate) fn call(&self) -> Call<'_> {
        let prompt = match &self.prompt {
            RowPrompt::None => Prompt::Tokens(0),
            RowPrompt::Tokens(n) => Prompt::Tokens(*n),
            RowPrompt::Text(t) => Prompt::Text(t),
            RowPrompt::Request(r) => Prompt::Request(r),
        };
        let mut call = Call::new(&self.model)
            .tenant(&self.tenant)
            .upstream(&self.upstream)
            .key(&self.key)
            .route(&self.route)
            .priority(self.priority)
            .prompt(prompt);
        if let Some(m) = self.max_tokens {
            call = call.max_tokens(m);
        }
        call
    }

    /// How the call ended: the reported usage; a failed status (not billed); otherwise unknown,
    /// which keeps the whole reservation (as a call that timed out would).
    pub(crate) fn outcome(&self) -> Outcome<'static> {
        let latency = std::time::Duration::from_millis(self.latency_ms);
        let outcome = match (self.usage, self.status) {
            (Some(usage), status) => Outcome {
                status: Some(status.unwrap_or(200)),
                ..Outcome::ok(usage)
            },
            (None, Some(s)) if s >= 400 => Outcome::status(s),
            (None, Some(s)) => Outcome::status(s),
            (None, None) => Outcome::unknown(),
        };
        outcome.with_latency(latency)
    }
}

/// Parses one non-blank, non-comment line. `unknown` collects field names that are not in
/// [`FIELDS`] (they are ignored, and reported once by the caller).
pub(crate) fn parse_row(line: usize, text: &str, unknown: &mut Vec<String>) -> Result<Row, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "a trace line must be a JSON object like {{\"at_ms\": 0, \"model\": \"gpt-4o\"}}, found {}",
            type_name(&value)
        ));
    };
    for k in obj.keys() {
        if !FIELDS.contains(&k.as_str()) && !unknown.contains(k) {
            unknown.push(k.clone());
        }
    }
    let at_ms = opt_u64(&obj, "at_ms")?
        .ok_or("missing \"at_ms\" (arrival time in milliseconds, e.g. \"at_ms\": 1500)")?;
    let model = opt_str(&obj, "model")?.ok_or("missing \"model\" (e.g. \"model\": \"gpt-4o\")")?;
    if model.is_empty() {
        return Err("\"model\" is empty; name the model the call asks for".into());
    }
    let priority = match opt_i64(&obj, "priority")? {
        None => 0,
        Some(p) => i16::try_from(p).map_err(|_| {
            format!(
                "\"priority\" must be between {} and {}, found {p}",
                i16::MIN,
                i16::MAX
            )
        })?,
    };
    let given: Vec<&str> = ["prompt", "prompt_tokens", "request"]
        .into_iter()
        .filter(|k| present(&obj, k))
        .collect();
    if given.len() > 1 {
        return Err(format!(
            "give only one of \"prompt\", \"prompt_tokens\" and \"request\", found {}",
            given.join(" and ")
        ));
    }
    let prompt = if let Some(t) = opt_str(&obj, "prompt")? {
        RowPrompt::Text(t)
    } else if let Some(n) = opt_u64(&obj, "prompt_tokens")? {
        RowPrompt::Tokens(n)
    } else {
        match obj.get("request") {
            None | Some(Value::Null) => RowPrompt::None,
            Some(r @ Value::Object(_)) => RowPrompt::Request(r.clone()),
            Some(other) => {
                return Err(format!(
                    "\"request\" must be a chat request object, found {}",
                    type_name(other)
                ));
            }
        }
    };
    let usage = match obj.get("usage") {
        None | Some(Value::Null) => None,
        Some(u) => Usage::from_response(&json!({ "usage": u }))
            .map_err(|e| format!("bad \"usage\": {e}"))?,
    };
    let status = match opt_u64(&obj, "status")? {
        None => None,
        Some(s @ 100..=599) => Some(s as u16),
        Some(s) => {
            return Err(format!(
                "\"status\" must be an HTTP status 100..=599, found {s}"
            ));
        }
    };
    match obj.get("headers") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(format!(
                "\"headers\" must be an object of header names to values, found {}",
                type_name(other)
            ));
        }
    }
    Ok(Row {
        line,
        at_ms,
        tenant: opt_str(&obj, "tenant")?.unwrap_or_default(),
        model,
        upstream: opt_str(&obj, "upstream")?.unwrap_or_default(),
        key: opt_str(&obj, "key")?.unwrap_or_default(),
        route: opt_str(&obj, "route")?.unwrap_or_default(),
        priority,
        prompt,
        max_tokens: opt_u64(&obj, "max_tokens")?,
        latency_ms: opt_u64(&obj, "latency_ms")?.unwrap_or(0),
        usage,
        status,
    })
}

fn present(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(|v| !v.is_null())
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "\"{key}\" must be a string, found {}",
            type_name(other)
        )),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!(
                "\"{key}\" must be a non-negative integer, found {}",
                show(v)
            )
        }),
    }
}

fn opt_i64(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("\"{key}\" must be an integer, found {}", show(v))),
    }
}

/// A short rendering of a JSON value for messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Row, String> {
        parse_row(1, text, &mut Vec::new())
    }

    #[test]
    fn minimal_row() {
        let r = parse(r#"{"at_ms": 5, "model": "gpt-4o"}"#).unwrap();
        assert_eq!((r.at_ms, r.model.as_str(), r.latency_ms), (5, "gpt-4o", 0));
        assert!(matches!(r.prompt, RowPrompt::None));
        assert_eq!(
            r.outcome(),
            Outcome::unknown().with_latency(Default::default())
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(parse(r#"{"model": "m"}"#).unwrap_err().contains("at_ms"));
        assert!(parse(r#"{"at_ms": 1}"#).unwrap_err().contains("model"));
        assert!(
            parse(r#"{"at_ms": -1, "model": "m"}"#)
                .unwrap_err()
                .contains("non-negative")
        );
        assert!(
            parse(r#"{"at_ms": 1, "model": 3}"#)
                .unwrap_err()
                .contains("string")
        );
        assert!(parse(r#"{"at_ms": 1, "model": "m", "priority": 40000}"#).is_err());
        assert!(parse(r#"{"at_ms": 1, "model": "m", "status": 42}"#).is_err());
        assert!(parse(r#"{"at_ms": 1, "model": "m", "prompt": "a", "prompt_tokens": 3}"#).is_err());
        assert!(parse("[1]").unwrap_err().contains("object"));
    }

    #[test]
    fn unknown_fields_are_collected() {
        let mut unknown = Vec::new();
        parse_row(
            1,
            r#"{"at_ms": 1, "model": "m", "promt": "x"}"#,
            &mut unknown,
        )
        .unwrap();
        assert_eq!(unknown, vec!["promt".to_owned()]);
    }

    #[test]
    fn failed_status_is_not_billed() {
        let r = parse(r#"{"at_ms": 1, "model": "m", "status": 429}"#).unwrap();
        assert_eq!(r.outcome().status, Some(429));
        assert!(r.outcome().usage.is_none());
    }
}
