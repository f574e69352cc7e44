//! Shared state on a Redis server: budgets that hold across processes and hosts, and the
//! cache's second level; and the cache's disk level, a SQLite file shared by the processes of
//! one host ([`DiskState`]).
//!
//! One `RedisStore` per `[redis]` section owns a small runtime thread (`tollgate-redis`) and one
//! multiplexed connection through redis-rs's connection manager, which reconnects by itself.
//! Everything the engine asks of Redis goes through it:
//! - admission: one pipeline per admission — the reconciliations this process still owes Redis
//!   (refunds, extra charges, released concurrency slots), then one `EVALSHA` of
//!   `scripts::ADMIT` covering every Redis budget of the call. Owed work goes first on the same
//!   connection, so a slot this process released is free again for its next admission;
//! - settlement: queued here and sent by a background flusher (or ahead of the next admission),
//!   never waited for by the caller;
//! - renewal of concurrency leases held by live calls, every third of their lifetime.
//!
//! Health: an operation that fails or takes longer than `op_timeout` marks the store down; while
//! it is down no call waits for it (each budget applies `on_failure` at once) and a background
//! probe pings it with backoff until it answers, which marks it up again.

mod budget;
mod cache;
mod disk;
mod kv;
pub(crate) mod scripts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Value};

use crate::policy::{Redis, RedisUrl};

pub(crate) use budget::{AdjustEntry, AdmitReply, AdmitRequest, Check, Grant, RateSlot};
pub use budget::{RateLimit, RateResult, RedisLimiter};
pub use disk::DiskState;
#[doc(hidden)]
pub use disk::stored_bytes as disk_cache_bytes;
pub(crate) use disk::{DiskCache, DiskStats};

/// Most reconciliations kept while Redis is down; beyond this the oldest are dropped (and
/// counted): refunds lost make limits tighter for a moment, never looser, and concurrency slots
/// not released expire by themselves.
const MAX_OWED: usize = 100_000;

/// Why Redis could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The `[redis]` section cannot be used (bad URL, unreadable secret or CA file).
    #[error("redis configuration: {0}")]
    Config(String),
    /// Redis is down, slow (past `op_timeout`) or answered with an error.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

/// Work owed to Redis after settlement.
#[derive(Debug)]
pub(crate) enum Owed {
    /// Replace reservations of one budget key by what was used.
    Adjust {
        key: Arc<str>,
        entries: smallvec::SmallVec<[AdjustEntry; 4]>,
    },
    /// Give a concurrency slot back.
    Release { key: Arc<str>, member: Arc<str> },
}

/// Counters of the store, for metrics.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    /// Round trips made (admissions, flushes, renewals, cache operations).
    pub round_trips: AtomicU64,
    /// Operations that failed or timed out.
    pub errors: AtomicU64,
    /// Times the store went down.
    pub outages: AtomicU64,
    /// Reconciliations dropped while Redis was down.
    pub dropped: AtomicU64,
}

pub(crate) struct Shared {
    pub config: Redis,
    pub conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    probing: AtomicBool,
    owed: Mutex<Vec<Owed>>,
    kick: tokio::sync::Notify,
    /// Concurrency leases held by live permits: member → sorted set key.
    leases: Mutex<HashMap<Arc<str>, Arc<str>>>,
    member_base: String,
    next_member: AtomicU64,
    pub counters: StoreCounters,
    closed: AtomicBool,
    /// Why the store is down, for denials (no credentials in it).
    last_error: Mutex<String>,
}

/// A connection to the `[redis]` server and the work tollgate does there.
pub(crate) struct RedisStore {
    pub(crate) shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.config.url)
            .field("up", &self.is_up())
            .finish()
    }
}

/// The URL to connect to, with secrets read now.
fn resolve_url(url: &RedisUrl) -> Result<String, StoreError> {
    match url {
        RedisUrl::Plain(u) => Ok(u.clone()),
        RedisUrl::Secret(r) => crate::auth::resolve(r)
            .map(|s| s.expose().trim().to_owned())
            .map_err(|e| StoreError::Config(format!("cannot read the URL from {r}: {e}"))),
    }
}

fn client(config: &Redis) -> Result<redis::Client, StoreError> {
    let url = resolve_url(&config.url)?;
    // Never echo the URL itself: it may hold a password.
    let bad = |e: redis::RedisError| StoreError::Config(format!("invalid redis URL: {e}"));
    match &config.tls_ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Config(format!("cannot read tls_ca_file {}: {e}", path.display()))
            })?;
            redis::Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(bad)
        }
        None => redis::Client::open(url.as_str()).map_err(bad),
    }
}

/// A name for this process's concurrency leases, unique across hosts and restarts.
fn member_base() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{host}:{}:{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

impl RedisStore {
    /// Connects to the server of `config`, waiting at most `connect_timeout` for the first
    /// connection. When the server cannot be reached the store starts down (budgets apply
    /// `on_failure`) and keeps trying in the background.
    ///
    /// A section that cannot be used (an unreadable secret or CA file, a bad URL) gives a store
    /// that stays down with that reason, so `on_failure` decides and the denials say why.
    pub(crate) fn connect(config: &Redis) -> Result<Arc<RedisStore>, StoreError> {
        let client = client(config);
        let runtime = crate::transport::runtime("tollgate-redis", 1)
            .map_err(|e| StoreError::Config(format!("cannot start the redis thread: {e}")))?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            probing: AtomicBool::new(true),
            owed: Mutex::new(Vec::new()),
            kick: tokio::sync::Notify::new(),
            leases: Mutex::new(HashMap::new()),
            member_base: member_base(),
            next_member: AtomicU64::new(1),
            counters: StoreCounters::default(),
            closed: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".to_owned()),
        });
        let handle = runtime.handle().clone();
        match client {
            Ok(client) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                handle.spawn(connect_loop(Arc::clone(&shared), client, tx));
                handle.spawn(flush_loop(Arc::clone(&shared)));
                handle.spawn(renew_loop(Arc::clone(&shared)));
                // The first connection, or the connect timeout: either way the store is usable.
                let _ = rx.recv_timeout(config.connect_timeout + Duration::from_millis(50));
            }
            Err(e) => *shared.last_error.lock() = e.to_string(),
        }
        Ok(Arc::new(RedisStore {
            shared,
            handle,
            runtime: Mutex::new(Some(runtime)),
        }))
    }

    /// The section this store was made from.
    pub(crate) fn config(&self) -> &Redis {
        &self.shared.config
    }

    /// Whether Redis answered the last operation in time.
    pub(crate) fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Runs `op` on this thread, parked between polls, at most `op_timeout` (plus a little for
    /// the script reload after a server restart). The store's runtime is entered for its timers
    /// and its connection's driver, which stays on the store's thread: the request and the answer
    /// cross threads once each, with no task spawned in between.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        op: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        /// Unparks the waiting thread.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                self.0.unpark();
            }
        }
        let _entered = self.handle.enter();
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut op = std::pin::pin!(op);
        let deadline =
            std::time::Instant::now() + self.shared.config.op_timeout + Duration::from_millis(20);
        loop {
            if let std::task::Poll::Ready(result) = op.as_mut().poll(&mut cx) {
                return result;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable("timed out".to_owned()));
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Runs `op` on the store's thread and awaits it from any runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        op: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match self.handle.spawn(op).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Unavailable(format!("redis task ended: {e}"))),
        }
    }

    /// A new concurrency lease name and its registration for renewal.
    pub(crate) fn new_member(&self, key: &Arc<str>) -> Arc<str> {
        let n = self.shared.next_member.fetch_add(1, Ordering::Relaxed);
        let member: Arc<str> = Arc::from(format!("{}:{n}", self.shared.member_base));
        self.shared
            .leases
            .lock()
            .insert(Arc::clone(&member), Arc::clone(key));
        member
    }

    /// Forgets a lease that was never granted (the admission failed).
    pub(crate) fn drop_member(&self, member: &Arc<str>) {
        self.shared.leases.lock().remove(member);
    }

    /// Queues work owed to Redis; it is sent ahead of the next admission or by the flusher.
    pub(crate) fn owe(&self, owed: Owed) {
        if let Owed::Release { member, .. } = &owed {
            self.shared.leases.lock().remove(member);
        }
        let mut q = self.shared.owed.lock();
        if q.len() >= MAX_OWED {
            q.remove(0);
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push(owed);
        drop(q);
        self.shared.kick.notify_one();
    }

    /// Queues reconciliations of one budget key (nothing when there are none).
    pub(crate) fn owe_adjust(&self, key: &Arc<str>, entries: smallvec::SmallVec<[AdjustEntry; 4]>) {
        if !entries.is_empty() {
            self.owe(Owed::Adjust {
                key: Arc::clone(key),
                entries,
            });
        }
    }

    /// Marks the store down from outside its runtime (a caller gave up waiting for it).
    pub(crate) fn mark_down(&self, why: &str) {
        mark_down_on(&self.shared, why, &self.handle);
    }

    /// Why the store is down (the last error), for denials.
    pub(crate) fn down_reason(&self) -> String {
        self.shared.last_error.lock().clone()
    }

    /// Counters for metrics.
    pub(crate) fn counters(&self) -> &StoreCounters {
        &self.shared.counters
    }

    /// Concurrency leases this process holds now.
    pub(crate) fn leases_held(&self) -> usize {
        self.shared.leases.lock().len()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Hand what is owed over before the thread goes (best effort, bounded by op_timeout).
        if self.is_up() {
            let shared = Arc::clone(&self.shared);
            let _ = self.block_on(async move {
                let owed = std::mem::take(&mut *shared.owed.lock());
                if owed.is_empty() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                add_owed(&mut pipe, &owed, &shared.config.key_prefix);
                exec(&shared, &pipe).await.map(|_| ())
            });
        }
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

/// Marks the store up (the connection answered).
fn mark_up(shared: &Shared) {
    shared.up.store(true, Ordering::Release);
}

/// Marks the store down after a failure and starts the probe (on `handle`) that brings it back.
fn mark_down_on(shared: &Arc<Shared>, why: &str, handle: &tokio::runtime::Handle) {
    if !shared.up.swap(false, Ordering::AcqRel) {
        return;
    }
    *shared.last_error.lock() = why.to_owned();
    shared.counters.outages.fetch_add(1, Ordering::Relaxed);
    if !shared.probing.swap(true, Ordering::AcqRel) {
        handle.spawn(probe_loop(Arc::clone(shared)));
    }
}

/// [`mark_down_on`] from a task of the store's runtime, counting the failed operation.
fn mark_down(shared: &Arc<Shared>, why: &str) {
    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
    mark_down_on(shared, why, &tokio::runtime::Handle::current());
}

/// Makes the first connection, retrying with backoff; signals `first` on the first success.
async fn connect_loop(
    shared: Arc<Shared>,
    client: redis::Client,
    first: std::sync::mpsc::SyncSender<()>,
) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(shared.config.connect_timeout))
        .set_response_timeout(Some(shared.config.op_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_secs(1));
    let mut backoff = Duration::from_millis(50);
    while !shared.closed.load(Ordering::Acquire) {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(conn) => {
                shared.conn.store(Some(Arc::new(conn)));
                let _ = load_scripts(&shared).await;
                mark_up(&shared);
                shared.probing.store(false, Ordering::Release);
                let _ = first.try_send(());
                return;
            }
            Err(e) => {
                *shared.last_error.lock() = format!("cannot connect: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Pings a store that went down until it answers.
async fn probe_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(20);
    while !shared.closed.load(Ordering::Acquire) {
        tokio::time::sleep(backoff).await;
        let ok = match shared.conn.load_full() {
            Some(conn) => {
                let mut conn = (*conn).clone();
                matches!(
                    tokio::time::timeout(
                        shared.config.op_timeout.max(Duration::from_millis(200)),
                        redis::cmd("PING").query_async::<String>(&mut conn),
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
            None => false,
        };
        if ok {
            let _ = load_scripts(&shared).await;
            mark_up(&shared);
            shared.probing.store(false, Ordering::Release);
            shared.kick.notify_one();
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Loads every script, so `EVALSHA` finds them after a restart of the server.
async fn load_scripts(shared: &Shared) -> Result<(), StoreError> {
    let Some(conn) = shared.conn.load_full() else {
        return Err(StoreError::Unavailable("not connected".to_owned()));
    };
    let mut conn = (*conn).clone();
    for s in [
        &*scripts::ADMIT,
        &*scripts::ADJUST,
        &*scripts::RENEW,
        &*scripts::CACHE_PUT,
    ] {
        s.load_async(&mut conn).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Adds owed work to a pipeline: one `ADJUST` for every adjustment (grouped by key, and merged
/// where calls share a charge — the calls of one lease do), then the releases.
///
/// Merging refunds of one charge gives back at most what giving them one by one would: the
/// refund rule caps the sum at what is still ahead of now, not each part, so a merge never
/// loosens a limit.
pub(crate) fn add_owed(pipe: &mut Pipeline, owed: &[Owed], _prefix: &str) {
    let mut keys: Vec<(&str, Vec<AdjustEntry>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for o in owed {
        let Owed::Adjust { key, entries } = o else {
            continue;
        };
        let at = *index.entry(&**key).or_insert_with(|| {
            keys.push((&**key, Vec::new()));
            keys.len() - 1
        });
        let merged = &mut keys[at].1;
        for e in entries.iter() {
            match merged.iter_mut().find(|m| {
                m.slot == e.slot
                    && m.ei == e.ei
                    && m.end == e.end
                    && (m.delta > 0.0) == (e.delta > 0.0)
            }) {
                Some(m) => m.delta += e.delta,
                None => merged.push(*e),
            }
        }
    }
    if !keys.is_empty() {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(scripts::ADJUST.get_hash())
            .arg(keys.len());
        for (key, _) in &keys {
            cmd.arg(*key);
        }
        for (_, entries) in &keys {
            cmd.arg(entries.len());
            for e in entries {
                cmd.arg(e.slot)
                    .arg(fmt_us(e.ei))
                    .arg(fmt_us(e.delta))
                    .arg(fmt_us(e.end));
            }
        }
    }
    for o in owed {
        if let Owed::Release { key, member } = o {
            pipe.cmd("ZREM").arg(&**key).arg(&**member);
        }
    }
}

/// Microseconds as the scripts read them: every digit Rust needs to read the same number back
/// (a tiny increment must not round to zero).
pub(crate) fn fmt_us(us: f64) -> String {
    format!("{us}")
}

/// Sends a pipeline (errors of single commands come back as values), once more after loading
/// the scripts when the server lost them. Marks the store down on failure.
pub(crate) async fn exec(shared: &Arc<Shared>, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
    let Some(conn) = shared.conn.load_full() else {
        return Err(StoreError::Unavailable("not connected".to_owned()));
    };
    let mut conn = (*conn).clone();
    for round in 0..2 {
        shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout(
            shared.config.op_timeout,
            pipe.clone()
                .ignore_errors()
                .query_async::<Vec<Value>>(&mut conn),
        )
        .await;
        let values = match sent {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let e = unavailable(e);
                mark_down(shared, &e.to_string());
                return Err(e);
            }
            Err(_) => {
                let e = StoreError::Unavailable(format!(
                    "no answer within op_timeout ({} ms)",
                    shared.config.op_timeout.as_millis()
                ));
                mark_down(shared, &e.to_string());
                return Err(e);
            }
        };
        let noscript = values.iter().any(|v| {
            matches!(v, Value::ServerError(e)
                if e.kind() == Some(redis::ServerErrorKind::NoScript))
        });
        if noscript && round == 0 {
            load_scripts(shared).await?;
            continue;
        }
        if let Some(Value::ServerError(e)) =
            values.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            shared.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(format!(
                "redis refused a command: {} {}",
                e.code(),
                e.details().unwrap_or("")
            )));
        }
        mark_up(shared);
        return Ok(values);
    }
    Err(StoreError::Unavailable(
        "scripts could not be loaded".to_owned(),
    ))
}

/// Takes what is owed (for a pipeline about to be sent).
pub(crate) fn take_owed(shared: &Shared) -> Vec<Owed> {
    std::mem::take(&mut *shared.owed.lock())
}

/// Gives owed work back after a failed send, ahead of what was queued since.
fn give_back(shared: &Shared, mut owed: Vec<Owed>) {
    let mut q = shared.owed.lock();
    owed.append(&mut q);
    let excess = owed.len().saturating_sub(MAX_OWED);
    if excess > 0 {
        owed.drain(..excess);
        shared
            .counters
            .dropped
            .fetch_add(excess as u64, Ordering::Relaxed);
    }
    *q = owed;
}

/// Sends owed work soon after it is queued (batching what arrives meanwhile).
async fn flush_loop(shared: Arc<Shared>) {
    while !shared.closed.load(Ordering::Acquire) {
        tokio::select! {
            () = shared.kick.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if !shared.up.load(Ordering::Acquire) {
            continue;
        }
        // Let a burst of settlements gather into one round trip.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let owed = take_owed(&shared);
        if owed.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        add_owed(&mut pipe, &owed, &shared.config.key_prefix);
        if exec(&shared, &pipe).await.is_err() {
            give_back(&shared, owed);
        }
    }
}

/// Renews the concurrency leases of live permits every third of their lifetime.
async fn renew_loop(shared: Arc<Shared>) {
    let every = shared.config.concurrency_lease / 3;
    let ttl_us = shared.config.concurrency_lease.as_micros() as f64;
    while !shared.closed.load(Ordering::Acquire) {
        tokio::time::sleep(every).await;
        if !shared.up.load(Ordering::Acquire) {
            continue;
        }
        let held: Vec<(Arc<str>, Arc<str>)> = shared
            .leases
            .lock()
            .iter()
            .map(|(m, k)| (Arc::clone(m), Arc::clone(k)))
            .collect();
        for chunk in held.chunks(500) {
            let mut pipe = redis::pipe();
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(scripts::RENEW.get_hash())
                .arg(chunk.len());
            for (_, key) in chunk {
                cmd.arg(&**key);
            }
            cmd.arg(fmt_us(ttl_us));
            for (member, _) in chunk {
                cmd.arg(&**member);
            }
            if exec(&shared, &pipe).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pipe: &Pipeline) -> Vec<Vec<String>> {
        pipe.cmd_iter()
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                        _ => "<other>".to_owned(),
                    })
                    .collect()
            })
            .collect()
    }

    fn adjust(key: &str, slot: u8, delta: f64, end: f64) -> Owed {
        Owed::Adjust {
            key: Arc::from(key),
            entries: smallvec::smallvec![AdjustEntry {
                slot,
                ei: 100.0,
                delta,
                end,
            }],
        }
    }

    #[test]
    fn owed_work_is_grouped_by_key_and_merged_per_charge() {
        let owed = [
            adjust("a", 0, -10.0, 500.0),
            adjust("b", 0, -1.0, 7.0),
            adjust("a", 0, -20.0, 500.0),
            // Same slot, another charge: kept apart (each is capped at its own end).
            adjust("a", 0, -5.0, 900.0),
            // An extra charge is never merged with a refund.
            adjust("a", 0, 3.0, 500.0),
            Owed::Release {
                key: Arc::from("g"),
                member: Arc::from("m1"),
            },
        ];
        let mut pipe = redis::pipe();
        add_owed(&mut pipe, &owed, "p");
        let cmds = args(&pipe);
        assert_eq!(cmds.len(), 2, "one ADJUST and one ZREM: {cmds:?}");
        let a = &cmds[0];
        assert_eq!(a[0], "EVALSHA");
        assert_eq!(&a[2..5], ["2", "a", "b"]);
        assert_eq!(
            &a[5..],
            [
                "3", "0", "100", "-30", "500", "0", "100", "-5", "900", "0", "100", "3", "500",
                "1", "0", "100", "-1", "7"
            ]
        );
        assert_eq!(cmds[1], ["ZREM", "g", "m1"]);
    }

    #[test]
    fn tiny_increments_keep_their_digits() {
        assert_eq!(fmt_us(0.00006), "0.00006");
        assert_eq!(fmt_us(600000.0), "600000");
        assert_eq!(fmt_us(93_312_345_678.125), "93312345678.125");
    }
}
