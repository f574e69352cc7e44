//! `tollgate demo`: the bundled example policy and trace, replayed in virtual time.
//!
//! Until tollgate's HTTP transport lands, the demo is `tollgate simulate` on
//! `examples/policy.toml` and `examples/trace.jsonl`, both embedded in the binary, so it needs
//! no files, no network and no keys.

use std::collections::BTreeMap;
use std::io::Write;

use tollgate::Policy;

use crate::check::plural;
use crate::fmt::{Table, money};
use crate::simulate::{CallResult, Decided, Stop, Totals, budget_table, read_trace, replay};
use crate::{DemoArgs, exit};

/// The example policy, as in the repository.
const POLICY: &str = include_str!("../../../examples/policy.toml");
/// The example trace, as in the repository.
const TRACE: &str = include_str!("../../../examples/trace.jsonl");

/// Runs `tollgate demo`.
pub(crate) fn run(args: &DemoArgs) -> u8 {
    let policy = match Policy::from_toml(POLICY) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("error: the bundled examples/policy.toml is invalid (a bug in this build):");
            eprintln!("{errors}");
            return exit::FAILED;
        }
    };
    let trace = match read_trace("examples/trace.jsonl", TRACE.as_bytes(), false) {
        Ok(t) => t,
        Err(Stop::Io(message)) => {
            eprintln!("error: {message}");
            return exit::FAILED;
        }
        Err(Stop::Strict) => return exit::FAILED,
    };
    let summary_head = policy
        .summary()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let report = replay(policy, trace.rows, trace.incidents);
    let text = render(&report, &summary_head);
    let mut out = std::io::stdout().lock();
    let written = if args.calls {
        report
            .calls
            .iter()
            .try_for_each(|c| writeln!(out, "{}", c.to_json()))
            .and_then(|()| out.write_all(text.as_bytes()))
    } else {
        out.write_all(text.as_bytes())
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) if trace.bad == 0 => exit::OK,
        Ok(()) => exit::PARTIAL,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write output: {e}");
            exit::FAILED
        }
    }
}

/// The human-readable demo report.
fn render(report: &crate::simulate::Report, policy_head: &str) -> String {
    let calls = &report.calls;
    let tenants: BTreeMap<&str, Totals> = calls.iter().fold(BTreeMap::new(), |mut m, c| {
        m.entry(c.row.tenant.as_str()).or_default().add(c);
        m
    });
    let total = Totals::of(calls);
    let mut out = String::new();
    out.push_str(
        "tollgate demo: a SIMULATION in virtual time, not real API calls.\n\
         tollgate's HTTP transport is not there yet, so this replays the bundled\n\
         examples/trace.jsonl through the real engine under examples/policy.toml, exactly as\n\
         `tollgate simulate --policy examples/policy.toml --trace examples/trace.jsonl` does.\n\n",
    );
    out.push_str(&format!("policy: {policy_head}\n"));
    out.push_str(&format!(
        "trace:  {} from {} over {:.1} virtual seconds\n\n",
        plural(total.calls, "call"),
        plural(tenants.len(), "tenant"),
        report.end_ns as f64 / 1e9
    ));

    out.push_str("Moments worth a look:\n");
    let waits = calls
        .iter()
        .filter(|c| c.decision != Decided::Deny && c.waited_ms() > 0.0);
    // The first three calls that waited, and the first denial of each kind.
    let mut seen = Vec::new();
    let denials = calls.iter().filter(|c| match &c.denial {
        Some((code, _)) if c.decision == Decided::Deny && !seen.contains(code) => {
            seen.push(*code);
            true
        }
        _ => false,
    });
    // And the first call retried on another target, the first retried in place, and the first
    // that gave up.
    let fallback = calls.iter().find(|c| c.fallbacks() > 0);
    let in_place = calls.iter().find(|c| c.retries() > 0 && c.fallbacks() == 0);
    let gave_up = calls.iter().find(|c| c.decision == Decided::GaveUp);
    let mut shown: Vec<(&CallResult, Moment)> = waits
        .take(3)
        .map(|c| (c, Moment::Waited))
        .chain(denials.map(|c| (c, Moment::Denied)))
        .chain(
            fallback
                .into_iter()
                .chain(in_place)
                .map(|c| (c, Moment::Retried)),
        )
        .chain(gave_up.map(|c| (c, Moment::GaveUp)))
        .collect();
    shown.sort_by_key(|(c, m)| (c.decided_ns, c.row.line, *m));
    shown.dedup_by_key(|(c, _)| c.row.line);
    if shown.is_empty() {
        out.push_str("  (no call waited, was retried or was denied)\n");
    }
    for (c, m) in shown {
        out.push_str(&format!("  {}\n", moment(c, m)));
    }

    out.push_str("\nPer tenant:\n");
    let mut table = Table::new(
        &[
            "tenant", "calls", "done", "gave up", "waited", "denied", "max wait", "tokens", "cost",
        ],
        &[false, true, true, true, true, true, true, true, true],
    );
    for (tenant, t) in &tenants {
        table.row(vec![
            if tenant.is_empty() {
                "(none)".to_owned()
            } else {
                (*tenant).to_owned()
            },
            t.calls.to_string(),
            t.done.to_string(),
            t.gave_up.to_string(),
            t.waited.to_string(),
            t.denied.to_string(),
            format!("{:.0} ms", t.max_wait_ms),
            t.tokens.to_string(),
            money(t.cost),
        ]);
    }
    table.row(vec![
        "all".to_owned(),
        total.calls.to_string(),
        total.done.to_string(),
        total.gave_up.to_string(),
        total.waited.to_string(),
        total.denied.to_string(),
        format!("{:.0} ms", total.max_wait_ms),
        total.tokens.to_string(),
        money(total.cost),
    ]);
    out.push_str(&table.render(2));

    out.push_str(&format!(
        "\nRetries (the engine's verdicts): {}\n",
        total.resilience_line()
    ));

    out.push_str("\nPer budget (the engine's own counters):\n");
    out.push_str(&budget_table(&report.stats).render(2));

    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.decision == Decided::Deny) {
        if let Some((code, _)) = &c.denial {
            *reasons.entry(code).or_default() += 1;
        }
    }
    if !reasons.is_empty() {
        let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} × {n}")).collect();
        out.push_str(&format!("\nDenial reasons: {}\n", list.join(", ")));
    }
    out.push_str(
        "\nEvery call as JSON: tollgate demo --calls, or\n  \
         tollgate simulate --policy examples/policy.toml --trace examples/trace.jsonl\n\
         \nAn outage replayed (503s, a 429 burst, a breaker opening, fallbacks):\n  \
         tollgate simulate --policy examples/policy.toml --trace examples/incident.jsonl\n",
    );
    out
}

/// Why a call is worth a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    Waited,
    Denied,
    Retried,
    GaveUp,
}

/// One call in a sentence.
fn moment(c: &CallResult, why: Moment) -> String {
    let at = format!("t={:>7.3}s", c.decided_ns as f64 / 1e9);
    let who = format!("{} {} (line {})", c.row.tenant, c.row.model, c.row.line);
    let on = |b: &Option<(String, String)>| match b {
        Some((b, k)) if !k.is_empty() => format!("'{b}' [{k}]"),
        Some((b, _)) => format!("'{b}'"),
        None => "a budget".to_owned(),
    };
    let attempts = |c: &CallResult| {
        c.attempts
            .iter()
            .map(|a| {
                let place = a.target.as_ref().map_or_else(
                    || "(not admitted)".to_owned(),
                    |t| format!("{}/{}", t.upstream, t.model),
                );
                format!("{} on {place}", a.outcome)
            })
            .collect::<Vec<_>>()
            .join(", then ")
    };
    match why {
        Moment::Retried => {
            return format!(
                "{at}  {who}: retried: {}; {}",
                attempts(c),
                c.decision.as_str()
            );
        }
        Moment::GaveUp => {
            let code = c.give_up.as_ref().map_or("?", |g| g.0);
            return format!("{at}  {who}: gave up ({code}): {}", attempts(c));
        }
        Moment::Waited | Moment::Denied => {}
    }
    match (c.decision, &c.denial) {
        (Decided::Deny, Some((code, message))) if c.budget.is_some() => {
            format!(
                "{at}  {who}: denied by {} ({code}): {message}",
                on(&c.budget)
            )
        }
        (Decided::Deny, Some((code, message))) => {
            format!("{at}  {who}: denied ({code}): {message}")
        }
        _ => format!(
            "{at}  {who}: waited {:.0} ms on {}, then went",
            c.waited_ms(),
            on(&c.budget)
        ),
    }
}
