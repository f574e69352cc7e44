//! `[cache]`: the response cache and its second level in Redis.

use super::{field, size};
use crate::policy::parse::read::{Cx, Table, boolean, choice, duration, join, non_negative, whole};
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::format_bytes;
use crate::policy::{Cache, CacheDisk, CacheL2, CacheScope};

/// Reads `[cache]`.
pub(super) fn cache(cx: &mut Cx, node: &Node, path: &str) -> Option<Cache> {
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
            "scope",
            "disk",
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
    let disk = t.maybe(cx, "disk", cache_disk);
    let scope = t.opt(cx, "scope", d.scope, |cx, n, p| {
        choice(
            cx,
            n,
            p,
            &[
                ("tenant", CacheScope::Tenant),
                ("shared", CacheScope::Shared),
            ],
        )
    });
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
    if let Some(l2) = l2
        && l2.max_bytes < max_entry_bytes
    {
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
    let disk = disk?;
    if let Some(disk) = &disk
        && disk.max_bytes < max_entry_bytes
    {
        cx.err(
            &join(&t.path("disk"), "max_bytes"),
            t.get("disk")
                .and_then(|n| field(n, "max_bytes"))
                .and_then(|n| n.pos),
            format!(
                "the disk level's max_bytes ({}) is less than max_entry_bytes ({}), so an \
                     entry the memory level accepts could never be stored on disk; raise disk \
                     max_bytes or lower max_entry_bytes",
                format_bytes(disk.max_bytes),
                format_bytes(max_entry_bytes),
            ),
        );
        return None;
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
        scope: scope?,
        disk,
    })
}

/// `l2 = { store = "redis", max_bytes = "1GB" }`: the cache's second level. Whether the policy
/// has a `[redis]` section is checked by [`needs_redis`](super::redis::needs_redis).
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

/// `disk = { path = "/var/cache/tollgate/cache.db", max_bytes = "10GiB" }`: the disk level.
fn cache_disk(cx: &mut Cx, node: &Node, path: &str) -> Option<CacheDisk> {
    let example = "{ path = \"/var/cache/tollgate/cache.db\", max_bytes = \"10GiB\" }";
    let t = Table::read(cx, node, path, example)?;
    t.check_keys(cx, &["path", "max_bytes"]);
    let file = t.req(
        cx,
        "path",
        "path = \"/var/cache/tollgate/cache.db\" (the SQLite file; processes naming the same \
         file share it)",
        |cx, n, p| match &n.kind {
            Kind::Str(s) if !s.trim().is_empty() => Some(std::path::PathBuf::from(s)),
            _ => {
                cx.err(
                    p,
                    n.pos,
                    "must be a file path, e.g. \"/var/cache/tollgate/cache.db\"",
                );
                None
            }
        },
    );
    let max_bytes = t.req(
        cx,
        "max_bytes",
        "max_bytes = \"10GiB\" (the most answer bytes kept in the file)",
        |cx, n, p| {
            size(
                cx,
                n,
                p,
                "must be more than zero; remove disk to keep the cache in memory only",
            )
        },
    );
    Some(CacheDisk {
        path: file?,
        max_bytes: max_bytes?,
    })
}
