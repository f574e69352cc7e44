//! Embedded store measurements for decision 0014: small journal-like writes, 4 KB lookups by
//! key, and two processes on one file. Prints a Markdown table.
//!
//! `cargo run --release --manifest-path tools/store-bench/Cargo.toml [dir]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redb::{Database, Durability, TableDefinition};
use rusqlite::{Connection, OptionalExtension, params};

const RECORDS: usize = 20_000;
const BATCH: usize = 1_000;
const ENTRIES: usize = 10_000;
const LOOKUPS: usize = 100_000;
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");

fn record(i: usize) -> Vec<u8> {
    let mut s = format!(
        "{{\"seq\":{i},\"tenant\":\"tenant-{}\",\"model\":\"gpt-4o\",\"status\":200,\
         \"prompt_tokens\":1234,\"completion_tokens\":56,\"cost\":0.00392,\"pad\":\"",
        i % 97
    );
    while s.len() < 198 {
        s.push('x');
    }
    s.push_str("\"}");
    s.into_bytes()
}

fn key(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    // A spread like XXH3 output, without the dependency.
    let x = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
    k.copy_from_slice(&x.to_le_bytes());
    k
}

fn open_sqlite(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    c.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    c.busy_timeout(Duration::from_secs(5)).expect("busy");
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, rec BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS entries (k BLOB NOT NULL PRIMARY KEY, v BLOB NOT NULL);",
    )
    .expect("schema");
    c
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0} /s", n as f64 / d.as_secs_f64())
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn sqlite(dir: &Path) -> Vec<(String, String, String)> {
    let path = dir.join("bench.sqlite");
    let _ = std::fs::remove_file(&path);
    let c = open_sqlite(&path);
    let mut out = Vec::new();

    let t = Instant::now();
    {
        let mut st = c
            .prepare("INSERT INTO journal (rec) VALUES (?1)")
            .expect("prep");
        for i in 0..RECORDS {
            st.execute(params![record(i)]).expect("insert");
        }
    }
    out.push((
        "SQLite WAL, sync=NORMAL".into(),
        "200 B record, 1 tx each".into(),
        rate(RECORDS, t.elapsed()),
    ));

    c.pragma_update(None, "synchronous", "FULL").expect("sync");
    let t = Instant::now();
    {
        let mut st = c
            .prepare("INSERT INTO journal (rec) VALUES (?1)")
            .expect("prep");
        for i in 0..2_000 {
            st.execute(params![record(i)]).expect("insert");
        }
    }
    out.push((
        "SQLite WAL, sync=FULL".into(),
        "200 B record, 1 tx each (fsync)".into(),
        rate(2_000, t.elapsed()),
    ));
    c.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");

    let t = Instant::now();
    for b in 0..RECORDS / BATCH {
        c.execute_batch("BEGIN").expect("begin");
        {
            let mut st = c
                .prepare_cached("INSERT INTO journal (rec) VALUES (?1)")
                .expect("prep");
            for i in 0..BATCH {
                st.execute(params![record(b * BATCH + i)]).expect("insert");
            }
        }
        c.execute_batch("COMMIT").expect("commit");
    }
    out.push((
        "SQLite WAL, sync=NORMAL".into(),
        format!("200 B record, {BATCH} per tx"),
        rate(RECORDS, t.elapsed()),
    ));

    let value = vec![7u8; 4096];
    c.execute_batch("BEGIN").expect("begin");
    {
        let mut st = c
            .prepare("INSERT OR REPLACE INTO entries (k, v) VALUES (?1, ?2)")
            .expect("prep");
        for i in 0..ENTRIES {
            st.execute(params![&key(i)[..], &value]).expect("insert");
        }
    }
    c.execute_batch("COMMIT").expect("commit");
    let mut lat = Vec::with_capacity(LOOKUPS);
    let mut st = c
        .prepare("SELECT v FROM entries WHERE k = ?1")
        .expect("prep");
    for i in 0..LOOKUPS {
        let k = key((i * 7919) % ENTRIES);
        let t = Instant::now();
        let v: Option<Vec<u8>> = st
            .query_row(params![&k[..]], |r| r.get(0))
            .optional()
            .expect("get");
        lat.push(t.elapsed());
        assert_eq!(v.map(|v| v.len()), Some(4096));
    }
    out.push((
        "SQLite WAL".into(),
        format!("4 KB entry by 16 B key ({ENTRIES} entries)"),
        format!(
            "median {:?}, p99 {:?}",
            percentile(lat.clone(), 0.5),
            percentile(lat, 0.99)
        ),
    ));
    out
}

fn redb_bench(dir: &Path) -> Vec<(String, String, String)> {
    let path = dir.join("bench.redb");
    let _ = std::fs::remove_file(&path);
    let db = Database::create(&path).expect("create");
    let mut out = Vec::new();
    for (name, durability, n) in [
        (
            "redb, Durability::Immediate",
            Durability::Immediate,
            2_000usize,
        ),
        ("redb, Durability::Eventual", Durability::Eventual, RECORDS),
    ] {
        let t = Instant::now();
        for i in 0..n {
            let mut tx = db.begin_write().expect("tx");
            tx.set_durability(durability);
            {
                let mut table = tx.open_table(TABLE).expect("table");
                table
                    .insert(&(i as u64).to_be_bytes()[..], &record(i)[..])
                    .expect("insert");
            }
            tx.commit().expect("commit");
        }
        out.push((
            name.into(),
            "200 B record, 1 tx each".into(),
            rate(n, t.elapsed()),
        ));
    }
    let t = Instant::now();
    for b in 0..RECORDS / BATCH {
        let tx = db.begin_write().expect("tx");
        {
            let mut table = tx.open_table(TABLE).expect("table");
            for i in 0..BATCH {
                let seq = (1_000_000 + b * BATCH + i) as u64;
                table
                    .insert(&seq.to_be_bytes()[..], &record(i)[..])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    out.push((
        "redb, Durability::Immediate".into(),
        format!("200 B record, {BATCH} per tx"),
        rate(RECORDS, t.elapsed()),
    ));

    let value = vec![7u8; 4096];
    let tx = db.begin_write().expect("tx");
    {
        let mut table = tx.open_table(TABLE).expect("table");
        for i in 0..ENTRIES {
            table.insert(&key(i)[..], &value[..]).expect("insert");
        }
    }
    tx.commit().expect("commit");
    let mut lat = Vec::with_capacity(LOOKUPS);
    for i in 0..LOOKUPS {
        let k = key((i * 7919) % ENTRIES);
        let t = Instant::now();
        let tx = db.begin_read().expect("read");
        let table = tx.open_table(TABLE).expect("table");
        let v = table.get(&k[..]).expect("get").map(|v| v.value().to_vec());
        lat.push(t.elapsed());
        assert_eq!(v.map(|v| v.len()), Some(4096));
    }
    out.push((
        "redb".into(),
        format!("4 KB entry by 16 B key ({ENTRIES} entries)"),
        format!(
            "median {:?}, p99 {:?}",
            percentile(lat.clone(), 0.5),
            percentile(lat, 0.99)
        ),
    ));
    // A second opener of the same file, as a second process would be.
    let second = match Database::create(&path) {
        Ok(_) => "opened".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    out.push(("redb".into(), "second open of the same file".into(), second));
    out
}

/// Writes and reads `entries` for `secs` seconds; prints "writes reads errors".
fn worker(path: &Path, id: usize, secs: u64) {
    let c = open_sqlite(path);
    let value = vec![id as u8; 4096];
    let (mut writes, mut reads, mut errors) = (0usize, 0usize, 0usize);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0;
    while Instant::now() < end {
        let k = key(id * 1_000_000 + i);
        match c.execute(
            "INSERT OR REPLACE INTO entries (k, v) VALUES (?1, ?2)",
            params![&k[..], &value],
        ) {
            Ok(_) => writes += 1,
            Err(_) => errors += 1,
        }
        // Read one of the other process's entries (written earlier) and one of ours.
        for k in [key((1 - id) * 1_000_000 + i / 2), k] {
            match c
                .query_row(
                    "SELECT length(v) FROM entries WHERE k = ?1",
                    params![&k[..]],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
            {
                Ok(_) => reads += 1,
                Err(_) => errors += 1,
            }
        }
        i += 1;
    }
    println!("{writes} {reads} {errors}");
}

fn two_processes(dir: &Path) -> Vec<(String, String, String)> {
    let path = dir.join("shared.sqlite");
    let _ = std::fs::remove_file(&path);
    drop(open_sqlite(&path));
    let exe = std::env::current_exe().expect("exe");
    let children: Vec<_> = (0..2)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--worker",
                    &id.to_string(),
                    path.to_str().expect("utf-8 path"),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut cells = Vec::new();
    for (id, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let n: Vec<usize> = text.split(' ').filter_map(|x| x.parse().ok()).collect();
        cells.push((
            "SQLite WAL, 2 processes".into(),
            format!("process {id}: 4 KB upserts + 2 reads each, 3 s"),
            format!(
                "{} writes/s, {} reads/s, {} errors",
                n[0] / 3,
                n[1] / 3,
                n[2]
            ),
        ));
    }
    cells
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        worker(Path::new(&args[3]), args[2].parse().expect("id"), 3);
        return;
    }
    let dir = args
        .get(1)
        .map_or_else(|| std::env::temp_dir().join("store-bench"), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut rows = sqlite(&dir);
    rows.extend(redb_bench(&dir));
    rows.extend(two_processes(&dir));
    println!("| store | operation | result |\n|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}
