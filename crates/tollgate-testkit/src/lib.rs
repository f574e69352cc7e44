//! tollgate-testkit: a fault-injecting OpenAI-compatible upstream on loopback, and a Redis launcher.
//!
//! [`TestUpstream`] is a real hyper server on `127.0.0.1:0` speaking the OpenAI wire format:
//! `POST /v1/chat/completions` as JSON or SSE (`"stream": true`, with the usage chunk when
//! `stream_options.include_usage` is set), `GET /v1/models` and `GET /v1/models/{id}`, and
//! OpenAI-format errors for bad requests. Plain HTTP serves HTTP/1.1 and h2c (prior
//! knowledge); [`Builder::start_tls`] serves HTTPS (ALPN `h2`, `http/1.1`) with a CA generated
//! on the spot ([`TestCa`]).
//!
//! Replies are deterministic: `n` words of a fixed [`VOCABULARY`] (`n` from `max_tokens` or
//! `max_completion_tokens`, capped by [`Builder::max_words`], default
//! [`Builder::default_words`]); `usage.prompt_tokens` is [`tollgate::tokens::count_chat`] of the
//! request and `completion_tokens` the words sent.
//!
//! Beside it, on the same upstream, it speaks Baidu's ERNIE v1 ("wenxinworkshop") chat:
//! `POST` [`BAIDU_CHAT_PATH`]`/{endpoint}` (any endpoint name: `completions`,
//! `completions_pro`, `ernie_speed`, ...; [`TestUpstream::baidu_base_url`]). The body is
//! ERNIE's (`messages` alternating user/assistant from user and odd in number, `system`,
//! `stream`, `temperature` in (0, 1], `top_p`, `penalty_score` in [1, 2],
//! `max_output_tokens` >= 2, `user_id`, `stop`); a bad one, or one carrying an OpenAI-only
//! field (`model`, `max_tokens`, `max_completion_tokens`, `frequency_penalty`,
//! `presence_penalty`, `user`, `stream_options`, `n`), gets ERNIE's error: HTTP 200 and
//! `{"error_code", "error_msg"}` (336002 invalid JSON, 336003 invalid parameter, 336006 bad
//! `messages`). The answer is `{"id": "as-...", "result", "finish_reason": "normal"|"length",
//! "usage", ...}`; a stream is SSE events with `sentence_id`, a few words of `result` each and
//! the usage so far, the last with `"is_end": true`, and no `[DONE]`. The reply words and
//! token counts are those of the OpenAI path (`max_output_tokens` as `max_tokens`; the
//! `system` string counted as a first system message). The arrival's
//! [`model`](Arrival::model) is the endpoint name, so [`Match::model`] scripts one endpoint;
//! [`Arrival::json`] gives the body as sent, to assert a client's mapping.
//!
//! Faults come from a script ([`TestUpstream::script`] with a [`Match`] and a queue of
//! [`Action`]s) or, for requests no script takes, from a seeded [`FaultMix`]. Every request
//! is logged as an [`Arrival`] ([`TestUpstream::log`]). Besides the HTTP-level faults, scripts
//! can send provider error bodies ([`Action::Respond`] with [`Canned::openai_error`],
//! [`Canned::zhipu_error`], [`Canned::siliconflow_error`]), ERNIE's errors
//! ([`Action::BaiduError`], [`Action::BaiduErrorHeader`] for Qianfan's `X-Bce-Error-*`
//! headers), ERNIE streams that stop short ([`Action::BaiduStreamWithoutEnd`],
//! [`Action::BaiduStreamErrorAfter`]), and a JSON answer to a stream request
//! ([`Action::JsonForStream`]).
//!
//! [`Builder::auth`] makes `/v1/*` require credentials ([`TestAuth`]: bearer keys, Zhipu-style
//! JWTs, or Baidu-style OAuth2 tokens from a token endpoint the upstream serves); a request
//! that fails gets a 401 and never reaches the scripts or the fault mix. The Baidu chat path
//! takes OAuth2 tokens as `?access_token=` and refuses as ERNIE does: HTTP 200 with
//! `error_code` 110 (missing or unknown token) or 111 (expired, or revoked by
//! [`TestUpstream::revoke_tokens`]).
//!
//! The upstream runs its own tokio runtime on background threads, so sync code can use it;
//! [`Builder::start_async`] serves on the caller's runtime instead.
//!
//! ```
//! use std::io::{Read, Write};
//! use tollgate_testkit::{Action, Match, TestUpstream};
//!
//! let upstream = TestUpstream::start().unwrap();
//! upstream.script(Match::model("gpt-4o"), [Action::Status503]);
//!
//! let post = |model: &str| {
//!     let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
//!     let mut tcp = std::net::TcpStream::connect(upstream.addr()).unwrap();
//!     write!(tcp, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
//!                  content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
//!     let mut reply = String::new();
//!     tcp.read_to_string(&mut reply).unwrap();
//!     reply
//! };
//! assert!(post("gpt-4o").starts_with("HTTP/1.1 503"));
//! assert!(post("gpt-4o").starts_with("HTTP/1.1 200"));
//! assert_eq!(upstream.count_status(503), 1);
//! ```
//!
//! The Baidu endpoint, scripted by endpoint name:
//!
//! ```
//! use std::io::{Read, Write};
//! use tollgate_testkit::{Action, BAIDU_CHAT_PATH, Match, TestUpstream};
//!
//! let upstream = TestUpstream::start().unwrap();
//! let busy = Action::BaiduError { code: 336100, message: "try again".into() };
//! upstream.script(Match::model("completions_pro"), [busy]);
//!
//! let post = |body: &str| {
//!     let mut tcp = std::net::TcpStream::connect(upstream.addr()).unwrap();
//!     write!(tcp, "POST {BAIDU_CHAT_PATH}/completions_pro HTTP/1.1\r\nhost: x\r\n\
//!                  connection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
//!     let mut reply = String::new();
//!     tcp.read_to_string(&mut reply).unwrap();
//!     reply
//! };
//! let hi = r#"{"messages":[{"role":"user","content":"hi"}],"max_output_tokens":3}"#;
//! assert!(post(hi).ends_with(r#"{"error_code":336100,"error_msg":"try again"}"#));
//! assert!(post(hi).contains(r#""result":"lorem ipsum dolor""#));
//! let openai_field = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
//! assert!(post(openai_field).contains(r#""error_code":336003"#));
//! assert_eq!(upstream.log()[1].json().unwrap()["max_output_tokens"], 3);
//! ```
#![warn(missing_docs)]

mod auth;
mod baidu;
mod body;
mod fault;
mod log;
mod openai;
mod redis;
mod server;
mod tls;
mod upstream;

pub use auth::{TOKEN_PATH, TestAuth};
pub use baidu::BAIDU_CHAT_PATH;
pub use fault::{Action, Canned, FaultMix, Latency, Match, RateLimitHeaders};
pub use log::Arrival;
pub use openai::{VOCABULARY, reply_words};
pub use redis::RedisServer;
pub use tls::TestCa;
pub use upstream::{Builder, TestUpstream};

/// The header that names a request's tenant (else the body's `user` field is used).
pub const TENANT_HEADER: &str = server::TENANT_HEADER;

/// Why an upstream could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding `127.0.0.1:0` failed.
    #[error("testkit: cannot listen on 127.0.0.1:0: {0}")]
    Bind(#[source] std::io::Error),
    /// The upstream's runtime or thread could not start.
    #[error("testkit: cannot start the upstream's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// An async constructor was called outside a tokio runtime.
    #[error("testkit: start_async needs a tokio runtime; call start() outside tokio")]
    NoRuntime,
    /// Generating the certificates or the TLS configuration failed.
    #[error("testkit: cannot set up TLS: {0}")]
    Tls(String),
    /// A setting is out of range.
    #[error("testkit: {0}")]
    Config(String),
}
