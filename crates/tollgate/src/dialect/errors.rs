//! What an upstream's error means for a retry, whatever the dialect.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

/// What an upstream's error says a retry can achieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Nothing more than the HTTP status says: `retry_on` and `x-should-retry` decide.
    ByStatus,
    /// A request-rate or concurrency limit: back off and retry (as a 429).
    RateLimited,
    /// A tokens-per-minute limit: back off and retry (as a 429).
    TokenLimited,
    /// A passing failure of the upstream: retried as `retry_on` says for its status.
    Transient,
    /// The account or key has no quota or credit left: never retried on that key; a key pool
    /// moves to its next key and the key is held.
    QuotaExhausted {
        /// A daily limit: the key is held until the next day (00:00 in China, UTC+8, where the
        /// providers that send it count their days), not for `key_quarantine`.
        daily: bool,
    },
    /// The request is at fault (bad parameter, prompt too long): never retried.
    InvalidRequest,
    /// The access token expired: renew it (a new OAuth2 token, a new JWT) and replay once.
    AuthExpired,
    /// The credentials or their permissions were refused: like a 401 / 403.
    Refused,
    /// An error code tollgate does not know: surfaced with its code and message, not retried.
    Unknown,
}

impl ErrorClass {
    /// A stable name: `by_status`, `rate_limited`, `token_limited`, `transient`,
    /// `quota_exhausted`, `invalid_request`, `auth_expired`, `refused`, `unknown`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::ByStatus => "by_status",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::TokenLimited => "token_limited",
            ErrorClass::Transient => "transient",
            ErrorClass::QuotaExhausted { .. } => "quota_exhausted",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::AuthExpired => "auth_expired",
            ErrorClass::Refused => "refused",
            ErrorClass::Unknown => "unknown",
        }
    }

    /// Whether a retry (on the same key) can succeed at all: `None` leaves it to the status,
    /// `retry_on` and `x-should-retry`.
    pub fn retryable(self) -> Option<bool> {
        match self {
            ErrorClass::ByStatus
            | ErrorClass::RateLimited
            | ErrorClass::TokenLimited
            | ErrorClass::Transient => None,
            ErrorClass::QuotaExhausted { .. }
            | ErrorClass::InvalidRequest
            | ErrorClass::AuthExpired
            | ErrorClass::Refused
            | ErrorClass::Unknown => Some(false),
        }
    }

    /// Whether the key (not the request) is at fault, so a key pool moves to its next key.
    pub fn key_at_fault(self) -> bool {
        matches!(
            self,
            ErrorClass::QuotaExhausted { .. } | ErrorClass::AuthExpired | ErrorClass::Refused
        )
    }
}

/// An upstream's error, read from its body or headers, in any dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// What it means for a retry.
    pub class: ErrorClass,
    /// The status the caller sees (the upstream's, or the one a 200-body error stands for).
    pub status: u16,
    /// The provider's own code (`insufficient_quota`, `1113`, `18`, ...), empty when none.
    pub code: String,
    /// The provider's message.
    pub message: String,
}

impl ProviderError {
    /// An error of `class` seen with `status`.
    pub fn new(
        class: ErrorClass,
        status: u16,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> ProviderError {
        ProviderError {
            class,
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The OpenAI-shaped error body a caller gets for it:
    /// `{"error": {"message", "type", "param": null, "code"}}`, `type` being the class.
    pub fn openai_body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.class.code(),
                "param": Value::Null,
                "code": self.code,
            }
        });
        Bytes::from(body.to_string())
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (true, true) => write!(f, "{}", self.class.code()),
            (true, false) => write!(f, "{} ({})", self.message, self.class.code()),
            (false, true) => write!(f, "error {} ({})", self.code, self.class.code()),
            (false, false) => write!(
                f,
                "error {}: {} ({})",
                self.code,
                self.message,
                self.class.code()
            ),
        }
    }
}

/// Reads an error body of an OpenAI-compatible upstream (OpenAI, Azure, DeepSeek, Zhipu,
/// SiliconFlow, vLLM): `None` when it is not an error body tollgate can read.
///
/// - OpenAI `{"error": {"type" | "code": "insufficient_quota" | "billing_hard_limit_reached"}}`,
///   Qianfan v2's `account_overdue`, and any error body with status 402 (DeepSeek's
///   "Insufficient Balance") → [`ErrorClass::QuotaExhausted`];
/// - Zhipu `{"error": {"code": "1113", ...}}`: 1113 (arrears) and 1304 (the day's calls, daily)
///   → quota; 1302 (concurrency), 1303 (frequency), 1305 (overloaded) → [`ErrorClass::RateLimited`];
///   1003 / 1004 (token expired) → [`ErrorClass::AuthExpired`];
/// - SiliconFlow `{"code": 20015, "message": ...}` and any other `{"error": {"message"}}`:
///   surfaced, classified by status ([`ErrorClass::ByStatus`]).
///
/// ```
/// use tollgate::dialect::{ErrorClass, classify_openai_error};
/// let body = br#"{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}"#;
/// let e = classify_openai_error(429, body).unwrap();
/// assert_eq!(e.class, ErrorClass::QuotaExhausted { daily: false });
/// assert_eq!(classify_openai_error(429, br#"{"error": {"code": "1302", "message": "busy"}}"#).unwrap().class, ErrorClass::RateLimited);
/// assert!(classify_openai_error(500, b"<html>").is_none());
/// ```
pub fn classify_openai_error(status: u16, body: &[u8]) -> Option<ProviderError> {
    if body.is_empty() || body.len() > 1 << 20 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        let code = text(e.get("code")).unwrap_or_default();
        let kind = text(e.get("type")).unwrap_or_default();
        let message = text(e.get("message")).unwrap_or_default();
        let quota = |s: &str| {
            matches!(
                s,
                "insufficient_quota"
                    | "billing_hard_limit_reached"
                    | "insufficient_balance"
                    | "account_overdue"
            )
        };
        // 402 Payment Required: DeepSeek's "Insufficient Balance".
        let class = if status == 402 || quota(&code) || quota(&kind) {
            ErrorClass::QuotaExhausted { daily: false }
        } else {
            zhipu_class(&code).unwrap_or(ErrorClass::ByStatus)
        };
        let code = if code.is_empty() { kind } else { code };
        return Some(ProviderError::new(class, status, code, message));
    }
    // SiliconFlow: {"code": 20015, "message": "...", "data": null}.
    let code = text(v.get("code"))?;
    let message = text(v.get("message")).unwrap_or_default();
    Some(ProviderError::new(
        ErrorClass::ByStatus,
        status,
        code,
        message,
    ))
}

/// Zhipu's codes that change what a retry can do.
fn zhipu_class(code: &str) -> Option<ErrorClass> {
    Some(match code {
        "1113" => ErrorClass::QuotaExhausted { daily: false },
        "1304" => ErrorClass::QuotaExhausted { daily: true },
        "1302" | "1303" | "1305" => ErrorClass::RateLimited,
        "1003" | "1004" => ErrorClass::AuthExpired,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: u16, body: &str) -> Option<ErrorClass> {
        classify_openai_error(status, body.as_bytes()).map(|e| e.class)
    }

    #[test]
    fn openai_quota_by_type_or_code() {
        let q = Some(ErrorClass::QuotaExhausted { daily: false });
        assert_eq!(
            class(
                429,
                r#"{"error":{"type":"insufficient_quota","code":null,"message":"m"}}"#
            ),
            q
        );
        assert_eq!(
            class(
                429,
                r#"{"error":{"type":"x","code":"billing_hard_limit_reached"}}"#
            ),
            q
        );
        assert_eq!(
            class(
                429,
                r#"{"error":{"type":"requests","code":"rate_limit_exceeded"}}"#
            ),
            Some(ErrorClass::ByStatus)
        );
    }

    #[test]
    fn zhipu_codes_as_strings_or_numbers() {
        assert_eq!(
            class(429, r#"{"error":{"code":"1113","message":"arrears"}}"#),
            Some(ErrorClass::QuotaExhausted { daily: false })
        );
        assert_eq!(
            class(429, r#"{"error":{"code":1304,"message":"day"}}"#),
            Some(ErrorClass::QuotaExhausted { daily: true })
        );
        for c in ["1302", "1303", "1305"] {
            assert_eq!(
                class(429, &format!(r#"{{"error":{{"code":"{c}"}}}}"#)),
                Some(ErrorClass::RateLimited)
            );
        }
        for c in ["1003", "1004"] {
            assert_eq!(
                class(401, &format!(r#"{{"error":{{"code":"{c}"}}}}"#)),
                Some(ErrorClass::AuthExpired)
            );
        }
        assert_eq!(
            class(400, r#"{"error":{"code":"1261","message":"too long"}}"#),
            Some(ErrorClass::ByStatus)
        );
    }

    #[test]
    fn siliconflow_bodies_are_surfaced() {
        let e = classify_openai_error(
            400,
            br#"{"code":20015,"message":"length of prompt exceeds","data":null}"#,
        )
        .unwrap();
        assert_eq!(
            (e.class, e.code.as_str(), e.status),
            (ErrorClass::ByStatus, "20015", 400)
        );
        assert_eq!(e.message, "length of prompt exceeds");
        assert!(e.to_string().contains("20015"), "{e}");
    }

    #[test]
    fn anything_else_is_not_read() {
        for body in [
            "",
            "not json",
            "[1]",
            "{}",
            r#"{"error":"text"}"#,
            r#"{"message":"no code"}"#,
        ] {
            assert_eq!(class(500, body), None, "{body}");
        }
    }

    #[test]
    fn the_openai_body_carries_code_and_message() {
        let e = ProviderError::new(
            ErrorClass::RateLimited,
            429,
            "18",
            "Open api qps request limit reached",
        );
        let v: Value = serde_json::from_slice(&e.openai_body()).unwrap();
        assert_eq!(v["error"]["code"], "18");
        assert_eq!(v["error"]["type"], "rate_limited");
        assert_eq!(v["error"]["message"], "Open api qps request limit reached");
    }
}
