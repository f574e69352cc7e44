//! Errors as they cross to JavaScript, and the plain objects shared by several parts of the
//! surface (usage, settlement, target, attempt records).
//!
//! A failed native call throws (or rejects with) an `Error` whose message is the JSON of an
//! [`ErrorInfo`]; `index.js` parses it and throws the matching `TollgateError` subclass. The
//! `kind` picks the class, `code` is the stable code of the Rust API: [`CallError::code`], the
//! denial's [`tollgate::DenyReason::code`] or the give-up's [`tollgate::GiveUp`] code.

use napi_derive::napi;
use serde::Serialize;
use tollgate::tokens::{Cost, Usage};
use tollgate::{
    AttemptRecord, CallError, Denial, DenyReason, GiveUp, PolicyErrors, Settlement, TargetRef,
};

/// What went wrong, as `index.js` reads it.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    /// Which error class: `denied`, `gave_up`, `deadline`, `invalid_request`, `no_upstream`,
    /// `auth`, `transport`, `shared`, `stream_cut`, `policy`, `aborted`, `invalid_argument`,
    /// `too_long`, `message_store`.
    pub kind: String,
    /// The stable code: the denial reason (`budget_exhausted`, `concurrency`, ...), the give-up
    /// reason (`attempts_exhausted`, `not_retryable`, ...), else the kind.
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
    /// When the same call could pass, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<f64>,
    /// The last HTTP status of a call given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// The last answer's body (the upstream's error JSON) of a call given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Every problem of a refused policy, one line each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    /// Every attempt of a call given up, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AttemptRecordJs>>,
    /// What a cut stream was charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement: Option<SettlementJs>,
    /// A conversation too long for its window (`too_long`): prompt tokens the system and user
    /// messages alone need.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needed: Option<f64>,
    /// ... and the prompt budget they exceed (`window - reserved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_budget: Option<f64>,
    /// ... the context window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<f64>,
    /// ... the tokens reserved for the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<f64>,
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
            retry_after_ms: denial.retry_after().map(|d| d.as_secs_f64() * 1e3),
            ..ErrorInfo::default()
        }
    }

    /// A call given up, with the last answer when one came.
    pub fn give_up(reason: &GiveUp, status: Option<u16>, body: Option<&[u8]>) -> ErrorInfo {
        ErrorInfo {
            kind: "gave_up".into(),
            code: reason.code.into(),
            message: reason.to_string(),
            http_status: status.map(u32::from),
            body: body.map(|b| String::from_utf8_lossy(b).into_owned()),
            history: Some(reason.history.iter().map(AttemptRecordJs::from).collect()),
            ..ErrorInfo::default()
        }
    }

    /// An error of the call API.
    pub fn call(error: &CallError) -> ErrorInfo {
        match error {
            CallError::Denied(d) => ErrorInfo::denial(d),
            CallError::GaveUp {
                reason,
                status,
                body,
            } => ErrorInfo::give_up(reason, *status, body.as_deref()),
            CallError::StreamCut { settlement, .. } => ErrorInfo {
                settlement: settlement.as_deref().map(SettlementJs::from),
                ..ErrorInfo::new("stream_cut", error.to_string())
            },
            other => ErrorInfo::new(other.code(), other.to_string()),
        }
    }

    /// A refused policy, with every problem.
    pub fn policy(errors: &PolicyErrors) -> ErrorInfo {
        ErrorInfo {
            problems: Some(errors.errors.iter().map(ToString::to_string).collect()),
            ..ErrorInfo::new("policy", errors.to_string())
        }
    }

    /// A call cancelled through its `AbortSignal`.
    pub fn aborted() -> ErrorInfo {
        ErrorInfo::new("aborted", "the call was aborted")
    }

    /// A bad argument from JavaScript.
    pub fn invalid_argument(message: impl Into<String>) -> ErrorInfo {
        ErrorInfo::new("invalid_argument", message)
    }

    /// The error to throw: its message is this payload as JSON.
    pub fn into_napi(self) -> napi::Error {
        let json = serde_json::to_string(&self).unwrap_or_else(|_| {
            format!(
                "{{\"kind\":\"{}\",\"code\":\"{}\",\"message\":\"(unencodable)\"}}",
                self.kind, self.code
            )
        });
        napi::Error::new(napi::Status::GenericFailure, json)
    }
}

impl From<ErrorInfo> for napi::Error {
    fn from(e: ErrorInfo) -> napi::Error {
        e.into_napi()
    }
}

/// Token usage as JavaScript sees it.
#[napi(object)]
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageJs {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: f64,
    /// Completion tokens, reasoning tokens included.
    pub completion_tokens: f64,
    /// Total tokens.
    pub total_tokens: f64,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_prompt_tokens: f64,
    /// Hidden reasoning tokens.
    pub reasoning_tokens: f64,
}

impl From<&Usage> for UsageJs {
    fn from(u: &Usage) -> UsageJs {
        UsageJs {
            prompt_tokens: u.prompt_tokens as f64,
            completion_tokens: u.completion_tokens as f64,
            total_tokens: u.total_tokens as f64,
            cached_prompt_tokens: u.cached_prompt_tokens as f64,
            reasoning_tokens: u.reasoning_tokens as f64,
        }
    }
}

/// A cost split by kind.
#[napi(object)]
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CostJs {
    /// Uncached prompt tokens × input price.
    pub input: f64,
    /// Cached prompt tokens × cached-input price.
    pub cached_input: f64,
    /// Completion tokens × output price.
    pub output: f64,
    /// The sum.
    pub total: f64,
}

impl From<&Cost> for CostJs {
    fn from(c: &Cost) -> CostJs {
        CostJs {
            input: c.input,
            cached_input: c.cached_input,
            output: c.output,
            total: c.total(),
        }
    }
}

/// What a settled call was charged.
#[napi(object)]
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementJs {
    /// Tokens reserved at admission.
    pub reserved_tokens: f64,
    /// Tokens charged.
    pub tokens: f64,
    /// Money charged against spend budgets.
    pub spend: f64,
    /// Reported usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageJs>,
    /// Cost split by kind, when usage and price are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostJs>,
}

impl From<&Settlement> for SettlementJs {
    fn from(s: &Settlement) -> SettlementJs {
        SettlementJs {
            reserved_tokens: s.reserved_tokens as f64,
            tokens: s.tokens as f64,
            spend: s.spend,
            usage: s.usage.as_ref().map(UsageJs::from),
            cost: s.cost.as_ref().map(CostJs::from),
        }
    }
}

/// Where an attempt went.
#[napi(object)]
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetJs {
    /// The route that chose it.
    pub route: String,
    /// Upstream name.
    pub upstream: String,
    /// Model sent.
    pub model: String,
    /// Pool key id (never the secret).
    pub key: String,
}

impl From<&TargetRef> for TargetJs {
    fn from(t: &TargetRef) -> TargetJs {
        TargetJs {
            route: t.route.to_string(),
            upstream: t.upstream.to_string(),
            model: t.model.to_string(),
            key: t.key.to_string(),
        }
    }
}

/// One finished attempt of a call.
#[napi(object)]
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttemptRecordJs {
    /// 1 for the first attempt.
    pub number: u32,
    /// Where it went, when routed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetJs>,
    /// How it ended (`status_503`, `timeout_first_byte`, ...).
    pub outcome: String,
    /// What was decided after it.
    pub decision: String,
}

impl From<&AttemptRecord> for AttemptRecordJs {
    fn from(a: &AttemptRecord) -> AttemptRecordJs {
        AttemptRecordJs {
            number: a.number,
            target: a.target.as_ref().map(TargetJs::from),
            outcome: a.outcome.clone(),
            decision: a.decision.clone(),
        }
    }
}
