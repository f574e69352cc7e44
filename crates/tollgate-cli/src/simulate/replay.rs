//! The virtual-time driver: an event loop that replays the calls of a trace through the engine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use tollgate::clock::ManualClock;
use tollgate::policy::Strategy;
use tollgate::{
    Attempt, Decision, Denial, Engine, Permit, Policy, Verdict, WaitHint, WaitPoll, Waiter,
};

use super::ms_to_ns;
use super::report::{AttemptLog, CallResult, Decided, RETRY_DENIED, Report};
use crate::trace::{Incident, OutcomeSpec, Row};

/// Event kinds, in the order they run at equal times.
const SETTLE: u8 = 0;
const WAKE: u8 = 1;
const RETRY: u8 = 2;
const ARRIVE: u8 = 3;

/// A call waiting for room.
struct Pending {
    waiter: Waiter,
    /// The wake-up scheduled for it; other wake-ups for it are stale.
    wake_at: u64,
    /// The budget and key that first made it wait.
    waited_on: Option<(String, String)>,
}

/// An attempt in flight.
struct Running {
    permit: Permit,
    /// How it ends.
    spec: OutcomeSpec,
}

/// Where a call is, between events.
#[derive(Default)]
struct Progress {
    /// The retry state for the next admission (none for the first).
    attempt: Option<Box<Attempt>>,
    /// When the current admission was asked for (arrival or retry time), nanoseconds.
    asked_ns: u64,
    /// The engine's choice for the next attempt.
    planned: Option<(String, String)>,
    /// Time of the first decision.
    first_decided: Option<u64>,
    /// The budget the first admission waited on.
    waited_on: Option<(String, String)>,
    budgets: Vec<(String, String)>,
    tokens: u64,
    cost: f64,
    attempts: Vec<AttemptLog>,
}

/// The event loop.
struct Sim {
    engine: Engine,
    clock: Arc<ManualClock>,
    rows: Vec<Row>,
    incidents: Vec<Incident>,
    /// Attempts each incident decided.
    hits: Vec<usize>,
    progress: Vec<Progress>,
    results: Vec<Option<CallResult>>,
    pending: BTreeMap<usize, Pending>,
    running: BTreeMap<usize, Running>,
    /// (time ns, kind, tie-breaker, row index), earliest first.
    events: BinaryHeap<Reverse<(u64, u8, u64, usize)>>,
    seq: u64,
}

/// Replays `rows` (in file order) through an engine running `policy` on a virtual clock, with
/// `incidents` overriding how matching attempts end.
pub(crate) fn replay(policy: Policy, rows: Vec<Row>, incidents: Vec<Incident>) -> Report {
    let clock = Arc::new(ManualClock::new());
    let first_choices: Vec<Option<(String, String)>> =
        rows.iter().map(|r| first_choice(&policy, r)).collect();
    let engine = Engine::with_clock(policy, clock.clone());
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].at_ms); // stable: ties keep file order
    let mut sim = Sim {
        engine,
        clock,
        progress: first_choices
            .into_iter()
            .map(|planned| Progress {
                planned,
                ..Progress::default()
            })
            .collect(),
        results: vec![None; rows.len()],
        rows,
        hits: vec![0; incidents.len()],
        incidents,
        pending: BTreeMap::new(),
        running: BTreeMap::new(),
        events: BinaryHeap::new(),
        seq: order.len() as u64,
    };
    for (pos, &i) in order.iter().enumerate() {
        let at = ms_to_ns(sim.rows[i].at_ms);
        sim.progress[i].asked_ns = at;
        sim.events.push(Reverse((at, ARRIVE, pos as u64, i)));
    }
    let max_events = sim.rows.len().saturating_mul(10).saturating_add(10_000);
    let mut handled = 0usize;
    let mut aborted = None;
    let mut end_ns = 0;
    while let Some(Reverse((at, kind, _, i))) = sim.events.pop() {
        handled += 1;
        if handled > max_events {
            aborted = Some(format!(
                "the replay stopped after {max_events} events (10 per call + 10000) at virtual \
                 time {:.3} s, with calls still open; this is a bug in the simulator or a \
                 policy that never lets calls finish",
                at as f64 / 1e9
            ));
            break;
        }
        sim.clock.set(at);
        end_ns = at;
        match kind {
            SETTLE => sim.settle(i),
            WAKE => {
                if sim.pending.get(&i).is_some_and(|p| p.wake_at == at) {
                    sim.poll(i);
                }
            }
            _ => sim.admit(i),
        }
        sim.poll_signalled();
        sim.send_probes(at);
    }
    let stats = sim.engine.stats();
    let Sim {
        rows,
        progress,
        results,
        incidents,
        hits,
        ..
    } = sim;
    let calls = results
        .into_iter()
        .zip(rows)
        .zip(progress)
        .map(|((r, row), p)| {
            // Every call is finished by the time the event queue is empty; this is a fallback.
            r.unwrap_or_else(|| CallResult {
                decision: if p.attempts.is_empty() {
                    Decided::Deny
                } else {
                    Decided::GaveUp
                },
                decided_ns: p.first_decided.unwrap_or(end_ns),
                budget: None,
                denial: Some((
                    "not_decided",
                    "the simulation ended before the call finished".into(),
                )),
                give_up: None,
                budgets: p.budgets,
                tokens: p.tokens,
                cost: p.cost,
                attempts: p.attempts,
                row,
            })
        })
        .collect();
    Report {
        calls,
        stats,
        end_ns,
        aborted,
        incidents: incidents.into_iter().zip(hits).collect(),
    }
}

/// The target the engine tries first for a fresh call of `row`, as (upstream, model): the first
/// target of the call's route when the route is ordered (as the engine picks it: the route the
/// call names, else none when it names an upstream, else the first whose model pattern matches).
fn first_choice(policy: &Policy, row: &Row) -> Option<(String, String)> {
    let route = if !row.route.is_empty() {
        policy.routes.iter().find(|r| r.name == row.route)
    } else if !row.upstream.is_empty() {
        None
    } else {
        policy.routes.iter().find(|r| r.model.matches(&row.model))
    }?;
    if route.strategy != Strategy::Ordered {
        return None;
    }
    let t = route.targets.first()?;
    Some((t.upstream.clone(), t.model.clone()))
}

/// What admission answered, with the waiter made while the call was borrowed. The simulator
/// is not a hot path: the large waiter variant is not worth a box.
#[allow(clippy::large_enum_variant)]
enum Admitted {
    Go(Permit),
    Deny(Denial),
    Wait(WaitHint, Result<Waiter, Denial>),
}

impl Sim {
    fn now(&self) -> u64 {
        use tollgate::clock::Clock;
        self.clock.now()
    }

    fn push(&mut self, at: u64, kind: u8, i: usize) {
        self.seq += 1;
        self.events.push(Reverse((at, kind, self.seq, i)));
    }

    /// A call (or a retry of it) asks to go: asked of the engine as a host would (`admit`, with
    /// the retry state when it is a retry); when the answer is to wait, the call joins the
    /// budget's queue as a [`Waiter`].
    fn admit(&mut self, i: usize) {
        let answer = {
            let call = self.rows[i].call();
            let call = match self.progress[i].attempt.as_deref() {
                Some(a) => call.attempt(a),
                None => call,
            };
            match self.engine.admit(&call) {
                Decision::Go(permit) => Admitted::Go(permit),
                Decision::Deny(denial) => Admitted::Deny(denial),
                Decision::Wait(hint) => Admitted::Wait(hint, self.engine.waiter(&call)),
            }
        };
        match answer {
            Admitted::Go(permit) => self.go(i, permit, None),
            Admitted::Deny(denial) => self.deny(i, &denial),
            Admitted::Wait(_, Err(denial)) => self.deny(i, &denial),
            Admitted::Wait(hint, Ok(waiter)) => {
                let waited_on = Some((hint.budget.to_string(), hint.key.to_string()));
                self.pending.insert(
                    i,
                    Pending {
                        waiter,
                        wake_at: u64::MAX,
                        waited_on,
                    },
                );
                self.poll(i);
            }
        }
    }

    /// Polls a waiting call.
    fn poll(&mut self, i: usize) {
        let Some(mut p) = self.pending.remove(&i) else {
            return;
        };
        match p.waiter.poll() {
            WaitPoll::Ready(Ok(permit)) => self.go(i, permit, p.waited_on),
            WaitPoll::Ready(Err(denial)) => self.deny(i, &denial),
            WaitPoll::Pending { until } => {
                let until = until.max(self.now() + 1);
                if until != p.wake_at {
                    p.wake_at = until;
                    self.push(until, WAKE, i);
                }
                self.pending.insert(i, p);
            }
        }
    }

    /// Polls every waiting call whose signal fired (capacity came back, or it reached the head
    /// of a queue), until none is left.
    fn poll_signalled(&mut self) {
        loop {
            let woken: Vec<usize> = self
                .pending
                .iter()
                .filter(|(_, p)| p.waiter.signal().take())
                .map(|(i, _)| *i)
                .collect();
            if woken.is_empty() {
                return;
            }
            for i in woken {
                self.poll(i);
            }
        }
    }

    /// An attempt is admitted: decide how it ends (the incident covering it, else its row) and
    /// schedule its settle.
    fn go(&mut self, i: usize, permit: Permit, waited_on: Option<(String, String)>) {
        let now = self.now();
        let row = &self.rows[i];
        let n = permit.attempt_number();
        let target = permit.target().cloned();
        let own = row.outcome_of(n);
        let (upstream, model) = match &target {
            Some(t) => (&*t.upstream, &*t.model),
            None => (row.upstream.as_str(), row.model.as_str()),
        };
        let spec = match self
            .incidents
            .iter()
            .position(|inc| inc.covers(upstream, model, now))
        {
            Some(k) => {
                self.hits[k] += 1;
                self.incidents[k].apply(&own)
            }
            None => own,
        };
        let done = now.saturating_add(row.latency(&spec).as_nanos() as u64);
        let p = &mut self.progress[i];
        if p.first_decided.is_none() {
            p.first_decided = Some(now);
            if now > ms_to_ns(row.at_ms) {
                p.waited_on = waited_on;
            }
        }
        for (b, k) in permit.budgets() {
            if !p.budgets.iter().any(|(b2, k2)| b2 == b && k2 == k) {
                p.budgets.push((b.to_owned(), k.to_owned()));
            }
        }
        p.attempts.push(AttemptLog {
            n,
            at_ns: now,
            waited_ns: now.saturating_sub(p.asked_ns),
            target,
            sent: true,
            outcome: String::new(),
            verdict: String::new(),
            planned: p.planned.take(),
        });
        self.running.insert(i, Running { permit, spec });
        self.push(done, SETTLE, i);
    }

    /// Admission refused: the call is denied, or, for a retry, gives up.
    fn deny(&mut self, i: usize, denial: &Denial) {
        let now = self.now();
        let budget = match (&denial.budget, &denial.key) {
            (Some(b), k) => Some((b.to_string(), k.as_deref().unwrap_or("").to_owned())),
            (None, _) => None,
        };
        let p = &mut self.progress[i];
        let decision = if p.attempts.is_empty() {
            Decided::Deny
        } else {
            let n = p.attempt.as_ref().map_or(0, |a| a.number());
            p.attempts.push(AttemptLog {
                n,
                at_ns: now,
                waited_ns: now.saturating_sub(p.asked_ns),
                target: None,
                sent: false,
                outcome: "not_admitted".into(),
                verdict: format!("denied ({}): {denial}", denial.code()),
                planned: p.planned.take(),
            });
            Decided::GaveUp
        };
        let give_up = (decision == Decided::GaveUp)
            .then(|| (RETRY_DENIED, "a retry was refused admission".to_owned()));
        // The denial's own sentence, without the budget prefix (that is in `budget`).
        let denial = Some((denial.code(), denial.reason.to_string()));
        self.finish(i, decision, budget, denial, give_up);
    }

    /// Records the end of call `i`.
    fn finish(
        &mut self,
        i: usize,
        decision: Decided,
        budget: Option<(String, String)>,
        denial: Option<(&'static str, String)>,
        give_up: Option<(&'static str, String)>,
    ) {
        let now = self.now();
        let p = std::mem::take(&mut self.progress[i]);
        self.results[i] = Some(CallResult {
            row: self.rows[i].clone(),
            decision,
            decided_ns: p.first_decided.unwrap_or(now),
            budget: if denial.is_some() {
                budget
            } else {
                p.waited_on
            },
            denial,
            give_up,
            budgets: p.budgets,
            tokens: p.tokens,
            cost: p.cost,
            attempts: p.attempts,
        });
    }

    /// Sends the synthetic half-open probes the engine asks for (`breaker.probe` in the
    /// policy): a probe fails when an incident covers its target now, else it succeeds at once.
    fn send_probes(&mut self, now: u64) {
        for probe in self.engine.probes() {
            let (upstream, model) = (&*probe.target.upstream, &*probe.target.model);
            let failed = match self
                .incidents
                .iter()
                .position(|inc| inc.covers(upstream, model, now))
            {
                Some(k) => {
                    self.hits[k] += 1;
                    let o = &self.incidents[k].outcome;
                    o.failure.is_some() || o.status.is_some_and(|s| s >= 400)
                }
                None => false,
            };
            self.engine
                .settle_probe(probe, !failed, std::time::Duration::ZERO);
        }
    }

    /// An attempt ends: settle it and follow the verdict.
    fn settle(&mut self, i: usize) {
        let Some(Running { permit, spec }) = self.running.remove(&i) else {
            return;
        };
        let now = self.now();
        let headers = spec.header_refs();
        let outcome = spec.outcome(&headers, self.rows[i].latency(&spec));
        let done_code = match outcome.status {
            Some(s) => format!("status_{s}"),
            None => "unknown".to_owned(),
        };
        let verdict = self.engine.settle(permit, &outcome);
        let p = &mut self.progress[i];
        let s = verdict.settlement();
        p.tokens += s.tokens;
        p.cost += s.spend;
        let Some(log) = p.attempts.last_mut() else {
            return;
        };
        match verdict {
            Verdict::Retry { after, attempt, .. } => {
                if let Some(record) = attempt.history().last() {
                    log.outcome.clone_from(&record.outcome);
                    log.verdict.clone_from(&record.decision);
                } else {
                    log.outcome = done_code;
                    log.verdict = format!("retry in {} ms", after.as_millis());
                }
                let at = now.saturating_add(after.as_nanos() as u64);
                p.planned = attempt
                    .next_target()
                    .map(|t| (t.upstream.to_string(), t.model.to_string()));
                p.attempt = Some(attempt);
                p.asked_ns = at;
                self.push(at, RETRY, i);
            }
            Verdict::GiveUp { reason, .. } => {
                if let Some(record) = reason.history.last() {
                    log.outcome.clone_from(&record.outcome);
                    log.verdict.clone_from(&record.decision);
                } else {
                    log.outcome = done_code;
                    log.verdict = format!("gave up ({})", reason.code);
                }
                self.finish(
                    i,
                    Decided::GaveUp,
                    None,
                    None,
                    Some((reason.code, reason.message)),
                );
            }
            // Done, and any verdict this build does not know: the call is finished.
            _ => {
                log.outcome = done_code;
                log.verdict = "done".into();
                self.finish(i, Decided::Done, None, None, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::read::read_trace;

    fn run(policy: &str, trace: &str) -> Report {
        let policy = Policy::from_toml(policy).expect("test policy is valid");
        let trace = read_trace("t", trace.as_bytes(), true)
            .ok()
            .expect("test trace is valid");
        replay(policy, trace.rows, trace.incidents)
    }

    fn decisions(r: &Report) -> Vec<(Decided, f64)> {
        r.calls
            .iter()
            .map(|c| (c.decision, c.waited_ms()))
            .collect()
    }

    #[test]
    fn requests_per_second_done_done_deny() {
        let r = run(
            "version = 1\n[[budget]]\nname = \"g\"\nrequests_per_second = 2\n",
            "{\"at_ms\":0,\"model\":\"m\"}\n{\"at_ms\":1,\"model\":\"m\"}\n{\"at_ms\":2,\"model\":\"m\"}\n",
        );
        assert_eq!(
            decisions(&r),
            vec![
                (Decided::Done, 0.0),
                (Decided::Done, 0.0),
                (Decided::Deny, 0.0)
            ]
        );
        assert_eq!(
            r.calls[2].denial.as_ref().map(|d| d.0),
            Some("budget_exhausted")
        );
        assert!(r.calls[2].attempts.is_empty());
        assert_eq!(r.calls[0].attempts.len(), 1);
    }

    #[test]
    fn waits_then_goes_and_out_of_order_rows_are_sorted() {
        let r = run(
            "version = 1\n[[budget]]\nname = \"g\"\nrequests_per_second = 1\nburst = 1\n\
             when_exhausted = { wait_up_to = \"2s\" }\n",
            "{\"at_ms\":100,\"model\":\"m\"}\n{\"at_ms\":0,\"model\":\"m\"}\n",
        );
        assert_eq!(
            decisions(&r),
            vec![(Decided::Done, 900.0), (Decided::Done, 0.0)]
        );
        assert_eq!(r.calls[0].budget, Some(("g".to_owned(), String::new())));
        assert_eq!(r.stats[0].waited, 1);
    }

    #[test]
    fn concurrency_wakes_the_waiter_when_a_call_settles() {
        let r = run(
            "version = 1\n[[budget]]\nname = \"c\"\nconcurrency = 1\n\
             when_exhausted = { wait_up_to = \"1s\" }\n",
            "{\"at_ms\":0,\"model\":\"m\",\"latency_ms\":300}\n{\"at_ms\":10,\"model\":\"m\"}\n\
             {\"at_ms\":20,\"model\":\"m\",\"latency_ms\":5000}\n",
        );
        assert_eq!(r.calls[1].decision, Decided::Done);
        assert_eq!(r.calls[1].waited_ms(), 290.0);
        // The third call queues behind the second and goes when the second settles at once.
        assert_eq!(r.calls[2].decision, Decided::Done);
        assert_eq!(r.calls[2].waited_ms(), 280.0);
    }

    const RETRY: &str = "version = 1\n[retry]\nmax_attempts = 3\n\
                         backoff = { base = \"100ms\", max = \"1s\", jitter = \"none\" }\n";

    #[test]
    fn unrouted_call_is_retried_after_the_backoff_then_succeeds() {
        let r = run(
            RETRY,
            "{\"at_ms\":0,\"model\":\"m\",\"latency_ms\":10,\"status\":500,\
             \"then\":[{\"failure\":\"reset\"}]}\n",
        );
        let c = &r.calls[0];
        assert_eq!(c.decision, Decided::Done);
        let at: Vec<f64> = c.attempts.iter().map(|a| a.at_ns as f64 / 1e6).collect();
        // 10 ms latency, then backoff 100 ms, then 200 ms.
        assert_eq!(at, [0.0, 110.0, 320.0]);
        let outcomes: Vec<&str> = c.attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["status_500", "connect_reset", "status_200"]);
        assert_eq!(c.retries(), 2);
        assert_eq!(c.fallbacks(), 0);
    }

    #[test]
    fn incident_overrides_the_row_inside_its_window_only() {
        let r = run(
            &RETRY.replace("max_attempts = 3", "max_attempts = 1"),
            "{\"incident\":{\"upstream\":\"*\",\"from_ms\":100,\"to_ms\":200,\"status\":503}}\n\
             {\"at_ms\":99,\"model\":\"m\",\"status\":200}\n\
             {\"at_ms\":100,\"model\":\"m\",\"status\":200}\n\
             {\"at_ms\":200,\"model\":\"m\",\"status\":200}\n",
        );
        let d: Vec<Decided> = r.calls.iter().map(|c| c.decision).collect();
        assert_eq!(d, [Decided::Done, Decided::GaveUp, Decided::Done]);
        assert_eq!(
            r.calls[1].give_up.as_ref().map(|g| g.0),
            Some("attempts_exhausted")
        );
    }
}
