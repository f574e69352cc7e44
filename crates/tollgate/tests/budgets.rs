//! Budget behaviour through the public decide API, in virtual time.
//!
//! Conformance sequences are ported from governor's tests (`src/gcra.rs` and
//! `tests/direct.rs` of boinkor-net/governor): see tests/data/gcra_conformance.md.

use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::ManualClock;
use tollgate::tokens::Usage;
use tollgate::{Call, Decision, Engine, Outcome, Policy, Prompt, WaitPoll};

fn engine(toml: &str) -> (Engine, Arc<ManualClock>) {
    let policy = match Policy::from_toml(toml) {
        Ok(p) => p,
        Err(e) => panic!("test policy is invalid:\n{e}"),
    };
    let clock = Arc::new(ManualClock::new());
    (Engine::with_clock(policy, clock.clone()), clock)
}

fn at(clock: &ManualClock, ms: u64) {
    clock.set(ms * 1_000_000);
}

/// Admits and immediately settles as sent-without-usage (keeps the reservation).
fn allow(e: &Engine, call: &Call<'_>) -> bool {
    match e.admit(call) {
        Decision::Go(p) => {
            e.settle(p, &Outcome::unknown());
            true
        }
        _ => false,
    }
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        ..Usage::default()
    }
}

#[test]
fn governor_two_per_second_burst_two() {
    let (e, clock) = engine("version = 1\n[[budget]]\nname = \"b\"\nrequests_per_second = 2\n");
    let call = Call::new("m");
    let mut seen = vec![];
    for ms in [0, 1, 2, 1002, 1003, 1004] {
        at(&clock, ms);
        seen.push((ms, allow(&e, &call)));
    }
    assert_eq!(
        seen,
        [
            (0, true),
            (1, true),
            (2, false),
            (1002, true),
            (1003, true),
            (1004, false)
        ]
    );
}

#[test]
fn governor_five_per_second_refills_after_two_seconds() {
    let (e, clock) = engine("version = 1\n[[budget]]\nname = \"b\"\nrequests_per_second = 5\n");
    let call = Call::new("m");
    for round in 0..2 {
        at(&clock, round * 2000);
        for i in 0..5 {
            assert!(allow(&e, &call), "round {round}: call {i} of the burst");
        }
        assert!(!allow(&e, &call), "round {round}: sixth call is refused");
    }
}

#[test]
fn weighted_call_larger_than_burst_never_fits() {
    let (e, _clock) = engine(
        "version = 1\n[[budget]]\nname = \"t\"\ntokens_per_minute = { limit = 1000, burst = 100 }\n",
    );
    let call = Call::new("m").prompt(Prompt::Tokens(90)).max_tokens(20);
    match e.admit(&call) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "never_fits");
            assert_eq!(d.budget.as_deref(), Some("t"));
            assert!(d.to_string().contains("never fit"), "{d}");
        }
        other => panic!("expected never_fits, got {other:?}"),
    }
    // A call that fits is fine, and the refused one took nothing.
    assert!(allow(
        &e,
        &Call::new("m").prompt(Prompt::Tokens(60)).max_tokens(40)
    ));
}

#[test]
fn admission_is_all_or_nothing() {
    let (e, _clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "tenant-tokens"
        scope = ["tenant"]
        tokens_per_minute = 10000
        concurrency = 4
        [[budget]]
        name = "global-requests"
        requests_per_minute = 100
        [[budget]]
        name = "tiny"
        tokens_per_minute = 150
    "#,
    );
    let call = Call::new("m")
        .tenant("acme")
        .prompt(Prompt::Tokens(100))
        .max_tokens(0);
    let Decision::Go(first) = e.admit(&call) else {
        panic!("first call fits everywhere")
    };
    let before: Vec<_> = ["tenant-tokens", "global-requests"]
        .iter()
        .map(|b| e.key_usage(b, &call))
        .collect();
    match e.admit(&call) {
        Decision::Deny(d) => assert_eq!(d.budget.as_deref(), Some("tiny")),
        other => panic!("the third budget must refuse, got {other:?}"),
    }
    let after: Vec<_> = ["tenant-tokens", "global-requests"]
        .iter()
        .map(|b| e.key_usage(b, &call))
        .collect();
    assert_eq!(
        before, after,
        "the first two budgets kept nothing of the refused call"
    );
    assert_eq!(after[0].as_ref().map(|u| u.in_flight), Some(1));
    drop(first);
}

#[test]
fn settle_replaces_reservation_by_usage() {
    let (e, _clock) = engine(
        "version = 1\n[[budget]]\nname = \"t\"\ntokens_per_minute = 6000\nrequests_per_minute = 60\n",
    );
    let call = Call::new("m").prompt(Prompt::Tokens(100)).max_tokens(900);
    let used = |e: &Engine| {
        let u = e.key_usage("t", &call).expect("budget state");
        (u.limits[0].1.round() as u64, u.limits[1].1.round() as u64)
    };
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    assert_eq!(p.reserved_tokens(), 1000);
    assert_eq!(used(&e), (1, 1000), "(requests, tokens) reserved");
    let verdict = e.settle(p, &Outcome::ok(usage(100, 50)));
    let tollgate::Verdict::Done(s) = verdict else {
        panic!()
    };
    assert_eq!(s.tokens, 150);
    assert_eq!(used(&e), (1, 150), "refunded to the reported usage");

    // Usage above the reservation is charged too.
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    e.settle(p, &Outcome::ok(usage(100, 1400)));
    assert_eq!(used(&e), (2, 1650));

    // A failed call is not billed: tokens refunded, the request still counts.
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    e.settle(p, &Outcome::status(500));
    assert_eq!(used(&e), (3, 1650));

    // A call never sent, or a dropped permit, gives everything back.
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    e.settle(p, &Outcome::not_sent());
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    drop(p);
    assert_eq!(used(&e), (3, 1650));

    // Sent without usage (timeout, cut connection): the reservation stays.
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    e.settle(p, &Outcome::unknown());
    assert_eq!(used(&e), (4, 2650));
}

#[test]
fn late_refund_never_returns_refilled_capacity() {
    let (e, clock) = engine("version = 1\n[[budget]]\nname = \"t\"\ntokens_per_minute = 600\n");
    let call = Call::new("m").prompt(Prompt::Tokens(100)).max_tokens(500);
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    // 600 reserved = the whole minute; after 60 s the bucket has refilled by itself.
    at(&clock, 60_000);
    let Decision::Go(q) = e.admit(&call) else {
        panic!("refilled")
    };
    e.settle(p, &Outcome::ok(usage(100, 0)));
    let used = e.key_usage("t", &call).expect("state").limits[0].1;
    assert_eq!(
        used.round() as u64,
        600,
        "the old refund must not eat the new reservation"
    );
    drop(q);
}

#[test]
fn concurrency_slots_release_on_settle_and_drop() {
    let (e, _clock) =
        engine("version = 1\n[[budget]]\nname = \"c\"\nscope = [\"tenant\"]\nconcurrency = 2\n");
    let call = Call::new("m").tenant("a");
    let Decision::Go(p1) = e.admit(&call) else {
        panic!()
    };
    let Decision::Go(p2) = e.admit(&call) else {
        panic!()
    };
    match e.admit(&call) {
        Decision::Deny(d) => assert_eq!(d.code(), "concurrency"),
        other => panic!("{other:?}"),
    }
    assert!(
        allow(&e, &Call::new("m").tenant("b")),
        "another tenant has its own slots"
    );
    drop(p1);
    let Decision::Go(p3) = e.admit(&call) else {
        panic!("slot released on drop")
    };
    e.settle(p2, &Outcome::unknown());
    e.settle(p3, &Outcome::unknown());
    assert_eq!(e.key_usage("c", &call).map(|u| u.in_flight), Some(0));
}

#[test]
fn wait_up_to_then_deny() {
    let (e, clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "w"
        requests_per_second = 1
        when_exhausted = { wait_up_to = "2s" }
    "#,
    );
    let call = Call::new("m");
    assert!(allow(&e, &call));
    match e.admit(&call) {
        Decision::Wait(w) => {
            assert_eq!(w.after, Duration::from_secs(1));
            assert_eq!(&*w.budget, "w");
        }
        other => panic!("{other:?}"),
    }
    // Three more calls queue up in virtual time: 1 s, 2 s, then 3 s > 2 s is refused.
    let mut waiters: Vec<_> = (0..3)
        .map(|_| e.waiter(&call).expect("valid call"))
        .collect();
    let polls: Vec<_> = waiters.iter_mut().map(|w| w.poll()).collect();
    assert!(
        matches!(
            polls[0],
            WaitPoll::Pending {
                until: 1_000_000_000
            }
        ),
        "{:?}",
        polls[0]
    );
    assert!(
        matches!(polls[1], WaitPoll::Pending { .. }),
        "queued behind the first"
    );
    at(&clock, 1000);
    let WaitPoll::Ready(Ok(p)) = waiters[0].poll() else {
        panic!("head admitted at 1 s")
    };
    e.settle(p, &Outcome::unknown());
    assert!(waiters[1].signal().take(), "next in line is woken");
    assert!(matches!(
        waiters[1].poll(),
        WaitPoll::Pending {
            until: 2_000_000_000
        }
    ));
    match waiters[2].poll() {
        WaitPoll::Pending { .. } => {}
        other => panic!("third waits its turn: {other:?}"),
    }
    at(&clock, 2000);
    let WaitPoll::Ready(Ok(_p)) = waiters[1].poll() else {
        panic!("second admitted at 2 s")
    };
    match waiters[2].poll() {
        WaitPoll::Ready(Err(d)) => assert!(
            d.code() == "budget_exhausted" || d.code() == "wait_timeout",
            "{d}"
        ),
        other => panic!("third would need 3 s of waiting: {other:?}"),
    }
    let stats = e.stats();
    assert_eq!((stats[0].admitted, stats[0].waited), (3, 2));
}

#[test]
fn interactive_calls_pass_queued_batch_work() {
    let (e, clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "q"
        requests_per_second = 1
        when_exhausted = { wait_up_to = "60s" }
    "#,
    );
    let batch = Call::new("m").priority(0);
    let interactive = Call::new("m").priority(10);
    assert!(allow(&e, &batch));
    let mut b1 = e.waiter(&batch).expect("valid");
    let mut b2 = e.waiter(&batch).expect("valid");
    assert!(matches!(b1.poll(), WaitPoll::Pending { .. }));
    assert!(matches!(b2.poll(), WaitPoll::Pending { .. }));
    // Plain admission of an equal-priority call may not jump the queue, even with room.
    at(&clock, 1000);
    assert!(matches!(e.admit(&batch), Decision::Wait(_)));
    // A higher priority one queues ahead of the batch calls.
    let mut i1 = e.waiter(&interactive).expect("valid");
    let WaitPoll::Ready(Ok(p)) = i1.poll() else {
        panic!("interactive goes first")
    };
    e.settle(p, &Outcome::unknown());
    assert!(matches!(b1.poll(), WaitPoll::Pending { .. }));
    at(&clock, 2000);
    assert!(
        matches!(b2.poll(), WaitPoll::Pending { .. }),
        "FIFO within a priority"
    );
    let WaitPoll::Ready(Ok(_p)) = b1.poll() else {
        panic!("first batch call next")
    };
}

#[test]
fn key_capacity_evicts_only_idle_keys() {
    let (e, clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "k"
        scope = ["tenant"]
        requests_per_minute = 1
        key_capacity = 2
    "#,
    );
    assert!(allow(&e, &Call::new("m").tenant("a")));
    assert!(allow(&e, &Call::new("m").tenant("b")));
    // Both keys are still refilling: forgetting either would hand it a fresh burst.
    match e.admit(&Call::new("m").tenant("c")) {
        Decision::Deny(d) => assert_eq!(d.code(), "key_capacity"),
        other => panic!("{other:?}"),
    }
    assert!(
        !allow(&e, &Call::new("m").tenant("a")),
        "a is still limited"
    );
    at(&clock, 61_000);
    assert!(
        allow(&e, &Call::new("m").tenant("c")),
        "an idle key made room"
    );
    assert_eq!(e.stats()[0].keys, 2);
}

#[test]
fn spend_budget_uses_prices() {
    let (e, _clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "spend"
        scope = ["tenant"]
        spend_per_day = 1.0
        [prices]
        "my-model" = { input = 10.0, output = 30.0 }
    "#,
    );
    // 50k prompt tokens at $10/M = $0.50 reserved; usage says 40k → $0.40.
    let call = Call::new("my-model")
        .tenant("a")
        .prompt(Prompt::Tokens(50_000))
        .max_tokens(0);
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    assert!((p.estimated_cost() - 0.5).abs() < 1e-9);
    let tollgate::Verdict::Done(s) = e.settle(p, &Outcome::ok(usage(40_000, 0))) else {
        panic!()
    };
    assert!((s.spend - 0.4).abs() < 1e-9, "{s:?}");
    let Decision::Go(p) = e.admit(&call) else {
        panic!("$0.90 of $1.00")
    };
    drop(p);
    let big = Call::new("my-model")
        .tenant("a")
        .prompt(Prompt::Tokens(70_000))
        .max_tokens(0);
    match e.admit(&big) {
        Decision::Deny(d) => assert_eq!(d.code(), "budget_exhausted"),
        other => panic!("$0.40 + $0.70 > $1.00: {other:?}"),
    }
    match e.admit(&Call::new("no-price-model").tenant("a")) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "unknown_price");
            assert!(d.to_string().contains("[prices]"), "{d}");
        }
        other => panic!("{other:?}"),
    }
    let stats = &e.stats()[0];
    assert!((stats.spend - 0.4).abs() < 1e-9);
}

#[test]
fn context_window_refuses_before_sending() {
    let (e, _clock) = engine(
        r#"
        version = 1
        [models."small"]
        context_window = 1000
    "#,
    );
    let call = Call::new("small")
        .prompt(Prompt::Tokens(800))
        .max_tokens(300);
    match e.admit(&call) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "context_window");
            let msg = d.to_string();
            assert!(
                msg.contains("800") && msg.contains("300") && msg.contains("1000"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Without an explicit allowance the default shrinks to what the window leaves.
    let Decision::Go(p) = e.admit(&Call::new("small").prompt(Prompt::Tokens(800))) else {
        panic!()
    };
    assert_eq!(p.completion_allowance(), 200);
}

#[test]
fn budgets_apply_only_to_matching_calls() {
    let (e, _clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "gpt4o"
        scope = ["tenant"]
        match = { model = "gpt-4o*", tenant = ["team-*", "ops"] }
        requests_per_minute = 1
    "#,
    );
    let hit = Call::new("gpt-4o-mini").tenant("team-a");
    assert!(allow(&e, &hit));
    assert!(!allow(&e, &hit));
    assert!(allow(&e, &Call::new("gpt-4o").tenant("team-b")), "own key");
    for _ in 0..3 {
        assert!(
            allow(&e, &Call::new("deepseek-chat").tenant("team-a")),
            "model not matched"
        );
        assert!(
            allow(&e, &Call::new("gpt-4o").tenant("guest")),
            "tenant not matched"
        );
    }
}

#[test]
fn chat_requests_are_counted_for_the_reservation() {
    let (e, _clock) = engine("version = 1\n[[budget]]\nname = \"t\"\ntokens_per_minute = 100000\n");
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": 50
    });
    let call = Call::new("gpt-4o").prompt(Prompt::Request(&body));
    let Decision::Go(p) = e.admit(&call) else {
        panic!()
    };
    // "hello world" = 2 tokens + 3 per message + 1 for the role... + 3 priming, per the cookbook.
    assert!(p.exact_prompt());
    assert!(
        p.prompt_tokens() >= 8 && p.prompt_tokens() <= 10,
        "{}",
        p.prompt_tokens()
    );
    assert_eq!(p.completion_allowance(), 50);
    let bad = serde_json::json!({"model": "gpt-4o"});
    match e.admit(&Call::new("gpt-4o").prompt(Prompt::Request(&bad))) {
        Decision::Deny(d) => assert_eq!(d.code(), "invalid_request"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn eviction_finds_the_one_idle_key_among_many_busy_ones() {
    let (e, clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "k"
        scope = ["tenant"]
        requests_per_minute = 1000
        concurrency = 1
        key_capacity = 200
    "#,
    );
    let tenants: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    // 199 keys hold a permit (busy); one key is used and released (idle once refilled).
    let mut held = vec![];
    for (i, t) in tenants.iter().enumerate() {
        match e.admit(&Call::new("m").tenant(t)) {
            Decision::Go(p) if i == 137 => drop(p),
            Decision::Go(p) => held.push(p),
            other => panic!("{other:?}"),
        }
    }
    at(&clock, 60_000);
    let Decision::Go(p) = e.admit(&Call::new("m").tenant("newcomer")) else {
        panic!("the idle key t137 is evicted to make room")
    };
    assert_eq!(e.stats()[0].keys, 200);
    drop(p);
    drop(held);
}

/// A waiter checks for room, then joins the queue: a slot freed between the two used to signal
/// nobody, and the waiter slept until `wait_up_to` (then was refused) while the slot stayed
/// free. Threads hand one concurrency slot back and forth as fast as they can; every acquire
/// must be admitted (a lost wakeup shows as a refusal after `wait_up_to`).
#[test]
fn a_slot_freed_while_a_waiter_joins_the_queue_wakes_it() {
    let policy = Policy::from_toml(
        r#"
        version = 1
        [[budget]]
        name = "one"
        concurrency = 1
        when_exhausted = { wait_up_to = "5s" }
        "#,
    )
    .expect("valid policy");
    let e = Engine::new(policy);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || {
                let call = Call::new("gpt-4o").prompt(Prompt::Tokens(1)).max_tokens(1);
                for _ in 0..300 {
                    match e.acquire(&call) {
                        Ok(p) => drop(e.settle(p, &Outcome::status(200))),
                        Err(d) => return Err(d.to_string()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread").expect("every acquire admitted");
    }
}

/// A waiting call never waits past its own deadline, even when the budget would let it wait
/// longer (`wait_up_to`): the decide API's waiters keep the deadline as the call API does.
#[test]
fn a_waiter_stops_at_the_calls_deadline() {
    let (e, clock) = engine(
        r#"
        version = 1
        [[budget]]
        name = "one"
        concurrency = 1
        when_exhausted = { wait_up_to = "30s" }
    "#,
    );
    let call = Call::new("m");
    let Decision::Go(held) = e.admit(&call) else {
        panic!("room for one")
    };
    let mut waiter = e
        .waiter(&call.deadline(Duration::from_millis(200)))
        .expect("valid call");
    match waiter.poll() {
        WaitPoll::Pending { until } => assert_eq!(until, 200_000_000, "its deadline, not 30 s"),
        other => panic!("{other:?}"),
    }
    at(&clock, 200);
    match waiter.poll() {
        WaitPoll::Ready(Err(d)) => assert_eq!(d.code(), "wait_timeout"),
        other => panic!("{other:?}"),
    }
    drop(held);
}
