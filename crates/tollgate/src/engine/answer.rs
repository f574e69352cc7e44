//! A failed call as an OpenAI-compatible HTTP answer: what `tollgate serve` sends its clients
//! and what the bindings' HTTP-client adapters (the Python httpx transport) hand the official
//! SDKs, so both read the same statuses, error bodies and headers.

use std::time::Duration;

use serde_json::{Value, json};

use super::request::CallError;

/// The HTTP answer for a [`CallError`]: a status, an OpenAI-format error body, and the
/// `Retry-After` a denial knows. Every such answer carries `x-should-retry: false`
/// ([`ErrorAnswer::headers`]): tollgate has already waited and retried as the policy says, so
/// an SDK must not retry on its own.
///
/// ```
/// use tollgate::CallError;
/// let a = CallError::InvalidRequest("no model".into()).error_answer();
/// assert_eq!(a.status, 400);
/// assert!(a.headers().contains(&("x-should-retry", "false".to_owned())));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorAnswer {
    /// HTTP status: 429 for a budget's refusal, 503 when the budget store or every target is
    /// unavailable, the upstream's own status for a call given up with a JSON answer, 502, 504
    /// (deadline), 400 (invalid request) or 404 (no upstream) otherwise.
    pub status: u16,
    /// The JSON body: `{"error": {"message", "type", "param", "code"}}` (plus `budget` for a
    /// denial), or the upstream's own error JSON for a call given up.
    pub body: Vec<u8>,
    /// When the same call could pass (denials only).
    pub retry_after: Option<Duration>,
}

impl ErrorAnswer {
    /// The headers to send: `content-type`, `x-should-retry: false`, and for a denial that
    /// knows when room comes back `retry-after` (whole seconds, at least 1) and
    /// `retry-after-ms`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("content-type", "application/json".to_owned()),
            ("x-should-retry", "false".to_owned()),
        ];
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            out.push(("retry-after", secs.max(1).to_string()));
            out.push(("retry-after-ms", after.as_millis().to_string()));
        }
        out
    }
}

fn error_body(message: &str, kind: &str, code: &str, budget: Option<&str>) -> Vec<u8> {
    let mut body =
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    if let Some(b) = budget {
        body["error"]["budget"] = json!(b);
    }
    body.to_string().into_bytes()
}

impl CallError {
    /// This error as an OpenAI-compatible HTTP answer (see [`ErrorAnswer`]).
    pub fn error_answer(&self) -> ErrorAnswer {
        let message = self.to_string();
        let plain = |status: u16, kind: &str, code: &str| ErrorAnswer {
            status,
            body: error_body(&message, kind, code, None),
            retry_after: None,
        };
        match self {
            CallError::Denied(d) => {
                let (status, kind) = match d.code() {
                    "budget_exhausted" | "concurrency" | "wait_timeout" | "key_capacity" => {
                        (429, "rate_limit_exceeded")
                    }
                    "store_unavailable" | "unavailable" => (503, "server_error"),
                    _ => (400, "invalid_request_error"),
                };
                ErrorAnswer {
                    status,
                    body: error_body(&message, kind, d.code(), d.budget.as_deref()),
                    retry_after: d.retry_after(),
                }
            }
            CallError::GaveUp {
                status: Some(status),
                body: Some(body),
                ..
            } if serde_json::from_slice::<Value>(body).is_ok() => ErrorAnswer {
                status: *status,
                body: body.to_vec(),
                retry_after: None,
            },
            CallError::Deadline { .. } => plain(504, "server_error", "deadline"),
            CallError::InvalidRequest(_) => plain(400, "invalid_request_error", "invalid_request"),
            CallError::NoUpstream(_) => plain(404, "invalid_request_error", "model_not_found"),
            // Given up without a JSON answer, credentials, transport, a shared call, a cut
            // stream: the upstream side failed.
            other => plain(502, "server_error", other.code()),
        }
    }

    /// The data of the SSE event that tells a streaming client its stream failed after it
    /// started (an OpenAI-format error object).
    pub fn stream_error_data(&self) -> String {
        json!({"error": {"message": self.to_string(), "type": "server_error", "param": null,
            "code": self.code()}})
        .to_string()
    }
}
