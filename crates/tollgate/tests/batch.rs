//! The batch library (`tollgate::batch`) against the testkit upstream: requests in, results
//! out, with and without a journal; a stopped batch resumed by a second one that sends only
//! what has no recorded answer; bad lines; waiting for a budget, counted by
//! `Engine::waiting`. The command over it (`tollgate batch`, kill -9, SIGTERM) is tested in
//! crates/tollgate-cli/tests/batch.rs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::batch::{Batch, BatchOptions, BatchRequest, BatchResult, Journal, Submitted};
use tollgate::{Call, Decision, Engine, Outcome};
use tollgate_testkit::{Latency, TestUpstream};

mod common;
use common::rt;

fn engine(up: &TestUpstream, rest: &str) -> Engine {
    Engine::from_text(&format!(
        "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n{rest}",
        up.base_url()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn journal_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-batch-lib-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn request(seq: u64) -> BatchRequest {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 4,
        "messages": [{"role": "user", "content": format!("doc-{seq}")}]});
    BatchRequest::new(seq, format!("doc-{seq}"), body)
}

/// How many times the upstream was asked for each `doc-N`.
fn asked(up: &TestUpstream) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in up.log() {
        let v = a.json().expect("a JSON body");
        let c = v["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        *m.entry(c).or_default() += 1;
    }
    m
}

/// Submits `1..=n` (stopping the batch after `stop_after` results, if given) and collects
/// what comes out.
async fn run(
    engine: Engine,
    journal: Option<Journal>,
    options: BatchOptions,
    n: u64,
    stop_after: Option<usize>,
) -> (Vec<BatchResult>, HashMap<&'static str, u64>) {
    let (batch, mut results) = Batch::start(engine, journal, options).expect("started");
    let batch = std::sync::Arc::new(batch);
    let feeder = {
        let batch = std::sync::Arc::clone(&batch);
        tokio::spawn(async move {
            let mut said = HashMap::new();
            for seq in 1..=n {
                let what = match batch.submit(request(seq)).await {
                    Submitted::Queued => "queued",
                    Submitted::AlreadyAnswered => "already",
                    Submitted::Stopped => "stopped",
                };
                *said.entry(what).or_insert(0u64) += 1;
            }
            said
        })
    };
    let mut out = vec![];
    // At most 10,000 x 20 ms without a result.
    for _ in 0..10_000 {
        if stop_after.is_some_and(|k| out.len() == k) {
            batch.stop();
        }
        // Results come until the feeder is done (after a stop, it is refused at once).
        let next = tokio::select! {
            r = results.next() => r,
            () = tokio::time::sleep(Duration::from_millis(20)) => None,
        };
        match next {
            Some(r) => out.push(r),
            None if feeder.is_finished() => break,
            None => {}
        }
    }
    let said = feeder.await.expect("the feeder ends");
    let batch = std::sync::Arc::into_inner(batch).expect("the feeder's handle is gone");
    batch.finish().await.expect("the journal is healthy");
    while let Some(r) = results.next().await {
        out.push(r);
    }
    (out, said)
}

#[test]
fn requests_in_results_out_each_once_through_the_engine() {
    let up = TestUpstream::start().unwrap();
    let rt = rt();
    let options = BatchOptions {
        concurrency: 8,
        ..BatchOptions::default()
    };
    let (out, said) = rt.block_on(run(engine(&up, ""), None, options, 200, None));
    assert_eq!(said.get("queued"), Some(&200));
    assert_eq!(out.len(), 200);
    let seqs: HashSet<u64> = out.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), 200, "each request's result once");
    for r in &out {
        assert!(r.is_ok(), "{r:?}");
        let line: Value = serde_json::from_str(&r.output).unwrap();
        assert_eq!(line["custom_id"], format!("doc-{}", r.seq));
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(line["attempts"], 1);
        assert!(r.tokens > 0 && line["usage"]["total_tokens"].as_u64() == Some(r.tokens));
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    }
    let asked = asked(&up);
    assert_eq!(asked.len(), 200);
    assert!(asked.values().all(|&n| n == 1), "nothing asked twice");
}

#[test]
fn a_stopped_batch_is_resumed_from_its_journal_without_asking_twice() {
    let up = TestUpstream::builder()
        .latency(Latency::Fixed(Duration::from_millis(20)))
        .start()
        .unwrap();
    let dir = journal_dir("resume");
    let rt = rt();
    // The first run stops after 30 answers and gives the calls in flight no time: those are
    // dropped unrecorded.
    let options = BatchOptions {
        concurrency: 6,
        grace: Duration::ZERO,
        ..BatchOptions::default()
    };
    let journal = Journal::open(&dir).unwrap();
    journal.bind_input("docs", "h1").unwrap();
    let (first, said) = rt.block_on(run(
        engine(&up, ""),
        Some(journal),
        options.clone(),
        100,
        Some(30),
    ));
    assert!(said.get("stopped").copied().unwrap_or(0) > 0, "{said:?}");
    assert!(first.len() >= 30 && first.len() < 100, "{}", first.len());

    // The journal holds exactly what came out; another input is refused.
    let journal = Journal::open(&dir).unwrap();
    assert!(journal.bind_input("docs", "h2").is_err());
    journal.bind_input("docs", "h1").unwrap();
    let recorded = journal.results().unwrap();
    assert_eq!(recorded, {
        let mut f = first.clone();
        f.sort_by_key(|r| r.seq);
        f
    });

    // The second run sends only what has no recorded answer.
    let (second, said) = rt.block_on(run(engine(&up, ""), Some(journal), options, 100, None));
    assert_eq!(said.get("already").copied(), Some(first.len() as u64));
    assert_eq!(second.len(), 100 - first.len());
    let mut all: Vec<u64> = first.iter().chain(&second).map(|r| r.seq).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<_>>(),
        "each request answered once"
    );

    // Answered in the first run: asked once in all. Others: at most twice (in flight at the
    // stop, then again), and the journal counts the sends.
    let asked = asked(&up);
    let journal = Journal::open(&dir).unwrap();
    for r in &first {
        assert_eq!(asked[&format!("doc-{}", r.seq)], 1, "{r:?}");
        assert_eq!(journal.times_sent(r.seq).unwrap(), 1);
    }
    let resent: Vec<u64> = (1..=100)
        .filter(|s| asked[&format!("doc-{s}")] == 2)
        .collect();
    assert!(
        resent.len() <= 6,
        "only calls in flight are sent again: {resent:?}"
    );
    for s in &resent {
        assert_eq!(journal.times_sent(*s).unwrap(), 2);
    }
    assert_eq!(journal.results().unwrap().len(), 100);
    let out = dir.join("out.jsonl");
    assert_eq!(journal.rebuild_output(&out).unwrap(), 100);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 100);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_lines_are_results_and_recorded_once() {
    let up = TestUpstream::start().unwrap();
    let dir = journal_dir("bad");
    let rt = rt();
    let lines = [
        r#"{"custom_id": "a", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}"#,
        "not json",
        r#"{"custom_id": "a", "body": {"model": "gpt-4o-mini", "messages": []}}"#,
        r#"{"custom_id": "c", "body": {"messages": []}}"#,
    ];
    for round in 0..2 {
        let journal = Journal::open(&dir).unwrap();
        let out = rt.block_on(async {
            let (batch, mut results) =
                Batch::start(engine(&up, ""), Some(journal), BatchOptions::default()).unwrap();
            let mut seen = HashSet::new();
            for (i, l) in lines.iter().enumerate() {
                match BatchRequest::parse_line(i as u64 + 1, l, &mut seen) {
                    Ok(r) => {
                        batch.submit(r).await;
                    }
                    Err(bad) => batch.reject(&bad),
                }
            }
            batch.finish().await.unwrap();
            let mut out = vec![];
            while let Some(r) = results.next().await {
                out.push(r);
            }
            out
        });
        if round == 1 {
            assert!(out.is_empty(), "everything was recorded by the first round");
            continue;
        }
        let by_seq: HashMap<u64, &BatchResult> = out.iter().map(|r| (r.seq, r)).collect();
        assert_eq!(by_seq.len(), 4);
        assert!(by_seq[&1].is_ok());
        for (seq, part) in [(2, "not a JSON object"), (3, "duplicate"), (4, "model")] {
            let r = by_seq[&seq];
            assert_eq!(r.status, "invalid_line");
            let line: Value = serde_json::from_str(&r.output).unwrap();
            assert_eq!(line["error"]["code"], "invalid_line");
            assert_eq!(line["error"]["line"], seq);
            let msg = line["error"]["message"].as_str().unwrap();
            assert!(msg.contains(part), "{seq}: {msg}");
        }
    }
    assert_eq!(
        up.log().len(),
        1,
        "one good line, asked once over both rounds"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_waits_for_a_held_slot_and_the_engine_counts_its_waiting_calls() {
    let up = TestUpstream::start().unwrap();
    let e = engine(
        &up,
        "[[budget]]\nname = \"one\"\nscope = []\nconcurrency = 1\n",
    );
    // An interactive caller holds the only slot.
    let Decision::Go(held) = e.admit(&Call::new("gpt-4o-mini")) else {
        panic!("the slot is free at first");
    };
    let rt = rt();
    rt.block_on(async {
        let options = BatchOptions {
            concurrency: 3,
            ..BatchOptions::default()
        };
        let (batch, mut results) = Batch::start(e.clone(), None, options).unwrap();
        for seq in 1..=3 {
            assert_eq!(batch.submit(request(seq)).await, Submitted::Queued);
        }
        // All three calls wait for the slot, none fails.
        let mut waiting = 0;
        for _ in 0..500 {
            waiting = e.waiting() + batch.progress().refused_for_now;
            if waiting == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(waiting, 3, "three calls wait for the held slot");
        assert_eq!(batch.progress().in_flight, 3);
        assert!(results.try_next().is_none());
        if e.waiting() > 0 {
            let m = e.metrics_text();
            assert!(m.contains("tollgate_calls_waiting "), "{m}");
        }
        e.settle(held, &Outcome::status(200));
        batch.finish().await.unwrap();
        let mut n = 0;
        while let Some(r) = results.next().await {
            assert!(r.is_ok(), "{r:?}");
            n += 1;
        }
        assert_eq!(n, 3);
    });
    assert_eq!(e.waiting(), 0);
    assert!(e.metrics_text().contains("tollgate_calls_waiting 0\n"));
    assert_eq!(up.log().len(), 3);
}
