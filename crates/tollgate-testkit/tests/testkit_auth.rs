//! The testkit upstream's authentication ([`TestAuth`]): static bearer keys, Zhipu-style HS256
//! JWTs and Baidu-style OAuth2 client credentials, driven by `tollgate::transport::Client`.
//! Every wait is bounded; nothing asserts on timing.

use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use serde_json::Value;
use tollgate::auth::{
    JwtMinter, Secret, ZHIPU_HEADER, mint_hs256, parse_token_response, token_request_url,
    zhipu_claims,
};
use tollgate::transport::{Client, ClientConfig, Response};
use tollgate_testkit::{Action, FaultMix, Match, TOKEN_PATH, TestAuth, TestUpstream};

const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("the test took too long")
}

fn client() -> Client {
    Client::new(ClientConfig::default()).expect("client")
}

/// A chat request to `url`, with `Authorization: <authorization>` when given.
fn chat(url: &str, authorization: Option<&str>) -> Request<Bytes> {
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    let mut request = Request::post(url).header("content-type", "application/json");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.body(Bytes::from_static(body.as_bytes())).unwrap()
}

async fn send(client: &Client, request: Request<Bytes>) -> Response {
    client.send(request).await.expect("a response")
}

fn json(response: &Response) -> Value {
    serde_json::from_slice(&response.body).expect("a JSON body")
}

/// Asserts an OpenAI `invalid_api_key` 401 whose body does not repeat `credential`; returns the
/// error message.
fn assert_refused(response: &Response, credential: &str) -> String {
    assert_eq!(response.status, 401);
    let text = String::from_utf8_lossy(&response.body);
    if !credential.is_empty() {
        assert!(
            !text.contains(credential),
            "the body repeats the credential: {text}"
        );
    }
    let error = &json(response)["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "invalid_api_key");
    assert!(error["param"].is_null());
    error["message"].as_str().expect("a message").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_keys_are_accepted_and_others_refused() {
    bounded(async {
        let upstream = TestUpstream::builder()
            .auth(TestAuth::Bearer(vec![
                "sk-first".into(),
                "sk-second".into(),
            ]))
            .start_async()
            .await
            .unwrap();
        let url = upstream.url("/v1/chat/completions");
        let client = client();

        let ok = send(&client, chat(&url, Some("Bearer sk-second"))).await;
        assert_eq!(ok.status, 200);
        assert_eq!(json(&ok)["object"], "chat.completion");
        let lower = send(&client, chat(&url, Some("bearer sk-first"))).await;
        assert_eq!(lower.status, 200);

        let wrong = send(&client, chat(&url, Some("Bearer sk-WRONG-7f3a9c"))).await;
        let message = assert_refused(&wrong, "sk-WRONG-7f3a9c");
        assert!(
            message.starts_with("Incorrect API key provided"),
            "{message}"
        );
        let bare = send(&client, chat(&url, Some("sk-first"))).await;
        assert_refused(&bare, "");
        let missing = send(&client, chat(&url, None)).await;
        let message = assert_refused(&missing, "");
        assert!(message.contains("didn't provide an API key"), "{message}");

        // Every /v1 path needs the key, not only chat completions.
        let models = Request::get(upstream.url("/v1/models"))
            .body(Bytes::new())
            .unwrap();
        assert_refused(&send(&client, models).await, "");
        let models = Request::get(upstream.url("/v1/models"))
            .header("authorization", "Bearer sk-first")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(send(&client, models).await.status, 200);

        assert_eq!(upstream.count_status(401), 4);
        assert_eq!(upstream.count_status(200), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_never_reach_scripts_or_the_fault_mix() {
    bounded(async {
        let upstream = TestUpstream::builder()
            .auth(TestAuth::Bearer(vec!["sk-good".into()]))
            .fault_mix(FaultMix {
                unavailable: 1.0,
                ..FaultMix::default()
            })
            .start_async()
            .await
            .unwrap();
        upstream.script(Match::any(), [Action::Status500]);
        let url = upstream.url("/v1/chat/completions");
        let client = client();

        for _ in 0..3 {
            let response = send(&client, chat(&url, Some("Bearer sk-bad"))).await;
            assert_refused(&response, "sk-bad");
        }
        assert_eq!(upstream.script_remaining(), 1, "the script is untouched");
        let log = upstream.log();
        assert_eq!(log.len(), 3);
        assert!(
            log.iter()
                .all(|a| a.status == Some(401) && a.fault.is_none() && !a.scripted)
        );

        // The first accepted request takes the script, the next one the fault mix.
        let scripted = send(&client, chat(&url, Some("Bearer sk-good"))).await;
        assert_eq!(scripted.status, 500);
        let drawn = send(&client, chat(&url, Some("Bearer sk-good"))).await;
        assert_eq!(drawn.status, 503);
        assert_eq!(upstream.count_faulted(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_valid_expired_and_forged() {
    bounded(async {
        let (id, secret) = ("zp-key-id", "zp-signing-secret");
        let upstream = TestUpstream::builder()
            .auth(TestAuth::Jwt {
                id: id.into(),
                secret: secret.into(),
            })
            .start_async()
            .await
            .unwrap();
        let url = upstream.url("/v1/chat/completions");
        let client = client();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);

        // tollgate's own minter, with and without the Bearer scheme (Zhipu takes both).
        let minter = JwtMinter::new(Secret::new(id), Secret::new(secret), hour, hour / 60);
        let token = minter.token(now);
        let with_scheme = format!("Bearer {token}");
        assert_eq!(
            send(&client, chat(&url, Some(&with_scheme))).await.status,
            200
        );
        assert_eq!(send(&client, chat(&url, Some(&token))).await.status, 200);

        let expired = mint_hs256(
            ZHIPU_HEADER,
            &zhipu_claims(id, now - 2 * hour, hour),
            secret.as_bytes(),
        );
        let message = assert_refused(&send(&client, chat(&url, Some(&expired))).await, &expired);
        assert!(message.contains("expired"), "{message}");

        let claims = zhipu_claims(id, now, hour);
        let forged = mint_hs256(ZHIPU_HEADER, &claims, b"not-the-secret");
        let message = assert_refused(&send(&client, chat(&url, Some(&forged))).await, &forged);
        assert!(message.contains("signature"), "{message}");

        let other_id = mint_hs256(
            ZHIPU_HEADER,
            &zhipu_claims("someone-else", now, hour),
            secret.as_bytes(),
        );
        assert_refused(&send(&client, chat(&url, Some(&other_id))).await, &other_id);

        let garbage = "Bearer not.a.jwt";
        assert_refused(&send(&client, chat(&url, Some(garbage))).await, "not.a.jwt");
        assert_refused(&send(&client, chat(&url, None)).await, "");

        assert_eq!(upstream.count_status(200), 2);
        assert_eq!(upstream.count_status(401), 5);
    })
    .await
}

/// Asks the token endpoint (POST, as tollgate does) and returns the status and the JSON body.
async fn fetch_token(client: &Client, upstream: &TestUpstream, id: &str, secret: &str) -> Response {
    let url = token_request_url(&upstream.token_url(), id, secret);
    send(client, Request::post(url).body(Bytes::new()).unwrap()).await
}

fn oauth2(expires_in: Duration) -> TestAuth {
    TestAuth::OAuth2 {
        client_id: "qianfan app".into(),
        client_secret: "s&cret=1".into(),
        expires_in,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_token_in_header_and_query_until_revoked() {
    bounded(async {
        let upstream = TestUpstream::builder()
            .auth(oauth2(Duration::from_secs(2_592_000)))
            .start_async()
            .await
            .unwrap();
        let url = upstream.url("/v1/chat/completions");
        let client = client();

        assert_refused(&send(&client, chat(&url, None)).await, "");
        // The id and secret need percent-decoding (a space, `&` and `=`).
        let reply = fetch_token(&client, &upstream, "qianfan app", "s&cret=1").await;
        assert_eq!(reply.status, 200);
        assert_eq!(json(&reply)["expires_in"], 2_592_000);
        let token = parse_token_response(200, &reply.body, SystemTime::now()).expect("a token");
        let token = token.access_token.expose().to_owned();
        assert!(token.starts_with("tk-"), "{token}");
        assert_eq!(upstream.tokens_issued(), 1);

        let header = format!("Bearer {token}");
        assert_eq!(send(&client, chat(&url, Some(&header))).await.status, 200);
        let in_query = format!("{url}?access_token={token}");
        assert_eq!(send(&client, chat(&in_query, None)).await.status, 200);
        let unknown = format!("{url}?access_token=tk-999");
        assert_refused(&send(&client, chat(&unknown, None)).await, "tk-999");

        upstream.revoke_tokens();
        let message = assert_refused(&send(&client, chat(&url, Some(&header))).await, &token);
        assert!(message.contains("revoked"), "{message}");
        assert_refused(&send(&client, chat(&in_query, None)).await, &token);

        // A new token works again; GET is accepted by the token endpoint too.
        let get = Request::get(token_request_url(
            &upstream.token_url(),
            "qianfan app",
            "s&cret=1",
        ))
        .body(Bytes::new())
        .unwrap();
        let reply = send(&client, get).await;
        assert_eq!(reply.status, 200);
        let fresh = json(&reply)["access_token"].as_str().unwrap().to_owned();
        assert_ne!(fresh, token);
        let header = format!("Bearer {fresh}");
        assert_eq!(send(&client, chat(&url, Some(&header))).await.status, 200);
        assert_eq!(upstream.tokens_issued(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_wrong_client_and_expired_tokens_are_refused() {
    bounded(async {
        // Tokens that expire at once: deterministic without waiting.
        let upstream = TestUpstream::builder()
            .auth(oauth2(Duration::ZERO))
            .start_async()
            .await
            .unwrap();
        let client = client();

        for (id, secret, description) in [
            ("stranger", "s&cret=1", "unknown client id"),
            (
                "qianfan app",
                "wrong-SECRET-42",
                "Client authentication failed",
            ),
        ] {
            let reply = fetch_token(&client, &upstream, id, secret).await;
            assert_eq!(reply.status, 401);
            let body = json(&reply);
            assert_eq!(body["error"], "invalid_client");
            assert_eq!(body["error_description"], description);
            assert!(!String::from_utf8_lossy(&reply.body).contains("wrong-SECRET-42"));
            let err = parse_token_response(401, &reply.body, SystemTime::now()).unwrap_err();
            assert!(err.to_string().contains("invalid_client"), "{err}");
        }
        let no_grant = format!("{}?client_id=x&client_secret=y", upstream.token_url());
        let reply = send(&client, Request::post(no_grant).body(Bytes::new()).unwrap()).await;
        assert_eq!(reply.status, 400);
        assert_eq!(json(&reply)["error"], "unsupported_grant_type");
        assert_eq!(upstream.tokens_issued(), 0);

        let reply = fetch_token(&client, &upstream, "qianfan app", "s&cret=1").await;
        assert_eq!(reply.status, 200);
        let token = json(&reply)["access_token"].as_str().unwrap().to_owned();
        let header = format!("Bearer {token}");
        let url = upstream.url("/v1/chat/completions");
        assert_refused(&send(&client, chat(&url, Some(&header))).await, &token);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_requests_are_logged() {
    bounded(async {
        let upstream = TestUpstream::builder()
            .auth(oauth2(Duration::from_secs(60)))
            .start_async()
            .await
            .unwrap();
        // Scripts are for API requests: the token endpoint never takes one.
        upstream.script(Match::any(), [Action::Status503]);
        let client = client();
        let ok = fetch_token(&client, &upstream, "qianfan app", "s&cret=1").await;
        assert_eq!(ok.status, 200);
        let refused = fetch_token(&client, &upstream, "stranger", "x").await;
        assert_eq!(refused.status, 401);
        assert_eq!(upstream.script_remaining(), 1);

        assert_eq!(upstream.count_path(TOKEN_PATH), 2);
        assert_eq!(TOKEN_PATH, "/oauth/2.0/token");
        let log = upstream.log();
        assert_eq!(log[0].method, http::Method::POST);
        assert_eq!(log[0].status, Some(200));
        assert_eq!(log[1].status, Some(401));
        let query = log[0].query.as_deref().unwrap_or_default();
        assert!(query.starts_with("grant_type=client_credentials&client_id="));
        assert!(log.iter().all(|a| a.fault.is_none()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_everything_passes_and_there_is_no_token_endpoint() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let client = client();
        let url = upstream.url("/v1/chat/completions");
        assert_eq!(send(&client, chat(&url, None)).await.status, 200);
        assert_eq!(
            send(&client, chat(&url, Some("Bearer anything")))
                .await
                .status,
            200
        );
        let reply = fetch_token(&client, &upstream, "a", "b").await;
        assert_eq!(reply.status, 404);
        assert_eq!(upstream.tokens_issued(), 0);
    })
    .await
}
