//! Rate and spend budgets: GCRA cells with reserve / commit / refund, concurrency gates, keyed
//! state bounded by an LRU, and priority queues for waiting calls.
//!
//! The pieces here are pure (no I/O, time passed in); [`crate::Engine`] combines them into
//! all-or-nothing admission across every budget that matches a call.

mod cell;
pub mod gcra;
mod keyed;
mod queue;

use crate::money::Money;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::clock::Clock;

pub use cell::{Cell, SLOTS};
pub(crate) use keyed::{CapacityFull, Cells, Keyed, key_hash};
pub use queue::Signal;

/// Stripes of counters: threads add to their own stripe (its own cache line), readers sum.
const STRIPES: usize = 8;

/// One stripe of a budget's counters, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Stripe {
    pub admitted: AtomicU64,
    pub waited: AtomicU64,
    pub denied: AtomicU64,
    pub tokens: AtomicU64,
    pub spend_nanos: AtomicU64,
}

/// Counters of one budget, kept across reloads; striped so that threads counting calls on
/// different keys do not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl Counters {
    /// This thread's stripe.
    #[inline]
    pub(crate) fn local(&self) -> &Stripe {
        &self.stripes[STRIPE.with(|s| *s)]
    }

    fn sum(&self, f: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }
}

/// What every cell of a budget shares: its name, counters, the engine's clock and the current
/// rate of each limit slot. Cells hold it, so settling a permit needs nothing else.
#[derive(Debug)]
pub(crate) struct BudgetShared {
    pub name: Arc<str>,
    pub counters: Counters,
    pub clock: Arc<dyn Clock>,
    /// Nanoseconds per unit of each slot as f64 bits; 0 = the budget has no such limit.
    rates: [AtomicU64; SLOTS],
}

impl BudgetShared {
    /// The current rate of a slot, if the budget has that limit.
    #[inline]
    pub(crate) fn rate(&self, slot: usize) -> Option<f64> {
        match self.rates[slot].load(Ordering::Acquire) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    pub(crate) fn set_rates(&self, rates: &[Option<f64>; SLOTS]) {
        for (slot, r) in rates.iter().enumerate() {
            self.rates[slot].store(r.map_or(0, f64::to_bits), Ordering::Release);
        }
    }
}

/// The state of one budget, keyed by its name: it outlives reloads that keep the name.
#[derive(Debug)]
pub(crate) struct BudgetState {
    pub name: Arc<str>,
    pub cells: Cells,
    pub shared: Arc<BudgetShared>,
}

impl BudgetState {
    pub(crate) fn new(
        name: &str,
        scoped: bool,
        capacity: usize,
        clock: Arc<dyn Clock>,
    ) -> BudgetState {
        let name: Arc<str> = Arc::from(name);
        let shared = Arc::new(BudgetShared {
            name: Arc::clone(&name),
            counters: Counters::default(),
            clock,
            rates: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        let cells = if scoped {
            Cells::Keyed(Keyed::new(capacity))
        } else {
            Cells::Global(Arc::new(Cell::new(Arc::from(""), Arc::clone(&shared))))
        };
        BudgetState {
            name,
            cells,
            shared,
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
        let c = &self.shared.counters;
        BudgetStats {
            name: self.name.to_string(),
            admitted: c.sum(|s| &s.admitted),
            waited: c.sum(|s| &s.waited),
            denied: c.sum(|s| &s.denied),
            tokens: c.sum(|s| &s.tokens),
            spend: Money::from_nanos(c.sum(|s| &s.spend_nanos)).units(),
            keys: self.keys(),
        }
    }
}
