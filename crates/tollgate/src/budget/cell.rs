//! One budget's state for one scope key: a GCRA slot per limit kind, a concurrency gate, and the
//! queue of calls waiting for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::queue::WaitQueue;
use crate::clock::Nanos;

/// Number of limit slots: one per [`crate::policy::LimitKind`].
pub const SLOTS: usize = 9;

/// State of one (budget, scope key).
#[derive(Debug)]
pub struct Cell {
    /// Theoretical arrival time per limit kind.
    pub(crate) tat: [AtomicU64; SLOTS],
    /// Calls holding a concurrency slot.
    pub(crate) inflight: AtomicU32,
    /// Clock time of the last admission that looked this cell up (for eviction order).
    pub(crate) last_used: AtomicU64,
    /// Calls queued for this cell.
    pub(crate) queue: WaitQueue,
    /// The scope key as text, e.g. `tenant=acme,model=gpt-4o` (empty for an unscoped budget).
    key: Arc<str>,
    /// The budget's name, counters, clock and rates.
    pub(crate) shared: Arc<super::BudgetShared>,
}

impl Cell {
    pub(crate) fn new(key: Arc<str>, shared: Arc<super::BudgetShared>) -> Cell {
        Cell {
            tat: std::array::from_fn(|_| AtomicU64::new(0)),
            inflight: AtomicU32::new(0),
            last_used: AtomicU64::new(0),
            queue: WaitQueue::default(),
            key,
            shared,
        }
    }

    /// The scope key as text.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// Whether forgetting this cell would change no decision: every slot refilled, nothing in
    /// flight, nobody queued.
    pub(crate) fn is_idle(&self, now: Nanos) -> bool {
        self.inflight.load(Ordering::Acquire) == 0
            && self.queue.is_empty()
            && self.tat.iter().all(|t| t.load(Ordering::Acquire) <= now)
    }

    /// Takes a concurrency slot if fewer than `max` are held.
    #[inline]
    pub(crate) fn try_acquire(&self, max: u32) -> bool {
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a concurrency slot back and wakes the first waiter.
    #[inline]
    pub(crate) fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.queue.wake_head();
    }
}
