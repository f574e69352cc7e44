//! Decisions and their reasons: what `admit` and `settle` answer.

use std::sync::Arc;
use std::time::Duration;

use crate::policy::LimitKind;

use super::deny::Denial;
use super::permit::Permit;

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
