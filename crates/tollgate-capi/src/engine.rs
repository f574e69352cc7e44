//! The engine handle: create from policy text or a file, reload, metrics, version, free.

use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};

use super::error::{boundary, quietly, value};
use super::{arg, bytes_arg, out, put, text_arg, tg_bytes, tg_error, tg_status, utf8};
use tollgate::policy::{Format, Policy};
use tollgate::{Engine, PolicyErrors, WatchEvent};

/// How long freeing an engine waits for its worker threads to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// An engine: the running policy, budget / breaker / cache state, the transport, and the worker
/// threads of the call API. Create with `tg_engine_new` or `tg_engine_new_from_file`; free
/// with `tg_engine_free`. Every function taking a `const tg_engine *` may be called from any
/// number of threads at once.
pub struct tg_engine {
    pub(crate) engine: Engine,
    /// Worker threads of the call API, started on first use.
    runtime: Mutex<Option<Runtime>>,
    /// Set when the engine is being freed: calls that end from then on end as cancelled, even
    /// when what stopped them was the runtime closing their connection.
    pub(crate) closing: Arc<AtomicBool>,
    /// Budget names handed out in `TG_DECISION_WAIT` decisions, kept so the pointers stay valid
    /// until the engine is freed (deduplicated by allocation).
    names: Mutex<Vec<Arc<str>>>,
}

impl tg_engine {
    fn new(engine: Engine) -> tg_engine {
        let handle = tg_engine {
            engine,
            runtime: Mutex::new(None),
            closing: Arc::new(AtomicBool::new(false)),
            names: Mutex::new(Vec::new()),
        };
        handle.retain_names();
        handle
    }

    /// Keeps the running policy's budget names alive for the engine's lifetime.
    fn retain_names(&self) {
        let mut names = self.names.lock();
        for name in self.engine.budget_names() {
            if !names.iter().any(|n| Arc::ptr_eq(n, &name)) {
                names.push(name);
            }
        }
    }

    /// The runtime of the call API, started on first use.
    pub(crate) fn handle(&self) -> Result<Handle, Box<tg_error>> {
        let mut rt = self.runtime.lock();
        if let Some(rt) = rt.as_ref() {
            return Ok(rt.handle().clone());
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        // Workers start with SIGPIPE blocked: they inherit the mask of the thread that makes them
        // (a host's, which may not block it) before their own start hook runs.
        let built = tollgate::transport::runtime("tollgate-worker", threads).map_err(|e| {
            tg_error::new(
                tg_status::Runtime,
                format!("cannot start tollgate's worker threads: {e}"),
            )
        })?;
        let handle = built.handle().clone();
        *rt = Some(built);
        Ok(handle)
    }

    fn reload(&self, policy: Result<Policy, PolicyErrors>) -> Result<u64, Box<tg_error>> {
        let policy = policy.map_err(|e| tg_error::policy(&e))?;
        let report = self.engine.reload_policy(policy);
        self.retain_names();
        Ok(report.generation)
    }
}

impl Drop for tg_engine {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        if let Some(rt) = self.runtime.get_mut().take() {
            if Handle::try_current().is_ok() {
                // Freed from a callback on one of its own workers: cannot wait for them here.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            }
        }
    }
}

/// Reads and validates policy text (TOML or JSON, detected).
fn policy_text(bytes: &[u8]) -> Result<Result<Policy, PolicyErrors>, Box<tg_error>> {
    utf8(bytes, "policy")?;
    Ok(Policy::from_bytes(bytes, None))
}

/// Reads a policy file (`.json` is JSON, `.toml` TOML, anything else detected).
fn policy_file(path: &str) -> Result<Result<Policy, PolicyErrors>, Box<tg_error>> {
    let path = Path::new(path);
    let bytes = std::fs::read(path).map_err(|e| {
        tg_error::new(
            tg_status::Io,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    utf8(&bytes, "policy file")?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => Some(Format::Json),
        Some(e) if e.eq_ignore_ascii_case("toml") => Some(Format::Toml),
        _ => None,
    };
    Ok(Policy::from_bytes(&bytes, format))
}

/// Creates an engine from policy text, TOML or JSON (detected).
///
/// On success `*out` receives the engine (free it with `tg_engine_free`). A policy with
/// problems is refused with `TG_STATUS_INVALID_POLICY` and an error listing every one of them;
/// text that is not UTF-8 gives `TG_STATUS_INVALID_UTF8`.
///
/// `policy` may be NULL only when `len` is 0; `out` must not be NULL; `err` may be NULL.
///
/// # Safety
/// `policy` must point to `len` readable bytes; `out` and `err` must be writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_new(
    policy: *const u8,
    len: usize,
    out_engine: *mut *mut tg_engine,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        let out_engine = out(out_engine, "out_engine")?;
        // SAFETY: pointer + length from the caller.
        let text = unsafe { bytes_arg(policy, len, "policy")? };
        let policy = policy_text(text)?.map_err(|e| tg_error::policy(&e))?;
        let engine = Box::new(tg_engine::new(Engine::new(policy)));
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_engine, Box::into_raw(engine)) };
        Ok(())
    })
}

/// Creates an engine from a policy file. `path` is UTF-8, pointer + length (no NUL needed).
/// A file ending in `.json` is read as JSON, `.toml` as TOML, anything else is detected.
///
/// An unreadable file gives `TG_STATUS_IO`; a refused policy `TG_STATUS_INVALID_POLICY` with
/// every problem. `out_engine` must not be NULL.
///
/// # Safety
/// `path` must point to `path_len` readable bytes; `out_engine` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_new_from_file(
    path: *const c_char,
    path_len: usize,
    out_engine: *mut *mut tg_engine,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        let out_engine = out(out_engine, "out_engine")?;
        // SAFETY: pointer + length from the caller.
        let path = unsafe { text_arg(path, path_len, "path")? };
        let policy = policy_file(path)?.map_err(|e| tg_error::policy(&e))?;
        let engine = Box::new(tg_engine::new(Engine::new(policy)));
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_engine, Box::into_raw(engine)) };
        Ok(())
    })
}

/// Replaces the running policy with `policy` (TOML or JSON text), without dropping a call:
/// budget state is kept for every budget whose name and scope are unchanged, and new limits apply
/// from the next decision.
///
/// A refused policy returns `TG_STATUS_INVALID_POLICY` with every problem, and the running
/// policy stays. On success `*out_generation` (when not NULL) receives the new policy generation
/// (1 for the engine's first policy, +1 per accepted reload).
///
/// # Safety
/// `engine` must be a live engine; `policy` must point to `len` readable bytes;
/// `out_generation` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_reload(
    engine: *const tg_engine,
    policy: *const u8,
    len: usize,
    out_generation: *mut u64,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        // SAFETY: pointer + length from the caller.
        let text = unsafe { bytes_arg(policy, len, "policy")? };
        let generation = engine.reload(policy_text(text)?)?;
        if !out_generation.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { put(out_generation, generation) };
        }
        Ok(())
    })
}

/// Replaces the running policy with the one in a file; as `tg_engine_reload`, with the file
/// rules of `tg_engine_new_from_file`.
///
/// # Safety
/// `engine` must be a live engine; `path` must point to `path_len` readable bytes;
/// `out_generation` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_reload_file(
    engine: *const tg_engine,
    path: *const c_char,
    path_len: usize,
    out_generation: *mut u64,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        // SAFETY: pointer + length from the caller.
        let path = unsafe { text_arg(path, path_len, "path")? };
        let generation = engine.reload(policy_file(path)?)?;
        if !out_generation.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { put(out_generation, generation) };
        }
        Ok(())
    })
}

/// The number of accepted policies so far (1 after creation); 0 when `engine` is NULL.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_generation(engine: *const tg_engine) -> u64 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { engine.as_ref() }.map_or(0, |e| e.engine.generation())
    })
}

/// The engine's metrics in the Prometheus text format (version 0.0.4). On success `*out`
/// receives owned bytes; free them with `tg_bytes_free`.
///
/// # Safety
/// `engine` must be a live engine; `out` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_metrics(
    engine: *const tg_engine,
    out_text: *mut *mut tg_bytes,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_text = out(out_text, "out_text")?;
        let text = engine.engine.metrics_text();
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_text, tg_bytes::give(text.into_bytes())) };
        Ok(())
    })
}

/// Budget and cache counters as JSON: `{"generation": 1, "budgets": [{"name", "admitted",
/// "waited", "denied", "tokens", "spend", "keys"}, ...], "cache": {"hits", "misses",
/// "stale_hits", "inserts", "refused", "evictions", "expired", "bytes", "entries"}}`. On success
/// `*out_json` receives owned bytes; free them with `tg_bytes_free`. `engine` and `out_json` must
/// not be NULL.
///
/// # Safety
/// `engine` must be a live engine; `out_json` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_stats(
    engine: *const tg_engine,
    out_json: *mut *mut tg_bytes,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_json = out(out_json, "out_json")?;
        let e = &engine.engine;
        let budgets: Vec<serde_json::Value> = e
            .stats()
            .into_iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name, "admitted": b.admitted, "waited": b.waited,
                    "denied": b.denied, "tokens": b.tokens, "spend": b.spend, "keys": b.keys,
                })
            })
            .collect();
        let c = e.cache_stats();
        let json = serde_json::json!({
            "generation": e.generation(),
            "budgets": budgets,
            "cache": {
                "hits": c.hits, "misses": c.misses, "stale_hits": c.stale_hits,
                "inserts": c.inserts, "refused": c.refused, "evictions": c.evictions,
                "expired": c.expired, "bytes": c.bytes, "entries": c.entries,
            },
        });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_json, tg_bytes::give(json.to_string().into_bytes())) };
        Ok(())
    })
}

/// Hears what a policy watch did: after an accepted reload, `generation` is the new policy's
/// and `error` is NULL; after a refused or unreadable file, `generation` is 0 and `error`
/// (borrowed for the call; `TG_STATUS_INVALID_POLICY` with every problem, or `TG_STATUS_IO`)
/// says why — the running policy stays. Called on the watch's own thread; must not unwind.
pub type tg_watch_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, generation: u64, error: *const tg_error)>;

/// A running policy-file watch. Free it with `tg_watcher_free` to stop watching.
pub struct tg_watcher {
    _watcher: tollgate::Watcher,
}

/// The caller's `user_data`, carried to the watch thread.
struct WatchData(*mut c_void);

// SAFETY: tollgate never dereferences it; the caller promises it may be used from the watch
// thread (documented on `tg_engine_watch`).
unsafe impl Send for WatchData {}

impl WatchData {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn ptr(&self) -> *mut c_void {
        self.0
    }
}

/// Watches a policy file and reloads the engine whenever its content changes (checked every
/// `interval_ms`, at least 10; content is compared, so editors that replace the file are seen).
/// The content present now counts as loaded. A refused or unreadable file leaves the running
/// policy in place. `callback` (may be NULL) hears every reload and refusal on the watch's own
/// thread, with `user_data`, which must stay valid until the watcher is freed.
///
/// On success `*out_watcher` receives the watch; free it with `tg_watcher_free` (before the
/// engine; a watch outliving its engine stops by itself). `engine`, `path` (unless `path_len` is
/// 0, which is refused as an empty path) and `out_watcher` must not be NULL.
///
/// # Safety
/// `engine` must be a live engine; `path` must point to `path_len` readable bytes; `callback`
/// safe to call from another thread with `user_data`; `out_watcher` and `err` writable when not
/// NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_watch(
    engine: *const tg_engine,
    path: *const c_char,
    path_len: usize,
    interval_ms: u64,
    callback: tg_watch_callback,
    user_data: *mut c_void,
    out_watcher: *mut *mut tg_watcher,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_watcher = out(out_watcher, "out_watcher")?;
        // SAFETY: pointer + length from the caller.
        let path = unsafe { text_arg(path, path_len, "path")? };
        if path.is_empty() {
            return Err(tg_error::new(tg_status::InvalidArgument, "path is empty"));
        }
        let data = WatchData(user_data);
        let interval = Duration::from_millis(interval_ms.max(10));
        let watcher = engine.engine.watch(path, interval, move |event| {
            let Some(callback) = callback else { return };
            let (generation, error) = match event {
                WatchEvent::Reloaded(report) => (report.generation, None),
                WatchEvent::Refused(errors) => (0, Some(tg_error::policy(&errors))),
                WatchEvent::Unreadable(message) => (0, Some(tg_error::new(tg_status::Io, message))),
            };
            let error_ptr = error
                .as_deref()
                .map_or(std::ptr::null(), |e| e as *const tg_error);
            // SAFETY: the caller's callback with its user_data; the error is borrowed for the
            // call and freed after it.
            unsafe { callback(data.ptr(), generation, error_ptr) };
        });
        let watcher = Box::new(tg_watcher { _watcher: watcher });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_watcher, Box::into_raw(watcher)) };
        Ok(())
    })
}

/// Stops a watch and frees it; a callback in progress finishes first. NULL does nothing. Must not
/// be called from the watch's own callback.
///
/// # Safety
/// `watcher` must be NULL or a watch not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_watcher_free(watcher: *mut tg_watcher) {
    quietly(|| {
        if !watcher.is_null() {
            // SAFETY: from `tg_engine_watch`, freed once.
            drop(unsafe { Box::from_raw(watcher) });
        }
    })
}

/// Frees an engine. NULL does nothing.
///
/// Calls still in flight are cancelled: their callbacks fire with `TG_STATUS_CANCELLED` before
/// this returns (when called from a tollgate callback, shortly after). Permits, tasks and other
/// handles obtained from the engine stay valid and must still be freed; settling a permit needs
/// a live engine, so free permits first.
///
/// # Safety
/// `engine` must be NULL or an engine not yet freed, and no other thread may use it during or
/// after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_free(engine: *mut tg_engine) {
    quietly(|| {
        if !engine.is_null() {
            // SAFETY: an engine from `tg_engine_new*` (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(engine) });
        }
    })
}

/// The library's version, e.g. `0.1.0`: a static NUL-terminated string. Compare with the
/// header's `TOLLGATE_VERSION` to detect a header / library mismatch.
#[unsafe(no_mangle)]
pub extern "C" fn tg_version() -> *const c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    value(c"unknown".as_ptr(), || VERSION.as_ptr())
}

/// Returns `TG_STATUS_WRONG_THREAD` on a tokio worker thread (a tollgate callback), where a
/// blocking function would stall the runtime it waits on.
pub(crate) fn not_on_worker(what: &str) -> Result<(), Box<tg_error>> {
    if Handle::try_current().is_ok() {
        return Err(tg_error::new(
            tg_status::WrongThread,
            format!(
                "{what} blocks and was called on a tollgate worker thread (inside a callback); \
                 use the asynchronous form there"
            ),
        ));
    }
    Ok(())
}
