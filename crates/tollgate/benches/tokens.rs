//! Token counting throughput: exact `o200k_base` / `cl100k_base` counts and the fast estimate,
//! on a 4 KB English prompt and a 4 KB Chinese prompt (generated here, deterministically).
//!
//! After criterion has run, `main` reads criterion's own `estimates.json` files (medians) written
//! by *this* run and prints MB/s per case (target: exact counts >= 10 MB/s). `cargo bench --bench
//! tokens -- --test` runs every case once and says the table has no measurements.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;

use std::time::SystemTime;

use criterion::{Criterion, Throughput};
use tollgate::tokens::{self, Encoding};

/// Prompt size in bytes.
const SIZE: usize = 4096;
/// MB/s the exact counters must reach.
const TARGET_MBPS: f64 = 10.0;

const ENGLISH: [&str; 4] = [
    "The committee met on Tuesday to review the quarterly budget. After a long discussion about \
     travel costs, the members agreed to postpone the new office until the spring, when prices \
     for furniture and equipment are usually lower.",
    "Please summarize the following customer email in two sentences, then suggest a polite reply. \
     Keep the tone friendly, mention the refund policy, and do not promise a delivery date that \
     the warehouse cannot confirm.",
    "In 1869 the first transcontinental railroad in the United States was completed, linking the \
     eastern network with the Pacific coast. Travel that had taken months by wagon could now be \
     done in about a week, and freight rates fell sharply.",
    "If the function returns an error, log the request ID and retry once after a short delay. \
     Otherwise, parse the JSON body, check that every field is present, and store the result in \
     the cache for fifteen minutes.",
];

const CHINESE: [&str; 4] = [
    "委员会在星期二开会审议了季度预算。经过关于差旅费用的长时间讨论，成员们同意把新办公室的计划推迟到春天，\
     因为那时家具和设备的价格通常会低一些。",
    "请用两句话总结下面这封客户邮件，然后给出一份礼貌的回复。语气要友好，提到退款政策，\
     不要承诺仓库无法确认的送货日期。",
    "一八六九年，美国第一条横贯大陆的铁路建成，把东部的铁路网与太平洋沿岸连接起来。\
     过去乘马车需要几个月的旅程，现在大约一周就能完成，货运价格也大幅下降。",
    "如果函数返回错误，请记录请求编号，并在短暂等待后重试一次。否则，解析返回的数据，\
     检查每个字段是否齐全，然后把结果在缓存中保存十五分钟。",
];

/// Paragraphs in a fixed, mixed order, separated by blank lines, cut to at most `SIZE` bytes on
/// a character boundary.
fn prompt(paragraphs: &[&str]) -> String {
    let mut text = String::with_capacity(SIZE + 512);
    let order = [0, 2, 1, 3, 2, 0, 3, 1];
    let mut i = 0;
    while text.len() < SIZE {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(paragraphs[order[i % order.len()]]);
        i += 1;
    }
    let mut end = SIZE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// (bench name, encoding or `None` for the estimate, language)
const CASES: [(&str, Option<Encoding>, &str); 6] = [
    ("o200k_english", Some(Encoding::O200kBase), "english"),
    ("o200k_chinese", Some(Encoding::O200kBase), "chinese"),
    ("cl100k_english", Some(Encoding::Cl100kBase), "english"),
    ("cl100k_chinese", Some(Encoding::Cl100kBase), "chinese"),
    ("estimate_english", None, "english"),
    ("estimate_chinese", None, "chinese"),
];

fn text_for(lang: &str) -> String {
    if lang == "english" {
        prompt(&ENGLISH)
    } else {
        prompt(&CHINESE)
    }
}

fn count(encoding: Option<Encoding>, text: &str) -> usize {
    match encoding {
        Some(e) => tokens::count(e, text),
        None => tokens::estimate(text),
    }
}

fn counting(c: &mut Criterion) {
    let mut g = c.benchmark_group("d_tokens");
    for (name, encoding, lang) in CASES {
        let text = text_for(lang);
        // Loads the vocabulary outside the measurement.
        black_box(count(encoding, &text));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| b.iter(|| count(encoding, black_box(&text))));
    }
    g.finish();
}

fn print_table(since: SystemTime) {
    println!();
    println!(
        "== token counting, 4096-byte prompts (criterion medians, this run; MB = 10^6 bytes) =="
    );
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test") {
        println!("test mode: every benchmark ran once; no measurements.");
        return;
    }
    let dir = common::criterion_dir();
    let mut printed = 0;
    for (name, encoding, lang) in CASES {
        let text = text_for(lang);
        let Some(ns) = dir
            .as_deref()
            .and_then(|d| common::median(d, "d_tokens", name, since))
        else {
            continue;
        };
        let mbps = text.len() as f64 / ns * 1e3;
        let target = match encoding {
            Some(_) => format!(
                " (target >= {TARGET_MBPS} MB/s: {})",
                if mbps >= TARGET_MBPS { "met" } else { "MISSED" }
            ),
            None => String::new(),
        };
        println!(
            "(d) {name:<17} {} bytes -> {:>5} tokens: {:>8.1} us, {mbps:>7.1} MB/s{target}",
            text.len(),
            count(encoding, &text),
            ns / 1e3
        );
        printed += 1;
    }
    if printed == 0 {
        println!("no measurements from this run");
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = common::criterion();
    counting(&mut c);
    c.final_summary();
    print_table(since);
}
