//! `tollgate batch`: an OpenAI Batch API input file through the engine, durably.
//!
//! Reads request lines (`custom_id`, `method`, `url`, `body`, plus `tenant` and `priority`)
//! and runs them through [`tollgate::batch::Batch`]: each sent through the engine at most
//! `--concurrency` at once, what was sent and what came back recorded in a SQLite journal, one
//! output line per input line (`id`, `custom_id`, `response`, `error`, `usage`, `cost`,
//! `attempts`). A rerun of the same command after a crash or a stop sends only what has no
//! recorded answer.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tollgate::Engine;
use tollgate::batch::{Batch, BatchOptions, BatchRequest, BatchResult, Journal, Submitted};

use crate::fmt::{Table, money};
use crate::{BatchArgs, exit};

/// Longer help of `tollgate batch`.
pub(crate) const LONG_ABOUT: &str = "\
Send an OpenAI Batch API file through the engine, durably.

Each input line is {\"custom_id\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\",
\"body\": {...}}, optionally with \"tenant\" and \"priority\". Each output line is {\"id\",
\"custom_id\", \"response\": {\"status_code\", \"request_id\", \"body\"}, \"error\", \"usage\",
\"cost\", \"attempts\"}, in the order answers come. Every call goes through the policy: budgets
(a batch waits for room rather than failing, at a low priority), retries, fallbacks, cache.

The journal (--journal, default OUT.journal/) records what was sent and what came back. After
a crash, kill -9 or a stop, run the same command again: answers already recorded are not asked
again, calls that were in flight are sent again, and each custom_id ends up once in the output.
A different input file for the same journal is refused. SIGTERM or Ctrl-C: no new lines; calls
in flight get --grace to finish; exit status 3.

Bad lines (not JSON, no or duplicate custom_id, wrong method or url, a body without model or
messages) are named on stderr with their line number and written to the output as errors with
code \"invalid_line\"; the run goes on.";

/// Exit status of a run stopped by a signal before every line was answered: run it again.
pub(crate) const INTERRUPTED: u8 = 3;

pub(crate) fn run(a: &BatchArgs) -> u8 {
    let engine = match Engine::from_file(&a.policy) {
        Ok(e) => e,
        Err(errors) => {
            eprintln!("{errors}");
            return exit::FAILED;
        }
    };
    let input_name = a.input.to_string_lossy().into_owned();
    let text = match std::fs::read(&a.input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tollgate batch: cannot read {input_name}: {e}");
            return exit::FAILED;
        }
    };
    let Ok(text) = String::from_utf8(text) else {
        eprintln!("tollgate batch: {input_name} is not UTF-8 text");
        return exit::FAILED;
    };
    let hash = format!(
        "xxh3-128:{:032x}",
        xxhash_rust::xxh3::xxh3_128(text.as_bytes())
    );
    let journal_dir = a.journal.clone().unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".journal");
        PathBuf::from(p)
    });
    let started_at = Instant::now();
    let journal = match Journal::open(&journal_dir) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("tollgate batch: {e}");
            return exit::FAILED;
        }
    };
    let canonical = std::fs::canonicalize(&a.input)
        .map_or(input_name.clone(), |p| p.to_string_lossy().into_owned());
    if let Err(e) = journal.bind_input(&canonical, &hash) {
        eprintln!("tollgate batch: {e}");
        return exit::FAILED;
    }
    let recorded = match journal.rebuild_output(&a.out) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tollgate batch: cannot write {}: {e}", a.out.display());
            return exit::FAILED;
        }
    };
    let reopen = started_at.elapsed();
    let out = match std::fs::OpenOptions::new().append(true).open(&a.out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tollgate batch: cannot open {}: {e}", a.out.display());
            return exit::FAILED;
        }
    };
    let total = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    if recorded > 0 {
        eprintln!(
            "tollgate batch: resuming: {recorded} of {total} lines already answered in {} \
             (reopened in {:.1} ms)",
            journal_dir.display(),
            reopen.as_secs_f64() * 1e3
        );
    }
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let Some(runtime) = crate::runtime("tollgate-batch", threads.min(4)) else {
        return exit::FAILED;
    };
    let options = BatchOptions {
        concurrency: a.concurrency.max(1),
        tenant: a.tenant.clone().unwrap_or_default(),
        priority: a.priority,
        grace: Duration::from_secs(a.grace_secs),
    };
    runtime.block_on(async move {
        let (batch, mut results) = match Batch::start(engine.clone(), Some(journal), options) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("tollgate batch: {e}");
                return exit::FAILED;
            }
        };
        let batch = Arc::new(batch);
        let stopper = batch.stopper();
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("tollgate batch: cannot install signal handlers");
            return exit::FAILED;
        };
        let grace = a.grace_secs;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!(
                "\ntollgate batch: stopping: no new lines; calls in flight have {grace}s to \
                 finish; run the same command again to resume"
            );
            let _ = stopper.send(true);
        });
        let stats = Arc::new(parking_lot::Mutex::new(Stats::default()));
        // Each result is appended to the output after its journal commit; a line torn by a
        // crash is repaired by the next run's rebuild from the journal.
        let collector = {
            let stats = Arc::clone(&stats);
            tokio::task::spawn_blocking(move || {
                let mut out = BufWriter::new(out);
                let mut wrote = Ok(());
                while let Some(r) = results.blocking_next() {
                    if wrote.is_ok() {
                        wrote = out
                            .write_all(r.output.as_bytes())
                            .and_then(|()| out.write_all(b"\n"));
                        if results.is_empty() {
                            wrote = wrote.and_then(|()| out.flush());
                        }
                    }
                    stats.lock().add(r);
                }
                wrote.and_then(|()| out.flush())
            })
        };
        let progress = tokio::spawn(progress(
            Arc::clone(&stats),
            Arc::clone(&batch),
            engine,
            total - recorded.min(total),
            a.quiet,
        ));
        // Every line is read (so duplicates are found the same way each run); only those
        // without a recorded answer are sent.
        let mut seen = HashSet::new();
        let mut bad_lines = 0u64;
        for (i, line) in text.lines().enumerate() {
            let n = i as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = BatchRequest::parse_line(n, line, &mut seen);
            if batch.answered_before().contains(&n) {
                bad_lines += u64::from(parsed.is_err());
                continue;
            }
            match parsed {
                Ok(request) => {
                    if batch.submit(request).await == Submitted::Stopped {
                        break;
                    }
                }
                Err(bad) => {
                    bad_lines += 1;
                    eprintln!("{input_name}:{n}: {}", bad.message);
                    batch.reject(&bad);
                }
            }
        }
        progress.abort();
        let _ = progress.await;
        let Ok(batch) = Arc::try_unwrap(batch) else {
            unreachable!("the progress task, the only other owner, has ended");
        };
        let journal_ok = batch.finish().await;
        let wrote = collector.await;
        if let Err(e) = journal_ok {
            eprintln!("tollgate batch: {e}");
            return exit::FAILED;
        }
        if let Ok(Err(e)) = wrote {
            eprintln!("tollgate batch: cannot write {}: {e}", a.out.display());
            return exit::FAILED;
        }
        let stats = stats.lock();
        let answered = recorded + stats.count;
        if !a.quiet {
            eprintln!("{}", stats.summary(started_at.elapsed(), recorded));
        }
        if answered < total {
            eprintln!(
                "tollgate batch: stopped with {} of {total} lines unanswered; run the same \
                 command again to resume",
                total - answered
            );
            exit::INTERRUPTED
        } else if bad_lines > 0 || stats.failed > 0 {
            exit::PARTIAL
        } else {
            exit::OK
        }
    })
}

/// What this run recorded, for the progress line and the summary.
#[derive(Debug, Default)]
struct Stats {
    count: u64,
    failed: u64,
    tokens: u64,
    spend: f64,
    by_status: BTreeMap<String, u64>,
    by_model: BTreeMap<String, ModelStats>,
}

#[derive(Debug, Default)]
struct ModelStats {
    count: u64,
    tokens: u64,
    spend: f64,
    latency_ms: Vec<f64>,
}

impl Stats {
    fn add(&mut self, r: BatchResult) {
        self.count += 1;
        self.failed += u64::from(!r.is_ok());
        self.tokens += r.tokens;
        self.spend += r.spend;
        *self.by_status.entry(r.status.clone()).or_default() += 1;
        if let Some(model) = r.model {
            let m = self.by_model.entry(model).or_default();
            m.count += 1;
            m.tokens += r.tokens;
            m.spend += r.spend;
            m.latency_ms.push(r.latency_ms);
        }
    }

    fn summary(&self, took: Duration, earlier: u64) -> String {
        let mut s = format!(
            "\n{} lines answered in {:.2}s ({} failed){}; {} tokens, spend {}\n",
            self.count,
            took.as_secs_f64(),
            self.failed,
            if earlier > 0 {
                format!(", {earlier} answered by earlier runs")
            } else {
                String::new()
            },
            self.tokens,
            money(self.spend)
        );
        if self.count == 0 {
            return s;
        }
        let mut t = Table::new(&["status", "lines"], &[false, true]);
        for (k, v) in &self.by_status {
            t.row(vec![k.clone(), v.to_string()]);
        }
        s.push_str(&t.render(2));
        s.push('\n');
        let mut t = Table::new(
            &["model", "calls", "tokens", "spend", "p50 ms", "p95 ms"],
            &[false, true, true, true, true, true],
        );
        for (k, m) in &self.by_model {
            let mut l = m.latency_ms.clone();
            l.sort_by(f64::total_cmp);
            let q = |p: f64| {
                l.get(((l.len() as f64 - 1.0) * p).round() as usize)
                    .map_or("-".to_owned(), |v| format!("{v:.1}"))
            };
            t.row(vec![
                k.clone(),
                m.count.to_string(),
                m.tokens.to_string(),
                money(m.spend),
                q(0.5),
                q(0.95),
            ]);
        }
        s.push_str(&t.render(2));
        s
    }
}

/// Redraws one progress line on a terminal (5 times a second), or prints a plain line every
/// 10 seconds when stderr is not one.
async fn progress(
    stats: Arc<parking_lot::Mutex<Stats>>,
    batch: Arc<Batch>,
    engine: Engine,
    todo: u64,
    quiet: bool,
) {
    if quiet {
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    };
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (count, failed, tokens, spend) = {
            let s = stats.lock();
            (s.count, s.failed, s.tokens, s.spend)
        };
        let elapsed = start.elapsed().as_secs_f64();
        let eta = if count > 0 {
            format!(
                "{:.0}s",
                todo.saturating_sub(count) as f64 * elapsed / count as f64
            )
        } else {
            "?".into()
        };
        // The engine is this batch's own: every call waiting in its budgets' queues is one
        // of ours, beside those a budget refused for now.
        let now = batch.progress();
        let line = format!(
            "{count}/{todo} done, {failed} failed, {} in flight, {} waiting for budget, {tokens} \
             tokens, spend {}, ETA {eta}",
            now.in_flight,
            now.refused_for_now + engine.waiting(),
            money(spend)
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "progress: {line}")
        };
        let _ = err.flush();
    }
}
