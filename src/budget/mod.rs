//! Rate and spend budgets: GCRA cells with reserve / commit / refund, concurrency gates, keyed
//! state bounded by an LRU, and priority queues for waiting calls.
//!
//! The pieces here are pure (no I/O, time passed in); [`crate::Engine`] combines them into
//! all-or-nothing admission across every budget that matches a call.

mod cell;
pub mod gcra;
mod keyed;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use cell::{Cell, SLOTS};
pub(crate) use keyed::{CapacityFull, Cells, Keyed, key_hash};
pub use queue::Signal;

/// Counters of one budget, kept across reloads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub admitted: AtomicU64,
    pub waited: AtomicU64,
    pub denied: AtomicU64,
    pub tokens: AtomicU64,
    pub spend_nanos: AtomicU64,
}

/// The state of one budget, keyed by its name: it outlives reloads that keep the name.
#[derive(Debug)]
pub(crate) struct BudgetState {
    pub name: Arc<str>,
    pub cells: Cells,
    pub counters: Counters,
}

impl BudgetState {
    pub(crate) fn new(name: &str, scoped: bool, capacity: usize) -> BudgetState {
        let cells = if scoped {
            Cells::Keyed(Keyed::new(capacity))
        } else {
            Cells::Global(Arc::new(Cell::new(Arc::from(""))))
        };
        BudgetState {
            name: Arc::from(name),
            cells,
            counters: Counters::default(),
        }
    }

    /// Calls `f` on every cell of this budget (reload only: takes every shard lock in turn).
    pub(crate) fn for_each_cell(&self, mut f: impl FnMut(&Cell)) {
        match &self.cells {
            Cells::Global(c) => f(c),
            Cells::Keyed(k) => k.for_each(&mut f),
        }
    }

    /// A limit's rate changed from `old` to `new` nanoseconds per unit: convert every key's
    /// outstanding use so it keeps the same number of *units* (calls, tokens, money) under the
    /// new rate. A key that had used 1 call of 1/min has used 1 call of 3/min after the reload.
    pub(crate) fn rescale(&self, slot: usize, old: f64, new: f64, now: crate::clock::Nanos) {
        let ratio = new / old;
        self.for_each_cell(|c| gcra::rescale(&c.tat[slot], ratio, now));
    }

    /// A limit that was absent is back: whatever its slot held is stale, start it empty.
    pub(crate) fn reset_slot(&self, slot: usize) {
        self.for_each_cell(|c| c.tat[slot].store(0, Ordering::Release));
    }

    pub(crate) fn keys(&self) -> usize {
        match &self.cells {
            Cells::Global(_) => 1,
            Cells::Keyed(k) => k.len(),
        }
    }
}

/// A budget's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStats {
    /// Budget name.
    pub name: String,
    /// Calls admitted (after waiting or not).
    pub admitted: u64,
    /// Admitted calls that waited first.
    pub waited: u64,
    /// Calls this budget refused.
    pub denied: u64,
    /// Tokens settled (actual usage where reported, else the reservation).
    pub tokens: u64,
    /// Money settled.
    pub spend: f64,
    /// Scope keys with state.
    pub keys: usize,
}

impl BudgetState {
    pub(crate) fn stats(&self) -> BudgetStats {
        let c = &self.counters;
        BudgetStats {
            name: self.name.to_string(),
            admitted: c.admitted.load(Ordering::Relaxed),
            waited: c.waited.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            spend: crate::engine::nanos_to_money(c.spend_nanos.load(Ordering::Relaxed)),
            keys: self.keys(),
        }
    }
}
