//! The server's time zone, and recovery targets written in it as an
//! operator writes them: the server's local time with its UTC offset, as
//! psql prints a `timestamptz` (`2026-12-05 13:23:26.123456+05:30`). A
//! zone is an IANA name (read from the system's zoneinfo, as Debian's
//! PostgreSQL reads it) or a POSIX rule, which lets a drill put a
//! daylight-saving transition inside its own run.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

/// A time zone the server runs in (its `timezone` setting).
#[derive(Debug, Clone)]
pub struct ServerZone {
    setting: String,
    zone: tz::TimeZone,
}

impl PartialEq for ServerZone {
    fn eq(&self, other: &ServerZone) -> bool {
        self.setting == other.setting
    }
}

impl ServerZone {
    /// The zone PostgreSQL's `timezone = 'SETTING'` names: an IANA name or
    /// a POSIX rule. The error says why it cannot be used.
    pub fn new(setting: &str) -> Result<ServerZone, String> {
        let zone = tz::TimeZone::from_posix_tz(setting)
            .map_err(|e| format!("time zone {setting:?} is neither a zone in the system's zoneinfo nor a POSIX rule: {e}"))?;
        Ok(ServerZone {
            setting: setting.to_string(),
            zone,
        })
    }

    /// UTC, which needs no zoneinfo.
    pub fn utc() -> ServerZone {
        ServerZone {
            setting: "UTC".into(),
            zone: tz::TimeZone::utc(),
        }
    }

    /// What the server's `timezone` is set to.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// The zone's offset from UTC at `t`, in seconds east.
    pub fn offset_at(&self, t: DateTime<Utc>) -> i32 {
        self.zone
            .find_local_time_type(t.timestamp())
            .map_or(0, |l| l.ut_offset())
    }

    /// `t` as psql shows a `timestamptz` in this zone: local date and time
    /// with microseconds, then the offset (`+02`, `+05:30`, `-03:30`).
    pub fn format(&self, t: DateTime<Utc>) -> String {
        let offset = self.offset_at(t);
        let local = t.naive_utc() + Duration::seconds(offset.into());
        let (sign, abs) = if offset < 0 {
            ('-', -offset)
        } else {
            ('+', offset)
        };
        let (hours, minutes) = (abs / 3600, abs % 3600 / 60);
        let offset = match minutes {
            0 => format!("{sign}{hours:02}"),
            m => format!("{sign}{hours:02}:{m:02}"),
        };
        format!("{}{offset}", local.format("%Y-%m-%d %H:%M:%S%.6f"))
    }
}

/// A zone with a daylight-saving transition at `at`: standard time
/// UTC-03:30 before it, UTC-02:30 after, as a POSIX rule PostgreSQL and
/// this module read alike (`<-0330>3:30<-0230>2:30,START,END`: the start
/// day zero-based, leap days counted, at local standard time; the end
/// half a year later).
pub fn dst_starting_at(at: DateTime<Utc>) -> String {
    let standard = at - Duration::minutes(3 * 60 + 30);
    let end = standard + Duration::days(182) + Duration::hours(1);
    let rule = |t: DateTime<Utc>| {
        use chrono::{Datelike, Timelike};
        format!(
            "{}/{}:{:02}:{:02}",
            t.ordinal0(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    format!("<-0330>3:30<-0230>2:30,{},{}", rule(standard), rule(end))
}

/// A recovery target: the instant, and the zone it is written in.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTime {
    pub instant: DateTime<Utc>,
    pub zone: Arc<ServerZone>,
}

impl TargetTime {
    /// `--recovery-target-time`'s value: [`ServerZone::format`].
    pub fn arg(&self) -> String {
        self.zone.format(self.instant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn targets_are_written_in_local_time_with_the_offset_psql_shows() {
        let t = utc("2026-12-05T07:53:26.123456Z");
        for (zone, expected) in [
            ("UTC", "2026-12-05 07:53:26.123456+00"),
            ("Asia/Kolkata", "2026-12-05 13:23:26.123456+05:30"),
            ("Asia/Kathmandu", "2026-12-05 13:38:26.123456+05:45"),
            ("America/St_Johns", "2026-12-05 04:23:26.123456-03:30"),
            ("Europe/Berlin", "2026-12-05 08:53:26.123456+01"),
            ("Australia/Lord_Howe", "2026-12-05 18:53:26.123456+11"),
        ] {
            let z = ServerZone::new(zone).unwrap();
            assert_eq!(z.format(t), expected, "{zone}");
            assert_eq!(
                crate::backup::timestamp::parse(&z.format(t)),
                Ok(t),
                "{zone}: the tool reads back the instant"
            );
        }
        // Summer in Berlin.
        let z = ServerZone::new("Europe/Berlin").unwrap();
        assert_eq!(
            z.format(utc("2026-07-01T12:00:00Z")),
            "2026-07-01 14:00:00.000000+02"
        );
        assert!(ServerZone::new("Mars/Olympus_Mons").is_err());
    }

    #[test]
    fn a_synthetic_transition_falls_exactly_where_asked() {
        for at in [
            "2026-12-05T10:15:00Z",
            "2028-02-29T23:59:00Z",
            "2026-12-31T01:00:00Z",
        ] {
            let at = utc(at);
            let rule = dst_starting_at(at);
            let z = ServerZone::new(&rule).unwrap();
            assert_eq!(
                z.offset_at(at - Duration::seconds(1)),
                -3 * 3600 - 1800,
                "{rule}"
            );
            assert_eq!(z.offset_at(at), -2 * 3600 - 1800, "{rule}");
            assert_eq!(
                z.offset_at(at + Duration::days(30)),
                -2 * 3600 - 1800,
                "{rule}"
            );
        }
    }
}
