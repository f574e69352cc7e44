//! The OpenAI wire format: request validation, deterministic completions (JSON and SSE
//! chunks), the model list and error bodies.

use bytes::Bytes;
use serde_json::{Value, json};

use tollgate::tokens::{ModelTable, count_chat};

/// The words replies are made of, in order. A reply of `n` words reports `completion_tokens = n`
/// (words, not BPE tokens: the upstream is deterministic, not a tokenizer).
pub const VOCABULARY: [&str; 32] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "ex",
    "ea",
];

/// Words per SSE content delta.
const WORDS_PER_CHUNK: usize = 3;

/// The first `n` words of the reply: the [`VOCABULARY`] in order, repeated.
pub fn reply_words(n: usize) -> Vec<&'static str> {
    (0..n).map(|i| VOCABULARY[i % VOCABULARY.len()]).collect()
}

/// An error the upstream answers with, in OpenAI's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn invalid(
        message: impl Into<String>,
        param: Option<&'static str>,
        code: &'static str,
    ) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: Some(code),
        }
    }

    pub(crate) fn body(&self) -> Bytes {
        error_body(&self.message, self.kind, self.param, self.code)
    }
}

/// `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Bytes {
    Bytes::from(
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
            .to_string(),
    )
}

/// A validated chat-completions request.
#[derive(Debug, Clone)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Words to reply with.
    pub words: usize,
    /// `length` when the request's limit cut the reply, else `stop`.
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
}

/// Reply lengths: the default when the request sets no limit, and the cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lengths {
    pub default_words: usize,
    pub max_words: usize,
}

/// Validates a chat-completions body the way the API does (the parts tests need).
pub(crate) fn parse_chat(body: &Value, lengths: Lengths) -> Result<ChatRequest, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::invalid(
            "The request body must be a JSON object.",
            None,
            "invalid_type",
        )
    })?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "you must provide a model parameter",
                Some("model"),
                "missing_required_parameter",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'model': expected a non-empty string.",
                Some("model"),
                "invalid_type",
            ));
        }
    };
    match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                "missing_required_parameter",
            ));
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                Some("messages"),
                "empty_array",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'messages': expected an array of objects.",
                Some("messages"),
                "invalid_type",
            ));
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'stream': expected a boolean.",
                Some("stream"),
                "invalid_type",
            ));
        }
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                Some("stream_options"),
                "invalid_value",
            ));
        }
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "Invalid type for 'stream_options.include_usage': expected a boolean.",
                    Some("stream_options"),
                    "invalid_type",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'stream_options': expected an object.",
                Some("stream_options"),
                "invalid_type",
            ));
        }
    };
    let mut limit = None;
    for key in ["max_completion_tokens", "max_tokens"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if limit.is_none() => limit = Some(n),
                Some(_) => {}
                None => {
                    return Err(ApiError::invalid(
                        format!("Invalid '{key}': expected a non-negative integer."),
                        Some(key),
                        "invalid_type",
                    ));
                }
            },
        }
    }
    let estimate = count_chat(ModelTable::bundled(), "", body)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages"), "invalid_value"))?;
    let max_words = lengths.max_words.max(1);
    let (words, finish_reason) = match limit {
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX).max(1);
            if n <= max_words {
                (n, "length")
            } else {
                (max_words, "stop")
            }
        }
        None => (lengths.default_words.clamp(1, max_words), "stop"),
    };
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        words,
        finish_reason,
        prompt_tokens: estimate.prompt_tokens,
    })
}

/// The identity shared by every chunk of one completion.
#[derive(Debug, Clone)]
pub(crate) struct Completion<'a> {
    pub id: String,
    pub created: u64,
    pub req: &'a ChatRequest,
}

impl Completion<'_> {
    fn usage(&self) -> Value {
        let completion = self.req.words as u64;
        json!({
            "prompt_tokens": self.req.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.req.prompt_tokens + completion,
        })
    }

    /// The `chat.completion` JSON body.
    pub(crate) fn json(&self) -> Bytes {
        let content = reply_words(self.req.words).join(" ");
        Bytes::from(
            json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.req.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": null},
                    "logprobs": null,
                    "finish_reason": self.req.finish_reason,
                }],
                "usage": self.usage(),
                "system_fingerprint": "fp_testkit",
            })
            .to_string(),
        )
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.req.model,
            "system_fingerprint": "fp_testkit",
            "choices": choices,
        });
        if self.req.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        v.to_string()
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> String {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        )
    }

    /// The `data` of every SSE event, in order: the role delta, content deltas of a few words,
    /// the finish chunk, the usage chunk when asked for, and `[DONE]`.
    pub(crate) fn events(&self) -> Vec<String> {
        let mut out = vec![self.delta(json!({"role": "assistant", "content": ""}), None)];
        let words = reply_words(self.req.words);
        for (i, group) in words.chunks(WORDS_PER_CHUNK).enumerate() {
            let mut text = group.join(" ");
            if i > 0 {
                text.insert(0, ' ');
            }
            out.push(self.delta(json!({"content": text}), None));
        }
        out.push(self.delta(json!({}), Some(self.req.finish_reason)));
        if self.req.include_usage {
            out.push(self.chunk(json!([]), Some(self.usage())));
        }
        out.push("[DONE]".to_owned());
        out
    }
}

/// Frames one SSE event, with an `id:` field when `id` is set.
pub(crate) fn sse_event(id: Option<usize>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 16);
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s.push_str("data: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// `GET /v1/models`.
pub(crate) fn model_list(models: &[String], created: u64) -> Bytes {
    let data: Vec<Value> = models.iter().map(|m| model_object(m, created)).collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

/// `GET /v1/models/{id}`.
pub(crate) fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "tollgate-testkit"})
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: Lengths = Lengths {
        default_words: 16,
        max_words: 64,
    };

    #[test]
    fn stream_chunks_concatenate_to_the_json_content() {
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                          "stream": true, "max_tokens": 7});
        let req = parse_chat(&body, LENGTHS).unwrap();
        assert_eq!((req.words, req.finish_reason), (7, "length"));
        let c = Completion {
            id: "x".into(),
            created: 1,
            req: &req,
        };
        let mut text = String::new();
        for e in c.events() {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&e).unwrap();
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
        let json: Value = serde_json::from_slice(&c.json()).unwrap();
        assert_eq!(json["choices"][0]["message"]["content"], text);
        assert_eq!(text.split(' ').count(), 7);
    }

    #[test]
    fn limits_are_capped() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 1000});
        let req = parse_chat(&body, LENGTHS).unwrap();
        assert_eq!((req.words, req.finish_reason), (64, "stop"));
    }
}
