//! Retry decisions through the public API, in virtual time. Conformance tables come from
//! `tests/data/retry_conformance.md`, which names their sources.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use tollgate::policy::{Breaker, BreakerWindow, Jitter, Retry, RetryOn};
use tollgate::retry::*;
// proptest's prelude exports rand's `Rng` trait too; ours is the one meant.
use tollgate::retry::Rng;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// 1994-11-06 08:49:37 UTC, the RFC 9110 example instant.
const RFC_EXAMPLE: u64 = 784_111_777;
/// 2025-06-01 00:00:00 UTC.
const NOW_2025: u64 = 1_748_736_000;

fn wall(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------------------------
// 1. RFC 9110 §5.6.7 HTTP-date forms

#[test]
fn rfc9110_date_forms() {
    let now = wall(NOW_2025);
    for form in [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ] {
        let t = parse_http_date(form.as_bytes(), now).unwrap_or_else(|| panic!("{form}"));
        assert_eq!(unix(t), RFC_EXAMPLE as i64, "{form}");
        // 37 seconds before the instant, Retry-After asks for 37 s.
        let before = wall(RFC_EXAMPLE - 37);
        assert_eq!(
            parse_retry_after(form.as_bytes(), before),
            Some(secs(37)),
            "{form}"
        );
    }
    let t = parse_http_date(b"Fri, 31 Dec 1999 23:59:59 GMT", now).expect("RFC example");
    assert_eq!(unix(t), 946_684_799);
    assert_eq!(
        parse_retry_after(b"Fri, 31 Dec 1999 23:59:59 GMT", wall(946_684_799 - 120)),
        Some(secs(120))
    );
}

#[test]
fn date_in_the_past_means_no_wait() {
    let now = wall(NOW_2025);
    assert_eq!(
        parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::ZERO)
    );
    // Exactly now: zero as well.
    assert_eq!(
        parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", wall(RFC_EXAMPLE)),
        Some(Duration::ZERO)
    );
    // Sub-second wall clock: the wait is to the whole second of the date.
    let now = wall(RFC_EXAMPLE - 1) + Duration::from_millis(250);
    assert_eq!(
        parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_millis(750))
    );
}

#[test]
fn rfc850_two_digit_year_rule() {
    let now = wall(NOW_2025);
    let t = parse_http_date(b"Wednesday, 01-Jan-75 00:00:00 GMT", now).expect("75");
    assert_eq!(unix(t), 3_313_526_400, "50 years ahead stays in the future");
    let t = parse_http_date(b"Thursday, 01-Jan-76 00:00:00 GMT", now).expect("76");
    assert_eq!(
        unix(t),
        189_302_400,
        "more than 50 years ahead is the past century"
    );
}

#[test]
fn date_choices_and_invalid_dates() {
    let now = wall(NOW_2025);
    let accepted = [
        ("Mon, 06 Nov 1994 08:49:37 GMT", RFC_EXAMPLE as i64), // wrong weekday: ignored
        ("Sun, 06 nov 1994 08:49:37 GMT", RFC_EXAMPLE as i64), // case: robust
        ("SUNDAY, 06-NOV-94 08:49:37 GMT", RFC_EXAMPLE as i64),
        ("  Sun, 06 Nov 1994 08:49:37 GMT\t", RFC_EXAMPLE as i64), // OWS
        ("Sun, 06 Nov 1994 23:59:60 GMT", 784_166_400),            // leap second = next midnight
        ("Thu, 29 Feb 2024 00:00:00 GMT", 1_709_164_800),
        ("Sat, 01 Jan 0000 00:00:00 GMT", -62_167_219_200),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253_402_300_799),
    ];
    for (v, want) in accepted {
        let t = parse_http_date(v.as_bytes(), now).unwrap_or_else(|| panic!("{v:?}"));
        assert_eq!(unix(t), want, "{v:?}");
    }
    let rejected: &[&[u8]] = &[
        b"",
        b"Sun, 30 Feb 1994 08:49:37 GMT",
        b"Sun, 29 Feb 2023 08:49:37 GMT",
        b"Sun, 00 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 24:00:00 GMT",
        b"Sun, 06 Nov 1994 08:60:00 GMT",
        b"Sun, 06 Nov 1994 08:49:61 GMT",
        b"Sun, 06 Nov 1994 08:49:37 UTC",
        b"Sun, 06 Nov 1994 08:49:37 +0000",
        b"Sun, 6 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 94 08:49:37 GMT",
        b"Sun, 06 Foo 1994 08:49:37 GMT",
        b"Xyz, 06 Nov 1994 08:49:37 GMT",
        b"Sun,06 Nov 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 08:49:37 GMT extra",
        b"Sun, 06 Nov 1994 8:49:37 GMT",
        b"Sun, 06 Nov 1994 08-49-37 GMT",
        b"Sun, 06-Nov-94 08:49:37 GMT", // RFC 850 needs the long day name
        b"Sunday, 06-Nov-1994 08:49:37 GMT",
        b"Sunday, 06 Nov 94 08:49:37 GMT",
        b"Funday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov 6 08:49:37 1994",
        b"Sun Nov  6 08:49:37 94",
        b"Sun Nov 31 08:49:37 1994",
        b"Sun, \xff\xfe Nov 1994 08:49:37 GMT",
        "Sun, ０６ Nov 1994 08:49:37 GMT".as_bytes(),
        b"2025-06-01T00:00:00Z",
    ];
    for v in rejected {
        assert_eq!(
            parse_http_date(v, now),
            None,
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Retry-After delay-seconds and retry-after-ms

#[test]
fn delay_seconds_edge_cases() {
    let now = wall(NOW_2025);
    let cases: &[(&[u8], Option<Duration>)] = &[
        (b"0", Some(Duration::ZERO)),
        (b"120", Some(secs(120))),
        (b"  5", Some(secs(5))),
        (b"5 ", Some(secs(5))),
        (b"\t5\t", Some(secs(5))),
        (b"007", Some(secs(7))),
        (b"-1", None),
        (b"+5", None),
        (b"1e3", None),
        (b"5.5", None),
        (b"5s", None),
        (b"5 5", None),
        (b"", None),
        (b"   ", None),
        (b"\xff", None),
        ("５".as_bytes(), None),
        (b"99999999999999999999", Some(secs(u64::MAX))),
    ];
    for (v, want) in cases {
        assert_eq!(
            parse_retry_after(v, now),
            *want,
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
}

#[test]
fn retry_after_ms_values() {
    let cases: &[(&[u8], Option<Duration>)] = &[
        (b"0", Some(Duration::ZERO)),
        (b"1500", Some(Duration::from_millis(1500))),
        (b"12.5", Some(Duration::from_micros(12_500))),
        (b" 20 ", Some(Duration::from_millis(20))),
        (b"0.000001", Some(Duration::from_nanos(1))),
        (b"0.0000009", Some(Duration::ZERO)),
        (b"1.123456789", Some(Duration::from_nanos(1_123_456))),
        (b"-1", None),
        (b"+1", None),
        (b"1e3", None),
        (b".5", None),
        (b"5.", None),
        (b"1.2.3", None),
        (b"", None),
        (b"NaN", None),
        (b"inf", None),
        (b"\xc2\xb5", None),
    ];
    for (v, want) in cases {
        assert_eq!(
            parse_retry_after_ms(v),
            *want,
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
    let huge = parse_retry_after_ms(b"999999999999999999999999.9").expect("saturates");
    assert!(huge >= Duration::from_millis(u64::MAX));
}

// ---------------------------------------------------------------------------------------------
// 2. Go durations (x-ratelimit-reset-*)

#[test]
fn go_parse_duration_table() {
    let ok: &[(&str, u64)] = &[
        ("0", 0),
        ("5s", 5 * SEC),
        ("30s", 30 * SEC),
        ("1478s", 1478 * SEC),
        ("+5s", 5 * SEC),
        ("-0", 0),
        ("+0", 0),
        ("5.0s", 5 * SEC),
        ("5.6s", 5 * SEC + 600 * MS),
        ("5.s", 5 * SEC),
        (".5s", 500 * MS),
        ("1.0s", SEC),
        ("1.00s", SEC),
        ("1.004s", SEC + 4 * MS),
        ("1.0040s", SEC + 4 * MS),
        ("100.00100s", 100 * SEC + MS),
        ("10ns", 10),
        ("11us", 11_000),
        ("12µs", 12_000),
        ("12μs", 12_000),
        ("13ms", 13 * MS),
        ("14s", 14 * SEC),
        ("15m", 15 * 60 * SEC),
        ("16h", 16 * 3600 * SEC),
        ("3h30m", 210 * 60 * SEC),
        ("10.5s4m", 250 * SEC + 500 * MS),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("39h9m14.425s", 140_954_425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 20 * 60 * SEC),
        ("9007199254740993ns", (1 << 53) + 1),
        ("9223372036854775807ns", i64::MAX as u64),
        ("9223372036854775.807us", i64::MAX as u64),
        ("9223372036s854ms775us807ns", i64::MAX as u64),
        ("0.100000000000000000000h", 6 * 60 * SEC),
        ("0.830103483285477580700h", 2_988_372_539_827),
    ];
    for (v, want) in ok {
        assert_eq!(
            parse_go_duration(v.as_bytes()),
            Some(Duration::from_nanos(*want)),
            "{v}"
        );
    }
    let bad: &[&[u8]] = &[
        b"",
        b"3",
        b"-",
        b"s",
        b".",
        b"-.",
        b".s",
        b"+.s",
        b"1d",
        b"\x85\x85",
        b"\xffff",
        b"hello \xffff world",
        "\u{FFFD}".as_bytes(),
        "\u{FFFD} hello \u{FFFD} world".as_bytes(),
        b"9223372036854775810ns",
        b"9223372036854775808ns",
        b"9223372036854776us",
        b"3000000h",
        b"9223372036854775.808us",
        b"9223372036854ms775us808ns",
        // Negative in Go; a wait cannot be negative.
        b"-5s",
        b"-2m3.4s",
        b"-9223372036854775808ns",
        b"-2562047h47m16.854775808s",
        b"-1ns",
    ];
    for v in bad {
        assert_eq!(
            parse_go_duration(v),
            None,
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
}

#[test]
fn openai_reset_values() {
    let cases: &[(&str, Duration)] = &[
        ("1s", secs(1)),
        ("6m0s", secs(360)),
        ("20ms", Duration::from_millis(20)),
        ("1m30.5s", Duration::from_millis(90_500)),
        ("2h", secs(7200)),
        ("1.5µs", Duration::from_nanos(1500)),
        ("1.5us", Duration::from_nanos(1500)),
        ("0s", Duration::ZERO),
        ("  17ms ", Duration::from_millis(17)),
    ];
    for (v, want) in cases {
        assert_eq!(parse_go_duration(v.as_bytes()), Some(*want), "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// server_delay precedence and ServerLimits

fn delay(fields: &[(&str, &[u8])]) -> Option<(Duration, DelaySource)> {
    server_delay_with_source(&Headers::new(fields), wall(NOW_2025))
}

#[test]
fn precedence_ms_then_retry_after_then_reset() {
    let all: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining-requests", b"0"),
        ("x-ratelimit-reset-requests", b"30s"),
        ("Retry-After", b"7"),
        ("retry-after-ms", b"250"),
    ];
    assert_eq!(
        delay(all),
        Some((Duration::from_millis(250), DelaySource::RetryAfterMs))
    );
    assert_eq!(delay(&all[..3]), Some((secs(7), DelaySource::RetryAfter)));
    assert_eq!(
        delay(&all[..2]),
        Some((secs(30), DelaySource::RateLimitReset))
    );
    assert_eq!(delay(&[]), None);

    // An invalid higher-precedence value falls through to the next header.
    let bad_ms: &[(&str, &[u8])] = &[("retry-after-ms", b"soon"), ("retry-after", b"3")];
    assert_eq!(delay(bad_ms), Some((secs(3), DelaySource::RetryAfter)));
    // The first *valid* value of a repeated header wins.
    let repeated: &[(&str, &[u8])] = &[
        ("retry-after", b"later"),
        ("Retry-After", b"4"),
        ("RETRY-AFTER", b"9"),
    ];
    assert_eq!(delay(repeated), Some((secs(4), DelaySource::RetryAfter)));
}

#[test]
fn reset_counts_only_for_exhausted_or_unreported_limits() {
    let both: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining-requests", b"0"),
        ("x-ratelimit-reset-requests", b"1m30.5s"),
        ("x-ratelimit-remaining-tokens", b"1200"),
        ("x-ratelimit-reset-tokens", b"6m0s"),
    ];
    assert_eq!(
        delay(both).map(|d| d.0),
        Some(Duration::from_millis(90_500))
    );
    let both_exhausted: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining-requests", b"0"),
        ("x-ratelimit-reset-requests", b"2s"),
        ("x-ratelimit-remaining-tokens", b"0"),
        ("x-ratelimit-reset-tokens", b"6m0s"),
    ];
    assert_eq!(
        delay(both_exhausted).map(|d| d.0),
        Some(secs(360)),
        "the larger"
    );
    let none_exhausted: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining-requests", b"3"),
        ("x-ratelimit-reset-requests", b"2s"),
        ("x-ratelimit-remaining-tokens", b"10"),
        ("x-ratelimit-reset-tokens", b"6m0s"),
    ];
    assert_eq!(delay(none_exhausted), None);
    let no_remaining: &[(&str, &[u8])] = &[
        ("x-ratelimit-reset-requests", b"2s"),
        ("x-ratelimit-reset-tokens", b"20ms"),
    ];
    assert_eq!(delay(no_remaining).map(|d| d.0), Some(secs(2)));
    // Garbage remaining counts as unreported.
    let garbage_remaining: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining-tokens", b"lots"),
        ("x-ratelimit-reset-tokens", b"5s"),
    ];
    assert_eq!(delay(garbage_remaining).map(|d| d.0), Some(secs(5)));
}

#[test]
fn server_limits_from_a_typical_429() {
    let fields: &[(&str, &[u8])] = &[
        ("date", b"Sun, 01 Jun 2025 00:00:00 GMT"),
        ("content-type", b"application/json"),
        ("X-RateLimit-Limit-Requests", b"10000"),
        ("x-ratelimit-limit-tokens", b"2000000"),
        ("x-ratelimit-remaining-requests", b"9999"),
        ("x-ratelimit-remaining-tokens", b"0"),
        ("x-ratelimit-reset-requests", b"6ms"),
        ("x-ratelimit-reset-tokens", b"1m30.5s"),
    ];
    let l = ServerLimits::from_headers(&Headers::new(fields));
    assert_eq!(
        l,
        ServerLimits {
            remaining_requests: Some(9999),
            remaining_tokens: Some(0),
            reset_requests: Some(Duration::from_millis(6)),
            reset_tokens: Some(Duration::from_millis(90_500)),
            limit_requests: Some(10_000),
            limit_tokens: Some(2_000_000),
        }
    );
    assert_eq!(l.reset_delay(), Some(Duration::from_millis(90_500)));
    assert!(ServerLimits::from_headers(&Headers::EMPTY).is_empty());
}

#[test]
fn non_ascii_bytes_never_panic() {
    let junk: Vec<Vec<u8>> = vec![
        vec![0xff; 40],
        vec![0xc2],
        vec![0xc2, 0xb5],
        "１２３".as_bytes().to_vec(),
        "12µ".as_bytes().to_vec(),
        "Sún, 06 Nov 1994 08:49:37 GMT".as_bytes().to_vec(),
        (0u8..=255).collect(),
        vec![b'9'; 10_000],
        vec![],
    ];
    let names = [
        "retry-after-ms",
        "retry-after",
        "x-should-retry",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-rätelimit-reset-tokens",
    ];
    let mut fields: Vec<(&str, &[u8])> = Vec::new();
    for n in names {
        for v in &junk {
            fields.push((n, v.as_slice()));
        }
    }
    let h = Headers::new(&fields);
    // Only the all-'9' values parse (saturating); nothing panics.
    let limits = ServerLimits::from_headers(&h);
    assert_eq!(limits.remaining_requests, Some(u64::MAX));
    assert_eq!(
        limits.reset_tokens, None,
        "10 000 digits without a unit is not a Go duration"
    );
    assert_eq!(
        server_delay_with_source(&h, wall(NOW_2025)),
        Some((
            Duration::MAX.min(Duration::from_millis(u64::MAX)),
            DelaySource::RetryAfterMs
        ))
    );
    assert_eq!(should_retry_header(&h), None);
    for v in &junk {
        let _ = parse_http_date(v, wall(NOW_2025));
        let _ = parse_go_duration(v);
        let _ = parse_retry_after(v, UNIX_EPOCH);
    }
}

#[test]
fn ten_thousand_repeated_headers() {
    let mut fields: Vec<(&str, &[u8])> = vec![("retry-after", b"garbage"); 10_000];
    fields.push(("Retry-After", b"12"));
    fields.extend(std::iter::repeat_n(
        ("x-ratelimit-remaining-tokens", &b"x"[..]),
        10_000,
    ));
    fields.push(("x-ratelimit-remaining-tokens", b"0"));
    fields.extend(std::iter::repeat_n(
        ("x-ratelimit-remaining-tokens", &b"7"[..]),
        10_000,
    ));
    let h = Headers::new(&fields);
    assert_eq!(server_delay(&h, wall(NOW_2025)), Some(secs(12)));
    assert_eq!(ServerLimits::from_headers(&h).remaining_tokens, Some(0));
    assert_eq!(h.all("retry-after").count(), 10_001);
}

#[test]
fn huge_numbers_saturate_or_are_refused() {
    assert_eq!(parse_count(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_count(b"18446744073709551616"), Some(u64::MAX));
    assert_eq!(parse_count(&[b'9'; 5000]), Some(u64::MAX));
    assert_eq!(parse_count(b"1.5"), None);
    assert_eq!(parse_go_duration(&[b'9'; 5000]), None);
    let mut long = vec![b'1'; 5000];
    long.push(b's');
    assert_eq!(parse_go_duration(&long), None);
    let mut frac = b"1.".to_vec();
    frac.extend(std::iter::repeat_n(b'9', 5000));
    frac.push(b's');
    let d = parse_go_duration(&frac).expect("long fraction digits are dropped, as in Go");
    assert!(d >= secs(1) && d <= secs(2));
}

// ---------------------------------------------------------------------------------------------
// classify

#[test]
fn classification_follows_policy_and_header() {
    let only_cut = [RetryOn::CutStream, RetryOn::Malformed, RetryOn::Status(400)];
    let h = Headers::EMPTY;
    assert!(is_retryable(&Failure::CutStream, &only_cut, &h));
    assert!(is_retryable(&Failure::Malformed, &only_cut, &h));
    assert!(is_retryable(&Failure::Status(400), &only_cut, &h));
    assert!(!is_retryable(&Failure::Status(503), &only_cut, &h));
    assert!(!is_retryable(
        &Failure::Timeout(TimeoutKind::Total),
        &only_cut,
        &h
    ));
    assert!(!is_retryable(
        &Failure::Connect(ConnectKind::Refused),
        &only_cut,
        &h
    ));
    assert_eq!(Failure::from_status(204), None);
    assert_eq!(Failure::from_status(503), Some(Failure::Status(503)));
    assert!(is_success(200) && is_success(299) && !is_success(300) && !is_success(199));
}

// ---------------------------------------------------------------------------------------------
// backoff

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn backoff_stays_within_zero_and_max(
        seed in any::<u64>(),
        attempt in prop_oneof![0u32..70, any::<u32>()],
        prev in any::<u64>(),
        base in prop_oneof![0u64..10_000_000_000, any::<u64>()],
        max in prop_oneof![0u64..100_000_000_000, any::<u64>()],
        j in jitter(),
    ) {
        let (base, max, prev) = (Duration::from_nanos(base), Duration::from_nanos(max), Duration::from_nanos(prev));
        let mut rng = Rng::new(seed);
        let d = backoff(attempt, prev, base, max, j, &mut rng);
        prop_assert!(d <= max, "{d:?} > {max:?}");
        let exp = exponential(attempt, base, max);
        match j {
            Jitter::None => prop_assert_eq!(d, exp),
            Jitter::Full => prop_assert!(d <= exp),
            Jitter::Equal => prop_assert!(d >= exp / 2 && d <= exp),
            Jitter::Decorrelated => prop_assert!(d >= base.min(max)),
        }
    }

    #[test]
    fn retry_budget_never_leaves_its_bounds(
        max in 0.0f64..100.0,
        ratio in 0.0f64..5.0,
        ops in proptest::collection::vec(any::<bool>(), 0..400),
    ) {
        let b = RetryBudget::new(max, ratio);
        let top = b.max_tokens();
        prop_assert_eq!(b.tokens(), top);
        for success in ops {
            if success { b.on_success() } else { b.on_failure() }
            let t = b.tokens();
            prop_assert!((0.0..=top).contains(&t), "{t} outside [0, {top}]");
            prop_assert_eq!(b.allows_retry(), t > top / 2.0);
        }
    }
}

#[test]
fn jitter_modes_spread_over_their_range() {
    let (base, max) = (Duration::from_millis(100), Duration::from_secs(10));
    let d = exponential(4, base, max); // 800 ms
    for (j, lo, hi) in [
        (Jitter::Full, Duration::ZERO, d),
        (Jitter::Equal, d / 2, d),
        (Jitter::Decorrelated, base, Duration::from_millis(2400)),
    ] {
        let mut rng = Rng::new(99);
        let samples: Vec<Duration> = (0..10_000)
            .map(|_| backoff(4, Duration::from_millis(800), base, max, j, &mut rng))
            .collect();
        let (min_s, max_s) = (
            *samples.iter().min().expect("samples"),
            *samples.iter().max().expect("samples"),
        );
        assert!(min_s >= lo && max_s <= hi, "{j:?}: {min_s:?}..{max_s:?}");
        // Both ends of the range are approached (within 2 %).
        let span = (hi - lo).as_nanos() as f64;
        assert!(
            ((min_s - lo).as_nanos() as f64) < span * 0.02,
            "{j:?} low end"
        );
        assert!(
            ((hi - max_s).as_nanos() as f64) < span * 0.02,
            "{j:?} high end"
        );
    }
    // Same seed, same sequence.
    let run = |seed| {
        let mut rng = Rng::new(seed);
        (1..6)
            .map(|a| backoff(a, Duration::ZERO, base, max, Jitter::Full, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn backoff_overflow_edges() {
    let mut rng = Rng::new(0);
    for j in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        let d = backoff(
            u32::MAX,
            Duration::MAX,
            Duration::MAX,
            Duration::MAX,
            j,
            &mut rng,
        );
        assert!(d <= Duration::from_nanos(u64::MAX), "{j:?}");
        assert_eq!(
            backoff(
                u32::MAX,
                Duration::ZERO,
                secs(1),
                secs(8),
                Jitter::None,
                &mut rng
            ),
            secs(8)
        );
        assert_eq!(
            backoff(
                1,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                j,
                &mut rng
            ),
            Duration::ZERO
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. gRPC A6 retry throttling

#[test]
fn a6_throttling_table() {
    let b = RetryBudget::new(10.0, 0.1);
    let check = |tokens: f64, allowed: bool, step: &str| {
        assert_eq!(b.tokens(), tokens, "{step}");
        assert_eq!(b.allows_retry(), allowed, "{step}");
    };
    check(10.0, true, "start");
    b.on_failure();
    check(9.0, true, "1 failure");
    for _ in 0..4 {
        b.on_failure();
    }
    check(5.0, false, "5 failures: 5 is not above 5");
    b.on_success();
    check(5.1, true, "one success: 5.1 > 5");
    b.on_failure();
    check(4.1, false, "failure");
    for _ in 0..10 {
        b.on_failure();
    }
    check(0.0, false, "floor at 0");
    for _ in 0..51 {
        b.on_success();
    }
    check(5.1, true, "51 successes");
    for _ in 0..100 {
        b.on_success();
    }
    check(10.0, true, "ceiling at max");
}

#[test]
fn budget_stays_in_bounds_across_threads() {
    let b = RetryBudget::new(10.0, 0.3);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let b = &b;
            s.spawn(move || {
                let mut rng = Rng::new(t);
                for _ in 0..20_000 {
                    if rng.next_u64().is_multiple_of(3) {
                        b.on_success();
                    } else {
                        b.on_failure();
                    }
                    let x = b.tokens();
                    assert!((0.0..=10.0).contains(&x), "{x}");
                }
            });
        }
    });
    // 10 successes of 0.3 from a known state: exact fixed-point arithmetic.
    for _ in 0..100 {
        b.on_failure();
    }
    for _ in 0..10 {
        b.on_success();
    }
    assert_eq!(b.tokens(), 3.0);
}

// ---------------------------------------------------------------------------------------------
// 4. resilience4j circuit breaker

/// resilience4j CircuitBreakerStateMachineTest's setup: 50 %, 4 half-open calls, slow 4 s at
/// 50 %, a 5 s time window with minimum 5 calls, 5 s open.
fn r4j() -> CircuitBreaker {
    CircuitBreaker::new(&Breaker {
        enabled: true,
        window: BreakerWindow::Time(secs(5)),
        min_calls: 5,
        failure_rate: 0.5,
        slow_call: Some(secs(4)),
        slow_call_rate: 0.5,
        open_for: secs(5),
        half_open_calls: 4,
        probe: None,
    })
}

/// Admits and records one call at `now`.
fn call(b: &CircuitBreaker, now: u64, success: bool, latency: Duration) {
    let p = b.try_acquire(now).expect("admitted");
    b.record(p, success, latency, now);
}

/// Opens `b` at `now` with failures, then moves past the open period into half-open.
fn open_then_half_open(b: &CircuitBreaker, now: u64, failures: u32) -> u64 {
    for _ in 0..failures {
        call(b, now, false, Duration::ZERO);
    }
    assert!(matches!(b.state(now), BreakerState::Open { .. }));
    let later = now + 5 * SEC + 1;
    assert_eq!(b.state(later), BreakerState::HalfOpen);
    later
}

#[test]
fn r4j_opens_after_failure_rate_threshold_exceeded() {
    let b = r4j();
    let z = Duration::ZERO;
    for (i, ok) in [false, false, false, true].into_iter().enumerate() {
        call(&b, 0, ok, z);
        assert_eq!(b.state(0), BreakerState::Closed, "call {}", i + 1);
    }
    let s = b.snapshot(0);
    assert_eq!((s.counts.calls, s.counts.failures), (4, 3));
    call(&b, 0, true, z);
    assert_eq!(b.state(0), BreakerState::Open { until: 5 * SEC });
    assert!(b.try_acquire(0).is_err());
}

#[test]
fn r4j_opens_after_slow_call_rate_threshold_exceeded() {
    let b = r4j();
    let (slow, fast) = (secs(5), Duration::from_millis(100));
    for (ok, lat) in [(false, slow), (true, slow), (false, fast), (true, fast)] {
        call(&b, 0, ok, lat);
        assert_eq!(b.state(0), BreakerState::Closed);
    }
    call(&b, 0, true, slow); // slow 3/5 = 60 %, failures 2/5 = 40 %
    assert!(matches!(b.state(0), BreakerState::Open { .. }));
}

#[test]
fn r4j_transitions_to_half_open_after_wait_duration() {
    let b = r4j();
    for _ in 0..5 {
        call(&b, 0, false, Duration::ZERO);
    }
    assert!(b.try_acquire(0).is_err());
    assert!(b.try_acquire(3 * SEC).is_err(), "5 s not elapsed");
    assert_eq!(b.state(3 * SEC), BreakerState::Open { until: 5 * SEC });
    let p = b.try_acquire(6 * SEC).expect("half-open after 6 s");
    assert!(p.is_probe());
    assert_eq!(b.state(6 * SEC), BreakerState::HalfOpen);
    assert_eq!(
        b.snapshot(6 * SEC).counts,
        BreakerCounts::default(),
        "metrics reset"
    );
}

#[test]
fn r4j_only_permits_four_calls_in_half_open() {
    let b = r4j();
    let t = open_then_half_open(&b, 0, 5);
    let permits: Vec<_> = (0..4).map(|_| b.try_acquire(t).expect("probe")).collect();
    assert!(permits.iter().all(BreakerPermit::is_probe));
    assert_eq!(b.try_acquire(t).unwrap_err().retry_in, secs(5));
    assert!(b.try_acquire(t).is_err());
}

#[test]
fn r4j_half_open_back_to_open_on_failure_rate() {
    let b = r4j();
    let t = open_then_half_open(&b, 0, 5);
    for ok in [false, false, true, false] {
        let p = b.try_acquire(t).expect("probe");
        b.record(p, ok, Duration::ZERO, t);
    }
    assert_eq!(b.state(t), BreakerState::Open { until: t + 5 * SEC });
}

#[test]
fn r4j_half_open_back_to_open_on_slow_call_rate() {
    let b = r4j();
    let t = open_then_half_open(&b, 0, 5);
    for lat in [secs(5), secs(5), secs(5), secs(1)] {
        let p = b.try_acquire(t).expect("probe");
        b.record(p, true, lat, t);
    }
    assert!(matches!(b.state(t), BreakerState::Open { .. }));
}

#[test]
fn r4j_half_open_back_to_closed_below_threshold() {
    let b = r4j();
    let t = open_then_half_open(&b, 0, 5);
    for ok in [false, true, true, true] {
        let p = b.try_acquire(t).expect("probe");
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        b.record(p, ok, Duration::ZERO, t);
    }
    assert_eq!(b.state(t), BreakerState::Closed);
    assert_eq!(
        b.snapshot(t).counts,
        BreakerCounts::default(),
        "window cleared"
    );
    call(&b, t, true, Duration::ZERO);
    assert_eq!(b.snapshot(t).counts.calls, 1);
}

/// The brief's count-window table: window 10, min 5, 50 %, 10 probes, 30 s open.
fn count10() -> CircuitBreaker {
    CircuitBreaker::new(&Breaker {
        window: BreakerWindow::Calls(10),
        min_calls: 5,
        failure_rate: 0.5,
        open_for: secs(30),
        half_open_calls: 10,
        ..Breaker::default()
    })
}

#[test]
fn count_window_four_failures_stay_closed_fifth_opens() {
    let b = count10();
    for i in 0..4 {
        call(&b, i * MS, false, Duration::ZERO);
        assert_eq!(b.state(i * MS), BreakerState::Closed);
    }
    call(&b, 4 * MS, false, Duration::ZERO);
    assert_eq!(
        b.state(4 * MS),
        BreakerState::Open {
            until: 4 * MS + 30 * SEC
        }
    );
}

#[test]
fn open_duration_boundary() {
    let b = count10();
    for _ in 0..5 {
        call(&b, 0, false, Duration::ZERO);
    }
    let until = 30 * SEC;
    let r = b
        .try_acquire(until)
        .expect_err("still open at exactly opened_at + open_for");
    assert_eq!(r.retry_in, Duration::from_nanos(1));
    assert_eq!(
        b.try_acquire(until - SEC).expect_err("open").retry_in,
        secs(1) + Duration::from_nanos(1)
    );
    assert!(
        b.try_acquire(until + MS)
            .expect("1 ms later: half-open")
            .is_probe()
    );
    assert!(r.to_string().contains("open"));
}

#[test]
fn ten_probes_four_failures_then_six_successes_close() {
    let b = count10();
    let t = open_then_half_open_30(&b);
    let permits: Vec<_> = (0..10).map(|_| b.try_acquire(t).expect("probe")).collect();
    assert!(b.try_acquire(t).is_err(), "an 11th probe is refused");
    for (i, p) in permits.into_iter().enumerate() {
        b.record(p, i >= 4, Duration::ZERO, t);
        let want = if i < 9 {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        };
        assert_eq!(b.state(t), want, "after probe {}", i + 1);
    }
}

#[test]
fn ten_probes_five_failures_open_again() {
    let b = count10();
    let t = open_then_half_open_30(&b);
    for i in 0..10 {
        let p = b.try_acquire(t).expect("probe");
        b.record(p, i >= 5, Duration::ZERO, t);
    }
    assert_eq!(
        b.state(t),
        BreakerState::Open {
            until: t + 30 * SEC
        }
    );
}

fn open_then_half_open_30(b: &CircuitBreaker) -> u64 {
    for _ in 0..5 {
        call(b, 0, false, Duration::ZERO);
    }
    30 * SEC + MS
}

#[test]
fn count_window_slides() {
    let b = count10();
    // 6 successes then 4 failures: 40 %, closed.
    for i in 0..10 {
        call(&b, 0, i < 6, Duration::ZERO);
    }
    assert_eq!(b.state(0), BreakerState::Closed);
    assert_eq!(b.snapshot(0).counts.failures, 4);
    // 7 more successes: the 6 old successes and then the oldest failure slide out.
    for _ in 0..7 {
        call(&b, 0, true, Duration::ZERO);
    }
    assert_eq!(b.snapshot(0).counts.failures, 3);
    assert_eq!(b.snapshot(0).counts.calls, 10);
    // Checked against a plain model of "the last 10 outcomes" for a long pseudo-random run.
    let b = count10();
    let mut model = std::collections::VecDeque::new();
    let mut rng = Rng::new(1);
    for step in 0..10_000u64 {
        let ok = rng.next_u64() % 10 < 7;
        call(&b, step, ok, Duration::ZERO);
        model.push_back(ok);
        if model.len() > 10 {
            model.pop_front();
        }
        let failures = model.iter().filter(|ok| !**ok).count();
        if model.len() >= 5 && failures * 2 >= model.len() {
            assert!(
                matches!(b.state(step), BreakerState::Open { .. }),
                "step {step}"
            );
            return;
        }
        assert_eq!(
            b.snapshot(step).counts.failures,
            failures as u64,
            "step {step}"
        );
        assert_eq!(b.state(step), BreakerState::Closed, "step {step}");
    }
    panic!("a 30 % failure rate reaches 50 % over some 10 calls in 10 000 steps");
}

fn time10() -> CircuitBreaker {
    CircuitBreaker::new(&Breaker {
        window: BreakerWindow::Time(secs(10)),
        min_calls: 4,
        failure_rate: 0.5,
        open_for: secs(30),
        half_open_calls: 1,
        ..Breaker::default()
    })
}

#[test]
fn time_window_forgets_old_outcomes() {
    // Two failures at t = 0, two at 9.999 s: all four in the window → open.
    let b = time10();
    for t in [0, 0, 9_999 * MS, 9_999 * MS] {
        call(&b, t, false, Duration::ZERO);
    }
    assert!(matches!(b.state(9_999 * MS), BreakerState::Open { .. }));
    // The same at 10 s: the first bucket has left the window → two calls, below min_calls.
    let b = time10();
    for t in [0, 0, 10 * SEC, 10 * SEC] {
        call(&b, t, false, Duration::ZERO);
    }
    assert_eq!(b.state(10 * SEC), BreakerState::Closed);
    assert_eq!(b.snapshot(10 * SEC).counts.calls, 2);
    assert_eq!(b.snapshot(25 * SEC).counts.calls, 0, "everything expired");
}

#[test]
fn disabled_breaker_admits_everything() {
    let b = CircuitBreaker::new(&Breaker {
        enabled: false,
        min_calls: 1,
        ..Breaker::default()
    });
    for i in 0..100 {
        call(&b, i, false, Duration::ZERO);
    }
    assert_eq!(b.state(100), BreakerState::Closed);
}

#[test]
fn breaker_is_shared_across_threads() {
    let b = count10();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..10_000u64 {
                    if let Ok(p) = b.try_acquire(i) {
                        b.record(p, i % 3 != 0, Duration::ZERO, i);
                    }
                }
            });
        }
    });
    // Interleaving decides whether some 10 consecutive outcomes reached 50 % failures; either
    // way the window never holds more than its 10 calls.
    let snap = b.snapshot(10_000);
    assert!(snap.counts.calls <= 10, "{snap:?}");
    assert_ne!(snap.state, BreakerState::HalfOpen);
}

// ---------------------------------------------------------------------------------------------
// decide()

fn policy() -> Retry {
    Retry {
        jitter: Jitter::None,
        ..Retry::default()
    }
}

fn input(attempt: u32, failure: Failure) -> RetryInput<'static> {
    RetryInput {
        now_wall: wall(NOW_2025),
        ..RetryInput::new(attempt, failure)
    }
}

fn run(input: &RetryInput<'_>, policy: &Retry, budget: &RetryBudget) -> RetryDecision {
    decide(input, policy, budget, &mut Rng::new(7))
}

fn spent_budget() -> RetryBudget {
    let b = RetryBudget::new(10.0, 0.1);
    for _ in 0..5 {
        b.on_failure();
    }
    b
}

#[test]
fn decide_retries_with_backoff_or_server_delay() {
    let (p, budget) = (policy(), RetryBudget::new(10.0, 0.1));
    let d = run(&input(1, Failure::Status(503)), &p, &budget);
    assert_eq!(
        d,
        RetryDecision::Retry {
            after: Duration::from_millis(500),
            reason: RetryReason::Backoff {
                failure: Failure::Status(503)
            }
        }
    );
    assert_eq!(d.code(), "backoff");
    let d = run(
        &input(2, Failure::Timeout(TimeoutKind::FirstByte)),
        &p,
        &budget,
    );
    assert_eq!(d.code(), "backoff");
    assert!(matches!(d, RetryDecision::Retry { after, .. } if after == secs(1)));

    let fields: &[(&str, &[u8])] = &[("retry-after-ms", b"250"), ("retry-after", b"9")];
    let i = RetryInput {
        headers: Headers::new(fields),
        ..input(1, Failure::Status(429))
    };
    assert_eq!(
        run(&i, &p, &budget),
        RetryDecision::Retry {
            after: Duration::from_millis(250),
            reason: RetryReason::ServerDelay {
                failure: Failure::Status(429),
                source: DelaySource::RetryAfterMs
            }
        }
    );
}

#[test]
fn decide_draws_randomness_only_for_backoff() {
    let p = Retry::default(); // full jitter
    let budget = RetryBudget::new(10.0, 0.1);
    let fields: &[(&str, &[u8])] = &[("retry-after", b"1")];
    let i = RetryInput {
        headers: Headers::new(fields),
        ..input(1, Failure::Status(429))
    };
    let mut rng = Rng::new(11);
    let _ = decide(&i, &p, &budget, &mut rng);
    assert_eq!(
        rng.next_u64(),
        Rng::new(11).next_u64(),
        "server delay: rng untouched"
    );
    let mut rng = Rng::new(11);
    let _ = decide(&input(1, Failure::Status(500)), &p, &budget, &mut rng);
    assert_ne!(rng.next_u64(), Rng::new(11).next_u64(), "backoff: rng used");
}

#[test]
fn decide_decorrelated_reads_previous_delay() {
    let p = Retry {
        jitter: Jitter::Decorrelated,
        ..Retry::default()
    };
    let budget = RetryBudget::new(10.0, 0.1);
    for seed in 0..200 {
        let i = RetryInput {
            prev_backoff: secs(2),
            ..input(2, Failure::Status(500))
        };
        match decide(&i, &p, &budget, &mut Rng::new(seed)) {
            RetryDecision::Retry { after, .. } => {
                assert!(after >= p.base && after <= secs(6), "{after:?}")
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn decide_order_each_check_wins_over_the_later_ones() {
    let p = policy();
    let ok_budget = RetryBudget::new(10.0, 0.1);
    let too_long: &[(&str, &[u8])] = &[("retry-after", b"120")];
    let no: &[(&str, &[u8])] = &[("x-should-retry", b"false"), ("retry-after", b"120")];

    // Everything wrong at once: content delivered comes first.
    let worst = RetryInput {
        content_delivered: true,
        headers: Headers::new(no),
        time_left: Some(Duration::ZERO),
        ..input(9, Failure::Status(400))
    };
    let spent = spent_budget();
    assert_eq!(
        run(&worst, &p, &spent),
        RetryDecision::GiveUp(GiveUpReason::ContentDelivered)
    );

    // Then: not retryable (before attempts, budget, delay, deadline).
    let i = RetryInput {
        content_delivered: false,
        ..worst
    };
    assert_eq!(
        run(&i, &p, &spent),
        RetryDecision::GiveUp(GiveUpReason::NotRetryable {
            failure: Failure::Status(400),
            server_said_no: true
        })
    );
    let plain = RetryInput {
        headers: Headers::EMPTY,
        ..i
    };
    assert_eq!(
        run(&plain, &p, &spent),
        RetryDecision::GiveUp(GiveUpReason::NotRetryable {
            failure: Failure::Status(400),
            server_said_no: false
        })
    );

    // Then: attempts (before budget).
    let i = RetryInput {
        failure: Failure::Status(429),
        headers: Headers::new(too_long),
        ..plain
    };
    assert_eq!(
        run(&i, &p, &spent),
        RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted { max: 3 })
    );
    let at_max = RetryInput { attempt: 3, ..i };
    assert_eq!(run(&at_max, &p, &spent).code(), "attempts_exhausted");

    // Then: budget (before the delay's cap).
    let i = RetryInput { attempt: 2, ..i };
    assert_eq!(
        run(&i, &p, &spent),
        RetryDecision::GiveUp(GiveUpReason::RetryBudgetExhausted)
    );

    // Then: the server delay's cap (before the deadline).
    assert_eq!(
        run(&i, &p, &ok_budget),
        RetryDecision::GiveUp(GiveUpReason::ServerDelayTooLong {
            asked: secs(120),
            cap: secs(60)
        })
    );

    // Finally: the deadline.
    let sixty: &[(&str, &[u8])] = &[("retry-after", b"60")];
    let i = RetryInput {
        headers: Headers::new(sixty),
        time_left: Some(secs(60)),
        ..i
    };
    assert_eq!(
        run(&i, &p, &ok_budget),
        RetryDecision::GiveUp(GiveUpReason::DeadlineTooClose {
            after: secs(60),
            left: secs(60)
        })
    );
    // At the cap exactly and 1 ms before the deadline's end: retry.
    let i = RetryInput {
        time_left: Some(secs(60) + Duration::from_millis(1)),
        ..i
    };
    assert!(
        matches!(run(&i, &p, &ok_budget), RetryDecision::Retry { after, .. } if after == secs(60))
    );
}

#[test]
fn decide_server_said_yes_overrides_retry_on() {
    let p = policy();
    let yes: &[(&str, &[u8])] = &[("x-should-retry", b"true")];
    let i = RetryInput {
        headers: Headers::new(yes),
        ..input(1, Failure::Status(400))
    };
    assert_eq!(run(&i, &p, &RetryBudget::new(10.0, 0.1)).code(), "backoff");
}

#[test]
fn decide_huge_server_delay_gives_up() {
    let p = policy();
    let fields: &[(&str, &[u8])] = &[("Retry-After", b"99999999999999999999")];
    let i = RetryInput {
        headers: Headers::new(fields),
        ..input(1, Failure::Status(503))
    };
    match run(&i, &p, &RetryBudget::new(10.0, 0.1)) {
        RetryDecision::GiveUp(GiveUpReason::ServerDelayTooLong { asked, cap }) => {
            assert_eq!(asked, secs(u64::MAX));
            assert_eq!(cap, secs(60));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn decision_codes_and_messages_are_stable() {
    let f = Failure::Status(503);
    let cases: Vec<(GiveUpReason, &str, &str)> = vec![
        (
            GiveUpReason::NotRetryable {
                failure: Failure::Status(400),
                server_said_no: false,
            },
            "not_retryable",
            "retry_on",
        ),
        (
            GiveUpReason::NotRetryable {
                failure: f,
                server_said_no: true,
            },
            "not_retryable",
            "x-should-retry: false",
        ),
        (
            GiveUpReason::AttemptsExhausted { max: 3 },
            "attempts_exhausted",
            "3 attempts",
        ),
        (
            GiveUpReason::ServerDelayTooLong {
                asked: secs(120),
                cap: secs(60),
            },
            "server_delay_too_long",
            "120000 ms",
        ),
        (
            GiveUpReason::DeadlineTooClose {
                after: secs(2),
                left: secs(1),
            },
            "deadline_too_close",
            "1000 ms left",
        ),
        (
            GiveUpReason::RetryBudgetExhausted,
            "retry_budget_exhausted",
            "retry budget",
        ),
        (
            GiveUpReason::ContentDelivered,
            "content_delivered",
            "already reached the caller",
        ),
    ];
    for (r, code, text) in cases {
        assert_eq!(r.code(), code);
        let msg = RetryDecision::GiveUp(r).to_string();
        assert!(msg.contains(text), "{msg:?} lacks {text:?}");
    }
    let retry = RetryDecision::Retry {
        after: Duration::from_millis(1500),
        reason: RetryReason::ServerDelay {
            failure: Failure::Status(429),
            source: DelaySource::RetryAfter,
        },
    };
    assert_eq!(
        retry.to_string(),
        "retry in 1500 ms: HTTP status 429 is retried after the delay the server asked for (Retry-After)"
    );
    assert_eq!(Failure::CutStream.code(), "cut_stream");
    assert_eq!(BreakerState::HalfOpen.code(), "half_open");
}

// ---------------------------------------------------------------------------------------------
// A 401 with another usable key in the pool: a retry decision like any other (issue 16).

#[test]
fn a_401_with_another_key_moves_at_once_through_the_same_checks() {
    let policy = Retry::default();
    let budget = RetryBudget::from_policy(&policy);
    let mut rng = Rng::new(1);
    let input = RetryInput {
        other_key: true,
        ..RetryInput::new(1, Failure::Status(401))
    };
    match decide(&input, &policy, &budget, &mut rng) {
        RetryDecision::Retry { after, reason } => {
            assert_eq!(after, Duration::ZERO);
            assert_eq!(
                reason,
                RetryReason::OtherKey {
                    failure: Failure::Status(401)
                }
            );
            assert_eq!(reason.code(), "other_key");
        }
        other => panic!("{other:?}"),
    }
    // Without another key a 401 is not retried (retry_on does not list it).
    let alone = RetryInput::new(1, Failure::Status(401));
    assert!(matches!(
        decide(&alone, &policy, &budget, &mut rng),
        RetryDecision::GiveUp(GiveUpReason::NotRetryable { .. })
    ));
    // The ordered checks apply to the move too: delivered content, attempts, the retry budget,
    // the deadline.
    let delivered = RetryInput {
        content_delivered: true,
        ..input
    };
    assert_eq!(
        decide(&delivered, &policy, &budget, &mut rng),
        RetryDecision::GiveUp(GiveUpReason::ContentDelivered)
    );
    let last = RetryInput {
        attempt: policy.max_attempts,
        ..input
    };
    assert!(matches!(
        decide(&last, &policy, &budget, &mut rng),
        RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted { .. })
    ));
    let spent = RetryBudget::new(1.0, 0.1);
    for _ in 0..10 {
        spent.on_failure();
    }
    assert_eq!(
        decide(&input, &policy, &spent, &mut rng),
        RetryDecision::GiveUp(GiveUpReason::RetryBudgetExhausted)
    );
    let no_time = RetryInput {
        time_left: Some(Duration::ZERO),
        ..input
    };
    assert!(matches!(
        decide(&no_time, &policy, &budget, &mut rng),
        RetryDecision::GiveUp(GiveUpReason::DeadlineTooClose { .. })
    ));
    // Another failure with a key to spare is an ordinary retry: backoff, not a key move.
    let other = RetryInput {
        other_key: true,
        ..RetryInput::new(1, Failure::Status(503))
    };
    assert!(matches!(
        decide(&other, &policy, &budget, &mut rng),
        RetryDecision::Retry {
            reason: RetryReason::Backoff { .. },
            ..
        }
    ));
}
