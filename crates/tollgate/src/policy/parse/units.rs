//! Small value grammars of the policy file: durations, byte sizes, secret references, URLs.
//!
//! Each parser returns the value or a message that says what to write instead. None of them
//! touches the tree or the error list, so they are easy to test on their own.

use std::path::PathBuf;
use std::time::Duration;

use crate::policy::SecretRef;

/// Longest duration accepted anywhere in a policy: 365 days. Longer values are almost certainly a
/// typo, and keeping them bounded means `Instant + duration` can never overflow in the engine.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const NANOS_PER: [(&str, u128); 5] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Parses `"250ms"`, `"30s"`, `"6m"`, `"1h"`, `"1d"`, compounds such as `"1m30s"`, and decimals
/// such as `"1.5s"`. Zero (`"0s"`) parses; callers that need a positive duration check it.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_strict(text) {
        Ok(d) => Ok(d),
        Err(Strict::Overflow) => Err(format!(
            "is too long; durations are limited to {}",
            format_duration(MAX_DURATION)
        )),
        Err(Strict::Syntax) => {
            let trimmed = text.trim();
            if trimmed.starts_with('-') {
                return Err(
                    "must not be negative; write a positive duration such as \"30s\"".into(),
                );
            }
            if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(format!(
                    "has no unit; write \"{trimmed}s\" for seconds or \"{trimmed}ms\" for \
                     milliseconds (units: ms, s, m, h, d)"
                ));
            }
            match lenient(trimmed) {
                Some(fixed) => Err(format!("is not a duration; write \"{fixed}\"")),
                None => Err(
                    "is not a duration; write a number and a unit such as \"250ms\", \
                             \"30s\", \"5m\", \"1h\", \"1d\" or \"1m30s\""
                        .into(),
                ),
            }
        }
    }
}

enum Strict {
    Syntax,
    Overflow,
}

fn parse_strict(text: &str) -> Result<Duration, Strict> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(Strict::Syntax);
    }
    let mut i = 0;
    let mut total: u128 = 0;
    let mut last_unit = usize::MAX;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &text[start..i];
        let mut frac_part = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let f = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &text[f..i];
            if frac_part.is_empty() {
                return Err(Strict::Syntax);
            }
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(Strict::Syntax);
        }
        let u = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[u..i];
        let Some(idx) = NANOS_PER.iter().position(|(name, _)| *name == unit) else {
            return Err(Strict::Syntax);
        };
        // Units of a compound go from large to small, each at most once: "1h30m", not "30m1h".
        if last_unit != usize::MAX && idx >= last_unit {
            return Err(Strict::Syntax);
        }
        last_unit = idx;
        let per = NANOS_PER[idx].1;
        let whole: u128 = if int_part.is_empty() {
            0
        } else if int_part.len() > 30 {
            return Err(Strict::Overflow);
        } else {
            int_part.parse().map_err(|_| Strict::Syntax)?
        };
        let mut nanos = whole.checked_mul(per).ok_or(Strict::Overflow)?;
        // The fraction, exact to the nanosecond (extra digits are dropped).
        let mut scale = per;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or(Strict::Overflow)?;
        if total > MAX_DURATION.as_nanos() {
            return Err(Strict::Overflow);
        }
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| Strict::Overflow)?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| Strict::Overflow)?;
    Ok(Duration::new(secs, nanos))
}

/// Reads what people write instead ("5 minutes", "5 min", "1 h 30 m") and returns the canonical
/// spelling, for the hint.
fn lenient(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number = &rest[..num_len];
        rest = rest[num_len..].trim_start();
        let word_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let word = rest[..word_len].to_ascii_lowercase();
        rest = rest[word_len..].trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        rest = rest.strip_prefix("and ").unwrap_or(rest).trim_start();
        let unit = match word.as_str() {
            "ms" | "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => "ms",
            "s" | "sec" | "secs" | "second" | "seconds" => "s",
            "m" | "min" | "mins" | "minute" | "minutes" => "m",
            "h" | "hr" | "hrs" | "hour" | "hours" => "h",
            "d" | "day" | "days" => "d",
            _ => return None,
        };
        out.push_str(number);
        out.push_str(unit);
    }
    parse_strict(&out).ok().map(|_| out)
}

/// Formats a duration in the policy syntax, so that `parse_duration(format_duration(d)) == d`.
pub(crate) fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 && nanos == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if nanos == 0 {
        if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
    } else if secs == 0 && nanos.is_multiple_of(1_000_000) {
        out.push_str(&format!("{}ms", nanos / 1_000_000));
    } else {
        let frac = format!("{nanos:09}");
        out.push_str(&format!("{secs}.{}s", frac.trim_end_matches('0')));
    }
    out
}

/// Parses a byte size: `"256MB"`, `"64MiB"`, `"1GB"`, `"512KB"`, `"100B"` (decimal and binary
/// units; a space before the unit is allowed).
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    const HINT: &str = "write a whole number of bytes or a size such as \"256MB\", \"64MiB\", \
                        \"1GB\", \"512KB\" or \"100B\"";
    let t = text.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..num_len], t[num_len..].trim_start());
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(format!("is not a size; {HINT}"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "" => {
            return Err(format!(
                "has no unit; write \"{number}B\" for bytes or \"{number}MB\" for megabytes \
                 (or a plain integer without quotes)"
            ));
        }
        _ => return Err(format!("has an unknown unit; {HINT}")),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') {
        return Err(format!("is not a size; {HINT}"));
    }
    let too_big = || "is too large; the largest size is 16EiB".to_string();
    let whole: u128 = int_part.parse().map_err(|_| too_big())?;
    let mut value = whole.checked_mul(u128::from(mult)).ok_or_else(too_big)?;
    let mut scale = u128::from(mult);
    let mut exact = true;
    for digit in frac_part.bytes() {
        let d = u128::from(digit - b'0');
        if scale % 10 != 0 {
            exact &= d == 0;
            continue;
        }
        scale /= 10;
        value += d * scale;
    }
    if !exact {
        return Err(format!("is not a whole number of bytes; {HINT}"));
    }
    u64::try_from(value).map_err(|_| too_big())
}

/// Formats a byte size exactly, in the largest unit that divides it, binary or decimal: `8MiB`,
/// `256MB`, `125KB`, or `1234 bytes` when none does.
pub(crate) fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 6] = [
        ("GiB", 1 << 30),
        ("GB", 1_000_000_000),
        ("MiB", 1 << 20),
        ("MB", 1_000_000),
        ("KiB", 1 << 10),
        ("KB", 1_000),
    ];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n} bytes")
}

/// Parses `env:NAME` or `file:PATH`. The error never contains the text, which may be a secret
/// written where a reference belongs.
pub(crate) fn parse_secret(text: &str) -> Result<SecretRef, String> {
    const HINT: &str = "write env:NAME or file:PATH; literal secrets are not accepted";
    if let Some(name) = text.strip_prefix("env:") {
        let mut chars = name.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(SecretRef::Env(name.to_owned()))
        } else {
            Err(format!(
                "has an invalid variable name after env: (use letters, digits and _, not \
                 starting with a digit); {HINT}"
            ))
        }
    } else if let Some(path) = text.strip_prefix("file:") {
        if path.trim().is_empty() {
            Err(format!("has an empty path after file:; {HINT}"))
        } else {
            Ok(SecretRef::File(PathBuf::from(path)))
        }
    } else {
        Err(format!("is not a secret reference; {HINT}"))
    }
}

/// Checks an `http://` or `https://` URL with a host and, if given, a port in 1..=65535. The error
/// does not repeat a URL that carries credentials.
pub(crate) fn check_http_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else {
        return Err(format!(
            "must start with http:// or https://, got {}",
            quote(url)
        ));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "must not contain user:password@; literal secrets are not accepted \
                    (put credentials in auth)"
                .into(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("has an unclosed [ in the host: {}", quote(url))),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("has no host, got {}", quote(url)));
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65_535).contains(&n) => {}
            _ => {
                return Err(format!(
                    "has an invalid port {}; use a port from 1 to 65535",
                    quote(p)
                ));
            }
        }
    }
    Ok(())
}

/// Whether a pattern has glob characters.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Quotes user text for a message, cut to a readable length.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{:?}…", cut)
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    #[test]
    fn byte_sizes_are_formatted_exactly() {
        assert_eq!(format_bytes(256_000_000), "256MB");
        assert_eq!(format_bytes(8 * 1024 * 1024), "8MiB");
        assert_eq!(format_bytes(125_000), "125KB");
        assert_eq!(format_bytes(1_024_000), "1000KiB");
        assert_eq!(format_bytes(1 << 30), "1GiB");
        assert_eq!(format_bytes(1234), "1234 bytes");
        assert_eq!(format_bytes(0), "0 bytes");
        for n in [256_000_000u64, 8 << 20, 125_000, 1 << 30] {
            assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("6m"), Ok(ms(360_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1d"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn duration_errors_say_what_to_write() {
        assert!(
            parse_duration("5 minutes")
                .unwrap_err()
                .contains("write \"5m\"")
        );
        assert!(
            parse_duration("5 min")
                .unwrap_err()
                .contains("write \"5m\"")
        );
        assert!(
            parse_duration("1 hour 30 minutes")
                .unwrap_err()
                .contains("write \"1h30m\"")
        );
        assert!(parse_duration("30").unwrap_err().contains("\"30s\""));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.s").is_err());
        assert!(parse_duration("30m1h").is_err());
        assert!(parse_duration("1s1s").is_err());
        assert!(
            parse_duration("5 fortnights")
                .unwrap_err()
                .contains("\"1m30s\"")
        );
        assert!(
            parse_duration("99999999999999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(parse_duration("366d").unwrap_err().contains("too long"));
        assert!(parse_duration("365d").is_ok());
    }

    #[test]
    fn duration_format() {
        assert_eq!(format_duration(ms(250)), "250ms");
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(ms(1_500)), "1.5s");
        assert_eq!(format_duration(ms(86_400_000 + 3_600_000)), "1d1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_micros(500)), "0.0005s");
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(
            secs in 0..=MAX_DURATION.as_secs() - 1,
            nanos in proptest::prop_oneof![
                0..1_000_000_000u32,
                (0..1000u32).prop_map(|m| m * 1_000_000),
            ],
        ) {
            let d = Duration::new(secs, nanos);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parse_then_format_then_parse(text in "([0-9]{1,4}(\\.[0-9]{1,3})?(d|h|m|s|ms)){1,3}") {
            if let Ok(d) = parse_duration(&text) {
                proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            }
        }

        #[test]
        fn duration_parser_never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
            let _ = parse_bytes(&text);
            let _ = parse_secret(&text);
            let _ = check_http_url(&text);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("256MB"), Ok(256_000_000));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("512KB"), Ok(512_000));
        assert_eq!(parse_bytes("100B"), Ok(100));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("64 MiB"), Ok(64 << 20));
        assert!(parse_bytes("1.5B").unwrap_err().contains("whole number"));
        assert!(parse_bytes("256").unwrap_err().contains("no unit"));
        assert!(
            parse_bytes("256 potatoes")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_bytes("99999999999TB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_bytes("MB").is_err());
    }

    #[test]
    fn secrets() {
        assert_eq!(
            parse_secret("env:OPENAI_API_KEY"),
            Ok(SecretRef::Env("OPENAI_API_KEY".into()))
        );
        assert_eq!(
            parse_secret("file:/run/k"),
            Ok(SecretRef::File("/run/k".into()))
        );
        for bad in [
            "sk-live-abcdef",
            "env:",
            "env:1X",
            "env:A-B",
            "file:",
            "ENV:X",
        ] {
            let e = parse_secret(bad).unwrap_err();
            assert!(e.contains("literal secrets are not accepted"), "{e}");
            assert!(!e.contains("sk-live"), "{e}");
        }
    }

    #[test]
    fn urls() {
        assert!(check_http_url("https://api.openai.com/v1").is_ok());
        assert!(check_http_url("http://127.0.0.1:8080/v1").is_ok());
        assert!(check_http_url("http://[::1]:8080").is_ok());
        assert!(
            check_http_url("http://127.0.0.1:0/v1")
                .unwrap_err()
                .contains("port")
        );
        assert!(check_http_url("ftp://x").unwrap_err().contains("http://"));
        assert!(
            check_http_url("https:///v1")
                .unwrap_err()
                .contains("no host")
        );
        let e = check_http_url("https://user:hunter2@host/").unwrap_err();
        assert!(!e.contains("hunter2"));
    }
}
