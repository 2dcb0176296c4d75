//! The format of every stored object.
//!
//! ```text
//! +---------+-------------------------------+---------------------------------+
//! | header  | payload                       | trailer                         |
//! | 8 bytes | compressed plaintext          | 56 bytes                        |
//! | "PGDR"  | (lz4 frame, zstd frame, or    | plaintext length (u64 LE),      |
//! | ver, codec, 0, 0 | the plaintext itself)| payload length (u64 LE),        |
//! |         |                               | BLAKE3 of the plaintext (32),   |
//! |         |                               | "PGDREND1"                      |
//! +---------+-------------------------------+---------------------------------+
//! ```
//!
//! The trailer comes last so that objects can be written in one pass while
//! streaming (base backup parts are gigabytes); readers withhold the last 56
//! bytes of the stream and check them once the payload is decoded. Every
//! fetch verifies length and checksum: a corrupt object is an error, never
//! silently wrong data.

use std::io::{self, Read, Write};

pub const HEADER_LEN: usize = 8;
pub const TRAILER_LEN: usize = 56;
const MAGIC: &[u8; 4] = b"PGDR";
const END_MAGIC: &[u8; 8] = b"PGDREND1";
const FORMAT_VERSION: u8 = 1;

/// Compression method (`WALG_COMPRESSION_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_name(name: &str) -> Option<Compression> {
        match name.trim().to_ascii_lowercase().as_str() {
            "lz4" => Some(Compression::Lz4),
            "zstd" | "zst" => Some(Compression::Zstd),
            "none" | "" => Some(Compression::None),
            _ => None,
        }
    }

    /// File extension of objects compressed this way.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "raw",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zst",
        }
    }

    pub const ALL: [Compression; 3] = [Compression::Lz4, Compression::Zstd, Compression::None];

    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u8) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// What an object holds, as recorded in its trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub plain_len: u64,
    pub blake3: [u8; 32],
}

/// Whether `object` starts as every pgdrill object does (objects other
/// tools wrote, such as WAL-G's, do not).
pub fn is_pgdrill_object(object: &[u8]) -> bool {
    object.starts_with(MAGIC)
}

/// The digest of plaintext that came without one (another tool's object).
pub fn digest_of(plain: &[u8]) -> Digest {
    Digest {
        plain_len: plain.len() as u64,
        blake3: *blake3::hash(plain).as_bytes(),
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Digest {
    pub fn hex(&self) -> String {
        hex::encode(self.blake3)
    }
}

/// Decoding failures.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("object is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(io::Error),
    /// Writing the decoded plaintext failed: the destination's fault, not
    /// the object's.
    #[error("cannot write the decoded content: {0}")]
    Write(io::Error),
}

impl CodecError {
    /// A read failure: damaged input (InvalidData, a short read) is
    /// corruption, anything else stays an I/O error.
    pub fn from_io(e: io::Error) -> CodecError {
        // Damaged input is InvalidData (see `ObjectReader::damaged_input`).
        if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
            CodecError::Corrupt(e.to_string())
        } else {
            CodecError::Io(e)
        }
    }
}

/// The header of an object compressed with `compression`.
fn header(compression: Compression) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = FORMAT_VERSION;
    header[5] = compression.code();
    header
}

enum Compressor<W: Write> {
    None(W),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

/// Writes one object: header, compressed payload, trailer.
pub struct ObjectWriter<W: Write> {
    compressor: Compressor<Counting<W>>,
    /// `None` when the caller supplies the digest to [`ObjectWriter::finish_with`].
    hasher: Option<blake3::Hasher>,
    plain_len: u64,
}

impl<W: Write> ObjectWriter<W> {
    pub fn new(mut inner: W, compression: Compression) -> io::Result<Self> {
        inner.write_all(&header(compression))?;
        let inner = Counting { inner, count: 0 };
        let compressor = match compression {
            Compression::None => Compressor::None(inner),
            Compression::Lz4 => Compressor::Lz4(lz4_flex::frame::FrameEncoder::new(inner)),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(inner, 1)?),
        };
        Ok(ObjectWriter {
            compressor,
            hasher: Some(blake3::Hasher::new()),
            plain_len: 0,
        })
    }

    /// Ends the payload, writes the trailer and hands back the inner writer.
    pub fn finish(mut self) -> io::Result<(W, Digest)> {
        let hasher = self.hasher.take().expect("hashing writer");
        let digest = Digest {
            plain_len: self.plain_len,
            blake3: *hasher.finalize().as_bytes(),
        };
        self.finish_with(digest)
    }

    /// Like [`ObjectWriter::finish`] with a digest computed elsewhere.
    fn finish_with(self, digest: Digest) -> io::Result<(W, Digest)> {
        let counted = match self.compressor {
            Compressor::None(w) => w,
            Compressor::Lz4(e) => e.finish().map_err(io::Error::other)?,
            Compressor::Zstd(e) => e.finish()?,
        };
        let payload_len = counted.count;
        let mut inner = counted.inner;
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..8].copy_from_slice(&digest.plain_len.to_le_bytes());
        trailer[8..16].copy_from_slice(&payload_len.to_le_bytes());
        trailer[16..48].copy_from_slice(&digest.blake3);
        trailer[48..].copy_from_slice(END_MAGIC);
        inner.write_all(&trailer)?;
        inner.flush()?;
        Ok((inner, digest))
    }
}

impl<W: Write> Write for ObjectWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.compressor {
            Compressor::None(w) => w.write(buf)?,
            Compressor::Lz4(e) => e.write(buf)?,
            Compressor::Zstd(e) => e.write(buf)?,
        };
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.plain_len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.compressor {
            Compressor::None(w) => w.flush(),
            Compressor::Lz4(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

/// Encodes a whole buffer. The checksum is computed on a second thread
/// while compressing, and lz4 compresses its blocks on every core:
/// wal-push is CPU-bound, and PostgreSQL's archiver waits for each segment.
pub fn encode(plain: &[u8], compression: Compression) -> io::Result<(Vec<u8>, Digest)> {
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| blake3::hash(plain));
        let digest = |hashing: std::thread::ScopedJoinHandle<'_, blake3::Hash>| {
            let hash = hashing
                .join()
                .map_err(|_| io::Error::other("checksum thread failed"))?;
            Ok::<_, io::Error>(Digest {
                plain_len: plain.len() as u64,
                blake3: *hash.as_bytes(),
            })
        };
        // Room for an incompressible input, so the buffer never moves: pages
        // never written are never touched, so this costs no memory.
        let capacity = plain.len() + plain.len() / 1024 + HEADER_LEN + TRAILER_LEN + 64;
        if compression == Compression::Lz4 {
            // The payload is written whole here; the writer adds the trailer.
            let object = lz4_frame_parallel(&header(compression), plain, TRAILER_LEN)?;
            let payload = Counting {
                count: (object.len() - HEADER_LEN) as u64,
                inner: object,
            };
            let w = ObjectWriter {
                compressor: Compressor::None(payload),
                hasher: None,
                plain_len: plain.len() as u64,
            };
            return w.finish_with(digest(hashing)?);
        }
        let mut w = ObjectWriter::new(Vec::with_capacity(capacity), compression)?;
        w.hasher = None;
        w.write_all(plain)?;
        w.finish_with(digest(hashing)?)
    })
}

/// Largest block of the frames [`lz4_frame_parallel`] writes (4 MiB, the
/// LZ4 frame format's largest, WAL-G's default too).
const LZ4_BLOCK: usize = 4 << 20;

/// `prefix` followed by `plain` as one standard LZ4 frame of independent
/// 4 MiB blocks, the blocks compressed on up to as many threads as there
/// are cores, with room left for `spare` more bytes. A block that does not
/// shrink is stored as it is (the format's uncompressed-block flag), so
/// incompressible WAL costs a copy. Each block is compressed in place into
/// its own slot of one zeroed allocation (pages never written are never
/// touched, so the worst-case slots cost no memory) and the slots are then
/// closed up: no second copy of the object (wal-push stays under 64 MiB).
fn lz4_frame_parallel(prefix: &[u8], plain: &[u8], spare: usize) -> io::Result<Vec<u8>> {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    // The frame header, as lz4_flex writes it for these settings: the
    // frame of an empty input is that header and the end mark.
    let info = FrameInfo::new()
        .block_size(BlockSize::Max4MB)
        .block_mode(BlockMode::Independent);
    let empty = FrameEncoder::with_frame_info(info, Vec::new())
        .finish()
        .map_err(io::Error::other)?;
    let frame_header = &empty[..empty.len() - 4];
    let blocks: Vec<&[u8]> = plain.chunks(LZ4_BLOCK).collect();
    let slot_len = |b: &[u8]| 4 + lz4_flex::block::get_maximum_output_size(b.len()).max(b.len());
    let first_slot = prefix.len() + frame_header.len();
    let slots_len: usize = blocks.iter().map(|b| slot_len(b)).sum();
    let mut out = vec![0u8; first_slot + slots_len + 4 + spare];
    out[..prefix.len()].copy_from_slice(prefix);
    out[prefix.len()..first_slot].copy_from_slice(frame_header);
    let mut slots: Vec<&mut [u8]> = Vec::with_capacity(blocks.len());
    let mut rest = &mut out[first_slot..first_slot + slots_len];
    for b in &blocks {
        let (slot, tail) = rest.split_at_mut(slot_len(b));
        slots.push(slot);
        rest = tail;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks.len())
        .max(1);
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let mut work: Vec<(&[u8], &mut [u8])> = blocks.iter().copied().zip(slots).collect();
    let used: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = work
            .chunks_mut(per_thread)
            .map(|mine| {
                scope.spawn(move || {
                    mine.iter_mut()
                        .map(|(block, slot)| lz4_block_into(block, slot))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| io::Error::other("lz4 thread failed")))
            .collect::<io::Result<Vec<Vec<_>>>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    // Close up the slots, in order (each moves towards the front).
    let (mut from, mut to) = (first_slot, first_slot);
    for (block, n) in blocks.iter().zip(used) {
        out.copy_within(from..from + n, to);
        from += slot_len(block);
        to += n;
    }
    // End mark.
    out[to..to + 4].copy_from_slice(&0u32.to_le_bytes());
    out.truncate(to + 4);
    Ok(out)
}

/// Writes `block` into `slot` as a frame block (its 4-byte size, then the
/// compressed bytes, or the bytes as they are when compression does not
/// shrink them); returns the bytes used.
fn lz4_block_into(block: &[u8], slot: &mut [u8]) -> usize {
    let (size, body) = slot.split_at_mut(4);
    let (len, flag) = match lz4_flex::block::compress_into(block, body) {
        Ok(n) if n < block.len() => (n, 0u32),
        _ => {
            body[..block.len()].copy_from_slice(block);
            (block.len(), 1u32 << 31)
        }
    };
    let word = u32::try_from(len).expect("a block is at most 4 MiB") | flag;
    size.copy_from_slice(&word.to_le_bytes());
    4 + len
}

/// Decodes a whole buffer, verifying length and checksum.
pub fn decode(object: &[u8]) -> Result<(Vec<u8>, Digest), CodecError> {
    decode_from(object)
}

/// Decodes a whole object read from `object` (e.g. a decrypting reader),
/// verifying length and checksum.
pub fn decode_from(object: impl Read) -> Result<(Vec<u8>, Digest), CodecError> {
    decode_into(object, Vec::new(), u64::MAX)
}

/// Decodes a whole object read from `object` into `out`, through one
/// small buffer, verifying length and checksum at the end: what `out`
/// holds is verified only when this returns `Ok`. More than `max_plain`
/// bytes of plaintext is corruption, refused as soon as it is decoded
/// (a small object may inflate without end, and its trailer is only read
/// at the end).
pub fn decode_into<W: Write>(
    object: impl Read,
    mut out: W,
    max_plain: u64,
) -> Result<(W, Digest), CodecError> {
    let mut r = ObjectReader::new(object)?;
    let mut buf = vec![0u8; DECODE_BUFFER];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CodecError::from_io(e)),
        };
        if r.plain_len > max_plain {
            return Err(CodecError::Corrupt(format!(
                "decodes to more than {max_plain} bytes, the most it may hold"
            )));
        }
        out.write_all(&buf[..n]).map_err(CodecError::Write)?;
    }
    let digest = r.verified_digest()?;
    Ok((out, digest))
}

/// [`decode_into`]'s buffer: small enough to stay in the CPU's cache and
/// to cost few fresh pages, large enough for few write calls.
const DECODE_BUFFER: usize = 256 << 10;

/// Reads only the trailer of a whole object, without decoding it.
pub fn trailer_digest(object: &[u8]) -> Result<Digest, CodecError> {
    if object.len() < HEADER_LEN + TRAILER_LEN {
        return Err(CodecError::Corrupt("object too short".into()));
    }
    parse_trailer(&object[object.len() - TRAILER_LEN..]).map(|(d, _)| d)
}

/// The digest and the payload length a trailer records.
fn parse_trailer(t: &[u8]) -> Result<(Digest, u64), CodecError> {
    if &t[48..56] != END_MAGIC {
        return Err(CodecError::Corrupt(
            "trailer missing (truncated or not written by pgdrill)".into(),
        ));
    }
    let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().expect("8 bytes"));
    let mut blake3 = [0u8; 32];
    blake3.copy_from_slice(&t[16..48]);
    Ok((
        Digest {
            plain_len: u64_at(0),
            blake3,
        },
        u64_at(8),
    ))
}

/// A reader that passes through everything except the last `TRAILER_LEN`
/// bytes of its input, which it keeps for inspection at the end.
struct TailWithheld<R> {
    inner: R,
    held: Vec<u8>,
    start: usize,
    eof: bool,
    /// Bytes passed through so far.
    passed: u64,
    /// Whether reading `inner` failed (rather than decoding what it gave).
    failed: bool,
}

impl<R: Read> TailWithheld<R> {
    fn available(&self) -> usize {
        (self.held.len() - self.start).saturating_sub(TRAILER_LEN)
    }

    /// The withheld tail once the input is exhausted; bytes before it that
    /// the decoder left unread are skipped (and counted in `passed`).
    fn tail(&mut self) -> io::Result<&[u8]> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(&self.held[self.start..])
    }
}

impl<R: Read> Read for TailWithheld<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.available() == 0 && !self.eof {
            if self.start > 0 {
                self.held.drain(..self.start);
                self.start = 0;
            }
            let len = self.held.len();
            self.held.resize(len + 64 * 1024, 0);
            let n = match self.inner.read(&mut self.held[len..]) {
                Ok(n) => n,
                Err(e) => {
                    self.held.truncate(len);
                    self.failed = true;
                    return Err(e);
                }
            };
            self.held.truncate(len + n);
            if n == 0 {
                self.eof = true;
            }
        }
        let n = self.available().min(out.len());
        out[..n].copy_from_slice(&self.held[self.start..self.start + n]);
        self.start += n;
        self.passed += n as u64;
        Ok(n)
    }
}

enum Decompressor<R: Read> {
    None(R),
    Lz4(lz4_flex::frame::FrameDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<R>>),
}

/// Reads one object's plaintext. After the last byte has been read, call
/// [`ObjectReader::verified_digest`]: until then nothing is verified.
pub struct ObjectReader<R: Read> {
    decompressor: Decompressor<TailWithheld<R>>,
    hasher: blake3::Hasher,
    plain_len: u64,
    compression: Compression,
}

impl<R: Read> ObjectReader<R> {
    pub fn new(mut inner: R) -> Result<Self, CodecError> {
        let mut header = [0u8; HEADER_LEN];
        inner.read_exact(&mut header).map_err(CodecError::from_io)?;
        if &header[..4] != MAGIC {
            return Err(CodecError::Corrupt(
                "bad header (not an object written by pgdrill)".into(),
            ));
        }
        if header[4] != FORMAT_VERSION {
            return Err(CodecError::Corrupt(format!(
                "unsupported format version {}",
                header[4]
            )));
        }
        let compression = Compression::from_code(header[5])
            .ok_or_else(|| CodecError::Corrupt(format!("unknown compression {}", header[5])))?;
        let body = TailWithheld {
            inner,
            held: Vec::new(),
            start: 0,
            eof: false,
            passed: 0,
            failed: false,
        };
        let decompressor = match compression {
            Compression::None => Decompressor::None(body),
            Compression::Lz4 => Decompressor::Lz4(lz4_flex::frame::FrameDecoder::new(body)),
            Compression::Zstd => Decompressor::Zstd(
                zstd::stream::read::Decoder::new(body)
                    .map_err(CodecError::from_io)?
                    .single_frame(),
            ),
        };
        Ok(ObjectReader {
            decompressor,
            hasher: blake3::Hasher::new(),
            plain_len: 0,
            compression,
        })
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Checks the trailer against what was read; call after reading to EOF.
    pub fn verified_digest(self) -> Result<Digest, CodecError> {
        let actual = Digest {
            plain_len: self.plain_len,
            blake3: *self.hasher.finalize().as_bytes(),
        };
        let mut body = match self.decompressor {
            Decompressor::None(b) => b,
            Decompressor::Lz4(d) => d.into_inner(),
            Decompressor::Zstd(d) => d.finish().into_inner(),
        };
        let tail = body.tail().map_err(CodecError::from_io)?.to_vec();
        if tail.len() != TRAILER_LEN {
            return Err(CodecError::Corrupt("object too short".into()));
        }
        // Everything before the trailer, decoded or not, is the payload.
        let consumed = body.passed;
        let (expected, payload_len) = parse_trailer(&tail)?;
        if payload_len != consumed {
            return Err(CodecError::Corrupt(format!(
                "payload is {consumed} bytes, trailer says {payload_len}"
            )));
        }
        if expected.plain_len != actual.plain_len {
            return Err(CodecError::Corrupt(format!(
                "decoded {} bytes, trailer says {}",
                actual.plain_len, expected.plain_len
            )));
        }
        if expected.blake3 != actual.blake3 {
            return Err(CodecError::Corrupt(format!(
                "checksum mismatch: content hashes to {}, trailer says {}",
                actual.hex(),
                expected.hex()
            )));
        }
        Ok(actual)
    }
}

impl<R: Read> ObjectReader<R> {
    /// A decoding error that reading the input did not cause means damaged
    /// input: made InvalidData, whatever kind the decompressor gave it
    /// (lz4 and zstd report most damage as Other).
    fn damaged_input(&self, e: io::Error) -> io::Error {
        let body = match &self.decompressor {
            Decompressor::None(b) => b,
            Decompressor::Lz4(d) => d.get_ref(),
            Decompressor::Zstd(d) => d.get_ref().get_ref(),
        };
        if body.failed {
            e
        } else {
            io::Error::new(io::ErrorKind::InvalidData, e.to_string())
        }
    }
}

impl<R: Read> Read for ObjectReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = match &mut self.decompressor {
            Decompressor::None(r) => r.read(buf),
            Decompressor::Lz4(r) => r.read(buf),
            Decompressor::Zstd(r) => r.read(buf),
        };
        let n = read.map_err(|e| self.damaged_input(e))?;
        self.hasher.update(&buf[..n]);
        self.plain_len += n as u64;
        Ok(n)
    }
}

impl From<CodecError> for io::Error {
    fn from(e: CodecError) -> io::Error {
        match e {
            CodecError::Io(e) | CodecError::Write(e) => e,
            CodecError::Corrupt(m) => io::Error::new(io::ErrorKind::InvalidData, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// zstd decoding allocates its window (in C, out of the tests'
    /// allocation watch): a frame that declares a 2 GiB window must be
    /// refused, not served. libzstd's decoder limit (2^27) is the bound.
    #[test]
    fn a_zstd_frame_declaring_a_huge_window_is_refused() {
        let mut object = b"PGDR\x01\x02\x00\x00".to_vec();
        // Magic, a descriptor without content size, window log 10 + 21.
        object.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3]);
        // One raw, last block of 4 bytes.
        object.extend_from_slice(&[0x21, 0x00, 0x00, b'w', b'a', b'l', b'!']);
        let payload_len = (object.len() - HEADER_LEN) as u64;
        object.extend_from_slice(&4u64.to_le_bytes());
        object.extend_from_slice(&payload_len.to_le_bytes());
        object.extend_from_slice(blake3::hash(b"wal!").as_bytes());
        object.extend_from_slice(END_MAGIC);
        let err = decode(&object).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        // The same frame with a 1 KiB window decodes: only the size differs.
        object[HEADER_LEN + 5] = 0;
        assert_eq!(decode(&object).unwrap().0, b"wal!");
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn round_trip_every_compression() {
        let plain = sample();
        for c in Compression::ALL {
            let (obj, digest) = encode(&plain, c).unwrap();
            assert_eq!(digest.plain_len, plain.len() as u64);
            let (back, d2) = decode(&obj).unwrap();
            assert_eq!(back, plain, "{c:?}");
            assert_eq!(digest, d2);
            assert_eq!(trailer_digest(&obj).unwrap(), digest);
            if c != Compression::None {
                assert!(obj.len() < plain.len() / 2, "{c:?} compresses");
            }
        }
    }

    /// Whole-buffer lz4 writes its own frame (blocks compressed on several
    /// threads): it must be a standard LZ4 frame that decodes to the input
    /// at every size around the block boundaries, with incompressible
    /// blocks stored as they are.
    #[test]
    fn parallel_lz4_frames_are_standard_and_exact() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        let wal_like: Vec<u8> = sample().into_iter().cycle().take(16 << 20).collect();
        let mut mixed = noise(LZ4_BLOCK + 17);
        mixed.extend_from_slice(&wal_like[..2 * LZ4_BLOCK]);
        for plain in [
            wal_like.clone(),
            noise(16 << 20),
            mixed,
            wal_like[..LZ4_BLOCK - 1].to_vec(),
            wal_like[..LZ4_BLOCK + 1].to_vec(),
            vec![7],
        ] {
            let (obj, digest) = encode(&plain, Compression::Lz4).unwrap();
            assert_eq!(decode(&obj).unwrap(), (plain.clone(), digest));
            let frame = &obj[HEADER_LEN..obj.len() - TRAILER_LEN];
            let mut back = Vec::new();
            lz4_flex::frame::FrameDecoder::new(frame)
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == plain, "lz4_flex's frame decoder disagrees");
            // Incompressible input costs its size plus block headers only.
            assert!(frame.len() <= plain.len() + 64, "{}", frame.len());
        }
        let (obj, _) = encode(&wal_like, Compression::Lz4).unwrap();
        assert!(obj.len() < wal_like.len() / 4, "compressible WAL shrinks");
    }

    #[test]
    fn empty_object_round_trips() {
        for c in Compression::ALL {
            let (obj, _) = encode(b"", c).unwrap();
            assert!(decode(&obj).unwrap().0.is_empty());
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let plain = sample();
        for c in Compression::ALL {
            let (obj, _) = encode(&plain, c).unwrap();
            for pos in [
                0,
                5,
                HEADER_LEN + 3,
                obj.len() / 2,
                obj.len() - 20,
                obj.len() - 1,
            ] {
                let mut bad = obj.clone();
                bad[pos] ^= 0x55;
                assert!(decode(&bad).is_err(), "{c:?}: flip at {pos} undetected");
            }
            let truncated = &obj[..obj.len() - 10];
            assert!(decode(truncated).is_err(), "{c:?}: truncation undetected");
            let mut longer = obj.clone();
            longer.insert(obj.len() - TRAILER_LEN, 0);
            assert!(decode(&longer).is_err(), "{c:?}: extra byte undetected");
        }
    }

    #[test]
    fn checksum_mismatch_message_is_clear() {
        let (mut obj, _) = encode(b"hello world", Compression::None).unwrap();
        obj[HEADER_LEN] = b'j';
        let err = decode(&obj).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    /// A destination that cannot be written is its own failure, never
    /// taken for a corrupt object (which would send an operator after the
    /// archive when the local disk is full).
    #[test]
    fn a_failing_destination_is_a_write_error() {
        #[derive(Debug)]
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (obj, _) = encode(&sample(), Compression::Lz4).unwrap();
        let err = decode_into(&obj[..], Full, u64::MAX).unwrap_err();
        assert!(matches!(err, CodecError::Write(_)), "{err:?}");
        assert!(err.to_string().contains("cannot write"), "{err}");
    }

    #[test]
    fn plaintext_beyond_the_limit_is_corruption() {
        let plain = sample();
        let (obj, _) = encode(&plain, Compression::Lz4).unwrap();
        let limit = plain.len() as u64;
        assert_eq!(decode_into(&obj[..], Vec::new(), limit).unwrap().0, plain);
        let err = decode_into(&obj[..], Vec::new(), limit - 1).unwrap_err();
        assert!(matches!(err, CodecError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn damaged_payload_is_corruption_for_every_decoder() {
        let plain = sample();
        for c in Compression::ALL {
            let (obj, _) = encode(&plain, c).unwrap();
            let payload = obj.len() - HEADER_LEN - TRAILER_LEN;
            for pos in (0..64).map(|i| HEADER_LEN + i * payload / 64) {
                let mut bad = obj.clone();
                bad[pos] ^= 0x20;
                // A flip the decoder ignores (an unused bit) changes nothing.
                match decode(&bad) {
                    Ok((back, _)) => assert!(back == plain, "{c:?}: flip at {pos}"),
                    Err(e) => assert!(
                        matches!(e, CodecError::Corrupt(_)),
                        "{c:?}: flip at {pos}: {e:?}"
                    ),
                }
            }
        }
    }
}
