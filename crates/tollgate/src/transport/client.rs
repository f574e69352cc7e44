//! The HTTP client: hyper 1 connections over tokio, rustls (ring) for HTTPS, keep-alive pooling,
//! the policy's [`Timeouts`] and a response size limit.
//!
//! [`Client::send`] returns a fully read [`Response`]; [`Client::stream`] returns a
//! [`StreamResponse`] whose body is read chunk by chunk with the idle timeout applied to each
//! chunk. Every failure is a [`TransportError`], whose [`TransportError::failure`] gives the
//! [`Failure`](crate::retry::Failure) class the retry rules work with.
//!
//! HTTPS offers ALPN `h2` and `http/1.1` and speaks HTTP/2 when the server picks it; plain
//! `http` speaks HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when
//! [`ClientConfig::http2_prior_knowledge`] is set. TLS trusts the webpki roots plus, when
//! configured, one extra CA ([`ExtraCa`]).
//!
//! Timeouts: `connect` bounds DNS + TCP + TLS of a new connection; `first_byte` runs from the
//! start of the call (connecting included) to the response head; `idle` bounds each wait for a
//! body chunk; `total` bounds the whole call, body included. When the total deadline is the
//! nearer one, the error says [`TimeoutKind::Total`].
//!
//! Pooling: an HTTP/2 connection is shared by every request to its origin; an HTTP/1.1
//! connection goes back to the pool once its response body has been read to the end (a
//! response dropped early closes its connection). Idle connections are dropped after
//! [`ClientConfig::pool_idle_timeout`]. [`Client::warm_up`] opens connections ahead of the
//! first call; [`ClientConfig::http2_keep_alive`] pings HTTP/2 connections so that dead ones
//! are noticed and idle ones are not dropped by middleboxes.
//!
//! Proxies: with [`ClientConfig::proxy`] every connection to a host outside
//! [`ProxyConfig::no_proxy`] goes through a `CONNECT` tunnel (see [`ProxyConfig`]); the connect
//! timeout covers the proxy, the tunnel and TLS. Connections through the proxy and direct ones
//! are pooled apart.
//!
//! The client is built on hyper's connection API (`hyper::client::conn`) with a small pool of
//! its own rather than on `hyper_util`'s legacy client: a custom connector for the latter has
//! to implement `tower_service::Service`, which is not a dependency of this crate.
//!
//! **Runtime:** [`Client::send`] and [`Client::stream`] (and reading a [`StreamResponse`]) must
//! run inside a tokio runtime with the time and I/O drivers enabled; connections are driven by
//! tasks spawned on it.
//!
//! Error messages say what happened and to which `host:port`; they never carry request headers
//! (so never an `Authorization` value) nor the URL's path, query or user info, nor a proxy's
//! user info.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

pub use super::error::TransportError;
use super::error::{chain, find_io, io_kind, tls_kind};
use super::proxy::{Proxy, ProxyConfig};
use crate::policy::Timeouts;
use crate::retry::{ConnectKind, TimeoutKind};

/// Default for [`ClientConfig::max_response_bytes`]: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Default for [`ClientConfig::pool_idle_timeout`]: 90 s.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Default for [`ClientConfig::pool_max_idle_per_host`]: 256, so up to 256 calls in flight at
/// once reuse their connections (a smaller pool closes the surplus after each call and pays a
/// handshake per call; idle ones are closed after [`DEFAULT_POOL_IDLE_TIMEOUT`]).
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 256;

/// The longest wait for the answer to an HTTP/2 keep-alive ping (shorter when the ping
/// interval is shorter); see [`ClientConfig::http2_keep_alive`].
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// An extra CA certificate trusted besides the webpki roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraCa {
    /// A PEM file holding one or more certificates.
    File(PathBuf),
    /// PEM text holding one or more certificates.
    Pem(Vec<u8>),
}

/// How a [`Client`] connects and what it tolerates.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connect, first-byte, idle and total timeouts (see [`Timeouts`]).
    pub timeouts: Timeouts,
    /// An extra CA trusted for HTTPS besides the webpki roots.
    pub extra_ca: Option<ExtraCa>,
    /// The largest body [`Client::send`] reads; a bigger one is [`TransportError::TooLarge`].
    /// Default [`DEFAULT_MAX_RESPONSE_BYTES`]. Streams are not limited as a whole.
    pub max_response_bytes: usize,
    /// Speak HTTP/2 to every origin: h2c with prior knowledge over plain `http`, and only ALPN
    /// `h2` over HTTPS. Default false (HTTP/1.1 over `http`, ALPN `h2` or `http/1.1` over HTTPS).
    pub http2_prior_knowledge: bool,
    /// How long an unused connection stays in the pool. Default [`DEFAULT_POOL_IDLE_TIMEOUT`].
    pub pool_idle_timeout: Duration,
    /// How many idle HTTP/1.1 connections are kept per origin (0 disables pooling).
    /// Default [`DEFAULT_POOL_MAX_IDLE_PER_HOST`].
    pub pool_max_idle_per_host: usize,
    /// An HTTP proxy reached through `CONNECT`, for `http` and `https` targets alike. Default
    /// `None`: connect directly. The environment is not read implicitly; pass
    /// [`ProxyConfig::from_env`] to follow `HTTPS_PROXY` and `NO_PROXY`.
    pub proxy: Option<ProxyConfig>,
    /// Send an HTTP/2 ping on every connection this often, idle or not, and close a connection
    /// whose ping is not answered within the interval or [`HTTP2_KEEP_ALIVE_TIMEOUT`],
    /// whichever is shorter. Default `None`: no pings. Must be positive.
    pub http2_keep_alive: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeouts: Timeouts::default(),
            extra_ca: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            http2_prior_knowledge: false,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
            proxy: None,
            http2_keep_alive: None,
        }
    }
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
}

/// A response whose body is read chunk by chunk with [`StreamResponse::next_chunk`].
pub struct StreamResponse {
    /// The status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
    body: Incoming,
    idle: Duration,
    deadline: Instant,
    total: Duration,
    target: Key,
    done: bool,
    release: Option<Release>,
}

impl fmt::Debug for StreamResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamResponse")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("target", &self.target.target())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl StreamResponse {
    /// The next non-empty body chunk; `None` at the clean end of the body.
    ///
    /// A chunk that does not arrive within the idle timeout (or before the total deadline) is
    /// [`TransportError::Timeout`]; a body that breaks off is [`TransportError::Body`], never a
    /// clean end. After an error every call returns `None`.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, TransportError>> {
        while !self.done {
            let frame = within(
                self.body.frame(),
                self.idle,
                TimeoutKind::Idle,
                self.deadline,
                self.total,
                &self.target,
            )
            .await;
            match frame {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) => {
                    self.done = true;
                    if let Some(release) = self.release.take() {
                        release.run();
                    }
                    return None;
                }
                Ok(Some(Err(e))) => {
                    self.done = true;
                    return Some(Err(body_error(&self.target, &e)));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Some(Ok(data));
                    }
                }
            }
        }
        None
    }
}

/// An HTTP client with keep-alive pooling; cheap to clone (clones share the pool).
///
/// See the [module documentation](self) for protocols, pooling and the tokio runtime it needs.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("timeouts", &self.inner.config.timeouts)
            .field("proxy", &self.inner.proxy)
            .field("connections_opened", &self.connections_opened())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: ClientConfig,
    proxy: Option<Proxy>,
    tls: TlsConnector,
    pool: Mutex<HashMap<Key, HostPool>>,
    opened: AtomicU64,
}

/// A pool key: an origin. It shares the request URL's bytes (no copy per request); an origin
/// written with and without its default port gets two pools.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    https: bool,
    authority: Authority,
    port: u16,
    /// True when connections to this origin go through the proxy.
    proxied: bool,
}

impl Key {
    /// The host, without the brackets of an IPv6 address.
    fn host(&self) -> &str {
        self.authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// `host:port`, for messages (made only when one is needed).
    fn target(&self) -> String {
        let host = self.host();
        if host.contains(':') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[derive(Default)]
struct HostPool {
    h2: Option<(http2::SendRequest<Full<Bytes>>, Instant)>,
    h1: Vec<(http1::SendRequest<Full<Bytes>>, Instant)>,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Gives an HTTP/1.1 connection back to the pool once its body has been read.
struct Release {
    inner: Arc<Inner>,
    key: Key,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Release {
    fn run(self) {
        self.inner.put_idle(self.key, self.sender);
    }
}

impl Inner {
    /// Puts an HTTP/1.1 connection in the pool, if it is open and there is room; true if it
    /// went in.
    fn put_idle(&self, key: Key, sender: http1::SendRequest<Full<Bytes>>) -> bool {
        let max = self.config.pool_max_idle_per_host;
        if max == 0 || sender.is_closed() {
            return false;
        }
        let mut pool = self.pool.lock();
        let host = pool.entry(key).or_default();
        if host.h1.len() < max {
            host.h1.push((sender, Instant::now()));
            true
        } else {
            false
        }
    }
}

impl Client {
    /// A client for this configuration; fails when the extra CA cannot be read or parsed, the
    /// proxy URL is unusable, or [`ClientConfig::http2_keep_alive`] is zero.
    pub fn new(config: ClientConfig) -> Result<Client, TransportError> {
        let proxy = match &config.proxy {
            Some(p) => Some(Proxy::parse(p).map_err(TransportError::Config)?),
            None => None,
        };
        if config.http2_keep_alive == Some(Duration::ZERO) {
            return Err(TransportError::Config(
                "http2_keep_alive must be positive; use None to send no pings".into(),
            ));
        }
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca) = &config.extra_ca {
            for cert in load_ca(ca)? {
                roots.add(cert).map_err(|e| {
                    TransportError::Config(format!("extra CA certificate rejected: {e}"))
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Config(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = if config.http2_prior_knowledge {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                proxy,
                tls: TlsConnector::from(Arc::new(tls)),
                pool: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// How many connections this client (and its clones) has opened so far: with pooling,
    /// sequential requests to one origin open one.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Sends `request` (an absolute `http` or `https` URL) and reads the whole response body,
    /// within the first-byte, idle (between body chunks), total and size limits.
    ///
    /// Must run inside a tokio runtime.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response, TransportError> {
        let t = self.inner.config.timeouts;
        let deadline = Instant::now() + t.total;
        let (response, release, target) = self.head(request, deadline).await?;
        let (parts, mut body) = response.into_parts();
        let limit = self.inner.config.max_response_bytes;
        let too_large = || TransportError::TooLarge {
            limit,
            target: target.target(),
        };
        let announced = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut buf = BytesMut::with_capacity(announced.unwrap_or(0) as usize);
        loop {
            let frame = within(
                body.frame(),
                t.idle,
                TimeoutKind::Idle,
                deadline,
                t.total,
                &target,
            )
            .await?;
            match frame {
                None => break,
                Some(Err(e)) => return Err(body_error(&target, &e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > limit {
                            return Err(too_large());
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        if let Some(release) = release {
            release.run();
        }
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body: buf.freeze(),
            version: parts.version,
        })
    }

    /// Sends `request` and returns once the response head has arrived (within the first-byte
    /// and total timeouts); read the body with [`StreamResponse::next_chunk`].
    ///
    /// Must run inside a tokio runtime.
    pub async fn stream(&self, request: Request<Bytes>) -> Result<StreamResponse, TransportError> {
        let t = self.inner.config.timeouts;
        let deadline = Instant::now() + t.total;
        let (response, release, target) = self.head(request, deadline).await?;
        let (parts, body) = response.into_parts();
        Ok(StreamResponse {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body,
            idle: t.idle,
            deadline,
            total: t.total,
            target,
            done: false,
            release,
        })
    }

    /// Opens connections to the origin of `origin` (`https://host:port`, or any URL of it) and
    /// puts them in the pool, so that the calls that follow do not pay for TCP, TLS and a proxy
    /// tunnel. Returns how many it opened.
    ///
    /// The pool is topped up to `connections` idle connections (at most
    /// [`ClientConfig::pool_max_idle_per_host`]), so a second warm-up opens none. HTTP/2 needs
    /// one connection, whatever `connections` says, since every request shares it: the first
    /// connection tells which protocol the origin speaks, the others are opened concurrently.
    /// Each connection is bounded by the connect timeout. The first failure is returned; the
    /// connections opened before it stay in the pool.
    ///
    /// Must run inside a tokio runtime.
    pub async fn warm_up(&self, origin: &str, connections: usize) -> Result<usize, TransportError> {
        let uri: Uri = origin.trim().parse().map_err(|e| {
            TransportError::InvalidRequest(format!(
                "warm_up needs an absolute http or https URL: {e}"
            ))
        })?;
        let key = self.key_of(&uri)?;
        if connections == 0 {
            return Ok(0);
        }
        let idle = match self.idle(&key) {
            Idle::H2 => return Ok(0),
            Idle::H1(n) => n,
        };
        let wanted = connections.min(self.inner.config.pool_max_idle_per_host);
        let mut opened = 0;
        if idle == 0 {
            let may_be_h2 = key.https || self.inner.config.http2_prior_knowledge;
            if wanted == 0 && !may_be_h2 {
                return Ok(0);
            }
            match self.connect(&key).await? {
                Sender::H2(_) => return Ok(1), // pooled by the handshake
                Sender::H1(sender) => {
                    if !self.inner.put_idle(key.clone(), sender) {
                        return Ok(0);
                    }
                    opened = 1;
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..wanted.saturating_sub(idle + opened) {
            let client = self.clone();
            let key = key.clone();
            tasks.spawn(async move { client.connect(&key).await });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(Sender::H1(sender))) => {
                    if self.inner.put_idle(key.clone(), sender) {
                        opened += 1;
                    }
                }
                Ok(Ok(Sender::H2(_))) => opened += 1,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(TransportError::Connect {
                        kind: ConnectKind::Other,
                        target: key.target(),
                        message: format!("a warm-up connection task failed: {e}"),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(opened),
        }
    }

    /// Connects (or reuses a pooled connection), sends, and waits for the response head.
    async fn head(
        &self,
        request: Request<Bytes>,
        deadline: Instant,
    ) -> Result<(http::Response<Incoming>, Option<Release>, Key), TransportError> {
        let key = self.key_of(request.uri())?;
        let t = self.inner.config.timeouts;
        let fut = async {
            let mut request = request;
            if let Some(sender) = self.checkout(&key) {
                match self.send_on(sender, &key, request).await {
                    Ok(done) => return Ok(done),
                    // The pooled connection died before the request went out (hyper gives it
                    // back unsent): use a new one.
                    Err(SendError::NotSent(back)) => request = *back,
                    Err(SendError::Failed(e)) => return Err(e),
                }
            }
            // Boxed: connecting (TCP, proxy tunnel, TLS and HTTP/2 handshakes) is a future of
            // ~8 KB that a call on a pooled connection never runs; inline, it made every call's
            // future (Engine::send's was 20 KB) that much larger to create, move and spawn.
            let sender = Box::pin(self.connect(&key)).await?;
            match self.send_on(sender, &key, request).await {
                Ok(done) => Ok(done),
                Err(SendError::NotSent(_)) => Err(TransportError::Connect {
                    kind: ConnectKind::Reset,
                    target: key.target(),
                    message: "the connection closed before the request was sent".into(),
                }),
                Err(SendError::Failed(e)) => Err(e),
            }
        };
        let (response, release) = within(
            fut,
            t.first_byte,
            TimeoutKind::FirstByte,
            deadline,
            t.total,
            &key,
        )
        .await??;
        Ok((response, release, key))
    }

    /// The pool key of `uri`: its origin, and whether the proxy is used for it.
    fn key_of(&self, uri: &Uri) -> Result<Key, TransportError> {
        let mut key = origin_of(uri)?;
        key.proxied = self
            .inner
            .proxy
            .as_ref()
            .is_some_and(|p| p.applies_to(key.host()));
        Ok(key)
    }

    /// What the pool holds for `key` that is still usable.
    fn idle(&self, key: &Key) -> Idle {
        let idle_timeout = self.inner.config.pool_idle_timeout;
        let pool = self.inner.pool.lock();
        let Some(host) = pool.get(key) else {
            return Idle::H1(0);
        };
        let live = |closed: bool, since: &Instant| !closed && since.elapsed() < idle_timeout;
        if let Some((h2, since)) = &host.h2
            && live(h2.is_closed(), since)
        {
            return Idle::H2;
        }
        Idle::H1(
            host.h1
                .iter()
                .filter(|(sender, since)| live(sender.is_closed(), since))
                .count(),
        )
    }

    fn checkout(&self, key: &Key) -> Option<Sender> {
        let idle_timeout = self.inner.config.pool_idle_timeout;
        let mut pool = self.inner.pool.lock();
        let host = pool.get_mut(key)?;
        if let Some((h2, since)) = &mut host.h2 {
            if !h2.is_closed() && since.elapsed() < idle_timeout {
                *since = Instant::now();
                return Some(Sender::H2(h2.clone()));
            }
            host.h2 = None;
        }
        while let Some((sender, since)) = host.h1.pop() {
            if !sender.is_closed() && since.elapsed() < idle_timeout {
                return Some(Sender::H1(sender));
            }
        }
        None
    }

    async fn send_on(
        &self,
        sender: Sender,
        key: &Key,
        request: Request<Bytes>,
    ) -> Result<(http::Response<Incoming>, Option<Release>), SendError> {
        // hyper gives an unsent request back (try_send_request); what it does not give back
        // may have been written, so it is not sent again.
        let failed = |e: hyper::Error| SendError::Failed(send_error(key, &e));
        match sender {
            Sender::H2(mut sender) => {
                if sender.ready().await.is_err() {
                    return Err(SendError::NotSent(Box::new(request)));
                }
                let (parts, body) = request.into_parts();
                let kept = body.clone();
                match sender
                    .try_send_request(Request::from_parts(parts, Full::new(body)))
                    .await
                {
                    Ok(response) => Ok((response, None)),
                    Err(mut e) => match e.take_message() {
                        Some(back) => Err(SendError::NotSent(Box::new(Request::from_parts(
                            back.into_parts().0,
                            kept,
                        )))),
                        None => Err(failed(e.into_error())),
                    },
                }
            }
            Sender::H1(mut sender) => {
                if sender.ready().await.is_err() {
                    return Err(SendError::NotSent(Box::new(request)));
                }
                let (mut parts, body) = request.into_parts();
                let kept = body.clone();
                let absolute = parts.uri.clone();
                let host_added = !parts.headers.contains_key(HOST);
                if host_added {
                    let authority = parts.uri.authority().map(|a| a.as_str()).unwrap_or("");
                    if let Ok(value) = HeaderValue::from_str(authority) {
                        parts.headers.insert(HOST, value);
                    }
                }
                // Origin form (`/path?query`), sharing the URL's bytes.
                let mut origin = http::uri::Parts::default();
                origin.path_and_query = Some(
                    parts
                        .uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                );
                parts.uri = Uri::from_parts(origin).map_err(|e| {
                    SendError::Failed(TransportError::InvalidRequest(format!("bad path: {e}")))
                })?;
                parts.version = Version::HTTP_11;
                match sender
                    .try_send_request(Request::from_parts(parts, Full::new(body)))
                    .await
                {
                    Ok(response) => {
                        let release = Release {
                            inner: self.inner.clone(),
                            key: key.clone(),
                            sender,
                        };
                        Ok((response, Some(release)))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(back) => {
                            let (mut parts, _) = back.into_parts();
                            parts.uri = absolute;
                            if host_added {
                                parts.headers.remove(HOST);
                            }
                            Err(SendError::NotSent(Box::new(Request::from_parts(
                                parts, kept,
                            ))))
                        }
                        None => Err(failed(e.into_error())),
                    },
                }
            }
        }
    }

    async fn connect(&self, key: &Key) -> Result<Sender, TransportError> {
        let after = self.inner.config.timeouts.connect;
        match tokio::time::timeout(after, self.connect_now(key)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                kind: TimeoutKind::Connect,
                after,
                target: key.target(),
            }),
        }
    }

    async fn connect_now(&self, key: &Key) -> Result<Sender, TransportError> {
        let target = key.target();
        let fail = |kind: ConnectKind, message: String| TransportError::Connect {
            kind,
            target: target.clone(),
            message,
        };
        let tcp = match (&self.inner.proxy, key.proxied) {
            (Some(proxy), true) => {
                let mut tcp = dial(proxy.host(), proxy.port())
                    .await
                    .map_err(|(kind, m)| {
                        fail(kind, format!("cannot reach proxy {}: {m}", proxy.addr()))
                    })?;
                self.inner.opened.fetch_add(1, Ordering::Relaxed);
                proxy
                    .tunnel(&mut tcp, &target)
                    .await
                    .map_err(|(kind, m)| fail(kind, m))?;
                tcp
            }
            _ => {
                let tcp = dial(key.host(), key.port)
                    .await
                    .map_err(|(kind, m)| fail(kind, m))?;
                self.inner.opened.fetch_add(1, Ordering::Relaxed);
                tcp
            }
        };
        if key.https {
            let name = ServerName::try_from(key.host().to_owned())
                .map_err(|e| fail(ConnectKind::Tls, format!("invalid TLS server name: {e}")))?;
            let tls = self
                .inner
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| fail(tls_kind(&e), format!("TLS handshake failed: {e}")))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            self.handshake(tls, h2, key).await
        } else {
            self.handshake(tcp, self.inner.config.http2_prior_knowledge, key)
                .await
        }
    }

    async fn handshake<T>(&self, io: T, h2: bool, key: &Key) -> Result<Sender, TransportError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let fail = |e: hyper::Error| TransportError::Connect {
            kind: ConnectKind::Other,
            target: key.target(),
            message: format!("HTTP handshake failed: {}", chain(&e)),
        };
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            if let Some(interval) = self.inner.config.http2_keep_alive {
                builder
                    .keep_alive_interval(interval)
                    .keep_alive_timeout(interval.min(HTTP2_KEEP_ALIVE_TIMEOUT))
                    .keep_alive_while_idle(true);
            }
            let (sender, conn) = builder.handshake(io).await.map_err(fail)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.inner.pool.lock().entry(key.clone()).or_default().h2 =
                Some((sender.clone(), Instant::now()));
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(fail)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(sender))
        }
    }
}

enum SendError {
    /// The connection was gone before the request was written; safe to send again: here it is.
    NotSent(Box<Request<Bytes>>),
    Failed(TransportError),
}

/// What the pool holds for one origin.
enum Idle {
    /// A live HTTP/2 connection.
    H2,
    /// This many live idle HTTP/1.1 connections.
    H1(usize),
}

/// Resolves `host` and opens a TCP connection to the first address that answers.
async fn dial(host: &str, port: u16) -> Result<TcpStream, (ConnectKind, String)> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| (ConnectKind::Dns, format!("DNS lookup failed: {e}")))?;
    let mut last: Option<io::Error> = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => (io_kind(&e), format!("TCP connect failed: {e}")),
        None => (
            ConnectKind::Dns,
            "the host name resolved to no address".into(),
        ),
    })
}

/// The pool key of `uri`, for a direct connection.
fn origin_of(uri: &Uri) -> Result<Key, TransportError> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(other) => {
            return Err(TransportError::InvalidRequest(format!(
                "unsupported URL scheme `{other}` (http or https)"
            )));
        }
        None => {
            return Err(TransportError::InvalidRequest(
                "the URL has no scheme (an absolute http or https URL is needed)".into(),
            ));
        }
    };
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .cloned()
        .ok_or_else(|| TransportError::InvalidRequest("the URL has no host".into()))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Key {
        https,
        authority,
        port,
        proxied: false,
    })
}

/// Runs `fut` within `stage` (reported as `kind`) and the overall `deadline` (reported as
/// [`TimeoutKind::Total`]), whichever is sooner.
///
/// A plain function returning a named future, not an `async fn`: an `async fn` keeps its
/// argument `fut` in its state beside the `Until` it is moved into, doubling the size of every
/// future that awaits it (the response head's was 3.5 KB instead of 1.7 KB).
fn within<F: Future>(
    fut: F,
    stage: Duration,
    kind: TimeoutKind,
    deadline: Instant,
    total: Duration,
    key: &Key,
) -> Within<'_, F> {
    let now = Instant::now();
    let remaining = deadline.saturating_duration_since(now);
    let (limit, kind, after) = if stage < remaining {
        (stage, kind, stage)
    } else {
        (remaining, TimeoutKind::Total, total)
    };
    Within {
        until: super::deadline::until((now + limit).into_std(), fut),
        kind,
        after,
        key,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`].
    struct Within<'a, F> {
        #[pin]
        until: super::deadline::Until<F>,
        kind: TimeoutKind,
        after: Duration,
        key: &'a Key,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.until.poll(cx).map(|r| {
            r.map_err(|_| TransportError::Timeout {
                kind: *this.kind,
                after: *this.after,
                target: this.key.target(),
            })
        })
    }
}

/// A failure while sending the request or waiting for the response head.
fn send_error(key: &Key, e: &hyper::Error) -> TransportError {
    let kind = if let Some(io) = find_io(e) {
        match io_kind(io) {
            ConnectKind::Other if e.is_incomplete_message() || e.is_closed() => ConnectKind::Reset,
            kind => kind,
        }
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        ConnectKind::Reset
    } else {
        ConnectKind::Other
    };
    TransportError::Connect {
        kind,
        target: key.target(),
        message: chain(e),
    }
}

/// A failure while reading the body after the head.
fn body_error(key: &Key, e: &hyper::Error) -> TransportError {
    TransportError::Body {
        target: key.target(),
        message: chain(e),
    }
}

fn load_ca(ca: &ExtraCa) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let (pem, what) = match ca {
        ExtraCa::File(path) => (
            std::fs::read(path).map_err(|e| {
                TransportError::Config(format!("cannot read CA file {}: {e}", path.display()))
            })?,
            format!("CA file {}", path.display()),
        ),
        ExtraCa::Pem(bytes) => (bytes.clone(), "CA PEM".to_owned()),
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Config(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TransportError::Config(format!(
            "{what}: no CERTIFICATE block found"
        )));
    }
    Ok(certs)
}
