//! `tollgate simulate`: replays a trace of calls through the real engine in virtual time.
//!
//! The engine runs on a [`ManualClock`](tollgate::clock::ManualClock) that the event loop sets
//! to each event's time, so a two-minute trace replays in milliseconds and every run gives the
//! same answers. Admission, waiting in the budgets' priority queues, settling, and the retry
//! verdicts (backoff, failover, breakers, retry budgets) are the engine's own code, the same as
//! in production: a retry is re-admitted at the time the verdict names, with the state the
//! verdict returned.
//!
//! [`read`](mod@read) reads the trace, [`replay`](mod@replay) drives the engine in virtual time,
//! [`report`] holds what each call came to (one JSON line per call) and [`summary`] the totals
//! and tables after it.

mod read;
mod replay;
mod report;
mod summary;

use std::path::Path;

use tollgate::Policy;

use crate::check::{missing_file, plural, report_errors};
use crate::{SimulateArgs, exit};
use read::{Stop, read_trace};
use replay::replay;
use report::print_calls;
use summary::{summary_json, summary_text};

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
  failure        a transport failure instead of a response, by the code attempt records show:
                 connect_refused, connect_reset, connect_dns, connect_tls, connect_other,
                 timeout_connect, timeout_first_byte, timeout_idle, timeout_total, malformed,
                 cut_stream; or a short form: connect (= connect_other), reset, dns, tls,
                 timeout (= timeout_total)
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

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use tollgate::retry::Failure;

    use crate::trace::FAILURE_SHORT_FORMS;

    #[test]
    fn help_lists_every_failure_name() {
        for f in Failure::TRANSPORT {
            assert!(super::LONG_ABOUT.contains(&*f.code()), "{f:?}");
        }
        for short in FAILURE_SHORT_FORMS {
            assert!(super::LONG_ABOUT.contains(&format!(" {short}")), "{short}");
        }
    }
}
