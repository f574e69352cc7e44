//! The call API: `send` and `stream` run tollgate's whole pipeline (cache, admission, auth,
//! transport, retries, accounting) on the module's runtime. The blocking forms wait with the
//! GIL released; the asyncio forms run as tasks of a [`crate::bridge::Completer`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tollgate::cache::CacheMode;
use tollgate::transport::sse::Event;
use tollgate::{ChatRequest, ChatResponse, ChatStream, Engine};

use crate::bridge::{Completer, Payload};
use crate::error::{AttemptJson, ErrorInfo, SettlementJson, TargetJson, target_json, usage_array};

/// Events a stream buffers ahead of the Python reader.
const STREAM_BUFFER: usize = 64;

/// Most events one batch hands over.
const BATCH: usize = 256;

/// Who makes a call and how: the `ChatRequest` fields besides the body.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Calling tenant.
    pub tenant: Option<String>,
    /// Route to use instead of the one matching the model.
    pub route: Option<String>,
    /// Upstream when no route applies.
    pub upstream: Option<String>,
    /// Queue priority (higher first).
    pub priority: i32,
    /// Time the whole call may take, in seconds.
    pub deadline: Option<f64>,
    /// `default`, `force` or `bypass`.
    pub cache: Option<String>,
}

/// The `ChatRequest` for a JSON body and its options.
pub fn request_of(body: &[u8], o: CallOptions) -> Result<ChatRequest, Box<ErrorInfo>> {
    let body: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ErrorInfo::new(
            "invalid_request",
            format!("the request body is not JSON: {e}"),
        )
    })?;
    let mut request = ChatRequest::new(body)
        .tenant(o.tenant.unwrap_or_default())
        .route(o.route.unwrap_or_default())
        .upstream(o.upstream.unwrap_or_default())
        .priority(o.priority.clamp(i16::MIN.into(), i16::MAX.into()) as i16);
    if let Some(d) = o.deadline {
        if !d.is_finite() || d < 0.0 {
            return Err(Box::new(ErrorInfo::invalid_argument(format!(
                "deadline must be a non-negative number of seconds, not {d}"
            ))));
        }
        request = request.deadline(Duration::from_secs_f64(d));
    }
    request.cache = match o.cache.as_deref() {
        None | Some("default") => CacheMode::Default,
        Some("force") => CacheMode::Force,
        Some("bypass") => CacheMode::Bypass,
        Some(other) => {
            return Err(Box::new(ErrorInfo::invalid_argument(format!(
                "cache '{other}' is not one of 'default', 'force', 'bypass'"
            ))));
        }
    };
    Ok(request)
}

fn headers_of(map: &http::HeaderMap) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::with_capacity(map.len());
    for (name, value) in map {
        let v = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|s| {
                s.push_str(", ");
                s.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

/// What `send` answers besides the status and the body (JSON, parsed lazily in Python).
#[derive(Serialize)]
struct ResponseMeta {
    headers: HashMap<String, String>,
    usage: Option<[u64; 5]>,
    settlement: Option<SettlementJson>,
    target: Option<TargetJson>,
    attempts: u32,
    history: Vec<AttemptJson>,
    source: &'static str,
    queued: f64,
}

/// A finished `send` as the bridge carries it.
pub fn response_payload(r: ChatResponse) -> Payload {
    let meta = ResponseMeta {
        headers: headers_of(&r.headers),
        usage: r.usage.as_ref().map(usage_array),
        settlement: r.settlement.as_ref().map(SettlementJson::from),
        target: r.target.as_ref().map(target_json),
        attempts: r.attempts,
        history: r.history.iter().map(AttemptJson::from).collect(),
        source: r.source.as_str(),
        queued: r.queued.as_secs_f64(),
    };
    // Serialising plain strings and numbers cannot fail.
    let meta = serde_json::to_string(&meta).unwrap_or_else(|_| "{}".to_owned());
    Payload::Response(r.status, r.body, meta)
}

/// Sends `request` through `engine`, as a payload or an error.
pub async fn send(engine: Engine, request: ChatRequest) -> Result<Payload, Box<ErrorInfo>> {
    match engine.send(request).await {
        Ok(r) => Ok(response_payload(r)),
        Err(e) => Err(Box::new(ErrorInfo::call(&e))),
    }
}

/// Opens a stream for `request` through `engine`.
pub async fn open(engine: Engine, request: ChatRequest) -> Result<Payload, Box<ErrorInfo>> {
    match engine.stream(request).await {
        Ok(s) => Ok(Payload::Stream(NativeStream::pump(s))),
        Err(e) => Err(Box::new(ErrorInfo::call(&e))),
    }
}

/// Runs `future` on the module's runtime and waits for it with the GIL released (for waits
/// that end soon: a task being joined).
pub fn block_on<T: Send>(py: Python<'_>, future: impl std::future::Future<Output = T> + Send) -> T {
    py.detach(|| crate::runtime().block_on(future))
}

/// How often a blocking call looks for a signal (Ctrl-C) while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// As [`block_on`] for a call that may wait long: every 100 ms it takes the GIL to
/// run Python's signal handlers, and when one raises (`KeyboardInterrupt`) the future is
/// dropped — the call is cancelled, its connection closed and its permit released — and the
/// exception is returned.
pub fn interruptible<T: Send>(
    py: Python<'_>,
    future: impl std::future::Future<Output = T> + Send,
) -> PyResult<T> {
    let mut future = std::pin::pin!(future);
    loop {
        // The timer is made inside the runtime (it needs its time driver).
        let step = py.detach(|| {
            crate::runtime()
                .block_on(async { tokio::time::timeout(SIGNAL_CHECK, future.as_mut()).await })
        });
        match step {
            Ok(value) => return Ok(value),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// The head of a stream (JSON): status, headers, source, attempts, history, target, queued.
#[derive(Serialize)]
struct StreamHead {
    status: u16,
    headers: HashMap<String, String>,
    source: &'static str,
    attempts: u32,
    history: Vec<AttemptJson>,
    target: Option<TargetJson>,
    queued: f64,
}

/// What is known once a stream ended (JSON).
#[derive(Serialize)]
struct StreamEnd {
    usage: Option<[u64; 5]>,
    settlement: Option<SettlementJson>,
    target: Option<TargetJson>,
    attempts: u32,
}

fn end_of(s: &ChatStream) -> String {
    let end = StreamEnd {
        usage: s.usage().as_ref().map(usage_array),
        settlement: s.settlement().map(SettlementJson::from),
        target: s.target().map(target_json),
        attempts: s.attempts(),
    };
    serde_json::to_string(&end).unwrap_or_else(|_| "{}".to_owned())
}

/// What the pump hands the reader.
enum Item {
    Event(Event),
    /// The stream completed: the end's JSON.
    End(String),
    /// It failed: the error, and the data of the SSE error event a proxy would send.
    Fail(Box<ErrorInfo>, String),
}

/// The reader's side: the channel and an item held back for the next batch.
struct Reader {
    rx: mpsc::Receiver<Item>,
    held: Option<Item>,
    over: bool,
}

/// What one read of a stream hands over.
#[derive(Default)]
pub struct Batch {
    /// The data of the events, in arrival order (`[DONE]` included), when not `encoded`.
    data: Vec<String>,
    /// The events that carry a type or an id, as JSON `[[index, event, id], ...]`.
    named: Option<String>,
    /// The events framed as SSE, one buffer (the httpx transport's form).
    encoded: Option<Vec<u8>>,
    /// True when no event follows these.
    done: bool,
    /// Once the stream completed: the end's JSON.
    end: Option<String>,
}

impl Batch {
    /// `(data, named, encoded, done, end)` for Python.
    pub fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let encoded = self.encoded.map(|b| PyBytes::new(py, &b));
        Ok((self.data, self.named, encoded, self.done, self.end)
            .into_pyobject(py)?
            .into_any()
            .unbind())
    }
}

async fn read(
    reader: Arc<tokio::sync::Mutex<Reader>>,
    encode: bool,
) -> Result<Batch, Box<ErrorInfo>> {
    let mut r = reader.lock().await;
    let mut batch = Batch::default();
    let mut out = Vec::new();
    let mut named: Vec<(usize, Option<String>, Option<String>)> = Vec::new();
    if r.over {
        batch.done = true;
        return Ok(batch);
    }
    let mut item = match r.held.take() {
        Some(item) => Some(item),
        None => r.rx.recv().await,
    };
    let mut n = 0;
    loop {
        match item {
            None => {
                // The pump ended without an end (cancelled).
                r.over = true;
                batch.done = true;
                break;
            }
            Some(Item::Event(e)) => {
                if encode {
                    out.extend_from_slice(e.encode().as_bytes());
                } else {
                    if e.event.is_some() || e.id.is_some() {
                        named.push((batch.data.len(), e.event, e.id));
                    }
                    batch.data.push(e.data);
                }
                n += 1;
            }
            Some(Item::End(end)) => {
                r.over = true;
                batch.done = true;
                batch.end = Some(end);
                break;
            }
            Some(Item::Fail(e, sse)) => {
                if encode {
                    // A proxy's answer: the error as a last event, then the end.
                    out.extend_from_slice(format!("data: {sse}\n\n").as_bytes());
                    r.over = true;
                    batch.done = true;
                    break;
                }
                if n == 0 {
                    r.over = true;
                    return Err(e);
                }
                r.held = Some(Item::Fail(e, sse));
                break;
            }
        }
        if n >= BATCH {
            break;
        }
        item = match r.rx.try_recv() {
            Ok(next) => Some(next),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
    }
    if encode {
        batch.encoded = Some(out);
    }
    if !named.is_empty() {
        batch.named = serde_json::to_string(&named).ok();
    }
    Ok(batch)
}

/// An open stream: a task on the runtime reads tollgate's `ChatStream` into a bounded channel
/// and reads hand over what arrived. Closing it (or dropping it) aborts the task, which drops
/// the `ChatStream`: connection closed, permit released.
#[pyclass(frozen, module = "tollgate._native")]
pub struct NativeStream {
    head: String,
    reader: Arc<tokio::sync::Mutex<Reader>>,
    task: tokio::task::AbortHandle,
    joined: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl NativeStream {
    fn pump(mut stream: ChatStream) -> NativeStream {
        let head = StreamHead {
            status: stream.status(),
            headers: headers_of(stream.headers()),
            source: stream.source().as_str(),
            attempts: stream.attempts(),
            history: stream.history().iter().map(AttemptJson::from).collect(),
            target: stream.target().map(target_json),
            queued: stream.queued().as_secs_f64(),
        };
        let head = serde_json::to_string(&head).unwrap_or_else(|_| "{}".to_owned());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = crate::runtime().spawn(async move {
            loop {
                let item = match stream.next().await {
                    Some(Ok(event)) => Item::Event(event),
                    Some(Err(e)) => {
                        Item::Fail(Box::new(ErrorInfo::call(&e)), e.stream_error_data())
                    }
                    None => Item::End(end_of(&stream)),
                };
                let last = !matches!(item, Item::Event(_));
                // A reader that went away cancels the stream (dropped here with it).
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        NativeStream {
            head,
            reader: Arc::new(tokio::sync::Mutex::new(Reader {
                rx,
                held: None,
                over: false,
            })),
            task: task.abort_handle(),
            joined: parking_lot::Mutex::new(Some(task)),
        }
    }
}

impl Drop for NativeStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[pymethods]
impl NativeStream {
    /// The head's JSON: status, headers, source, attempts, history, target, queued.
    #[getter]
    fn head(&self) -> String {
        self.head.clone()
    }

    /// The events that arrived since the last read (waiting for at least one), as `(data,
    /// named, encoded, done, end)`; raises the error that ended the stream. Blocks with the GIL
    /// released.
    fn read(&self, py: Python<'_>, encode: bool) -> PyResult<Py<PyAny>> {
        let reader = Arc::clone(&self.reader);
        let batch = interruptible(py, read(reader, encode))??;
        batch.into_py(py)
    }

    /// As `read`, as call `id` of `completer`.
    fn read_async(&self, completer: &Completer, id: u64, encode: bool) {
        let reader = Arc::clone(&self.reader);
        completer.spawn(
            id,
            async move { read(reader, encode).await.map(Payload::Batch) },
        );
    }

    /// Stops the stream; the connection is closed and the permit released when this returns.
    fn close(&self, py: Python<'_>) {
        self.task.abort();
        let joined = self.joined.lock().take();
        if let Some(task) = joined {
            // Cancelled or finished: either way the ChatStream has been dropped.
            let _ = block_on(py, task);
        }
    }
}
