//! `tollgate simulate`: replays a trace of calls through the real engine in virtual time.
//!
//! The engine runs on a [`ManualClock`] that the event loop sets to each event's time, so a
//! two-minute trace replays in milliseconds and every run gives the same answers. Admission,
//! waiting in the budgets' priority queues, settling, and the retry verdicts (backoff, failover,
//! breakers, retry budgets) are the engine's own code, the same as in production: a retry is
//! re-admitted at the time the verdict names, with the state the verdict returned.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tollgate::budget::BudgetStats;
use tollgate::clock::ManualClock;
use tollgate::policy::Strategy;
use tollgate::{
    Attempt, Decision, Denial, Engine, Permit, Policy, TargetRef, Verdict, WaitHint, WaitPoll,
    Waiter,
};

use crate::check::{missing_file, plural, report_errors};
use crate::fmt::{Table, money};
use crate::trace::{Incident, Line, OutcomeSpec, Row, known_fields, parse_line};
use crate::{SimulateArgs, exit};

/// `tollgate simulate --help`.
pub(crate) const LONG_ABOUT: &str = "\
Replay a trace of calls through the real engine, in virtual time.

The engine runs on a virtual clock that jumps from event to event, so a two-minute trace replays
in milliseconds, with the same answers every run. Admission, waiting in the budgets' priority
queues (when_exhausted = { wait_up_to = ... }), settling, and retries (backoff, Retry-After,
failover to other targets and fallback routes, circuit breakers, retry budgets, key quarantine)
are the engine's own code. Replay an incident against a new policy: put the incident in the
trace (see INCIDENTS) and run it under the old and the new policy.

TRACE: one JSON object per line; blank lines and lines starting with # are skipped. Rows may be
out of time order: they are replayed sorted by at_ms (ties keep file order). Fields of a call:
  at_ms          required; arrival time in milliseconds (integer >= 0)
  model          required; the model asked for, e.g. \"gpt-4o\"
  tenant, upstream, key, route
                 strings matched by budget scopes and `match` (default \"\"); a call whose model
                 matches a [[route]] (and that names no upstream) is routed by the policy
  priority       queue priority, -32768..=32767; higher goes first among waiting calls (default 0)
  prompt         prompt text, counted with the model's tokenizer; or
  prompt_tokens  the prompt's token count; or
  request        an OpenAI chat request object (messages, max_tokens, ...)
                 (at most one of the three; none means a 0-token prompt)
  max_tokens     completion allowance (default: the request's, else the policy's default)
  deadline_ms    time the whole call (every attempt) may take; no retry is made that could not
                 finish in it (default: none)
  latency_ms     how long each attempt runs once admitted (default 0)
How the FIRST attempt ends:
  usage          the response's usage object (prompt_tokens, completion_tokens,
                 prompt_tokens_details.cached_tokens, ...): the attempt is settled with it
  status         the response's HTTP status (default 200 with usage); >= 400 without usage is
                 not billed
  headers        response headers, an object of string values: Retry-After, retry-after-ms,
                 x-should-retry and x-ratelimit-* are read by the engine
  failure        a transport failure instead of a response: connect (refused), reset, dns, tls,
                 timeout (total), timeout_connect, timeout_first_byte, timeout_idle, malformed,
                 cut_stream
  then           an array of outcome objects (status, headers, usage, latency_ms, failure) for
                 attempts 2, 3, ...; once it runs out, later attempts succeed (with the row's
                 usage, else status 200 with usage unknown)
An attempt with neither usage, status nor failure settles as 'unknown': its whole reservation is
kept, as for a call that timed out. Unknown fields are ignored with one warning each.

INCIDENTS: a line {\"incident\": {...}} makes every attempt admitted on a matching upstream and
model inside a window end the same way, whatever its row says, e.g.
  {\"incident\": {\"upstream\": \"openai\", \"model\": \"gpt-4o*\", \"from_ms\": 10000,
                \"to_ms\": 40000, \"status\": 503, \"latency_ms\": 50}}
  upstream, model   glob patterns (* and ?), default every upstream / model; a call without a
                    route matches by its own upstream and model fields
  from_ms, to_ms    required; the window, from_ms inclusive, to_ms exclusive
  status, headers, failure, latency_ms
                    how matching attempts end; with only latency_ms, attempts end as their row
                    says but take that long
The first incident (in file order) that covers an attempt applies.

EVENTS: in time order; at equal times, settles first, then wake-ups of waiting calls, then
retries, then arrivals in file order. An arrival is admitted at once, refused (deny), or waits in
the queue of the budget that has no room until capacity returns or its wait_up_to runs out. When
an attempt is settled the engine's verdict is followed: done, give up, or retry after a delay,
re-admitted then like a new call (it may wait, or be refused). Attempts are bounded by the
policy's retry.max_attempts; a replay that exceeds 10 events per call + 10000 stops with an
error (exit status 1).

OUTPUT: one JSON line per call on stdout, in file order:
  {\"line\", \"at_ms\", \"tenant\", \"model\",
   \"decision\": \"done\"|\"gave_up\"|\"deny\"   (the final one: done = succeeded, perhaps after
       retries; gave_up = admitted, failed, not retried further; deny = never admitted. Earlier
       versions printed \"go\" for admitted calls: that is now \"done\" or \"gave_up\")
   \"waited_ms\"  (queue wait before the first admission, or before the denial),
   \"budget\", \"key\"  (deny or a refused retry: the deciding budget; else the budget the
       first admission waited on, else null),
   \"reason\", \"message\"  (deny: a stable code and a sentence; gave_up: the give-up code and
       sentence, or for a retry refused admission the denial's; done: null),
   \"tokens\", \"cost\"  (what every attempt of the call was charged; 0 when denied),
   \"budgets\": [[name, key], ...]  (every budget an attempt was held by),
   \"target\"  (where the last attempt went, \"upstream/model (key ID)\", or null),
   \"give_up\"  (gave_up: attempts_exhausted, not_retryable, retry_budget_exhausted,
       server_delay_too_long, deadline_too_close, content_delivered, ..., or retry_denied when
       a retry was refused admission; else null),
   \"attempts\": [{\"n\", \"at_ms\" (virtual time it was admitted), \"waited_ms\", \"target\",
       \"outcome\" (status_503, timeout, status_200, unknown, ...; not_admitted for a refused
       retry), \"verdict\" (the engine's: \"retry in 500 ms on deepseek/deepseek-chat ...\",
       \"gave up: ...\", or done)}, ...]}
then on stderr: the totals (retries, fallbacks = retries that landed on another target than the
first attempt, give-ups by code), a table per target (attempts, failed, and how often it was
passed over: a fresh call or a retry went elsewhere than to it, its first choice, because its
circuit breaker was open, its keys benched or a budget full), and a table per budget
(admitted, waited, denied, tokens, spend, keys); --summary-json FILE writes the same as JSON.

BAD LINES: a line that is not JSON, lacks at_ms or model, has a field of the wrong type or an
unknown failure name, or is an incident without a window, is named on stderr (FILE:LINE: what
is wrong) and skipped; the replay goes on and the exit status is 2. With --strict the first bad
line stops the run with exit status 2 and nothing is replayed.";

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
    let report = replay(policy, trace.rows, trace.incidents);
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
    if let Some(message) = &report.aborted {
        eprintln!("error: {message}");
        return exit::FAILED;
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

/// A trace read into rows and incidents.
pub(crate) struct Trace {
    /// Good call rows, in file order.
    pub rows: Vec<Row>,
    /// Incidents, in file order.
    pub incidents: Vec<Incident>,
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
    let mut incidents = Vec::new();
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
                    let parsed = parse_line(n, text, &mut unknown);
                    for seen in &unknown[known..] {
                        let (field, fields) = known_fields(seen);
                        let place = match seen.split_once('.') {
                            Some((place, _)) => format!(" in \"{place}\""),
                            None => String::new(),
                        };
                        eprintln!(
                            "{name}:{n}: warning: unknown field \"{field}\"{place} is ignored \
                             (known fields: {})",
                            fields.join(", ")
                        );
                    }
                    Some(parsed)
                }
            }
        };
        match parsed {
            None => {}
            Some(Ok(Line::Call(row))) => rows.push(row),
            Some(Ok(Line::Incident(incident))) => incidents.push(incident),
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
    Ok(Trace {
        rows,
        incidents,
        bad,
    })
}

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

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
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

    /// An attempt ends: settle it and follow the verdict.
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
fn summary_json(report: &Report, skipped: usize) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;

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
