//! RFC 3339 times in UTC: the one place that turns a `SystemTime` into text
//! or a TOML date-time into a `SystemTime`. The calendar arithmetic is
//! `jiff`'s.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// `2026-12-31T18:00:00Z`: whole seconds, sub-second digits only when
/// present (as few as needed). Times before 1970 count back.
pub fn format(time: SystemTime) -> String {
    timestamp(time).to_string()
}

/// `2026-11-29T10:00:00.123Z`: always milliseconds (truncated), for logs,
/// flows and the status API. Times before 1970 show as 1970.
pub fn format_millis(time: SystemTime) -> String {
    format!("{:.3}", timestamp(time.max(UNIX_EPOCH)))
}

/// A `SystemTime` outside jiff's range (years -9999..=9999) is clamped to
/// it: no policy or clock gets there, and formatting must not fail.
fn timestamp(time: SystemTime) -> Timestamp {
    Timestamp::try_from(time).unwrap_or(if time < UNIX_EPOCH {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// The instant of a TOML date-time that has a date, a time and an offset;
/// `None` when a part is missing or out of range. TOML allows a leap second
/// (`:60`); it is the first second of the next minute, as POSIX time counts.
pub fn from_toml(dt: &toml_edit::Datetime) -> Option<SystemTime> {
    let (date, time, offset) = (dt.date?, dt.time?, dt.offset?);
    let offset_seconds = match offset {
        toml_edit::Offset::Z => 0,
        toml_edit::Offset::Custom { minutes } => i32::from(minutes) * 60,
    };
    let leap = time.second == 60;
    let civil = DateTime::new(
        i16::try_from(date.year).ok()?,
        i8::try_from(date.month).ok()?,
        i8::try_from(date.day).ok()?,
        i8::try_from(time.hour).ok()?,
        i8::try_from(time.minute).ok()?,
        i8::try_from(if leap { 59 } else { time.second }).ok()?,
        i32::try_from(time.nanosecond).ok()?,
    )
    .ok()?;
    let mut instant = Offset::from_seconds(offset_seconds)
        .ok()?
        .to_timestamp(civil)
        .ok()?;
    if leap {
        instant = instant
            .checked_add(jiff::SignedDuration::from_secs(1))
            .ok()?;
    }
    SystemTime::try_from(instant).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_740_000);
        assert_eq!(format(t), "2026-12-31T18:00:00Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 500_000_000);
        assert_eq!(format(t), "2000-02-29T00:00:00.5Z");
        let t = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format(t), "1969-12-31T23:59:59Z");
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(format(t), "1969-12-31T23:59:58.5Z");
    }

    #[test]
    fn formats_milliseconds() {
        assert_eq!(format_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_946_400_123);
        assert_eq!(format_millis(t), "2026-11-29T10:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_nanos(1_795_946_400_123_999_999);
        assert_eq!(format_millis(t), "2026-11-29T10:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_millis(leap), "2000-02-29T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_millis(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn converts_toml_date_times() {
        let at = |s: &str| from_toml(&s.parse().unwrap());
        let t = at("2026-12-31T18:00:00Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_798_740_000));
        assert_eq!(at("2026-12-31T20:00:00+02:00"), Some(t));
        assert_eq!(at("2026-12-31T17:59:60Z"), Some(t));
        assert_eq!(
            at("2026-12-31T18:00:00.25Z"),
            Some(t + Duration::from_millis(250))
        );
        assert_eq!(
            at("1969-12-31T23:59:59Z"),
            UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
        assert_eq!(at("2026-12-31T18:00:00"), None);
        assert_eq!(at("2026-12-31"), None);
        assert_eq!(at("18:00:00"), None);
    }
}
