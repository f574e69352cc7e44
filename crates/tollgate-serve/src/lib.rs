//! tollgate-serve: an OpenAI-compatible sidecar proxy (`tollgate serve`) in front of the engine's call API.
//!
//! Services that cannot link tollgate point `OPENAI_BASE_URL` at it. Clients authenticate with a
//! *virtual key* (`Authorization: Bearer <key>`); the policy's `[serve]` section maps the SHA-256
//! of each key to a tenant, so budgets scoped by tenant apply per client, and the upstreams' own
//! keys never leave the proxy.
//!
//! Endpoints: `POST /v1/chat/completions` (JSON, or SSE passed through event by event),
//! `GET /v1/models`, `GET /healthz`, `GET /metrics` (Prometheus text), and `POST /admin/reload`
//! (bearer admin token; on `admin_listen` when set, else under `/admin/` on the main listener).
//! Refusals use OpenAI's error format: 401 for a missing or unknown key, 429 with `Retry-After`
//! and the budget named for a budget that refused, 400 for bad requests, the upstream's own
//! status and body when it gave up.
//!
//! Guards: a client network allow-list checked on accept, a cap on open connections
//! (`max_connections`; the admin listener has its own [`ADMIN_CONNECTIONS`]), limits on the
//! request head and body, timeouts for clients that send slowly (the first request head within
//! `header_timeout` of connecting, every later head within `header_timeout`, a body within
//! `body_timeout`) or not at all (`idle_timeout` with no request in progress), or that stop
//! reading their responses (`write_timeout`), and on shutdown the listeners close first and
//! calls in flight get `shutdown_grace` to finish.
#![warn(missing_docs)]

mod io;
mod log;
mod respond;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use tollgate::policy::{Policy, Serve, VirtualKey};
use tollgate::{ChatRequest, Engine, ReloadReport};

pub use respond::ProxyBody;
use respond::{error, json_response};

/// Most connections the admin listener keeps open at once.
pub const ADMIN_CONNECTIONS: usize = 64;

/// A running proxy. Dropping it stops it at once; [`Proxy::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

/// Counters of the proxy, appended to `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    denied: AtomicU64,
    refused_peers: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    idle_closed: AtomicU64,
    write_stalled: AtomicU64,
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    engine: Engine,
    /// Where `POST /admin/reload` (and SIGHUP) read the policy from, when it came from a file.
    policy_file: Option<PathBuf>,
    /// Listener settings, fixed at start.
    config: Serve,
    counters: Counters,
    /// The running policy's virtual keys by hash, rebuilt when the policy changes.
    keys: ArcSwap<KeyIndex>,
}

/// The virtual keys of one policy, by SHA-256.
#[derive(Debug)]
struct KeyIndex {
    policy: Arc<Policy>,
    keys: HashMap<[u8; 32], Arc<log::Who>>,
}

impl KeyIndex {
    fn new(policy: Arc<Policy>) -> KeyIndex {
        let keys = policy
            .serve
            .iter()
            .flat_map(|s| &s.keys)
            .map(|k| {
                let who = log::Who {
                    name: k.name.clone(),
                    tenant: k.tenant.clone(),
                };
                (k.sha256, Arc::new(who))
            })
            .collect();
        KeyIndex { policy, keys }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Main,
    Admin,
}

impl Proxy {
    /// Starts the proxy on the current tokio runtime with the engine's `[serve]` section (or its
    /// defaults), listening on `listen` when given instead of the section's address. Listener
    /// settings are read once; virtual keys are read on every request, so a reload that changes
    /// them applies at once.
    pub async fn start(
        engine: Engine,
        policy_file: Option<PathBuf>,
        listen: Option<SocketAddr>,
    ) -> std::io::Result<Proxy> {
        let policy = engine.policy();
        let mut config = policy.serve.clone().unwrap_or_default();
        if let Some(l) = listen {
            config.listen = l;
        }
        let main = TcpListener::bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let addr = main.local_addr()?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        let shared = Arc::new(Shared {
            keys: ArcSwap::from_pointee(KeyIndex::new(engine.policy())),
            engine,
            policy_file,
            config,
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(
            main,
            Listener::Main,
            Arc::clone(&shared),
            stopped.clone(),
        ));
        if let Some(a) = admin {
            tasks.spawn(accept(a, Listener::Admin, Arc::clone(&shared), stopped));
        }
        Ok(Proxy {
            addr,
            admin_addr,
            stop,
            tasks,
            shared,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reloads the policy from its file (what SIGHUP does). Refused policies leave the running
    /// one in place.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        reload(&self.shared, None)
    }

    /// Stops accepting connections, lets calls in flight finish for at most `shutdown_grace`,
    /// then ends.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let grace = self.shared.config.shutdown_grace + Duration::from_millis(100);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            self.tasks.shutdown().await;
        }
    }
}

/// Accepts connections until told to stop, then waits for open ones (each finishing its
/// requests in flight, at most `shutdown_grace`).
async fn accept(
    listener: TcpListener,
    which: Listener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let room = Arc::new(Semaphore::new(match which {
        Listener::Main => shared.config.max_connections,
        Listener::Admin => ADMIN_CONNECTIONS,
    }));
    loop {
        // A connection is accepted only when there is room for it; until then clients wait in
        // the listen backlog.
        let permit = tokio::select! {
            () = stopped(&mut stop) => break,
            permit = Arc::clone(&room).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if !shared.config.allow.iter().any(|c| c.contains(peer.ip())) {
                        shared.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
                        drop(tcp);
                        continue;
                    }
                    let _ = tcp.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let stop = stop.clone();
                    conns.spawn(async move {
                        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                        connection(tcp, peer, which, Arc::clone(&shared), stop).await;
                        shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                // Out of file descriptors and the like: back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
        // Reap finished connections without waiting for the next accept.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(shared.config.shutdown_grace, drain).await;
    conns.shutdown().await;
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    which: Listener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .max_buf_size((shared.config.max_header_bytes as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.config.max_header_bytes).unwrap_or(u32::MAX));
    let for_service = Arc::clone(&shared);
    let activity = Arc::new(Activity::new());
    let seen = Arc::clone(&activity);
    let service = service_fn(move |req| {
        let shared = Arc::clone(&for_service);
        let busy = Busy::new(&seen);
        async move {
            // What the access log needs of the request, taken before the handler consumes it.
            let logged = shared.config.access_log.then(|| {
                (
                    Instant::now(),
                    req.method().clone(),
                    req.uri().path().to_owned(),
                )
            });
            let mut response = handle(Arc::clone(&shared), which, req).await;
            response.body_mut().busy = Some(busy);
            if let Some((started, method, path)) = logged {
                log::write(&log::line(
                    peer,
                    &method,
                    &path,
                    &response,
                    started.elapsed(),
                ));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let tcp = io::StallLimit::new(tcp, shared.config.write_timeout, Arc::clone(&shared));
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let idle = tokio::select! {
        _ = conn.as_mut() => return,
        () = stopped(&mut stop) => false,
        () = activity.idle(&shared.config) => true,
    };
    // HTTP/1: the response being written is finished, then the connection closes; HTTP/2:
    // GOAWAY, and the streams already open run to their end. A client stuck in a request head
    // is cut by header_timeout, one stuck in a body by body_timeout, and on shutdown the
    // accept loop aborts whatever outlives shutdown_grace.
    conn.as_mut().graceful_shutdown();
    if !idle {
        let _ = conn.await;
        return;
    }
    shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
    // An idle HTTP/2 client that never answers the goodbye (its PING) would keep the
    // connection: it gets header_timeout to do so while no request is in progress.
    loop {
        match tokio::time::timeout(shared.config.header_timeout, conn.as_mut()).await {
            Err(_) if activity.busy.load(Ordering::Relaxed) > 0 => {}
            _ => return,
        }
    }
}

/// What a connection is doing, for its idle timeout.
#[derive(Debug)]
struct Activity {
    /// When the connection was accepted; times below are milliseconds since then.
    start: Instant,
    /// Requests being handled now.
    busy: AtomicUsize,
    /// Whether a request head has arrived yet.
    any: AtomicBool,
    /// When the last response was sent (or a request arrived, while one is being handled).
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            busy: AtomicUsize::new(0),
            any: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Returns once the connection has been idle too long: no request head within
    /// `header_timeout` of connecting, or no request in progress for `idle_timeout`.
    async fn idle(&self, config: &Serve) {
        loop {
            let limit = if self.any.load(Ordering::Relaxed) {
                config.idle_timeout
            } else {
                config.header_timeout
            };
            if self.busy.load(Ordering::Relaxed) > 0 {
                // The end of the request moves `last_ms`; look again after a whole limit.
                tokio::time::sleep(limit).await;
                continue;
            }
            let since = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = self.start + since + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// One request being handled on a connection, until its response body has been sent.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.any.store(true, Ordering::Relaxed);
        activity.busy.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Busy(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns once the proxy is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    shared: Arc<Shared>,
    which: Listener,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let admin_here = match which {
        Listener::Admin => true,
        Listener::Main => shared.config.admin_listen.is_none(),
    };
    match (method, path.as_str(), which) {
        (Method::GET, "/healthz", _) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "generation": shared.engine.generation()}),
        ),
        (Method::GET, "/metrics", _) => metrics(&shared),
        (Method::POST, "/admin/reload", _) if admin_here => admin_reload(&shared, req).await,
        (_, p, Listener::Admin) => error(
            StatusCode::NOT_FOUND,
            &format!("no admin endpoint {p}; POST /admin/reload, GET /metrics, GET /healthz"),
            "invalid_request_error",
            Some("not_found"),
        ),
        (Method::GET, "/v1/models", Listener::Main) => match tenant(&shared, &req) {
            Ok(who) => {
                let mut r = models(&shared.engine.policy());
                if shared.config.access_log {
                    r.extensions_mut().insert(who);
                }
                r
            }
            Err(r) => r,
        },
        (Method::POST, "/v1/chat/completions", Listener::Main) => {
            let _in_flight = InFlight::new(&shared);
            match tenant(&shared, &req) {
                Ok(who) => {
                    let mut r = chat(&shared, who.tenant.clone(), req).await;
                    if shared.config.access_log {
                        r.extensions_mut().insert(who);
                    }
                    r
                }
                Err(r) => r,
            }
        }
        (m, "/v1/chat/completions" | "/v1/models" | "/healthz" | "/metrics", _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {m} is not allowed for {path}"),
            "invalid_request_error",
            Some("method_not_allowed"),
        ),
        (_, p, _) => error(
            StatusCode::NOT_FOUND,
            &format!(
                "unknown path {p}: this proxy serves POST /v1/chat/completions and GET /v1/models"
            ),
            "invalid_request_error",
            Some("not_found"),
        ),
    }
}

/// The bearer token of a request, if it has one.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub use tollgate::policy::hash_key;

/// The tenant of the request's virtual key, or the 401 to answer. The key is hashed first and
/// looked up by its hash (one map lookup, however many keys), never compared as text.
#[allow(clippy::result_large_err)]
fn tenant(shared: &Shared, req: &Request<Incoming>) -> Result<Arc<log::Who>, Response<ProxyBody>> {
    let refuse = |message: &str| {
        shared.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        Err(error(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            Some("invalid_api_key"),
        ))
    };
    let Some(key) = bearer(req) else {
        return refuse(
            "You didn't provide an API key. Send your virtual key as Authorization: Bearer <key>.",
        );
    };
    let hash = VirtualKey::digest(key);
    let policy = shared.engine.policy();
    let mut index = shared.keys.load_full();
    if !Arc::ptr_eq(&index.policy, &policy) {
        index = Arc::new(KeyIndex::new(policy));
        shared.keys.store(Arc::clone(&index));
    }
    match index.keys.get(&hash) {
        Some(who) => Ok(Arc::clone(who)),
        None => refuse("Incorrect API key provided. The proxy does not know this virtual key."),
    }
}

fn models(policy: &Policy) -> Response<ProxyBody> {
    let mut seen = HashSet::new();
    let ids: Vec<&str> = policy
        .routes
        .iter()
        .map(|r| r.model.as_str())
        .filter(|m| !m.contains(['*', '?', '[']) && seen.insert(*m))
        .collect();
    let data: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"}))
        .collect();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data}),
    )
}

/// Reads a request body under the size limit and the body timeout. When it cannot be read in
/// full, the answer closes the connection (HTTP/1): the rest of the body is not waited for.
async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, Response<ProxyBody>> {
    read_body_inner(shared, req).await.map_err(|mut r| {
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        r
    })
}

async fn read_body_inner(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Bytes, Response<ProxyBody>> {
    let limit = usize::try_from(shared.config.max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(shared.config.body_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than the proxy's limit of {} bytes (serve.max_body)",
                shared.config.max_body_bytes
            ),
            "invalid_request_error",
            Some("request_too_large"),
        )),
        Ok(Err(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
            "invalid_request_error",
            Some("bad_body"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request body took longer than {} ms to arrive (serve.body_timeout)",
                shared.config.body_timeout.as_millis()
            ),
            "invalid_request_error",
            Some("body_timeout"),
        )),
    }
}

async fn chat(shared: &Shared, tenant: String, req: Request<Incoming>) -> Response<ProxyBody> {
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "We could not parse the JSON body of your request: it must be a JSON object.",
                "invalid_request_error",
                Some("invalid_json"),
            );
        }
    };
    let stream = json.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
    let asked = shared.config.access_log.then(|| log::Asked {
        model: json
            .get("model")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        stream,
    });
    let request = ChatRequest::new(json).tenant(tenant);
    let mut response = if stream {
        match shared.engine.stream(request).await {
            Ok(s) => respond::stream(s),
            Err(e) => respond::call_error(&shared.counters.denied, &e),
        }
    } else {
        match shared.engine.send(request).await {
            Ok(r) => respond::completion(&r),
            Err(e) => respond::call_error(&shared.counters.denied, &e),
        }
    };
    if let Some(a) = asked {
        response.extensions_mut().insert(a);
    }
    response
}

/// Whether the request carries the admin token (compared by hash).
fn is_admin(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(token_ref) = &shared.config.admin_token else {
        return false;
    };
    let (Some(given), Ok(expected)) = (bearer(req), tollgate::auth::resolve(token_ref)) else {
        return false;
    };
    VirtualKey::digest(given) == VirtualKey::digest(expected.expose().trim())
}

async fn admin_reload(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    if shared.config.admin_token.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "admin endpoints are off: set serve.admin_token to use them",
            "invalid_request_error",
            Some("admin_off"),
        );
    }
    if !is_admin(shared, &req) {
        shared.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::UNAUTHORIZED,
            "the admin endpoints need Authorization: Bearer <serve.admin_token>",
            "invalid_request_error",
            Some("invalid_admin_token"),
        );
    }
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
    match reload(shared, text.as_deref()) {
        Ok(report) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "generation": report.generation,
                "added": report.added,
                "kept": report.kept,
                "removed": report.removed,
                "rescoped": report.rescoped,
            }),
        ),
        Err(problems) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("the policy was refused; the running one stays: {problems}"),
            "invalid_request_error",
            Some("policy_refused"),
        ),
    }
}

/// Reloads from `text`, else from the policy file.
fn reload(shared: &Shared, text: Option<&str>) -> Result<ReloadReport, String> {
    match (text, &shared.policy_file) {
        (Some(t), _) => shared.engine.reload(t).map_err(|e| e.to_string()),
        (None, Some(path)) => match Policy::from_file(path) {
            Ok(p) => Ok(shared.engine.reload_policy(p)),
            Err(e) => Err(e.to_string()),
        },
        (None, None) => Err("no policy file to reload from: send the policy as the body".into()),
    }
}

fn metrics(shared: &Shared) -> Response<ProxyBody> {
    let mut text = shared.engine.metrics_text();
    let c = &shared.counters;
    let families: [(&str, &str, &str, u64); 8] = [
        (
            "tollgate_serve_requests_total",
            "counter",
            "Requests the proxy received.",
            c.requests.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_unauthorized_total",
            "counter",
            "Requests refused for a missing or unknown virtual key or admin token.",
            c.unauthorized.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_denied_total",
            "counter",
            "Chat requests a budget refused (answered 429).",
            c.denied.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_refused_connections_total",
            "counter",
            "Connections closed because the client's address is not in serve.allow.",
            c.refused_peers.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_in_flight",
            "gauge",
            "Chat requests being answered now.",
            c.in_flight.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_connections",
            "gauge",
            "Client connections open now (both listeners).",
            c.connections.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_idle_closed_total",
            "counter",
            "Connections closed for sending no request within header_timeout of connecting, or \
             none for idle_timeout.",
            c.idle_closed.load(Ordering::Relaxed),
        ),
        (
            "tollgate_serve_write_stalled_total",
            "counter",
            "Connections closed because the client took no response bytes for write_timeout.",
            c.write_stalled.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    let mut r = Response::new(respond::full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
