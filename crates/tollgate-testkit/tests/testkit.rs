//! The testkit upstream, driven by real clients: hyper-util's legacy client (HTTP/1.1, h2c),
//! hyper over rustls (HTTP/2 with the generated CA) and raw TCP for the reset cases.
//! Every wait is bounded; nothing asserts on timing.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tollgate::tokens::{ModelTable, count_chat};
use tollgate_testkit::{
    Action, Canned, FaultMix, Latency, Match, RateLimitHeaders, TENANT_HEADER, TestUpstream,
    VOCABULARY,
};

const LIMIT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read to its end or to the error that cut it.
struct Reply {
    status: u16,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    error: Option<String>,
}

impl Reply {
    fn json(&self) -> Value {
        assert!(self.error.is_none(), "body error: {:?}", self.error);
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .to_str()
            .expect("ASCII header")
    }
}

async fn read(resp: http::Response<Incoming>) -> Reply {
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut error = None;
    loop {
        match tokio::time::timeout(LIMIT, body.frame()).await {
            Err(_) => panic!("body not finished within {LIMIT:?}"),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(d) = frame.into_data() {
                    data.extend_from_slice(&d);
                }
            }
        }
    }
    Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: data.into(),
        error,
    }
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(LIMIT, client.request(req))
        .await
        .expect("response head within the limit")
        .expect("a response head");
    read(resp).await
}

fn post_json(up: &TestUpstream) -> http::request::Builder {
    Request::post(up.url("/v1/chat/completions")).header("content-type", "application/json")
}

async fn chat(up: &TestUpstream, body: Value) -> Reply {
    let req = post_json(up)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(&client(), req).await
}

async fn get(up: &TestUpstream, path: &str) -> Reply {
    let req = Request::get(up.url(path)).body(Full::default()).unwrap();
    send(&client(), req).await
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// One SSE event: its `id:` if any and its `data:`.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    data: String,
}

/// Complete events only (a trailing partial event is left out).
fn events(text: &str) -> Vec<Event> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end];
        rest = &rest[end + 2..];
        let mut ev = Event {
            id: None,
            data: String::new(),
        };
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                ev.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                ev.data = v.to_owned();
            }
        }
        out.push(ev);
    }
    out
}

fn content_of(evs: &[Event]) -> String {
    evs.iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Waits (bounded) until the log holds `n` requests, without blocking the runtime.
async fn arrived(up: &TestUpstream, n: usize) {
    let deadline = Instant::now() + LIMIT;
    while up.request_count() < n {
        assert!(Instant::now() < deadline, "{n} requests never arrived");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Raw HTTP/1.1 over TCP with `connection: close`: what arrived before the server closed.
fn raw_post(up: &TestUpstream, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    let mut tcp = std::net::TcpStream::connect(up.addr()).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Wire format

#[tokio::test]
async fn json_completion_with_usage() {
    let up = TestUpstream::start().unwrap();
    let body = with(hello("gpt-4o"), json!({"max_tokens": 5}));
    let reply = chat(&up, body.clone()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        VOCABULARY[..5].join(" ").as_str()
    );
    assert_eq!(choice["finish_reason"], "length");
    let prompt = count_chat(ModelTable::bundled(), "", &body)
        .unwrap()
        .prompt_tokens;
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], prompt + 5);
}

#[tokio::test]
async fn reply_length_defaults_to_16_words_and_is_capped() {
    let up = TestUpstream::builder().max_words(40).start().unwrap();
    let v = chat(&up, hello("gpt-4o-mini")).await.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 16);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let v = chat(
        &up,
        with(hello("gpt-4o-mini"), json!({"max_completion_tokens": 1000})),
    )
    .await
    .json();
    assert_eq!(v["usage"]["completion_tokens"], 40);
}

#[tokio::test]
async fn sse_stream_ends_with_done_and_no_usage_chunk_by_default() {
    let up = TestUpstream::start().unwrap();
    let reply = chat(
        &up,
        with(hello("gpt-4o"), json!({"stream": true, "max_tokens": 8})),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.error.is_none());
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let evs = events(&reply.text());
    assert_eq!(evs.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c.get("usage").is_none())
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    // Content deltas of a few words each, adding up to the JSON reply.
    assert!(chunks.len() >= 4);
    assert_eq!(content_of(&evs), VOCABULARY[..8].join(" "));
    assert!(evs.iter().all(|e| e.id.is_none()));
}

#[tokio::test]
async fn sse_stream_with_include_usage_sends_the_usage_chunk_before_done() {
    let up = TestUpstream::start().unwrap();
    let body = with(
        hello("gpt-4o"),
        json!({"stream": true, "max_tokens": 6, "stream_options": {"include_usage": true}}),
    );
    let reply = chat(&up, body.clone()).await;
    let evs = events(&reply.text());
    let n = evs.len();
    assert_eq!(evs[n - 1].data, "[DONE]");
    let usage: Value = serde_json::from_str(&evs[n - 2].data).unwrap();
    assert_eq!(usage["choices"], json!([]));
    let prompt = count_chat(ModelTable::bundled(), "", &body)
        .unwrap()
        .prompt_tokens;
    assert_eq!(usage["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(usage["usage"]["total_tokens"], prompt + 6);
    // Every other chunk carries "usage": null, as OpenAI does.
    for e in &evs[..n - 2] {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["usage"], Value::Null);
        assert!(v.get("usage").is_some());
    }
}

#[tokio::test]
async fn sse_event_ids_and_last_event_id_resume() {
    let up = TestUpstream::builder().event_ids(true).start().unwrap();
    let body = with(hello("gpt-4o"), json!({"stream": true, "max_tokens": 9}));
    let full = events(&chat(&up, body.clone()).await.text());
    let ids: Vec<String> = full.iter().map(|e| e.id.clone().unwrap()).collect();
    let expected: Vec<String> = (1..=full.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected);

    let req = post_json(&up)
        .header("last-event-id", "3")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resumed = events(&send(&client(), req).await.text());
    let ids = |evs: &[Event]| evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&resumed), ids(&full[3..]));
    let data = |evs: &[Event]| -> Vec<Value> {
        evs.iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| {
                let mut v: Value = serde_json::from_str(&e.data).unwrap();
                v["id"] = Value::Null; // the completion id differs per request
                v
            })
            .collect()
    };
    assert_eq!(data(&resumed), data(&full[3..]));
}

#[tokio::test]
async fn models_are_listed() {
    let up = TestUpstream::builder()
        .models(["gpt-4o", "my-model"])
        .start()
        .unwrap();
    let v = get(&up, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["gpt-4o", "my-model"]);
    let one = get(&up, "/v1/models/my-model").await.json();
    assert_eq!(one["id"], "my-model");
    let missing = get(&up, "/v1/models/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn malformed_requests_get_openai_errors() {
    let up = TestUpstream::start().unwrap();
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_type"),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            "missing_required_parameter",
        ),
        (r#"{"model": "gpt-4o"}"#, "missing_required_parameter"),
        (r#"{"model": "gpt-4o", "messages": []}"#, "empty_array"),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
            "invalid_type",
        ),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}"#,
            "invalid_value",
        ),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#,
            "invalid_type",
        ),
        (r#"{"model": "gpt-4o", "messages": [7]}"#, "invalid_value"),
    ];
    for (body, code) in &cases {
        let req = Request::post(up.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from(*body)))
            .unwrap();
        let reply = send(&client(), req).await;
        assert_eq!(reply.status, 400, "{body}");
        let err = &reply.json()["error"];
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["code"], *code, "{body}");
    }
    assert_eq!(up.count_status(400), cases.len());
    let unknown = get(&up, "/v1/engines").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "unknown_url");
    let wrong_method = get(&up, "/v1/chat/completions").await;
    assert_eq!(wrong_method.status, 405);
    // Bad requests take no scripted action.
    up.script(Match::any(), [Action::Status503]);
    let req = Request::post(up.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from("{")))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 400);
    assert_eq!(up.script_remaining(), 1);
}

// ---------------------------------------------------------------------------------------------
// Scripted faults

#[tokio::test]
async fn scripted_429_has_parseable_retry_after_and_rate_limit_headers() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::Status429 { retry_after: 7 }]);
    let reply = chat(&up, hello("gpt-4o")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after").parse::<u64>().unwrap(), 7);
    assert_eq!(reply.header("retry-after-ms").parse::<u64>().unwrap(), 7000);
    for name in [
        "limit-requests",
        "remaining-requests",
        "limit-tokens",
        "remaining-tokens",
    ] {
        reply
            .header(&format!("x-ratelimit-{name}"))
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("x-ratelimit-{name} is a number"));
    }
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(reply.header("x-ratelimit-reset-requests"), "7s");
    assert!(reply.header("x-ratelimit-reset-tokens").ends_with('s'));
    let err = &reply.json()["error"];
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert_eq!(err["type"], "requests");
    // The script is used up: the next request is normal.
    assert_eq!(chat(&up, hello("gpt-4o")).await.status, 200);
}

#[tokio::test]
async fn scripted_5xx_with_and_without_should_retry() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [
            Action::Status503,
            Action::Status500,
            Action::Status {
                code: 502,
                should_retry: Some(false),
            },
        ],
    );
    let r = chat(&up, hello("gpt-4o")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "service_unavailable");
    assert!(r.headers.get("x-should-retry").is_none());
    let r = chat(&up, hello("gpt-4o")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let r = chat(&up, hello("gpt-4o")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-should-retry"), "false");
    assert_eq!(up.count_faulted(), 3);
    assert!(up.log().iter().all(|a| a.scripted));
}

#[tokio::test]
async fn reset_mid_body_is_an_error_for_the_client() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::ResetMidBody]);
    let reply = chat(&up, hello("gpt-4o")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.error.is_some(), "the client must see the cut");
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
    assert_eq!(up.log()[0].fault, Some(Action::ResetMidBody));
}

#[test]
fn reset_mid_body_sends_less_than_content_length_then_closes() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::ResetMidBody]);
    let raw = raw_post(&up, &hello("gpt-4o"));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length announced");
    assert!(body.len() < length, "{} of {length} bytes", body.len());
}

#[tokio::test]
async fn cut_stream_sends_k_events_and_no_done() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any().and_stream(true), [Action::CutStreamAfter(3)]);
    let reply = chat(
        &up,
        with(hello("gpt-4o"), json!({"stream": true, "max_tokens": 12})),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.error.is_some(), "the client must see the cut");
    let text = reply.text();
    let evs = events(&text);
    assert_eq!(evs.len(), 3);
    assert!(!text.contains("[DONE]"));
    assert!(text.ends_with("\n\n"));
}

#[tokio::test]
async fn reset_mid_stream_cuts_inside_an_event() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::ResetMidBody]);
    let reply = chat(&up, with(hello("gpt-4o"), json!({"stream": true}))).await;
    assert!(reply.error.is_some());
    let text = reply.text();
    assert_eq!(events(&text).len(), 1);
    assert!(!text.ends_with("\n\n"), "the second event is cut: {text}");
}

#[tokio::test]
async fn malformed_json_is_a_200_that_does_not_parse() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::MalformedJson, Action::MalformedJson]);
    let reply = chat(&up, hello("gpt-4o")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.error.is_none());
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
    // Streaming: one event's data is broken JSON, the stream still ends with [DONE].
    let reply = chat(&up, with(hello("gpt-4o"), json!({"stream": true}))).await;
    let evs = events(&reply.text());
    assert_eq!(evs.last().unwrap().data, "[DONE]");
    assert!(
        evs.iter()
            .any(|e| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
    );
}

#[tokio::test]
async fn slow_first_byte_request_is_logged_on_arrival() {
    let up = Arc::new(TestUpstream::start().unwrap());
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_millis(300))],
    );
    let up2 = up.clone();
    let pending = tokio::spawn(async move { chat(&up2, hello("gpt-4o")).await.status });
    arrived(&up, 1).await;
    let a = &up.log()[0];
    assert_eq!(
        a.fault,
        Some(Action::SlowFirstByte(Duration::from_millis(300)))
    );
    assert_eq!(a.delay, Duration::from_millis(300));
    assert_eq!(
        tokio::time::timeout(LIMIT, pending).await.unwrap().unwrap(),
        200
    );
    assert_eq!(up.log()[0].status, Some(200));
}

#[test]
fn wait_for_requests_sees_a_request_held_before_its_head() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::SlowFirstByte(Duration::from_millis(200))],
    );
    std::thread::scope(|s| {
        let client = s.spawn(|| raw_post(&up, &hello("gpt-4o")));
        assert!(up.wait_for_requests(1, LIMIT));
        assert_eq!(up.log()[0].model.as_deref(), Some("gpt-4o"));
        let raw = client.join().unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200"));
    });
}

#[tokio::test]
async fn slow_drip_delivers_the_whole_reply() {
    let up = TestUpstream::start().unwrap();
    let gap = Duration::from_millis(5);
    up.script(Match::any(), [Action::SlowDrip(gap), Action::SlowDrip(gap)]);
    let json = chat(&up, with(hello("gpt-4o"), json!({"max_tokens": 4}))).await;
    assert_eq!(
        json.json()["choices"][0]["message"]["content"],
        VOCABULARY[..4].join(" ")
    );
    let sse = chat(
        &up,
        with(hello("gpt-4o"), json!({"stream": true, "max_tokens": 4})),
    )
    .await;
    let evs = events(&sse.text());
    assert_eq!(content_of(&evs), VOCABULARY[..4].join(" "));
    assert_eq!(evs.last().unwrap().data, "[DONE]");
}

#[tokio::test]
async fn scripts_match_model_tenant_and_header_in_order() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::tenant("acme"),
        [Action::Status503, Action::Status500],
    );
    up.script(Match::model("gpt-4.1"), [Action::MalformedJson]);
    up.script(
        Match::header("X-Chaos", "on"),
        [Action::Status429 { retry_after: 1 }],
    );
    assert_eq!(up.script_remaining(), 4);

    let as_tenant = |t: &'static str| {
        let up = &up;
        async move {
            let body = hello("gpt-4o");
            let req = post_json(up)
                .header(TENANT_HEADER, t)
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            send(&client(), req).await.status
        }
    };
    assert_eq!(as_tenant("bob").await, 200);
    assert_eq!(as_tenant("acme").await, 503);
    // The tenant can also come from the body's `user`.
    let by_user = chat(&up, with(hello("gpt-4o"), json!({"user": "acme"}))).await;
    assert_eq!(by_user.status, 500);
    assert_eq!(as_tenant("acme").await, 200);

    assert_eq!(chat(&up, hello("gpt-4o")).await.status, 200);
    let r = chat(&up, hello("gpt-4.1")).await;
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    let body = hello("gpt-4o");
    let req = post_json(&up)
        .header("x-chaos", "on")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 429);
    assert_eq!(up.script_remaining(), 0);

    up.script(Match::any(), [Action::Status503, Action::Status503]);
    up.clear_script();
    assert_eq!(chat(&up, hello("gpt-4o")).await.status, 200);
}

#[tokio::test]
async fn scripts_apply_to_the_models_endpoint_too() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::path("/v1/models"), [Action::Status503]);
    assert_eq!(chat(&up, hello("gpt-4o")).await.status, 200);
    assert_eq!(get(&up, "/v1/models").await.status, 503);
    assert_eq!(get(&up, "/v1/models").await.status, 200);
}

#[tokio::test]
async fn rate_limit_headers_on_normal_responses() {
    let limits = RateLimitHeaders {
        limit_requests: 100,
        remaining_requests: 42,
        reset_requests: Duration::from_millis(1500),
        limit_tokens: 1000,
        remaining_tokens: 900,
        reset_tokens: Duration::from_secs(360),
    };
    let up = TestUpstream::builder()
        .rate_limit_headers(limits)
        .start()
        .unwrap();
    let r = chat(&up, hello("gpt-4o")).await;
    assert_eq!(r.header("x-ratelimit-limit-requests"), "100");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "42");
    assert_eq!(r.header("x-ratelimit-reset-requests"), "1.5s");
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), "900");
    assert_eq!(r.header("x-ratelimit-reset-tokens"), "6m0s");

    up.script(
        Match::any(),
        [Action::RateLimitHeaders(RateLimitHeaders {
            remaining_requests: 0,
            ..limits
        })],
    );
    let r = chat(&up, with(hello("gpt-4o"), json!({"stream": true}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "0");

    up.set_rate_limit_headers(None);
    let r = chat(&up, hello("gpt-4o")).await;
    assert!(r.headers.get("x-ratelimit-limit-requests").is_none());
}

#[tokio::test]
async fn canned_responses_are_sent_verbatim() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::Respond(Canned {
            status: 503,
            headers: vec![("retry-after".into(), "Wed, 21 Oct 2015 07:28:00 GMT".into())],
            body: Bytes::from_static(b"upstream connect error"),
        })],
    );
    let r = chat(&up, hello("gpt-4o")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), "Wed, 21 Oct 2015 07:28:00 GMT");
    assert_eq!(r.text(), "upstream connect error");
}

// ---------------------------------------------------------------------------------------------
// The seeded fault mix

async fn fault_sequence(seed: u64, n: usize) -> Vec<(Option<Action>, Option<u16>)> {
    let mix = FaultMix {
        rate_limited: 0.15,
        server_error: 0.1,
        unavailable: 0.15,
        reset: 0.05,
        cut_stream: 0.05,
        malformed: 0.1,
        ..FaultMix::default()
    };
    let up = TestUpstream::builder()
        .fault_mix(mix)
        .seed(seed)
        .start()
        .unwrap();
    for i in 0..n {
        let stream = i % 2 == 1;
        let _ = chat(&up, with(hello("gpt-4o"), json!({"stream": stream}))).await;
    }
    assert!(up.wait_for_requests(n, LIMIT));
    up.log().into_iter().map(|a| (a.fault, a.status)).collect()
}

#[tokio::test]
async fn same_seed_gives_the_same_faults() {
    let a = fault_sequence(7, 40).await;
    let b = fault_sequence(7, 40).await;
    assert_eq!(a, b);
    let faults = a.iter().filter(|(f, _)| f.is_some()).count();
    assert!(faults > 0 && faults < 40, "{faults} faults of 40");
    assert!(
        a.iter()
            .all(|(f, _)| f.as_ref().is_none_or(|f| !matches!(f, Action::Normal)))
    );
    let c = fault_sequence(8, 40).await;
    assert_ne!(a, c);
}

#[test]
fn fault_mix_over_one_is_rejected() {
    let err = TestUpstream::builder()
        .fault_mix(FaultMix {
            unavailable: 0.6,
            rate_limited: 0.6,
            ..FaultMix::default()
        })
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("at most 1"), "{err}");
    let up = TestUpstream::start().unwrap();
    assert!(
        up.set_fault_mix(FaultMix {
            reset: -0.1,
            ..FaultMix::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn latency_range_is_drawn_and_logged() {
    let ms = Duration::from_millis;
    let up = TestUpstream::builder()
        .latency(ms(1)..ms(4))
        .seed(3)
        .start()
        .unwrap();
    up.script(Match::any(), [Action::Latency(Latency::Fixed(ms(2)))]);
    for _ in 0..4 {
        assert_eq!(chat(&up, hello("gpt-4o")).await.status, 200);
    }
    let log = up.log();
    assert!(log[0].delay >= ms(3) && log[0].delay <= ms(6));
    assert!(
        log[1..]
            .iter()
            .all(|a| a.delay >= ms(1) && a.delay <= ms(4))
    );
}

// ---------------------------------------------------------------------------------------------
// Transport: TLS with the generated CA, h2c

#[tokio::test]
async fn tls_with_the_generated_ca_negotiates_http2() {
    let up = TestUpstream::builder().start_tls().unwrap();
    assert!(up.base_url().starts_with("https://127.0.0.1:"));
    let ca = up.ca().expect("a TLS upstream has a CA");
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(!ca.cert_der().is_empty());

    let mut config = ca.client_config();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(LIMIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .expect("the generated CA is trusted");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = with(hello("gpt-4o"), json!({"stream": true}));
    let req = Request::post(up.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let reply = read(resp).await;
    assert_eq!(reply.status, 200);
    assert_eq!(events(&reply.text()).last().unwrap().data, "[DONE]");
    assert_eq!(up.log()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn tls_http1_by_ip_address() {
    let up = TestUpstream::builder().start_tls().unwrap();
    let mut config = up.ca().unwrap().client_config();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(LIMIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .expect("the certificate names 127.0.0.1");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/v1/models")
        .header("host", up.addr().to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(read(resp).await.json()["object"], "list");
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let up = TestUpstream::start().unwrap();
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let body = hello("gpt-4o");
    let req = post_json(&up)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = send(&h2, req).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.json()["object"], "chat.completion");
    assert_eq!(up.log()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn h2c_reset_mid_stream_is_an_error_for_the_client() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::CutStreamAfter(2)]);
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let body = with(hello("gpt-4o"), json!({"stream": true}));
    let req = post_json(&up)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = send(&h2, req).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert!(reply.error.is_some(), "the stream reset must surface");
    assert!(!reply.text().contains("[DONE]"));
    // The connection survives the stream reset: the next request on it succeeds.
    let req = post_json(&up)
        .body(Full::new(Bytes::from(hello("gpt-4o").to_string())))
        .unwrap();
    assert_eq!(send(&h2, req).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// The arrival log, runtimes and shutdown

#[test]
fn the_handle_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<TestUpstream>();
    check::<tollgate_testkit::Arrival>();
}

#[tokio::test]
async fn arrival_log_records_every_field() {
    let up = TestUpstream::start().unwrap();
    let before = Instant::now();
    let body = with(hello("gpt-4o-mini"), json!({"max_tokens": 3}));
    let req = Request::post(up.url("/v1/chat/completions?trace=1"))
        .header("content-type", "application/json")
        .header(TENANT_HEADER, "acme")
        .header("x-custom", "42")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 200);
    let streamed = with(hello("gpt-4o"), json!({"user": "bob", "stream": true}));
    let _ = chat(&up, streamed).await;
    let _ = get(&up, "/v1/models").await;
    up.script(Match::any(), [Action::Status503]);
    let _ = chat(&up, hello("gpt-4o")).await;
    let _ = chat(&up, json!({"model": "gpt-4o"})).await;

    let log = up.log();
    assert_eq!(log.len(), 5);
    let a = &log[0];
    assert_eq!(a.seq, 0);
    assert!(a.at >= before);
    assert_eq!(a.method, http::Method::POST);
    assert_eq!(a.path, "/v1/chat/completions");
    assert_eq!(a.query.as_deref(), Some("trace=1"));
    assert_eq!(a.version, Version::HTTP_11);
    assert_eq!(a.headers.get("x-custom").unwrap(), "42");
    assert_eq!(a.headers.get(TENANT_HEADER).unwrap(), "acme");
    assert_eq!(a.body, Bytes::from(body.to_string()));
    assert_eq!(a.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(a.tenant.as_deref(), Some("acme"));
    assert!(!a.stream);
    assert_eq!(a.fault, None);
    assert_eq!(a.status, Some(200));

    assert_eq!(log[1].tenant.as_deref(), Some("bob"));
    assert!(log[1].stream);
    assert_eq!(log[2].method, http::Method::GET);
    assert_eq!(log[2].model, None);
    assert_eq!(log[3].fault, Some(Action::Status503));
    assert!(log[3].scripted);
    assert_eq!(log[3].status, Some(503));
    assert_eq!(log[4].status, Some(400));
    for w in log.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert!(w[1].at >= w[0].at && w[1].offset >= w[0].offset);
    }

    assert_eq!(up.request_count(), 5);
    assert_eq!(up.count_path("/v1/chat/completions"), 4);
    assert_eq!(up.count_status(200), 3);
    assert_eq!(up.count(|a| a.tenant.as_deref() == Some("acme")), 1);
    up.clear_log();
    assert_eq!(up.request_count(), 0);
    let _ = get(&up, "/v1/models").await;
    assert_eq!(up.log()[0].seq, 5);
}

#[tokio::test]
async fn async_constructor_serves_on_the_callers_runtime() {
    let up = TestUpstream::builder().start_async().await.unwrap();
    assert_eq!(chat(&up, hello("gpt-4o")).await.status, 200);
    up.shutdown_async().await;
}

#[test]
fn async_constructor_needs_tokio() {
    let fut = TestUpstream::builder().start_async();
    // Polled once by hand, outside any tokio runtime.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(e)) => assert!(e.to_string().contains("tokio"), "{e}"),
        other => panic!("expected an error, got {:?}", other.map(|r| r.is_ok())),
    }
}

#[tokio::test]
async fn shutdown_cuts_delays_short_and_finishes_open_streams() {
    let up = TestUpstream::builder()
        .drip(Duration::from_secs(60))
        .start()
        .unwrap();
    let body = with(hello("gpt-4o"), json!({"stream": true, "max_tokens": 6}));
    let req = post_json(&up)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, client().request(req))
        .await
        .unwrap()
        .unwrap();
    let (_, mut stream) = resp.into_parts();
    let first = tokio::time::timeout(LIMIT, stream.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.into_data().unwrap().starts_with(b"data: "));
    up.shutdown_async().await;
    let rest = tokio::time::timeout(LIMIT, stream.collect())
        .await
        .expect("the stream finishes once the upstream shuts down")
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

#[test]
fn sync_use_and_drop_without_a_runtime() {
    let up = TestUpstream::start().unwrap();
    let raw = raw_post(&up, &hello("gpt-4o"));
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert_eq!(up.count_status(200), 1);
    drop(up);
}
