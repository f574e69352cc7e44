//! Retry verdicts, failover, key pools, quarantine, breakers and server limits through the
//! public decide API, in virtual time.

use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::ManualClock;
use tollgate::retry::{Failure, TimeoutKind};
use tollgate::tokens::Usage;
use tollgate::{
    Attempt, Call, Decision, Engine, Outcome, Permit, Policy, Prompt, Verdict, WaitPoll,
};

const POLICY: &str = r#"
version = 1
[[upstream]]
name = "primary"
base_url = "http://127.0.0.1:9/v1"
auth = { kind = "bearer", keys = ["env:KEY_ONE", "env:KEY_TWO"] }
[[upstream]]
name = "secondary"
base_url = "http://127.0.0.1:9/v1"
[[route]]
model = "gpt-4o"
targets = [{ upstream = "primary", model = "gpt-4o" }, { upstream = "secondary", model = "gpt-4o-mini" }]
[retry]
max_attempts = 3
backoff = { base = "100ms", max = "1s", jitter = "none" }
max_retry_after = "10s"
budget = { ratio = 0.1, max_tokens = 100 }
[breaker]
window = 4
min_calls = 4
failure_rate = 0.5
open_for = "30s"
half_open_calls = 1
"#;

fn engine(toml: &str) -> (Engine, Arc<ManualClock>) {
    let policy = Policy::from_toml(toml).unwrap_or_else(|e| panic!("invalid test policy:\n{e}"));
    let clock = Arc::new(ManualClock::new());
    (Engine::with_clock(policy, clock.clone()), clock)
}

fn call() -> Call<'static> {
    Call::new("gpt-4o")
        .tenant("t")
        .prompt(Prompt::Tokens(10))
        .max_tokens(10)
}

fn go(e: &Engine, call: &Call<'_>) -> Permit {
    match e.admit(call) {
        Decision::Go(p) => p,
        other => panic!("expected go, got {other:?}"),
    }
}

fn target(p: &Permit) -> (String, String, String) {
    let t = p.target().expect("routed call has a target");
    (
        t.upstream.to_string(),
        t.model.to_string(),
        t.key.to_string(),
    )
}

fn ok() -> Outcome<'static> {
    Outcome::ok(Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        ..Usage::default()
    })
}

fn retry(v: Verdict) -> (Duration, Box<Attempt>) {
    match v {
        Verdict::Retry { after, attempt, .. } => (after, attempt),
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[test]
fn server_error_fails_over_to_the_next_target() {
    let (e, _clock) = engine(POLICY);
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "primary");
    assert_eq!(p.attempt_number(), 1);
    let (after, attempt) = retry(e.settle(p, &Outcome::status(503)));
    assert_eq!(
        after,
        Duration::from_millis(100),
        "first backoff, no jitter"
    );
    assert_eq!(
        attempt.next_target().map(|t| &*t.upstream),
        Some("secondary")
    );
    let p = go(&e, &call().attempt(&attempt));
    assert_eq!(
        target(&p),
        ("secondary".into(), "gpt-4o-mini".into(), "default".into())
    );
    assert_eq!(p.attempt_number(), 2);
    assert!(matches!(e.settle(p, &ok()), Verdict::Done(_)));
}

#[test]
fn rate_limited_key_moves_to_the_next_key_and_honours_retry_after() {
    let (e, _clock) = engine(POLICY);
    let p = go(&e, &call());
    let (_, _, first_key) = target(&p);
    let headers: &[(&str, &[u8])] = &[("retry-after", b"2")];
    let (after, attempt) = retry(e.settle(p, &Outcome::status(429).with_headers(headers)));
    assert_eq!(
        after,
        Duration::from_secs(2),
        "Retry-After wins over backoff"
    );
    let named = attempt
        .next_target()
        .expect("the verdict names where to retry");
    assert_eq!(&*named.upstream, "primary");
    assert_ne!(
        &*named.key, first_key,
        "the verdict names the other key, not the failed one"
    );
    let p = go(&e, &call().attempt(&attempt));
    let (up, _, key) = target(&p);
    assert_eq!(up, "primary", "same upstream");
    assert_ne!(key, first_key, "another key of the pool");
    drop(p);
}

#[test]
fn retry_after_above_the_cap_gives_up_at_once() {
    let (e, _clock) = engine(POLICY);
    let p = go(&e, &call());
    let headers: &[(&str, &[u8])] = &[("retry-after", b"120")];
    match e.settle(p, &Outcome::status(429).with_headers(headers)) {
        Verdict::GiveUp { reason, .. } => {
            assert_eq!(reason.code, "server_delay_too_long", "{reason}");
            assert_eq!(reason.history.len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unauthorized_key_is_quarantined() {
    let (e, _clock) = engine(POLICY);
    let p = go(&e, &call());
    let (_, _, bad) = target(&p);
    let (_, attempt) = retry(e.settle(p, &Outcome::status(401)));
    let p = go(&e, &call().attempt(&attempt));
    assert_ne!(target(&p).2, bad);
    assert!(matches!(e.settle(p, &ok()), Verdict::Done(_)));
    // Fresh calls skip the quarantined key too.
    for _ in 0..4 {
        let p = go(&e, &call());
        assert_ne!(target(&p).2, bad, "quarantined key is not used");
        e.settle(p, &ok());
    }
}

#[test]
fn attempts_are_bounded_and_the_reason_chain_names_each() {
    let (e, _clock) = engine(POLICY);
    let mut state: Option<Box<Attempt>> = None;
    let mut verdict = None;
    for _ in 0..3 {
        let c = match &state {
            Some(a) => call().attempt(a),
            None => call(),
        };
        let p = go(&e, &c);
        let v = e.settle(p, &Outcome::status(500));
        match v {
            Verdict::Retry { attempt, .. } => state = Some(attempt),
            other => {
                verdict = Some(other);
                break;
            }
        }
    }
    match verdict.expect("gave up within three attempts") {
        Verdict::GiveUp { reason, .. } => {
            assert_eq!(reason.code, "attempts_exhausted");
            let numbers: Vec<u32> = reason.history.iter().map(|h| h.number).collect();
            assert_eq!(numbers, [1, 2, 3]);
            assert!(reason.history.iter().all(|h| h.outcome == "status_500"));
            let text = reason.to_string();
            assert!(
                text.contains("attempt 1") && text.contains("attempt 3"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_errors_and_delivered_content_are_not_retried() {
    let (e, _clock) = engine(POLICY);
    let p = go(&e, &call());
    match e.settle(p, &Outcome::status(400)) {
        Verdict::GiveUp { reason, .. } => assert_eq!(reason.code, "not_retryable"),
        other => panic!("{other:?}"),
    }
    let p = go(&e, &call());
    let cut = Outcome::failed(Failure::CutStream).with_content_delivered();
    match e.settle(p, &cut) {
        Verdict::GiveUp { reason, .. } => assert_eq!(reason.code, "content_delivered"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_retry_that_cannot_finish_before_the_deadline() {
    let (e, clock) = engine(POLICY);
    let c = call().deadline(Duration::from_millis(150));
    let p = go(&e, &c);
    clock.advance(Duration::from_millis(100));
    match e.settle(
        p,
        &Outcome::failed(Failure::Timeout(TimeoutKind::FirstByte)),
    ) {
        Verdict::GiveUp { reason, .. } => assert_eq!(reason.code, "deadline_too_close", "{reason}"),
        other => panic!("100 ms backoff does not fit in the 50 ms left: {other:?}"),
    }
}

#[test]
fn open_breaker_sends_calls_to_the_fallback_then_probes() {
    let (e, clock) = engine(POLICY);
    for _ in 0..4 {
        let p = go(&e, &call());
        assert_eq!(target(&p).0, "primary");
        let _ = e.settle(p, &Outcome::status(502));
    }
    // Four failures out of four: primary's breaker is open; calls go to secondary.
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "secondary");
    e.settle(p, &ok());
    clock.advance(Duration::from_secs(30));
    let p = go(&e, &call());
    assert_eq!(
        target(&p).0,
        "secondary",
        "still open exactly at the end of open_for"
    );
    e.settle(p, &ok());
    clock.advance(Duration::from_millis(1));
    let probe = go(&e, &call());
    assert_eq!(target(&probe).0, "primary", "half-open: one probe");
    let other = go(&e, &call());
    assert_eq!(target(&other).0, "secondary", "only one probe at a time");
    e.settle(probe, &ok());
    e.settle(other, &ok());
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "primary", "closed after a good probe");
    drop(p);
}

#[test]
fn dropped_probe_gives_its_slot_back() {
    let (e, clock) = engine(POLICY);
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(503));
    }
    clock.advance(Duration::from_secs(31));
    let probe = go(&e, &call());
    assert_eq!(target(&probe).0, "primary");
    drop(probe);
    let again = go(&e, &call());
    assert_eq!(target(&again).0, "primary", "the probe slot came back");
    drop(again);
}

#[test]
fn every_target_unavailable_is_a_clear_denial() {
    let (e, _clock) = engine(&POLICY.replace(
        "targets = [{ upstream = \"primary\", model = \"gpt-4o\" }, { upstream = \"secondary\", model = \"gpt-4o-mini\" }]",
        "targets = [{ upstream = \"secondary\", model = \"gpt-4o-mini\" }]",
    ));
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    match e.admit(&call()) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "unavailable");
            assert!(d.to_string().contains("circuit open"), "{d}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn server_rate_limit_headers_tighten_the_key_until_reset() {
    let (e, clock) = engine(&POLICY.replace(
        "auth = { kind = \"bearer\", keys = [\"env:KEY_ONE\", \"env:KEY_TWO\"] }",
        "auth = { kind = \"bearer\", keys = [\"env:KEY_ONE\"] }",
    ));
    let p = go(&e, &call());
    let headers: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining-requests", b"0"),
        ("x-ratelimit-reset-requests", b"20s"),
    ];
    let v = e.settle(p, &ok().with_headers(headers));
    assert!(matches!(v, Verdict::Done(_)));
    // The server said no more requests on this key for 20 s: the call falls back.
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "secondary");
    drop(p);
    clock.advance(Duration::from_secs(21));
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "primary", "room again after the reset");
    drop(p);
}

#[test]
fn retry_budget_stops_a_storm() {
    let (e, _clock) = engine(
        &POLICY
            .replace(
                "budget = { ratio = 0.1, max_tokens = 100 }",
                "budget = { ratio = 0.1, max_tokens = 4 }",
            )
            .replace("window = 4\nmin_calls = 4", "window = 100\nmin_calls = 100"),
    );
    let mut codes = vec![];
    for _ in 0..4 {
        let p = go(&e, &call());
        codes.push(e.settle(p, &Outcome::status(503)).kind());
    }
    // gRPC A6: a bucket of 4 loses 1 per failure and refuses retries at or below half (2):
    // the first failure leaves 3 (retry), the second 2 (refused).
    assert_eq!(codes, ["retry", "give_up", "give_up", "give_up"]);
}

#[test]
fn retry_budget_refills_with_time_and_a_paced_429_costs_half() {
    let (e, clock) = engine(
        &POLICY
            .replace(
                "budget = { ratio = 0.1, max_tokens = 100 }",
                "budget = { ratio = 0.1, max_tokens = 4, refill_per_second = 0.5, \
                 retry_after_cost = 0.5 }",
            )
            .replace("window = 4\nmin_calls = 4", "window = 100\nmin_calls = 100"),
    );
    let paced: &[(&str, &[u8])] = &[("retry-after", b"1")];
    let settle = |outcome: &Outcome<'_>| {
        let p = go(&e, &call());
        e.settle(p, outcome).kind()
    };
    // 4 -> 3 (retry), 3 -> 2 (not above half: refused).
    assert_eq!(settle(&Outcome::status(503)), "retry");
    assert_eq!(settle(&Outcome::status(503)), "give_up");
    // 3 s at 0.5 token/s: 3.5; two 429s with Retry-After cost 0.5 each (3, 2.5): retried after
    // the server's delay; a 503 then costs 1 (1.5): refused.
    clock.advance(Duration::from_secs(3));
    assert_eq!(settle(&Outcome::status(429).with_headers(paced)), "retry");
    assert_eq!(settle(&Outcome::status(429).with_headers(paced)), "retry");
    assert_eq!(settle(&Outcome::status(503)), "give_up");
    // A 429 without a server delay costs a whole token.
    clock.advance(Duration::from_secs(2)); // 2.5
    assert_eq!(settle(&Outcome::status(429)), "give_up"); // 1.5
}

#[test]
fn breaker_state_survives_reload() {
    let (e, _clock) = engine(POLICY);
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    e.reload(&POLICY.replace("max_attempts = 3", "max_attempts = 4"))
        .expect("valid");
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "secondary", "still open after the reload");
    drop(p);
}

#[test]
fn tenant_budget_follows_the_call_but_an_upstream_budget_falls_back() {
    let tenant = format!(
        "{POLICY}\n[[budget]]\nname = \"tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n"
    );
    let (e, _clock) = engine(&tenant);
    let p = go(&e, &call());
    e.settle(p, &ok());
    match e.admit(&call()) {
        Decision::Deny(d) => assert_eq!(d.budget.as_deref(), Some("tenant")),
        other => panic!("a tenant's budget is not escaped by falling back: {other:?}"),
    }
    let upstream = format!(
        "{POLICY}\n[[budget]]\nname = \"openai-account\"\nmatch = {{ upstream = \"primary\" }}\nrequests_per_minute = 1\n"
    );
    let (e, _clock) = engine(&upstream);
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "primary");
    e.settle(p, &ok());
    let p = go(&e, &call());
    assert_eq!(
        target(&p).0,
        "secondary",
        "the primary's own budget is spent: fall back"
    );
    drop(p);
}

#[test]
fn a_retry_is_not_sent_to_a_target_whose_circuit_is_open() {
    let (e, _clock) = engine(POLICY);
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    let health = e.targets();
    let primary = health
        .iter()
        .find(|t| t.upstream == "primary")
        .expect("primary target");
    assert_eq!(primary.opens, 1);
    assert!(matches!(
        primary.breaker,
        tollgate::retry::BreakerState::Open { .. }
    ));
    // Now on the secondary; when it fails, the retry must not be sent to the open primary.
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "secondary");
    let (_, attempt) = retry(e.settle(p, &Outcome::status(503)));
    let next = attempt.next_target().expect("a target");
    assert_ne!(
        &*next.upstream, "primary",
        "primary's circuit is open when the retry is due"
    );
    let record = &attempt.history()[0];
    assert_eq!(record.outcome, "status_503");
    assert!(record.decision.contains("retry in"), "{record}");
}

fn strategy_policy(strategy: &str, weights: (u32, u32)) -> String {
    format!(
        r#"
version = 1
[[upstream]]
name = "a"
base_url = "http://127.0.0.1:9/v1"
[[upstream]]
name = "b"
base_url = "http://127.0.0.1:9/v1"
[[route]]
model = "m"
strategy = "{strategy}"
targets = [{{ upstream = "a", model = "m", weight = {} }}, {{ upstream = "b", model = "m", weight = {} }}]
[breaker]
enabled = false
"#,
        weights.0, weights.1
    )
}

fn first_choices(e: &Engine, n: usize, latency: impl Fn(&str) -> Duration) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let p = go(e, &Call::new("m").prompt(Prompt::Tokens(1)).max_tokens(1));
        let up = target(&p).0;
        if up == "a" {
            a += 1
        } else {
            b += 1
        }
        let lat = latency(&up);
        e.settle(p, &ok().with_latency(lat));
    }
    (a, b)
}

#[test]
fn weighted_routes_split_traffic_by_weight() {
    let (e, _clock) = engine(&strategy_policy("weighted", (3, 1)));
    let (a, b) = first_choices(&e, 4000, |_| Duration::from_millis(10));
    // 3:1 by weight; the seeded generator makes this exact run repeatable.
    let share = a as f64 / (a + b) as f64;
    assert!((0.70..0.80).contains(&share), "a got {a}, b got {b}");
}

#[test]
fn lowest_latency_routes_prefer_the_faster_target() {
    let (e, _clock) = engine(&strategy_policy("lowest_latency", (1, 1)));
    let (a, b) = first_choices(&e, 2000, |up| {
        if up == "a" {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(20)
        }
    });
    // Power of two choices between two targets always compares both: once both have a latency
    // sample, the faster one wins every time.
    assert!(b > a * 10, "a got {a}, b got {b}");
    assert!(a >= 1, "the slower target was sampled at least once");
    let health = e.targets();
    let lat = |u: &str| {
        health
            .iter()
            .find(|t| t.upstream == u)
            .and_then(|t| t.latency)
    };
    assert!(lat("a") > lat("b"));
}

#[test]
fn fallback_chain_continues_into_the_next_route() {
    let policy = r#"
version = 1
[[upstream]]
name = "main"
base_url = "http://127.0.0.1:9/v1"
[[upstream]]
name = "cheap"
base_url = "http://127.0.0.1:9/v1"
[[route]]
model = "big"
targets = [{ upstream = "main", model = "big" }]
fallback = "small"
[[route]]
name = "small"
model = "small"
targets = [{ upstream = "cheap", model = "small" }]
[retry]
backoff = { base = "10ms", max = "100ms", jitter = "none" }
"#;
    let (e, _clock) = engine(policy);
    let p = go(
        &e,
        &Call::new("big").prompt(Prompt::Tokens(1)).max_tokens(1),
    );
    assert_eq!(target(&p).0, "main");
    let (_, attempt) = retry(e.settle(p, &Outcome::status(503)));
    let next = attempt.next_target().expect("the fallback route's target");
    assert_eq!((&*next.upstream, &*next.route), ("cheap", "small"));
    let p = go(
        &e,
        &Call::new("big")
            .prompt(Prompt::Tokens(1))
            .max_tokens(1)
            .attempt(&attempt),
    );
    assert_eq!(target(&p).0, "cheap");
    drop(p);
}

#[test]
fn synthetic_probes_test_a_sick_upstream_instead_of_users_calls() {
    let policy = POLICY.replace(
        "half_open_calls = 1",
        "half_open_calls = 2\nprobe = { prompt = \"ping\", max_tokens = 1 }",
    );
    let (e, clock) = engine(&policy);
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    assert!(e.probes().is_empty(), "still open: nothing to probe");
    clock.advance(Duration::from_secs(31));
    // Half-open: a user's call goes to the fallback, never to the sick primary.
    let p = go(&e, &call());
    assert_eq!(target(&p).0, "secondary");
    drop(p);
    let probes = e.probes();
    assert_eq!(probes.len(), 2, "one per half-open slot");
    assert_eq!(&*probes[0].target.upstream, "primary");
    assert_eq!(probes[0].request["messages"][0]["content"], "ping");
    assert_eq!(probes[0].request["max_tokens"], 1);
    assert!(
        e.probes().is_empty(),
        "slots are taken while probes are out"
    );
    for probe in probes {
        e.settle_probe(probe, true, Duration::from_millis(40));
    }
    let p = go(&e, &call());
    assert_eq!(
        target(&p).0,
        "primary",
        "two good probes closed the circuit"
    );
    drop(p);
    // A dropped probe frees its slot.
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    clock.advance(Duration::from_secs(31));
    drop(e.probes());
    assert_eq!(e.probes().len(), 2);
}

/// One target whose circuit opens for 30 s after four failures; `max_retry_after` as given.
fn one_target_open(max_retry_after: &str) -> (Engine, Arc<ManualClock>) {
    let (e, clock) = engine(
        &POLICY
            .replace(
                "targets = [{ upstream = \"primary\", model = \"gpt-4o\" }, { upstream = \"secondary\", model = \"gpt-4o-mini\" }]",
                "targets = [{ upstream = \"secondary\", model = \"gpt-4o-mini\" }]",
            )
            .replace("max_retry_after = \"10s\"", &format!("max_retry_after = \"{max_retry_after}\"")),
    );
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    (e, clock)
}

// Item 2 of issue 16: a call whose targets are all passed over for a known time waits for them,
// up to retry.max_retry_after, through every API — not only the call API.

#[test]
fn admit_says_wait_when_every_target_is_back_within_max_retry_after() {
    let (e, clock) = one_target_open("60s");
    match e.admit(&call()) {
        Decision::Wait(hint) => {
            // Open until and including 30 s: the first instant it takes calls is 1 ns later.
            let half_open = Duration::from_secs(30) + Duration::from_nanos(1);
            assert_eq!(hint.after, half_open, "the circuit's open time");
            assert_eq!(&*hint.budget, "", "no budget made it wait");
        }
        other => panic!("expected wait, got {other:?}"),
    }
    clock.advance(Duration::from_secs(31));
    let probe = go(&e, &call());
    assert_eq!(target(&probe).0, "secondary", "half-open: the probe goes");
}

#[test]
fn admit_refuses_when_the_wait_would_exceed_max_retry_after() {
    let (e, _clock) = one_target_open("10s");
    match e.admit(&call()) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "unavailable");
            let half_open = Duration::from_secs(30) + Duration::from_nanos(1);
            assert_eq!(d.retry_after(), Some(half_open));
        }
        other => panic!("expected deny, got {other:?}"),
    }
}

#[test]
fn a_waiter_waits_for_the_circuit_then_goes() {
    let (e, clock) = one_target_open("60s");
    let mut waiter = e.waiter(&call()).expect("a waiter");
    let until = match waiter.poll() {
        WaitPoll::Pending { until } => until,
        other => panic!("expected pending, got {other:?}"),
    };
    assert_eq!(
        until,
        tollgate::clock::Clock::now(&*clock) + 30_000_000_001,
        "until the circuit half-opens"
    );
    clock.advance(Duration::from_secs(31));
    match waiter.poll() {
        WaitPoll::Ready(Ok(p)) => assert_eq!(target(&p).0, "secondary"),
        other => panic!("expected go, got {other:?}"),
    }
}

#[test]
fn a_waiter_gives_up_when_the_wait_would_pass_its_deadline() {
    let (e, _clock) = one_target_open("60s");
    let mut waiter = e
        .waiter(&call().deadline(Duration::from_secs(5)))
        .expect("a waiter");
    match waiter.poll() {
        WaitPoll::Ready(Err(d)) => assert_eq!(d.code(), "unavailable"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn acquire_blocks_until_the_circuit_half_opens() {
    // A real clock: acquire sleeps on the thread. Open for 150 ms.
    let policy = Policy::from_toml(
        &POLICY
            .replace(
                "targets = [{ upstream = \"primary\", model = \"gpt-4o\" }, { upstream = \"secondary\", model = \"gpt-4o-mini\" }]",
                "targets = [{ upstream = \"secondary\", model = \"gpt-4o-mini\" }]",
            )
            .replace("open_for = \"30s\"", "open_for = \"150ms\""),
    )
    .expect("valid policy");
    let e = Engine::new(policy);
    for _ in 0..4 {
        let p = go(&e, &call());
        let _ = e.settle(p, &Outcome::status(500));
    }
    assert!(matches!(e.admit(&call()), Decision::Wait(_)));
    let started = std::time::Instant::now();
    let p = e
        .acquire(&call())
        .expect("admitted once the circuit half-opens");
    assert_eq!(target(&p).0, "secondary");
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "it waited for the circuit rather than failing at once"
    );
}
