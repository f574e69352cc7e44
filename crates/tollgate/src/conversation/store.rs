//! Where conversation messages are kept: the [`MessageStore`] trait, [`MemoryStore`] (LRU,
//! bounded by count and bytes) and [`RedisMessageStore`] (the policy's `[redis]`, with a TTL).

use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::store::RedisStore;

/// A stored message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The message's id (a UUID unless the caller chose one).
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub text: String,
    /// The message this one answers or follows, `None` for the first of a conversation.
    #[serde(
        default,
        rename = "parentMessageId",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_id: Option<String>,
    /// The conversation's id.
    #[serde(rename = "conversationId")]
    pub conversation_id: String,
}

impl Message {
    /// Bytes the message takes in a store (its text fields).
    pub fn size(&self) -> usize {
        self.id.len()
            + self.role.len()
            + self.text.len()
            + self.parent_id.as_ref().map_or(0, String::len)
            + self.conversation_id.len()
            + 64
    }
}

/// Why a store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message store: {0}")]
pub struct MessageStoreError(pub String);

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, MessageStoreError>> + Send + 'a>>;

/// Where a conversation's messages are kept. Implement it to bring your own (a database, a
/// cache); [`MemoryStore`] and [`RedisMessageStore`] come with tollgate.
pub trait MessageStore: Send + Sync + fmt::Debug {
    /// The message with this id, `None` when there is none (or it expired).
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Message>>;
    /// Stores (or replaces) a message.
    fn put<'a>(&'a self, message: &'a Message) -> StoreFuture<'a, ()>;
}

/// Messages in memory, least recently used dropped first when either bound is reached.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Lru>,
}

struct Lru {
    map: LruCache<String, Message>,
    bytes: usize,
    max_bytes: usize,
}

impl fmt::Debug for Lru {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lru")
            .field("messages", &self.map.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl MemoryStore {
    /// A store of at most `max_messages` messages and `max_bytes` bytes of them.
    pub fn new(max_messages: usize, max_bytes: usize) -> MemoryStore {
        let cap = NonZeroUsize::new(max_messages.max(1)).unwrap_or(NonZeroUsize::MIN);
        MemoryStore {
            inner: Mutex::new(Lru {
                map: LruCache::new(cap),
                bytes: 0,
                max_bytes,
            }),
        }
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held now (as [`Message::size`] counts them).
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

impl Default for MemoryStore {
    /// 10,000 messages, 64 MiB.
    fn default() -> MemoryStore {
        MemoryStore::new(10_000, 64 << 20)
    }
}

impl MessageStore for MemoryStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Message>> {
        let found = self.inner.lock().map.get(id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(&'a self, message: &'a Message) -> StoreFuture<'a, ()> {
        let mut lru = self.inner.lock();
        let size = message.size();
        if size > lru.max_bytes {
            return Box::pin(async move {
                Err(MessageStoreError(format!(
                    "a message of {size} bytes is larger than the store's max_bytes"
                )))
            });
        }
        // `push` hands back the message replaced, or the one evicted for the count bound.
        if let Some((_, old)) = lru.map.push(message.id.clone(), message.clone()) {
            lru.bytes -= old.size();
        }
        lru.bytes += size;
        while lru.bytes > lru.max_bytes {
            match lru.map.pop_lru() {
                Some((_, m)) => lru.bytes -= m.size(),
                None => break,
            }
        }
        drop(lru);
        Box::pin(async move { Ok(()) })
    }
}

/// Messages in the policy's Redis (`[redis]`), each under `<key_prefix>:msg:<id>` with a TTL, so
/// several processes continue the same conversations. Made by
/// [`crate::Engine::redis_message_store`].
pub struct RedisMessageStore {
    store: Arc<RedisStore>,
    ttl: Duration,
}

impl fmt::Debug for RedisMessageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisMessageStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisMessageStore {
    pub(crate) fn new(store: Arc<RedisStore>, ttl: Duration) -> RedisMessageStore {
        RedisMessageStore { store, ttl }
    }

    fn key(&self, id: &str) -> String {
        format!("{}:msg:{id}", self.store.shared.config.key_prefix)
    }
}

impl MessageStore for RedisMessageStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Message>> {
        Box::pin(async move {
            let bytes = self
                .store
                .get_bytes(self.key(id))
                .await
                .map_err(|e| MessageStoreError(e.to_string()))?;
            match bytes {
                None => Ok(None),
                Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                    MessageStoreError(format!("message {id} in Redis is not one: {e}"))
                }),
            }
        })
    }

    fn put<'a>(&'a self, message: &'a Message) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let bytes = serde_json::to_vec(message)
                .map_err(|e| MessageStoreError(format!("cannot encode the message: {e}")))?;
            self.store
                .set_bytes(self.key(&message.id), bytes, self.ttl)
                .await
                .map_err(|e| MessageStoreError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, text: &str) -> Message {
        Message {
            id: id.into(),
            role: "user".into(),
            text: text.into(),
            parent_id: None,
            conversation_id: "c".into(),
        }
    }

    /// The memory store's futures are ready at once; poll them once.
    fn block<T>(mut f: StoreFuture<'_, T>) -> Result<T, MessageStoreError> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => panic!("memory store futures are ready"),
        }
    }

    #[test]
    fn memory_store_is_bounded_by_count_and_bytes() {
        let s = MemoryStore::new(3, 10_000);
        for i in 0..5 {
            block(s.put(&msg(&i.to_string(), "x"))).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert!(block(s.get("0")).unwrap().is_none());
        assert!(block(s.get("4")).unwrap().is_some());
        let s = MemoryStore::new(100, 400);
        for i in 0..10 {
            block(s.put(&msg(&i.to_string(), &"y".repeat(50)))).unwrap();
        }
        assert!(s.bytes() <= 400, "{}", s.bytes());
        assert!(block(s.get("9")).unwrap().is_some());
        assert!(block(s.get("0")).unwrap().is_none());
        // Replacing a message does not count it twice.
        let before = s.bytes();
        block(s.put(&msg("9", &"y".repeat(50)))).unwrap();
        assert_eq!(s.bytes(), before);
        assert!(block(s.put(&msg("big", &"z".repeat(1000)))).is_err());
    }
}
