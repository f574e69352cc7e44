//! [`NativeEngine`]: the engine, its policy (load, reload, watch) and what it reports (metrics,
//! stats). The decide API is in [`crate::decide`], the call API in [`crate::call`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use napi_derive::napi;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tollgate::{Engine, Policy, ReloadReport};

use crate::error::ErrorInfo;

/// The engine as the JavaScript layer holds it.
#[napi]
pub struct NativeEngine {
    pub(crate) engine: Engine,
    /// Its index in this thread's registry for the decide path (see `crate::decide`).
    pub(crate) index: u32,
    /// Calls in flight that an `AbortSignal` may cancel, by the id `index.js` gave them.
    pub(crate) cancels: Arc<Mutex<HashMap<u32, oneshot::Sender<()>>>>,
    /// Where the answers of `sendQueued` go: the one JavaScript function `listenDone` gave
    /// (see `crate::call::Answers`).
    pub(crate) answers: Option<crate::call::Answers>,
}

/// What a reload changed.
#[napi(object, object_from_js = false)]
pub struct ReloadReportJs {
    /// Increases by one per accepted policy.
    pub generation: f64,
    /// Budgets that are new.
    pub added: Vec<String>,
    /// Budgets that kept their state.
    pub kept: Vec<String>,
    /// Budgets that are gone.
    pub removed: Vec<String>,
    /// Budgets whose scope changed (their state started afresh).
    pub rescoped: Vec<String>,
}

impl From<ReloadReport> for ReloadReportJs {
    fn from(r: ReloadReport) -> ReloadReportJs {
        ReloadReportJs {
            generation: r.generation as f64,
            added: r.added,
            kept: r.kept,
            removed: r.removed,
            rescoped: r.rescoped,
        }
    }
}

/// Counters of one budget.
#[napi(object, object_from_js = false)]
pub struct BudgetStatsJs {
    /// Budget name.
    pub name: String,
    /// Calls admitted.
    pub admitted: f64,
    /// Admitted calls that waited first.
    pub waited: f64,
    /// Calls this budget refused.
    pub denied: f64,
    /// Tokens settled.
    pub tokens: f64,
    /// Money settled.
    pub spend: f64,
    /// Scope keys with state.
    pub keys: f64,
}

/// Cache counters.
#[napi(object, object_from_js = false)]
pub struct CacheStatsJs {
    /// Fresh hits.
    pub hits: f64,
    /// Lookups that found nothing fresh.
    pub misses: f64,
    /// Stale answers served.
    pub stale_hits: f64,
    /// Answers stored.
    pub inserts: f64,
    /// Answers refused as too large.
    pub refused: f64,
    /// Entries evicted to fit the byte budget.
    pub evictions: f64,
    /// Entries removed past their TTL.
    pub expired: f64,
    /// Bytes stored.
    pub bytes: f64,
    /// Entries stored.
    pub entries: f64,
}

/// Everything `stats()` reports.
#[napi(object, object_from_js = false)]
pub struct StatsJs {
    /// The running policy's generation.
    pub generation: f64,
    /// Every budget of the running policy, in policy order.
    pub budgets: Vec<BudgetStatsJs>,
    /// The response cache.
    pub cache: CacheStatsJs,
}

impl Drop for NativeEngine {
    fn drop(&mut self) {
        crate::registry::unregister(self.index);
    }
}

#[napi]
impl NativeEngine {
    /// An engine from policy text (TOML or JSON), or from the policy file at that path when
    /// `is_path`.
    #[napi(constructor)]
    pub fn new(policy: String, is_path: bool) -> napi::Result<NativeEngine> {
        let engine = if is_path {
            Engine::from_file(&policy)
        } else {
            Engine::from_text(&policy)
        }
        .map_err(|e| ErrorInfo::policy(&e).into_napi())?;
        Ok(NativeEngine {
            index: crate::registry::register(engine.clone()),
            engine,
            cancels: Arc::default(),
            answers: None,
        })
    }

    /// Replaces the policy with `text` (or the file at that path when `is_path`). A refused
    /// policy throws with every problem and the running one stays.
    #[napi]
    pub fn reload(&self, policy: String, is_path: bool) -> napi::Result<ReloadReportJs> {
        let report = if is_path {
            let policy = Policy::from_file(Path::new(&policy))
                .map_err(|e| ErrorInfo::policy(&e).into_napi())?;
            self.engine.reload_policy(policy)
        } else {
            self.engine
                .reload(&policy)
                .map_err(|e| ErrorInfo::policy(&e).into_napi())?
        };
        Ok(report.into())
    }

    /// Number of accepted policies so far (1 for the first).
    #[napi(getter)]
    pub fn generation(&self) -> f64 {
        self.engine.generation() as f64
    }

    /// The metrics in the Prometheus text exposition format.
    #[napi]
    pub fn metrics(&self) -> String {
        self.engine.metrics_text()
    }

    /// Budget and cache counters.
    #[napi]
    pub fn stats(&self) -> StatsJs {
        let budgets = self
            .engine
            .stats()
            .into_iter()
            .map(|b| BudgetStatsJs {
                name: b.name,
                admitted: b.admitted as f64,
                waited: b.waited as f64,
                denied: b.denied as f64,
                tokens: b.tokens as f64,
                spend: b.spend,
                keys: b.keys as f64,
            })
            .collect();
        let c = self.engine.cache_stats();
        StatsJs {
            generation: self.engine.generation() as f64,
            budgets,
            cache: CacheStatsJs {
                hits: c.hits as f64,
                misses: c.misses as f64,
                stale_hits: c.stale_hits as f64,
                inserts: c.inserts as f64,
                refused: c.refused as f64,
                evictions: c.evictions as f64,
                expired: c.expired as f64,
                bytes: c.bytes as f64,
                entries: c.entries as f64,
            },
        }
    }
}
