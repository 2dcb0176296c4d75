//! Writing base backups in WAL-G's format (`PGDRILL_STORAGE_FORMAT=walg`):
//! the pieces that differ from pgdrill's own, which `base::push` puts
//! together in the same order (data tars, `pg_control.tar` read last, the
//! stop, the archive check, the documents, the sentinel last).
//!
//! What WAL-G writes and pgdrill follows (wal-g
//! `internal/databases/postgres/`):
//! - `tar_partitions/part_001.tar.<ext>` ... (`internal/storage_tar_ball.go:44`),
//!   entries named `/` + the path in the data directory, the data
//!   directory itself `/` (`internal/bundle.go:112-117`, `bundle.go:246-262`),
//!   headers as Go's `archive/tar` writes a file's (USTAR: mode, size, mtime);
//! - `pg_control.tar.<ext>` holding `/global/pg_control` (`bundle.go:308-351`),
//!   `backup_label.tar.<ext>` holding `backup_label` and `tablespace_map`
//!   (mode 0600, no time: `bundle.go:357-407`);
//! - a delta stores a paged file its base has as an increment
//!   ([`super::increment`]);
//! - `metadata.json` (`ExtendedMetadataDto`), `files_metadata.json`
//!   (`FilesMetadataDto`), then the V2 sentinel (`BackupSentinelDtoV2`)
//!   last (`backup_push_handler.go:472-489`), with Go's JSON field order.
//!
//! What pgdrill adds where WAL-G never looks: `pgdrill_metadata.json`
//! ([`crate::backup::layout::walg_pgdrill_metadata_key`], pgdrill's
//! record: every tar's and file's BLAKE3) and its digest in the
//! sentinel's extra field `PgdrillMetadataBlake3` (Go's decoder ignores
//! fields it does not know). A restore or `backup-verify` checks every
//! tar against it.

use std::collections::BTreeMap;
use std::io;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// WAL-G's `date_fmt` (`backup_sentinel_dto.go:14`).
const DATE_FMT: &str = "%Y-%m-%dT%H:%M:%S.%fZ";

/// A time as Go's `time.Time` marshals a UTC time: RFC 3339 with the
/// nanoseconds, trailing zeros cut.
pub fn go_time(t: DateTime<Utc>) -> String {
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos > 0 {
        out.push('.');
        out.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Sets a tar header's name as Go's `archive/tar` writes a USTAR one:
/// up to 100 bytes in the name field, a longer one split at a `/` into
/// the 155-byte prefix and the name. (The `tar` crate refuses names
/// with a leading `/`, which WAL-G's entries all have.)
pub fn set_name(header: &mut tar::Header, name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    let ustar = header
        .as_ustar_mut()
        .ok_or_else(|| io::Error::other("a WAL-G tar header must be USTAR"))?;
    let (prefix, rest) = if bytes.len() <= ustar.name.len() {
        (&[][..], bytes)
    } else {
        let split = (0..bytes.len())
            .filter(|&i| bytes[i] == b'/')
            .find(|&i| i <= ustar.prefix.len() && bytes.len() - i - 1 <= ustar.name.len())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name}: too long for a tar header (100 bytes, or 155 + 100 split at a '/')"),
                )
            })?;
        (&bytes[..split], &bytes[split + 1..])
    };
    ustar.name.fill(0);
    ustar.name[..rest.len()].copy_from_slice(rest);
    ustar.prefix.fill(0);
    ustar.prefix[..prefix.len()].copy_from_slice(prefix);
    header.set_cksum();
    Ok(())
}

/// A USTAR header for entry `name` (see [`set_name`]).
pub fn header(
    name: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    mtime: i64,
) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime.max(0) as u64);
    set_name(&mut h, name)?;
    Ok(h)
}

/// One entry of `files_metadata.json` (wal-g
/// `internal/backup_file_description.go:10-16`).
#[derive(Debug, Serialize)]
pub struct FileDescriptionOut {
    #[serde(rename = "IsIncremented")]
    pub incremented: bool,
    #[serde(rename = "IsSkipped")]
    pub skipped: bool,
    #[serde(rename = "MTime")]
    pub mtime: String,
    #[serde(rename = "UpdatesCount")]
    pub updates_count: u64,
}

/// `files_metadata.json` (`backup_sentinel_dto.go:160-164`): every entry
/// by its tar name, and which tar holds which.
#[derive(Debug, Serialize)]
pub struct FilesMetadataOut {
    #[serde(rename = "Files")]
    pub files: BTreeMap<String, FileDescriptionOut>,
    #[serde(rename = "TarFileSets")]
    pub tar_file_sets: BTreeMap<String, Vec<String>>,
}

/// What the two JSON documents and the sentinel say of a backup.
#[derive(Debug)]
pub struct Described {
    pub start_lsn: u64,
    pub finish_lsn: u64,
    /// The previous backup's name, start LSN, full backup and count.
    pub delta: Option<(String, u64, String, u32)>,
    pub pg_version: i32,
    pub system_identifier: u64,
    pub uncompressed_size: i64,
    pub compressed_size: i64,
    pub start_time: DateTime<Utc>,
    pub finish_time: DateTime<Utc>,
    pub hostname: String,
    pub data_dir: String,
    pub is_permanent: bool,
    /// The server's `wal_segment_size`, which WAL-G does not record.
    pub wal_segment_size: u64,
}

/// `metadata.json` (`ExtendedMetadataDto`, `backup_sentinel_dto.go:71-87`).
#[derive(Serialize)]
struct ExtendedMetadataOut<'a> {
    start_time: String,
    finish_time: String,
    date_fmt: &'static str,
    hostname: &'a str,
    data_dir: &'a str,
    pg_version: i32,
    start_lsn: u64,
    finish_lsn: u64,
    is_permanent: bool,
    system_identifier: u64,
    uncompressed_size: i64,
    compressed_size: i64,
}

/// The V2 sentinel (`BackupSentinelDtoV2`, `backup_sentinel_dto.go:17-39`,
/// `:186-194`): the sentinel's fields, then the V2 ones, then pgdrill's.
#[derive(Serialize)]
struct SentinelOut<'a> {
    #[serde(rename = "LSN")]
    lsn: u64,
    #[serde(rename = "DeltaLSN", skip_serializing_if = "Option::is_none")]
    delta_lsn: Option<u64>,
    #[serde(rename = "DeltaFrom", skip_serializing_if = "Option::is_none")]
    delta_from: Option<&'a str>,
    #[serde(rename = "DeltaFullName", skip_serializing_if = "Option::is_none")]
    delta_full_name: Option<&'a str>,
    #[serde(rename = "DeltaCount", skip_serializing_if = "Option::is_none")]
    delta_count: Option<u32>,
    #[serde(rename = "PgVersion")]
    pg_version: i32,
    #[serde(rename = "FinishLSN")]
    finish_lsn: u64,
    #[serde(rename = "SystemIdentifier")]
    system_identifier: u64,
    #[serde(rename = "UncompressedSize")]
    uncompressed_size: i64,
    #[serde(rename = "CompressedSize")]
    compressed_size: i64,
    #[serde(rename = "ChkpNum")]
    chkp_num: Option<u32>,
    #[serde(rename = "Version")]
    version: u32,
    #[serde(rename = "StartTime")]
    start_time: String,
    #[serde(rename = "FinishTime")]
    finish_time: String,
    #[serde(rename = "DateFmt")]
    date_fmt: &'static str,
    #[serde(rename = "Hostname")]
    hostname: &'a str,
    #[serde(rename = "DataDir")]
    data_dir: &'a str,
    #[serde(rename = "IsPermanent")]
    is_permanent: bool,
    #[serde(rename = "PgdrillMetadataBlake3")]
    pgdrill_metadata_blake3: &'a str,
    #[serde(rename = "PgdrillWalSegmentSize")]
    pgdrill_wal_segment_size: u64,
}

impl Described {
    /// `metadata.json` as WAL-G writes it (Go's compact JSON).
    pub fn metadata_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&ExtendedMetadataOut {
            start_time: go_time(self.start_time),
            finish_time: go_time(self.finish_time),
            date_fmt: DATE_FMT,
            hostname: &self.hostname,
            data_dir: &self.data_dir,
            pg_version: self.pg_version,
            start_lsn: self.start_lsn,
            finish_lsn: self.finish_lsn,
            is_permanent: self.is_permanent,
            system_identifier: self.system_identifier,
            uncompressed_size: self.uncompressed_size,
            compressed_size: self.compressed_size,
        })
    }

    /// The V2 sentinel, naming pgdrill's record by its BLAKE3.
    pub fn sentinel_json(&self, pgdrill_metadata_blake3: &str) -> serde_json::Result<Vec<u8>> {
        let delta = self.delta.as_ref();
        serde_json::to_vec(&SentinelOut {
            lsn: self.start_lsn,
            delta_lsn: delta.map(|d| d.1),
            delta_from: delta.map(|d| d.0.as_str()),
            delta_full_name: delta.map(|d| d.2.as_str()),
            delta_count: delta.map(|d| d.3),
            pg_version: self.pg_version,
            finish_lsn: self.finish_lsn,
            system_identifier: self.system_identifier,
            uncompressed_size: self.uncompressed_size,
            compressed_size: self.compressed_size,
            chkp_num: None,
            version: 2,
            start_time: go_time(self.start_time),
            finish_time: go_time(self.finish_time),
            date_fmt: DATE_FMT,
            hostname: &self.hostname,
            data_dir: &self.data_dir,
            is_permanent: self.is_permanent,
            pgdrill_metadata_blake3,
            pgdrill_wal_segment_size: self.wal_segment_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::walg::{ExtendedMetadata, Sentinel};
    use chrono::TimeZone;

    #[test]
    fn times_are_gos() {
        let t = Utc.with_ymd_and_hms(2026, 12, 3, 16, 5, 9).unwrap();
        assert_eq!(go_time(t), "2026-12-03T16:05:09Z");
        let t = t + chrono::Duration::nanoseconds(120_500_000);
        assert_eq!(go_time(t), "2026-12-03T16:05:09.1205Z");
    }

    #[test]
    fn long_names_split_at_a_slash_and_leading_slashes_stay() {
        let mut h = header("/base/5/16384", tar::EntryType::Regular, 3, 0o600, 7).unwrap();
        assert_eq!(&*h.path_bytes(), b"/base/5/16384");
        let long = format!("/pg_replslot/{}/state", "s".repeat(120));
        set_name(&mut h, &long).unwrap();
        assert_eq!(String::from_utf8_lossy(&h.path_bytes()), long);
        let e = set_name(&mut h, &format!("/{}", "x".repeat(120)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long for a tar header"), "{e}");
    }

    /// What pgdrill writes, pgdrill's WAL-G reader reads back.
    #[test]
    fn documents_read_back() {
        let start = Utc.with_ymd_and_hms(2026, 12, 3, 16, 5, 9).unwrap();
        let d = Described {
            start_lsn: 0x3000028,
            finish_lsn: 0x3000100,
            delta: Some((
                "base_000000010000000000000002".into(),
                0x2000028,
                "base_000000010000000000000002".into(),
                1,
            )),
            pg_version: 150004,
            system_identifier: 7,
            uncompressed_size: 10,
            compressed_size: 5,
            start_time: start,
            finish_time: start + chrono::Duration::seconds(3),
            hostname: "pg-0".into(),
            data_dir: "/data".into(),
            is_permanent: true,
            wal_segment_size: 16 << 20,
        };
        let raw = d.sentinel_json("abc").unwrap();
        assert!(super::super::is_walg_sentinel(&raw));
        let s: Sentinel = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            (s.start_lsn, s.finish_lsn, s.delta_count),
            (0x3000028, 0x3000100, Some(1))
        );
        assert_eq!(s.pgdrill_metadata_blake3.as_deref(), Some("abc"));
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.starts_with(r#"{"LSN":50331688,"DeltaLSN":33554472,"DeltaFrom":"#),
            "{text}"
        );
        assert!(
            text.contains(r#""ChkpNum":null,"Version":2,"StartTime":"2026-12-03T16:05:09Z""#),
            "{text}"
        );
        let m: ExtendedMetadata = serde_json::from_slice(&d.metadata_json().unwrap()).unwrap();
        assert!(m.is_permanent);
        assert_eq!(m.finish_time, start + chrono::Duration::seconds(3));
    }
}
