//! `tollgate::transport::Client` through an HTTP `CONNECT` proxy, connection warm-up, and HTTP/2
//! keep-alive pings, against the testkit upstream on loopback. The proxy is written here: it
//! counts tunnels, records the CONNECT heads, can demand `Proxy-Authorization`, and can count
//! the HTTP/2 PING frames a client sends through a cleartext (h2c) tunnel.
//! Every wait is bounded; nothing asserts on timing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::policy::Timeouts;
use tollgate::retry::{ConnectKind, Failure, TimeoutKind};
use tollgate::transport::{Client, ClientConfig, ExtraCa, ProxyConfig, TransportError};
use tollgate_testkit::TestUpstream;

const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("the test took too long")
}

/// What the test proxy does with a CONNECT.
#[derive(Clone)]
enum Mode {
    /// Opens every tunnel.
    Open,
    /// Opens tunnels only for this exact `Proxy-Authorization` value, else answers 407.
    RequireAuth(String),
}

/// A CONNECT proxy on `127.0.0.1:0`.
struct TestProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    pings: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TestProxy {
    async fn start(mode: Mode) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let pings = Arc::new(AtomicUsize::new(0));
        let state = (tunnels.clone(), heads.clone(), pings.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (tunnels, heads, pings) = state.clone();
                tokio::spawn(serve(client, mode.clone(), tunnels, heads, pings));
            }
        });
        TestProxy {
            addr,
            tunnels,
            heads,
            pings,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url_with(&self, userinfo: &str) -> String {
        format!("http://{userinfo}@{}", self.addr)
    }

    fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

async fn serve(
    mut client: TcpStream,
    mode: Mode,
    tunnels: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    pings: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    heads.lock().push(text.clone());
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let target = match request_line.split(' ').collect::<Vec<_>>()[..] {
        ["CONNECT", target, "HTTP/1.1"] => target.to_owned(),
        _ => {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
    };
    if let Mode::RequireAuth(expected) = &mode
        && authorization.as_deref() != Some(expected.as_str())
    {
        let _ = client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      proxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
        return;
    }
    let Ok(upstream) = TcpStream::connect(target.as_str()).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    // Counted before the client can see the answer, so a count read after the client's
    // call returns always includes this tunnel.
    tunnels.fetch_add(1, Ordering::SeqCst);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_upstream, mut to_upstream) = upstream.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_upstream, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut scan = H2cScan::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pings.fetch_add(scan.feed(&buf[..n]), Ordering::SeqCst);
                if to_upstream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to_upstream.shutdown().await;
    let _ = down.await;
}

/// Counts the PING frames (not ACKs) a client sends on a cleartext HTTP/2 connection; gives up
/// on anything that does not start with the HTTP/2 preface.
#[derive(Default)]
struct H2cScan {
    buf: Vec<u8>,
    started: bool,
    off: bool,
}

impl H2cScan {
    const PREFACE: &'static [u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.off {
            return 0;
        }
        self.buf.extend_from_slice(bytes);
        if !self.started {
            if self.buf.len() < Self::PREFACE.len() {
                return 0;
            }
            if !self.buf.starts_with(Self::PREFACE) {
                self.off = true;
                return 0;
            }
            self.buf.drain(..Self::PREFACE.len());
            self.started = true;
        }
        let mut pings = 0;
        while self.buf.len() >= 9 {
            let len = usize::from(self.buf[0]) << 16
                | usize::from(self.buf[1]) << 8
                | usize::from(self.buf[2]);
            if self.buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (self.buf[3], self.buf[4]);
            if kind == 0x6 && flags & 0x1 == 0 {
                pings += 1;
            }
            self.buf.drain(..9 + len);
        }
        pings
    }
}

fn chat(url: &str) -> Request<Bytes> {
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    Request::post(url)
        .header("content-type", "application/json")
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

fn client(config: ClientConfig) -> Client {
    Client::new(config).expect("client")
}

fn via(proxy: ProxyConfig) -> ClientConfig {
    ClientConfig {
        proxy: Some(proxy),
        ..ClientConfig::default()
    }
}

fn trusting(upstream: &TestUpstream, config: ClientConfig) -> ClientConfig {
    let pem = upstream.ca().expect("a TLS upstream").cert_pem();
    ClientConfig {
        extra_ca: Some(ExtraCa::Pem(pem.as_bytes().to_vec())),
        ..config
    }
}

/// A port on 127.0.0.1 nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_through_the_proxy() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let proxy = TestProxy::start(Mode::Open).await;
        let client = client(via(ProxyConfig::new(proxy.url())));
        let url = upstream.url("/v1/chat/completions");
        for _ in 0..3 {
            let response = client.send(chat(&url)).await.unwrap();
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.version, Version::HTTP_11);
        }
        assert_eq!(
            proxy.tunnels(),
            1,
            "one pooled connection through one tunnel"
        );
        assert_eq!(client.connections_opened(), 1);
        assert_eq!(upstream.request_count(), 3);
        let authority = upstream.addr().to_string();
        let heads = proxy.heads();
        assert!(
            heads[0].starts_with(&format!("CONNECT {authority} HTTP/1.1\r\n")),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("\r\nHost: {authority}\r\n")),
            "{}",
            heads[0]
        );
        assert!(
            !heads[0]
                .to_ascii_lowercase()
                .contains("proxy-authorization")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_and_http2_through_the_proxy() {
    bounded(async {
        let upstream = TestUpstream::builder().start_tls_async().await.unwrap();
        let proxy = TestProxy::start(Mode::Open).await;
        let client = client(trusting(&upstream, via(ProxyConfig::new(proxy.url()))));
        let url = upstream.url("/v1/chat/completions");
        let response = client.send(chat(&url)).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_2);
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(json["object"], "chat.completion");
        let mut stream = client.stream(chat(&url)).await.unwrap();
        let mut chunks = 0;
        while let Some(chunk) = stream.next_chunk().await {
            chunk.unwrap();
            chunks += 1;
        }
        assert!(chunks > 0);
        assert_eq!(proxy.tunnels(), 1, "HTTP/2 shares one tunnel");
        assert_eq!(client.connections_opened(), 1);
        assert!(upstream.log().iter().all(|a| a.version == Version::HTTP_2));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_credentials_are_sent_and_never_shown() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let expected = format!("Basic {}", STANDARD.encode("alice:p@ss w0rd"));
        let proxy = TestProxy::start(Mode::RequireAuth(expected.clone())).await;
        let url = upstream.url("/v1/chat/completions");

        // Percent-encoded user info is decoded before it is encoded as Basic credentials.
        let good = client(via(ProxyConfig::new(proxy.url_with("alice:p%40ss%20w0rd"))));
        assert_eq!(good.send(chat(&url)).await.unwrap().status, StatusCode::OK);
        assert!(proxy.heads()[0].contains(&format!("Proxy-Authorization: {expected}\r\n")));

        let secret = "WRONG-pass-5e1d";
        let config = via(ProxyConfig::new(proxy.url_with(&format!("alice:{secret}"))));
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains(secret), "{shown}");
        let bad = client(config);
        assert!(!format!("{bad:?}").contains(secret));
        let err = bad.send(chat(&url)).await.unwrap_err();
        let TransportError::Connect { kind, message, .. } = &err else {
            panic!("expected a connect error, got {err:?}");
        };
        assert_eq!(*kind, ConnectKind::Other);
        assert!(message.contains("407"), "{message}");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(secret) && !text.contains("alice"), "{text}");
        }

        let anonymous = client(via(ProxyConfig::new(proxy.url())));
        let err = anonymous.send(chat(&url)).await.unwrap_err();
        assert!(err.to_string().contains("407"), "{err}");
        assert_eq!(proxy.tunnels(), 1);
        assert_eq!(upstream.request_count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_down_is_a_refused_connection() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let port = closed_port();
        let client = client(via(ProxyConfig::new(format!(
            "http://user:hunter2@127.0.0.1:{port}"
        ))));
        let err = client
            .send(chat(&upstream.url("/v1/chat/completions")))
            .await
            .unwrap_err();
        assert_eq!(err.failure(), Some(Failure::Connect(ConnectKind::Refused)));
        let text = err.to_string();
        assert!(text.contains(&format!("proxy 127.0.0.1:{port}")), "{text}");
        assert!(text.contains(&upstream.addr().to_string()), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(upstream.request_count(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_proxy_is_a_connect_timeout() {
    bounded(async {
        // Accepts TCP (the kernel's backlog) but never answers the CONNECT.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = client(ClientConfig {
            timeouts: Timeouts {
                connect: Duration::from_millis(200),
                ..Timeouts::default()
            },
            ..via(ProxyConfig::new(format!(
                "http://{}",
                silent.local_addr().unwrap()
            )))
        });
        let err = client
            .send(chat("https://127.0.0.1:9/v1/chat/completions"))
            .await
            .unwrap_err();
        assert_eq!(err.failure(), Some(Failure::Timeout(TimeoutKind::Connect)));
        assert_eq!(client.warm_up("https://127.0.0.1:9", 1).await, Err(err));
        drop(silent);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_target_is_the_proxys_status() {
    bounded(async {
        let proxy = TestProxy::start(Mode::Open).await;
        let client = client(via(ProxyConfig::new(proxy.url())));
        let url = format!("http://127.0.0.1:{}/v1/models", closed_port());
        let err = client
            .send(Request::get(url).body(Bytes::new()).unwrap())
            .await;
        let err = err.unwrap_err();
        assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("502 Bad Gateway"), "{err}");
        assert_eq!(proxy.tunnels(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn no_proxy_hosts_connect_directly() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let proxy = TestProxy::start(Mode::Open).await;
        let proxy_url = proxy.url();
        let env = |name: &str| match name {
            "https_proxy" => Some(proxy_url.clone()),
            "NO_PROXY" => Some("example.invalid, 127.0.0.1".to_owned()),
            _ => None,
        };
        let config = ProxyConfig::from_vars(env).expect("a proxy");
        let direct = client(via(config));
        let url = upstream.url("/v1/chat/completions");
        assert_eq!(direct.send(chat(&url)).await.unwrap().status, 200);
        assert_eq!(proxy.tunnels(), 0);
        assert!(proxy.heads().is_empty());

        // `localhost` is not 127.0.0.1: the proxy is used.
        let proxied = client(via(ProxyConfig {
            url: proxy.url(),
            no_proxy: vec!["localhost".into()],
        }));
        assert_eq!(proxied.send(chat(&url)).await.unwrap().status, 200);
        assert_eq!(proxy.tunnels(), 1);
        let everything = client(via(ProxyConfig {
            url: proxy.url(),
            no_proxy: vec!["*".into()],
        }));
        assert_eq!(everything.send(chat(&url)).await.unwrap().status, 200);
        assert_eq!(proxy.tunnels(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_up_fills_the_http1_pool() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let proxy = TestProxy::start(Mode::Open).await;
        let client = client(via(ProxyConfig::new(proxy.url())));
        assert_eq!(client.warm_up(&upstream.origin(), 3).await, Ok(3));
        assert_eq!(client.connections_opened(), 3);
        assert_eq!(proxy.tunnels(), 3);
        assert_eq!(upstream.request_count(), 0, "warm-up sends no request");

        let url = upstream.url("/v1/chat/completions");
        for _ in 0..4 {
            assert_eq!(client.send(chat(&url)).await.unwrap().status, 200);
        }
        assert_eq!(
            client.connections_opened(),
            3,
            "the calls used warm connections"
        );
        // The pool still holds three idle connections: nothing to do.
        assert_eq!(client.warm_up(&url, 3).await, Ok(0));
        assert_eq!(client.warm_up(&url, 5).await, Ok(2));
        assert_eq!(client.connections_opened(), 5);
        assert_eq!(client.warm_up(&url, 0).await, Ok(0));

        // Never more than the pool keeps.
        let small = self::client(ClientConfig {
            pool_max_idle_per_host: 2,
            ..ClientConfig::default()
        });
        assert_eq!(small.warm_up(&upstream.origin(), 10).await, Ok(2));
        let none = self::client(ClientConfig {
            pool_max_idle_per_host: 0,
            ..ClientConfig::default()
        });
        assert_eq!(none.warm_up(&upstream.origin(), 10).await, Ok(0));
        assert_eq!(none.connections_opened(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_up_opens_one_http2_connection() {
    bounded(async {
        let upstream = TestUpstream::builder().start_tls_async().await.unwrap();
        let client = client(trusting(&upstream, ClientConfig::default()));
        assert_eq!(client.warm_up(&upstream.origin(), 8).await, Ok(1));
        assert_eq!(client.connections_opened(), 1);
        let url = upstream.url("/v1/chat/completions");
        let response = client.send(chat(&url)).await.unwrap();
        assert_eq!(response.version, Version::HTTP_2);
        assert_eq!(
            client.connections_opened(),
            1,
            "the call used the warm connection"
        );
        assert_eq!(client.warm_up(&url, 8).await, Ok(0));
        assert_eq!(client.connections_opened(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_up_errors() {
    bounded(async {
        let client = client(ClientConfig::default());
        let err = client
            .warm_up(&format!("http://127.0.0.1:{}", closed_port()), 2)
            .await
            .unwrap_err();
        assert_eq!(err.failure(), Some(Failure::Connect(ConnectKind::Refused)));
        for bad in ["not a url", "ftp://127.0.0.1:21", "/v1/models"] {
            let err = client.warm_up(bad, 1).await.unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidRequest(_)),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(client.connections_opened(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_keep_alive_pings_an_idle_connection() {
    bounded(async {
        let upstream = TestUpstream::builder().start_async().await.unwrap();
        let proxy = TestProxy::start(Mode::Open).await;
        let client = client(ClientConfig {
            http2_prior_knowledge: true,
            http2_keep_alive: Some(Duration::from_millis(500)),
            ..via(ProxyConfig::new(proxy.url()))
        });
        let url = upstream.url("/v1/chat/completions");
        let response = client.send(chat(&url)).await.unwrap();
        assert_eq!(response.version, Version::HTTP_2);
        // Idle now: wait (bounded) for the proxy to see a PING go through the tunnel.
        let mut polls = 0;
        while proxy.pings.load(Ordering::SeqCst) == 0 {
            assert!(polls < 500, "no HTTP/2 PING within the bounded wait");
            polls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(client.send(chat(&url)).await.unwrap().status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_http2_with_keep_alive_configured_works() {
    bounded(async {
        let upstream = TestUpstream::builder().start_tls_async().await.unwrap();
        let client = client(trusting(
            &upstream,
            ClientConfig {
                http2_keep_alive: Some(Duration::from_secs(10)),
                ..ClientConfig::default()
            },
        ));
        let url = upstream.url("/v1/chat/completions");
        for _ in 0..3 {
            let response = client.send(chat(&url)).await.unwrap();
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.version, Version::HTTP_2);
        }
        assert_eq!(client.connections_opened(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_settings_are_config_errors() {
    let zero = Client::new(ClientConfig {
        http2_keep_alive: Some(Duration::ZERO),
        ..ClientConfig::default()
    })
    .unwrap_err();
    assert!(matches!(zero, TransportError::Config(_)), "{zero:?}");
    for url in [
        "https://u:TOPSECRET@proxy:443",
        "socks5://u:TOPSECRET@proxy:1080",
        "http://u:TOPSECRET@proxy:notaport",
    ] {
        let err = Client::new(via(ProxyConfig::new(url))).unwrap_err();
        assert!(matches!(err, TransportError::Config(_)), "{err:?}");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    }
}
