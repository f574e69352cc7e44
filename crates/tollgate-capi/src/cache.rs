//! The response cache for hosts with their own HTTP client: lookup (with single-flight for
//! identical requests in flight), store, fail.

use std::sync::Arc;
use std::time::Duration;

use super::decide::tg_usage;
use super::engine::tg_engine;
use super::error::{boundary, quietly, value};
use super::{arg, bytes_arg, json_arg, out, put, put_some, text_arg, tg_error, tg_status, tg_str};
use tollgate::cache::{CacheMode, CachedResponse, FlightError, FollowerWait};
use tollgate::{CacheFill, CacheLookup, FlightResult};

/// Per-request cache choice (the values of a `cache_mode` argument).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_cache_mode {
    /// Follow the policy's `[cache]` rules.
    Default = 0,
    /// Cache this request even if its temperature, `n`, tools or missing seed would keep it out.
    Force = 1,
    /// Neither read nor write the cache for this request.
    Bypass = 2,
}

/// Reads a `tg_cache_mode` value.
pub(crate) fn cache_mode(mode: u32) -> Result<CacheMode, Box<tg_error>> {
    match mode {
        0 => Ok(CacheMode::Default),
        1 => Ok(CacheMode::Force),
        2 => Ok(CacheMode::Bypass),
        other => Err(tg_error::new(
            tg_status::InvalidArgument,
            format!("cache mode {other} is not a tg_cache_mode value"),
        )),
    }
}

/// What a cache lookup found.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_cache_kind {
    /// Answer from the cache: `hit`.
    Hit = 0,
    /// Not cached and nobody is fetching it: make the call, then give the response to
    /// `tg_engine_cache_store` (or the failure to `tg_engine_cache_fail`) with `fill`.
    /// Identical lookups meanwhile wait for it.
    Miss = 1,
    /// An identical request is in flight: wait for its answer with `tg_cache_wait_join`.
    Joined = 2,
    /// The request may not be answered from the cache: `reason` says why.
    NotCacheable = 3,
}

/// The answer of `tg_engine_cache_lookup`. Exactly the pointer of its kind is set; each is
/// owned and has a free function.
#[repr(C)]
#[derive(Debug)]
pub struct tg_cache_result {
    /// Which of the fields below is set.
    pub kind: tg_cache_kind,
    /// `HIT`: the cached answer; free with `tg_cached_free`.
    pub hit: *mut tg_cached,
    /// `MISS`: the duty to fill the entry; finish it with `tg_engine_cache_store` or
    /// `tg_engine_cache_fail`, or give it up with `tg_cache_fill_free`.
    pub fill: *mut tg_cache_fill,
    /// `JOINED`: the wait for the identical request in flight; free with `tg_cache_wait_free`.
    pub joined: *mut tg_cache_wait,
    /// `NOT_CACHEABLE`: a stable code (`disabled`, `bypassed`, `temperature`, `n`, `tools`,
    /// `no_seed`, `malformed`); static.
    pub reason: tg_str,
}

/// A cached answer. Free with `tg_cached_free`.
pub struct tg_cached {
    response: Arc<CachedResponse>,
}

/// The duty of the caller that fetches a response for every identical request waiting on it.
/// Freeing it unfinished tells the waiters the fetch was abandoned.
pub struct tg_cache_fill {
    fill: CacheFill,
}

/// A wait for an identical request in flight.
pub struct tg_cache_wait {
    wait: FollowerWait<FlightResult>,
}

/// Looks a chat request (its JSON body) up under the policy's cache rules, for the tenant `""`.
/// Never blocks. Same as `tg_engine_cache_lookup_for` with an empty tenant: under the default
/// `[cache] scope = "tenant"`, calls made for several tenants should use that one.
///
/// Errors: NULL `engine` or `out_result`; a body that is not UTF-8 or not JSON; an unknown
/// `cache_mode`.
///
/// # Safety
/// `engine` must be a live engine; `request` must point to `len` readable bytes;
/// `out_result` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_cache_lookup(
    engine: *const tg_engine,
    request: *const u8,
    len: usize,
    cache_mode: u32,
    out_result: *mut tg_cache_result,
    err: *mut *mut tg_error,
) -> tg_status {
    // SAFETY: the same contract.
    unsafe {
        tg_engine_cache_lookup_for(
            engine,
            tg_str::EMPTY,
            request,
            len,
            cache_mode,
            out_result,
            err,
        )
    }
}

/// Looks a chat request (its JSON body) up under the policy's cache rules, in the entries of
/// `tenant`: with `[cache] scope = "tenant"` (the default) one tenant never sees another's
/// entries nor joins its calls in flight; with `scope = "shared"` the tenant is ignored. Never
/// blocks.
///
/// Errors: NULL `engine` or `out_result`; a tenant that is not UTF-8; a body that is not UTF-8
/// or not JSON; an unknown `cache_mode`.
///
/// # Safety
/// `engine` must be a live engine; `tenant` a valid `tg_str`; `request` must point to `len`
/// readable bytes; `out_result` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_cache_lookup_for(
    engine: *const tg_engine,
    tenant: tg_str,
    request: *const u8,
    len: usize,
    cache_mode: u32,
    out_result: *mut tg_cache_result,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_result = out(out_result, "out_result")?;
        // SAFETY: a valid tg_str per the contract.
        let tenant = unsafe { tenant.text("tenant")? };
        // SAFETY: pointer + length from the caller.
        let body = json_arg(unsafe { bytes_arg(request, len, "request")? }, "request")?;
        let mode = self::cache_mode(cache_mode)?;
        let mut result = tg_cache_result {
            kind: tg_cache_kind::NotCacheable,
            hit: std::ptr::null_mut(),
            fill: std::ptr::null_mut(),
            joined: std::ptr::null_mut(),
            reason: tg_str::EMPTY,
        };
        match engine.engine.cache_lookup_for(tenant, &body, mode) {
            CacheLookup::Hit(response) => {
                result.kind = tg_cache_kind::Hit;
                result.hit = Box::into_raw(Box::new(tg_cached { response }));
            }
            CacheLookup::Miss(fill) => {
                result.kind = tg_cache_kind::Miss;
                result.fill = Box::into_raw(Box::new(tg_cache_fill { fill }));
            }
            CacheLookup::Joined(wait) => {
                result.kind = tg_cache_kind::Joined;
                result.joined = Box::into_raw(Box::new(tg_cache_wait { wait }));
            }
            CacheLookup::NotCacheable(why) => result.reason = tg_str::of(why.code()),
        }
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_result, result) };
        Ok(())
    })
}

/// Stores the response of a `MISS` and hands it to every identical request waiting on it.
/// `fill` is consumed in every case. Only 2xx responses are stored (waiters get errors too);
/// a response larger than the policy's `max_entry_bytes` is handed over but not stored, which
/// returns `TG_STATUS_CACHE_REFUSED`. `body` is the response JSON; `usage` may be NULL.
///
/// # Safety
/// `engine` must be a live engine; `fill` NULL or a live fill (not used again); `body` must
/// point to `len` readable bytes; `usage` NULL or readable; `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_cache_store(
    engine: *const tg_engine,
    fill: *mut tg_cache_fill,
    status: u16,
    body: *const u8,
    len: usize,
    usage: *const tg_usage,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: a fill from `tg_engine_cache_lookup`, used once.
        let fill = (!fill.is_null()).then(|| unsafe { Box::from_raw(fill) });
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let fill = fill.ok_or_else(|| tg_error::null("fill"))?;
        // SAFETY: pointer + length from the caller.
        let body = unsafe { bytes_arg(body, len, "body")? };
        let mut response = CachedResponse::new(status, body.to_vec());
        // SAFETY: NULL or readable, per the contract.
        if let Some(u) = unsafe { usage.as_ref() } {
            response = response.with_usage((*u).into());
        }
        engine
            .engine
            .cache_store(fill.fill, response)
            .map_err(|e| tg_error::new(tg_status::CacheRefused, e.to_string()))
    })
}

/// Ends a `MISS` whose call failed: every identical request waiting on it gets
/// `TG_STATUS_SHARED` with `message`. `fill` is consumed in every case.
///
/// # Safety
/// `engine` must be a live engine; `fill` NULL or a live fill (not used again); `message` must
/// point to `len` readable bytes; `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_cache_fail(
    engine: *const tg_engine,
    fill: *mut tg_cache_fill,
    message: *const std::ffi::c_char,
    len: usize,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: a fill from `tg_engine_cache_lookup`, used once.
        let fill = (!fill.is_null()).then(|| unsafe { Box::from_raw(fill) });
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let fill = fill.ok_or_else(|| tg_error::null("fill"))?;
        // SAFETY: pointer + length from the caller.
        let message = unsafe { text_arg(message, len, "message")? };
        engine.engine.cache_fail(fill.fill, message);
        Ok(())
    })
}

/// Gives up a `MISS` without an answer: waiting requests are told it was abandoned (one of them
/// leads next). NULL does nothing.
///
/// # Safety
/// `fill` must be NULL or a live fill, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cache_fill_free(fill: *mut tg_cache_fill) {
    quietly(|| {
        if !fill.is_null() {
            // SAFETY: from `tg_engine_cache_lookup`, freed once.
            drop(unsafe { Box::from_raw(fill) });
        }
    })
}

/// Waits up to `timeout_ms` (0: no limit) for the identical request in flight. **Blocks.**
/// On success `*out_cached` receives its answer (owned). `TG_STATUS_TIMEOUT`: not finished yet,
/// waiting again is allowed; `TG_STATUS_ABANDONED`: the leader gave up, look the request up
/// again; `TG_STATUS_SHARED`: the leader's call failed (its message). `wait` stays owned by the
/// caller either way.
///
/// # Safety
/// `wait` must be a live wait; `out_cached` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cache_wait_join(
    wait: *const tg_cache_wait,
    timeout_ms: u64,
    out_cached: *mut *mut tg_cached,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let wait = unsafe { arg(wait, "wait")? };
        let out_cached = out(out_cached, "out_cached")?;
        super::engine::not_on_worker("tg_cache_wait_join")?;
        let timeout = if timeout_ms == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(timeout_ms)
        };
        let response = match wait.wait.wait(timeout) {
            Ok(Ok(response)) => response,
            Ok(Err(message)) => return Err(tg_error::new(tg_status::Shared, &*message)),
            Err(FlightError::Timeout) => {
                return Err(tg_error::new(
                    tg_status::Timeout,
                    "the identical request in flight has not finished yet",
                ));
            }
            Err(e) => return Err(tg_error::new(tg_status::Abandoned, e.to_string())),
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_cached, Box::into_raw(Box::new(tg_cached { response }))) };
        Ok(())
    })
}

/// Frees a wait. NULL does nothing.
///
/// # Safety
/// `wait` must be NULL or a wait not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cache_wait_free(wait: *mut tg_cache_wait) {
    quietly(|| {
        if !wait.is_null() {
            // SAFETY: from `tg_engine_cache_lookup`, freed once.
            drop(unsafe { Box::from_raw(wait) });
        }
    })
}

/// The HTTP status of a cached answer (normally 200); 0 for NULL.
///
/// # Safety
/// `cached` must be NULL or a live cached answer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cached_status(cached: *const tg_cached) -> u16 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { cached.as_ref() }.map_or(0, |c| c.response.status)
    })
}

/// The JSON body of a cached answer, valid until `tg_cached_free`; empty for NULL.
///
/// # Safety
/// `cached` must be NULL or a live cached answer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cached_body(cached: *const tg_cached) -> tg_str {
    // SAFETY: NULL or live, per the contract.
    value(tg_str::EMPTY, || match unsafe { cached.as_ref() } {
        Some(c) => tg_str::of_bytes(&c.response.body),
        None => tg_str::EMPTY,
    })
}

/// The usage the cached answer reported: writes it and returns true, or returns false when it
/// has none or a pointer is NULL.
///
/// # Safety
/// `cached` must be NULL or a live cached answer; `out_usage` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cached_usage(
    cached: *const tg_cached,
    out_usage: *mut tg_usage,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let usage = unsafe { cached.as_ref() }.and_then(|c| c.response.usage);
        put_some(usage.map(tg_usage::from), out_usage)
    })
}

/// Frees a cached answer. NULL does nothing.
///
/// # Safety
/// `cached` must be NULL or a cached answer not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_cached_free(cached: *mut tg_cached) {
    quietly(|| {
        if !cached.is_null() {
            // SAFETY: from tollgate (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(cached) });
        }
    })
}
