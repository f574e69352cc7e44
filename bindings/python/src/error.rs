//! Errors as they cross to Python: [`ErrorInfo`], serialised to JSON as the argument of
//! [`crate::NativeError`]. The `kind` picks the Python class, `code` is the stable code of the
//! Rust API ([`CallError::code`], the denial's or the give-up's code).

use pyo3::PyErr;
use serde::Serialize;
use tollgate::{AttemptRecord, CallError, Denial, DenyReason, GiveUp, PolicyErrors, Settlement};

/// An HTTP answer: status, headers, body.
pub type HttpAnswer = (u16, Vec<(&'static str, String)>, String);

/// What went wrong, as the Python layer reads it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorInfo {
    /// Which error class: `denied`, `gave_up`, `deadline`, `invalid_request`, `no_upstream`,
    /// `auth`, `transport`, `shared`, `stream_cut`, `policy`, `invalid_argument`, `closed`,
    /// `too_long`, `message_store`, `journal`.
    pub kind: String,
    /// The stable code: the denial reason (`budget_exhausted`, `concurrency`, ...), the
    /// give-up reason (`attempts_exhausted`, `not_retryable`, ...), else the kind.
    pub code: String,
    /// What happened, in words.
    pub message: String,
    /// The budget that decided a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Its scope key (`tenant=acme`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The exhausted limit (`requests_per_minute`, ...), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// When the same call could pass, in seconds, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<f64>,
    /// The last HTTP status of a call given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The last answer's body (the upstream's error JSON) of a call given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Every problem of a refused policy, one line each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    /// Every attempt of a call given up, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AttemptJson>>,
    /// What a cut stream was charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement: Option<SettlementJson>,
    /// Prompt tokens the system and user messages need (a conversation too long).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needed: Option<u64>,
    /// The prompt budget they exceed: `window - reserved`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_budget: Option<u64>,
    /// The context window trimmed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// Tokens reserved for the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    /// The OpenAI-compatible HTTP answer for this error (call errors only), for the httpx
    /// transports: `[status, [[name, value], ...], body]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<HttpAnswer>,
}

impl ErrorInfo {
    /// An error of `kind` whose code is the kind.
    pub fn new(kind: &str, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            kind: kind.to_owned(),
            code: kind.to_owned(),
            message: message.into(),
            ..ErrorInfo::default()
        }
    }

    /// A refusal by a budget (or an unreadable request, which no budget decided).
    pub fn denial(denial: &Denial) -> ErrorInfo {
        if let DenyReason::InvalidRequest { message } = &denial.reason {
            return ErrorInfo::new("invalid_request", format!("invalid request: {message}"));
        }
        let limit = match &denial.reason {
            DenyReason::Exhausted { limit, .. } | DenyReason::NeverFits { limit, .. } => {
                Some(limit.as_str().to_owned())
            }
            _ => None,
        };
        ErrorInfo {
            kind: "denied".into(),
            code: denial.code().into(),
            message: format!("denied: {denial}"),
            budget: denial.budget.as_deref().map(str::to_owned),
            key: denial.key.as_deref().map(str::to_owned),
            limit,
            retry_after: denial.retry_after().map(|d| d.as_secs_f64()),
            ..ErrorInfo::default()
        }
    }

    /// A call given up, with the last answer when one came.
    pub fn give_up(reason: &GiveUp, status: Option<u16>, body: Option<&[u8]>) -> ErrorInfo {
        ErrorInfo {
            kind: "gave_up".into(),
            code: reason.code.into(),
            message: reason.to_string(),
            http_status: status,
            body: body.map(|b| String::from_utf8_lossy(b).into_owned()),
            history: Some(reason.history.iter().map(AttemptJson::from).collect()),
            ..ErrorInfo::default()
        }
    }

    /// An error of the call API, with its HTTP answer.
    pub fn call(error: &CallError) -> ErrorInfo {
        let mut info = match error {
            CallError::Denied(d) => ErrorInfo::denial(d),
            CallError::GaveUp {
                reason,
                status,
                body,
            } => ErrorInfo::give_up(reason, *status, body.as_deref()),
            CallError::StreamCut { settlement, .. } => ErrorInfo {
                settlement: settlement.as_deref().map(SettlementJson::from),
                ..ErrorInfo::new("stream_cut", error.to_string())
            },
            other => ErrorInfo::new(other.code(), other.to_string()),
        };
        let a = error.error_answer();
        info.answer = Some((
            a.status,
            a.headers(),
            String::from_utf8_lossy(&a.body).into_owned(),
        ));
        info
    }

    /// A refused policy, with every problem.
    pub fn policy(errors: &PolicyErrors) -> ErrorInfo {
        ErrorInfo {
            problems: Some(errors.errors.iter().map(ToString::to_string).collect()),
            ..ErrorInfo::new("policy", errors.to_string())
        }
    }

    /// A bad argument from Python.
    pub fn invalid_argument(message: impl Into<String>) -> ErrorInfo {
        ErrorInfo::new("invalid_argument", message)
    }

    /// The payload as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"kind\":\"{}\",\"code\":\"{}\",\"message\":\"(unencodable)\"}}",
                self.kind, self.code
            )
        })
    }

    /// The exception to raise.
    pub fn into_py(self) -> PyErr {
        crate::NativeError::new_err(self.to_json())
    }
}

impl From<ErrorInfo> for PyErr {
    fn from(e: ErrorInfo) -> PyErr {
        e.into_py()
    }
}

impl From<Box<ErrorInfo>> for PyErr {
    fn from(e: Box<ErrorInfo>) -> PyErr {
        e.into_py()
    }
}

/// What a settled call was charged, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct SettlementJson {
    /// Tokens reserved at admission.
    pub reserved_tokens: u64,
    /// Tokens charged.
    pub tokens: u64,
    /// Money charged against spend budgets.
    pub spend: f64,
    /// Reported usage: `[prompt, completion, total, cached_prompt, reasoning]`.
    pub usage: Option<[u64; 5]>,
    /// Cost `[input, cached_input, output, total]`, when usage and price are known.
    pub cost: Option<[f64; 4]>,
}

/// Usage as the five numbers the Python `Usage` is built from.
pub fn usage_array(u: &tollgate::tokens::Usage) -> [u64; 5] {
    [
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        u.cached_prompt_tokens,
        u.reasoning_tokens,
    ]
}

impl From<&Settlement> for SettlementJson {
    fn from(s: &Settlement) -> SettlementJson {
        SettlementJson {
            reserved_tokens: s.reserved_tokens,
            tokens: s.tokens,
            spend: s.spend,
            usage: s.usage.as_ref().map(usage_array),
            cost: s
                .cost
                .as_ref()
                .map(|c| [c.input, c.cached_input, c.output, c.total()]),
        }
    }
}

/// Where an attempt went: `[route, upstream, model, key]`.
pub type TargetJson = [String; 4];

/// A target as JSON.
pub fn target_json(t: &tollgate::TargetRef) -> TargetJson {
    [
        t.route.to_string(),
        t.upstream.to_string(),
        t.model.to_string(),
        t.key.to_string(),
    ]
}

/// One finished attempt of a call.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptJson {
    /// 1 for the first attempt.
    pub number: u32,
    /// Where it went, when routed.
    pub target: Option<TargetJson>,
    /// How it ended (`status_503`, `timeout_first_byte`, ...).
    pub outcome: String,
    /// What was decided after it.
    pub decision: String,
}

impl From<&AttemptRecord> for AttemptJson {
    fn from(a: &AttemptRecord) -> AttemptJson {
        AttemptJson {
            number: a.number,
            target: a.target.as_ref().map(target_json),
            outcome: a.outcome.clone(),
            decision: a.decision.clone(),
        }
    }
}
