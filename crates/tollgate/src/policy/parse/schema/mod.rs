//! The policy schema: one reader per section, each collecting every error it finds.
//!
//! Each section of the file has its own module; this one reads the top level and holds the
//! readers several sections share.

mod breaker;
mod budget;
mod cache;
mod defaults;
mod limits;
mod prices;
mod redis;
mod retry;
mod route;
mod serve;
mod upstream;

use std::collections::{BTreeMap, HashMap};

use super::read::{Cx, Table, index, join, whole};
use super::tree::{Kind, Node};
use super::units::{parse_bytes, quote};
use crate::policy::{Breaker, Cache, Defaults, Policy, Retry};
use breaker::breaker;
use budget::budget;
use cache::cache;
use defaults::defaults;
use prices::{models, prices};
use redis::{needs_redis, redis};
use retry::retry;
use route::{fallbacks, route, route_default_name};
use serve::serve;
use upstream::upstream;

const TOP: &[&str] = &[
    "version", "defaults", "upstream", "budget", "route", "retry", "breaker", "cache", "prices",
    "models", "redis", "serve",
];

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
    if let (Some(us), Some(rs)) = (&upstreams, &routes) {
        upstream::endpoints_known(cx, &t, us, rs);
    }
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
        Kind::Int(_) | Kind::Float(_) | Kind::BigInt(..) => {
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

// ---------------------------------------------------------------------------------------------
// Readers several sections share

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

/// A field of a table node, if the node is a table and has it.
fn field<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.kind {
        Kind::Table(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
        _ => None,
    }
}
