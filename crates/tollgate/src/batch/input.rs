//! Reading the input: OpenAI Batch API request lines, plus tollgate's `tenant` and `priority`.

use std::collections::HashSet;

use serde_json::Value;

/// The only endpoint a batch line may name.
pub const URL: &str = "/v1/chat/completions";

/// One request of a batch.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    /// Its place in the input, stable across runs (the line number for a file): the journal's
    /// key.
    pub seq: u64,
    /// The caller's id for it, unique in the batch.
    pub custom_id: String,
    /// The chat-completions body (`model`, `messages`, ...).
    pub body: Value,
    /// Its tenant, when it names one (else [`super::BatchOptions::tenant`]).
    pub tenant: Option<String>,
    /// Its queue priority, when it gives one (else [`super::BatchOptions::priority`]).
    pub priority: Option<i16>,
}

/// An input line that cannot be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Its place in the input (the line number for a file).
    pub seq: u64,
    /// Its `custom_id` when it had a usable, unique one.
    pub custom_id: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl BatchRequest {
    /// A request with the batch's default tenant and priority.
    pub fn new(seq: u64, custom_id: impl Into<String>, body: Value) -> BatchRequest {
        BatchRequest {
            seq,
            custom_id: custom_id.into(),
            body,
            tenant: None,
            priority: None,
        }
    }

    /// Reads one line of an OpenAI Batch API input file (`custom_id`, `method`, `url`, `body`,
    /// plus tollgate's `tenant` and `priority`); `seen` holds the custom_ids met so far, so a
    /// duplicate is refused. The body must name a `model` and carry a `messages` array, without
    /// `stream: true`.
    pub fn parse_line(
        seq: u64,
        text: &str,
        seen: &mut HashSet<String>,
    ) -> Result<BatchRequest, BadLine> {
        parse(seq, text, seen)
    }
}

fn parse(line: u64, text: &str, seen: &mut HashSet<String>) -> Result<BatchRequest, BadLine> {
    let bad = |custom_id: Option<String>, message: String| BadLine {
        seq: line,
        custom_id,
        message,
    };
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad(None, format!("not a JSON object: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(bad(None, "not a JSON object".into()));
    };
    let custom_id = match o.remove("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(bad(None, "`custom_id` must be a non-empty string".into())),
        None => return Err(bad(None, "no `custom_id`".into())),
    };
    if seen.contains(&custom_id) {
        return Err(bad(
            None,
            format!(
                "duplicate custom_id {custom_id:?} (an earlier line has it); ids must be unique"
            ),
        ));
    }
    seen.insert(custom_id.clone());
    let id = Some(custom_id.clone());
    match o.get("method").and_then(Value::as_str) {
        Some("POST") | None => {}
        Some(m) => return Err(bad(id, format!("method {m:?}: only \"POST\" is supported"))),
    }
    match o.get("url").and_then(Value::as_str) {
        Some(URL) | None => {}
        Some(u) => return Err(bad(id, format!("url {u:?}: only \"{URL}\" is supported"))),
    }
    let tenant = match o.get("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(bad(id, "`tenant` must be a string".into())),
    };
    let priority = match o.get("priority") {
        None | Some(Value::Null) => None,
        Some(p) => match p.as_i64().and_then(|p| i16::try_from(p).ok()) {
            Some(p) => Some(p),
            None => {
                return Err(bad(
                    id,
                    "`priority` must be an integer in -32768..=32767".into(),
                ));
            }
        },
    };
    let body = match o.remove("body") {
        Some(b @ Value::Object(_)) => b,
        Some(_) => return Err(bad(id, "`body` must be a JSON object".into())),
        None => return Err(bad(id, "no `body`".into())),
    };
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        _ => return Err(bad(id, "the body has no `model` string".into())),
    }
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(bad(id, "the body has no `messages` array".into()));
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad(id, "`stream: true` is not supported in a batch".into()));
    }
    Ok(BatchRequest {
        seq: line,
        custom_id,
        body,
        tenant,
        priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_batch_api_line_and_names_what_is_wrong() {
        let mut seen = HashSet::new();
        let ok = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": []}, "tenant": "t", "priority": -5}"#;
        let e = parse(1, ok, &mut seen).expect("a good line");
        assert_eq!((e.custom_id.as_str(), e.priority), ("a", Some(-5)));
        assert_eq!(e.tenant.as_deref(), Some("t"));
        let dup = parse(2, ok, &mut seen).expect_err("a duplicate");
        assert!(dup.message.contains("duplicate"), "{}", dup.message);
        assert_eq!(dup.custom_id, None);
        for (text, part) in [
            ("nope", "not a JSON object"),
            (r#"{"body": {}}"#, "no `custom_id`"),
            (
                r#"{"custom_id": "b", "method": "GET", "body": {}}"#,
                "method",
            ),
            (
                r#"{"custom_id": "c", "url": "/v1/embeddings", "body": {}}"#,
                "url",
            ),
            (r#"{"custom_id": "d", "body": {"messages": []}}"#, "model"),
            (r#"{"custom_id": "e", "body": {"model": "m"}}"#, "messages"),
        ] {
            let b = parse(3, text, &mut seen).expect_err(text);
            assert!(b.message.contains(part), "{text}: {}", b.message);
        }
    }
}
