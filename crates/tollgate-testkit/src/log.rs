//! The arrival log: every request the upstream received, in arrival order.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use parking_lot::{Condvar, Mutex};

use super::Action;

/// One request as the upstream received it, and what it did with it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Arrival number since the upstream started (0, 1, 2, ...; not reset by `clear_log`).
    pub seq: u64,
    /// When the request head arrived.
    pub at: Instant,
    /// `at` minus the upstream's start.
    pub offset: Duration,
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
    /// Every request header.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// The body's `model`, when it is a JSON object with a string `model`; on the Baidu chat
    /// path, the endpoint name (`completions_pro` of `.../wenxinworkshop/chat/completions_pro`).
    pub model: Option<String>,
    /// The `x-testkit-tenant` header, else the body's `user` (Baidu chat path: `user_id`).
    pub tenant: Option<String>,
    /// True when the body asked for a stream (`"stream": true`).
    pub stream: bool,
    /// The fault applied (`None`: a normal response, or a 4xx for a bad request).
    pub fault: Option<Action>,
    /// True when `fault` came from a script, false when drawn from the fault mix.
    pub scripted: bool,
    /// The delay added before the response head (latency and slow first byte).
    pub delay: Duration,
    /// The status sent; `None` while the response head is still being delayed.
    pub status: Option<u16>,
}

impl Arrival {
    /// The body parsed as JSON (`None` when it is not JSON): what tests assert a client's
    /// mapping on.
    ///
    /// ```
    /// use tollgate_testkit::TestUpstream;
    /// let upstream = TestUpstream::start().unwrap();
    /// assert!(upstream.log().iter().all(|a| a.json().is_none()));
    /// ```
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The shared log, with a condition variable for bounded waits.
#[derive(Debug, Default)]
pub(crate) struct Log {
    inner: Mutex<LogInner>,
    grew: Condvar,
}

#[derive(Debug, Default)]
struct LogInner {
    entries: Vec<Arrival>,
    next_seq: u64,
}

impl Log {
    /// Appends `arrival` (its `seq` is assigned here) and returns the seq.
    pub(crate) fn push(&self, mut arrival: Arrival) -> u64 {
        let mut inner = self.inner.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        arrival.seq = seq;
        inner.entries.push(arrival);
        drop(inner);
        self.grew.notify_all();
        seq
    }

    /// Records the status sent for request `seq` (ignored if the log was cleared since).
    pub(crate) fn set_status(&self, seq: u64, status: u16) {
        let mut inner = self.inner.lock();
        if let Ok(i) = inner.entries.binary_search_by_key(&seq, |a| a.seq) {
            inner.entries[i].status = Some(status);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Arrival> {
        self.inner.lock().entries.clone()
    }

    pub(crate) fn clear(&self) {
        self.inner.lock().entries.clear();
    }

    pub(crate) fn count(&self, pred: impl Fn(&Arrival) -> bool) -> usize {
        self.inner.lock().entries.iter().filter(|a| pred(a)).count()
    }

    /// Waits until the log holds at least `n` entries, at most `timeout`.
    pub(crate) fn wait_for_len(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock();
        while inner.entries.len() < n {
            if self.grew.wait_until(&mut inner, deadline).timed_out() {
                return inner.entries.len() >= n;
            }
        }
        true
    }
}
