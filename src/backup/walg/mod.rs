//! WAL-G's on-storage format: WAL files WAL-G archived, which carry no
//! pgdrill header or trailer, read and (with `PGDRILL_STORAGE_FORMAT=walg`)
//! written; its backups read ([`restore`]) and written ([`write`]).
//!
//! WAL-G stores a WAL file as `wal_005/<name>.<ext>`, the file compressed
//! as one stream and nothing else (wal-g `internal/uploader.go:152-166`:
//! `CompressAndEncrypt`, then the name plus the compressor's extension):
//! - `lz4`: one LZ4 frame as pierrec/lz4 v4 writes it by default (wal-g
//!   `internal/compression/lz4/compressor.go:17-19`; pierrec/lz4
//!   `options.go:30-31`: 4 MiB blocks, content checksum on);
//! - `zst`: one zstd frame (wal-g `internal/compression/zstd/compressor.go:21-33`,
//!   klauspost/compress, which writes the frame checksum by default);
//! - no extension for `none` (wal-g `internal/compression/none/compressor.go:11`,
//!   `utility/utility.go:181-186`: no dangling dot);
//! - `lzma`: LZMA "alone" as ulikunitz/xz's `lzma.NewWriter` writes it
//!   (wal-g `internal/compression/lzma/compressor.go:18`: unknown size,
//!   end marker), one of WAL-G's default compressors;
//! - `br`: brotli (wal-g `internal/compression/brotli/compressor.go:22`,
//!   built with the `brotli` tag), and `gz`, which WAL-G only reads (WAL-E's).
//!
//! WAL-G's reader tries each extension, then the bare name (wal-g
//! `internal/fetch_helper.go:189-213`); so does [`super::wal`]. What is
//! verified, as these objects have no pgdrill checksum: the frame's own
//! checksum (lz4, zstd, gzip), and for segments the intrinsic checks of
//! [`check_segment`]. An uncompressed, LZMA or brotli object has only the
//! latter (those formats carry no checksum): a flipped byte past the page
//! headers is left to replay's record CRCs.
//! OpenPGP-encrypted WAL-G objects are read with the configured key, as
//! pgdrill's own are (WAL-G encrypts the compressed stream:
//! wal-g `internal/compress_and_encrypt.go:34-53`: compress, then encrypt;
//! `internal/crypto/openpgp/crypter.go:122`, go-crypto with no compression);
//! gpg output with a compression packet reads too, and so do its
//! libsodium objects (`crypto/secretstream.rs`).
//!
//! WAL-G's backups are listed (and so deleted by retention) from their
//! sentinel and `metadata.json` ([`summary`]), and restored and checked
//! by [`restore`] (delta entries are [`increment`]s).

pub mod increment;
pub mod restore;
pub mod write;

use std::io::Read as _;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::catalog::{BackupFormat, BackupSummary};
use super::codec::Compression;
use super::layout::{self, Lsn, Segment};

/// The first bytes of an LZ4 frame (0x184D2204, little-endian).
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];
/// The first bytes of a zstd frame (0xFD2FB528, little-endian).
const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The first bytes of a gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];
/// The most memory an LZMA stream may ask for (its dictionary): WAL-G
/// writes 8 MiB dictionaries; a larger ask is damage or an attack.
const LZMA_MEMORY_LIMIT: u64 = 256 << 20;

/// How WAL-G compressed an object, told by its extension (wal-g
/// `internal/compression/*/`, `FileExtension`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalgCodec {
    Lz4,
    Zstd,
    Lzma,
    Brotli,
    Gzip,
    None,
}

impl WalgCodec {
    /// Every extension WAL-G reads, in the order its WAL fetch tries them
    /// (wal-g `internal/compression/compression_default.go:20-25`, then
    /// the ones its build tags add).
    pub const ALL: [WalgCodec; 6] = [
        WalgCodec::Lz4,
        WalgCodec::Lzma,
        WalgCodec::Gzip,
        WalgCodec::Zstd,
        WalgCodec::Brotli,
        WalgCodec::None,
    ];

    pub fn from_extension(ext: &str) -> Option<WalgCodec> {
        WalgCodec::ALL.into_iter().find(|c| c.extension() == ext)
    }

    /// The extension after the name (`""`: none, no dot).
    pub fn extension(self) -> &'static str {
        match self {
            WalgCodec::Lz4 => "lz4",
            WalgCodec::Zstd => "zst",
            WalgCodec::Lzma => "lzma",
            WalgCodec::Brotli => "br",
            WalgCodec::Gzip => "gz",
            WalgCodec::None => "",
        }
    }

    fn name(self) -> &'static str {
        match self {
            WalgCodec::Lz4 => "lz4",
            WalgCodec::Zstd => "zstd",
            WalgCodec::Lzma => "lzma",
            WalgCodec::Brotli => "brotli",
            WalgCodec::Gzip => "gzip",
            WalgCodec::None => "none",
        }
    }

    /// The first bytes every object of this codec starts with, if any.
    fn magic(self) -> Option<(&'static [u8], &'static str)> {
        match self {
            WalgCodec::Lz4 => Some((&LZ4_FRAME_MAGIC, "an LZ4 frame as WAL-G writes under .lz4")),
            WalgCodec::Zstd => Some((&ZSTD_FRAME_MAGIC, "a zstd frame as WAL-G writes under .zst")),
            WalgCodec::Gzip => Some((&GZIP_MAGIC, "a gzip stream as stored under .gz")),
            WalgCodec::Lzma | WalgCodec::Brotli | WalgCodec::None => None,
        }
    }

    /// Why a stream of this codec did not decode.
    fn frame_error(self, e: std::io::Error) -> WalgError {
        WalgError::Frame {
            codec: self.name(),
            detail: e.to_string(),
        }
    }

    /// A streaming decoder of `compressed`.
    pub fn reader<'a>(
        self,
        compressed: impl std::io::Read + Send + 'a,
    ) -> Result<Box<dyn std::io::Read + Send + 'a>, WalgError> {
        let frame = |e| self.frame_error(e);
        Ok(match self {
            WalgCodec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(compressed)),
            WalgCodec::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(compressed).map_err(frame)?)
            }
            WalgCodec::Lzma => {
                let stream = xz2::stream::Stream::new_lzma_decoder(LZMA_MEMORY_LIMIT)
                    .map_err(|e| frame(e.into()))?;
                Box::new(xz2::read::XzDecoder::new_stream(compressed, stream))
            }
            WalgCodec::Brotli => Box::new(brotli_decompressor::Decompressor::new(
                compressed,
                64 * 1024,
            )),
            WalgCodec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
            WalgCodec::None => Box::new(compressed),
        })
    }
}

/// `XLOG_PAGE_MAGIC` of each PostgreSQL major version WAL-G supports
/// (`src/include/access/xlog_internal.h` of each release).
const PAGE_MAGICS: [(u16, u32); 9] = [
    (0xD097, 10),
    (0xD098, 11),
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// Why a WAL-G object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WalgError {
    /// The compressed stream is damaged or its checksum does not match.
    #[error("its {codec} frame does not decode ({detail})")]
    Frame { codec: &'static str, detail: String },
    /// The object is neither pgdrill's nor what WAL-G writes under its
    /// extension.
    #[error("it is not a pgdrill object, and not {expected} (if WAL-G encrypted it with WALG_LIBSODIUM_KEY, configure that key)")]
    UnknownFormat { expected: &'static str },
    /// The decoded bytes are not the segment the name says.
    #[error("the decoded bytes are not segment {name}: {problem}")]
    NotTheSegment { name: String, problem: String },
    /// The object decodes to more than the caller's limit (a small object
    /// can inflate without end: it is not decoded further).
    #[error("it decodes to more than {limit} bytes, more than any file it can be")]
    TooLarge { limit: u64 },
}

/// Compresses what is written through it as WAL-G compresses an object
/// under `compression`'s extension: an LZ4 frame as pierrec/lz4 v4
/// writes by default (4 MiB independent blocks, content checksum; wal-g
/// `internal/compression/lz4/compressor.go:17-19`), a zstd frame with its
/// checksum (klauspost's defaults), or the bytes as they are.
pub enum Encoder<W: std::io::Write> {
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    None(W),
}

impl<W: std::io::Write> Encoder<W> {
    pub fn new(inner: W, compression: Compression) -> std::io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::Lz4 => {
                let mut info = lz4_flex::frame::FrameInfo::new();
                info.block_size = lz4_flex::frame::BlockSize::Max4MB;
                info.block_mode = lz4_flex::frame::BlockMode::Independent;
                info.content_checksum = true;
                Encoder::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, inner))
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(inner, 3)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
            Compression::None => Encoder::None(inner),
        })
    }

    /// Ends the frame and hands back the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Lz4(e) => e.finish().map_err(std::io::Error::other),
            Encoder::Zstd(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: std::io::Write> std::io::Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Lz4(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Lz4(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

/// `plain` compressed as WAL-G stores a WAL file under `compression`'s
/// extension ([`crate::backup::layout::walg_wal_key`], [`Encoder`]).
pub fn encode(plain: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    if compression == Compression::None {
        return Ok(plain.to_vec());
    }
    let mut e = Encoder::new(Vec::with_capacity(plain.len() / 2), compression)?;
    e.write_all(plain)?;
    e.finish()
}

/// Decodes a WAL object WAL-G wrote under extension `ext`.
pub fn decode(object: &[u8], ext: &str, max_plain: u64) -> Result<Vec<u8>, WalgError> {
    let codec = WalgCodec::from_extension(ext).ok_or(WalgError::UnknownFormat {
        expected: "anything WAL-G writes (it uses .lz4, .zst, .lzma, .br, .gz or no extension)",
    })?;
    if let Some((magic, expected)) = codec.magic() {
        if !object.starts_with(magic) {
            return Err(WalgError::UnknownFormat { expected });
        }
    }
    let mut plain = Vec::new();
    codec
        .reader(object)?
        .take(max_plain.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(|e| codec.frame_error(e))?;
    if plain.len() as u64 > max_plain {
        return Err(WalgError::TooLarge { limit: max_plain });
    }
    Ok(plain)
}

/// The PostgreSQL major version whose WAL pages carry `magic`.
pub fn major_of_page_magic(magic: u16) -> Option<u32> {
    PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, major)| *major)
}

/// Checks that `data` is WAL segment `name`: the first page has a long
/// header with a known page magic, a segment size equal to the data's
/// length, the timeline of the name and the address of the segment's
/// start.
pub fn check_segment(name: &str, data: &[u8]) -> Result<(), WalgError> {
    let wrong = |problem: String| WalgError::NotTheSegment {
        name: name.to_string(),
        problem,
    };
    let field = |at: usize, len: usize| {
        data.get(at..at + len)
            .ok_or_else(|| wrong(format!("{} bytes, shorter than a page header", data.len())))
    };
    let magic = u16::from_le_bytes(field(0, 2)?.try_into().expect("two bytes"));
    if major_of_page_magic(magic).is_none() {
        return Err(wrong(format!(
            "page magic {magic:#06X} is no PostgreSQL 10-18 WAL page's"
        )));
    }
    let size = layout::segment_size_from_header(data)
        .ok_or_else(|| wrong("the first page has no long header with a segment size".into()))?;
    if data.len() as u64 != size {
        return Err(wrong(format!(
            "{} bytes, but its header says segments are {size}",
            data.len()
        )));
    }
    let segment = Segment::parse(name, size)
        .ok_or_else(|| wrong(format!("the name does not fit {size}-byte segments")))?;
    let timeline = u32::from_le_bytes(field(4, 4)?.try_into().expect("four bytes"));
    if timeline != segment.timeline {
        return Err(wrong(format!(
            "its first page is on timeline {timeline}, the name says {}",
            segment.timeline
        )));
    }
    let address = u64::from_le_bytes(field(8, 8)?.try_into().expect("eight bytes"));
    if address != segment.segno * size {
        return Err(wrong(format!(
            "its first page is at {:X}/{:X}, the segment starts at {:X}/{:X}",
            address >> 32,
            address as u32,
            (segment.segno * size) >> 32,
            (segment.segno * size) as u32
        )));
    }
    Ok(())
}

/// The fields pgdrill reads of WAL-G's backup sentinel
/// (`<name>_backup_stop_sentinel.json`; wal-g
/// `internal/databases/postgres/backup_sentinel_dto.go:17-39`: LSNs are
/// JSON numbers, the delta fields absent for a full backup).
#[derive(Debug, Clone, Deserialize)]
pub struct Sentinel {
    #[serde(rename = "LSN")]
    pub start_lsn: u64,
    #[serde(rename = "FinishLSN")]
    pub finish_lsn: u64,
    #[serde(rename = "DeltaFrom", default)]
    pub delta_from: Option<String>,
    #[serde(rename = "DeltaFullName", default)]
    pub delta_full_name: Option<String>,
    #[serde(rename = "DeltaCount", default)]
    pub delta_count: Option<u32>,
    #[serde(rename = "PgVersion")]
    pub pg_version: i32,
    #[serde(rename = "SystemIdentifier", default)]
    pub system_identifier: Option<u64>,
    #[serde(rename = "UncompressedSize", default)]
    pub uncompressed_size: i64,
    #[serde(rename = "CompressedSize", default)]
    pub compressed_size: i64,
    /// pgdrill's extra field in a backup it wrote in WAL-G's format: the
    /// BLAKE3 of its record beside the backup ([`write`]).
    #[serde(rename = "PgdrillMetadataBlake3", default)]
    pub pgdrill_metadata_blake3: Option<String>,
    /// pgdrill's extra field: the server's `wal_segment_size`, which
    /// WAL-G does not record.
    #[serde(rename = "PgdrillWalSegmentSize", default)]
    pub pgdrill_wal_segment_size: Option<u64>,
}

/// The fields pgdrill reads of WAL-G's `metadata.json` in the backup's
/// folder (wal-g `backup_sentinel_dto.go:71-87`, `ExtendedMetadataDto`).
#[derive(Debug, Clone, Deserialize)]
pub struct ExtendedMetadata {
    pub start_time: DateTime<Utc>,
    pub finish_time: DateTime<Utc>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub data_dir: String,
    #[serde(default)]
    pub is_permanent: bool,
}

/// Whether a sentinel is WAL-G's (its start LSN is the number `LSN`;
/// pgdrill's sentinel has `start_lsn`).
pub fn is_walg_sentinel(raw: &[u8]) -> bool {
    /// Only `LSN`: the rest is skipped, not kept.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "LSN")]
        lsn: Option<u64>,
    }
    serde_json::from_slice::<Probe>(raw).is_ok_and(|p| p.lsn.is_some())
}

/// Why a WAL-G sentinel gives no catalog entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SummaryError {
    /// The start LSN lies in the first segment of a 4 GiB "log"
    /// (`...00000000`), where it fits every segment size: the size must
    /// come from that segment's header.
    #[error("its start LSN {lsn} fits segment {first} under every WAL segment size, and WAL-G records no size")]
    SegmentSizeUnknown { first: String, lsn: Lsn },
    #[error("{0}")]
    Invalid(String),
}

/// The catalog entry of WAL-G backup `name` from its sentinel, its
/// `metadata.json` when there is one (host, permanence) and its start and
/// finish `times` (from `metadata.json`, else the sentinel's own time).
/// The WAL segment size is the one pgdrill recorded in the sentinel, else
/// `known` (read from the start segment's header), else the only size
/// under which the start LSN falls in the segment the name carries;
/// never a guess among several.
pub fn summary(
    name: &str,
    sentinel: &Sentinel,
    metadata: Option<&ExtendedMetadata>,
    (start_time, finish_time): (DateTime<Utc>, DateTime<Utc>),
    known: Option<u64>,
) -> Result<BackupSummary, SummaryError> {
    let invalid = |m: String| SummaryError::Invalid(m);
    let first = name
        .strip_prefix("base_")
        .and_then(|rest| rest.get(..24))
        .ok_or_else(|| {
            invalid(format!(
                "{name:?} is not a WAL-G backup name (base_<WAL segment>)"
            ))
        })?;
    let lsn = Lsn(sentinel.start_lsn);
    let fitting: Vec<(u64, Segment)> = (20..=30)
        .map(|bits| 1u64 << bits)
        .filter_map(|size| {
            Segment::parse(first, size)
                .filter(|s| Segment::of_lsn(s.timeline, lsn, size) == *s)
                .map(|s| (size, s))
        })
        .collect();
    let (seg_size, start) = match sentinel.pgdrill_wal_segment_size.or(known) {
        Some(size) => *fitting.iter().find(|(s, _)| *s == size).ok_or_else(|| {
            invalid(format!(
                "its start LSN {lsn} is not in segment {first} with its WAL segment size of {size} bytes"
            ))
        })?,
        None => match fitting.as_slice() {
            [one] => *one,
            [] => {
                return Err(invalid(format!(
                    "its start LSN {lsn} is not in segment {first} for any segment size"
                )))
            }
            _ => {
                return Err(SummaryError::SegmentSizeUnknown {
                    first: first.to_string(),
                    lsn,
                })
            }
        },
    };
    let finish = Segment::of_lsn(start.timeline, Lsn(sentinel.finish_lsn), seg_size);
    if sentinel.finish_lsn < sentinel.start_lsn {
        return Err(invalid("its finish LSN is before its start LSN".into()));
    }
    Ok(BackupSummary {
        backup_name: name.to_string(),
        start_time,
        finish_time,
        start_lsn: Lsn(sentinel.start_lsn).to_string(),
        finish_lsn: Lsn(sentinel.finish_lsn).to_string(),
        wal_file_name: first.to_string(),
        finish_wal_file_name: finish.file_name(seg_size),
        timeline: start.timeline,
        pg_version: sentinel.pg_version,
        system_identifier: sentinel
            .system_identifier
            .map(|id| id.to_string())
            .unwrap_or_default(),
        hostname: metadata.map(|m| m.hostname.clone()).unwrap_or_default(),
        data_dir: metadata.map(|m| m.data_dir.clone()).unwrap_or_default(),
        uncompressed_size: u64::try_from(sentinel.uncompressed_size).unwrap_or(0),
        compressed_size: u64::try_from(sentinel.compressed_size).unwrap_or(0),
        is_permanent: metadata.is_some_and(|m| m.is_permanent),
        compression: String::new(),
        wal_segment_size: seg_size,
        metadata_blake3: sentinel.pgdrill_metadata_blake3.clone().unwrap_or_default(),
        increment_from: sentinel.delta_from.clone(),
        increment_full_name: sentinel.delta_full_name.clone(),
        increment_count: sentinel.delta_count.unwrap_or(0),
        pgdrill_version: String::new(),
        format: BackupFormat::Walg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment's first page header: magic, long-header flag, timeline,
    /// page address, system identifier, segment and block size.
    fn segment(magic: u16, timeline: u32, segno: u64, size: u32) -> Vec<u8> {
        let mut data = vec![0u8; size as usize];
        data[0..2].copy_from_slice(&magic.to_le_bytes());
        data[2..4].copy_from_slice(&2u16.to_le_bytes());
        data[4..8].copy_from_slice(&timeline.to_le_bytes());
        data[8..16].copy_from_slice(&(segno * u64::from(size)).to_le_bytes());
        data[32..36].copy_from_slice(&size.to_le_bytes());
        data[36..40].copy_from_slice(&8192u32.to_le_bytes());
        data
    }

    const MIB: u32 = 1 << 20;

    #[test]
    fn a_segment_passes_only_under_its_own_name() {
        let data = segment(0xD110, 2, 5, MIB);
        check_segment("000000020000000000000005", &data).unwrap();
        for (name, says) in [
            ("000000020000000000000006", "the segment starts at 0/600000"),
            ("000000030000000000000005", "the name says 3"),
        ] {
            let e = check_segment(name, &data).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let e = check_segment("000000020000000000000005", &data[..MIB as usize / 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("header says segments are 1048576"), "{e}");
        let e = check_segment("000000020000000000000005", &segment(0xBEEF, 2, 5, MIB))
            .unwrap_err()
            .to_string();
        assert!(e.contains("page magic 0xBEEF"), "{e}");
        let e = check_segment("000000020000000000000005", &[0x10])
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than a page header"), "{e}");
    }

    /// WAL-G's own test segment (fixtures/walg/from-walg: the first 16 KiB
    /// of a PostgreSQL 11 segment): its header is read as WAL-G's tests
    /// know it, and the truncation is refused.
    #[test]
    fn walgs_own_test_segment_header_is_understood() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/walg/from-walg/00000001000000000000007C"
        );
        let head = std::fs::read(path).unwrap();
        let magic = u16::from_le_bytes([head[0], head[1]]);
        assert_eq!(major_of_page_magic(magic), Some(11));
        let e = check_segment("00000001000000000000007C", &head)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("16384 bytes, but its header says segments are 16777216"),
            "{e}"
        );
        let mut whole = head.clone();
        whole.resize(16 << 20, 0);
        check_segment("00000001000000000000007C", &whole).unwrap();
        let e = check_segment("00000002000000000000007C", &whole)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeline 1, the name says 2"), "{e}");
    }

    #[test]
    fn page_magics_name_their_versions() {
        assert_eq!(major_of_page_magic(0xD110), Some(15));
        assert_eq!(major_of_page_magic(0xD113), Some(16));
        assert_eq!(major_of_page_magic(0xD118), Some(18));
        assert_eq!(major_of_page_magic(0x1234), None);
    }

    #[test]
    fn frames_decode_and_damage_is_refused() {
        let plain = segment(0xD110, 1, 3, MIB);
        let mut lz4 = Vec::new();
        {
            use std::io::Write as _;
            let mut info = lz4_flex::frame::FrameInfo::new();
            info.content_checksum = true;
            let mut w = lz4_flex::frame::FrameEncoder::with_frame_info(info, &mut lz4);
            w.write_all(&plain).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(decode(&lz4, "lz4", u64::MAX).unwrap(), plain);
        let zst = zstd::bulk::Compressor::new(3)
            .and_then(|mut c| {
                c.include_checksum(true)?;
                c.compress(&plain)
            })
            .unwrap();
        assert_eq!(decode(&zst, "zst", u64::MAX).unwrap(), plain);
        assert_eq!(decode(&plain, "", u64::MAX).unwrap(), plain);
        // A flipped byte of the compressed stream: the frame checksum (or
        // the decoder) refuses it.
        for (object, ext) in [(&lz4, "lz4"), (&zst, "zst")] {
            let mut damaged = object.clone();
            let at = damaged.len() - 6;
            damaged[at] ^= 0x55;
            assert!(decode(&damaged, ext, u64::MAX).is_err(), "{ext}");
        }
        for ext in ["lz4", "zst", "raw"] {
            assert!(
                matches!(
                    decode(&plain, ext, u64::MAX),
                    Err(WalgError::UnknownFormat { .. })
                ),
                "{ext}"
            );
        }
    }

    /// An object is decoded no further than the caller's limit: a small
    /// frame can inflate without end.
    #[test]
    fn decoding_stops_past_the_limit() {
        let plain = segment(0xD110, 1, 3, MIB);
        let lz4 = encode(&plain, Compression::Lz4).unwrap();
        let limit = plain.len() as u64;
        assert_eq!(decode(&lz4, "lz4", limit).unwrap(), plain);
        let err = decode(&lz4, "lz4", limit - 1).unwrap_err();
        assert!(
            matches!(err, WalgError::TooLarge { limit: l } if l == limit - 1),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains(&format!("more than {} bytes", limit - 1)));
    }

    /// What pgdrill writes in WAL-G's format decodes as WAL-G's reader
    /// would: the LZ4 frame descriptor is pierrec's default (version 1,
    /// independent blocks, content checksum: FLG 0x64, as in the fixtures
    /// Python's lz4 wrote; 4 MiB blocks: BD 0x70, where liblz4's one-shot
    /// compression in the fixtures picked 1 MiB for a 1 MiB segment).
    #[test]
    fn encoded_objects_are_walgs() {
        let plain = segment(0xD110, 1, 3, MIB);
        let lz4 = encode(&plain, Compression::Lz4).unwrap();
        assert_eq!(&lz4[..6], &[0x04, 0x22, 0x4D, 0x18, 0x64, 0x70]);
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/walg/archive/wal_005/000000010000000000000007.lz4"
        ))
        .unwrap();
        assert_eq!(&fixture[..5], &lz4[..5]);
        assert_eq!(decode(&lz4, "lz4", u64::MAX).unwrap(), plain);
        let zst = encode(&plain, Compression::Zstd).unwrap();
        assert!(zst.starts_with(&ZSTD_FRAME_MAGIC));
        assert_eq!(decode(&zst, "zst", u64::MAX).unwrap(), plain);
        assert_eq!(encode(&plain, Compression::None).unwrap(), plain);
    }

    /// wal-fetch looks under every extension WAL-G reads: the ones pgdrill
    /// writes, `layout::WALG_ONLY_EXTENSIONS` and the bare name.
    #[test]
    fn every_walg_extension_is_looked_up() {
        let name = "000000010000000000000003";
        let keys = layout::wal_keys(name, Compression::Lz4);
        for codec in WalgCodec::ALL {
            let key = match codec.extension() {
                "" => format!("wal_005/{name}"),
                ext => format!("wal_005/{name}.{ext}"),
            };
            assert!(keys.iter().any(|k| k.as_str() == key), "{key}");
            let key = crate::backup::store::Key::new(key);
            assert_eq!(layout::wal_name_of(&key), Some(name), "{codec:?}");
        }
    }

    #[test]
    fn walg_sentinels_become_catalog_entries() {
        let raw = br#"{"LSN":83886120,"FinishLSN":83886376,"PgVersion":150010,"SystemIdentifier":7300000000000000001,"UncompressedSize":23000000,"CompressedSize":3000000,"DataCatalogSize":23000000,"UserData":null,"ChkpNum":null}"#;
        assert!(is_walg_sentinel(raw));
        assert!(!is_walg_sentinel(
            br#"{"backup_name":"x","start_lsn":"0/5000028"}"#
        ));
        let sentinel: Sentinel = serde_json::from_slice(raw).unwrap();
        let t = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let s = summary(
            "base_000000010000000000000005",
            &sentinel,
            None,
            (t, t),
            None,
        )
        .unwrap();
        assert_eq!(s.start_lsn, "0/5000028");
        assert_eq!(s.wal_segment_size, 16 << 20);
        assert_eq!(s.finish_wal_file_name, "000000010000000000000005");
        assert_eq!(s.system_identifier, "7300000000000000001");
        assert_eq!((s.start_time, s.format), (t, BackupFormat::Walg));
        assert_eq!(s.increment_count, 0);
        // 1 MB segments: the same LSN is segment 0x50.
        let e = summary(
            "base_000000010000000000000050",
            &sentinel,
            None,
            (t, t),
            None,
        )
        .unwrap();
        assert_eq!(e.wal_segment_size, 1 << 20);
        let wrong = summary(
            "base_000000010000000000000007",
            &sentinel,
            None,
            (t, t),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            wrong.contains("not in segment 000000010000000000000007"),
            "{wrong}"
        );
        assert!(summary("nightly", &sentinel, None, (t, t), None).is_err());
    }

    /// A backup starting in the first segment of a 4 GiB "log"
    /// (`...00000000`): its start LSN fits that segment under every size,
    /// so the size must come from something that knows it; pgdrill records
    /// it in the sentinels it writes in WAL-G's format.
    #[test]
    fn a_backup_at_a_4_gib_boundary_keeps_its_segment_size() {
        let raw = br#"{"LSN":4294967336,"FinishLSN":4300210432,"PgVersion":150010,"PgdrillWalSegmentSize":16777216}"#;
        let sentinel: Sentinel = serde_json::from_slice(raw).unwrap();
        let t = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let s = summary(
            "base_000000010000000100000000",
            &sentinel,
            None,
            (t, t),
            None,
        )
        .unwrap();
        assert_eq!(s.wal_segment_size, 16 << 20);
        assert_eq!(s.finish_wal_file_name, "000000010000000100000000");
        // WAL-G's own sentinel records no size: it is asked for, and then
        // taken from the start segment's header.
        let walg: Sentinel = serde_json::from_slice(
            br#"{"LSN":4294967336,"FinishLSN":4300210432,"PgVersion":150010}"#,
        )
        .unwrap();
        assert_eq!(
            summary("base_000000010000000100000000", &walg, None, (t, t), None).unwrap_err(),
            SummaryError::SegmentSizeUnknown {
                first: "000000010000000100000000".into(),
                lsn: Lsn(4294967336)
            }
        );
        let s = summary(
            "base_000000010000000100000000",
            &walg,
            None,
            (t, t),
            Some(64 << 20),
        )
        .unwrap();
        assert_eq!(s.finish_wal_file_name, "000000010000000100000000");
        assert_eq!(s.wal_segment_size, 64 << 20);
        // A recorded size the name and LSN contradict is refused.
        let e = summary(
            "base_000000010000000000000050",
            &walg,
            None,
            (t, t),
            Some(16 << 20),
        );
        assert!(matches!(e, Err(SummaryError::Invalid(_))), "{e:?}");
    }
}
