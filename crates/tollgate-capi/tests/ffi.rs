//! The C ABI (`tollgate_capi`) called the way a C host calls it: statuses and stable numbers,
//! owned errors, NULL for every pointer argument, bad UTF-8 and truncated JSON, the panic
//! boundary, decide / cache / send / async / stream / cancel against the test upstream, and the
//! header (version macros against Cargo.toml, every exported function declared and documented).
#![cfg(feature = "testkit")]

use std::ffi::{CStr, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::time::Duration;

use tollgate_capi::*;
use tollgate_testkit::{Action, Match, TestUpstream};

/// Bound on every wait for a callback.
const WAIT: Duration = Duration::from_secs(20);

fn s(text: &str) -> tg_str {
    tg_str {
        ptr: text.as_ptr().cast(),
        len: text.len(),
    }
}

/// The text of a `tg_str` returned by tollgate.
fn text<'a>(v: tg_str) -> &'a str {
    if v.len == 0 {
        return "";
    }
    // SAFETY: tollgate returns valid UTF-8 views that live as long as their owner (the tests
    // read them before freeing it).
    unsafe { std::str::from_utf8(std::slice::from_raw_parts(v.ptr.cast::<u8>(), v.len)).unwrap() }
}

fn cstr<'a>(p: *const c_char) -> &'a str {
    // SAFETY: tollgate returns NUL-terminated UTF-8.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap()
}

/// An owned error, freed on drop.
struct Err(*mut tg_error);

impl Err {
    fn status(&self) -> tg_status {
        // SAFETY: live or NULL.
        unsafe { tg_error_status(self.0) }
    }
    fn message(&self) -> String {
        // SAFETY: live or NULL.
        cstr(unsafe { tg_error_message(self.0) }).to_owned()
    }
    fn code(&self) -> String {
        // SAFETY: live or NULL.
        text(unsafe { tg_error_code(self.0) }).to_owned()
    }
    fn budget(&self) -> String {
        // SAFETY: live or NULL.
        text(unsafe { tg_error_budget(self.0) }).to_owned()
    }
}

impl Drop for Err {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { tg_error_free(self.0) }
    }
}

/// Runs an entry point with an error slot; returns its status and the error (if any).
fn call(f: impl FnOnce(*mut *mut tg_error) -> tg_status) -> (tg_status, Err) {
    let mut err = null_mut();
    let status = f(&mut err);
    assert_eq!(
        status == tg_status::Ok,
        err.is_null(),
        "an error comes exactly with a failure"
    );
    (status, Err(err))
}

fn ok(f: impl FnOnce(*mut *mut tg_error) -> tg_status) {
    let (status, e) = call(f);
    assert_eq!(status, tg_status::Ok, "{}", e.message());
}

/// An engine handle, freed on drop.
struct Engine(*mut tg_engine);

impl Engine {
    fn new(policy: &str) -> Engine {
        let mut out = null_mut();
        // SAFETY: valid buffers and out pointers.
        ok(|err| unsafe { tg_engine_new(policy.as_ptr(), policy.len(), &mut out, err) });
        Engine(out)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { tg_engine_free(self.0) }
    }
}

fn with_upstream(up: &TestUpstream, rest: &str) -> Engine {
    Engine::new(&format!(
        "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n{rest}",
        up.base_url()
    ))
}

fn zero_call(model: &str) -> tg_call {
    tg_call {
        tenant: s(""),
        model: s(model),
        upstream: s(""),
        key: s(""),
        route: s(""),
        priority: 0,
        prompt_kind: tg_prompt_kind::Tokens as u32,
        prompt_tokens: 10,
        prompt: tg_str {
            ptr: null(),
            len: 0,
        },
        has_max_tokens: true,
        max_tokens: 20,
        deadline_ms: 0,
        attempt: null(),
    }
}

fn outcome(status: u16) -> tg_outcome {
    tg_outcome {
        sent: true,
        status,
        has_usage: false,
        usage: tg_usage::default(),
        latency_ns: 0,
        failure: tg_failure::None as u32,
        headers: null(),
        headers_len: 0,
        content_delivered: false,
    }
}

fn admit(e: &Engine, c: &tg_call) -> tg_decision {
    let mut d = std::mem::MaybeUninit::<tg_decision>::uninit();
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_admit(e.0, c, d.as_mut_ptr(), err) });
    // SAFETY: written on success.
    unsafe { d.assume_init() }
}

fn settle(e: &Engine, p: *mut tg_permit, o: &tg_outcome) -> tg_verdict {
    let mut v = std::mem::MaybeUninit::<tg_verdict>::uninit();
    // SAFETY: valid pointers; the permit is consumed.
    ok(|err| unsafe { tg_engine_settle(e.0, p, o, v.as_mut_ptr(), err) });
    // SAFETY: written on success.
    unsafe { v.assume_init() }
}

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#;

#[test]
fn status_numbers_are_stable() {
    // Published numbers: changing one breaks every host compiled against an older header.
    let table = [
        (tg_status::Ok, 0, "ok"),
        (tg_status::NullArgument, 1, "null_argument"),
        (tg_status::InvalidArgument, 2, "invalid_argument"),
        (tg_status::InvalidUtf8, 3, "invalid_utf8"),
        (tg_status::InvalidJson, 4, "invalid_json"),
        (tg_status::InvalidPolicy, 5, "invalid_policy"),
        (tg_status::Io, 6, "io"),
        (tg_status::Panic, 7, "panic"),
        (tg_status::WrongThread, 8, "wrong_thread"),
        (tg_status::Cancelled, 9, "cancelled"),
        (tg_status::Runtime, 10, "runtime"),
        (tg_status::Timeout, 11, "timeout"),
        (tg_status::Abandoned, 12, "abandoned"),
        (tg_status::CacheRefused, 13, "cache_refused"),
        (tg_status::Denied, 100, "denied"),
        (tg_status::GaveUp, 101, "gave_up"),
        (tg_status::Deadline, 102, "deadline"),
        (tg_status::InvalidRequest, 103, "invalid_request"),
        (tg_status::NoUpstream, 104, "no_upstream"),
        (tg_status::Auth, 105, "auth"),
        (tg_status::Transport, 106, "transport"),
        (tg_status::Shared, 107, "shared"),
        (tg_status::StreamCut, 108, "stream_cut"),
    ];
    for (status, number, name) in table {
        assert_eq!(status as u32, number);
        assert_eq!(cstr(tg_status_name(number)), name);
        assert_eq!(status.name().to_str().unwrap(), name);
    }
    assert_eq!(cstr(tg_status_name(99)), "unknown");
    assert_eq!(cstr(tg_status_name(u32::MAX)), "unknown");
    // Exhaustive both ways: every status of the enum is in the table above (ALL is checked
    // against the enum by `name`'s exhaustive match), and the header has exactly these.
    assert_eq!(
        tg_status::ALL.len(),
        table.len(),
        "a status missing from this table"
    );
    let header = std::fs::read_to_string("include/tollgate.h").unwrap();
    for (_, number, name) in table {
        let line = format!("TG_STATUS_{} = {number},", name.to_uppercase());
        assert!(header.contains(&line), "header lacks {line}");
    }
    let in_header = header
        .lines()
        .filter(|l| l.trim_start().starts_with("TG_STATUS_"))
        .count();
    assert_eq!(
        in_header,
        table.len(),
        "the header's tg_status has other values"
    );
}

#[test]
fn failure_values_are_the_failure_codes() {
    // tg_failure value n is Failure::TRANSPORT[n - 1], and its name in the header is that
    // failure's code: one vocabulary for C, Go, Node, the CLI and the engine's records.
    let header = std::fs::read_to_string("include/tollgate.h").unwrap();
    for (i, f) in tollgate::retry::Failure::TRANSPORT.iter().enumerate() {
        let line = format!("TG_FAILURE_{} = {},", f.code().to_uppercase(), i + 1);
        assert!(header.contains(&line), "header lacks {line}");
    }
    let values = header
        .lines()
        .filter(|l| l.trim_start().starts_with("TG_FAILURE_"))
        .count();
    assert_eq!(
        values,
        tollgate::retry::Failure::TRANSPORT.len() + 1,
        "TG_FAILURE_NONE and one per code"
    );
}

#[test]
fn header_version_macros_match_cargo_toml() {
    let header = std::fs::read_to_string("include/tollgate.h").unwrap();
    // The workspace's version, which every crate of it carries.
    let manifest = std::fs::read_to_string("../../Cargo.toml").unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace.package version in Cargo.toml");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let parts: Vec<&str> = version.split(['.', '-']).collect();
    for (name, want) in ["MAJOR", "MINOR", "PATCH"].iter().zip(&parts) {
        let line = format!("#define TOLLGATE_VERSION_{name} {want}\n");
        assert!(header.contains(&line), "header lacks {line:?}");
    }
    assert!(header.contains(&format!("#define TOLLGATE_VERSION \"{version}\"")));
    assert_eq!(cstr(tg_version()), version);
}

/// Every `extern "C"` function of this crate (src/), by name.
fn exported() -> Vec<String> {
    let mut names = vec![];
    for entry in std::fs::read_dir("src").unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        for line in source.lines() {
            let line = line.trim_start();
            let rest = line
                .strip_prefix("pub unsafe extern \"C\" fn ")
                .or_else(|| line.strip_prefix("pub extern \"C\" fn "));
            if let Some(rest) = rest {
                names.push(rest.split('(').next().unwrap().to_owned());
            }
        }
    }
    names.sort();
    names
}

#[test]
fn every_exported_function_is_declared_and_documented_in_the_header() {
    // The test hooks (src/testkit.rs) are declared in tollgate_testkit.h, everything else in
    // tollgate.h.
    let header = std::fs::read_to_string("include/tollgate.h").unwrap();
    let testkit = std::fs::read_to_string("include/tollgate_testkit.h").unwrap();
    let testkit_source = std::fs::read_to_string("src/testkit.rs").unwrap();
    let main_lines: Vec<&str> = header.lines().collect();
    let testkit_lines: Vec<&str> = testkit.lines().collect();
    let names = exported();
    assert!(names.len() >= 60, "found {} functions", names.len());
    for name in &names {
        let hook = testkit_source.contains(&format!(" fn {name}("));
        let (lines, file) = if hook {
            (&testkit_lines, "include/tollgate_testkit.h")
        } else {
            (&main_lines, "include/tollgate.h")
        };
        assert!(
            hook || !name.starts_with("tg_test_"),
            "{name} is a test hook outside src/testkit.rs"
        );
        let at = lines
            .iter()
            .position(|l| {
                !l.trim_start().starts_with(['/', '*'])
                    && (l.contains(&format!(" {name}(")) || l.contains(&format!("*{name}(")))
            })
            .unwrap_or_else(|| panic!("{name} is not declared in {file}"));
        let doc = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//"))
            .count();
        assert!(doc >= 2, "{name} has {doc} doc lines in the header");
        let docs: String = lines[at - doc..at].join("\n");
        let params: String = lines[at..]
            .iter()
            .take_while(|l| !l.contains(");"))
            .chain(lines[at..].iter().find(|l| l.contains(");")))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let params = &params[params.find(&format!("{name}(")).unwrap()..];
        if params.contains('*') && !name.ends_with("_free") {
            assert!(
                docs.contains("NULL"),
                "{name} takes pointers; its docs must say what NULL does"
            );
        }
    }
    // The release header declares no test hook.
    assert!(
        !header.contains("tg_test_"),
        "include/tollgate.h declares a test hook"
    );
    // Nothing outside this crate is exported to C: an exported function needs an unmangled
    // name (a C-ABI callback such as the core's `atexit` hook does not, and is not exported).
    let all = std::process::Command::new("grep")
        .args([
            "-rln",
            "-e",
            "no_mangle",
            "-e",
            "export_name",
            "../tollgate/src",
            "../tollgate-serve/src",
        ])
        .output()
        .unwrap();
    let found = String::from_utf8(all.stdout).unwrap();
    assert!(
        found.is_empty(),
        "a function exported to C outside tollgate-capi: {found}"
    );
}

#[test]
fn panic_is_caught_at_the_boundary() {
    // SAFETY: valid error slot.
    let (status, e) = call(|err| unsafe { tg_test_panic(err) });
    assert_eq!(status, tg_status::Panic);
    assert_eq!(e.status(), tg_status::Panic);
    assert!(e.message().contains("panic"), "{}", e.message());
    // A NULL error slot is allowed too.
    // SAFETY: NULL err is documented.
    assert_eq!(unsafe { tg_test_panic(null_mut()) }, tg_status::Panic);
}

#[test]
fn bad_policies_are_refused_with_every_problem() {
    let bad =
        "version = 1\n[[budget]]\nname = \"a\"\nscope = [\"planet\"]\nrequests_per_minute = 0\n";
    let mut out = null_mut();
    // SAFETY: valid buffers.
    let (status, e) = call(|err| unsafe { tg_engine_new(bad.as_ptr(), bad.len(), &mut out, err) });
    assert_eq!(status, tg_status::InvalidPolicy);
    assert!(out.is_null(), "outputs are written only on success");
    // SAFETY: live error.
    let n = unsafe { tg_error_problem_count(e.0) };
    assert!(n >= 2, "{}", e.message());
    for i in 0..n {
        // SAFETY: live error.
        assert!(!text(unsafe { tg_error_problem(e.0, i) }).is_empty());
    }
    // SAFETY: out of range gives the empty string.
    assert!(text(unsafe { tg_error_problem(e.0, n) }).is_empty());

    // Invalid UTF-8 and truncated JSON.
    let bytes = b"version = 1\n# \xff\xfe\n";
    // SAFETY: valid buffers.
    let (status, _) =
        call(|err| unsafe { tg_engine_new(bytes.as_ptr(), bytes.len(), &mut out, err) });
    assert_eq!(status, tg_status::InvalidUtf8);
    let truncated = r#"{"version": 1, "budget": [{"name": "#;
    // SAFETY: valid buffers.
    let (status, e) =
        call(|err| unsafe { tg_engine_new(truncated.as_ptr(), truncated.len(), &mut out, err) });
    assert_eq!(status, tg_status::InvalidPolicy, "{}", e.message());

    // Missing file: I/O, not a policy problem.
    let path = "/nonexistent/tollgate-policy.toml";
    // SAFETY: valid buffers.
    let (status, e) = call(|err| unsafe {
        tg_engine_new_from_file(path.as_ptr().cast(), path.len(), &mut out, err)
    });
    assert_eq!(status, tg_status::Io);
    assert!(e.message().contains(path));
}

#[test]
fn refused_reload_keeps_the_running_policy() {
    let e = Engine::new(
        "version = 1\n[[budget]]\nname = \"rpm\"\nrequests_per_minute = 2\nwhen_exhausted = \"deny\"\n",
    );
    // SAFETY: live engine.
    assert_eq!(unsafe { tg_engine_generation(e.0) }, 1);
    let bad = "version = 1\n[[budget]]\nname = \"rpm\"\n";
    let mut generation = 0;
    // SAFETY: valid pointers.
    let (status, err) =
        call(|err| unsafe { tg_engine_reload(e.0, bad.as_ptr(), bad.len(), &mut generation, err) });
    assert_eq!(status, tg_status::InvalidPolicy);
    assert!(err.message().contains("no limit"), "{}", err.message());
    assert_eq!(generation, 0, "written only on success");
    // The old limit still holds: 2 go (and are sent), the third is denied.
    let c = zero_call("gpt-4o");
    for _ in 0..2 {
        let d = admit(&e, &c);
        assert_eq!(d.kind, tg_decision_kind::Go);
        assert_eq!(
            settle(&e, d.permit, &outcome(200)).kind,
            tg_verdict_kind::Done
        );
    }
    let d = admit(&e, &c);
    assert_eq!(d.kind, tg_decision_kind::Deny);
    assert_eq!(text(d.budget), "rpm");
    // SAFETY: owned denial.
    unsafe { tg_error_free(d.denial) };

    let good = "version = 1\n[[budget]]\nname = \"rpm\"\nrequests_per_minute = 600\n";
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_reload(e.0, good.as_ptr(), good.len(), &mut generation, err) });
    assert_eq!(generation, 2);
}

#[test]
fn decide_go_wait_deny_settle_retry_give_up() {
    let e = Engine::new(
        r#"version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 2
when_exhausted = "deny"
[[budget]]
name = "queue"
match = { model = "slow*" }
requests_per_second = 1
when_exhausted = { wait_up_to = "5s" }
[retry]
max_attempts = 2
backoff = { base = "10ms", max = "20ms" }
"#,
    );
    let mut c = zero_call("gpt-4o");
    c.tenant = s("acme");
    let d = admit(&e, &c);
    assert_eq!(d.kind, tg_decision_kind::Go);
    // SAFETY: live permit.
    assert_eq!(unsafe { tg_permit_prompt_tokens(d.permit) }, 10);
    // SAFETY: live permit.
    assert_eq!(unsafe { tg_permit_reserved_tokens(d.permit) }, 30);
    let mut o = outcome(200);
    o.has_usage = true;
    o.usage = tg_usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        ..tg_usage::default()
    };
    let v = settle(&e, d.permit, &o);
    assert_eq!(v.kind, tg_verdict_kind::Done);
    assert_eq!(v.settlement.tokens, 15);
    assert!(v.settlement.has_usage);

    // A 503 is retried: the verdict carries the attempt for the next admission.
    let d = admit(&e, &c);
    let headers = [tg_header {
        name: s("Retry-After"),
        value: s("0"),
    }];
    let mut o = outcome(503);
    o.headers = headers.as_ptr();
    o.headers_len = headers.len();
    let v = settle(&e, d.permit, &o);
    assert_eq!(v.kind, tg_verdict_kind::Retry);
    assert!(v.give_up.is_null());
    // SAFETY: live attempt.
    assert_eq!(unsafe { tg_attempt_number(v.attempt) }, 2);

    // The budget allows 2 per minute: the retry is denied, naming the budget.
    let mut retry = c;
    retry.attempt = v.attempt;
    let d = admit(&e, &retry);
    assert_eq!(d.kind, tg_decision_kind::Deny);
    assert_eq!(text(d.budget), "per-tenant");
    assert_eq!(d.limit, tg_limit::RequestsPerMinute);
    assert!(d.after_ns > 0);
    let denial = Err(d.denial);
    assert_eq!(denial.status(), tg_status::Denied);
    assert_eq!(denial.code(), "budget_exhausted");
    assert_eq!(denial.budget(), "per-tenant");
    let mut after = 0;
    // SAFETY: live error, valid out.
    assert!(unsafe { tg_error_retry_after(denial.0, &mut after) });
    assert_eq!(after, d.after_ns);
    // SAFETY: owned attempt, no call points to it any more.
    unsafe { tg_attempt_free(v.attempt) };

    // Another tenant: a 400 is not retried.
    c.tenant = s("globex");
    let d = admit(&e, &c);
    let v = settle(&e, d.permit, &outcome(400));
    assert_eq!(v.kind, tg_verdict_kind::GiveUp);
    let give_up = Err(v.give_up);
    assert_eq!(give_up.status(), tg_status::GaveUp);
    assert_eq!(give_up.code(), "not_retryable");
    // SAFETY: live error.
    assert_eq!(unsafe { tg_error_http_status(give_up.0) }, 400);

    // A waiting budget: the second call this second is told to wait, with the budget's name.
    let slow = zero_call("slow-model");
    let d = admit(&e, &slow);
    assert_eq!(d.kind, tg_decision_kind::Go);
    let first = d.permit;
    let d = admit(&e, &slow);
    assert_eq!(d.kind, tg_decision_kind::Wait);
    assert!(d.after_ns > 0 && d.after_ns <= 1_000_000_000);
    assert_eq!(text(d.budget), "queue");
    assert_eq!(d.limit, tg_limit::RequestsPerSecond);
    assert!(d.permit.is_null() && d.denial.is_null());
    // SAFETY: owned permit.
    unsafe { tg_permit_free(first) };
}

#[test]
fn prompt_kinds_and_bad_calls() {
    let e = Engine::new("version = 1\n[[budget]]\nname = \"tpm\"\ntokens_per_minute = 100000\n");
    let mut c = zero_call("gpt-4o");
    c.prompt_kind = tg_prompt_kind::Text as u32;
    c.prompt = s("Hello, world!");
    let d = admit(&e, &c);
    // SAFETY: live permit.
    assert_eq!(unsafe { tg_permit_prompt_tokens(d.permit) }, 4);
    // SAFETY: owned permit.
    unsafe { tg_permit_free(d.permit) };

    c.prompt_kind = tg_prompt_kind::Request as u32;
    c.prompt = s(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}]}"#);
    let d = admit(&e, &c);
    // SAFETY: live permit.
    assert!(unsafe { tg_permit_prompt_tokens(d.permit) } > 4);
    // SAFETY: owned permit.
    unsafe { tg_permit_free(d.permit) };

    let mut out = std::mem::MaybeUninit::<tg_decision>::uninit();
    let mut check = |c: &tg_call, want: tg_status| {
        // SAFETY: valid pointers.
        let (status, err) = call(|err| unsafe { tg_engine_admit(e.0, c, out.as_mut_ptr(), err) });
        assert_eq!(status, want, "{}", err.message());
        err.message()
    };
    c.prompt = s(r#"{"model":"gpt-4o","messages":[{"#);
    assert!(check(&c, tg_status::InvalidJson).contains("call.prompt"));
    let bad = [b'a', 0xff, b'b'];
    c.prompt = tg_str {
        ptr: bad.as_ptr().cast(),
        len: bad.len(),
    };
    assert!(check(&c, tg_status::InvalidUtf8).contains("offset 1"));
    c.prompt_kind = 7;
    assert!(check(&c, tg_status::InvalidArgument).contains("prompt_kind"));
    c.prompt_kind = 0;
    c.tenant = tg_str {
        ptr: null(),
        len: 3,
    };
    assert!(check(&c, tg_status::NullArgument).contains("call.tenant"));
}

/// An entry point with everything but its error slot bound.
type EntryPoint<'a> = dyn FnMut(*mut *mut tg_error) -> tg_status + 'a;

#[test]
fn null_arguments_are_reported_by_name() {
    let e = Engine::new("version = 1\n[cache]\nenabled = true\n");
    let c = zero_call("m");
    let o = outcome(200);
    let policy = "version = 1\n";
    let mut engine_out = null_mut();
    let mut decision = std::mem::MaybeUninit::<tg_decision>::uninit();
    let mut verdict = std::mem::MaybeUninit::<tg_verdict>::uninit();
    let mut permit_out = null_mut();
    let mut bytes_out = null_mut();
    let mut cache_out = std::mem::MaybeUninit::<tg_cache_result>::uninit();
    let mut response_out = null_mut();
    let mut task_out = null_mut();
    let mut cached_out = null_mut();
    let mut up_out = null_mut();
    let mut watcher_out = null_mut();
    let wo = &raw mut watcher_out;
    extern "C" fn on_send(_: *mut c_void, r: *mut tg_response, e: *mut tg_error) {
        // SAFETY: owned by the callee.
        unsafe {
            tg_response_free(r);
            tg_error_free(e);
        }
    }
    let (eo, dp, po, vp) = (
        &raw mut engine_out,
        decision.as_mut_ptr(),
        &raw mut permit_out,
        verdict.as_mut_ptr(),
    );
    let (cp, ro, to, co, uo, bo) = (
        cache_out.as_mut_ptr(),
        &raw mut response_out,
        &raw mut task_out,
        &raw mut cached_out,
        &raw mut up_out,
        &raw mut bytes_out,
    );
    let cases: Vec<(&str, Box<EntryPoint<'_>>)> = vec![
        // SAFETY (every case): NULL where the name says, valid pointers elsewhere.
        (
            "out_engine",
            Box::new(|err| unsafe {
                tg_engine_new(policy.as_ptr(), policy.len(), null_mut(), err)
            }),
        ),
        (
            "policy",
            Box::new(|err| unsafe { tg_engine_new(null(), 5, eo, err) }),
        ),
        (
            "path",
            Box::new(|err| unsafe { tg_engine_new_from_file(null(), 4, eo, err) }),
        ),
        (
            "out_engine",
            Box::new(|err| unsafe { tg_engine_new_from_file(c"x".as_ptr(), 1, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_reload(null(), policy.as_ptr(), policy.len(), null_mut(), err)
            }),
        ),
        (
            "policy",
            Box::new(|err| unsafe { tg_engine_reload(e.0, null(), 3, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_reload_file(null(), c"x".as_ptr(), 1, null_mut(), err)
            }),
        ),
        (
            "path",
            Box::new(|err| unsafe { tg_engine_reload_file(e.0, null(), 1, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe { tg_engine_metrics(null(), bo, err) }),
        ),
        (
            "out_text",
            Box::new(|err| unsafe { tg_engine_metrics(e.0, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe { tg_engine_admit(null(), &c, dp, err) }),
        ),
        (
            "call",
            Box::new(|err| unsafe { tg_engine_admit(e.0, null(), dp, err) }),
        ),
        (
            "out_decision",
            Box::new(|err| unsafe { tg_engine_admit(e.0, &c, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe { tg_engine_acquire(null(), &c, po, err) }),
        ),
        (
            "call",
            Box::new(|err| unsafe { tg_engine_acquire(e.0, null(), po, err) }),
        ),
        (
            "out_permit",
            Box::new(|err| unsafe { tg_engine_acquire(e.0, &c, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe { tg_engine_settle(null(), null_mut(), &o, vp, err) }),
        ),
        (
            "permit",
            Box::new(|err| unsafe { tg_engine_settle(e.0, null_mut(), &o, vp, err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_cache_lookup(null(), CHAT.as_ptr(), CHAT.len(), 0, cp, err)
            }),
        ),
        (
            "out_result",
            Box::new(|err| unsafe {
                tg_engine_cache_lookup(e.0, CHAT.as_ptr(), CHAT.len(), 0, null_mut(), err)
            }),
        ),
        (
            "request",
            Box::new(|err| unsafe { tg_engine_cache_lookup(e.0, null(), 2, 0, cp, err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_cache_store(null(), null_mut(), 200, null(), 0, null(), err)
            }),
        ),
        (
            "fill",
            Box::new(|err| unsafe {
                tg_engine_cache_store(e.0, null_mut(), 200, null(), 0, null(), err)
            }),
        ),
        (
            "fill",
            Box::new(|err| unsafe { tg_engine_cache_fail(e.0, null_mut(), null(), 0, err) }),
        ),
        (
            "wait",
            Box::new(|err| unsafe { tg_cache_wait_join(null(), 1, co, err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_send(null(), CHAT.as_ptr(), CHAT.len(), null(), ro, err)
            }),
        ),
        (
            "out_response",
            Box::new(|err| unsafe {
                tg_engine_send(e.0, CHAT.as_ptr(), CHAT.len(), null(), null_mut(), err)
            }),
        ),
        (
            "request",
            Box::new(|err| unsafe { tg_engine_send(e.0, null(), 9, null(), ro, err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_send_async(
                    null(),
                    CHAT.as_ptr(),
                    CHAT.len(),
                    null(),
                    Some(on_send),
                    null_mut(),
                    to,
                    err,
                )
            }),
        ),
        (
            "callback",
            Box::new(|err| unsafe {
                tg_engine_send_async(
                    e.0,
                    CHAT.as_ptr(),
                    CHAT.len(),
                    null(),
                    None,
                    null_mut(),
                    to,
                    err,
                )
            }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_stream(
                    null(),
                    CHAT.as_ptr(),
                    CHAT.len(),
                    null(),
                    None,
                    null_mut(),
                    to,
                    err,
                )
            }),
        ),
        (
            "callback",
            Box::new(|err| unsafe {
                tg_engine_stream(
                    e.0,
                    CHAT.as_ptr(),
                    CHAT.len(),
                    null(),
                    None,
                    null_mut(),
                    to,
                    err,
                )
            }),
        ),
        (
            "out_upstream",
            Box::new(|err| unsafe { tg_test_upstream_start(null(), 0, null_mut(), err) }),
        ),
        (
            "options",
            Box::new(|err| unsafe { tg_test_upstream_start(null(), 2, uo, err) }),
        ),
        (
            "upstream",
            Box::new(|err| unsafe { tg_test_upstream_script(null(), null(), 0, err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe { tg_engine_stats(null(), bo, err) }),
        ),
        (
            "out_json",
            Box::new(|err| unsafe { tg_engine_stats(e.0, null_mut(), err) }),
        ),
        (
            "engine",
            Box::new(|err| unsafe {
                tg_engine_watch(null(), c"p".as_ptr(), 1, 10, None, null_mut(), wo, err)
            }),
        ),
        (
            "path",
            Box::new(|err| unsafe {
                tg_engine_watch(e.0, null(), 1, 10, None, null_mut(), wo, err)
            }),
        ),
        (
            "out_watcher",
            Box::new(|err| unsafe {
                tg_engine_watch(e.0, c"p".as_ptr(), 1, 10, None, null_mut(), null_mut(), err)
            }),
        ),
    ];
    for (name, mut f) in cases {
        let (status, err) = call(&mut *f);
        assert_eq!(status, tg_status::NullArgument, "{name}: {}", err.message());
        assert!(err.message().starts_with(name), "{name}: {}", err.message());
        // A NULL error slot is fine too.
        assert_eq!(f(null_mut()), tg_status::NullArgument, "{name}");
    }
    assert!(engine_out.is_null() && permit_out.is_null() && response_out.is_null());
    assert!(task_out.is_null() && cached_out.is_null() && up_out.is_null());

    // Accessors: NULL gives a neutral value.
    // SAFETY (every call): NULL is documented for each.
    unsafe {
        assert_eq!(tg_error_status(null()), tg_status::NullArgument);
        assert_eq!(cstr(tg_error_message(null())), "");
        assert_eq!(tg_error_code(null()).len, 0);
        assert_eq!(tg_error_budget(null()).len, 0);
        assert!(!tg_error_retry_after(null(), null_mut()));
        assert_eq!(tg_error_http_status(null()), 0);
        assert_eq!(tg_error_body(null()).len, 0);
        assert_eq!(tg_error_problem_count(null()), 0);
        assert_eq!(tg_error_problem(null(), 0).len, 0);
        assert_eq!(tg_engine_generation(null()), 0);
        assert_eq!(tg_permit_prompt_tokens(null()), 0);
        assert_eq!(tg_permit_reserved_tokens(null()), 0);
        assert_eq!(tg_permit_estimated_cost(null()), 0.0);
        assert!(!tg_permit_target(null(), null_mut()));
        assert_eq!(tg_attempt_number(null()), 0);
        assert!(!tg_attempt_target(null(), null_mut()));
        assert_eq!(tg_cached_status(null()), 0);
        assert_eq!(tg_cached_body(null()).len, 0);
        assert!(!tg_cached_usage(null(), null_mut()));
        assert!(tg_task_finished(null()));
        tg_task_cancel(null());
        assert_eq!(tg_response_status(null()), 0);
        assert_eq!(tg_response_body(null()).len, 0);
        assert_eq!(tg_response_source(null()), tg_source::Upstream);
        assert_eq!(tg_response_attempts(null()), 0);
        assert_eq!(tg_response_queued_ns(null()), 0);
        assert!(!tg_response_usage(null(), null_mut()));
        assert!(!tg_response_settlement(null(), null_mut()));
        assert!(!tg_response_target(null(), null_mut()));
        assert!(!tg_response_header(null(), null(), 0, null_mut()));
        assert_eq!(tg_response_history_len(null()), 0);
        assert!(!tg_response_history(null(), 0, null_mut()));
        assert_eq!(cstr(tg_test_upstream_base_url(null())), "");
        assert_eq!(tg_test_upstream_requests(null()), 0);
        // Every free accepts NULL.
        tg_engine_free(null_mut());
        tg_error_free(null_mut());
        tg_bytes_free(null_mut());
        tg_permit_free(null_mut());
        tg_attempt_free(null_mut());
        tg_cache_fill_free(null_mut());
        tg_cache_wait_free(null_mut());
        tg_cached_free(null_mut());
        tg_task_free(null_mut());
        tg_response_free(null_mut());
        tg_test_upstream_free(null_mut());
        tg_watcher_free(null_mut());
    }
    assert!(watcher_out.is_null());
}

/// What a watch callback reported: (generation, status, problem count).
type Watched = (u64, tg_status, usize);

extern "C" fn on_watch(user: *mut c_void, generation: u64, error: *const tg_error) {
    // SAFETY: user_data is a `&mpsc::Sender<Watched>` kept alive until the watcher is freed.
    let tx = unsafe { &*user.cast::<mpsc::Sender<Watched>>() };
    // SAFETY: the error is NULL or borrowed for the call.
    let seen = unsafe {
        if error.is_null() {
            (generation, tg_status::Ok, 0)
        } else {
            (
                generation,
                tg_error_status(error),
                tg_error_problem_count(error),
            )
        }
    };
    let _ = tx.send(seen);
}

#[test]
fn watch_reloads_a_changed_file_and_reports_a_refused_one() {
    let dir = std::env::temp_dir().join(format!("tollgate-ffi-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    let limit =
        |n: u32| format!("version = 1\n[[budget]]\nname = \"w\"\nrequests_per_minute = {n}\n");
    std::fs::write(&path, limit(5)).unwrap();
    let path_text = path.to_str().unwrap();
    let mut engine = null_mut();
    // SAFETY: valid pointers.
    ok(|err| unsafe {
        tg_engine_new_from_file(path_text.as_ptr().cast(), path_text.len(), &mut engine, err)
    });
    let e = Engine(engine);
    let (tx, rx) = mpsc::channel::<Watched>();
    let mut watcher = null_mut();
    // SAFETY: valid pointers; `tx` outlives the watcher (freed below).
    ok(|err| unsafe {
        tg_engine_watch(
            e.0,
            path_text.as_ptr().cast(),
            path_text.len(),
            10,
            Some(on_watch),
            (&tx as *const mpsc::Sender<Watched>).cast_mut().cast(),
            &mut watcher,
            err,
        )
    });
    // Whole files only (written aside, then renamed): a watcher polling every 10 ms must never
    // read one half-written.
    let replace = |text: &str| {
        let aside = path.with_extension("tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &path).unwrap();
    };
    replace(&limit(50));
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (2, tg_status::Ok, 0));
    replace("version = 1\n[[budget]]\nname = \"w\"\nscope = [\"planet\"]\n");
    let (generation, status, problems) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((generation, status), (0, tg_status::InvalidPolicy));
    assert!(problems >= 2, "{problems}");
    std::fs::remove_file(&path).unwrap();
    let (generation, status, _) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((generation, status), (0, tg_status::Io));
    // SAFETY: live engine; owned watcher, freed once.
    unsafe {
        assert_eq!(
            tg_engine_generation(e.0),
            2,
            "refusals keep the running policy"
        );
        tg_watcher_free(watcher);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_are_json_with_budgets_and_cache() {
    let e = Engine::new(
        "version = 1\n[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\n\
         requests_per_minute = 1\nwhen_exhausted = \"deny\"\n",
    );
    let mut c = zero_call("gpt-4o");
    c.tenant = s("acme");
    let d = admit(&e, &c);
    settle(&e, d.permit, &outcome(200));
    let d = admit(&e, &c);
    // SAFETY: owned denial.
    unsafe { tg_error_free(d.denial) };
    let mut out = null_mut();
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_stats(e.0, &mut out, err) });
    // SAFETY: owned bytes, read then freed.
    let json: serde_json::Value = unsafe {
        let b = &*out;
        let v = serde_json::from_slice(std::slice::from_raw_parts(b.data, b.len)).unwrap();
        tg_bytes_free(out);
        v
    };
    assert_eq!(json["generation"], 1);
    let b = &json["budgets"][0];
    assert_eq!(b["name"], "per-tenant");
    assert_eq!(
        (&b["admitted"], &b["denied"], &b["keys"]),
        (&1.into(), &1.into(), &1.into())
    );
    assert_eq!(json["cache"]["entries"], 0);
}

#[test]
fn settle_consumes_the_permit_even_on_error() {
    let e = Engine::new("version = 1\n[[budget]]\nname = \"one\"\nconcurrency = 1\n");
    let c = zero_call("m");
    let d = admit(&e, &c);
    assert_eq!(d.kind, tg_decision_kind::Go);
    assert_eq!(admit(&e, &c).kind, tg_decision_kind::Deny);
    let mut o = outcome(200);
    o.failure = 99;
    let mut v = std::mem::MaybeUninit::<tg_verdict>::uninit();
    // SAFETY: valid pointers; the permit is consumed.
    let (status, err) =
        call(|err| unsafe { tg_engine_settle(e.0, d.permit, &o, v.as_mut_ptr(), err) });
    assert_eq!(status, tg_status::InvalidArgument);
    assert!(err.message().contains("failure"));
    // The slot was released with the permit.
    let d = admit(&e, &c);
    assert_eq!(d.kind, tg_decision_kind::Go);
    // SAFETY: owned permit.
    unsafe { tg_permit_free(d.permit) };
}

#[test]
fn cache_lookup_store_hit() {
    let e = Engine::new("version = 1\n[cache]\nenabled = true\n");
    let req = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let lookup = |mode: u32| {
        let mut r = std::mem::MaybeUninit::<tg_cache_result>::uninit();
        // SAFETY: valid pointers.
        ok(|err| unsafe {
            tg_engine_cache_lookup(e.0, req.as_ptr(), req.len(), mode, r.as_mut_ptr(), err)
        });
        // SAFETY: written on success.
        unsafe { r.assume_init() }
    };
    let miss = lookup(tg_cache_mode::Default as u32);
    assert_eq!(miss.kind, tg_cache_kind::Miss);
    // An identical lookup meanwhile joins the one in flight.
    let joined = lookup(tg_cache_mode::Default as u32);
    assert_eq!(joined.kind, tg_cache_kind::Joined);
    let body = br#"{"choices":[]}"#;
    let usage = tg_usage {
        prompt_tokens: 3,
        completion_tokens: 2,
        total_tokens: 5,
        ..tg_usage::default()
    };
    // SAFETY: valid pointers; the fill is consumed.
    ok(|err| unsafe {
        tg_engine_cache_store(e.0, miss.fill, 200, body.as_ptr(), body.len(), &usage, err)
    });
    let mut shared = null_mut();
    // SAFETY: live wait.
    ok(|err| unsafe { tg_cache_wait_join(joined.joined, 1000, &mut shared, err) });
    // SAFETY: live cached answer, then freed.
    unsafe {
        assert_eq!(text(tg_cached_body(shared)).as_bytes(), body);
        tg_cached_free(shared);
        tg_cache_wait_free(joined.joined);
    }
    let hit = lookup(tg_cache_mode::Default as u32);
    assert_eq!(hit.kind, tg_cache_kind::Hit);
    let mut got = tg_usage::default();
    // SAFETY: live cached answer, then freed.
    unsafe {
        assert_eq!(tg_cached_status(hit.hit), 200);
        assert_eq!(text(tg_cached_body(hit.hit)).as_bytes(), body);
        assert!(tg_cached_usage(hit.hit, &mut got));
        tg_cached_free(hit.hit);
    }
    assert_eq!(got, usage);
    let bypass = lookup(tg_cache_mode::Bypass as u32);
    assert_eq!(bypass.kind, tg_cache_kind::NotCacheable);
    assert_eq!(text(bypass.reason), "bypassed");
    let mut r = std::mem::MaybeUninit::<tg_cache_result>::uninit();
    // SAFETY: valid pointers.
    let (status, _) = call(|err| unsafe {
        tg_engine_cache_lookup(e.0, req.as_ptr(), req.len(), 3, r.as_mut_ptr(), err)
    });
    assert_eq!(status, tg_status::InvalidArgument);
}

#[test]
fn blocking_send_and_bad_requests() {
    let up = TestUpstream::start().unwrap();
    let e = with_upstream(
        &up,
        "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\nwhen_exhausted = \"deny\"\n",
    );
    let options = tg_request_options {
        tenant: s("acme"),
        route: s(""),
        upstream: s(""),
        priority: 0,
        deadline_ms: 10_000,
        cache_mode: 0,
    };
    let mut r = null_mut();
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_send(e.0, CHAT.as_ptr(), CHAT.len(), &options, &mut r, err) });
    let mut usage = tg_usage::default();
    let mut settlement = tg_settlement::default();
    let mut value = tg_str {
        ptr: null(),
        len: 0,
    };
    // SAFETY: live response, then freed.
    unsafe {
        assert_eq!(tg_response_status(r), 200);
        let body: serde_json::Value = serde_json::from_str(text(tg_response_body(r))).unwrap();
        assert!(body["choices"][0]["message"]["content"].is_string());
        assert_eq!(tg_response_source(r), tg_source::Upstream);
        assert_eq!(tg_response_attempts(r), 1);
        assert!(tg_response_usage(r, &mut usage));
        assert!(tg_response_settlement(r, &mut settlement));
        assert!(tg_response_header(
            r,
            c"Content-Type".as_ptr(),
            12,
            &mut value
        ));
        assert!(
            text(value).starts_with("application/json"),
            "{}",
            text(value)
        );
        assert!(!tg_response_header(r, c"x-absent".as_ptr(), 8, &mut value));
        tg_response_free(r);
    }
    r = null_mut();
    assert!(usage.total_tokens > 0);
    assert_eq!(settlement.tokens, usage.total_tokens);

    // The second call for the tenant is denied, naming the budget.
    // SAFETY: valid pointers.
    let (status, err) = call(|err| unsafe {
        tg_engine_send(e.0, CHAT.as_ptr(), CHAT.len(), &options, &mut r, err)
    });
    assert_eq!(status, tg_status::Denied);
    assert_eq!(err.budget(), "per-tenant");
    assert_eq!(err.code(), "budget_exhausted");

    let truncated = &CHAT[..CHAT.len() / 2];
    // SAFETY: valid pointers.
    let (status, err) = call(|err| unsafe {
        tg_engine_send(
            e.0,
            truncated.as_ptr(),
            truncated.len(),
            null(),
            &mut r,
            err,
        )
    });
    assert_eq!(status, tg_status::InvalidJson);
    assert!(err.message().contains("EOF"), "{}", err.message());
    let mut bad = CHAT.as_bytes().to_vec();
    bad[40] = 0xc3;
    // SAFETY: valid pointers.
    let (status, _) =
        call(|err| unsafe { tg_engine_send(e.0, bad.as_ptr(), bad.len(), null(), &mut r, err) });
    assert_eq!(status, tg_status::InvalidUtf8);
    let not_chat = r#"{"model":"gpt-4o-mini"}"#;
    // SAFETY: valid pointers.
    let (status, err) = call(|err| unsafe {
        tg_engine_send(e.0, not_chat.as_ptr(), not_chat.len(), null(), &mut r, err)
    });
    assert_eq!(status, tg_status::InvalidRequest, "{}", err.message());
    let mut bad_options = options;
    bad_options.cache_mode = 9;
    // SAFETY: valid pointers.
    let (status, _) = call(|err| unsafe {
        tg_engine_send(e.0, CHAT.as_ptr(), CHAT.len(), &bad_options, &mut r, err)
    });
    assert_eq!(status, tg_status::InvalidArgument);
    assert!(r.is_null());
}

/// What an async callback received: status, response status, body length, attempts.
type Reply = (tg_status, u16, usize, u32);

extern "C" fn on_send(user: *mut c_void, r: *mut tg_response, e: *mut tg_error) {
    // SAFETY: user_data is a `&mpsc::Sender<Reply>` the test keeps alive until its reply.
    let tx = unsafe { &*user.cast::<mpsc::Sender<Reply>>() };
    // SAFETY: owned by the callee: read, then freed.
    let reply = unsafe {
        let reply = if r.is_null() {
            (tg_error_status(e), 0, 0, 0)
        } else {
            (
                tg_status::Ok,
                tg_response_status(r),
                tg_response_body(r).len,
                tg_response_attempts(r),
            )
        };
        tg_response_free(r);
        tg_error_free(e);
        reply
    };
    let _ = tx.send(reply);
}

#[test]
fn async_send_fires_once_and_retries_a_503() {
    let up = TestUpstream::start().unwrap();
    let e = with_upstream(
        &up,
        "[retry]\nbackoff = { base = \"10ms\", max = \"20ms\" }\n",
    );
    up.script(Match::any(), [Action::Status503, Action::Normal]);
    let (tx, rx) = mpsc::channel::<Reply>();
    let mut task = null_mut();
    // SAFETY: valid pointers; `tx` outlives the callback (the test waits for it).
    ok(|err| unsafe {
        tg_engine_send_async(
            e.0,
            CHAT.as_ptr(),
            CHAT.len(),
            null(),
            Some(on_send),
            (&tx as *const mpsc::Sender<Reply>).cast_mut().cast(),
            &mut task,
            err,
        )
    });
    let (status, http, body, attempts) = rx.recv_timeout(WAIT).expect("callback fired");
    assert_eq!((status, http, attempts), (tg_status::Ok, 200, 2));
    assert!(body > 0);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "exactly once"
    );
    // SAFETY: live task, then freed.
    unsafe {
        assert!(tg_task_finished(task));
        tg_task_cancel(task); // after the end: nothing happens
        tg_task_free(task);
    }
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn cancel_fires_the_callback_with_cancelled_and_frees_the_slot() {
    let up = TestUpstream::start().unwrap();
    let e = with_upstream(&up, "[[budget]]\nname = \"one\"\nconcurrency = 1\n");
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_secs(30))],
    );
    let (tx, rx) = mpsc::channel::<Reply>();
    let mut task = null_mut();
    let user = (&tx as *const mpsc::Sender<Reply>).cast_mut().cast();
    // SAFETY: valid pointers; `tx` outlives the callbacks.
    ok(|err| unsafe {
        tg_engine_send_async(
            e.0,
            CHAT.as_ptr(),
            CHAT.len(),
            null(),
            Some(on_send),
            user,
            &mut task,
            err,
        )
    });
    // Wait until the request reached the upstream (the slot is held).
    let until = std::time::Instant::now() + WAIT;
    // SAFETY: live upstream handle is not needed: the Rust upstream reports arrivals.
    while up.log().is_empty() {
        assert!(std::time::Instant::now() < until, "request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = zero_call("gpt-4o-mini");
    assert_eq!(
        admit(&e, &c).kind,
        tg_decision_kind::Deny,
        "slot held by the call"
    );
    // SAFETY: live task.
    unsafe { tg_task_cancel(task) };
    let (status, ..) = rx.recv_timeout(WAIT).expect("callback fired");
    assert_eq!(status, tg_status::Cancelled);
    let d = admit(&e, &c);
    assert_eq!(d.kind, tg_decision_kind::Go, "slot freed by the cancel");
    // SAFETY: owned handles.
    unsafe {
        tg_permit_free(d.permit);
        tg_task_free(task);
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "exactly once"
    );

    // Freeing the engine cancels what is still running, before tg_engine_free returns.
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_secs(30))],
    );
    // SAFETY: valid pointers; no task handle.
    ok(|err| unsafe {
        tg_engine_send_async(
            e.0,
            CHAT.as_ptr(),
            CHAT.len(),
            null(),
            Some(on_send),
            user,
            null_mut(),
            err,
        )
    });
    drop(e);
    let (status, ..) = rx.try_recv().expect("fired before tg_engine_free returned");
    assert_eq!(status, tg_status::Cancelled);
}

/// What a stream callback saw.
#[derive(Default)]
struct Seen {
    data: Vec<String>,
    done_flags: Vec<bool>,
    end: Option<(tg_status, String, u64)>,
    finals: u32,
}

extern "C" fn on_event(
    user: *mut c_void,
    ev: *const tg_event,
    end: *mut tg_response,
    e: *mut tg_error,
) {
    // SAFETY: user_data is a `&(Mutex<Seen>, mpsc::Sender<()>)` the test keeps alive.
    let (seen, tx) = unsafe { &*user.cast::<(std::sync::Mutex<Seen>, mpsc::Sender<()>)>() };
    let mut seen = seen.lock().unwrap();
    // SAFETY: the event is borrowed for the call; end / error are owned by the callee.
    unsafe {
        if let Some(ev) = ev.as_ref() {
            seen.data.push(text(ev.data).to_owned());
            seen.done_flags.push(ev.done);
            return;
        }
        seen.finals += 1;
        let mut usage = tg_usage::default();
        seen.end = Some(if end.is_null() {
            (tg_error_status(e), cstr(tg_error_message(e)).to_owned(), 0)
        } else {
            tg_response_usage(end, &mut usage);
            (tg_status::Ok, String::new(), usage.completion_tokens)
        });
        tg_response_free(end);
        tg_error_free(e);
    }
    let _ = tx.send(());
}

fn stream(e: &Engine) -> Seen {
    let (tx, rx) = mpsc::channel();
    let state = (std::sync::Mutex::new(Seen::default()), tx);
    let user = (&state as *const (std::sync::Mutex<Seen>, mpsc::Sender<()>))
        .cast_mut()
        .cast();
    // SAFETY: valid pointers; `state` outlives the callbacks (we wait for the final one).
    ok(|err| unsafe {
        tg_engine_stream(
            e.0,
            CHAT.as_ptr(),
            CHAT.len(),
            null(),
            Some(on_event),
            user,
            null_mut(),
            err,
        )
    });
    rx.recv_timeout(WAIT).expect("final callback");
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "one final callback"
    );
    state.0.into_inner().unwrap()
}

#[test]
fn stream_delivers_events_then_one_final_callback() {
    let up = TestUpstream::start().unwrap();
    let e = with_upstream(&up, "");
    let seen = stream(&e);
    assert_eq!(seen.finals, 1);
    let (status, _, completion) = seen.end.clone().unwrap();
    assert_eq!(status, tg_status::Ok);
    assert!(completion > 0);
    assert!(seen.data.len() >= 3);
    assert_eq!(seen.data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(seen.done_flags.iter().filter(|d| **d).count(), 1);
    assert!(seen.done_flags.last().copied().unwrap());

    // Cut after content reached the caller: the end is STREAM_CUT, never a clean end.
    up.script(Match::any(), [Action::CutStreamAfter(3)]);
    let seen = stream(&e);
    let (status, message, _) = seen.end.unwrap();
    assert_eq!(status, tg_status::StreamCut, "{message}");
    assert!(!seen.data.iter().any(|d| d == "[DONE]"));
}

#[test]
fn blocking_calls_inside_a_callback_are_refused() {
    let up = TestUpstream::start().unwrap();
    let e = with_upstream(&up, "");
    extern "C" fn nested(user: *mut c_void, r: *mut tg_response, err: *mut tg_error) {
        // SAFETY: user_data is `&(engine ptr, Sender)` kept alive by the test.
        let (engine, tx) = unsafe { &*user.cast::<(*mut tg_engine, mpsc::Sender<tg_status>)>() };
        let mut out = null_mut();
        let mut inner = null_mut();
        // SAFETY: valid pointers; we are on a tollgate worker thread.
        let status = unsafe {
            tg_engine_send(
                *engine,
                CHAT.as_ptr(),
                CHAT.len(),
                null(),
                &mut out,
                &mut inner,
            )
        };
        // SAFETY: owned.
        unsafe {
            tg_error_free(inner);
            tg_response_free(out);
            tg_response_free(r);
            tg_error_free(err);
        }
        let _ = tx.send(status);
    }
    let (tx, rx) = mpsc::channel();
    let state = (e.0, tx);
    let user = (&state as *const (*mut tg_engine, mpsc::Sender<tg_status>))
        .cast_mut()
        .cast();
    // SAFETY: valid pointers; `state` outlives the callback.
    ok(|err| unsafe {
        tg_engine_send_async(
            e.0,
            CHAT.as_ptr(),
            CHAT.len(),
            null(),
            Some(nested),
            user,
            null_mut(),
            err,
        )
    });
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), tg_status::WrongThread);
}

#[test]
fn metrics_and_test_upstream_handles() {
    let mut up = null_mut();
    let options = r#"{"words": 4, "seed": 3}"#;
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_test_upstream_start(options.as_ptr(), options.len(), &mut up, err) });
    // SAFETY: live upstream.
    let url = cstr(unsafe { tg_test_upstream_base_url(up) }).to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"),
        "{url}"
    );
    let script = r#"{"match": {"model": "gpt-4o-mini"}, "actions": ["503", "bogus"]}"#;
    // SAFETY: valid pointers.
    let (status, err) =
        call(|err| unsafe { tg_test_upstream_script(up, script.as_ptr(), script.len(), err) });
    assert_eq!(status, tg_status::InvalidArgument);
    assert!(err.message().contains("bogus"));
    let e = Engine::new(&format!(
        "version = 1\n[[upstream]]\nname = \"t\"\nbase_url = \"{url}\"\n"
    ));
    let mut r = null_mut();
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_send(e.0, CHAT.as_ptr(), CHAT.len(), null(), &mut r, err) });
    // SAFETY: owned response; live upstream.
    unsafe {
        tg_response_free(r);
        assert_eq!(tg_test_upstream_requests(up), 1);
    }
    let mut m = null_mut();
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_metrics(e.0, &mut m, err) });
    // SAFETY: owned bytes, read then freed.
    let text = unsafe {
        let b = &*m;
        let t = String::from_utf8(std::slice::from_raw_parts(b.data, b.len).to_vec()).unwrap();
        tg_bytes_free(m);
        t
    };
    assert!(
        text.lines()
            .any(|l| l.starts_with("tollgate_attempts_total{")
                && l.ends_with("outcome=\"status_200\"} 1")),
        "{text}"
    );
    drop(e);
    // SAFETY: owned upstream.
    unsafe { tg_test_upstream_free(up) };
}

/// What an acquire callback received: the status and the permit (as an address, 0 for none).
type Acquired = (tg_status, usize);

extern "C" fn on_acquire(user: *mut c_void, p: *mut tg_permit, e: *mut tg_error) {
    // SAFETY: user_data is a `&mpsc::Sender<Acquired>` the test keeps alive until its reply.
    let tx = unsafe { &*user.cast::<mpsc::Sender<Acquired>>() };
    let status = if p.is_null() {
        // SAFETY: owned by the callee: read, then freed.
        unsafe {
            let s = tg_error_status(e);
            tg_error_free(e);
            s
        }
    } else {
        tg_status::Ok
    };
    let _ = tx.send((status, p as usize));
}

#[test]
fn async_acquire_waits_for_a_slot_is_refused_or_cancelled_exactly_once() {
    let e = Engine::new(
        "version = 1\n[[budget]]\nname = \"one\"\nconcurrency = 1\n\
         when_exhausted = { wait_up_to = \"30s\" }\n",
    );
    let c = zero_call("gpt-4o-mini");
    let (tx, rx) = mpsc::channel::<Acquired>();
    let user = (&tx as *const mpsc::Sender<Acquired>).cast_mut().cast();
    let start = |task: *mut *mut tg_task| {
        // SAFETY: valid pointers; `tx` outlives the callbacks (the test waits for each).
        ok(|err| unsafe { tg_engine_acquire_async(e.0, &c, Some(on_acquire), user, task, err) })
    };

    // Room: the permit arrives at once.
    start(null_mut());
    let (status, first) = rx.recv_timeout(WAIT).expect("callback fired");
    assert_eq!((status, first != 0), (tg_status::Ok, true));

    // No room: it waits in the queue until the slot is freed.
    let mut task = null_mut();
    start(&mut task);
    assert!(
        rx.recv_timeout(Duration::from_millis(150)).is_err(),
        "waits"
    );
    // SAFETY: the permit of the first acquire, settled once.
    let v = settle(&e, first as *mut tg_permit, &outcome(200));
    assert_eq!(v.kind, tg_verdict_kind::Done);
    let (status, second) = rx.recv_timeout(WAIT).expect("callback fired");
    assert_eq!((status, second != 0), (tg_status::Ok, true));
    // SAFETY: finished task, freed once.
    unsafe { tg_task_free(task) };

    // Cancelled while waiting: CANCELLED, exactly once, and it took nothing.
    let mut task = null_mut();
    start(&mut task);
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "waits"
    );
    // SAFETY: live task.
    unsafe { tg_task_cancel(task) };
    let (status, none) = rx.recv_timeout(WAIT).expect("callback fired");
    assert_eq!((status, none), (tg_status::Cancelled, 0));
    // SAFETY: owned handles.
    unsafe {
        tg_task_free(task);
        tg_permit_free(second as *mut tg_permit);
    }
    let d = admit(&e, &c);
    assert_eq!(
        d.kind,
        tg_decision_kind::Go,
        "the cancelled wait took nothing"
    );
    // SAFETY: owned permit.
    unsafe { tg_permit_free(d.permit) };
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "exactly once each"
    );

    // Refused: a budget that denies instead of waiting answers DENIED through the callback.
    let deny = Engine::new("version = 1\n[[budget]]\nname = \"none\"\nrequests_per_minute = 1\n");
    for expected in [tg_status::Ok, tg_status::Denied] {
        // SAFETY: valid pointers; `tx` outlives the callback.
        ok(|err| unsafe {
            tg_engine_acquire_async(deny.0, &c, Some(on_acquire), user, null_mut(), err)
        });
        let (status, p) = rx.recv_timeout(WAIT).expect("callback fired");
        assert_eq!(status, expected);
        if p != 0 {
            // Settled, so the request counts (a freed permit would be refunded).
            let _ = settle(&deny, p as *mut tg_permit, &outcome(200));
        }
    }

    // Bad input: a NULL callback or call is refused at once and nothing fires.
    // SAFETY: NULL arguments are part of the contract.
    let (status, _) =
        call(|err| unsafe { tg_engine_acquire_async(e.0, &c, None, user, null_mut(), err) });
    assert_eq!(status, tg_status::NullArgument);
    // SAFETY: as above.
    let (status, _) = call(|err| unsafe {
        tg_engine_acquire_async(e.0, null(), Some(on_acquire), user, null_mut(), err)
    });
    assert_eq!(status, tg_status::NullArgument);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn every_target_passed_over_waits_through_the_c_api_as_through_send() {
    // One target whose circuit opens for 200 ms after four failures (issue 16 item 2): the
    // decide API answers WAIT (no budget), acquire waits and then admits, as send would.
    let e = Engine::new(
        "version = 1\n[[upstream]]\nname = \"up\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         [[route]]\nmodel = \"gpt-4o\"\ntargets = [{ upstream = \"up\", model = \"gpt-4o\" }]\n\
         [retry]\nmax_retry_after = \"60s\"\n\
         [breaker]\nwindow = 4\nmin_calls = 4\nfailure_rate = 0.5\nopen_for = \"200ms\"\n\
         half_open_calls = 1\n",
    );
    let c = zero_call("gpt-4o");
    for _ in 0..4 {
        let d = admit(&e, &c);
        assert_eq!(d.kind, tg_decision_kind::Go);
        let _ = settle(&e, d.permit, &outcome(500));
    }
    let d = admit(&e, &c);
    assert_eq!(d.kind, tg_decision_kind::Wait);
    assert_eq!(text(d.budget), "", "no budget made it wait");
    assert!(
        d.after_ns > 0 && d.after_ns <= 200_000_000,
        "{}",
        d.after_ns
    );
    let mut permit = null_mut();
    // SAFETY: valid pointers.
    ok(|err| unsafe { tg_engine_acquire(e.0, &c, &mut permit, err) });
    assert!(!permit.is_null(), "admitted once the circuit half-opened");
    // SAFETY: owned permit.
    unsafe { tg_permit_free(permit) };
}
