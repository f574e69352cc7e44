//! The wire side of one upstream: its HTTP client and credentials, and the requests built for it.
//!
//! A [`Wire`] is made from an [`Upstream`] on first use ([`WireSlot`], one per upstream of a
//! compiled policy) and carried over while the upstream's settings stay the same, so pooled
//! connections and OAuth2 tokens survive policy reloads that do not touch it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request};

use crate::auth::{AuthError, Credentials, Resolved, Token, parse_token_response};
use crate::dialect::Speaker;
use crate::policy::Upstream;
use crate::transport::{Client, ClientConfig, ExtraCa, ProxyConfig, TransportError};

use super::Engine;
use super::health::key_id;

/// `tollgate/<version>`, sent as `User-Agent`.
const AGENT: &str = concat!("tollgate/", env!("CARGO_PKG_VERSION"));

/// Client and credentials of one upstream.
pub(crate) struct Wire {
    pub config: Upstream,
    pub client: Client,
    /// The upstream's dialect.
    pub speaker: Speaker,
    creds: Credentials,
    /// `<base_url>/chat/completions`.
    chat_url: String,
    /// The same, parsed once (`None` when it does not parse: each request then reports it).
    chat_uri: Option<http::Uri>,
    /// `Authorization` values of a bearer pool, by pool index, made on first use.
    bearers: OnceLock<Vec<Option<HeaderValue>>>,
    /// Pool key ids (as in [`super::TargetRef::key`]) by pool index.
    key_ids: Vec<String>,
    /// Round robin for calls that name no key (no route chose one).
    next_key: AtomicUsize,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("upstream", &self.config.name)
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

/// What a request was authorised with, to undo it on a 401.
#[derive(Debug, Default)]
pub(crate) struct Authorised {
    /// The OAuth2 token used, if any.
    pub token: Option<Arc<Token>>,
    /// The JWT used, if any.
    pub jwt: Option<Arc<str>>,
}

impl Wire {
    pub(crate) fn new(config: &Upstream) -> Result<Wire, TransportError> {
        let client = Client::new(client_config(config))?;
        let key_ids = match &config.auth {
            crate::policy::Auth::Bearer { keys } => keys.iter().map(key_id).collect(),
            _ => vec![],
        };
        let chat_url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(Wire {
            chat_uri: http::Uri::try_from(chat_url.as_str()).ok(),
            bearers: OnceLock::new(),
            chat_url,
            creds: Credentials::new(&config.auth),
            speaker: Speaker::new(config),
            client,
            key_ids,
            next_key: AtomicUsize::new(0),
            config: config.clone(),
        })
    }

    /// Builds the HTTP request for `body` with its credentials: the key named `key` of a bearer
    /// pool (round robin when empty or unknown), a fresh JWT, or an OAuth2 token fetched once for
    /// all concurrent callers. `url`: the dialect's URL for the call, `None` for
    /// `<base_url>/chat/completions`.
    pub(crate) async fn request(
        &self,
        body: Bytes,
        stream: bool,
        key: &str,
        last_event_id: Option<&str>,
        url: Option<&str>,
    ) -> Result<(Request<Bytes>, Authorised), AuthError> {
        // The common case (a bearer pool, a JWT, no credentials) builds no string: the URL is
        // parsed once per wire and a pool's header values are made once.
        let mut url: Option<String> = url.map(str::to_owned);
        let mut extra: Vec<(String, String)> = Vec::new();
        let mut authorised = Authorised::default();
        let mut bearer: Option<HeaderValue> = None;
        match self.creds.resolve()? {
            Resolved::None => {}
            Resolved::Bearer(keys) => {
                let i = self
                    .key_ids
                    .iter()
                    .position(|id| id == key)
                    .unwrap_or_else(|| self.next_key.fetch_add(1, Ordering::Relaxed));
                let values = self.bearers.get_or_init(|| {
                    keys.iter()
                        .map(|secret| sensitive(&format!("Bearer {}", secret.expose())))
                        .collect()
                });
                if !values.is_empty() {
                    bearer = Some(values[i % values.len()].clone().ok_or_else(not_a_header)?);
                }
            }
            Resolved::Jwt(minter) => {
                let token = minter.token(SystemTime::now());
                let value = format!("Bearer {token}");
                bearer = Some(sensitive(&value).ok_or_else(not_a_header)?);
                authorised.jwt = Some(token);
            }
            Resolved::OAuth2(client) => {
                let now = SystemTime::now();
                let token = client
                    // Boxed: the fetch (an HTTP exchange of its own, ~18 KB of future) runs
                    // only when the cached token is missing or expiring; inline, every call's
                    // future carried its size.
                    .token(now, |url| {
                        Box::pin(fetch_token(&self.client, url.expose().to_owned(), now))
                    })
                    .await?;
                let url = url.get_or_insert_with(|| self.chat_url.clone());
                client.apply(&token, url, &mut extra);
                authorised.token = Some(token);
            }
        }
        for (name, value) in extra {
            if name.eq_ignore_ascii_case("authorization") {
                bearer = Some(sensitive(&value).ok_or_else(not_a_header)?);
            }
        }
        let uri = match (url, &self.chat_uri) {
            (None, Some(uri)) => uri.clone(),
            (url, _) => {
                let url = url.unwrap_or_else(|| self.chat_url.clone());
                http::Uri::try_from(url).map_err(|e| AuthError::TokenFetch {
                    message: format!("cannot build the request: {e}"),
                })?
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(6);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        if let Some(value) = bearer {
            headers.insert(AUTHORIZATION, value);
        }
        if let Some(id) = last_event_id
            && let Ok(v) = HeaderValue::from_str(id)
        {
            headers.insert(HeaderName::from_static("last-event-id"), v);
        }
        Ok((request, authorised))
    }

    /// After a 401 or an expired-token error: forget the OAuth2 token or the JWT the request
    /// carried, so the replay fetches or mints a new one. Returns whether a replay can help (a
    /// static key is not renewed this way).
    pub(crate) fn refused(&self, authorised: &Authorised) -> bool {
        match (self.creds.resolve(), &authorised.token, &authorised.jwt) {
            (Ok(Resolved::OAuth2(client)), Some(token), _) => {
                client.cache.invalidate(token);
                true
            }
            (Ok(Resolved::Jwt(minter)), _, Some(token)) => {
                minter.forget(token);
                true
            }
            _ => false,
        }
    }
}

impl Wire {
    /// Opens the policy's `warm_up` connections to this upstream.
    pub(crate) async fn warm_up(&self) -> Result<usize, TransportError> {
        if self.config.warm_up == 0 {
            return Ok(0);
        }
        self.client
            .warm_up(&self.config.base_url, self.config.warm_up as usize)
            .await
    }
}

fn client_config(config: &Upstream) -> ClientConfig {
    ClientConfig {
        timeouts: config.timeouts,
        extra_ca: config.ca_file.clone().map(ExtraCa::File),
        proxy: match &config.proxy {
            Some(url) => Some(ProxyConfig::new(url.clone())),
            None => ProxyConfig::from_env(),
        },
        http2_keep_alive: config.http2_keep_alive,
        pool_max_idle_per_host: config.max_idle as usize,
        ..ClientConfig::default()
    }
}

async fn fetch_token(client: &Client, url: String, now: SystemTime) -> Result<Token, AuthError> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url.as_str())
        .header(USER_AGENT, AGENT)
        .header(ACCEPT, "application/json")
        .body(Bytes::new())
        .map_err(|_| AuthError::TokenFetch {
            message: "the token endpoint URL is not valid".into(),
        })?;
    let response = client
        .send(request)
        .await
        .map_err(|e| AuthError::TokenFetch {
            message: e.to_string(),
        })?;
    parse_token_response(response.status.as_u16(), &response.body, now)
}

/// A header value that is never logged, or `None` when `text` cannot be one.
fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn not_a_header() -> AuthError {
    AuthError::TokenFetch {
        message: "the credential holds characters not allowed in a header".into(),
    }
}

/// The wire of one upstream of a compiled policy: made on first use (no global lock on the
/// call path: a policy's slots are its own), or carried over from the previous policy when the
/// upstream's settings did not change (compared once, at reload).
#[derive(Debug, Default)]
pub(crate) struct WireSlot {
    cell: OnceLock<Result<Arc<Wire>, TransportError>>,
}

impl WireSlot {
    /// A slot holding a wire made under an earlier policy.
    pub(crate) fn carried(wire: Arc<Wire>) -> WireSlot {
        WireSlot {
            cell: OnceLock::from(Ok(wire)),
        }
    }

    /// The wire, made now from `config` if this is its first use.
    pub(crate) fn get(&self, config: &Upstream) -> Result<Arc<Wire>, TransportError> {
        self.cell
            .get_or_init(|| Wire::new(config).map(Arc::new))
            .clone()
    }

    /// The wire when it was made already.
    pub(crate) fn made(&self) -> Option<&Arc<Wire>> {
        self.cell.get().and_then(|r| r.as_ref().ok())
    }
}

/// Authorises and sends one request with `send`; when the answer says the credential expired
/// (`expired`: a 401, or a dialect's expired-token error) and it was an OAuth2 token or a JWT,
/// forgets it and replays once with a new one. The outer error is a credential failure (nothing
/// was sent).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange<R, F, Fut>(
    wire: &Wire,
    body: Bytes,
    key: &str,
    last_event_id: Option<&str>,
    url: Option<&str>,
    stream: bool,
    send: F,
    expired: fn(&R, &Wire) -> bool,
) -> Result<Result<R, TransportError>, AuthError>
where
    F: Fn(Request<Bytes>) -> Fut,
    Fut: Future<Output = Result<R, TransportError>>,
{
    let (request, authorised) = wire
        .request(body.clone(), stream, key, last_event_id, url)
        .await?;
    let result = send(request).await;
    if let Ok(r) = &result
        && expired(r, wire)
        && wire.refused(&authorised)
    {
        let (request, _) = wire.request(body, stream, key, last_event_id, url).await?;
        return Ok(send(request).await);
    }
    Ok(result)
}

impl Engine {
    /// Opens the connections each upstream's `warm_up` asks for, so the first calls do not pay
    /// the TCP and TLS handshakes; returns how many were opened. Errors are per upstream:
    /// `(upstream, error)` for each that could not be reached (the others are still warmed).
    ///
    /// Must run in a tokio runtime.
    pub async fn warm_up(&self) -> (usize, Vec<(String, TransportError)>) {
        let compiled = self.inner.current();
        let mut opened = 0;
        let mut failed = vec![];
        for (i, upstream) in compiled.policy.upstreams.iter().enumerate() {
            if upstream.warm_up == 0 {
                continue;
            }
            let result = match compiled.wires[i].get(upstream) {
                Ok(wire) => wire.warm_up().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => opened += n,
                Err(e) => failed.push((upstream.name.clone(), e)),
            }
        }
        (opened, failed)
    }
}
