//! `tollgate::serve::Proxy` over HTTP against the testkit upstream: virtual keys, JSON and SSE
//! pass-through, denials in OpenAI's format with Retry-After, retries the client never sees,
//! cache hits, admin reload, limits and bad input.
#![cfg(feature = "testkit")]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tollgate::Engine;
use tollgate::policy::{Cidr, Policy, SecretRef, Serve, VirtualKey};
use tollgate::serve::{Proxy, hash_key};
use tollgate::testkit::{Action, Match, TestUpstream};

const ALICE: &str = "vk-alice-0123456789";
const BOB: &str = "vk-bob-9876543210";
const ADMIN_ENV: &str = "TOLLGATE_SERVE_TEST_ADMIN";
const ADMIN: &str = "admin-secret-token";

fn sha(key: &str) -> [u8; 32] {
    let hex = hash_key(key);
    let hex = hex.strip_prefix("sha256:").unwrap();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// The upstream and route, then `rest`; the [serve] part is set on the parsed policy.
fn policy(up: &TestUpstream, rest: &str) -> Policy {
    let mut p = Policy::from_toml(&format!(
        r#"version = 1
[[upstream]]
name = "test"
base_url = "{}"
[[route]]
model = "gpt-4o"
targets = [{{ upstream = "test", model = "gpt-4o" }}]
{rest}"#,
        up.base_url()
    ))
    .expect("valid policy");
    p.serve = Some(serve_section());
    p
}

fn serve_section() -> Serve {
    // SAFETY: set before the proxy reads it; one value for every test of this binary.
    unsafe { std::env::set_var(ADMIN_ENV, ADMIN) };
    Serve {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(SecretRef::Env(ADMIN_ENV.to_owned())),
        keys: vec![
            VirtualKey {
                sha256: sha(ALICE),
                tenant: "alice".into(),
                name: "alice".into(),
            },
            VirtualKey {
                sha256: sha(BOB),
                tenant: "bob".into(),
                name: "bob".into(),
            },
        ],
        max_body_bytes: 64 * 1024,
        ..Serve::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(proxy: &Proxy, method: &str, path: &str, key: Option<&str>, body: &str) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr()))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered in time")
        .expect("a response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn chat(content: &str, stream: bool) -> String {
    json!({"model": "gpt-4o", "max_tokens": 5, "stream": stream,
        "messages": [{"role": "user", "content": content}]})
    .to_string()
}

#[test]
fn virtual_keys_map_to_tenants_and_unknown_keys_get_401() {
    let up = TestUpstream::start().unwrap();
    let engine = Engine::new(policy(
        &up,
        "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n",
    ));
    let rt = rt();
    rt.block_on(async {
        let proxy = Proxy::start(engine.clone(), None, None).await.unwrap();
        let ok = call(
            &proxy,
            "POST",
            "/v1/chat/completions",
            Some(ALICE),
            &chat("a", false),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
        assert_eq!(ok.json()["object"], "chat.completion");
        // Bob is another tenant: his own minute's call.
        let bob = call(
            &proxy,
            "POST",
            "/v1/chat/completions",
            Some(BOB),
            &chat("b", false),
        )
        .await;
        assert_eq!(bob.status, StatusCode::OK);
        for key in [None, Some("vk-nobody"), Some("")] {
            let r = call(
                &proxy,
                "POST",
                "/v1/chat/completions",
                key,
                &chat("c", false),
            )
            .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            let e = r.json();
            assert_eq!(e["error"]["code"], "invalid_api_key");
            assert_eq!(e["error"]["type"], "invalid_request_error");
            assert!(!String::from_utf8_lossy(&r.body).contains("vk-nobody"));
        }
        assert_eq!(
            up.log().len(),
            2,
            "refused requests never reach the upstream"
        );
        // Upstream credentials never leave: the test upstream saw no client key either.
        assert!(
            up.log()
                .iter()
                .all(|a| a.headers.get("authorization").is_none())
        );
        proxy.shutdown().await;
    });
}

#[test]
fn a_budget_denial_is_a_429_naming_the_budget_with_retry_after() {
    let up = TestUpstream::start().unwrap();
    let engine = Engine::new(policy(
        &up,
        "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = 1\n",
    ));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let first = call(
            &proxy,
            "POST",
            "/v1/chat/completions",
            Some(ALICE),
            &chat("a", false),
        )
        .await;
        assert_eq!(first.status, StatusCode::OK);
        let r = call(
            &proxy,
            "POST",
            "/v1/chat/completions",
            Some(ALICE),
            &chat("b", false),
        )
        .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let e = r.json();
        assert_eq!(e["error"]["code"], "budget_exhausted");
        assert_eq!(e["error"]["type"], "rate_limit_exceeded");
        assert_eq!(e["error"]["budget"], "per-tenant");
        let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&after), "{after}");
        assert_eq!(r.headers["x-should-retry"], "false");
        proxy.shutdown().await;
    });
}

#[test]
fn streams_pass_through_event_by_event() {
    let up = TestUpstream::start().unwrap();
    let engine = Engine::new(policy(&up, ""));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let r = call(
            &proxy,
            "POST",
            "/v1/chat/completions",
            Some(ALICE),
            &chat("s", true),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-type"], "text/event-stream");
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        let data: Vec<&str> = text
            .split("\n\n")
            .filter_map(|block| block.strip_prefix("data: "))
            .collect();
        assert!(data.len() >= 3, "{text}");
        assert_eq!(*data.last().unwrap(), "[DONE]");
        let chunk: Value = serde_json::from_str(data[0]).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        proxy.shutdown().await;
    });
}

#[test]
fn a_retried_503_is_invisible_and_cache_hits_skip_the_upstream() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::Status503]);
    let engine = Engine::new(policy(
        &up,
        "[retry]\nmax_attempts = 3\nbackoff = { base = \"10ms\", max = \"20ms\" }\n[cache]\nenabled = true\n",
    ));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let body = json!({"model": "gpt-4o", "max_tokens": 5, "temperature": 0,
            "messages": [{"role": "user", "content": "cached"}]})
        .to_string();
        let r = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &body).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.headers["x-tollgate-attempts"], "2");
        let again = call(&proxy, "POST", "/v1/chat/completions", Some(BOB), &body).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.headers["x-tollgate-source"], "cache");
        assert_eq!(again.body, r.body);
        assert_eq!(
            up.log().len(),
            2,
            "one 503 and one answer; the hit never went out"
        );
        proxy.shutdown().await;
    });
}

#[test]
fn admin_reload_needs_the_token_and_changes_limits_at_once() {
    let up = TestUpstream::start().unwrap();
    let budget = |n: u32| {
        format!(
            "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\nrequests_per_minute = {n}\n"
        )
    };
    let engine = Engine::new(policy(&up, &budget(1)));
    rt().block_on(async {
        let proxy = Proxy::start(engine.clone(), None, None).await.unwrap();
        let ok = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &chat("1", false)).await;
        assert_eq!(ok.status, StatusCode::OK);
        let denied = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &chat("2", false)).await;
        assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
        // The new policy text, with the same [serve] keys kept by the engine's policy.
        let mut next = policy(&up, &budget(5));
        next.serve = Some(serve_section());
        let text = format!(
            "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n[[route]]\nmodel = \"gpt-4o\"\ntargets = [{{ upstream = \"test\", model = \"gpt-4o\" }}]\n{}",
            up.base_url(),
            budget(5)
        );
        let refused = call(&proxy, "POST", "/admin/reload", Some(ALICE), &text).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let bad = call(&proxy, "POST", "/admin/reload", Some(ADMIN), "version = 2").await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(bad.json()["error"]["code"], "policy_refused");
        assert_eq!(engine.generation(), 1, "a refused policy changes nothing");
        engine.reload_policy(next);
        assert_eq!(engine.generation(), 2);
        let now_ok = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &chat("3", false)).await;
        assert_eq!(now_ok.status, StatusCode::OK, "5 a minute now: {:?}", now_ok.body);
        proxy.shutdown().await;
    });
}

#[test]
fn models_health_metrics_and_bad_input() {
    let up = TestUpstream::start().unwrap();
    let engine = Engine::new(policy(&up, ""));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let models = call(&proxy, "GET", "/v1/models", Some(ALICE), "").await;
        assert_eq!(models.status, StatusCode::OK);
        assert_eq!(models.json()["data"][0]["id"], "gpt-4o");
        assert_eq!(
            call(&proxy, "GET", "/v1/models", None, "").await.status,
            StatusCode::UNAUTHORIZED
        );
        let health = call(&proxy, "GET", "/healthz", None, "").await;
        assert_eq!(health.json()["status"], "ok");
        for (body, status) in [
            ("not json", StatusCode::BAD_REQUEST),
            ("[1, 2]", StatusCode::BAD_REQUEST),
            ("{\"model\": \"gpt-4o\"}", StatusCode::BAD_REQUEST),
            // The upstream's own refusal comes back as it sent it.
            (
                "{\"model\": \"gpt-4o\", \"messages\": []}",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let r = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), body).await;
            assert_eq!(r.status, status, "{body}: {:?}", r.body);
            assert!(r.json()["error"]["message"].is_string());
        }
        let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024));
        let r = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &huge).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            call(&proxy, "GET", "/nope", None, "").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&proxy, "GET", "/v1/chat/completions", Some(ALICE), "")
                .await
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let metrics = call(&proxy, "GET", "/metrics", None, "").await;
        let text = String::from_utf8_lossy(&metrics.body);
        assert!(text.contains("tollgate_serve_requests_total"));
        assert!(text.contains("tollgate_serve_unauthorized_total 1"));
        assert!(!text.contains(ALICE) && !text.contains(ADMIN));
        proxy.shutdown().await;
    });
}

#[test]
fn clients_outside_the_allow_list_are_closed() {
    let up = TestUpstream::start().unwrap();
    let mut p = policy(&up, "");
    if let Some(s) = p.serve.as_mut() {
        s.allow = vec![Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        }];
    }
    let engine = Engine::new(p);
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::get(format!("http://{}/healthz", proxy.addr()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("closed in time");
        assert!(r.is_err(), "loopback is not in 10.0.0.0/8: {r:?}");
        proxy.shutdown().await;
    });
}
