//! Permits: what an admitted call holds until it is settled or dropped.

use std::fmt;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use crate::budget::gcra::{self};
use crate::clock::Nanos;
use crate::money::Money;
use crate::policy::{LimitKind, Unit};
use crate::tokens::{self, Cost, Usage};

use super::call::Demand;
use super::hold::Hold;
use super::outcome::{Outcome, Settlement};
use super::route::{Attempt, TargetCtx, TargetRef};

/// Which attempt of its call a permit is.
#[derive(Default)]
pub(crate) struct Journey {
    /// 1 for the first attempt.
    pub number: u32,
    pub deadline: Option<Nanos>,
    /// The state this attempt was admitted with (retries only).
    pub prior: Option<Box<Attempt>>,
}

/// Capacity held by an admitted call: reserved requests, tokens and money in every matching
/// budget, and a concurrency slot where a budget limits concurrency.
///
/// Settle it with [`crate::Engine::settle`] once the call is done. Dropping it unsettled gives
/// everything back, as if the call had not been sent.
///
/// The permit is one pointer wide: what it holds lives in one allocation, so handing it from
/// admission to the host and back to settle moves 8 bytes, not hundreds.
#[must_use = "dropping a permit refunds it as if the call was not sent"]
pub struct Permit {
    pub(crate) inner: Box<Held>,
}

/// What a permit holds.
pub(crate) struct Held {
    pub(crate) holds: SmallVec<[Hold; 3]>,
    pub(crate) demand: Demand,
    pub(crate) settled: bool,
    pub(crate) target: Option<Box<TargetCtx>>,
    pub(crate) journey: Journey,
}

impl Permit {
    pub(crate) fn new(held: Held) -> Permit {
        Permit {
            inner: Box::new(held),
        }
    }

    /// The permit as one raw pointer, for a foreign-function boundary (the C ABI keeps it as an
    /// opaque handle without a second allocation). Take it back with [`Permit::from_raw`]; a
    /// pointer never taken back leaks the permit's slot and reservations.
    pub fn into_raw(self) -> *mut std::ffi::c_void {
        Box::into_raw(self.inner).cast()
    }

    /// Takes back a permit from [`Permit::into_raw`].
    ///
    /// # Safety
    /// `raw` must come from `into_raw` and be taken back once (or read through a
    /// `ManuallyDrop` that is never dropped).
    pub unsafe fn from_raw(raw: *mut std::ffi::c_void) -> Permit {
        Permit {
            // SAFETY: forwarded to the caller: a `Box<Held>` leaked by `into_raw`.
            inner: unsafe { Box::from_raw(raw.cast()) },
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("budgets", &self.budgets().collect::<Vec<_>>())
            .field("target", &self.target())
            .field("reserved_tokens", &self.inner.demand.tokens)
            .field("estimated_cost", &self.estimated_cost())
            .finish()
    }
}

/// What the call was charged, in the units the budgets count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actual {
    pub refund_request: bool,
    pub tokens: u64,
    pub spend: Money,
}

impl Permit {
    /// The budgets holding capacity for this call, with their scope keys.
    pub fn budgets(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.inner
            .holds
            .iter()
            .map(|h| (&*h.cell.shared.name, &**h.cell.key()))
    }

    /// Where to send the call, when a route chose: upstream, model and pool key.
    pub fn target(&self) -> Option<&TargetRef> {
        self.inner.target.as_ref().map(|t| &t.target)
    }

    /// The index of the upstream the permit's target uses, in the routing of policy
    /// `generation` (`None` for an unrouted call or another generation).
    pub(crate) fn upstream_index(&self, generation: u64) -> Option<usize> {
        self.inner
            .target
            .as_ref()
            .filter(|t| t.generation == generation)
            .map(|t| t.upstream_index)
    }

    /// Which attempt of the call this is (1 for the first).
    pub fn attempt_number(&self) -> u32 {
        self.inner.journey.number
    }

    /// Prompt tokens estimated at admission.
    pub fn prompt_tokens(&self) -> u64 {
        self.inner.demand.prompt_tokens
    }

    /// Completion allowance reserved at admission.
    pub fn completion_allowance(&self) -> u64 {
        self.inner.demand.completion_tokens
    }

    /// Tokens reserved (prompt plus completion allowance).
    pub fn reserved_tokens(&self) -> u64 {
        self.inner.demand.tokens
    }

    /// Whether the prompt count is exact (BPE) rather than estimated.
    pub fn exact_prompt(&self) -> bool {
        self.inner.demand.exact
    }

    /// The cost reserved at admission (0 when the model has no price).
    pub fn estimated_cost(&self) -> f64 {
        self.inner.demand.spend.units()
    }
}

impl Held {
    /// Turns an outcome into charges and applies them.
    pub(crate) fn settle(&mut self, outcome: &Outcome<'_>) -> Settlement {
        let (actual, cost) = self.actual(outcome);
        self.apply(actual);
        for h in &self.holds {
            let c = h.cell.shared.counters.local();
            c.tokens.fetch_add(actual.tokens, Ordering::Relaxed);
            c.spend_nanos
                .fetch_add(actual.spend.nanos(), Ordering::Relaxed);
        }
        Settlement {
            reserved_tokens: self.demand.tokens,
            tokens: actual.tokens,
            usage: outcome.usage,
            cost,
            spend: actual.spend.units(),
        }
    }

    fn actual(&self, outcome: &Outcome<'_>) -> (Actual, Option<Cost>) {
        let nothing = Actual {
            refund_request: !outcome.sent,
            tokens: 0,
            spend: Money::ZERO,
        };
        if !outcome.sent {
            return (nothing, None);
        }
        if let Some(usage) = outcome.usage {
            return self.charged_for(&usage);
        }
        match outcome.status {
            // Failed requests are not billed.
            Some(s) if s >= 400 => (nothing, None),
            // Success without usage, or no answer at all: keep the reservation.
            _ => (
                Actual {
                    refund_request: false,
                    tokens: self.demand.tokens,
                    spend: self.demand.spend,
                },
                None,
            ),
        }
    }

    fn charged_for(&self, usage: &Usage) -> (Actual, Option<Cost>) {
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        let cost = self.demand.price.map(|p| tokens::cost(&p, usage));
        let spend = cost.map_or(Money::ZERO, |c| Money::from_units(c.total()));
        (
            Actual {
                refund_request: false,
                tokens,
                spend,
            },
            cost,
        )
    }

    /// Replaces every reservation by `actual` and releases concurrency slots. The clock is read
    /// only when a charge changes.
    fn apply(&mut self, actual: Actual) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut now: Option<Nanos> = None;
        for h in &self.holds {
            let shared = &h.cell.shared;
            if let Some(r) = &h.remote {
                r.settle(
                    |unit| match unit {
                        Unit::Requests => u64::from(!actual.refund_request),
                        Unit::Tokens => actual.tokens,
                        Unit::Spend => actual.spend.nanos(),
                    },
                    |slot| shared.rate(slot).is_some(),
                );
                continue;
            }
            let mut gave_back = false;
            for (slot, charge) in h.charged() {
                // A limit removed by a reload since admission is no longer charged.
                let Some(rate) = shared.rate(slot) else {
                    continue;
                };
                let units = match LimitKind::ALL[slot].unit() {
                    Unit::Requests => u64::from(!actual.refund_request),
                    Unit::Tokens => actual.tokens,
                    Unit::Spend => actual.spend.nanos(),
                };
                let inc = gcra::Rate {
                    ns_per_unit: rate,
                    tau: 0,
                }
                .increment(units);
                if inc == charge.increment {
                    continue;
                }
                gave_back |= inc < charge.increment;
                let at = *now.get_or_insert_with(|| shared.clock.now());
                gcra::adjust(&h.cell.tat[slot], charge, inc, at);
            }
            if h.concurrency {
                h.cell.release();
            } else if gave_back {
                h.cell.queue.wake_head();
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.settled {
            self.apply(Actual {
                refund_request: true,
                tokens: 0,
                spend: Money::ZERO,
            });
        }
        // A permit dropped unsettled gives its breaker probe slot back.
        if let Some(t) = self.target.as_mut()
            && let Some(p) = t.breaker.take()
        {
            t.health.breaker.release(p);
        }
    }
}
