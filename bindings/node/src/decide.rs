//! The decide API for hosts that keep their own HTTP client: `admit`, `settle`, and what a permit
//! tells.
//!
//! This is the hot path (the target is a microsecond per admit + settle pair from JavaScript),
//! and a napi call costs what it touches: a class method unwraps `this` (~100 ns here), every
//! string argument is copied (~100 ns), every external or weak reference is work for the
//! garbage collector (~500 ns). So the pair is two module functions without arguments,
//! [`admit_fast`] and [`settle_fast`]:
//! - numbers go through one `Float64Array` per thread ([`io`]), at the slots named below;
//! - names (model, tenant, ...) are interned once ([`intern`]) and passed as ids;
//! - the engine is an index into this thread's registry, and a permit a number: a slot in its
//!   engine's table, with a generation so a stale handle never settles another call;
//! - a `done` verdict comes back as 0 with the settlement in `io`; only waits, denials,
//!   retries and give-ups build objects.
//!
//! [`admit`] and [`settle`] take what does not fit that (names not interned, prompt text, a
//! request body, a failure code, headers) as arguments. Releasing a permit that JavaScript
//! dropped unsettled is `index.js`'s job (a `FinalizationRegistry` calls
//! [`NativeEngine::release`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ptr;

use napi::bindgen_prelude::{Either, External, PromiseRaw};
use napi::{Env, Unknown, sys};
use napi_derive::napi;
use tollgate::retry::Failure;
use tollgate::{Attempt, Call, Decision, Outcome, Permit, Prompt, Verdict};

use crate::engine::NativeEngine;
use crate::error::{ErrorInfo, SettlementJs, TargetJs};
use crate::registry::with_engine;

/// Length of the `io` array (its slots are [`SLOTS`]).
pub const IO_LEN: usize = 32;

/// Declares named constants once: each a `pub const`, and an entry `(name, value)` of the table
/// `$table`, which [`io_layout`] hands to `index.js` (it has no copy of the numbers).
macro_rules! layout {
    ($(#[doc = $table_doc:literal])* $table:ident: $ty:ty {
        $($(#[doc = $doc:literal])* $name:ident = $value:literal,)*
    }) => {
        $($(#[doc = $doc])* pub const $name: $ty = $value;)*
        $(#[doc = $table_doc])*
        pub const $table: &[(&str, $ty)] = &[$((stringify!($name), $name)),*];
    };
}

layout! {
    /// Every slot of `io`, by name.
    SLOTS: usize {
        /// `io`: the engine's index in this thread's registry.
        ENGINE = 0,
        /// `io`, admit: prompt tokens counted by the host (negative: none).
        PROMPT_TOKENS = 1,
        /// `io`, admit: completion allowance (negative: the request's or the policy's).
        MAX_TOKENS = 2,
        /// `io`, admit: queue priority.
        PRIORITY = 3,
        /// `io`, admit: deadline of the whole call in ms (negative: none).
        DEADLINE_MS = 4,
        /// `io`, admit: interned model id (negative: given as an argument, or none).
        MODEL = 5,
        /// `io`, admit: interned tenant id.
        TENANT = 6,
        /// `io`, admit: interned upstream id.
        UPSTREAM = 7,
        /// `io`, admit: interned key id.
        KEY = 8,
        /// `io`, admit: interned route id.
        ROUTE = 9,
        /// `io`, settle: the permit handle.
        PERMIT = 10,
        /// `io`, settle: HTTP status (0: no response head).
        STATUS = 11,
        /// `io`, settle: usage prompt tokens (negative: no usage reported).
        USAGE_PROMPT = 12,
        /// `io`, settle: usage completion tokens.
        USAGE_COMPLETION = 13,
        /// `io`, settle: usage total tokens (negative: prompt + completion).
        USAGE_TOTAL = 14,
        /// `io`, settle: cached prompt tokens.
        USAGE_CACHED = 15,
        /// `io`, settle: reasoning tokens.
        USAGE_REASONING = 16,
        /// `io`, settle: latency in ms (negative: unknown).
        LATENCY_MS = 17,
        /// `io`, settle: flags, [`FLAG_SENT`] | [`FLAG_CONTENT_DELIVERED`].
        FLAGS = 18,
        /// `io`, settle out: tokens reserved at admission.
        OUT_RESERVED = 19,
        /// `io`, settle out: tokens charged.
        OUT_TOKENS = 20,
        /// `io`, settle out: money charged.
        OUT_SPEND = 21,
        /// `io`, settle out: cost of input tokens (NaN: no cost known).
        OUT_COST_INPUT = 22,
        /// `io`, settle out: cost of cached input tokens.
        OUT_COST_CACHED = 23,
        /// `io`, settle out: cost of output tokens.
        OUT_COST_OUTPUT = 24,
    }
}

layout! {
    /// Every bit of `io[FLAGS]`, by name.
    FLAG_BITS: u32 {
        /// Flag: the request left the host.
        FLAG_SENT = 1,
        /// Flag: content already reached the caller (a stream).
        FLAG_CONTENT_DELIVERED = 2,
    }
}

/// The id `index.js` gives a name it passes as an argument (its table of interned names is
/// full); -1 is no name. Any negative id names nothing here.
pub const NAMED: i32 = -2;

// Checked when the crate compiles: every slot is inside `io` and no two share one; the flags
// are distinct single bits.
const _: () = {
    let mut i = 0;
    while i < SLOTS.len() {
        assert!(SLOTS[i].1 < IO_LEN, "an io slot is past IO_LEN");
        let mut j = i + 1;
        while j < SLOTS.len() {
            assert!(SLOTS[i].1 != SLOTS[j].1, "two io slots share an index");
            j += 1;
        }
        i += 1;
    }
    let mut seen = 0u32;
    let mut k = 0;
    while k < FLAG_BITS.len() {
        let bit = FLAG_BITS[k].1;
        assert!(
            bit.is_power_of_two() && seen & bit == 0,
            "flags must be distinct bits"
        );
        seen |= bit;
        k += 1;
    }
    assert!(NAMED < -1, "NAMED must not be a name id or -1 (no name)");
};

/// Most names one thread interns; past it, names are passed as arguments.
pub const MAX_NAMES: usize = 4096;

thread_local! {
    /// This thread's `io` array: its memory, and a reference that keeps it alive (never
    /// deleted: one small array per thread that loads the addon).
    static IO: Cell<(*mut f64, sys::napi_ref)> = const { Cell::new((ptr::null_mut(), ptr::null_mut())) };
    static NAMES: RefCell<Vec<Box<str>>> = const { RefCell::new(Vec::new()) };
}

/// The `io` slots, or an error when [`io`] was never called on this thread.
fn io_slots() -> napi::Result<&'static mut [f64]> {
    let (data, _) = IO.with(Cell::get);
    if data.is_null() {
        return Err(ErrorInfo::invalid_argument("io() was not called on this thread").into_napi());
    }
    // SAFETY: `data` is the backing store of this thread's `io` array, IO_LEN f64s, kept alive
    // by a reference that is never deleted. Only this thread's JavaScript touches it, and it
    // does not run while this native call does.
    Ok(unsafe { std::slice::from_raw_parts_mut(data, IO_LEN) })
}

fn check(status: sys::napi_status, what: &str) -> napi::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::new(
            napi::Status::from(status),
            format!("{what} failed"),
        ))
    }
}

/// This thread's `io` array (a `Float64Array` of [`IO_LEN`] slots), created on first use.
#[napi(ts_return_type = "Float64Array")]
pub fn io(env: &Env) -> napi::Result<Unknown<'_>> {
    let raw = env.raw();
    let (data, reference) = IO.with(Cell::get);
    let mut value = ptr::null_mut();
    if !data.is_null() {
        // SAFETY: a reference created below on this thread's env, never deleted.
        check(
            unsafe { sys::napi_get_reference_value(raw, reference, &mut value) },
            "napi_get_reference_value",
        )?;
        // SAFETY: `value` is a live value of this env.
        return Ok(unsafe { Unknown::from_raw_unchecked(raw, value) });
    }
    let mut memory = ptr::null_mut();
    let mut buffer = ptr::null_mut();
    let mut reference = ptr::null_mut();
    // SAFETY: plain napi calls on the current env with out-pointers to locals.
    unsafe {
        check(
            sys::napi_create_arraybuffer(raw, IO_LEN * 8, &mut memory, &mut buffer),
            "napi_create_arraybuffer",
        )?;
        check(
            sys::napi_create_typedarray(
                raw,
                sys::TypedarrayType::float64_array,
                IO_LEN,
                buffer,
                0,
                &mut value,
            ),
            "napi_create_typedarray",
        )?;
        check(
            sys::napi_create_reference(raw, value, 1, &mut reference),
            "napi_create_reference",
        )?;
    }
    IO.with(|c| c.set((memory.cast(), reference)));
    // SAFETY: `value` is a live value of this env.
    Ok(unsafe { Unknown::from_raw_unchecked(raw, value) })
}

/// Interns a name (model, tenant, upstream, key, route) for the decide path; returns its id,
/// or -1 when this thread already holds [`MAX_NAMES`] names (pass it as an argument then).
#[napi]
pub fn intern(name: String) -> i32 {
    NAMES.with(|n| {
        let mut names = n.borrow_mut();
        if let Some(i) = names.iter().position(|s| **s == *name) {
            return i as i32;
        }
        if names.len() >= MAX_NAMES {
            return -1;
        }
        names.push(name.into_boxed_str());
        (names.len() - 1) as i32
    })
}

/// The layout of `io`, as [`io_layout`] gives it.
#[napi(object, object_from_js = false)]
pub struct IoLayoutJs {
    /// The array's length ([`IO_LEN`]).
    pub len: u32,
    /// Every slot's index, by name ([`SLOTS`]: `ENGINE`, `PROMPT_TOKENS`, ...).
    #[napi(ts_type = "Record<string, number>")]
    pub slots: BTreeMap<&'static str, u32>,
    /// Every bit of the `FLAGS` slot, by name ([`FLAG_BITS`]: `FLAG_SENT`, ...).
    #[napi(ts_type = "Record<string, number>")]
    pub flags: BTreeMap<&'static str, u32>,
    /// The id of a name passed as an argument ([`NAMED`]).
    pub named: i32,
}

/// The layout of `io`: its length, its slots, the bits of its `FLAGS` slot and the [`NAMED`]
/// id, from the constants above. `index.js` reads it once when it loads and keeps no copy of
/// the numbers.
#[napi]
pub fn io_layout() -> IoLayoutJs {
    IoLayoutJs {
        len: IO_LEN as u32,
        slots: SLOTS.iter().map(|&(name, i)| (name, i as u32)).collect(),
        flags: FLAG_BITS.iter().copied().collect(),
        named: NAMED,
    }
}

/// `admit`'s answer when it is not `go` (a go is the permit external itself).
#[napi(object, object_from_js = false)]
pub struct AdmitJs {
    /// `wait` or `deny`.
    pub kind: String,
    /// Wait: ask again after this long.
    pub after_ms: Option<f64>,
    /// Wait: the budget without room; empty when no budget made the call wait (every target of
    /// its route is passed over for a known time, e.g. an open circuit).
    pub budget: Option<String>,
    /// Wait: its scope key.
    pub key: Option<String>,
    /// Wait: the exhausted limit (none for concurrency or a queue).
    pub limit: Option<String>,
    /// Deny: why.
    pub error: Option<ErrorInfo>,
}

/// `settle`'s answer when it is not `done` (a done is the number 0).
#[napi(object, object_from_js = false)]
pub struct VerdictJs {
    /// `retry` or `give_up`.
    pub kind: String,
    /// What this attempt was charged.
    pub settlement: SettlementJs,
    /// Retry: wait this long first.
    pub after_ms: Option<f64>,
    /// Retry: where the next attempt should go, when the engine chose.
    pub target: Option<TargetJs>,
    /// Retry: the state to pass to the next admission.
    pub attempt: Option<External<Attempt>>,
    /// Give up: why, with every attempt.
    pub reason: Option<ErrorInfo>,
}

/// What a permit holds, read on demand.
#[napi(object, object_from_js = false)]
pub struct PermitInfoJs {
    /// The budgets holding capacity for the call, as `[name, key]` pairs.
    pub budgets: Vec<Vec<String>>,
    /// Where to send the call, when a route chose.
    pub target: Option<TargetJs>,
    /// Which attempt of the call this is (1 for the first).
    pub attempt: u32,
    /// Prompt tokens estimated at admission.
    pub prompt_tokens: f64,
    /// Completion allowance reserved.
    pub completion_allowance: f64,
    /// Prompt plus completion allowance.
    pub reserved_tokens: f64,
    /// Whether the prompt count is exact (BPE).
    pub exact_prompt: bool,
    /// The cost reserved.
    pub estimated_cost: f64,
}

fn optional(v: f64) -> Option<u64> {
    (v >= 0.0 && v.is_finite()).then_some(v as u64)
}

/// The failure a host's `outcome.failure` names: one of tollgate's failure codes
/// ([`Failure::code`]: `connect_refused`, `timeout_first_byte`, `status_503`, ...) or their short
/// forms (`connect`, `reset`, `dns`, `tls`, `timeout`), as [`Failure::from_code`] reads them.
fn failure_of(code: &str) -> napi::Result<Failure> {
    Failure::from_code(code).ok_or_else(|| {
        let codes: Vec<_> = Failure::TRANSPORT.iter().map(Failure::code).collect();
        ErrorInfo::invalid_argument(format!(
            "outcome.failure '{code}' is not a failure code: use one of {}, or status_NNN for \
             a status that is not 2xx (status_503)",
            codes.join(", ")
        ))
        .into_napi()
    })
}

fn name_arg<'a>(names: &'a [Box<str>], id: f64, arg: Option<&'a str>) -> &'a str {
    match arg {
        Some(a) => a,
        None if id >= 0.0 => names.get(id as usize).map_or("", |s| s),
        None => "",
    }
}

/// Names given as arguments to [`admit`] instead of interned ids.
#[derive(Default)]
struct Named {
    model: Option<String>,
    tenant: Option<String>,
    upstream: Option<String>,
    key: Option<String>,
    route: Option<String>,
    prompt: Option<String>,
    request: Option<String>,
}

fn admit_with(named: Named) -> napi::Result<Either<f64, AdmitJs>> {
    let io = io_slots()?;
    let prompt_tokens = optional(io[PROMPT_TOKENS]);
    let body: Option<serde_json::Value> = match (&prompt_tokens, &named.prompt, &named.request) {
        (None, None, Some(json)) => Some(serde_json::from_str(json).map_err(|e| {
            ErrorInfo::new("invalid_request", format!("request is not JSON: {e}")).into_napi()
        })?),
        _ => None,
    };
    with_engine(io[ENGINE] as u32, |r| {
        let attempt = r.attempt.take();
        let decision = NAMES.with(|n| {
            let names = n.borrow();
            let mut call = Call::new(name_arg(&names, io[MODEL], named.model.as_deref()))
                .tenant(name_arg(&names, io[TENANT], named.tenant.as_deref()))
                .upstream(name_arg(&names, io[UPSTREAM], named.upstream.as_deref()))
                .key(name_arg(&names, io[KEY], named.key.as_deref()))
                .route(name_arg(&names, io[ROUTE], named.route.as_deref()))
                .priority(io[PRIORITY].clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16);
            call.prompt = prompt(prompt_tokens, named.prompt.as_deref(), body.as_ref());
            call.max_tokens = optional(io[MAX_TOKENS]);
            call.deadline = optional(io[DEADLINE_MS]).map(std::time::Duration::from_millis);
            call.attempt = attempt.as_deref();
            r.engine.admit(&call)
        });
        Ok(match go_or(decision) {
            Either::A(permit) => Either::A(r.permits.insert(permit)),
            Either::B(not) => Either::B(not),
        })
    })
}

/// The prompt of a call: the host's count, else the text, else the request body to count.
fn prompt<'a>(
    tokens: Option<u64>,
    text: Option<&'a str>,
    body: Option<&'a serde_json::Value>,
) -> Prompt<'a> {
    match (tokens, text, body) {
        (Some(n), _, _) => Prompt::Tokens(n),
        (None, Some(text), _) => Prompt::Text(text),
        (None, None, Some(body)) => Prompt::Request(body),
        (None, None, None) => Prompt::Tokens(0),
    }
}

/// The permit of a go, or the [`AdmitJs`] of a wait or a denial.
fn go_or(decision: Decision) -> Either<Permit, AdmitJs> {
    match decision {
        Decision::Go(permit) => Either::A(permit),
        Decision::Wait(hint) => Either::B(AdmitJs {
            kind: "wait".into(),
            after_ms: Some(hint.after.as_secs_f64() * 1e3),
            budget: Some(hint.budget.to_string()),
            key: Some(hint.key.to_string()),
            limit: hint.limit.map(|l| l.as_str().to_owned()),
            error: None,
        }),
        Decision::Deny(denial) => Either::B(AdmitJs {
            kind: "deny".into(),
            after_ms: None,
            budget: None,
            key: None,
            limit: None,
            error: Some(ErrorInfo::denial(&denial)),
        }),
    }
}

/// A call for [`NativeEngine::admit_async`], every part given here (not through `io`).
#[napi(object)]
pub struct AdmitCallJs {
    /// The model asked for.
    pub model: Option<String>,
    /// The tenant.
    pub tenant: Option<String>,
    /// The upstream, when the host chose it.
    pub upstream: Option<String>,
    /// The upstream key, when the host chose it.
    pub key: Option<String>,
    /// The route.
    pub route: Option<String>,
    /// Prompt tokens counted by the host.
    pub prompt_tokens: Option<f64>,
    /// The prompt as text, counted here.
    pub prompt: Option<String>,
    /// The request body (JSON), counted here.
    pub request: Option<String>,
    /// Completion allowance.
    pub max_tokens: Option<f64>,
    /// Queue priority.
    pub priority: Option<f64>,
    /// Deadline of the whole call in ms.
    pub deadline_ms: Option<f64>,
}

/// A call admitted off this thread: what [`Call`] borrows, owned.
struct OwnedCall {
    names: [String; 5],
    priority: i16,
    prompt_tokens: Option<u64>,
    prompt: Option<String>,
    request: Option<serde_json::Value>,
    max_tokens: Option<u64>,
    deadline: Option<std::time::Duration>,
    attempt: Option<Box<Attempt>>,
}

impl OwnedCall {
    fn call(&self) -> Call<'_> {
        let [model, tenant, upstream, key, route] = &self.names;
        let mut call = Call::new(model)
            .tenant(tenant)
            .upstream(upstream)
            .key(key)
            .route(route)
            .priority(self.priority);
        call.prompt = prompt(
            self.prompt_tokens,
            self.prompt.as_deref(),
            self.request.as_ref(),
        );
        call.max_tokens = self.max_tokens;
        call.deadline = self.deadline;
        call.attempt = self.attempt.as_deref();
        call
    }
}

/// A permit [`NativeEngine::admit_async`] admitted, until [`NativeEngine::adopt_permit`] files
/// it in the engine's table; collected unadopted, it is released.
pub struct PendingPermit(std::sync::Mutex<Option<Permit>>);

/// Admits a call described entirely by `io` (engine, numbers, interned names): returns the
/// permit handle (a number) for a go, an [`AdmitJs`] for wait and deny.
#[napi]
pub fn admit_fast() -> napi::Result<Either<f64, AdmitJs>> {
    admit_with(Named::default())
}

/// As [`admit_fast`], with names that are not interned given here (they win over `io`'s
/// ids), and the prompt as `prompt` text or a `request` body (JSON) when `io` has no token
/// count.
#[allow(clippy::too_many_arguments)]
#[napi]
pub fn admit(
    model: Option<String>,
    tenant: Option<String>,
    upstream: Option<String>,
    key: Option<String>,
    route: Option<String>,
    prompt: Option<String>,
    request: Option<String>,
) -> napi::Result<Either<f64, AdmitJs>> {
    admit_with(Named {
        model,
        tenant,
        upstream,
        key,
        route,
        prompt,
        request,
    })
}

fn settle_with(
    failure: Option<Failure>,
    headers: &[(&str, &[u8])],
) -> napi::Result<Either<u32, VerdictJs>> {
    let io = io_slots()?;
    let permit = with_engine(io[ENGINE] as u32, |r| {
        r.permits
            .take(io[PERMIT])
            .ok_or_else(|| {
                ErrorInfo::invalid_argument("this permit was already settled or released")
                    .into_napi()
            })
            .map(|p| (p, r.engine.clone()))
    });
    let (permit, engine) = permit?;
    let status = io[STATUS];
    let flags = io[FLAGS] as u32;
    let usage = optional(io[USAGE_PROMPT]).map(|prompt| {
        let completion = optional(io[USAGE_COMPLETION]).unwrap_or(0);
        tollgate::tokens::Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: optional(io[USAGE_TOTAL]).unwrap_or(prompt.saturating_add(completion)),
            cached_prompt_tokens: optional(io[USAGE_CACHED]).unwrap_or(0),
            reasoning_tokens: optional(io[USAGE_REASONING]).unwrap_or(0),
        }
    });
    let outcome = Outcome {
        sent: flags & FLAG_SENT != 0,
        status: (1.0..1000.0).contains(&status).then_some(status as u16),
        usage,
        latency: optional(io[LATENCY_MS] * 1e3).map(std::time::Duration::from_micros),
        failure,
        headers,
        content_delivered: flags & FLAG_CONTENT_DELIVERED != 0,
        error: None,
    };
    let verdict = engine.settle(permit, &outcome);
    Ok(match verdict {
        Verdict::Done(s) => {
            io[OUT_RESERVED] = s.reserved_tokens as f64;
            io[OUT_TOKENS] = s.tokens as f64;
            io[OUT_SPEND] = s.spend;
            let (i, c, o) = s.cost.map_or((f64::NAN, f64::NAN, f64::NAN), |c| {
                (c.input, c.cached_input, c.output)
            });
            io[OUT_COST_INPUT] = i;
            io[OUT_COST_CACHED] = c;
            io[OUT_COST_OUTPUT] = o;
            Either::A(0)
        }
        Verdict::Retry {
            after,
            target,
            attempt,
            settlement,
        } => Either::B(VerdictJs {
            kind: "retry".into(),
            settlement: SettlementJs::from(&settlement),
            after_ms: Some(after.as_secs_f64() * 1e3),
            target: target.as_ref().map(TargetJs::from),
            attempt: Some(External::new(*attempt)),
            reason: None,
        }),
        Verdict::GiveUp { reason, settlement } => Either::B(VerdictJs {
            kind: "give_up".into(),
            settlement: SettlementJs::from(&settlement),
            after_ms: None,
            target: None,
            attempt: None,
            reason: Some(ErrorInfo::give_up(&reason, outcome.status, None)),
        }),
        other => Either::B(VerdictJs {
            kind: other.kind().into(),
            settlement: SettlementJs::from(other.settlement()),
            after_ms: None,
            target: None,
            attempt: None,
            reason: None,
        }),
    })
}

/// Settles the permit `io` names with the outcome in `io` (status, usage, latency, flags): a
/// done verdict returns 0 and writes the settlement to `io`; retry and give up return a
/// [`VerdictJs`].
#[napi]
pub fn settle_fast() -> napi::Result<Either<u32, VerdictJs>> {
    settle_with(None, &[])
}

/// As [`settle_fast`], with a `failure` code (`connect_refused`, `status_503`, ...: what
/// [`Failure::from_code`] reads) and the response `headers` as `[name, value, name, value, ...]`.
/// An unknown code throws, and the permit stays unsettled.
#[napi]
pub fn settle(
    failure: Option<String>,
    headers: Option<Vec<String>>,
) -> napi::Result<Either<u32, VerdictJs>> {
    let failure = match failure.as_deref() {
        None | Some("") => None,
        Some(code) => Some(failure_of(code)?),
    };
    let pairs: Vec<(&str, &[u8])> = headers
        .as_deref()
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|p| (p[0].as_str(), p[1].as_bytes()))
        .collect();
    settle_with(failure, &pairs)
}

#[napi]
impl NativeEngine {
    /// As `admit`, without blocking this thread while budgets in Redis are asked (the round
    /// trip is awaited on tollgate's runtime; local budgets answer at once). Resolves to a
    /// pending permit for a go (give it to [`NativeEngine::adopt_permit`]), an [`AdmitJs`] for
    /// wait and deny. Takes the retry state [`NativeEngine::set_attempt`] left.
    #[napi(ts_return_type = "Promise<ExternalObject<PendingPermit> | AdmitJs>")]
    pub fn admit_async<'env>(
        &self,
        env: &'env Env,
        call: AdmitCallJs,
    ) -> napi::Result<PromiseRaw<'env, Either<External<PendingPermit>, AdmitJs>>> {
        let prompt_tokens = call.prompt_tokens.and_then(optional);
        let request = match (prompt_tokens, &call.prompt, call.request) {
            (None, None, Some(json)) => Some(serde_json::from_str(&json).map_err(|e| {
                ErrorInfo::new("invalid_request", format!("request is not JSON: {e}")).into_napi()
            })?),
            _ => None,
        };
        let (engine, attempt) =
            with_engine(self.index, |r| Ok((r.engine.clone(), r.attempt.take())))?;
        let owned = OwnedCall {
            names: [call.model, call.tenant, call.upstream, call.key, call.route]
                .map(Option::unwrap_or_default),
            priority: call
                .priority
                .unwrap_or(0.0)
                .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16,
            prompt_tokens,
            prompt: call.prompt,
            request,
            max_tokens: call.max_tokens.and_then(optional),
            deadline: call
                .deadline_ms
                .and_then(optional)
                .map(std::time::Duration::from_millis),
            attempt,
        };
        env.spawn_future(async move {
            let decision = engine.admit_async(&owned.call()).await;
            Ok(match go_or(decision) {
                Either::A(permit) => Either::A(External::new(PendingPermit(
                    std::sync::Mutex::new(Some(permit)),
                ))),
                Either::B(not) => Either::B(not),
            })
        })
    }

    /// Files a permit from [`NativeEngine::admit_async`] in this engine's table: its handle,
    /// as `admit` returns it.
    #[napi]
    pub fn adopt_permit(&self, pending: &External<PendingPermit>) -> napi::Result<f64> {
        let permit = pending
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                ErrorInfo::invalid_argument("this permit was adopted already").into_napi()
            })?;
        with_engine(self.index, |r| Ok(r.permits.insert(permit)))
    }

    /// Makes this engine's next admission a retry with this state (from a `retry` verdict).
    #[napi]
    pub fn set_attempt(&self, attempt: &External<Attempt>) -> napi::Result<()> {
        with_engine(self.index, |r| {
            r.attempt = Some(Box::new(Attempt::clone(attempt)));
            Ok(())
        })
    }

    /// Gives a permit back unsettled (as if the call was not sent); false when it was already
    /// settled or released.
    #[napi]
    pub fn release(&self, permit: f64) -> bool {
        with_engine(self.index, |r| Ok(r.permits.take(permit).is_some())).unwrap_or(false)
    }

    /// What a permit holds (null once it is settled or released).
    #[napi]
    pub fn permit_info(&self, permit: f64) -> Option<PermitInfoJs> {
        with_engine(self.index, |r| {
            Ok(r.permits.get(permit).map(|p| PermitInfoJs {
                budgets: p
                    .budgets()
                    .map(|(b, k)| vec![b.to_owned(), k.to_owned()])
                    .collect(),
                target: p.target().map(TargetJs::from),
                attempt: p.attempt_number(),
                prompt_tokens: p.prompt_tokens() as f64,
                completion_allowance: p.completion_allowance() as f64,
                reserved_tokens: p.reserved_tokens() as f64,
                exact_prompt: p.exact_prompt(),
                estimated_cost: p.estimated_cost(),
            }))
        })
        .ok()
        .flatten()
    }

    /// This engine's index in the thread's registry (`io[ENGINE]` for the decide path).
    #[napi(getter)]
    pub fn index(&self) -> u32 {
        self.index
    }
}
