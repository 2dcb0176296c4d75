//! `wal-verify integrity|timeline`: WAL-G's checks of the WAL archive, and
//! the survey of `wal_005/` that `backup-check` shares.
//!
//! **Integrity**: every segment from the oldest backup's start segment up to
//! the last segment the cluster has finished (the one before its current
//! segment; without a reachable cluster, the newest stored segment) must be
//! stored, on the timeline that owned that position according to the
//! timeline history (`NNNNNNNN.history` in storage). Contiguous segments
//! with the same timeline and status form one range. A missing segment is
//! - `MISSING_UPLOADING` when `$PGDATA/pg_wal/archive_status/<name>.ready`
//!   exists (PostgreSQL still has to archive it; needs a readable `PGDATA`),
//! - `MISSING_LOST` when it is at or below what was provably archived: the
//!   last file `pg_stat_archiver` reports (without a cluster: more than
//!   `WALG_UPLOAD_CONCURRENCY` segments below the newest stored one, since
//!   wal-push uploads ahead out of order) or the end of a complete backup
//!   (`backup-push` waits for its WAL to be archived): a silent gap,
//! - `MISSING_DELAYED` otherwise: not archived yet, normal for the newest.
//!
//! The status is FAILURE when any segment is lost, WARNING when any is
//! missing otherwise, else OK.
//!
//! **Timeline**: the highest timeline in storage (history files and WAL file
//! names) against the cluster's (`pg_control_checkpoint()`): equal is OK,
//! storage behind is WARNING, storage ahead is FAILURE (another cluster,
//! typically a promoted restore, archives into this prefix).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::catalog::{self, ListedBackup};
use super::layout::{self, Lsn, Segment, WalFileKind};
use super::pg::{connect, pg_err};
use super::store::{Key, StoreError};
use super::{exit, BackupError, Context};

/// More segments than one scan checks (256 TiB of 16 MiB segments): a
/// range this long comes from a stray object, not from a real archive.
pub(crate) const MAX_SCAN: u64 = 1 << 24;

/// Errors of the read-only checks (`wal-verify`, `backup-check`).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A `.history` object that is not in PostgreSQL's format.
    #[error("timeline history {key} is not valid: {detail}; compare it with the cluster's pg_wal/{name}")]
    BadHistory {
        key: Key,
        name: String,
        detail: String,
    },
    /// The timeline check has nothing to compare storage with.
    #[error("the timeline check needs the cluster ({reason}): set PGHOST, PGPORT, PGUSER and PGPASSWORD, or run `wal-verify integrity` alone")]
    ClusterUnreachable { reason: String },
    /// A range to check too long to be real (see [`MAX_SCAN`]).
    #[error("{count} segments from {first} to {last} to check: is {last} a stray object in wal_005/, or does the prefix hold another cluster's WAL?")]
    RangeTooLong {
        first: String,
        last: String,
        count: u64,
    },
    /// Integrity is measured from a backup's start segment.
    #[error("no backup on the cluster's timeline history in {store}: integrity is checked from the oldest backup's start segment; take one with backup-push")]
    NoBackup { store: String },
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> CheckError {
        CheckError::Backup(e.into())
    }
}

/// A check's verdict, WAL-G's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckStatus {
    Ok,
    Warning,
    Failure,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Failure => "FAILURE",
        }
    }

    /// 0, [`exit::CHECK_WARNING`] or [`exit::CHECK_FAILURE`].
    pub fn exit_code(self) -> i32 {
        match self {
            CheckStatus::Ok => exit::OK,
            CheckStatus::Warning => exit::CHECK_WARNING,
            CheckStatus::Failure => exit::CHECK_FAILURE,
        }
    }
}

/// What the integrity check found for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SegmentStatus {
    Found,
    MissingDelayed,
    MissingUploading,
    MissingLost,
}

impl SegmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentStatus::Found => "FOUND",
            SegmentStatus::MissingDelayed => "MISSING_DELAYED",
            SegmentStatus::MissingUploading => "MISSING_UPLOADING",
            SegmentStatus::MissingLost => "MISSING_LOST",
        }
    }
}

/// Contiguous segments with the same timeline and status (WAL-G's JSON names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRange {
    pub timeline_id: u32,
    pub start_segment: String,
    pub end_segment: String,
    pub segments_count: u64,
    pub status: SegmentStatus,
}

impl SegmentRange {
    /// Whether this range says segment `name` is lost. Names of one
    /// timeline sort like their positions; another timeline's never
    /// falls inside.
    pub fn holds_lost(&self, name: &str) -> bool {
        self.status == SegmentStatus::MissingLost
            && self.start_segment.as_str() <= name
            && name <= self.end_segment.as_str()
    }
}

/// FAILURE when any segment is lost, WARNING when any is missing, else OK.
pub fn integrity_status(ranges: &[SegmentRange]) -> CheckStatus {
    ranges
        .iter()
        .map(|r| match r.status {
            SegmentStatus::Found => CheckStatus::Ok,
            SegmentStatus::MissingDelayed | SegmentStatus::MissingUploading => CheckStatus::Warning,
            SegmentStatus::MissingLost => CheckStatus::Failure,
        })
        .max()
        .unwrap_or(CheckStatus::Ok)
}

/// Which timeline owned each WAL position, from a timeline's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    /// Timelines oldest first, each with the first segment it owns; the
    /// first one owns everything before the first switch.
    steps: Vec<(u32, u64)>,
}

impl TimelinePath {
    /// A timeline without ancestors (or whose history is unknown).
    pub fn single(timeline: u32) -> TimelinePath {
        TimelinePath {
            steps: vec![(timeline, 0)],
        }
    }

    /// Parses timeline `current`'s history file: one line per ancestor,
    /// `parentTLI <TAB> switchpoint LSN <TAB> reason`; blank lines and `#`
    /// comments are skipped. The segment holding a switchpoint belongs to
    /// the new timeline (recovery reads it from there).
    pub fn from_history(current: u32, text: &str, seg_size: u64) -> Result<TimelinePath, String> {
        let mut steps: Vec<(u32, u64)> = Vec::new();
        let mut begin = 0u64;
        let mut last_switch = Lsn(0);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
                return Err(format!(
                    "line {}: expected `parentTLI switchpoint reason`",
                    i + 1
                ));
            };
            let tli: u32 = tli
                .parse()
                .map_err(|_| format!("line {}: {tli:?} is not a timeline", i + 1))?;
            let lsn =
                Lsn::parse(lsn).ok_or_else(|| format!("line {}: {lsn:?} is not an LSN", i + 1))?;
            let previous = steps.last().map_or(0, |s| s.0);
            if tli <= previous || tli >= current {
                return Err(format!(
                    "line {}: timeline {tli} is out of order (history of timeline {current})",
                    i + 1
                ));
            }
            if lsn < last_switch {
                return Err(format!("line {}: switchpoint {lsn} goes backwards", i + 1));
            }
            steps.push((tli, begin));
            begin = lsn.0 / seg_size;
            last_switch = lsn;
        }
        steps.push((current, begin));
        Ok(TimelinePath { steps })
    }

    /// The timeline the history ends on.
    pub fn current(&self) -> u32 {
        self.steps.last().map_or(1, |s| s.0)
    }

    /// The timeline that owned segment number `segno`.
    pub fn timeline_of(&self, segno: u64) -> u32 {
        self.steps
            .iter()
            .rev()
            .find(|(_, begin)| *begin <= segno)
            .map_or(1, |s| s.0)
    }

    /// Whether `seg` is on this history (not on a side branch).
    pub fn contains(&self, seg: Segment) -> bool {
        self.timeline_of(seg.segno) == seg.timeline
    }
}

/// `pg_stat_archiver`, as far as the checks use it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Archiver {
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// Failures since the statistics were reset (not since the last success).
    pub failed_count: i64,
}

impl Archiver {
    /// The segment number of the last archived file; `None` when nothing
    /// was archived or the last file was a `.history` file.
    pub fn last_archived_segno(&self, seg_size: u64) -> Option<u64> {
        let name = self.last_archived_wal.as_deref()?;
        match layout::wal_file_kind(name)? {
            WalFileKind::History => None,
            _ => Segment::parse(&name[..24], seg_size).map(|s| s.segno),
        }
    }

    /// Whether the last archiving attempt failed.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(failed), Some(archived)) => failed > archived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// What the checks read from a reachable cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub seg_size: u64,
    /// The segment being written; `None` on a standby.
    pub current: Option<Segment>,
    /// `pg_control_checkpoint()`'s timeline.
    pub timeline: u32,
    pub archiver: Archiver,
}

/// Connects with the PG* settings; `Ok(Err(reason))` when the cluster is
/// not reachable (the checks then work from storage alone), `Err` when it
/// is reachable but cannot be queried.
pub async fn probe_cluster(ctx: &Context) -> Result<Result<Cluster, String>, CheckError> {
    let client = match connect(&ctx.settings.pg).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // The current segment is computed from the insert LSN: right after a
    // segment switch that LSN is a segment boundary, for which
    // pg_walfile_name() names the segment just finished, not the current one.
    let row = client
        .query_one(
            "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    w.lsn::text, pg_walfile_name(w.lsn), \
                    (SELECT timeline_id FROM pg_control_checkpoint()), \
                    a.last_archived_wal, a.last_archived_time, a.last_failed_time, a.failed_count \
             FROM pg_stat_archiver a, \
                  LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                                       ELSE pg_current_wal_lsn() END AS lsn) w",
            &[],
        )
        .await
        .map_err(pg_err("reading the WAL position and pg_stat_archiver"))?;
    let seg_size = u64::try_from(row.get::<_, i64>(0)).map_err(|_| {
        BackupError::Postgres(super::pg::PgError::other(
            "reading wal_segment_size",
            "it is negative",
        ))
    })?;
    let lsn: Option<String> = row.get(1);
    let name: Option<String> = row.get(2);
    let current = lsn
        .as_deref()
        .and_then(Lsn::parse)
        .zip(name)
        .and_then(|(lsn, name)| {
            let timeline = u32::from_str_radix(name.get(..8)?, 16).ok()?;
            Some(Segment::of_lsn(timeline, lsn, seg_size))
        });
    Ok(Ok(Cluster {
        seg_size,
        current,
        timeline: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
        archiver: Archiver {
            last_archived_wal: row.get(4),
            last_archived_time: row.get(5),
            last_failed_time: row.get(6),
            failed_count: row.get(7),
        },
    }))
}

/// The WAL archive as the checks see it.
#[derive(Debug, Clone)]
pub struct Survey {
    pub seg_size: u64,
    /// The history the checks follow: the cluster's timeline, or without a
    /// cluster the highest one in storage.
    pub path: TimelinePath,
    /// Every stored complete segment.
    pub stored: HashSet<Segment>,
    /// The newest stored segment on `path`, and when it was stored.
    pub newest: Option<(Segment, DateTime<Utc>)>,
    /// The highest timeline of any stored WAL file (0 when there is none).
    pub highest_timeline: u32,
    /// Segments with a `.ready` file in the cluster's `pg_wal/archive_status`.
    pub ready: HashSet<String>,
    /// Missing segments at or below this number are lost (see the module doc).
    pub lost_through: Option<u64>,
}

impl Survey {
    /// Lists `wal_005/`, follows the timeline history and gathers what
    /// classifies missing segments.
    pub async fn load(
        ctx: &Context,
        cluster: Option<&Cluster>,
        backups: &[ListedBackup],
    ) -> Result<Survey, CheckError> {
        let seg_size = cluster
            .map(|c| c.seg_size)
            .or_else(|| backups.last().map(|b| b.summary.wal_segment_size))
            .filter(|s| valid_segment_size(*s))
            .unwrap_or(layout::DEFAULT_WAL_SEGMENT_SIZE);
        let mut stored = Vec::new();
        let mut histories: BTreeMap<u32, Key> = BTreeMap::new();
        let mut highest_timeline = 0u32;
        for object in ctx.store.list(layout::WAL_DIR).await? {
            let Some(name) = layout::wal_name_of(&object.key) else {
                continue;
            };
            let Some(kind) = layout::wal_file_kind(name) else {
                continue;
            };
            let Ok(timeline) = u32::from_str_radix(&name[..8], 16) else {
                continue;
            };
            highest_timeline = highest_timeline.max(timeline);
            match kind {
                WalFileKind::History => {
                    histories.insert(timeline, object.key.clone());
                }
                WalFileKind::Segment => {
                    if let Some(seg) = Segment::parse(name, seg_size) {
                        stored.push((seg, object.last_modified));
                    }
                }
                WalFileKind::Partial | WalFileKind::BackupHistory => {}
            }
        }
        let current = match cluster {
            Some(c) => c.current.map_or(c.timeline, |s| s.timeline),
            None => highest_timeline.max(1),
        };
        let path = match histories.get(&current) {
            Some(key) => {
                let name = format!("{current:08X}.history");
                let (data, _) = ctx.fetch_wal_object(key, &name).await?;
                let bad = |detail: String| CheckError::BadHistory {
                    key: key.clone(),
                    name: name.clone(),
                    detail,
                };
                let text = String::from_utf8(data).map_err(|_| bad("not text".into()))?;
                TimelinePath::from_history(current, &text, seg_size).map_err(bad)?
            }
            None => {
                if current > 1 {
                    warn!("{current:08X}.history is not in storage: segments of earlier timelines are expected on timeline {current}");
                }
                TimelinePath::single(current)
            }
        };
        let newest = stored
            .iter()
            .filter(|(s, _)| path.contains(*s))
            .max_by_key(|(s, _)| s.segno)
            .copied();
        let archived = cluster.and_then(|c| c.archiver.last_archived_segno(seg_size));
        let uploading_window = ctx.settings.upload_concurrency as u64;
        let heuristic = newest.and_then(|(s, _)| s.segno.checked_sub(uploading_window));
        let mut lost_through = archived
            .or(heuristic)
            .max(backup_finish_segno(backups, &path, seg_size));
        let mut ready = ready_segments(ctx).await;
        if ctx.settings.sabotage == Some(crate::backup::sabotage::Sabotage::UploadingCountedLost) {
            lost_through = cluster
                .and_then(|c| c.current)
                .map(|s| s.segno.saturating_sub(1));
            ready.clear();
        }
        Ok(Survey {
            seg_size,
            path,
            stored: stored.into_iter().map(|(s, _)| s).collect(),
            newest,
            highest_timeline,
            ready,
            lost_through,
        })
    }

    /// The status of segment number `segno` on this history.
    fn status_of(&self, segno: u64) -> (Segment, SegmentStatus) {
        let seg = Segment {
            timeline: self.path.timeline_of(segno),
            segno,
        };
        let status = if self.stored.contains(&seg) {
            SegmentStatus::Found
        } else if !self.ready.is_empty() && self.ready.contains(&seg.file_name(self.seg_size)) {
            SegmentStatus::MissingUploading
        } else if self.lost_through.is_some_and(|l| segno <= l) {
            SegmentStatus::MissingLost
        } else {
            SegmentStatus::MissingDelayed
        };
        (seg, status)
    }

    /// Segments `first..=last` (numbers) collapsed into ranges; empty when
    /// `first > last`.
    pub fn scan(&self, first: u64, last: u64) -> Result<Vec<SegmentRange>, CheckError> {
        let name = |segno| Segment {
            timeline: self.path.timeline_of(segno),
            segno,
        };
        if last >= first && last - first >= MAX_SCAN {
            return Err(CheckError::RangeTooLong {
                first: name(first).file_name(self.seg_size),
                last: name(last).file_name(self.seg_size),
                count: last - first + 1,
            });
        }
        let mut out = Vec::new();
        // The range being extended: first and last segment, status.
        let mut open: Option<(Segment, Segment, SegmentStatus)> = None;
        for segno in first..=last {
            let (seg, status) = self.status_of(segno);
            match &mut open {
                Some((start, end, s)) if start.timeline == seg.timeline && *s == status => {
                    *end = seg;
                }
                _ => {
                    out.extend(open.take().map(|r| self.range(r)));
                    open = Some((seg, seg, status));
                }
            }
        }
        out.extend(open.map(|r| self.range(r)));
        Ok(out)
    }

    fn range(&self, (start, end, status): (Segment, Segment, SegmentStatus)) -> SegmentRange {
        SegmentRange {
            timeline_id: start.timeline,
            start_segment: start.file_name(self.seg_size),
            end_segment: end.file_name(self.seg_size),
            segments_count: end.segno - start.segno + 1,
            status,
        }
    }

    /// The last segment the archive must reach: the one before the
    /// cluster's current segment, else the newest stored one, and at least
    /// the end of every complete backup.
    pub fn last_expected(&self, cluster: Option<&Cluster>, backups: &[ListedBackup]) -> u64 {
        let reached = match cluster.and_then(|c| c.current) {
            Some(current) => current.segno.saturating_sub(1),
            None => self.newest.map_or(0, |(s, _)| s.segno),
        };
        reached.max(backup_finish_segno(backups, &self.path, self.seg_size).unwrap_or(0))
    }
}

/// The highest finish segment of the complete backups on `path`: their WAL
/// was archived before they completed.
fn backup_finish_segno(
    backups: &[ListedBackup],
    path: &TimelinePath,
    seg_size: u64,
) -> Option<u64> {
    backups
        .iter()
        .filter_map(|b| Segment::parse(&b.summary.finish_wal_file_name, seg_size))
        .filter(|s| path.contains(*s))
        .map(|s| s.segno)
        .max()
}

/// Segment names with a `.ready` file in `$PGDATA/pg_wal/archive_status`
/// (empty when PGDATA is unset or unreadable).
async fn ready_segments(ctx: &Context) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(pgdata) = &ctx.settings.pgdata else {
        return out;
    };
    let dir = pgdata.join("pg_wal").join("archive_status");
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(e) => e,
        Err(e) => {
            info!(
                "cannot read {} ({e}): missing segments count as delayed, never as uploading",
                dir.display()
            );
            return out;
        }
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".ready") {
            if layout::wal_file_kind(name) == Some(WalFileKind::Segment) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// Whether `size` is a WAL segment size `initdb --wal-segsize` allows (a
/// power of two from 1 MiB to 1 GiB); anything else is damaged metadata.
pub(crate) fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

/// `1 segment`, `2 segments`: `n` and `noun`, plural unless `n` is 1.
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    match n.into() {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// The checks `wal-verify` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalCheck {
    /// No missing WAL segment since the oldest backup.
    Integrity,
    /// Storage's highest timeline is the cluster's.
    Timeline,
}

/// One check's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult<D> {
    pub status: CheckStatus,
    pub details: D,
}

/// The timeline check's details (WAL-G's JSON names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineDetails {
    pub current_timeline_id: u32,
    pub highest_storage_timeline_id: u32,
}

impl TimelineDetails {
    /// OK when equal, WARNING when storage is behind, FAILURE when storage
    /// has a timeline the cluster never had.
    pub fn status(&self) -> CheckStatus {
        match self
            .highest_storage_timeline_id
            .cmp(&self.current_timeline_id)
        {
            std::cmp::Ordering::Equal => CheckStatus::Ok,
            std::cmp::Ordering::Less => CheckStatus::Warning,
            std::cmp::Ordering::Greater => CheckStatus::Failure,
        }
    }
}

/// What `wal-verify --json` prints: `{"integrity": {...}, "timeline":
/// {...}}` with the checks that ran. The drill reads it with this type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalVerifyReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<CheckResult<Vec<SegmentRange>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<CheckResult<TimelineDetails>>,
}

impl WalVerifyReport {
    /// The worst status of the checks that ran.
    pub fn status(&self) -> CheckStatus {
        let integrity = self.integrity.as_ref().map(|c| c.status);
        let timeline = self.timeline.as_ref().map(|c| c.status);
        integrity.max(timeline).unwrap_or(CheckStatus::Ok)
    }
}

impl fmt::Display for WalVerifyReport {
    /// WAL-G's plain text: a status line and details per check, plus one
    /// `N segments verified` line per found range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(check) = &self.integrity {
            writeln!(
                f,
                "[wal-verify] integrity check status: {}",
                check.status.as_str()
            )?;
            writeln!(f, "[wal-verify] integrity check details:")?;
            let mut rows =
                vec![["TLI", "START", "END", "SEGMENTS_COUNT", "STATUS"].map(String::from)];
            rows.extend(check.details.iter().map(|r| {
                [
                    r.timeline_id.to_string(),
                    r.start_segment.clone(),
                    r.end_segment.clone(),
                    r.segments_count.to_string(),
                    r.status.as_str().to_string(),
                ]
            }));
            let widths: Vec<usize> = (0..5)
                .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
                .collect();
            for row in &rows {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                writeln!(f, "{}", cells.join("  ").trim_end())?;
            }
            for r in &check.details {
                let what = match r.status {
                    SegmentStatus::Found => "verified",
                    other => other.as_str(),
                };
                writeln!(
                    f,
                    "[wal-verify] {} {what}: timeline {}, {} to {}",
                    count(r.segments_count, "segment"),
                    r.timeline_id,
                    r.start_segment,
                    r.end_segment
                )?;
            }
        }
        if let Some(check) = &self.timeline {
            writeln!(
                f,
                "[wal-verify] timeline check status: {}",
                check.status.as_str()
            )?;
            writeln!(f, "[wal-verify] timeline check details:")?;
            writeln!(
                f,
                "Highest timeline found in storage: {}",
                check.details.highest_storage_timeline_id
            )?;
            writeln!(
                f,
                "Current cluster timeline: {}",
                check.details.current_timeline_id
            )?;
            if check.status == CheckStatus::Failure {
                writeln!(f, "storage holds a timeline this cluster never had: another cluster (a promoted restore?) archives into this prefix")?;
            }
        }
        Ok(())
    }
}

/// Runs `wal-verify` with the given checks (both when empty).
pub async fn wal_verify(ctx: &Context, checks: &[WalCheck]) -> Result<WalVerifyReport, CheckError> {
    let wants = |c: WalCheck| checks.is_empty() || checks.contains(&c);
    let cluster = match probe_cluster(ctx).await? {
        Ok(c) => Some(c),
        Err(reason) if wants(WalCheck::Timeline) => {
            return Err(CheckError::ClusterUnreachable { reason })
        }
        Err(reason) => {
            info!("cluster not reachable ({reason}): checking up to the newest stored segment");
            None
        }
    };
    let backups = catalog::list_backups(ctx).await?;
    let survey = Survey::load(ctx, cluster.as_ref(), &backups).await?;
    let integrity = if wants(WalCheck::Integrity) {
        let first = oldest_backup_start(&survey, &backups).ok_or_else(|| CheckError::NoBackup {
            store: ctx.store.describe(),
        })?;
        let details = survey.scan(first, survey.last_expected(cluster.as_ref(), &backups))?;
        Some(CheckResult {
            status: integrity_status(&details),
            details,
        })
    } else {
        None
    };
    let timeline = cluster.filter(|_| wants(WalCheck::Timeline)).map(|c| {
        let details = TimelineDetails {
            current_timeline_id: c.timeline,
            highest_storage_timeline_id: survey.highest_timeline,
        };
        CheckResult {
            status: details.status(),
            details,
        }
    });
    Ok(WalVerifyReport {
        integrity,
        timeline,
    })
}

/// The start segment number of the oldest backup on the survey's history;
/// backups on other branches are skipped (their WAL is not this history's).
fn oldest_backup_start(survey: &Survey, backups: &[ListedBackup]) -> Option<u64> {
    backups
        .iter()
        .filter_map(|b| {
            let start = Segment::parse(&b.summary.wal_file_name, survey.seg_size)?;
            if survey.path.contains(start) {
                Some(start.segno)
            } else {
                warn!(
                    backup = %b.summary.backup_name,
                    "backup is not on timeline {}'s history: skipped",
                    survey.path.current()
                );
                None
            }
        })
        .min()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    /// The JSON is the tool's contract with the drill: it reads back what
    /// it writes, in WAL-G's words.
    #[test]
    fn the_json_report_reads_back_in_wal_gs_words() {
        let report = WalVerifyReport {
            integrity: Some(CheckResult {
                status: CheckStatus::Failure,
                details: vec![SegmentRange {
                    timeline_id: 1,
                    start_segment: "000000010000000000000003".into(),
                    end_segment: "000000010000000000000004".into(),
                    segments_count: 2,
                    status: SegmentStatus::MissingLost,
                }],
            }),
            timeline: None,
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#""status":"FAILURE""#), "{json}");
        assert!(json.contains(r#""status":"MISSING_LOST""#), "{json}");
        let back: WalVerifyReport = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.integrity.unwrap().details,
            report.integrity.unwrap().details
        );
        for s in [CheckStatus::Ok, CheckStatus::Warning, CheckStatus::Failure] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    fn seg(timeline: u32, segno: u64) -> Segment {
        Segment { timeline, segno }
    }

    /// A survey of `stored` on `path`, with missing segments lost at or below `lost_through`.
    pub fn survey(path: TimelinePath, stored: &[Segment], lost_through: Option<u64>) -> Survey {
        let newest = stored
            .iter()
            .filter(|s| path.contains(**s))
            .max_by_key(|s| s.segno)
            .map(|s| (*s, Utc::now()));
        Survey {
            seg_size: SEG,
            highest_timeline: stored.iter().map(|s| s.timeline).max().unwrap_or(0),
            path,
            stored: stored.iter().copied().collect(),
            newest,
            ready: HashSet::new(),
            lost_through,
        }
    }

    fn summary(ranges: &[SegmentRange]) -> Vec<(u32, &str, &str, u64, &str)> {
        ranges
            .iter()
            .map(|r| {
                (
                    r.timeline_id,
                    &r.start_segment[16..],
                    &r.end_segment[16..],
                    r.segments_count,
                    r.status.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn contiguous_archive_is_one_found_range() {
        let stored: Vec<Segment> = (3..=9).map(|n| seg(1, n)).collect();
        let s = survey(TimelinePath::single(1), &stored, Some(9));
        let ranges = s.scan(3, 9).unwrap();
        assert_eq!(summary(&ranges), [(1, "00000003", "00000009", 7, "FOUND")]);
        assert_eq!(integrity_status(&ranges), CheckStatus::Ok);
        assert!(s.scan(5, 4).unwrap().is_empty(), "nothing to check is OK");
        let err = s.scan(3, 3 + MAX_SCAN).unwrap_err().to_string();
        assert!(err.contains("stray object"), "{err}");
    }

    #[test]
    fn gaps_are_lost_below_the_archiver_and_delayed_above() {
        let stored: Vec<Segment> = [3, 4, 6, 7].iter().map(|n| seg(1, *n)).collect();
        let mut s = survey(TimelinePath::single(1), &stored, Some(7));
        s.ready.insert(seg(1, 9).file_name(SEG));
        let ranges = s.scan(3, 10).unwrap();
        assert_eq!(
            summary(&ranges),
            [
                (1, "00000003", "00000004", 2, "FOUND"),
                (1, "00000005", "00000005", 1, "MISSING_LOST"),
                (1, "00000006", "00000007", 2, "FOUND"),
                (1, "00000008", "00000008", 1, "MISSING_DELAYED"),
                (1, "00000009", "00000009", 1, "MISSING_UPLOADING"),
                (1, "0000000A", "0000000A", 1, "MISSING_DELAYED"),
            ]
        );
        assert_eq!(integrity_status(&ranges), CheckStatus::Failure);
        assert_eq!(integrity_status(&ranges[3..]), CheckStatus::Warning);
    }

    #[test]
    fn segments_follow_the_timeline_history() {
        // Timeline 1 until 0/5000028 (segment 5 goes to timeline 2), timeline
        // 2 until 0/8000000 (segment 8 starts timeline 3).
        let history = "1\t0/5000028\tno recovery target specified\n\n# comment\n2\t0/8000000\tbefore 2026-02-09 14:30:00+00\n";
        let path = TimelinePath::from_history(3, history, SEG).unwrap();
        assert_eq!(path.current(), 3);
        assert_eq!(
            (0..10).map(|n| path.timeline_of(n)).collect::<Vec<_>>(),
            [1, 1, 1, 1, 1, 2, 2, 2, 3, 3]
        );
        // The old timeline's copy of segment 5 and a sibling branch's
        // segment do not count; timeline 2's segment 6 is missing.
        let stored = [
            seg(1, 3),
            seg(1, 4),
            seg(1, 5),
            seg(2, 5),
            seg(2, 7),
            seg(3, 8),
            seg(3, 9),
            seg(4, 9),
        ];
        let s = survey(path, &stored, Some(9));
        assert_eq!(s.newest.unwrap().0, seg(3, 9));
        assert_eq!(
            summary(&s.scan(3, 9).unwrap()),
            [
                (1, "00000003", "00000004", 2, "FOUND"),
                (2, "00000005", "00000005", 1, "FOUND"),
                (2, "00000006", "00000006", 1, "MISSING_LOST"),
                (2, "00000007", "00000007", 1, "FOUND"),
                (3, "00000008", "00000009", 2, "FOUND"),
            ]
        );
    }

    #[test]
    fn bad_history_files_are_rejected() {
        for (text, want) in [
            ("1\n", "expected"),
            ("x\t0/1\tr\n", "not a timeline"),
            ("1\tnope\tr\n", "not an LSN"),
            ("2\t0/1\tr\n1\t0/2\tr\n", "out of order"),
            ("3\t0/1\tr\n", "out of order"),
            ("1\t0/9000000\tr\n2\t0/1000000\tr\n", "backwards"),
        ] {
            let err = TimelinePath::from_history(3, text, SEG).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn archiver_position_and_failure() {
        let mut a = Archiver {
            last_archived_wal: Some("000000010000000000000007".into()),
            ..Archiver::default()
        };
        assert_eq!(a.last_archived_segno(SEG), Some(7));
        a.last_archived_wal = Some("000000010000000000000005.00000028.backup".into());
        assert_eq!(a.last_archived_segno(SEG), Some(5));
        a.last_archived_wal = Some("00000002.history".into());
        assert_eq!(a.last_archived_segno(SEG), None);
        assert!(!a.failing());
        let t: DateTime<Utc> = "2026-02-09T10:00:00Z".parse().unwrap();
        a.last_failed_time = Some(t);
        assert!(a.failing(), "failed and never archived");
        a.last_archived_time = Some(t + chrono::Duration::seconds(1));
        assert!(!a.failing(), "archived after the failure");
    }

    #[test]
    fn timeline_statuses_and_report_output() {
        let details = |current, highest| TimelineDetails {
            current_timeline_id: current,
            highest_storage_timeline_id: highest,
        };
        assert_eq!(details(2, 2).status(), CheckStatus::Ok);
        assert_eq!(details(2, 1).status(), CheckStatus::Warning);
        assert_eq!(details(1, 2).status(), CheckStatus::Failure);
        let stored: Vec<Segment> = [3, 4, 6].iter().map(|n| seg(1, *n)).collect();
        let ranges = survey(TimelinePath::single(1), &stored, Some(6))
            .scan(3, 6)
            .unwrap();
        let report = WalVerifyReport {
            integrity: Some(CheckResult {
                status: integrity_status(&ranges),
                details: ranges,
            }),
            timeline: Some(CheckResult {
                status: CheckStatus::Failure,
                details: details(1, 2),
            }),
        };
        assert_eq!(report.status(), CheckStatus::Failure);
        assert_eq!(report.status().exit_code(), exit::CHECK_FAILURE);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["integrity"]["status"], "FAILURE");
        assert_eq!(json["integrity"]["details"][1]["status"], "MISSING_LOST");
        assert_eq!(json["integrity"]["details"][0]["segments_count"], 2);
        assert_eq!(
            json["timeline"]["details"]["highest_storage_timeline_id"],
            2
        );
        let text = report.to_string();
        assert!(text.starts_with("[wal-verify] integrity check status: FAILURE\n"));
        assert_eq!(text.lines().filter(|l| l.contains("verified")).count(), 2);
        assert!(text.contains("1 segment MISSING_LOST: timeline 1, 000000010000000000000005 to 000000010000000000000005"));
        assert!(text.contains("Highest timeline found in storage: 2"));
    }
}
