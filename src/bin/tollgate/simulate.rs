//! `tollgate simulate`: replays a trace of calls through the real engine in virtual time.
//!
//! The engine runs on a [`ManualClock`] that the event loop sets to each event's time, so a
//! two-minute trace replays in milliseconds and every run gives the same answers. Admission,
//! waiting in the budgets' priority queues and settling are the engine's own code, the same as
//! in production.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tollgate::budget::BudgetStats;
use tollgate::clock::ManualClock;
use tollgate::{Decision, Denial, Engine, Permit, Policy, Verdict, WaitPoll, Waiter};

use crate::check::{missing_file, plural, report_errors};
use crate::fmt::{Table, money};
use crate::trace::{FIELDS, Row, parse_row};
use crate::{SimulateArgs, exit};

/// `tollgate simulate --help`.
pub(crate) const LONG_ABOUT: &str = "\
Replay a trace of calls through the real engine, in virtual time.

The engine runs on a virtual clock that jumps from event to event, so a two-minute trace replays
in milliseconds, with the same answers every run. Admission, waiting in the budgets' priority
queues (when_exhausted = { wait_up_to = ... }) and settling are the engine's own code.

TRACE: one JSON object per line; blank lines and lines starting with # are skipped. Rows may be
out of time order: they are replayed sorted by at_ms (ties keep file order). Fields:
  at_ms          required; arrival time in milliseconds (integer >= 0)
  model          required; the model asked for, e.g. \"gpt-4o\"
  tenant, upstream, key, route
                 strings matched by budget scopes and `match` (default \"\")
  priority       queue priority, -32768..=32767; higher goes first among waiting calls (default 0)
  prompt         prompt text, counted with the model's tokenizer; or
  prompt_tokens  the prompt's token count; or
  request        an OpenAI chat request object (messages, max_tokens, ...)
                 (at most one of the three; none means a 0-token prompt)
  max_tokens     completion allowance (default: the request's, else the policy's default)
  latency_ms     how long the call runs once admitted (default 0)
  usage          the response's usage object (prompt_tokens, completion_tokens,
                 prompt_tokens_details.cached_tokens, ...): the call is settled with it
  status         the response's HTTP status; >= 400 without usage is not billed
  headers        response headers: accepted and ignored today (retry decisions will read them)
  note           free text, ignored
A call with neither usage nor a failed status settles as 'unknown': its whole reservation is
kept, as for a call that timed out. Unknown fields are ignored with one warning each.

EVENTS: in time order; at equal times, settles first, then wake-ups of waiting calls, then
arrivals in file order. An arrival is admitted at once (go), refused (deny), or waits in the
queue of the budget that has no room until capacity returns or its wait_up_to runs out.

OUTPUT: one JSON line per call on stdout, in file order:
  {\"line\", \"at_ms\", \"tenant\", \"model\", \"decision\": \"go\"|\"deny\", \"waited_ms\",
   \"budget\", \"key\"  (deny: the deciding budget; go: the budget it waited on, else null),
   \"reason\", \"message\"  (deny: a stable code and a sentence; go: null),
   \"tokens\", \"cost\"  (what the call was charged when settled; 0 when denied),
   \"budgets\": [[name, key], ...]  (go: every budget the call was held by)}
then a table per budget on stderr (admitted, waited, denied, tokens, spend, keys);
--summary-json FILE writes the same as JSON.

BAD LINES: a line that is not JSON, lacks at_ms or model, or has a field of the wrong type is
named on stderr (FILE:LINE: what is wrong) and skipped; the replay goes on and the exit status
is 2. With --strict the first bad line stops the run with exit status 2 and nothing is replayed.";

/// Runs `tollgate simulate`.
pub(crate) fn run(args: &SimulateArgs) -> u8 {
    if let Some(message) = missing_file(&args.policy) {
        eprintln!("error: {message}");
        return exit::FAILED;
    }
    let policy = match Policy::from_file(&args.policy) {
        Ok(p) => p,
        Err(errors) => {
            report_errors(&args.policy, &errors);
            eprintln!(
                "error: {} is not a valid policy; `tollgate check {}` explains",
                args.policy.display(),
                args.policy.display()
            );
            return exit::FAILED;
        }
    };
    let trace = if args.trace == Path::new("-") {
        read_trace("stdin", std::io::stdin().lock(), args.strict)
    } else {
        match std::fs::File::open(&args.trace) {
            Ok(f) => read_trace(
                &args.trace.display().to_string(),
                std::io::BufReader::new(f),
                args.strict,
            ),
            Err(e) => {
                eprintln!(
                    "error: cannot open trace {}: {e}; give a JSON-lines file (see \
                     `tollgate simulate --help`)",
                    args.trace.display()
                );
                return exit::FAILED;
            }
        }
    };
    let trace = match trace {
        Ok(t) => t,
        Err(Stop::Io(message)) => {
            eprintln!("error: {message}");
            return exit::FAILED;
        }
        Err(Stop::Strict) => {
            eprintln!("stopped at the first bad line (--strict); nothing was replayed");
            return exit::PARTIAL;
        }
    };
    let report = replay(policy, trace.rows);
    if let Err(e) = print_calls(&report) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write output: {e}");
        }
        return exit::FAILED;
    }
    if !args.quiet {
        eprint!("{}", summary_text(&report));
    }
    if let Some(path) = &args.summary_json {
        let text = summary_json(&report, trace.bad).to_string();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: cannot write {}: {e}", path.display());
            return exit::FAILED;
        }
    }
    if trace.bad > 0 {
        eprintln!(
            "{}: {} skipped (named above); the replay ran without them",
            args.trace.display(),
            plural(trace.bad, "bad line")
        );
        return exit::PARTIAL;
    }
    exit::OK
}

/// A trace read into rows.
pub(crate) struct Trace {
    /// Good rows, in file order.
    pub rows: Vec<Row>,
    /// Bad lines skipped.
    pub bad: usize,
}

/// Why reading a trace stopped.
pub(crate) enum Stop {
    /// The file could not be read.
    Io(String),
    /// A bad line under `--strict` (already reported).
    Strict,
}

/// Reads a trace, reporting each bad line on stderr as `NAME:LINE: message`.
pub(crate) fn read_trace(name: &str, reader: impl BufRead, strict: bool) -> Result<Trace, Stop> {
    let mut rows = Vec::new();
    let mut bad = 0;
    let mut unknown: Vec<String> = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = line.map_err(|e| Stop::Io(format!("cannot read {name}: {e}")))?;
        let parsed = match std::str::from_utf8(&bytes) {
            Err(e) => Some(Err(format!(
                "not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))),
            Ok(text) => {
                let text = text.trim();
                if text.is_empty() || text.starts_with('#') {
                    None
                } else {
                    let known = unknown.len();
                    let row = parse_row(n, text, &mut unknown);
                    for field in &unknown[known..] {
                        eprintln!(
                            "{name}:{n}: warning: unknown field \"{field}\" is ignored (known \
                             fields: {})",
                            FIELDS.join(", ")
                        );
                    }
                    Some(row)
                }
            }
        };
        match parsed {
            None => {}
            Some(Ok(row)) => rows.push(row),
            Some(Err(message)) => {
                bad += 1;
                if strict {
                    eprintln!("{name}:{n}: {message}");
                    return Err(Stop::Strict);
                }
                eprintln!("{name}:{n}: {message}; line skipped");
            }
        }
    }
    Ok(Trace { rows, bad })
}

/// The decision a call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    Go,
    Deny,
}

/// What happened to one call of the trace.
#[derive(Debug, Clone)]
pub(crate) struct CallResult {
    /// The trace row.
    pub row: Row,
    pub decision: Decided,
    /// Virtual time of the decision (nanoseconds).
    pub decided_ns: u64,
    /// Go: the budget and key it first waited on. Deny: the deciding budget and key.
    pub budget: Option<(String, String)>,
    /// Deny: the reason code and sentence.
    pub denial: Option<(&'static str, String)>,
    /// Go: every budget holding the call, with its key.
    pub budgets: Vec<(String, String)>,
    /// Settled tokens.
    pub tokens: u64,
    /// Settled money.
    pub cost: f64,
}

impl CallResult {
    /// How long the call waited for its decision, in milliseconds.
    pub(crate) fn waited_ms(&self) -> f64 {
        let at = self.row.at_ms.saturating_mul(1_000_000);
        self.decided_ns.saturating_sub(at) as f64 / 1e6
    }

    /// The call as one JSON line (fields in a fixed order).
    pub(crate) fn to_json(&self) -> String {
        let (budget, key) = match &self.budget {
            Some((b, k)) => (Some(b.as_str()), Some(k.as_str())),
            None => (None, None),
        };
        let (reason, message) = match &self.denial {
            Some((code, message)) => (Some(*code), Some(message.as_str())),
            None => (None, None),
        };
        let line = CallLine {
            line: self.row.line,
            at_ms: self.row.at_ms,
            tenant: &self.row.tenant,
            model: &self.row.model,
            decision: match self.decision {
                Decided::Go => "go",
                Decided::Deny => "deny",
            },
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
}

/// The result of a replay.
pub(crate) struct Report {
    /// One result per row, in file order.
    pub calls: Vec<CallResult>,
    /// The engine's counters per budget, in policy order.
    pub stats: Vec<BudgetStats>,
    /// Virtual time of the last event (nanoseconds).
    pub end_ns: u64,
}

/// Event kinds, in the order they run at equal times.
const SETTLE: u8 = 0;
const WAKE: u8 = 1;
const ARRIVE: u8 = 2;

/// A call waiting for room.
struct Pending {
    waiter: Waiter,
    /// The wake-up scheduled for it; other wake-ups for it are stale.
    wake_at: u64,
    /// The budget and key that first made it wait.
    waited_on: Option<(String, String)>,
}

/// The event loop.
struct Sim {
    engine: Engine,
    clock: Arc<ManualClock>,
    rows: Vec<Row>,
    results: Vec<Option<CallResult>>,
    pending: BTreeMap<usize, Pending>,
    running: BTreeMap<usize, Permit>,
    /// (time ns, kind, tie-breaker, row index), earliest first.
    events: BinaryHeap<Reverse<(u64, u8, u64, usize)>>,
    seq: u64,
}

/// Replays `rows` (in file order) through an engine running `policy` on a virtual clock.
pub(crate) fn replay(policy: Policy, rows: Vec<Row>) -> Report {
    let clock = Arc::new(ManualClock::new());
    let engine = Engine::with_clock(policy, clock.clone());
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].at_ms); // stable: ties keep file order
    let mut sim = Sim {
        engine,
        clock,
        results: vec![None; rows.len()],
        rows,
        pending: BTreeMap::new(),
        running: BTreeMap::new(),
        events: BinaryHeap::new(),
        seq: 0,
    };
    for (pos, &i) in order.iter().enumerate() {
        let at = ms_to_ns(sim.rows[i].at_ms);
        sim.events.push(Reverse((at, ARRIVE, pos as u64, i)));
    }
    let mut end_ns = 0;
    while let Some(Reverse((at, kind, _, i))) = sim.events.pop() {
        sim.clock.set(at);
        end_ns = at;
        match kind {
            SETTLE => sim.settle(i),
            WAKE => {
                if sim.pending.get(&i).is_some_and(|p| p.wake_at == at) {
                    sim.poll(i);
                }
            }
            _ => sim.arrive(i),
        }
        sim.poll_signalled();
    }
    let stats = sim.engine.stats();
    let calls = sim
        .results
        .into_iter()
        .zip(sim.rows)
        .map(|(r, row)| {
            // Every call is decided by the time the event queue is empty; this is a fallback.
            r.unwrap_or_else(|| CallResult {
                row,
                decision: Decided::Deny,
                decided_ns: end_ns,
                budget: None,
                denial: Some((
                    "not_decided",
                    "the simulation ended before a decision".into(),
                )),
                budgets: vec![],
                tokens: 0,
                cost: 0.0,
            })
        })
        .collect();
    Report {
        calls,
        stats,
        end_ns,
    }
}

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
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

    /// A call arrives: asked of the engine as a host would (`admit`); when the answer is to
    /// wait, the call joins the budget's queue as a [`Waiter`].
    fn arrive(&mut self, i: usize) {
        let decision = self.engine.admit(&self.rows[i].call());
        match decision {
            Decision::Go(permit) => self.go(i, permit, None),
            Decision::Deny(denial) => self.deny(i, &denial),
            Decision::Wait(hint) => {
                let waiter = self.engine.waiter(&self.rows[i].call());
                match waiter {
                    Err(denial) => self.deny(i, &denial),
                    Ok(waiter) => {
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

    fn go(&mut self, i: usize, permit: Permit, waited_on: Option<(String, String)>) {
        let now = self.now();
        let waited = now > ms_to_ns(self.rows[i].at_ms);
        self.results[i] = Some(CallResult {
            row: self.rows[i].clone(),
            decision: Decided::Go,
            decided_ns: now,
            budget: if waited { waited_on } else { None },
            denial: None,
            budgets: permit
                .budgets()
                .map(|(b, k)| (b.to_owned(), k.to_owned()))
                .collect(),
            tokens: 0,
            cost: 0.0,
        });
        let done = now.saturating_add(ms_to_ns(self.rows[i].latency_ms));
        self.running.insert(i, permit);
        self.push(done, SETTLE, i);
    }

    fn deny(&mut self, i: usize, denial: &Denial) {
        let budget = match (&denial.budget, &denial.key) {
            (Some(b), k) => Some((b.to_string(), k.as_deref().unwrap_or("").to_owned())),
            (None, _) => None,
        };
        self.results[i] = Some(CallResult {
            row: self.rows[i].clone(),
            decision: Decided::Deny,
            decided_ns: self.now(),
            budget,
            denial: Some((denial.code(), denial.reason.to_string())),
            budgets: vec![],
            tokens: 0,
            cost: 0.0,
        });
    }

    fn settle(&mut self, i: usize) {
        let Some(permit) = self.running.remove(&i) else {
            return;
        };
        let verdict = self.engine.settle(permit, &self.rows[i].outcome());
        if let (Some(r), Verdict::Done(s)) = (self.results[i].as_mut(), verdict) {
            r.tokens = s.tokens;
            r.cost = s.spend;
        }
    }
}

/// Prints one JSON line per call, in file order.
fn print_calls(report: &Report) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for c in &report.calls {
        writeln!(out, "{}", c.to_json())?;
    }
    out.flush()
}

/// Totals over the calls of a report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub calls: usize,
    pub go: usize,
    pub waited: usize,
    pub denied: usize,
    pub tokens: u64,
    pub cost: f64,
    pub max_wait_ms: f64,
}

impl Totals {
    /// Adds one call.
    pub(crate) fn add(&mut self, c: &CallResult) {
        self.calls += 1;
        match c.decision {
            Decided::Go => {
                self.go += 1;
                if c.waited_ms() > 0.0 {
                    self.waited += 1;
                }
            }
            Decided::Deny => self.denied += 1,
        }
        self.tokens += c.tokens;
        self.cost += c.cost;
        if c.decision == Decided::Go {
            self.max_wait_ms = self.max_wait_ms.max(c.waited_ms());
        }
    }

    /// Totals of every call.
    pub(crate) fn of<'a>(calls: impl IntoIterator<Item = &'a CallResult>) -> Totals {
        let mut t = Totals::default();
        for c in calls {
            t.add(c);
        }
        t
    }
}

/// One line on the calls and the per-budget table.
pub(crate) fn summary_text(report: &Report) -> String {
    let t = Totals::of(&report.calls);
    let mut out = format!(
        "{} replayed over {:.1} virtual seconds: {} went ({} after waiting), {} denied; \
         {} tokens, {} spent\n",
        plural(t.calls, "call"),
        report.end_ns as f64 / 1e9,
        t.go,
        t.waited,
        t.denied,
        t.tokens,
        money(t.cost),
    );
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
fn summary_json(report: &Report, skipped: usize) -> Value {
    let t = Totals::of(&report.calls);
    json!({
        "calls": t.calls,
        "go": t.go,
        "waited": t.waited,
        "denied": t.denied,
        "tokens": t.tokens,
        "cost": t.cost,
        "skipped_lines": skipped,
        "virtual_ms": report.end_ns as f64 / 1e6,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: &str, trace: &str) -> Report {
        let policy = Policy::from_toml(policy).expect("test policy is valid");
        let trace = read_trace("t", trace.as_bytes(), true)
            .ok()
            .expect("test trace is valid");
        replay(policy, trace.rows)
    }

    fn decisions(r: &Report) -> Vec<(Decided, f64)> {
        r.calls
            .iter()
            .map(|c| (c.decision, c.waited_ms()))
            .collect()
    }

    #[test]
    fn requests_per_second_go_go_deny() {
        let r = run(
            "version = 1\n[[budget]]\nname = \"g\"\nrequests_per_second = 2\n",
            "{\"at_ms\":0,\"model\":\"m\"}\n{\"at_ms\":1,\"model\":\"m\"}\n{\"at_ms\":2,\"model\":\"m\"}\n",
        );
        assert_eq!(
            decisions(&r),
            vec![(Decided::Go, 0.0), (Decided::Go, 0.0), (Decided::Deny, 0.0)]
        );
        assert_eq!(
            r.calls[2].denial.as_ref().map(|d| d.0),
            Some("budget_exhausted")
        );
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
            vec![(Decided::Go, 900.0), (Decided::Go, 0.0)]
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
        assert_eq!(r.calls[1].decision, Decided::Go);
        assert_eq!(r.calls[1].waited_ms(), 290.0);
        // The third call queues behind the second and goes when the second settles at once.
        assert_eq!(r.calls[2].decision, Decided::Go);
        assert_eq!(r.calls[2].waited_ms(), 280.0);
    }
}
