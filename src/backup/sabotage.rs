//! Deliberate defects of the backup tool, for proving that drills can fail
//! (the mutation suite): the catalogue, and a store wrapper that sabotages
//! WAL uploads, beside the real stores. Enabled by `PGDRILL_SABOTAGE` (set by the
//! `pgdrill-sabotaged` engine of a scenario) only in builds with the cargo
//! feature `sabotage`, which the tests turn on (a dev-dependency of the
//! crate on itself) and `cargo build`/`cargo install` leave off; loud on
//! every run where it is active.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;

use super::layout::{self, WalFileKind};
use super::store::{ChunkReceiver, Created, Key, ObjectInfo, Store, StoreError};

/// Whether this build can sabotage at all (the cargo feature `sabotage`).
pub const SABOTAGE_BUILT_IN: bool = cfg!(feature = "sabotage");

/// What the sabotaged tool does wrong: the mutants of the mutation suite
/// (`pgdrill mutants`). `every` counts WAL segments by their
/// number, so separate `wal-push` and `wal-fetch` processes agree on which
/// ones. Scenario files spell it as serde does: `drop_every_nth_wal: N`
/// for the every-Nth defects, the bare name for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sabotage {
    /// Report success for every Nth segment without storing it.
    DropEveryNthWal(u32),
    /// Store every Nth segment with one byte flipped (after checksumming:
    /// wal-fetch refuses it).
    CorruptEveryNthWal(u32),
    /// Flip one byte of every Nth segment before checksumming: the stored
    /// object verifies, only replay can notice.
    AlterEveryNthWal(u32),
    /// Store the first half of every Nth segment (checksummed as such).
    TruncateEveryNthWal(u32),
    /// wal-fetch answers "not found" (exit 74) for every Nth segment, which
    /// ends recovery early.
    HideEveryNthWal(u32),
    /// Delta backups pick the pages of visibility-map and free-space-map
    /// forks by LSN, as before issue 9.1 was fixed: a restore gets a stale
    /// map, and index-only scans return deleted rows.
    StaleVisibilityMap,
    /// backup-push leaves the largest user relation file out of the backup.
    OmitRelationFile,
    /// Delta backups store only appended pages of user relations, none of
    /// the changed ones: the previous backup's stale pages are restored.
    DeltaMissesChanges,
    /// wal-push reports success for `.history` files without storing them.
    DropHistory,
    /// `delete` also removes the WAL the oldest kept backup needs.
    RetentionDeletesNeededWal,
    /// backup-push writes a `backup_label` whose checkpoint location is the
    /// backup's end, not its checkpoint.
    WrongBackupLabel,
    /// backup-fetch writes `recovery_target_time` two seconds late (a
    /// time-zone or rounding bug).
    LateRecoveryTarget,
    /// backup-fetch writes the recovery target as its UTC wall-clock time
    /// without an offset: the server reads it in its own `timezone`, right
    /// only when that is UTC.
    TargetWithoutOffset,
    /// wal-fetch computes the name of the first segment of each 4 GiB
    /// "log" without carrying into the log digits (after
    /// `...00000000000000FF` it asks for `...0000000000000100`), finds
    /// nothing and answers "not found": recovery ends at the boundary.
    NoLogCarry,
    /// backup-fetch writes only its own recovery settings (as before issue
    /// 30 was fixed): settings the backup carries in `postgresql.conf`
    /// (a target left by a point-in-time restore done by hand) stay in
    /// force and stop the restore there.
    CarriedSettingsSteer,
    /// backup-push takes the name its start segment gives without claiming
    /// it (as before issue 30.3 was fixed): two runs that start in one
    /// segment write one backup's objects and both exit 0.
    SharedBackupName,
    /// wal-fetch answers "not found" (exit 74) when the storage fails
    /// (WAL-G issue 1126): PostgreSQL takes it for the end of the archive
    /// and ends recovery early, as if the restore were complete.
    FetchFailureAsMissing,
    /// `delete` takes every backup without a sentinel for a killed run's
    /// leftovers, the one in progress too: a backup-push that overlaps
    /// retention loses its parts.
    RetentionDeletesUnfinished,
    /// backup-fetch pins recovery to the backup's own timeline
    /// (`recovery_target_timeline = 'current'`, PostgreSQL 11's default):
    /// a target on a later timeline is never reached, and the end of the
    /// archive is that of the old timeline.
    BackupTimelineOnly,
    /// Delta backups take the pages changed since the previous backup
    /// *ended* (its finish LSN), not since it began: a page changed while
    /// the previous backup ran, after it was copied, keeps its stale copy,
    /// and a restore from the delta replays WAL only from the delta's
    /// start.
    DeltaFromPreviousEnd,
    /// `backup-fetch --force` writes the backup over the target's contents
    /// without removing them first: what a restore done there before left
    /// (its timeline history and WAL in `pg_wal`) stays, and recovery
    /// follows that restore's timeline instead of the target's.
    ForceKeepsContents,
    /// `wal-verify` counts every segment before the cluster's current one
    /// as due: one the archiver is still storing is reported lost (a
    /// monitor that pages on a busy primary).
    UploadingCountedLost,
    /// wal-push stores a file over a stored one of the same name and other
    /// content instead of refusing it: of two servers promoted to one
    /// timeline, the one that pushes later replaces the other's segments
    /// and the archive mixes their WAL.
    WalPushOverwrites,
}

impl Sabotage {
    /// One of each kind, with the intervals the mutation suite uses.
    pub fn catalogue() -> Vec<Sabotage> {
        vec![
            Sabotage::DropEveryNthWal(3),
            Sabotage::CorruptEveryNthWal(3),
            Sabotage::AlterEveryNthWal(3),
            Sabotage::TruncateEveryNthWal(3),
            Sabotage::HideEveryNthWal(3),
            Sabotage::StaleVisibilityMap,
            Sabotage::OmitRelationFile,
            Sabotage::DeltaMissesChanges,
            Sabotage::DropHistory,
            Sabotage::RetentionDeletesNeededWal,
            Sabotage::WrongBackupLabel,
            Sabotage::LateRecoveryTarget,
            Sabotage::TargetWithoutOffset,
            Sabotage::NoLogCarry,
            Sabotage::CarriedSettingsSteer,
            Sabotage::SharedBackupName,
            Sabotage::FetchFailureAsMissing,
            Sabotage::RetentionDeletesUnfinished,
            Sabotage::BackupTimelineOnly,
            Sabotage::DeltaFromPreviousEnd,
            Sabotage::ForceKeepsContents,
            Sabotage::UploadingCountedLost,
            Sabotage::WalPushOverwrites,
        ]
    }

    /// Parses a [`Sabotage::to_setting`] form: `NAME:N` for the WAL
    /// defects (N at least 1), `NAME` for the others.
    pub fn parse(s: &str) -> Option<Sabotage> {
        let s = s.trim();
        let (kind, n) = match s.split_once(':') {
            Some((kind, n)) => (kind, Some(n.parse::<u32>().ok().filter(|n| *n > 0)?)),
            None => (s, None),
        };
        Some(match (kind, n) {
            ("drop_every_nth_wal", Some(n)) => Sabotage::DropEveryNthWal(n),
            ("corrupt_every_nth_wal", Some(n)) => Sabotage::CorruptEveryNthWal(n),
            ("alter_every_nth_wal", Some(n)) => Sabotage::AlterEveryNthWal(n),
            ("truncate_every_nth_wal", Some(n)) => Sabotage::TruncateEveryNthWal(n),
            ("hide_every_nth_wal", Some(n)) => Sabotage::HideEveryNthWal(n),
            ("stale_visibility_map", None) => Sabotage::StaleVisibilityMap,
            ("omit_relation_file", None) => Sabotage::OmitRelationFile,
            ("delta_misses_changes", None) => Sabotage::DeltaMissesChanges,
            ("drop_history", None) => Sabotage::DropHistory,
            ("retention_deletes_needed_wal", None) => Sabotage::RetentionDeletesNeededWal,
            ("wrong_backup_label", None) => Sabotage::WrongBackupLabel,
            ("late_recovery_target", None) => Sabotage::LateRecoveryTarget,
            ("target_without_offset", None) => Sabotage::TargetWithoutOffset,
            ("no_log_carry", None) => Sabotage::NoLogCarry,
            ("carried_settings_steer", None) => Sabotage::CarriedSettingsSteer,
            ("shared_backup_name", None) => Sabotage::SharedBackupName,
            ("fetch_failure_as_missing", None) => Sabotage::FetchFailureAsMissing,
            ("retention_deletes_unfinished", None) => Sabotage::RetentionDeletesUnfinished,
            ("backup_timeline_only", None) => Sabotage::BackupTimelineOnly,
            ("delta_from_previous_end", None) => Sabotage::DeltaFromPreviousEnd,
            ("force_keeps_contents", None) => Sabotage::ForceKeepsContents,
            ("uploading_counted_lost", None) => Sabotage::UploadingCountedLost,
            ("wal_push_overwrites", None) => Sabotage::WalPushOverwrites,
            _ => return None,
        })
    }

    pub fn to_setting(self) -> String {
        match self {
            Sabotage::DropEveryNthWal(n) => format!("drop_every_nth_wal:{n}"),
            Sabotage::CorruptEveryNthWal(n) => format!("corrupt_every_nth_wal:{n}"),
            Sabotage::AlterEveryNthWal(n) => format!("alter_every_nth_wal:{n}"),
            Sabotage::TruncateEveryNthWal(n) => format!("truncate_every_nth_wal:{n}"),
            Sabotage::HideEveryNthWal(n) => format!("hide_every_nth_wal:{n}"),
            Sabotage::StaleVisibilityMap => "stale_visibility_map".into(),
            Sabotage::OmitRelationFile => "omit_relation_file".into(),
            Sabotage::DeltaMissesChanges => "delta_misses_changes".into(),
            Sabotage::DropHistory => "drop_history".into(),
            Sabotage::RetentionDeletesNeededWal => "retention_deletes_needed_wal".into(),
            Sabotage::WrongBackupLabel => "wrong_backup_label".into(),
            Sabotage::LateRecoveryTarget => "late_recovery_target".into(),
            Sabotage::TargetWithoutOffset => "target_without_offset".into(),
            Sabotage::NoLogCarry => "no_log_carry".into(),
            Sabotage::CarriedSettingsSteer => "carried_settings_steer".into(),
            Sabotage::SharedBackupName => "shared_backup_name".into(),
            Sabotage::FetchFailureAsMissing => "fetch_failure_as_missing".into(),
            Sabotage::RetentionDeletesUnfinished => "retention_deletes_unfinished".into(),
            Sabotage::BackupTimelineOnly => "backup_timeline_only".into(),
            Sabotage::DeltaFromPreviousEnd => "delta_from_previous_end".into(),
            Sabotage::ForceKeepsContents => "force_keeps_contents".into(),
            Sabotage::UploadingCountedLost => "uploading_counted_lost".into(),
            Sabotage::WalPushOverwrites => "wal_push_overwrites".into(),
        }
    }

    /// What the defect does, for the mutation suite's table.
    pub fn description(self) -> &'static str {
        match self {
            Sabotage::DropEveryNthWal(_) => "wal-push exits 0 without storing a segment",
            Sabotage::CorruptEveryNthWal(_) => {
                "a stored segment's bytes flipped after checksumming"
            }
            Sabotage::AlterEveryNthWal(_) => {
                "a segment altered before checksumming (only replay can notice)"
            }
            Sabotage::TruncateEveryNthWal(_) => "a segment stored truncated",
            Sabotage::HideEveryNthWal(_) => "wal-fetch says \"not found\" for a stored segment",
            Sabotage::StaleVisibilityMap => "delta backups pick visibility-map pages by LSN",
            Sabotage::OmitRelationFile => "a relation file left out of the base backup",
            Sabotage::DeltaMissesChanges => "delta backups keep stale copies of changed pages",
            Sabotage::DropHistory => "timeline history files not stored",
            Sabotage::RetentionDeletesNeededWal => "retention deletes WAL a kept backup needs",
            Sabotage::WrongBackupLabel => "backup_label names the wrong checkpoint",
            Sabotage::LateRecoveryTarget => "the recovery target written two seconds late",
            Sabotage::TargetWithoutOffset => "the recovery target written without its UTC offset",
            Sabotage::NoLogCarry => {
                "no carry into the log digits when naming the segment after ...FF"
            }
            Sabotage::CarriedSettingsSteer => {
                "recovery settings carried in postgresql.conf left in force"
            }
            Sabotage::SharedBackupName => "overlapping backup-push runs share a name",
            Sabotage::FetchFailureAsMissing => {
                "wal-fetch says \"not found\" when the storage fails"
            }
            Sabotage::RetentionDeletesUnfinished => {
                "retention deletes the parts of a backup in progress"
            }
            Sabotage::BackupTimelineOnly => "recovery pinned to the backup's own timeline",
            Sabotage::DeltaFromPreviousEnd => {
                "delta backups take pages changed since the previous backup ended"
            }
            Sabotage::ForceKeepsContents => "backup-fetch --force keeps the target's contents",
            Sabotage::UploadingCountedLost => "wal-verify reports segments being archived as lost",
            Sabotage::WalPushOverwrites => {
                "wal-push stores over a file archived with other content"
            }
        }
    }

    /// Why this defect is no defect on PostgreSQL `major`, when it is not
    /// (an equivalent mutant: no drill can kill it there).
    pub fn harmless_on(self, major: u32) -> Option<&'static str> {
        match self {
            // Measured: after VACUUM (FREEZE) and a DELETE on an all-visible
            // page, pageinspect shows the DELETE's LSN on the map page on
            // 18, the VACUUM's on 15 and 16.
            Sabotage::StaleVisibilityMap if major >= 18 => Some(
                "PostgreSQL 18 sets a visibility-map page's LSN when a heap change clears its bits (15 and 16 keep the LSN of the VACUUM that set them), so map pages picked by LSN are current",
            ),
            _ => None,
        }
    }

    /// Whether WAL file `name` is one that an every-Nth defect `n` hits.
    fn nth_segment(n: u32, name: &str) -> bool {
        layout::wal_file_kind(name) == Some(WalFileKind::Segment)
            && u64::from_str_radix(&name[16..24], 16).is_ok_and(|seg| seg % u64::from(n) == 0)
    }

    /// Whether this WAL object is one the store drops or corrupts.
    fn hits(self, key: &Key) -> bool {
        let Some(name) = layout::wal_name_of(key) else {
            return false;
        };
        match self {
            Sabotage::DropEveryNthWal(n) | Sabotage::CorruptEveryNthWal(n) => {
                Sabotage::nth_segment(n, name)
            }
            Sabotage::DropHistory => layout::wal_file_kind(name) == Some(WalFileKind::History),
            _ => false,
        }
    }

    /// The WAL content wal-push stores for `name`: altered or truncated by
    /// those defects, else `data` itself.
    pub fn wal_content(sabotage: Option<Sabotage>, name: &str, data: Bytes) -> Bytes {
        match sabotage {
            Some(Sabotage::AlterEveryNthWal(n)) if Sabotage::nth_segment(n, name) => {
                tracing::warn!(%name, "SABOTAGE: altering the segment before checksumming");
                let mut bytes = data.to_vec();
                // Past the first page's long header (40 bytes), inside the
                // first records: a segment closed by archive_timeout holds
                // little WAL, and the zeros after it are never replayed.
                let at = 100;
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 0x55;
                }
                Bytes::from(bytes)
            }
            Some(Sabotage::TruncateEveryNthWal(n)) if Sabotage::nth_segment(n, name) => {
                tracing::warn!(%name, "SABOTAGE: storing the segment truncated");
                data.slice(..data.len() / 2)
            }
            _ => data,
        }
    }

    /// Whether wal-fetch pretends that `name` is not stored (for
    /// [`Sabotage::NoLogCarry`]: asks for a name that is never stored).
    pub fn hides(sabotage: Option<Sabotage>, name: &str) -> bool {
        let first_of_a_log = || {
            layout::wal_file_kind(name) == Some(WalFileKind::Segment)
                && &name[16..24] == "00000000"
                && &name[8..16] != "00000000"
        };
        match sabotage {
            Some(Sabotage::HideEveryNthWal(n)) => Sabotage::nth_segment(n, name),
            Some(Sabotage::NoLogCarry) => first_of_a_log(),
            _ => false,
        }
    }
}

/// A store that applies a [`Sabotage`] to WAL uploads.
#[derive(Debug)]
pub struct SabotagedStore {
    pub inner: Arc<dyn Store>,
    pub sabotage: Sabotage,
}

impl SabotagedStore {
    /// What an upload of `data` to `key` stores under the sabotage: `None`
    /// when it is dropped (success reported without storing).
    fn mishandled(&self, key: &Key, data: Bytes) -> Option<Bytes> {
        if !self.sabotage.hits(key) {
            return Some(data);
        }
        tracing::warn!(%key, sabotage = ?self.sabotage, "SABOTAGE: deliberately mishandling this upload");
        match self.sabotage {
            Sabotage::CorruptEveryNthWal(_) => {
                let mut bytes = data.to_vec();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x40;
                Some(Bytes::from(bytes))
            }
            _ => None,
        }
    }
}

#[async_trait]
impl Store for SabotagedStore {
    async fn put(&self, key: &Key, data: Bytes) -> Result<(), StoreError> {
        match self.mishandled(key, data) {
            Some(data) => self.inner.put(key, data).await,
            None => Ok(()),
        }
    }
    async fn put_stream(&self, key: &Key, chunks: ChunkReceiver) -> Result<u64, StoreError> {
        self.inner.put_stream(key, chunks).await
    }
    async fn put_new(&self, key: &Key, data: Bytes) -> Result<Created, StoreError> {
        match self.mishandled(key, data) {
            Some(data) => self.inner.put_new(key, data).await,
            None => Ok(Created::Stored),
        }
    }
    async fn head(&self, key: &Key) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &Key, max: u64) -> Result<Bytes, StoreError> {
        self.inner.get(key, max).await
    }
    async fn get_stream(
        &self,
        key: &Key,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        self.inner.get_stream(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn confirm_archive(&self) -> Result<(), StoreError> {
        self.inner.confirm_archive().await
    }
    fn describe(&self) -> String {
        format!(
            "{} (SABOTAGED: {})",
            self.inner.describe(),
            self.sabotage.to_setting()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::codec::Compression;
    use crate::backup::store::DirStore;

    #[tokio::test]
    async fn every_nth_segment_is_dropped_or_corrupted() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(DirStore::new(dir.path().to_path_buf()));
        let drop = SabotagedStore {
            inner: Arc::clone(&inner),
            sabotage: Sabotage::parse("drop_every_nth_wal:5").unwrap(),
        };
        for seg in 1..=10u32 {
            let key = layout::wal_key(&format!("0000000100000000{seg:08X}"), Compression::None);
            drop.put(&key, Bytes::from_static(b"payload"))
                .await
                .unwrap();
        }
        let stored = inner.list("wal_005/").await.unwrap();
        assert_eq!(stored.len(), 8, "segments 5 and 10 dropped");
        let history = layout::wal_key("00000005.history", Compression::None);
        drop.put(&history, Bytes::from_static(b"h")).await.unwrap();
        assert!(
            inner.get(&history, 1 << 20).await.is_ok(),
            "only segments are sabotaged"
        );

        let corrupt = SabotagedStore {
            inner: Arc::clone(&inner),
            sabotage: Sabotage::CorruptEveryNthWal(3),
        };
        let key = layout::wal_key("000000010000000000000003", Compression::None);
        corrupt
            .put(&key, Bytes::from_static(b"abcdef"))
            .await
            .unwrap();
        assert_ne!(
            inner.get(&key, 1 << 30).await.unwrap(),
            Bytes::from_static(b"abcdef")
        );
        assert!(Sabotage::parse("drop_every_nth_wal:0").is_none());
        assert!(Sabotage::parse("stale_visibility_map:2").is_none());
        assert!(Sabotage::parse("drop_every_nth_wal").is_none());
        for mutant in Sabotage::catalogue() {
            assert_eq!(Sabotage::parse(&mutant.to_setting()), Some(mutant));
        }
        assert!(Sabotage::catalogue().len() >= 12);
        assert!(Sabotage::parse("explode:3").is_none());
    }
}
