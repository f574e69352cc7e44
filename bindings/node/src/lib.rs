//! The Node.js binding of tollgate: a napi-rs addon over the Rust API.
//!
//! The addon exports a small native surface ([`engine::NativeEngine`], [`call::NativeStream`],
//! [`watch::NativeWatcher`], [`conversation::NativeMessageStore`]); the hand-written `index.js`
//! beside it turns that into the API Node users expect (`new Tollgate(policy)`, promises, async
//! iterators, `AbortSignal`, `Error` subclasses, a `fetch` for the openai package, the chatgpt
//! package's `ChatGPTAPI` in `chatgpt.js`).
//!
//! Conventions between the two layers:
//! - Errors cross as a JSON payload in the message of a thrown (or rejected) `Error`, built by
//!   [`error::ErrorInfo`]; `index.js` turns it into the matching `TollgateError` subclass.
//! - The decide path (`admit` / `settle`) passes numbers through a `Float64Array` shared with
//!   the engine, names as interned ids and permits as numbered slots (see [`decide`]), so a pair
//!   costs two native calls, no JSON and nothing for the garbage collector.
//! - Every async function and tollgate's own transport run on one multi-thread tokio runtime,
//!   installed for the module when it loads.
#![warn(missing_docs)]

pub mod call;
pub mod conversation;
pub mod decide;
pub mod engine;
pub mod error;
mod registry;
pub mod split;
pub mod watch;

/// Installs the module's tokio runtime (napi-rs runs every async function on it; tollgate's
/// transport spawns its connections there too). Two to four workers: the machine's cores,
/// bounded like the C ABI's runtime.
#[napi_derive::module_init]
fn init() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    // If the runtime cannot be built napi-rs falls back to its default one on first use.
    if let Ok(rt) = tollgate::transport::runtime("tollgate-worker", threads) {
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}

/// The version of this binding (it is released together with the tollgate crate).
#[napi_derive::napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
