//! The cache's disk level (`[cache] disk`): survives restarts, shared by engines on one file,
//! TTL and byte bound, corrupt rows and files, two processes on one file (the lookup order
//! memory -> Redis -> disk is in tests/redis.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate::cache::{CacheMode, CachedResponse, SseEvent};
use tollgate::clock::ManualClock;
use tollgate::store::{DiskState, disk_cache_bytes};
use tollgate::tokens::Usage;
use tollgate::{CacheLookup, ChatRequest, Engine, Policy};

/// A fresh directory for one test's file.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn policy(path: &Path, extra: &str) -> Policy {
    let text = format!(
        "version = 1\n[cache]\nenabled = true\nttl = \"10m\"\nmax_entry_bytes = \"8KB\"\n\
         disk = {{ path = \"{}\", max_bytes = \"1MB\" }}\n{extra}",
        path.display()
    );
    Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn engine_with(path: &Path, extra: &str) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (
        Engine::with_clock(policy(path, extra), clock.clone()),
        clock,
    )
}

fn engine(path: &Path) -> (Engine, Arc<ManualClock>) {
    engine_with(path, "")
}

fn request(content: &str) -> serde_json::Value {
    json!({"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

fn store(e: &Engine, req: &serde_json::Value, response: CachedResponse) {
    match e.cache_lookup(req, CacheMode::Default) {
        CacheLookup::Miss(fill) => e.cache_store(fill, response).expect("stored"),
        other => panic!("a miss first, got {other:?}"),
    }
}

fn hit(e: &Engine, req: &serde_json::Value) -> Option<Arc<CachedResponse>> {
    match e.cache_lookup(req, CacheMode::Default) {
        CacheLookup::Hit(r) => Some(r),
        CacheLookup::Miss(_) => None,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_answer_survives_a_restart() {
    let d = dir("restart");
    let path = d.join("cache.db");
    let (a, _) = engine(&path);
    assert!(matches!(a.cache_disk_state(), Some(DiskState::Open { .. })));
    store(
        &a,
        &request("q"),
        CachedResponse::new(200, &b"{\"a\":1}"[..]),
    );
    a.cache_flush();
    drop(a);
    let (b, _) = engine(&path);
    let r = hit(&b, &request("q")).expect("a new engine finds it on disk");
    assert_eq!(&*r.body, b"{\"a\":1}");
    // Now in memory too: the next lookup is a memory hit.
    let before = b.cache_stats();
    assert!(hit(&b, &request("q")).is_some());
    assert_eq!(b.cache_stats().hits, before.hits + 1);
    assert!(hit(&b, &request("other")).is_none());
}

#[test]
fn a_stream_is_replayed_from_disk_as_its_events() {
    let d = dir("stream");
    let path = d.join("cache.db");
    let usage = Usage {
        prompt_tokens: 5,
        completion_tokens: 2,
        total_tokens: 7,
        cached_prompt_tokens: 0,
        reasoning_tokens: 0,
    };
    let events = vec![
        SseEvent::data(r#"{"choices":[{"delta":{"content":"He"}}]}"#),
        SseEvent::data(r#"{"choices":[{"delta":{"content":"llo"}}]}"#),
        SseEvent::data("[DONE]"),
    ];
    let (a, _) = engine(&path);
    store(
        &a,
        &request("stream me"),
        CachedResponse::new(200, &b""[..])
            .with_events(events.clone())
            .with_usage(usage),
    );
    a.cache_flush();
    drop(a);
    let (b, _) = engine(&path);
    let r = hit(&b, &request("stream me")).expect("on disk");
    assert_eq!(r.events.as_deref(), Some(&events[..]));
    assert_eq!(r.usage, Some(usage));
    // And through the call API: the stream is replayed event by event, without an upstream.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    drop(b);
    let (c, _) = engine(&path);
    rt.block_on(async {
        let mut s = c
            .stream(ChatRequest::new(request("stream me")))
            .await
            .expect("replayed from the cache");
        let mut got = Vec::new();
        while let Some(ev) = s.next().await {
            got.push(ev.expect("event").data);
        }
        assert!(got.iter().any(|d| d.contains("llo")), "{got:?}");
    });
}

#[test]
fn entries_expire_after_the_ttl_by_the_engines_clock() {
    let d = dir("ttl");
    let path = d.join("cache.db");
    let (a, clock) = engine(&path);
    store(&a, &request("q"), CachedResponse::new(200, &b"old"[..]));
    a.cache_flush();
    clock.advance(Duration::from_secs(9 * 60));
    let (b, _) = engine(&path);
    assert!(hit(&b, &request("q")).is_some(), "9 minutes old: fresh");
    let (c, clock_c) = engine(&path);
    clock_c.advance(Duration::from_secs(10 * 60 + 1));
    assert!(hit(&c, &request("q")).is_none(), "past 10 minutes: a miss");
}

#[test]
fn after_a_restart_an_expired_answer_on_disk_serves_stale_if_error() {
    let d = dir("stale");
    let path = d.join("cache.db");
    let with_stale = |p: &Path| engine_with(p, "stale_if_error = \"1h\"\n");
    let (a, clock) = with_stale(&path);
    store(&a, &request("q"), CachedResponse::new(200, &b"old"[..]));
    a.cache_flush();
    // A later write makes the writer sweep at a time past the TTL: the row must stay for the
    // stale window.
    clock.advance(Duration::from_secs(30 * 60));
    store(&a, &request("other"), CachedResponse::new(200, &b"x"[..]));
    a.cache_flush();
    drop(a);
    // A restarted engine, 30 minutes on: not fresh, but within TTL + 1h.
    let (b, clock_b) = with_stale(&path);
    clock_b.advance(Duration::from_secs(30 * 60));
    assert!(hit(&b, &request("q")).is_none(), "expired: not a hit");
    let r = b
        .cache_stale(&request("q"))
        .expect("stale-if-error from disk");
    assert_eq!(&*r.body, b"old");
    let m = b.metrics_text();
    for line in [
        "tollgate_cache_disk_up 1\n",
        "tollgate_cache_disk_stale_hits_total 1\n",
        "tollgate_cache_disk_misses_total 1\n",
    ] {
        assert!(m.contains(line), "{line:?} in\n{m}");
    }
    // Past TTL + stale window: nothing.
    let (c, clock_c) = with_stale(&path);
    clock_c.advance(Duration::from_secs(10 * 60 + 3600 + 1));
    assert!(c.cache_stale(&request("q")).is_none());
    // Without a stale window the engine gives nothing stale, from either level.
    let (e, clock_e) = engine(&path);
    clock_e.advance(Duration::from_secs(30 * 60));
    assert!(e.cache_stale(&request("q")).is_none());
}

#[test]
fn the_disk_level_reports_its_work_in_the_metrics() {
    let d = dir("metrics");
    let path = d.join("cache.db");
    let (a, _) = engine(&path);
    store(&a, &request("q"), CachedResponse::new(200, &b"{}"[..]));
    a.cache_flush();
    let (b, _) = engine(&path);
    assert!(hit(&b, &request("q")).is_some());
    assert!(hit(&b, &request("nothing")).is_none());
    let m = b.metrics_text();
    for line in [
        "# TYPE tollgate_cache_disk_hits_total counter\n",
        "tollgate_cache_disk_up 1\n",
        "tollgate_cache_disk_hits_total 1\n",
        "tollgate_cache_disk_misses_total 1\n",
        "tollgate_cache_disk_corrupt_total 0\n",
        "tollgate_cache_disk_dropped_total 0\n",
    ] {
        assert!(m.contains(line), "{line:?} in\n{m}");
    }
    let writes = |e: &Engine| {
        e.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_cache_disk_writes_total "))
            .map(|v| v.parse::<u64>().unwrap())
    };
    assert_eq!(writes(&a), Some(1));
    let bytes = a
        .metrics_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("tollgate_cache_disk_bytes ")
                .map(str::to_owned)
        })
        .expect("the file's bytes");
    assert_eq!(
        bytes.parse::<i64>().unwrap(),
        disk_cache_bytes(&path).unwrap()
    );
    // Without a disk level, no disk families.
    let plain = Engine::from_text("version = 1\n[cache]\nenabled = true\n").unwrap();
    assert!(!plain.metrics_text().contains("tollgate_cache_disk_"));
}

#[test]
fn the_file_keeps_its_byte_bound_oldest_first() {
    let d = dir("bound");
    let path = d.join("cache.db");
    let text = |p: &Path| {
        format!(
            "version = 1\n[cache]\nenabled = true\nmax_entry_bytes = \"8KB\"\n\
             disk = {{ path = \"{}\", max_bytes = \"20KB\" }}\n",
            p.display()
        )
    };
    let clock = Arc::new(ManualClock::new());
    let a = Engine::with_clock(Policy::from_toml(&text(&path)).unwrap(), clock.clone());
    let body = |n: u32| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(3000)).into_bytes();
    for n in 0..12 {
        store(
            &a,
            &request(&format!("q{n}")),
            CachedResponse::new(200, body(n)),
        );
        a.cache_flush();
        clock.advance(Duration::from_millis(5));
    }
    let bytes = disk_cache_bytes(&path).expect("readable");
    assert!(bytes <= 20_000, "{bytes} bytes on disk");
    assert!(bytes > 15_000, "{bytes}: it keeps what fits");
    let b = Engine::with_clock(Policy::from_toml(&text(&path)).unwrap(), clock.clone());
    assert!(hit(&b, &request("q11")).is_some(), "the newest stays");
    assert!(hit(&b, &request("q0")).is_none(), "the oldest went first");
}

#[test]
fn a_corrupted_row_is_never_served_and_is_deleted() {
    let d = dir("corrupt-row");
    let path = d.join("cache.db");
    let (a, _) = engine(&path);
    store(
        &a,
        &request("q"),
        CachedResponse::new(200, &b"{\"answer\":42}"[..]),
    );
    a.cache_flush();
    drop(a);
    // Flip one byte of the stored value, as a bad sector or a stray writer would.
    let db = rusqlite::Connection::open(&path).expect("open");
    let value: Vec<u8> = db
        .query_row("SELECT value FROM tollgate_cache", [], |r| r.get(0))
        .expect("one row");
    let mut bad = value.clone();
    let at = bad.len() - 3;
    bad[at] ^= 0x01; // "42" becomes "43"-like: still valid JSON, so only the checksum sees it
    db.execute("UPDATE tollgate_cache SET value = ?1", [&bad])
        .expect("update");
    let (b, _) = engine(&path);
    assert!(
        hit(&b, &request("q")).is_none(),
        "a failing checksum is a miss"
    );
    b.cache_flush();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM tollgate_cache", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 0, "the bad row was deleted");
}

#[test]
fn a_corrupt_file_is_moved_aside_and_the_cache_starts_empty() {
    let d = dir("corrupt-file");
    let path = d.join("cache.db");
    std::fs::write(&path, vec![0xa5u8; 64 * 1024]).expect("garbage");
    let (a, _) = engine(&path);
    let Some(DiskState::Reset {
        moved_to, reason, ..
    }) = a.cache_disk_state()
    else {
        panic!("expected a reset, got {:?}", a.cache_disk_state());
    };
    assert!(moved_to.exists(), "the bad file is kept for inspection");
    assert_eq!(std::fs::read(&moved_to).unwrap(), vec![0xa5u8; 64 * 1024]);
    assert!(!reason.is_empty());
    store(&a, &request("q"), CachedResponse::new(200, &b"fresh"[..]));
    a.cache_flush();
    drop(a);
    let (b, _) = engine(&path);
    assert!(matches!(b.cache_disk_state(), Some(DiskState::Open { .. })));
    assert!(hit(&b, &request("q")).is_some());
}

#[test]
fn a_database_of_something_else_is_left_alone() {
    let d = dir("foreign");
    let path = d.join("theirs.db");
    let db = rusqlite::Connection::open(&path).expect("open");
    db.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY);")
        .expect("theirs");
    let (a, _) = engine(&path);
    match a.cache_disk_state() {
        Some(DiskState::Unavailable { error, .. }) => {
            assert!(error.contains("something else"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    store(
        &a,
        &request("q"),
        CachedResponse::new(200, &b"memory only"[..]),
    );
    assert!(
        hit(&a, &request("q")).is_some(),
        "the memory level still works"
    );
    let tables: i64 = db
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .expect("count");
    assert_eq!(tables, 1, "nothing was added to their file");
}

#[test]
fn two_engines_share_one_file() {
    let d = dir("shared");
    let path = d.join("cache.db");
    let (a, _) = engine(&path);
    let (b, _) = engine(&path);
    store(&a, &request("from a"), CachedResponse::new(200, &b"A"[..]));
    store(&b, &request("from b"), CachedResponse::new(200, &b"B"[..]));
    a.cache_flush();
    b.cache_flush();
    assert_eq!(
        &*hit(&b, &request("from a")).expect("b reads a's").body,
        b"A"
    );
    assert_eq!(
        &*hit(&a, &request("from b")).expect("a reads b's").body,
        b"B"
    );
}

#[test]
fn tenants_stay_apart_on_disk_too() {
    let d = dir("tenants");
    let path = d.join("cache.db");
    let (a, _) = engine(&path);
    let req = request("q");
    match a.cache_lookup_for("alice", &req, CacheMode::Default) {
        CacheLookup::Miss(fill) => a
            .cache_store(fill, CachedResponse::new(200, &b"alice"[..]))
            .expect("stored"),
        other => panic!("{other:?}"),
    }
    a.cache_flush();
    let (b, _) = engine(&path);
    assert!(matches!(
        b.cache_lookup_for("bob", &req, CacheMode::Default),
        CacheLookup::Miss(_)
    ));
    assert!(matches!(
        b.cache_lookup_for("alice", &req, CacheMode::Default),
        CacheLookup::Hit(_)
    ));
    let (c, _) = engine_with(&path, "scope = \"shared\"\n");
    assert!(
        matches!(
            c.cache_lookup_for("alice", &req, CacheMode::Default),
            CacheLookup::Miss(_)
        ),
        "a shared-scope key is not a tenant's key"
    );
}

#[test]
fn disk_settings_are_checked() {
    let bad = |disk: &str| {
        Policy::from_toml(&format!(
            "version = 1\n[cache]\nenabled = true\nmax_entry_bytes = \"8MiB\"\ndisk = {disk}\n"
        ))
        .expect_err(disk)
        .to_string()
    };
    assert!(bad("{ max_bytes = \"1GB\" }").contains("path"));
    assert!(bad("{ path = \"\", max_bytes = \"1GB\" }").contains("file path"));
    assert!(bad("{ path = \"x.db\" }").contains("max_bytes"));
    assert!(bad("{ path = \"x.db\", max_bytes = \"1MB\" }").contains("max_entry_bytes"));
    assert!(bad("{ path = \"x.db\", max_bytes = \"1GB\", size = 1 }").contains("size"));
    let ok = Policy::from_toml(
        "version = 1\n[cache]\nenabled = true\ndisk = { path = \"/var/cache/t.db\", max_bytes = \"10GiB\" }\n",
    )
    .expect("valid");
    let disk = ok.cache.disk.expect("disk");
    assert_eq!(disk.max_bytes, 10 * 1024 * 1024 * 1024);
}

/// Set in the child process of `two_processes_write_and_read_one_file`: the file to use.
const CHILD_ENV: &str = "TOLLGATE_TEST_DISK_CHILD";

fn write_many(path: &Path, prefix: &str) -> Engine {
    let (e, _) = engine(path);
    for n in 0..200 {
        let body = format!(
            "{{\"from\":\"{prefix}{n}\",\"pad\":\"{}\"}}",
            "y".repeat(500)
        );
        store(
            &e,
            &request(&format!("{prefix}{n}")),
            CachedResponse::new(200, body.into_bytes()),
        );
    }
    e.cache_flush();
    e
}

#[test]
fn two_processes_write_and_read_one_file() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        // The child: write its own entries while the parent writes its own.
        drop(write_many(&PathBuf::from(path), "child"));
        return;
    }
    let d = dir("processes");
    let path = d.join("cache.db");
    drop(engine(&path)); // create the file first, so both open an existing database
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "two_processes_write_and_read_one_file",
            "--nocapture",
        ])
        .env(CHILD_ENV, &path)
        .spawn()
        .expect("spawn the child");
    let parent = write_many(&path, "parent");
    let status = child.wait_with_output().expect("child ends").status;
    assert!(status.success(), "the child failed: {status}");
    drop(parent);
    let (reader, _) = engine(&path);
    for prefix in ["parent", "child"] {
        for n in [0, 99, 199] {
            let r = hit(&reader, &request(&format!("{prefix}{n}"))).expect("written by either");
            assert!(String::from_utf8_lossy(&r.body).contains(&format!("\"{prefix}{n}\"")));
        }
    }
    // The byte total both processes kept through their own transactions is exact.
    let db = rusqlite::Connection::open(&path).expect("open");
    let (rows, sum): (i64, i64) = db
        .query_row(
            "SELECT count(*), total(length(value)) FROM tollgate_cache",
            [],
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)? as i64)),
        )
        .expect("count");
    assert_eq!(rows, 400);
    assert_eq!(disk_cache_bytes(&path), Some(sum));
}
