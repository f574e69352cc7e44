//! `[[upstream]]`: where calls go, how they authenticate, and their timeouts.

use std::path::PathBuf;
use std::time::Duration;

use crate::dialect::Dialect;
use crate::policy::parse::read::{
    Cx, Table, array, boolean, choice, duration, http_url, index, name, secret, string, whole,
};
use crate::policy::parse::tree::{Kind, Node};
use crate::policy::parse::units::format_duration;
use crate::policy::{
    Auth, DEFAULT_KEY_QUARANTINE, DEFAULT_MAX_IDLE, Route, SecretRef, Timeouts, TokenPlacement,
    Upstream,
};

/// Reads one `[[upstream]]`.
pub(super) fn upstream(cx: &mut Cx, node: &Node, path: &str) -> Option<Upstream> {
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
            "max_idle",
            "http2_keep_alive",
            "dialect",
            "endpoints",
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
    let max_idle = t.opt(cx, "max_idle", DEFAULT_MAX_IDLE, |cx, n, p| {
        whole(cx, n, p, 0, 65_536).map(|v| v as u32)
    });
    let http2_keep_alive = t.maybe(cx, "http2_keep_alive", duration);
    let dialect = t.opt(cx, "dialect", Dialect::OpenAi, |cx, n, p| {
        choice(cx, n, p, &Dialect::ALL)
    });
    let endpoints = t.opt(cx, "endpoints", vec![], endpoints);
    if let (Some(d), Some(e)) = (dialect, &endpoints)
        && d != Dialect::BaiduV1
        && !e.is_empty()
    {
        let pos = t.get("endpoints").and_then(|n| n.pos);
        cx.err(
            &t.path("endpoints"),
            pos,
            format!(
                "endpoints apply to dialect = \"baidu_v1\" only (this upstream speaks \"{d}\"); \
                 add dialect = \"baidu_v1\" or remove endpoints"
            ),
        );
    }
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
        max_idle: max_idle?,
        http2_keep_alive: http2_keep_alive?,
        dialect: dialect?,
        endpoints: endpoints?,
    })
}

/// `endpoints = { "ernie-4.0-8k" = "completions_pro", ... }`: model → endpoint path segment.
fn endpoints(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<(String, String)>> {
    let t = Table::read(cx, node, path, "{ \"ernie-4.0-8k\" = \"completions_pro\" }")?;
    let mut out = vec![];
    let mut ok = true;
    for (key, value) in t.entries {
        let p = t.path(&key.name);
        let Some(v) = string(cx, value, &p) else {
            ok = false;
            continue;
        };
        let v = v.trim_matches('/');
        let valid = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !valid {
            cx.err(
                &p,
                value.pos,
                format!(
                    "\"{v}\" is not an endpoint path; give the part after .../wenxinworkshop/chat/, \
                     such as \"completions_pro\" (letters, digits, - _ . /)"
                ),
            );
            ok = false;
            continue;
        }
        out.push((key.name.to_ascii_lowercase(), v.to_string()));
    }
    ok.then_some(out)
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
            if let (Some(ttl), Some(refresh)) = (ttl, refresh)
                && refresh >= ttl
            {
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

/// Every route target on a `baidu_v1` upstream names a model with an endpoint (a call for it
/// could never be sent otherwise).
pub(super) fn endpoints_known(
    cx: &mut Cx,
    t: &Table<'_>,
    upstreams: &[Upstream],
    routes: &[Route],
) {
    let node_of = |i: usize, j: usize| -> Option<&Node> {
        let Kind::Array(routes) = &t.get("route")?.kind else {
            return None;
        };
        let Kind::Table(entries) = &routes.get(i)?.kind else {
            return None;
        };
        let (_, targets) = entries.iter().find(|(k, _)| k.name == "targets")?;
        let Kind::Array(targets) = &targets.kind else {
            return None;
        };
        targets.get(j)
    };
    for (i, route) in routes.iter().enumerate() {
        for (j, target) in route.targets.iter().enumerate() {
            let Some(up) = upstreams.iter().find(|u| u.name == target.upstream) else {
                continue;
            };
            if up.dialect != Dialect::BaiduV1
                || crate::dialect::baidu::endpoint_of(&up.endpoints, &target.model).is_some()
            {
                continue;
            }
            let path = format!("route[{i}].targets[{j}].model");
            cx.err(
                &path,
                node_of(i, j).and_then(|n| n.pos),
                format!(
                    "upstream \"{}\" speaks baidu_v1 and has no endpoint for model \"{}\"; add \
                     endpoints = {{ \"{}\" = \"...\" }} to it (the path after \
                     .../wenxinworkshop/chat/)",
                    up.name, target.model, target.model
                ),
            );
        }
    }
}
