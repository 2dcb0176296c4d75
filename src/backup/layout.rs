//! Where things live in the store (modelled on WAL-G's layout), and WAL
//! file-name arithmetic.
//!
//! ```text
//! <prefix>/
//!   wal_005/
//!     000000010000000000000003.lz4          WAL segment (codec format, see codec.rs)
//!     00000002.history.lz4                  timeline history (never overwritten)
//!     000000010000000000000003.00000028.backup.lz4   backup history file
//!   basebackups_005/
//!     base_000000010000000000000003/
//!       tar_partitions/part_1.tar.lz4       data files, tar, compressed
//!       tar_partitions/part_2.tar.lz4       ...
//!       tar_partitions/pg_control.tar.lz4   global/pg_control, read last
//!       metadata.json                       full metadata incl. file list
//!     base_000000010000000000000003_backup_stop_sentinel.json
//!                                           written LAST: a backup exists
//!                                           only if its sentinel does
//! ```

use std::fmt;

use super::codec::Compression;
use super::store::Key;

pub const WAL_DIR: &str = "wal_005/";
pub const BACKUP_DIR: &str = "basebackups_005/";
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";
pub const PG_CONTROL_PART: &str = "pg_control";

/// Key of a WAL file (segment, `.history`, `.backup`) stored with `compression`.
pub fn wal_key(file_name: &str, compression: Compression) -> Key {
    Key::new(format!("{WAL_DIR}{file_name}.{}", compression.extension()))
}

/// Key of a WAL file stored in WAL-G's format: its compressor's
/// extension, none at all for `none`.
pub fn walg_wal_key(file_name: &str, compression: Compression) -> Key {
    match compression {
        Compression::None => walg_uncompressed_wal_key(file_name),
        c => wal_key(file_name, c),
    }
}

/// Key of a WAL file WAL-G stored uncompressed: the bare name (WAL-G's
/// `none` compression adds no extension).
pub fn walg_uncompressed_wal_key(file_name: &str) -> Key {
    Key::new(format!("{WAL_DIR}{file_name}"))
}

/// Extensions of WAL objects only WAL-G (or WAL-E) writes: read, never
/// written (`walg::WalgCodec`).
pub const WALG_ONLY_EXTENSIONS: [&str; 3] = ["lzma", "gz", "br"];

/// Every key WAL file `name` may be stored under, `preferred` compression
/// first, then the others, WAL-G's own, and its uncompressed one last.
pub fn wal_keys(name: &str, preferred: Compression) -> Vec<Key> {
    std::iter::once(preferred)
        .chain(Compression::ALL.into_iter().filter(|c| *c != preferred))
        .map(|c| wal_key(name, c))
        .chain(
            WALG_ONLY_EXTENSIONS
                .iter()
                .map(|ext| Key::new(format!("{WAL_DIR}{name}.{ext}"))),
        )
        .chain(std::iter::once(walg_uncompressed_wal_key(name)))
        .collect()
}

/// The WAL file name an object key holds, if it is a WAL object (pgdrill's
/// or WAL-G's).
pub fn wal_name_of(key: &Key) -> Option<&str> {
    let rest = key.as_str().strip_prefix(WAL_DIR)?;
    if wal_file_kind(rest).is_some() {
        return Some(rest);
    }
    let (name, ext) = rest.rsplit_once('.')?;
    (Compression::ALL.iter().any(|c| c.extension() == ext) || WALG_ONLY_EXTENSIONS.contains(&ext))
        .then_some(name)
}

pub fn backup_prefix(backup: &str) -> String {
    format!("{BACKUP_DIR}{backup}/")
}

pub fn sentinel_key(backup: &str) -> Key {
    Key::new(format!("{BACKUP_DIR}{backup}{SENTINEL_SUFFIX}"))
}

pub fn metadata_key(backup: &str) -> Key {
    Key::new(format!("{BACKUP_DIR}{backup}/metadata.json"))
}

/// WAL-G's list of a backup's files (`files_metadata.json`).
pub fn walg_files_metadata_key(backup: &str) -> Key {
    Key::new(format!("{BACKUP_DIR}{backup}/files_metadata.json"))
}

/// Where WAL-G keeps a backup's tar files.
pub fn walg_tar_partitions_prefix(backup: &str) -> String {
    format!("{BACKUP_DIR}{backup}/tar_partitions/")
}

/// Key of a tar file of a backup in WAL-G's format (`part_001`,
/// `pg_control`, `backup_label`): `<stem>.tar` and the compressor's
/// extension, none for `none` (wal-g `internal/storage_tar_ball.go:44`,
/// `utility/utility.go:181-186`).
pub fn walg_tar_key(backup: &str, stem: &str, compression: Compression) -> Key {
    let tar = format!("{}{stem}.tar", walg_tar_partitions_prefix(backup));
    Key::new(match compression {
        Compression::None => tar,
        c => format!("{tar}.{}", c.extension()),
    })
}

/// Where pgdrill keeps, beside a backup it wrote in WAL-G's format, its
/// own record of it (a [`crate::backup::catalog::BackupMetadata`]: every
/// tar's and file's BLAKE3), which WAL-G never reads nor rewrites.
pub fn walg_pgdrill_metadata_key(backup: &str) -> Key {
    Key::new(format!("{BACKUP_DIR}{backup}/pgdrill_metadata.json"))
}

/// The claim a `backup-push` run creates (only if absent) on its backup's
/// name before uploading anything: the run that created it owns the name.
pub fn claim_key(backup: &str) -> Key {
    Key::new(format!("{BACKUP_DIR}{backup}/pgdrill_claim.json"))
}

/// Key of a tar part: `part_N` or [`PG_CONTROL_PART`].
pub fn part_key(backup: &str, part: &str, compression: Compression) -> Key {
    Key::new(format!(
        "{BACKUP_DIR}{backup}/tar_partitions/{part}.tar.{}",
        compression.extension()
    ))
}

/// The backup name a sentinel key belongs to.
pub fn backup_of_sentinel(key: &Key) -> Option<&str> {
    let rest = key.as_str().strip_prefix(BACKUP_DIR)?;
    let name = rest.strip_suffix(SENTINEL_SUFFIX)?;
    (!name.contains('/')).then_some(name)
}

/// The backup a key under `basebackups_005/` belongs to (object or sentinel).
pub fn backup_of_key(key: &Key) -> Option<&str> {
    let rest = key.as_str().strip_prefix(BACKUP_DIR)?;
    if let Some(name) = backup_of_sentinel(key) {
        return Some(name);
    }
    rest.split_once('/').map(|(name, _)| name)
}

/// A write-ahead log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/Y` notation.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A WAL segment: timeline and segment number, for a given segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub segno: u64,
}

pub const DEFAULT_WAL_SEGMENT_SIZE: u64 = 16 << 20;

/// The largest WAL file there can be: PostgreSQL's largest
/// `wal_segment_size` (history and backup history files are far smaller).
pub const MAX_WAL_FILE_SIZE: u64 = 1 << 30;

/// The largest a stored WAL object can be: [`MAX_WAL_FILE_SIZE`] plus
/// more than any compressor's worst-case growth (lz4 about 1/255, zstd
/// 1/128) and any encryption's framing (libsodium 17 bytes a chunk,
/// OpenPGP a few a packet) add.
pub const MAX_WAL_OBJECT_SIZE: u64 = MAX_WAL_FILE_SIZE + MAX_WAL_FILE_SIZE / 64 + (1 << 20);

/// The largest backup sentinel read: pgdrill's are a few hundred bytes,
/// but WAL-G's before files_metadata.json listed every file (some 150
/// bytes each).
pub const MAX_SENTINEL_SIZE: u64 = 1 << 30;

/// The largest backup file list read (pgdrill's `metadata.json`, WAL-G's
/// `metadata.json` and `files_metadata.json`): some 200 bytes a file, so
/// room for about 20 million files.
pub const MAX_METADATA_SIZE: u64 = 4 << 30;

fn segments_per_xlog_id(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

impl Segment {
    /// Parses a 24-hex-digit segment file name.
    pub fn parse(name: &str, seg_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..], 16).ok()?;
        let per = segments_per_xlog_id(seg_size);
        (seg < per).then_some(Segment {
            timeline,
            segno: log * per + seg,
        })
    }

    pub fn of_lsn(timeline: u32, lsn: Lsn, seg_size: u64) -> Segment {
        Segment {
            timeline,
            segno: lsn.0 / seg_size,
        }
    }

    pub fn file_name(&self, seg_size: u64) -> String {
        let per = segments_per_xlog_id(seg_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per,
            self.segno % per
        )
    }

    pub fn next(&self) -> Segment {
        Segment {
            timeline: self.timeline,
            segno: self.segno + 1,
        }
    }
}

/// The kinds of file PostgreSQL archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    Segment,
    /// `.partial` segment left by promotion: never a complete segment.
    Partial,
    History,
    BackupHistory,
}

/// Classifies a WAL file name; `None` for anything PostgreSQL never archives.
pub fn wal_file_kind(name: &str) -> Option<WalFileKind> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(name, 24) {
        Some(WalFileKind::Segment)
    } else if name.strip_suffix(".partial").is_some_and(|s| hex(s, 24)) {
        Some(WalFileKind::Partial)
    } else if name.strip_suffix(".history").is_some_and(|s| hex(s, 8)) {
        Some(WalFileKind::History)
    } else if name
        .strip_suffix(".backup")
        .and_then(|s| s.split_once('.'))
        .is_some_and(|(seg, off)| hex(seg, 24) && hex(off, 8))
    {
        Some(WalFileKind::BackupHistory)
    } else {
        None
    }
}

/// The position of a WAL file in the timeline-independent order used by
/// retention: segment-like files compare by their log and segment digits.
pub fn wal_sort_key(name: &str) -> Option<&str> {
    match wal_file_kind(name)? {
        WalFileKind::History => None,
        _ => Some(&name[8..24]),
    }
}

/// Reads the WAL segment size from a segment's first page header
/// (`XLogLongPageHeaderData.xlp_seg_size`), so restores work with any
/// `initdb --wal-segsize`.
pub fn segment_size_from_header(segment: &[u8]) -> Option<u64> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    let info = u16::from_le_bytes(segment.get(2..4)?.try_into().ok()?);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let size = u32::from_le_bytes(segment.get(32..36)?.try_into().ok()?) as u64;
    (size.is_power_of_two() && (1 << 20..=MAX_WAL_FILE_SIZE).contains(&size)).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_for_several_sizes() {
        for size in [1u64 << 20, 16 << 20, 64 << 20, 1 << 30] {
            let s = Segment::parse("0000000200000001000000FF", size);
            let per = 0x1_0000_0000 / size;
            if 0xFF >= per {
                assert!(s.is_none());
                continue;
            }
            let s = s.unwrap();
            assert_eq!(s.file_name(size), "0000000200000001000000FF");
            assert_eq!(s.timeline, 2);
        }
        let last = Segment::parse("0000000100000000000000FF", 16 << 20).unwrap();
        assert_eq!(last.next().file_name(16 << 20), "000000010000000100000000");
        let big = Segment::parse("00000001000000000000003F", 64 << 20).unwrap();
        assert_eq!(big.next().file_name(64 << 20), "000000010000000100000000");
    }

    #[test]
    fn lsn_parse_and_segment() {
        let lsn = Lsn::parse("1/3000028").unwrap();
        assert_eq!(lsn.to_string(), "1/3000028");
        let seg = Segment::of_lsn(1, lsn, 16 << 20);
        assert_eq!(seg.file_name(16 << 20), "000000010000000100000003");
        assert!(Lsn::parse("zz").is_none());
    }

    #[test]
    fn wal_file_kinds() {
        use WalFileKind::*;
        assert_eq!(wal_file_kind("000000010000000000000003"), Some(Segment));
        assert_eq!(
            wal_file_kind("000000010000000000000003.partial"),
            Some(Partial)
        );
        assert_eq!(wal_file_kind("00000002.history"), Some(History));
        assert_eq!(
            wal_file_kind("000000010000000000000003.00000028.backup"),
            Some(BackupHistory)
        );
        assert_eq!(wal_file_kind("RECOVERYXLOG"), None);
        assert_eq!(wal_file_kind("../../etc/passwd"), None);
        assert_eq!(
            wal_sort_key("000000020000000000000003"),
            Some("0000000000000003")
        );
        assert_eq!(wal_sort_key("00000002.history"), None);
    }

    #[test]
    fn store_keys() {
        let k = wal_key("000000010000000000000003", Compression::Lz4);
        assert_eq!(k.as_str(), "wal_005/000000010000000000000003.lz4");
        assert_eq!(wal_name_of(&k), Some("000000010000000000000003"));
        assert_eq!(wal_name_of(&Key::new("wal_005/x.tmp")), None);
        let bare = walg_uncompressed_wal_key("00000002.history");
        assert_eq!(bare.as_str(), "wal_005/00000002.history");
        assert_eq!(wal_name_of(&bare), Some("00000002.history"));
        assert_eq!(
            wal_keys("000000010000000000000003", Compression::Zstd)
                .iter()
                .map(Key::as_str)
                .collect::<Vec<_>>(),
            [
                "wal_005/000000010000000000000003.zst",
                "wal_005/000000010000000000000003.lz4",
                "wal_005/000000010000000000000003.raw",
                "wal_005/000000010000000000000003.lzma",
                "wal_005/000000010000000000000003.gz",
                "wal_005/000000010000000000000003.br",
                "wal_005/000000010000000000000003",
            ]
        );
        let lzma = Key::new("wal_005/000000010000000000000003.lzma");
        assert_eq!(wal_name_of(&lzma), Some("000000010000000000000003"));
        let s = sentinel_key("base_000000010000000000000003");
        assert_eq!(
            s.as_str(),
            "basebackups_005/base_000000010000000000000003_backup_stop_sentinel.json"
        );
        assert_eq!(
            backup_of_sentinel(&s),
            Some("base_000000010000000000000003")
        );
        let p = part_key("base_X", "part_1", Compression::Zstd);
        assert_eq!(
            p.as_str(),
            "basebackups_005/base_X/tar_partitions/part_1.tar.zst"
        );
        assert_eq!(backup_of_key(&p), Some("base_X"));
        assert_eq!(backup_of_sentinel(&p), None);
        assert_eq!(backup_of_key(&s), Some("base_000000010000000000000003"));
    }

    #[test]
    fn segment_size_is_read_from_long_page_header() {
        let mut page = vec![0u8; 64];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        page[32..36].copy_from_slice(&(64u32 << 20).to_le_bytes());
        assert_eq!(segment_size_from_header(&page), Some(64 << 20));
        page[2] = 0;
        assert_eq!(segment_size_from_header(&page), None);
    }
}
