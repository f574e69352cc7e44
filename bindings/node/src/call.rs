//! The call API: `send` and `stream` run tollgate's whole pipeline (cache, admission, auth,
//! transport, retries, accounting) on the module's tokio runtime, and `cancel` stops a call.
//!
//! Cancellation: `index.js` gives every call an id; `cancel(id)` fires a oneshot the call's
//! future races against, which drops tollgate's future — that closes the upstream connection
//! and drops the permit, freeing its concurrency slot at once. An open stream is cancelled
//! through its [`NativeStream::cancel`] (or when the stream object is garbage-collected).
//!
//! Answers of `send` (`sendQueued`) come back through one threadsafe function per engine
//! (`Answers`), not one promise and one threadsafe function per call: creating and closing a
//! threadsafe function (a libuv async handle) per call cost more main-thread time than the
//! call's own work, and one queue lets the main thread take every answer that arrived in one
//! wake-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::{FnArgs, Function, PromiseRaw};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use napi_derive::napi;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tollgate::cache::CacheMode;
use tollgate::transport::sse::Event;
use tollgate::{ChatRequest, ChatResponse, ChatStream};

use crate::engine::NativeEngine;
use crate::error::{AttemptRecordJs, ErrorInfo, SettlementJs, TargetJs, UsageJs};

/// Events a stream buffers ahead of the JavaScript reader.
const STREAM_BUFFER: usize = 64;

/// Most events one `next()` hands over.
const BATCH: usize = 256;

/// Who makes a call and how: the `ChatRequest` fields besides the body.
#[napi(object)]
#[derive(Debug, Clone, Default)]
pub struct CallOptionsJs {
    /// Calling tenant.
    pub tenant: Option<String>,
    /// Route to use instead of the one matching the model.
    pub route: Option<String>,
    /// Upstream when no route applies.
    pub upstream: Option<String>,
    /// Queue priority (higher first).
    pub priority: Option<i32>,
    /// Time the whole call may take, in ms.
    pub deadline_ms: Option<f64>,
    /// `default`, `force` or `bypass`.
    pub cache: Option<String>,
}

/// The answer of `send`: the status and the body, and everything else as one JSON text
/// (`index.js` parses it): one string crosses into JavaScript instead of an object built
/// property by property through N-API, which cost more than parsing the same fields.
#[napi(object, object_from_js = false)]
pub struct ResponseJs {
    /// HTTP status (2xx).
    pub status: u32,
    /// The JSON body as received.
    pub body: String,
    /// `ResponseMeta` as JSON.
    pub meta: String,
}

/// What `send` answers besides the status and the body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseMeta {
    /// Response headers (several values of one name joined with `, `).
    headers: HashMap<String, String>,
    /// Usage the upstream reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageJs>,
    /// What the call was charged (none for cache hits and shared answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    settlement: Option<SettlementJs>,
    /// Where the answering attempt went, when routed.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<TargetJs>,
    /// Attempts made (0 for cache hits and shared answers).
    attempts: u32,
    /// Earlier attempts that failed, oldest first.
    history: Vec<AttemptRecordJs>,
    /// `upstream`, `cache`, `shared` or `stale`.
    source: &'static str,
    /// Time spent waiting for budget room, in ms.
    queued_ms: f64,
}

/// What is known of a stream once its head arrived.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone)]
pub struct StreamHeadJs {
    /// HTTP status of the answering response.
    pub status: u32,
    /// Its headers (empty for cached answers).
    pub headers: HashMap<String, String>,
    /// `upstream`, `cache`, `shared` or `stale`.
    pub source: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Failed attempts before the answering one.
    pub history: Vec<AttemptRecordJs>,
    /// Where the answering attempt went, when routed.
    pub target: Option<TargetJs>,
    /// Time spent waiting for budget room, in ms.
    pub queued_ms: f64,
}

/// What is known of a stream once it ended.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone)]
pub struct StreamEndJs {
    /// The final usage chunk's, or the count of the streamed text.
    pub usage: Option<UsageJs>,
    /// What the call was charged.
    pub settlement: Option<SettlementJs>,
    /// Where the answering attempt went, when routed.
    pub target: Option<TargetJs>,
    /// Attempts made.
    pub attempts: u32,
}

/// What one `next()` of a stream hands over.
#[napi(object, object_from_js = false)]
pub struct StreamBatchJs {
    /// The data of the events, in arrival order (`[DONE]` included, last): an array of strings
    /// crosses into JavaScript without an object per event.
    pub data: Vec<String>,
    /// The events that carry a type or an id, as JSON `[[index, event, id], ...]` (`null`
    /// where absent); `None` when no event does (OpenAI-style streams).
    pub named: Option<String>,
    /// True when the stream is over: no event will follow these.
    pub done: bool,
    /// Once the stream completed: usage and settlement.
    pub end: Option<StreamEndJs>,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl From<ChatResponse> for ResponseJs {
    fn from(r: ChatResponse) -> ResponseJs {
        let body = match String::from_utf8(r.body.to_vec()) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let meta = ResponseMeta {
            headers: headers_of(&r.headers),
            usage: r.usage.as_ref().map(UsageJs::from),
            settlement: r.settlement.as_ref().map(SettlementJs::from),
            target: r.target.as_ref().map(TargetJs::from),
            attempts: r.attempts,
            history: r.history.iter().map(AttemptRecordJs::from).collect(),
            source: r.source.as_str(),
            queued_ms: ms(r.queued),
        };
        ResponseJs {
            status: u32::from(r.status),
            body,
            // Serialising plain strings and numbers cannot fail.
            meta: serde_json::to_string(&meta).unwrap_or_else(|_| "{}".to_owned()),
        }
    }
}

fn head_of(s: &ChatStream) -> StreamHeadJs {
    StreamHeadJs {
        status: u32::from(s.status()),
        headers: headers_of(s.headers()),
        source: s.source().as_str().to_owned(),
        attempts: s.attempts(),
        history: s.history().iter().map(AttemptRecordJs::from).collect(),
        target: s.target().map(TargetJs::from),
        queued_ms: ms(s.queued()),
    }
}

fn end_of(s: &ChatStream) -> StreamEndJs {
    StreamEndJs {
        usage: s.usage().as_ref().map(UsageJs::from),
        settlement: s.settlement().map(SettlementJs::from),
        target: s.target().map(TargetJs::from),
        attempts: s.attempts(),
    }
}

/// The `ChatRequest` for a JSON body and its options.
fn request_of(body: &str, options: Option<CallOptionsJs>) -> napi::Result<ChatRequest> {
    let body: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ErrorInfo::new("invalid_request", format!("the body is not JSON: {e}")))
        .map_err(ErrorInfo::into_napi)?;
    let o = options.unwrap_or_default();
    let mut request = ChatRequest::new(body)
        .tenant(o.tenant.unwrap_or_default())
        .route(o.route.unwrap_or_default())
        .upstream(o.upstream.unwrap_or_default())
        .priority(
            o.priority
                .unwrap_or(0)
                .clamp(i16::MIN.into(), i16::MAX.into()) as i16,
        );
    if let Some(d) = o.deadline_ms.filter(|d| d.is_finite() && *d >= 0.0) {
        request = request.deadline(Duration::from_secs_f64(d / 1e3));
    }
    request.cache = match o.cache.as_deref() {
        None | Some("default") => CacheMode::Default,
        Some("force") => CacheMode::Force,
        Some("bypass") => CacheMode::Bypass,
        Some(other) => {
            return Err(ErrorInfo::invalid_argument(format!(
                "cache '{other}' is not one of default, force, bypass"
            ))
            .into_napi());
        }
    };
    Ok(request)
}

/// The answer of one `sendQueued` call, for the engine's answer function: the call's id and
/// its response or its error payload (JSON).
pub(crate) struct Answer {
    id: u32,
    result: Result<ResponseJs, String>,
}

/// The engine's answer function, called on the main thread as `(id, errorJson, response)`
/// (exactly one of the last two is `null`). Weak: it keeps the event loop alive only while
/// `refAnswers` says calls are in flight.
pub(crate) type Answers =
    Arc<ThreadsafeFunction<Answer, (), FnArgs<AnswerArgs>, Status, false, true>>;

/// The arguments the answer function gets.
type AnswerArgs = (u32, Option<String>, Option<ResponseJs>);

/// Removes a call's cancel entry when its future ends (or is dropped).
struct Registered {
    cancels: Arc<Mutex<HashMap<u32, oneshot::Sender<()>>>>,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cancels.lock().remove(&self.id);
    }
}

impl NativeEngine {
    /// Registers call `id` for `cancel`; the receiver fires when it is cancelled.
    fn register(&self, id: u32) -> (Registered, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        self.cancels.lock().insert(id, tx);
        (
            Registered {
                cancels: Arc::clone(&self.cancels),
                id,
            },
            rx,
        )
    }
}

#[napi]
impl NativeEngine {
    /// Sets the function the answers of `sendQueued` are given to, as `(id, errorJson,
    /// response)` on the main thread. Set once, before the first `sendQueued`.
    #[napi(
        ts_args_type = "callback: (id: number, error: string | null, response: ResponseJs | null) => void"
    )]
    pub fn listen_answers(
        &mut self,
        callback: Function<'_, FnArgs<AnswerArgs>, ()>,
    ) -> napi::Result<()> {
        let tsfn = callback
            .build_threadsafe_function::<Answer>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(
                |ctx: napi::threadsafe_function::ThreadsafeCallContext<Answer>| {
                    let Answer { id, result } = ctx.value;
                    Ok(FnArgs::from(match result {
                        Ok(r) => (id, None, Some(r)),
                        Err(e) => (id, Some(e), None),
                    }))
                },
            )?;
        self.answers = Some(Arc::new(tsfn));
        Ok(())
    }

    /// Keeps the event loop alive (`true`) while calls of `sendQueued` are in flight, or lets
    /// it end (`false`) once none is. Called by `index.js` when the count of calls waiting for
    /// their answer leaves or reaches zero.
    #[napi]
    pub fn ref_answers(&self, env: Env, on: bool) -> napi::Result<()> {
        let Some(a) = &self.answers else {
            return Ok(());
        };
        // SAFETY: called on the main thread with its env; the function is alive (held here).
        let status = unsafe {
            if on {
                napi::sys::napi_ref_threadsafe_function(env.raw(), a.raw())
            } else {
                napi::sys::napi_unref_threadsafe_function(env.raw(), a.raw())
            }
        };
        if status == napi::sys::Status::napi_ok {
            Ok(())
        } else {
            Err(napi::Error::from_reason(
                "napi_ref_threadsafe_function failed",
            ))
        }
    }

    /// Sends a chat request (`body` is its JSON) through the whole pipeline; the answer (or
    /// the error payload) goes to the `listenAnswers` function under `id`, which is also what
    /// `cancel` names the call by. `cancellable`: register `id` for `cancel` (only calls with
    /// an `AbortSignal` need it).
    #[napi]
    pub fn send_queued(
        &self,
        id: u32,
        body: String,
        options: Option<CallOptionsJs>,
        cancellable: bool,
    ) -> napi::Result<()> {
        let Some(answers) = self.answers.clone() else {
            return Err(ErrorInfo::invalid_argument("listenAnswers was not called").into_napi());
        };
        let engine = self.engine.clone();
        let registered = cancellable.then(|| self.register(id));
        napi::bindgen_prelude::spawn(async move {
            let (registered, cancelled) = registered.unzip();
            let result = match request_of(&body, options) {
                Err(e) => Err(e),
                Ok(request) => {
                    let send = async {
                        let r = engine.send(request).await;
                        r.map_err(|e| ErrorInfo::call(&e).into_napi())
                    };
                    match cancelled {
                        Some(cancelled) => tokio::select! {
                            biased;
                            _ = cancelled => Err(ErrorInfo::aborted().into_napi()),
                            r = send => r,
                        },
                        None => send.await,
                    }
                }
            };
            drop(registered);
            let result = result
                .map(ResponseJs::from)
                .map_err(|mut e| std::mem::take(&mut e.reason));
            answers.call(
                Answer { id, result },
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        });
        Ok(())
    }

    /// Starts a streamed chat request; resolves once an upstream accepted it (or the cache
    /// answered) to a [`NativeStream`].
    #[napi(ts_return_type = "Promise<NativeStream>")]
    pub fn stream<'env>(
        &self,
        env: &'env Env,
        id: u32,
        body: String,
        options: Option<CallOptionsJs>,
    ) -> napi::Result<PromiseRaw<'env, NativeStream>> {
        let engine = self.engine.clone();
        let (registered, cancelled) = self.register(id);
        env.spawn_future(async move {
            let _registered = registered;
            let request = request_of(&body, options)?;
            let stream = tokio::select! {
                biased;
                _ = cancelled => return Err(ErrorInfo::aborted().into_napi()),
                r = engine.stream(request) => r.map_err(|e| ErrorInfo::call(&e).into_napi())?,
            };
            Ok(NativeStream::pump(stream))
        })
    }

    /// Cancels call `id` (a no-op when it already finished).
    #[napi]
    pub fn cancel(&self, id: u32) {
        if let Some(tx) = self.cancels.lock().remove(&id) {
            let _ = tx.send(());
        }
    }

    /// Calls in flight that can be cancelled by id.
    #[napi(getter)]
    pub fn in_flight(&self) -> u32 {
        u32::try_from(self.cancels.lock().len()).unwrap_or(u32::MAX)
    }
}

/// What the pump hands the reader.
enum Item {
    Event(Event),
    End(StreamEndJs),
    Fail(ErrorInfo),
}

/// The reader's side: the channel and an item held back for the next `next()`.
struct Reader {
    rx: mpsc::Receiver<Item>,
    held: Option<Item>,
    over: bool,
}

/// An open stream: a task on the runtime reads tollgate's `ChatStream` into a bounded channel,
/// and `next()` hands over what arrived. Cancelling (or garbage collection) aborts the task,
/// which drops the `ChatStream`: connection closed, permit released.
#[napi]
pub struct NativeStream {
    head: StreamHeadJs,
    reader: Arc<tokio::sync::Mutex<Reader>>,
    task: tokio::task::AbortHandle,
    /// The pump, until `cancel` takes it to wait for its end.
    joined: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl NativeStream {
    fn pump(mut stream: ChatStream) -> NativeStream {
        let head = head_of(&stream);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = tokio::spawn(async move {
            loop {
                let item = match stream.next().await {
                    Some(Ok(event)) => Item::Event(event),
                    Some(Err(e)) => Item::Fail(ErrorInfo::call(&e)),
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
            joined: Mutex::new(Some(task)),
        }
    }
}

impl Drop for NativeStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[napi]
impl NativeStream {
    /// Status, headers, source and attempts of the answering response.
    #[napi(getter)]
    pub fn head(&self) -> StreamHeadJs {
        self.head.clone()
    }

    /// The events that arrived since the last call (waiting for at least one), with `done`
    /// once the stream is over. Rejects with the error that ended the stream.
    #[napi(ts_return_type = "Promise<StreamBatchJs>")]
    pub fn next<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, StreamBatchJs>> {
        let reader = Arc::clone(&self.reader);
        env.spawn_future(async move {
            let mut r = reader.lock().await;
            let mut batch = StreamBatchJs {
                data: Vec::new(),
                named: None,
                done: false,
                end: None,
            };
            let mut named: Vec<(usize, Option<String>, Option<String>)> = Vec::new();
            if r.over {
                batch.done = true;
                return Ok(batch);
            }
            let first = match r.held.take() {
                Some(item) => Some(item),
                None => r.rx.recv().await,
            };
            let mut item = first;
            loop {
                match item {
                    None => {
                        // The task ended without an end (cancelled).
                        r.over = true;
                        batch.done = true;
                        break;
                    }
                    Some(Item::Event(e)) => {
                        if e.event.is_some() || e.id.is_some() {
                            named.push((batch.data.len(), e.event, e.id));
                        }
                        batch.data.push(e.data);
                    }
                    Some(Item::End(end)) => {
                        r.over = true;
                        batch.done = true;
                        batch.end = Some(end);
                        break;
                    }
                    Some(Item::Fail(e)) => {
                        if batch.data.is_empty() {
                            r.over = true;
                            return Err(e.into_napi());
                        }
                        r.held = Some(Item::Fail(e));
                        break;
                    }
                }
                if batch.data.len() >= BATCH {
                    break;
                }
                item = match r.rx.try_recv() {
                    Ok(next) => Some(next),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                };
            }
            if !named.is_empty() {
                batch.named = serde_json::to_string(&named).ok();
            }
            Ok::<_, napi::Error<Status>>(batch)
        })
    }

    /// Stops the stream: the connection is closed and the call's permit released by the time
    /// the returned promise resolves.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn cancel<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.task.abort();
        let joined = self.joined.lock().take();
        env.spawn_future(async move {
            if let Some(task) = joined {
                // Cancelled or finished: either way the ChatStream has been dropped.
                let _ = task.await;
            }
            Ok(())
        })
    }
}
