//! What an admission holds in one budget: local limit charges and a concurrency slot, or what
//! a Redis budget holds in Redis.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::budget::Cell;
use crate::budget::gcra::{self, Charge};
use crate::clock::Nanos;
use crate::policy::{LimitKind, Unit};
use crate::store::{AdjustEntry, Owed, RedisStore};

/// One budget's share of a permit: the cell, which limit slots were charged (a bit per slot) and
/// the charges, in slot order.
pub(crate) struct Hold {
    pub cell: Arc<Cell>,
    pub slots: u16,
    pub charges: SmallVec<[Charge; 4]>,
    pub concurrency: bool,
    /// What a Redis budget holds in Redis (its local slots and charges are then empty).
    pub remote: Option<Box<RemoteHold>>,
}

impl Hold {
    /// Gives back what an unfinished hold took (same `now`, so every charge returns whole).
    pub(crate) fn undo(&self, now: Nanos) {
        for (slot, c) in self.charged() {
            if c.increment > 0 {
                gcra::refund(&self.cell.tat[slot], c.increment, c.end, now);
            }
        }
        if self.concurrency {
            self.cell.release();
        }
    }

    /// (slot, charge) pairs, walking only the set bits of the slot mask.
    pub(crate) fn charged(&self) -> impl Iterator<Item = (usize, Charge)> + '_ {
        let mut mask = self.slots;
        self.charges.iter().map(move |c| {
            let slot = mask.trailing_zeros() as usize;
            mask &= mask.wrapping_sub(1);
            (slot, *c)
        })
    }
}

/// A charge held in Redis by a permit: the slot, its rate and what was taken, in µs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteCharge {
    pub slot: u8,
    pub ei: f64,
    pub inc: f64,
    pub end: f64,
}

/// What a permit holds in Redis for one budget.
#[derive(Debug)]
pub(crate) struct RemoteHold {
    pub store: Arc<RedisStore>,
    pub key: Arc<str>,
    pub charges: SmallVec<[RemoteCharge; 4]>,
    /// The concurrency gate and this call's lease in it.
    pub gate: Option<(Arc<str>, Arc<str>)>,
    /// Taken from a local lease (given back to it when the admission is undone).
    pub leased: bool,
}

impl RemoteHold {
    /// Replaces the charges by what the call used (`units` per limit kind) and releases the
    /// concurrency slot: queued for Redis, never waited for.
    pub(crate) fn settle(&self, units: impl Fn(Unit) -> u64, rate_exists: impl Fn(usize) -> bool) {
        let entries: SmallVec<[AdjustEntry; 4]> = self
            .charges
            .iter()
            .filter(|c| rate_exists(usize::from(c.slot)))
            .filter_map(|c| {
                let used = units(LimitKind::ALL[usize::from(c.slot)].unit()) as f64 * c.ei;
                let delta = used - c.inc;
                // The reservation was rounded up to a whole nanosecond: less is no difference.
                (delta.abs() >= 0.0011).then_some(AdjustEntry {
                    slot: c.slot,
                    ei: c.ei,
                    delta,
                    end: c.end,
                })
            })
            .collect();
        self.store.owe_adjust(&self.key, entries);
        if let Some((key, member)) = &self.gate {
            self.store.owe(Owed::Release {
                key: Arc::clone(key),
                member: Arc::clone(member),
            });
        }
    }
}
