//! Clocks and time formatting: epoch milliseconds (the store's time format) and RFC 3339.

/// Milliseconds since the Unix epoch: the store's time format.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC, millisecond precision) for epoch milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            let t = t
                .replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000)
                .ok()?;
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The first and last epoch milliseconds [`rfc3339`] can format: 0000-01-01T00:00:00.000Z and
/// 9999-12-31T23:59:59.999Z (RFC 3339 has four-digit years).
pub const RFC3339_MIN_MS: i64 = -62_167_219_200_000;
pub const RFC3339_MAX_MS: i64 = 253_402_300_799_999;

/// Parses RFC 3339 into epoch milliseconds (sub-millisecond digits round down). An offset can
/// carry a time written in year 0000 or 9999 out of RFC 3339's range once in UTC
/// (`9999-12-31T23:59:59-01:00`): that is `None`, so every parsed instant formats again.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()?;
    (RFC3339_MIN_MS..=RFC3339_MAX_MS)
        .contains(&ms)
        .then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let ms = 1_763_812_345_678;
        let s = rfc3339(ms);
        assert_eq!(s, "2025-11-22T11:52:25.678Z");
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(
            parse_rfc3339("2025-11-22T12:52:25+01:00"),
            Some(1_763_812_345_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn rfc3339_refuses_instants_it_cannot_format() {
        // Found by fuzzing: in range as written, year 10000 (or -1) in UTC.
        assert_eq!(parse_rfc3339("9999-12-31T23:59:30-23:50"), None);
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00+00:01"), None);
        for ms in [RFC3339_MIN_MS, RFC3339_MAX_MS, -1, 0] {
            let s = rfc3339(ms);
            assert!(!s.is_empty(), "{ms}");
            assert_eq!(parse_rfc3339(&s), Some(ms), "{s}");
        }
        assert_eq!(rfc3339(RFC3339_MAX_MS + 1), "");
        assert_eq!(rfc3339(RFC3339_MIN_MS - 1), "");
        // Sub-millisecond digits round down, before the epoch too.
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.9995Z"), Some(-1));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.0005Z"), Some(0));
    }
}
