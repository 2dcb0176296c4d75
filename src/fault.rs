//! Deliberate defects for proving that drills can fail: a store wrapper
//! that sabotages WAL uploads. Enabled by `PGDRILL_SABOTAGE` (set by the
//! `pgdrill-sabotaged` engine of a scenario) only in builds with the cargo
//! feature `sabotage`, which the tests turn on (a dev-dependency of the
//! crate on itself) and `cargo build`/`cargo install` leave off; loud on
//! every run where it is active.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;

use crate::backup::layout::{self, WalFileKind};
use crate::backup::store::{ChunkReceiver, Key, ObjectInfo, Store, StoreError};

/// Whether this build can sabotage at all (the cargo feature `sabotage`).
pub const SABOTAGE_BUILT_IN: bool = cfg!(feature = "sabotage");

/// What the sabotaged tool does wrong. `every` counts WAL segments by their
/// number, so separate `wal-push` processes agree on which ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// Report success for every Nth segment without storing it.
    DropEveryNthWal(u32),
    /// Store every Nth segment with one byte flipped.
    CorruptEveryNthWal(u32),
    /// Delta backups pick the pages of visibility-map and free-space-map
    /// forks by LSN, as before issue 9.1 was fixed: a restore gets a stale
    /// map, and index-only scans return deleted rows.
    StaleVisibilityMap,
}

impl Sabotage {
    /// Parses `drop_every_nth_wal:N`, `corrupt_every_nth_wal:N` or
    /// `stale_visibility_map`.
    pub fn parse(s: &str) -> Option<Sabotage> {
        if s.trim() == "stale_visibility_map" {
            return Some(Sabotage::StaleVisibilityMap);
        }
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
            Sabotage::StaleVisibilityMap => "stale_visibility_map".to_string(),
        }
    }

    /// Whether this WAL object is one to sabotage.
    fn hits(self, key: &Key) -> bool {
        let every = match self {
            Sabotage::DropEveryNthWal(n) | Sabotage::CorruptEveryNthWal(n) => n as u64,
            Sabotage::StaleVisibilityMap => return false,
        };
        let Some(name) = layout::wal_name_of(key) else {
            return false;
        };
        if layout::wal_file_kind(name) != Some(WalFileKind::Segment) {
            return false;
        }
        u64::from_str_radix(&name[16..24], 16).is_ok_and(|seg| seg % every == 0)
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
            Sabotage::StaleVisibilityMap => self.inner.put(key, data).await,
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
    async fn confirm_location(&self) -> Result<(), StoreError> {
        self.inner.confirm_location().await
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
        assert_eq!(
            Sabotage::parse("stale_visibility_map"),
            Some(Sabotage::StaleVisibilityMap)
        );
        assert!(Sabotage::parse("explode:3").is_none());
    }
}

/// A limit on the storage's network link, applied with `tc` in the storage
/// container's network namespace (its egress: what restores download).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimit {
    /// Added one-way delay (the `netem` qdisc).
    pub delay: Option<std::time::Duration>,
    /// Bandwidth in kbit/s (an `htb` class).
    pub rate_kbit: Option<u64>,
}

impl LinkLimit {
    /// The `tc` argument lists that apply the limit to device `dev`,
    /// replacing any earlier one.
    pub fn tc_commands(&self, dev: &str) -> Vec<Vec<String>> {
        let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let netem = |parent: &str, d: std::time::Duration| {
            args(&format!(
                "qdisc replace dev {dev} {parent} netem delay {}us",
                d.as_micros()
            ))
        };
        match (self.delay, self.rate_kbit) {
            (delay, Some(rate)) => {
                let mut cmds = vec![
                    args(&format!(
                        "qdisc replace dev {dev} root handle 1: htb default 1"
                    )),
                    args(&format!(
                        "class replace dev {dev} parent 1: classid 1:1 htb rate {rate}kbit"
                    )),
                ];
                cmds.extend(delay.map(|d| netem("parent 1:1 handle 10:", d)));
                cmds
            }
            (Some(d), None) => vec![netem("root", d)],
            (None, None) => vec![args(&format!("qdisc del dev {dev} root"))],
        }
    }
}

impl std::fmt::Display for LinkLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            parts.push(format!("delay {}", humantime::format_duration(d)));
        }
        if let Some(r) = self.rate_kbit {
            parts.push(format!("rate {r} kbit/s"));
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// Whether this host can add delay with `tc netem`; `Err` says why not.
/// Tried in a throwaway network namespace (needs root).
pub fn netem_available() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args([
            "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ])
        .output()
        .map_err(|e| {
            format!("cannot try tc netem (unshare: {e}); it needs root, util-linux and iproute2")
        })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(if said.contains("qdisc kind is unknown") {
        format!("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is off), so network delay cannot be injected here (tc: {said})")
    } else {
        format!("tc netem does not work here: {said}")
    })
}

#[cfg(test)]
mod link_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tc_commands_shape_rate_with_htb_and_delay_with_netem() {
        let both = LinkLimit {
            delay: Some(Duration::from_millis(50)),
            rate_kbit: Some(20_000),
        };
        let cmds: Vec<String> = both
            .tc_commands("eth0")
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "qdisc replace dev eth0 root handle 1: htb default 1",
                "class replace dev eth0 parent 1: classid 1:1 htb rate 20000kbit",
                "qdisc replace dev eth0 parent 1:1 handle 10: netem delay 50000us",
            ]
        );
        let delay = LinkLimit {
            delay: Some(Duration::from_millis(5)),
            rate_kbit: None,
        };
        assert_eq!(
            delay.tc_commands("eth0")[0].join(" "),
            "qdisc replace dev eth0 root netem delay 5000us"
        );
        assert_eq!(both.to_string(), "delay 50ms, rate 20000 kbit/s");
    }
}
