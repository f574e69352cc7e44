//! What can go wrong on the wire, and how an I/O or TLS error is classified.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use crate::retry::{ConnectKind, Failure, TimeoutKind};

/// Why a call failed. Messages never include request headers or the URL beyond `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The client configuration is unusable (for example an unreadable CA file).
    #[error("transport configuration: {0}")]
    Config(String),
    /// The request cannot be sent (for example a URL without scheme or host).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection could be made, or it failed before the response head arrived.
    #[error("{kind:?} connecting to {target}: {message}")]
    Connect {
        /// The class of the failure.
        kind: ConnectKind,
        /// `host:port` of the upstream.
        target: String,
        /// What happened.
        message: String,
    },
    /// A timeout fired.
    #[error("{} after {after:?} ({target})", Failure::Timeout(*kind))]
    Timeout {
        /// Which timeout.
        kind: TimeoutKind,
        /// The time allowed.
        after: Duration,
        /// `host:port` of the upstream.
        target: String,
    },
    /// The response body is larger than [`ClientConfig::max_response_bytes`](super::ClientConfig::max_response_bytes).
    #[error("response body from {target} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
        /// `host:port` of the upstream.
        target: String,
    },
    /// The body broke off after the response head (connection reset or closed mid-body).
    #[error("response body from {target} broke off: {message}")]
    Body {
        /// `host:port` of the upstream.
        target: String,
        /// What happened.
        message: String,
    },
}

impl TransportError {
    /// The retry class of this error, or `None` for a caller error ([`TransportError::Config`],
    /// [`TransportError::InvalidRequest`]) that no retry can fix.
    ///
    /// A body larger than the limit is [`Failure::Malformed`]; a body that broke off after the
    /// head is [`Failure::CutStream`].
    pub fn failure(&self) -> Option<Failure> {
        match self {
            TransportError::Config(_) | TransportError::InvalidRequest(_) => None,
            TransportError::Connect { kind, .. } => Some(Failure::Connect(*kind)),
            TransportError::Timeout { kind, .. } => Some(Failure::Timeout(*kind)),
            TransportError::TooLarge { .. } => Some(Failure::Malformed),
            TransportError::Body { .. } => Some(Failure::CutStream),
        }
    }
}

/// The error and its sources, joined with `: `.
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(crate) fn find_io<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

pub(crate) fn io_kind(e: &io::Error) -> ConnectKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ConnectKind::Reset,
        _ => ConnectKind::Other,
    }
}

pub(crate) fn tls_kind(e: &io::Error) -> ConnectKind {
    let rustls_error = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if rustls_error || e.kind() == io::ErrorKind::InvalidData {
        ConnectKind::Tls
    } else {
        match io_kind(e) {
            ConnectKind::Other => ConnectKind::Tls,
            kind => kind,
        }
    }
}
