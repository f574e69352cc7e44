//! Status codes, the owned error handle, and the panic boundary every entry point runs in.

use std::any::Any;
use std::borrow::Cow;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use super::tg_str;
use tollgate::{CallError, Denial, DenyReason, GiveUp, PolicyErrors};

/// What a function did. The numbers are stable: a number, once published, keeps its meaning and
/// is never reused. New statuses get new numbers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum tg_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL (the message names it).
    NullArgument = 1,
    /// An argument is out of range: an unknown enum value, a length that cannot be a buffer.
    InvalidArgument = 2,
    /// Text that must be UTF-8 is not.
    InvalidUtf8 = 3,
    /// JSON that could not be parsed (truncated, or not JSON at all).
    InvalidJson = 4,
    /// The policy was refused; the error lists every problem (`tg_error_problem`). On reload
    /// the running policy stays.
    InvalidPolicy = 5,
    /// A file could not be read.
    Io = 6,
    /// A bug inside tollgate: a Rust panic was caught at the boundary. The handle involved is
    /// still safe to free.
    Panic = 7,
    /// A blocking function was called on one of tollgate's own worker threads (from a
    /// callback), where it would deadlock. Use the asynchronous form there.
    WrongThread = 8,
    /// The call was cancelled (`tg_task_cancel`, or its engine was freed).
    Cancelled = 9,
    /// tollgate's runtime (its worker threads) could not be started.
    Runtime = 10,
    /// Waiting for an identical request in flight timed out; waiting again is allowed.
    Timeout = 11,
    /// The identical request this one waited for was dropped before it finished; look the
    /// request up again (the next lookup leads).
    Abandoned = 12,
    /// A response was handed to the waiting calls but not cached: larger than the policy's
    /// `[cache] max_entry_bytes`.
    CacheRefused = 13,
    /// A budget refused the call (at once, or after waiting as long as the policy allows); the
    /// error names the budget (`tg_error_budget`) and, when known, when to retry.
    Denied = 100,
    /// The call failed and was not retried further; the error has the reason code, the last
    /// HTTP status and the upstream's error body.
    GaveUp = 101,
    /// The caller's deadline passed.
    Deadline = 102,
    /// The request is not a chat request tollgate can send (e.g. no `messages`).
    InvalidRequest = 103,
    /// Nothing in the policy says where the call goes.
    NoUpstream = 104,
    /// Credentials could not be read or obtained.
    Auth = 105,
    /// The transport could not be set up for the upstream (e.g. an unreadable CA file).
    Transport = 106,
    /// An identical call in flight, whose answer this one waited for, failed.
    Shared = 107,
    /// A stream broke off after content had reached the caller; it is not retried.
    StreamCut = 108,
}

impl tg_status {
    /// Every status, in number order: what `tg_status_name` and the bindings' tables cover.
    ///
    /// cbindgen:ignore
    pub const ALL: [tg_status; 23] = [
        tg_status::Ok,
        tg_status::NullArgument,
        tg_status::InvalidArgument,
        tg_status::InvalidUtf8,
        tg_status::InvalidJson,
        tg_status::InvalidPolicy,
        tg_status::Io,
        tg_status::Panic,
        tg_status::WrongThread,
        tg_status::Cancelled,
        tg_status::Runtime,
        tg_status::Timeout,
        tg_status::Abandoned,
        tg_status::CacheRefused,
        tg_status::Denied,
        tg_status::GaveUp,
        tg_status::Deadline,
        tg_status::InvalidRequest,
        tg_status::NoUpstream,
        tg_status::Auth,
        tg_status::Transport,
        tg_status::Shared,
        tg_status::StreamCut,
    ];

    /// The status's short name, also the default error code. Exhaustive: a new status cannot be
    /// added without its name.
    pub fn name(self) -> &'static std::ffi::CStr {
        match self {
            tg_status::Ok => c"ok",
            tg_status::NullArgument => c"null_argument",
            tg_status::InvalidArgument => c"invalid_argument",
            tg_status::InvalidUtf8 => c"invalid_utf8",
            tg_status::InvalidJson => c"invalid_json",
            tg_status::InvalidPolicy => c"invalid_policy",
            tg_status::Io => c"io",
            tg_status::Panic => c"panic",
            tg_status::WrongThread => c"wrong_thread",
            tg_status::Cancelled => c"cancelled",
            tg_status::Runtime => c"runtime",
            tg_status::Timeout => c"timeout",
            tg_status::Abandoned => c"abandoned",
            tg_status::CacheRefused => c"cache_refused",
            tg_status::Denied => c"denied",
            tg_status::GaveUp => c"gave_up",
            tg_status::Deadline => c"deadline",
            tg_status::InvalidRequest => c"invalid_request",
            tg_status::NoUpstream => c"no_upstream",
            tg_status::Auth => c"auth",
            tg_status::Transport => c"transport",
            tg_status::Shared => c"shared",
            tg_status::StreamCut => c"stream_cut",
        }
    }

    /// The status with number `n`, if tollgate has one.
    pub fn from_number(n: u32) -> Option<tg_status> {
        tg_status::ALL.iter().copied().find(|s| *s as u32 == n)
    }
}

/// An error: a status, a message, and details. Owned by the caller: free it with
/// `tg_error_free`.
#[derive(Debug)]
pub struct tg_error {
    pub(crate) status: tg_status,
    message: CString,
    code: Cow<'static, str>,
    budget: String,
    retry_after: Option<Duration>,
    http_status: u16,
    body: Vec<u8>,
    problems: Vec<String>,
}

impl tg_error {
    /// An error with a status and a message; the code is the status's name.
    pub(crate) fn new(status: tg_status, message: impl Into<String>) -> Box<tg_error> {
        let mut message = message.into();
        message.retain(|c| c != '\0');
        Box::new(tg_error {
            status,
            message: CString::new(message).unwrap_or_default(),
            code: Cow::Borrowed(status_name(status)),
            budget: String::new(),
            retry_after: None,
            http_status: 0,
            body: Vec::new(),
            problems: Vec::new(),
        })
    }

    /// The same error with a finer code than its status's name.
    pub(crate) fn with_code(mut self: Box<Self>, code: &'static str) -> Box<tg_error> {
        self.code = Cow::Borrowed(code);
        self
    }

    /// A NULL pointer where one was required.
    pub(crate) fn null(what: &str) -> Box<tg_error> {
        tg_error::new(tg_status::NullArgument, format!("{what} must not be NULL"))
    }

    /// A caught panic.
    pub(crate) fn panic(payload: &(dyn Any + Send)) -> Box<tg_error> {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown payload".to_owned());
        tg_error::new(
            tg_status::Panic,
            format!("internal error (panic) in tollgate: {what}"),
        )
    }

    /// A refused policy, with every problem.
    pub(crate) fn policy(errors: &PolicyErrors) -> Box<tg_error> {
        let mut e = tg_error::new(tg_status::InvalidPolicy, errors.to_string());
        e.problems = errors.errors.iter().map(ToString::to_string).collect();
        e
    }

    /// A refusal by a budget.
    pub(crate) fn denial(denial: &Denial) -> Box<tg_error> {
        let mut e = tg_error::new(tg_status::Denied, format!("denied: {denial}"));
        e.code = Cow::Borrowed(denial.code());
        e.budget = denial.budget.as_deref().unwrap_or_default().to_owned();
        e.retry_after = denial.retry_after();
        e
    }

    /// A call given up by the retry policy; `http_status` is the last answer's (0: none came).
    pub(crate) fn give_up(reason: &GiveUp, http_status: u16) -> Box<tg_error> {
        let mut e = tg_error::new(tg_status::GaveUp, reason.to_string());
        e.code = Cow::Borrowed(reason.code);
        e.http_status = http_status;
        e
    }

    /// An error of the call API.
    pub(crate) fn call(error: &CallError) -> Box<tg_error> {
        let status = match error {
            // The request itself is unusable: no budget decided anything.
            CallError::Denied(Denial {
                reason: DenyReason::InvalidRequest { message },
                ..
            }) => {
                return tg_error::new(
                    tg_status::InvalidRequest,
                    format!("invalid request: {message}"),
                );
            }
            CallError::Denied(d) => return tg_error::denial(d),
            CallError::GaveUp { .. } => tg_status::GaveUp,
            CallError::Deadline { .. } => tg_status::Deadline,
            CallError::InvalidRequest(_) => tg_status::InvalidRequest,
            CallError::NoUpstream(_) => tg_status::NoUpstream,
            CallError::Auth(_) => tg_status::Auth,
            CallError::Transport(_) => tg_status::Transport,
            CallError::Shared(_) => tg_status::Shared,
            CallError::StreamCut { .. } => tg_status::StreamCut,
            // An error this version of the C ABI has no status for yet.
            _ => tg_status::Transport,
        };
        if let CallError::GaveUp {
            reason,
            status,
            body,
        } = error
        {
            let mut e = tg_error::give_up(reason, status.unwrap_or(0));
            e.body = body.as_deref().unwrap_or_default().to_vec();
            return e;
        }
        let mut e = tg_error::new(status, error.to_string());
        e.code = Cow::Borrowed(error.code());
        e
    }
}

/// The short name of a status, also the default error code.
fn status_name(status: tg_status) -> &'static str {
    name_of(status as u32).to_str().unwrap_or("unknown")
}

/// The name of a status number, `unknown` when tollgate has none.
fn name_of(status: u32) -> &'static std::ffi::CStr {
    tg_status::from_number(status).map_or(c"unknown", tg_status::name)
}

/// Runs an entry point's body: catches panics, and on failure stores the error in `*err` (when
/// `err` is not NULL) and returns its status.
pub(crate) fn boundary(
    err: *mut *mut tg_error,
    body: impl FnOnce() -> Result<(), Box<tg_error>>,
) -> tg_status {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| Err(tg_error::panic(&*p)));
    match result {
        Ok(()) => tg_status::Ok,
        Err(e) => {
            let status = e.status;
            if !err.is_null() {
                // SAFETY: the caller gave a writable `tg_error **` (documented on every entry
                // point); a non-NULL `err` is that pointer.
                unsafe { err.write(Box::into_raw(e)) };
            }
            status
        }
    }
}

/// Runs an entry point that returns a value: a panic gives `fallback`.
pub(crate) fn value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Runs an entry point that returns nothing (a free function): a panic is swallowed.
pub(crate) fn quietly(body: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(body));
}

/// The status of an error. NULL gives `TG_STATUS_NULL_ARGUMENT`.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_status(err: *const tg_error) -> tg_status {
    // SAFETY: NULL or live, per the contract.
    value(tg_status::Panic, || match unsafe { err.as_ref() } {
        Some(e) => e.status,
        None => tg_status::NullArgument,
    })
}

/// The error's message: NUL-terminated UTF-8, owned by the error (valid until
/// `tg_error_free`). NULL gives an empty string, never NULL.
///
/// For a refused policy the message lists every problem, one per line.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_message(err: *const tg_error) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    value(c"".as_ptr(), || match unsafe { err.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// A stable machine-readable code, finer than the status: for `TG_STATUS_DENIED` the denial
/// reason (`budget_exhausted`, `concurrency`, `wait_timeout`, `never_fits`, `unavailable`, ...),
/// for `TG_STATUS_GAVE_UP` the give-up reason (`attempts_exhausted`, `not_retryable`,
/// `retry_budget_exhausted`, ...), otherwise the status's name (`invalid_json`, ...). Owned by
/// the error. NULL gives the empty string.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_code(err: *const tg_error) -> tg_str {
    // SAFETY: NULL or live, per the contract.
    value(tg_str::EMPTY, || match unsafe { err.as_ref() } {
        Some(e) => tg_str::of(&e.code),
        None => tg_str::EMPTY,
    })
}

/// The budget that decided a denial; the empty string for other errors or NULL. Owned by the
/// error.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_budget(err: *const tg_error) -> tg_str {
    // SAFETY: NULL or live, per the contract.
    value(tg_str::EMPTY, || match unsafe { err.as_ref() } {
        Some(e) => tg_str::of(&e.budget),
        None => tg_str::EMPTY,
    })
}

/// When the same call could pass again, for a denial that knows it: writes nanoseconds to
/// `*out_ns` and returns true. Returns false (writing nothing) otherwise, or when either
/// pointer is NULL.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate; `out_ns` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_retry_after(err: *const tg_error, out_ns: *mut u64) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let Some(e) = (unsafe { err.as_ref() }) else {
            return false;
        };
        let nanos = e.retry_after.map(super::nanos);
        super::put_some(nanos, out_ns)
    })
}

/// For `TG_STATUS_GAVE_UP`: the HTTP status of the last answer, 0 when none came (or for other
/// errors, or NULL).
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_http_status(err: *const tg_error) -> u16 {
    // SAFETY: NULL or live, per the contract.
    value(0, || unsafe { err.as_ref() }.map_or(0, |e| e.http_status))
}

/// For `TG_STATUS_GAVE_UP`: the body of the last answer (the upstream's error JSON); empty when
/// none came. Owned by the error.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_body(err: *const tg_error) -> tg_str {
    // SAFETY: NULL or live, per the contract.
    value(tg_str::EMPTY, || match unsafe { err.as_ref() } {
        Some(e) => tg_str::of_bytes(&e.body),
        None => tg_str::EMPTY,
    })
}

/// For `TG_STATUS_INVALID_POLICY`: how many problems the policy has (0 for other errors or NULL).
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_problem_count(err: *const tg_error) -> usize {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { err.as_ref() }.map_or(0, |e| e.problems.len())
    })
}

/// For `TG_STATUS_INVALID_POLICY`: problem `index` (from 0), e.g.
/// `line 7, column 1: budget[0].requests_per_minute: must be greater than 0`. The empty string
/// when `index` is out of range or `err` is NULL. Owned by the error.
///
/// # Safety
/// `err` must be NULL or a live error from tollgate.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_problem(err: *const tg_error, index: usize) -> tg_str {
    // SAFETY: NULL or live, per the contract.
    value(tg_str::EMPTY, || match unsafe { err.as_ref() } {
        Some(e) => e
            .problems
            .get(index)
            .map_or(tg_str::EMPTY, |p| tg_str::of(p)),
        None => tg_str::EMPTY,
    })
}

/// The short name of a status (`ok`, `null_argument`, `denied`, ...) as a static NUL-terminated
/// string; `unknown` for a number tollgate does not know.
#[unsafe(no_mangle)]
pub extern "C" fn tg_status_name(status: u32) -> *const c_char {
    value(c"unknown".as_ptr(), || name_of(status).as_ptr())
}

/// Frees an error. NULL does nothing.
///
/// # Safety
/// `err` must be NULL or an error from tollgate not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_error_free(err: *mut tg_error) {
    quietly(|| {
        if !err.is_null() {
            // SAFETY: an error handed out by `boundary` (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(err) });
        }
    })
}
