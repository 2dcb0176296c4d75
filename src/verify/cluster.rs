//! Checks of the restored cluster as a whole: it is the source's cluster
//! (system identifier) on the timeline its promotion must have chosen, and
//! the verdicts on `pg_amcheck` and `pg_checksums` runs. Environments run
//! the programs (locally, in a container, in a pod); the judgements here
//! are pure.

use tokio_postgres::Client;

use super::{pg_err, Check, CheckName, VerifyError};

/// `pg_amcheck`'s arguments: heap pages, and every btree index against its
/// heap (`--heapallindexed`) and its parent pages (`--parent-check`: a
/// restore is promoted, so the ShareLock it takes is available), in every
/// database. `--install-missing` creates the amcheck extension where it is
/// missing, which a throw-away restored cluster can afford.
pub const AMCHECK_ARGS: &[&str] = &[
    "--all",
    "--install-missing",
    "--heapallindexed",
    "--parent-check",
];

/// Which cluster a server runs, and on which timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClusterIdentity {
    /// `pg_control_system().system_identifier`, set by initdb.
    pub system_identifier: i64,
    /// The timeline the server writes WAL on.
    pub timeline: u32,
}

/// The identity of the server behind `client` (which must not be in
/// recovery).
pub async fn identity(client: &Client) -> Result<ClusterIdentity, VerifyError> {
    let row = client
        .query_one(
            "SELECT system_identifier, substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) \
             FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(pg_err("reading the system identifier and timeline"))?;
    let timeline: String = row.get(1);
    Ok(ClusterIdentity {
        system_identifier: row.get(0),
        timeline: u32::from_str_radix(&timeline, 16).map_err(|e| {
            VerifyError::Postgres(crate::backup::pg::PgError::other(
                "reading the timeline",
                format!("WAL file name prefix {timeline:?}: {e}"),
            ))
        })?,
    })
}

/// The `system_identifier` and `timeline` checks of a restore of
/// `source`'s archive, promoted: same cluster, and the timeline after the
/// newest one in the archive (PostgreSQL picks the newest timeline it finds
/// a history file of, plus one; `source.timeline` is the newest a primary
/// of the drill has written on, and restores never archive theirs).
pub fn identity_checks(source: &ClusterIdentity, restored: &ClusterIdentity) -> [Check; 2] {
    let expected_timeline = source.timeline + 1;
    [
        Check {
            name: CheckName::SystemIdentifier,
            passed: restored.system_identifier == source.system_identifier,
            detail: if restored.system_identifier == source.system_identifier {
                format!("{}, the source's", restored.system_identifier)
            } else {
                format!(
                    "restored cluster {} is not the source cluster {}: the backup or WAL come from another cluster",
                    restored.system_identifier, source.system_identifier
                )
            },
        },
        Check {
            name: CheckName::Timeline,
            passed: restored.timeline == expected_timeline,
            detail: if restored.timeline == expected_timeline {
                format!(
                    "promoted to timeline {}, after the archive's newest ({})",
                    restored.timeline, source.timeline
                )
            } else {
                format!(
                    "promoted to timeline {}, expected {expected_timeline} (the archive's newest is {}): a timeline history file is missing or recovery followed the wrong timeline",
                    restored.timeline, source.timeline
                )
            },
        },
    ]
}

/// The `amcheck` check from a finished `pg_amcheck` ([`AMCHECK_ARGS`]) run.
pub fn amcheck_check(success: bool, stdout: &str, stderr: &str) -> Check {
    Check {
        name: CheckName::Amcheck,
        passed: success,
        detail: if success {
            "pg_amcheck --heapallindexed --parent-check finds no corruption in any database"
                .to_string()
        } else {
            format!("pg_amcheck: {}", output_tail(stdout, stderr, 10))
        },
    }
}

/// The `checksums` check from a finished `pg_checksums --check` run on the
/// stopped restore.
pub fn checksums_check(success: bool, stdout: &str, stderr: &str) -> Check {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    let passed = success && field("Bad checksums:") == Some(0);
    Check {
        name: CheckName::Checksums,
        passed,
        detail: if passed {
            format!(
                "pg_checksums --check: {} blocks in {} files, no bad checksum",
                field("Blocks scanned:").unwrap_or(0),
                field("Files scanned:").unwrap_or(0)
            )
        } else {
            format!("pg_checksums --check: {}", output_tail(stdout, stderr, 10))
        },
    }
}

/// The last `lines` lines of a program's stdout and stderr, as one line.
fn output_tail(stdout: &str, stderr: &str, lines: usize) -> String {
    let all: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: ClusterIdentity = ClusterIdentity {
        system_identifier: 7_300_000_000_000_000_001,
        timeline: 2,
    };

    #[test]
    fn identity_passes_only_for_the_source_cluster_one_timeline_on() {
        let [sysid, timeline] = identity_checks(
            &SOURCE,
            &ClusterIdentity {
                timeline: 3,
                ..SOURCE
            },
        );
        assert!(sysid.passed && timeline.passed, "{sysid:?} {timeline:?}");
        let [sysid, timeline] = identity_checks(
            &SOURCE,
            &ClusterIdentity {
                system_identifier: 42,
                timeline: 2,
            },
        );
        assert!(!sysid.passed);
        assert!(sysid.detail.contains("another cluster"), "{}", sysid.detail);
        assert!(!timeline.passed);
        assert!(
            timeline.detail.contains("expected 3"),
            "{}",
            timeline.detail
        );
    }

    #[test]
    fn amcheck_output_is_the_failure() {
        assert!(amcheck_check(true, "", "").passed);
        let c = amcheck_check(
            false,
            "btree index \"postgres.public.t_pkey\":\n    ERROR:  item order invariant violated\n",
            "",
        );
        assert!(!c.passed);
        assert!(c.detail.contains("item order invariant violated"), "{c:?}");
    }

    #[test]
    fn checksums_need_zero_bad_blocks_and_success() {
        let ok = "Checksum operation completed\nFiles scanned:   946\nBlocks scanned:  2813\nBad checksums:  0\nData checksum version: 1\n";
        let c = checksums_check(true, ok, "");
        assert!(c.passed, "{c:?}");
        assert_eq!(
            c.detail,
            "pg_checksums --check: 2813 blocks in 946 files, no bad checksum"
        );
        let bad = "Checksum operation completed\nFiles scanned:   946\nBlocks scanned:  2813\nBad checksums:  1\n";
        let c = checksums_check(
            false,
            bad,
            "pg_checksums: error: checksum verification failed in file \"base/5/16384\", block 0",
        );
        assert!(!c.passed);
        assert!(c.detail.contains("base/5/16384"), "{c:?}");
        // Exit 0 without a report is no proof.
        assert!(!checksums_check(true, "", "").passed);
        let off = checksums_check(
            false,
            "",
            "pg_checksums: error: data checksums are not enabled in cluster",
        );
        assert!(off.detail.contains("not enabled"), "{off:?}");
    }
}
