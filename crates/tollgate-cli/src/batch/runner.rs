//! The embeddable part: [`Batch`] takes entries in and hands out journaled records.
//!
//! Every call goes through [`Engine::send`] (cache, budgets, retries, fallbacks), at most
//! `concurrency` at once, at a low queue priority so interactive calls sharing a budget go
//! first. A budget that refuses a call for now (`budget_exhausted`, concurrency, a target
//! passed over for a known time) makes the call wait and ask again, however long that takes:
//! a batch waits for room rather than failing. A result is handed out only after its journal
//! commit (see [`super::journal::write_loop`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tollgate::{CallError, ChatRequest, ChatResponse, DenyReason, Engine};

use super::input::{Bad, Entry};
use super::journal::{Journal, Msg, Record, write_loop};

/// How a batch runs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Calls in flight at most.
    pub concurrency: usize,
    /// Tenant of lines that name none.
    pub tenant: String,
    /// Queue priority of lines that give none (low: interactive calls go first).
    pub priority: i16,
    /// After a stop, how long calls in flight may take to finish.
    pub grace: Duration,
}

/// Live counts for a progress display.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Calls started and not yet answered.
    pub in_flight: AtomicU64,
    /// Of those, calls waiting for budget room between refusals.
    pub waiting: AtomicU64,
}

/// A running batch.
pub(crate) struct Batch {
    input: Option<mpsc::Sender<Entry>>,
    journal: Option<std::sync::mpsc::Sender<Msg>>,
    stop: watch::Sender<bool>,
    runner: tokio::task::JoinHandle<()>,
    writer: std::thread::JoinHandle<Result<(), String>>,
    /// Live counts.
    pub counters: Arc<Counters>,
}

impl Batch {
    /// Starts a batch on `engine` recording into `journal` and appending to `out`; returns it
    /// and the stream of recorded results. Must be called inside a tokio runtime.
    pub(crate) fn start(
        engine: Engine,
        journal: Journal,
        out: std::fs::File,
        options: Options,
    ) -> (Batch, mpsc::UnboundedReceiver<Record>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (journal_tx, journal_rx) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("tollgate-batch-journal".into())
            .spawn(move || write_loop(journal, out, journal_rx, done_tx))
            .expect("a thread can be started at start-up");
        let (input_tx, input_rx) = mpsc::channel(options.concurrency.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let runner = tokio::spawn(run(
            engine,
            input_rx,
            journal_tx.clone(),
            options,
            Arc::clone(&counters),
            stop_rx,
        ));
        let batch = Batch {
            input: Some(input_tx),
            journal: Some(journal_tx),
            stop: stop_tx,
            runner,
            writer,
            counters,
        };
        (batch, done_rx)
    }

    /// Queues an entry (waits while `concurrency` entries are queued). False once stopped.
    pub(crate) async fn send(&self, entry: Entry) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        match &self.input {
            Some(tx) => tx.send(entry).await.is_ok(),
            None => false,
        }
    }

    /// Records a line that cannot be sent, as an error in the output.
    pub(crate) fn reject(&self, bad: &Bad) {
        let output = json!({
            "id": format!("batch_req_{}", bad.line),
            "custom_id": bad.custom_id,
            "response": null,
            "error": {"code": "invalid_line", "message": bad.message, "line": bad.line},
            "usage": null,
            "cost": null,
            "attempts": 0,
        });
        if let Some(j) = &self.journal {
            let _ = j.send(Msg::Result(Record {
                line: bad.line,
                custom_id: bad.custom_id.clone(),
                status: "invalid_line".into(),
                model: None,
                tokens: 0,
                spend: 0.0,
                latency_ms: 0.0,
                output: output.to_string(),
            }));
        }
    }

    /// A handle that stops the batch: `send(true)` stops taking entries; calls in flight get
    /// the grace period to finish, waiting ones are dropped unrecorded (a rerun sends them).
    pub(crate) fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Ends the input, waits for the calls and the journal; `Err` when the journal failed.
    pub(crate) async fn finish(mut self) -> Result<(), String> {
        self.input = None;
        let _ = (&mut self.runner).await;
        self.journal = None;
        let writer = self.writer;
        match tokio::task::spawn_blocking(move || writer.join()).await {
            Ok(Ok(r)) => r,
            _ => Err("the journal writer stopped".into()),
        }
    }
}

/// Resolves once `stop` says stop (never when its sender is gone without saying it).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run(
    engine: Engine,
    mut input: mpsc::Receiver<Entry>,
    journal: std::sync::mpsc::Sender<Msg>,
    options: Options,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            s = Arc::clone(&slots).acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let entry = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            e = input.recv() => e,
        };
        let Some(entry) = entry else { break };
        let (engine, journal, counters, stop) = (
            engine.clone(),
            journal.clone(),
            Arc::clone(&counters),
            stop.clone(),
        );
        let (tenant, priority) = (options.tenant.clone(), options.priority);
        tasks.spawn(async move {
            call(engine, entry, &tenant, priority, &journal, &counters, stop).await;
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Every call to its end; after a stop (now or while draining), the grace period at most.
    {
        let all = async { while tasks.join_next().await.is_some() {} };
        let grace = async {
            stopped(&mut stop).await;
            tokio::time::sleep(options.grace).await;
        };
        tokio::select! {
            _ = all => {}
            _ = grace => {}
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// How long to wait before asking again after this refusal; `None`: it is final.
fn wait_for(e: &CallError) -> Option<Duration> {
    let CallError::Denied(d) = e else { return None };
    let after = match &d.reason {
        DenyReason::Exhausted { retry_after, .. } => *retry_after,
        DenyReason::Unavailable { retry_in, .. } => retry_in.unwrap_or(Duration::from_secs(1)),
        DenyReason::Concurrency { .. }
        | DenyReason::WaitedTooLong { .. }
        | DenyReason::StoreUnavailable { .. } => Duration::from_millis(50),
        _ => return None,
    };
    Some(after.clamp(Duration::from_millis(5), Duration::from_secs(5)))
}

async fn call(
    engine: Engine,
    entry: Entry,
    tenant: &str,
    priority: i16,
    journal: &std::sync::mpsc::Sender<Msg>,
    counters: &Counters,
    mut stop: watch::Receiver<bool>,
) {
    let _ = journal.send(Msg::Sent(entry.line, entry.custom_id.clone()));
    let model = entry
        .body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let request = ChatRequest::new(entry.body)
        .tenant(entry.tenant.as_deref().unwrap_or(tenant))
        .priority(entry.priority.unwrap_or(priority));
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = loop {
        let result = engine.send(request.clone()).await;
        let Some(after) = result.as_ref().err().and_then(wait_for) else {
            break result;
        };
        counters.waiting.fetch_add(1, Ordering::Relaxed);
        let go_on = tokio::select! {
            biased;
            _ = stopped(&mut stop) => false,
            _ = tokio::time::sleep(after) => true,
        };
        counters.waiting.fetch_sub(1, Ordering::Relaxed);
        if !go_on {
            // Never sent: left unrecorded, so a rerun sends it.
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let record = record(entry.line, entry.custom_id, model, latency_ms, &result);
    let _ = journal.send(Msg::Result(record));
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// The output line of an answered (or failed) call, in the Batch API's output format plus
/// `usage`, `cost` and `attempts`.
fn record(
    line: u64,
    custom_id: String,
    model: Option<String>,
    latency_ms: f64,
    result: &Result<ChatResponse, CallError>,
) -> Record {
    let body_json = |b: &[u8]| {
        serde_json::from_slice::<Value>(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
    };
    let (response, error, usage, tokens, spend, attempts, status) = match result {
        Ok(r) => {
            let usage = r.usage.map(|u| {
                json!({
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "total_tokens": u.total_tokens,
                    "cached_prompt_tokens": u.cached_prompt_tokens,
                    "reasoning_tokens": u.reasoning_tokens,
                })
            });
            let tokens = r
                .settlement
                .as_ref()
                .map(|s| s.tokens)
                .or(r.usage.map(|u| u.total_tokens))
                .unwrap_or(0);
            let spend = r
                .settlement
                .as_ref()
                .map_or(0.0, |s| s.cost.map_or(s.spend, |c| c.total()));
            let request_id = r
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let response = json!({
                "status_code": r.status,
                "request_id": request_id,
                "body": body_json(&r.body),
            });
            (
                response,
                Value::Null,
                usage,
                tokens,
                spend,
                r.attempts,
                "ok".to_owned(),
            )
        }
        Err(e) => {
            let (response, attempts) = match e {
                CallError::GaveUp {
                    reason,
                    status,
                    body,
                } => (
                    match status {
                        Some(s) => json!({
                            "status_code": s,
                            "request_id": null,
                            "body": body.as_deref().map(body_json),
                        }),
                        None => Value::Null,
                    },
                    reason.history.len() as u32,
                ),
                _ => (Value::Null, 0),
            };
            let error = json!({"code": e.code(), "message": e.to_string()});
            (response, error, None, 0, 0.0, attempts, e.code().to_owned())
        }
    };
    let output = json!({
        "id": format!("batch_req_{line}"),
        "custom_id": custom_id,
        "response": response,
        "error": error,
        "usage": usage,
        "cost": if status == "ok" { json!(spend) } else { Value::Null },
        "attempts": attempts,
    });
    Record {
        line,
        custom_id: Some(custom_id),
        status,
        model,
        tokens,
        spend,
        latency_ms,
        output: output.to_string(),
    }
}
