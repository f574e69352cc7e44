//! The decide API for hosts with their own HTTP client: admit → go / wait / deny, settle → done /
//! retry / give up. Plain structs in and out; no JSON unless the host passes a request body to
//! count.

use std::time::Duration;

use smallvec::SmallVec;

use super::engine::tg_engine;
use super::error::{boundary, quietly, value};
use super::{arg, nanos, out, put, put_some, tg_error, tg_status, tg_str};
use tollgate::policy::LimitKind;
use tollgate::retry::Failure;
use tollgate::tokens::Usage;
use tollgate::{Attempt, Call, Decision, Outcome, Permit, Prompt, Settlement, TargetRef, Verdict};

/// How `prompt` is given (the values of `prompt_kind`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_prompt_kind {
    /// `prompt_tokens` holds the prompt's token count, counted by the host.
    Tokens = 0,
    /// `prompt` is the prompt text, counted with the model's tokenizer.
    Text = 1,
    /// `prompt` is an OpenAI chat-completions request body (JSON); messages, tools and
    /// `max_tokens` are read from it.
    Request = 2,
}

/// One call to admit: who makes it, to which model, and how big it is. All strings are borrowed
/// for the duration of the function call. A zero-initialised struct is a valid call (empty
/// names, a prompt of 0 tokens).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tg_call {
    /// Calling tenant (budgets scoped by `tenant`).
    pub tenant: tg_str,
    /// Requested model.
    pub model: tg_str,
    /// Upstream the call goes to, when the host knows it.
    pub upstream: tg_str,
    /// API key name (or key-pool member) the call uses.
    pub key: tg_str,
    /// Route name.
    pub route: tg_str,
    /// Queue priority: higher goes first among waiting calls.
    pub priority: i16,
    /// A `tg_prompt_kind` value: how the prompt is given.
    pub prompt_kind: u32,
    /// `TG_PROMPT_KIND_TOKENS`: the prompt's token count.
    pub prompt_tokens: u64,
    /// `TG_PROMPT_KIND_TEXT`: the prompt text; `TG_PROMPT_KIND_REQUEST`: the request JSON.
    pub prompt: tg_str,
    /// Whether `max_tokens` is set; if not, the request's own `max_tokens`, else the policy's
    /// `defaults.max_completion_tokens`.
    pub has_max_tokens: bool,
    /// Completion allowance, when `has_max_tokens`.
    pub max_tokens: u64,
    /// Time the whole call (every attempt) may take from its first admission, in milliseconds;
    /// 0 for none.
    pub deadline_ms: u64,
    /// For a retry: the attempt from the previous `TG_VERDICT_KIND_RETRY` verdict (borrowed);
    /// NULL for a first attempt.
    pub attempt: *const tg_attempt,
}

/// What `admit` decided.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_decision_kind {
    /// Send the call now; settle the permit afterwards.
    Go = 0,
    /// No room now but the policy allows waiting: admit again after `after_ns`. Nothing is held.
    Wait = 1,
    /// Do not send the call.
    Deny = 2,
}

/// A limit of a budget.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_limit {
    /// No rate limit: concurrency, a queue of earlier calls, or not a budget's decision.
    None = 0,
    /// `requests_per_second`
    RequestsPerSecond = 1,
    /// `requests_per_minute`
    RequestsPerMinute = 2,
    /// `requests_per_hour`
    RequestsPerHour = 3,
    /// `requests_per_day`
    RequestsPerDay = 4,
    /// `tokens_per_minute`
    TokensPerMinute = 5,
    /// `tokens_per_hour`
    TokensPerHour = 6,
    /// `tokens_per_day`
    TokensPerDay = 7,
    /// `spend_per_day`
    SpendPerDay = 8,
    /// `spend_per_month`
    SpendPerMonth = 9,
}

impl From<LimitKind> for tg_limit {
    fn from(kind: LimitKind) -> tg_limit {
        match kind {
            LimitKind::RequestsPerSecond => tg_limit::RequestsPerSecond,
            LimitKind::RequestsPerMinute => tg_limit::RequestsPerMinute,
            LimitKind::RequestsPerHour => tg_limit::RequestsPerHour,
            LimitKind::RequestsPerDay => tg_limit::RequestsPerDay,
            LimitKind::TokensPerMinute => tg_limit::TokensPerMinute,
            LimitKind::TokensPerHour => tg_limit::TokensPerHour,
            LimitKind::TokensPerDay => tg_limit::TokensPerDay,
            LimitKind::SpendPerDay => tg_limit::SpendPerDay,
            LimitKind::SpendPerMonth => tg_limit::SpendPerMonth,
        }
    }
}

/// The answer of `tg_engine_admit`.
#[repr(C)]
#[derive(Debug)]
pub struct tg_decision {
    /// Go, wait or deny.
    pub kind: tg_decision_kind,
    /// `GO`: the permit, owned: settle it with `tg_engine_settle` or free it with
    /// `tg_permit_free` (which releases its slot and refunds it). NULL otherwise.
    pub permit: *mut tg_permit,
    /// `WAIT`: admit again after this many nanoseconds. `DENY`: when the same call could pass,
    /// if known (0 otherwise).
    pub after_ns: u64,
    /// `WAIT` and `DENY`: the deciding budget, empty when no budget decided. For `WAIT` it is
    /// valid until the engine is freed; for `DENY` until `denial` is freed.
    pub budget: tg_str,
    /// `WAIT` and `DENY`: the limit that had no room (`TG_LIMIT_NONE` for concurrency).
    pub limit: tg_limit,
    /// `DENY`: the refusal as an owned error (status `TG_STATUS_DENIED`, code such as
    /// `budget_exhausted`, message in words); free it with `tg_error_free`. NULL otherwise.
    pub denial: *mut tg_error,
}

/// Token usage as the upstream reported it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct tg_usage {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning tokens included.
    pub completion_tokens: u64,
    /// Total tokens (prompt + completion when the upstream does not say).
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_prompt_tokens: u64,
    /// Hidden reasoning tokens.
    pub reasoning_tokens: u64,
}

impl From<Usage> for tg_usage {
    fn from(u: Usage) -> tg_usage {
        tg_usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cached_prompt_tokens: u.cached_prompt_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

impl From<tg_usage> for Usage {
    fn from(u: tg_usage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: if u.total_tokens == 0 {
                u.prompt_tokens.saturating_add(u.completion_tokens)
            } else {
                u.total_tokens
            },
            cached_prompt_tokens: u.cached_prompt_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

/// What ended an attempt without a usable response (the values of `failure`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_failure {
    /// No transport failure (the status says how it went).
    None = 0,
    /// The connection was refused.
    ConnectRefused = 1,
    /// The connection was reset before a response head arrived.
    ConnectReset = 2,
    /// The host name did not resolve.
    ConnectDns = 3,
    /// The TLS handshake failed.
    ConnectTls = 4,
    /// Any other connect-phase error.
    ConnectOther = 5,
    /// Connecting took too long.
    TimeoutConnect = 6,
    /// The response head did not arrive in time.
    TimeoutFirstByte = 7,
    /// A stream fell silent too long between chunks.
    TimeoutIdle = 8,
    /// The whole attempt took too long.
    TimeoutTotal = 9,
    /// A 2xx whose body is not the expected JSON.
    Malformed = 10,
    /// A stream that ended before `[DONE]`.
    CutStream = 11,
}

/// The failure a `tg_failure` value names: value `n` is the `n`-th of
/// [`Failure::TRANSPORT`], whose codes are the enum's names (`TG_FAILURE_CONNECT_REFUSED` is
/// `connect_refused`; a test holds the header to it).
fn failure(code: u32) -> Result<Option<Failure>, Box<tg_error>> {
    if code == 0 {
        return Ok(None);
    }
    let index = usize::try_from(code - 1).unwrap_or(usize::MAX);
    match Failure::TRANSPORT.get(index) {
        Some(f) => Ok(Some(*f)),
        None => Err(tg_error::new(
            tg_status::InvalidArgument,
            format!("outcome.failure = {code} is not a tg_failure value"),
        )),
    }
}

/// One response header, borrowed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tg_header {
    /// Header name (ASCII, any case).
    pub name: tg_str,
    /// Raw header value.
    pub value: tg_str,
}

/// What happened to an admitted attempt; given to `tg_engine_settle`. A zero-initialised
/// struct means "not sent" (everything reserved is refunded).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tg_outcome {
    /// Whether the request left the host.
    pub sent: bool,
    /// HTTP status of the response; 0 when no response head arrived.
    pub status: u16,
    /// Whether `usage` holds the usage the response reported.
    pub has_usage: bool,
    /// Reported usage, when `has_usage`.
    pub usage: tg_usage,
    /// Time from send to the end of the response in nanoseconds; 0 when unknown.
    pub latency_ns: u64,
    /// A `tg_failure` value: the transport failure that ended the attempt, if any.
    pub failure: u32,
    /// Response headers (`Retry-After`, `retry-after-ms`, `x-ratelimit-*`, `x-should-retry`
    /// are read); may be NULL when `headers_len` is 0.
    pub headers: *const tg_header,
    /// Number of headers.
    pub headers_len: usize,
    /// Whether content already reached the caller (a stream): then it is never retried.
    pub content_delivered: bool,
}

/// What `settle` decided.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tg_verdict_kind {
    /// The call is finished.
    Done = 0,
    /// Try again after `retry_after_ns`, admitting with `attempt`.
    Retry = 1,
    /// The call failed and will not be retried.
    GiveUp = 2,
}

/// What a settled attempt was charged.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct tg_settlement {
    /// Tokens reserved at admission (prompt estimate plus completion allowance).
    pub reserved_tokens: u64,
    /// Tokens charged: the reported usage, the reservation when usage is unknown, 0 when the call
    /// was not sent or failed.
    pub tokens: u64,
    /// Whether `usage` holds reported usage.
    pub has_usage: bool,
    /// Reported usage.
    pub usage: tg_usage,
    /// Whether the cost fields hold a cost (usage and price known).
    pub has_cost: bool,
    /// Uncached prompt tokens × input price.
    pub cost_input: f64,
    /// Cached prompt tokens × cached-input price.
    pub cost_cached_input: f64,
    /// Completion tokens × output price.
    pub cost_output: f64,
    /// Money charged against spend budgets.
    pub spend: f64,
}

impl From<&Settlement> for tg_settlement {
    fn from(s: &Settlement) -> tg_settlement {
        tg_settlement {
            reserved_tokens: s.reserved_tokens,
            tokens: s.tokens,
            has_usage: s.usage.is_some(),
            usage: s.usage.map(tg_usage::from).unwrap_or_default(),
            has_cost: s.cost.is_some(),
            cost_input: s.cost.map_or(0.0, |c| c.input),
            cost_cached_input: s.cost.map_or(0.0, |c| c.cached_input),
            cost_output: s.cost.map_or(0.0, |c| c.output),
            spend: s.spend,
        }
    }
}

/// The answer of `tg_engine_settle`.
#[repr(C)]
#[derive(Debug)]
pub struct tg_verdict {
    /// Done, retry or give up.
    pub kind: tg_verdict_kind,
    /// What this attempt was charged (every kind).
    pub settlement: tg_settlement,
    /// `RETRY`: wait this many nanoseconds first.
    pub retry_after_ns: u64,
    /// `RETRY`: the state of the next attempt, owned: put it in `tg_call.attempt` when admitting
    /// the retry, then free it with `tg_attempt_free`. NULL otherwise.
    pub attempt: *mut tg_attempt,
    /// `GIVE_UP`: why, as an owned error (status `TG_STATUS_GAVE_UP`, code such as
    /// `attempts_exhausted`, the attempt history in the message); free it with
    /// `tg_error_free`. NULL otherwise.
    pub give_up: *mut tg_error,
}

/// Where an attempt goes, borrowed from the handle it was read from.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tg_target {
    /// The route that chose it.
    pub route: tg_str,
    /// Upstream name.
    pub upstream: tg_str,
    /// Model name to send.
    pub model: tg_str,
    /// Pool key id (the variable name of `env:NAME`; never the secret).
    pub key: tg_str,
}

impl tg_target {
    pub(crate) fn of(t: &TargetRef) -> tg_target {
        tg_target {
            route: tg_str::of(&t.route),
            upstream: tg_str::of(&t.upstream),
            model: tg_str::of(&t.model),
            key: tg_str::of(&t.key),
        }
    }
}

/// An admitted call's hold on its budgets (a concurrency slot and reservations). Settle it with
/// `tg_engine_settle` or free it with `tg_permit_free`; freeing without settling releases the
/// slot and refunds the reservations.
///
/// The handle is the permit's own allocation (no wrapper), so handing it across the boundary
/// costs no allocation.
pub struct tg_permit {
    _opaque: [u8; 0],
}

impl tg_permit {
    /// Hands a permit to the caller.
    pub(crate) fn give(permit: Permit) -> *mut tg_permit {
        permit.into_raw().cast()
    }

    /// Takes a permit back from the caller.
    ///
    /// # Safety
    /// `raw` must be a permit from `give`, taken back once.
    pub(crate) unsafe fn take(raw: *mut tg_permit) -> Permit {
        // SAFETY: forwarded to the caller.
        unsafe { Permit::from_raw(raw.cast()) }
    }

    /// Reads a permit the caller still owns.
    ///
    /// # Safety
    /// `raw` must be NULL or a live permit from `give`.
    unsafe fn peek<R>(raw: *const tg_permit, read: impl FnOnce(&Permit) -> R) -> Option<R> {
        if raw.is_null() {
            return None;
        }
        // SAFETY: a live permit; ManuallyDrop keeps ownership with the caller.
        let permit =
            std::mem::ManuallyDrop::new(unsafe { Permit::from_raw(raw.cast_mut().cast()) });
        Some(read(&permit))
    }
}

/// The state a retried call carries to its next admission (attempt number, deadline, next target,
/// history). Owned; free with `tg_attempt_free`.
pub struct tg_attempt {
    attempt: Box<Attempt>,
}

/// Builds the Rust call from the C one and runs `f` with it.
///
/// # Safety
/// Every pointer in `c` must satisfy the `tg_call` contract.
pub(crate) unsafe fn with_call<R>(
    c: &tg_call,
    f: impl FnOnce(&Call<'_>) -> R,
) -> Result<R, Box<tg_error>> {
    // SAFETY (every block below): pointers in `c` are borrowed for this call per the contract.
    let text = |s: tg_str, what| unsafe { s.text(what) };
    let mut call = Call::new(text(c.model, "call.model")?)
        .tenant(text(c.tenant, "call.tenant")?)
        .upstream(text(c.upstream, "call.upstream")?)
        .key(text(c.key, "call.key")?)
        .route(text(c.route, "call.route")?)
        .priority(c.priority);
    if c.has_max_tokens {
        call = call.max_tokens(c.max_tokens);
    }
    if c.deadline_ms > 0 {
        call = call.deadline(Duration::from_millis(c.deadline_ms));
    }
    // SAFETY: NULL or a live attempt, per the contract.
    if let Some(a) = unsafe { c.attempt.as_ref() } {
        call = call.attempt(&a.attempt);
    }
    match c.prompt_kind {
        0 => Ok(f(&call.prompt(Prompt::Tokens(c.prompt_tokens)))),
        1 => Ok(f(&call.prompt(Prompt::Text(text(c.prompt, "call.prompt")?)))),
        2 => {
            // SAFETY: borrowed per the contract.
            let bytes = unsafe { c.prompt.bytes("call.prompt")? };
            let request = super::json_arg(bytes, "call.prompt")?;
            Ok(f(&call.prompt(Prompt::Request(&request))))
        }
        other => Err(tg_error::new(
            tg_status::InvalidArgument,
            format!("call.prompt_kind = {other} is not a tg_prompt_kind value"),
        )),
    }
}

/// Decides whether a call may go now. `GO` reserves its estimated requests, tokens and money in
/// every matching budget and holds a concurrency slot (all-or-nothing); `WAIT` holds nothing;
/// `DENY` says which budget refused and why. Never blocks.
///
/// Errors (the call is then not admitted): a NULL `engine`, `call` or `out_decision`; a string
/// that is not UTF-8; an unknown `prompt_kind`; a request body that is not JSON.
///
/// # Safety
/// `engine` must be a live engine; `call` must satisfy the `tg_call` contract; `out_decision` and
/// `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_admit(
    engine: *const tg_engine,
    call: *const tg_call,
    out_decision: *mut tg_decision,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        // SAFETY: NULL or a valid struct, per the contract.
        let call = unsafe { arg(call, "call")? };
        let out_decision = out(out_decision, "out_decision")?;
        // SAFETY: the struct's pointers follow the contract.
        let decision = unsafe { with_call(call, |c| engine.engine.admit(c))? };
        let answer = match decision {
            Decision::Go(permit) => tg_decision {
                kind: tg_decision_kind::Go,
                permit: tg_permit::give(permit),
                after_ns: 0,
                budget: tg_str::EMPTY,
                limit: tg_limit::None,
                denial: std::ptr::null_mut(),
            },
            Decision::Wait(hint) => tg_decision {
                kind: tg_decision_kind::Wait,
                permit: std::ptr::null_mut(),
                after_ns: nanos(hint.after),
                // The engine retains every budget name of every policy it ran (tg_engine::names).
                budget: tg_str::of(&hint.budget),
                limit: hint.limit.map_or(tg_limit::None, tg_limit::from),
                denial: std::ptr::null_mut(),
            },
            Decision::Deny(denial) => {
                let limit = match denial.reason {
                    tollgate::DenyReason::Exhausted { limit, .. }
                    | tollgate::DenyReason::NeverFits { limit, .. } => limit.into(),
                    _ => tg_limit::None,
                };
                let error = tg_error::denial(&denial);
                let after_ns = denial.retry_after().map_or(0, nanos);
                let error = Box::into_raw(error);
                tg_decision {
                    kind: tg_decision_kind::Deny,
                    permit: std::ptr::null_mut(),
                    after_ns,
                    // SAFETY: just allocated; the string lives as long as the error.
                    budget: unsafe { super::error::tg_error_budget(error) },
                    limit,
                    denial: error,
                }
            }
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_decision, answer) };
        Ok(())
    })
}

/// Admits a call, waiting in the budgets' priority queues as long as the policy allows
/// (`when_exhausted = { wait_up_to = ... }`). **Blocks** the calling thread. On success
/// `*out_permit` receives the permit; a refusal is `TG_STATUS_DENIED` with the denial as the error.
/// Returns `TG_STATUS_WRONG_THREAD` on a tollgate worker thread (inside a callback).
///
/// # Safety
/// As `tg_engine_admit`; `out_permit` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_acquire(
    engine: *const tg_engine,
    call: *const tg_call,
    out_permit: *mut *mut tg_permit,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        // SAFETY: NULL or a valid struct, per the contract.
        let call = unsafe { arg(call, "call")? };
        let out_permit = out(out_permit, "out_permit")?;
        super::engine::not_on_worker("tg_engine_acquire")?;
        // SAFETY: the struct's pointers follow the contract.
        let permit = unsafe { with_call(call, |c| engine.engine.acquire(c))? }
            .map_err(|d| tg_error::denial(&d))?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_permit, tg_permit::give(permit)) };
        Ok(())
    })
}

/// Tells the engine how an admitted attempt went and gets the verdict: done, retry (after a
/// delay, maybe on another target) or give up. Settling replaces the reservation by the actual
/// usage (refund or extra charge), releases the concurrency slot, feeds the circuit breaker and
/// the retry budget, and honours the server's rate-limit headers.
///
/// `permit` is consumed in every case, even when an error is returned (it is then released as
/// `tg_permit_free` would). Errors: a NULL `engine`, `permit`, `outcome` or `out_verdict`; an
/// unknown `failure` value; a header that is not UTF-8.
///
/// # Safety
/// `engine` must be a live engine; `permit` NULL or a live permit (not used again);
/// `outcome` must satisfy the `tg_outcome` contract; `out_verdict` and `err` writable when not
/// NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_settle(
    engine: *const tg_engine,
    permit: *mut tg_permit,
    outcome: *const tg_outcome,
    out_verdict: *mut tg_verdict,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // Owned from here on, so every early return releases it.
        let permit = (!permit.is_null()).then(|| {
            // SAFETY: a permit from `tg_engine_admit`, used once.
            unsafe { tg_permit::take(permit) }
        });
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let permit = permit.ok_or_else(|| tg_error::null("permit"))?;
        // SAFETY: NULL or a valid struct, per the contract.
        let o = unsafe { arg(outcome, "outcome")? };
        let out_verdict = out(out_verdict, "out_verdict")?;
        // SAFETY: pointer + length from the caller.
        let headers = unsafe { super::bytes_arg(o.headers.cast(), o.headers_len, "headers") };
        let raw: &[tg_header] = match headers {
            // SAFETY: `headers_len` elements of `tg_header`, per the contract.
            Ok(_) if o.headers_len > 0 => unsafe {
                std::slice::from_raw_parts(o.headers, o.headers_len)
            },
            Ok(_) => &[],
            Err(e) => return Err(e),
        };
        let mut pairs: SmallVec<[(&str, &[u8]); 8]> = SmallVec::with_capacity(raw.len());
        for h in raw {
            // SAFETY: borrowed per the contract.
            let name = unsafe { h.name.text("header name")? };
            // SAFETY: borrowed per the contract.
            let value = unsafe { h.value.bytes("header value")? };
            pairs.push((name, value));
        }
        let outcome = Outcome {
            sent: o.sent,
            status: (o.status != 0).then_some(o.status),
            usage: o.has_usage.then(|| Usage::from(o.usage)),
            latency: (o.latency_ns != 0).then(|| Duration::from_nanos(o.latency_ns)),
            failure: failure(o.failure)?,
            headers: &pairs,
            content_delivered: o.content_delivered,
            error: None,
        };
        let verdict = engine.engine.settle(permit, &outcome);
        let answer = match verdict {
            Verdict::Done(s) => tg_verdict {
                kind: tg_verdict_kind::Done,
                settlement: (&s).into(),
                retry_after_ns: 0,
                attempt: std::ptr::null_mut(),
                give_up: std::ptr::null_mut(),
            },
            Verdict::Retry {
                after,
                attempt,
                settlement,
                ..
            } => tg_verdict {
                kind: tg_verdict_kind::Retry,
                settlement: (&settlement).into(),
                retry_after_ns: nanos(after),
                attempt: Box::into_raw(Box::new(tg_attempt { attempt })),
                give_up: std::ptr::null_mut(),
            },
            Verdict::GiveUp { reason, settlement } => tg_verdict {
                kind: tg_verdict_kind::GiveUp,
                settlement: (&settlement).into(),
                retry_after_ns: 0,
                attempt: std::ptr::null_mut(),
                give_up: Box::into_raw(tg_error::give_up(&reason, o.status)),
            },
            // A verdict this version of the C ABI does not know: the call is over for the host,
            // charged what the engine says (a new kind gets its own tg_verdict_kind first).
            other => tg_verdict {
                kind: tg_verdict_kind::Done,
                settlement: other.settlement().into(),
                retry_after_ns: 0,
                attempt: std::ptr::null_mut(),
                give_up: std::ptr::null_mut(),
            },
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_verdict, answer) };
        Ok(())
    })
}

/// Frees a permit without settling it: its concurrency slot is released and its reservations
/// refunded, as for a call that was never sent. NULL does nothing.
///
/// # Safety
/// `permit` must be NULL or a permit not yet settled or freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_permit_free(permit: *mut tg_permit) {
    quietly(|| {
        if !permit.is_null() {
            // SAFETY: from `tg_engine_admit`/`tg_engine_acquire`, freed once.
            drop(unsafe { tg_permit::take(permit) });
        }
    })
}

/// Prompt tokens the permit reserved (counted or given); 0 for NULL.
///
/// # Safety
/// `permit` must be NULL or a live permit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_permit_prompt_tokens(permit: *const tg_permit) -> u64 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { tg_permit::peek(permit, Permit::prompt_tokens) }.unwrap_or(0)
    })
}

/// Tokens the permit reserved in all (prompt plus completion allowance); 0 for NULL.
///
/// # Safety
/// `permit` must be NULL or a live permit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_permit_reserved_tokens(permit: *const tg_permit) -> u64 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { tg_permit::peek(permit, Permit::reserved_tokens) }.unwrap_or(0)
    })
}

/// The call's estimated cost at admission: prompt plus completion allowance at the model's price
/// (what spend budgets reserve). 0 when the model has no price, or for NULL.
///
/// # Safety
/// `permit` must be NULL or a live permit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_permit_estimated_cost(permit: *const tg_permit) -> f64 {
    // SAFETY: NULL or live, per the contract.
    value(0.0, || {
        unsafe { tg_permit::peek(permit, Permit::estimated_cost) }.unwrap_or(0.0)
    })
}

/// Where the admitted attempt should go, when the call was routed by the policy's `[[route]]`s:
/// writes the target (strings valid while the permit lives) and returns true. Returns false when
/// the call was not routed or a pointer is NULL.
///
/// # Safety
/// `permit` must be NULL or a live permit; `out_target` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_permit_target(
    permit: *const tg_permit,
    out_target: *mut tg_target,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        unsafe { tg_permit::peek(permit, |p| write_target(p.target(), out_target)) }
            .unwrap_or(false)
    })
}

/// Writes `target` to `out` when both are there.
pub(crate) fn write_target(target: Option<&TargetRef>, out_target: *mut tg_target) -> bool {
    put_some(target.map(tg_target::of), out_target)
}

/// The number of the attempt this state is for (2 for the first retry); 0 for NULL.
///
/// # Safety
/// `attempt` must be NULL or a live attempt.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_attempt_number(attempt: *const tg_attempt) -> u32 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { attempt.as_ref() }.map_or(0, |a| a.attempt.number())
    })
}

/// Where the retry should go, when the engine chose a target (a fallback, another key): writes it
/// (strings valid while the attempt lives) and returns true; false otherwise or for NULL.
///
/// # Safety
/// `attempt` must be NULL or a live attempt; `out_target` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_attempt_target(
    attempt: *const tg_attempt,
    out_target: *mut tg_target,
) -> bool {
    value(false, || {
        // SAFETY: NULL or live, per the contract.
        let target = unsafe { attempt.as_ref() }.and_then(|a| a.attempt.next_target());
        write_target(target, out_target)
    })
}

/// Frees an attempt. NULL does nothing.
///
/// # Safety
/// `attempt` must be NULL or an attempt not yet freed, and no `tg_call` being admitted may still
/// point to it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_attempt_free(attempt: *mut tg_attempt) {
    quietly(|| {
        if !attempt.is_null() {
            // SAFETY: from `tg_engine_settle`, freed once.
            drop(unsafe { Box::from_raw(attempt) });
        }
    })
}
