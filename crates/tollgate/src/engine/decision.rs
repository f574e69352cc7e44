//! Decisions and their reasons: what `admit` and `settle` answer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::LimitKind;
use crate::retry::Failure;
use crate::tokens::{Cost, Usage};

use super::permit::Permit;
use super::route::{Attempt, AttemptRecord, TargetRef};

/// The answer to [`crate::Engine::admit`].
#[derive(Debug)]
#[must_use = "a Go decision holds capacity until its permit is settled or dropped"]
pub enum Decision {
    /// Send the call now; settle the permit afterwards.
    Go(Permit),
    /// No room now, but the policy allows waiting: ask again after `after`. Nothing is held.
    Wait(WaitHint),
    /// Do not send the call.
    Deny(Denial),
}

impl Decision {
    /// Short machine-readable name: `go`, `wait` or `deny`.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Go(_) => "go",
            Decision::Wait(_) => "wait",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Why a call should wait, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitHint {
    /// Ask again after this long.
    pub after: Duration,
    /// The budget that has no room.
    pub budget: Arc<str>,
    /// Its scope key.
    pub key: Arc<str>,
    /// The limit that is exhausted; `None` for concurrency or a queue of earlier calls.
    pub limit: Option<LimitKind>,
}

/// A refusal: which budget and key decided, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// The deciding budget, when a budget decided.
    pub budget: Option<Arc<str>>,
    /// Its scope key (empty for an unscoped budget).
    pub key: Option<Arc<str>>,
    /// Why.
    pub reason: DenyReason,
}

impl Denial {
    pub(crate) fn new(reason: DenyReason) -> Denial {
        Denial {
            budget: None,
            key: None,
            reason,
        }
    }

    pub(crate) fn by(budget: &Arc<str>, key: &Arc<str>, reason: DenyReason) -> Denial {
        Denial {
            budget: Some(Arc::clone(budget)),
            key: Some(Arc::clone(key)),
            reason,
        }
    }

    /// A stable machine-readable code, e.g. `budget_exhausted`.
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }

    /// How long until the same call could pass, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.reason {
            DenyReason::Exhausted { retry_after, .. } => Some(retry_after),
            DenyReason::Unavailable { retry_in, .. } => retry_in,
            _ => None,
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DenyReason {
    /// The limit has no room within the time the policy lets a call wait.
    Exhausted {
        /// The exhausted limit.
        limit: LimitKind,
        /// When the call would fit.
        retry_after: Duration,
    },
    /// The call costs more than the limit's burst: it can never be admitted.
    NeverFits {
        /// The limit.
        limit: LimitKind,
        /// The call's cost in the limit's unit.
        cost: f64,
        /// The limit's burst.
        burst: f64,
    },
    /// Every concurrency slot is taken and the policy does not wait.
    Concurrency {
        /// The budget's concurrency.
        max: u32,
    },
    /// The call waited as long as the policy allows.
    WaitedTooLong {
        /// How long it waited.
        waited: Duration,
    },
    /// The budget keeps state for `capacity` keys, all in use; a new key cannot be tracked.
    KeyCapacity {
        /// The key capacity.
        capacity: usize,
    },
    /// A spend budget matches, but the model has no price.
    UnknownPrice {
        /// The model.
        model: String,
    },
    /// Prompt plus completion allowance exceed the model's context window.
    ContextWindow {
        /// The model.
        model: String,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Completion allowance asked for (0 when none was asked for and the prompt alone is too long).
        completion_tokens: u64,
        /// The model's context window.
        context_window: u64,
    },
    /// The request could not be read (e.g. a chat body without `messages`).
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// Every target of the route was passed over (open circuits, quarantined keys, server
    /// rate-limit headers).
    Unavailable {
        /// The route.
        route: String,
        /// Why each target was passed over.
        detail: String,
        /// When the first passed-over target may take calls again (its circuit's open time or
        /// the server's rate-limit reset), when known.
        retry_in: Option<Duration>,
    },
    /// A budget kept in a shared store (Redis) could not be checked in time, and the policy says
    /// `on_failure = "fail_closed"`.
    StoreUnavailable {
        /// The store (`redis`).
        store: &'static str,
        /// What went wrong (down, timed out, refused a command), without credentials.
        detail: String,
    },
}

impl DenyReason {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::Exhausted { .. } => "budget_exhausted",
            DenyReason::NeverFits { .. } => "never_fits",
            DenyReason::Concurrency { .. } => "concurrency",
            DenyReason::WaitedTooLong { .. } => "wait_timeout",
            DenyReason::KeyCapacity { .. } => "key_capacity",
            DenyReason::UnknownPrice { .. } => "unknown_price",
            DenyReason::ContextWindow { .. } => "context_window",
            DenyReason::InvalidRequest { .. } => "invalid_request",
            DenyReason::Unavailable { .. } => "unavailable",
            DenyReason::StoreUnavailable { .. } => "store_unavailable",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::Exhausted { limit, retry_after } => write!(
                f,
                "{} exhausted; room again in {} ms",
                limit.as_str(),
                retry_after.as_millis()
            ),
            DenyReason::NeverFits { limit, cost, burst } => write!(
                f,
                "call costs {cost} against {} but its burst is {burst}: it can never fit; \
                 raise the burst or split the call",
                limit.as_str()
            ),
            DenyReason::Concurrency { max } => write!(f, "all {max} concurrency slots are taken"),
            DenyReason::WaitedTooLong { waited } => {
                write!(
                    f,
                    "waited {} ms, the most the policy allows",
                    waited.as_millis()
                )
            }
            DenyReason::KeyCapacity { capacity } => write!(
                f,
                "all {capacity} tracked keys are busy; raise key_capacity to track more"
            ),
            DenyReason::UnknownPrice { model } => write!(
                f,
                "a spend budget applies but model '{model}' has no price; add it under [prices]"
            ),
            DenyReason::ContextWindow {
                model,
                prompt_tokens,
                completion_tokens,
                context_window,
            } => {
                write!(
                    f,
                    "prompt of {prompt_tokens} tokens plus {completion_tokens} completion tokens \
                     exceeds the {context_window}-token context window of '{model}'"
                )
            }
            DenyReason::InvalidRequest { message } => write!(f, "invalid request: {message}"),
            DenyReason::Unavailable { route, detail, .. } => {
                write!(
                    f,
                    "no target of route '{route}' can take the call now: {detail}"
                )
            }
            DenyReason::StoreUnavailable { store, detail } => write!(
                f,
                "the shared budget store ({store}) is unavailable and the policy says \
                 on_failure = \"fail_closed\": {detail}"
            ),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.budget, &self.key) {
            (Some(b), Some(k)) if !k.is_empty() => write!(f, "budget '{b}' [{k}]: {}", self.reason),
            (Some(b), _) => write!(f, "budget '{b}': {}", self.reason),
            _ => fmt::Display::fmt(&self.reason, f),
        }
    }
}

impl std::error::Error for Denial {}

/// What happened to an admitted call; given to [`crate::Engine::settle`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome<'a> {
    /// Whether the request left the host (false: refund everything, the request included).
    pub sent: bool,
    /// HTTP status, when a response head arrived.
    pub status: Option<u16>,
    /// Usage the response reported.
    pub usage: Option<Usage>,
    /// Time from send to the end of the response.
    pub latency: Option<Duration>,
    /// A transport-level failure (connect, timeout, malformed body, cut stream), when one ended
    /// the attempt.
    pub failure: Option<Failure>,
    /// Response headers as (name, raw value): `Retry-After`, `retry-after-ms`,
    /// `x-ratelimit-*` and `x-should-retry` are read.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Whether any content already reached the caller (a stream): then the call is never retried.
    pub content_delivered: bool,
}

impl<'a> Outcome<'a> {
    /// A response with its reported usage (status 200).
    pub fn ok(usage: Usage) -> Outcome<'a> {
        Outcome {
            sent: true,
            status: Some(200),
            usage: Some(usage),
            ..Outcome::default()
        }
    }

    /// A response with a status and no usage (providers do not bill failed requests, so the
    /// token and spend reservations are refunded when `status >= 400`).
    pub fn status(status: u16) -> Outcome<'a> {
        Outcome {
            sent: true,
            status: Some(status),
            ..Outcome::default()
        }
    }

    /// The call was never sent.
    pub fn not_sent() -> Outcome<'a> {
        Outcome::default()
    }

    /// Sent, but what came back is unknown: the reservation is kept and no retry is offered.
    pub fn unknown() -> Outcome<'a> {
        Outcome {
            sent: true,
            ..Outcome::default()
        }
    }

    /// Sent, and a transport failure ended it: the reservation is kept (the upstream may have
    /// billed it) and the failure is classified for a retry.
    pub fn failed(failure: Failure) -> Outcome<'a> {
        Outcome {
            sent: true,
            failure: Some(failure),
            ..Outcome::default()
        }
    }

    /// Sets the latency.
    pub fn with_latency(mut self, latency: Duration) -> Outcome<'a> {
        self.latency = Some(latency);
        self
    }

    /// Sets the response headers.
    pub fn with_headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Outcome<'a> {
        self.headers = headers;
        self
    }

    /// Marks that content already reached the caller.
    pub fn with_content_delivered(mut self) -> Outcome<'a> {
        self.content_delivered = true;
        self
    }

    /// What ended the attempt badly, if anything did: the transport failure, or a status that is
    /// not 2xx. `None` for success and for outcomes without an answer.
    pub fn failure_class(&self) -> Option<Failure> {
        if let Some(f) = self.failure {
            return Some(f);
        }
        match self.status {
            Some(s) if !(200..300).contains(&s) => Some(Failure::Status(s)),
            _ => None,
        }
    }
}

/// The answer to [`crate::Engine::settle`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Verdict {
    /// The call is finished; here is what it was charged.
    Done(Settlement),
    /// Try again after `after`, on `target` when the engine chose one (else the same place):
    /// admit `Call::attempt(&attempt)`.
    Retry {
        /// How long to wait first.
        after: Duration,
        /// Where the next attempt should go (route, upstream, model, key).
        target: Option<TargetRef>,
        /// State to pass to the next admission, with the history so far.
        attempt: Box<Attempt>,
        /// What this attempt was charged.
        settlement: Settlement,
    },
    /// The call failed and will not be retried.
    GiveUp {
        /// Why, and the whole reason chain.
        reason: GiveUp,
        /// What this attempt was charged.
        settlement: Settlement,
    },
}

impl Verdict {
    /// The settlement, whatever the verdict.
    pub fn settlement(&self) -> &Settlement {
        match self {
            Verdict::Done(s) => s,
            Verdict::Retry { settlement, .. } | Verdict::GiveUp { settlement, .. } => settlement,
        }
    }

    /// `done`, `retry` or `give_up`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Done(_) => "done",
            Verdict::Retry { .. } => "retry",
            Verdict::GiveUp { .. } => "give_up",
        }
    }
}

/// Why a call was given up, with every attempt it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    /// Stable code (`attempts_exhausted`, `not_retryable`, `retry_budget_exhausted`, …).
    pub code: &'static str,
    /// What happened, in words.
    pub message: String,
    /// Every attempt, oldest first; the last one is the one that ended the call.
    pub history: Vec<AttemptRecord>,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up ({}): {}", self.code, self.message)?;
        for a in &self.history {
            write!(f, "\n  {a}")?;
        }
        Ok(())
    }
}

/// What a settled call was finally charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settlement {
    /// Tokens reserved at admission (prompt estimate plus completion allowance).
    pub reserved_tokens: u64,
    /// Tokens charged: the reported usage, the reservation when usage is unknown, 0 when the
    /// call was not sent or failed.
    pub tokens: u64,
    /// Reported usage, when there was some.
    pub usage: Option<Usage>,
    /// Cost split by kind, when usage and price are known.
    pub cost: Option<Cost>,
    /// Money charged against spend budgets.
    pub spend: f64,
}
