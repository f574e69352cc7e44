//! The fault-injecting OpenAI-compatible test upstream (crate `tollgate-testkit`) as a Node.js
//! addon, for the Node binding's tests, benchmark and examples: a real HTTP server on loopback,
//! started in-process. It is an addon of its own so that the published `tollgate` package
//! carries no test code; `index.js` beside it wraps it.
#![warn(missing_docs)]

use std::time::Duration;

use napi::Env;
use napi::bindgen_prelude::PromiseRaw;
use napi_derive::napi;
use parking_lot::Mutex;
use tollgate_testkit::{self as testkit, Action, Canned, Latency, Match};

/// How to start a [`TestUpstream`].
#[napi(object)]
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptionsJs {
    /// Delay before every response head, in ms (with `latency_max_ms`: the least of a uniform
    /// draw).
    pub latency_ms: Option<f64>,
    /// Upper end of a uniform latency draw, in ms.
    pub latency_max_ms: Option<f64>,
    /// Delay between the SSE events of every stream, in ms.
    pub drip_ms: Option<f64>,
    /// Reply length in words when a request sets no `max_tokens` (default 16).
    pub words: Option<u32>,
    /// Longest reply in words (default 512).
    pub max_words: Option<u32>,
    /// Seed of the latency and fault draws.
    pub seed: Option<f64>,
    /// Number every SSE event (`id:`), for resumable streams.
    pub event_ids: Option<bool>,
    /// Worker threads of the upstream's own runtime (default 2).
    pub worker_threads: Option<u32>,
}

/// Which requests a script applies to; every field given must hold.
#[napi(object)]
#[derive(Debug, Clone, Default)]
pub struct MatchJs {
    /// The body's `model`.
    pub model: Option<String>,
    /// The `x-testkit-tenant` header, else the body's `user`.
    pub tenant: Option<String>,
    /// The path, e.g. `/v1/chat/completions`.
    pub path: Option<String>,
    /// Streaming (true) or JSON (false) requests.
    pub stream: Option<bool>,
    /// A header that must be present: `[name, value]`.
    pub header: Option<Vec<String>>,
}

/// One scripted action. `kind` is one of `normal`, `latency` (`ms`), `slow_first_byte` (`ms`),
/// `slow_drip` (`ms`), `status_429` (`retry_after` s), `status_500`, `status_503`, `status`
/// (`status`, `should_retry`), `reset_mid_body`, `cut_stream_after` (`n` events),
/// `malformed_json`, `respond` (`status`, `headers`, `body`).
#[napi(object)]
#[derive(Debug, Clone, Default)]
pub struct ActionJs {
    /// What to do.
    pub kind: String,
    /// Delay in ms.
    pub ms: Option<f64>,
    /// Events before a cut.
    pub n: Option<u32>,
    /// `Retry-After` seconds of a 429.
    pub retry_after: Option<u32>,
    /// Status of `status` and `respond`.
    pub status: Option<u32>,
    /// `x-should-retry` of `status`.
    pub should_retry: Option<bool>,
    /// Body of `respond`.
    pub body: Option<String>,
    /// Headers of `respond`: `[name, value, name, value, ...]`.
    pub headers: Option<Vec<String>>,
}

/// One request the upstream received.
#[napi(object, object_from_js = false)]
pub struct ArrivalJs {
    /// Arrival number (0, 1, 2, ...).
    pub seq: f64,
    /// Milliseconds since the upstream started.
    pub offset_ms: f64,
    /// The path.
    pub path: String,
    /// The body's `model`.
    pub model: Option<String>,
    /// The tenant (`x-testkit-tenant`, else the body's `user`).
    pub tenant: Option<String>,
    /// Whether the body asked for a stream.
    pub stream: bool,
    /// The status sent (none while the head is delayed).
    pub status: Option<u32>,
    /// The fault applied, when one was (`Status503`, `CutStreamAfter(2)`, ...).
    pub fault: Option<String>,
    /// The request body.
    pub body: String,
}

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1e3)
}

fn action_of(a: &ActionJs) -> napi::Result<Action> {
    let ms = || millis(a.ms.unwrap_or(0.0));
    let status = || a.status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
    Ok(match a.kind.as_str() {
        "normal" => Action::Normal,
        "latency" => Action::Latency(Latency::Fixed(ms())),
        "slow_first_byte" => Action::SlowFirstByte(ms()),
        "slow_drip" => Action::SlowDrip(ms()),
        "status_429" => Action::Status429 {
            retry_after: u64::from(a.retry_after.unwrap_or(1)),
        },
        "status_500" => Action::Status500,
        "status_503" => Action::Status503,
        "status" => Action::Status {
            code: status(),
            should_retry: a.should_retry,
        },
        "reset_mid_body" => Action::ResetMidBody,
        "cut_stream_after" => Action::CutStreamAfter(a.n.unwrap_or(1) as usize),
        "malformed_json" => Action::MalformedJson,
        "respond" => Action::Respond(Canned {
            status: status(),
            headers: a
                .headers
                .as_deref()
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
            body: a.body.clone().unwrap_or_default().into(),
        }),
        other => {
            return Err(napi::Error::from_reason(format!(
                "unknown test upstream action '{other}'"
            )));
        }
    })
}

fn match_of(m: &MatchJs) -> Match {
    let mut out = Match::any();
    if let Some(model) = &m.model {
        out = out.and_model(model);
    }
    if let Some(tenant) = &m.tenant {
        out = out.and_tenant(tenant);
    }
    if let Some(path) = &m.path {
        out = out.and_path(path);
    }
    if let Some(stream) = m.stream {
        out = out.and_stream(stream);
    }
    if let Some([name, value]) = m.header.as_deref() {
        out = out.and_header(name, value);
    }
    out
}

/// A fault-injecting OpenAI-compatible upstream on `127.0.0.1`, on a runtime of its own.
#[napi]
pub struct TestUpstream {
    inner: Mutex<Option<testkit::TestUpstream>>,
    base_url: String,
}

impl TestUpstream {
    fn with<T>(&self, f: impl FnOnce(&testkit::TestUpstream) -> T) -> napi::Result<T> {
        match self.inner.lock().as_ref() {
            Some(up) => Ok(f(up)),
            None => Err(napi::Error::from_reason("the test upstream is closed")),
        }
    }
}

#[napi]
impl TestUpstream {
    /// Starts an upstream on `127.0.0.1:0`.
    #[napi(factory)]
    pub fn start(options: Option<UpstreamOptionsJs>) -> napi::Result<TestUpstream> {
        let o = options.unwrap_or_default();
        let mut b = testkit::TestUpstream::builder().shutdown_timeout(Duration::from_millis(200));
        match (o.latency_ms, o.latency_max_ms) {
            (Some(lo), Some(hi)) => b = b.latency(millis(lo)..millis(hi)),
            (Some(lo), None) => b = b.latency(millis(lo)),
            _ => {}
        }
        if let Some(d) = o.drip_ms {
            b = b.drip(millis(d));
        }
        if let Some(w) = o.words {
            b = b.default_words(w as usize);
        }
        if let Some(w) = o.max_words {
            b = b.max_words(w as usize);
        }
        if let Some(s) = o.seed {
            b = b.seed(s as u64);
        }
        if let Some(ids) = o.event_ids {
            b = b.event_ids(ids);
        }
        if let Some(n) = o.worker_threads {
            b = b.worker_threads(n as usize);
        }
        let up = b
            .start()
            .map_err(|e| napi::Error::from_reason(format!("test upstream: {e}")))?;
        Ok(TestUpstream {
            base_url: up.base_url(),
            inner: Mutex::new(Some(up)),
        })
    }

    /// The OpenAI base URL: `http://127.0.0.1:PORT/v1`.
    #[napi(getter)]
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Queues `actions` for the requests `m` matches, in order.
    #[napi]
    pub fn script(&self, m: MatchJs, actions: Vec<ActionJs>) -> napi::Result<()> {
        let actions = actions
            .iter()
            .map(action_of)
            .collect::<napi::Result<Vec<_>>>()?;
        self.with(|up| up.script(match_of(&m), actions))
    }

    /// Scripted actions not used yet.
    #[napi]
    pub fn script_remaining(&self) -> napi::Result<u32> {
        self.with(|up| up.script_remaining() as u32)
    }

    /// Requests received since the start (or the last `clear_log`).
    #[napi(getter)]
    pub fn requests(&self) -> napi::Result<u32> {
        self.with(|up| up.request_count() as u32)
    }

    /// Requests answered with `status`.
    #[napi]
    pub fn count_status(&self, status: u32) -> napi::Result<u32> {
        self.with(|up| up.count_status(u16::try_from(status).unwrap_or(0)) as u32)
    }

    /// Every request received, in arrival order.
    #[napi]
    pub fn log(&self) -> napi::Result<Vec<ArrivalJs>> {
        self.with(|up| {
            up.log()
                .into_iter()
                .map(|a| ArrivalJs {
                    seq: a.seq as f64,
                    offset_ms: a.offset.as_secs_f64() * 1e3,
                    path: a.path,
                    model: a.model,
                    tenant: a.tenant,
                    stream: a.stream,
                    status: a.status.map(u32::from),
                    fault: a.fault.map(|f| format!("{f:?}")),
                    body: String::from_utf8_lossy(&a.body).into_owned(),
                })
                .collect()
        })
    }

    /// Empties the log.
    #[napi]
    pub fn clear_log(&self) -> napi::Result<()> {
        self.with(|up| up.clear_log())
    }

    /// Stops the upstream (open connections get 200 ms to finish).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let up = self.inner.lock().take();
        env.spawn_future(async move {
            if let Some(up) = up {
                let _ = tokio::task::spawn_blocking(move || up.shutdown()).await;
            }
            Ok(())
        })
    }
}
