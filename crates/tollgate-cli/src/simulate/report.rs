//! What a replay found: one result per call, printed as one JSON line each.

use std::io::Write;

use serde::Serialize;
use tollgate::TargetRef;
use tollgate::budget::BudgetStats;

use super::ms_to_ns;
use crate::trace::{Incident, Row};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    /// Admitted, and its last attempt succeeded (perhaps after retries).
    Done,
    /// Admitted, and its last attempt failed without a retry (or a retry was refused admission).
    GaveUp,
    /// Never admitted.
    Deny,
}

impl Decided {
    /// The name in the output.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Decided::Done => "done",
            Decided::GaveUp => "gave_up",
            Decided::Deny => "deny",
        }
    }
}

/// Give-up code of a call whose retry was refused admission.
pub(crate) const RETRY_DENIED: &str = "retry_denied";

/// One attempt of a call.
#[derive(Debug, Clone)]
pub(crate) struct AttemptLog {
    /// 1 for the first attempt.
    pub n: u32,
    /// Virtual time it was admitted (or refused), nanoseconds.
    pub at_ns: u64,
    /// How long it waited in a budget's queue first, nanoseconds.
    pub waited_ns: u64,
    /// Where it went, when routed.
    pub target: Option<TargetRef>,
    /// Whether it was sent (false: a retry refused admission).
    pub sent: bool,
    /// How it ended, as the engine's code (`status_503`, `timeout`, ...).
    pub outcome: String,
    /// What the engine decided after it.
    pub verdict: String,
    /// The engine's choice for it, as (upstream, model): the route's first target for a first
    /// attempt on an ordered route, the retry verdict's target for a retry.
    pub planned: Option<(String, String)>,
}

impl AttemptLog {
    /// `upstream/model` of its target.
    pub(crate) fn place(&self) -> Option<(String, String)> {
        self.target
            .as_ref()
            .map(|t| (t.upstream.to_string(), t.model.to_string()))
    }
}

/// What happened to one call of the trace.
#[derive(Debug, Clone)]
pub(crate) struct CallResult {
    /// The trace row.
    pub row: Row,
    pub decision: Decided,
    /// Virtual time of the first decision: the first admission or the denial (nanoseconds).
    pub decided_ns: u64,
    /// Admitted: the budget and key its first admission waited on. Denied (or a retry refused
    /// admission): the deciding budget and key.
    pub budget: Option<(String, String)>,
    /// Deny, or a retry refused admission: the reason code and sentence.
    pub denial: Option<(&'static str, String)>,
    /// Gave up: the code and sentence.
    pub give_up: Option<(&'static str, String)>,
    /// Every budget an attempt was held by, with its key.
    pub budgets: Vec<(String, String)>,
    /// Settled tokens, every attempt.
    pub tokens: u64,
    /// Settled money, every attempt.
    pub cost: f64,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptLog>,
}

impl CallResult {
    /// How long the call waited for its first decision, in milliseconds.
    pub(crate) fn waited_ms(&self) -> f64 {
        let at = ms_to_ns(self.row.at_ms);
        self.decided_ns.saturating_sub(at) as f64 / 1e6
    }

    /// Attempts that were sent after the first.
    pub(crate) fn retries(&self) -> usize {
        self.attempts.iter().filter(|a| a.sent && a.n > 1).count()
    }

    /// Retries that landed on another upstream/model than the first attempt.
    pub(crate) fn fallbacks(&self) -> usize {
        let Some(first) = self.attempts.first().and_then(AttemptLog::place) else {
            return 0;
        };
        self.attempts
            .iter()
            .skip(1)
            .filter(|a| a.sent && a.place().is_some_and(|p| p != first))
            .count()
    }

    /// The call as one JSON line (fields in a fixed order).
    pub(crate) fn to_json(&self) -> String {
        let (budget, key) = match &self.budget {
            Some((b, k)) => (Some(b.as_str()), Some(k.as_str())),
            None => (None, None),
        };
        let (reason, message) = match (&self.denial, &self.give_up) {
            (Some((code, message)), _) => (Some(*code), Some(message.as_str())),
            (None, Some((code, message))) => (Some(*code), Some(message.as_str())),
            (None, None) => (None, None),
        };
        let target = self
            .attempts
            .iter()
            .rev()
            .find(|a| a.sent)
            .and_then(|a| a.target.as_ref())
            .map(|t| t.to_string());
        let line = CallLine {
            line: self.row.line,
            at_ms: self.row.at_ms,
            tenant: &self.row.tenant,
            model: &self.row.model,
            decision: self.decision.as_str(),
            waited_ms: self.waited_ms(),
            budget,
            key,
            reason,
            message,
            tokens: self.tokens,
            cost: self.cost,
            budgets: self
                .budgets
                .iter()
                .map(|(b, k)| [b.as_str(), k.as_str()])
                .collect(),
            target,
            give_up: self.give_up.as_ref().map(|g| g.0),
            attempts: self
                .attempts
                .iter()
                .map(|a| AttemptLine {
                    n: a.n,
                    at_ms: a.at_ns as f64 / 1e6,
                    waited_ms: a.waited_ns as f64 / 1e6,
                    target: a.target.as_ref().map(|t| t.to_string()),
                    outcome: &a.outcome,
                    verdict: &a.verdict,
                })
                .collect(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// One output line of `tollgate simulate`; serde keeps the field order.
#[derive(Serialize)]
struct CallLine<'a> {
    line: usize,
    at_ms: u64,
    tenant: &'a str,
    model: &'a str,
    decision: &'static str,
    waited_ms: f64,
    budget: Option<&'a str>,
    key: Option<&'a str>,
    reason: Option<&'static str>,
    message: Option<&'a str>,
    tokens: u64,
    cost: f64,
    budgets: Vec<[&'a str; 2]>,
    target: Option<String>,
    give_up: Option<&'static str>,
    attempts: Vec<AttemptLine<'a>>,
}

/// One attempt in an output line.
#[derive(Serialize)]
struct AttemptLine<'a> {
    n: u32,
    at_ms: f64,
    waited_ms: f64,
    target: Option<String>,
    outcome: &'a str,
    verdict: &'a str,
}

/// The result of a replay.
pub(crate) struct Report {
    /// One result per row, in file order.
    pub calls: Vec<CallResult>,
    /// The engine's counters per budget, in policy order.
    pub stats: Vec<BudgetStats>,
    /// Virtual time of the last event (nanoseconds).
    pub end_ns: u64,
    /// Why the replay stopped early, when it did.
    pub aborted: Option<String>,
    /// Every incident with the number of attempts it decided.
    pub incidents: Vec<(Incident, usize)>,
}

/// Prints one JSON line per call, in file order.
pub(super) fn print_calls(report: &Report) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for c in &report.calls {
        writeln!(out, "{}", c.to_json())?;
    }
    out.flush()
}
