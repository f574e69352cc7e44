//! The Baidu ERNIE v1 ("wenxinworkshop") chat wire format: request validation with Baidu's
//! error codes, deterministic answers (JSON and SSE) and error bodies.
//!
//! Error codes follow Qianfan's published table (also in `bce-qianfan-sdk`'s `consts.go`):
//! 110 access token invalid, 111 access token expired, 336002 invalid JSON, 336003 invalid
//! parameter, 336006 malformed `messages` (length and role order), 336101 invalid HTTP method.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use tollgate::tokens::{ModelTable, count_chat};

use super::openai::{Lengths, reply_words};

/// The path prefix of the Baidu ERNIE v1 chat endpoints: a chat request is a `POST` to
/// `BAIDU_CHAT_PATH/{endpoint}` (`completions`, `completions_pro`, `ernie_speed`, ...).
pub const BAIDU_CHAT_PATH: &str = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat";

/// Words per stream event, as on the OpenAI path.
const WORDS_PER_EVENT: usize = 3;

/// Fields of the OpenAI request that ERNIE v1 does not take: a request carrying one is refused
/// with 336003, so a client's mapping is proved to have translated or dropped them.
const OPENAI_ONLY: [&str; 8] = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "frequency_penalty",
    "presence_penalty",
    "user",
    "stream_options",
    "n",
];

/// `access_token` invalid or missing.
pub(crate) const TOKEN_INVALID: u32 = 110;
/// `access_token` expired (or revoked).
pub(crate) const TOKEN_EXPIRED: u32 = 111;
const INVALID_JSON: u32 = 336_002;
const INVALID_PARAM: u32 = 336_003;
const INVALID_MESSAGES: u32 = 336_006;
const INVALID_METHOD: u32 = 336_101;

/// An error ERNIE answers with: HTTP 200 and `{"error_code", "error_msg"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaiduError {
    pub code: u32,
    pub message: String,
}

impl BaiduError {
    fn new(code: u32, message: impl Into<String>) -> BaiduError {
        BaiduError {
            code,
            message: message.into(),
        }
    }

    fn param(message: impl Into<String>) -> BaiduError {
        BaiduError::new(
            INVALID_PARAM,
            format!("Invalid argument: {}", message.into()),
        )
    }

    pub(crate) fn method() -> BaiduError {
        BaiduError::new(INVALID_METHOD, "Invalid HTTP method")
    }

    pub(crate) fn body(&self) -> Bytes {
        error_body(self.code, &self.message)
    }
}

/// `{"error_code": code, "error_msg": message}`.
pub(crate) fn error_body(code: u32, message: &str) -> Bytes {
    Bytes::from(error_data(code, message))
}

fn error_data(code: u32, message: &str) -> String {
    json!({"error_code": code, "error_msg": message}).to_string()
}

/// The endpoint name of a Baidu chat path (`completions_pro` of
/// `BAIDU_CHAT_PATH/completions_pro`), if `path` is one.
pub(crate) fn endpoint(path: &str) -> Option<&str> {
    path.strip_prefix(BAIDU_CHAT_PATH)?
        .strip_prefix('/')
        .filter(|e| !e.is_empty() && !e.contains('/'))
}

/// A validated ERNIE v1 chat request.
#[derive(Debug, Clone)]
pub(crate) struct BaiduRequest {
    pub stream: bool,
    /// Words to reply with.
    pub words: usize,
    /// `length` when `max_output_tokens` cut the reply, else `normal`.
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
}

fn number_in(
    obj: &Map<String, Value>,
    key: &str,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<(), BaiduError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_f64().is_some_and(ok) => Ok(()),
        Some(_) => Err(BaiduError::param(format!(
            "{key} must be a number in {range}"
        ))),
    }
}

/// Validates an ERNIE v1 chat body the way Qianfan does (the parts tests need). `body` is
/// `None` when it is not JSON.
pub(crate) fn parse_chat(
    body: Option<&Value>,
    lengths: Lengths,
) -> Result<BaiduRequest, BaiduError> {
    let body = body.ok_or_else(|| BaiduError::new(INVALID_JSON, "Invalid JSON"))?;
    let obj = body
        .as_object()
        .ok_or_else(|| BaiduError::param("the request body must be a JSON object"))?;
    if let Some(key) = OPENAI_ONLY.iter().find(|k| obj.contains_key(**k)) {
        return Err(BaiduError::param(format!(
            "'{key}' is not a parameter of this API"
        )));
    }
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => return Err(BaiduError::param("messages is required")),
        Some(_) => return Err(BaiduError::param("messages must be an array")),
    };
    if messages.len() % 2 == 0 {
        return Err(BaiduError::new(
            INVALID_MESSAGES,
            "the length of messages must be an odd number",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let (want, which) = if i % 2 == 0 {
            ("user", "odd")
        } else {
            ("assistant", "even")
        };
        if role != Some(want) {
            // Baidu counts messages from 1: the first is "odd".
            return Err(BaiduError::new(
                INVALID_MESSAGES,
                format!("the role of message with {which} index in the messages must be {want}"),
            ));
        }
        if !m.get("content").is_some_and(Value::is_string) {
            return Err(BaiduError::param(format!(
                "messages[{i}].content must be a string"
            )));
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(BaiduError::param("stream must be a boolean")),
    };
    number_in(obj, "temperature", |t| t > 0.0 && t <= 1.0, "(0, 1.0]")?;
    number_in(obj, "top_p", |p| (0.0..=1.0).contains(&p), "[0, 1.0]")?;
    number_in(
        obj,
        "penalty_score",
        |p| (1.0..=2.0).contains(&p),
        "[1.0, 2.0]",
    )?;
    for key in ["system", "user_id"] {
        if !matches!(obj.get(key), None | Some(Value::Null | Value::String(_))) {
            return Err(BaiduError::param(format!("{key} must be a string")));
        }
    }
    match obj.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::Array(s)) if s.len() <= 4 && s.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(BaiduError::param(
                "stop must be an array of at most 4 strings",
            ));
        }
    }
    let limit = match obj.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 2 => Some(n),
            _ => {
                return Err(BaiduError::param(
                    "max_output_tokens must be an integer of at least 2",
                ));
            }
        },
    };
    let max_words = lengths.max_words.max(1);
    let (words, finish_reason) = match limit {
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n <= max_words {
                (n, "length")
            } else {
                (max_words, "normal")
            }
        }
        None => (lengths.default_words.clamp(1, max_words), "normal"),
    };
    Ok(BaiduRequest {
        stream,
        words,
        finish_reason,
        prompt_tokens: prompt_tokens(obj, messages)?,
    })
}

/// [`count_chat`] of the equivalent OpenAI request: `system` as a first system message, then
/// the messages (for a model the table does not know: its default encoding).
fn prompt_tokens(obj: &Map<String, Value>, messages: &[Value]) -> Result<u64, BaiduError> {
    let mut all = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = obj.get("system").and_then(Value::as_str) {
        all.push(json!({"role": "system", "content": system}));
    }
    all.extend(messages.iter().cloned());
    count_chat(ModelTable::bundled(), "", &json!({"messages": all}))
        .map(|e| e.prompt_tokens)
        .map_err(|e| BaiduError::param(e.to_string()))
}

/// What the stream of an answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamShape {
    /// Every event, the last with `is_end: true`.
    Complete,
    /// At most this many events, none with `is_end: true`.
    WithoutEnd(usize),
    /// At most this many events (none with `is_end: true`), then an error event.
    ErrorAfter(usize, u32, String),
}

/// The identity shared by every event of one answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer<'a> {
    pub id: String,
    pub created: u64,
    pub req: &'a BaiduRequest,
}

impl Answer<'_> {
    fn usage(&self, completion: usize) -> Value {
        let completion = completion as u64;
        json!({
            "prompt_tokens": self.req.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.req.prompt_tokens + completion,
        })
    }

    /// The JSON answer.
    pub(crate) fn json(&self) -> Bytes {
        let text = reply_words(self.req.words).join(" ");
        Bytes::from(
            json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "result": text,
                "is_truncated": false,
                "need_clear_history": false,
                "finish_reason": self.req.finish_reason,
                "usage": self.usage(self.req.words),
            })
            .to_string(),
        )
    }

    /// The `data` of every stream event: a few words each, `sentence_id` from 0, usage so far;
    /// the last carries `is_end: true` and the finish reason (unless `shape` says otherwise).
    pub(crate) fn events(&self, shape: &StreamShape) -> Vec<String> {
        let words = reply_words(self.req.words);
        let groups: Vec<&[&str]> = words.chunks(WORDS_PER_EVENT).collect();
        let last = groups.len().saturating_sub(1);
        let ends = *shape == StreamShape::Complete;
        let mut sent = 0;
        let mut out: Vec<String> = groups
            .iter()
            .enumerate()
            .map(|(i, group)| {
                sent += group.len();
                let mut text = group.join(" ");
                if i > 0 {
                    text.insert(0, ' ');
                }
                let end = ends && i == last;
                json!({
                    "id": self.id,
                    "object": "chat.completion",
                    "created": self.created,
                    "sentence_id": i,
                    "is_end": end,
                    "is_truncated": false,
                    "result": text,
                    "need_clear_history": false,
                    "finish_reason": if end { self.req.finish_reason } else { "normal" },
                    "usage": self.usage(sent),
                })
                .to_string()
            })
            .collect();
        match shape {
            StreamShape::Complete => {}
            StreamShape::WithoutEnd(n) => out.truncate(*n),
            StreamShape::ErrorAfter(n, code, message) => {
                out.truncate(*n);
                out.push(error_data(*code, message));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: Lengths = Lengths {
        default_words: 16,
        max_words: 64,
    };

    fn parse(v: Value) -> Result<BaiduRequest, BaiduError> {
        parse_chat(Some(&v), LENGTHS)
    }

    #[test]
    fn endpoints_are_one_path_segment() {
        let p = |tail: &str| endpoint(&format!("{BAIDU_CHAT_PATH}{tail}")).map(str::to_owned);
        assert_eq!(p("/ernie-4.0-8k").as_deref(), Some("ernie-4.0-8k"));
        assert_eq!(p("/"), None);
        assert_eq!(p("/a/b"), None);
        assert_eq!(p("x/a"), None);
        assert_eq!(endpoint("/v1/chat/completions"), None);
    }

    #[test]
    fn stream_events_concatenate_to_the_json_result() {
        let req = parse(json!({"messages": [{"role": "user", "content": "hi"}],
                               "max_output_tokens": 7}))
        .unwrap();
        assert_eq!((req.words, req.finish_reason), (7, "length"));
        let a = Answer {
            id: "as-x".into(),
            created: 1,
            req: &req,
        };
        let events: Vec<Value> = a
            .events(&StreamShape::Complete)
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = events
            .iter()
            .map(|e| e["result"].as_str().unwrap())
            .collect();
        let json: Value = serde_json::from_slice(&a.json()).unwrap();
        assert_eq!(json["result"], text);
        let ends: Vec<bool> = events
            .iter()
            .map(|e| e["is_end"].as_bool().unwrap())
            .collect();
        assert_eq!(ends, [false, false, true]);
        assert_eq!(events[2]["usage"], json["usage"]);
        assert_eq!(events[2]["finish_reason"], "length");
        let cut = a.events(&StreamShape::WithoutEnd(5));
        assert!(cut.len() == 3 && !cut[2].contains("\"is_end\":true"));
    }

    #[test]
    fn limits_are_capped_and_validated() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        let req = parse(json!({"messages": hi, "max_output_tokens": 1000})).unwrap();
        assert_eq!((req.words, req.finish_reason), (64, "normal"));
        let err = parse(json!({"messages": hi, "max_output_tokens": 1})).unwrap_err();
        assert_eq!(err.code, INVALID_PARAM);
        assert_eq!(parse_chat(None, LENGTHS).unwrap_err().code, INVALID_JSON);
    }
}
