//! The compiled, validated form of a policy file.
//!
//! Every value here has passed validation: names are unique, limits are positive, durations are
//! parsed, globs are compiled. The engine reads only this form; the file format lives in
//! [`super::parse`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::tokens::{Encoding, Price};

/// A validated policy. Build one with [`Policy::from_toml`], [`Policy::from_json`] or
/// [`Policy::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Schema version; always 1 today.
    pub version: u32,
    /// Engine-wide settings (`[defaults]`).
    pub defaults: Defaults,
    /// Upstream APIs (`[[upstream]]`), in file order.
    pub upstreams: Vec<Upstream>,
    /// Budgets (`[[budget]]`), in file order; every matching budget is checked on admission.
    pub budgets: Vec<Budget>,
    /// Routes from a requested model name to targets (`[[route]]`), in file order.
    pub routes: Vec<Route>,
    /// Retry rules (`[retry]`).
    pub retry: Retry,
    /// Circuit-breaker rules (`[breaker]`).
    pub breaker: Breaker,
    /// Response-cache rules (`[cache]`).
    pub cache: Cache,
    /// Price overrides per model name (`[prices]`), per 1M tokens; they win over the bundled table.
    pub prices: BTreeMap<String, Price>,
    /// Model facts overrides (`[models]`): encoding and context window.
    pub models: BTreeMap<String, ModelOverride>,
    /// The shared store (`[redis]`), when budgets or the cache use one.
    pub redis: Option<Redis>,
    /// The sidecar proxy (`[serve]`) that `tollgate serve` runs.
    pub serve: Option<Serve>,
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: std::net::IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4 address mapped into IPv6 counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One virtual key of `[serve]`: clients send the key, the proxy knows only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualKey {
    /// SHA-256 of the key, 32 bytes (written `sha256:<64 hex digits>`).
    pub sha256: [u8; 32],
    /// The tenant its calls are made for (budgets scoped by tenant see this).
    pub tenant: String,
    /// A name for logs and metrics (default: the tenant).
    pub name: String,
}

impl VirtualKey {
    /// The entry for a virtual key given in clear (hashed here; the key itself is not kept),
    /// named after its tenant: for building a [`Serve`] section in code.
    ///
    /// ```
    /// use tollgate::policy::{VirtualKey, hash_key};
    /// let k = VirtualKey::from_key("vk-team-a-123", "team-a");
    /// assert_eq!((k.tenant.as_str(), k.name.as_str()), ("team-a", "team-a"));
    /// assert_eq!(k.sha256, VirtualKey::digest("vk-team-a-123"));
    /// assert_eq!(hash_key("vk-team-a-123").len(), 7 + 64);
    /// ```
    pub fn from_key(key: &str, tenant: impl Into<String>) -> VirtualKey {
        let tenant = tenant.into();
        VirtualKey {
            sha256: VirtualKey::digest(key),
            name: tenant.clone(),
            tenant,
        }
    }

    /// SHA-256 of a virtual key, as [`VirtualKey::sha256`] holds it.
    pub fn digest(key: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

/// `sha256:<hex>` of a virtual key, as `[[serve.key]] hash` wants it
/// (`tollgate serve --hash-key` prints it).
pub fn hash_key(key: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in VirtualKey::digest(key) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `[serve]`: the OpenAI-compatible sidecar proxy run by `tollgate serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Serve {
    /// Address to listen on (default `127.0.0.1:8080`; `--listen` overrides).
    pub listen: std::net::SocketAddr,
    /// A separate listener for the admin endpoints; `None` serves them under `/admin/` on
    /// `listen`.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Bearer token of the admin endpoints (a secret reference); `None` turns them off.
    pub admin_token: Option<SecretRef>,
    /// Client networks allowed to connect (default loopback only).
    pub allow: Vec<Cidr>,
    /// Virtual keys; a request without one of them is refused with 401.
    pub keys: Vec<VirtualKey>,
    /// Largest request body (default 4 MiB).
    pub max_body_bytes: u64,
    /// Largest request head, all headers together (default 64 KiB).
    pub max_header_bytes: u64,
    /// Longest a client may take to send a request head (default 10s).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request body (default 30s).
    pub body_timeout: Duration,
    /// Longest a connection may stay open with no request in progress (default 60s). A new
    /// connection must also send its first request head within `header_timeout`.
    pub idle_timeout: Duration,
    /// Longest a client may leave response bytes untaken (default 30s); then its connection,
    /// and the call behind it, are closed.
    pub write_timeout: Duration,
    /// Most client connections open at once (default 1024); further clients wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// On SIGTERM: how long calls in flight may take to finish (default 30s).
    pub shutdown_grace: Duration,
    /// One JSON line per request on standard error (default false).
    pub access_log: bool,
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            admin_token: None,
            allow: vec![
                Cidr {
                    addr: std::net::IpAddr::from([127, 0, 0, 0]),
                    prefix: 8,
                },
                Cidr {
                    addr: std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            keys: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(30),
            access_log: false,
        }
    }
}

/// `[defaults]`: settings that apply when a call or a budget does not say otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Completion allowance reserved when a request sets neither `max_tokens` nor
    /// `max_completion_tokens` (`max_completion_tokens`, default 1024).
    pub max_completion_tokens: u64,
    /// Most distinct keys one budget keeps state for (`key_capacity`, default 100_000).
    pub key_capacity: usize,
    /// Refuse a call whose prompt plus completion allowance exceeds the model's context window
    /// (`enforce_context_window`, default true).
    pub enforce_context_window: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_completion_tokens: 1024,
            key_capacity: 100_000,
            enforce_context_window: true,
        }
    }
}

/// A reference to a secret. The value is read from the environment or a file when it is needed and
/// is never stored in the policy, printed, or put in an error.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// `env:NAME`
    Env(String),
    /// `file:PATH`
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// `[[upstream]]`: an OpenAI-compatible API.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Unique name, used by routes and budget scopes.
    pub name: String,
    /// Base URL such as `https://api.openai.com/v1`.
    pub base_url: String,
    /// How requests are authenticated.
    pub auth: Auth,
    /// Per-phase timeouts.
    pub timeouts: Timeouts,
    /// Extra CA certificate file (PEM) trusted for this upstream, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Proxy URL (`http://host:port`) used through CONNECT; `None` means `HTTPS_PROXY` if set.
    pub proxy: Option<String>,
    /// How long a pool key that got 401 is left out of rotation (`key_quarantine`, default 5m).
    pub key_quarantine: Duration,
    /// Ask for the final usage chunk of streams (`stream_options.include_usage`); turn off for
    /// upstreams that reject the field, and the streamed text is counted instead
    /// (`stream_usage`, default true).
    pub stream_usage: bool,
    /// Resume a stream cut after content was delivered by sending the request again with
    /// `Last-Event-ID`, when the upstream numbers its events (`resume_streams`, default false).
    pub resume_streams: bool,
    /// Connections opened to this upstream when the engine starts its transport, so the first
    /// calls do not pay the TCP and TLS handshakes (`warm_up`, 0 to 64, default 0).
    pub warm_up: u32,
    /// Idle HTTP/1.1 connections kept open to this upstream for the next calls (`max_idle`,
    /// 0 to 65,536, default [`DEFAULT_MAX_IDLE`]; 0 closes each connection after its call). Set
    /// it at or above the calls in flight at once: a connection finished while the pool is full
    /// is closed, and the next call pays a new TCP (and TLS) handshake.
    pub max_idle: u32,
    /// Interval of HTTP/2 keep-alive pings on idle connections (`http2_keep_alive`, default
    /// off), so a pooled connection survives idle periods behind NAT and load balancers.
    pub http2_keep_alive: Option<Duration>,
    /// What the upstream speaks (`dialect`, default `openai`); callers always speak OpenAI chat
    /// completions and the dialect translates ([`crate::dialect`]).
    pub dialect: crate::dialect::Dialect,
    /// Model → endpoint path entries added to (or replacing) the built-in table of the
    /// `baidu_v1` dialect ([`crate::dialect::baidu::ENDPOINTS`]), model names in lower case
    /// (`endpoints = { "ernie-4.0-8k" = "completions_pro" }`).
    pub endpoints: Vec<(String, String)>,
}

/// Default for [`Upstream::max_idle`]: enough for 256 calls in flight at once without opening
/// a connection per call.
pub const DEFAULT_MAX_IDLE: u32 = 256;

/// Default for [`Upstream::key_quarantine`].
pub const DEFAULT_KEY_QUARANTINE: Duration = Duration::from_secs(300);

/// How an upstream authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// No credentials (local vLLM, the test upstream).
    None,
    /// `Authorization: Bearer <key>`; several keys form a pool.
    Bearer {
        /// The key pool, in order.
        keys: Vec<SecretRef>,
    },
    /// A JWT (HS256) minted from an id and a secret (Zhipu, SiliconFlow style).
    Jwt {
        /// The API key id.
        id: SecretRef,
        /// The signing secret.
        secret: SecretRef,
        /// Lifetime of a minted token.
        ttl: Duration,
        /// Mint a new token this long before the old one expires.
        refresh_before: Duration,
    },
    /// OAuth2 client credentials (Baidu Qianfan style).
    OAuth2 {
        /// The token endpoint.
        token_url: String,
        /// Client id.
        client_id: SecretRef,
        /// Client secret.
        client_secret: SecretRef,
        /// Where the access token goes.
        placement: TokenPlacement,
    },
}

/// Where an OAuth2 access token is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>`
    Header,
    /// `?access_token=<token>`
    Query,
}

/// Per-phase timeouts of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect (default 3s).
    pub connect: Duration,
    /// Until the response head arrives (default 60s).
    pub first_byte: Duration,
    /// Longest silence between stream chunks (default 60s).
    pub idle: Duration,
    /// Whole call (default 600s).
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

/// A dimension a budget is split by: one budget state per distinct value (tuple) of its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeDim {
    /// The calling tenant.
    Tenant,
    /// The requested model.
    Model,
    /// The upstream the call goes to.
    Upstream,
    /// The API key (or key-pool member) the call uses.
    Key,
    /// The route name.
    Route,
}

impl ScopeDim {
    /// All dimensions, in canonical order.
    pub const ALL: [ScopeDim; 5] = [
        ScopeDim::Tenant,
        ScopeDim::Model,
        ScopeDim::Upstream,
        ScopeDim::Key,
        ScopeDim::Route,
    ];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeDim::Tenant => "tenant",
            ScopeDim::Model => "model",
            ScopeDim::Upstream => "upstream",
            ScopeDim::Key => "key",
            ScopeDim::Route => "route",
        }
    }
}

/// A compiled glob: `*` matches any run of characters, `?` one character; everything else is
/// literal. Matching allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    /// Compiles a pattern. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_owned(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let p = self.pattern.as_bytes();
        if !p.contains(&b'*') && !p.contains(&b'?') {
            return self.pattern == text;
        }
        // Iterative wildcard match with single-star backtracking; works on chars so `?` is one
        // character even outside ASCII.
        let p: Vec<char> = self.pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0usize, 0usize);
        let (mut star, mut mark) = (None::<usize>, 0usize);
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some(pi);
                mark = ti;
                pi += 1;
            } else if let Some(s) = star {
                pi = s + 1;
                mark += 1;
                ti = mark;
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == '*' {
            pi += 1;
        }
        pi == p.len()
    }
}

/// `match = { ... }`: which calls a budget applies to. An absent field matches everything; a
/// field with several globs matches when any of them does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Tenant globs.
    pub tenant: Vec<Glob>,
    /// Model globs.
    pub model: Vec<Glob>,
    /// Upstream globs.
    pub upstream: Vec<Glob>,
    /// Key globs.
    pub key: Vec<Glob>,
    /// Route globs.
    pub route: Vec<Glob>,
}

impl Match {
    /// The globs of one dimension.
    pub fn globs(&self, dim: ScopeDim) -> &[Glob] {
        match dim {
            ScopeDim::Tenant => &self.tenant,
            ScopeDim::Model => &self.model,
            ScopeDim::Upstream => &self.upstream,
            ScopeDim::Key => &self.key,
            ScopeDim::Route => &self.route,
        }
    }

    /// Whether this matches everything.
    pub fn is_empty(&self) -> bool {
        ScopeDim::ALL.iter().all(|d| self.globs(*d).is_empty())
    }
}

/// What a rate limit counts, and over which window. Each kind has a fixed slot in a budget's
/// state, so state survives reloads that add or remove other limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    /// `requests_per_second`
    RequestsPerSecond,
    /// `requests_per_minute`
    RequestsPerMinute,
    /// `requests_per_hour`
    RequestsPerHour,
    /// `requests_per_day`
    RequestsPerDay,
    /// `tokens_per_minute` (prompt + completion)
    TokensPerMinute,
    /// `tokens_per_hour`
    TokensPerHour,
    /// `tokens_per_day`
    TokensPerDay,
    /// `spend_per_day`, in the currency of the price table
    SpendPerDay,
    /// `spend_per_month` (30 days)
    SpendPerMonth,
}

/// What a [`LimitKind`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Calls.
    Requests,
    /// Tokens, prompt plus completion.
    Tokens,
    /// Money, in the price table's currency.
    Spend,
}

impl LimitKind {
    /// Every kind, in slot order.
    pub const ALL: [LimitKind; 9] = [
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour,
        LimitKind::RequestsPerDay,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerHour,
        LimitKind::TokensPerDay,
        LimitKind::SpendPerDay,
        LimitKind::SpendPerMonth,
    ];

    /// The field name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerSecond => "requests_per_second",
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::RequestsPerHour => "requests_per_hour",
            LimitKind::RequestsPerDay => "requests_per_day",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::TokensPerHour => "tokens_per_hour",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::SpendPerDay => "spend_per_day",
            LimitKind::SpendPerMonth => "spend_per_month",
        }
    }

    /// The kind for a policy field name.
    pub fn from_name(name: &str) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The state slot of this kind (0..9).
    pub fn slot(self) -> usize {
        self as usize
    }

    /// What it counts.
    pub fn unit(self) -> Unit {
        match self {
            LimitKind::RequestsPerSecond
            | LimitKind::RequestsPerMinute
            | LimitKind::RequestsPerHour
            | LimitKind::RequestsPerDay => Unit::Requests,
            LimitKind::TokensPerMinute | LimitKind::TokensPerHour | LimitKind::TokensPerDay => {
                Unit::Tokens
            }
            LimitKind::SpendPerDay | LimitKind::SpendPerMonth => Unit::Spend,
        }
    }

    /// The window the amount refills over.
    pub fn window(self) -> Duration {
        const MIN: u64 = 60;
        const HOUR: u64 = 60 * MIN;
        const DAY: u64 = 24 * HOUR;
        Duration::from_secs(match self {
            LimitKind::RequestsPerSecond => 1,
            LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => MIN,
            LimitKind::RequestsPerHour | LimitKind::TokensPerHour => HOUR,
            LimitKind::RequestsPerDay | LimitKind::TokensPerDay | LimitKind::SpendPerDay => DAY,
            LimitKind::SpendPerMonth => 30 * DAY,
        })
    }
}

/// One rate limit of a budget: `amount` per window, refilled smoothly, bursting up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// What and over which window.
    pub kind: LimitKind,
    /// Amount per window: calls, tokens, or money (> 0, finite). A parsed policy holds at most
    /// one request per nanosecond of the window, and tokens and money (in billionths) below 2^64.
    pub amount: f64,
    /// Most that may be used at once; defaults to `amount` (at least 1 for request limits). In a
    /// parsed policy it refills in at least one nanosecond and at most 2^63 ns (about 292 years).
    pub burst: f64,
}

/// What happens when a budget has no room for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Refuse at once.
    Deny,
    /// Queue for at most this long, then refuse.
    Wait(Duration),
}

/// Where a budget's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// In this process.
    Local,
    /// In the Redis server of the `[redis]` section, shared by every process that uses it.
    Redis,
}

/// A local lease on a Redis budget (`lease = { size = 20, ttl = "1s" }`): one round trip takes
/// room for `size` calls at once, which this process then spends without asking Redis again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Calls' worth of room taken per round trip (at least 2; 1 would be no lease).
    pub size: u32,
    /// How long unspent room is kept before it is handed back.
    pub ttl: Duration,
}

/// What a Redis budget does while Redis cannot be reached in time (`[redis] on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Decide locally with every limit (and concurrency) divided by `expected_instances`, and say
    /// so in the metric `tollgate_budget_store_fallback`.
    FailOpen,
    /// Refuse the calls, with the reason `store_unavailable`.
    FailClosed,
}

/// Where the Redis URL comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// Written in the policy (no password allowed there).
    Plain(String),
    /// `env:NAME` or `file:PATH`, read when the engine connects (may hold a password).
    Secret(SecretRef),
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisUrl::Plain(url) => fmt::Debug::fmt(url, f),
            RedisUrl::Secret(r) => fmt::Display::fmt(r, f),
        }
    }
}

/// `[redis]`: the server that budgets with `store = "redis"` and the cache's second level share.
#[derive(Debug, Clone, PartialEq)]
pub struct Redis {
    /// `redis://host:port/db` or `rediss://` for TLS.
    pub url: RedisUrl,
    /// Prefix of every key tollgate writes (default `tollgate`).
    pub key_prefix: String,
    /// Longest wait for a connection (default 1s).
    pub connect_timeout: Duration,
    /// Longest wait for one operation before Redis counts as unavailable (default 50ms).
    pub op_timeout: Duration,
    /// A PEM file of CA certificates to trust for `rediss://` (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// What Redis budgets do while Redis is unavailable (required).
    pub on_failure: OnFailure,
    /// How many processes share the budgets; fail-open divides limits by it (default 1).
    pub expected_instances: u32,
    /// How long a concurrency slot held in Redis lives without renewal (default 30s): a process
    /// that dies holding one frees it after this long; live calls renew at a third of it.
    pub concurrency_lease: Duration,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: RedisUrl::Plain("redis://127.0.0.1:6379".to_owned()),
            key_prefix: "tollgate".to_owned(),
            connect_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_millis(50),
            tls_ca_file: None,
            on_failure: OnFailure::FailClosed,
            expected_instances: 1,
            concurrency_lease: Duration::from_secs(30),
        }
    }
}

/// `[[budget]]`: limits applied to every call that matches, one state per scope key.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Unique name; state is keyed by it, so renaming a budget starts it afresh.
    pub name: String,
    /// The dimensions that split this budget (empty: one state for every matching call).
    pub scope: Vec<ScopeDim>,
    /// Which calls it applies to.
    pub matcher: Match,
    /// Rate limits, at most one per kind, in slot order.
    pub limits: Vec<Limit>,
    /// Most calls in flight at once per key.
    pub concurrency: Option<u32>,
    /// Queue or refuse when exhausted.
    pub when_exhausted: Exhausted,
    /// Most distinct keys kept (defaults to `defaults.key_capacity`).
    pub key_capacity: usize,
    /// Where the state lives.
    pub store: Store,
    /// A local lease (Redis budgets only).
    pub lease: Option<Lease>,
}

/// How a route picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// First healthy target in order.
    Ordered,
    /// By weight.
    Weighted,
    /// Lowest recent latency (EWMA, power of two choices).
    LowestLatency,
}

/// One target of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Upstream name (exists in `upstreams`).
    pub upstream: String,
    /// Model name sent to that upstream.
    pub model: String,
    /// Weight for [`Strategy::Weighted`] (default 1).
    pub weight: u32,
}

/// `[[route]]`: where calls for a model name go.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Route name (defaults to `model`).
    pub name: String,
    /// Requested model name (glob).
    pub model: Glob,
    /// Targets, at least one.
    pub targets: Vec<Target>,
    /// How to pick.
    pub strategy: Strategy,
    /// Route whose targets are tried when every target of this one has failed (`fallback`).
    /// Chains are followed; validation refuses loops.
    pub fallback: Option<String>,
}

/// Jitter applied to exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No jitter.
    None,
    /// Uniform in [0, delay].
    Full,
    /// delay/2 + uniform in [0, delay/2].
    Equal,
    /// AWS "decorrelated jitter".
    Decorrelated,
}

/// An outcome class that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// An HTTP status code.
    Status(u16),
    /// Every status from 500 to 599 (`"5xx"`).
    ServerErrors,
    /// Connection refused or reset, DNS failure.
    Connect,
    /// Any timeout.
    Timeout,
    /// A 200 whose body was not the expected JSON.
    Malformed,
    /// A stream cut before `[DONE]` (only before content reached the caller).
    CutStream,
}

/// `[retry]`
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all, the first one included (default 3).
    pub max_attempts: u32,
    /// Backoff base (default 500ms).
    pub base: Duration,
    /// Backoff cap (default 8s).
    pub max_backoff: Duration,
    /// Jitter (default full).
    pub jitter: Jitter,
    /// Longest server-directed delay honoured; above it the call gives up (default 60s).
    pub max_retry_after: Duration,
    /// What is retried (default: 408, 409, 429, 5xx, connect, timeout).
    pub retry_on: Vec<RetryOn>,
    /// Retry budget: tokens refunded per success (default 0.1).
    pub budget_ratio: f64,
    /// Retry budget: bucket size (default 10).
    pub budget_max_tokens: f64,
    /// Retry budget: tokens refilled per second of time, besides the successes' (default 0.5;
    /// 0 turns it off, which is plain gRPC A6).
    pub budget_refill_per_second: f64,
    /// Retry budget: tokens a 429 that says when to retry (`retry-after-ms`, `Retry-After`, or
    /// an exhausted `x-ratelimit-*` limit's reset) costs, 0 to 1
    /// (default 0.5; 1 charges it as any failure, as A6 does).
    pub budget_retry_after_cost: f64,
    /// Let `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` response headers tighten the local
    /// budgets of that upstream and key until the reset (`honor_server_limits`, default true).
    pub honor_server_limits: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            jitter: Jitter::Full,
            max_retry_after: Duration::from_secs(60),
            retry_on: vec![
                RetryOn::Status(408),
                RetryOn::Status(409),
                RetryOn::Status(429),
                RetryOn::ServerErrors,
                RetryOn::Connect,
                RetryOn::Timeout,
            ],
            budget_ratio: 0.1,
            budget_max_tokens: 10.0,
            budget_refill_per_second: 0.5,
            budget_retry_after_cost: 0.5,
            honor_server_limits: true,
        }
    }
}

/// `[breaker]`
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    /// Whether breakers are used (default true).
    pub enabled: bool,
    /// Sliding window: the last N calls, or the calls of the last duration (default 20 calls).
    pub window: BreakerWindow,
    /// Calls needed before the rate is judged (default 20).
    pub min_calls: u32,
    /// Failure rate that opens (0..=1, default 0.5).
    pub failure_rate: f64,
    /// A call slower than this counts as slow (default none).
    pub slow_call: Option<Duration>,
    /// Slow-call rate that opens (0..=1, default 1.0).
    pub slow_call_rate: f64,
    /// How long it stays open (default 30s).
    pub open_for: Duration,
    /// Probe calls allowed while half-open (default 3).
    pub half_open_calls: u32,
    /// A synthetic probe request sent while half-open instead of letting users' calls test a
    /// sick upstream (`probe = { prompt = "ping", max_tokens = 1 }`); `None`: probes are real calls.
    pub probe: Option<Probe>,
}

/// The sliding window of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerWindow {
    /// The last N calls (`window = 20`).
    Calls(u32),
    /// The calls of the last duration (`window = "30s"`).
    Time(Duration),
}

/// A synthetic half-open probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The user message sent.
    pub prompt: String,
    /// `max_tokens` of the probe (default 1).
    pub max_tokens: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            enabled: true,
            window: BreakerWindow::Calls(20),
            min_calls: 20,
            failure_rate: 0.5,
            slow_call: None,
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(30),
            half_open_calls: 3,
            probe: None,
        }
    }
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Whether responses are cached (default false).
    pub enabled: bool,
    /// Memory bound in bytes (default 64 MiB).
    pub max_bytes: u64,
    /// Time to live (default 10m).
    pub ttl: Duration,
    /// Only requests with temperature at most this are cached (default 0.0).
    pub temperature_at_most: f64,
    /// Serve an expired entry this long past its TTL when every target failed (default: off).
    pub stale_if_error: Option<Duration>,
    /// Merge identical requests in flight (default true).
    pub single_flight: bool,
    /// Only requests asking for at most this many choices (`n`) are cached (default 1).
    pub max_n: u32,
    /// Cache requests that carry `tools` / `functions` (default false: tool results change).
    pub allow_tools: bool,
    /// Cache only requests that set a `seed` (default false).
    pub require_seed: bool,
    /// Largest single entry, in bytes; larger responses are not cached. At most `max_bytes`.
    /// Default: `min(8 MiB, max_bytes / 8)` (at least 1 byte), computed from the file's
    /// `max_bytes`; see [`Cache::default_max_entry_bytes`].
    pub max_entry_bytes: u64,
    /// A second level in Redis (`l2 = { store = "redis", max_bytes = "1GB" }`), looked up after a
    /// local miss.
    pub l2: Option<CacheL2>,
    /// Who shares an entry (`scope = "tenant" | "shared"`, default `"tenant"`): with
    /// [`CacheScope::Tenant`] the calling tenant is part of every key, at every level and in
    /// single-flight, so one tenant never receives another's answer.
    pub scope: CacheScope,
    /// A disk level (`disk = { path = "...", max_bytes = "10GiB" }`), looked up after the memory
    /// level (and Redis) miss; it survives restarts and is shared by the processes of one host.
    pub disk: Option<CacheDisk>,
}

/// The cache's disk level: one SQLite file (WAL), shared by every process naming the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDisk {
    /// The database file (created with its directory when missing).
    pub path: std::path::PathBuf,
    /// Bytes of stored answers kept at most; the oldest go first.
    pub max_bytes: u64,
}

/// Who may be answered by a cached entry (`[cache] scope`).
///
/// ```
/// use tollgate::policy::{Cache, CacheScope};
/// assert_eq!(Cache::default().scope, CacheScope::Tenant);
/// assert_eq!(CacheScope::Shared.as_str(), "shared");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheScope {
    /// Entries belong to the tenant that stored them (the default): the tenant enters the key.
    #[default]
    Tenant,
    /// Entries answer identical requests of every tenant (a hit tells a tenant that someone
    /// else asked exactly that; only for tenants that trust each other).
    Shared,
}

impl CacheScope {
    /// The policy spelling: `"tenant"` or `"shared"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheScope::Tenant => "tenant",
            CacheScope::Shared => "shared",
        }
    }
}

/// The cache's second level in the `[redis]` server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheL2 {
    /// Bytes of bodies kept in Redis at most; the entries closest to expiry go first.
    pub max_bytes: u64,
}

impl Cache {
    /// The `max_entry_bytes` used when a policy sets none: an eighth of the cache, at most 8 MiB
    /// (and at least 1 byte).
    ///
    /// ```
    /// use tollgate::policy::Cache;
    /// assert_eq!(Cache::default_max_entry_bytes(256_000_000), 8 * 1024 * 1024);
    /// assert_eq!(Cache::default_max_entry_bytes(1_000_000), 125_000);
    /// ```
    pub fn default_max_entry_bytes(max_bytes: u64) -> u64 {
        (max_bytes / 8).clamp(1, 8 * 1024 * 1024)
    }
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: false,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(600),
            temperature_at_most: 0.0,
            stale_if_error: None,
            single_flight: true,
            max_n: 1,
            allow_tools: false,
            require_seed: false,
            max_entry_bytes: 8 * 1024 * 1024,
            l2: None,
            scope: CacheScope::Tenant,
            disk: None,
        }
    }
}

/// `[models."name"]`: facts about a model that the bundled table lacks or gets wrong.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelOverride {
    /// Exact tokenizer, if known.
    pub encoding: Option<Encoding>,
    /// Context window in tokens.
    pub context_window: Option<u64>,
}
