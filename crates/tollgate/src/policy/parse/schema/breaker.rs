//! `[breaker]`: when an upstream is taken out of rotation, and how it is probed back in.

use crate::policy::parse::read::{Cx, Table, boolean, duration, fraction, string, whole};
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::quote;
use crate::policy::{Breaker, BreakerWindow, Probe};

/// Reads `[breaker]`.
pub(super) fn breaker(cx: &mut Cx, node: &Node, path: &str) -> Option<Breaker> {
    let t = Table::read(cx, node, path, "{ failure_rate = 0.5 }")?;
    t.check_keys(
        cx,
        &[
            "enabled",
            "window",
            "min_calls",
            "failure_rate",
            "slow_call",
            "slow_call_rate",
            "open_for",
            "half_open_calls",
            "probe",
        ],
    );
    let d = Breaker::default();
    let enabled = t.opt(cx, "enabled", d.enabled, boolean);
    let window = t.opt(cx, "window", d.window, breaker_window);
    let min_calls = t.opt(cx, "min_calls", d.min_calls, breaker_count);
    let failure_rate = t.opt(cx, "failure_rate", d.failure_rate, fraction);
    let slow_call = t.maybe(cx, "slow_call", duration);
    let slow_call_rate = t.opt(cx, "slow_call_rate", d.slow_call_rate, fraction);
    let open_for = t.opt(cx, "open_for", d.open_for, duration);
    let half_open_calls = t.opt(cx, "half_open_calls", d.half_open_calls, breaker_count);
    let probe = t.maybe(cx, "probe", probe);
    // A time window holds however many calls arrive in it, so only a count window bounds
    // min_calls.
    if let (Some(BreakerWindow::Calls(w)), Some(m)) = (window, min_calls)
        && m > w
    {
        cx.err(
            &t.path("min_calls"),
            t.get("min_calls").or(t.get("window")).and_then(|n| n.pos),
            format!(
                "min_calls ({m}) is more than window ({w}), so the breaker could never open; \
                     lower min_calls or raise window"
            ),
        );
        return None;
    }
    Some(Breaker {
        enabled: enabled?,
        window: window?,
        min_calls: min_calls?,
        failure_rate: failure_rate?,
        slow_call: slow_call?,
        slow_call_rate: slow_call_rate?,
        open_for: open_for?,
        half_open_calls: half_open_calls?,
        probe: probe?,
    })
}

fn breaker_count(cx: &mut Cx, node: &Node, path: &str) -> Option<u32> {
    whole(cx, node, path, 1, 100_000).and_then(|v| u32::try_from(v).ok())
}

/// `window = 20` (the last 20 calls) or `window = "30s"` (the calls of the last 30 seconds).
fn breaker_window(cx: &mut Cx, node: &Node, path: &str) -> Option<BreakerWindow> {
    match &node.kind {
        Kind::Int(_) | Kind::Float(_) | Kind::BigInt(..) => {
            breaker_count(cx, node, path).map(BreakerWindow::Calls)
        }
        Kind::Str(s) => {
            let trimmed = s.trim();
            if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
                cx.err(
                    path,
                    node.pos,
                    format!(
                        "{} is neither a number of calls nor a duration; write {trimmed} \
                         without quotes for the last {trimmed} calls, or \"{trimmed}s\" for the \
                         calls of the last {trimmed} seconds",
                        quote(s)
                    ),
                );
                return None;
            }
            duration(cx, node, path).map(BreakerWindow::Time)
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a number of calls such as 20 or a duration such as \"30s\", got {}",
                    cx.show(node)
                ),
            );
            None
        }
    }
}

/// Longest probe prompt, in bytes: a probe only has to show the upstream answers.
const MAX_PROBE_PROMPT: usize = 4096;
/// Largest probe `max_tokens`.
const MAX_PROBE_TOKENS: u64 = 4096;

/// `probe = { prompt = "ping", max_tokens = 1 }`
fn probe(cx: &mut Cx, node: &Node, path: &str) -> Option<Probe> {
    let t = Table::read(cx, node, path, "{ prompt = \"ping\", max_tokens = 1 }")?;
    t.check_keys(cx, &["prompt", "max_tokens"]);
    let prompt = t.req(cx, "prompt", "prompt = \"ping\"", |cx, n, p| {
        let s = string(cx, n, p)?;
        if s.trim().is_empty() {
            cx.err(
                p,
                n.pos,
                "must not be empty; write a short prompt such as \"ping\"",
            );
            return None;
        }
        if s.len() > MAX_PROBE_PROMPT {
            cx.err(
                p,
                n.pos,
                format!(
                    "is {} bytes long; a probe prompt is at most {MAX_PROBE_PROMPT} bytes, and a \
                     short one such as \"ping\" is enough",
                    s.len()
                ),
            );
            return None;
        }
        Some(s.to_owned())
    });
    let max_tokens = t.opt(cx, "max_tokens", 1, |cx, n, p| {
        whole(cx, n, p, 1, MAX_PROBE_TOKENS).and_then(|v| u32::try_from(v).ok())
    });
    Some(Probe {
        prompt: prompt?,
        max_tokens: max_tokens?,
    })
}
