//! The official OpenAI SDKs as clients of `tollgate_serve::Proxy` in front of the testkit
//! upstream: the `openai` package from PyPI (tests/clients/openai_client.py) and from npm
//! (tests/clients/openai_client.mjs) run the same checks — plain and streamed completions, a
//! budget denial seen as `RateLimitError`, a reload that raises the limit while the client runs,
//! a 503 the proxy retries unseen, a cache hit, an invalid virtual key.
//!
//! The SDKs are installed by `bash crates/tollgate-serve/tests/clients/setup.sh` (CI runs it): a
//! venv in `${CARGO_TARGET_DIR:-target}/clients-venv` (or `$TOLLGATE_CLIENTS_PYTHON`) and
//! `tests/clients/node_modules`. Without them these tests fail and say so.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tollgate::Engine;
use tollgate::policy::{Policy, Serve, VirtualKey};
use tollgate_serve::Proxy;
use tollgate_testkit::{Action, Canned, Match, TestUpstream};

/// Virtual key of the tenant with a roomy budget.
const KEY: &str = "vk-clients-main-0123456789abcdef";
/// Virtual key of the tenant whose budget allows [`TINY_LIMIT`] calls a minute until reloaded.
const TINY_KEY: &str = "vk-clients-tiny-fedcba9876543210";
const TINY_BUDGET: &str = "tiny-tenant";
const TINY_LIMIT: u32 = 2;
const RAISED_LIMIT: u32 = 50;
/// The body's `user` for which the upstream answers 503 once (the testkit reads the tenant from
/// it; the proxy passes the body through).
const RETRY_USER: &str = "sdk-retry-probe";
/// The body's `user` for which the upstream answers 429 `insufficient_quota` (three times
/// scripted: a retry by the proxy or the SDK would take a second one).
const QUOTA_USER: &str = "sdk-quota-probe";
/// Longest a client script may run before it is killed.
const DEADLINE: Duration = Duration::from_secs(90);
/// The checks each script must report `ok`.
const CHECKS: [&str; 8] = [
    "plain completion",
    "streamed completion",
    "budget denial is a RateLimitError",
    "reload raised the limit",
    "503 retried by the proxy, invisible to the client",
    "insufficient_quota is not retried, by the proxy or the SDK",
    "cache hit",
    "invalid virtual key is an AuthenticationError",
];

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `$CARGO_TARGET_DIR` (relative to the repository when relative), else `<repo>/target`: where
/// tests/clients/setup.sh puts the venv.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => repo().join(dir),
        _ => repo().join("target"),
    }
}

fn setup_hint(what: &str) -> String {
    format!(
        "{what} is missing: run `bash crates/tollgate-serve/tests/clients/setup.sh` first (it installs the openai \
         package from PyPI into {} and from npm into tests/clients/node_modules)",
        target_dir().join("clients-venv").display()
    )
}

/// Route to the upstream, retries with a short backoff, the cache, a roomy budget per tenant
/// and a tiny one for tenant `tiny`; the [serve] section's keys for tenants `main` and `tiny`.
fn policy(up: &TestUpstream, tiny_limit: u32) -> Policy {
    let mut p = Policy::from_toml(&format!(
        r#"version = 1
[[upstream]]
name = "test"
base_url = "{base}"
[[route]]
model = "gpt-4o"
targets = [{{ upstream = "test", model = "gpt-4o" }}]
[retry]
max_attempts = 3
backoff = {{ base = "10ms", max = "20ms" }}
[cache]
enabled = true
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 100
[[budget]]
name = "{TINY_BUDGET}"
scope = ["tenant"]
match = {{ tenant = "tiny" }}
requests_per_minute = {tiny_limit}
"#,
        base = up.base_url()
    ))
    .expect("valid policy");
    p.serve = Some(Serve {
        listen: "127.0.0.1:0".parse().expect("address"),
        keys: vec![
            VirtualKey::from_key(KEY, "main"),
            VirtualKey::from_key(TINY_KEY, "tiny"),
        ],
        ..Serve::default()
    });
    p
}

/// What a client script did.
struct Run {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    timed_out: bool,
    reloaded: bool,
}

impl Run {
    fn transcript(&self) -> String {
        format!(
            "exit: {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            if self.timed_out {
                format!(" (killed after {DEADLINE:?})")
            } else {
                String::new()
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Waits for `child` until `deadline`, then kills it.
fn wait_until(child: &mut Child, deadline: Instant) -> (Option<ExitStatus>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(status), false),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return (child.wait().ok(), true);
            }
        }
    }
}

/// Starts the upstream and the proxy, runs the client script `cmd` against them (raising the
/// tiny budget when it asks for the reload), and checks what it and the upstream report.
fn run_client(lang: &str, mut cmd: Command) {
    let up = TestUpstream::start().expect("test upstream");
    up.script(Match::tenant(RETRY_USER), [Action::Status503]);
    let quota = || {
        Action::Respond(Canned::openai_error(
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota, please check your plan and billing details.",
        ))
    };
    up.script(Match::tenant(QUOTA_USER), [quota(), quota(), quota()]);
    let engine = Engine::new(policy(&up, TINY_LIMIT));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The proxy's tasks run on the runtime's workers while this thread drives the script.
    let proxy = rt
        .block_on(Proxy::start(engine.clone(), None, None))
        .expect("proxy starts");

    cmd.env("TOLLGATE_BASE_URL", format!("http://{}/v1", proxy.addr()))
        .env("TOLLGATE_KEY", KEY)
        .env("TOLLGATE_TINY_KEY", TINY_KEY)
        .env("TOLLGATE_TINY_BUDGET", TINY_BUDGET)
        .env("TOLLGATE_RETRY_USER", RETRY_USER)
        .env("TOLLGATE_QUOTA_USER", QUOTA_USER)
        .env("TOLLGATE_MODEL", "gpt-4o")
        // The SDKs read these; none must point them elsewhere.
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_ORG_ID")
        .env_remove("OPENAI_PROJECT_ID")
        // The proxy is on loopback: never through an HTTP proxy from the environment (httpx
        // honours HTTP_PROXY and friends).
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{lang}: cannot start {cmd:?}: {e}"));

    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let mut stdin = child.stdin.take();
    let mut out = String::new();
    let mut reloaded = false;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.trim() == "WAITING_FOR_RELOAD" && !reloaded {
                    // The client is still running, its tenant refused: raise the limit.
                    let report = engine.reload_policy(policy(&up, RAISED_LIMIT));
                    assert!(
                        report.kept.iter().any(|b| b == TINY_BUDGET),
                        "{lang}: the tiny budget keeps its state across the reload: {report:?}"
                    );
                    reloaded = true;
                    if let Some(mut pipe) = stdin.take() {
                        let _ = pipe.write_all(b"reloaded\n");
                        let _ = pipe.flush();
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    drop(stdin);
    let (status, killed) = wait_until(&mut child, deadline);
    let _ = reader.join();
    let run = Run {
        status,
        stdout: out,
        stderr: stderr_reader.join().unwrap_or_default(),
        timed_out: timed_out || killed,
        reloaded,
    };
    let took = started.elapsed();
    rt.block_on(proxy.shutdown());

    let transcript = run.transcript();
    assert!(
        !run.timed_out,
        "{lang}: the client did not finish\n{transcript}"
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "{lang}: the client reported failures (if `openai` cannot be imported, run \
         `bash crates/tollgate-serve/tests/clients/setup.sh`)\n{transcript}"
    );
    for check in CHECKS {
        assert!(
            run.stdout.lines().any(|l| l == format!("ok {check}")),
            "{lang}: no `ok {check}`\n{transcript}"
        );
    }
    assert!(
        run.reloaded,
        "{lang}: never asked for the reload\n{transcript}"
    );
    assert_eq!(engine.generation(), 2, "{lang}: one reload");

    // What the upstream saw: the scripted 503 went out and was retried; the cache hit did not.
    assert_eq!(
        up.script_remaining(),
        2,
        "{lang}: the 503 was sent and one of the three quota answers, no more\n{transcript}"
    );
    let quota = up.count(|a| a.tenant.as_deref() == Some(QUOTA_USER));
    assert_eq!(
        quota, 1,
        "{lang}: the quota error was sent once\n{transcript}"
    );
    assert_eq!(up.count_status(503), 1, "{lang}: one 503\n{transcript}");
    let retried = up.count(|a| a.tenant.as_deref() == Some(RETRY_USER));
    assert_eq!(retried, 2, "{lang}: the 503 and its retry\n{transcript}");
    let cached = up.count(|a| String::from_utf8_lossy(&a.body).contains(": cache me"));
    assert_eq!(
        cached, 1,
        "{lang}: the cache hit never reached the upstream\n{transcript}"
    );
    // Refused calls (the tiny tenant's 429, the unknown key) never reach the upstream either.
    let tiny_calls = up.count(|a| String::from_utf8_lossy(&a.body).contains(": tiny "));
    assert_eq!(
        tiny_calls, TINY_LIMIT as usize,
        "{lang}: only the tiny tenant's allowed calls went out\n{transcript}"
    );
    assert_eq!(
        up.count(|a| String::from_utf8_lossy(&a.body).contains(": bad key")),
        0,
        "{lang}: the unknown key's call went out\n{transcript}"
    );
    eprintln!(
        "{lang}: {} checks passed in {took:.1?}\n{}",
        CHECKS.len(),
        run.stdout
    );
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_CLIENTS_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = target_dir().join("clients-venv");
    let bin = if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    };
    assert!(
        bin.exists(),
        "{}",
        setup_hint(&format!("the Python venv {}", venv.display()))
    );
    bin
}

fn node_modules(dir: &Path) -> PathBuf {
    let modules = dir.join("node_modules");
    assert!(
        modules.join("openai").join("package.json").exists(),
        "{}",
        setup_hint(&format!("the openai npm package in {}", modules.display()))
    );
    modules
}

#[test]
fn the_openai_python_package_as_a_client() {
    let dir = clients_dir();
    let mut cmd = Command::new(python());
    cmd.arg(dir.join("openai_client.py")).current_dir(&dir);
    run_client("python", cmd);
}

#[test]
fn the_openai_npm_package_as_a_client() {
    let dir = clients_dir();
    let modules = node_modules(&dir);
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("openai_client.mjs"))
        .current_dir(&dir)
        .env("NODE_PATH", &modules);
    run_client("node", cmd);
}
