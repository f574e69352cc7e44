//! The decide API: admit a call, let the host send it, settle what happened. [`Permit`] holds
//! the admitted call's capacity until `settle` (or `release`, or garbage collection, which give
//! it back as if the call was not sent).

use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use serde::Serialize;
use tollgate::retry::Failure;
use tollgate::tokens::Usage;
use tollgate::{Call, Decision, Engine, Outcome, Prompt, Verdict};

use crate::error::{ErrorInfo, SettlementJson, TargetJson, target_json};

/// A call to admit, owned (it may move into a task).
#[derive(Debug, Clone, Default)]
pub struct CallArgs {
    /// Model name.
    pub model: String,
    /// Calling tenant.
    pub tenant: String,
    /// Upstream.
    pub upstream: String,
    /// Pool key id.
    pub key: String,
    /// Route.
    pub route: String,
    /// Queue priority.
    pub priority: i16,
    /// Prompt tokens counted by the host.
    pub prompt_tokens: Option<u64>,
    /// Prompt text to count.
    pub prompt: Option<String>,
    /// The request body to count.
    pub request: Option<serde_json::Value>,
    /// Completion allowance.
    pub max_tokens: Option<u64>,
    /// Time the whole call may take.
    pub deadline: Option<Duration>,
    /// The state of a retry.
    pub attempt: Option<tollgate::Attempt>,
}

impl CallArgs {
    /// The borrowed `Call` of these arguments.
    pub fn call(&self) -> Call<'_> {
        let prompt = match (&self.prompt_tokens, &self.prompt, &self.request) {
            (Some(n), _, _) => Prompt::Tokens(*n),
            (None, Some(text), _) => Prompt::Text(text),
            (None, None, Some(body)) => Prompt::Request(body),
            (None, None, None) => Prompt::Tokens(0),
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
        if let Some(d) = self.deadline {
            call = call.deadline(d);
        }
        if let Some(a) = &self.attempt {
            call = call.attempt(a);
        }
        call
    }
}

/// Capacity held by an admitted call.
#[pyclass(frozen, module = "tollgate._native")]
pub struct Permit {
    inner: Mutex<Option<tollgate::Permit>>,
}

impl Permit {
    /// Wraps an admitted permit.
    pub fn new(p: tollgate::Permit) -> Permit {
        Permit {
            inner: Mutex::new(Some(p)),
        }
    }

    /// Takes the permit out to settle it.
    pub fn take(&self) -> Option<tollgate::Permit> {
        self.inner.lock().take()
    }

    /// Puts back a permit whose settlement was refused (a bad outcome).
    pub fn put_back(&self, p: tollgate::Permit) {
        *self.inner.lock() = Some(p);
    }
}

/// What a permit holds, as JSON.
#[derive(Serialize)]
struct PermitInfo {
    budgets: Vec<(String, String)>,
    target: Option<TargetJson>,
    attempt: u32,
    prompt_tokens: u64,
    completion_allowance: u64,
    reserved_tokens: u64,
    exact_prompt: bool,
    estimated_cost: f64,
}

#[pymethods]
impl Permit {
    /// Gives the capacity back as if the call was not sent; False when already settled or
    /// released.
    fn release(&self) -> bool {
        self.inner.lock().take().is_some()
    }

    /// True once settled or released.
    #[getter]
    fn settled(&self) -> bool {
        self.inner.lock().is_none()
    }

    /// What the permit holds (JSON), or None once settled or released.
    fn info(&self) -> Option<String> {
        self.inner.lock().as_ref().map(|p| {
            let info = PermitInfo {
                budgets: p
                    .budgets()
                    .map(|(b, k)| (b.to_owned(), k.to_owned()))
                    .collect(),
                target: p.target().map(target_json),
                attempt: p.attempt_number(),
                prompt_tokens: p.prompt_tokens(),
                completion_allowance: p.completion_allowance(),
                reserved_tokens: p.reserved_tokens(),
                exact_prompt: p.exact_prompt(),
                estimated_cost: p.estimated_cost(),
            };
            serde_json::to_string(&info).unwrap_or_else(|_| "{}".to_owned())
        })
    }
}

/// The state a retry carries (from a `retry` verdict); pass it back to `admit`.
#[pyclass(frozen, module = "tollgate._native")]
pub struct Attempt {
    /// The state.
    pub inner: tollgate::Attempt,
}

#[pymethods]
impl Attempt {
    /// The number of the attempt this state is for (2 for the first retry).
    #[getter]
    fn number(&self) -> u32 {
        self.inner.number()
    }
}

/// A decision as Python gets it.
pub enum DecisionOut {
    /// Admitted.
    Go(Permit),
    /// Ask again after `after` s: budget, key, limit.
    Wait(f64, String, String, Option<String>),
    /// Refused.
    Deny(Box<ErrorInfo>),
}

impl DecisionOut {
    /// `("go", permit)`, `("wait", (after, budget, key, limit))` or `("deny", error_json)`.
    pub fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            DecisionOut::Go(p) => ("go", Py::new(py, p)?).into_pyobject(py)?.into_any(),
            DecisionOut::Wait(a, b, k, l) => ("wait", (a, b, k, l)).into_pyobject(py)?.into_any(),
            DecisionOut::Deny(e) => ("deny", e.to_json()).into_pyobject(py)?.into_any(),
        }
        .unbind())
    }
}

impl From<Decision> for DecisionOut {
    fn from(d: Decision) -> DecisionOut {
        match d {
            Decision::Go(p) => DecisionOut::Go(Permit::new(p)),
            Decision::Wait(h) => DecisionOut::Wait(
                h.after.as_secs_f64(),
                h.budget.to_string(),
                h.key.to_string(),
                h.limit.map(|l| l.as_str().to_owned()),
            ),
            Decision::Deny(d) => DecisionOut::Deny(Box::new(ErrorInfo::denial(&d))),
        }
    }
}

/// Admits or denies at once.
pub fn admit(engine: &Engine, args: &CallArgs) -> DecisionOut {
    engine.admit(&args.call()).into()
}

/// As [`admit`], without blocking a thread on budgets kept in Redis.
pub async fn admit_async(engine: Engine, args: CallArgs) -> DecisionOut {
    engine.admit_async(&args.call()).await.into()
}

/// Admits, waiting in the budgets' queues as long as the policy allows.
pub async fn acquire(engine: Engine, args: CallArgs) -> Result<tollgate::Permit, Box<ErrorInfo>> {
    let waiter = engine
        .waiter(&args.call())
        .map_err(|d| Box::new(ErrorInfo::denial(&d)))?;
    waiter
        .wait()
        .await
        .map_err(|d| Box::new(ErrorInfo::denial(&d)))
}

/// What happened to an admitted call, owned.
#[derive(Debug, Default)]
pub struct OutcomeArgs {
    /// HTTP status.
    pub status: Option<u16>,
    /// Usage JSON (OpenAI's `usage` object or a response body).
    pub usage: Option<String>,
    /// Latency in seconds.
    pub latency: Option<f64>,
    /// Failure code (`status_503`, `timeout`, ...).
    pub failure: Option<String>,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Whether content reached the caller.
    pub content_delivered: bool,
    /// False when the request never left the host.
    pub sent: bool,
}

/// A verdict as JSON: `{"kind", "settlement", "after", "target", "error"}`, plus the retry's
/// attempt state.
#[derive(Serialize)]
struct VerdictJson {
    kind: &'static str,
    settlement: SettlementJson,
    after: Option<f64>,
    target: Option<TargetJson>,
    error: Option<ErrorInfo>,
}

/// Settles `permit` with `outcome`: the verdict's JSON, and the attempt state of a retry.
pub fn settle(
    engine: &Engine,
    permit: tollgate::Permit,
    o: &OutcomeArgs,
) -> Result<(String, Option<Attempt>), (tollgate::Permit, Box<ErrorInfo>)> {
    let usage = match o.usage.as_deref() {
        None => None,
        Some(text) => {
            let value: serde_json::Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    return Err((
                        permit,
                        Box::new(ErrorInfo::new(
                            "invalid_request",
                            format!("usage is not JSON: {e}"),
                        )),
                    ));
                }
            };
            match Usage::from_response(&value) {
                Ok(u) => u,
                Err(e) => {
                    return Err((
                        permit,
                        Box::new(ErrorInfo::new("invalid_request", format!("usage: {e}"))),
                    ));
                }
            }
        }
    };
    let failure = match o.failure.as_deref() {
        None => None,
        Some(code) => match Failure::from_code(code) {
            Some(f) => Some(f),
            None => {
                return Err((
                    permit,
                    Box::new(ErrorInfo::new(
                        "invalid_request",
                        format!(
                            "failure '{code}' is not a failure code (status_503, timeout_first_byte, connect_refused, reset, timeout, ...)"
                        ),
                    )),
                ));
            }
        },
    };
    let headers: Vec<(&str, &[u8])> = o
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let outcome = Outcome {
        sent: o.sent,
        status: o.status,
        usage,
        latency: o
            .latency
            .filter(|l| l.is_finite() && *l >= 0.0)
            .map(Duration::from_secs_f64),
        failure,
        headers: &headers,
        content_delivered: o.content_delivered,
        ..Outcome::default()
    };
    let verdict = engine.settle(permit, &outcome);
    let (json, attempt) = match verdict {
        Verdict::Done(s) => (
            VerdictJson {
                kind: "done",
                settlement: SettlementJson::from(&s),
                after: None,
                target: None,
                error: None,
            },
            None,
        ),
        Verdict::Retry {
            after,
            target,
            attempt,
            settlement,
        } => (
            VerdictJson {
                kind: "retry",
                settlement: SettlementJson::from(&settlement),
                after: Some(after.as_secs_f64()),
                target: target.as_ref().map(target_json),
                error: None,
            },
            Some(Attempt { inner: *attempt }),
        ),
        Verdict::GiveUp { reason, settlement } => (
            VerdictJson {
                kind: "give_up",
                settlement: SettlementJson::from(&settlement),
                after: None,
                target: None,
                error: Some(ErrorInfo::give_up(&reason, o.status, None)),
            },
            None,
        ),
        // A verdict this binding does not know yet: reported as done with its settlement.
        other => (
            VerdictJson {
                kind: "done",
                settlement: SettlementJson::from(other.settlement()),
                after: None,
                target: None,
                error: None,
            },
            None,
        ),
    };
    Ok((
        serde_json::to_string(&json).unwrap_or_else(|_| "{}".to_owned()),
        attempt,
    ))
}
