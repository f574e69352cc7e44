//! `[serve]`: the proxy's listeners, limits, access control and virtual keys.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{field, size};
use crate::policy::parse::read::{
    Cx, Table, array, boolean, duration, index, join, secret, string, whole,
};
use crate::policy::parse::suggest::nearest;
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::{format_bytes, quote};
use crate::policy::{Cidr, SecretRef, Serve, VirtualKey};

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

/// Reads `[serve]`.
pub(super) fn serve(cx: &mut Cx, node: &Node, path: &str) -> Option<Serve> {
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
    if let (Some(listen), Some(Some(admin))) = (listen, admin_listen)
        && let Some(why) = listeners_clash(listen, admin, t.get("listen").is_none())
    {
        cx.err(
            &t.path("admin_listen"),
            t.get("admin_listen").and_then(|n| n.pos),
            why,
        );
        ok = false;
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
        if let Some((host, port)) = t.rsplit_once(':')
            && host.parse::<Ipv6Addr>().is_ok()
            && port.parse::<u16>().is_ok()
        {
            return format!(
                "an IPv6 address goes in brackets before the port: write {}",
                quote(&format!("[{host}]:{port}"))
            );
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
    if let Kind::Str(text) = &node.kind
        && !text.starts_with("env:")
        && !text.starts_with("file:")
    {
        cx.err(
            path,
            node.pos,
            "must name where the token is, not hold it: write admin_token = \
                 \"env:TOLLGATE_ADMIN_TOKEN\" (an environment variable) or \"file:PATH\" (a file \
                 that holds it); literal secrets are not accepted",
        );
        return None;
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
    if let IpAddr::V6(v6) = network
        && let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96)
    {
        return Ok(Cidr {
            addr: IpAddr::V4(v4),
            prefix: prefix - 96,
        });
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

#[cfg(test)]
mod tests {
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
}
