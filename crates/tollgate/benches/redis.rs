//! Admission with a budget kept in Redis: latency per admission (p50 / p99) and admissions per
//! second, against `redis-benchmark` PING on the same `redis-server` in the same run (one PING
//! is the least one round trip can cost: the floor for an admission that asks Redis).
//!
//! One `redis-server` is started on a free loopback port (`tollgate_testkit::RedisServer`,
//! killed when the bench ends). Then, in order:
//! - `redis-benchmark -t ping -c 1` and `-c 64 --csv`: rps and p50 / p99 of the `PING_MBULK`
//!   row (skipped, with a message, when `redis-benchmark` is not installed);
//! - one thread, `admit` + `settle` in a loop on a Redis budget (`on_failure = "fail_closed"`,
//!   scoped by tenant, limits it never reaches): latency of each `admit` (an `Instant` on each
//!   side);
//! - 64 tasks on a two-worker tokio runtime, `admit_async` + `settle` until a shared total is
//!   reached, all on one tenant: latency of each `admit_async` and admissions per second;
//! - the same with `lease = { size = 20, ttl = "1s" }` on the budget (room for 20 calls taken
//!   per round trip);
//! - for scale, the same budget with `store = "local"`, one thread;
//! - where the time of one synchronous admission goes: redis-rs's own `PING` through a
//!   `ConnectionManager`, driven on the calling thread, and spawned onto a one-worker runtime
//!   with the answer sent back over a channel (the shape of the store's `block_on`).
//!
//! Each settle reports 5 completion tokens of the 10 reserved, so a refund is owed to Redis: it
//! travels in the pipeline of the next admission or with the background flusher. Round trips
//! per admission come from `tollgate_budget_store_round_trips_total{store="redis"}`, the
//! server's time in scripts from `INFO commandstats` (`cmdstat_evalsha`).
//!
//! Run: `cargo bench --bench redis` (about 20 s on two cores). `cargo bench --bench redis --
//! --test` (CI), or running it without `--bench`, does a short run of every part that checks
//! every admission went (no refusal: a broken store fails) and says nothing about timing.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::tokens::Usage;
use tollgate::{Call, Decision, Engine, Outcome, Prompt};
use tollgate_testkit::RedisServer;

const MODEL: &str = "gpt-4o";
const CONCURRENCY: usize = 64;
const ROUND_TRIPS: &str = "tollgate_budget_store_round_trips_total{store=\"redis\"}";
/// The longest a `redis-benchmark` run may take before it is killed.
const PING_LIMIT: Duration = Duration::from_secs(30);

/// Sizes of one run: `--test` (tiny, checks only) or a measurement.
struct Sizes {
    measure: bool,
    ping_c1: u64,
    ping_c64: u64,
    warm_up: u64,
    sync: u64,
    concurrent: u64,
    leased: u64,
    local: u64,
    /// Longest time one part may measure for; it stops early with what it has.
    part_limit: Duration,
}

impl Sizes {
    fn from_args() -> Sizes {
        // The rule of `common::table_dir`: `--test`, or no `--bench` (a plain `cargo test`).
        let args: Vec<String> = std::env::args().collect();
        let test = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
        if test {
            Sizes {
                measure: false,
                ping_c1: 2_000,
                ping_c64: 2_000,
                warm_up: 50,
                sync: 200,
                concurrent: 640,
                leased: 640,
                local: 200,
                part_limit: Duration::from_secs(20),
            }
        } else {
            Sizes {
                measure: true,
                ping_c1: 20_000,
                ping_c64: 200_000,
                warm_up: 2_000,
                sync: 20_000,
                concurrent: 100_000,
                leased: 300_000,
                local: 200_000,
                part_limit: Duration::from_secs(10),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redis-benchmark

/// The `PING_MBULK` row of one `redis-benchmark` run.
#[derive(Debug, Clone, Copy)]
struct Ping {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `redis-benchmark -t ping` with `clients` connections; `None` (after saying why) when it
/// is missing, fails or gives no `PING_MBULK` row.
fn ping(port: u16, clients: usize, requests: u64) -> Option<Ping> {
    let args = [
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        port.to_string(),
        "-t".to_owned(),
        "ping".to_owned(),
        "-c".to_owned(),
        clients.to_string(),
        "-n".to_owned(),
        requests.to_string(),
        "--csv".to_owned(),
    ];
    println!("running: redis-benchmark {}", args.join(" "));
    let (status, stdout, stderr) = match run_bounded("redis-benchmark", &args, PING_LIMIT) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "redis-benchmark not found (install redis-tools / redis-server): \
                 no PING baseline in this run"
            );
            return None;
        }
        Err(e) => {
            println!("redis-benchmark could not run: {e}");
            return None;
        }
    };
    if !status {
        println!("redis-benchmark failed or timed out: {}", stderr.trim());
        return None;
    }
    let row = parse_csv(&stdout, "PING_MBULK");
    if row.is_none() {
        println!("no PING_MBULK row in redis-benchmark's output:\n{stdout}");
    }
    row
}

/// Runs a program with output captured, killing it after `limit`: (success, stdout, stderr).
fn run_bounded(
    program: &str,
    args: &[String],
    limit: Duration,
) -> std::io::Result<(bool, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let success = loop {
        match child.try_wait()? {
            Some(status) => break status.success(),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((success, stdout, stderr))
}

/// The row named `test` of `redis-benchmark --csv` output, by the columns its header names
/// (`"test","rps",…,"p50_latency_ms",…,"p99_latency_ms",…`).
fn parse_csv(text: &str, test: &str) -> Option<Ping> {
    let fields = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut header: Option<Vec<String>> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row = fields(line);
        if row.first().is_some_and(|f| f == "test") {
            header = Some(row);
            continue;
        }
        let Some(h) = &header else { continue };
        let col = |name: &str| -> Option<f64> {
            let i = h.iter().position(|c| c == name)?;
            row.get(i)?.parse().ok()
        };
        if row.first().is_some_and(|f| f == test) {
            return Some(Ping {
                rps: col("rps")?,
                p50_us: col("p50_latency_ms")? * 1000.0,
                p99_us: col("p99_latency_ms")? * 1000.0,
            });
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: the server's own time, and redis-rs without tollgate

/// Sends one inline command on a fresh connection and reads a simple or bulk reply.
fn inline_command(port: u16, command: &str) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    if let Some(len) = line.strip_prefix('$') {
        let len: usize = len.trim().parse().ok()?;
        let mut body = vec![0; len + 2];
        r.read_exact(&mut body).ok()?;
        body.truncate(len);
        return String::from_utf8(body).ok();
    }
    line.strip_prefix('+').map(|l| l.trim().to_owned())
}

/// `EVALSHA` calls the server ran so far and the µs it spent in them (`INFO commandstats`).
/// Every command tollgate sends for budgets is a script (admission, refunds) except `ZREM`
/// for concurrency slots, which this policy has none of; the commands scripts run inside are
/// counted in the script's time and again under their own names, so only `EVALSHA` is read.
fn server_time(port: u16) -> Option<(u64, u64)> {
    let text = inline_command(port, "INFO commandstats")?;
    let stats = text
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or("calls=0,usec=0");
    let mut total = (0, 0);
    for field in stats.split(',') {
        match field.split_once('=') {
            Some(("calls", v)) => total.0 = v.parse().ok()?,
            Some(("usec", v)) => total.1 = v.parse().ok()?,
            _ => {}
        }
    }
    Some(total)
}

/// Latency of a redis-rs `PING` through a `ConnectionManager`, `n` times: driven on this thread
/// (`hop` false), or spawned onto a one-worker runtime with the answer sent back over a channel
/// (`hop` true: the shape of the Redis store's `block_on`).
fn redis_rs_ping(url: &str, hop: bool, n: u64, limit: Duration) -> Option<Run> {
    let client = redis::Client::open(url).ok()?;
    let mut run = Run::default();
    run.latencies.reserve(n as usize);
    let start;
    if hop {
        let store = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .ok()?;
        let conn = store.block_on(client.get_connection_manager()).ok()?;
        start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let mut c = conn.clone();
            store.spawn(async move {
                let _ = tx.send(redis::cmd("PING").query_async::<String>(&mut c).await);
            });
            rx.recv().ok()?.ok()?;
            run.latencies.push(t.elapsed().as_nanos() as u64);
            if start.elapsed() >= limit {
                break;
            }
        }
    } else {
        let here = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let mut conn = here.block_on(client.get_connection_manager()).ok()?;
        start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            here.block_on(redis::cmd("PING").query_async::<String>(&mut conn))
                .ok()?;
            run.latencies.push(t.elapsed().as_nanos() as u64);
            if start.elapsed() >= limit {
                break;
            }
        }
    }
    run.elapsed = start.elapsed();
    run.latencies.sort_unstable();
    Some(run)
}

// ---------------------------------------------------------------------------------------------
// tollgate

/// One budget scoped by tenant with limits the bench never reaches: 1 M requests a second (burst
/// 1 M) and 10⁹ tokens a minute. Not 10⁹ requests a second: the scripts keep time in µs with
/// three decimals, and these rates keep the per-call increments well inside that precision.
fn policy(redis_url: Option<&str>, lease: bool) -> String {
    let mut text = String::from("version = 1\n");
    if let Some(url) = redis_url {
        text.push_str(&format!(
            "[redis]\nurl = \"{url}\"\nkey_prefix = \"bench{}\"\non_failure = \"fail_closed\"\n",
            if lease { "-lease" } else { "" }
        ));
    }
    text.push_str(
        "[[budget]]\nname = \"per-tenant\"\nscope = [\"tenant\"]\n\
         requests_per_second = 1000000\nburst = 1000000\ntokens_per_minute = 1000000000\n",
    );
    text.push_str(if redis_url.is_some() {
        "store = \"redis\"\n"
    } else {
        "store = \"local\"\n"
    });
    if lease {
        text.push_str("lease = { size = 20, ttl = \"1s\" }\n");
    }
    text
}

fn engine(text: &str) -> Engine {
    match Engine::from_text(text) {
        Ok(e) => e,
        Err(e) => panic!("benchmark policy is invalid:\n{e}\n{text}"),
    }
}

fn call(tenant: &str) -> Call<'_> {
    Call::new(MODEL)
        .tenant(tenant)
        .prompt(Prompt::Tokens(10))
        .max_tokens(10)
}

/// 10 prompt + 5 completion tokens of the 20 reserved: settle owes Redis a refund.
fn outcome() -> Outcome<'static> {
    Outcome::ok(Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        ..Usage::default()
    })
}

/// Round trips the engine's Redis store made so far (`None` without a store).
fn round_trips(e: &Engine) -> Option<f64> {
    e.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(ROUND_TRIPS)?.trim().parse().ok())
}

/// Round trips per admission between two readings.
fn per_admit(before: Option<f64>, after: Option<f64>, admits: u64) -> Option<f64> {
    Some((after? - before?) / admits.max(1) as f64)
}

/// Scripts and server µs per admission between two `server_time` readings.
fn server_per_admit(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    admits: u64,
) -> Option<(f64, f64)> {
    let (before, after) = (before?, after?);
    let n = admits.max(1) as f64;
    Some((
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n,
    ))
}

/// What one part measured.
#[derive(Debug, Default)]
struct Run {
    /// ns per admission, sorted.
    latencies: Vec<u64>,
    elapsed: Duration,
    /// Refusals and waits, with the first one's text.
    refused: u64,
    first_refusal: Option<String>,
    /// Round trips to Redis per admission (`None` for a local budget).
    trips_per_admit: Option<f64>,
    /// Scripts run per admission and µs the server spent in them per admission.
    server_per_admit: Option<(f64, f64)>,
}

impl Run {
    fn admits(&self) -> u64 {
        self.latencies.len() as u64
    }

    fn per_second(&self) -> f64 {
        self.admits() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, µs.
    fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1] as f64 / 1000.0
    }

    fn refuse(&mut self, d: &Decision) {
        self.refused += 1;
        if self.first_refusal.is_none() {
            self.first_refusal = Some(format!("{d:?}"));
        }
    }
}

/// `admit` + `settle` on this thread, `n` times (at most `limit`), after `warm_up` unrecorded.
fn sync_loop(
    e: &Engine,
    port: Option<u16>,
    tenant: &str,
    warm_up: u64,
    n: u64,
    limit: Duration,
) -> Run {
    let call = call(tenant);
    let outcome = outcome();
    let mut run = Run::default();
    for _ in 0..warm_up {
        match e.admit(&call) {
            Decision::Go(p) => drop(e.settle(p, &outcome)),
            other => run.refuse(&other),
        }
    }
    run.latencies.reserve(n as usize);
    let trips = round_trips(e);
    let server = port.and_then(server_time);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let decision = e.admit(&call);
        let ns = t.elapsed().as_nanos() as u64;
        match decision {
            Decision::Go(p) => {
                run.latencies.push(ns);
                drop(e.settle(p, &outcome));
            }
            other => run.refuse(&other),
        }
        if start.elapsed() >= limit {
            break;
        }
    }
    run.elapsed = start.elapsed();
    run.trips_per_admit = per_admit(trips, round_trips(e), run.admits());
    run.server_per_admit = server_per_admit(server, port.and_then(server_time), run.admits());
    run.latencies.sort_unstable();
    run
}

/// `CONCURRENCY` tasks on a two-worker runtime, each `admit_async` + `settle` until `n`
/// admissions were started in all (or `limit` passed); all on one tenant.
fn concurrent(
    rt: &tokio::runtime::Runtime,
    e: &Engine,
    tenant: &'static str,
    n: u64,
    limit: Duration,
) -> Run {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let e = e.clone();
            let issued = Arc::clone(&issued);
            rt.spawn(async move {
                let call = call(tenant);
                let outcome = outcome();
                let mut run = Run::default();
                run.latencies
                    .reserve((n as usize).div_ceil(CONCURRENCY) * 2);
                while issued.fetch_add(1, Ordering::Relaxed) < n && start.elapsed() < limit {
                    let t = Instant::now();
                    let decision = e.admit_async(&call).await;
                    let ns = t.elapsed().as_nanos() as u64;
                    match decision {
                        Decision::Go(p) => {
                            run.latencies.push(ns);
                            drop(e.settle(p, &outcome));
                        }
                        other => run.refuse(&other),
                    }
                }
                run
            })
        })
        .collect();
    let parts: Vec<Run> = rt.block_on(async {
        let mut parts = Vec::with_capacity(tasks.len());
        for t in tasks {
            parts.push(t.await.expect("bench task"));
        }
        parts
    });
    let mut run = Run {
        elapsed: start.elapsed(),
        ..Run::default()
    };
    for p in parts {
        run.latencies.extend(p.latencies);
        run.refused += p.refused;
        if run.first_refusal.is_none() {
            run.first_refusal = p.first_refusal;
        }
    }
    run.latencies.sort_unstable();
    run
}

/// A Redis part: warm up, measure, and count its round trips.
fn redis_part(
    rt: &tokio::runtime::Runtime,
    e: &Engine,
    port: u16,
    tenant: &'static str,
    sizes: &Sizes,
    n: u64,
) -> Run {
    let warm = concurrent(rt, e, tenant, sizes.warm_up, sizes.part_limit);
    let before = round_trips(e);
    let server = server_time(port);
    let mut run = concurrent(rt, e, tenant, n, sizes.part_limit);
    run.trips_per_admit = per_admit(before, round_trips(e), run.admits());
    run.server_per_admit = server_per_admit(server, server_time(port), run.admits());
    run.refused += warm.refused;
    run.first_refusal = run.first_refusal.or(warm.first_refusal);
    run
}

// ---------------------------------------------------------------------------------------------
// The table

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.4}x")
    } else {
        format!("{r:.2}x")
    }
}

fn ping_row(what: &str, p: Option<Ping>) {
    match p {
        Some(p) => println!(
            "{what:<44} {:>9.1} {:>9.1} {:>11} {:>8}",
            p.p50_us,
            p.p99_us,
            fmt_rate(p.rps),
            "1"
        ),
        None => println!("{what:<44} not measured (no redis-benchmark)"),
    }
}

/// One tollgate row, with ratios against `base`: p50 ÷ the floor's p50, admits/s ÷ its rps.
fn row(what: &str, run: &Run, base: Option<Ping>) {
    let trips = run
        .trips_per_admit
        .map_or_else(|| "-".to_owned(), |t| format!("{t:.3}"));
    let ratios = base.map_or_else(String::new, |b| {
        format!(
            "  p50 {}  rate {}",
            fmt_ratio(run.percentile_us(50.0) / b.p50_us),
            fmt_ratio(run.per_second() / b.rps)
        )
    });
    println!(
        "{what:<44} {:>9.1} {:>9.1} {:>11} {trips:>8}{ratios}",
        run.percentile_us(50.0),
        run.percentile_us(99.0),
        fmt_rate(run.per_second()),
    );
}

fn print_table(c1: Option<Ping>, c64: Option<Ping>, runs: &[(&str, &Run, Option<Ping>)]) {
    println!();
    println!("== tollgate admission with the Redis store vs redis-benchmark PING (this run) ==");
    println!(
        "{:<44} {:>9} {:>9} {:>11} {:>8}  ratios vs PING",
        "", "p50 µs", "p99 µs", "admits/s", "RT/admit"
    );
    ping_row("PING, 1 client (redis-benchmark -c 1)", c1);
    ping_row("PING, 64 clients (redis-benchmark -c 64)", c64);
    for (what, run, base) in runs {
        row(what, run, *base);
    }
    println!(
        "ratios: 'p50' = tollgate p50 ÷ PING p50, 'rate' = tollgate admits/s ÷ PING requests/s; \
         the one-thread rows against PING -c 1, the 64-task rows against PING -c 64 \
         (the local row against PING -c 1, for scale). RT/admit = Redis round trips per \
         admission (admission pipelines, background flushes of refunds, lease renewals)."
    );
    for (what, run, _) in runs {
        let server = run
            .server_per_admit
            .map_or_else(String::new, |(scripts, us)| {
                format!("; per admission: {scripts:.3} EVALSHA, {us:.1} µs of server time in them")
            });
        println!(
            "{what}: {} admissions in {:.2} s, max {:.1} µs{server}",
            run.admits(),
            run.elapsed.as_secs_f64(),
            run.latencies.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
}

fn main() {
    let sizes = Sizes::from_args();
    let server = match RedisServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start redis-server for the bench: {e}"),
    };
    let port = server.port();
    println!(
        "redis-server on {} ({} mode)",
        server.url(),
        if sizes.measure { "measurement" } else { "test" }
    );

    // The floor: PING on the same server, one client and 64.
    let c1 = ping(port, 1, sizes.ping_c1);
    let c64 = ping(port, CONCURRENCY, sizes.ping_c64);

    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // (a) one thread, sync admit.
    let redis = engine(&policy(Some(&url), false));
    let sync = sync_loop(
        &redis,
        Some(port),
        "sync",
        sizes.warm_up,
        sizes.sync,
        sizes.part_limit,
    );

    // (b) 64 tasks, admit_async, one tenant.
    let c64_run = redis_part(&rt, &redis, port, "hot", &sizes, sizes.concurrent);

    // (c) the same with a lease of 20.
    let leased_engine = engine(&policy(Some(&url), true));
    let leased = redis_part(&rt, &leased_engine, port, "hot", &sizes, sizes.leased);

    // (d) for scale: the same budget in this process.
    let local = sync_loop(
        &engine(&policy(None, false)),
        None,
        "local",
        sizes.warm_up,
        sizes.local,
        sizes.part_limit,
    );

    // Where the time of (a) goes: redis-rs's PING without tollgate, on this thread and through
    // a one-worker runtime and a channel as the store does it.
    let direct = redis_rs_ping(&url, false, sizes.sync / 2, sizes.part_limit);
    let hop = redis_rs_ping(&url, true, sizes.sync / 2, sizes.part_limit);

    print_table(
        c1,
        c64,
        &[
            ("Redis budget, 1 thread, admit", &sync, c1),
            ("Redis budget, 64 tasks, admit_async", &c64_run, c64),
            ("Redis budget + lease 20, 64 tasks", &leased, c64),
            ("local budget, 1 thread, admit", &local, c1),
        ],
    );
    println!();
    println!("where the time of one sync admission goes (one thread, redis-rs without tollgate):");
    for (what, run) in [
        ("redis-rs PING, driven on this thread", &direct),
        ("redis-rs PING, via 1-worker runtime + channel", &hop),
    ] {
        match run {
            Some(run) => row(what, run, c1),
            None => println!("{what:<44} could not run"),
        }
    }

    // Correctness, in every mode: nothing is refused under these limits.
    for (what, run) in [
        ("sync", &sync),
        ("64 tasks", &c64_run),
        ("64 tasks with a lease", &leased),
        ("local", &local),
    ] {
        assert_eq!(
            run.refused, 0,
            "{what}: {} admissions were not Go (first: {:?})",
            run.refused, run.first_refusal
        );
        assert!(run.admits() > 0, "{what}: no admission measured");
    }
    drop(rt);
    drop(server);
}
