//! Deliberate defects for proving that drills can fail: a store wrapper
//! that sabotages WAL uploads. Enabled only by `PGDRILL_SABOTAGE` (set by
//! the `pgdrill-sabotaged` engine of a scenario), and loud when active.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;

use crate::backup::layout::{self, WalFileKind};
use crate::backup::store::{ChunkReceiver, Key, ObjectInfo, Store, StoreError};

/// What the sabotaged tool does wrong. `every` counts WAL segments by their
/// number, so separate `wal-push` processes agree on which ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// Report success for every Nth segment without storing it.
    DropEveryNthWal(u32),
    /// Store every Nth segment with one byte flipped.
    CorruptEveryNthWal(u32),
}

impl Sabotage {
    /// Parses `drop_every_nth_wal:N` or `corrupt_every_nth_wal:N`.
    pub fn parse(s: &str) -> Option<Sabotage> {
        let (kind, n) = s.trim().split_once(':')?;
        let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
        match kind {
            "drop_every_nth_wal" => Some(Sabotage::DropEveryNthWal(n)),
            "corrupt_every_nth_wal" => Some(Sabotage::CorruptEveryNthWal(n)),
            _ => None,
        }
    }

    pub fn to_setting(self) -> String {
        match self {
            Sabotage::DropEveryNthWal(n) => format!("drop_every_nth_wal:{n}"),
            Sabotage::CorruptEveryNthWal(n) => format!("corrupt_every_nth_wal:{n}"),
        }
    }

    fn every(self) -> u64 {
        match self {
            Sabotage::DropEveryNthWal(n) | Sabotage::CorruptEveryNthWal(n) => n as u64,
        }
    }

    /// Whether this WAL object is one to sabotage.
    fn hits(self, key: &Key) -> bool {
        let Some(name) = layout::wal_name_of(key) else {
            return false;
        };
        if layout::wal_file_kind(name) != Some(WalFileKind::Segment) {
            return false;
        }
        u64::from_str_radix(&name[16..24], 16).is_ok_and(|seg| seg % self.every() == 0)
    }
}

/// A store that applies a [`Sabotage`] to WAL uploads.
#[derive(Debug)]
pub struct SabotagedStore {
    pub inner: Arc<dyn Store>,
    pub sabotage: Sabotage,
}

#[async_trait]
impl Store for SabotagedStore {
    async fn put(&self, key: &Key, data: Bytes) -> Result<(), StoreError> {
        if !self.sabotage.hits(key) {
            return self.inner.put(key, data).await;
        }
        tracing::warn!(%key, sabotage = ?self.sabotage, "SABOTAGE: deliberately mishandling this upload");
        match self.sabotage {
            Sabotage::DropEveryNthWal(_) => Ok(()),
            Sabotage::CorruptEveryNthWal(_) => {
                let mut bytes = data.to_vec();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x40;
                self.inner.put(key, Bytes::from(bytes)).await
            }
        }
    }
    async fn put_stream(&self, key: &Key, chunks: ChunkReceiver) -> Result<u64, StoreError> {
        self.inner.put_stream(key, chunks).await
    }
    async fn head(&self, key: &Key) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &Key) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
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
            inner.get(&history).await.is_ok(),
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
            inner.get(&key).await.unwrap(),
            Bytes::from_static(b"abcdef")
        );
        assert!(Sabotage::parse("drop_every_nth_wal:0").is_none());
        assert!(Sabotage::parse("explode:3").is_none());
    }
}
