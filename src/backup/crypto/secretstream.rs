//! libsodium's `crypto_secretstream_xchacha20poly1305`: how WAL-G
//! encrypts with `WALG_LIBSODIUM_KEY` (wal-g
//! `internal/crypto/libsodium/writer.go`, `reader.go`: a 24-byte header,
//! then the plaintext in 8192-byte chunks (`crypter.go:20`) each pushed
//! with tag MESSAGE, and on close one last chunk of the remaining 0..8191
//! bytes with tag FINAL; every chunk grows by 17 bytes: the encrypted tag
//! and a Poly1305 MAC). These objects carry no magic: a reader with a
//! libsodium key configured tries this format on what is not pgdrill's.
//!
//! The construction follows libsodium's
//! `crypto_secretstream/xchacha20poly1305/secretstream_xchacha20poly1305.c`
//! (`init_pull`, `pull`, `rekey`): the key for the stream is HChaCha20 of
//! the key and the header's first 16 bytes; the nonce is a 32-bit
//! little-endian counter (starting at 1) and the header's last 8 bytes;
//! each chunk's MAC covers the encrypted tag block (ChaCha20 block 1),
//! the ciphertext (from block 2) with libsodium's padding, and the
//! lengths; after each chunk the nonce's last 8 bytes are XORed with the
//! MAC and the counter incremented (rekeying when it wraps or a chunk
//! asks). Stricter than WAL-G's reader: an object must end with its FINAL
//! chunk, so a cut at a chunk boundary is an error, not a short file.

use std::io::{self, Read, Write};

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use poly1305::universal_hash::KeyInit;
use poly1305::Poly1305;

/// Bytes of the stream header.
pub(super) const HEADER_BYTES: usize = 24;
/// Bytes a chunk grows by: its encrypted tag and MAC.
const A_BYTES: usize = 17;
/// WAL-G's plaintext chunk (wal-g `internal/crypto/libsodium/crypter.go:20`).
const WALG_CHUNK: usize = 8192;
/// A whole WAL-G chunk as stored.
pub(super) const WALG_SEALED_CHUNK: usize = WALG_CHUNK + A_BYTES;
const TAG_MESSAGE: u8 = 0x00;
const TAG_REKEY: u8 = 0x02;
const TAG_FINAL: u8 = 0x03;

/// The stream's state: its key and nonce (counter | inonce).
#[derive(Clone)]
struct State {
    key: [u8; 32],
    nonce: [u8; 12],
}

impl State {
    fn init(key: &[u8; 32], header: &[u8; HEADER_BYTES]) -> State {
        let sub =
            chacha20::hchacha::<chacha20::cipher::consts::U10>(key.into(), header[..16].into());
        let mut nonce = [0u8; 12];
        nonce[0] = 1;
        nonce[4..].copy_from_slice(&header[16..]);
        State {
            key: sub.into(),
            nonce,
        }
    }

    fn cipher(&self, block: u64) -> ChaCha20 {
        let mut c = ChaCha20::new(&self.key.into(), &self.nonce.into());
        c.seek(block * 64);
        c
    }

    /// The Poly1305 key (block 0) and the tag block (block 1, holding
    /// `tag` encrypted) of the next chunk.
    /// (Pulling, `tag_byte` is the encrypted tag: block[0] comes back
    /// plain, and the MAC covers the encrypted one, which `pull` puts back.)
    fn chunk_blocks(&self, tag_byte: u8) -> ([u8; 64], [u8; 64]) {
        let mut block0 = [0u8; 64];
        self.cipher(0).apply_keystream(&mut block0);
        let mut block = [0u8; 64];
        block[0] = tag_byte;
        self.cipher(1).apply_keystream(&mut block);
        (block0, block)
    }

    /// The MAC of a chunk: the tag block, the ciphertext with libsodium's
    /// padding ((0x10 - 64 + mlen) & 0xf) and the lengths.
    fn mac(poly_key: &[u8], block: &[u8; 64], text: &[u8]) -> [u8; 16] {
        let pad = (0x10usize.wrapping_sub(64).wrapping_add(text.len())) & 0xf;
        let mut input = Vec::with_capacity(64 + text.len() + pad + 16);
        input.extend_from_slice(block);
        input.extend_from_slice(text);
        input.resize(input.len() + pad, 0);
        input.extend_from_slice(&0u64.to_le_bytes());
        input.extend_from_slice(&(64 + text.len() as u64).to_le_bytes());
        Poly1305::new(poly_key.into())
            .compute_unpadded(&input)
            .into()
    }

    /// After a chunk: the nonce's last 8 bytes XOR the MAC, the counter
    /// incremented, a rekey when it wraps or the chunk asked.
    fn advance(&mut self, mac: &[u8; 16], tag: u8) {
        for (n, m) in self.nonce[4..].iter_mut().zip(mac.iter()) {
            *n ^= m;
        }
        let counter = u32::from_le_bytes(self.nonce[..4].try_into().expect("four bytes"));
        let counter = counter.wrapping_add(1);
        self.nonce[..4].copy_from_slice(&counter.to_le_bytes());
        if tag & TAG_REKEY != 0 || counter == 0 {
            self.rekey();
        }
    }

    /// Authenticates and decrypts one sealed chunk; returns its tag, or
    /// `None` when it fails authentication.
    fn pull(&mut self, sealed: &[u8], plain: &mut Vec<u8>) -> Option<u8> {
        let text_len = sealed.len().checked_sub(A_BYTES)?;
        let (block0, mut block) = self.chunk_blocks(sealed[0]);
        let tag = block[0];
        block[0] = sealed[0];
        let text = &sealed[1..1 + text_len];
        let mac = Self::mac(&block0[..32], &block, text);
        let stored = &sealed[1 + text_len..];
        // Constant time: a MAC is compared without early exit.
        if stored
            .iter()
            .zip(mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return None;
        }
        plain.clear();
        plain.extend_from_slice(text);
        self.cipher(2).apply_keystream(plain);
        self.advance(&mac, tag);
        Some(tag)
    }

    /// Seals one chunk of `plain` with `tag` onto `out`.
    fn push(&mut self, plain: &[u8], tag: u8, out: &mut Vec<u8>) {
        let (block0, block) = self.chunk_blocks(tag);
        out.push(block[0]);
        let start = out.len();
        out.extend_from_slice(plain);
        self.cipher(2).apply_keystream(&mut out[start..]);
        let mac = Self::mac(&block0[..32], &block, &out[start..]);
        out.extend_from_slice(&mac);
        self.advance(&mac, tag);
    }

    fn rekey(&mut self) {
        let mut fresh = [0u8; 40];
        fresh[..32].copy_from_slice(&self.key);
        fresh[32..].copy_from_slice(&self.nonce[4..]);
        self.cipher(0).apply_keystream(&mut fresh);
        self.key.copy_from_slice(&fresh[..32]);
        self.nonce[4..].copy_from_slice(&fresh[32..]);
        self.nonce[..4].copy_from_slice(&1u32.to_le_bytes());
    }
}

/// Whether `first` (the start of an object: its header and first chunk,
/// or all of it when shorter) opens as a WAL-G libsodium stream under `key`.
pub(super) fn opens(key: &[u8; 32], first: &[u8]) -> bool {
    let Some((header, rest)) = first.split_first_chunk::<HEADER_BYTES>() else {
        return false;
    };
    let chunk = &rest[..rest.len().min(WALG_SEALED_CHUNK)];
    State::init(key, header)
        .pull(chunk, &mut Vec::new())
        .is_some()
}

/// `plain` sealed as WAL-G's libsodium writer seals an object (see
/// [`SecretStreamWriter`]).
#[cfg(test)]
fn seal(key: &[u8; 32], plain: &[u8]) -> io::Result<Vec<u8>> {
    let chunks = plain.len() / WALG_CHUNK;
    let out = Vec::with_capacity(HEADER_BYTES + plain.len() + (chunks + 1) * A_BYTES);
    let mut w = SecretStreamWriter::start(key, out)?;
    w.write_all(plain)?;
    w.finish()
}

/// Seals what is written through it as WAL-G's libsodium writer does
/// (wal-g `internal/crypto/libsodium/writer.go`): a random header, each
/// full 8192-byte chunk tagged MESSAGE as soon as it is full, and on
/// [`SecretStreamWriter::finish`] the remaining 0..8191 bytes tagged FINAL.
pub(super) struct SecretStreamWriter<W: Write> {
    inner: W,
    state: State,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

impl<W: Write> SecretStreamWriter<W> {
    pub(super) fn start(key: &[u8; 32], mut inner: W) -> io::Result<SecretStreamWriter<W>> {
        let mut header = [0u8; HEADER_BYTES];
        super::symmetric::getrandom_nonce(&mut header)?;
        inner.write_all(&header)?;
        Ok(SecretStreamWriter {
            inner,
            state: State::init(key, &header),
            plain: Vec::with_capacity(WALG_CHUNK),
            sealed: Vec::with_capacity(WALG_SEALED_CHUNK),
        })
    }

    fn push(&mut self, tag: u8) -> io::Result<()> {
        self.sealed.clear();
        self.state.push(&self.plain, tag, &mut self.sealed);
        self.plain.clear();
        self.inner.write_all(&self.sealed)
    }

    /// Seals the last chunk (FINAL) and hands back the inner writer.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.push(TAG_FINAL)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SecretStreamWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(WALG_CHUNK - self.plain.len());
        self.plain.extend_from_slice(&buf[..n]);
        // A full chunk goes at once: a stream of whole chunks ends with an
        // empty FINAL one, as WAL-G's does.
        if self.plain.len() == WALG_CHUNK {
            self.push(TAG_MESSAGE)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole chunks move on; finish() seals the rest.
        Ok(())
    }
}

/// Reads the plaintext of a WAL-G libsodium stream.
pub(super) struct SecretStreamReader<R> {
    inner: R,
    state: Option<State>,
    key: [u8; 32],
    sealed: Vec<u8>,
    plain: Vec<u8>,
    at: usize,
    chunks: u64,
    finished: bool,
}

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

impl<R: Read> SecretStreamReader<R> {
    pub(super) fn new(key: [u8; 32], inner: R) -> SecretStreamReader<R> {
        SecretStreamReader {
            inner,
            state: None,
            key,
            sealed: vec![0u8; WALG_SEALED_CHUNK],
            plain: Vec::with_capacity(WALG_CHUNK),
            at: 0,
            chunks: 0,
            finished: false,
        }
    }

    /// Reads up to `buf.len()` bytes, fewer only at the end.
    fn fill(&mut self, len: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < len {
            match self.inner.read(&mut self.sealed[n..len])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        if self.state.is_none() {
            let n = self.fill(HEADER_BYTES)?;
            let header: [u8; HEADER_BYTES] = self.sealed[..HEADER_BYTES]
                .try_into()
                .expect("header length");
            if n < HEADER_BYTES {
                return Err(invalid(format!(
                    "{n} bytes, shorter than a libsodium stream header"
                )));
            }
            self.state = Some(State::init(&self.key, &header));
        }
        let n = self.fill(WALG_SEALED_CHUNK)?;
        if n == 0 {
            return Err(invalid(format!(
                "the libsodium stream ends after {} chunks without its final chunk (truncated)",
                self.chunks
            )));
        }
        let state = self.state.as_mut().expect("initialized above");
        let tag = state
            .pull(&self.sealed[..n], &mut self.plain)
            .ok_or_else(|| {
                invalid(format!(
                    "libsodium chunk {} fails authentication (damaged, or another key)",
                    self.chunks
                ))
            })?;
        self.chunks += 1;
        self.at = 0;
        if tag == TAG_FINAL {
            if self.inner.read(&mut [0u8; 1])? != 0 {
                return Err(invalid(
                    "data follows the libsodium stream's final chunk".into(),
                ));
            }
            self.finished = true;
        } else if n < WALG_SEALED_CHUNK {
            return Err(invalid(
                "the libsodium stream's last chunk is not its final one (truncated)".into(),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for SecretStreamReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/walg/sodium/");

    fn key() -> [u8; 32] {
        let hex = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/keys/libsodium.hex"
        ))
        .unwrap();
        hex::decode(hex.trim()).unwrap().try_into().unwrap()
    }

    /// Streams PyNaCl (libsodium itself) sealed as WAL-G's writer does
    /// (ci/walg-fixtures): 0, 1, 8191, 8192 and 20000 bytes of plaintext,
    /// so the final chunk is empty, short, and after one or two full
    /// chunks; one stream rekeys after its first chunk.
    #[test]
    fn libsodium_streams_decrypt_exactly() {
        let manifest: std::collections::BTreeMap<String, String> = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURE}streams.json")).unwrap(),
        )
        .unwrap();
        assert!(manifest.len() >= 5);
        for (file, blake3) in &manifest {
            let sealed = std::fs::read(format!("{FIXTURE}{file}")).unwrap();
            assert!(opens(&key(), &sealed), "{file}");
            let mut plain = Vec::new();
            SecretStreamReader::new(key(), sealed.as_slice())
                .read_to_end(&mut plain)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(&blake3::hash(&plain).to_hex().to_string(), blake3, "{file}");
        }
    }

    /// What [`seal`] writes, [`SecretStreamReader`] (checked against
    /// libsodium above) reads, at every final-chunk shape.
    #[test]
    fn sealed_streams_read_back() {
        for len in [0, 1, WALG_CHUNK - 1, WALG_CHUNK, 2 * WALG_CHUNK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&key(), &plain).unwrap();
            assert_eq!(
                sealed.len(),
                HEADER_BYTES + len + (len / WALG_CHUNK + 1) * A_BYTES
            );
            assert!(opens(&key(), &sealed), "{len}");
            let mut back = Vec::new();
            SecretStreamReader::new(key(), sealed.as_slice())
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain, "{len}");
        }
    }

    #[test]
    fn damage_truncation_and_other_keys_are_refused() {
        let sealed = std::fs::read(format!("{FIXTURE}stream-20000")).unwrap();
        let read = |bytes: &[u8], key: [u8; 32]| {
            let mut plain = Vec::new();
            SecretStreamReader::new(key, bytes)
                .read_to_end(&mut plain)
                .map(|_| plain)
        };
        read(&sealed, key()).unwrap();
        let mut other = key();
        other[0] ^= 1;
        assert!(!opens(&other, &sealed));
        let e = read(&sealed, other).unwrap_err().to_string();
        assert!(e.contains("chunk 0 fails authentication"), "{e}");
        let mut flipped = sealed.clone();
        flipped[HEADER_BYTES + WALG_SEALED_CHUNK + 100] ^= 0x20;
        let e = read(&flipped, key()).unwrap_err().to_string();
        assert!(e.contains("chunk 1 fails authentication"), "{e}");
        // Cut at a chunk boundary: WAL-G's reader would return a short file.
        let cut = &sealed[..HEADER_BYTES + 2 * WALG_SEALED_CHUNK];
        let e = read(cut, key()).unwrap_err().to_string();
        assert!(e.contains("after 2 chunks without its final chunk"), "{e}");
        let mut longer = sealed.clone();
        longer.push(0);
        let e = read(&longer, key()).unwrap_err().to_string();
        assert!(e.contains("fails authentication"), "{e}");
        let e = read(&sealed[..10], key()).unwrap_err().to_string();
        assert!(e.contains("shorter than a libsodium stream header"), "{e}");
    }
}
