//! Transport: a pooled HTTP/1.1 + HTTP/2 client over rustls (ring) with per-phase timeouts and
//! HTTP proxies through `CONNECT`, and the server-sent-events decoder. The call API (`send` / `stream` through the whole policy
//! pipeline) builds on these.
pub mod client;
mod deadline;
mod error;
mod percent;
pub mod proxy;
pub mod sse;

pub use client::{Client, ClientConfig, ExtraCa, Response, StreamResponse, TransportError};
pub use percent::{form_decode, percent_decode};
pub use proxy::ProxyConfig;

/// Blocks SIGPIPE on the calling thread: a write to a socket whose peer hung up then fails with
/// `EPIPE` instead of raising a signal whose default action ends the process. Rust programs ignore
/// SIGPIPE from `main`, but a C, C++ or Go host linking tollgate may not, and hyper writes
/// vectored (`writev`), which cannot pass `MSG_NOSIGNAL`. Run it at the start of every thread
/// tollgate starts (runtime workers, the test upstream). No-op off Unix.
pub fn block_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sigemptyset / sigaddset fill a local set; pthread_sigmask changes only this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs `f` with SIGPIPE blocked on the calling thread, then restores the thread's mask. Threads
/// started inside `f` (a runtime's workers) inherit the blocked mask from their first
/// instruction, so there is no moment in which they could take SIGPIPE before
/// [`block_sigpipe`] runs in them. No-op off Unix.
///
/// ```
/// let threads = tollgate::transport::with_sigpipe_blocked(|| {
///     tokio::runtime::Builder::new_multi_thread().worker_threads(1).build()
/// });
/// assert!(threads.is_ok());
/// ```
pub fn with_sigpipe_blocked<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(unix)]
    {
        // SAFETY: sigemptyset / sigaddset fill local sets; pthread_sigmask changes only this
        // thread's mask and is restored below.
        let old = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            (libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0).then_some(old)
        };
        let out = f();
        if let Some(old) = old {
            // SAFETY: restores the mask saved above on the same thread.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        }
        out
    }
    #[cfg(not(unix))]
    f()
}

/// A multi-thread tokio runtime for threads tollgate starts (the call API's workers of the C
/// ABI and the Node addon, the Redis store's thread, the test upstream's): `threads` workers
/// named `name`, every one started with SIGPIPE blocked (see [`with_sigpipe_blocked`]).
///
/// ```
/// let rt = tollgate::transport::runtime("tollgate-worker", 1).expect("a runtime");
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// ```
pub fn runtime(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    with_sigpipe_blocked(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .on_thread_start(block_sigpipe)
            .enable_all()
            .build()
    })
}
