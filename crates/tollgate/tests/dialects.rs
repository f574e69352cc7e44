//! Upstream dialects through the call API against the testkit upstream: Baidu ERNIE v1
//! (`dialect = "baidu_v1"`: request and answer mapping, streams ending with `is_end`, access
//! tokens renewed on 110 / 111, every class of `error_code`), and the error bodies of
//! OpenAI-compatible providers (OpenAI `insufficient_quota`, Zhipu codes, SiliconFlow bodies),
//! and JSON answers to stream requests.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate::{CallError, ChatRequest, Engine};
use tollgate_testkit::{Action, Canned, Match, TestAuth, TestUpstream};

mod common;
use common::{collect, content, rt};

const FAST_RETRY: &str = "[retry]\nmax_attempts = 3\nbackoff = { base = \"1ms\", max = \"5ms\", jitter = \"none\" }\n\
     budget = { ratio = 1, max_tokens = 100 }\n";

fn engine(text: &str) -> Engine {
    Engine::from_text(text).unwrap_or_else(|e| panic!("invalid policy:\n{e}"))
}

/// One ERNIE v1 upstream (no credentials) with `rest` appended to the policy.
fn baidu(up: &TestUpstream, rest: &str) -> Engine {
    engine(&format!(
        "version = 1\n[[upstream]]\nname = \"ernie\"\ndialect = \"baidu_v1\"\nbase_url = \"{}\"\n{rest}",
        up.baidu_base_url()
    ))
}

fn openai(up: &TestUpstream, rest: &str) -> Engine {
    engine(&format!(
        "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n{rest}",
        up.base_url()
    ))
}

fn chat(model: &str, text: &str) -> ChatRequest {
    ChatRequest::new(json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 6,
    }))
}

fn gave_up(e: &CallError) -> (&'static str, Option<u16>, Value) {
    match e {
        CallError::GaveUp {
            reason,
            status,
            body,
        } => (
            reason.code,
            *status,
            body.as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        ),
        other => panic!("expected a give-up, got {other}"),
    }
}

// ------------------------------------------------------------------------------- ERNIE v1

#[test]
fn ernie_requests_and_answers_are_translated_both_ways() {
    let up = TestUpstream::start().unwrap();
    let e = baidu(&up, "");
    let request = ChatRequest::new(json!({
        "model": "ernie-4.0-8k",
        "messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "how are you?"},
        ],
        "max_tokens": 5, "user": "acme-7", "frequency_penalty": 0.4, "temperature": 0,
        "presence_penalty": 1, "stop": "END",
    }));
    let r = rt().block_on(e.send(request)).unwrap();
    assert_eq!(r.status, 200);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "ernie-4.0-8k");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 5, "{text}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let usage = r.usage.expect("the ERNIE usage is read");
    assert_eq!(usage.completion_tokens, 5);
    assert_eq!(body["usage"]["total_tokens"], json!(usage.total_tokens));
    assert!(
        r.headers.get("content-length").is_none(),
        "the body changed"
    );
    // What went on the wire: ERNIE's fields, to the model's endpoint.
    let log = up.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].model.as_deref(), Some("completions_pro"));
    assert!(
        log[0]
            .path
            .ends_with("/wenxinworkshop/chat/completions_pro")
    );
    let sent = log[0].json().unwrap();
    assert_eq!(sent["system"], "answer briefly");
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3);
    assert_eq!(sent["max_output_tokens"], 5);
    assert_eq!(sent["user_id"], "acme-7");
    assert_eq!(sent["penalty_score"], 1.4);
    assert_eq!(sent["temperature"], 0.01);
    assert_eq!(sent["stop"], json!(["END"]));
    assert!(sent.get("model").is_none() && sent.get("presence_penalty").is_none());
}

#[test]
fn ernie_streams_become_chunks_with_usage_and_done() {
    let up = TestUpstream::start().unwrap();
    let e = baidu(&up, "");
    let rt = rt();
    let mut request = chat("ernie-speed-8k", "stream please");
    request.body["max_tokens"] = json!(7);
    let s = rt.block_on(e.stream(request)).unwrap();
    let (events, err) = rt.block_on(collect(s));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(content(&events).split_whitespace().count(), 7);
    let chunks: Vec<Value> = events
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    assert_eq!(up.log()[0].model.as_deref(), Some("ernie_speed"));
    assert_eq!(up.log()[0].json().unwrap()["stream"], true);
}

#[test]
fn an_ernie_stream_without_is_end_is_cut_and_an_error_event_ends_it() {
    let up = TestUpstream::start().unwrap();
    let e = baidu(&up, FAST_RETRY);
    let rt = rt();
    up.script(Match::any(), [Action::BaiduStreamWithoutEnd(2)]);
    let (events, err) = rt.block_on(collect(
        rt.block_on(e.stream(chat("ernie-3.5-8k", "a"))).unwrap(),
    ));
    assert!(!events.is_empty());
    let err = err.expect("a cut stream is an error");
    assert_eq!(err.code(), "stream_cut");
    assert!(err.to_string().contains("is_end"), "{err}");
    // An error event after content: the stream ends with that error, not retried.
    up.script(
        Match::any(),
        [Action::BaiduStreamErrorAfter {
            events: 1,
            code: 336_100,
            message: "try again later".into(),
        }],
    );
    let (_, err) = rt.block_on(collect(
        rt.block_on(e.stream(chat("ernie-3.5-8k", "b"))).unwrap(),
    ));
    let err = err.expect("an error event is an error");
    assert!(err.to_string().contains("336100"), "{err}");
    // An error event before any content: retried like any failure before the first event.
    up.clear_log();
    up.script(
        Match::any(),
        [Action::BaiduStreamErrorAfter {
            events: 0,
            code: 336_100,
            message: "try again later".into(),
        }],
    );
    let s = rt.block_on(e.stream(chat("ernie-3.5-8k", "c"))).unwrap();
    let (events, err) = rt.block_on(collect(s));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(up.request_count(), 2);
}

#[test]
fn expired_ernie_access_tokens_are_renewed_and_the_call_replayed_once() {
    let up = TestUpstream::builder()
        .auth(TestAuth::OAuth2 {
            client_id: "ak-1".into(),
            client_secret: "sk-ernie-secret".into(),
            expires_in: Duration::from_secs(3600),
        })
        .start()
        .unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_DIALECT_AK", "ak-1");
        std::env::set_var("TOLLGATE_DIALECT_SK", "sk-ernie-secret");
    }
    let e = baidu(
        &up,
        &format!(
            "auth = {{ kind = \"oauth2\", token_url = \"{}\", client_id = \"env:TOLLGATE_DIALECT_AK\", client_secret = \"env:TOLLGATE_DIALECT_SK\", placement = \"query\" }}\n",
            up.token_url()
        ),
    );
    let rt = rt();
    rt.block_on(e.send(chat("ernie-4.0-8k", "first"))).unwrap();
    assert_eq!(up.tokens_issued(), 1);
    // ERNIE answers an expired token with HTTP 200 and error_code 111.
    up.revoke_tokens();
    let r = rt
        .block_on(e.send(chat("ernie-4.0-8k", "after revoke")))
        .unwrap();
    assert_eq!(r.attempts, 1, "the replay is part of the attempt");
    assert_eq!(up.tokens_issued(), 2);
    // The same for a stream.
    up.revoke_tokens();
    let s = rt
        .block_on(e.stream(chat("ernie-4.0-8k", "stream")))
        .unwrap();
    let (events, err) = rt.block_on(collect(s));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(up.tokens_issued(), 3);
    let chats: Vec<_> = up
        .log()
        .into_iter()
        .filter(|a| a.path.contains("wenxinworkshop"))
        .collect();
    assert_eq!(chats.len(), 5, "two replays, no more");
}

#[test]
fn ernie_rate_limits_and_transient_errors_are_retried() {
    let up = TestUpstream::start().unwrap();
    let e = baidu(&up, FAST_RETRY);
    let rt = rt();
    for (code, message) in [
        (18, "Open api qps request limit reached"),
        (4, "Open api request limit reached"),
        (336_501, "Rate limit reached for RPM"),
        (336_502, "Rate limit reached for TPM"),
        (2, "Service temporarily unavailable"),
        (336_100, "try again later"),
        (336_000, "internal error"),
    ] {
        up.clear_log();
        up.script(
            Match::any(),
            [Action::BaiduError {
                code,
                message: message.into(),
            }],
        );
        let r = rt
            .block_on(e.send(chat("ernie-3.5-8k", "x")))
            .unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!((r.status, r.attempts), (200, 2), "{code}");
        assert_eq!(up.request_count(), 2, "{code}");
        let first = &r.history[0];
        assert!(
            first.outcome.starts_with("status_4") || first.outcome.starts_with("status_5"),
            "{code}: {first}"
        );
    }
    // The same errors given in X-Bce-Error-Code headers.
    up.clear_log();
    up.script(
        Match::any(),
        [Action::BaiduErrorHeader {
            status: 429,
            code: 18,
            message: "qps".into(),
        }],
    );
    let r = rt.block_on(e.send(chat("ernie-3.5-8k", "h"))).unwrap();
    assert_eq!(r.attempts, 2);
    // And in the JSON answer to a stream request.
    up.clear_log();
    up.script(
        Match::any(),
        [Action::BaiduError {
            code: 18,
            message: "qps".into(),
        }],
    );
    let s = rt.block_on(e.stream(chat("ernie-3.5-8k", "s"))).unwrap();
    assert_eq!(s.attempts(), 2);
    let (events, err) = rt.block_on(collect(s));
    assert!(err.is_none() && events.last().is_some_and(|d| d == "[DONE]"));
}

#[test]
fn ernie_errors_that_cannot_succeed_are_not_retried() {
    let up = TestUpstream::start().unwrap();
    let e = baidu(&up, FAST_RETRY);
    let rt = rt();
    for (code, want, status) in [
        (17, "quota_exhausted", 429),
        (19, "quota_exhausted", 429),
        (336_003, "not_retryable", 400),
        (336_101, "not_retryable", 400),
        (6, "not_retryable", 403),
        (987_654, "not_retryable", 500),
    ] {
        up.clear_log();
        up.script(
            Match::any(),
            [Action::BaiduError {
                code,
                message: format!("message of {code}"),
            }],
        );
        let err = rt.block_on(e.send(chat("ernie-3.5-8k", "x"))).unwrap_err();
        let (got, got_status, body) = gave_up(&err);
        assert_eq!((got, got_status), (want, Some(status)), "{code}: {err}");
        assert_eq!(up.request_count(), 1, "{code}: sent once");
        // The caller sees an OpenAI error body with ERNIE's code and message.
        assert_eq!(body["error"]["code"], code.to_string());
        assert_eq!(body["error"]["message"], format!("message of {code}"));
        assert!(
            err.to_string().contains(&format!("message of {code}")),
            "{err}"
        );
    }
    up.clear_script();
}

#[test]
fn malformed_ernie_answers_and_unknown_models_are_clear_errors() {
    let up = TestUpstream::start().unwrap();
    let e = baidu(&up, FAST_RETRY);
    let rt = rt();
    up.script(
        Match::any(),
        [Action::Respond(Canned::json(
            200,
            &json!({"id": "as-1", "object": "chat.completion"}),
        ))],
    );
    let err = rt.block_on(e.send(chat("ernie-3.5-8k", "x"))).unwrap_err();
    assert!(err.to_string().contains("neither a completion"), "{err}");
    assert_eq!(
        up.request_count(),
        1,
        "malformed answers are not retried by default"
    );
    // A model with no endpoint: refused before anything is sent, naming the fix.
    up.clear_log();
    let err = rt.block_on(e.send(chat("gpt-4o", "x"))).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(
        err.to_string()
            .contains("'gpt-4o' has no ERNIE v1 endpoint"),
        "{err}"
    );
    assert_eq!(up.request_count(), 0);
    // The policy's endpoints extend the table.
    let e = baidu(&up, "endpoints = { \"My-Tuned\" = \"abc123\" }\n");
    rt.block_on(e.send(chat("my-tuned", "x"))).unwrap();
    assert_eq!(up.log()[0].model.as_deref(), Some("abc123"));
    // A message ERNIE cannot take is refused before sending.
    let request = ChatRequest::new(json!({"model": "ernie-3.5-8k",
        "messages": [{"role": "tool", "content": "x"}]}));
    let err = rt.block_on(e.send(request)).unwrap_err();
    assert!(err.to_string().contains("role 'tool'"), "{err}");
}

#[test]
fn a_json_answer_to_a_stream_request_is_delivered_as_events() {
    for ernie in [false, true] {
        let up = TestUpstream::start().unwrap();
        let e = if ernie {
            baidu(&up, "")
        } else {
            openai(&up, "")
        };
        let rt = rt();
        up.script(Match::any(), [Action::JsonForStream]);
        let s = rt.block_on(e.stream(chat("ernie-3.5-8k", "x"))).unwrap();
        let (events, err) = rt.block_on(collect(s));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(content(&events).split_whitespace().count(), 6, "{events:?}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
}

// ------------------------------------------------------------ OpenAI-compatible error bodies

#[test]
fn openai_insufficient_quota_is_not_retried_and_moves_a_key_pool() {
    let up = TestUpstream::start().unwrap();
    let quota = || {
        Action::Respond(Canned::openai_error(
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota, please check your plan and billing details.",
        ))
    };
    let rt = rt();
    // One key: the upstream's error comes back at once.
    let e = openai(&up, FAST_RETRY);
    up.script(Match::any(), [quota()]);
    let err = rt.block_on(e.send(chat("gpt-4o", "x"))).unwrap_err();
    let (code, status, body) = gave_up(&err);
    assert_eq!((code, status), ("quota_exhausted", Some(429)));
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(up.request_count(), 1);
    assert!(
        err.to_string().contains("exceeded your current quota"),
        "{err}"
    );
    // A pool: the next key at once, and the empty key is held for the next calls.
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_DIALECT_KEY_A", "sk-a");
        std::env::set_var("TOLLGATE_DIALECT_KEY_B", "sk-b");
    }
    let e = openai(
        &up,
        &format!(
            "auth = {{ kind = \"bearer\", keys = [\"env:TOLLGATE_DIALECT_KEY_A\", \"env:TOLLGATE_DIALECT_KEY_B\"] }}\n\
             [[route]]\nmodel = \"gpt-4o\"\ntargets = [{{ upstream = \"test\", model = \"gpt-4o\" }}]\n{FAST_RETRY}"
        ),
    );
    up.clear_log();
    up.script(
        Match::header("authorization", "Bearer sk-a"),
        [quota(), quota(), quota()],
    );
    let r = rt.block_on(e.send(chat("gpt-4o", "pool"))).unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(r.history[0].outcome, "status_429");
    for _ in 0..4 {
        rt.block_on(e.send(chat("gpt-4o", "again"))).unwrap();
    }
    let keys: Vec<String> = up
        .log()
        .iter()
        .map(|a| a.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys.iter().filter(|k| *k == "Bearer sk-a").count(),
        1,
        "{keys:?}"
    );
    assert_eq!(keys.len(), 6);
}

#[test]
fn zhipu_codes_decide_the_retry() {
    let up = TestUpstream::start().unwrap();
    let e = openai(&up, FAST_RETRY);
    let rt = rt();
    for (code, retried) in [
        ("1302", true),
        ("1303", true),
        ("1305", true),
        ("1113", false),
        ("1304", false),
    ] {
        up.clear_log();
        up.script(
            Match::any(),
            [Action::Respond(Canned::zhipu_error(
                429,
                code,
                "zhipu says no",
            ))],
        );
        let result = rt.block_on(e.send(chat("glm-4", "x")));
        if retried {
            assert_eq!(result.unwrap().attempts, 2, "{code}");
        } else {
            let err = result.unwrap_err();
            assert_eq!(gave_up(&err).0, "quota_exhausted", "{code}");
            assert_eq!(up.request_count(), 1, "{code}");
        }
    }
    up.clear_script();
}

#[test]
fn an_expired_zhipu_jwt_is_minted_again_and_replayed_once() {
    let up = TestUpstream::start().unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_DIALECT_JWT_ID", "kid-9");
        std::env::set_var("TOLLGATE_DIALECT_JWT_SECRET", "zhipu-signing-secret");
    }
    let e = openai(
        &up,
        "auth = { kind = \"jwt\", id = \"env:TOLLGATE_DIALECT_JWT_ID\", secret = \"env:TOLLGATE_DIALECT_JWT_SECRET\" }\n",
    );
    let rt = rt();
    rt.block_on(e.send(chat("glm-4", "first"))).unwrap();
    up.script(
        Match::any(),
        [Action::Respond(Canned::zhipu_error(
            401,
            "1003",
            "token expired",
        ))],
    );
    // A millisecond later, so the new token differs from the old one.
    std::thread::sleep(Duration::from_millis(5));
    let r = rt.block_on(e.send(chat("glm-4", "second"))).unwrap();
    assert_eq!(r.attempts, 1);
    let auth: Vec<String> = up
        .log()
        .iter()
        .map(|a| a.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(auth.len(), 3);
    assert_eq!(auth[0], auth[1], "the cached token was used");
    assert_ne!(auth[1], auth[2], "then a new one was minted");
}

#[test]
fn siliconflow_and_openai_error_messages_are_surfaced() {
    let up = TestUpstream::start().unwrap();
    let e = openai(&up, FAST_RETRY);
    let rt = rt();
    up.script(
        Match::any(),
        [Action::Respond(Canned::siliconflow_error(
            400,
            20015,
            "length of prompt_tokens must be less than max_seq_len",
        ))],
    );
    let err = rt
        .block_on(e.send(chat("Qwen/Qwen2.5-7B-Instruct", "x")))
        .unwrap_err();
    let (code, status, _) = gave_up(&err);
    assert_eq!((code, status), ("not_retryable", Some(400)));
    let text = err.to_string();
    assert!(
        text.contains("20015") && text.contains("max_seq_len"),
        "{text}"
    );
    // An error body answering a stream request is that error.
    up.script(
        Match::any(),
        [Action::Respond(Canned::openai_error(
            400,
            "invalid_request_error",
            None,
            "bad stop",
        ))],
    );
    let err = rt.block_on(e.stream(chat("gpt-4o", "s"))).unwrap_err();
    assert!(err.to_string().contains("bad stop"), "{err}");
    // A 503 with an OpenAI body is still retried by status.
    up.script(
        Match::any(),
        [Action::Respond(Canned::openai_error(
            503,
            "server_error",
            None,
            "overloaded",
        ))],
    );
    assert_eq!(
        rt.block_on(e.send(chat("gpt-4o", "r"))).unwrap().attempts,
        2
    );
}

// ------------------------------------------------------------------------------- the policy

#[test]
fn dialect_settings_are_checked() {
    let err = Engine::from_text(
        "version = 1\n[[upstream]]\nname = \"x\"\nbase_url = \"http://127.0.0.1:9\"\ndialect = \"baidu\"\n\
         [[upstream]]\nname = \"y\"\nbase_url = \"http://127.0.0.1:9\"\nendpoints = { \"m\" = \"e\" }\n\
         [[upstream]]\nname = \"z\"\nbase_url = \"http://127.0.0.1:9\"\ndialect = \"baidu_v1\"\nendpoints = { \"m\" = \"a b\", \"n\" = 3 }\n",
    )
    .unwrap_err()
    .to_string();
    for want in [
        "upstream[0].dialect: must be one of \"openai\", \"baidu_v1\", got \"baidu\"",
        "endpoints apply to dialect = \"baidu_v1\" only",
        "\"a b\" is not an endpoint path",
        "upstream[2].endpoints.n",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_route_to_an_ernie_model_without_an_endpoint_is_refused() {
    let policy = |model: &str, endpoints: &str| {
        format!(
            "version = 1\n[[upstream]]\nname = \"ernie\"\ndialect = \"baidu_v1\"\n\
             base_url = \"http://127.0.0.1:9/chat\"\n{endpoints}\n[[route]]\nmodel = \"chat\"\n\
             targets = [{{ upstream = \"ernie\", model = \"{model}\" }}]\n"
        )
    };
    let err = Engine::from_text(&policy("ernie-5-ultra", ""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("route[0].targets[0].model: upstream \"ernie\" speaks baidu_v1 and has no endpoint for model \"ernie-5-ultra\""),
        "{err}"
    );
    assert!(err.contains("line 9"), "located: {err}");
    Engine::from_text(&policy(
        "ernie-5-ultra",
        "endpoints = { \"ernie-5-ultra\" = \"e5u\" }",
    ))
    .expect("with its endpoint the policy is valid");
    Engine::from_text(&policy("ERNIE-Speed-8K", "")).expect("the built-in table");
}

/// Nothing is charged twice: a replay after an expired token is one admission, and an error in a
/// 200 body (which providers do not bill) refunds its tokens.
#[test]
fn ernie_errors_and_replays_are_charged_once() {
    let up = TestUpstream::builder()
        .auth(TestAuth::OAuth2 {
            client_id: "ak-2".into(),
            client_secret: "sk-charge-secret".into(),
            expires_in: Duration::from_secs(3600),
        })
        .start()
        .unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_DIALECT_CHARGE_AK", "ak-2");
        std::env::set_var("TOLLGATE_DIALECT_CHARGE_SK", "sk-charge-secret");
    }
    let e = baidu(
        &up,
        &format!(
            "auth = {{ kind = \"oauth2\", token_url = \"{}\", client_id = \"env:TOLLGATE_DIALECT_CHARGE_AK\", client_secret = \"env:TOLLGATE_DIALECT_CHARGE_SK\", placement = \"query\" }}\n\
             [[budget]]\nname = \"tokens\"\ntokens_per_minute = 100000\n{FAST_RETRY}",
            up.token_url()
        ),
    );
    let rt = rt();
    let r = rt.block_on(e.send(chat("ernie-4.0-8k", "one"))).unwrap();
    let first = r.usage.unwrap().total_tokens;
    up.revoke_tokens();
    let r = rt.block_on(e.send(chat("ernie-4.0-8k", "two"))).unwrap();
    let second = r.usage.unwrap().total_tokens;
    let stats = &e.stats()[0];
    assert_eq!(stats.admitted, 2, "the replay is not a second admission");
    assert_eq!(
        stats.tokens,
        first + second,
        "each call charged its usage once"
    );
    up.script(
        Match::any(),
        [Action::BaiduError {
            code: 336_003,
            message: "invalid".into(),
        }],
    );
    rt.block_on(e.send(chat("ernie-4.0-8k", "three")))
        .unwrap_err();
    let stats = &e.stats()[0];
    assert_eq!(stats.admitted, 3);
    assert_eq!(
        stats.tokens,
        first + second,
        "the error's reservation was refunded"
    );
}
