//! [`Engine`]: the engine as the Python layer holds it — its policy (load, reload, watch),
//! what it reports (metrics, stats), and the entry points of the call API ([`crate::call`])
//! and the decide API ([`crate::decide`]).

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Serialize;
use tollgate::{Policy, ReloadReport, WatchEvent, Watcher};

use crate::batch;
use crate::bridge::{Completer, Payload};
use crate::call::{self, CallOptions, NativeStream, interruptible, request_of};
use crate::decide::{self, Attempt, CallArgs, OutcomeArgs, Permit};
use crate::error::ErrorInfo;
use crate::text;

/// The engine.
#[pyclass(frozen, module = "tollgate._native")]
pub struct Engine {
    engine: tollgate::Engine,
}

#[derive(Serialize)]
struct ReportJson {
    generation: u64,
    added: Vec<String>,
    kept: Vec<String>,
    removed: Vec<String>,
    rescoped: Vec<String>,
}

fn report_json(r: ReloadReport) -> String {
    let r = ReportJson {
        generation: r.generation,
        added: r.added,
        kept: r.kept,
        removed: r.removed,
        rescoped: r.rescoped,
    };
    serde_json::to_string(&r).unwrap_or_else(|_| "{}".to_owned())
}

#[derive(Serialize)]
struct BudgetJson {
    name: String,
    admitted: u64,
    waited: u64,
    denied: u64,
    tokens: u64,
    spend: f64,
    keys: u64,
}

#[derive(Serialize)]
struct CacheJson {
    hits: u64,
    misses: u64,
    stale_hits: u64,
    inserts: u64,
    refused: u64,
    evictions: u64,
    expired: u64,
    bytes: u64,
    entries: u64,
}

#[derive(Serialize)]
struct StatsJson {
    generation: u64,
    budgets: Vec<BudgetJson>,
    cache: CacheJson,
}

/// A call's options as Python passes them, one tuple: `(tenant, route, upstream, priority,
/// deadline, cache)`.
#[derive(FromPyObject)]
pub struct OptionsArg(
    Option<String>,
    Option<String>,
    Option<String>,
    i32,
    Option<f64>,
    Option<String>,
);

impl From<OptionsArg> for CallOptions {
    fn from(o: OptionsArg) -> CallOptions {
        let OptionsArg(tenant, route, upstream, priority, deadline, cache) = o;
        CallOptions {
            tenant,
            route,
            upstream,
            priority,
            deadline,
            cache,
        }
    }
}

/// A call to admit as Python passes it, one tuple: `(model, tenant, upstream, key, route,
/// priority, prompt_tokens, prompt, request, max_tokens, deadline, attempt)`.
#[derive(FromPyObject)]
pub struct CallArg<'py>(
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i32,
    Option<u64>,
    Option<String>,
    Option<Bound<'py, PyBytes>>,
    Option<u64>,
    Option<f64>,
    Option<PyRef<'py, Attempt>>,
);

impl CallArg<'_> {
    /// The owned arguments, or why they are wrong.
    fn into_args(self) -> Result<CallArgs, Box<ErrorInfo>> {
        let CallArg(
            model,
            tenant,
            upstream,
            key,
            route,
            priority,
            prompt_tokens,
            prompt,
            request,
            max_tokens,
            deadline,
            attempt,
        ) = self;
        let request = match request {
            None => None,
            Some(b) => Some(serde_json::from_slice(b.as_bytes()).map_err(|e| {
                ErrorInfo::new("invalid_request", format!("the request is not JSON: {e}"))
            })?),
        };
        let deadline = match deadline {
            None => None,
            Some(d) if d.is_finite() && d >= 0.0 => Some(Duration::from_secs_f64(d)),
            Some(d) => {
                return Err(Box::new(ErrorInfo::invalid_argument(format!(
                    "deadline must be a non-negative number of seconds, not {d}"
                ))));
            }
        };
        Ok(CallArgs {
            model,
            tenant: tenant.unwrap_or_default(),
            upstream: upstream.unwrap_or_default(),
            key: key.unwrap_or_default(),
            route: route.unwrap_or_default(),
            priority: priority.clamp(i16::MIN.into(), i16::MAX.into()) as i16,
            prompt_tokens,
            prompt,
            request,
            max_tokens,
            deadline,
            attempt: attempt.map(|a| a.inner.clone()),
        })
    }
}

#[pymethods]
impl Engine {
    /// An engine from policy text (TOML or JSON), or from the policy file at that path when
    /// `is_path`. Raises the policy error with every problem.
    #[new]
    fn new(py: Python<'_>, policy: String, is_path: bool) -> PyResult<Engine> {
        let engine = py
            .detach(|| {
                if is_path {
                    tollgate::Engine::from_file(&policy)
                } else {
                    tollgate::Engine::from_text(&policy)
                }
            })
            .map_err(|e| ErrorInfo::policy(&e))?;
        Ok(Engine { engine })
    }

    /// Replaces the policy with `policy` (text, or the file at that path when `is_path`);
    /// returns the reload report's JSON. A refused policy raises with every problem and the
    /// running one stays.
    fn reload(&self, policy: String, is_path: bool) -> PyResult<String> {
        let report = if is_path {
            let policy =
                Policy::from_file(Path::new(&policy)).map_err(|e| ErrorInfo::policy(&e))?;
            self.engine.reload_policy(policy)
        } else {
            self.engine
                .reload(&policy)
                .map_err(|e| ErrorInfo::policy(&e))?
        };
        Ok(report_json(report))
    }

    /// Number of accepted policies so far (1 for the first).
    #[getter]
    fn generation(&self) -> u64 {
        self.engine.generation()
    }

    /// The metrics in the Prometheus text exposition format.
    fn metrics(&self) -> String {
        self.engine.metrics_text()
    }

    /// Budget and cache counters (JSON).
    fn stats(&self) -> String {
        let budgets = self
            .engine
            .stats()
            .into_iter()
            .map(|b| BudgetJson {
                name: b.name,
                admitted: b.admitted,
                waited: b.waited,
                denied: b.denied,
                tokens: b.tokens,
                spend: b.spend,
                keys: b.keys as u64,
            })
            .collect();
        let c = self.engine.cache_stats();
        let stats = StatsJson {
            generation: self.engine.generation(),
            budgets,
            cache: CacheJson {
                hits: c.hits,
                misses: c.misses,
                stale_hits: c.stale_hits,
                inserts: c.inserts,
                refused: c.refused,
                evictions: c.evictions,
                expired: c.expired,
                bytes: c.bytes,
                entries: c.entries,
            },
        };
        serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Watches the policy file at `path` every `interval` seconds and reloads it when its
    /// content changes; `callback(kind, json)` is called on the watcher's thread with
    /// `reloaded` (the report), `refused` or `unreadable` (the error).
    fn watch(&self, path: String, interval: f64, callback: Py<PyAny>) -> PyResult<PolicyWatcher> {
        if !interval.is_finite() || interval <= 0.0 {
            return Err(ErrorInfo::invalid_argument(format!(
                "interval must be a positive number of seconds, not {interval}"
            ))
            .into());
        }
        let watcher = self
            .engine
            .watch(path, Duration::from_secs_f64(interval), move |event| {
                let (kind, json) = match event {
                    WatchEvent::Reloaded(r) => ("reloaded", report_json(r)),
                    WatchEvent::Refused(e) => ("refused", ErrorInfo::policy(&e).to_json()),
                    WatchEvent::Unreadable(m) => {
                        ("unreadable", ErrorInfo::new("policy", m).to_json())
                    }
                };
                Python::attach(|py| {
                    if let Err(e) = callback.call1(py, (kind, json)) {
                        e.write_unraisable(py, None);
                    }
                });
            });
        Ok(PolicyWatcher {
            watcher: Mutex::new(Some(watcher)),
        })
    }

    /// Sends a chat request (`body` is its JSON) through the whole pipeline, blocking with the
    /// GIL released: `(status, body, meta_json)`.
    fn send(&self, py: Python<'_>, body: &[u8], options: OptionsArg) -> PyResult<Py<PyAny>> {
        let request = request_of(body, options.into())?;
        match interruptible(py, call::send(self.engine.clone(), request))?? {
            Payload::Response(status, body, meta) => Ok((status, PyBytes::new(py, &body), meta)
                .into_pyobject(py)?
                .into_any()
                .unbind()),
            _ => unreachable!("send answers a response"),
        }
    }

    /// As `send`, as call `id` of `completer`.
    fn send_async(
        &self,
        completer: &Completer,
        id: u64,
        body: &[u8],
        options: OptionsArg,
    ) -> PyResult<()> {
        let request = request_of(body, options.into())?;
        completer.spawn(id, call::send(self.engine.clone(), request));
        Ok(())
    }

    /// Starts a streamed chat request and waits (GIL released) until an upstream accepted it
    /// or the cache answered.
    fn stream(&self, py: Python<'_>, body: &[u8], options: OptionsArg) -> PyResult<NativeStream> {
        let request = request_of(body, options.into())?;
        match interruptible(py, call::open(self.engine.clone(), request))?? {
            Payload::Stream(s) => Ok(s),
            _ => unreachable!("open answers a stream"),
        }
    }

    /// As `stream`, as call `id` of `completer`.
    fn stream_async(
        &self,
        completer: &Completer,
        id: u64,
        body: &[u8],
        options: OptionsArg,
    ) -> PyResult<()> {
        let request = request_of(body, options.into())?;
        completer.spawn(id, call::open(self.engine.clone(), request));
        Ok(())
    }

    /// The context window of `model` in the running policy's model table, `None` when
    /// unknown.
    fn context_window(&self, model: &str) -> Option<u64> {
        self.engine.context_window(model)
    }

    /// `(tokens, exact)` of `text` for `model`, with the running policy's model table.
    fn count_tokens(&self, model: &str, text: &str) -> PyResult<(u64, bool)> {
        Ok(self
            .engine
            .with_model_table(|t| text::count(t, model, text))?)
    }

    /// `(prompt_tokens, exact)` of a chat request (`body` is its JSON), as admission counts it.
    fn count_request(&self, body: &[u8]) -> PyResult<(u64, bool)> {
        Ok(self
            .engine
            .with_model_table(|t| text::count_request(t, body))?)
    }

    /// `text` split into chunks of at most `max_tokens` tokens, with the running policy's model
    /// table (GIL released).
    fn split_text(
        &self,
        py: Python<'_>,
        model: &str,
        text: &str,
        max_tokens: usize,
        overlap: usize,
    ) -> PyResult<Vec<text::ChunkTuple>> {
        Ok(py.detach(|| {
            self.engine
                .with_model_table(|t| text::split(t, model, text, max_tokens, overlap))
        })?)
    }

    /// The messages of a conversation that fit `window - reserved` prompt tokens (JSON:
    /// messages, prompt_tokens, kept, dropped, exact); `history` is `(role, text)` pairs,
    /// oldest first.
    #[allow(clippy::too_many_arguments)]
    fn trim_conversation(
        &self,
        py: Python<'_>,
        model: &str,
        system: Option<&str>,
        history: Vec<(String, String)>,
        user: &str,
        window: u64,
        reserved: u64,
    ) -> PyResult<String> {
        Ok(py.detach(|| {
            text::trim(
                &self.engine,
                model,
                system,
                &history,
                user,
                window,
                reserved,
            )
        })?)
    }

    /// A message store in the policy's `[redis]`, each message kept `ttl` seconds; `None`
    /// when the policy has no `[redis]`.
    fn redis_message_store(&self, ttl: f64) -> PyResult<Option<text::MessageStoreNative>> {
        if !(ttl.is_finite() && ttl >= 0.001) {
            return Err(ErrorInfo::invalid_argument(format!(
                "ttl must be at least 0.001 seconds (got {ttl})"
            ))
            .into());
        }
        Ok(self
            .engine
            .redis_message_store(Duration::from_secs_f64(ttl))
            .map(text::MessageStoreNative::new))
    }

    /// Starts a batch (see [`crate::batch`]), its journal in the directory `journal` when
    /// given.
    #[pyo3(signature = (journal, concurrency, tenant, priority, grace))]
    fn batch(
        &self,
        py: Python<'_>,
        journal: Option<String>,
        concurrency: usize,
        tenant: Option<String>,
        priority: i64,
        grace: f64,
    ) -> PyResult<batch::BatchNative> {
        let options = batch::options(concurrency, tenant, priority, grace)?;
        let engine = self.engine.clone();
        Ok(py.detach(|| batch::start(engine, journal.as_deref(), options))?)
    }

    /// Admits or denies a call at once: `("go", permit)`, `("wait", (after, budget, key,
    /// limit))` or `("deny", error_json)`.
    fn admit(&self, py: Python<'_>, call: CallArg<'_>) -> PyResult<Py<PyAny>> {
        let args = call.into_args()?;
        let engine = self.engine.clone();
        py.detach(|| decide::admit(&engine, &args)).into_py(py)
    }

    /// As `admit`, as call `id` of `completer` (budgets kept in Redis are asked without
    /// blocking a thread).
    fn admit_async(&self, completer: &Completer, id: u64, call: CallArg<'_>) -> PyResult<()> {
        let args = call.into_args()?;
        let engine = self.engine.clone();
        completer.spawn(id, async move {
            Ok(Payload::Decision(decide::admit_async(engine, args).await))
        });
        Ok(())
    }

    /// Admits a call, waiting (GIL released) in the budgets' queues as long as the policy
    /// allows; raises the denial.
    fn acquire(&self, py: Python<'_>, call: CallArg<'_>) -> PyResult<Permit> {
        let args = call.into_args()?;
        let permit = interruptible(py, decide::acquire(self.engine.clone(), args))??;
        Ok(Permit::new(permit))
    }

    /// As `acquire`, as call `id` of `completer`.
    fn acquire_async(&self, completer: &Completer, id: u64, call: CallArg<'_>) -> PyResult<()> {
        let args = call.into_args()?;
        let engine = self.engine.clone();
        completer.spawn(id, async move {
            decide::acquire(engine, args)
                .await
                .map(|p| Payload::Permit(Permit::new(p)))
        });
        Ok(())
    }

    /// Settles `permit`: `(verdict_json, attempt)` (`attempt` for a retry verdict). A bad
    /// outcome raises and leaves the permit unsettled.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        permit: &Permit,
        status: Option<u16>,
        usage: Option<String>,
        latency: Option<f64>,
        failure: Option<String>,
        headers: Vec<(String, String)>,
        content_delivered: bool,
        sent: bool,
    ) -> PyResult<(String, Option<Attempt>)> {
        let Some(p) = permit.take() else {
            return Err(
                ErrorInfo::invalid_argument("this permit was settled or released already").into(),
            );
        };
        let outcome = OutcomeArgs {
            status,
            usage,
            latency,
            failure,
            headers,
            content_delivered,
            sent,
        };
        match decide::settle(&self.engine, p, &outcome) {
            Ok(v) => Ok(v),
            Err((p, e)) => {
                permit.put_back(p);
                Err(e.into())
            }
        }
    }
}

/// A running watch of a policy file; `close()` stops it.
#[pyclass(frozen, module = "tollgate._native")]
pub struct PolicyWatcher {
    watcher: Mutex<Option<Watcher>>,
}

#[pymethods]
impl PolicyWatcher {
    /// Stops watching (waits for the watcher's thread, with the GIL released).
    fn close(&self, py: Python<'_>) {
        let w = self.watcher.lock().take();
        py.detach(move || drop(w));
    }
}
