//! The batch journal: what was sent and what came back, in SQLite (WAL, synchronous=NORMAL).
//!
//! One row per input line in `sent` when its call starts and in `result` when its answer is
//! recorded, keyed by the line number (the input is pinned by its hash, so line numbers are
//! stable across runs). The output file is only a copy of `result`: it is rebuilt from the
//! journal when a run resumes ([`Journal::rebuild_output`]), so a line torn by a crash is
//! repaired and none is written twice.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

/// The journal's file inside its directory.
pub const FILE: &str = "journal.sqlite";

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// SQLite refused: unreadable, not a database, disk full.
    #[error(
        "journal {path}: {source}; if the file is damaged, move it aside (the next run starts \
         afresh and sends every line again)"
    )]
    Sqlite {
        /// The journal's file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The directory could not be made.
    #[error("journal directory {path}: {source}")]
    Dir {
        /// The directory (or its lock file).
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error(
        "journal {path} is in use by another tollgate batch; wait for it to end (or stop it \
         with SIGTERM) before running this one"
    )]
    InUse {
        /// The journal's directory.
        path: PathBuf,
    },
    /// The journal belongs to another input file.
    #[error(
        "journal {journal} records a batch of {recorded} (content hash {recorded_hash}), but \
         the input {given} has content hash {given_hash}; give the same input to resume, or \
         another --journal (or --out) for a new batch"
    )]
    OtherInput {
        /// The journal's file.
        journal: PathBuf,
        /// The input it records.
        recorded: String,
        /// That input's content hash.
        recorded_hash: String,
        /// The input given now.
        given: String,
        /// Its content hash.
        given_hash: String,
    },
}

/// One request's answer (or error), as recorded in the journal and handed out by
/// [`super::Results`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult {
    /// The request's place in the input ([`super::BatchRequest::seq`]).
    pub seq: u64,
    /// The request's `custom_id`, when it had a usable one.
    pub custom_id: Option<String>,
    /// `ok`, or the error code (`invalid_line` for a [`super::BadLine`]).
    pub status: String,
    /// The request's model, when known.
    pub model: Option<String>,
    /// Tokens charged.
    pub tokens: u64,
    /// Money charged.
    pub spend: f64,
    /// Wall time of the call, in ms (0 for lines never sent).
    pub latency_ms: f64,
    /// The output line in the Batch API's output format plus `usage`, `cost` and `attempts`
    /// (`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error",
    /// "usage", "cost", "attempts"}`; JSON, no newline).
    pub output: String,
}

impl BatchResult {
    /// Whether the call answered with a success.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// An open journal: what was sent and what came back, in one directory. One process at a time
/// holds it (a lock file); the kernel drops the lock however the process ends.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    /// `DIR/lock`, locked (flock) for as long as the journal is open: one process at a time.
    _lock: File,
}

/// Takes the journal directory's lock file, without waiting. The kernel drops the lock when
/// the process ends, however it ends.
fn lock(dir: &Path) -> Result<File, JournalError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| JournalError::Dir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock(2) on a descriptor this function owns, open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(JournalError::InUse {
            path: dir.to_path_buf(),
        });
    }
    Ok(file)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. A damaged file is a clear error
    /// ([`JournalError::Sqlite`], saying to move it aside), never a silent fresh start.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock(dir)?;
        let path = dir.join(FILE);
        let err = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        // journal_mode answers with a row; the others do not.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(err)?;
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS sent (
                 line INTEGER PRIMARY KEY, custom_id TEXT, times INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS result (
                 line INTEGER PRIMARY KEY, custom_id TEXT, status TEXT NOT NULL, model TEXT,
                 tokens INTEGER NOT NULL, spend REAL NOT NULL, latency_ms REAL NOT NULL,
                 output TEXT NOT NULL);",
        )
        .map_err(err)?;
        Ok(Journal {
            conn,
            path,
            _lock: lock,
        })
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Pins the journal to this input (a name and a content hash) on first use; refuses
    /// another ([`JournalError::OtherInput`]), so `seq` numbers keep their meaning across runs.
    pub fn bind_input(&self, input: &str, hash: &str) -> Result<(), JournalError> {
        let get = |key: &str| -> Result<Option<String>, JournalError> {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))
        };
        match get("input_hash")? {
            Some(recorded_hash) if recorded_hash != hash => Err(JournalError::OtherInput {
                journal: self.path.clone(),
                recorded: get("input_path")?.unwrap_or_default(),
                recorded_hash,
                given: input.to_owned(),
                given_hash: hash.to_owned(),
            }),
            Some(_) => Ok(()),
            None => {
                self.conn
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES
                         ('input_path', ?1), ('input_hash', ?2)",
                        params![input, hash],
                    )
                    .map_err(|e| self.err(e))?;
                Ok(())
            }
        }
    }

    /// The `seq` of every request whose answer is recorded.
    pub fn answered(&self) -> Result<HashSet<u64>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT line FROM result")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(|e| self.err(e))?;
        let mut done = HashSet::new();
        for r in rows {
            done.insert(r.map_err(|e| self.err(e))? as u64);
        }
        Ok(done)
    }

    /// Every recorded answer, in `seq` order.
    pub fn results(&self) -> Result<Vec<BatchResult>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT line, custom_id, status, model, tokens, spend, latency_ms, output
                 FROM result ORDER BY line",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(BatchResult {
                    seq: r.get::<_, i64>(0)? as u64,
                    custom_id: r.get(1)?,
                    status: r.get(2)?,
                    model: r.get(3)?,
                    tokens: r.get::<_, i64>(4)? as u64,
                    spend: r.get(5)?,
                    latency_ms: r.get(6)?,
                    output: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    /// How many times the call of `seq` was sent (0: never); more than 1 after a crash or a
    /// stop while it was in flight.
    pub fn times_sent(&self, seq: u64) -> Result<u64, JournalError> {
        self.conn
            .query_row(
                "SELECT times FROM sent WHERE line = ?1",
                [seq as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|t| t.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Writes every recorded output line to `out` (replaced whole, through a temporary file
    /// beside it, so a crash leaves the old file or the new one). Returns how many.
    pub fn rebuild_output(&self, out: &Path) -> Result<u64, std::io::Error> {
        let tmp = out.with_extension("jsonl.rebuild");
        let mut w = BufWriter::new(File::create(&tmp)?);
        let mut stmt = self
            .conn
            .prepare("SELECT output FROM result ORDER BY line")
            .map_err(std::io::Error::other)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(std::io::Error::other)?;
        let mut n = 0;
        for r in rows {
            let line = r.map_err(std::io::Error::other)?;
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
            n += 1;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, out)?;
        Ok(n)
    }

    /// Records calls about to be sent and answers, in one transaction.
    fn record(
        &mut self,
        sent: &[(u64, String)],
        records: &[BatchResult],
    ) -> Result<(), JournalError> {
        let path = self.path.clone();
        let err = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO sent (line, custom_id, times) VALUES (?1, ?2, 1)
                     ON CONFLICT(line) DO UPDATE SET times = times + 1",
                )
                .map_err(err)?;
            for (line, id) in sent {
                stmt.execute(params![*line as i64, id]).map_err(err)?;
            }
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO result
                     (line, custom_id, status, model, tokens, spend, latency_ms, output)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for r in records {
                stmt.execute(params![
                    r.seq as i64,
                    r.custom_id,
                    r.status,
                    r.model,
                    r.tokens as i64,
                    r.spend,
                    r.latency_ms,
                    r.output
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

/// What the writer thread is told.
pub(super) enum Msg {
    /// A call is about to go out.
    Sent(u64, String),
    /// An answer to record, then hand on.
    Result(BatchResult),
}

/// Runs the journal's writer: takes messages until every sender is gone, records them in small
/// groups (one transaction for what has queued up, at most 256 rows) and hands each recorded
/// result on to `done` after its commit. Without a journal, results are handed on at once.
/// Returns the first error, after which nothing more is recorded or handed on.
pub(super) fn write_loop(
    mut journal: Option<Journal>,
    rx: std::sync::mpsc::Receiver<Msg>,
    done: tokio::sync::mpsc::UnboundedSender<BatchResult>,
) -> Result<(), JournalError> {
    let mut sent = Vec::new();
    let mut results = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Sent(line, id) => sent.push((line, id)),
                Msg::Result(r) => results.push(r),
            }
            if sent.len() + results.len() >= 256 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Some(j) = journal.as_mut() {
            j.record(&sent, &results)?;
        }
        sent.clear();
        for r in results.drain(..) {
            let _ = done.send(r);
        }
    }
    Ok(())
}
