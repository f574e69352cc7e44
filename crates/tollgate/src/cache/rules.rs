//! Cacheability: whether the policy lets a given request be answered from, and stored in, the cache.

use serde_json::Value;
use thiserror::Error;

use crate::policy::Cache;

/// The per-request choice of the caller, on top of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Follow the policy's rules.
    #[default]
    Default,
    /// Cache this request even if its temperature, `n`, tools or missing seed would keep it out
    /// (the caller knows a repeated answer is fine). A disabled cache stays disabled.
    Force,
    /// Neither read nor write the cache for this request.
    Bypass,
}

/// The OpenAI default temperature, assumed when a request does not set one.
pub const DEFAULT_TEMPERATURE: f64 = 1.0;

/// Why a request is not cacheable. [`code`](NotCacheable::code) gives a stable short name.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum NotCacheable {
    /// The policy's `[cache]` is not enabled.
    #[error("the cache is disabled; set enabled = true under [cache] to use it")]
    Disabled,
    /// The caller asked to bypass the cache for this request.
    #[error("the caller bypassed the cache for this request")]
    Bypassed,
    /// The request samples above the policy's temperature limit.
    #[error(
        "temperature {value} is above [cache] temperature_at_most = {max} (a request without \
         temperature samples at the API default 1.0); lower the temperature, raise the limit or \
         force caching for this request"
    )]
    Temperature {
        /// The request's temperature (1.0 when absent).
        value: f64,
        /// The policy's `temperature_at_most`.
        max: f64,
    },
    /// The request asks for more choices than the policy caches.
    #[error("n = {value} is above [cache] max_n = {max}; ask for fewer choices or raise max_n")]
    N {
        /// The request's `n` (1 when absent).
        value: u64,
        /// The policy's `max_n`.
        max: u32,
    },
    /// The request carries tools or functions and the policy does not cache those.
    #[error(
        "the request carries tools or functions and [cache] allow_tools = false; set \
         allow_tools = true if tool calls may be replayed"
    )]
    Tools,
    /// The policy caches only seeded requests and this one has no `seed`.
    #[error("[cache] require_seed = true and the request has no \"seed\"; add a seed")]
    NoSeed,
    /// A field the rules read has a type the API would reject.
    #[error("\"{field}\" has a type the chat API does not accept; the request is not cached")]
    Malformed {
        /// The field (`"request"` when the body is not a JSON object).
        field: &'static str,
    },
}

impl NotCacheable {
    /// A stable machine-readable name: `disabled`, `bypassed`, `temperature`, `n`, `tools`,
    /// `no_seed` or `malformed`.
    pub fn code(&self) -> &'static str {
        match self {
            NotCacheable::Disabled => "disabled",
            NotCacheable::Bypassed => "bypassed",
            NotCacheable::Temperature { .. } => "temperature",
            NotCacheable::N { .. } => "n",
            NotCacheable::Tools => "tools",
            NotCacheable::NoSeed => "no_seed",
            NotCacheable::Malformed { .. } => "malformed",
        }
    }
}

/// Whether `request` (a chat-completions body) may be answered from and stored in the cache.
///
/// Checks, in order: the cache is enabled; the mode is not [`CacheMode::Bypass`]; then, unless
/// the mode is [`CacheMode::Force`]: temperature (absent means the API default 1.0, so under the
/// default policy `temperature_at_most = 0.0` a request must set `"temperature": 0` to be
/// cached), `n` (absent means 1), tools (`tools` or `functions`, when non-empty and
/// `allow_tools` is false) and `seed` (when `require_seed`). Streaming requests are cacheable:
/// their events are stored and replayed.
///
/// ```
/// use serde_json::json;
/// use tollgate::cache::{cacheable, CacheMode, NotCacheable};
/// use tollgate::policy::Cache;
///
/// let policy = Cache { enabled: true, ..Cache::default() };
/// let cold = json!({"model": "gpt-4o", "messages": [], "temperature": 0});
/// assert_eq!(cacheable(&cold, &policy, CacheMode::Default), Ok(()));
///
/// let warm = json!({"model": "gpt-4o", "messages": []}); // temperature 1.0 by default
/// let err = cacheable(&warm, &policy, CacheMode::Default).unwrap_err();
/// assert_eq!(err.code(), "temperature");
/// assert_eq!(cacheable(&warm, &policy, CacheMode::Force), Ok(()));
/// ```
pub fn cacheable(request: &Value, policy: &Cache, mode: CacheMode) -> Result<(), NotCacheable> {
    if !policy.enabled {
        return Err(NotCacheable::Disabled);
    }
    match mode {
        CacheMode::Bypass => return Err(NotCacheable::Bypassed),
        CacheMode::Force => return Ok(()),
        CacheMode::Default => {}
    }
    let Some(body) = request.as_object() else {
        return Err(NotCacheable::Malformed { field: "request" });
    };
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());

    let temperature = match field("temperature") {
        None => DEFAULT_TEMPERATURE,
        Some(v) => v.as_f64().ok_or(NotCacheable::Malformed {
            field: "temperature",
        })?,
    };
    if temperature > policy.temperature_at_most {
        return Err(NotCacheable::Temperature {
            value: temperature,
            max: policy.temperature_at_most,
        });
    }

    let n = match field("n") {
        None => 1,
        Some(v) => count(v).ok_or(NotCacheable::Malformed { field: "n" })?,
    };
    if n > u64::from(policy.max_n) {
        return Err(NotCacheable::N {
            value: n,
            max: policy.max_n,
        });
    }

    if !policy.allow_tools && ["tools", "functions"].iter().any(|f| non_empty(field(f))) {
        return Err(NotCacheable::Tools);
    }

    if policy.require_seed && field("seed").is_none() {
        return Err(NotCacheable::NoSeed);
    }
    Ok(())
}

/// A non-negative integer, written as `2` or `2.0`.
fn count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        // `as` saturates; the range check keeps it exact.
        (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
    })
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn on() -> Cache {
        Cache {
            enabled: true,
            ..Cache::default()
        }
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            NotCacheable::Disabled,
            NotCacheable::Bypassed,
            NotCacheable::Temperature {
                value: 1.0,
                max: 0.0,
            },
            NotCacheable::N { value: 2, max: 1 },
            NotCacheable::Tools,
            NotCacheable::NoSeed,
            NotCacheable::Malformed { field: "n" },
        ];
        let mut codes: Vec<_> = all.iter().map(NotCacheable::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for r in &all {
            assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        let p = on();
        let bad_t = json!({"temperature": "0", "messages": []});
        assert_eq!(
            cacheable(&bad_t, &p, CacheMode::Default),
            Err(NotCacheable::Malformed {
                field: "temperature"
            })
        );
        let bad_n = json!({"temperature": 0, "n": -1});
        assert_eq!(
            cacheable(&bad_n, &p, CacheMode::Default),
            Err(NotCacheable::Malformed { field: "n" })
        );
        assert_eq!(
            cacheable(&json!([1]), &p, CacheMode::Default),
            Err(NotCacheable::Malformed { field: "request" })
        );
        // n written as a float is still a count.
        let n2 = json!({"temperature": 0, "n": 1.0});
        assert_eq!(cacheable(&n2, &p, CacheMode::Default), Ok(()));
    }
}
