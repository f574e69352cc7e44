//! Time as the engine sees it: monotonic nanoseconds from an arbitrary origin.
//!
//! Every decision reads the clock through [`Clock`], so tests and `tollgate simulate` run in
//! virtual time with [`ManualClock`] and production uses [`MonotonicClock`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds since the clock's origin.
pub type Nanos = u64;

/// A monotonic time source.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Nanoseconds since this clock's origin; never decreases.
    fn now(&self) -> Nanos;
}

/// Real monotonic time, counted from when the clock was made.
///
/// Reads the CPU's invariant time-stamp counter through `quanta` (calibrated against the OS clock
/// once), which costs a few nanoseconds where `Instant::now` costs tens on virtual machines;
/// where no reliable TSC exists, `quanta` falls back to the OS monotonic clock.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: quanta::Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.now();
        MonotonicClock { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        // u64 nanoseconds last 584 years; saturate rather than wrap.
        let elapsed = self.clock.now().saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to: for tests and simulation.
///
/// ```
/// use tollgate::clock::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now(), 5_000_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        ManualClock {
            now: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_nanos(by), Ordering::SeqCst);
    }

    /// Sets the clock to `at` nanoseconds; a value in the past is ignored (time never goes back).
    pub fn set(&self, at: Nanos) {
        self.now.fetch_max(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
pub fn duration_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
