//! The HTTP client (`tollgate::transport::Client`) against the testkit upstream on loopback.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use tollgate::policy::Timeouts;
use tollgate::retry::{ConnectKind, Failure, TimeoutKind};
use tollgate::transport::{Client, ClientConfig, ExtraCa, StreamResponse, TransportError};
use tollgate_testkit::{Action, Match, TestUpstream};

const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("the test took too long")
}

fn chat(url: &str, stream: bool) -> Request<Bytes> {
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}}],"max_tokens":8,"stream":{stream}}}"#
    );
    Request::post(url)
        .header("content-type", "application/json")
        .body(Bytes::from(body))
        .unwrap()
}

fn completions(upstream: &TestUpstream) -> String {
    upstream.url("/v1/chat/completions")
}

fn client(config: ClientConfig) -> Client {
    Client::new(config).expect("client")
}

fn timeouts(connect: u64, first_byte: u64, idle: u64, total: u64) -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(connect),
        first_byte: Duration::from_millis(first_byte),
        idle: Duration::from_millis(idle),
        total: Duration::from_millis(total),
    }
}

/// Reads a stream to its end: the chunks, and the error that ended it, if any.
async fn drain(stream: &mut StreamResponse) -> (Vec<Bytes>, Option<TransportError>) {
    let mut chunks = Vec::new();
    while let Some(next) = stream.next_chunk().await {
        match next {
            Ok(chunk) => chunks.push(chunk),
            Err(e) => {
                assert!(
                    stream.next_chunk().await.is_none(),
                    "nothing after an error"
                );
                return (chunks, Some(e));
            }
        }
    }
    (chunks, None)
}

/// Runs one call against an upstream scripted with `action` and returns the error it ended with:
/// from `send`, or from the body of a `stream`.
async fn error_after(action: Action, timeouts: Timeouts, stream: bool) -> TransportError {
    let upstream = TestUpstream::builder().start_async().await.unwrap();
    upstream.script(Match::any(), [action]);
    let client = client(ClientConfig {
        timeouts,
        ..ClientConfig::default()
    });
    let request = chat(&completions(&upstream), stream);
    if !stream {
        return client.send(request).await.unwrap_err();
    }
    let mut response = client.stream(request).await.unwrap();
    let (_, error) = drain(&mut response).await;
    error.expect("the stream must not end cleanly")
}

#[tokio::test(flavor = "multi_thread")]
async fn json_completion_over_http1() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let client = client(ClientConfig::default());
        let response = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_11);
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(json["object"], "chat.completion");
        assert!(json["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        let log = upstream.log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].version, Version::HTTP_11);
        assert_eq!(log[0].model.as_deref(), Some("gpt-4o"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_stream_reads_to_done() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let client = client(ClientConfig::default());
        let mut stream = client
            .stream(chat(&completions(&upstream), true))
            .await
            .unwrap();
        assert_eq!(stream.status, StatusCode::OK);
        let (chunks, error) = drain(&mut stream).await;
        assert!(error.is_none(), "{error:?}");
        let text: Vec<u8> = chunks.concat();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("data: [DONE]"), "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_with_prior_knowledge() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let client = client(ClientConfig {
            http2_prior_knowledge: true,
            ..ClientConfig::default()
        });
        let response = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_2);
        assert_eq!(upstream.log()[0].version, Version::HTTP_2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_testkit_ca_pem_negotiates_http2() {
    bounded(async {
        let upstream = TestUpstream::builder().start_tls_async().await.unwrap();
        let pem = upstream.ca().unwrap().cert_pem().as_bytes().to_vec();
        let client = client(ClientConfig {
            extra_ca: Some(ExtraCa::Pem(pem)),
            ..ClientConfig::default()
        });
        assert!(completions(&upstream).starts_with("https://"));
        let response = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_2);
        // A second request shares the HTTP/2 connection.
        let mut stream = client
            .stream(chat(&completions(&upstream), true))
            .await
            .unwrap();
        assert_eq!(stream.version, Version::HTTP_2);
        let (_, error) = drain(&mut stream).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(client.connections_opened(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_ca_file() {
    bounded(async {
        let upstream = TestUpstream::builder().start_tls_async().await.unwrap();
        let path = std::env::temp_dir().join(format!(
            "tollgate-transport-ca-{}-{}.pem",
            std::process::id(),
            upstream.addr().port()
        ));
        std::fs::write(&path, upstream.ca().unwrap().cert_pem()).unwrap();
        let client = Client::new(ClientConfig {
            extra_ca: Some(ExtraCa::File(path.clone())),
            ..ClientConfig::default()
        });
        let _ = std::fs::remove_file(&path);
        let client = client.unwrap();
        let response = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_ca_is_a_tls_failure() {
    bounded(async {
        let upstream = TestUpstream::builder().start_tls_async().await.unwrap();
        let client = client(ClientConfig::default());
        let err = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap_err();
        assert_eq!(
            err.failure(),
            Some(Failure::Connect(ConnectKind::Tls)),
            "{err}"
        );
        assert!(err.to_string().contains("TLS"), "{err}");
        assert_eq!(upstream.request_count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_and_no_secret_in_messages() {
    bounded(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = client(ClientConfig::default());
        let mut request = chat(&format!("http://{addr}/v1/chat/completions"), false);
        request.headers_mut().insert(
            "authorization",
            "Bearer sk-very-secret-key".parse().unwrap(),
        );
        let err = client.send(request).await.unwrap_err();
        assert_eq!(
            err.failure(),
            Some(Failure::Connect(ConnectKind::Refused)),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-very-secret"));
        assert!(!format!("{err:?}").contains("sk-very-secret"));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_tls_handshake_is_a_connect_timeout() {
    bounded(async {
        // Accepted by the kernel (backlog) but never answered: the TLS handshake stalls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = client(ClientConfig {
            timeouts: timeouts(200, 5_000, 5_000, 10_000),
            ..ClientConfig::default()
        });
        let err = client
            .send(chat(&format!("https://{addr}/v1/chat/completions"), false))
            .await
            .unwrap_err();
        assert_eq!(
            err.failure(),
            Some(Failure::Timeout(TimeoutKind::Connect)),
            "{err}"
        );
        drop(listener);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_first_byte_is_a_first_byte_timeout() {
    bounded(async {
        let slow = Action::SlowFirstByte(Duration::from_secs(5));
        let err = error_after(slow, timeouts(1_000, 200, 5_000, 10_000), false).await;
        assert_eq!(
            err.failure(),
            Some(Failure::Timeout(TimeoutKind::FirstByte)),
            "{err}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_drip_stream_is_an_idle_timeout() {
    bounded(async {
        let drip = Action::SlowDrip(Duration::from_secs(5));
        let err = error_after(drip, timeouts(1_000, 5_000, 200, 10_000), true).await;
        assert_eq!(
            err.failure(),
            Some(Failure::Timeout(TimeoutKind::Idle)),
            "{err}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_drip_json_is_a_total_timeout() {
    bounded(async {
        let drip = Action::SlowDrip(Duration::from_secs(5));
        let err = error_after(drip, timeouts(1_000, 5_000, 5_000, 400), false).await;
        assert_eq!(
            err.failure(),
            Some(Failure::Timeout(TimeoutKind::Total)),
            "{err}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_is_an_error() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let client = client(ClientConfig {
            max_response_bytes: 64,
            ..ClientConfig::default()
        });
        let err = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::TooLarge { limit: 64, .. }),
            "{err}"
        );
        assert_eq!(err.failure(), Some(Failure::Malformed));
        // The same body fits the default limit.
        let fits = Client::new(ClientConfig::default()).unwrap();
        assert!(
            fits.send(chat(&completions(&upstream), false))
                .await
                .is_ok()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_stream_is_an_error_not_a_clean_end() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        upstream.script(Match::any(), [Action::CutStreamAfter(2)]);
        let client = client(ClientConfig::default());
        let mut stream = client
            .stream(chat(&completions(&upstream), true))
            .await
            .unwrap();
        assert_eq!(stream.status, StatusCode::OK);
        let (chunks, error) = drain(&mut stream).await;
        assert!(!chunks.is_empty());
        let error = error.expect("a cut stream must not end cleanly");
        assert_eq!(error.failure(), Some(Failure::CutStream), "{error}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_mid_json_body_is_an_error() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        upstream.script(Match::any(), [Action::ResetMidBody]);
        let client = client(ClientConfig::default());
        let err = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap_err();
        assert_eq!(err.failure(), Some(Failure::CutStream), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_reuse_one_connection() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let client = client(ClientConfig::default());
        for _ in 0..3 {
            let response = client
                .send(chat(&completions(&upstream), false))
                .await
                .unwrap();
            assert_eq!(response.status, StatusCode::OK);
        }
        let mut stream = client
            .stream(chat(&completions(&upstream), true))
            .await
            .unwrap();
        let (_, error) = drain(&mut stream).await;
        assert!(error.is_none());
        let response = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(upstream.request_count(), 5);
        assert_eq!(client.connections_opened(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn error_status_is_a_response_not_an_error() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        upstream.script(Match::any(), [Action::Status429 { retry_after: 3 }]);
        let client = client(ClientConfig::default());
        let response = client
            .send(chat(&completions(&upstream), false))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers["retry-after"], "3");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_errors_have_no_failure_class() {
    let client = client(ClientConfig::default());
    let err = bounded(client.send(chat("/v1/chat/completions", false)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::InvalidRequest(_)), "{err}");
    assert_eq!(err.failure(), None);

    let err = Client::new(ClientConfig {
        extra_ca: Some(ExtraCa::Pem(b"not a certificate".to_vec())),
        ..ClientConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, TransportError::Config(_)), "{err}");
    let err = Client::new(ClientConfig {
        extra_ca: Some(ExtraCa::File("/nonexistent/tollgate-ca.pem".into())),
        ..ClientConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, TransportError::Config(_)), "{err}");
}

/// A server that answers one request per connection and then closes it, without saying so
/// (no `Connection: close`): the client pools each connection and finds it dead on the next
/// call, either before sending (the pool drops it) or as hyper hands the unsent request back;
/// either way the request goes out on a new connection, with its headers and body intact. (When
/// the close arrives while the request is being written, the call fails with a reset instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_by_the_server_is_replaced_and_the_request_resent() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const CALLS: usize = 40;
    let server = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for _ in 0..CALLS {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the body (Content-Length) of one request.
            loop {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before a whole request");
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length {
                        bodies.push(text[end + 4..end + 4 + length].to_owned());
                        assert!(text.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:"));
                        break;
                    }
                }
            }
            let answer = r#"{"ok":true}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            // Closed at once: the client learns it only when it tries the connection again.
        }
        bodies
    });
    bounded(async {
        let client = client(ClientConfig::default());
        let url = format!("http://{addr}/v1/chat/completions");
        for i in 0..CALLS {
            let request = || {
                Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Bytes::from(format!(r#"{{"n":{i}}}"#)))
                    .unwrap()
            };
            // A request written just before the server's close reached the client fails with a
            // reset (it may have been written, so the client does not send it again); the caller
            // retries it, as the engine's retry rules would. The server never read it.
            let mut result = client.send(request()).await;
            for _ in 0..3 {
                match &result {
                    Err(TransportError::Connect {
                        kind: ConnectKind::Reset,
                        ..
                    }) => result = client.send(request()).await,
                    _ => break,
                }
            }
            let response = result.unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(&response.body[..], br#"{"ok":true}"#);
        }
        assert_eq!(client.connections_opened(), CALLS as u64);
    })
    .await;
    let bodies = server.join().expect("the server thread ran");
    let expected: Vec<String> = (0..CALLS).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    assert_eq!(
        bodies, expected,
        "each request arrived once, whole, in order"
    );
}
