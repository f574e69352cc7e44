//! Responses of the proxy: bodies (whole, or SSE events as they arrive), OpenAI-format errors,
//! and how each call-API outcome maps to a status.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{Value, json};

use tollgate::{CallError, ChatResponse, ChatStream};

/// A response body of the proxy: one buffer, or SSE events handed over as they come.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    /// Marks the connection busy until the body has been sent (or dropped), so a long stream
    /// never counts as idle.
    pub(super) busy: Option<super::Busy>,
}

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Events(tokio::sync::mpsc::Receiver<Bytes>),
}

impl ProxyBody {
    /// The body, when it is one buffer not yet sent.
    pub(super) fn whole(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Full(b) => b.as_ref(),
            Inner::Events(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Events(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.inner, Inner::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Events(_) => SizeHint::default(),
        }
    }
}

/// A whole body.
pub(crate) fn full(body: impl Into<Bytes>) -> ProxyBody {
    ProxyBody {
        inner: Inner::Full(Some(body.into())),
        busy: None,
    }
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error in OpenAI's format. `x-should-retry: false` tells the official SDKs not to retry
/// on their own: the proxy has already waited and retried as the policy says.
pub(crate) fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<ProxyBody> {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut r = json_response(status, &body);
    r.headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    r
}

/// A completed call: the upstream's (or the cache's) JSON as it came.
pub(crate) fn completion(r: &ChatResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(full(r.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        "x-tollgate-source",
        HeaderValue::from_static(r.source.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&r.attempts.to_string()) {
        h.insert("x-tollgate-attempts", v);
    }
    resp
}

/// A streamed call: events are passed on as they arrive. A client that goes away ends the
/// stream (and so the upstream call); a stream cut after content reaches the client as an
/// OpenAI error event, then the end.
pub(crate) fn stream(mut s: ChatStream) -> Response<ProxyBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        // Bounded by the stream itself: each step is one upstream event or its end.
        while let Some(item) = s.next().await {
            let bytes = match item {
                Ok(event) => Bytes::from(event.encode()),
                Err(e) => {
                    let data = e.stream_error_data();
                    let _ = tx.send(Bytes::from(format!("data: {data}\n\n"))).await;
                    break;
                }
            };
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(ProxyBody {
        inner: Inner::Events(rx),
        busy: None,
    });
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A call that failed, as the client should see it ([`CallError::error_answer`]); a budget's
/// refusal (429) is counted in `denied`.
pub(crate) fn call_error(denied: &AtomicU64, e: &CallError) -> Response<ProxyBody> {
    let answer = e.error_answer();
    if matches!(e, CallError::Denied(_)) && answer.status == 429 {
        denied.fetch_add(1, Ordering::Relaxed);
    }
    let mut r = Response::new(full(Bytes::from(answer.body.clone())));
    *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in answer.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}
