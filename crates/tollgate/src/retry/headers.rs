//! Response headers as the retry logic reads them, and parsers for the ones that steer retries.
//!
//! [`Headers`] is a borrowed, transport-agnostic view: a slice of `(name, raw value)` pairs.
//! Names compare ASCII case-insensitively; values are raw bytes and may hold anything, including
//! non-ASCII bytes. Every parser here returns `None` for a value it does not understand and never
//! panics. When a header repeats, the first *valid* value wins; each lookup is one pass over the
//! slice, so 10 000 repeated headers cost 10 000 comparisons, never more.
//!
//! Leading and trailing optional whitespace (SP, HTAB) is stripped from every value first, as
//! RFC 9110 §5.5 says a field value excludes it: `"  5"` and `"5 "` both read as 5.
//!
//! | header | parser | reads |
//! |---|---|---|
//! | `retry-after-ms` | [`parse_retry_after_ms`] | `1*DIGIT ["." 1*DIGIT]` milliseconds |
//! | `Retry-After` | [`parse_retry_after`] | delay-seconds, or an HTTP-date in any RFC 9110 form |
//! | `x-ratelimit-reset-{requests,tokens}` | [`parse_go_duration`] | Go duration: `6m0s`, `20ms` |
//! | `x-ratelimit-{remaining,limit}-{requests,tokens}` | [`parse_count`] | a decimal `u64` |
//!
//! [`server_delay`] combines them into the one delay the server asked for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `retry-after-ms`: milliseconds to wait (OpenAI and Azure OpenAI send it).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.
pub const RETRY_AFTER: &str = "retry-after";
/// `x-should-retry`: `true` or `false`, the server's explicit verdict (OpenAI).
pub const X_SHOULD_RETRY: &str = "x-should-retry";
/// `x-ratelimit-remaining-requests`
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
/// `x-ratelimit-remaining-tokens`
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
/// `x-ratelimit-reset-requests`: time until the request limit resets, Go duration syntax.
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
/// `x-ratelimit-reset-tokens`: time until the token limit resets, Go duration syntax.
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";
/// `x-ratelimit-limit-requests`
pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
/// `x-ratelimit-limit-tokens`
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";

/// A borrowed view of response headers: `(name, raw value)` pairs in the order received.
///
/// ```
/// use tollgate::retry::Headers;
/// let fields: &[(&str, &[u8])] = &[("Retry-After", b"5"), ("retry-after", b"7")];
/// let headers = Headers::new(fields);
/// assert_eq!(headers.get("RETRY-AFTER"), Some(&b"5"[..]));
/// assert_eq!(headers.all("retry-after").count(), 2);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    fields: &'a [(&'a str, &'a [u8])],
}

impl<'a> Headers<'a> {
    /// No headers (a connect failure, a timeout before the response head).
    pub const EMPTY: Headers<'static> = Headers { fields: &[] };

    /// A view over `fields`.
    pub const fn new(fields: &'a [(&'a str, &'a [u8])]) -> Headers<'a> {
        Headers { fields }
    }

    /// The underlying pairs.
    pub const fn fields(&self) -> &'a [(&'a str, &'a [u8])] {
        self.fields
    }

    /// Number of fields.
    pub const fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub const fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The raw value of the first field called `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// Every raw value of the fields called `name` (case-insensitive), in order.
    pub fn all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields
            .iter()
            .filter(move |(n, _)| name_eq(n, name))
            .map(|(_, v)| *v)
    }

    /// The first value of `name` that `parse` accepts: one pass, stops at the first success.
    pub fn first_valid<T>(
        &self,
        name: &str,
        parse: impl FnMut(&'a [u8]) -> Option<T>,
    ) -> Option<T> {
        self.all(name).find_map(parse)
    }
}

/// ASCII case-insensitive name comparison: length first (most names differ in length), then
/// an exact comparison (HTTP/2 and hyper give lowercase names), then the case-insensitive one.
#[inline]
fn name_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a == b || a.as_bytes().eq_ignore_ascii_case(b.as_bytes()))
}

/// Strips optional whitespace (SP, HTAB) from both ends.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Reads `1*DIGIT` as a `u64`, saturating at `u64::MAX`; anything else is `None`.
fn digits_saturating(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// `x-ratelimit-remaining-*` / `x-ratelimit-limit-*`: a non-negative decimal integer. Values past
/// `u64::MAX` saturate; signs, fractions and garbage are `None`.
///
/// ```
/// use tollgate::retry::parse_count;
/// assert_eq!(parse_count(b" 59 "), Some(59));
/// assert_eq!(parse_count(b"99999999999999999999999"), Some(u64::MAX));
/// assert_eq!(parse_count(b"-1"), None);
/// ```
pub fn parse_count(value: &[u8]) -> Option<u64> {
    digits_saturating(trim_ows(value))
}

/// `retry-after-ms`: non-negative milliseconds, integer or decimal (`"1500"`, `"12.5"`).
///
/// Fractions below a nanosecond are dropped; huge values saturate (a server asking for an
/// absurd wait gets one, and [`crate::retry::decide()`] then gives up rather than sleep). Signs,
/// exponents, a bare `"."` and garbage are `None`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::parse_retry_after_ms;
/// assert_eq!(parse_retry_after_ms(b"12.5"), Some(Duration::from_micros(12_500)));
/// assert_eq!(parse_retry_after_ms(b"-5"), None);
/// ```
pub fn parse_retry_after_ms(value: &[u8]) -> Option<Duration> {
    let v = trim_ows(value);
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], Some(&v[dot + 1..])),
        None => (v, None),
    };
    let ms = digits_saturating(int)?;
    let mut nanos = 0u32;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Six fractional digits of a millisecond are nanoseconds; the rest is dropped.
        let mut scale = 100_000u32;
        for d in frac.iter().take(6) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
    }
    Some(Duration::from_millis(ms).saturating_add(Duration::from_nanos(u64::from(nanos))))
}

/// `Retry-After` (RFC 9110 §10.2.3): `delay-seconds = 1*DIGIT`, or an HTTP-date, as a wait from
/// `now_wall`. A date in the past means no wait (`Duration::ZERO`).
///
/// Delay-seconds takes digits only: `"-1"`, `"+5"`, `"1e3"`, `"5.5"` and `""` are `None`.
/// Huge delay-seconds saturate rather than wrap. Dates are read by [`parse_http_date`].
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use tollgate::retry::parse_retry_after;
/// // 1994-11-06 08:49:00 UTC
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_740);
/// assert_eq!(parse_retry_after(b"120", now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
///     Some(Duration::from_secs(37))
/// );
/// ```
pub fn parse_retry_after(value: &[u8], now_wall: SystemTime) -> Option<Duration> {
    let v = trim_ows(value);
    if v.first().is_some_and(u8::is_ascii_digit) {
        return digits_saturating(v).map(Duration::from_secs);
    }
    let date = parse_http_date(v, now_wall)?;
    Some(date.duration_since(now_wall).unwrap_or(Duration::ZERO))
}

/// An HTTP-date (RFC 9110 §5.6.7) in any of its three forms, as a wall-clock time:
///
/// - IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`
/// - obsolete RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`. The two-digit year is read as the
///   latest year with those digits that is at most 50 years after `now_wall`'s year (RFC 9110:
///   a year that appears more than 50 years in the future is in the past century).
/// - asctime: `Sun Nov  6 08:49:37 1994`
///
/// Choices, for robustness (RFC 9110 encourages it): day and month names compare
/// case-insensitively; the weekday must be a real day name but need not match the date (it is
/// redundant; Go's `http.ParseTime` does the same); a leap second `:60` is accepted. Everything
/// else is strict: exact field widths and separators, a valid calendar day, `GMT` as the zone.
pub fn parse_http_date(value: &[u8], now_wall: SystemTime) -> Option<SystemTime> {
    let v = trim_ows(value);
    let secs = if v.get(3) == Some(&b',') {
        parse_imf_fixdate(v)?
    } else if v.get(3) == Some(&b' ') {
        parse_asctime(v)?
    } else {
        parse_rfc850(v, year_of(now_wall))?
    };
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

const SHORT_DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn is_one_of(v: &[u8], names: &[&[u8]]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(v))
}

fn month(v: &[u8]) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(v))
        .map(|i| i as u32 + 1)
}

/// Exactly `N` ASCII digits.
fn fixed_digits(v: &[u8]) -> Option<u32> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// `HH:MM:SS` as seconds of the day (a leap second 60 allowed).
fn time_of_day(v: &[u8]) -> Option<i64> {
    if v.len() != 8 || v[2] != b':' || v[5] != b':' {
        return None;
    }
    let (h, m, s) = (
        fixed_digits(&v[0..2])?,
        fixed_digits(&v[3..5])?,
        fixed_digits(&v[6..8])?,
    );
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(i64::from(h * 3600 + m * 60 + s))
}

/// Seconds since the Unix epoch of a validated UTC date and time.
fn timestamp(year: i64, month: u32, day: u32, tod: i64) -> Option<i64> {
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + tod)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn parse_imf_fixdate(v: &[u8]) -> Option<i64> {
    if v.len() != 29 || !is_one_of(&v[0..3], &SHORT_DAYS) || &v[3..5] != b", " {
        return None;
    }
    if v[7] != b' ' || v[11] != b' ' || v[16] != b' ' || &v[25..29] != b" GMT" {
        return None;
    }
    let day = fixed_digits(&v[5..7])?;
    let month = month(&v[8..11])?;
    let year = fixed_digits(&v[12..16])?;
    let tod = time_of_day(&v[17..25])?;
    timestamp(i64::from(year), month, day, tod)
}

/// `Sun Nov  6 08:49:37 1994` (the day is two digits or a space and one digit).
fn parse_asctime(v: &[u8]) -> Option<i64> {
    if v.len() != 24 || !is_one_of(&v[0..3], &SHORT_DAYS) || v[3] != b' ' {
        return None;
    }
    if v[7] != b' ' || v[10] != b' ' || v[19] != b' ' {
        return None;
    }
    let month = month(&v[4..7])?;
    let day = match v[8] {
        b' ' => fixed_digits(&v[9..10])?,
        _ => fixed_digits(&v[8..10])?,
    };
    let tod = time_of_day(&v[11..19])?;
    let year = fixed_digits(&v[20..24])?;
    timestamp(i64::from(year), month, day, tod)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn parse_rfc850(v: &[u8], now_year: i64) -> Option<i64> {
    // The longest day name is 9 bytes; look for the comma no further.
    let comma = v.iter().take(10).position(|&b| b == b',')?;
    if !is_one_of(&v[..comma], &LONG_DAYS) {
        return None;
    }
    let rest = &v[comma + 1..];
    if rest.len() != 23 || rest[0] != b' ' {
        return None;
    }
    let rest = &rest[1..];
    if rest[2] != b'-' || rest[6] != b'-' || rest[9] != b' ' || &rest[18..22] != b" GMT" {
        return None;
    }
    let day = fixed_digits(&rest[0..2])?;
    let month = month(&rest[3..6])?;
    let yy = i64::from(fixed_digits(&rest[7..9])?);
    let tod = time_of_day(&rest[10..18])?;
    timestamp(two_digit_year(yy, now_year), month, day, tod)
}

/// RFC 9110 §5.6.7: the latest year ending in `yy` that is not more than 50 years after
/// `now_year`.
pub(crate) fn two_digit_year(yy: i64, now_year: i64) -> i64 {
    let limit = now_year + 50;
    limit - (limit - yy).rem_euclid(100)
}

/// The UTC calendar year of a wall-clock time.
fn year_of(t: SystemTime) -> i64 {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    civil_from_days(secs.div_euclid(86_400)).0
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12, day 1..=31).
///
/// Eras of 400 years (146 097 days) with the year starting in March, so the leap day is last.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01: the inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A Go duration (`time.ParseDuration` syntax), as OpenAI's `x-ratelimit-reset-*` send them:
/// `"1s"`, `"6m0s"`, `"20ms"`, `"1m30.5s"`, `"2h"`, `"1.5µs"` / `"1.5us"` / `"1.5μs"`, `"0s"`,
/// and a bare `"0"`.
///
/// Units: `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`. A leading `+` is
/// accepted and `-0` is zero, as in Go; any other negative duration is `None` (a wait cannot be
/// negative). Like Go, a total above `i64::MAX` nanoseconds (about 292 years) is `None`;
/// fraction digits beyond what fits are dropped.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::parse_go_duration;
/// assert_eq!(parse_go_duration(b"6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("1.5µs".as_bytes()), Some(Duration::from_nanos(1500)));
/// assert_eq!(parse_go_duration(b"-1s"), None);
/// ```
pub fn parse_go_duration(value: &[u8]) -> Option<Duration> {
    const LIMIT: u64 = 1 << 63; // one past i64::MAX
    let mut s = trim_ows(value);
    let mut neg = false;
    if let Some(&c) = s.first()
        && (c == b'-' || c == b'+')
    {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return None;
        }
        // Integer part.
        let int_len = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut v: u64 = 0;
        for &d in &s[..int_len] {
            if v > LIMIT / 10 {
                return None;
            }
            v = v * 10 + u64::from(d - b'0');
            if v > LIMIT {
                return None;
            }
        }
        s = &s[int_len..];
        // Fraction part: digits that still fit in the accumulator count, the rest are dropped.
        let mut frac: u64 = 0;
        let mut scale = 1.0f64;
        let mut frac_len = 0;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            frac_len = s.iter().take_while(|b| b.is_ascii_digit()).count();
            let mut full = false;
            for &d in &s[..frac_len] {
                if full {
                    continue;
                }
                if frac > (LIMIT - 1) / 10 {
                    full = true;
                    continue;
                }
                let next = frac * 10 + u64::from(d - b'0');
                if next >= LIMIT {
                    full = true;
                    continue;
                }
                frac = next;
                scale *= 10.0;
            }
            s = &s[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return None; // "." or ".s"
        }
        // Unit: everything up to the next digit or dot.
        let unit_len = s
            .iter()
            .take_while(|b| !(**b == b'.' || b.is_ascii_digit()))
            .count();
        let unit = go_unit(&s[..unit_len])?;
        s = &s[unit_len..];
        if v > LIMIT / unit {
            return None;
        }
        v *= unit;
        if frac > 0 {
            // Go's arithmetic: the fraction scaled in floating point, truncated.
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return None;
            }
        }
        total += v;
        if total > LIMIT {
            return None;
        }
    }
    if neg {
        return (total == 0).then_some(Duration::ZERO);
    }
    if total > LIMIT - 1 {
        return None;
    }
    Some(Duration::from_nanos(total))
}

fn go_unit(u: &[u8]) -> Option<u64> {
    Some(match u {
        b"ns" => 1,
        b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60_000_000_000,
        b"h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Where a server-directed delay came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelaySource {
    /// `retry-after-ms`
    RetryAfterMs,
    /// `Retry-After`
    RetryAfter,
    /// `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` of an exhausted limit.
    RateLimitReset,
}

impl DelaySource {
    /// The header name, for messages.
    pub fn header(self) -> &'static str {
        match self {
            DelaySource::RetryAfterMs => RETRY_AFTER_MS,
            DelaySource::RetryAfter => "Retry-After",
            DelaySource::RateLimitReset => "x-ratelimit-reset-*",
        }
    }
}

/// The delay the server asked for, if any, and which header said so. See [`server_delay`].
pub fn server_delay_with_source(
    headers: &Headers<'_>,
    now_wall: SystemTime,
) -> Option<(Duration, DelaySource)> {
    if let Some(d) = headers.first_valid(RETRY_AFTER_MS, parse_retry_after_ms) {
        return Some((d, DelaySource::RetryAfterMs));
    }
    if let Some(d) = headers.first_valid(RETRY_AFTER, |v| parse_retry_after(v, now_wall)) {
        return Some((d, DelaySource::RetryAfter));
    }
    ServerLimits::from_headers(headers)
        .reset_delay()
        .map(|d| (d, DelaySource::RateLimitReset))
}

/// The delay the server asked for before the next attempt, by precedence:
///
/// 1. `retry-after-ms` (first valid value);
/// 2. `Retry-After` (first valid value), delay-seconds or HTTP-date relative to `now_wall`;
/// 3. the larger of `x-ratelimit-reset-requests` and `x-ratelimit-reset-tokens`, each counted
///    only when its `x-ratelimit-remaining-*` is 0 or absent ([`ServerLimits::reset_delay`]).
///
/// `None` when no header gives a delay: the caller falls back to its own backoff.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tollgate::retry::{server_delay, Headers};
/// let fields: &[(&str, &[u8])] = &[
///     ("x-ratelimit-remaining-requests", b"0"),
///     ("x-ratelimit-reset-requests", b"1m30.5s"),
///     ("x-ratelimit-remaining-tokens", b"1200"),
///     ("x-ratelimit-reset-tokens", b"6m0s"),
/// ];
/// let d = server_delay(&Headers::new(fields), SystemTime::now());
/// assert_eq!(d, Some(Duration::from_millis(90_500)));
/// ```
pub fn server_delay(headers: &Headers<'_>, now_wall: SystemTime) -> Option<Duration> {
    server_delay_with_source(headers, now_wall).map(|(d, _)| d)
}

/// What the server reported about its rate limits (`x-ratelimit-*`, OpenAI style). Each field is
/// the first valid value of its header, or `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerLimits {
    /// `x-ratelimit-remaining-requests`
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens`
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-requests`
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens`
    pub reset_tokens: Option<Duration>,
    /// `x-ratelimit-limit-requests`
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens`
    pub limit_tokens: Option<u64>,
}

impl ServerLimits {
    /// Reads the six `x-ratelimit-*` headers in one pass over `headers`.
    pub fn from_headers(headers: &Headers<'_>) -> ServerLimits {
        let mut l = ServerLimits::default();
        for (name, value) in headers.fields() {
            // Every name of interest is "x-ratelimit-" (12 bytes) + one of six suffixes, and the
            // length (plus the 13th byte) tells which one it can be.
            let n = name.as_bytes();
            if n.len() < 24 || n.len() > 30 {
                continue;
            }
            match (n.len(), n[12].to_ascii_lowercase()) {
                (30, _) if name_eq(name, REMAINING_REQUESTS) => {
                    fill(&mut l.remaining_requests, value, parse_count)
                }
                (28, _) if name_eq(name, REMAINING_TOKENS) => {
                    fill(&mut l.remaining_tokens, value, parse_count)
                }
                (26, b'r') if name_eq(name, RESET_REQUESTS) => {
                    fill(&mut l.reset_requests, value, parse_go_duration)
                }
                (24, b'r') if name_eq(name, RESET_TOKENS) => {
                    fill(&mut l.reset_tokens, value, parse_go_duration)
                }
                (26, b'l') if name_eq(name, LIMIT_REQUESTS) => {
                    fill(&mut l.limit_requests, value, parse_count)
                }
                (24, b'l') if name_eq(name, LIMIT_TOKENS) => {
                    fill(&mut l.limit_tokens, value, parse_count)
                }
                _ => {}
            }
        }
        l
    }

    /// Whether no `x-ratelimit-*` header was understood.
    pub fn is_empty(&self) -> bool {
        *self == ServerLimits::default()
    }

    /// The wait until an exhausted limit resets: the larger of the reset times whose limit is
    /// exhausted (`remaining` is 0) or whose `remaining` is not reported at all.
    pub fn reset_delay(&self) -> Option<Duration> {
        let exhausted = |r: Option<u64>| r.is_none_or(|r| r == 0);
        let requests = self
            .reset_requests
            .filter(|_| exhausted(self.remaining_requests));
        let tokens = self
            .reset_tokens
            .filter(|_| exhausted(self.remaining_tokens));
        requests.max(tokens)
    }
}

/// Sets `slot` from `value` unless an earlier value already did: the first valid value wins.
fn fill<T>(slot: &mut Option<T>, value: &[u8], parse: fn(&[u8]) -> Option<T>) {
    if slot.is_none() {
        *slot = parse(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in (-800_000i64..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn two_digit_years() {
        assert_eq!(two_digit_year(94, 2025), 1994);
        assert_eq!(two_digit_year(75, 2025), 2075); // exactly 50 years ahead: future
        assert_eq!(two_digit_year(76, 2025), 1976); // 51 years ahead: past century
        assert_eq!(two_digit_year(10, 2099), 2110);
        assert_eq!(two_digit_year(0, 2000), 2000);
    }

    #[test]
    fn trims_only_ows() {
        assert_eq!(trim_ows(b" \t5\t "), b"5");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"\n5"), b"\n5");
    }

    #[test]
    fn leap_days() {
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(timestamp(2023, 2, 29, 0), None);
    }
}
