//! The test upstream for C, C++ and Go tests (feature `testkit`): a fault-injecting
//! OpenAI-compatible server on 127.0.0.1 with its own threads, scriptable per request.
//!
//! Declared in the header inside `#if defined(TOLLGATE_TESTKIT)`: define it before including
//! `tollgate.h` to use these functions, and link a library built with the `testkit` feature
//! (the default build has it).

use std::ffi::{CString, c_char};
use std::time::Duration;

use serde::Deserialize;

use super::error::{boundary, quietly, value};
use super::{arg, bytes_arg, json_arg, out, put, tg_error, tg_status};
use tollgate_testkit::{Action, Match, TestUpstream};

/// A running test upstream. Free with `tg_test_upstream_free` (which stops it).
pub struct tg_test_upstream {
    upstream: TestUpstream,
    base_url: CString,
}

/// Options of `tg_test_upstream_start`, as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Options {
    latency_ms: u64,
    drip_ms: u64,
    words: Option<usize>,
    event_ids: bool,
    seed: Option<u64>,
    models: Option<Vec<String>>,
}

/// A script entry for `tg_test_upstream_script`, as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(default, rename = "match")]
    on: On,
    actions: Vec<String>,
}

/// Which requests a script entry applies to.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct On {
    model: Option<String>,
    tenant: Option<String>,
    stream: Option<bool>,
}

/// Reads one action: `normal`, `500`, `503`, `429:<retry-after s>`, `status:<code>`, `reset`,
/// `cut:<events>`, `malformed`, `latency:<ms>`, `slow_first_byte:<ms>`, `slow_drip:<ms>`.
fn action(text: &str) -> Result<Action, String> {
    let (name, arg) = text.split_once(':').unwrap_or((text, ""));
    let number = || {
        arg.parse::<u64>()
            .map_err(|_| format!("action '{text}': '{arg}' is not a number"))
    };
    let ms = || number().map(Duration::from_millis);
    Ok(match name {
        "normal" => Action::Normal,
        "500" => Action::Status500,
        "503" => Action::Status503,
        "429" => Action::Status429 {
            retry_after: if arg.is_empty() { 1 } else { number()? },
        },
        "status" => Action::Status {
            code: u16::try_from(number()?).map_err(|_| format!("action '{text}': bad status"))?,
            should_retry: None,
        },
        "reset" => Action::ResetMidBody,
        "cut" => Action::CutStreamAfter(
            usize::try_from(number()?).map_err(|_| format!("action '{text}': too many events"))?,
        ),
        "malformed" => Action::MalformedJson,
        "latency" => Action::Latency(ms()?.into()),
        "slow_first_byte" => Action::SlowFirstByte(ms()?),
        "slow_drip" => Action::SlowDrip(ms()?),
        _ => return Err(format!("unknown action '{text}'")),
    })
}

/// Starts a test upstream on 127.0.0.1 (a free port) with its own threads. `options` is JSON
/// (NULL / empty for defaults): `{"latency_ms": 0, "drip_ms": 0, "words": 16, "event_ids": false,
/// "seed": 1, "models": ["gpt-4o-mini", ...]}`. On success `*out_upstream` receives it.
///
/// # Safety
/// `options` must point to `len` readable bytes (or be NULL with 0); `out_upstream` and `err`
/// writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_test_upstream_start(
    options: *const u8,
    len: usize,
    out_upstream: *mut *mut tg_test_upstream,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        let out_upstream = out(out_upstream, "out_upstream")?;
        // SAFETY: pointer + length from the caller.
        let bytes = unsafe { bytes_arg(options, len, "options")? };
        let options: Options = if bytes.is_empty() {
            Options::default()
        } else {
            serde_json::from_value(json_arg(bytes, "options")?)
                .map_err(|e| tg_error::new(tg_status::InvalidArgument, format!("options: {e}")))?
        };
        let mut builder = TestUpstream::builder()
            .latency(Duration::from_millis(options.latency_ms))
            .event_ids(options.event_ids);
        if options.drip_ms > 0 {
            builder = builder.drip(Duration::from_millis(options.drip_ms));
        }
        if let Some(words) = options.words {
            builder = builder.default_words(words);
        }
        if let Some(seed) = options.seed {
            builder = builder.seed(seed);
        }
        if let Some(models) = options.models {
            builder = builder.models(models);
        }
        let upstream = builder
            .start()
            .map_err(|e| tg_error::new(tg_status::Io, e.to_string()))?;
        let base_url = CString::new(upstream.base_url()).unwrap_or_default();
        let handle = Box::new(tg_test_upstream { upstream, base_url });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_upstream, Box::into_raw(handle)) };
        Ok(())
    })
}

/// The upstream's base URL (`http://127.0.0.1:PORT/v1`), NUL-terminated, valid until the
/// upstream is freed; the empty string for NULL.
///
/// # Safety
/// `upstream` must be NULL or a live test upstream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_test_upstream_base_url(
    upstream: *const tg_test_upstream,
) -> *const c_char {
    // SAFETY: NULL or live, per the contract.
    value(c"".as_ptr(), || match unsafe { upstream.as_ref() } {
        Some(u) => u.base_url.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// Scripts the next matching requests: `{"match": {"model": "m", "tenant": "t", "stream": true},
/// "actions": ["503", "normal"]}` answers the next matching request with 503, the one after
/// normally, then the script entry is used up. Actions: `normal`, `500`, `503`,
/// `429:<Retry-After seconds>`, `status:<code>`, `reset` (drop mid-body), `cut:<events>` (drop a
/// stream after that many events), `malformed`, `latency:<ms>`, `slow_first_byte:<ms>`,
/// `slow_drip:<ms>`. `match` may be left out (every request).
///
/// # Safety
/// `upstream` must be a live test upstream; `script` must point to `len` readable bytes; `err`
/// writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_test_upstream_script(
    upstream: *const tg_test_upstream,
    script: *const u8,
    len: usize,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let upstream = unsafe { arg(upstream, "upstream")? };
        // SAFETY: pointer + length from the caller.
        let json = json_arg(unsafe { bytes_arg(script, len, "script")? }, "script")?;
        let bad = |e: String| tg_error::new(tg_status::InvalidArgument, format!("script: {e}"));
        let script: Script = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
        let actions = script
            .actions
            .iter()
            .map(|a| action(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let mut on = Match::any();
        if let Some(m) = script.on.model {
            on = on.and_model(m);
        }
        if let Some(t) = script.on.tenant {
            on = on.and_tenant(t);
        }
        if let Some(s) = script.on.stream {
            on = on.and_stream(s);
        }
        upstream.upstream.script(on, actions);
        Ok(())
    })
}

/// How many requests the upstream has received so far; 0 for NULL.
///
/// # Safety
/// `upstream` must be NULL or a live test upstream.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_test_upstream_requests(upstream: *const tg_test_upstream) -> u64 {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { upstream.as_ref() }.map_or(0, |u| u.upstream.log().len() as u64)
    })
}

/// Stops and frees a test upstream. NULL does nothing.
///
/// # Safety
/// `upstream` must be NULL or a test upstream not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_test_upstream_free(upstream: *mut tg_test_upstream) {
    quietly(|| {
        if !upstream.is_null() {
            // SAFETY: from `tg_test_upstream_start`, freed once.
            drop(unsafe { Box::from_raw(upstream) });
        }
    })
}

/// Panics inside the panic boundary, to show that a bug inside tollgate reaches the caller as
/// `TG_STATUS_PANIC` with an error, not as a crash. For tests of bindings.
///
/// # Safety
/// `err` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_test_panic(err: *mut *mut tg_error) -> tg_status {
    boundary(err, || panic!("tg_test_panic was called"))
}
