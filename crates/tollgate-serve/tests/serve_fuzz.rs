//! No input makes `tollgate serve` panic or stop answering: random bytes, mangled HTTP/1 and
//! HTTP/2, and chat requests whose JSON fields hold every wrong type, against
//! `tollgate_serve::Proxy` in front of the testkit upstream. A panic hook records panics on
//! every thread (tokio catches them in spawned tasks, so the proxy would otherwise hide them).
//!
//! The cases come from a seeded generator; `TOLLGATE_FUZZ_SEED` replays one run and
//! `TOLLGATE_FUZZ_CASES` sets how many cases of each kind run (default 300).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::Engine;
use tollgate::policy::{Policy, Serve, VirtualKey};
use tollgate_serve::Proxy;
use tollgate_testkit::TestUpstream;

const KEY: &str = "vk-fuzz-0123456789abcdef";

/// xorshift64*: small, seeded, the same cases on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn engine(up: &TestUpstream) -> Engine {
    let mut p = Policy::from_toml(&format!(
        r#"version = 1
[[upstream]]
name = "test"
base_url = "{}"
[[route]]
model = "gpt-4o"
targets = [{{ upstream = "test", model = "gpt-4o" }}]
[[route]]
model = "gpt-4o-mini"
targets = [{{ upstream = "test", model = "gpt-4o-mini" }}]
[[budget]]
name = "per-tenant"
scope = ["tenant"]
tokens_per_minute = 100000000
[cache]
enabled = true
"#,
        up.base_url()
    ))
    .expect("valid policy");
    p.serve = Some(Serve {
        listen: "127.0.0.1:0".parse().unwrap(),
        keys: vec![VirtualKey::from_key(KEY, "fuzz")],
        max_body_bytes: 64 * 1024,
        max_header_bytes: 8 * 1024,
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        ..Serve::default()
    });
    Engine::new(p)
}

/// Records every panic of the process, whatever thread it happens on.
fn panic_log() -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sink.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(info.to_string());
        previous(info);
    }));
    log
}

/// Requests to mangle: one of each kind the proxy serves, and a few it does not.
fn templates() -> Vec<Vec<u8>> {
    let chat = json!({"model": "gpt-4o", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hello"}]})
    .to_string();
    let stream = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hello"}]})
    .to_string();
    vec![
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{chat}",
            chat.len()
        ),
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY}\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{stream}\r\n0\r\n\r\n",
            stream.len()
        ),
        format!("GET /v1/models HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY}\r\n\r\n"),
        "GET /metrics HTTP/1.0\r\n\r\n".to_owned(),
        "POST /admin/reload HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer nope\r\n\
         content-length: 11\r\n\r\nversion = 1"
            .to_owned(),
        "GET /healthz HTTP/1.1\r\nhost: proxy\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc"
            .to_owned(),
        // The HTTP/2 preface, a SETTINGS frame and a HEADERS frame of garbage.
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x10\x01\x05\0\0\0\x01garbage-hpack!!!"
            .to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Heads and bodies no client should send, each written out in full.
fn oddities() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = [
        "GET / HTTP/1.1\r\n\r\n",
        "GET /v1/models\r\n\r\n",
        "GET /v1/models HTTP/9.9\r\nhost: x\r\n\r\n",
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\nhost: 127.0.0.1:1\r\n\r\n",
        "GET http://elsewhere.example/v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /v1/%ff%00/../models?x=%zz HTTP/1.1\r\nhost: x\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n{}",
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\nzz\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n{}",
        "GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nhost: x\r\n: empty-name\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n host: folded\r\n\r\n",
        "\r\n\r\n\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\u{0}\u{0}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Authorization headers that are not text, not bearer, or far too long.
    for auth in [
        &b"Bearer \xff\xfe\xfd"[..],
        b"Basic Zm9vOmJhcg==",
        b"Bearer",
        b"Bearer    ",
        b"bEaReR vk-fuzz-0123456789abcdef",
    ] {
        let mut c = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: ".to_vec();
        c.extend_from_slice(auth);
        c.extend_from_slice(b"\r\n\r\n");
        cases.push(c);
    }
    let long = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    cases.push(long.into_bytes());
    let many: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    cases.push(format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n").into_bytes());
    let big = "x".repeat(100 * 1024);
    cases.push(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             content-length: {}\r\n\r\n{big}",
            big.len()
        )
        .into_bytes(),
    );
    cases
}

/// A mangled copy of `template`: flipped bytes, a cut, an insertion or a repeated piece.
fn mangle(rng: &mut Rng, template: &[u8]) -> Vec<u8> {
    let mut out = template.to_vec();
    for _ in 0..=rng.below(4) {
        if out.is_empty() {
            break;
        }
        let at = rng.below(out.len());
        match rng.below(5) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out.truncate(at),
            2 => {
                let len = rng.below(64);
                let junk = rng.bytes(len);
                out.splice(at..at, junk);
            }
            3 => {
                let end = (at + rng.below(32)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => out[at] = *rng.pick(b"\r\n\0 :%{}\"\x7f\xff"),
        }
    }
    out
}

/// Sends `bytes` on a new connection and reads until the proxy closes it (bounded): the
/// proxy closes a connection whatever it was sent, within its head, body and idle timeouts.
async fn raw(addr: SocketAddr, bytes: Vec<u8>, half_close: bool) -> Result<(), String> {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The proxy may close before reading everything; that is an answer too.
    let _ = tcp.write_all(&bytes).await;
    if half_close {
        let _ = tcp.shutdown().await;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .map_err(|_| {
            format!("the proxy kept the connection open past every timeout (half-closed: {half_close}): {shown:?}")
        })
}

/// A value of the wrong (or right) shape for any chat field.
fn value(rng: &mut Rng, depth: usize) -> Value {
    let scalar = |rng: &mut Rng| -> Value {
        match rng.below(12) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(-1),
            3 => json!(0),
            4 => json!(u64::MAX),
            5 => json!(1.0e300),
            6 => json!(-0.5),
            7 => json!(""),
            8 => json!("hello"),
            9 => json!("\u{0}\u{202e}\u{1F600}\u{FFFF}"),
            10 => json!("x".repeat(rng.below(5000))),
            _ => json!("gpt-4o"),
        }
    };
    if depth == 0 {
        return scalar(rng);
    }
    match rng.below(4) {
        0 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        1 => {
            let keys = [
                "role",
                "content",
                "type",
                "text",
                "name",
                "tool_calls",
                "image_url",
            ];
            Value::Object(
                (0..rng.below(4))
                    .map(|_| ((*rng.pick(&keys)).to_owned(), value(rng, depth - 1)))
                    .collect(),
            )
        }
        _ => scalar(rng),
    }
}

/// A message of a valid shape: a role and text, or a list of parts.
fn message(rng: &mut Rng) -> Value {
    let role = *rng.pick(&["system", "user", "assistant", "developer"]);
    let text = match rng.below(4) {
        0 => String::new(),
        1 => "\u{0}\u{202e}\u{1F600}\u{FFFF} \u{4f60}\u{597d}".to_owned(),
        2 => "word ".repeat(rng.below(400)),
        _ => "hello".to_owned(),
    };
    if rng.below(3) == 0 {
        json!({"role": role, "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        ]})
    } else {
        json!({"role": role, "content": text})
    }
}

/// A chat request body: a valid request with up to three fields replaced by values of any
/// shape (or added where they do not belong).
fn chat_body(rng: &mut Rng) -> String {
    // A deeply nested value now and then (serde_json's recursion limit is 128).
    if rng.below(20) == 0 {
        let depth = rng.below(300);
        let nested = "[".repeat(depth) + &"]".repeat(depth);
        return format!("{{\"model\": \"gpt-4o\", \"messages\": {nested}}}");
    }
    let messages: Vec<Value> = (0..=rng.below(3)).map(|_| message(rng)).collect();
    let mut body = json!({
        "model": *rng.pick(&["gpt-4o", "gpt-4o-mini"]),
        "messages": messages,
        "stream": rng.below(2) == 0,
        "max_tokens": 1 + rng.below(50),
    });
    if rng.below(3) == 0 {
        body["stream_options"] = json!({"include_usage": true});
    }
    let fields = [
        "model",
        "messages",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream_options",
        "tools",
        "tool_choice",
        "response_format",
        "temperature",
        "seed",
        "user",
        "logit_bias",
    ];
    for _ in 0..rng.below(4) {
        let field = *rng.pick(&fields);
        body[field] = match field {
            "messages" if rng.below(2) == 0 => {
                let mut m = messages_of(&body);
                m.push(value(rng, 2));
                Value::Array(m)
            }
            "model" if rng.below(2) == 0 => json!(*rng.pick(&["unknown-model", "GPT-4O", ""])),
            _ => value(rng, 2),
        };
    }
    body.to_string()
}

fn messages_of(body: &Value) -> Vec<Value> {
    body["messages"].as_array().cloned().unwrap_or_default()
}

#[test]
fn no_input_panics_or_stops_the_proxy() {
    let panics = panic_log();
    let seed = env_u64("TOLLGATE_FUZZ_SEED", 0x7011_6a7e_5eed_0001).max(1);
    let cases = usize::try_from(env_u64("TOLLGATE_FUZZ_CASES", 300)).unwrap_or(300);
    eprintln!("seed {seed:#x}, {cases} cases of each kind");
    let up = TestUpstream::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let proxy = Proxy::start(engine(&up), None, None).await.unwrap();
        let addr = proxy.addr();
        let mut rng = Rng(seed);

        // Raw bytes: written whole, random, or mangled requests.
        let mut inputs = oddities();
        let templates = templates();
        inputs.extend(templates.iter().cloned());
        for i in 0..cases {
            inputs.push(if i % 4 == 0 {
                let len = rng.below(2048);
                rng.bytes(len)
            } else {
                let template = rng.pick(&templates).clone();
                mangle(&mut rng, &template)
            });
        }
        let mut failures = Vec::new();
        for batch in inputs.chunks(32) {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, bytes) in batch.iter().enumerate() {
                tasks.spawn(raw(addr, bytes.clone(), i % 2 == 0));
            }
            while let Some(r) = tasks.join_next().await {
                if let Err(e) = r.unwrap() {
                    failures.push(e);
                }
            }
        }
        assert!(failures.is_empty(), "{failures:?}");

        // Chat requests with wrong types in every field, over pooled keep-alive connections.
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut statuses = BTreeMap::new();
        for batch in (0..cases).collect::<Vec<_>>().chunks(16) {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in batch {
                let body = chat_body(&mut rng);
                let client = client.clone();
                tasks.spawn(async move {
                    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                        .header("authorization", format!("Bearer {KEY}"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.clone())))
                        .unwrap();
                    let answer = async {
                        let resp = client.request(req).await.map_err(|e| e.to_string())?;
                        let status = resp.status();
                        let bytes = resp
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| e.to_string())?
                            .to_bytes();
                        Ok::<_, String>((status, bytes))
                    };
                    let (status, bytes) = tokio::time::timeout(Duration::from_secs(30), answer)
                        .await
                        .map_err(|_| format!("no answer in time to {body}"))?
                        .map_err(|e| format!("{e} for {body}"))?;
                    if !status.is_success() {
                        // Every refusal is an OpenAI error object with a message.
                        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                            format!(
                                "{status} not JSON ({e}): {}",
                                String::from_utf8_lossy(&bytes)
                            )
                        })?;
                        if !v["error"]["message"].is_string() {
                            return Err(format!("{status} without error.message: {v} for {body}"));
                        }
                    }
                    if status == StatusCode::INTERNAL_SERVER_ERROR {
                        return Err(format!(
                            "500 for {body}: {}",
                            String::from_utf8_lossy(&bytes)
                        ));
                    }
                    Ok(status.as_u16())
                });
            }
            while let Some(r) = tasks.join_next().await {
                match r.unwrap() {
                    Ok(s) => *statuses.entry(s).or_insert(0u32) += 1,
                    Err(e) => failures.push(e),
                }
            }
        }
        eprintln!("chat statuses: {statuses:?}");
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(
            statuses.contains_key(&200) && statuses.contains_key(&400),
            "the generator reaches both answers and refusals: {statuses:?}"
        );

        // Still answering, and nothing in flight.
        let req = Request::get(format!("http://{addr}/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let health = client.request(req).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        proxy.shutdown().await;
    });
    let panics = panics.lock().unwrap().clone();
    assert!(panics.is_empty(), "panics: {panics:#?}");
}
