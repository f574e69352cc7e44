//! `[[budget]]`: rate limits, concurrency, scope and match, and leases.

use std::time::Duration;

use super::defaults::key_capacity;
use super::limits;
use crate::policy::parse::read::{
    Cx, Table, choice, duration, index, name, positive, strings, whole,
};
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::{format_duration, quote};
use crate::policy::{
    Budget, Exhausted, Glob, Lease, Limit, LimitKind, Match, ScopeDim, Store, Unit,
};

const SCOPES: [(&str, ScopeDim); 5] = [
    ("tenant", ScopeDim::Tenant),
    ("model", ScopeDim::Model),
    ("upstream", ScopeDim::Upstream),
    ("key", ScopeDim::Key),
    ("route", ScopeDim::Route),
];

/// Reads one `[[budget]]`; `default_capacity` is `defaults.key_capacity`.
pub(super) fn budget(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    default_capacity: usize,
) -> Option<Budget> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ name = \"per-tenant\", requests_per_minute = 600 }",
    )?;
    let mut allowed = vec![
        "name",
        "scope",
        "match",
        "burst",
        "concurrency",
        "when_exhausted",
        "key_capacity",
        "store",
        "lease",
    ];
    allowed.extend(LimitKind::ALL.iter().map(|k| k.as_str()));
    t.check_keys(cx, &allowed);
    let budget_name = t.req(cx, "name", "name = \"per-tenant\"", name);
    let scope = t.opt(cx, "scope", Vec::new(), scope);
    let matcher = t.opt(cx, "match", Match::default(), matcher);
    let burst = t.maybe(cx, "burst", |cx, n, p| {
        let b = positive(cx, n, p)?;
        if b < 1.0 {
            cx.err(
                p,
                n.pos,
                format!(
                    "must be at least 1, got {}; a burst below one request could never admit a \
                     call",
                    cx.show(n)
                ),
            );
            return None;
        }
        Some(b)
    });
    let mut limits = Vec::new();
    let mut limits_ok = true;
    let mut any_limit = false;
    let mut any_request_limit = false;
    for kind in LimitKind::ALL {
        let Some(n) = t.get(kind.as_str()) else {
            continue;
        };
        any_limit = true;
        any_request_limit |= kind.unit() == Unit::Requests;
        match limit(cx, n, &t.path(kind.as_str()), kind) {
            Some(l) => limits.push(l),
            None => limits_ok = false,
        }
    }
    let concurrency = t.maybe(cx, "concurrency", |cx, n, p| {
        whole(cx, n, p, 1, u64::from(u32::MAX)).and_then(|v| u32::try_from(v).ok())
    });
    let when_exhausted = t.opt(cx, "when_exhausted", Exhausted::Deny, when_exhausted);
    let key_capacity = t.opt(cx, "key_capacity", default_capacity, key_capacity);
    let store = t.opt(cx, "store", Store::Local, |cx, n, p| {
        choice(
            cx,
            n,
            p,
            &[("local", Store::Local), ("redis", Store::Redis)],
        )
    });
    let lease = t.maybe(cx, "lease", lease);

    let shown = budget_name.as_deref().map_or_else(
        || "this budget".to_owned(),
        |n| format!("budget {}", quote(n)),
    );
    if !any_limit && t.get("concurrency").is_none() {
        cx.err(
            path,
            t.pos,
            format!(
                "{shown} has no limit and no concurrency, so it would never hold a call back; add \
                 a limit such as requests_per_minute = 600 or concurrency = 8, or remove the budget"
            ),
        );
        return None;
    }
    // Whether the store is redis is checked even when `lease` itself is invalid; a wrong store
    // value was reported by `choice`.
    let mut lease_ok = true;
    if let Some(n) = t.get("lease") {
        if store == Some(Store::Local) {
            cx.err(
                &t.path("lease"),
                n.pos,
                format!(
                    "leases only apply to store = \"redis\"; {shown} keeps its state in this \
                     process{}, where every call is decided without a round trip. Add store = \
                     \"redis\" or remove lease",
                    if t.get("store").is_none() {
                        " (store defaults to \"local\")"
                    } else {
                        ""
                    }
                ),
            );
            lease_ok = false;
        }
        if !any_limit {
            cx.err(
                &t.path("lease"),
                n.pos,
                format!(
                    "{shown} has only concurrency, and a lease holds room of the rate limits \
                     (requests_per_*, tokens_per_*, spend_per_*), not concurrency slots; remove \
                     lease or add a rate limit"
                ),
            );
            lease_ok = false;
        }
    }
    let burst = burst?;
    if let (Some(_), false) = (burst, any_request_limit) {
        cx.err(
            &t.path("burst"),
            t.get("burst").and_then(|n| n.pos),
            format!(
                "{shown} sets burst but has no requests_per_* limit, which is what it applies \
                 to; put the burst in the limit itself: tokens_per_minute = {{ limit = 150000, \
                 burst = 20000 }}"
            ),
        );
        return None;
    }
    // Each limit's burst, and whether the budget's timeline can hold it.
    let mut spans_ok = true;
    let mut budget_burst_refused = false;
    let budget_burst = t.get("burst").map(|n| (t.path("burst"), n));
    let mut checked = Vec::with_capacity(limits.len());
    for l in limits {
        let (burst, from) = match (l.own, l.kind.unit(), &budget_burst) {
            (Some((b, p, n)), _, _) => (b, limits::BurstFrom::Own(p, n)),
            (None, Unit::Requests, Some((p, n))) => (
                burst.unwrap_or(1.0),
                limits::BurstFrom::Budget(p.clone(), n),
            ),
            (None, Unit::Requests, None) => (l.amount.max(1.0), limits::BurstFrom::Default),
            (None, _, _) => (l.amount, limits::BurstFrom::Default),
        };
        // The budget's burst applies to each request limit: one error about it is enough.
        let of_budget = matches!(from, limits::BurstFrom::Budget(..));
        if !(of_budget && budget_burst_refused) {
            let (path, node) = &l.amount_at;
            let ok = limits::check_span(cx, l.kind, l.amount, burst, &from, (path, node));
            budget_burst_refused |= of_budget && !ok;
            spans_ok &= ok;
        }
        checked.push(Limit {
            kind: l.kind,
            amount: l.amount,
            burst,
        });
    }
    if !limits_ok || !lease_ok || !spans_ok {
        return None;
    }
    Some(Budget {
        name: budget_name?,
        scope: scope?,
        matcher: matcher?,
        limits: checked,
        concurrency: concurrency?,
        when_exhausted: when_exhausted?,
        key_capacity: key_capacity?,
        store: store?,
        lease: lease?,
    })
}

/// Largest `lease.size`.
const MAX_LEASE_SIZE: u64 = 10_000;
/// Longest `lease.ttl`: unspent room is kept from the other processes this long.
const MAX_LEASE_TTL: Duration = Duration::from_secs(60);

/// `lease = { size = 20, ttl = "1s" }`
fn lease(cx: &mut Cx, node: &Node, path: &str) -> Option<Lease> {
    let t = Table::read(cx, node, path, "{ size = 20, ttl = \"1s\" }")?;
    t.check_keys(cx, &["size", "ttl"]);
    let size = t.req(
        cx,
        "size",
        "size = 20 (calls' worth of room taken per round trip to Redis)",
        |cx, n, p| {
            if matches!(n.kind, Kind::Int(1)) {
                cx.err(
                    p,
                    n.pos,
                    format!(
                        "must be a whole number from 2 to {MAX_LEASE_SIZE}, got {}; a lease of one \
                         call is no lease, so remove lease to ask Redis on every call",
                        cx.show(n)
                    ),
                );
                return None;
            }
            whole(cx, n, p, 2, MAX_LEASE_SIZE).and_then(|v| u32::try_from(v).ok())
        },
    );
    let ttl = t.req(
        cx,
        "ttl",
        "ttl = \"1s\" (how long unspent room is kept before it is handed back)",
        |cx, n, p| {
            let ttl = duration(cx, n, p)?;
            if ttl > MAX_LEASE_TTL {
                cx.err(
                    p,
                    n.pos,
                    format!(
                        "must be at most {}, got {}; unspent room is kept from the other \
                         processes this long, so keep it short, such as \"1s\"",
                        format_duration(MAX_LEASE_TTL),
                        format_duration(ttl)
                    ),
                );
                return None;
            }
            Some(ttl)
        },
    );
    Some(Lease {
        size: size?,
        ttl: ttl?,
    })
}

/// A limit as read, with where its amount and its own burst were written.
struct ReadLimit<'n> {
    kind: LimitKind,
    amount: f64,
    /// Path and node of the amount (the number, or `limit` of the table).
    amount_at: (String, &'n Node),
    /// `burst` of `{ limit, burst }`, with its path and node.
    own: Option<(f64, String, &'n Node)>,
}

/// A limit: a number, or `{ limit = N, burst = B }`, each within what a budget can hold (see
/// [`super::limits`]).
fn limit<'n>(cx: &mut Cx, node: &'n Node, path: &str, kind: LimitKind) -> Option<ReadLimit<'n>> {
    match &node.kind {
        Kind::Int(_) | Kind::Float(_) | Kind::BigInt(..) => limits::amount(cx, node, path, kind)
            .map(|amount| ReadLimit {
                kind,
                amount,
                amount_at: (path.to_owned(), node),
                own: None,
            }),
        Kind::Table(_) => {
            let t = Table::read(cx, node, path, "{ limit = 600, burst = 50 }")?;
            t.check_keys(cx, &["limit", "burst"]);
            let amount = t.req(cx, "limit", "limit = 600", |cx, n, p| {
                limits::amount(cx, n, p, kind)
            });
            let burst = t.maybe(cx, "burst", |cx, n, p| limits::own_burst(cx, n, p, kind));
            let own = match (burst?, t.get("burst")) {
                (Some(b), Some(n)) => Some((b, t.path("burst"), n)),
                _ => None,
            };
            Some(ReadLimit {
                kind,
                amount: amount?,
                amount_at: (t.path("limit"), t.get("limit")?),
                own,
            })
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a positive number or a table such as {{ limit = 600, burst = 50 }}, \
                     got {}",
                    cx.show(node)
                ),
            );
            None
        }
    }
}

fn scope(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<ScopeDim>> {
    let items = strings(cx, node, path)?;
    let single = matches!(node.kind, Kind::Str(_));
    let mut out: Vec<ScopeDim> = Vec::new();
    let mut ok = true;
    for (i, (_, item)) in items.iter().enumerate() {
        let p = if single {
            path.to_owned()
        } else {
            index(path, i)
        };
        match choice(cx, item, &p, &SCOPES) {
            Some(d) if out.contains(&d) => {
                cx.err(
                    &p,
                    item.pos,
                    format!("\"{}\" is listed twice; remove one", d.as_str()),
                );
                ok = false;
            }
            Some(d) => out.push(d),
            None => ok = false,
        }
    }
    out.sort();
    ok.then_some(out)
}

fn matcher(cx: &mut Cx, node: &Node, path: &str) -> Option<Match> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ model = \"gpt-4o*\", tenant = [\"a*\", \"b\"] }",
    )?;
    let keys: Vec<&str> = SCOPES.iter().map(|(n, _)| *n).collect();
    t.check_keys(cx, &keys);
    let mut m = Match::default();
    let mut ok = true;
    for (key, dim) in SCOPES {
        let Some(n) = t.get(key) else { continue };
        let p = t.path(key);
        let Some(items) = strings(cx, n, &p) else {
            ok = false;
            continue;
        };
        if items.is_empty() {
            cx.err(
                &p,
                n.pos,
                format!("must list at least one pattern; remove the line to match every {key}"),
            );
            ok = false;
        }
        let globs = items
            .iter()
            .filter_map(|(s, item)| {
                if s.is_empty() {
                    cx.err(
                        &p,
                        item.pos,
                        "must not be an empty pattern; use \"*\" to match anything",
                    );
                    ok = false;
                    None
                } else {
                    Some(Glob::new(s))
                }
            })
            .collect();
        match dim {
            ScopeDim::Tenant => m.tenant = globs,
            ScopeDim::Model => m.model = globs,
            ScopeDim::Upstream => m.upstream = globs,
            ScopeDim::Key => m.key = globs,
            ScopeDim::Route => m.route = globs,
        }
    }
    ok.then_some(m)
}

fn when_exhausted(cx: &mut Cx, node: &Node, path: &str) -> Option<Exhausted> {
    const HINT: &str = "write \"deny\" or { wait_up_to = \"2s\" }";
    match &node.kind {
        Kind::Str(s) if s == "deny" => Some(Exhausted::Deny),
        Kind::Table(_) => {
            let t = Table::read(cx, node, path, "{ wait_up_to = \"2s\" }")?;
            t.check_keys(cx, &["wait_up_to"]);
            t.req(cx, "wait_up_to", "wait_up_to = \"2s\"", duration)
                .map(Exhausted::Wait)
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be \"deny\" or a wait, got {}; {HINT}", cx.show(node)),
            );
            None
        }
    }
}
