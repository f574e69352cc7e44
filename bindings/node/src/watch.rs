//! Watching a policy file: tollgate's [`tollgate::Engine::watch`] thread reloads the policy
//! when the file changes; [`NativeWatcher::next`] hands what it did to JavaScript.

use std::sync::Arc;
use std::time::Duration;

use napi::Env;
use napi::bindgen_prelude::PromiseRaw;
use napi_derive::napi;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tollgate::{WatchEvent, Watcher};

use crate::engine::{NativeEngine, ReloadReportJs};
use crate::error::ErrorInfo;

/// What the watcher did after the file changed.
#[napi(object, object_from_js = false)]
pub struct WatchEventJs {
    /// `reloaded`, `refused` (the new policy has errors; the old one keeps running) or
    /// `unreadable` (the file could not be read; the old one keeps running).
    pub kind: String,
    /// Reloaded: what changed.
    pub report: Option<ReloadReportJs>,
    /// Refused or unreadable: why.
    pub error: Option<ErrorInfo>,
}

/// A running watch of a policy file.
#[napi]
pub struct NativeWatcher {
    watcher: Mutex<Option<Watcher>>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchEventJs>>>,
}

#[napi]
impl NativeEngine {
    /// Watches the policy file at `path`, checking every `interval_ms` (default 500), and
    /// reloads it when its content changes.
    #[napi]
    pub fn watch(&self, path: String, interval_ms: Option<u32>) -> NativeWatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let interval = Duration::from_millis(u64::from(interval_ms.unwrap_or(500).max(10)));
        let watcher = self.engine.watch(path, interval, move |event| {
            let event = match event {
                WatchEvent::Reloaded(report) => WatchEventJs {
                    kind: "reloaded".into(),
                    report: Some(report.into()),
                    error: None,
                },
                WatchEvent::Refused(errors) => WatchEventJs {
                    kind: "refused".into(),
                    report: None,
                    error: Some(ErrorInfo::policy(&errors)),
                },
                WatchEvent::Unreadable(message) => WatchEventJs {
                    kind: "unreadable".into(),
                    report: None,
                    error: Some(ErrorInfo {
                        problems: Some(vec![message.clone()]),
                        ..ErrorInfo::new("policy", message)
                    }),
                },
            };
            let _ = tx.send(event);
        });
        NativeWatcher {
            watcher: Mutex::new(Some(watcher)),
            events: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

#[napi]
impl NativeWatcher {
    /// The next thing the watcher did; null once it is closed.
    #[napi(ts_return_type = "Promise<WatchEventJs | null>")]
    pub fn next<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Option<WatchEventJs>>> {
        let events = Arc::clone(&self.events);
        env.spawn_future(async move { Ok(events.lock().await.recv().await) })
    }

    /// Stops watching (the pending `next()` resolves to null).
    #[napi]
    pub fn close(&self) {
        // Dropping the watcher stops and joins its thread, which drops the sender.
        drop(self.watcher.lock().take());
    }
}
