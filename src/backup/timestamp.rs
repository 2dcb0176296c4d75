//! Times given to the tool (`backup-fetch --recovery-target-time`,
//! `delete before`): always with a UTC offset. A time without one means
//! "the server's time zone" to PostgreSQL and "my own" to an operator who
//! copied it from psql; taking it as UTC restored to the wrong moment, so
//! it is refused, naming the forms that are accepted.

use chrono::{DateTime, NaiveDateTime, Utc};

/// The accepted forms, for messages.
pub const ACCEPTED: &str = "'2026-12-05 07:53:26+02:00', '2026-12-05 07:53:26.5+05:30', '2026-12-05 07:53:26-03:30', '2026-12-05 07:53:26+02' (as psql prints it) or '2026-12-05T07:53:26Z'";

/// Why a time was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimestampError {
    /// A date and time without an offset.
    #[error("{given:?} has no UTC offset: PostgreSQL would read it in the server's time zone, which may not be yours (or UTC); add the offset, e.g. '{given}+02:00' or '{given}Z' (accepted: {ACCEPTED})")]
    NoOffset { given: String },
    /// Not a time at all.
    #[error("{given:?} is not a time (accepted: {ACCEPTED})")]
    NotATime { given: String },
}

/// Parses a time with an explicit offset: RFC 3339 (`T` or a space between
/// date and time, `Z` or `+HH:MM`) or PostgreSQL's output form
/// (`+HH`, `+HHMM`, `+HH:MM`), fractions of a second allowed.
pub fn parse(given: &str) -> Result<DateTime<Utc>, TimestampError> {
    let s = given.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .any(|fmt| NaiveDateTime::parse_from_str(s, fmt).is_ok())
        || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok();
    Err(match naive {
        true => TimestampError::NoOffset {
            given: s.to_string(),
        },
        false => TimestampError::NotATime {
            given: s.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_an_offset_are_read_in_every_accepted_form() {
        let utc = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        for (given, expected) in [
            ("2026-12-05 07:53:26+02:00", "2026-12-05T05:53:26Z"),
            ("2026-12-05 07:53:26+02", "2026-12-05T05:53:26Z"),
            ("2026-12-05 07:53:26+0200", "2026-12-05T05:53:26Z"),
            ("2026-12-05T07:53:26Z", "2026-12-05T07:53:26Z"),
            ("2026-12-05 07:53:26Z", "2026-12-05T07:53:26Z"),
            ("2026-12-05 07:53:26.25+05:30", "2026-12-05T02:23:26.25Z"),
            ("2026-12-05 07:53:26-03:30", "2026-12-05T11:23:26Z"),
            ("2026-12-05 07:53:26+05:45", "2026-12-05T02:08:26Z"),
            (
                "  2026-12-05T07:53:26.123456-00:00 ",
                "2026-12-05T07:53:26.123456Z",
            ),
        ] {
            assert_eq!(parse(given), Ok(utc(expected)), "{given:?}");
        }
    }

    #[test]
    fn a_time_without_an_offset_is_refused_naming_the_accepted_forms() {
        for given in [
            "2026-12-05 07:53:26",
            "2026-12-05T07:53:26.5",
            "2026-12-05 07:53",
            "2026-12-05",
        ] {
            let err = parse(given).unwrap_err();
            assert_eq!(
                err,
                TimestampError::NoOffset {
                    given: given.into()
                }
            );
            let text = err.to_string();
            assert!(
                text.contains("no UTC offset") && text.contains("+02:00") && text.contains("Z'"),
                "{text}"
            );
        }
        assert!(matches!(
            parse("yesterday"),
            Err(TimestampError::NotATime { .. })
        ));
        assert!(matches!(
            parse("base_000000010000000000000002"),
            Err(TimestampError::NotATime { .. })
        ));
    }
}
