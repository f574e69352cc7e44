//! `[[route]]`: which upstreams serve a model, and the fallbacks between routes.

use crate::policy::parse::read::{Cx, Table, array, choice, index, join, name, string, whole};
use crate::policy::parse::suggest::nearest;
use crate::policy::parse::tree::{Key, Kind, Node};
use crate::policy::parse::units::{is_glob, quote};
use crate::policy::{Glob, Route, Strategy, Target};

/// Reads one `[[route]]`; `upstreams` are the names of every `[[upstream]]`.
pub(super) fn route(cx: &mut Cx, node: &Node, path: &str, upstreams: &[String]) -> Option<Route> {
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
        let hint = match nearest(&u, &candidates) {
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

/// The name of a route without `name`: its model, when that is a string.
pub(super) fn route_default_name(entries: &[(Key, Node)]) -> Option<(String, Option<usize>)> {
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
/// the names of every route (from [`names`](super::names)); a fallback's type was checked by
/// [`route`].
pub(super) fn fallbacks(cx: &mut Cx, t: &Table<'_>, route_names: &[String]) {
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
            let hint = match nearest(wanted, &others) {
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
