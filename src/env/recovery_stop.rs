//! Where a restored server says its recovery stopped, read from its log at
//! the environment's edge: PostgreSQL's own notion of the recovery target,
//! which the drill holds against the target it gave and the client's
//! ledger (see [`crate::verify::target_stop`]).

use chrono::{DateTime, FixedOffset};

/// PostgreSQL's log lines at the end of a recovery, as far as they say
/// where it stopped. Times are printed in the server's `timezone`, with
/// its offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStop {
    /// "last completed transaction was at log time T": the commit time of
    /// the last transaction replayed.
    pub last_replayed: Option<DateTime<FixedOffset>>,
    /// "recovery stopping before commit of transaction X, time T": the
    /// commit (or abort) time of the first transaction not replayed.
    pub stopped_before: Option<DateTime<FixedOffset>>,
}

impl RecoveryStop {
    /// Reads the last recovery's stop from a server's `log` (the last of
    /// each line, as a restore in place may hold an earlier recovery's).
    pub fn from_server_log(log: &str) -> RecoveryStop {
        let mut stop = RecoveryStop::default();
        for line in log.lines() {
            if let Some(at) = after(line, "last completed transaction was at log time ") {
                stop.last_replayed = parse_time(at);
            } else if let Some(rest) = after(line, "recovery stopping before ") {
                // "commit of transaction 1234, time 2026-..." or "abort of ...".
                stop.stopped_before = after(rest, ", time ").and_then(parse_time);
            }
        }
        stop
    }
}

/// What follows `marker` in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// PostgreSQL's `timestamptz_to_str`: `2026-12-05 06:08:18.709282+11`,
/// the offset as `+HH`, `+HH:MM` or `+HH:MM:SS`.
fn parse_time(text: &str) -> Option<DateTime<FixedOffset>> {
    let text = text.trim();
    let offset_at = text.rfind(['+', '-'])?;
    let (local, offset) = text.split_at(offset_at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':').map(|p| p.parse::<i32>().ok());
    let hours = parts.next()??;
    let minutes = parts.next().flatten().unwrap_or(0);
    let seconds = parts.next().flatten().unwrap_or(0);
    let offset = FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60 + seconds))?;
    let naive = chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    naive.and_local_timezone(offset).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_recoverys_stop_in_any_offset() {
        let log = "\
2026-12-05 19:00:00.000 UTC [1] LOG:  last completed transaction was at log time 2026-12-05 18:00:00+00
2026-12-05 19:08:20.100 +11 [7] LOG:  recovery stopping before commit of transaction 1234, time 2026-12-06 06:08:18.71+11
2026-12-05 19:08:20.100 +11 [7] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s
2026-12-05 19:08:20.100 +11 [7] LOG:  last completed transaction was at log time 2026-12-06 00:53:18.709282+05:45
";
        let stop = RecoveryStop::from_server_log(log);
        let utc = |s: &str| s.parse::<DateTime<chrono::Utc>>().unwrap();
        assert_eq!(
            stop.last_replayed.unwrap(),
            utc("2026-12-05T19:08:18.709282Z")
        );
        assert_eq!(stop.stopped_before.unwrap(), utc("2026-12-05T19:08:18.71Z"));
        // Newfoundland's half hour west, and seconds in an old offset.
        assert_eq!(
            parse_time("2026-12-05 15:38:18.5-03:30").unwrap(),
            utc("2026-12-05T19:08:18.5Z")
        );
        assert_eq!(
            parse_time("1900-01-01 00:00:00+00:53:28").unwrap(),
            utc("1899-12-31T23:06:32Z")
        );
        assert_eq!(
            RecoveryStop::from_server_log("LOG: other"),
            RecoveryStop::default()
        );
        assert_eq!(parse_time("not a time"), None);
    }
}
