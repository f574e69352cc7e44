//! [`TestUpstream`] and its [`Builder`]: configuration, start (own runtime or the caller's),
//! the script and log API, and bounded shutdown.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::auth::{TOKEN_PATH, TestAuth};
use super::baidu::BAIDU_CHAT_PATH;
use super::fault::Match;
use super::log::Arrival;
use super::openai::Lengths;
use super::server::{self, Config, Shared};
use super::tls::{self, TestCa};
use super::{Action, Error, FaultMix, Latency, RateLimitHeaders};

/// Configures and starts a [`TestUpstream`].
///
/// ```
/// use std::time::Duration;
/// use tollgate_testkit::{FaultMix, TestUpstream};
/// let ms = Duration::from_millis;
/// let upstream = TestUpstream::builder()
///     .latency(ms(1)..ms(3))
///     .fault_mix(FaultMix { rate_limited: 0.05, unavailable: 0.02, cut_stream: 0.01, ..FaultMix::default() })
///     .seed(7)
///     .start()
///     .unwrap();
/// assert!(upstream.base_url().starts_with("http://127.0.0.1:"));
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    latency: Latency,
    drip: Duration,
    mix: FaultMix,
    seed: u64,
    event_ids: bool,
    rate_limit_headers: Option<RateLimitHeaders>,
    lengths: Lengths,
    models: Vec<String>,
    worker_threads: usize,
    grace: Duration,
    auth: TestAuth,
    port: u16,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            latency: Latency::None,
            drip: Duration::ZERO,
            mix: FaultMix::default(),
            seed: 0,
            event_ids: false,
            rate_limit_headers: None,
            lengths: Lengths {
                default_words: 16,
                max_words: 512,
            },
            models: [
                "gpt-4o",
                "gpt-4o-mini",
                "gpt-4.1",
                "gpt-4.1-mini",
                "o3-mini",
            ]
            .map(str::to_owned)
            .to_vec(),
            worker_threads: 2,
            grace: Duration::from_secs(2),
            auth: TestAuth::None,
            port: 0,
        }
    }
}

impl Builder {
    /// Extra delay before every response head (fixed, or a range drawn with the seed).
    pub fn latency(mut self, latency: impl Into<Latency>) -> Builder {
        self.latency = latency.into();
        self
    }

    /// Delay between the SSE events of every stream (default none).
    pub fn drip(mut self, gap: Duration) -> Builder {
        self.drip = gap;
        self
    }

    /// Faults drawn per request that no script handles (default none).
    pub fn fault_mix(mut self, mix: FaultMix) -> Builder {
        self.mix = mix;
        self
    }

    /// Seed of the fault and latency draws (default 0). Same seed, same requests in the same
    /// order: same faults and delays.
    pub fn seed(mut self, seed: u64) -> Builder {
        self.seed = seed;
        self
    }

    /// Gives every SSE event an `id:` (1, 2, ...), so clients can resume with
    /// `Last-Event-ID` (honoured either way). Default off, like OpenAI.
    pub fn event_ids(mut self, on: bool) -> Builder {
        self.event_ids = on;
        self
    }

    /// `x-ratelimit-*` headers on every normal response (default none); 429s use these
    /// limits too.
    pub fn rate_limit_headers(mut self, headers: RateLimitHeaders) -> Builder {
        self.rate_limit_headers = Some(headers);
        self
    }

    /// Reply length in words when a request sets no `max_tokens` (default 16).
    pub fn default_words(mut self, words: usize) -> Builder {
        self.lengths.default_words = words;
        self
    }

    /// Longest reply in words, whatever `max_tokens` says (default 512).
    pub fn max_words(mut self, words: usize) -> Builder {
        self.lengths.max_words = words;
        self
    }

    /// The models `GET /v1/models` lists (chat completions accept any model).
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Builder {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// The port on 127.0.0.1 to listen on (default 0: a free one, see [`TestUpstream::addr`]).
    pub fn port(mut self, port: u16) -> Builder {
        self.port = port;
        self
    }

    /// Worker threads of the upstream's own runtime (default 2; [`Builder::start`] only).
    pub fn worker_threads(mut self, n: usize) -> Builder {
        self.worker_threads = n.max(1);
        self
    }

    /// How long shutdown lets open connections finish (default 2 s). Shutdown first cuts
    /// every pending delay short, so normal responses finish at once.
    pub fn shutdown_timeout(mut self, grace: Duration) -> Builder {
        self.grace = grace;
        self
    }

    /// How `/v1/*` requests must authenticate (default [`TestAuth::None`]: not at all).
    /// [`TestAuth::OAuth2`] also serves the token endpoint at
    /// [`TestUpstream::token_url`]; its requests are logged but take no scripted action, fault
    /// or latency.
    pub fn auth(mut self, auth: TestAuth) -> Builder {
        self.auth = auth;
        self
    }

    /// Starts serving plain HTTP (HTTP/1.1 and h2c with prior knowledge) on `127.0.0.1:0`, on
    /// a runtime of its own (background threads): usable from sync code, benches and tokio.
    pub fn start(self) -> Result<TestUpstream, Error> {
        self.launch(false, Mode::OwnRuntime)
    }

    /// As [`Builder::start`], serving HTTPS (ALPN `h2` and `http/1.1`) with a certificate
    /// signed by a CA generated now; see [`TestUpstream::ca`].
    pub fn start_tls(self) -> Result<TestUpstream, Error> {
        self.launch(true, Mode::OwnRuntime)
    }

    /// As [`Builder::start`], but serving on the current tokio runtime (no extra threads).
    /// Drop or [`TestUpstream::shutdown`] only signals shutdown;
    /// [`TestUpstream::shutdown_async`] also waits for it.
    pub async fn start_async(self) -> Result<TestUpstream, Error> {
        self.launch(false, Mode::CurrentRuntime)
    }

    /// As [`Builder::start_tls`], on the current tokio runtime.
    pub async fn start_tls_async(self) -> Result<TestUpstream, Error> {
        self.launch(true, Mode::CurrentRuntime)
    }

    fn launch(self, tls: bool, mode: Mode) -> Result<TestUpstream, Error> {
        self.mix.validate()?;
        let (ca, acceptor) = if tls {
            let (ca, config) = tls::generate()?;
            (Some(ca), Some(TlsAcceptor::from(config)))
        } else {
            (None, None)
        };
        let std_listener =
            StdListener::bind((Ipv4Addr::LOCALHOST, self.port)).map_err(Error::Bind)?;
        let addr = std_listener.local_addr().map_err(Error::Bind)?;
        std_listener.set_nonblocking(true).map_err(Error::Bind)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let config = Config {
            latency: self.latency,
            drip: self.drip,
            seed: self.seed,
            event_ids: self.event_ids,
            lengths: self.lengths,
            models: self.models,
            grace: self.grace,
            auth: self.auth,
        };
        let shared = Arc::new(Shared::new(
            config,
            self.mix,
            self.rate_limit_headers,
            stop_rx,
        ));
        let for_server = shared.clone();
        let runner = match mode {
            Mode::OwnRuntime => {
                let rt = tollgate::transport::runtime("tollgate-testkit", self.worker_threads)
                    .map_err(Error::Runtime)?;
                let (done_tx, done_rx) = mpsc::channel();
                let thread = tollgate::transport::with_sigpipe_blocked(|| {
                    std::thread::Builder::new()
                        .name("tollgate-testkit".into())
                        .spawn(move || {
                            tollgate::transport::block_sigpipe();
                            rt.block_on(async move {
                                match tokio::net::TcpListener::from_std(std_listener) {
                                    Ok(listener) => {
                                        server::serve(listener, acceptor, for_server).await
                                    }
                                    Err(_) => drop(for_server),
                                }
                            });
                            rt.shutdown_timeout(Duration::from_millis(100));
                            let _ = done_tx.send(());
                        })
                })
                .map_err(Error::Runtime)?;
                Runner::Thread {
                    thread: Some(thread),
                    done: Mutex::new(done_rx),
                }
            }
            Mode::CurrentRuntime => {
                let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
                let _guard = handle.enter();
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).map_err(Error::Bind)?;
                Runner::Task(Some(
                    handle.spawn(server::serve(listener, acceptor, for_server)),
                ))
            }
        };
        Ok(TestUpstream {
            addr,
            ca,
            shared,
            stop: stop_tx,
            runner,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    OwnRuntime,
    CurrentRuntime,
}

enum Runner {
    Thread {
        thread: Option<JoinHandle<()>>,
        // In a mutex only so that the handle is `Sync`.
        done: Mutex<mpsc::Receiver<()>>,
    },
    Task(Option<tokio::task::JoinHandle<()>>),
}

/// A running fault-injecting OpenAI-compatible upstream on loopback.
///
/// It serves `POST /v1/chat/completions` (JSON or SSE), `GET /v1/models`,
/// `GET /v1/models/{id}` and Baidu's ERNIE v1 chat (`POST` under [`BAIDU_CHAT_PATH`]), applies scripted or drawn faults, and logs every arrival. Dropping it
/// shuts it down (bounded by [`Builder::shutdown_timeout`] plus a second).
pub struct TestUpstream {
    addr: SocketAddr,
    ca: Option<TestCa>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    runner: Runner,
}

impl std::fmt::Debug for TestUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestUpstream")
            .field("addr", &self.addr)
            .field("tls", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl TestUpstream {
    /// A [`Builder`] with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts an upstream with the defaults: no latency, no faults, plain HTTP.
    pub fn start() -> Result<TestUpstream, Error> {
        Builder::default().start()
    }

    /// The address served (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when serving HTTPS.
    pub fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub fn origin(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The OpenAI base URL: `http://127.0.0.1:PORT/v1` (or `https://`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.origin())
    }

    /// The Baidu ERNIE v1 chat base URL:
    /// `http://127.0.0.1:PORT/rpc/2.0/ai_custom/v1/wenxinworkshop/chat` (or `https://`); a chat
    /// request goes to it followed by `/{endpoint}`, e.g. `/completions_pro`.
    ///
    /// ```
    /// let upstream = tollgate_testkit::TestUpstream::start().unwrap();
    /// assert_eq!(
    ///     upstream.baidu_base_url(),
    ///     format!("http://{}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat", upstream.addr()),
    /// );
    /// ```
    pub fn baidu_base_url(&self) -> String {
        self.url(BAIDU_CHAT_PATH)
    }

    /// The origin followed by `path`, e.g. `url("/v1/chat/completions")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// The OAuth2 token endpoint: the origin followed by `/oauth/2.0/token` (served only with
    /// [`TestAuth::OAuth2`]).
    pub fn token_url(&self) -> String {
        self.url(TOKEN_PATH)
    }

    /// How many OAuth2 tokens the token endpoint has issued (revoked ones included).
    pub fn tokens_issued(&self) -> usize {
        self.shared.tokens.issued()
    }

    /// Revokes every OAuth2 token issued so far: requests carrying one get a 401 from now on
    /// (on the Baidu chat path: HTTP 200 with `error_code` 111, "Access token expired"), and a
    /// client has to fetch a new token.
    pub fn revoke_tokens(&self) {
        self.shared.tokens.revoke_all();
    }

    /// The CA that signed the certificate, for an upstream started with `start_tls`.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// Queues `actions` for the requests `m` matches: each matching request takes the next
    /// one, in order. Scripts are tried in the order given; requests no script takes are
    /// left to the fault mix.
    pub fn script(&self, m: Match, actions: impl IntoIterator<Item = Action>) {
        self.shared.scripts.lock().push(m, actions);
    }

    /// Drops every queued scripted action.
    pub fn clear_script(&self) {
        self.shared.scripts.lock().clear();
    }

    /// Scripted actions not yet used.
    pub fn script_remaining(&self) -> usize {
        self.shared.scripts.lock().remaining()
    }

    /// Replaces the fault mix (the draw sequence continues: draw `n` is still draw `n`).
    pub fn set_fault_mix(&self, mix: FaultMix) -> Result<(), Error> {
        mix.validate()?;
        *self.shared.mix.lock() = mix;
        Ok(())
    }

    /// Sets (or removes) the `x-ratelimit-*` headers of normal responses.
    pub fn set_rate_limit_headers(&self, headers: Option<RateLimitHeaders>) {
        *self.shared.rate_limit_headers.lock() = headers;
    }

    /// Every request received since the start or the last [`TestUpstream::clear_log`].
    pub fn log(&self) -> Vec<Arrival> {
        self.shared.log.snapshot()
    }

    /// Empties the log (arrival numbers keep counting).
    pub fn clear_log(&self) {
        self.shared.log.clear();
    }

    /// TCP connections accepted since the start (not reset by `clear_log`).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Requests in the log.
    pub fn request_count(&self) -> usize {
        self.shared.log.count(|_| true)
    }

    /// Requests in the log for which `pred` holds.
    pub fn count(&self, pred: impl Fn(&Arrival) -> bool) -> usize {
        self.shared.log.count(pred)
    }

    /// Requests in the log answered with `status`.
    pub fn count_status(&self, status: u16) -> usize {
        self.count(|a| a.status == Some(status))
    }

    /// Requests in the log to `path` (e.g. `/v1/chat/completions`).
    pub fn count_path(&self, path: &str) -> usize {
        self.count(|a| a.path == path)
    }

    /// Requests in the log that got a fault.
    pub fn count_faulted(&self) -> usize {
        self.count(|a| a.fault.is_some())
    }

    /// Waits until the log holds at least `n` requests, at most `timeout`; true if it does.
    /// Blocks the calling thread.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.shared.log.wait_for_len(n, timeout)
    }

    /// Stops accepting, cuts pending delays short, lets open connections finish within the
    /// shutdown timeout, and (own runtime) waits for that, a second longer at most.
    pub fn shutdown(mut self) {
        self.stop_and_wait();
    }

    /// As [`TestUpstream::shutdown`], awaiting the end without blocking the caller's runtime.
    pub async fn shutdown_async(mut self) {
        let _ = self.stop.send(true);
        let limit = self.shared.config.grace + Duration::from_secs(1);
        match &mut self.runner {
            Runner::Task(handle) => {
                if let Some(h) = handle.take() {
                    let _ = tokio::time::timeout(limit, h).await;
                }
            }
            Runner::Thread { thread, done } => {
                let deadline = tokio::time::Instant::now() + limit;
                while tokio::time::Instant::now() < deadline {
                    match done.get_mut().try_recv() {
                        Err(mpsc::TryRecvError::Empty) => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        _ => {
                            if let Some(t) = thread.take() {
                                let _ = t.join();
                            }
                            break;
                        }
                    }
                }
            }
        }
    }

    fn stop_and_wait(&mut self) {
        let _ = self.stop.send(true);
        if let Runner::Thread { thread, done } = &mut self.runner {
            let limit = self.shared.config.grace + Duration::from_secs(1);
            if let Some(t) = thread.take() {
                match done.get_mut().recv_timeout(limit) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {} // leave it behind
                    _ => {
                        let _ = t.join();
                    }
                }
            }
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}
