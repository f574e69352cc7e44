// Integration tests of the policy file: every bad input is refused with its path, its location
// (TOML) and a message that says what to do; good files give the expected `Policy`.
//
// No inner attributes or doc comments here: the file is also `include!`d by a scratch crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use tollgate::policy::{
    Auth, BreakerWindow, Cache, CacheL2, DEFAULT_KEY_QUARANTINE, Exhausted, Format, Lease,
    LimitKind, OnFailure, Policy, PolicyError, PolicyErrors, Probe, Redis, RedisUrl, ScopeDim,
    SecretRef, Store, Strategy,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml")
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
// Good input

#[test]
fn example_policy_parses() {
    let p = Policy::from_file(&example_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.version, 1);
    let names: Vec<&str> = p.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["openai", "deepseek", "zhipu"]);
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
        "falls back to route \"cheap\", then route \"glm-*\"",
        "synthetic probe",
        "left out for 10m",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
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
                ]),
                prop::sample::select(vec![
                    "1", "0", "-1", "nan", "inf", "1.5", "\"5m\"", "\"1m30s\"", "\"x\"", "[]",
                    "[\"tenant\"]", "{ limit = 1, burst = 0 }", "{}", "true", "\"256MB\"",
                    "\"env:X\"", "[429, \"5xx\"]", "{ kind = \"jwt\" }", "\"http://h:1\"",
                    "\"m\"", "{ prompt = \"\" }", "\"1B\"", "\"redis\"", "\"fail_open\"",
                    "\"redis://u:p@h\"", "{ size = 2, ttl = \"1s\" }",
                    "{ store = \"redis\", max_bytes = 1 }",
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
