//! Refusals: which budget and key said no, and why.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::LimitKind;

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
