//! `tollgate demo`: real calls through the engine against fault-injecting upstreams on loopback.
//!
//! The bundled `examples/policy.toml` is loaded as is, except that each of its upstreams is
//! pointed at its own test upstream on 127.0.0.1 (with no credentials: the test upstreams need
//! none). The upstreams answer in 20–200 ms and inject 5 % 429 with Retry-After, 2 % 503 and
//! 1 % cut streams. Eight tenants send calls (half of them streamed, some repeated so the cache
//! answers) at a pace that runs into the per-model rate budget; the run ends with a table per
//! tenant and a self-check: every request-rate budget of the policy is checked against what the
//! upstreams actually received, and the command fails if any was exceeded.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use tollgate::policy::{Auth, ScopeDim, Unit};
use tollgate::rng::SplitMix64;
use tollgate::{CallError, ChatRequest, Denial, Engine, Policy, Source};
use tollgate_testkit::{Arrival, FaultMix, TestUpstream};

use crate::fmt::{Table, money};
use crate::{DemoArgs, exit};

/// The example policy, as in the repository.
const POLICY: &str = include_str!("../../../examples/policy.toml");

/// Tenants and their share of the calls (a noisy one, a quiet tail).
const TENANTS: [(&str, u32); 8] = [
    ("acme", 30),
    ("globex", 15),
    ("initech", 12),
    ("umbrella", 12),
    ("hooli", 10),
    ("stark", 8),
    ("wayne", 7),
    ("tyrell", 6),
];

/// Requested models and their share.
const MODELS: [(&str, u32); 3] = [("gpt-4o", 55), ("gpt-4o-mini", 30), ("glm-4-flash", 15)];

/// Calls offered per second, in all.
const OFFERED_PER_SECOND: f64 = 200.0;

/// What one call ended as.
#[derive(Debug, Default, Clone)]
struct Row {
    tenant: &'static str,
    ok: bool,
    denied: Option<String>,
    failed: Option<String>,
    waited: bool,
    retries: u32,
    cache: bool,
    tokens: u64,
    spend: f64,
    latency: Duration,
}

/// Runs `tollgate demo`.
pub(crate) fn run(args: &DemoArgs) -> u8 {
    let mut policy = match Policy::from_toml(POLICY) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("error: the bundled examples/policy.toml is invalid (a bug in this build):");
            eprintln!("{errors}");
            return exit::FAILED;
        }
    };
    let mix = FaultMix {
        rate_limited: 0.05,
        unavailable: 0.02,
        cut_stream: 0.01,
        retry_after: 1,
        cut_after: 3,
        ..FaultMix::default()
    };
    let mut upstreams = Vec::new();
    for (i, u) in policy.upstreams.iter_mut().enumerate() {
        let started = TestUpstream::builder()
            .latency(Duration::from_millis(20)..Duration::from_millis(200))
            .fault_mix(mix)
            .seed(args.seed.wrapping_add(i as u64))
            .default_words(40)
            .start();
        let up = match started {
            Ok(up) => up,
            Err(e) => {
                eprintln!("error: cannot start the test upstream: {e}");
                return exit::FAILED;
            }
        };
        u.base_url = up.base_url();
        u.auth = Auth::None;
        u.proxy = None;
        u.ca_file = None;
        upstreams.push((u.name.clone(), up));
    }
    let engine = Engine::new(policy.clone());
    let Some(runtime) = crate::runtime("tollgate-demo", 2) else {
        return exit::FAILED;
    };

    let n = args.calls.max(1);
    println!(
        "tollgate demo: {n} calls from {} tenants (half streamed) through examples/policy.toml",
        TENANTS.len()
    );
    println!(
        "upstreams {} redirected to test upstreams on 127.0.0.1: latency 20-200 ms, 5% 429 \
         with Retry-After, 2% 503, 1% cut streams",
        upstreams
            .iter()
            .map(|(name, _)| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = progress_thread(n, Arc::clone(&done), Arc::clone(&rows), args.quiet);
    runtime.block_on(drive(&engine, n, args.seed, &rows, &done));
    progress.finish();
    let elapsed = started.elapsed();

    let rows = rows.lock().clone();
    print_tenants(&rows);
    println!(
        "\n{} calls in {:.1} s; {} upstream requests; cache: {} hits",
        rows.len(),
        elapsed.as_secs_f64(),
        upstreams
            .iter()
            .map(|(_, u)| u.request_count())
            .sum::<usize>(),
        engine.cache_stats().hits
    );
    let arrivals: Vec<(String, Arrival)> = upstreams
        .iter()
        .flat_map(|(name, up)| up.log().into_iter().map(move |a| (name.clone(), a)))
        .collect();
    let violations = self_check(&policy, &arrivals);
    if violations == 0 {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// Offers `n` calls at [`OFFERED_PER_SECOND`] and records how each ended.
async fn drive(
    engine: &Engine,
    n: usize,
    seed: u64,
    rows: &Arc<Mutex<Vec<Row>>>,
    done: &Arc<AtomicUsize>,
) {
    let start = tokio::time::Instant::now();
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let tenant = pick(&TENANTS, rng.next_u64());
        let model = pick(&MODELS, rng.next_u64());
        let stream = i % 2 == 1;
        let repeated = rng.next_u64() % 100 < 15;
        let (content, temperature) = if repeated {
            (
                format!("What is rule {} of the handbook?", rng.next_u64() % 8),
                0.0,
            )
        } else {
            (format!("Call {i} from {tenant}: summarise the day."), 0.7)
        };
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 40 + rng.next_u64() % 80,
            "temperature": temperature,
            "user": tenant,
        });
        let at = start + Duration::from_secs_f64(i as f64 / OFFERED_PER_SECOND);
        let engine = engine.clone();
        let rows = Arc::clone(rows);
        let done = Arc::clone(done);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let request = ChatRequest::new(body)
                .tenant(tenant)
                .deadline(Duration::from_secs(60));
            let row = one_call(&engine, request, tenant, stream).await;
            rows.lock().push(row);
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn one_call(
    engine: &Engine,
    request: ChatRequest,
    tenant: &'static str,
    stream: bool,
) -> Row {
    let sent = Instant::now();
    let mut row = Row {
        tenant,
        ..Row::default()
    };
    let result: Result<(), CallError> = if stream {
        match engine.stream(request).await {
            Ok(mut s) => {
                let mut end = Ok(());
                while let Some(event) = s.next().await {
                    if let Err(e) = event {
                        end = Err(e);
                    }
                }
                row.cache = s.source() != Source::Upstream;
                row.retries = s.attempts().saturating_sub(1);
                row.waited = !s.queued().is_zero();
                row.tokens = s.usage().map_or(0, |u| u.total_tokens);
                row.spend = s.settlement().map_or(0.0, |st| st.spend);
                end
            }
            Err(e) => Err(e),
        }
    } else {
        match engine.send(request).await {
            Ok(r) => {
                row.cache = r.source != Source::Upstream;
                row.retries = r.attempts.saturating_sub(1);
                row.waited = !r.queued.is_zero();
                row.tokens = r.usage.map_or(0, |u| u.total_tokens);
                row.spend = r.settlement.map_or(0.0, |st| st.spend);
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    row.latency = sent.elapsed();
    match result {
        Ok(()) => row.ok = true,
        Err(CallError::Denied(d)) => {
            row.waited = row.latency > Duration::from_millis(5);
            row.denied = Some(denied_as(&d));
        }
        Err(CallError::GaveUp { reason, .. }) => {
            row.failed = Some(format!("gave up ({})", reason.code));
        }
        Err(e) => row.failed = Some(e.code().to_owned()),
    }
    row
}

/// A progress bar on stderr (redrawn in place on a terminal, a line every few seconds otherwise).
struct Progress {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn progress_thread(
    n: usize,
    done: Arc<AtomicUsize>,
    rows: Arc<Mutex<Vec<Row>>>,
    quiet: bool,
) -> Progress {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = (!quiet).then(|| {
        std::thread::spawn(move || {
            let tty = std::io::stderr().is_terminal();
            let every = if tty { 10 } else { 30 };
            let mut tick = 0u64;
            loop {
                let finished = flag.load(Ordering::Relaxed);
                if finished || tick.is_multiple_of(every) {
                    let d = done.load(Ordering::Relaxed);
                    let (denied, failed) = {
                        let rows = rows.lock();
                        (
                            rows.iter().filter(|r| r.denied.is_some()).count(),
                            rows.iter().filter(|r| r.failed.is_some()).count(),
                        )
                    };
                    let width = 30;
                    let filled = d * width / n.max(1);
                    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
                    let line = format!("[{bar}] {d}/{n} calls, {denied} denied, {failed} failed");
                    let mut err = std::io::stderr().lock();
                    let _ = if tty {
                        write!(err, "\r{line}")
                    } else {
                        writeln!(err, "{line}")
                    };
                    let _ = err.flush();
                }
                if finished {
                    if tty {
                        eprintln!();
                    }
                    return;
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    Progress { stop, handle }
}

fn print_tenants(rows: &[Row]) {
    let mut by: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by.entry(r.tenant).or_default().push(r);
    }
    let mut table = Table::new(
        &[
            "tenant", "calls", "admitted", "waited", "denied", "failed", "retries", "cache",
            "tokens", "spend", "p50 ms", "p95 ms", "p99 ms",
        ],
        &[
            false, true, true, true, true, true, true, true, true, true, true, true, true,
        ],
    );
    let mut all: Vec<&Row> = vec![];
    let add = |name: &str, rs: &[&Row], table: &mut Table| {
        let count = |f: &dyn Fn(&Row) -> bool| rs.iter().filter(|r| f(r)).count().to_string();
        let mut lat: Vec<Duration> = rs.iter().filter(|r| r.ok).map(|r| r.latency).collect();
        lat.sort();
        let q = |p: f64| -> String {
            if lat.is_empty() {
                return "-".into();
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            format!("{:.0}", lat[i].as_secs_f64() * 1000.0)
        };
        table.row(vec![
            name.to_owned(),
            rs.len().to_string(),
            count(&|r| r.denied.is_none()),
            count(&|r| r.waited),
            count(&|r| r.denied.is_some()),
            count(&|r| r.failed.is_some()),
            rs.iter().map(|r| r.retries).sum::<u32>().to_string(),
            count(&|r| r.cache),
            rs.iter().map(|r| r.tokens).sum::<u64>().to_string(),
            money(rs.iter().map(|r| r.spend).sum::<f64>()),
            q(0.50),
            q(0.95),
            q(0.99),
        ]);
    };
    for (tenant, rs) in &by {
        add(tenant, rs, &mut table);
        all.extend(rs.iter().copied());
    }
    add("all", &all, &mut table);
    println!("\nPer tenant (latency of answered calls, waiting included):");
    print!("{}", table.render(2));
    let reasons = unanswered(rows);
    if !reasons.is_empty() {
        println!("\nWhy calls did not get an answer:");
        for (why, n) in reasons {
            println!("  {n:>5}  {why}");
        }
    }
}

/// How a denied call is counted in "why calls did not get an answer": by the deciding budget
/// when a budget decided, else by what the denial's code means, with the code.
fn denied_as(d: &Denial) -> String {
    if let Some(budget) = &d.budget {
        return format!("denied by budget '{budget}'");
    }
    let what = match d.code() {
        "unavailable" => "no target available",
        "store_unavailable" => "budget store unavailable",
        "unknown_price" => "no price for the model",
        "context_window" => "over the model's context window",
        "invalid_request" => "invalid request",
        _ => "denied",
    };
    format!("{what} ({})", d.code())
}

/// Why calls did not get an answer: each denial (see [`denied_as`]) and failure, with its count.
fn unanswered(rows: &[Row]) -> BTreeMap<String, usize> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        if let Some(d) = &r.denied {
            *reasons.entry(d.clone()).or_default() += 1;
        }
        if let Some(f) = &r.failed {
            *reasons.entry(format!("failed: {f}")).or_default() += 1;
        }
    }
    reasons
}

/// Time between admission and arrival that the self-check allows for (a new connection, a
/// busy runtime): two calls admitted `t` apart may arrive up to this much closer together.
const JITTER: f64 = 0.25;

/// Checks every request-rate budget against the arrival logs: in any window of length `t`, a
/// budget key may have received at most `burst + rate × (t + JITTER) + 1` requests (GCRA's
/// bound, widened for the time between admission and arrival). Returns the number of
/// violations.
fn self_check(policy: &Policy, arrivals: &[(String, Arrival)]) -> usize {
    println!(
        "\nSelf-check against the upstreams' arrival logs ({} requests; in any window t a key may \
         receive burst + rate x (t + {JITTER} s) + 1):",
        arrivals.len()
    );
    let mut violations = 0;
    for budget in &policy.budgets {
        if budget.scope.contains(&ScopeDim::Route)
            || budget.scope.contains(&ScopeDim::Key)
            || !budget.matcher.route.is_empty()
            || !budget.matcher.key.is_empty()
        {
            println!(
                "  budget '{}': scoped or matched by route/key, not visible in the log; skipped",
                budget.name
            );
            continue;
        }
        let limits: Vec<_> = budget
            .limits
            .iter()
            .filter(|l| l.kind.unit() == Unit::Requests)
            .collect();
        if limits.is_empty() {
            println!(
                "  budget '{}': no request limit (its token and spend limits are enforced from \
                 usage, which the log does not carry); skipped",
                budget.name
            );
            continue;
        }
        let mut keys: BTreeMap<String, Vec<std::time::Instant>> = BTreeMap::new();
        for (upstream, a) in arrivals {
            let model = a.model.as_deref().unwrap_or("");
            let tenant = a.tenant.as_deref().unwrap_or("");
            let m = &budget.matcher;
            let matches = |globs: &[tollgate::policy::Glob], v: &str| {
                globs.is_empty() || globs.iter().any(|g| g.matches(v))
            };
            if !(matches(&m.model, model)
                && matches(&m.tenant, tenant)
                && matches(&m.upstream, upstream))
            {
                continue;
            }
            let key: Vec<&str> = budget
                .scope
                .iter()
                .map(|d| match d {
                    ScopeDim::Tenant => tenant,
                    ScopeDim::Model => model,
                    ScopeDim::Upstream => upstream.as_str(),
                    _ => "",
                })
                .collect();
            keys.entry(key.join("/")).or_default().push(a.at);
        }
        for limit in limits {
            let rate = limit.amount / limit.kind.window().as_secs_f64();
            let mut worst: (f64, String, usize, f64) = (0.0, String::new(), 0, 0.0);
            let mut broken = 0;
            for (key, times) in &mut keys {
                times.sort();
                for i in 0..times.len() {
                    for j in i..times.len() {
                        let t = times[j].duration_since(times[i]).as_secs_f64();
                        let allowed = limit.burst + rate * (t + JITTER) + 1.0;
                        let seen = (j - i + 1) as f64;
                        if seen / allowed > worst.0 {
                            worst = (seen / allowed, key.clone(), j - i + 1, t);
                        }
                        if seen > allowed {
                            broken += 1;
                        }
                    }
                }
            }
            let verdict = if broken == 0 { "held" } else { "EXCEEDED" };
            println!(
                "  budget '{}' {} = {} (burst {}): {verdict} over {} key(s); closest: {} requests \
                 in {:.2} s for '{}' ({:.0}% of what it allows)",
                budget.name,
                limit.kind.as_str(),
                limit.amount,
                limit.burst,
                keys.len(),
                worst.2,
                worst.3,
                worst.1,
                worst.0 * 100.0
            );
            if broken > 0 {
                violations += 1;
            }
        }
    }
    if violations == 0 {
        println!("  every checked budget held.");
    } else {
        println!("  {violations} budget limit(s) were exceeded: this is a bug; please report it.");
    }
    violations
}

fn pick<T: Copy>(items: &[(T, u32)], draw: u64) -> T {
    let total: u64 = items.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut x = draw % total.max(1);
    for (item, w) in items {
        if x < u64::from(*w) {
            return *item;
        }
        x -= u64::from(*w);
    }
    items[0].0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tollgate::DenyReason;
    use tollgate::policy::LimitKind;

    use super::*;

    #[test]
    fn a_denial_without_a_budget_is_shown_by_its_reason_not_as_a_budget() {
        let unavailable = Denial {
            budget: None,
            key: None,
            reason: DenyReason::Unavailable {
                route: "gpt-4o".into(),
                detail: "openai/gpt-4o: circuit open".into(),
                retry_in: None,
            },
        };
        let exhausted = Denial {
            budget: Some(Arc::from("per-model")),
            key: Some(Arc::from("model=gpt-4o")),
            reason: DenyReason::Exhausted {
                limit: LimitKind::RequestsPerSecond,
                retry_after: Duration::from_millis(20),
            },
        };
        let row = |denied: Option<String>, failed: Option<&str>| Row {
            denied,
            failed: failed.map(str::to_owned),
            ..Row::default()
        };
        let rows = [
            row(Some(denied_as(&unavailable)), None),
            row(Some(denied_as(&unavailable)), None),
            row(Some(denied_as(&exhausted)), None),
            row(None, Some("gave up (attempts_exhausted)")),
            row(None, None),
        ];
        let reasons: Vec<(String, usize)> = unanswered(&rows).into_iter().collect();
        assert_eq!(
            reasons,
            [
                ("denied by budget 'per-model'".to_owned(), 1),
                ("failed: gave up (attempts_exhausted)".to_owned(), 1),
                ("no target available (unavailable)".to_owned(), 2),
            ]
        );
    }
}
