//! Times in a policy (`until`): RFC 3339 with an offset, as a string or a
//! TOML date-time. The calendar is `crate::rfc3339`'s.

use std::time::SystemTime;

use toml_edit::{Item, Value};

/// An RFC 3339 date-time with an offset.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    s.parse::<toml_edit::Datetime>()
        .ok()
        .and_then(|dt| crate::rfc3339::from_toml(&dt))
        .ok_or_else(|| {
            format!("invalid time `{s}`: write an RFC 3339 time with its offset, e.g. \"2026-12-31T18:00:00Z\"")
        })
}

/// The instant of an `until` value: an RFC 3339 string, or a TOML
/// date-time with a date, a time and an offset.
pub(crate) fn until_time(item: &Item) -> Result<SystemTime, String> {
    match item {
        Item::Value(Value::String(s)) => parse_rfc3339(s.value()),
        Item::Value(Value::Datetime(d)) => datetime_to_system(d.value()),
        _ => Err("`until` must be an RFC 3339 time string, e.g. \"2026-12-31T18:00:00Z\"".into()),
    }
}

fn datetime_to_system(dt: &toml_edit::Datetime) -> Result<SystemTime, String> {
    crate::rfc3339::from_toml(dt).ok_or_else(|| {
        format!(
            "`until` needs a full date, time and offset, e.g. \"2026-12-31T18:00:00Z\" (got `{dt}`)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_convert_to_unix_time() {
        let t = parse_rfc3339("2026-12-31T18:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_798_740_000
        );
        let t2 = parse_rfc3339("2026-12-31T20:00:00+02:00").unwrap();
        assert_eq!(t, t2);
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z").unwrap(),
            SystemTime::UNIX_EPOCH
        );
        for bad in [
            "2026-12-31",
            "18:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-12-31T18:00:00",
            "soon",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} accepted");
        }
    }
}
