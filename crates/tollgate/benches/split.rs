//! `tokens::split` on 1 MB and 10 MB of English and of Chinese, chunks of at most 1,000 tokens:
//! a load run (not criterion: one 10 MB split takes seconds) that prints the time of each case
//! (best of a few runs), its MB/s, and the ratio of the 10 MB time to the 1 MB time, which is
//! about 10 when the work is linear in the text.
//!
//! `cargo bench -p tollgate --bench split`; `-- --test` splits 100 kB once per case instead.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tollgate::tokens::{ModelTable, split};

const MB: usize = 1 << 20;
const MAX_TOKENS: usize = 1000;

const ENGLISH: [&str; 4] = [
    "The committee met on Tuesday to review the quarterly budget for section {n}. After a long \
     discussion about travel costs, the members agreed to postpone the new office until spring, \
     when furniture is usually cheaper. Nobody objected!",
    "Please summarize item {n} of the customer file in two sentences; then suggest a reply. Keep \
     the tone friendly, mention the refund policy, and do not promise a delivery date that the \
     warehouse cannot confirm.\nThanks.",
    "In 1869 the first transcontinental railroad was completed ({n} miles of track, by one \
     count), linking the eastern network with the Pacific coast. Travel that had taken months \
     by wagon could now be done in about a week.",
    "If the function returns error {n}, log the request ID and retry once after a short delay. \
     Otherwise parse the JSON body, check that every field is present, and store the result in \
     the cache for fifteen minutes.",
];

const CHINESE: [&str; 4] = [
    "委员会在星期二开会审议了第{n}节的季度预算。经过关于差旅费用的长时间讨论，成员们同意把新办公室的计划推迟到春天，\
     因为那时家具和设备的价格通常会低一些。",
    "请用两句话总结下面第{n}封客户邮件，然后给出一份礼貌的回复。语气要友好，提到退款政策，\
     不要承诺仓库无法确认的送货日期！",
    "一八六九年，美国第一条横贯大陆的铁路建成，全长{n}英里，把东部的铁路网与太平洋沿岸连接起来。\
     过去乘马车需要几个月的旅程，现在大约一周就能完成。",
    "如果函数返回错误{n}，请记录请求编号，并在短暂等待后重试一次。否则，解析返回的数据，\
     检查每个字段是否齐全，然后把结果在缓存中保存十五分钟。",
];

/// About `size` bytes of paragraphs in a mixed order, each numbered, separated by blank lines.
fn document(paragraphs: &[&str; 4], size: usize) -> String {
    let order = [0, 2, 1, 3, 2, 0, 3, 1, 1, 2];
    let mut text = String::with_capacity(size + 1024);
    let mut n = 0usize;
    while text.len() < size {
        if !text.is_empty() {
            text.push_str(if n % 7 == 3 { "\n" } else { "\n\n" });
        }
        text.push_str(&paragraphs[order[n % order.len()]].replace("{n}", &(n * 37).to_string()));
        n += 1;
    }
    text
}

/// The best of `runs` splits of `text`, and the number of chunks.
fn time(text: &str, overlap: usize, runs: usize) -> (Duration, usize) {
    let table = ModelTable::bundled();
    let mut best = Duration::MAX;
    let mut chunks = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let c = split(table, "gpt-4o", black_box(text), MAX_TOKENS, overlap).expect("splits");
        best = best.min(t.elapsed());
        chunks = c.len();
    }
    (best, chunks)
}

fn main() {
    let test_mode =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let (small, large) = if test_mode {
        (100 * 1024, 100 * 1024)
    } else {
        (MB, 10 * MB)
    };
    tollgate::tokens::warm_up(tollgate::tokens::Encoding::O200kBase);
    println!("split, gpt-4o (o200k_base), max {MAX_TOKENS} tokens, best of 3 (1 MB) / 2 (10 MB):");
    for (lang, paragraphs) in [("English", &ENGLISH), ("Chinese", &CHINESE)] {
        for overlap in [0, 100] {
            let a = document(paragraphs, small);
            let b = document(paragraphs, large);
            let (ta, ca) = time(&a, overlap, 3);
            let (tb, cb) = time(&b, overlap, 2);
            let mbps = |t: Duration, len: usize| len as f64 / MB as f64 / t.as_secs_f64();
            println!(
                "  {lang:<7} overlap {overlap:>3}: {:>5.2} MB {:>8.1} ms ({ca:>5} chunks, {:>5.1} MB/s) | \
                 {:>5.2} MB {:>8.1} ms ({cb:>6} chunks, {:>5.1} MB/s) | ratio {:.2}",
                a.len() as f64 / MB as f64,
                ta.as_secs_f64() * 1e3,
                mbps(ta, a.len()),
                b.len() as f64 / MB as f64,
                tb.as_secs_f64() * 1e3,
                mbps(tb, b.len()),
                tb.as_secs_f64() / ta.as_secs_f64(),
            );
        }
    }
}
