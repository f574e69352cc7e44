//! Transport: a pooled HTTP/1.1 + HTTP/2 client over rustls (ring) with per-phase timeouts and
//! HTTP proxies through `CONNECT`, and the server-sent-events decoder. The call API (`send` / `stream` through the whole policy
//! pipeline) builds on these.
pub mod client;
pub mod proxy;
pub mod sse;

pub use client::{Client, ClientConfig, ExtraCa, Response, StreamResponse, TransportError};
pub use proxy::ProxyConfig;
