//! The client-side ledger of every transaction the writers sent, and what it
//! implies about a restored cluster.
//!
//! Recovery to a target time replays commits whose commit timestamp is at or
//! before the target. A commit's timestamp lies inside its commit window
//! `[sent_at, acked_at]` (both taken from the same clock as the server's,
//! truncated to microseconds like PostgreSQL's), so:
//! - a row acknowledged at or before the target must be restored;
//! - a row sent after the target must not be;
//! - a row whose window contains the target (sent at or before it, not yet
//!   acknowledged) may or may not be.
//!
//! Each writer commits one row at a time, so its windows do not overlap and
//! at most one row per writer is uncertain: the expectation per writer is an
//! exact count or a range of two.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;

use super::content::{payload, ContentHasher};
use super::ddl::DdlLog;
use super::seqs::SeqSet;
use super::WorkloadSpec;

/// How a transaction ended, as far as the client knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server acknowledged the commit.
    Acked,
    /// The server rejected the transaction with an error: it did not commit.
    Failed(String),
    /// No answer (connection lost mid-commit, or none before the stop
    /// grace ran out): it may or may not have committed.
    Unknown(String),
}

/// One transaction: the row (`writer`, `seq`) and its commit window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// Writer number, from 1.
    pub writer: u32,
    /// The row's sequence number within its writer, from 1.
    pub seq: u64,
    /// Just before the statement was sent.
    pub sent_at: DateTime<Utc>,
    /// When the server acknowledged; set exactly when `outcome` is `Acked`.
    pub acked_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: Outcome,
}

impl LedgerEntry {
    /// Whether the row may exist in some restore (it was not rejected).
    fn may_commit(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed(_))
    }

    /// The acknowledgement time when acknowledged.
    fn acked(&self) -> Option<DateTime<Utc>> {
        match self.outcome {
            Outcome::Acked => self.acked_at,
            _ => None,
        }
    }
}

/// The rows a restore must hold: per writer the allowed number of rows
/// (the rows being seq 1..=n).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// Allowed row counts for every writer of the workload.
    pub per_writer: BTreeMap<u32, RangeInclusive<u64>>,
    /// Whether every writer's count is exact.
    pub exact: bool,
}

impl Expectation {
    /// Rows that were acknowledged by the target (seq 1..=min of their
    /// writer) but are absent from `found`, in (writer, seq) order.
    pub fn lost_acked(&self, found: &SeqSet) -> Vec<(u32, u64)> {
        self.per_writer
            .iter()
            .flat_map(|(&w, range)| {
                found
                    .gaps(w, 1..=*range.start())
                    .into_iter()
                    .flatten()
                    .map(move |seq| (w, seq))
            })
            .collect()
    }
}

/// Counts for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerSummary {
    /// Writers started.
    pub writers: u32,
    /// Transactions sent.
    pub sent: u64,
    /// Of those, acknowledged.
    pub acked: u64,
    /// Of those, rejected by the server.
    pub failed: u64,
    /// Of those, with no answer.
    pub unknown: u64,
    /// When the workload started.
    pub started_at: DateTime<Utc>,
    /// The first transaction's send time.
    pub first_sent_at: Option<DateTime<Utc>>,
    /// The last acknowledgement.
    pub last_acked_at: Option<DateTime<Utc>>,
    /// Why writers stopped early, by writer.
    pub writer_errors: BTreeMap<u32, String>,
    /// The DDL task's operations (with `ddl_every`), each with when it was
    /// sent and acknowledged, and why it stopped early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddl: Option<DdlLog>,
}

/// Every transaction of one workload run, in (writer, seq) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ledger {
    spec: WorkloadSpec,
    started_at: DateTime<Utc>,
    entries: Vec<LedgerEntry>,
    writer_errors: BTreeMap<u32, String>,
    ddl: DdlLog,
}

impl Ledger {
    /// A ledger of `entries` (any order) written under `spec` from
    /// `started_at`; `writer_errors` says why writers stopped early.
    pub fn new(
        spec: WorkloadSpec,
        started_at: DateTime<Utc>,
        mut entries: Vec<LedgerEntry>,
        writer_errors: BTreeMap<u32, String>,
    ) -> Ledger {
        entries.sort_by_key(|e| (e.writer, e.seq));
        Ledger {
            spec,
            started_at,
            entries,
            writer_errors,
            ddl: DdlLog::default(),
        }
    }

    /// This ledger with the DDL task's record.
    pub fn with_ddl(mut self, ddl: DdlLog) -> Ledger {
        self.ddl = ddl;
        self
    }

    /// The DDL task's record (empty without one).
    pub fn ddl(&self) -> &DdlLog {
        &self.ddl
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// When the workload started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// All transactions, in (writer, seq) order.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// Why writers stopped before the deadline or stop, by writer.
    pub fn writer_errors(&self) -> &BTreeMap<u32, String> {
        &self.writer_errors
    }

    /// Acknowledged transactions.
    pub fn acked_count(&self) -> u64 {
        self.entries.iter().filter(|e| e.acked().is_some()).count() as u64
    }

    pub fn summary(&self) -> LedgerSummary {
        let count =
            |f: fn(&Outcome) -> bool| self.entries.iter().filter(|e| f(&e.outcome)).count() as u64;
        LedgerSummary {
            writers: self.spec.writers,
            sent: self.entries.len() as u64,
            acked: count(|o| matches!(o, Outcome::Acked)),
            failed: count(|o| matches!(o, Outcome::Failed(_))),
            unknown: count(|o| matches!(o, Outcome::Unknown(_))),
            started_at: self.started_at,
            first_sent_at: self.entries.iter().map(|e| e.sent_at).min(),
            last_acked_at: self.entries.iter().filter_map(LedgerEntry::acked).max(),
            writer_errors: self.writer_errors.clone(),
            ddl: (self.ddl != DdlLog::default()).then(|| self.ddl.clone()),
        }
    }

    /// Acknowledged commits in each whole second from `start` (index 0:
    /// `[start, start + 1 s)`), up to the last acknowledgement; for the
    /// report's timeline chart.
    pub fn acked_per_second(&self, start: DateTime<Utc>) -> Vec<u32> {
        let mut buckets: Vec<u32> = Vec::new();
        for at in self.entries.iter().filter_map(LedgerEntry::acked) {
            let Ok(i) = usize::try_from((at - start).num_seconds()) else {
                continue;
            };
            if buckets.len() <= i {
                buckets.resize(i + 1, 0);
            }
            buckets[i] += 1;
        }
        buckets
    }

    /// The earliest acknowledgement of a transaction (a writer's or the DDL
    /// task's) sent after `t`: its commit is after `t`, so recovery to `t`
    /// stopped at a commit made by then.
    pub fn first_ack_of_those_sent_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let writers = self
            .entries
            .iter()
            .filter(|e| e.sent_at > t)
            .filter_map(LedgerEntry::acked);
        let ddl = self
            .ddl
            .events
            .iter()
            .filter(|e| e.sent_at > t)
            .filter_map(|e| e.acked_at);
        writers.chain(ddl).min()
    }

    /// When transaction (`writer`, `seq`) was acknowledged, if it was.
    pub fn acked_at(&self, writer: u32, seq: u64) -> Option<DateTime<Utc>> {
        let entries = self.of_writer(writer);
        let i = entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        entries[i].acked()
    }

    /// Writer numbers (see [`WorkloadSpec::writer_ids`]).
    fn writer_ids(&self) -> RangeInclusive<u32> {
        self.spec.writer_ids()
    }

    /// The transactions of `writer`, in seq order.
    fn of_writer(&self, writer: u32) -> &[LedgerEntry] {
        let lo = self.entries.partition_point(|e| e.writer < writer);
        let hi = self.entries.partition_point(|e| e.writer <= writer);
        &self.entries[lo..hi]
    }

    /// The highest seq `writer` may have in any restore (0 when none).
    pub fn max_possible_seq(&self, writer: u32) -> u64 {
        self.of_writer(writer)
            .iter()
            .rev()
            .find(|e| e.may_commit())
            .map_or(0, |e| e.seq)
    }

    /// What a restore with recovery target time `target` must hold.
    pub fn expected_at(&self, target: DateTime<Utc>) -> Expectation {
        let per_writer: BTreeMap<u32, RangeInclusive<u64>> = self
            .writer_ids()
            .map(|w| {
                let entries = self.of_writer(w);
                // Acknowledged rows are a prefix, in acknowledgement order;
                // sent_at rises with seq.
                let min = entries.partition_point(|e| e.acked().is_some_and(|a| a <= target));
                let max = entries.partition_point(|e| e.sent_at <= target);
                let max = entries[..max]
                    .iter()
                    .rposition(LedgerEntry::may_commit)
                    .map_or(0, |i| i + 1);
                (w, min as u64..=(max.max(min)) as u64)
            })
            .collect();
        let exact = per_writer.values().all(|r| r.start() == r.end());
        Expectation { per_writer, exact }
    }

    /// What a restore to the end of the archived WAL must hold, assuming
    /// the archive has everything: every acknowledged row, and possibly the
    /// rows whose outcome is unknown.
    pub fn expected_latest(&self) -> Expectation {
        self.expected_at(DateTime::<Utc>::MAX_UTC)
    }

    /// The acknowledged transaction with the latest acknowledgement at or
    /// before `t`.
    pub fn last_acked_before(&self, t: DateTime<Utc>) -> Option<&LedgerEntry> {
        self.writer_ids()
            .filter_map(|w| {
                let entries = self.of_writer(w);
                let n = entries.partition_point(|e| e.acked().is_some_and(|a| a <= t));
                n.checked_sub(1).map(|i| &entries[i])
            })
            .max_by_key(|e| e.acked_at)
    }

    /// The times in `[from, to]` (microsecond resolution) at which no commit
    /// window is open, i.e. the targets with an exact expectation, as
    /// disjoint ascending ranges.
    pub fn quiet_intervals(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<RangeInclusive<DateTime<Utc>>> {
        let (lo, hi) = (from.timestamp_micros(), to.timestamp_micros());
        if lo > hi {
            return Vec::new();
        }
        // A target t is uncertain for an entry when sent_at <= t < acked_at
        // (never acknowledged: no end).
        let mut open: Vec<(i64, i64)> = self
            .entries
            .iter()
            .filter(|e| e.may_commit())
            .map(|e| {
                let end = e.acked().map_or(i64::MAX, |a| a.timestamp_micros() - 1);
                (e.sent_at.timestamp_micros(), end)
            })
            .filter(|(s, e)| s <= e)
            .collect();
        open.sort_unstable();
        let mut quiet = Vec::new();
        let mut next = Some(lo);
        for (s, e) in open {
            let Some(n) = next else { break };
            if s > hi {
                break;
            }
            if s > n {
                quiet.push((n, s - 1));
            }
            // Quiet again once this window closes (never if it does not).
            if e >= n {
                next = e.checked_add(1).filter(|&m| m <= hi);
            }
        }
        if let Some(n) = next {
            quiet.push((n, hi));
        }
        quiet
            .into_iter()
            .filter_map(|(a, b)| Some(micros(a)?..=micros(b)?))
            .collect()
    }

    /// A target time in `[from, to]`, uniform over the quiet times (see
    /// [`Ledger::quiet_intervals`]) so its expectation is exact; uniform
    /// over the whole span when no time is quiet. None when `from > to`.
    pub fn pick_target<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if from > to {
            return None;
        }
        let quiet = self.quiet_intervals(from, to);
        let spans: Vec<(i64, i64)> = if quiet.is_empty() {
            vec![(from.timestamp_micros(), to.timestamp_micros())]
        } else {
            quiet
                .iter()
                .map(|r| (r.start().timestamp_micros(), r.end().timestamp_micros()))
                .collect()
        };
        let len = |(a, b): (i64, i64)| b.abs_diff(a) + 1;
        let total: u64 = spans.iter().map(|&s| len(s)).sum();
        let mut k = rng.random_range(0..total);
        for &(a, b) in &spans {
            if k < len((a, b)) {
                return micros(a.checked_add_unsigned(k)?);
            }
            k -= len((a, b));
        }
        None
    }

    /// The payload of row (`writer`, `seq`).
    pub fn payload(&self, writer: u32, seq: u64) -> String {
        payload(self.spec.seed, writer, seq, self.spec.payload_bytes)
    }

    /// The content hash of rows 1..=n of each writer, for `counts` of
    /// writer to n; must equal the hash of a restored table holding them.
    pub fn content_hash(&self, counts: &BTreeMap<u32, u64>) -> String {
        let mut hasher = ContentHasher::new();
        for (&w, &n) in counts {
            for seq in 1..=n {
                hasher.row(w, seq, &self.payload(w, seq));
            }
        }
        hasher.finish()
    }
}

/// The time `us` microseconds after the Unix epoch.
fn micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

#[cfg(test)]
impl Ledger {
    /// A ledger of one writer's `entries` from `started` (1 commit/s for
    /// 30 s), for the tests of what reads ledgers.
    pub(crate) fn of_one_writer(started: DateTime<Utc>, entries: Vec<LedgerEntry>) -> Ledger {
        let spec = WorkloadSpec {
            writers: 1,
            rate_per_second: 1,
            duration: std::time::Duration::from_secs(30),
            payload_bytes: 8,
            seed: 1,
            mix: None,
        };
        Ledger::new(spec, started, entries, Default::default())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;

    use super::*;

    /// Micros since an arbitrary epoch as a time.
    fn t(us: i64) -> DateTime<Utc> {
        micros(1_700_000_000_000_000 + us).unwrap()
    }

    fn entry(writer: u32, seq: u64, sent: i64, acked: Option<i64>) -> LedgerEntry {
        LedgerEntry {
            writer,
            seq,
            sent_at: t(sent),
            acked_at: acked.map(t),
            outcome: match acked {
                Some(_) => Outcome::Acked,
                None => Outcome::Unknown("connection closed".into()),
            },
        }
    }

    fn spec(writers: u32) -> WorkloadSpec {
        WorkloadSpec {
            writers,
            rate_per_second: 10,
            duration: Duration::from_secs(1),
            payload_bytes: 16,
            seed: 99,
            mix: None,
        }
    }

    /// Writer 1 commits in [0,10], [100,110], [200,210]; writer 2 in
    /// [50,60], [150,160] and then loses its connection sending at 250.
    fn ledger() -> Ledger {
        Ledger::new(
            spec(3),
            t(0),
            vec![
                entry(2, 3, 250, None),
                entry(1, 1, 0, Some(10)),
                entry(1, 2, 100, Some(110)),
                entry(2, 1, 50, Some(60)),
                entry(1, 3, 200, Some(210)),
                entry(2, 2, 150, Some(160)),
            ],
            BTreeMap::from([(2, "connection closed".to_string())]),
        )
    }

    fn ranges(e: &Expectation) -> Vec<(u64, u64)> {
        e.per_writer
            .values()
            .map(|r| (*r.start(), *r.end()))
            .collect()
    }

    #[test]
    fn acknowledgements_are_counted_per_second_and_found_by_row() {
        let second = 1_000_000;
        let l = Ledger::new(
            spec(2),
            t(0),
            vec![
                entry(1, 1, 0, Some(10)),
                entry(1, 2, 20, Some(second - 1)),
                entry(2, 1, 5, Some(2 * second + 7)),
                entry(2, 2, 3 * second, None),
                // Before the start: not charted.
                entry(1, 3, -5 * second, Some(-second)),
            ],
            BTreeMap::new(),
        );
        assert_eq!(l.acked_per_second(t(0)), vec![2, 0, 1]);
        assert_eq!(l.acked_at(2, 1), Some(t(2 * second + 7)));
        assert_eq!(l.acked_at(2, 2), None, "not acknowledged");
        assert_eq!(l.acked_at(3, 1), None, "no such writer");
        assert_eq!(l.first_ack_of_those_sent_after(t(6)), Some(t(second - 1)));
        assert_eq!(l.first_ack_of_those_sent_after(t(4)), Some(t(second - 1)));
        assert_eq!(
            l.first_ack_of_those_sent_after(t(20)),
            None,
            "only an unanswered one"
        );
        assert_eq!(
            Ledger::new(spec(1), t(0), Vec::new(), BTreeMap::new()).acked_per_second(t(0)),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn expectation_is_exact_between_commit_windows() {
        let l = ledger();
        let e = l.expected_at(t(70));
        assert!(e.exact);
        assert_eq!(ranges(&e), vec![(1, 1), (1, 1), (0, 0)]);
        // Acknowledged exactly at the target: in.
        let e = l.expected_at(t(110));
        assert!(e.exact);
        assert_eq!(ranges(&e), vec![(2, 2), (1, 1), (0, 0)]);
        assert_eq!(ranges(&l.expected_at(t(-1))), vec![(0, 0); 3]);
    }

    #[test]
    fn expectation_is_a_range_inside_a_commit_window() {
        let l = ledger();
        // Sent exactly at the target: its commit may carry that timestamp.
        let e = l.expected_at(t(100));
        assert!(!e.exact);
        assert_eq!(ranges(&e), vec![(1, 2), (1, 1), (0, 0)]);
        let e = l.expected_at(t(155));
        assert_eq!(ranges(&e), vec![(2, 2), (1, 2), (0, 0)]);
        // The unknown commit stays uncertain for ever after.
        let e = l.expected_at(t(1_000_000));
        assert!(!e.exact);
        assert_eq!(ranges(&e), vec![(3, 3), (2, 3), (0, 0)]);
        assert_eq!(l.expected_latest(), e);
    }

    #[test]
    fn failed_transactions_are_never_expected() {
        let mut failed = entry(1, 2, 100, None);
        failed.outcome = Outcome::Failed("duplicate key".into());
        let l = Ledger::new(
            spec(1),
            t(0),
            vec![entry(1, 1, 0, Some(10)), failed],
            BTreeMap::new(),
        );
        let e = l.expected_latest();
        assert!(e.exact);
        assert_eq!(ranges(&e), vec![(1, 1)]);
        assert_eq!(l.max_possible_seq(1), 1);
        assert_eq!(l.quiet_intervals(t(0), t(300)), vec![t(10)..=t(300)]);
    }

    #[test]
    fn quiet_intervals_avoid_every_open_window() {
        let l = ledger();
        assert_eq!(
            l.quiet_intervals(t(-5), t(400)),
            vec![
                t(-5)..=t(-1),
                t(10)..=t(49),
                t(60)..=t(99),
                t(110)..=t(149),
                t(160)..=t(199),
                t(210)..=t(249),
            ]
        );
        assert_eq!(l.quiet_intervals(t(102), t(108)), vec![]);
        assert_eq!(l.quiet_intervals(t(105), t(120)), vec![t(110)..=t(120)]);
    }

    #[test]
    fn picked_targets_are_exact_when_quiet_time_exists() {
        let l = ledger();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let target = l.pick_target(&mut rng, t(0), t(300)).unwrap();
            assert!(target >= t(0) && target <= t(300));
            assert!(l.expected_at(target).exact, "{target}");
        }
        // No quiet time: anywhere in the span, inexact.
        let target = l.pick_target(&mut rng, t(102), t(108)).unwrap();
        assert!(target >= t(102) && target <= t(108));
        assert!(!l.expected_at(target).exact);
        assert_eq!(l.pick_target(&mut rng, t(5), t(4)), None);
        // Same seed, same choice.
        let pick = |seed| l.pick_target(&mut rand::rngs::StdRng::seed_from_u64(seed), t(0), t(300));
        assert_eq!(pick(7), pick(7));
    }

    #[test]
    fn last_acked_and_lost_acked() {
        let l = ledger();
        assert_eq!(l.last_acked_before(t(9)), None);
        assert_eq!(
            l.last_acked_before(t(160)).map(|e| (e.writer, e.seq)),
            Some((2, 2))
        );
        assert_eq!(
            l.last_acked_before(t(999)).map(|e| (e.writer, e.seq)),
            Some((1, 3))
        );
        assert_eq!(l.acked_count(), 5);
        let s = l.summary();
        assert_eq!((s.sent, s.acked, s.failed, s.unknown), (6, 5, 0, 1));
        assert_eq!(s.last_acked_at, Some(t(210)));

        let mut found = SeqSet::new();
        for (w, q) in [(1, 1), (1, 3), (2, 1), (2, 2), (2, 3)] {
            found.insert(w, q);
        }
        let latest = l.expected_latest();
        assert_eq!(latest.lost_acked(&found), vec![(1, 2)]);
        assert_eq!(l.expected_at(t(50)).lost_acked(&found), vec![]);
    }

    #[test]
    fn content_hash_is_stable_and_depends_on_every_row() {
        let l = ledger();
        let counts = BTreeMap::from([(1, 3), (2, 2), (3, 0)]);
        let h = l.content_hash(&counts);
        assert_eq!(h, l.content_hash(&counts));
        let mut manual = ContentHasher::new();
        for (w, q) in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)] {
            manual.row(w, q, &payload(99, w, q, 16));
        }
        assert_eq!(h, manual.finish());
        assert_ne!(h, l.content_hash(&BTreeMap::from([(1, 3), (2, 1)])));
        // Pinned: the encoding and payloads must not drift between versions.
        assert_eq!(
            l.content_hash(&BTreeMap::from([(1, 1)])),
            blake3::hash(format!("1|1|{}\n", payload(99, 1, 1, 16)).as_bytes())
                .to_hex()
                .to_string()
        );
    }
}
