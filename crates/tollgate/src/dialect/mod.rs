//! Upstream dialects: what an upstream speaks on the wire, and what its errors mean.
//!
//! Every caller of tollgate (Rust, C, Go, Node, `tollgate serve`) speaks OpenAI chat
//! completions. An upstream's `dialect` (policy: `[[upstream]] dialect = "..."`) says how that is
//! translated for it, both ways:
//!
//! - `openai` ([`openai`]): the request goes as it is (the target's model and the stream fields
//!   set); answers are read as they come. Error bodies are classified
//!   ([`classify_openai_error`]): OpenAI's `insufficient_quota`, Zhipu's codes (1113 arrears,
//!   1302 / 1303 / 1305 rate limits, 1003 / 1004 expired tokens), SiliconFlow's
//!   `{"code", "message"}`.
//! - `baidu_v1` ([`baidu`]): Baidu ERNIE v1 (`wenxinworkshop`): the model picks the endpoint
//!   path, the system message becomes `system`, `result` becomes the message, streams end with
//!   `is_end`, and errors come as `error_code` in a 200 body or `X-Bce-Error-Code` headers.
//!
//! A dialect maps five things and nothing else: the request (URL and body), the whole answer,
//! the stream's events, the usage (inside the answer it maps) and the errors
//! ([`ProviderError`], whose [`ErrorClass`] tells settle what a retry can achieve). Adding one
//! (Anthropic Messages, Gemini) is a module with those functions, a [`Dialect`] variant and its
//! arms in this file's dispatch; the engine, the bindings and `serve` do not change.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::transport::sse::Event;

pub mod baidu;
mod errors;
pub mod openai;

pub use errors::{ErrorClass, ProviderError, classify_openai_error};

/// What an upstream speaks (the policy's `dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenAI chat completions (OpenAI, Azure OpenAI, DeepSeek, Zhipu, SiliconFlow, Qianfan v2,
    /// vLLM, ...).
    #[default]
    OpenAi,
    /// Baidu ERNIE v1 (`/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/<endpoint>`).
    BaiduV1,
}

impl Dialect {
    /// Every dialect with its policy name.
    pub const ALL: [(&'static str, Dialect); 2] =
        [("openai", Dialect::OpenAi), ("baidu_v1", Dialect::BaiduV1)];

    /// The dialect's name in the policy.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::BaiduV1 => "baidu_v1",
        }
    }

    /// The dialect a policy name means.
    pub fn from_name(name: &str) -> Option<Dialect> {
        Dialect::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request that cannot be said in an upstream's dialect (a Baidu model without an endpoint,
/// a message ERNIE cannot take): the call is refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unspeakable(pub String);

impl fmt::Display for Unspeakable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole answer (not streamed) in OpenAI's words.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status the caller sees: the upstream's, or the one an error in a 200 body means.
    pub status: u16,
    /// The body in OpenAI's shape (a `chat.completion`, or an `{"error": ...}` body).
    pub body: Bytes,
    /// Whether `body` is not what the upstream sent (so its `content-length` no longer holds).
    pub translated: bool,
    /// The upstream's error, when the answer is one.
    pub error: Option<ProviderError>,
    /// A 2xx answer that is neither a completion nor an error, with what was wrong.
    pub malformed: Option<String>,
}

impl Answer {
    /// What went wrong, as the engine settles it: `(true, _)` for a 2xx answer that is neither
    /// a completion nor an error (its description as a [`ErrorClass::ByStatus`] error),
    /// `(false, _)` for the upstream's error; `None` for a good answer.
    pub fn failure(&self) -> Option<(bool, ProviderError)> {
        match &self.malformed {
            Some(m) => Some((
                true,
                ProviderError::new(ErrorClass::ByStatus, self.status, "", m.as_str()),
            )),
            None => self.error.clone().map(|e| (false, e)),
        }
    }

    /// The answer as it came.
    pub fn untouched(status: u16, body: Bytes) -> Answer {
        Answer {
            status,
            body,
            translated: false,
            error: None,
            malformed: None,
        }
    }
}

/// One upstream's dialect with its settings, made once per upstream.
#[derive(Debug, Clone)]
pub(crate) enum Speaker {
    OpenAi,
    Baidu(baidu::Baidu),
}

impl Speaker {
    pub(crate) fn new(config: &crate::policy::Upstream) -> Speaker {
        match config.dialect {
            Dialect::OpenAi => Speaker::OpenAi,
            Dialect::BaiduV1 => Speaker::Baidu(baidu::Baidu::new(&config.endpoints)),
        }
    }

    /// Whether requests and answers go as they are (the hot path builds nothing more).
    pub(crate) fn is_openai(&self) -> bool {
        matches!(self, Speaker::OpenAi)
    }

    /// The URL of a chat call for `model`; `None`: `<base_url>/chat/completions`.
    pub(crate) fn url(&self, base_url: &str, model: &str) -> Result<Option<String>, Unspeakable> {
        match self {
            Speaker::OpenAi => Ok(None),
            Speaker::Baidu(b) => b.url(base_url, model).map(Some),
        }
    }

    /// The body sent for the caller's OpenAI request `body` (`model`: the target's, when it
    /// replaces the caller's).
    pub(crate) fn body(
        &self,
        body: &Value,
        model: Option<&str>,
        stream: bool,
        stream_usage: bool,
    ) -> Result<Bytes, Unspeakable> {
        match self {
            Speaker::OpenAi => openai::body(body, model, stream, stream_usage)
                .map_err(|e| Unspeakable(format!("cannot serialise the body: {e}"))),
            Speaker::Baidu(_) => baidu::body(body, stream),
        }
    }

    /// A whole answer in OpenAI's words (`model`: the one the call was sent for).
    pub(crate) fn answer(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: Bytes,
        model: &str,
    ) -> Answer {
        match self {
            Speaker::OpenAi => openai::answer(status, body),
            Speaker::Baidu(_) => baidu::answer(status, headers, body, model),
        }
    }

    /// A translator for a stream's events, `None` when they go as they are.
    pub(crate) fn events(&self, model: &str) -> Option<Box<dyn EventMap>> {
        match self {
            Speaker::OpenAi => None,
            Speaker::Baidu(_) => Some(Box::new(baidu::Events::new(model))),
        }
    }

    /// Whether an answer says the credential expired, so it is renewed and the request
    /// replayed once: a 401, or the dialect's expired-token error.
    pub(crate) fn auth_expired(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> bool {
        status == 401
            || match self {
                Speaker::OpenAi => false,
                Speaker::Baidu(_) => baidu::auth_expired(headers, body),
            }
    }
}

/// Translates one stream's events into OpenAI `chat.completion.chunk` events.
pub trait EventMap: Send + Sync {
    /// Maps one event of the upstream into `out` (none, one or several events), or reports the
    /// error the event carries.
    fn event(&mut self, event: Event, out: &mut VecDeque<Event>) -> Result<(), ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for (name, d) in Dialect::ALL {
            assert_eq!(Dialect::from_name(name), Some(d));
            assert_eq!(d.name(), name);
        }
        assert_eq!(Dialect::from_name("anthropic"), None);
        assert_eq!(Dialect::default(), Dialect::OpenAi);
    }
}
