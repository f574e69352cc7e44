//! The call API: tollgate makes the HTTP call. A blocking send, an asynchronous send with a
//! callback, a stream with a callback per event, and a task handle that cancels.

use std::ffi::{c_char, c_void};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::{AbortHandle, JoinHandle};

use super::cache::cache_mode;
use super::decide::{
    tg_call, tg_permit, tg_settlement, tg_target, tg_usage, with_call, write_target,
};
use super::engine::{not_on_worker, tg_engine};
use super::error::{boundary, quietly, value};
use super::{
    arg, bytes_arg, json_arg, nanos, out, put, put_some, text_arg, tg_error, tg_status, tg_str,
};
use tollgate::{ChatRequest, ChatResponse, ChatStream, Engine, Permit, Source};

/// Who makes a request and how: all optional. A zero-initialised struct (or a NULL pointer where
/// one is taken) means the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tg_request_options {
    /// Calling tenant, for budgets scoped by tenant.
    pub tenant: tg_str,
    /// Route to use instead of the one matching the model.
    pub route: tg_str,
    /// Upstream to send to when no route applies.
    pub upstream: tg_str,
    /// Queue priority among waiting calls (higher first).
    pub priority: i16,
    /// Time the whole call may take (waiting, every attempt, backoff) in milliseconds; 0 for no
    /// limit beyond the upstream's timeouts.
    pub deadline_ms: u64,
    /// A `tg_cache_mode` value.
    pub cache_mode: u32,
}

/// Where an answer came from.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_source {
    /// An upstream answered this call.
    Upstream = 0,
    /// The response cache.
    Cache = 1,
    /// An identical call in flight at the same time (single-flight).
    Shared = 2,
    /// An expired cache entry, served because every target failed (`stale_if_error`).
    Stale = 3,
}

impl From<Source> for tg_source {
    fn from(s: Source) -> tg_source {
        match s {
            Source::Upstream => tg_source::Upstream,
            Source::Cache => tg_source::Cache,
            Source::Shared => tg_source::Shared,
            Source::Stale => tg_source::Stale,
        }
    }
}

/// An answer of the call API: status, headers, the JSON body, usage, what it was charged and the
/// attempts it took. Owned; free with `tg_response_free`. For a stream (the final callback)
/// the body is empty: the content came as events.
pub struct tg_response {
    response: ChatResponse,
}

/// Called once when an asynchronous acquire ends, on a tollgate worker thread: with an owned
/// `permit` (settle it with `tg_engine_settle`, or free it) and a NULL `error` when the call is
/// admitted, or a NULL `permit` and an owned `error` (`TG_STATUS_DENIED` with the denial,
/// `TG_STATUS_CANCELLED` after `tg_task_cancel`). It must not block for long and must not unwind.
pub type tg_acquire_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, permit: *mut tg_permit, error: *mut tg_error),
>;

/// One event of a streamed answer, borrowed for the duration of the callback.
#[repr(C)]
#[derive(Debug)]
pub struct tg_event {
    /// The SSE `event:` field; empty for the default (`message`).
    pub event: tg_str,
    /// The `data:` payload: a `chat.completion.chunk` JSON, or `[DONE]` for the last event.
    pub data: tg_str,
    /// The last SSE `id:`; empty when none.
    pub id: tg_str,
    /// Whether this is the `data: [DONE]` marker (the last event of a complete stream).
    pub done: bool,
}

/// One finished attempt of a call that was retried.
#[repr(C)]
#[derive(Debug)]
pub struct tg_attempt_record {
    /// 1 for the first attempt.
    pub number: u32,
    /// How it ended, a stable code (`status_503`, `timeout_first_byte`, `connect_refused`, ...).
    pub outcome: tg_str,
    /// What was decided after it, in words.
    pub decision: tg_str,
    /// Whether `target` is set (routed calls).
    pub has_target: bool,
    /// Where it went.
    pub target: tg_target,
}

/// Called once when an asynchronous send ends, on a tollgate worker thread: with an owned
/// `response` and a NULL `error` on success, or a NULL `response` and an owned `error`
/// (`TG_STATUS_CANCELLED` after `tg_task_cancel`). The callee frees what it receives. It must
/// not block for long (it runs on one of few worker threads) and must not unwind.
pub type tg_send_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, response: *mut tg_response, error: *mut tg_error),
>;

/// Called for a stream on a tollgate worker thread: once per event, with `event` set (borrowed
/// for the call) and `end`, `error` NULL; then exactly once more with `event` NULL and either an
/// owned `end` (the stream completed: status, usage, settlement; empty body) or an owned `error`
/// (`TG_STATUS_STREAM_CUT`, `TG_STATUS_CANCELLED`, ...). Events are delivered in order, one
/// callback at a time; a slow callback slows the stream down. It must not unwind.
pub type tg_stream_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        event: *const tg_event,
        end: *mut tg_response,
        error: *mut tg_error,
    ),
>;

/// A call running on tollgate's worker threads. Cancel it with `tg_task_cancel`; free the
/// handle with `tg_task_free` (which does not cancel: the callback still fires).
pub struct tg_task {
    abort: AbortHandle,
    /// Set when the final callback starts (shared with the task's `Finish`).
    ended: Arc<AtomicBool>,
}

/// Builds a request from its JSON body and options.
///
/// # Safety
/// `body` must point to `len` readable bytes; `options` NULL or a valid struct.
unsafe fn request(
    body: *const u8,
    len: usize,
    options: *const tg_request_options,
) -> Result<ChatRequest, Box<tg_error>> {
    // SAFETY: pointer + length from the caller.
    let body = json_arg(unsafe { bytes_arg(body, len, "request")? }, "request")?;
    let mut request = ChatRequest::new(body);
    // SAFETY: NULL or a valid struct, per the contract.
    if let Some(o) = unsafe { options.as_ref() } {
        // SAFETY: borrowed per the contract.
        unsafe {
            request = request
                .tenant(o.tenant.text("options.tenant")?)
                .route(o.route.text("options.route")?)
                .upstream(o.upstream.text("options.upstream")?);
        }
        request = request
            .priority(o.priority)
            .cache_mode(cache_mode(o.cache_mode)?);
        if o.deadline_ms > 0 {
            request = request.deadline(Duration::from_millis(o.deadline_ms));
        }
    }
    Ok(request)
}

/// Sends a chat request through the whole pipeline — cache, admission (waiting where the policy
/// says wait), credentials, transport, retries, fallback, accounting — and **blocks** until it
/// ends. `request` is the OpenAI chat-completions body (JSON); `options` may be NULL.
///
/// On success `*out_response` receives the answer (owned). Call errors come as statuses 100+
/// (`TG_STATUS_DENIED` with the budget, `TG_STATUS_GAVE_UP` with the last status and body, ...);
/// bad input as `TG_STATUS_INVALID_JSON` / `TG_STATUS_INVALID_UTF8`. Returns
/// `TG_STATUS_WRONG_THREAD` inside a tollgate callback.
///
/// # Safety
/// `engine` must be a live engine; `request` must point to `len` readable bytes; `options` NULL or
/// a valid struct; `out_response` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_send(
    engine: *const tg_engine,
    request: *const u8,
    len: usize,
    options: *const tg_request_options,
    out_response: *mut *mut tg_response,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_response = out(out_response, "out_response")?;
        // SAFETY: as documented for this function.
        let request = unsafe { self::request(request, len, options)? };
        not_on_worker("tg_engine_send")?;
        let handle = engine.handle()?;
        // The call runs on this (the host's) thread; a thread the runtime starts from here for
        // blocking work (a DNS lookup) inherits SIGPIPE blocked.
        let response = tollgate::transport::with_sigpipe_blocked(|| {
            handle.block_on(engine.engine.send(request))
        })
        .map_err(|e| tg_error::call(&e))?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            put(
                out_response,
                Box::into_raw(Box::new(tg_response { response })),
            )
        };
        Ok(())
    })
}

/// The caller's `user_data`, carried to a worker thread.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: tollgate never dereferences it; the caller promises it may be used from the worker
// threads (documented on the functions that take it).
unsafe impl Send for UserData {}

impl UserData {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn ptr(self) -> *mut c_void {
        self.0
    }
}

/// The final callback of a task, fired exactly once: by the task when it ends, or by its drop
/// when the task is cancelled (or panics) first.
struct Finish {
    user_data: UserData,
    callback: Callback,
    fired: bool,
    /// Seen by `tg_task_finished`: set just before the final callback runs.
    ended: Arc<AtomicBool>,
    /// The engine's "being freed" flag: an error after it is reported as a cancellation.
    closing: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
enum Callback {
    Send(unsafe extern "C" fn(*mut c_void, *mut tg_response, *mut tg_error)),
    Stream(unsafe extern "C" fn(*mut c_void, *const tg_event, *mut tg_response, *mut tg_error)),
    Acquire(unsafe extern "C" fn(*mut c_void, *mut tg_permit, *mut tg_error)),
}

/// What a task ends with.
enum Done {
    /// The answer of a send or the end of a stream.
    Response(Box<ChatResponse>),
    /// An admitted call (acquire).
    Permit(Permit),
}

impl Finish {
    fn fire(&mut self, result: Result<ChatResponse, Box<tg_error>>) {
        self.fire_with(result.map(|r| Done::Response(Box::new(r))));
    }

    fn fire_with(&mut self, result: Result<Done, Box<tg_error>>) {
        if std::mem::replace(&mut self.fired, true) {
            return;
        }
        self.ended.store(true, Ordering::Release);
        // Freeing the engine shuts its runtime down, which can end a call with a transport
        // error (a closed connection) before the task itself is dropped: that is a cancellation.
        let result = match result {
            Err(e) if self.closing.load(Ordering::Acquire) && e.status != tg_status::Panic => {
                Err(tg_error::new(
                    tg_status::Cancelled,
                    "the call was cancelled: its engine was freed",
                ))
            }
            other => other,
        };
        let user_data = self.user_data.0;
        let (done, error) = match result {
            Ok(done) => (Some(done), std::ptr::null_mut()),
            Err(e) => (None, Box::into_raw(e)),
        };
        let response = |done: Option<Done>| match done {
            Some(Done::Response(response)) => Box::into_raw(Box::new(tg_response {
                response: *response,
            })),
            _ => std::ptr::null_mut(),
        };
        // SAFETY: the caller's callback, with its user_data; ownership of the response, permit or
        // error passes to it as documented.
        unsafe {
            match self.callback {
                Callback::Send(f) => f(user_data, response(done), error),
                Callback::Stream(f) => f(user_data, std::ptr::null(), response(done), error),
                Callback::Acquire(f) => {
                    let permit = match done {
                        Some(Done::Permit(p)) => tg_permit::give(p),
                        _ => std::ptr::null_mut(),
                    };
                    f(user_data, permit, error)
                }
            }
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.fired {
            return;
        }
        // Dropped unfired: the task was cancelled (tg_task_cancel, engine freed), or a bug
        // panicked inside it (tokio contains the panic in the task; this runs while unwinding).
        let error = if std::thread::panicking() {
            tg_error::new(
                tg_status::Panic,
                "internal error (panic) in tollgate while the call ran",
            )
        } else {
            tg_error::new(
                tg_status::Cancelled,
                "the call was cancelled before it finished",
            )
        };
        self.fire_with(Err(error));
    }
}

impl Finish {
    fn new(engine: &tg_engine, user_data: *mut c_void, callback: Callback) -> Finish {
        Finish {
            user_data: UserData(user_data),
            callback,
            fired: false,
            ended: Arc::new(AtomicBool::new(false)),
            closing: Arc::clone(&engine.closing),
        }
    }
}

/// Starts an asynchronous call: reads the request, prepares its final callback, spawns `work`
/// with them on the engine's workers and hands out the task handle when asked.
///
/// # Safety
/// As `tg_engine_send_async`.
#[allow(clippy::too_many_arguments)]
unsafe fn start<Fut>(
    engine: *const tg_engine,
    request: *const u8,
    len: usize,
    options: *const tg_request_options,
    callback: Callback,
    user_data: *mut c_void,
    out_task: *mut *mut tg_task,
    work: impl FnOnce(Engine, ChatRequest, Finish) -> Fut,
) -> Result<(), Box<tg_error>>
where
    Fut: Future<Output = ()> + Send + 'static,
{
    // SAFETY: NULL or live, per the contract.
    let engine = unsafe { arg(engine, "engine")? };
    // SAFETY: forwarded to the caller.
    let request = unsafe { self::request(request, len, options)? };
    let finish = Finish::new(engine, user_data, callback);
    let ended = Arc::clone(&finish.ended);
    let task = engine
        .handle()?
        .spawn(work(engine.engine.clone(), request, finish));
    // SAFETY: forwarded to the caller.
    unsafe { hand_out(out_task, &task, ended) };
    Ok(())
}

/// Gives the caller a handle on a spawned task, when it asked for one (`out_task` not NULL).
///
/// # Safety
/// `out_task` must be NULL or writable.
unsafe fn hand_out(out_task: *mut *mut tg_task, task: &JoinHandle<()>, ended: Arc<AtomicBool>) {
    if !out_task.is_null() {
        let task = Box::new(tg_task {
            abort: task.abort_handle(),
            ended,
        });
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { put(out_task, Box::into_raw(task)) };
    }
}

/// Starts a send on tollgate's worker threads and returns at once. `callback` fires exactly
/// once, on a worker thread, with the answer or the error (see `tg_send_callback`); cancelling
/// gives `TG_STATUS_CANCELLED`, as does freeing the engine while the call runs.
///
/// When this function returns an error the callback is never called. `out_task` may be NULL when
/// the caller never cancels; otherwise it receives a task handle to free with `tg_task_free`.
/// `user_data` is passed through untouched and must stay valid until the callback's final call.
///
/// # Safety
/// `engine` must be a live engine; `request` must point to `len` readable bytes; `options` NULL or
/// a valid struct; `callback` safe to call from another thread with `user_data`; `out_task` and
/// `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_send_async(
    engine: *const tg_engine,
    request: *const u8,
    len: usize,
    options: *const tg_request_options,
    callback: tg_send_callback,
    user_data: *mut c_void,
    out_task: *mut *mut tg_task,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract (checked before the callback, like every
        // function checks its engine first).
        unsafe { arg(engine, "engine")? };
        let callback = Callback::Send(callback.ok_or_else(|| tg_error::null("callback"))?);
        let work = |rust: Engine, request, mut finish: Finish| async move {
            let result = rust.send(request).await;
            finish.fire(result.map_err(|e| tg_error::call(&e)));
        };
        // SAFETY: as documented for this function.
        unsafe {
            start(
                engine, request, len, options, callback, user_data, out_task, work,
            )
        }
    })
}

/// Admits a call, waiting in the budgets' priority queues (and for targets passed over for a known
/// time) as long as the policy allows, like `tg_engine_acquire`, but on tollgate's worker
/// threads: it returns at once and `callback` fires exactly once with the permit or the refusal
/// (see `tg_acquire_callback`). `tg_task_cancel` ends the wait (`TG_STATUS_CANCELLED`): the call
/// leaves the queues and takes nothing.
///
/// When this function returns an error the callback is never called (a request body in the call
/// that is not JSON, a NULL argument). `out_task` may be NULL when the caller never cancels;
/// `user_data` must stay valid until the callback has been called.
///
/// # Safety
/// `engine` must be a live engine; `call` must satisfy the `tg_call` contract (its strings are
/// copied before this function returns); `callback` safe to call from another thread with
/// `user_data`; `out_task` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_acquire_async(
    engine: *const tg_engine,
    call: *const tg_call,
    callback: tg_acquire_callback,
    user_data: *mut c_void,
    out_task: *mut *mut tg_task,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        // SAFETY: NULL or a valid struct, per the contract.
        let call = unsafe { arg(call, "call")? };
        let callback = Callback::Acquire(callback.ok_or_else(|| tg_error::null("callback"))?);
        let handle = engine.handle()?;
        // SAFETY: the struct's pointers follow the contract; the waiter copies what it keeps.
        let waiter = unsafe { with_call(call, |c| engine.engine.waiter(c))? }
            .map_err(|d| tg_error::denial(&d))?;
        let mut finish = Finish::new(engine, user_data, callback);
        let ended = Arc::clone(&finish.ended);
        let task = handle.spawn(async move {
            let result = waiter.wait().await;
            finish.fire_with(result.map(Done::Permit).map_err(|d| tg_error::denial(&d)));
        });
        // SAFETY: `out_task` is NULL or writable per the contract.
        unsafe { hand_out(out_task, &task, ended) };
        Ok(())
    })
}

/// Starts a streamed call (`stream: true` is set by tollgate) on the worker threads and returns
/// at once. `callback` fires once per event as it arrives, then once more at the end (see
/// `tg_stream_callback`). Until the first event a failed attempt is retried or moved to another
/// target as the policy says; after it the stream is never retried: a cut ends with
/// `TG_STATUS_STREAM_CUT`.
///
/// When this function returns an error the callback is never called. `out_task` may be NULL;
/// `user_data` must stay valid until the final call.
///
/// # Safety
/// As `tg_engine_send_async`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_stream(
    engine: *const tg_engine,
    request: *const u8,
    len: usize,
    options: *const tg_request_options,
    callback: tg_stream_callback,
    user_data: *mut c_void,
    out_task: *mut *mut tg_task,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract (checked before the callback, like every
        // function checks its engine first).
        unsafe { arg(engine, "engine")? };
        let callback = callback.ok_or_else(|| tg_error::null("callback"))?;
        let data = UserData(user_data);
        let work = move |rust: Engine, request, mut finish: Finish| async move {
            let mut stream = match rust.stream(request).await {
                Ok(s) => s,
                Err(e) => return finish.fire(Err(tg_error::call(&e))),
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        let view = tg_event {
                            event: event.event.as_deref().map_or(tg_str::EMPTY, tg_str::of),
                            data: tg_str::of(&event.data),
                            id: event.id.as_deref().map_or(tg_str::EMPTY, tg_str::of),
                            done: event.is_done(),
                        };
                        // SAFETY: the caller's callback; the event is borrowed for the call.
                        unsafe {
                            callback(
                                data.ptr(),
                                &view,
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                            )
                        };
                    }
                    Err(e) => return finish.fire(Err(tg_error::call(&e))),
                }
            }
            finish.fire(Ok(summary(&stream)));
        };
        let on_end = Callback::Stream(callback);
        // SAFETY: as documented for this function.
        unsafe {
            start(
                engine, request, len, options, on_end, user_data, out_task, work,
            )
        }
    })
}

/// What a finished stream hands to its final callback: everything but a body.
fn summary(stream: &ChatStream) -> ChatResponse {
    ChatResponse {
        status: stream.status(),
        headers: stream.headers().clone(),
        body: Bytes::new(),
        usage: stream.usage(),
        settlement: stream.settlement().copied(),
        target: stream.target().cloned(),
        attempts: stream.attempts(),
        history: stream.history().to_vec(),
        source: stream.source(),
        queued: stream.queued(),
    }
}

/// Cancels a running call: the upstream connection is closed, the permit released (slot freed,
/// unused reservation refunded), and the callback fires with `TG_STATUS_CANCELLED` — unless the
/// call already ended, in which case nothing happens. May be called from any thread, including
/// inside the call's own callback. NULL does nothing.
///
/// # Safety
/// `task` must be NULL or a live task handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_task_cancel(task: *const tg_task) {
    quietly(|| {
        // SAFETY: NULL or live, per the contract.
        if let Some(t) = unsafe { task.as_ref() } {
            t.abort.abort();
        }
    })
}

/// Whether the call has ended (its final callback has fired or is firing); true for NULL.
///
/// # Safety
/// `task` must be NULL or a live task handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_task_finished(task: *const tg_task) -> bool {
    // SAFETY: NULL or live, per the contract.
    value(true, || {
        unsafe { task.as_ref() }.is_none_or(|t| t.ended.load(Ordering::Acquire))
    })
}

/// Frees a task handle. This does not cancel the call: its callback still fires. NULL does
/// nothing.
///
/// # Safety
/// `task` must be NULL or a task handle not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_task_free(task: *mut tg_task) {
    quietly(|| {
        if !task.is_null() {
            // SAFETY: from `tg_engine_send_async` / `tg_engine_stream`, freed once.
            drop(unsafe { Box::from_raw(task) });
        }
    })
}

/// Reads a live response.
///
/// # Safety
/// `response` must be NULL or a live response.
unsafe fn read<'a>(response: *const tg_response) -> Option<&'a ChatResponse> {
    // SAFETY: forwarded to the caller.
    unsafe { response.as_ref() }.map(|r| &r.response)
}

/// The HTTP status of the answer; 0 for NULL.
///
/// # Safety
/// `response` must be NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_status(response: *const tg_response) -> u16 {
    // SAFETY: NULL or live, per the contract.
    value(0, || unsafe { read(response) }.map_or(0, |r| r.status))
}

/// The response body (the upstream's JSON), valid until `tg_response_free`; empty for a stream's
/// final response or NULL.
///
/// # Safety
/// `response` must be NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_body(response: *const tg_response) -> tg_str {
    // SAFETY: NULL or live, per the contract.
    value(tg_str::EMPTY, || match unsafe { read(response) } {
        Some(r) => tg_str::of_bytes(&r.body),
        None => tg_str::EMPTY,
    })
}

/// Where the answer came from; `TG_SOURCE_UPSTREAM` for NULL.
///
/// # Safety
/// `response` must be NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_source(response: *const tg_response) -> tg_source {
    // SAFETY: NULL or live, per the contract.
    value(tg_source::Upstream, || {
        unsafe { read(response) }.map_or(tg_source::Upstream, |r| r.source.into())
    })
}

/// Attempts made (0 for answers from the cache or an identical call); 0 for NULL.
///
/// # Safety
/// `response` must be NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_attempts(response: *const tg_response) -> u32 {
    // SAFETY: NULL or live, per the contract.
    value(0, || unsafe { read(response) }.map_or(0, |r| r.attempts))
}

/// Nanoseconds the call waited for budget room, over every attempt; 0 for NULL.
///
/// # Safety
/// `response` must be NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_queued_ns(response: *const tg_response) -> u64 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { read(response) }.map_or(0, |r| nanos(r.queued))
    })
}

/// The usage the upstream reported (for a stream: the usage chunk, or the count of the streamed
/// text): writes it and returns true; false when there is none or a pointer is NULL.
///
/// # Safety
/// `response` must be NULL or a live response; `out_usage` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_usage(
    response: *const tg_response,
    out_usage: *mut tg_usage,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let usage = unsafe { read(response) }.and_then(|r| r.usage);
        put_some(usage.map(tg_usage::from), out_usage)
    })
}

/// What the call was charged: writes it and returns true; false for answers from the cache (which
/// cost nothing) or when a pointer is NULL.
///
/// # Safety
/// `response` must be NULL or a live response; `out_settlement` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_settlement(
    response: *const tg_response,
    out_settlement: *mut tg_settlement,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let settlement = unsafe { read(response) }.and_then(|r| r.settlement.as_ref());
        put_some(settlement.map(tg_settlement::from), out_settlement)
    })
}

/// Where the answering attempt went, for routed calls: writes it (strings valid while the
/// response lives) and returns true; false otherwise or for NULL.
///
/// # Safety
/// `response` must be NULL or a live response; `out_target` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_target(
    response: *const tg_response,
    out_target: *mut tg_target,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let target = unsafe { read(response) }.and_then(|r| r.target.as_ref());
        write_target(target, out_target)
    })
}

/// The first value of a response header (name in any case): writes it (valid while the response
/// lives) and returns true; false when absent, for answers from the cache (no headers), or when a
/// pointer is NULL or the name is not UTF-8.
///
/// # Safety
/// `response` must be NULL or a live response; `name` must point to `name_len` readable bytes;
/// `out_value` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_header(
    response: *const tg_response,
    name: *const c_char,
    name_len: usize,
    out_value: *mut tg_str,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let Some(r) = (unsafe { read(response) }) else {
            return false;
        };
        // SAFETY: pointer + length from the caller.
        let Ok(name) = (unsafe { text_arg(name, name_len, "name") }) else {
            return false;
        };
        let value = r.headers.get(name).map(|v| tg_str::of_bytes(v.as_bytes()));
        put_some(value, out_value)
    })
}

/// How many earlier attempts failed and were retried before the answer; 0 for NULL.
///
/// # Safety
/// `response` must be NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_history_len(response: *const tg_response) -> usize {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { read(response) }.map_or(0, |r| r.history.len())
    })
}

/// Earlier attempt `index` (0 = oldest): writes it (strings valid while the response lives) and
/// returns true; false when out of range or a pointer is NULL.
///
/// # Safety
/// `response` must be NULL or a live response; `out_record` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_history(
    response: *const tg_response,
    index: usize,
    out_record: *mut tg_attempt_record,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let record = unsafe { read(response) }.and_then(|r| r.history.get(index));
        let empty = tg_target {
            route: tg_str::EMPTY,
            upstream: tg_str::EMPTY,
            model: tg_str::EMPTY,
            key: tg_str::EMPTY,
        };
        let record = record.map(|a| tg_attempt_record {
            number: a.number,
            outcome: tg_str::of(&a.outcome),
            decision: tg_str::of(&a.decision),
            has_target: a.target.is_some(),
            target: a.target.as_ref().map_or(empty, tg_target::of),
        });
        put_some(record, out_record)
    })
}

/// Frees a response. NULL does nothing.
///
/// # Safety
/// `response` must be NULL or a response not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_response_free(response: *mut tg_response) {
    quietly(|| {
        if !response.is_null() {
            // SAFETY: from tollgate (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(response) });
        }
    })
}
