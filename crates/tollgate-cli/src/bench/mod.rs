//! `tollgate bench`: the call API against a bare hyper-util client, same upstream, same run.
//!
//! The upstream runs in another process and is never the bottleneck (nginx with canned answers
//! when installed, else `tollgate upstream`; see [`upstream`]), so the throughput ratio and the
//! client CPU per request (this process's user + system time over the run, divided by the
//! requests) show what the client costs.
//!
//! N requests at concurrency C go through `Engine::send` (or `Engine::stream`) with a policy that
//! has one upstream and one budget (so admission, accounting and settlement all run), and
//! through hyper-util's pooled client with nothing around it. Each side runs twice, alternating,
//! after a warm-up; the better run of each is reported with the ratio of throughputs and the
//! added median latency (and, for streams, time to first token).
//!
//! With `--serve` the comparison is `tollgate serve` (a [`Proxy`] in front of the same upstream,
//! with the same policy and a virtual key) against the bare client straight to the upstream:
//! closed loop at concurrency C, then open loop at a fixed rate (requests start on a clock, so a
//! slow answer cannot slow the load down), where the added p99 is checked against 1 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tollgate::policy::{Policy, Serve, VirtualKey};
use tollgate::{ChatRequest, Engine};
use tollgate_serve::Proxy;

use crate::{BenchArgs, exit};

pub(crate) mod upstream;

/// This process's CPU time so far (user + system, every thread).
fn cpu_now() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    per_second: f64,
    latency: Vec<Duration>,
    ttft: Vec<Duration>,
    errors: usize,
    /// This process's CPU time over the run.
    cpu: Duration,
    /// Requests made.
    n: usize,
}

impl Run {
    /// CPU per request in µs.
    fn cpu_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.n.max(1) as f64
    }

    fn quantile(v: &[Duration], p: f64) -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
}

/// Runs `tollgate bench`.
pub(crate) fn run(args: &BenchArgs) -> u8 {
    let Some(runtime) = crate::runtime("tollgate-bench", args.threads) else {
        return exit::FAILED;
    };
    let (_upstream, base_url, what, separate) = match &args.url {
        Some(url) => (
            None,
            url.trim_end_matches('/').to_owned(),
            "the upstream at --url".to_owned(),
            true,
        ),
        None => match upstream::start(args.upstream, args.words) {
            Ok(up) => {
                let base = if args.stream {
                    up.sse_base.clone()
                } else {
                    up.json_base.clone()
                };
                let (what, separate) = (up.what.clone(), up.separate);
                (Some(up), base, what, separate)
            }
            Err(e) => {
                eprintln!("error: cannot start the upstream: {e}");
                return exit::FAILED;
            }
        },
    };
    println!("upstream: {what}");
    if !separate {
        println!(
            "  (CPU per request below includes the upstream's work; --upstream nginx or process \
             keeps it out)"
        );
    }
    let policy = format!(
        r#"version = 1
[[upstream]]
name = "bench"
base_url = "{base_url}"
[[budget]]
name = "bench"
scope = ["tenant"]
requests_per_second = 1000000
tokens_per_minute = 100000000000
concurrency = 100000
"#
    );
    let engine = match Policy::from_toml(&policy) {
        Ok(mut p) => {
            p.serve = Some(Serve {
                keys: vec![VirtualKey::from_key(BENCH_KEY, "bench")],
                ..Serve::default()
            });
            Engine::new(p)
        }
        Err(errors) => {
            eprintln!("error: the bench policy is invalid: {errors}");
            return exit::FAILED;
        }
    };
    if args.serve {
        return run_serve(args, &runtime, engine, &base_url);
    }
    let hyper: HyperClient<_, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();
    let url = format!("{base_url}/chat/completions");
    let body = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": args.words,
    });
    let mut raw_body = body.clone();
    if args.stream {
        raw_body["stream"] = json!(true);
        raw_body["stream_options"] = json!({"include_usage": true});
    }
    let raw_body = Bytes::from(raw_body.to_string());
    let mode = if args.stream { "stream" } else { "JSON" };
    println!(
        "tollgate bench: {} {mode} requests at concurrency {} against {base_url} ({} runtime threads)",
        args.requests, args.concurrency, args.threads
    );
    let c = args.concurrency.max(1);
    let result = runtime.block_on(async {
        let bare = |n: usize| {
            let hyper = hyper.clone();
            let url = url.clone();
            let raw_body = raw_body.clone();
            measure(n, c, move || {
                let hyper = hyper.clone();
                let url = url.clone();
                let raw_body = raw_body.clone();
                async move { bare_call(&hyper, &url, raw_body).await }
            })
        };
        let ours = |n: usize| {
            let engine = engine.clone();
            let body = body.clone();
            let stream = args.stream;
            measure(n, c, move || {
                let engine = engine.clone();
                let request = ChatRequest::new(body.clone()).tenant("bench");
                async move { tollgate_call(&engine, request, stream).await }
            })
        };
        let warm = (args.requests / 10).max(c);
        bare(warm).await;
        ours(warm).await;
        let b1 = bare(args.requests).await;
        let t1 = ours(args.requests).await;
        let b2 = bare(args.requests).await;
        let t2 = ours(args.requests).await;
        let best = |a: Run, b: Run| if a.per_second >= b.per_second { a } else { b };
        (best(b1, b2), best(t1, t2))
    });
    let (bare, ours) = result;
    report(&bare, &ours, args.stream);
    if bare.errors + ours.errors > 0 {
        eprintln!(
            "warning: {} bare and {} tollgate requests failed",
            bare.errors, ours.errors
        );
        return exit::PARTIAL;
    }
    exit::OK
}

fn report(bare: &Run, ours: &Run, stream: bool) {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    let row = |name: &str, r: &Run| {
        let mut line = format!(
            "  {name:<10} {:>10.0} req/s   cpu {:>6.1} µs/req   p50 {:>8} ms   p99 {:>8} ms",
            r.per_second,
            r.cpu_per_request(),
            ms(Run::quantile(&r.latency, 0.5)),
            ms(Run::quantile(&r.latency, 0.99)),
        );
        if stream {
            line.push_str(&format!(
                "   ttft p50 {:>8} ms",
                ms(Run::quantile(&r.ttft, 0.5))
            ));
        }
        println!("{line}");
    };
    row("bare hyper", bare);
    row("tollgate", ours);
    let added = |a: &[Duration], b: &[Duration]| {
        let d = Run::quantile(b, 0.5).as_secs_f64() - Run::quantile(a, 0.5).as_secs_f64();
        format!("{:+.1} µs", d * 1e6)
    };
    println!(
        "  ratio      throughput {:.3} of bare hyper; added median latency {}",
        ours.per_second / bare.per_second.max(f64::MIN_POSITIVE),
        added(&bare.latency, &ours.latency)
    );
    println!(
        "             client CPU per request {:.2}x bare hyper's",
        ours.cpu_per_request() / bare.cpu_per_request().max(f64::MIN_POSITIVE)
    );
    if stream {
        println!(
            "             added median time to first token {}",
            added(&bare.ttft, &ours.ttft)
        );
    }
}

/// Runs `n` calls of `call` with `c` in flight at once; each returns (latency, ttft, ok).
async fn measure<F, Fut>(n: usize, c: usize, call: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Duration, Option<Duration>, bool)> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = cpu_now();
    let started = Instant::now();
    let mut workers = Vec::with_capacity(c);
    for _ in 0..c.min(n) {
        let call = Arc::clone(&call);
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut out = vec![];
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                out.push(call().await);
            }
            out
        }));
    }
    let mut latency = Vec::with_capacity(n);
    let mut ttft = Vec::with_capacity(n);
    let mut errors = 0;
    for w in workers {
        for (lat, first, ok) in w.await.unwrap_or_default() {
            if ok {
                latency.push(lat);
                ttft.extend(first);
            } else {
                errors += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_now().saturating_sub(cpu);
    latency.sort();
    ttft.sort();
    Run {
        per_second: n as f64 / elapsed.as_secs_f64(),
        latency,
        ttft,
        errors,
        cpu,
        n,
    }
}

async fn bare_call(
    client: &HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    body: Bytes,
) -> (Duration, Option<Duration>, bool) {
    let started = Instant::now();
    let request = match http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(_) => return (started.elapsed(), None, false),
    };
    bare_response(client, request, started).await
}

async fn bare_response(
    client: &HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
    started: Instant,
) -> (Duration, Option<Duration>, bool) {
    let Ok(response) = client.request(request).await else {
        return (started.elapsed(), None, false);
    };
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if first.is_none() && f.data_ref().is_some_and(|d| !d.is_empty()) {
                    first = Some(started.elapsed());
                }
            }
            Err(_) => return (started.elapsed(), first, false),
        }
    }
    (started.elapsed(), first, ok)
}

async fn tollgate_call(
    engine: &Engine,
    request: ChatRequest,
    stream: bool,
) -> (Duration, Option<Duration>, bool) {
    let started = Instant::now();
    if !stream {
        let ok = engine.send(request).await.is_ok();
        return (started.elapsed(), None, ok);
    }
    let Ok(mut s) = engine.stream(request).await else {
        return (started.elapsed(), None, false);
    };
    let mut first = None;
    let mut ok = true;
    while let Some(event) = s.next().await {
        match event {
            Ok(_) => {
                first.get_or_insert_with(|| started.elapsed());
            }
            Err(_) => ok = false,
        }
    }
    (started.elapsed(), first, ok)
}

/// The virtual key of `--serve`.
const BENCH_KEY: &str = "vk-bench";

type Client = HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One bare call, with the virtual key when `key` is given.
async fn keyed_call(
    client: Client,
    url: Arc<str>,
    body: Bytes,
    key: bool,
) -> (Duration, Option<Duration>, bool) {
    let started = Instant::now();
    let mut request = http::Request::post(&*url).header("content-type", "application/json");
    if key {
        request = request.header("authorization", format!("Bearer {BENCH_KEY}"));
    }
    match request.body(Full::new(body)) {
        Ok(r) => bare_response(&client, r, started).await,
        Err(_) => (started.elapsed(), None, false),
    }
}

/// `rate` calls a second for `secs` seconds, each started on the clock whatever the others do.
async fn measure_rate<F, Fut>(rate: u32, secs: u64, call: F) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Duration, Option<Duration>, bool)> + Send + 'static,
{
    let n = (u64::from(rate.max(1)) * secs) as usize;
    let cpu = cpu_now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        tasks.push(tokio::spawn(call()));
    }
    let mut latency = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((lat, _, true)) => latency.push(lat),
            _ => errors += 1,
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_now().saturating_sub(cpu);
    latency.sort();
    Run {
        per_second: n as f64 / elapsed.as_secs_f64(),
        latency,
        ttft: vec![],
        errors,
        cpu,
        n,
    }
}

/// `tollgate bench --serve`.
fn run_serve(
    args: &BenchArgs,
    runtime: &tokio::runtime::Runtime,
    engine: Engine,
    base_url: &str,
) -> u8 {
    let body = Bytes::from(
        json!({
            "model": args.model,
            "messages": [{"role": "user", "content": "Say something short."}],
            "max_tokens": args.words,
        })
        .to_string(),
    );
    let c = args.concurrency.max(1);
    let direct: Arc<str> = Arc::from(format!("{base_url}/chat/completions"));
    let result = runtime.block_on(async {
        let proxy = match Proxy::start(engine, None, Some(([127, 0, 0, 1], 0).into())).await {
            Ok(p) => p,
            Err(e) => return Err(format!("cannot start the proxy: {e}")),
        };
        let proxied: Arc<str> = Arc::from(format!("http://{}/v1/chat/completions", proxy.addr()));
        println!(
            "tollgate bench --serve: {} JSON requests at concurrency {c}, then {} requests/s for 3 s, \
             straight to {base_url} and through the proxy at http://{}/v1",
            args.requests,
            args.rate,
            proxy.addr()
        );
        let client: Client = HyperClient::builder(TokioExecutor::new()).build_http();
        let side = |url: &Arc<str>, key: bool| {
            let (client, url, body) = (client.clone(), Arc::clone(url), body.clone());
            move || keyed_call(client.clone(), Arc::clone(&url), body.clone(), key)
        };
        let warm = (args.requests / 10).max(c);
        measure(warm, c, side(&direct, false)).await;
        measure(warm, c, side(&proxied, true)).await;
        let d1 = measure(args.requests, c, side(&direct, false)).await;
        let p1 = measure(args.requests, c, side(&proxied, true)).await;
        let d2 = measure(args.requests, c, side(&direct, false)).await;
        let p2 = measure(args.requests, c, side(&proxied, true)).await;
        let best = |a: Run, b: Run| if a.per_second >= b.per_second { a } else { b };
        let closed = (best(d1, d2), best(p1, p2));
        let rated = (
            measure_rate(args.rate, 3, side(&direct, false)).await,
            measure_rate(args.rate, 3, side(&proxied, true)).await,
        );
        proxy.shutdown().await;
        Ok((closed, rated))
    });
    let ((d, p), (rd, rp)) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let added = |a: &Run, b: &Run, q: f64| {
        us(Run::quantile(&b.latency, q)) - us(Run::quantile(&a.latency, q))
    };
    let row = |name: &str, r: &Run| {
        println!(
            "  {name:<28} {:>9.0} req/s   cpu {:>6.1} µs/req   p50 {:>8.0} µs   p99 {:>8.0} µs",
            r.per_second,
            r.cpu_per_request(),
            us(Run::quantile(&r.latency, 0.5)),
            us(Run::quantile(&r.latency, 0.99)),
        );
    };
    println!("closed loop, concurrency {c}:");
    row("straight to the upstream", &d);
    row("through tollgate serve", &p);
    println!(
        "  throughput ratio {:.3}; added p50 {:+.0} µs, added p99 {:+.0} µs",
        p.per_second / d.per_second.max(f64::MIN_POSITIVE),
        added(&d, &p, 0.5),
        added(&d, &p, 0.99)
    );
    println!(
        "  the proxy's own CPU per request {:.1} µs (this process's CPU through the proxy, less \
         the client's straight to the upstream)",
        p.cpu_per_request() - d.cpu_per_request()
    );
    println!("open loop, {} requests/s for 3 s:", args.rate);
    row("straight to the upstream", &rd);
    row("through tollgate serve", &rp);
    let p99 = added(&rd, &rp, 0.99);
    let verdict = match (args.rate, p99 <= 1000.0) {
        (2000, true) => "met",
        (2000, false) => "MISSED",
        _ => "stated at --rate 2000",
    };
    println!(
        "  added p50 {:+.0} µs, added p99 {:+.0} µs (target: added p99 <= 1000 µs at 2000 requests/s: {verdict})",
        added(&rd, &rp, 0.5),
        p99,
    );
    let errors = d.errors + p.errors + rd.errors + rp.errors;
    if errors > 0 {
        eprintln!("warning: {errors} requests failed");
        return exit::PARTIAL;
    }
    exit::OK
}
