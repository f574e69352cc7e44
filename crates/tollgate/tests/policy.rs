// Integration tests of the policy file: every bad input is refused with its path, its location
// (TOML) and a message that says what to do; good files give the expected `Policy`.
//
// No inner attributes or doc comments here: the file is also `include!`d by a scratch crate.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use tollgate::policy::{
    Auth, BreakerWindow, Cache, CacheL2, Cidr, DEFAULT_KEY_QUARANTINE, DEFAULT_MAX_IDLE, Exhausted,
    Format, Lease, LimitKind, OnFailure, Policy, PolicyError, PolicyErrors, Probe, Redis, RedisUrl,
    ScopeDim, SecretRef, Serve, Store, Strategy, TokenPlacement, VirtualKey,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy.toml")
}

fn example() -> String {
    std::fs::read_to_string(example_path()).expect("examples/policy.toml is readable")
}

fn refused(text: &str) -> Vec<PolicyError> {
    match Policy::from_toml(text) {
        Ok(p) => panic!("expected errors, got {p:#?}"),
        Err(PolicyErrors { errors }) => errors,
    }
}

fn refused_json(text: &str) -> Vec<PolicyError> {
    match Policy::from_json(text) {
        Ok(p) => panic!("expected errors, got {p:#?}"),
        Err(PolicyErrors { errors }) => errors,
    }
}

/// The only error of `text`, which must have exactly one.
fn only(text: &str) -> PolicyError {
    let errors = refused(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().expect("one error")
}

#[track_caller]
fn check(e: &PolicyError, path: &str, line: u32, column: u32, fragment: &str) {
    assert_eq!(e.path, path, "path of {e}");
    assert_eq!(
        (e.line, e.column),
        (Some(line), Some(column)),
        "location of {e}"
    );
    assert!(
        e.message.contains(fragment),
        "{e:?} should contain {fragment:?}"
    );
}

const BUDGET: &str = "version = 1\n[[budget]]\nname = \"b\"\n";

// ---------------------------------------------------------------------------------------------
// Bad input, one test each

#[test]
fn zero_limit() {
    let e = only(&format!("{BUDGET}tokens_per_minute = 0\n"));
    check(
        &e,
        "budget[0].tokens_per_minute",
        4,
        21,
        "must be a positive number, got 0",
    );
    assert!(
        e.message
            .contains("use a positive number or remove the line")
    );
    assert_eq!(
        e.to_string(),
        "line 4, column 21: budget[0].tokens_per_minute: must be a positive number, got 0; use a \
         positive number or remove the line"
    );
}

#[test]
fn negative_limit() {
    let e = only(&format!("{BUDGET}requests_per_minute = -5\n"));
    check(&e, "budget[0].requests_per_minute", 4, 23, "got -5");
    let e = only(&format!("{BUDGET}spend_per_day = {{ limit = -0.5 }}\n"));
    check(
        &e,
        "budget[0].spend_per_day.limit",
        4,
        27,
        "must be a positive number, got -0.5",
    );
}

#[test]
fn nan_and_infinite_prices() {
    let errors = refused("version = 1\n[prices]\n\"gpt-4o\" = { input = nan, output = inf }\n");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    check(
        &errors[0],
        "prices.\"gpt-4o\".input",
        3,
        22,
        "must be a finite number, got nan",
    );
    check(
        &errors[1],
        "prices.\"gpt-4o\".output",
        3,
        36,
        "must be a finite number, got inf",
    );
    let e = only(&format!("{BUDGET}spend_per_day = -inf\n"));
    check(&e, "budget[0].spend_per_day", 4, 17, "got -inf");
}

#[test]
fn negative_price() {
    let e = only("version = 1\n[prices.\"gpt-4o\"]\ninput = 2.5\noutput = -10.0\n");
    check(
        &e,
        "prices.\"gpt-4o\".output",
        4,
        10,
        "prices cannot be negative",
    );
}

#[test]
fn unknown_scope_name() {
    let e = only(&format!(
        "{BUDGET}scope = [\"tenant\", \"teanant\"]\nconcurrency = 1\n"
    ));
    check(&e, "budget[0].scope[1]", 4, 20, "did you mean \"tenant\"?");
    assert!(
        e.message
            .contains("\"tenant\", \"model\", \"upstream\", \"key\", \"route\"")
    );
    let e = only(&format!("{BUDGET}scope = [\"user\"]\nconcurrency = 1\n"));
    check(&e, "budget[0].scope[0]", 4, 10, "got \"user\"");
}

#[test]
fn duplicate_scope_name() {
    let e = only(&format!(
        "{BUDGET}scope = [\"model\", \"model\"]\nconcurrency = 1\n"
    ));
    check(&e, "budget[0].scope[1]", 4, 19, "listed twice");
}

#[test]
fn unknown_field_with_hint() {
    let e = only(&format!(
        "{BUDGET}token_per_minute = 100\nconcurrency = 1\n"
    ));
    check(
        &e,
        "budget[0].token_per_minute",
        4,
        1,
        "unknown field `token_per_minute`; did you mean `tokens_per_minute`?",
    );
    // Nothing close: the allowed fields are listed instead.
    let e = only("version = 1\n[cache]\ncolour = \"red\"\n");
    check(
        &e,
        "cache.colour",
        3,
        1,
        "the fields here are enabled, max_bytes, ttl",
    );
    // Top level, a common plural.
    let e = only("version = 1\n[[budgets]]\nname = \"x\"\n");
    check(&e, "budgets", 2, 3, "did you mean `budget`?");
}

#[test]
fn duplicate_budget_names() {
    let text = format!("{BUDGET}concurrency = 1\n[[budget]]\nname = \"b\"\nconcurrency = 2\n");
    let e = only(&text);
    check(
        &e,
        "budget[1].name",
        6,
        8,
        "budget name \"b\" is already used by budget[0]",
    );
}

#[test]
fn duplicate_upstream_names() {
    let text = "version = 1\n\
                [[upstream]]\nname = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n\
                [[upstream]]\nname = \"openai\"\nbase_url = \"https://example.com/v1\"\n";
    let e = only(text);
    check(
        &e,
        "upstream[1].name",
        6,
        8,
        "upstream name \"openai\" is already used by upstream[0]",
    );
}

#[test]
fn route_to_unknown_upstream() {
    let text = "version = 1\n\
                [[upstream]]\nname = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n\
                [[route]]\nmodel = \"gpt-4o\"\n\
                targets = [{ upstream = \"openai\" }, { upstream = \"azure\" }]\n";
    let e = only(text);
    check(
        &e,
        "route[0].targets[1].upstream",
        7,
        50,
        "no upstream is named \"azure\"",
    );
    assert!(
        e.message
            .contains("add an [[upstream]] with name = \"azure\""),
        "{e}"
    );
    // A near miss gets a suggestion.
    let e = only(&text.replace("\"azure\"", "\"opena\""));
    assert!(e.message.contains("did you mean \"openai\"?"), "{e}");
}

#[test]
fn duration_in_words() {
    let text =
        format!("{BUDGET}concurrency = 1\nwhen_exhausted = {{ wait_up_to = \"5 minutes\" }}\n");
    let e = only(&text);
    check(
        &e,
        "budget[0].when_exhausted.wait_up_to",
        5,
        33,
        "write \"5m\"",
    );
    let e = only("version = 1\n[cache]\nttl = \"5 min\"\n");
    check(
        &e,
        "cache.ttl",
        3,
        7,
        "\"5 min\" is not a duration; write \"5m\"",
    );
    let e = only("version = 1\n[breaker]\nopen_for = 30\n");
    check(&e, "breaker.open_for", 3, 12, "write \"30s\"");
    let e = only("version = 1\n[breaker]\nopen_for = \"0s\"\n");
    check(&e, "breaker.open_for", 3, 12, "longer than zero");
    let e = only("version = 1\n[breaker]\nopen_for = \"9999999999999999999999d\"\n");
    check(&e, "breaker.open_for", 3, 12, "too long");
}

#[test]
fn huge_policy_is_refused_before_parsing() {
    let big = "#".repeat(50_000_000);
    let e = Policy::from_toml(&big).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].message, "policy is 50.0 MB; the limit is 1 MiB");
    assert_eq!(e.errors[0].path, "");
    let e = Policy::from_bytes(big.as_bytes(), None).unwrap_err();
    assert_eq!(e.errors[0].message, "policy is 50.0 MB; the limit is 1 MiB");

    // A file is refused from its size alone (this one is sparse: nothing is written or read).
    let dir = std::env::temp_dir().join(format!("tollgate-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("huge.toml");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(50_000_000).expect("set_len");
    let e = Policy::from_file(&path).unwrap_err();
    assert_eq!(e.errors[0].message, "policy is 50.0 MB; the limit is 1 MiB");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[cfg(unix)]
#[test]
fn endless_file_is_refused_after_the_limit() {
    // /dev/zero reports a size of 0 and never ends: reading stops one byte past the limit.
    let e = Policy::from_file(Path::new("/dev/zero")).unwrap_err();
    assert!(
        e.errors[0]
            .message
            .starts_with("policy is 1.0 MB; the limit is 1 MiB"),
        "{e}"
    );
}

#[test]
fn invalid_utf8() {
    let bytes = b"version = 1\n[cache]\nttl = \"1\xffm\"\n";
    let e = Policy::from_bytes(bytes, None).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    let e = &e.errors[0];
    assert_eq!(e.path, "");
    assert!(e.message.contains("not valid UTF-8 at byte 28"), "{e}");
    assert_eq!((e.line, e.column), (Some(3), Some(9)));
}

#[test]
fn wrong_types() {
    let e = only(&format!("{BUDGET}requests_per_minute = \"ten\"\n"));
    check(
        &e,
        "budget[0].requests_per_minute",
        4,
        23,
        "must be a positive number or a table",
    );
    assert!(e.message.contains("got \"ten\""));
    let e = only(&format!("{BUDGET}concurrency = \"32\"\n"));
    check(
        &e,
        "budget[0].concurrency",
        4,
        15,
        "must be a positive whole number, got \"32\"",
    );
    let e = only("version = 1\n[cache]\nenabled = \"yes\"\n");
    check(&e, "cache.enabled", 3, 11, "must be true or false");
    let e = only("version = 1\n[defaults]\nmax_completion_tokens = 1.5\n");
    check(&e, "defaults.max_completion_tokens", 3, 25, "whole number");
    let e = only("version = 1\nupstream = \"openai\"\n");
    check(&e, "upstream", 2, 12, "write [[upstream]] (two brackets)");
    let errors = refused_json(r#"{"version": 1, "budget": [{"name": "b", "concurrency": "8"}]}"#);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "budget[0].concurrency");
    assert_eq!((errors[0].line, errors[0].column), (None, None));
}

#[test]
fn missing_version() {
    let e = only("[cache]\nenabled = true\n");
    check(&e, "version", 1, 1, "is required; add version = 1");
    let errors = refused_json("{}");
    assert_eq!(errors[0].path, "version");
}

#[test]
fn unsupported_version() {
    let e = only("version = 2\n");
    check(
        &e,
        "version",
        1,
        11,
        "version 2 is not supported; this tollgate reads version 1",
    );
    let e = only("version = \"1\"\n");
    check(&e, "version", 1, 11, "must be the number 1");
}

#[test]
fn toml_syntax_error_is_located() {
    let e = only("version = 1\n[cache\nenabled = true\n");
    assert_eq!(e.path, "");
    assert_eq!(e.line, Some(2));
    assert!(e.column.is_some());
    assert!(e.message.starts_with("invalid TOML: "), "{e}");
}

#[test]
fn json_syntax_error_is_located() {
    let errors = refused_json("{\n  \"version\": 1,\n  \"cache\": { \"enabled\": tru }\n}");
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(e.path, "");
    assert_eq!(e.line, Some(3));
    assert!(e.column.is_some());
    assert!(e.message.starts_with("invalid JSON: "), "{e}");
}

#[test]
fn literal_secret_is_refused_and_never_repeated() {
    let secret = "sk-proj-Zx81VERYSECRET";
    let text = format!(
        "version = 1\n[[upstream]]\nname = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n\
         auth = {{ kind = \"bearer\", keys = [\"env:OPENAI_API_KEY\", \"{secret}\"] }}\n"
    );
    let errors = refused(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    check(
        &errors[0],
        "upstream[0].auth.keys[1]",
        5,
        57,
        "write env:NAME or file:PATH; literal secrets are not accepted",
    );
    let shown = format!(
        "{}\n{:?}",
        PolicyErrors {
            errors: errors.clone()
        },
        errors
    );
    assert!(!shown.contains("Zx81"), "{shown}");

    // Secrets in the wrong place or of the wrong shape are not repeated either.
    for auth in [
        format!("{{ kind = \"bearer\", key = \"{secret}\" }}"),
        format!("{{ kind = \"bearer\", key = \"env:{secret}\" }}"),
        format!("{{ kind = \"jwt\", id = \"env:ID\", secret = \"{secret}\" }}"),
        format!("{{ kind = \"{secret}\" }}"),
        format!("\"{secret}\""),
    ] {
        let text = format!(
            "version = 1\n[[upstream]]\nname = \"o\"\nbase_url = \"https://o.example\"\n\
             auth = {auth}\n"
        );
        let shown = Policy::from_toml(&text).unwrap_err().to_string();
        assert!(!shown.contains("Zx81"), "{shown}");
    }
    let text = format!(
        r#"{{"version": 1, "upstream": [{{"name": "o", "base_url": "https://o.example",
             "auth": {{"kind": "bearer", "key": "{secret}"}}}}]}}"#
    );
    let shown = Policy::from_json(&text).unwrap_err().to_string();
    assert!(
        shown.contains("literal secrets are not accepted"),
        "{shown}"
    );
    assert!(!shown.contains("Zx81"), "{shown}");
}

#[test]
fn refresh_before_must_be_shorter_than_ttl() {
    let text = "version = 1\n[[upstream]]\nname = \"zhipu\"\n\
                base_url = \"https://open.bigmodel.cn/api/paas/v4\"\n\
                auth = { kind = \"jwt\", id = \"env:ID\", secret = \"env:S\", ttl = \"60s\", \
                refresh_before = \"60s\" }\n";
    let e = only(text);
    check(
        &e,
        "upstream[0].auth.refresh_before",
        5,
        87,
        "refresh_before (1m) must be shorter than ttl (1m)",
    );
}

#[test]
fn burst_below_one_request() {
    let e = only(&format!(
        "{BUDGET}requests_per_second = {{ limit = 5, burst = 0.5 }}\n"
    ));
    check(
        &e,
        "budget[0].requests_per_second.burst",
        4,
        44,
        "must be at least 1",
    );
    let e = only(&format!("{BUDGET}requests_per_minute = 60\nburst = 0.9\n"));
    check(
        &e,
        "budget[0].burst",
        5,
        9,
        "a burst below one request could never admit a call",
    );
    // Tokens and money may burst below one unit.
    let p = Policy::from_toml(&format!(
        "{BUDGET}spend_per_day = {{ limit = 5, burst = 0.5 }}\n"
    ))
    .expect("valid");
    assert_eq!(p.budgets[0].limits[0].burst, 0.5);
}

#[test]
fn budget_burst_needs_a_request_limit() {
    let e = only(&format!("{BUDGET}tokens_per_minute = 1000\nburst = 10\n"));
    check(&e, "budget[0].burst", 5, 9, "no requests_per_* limit");
}

#[test]
fn budget_without_limits() {
    let e = only(&format!("{BUDGET}scope = [\"tenant\"]\n"));
    check(
        &e,
        "budget[0]",
        2,
        1,
        "budget \"b\" has no limit and no concurrency",
    );
}

#[test]
fn missing_required_fields() {
    let errors = refused(
        "version = 1\n[[upstream]]\nauth = { kind = \"bearer\" }\n[[route]]\ntargets = []\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "upstream[0].name",
            "upstream[0].base_url",
            "upstream[0].auth.keys",
            "route[0].model",
            "route[0].targets"
        ]
    );
    check(
        &errors[0],
        "upstream[0].name",
        2,
        1,
        "is required; add name = \"openai\"",
    );
    check(&errors[4], "route[0].targets", 5, 11, "at least one target");
}

#[test]
fn bad_urls() {
    let text = "version = 1\n[[upstream]]\nname = \"t\"\nbase_url = \"http://127.0.0.1:0/v1\"\n\
                proxy = \"socks5://p:1080\"\n";
    let errors = refused(text);
    assert_eq!(errors.len(), 2);
    check(&errors[0], "upstream[0].base_url", 4, 12, "invalid port");
    check(
        &errors[1],
        "upstream[0].proxy",
        5,
        9,
        "must start with http:// or https://",
    );
}

#[test]
fn cross_field_checks() {
    let e = only("version = 1\n[retry]\nbackoff = { base = \"10s\", max = \"1s\" }\n");
    check(
        &e,
        "retry.backoff.base",
        3,
        20,
        "must not be longer than max",
    );
    let e = only("version = 1\n[breaker]\nwindow = 10\nmin_calls = 20\n");
    check(&e, "breaker.min_calls", 4, 13, "could never open");
    let e = only("version = 1\n[retry]\nmax_attempts = 50\n");
    check(&e, "retry.max_attempts", 3, 16, "from 1 to 20");
    let e = only("version = 1\n[retry]\nretry_on = [429, \"503\"]\n");
    check(&e, "retry.retry_on[1]", 3, 18, "503 without quotes");
    let e = only("version = 1\n[breaker]\nfailure_rate = 1.5\n");
    check(&e, "breaker.failure_rate", 3, 16, "above 0 and at most 1");
}

#[test]
fn retry_budget_settings_are_range_checked_and_all_listed() {
    let p = Policy::from_toml(
        "version = 1\n[retry]\nbudget = { refill_per_second = 0, retry_after_cost = 1 }\n",
    )
    .expect("0 and 1 are valid");
    assert_eq!(p.retry.budget_refill_per_second, 0.0);
    assert_eq!(p.retry.budget_retry_after_cost, 1.0);
    assert_eq!(
        p.retry.budget_ratio, 0.1,
        "unset fields keep their defaults"
    );
    let d = Policy::from_toml("version = 1\n").expect("valid").retry;
    assert_eq!(
        (d.budget_refill_per_second, d.budget_retry_after_cost),
        (0.5, 0.5)
    );
    let errors = refused(
        "version = 1\n[retry]\nbudget = { ratio = 0, refill_per_second = -1, \
         retry_after_cost = 1.5, refil = 2 }\n",
    );
    assert_eq!(errors.len(), 4, "{errors:#?}");
    let by_path = |path: &str| {
        errors
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errors:#?}"))
    };
    check(
        by_path("retry.budget.refil"),
        "retry.budget.refil",
        3,
        71,
        "refill_per_second",
    );
    check(
        by_path("retry.budget.ratio"),
        "retry.budget.ratio",
        3,
        20,
        "above 0",
    );
    check(
        by_path("retry.budget.refill_per_second"),
        "retry.budget.refill_per_second",
        3,
        43,
        "0 or more",
    );
    check(
        by_path("retry.budget.retry_after_cost"),
        "retry.budget.retry_after_cost",
        3,
        66,
        "from 0 to 1",
    );
}

#[test]
fn route_target_model_required_for_glob_routes() {
    let text = "version = 1\n[[upstream]]\nname = \"z\"\nbase_url = \"https://z.example\"\n\
                [[route]]\nmodel = \"glm-*\"\ntargets = [{ upstream = \"z\" }]\n";
    let e = only(text);
    check(
        &e,
        "route[0].targets[0].model",
        7,
        12,
        "the route's model \"glm-*\" is a pattern",
    );
}

#[test]
fn every_problem_at_once() {
    let text = "\
version = 2
[[budget]]
name = \"b\"
tokens_per_minute = 0
scope = [\"tenat\"]
concurency = 4
[cache]
ttl = \"5 minutes\"
";
    let errors = refused(text);
    let found: Vec<(&str, Option<u32>)> =
        errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("version", Some(1)),
            ("budget[0].tokens_per_minute", Some(4)),
            ("budget[0].scope[0]", Some(5)),
            ("budget[0].concurency", Some(6)),
            ("cache.ttl", Some(8)),
        ]
    );
    let shown = PolicyErrors { errors }.to_string();
    assert!(shown.starts_with("the policy has 5 errors:\n"), "{shown}");
    assert_eq!(shown.lines().count(), 6);
}

#[test]
fn every_problem_at_once_in_json() {
    let text = r#"{
      "version": 1,
      "upstream": [{ "name": "", "base_url": "https://x.example", "auth": { "kind": "basic" } }],
      "budget": [{ "name": "b", "requests_per_minute": -1, "match": { "tenant": [] } }],
      "route": [{ "model": "m", "targets": [{ "upstream": "nowhere" }] }]
    }"#;
    let errors = refused_json(text);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    // JSON keeps no positions: errors come in schema order.
    assert_eq!(
        paths,
        [
            "upstream[0].name",
            "upstream[0].auth.kind",
            "budget[0].match.tenant",
            "budget[0].requests_per_minute",
            "route[0].targets[0].upstream",
        ]
    );
    assert!(errors.iter().all(|e| e.line.is_none()));
}

// ---------------------------------------------------------------------------------------------
// Range of limits: what a budget's timeline (64-bit nanoseconds) and its counters can hold

/// The one limit of budget "b" (for a limit written as `text`), or the only error.
fn one_limit(text: &str) -> Result<tollgate::policy::Limit, PolicyError> {
    match Policy::from_toml(&format!("{BUDGET}{text}\n")) {
        Ok(p) => Ok(p.budgets[0].limits[0]),
        Err(PolicyErrors { mut errors }) => {
            assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
            Err(errors.remove(0))
        }
    }
}

#[test]
fn every_limit_kind_is_accepted_at_its_largest_and_refused_just_beyond() {
    // (field, largest accepted, the next value up, as written in TOML, and the reason shown)
    let cases = [
        (
            "requests_per_second",
            "1000000000",
            "1000000001",
            "one request per nanosecond",
        ),
        (
            "requests_per_minute",
            "60000000000",
            "60000000001",
            "one request per nanosecond",
        ),
        (
            "requests_per_hour",
            "3600000000000",
            "3600000000001",
            "one request per nanosecond",
        ),
        (
            "requests_per_day",
            "86400000000000",
            "86400000000001",
            "one request per nanosecond",
        ),
        (
            "tokens_per_minute",
            "1.844674407370955e19",
            "1.8446744073709552e19",
            "a budget counts tokens in 64-bit integers",
        ),
        (
            "tokens_per_hour",
            "1.844674407370955e19",
            "1.8446744073709552e19",
            "a budget counts tokens in 64-bit integers",
        ),
        (
            "tokens_per_day",
            "1.844674407370955e19",
            "1.8446744073709552e19",
            "a budget counts tokens in 64-bit integers",
        ),
        (
            "spend_per_day",
            "18446744073.70955",
            "18446744073.709553",
            "a budget counts money in billionths, in 64-bit integers",
        ),
        (
            "spend_per_month",
            "18446744073.70955",
            "18446744073.709553",
            "a budget counts money in billionths, in 64-bit integers",
        ),
    ];
    for (field, largest, beyond, why) in cases {
        let limit = one_limit(&format!("{field} = {largest}"))
            .unwrap_or_else(|e| panic!("{field} = {largest}: {e}"));
        assert_eq!(limit.amount, largest.parse::<f64>().expect("a number"));
        let e = one_limit(&format!("{field} = {beyond}")).expect_err(beyond);
        check(
            &e,
            &format!("budget[0].{field}"),
            4,
            u32::try_from(field.len()).expect("short") + 4,
            &format!("must be at most {largest} ({why}"),
        );
        assert!(
            e.message
                .ends_with(&format!("got {beyond}; write {largest} or less")),
            "{e}"
        );
        // The same bound for `{ limit, burst }`.
        let e = one_limit(&format!("{field} = {{ limit = {beyond} }}")).expect_err(beyond);
        assert_eq!(e.path, format!("budget[0].{field}.limit"));
        assert!(
            e.message.starts_with(&format!("must be at most {largest}")),
            "{e}"
        );
    }
}

#[test]
fn a_request_limit_finer_than_a_nanosecond_is_refused() {
    // 2e9 a second would be charged 1 ns a request, half the limit; with burst = 1, nothing fits.
    for text in [
        "requests_per_second = 2000000000",
        "requests_per_second = 3e9\nburst = 1",
    ] {
        let e = one_limit(text).expect_err(text);
        check(
            &e,
            "budget[0].requests_per_second",
            4,
            23,
            "must be at most 1000000000 (one request per nanosecond, the finest time a budget \
             keeps)",
        );
    }
    // Tokens are charged per call, so a token limit may be finer than one token per nanosecond.
    assert_eq!(
        one_limit("tokens_per_minute = 1e12").map(|l| l.amount),
        Ok(1e12)
    );
}

#[test]
fn an_integer_beyond_toml_range_gets_a_clear_error() {
    let beyond = "which is beyond TOML's 64-bit integers (-9223372036854775808 to \
                  9223372036854775807)";
    let e = one_limit("requests_per_second = 9223372036854775808").expect_err("too big");
    check(
        &e,
        "budget[0].requests_per_second",
        4,
        23,
        &format!(
            "must be at most 1000000000 (one request per nanosecond, the finest time a budget \
             keeps), got 9223372036854775808, {beyond}; write 1000000000 or less"
        ),
    );
    // Far beyond 128 bits too: an integer, not a string.
    let huge = "1".repeat(60);
    let e = one_limit(&format!("requests_per_minute = {huge}")).expect_err("huge");
    assert!(e.message.contains(&format!("got {huge}, {beyond}")), "{e}");
    // A token count between 2^63 and 2^64 is fine, written as a float.
    let e = one_limit("tokens_per_minute = 10000000000000000000").expect_err("integer");
    check(
        &e,
        "budget[0].tokens_per_minute",
        4,
        21,
        "10000000000000000000 is beyond TOML's 64-bit integers (at most 9223372036854775807); \
         write it with an exponent, such as 1e19",
    );
    assert_eq!(
        one_limit("tokens_per_minute = 1e19").map(|l| l.amount),
        Ok(1e19)
    );
    assert_eq!(
        one_limit("tokens_per_minute = 9223372036854775807").map(|l| l.amount),
        Ok(9_223_372_036_854_775_807.0)
    );
    let e = one_limit("requests_per_second = -9223372036854775809").expect_err("negative");
    assert!(
        e.message.starts_with(&format!(
            "must be a positive number, got -9223372036854775809, {beyond}"
        )),
        "{e}"
    );
    // Whole-number fields name their range.
    let e = only(&format!("{BUDGET}concurrency = 99999999999999999999\n"));
    check(
        &e,
        "budget[0].concurrency",
        4,
        15,
        &format!("must be a whole number from 1 to 4294967295, got 99999999999999999999, {beyond}"),
    );
}

#[test]
fn a_burst_spans_between_a_nanosecond_and_2_to_the_63_nanoseconds() {
    // 6e14 tokens a minute refill 10000 tokens a nanosecond: a smaller burst holds no call.
    let limit = "tokens_per_minute = { limit = 600000000000000, burst";
    assert_eq!(
        one_limit(&format!("{limit} = 10000 }}")).map(|l| l.burst),
        Ok(10000.0)
    );
    let e = one_limit(&format!("{limit} = 9999 }}")).expect_err("below a nanosecond");
    check(
        &e,
        "budget[0].tokens_per_minute.burst",
        4,
        56,
        "must be at least 10000 for tokens_per_minute = 600000000000000, got 9999: that is less \
         than the limit refills in one nanosecond, the finest time a budget keeps, so no call \
         could ever fit; raise the burst to 10000 or more, or lower the limit",
    );
    // One token a day refills 106751.99 tokens in 2^63 ns (about 292 years).
    assert!(one_limit("tokens_per_day = { limit = 1, burst = 106751 }").is_ok());
    let e = one_limit("tokens_per_day = { limit = 1, burst = 106752 }").expect_err("too long");
    check(
        &e,
        "budget[0].tokens_per_day.burst",
        4,
        39,
        "must be at most 106751.99116730064 for tokens_per_day = 1, got 106752: refilling a \
         larger burst would take more than 2^63 ns (about 292 years), the longest a budget \
         keeps; lower the burst or raise the limit",
    );
    // The budget's own burst, for its request limits.
    assert!(one_limit("requests_per_day = 1\nburst = 106751").is_ok());
    let e = one_limit("requests_per_day = 1\nburst = 106752").expect_err("too long");
    check(
        &e,
        "budget[0].burst",
        5,
        9,
        "must be at most 106751.99116730064 for requests_per_day = 1",
    );
    // A request limit below one bursts one request: one in 2^63 ns at the least.
    let least = "9.367506770274758e-6";
    assert_eq!(
        one_limit(&format!("requests_per_day = {least}")).map(|l| (l.amount, l.burst)),
        Ok((9.367506770274758e-6, 1.0))
    );
    let e = one_limit("requests_per_day = 9.367506770274757e-6").expect_err("too small");
    check(
        &e,
        "budget[0].requests_per_day",
        4,
        20,
        &format!(
            "must be at least {least} (one request in 2^63 ns, about 292 years, the longest a \
             budget keeps), got 9.367506770274757e-6; write {least} or more"
        ),
    );
}

#[test]
fn concurrency_and_key_capacity_at_their_bounds() {
    let p = Policy::from_toml(&format!(
        "{BUDGET}concurrency = 4294967295\nkey_capacity = 10000000\n"
    ))
    .expect("valid");
    assert_eq!(p.budgets[0].concurrency, Some(u32::MAX));
    assert_eq!(p.budgets[0].key_capacity, 10_000_000);
    let e = only(&format!("{BUDGET}concurrency = 4294967296\n"));
    check(
        &e,
        "budget[0].concurrency",
        4,
        15,
        "must be a whole number from 1 to 4294967295, got 4294967296",
    );
    let e = only(&format!(
        "{BUDGET}concurrency = 1\nkey_capacity = 10000001\n"
    ));
    check(
        &e,
        "budget[0].key_capacity",
        5,
        16,
        "must be a whole number from 1 to 10000000, got 10000001",
    );
}

#[test]
fn limits_in_json_are_checked_the_same_way() {
    let errors = refused_json(
        r#"{"version": 1, "budget": [{"name": "b", "requests_per_second": 18446744073709551615,
            "tokens_per_minute": {"limit": 600000000000000, "burst": 9999}}]}"#,
    );
    let found: Vec<(&str, bool)> = errors
        .iter()
        .map(|e| (e.path.as_str(), e.line.is_none()))
        .collect();
    assert_eq!(
        found,
        [
            ("budget[0].requests_per_second", true),
            ("budget[0].tokens_per_minute.burst", true)
        ]
    );
    assert!(errors[0].message.starts_with("must be at most 1000000000"));
    assert!(errors[1].message.starts_with("must be at least 10000"));
}

// ---------------------------------------------------------------------------------------------
// Good input

#[test]
fn example_policy_parses() {
    let p = Policy::from_file(&example_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.version, 1);
    let names: Vec<&str> = p.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["openai", "deepseek", "zhipu", "ernie"]);
    assert_eq!(p.upstreams[0].dialect, tollgate::dialect::Dialect::OpenAi);
    assert_eq!(p.upstreams[3].dialect, tollgate::dialect::Dialect::BaiduV1);
    assert_eq!(
        p.upstreams[3].endpoints,
        [
            ("ernie-4.0-8k".to_owned(), "completions_pro".to_owned()),
            ("my-tuned-model".to_owned(), "abc123xy".to_owned())
        ]
    );
    assert!(matches!(
        &p.upstreams[3].auth,
        Auth::OAuth2 {
            placement: TokenPlacement::Query,
            ..
        }
    ));
    assert_eq!(
        p.upstreams[0].auth,
        Auth::Bearer {
            keys: vec![
                SecretRef::Env("OPENAI_API_KEY".into()),
                SecretRef::Env("OPENAI_API_KEY_2".into())
            ]
        }
    );
    assert!(matches!(
        &p.upstreams[2].auth,
        Auth::Jwt { ttl, refresh_before, .. }
            if *ttl == Duration::from_secs(1800) && *refresh_before == Duration::from_secs(60)
    ));
    let b = &p.budgets[0];
    assert_eq!(b.name, "per-tenant");
    assert_eq!(b.scope, [ScopeDim::Tenant]);
    assert_eq!(b.when_exhausted, Exhausted::Wait(Duration::from_secs(2)));
    assert_eq!(b.concurrency, Some(32));
    assert_eq!(b.key_capacity, 5000);
    let kinds: Vec<LimitKind> = b.limits.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [
            LimitKind::RequestsPerMinute,
            LimitKind::TokensPerMinute,
            LimitKind::SpendPerDay
        ]
    );
    assert_eq!(
        (b.limits[1].amount, b.limits[1].burst),
        (150_000.0, 20_000.0)
    );
    // The budget-level burst applies to request limits only.
    let per_model = &p.budgets[1];
    assert_eq!(per_model.limits[0].kind, LimitKind::RequestsPerSecond);
    assert_eq!(per_model.limits[0].burst, 100.0);
    assert_eq!(per_model.limits[1].burst, 2_000_000.0);
    assert_eq!(p.budgets[2].limits[0].kind, LimitKind::SpendPerMonth);
    assert_eq!(p.routes[1].name, "glm-*");
    assert_eq!(p.routes[0].targets[1].model, "deepseek-chat");
    // The fallback chain gpt-4o -> cheap -> glm-*.
    assert_eq!(p.routes[0].fallback.as_deref(), Some("cheap"));
    assert_eq!(p.routes[2].name, "cheap");
    assert_eq!(p.routes[2].fallback.as_deref(), Some("glm-*"));
    assert_eq!(p.routes[1].fallback, None);
    assert_eq!(p.upstreams[0].key_quarantine, Duration::from_secs(600));
    assert_eq!(p.upstreams[1].key_quarantine, DEFAULT_KEY_QUARANTINE);
    assert!(p.retry.honor_server_limits);
    assert_eq!(p.retry.budget_refill_per_second, 0.5);
    assert_eq!(p.retry.budget_retry_after_cost, 0.5);
    assert_eq!(p.breaker.window, BreakerWindow::Calls(20));
    assert_eq!(
        p.breaker.probe,
        Some(Probe {
            prompt: "ping".into(),
            max_tokens: 1
        })
    );
    assert!(p.cache.enabled);
    assert_eq!(p.cache.max_bytes, 256_000_000);
    assert_eq!(p.cache.max_entry_bytes, 8 * 1024 * 1024);
    assert_eq!(p.cache.max_n, 1);
    assert!(!p.cache.allow_tools && !p.cache.require_seed);
    assert_eq!(p.prices["glm-4-plus"].cached_input, 0.7);
    assert_eq!(p.models["my-finetune"].context_window, Some(128_000));
}

#[test]
fn example_in_json_is_the_same_policy() {
    let text = example();
    let value: serde_json::Value = toml::from_str(&text).expect("example is TOML");
    let json = serde_json::to_string_pretty(&value).expect("to JSON");
    let from_json = Policy::from_json(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_json, Policy::from_toml(&text).expect("valid"));
    // Detection by content, and by extension.
    assert_eq!(
        Policy::from_bytes(json.as_bytes(), None).expect("valid"),
        from_json
    );
    let dir = std::env::temp_dir().join(format!("tollgate-policy-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.json");
    std::fs::write(&path, &json).expect("write");
    assert_eq!(Policy::from_file(&path).expect("valid"), from_json);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn hand_written_json() {
    let json = r#"{
      "version": 1,
      "upstream": [{ "name": "local", "base_url": "http://127.0.0.1:8000/v1" }],
      "budget": [{ "name": "g", "scope": ["model", "tenant"], "requests_per_minute": 0.5 }],
      "route": [{ "model": "llama", "targets": [{ "upstream": "local" }] }]
    }"#;
    let p = Policy::parse(json, Format::Json).unwrap_or_else(|e| panic!("{e}"));
    // Scope is kept in canonical order; a fractional request rate gets a burst of one request.
    assert_eq!(p.budgets[0].scope, [ScopeDim::Tenant, ScopeDim::Model]);
    assert_eq!(
        (p.budgets[0].limits[0].amount, p.budgets[0].limits[0].burst),
        (0.5, 1.0)
    );
    assert_eq!(p.routes[0].targets[0].model, "llama");
    assert_eq!(p.upstreams[0].auth, Auth::None);
}

#[test]
fn defaults_are_applied() {
    let p = Policy::from_toml("version = 1\n").expect("valid");
    assert_eq!(p.defaults, Default::default());
    assert_eq!(p.retry, Default::default());
    assert_eq!(p.breaker, Default::default());
    assert_eq!(p.cache, Default::default());
    assert!(p.upstreams.is_empty() && p.budgets.is_empty() && p.routes.is_empty());

    let p = Policy::from_toml(
        "version = 1\n[defaults]\nkey_capacity = 7\n\
         [[budget]]\nname = \"b\"\nrequests_per_minute = 10\n\
         [[upstream]]\nname = \"u\"\nbase_url = \"https://u.example\"\n\
         [[route]]\nmodel = \"m\"\ntargets = [{ upstream = \"u\" }]\n",
    )
    .expect("valid");
    let b = &p.budgets[0];
    assert_eq!(b.key_capacity, 7);
    assert_eq!(b.when_exhausted, Exhausted::Deny);
    assert_eq!(b.limits[0].burst, 10.0);
    assert!(b.scope.is_empty() && b.matcher.is_empty());
    assert_eq!(p.upstreams[0].timeouts, Default::default());
    assert_eq!(p.routes[0].strategy, Strategy::Ordered);
    assert_eq!(p.routes[0].targets[0].weight, 1);
}

#[test]
fn globs_in_match() {
    let p = Policy::from_toml(&format!(
        "{BUDGET}concurrency = 1\nmatch = {{ model = \"gpt-4o*\", tenant = [\"a*\", \"b\"] }}\n"
    ))
    .expect("valid");
    let m = &p.budgets[0].matcher;
    let model = m.globs(ScopeDim::Model);
    assert!(model[0].matches("gpt-4o-mini") && model[0].matches("gpt-4o"));
    assert!(!model[0].matches("gpt-4"));
    let tenant = m.globs(ScopeDim::Tenant);
    assert_eq!(tenant.len(), 2);
    assert!(tenant[0].matches("acme") && tenant[1].matches("b") && !tenant[1].matches("bb"));
    assert!(m.globs(ScopeDim::Route).is_empty());
}

#[test]
fn summary_mentions_everything() {
    let p = Policy::from_toml(&example()).expect("valid");
    let s = p.summary();
    for b in &p.budgets {
        assert!(s.contains(&format!("budget \"{}\"", b.name)), "{s}");
    }
    for needle in [
        "per tenant",
        "gpt-4o*",
        "600 requests per minute",
        "burst 20000",
        "at most 32 in flight",
        "waits up to 2s",
        "spend 500 per 30 days",
        "env:OPENAI_API_KEY",
        "file:/run/secrets/deepseek_key",
        "JWT",
        "falling back to deepseek/deepseek-chat",
        "retry: up to 3 attempts",
        "breaker:",
        "cache: on",
        "entries are kept per tenant",
        "falls back to route \"cheap\", then route \"glm-*\"",
        "synthetic probe",
        "left out for 10m",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
}

#[test]
fn summary_lists_the_cache_scope_and_disk_level() {
    let p = Policy::from_toml(
        "version = 1\n[cache]\nenabled = true\nscope = \"shared\"\n\
         disk = { path = \"/var/cache/tollgate/cache.db\", max_bytes = \"10GiB\" }\n",
    )
    .expect("valid");
    let s = p.summary();
    assert!(s.contains("entries are shared by every tenant"), "{s}");
    assert!(
        s.contains("then on disk in /var/cache/tollgate/cache.db (at most 10GiB"),
        "{s}"
    );
}

// ---------------------------------------------------------------------------------------------
// Key quarantine, route fallbacks, server limits, breaker windows and probes, cache rules

const UPSTREAM: &str =
    "version = 1\n[[upstream]]\nname = \"u\"\nbase_url = \"https://u.example\"\n";

/// A route named and matching `name`, on upstream `u`, with an optional fallback (5 lines, the
/// fallback value on the last at column 12).
fn route(name: &str, fallback: Option<&str>) -> String {
    let mut r = format!(
        "[[route]]\nname = \"{name}\"\nmodel = \"{name}\"\ntargets = [{{ upstream = \"u\" }}]\n"
    );
    if let Some(f) = fallback {
        r.push_str(&format!("fallback = \"{f}\"\n"));
    }
    r
}

#[test]
fn key_quarantine_is_read_and_defaults_to_five_minutes() {
    let p = Policy::from_toml(&format!("{UPSTREAM}key_quarantine = \"90s\"\n")).expect("valid");
    assert_eq!(p.upstreams[0].key_quarantine, Duration::from_secs(90));
    let p = Policy::from_toml(UPSTREAM).expect("valid");
    assert_eq!(p.upstreams[0].key_quarantine, DEFAULT_KEY_QUARANTINE);
    assert_eq!(DEFAULT_KEY_QUARANTINE, Duration::from_secs(300));
    let e = only(&format!("{UPSTREAM}key_quarantine = \"0s\"\n"));
    check(
        &e,
        "upstream[0].key_quarantine",
        5,
        18,
        "must be longer than zero",
    );
    let e = only(&format!("{UPSTREAM}key_quarantine = 300\n"));
    check(&e, "upstream[0].key_quarantine", 5, 18, "write \"300s\"");
}

#[test]
fn max_idle_is_read_and_defaults_to_256() {
    let p = Policy::from_toml(&format!("{UPSTREAM}max_idle = 0\n")).expect("valid");
    assert_eq!(p.upstreams[0].max_idle, 0);
    let p = Policy::from_toml(&format!("{UPSTREAM}max_idle = 1024\n")).expect("valid");
    assert_eq!(p.upstreams[0].max_idle, 1024);
    let p = Policy::from_toml(UPSTREAM).expect("valid");
    assert_eq!(p.upstreams[0].max_idle, DEFAULT_MAX_IDLE);
    assert_eq!(DEFAULT_MAX_IDLE, 256);
    let e = only(&format!("{UPSTREAM}max_idle = 70000\n"));
    check(&e, "upstream[0].max_idle", 5, 12, "from 0 to 65536");
    let e = only(&format!("{UPSTREAM}max_idle = -1\n"));
    check(&e, "upstream[0].max_idle", 5, 12, "from 0 to 65536");
}

#[test]
fn fallback_to_an_unknown_route() {
    let text = format!(
        "{UPSTREAM}{}{}",
        route("primary", Some("chep")),
        route("cheap", None)
    );
    let e = only(&text);
    check(
        &e,
        "route[0].fallback",
        9,
        12,
        "no route is named \"chep\"; did you mean \"cheap\"?",
    );
    // Nothing close: the other routes are listed.
    let e = only(&text.replace("\"chep\"", "\"backup\""));
    check(
        &e,
        "route[0].fallback",
        9,
        12,
        "the other routes are cheap; fix the name or add a [[route]] with name = \"backup\"",
    );
    // Empty, or not a string.
    let e = only(&text.replace("\"chep\"", "\"\""));
    check(&e, "route[0].fallback", 9, 12, "must not be empty");
    let e = only(&text.replace("\"chep\"", "[\"cheap\"]"));
    check(&e, "route[0].fallback", 9, 12, "must be a string");
}

#[test]
fn fallback_loop_of_two_routes() {
    // c -> a -> b -> a: c leads into the loop but is not part of it; one error, at a.
    let text = format!(
        "{UPSTREAM}{}{}{}",
        route("c", Some("a")),
        route("a", Some("b")),
        route("b", Some("a"))
    );
    let e = only(&text);
    check(
        &e,
        "route[1].fallback",
        14,
        12,
        "route fallback chain loops: a → b → a; break the loop",
    );
}

#[test]
fn fallback_to_itself() {
    let e = only(&format!(
        "{UPSTREAM}{}{}",
        route("b", None),
        route("a", Some("a"))
    ));
    check(
        &e,
        "route[1].fallback",
        13,
        12,
        "route fallback chain loops: a → a; break the loop",
    );
}

#[test]
fn every_fallback_loop_is_reported_once() {
    // Two separate loops (a <-> b, c -> c) and a route named after its model in one of them.
    let text = format!(
        "{UPSTREAM}{}{}{}\
         [[route]]\nmodel = \"d\"\ntargets = [{{ upstream = \"u\" }}]\nfallback = \"b\"\n",
        route("b", Some("d")),
        route("c", Some("c")),
        route("a", Some("b")),
    );
    let errors = refused(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    check(&errors[0], "route[0].fallback", 9, 12, "loops: b → d → b;");
    check(&errors[1], "route[1].fallback", 14, 12, "loops: c → c;");
}

#[test]
fn fallback_chain_without_loop_is_accepted() {
    let p = Policy::from_toml(&format!(
        "{UPSTREAM}{}{}{}",
        route("a", Some("b")),
        route("b", Some("c")),
        route("c", None)
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let fallbacks: Vec<Option<&str>> = p.routes.iter().map(|r| r.fallback.as_deref()).collect();
    assert_eq!(fallbacks, [Some("b"), Some("c"), None]);
    // Two routes may share a fallback.
    Policy::from_toml(&format!(
        "{UPSTREAM}{}{}{}",
        route("a", Some("c")),
        route("b", Some("c")),
        route("c", None)
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn honor_server_limits_is_read() {
    assert!(
        Policy::from_toml("version = 1\n")
            .expect("valid")
            .retry
            .honor_server_limits
    );
    let p = Policy::from_toml("version = 1\n[retry]\nhonor_server_limits = false\n").expect("ok");
    assert!(!p.retry.honor_server_limits);
    let e = only("version = 1\n[retry]\nhonor_server_limits = \"no\"\n");
    check(
        &e,
        "retry.honor_server_limits",
        3,
        23,
        "must be true or false",
    );
}

#[test]
fn breaker_window_as_a_duration_is_a_time_window() {
    let p = Policy::from_toml("version = 1\n[breaker]\nwindow = \"30s\"\n").expect("valid");
    assert_eq!(
        p.breaker.window,
        BreakerWindow::Time(Duration::from_secs(30))
    );
    // min_calls is not bounded by a time window.
    let p = Policy::from_toml("version = 1\n[breaker]\nwindow = \"1m\"\nmin_calls = 100\n")
        .expect("valid");
    assert_eq!(p.breaker.min_calls, 100);
    let e = only("version = 1\n[breaker]\nwindow = \"0s\"\n");
    check(&e, "breaker.window", 3, 10, "must be longer than zero");
    let e = only("version = 1\n[breaker]\nwindow = \"30 seconds\"\n");
    check(&e, "breaker.window", 3, 10, "is not a duration");
}

#[test]
fn breaker_window_as_a_number_counts_calls() {
    let p = Policy::from_toml("version = 1\n[breaker]\nwindow = 20\n").expect("valid");
    assert_eq!(p.breaker.window, BreakerWindow::Calls(20));
    let e = only("version = 1\n[breaker]\nwindow = 0\n");
    check(&e, "breaker.window", 3, 10, "from 1 to 100000");
    let e = only("version = 1\n[breaker]\nwindow = true\n");
    check(
        &e,
        "breaker.window",
        3,
        10,
        "must be a number of calls such as 20 or a duration such as \"30s\", got true",
    );
}

#[test]
fn breaker_window_as_a_quoted_number() {
    let e = only("version = 1\n[breaker]\nwindow = \"20\"\n");
    check(
        &e,
        "breaker.window",
        3,
        10,
        "\"20\" is neither a number of calls nor a duration; write 20 without quotes for the \
         last 20 calls, or \"20s\" for the calls of the last 20 seconds",
    );
}

#[test]
fn breaker_probe_is_read() {
    let p = Policy::from_toml(
        "version = 1\n[breaker]\nprobe = { prompt = \"Say OK.\", max_tokens = 2 }\n",
    )
    .expect("valid");
    assert_eq!(
        p.breaker.probe,
        Some(Probe {
            prompt: "Say OK.".into(),
            max_tokens: 2
        })
    );
    let p = Policy::from_toml("version = 1\n[breaker]\nprobe = { prompt = \"ping\" }\n")
        .expect("valid");
    assert_eq!(p.breaker.probe.expect("probe").max_tokens, 1);
    assert_eq!(
        Policy::from_toml("version = 1\n")
            .expect("valid")
            .breaker
            .probe,
        None
    );
}

#[test]
fn breaker_probe_with_an_empty_prompt() {
    let e = only("version = 1\n[breaker]\nprobe = { prompt = \"\" }\n");
    check(
        &e,
        "breaker.probe.prompt",
        3,
        20,
        "must not be empty; write a short prompt such as \"ping\"",
    );
    let e = only("version = 1\n[breaker]\nprobe = { max_tokens = 1 }\n");
    check(
        &e,
        "breaker.probe.prompt",
        3,
        9,
        "is required; add prompt = \"ping\"",
    );
    let long = "x".repeat(4097);
    let e = only(&format!(
        "version = 1\n[breaker]\nprobe = {{ prompt = \"{long}\" }}\n"
    ));
    check(
        &e,
        "breaker.probe.prompt",
        3,
        20,
        "is 4097 bytes long; a probe prompt is at most 4096 bytes",
    );
    let e = only("version = 1\n[breaker]\nprobe = \"ping\"\n");
    check(
        &e,
        "breaker.probe",
        3,
        9,
        "must be a table such as { prompt = \"ping\", max_tokens = 1 }",
    );
}

#[test]
fn breaker_probe_with_zero_max_tokens() {
    let e = only("version = 1\n[breaker]\nprobe = { prompt = \"ping\", max_tokens = 0 }\n");
    check(
        &e,
        "breaker.probe.max_tokens",
        3,
        41,
        "must be a whole number from 1 to 4096, got 0",
    );
    let e = only("version = 1\n[breaker]\nprobe = { prompt = \"ping\", max_token = 1 }\n");
    check(
        &e,
        "breaker.probe.max_token",
        3,
        28,
        "did you mean `max_tokens`?",
    );
}

#[test]
fn cache_rules_are_read() {
    let p = Policy::from_toml(
        "version = 1\n[cache]\nenabled = true\nmax_n = 4\nallow_tools = true\n\
         require_seed = true\nmax_entry_bytes = \"1MiB\"\n",
    )
    .expect("valid");
    let c = &p.cache;
    assert_eq!(c.max_n, 4);
    assert!(c.allow_tools && c.require_seed);
    assert_eq!(c.max_entry_bytes, 1024 * 1024);
    let p = Policy::from_toml("version = 1\n[cache]\nmax_entry_bytes = 4096\n").expect("valid");
    assert_eq!(p.cache.max_entry_bytes, 4096);
    let errors = refused(
        "version = 1\n[cache]\nmax_n = 0\nallow_tools = 1\nrequire_seed = \"yes\"\n\
         max_entry_bytes = \"0MB\"\n",
    );
    let found: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        found,
        [
            "cache.max_n",
            "cache.allow_tools",
            "cache.require_seed",
            "cache.max_entry_bytes"
        ]
    );
    check(
        &errors[0],
        "cache.max_n",
        3,
        9,
        "must be a positive whole number",
    );
    check(
        &errors[3],
        "cache.max_entry_bytes",
        6,
        19,
        "must be more than zero; remove the line for the default",
    );
}

#[test]
fn cache_entry_larger_than_the_cache() {
    let e = only("version = 1\n[cache]\nmax_bytes = \"1MB\"\nmax_entry_bytes = \"2MB\"\n");
    check(
        &e,
        "cache.max_entry_bytes",
        4,
        19,
        "max_entry_bytes (2MB) is more than max_bytes (1MB); an entry larger than the whole \
         cache could never be stored",
    );
    // Equal is allowed.
    Policy::from_toml("version = 1\n[cache]\nmax_bytes = \"1MB\"\nmax_entry_bytes = 1000000\n")
        .expect("valid");
}

#[test]
fn default_max_entry_bytes_follows_max_bytes() {
    let entry = |max_bytes: &str| {
        Policy::from_toml(&format!("version = 1\n[cache]\nmax_bytes = {max_bytes}\n"))
            .unwrap_or_else(|e| panic!("{e}"))
            .cache
            .max_entry_bytes
    };
    // An eighth of the cache, at most 8 MiB.
    assert_eq!(entry("\"1MB\""), 125_000);
    assert_eq!(entry("\"64MiB\""), 8 * 1024 * 1024);
    assert_eq!(entry("\"1GB\""), 8 * 1024 * 1024);
    assert_eq!(entry("4"), 1);
    assert_eq!(
        Policy::from_toml("version = 1\n")
            .expect("valid")
            .cache
            .max_entry_bytes,
        8 * 1024 * 1024
    );
    let d = Cache::default();
    assert_eq!(
        d.max_entry_bytes,
        Cache::default_max_entry_bytes(d.max_bytes)
    );
}

#[test]
fn new_fields_in_json() {
    let json = r#"{
      "version": 1,
      "upstream": [{ "name": "u", "base_url": "https://u.example", "key_quarantine": "1m" }],
      "route": [
        { "name": "a", "model": "a", "targets": [{ "upstream": "u" }], "fallback": "b" },
        { "name": "b", "model": "b", "targets": [{ "upstream": "u" }] }
      ],
      "retry": { "honor_server_limits": false },
      "breaker": { "window": "30s", "probe": { "prompt": "ping", "max_tokens": 1.0 } },
      "cache": { "max_bytes": 1000000, "max_n": 2, "allow_tools": true, "require_seed": true }
    }"#;
    let p = Policy::from_json(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.upstreams[0].key_quarantine, Duration::from_secs(60));
    assert_eq!(p.routes[0].fallback.as_deref(), Some("b"));
    assert!(!p.retry.honor_server_limits);
    assert_eq!(
        p.breaker.window,
        BreakerWindow::Time(Duration::from_secs(30))
    );
    assert_eq!(p.breaker.probe.as_ref().map(|p| p.max_tokens), Some(1));
    assert_eq!((p.cache.max_n, p.cache.max_entry_bytes), (2, 125_000));
    assert!(p.cache.allow_tools && p.cache.require_seed);
}

#[test]
fn new_errors_in_json() {
    let json = r#"{
      "version": 1,
      "upstream": [{ "name": "u", "base_url": "https://u.example" }],
      "route": [
        { "name": "a", "model": "a", "targets": [{ "upstream": "u" }], "fallback": "b" },
        { "name": "b", "model": "b", "targets": [{ "upstream": "u" }], "fallback": "a" }
      ],
      "breaker": { "window": "20", "probe": { "prompt": "" } },
      "cache": { "max_bytes": 1000, "max_entry_bytes": 2000 }
    }"#;
    let errors = refused_json(json);
    let found: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    // JSON keeps no positions: schema order, loops after the routes are read.
    assert_eq!(
        found,
        [
            "route[0].fallback",
            "breaker.window",
            "breaker.probe.prompt",
            "cache.max_entry_bytes"
        ]
    );
    assert!(errors[0].message.contains("a → b → a"), "{}", errors[0]);
    assert!(errors.iter().all(|e| e.line.is_none()));
}

#[test]
fn summary_mentions_the_new_settings() {
    let text = format!(
        "{UPSTREAM}key_quarantine = \"2m\"\n{}{}{}\
         [retry]\nhonor_server_limits = false\n\
         [breaker]\nwindow = \"45s\"\nprobe = {{ prompt = \"ping\", max_tokens = 3 }}\n\
         [cache]\nenabled = true\nmax_bytes = \"1MB\"\nmax_n = 2\nrequire_seed = true\n",
        route("a", Some("b")),
        route("b", Some("c")),
        route("c", None)
    );
    let s = Policy::from_toml(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .summary();
    for needle in [
        "route \"a\": model a goes to u/a; when every target fails, falls back to route \"b\", \
         then route \"c\"",
        "route \"b\": model b goes to u/b; when every target fails, falls back to route \"c\"\n",
        "a key refused with 401 is left out for 2m",
        "x-ratelimit-* response headers are ignored",
        "the calls of the last 45s",
        "3 synthetic probes (prompt \"ping\", max_tokens 3)",
        "entries of at most 125KB",
        "n <= 2, no tools, a seed set",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
    // Defaults are not spelled out where they change nothing.
    let s = Policy::from_toml(UPSTREAM).expect("valid").summary();
    assert!(!s.contains("left out for"), "{s}");
    assert!(!s.contains("falls back to route"), "{s}");
}

#[test]
fn io_errors_have_an_empty_path() {
    let e = Policy::from_file(Path::new("/nonexistent/tollgate/policy.toml")).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].path, "");
    assert!(
        e.errors[0]
            .message
            .starts_with("cannot read /nonexistent/tollgate/policy.toml")
    );
}

// ---------------------------------------------------------------------------------------------
// Redis: the [redis] section, store = "redis", budget leases and the cache's second level

/// A minimal valid `[redis]` section (3 lines).
const REDIS: &str = "[redis]\nurl = \"redis://127.0.0.1:6379\"\non_failure = \"fail_closed\"\n";

/// `version = 1` and a `[redis]` section with `url` and `on_failure`, then `extra` lines in it
/// (the first extra line is line 5).
fn redis_with(url: &str, extra: &str) -> String {
    format!("version = 1\n[redis]\nurl = \"{url}\"\non_failure = \"fail_closed\"\n{extra}")
}

/// A Redis budget named "r" with 60 requests a minute (4 lines), after `REDIS` when `with_redis`.
fn redis_budget(with_redis: bool, extra: &str) -> String {
    format!(
        "version = 1\n{}[[budget]]\nname = \"r\"\nrequests_per_minute = 60\nstore = \"redis\"\n\
         {extra}",
        if with_redis { REDIS } else { "" }
    )
}

#[test]
fn redis_section_is_read_in_full() {
    let text = "version = 1\n[redis]\nurl = \"rediss://cache.internal:6380/2\"\n\
                key_prefix = \"tg-prod\"\nconnect_timeout = \"2s\"\nop_timeout = \"20ms\"\n\
                tls_ca_file = \"/etc/ssl/redis-ca.pem\"\non_failure = \"fail_open\"\n\
                expected_instances = 4\nconcurrency_lease = \"45s\"\n";
    let p = Policy::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.redis,
        Some(Redis {
            url: RedisUrl::Plain("rediss://cache.internal:6380/2".into()),
            key_prefix: "tg-prod".into(),
            connect_timeout: Duration::from_secs(2),
            op_timeout: Duration::from_millis(20),
            tls_ca_file: Some(PathBuf::from("/etc/ssl/redis-ca.pem")),
            on_failure: OnFailure::FailOpen,
            expected_instances: 4,
            concurrency_lease: Duration::from_secs(45),
        })
    );
    // Without the section there is no Redis, and nothing else changes.
    assert_eq!(
        Policy::from_toml("version = 1\n").expect("valid").redis,
        None
    );
}

#[test]
fn redis_defaults() {
    let p = Policy::from_toml(&format!("version = 1\n{REDIS}")).unwrap_or_else(|e| panic!("{e}"));
    let r = p.redis.expect("redis");
    // Redis::default() has this very url and on_failure; every other field is the default.
    assert_eq!(r, Redis::default());
    assert_eq!(r.key_prefix, "tollgate");
    assert_eq!(r.connect_timeout, Duration::from_secs(1));
    assert_eq!(r.op_timeout, Duration::from_millis(50));
    assert_eq!(r.concurrency_lease, Duration::from_secs(30));
    assert_eq!((r.expected_instances, r.tls_ca_file), (1, None));
    // A user name without a password, and a database number, are accepted.
    for url in [
        "redis://tollgate@redis.internal:6379/0",
        "redis://[::1]:6379",
        "redis://localhost",
        "redis://:@h:1",
    ] {
        let p = Policy::from_toml(&redis_with(url, "")).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(p.redis.expect("redis").url, RedisUrl::Plain(url.into()));
    }
}

#[test]
fn redis_url_from_a_secret() {
    let p = Policy::from_toml(&redis_with("env:REDIS_URL", "")).unwrap_or_else(|e| panic!("{e}"));
    let r = p.redis.expect("redis");
    assert_eq!(r.url, RedisUrl::Secret(SecretRef::Env("REDIS_URL".into())));
    assert_eq!(format!("{:?}", r.url), "env:REDIS_URL");
    let p = Policy::from_toml(&redis_with("file:/run/secrets/redis_url", ""))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.redis.expect("redis").url,
        RedisUrl::Secret(SecretRef::File("/run/secrets/redis_url".into()))
    );
    // A bad reference is refused by the secret reader, without repeating it.
    let e = only(&redis_with("env:9hunter2", ""));
    check(&e, "redis.url", 3, 7, "invalid variable name after env:");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn redis_url_needs_a_redis_scheme() {
    for (url, shown) in [
        ("http://127.0.0.1:6379", "got \"http://127.0.0.1:6379\""),
        ("127.0.0.1:6379", "got \"127.0.0.1:6379\""),
        ("REDIS_URL", "got \"REDIS_URL\""),
    ] {
        let e = only(&redis_with(url, ""));
        check(
            &e,
            "redis.url",
            3,
            7,
            "must start with redis:// (or rediss:// for TLS)",
        );
        assert!(e.message.contains("\"env:REDIS_URL\""), "{e}");
        assert!(e.message.contains(shown), "{e}");
    }
    let e = only(&redis_with("redis://", ""));
    check(&e, "redis.url", 3, 7, "has no host");
    let e = only(&redis_with("redis://h:99999", ""));
    check(&e, "redis.url", 3, 7, "invalid port \"99999\"");
    let e = only(&redis_with("redis://h:6379/cache", ""));
    check(&e, "redis.url", 3, 7, "database number");
    let e = only("version = 1\n[redis]\nurl = 6379\non_failure = \"fail_closed\"\n");
    check(
        &e,
        "redis.url",
        3,
        7,
        "must be a string such as \"env:REDIS_URL\"",
    );
    let e = only("version = 1\n[redis]\non_failure = \"fail_closed\"\n");
    check(
        &e,
        "redis.url",
        2,
        1,
        "is required; add url = \"env:REDIS_URL\"",
    );
}

#[test]
fn redis_password_is_refused_and_never_repeated() {
    for url in [
        "redis://default:hunter2SECRET@redis.internal:6379/0",
        "rediss://:hunter2SECRET@redis.internal",
        "redis://redis.internal:6379?password=hunter2SECRET",
    ] {
        let errors = refused(&redis_with(url, ""));
        assert_eq!(errors.len(), 1, "{url}: {errors:#?}");
        check(
            &errors[0],
            "redis.url",
            3,
            7,
            "must not contain a password: secrets never sit in the policy file",
        );
        assert!(
            errors[0].message.contains("url = \"env:REDIS_URL\""),
            "{}",
            errors[0]
        );
        let shown = format!(
            "{}\n{errors:?}",
            PolicyErrors {
                errors: errors.clone()
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    // With a wrong scheme as well, the text is not repeated.
    let e = only(&redis_with("tcp://u:hunter2SECRET@redis.internal", ""));
    check(&e, "redis.url", 3, 7, "must start with redis://");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    // Nor in JSON.
    let json = r#"{"version": 1, "redis": {"url": "redis://u:hunter2SECRET@h",
        "on_failure": "fail_open",
        "expected_instances": 2}}"#;
    let shown = Policy::from_json(json).unwrap_err().to_string();
    assert!(
        shown.contains("redis.url: must not contain a password"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn redis_on_failure_is_required() {
    let e = only("version = 1\n[redis]\nurl = \"env:REDIS_URL\"\n");
    check(
        &e,
        "redis.on_failure",
        2,
        1,
        "is required, there is no default: write on_failure = \"fail_closed\" to refuse",
    );
    assert!(
        e.message
            .contains("or on_failure = \"fail_open\" to let each process decide alone"),
        "{e}"
    );
    assert!(e.message.contains("divided by expected_instances"), "{e}");
    let e = only("version = 1\n[redis]\nurl = \"env:REDIS_URL\"\non_failure = \"fail_opened\"\n");
    check(
        &e,
        "redis.on_failure",
        4,
        14,
        "must be one of \"fail_open\", \"fail_closed\", got \"fail_opened\"; did you mean \
         \"fail_open\"?",
    );
}

#[test]
fn redis_fail_open_needs_expected_instances() {
    let text = "version = 1\n[redis]\nurl = \"env:REDIS_URL\"\non_failure = \"fail_open\"\n";
    let e = only(text);
    check(
        &e,
        "redis.expected_instances",
        4,
        14,
        "is required with on_failure = \"fail_open\"",
    );
    assert!(
        e.message
            .contains("every limit divided by expected_instances"),
        "{e}"
    );
    assert!(
        e.message
            .contains("without it every process would allow the full limit"),
        "{e}"
    );
    let p = Policy::from_toml(&format!("{text}expected_instances = 3\n")).expect("valid");
    let r = p.redis.expect("redis");
    assert_eq!(
        (r.on_failure, r.expected_instances),
        (OnFailure::FailOpen, 3)
    );
    // fail_closed does not need it, and may still say it.
    let p =
        Policy::from_toml(&redis_with("env:R", "expected_instances = 100000\n")).expect("valid");
    assert_eq!(p.redis.expect("redis").expected_instances, 100_000);
    for bad in ["0", "100001", "2.5", "\"3\""] {
        let e = only(&redis_with(
            "env:R",
            &format!("expected_instances = {bad}\n"),
        ));
        check(
            &e,
            "redis.expected_instances",
            5,
            22,
            "must be a whole number from 1 to 100000",
        );
    }
}

#[test]
fn redis_key_prefix() {
    let p = Policy::from_toml(&redis_with("env:R", "key_prefix = \"a:b-c\"\n")).expect("valid");
    assert_eq!(p.redis.expect("redis").key_prefix, "a:b-c");
    let e = only(&redis_with("env:R", "key_prefix = \"\"\n"));
    check(&e, "redis.key_prefix", 5, 14, "must not be empty");
    let e = only(&redis_with("env:R", "key_prefix = \"my app\"\n"));
    check(&e, "redis.key_prefix", 5, 14, "must not contain spaces");
    let long = "x".repeat(65);
    let e = only(&redis_with("env:R", &format!("key_prefix = \"{long}\"\n")));
    check(
        &e,
        "redis.key_prefix",
        5,
        14,
        "is 65 characters long; a key prefix is at most 64",
    );
    Policy::from_toml(&redis_with(
        "env:R",
        &format!("key_prefix = \"{}\"\n", &long[1..]),
    ))
    .expect("64 characters are allowed");
}

#[test]
fn redis_durations() {
    let e = only(&redis_with("env:R", "op_timeout = \"0s\"\n"));
    check(&e, "redis.op_timeout", 5, 14, "must be longer than zero");
    let e = only(&redis_with("env:R", "connect_timeout = 5\n"));
    check(&e, "redis.connect_timeout", 5, 19, "write \"5s\"");
    let e = only(&redis_with("env:R", "concurrency_lease = \"500ms\"\n"));
    check(
        &e,
        "redis.concurrency_lease",
        5,
        21,
        "must be at least 1s, got 500ms; live calls renew their slot at a third of it",
    );
    let e = only(&redis_with("env:R", "concurrency_lease = \"0s\"\n"));
    check(
        &e,
        "redis.concurrency_lease",
        5,
        21,
        "must be longer than zero",
    );
    let p = Policy::from_toml(&redis_with("env:R", "concurrency_lease = \"1s\"\n")).expect("valid");
    assert_eq!(
        p.redis.expect("redis").concurrency_lease,
        Duration::from_secs(1)
    );
}

#[test]
fn redis_tls_ca_file_needs_tls() {
    let e = only(&redis_with("redis://h:6379", "tls_ca_file = \"/ca.pem\"\n"));
    check(
        &e,
        "redis.tls_ca_file",
        5,
        15,
        "only applies to a TLS connection",
    );
    assert!(e.message.contains("rediss://"), "{e}");
    for url in ["rediss://h:6379", "env:REDIS_URL"] {
        let p = Policy::from_toml(&redis_with(url, "tls_ca_file = \"/ca.pem\"\n"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            p.redis.expect("redis").tls_ca_file,
            Some(PathBuf::from("/ca.pem"))
        );
    }
    let e = only(&redis_with("rediss://h", "tls_ca_file = \"\"\n"));
    check(&e, "redis.tls_ca_file", 5, 15, "must not be empty");
}

#[test]
fn redis_unknown_field() {
    let e = only(&redis_with("env:R", "op_timout = \"10ms\"\n"));
    check(&e, "redis.op_timout", 5, 1, "did you mean `op_timeout`?");
    let e = only("version = 1\nredis = \"redis://h\"\n");
    check(
        &e,
        "redis",
        2,
        9,
        "must be a table such as { url = \"env:REDIS_URL\"",
    );
}

#[test]
fn redis_budget_is_read() {
    let p = Policy::from_toml(&redis_budget(true, "")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.budgets[0].store, Store::Redis);
    assert_eq!(p.budgets[0].lease, None);
    let p = Policy::from_toml(&redis_budget(true, "lease = { size = 20, ttl = \"1s\" }\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.budgets[0].lease,
        Some(Lease {
            size: 20,
            ttl: Duration::from_secs(1)
        })
    );
    // Concurrency may be shared too; only a lease needs a rate limit.
    let p = Policy::from_toml(&format!(
        "version = 1\n{REDIS}[[budget]]\nname = \"c\"\nconcurrency = 4\nstore = \"redis\"\n"
    ))
    .expect("valid");
    assert_eq!(p.budgets[0].store, Store::Redis);
    // Local stays the default.
    let p = Policy::from_toml(&format!("{BUDGET}concurrency = 1\n")).expect("valid");
    assert_eq!(
        (p.budgets[0].store, p.budgets[0].lease),
        (Store::Local, None)
    );
}

#[test]
fn redis_budget_needs_a_redis_section() {
    let e = only(&redis_budget(false, ""));
    check(
        &e,
        "budget[0].store",
        5,
        9,
        "budget \"r\" keeps its state in Redis, but the policy has no [redis] section",
    );
    assert!(
        e.message
            .contains("[redis] with url = \"env:REDIS_URL\" and on_failure = \"fail_closed\""),
        "{e}"
    );
    assert!(e.message.contains("or write store = \"local\""), "{e}");
    // An invalid [redis] section is reported once, by its own reader.
    let errors = refused(
        "version = 1\n[redis]\nurl = \"env:R\"\n[[budget]]\nname = \"r\"\n\
         requests_per_minute = 60\nstore = \"redis\"\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["redis.on_failure"]);
    let e = only(&format!("{BUDGET}concurrency = 1\nstore = \"memcached\"\n"));
    check(
        &e,
        "budget[0].store",
        5,
        9,
        "must be one of \"local\", \"redis\", got \"memcached\"",
    );
}

#[test]
fn lease_only_applies_to_redis_budgets() {
    let e = only(&format!(
        "{BUDGET}requests_per_minute = 60\nlease = {{ size = 20, ttl = \"1s\" }}\n"
    ));
    check(
        &e,
        "budget[0].lease",
        5,
        9,
        "leases only apply to store = \"redis\"; budget \"b\" keeps its state in this process \
         (store defaults to \"local\")",
    );
    assert!(
        e.message.contains("Add store = \"redis\" or remove lease"),
        "{e}"
    );
    let e = only(&format!(
        "{BUDGET}requests_per_minute = 60\nstore = \"local\"\n\
         lease = {{ size = 20, ttl = \"1s\" }}\n"
    ));
    check(
        &e,
        "budget[0].lease",
        6,
        9,
        "leases only apply to store = \"redis\"",
    );
    assert!(!e.message.contains("defaults"), "{e}");
}

#[test]
fn lease_needs_a_rate_limit() {
    let e = only(&format!(
        "version = 1\n{REDIS}[[budget]]\nname = \"c\"\nconcurrency = 4\nstore = \"redis\"\n\
         lease = {{ size = 20, ttl = \"1s\" }}\n"
    ));
    check(
        &e,
        "budget[0].lease",
        9,
        9,
        "budget \"c\" has only concurrency, and a lease holds room of the rate limits",
    );
    assert!(e.message.contains("not concurrency slots"), "{e}");
}

#[test]
fn lease_values() {
    let lease = |l: &str| redis_budget(true, &format!("lease = {l}\n"));
    let e = only(&lease("{ size = 1, ttl = \"1s\" }"));
    check(
        &e,
        "budget[0].lease.size",
        9,
        18,
        "must be a whole number from 2 to 10000, got 1; a lease of one call is no lease",
    );
    let e = only(&lease("{ size = 10001, ttl = \"1s\" }"));
    check(
        &e,
        "budget[0].lease.size",
        9,
        18,
        "must be a whole number from 2 to 10000, got 10001",
    );
    let e = only(&lease("{ size = 20, ttl = \"2m\" }"));
    check(
        &e,
        "budget[0].lease.ttl",
        9,
        28,
        "must be at most 1m, got 2m; unspent room is kept from the other processes this long",
    );
    let e = only(&lease("{ size = 20, ttl = \"0s\" }"));
    check(&e, "budget[0].lease.ttl", 9, 28, "must be longer than zero");
    let errors = refused(&lease("{ sise = 20 }"));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "budget[0].lease.size",
            "budget[0].lease.ttl",
            "budget[0].lease.sise"
        ]
    );
    assert!(
        errors[0].message.starts_with("is required; add size = 20"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1]
            .message
            .starts_with("is required; add ttl = \"1s\""),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].message.contains("did you mean `size`?"),
        "{}",
        errors[2]
    );
    let e = only(&lease("20"));
    check(
        &e,
        "budget[0].lease",
        9,
        9,
        "must be a table such as { size = 20, ttl = \"1s\" }",
    );
    let p = Policy::from_toml(&lease("{ size = 10000, ttl = \"60s\" }")).expect("valid");
    assert_eq!(
        p.budgets[0].lease,
        Some(Lease {
            size: 10_000,
            ttl: Duration::from_secs(60)
        })
    );
}

#[test]
fn cache_l2_is_read() {
    let p = Policy::from_toml(&format!(
        "version = 1\n{REDIS}[cache]\nenabled = true\n\
         l2 = {{ store = \"redis\", max_bytes = \"1GB\" }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.cache.l2,
        Some(CacheL2 {
            max_bytes: 1_000_000_000
        })
    );
    assert_eq!(
        Policy::from_toml("version = 1\n").expect("valid").cache.l2,
        None
    );
    // Equal to max_entry_bytes is enough.
    let p = Policy::from_toml(&format!(
        "version = 1\n{REDIS}[cache]\nmax_entry_bytes = 4096\n\
         l2 = {{ store = \"redis\", max_bytes = 4096 }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.cache.l2.map(|l| l.max_bytes), Some(4096));
}

#[test]
fn cache_l2_errors() {
    let e = only("version = 1\n[cache]\nl2 = { store = \"redis\", max_bytes = \"1GB\" }\n");
    check(
        &e,
        "cache.l2",
        3,
        6,
        "the cache's second level lives in Redis, but the policy has no [redis] section",
    );
    assert!(e.message.contains("url = \"env:REDIS_URL\""), "{e}");
    let cache = |l2: &str| format!("version = 1\n{REDIS}[cache]\nl2 = {l2}\n");
    let e = only(&cache("{ store = \"local\", max_bytes = \"1GB\" }"));
    check(
        &e,
        "cache.l2.store",
        6,
        16,
        "must be \"redis\"; the cache itself is the local level",
    );
    let e = only(&cache("{ store = \"redis\", max_bytes = \"1MB\" }"));
    check(
        &e,
        "cache.l2.max_bytes",
        6,
        37,
        "the second level's max_bytes (1MB) is less than max_entry_bytes (8MiB, the default: \
         max_bytes / 8, at most 8MiB), so an entry the first level accepts could never be stored",
    );
    let e = only(&format!(
        "version = 1\n{REDIS}[cache]\nmax_entry_bytes = \"2MB\"\n\
         l2 = {{ store = \"redis\", max_bytes = \"1MB\" }}\n"
    ));
    check(
        &e,
        "cache.l2.max_bytes",
        7,
        37,
        "the second level's max_bytes (1MB) is less than max_entry_bytes (2MB), so",
    );
    let errors = refused(&cache("{ max_bytes = 0 }"));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["cache.l2.store", "cache.l2.max_bytes"]);
    assert!(
        errors[0]
            .message
            .contains("is required; add store = \"redis\"")
    );
    assert!(
        errors[1]
            .message
            .contains("must be a positive whole number")
    );
    let e = only(&cache("{ store = \"redis\", max_bytes = \"0MB\" }"));
    check(
        &e,
        "cache.l2.max_bytes",
        6,
        37,
        "must be more than zero; remove l2 to keep the cache in this process only",
    );
    let e = only(&cache("{ store = \"redis\" }"));
    check(
        &e,
        "cache.l2.max_bytes",
        6,
        6,
        "is required; add max_bytes = \"1GB\"",
    );
}

#[test]
fn every_redis_problem_at_once() {
    let text = "\
version = 1
[redis]
url = \"redis://default:hunter2SECRET@h:6379\"
key_prefix = \"\"
[[budget]]
name = \"b\"
requests_per_minute = 60
lease = { size = 20, ttl = \"1s\" }
[cache]
l2 = { store = \"redis\" }
";
    let errors = refused(text);
    let found: Vec<(&str, Option<u32>)> =
        errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("redis.on_failure", Some(2)),
            ("redis.url", Some(3)),
            ("redis.key_prefix", Some(4)),
            ("budget[0].lease", Some(8)),
            ("cache.l2.max_bytes", Some(10)),
        ]
    );
    let shown = PolicyErrors { errors }.to_string();
    assert!(shown.starts_with("the policy has 5 errors:\n"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn redis_in_json() {
    let json = r#"{
      "version": 1,
      "redis": {
        "url": "env:REDIS_URL",
        "key_prefix": "tg",
        "op_timeout": "25ms",
        "on_failure": "fail_open",
        "expected_instances": 3.0,
        "tls_ca_file": "/ca.pem"
      },
      "budget": [{ "name": "r", "requests_per_minute": 600, "store": "redis",
                   "lease": { "size": 10, "ttl": "500ms" } }],
      "cache": { "enabled": true, "l2": { "store": "redis", "max_bytes": "2GB" } }
    }"#;
    let p = Policy::from_json(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.redis,
        Some(Redis {
            url: RedisUrl::Secret(SecretRef::Env("REDIS_URL".into())),
            key_prefix: "tg".into(),
            op_timeout: Duration::from_millis(25),
            on_failure: OnFailure::FailOpen,
            expected_instances: 3,
            tls_ca_file: Some(PathBuf::from("/ca.pem")),
            ..Redis::default()
        })
    );
    assert_eq!(p.budgets[0].store, Store::Redis);
    assert_eq!(
        p.budgets[0].lease,
        Some(Lease {
            size: 10,
            ttl: Duration::from_millis(500)
        })
    );
    assert_eq!(
        p.cache.l2,
        Some(CacheL2 {
            max_bytes: 2_000_000_000
        })
    );
    // JSON errors come in schema order, the cross-section checks after every section.
    let json = r#"{
      "version": 1,
      "budget": [{ "name": "r", "requests_per_minute": 6, "store": "redis" }],
      "cache": { "l2": { "store": "redis", "max_bytes": "1GB" } }
    }"#;
    let errors = refused_json(json);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["budget[0].store", "cache.l2"]);
    assert!(errors.iter().all(|e| e.line.is_none()));
}

#[test]
fn summary_mentions_redis() {
    let text = "version = 1\n[redis]\nurl = \"rediss://redis.internal:6380\"\n\
         on_failure = \"fail_open\"\n\
         expected_instances = 4\ntls_ca_file = \"/ca.pem\"\n\
         [[budget]]\nname = \"r\"\nrequests_per_minute = 60\nstore = \"redis\"\n\
         lease = { size = 20, ttl = \"1s\" }\n\
         [[budget]]\nname = \"l\"\nconcurrency = 2\n\
         [cache]\nenabled = true\nl2 = { store = \"redis\", max_bytes = \"1GB\" }\n";
    let s = Policy::from_toml(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .summary();
    for needle in [
        "budget \"r\": every call, one shared state: 60 requests per minute (burst 60); denies at \
         once when exhausted; state shared in Redis, leased 20 calls at a time (unspent room \
         handed back after 1s)\n",
        "budget \"l\": every call, one shared state: at most 2 in flight; denies at once when \
         exhausted\n",
        "redis: rediss://redis.internal:6380, keys prefixed \"tollgate\"; connect timeout 1s, \
         operation timeout 50ms; concurrency slots live 30s without renewal; while Redis cannot \
         be reached, each of 4 processes decides alone with every limit divided by 4 (fail \
         open); TLS CA /ca.pem\n",
        "a local miss is looked up in a second level in Redis of at most 1GB",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
    let s = Policy::from_toml(&redis_with("env:REDIS_URL", ""))
        .expect("valid")
        .summary();
    assert!(
        s.contains("redis: the URL in env:REDIS_URL, keys prefixed \"tollgate\""),
        "{s}"
    );
    assert!(
        s.contains("calls of Redis budgets are refused (fail closed)"),
        "{s}"
    );
    let s = Policy::from_toml("version = 1\n").expect("valid").summary();
    assert!(!s.contains("redis"), "{s}");
}

#[test]
fn example_redis_lines_parse_when_uncommented() {
    // The commented Redis budget, [redis] section and cache l2 of the example are valid once
    // uncommented (the example keeps them commented: its users have no Redis server).
    let mut on = false;
    let mut text = String::new();
    for line in example().lines() {
        if line.starts_with("# A budget shared by every tollgate process") {
            on = true;
        } else if line.starts_with("# --- Routes") {
            on = false;
        }
        let uncomment = (on && !line.starts_with("# ---") && !line.starts_with("# A budget"))
            || line.starts_with("# l2 = ");
        match line.strip_prefix("# ") {
            Some(rest) if uncomment => text.push_str(rest),
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    let p = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let r = p.redis.expect("the example's [redis] section");
    assert_eq!(r.url, RedisUrl::Secret(SecretRef::Env("REDIS_URL".into())));
    assert_eq!(r.on_failure, OnFailure::FailClosed);
    assert_eq!(r.expected_instances, 4);
    let shared = p.budgets.last().expect("budgets");
    assert_eq!(shared.name, "shared-per-tenant");
    assert_eq!(shared.store, Store::Redis);
    assert_eq!(
        shared.lease,
        Some(Lease {
            size: 20,
            ttl: Duration::from_secs(1)
        })
    );
    assert_eq!(p.cache.l2.map(|l| l.max_bytes), Some(1_000_000_000));
    // As shipped, the example uses no Redis.
    let p = Policy::from_toml(&example()).expect("valid");
    assert_eq!(p.redis, None);
    assert!(
        p.budgets
            .iter()
            .all(|b| b.store == Store::Local && b.lease.is_none())
    );
    assert_eq!(p.cache.l2, None);
}

// ---------------------------------------------------------------------------------------------
// Serve: the [serve] section of `tollgate serve` and its [[serve.key]] virtual keys

/// The SHA-256 of the empty string (`printf %s '' | sha256sum`).
const HASH_EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Its 32 bytes, written out.
const HASH_EMPTY_BYTES: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];
/// The SHA-256 of `sk-tollgate-example-key`, the hash in the example policy.
const HASH_EXAMPLE: &str =
    "sha256:5a71bc20f76a9e71dc6f06dbb787f7e50c9913886f530c05d8e77c2568f18270";

/// `version = 1` and a `[serve]` section holding `lines` (the first of them is line 3).
fn serve_with(lines: &str) -> String {
    format!("version = 1\n[serve]\n{lines}")
}

/// The 32 bytes of a `sha256:<hex>` string, decoded here independently of the parser.
fn hash_bytes(hash: &str) -> [u8; 32] {
    let hex = hash.strip_prefix("sha256:").expect("sha256: prefix");
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn cidr(addr: &str, prefix: u8) -> Cidr {
    Cidr {
        addr: ip(addr),
        prefix,
    }
}

fn serve_of(text: &str) -> Serve {
    Policy::from_toml(text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .serve
        .expect("a [serve] section")
}

#[test]
fn serve_section_is_read_in_full() {
    // The second hash is written in upper case.
    let upper = format!(
        "sha256:{}",
        HASH_EXAMPLE
            .strip_prefix("sha256:")
            .expect("prefix")
            .to_uppercase()
    );
    let text = format!(
        "version = 1\n[serve]\nlisten = \"[::]:8443\"\nadmin_listen = \"127.0.0.1:9090\"\n\
         admin_token = \"file:/run/secrets/admin_token\"\n\
         allow = [\"10.0.0.0/8\", \"192.168.1.20\", \"fd00::/8\", \"::1\", \"2001:db8::/32\"]\n\
         max_body = \"1MiB\"\nmax_headers = 16384\nheader_timeout = \"5s\"\n\
         body_timeout = \"1m\"\nidle_timeout = \"2m\"\nwrite_timeout = \"15s\"\nmax_connections = 64\n\
         shutdown_grace = \"45s\"\naccess_log = true\n\
         [[serve.key]]\nhash = \"{HASH_EMPTY}\"\ntenant = \"acme\"\nname = \"acme-ci\"\n\
         [[serve.key]]\nhash = \"{upper}\"\ntenant = \"beta\"\n"
    );
    let s = serve_of(&text);
    assert_eq!(
        s,
        Serve {
            listen: SocketAddr::new(ip("::"), 8443),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token: Some(SecretRef::File("/run/secrets/admin_token".into())),
            allow: vec![
                cidr("10.0.0.0", 8),
                cidr("192.168.1.20", 32),
                cidr("fd00::", 8),
                cidr("::1", 128),
                cidr("2001:db8::", 32),
            ],
            keys: vec![
                VirtualKey {
                    sha256: HASH_EMPTY_BYTES,
                    tenant: "acme".into(),
                    name: "acme-ci".into(),
                },
                VirtualKey {
                    sha256: hash_bytes(HASH_EXAMPLE),
                    tenant: "beta".into(),
                    name: "beta".into(),
                },
            ],
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16_384,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(15),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(45),
            access_log: true,
        }
    );
    assert_eq!(hash_bytes(HASH_EMPTY), HASH_EMPTY_BYTES);

    // Cidr::contains on the networks read, an IPv4 client mapped into IPv6 counting as IPv4.
    let allowed = |client: &str| s.allow.iter().any(|c| c.contains(ip(client)));
    let ten = s.allow[0];
    assert!(ten.contains(ip("10.1.2.3")) && ten.contains(ip("10.255.255.255")));
    assert!(ten.contains(ip("::ffff:10.1.2.3")));
    assert!(!ten.contains(ip("11.0.0.1")) && !ten.contains(ip("::ffff:11.0.0.1")));
    assert!(!ten.contains(ip("fd00::a01:203")));
    let one = s.allow[1];
    assert!(one.contains(ip("192.168.1.20")) && one.contains(ip("::ffff:192.168.1.20")));
    assert!(!one.contains(ip("192.168.1.21")));
    let ula = s.allow[2];
    assert!(ula.contains(ip("fd12:3456::1")) && ula.contains(ip("fdff:ffff::")));
    assert!(!ula.contains(ip("fe80::1")) && !ula.contains(ip("10.1.2.3")));
    assert!(s.allow[3].contains(ip("::1")) && !s.allow[3].contains(ip("127.0.0.1")));
    assert!(s.allow[4].contains(ip("2001:db8:ffff::1")));
    assert!(!s.allow[4].contains(ip("2001:db9::1")));
    assert!(allowed("::ffff:10.9.9.9") && !allowed("172.16.0.1") && !allowed("::2"));
    assert_eq!(
        s.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "10.0.0.0/8",
            "192.168.1.20/32",
            "fd00::/8",
            "::1/128",
            "2001:db8::/32"
        ]
    );
}

#[test]
fn serve_cidr_forms() {
    let allow = |list: &str| serve_of(&serve_with(&format!("allow = [{list}]\n"))).allow;
    // A network of IPv4 addresses mapped into IPv6 is kept as the IPv4 network, which is how
    // Cidr::contains compares mapped clients; a whole-world network and a /0 of each family.
    assert_eq!(
        allow("\"::ffff:10.0.0.0/104\", \"::ffff:192.168.1.20\", \"0.0.0.0/0\", \"::/0\""),
        [
            cidr("10.0.0.0", 8),
            cidr("192.168.1.20", 32),
            cidr("0.0.0.0", 0),
            cidr("::", 0),
        ]
    );
    let mapped = allow("\"::ffff:10.0.0.0/104\"")[0];
    assert!(mapped.contains(ip("10.7.7.7")) && mapped.contains(ip("::ffff:10.7.7.7")));
    // ::/0 is every IPv6 client, and mapped IPv4 clients count as IPv4.
    let v6 = allow("\"::/0\"")[0];
    assert!(v6.contains(ip("2001:db8::1")) && !v6.contains(ip("::ffff:10.0.0.1")));
    let v4 = allow("\"0.0.0.0/0\"")[0];
    assert!(v4.contains(ip("8.8.8.8")) && v4.contains(ip("::ffff:8.8.8.8")));
    assert!(!v4.contains(ip("2001:db8::1")));
}

#[test]
fn serve_defaults() {
    assert_eq!(
        Policy::from_toml("version = 1\n").expect("valid").serve,
        None
    );
    let s = serve_of("version = 1\n[serve]\n");
    assert_eq!(s, Serve::default());
    assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!((s.admin_listen, s.admin_token.clone()), (None, None));
    assert_eq!(s.allow, [cidr("127.0.0.0", 8), cidr("::1", 128)]);
    assert!(s.keys.is_empty());
    assert_eq!(
        (s.max_body_bytes, s.max_header_bytes),
        (4 * 1024 * 1024, 64 * 1024)
    );
    assert_eq!(
        (s.header_timeout, s.body_timeout, s.shutdown_grace),
        (
            Duration::from_secs(10),
            Duration::from_secs(30),
            Duration::from_secs(30)
        )
    );
    assert_eq!(
        (s.idle_timeout, s.write_timeout, s.max_connections),
        (Duration::from_secs(60), Duration::from_secs(30), 1024)
    );
    assert!(!s.access_log);
    assert!(s.allow.iter().any(|c| c.contains(ip("127.0.0.53"))));
    assert!(s.allow.iter().any(|c| c.contains(ip("::ffff:127.0.0.1"))));
    assert!(!s.allow.iter().any(|c| c.contains(ip("10.0.0.1"))));

    // Virtual keys without an admin token are fine; the name defaults to the tenant, and
    // [[serve.key]] alone makes the section.
    let s = serve_of(&format!(
        "version = 1\n[[serve.key]]\nhash = \"{HASH_EMPTY}\"\ntenant = \"acme\"\n"
    ));
    assert_eq!(
        s,
        Serve {
            keys: vec![VirtualKey {
                sha256: HASH_EMPTY_BYTES,
                tenant: "acme".into(),
                name: "acme".into(),
            }],
            ..Serve::default()
        }
    );
    // An admin token without admin_listen: the admin endpoints are under /admin/ on listen.
    let s = serve_of(&serve_with("admin_token = \"env:TOLLGATE_ADMIN_TOKEN\"\n"));
    assert_eq!(
        s.admin_token,
        Some(SecretRef::Env("TOLLGATE_ADMIN_TOKEN".into()))
    );
    assert_eq!(s.admin_listen, None);
    // The bounds themselves are accepted.
    let s = serve_of(&serve_with(
        "max_body = \"1GiB\"\nmax_headers = \"1KiB\"\nheader_timeout = \"1ms\"\n",
    ));
    assert_eq!((s.max_body_bytes, s.max_header_bytes), (1 << 30, 1 << 10));
    assert_eq!(
        serve_of(&serve_with("max_headers = \"1MiB\"\n")).max_header_bytes,
        1 << 20
    );
}

#[test]
fn serve_listen_must_be_a_socket_address() {
    for (listen, fragment) in [
        (
            "\"localhost:8080\"",
            "host names are not looked up here; write the IP address to listen on, such as \
             \"127.0.0.1:8080\"",
        ),
        ("\"127.0.0.1\"", "it has no port; write \"127.0.0.1:8080\""),
        (
            "\"::1:8080\"",
            "an IPv6 address goes in brackets before the port: write \"[::1]:8080\"",
        ),
        (
            "\"fe80::1\"",
            "it has no port; an IPv6 address goes in brackets",
        ),
        (
            "\":8080\"",
            "write \"127.0.0.1:8080\" for this machine only, or \"0.0.0.0:8080\" for every \
             interface",
        ),
        (
            "\"127.0.0.1:70000\"",
            "the port must be a number from 0 to 65535",
        ),
        (
            "\"eight\"",
            "write an address and a port such as \"127.0.0.1:8080\"",
        ),
        (
            "8080",
            "must be an IP address and a port in a string, such as \"127.0.0.1:8080\"",
        ),
        (
            "true",
            "must be a string such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
        ),
    ] {
        let e = only(&serve_with(&format!("listen = {listen}\n")));
        check(&e, "serve.listen", 3, 10, fragment);
    }
    let e = only(&serve_with("listen = \"localhost:8080\"\n"));
    assert!(
        e.message
            .starts_with("\"localhost:8080\" is not an IP address and port; "),
        "{e}"
    );
    // The same reader checks admin_listen.
    let e = only(&serve_with(
        "admin_listen = \"admin.internal:9090\"\nadmin_token = \"env:T\"\n",
    ));
    check(
        &e,
        "serve.admin_listen",
        3,
        16,
        "host names are not looked up",
    );
}

#[test]
fn serve_admin_listen_must_differ_from_listen() {
    let e = only(&serve_with(
        "listen = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n\
         admin_token = \"env:T\"\n",
    ));
    check(
        &e,
        "serve.admin_listen",
        4,
        16,
        "is the same address as listen; the admin endpoints cannot have a listener of their own \
         there: remove admin_listen to serve the admin endpoints under /admin/ on listen, or give \
         them a port of their own such as \"127.0.0.1:8081\"",
    );
    // Against the default listen.
    let e = only(&serve_with(
        "admin_listen = \"127.0.0.1:8080\"\nadmin_token = \"env:T\"\n",
    ));
    check(
        &e,
        "serve.admin_listen",
        3,
        16,
        "is the same address as listen (the default, 127.0.0.1:8080);",
    );
    // The same port on an address that takes every interface of the family.
    let e = only(&serve_with(
        "listen = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n\
         admin_token = \"env:T\"\n",
    ));
    check(
        &e,
        "serve.admin_listen",
        4,
        16,
        "shares port 8080 with listen, and 0.0.0.0 takes that port on every IPv4 interface",
    );
    assert!(e.message.contains("under /admin/ on listen"), "{e}");
    let e = only(&serve_with(
        "listen = \"[::1]:8080\"\nadmin_listen = \"[::]:8080\"\nadmin_token = \"env:T\"\n",
    ));
    check(
        &e,
        "serve.admin_listen",
        4,
        16,
        "and :: takes that port on every IPv6 interface",
    );
    // Other ports, another family, or ports picked by the system are fine.
    for (listen, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:9090"),
        ("0.0.0.0:8080", "[::1]:8080"),
        ("127.0.0.1:8080", "10.0.0.5:8080"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        let s = serve_of(&serve_with(&format!(
            "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\nadmin_token = \"env:T\"\n"
        )));
        assert_eq!(s.listen, listen.parse::<SocketAddr>().expect("address"));
        assert_eq!(
            s.admin_listen,
            Some(admin.parse::<SocketAddr>().expect("address"))
        );
    }
}

#[test]
fn serve_admin_listen_needs_admin_token() {
    let e = only(&serve_with("admin_listen = \"127.0.0.1:9090\"\n"));
    check(
        &e,
        "serve.admin_token",
        3,
        16,
        "is required with admin_listen: without a token the admin endpoints are off, so the \
         admin listener could not be used; add admin_token = \"env:TOLLGATE_ADMIN_TOKEN\"",
    );
    assert!(e.message.ends_with("or remove admin_listen"), "{e}");
    // An invalid token is reported as such, not as a missing one.
    let e = only(&serve_with(
        "admin_listen = \"127.0.0.1:9090\"\nadmin_token = \"env:\"\n",
    ));
    check(
        &e,
        "serve.admin_token",
        4,
        15,
        "invalid variable name after env:",
    );
}

#[test]
fn serve_literal_admin_token_is_refused_and_never_repeated() {
    let errors = refused(&serve_with("admin_token = \"tg-admin-hunter2SECRET\"\n"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    check(
        &errors[0],
        "serve.admin_token",
        3,
        15,
        "must name where the token is, not hold it: write admin_token = \
         \"env:TOLLGATE_ADMIN_TOKEN\"",
    );
    assert!(
        errors[0]
            .message
            .contains("literal secrets are not accepted"),
        "{}",
        errors[0]
    );
    let shown = format!(
        "{}\n{errors:?}",
        PolicyErrors {
            errors: errors.clone()
        }
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    let e = only(&serve_with("admin_token = \"env:9hunter2\"\n"));
    check(
        &e,
        "serve.admin_token",
        3,
        15,
        "invalid variable name after env:",
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let e = only(&serve_with("admin_token = 1234\n"));
    check(
        &e,
        "serve.admin_token",
        3,
        15,
        "must be a string such as \"env:NAME\" or \"file:PATH\"",
    );
}

#[test]
fn serve_allow_errors() {
    let allow = |list: &str| serve_with(&format!("allow = {list}\n"));
    // Host bits set: the network address is suggested, and the one address.
    let e = only(&allow("[\"10.0.0.0/8\", \"10.0.0.1/8\"]"));
    check(
        &e,
        "serve.allow[1]",
        3,
        24,
        "\"10.0.0.1/8\" has host bits set: 10.0.0.1 is not the first address of a /8 network; \
         write \"10.0.0.0/8\" for the network, or \"10.0.0.1/32\" for this one address",
    );
    let e = only(&allow("[\"fd00::1/8\"]"));
    check(
        &e,
        "serve.allow[0]",
        3,
        10,
        "write \"fd00::/8\" for the network, or \"fd00::1/128\" for this one address",
    );
    // Prefix lengths.
    let e = only(&allow("[\"10.0.0.0/33\"]"));
    check(
        &e,
        "serve.allow[0]",
        3,
        10,
        "\"10.0.0.0/33\" has the prefix length \"33\"; an IPv4 prefix length is a whole number \
         from 0 to 32",
    );
    let e = only(&allow("[\"::1/129\"]"));
    check(
        &e,
        "serve.allow[0]",
        3,
        10,
        "an IPv6 prefix length is a whole number from 0 to 128",
    );
    let e = only(&allow("[\"10.0.0.0/\"]"));
    check(&e, "serve.allow[0]", 3, 10, "has the prefix length \"\"");
    let e = only(&allow("[\"10.0.0.0/255.0.0.0\"]"));
    check(
        &e,
        "serve.allow[0]",
        3,
        10,
        "has a netmask after the /, where the prefix length goes; write \"10.0.0.0/8\"",
    );
    // Not addresses.
    let e = only(&allow("[\"10.0.0.0/8\", \"ten.0.0.0/8\"]"));
    check(
        &e,
        "serve.allow[1]",
        3,
        24,
        "\"ten.0.0.0/8\" is not an IP network; write a network such as \"10.0.0.0/8\" or \
         \"fd00::/8\", or one address such as \"192.168.1.20\" or \"::1\"",
    );
    let e = only(&allow("[\"localhost\"]"));
    check(
        &e,
        "serve.allow[0]",
        3,
        10,
        "host names are not looked up here; for this machine write \"127.0.0.0/8\" and \
         \"::1/128\" (the default)",
    );
    let e = only(&allow("[\"[::1]/128\"]"));
    check(
        &e,
        "serve.allow[0]",
        3,
        10,
        "write the address without brackets: \"::1/128\"",
    );
    let e = only(&allow("[10]"));
    check(&e, "serve.allow[0]", 3, 10, "must be a string, got 10");
    // An empty list would let nobody in.
    let e = only(&allow("[]"));
    check(
        &e,
        "serve.allow",
        3,
        9,
        "must list at least one network: with an empty list nobody could connect",
    );
    assert!(
        e.message.contains(
            "remove the line for the default (this machine only: 127.0.0.0/8 and \
                       ::1/128)"
        ),
        "{e}"
    );
    // One network without a list, and other shapes.
    let e = only(&allow("\"10.0.0.0/8\""));
    check(
        &e,
        "serve.allow",
        3,
        9,
        "must be a list of networks; write allow = [\"10.0.0.0/8\"]",
    );
    let e = only(&allow("{ net = \"10.0.0.0/8\" }"));
    check(
        &e,
        "serve.allow",
        3,
        9,
        "must be an array such as [\"10.0.0.0/8\"",
    );
    // The same network twice, also once written as an IPv4-mapped IPv6 network.
    let e = only(&allow("[\"10.0.0.0/8\", \"::1\", \"::ffff:10.0.0.0/104\"]"));
    check(
        &e,
        "serve.allow[2]",
        3,
        31,
        "10.0.0.0/8 is listed twice (also at serve.allow[0]); remove one",
    );
    // Every bad item is reported.
    let errors = refused(&allow("[\"10.0.0.1/8\", \"x\", \"::1/200\"]"));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["serve.allow[0]", "serve.allow[1]", "serve.allow[2]"]
    );
}

#[test]
fn serve_limits_and_timeouts() {
    let e = only(&serve_with("max_body = \"2GiB\"\n"));
    check(
        &e,
        "serve.max_body",
        3,
        12,
        "must be at most 1GiB, got 2GiB; it bounds the memory one request may take (default \
         4MiB)",
    );
    let e = only(&serve_with("max_body = \"0MB\"\n"));
    check(
        &e,
        "serve.max_body",
        3,
        12,
        "must be more than zero; remove the line for the default (4MiB)",
    );
    let e = only(&serve_with("max_body = 0\n"));
    check(
        &e,
        "serve.max_body",
        3,
        12,
        "must be a positive whole number, got 0",
    );
    let e = only(&serve_with("max_body = \"4 megs\"\n"));
    check(
        &e,
        "serve.max_body",
        3,
        12,
        "\"4 megs\" has an unknown unit",
    );
    let e = only(&serve_with("max_headers = \"512B\"\n"));
    check(
        &e,
        "serve.max_headers",
        3,
        15,
        "must be from 1KiB to 1MiB, got 512 bytes; it is the size of a request's head, all \
         headers together (default 64KiB)",
    );
    let e = only(&serve_with("max_headers = \"2MiB\"\n"));
    check(
        &e,
        "serve.max_headers",
        3,
        15,
        "must be from 1KiB to 1MiB, got 2MiB",
    );
    let e = only(&serve_with("max_headers = \"0KiB\"\n"));
    check(
        &e,
        "serve.max_headers",
        3,
        15,
        "must be from 1KiB to 1MiB, got 0",
    );
    let e = only(&serve_with("header_timeout = \"0s\"\n"));
    check(
        &e,
        "serve.header_timeout",
        3,
        18,
        "must be longer than zero",
    );
    let e = only(&serve_with("body_timeout = 30\n"));
    check(&e, "serve.body_timeout", 3, 16, "write \"30s\"");
    let e = only(&serve_with("shutdown_grace = \"half a minute\"\n"));
    check(&e, "serve.shutdown_grace", 3, 18, "is not a duration");
    let e = only(&serve_with("shutdown_grace = \"-5s\"\n"));
    check(&e, "serve.shutdown_grace", 3, 18, "must not be negative");
    let e = only(&serve_with("idle_timeout = \"0s\"\n"));
    check(&e, "serve.idle_timeout", 3, 16, "must be longer than zero");
    let e = only(&serve_with("write_timeout = 5\n"));
    check(&e, "serve.write_timeout", 3, 17, "write \"5s\"");
    let e = only(&serve_with("access_log = \"stderr\"\n"));
    check(
        &e,
        "serve.access_log",
        3,
        14,
        "must be true or false, got \"stderr\"",
    );
    for bad in ["0", "2000000", "\"many\"", "1.5"] {
        let e = only(&serve_with(&format!("max_connections = {bad}\n")));
        check(
            &e,
            "serve.max_connections",
            3,
            19,
            &format!("must be a whole number from 1 to 1048576, got {bad}"),
        );
    }
    // Unknown fields, with a hint.
    let e = only(&serve_with("keys = []\n"));
    check(
        &e,
        "serve.keys",
        3,
        1,
        "unknown field `keys`; did you mean `key`?",
    );
    let e = only(&serve_with("max_body_bytes = 10\n"));
    check(
        &e,
        "serve.max_body_bytes",
        3,
        1,
        "unknown field `max_body_bytes`",
    );
    let e = only("version = 1\nserve = \"127.0.0.1:8080\"\n");
    check(
        &e,
        "serve",
        2,
        9,
        "must be a table such as { listen = \"127.0.0.1:8080\"",
    );
}

#[test]
fn serve_key_fields() {
    let key = |lines: &str| format!("version = 1\n[[serve.key]]\n{lines}");
    // Both required fields missing: reported at the table.
    let errors = refused(&key("name = \"x\"\n"));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["serve.key[0].hash", "serve.key[0].tenant"]);
    check(
        &errors[0],
        "serve.key[0].hash",
        2,
        1,
        "is required; add hash = \"sha256:<64 hex digits>\": get it with `tollgate serve \
         --hash-key <key>`, or with `printf %s \"$KEY\" | sha256sum`",
    );
    check(
        &errors[1],
        "serve.key[0].tenant",
        2,
        1,
        "is required; add tenant = \"acme\"",
    );
    let e = only(&key(&format!("hash = \"{HASH_EMPTY}\"\ntenant = \"\"\n")));
    check(
        &e,
        "serve.key[0].tenant",
        4,
        10,
        "must not be empty; write the tenant this key's calls are made for",
    );
    let e = only(&key(&format!(
        "hash = \"{HASH_EMPTY}\"\ntenant = \"a\"\nname = \" \"\n"
    )));
    check(&e, "serve.key[0].name", 5, 8, "must not be empty");
    let e = only(&key(&format!("hash = \"{HASH_EMPTY}\"\ntenant = 7\n")));
    check(&e, "serve.key[0].tenant", 4, 10, "must be a string, got 7");
    let e = only(&key(&format!(
        "hash = \"{HASH_EMPTY}\"\ntenant = \"a\"\ntennant = \"a\"\n"
    )));
    check(
        &e,
        "serve.key[0].tennant",
        5,
        1,
        "unknown field `tennant`; did you mean `tenant`?",
    );
    // Not a list of tables.
    let e = only(&serve_with("key = { hash = \"x\" }\n"));
    check(
        &e,
        "serve.key",
        3,
        7,
        "must be a list of tables, got a table; write [[serve.key]] with hash = \
         \"sha256:<64 hex digits>\" and tenant = \"acme\" (two brackets)",
    );
    let e = only(&serve_with(&format!("key = \"{HASH_EMPTY}\"\n")));
    check(
        &e,
        "serve.key",
        3,
        7,
        "must be a list of tables, each with a hash and a tenant, not a bare hash",
    );
}

#[test]
fn serve_key_hash_shape() {
    let hash = |h: &str| format!("version = 1\n[[serve.key]]\nhash = {h}\ntenant = \"a\"\n");
    let digits = HASH_EMPTY.strip_prefix("sha256:").expect("prefix");
    for (value, fragment) in [
        (
            format!("\"{digits}\""),
            "has no sha256: prefix; write hash = \"sha256:\" followed by these 64 hex digits",
        ),
        (
            format!("\"SHA256:{digits}\""),
            "must start with sha256: in lower case",
        ),
        (
            "\"sha256:abcd\"".to_owned(),
            "has 4 hex digits after sha256:, and a SHA-256 hash has 64: get it with `tollgate \
             serve --hash-key <key>`",
        ),
        (
            format!("\"sha256:{digits}00\""),
            "has 66 hex digits after sha256:, and a SHA-256 hash has 64",
        ),
        (
            format!("\"sha256:{}\"", digits.replacen('e', "g", 1)),
            "has a character that is not a hex digit after sha256:",
        ),
        (
            format!("\"sha256: {}\"", &digits[1..]),
            "has a space that is not a hex digit after sha256:",
        ),
        (
            format!("\"sha1:{}\"", &digits[..40]),
            "must be a SHA-256 hash, written \"sha256:<64 hex digits>\", and the value (not \
             repeated here) starts with another prefix",
        ),
        (
            "\"env:KEY_HASH\"".to_owned(),
            "must be the hash itself, written \"sha256:<64 hex digits>\", not a reference: a \
             hash is no secret",
        ),
        (
            "42".to_owned(),
            "must be a string such as \"sha256:<64 hex digits>\", got an integer",
        ),
    ] {
        let e = only(&hash(&value));
        check(&e, "serve.key[0].hash", 3, 8, fragment);
        // A wrong hash is never repeated (it may be the key itself).
        if value.len() > 20 {
            assert!(!e.message.contains(&value[8..20]), "{e}");
        }
    }
    let bytes = serve_of(&hash(&format!("\"sha256:{}\"", digits.to_uppercase()))).keys[0].sha256;
    assert_eq!(bytes, HASH_EMPTY_BYTES);
}

#[test]
fn serve_key_hash_used_twice() {
    let upper = HASH_EMPTY.to_uppercase().replacen("SHA256:", "sha256:", 1);
    let text = format!(
        "version = 1\n\
         [[serve.key]]\nhash = \"{HASH_EMPTY}\"\ntenant = \"acme\"\nname = \"acme-ci\"\n\
         [[serve.key]]\nhash = \"{HASH_EXAMPLE}\"\ntenant = \"beta\"\n\
         [[serve.key]]\nhash = \"{upper}\"\ntenant = \"gamma\"\n"
    );
    let e = only(&text);
    check(
        &e,
        "serve.key[2].hash",
        10,
        8,
        "serve.key[2] (tenant \"gamma\") has the same hash as serve.key[0] (name \"acme-ci\", \
         tenant \"acme\"); a key can belong to one entry only, since it decides the tenant. \
         Remove one of the two entries, or give one of them a new key and its hash",
    );
}

#[test]
fn serve_raw_key_is_refused_and_never_repeated() {
    let raw = "sk-live-RAWkey0123456789";
    let texts = [
        // The key pasted into its entry, under the names people use.
        format!("version = 1\n[[serve.key]]\nkey = \"{raw}\"\ntenant = \"acme\"\n"),
        format!("version = 1\n[[serve.key]]\nsecret = \"{raw}\"\ntenant = \"acme\"\n"),
        format!("version = 1\n[[serve.key]]\napi_key = \"{raw}\"\ntenant = \"acme\"\n"),
        format!("version = 1\n[[serve.key]]\ntoken = \"{raw}\"\ntenant = \"acme\"\n"),
    ];
    for (text, field) in texts.iter().zip(["key", "secret", "api_key", "token"]) {
        let errors = refused(text);
        // One error: the missing hash is not reported on top of it.
        assert_eq!(errors.len(), 1, "{errors:#?}");
        check(
            &errors[0],
            &format!("serve.key[0].{field}"),
            3,
            1,
            &format!(
                "`{field}` looks like a virtual key itself, which is not repeated here; the \
                 policy never holds virtual keys, only their SHA-256 hash"
            ),
        );
        assert!(
            errors[0]
                .message
                .contains("`tollgate serve --hash-key <key>`"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0]
                .message
                .contains("`printf %s \"$KEY\" | sha256sum`"),
            "{}",
            errors[0]
        );
        let shown = format!(
            "{}\n{errors:?}",
            PolicyErrors {
                errors: errors.clone()
            }
        );
        assert!(!shown.contains("RAWkey"), "{shown}");
    }
    // With a hash too, the key is still refused.
    let errors = refused(&format!(
        "version = 1\n[[serve.key]]\nhash = \"{HASH_EMPTY}\"\nkey = \"{raw}\"\n\
         tenant = \"acme\"\n"
    ));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["serve.key[0].key"]);
    // The key where the hash goes, where the table goes, or in place of the list.
    for (text, path, line, column) in [
        (
            format!("version = 1\n[[serve.key]]\nhash = \"{raw}\"\ntenant = \"acme\"\n"),
            "serve.key[0].hash",
            3,
            8,
        ),
        (
            format!("version = 1\n[serve]\nkey = [\"{raw}\"]\n"),
            "serve.key[0]",
            3,
            8,
        ),
        (
            format!("version = 1\n[serve]\nkey = \"{raw}\"\n"),
            "serve.key",
            3,
            7,
        ),
    ] {
        let e = only(&text);
        check(&e, path, line, column, "sha256");
        assert!(e.message.contains("--hash-key"), "{e}");
        assert!(!format!("{e}\n{e:?}").contains("RAWkey"), "{e}");
    }
    // Nor in JSON.
    let json =
        format!(r#"{{"version": 1, "serve": {{"key": [{{"key": "{raw}", "tenant": "acme"}}]}}}}"#);
    let shown = Policy::from_json(&json).unwrap_err().to_string();
    assert!(
        shown.contains("serve.key[0].key: `key` looks like a virtual key itself"),
        "{shown}"
    );
    assert!(!shown.contains("RAWkey"), "{shown}");
}

#[test]
fn every_serve_problem_at_once() {
    let text = "\
version = 1
[serve]
listen = \"localhost:8080\"
admin_listen = \"127.0.0.1:9090\"
allow = [\"10.0.0.1/8\", \"::1/200\"]
max_body = \"2GiB\"
header_timeout = \"0s\"
colour = \"red\"
[[serve.key]]
hash = \"sha256:abc\"
tenant = \"\"
[[serve.key]]
key = \"sk-live-RAWkey0123456789\"
tenant = \"b\"
";
    let errors = refused(text);
    let found: Vec<(&str, Option<u32>)> =
        errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("serve.listen", Some(3)),
            ("serve.admin_token", Some(4)),
            ("serve.allow[0]", Some(5)),
            ("serve.allow[1]", Some(5)),
            ("serve.max_body", Some(6)),
            ("serve.header_timeout", Some(7)),
            ("serve.colour", Some(8)),
            ("serve.key[0].hash", Some(10)),
            ("serve.key[0].tenant", Some(11)),
            ("serve.key[1].key", Some(13)),
        ]
    );
    let shown = PolicyErrors { errors }.to_string();
    assert!(shown.starts_with("the policy has 10 errors:\n"), "{shown}");
    assert!(!shown.contains("RAWkey"), "{shown}");
}

#[test]
fn serve_in_json() {
    let json = format!(
        r#"{{
      "version": 1,
      "serve": {{
        "listen": "[::1]:8080",
        "admin_token": "env:ADMIN_TOKEN",
        "allow": ["::1/128", "10.0.0.0/8", "fd00::/8"],
        "max_body": 1048576.0,
        "shutdown_grace": "5s",
        "key": [
          {{ "hash": "{HASH_EMPTY}", "tenant": "acme" }},
          {{ "hash": "{HASH_EXAMPLE}", "tenant": "beta", "name": "beta-batch" }}
        ]
      }}
    }}"#
    );
    let p = Policy::from_json(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.serve,
        Some(Serve {
            listen: SocketAddr::new(ip("::1"), 8080),
            admin_token: Some(SecretRef::Env("ADMIN_TOKEN".into())),
            allow: vec![cidr("::1", 128), cidr("10.0.0.0", 8), cidr("fd00::", 8)],
            max_body_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(5),
            keys: vec![
                VirtualKey {
                    sha256: HASH_EMPTY_BYTES,
                    tenant: "acme".into(),
                    name: "acme".into(),
                },
                VirtualKey {
                    sha256: hash_bytes(HASH_EXAMPLE),
                    tenant: "beta".into(),
                    name: "beta-batch".into(),
                },
            ],
            ..Serve::default()
        })
    );
    // The TOML form gives the same policy.
    let toml = format!(
        "version = 1\n[serve]\nlisten = \"[::1]:8080\"\nadmin_token = \"env:ADMIN_TOKEN\"\n\
         allow = [\"::1/128\", \"10.0.0.0/8\", \"fd00::/8\"]\nmax_body = \"1MiB\"\n\
         shutdown_grace = \"5s\"\n\
         [[serve.key]]\nhash = \"{HASH_EMPTY}\"\ntenant = \"acme\"\n\
         [[serve.key]]\nhash = \"{HASH_EXAMPLE}\"\ntenant = \"beta\"\nname = \"beta-batch\"\n"
    );
    assert_eq!(Policy::from_toml(&toml).expect("valid"), p);
    // Errors in schema order, without locations.
    let json = format!(
        r#"{{"version": 1, "serve": {{
          "admin_listen": "127.0.0.1:9090",
          "allow": ["10.0.0.0/8", "10.0.0.1/8"],
          "key": [{{ "hash": "{HASH_EMPTY}", "tenant": "a" }},
                  {{ "hash": "{HASH_EMPTY}", "tenant": "b" }}]
        }}}}"#
    );
    let errors = refused_json(&json);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["serve.allow[1]", "serve.key[1].hash", "serve.admin_token"]
    );
    assert!(errors.iter().all(|e| e.line.is_none()));
    assert!(
        errors[1].message.starts_with(
            "serve.key[1] (tenant \"b\") has the same hash as serve.key[0] (tenant \"a\")"
        ),
        "{}",
        errors[1]
    );
    let errors = refused_json(r#"{"version": 1, "serve": {"key": {"hash": "x", "tenant": "a"}}}"#);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "serve.key");
    assert!(
        errors[0]
            .message
            .contains("or \"key\": [{ \"hash\": ..., \"tenant\": ... }] inside \"serve\" in JSON"),
        "{}",
        errors[0]
    );
}

#[test]
fn summary_mentions_serve() {
    let text = format!(
        "version = 1\n[serve]\nadmin_token = \"env:ADMIN_TOKEN\"\n\
         allow = [\"10.0.0.0/8\", \"::1\"]\n\
         [[serve.key]]\nhash = \"{HASH_EMPTY}\"\ntenant = \"acme\"\nname = \"acme-ci\"\n\
         [[serve.key]]\nhash = \"{HASH_EXAMPLE}\"\ntenant = \"beta\"\n\
         [[serve.key]]\nhash = \"sha256:{}\"\ntenant = \"acme\"\n",
        "ab".repeat(32)
    );
    let s = Policy::from_toml(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .summary();
    let line = "serve: listens on 127.0.0.1:8080; admin endpoints under /admin/ on the same \
                listener, bearer token in env:ADMIN_TOKEN; clients from 10.0.0.0/8, ::1/128; 3 \
                virtual keys for tenants \"acme\" (2 keys), \"beta\"; request bodies up to 4MiB, \
                heads up to 64KiB; a client has 10s to send the head and 30s to send the body \
                and 30s to take each part of the answer; idle connections close after 1m, at \
                most 1024 open; on shutdown, calls in flight get 30s to finish\n";
    assert!(s.contains(line), "summary lacks {line:?}:\n{s}");
    // Never a hash, not even a piece of one.
    for hash in [HASH_EMPTY, HASH_EXAMPLE] {
        let digits = hash.strip_prefix("sha256:").expect("prefix");
        assert!(!s.contains(&digits[..8]), "{s}");
    }
    assert!(!s.contains("abababab") && !s.contains("sha256"), "{s}");

    let s = Policy::from_toml(&serve_with(
        &"listen = \"[::]:8443\"\nadmin_listen = \"127.0.0.1:9090\"\n\
         admin_token = \"file:/run/secrets/admin\"\nmax_body = \"1MiB\"\n\
         max_headers = \"16KiB\"\nheader_timeout = \"5s\"\nbody_timeout = \"1m\"\n\
         idle_timeout = \"90s\"\nmax_connections = 10\nshutdown_grace = \"45s\"\n\
         access_log = true\n\
         [[serve.key]]\nhash = \"sha256:{}\"\ntenant = \"solo\"\n"
            .replace("{}", &"cd".repeat(32)),
    ))
    .unwrap_or_else(|e| panic!("{e}"))
    .summary();
    let line = "serve: listens on [::]:8443; admin endpoints on 127.0.0.1:9090, bearer token in \
                file:/run/secrets/admin; clients from 127.0.0.0/8, ::1/128; 1 virtual key for \
                tenant \"solo\"; request bodies up to 1MiB, heads up to 16KiB; a client has 5s to \
                send the head and 1m to send the body and 30s to take each part of the answer; \
                idle connections close after 1m30s, at most 10 open; on shutdown, calls in \
                flight get 45s to finish; access log on standard error\n";
    assert!(s.contains(line), "summary lacks {line:?}:\n{s}");
    let s = Policy::from_toml(&serve_with("")).expect("valid").summary();
    assert!(
        s.contains(
            "serve: listens on 127.0.0.1:8080; admin endpoints off (no admin_token); clients \
             from 127.0.0.0/8, ::1/128; no virtual keys;"
        ),
        "{s}"
    );
    let s = Policy::from_toml("version = 1\n").expect("valid").summary();
    assert!(!s.contains("serve:"), "{s}");
}

#[test]
fn example_serve_lines_parse_when_uncommented() {
    // The commented [serve] section and [[serve.key]] at the end of the example are valid once
    // uncommented (the example keeps them commented: only `tollgate serve` reads them).
    let mut on = false;
    let mut text = String::new();
    for line in example().lines() {
        if line.starts_with("# --- Sidecar proxy") {
            on = true;
        }
        match line.strip_prefix("# ") {
            Some(rest) if on && !line.starts_with("# ---") => text.push_str(rest),
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    let p = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let s = p.serve.expect("the example's [serve] section");
    assert_eq!(
        s,
        Serve {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token: Some(SecretRef::Env("TOLLGATE_ADMIN_TOKEN".into())),
            allow: vec![cidr("127.0.0.0", 8), cidr("::1", 128), cidr("10.0.0.0", 8)],
            keys: vec![VirtualKey {
                sha256: hash_bytes(HASH_EXAMPLE),
                tenant: "acme".into(),
                name: "acme-ci".into(),
            }],
            access_log: true,
            ..Serve::default()
        }
    );
    // The values written are the defaults, but for the lines that change something.
    let d = Serve::default();
    assert_eq!(
        (
            s.max_body_bytes,
            s.max_header_bytes,
            s.header_timeout,
            s.body_timeout,
            s.shutdown_grace
        ),
        (
            d.max_body_bytes,
            d.max_header_bytes,
            d.header_timeout,
            d.body_timeout,
            d.shutdown_grace
        )
    );
    // As shipped, the example has no [serve] section.
    assert_eq!(Policy::from_toml(&example()).expect("valid").serve, None);
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Policy::from_bytes(&bytes, None);
        let _ = Policy::from_bytes(&bytes, Some(Format::Toml));
        let _ = Policy::from_bytes(&bytes, Some(Format::Json));
    }

    #[test]
    fn parse_never_panics_on_policy_like_text(
        lines in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "version", "name", "scope", "burst", "tokens_per_minute", "ttl", "auth",
                    "targets", "[[budget]]", "[[upstream]]", "[[route]]", "[cache]", "[retry]",
                    "max_bytes", "retry_on", "base_url", "when_exhausted", "match",
                    "fallback", "window", "probe", "max_entry_bytes", "key_quarantine",
                    "[breaker]", "[redis]", "url", "on_failure", "expected_instances",
                    "store", "lease", "l2", "key_prefix", "tls_ca_file",
                    "[serve]", "[[serve.key]]", "listen", "admin_listen", "admin_token",
                    "allow", "hash", "tenant", "key", "max_body", "max_headers",
                ]),
                prop::sample::select(vec![
                    "1", "0", "-1", "nan", "inf", "1.5", "\"5m\"", "\"1m30s\"", "\"x\"", "[]",
                    "[\"tenant\"]", "{ limit = 1, burst = 0 }", "{}", "true", "\"256MB\"",
                    "\"env:X\"", "[429, \"5xx\"]", "{ kind = \"jwt\" }", "\"http://h:1\"",
                    "\"m\"", "{ prompt = \"\" }", "\"1B\"", "\"redis\"", "\"fail_open\"",
                    "\"redis://u:p@h\"", "{ size = 2, ttl = \"1s\" }",
                    "{ store = \"redis\", max_bytes = 1 }",
                    "\"127.0.0.1:8080\"", "\"[::1]:0\"", "[\"10.0.0.1/8\", \"::1\"]",
                    "\"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"",
                    "\"sk-x\"", "\"1KiB\"",
                ]),
            ),
            0..24,
        )
    ) {
        let mut text = String::from("version = 1\n");
        for (k, v) in lines {
            if k.starts_with('[') {
                text.push_str(k);
            } else {
                text.push_str(&format!("{k} = {v}"));
            }
            text.push('\n');
        }
        if let Err(e) = Policy::from_toml(&text) {
            prop_assert!(!e.errors.is_empty());
            for err in &e.errors {
                prop_assert!(!err.message.is_empty());
            }
        }
    }
}
