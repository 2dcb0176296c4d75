//! Verifying a restored cluster against the workload's [`Ledger`]: row
//! counts, gap-free sequences, no extra rows, no lost acknowledged commits,
//! payloads and the content hash; [`check_visibility`] for what index-only
//! scans see; and [`cluster`] checks of the cluster as a whole (identity,
//! timeline, amcheck and checksums verdicts).

mod cluster;
mod commit_times;
mod ddl;
mod items;
mod outcome;
mod target_stop;
mod visibility;

use std::collections::BTreeMap;
use std::fmt::Display;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio_postgres::{Client, Row};

use crate::backup::pg::PgError;
use crate::workload::{ContentHasher, Ledger, SeqSet, TABLE};

pub use cluster::{
    amcheck_check, checksums_check, identity, identity_checks, ClusterIdentity, AMCHECK_ARGS,
};
pub use outcome::{Check, CheckName, CostGroup, VerifyOutcome, WriterResult};
pub use target_stop::check as target_stop;
pub use visibility::check_visibility;

/// How many items a list in an outcome shows (per writer for missing
/// seqs); the counts are always complete.
pub const LIST_LIMIT: usize = 10;

/// How many acknowledged-but-lost transactions an outcome lists.
pub const LOST_ACKED_LIMIT: usize = 1000;

/// Failures to verify (not verification failures, which are
/// [`VerifyOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A query on the restored server failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
}

fn pg_err(context: &str) -> impl Fn(tokio_postgres::Error) -> VerifyError + '_ {
    move |e| VerifyError::Postgres(PgError::new(context, &e))
}

/// Checks the restored table behind `client` against `ledger`, for a
/// restore to recovery target time `target` (None: to the end of WAL, so
/// every acknowledged row must be there).
pub async fn verify_restore(
    client: &Client,
    ledger: &Ledger,
    target: Option<DateTime<Utc>>,
) -> Result<VerifyOutcome, VerifyError> {
    verify(client, ledger, target, false).await
}

/// Checks a restore to the end of an archive that a crash cut short, whose
/// newest restored ledger commit is from `last_commit`: the ledger must be
/// exactly as of then; DDL operations acknowledged by then must be there,
/// and later ones may be (the archive may hold WAL past that commit).
pub async fn verify_after_crash(
    client: &Client,
    ledger: &Ledger,
    last_commit: DateTime<Utc>,
) -> Result<VerifyOutcome, VerifyError> {
    verify(client, ledger, Some(last_commit), true).await
}

/// [`verify_restore`]; with `open_ended`, recovery may have gone on past
/// `target` (see [`verify_after_crash`]).
async fn verify(
    client: &Client,
    ledger: &Ledger,
    target: Option<DateTime<Utc>>,
    open_ended: bool,
) -> Result<VerifyOutcome, VerifyError> {
    let mut outcome = verify_ledger(client, ledger, target).await?;
    if relation_exists(client, TABLE).await? {
        let clock = std::time::Instant::now();
        let check = commit_times::check(client, ledger)
            .await
            .unwrap_or_else(|e| Some(unreadable(CheckName::CommitTimes, &e)));
        if let Some(check) = check {
            outcome.passed &= check.passed;
            outcome.checks.push(check);
        }
        outcome.cost(CostGroup::Ledger, clock);
    }
    if let Some(mix) = ledger.spec().mix {
        let clock = std::time::Instant::now();
        let check = items::check_items(client, ledger.spec().seed, mix, &outcome.per_writer)
            .await
            .unwrap_or_else(|e| unreadable(CheckName::Items, &e));
        outcome.passed &= check.passed;
        outcome.checks.push(check);
        outcome.cost(CostGroup::Items, clock);
        if mix.ddl_every.is_some() {
            let clock = std::time::Instant::now();
            // Recovery to a time ends at it; to the end of WAL, after
            // every acknowledged operation.
            let (lo, hi) = match target {
                Some(t) => (t, (!open_ended).then_some(t)),
                None => (DateTime::<Utc>::MAX_UTC, None),
            };
            let stop_by = hi.and_then(|t| ledger.first_ack_of_those_sent_after(t));
            let expected =
                crate::workload::ddl::DdlModel::new(ledger.ddl()).expected(lo, hi, stop_by);
            let checks = match ddl::observe(client).await {
                Ok(observed) => ddl::judge(&expected, &observed),
                Err(e) => vec![unreadable(CheckName::DdlObjects, &e)],
            };
            outcome.passed &= checks.iter().all(|c| c.passed);
            outcome.checks.extend(checks);
            outcome.cost(CostGroup::Ddl, clock);
        }
    }
    Ok(outcome)
}

/// The ledger table's checks alone (`table` to `content_hash`), for a
/// restore to `target` (None: to the end of WAL): what the RPO of a
/// disaster is computed from.
pub async fn verify_ledger(
    client: &Client,
    ledger: &Ledger,
    target: Option<DateTime<Utc>>,
) -> Result<VerifyOutcome, VerifyError> {
    let exists = relation_exists(client, TABLE).await?;
    let clock = std::time::Instant::now();
    let mut scan = Scan::new(ledger, exists);
    let mut last_commit_time = None;
    if exists {
        let rows = client
            .query_raw(
                &format!("SELECT writer, seq, payload FROM {TABLE} ORDER BY writer, seq"),
                std::iter::empty::<i32>(),
            )
            .await
            .map_err(pg_err("reading the workload table"))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(pg_err("reading the workload table"))?
        {
            let (writer, seq, payload) = decode(&row).map_err(pg_err("decoding a workload row"))?;
            scan.row(writer, seq, payload);
        }
        last_commit_time = newest_commit(client).await?;
    }
    let mut outcome = scan.outcome(target, last_commit_time);
    outcome.cost(CostGroup::Ledger, clock);
    Ok(outcome)
}

/// Whether relation `name` exists in the restored database.
async fn relation_exists(client: &Client, name: &str) -> Result<bool, VerifyError> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(pg_err("looking for a workload relation"))?
        .get(0))
}

/// The failed check `name` when what it reads cannot be read: a restore
/// whose tables a query cannot read (e.g. "missing chunk number 0" of a
/// TOAST table) is wrong, not unverifiable.
fn unreadable(name: CheckName, error: &VerifyError) -> Check {
    Check {
        name,
        passed: false,
        detail: format!("the restored tables cannot be read: {error}"),
    }
}

/// A row of the workload table as (writer, seq, payload).
fn decode(row: &Row) -> Result<(i32, i64, &str), tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Whether the restored server tracks commit timestamps
/// (`track_commit_timestamp`).
async fn commit_timestamps_tracked(client: &Client) -> Result<bool, VerifyError> {
    Ok(client
        .query_one(
            "SELECT current_setting('track_commit_timestamp')::bool",
            &[],
        )
        .await
        .map_err(pg_err("reading track_commit_timestamp"))?
        .get(0))
}

/// The newest commit timestamp in the table; None when
/// `track_commit_timestamp` is off (or the table is empty).
async fn newest_commit(client: &Client) -> Result<Option<DateTime<Utc>>, VerifyError> {
    if !commit_timestamps_tracked(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!("SELECT max(pg_xact_commit_timestamp(xmin)) FROM {TABLE}"),
            &[],
        )
        .await
        .map_err(pg_err("reading commit timestamps"))?;
    Ok(row.get(0))
}

/// The first items of a sequence and its full count.
#[derive(Debug)]
struct Listed<T> {
    first: Vec<T>,
    count: u64,
    limit: usize,
}

impl<T> Listed<T> {
    fn new(limit: usize) -> Listed<T> {
        Listed {
            first: Vec::new(),
            count: 0,
            limit,
        }
    }

    fn push(&mut self, item: T) {
        if self.first.len() < self.limit {
            self.first.push(item);
        }
        self.count += 1;
    }

    fn from_iter(limit: usize, items: impl IntoIterator<Item = T>) -> Listed<T> {
        let mut listed = Listed::new(limit);
        items.into_iter().for_each(|i| listed.push(i));
        listed
    }
}

/// (writer, seq) as text.
struct RowId<W, S>(W, S);

impl<W: Display, S: Display> Display for RowId<W, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writer {} seq {}", self.0, self.1)
    }
}

/// The restored table, row by row, in (writer, seq) order.
struct Scan<'a> {
    ledger: &'a Ledger,
    exists: bool,
    rows: u64,
    hasher: ContentHasher,
    /// Rows the ledger accounts for.
    found: SeqSet,
    /// The highest seq each writer may have.
    possible: BTreeMap<u32, u64>,
    extra: Listed<RowId<i32, i64>>,
    mismatched: Listed<RowId<u32, u64>>,
}

impl<'a> Scan<'a> {
    fn new(ledger: &'a Ledger, exists: bool) -> Scan<'a> {
        Scan {
            ledger,
            exists,
            rows: 0,
            hasher: ContentHasher::new(),
            found: SeqSet::new(),
            possible: ledger
                .spec()
                .writer_ids()
                .map(|w| (w, ledger.max_possible_seq(w)))
                .collect(),
            extra: Listed::new(LIST_LIMIT),
            mismatched: Listed::new(LIST_LIMIT),
        }
    }

    fn row(&mut self, writer: i32, seq: i64, payload: &str) {
        self.rows += 1;
        self.hasher.row(writer, seq, payload);
        let known = u32::try_from(writer).ok().zip(u64::try_from(seq).ok());
        match known {
            Some((w, s)) if s >= 1 && self.possible.get(&w).is_some_and(|&max| s <= max) => {
                self.found.insert(w, s);
                if payload != self.ledger.payload(w, s) {
                    self.mismatched.push(RowId(w, s));
                }
            }
            _ => self.extra.push(RowId(writer, seq)),
        }
    }

    fn outcome(
        self,
        target: Option<DateTime<Utc>>,
        last_commit_time: Option<DateTime<Utc>>,
    ) -> VerifyOutcome {
        let ledger = self.ledger;
        let found = &self.found;
        let expectation = match target {
            Some(t) => ledger.expected_at(t),
            None => ledger.expected_latest(),
        };
        let per_writer: Vec<WriterResult> = expectation
            .per_writer
            .iter()
            .map(|(&w, range)| {
                let max_seq = found.max(w);
                let missing = Listed::from_iter(
                    LIST_LIMIT,
                    found
                        .gaps(w, 1..=max_seq.max(*range.start()))
                        .into_iter()
                        .flatten(),
                );
                WriterResult {
                    writer: w,
                    expected: range.clone(),
                    found: found.count(w),
                    max_seq,
                    missing: missing.first,
                    missing_count: missing.count,
                }
            })
            .collect();
        let lost = Listed::from_iter(LOST_ACKED_LIMIT, expectation.lost_acked(found));
        let counts = per_writer.iter().map(|r| (r.writer, r.found)).collect();
        let expected_hash = ledger.content_hash(&counts);
        let content_hash = self.hasher.finish();
        let nothing_expected = per_writer.iter().all(|r| *r.expected.start() == 0);

        let checks = vec![
            check(
                CheckName::Table,
                self.exists || nothing_expected,
                || {
                    format!(
                        "{TABLE} {}",
                        if self.exists {
                            "exists"
                        } else {
                            "is absent, as allowed"
                        }
                    )
                },
                || format!("{TABLE} is missing"),
            ),
            check(
                CheckName::RowCount,
                per_writer.iter().all(|r| r.expected.contains(&r.found)),
                || format!("{} rows as expected", found_rows(&per_writer)),
                || describe_failing(&per_writer, |r| !r.expected.contains(&r.found)),
            ),
            check(
                CheckName::GapFree,
                per_writer.iter().all(|r| r.found == r.max_seq),
                || "every writer's rows are seq 1..=n".to_string(),
                || describe_failing(&per_writer, |r| r.found != r.max_seq),
            ),
            check(
                CheckName::NoExtraRows,
                self.extra.count == 0,
                || "no row beyond what was sent".to_string(),
                || format!("rows never sent: {}", list(&self.extra)),
            ),
            check(
                CheckName::AckedKept,
                lost.count == 0,
                || "every acknowledged commit is there".to_string(),
                || format!("acknowledged but lost: {}", list_pairs(&lost)),
            ),
            check(
                CheckName::Payloads,
                self.mismatched.count == 0,
                || "every payload matches".to_string(),
                || format!("payloads differ: {}", list(&self.mismatched)),
            ),
            check(
                CheckName::ContentHash,
                content_hash == expected_hash,
                || format!("blake3 {content_hash}"),
                || {
                    format!("restored rows hash to {content_hash}, the ledger's rows for the found counts to {expected_hash}")
                },
            ),
        ];
        VerifyOutcome {
            passed: checks.iter().all(|c| c.passed),
            target,
            exact: expectation.exact,
            rows: self.rows,
            checks,
            per_writer,
            lost_acked: lost.first,
            lost_acked_count: lost.count,
            content_hash,
            last_commit_time,
            cost_s: BTreeMap::new(),
        }
    }
}

/// A check whose detail is `ok()` or `failed()`.
fn check(
    name: CheckName,
    passed: bool,
    ok: impl FnOnce() -> String,
    failed: impl FnOnce() -> String,
) -> Check {
    Check {
        name,
        passed,
        detail: if passed { ok() } else { failed() },
    }
}

fn found_rows(per_writer: &[WriterResult]) -> u64 {
    per_writer.iter().map(|r| r.found).sum()
}

/// The descriptions of the writers matching `failing`, joined.
fn describe_failing(
    per_writer: &[WriterResult],
    failing: impl Fn(&WriterResult) -> bool,
) -> String {
    per_writer
        .iter()
        .filter(|r| failing(r))
        .map(WriterResult::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

fn list<T: Display>(items: &Listed<T>) -> String {
    outcome::list(&items.first, items.count)
}

fn list_pairs(items: &Listed<(u32, u64)>) -> String {
    let shown: Vec<RowId<u32, u64>> = items
        .first
        .iter()
        .take(LIST_LIMIT)
        .map(|&(w, s)| RowId(w, s))
        .collect();
    outcome::list(&shown, items.count)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::workload::{LedgerEntry, Outcome, WorkloadSpec};

    fn t(us: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_000_000 + us).unwrap()
    }

    /// Two writers, each committing seq 1..=4 in windows [100k, 100k+10].
    fn ledger() -> Ledger {
        let spec = WorkloadSpec {
            writers: 2,
            rate_per_second: 10,
            duration: Duration::from_secs(1),
            payload_bytes: 12,
            seed: 5,
            mix: None,
        };
        let entries = (1..=2u32)
            .flat_map(|w| {
                (1..=4u64).map(move |s| {
                    let sent = (s as i64) * 100 + i64::from(w) * 20;
                    LedgerEntry {
                        writer: w,
                        seq: s,
                        sent_at: t(sent),
                        acked_at: Some(t(sent + 10)),
                        outcome: Outcome::Acked,
                    }
                })
            })
            .collect();
        Ledger::new(spec, t(0), entries, BTreeMap::new())
    }

    /// Verifies a table of `rows` (writer, seq) with their true payloads.
    fn verify(
        ledger: &Ledger,
        rows: &[(i32, i64)],
        target: Option<DateTime<Utc>>,
    ) -> VerifyOutcome {
        let mut scan = Scan::new(ledger, true);
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        for (w, s) in rows {
            let payload = ledger.payload(w as u32, s as u64);
            scan.row(w, s, &payload);
        }
        scan.outcome(target, None)
    }

    fn all_rows(upto: i64) -> Vec<(i32, i64)> {
        (1..=2)
            .flat_map(|w| (1..=upto).map(move |s| (w, s)))
            .collect()
    }

    #[test]
    fn a_complete_restore_passes_exactly() {
        let l = ledger();
        let v = verify(&l, &all_rows(4), None);
        assert!(v.passed, "{v}");
        assert!(v.exact);
        assert_eq!(v.rows, 8);
        assert_eq!(
            v.content_hash,
            l.content_hash(&BTreeMap::from([(1, 4), (2, 4)]))
        );
        assert!(
            v.summary().starts_with("passed: 8 rows of 2 writers"),
            "{v}"
        );
        // At a time between seq 2 and 3 of both writers.
        let v = verify(&l, &all_rows(2), Some(t(250)));
        assert!(v.passed && v.exact, "{v}");
    }

    #[test]
    fn a_deleted_row_is_named() {
        let l = ledger();
        let rows: Vec<_> = all_rows(4).into_iter().filter(|&r| r != (2, 3)).collect();
        let v = verify(&l, &rows, None);
        assert!(!v.passed);
        assert_eq!(v.lost_acked, vec![(2, 3)]);
        let failed: Vec<_> = v
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            failed,
            vec![
                CheckName::RowCount,
                CheckName::GapFree,
                CheckName::AckedKept,
                CheckName::ContentHash
            ]
        );
        let text = v.summary();
        assert!(
            text.contains("writer 2: expected 4 rows, found 3; missing seq 3"),
            "{text}"
        );
        assert!(
            text.contains("acknowledged but lost: writer 2 seq 3"),
            "{text}"
        );
        // Lost at the tail: a count problem, not a gap.
        let v = verify(&l, &all_rows(3), None);
        assert_eq!(v.per_writer[0].missing, vec![4]);
        assert!(v.check(CheckName::GapFree).unwrap().passed);
        assert!(!v.check(CheckName::RowCount).unwrap().passed);
    }

    #[test]
    fn extra_rows_and_wrong_payloads_fail() {
        let l = ledger();
        let mut scan = Scan::new(&l, true);
        for (w, s) in all_rows(2) {
            let payload = if (w, s) == (1, 2) {
                "tampered".to_string()
            } else {
                l.payload(w as u32, s as u64)
            };
            scan.row(w, s, &payload);
        }
        scan.row(2, 9, "x");
        scan.row(7, 1, "y");
        let v = scan.outcome(Some(t(250)), None);
        assert!(!v.passed);
        assert_eq!(
            v.check(CheckName::NoExtraRows).unwrap().detail,
            "rows never sent: writer 2 seq 9, writer 7 seq 1"
        );
        assert_eq!(
            v.check(CheckName::Payloads).unwrap().detail,
            "payloads differ: writer 1 seq 2"
        );
        assert!(!v.check(CheckName::ContentHash).unwrap().passed);
        assert!(v.check(CheckName::RowCount).unwrap().passed);
    }

    #[test]
    fn inside_a_commit_window_either_count_passes() {
        let l = ledger();
        // Writer 1's seq 3 window is [320, 330].
        let target = Some(t(325));
        let mut rows = all_rows(2);
        let v = verify(&l, &rows, target);
        assert!(v.passed && !v.exact, "{v}");
        rows.push((1, 3));
        assert!(verify(&l, &rows, target).passed);
        rows.push((1, 4));
        assert!(!verify(&l, &rows, target).passed);
    }

    #[test]
    fn a_missing_table_is_fine_only_when_nothing_is_expected() {
        let l = ledger();
        let v = Scan::new(&l, false).outcome(Some(t(50)), None);
        assert!(v.passed, "{v}");
        let v = Scan::new(&l, false).outcome(None, None);
        assert!(!v.passed);
        assert_eq!(
            v.check(CheckName::Table).unwrap().detail,
            "pgdrill_ledger is missing"
        );
    }
}
