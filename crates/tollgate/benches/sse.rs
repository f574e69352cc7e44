//! SSE decoder throughput over a realistic OpenAI chat-completions stream of about 1 MB
//! (`data: {...}` chunk lines of 200–400 bytes, a usage chunk, `[DONE]`), fed in 16 KB chunks as
//! a TLS reader delivers them, and in 1,448-byte chunks (one TCP segment each). Prints a table of
//! MB/s (10^6 bytes per second, from criterion's medians) at the end.
//!
//! Run: `cargo bench --bench sse`.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use criterion::{Criterion, Throughput};
use tollgate::transport::sse::{Decoder, Event};

const GROUP: &str = "sse";
const TARGET_MB_S: f64 = 500.0;

/// Words for the generated deltas, some of them non-ASCII and some needing JSON escapes.
const WORDS: &[&str] = &[
    "the",
    "budget",
    "holds",
    " exactly",
    ", and",
    " über",
    " naïve",
    " 東京",
    " café",
    " 😀",
    "\\n",
    " \\\"quoted\\\"",
    " tokens",
    " per",
    " minute",
    ".",
];

/// About `size` bytes of an OpenAI chat-completions stream; every chunk line is 200–400 bytes.
fn openai_stream(size: usize) -> Vec<u8> {
    let head = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":""#;
    let tail = r#""},"logprobs":null,"finish_reason":null}],"usage":null}"#;
    let mut out = Vec::with_capacity(size + 1024);
    let mut state = 0x2545_f491_4f6c_dd1du64; // xorshift: the same stream every run
    while out.len() < size {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(head.as_bytes());
        // 1–24 words: lines of roughly 250 to 400 bytes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for k in 0..(1 + state % 24) {
            out.extend_from_slice(
                WORDS[((state >> (k % 48)) % WORDS.len() as u64) as usize].as_bytes(),
            );
        }
        out.extend_from_slice(tail.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(br#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}"#);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    out
}

/// Decodes `stream` in `chunk`-byte pieces the way a consumer would, handing each event on.
fn decode(stream: &[u8], chunk: usize) -> usize {
    let mut decoder = Decoder::new();
    let mut events: Vec<Event> = Vec::with_capacity(128);
    let mut n = 0;
    for piece in stream.chunks(chunk) {
        if decoder.push(black_box(piece), &mut events).is_err() {
            panic!("bench stream exceeds the decoder's limits");
        }
        n += events.len();
        for event in events.drain(..) {
            black_box(event);
        }
    }
    if decoder.finish().is_err() {
        panic!("bench stream must end cleanly");
    }
    n
}

fn benches(c: &mut Criterion, stream: &[u8]) {
    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("openai_1mb_16k_chunks", |b| {
        b.iter(|| decode(stream, 16 * 1024))
    });
    g.bench_function("openai_1mb_1448b_chunks", |b| {
        b.iter(|| decode(stream, 1448))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// The table

/// `<target>/criterion`: `$CARGO_TARGET_DIR`, else the nearest ancestor of this executable
/// that has a `criterion` directory.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(t).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .map(|p: &Path| p.join("criterion"))
        .find(|p| p.is_dir())
}

/// Median ns per iteration of `bench`, if this run (since `since`) measured it.
fn median(dir: &Path, bench: &str, since: SystemTime) -> Option<f64> {
    let path = dir
        .join(GROUP)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None; // left over from an earlier run
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_table(since: SystemTime, stream: &[u8], events: usize) {
    let args: Vec<String> = std::env::args().collect();
    let test_mode = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
    println!();
    println!(
        "== tollgate sse decoder (criterion medians, this run; {} bytes, {events} events) ==",
        stream.len()
    );
    if test_mode {
        println!("test mode: every benchmark ran once; no measurements.");
        return;
    }
    let Some(dir) = criterion_dir() else {
        println!("no measurements: criterion's output directory was not found");
        return;
    };
    let rows = [
        (
            "openai_1mb_16k_chunks",
            "OpenAI stream, 16 KB chunks",
            Some(TARGET_MB_S),
        ),
        (
            "openai_1mb_1448b_chunks",
            "OpenAI stream, 1448 B chunks",
            None,
        ),
    ];
    println!(
        "{:<36} {:>12} {:>12}  target",
        "benchmark", "median", "throughput"
    );
    let mut printed = 0;
    for (bench, what, target) in rows {
        let Some(ns) = median(&dir, bench, since) else {
            continue;
        };
        let mb_s = stream.len() as f64 / ns * 1e3; // bytes/ns = GB/s
        let verdict = match target {
            Some(t) if mb_s >= t => format!(">= {t} MB/s: met"),
            Some(t) => format!(">= {t} MB/s: MISSED"),
            None => String::new(),
        };
        println!(
            "{what:<36} {:>9.1} us {mb_s:>7.0} MB/s  {verdict}",
            ns / 1e3
        );
        printed += 1;
    }
    if printed == 0 {
        println!("no measurements from this run under {}", dir.display());
    }
}

fn main() {
    let since = SystemTime::now();
    let stream = openai_stream(1_000_000);
    let events = decode(&stream, 16 * 1024);
    let mut c = common::criterion();
    benches(&mut c, &stream);
    c.final_summary();
    print_table(since, &stream, events);
}
