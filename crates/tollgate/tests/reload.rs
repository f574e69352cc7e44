//! Hot reload: state survives, new limits apply at once, bad policies are refused and change
//! nothing, and decisions keep flowing while the policy is swapped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tollgate::clock::ManualClock;
use tollgate::{Call, Decision, Engine, Outcome, Policy, Prompt, WatchEvent};

fn engine(toml: &str) -> Engine {
    let policy = Policy::from_toml(toml).unwrap_or_else(|e| panic!("invalid test policy:\n{e}"));
    Engine::with_clock(policy, Arc::new(ManualClock::new()))
}

const ONE_PER_MINUTE: &str =
    "version = 1\n[[budget]]\nname = \"b\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n";

fn allow(e: &Engine, call: &Call<'_>) -> bool {
    match e.admit(call) {
        Decision::Go(p) => {
            e.settle(p, &Outcome::unknown());
            true
        }
        _ => false,
    }
}

#[test]
fn state_survives_reload_and_new_limit_applies_at_once() {
    let e = engine(ONE_PER_MINUTE);
    let call = Call::new("m").tenant("a");
    assert!(allow(&e, &call));
    assert!(!allow(&e, &call));
    let report = e
        .reload("version = 1\n[[budget]]\nname = \"b\"\nscope = [\"tenant\"]\nrequests_per_minute = 3\n")
        .expect("valid policy");
    assert_eq!(report.kept, ["b"]);
    assert_eq!(report.generation, 2);
    // Burst 3 now, one already used before the reload.
    assert!(allow(&e, &call));
    assert!(allow(&e, &call));
    assert!(
        !allow(&e, &call),
        "the call made before the reload still counts"
    );
}

#[test]
fn invalid_policy_is_refused_and_the_old_one_keeps_running() {
    let e = engine(ONE_PER_MINUTE);
    let call = Call::new("m").tenant("a");
    assert!(allow(&e, &call));
    let errors = e
        .reload("version = 1\n[[budget]]\nname = \"b\"\nrequests_per_minute = 0\nconcurency = 3\n")
        .expect_err("zero limit and a typo");
    assert!(errors.errors.len() >= 2, "every problem listed: {errors}");
    assert_eq!(e.generation(), 1);
    assert!(!allow(&e, &call), "old limit still enforced");
}

#[test]
fn rescoped_budget_starts_afresh() {
    let e = engine(ONE_PER_MINUTE);
    assert!(allow(&e, &Call::new("m").tenant("a")));
    let report = e
        .reload(
            "version = 1\n[[budget]]\nname = \"b\"\nscope = [\"model\"]\nrequests_per_minute = 1\n",
        )
        .expect("valid");
    assert_eq!(report.rescoped, ["b"]);
    assert!(allow(&e, &Call::new("m").tenant("a")));
}

#[test]
fn removed_budget_reports_and_stops_applying() {
    let e = engine(ONE_PER_MINUTE);
    let call = Call::new("m").tenant("a");
    assert!(allow(&e, &call));
    let report = e.reload("version = 1\n").expect("valid");
    assert_eq!(report.removed, ["b"]);
    assert!(allow(&e, &call));
    assert!(e.stats().is_empty());
}

/// Two threads make a million decisions each while a third reloads the policy 1,000 times.
/// The clock is frozen, so nothing refills: the token slot must hold exactly the sum of what
/// was admitted, and the admitted counter exactly the number of decisions.
#[test]
fn two_million_decisions_across_a_thousand_reloads() {
    const PER_THREAD: u64 = 1_000_000;
    const TOKENS: u64 = 3;
    let policy = |rpm: u64| {
        format!(
            "version = 1\n[[budget]]\nname = \"hot\"\n\
             tokens_per_minute = {{ limit = 60000000, burst = 1000000000000 }}\n\
             requests_per_minute = {{ limit = {rpm}, burst = 1000000000000 }}\n"
        )
    };
    let e = engine(&policy(1_000_000_000));
    let done = AtomicBool::new(false);
    let reloads = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let e = &e;
                s.spawn(move || {
                    let tenant = if t == 0 { "a" } else { "b" };
                    let call = Call::new("m")
                        .tenant(tenant)
                        .prompt(Prompt::Tokens(TOKENS))
                        .max_tokens(0);
                    let mut admitted = 0u64;
                    for _ in 0..PER_THREAD {
                        if let Decision::Go(p) = e.admit(&call) {
                            e.settle(p, &Outcome::unknown());
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let reloader = s.spawn(|| {
            let mut n = 0;
            while n < 1000 {
                let rpm = if n % 2 == 0 {
                    2_000_000_000
                } else {
                    1_000_000_000
                };
                e.reload(&policy(rpm)).expect("valid");
                n += 1;
                if done.load(Ordering::Acquire) {
                    continue; // finish the thousand even if the workers are done
                }
                std::thread::yield_now();
            }
            n
        });
        let admitted: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        done.store(true, Ordering::Release);
        assert_eq!(admitted, 2 * PER_THREAD, "no decision lost");
        reloader.join().expect("reloader")
    });
    assert_eq!(reloads, 1000);
    assert_eq!(e.generation(), 1001);
    let stats = &e.stats()[0];
    assert_eq!(stats.admitted, 2 * PER_THREAD, "each decision counted once");
    assert_eq!(stats.tokens, 2 * PER_THREAD * TOKENS);
    let usage = e.key_usage("hot", &Call::new("m")).expect("state");
    let tokens_used = usage
        .limits
        .iter()
        .find(|l| l.0.as_str() == "tokens_per_minute")
        .expect("tpm")
        .1;
    assert_eq!(
        tokens_used,
        (2 * PER_THREAD * TOKENS) as f64,
        "nothing charged twice or lost"
    );
}

#[test]
fn watched_file_reloads_and_refuses() {
    let dir = std::env::temp_dir().join(format!("tollgate-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.toml");
    std::fs::write(&path, ONE_PER_MINUTE).expect("write");
    let e = engine(ONE_PER_MINUTE);
    let (tx, rx) = mpsc::channel();
    let watcher = e.watch(&path, Duration::from_millis(20), move |ev| {
        let _ = tx.send(ev);
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("watch event within 20 s")
    };

    std::fs::write(&path, ONE_PER_MINUTE.replace("minute = 1", "minute = 5")).expect("write");
    match next() {
        WatchEvent::Reloaded(r) => assert_eq!(r.kept, ["b"]),
        other => panic!("{other:?}"),
    }
    std::fs::write(
        &path,
        "version = 1\n[[budget]]\nname = \"b\"\nrequests_per_minute = -1\n",
    )
    .expect("write");
    match next() {
        WatchEvent::Refused(errors) => assert!(!errors.errors.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.generation(), 2, "refused file changed nothing");
    std::fs::remove_file(&path).expect("remove");
    match next() {
        WatchEvent::Unreadable(msg) => assert!(msg.contains("policy.toml"), "{msg}"),
        other => panic!("{other:?}"),
    }
    drop(watcher);
    let _ = std::fs::remove_dir_all(&dir);
}
