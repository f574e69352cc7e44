//! Responses of the proxy: bodies (whole, or SSE events as they arrive), OpenAI-format errors,
//! and how each call-API outcome maps to a status.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{Value, json};

use tollgate::transport::sse::Event;
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
    error_with(status, message, kind, code, None)
}

fn error_with(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    budget: Option<&str>,
) -> Response<ProxyBody> {
    let mut body =
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    if let Some(b) = budget {
        body["error"]["budget"] = json!(b);
    }
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

/// One SSE event as the upstream framed it.
fn sse(e: &Event) -> Bytes {
    let mut out = String::with_capacity(e.data.len() + 16);
    if let Some(kind) = &e.event {
        out.push_str("event: ");
        out.push_str(kind);
        out.push('\n');
    }
    if let Some(id) = &e.id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in e.data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
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
                Ok(event) => sse(&event),
                Err(e) => {
                    let body = json!({"error": {"message": e.to_string(), "type": "server_error",
                        "param": null, "code": e.code()}});
                    let _ = tx.send(Bytes::from(format!("data: {body}\n\n"))).await;
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

/// A call that failed, as the client should see it.
pub(crate) fn call_error(denied: &AtomicU64, e: &CallError) -> Response<ProxyBody> {
    let message = e.to_string();
    match e {
        CallError::Denied(d) => {
            let (status, kind) = match d.code() {
                "budget_exhausted" | "concurrency" | "wait_timeout" | "key_capacity" => {
                    denied.fetch_add(1, Ordering::Relaxed);
                    (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded")
                }
                "store_unavailable" | "unavailable" => {
                    (StatusCode::SERVICE_UNAVAILABLE, "server_error")
                }
                _ => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            };
            let mut r = error_with(status, &message, kind, Some(d.code()), d.budget.as_deref());
            if let Some(after) = d.retry_after() {
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    r.headers_mut().insert(RETRY_AFTER, v);
                }
                if let Ok(v) = HeaderValue::from_str(&after.as_millis().to_string()) {
                    r.headers_mut().insert("retry-after-ms", v);
                }
            }
            r
        }
        CallError::GaveUp {
            status: Some(status),
            body: Some(body),
            ..
        } if serde_json::from_slice::<Value>(body).is_ok() => {
            let mut r = Response::new(full(body.clone()));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
            r
        }
        CallError::GaveUp { .. }
        | CallError::Auth(_)
        | CallError::Transport(_)
        | CallError::Shared(_)
        | CallError::StreamCut { .. } => error(
            StatusCode::BAD_GATEWAY,
            &message,
            "server_error",
            Some(e.code()),
        ),
        CallError::Deadline { .. } => error(
            StatusCode::GATEWAY_TIMEOUT,
            &message,
            "server_error",
            Some("deadline"),
        ),
        CallError::InvalidRequest(_) => error(
            StatusCode::BAD_REQUEST,
            &message,
            "invalid_request_error",
            Some("invalid_request"),
        ),
        CallError::NoUpstream(_) => error(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            Some("model_not_found"),
        ),
        // A failure kind this proxy has no mapping for yet: the upstream side failed.
        _ => error(
            StatusCode::BAD_GATEWAY,
            &message,
            "server_error",
            Some(e.code()),
        ),
    }
}
