//! `backup-check`: what a backup monitor needs, as one Nagios-style line
//! and exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN when the check
//! cannot run), or `--json` metrics.
//!
//! - The newest complete backup by `finish_time` (not the first row of
//!   `backup-list --json`, which is the oldest) must be younger than
//!   `--max-age`; no backup at all is CRITICAL.
//! - The WAL from that backup's start segment to the newest stored segment
//!   (at least to the backup's end) must be continuous: a lost segment is
//!   CRITICAL (no restore gets past it), one not archived yet a WARNING
//!   (see [`super::walverify`] for the classification); fewer segments than
//!   `--min-wal` is a WARNING.
//! - Archive lag: with a reachable cluster, 0 when every finished segment
//!   is stored, else the time since the archiver's last success; without
//!   one, the time since the newest segment was stored (an idle cluster
//!   makes that grow: only set `--max-archive-lag` then with
//!   `archive_timeout`). Above `--max-archive-lag` is CRITICAL; an
//!   archiver whose last attempt failed is a WARNING.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use tracing::info;

use super::catalog::{self, ListedBackup};
use super::layout::{self, Segment};
use super::walverify::{count, probe_cluster, CheckError, Cluster, SegmentStatus, Survey};
use super::{exit, BackupError, Context};

/// Thresholds, from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_age: Duration,
    /// WARNING below this many stored segments since the newest backup.
    pub min_wal: u64,
    /// CRITICAL above this archive lag; unchecked when `None`.
    pub max_archive_lag: Option<Duration>,
}

/// The Nagios states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Level::Ok => exit::OK,
            Level::Warning => exit::NAGIOS_WARNING,
            Level::Critical => exit::NAGIOS_CRITICAL,
        }
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where the archive lag was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagSource {
    /// The cluster's `pg_stat_archiver` and current segment.
    Archiver,
    /// The newest stored segment's time (no cluster reachable).
    Storage,
}

/// What the check measured; the JSON metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    /// Where the archive is, for messages.
    #[serde(skip)]
    pub store: String,
    /// Complete backups.
    pub backups: usize,
    pub newest_backup: Option<String>,
    pub newest_backup_age_seconds: Option<u64>,
    /// Stored segments from the newest backup's start on.
    pub wal_segments_found: u64,
    /// Missing segments since the newest backup that were provably archived.
    pub wal_segments_lost: u64,
    /// Missing segments since the newest backup not archived yet.
    pub wal_segments_pending: u64,
    /// The first missing range, `START..END`.
    #[serde(skip)]
    pub first_gap: Option<String>,
    pub archive_lag_seconds: Option<u64>,
    #[serde(skip)]
    pub lag_source: LagSource,
    /// The archiver's last attempt failed (needs a reachable cluster).
    pub archiver_failing: bool,
    /// `pg_stat_archiver.failed_count` (since the statistics were reset).
    pub archiver_failed_count: Option<i64>,
}

/// The check's result: `{"status", "exit_code", "message", ...metrics}`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Level,
    pub exit_code: i32,
    pub message: String,
    #[serde(flatten)]
    pub facts: Facts,
}

fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Judges `facts` against `limits`: the worst level and one line naming
/// every measurement, with the limit each one exceeds.
pub fn evaluate(facts: &Facts, limits: &Limits) -> (Level, String) {
    let mut level = Level::Ok;
    let mut clauses = Vec::new();
    let mut note = |l: Level, clause: String| {
        level = level.max(l);
        clauses.push(clause);
    };
    match (&facts.newest_backup, facts.newest_backup_age_seconds) {
        (Some(name), Some(age)) => {
            if age > limits.max_age.as_secs() {
                note(
                    Level::Critical,
                    format!(
                        "newest backup {name} is {} old (over --max-age {})",
                        human(age),
                        humantime::format_duration(limits.max_age)
                    ),
                );
            } else {
                note(
                    Level::Ok,
                    format!("newest backup {name} is {} old", human(age)),
                );
            }
            let found = facts.wal_segments_found;
            let gap = facts.first_gap.as_deref().unwrap_or("?");
            if facts.wal_segments_lost > 0 {
                note(
                    Level::Critical,
                    format!(
                        "{} LOST since it (first gap {gap}; no restore gets past it: take a new backup), {found} stored",
                        count(facts.wal_segments_lost, "WAL segment")
                    ),
                );
            } else if facts.wal_segments_pending > 0 {
                note(
                    Level::Warning,
                    format!(
                        "{} since it not archived yet (first {gap}), {found} stored",
                        count(facts.wal_segments_pending, "WAL segment")
                    ),
                );
            } else if found < limits.min_wal {
                note(
                    Level::Warning,
                    format!(
                        "only {} since it (under --min-wal {})",
                        count(found, "WAL segment"),
                        limits.min_wal
                    ),
                );
            } else {
                note(
                    Level::Ok,
                    format!("{} continuous since it", count(found, "WAL segment")),
                );
            }
        }
        _ => note(
            Level::Critical,
            format!("no complete backup in {}", facts.store),
        ),
    }
    let lag = |secs| match facts.lag_source {
        LagSource::Archiver => format!("archiver lag {}", human(secs)),
        LagSource::Storage => format!(
            "newest WAL segment stored {} ago (cluster not reachable)",
            human(secs)
        ),
    };
    match (facts.archive_lag_seconds, limits.max_archive_lag) {
        (Some(secs), Some(max)) if secs > max.as_secs() => note(
            Level::Critical,
            format!(
                "{} (over --max-archive-lag {})",
                lag(secs),
                humantime::format_duration(max)
            ),
        ),
        (Some(secs), _) => note(Level::Ok, lag(secs)),
        (None, Some(_)) => note(Level::Critical, "nothing archived yet".into()),
        (None, None) => note(Level::Ok, "nothing archived yet".into()),
    }
    if facts.archiver_failing {
        note(
            Level::Warning,
            format!(
                "archive_command is failing ({} failures; see the server log)",
                facts.archiver_failed_count.unwrap_or(0)
            ),
        );
    }
    (level, format!("{}: {}", level.as_str(), clauses.join(", ")))
}

/// Measures and judges: the verb `backup-check`.
pub async fn backup_check(ctx: &Context, limits: &Limits) -> Result<Outcome, CheckError> {
    let cluster = probe_cluster(ctx)
        .await?
        .map_err(|reason| info!("cluster not reachable ({reason}): archive lag from storage"))
        .ok();
    let backups = catalog::list_backups(ctx).await?;
    let survey = Survey::load(ctx, cluster.as_ref(), &backups).await?;
    let now = Utc::now();
    let newest = backups.iter().max_by(|a, b| {
        (a.summary.finish_time, &a.summary.backup_name)
            .cmp(&(b.summary.finish_time, &b.summary.backup_name))
    });
    let (archive_lag_seconds, lag_source) = archive_lag(cluster.as_ref(), &survey, now);
    let mut facts = Facts {
        store: ctx.store.describe(),
        backups: backups.len(),
        newest_backup: newest.map(|b| b.summary.backup_name.clone()),
        newest_backup_age_seconds: newest.map(|b| seconds_since(b.summary.finish_time, now)),
        wal_segments_found: 0,
        wal_segments_lost: 0,
        wal_segments_pending: 0,
        first_gap: None,
        archive_lag_seconds,
        lag_source,
        archiver_failing: cluster.as_ref().is_some_and(|c| c.archiver.failing()),
        archiver_failed_count: cluster.as_ref().map(|c| c.archiver.failed_count),
    };
    if let Some(newest) = newest {
        count_wal_since(&mut facts, &survey, newest)?;
    }
    let (level, message) = evaluate(&facts, limits);
    Ok(Outcome {
        status: level,
        exit_code: level.exit_code(),
        message,
        facts,
    })
}

fn seconds_since(t: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - t).num_seconds()).unwrap_or(0)
}

/// Fills the WAL counts from `backup`'s start segment to the newest stored
/// segment (at least to the backup's end).
fn count_wal_since(
    facts: &mut Facts,
    survey: &Survey,
    backup: &ListedBackup,
) -> Result<(), CheckError> {
    let s = &backup.summary;
    let parse = |name: &str| {
        Segment::parse(name, survey.seg_size).ok_or_else(|| BackupError::Corrupt {
            key: layout::sentinel_key(&s.backup_name),
            detail: format!("{name:?} is not a WAL segment name"),
        })
    };
    let start = parse(&s.wal_file_name)?;
    let finish = parse(&s.finish_wal_file_name)?;
    let last = survey.newest.map_or(0, |(n, _)| n.segno).max(finish.segno);
    for r in survey.scan(start.segno, last)? {
        let counter = match r.status {
            SegmentStatus::Found => &mut facts.wal_segments_found,
            SegmentStatus::MissingLost => &mut facts.wal_segments_lost,
            SegmentStatus::MissingDelayed | SegmentStatus::MissingUploading => {
                &mut facts.wal_segments_pending
            }
        };
        *counter += r.segments_count;
        if r.status != SegmentStatus::Found && facts.first_gap.is_none() {
            facts.first_gap = Some(format!("{}..{}", r.start_segment, r.end_segment));
        }
    }
    Ok(())
}

/// See the module doc.
fn archive_lag(
    cluster: Option<&Cluster>,
    survey: &Survey,
    now: DateTime<Utc>,
) -> (Option<u64>, LagSource) {
    let stored = survey.newest.map(|(s, t)| (s.segno, t));
    match cluster.and_then(|c| Some((c, c.current?))) {
        Some((c, current)) => {
            let finished = current.segno.saturating_sub(1);
            let lag = if stored.is_some_and(|(segno, _)| segno >= finished) {
                Some(0)
            } else {
                c.archiver
                    .last_archived_time
                    .or(stored.map(|(_, t)| t))
                    .map(|t| seconds_since(t, now))
            };
            (lag, LagSource::Archiver)
        }
        None => (
            stored.map(|(_, t)| seconds_since(t, now)),
            LagSource::Storage,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::walverify::tests::survey;
    use crate::backup::walverify::{Archiver, TimelinePath};

    fn limits() -> Limits {
        Limits {
            max_age: Duration::from_secs(24 * 3600),
            min_wal: 0,
            max_archive_lag: Some(Duration::from_secs(300)),
        }
    }

    fn healthy() -> Facts {
        Facts {
            store: "s3://b/p".into(),
            backups: 2,
            newest_backup: Some("base_000000010000000000000010".into()),
            newest_backup_age_seconds: Some(3 * 3600),
            wal_segments_found: 142,
            wal_segments_lost: 0,
            wal_segments_pending: 0,
            first_gap: None,
            archive_lag_seconds: Some(4),
            lag_source: LagSource::Archiver,
            archiver_failing: false,
            archiver_failed_count: Some(0),
        }
    }

    #[test]
    fn healthy_archive_is_ok_in_one_line() {
        let (level, line) = evaluate(&healthy(), &limits());
        assert_eq!(level, Level::Ok);
        assert_eq!(
            line,
            "OK: newest backup base_000000010000000000000010 is 3h old, 142 WAL segments continuous since it, archiver lag 4s"
        );
        assert_eq!(level.exit_code(), 0);
    }

    #[test]
    fn thresholds() {
        let check = |f: Facts, l: Limits| evaluate(&f, &l);
        let (level, line) = check(
            Facts {
                newest_backup_age_seconds: Some(25 * 3600),
                ..healthy()
            },
            limits(),
        );
        assert_eq!(level, Level::Critical);
        assert!(
            line.starts_with("CRITICAL: ") && line.contains("over --max-age 1day"),
            "{line}"
        );

        let (level, line) = check(
            Facts {
                wal_segments_lost: 2,
                first_gap: Some("A..B".into()),
                ..healthy()
            },
            limits(),
        );
        assert_eq!(
            (level, line.contains("first gap A..B")),
            (Level::Critical, true),
            "{line}"
        );

        let (level, _) = check(
            Facts {
                wal_segments_pending: 1,
                ..healthy()
            },
            limits(),
        );
        assert_eq!(level, Level::Warning);

        let (level, line) = check(
            healthy(),
            Limits {
                min_wal: 200,
                ..limits()
            },
        );
        assert_eq!(level, Level::Warning);
        assert!(line.contains("under --min-wal 200"), "{line}");

        let (level, line) = check(
            Facts {
                archive_lag_seconds: Some(301),
                ..healthy()
            },
            limits(),
        );
        assert_eq!(level, Level::Critical);
        assert!(line.contains("over --max-archive-lag 5m"), "{line}");
        let (level, _) = check(
            Facts {
                archive_lag_seconds: Some(301),
                ..healthy()
            },
            Limits {
                max_archive_lag: None,
                ..limits()
            },
        );
        assert_eq!(level, Level::Ok, "lag unchecked without a limit");

        let (level, line) = check(
            Facts {
                archiver_failing: true,
                archiver_failed_count: Some(7),
                ..healthy()
            },
            limits(),
        );
        assert_eq!(level, Level::Warning);
        assert!(line.contains("7 failures"), "{line}");

        // CRITICAL wins over WARNING; no backups at all is CRITICAL.
        let (level, line) = check(
            Facts {
                backups: 0,
                newest_backup: None,
                newest_backup_age_seconds: None,
                archiver_failing: true,
                ..healthy()
            },
            limits(),
        );
        assert_eq!(level, Level::Critical);
        assert!(line.contains("no complete backup in s3://b/p"), "{line}");
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn lag_is_zero_when_every_finished_segment_is_stored() {
        let seg = |segno| Segment { timeline: 1, segno };
        let s = survey(TimelinePath::single(1), &[seg(3), seg(4)], Some(4));
        let now = Utc::now();
        let then = now - chrono::Duration::seconds(90);
        let mut cluster = Cluster {
            seg_size: s.seg_size,
            current: Some(seg(5)),
            timeline: 1,
            archiver: Archiver {
                last_archived_time: Some(then),
                ..Archiver::default()
            },
        };
        assert_eq!(
            archive_lag(Some(&cluster), &s, now),
            (Some(0), LagSource::Archiver)
        );
        cluster.current = Some(seg(7));
        assert_eq!(
            archive_lag(Some(&cluster), &s, now),
            (Some(90), LagSource::Archiver)
        );
        let (lag, source) = archive_lag(None, &s, now);
        assert_eq!(source, LagSource::Storage);
        assert!(lag.is_some_and(|l| l < 5), "{lag:?}");
    }

    #[test]
    fn json_metrics_are_numbers() {
        let facts = healthy();
        let (status, message) = evaluate(&facts, &limits());
        let json = serde_json::to_value(Outcome {
            status,
            exit_code: status.exit_code(),
            message,
            facts,
        })
        .unwrap();
        assert_eq!(json["status"], "OK");
        assert_eq!(json["newest_backup_age_seconds"], 3 * 3600);
        assert_eq!(json["wal_segments_found"], 142);
        assert_eq!(json["archive_lag_seconds"], 4);
        assert!(json.get("store").is_none());
    }
}
