//! The Python binding of tollgate: a PyO3 extension module (`tollgate._native`) over the Rust
//! API, wrapped by the pure-Python package `tollgate` beside it (`python/tollgate`).
//!
//! Conventions between the two layers:
//! - Errors cross as [`NativeError`] whose argument is the JSON of an [`error::ErrorInfo`];
//!   the Python layer turns it into the matching `TollgateError` subclass.
//! - Every call runs on one multi-thread tokio runtime ([`runtime`]), tollgate's transport
//!   included. The blocking API waits on it with the GIL released; the asyncio API hands its
//!   answers to a [`bridge::Completer`], which wakes the event loop through a pipe (no GIL
//!   taken on the runtime's threads).
#![warn(missing_docs)]

use std::sync::OnceLock;

use pyo3::prelude::*;

pub mod batch;
pub mod bridge;
pub mod call;
pub mod decide;
pub mod engine;
pub mod error;
pub mod text;

pyo3::create_exception!(
    _native,
    NativeError,
    pyo3::exceptions::PyException,
    "A failure of the native layer; its argument is the error's JSON (the Python layer raises the matching TollgateError subclass)."
);

/// The module's tokio runtime: two to four workers (the machine's cores), built the way
/// tollgate builds its own (SIGPIPE blocked on its threads).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        tollgate::transport::runtime("tollgate-worker", threads)
            .or_else(|_| tokio::runtime::Runtime::new())
            .expect("a tokio runtime can be built (threads and an epoll instance)")
    })
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::PolicyWatcher>()?;
    m.add_class::<bridge::Completer>()?;
    m.add_class::<call::NativeStream>()?;
    m.add_class::<decide::Permit>()?;
    m.add_class::<decide::Attempt>()?;
    m.add_class::<text::MessageStoreNative>()?;
    m.add_class::<batch::BatchNative>()?;
    m.add_function(wrap_pyfunction!(text::count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(text::split_text, m)?)?;
    Ok(())
}
