//! Batch runs: many chat requests through the engine, durably.
//!
//! A [`Batch`] takes [`BatchRequest`]s in ([`Batch::submit`]) and hands [`BatchResult`]s out
//! ([`Results`]), each after it is recorded in the [`Journal`] when there is one. Every call
//! goes through [`Engine::send`] (cache, budgets, retries, fallbacks, key pools), at most
//! [`BatchOptions::concurrency`] at once, at a low queue priority so interactive calls sharing a
//! budget go first. A budget that refuses a call for now (`budget_exhausted`, concurrency, a
//! target passed over for a known time) makes the call wait and ask again, however long that
//! takes: a batch waits for room rather than failing.
//!
//! Durability: the journal records each call before it goes out and each answer before it is
//! handed out. A request whose answer is recorded is never sent again ([`Batch::submit`] says
//! [`Submitted::AlreadyAnswered`]); one that was in flight when the process died has no answer
//! recorded and is sent again. `tollgate batch` is this module over an OpenAI Batch API file.
//!
//! ```no_run
//! use tollgate::Engine;
//! use tollgate::batch::{Batch, BatchOptions, BatchRequest, Journal};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::from_file("policy.toml")?;
//! let journal = Journal::open("labels.journal".as_ref())?;
//! let (batch, mut results) = Batch::start(engine, Some(journal), BatchOptions::default())?;
//! let feeder = tokio::spawn(async move {
//!     for (i, text) in ["first", "second"].into_iter().enumerate() {
//!         let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
//!         batch.submit(BatchRequest::new(i as u64 + 1, format!("doc-{i}"), body)).await;
//!     }
//!     batch.finish().await
//! });
//! while let Some(r) = results.next().await {
//!     println!("{} {}", r.seq, r.output);
//! }
//! feeder.await??;
//! # Ok(())
//! # }
//! ```

mod input;
mod journal;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::{CallError, ChatRequest, ChatResponse, DenyReason, Engine};

pub use input::{BadLine, BatchRequest, URL};
pub use journal::{BatchResult, FILE as JOURNAL_FILE, Journal, JournalError};
use journal::{Msg, write_loop};

/// How a batch runs.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Calls in flight at most (default 16).
    pub concurrency: usize,
    /// Tenant of requests that name none (default `""`).
    pub tenant: String,
    /// Queue priority of requests that give none (default -100: interactive calls, at 0, go
    /// first).
    pub priority: i16,
    /// After [`Batch::stop`], how long calls in flight may take to finish (default 30 s); the
    /// ones still running then are dropped unrecorded (a rerun sends them again).
    pub grace: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            concurrency: 16,
            tenant: String::new(),
            priority: -100,
            grace: Duration::from_secs(30),
        }
    }
}

/// Live counts of a running batch, for a progress display.
#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicU64,
    sleeping: AtomicU64,
}

/// What a running batch is doing now ([`Batch::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchProgress {
    /// Calls started and not yet answered (waiting ones included).
    pub in_flight: u64,
    /// Of those, calls a budget refused for now, sleeping before they ask again. Calls waiting
    /// in a budget's queue inside [`Engine::send`] are counted by [`Engine::waiting`].
    pub refused_for_now: u64,
}

/// What [`Batch::submit`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Queued; its result will come out of [`Results`].
    Queued,
    /// The journal records its answer: not sent again, nothing comes out.
    AlreadyAnswered,
    /// The batch was stopped: not queued.
    Stopped,
}

/// The results of a [`Batch`], each handed out after its journal commit, in the order answers
/// come. Ends when the batch is finished (or stopped) and every result is out.
#[derive(Debug)]
pub struct Results {
    rx: mpsc::UnboundedReceiver<BatchResult>,
}

impl Results {
    /// The next result; `None` once the batch is over.
    pub async fn next(&mut self) -> Option<BatchResult> {
        self.rx.recv().await
    }

    /// The next result if one is ready now.
    pub fn try_next(&mut self) -> Option<BatchResult> {
        self.rx.try_recv().ok()
    }

    /// The next result, blocking this thread (for a thread of its own or `spawn_blocking`;
    /// panics when called from async code).
    pub fn blocking_next(&mut self) -> Option<BatchResult> {
        self.rx.blocking_recv()
    }

    /// Whether no result is ready now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// A running batch: requests in ([`Batch::submit`]), results out ([`Results`]).
pub struct Batch {
    input: Option<mpsc::Sender<BatchRequest>>,
    journal: Option<std::sync::mpsc::Sender<Msg>>,
    stop: watch::Sender<bool>,
    runner: tokio::task::JoinHandle<()>,
    writer: std::thread::JoinHandle<Result<(), JournalError>>,
    counters: Arc<Counters>,
    answered: HashSet<u64>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("progress", &self.progress())
            .field("answered_before", &self.answered.len())
            .finish()
    }
}

impl Batch {
    /// Starts a batch on `engine`, recording into `journal` when given; returns it and the
    /// stream of results. Requests whose answer the journal already records are skipped by
    /// [`Batch::submit`]. Must be called inside a tokio runtime.
    pub fn start(
        engine: Engine,
        journal: Option<Journal>,
        options: BatchOptions,
    ) -> Result<(Batch, Results), JournalError> {
        let answered = match &journal {
            Some(j) => j.answered()?,
            None => HashSet::new(),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (journal_tx, journal_rx) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("tollgate-batch-journal".into())
            .spawn(move || write_loop(journal, journal_rx, done_tx))
            .map_err(|source| JournalError::Dir {
                path: "(journal writer thread)".into(),
                source,
            })?;
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
            answered,
        };
        Ok((batch, Results { rx: done_rx }))
    }

    /// Queues a request (waits while `concurrency` requests are queued): skipped when the
    /// journal records its answer, refused once the batch is stopped.
    pub async fn submit(&self, request: BatchRequest) -> Submitted {
        if self.answered.contains(&request.seq) {
            return Submitted::AlreadyAnswered;
        }
        if *self.stop.borrow() {
            return Submitted::Stopped;
        }
        match &self.input {
            Some(tx) if tx.send(request).await.is_ok() => Submitted::Queued,
            _ => Submitted::Stopped,
        }
    }

    /// Records a request that cannot be sent as an error (`invalid_line`) in the journal and
    /// the results; skipped when the journal already records it.
    pub fn reject(&self, bad: &BadLine) {
        if self.answered.contains(&bad.seq) {
            return;
        }
        let output = json!({
            "id": format!("batch_req_{}", bad.seq),
            "custom_id": bad.custom_id,
            "response": null,
            "error": {"code": "invalid_line", "message": bad.message, "line": bad.seq},
            "usage": null,
            "cost": null,
            "attempts": 0,
        });
        if let Some(j) = &self.journal {
            let _ = j.send(Msg::Result(BatchResult {
                seq: bad.seq,
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

    /// The `seq` of every request the journal recorded an answer for when the batch started.
    pub fn answered_before(&self) -> &HashSet<u64> {
        &self.answered
    }

    /// Stops taking requests; calls in flight get [`BatchOptions::grace`] to finish, calls
    /// refused for now are dropped unrecorded (a rerun sends them).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that stops the batch from elsewhere (a signal handler): `send(true)` is
    /// [`Batch::stop`].
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// What the batch is doing now.
    pub fn progress(&self) -> BatchProgress {
        BatchProgress {
            in_flight: self.counters.in_flight.load(Ordering::Relaxed),
            refused_for_now: self.counters.sleeping.load(Ordering::Relaxed),
        }
    }

    /// Ends the input, waits for the calls and the journal; `Err` when the journal failed
    /// (what was committed before stays; a rerun goes on from there).
    pub async fn finish(mut self) -> Result<(), JournalError> {
        self.input = None;
        let _ = (&mut self.runner).await;
        self.journal = None;
        let writer = self.writer;
        match tokio::task::spawn_blocking(move || writer.join()).await {
            Ok(Ok(r)) => r,
            _ => Err(JournalError::Dir {
                path: "(journal writer thread)".into(),
                source: std::io::Error::other("the journal writer stopped"),
            }),
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
    mut input: mpsc::Receiver<BatchRequest>,
    journal: std::sync::mpsc::Sender<Msg>,
    options: BatchOptions,
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
    entry: BatchRequest,
    tenant: &str,
    priority: i16,
    journal: &std::sync::mpsc::Sender<Msg>,
    counters: &Counters,
    mut stop: watch::Receiver<bool>,
) {
    let _ = journal.send(Msg::Sent(entry.seq, entry.custom_id.clone()));
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
        counters.sleeping.fetch_add(1, Ordering::Relaxed);
        let go_on = tokio::select! {
            biased;
            _ = stopped(&mut stop) => false,
            _ = tokio::time::sleep(after) => true,
        };
        counters.sleeping.fetch_sub(1, Ordering::Relaxed);
        if !go_on {
            // Never sent: left unrecorded, so a rerun sends it.
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let record = record(entry.seq, entry.custom_id, model, latency_ms, &result);
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
) -> BatchResult {
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
    BatchResult {
        seq: line,
        custom_id: Some(custom_id),
        status,
        model,
        tokens,
        spend,
        latency_ms,
        output: output.to_string(),
    }
}
