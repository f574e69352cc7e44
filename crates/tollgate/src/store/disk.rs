//! The response cache's disk level: one SQLite file in WAL mode, shared by every process on
//! the host that names the same path, looked up after the memory level (and Redis) miss.
//!
//! # Layout
//!
//! Table `tollgate_cache`: the 16-byte key (big endian), the wall-clock millisecond the answer
//! was stored, an XXH3-64 checksum of the row (key, time, value), and the value — the same
//! encoding as the Redis level ([`super::cache::encode`]), so a stream is kept as its events.
//! `tollgate_cache_meta` holds the scheme version and the total bytes of values, kept exact by
//! triggers inside each write transaction, so every process sees the same total.
//!
//! # Reads and writes
//!
//! Lookups run on the caller's thread, each on a pooled read connection (WAL readers never wait
//! for the writer). A row whose checksum or encoding does not match is a miss and is deleted.
//! Writes never run on the caller's path: answers go through a bounded queue (full: dropped) to
//! a writer thread (`tollgate-disk-cache`) that writes what is queued in one transaction, then
//! deletes expired rows (older than the TTL plus the policy's `stale_if_error` window, so an
//! expired answer can still serve when every target fails) and, while the total is over
//! `max_bytes`, the oldest ones. A crash loses at most the transaction being written.
//!
//! # Time
//!
//! Rows carry wall-clock milliseconds so they keep their age across restarts; the engine's
//! clock supplies "now" as `wall time at start + clock.now()`, so a manual clock moves it.
//!
//! # A bad file
//!
//! A file that is not a database or is corrupt at open is moved aside
//! (`<path>.corrupt-<unix ms>`, with its `-wal` and `-shm`) and a fresh one is started: the
//! cache is disposable and a host should not stop over it. A file that is a database of
//! something else is left alone and the disk level stays off ([`DiskState::Unavailable`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use xxhash_rust::xxh3::Xxh3Default;

use super::cache::{decode, encode};
use crate::cache::{CacheKey, CachedResponse};
use crate::clock::Nanos;

/// Scheme of the tables; a file with another version is started afresh.
const VERSION: i64 = 1;
/// Answers queued for the writer at most; beyond that they are not written to disk.
const QUEUE: usize = 1024;
/// Writes batched into one transaction at most.
const BATCH: usize = 256;
/// How often the writer deletes expired rows when idle.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per statement while over the byte bound.
const EVICT_STEP: i64 = 64;
/// How long a statement waits for another process's write lock before giving up.
const BUSY: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tollgate_cache (
    key BLOB NOT NULL PRIMARY KEY,
    stored_ms INTEGER NOT NULL,
    sum INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tollgate_cache_by_age ON tollgate_cache (stored_ms);
CREATE TABLE IF NOT EXISTS tollgate_cache_meta (k TEXT NOT NULL PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO tollgate_cache_meta VALUES ('version', 1), ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS tollgate_cache_ins AFTER INSERT ON tollgate_cache BEGIN
    UPDATE tollgate_cache_meta SET v = v + length(NEW.value) WHERE k = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS tollgate_cache_del AFTER DELETE ON tollgate_cache BEGIN
    UPDATE tollgate_cache_meta SET v = v - length(OLD.value) WHERE k = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS tollgate_cache_upd AFTER UPDATE ON tollgate_cache BEGIN
    UPDATE tollgate_cache_meta SET v = v - length(OLD.value) + length(NEW.value)
    WHERE k = 'bytes';
END;
";

/// How the disk level of the cache came up (see [`Engine::cache_disk_state`]).
///
/// [`Engine::cache_disk_state`]: crate::Engine::cache_disk_state
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskState {
    /// The file opened as it was.
    Open {
        /// The database file.
        path: PathBuf,
    },
    /// The file was unreadable or corrupt: it was moved aside and an empty cache started.
    Reset {
        /// The database file (now a fresh one).
        path: PathBuf,
        /// Where the bad file went.
        moved_to: PathBuf,
        /// What SQLite said about it.
        reason: String,
    },
    /// The file could not be used (a directory that cannot be created, permissions, a
    /// database of something else); the cache runs without its disk level.
    Unavailable {
        /// The database file.
        path: PathBuf,
        /// Why, and what to do.
        error: String,
    },
}

enum Msg {
    Put {
        key: CacheKey,
        stored_ms: i64,
        response: Arc<CachedResponse>,
    },
    /// A row that failed its checksum or decoding: deleted only if it is still that row.
    Delete(CacheKey, i64),
    Limits {
        max_bytes: u64,
        /// Rows older than this are deleted: the TTL plus the stale-if-error window.
        keep_ms: u64,
    },
    Flush(SyncSender<()>),
}

/// The disk level: a pool of read connections and the writer thread's queue.
pub(crate) struct DiskCache {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    queue: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    ttl_ms: AtomicU64,
    /// The stale-if-error window after the TTL.
    stale_ms: AtomicU64,
    max_bytes: AtomicU64,
    /// Wall-clock milliseconds at the engine clock's zero.
    base_ms: i64,
    state: DiskState,
    counters: DiskCounters,
}

/// What the disk level did since it opened, for the metrics.
#[derive(Debug, Default)]
struct DiskCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
}

/// The disk level's counters and size at one moment (`tollgate_cache_disk_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DiskStats {
    /// Open and writable.
    pub up: bool,
    /// Lookups answered by the file (fresh).
    pub hits: u64,
    /// Lookups the file could not answer.
    pub misses: u64,
    /// Expired answers served by stale-if-error.
    pub stale_hits: u64,
    /// Answers queued for writing.
    pub queued: u64,
    /// Answers not written: the writer's queue was full.
    pub dropped: u64,
    /// Rows that failed their checksum or decoding (never served, deleted).
    pub corrupt: u64,
    /// Bytes of values in the file (every process's), when it could be read.
    pub bytes: Option<i64>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("path", &self.path)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn key_bytes(key: CacheKey) -> [u8; 16] {
    key.0.to_be_bytes()
}

/// The checksum of a row: key, time and value, so a flipped byte anywhere in it is caught.
fn checksum(key: &[u8], stored_ms: i64, value: &[u8]) -> i64 {
    let mut h = Xxh3Default::new();
    h.update(key);
    h.update(&stored_ms.to_le_bytes());
    h.update(value);
    h.digest() as i64
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(BUSY)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

/// Opens (or creates) the file and its tables; `Err(true, ..)` when the file is corrupt or not
/// a database.
fn open_db(path: &Path) -> Result<Connection, (bool, String)> {
    let bad = |e: rusqlite::Error| {
        let corrupt = matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
        );
        (corrupt, e.to_string())
    };
    let c = connect(path).map_err(bad)?;
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(bad)?;
    if !tables.is_empty() && !tables.iter().any(|t| t == "tollgate_cache_meta") {
        return Err((
            false,
            format!(
                "{} is a database of something else (tables: {}); give [cache] disk a path of \
                 its own",
                path.display(),
                tables.join(", ")
            ),
        ));
    }
    c.execute_batch(SCHEMA).map_err(bad)?;
    let version: i64 = c
        .query_row(
            "SELECT v FROM tollgate_cache_meta WHERE k = 'version'",
            [],
            |r| r.get(0),
        )
        .map_err(bad)?;
    if version != VERSION {
        return Err((
            true,
            format!("cache file version {version}, expected {VERSION}"),
        ));
    }
    Ok(c)
}

/// Moves a bad file and its WAL and shared-memory files aside; the new name.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{}", wall_ms()));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    for ext in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(ext);
        let mut to = aside.as_os_str().to_owned();
        to.push(ext);
        let _ = std::fs::rename(from, to);
    }
    Ok(aside)
}

impl DiskCache {
    /// Opens the cache file at `path` (see the [module docs](self) for a bad file). `now` is the
    /// engine clock's reading at this moment.
    pub(crate) fn open(
        path: &Path,
        max_bytes: u64,
        (ttl, stale): (Duration, Duration),
        now: Nanos,
    ) -> DiskCache {
        let base_ms = wall_ms() - i64::try_from(now / 1_000_000).unwrap_or(0);
        let mut cache = DiskCache {
            path: path.to_owned(),
            readers: Mutex::new(Vec::new()),
            queue: None,
            writer: None,
            ttl_ms: AtomicU64::new(duration_ms(ttl)),
            stale_ms: AtomicU64::new(duration_ms(stale)),
            max_bytes: AtomicU64::new(max_bytes),
            base_ms,
            state: DiskState::Open {
                path: path.to_owned(),
            },
            counters: DiskCounters::default(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            cache.state = DiskState::Unavailable {
                path: path.to_owned(),
                error: format!("cannot create {}: {e}", dir.display()),
            };
            return cache;
        }
        let conn = match open_db(path) {
            Ok(c) => c,
            Err((true, reason)) => {
                let moved = move_aside(path).map_err(|e| e.to_string());
                match moved.and_then(|to| open_db(path).map(|c| (c, to)).map_err(|e| e.1)) {
                    Ok((c, moved_to)) => {
                        cache.state = DiskState::Reset {
                            path: path.to_owned(),
                            moved_to,
                            reason,
                        };
                        c
                    }
                    Err(e) => {
                        cache.state = DiskState::Unavailable {
                            path: path.to_owned(),
                            error: format!("{reason}; starting afresh failed too: {e}"),
                        };
                        return cache;
                    }
                }
            }
            Err((false, error)) => {
                cache.state = DiskState::Unavailable {
                    path: path.to_owned(),
                    error,
                };
                return cache;
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let limits = (
            max_bytes,
            duration_ms(ttl).saturating_add(duration_ms(stale)),
        );
        let writer = std::thread::Builder::new()
            .name("tollgate-disk-cache".into())
            .spawn(move || write_loop(conn, rx, limits));
        if let Ok(handle) = writer {
            cache.queue = Some(tx);
            cache.writer = Some(handle);
        } else {
            cache.state = DiskState::Unavailable {
                path: path.to_owned(),
                error: "cannot start the disk cache's writer thread".into(),
            };
        }
        cache
    }

    /// How the file came up.
    pub(crate) fn state(&self) -> &DiskState {
        &self.state
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn usable(&self) -> bool {
        self.queue.is_some()
    }

    fn now_ms(&self, now: Nanos) -> i64 {
        self.base_ms + i64::try_from(now / 1_000_000).unwrap_or(i64::MAX / 2)
    }

    /// New limits after a reload.
    pub(crate) fn set_limits(&self, max_bytes: u64, (ttl, stale): (Duration, Duration)) {
        let (ttl_ms, stale_ms) = (duration_ms(ttl), duration_ms(stale));
        self.max_bytes.store(max_bytes, Relaxed);
        self.ttl_ms.store(ttl_ms, Relaxed);
        self.stale_ms.store(stale_ms, Relaxed);
        self.send(Msg::Limits {
            max_bytes,
            keep_ms: ttl_ms.saturating_add(stale_ms),
        });
    }

    /// A fresh answer for `key` and its age, or `None` (not stored, expired, unreadable, or a
    /// row that fails its checksum, which is then deleted).
    pub(crate) fn get(&self, key: CacheKey, now: Nanos) -> Option<(CachedResponse, Duration)> {
        let ttl = self.ttl_ms.load(Relaxed);
        let found = self.read(key, now).filter(|(_, age)| *age < ttl);
        let counter = match found {
            Some(_) => &self.counters.hits,
            None => &self.counters.misses,
        };
        counter.fetch_add(1, Relaxed);
        found.map(|(r, age)| (r, Duration::from_millis(age)))
    }

    /// Stale-if-error: an answer for `key` past its TTL but within the stale window (or still
    /// fresh), or `None`.
    pub(crate) fn get_stale(&self, key: CacheKey, now: Nanos) -> Option<CachedResponse> {
        let keep = self
            .ttl_ms
            .load(Relaxed)
            .saturating_add(self.stale_ms.load(Relaxed));
        let found = self.read(key, now).filter(|(_, age)| *age < keep)?;
        self.counters.stale_hits.fetch_add(1, Relaxed);
        Some(found.0)
    }

    /// The counters, and the bytes stored (one read of the file's total).
    pub(crate) fn stats(&self) -> DiskStats {
        let c = &self.counters;
        let bytes = self.usable().then(|| self.stored_bytes()).flatten();
        DiskStats {
            up: self.usable(),
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            stale_hits: c.stale_hits.load(Relaxed),
            queued: c.queued.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            bytes,
        }
    }

    fn stored_bytes(&self) -> Option<i64> {
        let conn = match self.readers.lock().pop() {
            Some(c) => c,
            None => connect(&self.path).ok()?,
        };
        let bytes = conn
            .prepare_cached("SELECT v FROM tollgate_cache_meta WHERE k = 'bytes'")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .ok();
        self.readers.lock().push(conn);
        bytes
    }

    /// The stored answer for `key` and its age in ms, whatever its age.
    fn read(&self, key: CacheKey, now: Nanos) -> Option<(CachedResponse, u64)> {
        if !self.usable() {
            return None;
        }
        let conn = match self.readers.lock().pop() {
            Some(c) => c,
            None => connect(&self.path).ok()?,
        };
        let k = key_bytes(key);
        let row = conn
            .prepare_cached("SELECT stored_ms, sum, value FROM tollgate_cache WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row(params![&k[..]], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()
            });
        self.readers.lock().push(conn);
        let (stored_ms, sum, value) = row.ok()??;
        let response = (checksum(&k, stored_ms, &value) == sum)
            .then(|| decode(&value))
            .flatten();
        let Some(response) = response else {
            self.counters.corrupt.fetch_add(1, Relaxed);
            self.send(Msg::Delete(key, sum));
            return None;
        };
        let age = u64::try_from(self.now_ms(now) - stored_ms).unwrap_or(0);
        Some((response, age))
    }

    /// Queues `response` for writing under `key`, stored at `now`; never blocks (a full queue
    /// drops it).
    pub(crate) fn put(&self, key: CacheKey, response: Arc<CachedResponse>, now: Nanos) {
        let stored_ms = self.now_ms(now);
        let queued = self.send(Msg::Put {
            key,
            stored_ms,
            response,
        });
        let counter = if queued {
            &self.counters.queued
        } else {
            &self.counters.dropped
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Waits until everything queued so far is written (or the writer is gone).
    pub(crate) fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if let Some(q) = &self.queue
            && q.send(Msg::Flush(tx)).is_ok()
        {
            let _ = rx.recv();
        }
    }

    /// Queues a message for the writer; false when it was dropped (a full queue, no writer).
    fn send(&self, msg: Msg) -> bool {
        match &self.queue {
            Some(q) => match q.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The writer thread: batches queued messages into one transaction each, then sweeps.
fn write_loop(mut conn: Connection, rx: Receiver<Msg>, limits: (u64, u64)) {
    let (mut max_bytes, mut keep_ms) = limits;
    let mut now_ms = 0;
    loop {
        let first = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Msg> = first.into_iter().collect();
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let _ = write_batch(
            &mut conn,
            batch,
            &mut flushes,
            (&mut max_bytes, &mut keep_ms),
            &mut now_ms,
        );
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: Vec<Msg>,
    flushes: &mut Vec<SyncSender<()>>,
    (max_bytes, keep_ms): (&mut u64, &mut u64),
    now_ms: &mut i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for msg in batch {
        match msg {
            Msg::Put {
                key,
                stored_ms,
                response,
            } => {
                let k = key_bytes(key);
                let value = encode(&response);
                let sum = checksum(&k, stored_ms, &value);
                tx.prepare_cached(
                    "INSERT INTO tollgate_cache (key, stored_ms, sum, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key) DO UPDATE SET
                         stored_ms = excluded.stored_ms, sum = excluded.sum, value = excluded.value",
                )?
                .execute(params![&k[..], stored_ms, sum, value])?;
                *now_ms = (*now_ms).max(stored_ms);
            }
            Msg::Delete(key, sum) => {
                tx.prepare_cached("DELETE FROM tollgate_cache WHERE key = ?1 AND sum = ?2")?
                    .execute(params![&key_bytes(key)[..], sum])?;
            }
            Msg::Limits {
                max_bytes: m,
                keep_ms: t,
            } => {
                *max_bytes = m;
                *keep_ms = t;
            }
            Msg::Flush(done) => flushes.push(done),
        }
    }
    // Expired rows: by the later of the wall clock and the newest row written (a manual clock
    // may run ahead of the wall).
    let now = (*now_ms).max(wall_ms());
    let cutoff = now.saturating_sub(i64::try_from(*keep_ms).unwrap_or(i64::MAX));
    tx.prepare_cached("DELETE FROM tollgate_cache WHERE stored_ms <= ?1")?
        .execute(params![cutoff])?;
    let limit = i64::try_from(*max_bytes).unwrap_or(i64::MAX);
    loop {
        let bytes: i64 = tx
            .prepare_cached("SELECT v FROM tollgate_cache_meta WHERE k = 'bytes'")?
            .query_row([], |r| r.get(0))?;
        if bytes <= limit {
            break;
        }
        let gone = tx
            .prepare_cached(
                "DELETE FROM tollgate_cache WHERE rowid IN
                     (SELECT rowid FROM tollgate_cache ORDER BY stored_ms LIMIT ?1)",
            )?
            .execute(params![EVICT_STEP.min(1.max((bytes - limit) / 1024))])?;
        if gone == 0 {
            break;
        }
    }
    tx.commit()
}

/// Bytes of values stored in the file at `path` (what the bound counts), for tests and reports.
pub fn stored_bytes(path: &Path) -> Option<i64> {
    let c = connect(path).ok()?;
    c.query_row(
        "SELECT v FROM tollgate_cache_meta WHERE k = 'bytes'",
        [],
        |r| r.get(0),
    )
    .ok()
}
