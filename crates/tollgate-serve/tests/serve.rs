//! `tollgate_serve::Proxy` over HTTP against the testkit upstream: virtual keys, JSON and SSE
//! pass-through, denials in OpenAI's format with Retry-After, retries the client never sees,
//! cache hits, admin reload, limits and bad input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::Engine;
use tollgate::policy::{Cidr, Policy, SecretRef, Serve, VirtualKey};
use tollgate_serve::{Proxy, hash_key};
use tollgate_testkit::{Action, Match, TestUpstream};

const ALICE: &str = "vk-alice-0123456789";
const BOB: &str = "vk-bob-9876543210";
const ADMIN_ENV: &str = "TOLLGATE_SERVE_TEST_ADMIN";
const ADMIN: &str = "admin-secret-token";

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
            VirtualKey::from_key(ALICE, "alice"),
            VirtualKey::from_key(BOB, "bob"),
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
    request(proxy.addr(), method, path, key, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One request on a new connection; an error when the connection fails or closes early.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Result<Reply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered in time")
        .map_err(|e| format!("no response: {e}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body in time")
        .map_err(|e| format!("the body broke off: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A chat completion by the holder of `key` (streamed when `stream`).
async fn complete(proxy: &Proxy, key: &str, content: &str, stream: bool) -> Reply {
    call(
        proxy,
        "POST",
        "/v1/chat/completions",
        Some(key),
        &chat(content, stream),
    )
    .await
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
        let ok = complete(&proxy, ALICE, "a", false).await;
        assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
        assert_eq!(ok.json()["object"], "chat.completion");
        // Bob is another tenant: his own minute's call.
        let bob = complete(&proxy, BOB, "b", false).await;
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
        let first = complete(&proxy, ALICE, "a", false).await;
        assert_eq!(first.status, StatusCode::OK);
        let r = complete(&proxy, ALICE, "b", false).await;
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
        let r = complete(&proxy, ALICE, "s", true).await;
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
        let again = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &body).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.headers["x-tollgate-source"], "cache");
        assert_eq!(again.body, r.body);
        assert_eq!(
            up.log().len(),
            2,
            "one 503 and one answer; the hit never went out"
        );
        // Another tenant's virtual key never sees alice's entry (scope = "tenant", the default).
        let bob = call(&proxy, "POST", "/v1/chat/completions", Some(BOB), &body).await;
        assert_eq!(bob.status, StatusCode::OK);
        assert_eq!(bob.headers["x-tollgate-source"], "upstream");
        assert_eq!(up.log().len(), 3, "bob's call went out");
        proxy.shutdown().await;
    });
}

#[test]
fn a_shared_cache_scope_answers_every_virtual_key() {
    let up = TestUpstream::start().unwrap();
    let engine = Engine::new(policy(&up, "[cache]\nenabled = true\nscope = \"shared\"\n"));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let body = json!({"model": "gpt-4o", "max_tokens": 5, "temperature": 0,
            "messages": [{"role": "user", "content": "shared"}]})
        .to_string();
        let r = call(&proxy, "POST", "/v1/chat/completions", Some(ALICE), &body).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let bob = call(&proxy, "POST", "/v1/chat/completions", Some(BOB), &body).await;
        assert_eq!(bob.status, StatusCode::OK);
        assert_eq!(bob.headers["x-tollgate-source"], "cache");
        assert_eq!(bob.body, r.body);
        assert_eq!(
            up.log().len(),
            1,
            "the policy shares entries: bob's hit never went out"
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
        let ok = complete(&proxy, ALICE, "1", false).await;
        assert_eq!(ok.status, StatusCode::OK);
        let denied = complete(&proxy, ALICE, "2", false).await;
        assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
        // The new policy text: 5 a minute, and only alice's virtual key.
        let text = format!(
            "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n[[route]]\n\
             model = \"gpt-4o\"\ntargets = [{{ upstream = \"test\", model = \"gpt-4o\" }}]\n{}\
             [serve]\nadmin_token = \"env:{ADMIN_ENV}\"\n\
             [[serve.key]]\nhash = \"{}\"\ntenant = \"alice\"\n",
            up.base_url(),
            budget(5),
            hash_key(ALICE)
        );
        let refused = call(&proxy, "POST", "/admin/reload", Some(ALICE), &text).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let bad = call(&proxy, "POST", "/admin/reload", Some(ADMIN), "version = 2").await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(bad.json()["error"]["code"], "policy_refused");
        // No policy file to read: an empty body is refused too.
        let empty = call(&proxy, "POST", "/admin/reload", Some(ADMIN), "").await;
        assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            empty.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no policy file")
        );
        assert_eq!(engine.generation(), 1, "a refused policy changes nothing");
        let bob = call(&proxy, "GET", "/v1/models", Some(BOB), "").await;
        assert_eq!(bob.status, StatusCode::OK);

        let done = call(&proxy, "POST", "/admin/reload", Some(ADMIN), &text).await;
        assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
        assert_eq!(done.json()["generation"], 2);
        assert_eq!(engine.generation(), 2);
        let now_ok = complete(&proxy, ALICE, "3", false).await;
        assert_eq!(
            now_ok.status,
            StatusCode::OK,
            "5 a minute now: {:?}",
            now_ok.body
        );
        // Virtual keys follow the reload: bob's is gone.
        let bob = call(&proxy, "GET", "/v1/models", Some(BOB), "").await;
        assert_eq!(bob.status, StatusCode::UNAUTHORIZED);
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

/// A proxy whose clients get `limit` to send a head, a body, or anything at all.
fn impatient(up: &TestUpstream, limit: Duration, rest: &str) -> Engine {
    let mut p = policy(up, rest);
    if let Some(s) = p.serve.as_mut() {
        s.header_timeout = limit;
        s.body_timeout = limit;
        s.idle_timeout = limit;
    }
    Engine::new(p)
}

/// Reads what the proxy sends until it closes the connection (a reset counts as closed).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the proxy closed the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of an unlabelled metric in the proxy's /metrics.
async fn metric(proxy: &Proxy, name: &str) -> u64 {
    let text = call(proxy, "GET", "/metrics", None, "").await.body;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn slow_and_silent_clients_are_cut_off() {
    let up = TestUpstream::start().unwrap();
    let engine = impatient(&up, Duration::from_millis(300), "");
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let connect = || TcpStream::connect(proxy.addr());

        // Connects and sends nothing.
        let mut silent = connect().await.unwrap();
        assert_eq!(read_to_close(&mut silent).await, "");
        // Stops in the middle of the HTTP/2 preface (the proxy is still telling the versions
        // apart).
        let mut preface = connect().await.unwrap();
        preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(read_to_close(&mut preface).await, "");
        // Stops in the middle of a request head.
        let mut half = connect().await.unwrap();
        half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nx-slow: ")
            .await
            .unwrap();
        let got = read_to_close(&mut half).await;
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
        // Sends a whole head, then a body that stops: 408 in OpenAI's format, then closed.
        let mut slow = connect().await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {ALICE}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\": "
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        let got = read_to_close(&mut slow).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("\"code\":\"body_timeout\""), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );

        // A keep-alive connection that stays quiet after its answer is closed too.
        let mut quiet = connect().await.unwrap();
        quiet
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        let got = read_to_close(&mut quiet).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");

        assert!(metric(&proxy, "tollgate_serve_idle_closed_total").await >= 2);
        proxy.shutdown().await;
    });
}

#[test]
fn idle_http2_connections_get_goaway_but_long_streams_run_on() {
    let up = TestUpstream::start().unwrap();
    // Events 150 ms apart: the stream outlasts the 500 ms idle timeout.
    up.script(Match::any(), [Action::SlowDrip(Duration::from_millis(150))]);
    let engine = impatient(&up, Duration::from_millis(500), "");
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();

        // HTTP/1: the stream counts as a request in progress until its last event, so the
        // connection is still open for the next request right after it.
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let body = chat("long", true);
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {ALICE}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("data: [DONE]") {
            let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
                .await
                .expect("events in time")
                .unwrap();
            assert!(
                n > 0,
                "closed mid-stream: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            started.elapsed() > Duration::from_millis(500),
            "the stream must outlast the idle timeout for this test to mean anything"
        );
        // Chunked: the terminating chunk follows [DONE].
        if !text.ends_with("0\r\n\r\n") {
            let mut tail = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut tail)).await;
        }
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("answered in time")
            .unwrap();
        let again = String::from_utf8_lossy(&buf[..n]);
        assert!(again.starts_with("HTTP/1.1 200"), "{again:?}");

        // HTTP/2 with prior knowledge: one request, then nothing; the proxy ends the connection.
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let driver = tokio::spawn(conn);
        let req = Request::get(format!("http://{}/healthz", proxy.addr()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let ended = tokio::time::timeout(Duration::from_secs(20), driver).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        proxy.shutdown().await;
    });
}

#[test]
fn connections_over_max_connections_wait_their_turn() {
    let up = TestUpstream::start().unwrap();
    let mut p = policy(&up, "");
    if let Some(s) = p.serve.as_mut() {
        s.max_connections = 2;
    }
    let engine = Engine::new(p);
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let addr = proxy.addr();
        let first = TcpStream::connect(addr).await.unwrap();
        let second = TcpStream::connect(addr).await.unwrap();
        // A third client is left in the backlog while both are open...
        let third = tokio::spawn(async move { request(addr, "GET", "/healthz", None, "").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !third.is_finished(),
            "the third connection was served beside two others"
        );
        // ... and served once one of them closes.
        drop(first);
        let r = tokio::time::timeout(Duration::from_secs(20), third)
            .await
            .expect("served in time")
            .unwrap()
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        drop(second);
        proxy.shutdown().await;
    });
}

#[test]
fn shutdown_finishes_calls_in_flight_and_refuses_new_ones() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_millis(800))],
    );
    let engine = Engine::new(policy(&up, ""));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let addr = proxy.addr();
        let body = chat("in flight", false);
        let slow = tokio::spawn(async move {
            request(addr, "POST", "/v1/chat/completions", Some(ALICE), &body).await
        });
        wait_for_upstream(&up, 1).await;
        let stopping = tokio::spawn(proxy.shutdown());
        // The listener closes at once: new connections are refused.
        let mut refused = false;
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the listener still accepts after shutdown began");
        let r = slow.await.unwrap().expect("the call in flight is answered");
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert!(r.json()["choices"][0]["message"]["content"].is_string());
        tokio::time::timeout(Duration::from_secs(20), stopping)
            .await
            .expect("shutdown ends once the call is done")
            .unwrap();
    });
}

#[test]
fn shutdown_cuts_calls_that_outlast_the_grace() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_secs(30))],
    );
    let mut p = policy(&up, "");
    if let Some(s) = p.serve.as_mut() {
        s.shutdown_grace = Duration::from_millis(200);
    }
    let engine = Engine::new(p);
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let addr = proxy.addr();
        let body = chat("too slow", false);
        let slow = tokio::spawn(async move {
            request(addr, "POST", "/v1/chat/completions", Some(ALICE), &body).await
        });
        wait_for_upstream(&up, 1).await;
        tokio::time::timeout(Duration::from_secs(20), proxy.shutdown())
            .await
            .expect("shutdown ends after the grace, not after the call");
        let r = slow.await.unwrap();
        assert!(
            r.is_err(),
            "the call outlived the grace: {:?}",
            r.map(|r| r.status)
        );
    });
}

/// Waits (bounded) until the upstream has received `n` requests.
async fn wait_for_upstream(up: &TestUpstream, n: usize) {
    for _ in 0..2000 {
        if up.request_count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the upstream never got {n} requests");
}

#[test]
fn a_budget_that_waits_holds_the_request_then_answers() {
    let up = TestUpstream::start().unwrap();
    // One call a second, no burst: the second call waits about a second, within wait_up_to.
    let engine = Engine::new(policy(
        &up,
        "[[budget]]\nname = \"paced\"\nscope = [\"tenant\"]\n\
         requests_per_second = { limit = 1, burst = 1 }\nwhen_exhausted = { wait_up_to = \"5s\" }\n",
    ));
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let first = complete(&proxy, ALICE, "1", false).await;
        assert_eq!(first.status, StatusCode::OK);
        let started = std::time::Instant::now();
        let held = complete(&proxy, ALICE, "2", false).await;
        assert_eq!(held.status, StatusCode::OK, "{:?}", held.body);
        // The budget cannot admit it sooner than its refill.
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "answered after {:?}: it was not held",
            started.elapsed()
        );
        // Another tenant's budget is its own: not held.
        let other = complete(&proxy, BOB, "3", false).await;
        assert_eq!(other.status, StatusCode::OK);
        proxy.shutdown().await;
    });
}

#[test]
fn the_admin_listener_serves_only_admin_endpoints() {
    let up = TestUpstream::start().unwrap();
    let mut p = policy(&up, "");
    if let Some(s) = p.serve.as_mut() {
        s.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    let engine = Engine::new(p);
    rt().block_on(async {
        let proxy = Proxy::start(engine.clone(), None, None).await.unwrap();
        let admin = proxy.admin_addr().expect("an admin listener");
        assert_ne!(admin, proxy.addr());
        // On the main listener there is no admin endpoint.
        let main = call(&proxy, "POST", "/admin/reload", Some(ADMIN), "version = 1").await;
        assert_eq!(main.status, StatusCode::NOT_FOUND);
        // The admin listener serves no chat.
        let chat_there = request(
            admin,
            "POST",
            "/v1/chat/completions",
            Some(ALICE),
            &chat("x", false),
        )
        .await
        .unwrap();
        assert_eq!(chat_there.status, StatusCode::NOT_FOUND);
        let no_token = request(admin, "POST", "/admin/reload", Some(ALICE), "version = 1")
            .await
            .unwrap();
        assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
        let text = format!(
            "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n[[route]]\n\
             model = \"gpt-4o\"\ntargets = [{{ upstream = \"test\", model = \"gpt-4o\" }}]\n",
            up.base_url()
        );
        let done = request(admin, "POST", "/admin/reload", Some(ADMIN), &text)
            .await
            .unwrap();
        assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
        assert_eq!(engine.generation(), 2);
        let health = request(admin, "GET", "/healthz", None, "").await.unwrap();
        assert_eq!(health.json()["generation"], 2);
        proxy.shutdown().await;
    });
}

#[test]
fn heads_over_the_limit_are_refused() {
    let up = TestUpstream::start().unwrap();
    let mut p = policy(&up, "");
    if let Some(s) = p.serve.as_mut() {
        s.max_header_bytes = 8 * 1024;
    }
    let engine = Engine::new(p);
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let head = format!(
            "GET /healthz HTTP/1.1\r\nhost: proxy\r\nx-pad: {}\r\n\r\n",
            "a".repeat(32 * 1024)
        );
        let _ = tcp.write_all(head.as_bytes()).await;
        let got = read_to_close(&mut tcp).await;
        assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
        // A head under the limit is fine.
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let head = format!(
            "GET /healthz HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\nx-pad: {}\r\n\r\n",
            "a".repeat(4 * 1024)
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let got = read_to_close(&mut tcp).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        proxy.shutdown().await;
    });
}

#[test]
fn a_client_that_stops_reading_is_cut_and_its_call_ends() {
    // A very long stream, so the proxy's socket buffers fill while the client reads nothing.
    let up = TestUpstream::builder().max_words(120_000).start().unwrap();
    let mut p = policy(&up, "");
    if let Some(s) = p.serve.as_mut() {
        s.write_timeout = Duration::from_millis(300);
    }
    let engine = Engine::new(p);
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        let body = json!({"model": "gpt-4o", "max_tokens": 120_000, "stream": true,
            "messages": [{"role": "user", "content": "long"}]})
        .to_string();
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {ALICE}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // Read nothing until the proxy has given up on this client.
        let mut stalled = 0;
        for _ in 0..1000 {
            stalled = metric(&proxy, "tollgate_serve_write_stalled_total").await;
            if stalled > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stalled, 1, "the stalled client was not cut");
        // What was buffered arrives, then the end: no [DONE], the stream was cut.
        let got = read_to_close(&mut tcp).await;
        assert!(
            got.starts_with("HTTP/1.1 200"),
            "{}",
            &got[..got.len().min(200)]
        );
        assert!(!got.contains("data: [DONE]"));
        // The call behind it ended too.
        for _ in 0..1000 {
            if metric(&proxy, "tollgate_serve_in_flight").await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metric(&proxy, "tollgate_serve_in_flight").await, 0);
        proxy.shutdown().await;
    });
}
