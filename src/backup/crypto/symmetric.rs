//! Symmetric encryption (`WALG_LIBSODIUM_KEY*`): XChaCha20-Poly1305 in the
//! STREAM construction, pgdrill's `PGDS` format (see the module above).

use super::*;

/// A 32-byte symmetric key.
pub struct SodiumKey {
    pub(super) origin: String,
    pub(super) key: chacha20poly1305::Key,
    pub(super) id: [u8; 8],
}

/// Chunk of plaintext per sealed symmetric chunk.
pub(super) const SODIUM_CHUNK: usize = 64 * 1024;
pub(super) const SODIUM_TAG: usize = 16;
pub(super) const SODIUM_MAGIC: &[u8; 4] = b"PGDS";
pub(super) const SODIUM_VERSION: u8 = 1;
pub(super) const SODIUM_HEADER_LEN: usize = 35;
/// WAL-G's `WALG_LIBSODIUM_KEY_TRANSFORM`: hex and base64 must decode to
/// exactly 32 bytes; `none` takes the text itself, at least 25 bytes,
/// zero-padded or cut to 32.
pub(super) fn sodium_key_bytes(text: &str, transform: KeyTransform) -> Result<[u8; 32], String> {
    let text = text.trim();
    let decoded = match transform {
        // The decoders' messages quote the offending character: not shown.
        KeyTransform::Hex => hex::decode(text)
            .map_err(|_| "not hex (WALG_LIBSODIUM_KEY_TRANSFORM=hex)".to_string())?,
        KeyTransform::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "not base64 (WALG_LIBSODIUM_KEY_TRANSFORM=base64)".to_string())?,
        KeyTransform::None => {
            if text.len() < 25 {
                return Err(format!(
                    "the key is {} bytes; at least 25 are needed (or set WALG_LIBSODIUM_KEY_TRANSFORM to hex or base64)",
                    text.len()
                ));
            }
            let mut key = text.as_bytes().to_vec();
            key.resize(32, 0);
            key
        }
    };
    decoded
        .try_into()
        .map_err(|v: Vec<u8>| format!("the key decodes to {} bytes, 32 are needed", v.len()))
}

impl SodiumKey {
    pub(super) fn new(key: [u8; 32], origin: &str) -> SodiumKey {
        let derived = blake3::derive_key("pgdrill libsodium key id v1", &key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&derived[..8]);
        SodiumKey {
            origin: origin.to_string(),
            key: key.into(),
            id,
        }
    }

    pub(super) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.key)
    }
}

pub(super) fn sealing_failed(_: chacha20poly1305::aead::Error) -> io::Error {
    io::Error::other("XChaCha20-Poly1305 encryption failed (object too large)")
}

pub(super) struct SodiumWriter<W> {
    inner: W,
    stream: EncryptorBE32<XChaCha20Poly1305>,
    header: [u8; SODIUM_HEADER_LEN],
    /// Plaintext of the chunk being filled, sealed in place.
    buf: Vec<u8>,
}

impl<W: Write> SodiumWriter<W> {
    pub(super) fn start(key: &SodiumKey, mut inner: W) -> io::Result<SodiumWriter<W>> {
        let mut header = [0u8; SODIUM_HEADER_LEN];
        header[..4].copy_from_slice(SODIUM_MAGIC);
        header[4] = SODIUM_VERSION;
        header[5] = SODIUM_CHUNK.trailing_zeros() as u8;
        header[8..16].copy_from_slice(&key.id);
        getrandom_nonce(&mut header[16..])?;
        inner.write_all(&header)?;
        let stream = EncryptorBE32::from_aead(key.cipher(), header[16..].into());
        Ok(SodiumWriter {
            inner,
            stream,
            header,
            buf: Vec::with_capacity(SODIUM_CHUNK + SODIUM_TAG),
        })
    }

    pub(super) fn finish(mut self) -> io::Result<W> {
        self.stream
            .encrypt_last_in_place(&self.header, &mut self.buf)
            .map_err(sealing_failed)?;
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

pub(super) fn getrandom_nonce(out: &mut [u8]) -> io::Result<()> {
    use chacha20poly1305::aead::rand_core::RngCore;
    OsRng.try_fill_bytes(out).map_err(io::Error::other)
}

impl<W: Write> Write for SodiumWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            // A full chunk is sealed only once more data follows: the
            // last chunk must be sealed as last by finish().
            if self.buf.len() == SODIUM_CHUNK {
                self.stream
                    .encrypt_next_in_place(&self.header, &mut self.buf)
                    .map_err(sealing_failed)?;
                self.inner.write_all(&self.buf)?;
                self.buf.clear();
            }
            let n = rest.len().min(SODIUM_CHUNK - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) struct SodiumReader<R> {
    inner: R,
    /// `None` once the last chunk was opened.
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    header: [u8; SODIUM_HEADER_LEN],
    /// Ciphertext read ahead (up to one chunk and one byte, to know
    /// whether the chunk is the last).
    sealed: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
}

impl<R: Read> SodiumReader<R> {
    pub(super) fn open(
        key: &SodiumKey,
        object: &Key,
        mut inner: R,
    ) -> Result<SodiumReader<R>, CryptoError> {
        let corrupt = |detail: &str| CryptoError::Corrupt {
            key: object.clone(),
            detail: detail.to_string(),
        };
        let mut header = [0u8; SODIUM_HEADER_LEN];
        inner.read_exact(&mut header).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("truncated encryption header"),
            _ => CryptoError::Read {
                key: object.clone(),
                source: e,
            },
        })?;
        if header[4] != SODIUM_VERSION || header[5] as u32 != SODIUM_CHUNK.trailing_zeros() {
            return Err(corrupt(
                "unsupported encryption header version or chunk size",
            ));
        }
        if header[8..16] != key.id {
            return Err(CryptoError::WrongSodiumKey {
                key: object.clone(),
                stored: hex::encode(&header[8..16]),
                origin: key.origin.clone(),
                ours: hex::encode(key.id),
            });
        }
        let stream = DecryptorBE32::from_aead(key.cipher(), header[16..].into());
        Ok(SodiumReader {
            inner,
            stream: Some(stream),
            header,
            sealed: Vec::with_capacity(SODIUM_CHUNK + SODIUM_TAG + 1),
            plain: Vec::new(),
            pos: 0,
        })
    }

    /// Opens the next chunk into `plain`.
    pub(super) fn open_chunk(&mut self) -> io::Result<()> {
        let sealed_len = SODIUM_CHUNK + SODIUM_TAG;
        while self.sealed.len() <= sealed_len {
            let have = self.sealed.len();
            self.sealed.resize(sealed_len + 1, 0);
            let n = self.inner.read(&mut self.sealed[have..])?;
            self.sealed.truncate(have + n);
            if n == 0 {
                break;
            }
        }
        let last = self.sealed.len() <= sealed_len;
        self.plain = if last {
            std::mem::take(&mut self.sealed)
        } else {
            let rest = self.sealed.split_off(sealed_len);
            std::mem::replace(&mut self.sealed, rest)
        };
        self.pos = 0;
        let opened = match self.stream.take() {
            None => return Ok(()),
            Some(stream) if last => stream.decrypt_last_in_place(&self.header, &mut self.plain),
            Some(mut stream) => {
                let opened = stream.decrypt_next_in_place(&self.header, &mut self.plain);
                self.stream = Some(stream);
                opened
            }
        };
        opened.map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "libsodium decryption failed: the object was modified or truncated",
            )
        })
    }
}

impl<R: Read> Read for SodiumReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() && self.stream.is_some() {
            self.open_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
