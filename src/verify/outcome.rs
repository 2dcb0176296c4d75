//! The result of verifying a restore, and its human-readable form.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What one check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    /// The workload table exists (unless no row is expected).
    Table,
    /// Each writer's row count is within its expectation.
    RowCount,
    /// Each writer's rows are seq 1..=n with no hole.
    GapFree,
    /// No row that was never sent (unknown writer, seq never sent or
    /// rejected).
    NoExtraRows,
    /// Every transaction acknowledged by the target is there.
    AckedKept,
    /// Every row's payload is the one its writer sent.
    Payloads,
    /// Every row was committed while its writer waited (after sending,
    /// before the acknowledgement), by `track_commit_timestamp`.
    CommitTimes,
    /// The restored server's log says its recovery stopped at the target:
    /// before a transaction after it, having replayed one at or before it
    /// and no earlier than the last commit acknowledged by it.
    TargetStop,
    /// The hash of the restored rows equals the ledger's for the found counts.
    ContentHash,
    /// Index-only scans count what sequential scans count, and the
    /// visibility map calls no invisible tuple all-visible.
    Visibility,
    /// Each writer's items (mixed workload) are exactly what its restored
    /// commits wrote.
    Items,
    /// The restored cluster is the source's (`pg_control`'s system
    /// identifier).
    SystemIdentifier,
    /// The restore was promoted to the timeline after the archive's newest.
    Timeline,
    /// `pg_amcheck --heapallindexed --parent-check` finds no corruption.
    Amcheck,
    /// `pg_checksums --check` on the stopped restore finds no bad block.
    Checksums,
    /// The DDL task's tables (rows, indexes) and databases are those of
    /// a state the DDL record allows at the target.
    DdlObjects,
    /// The DDL sequence is at or past its last acknowledged value.
    Sequence,
    /// The unlogged table exists and is empty.
    Unlogged,
}

impl CheckName {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Table => "table",
            CheckName::RowCount => "row_count",
            CheckName::GapFree => "gap_free",
            CheckName::NoExtraRows => "no_extra_rows",
            CheckName::AckedKept => "acked_kept",
            CheckName::Payloads => "payloads",
            CheckName::CommitTimes => "commit_times",
            CheckName::TargetStop => "target_stop",
            CheckName::ContentHash => "content_hash",
            CheckName::Visibility => "visibility",
            CheckName::Items => "items",
            CheckName::SystemIdentifier => "system_identifier",
            CheckName::Timeline => "timeline",
            CheckName::Amcheck => "amcheck",
            CheckName::Checksums => "checksums",
            CheckName::DdlObjects => "ddl_objects",
            CheckName::Sequence => "sequence",
            CheckName::Unlogged => "unlogged",
        }
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: CheckName,
    pub passed: bool,
    /// What was seen; on failure, precisely what is wrong.
    pub detail: String,
}

/// One writer's rows in the restored table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriterResult {
    pub writer: u32,
    /// Allowed row counts.
    pub expected: RangeInclusive<u64>,
    /// Rows found.
    pub found: u64,
    /// The highest seq found (0 when none).
    pub max_seq: u64,
    /// The first missing seqs among 1..=max(max_seq, expected minimum).
    pub missing: Vec<u64>,
    /// How many seqs are missing in all.
    pub missing_count: u64,
}

impl WriterResult {
    /// Whether the count is allowed and nothing is missing.
    pub fn ok(&self) -> bool {
        self.expected.contains(&self.found) && self.missing_count == 0
    }

    /// E.g. "writer 2: expected 140 rows, found 138; missing seq 17, 18".
    pub fn describe(&self) -> String {
        let (lo, hi) = (*self.expected.start(), *self.expected.end());
        let expected = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo} to {hi}")
        };
        let mut text = format!(
            "writer {}: expected {expected} rows, found {}",
            self.writer, self.found
        );
        if self.missing_count > 0 {
            text.push_str(&format!(
                "; missing seq {}",
                list(&self.missing, self.missing_count)
            ));
        }
        text
    }
}

/// Everything verify found about one restored cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyOutcome {
    /// Every check passed.
    pub passed: bool,
    /// The recovery target time; None for a restore to the end of WAL.
    pub target: Option<DateTime<Utc>>,
    /// Whether the expectation was an exact count for every writer.
    pub exact: bool,
    /// Rows in the restored table.
    pub rows: u64,
    pub checks: Vec<Check>,
    pub per_writer: Vec<WriterResult>,
    /// The first acknowledged-but-lost transactions, as (writer, seq).
    pub lost_acked: Vec<(u32, u64)>,
    /// How many acknowledged transactions were lost in all.
    pub lost_acked_count: u64,
    /// BLAKE3 of the restored rows (see [`crate::workload::ContentHasher`]).
    pub content_hash: String,
    /// The newest commit timestamp among the restored rows, when
    /// `track_commit_timestamp` is on.
    pub last_commit_time: Option<DateTime<Utc>>,
    /// Seconds each group of checks took (see [`CostGroup`]).
    pub cost_s: BTreeMap<CostGroup, f64>,
}

/// The checks that cost time together, for the report and `pgdrill bench
/// verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostGroup {
    /// One scan of the ledger table: `table` to `content_hash`.
    Ledger,
    Items,
    /// `ddl_objects`, `sequence`, `unlogged`.
    Ddl,
    Visibility,
    /// `system_identifier` and `timeline`.
    Identity,
    Amcheck,
    /// `checksums`, including the clean shutdown it needs.
    Checksums,
}

impl CostGroup {
    pub const ALL: [CostGroup; 7] = [
        CostGroup::Ledger,
        CostGroup::Items,
        CostGroup::Ddl,
        CostGroup::Visibility,
        CostGroup::Identity,
        CostGroup::Amcheck,
        CostGroup::Checksums,
    ];

    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CostGroup::Ledger => "ledger",
            CostGroup::Items => "items",
            CostGroup::Ddl => "ddl",
            CostGroup::Visibility => "visibility",
            CostGroup::Identity => "identity",
            CostGroup::Amcheck => "amcheck",
            CostGroup::Checksums => "checksums",
        }
    }
}

impl VerifyOutcome {
    /// One line when passed; else one line per failed check.
    pub fn summary(&self) -> String {
        let at = self
            .target
            .map_or_else(|| "end of WAL".to_string(), |t| t.to_rfc3339());
        if self.passed {
            return format!(
                "passed: {} rows of {} writers match the ledger {} at {at}",
                self.rows,
                self.per_writer.len(),
                if self.exact {
                    "exactly"
                } else {
                    "within its uncertainty"
                },
            );
        }
        let mut text = format!("failed at {at}:");
        for c in self.checks.iter().filter(|c| !c.passed) {
            text.push_str(&format!("\n- {}: {}", c.name, c.detail));
        }
        text
    }

    /// Records that `group` took the time since `since`.
    pub fn cost(&mut self, group: CostGroup, since: std::time::Instant) {
        *self.cost_s.entry(group).or_default() += since.elapsed().as_secs_f64();
    }

    /// The check named `name`.
    pub fn check(&self, name: CheckName) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for VerifyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// The first items of a longer list, e.g. "17, 18 and 40 more".
pub(super) fn list<T: fmt::Display>(first: &[T], count: u64) -> String {
    let shown: Vec<String> = first.iter().map(ToString::to_string).collect();
    let rest = count.saturating_sub(first.len() as u64);
    match rest {
        0 => shown.join(", "),
        _ => format!("{} and {rest} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_writer_precisely() {
        let w = WriterResult {
            writer: 2,
            expected: 140..=140,
            found: 138,
            max_seq: 138,
            missing: vec![139, 140],
            missing_count: 2,
        };
        assert!(!w.ok());
        assert_eq!(
            w.describe(),
            "writer 2: expected 140 rows, found 138; missing seq 139, 140"
        );
        let w = WriterResult {
            expected: 3..=4,
            found: 3,
            max_seq: 3,
            missing: vec![],
            missing_count: 0,
            ..w
        };
        assert!(w.ok());
        assert_eq!(w.describe(), "writer 2: expected 3 to 4 rows, found 3");
        assert_eq!(list(&[1, 2], 50), "1, 2 and 48 more");
    }
}
