//! What ended an attempt, and whether that may be retried.
//!
//! The rule is the one of the official OpenAI SDKs: an explicit `x-should-retry: true|false`
//! response header wins; otherwise the failure is retried when the policy's `retry_on` lists its
//! class. [`crate::policy::Retry::default`] lists what the SDKs retry: 408, 409, 429, every 5xx,
//! connection failures and timeouts.

use std::borrow::Cow;
use std::fmt;

use super::headers::{Headers, X_SHOULD_RETRY, trim_ows};
use crate::dialect::ErrorClass;
use crate::policy::RetryOn;

/// Why a connection could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectKind {
    /// The peer refused the connection (RST on SYN).
    Refused,
    /// The connection was reset before a response head arrived.
    Reset,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed.
    Tls,
    /// Any other connect-phase error.
    Other,
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// TCP + TLS connect took too long.
    Connect,
    /// The response head did not arrive in time.
    FirstByte,
    /// A stream fell silent for too long between chunks.
    Idle,
    /// The whole call took too long.
    Total,
}

/// What ended an attempt without a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The server answered with this HTTP status (not 2xx).
    Status(u16),
    /// No connection could be made or kept until the response head.
    Connect(ConnectKind),
    /// A timeout fired.
    Timeout(TimeoutKind),
    /// A 2xx whose body is not the expected JSON.
    Malformed,
    /// A stream that ended before `[DONE]`.
    CutStream,
}

impl Failure {
    /// The failure for an HTTP status, or `None` for a success (2xx).
    pub fn from_status(status: u16) -> Option<Failure> {
        (!is_success(status)).then_some(Failure::Status(status))
    }

    /// A stable, machine-readable name of the class: `status`, `connect`, `timeout`,
    /// `malformed`, `cut_stream`.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Status(_) => "status",
            Failure::Connect(_) => "connect",
            Failure::Timeout(_) => "timeout",
            Failure::Malformed => "malformed",
            Failure::CutStream => "cut_stream",
        }
    }

    /// The failure's stable code, the one vocabulary every part of tollgate speaks (attempt
    /// records, metrics, the CLI's traces, the Node and C bindings): `status_503`,
    /// `connect_refused`, `connect_reset`, `connect_dns`, `connect_tls`, `connect_other`,
    /// `timeout_connect`, `timeout_first_byte`, `timeout_idle`, `timeout_total`, `malformed`,
    /// `cut_stream`. [`Failure::from_code`] reads it back.
    ///
    /// ```
    /// use tollgate::retry::{Failure, TimeoutKind};
    /// assert_eq!(Failure::Status(503).code(), "status_503");
    /// assert_eq!(Failure::Timeout(TimeoutKind::FirstByte).code(), "timeout_first_byte");
    /// ```
    pub fn code(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Failure::Status(s) => return Cow::Owned(format!("status_{s}")),
            Failure::Connect(ConnectKind::Refused) => "connect_refused",
            Failure::Connect(ConnectKind::Reset) => "connect_reset",
            Failure::Connect(ConnectKind::Dns) => "connect_dns",
            Failure::Connect(ConnectKind::Tls) => "connect_tls",
            Failure::Connect(ConnectKind::Other) => "connect_other",
            Failure::Timeout(TimeoutKind::Connect) => "timeout_connect",
            Failure::Timeout(TimeoutKind::FirstByte) => "timeout_first_byte",
            Failure::Timeout(TimeoutKind::Idle) => "timeout_idle",
            Failure::Timeout(TimeoutKind::Total) => "timeout_total",
            Failure::Malformed => "malformed",
            Failure::CutStream => "cut_stream",
        })
    }

    /// The failure a code names: every [`Failure::code`], and the short forms traces and hosts
    /// write — `connect` (a connection failure of no known kind), `reset`, `dns`, `tls`,
    /// `timeout` (the total timeout). `None` for anything else, a 2xx status included.
    ///
    /// ```
    /// use tollgate::retry::{ConnectKind, Failure};
    /// assert_eq!(Failure::from_code("status_429"), Some(Failure::Status(429)));
    /// assert_eq!(Failure::from_code("reset"), Some(Failure::Connect(ConnectKind::Reset)));
    /// assert_eq!(Failure::from_code("status_200"), None);
    /// assert_eq!(Failure::from_code("teapot"), None);
    /// ```
    pub fn from_code(code: &str) -> Option<Failure> {
        if let Some(digits) = code.strip_prefix("status_") {
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return digits.parse().ok().and_then(Failure::from_status);
        }
        Some(match code {
            "connect_refused" => Failure::Connect(ConnectKind::Refused),
            "connect_reset" | "reset" => Failure::Connect(ConnectKind::Reset),
            "connect_dns" | "dns" => Failure::Connect(ConnectKind::Dns),
            "connect_tls" | "tls" => Failure::Connect(ConnectKind::Tls),
            "connect_other" | "connect" => Failure::Connect(ConnectKind::Other),
            "timeout_connect" => Failure::Timeout(TimeoutKind::Connect),
            "timeout_first_byte" => Failure::Timeout(TimeoutKind::FirstByte),
            "timeout_idle" => Failure::Timeout(TimeoutKind::Idle),
            "timeout_total" | "timeout" => Failure::Timeout(TimeoutKind::Total),
            "malformed" => Failure::Malformed,
            "cut_stream" => Failure::CutStream,
            _ => return None,
        })
    }

    /// Every failure that is not a status, in the order of their codes (and of the C ABI's
    /// `tg_failure` values 1 to 11).
    pub const TRANSPORT: [Failure; 11] = [
        Failure::Connect(ConnectKind::Refused),
        Failure::Connect(ConnectKind::Reset),
        Failure::Connect(ConnectKind::Dns),
        Failure::Connect(ConnectKind::Tls),
        Failure::Connect(ConnectKind::Other),
        Failure::Timeout(TimeoutKind::Connect),
        Failure::Timeout(TimeoutKind::FirstByte),
        Failure::Timeout(TimeoutKind::Idle),
        Failure::Timeout(TimeoutKind::Total),
        Failure::Malformed,
        Failure::CutStream,
    ];

    /// Whether some policy class in `retry_on` covers this failure (ignoring headers).
    pub fn matches(&self, retry_on: &[RetryOn]) -> bool {
        retry_on.iter().any(|r| match (*r, *self) {
            (RetryOn::Status(want), Failure::Status(got)) => want == got,
            (RetryOn::ServerErrors, Failure::Status(got)) => (500..=599).contains(&got),
            (RetryOn::Connect, Failure::Connect(_)) => true,
            (RetryOn::Timeout, Failure::Timeout(_)) => true,
            (RetryOn::Malformed, Failure::Malformed) => true,
            (RetryOn::CutStream, Failure::CutStream) => true,
            _ => false,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "HTTP status {s}"),
            Failure::Connect(k) => f.write_str(match k {
                ConnectKind::Refused => "connection refused",
                ConnectKind::Reset => "connection reset",
                ConnectKind::Dns => "DNS lookup failed",
                ConnectKind::Tls => "TLS handshake failed",
                ConnectKind::Other => "connection failed",
            }),
            Failure::Timeout(k) => f.write_str(match k {
                TimeoutKind::Connect => "connect timeout",
                TimeoutKind::FirstByte => "no response head in time (first-byte timeout)",
                TimeoutKind::Idle => "stream idle timeout",
                TimeoutKind::Total => "total timeout",
            }),
            Failure::Malformed => f.write_str("2xx response whose body is not the expected JSON"),
            Failure::CutStream => f.write_str("stream ended before [DONE]"),
        }
    }
}

/// Whether an HTTP status is a success (2xx).
pub fn is_success(status: u16) -> bool {
    (200..=299).contains(&status)
}

/// The server's explicit verdict: the first `x-should-retry` value that reads `true` or `false`
/// (ASCII case-insensitive, surrounding whitespace ignored); other values are ignored.
pub fn should_retry_header(headers: &Headers<'_>) -> Option<bool> {
    headers.first_valid(X_SHOULD_RETRY, |v| {
        let v = trim_ows(v);
        if v.eq_ignore_ascii_case(b"true") {
            Some(true)
        } else if v.eq_ignore_ascii_case(b"false") {
            Some(false)
        } else {
            None
        }
    })
}

/// Whether `failure` may be retried: never for a 2xx status; otherwise `x-should-retry` decides
/// when present, else whether `retry_on` lists the failure's class.
///
/// ```
/// use tollgate::policy::Retry;
/// use tollgate::retry::{is_retryable, Failure, Headers};
/// let retry_on = Retry::default().retry_on;
/// assert!(is_retryable(&Failure::Status(429), &retry_on, &Headers::EMPTY));
/// assert!(!is_retryable(&Failure::Status(400), &retry_on, &Headers::EMPTY));
/// let no: &[(&str, &[u8])] = &[("x-should-retry", b"false")];
/// assert!(!is_retryable(&Failure::Status(503), &retry_on, &Headers::new(no)));
/// ```
pub fn is_retryable(failure: &Failure, retry_on: &[RetryOn], headers: &Headers<'_>) -> bool {
    if let Failure::Status(s) = failure
        && is_success(*s)
    {
        return false;
    }
    should_retry_header(headers).unwrap_or_else(|| failure.matches(retry_on))
}

/// [`is_retryable`] with what the upstream's error said: a class that says no retry can
/// succeed ([`ErrorClass::retryable`]) wins over `x-should-retry` and `retry_on`.
pub fn is_retryable_with(
    failure: &Failure,
    class: Option<ErrorClass>,
    retry_on: &[RetryOn],
    headers: &Headers<'_>,
) -> bool {
    if class.and_then(ErrorClass::retryable) == Some(false) {
        return false;
    }
    is_retryable(failure, retry_on, headers)
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_read_back() {
        for f in super::Failure::TRANSPORT {
            assert_eq!(super::Failure::from_code(&f.code()), Some(f), "{f:?}");
        }
        for s in [400u16, 401, 429, 500, 503, 599] {
            let f = super::Failure::Status(s);
            assert_eq!(super::Failure::from_code(&f.code()), Some(f));
        }
        for bad in [
            "",
            "status_",
            "status_20",
            "status_2000",
            "status_204",
            "status_abc",
            "Reset",
        ] {
            assert_eq!(super::Failure::from_code(bad), None, "{bad}");
        }
    }

    use super::*;
    use crate::policy::Retry;

    #[test]
    fn defaults_match_the_sdks() {
        let on = Retry::default().retry_on;
        let h = Headers::EMPTY;
        for s in [408, 409, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(&Failure::Status(s), &on, &h), "{s}");
        }
        for s in [200, 204, 400, 401, 403, 404, 422, 600] {
            assert!(!is_retryable(&Failure::Status(s), &on, &h), "{s}");
        }
        assert!(is_retryable(&Failure::Connect(ConnectKind::Dns), &on, &h));
        assert!(is_retryable(&Failure::Timeout(TimeoutKind::Idle), &on, &h));
        assert!(!is_retryable(&Failure::Malformed, &on, &h));
        assert!(!is_retryable(&Failure::CutStream, &on, &h));
    }

    #[test]
    fn header_overrides_both_ways() {
        let on = Retry::default().retry_on;
        let yes: &[(&str, &[u8])] = &[("X-Should-Retry", b" TRUE ")];
        assert!(is_retryable(&Failure::Status(400), &on, &Headers::new(yes)));
        let garbage_then_no: &[(&str, &[u8])] =
            &[("x-should-retry", b"maybe"), ("x-should-retry", b"false")];
        assert!(!is_retryable(
            &Failure::Status(503),
            &on,
            &Headers::new(garbage_then_no)
        ));
        // Never for a success, whatever the header says.
        assert!(!is_retryable(
            &Failure::Status(200),
            &on,
            &Headers::new(yes)
        ));
    }
}
