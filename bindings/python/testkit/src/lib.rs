//! The fault-injecting OpenAI-compatible test upstream (crate `tollgate-testkit`) as a Python
//! extension (`tollgate_testkit`), for the Python binding's tests and benchmark: a real HTTP
//! server on loopback, started in-process. It is a module of its own so that the published
//! `tollgate` wheel carries no test code.
#![warn(missing_docs)]

use std::time::Duration;

use ::tollgate_testkit::{self as testkit, Action, Canned, Latency, Match};
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => v.extract().map(Some).map_err(Into::into),
    }
}

/// An action from a kind name, or a dict with `kind` and its parameters (`ms`, `n`,
/// `retry_after`, `status`, `should_retry`, `body`, `headers`).
fn action_of(a: &Bound<'_, PyAny>) -> PyResult<Action> {
    let d = if let Ok(kind) = a.extract::<String>() {
        let d = PyDict::new(a.py());
        d.set_item("kind", kind)?;
        d
    } else {
        a.cast::<PyDict>()?.clone()
    };
    let kind: String =
        get(&d, "kind")?.ok_or_else(|| PyValueError::new_err("an action needs a 'kind'"))?;
    let ms = secs(get::<f64>(&d, "ms")?.unwrap_or(0.0) / 1e3);
    let status = get::<u16>(&d, "status")?.unwrap_or(500);
    Ok(match kind.as_str() {
        "normal" => Action::Normal,
        "latency" => Action::Latency(Latency::Fixed(ms)),
        "slow_first_byte" => Action::SlowFirstByte(ms),
        "slow_drip" => Action::SlowDrip(ms),
        "status_429" => Action::Status429 {
            retry_after: get::<u64>(&d, "retry_after")?.unwrap_or(1),
        },
        "status_500" => Action::Status500,
        "status_503" => Action::Status503,
        "status" => Action::Status {
            code: status,
            should_retry: get(&d, "should_retry")?,
        },
        "reset_mid_body" => Action::ResetMidBody,
        "cut_stream_after" => Action::CutStreamAfter(get::<usize>(&d, "n")?.unwrap_or(1)),
        "malformed_json" => Action::MalformedJson,
        "respond" => Action::Respond(Canned {
            status,
            headers: get::<Vec<(String, String)>>(&d, "headers")?.unwrap_or_default(),
            body: get::<String>(&d, "body")?.unwrap_or_default().into(),
        }),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown test upstream action '{other}'"
            )));
        }
    })
}

/// A fault-injecting OpenAI-compatible upstream on `127.0.0.1`, on a runtime of its own.
#[pyclass(frozen, module = "tollgate_testkit")]
pub struct TestUpstream {
    inner: Mutex<Option<testkit::TestUpstream>>,
    base_url: String,
}

impl TestUpstream {
    fn with<T>(&self, f: impl FnOnce(&testkit::TestUpstream) -> T) -> PyResult<T> {
        match self.inner.lock().as_ref() {
            Some(up) => Ok(f(up)),
            None => Err(PyRuntimeError::new_err("the test upstream is closed")),
        }
    }
}

#[pymethods]
impl TestUpstream {
    /// Starts an upstream on `127.0.0.1:0`. `latency_ms` (with `latency_max_ms`: a uniform
    /// draw) delays every head; `drip_ms` spaces stream events; `words` is the reply length
    /// without `max_tokens`; `seed`, `event_ids`, `worker_threads`.
    #[new]
    #[pyo3(signature = (*, latency_ms=None, latency_max_ms=None, drip_ms=None, words=None, max_words=None, seed=None, event_ids=None, worker_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        latency_ms: Option<f64>,
        latency_max_ms: Option<f64>,
        drip_ms: Option<f64>,
        words: Option<usize>,
        max_words: Option<usize>,
        seed: Option<u64>,
        event_ids: Option<bool>,
        worker_threads: Option<usize>,
    ) -> PyResult<TestUpstream> {
        let mut b = testkit::TestUpstream::builder().shutdown_timeout(Duration::from_millis(200));
        match (latency_ms, latency_max_ms) {
            (Some(lo), Some(hi)) => b = b.latency(secs(lo / 1e3)..secs(hi / 1e3)),
            (Some(lo), None) => b = b.latency(secs(lo / 1e3)),
            _ => {}
        }
        if let Some(d) = drip_ms {
            b = b.drip(secs(d / 1e3));
        }
        if let Some(w) = words {
            b = b.default_words(w);
        }
        if let Some(w) = max_words {
            b = b.max_words(w);
        }
        if let Some(s) = seed {
            b = b.seed(s);
        }
        if let Some(ids) = event_ids {
            b = b.event_ids(ids);
        }
        if let Some(n) = worker_threads {
            b = b.worker_threads(n);
        }
        let up = py
            .detach(|| b.start())
            .map_err(|e| PyRuntimeError::new_err(format!("test upstream: {e}")))?;
        Ok(TestUpstream {
            base_url: up.base_url(),
            inner: Mutex::new(Some(up)),
        })
    }

    /// The OpenAI base URL: `http://127.0.0.1:PORT/v1`.
    #[getter]
    fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Queues `actions` for the requests that match (`model`, `tenant`, `path`, `stream`), in
    /// order. An action is a kind name or a dict (see `action_of`).
    #[pyo3(signature = (actions, *, model=None, tenant=None, path=None, stream=None))]
    fn script(
        &self,
        actions: Vec<Bound<'_, PyAny>>,
        model: Option<String>,
        tenant: Option<String>,
        path: Option<String>,
        stream: Option<bool>,
    ) -> PyResult<()> {
        let actions = actions
            .iter()
            .map(action_of)
            .collect::<PyResult<Vec<_>>>()?;
        let mut m = Match::any();
        if let Some(model) = &model {
            m = m.and_model(model);
        }
        if let Some(tenant) = &tenant {
            m = m.and_tenant(tenant);
        }
        if let Some(path) = &path {
            m = m.and_path(path);
        }
        if let Some(stream) = stream {
            m = m.and_stream(stream);
        }
        self.with(|up| up.script(m, actions))
    }

    /// Requests received since the start (or the last `clear_log`).
    #[getter]
    fn requests(&self) -> PyResult<usize> {
        self.with(|up| up.request_count())
    }

    /// Requests answered with `status`.
    fn count_status(&self, status: u16) -> PyResult<usize> {
        self.with(|up| up.count_status(status))
    }

    /// Every request received, in arrival order: dicts with `path`, `model`, `tenant`,
    /// `stream`, `status`, `fault`, `body`.
    fn log<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let log = self.with(|up| up.log())?;
        log.into_iter()
            .map(|a| {
                let d = PyDict::new(py);
                d.set_item("path", a.path)?;
                d.set_item("model", a.model)?;
                d.set_item("tenant", a.tenant)?;
                d.set_item("stream", a.stream)?;
                d.set_item("status", a.status)?;
                d.set_item("fault", a.fault.map(|f| format!("{f:?}")))?;
                d.set_item("body", String::from_utf8_lossy(&a.body).into_owned())?;
                Ok(d)
            })
            .collect()
    }

    /// Empties the log.
    fn clear_log(&self) -> PyResult<()> {
        self.with(|up| up.clear_log())
    }

    /// Stops the upstream (open connections get 200 ms to finish).
    fn close(&self, py: Python<'_>) {
        let up = self.inner.lock().take();
        if let Some(up) = up {
            py.detach(move || up.shutdown());
        }
    }
}

/// The native module.
#[pymodule]
#[pyo3(name = "tollgate_testkit")]
fn testkit_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TestUpstream>()?;
    Ok(())
}
