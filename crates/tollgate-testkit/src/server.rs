//! The hyper server: accept loop, connections (HTTP/1.1, h2c, TLS with ALPN), routing, and
//! turning an [`Action`] into a response.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::auth::{self, TOKEN_PATH, TestAuth, Tokens};
use super::baidu::{self, Answer, BaiduError, BaiduRequest, StreamShape};
use super::body::{Ending, ReplyBody, delay, stopped};
use super::fault::{RequestFacts, Scripts, draw};
use super::log::{Arrival, Log};
use super::openai::{self, ApiError, ChatRequest, Completion, Lengths};
use super::{Action, FaultMix, Latency, RateLimitHeaders};

/// Largest request body read (bigger ones get a 413).
const MAX_BODY: usize = 16 << 20;
/// A TLS handshake taking longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The header naming the tenant.
pub(crate) const TENANT_HEADER: &str = "x-testkit-tenant";
/// Salt separating latency draws from fault draws.
const LATENCY_SALT: u64 = 0x6C61_7465_6E63_7921;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub latency: Latency,
    pub drip: Duration,
    pub seed: u64,
    pub event_ids: bool,
    pub lengths: Lengths,
    pub models: Vec<String>,
    pub grace: Duration,
    pub auth: TestAuth,
}

/// State shared by the handle and every connection.
pub(crate) struct Shared {
    pub config: Config,
    pub started: Instant,
    /// `created` of every completion and model: the start, in Unix seconds.
    pub created: u64,
    pub log: Log,
    pub scripts: Mutex<Scripts>,
    pub mix: Mutex<FaultMix>,
    pub rate_limit_headers: Mutex<Option<RateLimitHeaders>>,
    /// OAuth2 tokens issued by the token endpoint.
    pub tokens: Tokens,
    fault_draws: AtomicU64,
    latency_draws: AtomicU64,
    /// TCP connections accepted since the start.
    pub connections: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        mix: FaultMix,
        rate_limit_headers: Option<RateLimitHeaders>,
        shutdown: watch::Receiver<bool>,
    ) -> Shared {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Shared {
            config,
            started: Instant::now(),
            created,
            log: Log::default(),
            scripts: Mutex::new(Scripts::default()),
            mix: Mutex::new(mix),
            rate_limit_headers: Mutex::new(rate_limit_headers),
            tokens: Tokens::default(),
            fault_draws: AtomicU64::new(0),
            latency_draws: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            shutdown,
        }
    }
}

/// Accepts connections until shutdown, then gives open ones `grace` to finish.
pub(crate) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(connection(tcp, tls.clone(), shared.clone()));
                }
                // Out of file descriptors and the like: back off briefly.
                Err(_) => delay(&shared.shutdown, Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(shared.config.grace, drain).await;
    conns.shutdown().await;
}

async fn connection(tcp: TcpStream, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let Some(acceptor) = tls else {
        return serve_io(TokioIo::new(tcp), shared).await;
    };
    let mut stop = shared.shutdown.clone();
    let accepted = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
        _ = stopped(&mut stop) => return,
    };
    if let Ok(Ok(stream)) = accepted {
        serve_io(TokioIo::new(stream), shared).await;
    }
}

async fn serve_io<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let for_service = shared.clone();
    let service = service_fn(move |req| handle(for_service.clone(), req));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stop = shared.shutdown.clone();
    let stopping = tokio::select! {
        _ = conn.as_mut() => false,
        _ = stopped(&mut stop) => true,
    };
    if stopping {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// What a valid request asks for.
enum Route {
    Chat(ChatRequest),
    Baidu(BaiduRequest),
    Models,
    Model(String),
}

fn route(
    method: &Method,
    path: &str,
    json: Option<&Value>,
    shared: &Shared,
) -> Result<Route, ApiError> {
    let config = &shared.config;
    let known = |expected: &Method| {
        if method == expected {
            Ok(())
        } else {
            Err(ApiError {
                status: 405,
                message: format!("Method {method} is not allowed for {path}; use {expected}."),
                kind: "invalid_request_error",
                param: None,
                code: Some("method_not_allowed"),
            })
        }
    };
    match path {
        "/v1/chat/completions" => {
            known(&Method::POST)?;
            let json = json.ok_or_else(|| {
                ApiError::invalid(
                    "We could not parse the JSON body of your request. (HINT: This likely means \
                     you aren't using your HTTP library correctly.)",
                    None,
                    "invalid_json",
                )
            })?;
            openai::parse_chat(json, config.lengths).map(Route::Chat)
        }
        "/v1/models" => known(&Method::GET).map(|()| Route::Models),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                known(&Method::GET)?;
                if config.models.iter().any(|m| m == id) {
                    Ok(Route::Model(id.to_owned()))
                } else {
                    Err(ApiError {
                        status: 404,
                        message: format!("The model '{id}' does not exist"),
                        kind: "invalid_request_error",
                        param: Some("model"),
                        code: Some("model_not_found"),
                    })
                }
            }
            _ => Err(ApiError {
                status: 404,
                message: format!(
                    "Unknown request URL: {method} {path}. Please check the URL for typos."
                ),
                kind: "invalid_request_error",
                param: None,
                code: Some("unknown_url"),
            }),
        },
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, Infallible> {
    let at = Instant::now();
    let (parts, incoming) = req.into_parts();
    let mut arrival = Arrival {
        seq: 0,
        at,
        offset: at.saturating_duration_since(shared.started),
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body: Bytes::new(),
        model: None,
        tenant: None,
        stream: false,
        fault: None,
        scripted: false,
        delay: Duration::ZERO,
        status: None,
    };
    let body = match Limited::new(incoming, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let err = if e.downcast_ref::<LengthLimitError>().is_some() {
                ApiError {
                    status: 413,
                    message: format!("The request body is larger than {MAX_BODY} bytes."),
                    kind: "invalid_request_error",
                    param: None,
                    code: Some("request_too_large"),
                }
            } else {
                ApiError::invalid(
                    format!("Could not read the request body: {e}"),
                    None,
                    "bad_body",
                )
            };
            return Ok(reject(&shared, arrival, &err));
        }
    };
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| json.as_ref()?.get(name)?.as_str().map(str::to_owned);
    let baidu_endpoint = baidu::endpoint(&arrival.path).map(str::to_owned);
    arrival.model = match &baidu_endpoint {
        Some(endpoint) => Some(endpoint.clone()),
        None => field("model"),
    };
    let user = if baidu_endpoint.is_some() {
        "user_id"
    } else {
        "user"
    };
    arrival.tenant = parts
        .headers
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| field(user));
    arrival.stream = json
        .as_ref()
        .and_then(|j| j.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    arrival.body = body;

    let query = parts.uri.query();
    let required = &shared.config.auth;
    if arrival.path == TOKEN_PATH && required.serves_tokens() {
        let (code, body) = auth::token_endpoint(required, &shared.tokens, &parts.method, query);
        return Ok(answer(&shared, arrival, code, body));
    }
    if baidu_endpoint.is_some() {
        // ERNIE answers every refusal with HTTP 200 and an error body.
        let refused = required
            .check_baidu(&parts.headers, query, &shared.tokens)
            .map_err(|(code, message)| BaiduError {
                code,
                message: message.to_owned(),
            })
            .and_then(|()| {
                if parts.method == Method::POST {
                    Ok(())
                } else {
                    Err(BaiduError::method())
                }
            });
        if let Err(err) = refused {
            return Ok(answer(&shared, arrival, 200, err.body()));
        }
    } else if (arrival.path == "/v1" || arrival.path.starts_with("/v1/"))
        && let Err(refusal) = required.check(&parts.headers, query, &shared.tokens)
    {
        let err = ApiError {
            status: 401,
            message: refusal.message(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        };
        return Ok(reject(&shared, arrival, &err));
    }

    let route = if baidu_endpoint.is_some() {
        match baidu::parse_chat(json.as_ref(), shared.config.lengths) {
            Ok(r) => Route::Baidu(r),
            Err(err) => return Ok(answer(&shared, arrival, 200, err.body())),
        }
    } else {
        match route(&parts.method, &arrival.path, json.as_ref(), &shared) {
            Ok(r) => r,
            Err(err) => return Ok(reject(&shared, arrival, &err)),
        }
    };

    let facts = RequestFacts {
        model: arrival.model.as_deref(),
        tenant: arrival.tenant.as_deref(),
        path: &arrival.path,
        stream: arrival.stream,
        headers: &arrival.headers,
    };
    let scripted = shared.scripts.lock().take(&facts);
    let (action, was_scripted) = match scripted {
        Some(a) => (a, true),
        None => {
            let n = shared.fault_draws.fetch_add(1, Ordering::Relaxed);
            let u = draw(shared.config.seed, n).next_f64();
            (shared.mix.lock().pick(u).unwrap_or(Action::Normal), false)
        }
    };
    let n = shared.latency_draws.fetch_add(1, Ordering::Relaxed);
    let mut rng = draw(shared.config.seed ^ LATENCY_SALT, n);
    let mut wait = shared.config.latency.sample(rng.next_u64());
    match &action {
        Action::Latency(l) => wait += l.sample(rng.next_u64()),
        Action::SlowFirstByte(d) => wait += *d,
        _ => {}
    }
    arrival.fault = (action != Action::Normal).then(|| action.clone());
    arrival.scripted = was_scripted && arrival.fault.is_some();
    arrival.delay = wait;
    let seq = shared.log.push(arrival);

    if !wait.is_zero() {
        delay(&shared.shutdown, wait).await;
    }
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let response = respond(&shared, seq, route, &action, last_event_id);
    shared.log.set_status(seq, response.status().as_u16());
    Ok(response)
}

/// Logs a request that failed validation (or authentication) and answers with its error.
fn reject(shared: &Shared, arrival: Arrival, err: &ApiError) -> Response<ReplyBody> {
    answer(shared, arrival, err.status, err.body())
}

/// Logs a request answered at once, without scripts, faults or latency, and answers it.
fn answer(shared: &Shared, mut arrival: Arrival, code: u16, body: Bytes) -> Response<ReplyBody> {
    arrival.status = Some(code);
    let seq = shared.log.push(arrival);
    let mut resp = json_response(status(code), ReplyBody::full(body, &shared.shutdown));
    request_id(&mut resp, seq);
    resp
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_response(status: StatusCode, body: ReplyBody) -> Response<ReplyBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn request_id(resp: &mut Response<ReplyBody>, seq: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("req_testkit_{seq}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

fn header(resp: &mut Response<ReplyBody>, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(name, v);
    }
}

fn respond(
    shared: &Shared,
    seq: u64,
    route: Route,
    action: &Action,
    last_event_id: Option<usize>,
) -> Response<ReplyBody> {
    let stop = &shared.shutdown;
    let baidu_json = matches!(&route, Route::Baidu(req) if !req.stream);
    let error = |code: u16, message: &str, kind: &str, err_code: &str| {
        let body = openai::error_body(message, kind, None, Some(err_code));
        json_response(status(code), ReplyBody::full(body, stop))
    };
    let mut resp = match action {
        Action::Status429 { retry_after } => {
            let mut r = error(
                429,
                "Rate limit reached for requests (testkit). Please try again later.",
                "requests",
                "rate_limit_exceeded",
            );
            header(&mut r, RETRY_AFTER.as_str(), retry_after);
            header(&mut r, "retry-after-ms", retry_after.saturating_mul(1000));
            let mut limits = (*shared.rate_limit_headers.lock()).unwrap_or_default();
            limits.remaining_requests = 0;
            limits.reset_requests = Duration::from_secs(*retry_after);
            limits.apply(r.headers_mut());
            r
        }
        Action::Status500 => error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            "server_error",
        ),
        Action::Status503 => error(
            503,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            "service_unavailable",
        ),
        Action::Status { code, should_retry } => {
            let kind = if *code >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            };
            let mut r = error(
                *code,
                &format!("testkit: scripted status {code}"),
                kind,
                "testkit_status",
            );
            if let Some(retry) = should_retry {
                header(&mut r, "x-should-retry", retry);
            }
            r
        }
        Action::Respond(canned) => {
            let mut r = Response::new(ReplyBody::full(canned.body.clone(), stop));
            *r.status_mut() = status(canned.status);
            for (name, value) in &canned.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    r.headers_mut().append(n, v);
                }
            }
            r
        }
        Action::BaiduError { code, message } => baidu_error(*code, message, stop),
        Action::BaiduStreamErrorAfter { code, message, .. } if baidu_json => {
            baidu_error(*code, message, stop)
        }
        Action::BaiduErrorHeader {
            status: code,
            code: error_code,
            message,
        } => {
            let mut r = Response::new(ReplyBody::full(Bytes::new(), stop));
            *r.status_mut() = status(*code);
            header(&mut r, "x-bce-error-code", error_code);
            // Sent as UTF-8 (obs-text), as Qianfan sends Chinese messages.
            if let Ok(v) = HeaderValue::from_bytes(message.as_bytes()) {
                r.headers_mut().insert("x-bce-error-message", v);
            }
            r
        }
        _ => success(shared, seq, route, action, last_event_id),
    };
    request_id(&mut resp, seq);
    resp
}

/// HTTP 200 with ERNIE's error body.
fn baidu_error(code: u32, message: &str, stop: &watch::Receiver<bool>) -> Response<ReplyBody> {
    json_response(
        StatusCode::OK,
        ReplyBody::full(baidu::error_body(code, message), stop),
    )
}

/// A 200 (possibly slow, cut or malformed).
fn success(
    shared: &Shared,
    seq: u64,
    route: Route,
    action: &Action,
    last_event_id: Option<usize>,
) -> Response<ReplyBody> {
    let stop = &shared.shutdown;
    let json = match route {
        Route::Models => openai::model_list(&shared.config.models, shared.created),
        Route::Model(id) => Bytes::from(openai::model_object(&id, shared.created).to_string()),
        Route::Chat(req) => {
            let completion = Completion {
                id: format!("chatcmpl-testkit-{seq}"),
                created: shared.created,
                req: &req,
            };
            if req.stream && *action != Action::JsonForStream {
                let mut data = completion.events();
                if *action == Action::MalformedJson {
                    malform(&mut data, "{\"choices\": [");
                }
                return sse(shared, data, action, last_event_id);
            }
            completion.json()
        }
        Route::Baidu(req) => {
            let answer = Answer {
                id: format!("as-testkit-{seq}"),
                created: shared.created,
                req: &req,
            };
            if req.stream && *action != Action::JsonForStream {
                let shape = match action {
                    Action::BaiduStreamWithoutEnd(n) => StreamShape::WithoutEnd(*n),
                    Action::BaiduStreamErrorAfter {
                        events,
                        code,
                        message,
                    } => StreamShape::ErrorAfter(*events, *code, message.clone()),
                    _ => StreamShape::Complete,
                };
                let mut data = answer.events(&shape);
                if *action == Action::MalformedJson {
                    malform(&mut data, "{\"result\": \"");
                }
                return sse(shared, data, action, last_event_id);
            }
            answer.json()
        }
    };
    let len = json.len();
    let body = match action {
        Action::SlowDrip(gap) => {
            let quarter = len.div_ceil(4).max(1);
            let pieces = (0..len)
                .step_by(quarter)
                .map(|i| json.slice(i..(i + quarter).min(len)))
                .collect();
            ReplyBody::pieces(pieces, *gap, Ending::Complete, stop).with_exact_len(len as u64)
        }
        Action::ResetMidBody | Action::CutStreamAfter(_) => ReplyBody::pieces(
            vec![json.slice(..len / 2)],
            Duration::ZERO,
            Ending::Abort,
            stop,
        )
        .with_exact_len(len as u64),
        Action::MalformedJson => ReplyBody::full(json.slice(..len / 2), stop),
        _ => ReplyBody::full(json, stop),
    };
    let mut resp = json_response(StatusCode::OK, body);
    rate_limit_headers(shared, action, &mut resp);
    resp
}

fn rate_limit_headers(shared: &Shared, action: &Action, resp: &mut Response<ReplyBody>) {
    let limits = match action {
        Action::RateLimitHeaders(h) => Some(*h),
        _ => *shared.rate_limit_headers.lock(),
    };
    if let Some(h) = limits {
        h.apply(resp.headers_mut());
    }
}

/// [`Action::MalformedJson`] on a stream: the first event, the second cut in half (`fallback`
/// when there is none), and the last.
fn malform(data: &mut Vec<String>, fallback: &str) {
    let last = data.pop().unwrap_or_default();
    let broken = data.get(1).map_or(fallback, |d| half(d)).to_owned();
    data.truncate(1);
    data.push(broken);
    data.push(last);
}

/// The SSE response of the events' `data`: events numbered from 1, resumed after
/// `last_event_id`.
fn sse(
    shared: &Shared,
    data: Vec<String>,
    action: &Action,
    last_event_id: Option<usize>,
) -> Response<ReplyBody> {
    let stop = &shared.shutdown;
    let ids = shared.config.event_ids;
    let skip = last_event_id.unwrap_or(0);
    let events: Vec<Bytes> = data
        .iter()
        .enumerate()
        .map(|(i, d)| (i + 1, d))
        .filter(|(n, _)| *n > skip)
        .map(|(n, d)| openai::sse_event(ids.then_some(n), d))
        .collect();
    let drip = shared.config.drip;
    let body = match action {
        Action::SlowDrip(gap) => ReplyBody::pieces(events, *gap, Ending::Complete, stop),
        Action::CutStreamAfter(k) => {
            let kept = events.into_iter().take(*k).collect();
            ReplyBody::pieces(kept, drip, Ending::Abort, stop)
        }
        Action::ResetMidBody => {
            let mut kept: Vec<Bytes> = events.iter().take(1).cloned().collect();
            if let Some(second) = events.get(1) {
                kept.push(second.slice(..second.len() / 2));
            }
            ReplyBody::pieces(kept, drip, Ending::Abort, stop)
        }
        _ => ReplyBody::pieces(events, drip, Ending::Complete, stop),
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    rate_limit_headers(shared, action, &mut resp);
    resp
}

/// The first half of `s`, cut on a character boundary.
fn half(s: &str) -> &str {
    let mut cut = s.len() / 2;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}
