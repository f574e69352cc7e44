//! The `baidu_v1` dialect: Baidu ERNIE v1 (Qianfan `wenxinworkshop`) chat.
//!
//! - **URL**: `<base_url>/<endpoint>`, the endpoint from the model name ([`ENDPOINTS`], extended
//!   and overridden by the upstream's `endpoints = { model = "endpoint" }`); the OAuth2 access
//!   token goes in the query (`placement = "query"`).
//! - **Request**: system messages → `system`; `max_tokens` / `max_completion_tokens` →
//!   `max_output_tokens` (at least 2); `user` → `user_id`; `frequency_penalty` →
//!   `penalty_score` = 1 + frequency_penalty, within [1, 2]; `temperature` clamped into (0, 1]
//!   (0 becomes 0.01); a `stop` string becomes a list; `response_format.type` → `response_format`;
//!   the OpenAI fields ERNIE has no use for are dropped; fields ERNIE has and OpenAI has not
//!   (`disable_search`, `enable_citation`, `penalty_score`, ...) go as they are.
//! - **Answer**: `result` → `choices[0].message.content`, `finish_reason` mapped (`normal` /
//!   `stop` → `stop`, `length`, `content_filter`, `function_call` → `tool_calls`), `usage` kept,
//!   `is_truncated` and `need_clear_history` kept beside the choices.
//! - **Streams**: each event's `result` becomes a `chat.completion.chunk` delta; the event with
//!   `is_end: true` adds the finish reason, then a usage chunk and `[DONE]`. A stream that ends
//!   without `is_end` is cut.
//! - **Errors**: `error_code` in a 200 body (or in the JSON answer to a stream request, or in an
//!   event) and `X-Bce-Error-Code` headers, classified by [`classify`].

use std::collections::VecDeque;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Answer, ErrorClass, EventMap, ProviderError, Unspeakable};
use crate::transport::sse::Event;

/// The built-in model → endpoint table (model names as Qianfan writes them, matched without
/// regard to case).
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("ernie-4.0-8k", "completions_pro"),
    ("ernie-4.0-8k-latest", "ernie-4.0-8k-latest"),
    ("ernie-4.0-8k-preview", "ernie-4.0-8k-preview"),
    ("ernie-4.0-turbo-8k", "ernie-4.0-turbo-8k"),
    ("ernie-4.0-turbo-128k", "ernie-4.0-turbo-128k"),
    ("ernie-3.5-8k", "completions"),
    ("ernie-3.5-8k-preview", "ernie-3.5-8k-preview"),
    ("ernie-3.5-128k", "ernie-3.5-128k"),
    ("ernie-speed-8k", "ernie_speed"),
    ("ernie-speed-128k", "ernie-speed-128k"),
    ("ernie-speed-pro-128k", "ernie-speed-pro-128k"),
    ("ernie-lite-8k", "ernie-lite-8k"),
    ("ernie-lite-pro-128k", "ernie-lite-pro-128k"),
    ("ernie-tiny-8k", "ernie-tiny-8k"),
    ("ernie-character-8k", "ernie-char-8k"),
    ("ernie-novel-8k", "ernie-novel-8k"),
    ("ernie-bot", "completions"),
    ("ernie-bot-4", "completions_pro"),
    ("ernie-bot-8k", "ernie_bot_8k"),
    ("ernie-bot-turbo", "eb-instant"),
    ("ernie-speed", "ernie_speed"),
];

/// The dialect's settings for one upstream: its `endpoints` entries.
#[derive(Debug, Clone)]
pub(crate) struct Baidu {
    endpoints: Vec<(String, String)>,
}

impl Baidu {
    pub(crate) fn new(endpoints: &[(String, String)]) -> Baidu {
        Baidu {
            endpoints: endpoints.to_vec(),
        }
    }

    /// `<base_url>/<endpoint>` for `model`.
    pub(crate) fn url(&self, base_url: &str, model: &str) -> Result<String, Unspeakable> {
        let endpoint = endpoint_of(&self.endpoints, model).ok_or_else(|| {
            Unspeakable(format!(
                "model '{model}' has no ERNIE v1 endpoint: add it to the upstream's endpoints, \
                 e.g. endpoints = {{ \"{model}\" = \"completions_pro\" }} (the path after \
                 .../wenxinworkshop/chat/)"
            ))
        })?;
        Ok(format!("{}/{}", base_url.trim_end_matches('/'), endpoint))
    }
}

/// The endpoint path of `model` with an upstream's `endpoints` entries (model names in lower
/// case) over the built-in table, if it has one.
///
/// ```
/// use tollgate::dialect::baidu::endpoint_of;
/// assert_eq!(endpoint_of(&[], "ERNIE-4.0-8K").as_deref(), Some("completions_pro"));
/// assert_eq!(endpoint_of(&[("mine".into(), "abc".into())], "Mine").as_deref(), Some("abc"));
/// assert_eq!(endpoint_of(&[], "gpt-4o"), None);
/// ```
pub fn endpoint_of(extra: &[(String, String)], model: &str) -> Option<String> {
    let lower = model.to_ascii_lowercase();
    extra
        .iter()
        .find(|(m, _)| *m == lower)
        .map(|(_, e)| e.clone())
        .or_else(|| {
            ENDPOINTS
                .iter()
                .find(|(m, _)| *m == lower)
                .map(|(_, e)| (*e).to_owned())
        })
}

/// OpenAI request fields ERNIE v1 has no use for (dropped unless mapped).
const DROPPED: &[&str] = &[
    "model",
    "stream_options",
    "n",
    "seed",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "modalities",
    "prediction",
    "reasoning_effort",
];

/// The ERNIE v1 body for an OpenAI chat request.
pub fn body(request: &Value, stream: bool) -> Result<Bytes, Unspeakable> {
    let Value::Object(req) = request else {
        return Err(Unspeakable("the request body must be a JSON object".into()));
    };
    let mut out = Map::new();
    let mut system: Vec<String> = vec![];
    let mut messages = vec![];
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Unspeakable("the request has no `messages` list".into()))?;
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = text_of(m.get("content")).ok_or_else(|| {
            Unspeakable(format!("messages[{i}]: ERNIE v1 takes text content only"))
        })?;
        match role {
            "system" | "developer" => system.push(content),
            "user" | "assistant" => messages.push(json!({"role": role, "content": content})),
            other => {
                return Err(Unspeakable(format!(
                    "messages[{i}]: ERNIE v1 takes user, assistant and system messages, not \
                     role '{other}'"
                )));
            }
        }
    }
    if req.contains_key("tools") || req.contains_key("functions") {
        return Err(Unspeakable(
            "tools and functions are not translated to ERNIE v1; call a Qianfan v2 \
             (OpenAI-compatible) upstream for them"
                .into(),
        ));
    }
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    for (k, v) in req {
        match k.as_str() {
            "messages" | "tools" | "functions" | "tool_choice" | "function_call" => {}
            "stream" => {}
            "max_tokens" | "max_completion_tokens" => {
                if let Some(n) = v.as_u64() {
                    out.insert("max_output_tokens".into(), json!(n.max(2)));
                }
            }
            "user" => {
                out.insert("user_id".into(), v.clone());
            }
            "frequency_penalty" => {
                if let Some(f) = v.as_f64() {
                    out.insert(
                        "penalty_score".into(),
                        json!(round3((1.0 + f).clamp(1.0, 2.0))),
                    );
                }
            }
            "temperature" => {
                if let Some(t) = v.as_f64() {
                    let t = if t <= 0.0 { 0.01 } else { t.min(1.0) };
                    out.insert("temperature".into(), json!(round3(t)));
                }
            }
            "stop" => match v {
                Value::String(s) => {
                    out.insert("stop".into(), json!([s]));
                }
                Value::Array(_) => {
                    out.insert("stop".into(), v.clone());
                }
                _ => {}
            },
            "response_format" => {
                if let Some(t) = v.get("type").and_then(Value::as_str) {
                    out.insert("response_format".into(), json!(t));
                }
            }
            k if DROPPED.contains(&k) => {}
            // ERNIE's own fields, set by the caller: they win over a mapped one.
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| Unspeakable(format!("cannot serialise the body: {e}")))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The text of a message's `content`: a string, or the text parts of a list.
fn text_of(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                if p.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                text.push_str(p.get("text").and_then(Value::as_str)?);
            }
            Some(text)
        }
        _ => None,
    }
}

/// What ERNIE's error code means: class and the status the caller sees.
///
/// 110 / 111 → auth expired (401); 4, 18, 336501 → rate limited (429); 336502 → token limited
/// (429); 1, 2, 15, 336000, 336100 → transient (500 / 503); 17, 19 → quota, held until the
/// next day (429); 100, 336001–336009, 336101–336105 → invalid request (400); 6 → refused
/// permission (403); 13, 14 → refused credentials (401); anything else → unknown (500).
pub fn classify(code: i64, message: &str) -> ProviderError {
    let (class, status) = match code {
        110 | 111 => (ErrorClass::AuthExpired, 401),
        4 | 18 | 336_501 => (ErrorClass::RateLimited, 429),
        336_502 => (ErrorClass::TokenLimited, 429),
        2 | 336_100 => (ErrorClass::Transient, 503),
        1 | 15 | 336_000 => (ErrorClass::Transient, 500),
        17 | 19 => (ErrorClass::QuotaExhausted { daily: true }, 429),
        100 | 336_001..=336_009 | 336_101..=336_105 => (ErrorClass::InvalidRequest, 400),
        6 => (ErrorClass::Refused, 403),
        13 | 14 => (ErrorClass::Refused, 401),
        _ => (ErrorClass::Unknown, 500),
    };
    ProviderError::new(class, status, code.to_string(), message)
}

/// The error an ERNIE JSON value carries (`error_code`, `error_msg`), if any.
fn error_in(v: &Value) -> Option<ProviderError> {
    let code = v.get("error_code")?;
    let code = code
        .as_i64()
        .or_else(|| code.as_str().and_then(|s| s.trim().parse().ok()))?;
    let message = v.get("error_msg").and_then(Value::as_str).unwrap_or("");
    Some(classify(code, message))
}

/// An error given in `X-Bce-Error-Code` / `X-Bce-Error-Message` headers.
pub(crate) fn head_error(headers: &HeaderMap) -> Option<ProviderError> {
    let code: i64 = headers
        .get("x-bce-error-code")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let message = headers
        .get("x-bce-error-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Some(classify(code, message))
}

/// Whether an ERNIE answer says the access token is invalid or expired (110, 111).
pub(crate) fn auth_expired(headers: &HeaderMap, body: &[u8]) -> bool {
    let expired = |e: ProviderError| e.class == ErrorClass::AuthExpired;
    if head_error(headers).is_some_and(expired) {
        return true;
    }
    body.len() < 64 * 1024
        && body.windows(12).any(|w| w == b"\"error_code\"")
        && serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| error_in(&v))
            .is_some_and(expired)
}

/// OpenAI's finish reason for ERNIE's.
fn finish_reason(v: &Value) -> Value {
    let truncated = v.get("is_truncated").and_then(Value::as_bool) == Some(true);
    match v.get("finish_reason").and_then(Value::as_str) {
        _ if v.get("function_call").is_some_and(Value::is_object) => json!("tool_calls"),
        Some("length") => json!("length"),
        Some("content_filter") => json!("content_filter"),
        Some("function_call") => json!("tool_calls"),
        _ if truncated => json!("length"),
        _ => json!("stop"),
    }
}

/// ERNIE's `function_call` as OpenAI `tool_calls`.
fn tool_calls(v: &Value, id: &Value) -> Option<Value> {
    let f = v.get("function_call").filter(|f| f.is_object())?;
    Some(json!([{
        "id": format!("call_{}", id.as_str().unwrap_or("0")),
        "type": "function",
        "function": {
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "arguments": f.get("arguments").cloned().unwrap_or(json!("")),
        },
    }]))
}

/// A whole ERNIE answer in OpenAI's words.
pub(crate) fn answer(status: u16, headers: &HeaderMap, body: Bytes, model: &str) -> Answer {
    let translated_error = |e: ProviderError| Answer {
        status: e.status,
        body: e.openai_body(),
        translated: true,
        error: Some(e),
        malformed: None,
    };
    if let Some(e) = head_error(headers) {
        return translated_error(e);
    }
    let parsed = serde_json::from_slice::<Value>(&body);
    if let Ok(v) = &parsed
        && let Some(e) = error_in(v)
    {
        return translated_error(e);
    }
    if !(200..300).contains(&status) {
        // A gateway's error without an ERNIE code: the status says what it is.
        return Answer::untouched(status, body);
    }
    let v = match parsed {
        Ok(v)
            if v.get("result").is_some_and(Value::is_string)
                || v.get("function_call").is_some_and(Value::is_object) =>
        {
            v
        }
        _ => {
            let mut a = Answer::untouched(status, body);
            a.malformed = Some(
                "the ERNIE answer is neither a completion (`result`) nor an error (`error_code`)"
                    .into(),
            );
            return a;
        }
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let mut message =
        json!({"role": "assistant", "content": v.get("result").cloned().unwrap_or(json!(""))});
    if let Some(calls) = tool_calls(&v, &id) {
        message["tool_calls"] = calls;
    }
    let mut out = json!({
        "id": id,
        "object": "chat.completion",
        "created": v.get("created").cloned().unwrap_or(json!(0)),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(&v)}],
    });
    for k in ["usage", "is_truncated", "need_clear_history", "search_info"] {
        if let Some(x) = v.get(k) {
            out[k] = x.clone();
        }
    }
    Answer {
        status,
        body: Bytes::from(out.to_string()),
        translated: true,
        error: None,
        malformed: None,
    }
}

/// Translates an ERNIE stream into OpenAI chunks.
pub(crate) struct Events {
    model: String,
    started: bool,
    ended: bool,
}

impl Events {
    pub(crate) fn new(model: &str) -> Events {
        Events {
            model: model.to_owned(),
            started: false,
            ended: false,
        }
    }

    fn chunk(&self, v: &Value, choices: Value, usage: Option<&Value>) -> Event {
        let mut c = json!({
            "id": v.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": v.get("created").cloned().unwrap_or(json!(0)),
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        Event {
            data: c.to_string(),
            ..Event::default()
        }
    }
}

impl EventMap for Events {
    fn event(&mut self, event: Event, out: &mut VecDeque<Event>) -> Result<(), ProviderError> {
        if self.ended || event.data.trim().is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&event.data).map_err(|_| {
            ProviderError::new(
                ErrorClass::Unknown,
                502,
                "",
                format!(
                    "an ERNIE stream event is not JSON: {}",
                    event.data.chars().take(120).collect::<String>()
                ),
            )
        })?;
        if let Some(e) = error_in(&v) {
            return Err(e);
        }
        let end = v.get("is_end").and_then(Value::as_bool) == Some(true);
        let mut delta = Map::new();
        if !self.started {
            delta.insert("role".into(), json!("assistant"));
            self.started = true;
        }
        delta.insert(
            "content".into(),
            v.get("result").cloned().unwrap_or(json!("")),
        );
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        if let Some(calls) = tool_calls(&v, &id) {
            delta.insert("tool_calls".into(), calls);
        }
        let finish = if end { finish_reason(&v) } else { Value::Null };
        out.push_back(self.chunk(
            &v,
            json!([{"index": 0, "delta": Value::Object(delta), "finish_reason": finish}]),
            None,
        ));
        if end {
            self.ended = true;
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                out.push_back(self.chunk(&v, json!([]), Some(u)));
            }
            out.push_back(Event {
                data: "[DONE]".into(),
                ..Event::default()
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(req: Value, stream: bool) -> Value {
        serde_json::from_slice(&body(&req, stream).expect("speakable")).unwrap()
    }

    #[test]
    fn requests_are_mapped() {
        let v = sent(
            json!({"model": "ernie-4.0-8k", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
                "max_tokens": 1, "user": "u-1", "frequency_penalty": 0.5, "temperature": 0,
                "stop": "END", "presence_penalty": 1, "stream_options": {"include_usage": true},
                "disable_search": true, "response_format": {"type": "json_object"}}),
            true,
        );
        assert_eq!(
            v,
            json!({"messages": [{"role": "user", "content": "hi there"}], "system": "be brief",
                   "max_output_tokens": 2, "user_id": "u-1", "penalty_score": 1.5,
                   "temperature": 0.01, "stop": ["END"], "disable_search": true,
                   "response_format": "json_object", "stream": true})
        );
        let v = sent(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 1.7, "frequency_penalty": -1.0, "max_completion_tokens": 300}),
            false,
        );
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["penalty_score"], 1.0);
        assert_eq!(v["max_output_tokens"], 300);
        assert!(v.get("stream").is_none());
        let v = sent(
            json!({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 2.0}),
            false,
        );
        assert_eq!(v["penalty_score"], 2.0);
    }

    #[test]
    fn what_ernie_cannot_take_is_refused() {
        for (req, want) in [
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "role 'tool'",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "text content only",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": []}),
                "tools",
            ),
            (json!({"model": "x"}), "no `messages`"),
        ] {
            let e = body(&req, false).unwrap_err();
            assert!(e.0.contains(want), "{e}");
        }
    }

    #[test]
    fn endpoints_come_from_the_table_and_the_policy() {
        let b = Baidu::new(&[
            ("my-model".into(), "abc123".into()),
            ("ernie-4.0-8k".into(), "custom".into()),
        ]);
        let base = "https://aip.baidubce.com/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/";
        assert_eq!(
            b.url(base, "ERNIE-3.5-8K").unwrap(),
            format!("{base}completions")
        );
        assert_eq!(b.url(base, "my-model").unwrap(), format!("{base}abc123"));
        assert_eq!(
            b.url(base, "ernie-4.0-8k").unwrap(),
            format!("{base}custom")
        );
        let e = b.url(base, "gpt-4o").unwrap_err();
        assert!(e.0.contains("'gpt-4o' has no ERNIE v1 endpoint"), "{e}");
    }

    #[test]
    fn answers_are_mapped() {
        let body = br#"{"id":"as-1","object":"chat.completion","created":7,"result":"hello","is_truncated":true,"need_clear_history":false,"finish_reason":"normal","usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let a = answer(
            200,
            &HeaderMap::new(),
            Bytes::from_static(body),
            "ernie-4.0-8k",
        );
        assert!(a.error.is_none() && a.malformed.is_none() && a.translated);
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hello");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 4);
        assert_eq!(v["is_truncated"], true);
        assert_eq!(v["model"], "ernie-4.0-8k");
        assert_eq!(v["object"], "chat.completion");
    }

    #[test]
    fn errors_in_bodies_and_headers() {
        let a = answer(
            200,
            &HeaderMap::new(),
            Bytes::from_static(
                br#"{"error_code":18,"error_msg":"Open api qps request limit reached"}"#,
            ),
            "m",
        );
        let e = a.error.unwrap();
        assert_eq!(
            (e.class, e.status, e.code.as_str()),
            (ErrorClass::RateLimited, 429, "18")
        );
        assert_eq!(a.status, 429);
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["error"]["message"], "Open api qps request limit reached");
        let mut h = HeaderMap::new();
        h.insert("x-bce-error-code", "336502".parse().unwrap());
        h.insert("x-bce-error-message", "tpm limit".parse().unwrap());
        let a = answer(429, &h, Bytes::new(), "m");
        assert_eq!(a.error.unwrap().class, ErrorClass::TokenLimited);
        let a = answer(
            200,
            &HeaderMap::new(),
            Bytes::from_static(br#"{"id":"x"}"#),
            "m",
        );
        assert!(a.malformed.is_some() && a.error.is_none());
        let a = answer(
            502,
            &HeaderMap::new(),
            Bytes::from_static(b"bad gateway"),
            "m",
        );
        assert!(a.error.is_none() && a.malformed.is_none() && a.status == 502);
    }

    #[test]
    fn every_listed_code_has_its_class() {
        use ErrorClass::*;
        let cases: &[(i64, ErrorClass, u16)] = &[
            (110, AuthExpired, 401),
            (111, AuthExpired, 401),
            (4, RateLimited, 429),
            (18, RateLimited, 429),
            (336_501, RateLimited, 429),
            (336_502, TokenLimited, 429),
            (1, Transient, 500),
            (2, Transient, 503),
            (15, Transient, 500),
            (336_000, Transient, 500),
            (336_100, Transient, 503),
            (17, QuotaExhausted { daily: true }, 429),
            (19, QuotaExhausted { daily: true }, 429),
            (336_001, InvalidRequest, 400),
            (336_005, InvalidRequest, 400),
            (336_007, InvalidRequest, 400),
            (336_101, InvalidRequest, 400),
            (336_105, InvalidRequest, 400),
            (100, InvalidRequest, 400),
            (6, Refused, 403),
            (13, Refused, 401),
            (14, Refused, 401),
            (336_106, Unknown, 500),
            (99_999, Unknown, 500),
        ];
        for &(code, class, status) in cases {
            let e = classify(code, "m");
            assert_eq!((e.class, e.status), (class, status), "{code}");
        }
    }

    #[test]
    fn streams_become_chunks_then_usage_then_done() {
        let mut m = Events::new("ernie-speed-8k");
        let mut out = VecDeque::new();
        let ev = |d: &str| Event {
            data: d.into(),
            ..Event::default()
        };
        m.event(
            ev(r#"{"id":"as-1","created":1,"sentence_id":0,"is_end":false,"result":"he"}"#),
            &mut out,
        )
        .unwrap();
        m.event(ev(r#"{"id":"as-1","created":1,"sentence_id":1,"is_end":true,"result":"llo","finish_reason":"normal","usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}"#), &mut out).unwrap();
        let data: Vec<Value> = out
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(out.len(), 4);
        assert_eq!(
            data[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": "he"})
        );
        assert_eq!(data[1]["choices"][0]["delta"], json!({"content": "llo"}));
        assert_eq!(data[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(data[2]["usage"]["total_tokens"], 4);
        assert_eq!(data[2]["choices"], json!([]));
        assert!(out.back().unwrap().is_done());
        let mut m = Events::new("x");
        let e = m
            .event(
                ev(r#"{"error_code":336100,"error_msg":"try again"}"#),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
        assert!(m.event(ev("not json"), &mut out).is_err());
    }
}
