//! `[redis]`: the shared store of Redis budgets and of the cache's second level.

use std::path::PathBuf;
use std::time::Duration;

use super::field;
use crate::policy::parse::read::{
    Cx, Table, choice, duration, index, join, name, secret, string, whole,
};
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::{format_duration, quote};
use crate::policy::{OnFailure, Redis, RedisUrl};

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

/// Reads `[redis]`.
pub(super) fn redis(cx: &mut Cx, node: &Node, path: &str) -> Option<Redis> {
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
    if let (Some(RedisUrl::Plain(u)), Some(Some(_))) = (&url, &tls_ca_file)
        && !u.starts_with("rediss://")
    {
        cx.err(
            &t.path("tls_ca_file"),
            t.get("tls_ca_file").and_then(|n| n.pos),
            "only applies to a TLS connection, and the url starts with redis://, which is \
                 plain TCP; write the url with rediss:// or remove tls_ca_file",
        );
        ok = false;
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
/// that is present but invalid is reported by [`redis()`], not here.
pub(super) fn needs_redis(cx: &mut Cx, t: &Table<'_>) {
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
