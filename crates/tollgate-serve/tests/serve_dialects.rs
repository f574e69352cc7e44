//! `tollgate serve` in front of upstreams that speak other dialects or send provider error
//! bodies: an OpenAI client sees OpenAI chat completions from Baidu ERNIE v1, and errors that a
//! retry cannot fix come back at once with `x-should-retry: false` (so the official SDKs do not
//! retry them either), while rate limits and transient errors are retried out of its sight.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tollgate::Engine;
use tollgate::policy::{Policy, Serve, VirtualKey};
use tollgate_serve::Proxy;
use tollgate_testkit::{Action, Canned, Match, TestAuth, TestUpstream};

const KEY: &str = "vk-dialects-0123456789";
const RETRY: &str = "[retry]\nmax_attempts = 3\nbackoff = { base = \"1ms\", max = \"5ms\", jitter = \"none\" }\n\
                     budget = { ratio = 1, max_tokens = 100 }\n";

/// A proxy in front of `upstream_lines` (the policy's only `[[upstream]]`: every call goes there).
fn engine(upstream_lines: &str) -> Engine {
    let mut p = Policy::from_toml(&format!(
        "version = 1\n[[upstream]]\nname = \"up\"\n{upstream_lines}\n{RETRY}"
    ))
    .unwrap_or_else(|e| panic!("invalid policy:\n{e}"));
    p.serve = Some(Serve {
        listen: "127.0.0.1:0".parse().unwrap(),
        keys: vec![VirtualKey::from_key(KEY, "acme")],
        ..Serve::default()
    });
    Engine::new(p)
}

fn ernie(up: &TestUpstream) -> Engine {
    engine(&format!(
        "dialect = \"baidu_v1\"\nbase_url = \"{}\"",
        up.baidu_base_url()
    ))
}

fn openai(up: &TestUpstream) -> Engine {
    engine(&format!("base_url = \"{}\"", up.base_url()))
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
    headers: http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The `data:` lines of an event stream.
    fn events(&self) -> Vec<&str> {
        self.text
            .split("\n\n")
            .filter_map(|block| block.strip_prefix("data: "))
            .collect()
    }
}

async fn complete(proxy: &Proxy, model: &str, stream: bool) -> Reply {
    let body = json!({"model": model, "max_tokens": 4, "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/v1/chat/completions", proxy.addr()))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered in time")
        .expect("a response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("a whole body")
        .to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Runs `f` against a proxy in front of `engine`.
fn with_proxy<F>(engine: Engine, f: F)
where
    F: AsyncFnOnce(&Proxy),
{
    rt().block_on(async {
        let proxy = Proxy::start(engine, None, None).await.unwrap();
        f(&proxy).await;
        proxy.shutdown().await;
    });
}

#[test]
fn ernie_answers_and_streams_reach_openai_clients_as_chat_completions() {
    let up = TestUpstream::start().unwrap();
    with_proxy(ernie(&up), async |proxy| {
        let r = complete(proxy, "ernie-4.0-8k", false).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert_eq!(up.log()[0].json().unwrap()["system"], "be brief");
        let r = complete(proxy, "ernie-speed-8k", true).await;
        assert_eq!(r.status, StatusCode::OK);
        let events = r.events();
        assert_eq!(*events.last().unwrap(), "[DONE]", "{}", r.text);
        let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 4);
        // A stream that ends without is_end reaches the client as an error event.
        up.script(Match::any(), [Action::BaiduStreamWithoutEnd(1)]);
        let r = complete(proxy, "ernie-speed-8k", true).await;
        let last: Value = serde_json::from_str(r.events().last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "stream_cut", "{}", r.text);
    });
}

#[test]
fn ernie_error_codes_through_the_proxy() {
    let up = TestUpstream::start().unwrap();
    with_proxy(ernie(&up), async |proxy| {
        // (code, status the client sees, sent upstream, the client's answer succeeds)
        for (code, status, sent, ok) in [
            (18, 200, 2, true),
            (336_502, 200, 2, true),
            (336_100, 200, 2, true),
            (17, 429, 1, false),
            (336_003, 400, 1, false),
            (4_242, 500, 1, false),
        ] {
            up.clear_log();
            up.script(
                Match::any(),
                [Action::BaiduError {
                    code,
                    message: format!("ernie {code}"),
                }],
            );
            let r = complete(proxy, "ernie-3.5-8k", false).await;
            assert_eq!(r.status.as_u16(), status, "{code}: {}", r.text);
            assert_eq!(up.request_count(), sent, "{code}");
            if ok {
                assert_eq!(r.headers["x-tollgate-attempts"], "2", "{code}");
            } else {
                assert_eq!(r.headers["x-should-retry"], "false", "{code}");
                assert_eq!(r.json()["error"]["code"], code.to_string());
                assert_eq!(r.json()["error"]["message"], format!("ernie {code}"));
            }
        }
        // The same for a stream request, whose error answer is JSON.
        up.clear_log();
        up.script(
            Match::any(),
            [Action::BaiduError {
                code: 17,
                message: "daily limit".into(),
            }],
        );
        let r = complete(proxy, "ernie-3.5-8k", true).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
        assert_eq!(r.json()["error"]["code"], "17");
    });
}

#[test]
fn expired_ernie_tokens_are_renewed_behind_the_proxy() {
    let up = TestUpstream::builder()
        .auth(TestAuth::OAuth2 {
            client_id: "ak-serve".into(),
            client_secret: "sk-serve-secret".into(),
            expires_in: Duration::from_secs(3600),
        })
        .start()
        .unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_SERVE_DIALECT_AK", "ak-serve");
        std::env::set_var("TOLLGATE_SERVE_DIALECT_SK", "sk-serve-secret");
    }
    let e = engine(&format!(
        "dialect = \"baidu_v1\"\nbase_url = \"{}\"\nauth = {{ kind = \"oauth2\", token_url = \"{}\", \
         client_id = \"env:TOLLGATE_SERVE_DIALECT_AK\", client_secret = \"env:TOLLGATE_SERVE_DIALECT_SK\", \
         placement = \"query\" }}",
        up.baidu_base_url(),
        up.token_url()
    ));
    with_proxy(e, async |proxy| {
        assert_eq!(
            complete(proxy, "ernie-4.0-8k", false).await.status,
            StatusCode::OK
        );
        up.revoke_tokens();
        let r = complete(proxy, "ernie-4.0-8k", false).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.headers["x-tollgate-attempts"], "1");
        assert_eq!(up.tokens_issued(), 2);
    });
}

#[test]
fn provider_error_bodies_through_the_proxy() {
    let up = TestUpstream::start().unwrap();
    with_proxy(openai(&up), async |proxy| {
        let quota = Canned::openai_error(
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota",
        );
        // (scripted answer, status the client sees, sent upstream)
        for (canned, status, sent) in [
            (quota, 429, 1),
            (Canned::zhipu_error(429, "1113", "arrears"), 429, 1),
            (Canned::zhipu_error(429, "1302", "too many at once"), 200, 2),
            (
                Canned::siliconflow_error(400, 20015, "prompt too long"),
                400,
                1,
            ),
        ] {
            up.clear_log();
            up.script(Match::any(), [Action::Respond(canned)]);
            let r = complete(proxy, "glm-4", false).await;
            assert_eq!(r.status.as_u16(), status, "{}", r.text);
            assert_eq!(up.request_count(), sent, "{}", r.text);
            if status != 200 {
                assert_eq!(r.headers["x-should-retry"], "false");
            }
        }
        // A JSON completion answering a stream request arrives as events.
        up.script(Match::any(), [Action::JsonForStream]);
        let r = complete(proxy, "gpt-4o", true).await;
        assert_eq!(*r.events().last().unwrap(), "[DONE]", "{}", r.text);
    });
}
