//! A circuit breaker with the semantics of resilience4j's `CircuitBreakerStateMachine`.
//!
//! - **Closed**: every call is admitted; outcomes go into a sliding window, either the last `N`
//!   calls ([`BreakerWindow::Calls`], a ring buffer) or the calls of the last `T`
//!   ([`BreakerWindow::Time`], ten buckets of `T/10`, so an outcome counts for between `0.9·T`
//!   and `T`). Once the window holds `min_calls` outcomes (capped at `N` for a count window),
//!   the breaker opens when the failure rate is at or above `failure_rate`, or the slow-call rate
//!   (calls *longer* than `slow_call`) at or above `slow_call_rate`.
//! - **Open** until `opened_at + open_for`, inclusive: a call at exactly that instant is still
//!   refused; the first call after it moves the breaker to half-open.
//! - **HalfOpen**: up to `half_open_calls` probes are admitted, others refused. When every probe
//!   has reported, the same thresholds over the probes decide: open again, or close with an
//!   empty window.
//!
//! The check is lock-free whenever the breaker is closed or open: the state and the open-until
//! time live in one `AtomicU64` (2 state bits, 62 bits of payload). Outcomes are recorded under a
//! `parking_lot` mutex, which also serialises every transition; the atomic is only a published
//! copy. Each permit carries the epoch (state generation) it was issued in, so the outcome of a
//! call admitted before a transition does not count in the next state.
//!
//! Every permit must be passed back to [`CircuitBreaker::record`] or
//! [`CircuitBreaker::release`]: an unreported half-open probe keeps its slot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::classify::Failure;
use crate::clock::{Nanos, duration_nanos};
use crate::policy::{Breaker, BreakerWindow};

const SHIFT: u32 = 62;
const PAYLOAD: u64 = (1 << SHIFT) - 1;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

/// Whether a failure says the target is unwell, and so counts against its breaker: server
/// errors (5xx), transport failures, timeouts, malformed bodies and cut streams. Client errors
/// and rate limits (4xx) do not: they are about the request or the key, and another target
/// would answer them the same way.
///
/// ```
/// use tollgate::retry::{Failure, counts_against_breaker};
/// assert!(counts_against_breaker(&Failure::Status(503)));
/// assert!(!counts_against_breaker(&Failure::Status(429)));
/// assert!(counts_against_breaker(&Failure::CutStream));
/// ```
pub fn counts_against_breaker(failure: &Failure) -> bool {
    match failure {
        Failure::Status(s) => *s >= 500,
        _ => true,
    }
}

/// Longest count window kept; longer settings are treated as this many calls.
pub const MAX_WINDOW_CALLS: u32 = 1 << 16;
/// Buckets of a time window.
const BUCKETS: u64 = 10;

/// The state of a breaker, as seen at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused until (and including) `until`.
    Open {
        /// Last refused instant, in clock nanoseconds.
        until: Nanos,
    },
    /// A few probe calls test the upstream.
    HalfOpen,
}

impl BreakerState {
    /// A stable name: `closed`, `open`, `half_open`.
    pub fn code(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Permission to make one call. Pass it back to [`CircuitBreaker::record`] with the outcome, or
/// to [`CircuitBreaker::release`] if the call was not made.
#[must_use = "record the outcome of the call, or release the permit"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPermit {
    probe: bool,
    epoch: u64,
}

impl BreakerPermit {
    /// Whether this call is a half-open probe (its outcome decides whether the breaker closes).
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// A call refused by an open (or fully probing half-open) breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When trying again may succeed. Open: the time until the open period has passed (so
    /// `now + retry_in` is the first admitted instant). Half-open with every probe slot taken:
    /// `open_for`, a conservative hint, since the probes' outcome is not known yet.
    pub retry_in: Duration,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker is open; try again in {} ms",
            self.retry_in.as_millis()
        )
    }
}

impl std::error::Error for Rejected {}

/// Counts of a window, or of the probes of a half-open period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BreakerCounts {
    /// Outcomes counted.
    pub calls: u64,
    /// Of which failures.
    pub failures: u64,
    /// Of which slower than `slow_call`.
    pub slow: u64,
}

impl BreakerCounts {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, failed: bool, slow: bool) {
        self.calls -= 1;
        self.failures -= u64::from(failed);
        self.slow -= u64::from(slow);
    }

    /// Failures / calls, or `None` without calls.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.failures as f64 / self.calls as f64)
    }

    /// Slow calls / calls, or `None` without calls.
    pub fn slow_call_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.slow as f64 / self.calls as f64)
    }
}

/// A snapshot for metrics and `tollgate simulate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// The state at the instant asked.
    pub state: BreakerState,
    /// Closed: the window's counts. Half-open: the probes that reported. Open: zero.
    pub counts: BreakerCounts,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// The last `N` outcomes.
#[derive(Debug)]
struct CountWindow {
    ring: Vec<u8>,
    next: usize,
    len: usize,
    counts: BreakerCounts,
}

impl CountWindow {
    fn push(&mut self, failed: bool, slow: bool) {
        let cap = self.ring.len();
        if self.len == cap {
            let old = self.ring[self.next];
            self.counts.sub(old & FAILED != 0, old & SLOW != 0);
        } else {
            self.len += 1;
        }
        self.ring[self.next] = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        self.next = if self.next + 1 == cap {
            0
        } else {
            self.next + 1
        };
        self.counts.add(failed, slow);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    counts: BreakerCounts,
}

/// The outcomes of the last `T`, in ten buckets of `T/10`.
#[derive(Debug)]
struct TimeWindow {
    width: u64,
    buckets: [Bucket; BUCKETS as usize],
    newest: u64,
}

impl TimeWindow {
    fn push(&mut self, now: Nanos, failed: bool, slow: bool) {
        let cur = now / self.width;
        if cur + BUCKETS <= self.newest {
            return; // reported so late that it is already out of the window
        }
        self.newest = self.newest.max(cur);
        let b = &mut self.buckets[(cur % BUCKETS) as usize];
        if b.index != cur {
            *b = Bucket {
                index: cur,
                counts: BreakerCounts::default(),
            };
        }
        b.counts.add(failed, slow);
    }

    fn counts(&self, now: Nanos) -> BreakerCounts {
        let cur = now / self.width;
        let mut c = BreakerCounts::default();
        for b in &self.buckets {
            if b.index <= cur && cur - b.index < BUCKETS {
                c.calls += b.counts.calls;
                c.failures += b.counts.failures;
                c.slow += b.counts.slow;
            }
        }
        c
    }
}

#[derive(Debug)]
enum Window {
    Calls(CountWindow),
    Time(Box<TimeWindow>),
}

impl Window {
    fn new(w: BreakerWindow) -> Window {
        match w {
            BreakerWindow::Calls(n) => {
                let n = n.clamp(1, MAX_WINDOW_CALLS) as usize;
                Window::Calls(CountWindow {
                    ring: vec![0; n],
                    next: 0,
                    len: 0,
                    counts: BreakerCounts::default(),
                })
            }
            BreakerWindow::Time(t) => Window::Time(Box::new(TimeWindow {
                width: (duration_nanos(t) / BUCKETS).max(1),
                buckets: [Bucket::default(); BUCKETS as usize],
                newest: 0,
            })),
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Calls(w) => {
                w.next = 0;
                w.len = 0;
                w.counts = BreakerCounts::default();
            }
            Window::Time(w) => {
                w.buckets = [Bucket::default(); BUCKETS as usize];
                w.newest = 0;
            }
        }
    }

    fn push(&mut self, now: Nanos, failed: bool, slow: bool) {
        match self {
            Window::Calls(w) => w.push(failed, slow),
            Window::Time(w) => w.push(now, failed, slow),
        }
    }

    fn counts(&self, now: Nanos) -> BreakerCounts {
        match self {
            Window::Calls(w) => w.counts,
            Window::Time(w) => w.counts(now),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Nanos },
    HalfOpen { admitted: u32 },
}

#[derive(Debug)]
struct Inner {
    state: State,
    epoch: u64,
    window: Window,
    probes: BreakerCounts,
}

/// A circuit breaker for one target. Share it by reference (`&self` everywhere).
///
/// ```
/// use std::time::Duration;
/// use tollgate::policy::{Breaker, BreakerWindow};
/// use tollgate::retry::{BreakerState, CircuitBreaker};
///
/// let config = Breaker {
///     window: BreakerWindow::Calls(10),
///     min_calls: 5,
///     failure_rate: 0.5,
///     open_for: Duration::from_secs(30),
///     ..Breaker::default()
/// };
/// let breaker = CircuitBreaker::new(&config);
/// let ms = 1_000_000;
/// for _ in 0..5 {
///     let permit = breaker.try_acquire(0).expect("closed");
///     breaker.record(permit, false, Duration::from_millis(20), 0);
/// }
/// assert_eq!(breaker.state(0), BreakerState::Open { until: 30_000 * ms });
/// assert!(breaker.try_acquire(30_000 * ms).is_err());
/// assert!(breaker.try_acquire(30_001 * ms).expect("half-open").is_probe());
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    word: AtomicU64,
    enabled: bool,
    failure_rate: f64,
    slow_call: Option<Duration>,
    slow_call_rate: f64,
    min_calls: u64,
    open_for: Nanos,
    half_open_calls: u32,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker with the settings of a policy's `[breaker]` table. A disabled breaker
    /// admits everything and records nothing.
    pub fn new(config: &Breaker) -> CircuitBreaker {
        let min_calls = match config.window {
            BreakerWindow::Calls(n) => config.min_calls.min(n.clamp(1, MAX_WINDOW_CALLS)),
            BreakerWindow::Time(_) => config.min_calls,
        }
        .max(1);
        CircuitBreaker {
            word: AtomicU64::new(CLOSED << SHIFT),
            enabled: config.enabled,
            failure_rate: config.failure_rate,
            slow_call: config.slow_call,
            slow_call_rate: config.slow_call_rate,
            min_calls: u64::from(min_calls),
            open_for: duration_nanos(config.open_for),
            half_open_calls: config.half_open_calls.max(1),
            inner: Mutex::new(Inner {
                state: State::Closed,
                epoch: 0,
                window: Window::new(config.window),
                probes: BreakerCounts::default(),
            }),
        }
    }

    /// Asks to make a call at `now`. Lock-free when closed, and when open before the open
    /// period has passed.
    #[inline]
    pub fn try_acquire(&self, now: Nanos) -> Result<BreakerPermit, Rejected> {
        let w = self.word.load(Ordering::Acquire);
        match w >> SHIFT {
            CLOSED => Ok(BreakerPermit {
                probe: false,
                epoch: w & PAYLOAD,
            }),
            OPEN if now <= w & PAYLOAD => Err(Rejected {
                retry_in: Duration::from_nanos((w & PAYLOAD) - now + 1),
            }),
            _ => self.acquire_slow(now),
        }
    }

    #[cold]
    fn acquire_slow(&self, now: Nanos) -> Result<BreakerPermit, Rejected> {
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => {
                return Ok(BreakerPermit {
                    probe: false,
                    epoch: inner.epoch,
                });
            }
            State::Open { until } if now <= until => {
                return Err(Rejected {
                    retry_in: Duration::from_nanos(until - now + 1),
                });
            }
            State::Open { .. } => {
                self.set(&mut inner, State::HalfOpen { admitted: 0 });
                inner.probes = BreakerCounts::default();
            }
            State::HalfOpen { .. } => {}
        }
        let epoch = inner.epoch;
        match &mut inner.state {
            State::HalfOpen { admitted } if *admitted < self.half_open_calls => {
                *admitted += 1;
                Ok(BreakerPermit { probe: true, epoch })
            }
            _ => Err(Rejected {
                retry_in: Duration::from_nanos(self.open_for),
            }),
        }
    }

    /// Records the outcome of a call admitted by `permit`: `success`, how long it took, and when
    /// it ended. Outcomes of calls admitted before the last state change are ignored.
    pub fn record(&self, permit: BreakerPermit, success: bool, latency: Duration, now: Nanos) {
        if !self.enabled {
            return;
        }
        let failed = !success;
        let slow = self.slow_call.is_some_and(|t| latency > t);
        let mut inner = self.inner.lock();
        if permit.epoch != inner.epoch {
            return;
        }
        match inner.state {
            State::Closed if !permit.probe => {
                inner.window.push(now, failed, slow);
                let counts = inner.window.counts(now);
                if counts.calls >= self.min_calls && self.exceeded(&counts) {
                    self.open(&mut inner, now);
                }
            }
            State::HalfOpen { .. } if permit.probe => {
                inner.probes.add(failed, slow);
                let probes = inner.probes;
                if probes.calls >= u64::from(self.half_open_calls) {
                    if self.exceeded(&probes) {
                        self.open(&mut inner, now);
                    } else {
                        inner.window.clear();
                        self.set(&mut inner, State::Closed);
                    }
                }
            }
            _ => {}
        }
    }

    /// Records how a call admitted by `permit` ended: `failure` is `None` for a success; a
    /// failure counts against the breaker only when it says the target is unwell
    /// ([`counts_against_breaker`]).
    pub fn record_outcome(
        &self,
        permit: BreakerPermit,
        failure: Option<&Failure>,
        latency: Duration,
        now: Nanos,
    ) {
        let unwell = failure.is_some_and(counts_against_breaker);
        self.record(permit, !unwell, latency, now);
    }

    /// Gives back a permit whose call was not made: a half-open probe slot becomes free again.
    pub fn release(&self, permit: BreakerPermit) {
        if !permit.probe {
            return;
        }
        let mut inner = self.inner.lock();
        if permit.epoch == inner.epoch
            && let State::HalfOpen { admitted } = &mut inner.state
        {
            *admitted = admitted.saturating_sub(1);
        }
    }

    /// The state at `now` (an open breaker whose period has passed reads as half-open).
    /// Lock-free.
    pub fn state(&self, now: Nanos) -> BreakerState {
        let w = self.word.load(Ordering::Acquire);
        match w >> SHIFT {
            CLOSED => BreakerState::Closed,
            OPEN if now <= w & PAYLOAD => BreakerState::Open { until: w & PAYLOAD },
            _ => BreakerState::HalfOpen,
        }
    }

    /// The state and the counts behind it, at `now`.
    pub fn snapshot(&self, now: Nanos) -> BreakerSnapshot {
        let inner = self.inner.lock();
        let (state, counts) = match inner.state {
            State::Closed => (BreakerState::Closed, inner.window.counts(now)),
            State::Open { until } if now <= until => {
                (BreakerState::Open { until }, BreakerCounts::default())
            }
            State::Open { .. } => (BreakerState::HalfOpen, BreakerCounts::default()),
            State::HalfOpen { .. } => (BreakerState::HalfOpen, inner.probes),
        };
        BreakerSnapshot { state, counts }
    }

    fn exceeded(&self, c: &BreakerCounts) -> bool {
        let fails = c.failure_rate().is_some_and(|r| r >= self.failure_rate);
        let slow = self.slow_call.is_some()
            && c.slow_call_rate().is_some_and(|r| r >= self.slow_call_rate);
        fails || slow
    }

    fn open(&self, inner: &mut Inner, now: Nanos) {
        let until = now.saturating_add(self.open_for).min(PAYLOAD);
        inner.window.clear();
        self.set(inner, State::Open { until });
    }

    /// Moves to `state` in a new epoch and publishes it.
    fn set(&self, inner: &mut Inner, state: State) {
        inner.state = state;
        inner.epoch = (inner.epoch + 1) & PAYLOAD;
        let word = match state {
            State::Closed => (CLOSED << SHIFT) | inner.epoch,
            State::Open { until } => (OPEN << SHIFT) | until,
            State::HalfOpen { .. } => HALF_OPEN << SHIFT,
        };
        self.word.store(word, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn breaker(window: BreakerWindow, min: u32, half_open: u32) -> CircuitBreaker {
        CircuitBreaker::new(&Breaker {
            window,
            min_calls: min,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            half_open_calls: half_open,
            ..Breaker::default()
        })
    }

    #[test]
    fn stale_permits_do_not_count() {
        let b = breaker(BreakerWindow::Calls(4), 2, 1);
        let old = b.try_acquire(0).expect("closed");
        for _ in 0..2 {
            let p = b.try_acquire(0).expect("closed");
            b.record(p, false, Duration::ZERO, 0);
        }
        assert!(matches!(b.state(0), BreakerState::Open { .. }));
        let probe = b.try_acquire(5_001 * MS).expect("probe");
        // The call admitted before opening reports a success: it must not close the breaker.
        b.record(old, true, Duration::ZERO, 5_001 * MS);
        assert_eq!(b.state(5_001 * MS), BreakerState::HalfOpen);
        b.record(probe, true, Duration::ZERO, 5_002 * MS);
        assert_eq!(b.state(5_002 * MS), BreakerState::Closed);
    }

    #[test]
    fn released_probe_frees_its_slot() {
        let b = breaker(BreakerWindow::Calls(2), 1, 1);
        let p = b.try_acquire(0).expect("closed");
        b.record(p, false, Duration::ZERO, 0);
        let probe = b.try_acquire(6_000 * MS).expect("probe");
        assert!(b.try_acquire(6_000 * MS).is_err());
        b.release(probe);
        assert!(b.try_acquire(6_000 * MS).expect("slot again").is_probe());
    }

    #[test]
    fn late_time_window_record_is_dropped() {
        let mut w = Window::new(BreakerWindow::Time(Duration::from_secs(10)));
        w.push(20_000 * MS, true, false);
        w.push(5_000 * MS, true, false); // 15 s late: outside the window
        assert_eq!(w.counts(20_000 * MS).calls, 1);
        w.push(19_000 * MS, false, false); // late but inside
        assert_eq!(w.counts(20_000 * MS).calls, 2);
    }
}
