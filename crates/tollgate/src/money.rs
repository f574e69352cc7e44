//! Money as budgets count it: integer nano-units of the price table's currency, so reservations,
//! refunds and spend limits add up exactly, and a limit's arithmetic never mixes money with
//! time (both would otherwise be bare `u64` nanoseconds).

use std::fmt;

/// An amount of money in nano-units (10⁻⁹ of the price table's currency), never negative.
///
/// ```
/// use tollgate::money::Money;
/// let m = Money::from_units(0.0125);
/// assert_eq!(m.nanos(), 12_500_000);
/// assert_eq!(m.units(), 0.0125);
/// assert_eq!(Money::from_units(f64::NAN), Money::ZERO);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(u64);

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);

    /// Nano-units per unit of currency, for scaling a limit written in money.
    pub const SCALE: f64 = 1e9;

    /// `amount` of currency, rounded up to the next nano-unit (a charge never undercounts);
    /// negative or NaN amounts are nothing, amounts beyond the range saturate.
    pub fn from_units(amount: f64) -> Money {
        if amount.is_nan() || amount <= 0.0 {
            return Money::ZERO;
        }
        let n = (amount * Money::SCALE).ceil();
        if n >= u64::MAX as f64 {
            Money(u64::MAX)
        } else {
            Money(n as u64)
        }
    }

    /// `amount` of currency, rounded to the nearest nano-unit (for totals that are reported,
    /// not charged).
    pub fn from_units_rounded(amount: f64) -> Money {
        if !amount.is_finite() || amount <= 0.0 {
            return Money::ZERO;
        }
        Money::from_nanos((amount * Money::SCALE).round() as u64)
    }

    /// An amount in nano-units.
    pub const fn from_nanos(nanos: u64) -> Money {
        Money(nanos)
    }

    /// The amount in nano-units.
    pub const fn nanos(self) -> u64 {
        self.0
    }

    /// The amount in units of currency.
    pub fn units(self) -> f64 {
        self.0 as f64 / Money::SCALE
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.units())
    }
}

#[cfg(test)]
mod tests {
    use super::Money;

    #[test]
    fn rounds_charges_up_and_saturates() {
        assert_eq!(
            Money::from_units(1e-10).nanos(),
            1,
            "a charge never rounds to nothing"
        );
        assert_eq!(Money::from_units(-1.0), Money::ZERO);
        assert_eq!(Money::from_units(f64::INFINITY).nanos(), u64::MAX);
        assert_eq!(Money::from_units_rounded(1.4e-9).nanos(), 1);
        assert_eq!(Money::from_units_rounded(f64::INFINITY), Money::ZERO);
        assert_eq!(Money::from_nanos(2_500_000_000).units(), 2.5);
    }
}
