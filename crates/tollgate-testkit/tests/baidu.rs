//! The Baidu ERNIE v1 chat endpoint, ERNIE's errors and access tokens, the `Baidu*` scripted
//! actions, the provider error bodies of [`Canned`] and [`Action::JsonForStream`], driven by
//! hyper-util's client over HTTP/1.1. Every wait is bounded; nothing asserts on timing.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tollgate::tokens::{ModelTable, count_chat};
use tollgate_testkit::{
    Action, BAIDU_CHAT_PATH, Canned, Match, TestAuth, TestUpstream, VOCABULARY,
};

const LIMIT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A response read to its end or to the error that cut it.
struct Reply {
    status: u16,
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

    /// Asserts ERNIE's error answer (HTTP 200, JSON, `error_code`) and returns `error_msg`.
    fn baidu_error(&self, code: u32) -> String {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.header("content-type"), "application/json");
        let v = self.json();
        assert_eq!(v["error_code"], code, "{v}");
        v["error_msg"].as_str().expect("error_msg").to_owned()
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
        headers: parts.headers,
        body: data.into(),
        error,
    }
}

async fn send(req: Request<Full<Bytes>>) -> Reply {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(LIMIT, client.request(req))
        .await
        .expect("response head within the limit")
        .expect("a response head");
    read(resp).await
}

async fn post(url: &str, body: impl Into<Bytes>) -> Reply {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    send(req).await
}

/// `POST {baidu_base_url}/{endpoint}` with `body`.
async fn ernie(up: &TestUpstream, endpoint: &str, body: &Value) -> Reply {
    post(
        &format!("{}/{endpoint}", up.baidu_base_url()),
        body.to_string(),
    )
    .await
}

fn hello() -> Value {
    json!({"messages": [{"role": "user", "content": "Say hello"}]})
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The `data:` of every complete SSE event.
fn events(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end];
        rest = &rest[end + 2..];
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("data: ") {
                out.push(v.to_owned());
            }
        }
    }
    out
}

fn parsed(reply: &Reply) -> Vec<Value> {
    events(&reply.text())
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON event data"))
        .collect()
}

/// `prompt_tokens` of the OpenAI request equivalent to an ERNIE body.
fn openai_prompt_tokens(system: Option<&str>, messages: &Value) -> u64 {
    let mut all = Vec::new();
    if let Some(s) = system {
        all.push(json!({"role": "system", "content": s}));
    }
    all.extend(messages.as_array().unwrap().iter().cloned());
    count_chat(ModelTable::bundled(), "", &json!({"messages": all}))
        .unwrap()
        .prompt_tokens
}

// ---------------------------------------------------------------------------------------------
// Wire format

#[tokio::test]
async fn json_answer_with_usage_and_the_body_as_sent_in_the_log() {
    let up = TestUpstream::start().unwrap();
    assert_eq!(
        up.baidu_base_url(),
        format!("http://{}{BAIDU_CHAT_PATH}", up.addr())
    );
    let messages = json!([
        {"role": "user", "content": "Say hello"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]);
    let body = json!({
        "messages": messages, "system": "You are terse.", "max_output_tokens": 5,
        "user_id": "acme", "penalty_score": 1.5, "temperature": 1.0, "top_p": 0.5,
        "stop": ["\n\n"], "disable_search": true,
    });
    let reply = ernie(&up, "completions_pro", &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    let v = reply.json();
    assert!(v["id"].as_str().unwrap().starts_with("as-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["result"], VOCABULARY[..5].join(" ").as_str());
    assert_eq!(v["is_truncated"], false);
    assert_eq!(v["need_clear_history"], false);
    assert_eq!(v["finish_reason"], "length");
    let prompt = openai_prompt_tokens(Some("You are terse."), &messages);
    assert!(prompt > openai_prompt_tokens(None, &messages));
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5})
    );

    let log = up.log();
    let arrival = &log[0];
    assert_eq!(arrival.path, format!("{BAIDU_CHAT_PATH}/completions_pro"));
    assert_eq!(arrival.model.as_deref(), Some("completions_pro"));
    assert_eq!(arrival.tenant.as_deref(), Some("acme"));
    assert_eq!(arrival.status, Some(200));
    assert!(!arrival.stream && arrival.fault.is_none());
    let sent = arrival.json().expect("a JSON body");
    assert_eq!(sent, body);
    assert_eq!(sent["penalty_score"], 1.5);
}

#[tokio::test]
async fn reply_length_defaults_to_16_words_with_finish_reason_normal() {
    let up = TestUpstream::builder().max_words(40).start().unwrap();
    let v = ernie(&up, "ernie-4.0-8k", &hello()).await.json();
    assert_eq!(v["result"].as_str().unwrap().split(' ').count(), 16);
    assert_eq!(v["finish_reason"], "normal");
    let v = ernie(
        &up,
        "ernie_speed",
        &with(hello(), json!({"max_output_tokens": 1000})),
    )
    .await
    .json();
    assert_eq!(v["usage"]["completion_tokens"], 40);
    assert_eq!(v["finish_reason"], "normal");
    assert_eq!(up.count(|a| a.model.as_deref() == Some("ernie_speed")), 1);
}

#[tokio::test]
async fn stream_ends_with_is_end_and_no_done() {
    let up = TestUpstream::start().unwrap();
    let body = with(
        hello(),
        json!({"stream": true, "max_output_tokens": 8, "system": "s"}),
    );
    let reply = ernie(&up, "completions", &body).await;
    assert_eq!(reply.status, 200);
    assert!(reply.error.is_none());
    assert_eq!(reply.header("content-type"), "text/event-stream");
    assert!(!reply.text().contains("[DONE]"));
    let evs = parsed(&reply);
    assert_eq!(evs.len(), 3, "8 words, 3 a piece");
    let prompt = openai_prompt_tokens(Some("s"), &hello()["messages"]);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sentence_id"], i);
        assert_eq!(e["object"], "chat.completion");
        assert_eq!(e["is_end"], i == 2);
        assert_eq!(e["usage"]["prompt_tokens"], prompt);
        assert!(e["id"].as_str().unwrap().starts_with("as-"));
    }
    let so_far: Vec<u64> = evs
        .iter()
        .map(|e| e["usage"]["completion_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(so_far, [3, 6, 8]);
    assert_eq!(evs[2]["finish_reason"], "length");
    assert_eq!(evs[2]["usage"]["total_tokens"], prompt + 8);
    let text: String = evs.iter().map(|e| e["result"].as_str().unwrap()).collect();
    assert_eq!(text, VOCABULARY[..8].join(" "));
    assert!(up.log()[0].stream);
}

#[tokio::test]
async fn https_base_url() {
    let up = TestUpstream::builder().start_tls().unwrap();
    assert_eq!(
        up.baidu_base_url(),
        format!("https://{}{BAIDU_CHAT_PATH}", up.addr())
    );
}

// ---------------------------------------------------------------------------------------------
// Validation

#[tokio::test]
async fn bad_requests_get_ernie_errors_with_http_200() {
    let up = TestUpstream::start().unwrap();
    let user = |c: &str| json!({"role": "user", "content": c});
    let assistant = |c: &str| json!({"role": "assistant", "content": c});
    let cases: Vec<(Value, u32, &str)> = vec![
        (json!({}), 336_003, "messages"),
        (json!({"messages": "hi"}), 336_003, "messages"),
        (json!({"messages": []}), 336_006, "odd"),
        (
            json!({"messages": [user("a"), assistant("b")]}),
            336_006,
            "odd",
        ),
        (
            json!({"messages": [assistant("a")]}),
            336_006,
            "must be user",
        ),
        (
            json!({"messages": [{"role": "system", "content": "s"}, assistant("a"), user("b")]}),
            336_006,
            "must be user",
        ),
        (
            json!({"messages": [user("a"), user("b"), user("c")]}),
            336_006,
            "must be assistant",
        ),
        (
            json!({"messages": [user("a"), {"role": "function", "content": "b"}, user("c")]}),
            336_006,
            "must be assistant",
        ),
        (json!({"messages": [{"role": "user"}]}), 336_003, "content"),
        (
            with(hello(), json!({"temperature": 0})),
            336_003,
            "temperature",
        ),
        (
            with(hello(), json!({"temperature": 1.01})),
            336_003,
            "temperature",
        ),
        (with(hello(), json!({"top_p": 1.5})), 336_003, "top_p"),
        (
            with(hello(), json!({"penalty_score": 0.5})),
            336_003,
            "penalty_score",
        ),
        (
            with(hello(), json!({"penalty_score": 2.5})),
            336_003,
            "penalty_score",
        ),
        (
            with(hello(), json!({"max_output_tokens": 1})),
            336_003,
            "max_output_tokens",
        ),
        (
            with(hello(), json!({"max_output_tokens": "9"})),
            336_003,
            "max_output_tokens",
        ),
        (with(hello(), json!({"stream": "yes"})), 336_003, "stream"),
        (with(hello(), json!({"system": 1})), 336_003, "system"),
        (with(hello(), json!({"stop": "x"})), 336_003, "stop"),
        (json!([1]), 336_003, "object"),
    ];
    for (body, code, needle) in &cases {
        let message = ernie(&up, "completions", body).await.baidu_error(*code);
        assert!(message.contains(needle), "{body}: {message}");
    }
    for field in [
        "model",
        "max_tokens",
        "max_completion_tokens",
        "frequency_penalty",
        "presence_penalty",
        "user",
        "stream_options",
        "n",
    ] {
        let body = with(hello(), json!({ field: 1 }));
        let message = ernie(&up, "completions", &body).await.baidu_error(336_003);
        assert!(message.contains(&format!("'{field}'")), "{message}");
    }
    let reply = post(&format!("{}/completions", up.baidu_base_url()), "{not json").await;
    assert_eq!(reply.baidu_error(336_002), "Invalid JSON");
    let get = Request::get(format!("{}/completions", up.baidu_base_url()))
        .body(Full::default())
        .unwrap();
    send(get).await.baidu_error(336_101);

    // Refused requests are logged with the status sent and take no scripted action.
    let total = cases.len() + 8 + 2;
    assert_eq!(up.request_count(), total);
    assert_eq!(up.count_status(200), total);
    assert_eq!(up.count_faulted(), 0);
}

#[tokio::test]
async fn refused_requests_leave_the_script_alone() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::Status503]);
    ernie(&up, "completions", &json!({"messages": []}))
        .await
        .baidu_error(336_006);
    assert_eq!(up.script_remaining(), 1);
    assert_eq!(ernie(&up, "completions", &hello()).await.status, 503);
}

// ---------------------------------------------------------------------------------------------
// Access tokens

async fn token(up: &TestUpstream) -> String {
    let url = format!(
        "{}?grant_type=client_credentials&client_id=app&client_secret=secret",
        up.token_url()
    );
    let reply = post(&url, Bytes::new()).await;
    assert_eq!(reply.status, 200);
    reply.json()["access_token"].as_str().unwrap().to_owned()
}

fn oauth2(expires_in: Duration) -> TestAuth {
    TestAuth::OAuth2 {
        client_id: "app".into(),
        client_secret: "secret".into(),
        expires_in,
    }
}

#[tokio::test]
async fn access_tokens_invalid_110_and_expired_111() {
    let up = TestUpstream::builder()
        .auth(oauth2(Duration::from_secs(3600)))
        .start()
        .unwrap();
    let base = format!("{}/completions", up.baidu_base_url());
    let ask = |query: String| {
        let url = format!("{base}{query}");
        async move { post(&url, hello().to_string()).await }
    };
    let invalid = "Access token invalid or no longer valid";
    assert_eq!(ask(String::new()).await.baidu_error(110), invalid);
    assert_eq!(
        ask("?access_token=tk-999".into()).await.baidu_error(110),
        invalid
    );

    let tk = token(&up).await;
    let ok = ask(format!("?access_token={tk}")).await;
    assert_eq!(ok.status, 200);
    assert!(ok.json()["result"].is_string());
    // The Baidu path reads the query only.
    let header = Request::post(&base)
        .header("authorization", format!("Bearer {tk}"))
        .body(Full::new(Bytes::from(hello().to_string())))
        .unwrap();
    send(header).await.baidu_error(110);

    up.revoke_tokens();
    let expired = ask(format!("?access_token={tk}")).await.baidu_error(111);
    assert_eq!(expired, "Access token expired");
    let fresh = token(&up).await;
    assert_eq!(ask(format!("?access_token={fresh}")).await.status, 200);
    assert!(ask(format!("?access_token={fresh}")).await.json()["error_code"].is_null());

    // The OpenAI path keeps its 401.
    let openai = post(
        &up.url("/v1/chat/completions"),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(openai.status, 401);
}

#[tokio::test]
async fn tokens_past_their_lifetime_are_expired() {
    let up = TestUpstream::builder()
        .auth(oauth2(Duration::ZERO))
        .start()
        .unwrap();
    let tk = token(&up).await;
    let url = format!("{}/completions?access_token={tk}", up.baidu_base_url());
    post(&url, hello().to_string()).await.baidu_error(111);
}

// ---------------------------------------------------------------------------------------------
// Scripted actions

fn baidu_error(code: u32, message: &str) -> Action {
    Action::BaiduError {
        code,
        message: message.into(),
    }
}

#[tokio::test]
async fn scripted_error_for_json_and_stream_requests() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::model("completions_pro"),
        [
            baidu_error(336_100, "try again"),
            baidu_error(18, "Open api qps request limit reached"),
        ],
    );
    // Another endpoint is not scripted.
    assert!(ernie(&up, "ernie_speed", &hello()).await.json()["result"].is_string());
    let json_reply = ernie(&up, "completions_pro", &hello()).await;
    assert_eq!(json_reply.baidu_error(336_100), "try again");
    let stream = with(hello(), json!({"stream": true}));
    let stream_reply = ernie(&up, "completions_pro", &stream).await;
    assert_eq!(
        stream_reply.baidu_error(18),
        "Open api qps request limit reached"
    );
    let log = up.log();
    assert_eq!(log[1].fault, Some(baidu_error(336_100, "try again")));
    assert!(log[2].scripted && log[2].stream);
    assert_eq!(up.count_faulted(), 2);
}

#[tokio::test]
async fn scripted_error_headers() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [Action::BaiduErrorHeader {
            status: 429,
            code: 336_501,
            message: "Rpm limit reached 每分钟".into(),
        }],
    );
    let reply = ernie(&up, "completions", &hello()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-bce-error-code"), "336501");
    let message = reply.headers.get("x-bce-error-message").unwrap().as_bytes();
    assert_eq!(
        std::str::from_utf8(message).unwrap(),
        "Rpm limit reached 每分钟"
    );
    assert!(reply.body.is_empty());
    assert!(reply.headers.get("content-type").is_none());
}

#[tokio::test]
async fn scripted_stream_without_end() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any().and_stream(true),
        [
            Action::BaiduStreamWithoutEnd(2),
            Action::BaiduStreamWithoutEnd(99),
        ],
    );
    let body = with(hello(), json!({"stream": true, "max_output_tokens": 7}));
    let reply = ernie(&up, "completions", &body).await;
    assert!(reply.error.is_none(), "the body ends cleanly");
    let evs = parsed(&reply);
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e["is_end"] == false));
    // More than the stream has: all of it, still without an end.
    let evs = parsed(&ernie(&up, "completions", &body).await);
    assert_eq!(evs.len(), 3);
    assert!(evs.iter().all(|e| e["is_end"] == false));

    // A JSON request gets the normal answer.
    up.script(Match::any(), [Action::BaiduStreamWithoutEnd(1)]);
    let v = ernie(&up, "completions", &hello()).await.json();
    assert!(v["result"].is_string());
}

#[tokio::test]
async fn scripted_stream_error_after_events() {
    let up = TestUpstream::start().unwrap();
    let action = Action::BaiduStreamErrorAfter {
        events: 1,
        code: 336_000,
        message: "Internal error".into(),
    };
    up.script(Match::any(), [action.clone(), action]);
    let reply = ernie(&up, "completions", &with(hello(), json!({"stream": true}))).await;
    assert!(reply.error.is_none(), "the body ends cleanly");
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let evs = parsed(&reply);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["is_end"], false);
    assert_eq!(evs[0]["sentence_id"], 0);
    assert_eq!(
        evs[1],
        json!({"error_code": 336_000, "error_msg": "Internal error"})
    );
    // A JSON request gets the error body.
    let reply = ernie(&up, "completions", &hello()).await;
    assert_eq!(reply.baidu_error(336_000), "Internal error");
}

#[tokio::test]
async fn http_faults_apply_to_the_baidu_path() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [
            Action::Status429 { retry_after: 2 },
            Action::CutStreamAfter(1),
        ],
    );
    let reply = ernie(&up, "completions", &hello()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), "2");
    let reply = ernie(&up, "completions", &with(hello(), json!({"stream": true}))).await;
    assert!(reply.error.is_some(), "the connection was dropped");
    assert_eq!(events(&reply.text()).len(), 1);
}

#[tokio::test]
async fn malformed_stream_keeps_the_end_event() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::MalformedJson]);
    let body = with(hello(), json!({"stream": true, "max_output_tokens": 9}));
    let reply = ernie(&up, "completions", &body).await;
    assert!(reply.error.is_none());
    let data = events(&reply.text());
    assert_eq!(data.len(), 3);
    assert!(
        serde_json::from_str::<Value>(&data[1]).is_err(),
        "{}",
        data[1]
    );
    let end: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(end["is_end"], true);
}

#[tokio::test]
async fn json_for_stream_on_both_paths() {
    let up = TestUpstream::start().unwrap();
    up.script(Match::any(), [Action::JsonForStream, Action::JsonForStream]);
    let openai = json!({"model": "gpt-4o", "stream": true, "max_tokens": 4,
                        "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(&up.url("/v1/chat/completions"), openai.to_string()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        VOCABULARY[..4].join(" ").as_str()
    );

    let body = with(hello(), json!({"stream": true, "max_output_tokens": 4}));
    let reply = ernie(&up, "completions", &body).await;
    assert_eq!(reply.header("content-type"), "application/json");
    let v = reply.json();
    assert_eq!(v["result"], VOCABULARY[..4].join(" ").as_str());
    assert!(v.get("is_end").is_none());
    assert_eq!(up.count(|a| a.fault == Some(Action::JsonForStream)), 2);
}

// ---------------------------------------------------------------------------------------------
// Provider error bodies on the OpenAI path

#[tokio::test]
async fn canned_provider_error_bodies() {
    let up = TestUpstream::start().unwrap();
    up.script(
        Match::any(),
        [
            Action::Respond(Canned::openai_error(
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
                "This model's maximum context length is 128000 tokens.",
            )),
            Action::Respond(Canned::zhipu_error(429, "1113", "余额不足")),
            Action::Respond(
                Canned::siliconflow_error(503, 50505, "Model service overloaded")
                    .with_header("retry-after", "3"),
            ),
        ],
    );
    let openai = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let url = up.url("/v1/chat/completions");

    let reply = post(&url, openai.to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.json(),
        json!({"error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error", "param": null, "code": "context_length_exceeded",
        }})
    );

    let reply = post(&url, openai.to_string()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.json(),
        json!({"error": {"code": "1113", "message": "余额不足"}})
    );

    let reply = post(&url, openai.to_string()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("retry-after"), "3");
    assert_eq!(
        reply.json(),
        json!({"code": 50505, "message": "Model service overloaded", "data": null})
    );
    assert_eq!(
        Canned::openai_error(500, "server_error", None, "x").body,
        Canned::json(
            500,
            &json!({"error": {"message": "x", "type": "server_error", "param": null, "code": null}})
        )
        .body
    );
}
