//! Plain values in Redis (conversation messages): `GET` and `SET ... PX`.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{RedisStore, StoreError, exec};

impl RedisStore {
    /// The value under `key`, `None` when there is none.
    pub(crate) async fn get_bytes(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let shared = Arc::clone(&self.shared);
        self.run(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&key);
            let values = exec(&shared, &pipe).await?;
            match values.into_iter().next() {
                Some(Value::BulkString(b)) => Ok(Some(b)),
                Some(Value::Nil) | None => Ok(None),
                Some(Value::ServerError(e)) => Err(StoreError::Unavailable(format!(
                    "GET answered {}",
                    e.details().unwrap_or("an error")
                ))),
                Some(other) => Err(StoreError::Unavailable(format!("GET answered {other:?}"))),
            }
        })
        .await
    }

    /// Sets `key` to `value` for `ttl` (at least a millisecond).
    pub(crate) async fn set_bytes(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        self.run(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
            match exec(&shared, &pipe).await?.into_iter().next() {
                Some(Value::ServerError(e)) => Err(StoreError::Unavailable(format!(
                    "SET answered {}",
                    e.details().unwrap_or("an error")
                ))),
                _ => Ok(()),
            }
        })
        .await
    }
}
