//! Batch runs from Python: [`tollgate::batch::Batch`] with its journal, requests in (one
//! OpenAI Batch API line each, as JSON text), results out (JSON), blocking or through a
//! [`Completer`].
//!
//! A request is `(seq, line)`: `seq` is its place in the caller's sequence (1 for the first),
//! the journal's key across runs. A line the batch cannot send is recorded and handed out as an
//! `invalid_line` result, as `tollgate batch` does with a bad line of a file. A `seq` whose
//! answer the journal records is not sent again; when the journal records another `custom_id`
//! for it, the input is not the one the journal belongs to and the submit is refused.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use serde::Serialize;
use tollgate::batch::{
    Batch, BatchOptions, BatchRequest, BatchResult, Journal, Results, Submitted,
};

use crate::bridge::{Completer, Payload};
use crate::call::interruptible;
use crate::error::ErrorInfo;

/// A result as Python reads it (JSON); `output` is the output line's JSON text.
#[derive(Serialize)]
struct ResultJson<'a> {
    seq: u64,
    custom_id: Option<&'a str>,
    status: &'a str,
    model: Option<&'a str>,
    tokens: u64,
    spend: f64,
    latency_ms: f64,
    recorded: bool,
    output: &'a str,
}

fn result_json(r: &BatchResult, recorded: bool) -> String {
    let j = ResultJson {
        seq: r.seq,
        custom_id: r.custom_id.as_deref(),
        status: &r.status,
        model: r.model.as_deref(),
        tokens: r.tokens,
        spend: r.spend,
        latency_ms: r.latency_ms,
        recorded,
        output: &r.output,
    };
    // Strings and numbers: serialising cannot fail.
    serde_json::to_string(&j).unwrap_or_else(|_| "{}".to_owned())
}

fn journal_error(e: &impl std::fmt::Display) -> Box<ErrorInfo> {
    Box::new(ErrorInfo::new("journal", e.to_string()))
}

/// What a submit and a finish share with the batch.
struct Shared {
    /// The batch until it is finished.
    batch: Mutex<Option<Arc<Batch>>>,
    /// custom_ids met so far (a duplicate is an `invalid_line`).
    seen: Mutex<HashSet<String>>,
    /// The custom_id the journal records for each answered seq.
    recorded_ids: HashMap<u64, Option<String>>,
}

impl Shared {
    fn batch(&self) -> Result<Arc<Batch>, Box<ErrorInfo>> {
        self.batch.lock().clone().ok_or_else(|| {
            Box::new(ErrorInfo::new(
                "closed",
                "this batch is finished: start another one",
            ))
        })
    }
}

/// A running batch.
#[pyclass(frozen, module = "tollgate._native")]
pub struct BatchNative {
    shared: Arc<Shared>,
    results: Arc<tokio::sync::Mutex<Results>>,
    /// Results the journal recorded before this run (JSON), handed out first.
    recorded: Mutex<Vec<String>>,
}

/// Starts a batch on `engine` (see [`BatchNative`]); `journal` is a directory.
pub fn start(
    engine: tollgate::Engine,
    journal: Option<&str>,
    options: BatchOptions,
) -> Result<BatchNative, Box<ErrorInfo>> {
    let (journal, recorded) = match journal {
        Some(dir) => {
            let j = Journal::open(Path::new(dir)).map_err(|e| journal_error(&e))?;
            let recorded = j.results().map_err(|e| journal_error(&e))?;
            (Some(j), recorded)
        }
        None => (None, vec![]),
    };
    let _runtime = crate::runtime().enter();
    let (batch, results) = Batch::start(engine, journal, options).map_err(|e| journal_error(&e))?;
    let recorded_ids = recorded
        .iter()
        .map(|r| (r.seq, r.custom_id.clone()))
        .collect();
    let mut recorded: Vec<String> = recorded.iter().map(|r| result_json(r, true)).collect();
    recorded.reverse(); // popped from the end: oldest first
    Ok(BatchNative {
        shared: Arc::new(Shared {
            batch: Mutex::new(Some(Arc::new(batch))),
            seen: Mutex::new(HashSet::new()),
            recorded_ids,
        }),
        results: Arc::new(tokio::sync::Mutex::new(results)),
        recorded: Mutex::new(recorded),
    })
}

/// Submits line `seq`: `queued`, `already_answered`, `invalid_line` (recorded as an error
/// result) or `stopped`.
async fn submit(shared: Arc<Shared>, seq: u64, line: String) -> Result<Payload, Box<ErrorInfo>> {
    let batch = shared.batch()?;
    let parsed = BatchRequest::parse_line(seq, &line, &mut shared.seen.lock());
    let custom_id = match &parsed {
        Ok(r) => Some(r.custom_id.as_str()),
        Err(bad) => bad.custom_id.as_deref(),
    };
    if let Some(recorded) = shared.recorded_ids.get(&seq)
        && custom_id.is_some()
        && recorded.as_deref() != custom_id
    {
        return Err(journal_error(&format!(
            "the journal records custom_id {recorded:?} as request {seq}, but request {seq} is now \
             {custom_id:?}: this is not the input the journal belongs to; give the same requests \
             in the same order to resume, or another journal for a new batch",
        )));
    }
    let what = match parsed {
        Ok(request) => match batch.submit(request).await {
            Submitted::Queued => "queued",
            Submitted::AlreadyAnswered => "already_answered",
            Submitted::Stopped => "stopped",
        },
        Err(bad) => {
            if batch.answered_before().contains(&seq) {
                "already_answered"
            } else {
                batch.reject(&bad);
                "invalid_line"
            }
        }
    };
    Ok(Payload::Text(Some(what.to_owned())))
}

/// The next result (JSON), `None` once the batch is finished and every result is out.
async fn next(results: Arc<tokio::sync::Mutex<Results>>) -> Result<Payload, Box<ErrorInfo>> {
    let r = results.lock().await.next().await;
    Ok(Payload::Text(r.map(|r| result_json(&r, false))))
}

/// Ends the input and waits for the calls and the journal.
async fn finish(shared: Arc<Shared>) -> Result<Payload, Box<ErrorInfo>> {
    let Some(batch) = shared.batch.lock().take() else {
        return Ok(Payload::Text(None));
    };
    let batch = match Arc::try_unwrap(batch) {
        Ok(b) => b,
        Err(batch) => {
            // A submit is still running; put it back for a later finish.
            *shared.batch.lock() = Some(batch);
            return Err(Box::new(ErrorInfo::new(
                "invalid_argument",
                "a submit is still running: finish after the last submit returned",
            )));
        }
    };
    batch.finish().await.map_err(|e| journal_error(&e))?;
    Ok(Payload::Text(None))
}

fn text(p: Payload) -> Option<String> {
    match p {
        Payload::Text(t) => t,
        _ => unreachable!("batch calls answer text"),
    }
}

#[pymethods]
impl BatchNative {
    /// Submits line `seq` (its JSON text), waiting (GIL released) while `concurrency` requests
    /// are queued.
    fn submit(&self, py: Python<'_>, seq: u64, line: String) -> PyResult<String> {
        let p = interruptible(py, submit(Arc::clone(&self.shared), seq, line))??;
        Ok(text(p).unwrap_or_default())
    }

    /// As `submit`, as call `id` of `completer`.
    fn submit_async(&self, completer: &Completer, id: u64, seq: u64, line: String) {
        completer.spawn(id, submit(Arc::clone(&self.shared), seq, line));
    }

    /// The next result (JSON): first what the journal recorded before this run, then new ones
    /// as they are committed; `None` once the batch is finished and every result is out.
    fn next(&self, py: Python<'_>) -> PyResult<Option<String>> {
        if let Some(r) = self.recorded.lock().pop() {
            return Ok(Some(r));
        }
        Ok(text(interruptible(py, next(Arc::clone(&self.results)))??))
    }

    /// The next recorded result without waiting, `None` when none is left (the asyncio reader
    /// takes these before it awaits `next_async`).
    fn next_recorded(&self) -> Option<String> {
        self.recorded.lock().pop()
    }

    /// As `next` for new results, as call `id` of `completer`.
    fn next_async(&self, completer: &Completer, id: u64) {
        completer.spawn(id, next(Arc::clone(&self.results)));
    }

    /// Ends the input and waits (GIL released) for the calls in flight and the journal.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        interruptible(py, finish(Arc::clone(&self.shared)))??;
        Ok(())
    }

    /// As `finish`, as call `id` of `completer`.
    fn finish_async(&self, completer: &Completer, id: u64) {
        completer.spawn(id, finish(Arc::clone(&self.shared)));
    }

    /// Stops taking requests; calls in flight get the grace period, then the batch ends.
    fn stop(&self) {
        if let Some(b) = self.shared.batch.lock().as_ref() {
            b.stop();
        }
    }

    /// `(in_flight, refused_for_now, answered_before)`.
    fn progress(&self) -> (u64, u64, usize) {
        match self.shared.batch.lock().as_ref() {
            Some(b) => {
                let p = b.progress();
                (p.in_flight, p.refused_for_now, b.answered_before().len())
            }
            None => (0, 0, self.shared.recorded_ids.len()),
        }
    }
}

/// The options of a batch from Python's arguments.
pub fn options(
    concurrency: usize,
    tenant: Option<String>,
    priority: i64,
    grace: f64,
) -> Result<BatchOptions, Box<ErrorInfo>> {
    if concurrency == 0 {
        return Err(Box::new(ErrorInfo::invalid_argument(
            "concurrency must be at least 1",
        )));
    }
    let priority = i16::try_from(priority).map_err(|_| {
        Box::new(ErrorInfo::invalid_argument(format!(
            "priority must be in -32768..=32767 (got {priority})"
        )))
    })?;
    if !(grace.is_finite() && grace >= 0.0) {
        return Err(Box::new(ErrorInfo::invalid_argument(format!(
            "grace must be a non-negative number of seconds (got {grace})"
        ))));
    }
    Ok(BatchOptions {
        concurrency,
        tenant: tenant.unwrap_or_default(),
        priority,
        grace: Duration::from_secs_f64(grace),
    })
}
