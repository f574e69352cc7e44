//! The summary after a replay: totals, a table per target and per budget, and its JSON form.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tollgate::budget::BudgetStats;

use super::report::{CallResult, Decided, Report};
use crate::check::plural;
use crate::fmt::{Table, money};

/// Totals over the calls of a report.
#[derive(Debug, Default, Clone)]
pub(crate) struct Totals {
    pub calls: usize,
    pub done: usize,
    pub gave_up: usize,
    /// Calls whose first admission waited.
    pub waited: usize,
    pub denied: usize,
    /// Attempts sent after the first.
    pub retries: usize,
    /// Retries that landed on another target than the first attempt.
    pub fallbacks: usize,
    pub tokens: u64,
    pub cost: f64,
    pub max_wait_ms: f64,
    /// Give-ups by code.
    pub give_ups: BTreeMap<&'static str, usize>,
}

impl Totals {
    /// Adds one call.
    pub(crate) fn add(&mut self, c: &CallResult) {
        self.calls += 1;
        match c.decision {
            Decided::Done => self.done += 1,
            Decided::GaveUp => self.gave_up += 1,
            Decided::Deny => self.denied += 1,
        }
        if c.decision != Decided::Deny {
            if c.waited_ms() > 0.0 {
                self.waited += 1;
            }
            self.max_wait_ms = self.max_wait_ms.max(c.waited_ms());
        }
        if let Some((code, _)) = &c.give_up {
            *self.give_ups.entry(code).or_default() += 1;
        }
        self.retries += c.retries();
        self.fallbacks += c.fallbacks();
        self.tokens += c.tokens;
        self.cost += c.cost;
    }

    /// Totals of every call.
    pub(crate) fn of<'a>(calls: impl IntoIterator<Item = &'a CallResult>) -> Totals {
        let mut t = Totals::default();
        for c in calls {
            t.add(c);
        }
        t
    }

    /// `3 retries (2 on another target), 1 gave up (attempts_exhausted × 1)`.
    pub(crate) fn resilience_line(&self) -> String {
        let mut out = format!(
            "{} {} ({} on another target: fallbacks), {} gave up",
            self.retries,
            if self.retries == 1 {
                "retry"
            } else {
                "retries"
            },
            self.fallbacks,
            self.gave_up
        );
        if !self.give_ups.is_empty() {
            let list: Vec<String> = self
                .give_ups
                .iter()
                .map(|(code, n)| format!("{code} × {n}"))
                .collect();
            out.push_str(&format!(" ({})", list.join(", ")));
        }
        out
    }
}

/// What the attempts say about one target (upstream/model).
#[derive(Debug, Default, Clone)]
pub(crate) struct TargetStats {
    /// Attempts sent to it.
    pub attempts: usize,
    /// Of which failed (retried or given up).
    pub failed: usize,
    /// Times it was the engine's first choice for an attempt that went elsewhere.
    pub passed_over: usize,
    /// Runs of passing over with no attempt sent to it in between.
    pub spells: usize,
    /// First and last time it was passed over (nanoseconds).
    pub passed_from_ns: Option<u64>,
    pub passed_to_ns: Option<u64>,
}

/// Per target (`upstream/model`), from the attempts of every call.
pub(crate) fn target_stats(calls: &[CallResult]) -> BTreeMap<String, TargetStats> {
    // (time, order, target, passed over?) for every sent attempt, in time order.
    let mut events: Vec<(u64, usize, String, bool)> = vec![];
    let mut stats: BTreeMap<String, TargetStats> = BTreeMap::new();
    for a in calls.iter().flat_map(|c| &c.attempts).filter(|a| a.sent) {
        let landed = a.place();
        if let Some((u, m)) = &landed {
            let name = format!("{u}/{m}");
            let s = stats.entry(name.clone()).or_default();
            s.attempts += 1;
            if a.verdict != "done" {
                s.failed += 1;
            }
            events.push((a.at_ns, events.len(), name, false));
        }
        if let Some(plan) = &a.planned
            && landed.as_ref() != Some(plan)
        {
            events.push((
                a.at_ns,
                events.len(),
                format!("{}/{}", plan.0, plan.1),
                true,
            ));
        }
    }
    events.sort();
    let mut in_spell: BTreeMap<String, bool> = BTreeMap::new();
    for (at, _, name, passed) in events {
        let spell = in_spell.entry(name.clone()).or_default();
        if !passed {
            *spell = false;
            continue;
        }
        let s = stats.entry(name).or_default();
        s.passed_over += 1;
        if !*spell {
            s.spells += 1;
            *spell = true;
        }
        s.passed_from_ns.get_or_insert(at);
        s.passed_to_ns = Some(at);
    }
    stats
}

/// The per-target table (empty when no call was routed).
pub(crate) fn target_table(stats: &BTreeMap<String, TargetStats>) -> Table {
    let mut table = Table::new(
        &[
            "target",
            "attempts",
            "failed",
            "passed over",
            "spells",
            "when",
        ],
        &[false, true, true, true, true, false],
    );
    for (name, s) in stats {
        let when = match (s.passed_from_ns, s.passed_to_ns) {
            (Some(a), Some(b)) => format!("{:.1}–{:.1} s", a as f64 / 1e9, b as f64 / 1e9),
            _ => String::new(),
        };
        table.row(vec![
            name.clone(),
            s.attempts.to_string(),
            s.failed.to_string(),
            s.passed_over.to_string(),
            s.spells.to_string(),
            when,
        ]);
    }
    table
}

/// The totals, the per-target table and the per-budget table.
pub(crate) fn summary_text(report: &Report) -> String {
    let t = Totals::of(&report.calls);
    let mut out = format!(
        "{} replayed over {:.1} virtual seconds: {} done ({} after waiting), {} gave up, {} \
         denied; {} tokens, {} spent\n",
        plural(t.calls, "call"),
        report.end_ns as f64 / 1e9,
        t.done,
        t.waited,
        t.gave_up,
        t.denied,
        t.tokens,
        money(t.cost),
    );
    for (incident, hits) in &report.incidents {
        out.push_str(&format!(
            "incident (line {}) {}: {} hit\n",
            incident.line,
            incident.describe(),
            plural(*hits, "attempt")
        ));
    }
    let targets = target_stats(&report.calls);
    if t.retries > 0 || t.gave_up > 0 || !targets.is_empty() {
        out.push_str(&format!("resilience: {}\n", t.resilience_line()));
    }
    if !targets.is_empty() {
        out.push_str(&target_table(&targets).render(2));
        if targets.values().any(|s| s.passed_over > 0) {
            out.push_str(
                "  passed over: an attempt went elsewhere than to this target, the engine's first \
                 choice for it\n  (the route's first target, or the one the retry verdict \
                 named): its circuit breaker was open,\n  its keys benched or a budget full. \
                 spells: runs of that with no attempt sent to it in between.\n",
            );
        }
    }
    out.push_str(&budget_table(&report.stats).render(2));
    out
}

/// The engine's counters per budget as a table.
pub(crate) fn budget_table(stats: &[BudgetStats]) -> Table {
    let mut table = Table::new(
        &[
            "budget", "admitted", "waited", "denied", "tokens", "spend", "keys",
        ],
        &[false, true, true, true, true, true, true],
    );
    for s in stats {
        table.row(vec![
            s.name.clone(),
            s.admitted.to_string(),
            s.waited.to_string(),
            s.denied.to_string(),
            s.tokens.to_string(),
            money(s.spend),
            s.keys.to_string(),
        ]);
    }
    table
}

/// The summary as JSON (`--summary-json`).
pub(super) fn summary_json(report: &Report, skipped: usize) -> Value {
    let t = Totals::of(&report.calls);
    json!({
        "calls": t.calls,
        "done": t.done,
        "gave_up": t.gave_up,
        "waited": t.waited,
        "denied": t.denied,
        "retries": t.retries,
        "fallbacks": t.fallbacks,
        "give_ups": t.give_ups,
        "tokens": t.tokens,
        "cost": t.cost,
        "skipped_lines": skipped,
        "virtual_ms": report.end_ns as f64 / 1e6,
        "targets": target_stats(&report.calls).iter().map(|(name, s)| json!({
            "target": name,
            "attempts": s.attempts,
            "failed": s.failed,
            "passed_over": s.passed_over,
            "spells": s.spells,
            "passed_from_ms": s.passed_from_ns.map(|n| n as f64 / 1e6),
            "passed_to_ms": s.passed_to_ns.map(|n| n as f64 / 1e6),
        })).collect::<Vec<_>>(),
        "budgets": report.stats.iter().map(|s| json!({
            "name": s.name,
            "admitted": s.admitted,
            "waited": s.waited,
            "denied": s.denied,
            "tokens": s.tokens,
            "spend": s.spend,
            "keys": s.keys,
        })).collect::<Vec<_>>(),
    })
}
