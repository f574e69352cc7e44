//! What the upstream does to a request: scripted [`Action`]s, the seeded [`FaultMix`], and the
//! [`Latency`] and [`RateLimitHeaders`] they use.

use std::collections::VecDeque;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;
use tollgate::rng::SplitMix64;

use bytes::Bytes;
use http::HeaderMap;

use super::Error;

/// Extra delay before a response head: none, fixed, or uniform in a range (drawn with the
/// upstream's seeded RNG, so the same seed gives the same delays).
///
/// `Duration` and ranges of `Duration` convert into it:
///
/// ```
/// use std::time::Duration;
/// use tollgate_testkit::Latency;
/// let ms = Duration::from_millis;
/// assert_eq!(Latency::from(ms(20)), Latency::Fixed(ms(20)));
/// assert_eq!(Latency::from(ms(20)..ms(200)), Latency::Uniform { min: ms(20), max: ms(200) });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    /// No extra delay.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniform between `min` and `max` (inclusive; swapped if given in the wrong order).
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

impl Latency {
    /// The delay for one request, using `draw` (a uniform `u64`) for ranges.
    pub(crate) fn sample(self, draw: u64) -> Duration {
        match self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                let span = (hi - lo).as_nanos().min(u128::from(u64::MAX - 1)) as u64;
                lo + Duration::from_nanos(draw % (span + 1))
            }
        }
    }
}

impl From<Duration> for Latency {
    fn from(d: Duration) -> Latency {
        Latency::Fixed(d)
    }
}

impl From<Range<Duration>> for Latency {
    fn from(r: Range<Duration>) -> Latency {
        Latency::Uniform {
            min: r.start,
            max: r.end,
        }
    }
}

impl From<RangeInclusive<Duration>> for Latency {
    fn from(r: RangeInclusive<Duration>) -> Latency {
        Latency::Uniform {
            min: *r.start(),
            max: *r.end(),
        }
    }
}

/// The `x-ratelimit-*` headers OpenAI sends: limits, what remains, and when each resets
/// (formatted the OpenAI way: `120ms`, `1s`, `1.5s`, `6m0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `x-ratelimit-limit-requests`.
    pub limit_requests: u64,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: u64,
    /// `x-ratelimit-reset-requests`.
    pub reset_requests: Duration,
    /// `x-ratelimit-limit-tokens`.
    pub limit_tokens: u64,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: u64,
    /// `x-ratelimit-reset-tokens`.
    pub reset_tokens: Duration,
}

impl Default for RateLimitHeaders {
    /// 500 requests and 30 000 tokens per minute, one request and 1 000 tokens used.
    fn default() -> RateLimitHeaders {
        RateLimitHeaders {
            limit_requests: 500,
            remaining_requests: 499,
            reset_requests: Duration::from_millis(120),
            limit_tokens: 30_000,
            remaining_tokens: 29_000,
            reset_tokens: Duration::from_secs(2),
        }
    }
}

impl RateLimitHeaders {
    /// Adds the six headers to `headers`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let pairs = [
            (
                "x-ratelimit-limit-requests",
                self.limit_requests.to_string(),
            ),
            (
                "x-ratelimit-remaining-requests",
                self.remaining_requests.to_string(),
            ),
            (
                "x-ratelimit-reset-requests",
                format_reset(self.reset_requests),
            ),
            ("x-ratelimit-limit-tokens", self.limit_tokens.to_string()),
            (
                "x-ratelimit-remaining-tokens",
                self.remaining_tokens.to_string(),
            ),
            ("x-ratelimit-reset-tokens", format_reset(self.reset_tokens)),
        ];
        for (name, value) in pairs {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
}

/// Formats a reset delay as OpenAI does: `20ms`, `1s`, `1.5s`, `6m0s`.
pub(crate) fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rem = ms % 60_000;
    let (secs, frac) = (rem / 1000, rem % 1000);
    let secs = if frac == 0 {
        secs.to_string()
    } else {
        let f = format!("{frac:03}");
        format!("{secs}.{}", f.trim_end_matches('0'))
    };
    if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// A response the upstream sends verbatim: any status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canned {
    /// The status code (an invalid one is sent as 500).
    pub status: u16,
    /// Headers; pairs with an invalid name or value are skipped.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Canned {
    /// A response with `status`, `content-type: application/json` and `body`.
    ///
    /// ```
    /// use tollgate_testkit::Canned;
    /// let c = Canned::json(418, &serde_json::json!({"teapot": true}));
    /// assert_eq!(c.body, r#"{"teapot":true}"#);
    /// ```
    pub fn json(status: u16, body: &serde_json::Value) -> Canned {
        Canned {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: Bytes::from(body.to_string()),
        }
    }

    /// An OpenAI error: `{"error": {"message", "type", "param": null, "code"}}` (`code` null
    /// when `None`).
    ///
    /// ```
    /// use tollgate_testkit::Canned;
    /// let code = Some("context_length_exceeded");
    /// let c = Canned::openai_error(400, "invalid_request_error", code, "too long");
    /// let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    /// assert_eq!(v["error"]["code"], "context_length_exceeded");
    /// assert!(v["error"]["param"].is_null());
    /// ```
    pub fn openai_error(status: u16, kind: &str, code: Option<&str>, message: &str) -> Canned {
        Canned::json(
            status,
            &serde_json::json!({"error": {
                "message": message, "type": kind, "param": null, "code": code,
            }}),
        )
    }

    /// A Zhipu (BigModel) error: `{"error": {"code": "1113", "message": ...}}`, the code a
    /// string as Zhipu sends it.
    ///
    /// ```
    /// use tollgate_testkit::Canned;
    /// let c = Canned::zhipu_error(429, "1113", "account in arrears");
    /// assert_eq!(c.body, r#"{"error":{"code":"1113","message":"account in arrears"}}"#);
    /// ```
    pub fn zhipu_error(status: u16, code: &str, message: &str) -> Canned {
        Canned::json(
            status,
            &serde_json::json!({"error": {"code": code, "message": message}}),
        )
    }

    /// A SiliconFlow error: `{"code": 20015, "message": ..., "data": null}`, the code a number.
    ///
    /// ```
    /// use tollgate_testkit::Canned;
    /// let c = Canned::siliconflow_error(400, 20015, "length exceeds");
    /// let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    /// let want = serde_json::json!({"code": 20015, "message": "length exceeds", "data": null});
    /// assert_eq!(v, want);
    /// ```
    pub fn siliconflow_error(status: u16, code: i64, message: &str) -> Canned {
        Canned::json(
            status,
            &serde_json::json!({"code": code, "message": message, "data": null}),
        )
    }

    /// Adds a header (e.g. `retry-after`).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Canned {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the upstream does with one request: a normal response, or a fault.
///
/// Streaming-only faults applied to a JSON response (and the reverse) are translated: see each
/// variant. Unless a variant says otherwise it applies to the OpenAI and the Baidu chat paths
/// alike (the HTTP-status faults send an OpenAI error body on either); the `Baidu*` variants
/// speak ERNIE's formats.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A normal response.
    Normal,
    /// A normal response after this extra latency (added to the upstream's own latency).
    Latency(Latency),
    /// A normal response whose head is sent only after this delay.
    SlowFirstByte(Duration),
    /// A normal response with this delay between SSE events (JSON: the body is sent in four
    /// pieces with this delay between them).
    SlowDrip(Duration),
    /// 429 with `retry-after: N` (seconds), `retry-after-ms`, the `x-ratelimit-*` headers
    /// (remaining requests 0) and an OpenAI `rate_limit_exceeded` error body.
    Status429 {
        /// Seconds to send in `Retry-After`.
        retry_after: u64,
    },
    /// 500 with an OpenAI `server_error` body.
    Status500,
    /// 503 with an OpenAI `service_unavailable` body.
    Status503,
    /// Any status with an OpenAI error body and, when set, `x-should-retry: true|false`.
    Status {
        /// The status code (an invalid one is sent as 500).
        code: u16,
        /// The `x-should-retry` header, if any.
        should_retry: Option<bool>,
    },
    /// Status 200 and about half the body, then the connection is dropped. JSON: the
    /// `content-length` announces the full body. SSE: the first event, then half of the second.
    ResetMidBody,
    /// SSE: this many events, then the connection is dropped (no `[DONE]`). JSON: as
    /// [`Action::ResetMidBody`].
    CutStreamAfter(usize),
    /// Status 200 whose body is not JSON (SSE: the role event, then an event whose data is
    /// truncated JSON, then `[DONE]`).
    MalformedJson,
    /// A normal response carrying these `x-ratelimit-*` headers.
    RateLimitHeaders(RateLimitHeaders),
    /// This exact response.
    Respond(Canned),
    /// Any path, JSON or stream request: HTTP 200, `content-type: application/json` and ERNIE's
    /// error body `{"error_code": code, "error_msg": message}` (ERNIE answers a stream request
    /// that fails at once the same way).
    BaiduError {
        /// `error_code`, e.g. 18 (QPS limit), 336100 (overloaded), 110 (token invalid).
        code: u32,
        /// `error_msg`.
        message: String,
    },
    /// Any path: the error in Qianfan's gateway style, as the headers `X-Bce-Error-Code` and
    /// `X-Bce-Error-Message` (sent as UTF-8) with this HTTP status, an empty body and no
    /// `content-type`.
    BaiduErrorHeader {
        /// The HTTP status (an invalid one is sent as 500).
        status: u16,
        /// `X-Bce-Error-Code`.
        code: u32,
        /// `X-Bce-Error-Message`.
        message: String,
    },
    /// Baidu path, stream request: the first `n` events of the stream (all if it has fewer),
    /// none with `"is_end": true`, then the body ends cleanly. A JSON request gets the normal
    /// answer; the OpenAI path a normal response.
    BaiduStreamWithoutEnd(usize),
    /// Baidu path, stream request: the first `events` events (none with `"is_end": true`),
    /// then the event `data: {"error_code": code, "error_msg": message}`, then the body ends
    /// cleanly. A JSON request gets [`Action::BaiduError`]'s answer; the OpenAI path a normal
    /// response.
    BaiduStreamErrorAfter {
        /// Events before the error.
        events: usize,
        /// `error_code`.
        code: u32,
        /// `error_msg`.
        message: String,
    },
    /// A stream request (`"stream": true`) answered as if it were not one: the complete JSON
    /// answer with `content-type: application/json` (a provider ignoring `stream`): OpenAI's
    /// `chat.completion` or ERNIE's answer. A JSON request gets the normal response.
    JsonForStream,
}

/// Probabilities of faults drawn per request with the upstream's seeded RNG, and the
/// parameters of the faults drawn. Requests a script handles draw nothing.
///
/// Probabilities are in `[0, 1]` and add up to at most 1; the rest is normal responses.
///
/// ```
/// use tollgate_testkit::FaultMix;
/// let mix = FaultMix { rate_limited: 0.05, unavailable: 0.02, cut_stream: 0.01, ..FaultMix::default() };
/// assert!((mix.total() - 0.08).abs() < 1e-9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultMix {
    /// [`Action::Status429`] with `retry_after`.
    pub rate_limited: f64,
    /// [`Action::Status500`].
    pub server_error: f64,
    /// [`Action::Status503`].
    pub unavailable: f64,
    /// [`Action::ResetMidBody`].
    pub reset: f64,
    /// [`Action::CutStreamAfter`] with `cut_after`.
    pub cut_stream: f64,
    /// [`Action::MalformedJson`].
    pub malformed: f64,
    /// [`Action::SlowFirstByte`] with `first_byte_delay`.
    pub slow_first_byte: f64,
    /// [`Action::SlowDrip`] with `drip`.
    pub slow_drip: f64,
    /// `Retry-After` seconds of drawn 429s (default 1).
    pub retry_after: u64,
    /// Events sent before a drawn stream cut (default 2).
    pub cut_after: usize,
    /// Delay of a drawn slow first byte (default 200 ms).
    pub first_byte_delay: Duration,
    /// Delay between events of a drawn slow drip (default 50 ms).
    pub drip: Duration,
}

impl Default for FaultMix {
    /// No faults; the parameters at their defaults.
    fn default() -> FaultMix {
        FaultMix {
            rate_limited: 0.0,
            server_error: 0.0,
            unavailable: 0.0,
            reset: 0.0,
            cut_stream: 0.0,
            malformed: 0.0,
            slow_first_byte: 0.0,
            slow_drip: 0.0,
            retry_after: 1,
            cut_after: 2,
            first_byte_delay: Duration::from_millis(200),
            drip: Duration::from_millis(50),
        }
    }
}

impl FaultMix {
    fn weights(&self) -> [(f64, Action); 8] {
        [
            (
                self.rate_limited,
                Action::Status429 {
                    retry_after: self.retry_after,
                },
            ),
            (self.server_error, Action::Status500),
            (self.unavailable, Action::Status503),
            (self.reset, Action::ResetMidBody),
            (self.cut_stream, Action::CutStreamAfter(self.cut_after)),
            (self.malformed, Action::MalformedJson),
            (
                self.slow_first_byte,
                Action::SlowFirstByte(self.first_byte_delay),
            ),
            (self.slow_drip, Action::SlowDrip(self.drip)),
        ]
    }

    /// The probability of any fault.
    pub fn total(&self) -> f64 {
        self.weights().iter().map(|(p, _)| p).sum()
    }

    /// Checks every probability is in `[0, 1]` and that they add up to at most 1.
    pub fn validate(&self) -> Result<(), Error> {
        let names = [
            "rate_limited",
            "server_error",
            "unavailable",
            "reset",
            "cut_stream",
            "malformed",
            "slow_first_byte",
            "slow_drip",
        ];
        for ((p, _), name) in self.weights().iter().zip(names) {
            if !(0.0..=1.0).contains(p) {
                return Err(Error::Config(format!(
                    "fault mix {name} = {p}; use a probability between 0 and 1"
                )));
            }
        }
        let total = self.total();
        if total > 1.0 + 1e-9 {
            return Err(Error::Config(format!(
                "fault mix probabilities add up to {total}; lower them to total at most 1"
            )));
        }
        Ok(())
    }

    /// The action for a uniform draw in `[0, 1)`: `None` for a normal response.
    pub(crate) fn pick(&self, u: f64) -> Option<Action> {
        let mut acc = 0.0;
        for (p, action) in self.weights() {
            acc += p;
            if p > 0.0 && u < acc {
                return Some(action);
            }
        }
        None
    }
}

/// Which requests a script applies to. Every condition set must hold; [`Match::any`] has none.
///
/// ```
/// use tollgate_testkit::Match;
/// let m = Match::model("gpt-4o").and_tenant("acme").and_stream(true);
/// # let _ = m;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    model: Option<String>,
    tenant: Option<String>,
    path: Option<String>,
    stream: Option<bool>,
    headers: Vec<(String, String)>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests whose body's `model` is `model`.
    pub fn model(model: impl Into<String>) -> Match {
        Match::any().and_model(model)
    }

    /// Requests of `tenant` (`x-testkit-tenant` header, else the body's `user`).
    pub fn tenant(tenant: impl Into<String>) -> Match {
        Match::any().and_tenant(tenant)
    }

    /// Requests carrying header `name` (any case) with exactly `value`.
    pub fn header(name: impl Into<String>, value: impl Into<String>) -> Match {
        Match::any().and_header(name, value)
    }

    /// Requests to this path, e.g. `/v1/models`.
    pub fn path(path: impl Into<String>) -> Match {
        Match::any().and_path(path)
    }

    /// Also requires the model.
    pub fn and_model(mut self, model: impl Into<String>) -> Match {
        self.model = Some(model.into());
        self
    }

    /// Also requires the tenant.
    pub fn and_tenant(mut self, tenant: impl Into<String>) -> Match {
        self.tenant = Some(tenant.into());
        self
    }

    /// Also requires the header.
    pub fn and_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Match {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Also requires the path.
    pub fn and_path(mut self, path: impl Into<String>) -> Match {
        self.path = Some(path.into());
        self
    }

    /// Also requires a streaming (`true`) or JSON (`false`) request.
    pub fn and_stream(mut self, stream: bool) -> Match {
        self.stream = Some(stream);
        self
    }

    pub(crate) fn matches(&self, req: &RequestFacts<'_>) -> bool {
        fn eq(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        eq(&self.model, req.model)
            && eq(&self.tenant, req.tenant)
            && eq(&self.path, Some(req.path))
            && self.stream.is_none_or(|s| s == req.stream)
            && self.headers.iter().all(|(name, value)| {
                req.headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| v.as_bytes() == value.as_bytes())
            })
    }
}

/// What a [`Match`] looks at.
pub(crate) struct RequestFacts<'a> {
    pub model: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub path: &'a str,
    pub stream: bool,
    pub headers: &'a HeaderMap,
}

/// Scripts in the order given; a request takes the next action of the first script that
/// matches it and still has actions.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    entries: Vec<(Match, VecDeque<Action>)>,
}

impl Scripts {
    pub(crate) fn push(&mut self, m: Match, actions: impl IntoIterator<Item = Action>) {
        let actions: VecDeque<Action> = actions.into_iter().collect();
        if !actions.is_empty() {
            self.entries.push((m, actions));
        }
    }

    pub(crate) fn take(&mut self, req: &RequestFacts<'_>) -> Option<Action> {
        let i = self.entries.iter().position(|(m, _)| m.matches(req))?;
        let action = self.entries[i].1.pop_front();
        if self.entries[i].1.is_empty() {
            self.entries.remove(i);
        }
        action
    }

    pub(crate) fn remaining(&self) -> usize {
        self.entries.iter().map(|(_, a)| a.len()).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The generator for draw number `n` under `seed` (tollgate's SplitMix64): each request's
/// draws depend only on the seed and its own number, not on what earlier requests drew.
pub(crate) fn draw(seed: u64, n: u64) -> SplitMix64 {
    let mut r = SplitMix64::new(seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next_u64();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_matches_openai() {
        let ms = Duration::from_millis;
        assert_eq!(format_reset(ms(20)), "20ms");
        assert_eq!(format_reset(ms(1000)), "1s");
        assert_eq!(format_reset(ms(1500)), "1.5s");
        assert_eq!(format_reset(ms(360_000)), "6m0s");
        assert_eq!(format_reset(ms(61_250)), "1m1.25s");
    }

    #[test]
    fn pick_walks_cumulative_probabilities() {
        let mix = FaultMix {
            rate_limited: 0.25,
            unavailable: 0.25,
            ..FaultMix::default()
        };
        assert_eq!(mix.pick(0.1), Some(Action::Status429 { retry_after: 1 }));
        assert_eq!(mix.pick(0.3), Some(Action::Status503));
        assert_eq!(mix.pick(0.6), None);
        assert!(
            FaultMix {
                reset: 0.7,
                malformed: 0.7,
                ..FaultMix::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn uniform_latency_stays_in_range() {
        let ms = Duration::from_millis;
        let l = Latency::from(ms(20)..ms(30));
        for n in 0..100 {
            let d = l.sample(draw(7, n).next_u64());
            assert!(d >= ms(20) && d <= ms(30));
        }
    }
}
