//! What happened to a call (given to settle) and what settling it answers.

use std::fmt;
use std::time::Duration;

use crate::dialect::ProviderError;
use crate::retry::Failure;
use crate::tokens::{Cost, Usage};

use super::route::{Attempt, AttemptRecord, TargetRef};

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
    /// What the upstream's error body or headers said, read by its dialect
    /// ([`crate::dialect`]): its class decides what a retry can achieve (a quota error is not
    /// retried on that key, an invalid request never). `None`: the status alone decides.
    pub error: Option<&'a ProviderError>,
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

    /// Sets the upstream's error as its dialect read it.
    pub fn with_error(mut self, error: &'a ProviderError) -> Outcome<'a> {
        self.error = Some(error);
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
