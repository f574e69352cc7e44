//! `tollgate serve`: runs [`tollgate_serve::Proxy`] until SIGTERM or Ctrl-C, reloading the
//! policy file on SIGHUP.

use tokio::signal::unix::{SignalKind, signal};
use tollgate::Engine;
use tollgate::store::DiskState;
use tollgate_serve::{Proxy, hash_key};

use crate::ServeArgs;
use crate::exit;

pub(crate) fn run(a: &ServeArgs) -> u8 {
    if let Some(key) = &a.hash_key {
        println!("hash = \"{}\"", hash_key(key));
        return exit::OK;
    }
    let Some(path) = &a.policy else {
        eprintln!("tollgate serve: --policy FILE is required");
        return exit::FAILED;
    };
    let engine = match Engine::from_file(path) {
        Ok(e) => e,
        Err(errors) => {
            eprintln!("{errors}");
            return exit::FAILED;
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let Some(runtime) = crate::runtime("tollgate-serve", threads) else {
        return exit::FAILED;
    };
    runtime.block_on(async {
        let proxy = match Proxy::start(engine.clone(), Some(path.clone()), a.listen).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("tollgate serve: cannot listen: {e}");
                return exit::FAILED;
            }
        };
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("tollgate serve: cannot install signal handlers");
            return exit::FAILED;
        };
        report_disk(&engine);
        println!("listening on http://{}/v1", proxy.addr());
        if let Some(admin) = proxy.admin_addr() {
            println!("admin on http://{admin}/admin/reload");
        }
        loop {
            tokio::select! {
                _ = hup.recv() => match proxy.reload() {
                    Ok(r) => {
                        eprintln!("tollgate serve: policy reloaded (generation {})", r.generation);
                        report_disk(&engine);
                    }
                    Err(e) => eprintln!("tollgate serve: reload refused, the running policy stays:\n{e}"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        eprintln!("tollgate serve: stopping; calls in flight may finish");
        proxy.shutdown().await;
        engine.cache_flush();
        exit::OK
    })
}

/// Says on stderr when the cache's disk file was started afresh or cannot be used.
fn report_disk(engine: &Engine) {
    match engine.cache_disk_state() {
        Some(DiskState::Reset {
            path,
            moved_to,
            reason,
        }) => eprintln!(
            "tollgate serve: the cache file {} was unreadable ({reason}); it was moved to {} and \
             an empty cache started",
            path.display(),
            moved_to.display()
        ),
        Some(DiskState::Unavailable { path, error }) => eprintln!(
            "tollgate serve: the cache file {} cannot be used, the cache runs without its disk \
             level: {error}",
            path.display()
        ),
        _ => {}
    }
}
