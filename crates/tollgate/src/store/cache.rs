//! The response cache's second level in Redis: entries under the same canonical key as the
//! local cache, with Redis's own TTL, and a total size bound kept by [`super::scripts::CACHE_PUT`].
//!
//! An entry is `TG1\n`, one JSON line of metadata (status, usage, stream events), then the body
//! bytes as they came.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use serde_json::{Value as Json, json};

use super::{RedisStore, Shared, StoreError, exec, scripts};
use crate::cache::{CacheKey, CachedResponse, SseEvent};
use crate::tokens::Usage;

const MAGIC: &[u8] = b"TG1\n";

fn keys(prefix: &str, key: CacheKey) -> [String; 3] {
    [
        format!("{prefix}:cache:{key}"),
        format!("{prefix}:cache:index"),
        format!("{prefix}:cache:sizes"),
    ]
}

/// The bytes stored for an answer.
pub(crate) fn encode(r: &CachedResponse) -> Vec<u8> {
    let events = r.events.as_deref().map(|es| {
        es.iter()
            .map(|e| json!({ "event": e.event, "data": e.data, "id": e.id }))
            .collect::<Vec<_>>()
    });
    let usage = r.usage.map(|u| {
        json!([
            u.prompt_tokens,
            u.completion_tokens,
            u.total_tokens,
            u.cached_prompt_tokens,
            u.reasoning_tokens
        ])
    });
    let meta = json!({ "status": r.status, "usage": usage, "events": events });
    let meta = serde_json::to_vec(&meta).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + meta.len() + 1 + r.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&meta);
    out.push(b'\n');
    out.extend_from_slice(&r.body);
    out
}

/// An answer read back; `None` for anything this version did not write (it is then a miss).
pub(crate) fn decode(bytes: &[u8]) -> Option<CachedResponse> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let nl = memchr::memchr(b'\n', rest)?;
    let meta: Json = serde_json::from_slice(&rest[..nl]).ok()?;
    let body = &rest[nl + 1..];
    let status = u16::try_from(meta.get("status")?.as_u64()?).ok()?;
    let mut r = CachedResponse::new(status, body);
    if let Some(u) = meta.get("usage").and_then(Json::as_array) {
        let n = |i: usize| u.get(i).and_then(Json::as_u64);
        r = r.with_usage(Usage {
            prompt_tokens: n(0)?,
            completion_tokens: n(1)?,
            total_tokens: n(2)?,
            cached_prompt_tokens: n(3)?,
            reasoning_tokens: n(4)?,
        });
    }
    if let Some(es) = meta.get("events").and_then(Json::as_array) {
        let text = |e: &Json, k: &str| e.get(k).and_then(Json::as_str).map(str::to_owned);
        let events: Option<Vec<SseEvent>> = es
            .iter()
            .map(|e| {
                Some(SseEvent {
                    event: text(e, "event"),
                    data: text(e, "data")?,
                    id: text(e, "id"),
                })
            })
            .collect();
        r = r.with_events(events?);
    }
    Some(r)
}

/// A stored answer and how long it has left, from `GET` + `PTTL` in one round trip.
async fn get(
    shared: Arc<Shared>,
    key: CacheKey,
) -> Result<Option<(CachedResponse, Duration)>, StoreError> {
    let [entry, _, _] = keys(&shared.config.key_prefix, key);
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg(&entry).cmd("PTTL").arg(&entry);
    let values = exec(&shared, &pipe).await?;
    let (Some(Value::BulkString(bytes)), Some(Value::Int(ms))) = (values.first(), values.get(1))
    else {
        return Ok(None);
    };
    Ok(decode(bytes)
        .filter(|_| *ms > 0)
        .map(|r| (r, Duration::from_millis(*ms as u64))))
}

async fn put(
    shared: Arc<Shared>,
    key: CacheKey,
    bytes: Vec<u8>,
    ttl: Duration,
    max_bytes: u64,
) -> Result<(), StoreError> {
    let [entry, index, sizes] = keys(&shared.config.key_prefix, key);
    let mut pipe = redis::pipe();
    pipe.cmd("EVALSHA")
        .arg(scripts::CACHE_PUT.get_hash())
        .arg(3)
        .arg(&entry)
        .arg(&index)
        .arg(&sizes)
        .arg(bytes)
        .arg(ttl.as_millis().max(1) as u64)
        .arg(max_bytes);
    exec(&shared, &pipe).await.map(|_| ())
}

impl RedisStore {
    /// Looks an answer up, blocking at most `op_timeout`.
    pub(crate) fn cache_get_blocking(
        &self,
        key: CacheKey,
    ) -> Result<Option<(CachedResponse, Duration)>, StoreError> {
        self.block_on(get(Arc::clone(&self.shared), key))
    }

    /// Looks an answer up from async code.
    pub(crate) async fn cache_get(
        &self,
        key: CacheKey,
    ) -> Result<Option<(CachedResponse, Duration)>, StoreError> {
        self.run(get(Arc::clone(&self.shared), key)).await
    }

    /// Stores an answer in the background (nobody waits for it).
    pub(crate) fn cache_put(
        &self,
        key: CacheKey,
        response: &CachedResponse,
        ttl: Duration,
        max_bytes: u64,
    ) {
        if !self.is_up() {
            return;
        }
        let bytes = encode(response);
        let shared = Arc::clone(&self.shared);
        drop(
            self.handle
                .spawn(async move { put(shared, key, bytes, ttl, max_bytes).await }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_status_usage_events_and_body() {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
            cached_prompt_tokens: 1,
            reasoning_tokens: 2,
        };
        let r = CachedResponse::new(200, &b"{\"id\":\"x\"}\n\xff"[..])
            .with_usage(usage)
            .with_events(vec![
                SseEvent::data("{\"a\":1}"),
                SseEvent {
                    event: Some("done".into()),
                    data: "[DONE]".into(),
                    id: Some("7".into()),
                },
            ]);
        let back = decode(&encode(&r)).expect("decodes");
        assert_eq!(back.status, 200);
        assert_eq!(&*back.body, &*r.body);
        assert_eq!(back.usage, Some(usage));
        assert_eq!(back.events.as_deref(), r.events.as_deref());
    }

    #[test]
    fn foreign_or_truncated_values_are_misses() {
        assert!(decode(b"hello").is_none());
        assert!(decode(b"TG1\n{\"status\":200").is_none());
        assert!(decode(b"TG1\n{\"status\":\"x\"}\n").is_none());
        let plain = decode(b"TG1\n{\"status\":200}\nbody").expect("minimal entry");
        assert_eq!(&*plain.body, b"body");
        assert!(plain.usage.is_none() && plain.events.is_none());
    }
}
