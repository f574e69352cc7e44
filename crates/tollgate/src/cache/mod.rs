//! Response cache: keys, cacheability rules, a byte-bounded LRU + TTL store and single-flight.
//!
//! Pure: no I/O and no runtime; time is passed in as `now` ([`Nanos`](crate::clock::Nanos)).
//!
//! # What is cached
//!
//! Answers to OpenAI chat-completions requests that the policy's `[cache]` allows
//! ([`cacheable`]): by default only requests with `"temperature": 0` (an absent temperature is
//! the API default 1.0), `n` at most 1, no tools, when `enabled = true`. A caller can force or
//! bypass the rules per request ([`CacheMode`]). An entry ([`CachedResponse`]) holds the status,
//! the JSON body, and for a streamed answer its server-sent events, replayed as they came, plus
//! the reported usage.
//!
//! # Key scheme
//!
//! [`cache_key`] hashes a canonical form of the request (sorted object keys, `1` = `1.0`, type
//! tags and lengths) with XXH3-128, over the model, the messages and every parameter except those
//! that do not change the answer ([`EXCLUDED_FIELDS`]: `stream`, `user`, `metadata`, ...).
//! Unknown fields are part of the key. The key is the same in every process and on every
//! platform, so a store shared between hosts can use it; see [`key`] for the exact scheme.
//! [`cache_key_for`] adds the calling tenant to the key (the policy's default
//! `scope = "tenant"`), so entries and flights are never shared across tenants unless the policy
//! says `scope = "shared"`.
//!
//! # Store
//!
//! [`CacheStore`] is sharded, bounded in bytes (body + events + a fixed overhead per entry)
//! with a global budget and least-recently-used eviction, and expires entries after the TTL.
//!
//! # Stale if error
//!
//! When every target has failed, an entry past its TTL but within `stale_if_error` may still
//! answer: [`CacheStore::get_stale`] returns it as [`Lookup::Stale`], so the host can mark the
//! answer as stale. Ordinary lookups ([`CacheStore::get`]) never return stale entries. Off by
//! default (`stale_if_error` unset), in which case entries expire exactly at their TTL.
//!
//! # Single flight
//!
//! [`SingleFlight`] merges identical requests in flight: one leader calls upstream, followers
//! (blocking or `.await`) receive its answer or its error.
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use tollgate::cache::{cache_key, cacheable, CacheMode, CacheStore, CachedResponse, Lookup};
//! use tollgate::policy::Cache;
//!
//! let policy = Cache { enabled: true, ..Cache::default() };
//! let store = CacheStore::from_policy(&policy);
//! let request = json!({"model": "gpt-4o", "temperature": 0,
//!                      "messages": [{"role": "user", "content": "2+2?"}]});
//! assert!(cacheable(&request, &policy, CacheMode::Default).is_ok());
//!
//! let key = cache_key(&request);
//! let now = 0;
//! assert!(matches!(store.get(key, now), Lookup::Miss));
//! let answer = CachedResponse::new(200, &br#"{"choices":[{"message":{"content":"4"}}]}"#[..]);
//! store.insert(key, answer, now).expect("small enough");
//! assert!(store.get(key, now + 1_000).is_hit());
//! ```

pub mod flight;
pub mod key;
pub mod rules;
pub mod store;

pub use flight::{Flight, FlightError, FollowerWait, LeaderGuard, SingleFlight};
pub use key::{CacheKey, EXCLUDED_FIELDS, KEY_SCHEME, cache_key, cache_key_for};
pub use rules::{CacheMode, DEFAULT_TEMPERATURE, NotCacheable, cacheable};
pub use store::{
    CacheStats, CacheStore, CachedResponse, ENTRY_OVERHEAD, EVENT_OVERHEAD, Lookup, Refused,
    SHARDS, SseEvent,
};
