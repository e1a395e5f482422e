//! Durations (`--delay 30s`) and points in time (`--to @2024-05-01T12:00:00Z`) as people
//! type them. Small on purpose: a handful of units and RFC 3339, no dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest delay the server accepts (12 h), in ms: the bound of a nack's `delay_ms`,
/// and of a message's `not_before_ms` ahead of now (the same in `surety_broker::limits`).
pub const MAX_DELAY_MS: u64 = surety_broker::limits::MAX_NACK_DELAY_MS;
const _: () = assert!(MAX_DELAY_MS == surety_broker::limits::MAX_NOT_BEFORE_AHEAD_MS);

/// `1500ms`, `30s`, `5m`, `2h`, `1d`, or a sum of them without spaces: `1m30s`. A bare
/// number has no unit and is refused (is `5` seconds or ms?).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "{s:?} is not a duration: use a number and a unit, like 1500ms, 30s, 5m, 2h or 1m30s"
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms_per = match &rest[..unit_len] {
            "ms" => 1,
            "s" | "sec" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(ms_per)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    Ok(Duration::from_millis(total))
}

/// A delay within the server's bound, or a line that names the bound.
pub fn check_delay(flag: &str, given: &str, d: Duration) -> Result<u64, String> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms > MAX_DELAY_MS {
        Err(format!(
            "{flag} {given} is longer than the longest delay the server accepts, \
             12h ({MAX_DELAY_MS} ms)"
        ))
    } else {
        Ok(ms)
    }
}

/// A duration for people: `1500ms`, `30s`, `2m30s`, `12h`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, secs) in [("h", 3600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out.push_str(&format!("{}{unit}", s / secs));
            s %= secs;
        }
    }
    out
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch: a number (`1714564800000`), or RFC 3339
/// (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`; a space may replace `T`).
pub fn parse_timestamp_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s:?} is too large for a timestamp in ms"));
    }
    rfc3339_ms(s).ok_or_else(|| {
        format!(
            "{s:?} is not a timestamp: give ms since the Unix epoch (1714564800000) \
             or RFC 3339 (2024-05-01T12:00:00Z)"
        )
    })
}

fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        let frac = &s[start..i.min(start + 3)];
        millis = format!("{frac:0<3}").parse::<i64>().ok()?;
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(&tz[..1], "+" | "-") && &tz[3..4] == ":" => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if &tz[..1] == "-" { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s: &str| parse_duration(s).map(|d| d.as_millis() as u64);
        assert_eq!(ms("1500ms"), Ok(1500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("12h"), Ok(MAX_DELAY_MS));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms("1d"), Ok(86_400_000));
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "1.5s",
            "-1s",
            "5 s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("5").unwrap_err().contains("30s"));
    }

    #[test]
    fn delay_bound_is_named() {
        assert_eq!(
            check_delay("--delay", "12h", parse_duration("12h").unwrap()),
            Ok(MAX_DELAY_MS)
        );
        let e = check_delay("--delay", "13h", parse_duration("13h").unwrap()).unwrap_err();
        assert_eq!(
            e,
            "--delay 13h is longer than the longest delay the server accepts, 12h (43200000 ms)"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_secs(150)), "2m30s");
        assert_eq!(human(Duration::from_secs(43_200)), "12h");
        assert_eq!(human(Duration::ZERO), "0s");
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1714564800000"), Ok(1_714_564_800_000));
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_timestamp_ms("2024-05-01T12:00:00Z"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(
            parse_timestamp_ms("2024-05-01T14:00:00.25+02:00"),
            Ok(1_714_564_800_250)
        );
        assert_eq!(
            parse_timestamp_ms("2024-02-29 00:00:00.123456-00:30"),
            Ok(1_709_166_600_123)
        );
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_timestamp_ms(bad).is_err(), "{bad}");
        }
    }
}
