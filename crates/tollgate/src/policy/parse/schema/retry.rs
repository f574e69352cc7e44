//! `[retry]`: how many attempts a call gets, the backoff between them, and what is retried.

use crate::policy::parse::read::{
    Cx, Table, array, boolean, choice, duration, fraction, index, non_negative, positive, whole,
};
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::format_duration;
use crate::policy::{Jitter, Retry, RetryOn};

/// Reads `[retry]`.
pub(super) fn retry(cx: &mut Cx, node: &Node, path: &str) -> Option<Retry> {
    let t = Table::read(cx, node, path, "{ max_attempts = 3 }")?;
    t.check_keys(
        cx,
        &[
            "max_attempts",
            "backoff",
            "max_retry_after",
            "retry_on",
            "budget",
            "honor_server_limits",
        ],
    );
    let d = Retry::default();
    let max_attempts = t.opt(cx, "max_attempts", d.max_attempts, |cx, n, p| {
        whole(cx, n, p, 1, 20).and_then(|v| u32::try_from(v).ok())
    });
    let backoff = t.opt(
        cx,
        "backoff",
        (d.base, d.max_backoff, d.jitter),
        |cx, n, p| {
            let b = Table::read(
                cx,
                n,
                p,
                "{ base = \"500ms\", max = \"8s\", jitter = \"full\" }",
            )?;
            b.check_keys(cx, &["base", "max", "jitter"]);
            let base = b.opt(cx, "base", d.base, duration);
            let max = b.opt(cx, "max", d.max_backoff, duration);
            let jitter = b.opt(cx, "jitter", d.jitter, |cx, n, p| {
                choice(
                    cx,
                    n,
                    p,
                    &[
                        ("none", Jitter::None),
                        ("full", Jitter::Full),
                        ("equal", Jitter::Equal),
                        ("decorrelated", Jitter::Decorrelated),
                    ],
                )
            });
            if let (Some(base), Some(max)) = (base, max)
                && base > max
            {
                cx.err(
                    &b.path("base"),
                    b.get("base").or(b.get("max")).and_then(|n| n.pos),
                    format!(
                        "base ({}) must not be longer than max ({}); lower base or raise max",
                        format_duration(base),
                        format_duration(max)
                    ),
                );
                return None;
            }
            Some((base?, max?, jitter?))
        },
    );
    let max_retry_after = t.opt(cx, "max_retry_after", d.max_retry_after, duration);
    let retry_on = t.opt(cx, "retry_on", d.retry_on.clone(), retry_on);
    let budget = t.opt(
        cx,
        "budget",
        (
            d.budget_ratio,
            d.budget_max_tokens,
            d.budget_refill_per_second,
            d.budget_retry_after_cost,
        ),
        |cx, n, p| {
            let b = Table::read(
                cx,
                n,
                p,
                "{ ratio = 0.1, max_tokens = 10, refill_per_second = 0.5, retry_after_cost = 0.5 }",
            )?;
            b.check_keys(
                cx,
                &[
                    "ratio",
                    "max_tokens",
                    "refill_per_second",
                    "retry_after_cost",
                ],
            );
            let ratio = b.opt(cx, "ratio", d.budget_ratio, fraction);
            let max_tokens = b.opt(cx, "max_tokens", d.budget_max_tokens, positive);
            let refill = b.opt(
                cx,
                "refill_per_second",
                d.budget_refill_per_second,
                non_negative,
            );
            let cost = b.opt(
                cx,
                "retry_after_cost",
                d.budget_retry_after_cost,
                |cx, n, p| {
                    let v = non_negative(cx, n, p)?;
                    if v > 1.0 {
                        cx.err(
                            p,
                            n.pos,
                            format!(
                                "must be from 0 to 1, got {}; 1 charges a 429 with Retry-After \
                                 as any failure, 0 not at all",
                                cx.show(n)
                            ),
                        );
                        return None;
                    }
                    Some(v)
                },
            );
            Some((ratio?, max_tokens?, refill?, cost?))
        },
    );
    let honor_server_limits = t.opt(cx, "honor_server_limits", d.honor_server_limits, boolean);
    let (base, max_backoff, jitter) = backoff?;
    let (budget_ratio, budget_max_tokens, budget_refill_per_second, budget_retry_after_cost) =
        budget?;
    Some(Retry {
        max_attempts: max_attempts?,
        base,
        max_backoff,
        jitter,
        max_retry_after: max_retry_after?,
        retry_on: retry_on?,
        budget_ratio,
        budget_max_tokens,
        budget_refill_per_second,
        budget_retry_after_cost,
        honor_server_limits: honor_server_limits?,
    })
}

const RETRY_NAMES: [(&str, RetryOn); 5] = [
    ("5xx", RetryOn::ServerErrors),
    ("connect", RetryOn::Connect),
    ("timeout", RetryOn::Timeout),
    ("malformed", RetryOn::Malformed),
    ("cut_stream", RetryOn::CutStream),
];

fn retry_on(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<RetryOn>> {
    let items = array(cx, node, path, "[429, \"5xx\", \"connect\", \"timeout\"]")?;
    let mut out: Vec<RetryOn> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let value = match &item.kind {
            Kind::Int(_) | Kind::Float(_) | Kind::BigInt(..) => whole(cx, item, &p, 100, 599)
                .and_then(|v| u16::try_from(v).ok())
                .map(RetryOn::Status),
            Kind::Str(s) if s.parse::<u16>().is_ok() => {
                cx.err(
                    &p,
                    item.pos,
                    format!("write the status code as a number: {s} without quotes"),
                );
                None
            }
            Kind::Str(_) => choice(cx, item, &p, &RETRY_NAMES),
            _ => {
                cx.err(
                    &p,
                    item.pos,
                    format!(
                        "must be a status code such as 429 or one of \"5xx\", \"connect\", \
                         \"timeout\", \"malformed\", \"cut_stream\"; got {}",
                        cx.show(item)
                    ),
                );
                None
            }
        };
        match value {
            Some(v) if out.contains(&v) => {
                cx.err(
                    &p,
                    item.pos,
                    format!("{} is listed twice; remove one", cx.show(item)),
                );
                ok = false;
            }
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
