//! A plain-English summary of a policy, for `tollgate check`.

use std::fmt::Write as _;

use super::read::show_float;
use super::units::{format_bytes, format_duration, quote};
use crate::policy::{
    Auth, BreakerWindow, Budget, CacheScope, DEFAULT_KEY_QUARANTINE, Exhausted, Jitter, LimitKind,
    OnFailure, Policy, Redis, RedisUrl, RetryOn, Route, ScopeDim, Serve, Store, Strategy,
    TokenPlacement, Unit, Upstream,
};

impl Policy {
    /// What this policy enforces, in plain English, one line per budget, upstream and route, then
    /// the retry, breaker, cache, Redis, sidecar proxy, price and model settings. Secrets appear
    /// only as their references (`env:NAME`, `file:PATH`), virtual keys only as their count and
    /// tenants.
    ///
    /// ```
    /// use tollgate::policy::Policy;
    /// let p = Policy::from_toml(
    ///     "version = 1\n[[budget]]\nname = \"org\"\nspend_per_month = 500.0\n",
    /// )
    /// .unwrap();
    /// assert!(p.summary().contains("budget \"org\""));
    /// ```
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(
            out,
            "policy version {}: {}, {}, {}",
            self.version,
            plural(self.upstreams.len(), "upstream"),
            plural(self.budgets.len(), "budget"),
            plural(self.routes.len(), "route"),
        );
        for b in &self.budgets {
            let _ = writeln!(out, "{}", budget_line(b));
        }
        for u in &self.upstreams {
            let _ = writeln!(out, "{}", upstream_line(u));
        }
        for r in &self.routes {
            let _ = writeln!(out, "{}", route_line(r, &self.routes));
        }
        let d = &self.defaults;
        let _ = writeln!(
            out,
            "defaults: reserve {} completion tokens when a request sets no maximum; at most {} \
             keys per budget; context windows {}",
            d.max_completion_tokens,
            d.key_capacity,
            if d.enforce_context_window {
                "enforced"
            } else {
                "not enforced"
            }
        );
        let r = &self.retry;
        let jitter = match r.jitter {
            Jitter::None => "no jitter",
            Jitter::Full => "full jitter",
            Jitter::Equal => "equal jitter",
            Jitter::Decorrelated => "decorrelated jitter",
        };
        let on: Vec<String> = r.retry_on.iter().map(|o| retry_on_name(*o)).collect();
        let _ = writeln!(
            out,
            "retry: up to {} attempts in all; backoff from {} doubling up to {} with {jitter}; \
             retries on {}; server-directed delays honoured up to {}; retry budget earns {} per \
             success and {} per second, holds at most {}, charges {} for a 429 with Retry-After; {}",
            r.max_attempts,
            format_duration(r.base),
            format_duration(r.max_backoff),
            if on.is_empty() {
                "nothing".to_owned()
            } else {
                on.join(", ")
            },
            format_duration(r.max_retry_after),
            num(r.budget_ratio),
            num(r.budget_refill_per_second),
            num(r.budget_max_tokens),
            num(r.budget_retry_after_cost),
            if r.honor_server_limits {
                "x-ratelimit-* response headers tighten local budgets until their reset"
            } else {
                "x-ratelimit-* response headers are ignored"
            }
        );
        let b = &self.breaker;
        if b.enabled {
            let slow = match b.slow_call {
                Some(s) => format!(
                    ", or when {}% are slower than {}",
                    num(b.slow_call_rate * 100.0),
                    format_duration(s)
                ),
                None => String::new(),
            };
            let probes = match &b.probe {
                Some(p) => format!(
                    "then sends {} synthetic probe{} (prompt {}, max_tokens {}) before letting \
                     calls through again",
                    b.half_open_calls,
                    if b.half_open_calls == 1 { "" } else { "s" },
                    quote(&p.prompt),
                    p.max_tokens
                ),
                None => format!("then lets {} probe calls through", b.half_open_calls),
            };
            let _ = writeln!(
                out,
                "breaker: per upstream, opens for {} when {}% of {} fail (judged \
                 after {} calls){slow}; {probes}",
                format_duration(b.open_for),
                num(b.failure_rate * 100.0),
                match b.window {
                    BreakerWindow::Calls(n) => format!("the last {n} calls"),
                    BreakerWindow::Time(d) => {
                        format!("the calls of the last {}", format_duration(d))
                    }
                },
                b.min_calls,
            );
        } else {
            let _ = writeln!(out, "breaker: off");
        }
        let c = &self.cache;
        if c.enabled {
            let stale = match c.stale_if_error {
                Some(s) => format!(
                    "; serves expired entries up to {} late when every target fails",
                    format_duration(s)
                ),
                None => String::new(),
            };
            let mut only = vec![
                format!("temperature <= {}", num(c.temperature_at_most)),
                format!("n <= {}", c.max_n),
            ];
            if !c.allow_tools {
                only.push("no tools".to_owned());
            }
            if c.require_seed {
                only.push("a seed set".to_owned());
            }
            let l2 = match c.l2 {
                Some(l2) => format!(
                    "; a local miss is looked up in a second level in Redis of at most {}",
                    format_bytes(l2.max_bytes)
                ),
                None => String::new(),
            };
            let disk = match &c.disk {
                Some(d) => format!(
                    "; then on disk in {} (at most {}, shared by this host's processes)",
                    d.path.display(),
                    format_bytes(d.max_bytes)
                ),
                None => String::new(),
            };
            let l2 = format!("{l2}{disk}");
            let _ = writeln!(
                out,
                "cache: on, at most {}, entries of at most {} live {}, only for requests with \
                 {}{stale}; identical requests in flight {}{l2}; entries {}",
                format_bytes(c.max_bytes),
                format_bytes(c.max_entry_bytes),
                format_duration(c.ttl),
                only.join(", "),
                if c.single_flight {
                    "are merged"
                } else {
                    "are not merged"
                },
                match c.scope {
                    CacheScope::Tenant => "are kept per tenant",
                    CacheScope::Shared => "are shared by every tenant",
                }
            );
        } else {
            let _ = writeln!(out, "cache: off");
        }
        if let Some(r) = &self.redis {
            let _ = writeln!(out, "{}", redis_line(r));
        }
        if let Some(s) = &self.serve {
            let _ = writeln!(out, "{}", serve_line(s));
        }
        for (model, p) in &self.prices {
            let _ = writeln!(
                out,
                "price {model:?}: input {}, cached input {}, output {} per 1M tokens",
                num(p.input),
                num(p.cached_input),
                num(p.output)
            );
        }
        for (model, m) in &self.models {
            let mut facts = Vec::new();
            if let Some(e) = m.encoding {
                facts.push(format!("encoding {e}"));
            }
            if let Some(w) = m.context_window {
                facts.push(format!("context window {w} tokens"));
            }
            if facts.is_empty() {
                facts.push("no overrides".into());
            }
            let _ = writeln!(out, "model {model:?}: {}", facts.join(", "));
        }
        out
    }
}

fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        show_float(v)
    }
}

fn window_name(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::RequestsPerSecond => "second",
        LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => "minute",
        LimitKind::RequestsPerHour | LimitKind::TokensPerHour => "hour",
        LimitKind::RequestsPerDay | LimitKind::TokensPerDay | LimitKind::SpendPerDay => "day",
        LimitKind::SpendPerMonth => "30 days",
    }
}

fn budget_line(b: &Budget) -> String {
    let scope = if b.scope.is_empty() {
        "one shared state".to_owned()
    } else {
        let dims: Vec<&str> = b.scope.iter().map(|d| d.as_str()).collect();
        format!(
            "one state per {} (at most {} kept)",
            dims.join(" and "),
            b.key_capacity
        )
    };
    let mut matched = Vec::new();
    for dim in ScopeDim::ALL {
        let globs = b.matcher.globs(dim);
        if !globs.is_empty() {
            let g: Vec<&str> = globs.iter().map(|g| g.as_str()).collect();
            matched.push(format!("{} {}", dim.as_str(), g.join(" or ")));
        }
    }
    let matched = if matched.is_empty() {
        "every call".to_owned()
    } else {
        format!("calls with {}", matched.join(", "))
    };
    let mut rules: Vec<String> = b
        .limits
        .iter()
        .map(|l| {
            let what = match l.kind.unit() {
                Unit::Requests => "requests",
                Unit::Tokens => "tokens",
                Unit::Spend => "spend",
            };
            let per = window_name(l.kind);
            let amount = match l.kind.unit() {
                Unit::Spend => format!("spend {} per {per}", num(l.amount)),
                _ => format!("{} {what} per {per}", num(l.amount)),
            };
            format!("{amount} (burst {})", num(l.burst))
        })
        .collect();
    if let Some(c) = b.concurrency {
        rules.push(format!("at most {c} in flight"));
    }
    let exhausted = match b.when_exhausted {
        Exhausted::Deny => "denies at once when exhausted".to_owned(),
        Exhausted::Wait(d) => format!(
            "waits up to {} when exhausted, then denies",
            format_duration(d)
        ),
    };
    let store = match (b.store, b.lease) {
        (Store::Local, _) => String::new(),
        (Store::Redis, None) => "; state shared in Redis".to_owned(),
        (Store::Redis, Some(l)) => format!(
            "; state shared in Redis, leased {} calls at a time (unspent room handed back after \
             {})",
            l.size,
            format_duration(l.ttl)
        ),
    };
    format!(
        "budget {:?}: {matched}, {scope}: {}; {exhausted}{store}",
        b.name,
        rules.join(", ")
    )
}

/// `[redis]`. A plain URL has no password (the parser refuses one); a reference shows as such.
fn redis_line(r: &Redis) -> String {
    let url = match &r.url {
        RedisUrl::Plain(u) => u.clone(),
        RedisUrl::Secret(s) => format!("the URL in {s}"),
    };
    let failure = match r.on_failure {
        OnFailure::FailClosed => "calls of Redis budgets are refused (fail closed)".to_owned(),
        OnFailure::FailOpen => format!(
            "each of {} process{} decides alone with every limit divided by {} (fail open)",
            r.expected_instances,
            if r.expected_instances == 1 { "" } else { "es" },
            r.expected_instances
        ),
    };
    let mut line = format!(
        "redis: {url}, keys prefixed {}; connect timeout {}, operation timeout {}; concurrency \
         slots live {} without renewal; while Redis cannot be reached, {failure}",
        quote(&r.key_prefix),
        format_duration(r.connect_timeout),
        format_duration(r.op_timeout),
        format_duration(r.concurrency_lease)
    );
    if r.on_failure == OnFailure::FailClosed && r.expected_instances != 1 {
        let _ = write!(line, "; {} processes expected", r.expected_instances);
    }
    if let Some(ca) = &r.tls_ca_file {
        let _ = write!(line, "; TLS CA {}", ca.display());
    }
    line
}

/// `[serve]`: listeners, admin endpoints, client networks, virtual keys (their count and tenants,
/// never their hashes) and limits.
fn serve_line(s: &Serve) -> String {
    let admin = match (&s.admin_token, s.admin_listen) {
        (None, _) => "admin endpoints off (no admin_token)".to_owned(),
        (Some(token), None) => {
            format!("admin endpoints under /admin/ on the same listener, bearer token in {token}")
        }
        (Some(token), Some(at)) => format!("admin endpoints on {at}, bearer token in {token}"),
    };
    let allow: Vec<String> = s.allow.iter().map(ToString::to_string).collect();
    let keys = if s.keys.is_empty() {
        "no virtual keys".to_owned()
    } else {
        // Tenants in file order, each with its number of keys.
        let mut tenants: Vec<(&str, usize)> = Vec::new();
        for k in &s.keys {
            match tenants.iter_mut().find(|(t, _)| *t == k.tenant) {
                Some((_, n)) => *n += 1,
                None => tenants.push((&k.tenant, 1)),
            }
        }
        let shown: Vec<String> = tenants
            .iter()
            .map(|(t, n)| match n {
                1 => quote(t),
                n => format!("{} ({n} keys)", quote(t)),
            })
            .collect();
        format!(
            "{} virtual key{} for tenant{} {}",
            s.keys.len(),
            if s.keys.len() == 1 { "" } else { "s" },
            if tenants.len() == 1 { "" } else { "s" },
            shown.join(", ")
        )
    };
    format!(
        "serve: listens on {}; {admin}; clients from {}; {keys}; request bodies up to {}, heads \
         up to {}; a client has {} to send the head and {} to send the body and {} to take \
         each part of the answer; idle connections close after {}, at most {} open; on shutdown, calls in flight get {} to finish{}",
        s.listen,
        allow.join(", "),
        format_bytes(s.max_body_bytes),
        format_bytes(s.max_header_bytes),
        format_duration(s.header_timeout),
        format_duration(s.body_timeout),
        format_duration(s.write_timeout),
        format_duration(s.idle_timeout),
        s.max_connections,
        format_duration(s.shutdown_grace),
        if s.access_log {
            "; access log on standard error"
        } else {
            ""
        }
    )
}

fn upstream_line(u: &Upstream) -> String {
    let auth = match &u.auth {
        Auth::None => "no auth".to_owned(),
        Auth::Bearer { keys } if keys.len() == 1 => format!("bearer key {}", keys[0]),
        Auth::Bearer { keys } => {
            let k: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            format!("bearer key pool of {} ({})", keys.len(), k.join(", "))
        }
        Auth::Jwt {
            id,
            secret,
            ttl,
            refresh_before,
        } => format!(
            "JWT from id {id} and secret {secret}, valid {}, renewed {} before expiry",
            format_duration(*ttl),
            format_duration(*refresh_before)
        ),
        Auth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            placement,
        } => format!(
            "OAuth2 client credentials from {token_url} (id {client_id}, secret {client_secret}), \
             token sent in the {}",
            match placement {
                TokenPlacement::Header => "Authorization header",
                TokenPlacement::Query => "query string",
            }
        ),
    };
    let t = &u.timeouts;
    let mut line = format!(
        "upstream {:?}: {}, {auth}; timeouts connect {}, first byte {}, idle {}, total {}",
        u.name,
        u.base_url,
        format_duration(t.connect),
        format_duration(t.first_byte),
        format_duration(t.idle),
        format_duration(t.total)
    );
    if let Some(ca) = &u.ca_file {
        let _ = write!(line, "; extra CA {}", ca.display());
    }
    if let Some(p) = &u.proxy {
        let _ = write!(line, "; proxy {}", redact_userinfo(p));
    }
    if !u.stream_usage {
        line.push_str("; streams are counted, not asked for usage");
    }
    if u.resume_streams {
        line.push_str("; cut streams resume with Last-Event-ID");
    }
    if u.warm_up > 0 {
        let _ = write!(line, "; {} connection(s) warmed up at start", u.warm_up);
    }
    if u.max_idle != crate::policy::DEFAULT_MAX_IDLE {
        let _ = write!(line, "; {} idle connection(s) kept", u.max_idle);
    }
    if let Some(k) = u.http2_keep_alive {
        let _ = write!(
            line,
            "; HTTP/2 keep-alive ping every {}",
            format_duration(k)
        );
    }
    if u.key_quarantine != DEFAULT_KEY_QUARANTINE {
        let _ = write!(
            line,
            "; a key refused with 401 is left out for {}",
            format_duration(u.key_quarantine)
        );
    }
    line
}

fn route_line(r: &Route, routes: &[Route]) -> String {
    let targets: Vec<String> = r
        .targets
        .iter()
        .map(|t| match r.strategy {
            Strategy::Weighted => format!("{}/{} (weight {})", t.upstream, t.model, t.weight),
            _ => format!("{}/{}", t.upstream, t.model),
        })
        .collect();
    let how = match r.strategy {
        Strategy::Ordered => targets.join(", falling back to "),
        Strategy::Weighted => format!("by weight: {}", targets.join(", ")),
        Strategy::LowestLatency => format!("lowest latency of {}", targets.join(", ")),
    };
    let mut line = format!(
        "route {:?}: model {} goes to {how}",
        r.name,
        r.model.as_str()
    );
    // Follow the fallback chain; a validated policy has no loops, but stop at one anyway.
    let mut chain: Vec<&str> = Vec::new();
    let mut next = r.fallback.as_deref();
    while let Some(name) = next {
        if name == r.name || chain.contains(&name) {
            chain.push(name);
            break;
        }
        chain.push(name);
        next = routes
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.fallback.as_deref());
    }
    if !chain.is_empty() {
        let shown: Vec<String> = chain.iter().map(|n| format!("{n:?}")).collect();
        let _ = write!(
            line,
            "; when every target fails, falls back to route {}",
            shown.join(", then route ")
        );
    }
    line
}

fn retry_on_name(o: RetryOn) -> String {
    match o {
        RetryOn::Status(s) => s.to_string(),
        RetryOn::ServerErrors => "5xx".into(),
        RetryOn::Connect => "connect errors".into(),
        RetryOn::Timeout => "timeouts".into(),
        RetryOn::Malformed => "malformed responses".into(),
        RetryOn::CutStream => "cut streams".into(),
    }
}

/// `http://user:pass@host:port` without the user info (`http://***@host:port`): a proxy URL in a
/// policy summary must not print its password.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}
