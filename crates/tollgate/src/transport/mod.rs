//! Transport: a pooled HTTP/1.1 + HTTP/2 client over rustls (ring) with per-phase timeouts and
//! HTTP proxies through `CONNECT`, and the server-sent-events decoder. The call API (`send` / `stream` through the whole policy
//! pipeline) builds on these.
pub mod client;
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
