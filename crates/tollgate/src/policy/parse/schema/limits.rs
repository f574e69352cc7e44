//! How large and how small a budget's limits may be: what a budget's state can hold.
//!
//! A budget keeps each limit as one 64-bit count of nanoseconds (the theoretical arrival time of
//! the generic cell rate algorithm, see `budget::gcra`): a call takes `units × window / limit`
//! nanoseconds of that timeline, rounded up to a whole nanosecond, and the timeline may run up to
//! `burst × window / limit` ahead of the clock. Tokens, and money in billionths, are counted in
//! 64-bit integers. So a limit is refused when
//! - it allows more than one request per nanosecond: a request would be charged more than its
//!   share, and the limit would admit fewer calls than written (with a small burst, none);
//! - it counts more tokens, or more billionths of money, than 64 bits hold;
//! - its burst spans less than one nanosecond of the timeline (no call would ever fit), or more
//!   than 2^63 ns, about 292 years (the rest of the 64 bits is left for the clock; past 2^64 ns
//!   the limit would stop holding calls back).

use crate::policy::LimitKind;
use crate::policy::Unit;
use crate::policy::parse::read::{Cx, TOML_INT_MAX, beyond_toml, positive, show_float};
use crate::policy::parse::tree::{Kind, Node};

/// The longest a burst may span on a budget's timeline: 2^63 ns, about 292 years.
pub(super) const MAX_SPAN_NS: f64 = 9_223_372_036_854_775_808.0;
/// The largest token count below 2^64 that an `f64` holds.
const MAX_TOKENS: f64 = 18_446_744_073_709_549_568.0;
/// The largest amount of money whose billionths stay below 2^64.
const MAX_MONEY: f64 = 18_446_744_073.709_55;

/// The window of `kind`, in nanoseconds.
fn window_ns(kind: LimitKind) -> f64 {
    kind.window().as_nanos() as f64
}

/// The largest amount `kind` accepts; for tokens and spend also the largest burst.
pub(super) fn largest(kind: LimitKind) -> f64 {
    match kind.unit() {
        Unit::Requests => window_ns(kind),
        Unit::Tokens => MAX_TOKENS,
        Unit::Spend => MAX_MONEY,
    }
}

/// A number as a message shows it: whole numbers (below 10^15) without a fraction, the rest as
/// Rust writes them (the shortest form that reads back the same, `1e-5`, `1.8e19`).
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        show_float(v)
    }
}

/// What bounds the amount of `kind` from above, for messages.
fn why_largest(kind: LimitKind) -> &'static str {
    match kind.unit() {
        Unit::Requests => "one request per nanosecond, the finest time a budget keeps",
        Unit::Tokens => "a budget counts tokens in 64-bit integers",
        Unit::Spend => "a budget counts money in billionths, in 64-bit integers",
    }
}

/// Reads a limit's amount (`requests_per_minute = 600`, or `limit` in `{ limit, burst }`): a
/// positive number no larger than [`largest`].
pub(super) fn amount(cx: &mut Cx, node: &Node, path: &str, kind: LimitKind) -> Option<f64> {
    if let Kind::BigInt(_, value) = node.kind
        && value > 0.0
    {
        too_large(cx, node, path, kind, value);
        return None;
    }
    let amount = positive(cx, node, path)?;
    if amount > largest(kind) {
        too_large(cx, node, path, kind, amount);
        return None;
    }
    Some(amount)
}

/// Reads a limit's own burst (`burst` in `{ limit, burst }`): positive, at least one request for
/// a request limit, and for tokens and spend no larger than [`largest`]. How it compares with the
/// limit is checked by [`check_span`].
pub(super) fn own_burst(cx: &mut Cx, node: &Node, path: &str, kind: LimitKind) -> Option<f64> {
    if let Kind::BigInt(_, value) = node.kind
        && value > 0.0
        && kind.unit() != Unit::Requests
    {
        too_large(cx, node, path, kind, value);
        return None;
    }
    let burst = positive(cx, node, path)?;
    if kind.unit() == Unit::Requests && burst < 1.0 {
        cx.err(
            path,
            node.pos,
            format!(
                "must be at least 1 for {}, got {}; a burst below one request could never admit \
                 a call",
                kind.as_str(),
                cx.show(node)
            ),
        );
        return None;
    }
    if kind.unit() != Unit::Requests && burst > largest(kind) {
        too_large(cx, node, path, kind, burst);
        return None;
    }
    Some(burst)
}

/// Reports an amount (or a token or spend burst) above [`largest`]; `value` is what was written.
fn too_large(cx: &mut Cx, node: &Node, path: &str, kind: LimitKind, value: f64) {
    let max = largest(kind);
    let message = if matches!(node.kind, Kind::BigInt(..)) && value <= max {
        // Only tokens get here: a count between 2^63 and 2^64, fine as a float.
        format!(
            "{} is beyond TOML's 64-bit integers (at most {TOML_INT_MAX}); write it with an \
             exponent, such as {value:e}",
            cx.show(node)
        )
    } else {
        format!(
            "must be at most {} ({}), got {}{}; write {} or less",
            num(max),
            why_largest(kind),
            cx.show(node),
            beyond_toml(node),
            num(max)
        )
    };
    cx.err(path, node.pos, message);
}

/// Where the burst of a limit comes from, for the message about it.
pub(super) enum BurstFrom<'n> {
    /// `burst` in `{ limit, burst }`: its path and node.
    Own(String, &'n Node),
    /// The budget's `burst` (request limits): its path and node.
    Budget(String, &'n Node),
    /// None was written: the limit itself, or one request for a request limit below one.
    Default,
}

/// Checks that the burst of `kind = amount` spans at least one nanosecond of the budget's
/// timeline and at most [`MAX_SPAN_NS`]; reports the problem where the burst (or, for a default
/// burst, the limit) was written. `amount_at` is the path and node of the limit's amount.
pub(super) fn check_span(
    cx: &mut Cx,
    kind: LimitKind,
    amount: f64,
    burst: f64,
    from: &BurstFrom<'_>,
    amount_at: (&str, &Node),
) -> bool {
    let window = window_ns(kind);
    let field = kind.as_str();
    // burst × window / amount, compared without dividing: exact at the bounds.
    let spread = burst * window;
    if spread < amount {
        let least = amount / window;
        let (path, node) = match from {
            BurstFrom::Own(p, n) | BurstFrom::Budget(p, n) => (p.as_str(), *n),
            BurstFrom::Default => amount_at,
        };
        cx.err(
            path,
            node.pos,
            format!(
                "must be at least {} for {field} = {}, got {}: that is less than the limit \
                 refills in one nanosecond, the finest time a budget keeps, so no call could \
                 ever fit; raise the burst to {} or more, or lower the limit",
                num(least),
                num(amount),
                num(burst),
                num(least)
            ),
        );
        return false;
    }
    if spread > amount * MAX_SPAN_NS {
        match from {
            BurstFrom::Own(path, node) | BurstFrom::Budget(path, node) => {
                let most = amount * MAX_SPAN_NS / window;
                cx.err(
                    path,
                    node.pos,
                    format!(
                        "must be at most {} for {field} = {}, got {}: refilling a larger burst \
                         would take more than 2^63 ns (about 292 years), the longest a budget \
                         keeps; lower the burst or raise the limit",
                        num(most),
                        num(amount),
                        num(burst)
                    ),
                );
            }
            BurstFrom::Default => {
                let least = window / MAX_SPAN_NS;
                let (path, node) = amount_at;
                cx.err(
                    path,
                    node.pos,
                    format!(
                        "must be at least {} (one request in 2^63 ns, about 292 years, the \
                         longest a budget keeps), got {}; write {} or more",
                        num(least),
                        cx.show(node),
                        num(least)
                    ),
                );
            }
        }
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_the_largest_values_below_2_to_the_64() {
        let two_64 = 18_446_744_073_709_551_616.0_f64;
        assert!(MAX_TOKENS < two_64 && MAX_TOKENS.next_up() == two_64);
        assert!(MAX_MONEY * 1e9 < two_64 && MAX_MONEY.next_up() * 1e9 >= two_64);
        assert_eq!(MAX_SPAN_NS, two_64 / 2.0);
    }

    #[test]
    fn numbers_in_messages() {
        assert_eq!(num(1e9), "1000000000");
        assert_eq!(num(86_400_000_000_000.0), "86400000000000");
        assert_eq!(num(MAX_TOKENS), "1.844674407370955e19");
        assert_eq!(num(MAX_MONEY), "18446744073.70955");
        assert_eq!(num(9.367506770274758e-6), "9.367506770274758e-6");
    }
}
