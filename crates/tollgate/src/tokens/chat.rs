//! Prompt token counts for single texts and OpenAI chat-completions requests.

use serde_json::Value;

use super::error::json_type;
use super::{Encoding, ModelTable, TokenError, count, estimate};

/// Tokens per message: `<|start|>{role/name}\n{content}<|end|>\n` (OpenAI cookbook).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra token when a message has a `name`.
pub const TOKENS_PER_NAME: u64 = 1;
/// Every reply is primed with `<|start|>assistant<|message|>`.
pub const REPLY_PRIMING_TOKENS: u64 = 3;
/// An image part with `"detail": "low"`: a flat 85 tokens (OpenAI vision pricing, gpt-4o family).
pub const IMAGE_TOKENS_LOW: u64 = 85;
/// Any other image part (detail `high`/`auto`, size unknown before download): 765 tokens, the
/// cost of a 1024×1024 image at high detail on gpt-4o (85 base + 4 tiles × 170). Larger or
/// wider images cost up to 1105 (6 tiles) or 1445 (8 tiles); the engine can reserve more.
pub const IMAGE_TOKENS_DEFAULT: u64 = 765;

/// A token count and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    /// The count.
    pub tokens: u64,
    /// True when counted with the model's exact vocabulary; false for an [`estimate()`].
    pub exact: bool,
    /// The vocabulary used, when exact.
    pub encoding: Option<Encoding>,
}

/// Counts `text` for `model`: exactly when the table (or tiktoken's name rules) knows the
/// model's encoding, else with [`estimate()`].
///
/// ```
/// use tollgate::tokens::{count_text, Encoding, ModelTable};
/// let table = ModelTable::bundled();
/// let c = count_text(table, "gpt-4o", "hello world");
/// assert_eq!((c.tokens, c.exact, c.encoding), (2, true, Some(Encoding::O200kBase)));
/// let guess = count_text(table, "qwen-max", "hello world");
/// assert!(!guess.exact && guess.tokens >= 2);
/// ```
pub fn count_text(table: &ModelTable, model: &str, text: &str) -> TokenCount {
    let encoding = table.encoding(model);
    TokenCount {
        tokens: counter(encoding)(text),
        exact: encoding.is_some(),
        encoding,
    }
}

fn counter(encoding: Option<Encoding>) -> impl Fn(&str) -> u64 {
    move |s: &str| match encoding {
        Some(e) => count(e, s) as u64,
        None => estimate(s) as u64,
    }
}

/// The prompt side of a chat request, as admission needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptEstimate {
    /// Tokens the prompt will be billed for (messages, overhead, tool definitions).
    pub prompt_tokens: u64,
    /// The most completion tokens the request allows: `max_completion_tokens`, else `max_tokens`,
    /// times `n` when `n > 1`. `None` when the request sets no limit (apply the policy default).
    pub completion_allowance: Option<u64>,
    /// True when the prompt was counted with the model's exact vocabulary.
    pub exact: bool,
}

/// Counts the prompt tokens of an OpenAI chat-completions request body.
///
/// Follows the OpenAI cookbook ("How to count tokens with tiktoken", `num_tokens_from_messages`):
/// [`TOKENS_PER_MESSAGE`] per message, plus the tokens of every string field (`role`, `content`,
/// `name`, `tool_call_id`, ...), plus [`TOKENS_PER_NAME`] per `name`, plus
/// [`REPLY_PRIMING_TOKENS`]. Extensions, all approximations of what the API bills:
/// - `content` as an array of parts: `text` parts counted; `image_url` parts cost
///   [`IMAGE_TOKENS_LOW`] for `"detail": "low"`, else [`IMAGE_TOKENS_DEFAULT`]; other parts
///   (audio, files) count as their JSON text;
/// - `tool_calls[].function.name` and `.arguments`, and legacy `function_call`, counted;
/// - `tools` (and legacy `functions`) definitions count as their compact JSON text. OpenAI
///   renders them into a hidden system message in another syntax, so this is an approximation
///   (typically within ±20% of the billed overhead).
///
/// `model` wins; when it is empty, the request's `"model"` is used. Unknown models are
/// estimated (`exact == false`).
///
/// ```
/// use serde_json::json;
/// use tollgate::tokens::{count_chat, ModelTable};
/// let req = json!({
///     "model": "gpt-4o",
///     "messages": [{"role": "user", "content": "hello world"}],
///     "max_tokens": 100
/// });
/// let p = count_chat(ModelTable::bundled(), "", &req).unwrap();
/// // 3 (message) + 1 ("user") + 2 ("hello world") + 3 (reply priming)
/// assert_eq!(p.prompt_tokens, 9);
/// assert_eq!(p.completion_allowance, Some(100));
/// assert!(p.exact);
/// ```
pub fn count_chat(
    table: &ModelTable,
    model: &str,
    request: &Value,
) -> Result<PromptEstimate, TokenError> {
    let obj = request.as_object().ok_or(TokenError::RequestNotObject {
        found: json_type(request),
    })?;
    let messages = match obj.get("messages") {
        None => return Err(TokenError::MissingMessages),
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(TokenError::MessagesNotArray {
                found: json_type(other),
            });
        }
    };
    let model = if model.is_empty() {
        obj.get("model").and_then(Value::as_str).unwrap_or("")
    } else {
        model
    };
    let encoding = table.encoding(model);
    let tok = counter(encoding);

    let mut total: u64 = 0;
    for (index, message) in messages.iter().enumerate() {
        let m = message.as_object().ok_or(TokenError::MessageNotObject {
            index,
            found: json_type(message),
        })?;
        total += TOKENS_PER_MESSAGE;
        for (key, value) in m {
            total += match (key.as_str(), value) {
                (_, Value::Null) => 0,
                ("content", Value::Array(parts)) => {
                    parts.iter().map(|p| part_tokens(p, &tok)).sum()
                }
                ("tool_calls", Value::Array(calls)) => calls
                    .iter()
                    .map(|c| function_tokens(c.get("function").unwrap_or(&Value::Null), &tok))
                    .sum(),
                ("function_call", call @ Value::Object(_)) => function_tokens(call, &tok),
                ("name", Value::String(s)) => tok(s) + TOKENS_PER_NAME,
                (_, Value::String(s)) => tok(s),
                (_, other) => tok(&other.to_string()),
            };
        }
    }
    total += REPLY_PRIMING_TOKENS;
    for key in ["tools", "functions"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(defs) => total += tok(&defs.to_string()),
        }
    }

    Ok(PromptEstimate {
        prompt_tokens: total,
        completion_allowance: completion_allowance(obj)?,
        exact: encoding.is_some(),
    })
}

fn part_tokens(part: &Value, tok: &impl Fn(&str) -> u64) -> u64 {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text") {
            Some(Value::String(s)) => tok(s),
            _ => tok(&part.to_string()),
        },
        Some("image_url") => {
            let detail = part
                .get("image_url")
                .and_then(|i| i.get("detail"))
                .and_then(Value::as_str);
            if detail == Some("low") {
                IMAGE_TOKENS_LOW
            } else {
                IMAGE_TOKENS_DEFAULT
            }
        }
        _ => tok(&part.to_string()),
    }
}

fn function_tokens(function: &Value, tok: &impl Fn(&str) -> u64) -> u64 {
    let field = |k: &str| match function.get(k) {
        Some(Value::String(s)) => tok(s),
        None | Some(Value::Null) => 0,
        Some(other) => tok(&other.to_string()),
    };
    field("name") + field("arguments")
}

fn completion_allowance(obj: &serde_json::Map<String, Value>) -> Result<Option<u64>, TokenError> {
    let limit = match non_negative(obj, "max_completion_tokens")? {
        Some(v) => Some(v),
        None => non_negative(obj, "max_tokens")?,
    };
    let n = non_negative(obj, "n")?.unwrap_or(1).max(1);
    Ok(limit.map(|l| l.saturating_mul(n)))
}

fn non_negative(
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, TokenError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            // 100.0 is an integer written as a float; accept it.
            None => match v.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => {
                    Ok(Some(f as u64))
                }
                _ => Err(TokenError::InvalidRequestField {
                    field,
                    value: v.to_string(),
                }),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t() -> &'static ModelTable {
        ModelTable::bundled()
    }

    #[test]
    fn cookbook_overhead() {
        let req = json!({"messages": [{"role": "user", "content": "hello world"}]});
        let p = count_chat(t(), "gpt-4o", &req).expect("valid");
        assert_eq!(p.prompt_tokens, 3 + 1 + 2 + 3);
        assert_eq!(p.completion_allowance, None);
        assert!(p.exact);
        let named =
            json!({"messages": [{"role": "user", "name": "bob", "content": "hello world"}]});
        let q = count_chat(t(), "gpt-4o", &named).expect("valid");
        assert_eq!(q.prompt_tokens, p.prompt_tokens + 1 + 1);
    }

    #[test]
    fn empty_messages_is_reply_priming_only() {
        let p = count_chat(t(), "gpt-4o", &json!({"messages": []})).expect("valid");
        assert_eq!(p.prompt_tokens, REPLY_PRIMING_TOKENS);
    }

    #[test]
    fn model_argument_wins_over_request() {
        let req = json!({"model": "qwen-max", "messages": [{"role": "user", "content": "hi"}]});
        assert!(count_chat(t(), "gpt-4o", &req).expect("valid").exact);
        assert!(!count_chat(t(), "", &req).expect("valid").exact);
        let no_model = json!({"messages": []});
        assert!(!count_chat(t(), "", &no_model).expect("valid").exact);
    }

    #[test]
    fn images_and_parts() {
        let req = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "x", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "x"}},
        ]}]});
        let p = count_chat(t(), "gpt-4o", &req).expect("valid");
        assert_eq!(p.prompt_tokens, 3 + 1 + 85 + 765 + 765 + 3);
    }

    #[test]
    fn tools_and_tool_calls_are_counted() {
        let base = json!({"messages": [{"role": "assistant", "content": null}]});
        let with_calls = json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
        ]}]});
        let with_tools = json!({"messages": [{"role": "assistant", "content": null}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]});
        let b = count_chat(t(), "gpt-4o", &base)
            .expect("valid")
            .prompt_tokens;
        assert!(
            count_chat(t(), "gpt-4o", &with_calls)
                .expect("valid")
                .prompt_tokens
                > b + 5
        );
        assert!(
            count_chat(t(), "gpt-4o", &with_tools)
                .expect("valid")
                .prompt_tokens
                > b + 5
        );
        let legacy = json!({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]});
        assert!(
            count_chat(t(), "gpt-4o", &legacy)
                .expect("valid")
                .prompt_tokens
                > 3 + 1 + 3
        );
    }

    #[test]
    fn odd_but_valid_shapes_do_not_fail() {
        let req = json!({"messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]},
            {"role": "user", "content": [{"type": "text"}, "bare string", 7]},
            {"role": "assistant", "tool_calls": [{"function": {"name": 3}}, 5, {}]},
            {"role": "assistant", "tool_calls": "not an array"},
            {},
        ]});
        let p = count_chat(t(), "gpt-4o", &req).expect("valid");
        assert!(p.prompt_tokens > 5 * 3);
    }

    #[test]
    fn completion_allowance_rules() {
        let a = |v: Value| count_chat(t(), "gpt-4o", &v).map(|p| p.completion_allowance);
        assert_eq!(a(json!({"messages": [], "max_tokens": 50})), Ok(Some(50)));
        assert_eq!(
            a(json!({"messages": [], "max_tokens": 50, "max_completion_tokens": 70})),
            Ok(Some(70))
        );
        assert_eq!(
            a(json!({"messages": [], "max_completion_tokens": null, "max_tokens": 5})),
            Ok(Some(5))
        );
        assert_eq!(
            a(json!({"messages": [], "max_tokens": 100.0})),
            Ok(Some(100))
        );
        assert_eq!(
            a(json!({"messages": [], "max_tokens": 10, "n": 3})),
            Ok(Some(30))
        );
        assert_eq!(a(json!({"messages": [], "n": 3})), Ok(None));
        for bad in [json!(-1), json!(1.5), json!("100"), json!(true), json!([1])] {
            let err =
                a(json!({"messages": [], "max_tokens": bad})).expect_err("invalid max_tokens");
            assert!(
                err.to_string()
                    .contains("\"max_tokens\" must be a non-negative integer"),
                "{err}"
            );
        }
        let err = a(json!({"messages": [], "max_completion_tokens": -5})).expect_err("negative");
        assert!(matches!(
            err,
            TokenError::InvalidRequestField {
                field: "max_completion_tokens",
                ..
            }
        ));
    }

    #[test]
    fn invalid_shapes_are_errors_that_say_what_to_do() {
        let e = count_chat(t(), "gpt-4o", &json!([1, 2])).expect_err("array body");
        assert_eq!(e, TokenError::RequestNotObject { found: "an array" });
        let e = count_chat(t(), "gpt-4o", &json!({"model": "gpt-4o"})).expect_err("no messages");
        assert_eq!(e, TokenError::MissingMessages);
        assert!(e.to_string().contains("add \"messages\""));
        let e = count_chat(t(), "gpt-4o", &json!({"messages": "hi"})).expect_err("string");
        assert_eq!(e, TokenError::MessagesNotArray { found: "a string" });
        let e = count_chat(
            t(),
            "gpt-4o",
            &json!({"messages": [{"role": "user"}, "hi"]}),
        )
        .expect_err("string message");
        assert_eq!(
            e,
            TokenError::MessageNotObject {
                index: 1,
                found: "a string"
            }
        );
        assert!(e.to_string().contains("messages[1]"));
    }

    #[test]
    fn huge_request() {
        let long = "word ".repeat(200_000);
        let req = json!({"messages": [{"role": "user", "content": long}]});
        let p = count_chat(t(), "gpt-4o-mini", &req).expect("valid");
        assert!(p.prompt_tokens >= 200_000);
    }

    #[test]
    fn count_text_exact_and_estimated() {
        let c = count_text(t(), "gpt-4", "今天天气很好，我们一起去公园散步吧。");
        assert_eq!(
            c,
            TokenCount {
                tokens: 22,
                exact: true,
                encoding: Some(Encoding::Cl100kBase)
            }
        );
        let e = count_text(t(), "unknown-model", "");
        assert_eq!(
            e,
            TokenCount {
                tokens: 0,
                exact: false,
                encoding: None
            }
        );
    }
}
