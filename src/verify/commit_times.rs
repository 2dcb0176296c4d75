//! The `commit_times` check: with `track_commit_timestamp`, every restored
//! row of the workload table was committed while its writer waited, after
//! the statement was sent and, when acknowledged, before the
//! acknowledgement. Row counts and payloads cannot tell a row from its
//! twin written on a timeline a failover gave up (same writer, seq and
//! payload); its commit time can. Rows whose commit time is gone (frozen
//! past the commit-timestamp horizon) are counted and excepted.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::outcome::{Check, CheckName};
use super::{commit_timestamps_tracked, pg_err, VerifyError};
use crate::workload::{Ledger, LedgerEntry, TABLE};

/// Clock resolution: PostgreSQL keeps microseconds, the ledger more.
const SLACK: chrono::Duration = chrono::Duration::milliseconds(1);

/// Reads every row's commit time and judges it; None when the restored
/// server does not track commit timestamps.
pub(super) async fn check(client: &Client, ledger: &Ledger) -> Result<Option<Check>, VerifyError> {
    if !commit_timestamps_tracked(client).await? {
        return Ok(None);
    }
    let sql = format!("SELECT writer, seq, pg_xact_commit_timestamp(xmin) FROM {TABLE}");
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(pg_err("reading commit timestamps"))?;
    let mut committed = Vec::with_capacity(rows.len());
    for row in rows {
        let (writer, seq): (i32, i64) = (row.get(0), row.get(1));
        committed.push((writer, seq, row.get::<_, Option<DateTime<Utc>>>(2)));
    }
    Ok(Some(judge(&committed, ledger)))
}

/// The check over `(writer, seq, commit time)` rows.
fn judge(rows: &[(i32, i64, Option<DateTime<Utc>>)], ledger: &Ledger) -> Check {
    let entries: HashMap<(i64, i64), &LedgerEntry> = ledger
        .entries()
        .iter()
        .map(|e| ((i64::from(e.writer), e.seq as i64), e))
        .collect();
    let (mut within, mut unknown, mut outside) = (0u64, 0u64, Vec::new());
    for &(writer, seq, at) in rows {
        let Some(at) = at else {
            unknown += 1;
            continue;
        };
        // Rows never sent are no_extra_rows' to report.
        let Some(entry) = entries.get(&(i64::from(writer), seq)) else {
            continue;
        };
        let (sent, acked) = (entry.sent_at, entry.acked_at);
        if at + SLACK < sent || acked.is_some_and(|a| at > a + SLACK) {
            outside.push(format!(
                "w{writer}#{seq} committed at {} but sent at {}{}",
                at.format("%H:%M:%S%.6f"),
                sent.format("%H:%M:%S%.6f"),
                acked
                    .map(|a| format!(", acknowledged at {}", a.format("%H:%M:%S%.6f")))
                    .unwrap_or_default()
            ));
        } else {
            within += 1;
        }
    }
    let frozen = match unknown {
        0 => String::new(),
        n => format!(" ({n} without a commit time, excepted)"),
    };
    Check {
        name: CheckName::CommitTimes,
        passed: outside.is_empty(),
        detail: if outside.is_empty() {
            format!("{within} rows committed while their writers waited{frozen}")
        } else {
            format!(
                "{} rows committed outside their writers' windows (another timeline's or cluster's twins), e.g. {}{frozen}",
                outside.len(),
                outside[..outside.len().min(3)].join("; ")
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Outcome;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn ledger() -> Ledger {
        let entry = |seq: u64, sent: i64, acked: Option<i64>| LedgerEntry {
            writer: 1,
            seq,
            sent_at: t(sent),
            acked_at: acked.map(t),
            outcome: match acked {
                Some(_) => Outcome::Acked,
                None => Outcome::Unknown("connection lost".into()),
            },
        };
        Ledger::of_one_writer(t(0), vec![entry(1, 10, Some(11)), entry(2, 20, None)])
    }

    #[test]
    fn rows_committed_while_their_writers_waited_pass() {
        let rows = [
            (1, 1, Some(t(10) + chrono::Duration::milliseconds(400))),
            (1, 2, Some(t(25))),
            (1, 3, None),
        ];
        let c = judge(&rows, &ledger());
        assert!(c.passed, "{}", c.detail);
        assert!(c.detail.contains("2 rows committed while"), "{}", c.detail);
        assert!(c.detail.contains("1 without a commit time"), "{}", c.detail);
    }

    #[test]
    fn a_twin_committed_at_another_time_fails() {
        // Before it was sent, after it was acknowledged: both impossible
        // for the row the ledger's writer wrote.
        for at in [t(9), t(12)] {
            let c = judge(&[(1, 1, Some(at))], &ledger());
            assert!(!c.passed, "{at}");
            assert!(c.detail.contains("w1#1 committed at"), "{}", c.detail);
        }
        // Unacknowledged: only the lower bound holds.
        assert!(!judge(&[(1, 2, Some(t(19)))], &ledger()).passed);
    }
}
