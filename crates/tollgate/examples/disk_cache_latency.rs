//! Cache hit latency through `Engine::send`: from the disk level (a new engine, memory empty)
//! against the memory level. Prints medians and 99th percentiles over 1,000 hits each.
//!
//! `cargo run --release -p tollgate --example disk_cache_latency [dir]`

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::cache::{CacheMode, CachedResponse};
use tollgate::{CacheLookup, ChatRequest, Engine, Source};

const N: usize = 1_000;

fn request(n: usize) -> serde_json::Value {
    json!({"model": "gpt-4o", "temperature": 0,
           "messages": [{"role": "user", "content": format!("question {n}")}]})
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    format!(
        "median {:?}, p99 {:?}",
        v[v.len() / 2],
        v[v.len() * 99 / 100]
    )
}

fn main() {
    let dir = std::env::args().nth(1).map_or_else(
        || std::env::temp_dir().join("tollgate-disk-latency"),
        Into::into,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("cache.db");
    let text = format!(
        "version = 1\n[cache]\nenabled = true\nmax_bytes = \"64MB\"\n\
         disk = {{ path = \"{}\", max_bytes = \"1GB\" }}\n",
        path.display()
    );
    // ~4 KB answers, written to disk by a first engine.
    let body = format!(
        "{{\"choices\":[{{\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}}}}]}}",
        "x".repeat(4_000)
    );
    let writer = Engine::from_text(&text).expect("policy");
    for n in 0..N {
        let CacheLookup::Miss(fill) = writer.cache_lookup(&request(n), CacheMode::Default) else {
            panic!("a fresh file misses");
        };
        writer
            .cache_store(fill, CachedResponse::new(200, body.clone().into_bytes()))
            .expect("stored");
    }
    writer.cache_flush();
    drop(writer);

    let engine = Engine::from_text(&text).expect("policy");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let run = |engine: &Engine| {
        rt.block_on(async {
            let mut lat = Vec::with_capacity(N);
            for n in 0..N {
                let req = ChatRequest::new(request(n));
                let t = Instant::now();
                let r = engine.send(req).await.expect("a hit");
                lat.push(t.elapsed());
                assert_eq!(r.source, Source::Cache);
            }
            lat
        })
    };
    let disk = run(&engine);
    let memory = run(&engine);
    println!("disk hit through Engine::send   ({N}): {}", stats(disk));
    println!("memory hit through Engine::send ({N}): {}", stats(memory));
    let _ = std::fs::remove_dir_all(&dir);
}
