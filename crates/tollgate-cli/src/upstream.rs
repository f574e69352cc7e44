//! `tollgate upstream`: the fault-injecting OpenAI-compatible test upstream (the one `demo`
//! uses) as a process of its own on 127.0.0.1, for trying a client or a policy without keys or
//! network, and for tests of programs that only have the installed tollgate.

use std::io::Write;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tollgate_testkit::{FaultMix, TestUpstream};

use crate::UpstreamArgs;
use crate::exit;

pub(crate) fn run(a: &UpstreamArgs) -> u8 {
    let mut b = TestUpstream::builder()
        .port(a.port)
        .seed(a.seed)
        .default_words(a.words)
        .drip(Duration::from_millis(a.drip_ms));
    match (a.latency_ms, a.latency_max_ms) {
        (lo, Some(hi)) if hi > lo => {
            b = b.latency(Duration::from_millis(lo)..Duration::from_millis(hi));
        }
        (0, _) => {}
        (lo, _) => b = b.latency(Duration::from_millis(lo)),
    }
    if a.faults {
        // The demo's mix: 5 % 429 with Retry-After: 1, 2 % 503, 1 % streams cut after 3 events.
        b = b.fault_mix(FaultMix {
            rate_limited: 0.05,
            unavailable: 0.02,
            cut_stream: 0.01,
            retry_after: 1,
            cut_after: 3,
            ..FaultMix::default()
        });
    }
    let upstream = match b.start() {
        Ok(up) => up,
        Err(e) => {
            eprintln!("tollgate upstream: cannot start: {e}");
            return exit::FAILED;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate upstream: cannot start the runtime: {e}");
            return exit::FAILED;
        }
    };
    let stopped = runtime.block_on(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("tollgate upstream: cannot install signal handlers");
            return false;
        };
        println!("listening on {}", upstream.base_url());
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        true
    });
    let requests = upstream.request_count();
    upstream.shutdown();
    if !stopped {
        return exit::FAILED;
    }
    eprintln!("tollgate upstream: stopping; {requests} requests served");
    exit::OK
}
