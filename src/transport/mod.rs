//! Transport: the SSE decoder (the HTTP client arrives with the call API).
pub mod sse;
