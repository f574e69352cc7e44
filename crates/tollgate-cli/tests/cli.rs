//! End-to-end tests of the `tollgate` command-line tool: each runs the built binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// What a run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn finish(out: Output) -> Run {
    Run {
        // A run killed by a signal has no code; -1 fails every assertion on codes.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `tollgate ARGS` with `stdin` as its standard input.
fn tollgate(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tollgate binary runs");
    let mut input = child.stdin.take().expect("stdin is piped");
    // A command that refuses its arguments exits before reading: its stdin is then closed.
    match input.write_all(stdin.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("stdin accepts the input: {e}"),
    }
    drop(input);
    finish(child.wait_with_output().expect("tollgate finishes"))
}

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir can be made");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("temp file can be written");
    path.to_string_lossy().into_owned()
}

/// The JSON lines of stdout.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// (decision, waited_ms) of every simulated call.
fn decisions(calls: &[Value]) -> Vec<(String, f64)> {
    calls
        .iter()
        .map(|c| {
            (
                c["decision"].as_str().unwrap_or("?").to_owned(),
                c["waited_ms"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect()
}

fn d(decision: &str, waited: f64) -> (String, f64) {
    (decision.to_owned(), waited)
}

/// Simulates `trace` under `policy` in a fresh temp dir.
fn simulate(test: &str, policy: &str, trace: &str, extra: &[&str]) -> Run {
    let dir = temp_dir(test);
    let p = write(&dir, "policy.toml", policy);
    let t = write(&dir, "trace.jsonl", trace);
    let mut args = vec!["simulate", "--policy", &p, "--trace", &t];
    args.extend_from_slice(extra);
    tollgate(&args, "")
}

const RPS2: &str = "version = 1\n[[budget]]\nname = \"g\"\nrequests_per_second = 2\n";

// ---- check -------------------------------------------------------------------------------

#[test]
fn check_accepts_a_valid_policy_and_summarises_it() {
    let dir = temp_dir("check-ok");
    let p = write(&dir, "p.toml", RPS2);
    let r = tollgate(&["check", &p], "");
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("budget \"g\""), "{}", r.stdout);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn check_accepts_the_bundled_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    let r = tollgate(&["check", example], "");
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("per-tenant"));
}

#[test]
fn check_lists_every_error_with_file_line_and_column() {
    let dir = temp_dir("check-errors");
    let p = write(
        &dir,
        "bad.toml",
        "version = 2\n[[budget]]\nname = \"x\"\nrequests_per_minute = 0\nscope = [\"tenat\"]\n",
    );
    let r = tollgate(&["check", &p], "");
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
    for (line, field) in [
        (1, "version"),
        (4, "budget[0].requests_per_minute"),
        (5, "budget[0].scope[0]"),
    ] {
        let prefix = format!("{p}:{line}:");
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(field)),
            "no `{prefix} ... {field}` line in:\n{}",
            r.stderr
        );
    }
    assert!(r.stderr.contains("3 errors"), "{}", r.stderr);
}

#[test]
fn check_names_a_missing_file() {
    let dir = temp_dir("check-missing");
    let p = dir.join("nope.toml");
    let r = tollgate(&["check", &p.to_string_lossy()], "");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

// ---- count -------------------------------------------------------------------------------

#[test]
fn count_hello_world_on_gpt_4o_is_exactly_two() {
    let r = tollgate(&["count", "--model", "gpt-4o"], "hello world");
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("2 tokens (exact, o200k_base)"));
    assert_eq!(lines.next(), Some("input cost: $0.000005 at $2.50 / 1M"));
}

#[test]
fn count_reads_a_file_and_prints_json() {
    let dir = temp_dir("count-file");
    let f = write(&dir, "text.txt", "hello world");
    let r = tollgate(&["count", "--model", "gpt-4o", "--json", &f], "");
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    assert_eq!(v["tokens"], 2);
    assert_eq!(v["exact"], true);
    assert_eq!(v["encoding"], "o200k_base");
}

#[test]
fn count_unknown_model_estimates_and_says_so() {
    let r = tollgate(&["count", "--model", "foo"], "hello world");
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("tokens (estimated)"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("model 'foo' is not in the table; estimated count, not exact"),
        "{}",
        r.stderr
    );
}

#[test]
fn count_jsonl_marks_bad_lines_and_goes_on() {
    let input = "\"hello world\"\nnot json\n{\"text\": \"hello world\"}\n{\"txt\": 1}\n";
    let r = tollgate(&["count", "--model", "gpt-4o", "--jsonl"], input);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["2", "error", "2", "error"]
    );
    assert!(r.stderr.contains("stdin:2:"), "{}", r.stderr);
    assert!(r.stderr.contains("stdin:4:"), "{}", r.stderr);
}

#[test]
fn count_chat_includes_message_overhead_and_allowance() {
    let request = r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}],
                      "max_tokens": 100}"#;
    let r = tollgate(&["count", "--chat"], request);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    // 3 per message + 1 ("user") + 2 ("hello world") + 3 reply priming.
    assert!(
        r.stdout.starts_with("prompt: 9 tokens (exact, o200k_base)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("completion allowance: 100 tokens"),
        "{}",
        r.stdout
    );
}

#[test]
fn count_chat_refuses_a_request_without_messages() {
    let r = tollgate(&["count", "--chat", "--model", "gpt-4o"], "{}");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("\"messages\""), "{}", r.stderr);
}

#[test]
fn count_split_prints_chunks_that_give_the_text_back() {
    let text = "First paragraph, short.\n\nSecond paragraph. It has two sentences.\n";
    let r = tollgate(&["count", "--model", "gpt-4o", "--split", "12"], text);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.starts_with("{\"text\":"), "{}", r.stdout);
    let chunks = json_lines(&r.stdout);
    assert_eq!(chunks.len(), 2, "{}", r.stdout);
    let mut joined = String::new();
    for c in &chunks {
        let t = c["text"].as_str().expect("text");
        assert!(c["tokens"].as_u64().expect("tokens") <= 12);
        assert_eq!(c["exact"], true);
        let (start, end) = (c["start"].as_u64().unwrap(), c["end"].as_u64().unwrap());
        assert_eq!(&text[start as usize..end as usize], t);
        joined.push_str(t);
    }
    assert_eq!(joined, text);
    assert_eq!(chunks[0]["text"], "First paragraph, short.\n\n");
}

#[test]
fn count_split_with_overlap_repeats_the_end_of_each_chunk() {
    let dir = temp_dir("count-split");
    let text = "word ".repeat(200);
    let f = write(&dir, "long.txt", &text);
    let r = tollgate(
        &[
            "count",
            "-m",
            "gpt-4o",
            "--split",
            "50",
            "--overlap",
            "10",
            &f,
        ],
        "",
    );
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let chunks = json_lines(&r.stdout);
    assert!(chunks.len() > 4);
    let mut fresh = String::new();
    for (i, c) in chunks.iter().enumerate() {
        let t = c["text"].as_str().expect("text");
        let overlap = c["overlap"].as_u64().expect("overlap") as usize;
        assert_eq!(overlap > 0, i > 0, "chunk {i}");
        assert!(c["tokens"].as_u64().expect("tokens") <= 50);
        fresh.push_str(&t[overlap..]);
    }
    assert_eq!(fresh, text);
}

#[test]
fn count_split_refuses_bad_input_clearly() {
    let cases: [(&[&str], &str, i32, &str); 7] = [
        (
            &["--split", "0"],
            "hi",
            1,
            "--split 0: a chunk must be allowed at least 1 token",
        ),
        (&["--split", "-3"], "hi", 2, "-3"),
        (&["--split", "many"], "hi", 2, "invalid value 'many'"),
        (
            &["--split", "10", "--overlap", "10"],
            "hi",
            1,
            "--overlap 10 must be smaller than --split 10",
        ),
        (
            &["--split", "200000"],
            "hi",
            1,
            "exceeds the context window of 'gpt-4o' (128000 tokens)",
        ),
        (&["--split", "10"], "", 1, "the text is empty"),
        (&["--overlap", "3"], "hi", 2, "--split"),
    ];
    for (args, input, code, message) in cases {
        let mut all = vec!["count", "--model", "gpt-4o"];
        all.extend_from_slice(args);
        let r = tollgate(&all, input);
        assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
    let r = tollgate(&["count", "--model", "gtp-4o", "--split", "10"], "hi");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("model 'gtp-4o' is not in the model table"),
        "{}",
        r.stderr
    );
    let dir = temp_dir("count-split-bytes");
    let path = dir.join("latin1.txt");
    std::fs::write(&path, b"caf\xe9 au lait").expect("temp file can be written");
    let f = path.to_string_lossy().into_owned();
    let r = tollgate(&["count", "--model", "gpt-4o", "--split", "10", &f], "");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is not valid UTF-8 (at byte 3)"),
        "{}",
        r.stderr
    );
}

// ---- simulate ----------------------------------------------------------------------------

#[test]
fn simulate_requests_per_second_go_go_deny() {
    let trace = "{\"at_ms\": 0, \"tenant\": \"a\", \"model\": \"m\"}\n\
                 {\"at_ms\": 1, \"tenant\": \"a\", \"model\": \"m\"}\n\
                 {\"at_ms\": 2, \"tenant\": \"a\", \"model\": \"m\"}\n";
    let r = simulate("sim-rps", RPS2, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    assert_eq!(
        decisions(&calls),
        [d("done", 0.0), d("done", 0.0), d("deny", 0.0)]
    );
    assert_eq!(calls[2]["reason"], "budget_exhausted");
    assert_eq!(calls[2]["budget"], "g");
    assert_eq!(calls[2]["attempts"], serde_json::json!([]));
    assert_eq!(calls[0]["attempts"][0]["verdict"], "done");
    assert_eq!(calls[0]["budgets"], serde_json::json!([["g", ""]]));
    assert_eq!(calls[0]["line"], 1);
    // The summary table is on stderr.
    assert!(r.stderr.contains("admitted"), "{}", r.stderr);
}

#[test]
fn simulate_waits_then_goes_with_wait_up_to() {
    let policy = "version = 1\n[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\n\
                  requests_per_second = 1\nburst = 1\nwhen_exhausted = { wait_up_to = \"2s\" }\n";
    // Out of time order on purpose: replayed sorted by at_ms, printed in file order.
    let trace = "{\"at_ms\": 100, \"tenant\": \"a\", \"model\": \"m\"}\n\
                 {\"at_ms\": 0, \"tenant\": \"a\", \"model\": \"m\"}\n\
                 {\"at_ms\": 50, \"tenant\": \"b\", \"model\": \"m\"}\n";
    let r = simulate("sim-wait", policy, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    assert_eq!(
        decisions(&calls),
        [d("done", 900.0), d("done", 0.0), d("done", 0.0)]
    );
    assert_eq!(calls[0]["budget"], "per-tenant");
    assert_eq!(calls[0]["key"], "tenant=a");
    assert_eq!(calls[1]["budget"], Value::Null);
}

#[test]
fn simulate_denies_when_the_wait_would_be_too_long() {
    let policy = "version = 1\n[[budget]]\nname = \"g\"\nrequests_per_second = 1\nburst = 1\n\
                  when_exhausted = { wait_up_to = \"500ms\" }\n";
    let trace = "{\"at_ms\": 0, \"model\": \"m\"}\n{\"at_ms\": 100, \"model\": \"m\"}\n";
    let r = simulate("sim-wait-deny", policy, trace, &[]);
    let calls = json_lines(&r.stdout);
    assert_eq!(decisions(&calls), [d("done", 0.0), d("deny", 0.0)]);
    assert_eq!(calls[1]["reason"], "budget_exhausted");
}

#[test]
fn simulate_settles_with_usage_status_or_the_reservation() {
    // One attempt only: the 429 is not retried here (retries are tested below).
    let policy = "version = 1\n[[budget]]\nname = \"g\"\ntokens_per_minute = 100000\n\
                  [retry]\nmax_attempts = 1\n";
    let trace = r#"{"at_ms": 0, "model": "gpt-4o", "prompt_tokens": 100, "max_tokens": 50, "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
{"at_ms": 0, "model": "gpt-4o", "prompt_tokens": 100, "max_tokens": 50, "status": 429, "headers": {"retry-after": "1"}}
{"at_ms": 0, "model": "gpt-4o", "prompt_tokens": 100, "max_tokens": 50, "latency_ms": 700}
"#;
    let r = simulate("sim-settle", policy, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    let tokens: Vec<u64> = calls
        .iter()
        .map(|c| c["tokens"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(tokens, [120, 0, 150], "usage, not billed, reservation kept");
    // 100 prompt at $2.50 + 20 completion at $10 per 1M.
    let cost = calls[0]["cost"].as_f64().unwrap_or(0.0);
    assert!((cost - 0.00045).abs() < 1e-8, "cost {cost}");
}

#[test]
fn simulate_skips_bad_lines_names_them_and_exits_2() {
    let trace = "# a comment\n\
                 {\"at_ms\": 0, \"model\": \"m\"}\n\
                 this is not json\n\
                 \n\
                 {\"at_ms\": 1}\n\
                 {\"at_ms\": \"soon\", \"model\": \"m\"}\n\
                 {\"at_ms\": 2, \"model\": \"m\"}\n";
    let r = simulate("sim-bad", RPS2, trace, &[]);
    assert_eq!(r.code, 2);
    let calls = json_lines(&r.stdout);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["line"], 7);
    for n in [3, 5, 6] {
        assert!(
            r.stderr.contains(&format!("trace.jsonl:{n}: ")),
            "line {n} in:\n{}",
            r.stderr
        );
    }
    assert!(r.stderr.contains("\"model\""), "{}", r.stderr);
    assert!(r.stderr.contains("3 bad lines skipped"), "{}", r.stderr);
}

#[test]
fn simulate_strict_stops_at_the_first_bad_line() {
    let trace = "{\"at_ms\": 0, \"model\": \"m\"}\n{\"model\": \"m\"}\n{\"at_ms\": 2}\n";
    let r = simulate("sim-strict", RPS2, trace, &["--strict"]);
    assert_eq!(r.code, 2);
    assert!(r.stdout.is_empty(), "nothing replayed: {}", r.stdout);
    assert!(r.stderr.contains("trace.jsonl:2: "), "{}", r.stderr);
    assert!(
        !r.stderr.contains("trace.jsonl:3: "),
        "stopped at the first: {}",
        r.stderr
    );
}

#[test]
fn simulate_writes_the_summary_as_json() {
    let dir = temp_dir("sim-summary");
    let summary = dir.join("summary.json");
    let trace = "{\"at_ms\": 0, \"model\": \"m\"}\n{\"at_ms\": 0, \"model\": \"m\"}\n\
                 {\"at_ms\": 0, \"model\": \"m\"}\n";
    let r = simulate(
        "sim-summary-run",
        RPS2,
        trace,
        &["--summary-json", &summary.to_string_lossy()],
    );
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let text = std::fs::read_to_string(&summary).expect("summary written");
    let v: Value = serde_json::from_str(&text).expect("summary is JSON");
    assert_eq!(v["calls"], 3);
    assert_eq!(v["budgets"][0]["name"], "g");
    assert_eq!(v["budgets"][0]["admitted"], 2);
    assert_eq!(v["budgets"][0]["denied"], 1);
}

#[test]
fn simulate_refuses_an_invalid_policy() {
    let r = simulate(
        "sim-bad-policy",
        "version = 1\n[[budget]]\nname = 3\n",
        "",
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("policy.toml:3:"), "{}", r.stderr);
}

// ---- simulate: retries, breakers, fallbacks, incidents -------------------------------------

/// Two upstreams behind one route: `primary` (a pool of two keys), then `secondary`. Backoff
/// without jitter, so every retry time is exact; a breaker that opens after 4 calls at 50%.
const ROUTED: &str = r#"version = 1
[[upstream]]
name = "primary"
base_url = "http://127.0.0.1:9/v1"
auth = { kind = "bearer", keys = ["env:KEY_ONE", "env:KEY_TWO"] }
[[upstream]]
name = "secondary"
base_url = "http://127.0.0.1:9/v1"
[[route]]
model = "gpt-4o"
targets = [{ upstream = "primary", model = "gpt-4o" }, { upstream = "secondary", model = "gpt-4o-mini" }]
[retry]
max_attempts = 3
backoff = { base = "100ms", max = "1s", jitter = "none" }
max_retry_after = "10s"
budget = { ratio = 0.1, max_tokens = 100 }
[breaker]
window = 4
min_calls = 4
failure_rate = 0.5
open_for = "30s"
half_open_calls = 1
"#;

/// `upstream/model` of an attempt's target ("upstream/model (key K)").
fn place(attempt: &Value) -> String {
    attempt["target"]
        .as_str()
        .and_then(|t| t.split(' ').next())
        .unwrap_or("-")
        .to_owned()
}

#[test]
fn simulate_retries_a_503_on_the_next_target() {
    let trace = "{\"at_ms\": 1000, \"model\": \"gpt-4o\", \"latency_ms\": 20, \"status\": 503, \
                 \"prompt_tokens\": 10, \"max_tokens\": 10}\n";
    let r = simulate("sim-503", ROUTED, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    let c = &calls[0];
    assert_eq!(c["decision"], "done", "{c}");
    assert_eq!(c["give_up"], Value::Null);
    assert_eq!(c["target"], "secondary/gpt-4o-mini (key default)");
    let attempts = c["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{c}");
    assert_eq!(attempts[0]["n"], 1);
    assert_eq!(attempts[0]["at_ms"], 1000.0);
    assert_eq!(place(&attempts[0]), "primary/gpt-4o");
    assert_eq!(attempts[0]["outcome"], "status_503");
    assert_eq!(
        attempts[0]["verdict"],
        "retry in 100 ms on secondary/gpt-4o-mini (key default)"
    );
    // 20 ms of latency, then the 100 ms backoff.
    assert_eq!(attempts[1]["n"], 2);
    assert_eq!(attempts[1]["at_ms"], 1120.0);
    assert_eq!(attempts[1]["target"], "secondary/gpt-4o-mini (key default)");
    assert_eq!(attempts[1]["outcome"], "status_200");
    assert_eq!(attempts[1]["verdict"], "done");
    assert!(
        r.stderr
            .contains("1 retry (1 on another target: fallbacks)"),
        "{}",
        r.stderr
    );
}

#[test]
fn simulate_follows_a_then_list_attempt_by_attempt() {
    let trace = r#"{"at_ms": 0, "model": "gpt-4o", "latency_ms": 10, "status": 500, "then": [{"failure": "timeout_first_byte", "latency_ms": 40}, {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}]}
"#;
    let r = simulate("sim-then", ROUTED, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let c = &json_lines(&r.stdout)[0];
    assert_eq!(c["decision"], "done", "{c}");
    let attempts = c["attempts"].as_array().expect("attempts");
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(outcomes.len(), 3, "{c}");
    assert_eq!(outcomes[0], "status_500");
    assert!(outcomes[1].starts_with("timeout"), "{outcomes:?}");
    assert_eq!(outcomes[2], "status_200");
    // 0 + 10 ms + 100 ms backoff = 110; + 40 ms + 200 ms backoff = 350.
    let at: Vec<f64> = attempts
        .iter()
        .map(|a| a["at_ms"].as_f64().unwrap_or(-1.0))
        .collect();
    assert_eq!(at, [0.0, 110.0, 350.0]);
    assert_eq!(place(&attempts[1]), "secondary/gpt-4o-mini");
    // Only the last attempt reported usage; the failed ones were not billed, the timeout kept
    // its reservation (the upstream may have billed it).
    assert!(c["tokens"].as_u64().unwrap_or(0) >= 15, "{c}");
}

#[test]
fn simulate_incident_opens_the_breaker_and_later_calls_skip_the_primary() {
    let dir = temp_dir("sim-incident");
    let summary = dir.join("summary.json");
    let mut trace = String::from(
        "{\"incident\": {\"upstream\": \"primary\", \"model\": \"gpt-4o\", \"from_ms\": 0, \
         \"to_ms\": 1000, \"status\": 503, \"latency_ms\": 5}}\n",
    );
    for at in [0, 100, 200, 300] {
        trace.push_str(&format!(
            "{{\"at_ms\": {at}, \"model\": \"gpt-4o\", \"latency_ms\": 10}}\n"
        ));
    }
    // After the incident, inside the breaker's 30 s: straight to secondary.
    trace.push_str("{\"at_ms\": 2000, \"model\": \"gpt-4o\", \"latency_ms\": 10}\n");
    // After open_for: primary again (the half-open probe succeeds).
    trace.push_str("{\"at_ms\": 40000, \"model\": \"gpt-4o\", \"latency_ms\": 10}\n");
    let r = simulate(
        "sim-incident-run",
        ROUTED,
        &trace,
        &["--summary-json", &summary.to_string_lossy()],
    );
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    assert_eq!(calls.len(), 6, "incident lines print nothing");
    for c in &calls[..4] {
        let attempts = c["attempts"].as_array().expect("attempts");
        assert_eq!(c["decision"], "done", "{c}");
        assert_eq!(place(&attempts[0]), "primary/gpt-4o", "{c}");
        assert_eq!(attempts[0]["outcome"], "status_503", "{c}");
        assert_eq!(place(&attempts[1]), "secondary/gpt-4o-mini", "{c}");
    }
    let after = &calls[4];
    let attempts = after["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "the primary is not tried: {after}");
    assert_eq!(place(&attempts[0]), "secondary/gpt-4o-mini");
    assert_eq!(after["decision"], "done");
    let recovered = &calls[5];
    assert_eq!(
        place(&recovered["attempts"][0]),
        "primary/gpt-4o",
        "{recovered}"
    );
    assert!(
        r.stderr
            .contains("incident (line 1) primary/gpt-4o 0..1000 ms: status 503"),
        "{}",
        r.stderr
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary"))
        .expect("summary is JSON");
    assert_eq!(v["retries"], 4);
    assert_eq!(v["fallbacks"], 4);
    let primary = v["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["target"] == "primary/gpt-4o"))
        .expect("primary in the targets");
    assert_eq!(primary["attempts"], 5);
    assert_eq!(primary["failed"], 4);
    assert_eq!(primary["passed_over"], 1);
    assert_eq!(primary["passed_from_ms"], 2000.0);
}

#[test]
fn simulate_honours_retry_after_in_virtual_time() {
    let trace = "{\"at_ms\": 1000, \"model\": \"gpt-4o\", \"latency_ms\": 250, \"status\": 429, \
                 \"headers\": {\"retry-after\": \"3\"}}\n";
    let r = simulate("sim-429", ROUTED, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let c = &json_lines(&r.stdout)[0];
    let attempts = c["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{c}");
    assert_eq!(attempts[0]["outcome"], "status_429");
    assert!(
        attempts[0]["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("retry in 3000 ms")),
        "{c}"
    );
    // Settled at 1250 ms; Retry-After: 3 puts the retry at exactly 4250 ms.
    assert_eq!(attempts[1]["at_ms"], 4250.0);
    // A 429 is the key's problem: same target, the pool's other key.
    assert_eq!(place(&attempts[1]), "primary/gpt-4o");
    assert_ne!(attempts[0]["target"], attempts[1]["target"], "{c}");
    assert_eq!(c["decision"], "done");
}

#[test]
fn simulate_gives_up_after_max_attempts_with_the_code() {
    let trace = r#"{"at_ms": 0, "tenant": "t", "model": "gpt-4o", "status": 500, "then": [{"status": 502}, {"status": 503}]}
"#;
    let r = simulate("sim-give-up", ROUTED, trace, &[]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let c = &json_lines(&r.stdout)[0];
    assert_eq!(c["decision"], "gave_up", "{c}");
    assert_eq!(c["give_up"], "attempts_exhausted");
    assert_eq!(c["reason"], "attempts_exhausted");
    let attempts = c["attempts"].as_array().expect("attempts");
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(outcomes, ["status_500", "status_502", "status_503"]);
    assert!(
        attempts[2]["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("gave up")),
        "{c}"
    );
    assert_eq!(c["tokens"], 0, "failed statuses are not billed");
    assert!(
        r.stderr.contains("1 gave up (attempts_exhausted × 1)"),
        "{}",
        r.stderr
    );
}

#[test]
fn simulate_names_a_bad_failure_and_skips_its_line() {
    let trace = "{\"at_ms\": 0, \"model\": \"gpt-4o\"}\n\
                 {\"at_ms\": 1, \"model\": \"gpt-4o\", \"failure\": \"explode\"}\n\
                 {\"at_ms\": 2, \"model\": \"gpt-4o\", \"then\": [{\"failure\": \"kaboom\"}]}\n\
                 {\"at_ms\": 3, \"model\": \"gpt-4o\", \"failure\": \"reset\"}\n";
    let r = simulate("sim-bad-failure", ROUTED, trace, &[]);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    let lines: Vec<u64> = calls
        .iter()
        .map(|c| c["line"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(lines, [1, 4]);
    assert!(r.stderr.contains("trace.jsonl:2: "), "{}", r.stderr);
    assert!(r.stderr.contains("\"explode\""), "{}", r.stderr);
    assert!(r.stderr.contains("trace.jsonl:3: "), "{}", r.stderr);
    assert!(
        r.stderr.contains("timeout_first_byte"),
        "lists the names: {}",
        r.stderr
    );
    assert!(r.stderr.contains("2 bad lines skipped"), "{}", r.stderr);
    // The good "reset" row was retried on the next target.
    assert_eq!(calls[1]["attempts"][0]["outcome"], "connect_reset");
    assert_eq!(calls[1]["decision"], "done");
}

#[test]
fn simulate_reads_failures_by_the_engines_codes() {
    // The attempt records' codes are read back as they are written, and a short form means what
    // Failure::from_code says: "connect" is a connection failure of no known kind.
    let trace = "{\"at_ms\": 0, \"model\": \"gpt-4o\", \"failure\": \"connect_refused\"}\n\
                 {\"at_ms\": 1, \"model\": \"gpt-4o\", \"failure\": \"connect\"}\n\
                 {\"at_ms\": 2, \"model\": \"gpt-4o\", \"failure\": \"timeout\"}\n\
                 {\"at_ms\": 3, \"model\": \"gpt-4o\", \"failure\": \"status_503\"}\n";
    let r = simulate("sim-failure-codes", ROUTED, trace, &[]);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    let outcomes: Vec<&str> = calls
        .iter()
        .map(|c| c["attempts"][0]["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        ["connect_refused", "connect_other", "timeout_total"]
    );
    assert!(
        r.stderr
            .contains("trace.jsonl:4: \"failure\" \"status_503\" is an HTTP status"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("write \"status\": 503 instead"),
        "{}",
        r.stderr
    );
}

#[test]
fn simulate_replays_the_bundled_incident() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    let trace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/incident.jsonl");
    let r = tollgate(&["simulate", "--policy", policy, "--trace", trace], "");
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let calls = json_lines(&r.stdout);
    let first = |c: &Value| place(&c["attempts"][0]);
    // Retried on deepseek, gave up on the retry budget, straight to deepseek (breaker open),
    // and back on openai at the end.
    assert!(
        calls
            .iter()
            .any(|c| c["attempts"].as_array().is_some_and(|a| a.len() > 1
                && first(c) == "openai/gpt-4o"
                && place(&a[1]) == "deepseek/deepseek-chat"))
    );
    assert!(
        calls
            .iter()
            .any(|c| c["give_up"] == "retry_budget_exhausted")
    );
    assert!(calls.iter().any(|c| first(c) == "deepseek/deepseek-chat"
        && c["attempts"].as_array().is_some_and(|a| a.len() == 1)));
    assert!(
        calls
            .iter()
            .any(|c| place(&c["attempts"][1]) == "openai/gpt-4o-mini")
    );
    assert_eq!(calls.last().map(first).as_deref(), Some("openai/gpt-4o"));
    assert!(r.stderr.contains("passed over"), "{}", r.stderr);
}

// ---- demo and help -----------------------------------------------------------------------

#[test]
fn demo_makes_real_calls_and_checks_itself_against_the_arrival_log() {
    let r = tollgate(&["demo", "--calls", "300", "--quiet"], "");
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    for part in [
        "300 calls from 8 tenants",
        "redirected to test upstreams on 127.0.0.1",
        "Per tenant",
        "p99 ms",
        "Self-check against the upstreams' arrival logs",
        "budget 'per-model' requests_per_second = 50 (burst 100): held",
        "every checked budget held.",
    ] {
        assert!(r.stdout.contains(part), "{part}: {}", r.stdout);
    }
    let all = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("all "))
        .expect("a totals row");
    assert!(all.split_whitespace().nth(1) == Some("300"), "{all}");
}

#[test]
fn help_documents_exit_statuses() {
    for args in [
        &["--help"][..],
        &["simulate", "--help"],
        &["count", "--help"],
    ] {
        let r = tollgate(args, "");
        assert_eq!(r.code, 0);
        assert!(r.stdout.contains("Exit status:"), "{args:?}: {}", r.stdout);
    }
    let r = tollgate(&["count", "--help"], "");
    for word in ["--split <N>", "--overlap <K>", "byte for byte"] {
        assert!(r.stdout.contains(word), "{word}: {}", r.stdout);
    }
    let r = tollgate(&["simulate", "--help"], "");
    assert!(r.stdout.contains("headers"), "{}", r.stdout);
    assert!(r.stdout.contains("--strict"), "{}", r.stdout);
    for word in ["INCIDENTS", "then", "failure", "gave_up", "attempts"] {
        assert!(r.stdout.contains(word), "{word}: {}", r.stdout);
    }
}

// ---------------------------------------------------------------------------------------------
// serve: signals

/// A `tollgate serve` child process, killed if the test ends early.
struct Served {
    child: std::process::Child,
    addr: String,
    /// Its standard error so far.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(policy: &str) -> Served {
        Served::spawn(&["serve", "--policy", policy, "--listen", "127.0.0.1:0"])
    }

    /// Runs `tollgate ARGS` and waits (bounded) for its "listening on http://ADDR/v1" line.
    fn spawn(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tollgate binary runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut from = child.stderr.take().expect("stderr is piped");
        let into = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut from, &mut buf) {
                if n == 0 {
                    break;
                }
                into.lock()
                    .expect("stderr buffer")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let mut served = Served {
            child,
            addr: String::new(),
            stderr,
        };
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the child says where it listens");
        served.addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.strip_suffix("/v1"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        served
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on the child this test started and has not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (bounded) until its standard error contains `fragment`.
    fn wait_for_stderr(&self, fragment: &str) {
        for _ in 0..1500 {
            if self
                .stderr
                .lock()
                .expect("stderr buffer")
                .contains(fragment)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "serve never wrote {fragment:?}; it wrote {:?}",
            self.stderr.lock().expect("stderr buffer")
        );
    }

    /// Waits (bounded) for the child to exit; its status and standard error.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not exit in time"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // The reader thread sees the end of the pipe soon after the exit.
        for _ in 0..100 {
            if self
                .stderr
                .lock()
                .expect("stderr buffer")
                .contains("stopping")
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let stderr = self.stderr.lock().expect("stderr buffer").clone();
        (status.code(), stderr)
    }
}

/// One HTTP/1.1 request on a new connection: the status and the body.
fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut tcp = std::net::TcpStream::connect(addr).expect("serve accepts");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("read timeout");
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: serve\r\nconnection: close\r\n{auth}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).expect("request sent");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("answer read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

#[test]
fn serve_reloads_on_sighup_and_drains_on_sigterm() {
    use tollgate_testkit::{Action, Match, TestUpstream};
    const KEY: &str = "vk-cli-serve-0123456789";
    let up = TestUpstream::start().expect("test upstream");
    let dir = temp_dir("serve-signals");
    let policy = |rpm: u32| {
        format!(
            "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n\
             [[route]]\nmodel = \"gpt-4o\"\ntargets = [{{ upstream = \"test\", model = \"gpt-4o\" }}]\n\
             [[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = {rpm}\n\
             [serve]\nshutdown_grace = \"20s\"\naccess_log = true\n\
             [[serve.key]]\nhash = \"{}\"\ntenant = \"cli\"\n",
            up.base_url(),
            tollgate_serve::hash_key(KEY)
        )
    };
    // Replaced whole (written aside, then renamed), as a deploy would.
    let replace = |text: &str| {
        write(&dir, "next.toml", text);
        std::fs::rename(dir.join("next.toml"), dir.join("policy.toml")).expect("rename");
    };
    let path = write(&dir, "policy.toml", &policy(1));
    let serve = Served::start(&path);
    let chat =
        r#"{"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}"#;
    let call = || http(&serve.addr, "POST", "/v1/chat/completions", Some(KEY), chat);

    assert_eq!(call().0, 200);
    let (status, body) = call();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("per-tenant"), "{body}");

    // SIGHUP with a broken file: refused, the running policy stays.
    replace("version = 1\n[[budget]]\nname = \"b\"\nrequests_per_minute = -1\n");
    serve.signal(libc::SIGHUP);
    serve.wait_for_stderr("reload refused");
    // SIGHUP with a raised limit.
    replace(&policy(100));
    serve.signal(libc::SIGHUP);
    let generation = || -> i64 {
        let (_, body) = http(&serve.addr, "GET", "/healthz", None, "");
        let v: Value = serde_json::from_str(&body).expect("health is JSON");
        v["generation"].as_i64().expect("a generation")
    };
    let mut seen = generation();
    for _ in 0..500 {
        if seen == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = generation();
    }
    assert_eq!(seen, 2, "one reload taken, the broken file refused");
    assert_eq!(call().0, 200, "the raised limit applies");

    // SIGTERM while a call is in flight: it finishes, new connections are refused, exit 0.
    up.script(
        Match::any(),
        [Action::SlowFirstByte(std::time::Duration::from_millis(800))],
    );
    let before = up.request_count();
    let addr = serve.addr.clone();
    let in_flight =
        std::thread::spawn(move || http(&addr, "POST", "/v1/chat/completions", Some(KEY), chat));
    for _ in 0..1000 {
        if up.request_count() > before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(up.request_count() > before, "the call reached the upstream");
    serve.signal(libc::SIGTERM);
    let mut refused = false;
    for _ in 0..500 {
        if std::net::TcpStream::connect(&serve.addr).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(refused, "serve still accepts after SIGTERM");
    let (status, body) = in_flight.join().expect("the call thread");
    assert_eq!(status, 200, "{body}");
    let (code, stderr) = serve.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert!(stderr.contains("requests_per_minute"), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");

    // The access log: a JSON line per request, never the key.
    assert!(!stderr.contains(KEY), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let chats: Vec<&Value> = lines
        .iter()
        .filter(|l| l["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 4, "{stderr}");
    let ok = chats[0];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "POST");
    assert_eq!(
        (&ok["key"], &ok["tenant"]),
        (&Value::from("cli"), &Value::from("cli"))
    );
    assert_eq!(
        (&ok["model"], &ok["stream"]),
        (&Value::from("gpt-4o"), &Value::from(false))
    );
    assert_eq!(
        (&ok["source"], &ok["attempts"]),
        (&Value::from("upstream"), &Value::from(1))
    );
    assert!(ok["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{ok}");
    assert!(
        ok["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{ok}"
    );
    let denied = chats[1];
    assert_eq!(denied["status"], 429);
    assert_eq!(denied["code"], "budget_exhausted");
    assert!(chats[2..].iter().all(|c| c["status"] == 200), "{stderr}");
    let health = lines
        .iter()
        .find(|l| l["path"] == "/healthz")
        .expect("health checks are logged");
    assert_eq!(
        (&health["status"], &health["key"]),
        (&Value::from(200), &Value::Null)
    );
}

#[test]
fn upstream_answers_chat_completions_until_sigterm() {
    let up = Served::spawn(&["upstream", "--words", "3"]);
    let chat = r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#;
    let (status, body) = http(&up.addr, "POST", "/v1/chat/completions", None, chat);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON completion");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(text.split(' ').count(), 3, "{text}");
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
    let (status, body) = http(&up.addr, "GET", "/v1/models", None, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gpt-4o"), "{body}");
    up.signal(libc::SIGTERM);
    let (code, stderr) = up.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("2 requests served"), "{stderr}");
}

#[test]
fn upstream_names_a_port_it_cannot_take() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = taken.local_addr().expect("bound").port().to_string();
    let run = tollgate(&["upstream", "--port", &port], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("cannot start"), "{}", run.stderr);
}

#[test]
fn bench_measures_against_an_upstream_in_another_process_and_reports_cpu() {
    for (kind, says) in [
        (
            "process",
            "upstream: `tollgate upstream` in its own process",
        ),
        ("inline", "includes the upstream's work"),
    ] {
        let run = tollgate(&["bench", "-n", "200", "-c", "8", "--upstream", kind], "");
        assert_eq!(run.code, 0, "{kind}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains(says), "{kind}: {}", run.stdout);
        for row in ["bare hyper", "tollgate  "] {
            let line = run
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(row.trim_end()) && l.contains("req/s"))
                .unwrap_or_else(|| panic!("{kind}: no {row} row in {}", run.stdout));
            assert!(line.contains("µs/req"), "{line}");
        }
        assert!(
            run.stdout.contains("client CPU per request"),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn bench_streams_against_nginx_when_it_is_installed() {
    let nginx = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nginx").is_file()));
    let run = tollgate(
        &[
            "bench",
            "-n",
            "100",
            "-c",
            "4",
            "--stream",
            "--upstream",
            "nginx",
        ],
        "",
    );
    if nginx {
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("upstream: nginx"), "{}", run.stdout);
        assert!(run.stdout.contains("/sse/v1"), "{}", run.stdout);
    } else {
        // Without nginx the command says why it cannot run, and fails.
        assert_ne!(run.code, 0);
        assert!(run.stderr.contains("cannot start nginx"), "{}", run.stderr);
    }
}
