//! Watching a policy file and reloading it when it changes.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::policy::{Format, Policy, PolicyErrors};

use super::{Engine, Inner, ReloadReport};

/// What the watcher did after seeing the file change.
#[derive(Debug)]
pub enum WatchEvent {
    /// The new policy runs.
    Reloaded(ReloadReport),
    /// The new policy was refused; the old one keeps running.
    Refused(PolicyErrors),
    /// The file could not be read; the old policy keeps running.
    Unreadable(String),
}

/// A running file watch; dropping it stops the watch.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Some(Format::Json),
        Some("toml") => Some(Format::Toml),
        _ => None,
    }
}

impl Engine {
    /// Watches `path` and reloads the policy whenever its content changes, checking every
    /// `interval` (content is compared, so editors that replace the file are seen too). The
    /// content present now is taken as already loaded. `on_event` hears every reload, refusal and
    /// read failure; a refused or unreadable file leaves the running policy in place.
    pub fn watch(
        &self,
        path: impl Into<PathBuf>,
        interval: Duration,
        mut on_event: impl FnMut(WatchEvent) + Send + 'static,
    ) -> Watcher {
        let path = path.into();
        let weak: Weak<Inner> = Arc::downgrade(self.inner());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let mut last = std::fs::read(&path).ok().map(|b| content_hash(&b));
        let mut last_error: Option<String> = None;
        let thread = std::thread::Builder::new()
            .name("tollgate-watch".into())
            .spawn(move || {
                loop {
                    std::thread::park_timeout(interval);
                    if stop2.load(Ordering::Acquire) {
                        return;
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    match std::fs::read(&path) {
                        Err(e) => {
                            let msg = format!("cannot read {}: {e}", path.display());
                            if last_error.as_deref() != Some(msg.as_str()) {
                                last_error = Some(msg.clone());
                                on_event(WatchEvent::Unreadable(msg));
                            }
                        }
                        Ok(bytes) => {
                            last_error = None;
                            let h = content_hash(&bytes);
                            if last == Some(h) {
                                continue;
                            }
                            last = Some(h);
                            match Policy::from_bytes(&bytes, format_of(&path)) {
                                Ok(p) => on_event(WatchEvent::Reloaded(inner.reload_policy(p))),
                                Err(e) => on_event(WatchEvent::Refused(e)),
                            }
                        }
                    }
                }
            })
            .ok();
        Watcher { stop, thread }
    }
}
