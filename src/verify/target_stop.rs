//! The `target_stop` check: the restored server's own notion of where its
//! recovery stopped, as its log says it, against the target it was given
//! and the client's ledger. Row counts say which commits a restore holds;
//! this says the server stopped for the right reason at the right time:
//! the first transaction it did not replay ended after the target, the
//! last one it replayed at or before it, and no earlier than the newest
//! commit the ledger saw acknowledged by the target (a recovery that
//! stopped early, at a target taken in the wrong zone, say, fails it even
//! when no row tells).

use chrono::{DateTime, Utc};

use super::outcome::{Check, CheckName};
use crate::env::RecoveryStop;
use crate::workload::{Ledger, Outcome};

/// Clock resolution: PostgreSQL keeps microseconds, the ledger more.
const SLACK: chrono::Duration = chrono::Duration::milliseconds(1);

/// The check for a restore to `target` whose server logged `stop`.
pub fn check(stop: &RecoveryStop, ledger: &Ledger, target: DateTime<Utc>) -> Check {
    let fail = |detail: String| Check {
        name: CheckName::TargetStop,
        passed: false,
        detail,
    };
    let Some(before) = stop.stopped_before else {
        return fail(
            "the server did not log stopping before a transaction after the target \
             (\"recovery stopping before ...\"): its recovery did not stop at the target"
                .into(),
        );
    };
    if before <= target {
        return fail(format!(
            "the server stopped before a transaction of {before}, not after the target {target}"
        ));
    }
    // The newest commit acknowledged by the target: replayed, or older than
    // everything replayed.
    let newest_acked = ledger
        .entries()
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Acked) && e.acked_at.is_some_and(|a| a <= target))
        .max_by_key(|e| e.sent_at);
    let detail = match stop.last_replayed {
        Some(last) if last > target => {
            return fail(format!(
                "the server replayed a transaction of {last}, after the target {target}"
            ))
        }
        Some(last) => match newest_acked {
            Some(e) if last < e.sent_at - SLACK => {
                return fail(format!(
                    "the server's last replayed transaction is of {last}, before writer {} seq {} \
                     (sent {}) was acknowledged by the target {target}: recovery stopped early",
                    e.writer, e.seq, e.sent_at
                ))
            }
            _ => format!("last replayed transaction at {}", last.with_timezone(&Utc)),
        },
        None => "no transaction replayed after the backup's checkpoint".into(),
    };
    Check {
        name: CheckName::TargetStop,
        passed: true,
        detail: format!(
            "{detail}; stopped before one at {}; target {target} (server's offset {})",
            before.with_timezone(&Utc),
            before.offset()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::LedgerEntry;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn ledger() -> Ledger {
        let entry = |seq: u64, sent: i64, acked: i64| LedgerEntry {
            writer: 1,
            seq,
            sent_at: t(sent),
            acked_at: Some(t(acked)),
            outcome: Outcome::Acked,
        };
        Ledger::of_one_writer(t(0), vec![entry(1, 1000, 1010), entry(2, 2000, 2010)])
    }

    fn stop(last: Option<i64>, before: Option<i64>) -> RecoveryStop {
        RecoveryStop {
            last_replayed: last.map(|ms| t(ms).fixed_offset()),
            stopped_before: before.map(|ms| t(ms).fixed_offset()),
        }
    }

    #[test]
    fn a_stop_between_the_last_acknowledged_commit_and_the_next_passes() {
        let c = check(&stop(Some(2005), Some(3005)), &ledger(), t(2500));
        assert!(c.passed, "{}", c.detail);
        // Nothing replayed since the backup: said, not failed.
        assert!(check(&stop(None, Some(3005)), &ledger(), t(2500)).passed);
    }

    #[test]
    fn a_stop_early_late_or_for_no_reason_fails() {
        // Stopped early: seq 2 was acknowledged by the target, replay ended
        // at seq 1's commit.
        let early = check(&stop(Some(1005), Some(2005)), &ledger(), t(2500));
        assert!(!early.passed && early.detail.contains("stopped before a transaction"));
        let early = check(&stop(Some(1005), Some(3005)), &ledger(), t(2500));
        assert!(!early.passed && early.detail.contains("recovery stopped early"));
        // Replayed past the target (a target taken two seconds late).
        let late = check(&stop(Some(2600), Some(3005)), &ledger(), t(2500));
        assert!(!late.passed && late.detail.contains("after the target"));
        // Ended for another reason (the end of the archive).
        let none = check(&stop(Some(2005), None), &ledger(), t(2500));
        assert!(!none.passed && none.detail.contains("did not stop at the target"));
    }
}
