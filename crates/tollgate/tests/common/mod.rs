//! Helpers shared by the call-API test binaries (`call_api`, `dialects`, `conversation`).
// Each test binary uses a part of these.
#![allow(dead_code)]

use serde_json::Value;
use tollgate::{CallError, ChatStream};

/// A two-thread runtime for a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every event's data until the stream ends, and the error that ended it, if any.
pub async fn collect(mut s: ChatStream) -> (Vec<String>, Option<CallError>) {
    let mut data = vec![];
    let mut err = None;
    for _ in 0..10_000 {
        match s.next().await {
            Some(Ok(e)) => data.push(e.data),
            Some(Err(e)) => err = Some(e),
            None => return (data, err),
        }
    }
    panic!("the stream did not end within 10,000 events");
}

/// The text of a stream's `chat.completion.chunk` deltas.
pub fn content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}
