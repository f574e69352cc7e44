//! The policy schema: one reader per section, each collecting every error it finds.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::read::{
    Cx, Table, array, boolean, choice, duration, fraction, http_url, index, join, name,
    non_negative, number, positive, secret, string, strings, whole,
};
use super::suggest::nearest;
use super::tree::{Kind, Node};
use super::units::{format_bytes, format_duration, is_glob, parse_bytes, quote};
use crate::policy::{
    Auth, Breaker, BreakerWindow, Budget, Cache, CacheL2, Cidr, DEFAULT_KEY_QUARANTINE, Defaults,
    Exhausted, Glob, Jitter, Lease, Limit, LimitKind, Match, ModelOverride, OnFailure, Policy,
    Probe, Redis, RedisUrl, Retry, RetryOn, Route, ScopeDim, SecretRef, Serve, Store, Strategy,
    Target, Timeouts, TokenPlacement, Unit, Upstream, VirtualKey,
};
use crate::tokens::{Encoding, Price};

const TOP: &[&str] = &[
    "version", "defaults", "upstream", "budget", "route", "retry", "breaker", "cache", "prices",
    "models", "redis", "serve",
];

/// Largest `key_capacity`: the keyed state of a budget may be sized up front.
const MAX_KEY_CAPACITY: u64 = 10_000_000;

/// Reads and validates a whole policy.
pub(crate) fn policy(cx: &mut Cx, root: &Node) -> Option<Policy> {
    let t = Table::read(cx, root, "", "{ \"version\": 1 }")?;
    t.check_keys(cx, TOP);
    let version = t.req(cx, "version", "version = 1 at the top of the file", version);
    let defaults = t.opt(cx, "defaults", Defaults::default(), defaults);
    let key_capacity = defaults
        .as_ref()
        .map_or(Defaults::default().key_capacity, |d| d.key_capacity);

    let upstreams = list(cx, &t, "upstream", "[[upstream]]", upstream);
    let upstream_names = names(cx, &t, "upstream", "upstream", |_| None);
    let budgets = list(cx, &t, "budget", "[[budget]]", |cx, n, p| {
        budget(cx, n, p, key_capacity)
    });
    names(cx, &t, "budget", "budget", |_| None);
    let routes = list(cx, &t, "route", "[[route]]", |cx, n, p| {
        route(cx, n, p, &upstream_names)
    });
    let route_names = names(cx, &t, "route", "route", route_default_name);
    fallbacks(cx, &t, &route_names);
    let retry = t.opt(cx, "retry", Retry::default(), retry);
    let breaker = t.opt(cx, "breaker", Breaker::default(), breaker);
    let cache = t.opt(cx, "cache", Cache::default(), cache);
    let prices = t.opt(cx, "prices", BTreeMap::new(), prices);
    let models = t.opt(cx, "models", BTreeMap::new(), models);
    let redis = t.maybe(cx, "redis", redis);
    let serve = t.maybe(cx, "serve", serve);
    needs_redis(cx, &t);
    Some(Policy {
        version: version?,
        defaults: defaults?,
        upstreams: upstreams?,
        budgets: budgets?,
        routes: routes?,
        retry: retry?,
        breaker: breaker?,
        cache: cache?,
        prices: prices?,
        models: models?,
        redis: redis?,
        serve: serve?,
    })
}

fn version(cx: &mut Cx, node: &Node, path: &str) -> Option<u32> {
    match node.kind {
        Kind::Int(1) => Some(1),
        Kind::Float(1.0) => Some(1),
        Kind::Int(_) | Kind::Float(_) => {
            cx.err(
                path,
                node.pos,
                format!(
                    "version {} is not supported; this tollgate reads version 1",
                    cx.show(node)
                ),
            );
            None
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!("must be the number 1, got {}", cx.show(node)),
            );
            None
        }
    }
}

/// Reads an array of tables (`[[budget]]`); absent means empty.
fn list<'n, T>(
    cx: &mut Cx,
    t: &Table<'n>,
    key: &str,
    example: &str,
    mut read: impl FnMut(&mut Cx, &'n Node, &str) -> Option<T>,
) -> Option<Vec<T>> {
    let Some(node) = t.get(key) else {
        return Some(Vec::new());
    };
    let path = t.path(key);
    let Kind::Array(items) = &node.kind else {
        cx.err(
            &path,
            node.pos,
            format!(
                "must be a list of tables, got {}; write {example} (two brackets) in TOML, or \
                 \"{key}\": [{{ ... }}] in JSON",
                cx.show(node)
            ),
        );
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match read(cx, item, &index(&path, i)) {
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Reports names used twice in an array of tables and returns the names (even of entries that are
/// otherwise invalid, so that references to them are not reported as well). `fallback` gives the
/// name of an entry without `name` (routes default to their model).
fn names(
    cx: &mut Cx,
    t: &Table<'_>,
    key: &str,
    what: &str,
    fallback: impl Fn(&[(super::tree::Key, Node)]) -> Option<(String, Option<usize>)>,
) -> Vec<String> {
    let Some(Node {
        kind: Kind::Array(items),
        ..
    }) = t.get(key)
    else {
        return Vec::new();
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Kind::Table(entries) = &item.kind else {
            continue;
        };
        let named = entries
            .iter()
            .find(|(k, _)| k.name == "name")
            .and_then(|(_, v)| match &v.kind {
                Kind::Str(s) => Some((s.clone(), v.pos)),
                _ => None,
            });
        let Some((n, pos)) = named.or_else(|| fallback(entries)) else {
            continue;
        };
        let path = join(&index(&t.path(key), i), "name");
        match seen.get(&n) {
            Some(first) => cx.err(
                &path,
                pos,
                format!(
                    "{what} name {} is already used by {key}[{first}]; {what} names must be unique",
                    quote(&n)
                ),
            ),
            None => {
                seen.insert(n.clone(), i);
                out.push(n);
            }
        }
    }
    out
}

/// The name of a route without `name`: its model, when that is a string.
fn route_default_name(entries: &[(super::tree::Key, Node)]) -> Option<(String, Option<usize>)> {
    entries
        .iter()
        .find(|(k, _)| k.name == "model")
        .and_then(|(_, v)| match &v.kind {
            Kind::Str(s) => Some((s.clone(), v.pos)),
            _ => None,
        })
}

/// A route's name (when it has one), and the name in its `fallback` with the value's node.
type RouteLink<'n> = (Option<String>, Option<(&'n str, &'n Node)>);

/// Checks every route's `fallback`: it must name a route, and following the chain must never come
/// back to a route already on it. Reports one error per unknown name and one per loop (at the
/// `fallback` of the loop's first route in file order, naming the whole cycle). `route_names` are
/// the names of every route (from [`names`]); a fallback's type was checked by [`route`].
fn fallbacks(cx: &mut Cx, t: &Table<'_>, route_names: &[String]) {
    let Some(Node {
        kind: Kind::Array(items),
        ..
    }) = t.get("route")
    else {
        return;
    };
    let base = t.path("route");
    // Per route in file order: its name, and its fallback's name and node.
    let mut routes: Vec<RouteLink<'_>> = Vec::new();
    for item in items {
        let Kind::Table(entries) = &item.kind else {
            routes.push((None, None));
            continue;
        };
        let own = entries
            .iter()
            .find(|(k, _)| k.name == "name")
            .and_then(|(_, v)| match &v.kind {
                Kind::Str(s) => Some(s.clone()),
                _ => None,
            })
            .or_else(|| route_default_name(entries).map(|(n, _)| n));
        let fallback =
            entries
                .iter()
                .find(|(k, _)| k.name == "fallback")
                .and_then(|(_, v)| match &v.kind {
                    Kind::Str(s) if !s.trim().is_empty() => Some((s.as_str(), v)),
                    _ => None,
                });
        routes.push((own, fallback));
    }
    // The route a name refers to: the first one with that name (a later duplicate is reported by
    // `names`).
    let by_name = |wanted: &str| {
        routes
            .iter()
            .position(|(own, _)| own.as_deref() == Some(wanted))
    };
    let candidates: Vec<&str> = route_names.iter().map(String::as_str).collect();
    let mut next: Vec<Option<usize>> = Vec::with_capacity(routes.len());
    for (i, (_, fallback)) in routes.iter().enumerate() {
        let Some((wanted, node)) = fallback else {
            next.push(None);
            continue;
        };
        let target = by_name(wanted);
        if target.is_none() {
            let others: Vec<&str> = candidates
                .iter()
                .copied()
                .filter(|c| Some(*c) != routes[i].0.as_deref())
                .collect();
            let hint = match super::suggest::nearest(wanted, &others) {
                Some(near) => format!("did you mean \"{near}\"?"),
                None if others.is_empty() => format!(
                    "add a [[route]] with name = {} or remove the fallback",
                    quote(wanted)
                ),
                None => format!(
                    "the other routes are {}; fix the name or add a [[route]] with name = {}",
                    others.join(", "),
                    quote(wanted)
                ),
            };
            cx.err(
                &join(&index(&base, i), "fallback"),
                node.pos,
                format!("no route is named {}; {hint}", quote(wanted)),
            );
        }
        next.push(target);
    }
    // Each route has at most one fallback, so every walk either ends or runs into a loop. Walk
    // from each route in file order; a loop is reported by the walk that closes it, once.
    const NEW: u8 = 0;
    const ON_WALK: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; routes.len()];
    for start in 0..routes.len() {
        let mut walk = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match state[i] {
                NEW => {
                    state[i] = ON_WALK;
                    walk.push(i);
                    at = next[i];
                }
                ON_WALK => {
                    let from = walk.iter().position(|&w| w == i).unwrap_or(0);
                    let mut cycle = walk[from..].to_vec();
                    let first = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, r)| **r)
                        .map_or(0, |(k, _)| k);
                    cycle.rotate_left(first);
                    let mut shown: Vec<&str> = cycle
                        .iter()
                        .map(|&r| routes[r].0.as_deref().unwrap_or("?"))
                        .collect();
                    shown.push(shown[0]);
                    let head = cycle[0];
                    cx.err(
                        &join(&index(&base, head), "fallback"),
                        routes[head].1.and_then(|(_, n)| n.pos),
                        format!(
                            "route fallback chain loops: {}; break the loop by removing or \
                             changing one of these fallbacks",
                            shown.join(" → ")
                        ),
                    );
                    break;
                }
                _ => break,
            }
        }
        for w in walk {
            state[w] = DONE;
        }
    }
}

fn defaults(cx: &mut Cx, node: &Node, path: &str) -> Option<Defaults> {
    let t = Table::read(cx, node, path, "{ max_completion_tokens = 1024 }")?;
    t.check_keys(
        cx,
        &[
            "max_completion_tokens",
            "key_capacity",
            "enforce_context_window",
        ],
    );
    let d = Defaults::default();
    let max_completion_tokens = t.opt(
        cx,
        "max_completion_tokens",
        d.max_completion_tokens,
        |cx, n, p| whole(cx, n, p, 1, u64::from(u32::MAX)),
    );
    let key_capacity = t.opt(cx, "key_capacity", d.key_capacity, key_capacity);
    let enforce_context_window = t.opt(
        cx,
        "enforce_context_window",
        d.enforce_context_window,
        boolean,
    );
    Some(Defaults {
        max_completion_tokens: max_completion_tokens?,
        key_capacity: key_capacity?,
        enforce_context_window: enforce_context_window?,
    })
}

fn key_capacity(cx: &mut Cx, node: &Node, path: &str) -> Option<usize> {
    whole(cx, node, path, 1, MAX_KEY_CAPACITY).and_then(|v| usize::try_from(v).ok())
}

// ---------------------------------------------------------------------------------------------
// Upstreams

fn upstream(cx: &mut Cx, node: &Node, path: &str) -> Option<Upstream> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ name = \"openai\", base_url = \"https://api.openai.com/v1\" }",
    )?;
    t.check_keys(
        cx,
        &[
            "name",
            "base_url",
            "auth",
            "timeouts",
            "ca_file",
            "proxy",
            "key_quarantine",
            "stream_usage",
            "resume_streams",
            "warm_up",
            "http2_keep_alive",
        ],
    );
    let up_name = t.req(cx, "name", "name = \"openai\"", name);
    let base_url = t.req(
        cx,
        "base_url",
        "base_url = \"https://api.openai.com/v1\"",
        http_url,
    );
    let auth = t.opt(cx, "auth", Auth::None, |cx, n, p| {
        let was = cx.redact;
        cx.redact = true;
        let a = auth(cx, n, p);
        cx.redact = was;
        a
    });
    let timeouts = t.opt(cx, "timeouts", Timeouts::default(), timeouts);
    let ca_file = t.maybe(cx, "ca_file", |cx, n, p| name(cx, n, p).map(PathBuf::from));
    let proxy = t.maybe(cx, "proxy", http_url);
    let key_quarantine = t.opt(cx, "key_quarantine", DEFAULT_KEY_QUARANTINE, duration);
    let stream_usage = t.opt(cx, "stream_usage", true, boolean);
    let resume_streams = t.opt(cx, "resume_streams", false, boolean);
    let warm_up = t.opt(cx, "warm_up", 0, |cx, n, p| {
        whole(cx, n, p, 0, 64).map(|v| v as u32)
    });
    let http2_keep_alive = t.maybe(cx, "http2_keep_alive", duration);
    Some(Upstream {
        name: up_name?,
        base_url: base_url?,
        auth: auth?,
        timeouts: timeouts?,
        ca_file: ca_file?,
        proxy: proxy?,
        key_quarantine: key_quarantine?,
        stream_usage: stream_usage?,
        resume_streams: resume_streams?,
        warm_up: warm_up?,
        http2_keep_alive: http2_keep_alive?,
    })
}

const AUTH_KINDS: [(&str, &[&str]); 4] = [
    ("none", &["kind"]),
    ("bearer", &["kind", "key", "keys"]),
    ("jwt", &["kind", "id", "secret", "ttl", "refresh_before"]),
    (
        "oauth2",
        &[
            "kind",
            "token_url",
            "client_id",
            "client_secret",
            "placement",
        ],
    ),
];

fn auth(cx: &mut Cx, node: &Node, path: &str) -> Option<Auth> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ kind = \"bearer\", key = \"env:OPENAI_API_KEY\" }",
    )?;
    let kinds: Vec<(&str, &str)> = AUTH_KINDS.iter().map(|(k, _)| (*k, *k)).collect();
    let kind = t.opt(cx, "kind", "none", |cx, n, p| choice(cx, n, p, &kinds));
    let all: Vec<&str> = {
        let mut v: Vec<&str> = AUTH_KINDS
            .iter()
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let Some(kind) = kind else {
        t.check_keys(cx, &all);
        return None;
    };
    let allowed = AUTH_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[][..], |(_, keys)| keys);
    // A field of another kind gets a message naming that kind; anything else is unknown.
    for (key, _) in t.entries {
        let k = key.name.as_str();
        if !allowed.contains(&k) && all.contains(&k) {
            let owner = AUTH_KINDS
                .iter()
                .find(|(_, keys)| keys.contains(&k))
                .map_or("", |(n, _)| n);
            cx.err(
                &t.path(k),
                key.pos,
                format!(
                    "`{k}` does not apply to kind = \"{kind}\"; it belongs to kind = \"{owner}\"{}",
                    if t.get("kind").is_none() {
                        " (add kind = \"...\")"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    t.check_keys(cx, &all);
    match kind {
        "none" => Some(Auth::None),
        "bearer" => bearer(cx, &t),
        "jwt" => {
            let id = t.req(cx, "id", "id = \"env:ZHIPU_API_KEY_ID\"", secret);
            let secret_ref = t.req(cx, "secret", "secret = \"env:ZHIPU_API_SECRET\"", secret);
            let ttl = t.opt(cx, "ttl", Duration::from_secs(30 * 60), duration);
            let refresh = t.opt(cx, "refresh_before", Duration::from_secs(60), duration);
            if let (Some(ttl), Some(refresh)) = (ttl, refresh) {
                if refresh >= ttl {
                    let pos = t.get("refresh_before").or(t.get("ttl")).and_then(|n| n.pos);
                    cx.err(
                        &t.path("refresh_before"),
                        pos,
                        format!(
                            "refresh_before ({}) must be shorter than ttl ({}); a token would be \
                             refreshed before it is minted. Lower refresh_before or raise ttl",
                            format_duration(refresh),
                            format_duration(ttl)
                        ),
                    );
                    return None;
                }
            }
            Some(Auth::Jwt {
                id: id?,
                secret: secret_ref?,
                ttl: ttl?,
                refresh_before: refresh?,
            })
        }
        _ => {
            let token_url = t.req(
                cx,
                "token_url",
                "token_url = \"https://aip.baidubce.com/oauth/2.0/token\"",
                http_url,
            );
            let client_id = t.req(cx, "client_id", "client_id = \"env:CLIENT_ID\"", secret);
            let client_secret = t.req(
                cx,
                "client_secret",
                "client_secret = \"env:CLIENT_SECRET\"",
                secret,
            );
            let placement = t.opt(cx, "placement", TokenPlacement::Header, |cx, n, p| {
                choice(
                    cx,
                    n,
                    p,
                    &[
                        ("header", TokenPlacement::Header),
                        ("query", TokenPlacement::Query),
                    ],
                )
            });
            Some(Auth::OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                placement: placement?,
            })
        }
    }
}

fn bearer(cx: &mut Cx, t: &Table<'_>) -> Option<Auth> {
    match (t.get("key"), t.get("keys")) {
        (Some(_), Some(n)) => {
            cx.err(
                &t.path("keys"),
                n.pos,
                "give either key or keys, not both; put every key in keys = [...]",
            );
            None
        }
        (Some(n), None) => secret(cx, n, &t.path("key")).map(|k| Auth::Bearer { keys: vec![k] }),
        (None, Some(n)) => {
            let path = t.path("keys");
            let items = array(cx, n, &path, "[\"env:OPENAI_API_KEY\"]")?;
            if items.is_empty() {
                cx.err(
                    &path,
                    n.pos,
                    "must list at least one key such as \"env:OPENAI_API_KEY\"",
                );
                return None;
            }
            let mut keys: Vec<SecretRef> = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let p = index(&path, i);
                match secret(cx, item, &p) {
                    Some(k) if keys.contains(&k) => {
                        cx.err(&p, item.pos, format!("{k} is listed twice; remove one"));
                        ok = false;
                    }
                    Some(k) => keys.push(k),
                    None => ok = false,
                }
            }
            ok.then_some(Auth::Bearer { keys })
        }
        (None, None) => {
            cx.err(
                &t.path("keys"),
                t.pos,
                "is required for kind = \"bearer\"; add keys = [\"env:OPENAI_API_KEY\"] or \
                 key = \"env:OPENAI_API_KEY\"",
            );
            None
        }
    }
}

fn timeouts(cx: &mut Cx, node: &Node, path: &str) -> Option<Timeouts> {
    let t = Table::read(cx, node, path, "{ connect = \"3s\", total = \"300s\" }")?;
    t.check_keys(cx, &["connect", "first_byte", "idle", "total"]);
    let d = Timeouts::default();
    let connect = t.opt(cx, "connect", d.connect, duration);
    let first_byte = t.opt(cx, "first_byte", d.first_byte, duration);
    let idle = t.opt(cx, "idle", d.idle, duration);
    let total = t.opt(cx, "total", d.total, duration);
    Some(Timeouts {
        connect: connect?,
        first_byte: first_byte?,
        idle: idle?,
        total: total?,
    })
}

// ---------------------------------------------------------------------------------------------
// Budgets

const SCOPES: [(&str, ScopeDim); 5] = [
    ("tenant", ScopeDim::Tenant),
    ("model", ScopeDim::Model),
    ("upstream", ScopeDim::Upstream),
    ("key", ScopeDim::Key),
    ("route", ScopeDim::Route),
];

fn budget(cx: &mut Cx, node: &Node, path: &str, default_capacity: usize) -> Option<Budget> {
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
    if !limits_ok || !lease_ok {
        return None;
    }
    let limits = limits
        .into_iter()
        .map(|(kind, amount, own)| {
            let burst = match (own, kind.unit()) {
                (Some(b), _) => b,
                (None, Unit::Requests) => burst.unwrap_or(amount.max(1.0)),
                (None, _) => amount,
            };
            Limit {
                kind,
                amount,
                burst,
            }
        })
        .collect();
    Some(Budget {
        name: budget_name?,
        scope: scope?,
        matcher: matcher?,
        limits,
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

/// A limit: a number, or `{ limit = N, burst = B }`. Returns the kind, amount and own burst.
fn limit(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    kind: LimitKind,
) -> Option<(LimitKind, f64, Option<f64>)> {
    match &node.kind {
        Kind::Int(_) | Kind::Float(_) => positive(cx, node, path).map(|a| (kind, a, None)),
        Kind::Table(_) => {
            let t = Table::read(cx, node, path, "{ limit = 600, burst = 50 }")?;
            t.check_keys(cx, &["limit", "burst"]);
            let amount = t.req(cx, "limit", "limit = 600", positive);
            let burst = t.maybe(cx, "burst", |cx, n, p| {
                let b = positive(cx, n, p)?;
                if kind.unit() == Unit::Requests && b < 1.0 {
                    cx.err(
                        p,
                        n.pos,
                        format!(
                            "must be at least 1 for {}, got {}; a burst below one request could \
                             never admit a call",
                            kind.as_str(),
                            cx.show(n)
                        ),
                    );
                    return None;
                }
                Some(b)
            });
            Some((kind, amount?, burst?))
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

// ---------------------------------------------------------------------------------------------
// Routes

fn route(cx: &mut Cx, node: &Node, path: &str, upstreams: &[String]) -> Option<Route> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ model = \"gpt-4o\", targets = [{ upstream = \"openai\" }] }",
    )?;
    t.check_keys(cx, &["name", "model", "strategy", "targets", "fallback"]);
    let model = t.req(cx, "model", "model = \"gpt-4o\"", name);
    let route_name = t.maybe(cx, "name", name);
    let strategy = t.opt(cx, "strategy", Strategy::Ordered, |cx, n, p| {
        choice(
            cx,
            n,
            p,
            &[
                ("ordered", Strategy::Ordered),
                ("weighted", Strategy::Weighted),
                ("lowest_latency", Strategy::LowestLatency),
            ],
        )
    });
    let targets = t.req(
        cx,
        "targets",
        "targets = [{ upstream = \"openai\" }]",
        |cx, n, p| {
            let items = array(cx, n, p, "[{ upstream = \"openai\", model = \"gpt-4o\" }]")?;
            if items.is_empty() {
                cx.err(
                    p,
                    n.pos,
                    "must list at least one target such as { upstream = \"openai\" }",
                );
                return None;
            }
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match target(cx, item, &index(p, i), model.as_deref(), upstreams) {
                    Some(v) => out.push(v),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        },
    );
    // Whether the named route exists, and whether the chain loops, is checked once every route
    // is known (see `fallbacks`).
    let fallback = t.maybe(cx, "fallback", |cx, n, p| {
        let s = string(cx, n, p)?;
        if s.trim().is_empty() {
            cx.err(
                p,
                n.pos,
                "must not be empty; write the name of another [[route]], or remove the line",
            );
            return None;
        }
        Some(s.to_owned())
    });
    let model = model?;
    Some(Route {
        name: route_name?.unwrap_or_else(|| model.clone()),
        model: Glob::new(&model),
        targets: targets?,
        strategy: strategy?,
        fallback: fallback?,
    })
}

fn target(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    route_model: Option<&str>,
    upstreams: &[String],
) -> Option<Target> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ upstream = \"openai\", model = \"gpt-4o\" }",
    )?;
    t.check_keys(cx, &["upstream", "model", "weight"]);
    let upstream = t.req(cx, "upstream", "upstream = \"openai\"", |cx, n, p| {
        let u = name(cx, n, p)?;
        if upstreams.contains(&u) {
            return Some(u);
        }
        let candidates: Vec<&str> = upstreams.iter().map(String::as_str).collect();
        let hint = match super::suggest::nearest(&u, &candidates) {
            Some(near) => format!("did you mean \"{near}\"?"),
            None if candidates.is_empty() => {
                format!("add an [[upstream]] with name = {}", quote(&u))
            }
            None => format!(
                "the upstreams are {}; add an [[upstream]] with name = {} or fix the name",
                candidates.join(", "),
                quote(&u)
            ),
        };
        cx.err(
            p,
            n.pos,
            format!("no upstream is named {}; {hint}", quote(&u)),
        );
        None
    });
    let model = match t.get("model") {
        Some(n) => name(cx, n, &t.path("model")),
        None => match route_model {
            Some(m) if is_glob(m) => {
                cx.err(
                    &t.path("model"),
                    t.pos,
                    format!(
                        "is required because the route's model {} is a pattern; add model = \
                         \"...\" with the name this upstream knows",
                        quote(m)
                    ),
                );
                None
            }
            Some(m) => Some(m.to_owned()),
            None => None,
        },
    };
    let weight = t.opt(cx, "weight", 1, |cx, n, p| {
        whole(cx, n, p, 1, 1_000_000).and_then(|v| u32::try_from(v).ok())
    });
    Some(Target {
        upstream: upstream?,
        model: model?,
        weight: weight?,
    })
}

// ---------------------------------------------------------------------------------------------
// Retry, breaker, cache

fn retry(cx: &mut Cx, node: &Node, path: &str) -> Option<Retry> {
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
            if let (Some(base), Some(max)) = (base, max) {
                if base > max {
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
            }
            Some((base?, max?, jitter?))
        },
    );
    let max_retry_after = t.opt(cx, "max_retry_after", d.max_retry_after, duration);
    let retry_on = t.opt(cx, "retry_on", d.retry_on.clone(), retry_on);
    let budget = t.opt(
        cx,
        "budget",
        (d.budget_ratio, d.budget_max_tokens),
        |cx, n, p| {
            let b = Table::read(cx, n, p, "{ ratio = 0.1, max_tokens = 10 }")?;
            b.check_keys(cx, &["ratio", "max_tokens"]);
            let ratio = b.opt(cx, "ratio", d.budget_ratio, fraction);
            let max_tokens = b.opt(cx, "max_tokens", d.budget_max_tokens, positive);
            Some((ratio?, max_tokens?))
        },
    );
    let honor_server_limits = t.opt(cx, "honor_server_limits", d.honor_server_limits, boolean);
    let (base, max_backoff, jitter) = backoff?;
    let (budget_ratio, budget_max_tokens) = budget?;
    Some(Retry {
        max_attempts: max_attempts?,
        base,
        max_backoff,
        jitter,
        max_retry_after: max_retry_after?,
        retry_on: retry_on?,
        budget_ratio,
        budget_max_tokens,
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
            Kind::Int(_) | Kind::Float(_) => whole(cx, item, &p, 100, 599)
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

fn breaker(cx: &mut Cx, node: &Node, path: &str) -> Option<Breaker> {
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
    if let (Some(BreakerWindow::Calls(w)), Some(m)) = (window, min_calls) {
        if m > w {
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
        Kind::Int(_) | Kind::Float(_) => breaker_count(cx, node, path).map(BreakerWindow::Calls),
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

fn cache(cx: &mut Cx, node: &Node, path: &str) -> Option<Cache> {
    let t = Table::read(cx, node, path, "{ enabled = true, max_bytes = \"256MB\" }")?;
    t.check_keys(
        cx,
        &[
            "enabled",
            "max_bytes",
            "ttl",
            "only_when",
            "stale_if_error",
            "single_flight",
            "max_n",
            "allow_tools",
            "require_seed",
            "max_entry_bytes",
            "l2",
        ],
    );
    let d = Cache::default();
    let enabled = t.opt(cx, "enabled", d.enabled, boolean);
    let max_bytes = t.opt(cx, "max_bytes", d.max_bytes, |cx, n, p| {
        size(
            cx,
            n,
            p,
            "must be more than zero; to turn the cache off write enabled = false",
        )
    });
    let ttl = t.opt(cx, "ttl", d.ttl, duration);
    let temperature = t.opt(cx, "only_when", d.temperature_at_most, |cx, n, p| {
        let w = Table::read(cx, n, p, "{ temperature_at_most = 0.0 }")?;
        w.check_keys(cx, &["temperature_at_most"]);
        w.opt(
            cx,
            "temperature_at_most",
            d.temperature_at_most,
            non_negative,
        )
    });
    let stale_if_error = t.maybe(cx, "stale_if_error", duration);
    let single_flight = t.opt(cx, "single_flight", d.single_flight, boolean);
    let max_n = t.opt(cx, "max_n", d.max_n, |cx, n, p| {
        whole(cx, n, p, 1, u64::from(u32::MAX)).and_then(|v| u32::try_from(v).ok())
    });
    let allow_tools = t.opt(cx, "allow_tools", d.allow_tools, boolean);
    let require_seed = t.opt(cx, "require_seed", d.require_seed, boolean);
    let max_entry_bytes = t.maybe(cx, "max_entry_bytes", |cx, n, p| {
        size(
            cx,
            n,
            p,
            "must be more than zero; remove the line for the default (max_bytes / 8, at most 8MiB)",
        )
    });
    let l2 = t.maybe(cx, "l2", cache_l2);
    let max_bytes = max_bytes?;
    let max_entry_bytes = match max_entry_bytes? {
        Some(entry) if entry > max_bytes => {
            cx.err(
                &t.path("max_entry_bytes"),
                t.get("max_entry_bytes").and_then(|n| n.pos),
                format!(
                    "max_entry_bytes ({}) is more than max_bytes ({}); an entry larger than the \
                     whole cache could never be stored. Lower max_entry_bytes or raise max_bytes",
                    format_bytes(entry),
                    format_bytes(max_bytes)
                ),
            );
            return None;
        }
        Some(entry) => entry,
        None => Cache::default_max_entry_bytes(max_bytes),
    };
    let l2 = l2?;
    if let Some(l2) = l2 {
        if l2.max_bytes < max_entry_bytes {
            let l2_path = t.path("l2");
            cx.err(
                &join(&l2_path, "max_bytes"),
                t.get("l2")
                    .and_then(|n| field(n, "max_bytes"))
                    .and_then(|n| n.pos),
                format!(
                    "the second level's max_bytes ({}) is less than max_entry_bytes ({}{}), so an \
                     entry the first level accepts could never be stored in it; raise l2 \
                     max_bytes or lower max_entry_bytes",
                    format_bytes(l2.max_bytes),
                    format_bytes(max_entry_bytes),
                    if t.get("max_entry_bytes").is_none() {
                        ", the default: max_bytes / 8, at most 8MiB"
                    } else {
                        ""
                    }
                ),
            );
            return None;
        }
    }
    Some(Cache {
        enabled: enabled?,
        max_bytes,
        ttl: ttl?,
        temperature_at_most: temperature?,
        stale_if_error: stale_if_error?,
        single_flight: single_flight?,
        max_n: max_n?,
        allow_tools: allow_tools?,
        require_seed: require_seed?,
        max_entry_bytes,
        l2,
    })
}

/// `l2 = { store = "redis", max_bytes = "1GB" }`: the cache's second level. Whether the policy
/// has a `[redis]` section is checked by [`needs_redis`].
fn cache_l2(cx: &mut Cx, node: &Node, path: &str) -> Option<CacheL2> {
    let t = Table::read(cx, node, path, "{ store = \"redis\", max_bytes = \"1GB\" }")?;
    t.check_keys(cx, &["store", "max_bytes"]);
    let store = t.req(
        cx,
        "store",
        "store = \"redis\" (the only store of the second level)",
        |cx, n, p| {
            if matches!(&n.kind, Kind::Str(s) if s == "local") {
                cx.err(
                    p,
                    n.pos,
                    "must be \"redis\"; the cache itself is the local level, and l2 is a second \
                     level shared through the [redis] server",
                );
                return None;
            }
            choice(cx, n, p, &[("redis", ())])
        },
    );
    let max_bytes = t.req(
        cx,
        "max_bytes",
        "max_bytes = \"1GB\" (the most response bodies kept in Redis)",
        |cx, n, p| {
            size(
                cx,
                n,
                p,
                "must be more than zero; remove l2 to keep the cache in this process only",
            )
        },
    );
    store?;
    Some(CacheL2 {
        max_bytes: max_bytes?,
    })
}

/// A byte size: a whole number of bytes or a string such as `"256MB"`, more than zero (`zero` is
/// the message for zero).
fn size(cx: &mut Cx, node: &Node, path: &str, zero: &str) -> Option<u64> {
    match &node.kind {
        Kind::Str(s) => match parse_bytes(s) {
            Ok(0) => {
                cx.err(path, node.pos, zero);
                None
            }
            Ok(v) => Some(v),
            Err(why) => {
                cx.err(path, node.pos, format!("{} {why}", quote(s)));
                None
            }
        },
        _ => whole(cx, node, path, 1, u64::MAX),
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A minimal `[redis]` section, shown where one is missing.
const REDIS_EXAMPLE: &str = "[redis] with url = \"env:REDIS_URL\" and on_failure = \"fail_closed\"";

/// What `on_failure` is for, in one sentence; shown when it is missing.
const ON_FAILURE_CHOICES: &str = "write on_failure = \"fail_closed\" to refuse the calls of Redis \
     budgets while Redis cannot be reached, or on_failure = \"fail_open\" to let each process \
     decide alone meanwhile, with every limit divided by expected_instances";

/// Longest `key_prefix`, in characters.
const MAX_KEY_PREFIX: usize = 64;
/// Most processes `expected_instances` may name.
const MAX_INSTANCES: u64 = 100_000;
/// Shortest `concurrency_lease`: live calls renew their slot at a third of it.
const MIN_CONCURRENCY_LEASE: Duration = Duration::from_secs(1);

fn redis(cx: &mut Cx, node: &Node, path: &str) -> Option<Redis> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ url = \"env:REDIS_URL\", on_failure = \"fail_closed\" }",
    )?;
    t.check_keys(
        cx,
        &[
            "url",
            "key_prefix",
            "connect_timeout",
            "op_timeout",
            "tls_ca_file",
            "on_failure",
            "expected_instances",
            "concurrency_lease",
        ],
    );
    let d = Redis::default();
    let url = t.req(
        cx,
        "url",
        "url = \"env:REDIS_URL\" (an environment variable holding redis://host:6379), or the URL \
         itself when the server needs no password",
        redis_url,
    );
    let key_prefix = t.opt(cx, "key_prefix", d.key_prefix.clone(), key_prefix);
    let connect_timeout = t.opt(cx, "connect_timeout", d.connect_timeout, duration);
    let op_timeout = t.opt(cx, "op_timeout", d.op_timeout, duration);
    let concurrency_lease = t.opt(cx, "concurrency_lease", d.concurrency_lease, |cx, n, p| {
        let lease = duration(cx, n, p)?;
        if lease < MIN_CONCURRENCY_LEASE {
            cx.err(
                p,
                n.pos,
                format!(
                    "must be at least 1s, got {}; live calls renew their slot at a third of it, so \
                     a shorter lease would be renewed too often to be reliable (default 30s)",
                    format_duration(lease)
                ),
            );
            return None;
        }
        Some(lease)
    });
    let tls_ca_file = t.maybe(cx, "tls_ca_file", |cx, n, p| {
        name(cx, n, p).map(PathBuf::from)
    });
    let on_failure = match t.get("on_failure") {
        Some(n) => choice(
            cx,
            n,
            &t.path("on_failure"),
            &[
                ("fail_open", OnFailure::FailOpen),
                ("fail_closed", OnFailure::FailClosed),
            ],
        ),
        None => {
            cx.err(
                &t.path("on_failure"),
                t.pos,
                format!("is required, there is no default: {ON_FAILURE_CHOICES}"),
            );
            None
        }
    };
    let expected_instances = t.maybe(cx, "expected_instances", |cx, n, p| {
        whole(cx, n, p, 1, MAX_INSTANCES).and_then(|v| u32::try_from(v).ok())
    });

    // A CA file is only used by a TLS connection; with a reference, the scheme is not known yet.
    let mut ok = true;
    if let (Some(RedisUrl::Plain(u)), Some(Some(_))) = (&url, &tls_ca_file) {
        if !u.starts_with("rediss://") {
            cx.err(
                &t.path("tls_ca_file"),
                t.get("tls_ca_file").and_then(|n| n.pos),
                "only applies to a TLS connection, and the url starts with redis://, which is \
                 plain TCP; write the url with rediss:// or remove tls_ca_file",
            );
            ok = false;
        }
    }
    if let (Some(OnFailure::FailOpen), Some(None)) = (on_failure, expected_instances) {
        cx.err(
            &t.path("expected_instances"),
            t.get("on_failure").and_then(|n| n.pos),
            "is required with on_failure = \"fail_open\": while Redis cannot be reached each \
             process decides alone with every limit divided by expected_instances, so without it \
             every process would allow the full limit; add expected_instances = N, the number of \
             processes that share these budgets",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Redis {
        url: url?,
        key_prefix: key_prefix?,
        connect_timeout: connect_timeout?,
        op_timeout: op_timeout?,
        tls_ca_file: tls_ca_file?,
        on_failure: on_failure?,
        expected_instances: expected_instances?.unwrap_or(d.expected_instances),
        concurrency_lease: concurrency_lease?,
    })
}

/// `url`: `env:NAME` / `file:PATH` (read when the engine connects), or a `redis://` or `rediss://`
/// URL without a password. Messages never repeat a URL that has user info.
fn redis_url(cx: &mut Cx, node: &Node, path: &str) -> Option<RedisUrl> {
    let Kind::Str(text) = &node.kind else {
        cx.err(
            path,
            node.pos,
            format!(
                "must be a string such as \"env:REDIS_URL\" or \"redis://127.0.0.1:6379\", got {}",
                cx.show(node)
            ),
        );
        return None;
    };
    if text.starts_with("env:") || text.starts_with("file:") {
        return secret(cx, node, path).map(RedisUrl::Secret);
    }
    match check_redis_url(text) {
        Ok(()) => Some(RedisUrl::Plain(text.clone())),
        Err(why) => {
            cx.err(path, node.pos, why);
            None
        }
    }
}

/// Checks a `redis://` or `rediss://` URL: no password, a host, a port in 1..=65535 if given, and
/// a database number as the path if given. The error repeats the URL only when it has no user
/// info.
fn check_redis_url(url: &str) -> Result<(), String> {
    const SCHEMES: &str = "must start with redis:// (or rediss:// for TLS), or name an environment \
         variable or file that holds the URL, such as \"env:REDIS_URL\"";
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(if url.contains('@') {
            format!("{SCHEMES}; got a string with an @ in it, not repeated here")
        } else {
            format!("{SCHEMES}; got {}", quote(url))
        });
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.split_once('?').map_or("", |(_, q)| q);
    let password_in_query = query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("password"));
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()) => {
            return Err(password_error());
        }
        Some((_, host_port)) => host_port,
        None => authority,
    };
    if password_in_query {
        return Err(password_error());
    }
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("has an unclosed [ in the host: {}", quote(url))),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!(
            "has no host, got {}; write redis://host:6379",
            quote(url)
        ));
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65_535).contains(&n) => {}
            _ => {
                return Err(format!(
                    "has an invalid port {}; use a port from 1 to 65535 (Redis listens on 6379 by \
                     default)",
                    quote(p)
                ));
            }
        }
    }
    let db = tail.split(['?', '#']).next().unwrap_or("");
    let db = db.strip_prefix('/').unwrap_or(db);
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!(
            "has the path {}; the path of a Redis URL is a database number, such as \
             redis://host:6379/0",
            quote(db)
        ));
    }
    Ok(())
}

fn password_error() -> String {
    "must not contain a password: secrets never sit in the policy file. Put the whole URL in an \
     environment variable and write url = \"env:REDIS_URL\" (or url = \"file:PATH\" for a file \
     that holds it)"
        .to_owned()
}

/// `key_prefix`: non-empty, no whitespace, at most 64 characters.
fn key_prefix(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    if s.is_empty() {
        cx.err(
            path,
            node.pos,
            "must not be empty; write a prefix such as \"tollgate\", or remove the line for that \
             default",
        );
        return None;
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.err(
            path,
            node.pos,
            format!(
                "must not contain spaces or control characters, got {}; write a single word such \
                 as \"tollgate-prod\"",
                quote(s)
            ),
        );
        return None;
    }
    let len = s.chars().count();
    if len > MAX_KEY_PREFIX {
        cx.err(
            path,
            node.pos,
            format!(
                "is {len} characters long; a key prefix is at most {MAX_KEY_PREFIX}, since it \
                 starts every key tollgate writes"
            ),
        );
        return None;
    }
    Some(s.to_owned())
}

/// Reports what uses Redis when the policy has no `[redis]` section: budgets with
/// `store = "redis"` and the cache's `l2`. Runs once every section is read; a `[redis]` section
/// that is present but invalid is reported by [`redis`], not here.
fn needs_redis(cx: &mut Cx, t: &Table<'_>) {
    if t.get("redis").is_some() {
        return;
    }
    if let Some(Node {
        kind: Kind::Array(items),
        ..
    }) = t.get("budget")
    {
        let base = t.path("budget");
        for (i, item) in items.iter().enumerate() {
            let Some(store) = field(item, "store") else {
                continue;
            };
            if !matches!(&store.kind, Kind::Str(s) if s == "redis") {
                continue;
            }
            let shown = match field(item, "name").map(|n| &n.kind) {
                Some(Kind::Str(n)) => format!("budget {}", quote(n)),
                _ => "this budget".to_owned(),
            };
            cx.err(
                &join(&index(&base, i), "store"),
                store.pos,
                format!(
                    "{shown} keeps its state in Redis, but the policy has no [redis] section to \
                     say which server; add one such as {REDIS_EXAMPLE}, or write store = \"local\""
                ),
            );
        }
    }
    if let Some(l2) = t.get("cache").and_then(|c| field(c, "l2")) {
        cx.err(
            &join(&t.path("cache"), "l2"),
            l2.pos,
            format!(
                "the cache's second level lives in Redis, but the policy has no [redis] section to \
                 say which server; add one such as {REDIS_EXAMPLE}, or remove l2"
            ),
        );
    }
}

/// A field of a table node, if the node is a table and has it.
fn field<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.kind {
        Kind::Table(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Serve

/// Fields of `[serve]`.
const SERVE_FIELDS: &[&str] = &[
    "listen",
    "admin_listen",
    "admin_token",
    "allow",
    "key",
    "max_body",
    "max_headers",
    "header_timeout",
    "body_timeout",
    "idle_timeout",
    "write_timeout",
    "max_connections",
    "shutdown_grace",
    "access_log",
];

/// Fields of a `[[serve.key]]` entry.
const SERVE_KEY_FIELDS: &[&str] = &["hash", "tenant", "name"];

/// Fields of a `[[serve.key]]` entry that would hold the key itself: refused without showing it.
const RAW_KEY_FIELDS: &[&str] = &["key", "secret", "api_key", "token"];

/// How to get the hash of a key, for messages.
const HASH_HOWTO: &str = "get it with `tollgate serve --hash-key <key>`, or with \
     `printf %s \"$KEY\" | sha256sum`, and write hash = \"sha256:<the 64 hex digits>\"";

/// A `[[serve.key]]` entry, shown where one is expected.
const SERVE_KEY_EXAMPLE: &str = "[[serve.key]] with hash = \"sha256:<64 hex digits>\" and \
     tenant = \"acme\"";

/// Largest `max_body`: it bounds the memory one request may take.
const MAX_BODY: u64 = 1 << 30;
/// Smallest `max_headers`: less would refuse ordinary requests.
const MIN_HEADERS: u64 = 1 << 10;
/// Largest `max_headers`.
const MAX_HEADERS: u64 = 1 << 20;
/// Largest `max_connections`: far above what one process's file descriptors allow.
const MAX_CONNECTIONS: u64 = 1 << 20;

fn serve(cx: &mut Cx, node: &Node, path: &str) -> Option<Serve> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ listen = \"127.0.0.1:8080\", allow = [\"10.0.0.0/8\"] }",
    )?;
    t.check_keys(cx, SERVE_FIELDS);
    let d = Serve::default();
    let listen = t.opt(cx, "listen", d.listen, socket_addr);
    let admin_listen = t.maybe(cx, "admin_listen", socket_addr);
    let admin_token = t.maybe(cx, "admin_token", admin_token);
    let allow = t.opt(cx, "allow", d.allow.clone(), allow);
    let keys = t.opt(cx, "key", Vec::new(), virtual_keys);
    let max_body_bytes = t.opt(cx, "max_body", d.max_body_bytes, |cx, n, p| {
        let v = size(
            cx,
            n,
            p,
            "must be more than zero; remove the line for the default (4MiB)",
        )?;
        if v > MAX_BODY {
            cx.err(
                p,
                n.pos,
                format!(
                    "must be at most {}, got {}; it bounds the memory one request may take \
                     (default 4MiB)",
                    format_bytes(MAX_BODY),
                    format_bytes(v)
                ),
            );
            return None;
        }
        Some(v)
    });
    let max_header_bytes = t.opt(cx, "max_headers", d.max_header_bytes, |cx, n, p| {
        let range = format!(
            "must be from {} to {}",
            format_bytes(MIN_HEADERS),
            format_bytes(MAX_HEADERS)
        );
        let v = size(
            cx,
            n,
            p,
            &format!("{range}, got 0; remove the line for the default (64KiB)"),
        )?;
        if !(MIN_HEADERS..=MAX_HEADERS).contains(&v) {
            cx.err(
                p,
                n.pos,
                format!(
                    "{range}, got {}; it is the size of a request's head, all headers together \
                     (default 64KiB)",
                    format_bytes(v)
                ),
            );
            return None;
        }
        Some(v)
    });
    let header_timeout = t.opt(cx, "header_timeout", d.header_timeout, duration);
    let body_timeout = t.opt(cx, "body_timeout", d.body_timeout, duration);
    let idle_timeout = t.opt(cx, "idle_timeout", d.idle_timeout, duration);
    let write_timeout = t.opt(cx, "write_timeout", d.write_timeout, duration);
    let max_connections = t.opt(cx, "max_connections", d.max_connections, |cx, n, p| {
        whole(cx, n, p, 1, MAX_CONNECTIONS).and_then(|v| usize::try_from(v).ok())
    });
    let shutdown_grace = t.opt(cx, "shutdown_grace", d.shutdown_grace, duration);
    let access_log = t.opt(cx, "access_log", d.access_log, boolean);

    let mut ok = true;
    if let (Some(listen), Some(Some(admin))) = (listen, admin_listen) {
        if let Some(why) = listeners_clash(listen, admin, t.get("listen").is_none()) {
            cx.err(
                &t.path("admin_listen"),
                t.get("admin_listen").and_then(|n| n.pos),
                why,
            );
            ok = false;
        }
    }
    if let (Some(Some(_)), Some(None)) = (admin_listen, &admin_token) {
        cx.err(
            &t.path("admin_token"),
            t.get("admin_listen").and_then(|n| n.pos),
            "is required with admin_listen: without a token the admin endpoints are off, so the \
             admin listener could not be used; add admin_token = \"env:TOLLGATE_ADMIN_TOKEN\" (or \
             \"file:PATH\"), or remove admin_listen",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Serve {
        listen: listen?,
        admin_listen: admin_listen?,
        admin_token: admin_token?,
        allow: allow?,
        keys: keys?,
        max_body_bytes: max_body_bytes?,
        max_header_bytes: max_header_bytes?,
        header_timeout: header_timeout?,
        body_timeout: body_timeout?,
        idle_timeout: idle_timeout?,
        write_timeout: write_timeout?,
        max_connections: max_connections?,
        shutdown_grace: shutdown_grace?,
        access_log: access_log?,
    })
}

/// Why `admin` cannot be bound next to `listen`, if it cannot: the same address, or the same port
/// as an unspecified address (`0.0.0.0`, `::`) of the same family. Port 0 (picked by the system)
/// never clashes.
fn listeners_clash(
    listen: SocketAddr,
    admin: SocketAddr,
    listen_is_default: bool,
) -> Option<String> {
    let port = admin.port();
    if port == 0 || port != listen.port() {
        return None;
    }
    let other = SocketAddr::new(
        admin.ip(),
        if port == u16::MAX { port - 1 } else { port + 1 },
    );
    let fix = format!(
        "remove admin_listen to serve the admin endpoints under /admin/ on listen, or give them a \
         port of their own such as {}",
        quote(&other.to_string())
    );
    let listen_shown = format!(
        "listen{}",
        if listen_is_default {
            format!(" (the default, {listen})")
        } else {
            String::new()
        }
    );
    if admin == listen {
        return Some(format!(
            "is the same address as {listen_shown}; the admin endpoints cannot have a listener of \
             their own there: {fix}"
        ));
    }
    let same_family = admin.is_ipv4() == listen.is_ipv4();
    let wide = [listen, admin]
        .into_iter()
        .find(|a| a.ip().is_unspecified());
    match wide {
        Some(wide) if same_family => Some(format!(
            "shares port {port} with {listen_shown}, and {} takes that port on every {} interface, \
             so the two could not both be bound: {fix}",
            wide.ip(),
            if wide.is_ipv4() { "IPv4" } else { "IPv6" }
        )),
        _ => None,
    }
}

/// A socket address to listen on: `"127.0.0.1:8080"`, `"[::1]:8080"`.
fn socket_addr(cx: &mut Cx, node: &Node, path: &str) -> Option<SocketAddr> {
    let text = match &node.kind {
        Kind::Str(s) => s,
        Kind::Int(port) if (0..=i128::from(u16::MAX)).contains(port) => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be an IP address and a port in a string, such as \"127.0.0.1:{port}\" \
                     (this machine only) or \"0.0.0.0:{port}\" (every interface), got {port}"
                ),
            );
            return None;
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a string such as \"127.0.0.1:8080\" or \"[::1]:8080\", got {}",
                    cx.show(node)
                ),
            );
            return None;
        }
    };
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(
                path,
                node.pos,
                format!(
                    "{} is not an IP address and port; {}",
                    quote(text),
                    socket_addr_hint(text)
                ),
            );
            None
        }
    }
}

/// What to write instead of a text that is not a socket address.
fn socket_addr_hint(text: &str) -> String {
    const EXAMPLES: &str = "write an address and a port such as \"127.0.0.1:8080\" (this machine \
         only), \"0.0.0.0:8080\" (every interface) or \"[::1]:8080\"";
    let t = text.trim();
    if t != text && t.parse::<SocketAddr>().is_ok() {
        return format!("remove the spaces: write {}", quote(t));
    }
    if let Ok(ip) = t.parse::<Ipv4Addr>() {
        return format!("it has no port; write {}", quote(&format!("{ip}:8080")));
    }
    if let Ok(ip) = t.parse::<Ipv6Addr>() {
        // "::1:8080" is an IPv6 address too: it may be an address and a port without brackets.
        if let Some((host, port)) = t.rsplit_once(':') {
            if host.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() {
                return format!(
                    "an IPv6 address goes in brackets before the port: write {}",
                    quote(&format!("[{host}]:{port}"))
                );
            }
        }
        return format!(
            "it has no port; an IPv6 address goes in brackets before the port: write {}",
            quote(&format!("[{ip}]:8080"))
        );
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return EXAMPLES.to_owned();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(port) = port.parse::<u16>() else {
        if host.parse::<IpAddr>().is_ok() {
            return "the port must be a number from 0 to 65535".to_owned();
        }
        return EXAMPLES.to_owned();
    };
    if host.is_empty() {
        return format!(
            "write \"127.0.0.1:{port}\" for this machine only, or \"0.0.0.0:{port}\" for every \
             interface"
        );
    }
    if host.parse::<IpAddr>().is_err() {
        return format!(
            "host names are not looked up here; write the IP address to listen on, such as \
             \"127.0.0.1:{port}\" (this machine only) or \"0.0.0.0:{port}\" (every interface)"
        );
    }
    EXAMPLES.to_owned()
}

/// `admin_token`: a reference to the token, never the token.
fn admin_token(cx: &mut Cx, node: &Node, path: &str) -> Option<SecretRef> {
    if let Kind::Str(text) = &node.kind {
        if !text.starts_with("env:") && !text.starts_with("file:") {
            cx.err(
                path,
                node.pos,
                "must name where the token is, not hold it: write admin_token = \
                 \"env:TOLLGATE_ADMIN_TOKEN\" (an environment variable) or \"file:PATH\" (a file \
                 that holds it); literal secrets are not accepted",
            );
            return None;
        }
    }
    secret(cx, node, path)
}

/// `allow`: a non-empty list of networks, each listed once.
fn allow(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<Cidr>> {
    let items = match &node.kind {
        Kind::Array(items) => items,
        Kind::Str(s) => {
            cx.err(
                path,
                node.pos,
                format!("must be a list of networks; write allow = [{}]", quote(s)),
            );
            return None;
        }
        _ => array(cx, node, path, "[\"10.0.0.0/8\", \"::1/128\"]")?,
    };
    if items.is_empty() {
        cx.err(
            path,
            node.pos,
            "must list at least one network: with an empty list nobody could connect. Write the \
             networks clients connect from, such as [\"10.0.0.0/8\"], or remove the line for the \
             default (this machine only: 127.0.0.0/8 and ::1/128)",
        );
        return None;
    }
    // Each network with the index of its item, for the message about one listed twice.
    let mut out: Vec<(Cidr, usize)> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let Some(text) = string(cx, item, &p) else {
            ok = false;
            continue;
        };
        match parse_cidr(text) {
            Ok(c) => match out.iter().find(|(o, _)| *o == c) {
                Some((_, first)) => {
                    cx.err(
                        &p,
                        item.pos,
                        format!(
                            "{c} is listed twice (also at {}); remove one",
                            index(path, *first)
                        ),
                    );
                    ok = false;
                }
                None => out.push((c, i)),
            },
            Err(why) => {
                cx.err(&p, item.pos, why);
                ok = false;
            }
        }
    }
    ok.then(|| out.into_iter().map(|(c, _)| c).collect())
}

/// Parses `10.0.0.0/8`, `fd00::/8`, or one address (`/32` or `/128`). Host bits must be zero. An
/// IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it maps
/// (`10.0.0.0/8`), since [`Cidr::contains`] compares mapped clients as IPv4.
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    const SHAPE: &str = "write a network such as \"10.0.0.0/8\" or \"fd00::/8\", or one address \
         such as \"192.168.1.20\" or \"::1\"";
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = match addr_text.parse() {
        Ok(a) => a,
        Err(_) => {
            let bare = addr_text.trim_start_matches('[').trim_end_matches(']');
            let hint = if addr_text.eq_ignore_ascii_case("localhost") {
                "host names are not looked up here; for this machine write \"127.0.0.0/8\" and \
                 \"::1/128\" (the default)"
                    .to_owned()
            } else if bare != addr_text && bare.parse::<Ipv6Addr>().is_ok() {
                format!(
                    "write the address without brackets: {}",
                    quote(&text.replacen(addr_text, bare, 1))
                )
            } else if addr_text.trim() != addr_text {
                "remove the spaces".to_owned()
            } else {
                SHAPE.to_owned()
            };
            return Err(format!("{} is not an IP network; {hint}", quote(text)));
        }
    };
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let prefix = match prefix_text {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && !p.starts_with('+') => n,
            _ => {
                // A netmask written where the prefix length goes: 10.0.0.0/255.0.0.0.
                if let (Ok(mask), true) = (p.parse::<Ipv4Addr>(), addr.is_ipv4()) {
                    let m = u32::from(mask);
                    if m.leading_ones() + m.trailing_zeros() == 32 {
                        return Err(format!(
                            "{} has a netmask after the /, where the prefix length goes; write {}",
                            quote(text),
                            quote(&format!("{addr_text}/{}", m.leading_ones()))
                        ));
                    }
                }
                return Err(format!(
                    "{} has the prefix length {}; an {family} prefix length is a whole number \
                     from 0 to {max}",
                    quote(text),
                    quote(p)
                ));
            }
        },
    };
    let network = network_of(addr, prefix);
    if network != addr {
        return Err(format!(
            "{} has host bits set: {addr} is not the first address of a /{prefix} network; write \
             {} for the network, or {} for this one address",
            quote(text),
            quote(&format!("{network}/{prefix}")),
            quote(&format!("{addr}/{max}"))
        ));
    }
    if let IpAddr::V6(v6) = network {
        if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
            return Ok(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
    }
    Ok(Cidr {
        addr: network,
        prefix,
    })
}

/// `addr` with every bit after the first `prefix` cleared.
fn network_of(addr: IpAddr, prefix: u8) -> IpAddr {
    let keep = u32::from(prefix);
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// The message for a virtual key written where only its hash belongs. It never repeats the value.
fn raw_key_message(what: &str) -> String {
    format!(
        "{what} looks like a virtual key itself, which is not repeated here; the policy never \
         holds virtual keys, only their SHA-256 hash, so that a leaked policy file leaks no key. \
         Remove it and write the hash instead: {HASH_HOWTO}"
    )
}

/// The message for a string where a `[[serve.key]]` table belongs: a hash without its table, or
/// else (likely) the key itself, which is not repeated.
fn key_string_message(s: &str) -> String {
    if s.starts_with("sha256:") {
        format!(
            "must be a list of tables, each with a hash and a tenant, not a bare hash; write              {SERVE_KEY_EXAMPLE} (two brackets) in TOML, or \"key\": [{{ \"hash\": ...,              \"tenant\": ... }}] inside \"serve\" in JSON"
        )
    } else {
        raw_key_message("this string")
    }
}

/// `[[serve.key]]`: virtual keys by hash, no hash twice.
fn virtual_keys(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<VirtualKey>> {
    let items = match &node.kind {
        Kind::Array(items) => items,
        Kind::Str(s) => {
            cx.err(path, node.pos, key_string_message(s));
            return None;
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a list of tables, got {}; write {SERVE_KEY_EXAMPLE} (two brackets) \
                     in TOML, or \"key\": [{{ \"hash\": ..., \"tenant\": ... }}] inside \"serve\" \
                     in JSON",
                    node.type_name()
                ),
            );
            return None;
        }
    };
    let mut out: Vec<VirtualKey> = Vec::with_capacity(items.len());
    let mut first_of: HashMap<[u8; 32], usize> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let Some(key) = virtual_key(cx, item, &p) else {
            ok = false;
            continue;
        };
        match first_of.get(&key.sha256) {
            Some(&first) => {
                let shown = |at: usize, k: &VirtualKey| {
                    if k.name == k.tenant {
                        format!("{path}[{at}] (tenant {})", quote(&k.tenant))
                    } else {
                        format!(
                            "{path}[{at}] (name {}, tenant {})",
                            quote(&k.name),
                            quote(&k.tenant)
                        )
                    }
                };
                let before = out
                    .iter()
                    .find(|k| k.sha256 == key.sha256)
                    .map_or_else(|| format!("{path}[{first}]"), |k| shown(first, k));
                cx.err(
                    &join(&p, "hash"),
                    field(item, "hash").and_then(|n| n.pos),
                    format!(
                        "{} has the same hash as {before}; a key can belong to one entry only, \
                         since it decides the tenant. Remove one of the two entries, or give one \
                         of them a new key and its hash",
                        shown(i, &key)
                    ),
                );
                ok = false;
            }
            None => {
                first_of.insert(key.sha256, i);
                out.push(key);
            }
        }
    }
    ok.then_some(out)
}

/// One `[[serve.key]]` entry: `hash`, `tenant`, `name`.
fn virtual_key(cx: &mut Cx, node: &Node, path: &str) -> Option<VirtualKey> {
    if let Kind::Str(s) = &node.kind {
        cx.err(path, node.pos, key_string_message(s));
        return None;
    }
    let t = Table::read(
        cx,
        node,
        path,
        "{ hash = \"sha256:<64 hex digits>\", tenant = \"acme\" }",
    )?;
    let mut raw = false;
    for (key, _) in t.entries {
        let k = key.name.as_str();
        if RAW_KEY_FIELDS.contains(&k) {
            cx.err(&t.path(k), key.pos, raw_key_message(&format!("`{k}`")));
            raw = true;
        } else if !SERVE_KEY_FIELDS.contains(&k) {
            let hint = match nearest(k, SERVE_KEY_FIELDS) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("the fields here are {}", SERVE_KEY_FIELDS.join(", ")),
            };
            cx.err(&t.path(k), key.pos, format!("unknown field `{k}`; {hint}"));
        }
    }
    let hash = match t.get("hash") {
        Some(n) => key_hash(cx, n, &t.path("hash")),
        // The message about the raw key already says to write the hash.
        None if raw => None,
        None => {
            cx.err(
                &t.path("hash"),
                t.pos,
                format!("is required; add hash = \"sha256:<64 hex digits>\": {HASH_HOWTO}"),
            );
            None
        }
    };
    let tenant = t.req(
        cx,
        "tenant",
        "tenant = \"acme\" (the tenant this key's calls are made for)",
        |cx, n, p| {
            label(
                cx,
                n,
                p,
                "the tenant this key's calls are made for, such as \"acme\"",
            )
        },
    );
    let key_name = t.maybe(cx, "name", |cx, n, p| {
        label(
            cx,
            n,
            p,
            "a name for logs and metrics such as \"acme-ci\", or remove the line to use the tenant",
        )
    });
    if raw {
        return None;
    }
    let tenant = tenant?;
    Some(VirtualKey {
        sha256: hash?,
        name: key_name?.unwrap_or_else(|| tenant.clone()),
        tenant,
    })
}

/// A non-empty string; `what` says what to write when it is empty.
fn label(cx: &mut Cx, node: &Node, path: &str, what: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    if s.trim().is_empty() {
        cx.err(path, node.pos, format!("must not be empty; write {what}"));
        return None;
    }
    Some(s.to_owned())
}

/// `hash = "sha256:<64 hex digits>"`, upper or lower case. Messages never repeat the value: a
/// wrong one may be the key itself.
fn key_hash(cx: &mut Cx, node: &Node, path: &str) -> Option<[u8; 32]> {
    let Kind::Str(text) = &node.kind else {
        cx.err(
            path,
            node.pos,
            format!(
                "must be a string such as \"sha256:<64 hex digits>\", got {}",
                node.type_name()
            ),
        );
        return None;
    };
    let digits = match text.split_once(':') {
        Some(("sha256", digits)) => digits,
        Some((algo, _)) if algo.eq_ignore_ascii_case("sha256") => {
            cx.err(
                path,
                node.pos,
                "must start with sha256: in lower case; write hash = \"sha256:<64 hex digits>\"",
            );
            return None;
        }
        _ if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) => {
            cx.err(
                path,
                node.pos,
                "has no sha256: prefix; write hash = \"sha256:\" followed by these 64 hex digits",
            );
            return None;
        }
        Some(("env" | "file", _)) => {
            cx.err(
                path,
                node.pos,
                "must be the hash itself, written \"sha256:<64 hex digits>\", not a reference: a \
                 hash is no secret, so it sits in the policy file (only the key it was made from \
                 is secret)",
            );
            return None;
        }
        Some((algo, _))
            if !algo.is_empty()
                && algo.len() <= 16
                && algo.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            cx.err(
                path,
                node.pos,
                format!(
                    "must be a SHA-256 hash, written \"sha256:<64 hex digits>\", and the value \
                     (not repeated here) starts with another prefix; {HASH_HOWTO}"
                ),
            );
            return None;
        }
        _ => {
            cx.err(
                path,
                node.pos,
                format!(
                    "is not a hash written \"sha256:<64 hex digits>\" (the value, which may be the \
                     key itself, is not repeated here); the policy holds only the hash of a \
                     virtual key: {HASH_HOWTO}"
                ),
            );
            return None;
        }
    };
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        let what = if bad.is_whitespace() {
            "a space"
        } else {
            "a character"
        };
        cx.err(
            path,
            node.pos,
            format!(
                "has {what} that is not a hex digit after sha256:; a SHA-256 hash is 64 digits \
                 0-9 and a-f: {HASH_HOWTO}"
            ),
        );
        return None;
    }
    if digits.len() != 64 {
        cx.err(
            path,
            node.pos,
            format!(
                "has {} hex digits after sha256:, and a SHA-256 hash has 64: {HASH_HOWTO}",
                digits.len()
            ),
        );
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Prices and models

fn prices(cx: &mut Cx, node: &Node, path: &str) -> Option<BTreeMap<String, Price>> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ \"gpt-4o\" = { input = 2.5, output = 10.0 } }",
    )?;
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, value) in t.entries {
        let p = join(path, &key.name);
        match price(cx, value, &p) {
            Some(price) => {
                out.insert(key.name.clone(), price);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn price(cx: &mut Cx, node: &Node, path: &str) -> Option<Price> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ input = 2.5, cached_input = 1.25, output = 10.0 }",
    )?;
    t.check_keys(cx, &["input", "cached_input", "output"]);
    let money = |cx: &mut Cx, n: &Node, p: &str| {
        let v = number(cx, n, p, "a price per 1M tokens of at least 0")?;
        if v < 0.0 {
            cx.err(
                p,
                n.pos,
                format!(
                    "must be 0 or more, got {}; prices cannot be negative",
                    cx.show(n)
                ),
            );
            return None;
        }
        Some(v)
    };
    let input = t.req(cx, "input", "input = 2.5 (per 1M prompt tokens)", money);
    let cached_input = t.maybe(cx, "cached_input", money);
    let output = t.req(
        cx,
        "output",
        "output = 10.0 (per 1M completion tokens)",
        money,
    );
    let input = input?;
    Some(Price {
        input,
        cached_input: cached_input?.unwrap_or(input),
        output: output?,
    })
}

fn models(cx: &mut Cx, node: &Node, path: &str) -> Option<BTreeMap<String, ModelOverride>> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ \"my-model\" = { context_window = 128000 } }",
    )?;
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, value) in t.entries {
        let p = join(path, &key.name);
        let Some(m) = Table::read(
            cx,
            value,
            &p,
            "{ encoding = \"o200k_base\", context_window = 128000 }",
        ) else {
            ok = false;
            continue;
        };
        m.check_keys(cx, &["encoding", "context_window"]);
        let encoding = m.maybe(cx, "encoding", |cx, n, p| {
            choice(
                cx,
                n,
                p,
                &[
                    (Encoding::O200kBase.as_str(), Encoding::O200kBase),
                    (Encoding::Cl100kBase.as_str(), Encoding::Cl100kBase),
                ],
            )
        });
        let context_window = m.maybe(cx, "context_window", |cx, n, p| {
            whole(cx, n, p, 1, u64::MAX)
        });
        match (encoding, context_window) {
            (Some(encoding), Some(context_window)) => {
                out.insert(
                    key.name.clone(),
                    ModelOverride {
                        encoding,
                        context_window,
                    },
                );
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::policy::{Lease, OnFailure, Policy, RedisUrl, Store};

    #[test]
    fn redis_budget_with_a_redis_section() {
        let p = Policy::from_toml(
            "version = 1\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n\
             on_failure = \"fail_closed\"\n\
             [[budget]]\nname = \"shared\"\nrequests_per_minute = 60\nstore = \"redis\"\n\
             lease = { size = 2, ttl = \"1s\" }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.budgets[0].store, Store::Redis);
        assert_eq!(
            p.budgets[0].lease,
            Some(Lease {
                size: 2,
                ttl: Duration::from_secs(1)
            })
        );
        let r = p.redis.expect("redis");
        assert_eq!(r.url, RedisUrl::Plain("redis://127.0.0.1:6379/0".into()));
        assert_eq!(r.on_failure, OnFailure::FailClosed);
    }

    #[test]
    fn cidrs() {
        use super::parse_cidr as parse;
        let net = |t: &str| parse(t).map(|c| c.to_string());
        assert_eq!(net("10.0.0.0/8").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(net("192.168.1.20").as_deref(), Ok("192.168.1.20/32"));
        assert_eq!(net("::1").as_deref(), Ok("::1/128"));
        assert_eq!(net("fd00::/8").as_deref(), Ok("fd00::/8"));
        assert_eq!(net("0.0.0.0/0").as_deref(), Ok("0.0.0.0/0"));
        assert_eq!(net("::/0").as_deref(), Ok("::/0"));
        // IPv4-mapped IPv6 networks become IPv4 networks.
        assert_eq!(net("::ffff:10.0.0.0/104").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(net("::ffff:0:0/96").as_deref(), Ok("0.0.0.0/0"));
        assert_eq!(net("::ffff:1.2.3.4").as_deref(), Ok("1.2.3.4/32"));
        for (bad, fragment) in [
            ("10.0.0.1/8", "write \"10.0.0.0/8\" for the network"),
            (
                "::ffff:10.0.0.1/104",
                "write \"::ffff:10.0.0.0/104\" for the network",
            ),
            ("fd00::1/8", "write \"fd00::/8\""),
            ("10.0.0.0/33", "from 0 to 32"),
            ("::/129", "from 0 to 128"),
            ("10.0.0.0/+8", "prefix length \"+8\""),
            ("10.0.0.0/-1", "prefix length \"-1\""),
            ("10.0.0.0/8/8", "prefix length \"8/8\""),
            ("10.0.0.0/255.255.0.0", "write \"10.0.0.0/16\""),
            ("10.0.0.0/255.0.255.0", "from 0 to 32"),
            ("", "is not an IP network"),
            ("/8", "is not an IP network"),
            (" 10.0.0.0/8", "remove the spaces"),
            ("fe80::1%eth0", "is not an IP network"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(fragment), "{bad}: {e}");
        }
    }

    #[test]
    fn listener_clashes() {
        use super::listeners_clash as clash;
        let a = |t: &str| t.parse::<std::net::SocketAddr>().expect("address");
        assert!(clash(a("127.0.0.1:8080"), a("127.0.0.1:8080"), false).is_some());
        assert!(clash(a("[::1]:8080"), a("[::1]:8080"), false).is_some());
        assert!(clash(a("0.0.0.0:8080"), a("10.1.1.1:8080"), false).is_some());
        assert!(clash(a("10.1.1.1:8080"), a("0.0.0.0:8080"), false).is_some());
        assert!(clash(a("[::]:8080"), a("[::1]:8080"), false).is_some());
        assert!(clash(a("127.0.0.1:8080"), a("127.0.0.1:8081"), false).is_none());
        assert!(clash(a("127.0.0.1:8080"), a("127.0.0.2:8080"), false).is_none());
        assert!(clash(a("0.0.0.0:8080"), a("[::1]:8080"), false).is_none());
        assert!(clash(a("127.0.0.1:0"), a("127.0.0.1:0"), false).is_none());
        let e = clash(a("127.0.0.1:65535"), a("127.0.0.1:65535"), true).expect("clash");
        assert!(e.contains("(the default, 127.0.0.1:65535)"), "{e}");
        assert!(e.contains("\"127.0.0.1:65534\""), "{e}");
    }

    #[test]
    fn redis_urls() {
        use super::check_redis_url as check;
        for ok in [
            "redis://h",
            "rediss://h:6380/15",
            "redis://user@h:1",
            "redis://[::1]:6379/0?protocol=resp3",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "redis://u:pw@h",
            "redis://:pw@h/0",
            "rediss://u:pw@h?x=1",
            "redis://h?db=0&password=pw",
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains("must not contain a password"), "{bad}: {e}");
            assert!(!e.contains("pw"), "{bad}: {e}");
        }
        assert!(check("redis://h:0").unwrap_err().contains("invalid port"));
        assert!(check("redis://[::1").unwrap_err().contains("unclosed ["));
        assert!(check("redis://h /0").unwrap_err().contains("spaces"));
        assert!(
            check("redis://h/x")
                .unwrap_err()
                .contains("database number")
        );
        let e = check("memcached://u:pw@h").unwrap_err();
        assert!(e.contains("redis://") && !e.contains("pw"), "{e}");
    }
}
