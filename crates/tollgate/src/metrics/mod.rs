//! Counters, gauges and histograms with labels, rendered in the Prometheus text exposition format
//! (version 0.0.4).
//!
//! A [`Registry`] holds metric families ([`CounterVec`], [`GaugeVec`], [`HistogramVec`]), each a
//! name, a help text, label names and one series per set of label values. Recording is cheap:
//! resolve a handle ([`Counter`], [`Gauge`], [`Histogram`]) once per label set and keep it, or
//! record through the family (`vec.inc_by(&["openai", "gpt-4o"], 1)`), which hashes the label
//! values on the stack and finds the series in a copy-on-write map read without a lock. A lock
//! is taken only when a label set appears for the first time. Each family keeps at most
//! [`MAX_SERIES`] label sets; further new ones share one series whose label values are all
//! [`OVERFLOW_LABEL`].
//!
//! ```
//! use tollgate::metrics::Registry;
//!
//! let mut registry = Registry::new();
//! let calls = registry.counter("tollgate_demo_calls_total", "Calls made.", &["upstream"]);
//! calls.inc_by(&["openai"], 2);
//! let openai = calls.with_label_values(&["openai"]); // a handle to keep
//! openai.inc();
//! let expected = [
//!     "# HELP tollgate_demo_calls_total Calls made.",
//!     "# TYPE tollgate_demo_calls_total counter",
//!     "tollgate_demo_calls_total{upstream=\"openai\"} 3",
//! ];
//! assert_eq!(registry.render(), expected.join("\n") + "\n");
//! ```
//!
//! # The engine's metrics
//!
//! [`crate::Engine::metrics_text`] renders these. Read at scrape time from the engine's state:
//!
//! | name | type | labels | what |
//! |------|------|--------|------|
//! | `tollgate_policy_generation` | gauge | | policies accepted so far (1 for the first) |
//! | `tollgate_budget_admitted_total` | counter | `budget` | calls admitted |
//! | `tollgate_budget_waited_total` | counter | `budget` | admitted calls that waited first |
//! | `tollgate_budget_denied_total` | counter | `budget` | calls the budget refused (every path) |
//! | `tollgate_budget_tokens_total` | counter | `budget` | tokens settled |
//! | `tollgate_budget_spend_total` | counter | `budget` | money settled |
//! | `tollgate_budget_keys` | gauge | `budget` | scope keys with state |
//! | `tollgate_breaker_state` | gauge | `upstream`, `model` | 0 closed, 1 half-open, 2 open |
//! | `tollgate_breaker_opens_total` | counter | `upstream`, `model` | times the breaker opened |
//! | `tollgate_target_latency_ewma_seconds` | gauge | `upstream`, `model` | latency moving average |
//! | `tollgate_retry_budget_tokens` | gauge | `upstream` | retry-budget tokens left |
//! | `tollgate_budget_store_up` | gauge | `store` | 1 while the shared store (Redis) answers |
//! | `tollgate_budget_store_round_trips_total` | counter | `store` | round trips to the store |
//! | `tollgate_budget_store_errors_total` | counter | `store` | store operations failed or late |
//! | `tollgate_budget_store_outages_total` | counter | `store` | times the store went down |
//! | `tollgate_budget_store_dropped_total` | counter | `store` | reconciliations dropped while down |
//! | `tollgate_budget_store_leases` | gauge | `store` | concurrency slots held in the store |
//! | `tollgate_budget_store_fallback` | gauge | `budget` | 1 while deciding locally (fail-open) |
//! | `tollgate_cache_hits_total` | counter | | fresh cache hits |
//! | `tollgate_cache_misses_total` | counter | | lookups that found nothing fresh |
//! | `tollgate_cache_stale_hits_total` | counter | | stale answers (stale-if-error) |
//! | `tollgate_cache_inserts_total` | counter | | responses stored |
//! | `tollgate_cache_refused_total` | counter | | responses too large to store |
//! | `tollgate_cache_evictions_total` | counter | | entries evicted to fit the byte budget |
//! | `tollgate_cache_expired_total` | counter | | entries removed past TTL + stale window |
//! | `tollgate_cache_bytes` | gauge | | bytes stored |
//! | `tollgate_cache_entries` | gauge | | entries stored |
//!
//! Recorded as calls are admitted and settled:
//!
//! | name | type | labels | what |
//! |------|------|--------|------|
//! | `tollgate_attempts_total` | counter | `upstream`, `model`, `outcome` | sent attempts by outcome |
//! | `tollgate_attempt_latency_seconds` | histogram | `upstream`, `model` | attempt latency |
//! | `tollgate_time_to_first_token_seconds` | histogram | `upstream`, `model` | time to first token |
//! | `tollgate_tokens_total` | counter | `upstream`, `model`, `kind` | reported tokens |
//! | `tollgate_spend_total` | counter | `upstream`, `model` | money charged |
//! | `tollgate_retries_total` | counter | `code` | retries granted, by outcome code |
//! | `tollgate_give_ups_total` | counter | `code` | calls given up, by reason code |
//! | `tollgate_denials_total` | counter | `budget`, `code` | `admit` refusals |
//!
//! `upstream` and `model` name the routed target; a call without a route has upstream `""` and
//! model `""`. `outcome` is `status_200`, `status_503`, `timeout_first_byte`, `connect_refused`,
//! `malformed`, `cut_stream`… (the codes of [`crate::AttemptRecord::outcome`]), or `unknown` when
//! the attempt was sent but its end is unknown. `kind` is `input` (prompt tokens not served from
//! the provider's prompt cache), `cached` or `output`. No label ever holds a credential: pool keys
//! appear nowhere, and only by their id elsewhere.

mod registry;
mod text;

pub use registry::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramSnapshot, HistogramVec,
    LATENCY_BUCKETS, MAX_SERIES, MetricType, OVERFLOW_LABEL, Registry, TTFT_BUCKETS,
};
pub(crate) use registry::{LabelMap, Series};
pub use text::TextWriter;
