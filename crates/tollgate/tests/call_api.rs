//! The call API (`Engine::send`, `Engine::stream`) against the testkit upstream: budgets that
//! hold by arrival counts, Retry-After honoured by timestamps, failover, cache and
//! single-flight, cancellation, deadlines, TLS + HTTP/2, streams (usage, counting, cuts,
//! resume) and bad input.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate::{CallError, ChatRequest, Engine, Source};
use tollgate_testkit::{Action, Match, TestUpstream};

mod common;
use common::{collect, content, rt};

fn engine(text: &str) -> Engine {
    Engine::from_text(text).expect("valid policy")
}

fn one_upstream(up: &TestUpstream, rest: &str) -> Engine {
    engine(&format!(
        "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n{rest}",
        up.base_url()
    ))
}

fn chat(model: &str, text: &str) -> ChatRequest {
    ChatRequest::new(json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
    }))
}

#[test]
fn send_returns_the_answer_with_usage_and_charge() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(&up, "");
    let r = rt()
        .block_on(e.send(chat("gpt-4o", "hello there").tenant("acme")))
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.source, Source::Upstream);
    assert_eq!(r.attempts, 1);
    let usage = r.usage.expect("usage");
    assert_eq!(usage.completion_tokens, 8);
    let s = r.settlement.expect("settled");
    assert_eq!(s.tokens, usage.total_tokens);
    assert!(r.text().unwrap().split(' ').count() == 8);
    assert_eq!(up.request_count(), 1);
    let arrival = &up.log()[0];
    assert_eq!(arrival.path, "/v1/chat/completions");
    let body: Value = serde_json::from_slice(&arrival.body).unwrap();
    assert!(body.get("stream").is_none());
}

#[test]
fn routes_rewrite_the_model_and_fail_over_on_503() {
    let primary = TestUpstream::start().unwrap();
    let backup = TestUpstream::start().unwrap();
    primary.script(Match::any(), [Action::Status503, Action::Status503]);
    let e = engine(&format!(
        r#"version = 1
[[upstream]]
name = "primary"
base_url = "{}"
[[upstream]]
name = "backup"
base_url = "{}"
[[route]]
model = "smart"
targets = [{{ upstream = "primary", model = "big-1" }}, {{ upstream = "backup", model = "big-2" }}]
[retry]
backoff = {{ base = "10ms", max = "20ms" }}
"#,
        primary.base_url(),
        backup.base_url()
    ));
    let r = rt().block_on(e.send(chat("smart", "hi"))).unwrap();
    let target = r.target.expect("routed");
    assert_eq!(&*target.upstream, "backup");
    assert_eq!(&*target.model, "big-2");
    assert_eq!(r.attempts, 2);
    assert_eq!(r.history[0].outcome, "status_503");
    assert_eq!(primary.request_count(), 1);
    assert_eq!(primary.log()[0].model.as_deref(), Some("big-1"));
    assert_eq!(backup.log()[0].model.as_deref(), Some("big-2"));
}

#[test]
fn retries_wait_for_retry_after() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::Status429 { retry_after: 1 }]);
    let e = one_upstream(
        &up,
        "[retry]\nbackoff = { base = \"10ms\", max = \"20ms\" }\n",
    );
    let r = rt().block_on(e.send(chat("gpt-4o", "hi"))).unwrap();
    assert_eq!(r.attempts, 2);
    let log = up.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].status, Some(429));
    let gap = log[1].at.duration_since(log[0].at);
    assert!(
        gap >= Duration::from_millis(990),
        "retried after {gap:?}, before Retry-After: 1"
    );
}

#[test]
fn a_non_retryable_error_gives_up_with_the_upstream_body() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::Status {
            code: 400,
            should_retry: None,
        }],
    );
    let e = one_upstream(&up, "");
    let err = rt().block_on(e.send(chat("gpt-4o", "hi"))).unwrap_err();
    match &err {
        CallError::GaveUp { status, body, .. } => {
            assert_eq!(*status, Some(400));
            assert!(body.as_ref().is_some_and(|b| !b.is_empty()));
        }
        other => panic!("expected gave_up, got {other:?}"),
    }
    assert_eq!(err.code(), "gave_up");
    assert_eq!(up.request_count(), 1);
}

/// GCRA admits at most `burst + rate × t` in any window of length `t`; the arrival log must show
/// the same (with slack for the time between admission and arrival).
#[test]
fn budgets_hold_by_arrival_counts() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(
        &up,
        r#"[[budget]]
name = "rps"
requests_per_second = 10
burst = 3
when_exhausted = { wait_up_to = "10s" }
"#,
    );
    let rt = rt();
    let results: Vec<_> = rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let e = e.clone();
                tokio::spawn(async move { e.send(chat("gpt-4o", &format!("call {i}"))).await })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(
        results.iter().all(Result::is_ok),
        "every call waits its turn"
    );
    let log = up.log();
    assert_eq!(log.len(), 20);
    for i in 0..log.len() {
        for j in i..log.len() {
            let t = log[j].at.duration_since(log[i].at).as_secs_f64();
            // 100 ms of admission-to-arrival jitter allowed, as in `tollgate demo`.
            let allowed = 3.0 + 10.0 * (t + 0.1) + 1.0;
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} arrivals within {t:.3}s, the budget allows {allowed:.1}",
                j - i + 1
            );
        }
    }
    let stats = e.stats();
    assert!(stats[0].waited > 0);
}

#[test]
fn a_denied_call_names_its_budget_and_never_arrives() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(
        &up,
        "[[budget]]\nname = \"tiny\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n",
    );
    let rt = rt();
    rt.block_on(e.send(chat("gpt-4o", "a").tenant("t1")))
        .unwrap();
    let err = rt
        .block_on(e.send(chat("gpt-4o", "b").tenant("t1")))
        .unwrap_err();
    assert_eq!(err.code(), "denied");
    assert_eq!(err.budget(), Some("tiny"));
    rt.block_on(e.send(chat("gpt-4o", "c").tenant("t2")))
        .unwrap();
    assert_eq!(up.request_count(), 2);
}

#[test]
fn cancelling_a_call_frees_its_concurrency_slot() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_secs(30))],
    );
    let e = one_upstream(
        &up,
        "[[budget]]\nname = \"one-at-a-time\"\nconcurrency = 1\n",
    );
    let rt = rt();
    let slow = {
        let e = e.clone();
        rt.spawn(async move { e.send(chat("gpt-4o", "slow")).await })
    };
    assert!(up.wait_for_requests(1, Duration::from_secs(10)));
    let busy = rt.block_on(e.send(chat("gpt-4o", "second"))).unwrap_err();
    assert_eq!(busy.code(), "denied");
    slow.abort();
    let _ = rt.block_on(slow);
    let r = rt.block_on(e.send(chat("gpt-4o", "third"))).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn the_deadline_ends_a_slow_call_and_frees_its_slot() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_secs(30))],
    );
    let e = one_upstream(&up, "[[budget]]\nname = \"one\"\nconcurrency = 1\n");
    let rt = rt();
    let err = rt
        .block_on(e.send(chat("gpt-4o", "slow").deadline(Duration::from_millis(200))))
        .unwrap_err();
    assert!(matches!(err, CallError::Deadline { .. }), "{err:?}");
    rt.block_on(e.send(chat("gpt-4o", "next"))).unwrap();
}

#[test]
fn identical_calls_share_one_upstream_request_and_the_cache() {
    let up = TestUpstream::builder()
        .latency(Duration::from_millis(100))
        .start()
        .unwrap();
    let e = one_upstream(&up, "[cache]\nenabled = true\n");
    let req = || {
        ChatRequest::new(json!({
            "model": "gpt-4o", "temperature": 0,
            "messages": [{"role": "user", "content": "same question"}], "max_tokens": 5,
        }))
    };
    let rt = rt();
    let answers = rt.block_on(async {
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let e = e.clone();
                let r = req();
                tokio::spawn(async move { e.send(r).await })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    assert_eq!(up.request_count(), 1);
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.source == Source::Upstream)
            .count(),
        1
    );
    let again = rt.block_on(e.send(req())).unwrap();
    assert_eq!(again.source, Source::Cache);
    // A streamed request for the same key replays the cached answer as events.
    let (events, err) = rt.block_on(async { collect(e.stream(req()).await.unwrap()).await });
    assert!(err.is_none());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(content(&events), again.text().unwrap());
    assert_eq!(up.request_count(), 1);
    assert!(
        e.metrics_text()
            .contains("tollgate_call_answers_total{source=\"cache\"} 2")
    );
}

#[test]
fn tls_and_http2_by_alpn() {
    let up = TestUpstream::builder().start_tls().unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-call-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, up.ca().unwrap().cert_pem()).unwrap();
    let e = one_upstream(&up, &format!("ca_file = \"{}\"\n", ca.display()));
    let rt = rt();
    rt.block_on(e.send(chat("gpt-4o", "over tls"))).unwrap();
    let (events, err) = rt.block_on(async {
        collect(e.stream(chat("gpt-4o", "streamed over tls")).await.unwrap()).await
    });
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let log = up.log();
    assert!(log.iter().all(|a| a.version == http::Version::HTTP_2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn streams_take_usage_from_the_final_chunk() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(&up, "");
    let rt = rt();
    rt.block_on(async {
        let mut s = e.stream(chat("gpt-4o", "stream me")).await.unwrap();
        let mut n = 0;
        while let Some(ev) = s.next().await {
            ev.unwrap();
            n += 1;
        }
        assert!(n >= 3, "role, content, usage and [DONE] events");
        let u = s.usage().unwrap();
        assert_eq!(u.completion_tokens, 8);
        assert_eq!(s.settlement().unwrap().tokens, u.total_tokens);
    });
    let body: Value = serde_json::from_slice(&up.log()[0].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[test]
fn streams_without_a_usage_chunk_count_the_text() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(&up, "stream_usage = false\n");
    let rt = rt();
    rt.block_on(async {
        let mut s = e.stream(chat("gpt-4o", "count me")).await.unwrap();
        let mut text = vec![];
        while let Some(ev) = s.next().await {
            text.push(ev.unwrap().data);
        }
        let u = s.usage().unwrap();
        let counted = tollgate::tokens::count_text(
            tollgate::tokens::ModelTable::bundled(),
            "gpt-4o",
            &content(&text),
        );
        assert_eq!(u.completion_tokens, counted.tokens);
        assert!(u.prompt_tokens > 0);
    });
    let body: Value = serde_json::from_slice(&up.log()[0].body).unwrap();
    assert!(body.get("stream_options").is_none());
}

#[test]
fn a_stream_cut_before_any_event_is_retried() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::CutStreamAfter(0)]);
    let e = one_upstream(
        &up,
        "[retry]\nbackoff = { base = \"10ms\", max = \"20ms\" }\nretry_on = [\"cut_stream\", \"5xx\"]\n",
    );
    let (events, err) =
        rt().block_on(async { collect(e.stream(chat("gpt-4o", "x")).await.unwrap()).await });
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(up.request_count(), 2);
}

#[test]
fn a_stream_cut_after_content_is_an_error_and_never_retried() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::CutStreamAfter(3)]);
    let e = one_upstream(&up, "[retry]\nretry_on = [\"cut_stream\", \"5xx\"]\n");
    let (events, err) =
        rt().block_on(async { collect(e.stream(chat("gpt-4o", "x")).await.unwrap()).await });
    assert_eq!(events.len(), 3);
    let err = err.expect("a cut stream is an error");
    assert_eq!(err.code(), "stream_cut");
    assert_eq!(up.request_count(), 1);
}

#[test]
fn a_cut_stream_resumes_with_last_event_id_when_the_policy_says_so() {
    let up = TestUpstream::builder().event_ids(true).start().unwrap();
    up.script(Match::any(), [Action::CutStreamAfter(4)]);
    let e = one_upstream(&up, "resume_streams = true\n");
    let reference = {
        let plain = TestUpstream::builder().event_ids(true).start().unwrap();
        let e2 = one_upstream(&plain, "");
        rt().block_on(async { collect(e2.stream(chat("gpt-4o", "x")).await.unwrap()).await })
            .0
    };
    let (events, err) =
        rt().block_on(async { collect(e.stream(chat("gpt-4o", "x")).await.unwrap()).await });
    assert!(err.is_none(), "{err:?}");
    assert_eq!(content(&events), content(&reference));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let log = up.log();
    assert_eq!(log.len(), 2);
    assert!(log[1].headers.get("last-event-id").is_some());
}

#[test]
fn bad_requests_get_clear_errors_and_send_nothing() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(&up, "");
    let rt = rt();
    let no_model = rt
        .block_on(e.send(ChatRequest::new(json!({"messages": []}))))
        .unwrap_err();
    assert_eq!(no_model.code(), "invalid_request");
    assert!(no_model.to_string().contains("model"));
    let not_object = rt
        .block_on(e.send(ChatRequest::new(json!([1, 2]))))
        .unwrap_err();
    assert_eq!(not_object.code(), "invalid_request");
    let route = rt
        .block_on(e.send(chat("gpt-4o", "x").route("nope")))
        .unwrap_err();
    assert_eq!(route.code(), "no_upstream");
    let bare = engine("version = 1");
    let none = rt.block_on(bare.send(chat("gpt-4o", "x"))).unwrap_err();
    assert_eq!(none.code(), "no_upstream");
    assert_eq!(up.request_count(), 0);
}

#[test]
fn malformed_json_answers_are_retried_when_the_policy_says_so() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::MalformedJson]);
    let e = one_upstream(
        &up,
        "[retry]\nbackoff = { base = \"10ms\", max = \"20ms\" }\nretry_on = [\"malformed\"]\n",
    );
    let r = rt().block_on(e.send(chat("gpt-4o", "x"))).unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(r.history[0].outcome, "malformed");
}

#[test]
fn bearer_keys_rotate_and_never_show_in_errors_or_metrics() {
    let up = TestUpstream::start().unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_CALL_KEY_A", "sk-secret-aaaa");
        std::env::set_var("TOLLGATE_CALL_KEY_B", "sk-secret-bbbb");
    }
    up.script(Match::any(), [Action::Status500]);
    let e = engine(&format!(
        r#"version = 1
[[upstream]]
name = "test"
base_url = "{}"
auth = {{ kind = "bearer", keys = ["env:TOLLGATE_CALL_KEY_A", "env:TOLLGATE_CALL_KEY_B"] }}
[[route]]
model = "gpt-4o"
targets = [{{ upstream = "test", model = "gpt-4o" }}]
[retry]
max_attempts = 1
"#,
        up.base_url()
    ));
    let rt = rt();
    let err = rt.block_on(e.send(chat("gpt-4o", "a"))).unwrap_err();
    rt.block_on(e.send(chat("gpt-4o", "b"))).unwrap();
    let keys: Vec<String> = up
        .log()
        .iter()
        .map(|a| a.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "the pool rotates");
    assert!(keys.iter().all(|k| k.starts_with("Bearer sk-secret-")));
    for text in [
        format!("{err}"),
        format!("{err:?}"),
        e.metrics_text(),
        format!("{e:?}"),
    ] {
        assert!(!text.contains("sk-secret"), "a secret leaked: {text}");
    }
}

#[test]
fn jwt_credentials_are_refreshed_before_they_expire() {
    use tollgate_testkit::TestAuth;
    let up = TestUpstream::builder()
        .auth(TestAuth::Jwt {
            id: "kid-1".into(),
            secret: "jwt-signing-secret".into(),
        })
        .start()
        .unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_CALL_JWT_ID", "kid-1");
        std::env::set_var("TOLLGATE_CALL_JWT_SECRET", "jwt-signing-secret");
    }
    let e = one_upstream(
        &up,
        "auth = { kind = \"jwt\", id = \"env:TOLLGATE_CALL_JWT_ID\", secret = \"env:TOLLGATE_CALL_JWT_SECRET\", ttl = \"2s\", refresh_before = \"1s\" }\n",
    );
    let rt = rt();
    rt.block_on(e.send(chat("glm-4", "first"))).unwrap();
    rt.block_on(e.send(chat("glm-4", "same token"))).unwrap();
    // Past ttl - refresh_before: the next call carries a new token, which the upstream accepts
    // (it checks the signature and the expiry).
    std::thread::sleep(Duration::from_millis(1100));
    rt.block_on(e.send(chat("glm-4", "new token"))).unwrap();
    let auth: Vec<String> = up
        .log()
        .iter()
        .map(|a| a.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(auth.len(), 3);
    assert_eq!(auth[0], auth[1]);
    assert_ne!(auth[1], auth[2]);
    assert!(up.log().iter().all(|a| a.status == Some(200)));
}

#[test]
fn oauth2_tokens_are_fetched_once_and_renewed_after_a_401() {
    use tollgate_testkit::TestAuth;
    let up = TestUpstream::builder()
        .auth(TestAuth::OAuth2 {
            client_id: "client-1".into(),
            client_secret: "oauth-client-secret".into(),
            expires_in: Duration::from_secs(3600),
        })
        .start()
        .unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_CALL_OAUTH_ID", "client-1");
        std::env::set_var("TOLLGATE_CALL_OAUTH_SECRET", "oauth-client-secret");
    }
    let e = one_upstream(
        &up,
        &format!(
            "auth = {{ kind = \"oauth2\", token_url = \"{}\", client_id = \"env:TOLLGATE_CALL_OAUTH_ID\", client_secret = \"env:TOLLGATE_CALL_OAUTH_SECRET\", placement = \"query\" }}\n",
            up.token_url()
        ),
    );
    let rt = rt();
    // Ten concurrent first calls share one token fetch.
    rt.block_on(async {
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let e = e.clone();
                tokio::spawn(async move { e.send(chat("ernie", &format!("call {i}"))).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    assert_eq!(up.tokens_issued(), 1);
    up.revoke_tokens();
    let r = rt.block_on(e.send(chat("ernie", "after revoke"))).unwrap();
    assert_eq!(r.attempts, 1, "the 401 replay is part of the same attempt");
    assert_eq!(up.tokens_issued(), 2);
    let chats: Vec<_> = up
        .log()
        .into_iter()
        .filter(|a| a.path == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 12);
    assert_eq!(chats[10].status, Some(401));
    assert_eq!(chats[11].status, Some(200));
    assert!(
        chats[11]
            .query
            .as_deref()
            .unwrap_or("")
            .contains("access_token=")
    );
    let text = format!("{e:?}{}", e.metrics_text());
    assert!(!text.contains("oauth-client-secret"));
}

#[test]
fn warm_up_opens_connections_before_the_first_call() {
    let up = TestUpstream::start().unwrap();
    let e = one_upstream(&up, "warm_up = 3\n");
    let rt = rt();
    let (opened, failed) = rt.block_on(e.warm_up());
    assert_eq!((opened, failed.len()), (3, 0));
    rt.block_on(e.send(chat("gpt-4o", "warm"))).unwrap();
    let bare = engine("version = 1");
    let (none, _) = rt.block_on(bare.warm_up());
    assert_eq!(none, 0);
}

/// `max_idle`: calls in flight at once reuse their connections when the pool has room for them
/// all (the default, 256); with `max_idle = 2` the connections beyond two are closed after their
/// call and the next wave opens new ones; with 0 every call opens one.
#[test]
fn max_idle_bounds_the_connections_kept_for_the_next_calls() {
    const AT_ONCE: usize = 8;
    const WAVES: usize = 3;
    let rt = rt();
    let opened = |rest: &str| {
        // Each answer takes 30 ms, so the calls of a wave are in flight at once.
        let up = TestUpstream::builder()
            .latency(Duration::from_millis(30))
            .start()
            .unwrap();
        let e = one_upstream(&up, rest);
        rt.block_on(async {
            for _ in 0..WAVES {
                let calls: Vec<_> = (0..AT_ONCE)
                    .map(|i| {
                        let e = e.clone();
                        tokio::spawn(async move { e.send(chat("gpt-4o", &format!("{i}"))).await })
                    })
                    .collect();
                for c in calls {
                    c.await.unwrap().unwrap();
                }
            }
        });
        assert_eq!(up.request_count(), AT_ONCE * WAVES);
        up.connections() as usize
    };
    let kept = opened("");
    assert!(
        kept <= AT_ONCE,
        "the default pool keeps them all: {kept} opened"
    );
    let two = opened("max_idle = 2\n");
    assert!(
        two > AT_ONCE && two <= AT_ONCE + (WAVES - 1) * (AT_ONCE - 2),
        "two kept: {two} opened"
    );
    assert_eq!(opened("max_idle = 0\n"), AT_ONCE * WAVES);
}

/// Issue 16 item 2 through the call API: a call whose only target's circuit is open waits for it
/// (within retry.max_retry_after) and is then sent; with the open time beyond max_retry_after
/// it is refused as unavailable at once.
#[test]
fn send_waits_for_an_open_circuit_within_max_retry_after() {
    let up = TestUpstream::start().unwrap();
    let policy = |open_for: &str, cap: &str| {
        format!(
            "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n\
             [[route]]\nmodel = \"gpt-4o\"\ntargets = [{{ upstream = \"test\", model = \"gpt-4o\" }}]\n\
             [retry]\nmax_attempts = 1\nmax_retry_after = \"{cap}\"\n\
             [breaker]\nwindow = 2\nmin_calls = 2\nfailure_rate = 0.5\nopen_for = \"{open_for}\"\n\
             half_open_calls = 1\n",
            up.base_url()
        )
    };
    rt().block_on(async {
        for (open_for, cap, waits) in [("150ms", "60s", true), ("30s", "10s", false)] {
            let e = engine(&policy(open_for, cap));
            up.script(Match::any(), [Action::Status503, Action::Status503]);
            for _ in 0..2 {
                let r = e.send(chat("gpt-4o", "fail")).await;
                assert!(matches!(r, Err(CallError::GaveUp { .. })), "{r:?}");
            }
            let before = up.request_count();
            let r = e.send(chat("gpt-4o", "after the circuit opened")).await;
            if waits {
                let r = r.expect("sent once the circuit half-opened");
                assert_eq!(r.status, 200);
                assert!(r.queued > Duration::ZERO, "it waited");
                assert_eq!(up.request_count(), before + 1);
            } else {
                match r {
                    Err(CallError::Denied(d)) => assert_eq!(d.code(), "unavailable"),
                    other => panic!("{other:?}"),
                }
                assert_eq!(up.request_count(), before, "nothing sent");
            }
        }
    });
}
