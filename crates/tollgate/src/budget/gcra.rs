//! The generic cell rate algorithm on one atomic word, with reserve / commit / refund.
//!
//! A slot holds the *theoretical arrival time* (TAT) in clock nanoseconds. A cost `w` takes
//! `w × T` nanoseconds of the timeline (`T` = window / amount); a reservation conforms when the new
//! TAT is at most `tau` (= burst × T) ahead of now. This is governor's formulation, extended with
//! weighted costs, refunds and after-the-fact charges, all by compare-and-swap on the slot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Nanos;

/// The constants of one limit: nanoseconds per unit and the burst tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Nanoseconds of the timeline one unit takes (window / amount).
    pub ns_per_unit: f64,
    /// Burst tolerance in nanoseconds (burst × `ns_per_unit`).
    pub tau: Nanos,
}

impl Rate {
    /// A rate of `amount` units per `window_ns`, bursting up to `burst` units.
    pub fn new(amount: f64, window_ns: Nanos, burst: f64) -> Rate {
        let ns_per_unit = window_ns as f64 / amount;
        // Rounded up like every increment, so a call of exactly the burst fits (rounded to
        // nearest, 7 a minute with a burst of 1 refused every call: 8571428571 ns of tolerance
        // for an increment of 8571428572).
        let tau = (burst * ns_per_unit).ceil();
        Rate {
            ns_per_unit,
            tau: if tau >= u64::MAX as f64 {
                u64::MAX
            } else {
                tau as u64
            },
        }
    }

    /// The timeline a cost takes, rounded up so a limit is never looser than written.
    #[inline]
    pub fn increment(&self, units: u64) -> Nanos {
        if units == 0 {
            return 0;
        }
        let ns = units as f64 * self.ns_per_unit;
        if ns >= u64::MAX as f64 {
            u64::MAX
        } else {
            // Round up without a libm call: truncate, then add one if anything was cut.
            let t = ns as u64;
            t + u64::from((t as f64) < ns)
        }
    }

    /// Whether a cost can ever conform, even on an idle slot.
    #[inline]
    pub fn fits(&self, increment: Nanos) -> bool {
        increment <= self.tau
    }
}

/// What a conforming reservation took: give both back to [`refund`] or [`adjust`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    /// The increment added to the TAT.
    pub increment: Nanos,
    /// The TAT right after the reservation: the end of this charge on the timeline.
    pub end: Nanos,
}

/// Tries to take `increment` from the slot at `now`. On success returns the charge; otherwise
/// the time to wait until it would conform (nothing is taken).
#[inline]
pub fn reserve(
    slot: &AtomicU64,
    rate: &Rate,
    increment: Nanos,
    now: Nanos,
) -> Result<Charge, Nanos> {
    let mut tat = slot.load(Ordering::Acquire);
    loop {
        let new = tat.max(now).saturating_add(increment);
        let ahead = new - now;
        if ahead > rate.tau {
            return Err(ahead - rate.tau);
        }
        match slot.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Ok(Charge {
                    increment,
                    end: new,
                });
            }
            Err(actual) => tat = actual,
        }
    }
}

/// How long until `increment` would conform on this slot (0 when it conforms now). Takes nothing.
#[inline]
pub fn wait_for(slot: &AtomicU64, rate: &Rate, increment: Nanos, now: Nanos) -> Nanos {
    let tat = slot.load(Ordering::Acquire);
    let ahead = tat.max(now).saturating_add(increment) - now;
    ahead.saturating_sub(rate.tau)
}

/// Gives back up to `amount` nanoseconds of a charge that ended at `end`.
///
/// Only the part of the charge still ahead of `now` is returned: time that has passed has refilled
/// the slot already, and returning it again would make the limit looser than written. The TAT
/// never moves below `now` (an idle slot cannot bank capacity).
#[inline]
pub fn refund(slot: &AtomicU64, amount: Nanos, end: Nanos, now: Nanos) {
    let give = amount.min(end.saturating_sub(now));
    if give == 0 {
        return;
    }
    let mut tat = slot.load(Ordering::Acquire);
    loop {
        if tat <= now {
            return;
        }
        let new = tat.saturating_sub(give).max(now);
        match slot.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => tat = actual,
        }
    }
}

/// Adds `extra` nanoseconds after the fact (usage above the reservation). Always taken, even past
/// the burst: the usage happened, so later calls wait for it.
#[inline]
pub fn charge_extra(slot: &AtomicU64, extra: Nanos, now: Nanos) {
    if extra == 0 {
        return;
    }
    let mut tat = slot.load(Ordering::Acquire);
    loop {
        let new = tat.max(now).saturating_add(extra);
        match slot.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => tat = actual,
        }
    }
}

/// Replaces a charge by the one `actual_increment` would have made: refunds the difference
/// (bounded as in [`refund`]) or charges the extra.
#[inline]
pub fn adjust(slot: &AtomicU64, charge: Charge, actual_increment: Nanos, now: Nanos) {
    if actual_increment < charge.increment {
        refund(slot, charge.increment - actual_increment, charge.end, now);
    } else {
        charge_extra(slot, actual_increment - charge.increment, now);
    }
}

/// Scales the outstanding part of a slot (the TAT ahead of `now`) by `ratio`: used after a
/// reload changed the limit's rate, so the units in use stay the same.
pub fn rescale(slot: &AtomicU64, ratio: f64, now: Nanos) {
    let mut tat = slot.load(Ordering::Acquire);
    loop {
        if tat <= now {
            return;
        }
        let ahead = ((tat - now) as f64 * ratio).ceil();
        let new = now.saturating_add(if ahead >= u64::MAX as f64 {
            u64::MAX
        } else {
            ahead as u64
        });
        match slot.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => tat = actual,
        }
    }
}

/// How many units are in use at `now` (the part of the timeline ahead of now, in units).
pub fn used_units(slot: &AtomicU64, rate: &Rate, now: Nanos) -> f64 {
    let tat = slot.load(Ordering::Acquire);
    tat.saturating_sub(now) as f64 / rate.ns_per_unit
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn allow(slot: &AtomicU64, rate: &Rate, at_ms: u64) -> bool {
        reserve(slot, rate, rate.increment(1), at_ms * MS).is_ok()
    }

    #[test]
    fn burst_two_per_second() {
        // governor's own sequence: 2/s, burst 2.
        let rate = Rate::new(2.0, 1_000 * MS, 2.0);
        let slot = AtomicU64::new(0);
        assert!(allow(&slot, &rate, 0));
        assert!(allow(&slot, &rate, 1));
        assert!(!allow(&slot, &rate, 2));
        assert!(allow(&slot, &rate, 1002));
        assert!(allow(&slot, &rate, 1003));
        assert!(!allow(&slot, &rate, 1004));
    }

    #[test]
    fn denied_reservation_reports_wait_and_takes_nothing() {
        let rate = Rate::new(1.0, 1_000 * MS, 1.0);
        let slot = AtomicU64::new(0);
        assert!(allow(&slot, &rate, 0));
        let before = slot.load(Ordering::SeqCst);
        let wait = reserve(&slot, &rate, rate.increment(1), 200 * MS).unwrap_err();
        assert_eq!(wait, 800 * MS);
        assert_eq!(slot.load(Ordering::SeqCst), before);
        assert_eq!(
            wait_for(&slot, &rate, rate.increment(1), 200 * MS),
            800 * MS
        );
    }

    #[test]
    fn refund_returns_only_future_part() {
        let rate = Rate::new(10.0, 1_000 * MS, 10.0); // 100ms per unit
        let slot = AtomicU64::new(0);
        let c = reserve(&slot, &rate, rate.increment(5), 0).unwrap();
        assert_eq!(c.end, 500 * MS);
        // At 300ms only 200ms of the charge is still ahead.
        refund(&slot, c.increment, c.end, 300 * MS);
        assert_eq!(slot.load(Ordering::SeqCst), 300 * MS);
        // A charge wholly in the past refunds nothing.
        let c2 = reserve(&slot, &rate, rate.increment(1), 1_000 * MS).unwrap();
        refund(&slot, c2.increment, c2.end, 2_000 * MS);
        assert_eq!(slot.load(Ordering::SeqCst), 1_100 * MS);
    }

    #[test]
    fn late_refund_does_not_eat_a_later_reservation() {
        let rate = Rate::new(10.0, 1_000 * MS, 10.0);
        let slot = AtomicU64::new(0);
        let x = reserve(&slot, &rate, rate.increment(1), 0).unwrap(); // [0, 100ms]
        let y = reserve(&slot, &rate, rate.increment(1), 200 * MS).unwrap(); // [200, 300ms]
        refund(&slot, x.increment, x.end, 210 * MS);
        assert_eq!(slot.load(Ordering::SeqCst), y.end);
    }

    #[test]
    fn extra_charge_goes_past_burst() {
        let rate = Rate::new(10.0, 1_000 * MS, 10.0);
        let slot = AtomicU64::new(0);
        let c = reserve(&slot, &rate, rate.increment(10), 0).unwrap();
        adjust(&slot, c, rate.increment(15), 0);
        assert_eq!(slot.load(Ordering::SeqCst), 1_500 * MS);
        assert_eq!(wait_for(&slot, &rate, rate.increment(1), 0), 600 * MS);
    }

    #[test]
    fn a_call_of_exactly_the_burst_fits() {
        for amount in [7.0, 3.0, 11.0, 13.0, 600.0] {
            for burst in [1.0, 2.0, 5.0] {
                let rate = Rate::new(amount, 60_000_000_000, burst);
                assert!(
                    rate.fits(rate.increment(burst as u64)),
                    "{amount}/min, burst {burst}"
                );
            }
        }
    }

    #[test]
    fn increment_rounds_up() {
        let rate = Rate::new(3.0, 1_000, 3.0);
        assert_eq!(rate.increment(1), 334);
        assert!(!rate.fits(rate.increment(4)));
    }
}
