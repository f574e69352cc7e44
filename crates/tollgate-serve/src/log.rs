//! The access log of `tollgate serve` (`[serve] access_log = true`): one JSON line per request
//! on standard error, written when the response head is ready (for a stream: when its first
//! event can be sent). It never holds a virtual key, an admin token or a body.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Response};
use serde_json::{Value, json};

use super::ProxyBody;

/// Whose virtual key a request carried: set on the response (as an `Arc`) by the handlers that
/// checked it.
#[derive(Debug, Clone)]
pub(super) struct Who {
    /// The key's name (`[[serve.key]] name`).
    pub(super) name: String,
    /// Its tenant.
    pub(super) tenant: String,
}

/// What a chat request asked for.
#[derive(Debug, Clone)]
pub(super) struct Asked {
    pub(super) model: String,
    pub(super) stream: bool,
}

/// The log line of one request, ending in a newline.
pub(super) fn line(
    peer: SocketAddr,
    method: &Method,
    path: &str,
    response: &Response<ProxyBody>,
    took: Duration,
) -> String {
    let ext = response.extensions();
    let who = ext.get::<std::sync::Arc<Who>>();
    let asked = ext.get::<Asked>();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let entry = json!({
        "ts": millis(now) / 1e3,
        "peer": peer.to_string(),
        "method": method.as_str(),
        "path": path,
        "status": response.status().as_u16(),
        "key": who.map(|w| w.name.as_str()),
        "tenant": who.map(|w| w.tenant.as_str()),
        "model": asked.map(|a| a.model.as_str()),
        "stream": asked.map(|a| a.stream),
        "source": header("x-tollgate-source"),
        "attempts": header("x-tollgate-attempts").and_then(|a| a.parse::<u32>().ok()),
        "code": error_code(response),
        "ms": millis(took),
    });
    let mut text = Value::to_string(&entry);
    text.push('\n');
    text
}

/// The `error.code` of a refusal in OpenAI's error format (the proxy's own, or the upstream's
/// passed through), read from the body only when the log is written.
fn error_code(response: &Response<ProxyBody>) -> Option<String> {
    if response.status().is_success() {
        return None;
    }
    let body: Value = serde_json::from_slice(response.body().whole()?).ok()?;
    body["error"]["code"].as_str().map(str::to_owned)
}

/// `d` in milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// Writes a line to standard error in one piece.
pub(super) fn write(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
