//! The asyncio bridge: calls run as tasks on the module's runtime and their answers queue in a
//! [`Completer`]; the first answer into an empty queue writes one byte to a pipe the event loop
//! watches (`loop.add_reader`), and the loop's reader takes every queued answer at once
//! (`Completer.take`). The runtime's threads never take the GIL.
//!
//! Cancellation: every task is registered under its call id; `Completer.cancel` aborts it
//! and waits for it to end, so tollgate's future has been dropped when it returns: the upstream
//! connection is closed and the permit released.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::error::ErrorInfo;

/// What a finished task hands the event loop.
pub enum Payload {
    /// A completed `send`: status, body, metadata JSON.
    Response(u16, bytes::Bytes, String),
    /// An opened stream.
    Stream(crate::call::NativeStream),
    /// A batch of stream events (see [`crate::call::Batch`]).
    Batch(crate::call::Batch),
    /// An admitted call.
    Permit(crate::decide::Permit),
    /// A decision of `admit_async`.
    Decision(crate::decide::DecisionOut),
    /// Text or nothing (a stored message's JSON, or none).
    Text(Option<String>),
}

/// A finished task's answer: its call id and its payload or error.
pub type Answer = (u64, Result<Payload, Box<ErrorInfo>>);

struct Inner {
    /// Finished tasks' answers, oldest first.
    queue: Mutex<Vec<Answer>>,
    /// Tasks in flight, by call id.
    tasks: Mutex<HashMap<u64, tokio::task::JoinHandle<()>>>,
    /// The pipe's write end (owned: closed when the last task and the Python object are gone).
    wake: OwnedFd,
}

impl Inner {
    fn deliver(&self, id: u64, result: Result<Payload, Box<ErrorInfo>>) {
        let was_empty = {
            let mut q = self.queue.lock();
            q.push((id, result));
            q.len() == 1
        };
        if was_empty {
            let byte = [1u8];
            // SAFETY: writing one byte from a live buffer to a descriptor this value owns. A
            // full pipe (EAGAIN) already holds a wake-up.
            unsafe {
                libc::write(self.wake.as_raw_fd(), byte.as_ptr().cast(), 1);
            }
        }
    }
}

/// The answers of one event loop's calls. Made by the Python layer once per loop with the
/// write end of a non-blocking pipe, whose read end the loop watches.
#[pyclass(frozen, module = "tollgate._native")]
pub struct Completer {
    inner: Arc<Inner>,
}

impl Completer {
    /// Runs `future` on the module's runtime as call `id`; its answer is queued here.
    pub fn spawn<F>(&self, id: u64, future: F)
    where
        F: Future<Output = Result<Payload, Box<ErrorInfo>>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        // Held across spawn and insert: the task's own removal waits for the insert.
        let mut tasks = self.inner.tasks.lock();
        let handle = crate::runtime().spawn(async move {
            let result = future.await;
            inner.tasks.lock().remove(&id);
            inner.deliver(id, result);
        });
        tasks.insert(id, handle);
    }
}

fn payload_to_py(py: Python<'_>, payload: Payload) -> PyResult<Py<PyAny>> {
    Ok(match payload {
        Payload::Response(status, body, meta) => (status, PyBytes::new(py, &body), meta)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Payload::Stream(s) => Py::new(py, s)?.into_any(),
        Payload::Batch(b) => b.into_py(py)?,
        Payload::Permit(p) => Py::new(py, p)?.into_any(),
        Payload::Decision(d) => d.into_py(py)?,
        Payload::Text(t) => t.into_pyobject(py)?.into_any().unbind(),
    })
}

#[pymethods]
impl Completer {
    /// A completer that wakes its loop by writing to `wake_fd` (it takes ownership of it and
    /// closes it when done).
    #[new]
    fn new(wake_fd: i32) -> PyResult<Completer> {
        if wake_fd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "wake_fd must be an open file descriptor",
            ));
        }
        // SAFETY: the caller hands over an open descriptor it no longer uses.
        let wake = unsafe { OwnedFd::from_raw_fd(wake_fd) };
        Ok(Completer {
            inner: Arc::new(Inner {
                queue: Mutex::new(Vec::new()),
                tasks: Mutex::new(HashMap::new()),
                wake,
            }),
        })
    }

    /// Every answer queued since the last call, as `(id, ok, value)` tuples: `value` is the
    /// answer when `ok`, else the error's JSON.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let items = std::mem::take(&mut *self.inner.queue.lock());
        let mut out = Vec::with_capacity(items.len());
        for (id, result) in items {
            let t = match result {
                Ok(p) => (id, true, payload_to_py(py, p)?).into_pyobject(py)?,
                Err(e) => (
                    id,
                    false,
                    e.to_json().into_pyobject(py)?.into_any().unbind(),
                )
                    .into_pyobject(py)?,
            };
            out.push(t);
        }
        Ok(out)
    }

    /// Cancels call `id`: its task is aborted, which drops the call; when this returns the
    /// connection is closed and the permit released (the GIL is released while the task
    /// ends). A no-op when it already finished.
    fn cancel(&self, py: Python<'_>, id: u64) {
        let task = self.inner.tasks.lock().remove(&id);
        if let Some(task) = task {
            task.abort();
            // Cancelled, or finished meanwhile: either way the call's future has been dropped.
            let _ = crate::call::block_on(py, task);
        }
    }

    /// Calls in flight.
    #[getter]
    fn in_flight(&self) -> usize {
        self.inner.tasks.lock().len()
    }
}
