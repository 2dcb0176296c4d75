//! Encryption of stored objects, configured with WAL-G's settings
//! (`WALG_PGP_KEY*`, `WALG_LIBSODIUM_KEY*`; parsed in `config.rs`).
//!
//! Layering: plaintext -> compression -> codec object (`header | payload |
//! trailer`, see `codec.rs`) -> encryption -> store. The encryption wraps
//! the whole codec object, so every fetch still checks the plaintext's
//! length and BLAKE3 after decrypting. `metadata.json` and the completion
//! sentinel stay plaintext, as in WAL-G.
//!
//! A reader knows what it reads from the object's first bytes (key names
//! do not change):
//! - `PGDR`: a codec object, not encrypted. With a key configured it is
//!   refused: anyone who can write to the bucket could have planted it.
//!   `PGDRILL_ALLOW_UNENCRYPTED_READS` accepts it, for an archive being
//!   migrated to encryption;
//! - `PGDS`: the symmetric format below;
//! - an OpenPGP packet header with tag 1 (public-key encrypted session key)
//!   or 3 (symmetric-key encrypted session key): an OpenPGP message.
//!
//! **OpenPGP** (`WALG_PGP_KEY`, `WALG_PGP_KEY_PATH`): a standard binary
//! message: one session key packet for the key's encryption subkey, then a
//! SEIPD v1 packet (AES-256, with modification detection code) holding a
//! binary literal data packet whose content is the codec object, so
//! `gpg --decrypt` returns exactly the object pgdrill would store without
//! encryption. Encryption needs only the public key (a private key's public
//! part is used when a private key is configured); reading needs the
//! private key, unlocked with `WALG_PGP_KEY_PASSPHRASE` once per process.
//! Decryption streams: the modification detection code is checked at the
//! end of the object, and the codec's trailer check covers the plaintext.
//! Messages whose content is a compressed data packet (gpg compresses by
//! default) are decompressed (ZIP, ZLIB).
//!
//! **Symmetric** (`WALG_LIBSODIUM_KEY`, `WALG_LIBSODIUM_KEY_PATH`): the
//! settings are WAL-G's, the format is pgdrill's: XChaCha20-Poly1305 in the
//! STREAM construction (RustCrypto `aead::stream`, 32-bit big-endian chunk
//! counter and a last-chunk flag in the nonce):
//!
//! ```text
//! header, 35 bytes: "PGDS" | version 1 | log2(chunk size) = 16 | 0 0 |
//!                   key id (8) | nonce prefix (19, random per object)
//! chunks:           64 KiB of plaintext + 16-byte tag each; the last one
//!                   (0..=64 KiB) is sealed as last, with the header as
//!                   associated data of every chunk
//! ```
//!
//! Any changed byte fails authentication, and so does a truncated object
//! (its new last chunk was not sealed as last). The key id (the first 8
//! bytes of a BLAKE3 key derivation from the key) tells "encrypted with
//! another key" from "corrupt" without revealing anything about the key.
//!
//! WAL-G's libsodium objects (libsodium's secretstream, no magic; see
//! `secretstream.rs`; written in WAL-G's format) are read with the same key: with a libsodium key
//! configured, an object that is neither `PGDS` nor `PGDR` must open as
//! one (its first chunk authenticates), else it is refused, or read as
//! plaintext with `PGDRILL_ALLOW_UNENCRYPTED_READS`.

mod openpgp;
mod secretstream;
mod symmetric;

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use base64::Engine as _;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, OsRng};
use chacha20poly1305::XChaCha20Poly1305;
use pgp::composed::{
    Any, DecryptionOptions, Esk, Message, MessageBuilder, SignedPublicSubKey, SignedSecretKey,
    TheRing,
};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyDetails, KeyId, Password, Seipdv1ReadMode};

use super::store::Key;
use crate::backup::config::{EncryptionConfig, KeyTransform, Secret};
use openpgp::*;
use symmetric::*;

/// The encryption schemes, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Pgp,
    Sodium,
}

impl Scheme {
    /// The settings that configure a key of this scheme.
    fn variables(self) -> &'static str {
        match self {
            Scheme::Pgp => "WALG_PGP_KEY or WALG_PGP_KEY_PATH",
            Scheme::Sodium => "WALG_LIBSODIUM_KEY or WALG_LIBSODIUM_KEY_PATH",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Pgp => "OpenPGP",
            Scheme::Sodium => "libsodium (XChaCha20-Poly1305)",
        })
    }
}

/// Why a key cannot be used or an object cannot be decrypted. Messages
/// name the setting or object involved and never contain key material or
/// the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key cannot be parsed or used.
    #[error("{origin} does not hold a usable key: {detail}")]
    BadKey { origin: String, detail: String },
    /// An encrypted object, and no key of its scheme is configured.
    #[error("object {key} is encrypted with {scheme} but {configured}: set {}", scheme.variables())]
    NoKey {
        key: Key,
        scheme: Scheme,
        /// What is configured instead.
        configured: String,
    },
    /// An OpenPGP object, and only a public key is configured.
    #[error("object {key} is encrypted with OpenPGP and {origin} holds only a public key: reading needs the private key")]
    PublicKeyOnly { key: Key, origin: String },
    /// An OpenPGP object encrypted for other keys.
    #[error("object {key} is encrypted with OpenPGP for key {recipients}, not for the key in {origin} ({ours}): configure the private key it was encrypted with")]
    WrongPgpKey {
        key: Key,
        recipients: String,
        origin: String,
        ours: String,
    },
    /// A symmetric object encrypted with another key.
    #[error("object {key} is encrypted with another libsodium key (key id {stored}; the key in {origin} has key id {ours})")]
    WrongSodiumKey {
        key: Key,
        stored: String,
        origin: String,
        ours: String,
    },
    /// An unencrypted object although a key is configured: someone who can
    /// write to the bucket but has no key may have planted it.
    #[error("object {key} is not encrypted, but a key is configured ({origin}): it may have been written by someone without the key, so it is not trusted; while migrating an archive from unencrypted to encrypted objects, set PGDRILL_ALLOW_UNENCRYPTED_READS=true")]
    Unencrypted { key: Key, origin: String },
    /// With a libsodium key configured: an object that is not pgdrill's
    /// and does not open as WAL-G's libsodium stream (which has no magic
    /// to tell it by).
    #[error("object {key} does not open as WAL-G's libsodium stream with the key in {origin}, and is not pgdrill's: it was encrypted with another key, is damaged, or is not encrypted (unencrypted objects are not trusted while a key is configured; while migrating an archive to encryption, set PGDRILL_ALLOW_UNENCRYPTED_READS=true)")]
    NotASodiumStream { key: Key, origin: String },
    /// An OpenPGP message compressed with an algorithm pgdrill cannot read.
    #[error("object {key} is an OpenPGP message compressed with {algorithm}, which pgdrill cannot decompress (it reads ZIP and ZLIB): re-encrypt it with gpg --compress-algo zlib (or none)")]
    PgpCompression { key: Key, algorithm: String },
    /// The private key is locked and no passphrase is configured.
    #[error(
        "the private key in {origin} is protected by a passphrase: set WALG_PGP_KEY_PASSPHRASE"
    )]
    PassphraseMissing { origin: String },
    /// The passphrase does not unlock the private key.
    #[error(
        "WALG_PGP_KEY_PASSPHRASE does not unlock the private key in {origin}: check the passphrase"
    )]
    WrongPassphrase { origin: String },
    /// The encryption envelope is damaged (before any content was read).
    #[error("stored object {key} is corrupt: {detail}")]
    Corrupt { key: Key, detail: String },
    /// Reading the first bytes of the object failed.
    #[error("reading {key}: {source}")]
    Read { key: Key, source: io::Error },
}

/// How objects are encrypted and decrypted; built once per process from
/// the settings (see [`Encryption::new`]).
pub struct Encryption {
    keys: Keys,
    /// Whether unencrypted objects are read although a key is configured
    /// (`PGDRILL_ALLOW_UNENCRYPTED_READS`, for migrations).
    allow_unencrypted_reads: bool,
}

/// The configured key, if any.
enum Keys {
    /// Objects are stored as codec objects.
    None,
    /// OpenPGP with a public or private key.
    Pgp(Box<PgpKey>),
    /// XChaCha20-Poly1305 STREAM with a 32-byte key.
    Sodium(SodiumKey),
}

impl Keys {
    /// Where the configured key came from, for messages.
    fn origin(&self) -> &str {
        match self {
            Keys::None => "no key",
            Keys::Pgp(k) => &k.origin,
            Keys::Sodium(k) => &k.origin,
        }
    }
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.keys {
            Keys::None => f.write_str("None"),
            Keys::Pgp(k) => f
                .debug_struct("Pgp")
                .field("origin", &k.origin)
                .field("subkey", &hex_id(k.recipient.legacy_key_id()))
                .field("private", &k.secret.is_some())
                .field("allow_unencrypted_reads", &self.allow_unencrypted_reads)
                .finish(),
            Keys::Sodium(k) => f
                .debug_struct("Sodium")
                .field("origin", &k.origin)
                .field("key_id", &hex::encode(k.id))
                .field("allow_unencrypted_reads", &self.allow_unencrypted_reads)
                .finish(),
        }
    }
}

/// Bytes read to tell the formats apart.
const PEEK: usize = 4;

impl Encryption {
    /// No encryption: objects are stored and read as codec objects.
    pub fn none() -> Encryption {
        Encryption {
            keys: Keys::None,
            allow_unencrypted_reads: true,
        }
    }

    /// Parses the configured key; `allow_unencrypted_reads` accepts
    /// unencrypted objects although a key is configured.
    pub fn new(
        config: &EncryptionConfig,
        allow_unencrypted_reads: bool,
    ) -> Result<Encryption, CryptoError> {
        let keys = Keys::new(config)?;
        Ok(Encryption {
            allow_unencrypted_reads: allow_unencrypted_reads || matches!(keys, Keys::None),
            keys,
        })
    }

    /// Whether a key is configured.
    pub fn is_configured(&self) -> bool {
        !matches!(self.keys, Keys::None)
    }
}

impl Keys {
    fn new(config: &EncryptionConfig) -> Result<Keys, CryptoError> {
        match config {
            EncryptionConfig::None => Ok(Keys::None),
            EncryptionConfig::Pgp {
                key,
                origin,
                passphrase,
            } => PgpKey::parse(key, origin, passphrase.clone()).map(|k| Keys::Pgp(Box::new(k))),
            EncryptionConfig::Sodium {
                key,
                origin,
                transform,
            } => {
                let bytes = sodium_key_bytes(key.expose(), *transform).map_err(|detail| {
                    CryptoError::BadKey {
                        origin: origin.clone(),
                        detail,
                    }
                })?;
                Ok(Keys::Sodium(SodiumKey::new(bytes, origin)))
            }
        }
    }
}

impl Encryption {
    /// Encrypts everything written through the returned writer into
    /// `inner`; [`EncryptWriter::finish`] completes the object.
    pub fn wrap_writer<W: Write + Send + 'static>(&self, inner: W) -> io::Result<EncryptWriter<W>> {
        Ok(EncryptWriter(match &self.keys {
            Keys::None => Sealing::Plain(inner),
            Keys::Pgp(k) => Sealing::Pgp(PgpWriter::start(k.recipient.clone(), inner)?),
            Keys::Sodium(k) => Sealing::Sodium(SodiumWriter::start(k, inner)?),
        }))
    }

    /// Encrypts a whole object.
    pub fn encrypt_vec(&self, object: Vec<u8>) -> io::Result<Vec<u8>> {
        self.encrypt_whole(object, false)
    }

    /// `object` encrypted as pgdrill or (`walg`) as WAL-G does; unchanged
    /// with no key.
    fn encrypt_whole(&self, object: Vec<u8>, walg: bool) -> io::Result<Vec<u8>> {
        if let Keys::None = self.keys {
            return Ok(object);
        }
        let out = Vec::with_capacity(object.len() + 4096);
        let mut w = if walg {
            self.wrap_writer_walg(out)?
        } else {
            self.wrap_writer(out)?
        };
        w.write_all(&object)?;
        w.finish()
    }

    /// Like [`Encryption::wrap_writer`], encrypting as WAL-G does: OpenPGP
    /// as for pgdrill's own objects (a standard message, which WAL-G's
    /// go-crypto reads); with a libsodium key, libsodium's secretstream as
    /// WAL-G writes it (`secretstream.rs`), not pgdrill's `PGDS`.
    pub fn wrap_writer_walg<W: Write + Send + 'static>(
        &self,
        inner: W,
    ) -> io::Result<EncryptWriter<W>> {
        match &self.keys {
            Keys::Sodium(k) => Ok(EncryptWriter(Sealing::WalgSodium(
                secretstream::SecretStreamWriter::start(&k.key.into(), inner)?,
            ))),
            Keys::None | Keys::Pgp(_) => self.wrap_writer(inner),
        }
    }

    /// Encrypts a whole object as WAL-G would ([`Encryption::wrap_writer_walg`]).
    pub fn encrypt_vec_walg(&self, object: Vec<u8>) -> io::Result<Vec<u8>> {
        self.encrypt_whole(object, true)
    }

    /// The codec object inside stored object `key`, read from `inner`:
    /// decrypted when the object is encrypted (see the module docs for
    /// how that is recognized), passed through when it is not.
    pub fn wrap_reader<R: Read + Send + 'static>(
        &self,
        key: &Key,
        mut inner: R,
    ) -> Result<DecryptReader<R>, CryptoError> {
        let mut first = Vec::with_capacity(PEEK);
        (&mut inner)
            .take(PEEK as u64)
            .read_to_end(&mut first)
            .map_err(|source| CryptoError::Read {
                key: key.clone(),
                source,
            })?;
        let scheme = detect(&first);
        // WAL-G's libsodium objects carry no magic, and their random header
        // may start like an OpenPGP packet: with a libsodium key, whatever
        // is not pgdrill's is tried as one first.
        if let Keys::Sodium(k) = &self.keys {
            if scheme != Some(Scheme::Sodium) && !crate::backup::codec::is_pgdrill_object(&first) {
                let want = secretstream::HEADER_BYTES + secretstream::WALG_SEALED_CHUNK;
                (&mut inner)
                    .take((want - first.len()) as u64)
                    .read_to_end(&mut first)
                    .map_err(|source| CryptoError::Read {
                        key: key.clone(),
                        source,
                    })?;
                let bytes: [u8; 32] = k.key.into();
                if secretstream::opens(&bytes, &first) {
                    let inner = io::Cursor::new(first).chain(inner);
                    let reader = secretstream::SecretStreamReader::new(bytes, inner);
                    return Ok(DecryptReader(Opened::WalgSodium(reader)));
                }
                if scheme.is_none() {
                    let inner = io::Cursor::new(first).chain(inner);
                    if self.allow_unencrypted_reads {
                        return Ok(DecryptReader(Opened::Plain(inner)));
                    }
                    return Err(CryptoError::NotASodiumStream {
                        key: key.clone(),
                        origin: k.origin.clone(),
                    });
                }
                // An OpenPGP message after all: refused below, naming it.
            }
        }
        let inner = io::Cursor::new(first).chain(inner);
        let opened = match (scheme, &self.keys) {
            (None, _) if self.allow_unencrypted_reads => Opened::Plain(inner),
            (None, keys) => {
                return Err(CryptoError::Unencrypted {
                    key: key.clone(),
                    origin: keys.origin().to_string(),
                })
            }
            (Some(Scheme::Pgp), Keys::Pgp(k)) => Opened::Pgp(Box::new(k.open(key, inner)?)),
            (Some(Scheme::Sodium), Keys::Sodium(k)) => {
                Opened::Sodium(SodiumReader::open(k, key, inner)?)
            }
            (Some(scheme), configured) => {
                return Err(CryptoError::NoKey {
                    key: key.clone(),
                    scheme,
                    configured: match configured {
                        Keys::None => "no key is configured".to_string(),
                        Keys::Pgp(k) => {
                            format!("only an OpenPGP key is configured ({})", k.origin)
                        }
                        Keys::Sodium(k) => {
                            format!("only a libsodium key is configured ({})", k.origin)
                        }
                    },
                })
            }
        };
        Ok(DecryptReader(opened))
    }
}

/// The scheme an object's first bytes announce; `None` for anything else
/// (the codec checks its own header).
fn detect(first: &[u8]) -> Option<Scheme> {
    if first.starts_with(SODIUM_MAGIC) {
        return Some(Scheme::Sodium);
    }
    let b = *first.first()?;
    if b & 0x80 == 0 {
        return None;
    }
    // New-format headers carry the tag in 6 bits, old-format ones in 4.
    let tag = if b & 0x40 != 0 {
        b & 0x3f
    } else {
        (b >> 2) & 0x0f
    };
    matches!(tag, 1 | 3).then_some(Scheme::Pgp)
}

/// The codec object inside a stored object (see [`Encryption::wrap_reader`]).
pub struct DecryptReader<R: Read>(Opened<R>);

type Peeked<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

enum Opened<R: Read> {
    Plain(Peeked<R>),
    Pgp(Box<PgpReader>),
    Sodium(SodiumReader<Peeked<R>>),
    WalgSodium(secretstream::SecretStreamReader<Peeked<R>>),
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Opened::Plain(r) => r.read(buf),
            Opened::Pgp(r) => r.read(buf),
            Opened::Sodium(r) => r.read(buf),
            Opened::WalgSodium(r) => r.read(buf),
        }
    }
}

/// Encrypts what is written through it (see [`Encryption::wrap_writer`]).
pub struct EncryptWriter<W: Write>(Sealing<W>);

enum Sealing<W: Write> {
    Plain(W),
    Pgp(PgpWriter<W>),
    Sodium(SodiumWriter<W>),
    WalgSodium(secretstream::SecretStreamWriter<W>),
}

impl<W: Write> EncryptWriter<W> {
    /// Completes the encrypted object and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self.0 {
            Sealing::Plain(w) => Ok(w),
            Sealing::Pgp(w) => w.finish(),
            Sealing::Sodium(w) => w.finish(),
            Sealing::WalgSodium(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Sealing::Plain(w) => w.write(buf),
            Sealing::Pgp(w) => w.write(buf),
            Sealing::Sodium(w) => w.write(buf),
            Sealing::WalgSodium(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Sealing::Plain(w) => w.flush(),
            // Data moves on in whole chunks; finish() writes the rest.
            Sealing::Pgp(_) | Sealing::Sodium(_) | Sealing::WalgSodium(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: &str = include_str!("../../../fixtures/keys/public.asc");
    const PRIVATE: &str = include_str!("../../../fixtures/keys/private.asc");
    const PROTECTED: &str = include_str!("../../../fixtures/keys/private-protected.asc");
    const OTHER: &str = include_str!("../../../fixtures/keys/other-private.asc");
    const PASSPHRASE: &str = "pgdrill-test-passphrase";
    const SODIUM_HEX: &str = include_str!("../../../fixtures/keys/libsodium.hex");

    fn pgp(key: &str, passphrase: Option<&str>) -> Encryption {
        Encryption::new(
            &EncryptionConfig::Pgp {
                key: Secret::new(key),
                origin: "WALG_PGP_KEY".into(),
                passphrase: passphrase.map(Secret::new),
            },
            false,
        )
        .unwrap()
    }

    fn sodium(hex_key: &str) -> Encryption {
        Encryption::new(
            &EncryptionConfig::Sodium {
                key: Secret::new(hex_key),
                origin: "WALG_LIBSODIUM_KEY".into(),
                transform: KeyTransform::Hex,
            },
            false,
        )
        .unwrap()
    }

    fn object_key() -> Key {
        Key::new("wal_005/000000010000000000000003.lz4")
    }

    /// Stands in for a codec object: starts with the codec's magic.
    fn sample(len: usize) -> Vec<u8> {
        b"PGDR"
            .iter()
            .copied()
            .chain((0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8))
            .take(len)
            .collect()
    }

    /// Encrypts with `enc` in odd-sized writes.
    fn seal(enc: &Encryption, plain: &[u8]) -> Vec<u8> {
        let mut w = enc.wrap_writer(Vec::new()).unwrap();
        for piece in plain.chunks(7001) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    /// A WAL-G libsodium stream starts with a random 24-byte header, so
    /// about one in 26 starts with a byte that reads as an OpenPGP packet
    /// tag. With a libsodium key such a stream is still WAL-G's (it
    /// authenticates); it was refused as "encrypted with OpenPGP" (a drill
    /// of the WAL-G format with libsodium failed on one backup tar).
    #[test]
    fn a_walg_sodium_stream_whose_header_looks_like_openpgp_is_read() {
        let enc = sodium(SODIUM_HEX);
        let plain = b"backup_label".repeat(100);
        let stored = (0..2000)
            .map(|_| enc.encrypt_vec_walg(plain.clone()).unwrap())
            .find(|s| detect(&s[..PEEK]) == Some(Scheme::Pgp))
            .expect("a header that reads as OpenPGP within 2000 tries");
        assert_eq!(open(&enc, &stored).unwrap(), plain);
    }

    fn open(enc: &Encryption, stored: &[u8]) -> Result<Vec<u8>, String> {
        let mut r = enc
            .wrap_reader(&object_key(), io::Cursor::new(stored.to_vec()))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn every_scheme_round_trips_small_and_multi_chunk_objects() {
        let schemes = [
            ("none", Encryption::none()),
            ("pgp", pgp(PRIVATE, None)),
            ("sodium", sodium(SODIUM_HEX)),
        ];
        for (name, enc) in &schemes {
            for len in [0, 1, 100, SODIUM_CHUNK, SODIUM_CHUNK + 1, 1_300_000] {
                let plain = sample(len);
                let stored = seal(enc, &plain);
                assert_eq!(open(enc, &stored).unwrap(), plain, "{name} {len}");
                assert_eq!(enc.encrypt_vec(plain.clone()).unwrap().len(), stored.len());
                if enc.is_configured() && len > 4 {
                    assert!(
                        !stored.windows(16).any(|w| w == &plain[4..20]),
                        "{name}: plaintext visible"
                    );
                }
            }
        }
    }

    #[test]
    fn objects_are_recognized_by_their_first_bytes() {
        let plain = sample(1000);
        assert_eq!(detect(&plain), None);
        assert_eq!(detect(&seal(&pgp(PUBLIC, None), &plain)), Some(Scheme::Pgp));
        assert_eq!(
            detect(&seal(&sodium(SODIUM_HEX), &plain)),
            Some(Scheme::Sodium)
        );
        // Old-format OpenPGP headers: PKESK (0x84..) and SKESK (0x8c..).
        assert_eq!(detect(&[0x85]), Some(Scheme::Pgp));
        assert_eq!(detect(&[0x8c]), Some(Scheme::Pgp));
        // A literal data packet is not an encrypted message.
        assert_eq!(detect(&[0xcb]), None);
    }

    #[test]
    fn unencrypted_objects_are_refused_unless_allowed() {
        let plain = sample(1000);
        for enc in [sodium(SODIUM_HEX), pgp(PUBLIC, None), pgp(PRIVATE, None)] {
            let err = open(&enc, &plain).unwrap_err();
            assert!(
                err.contains("is not encrypted") && err.contains("PGDRILL_ALLOW_UNENCRYPTED_READS"),
                "{err}"
            );
        }
        let migrating = Encryption::new(
            &EncryptionConfig::Sodium {
                key: Secret::new(SODIUM_HEX),
                origin: "WALG_LIBSODIUM_KEY".into(),
                transform: KeyTransform::Hex,
            },
            true,
        )
        .unwrap();
        assert_eq!(open(&migrating, &plain).unwrap(), plain);
        assert_eq!(open(&Encryption::none(), &plain).unwrap(), plain);
    }

    #[test]
    fn compressed_openpgp_messages_are_read() {
        use pgp::types::CompressionAlgorithm;
        let plain = sample(300_000);
        let public = pgp(PUBLIC, None);
        let Keys::Pgp(key) = &public.keys else {
            panic!("an OpenPGP configuration")
        };
        let recipient = key.recipient.clone();
        for algorithm in [CompressionAlgorithm::ZLIB, CompressionAlgorithm::ZIP] {
            let mut builder = MessageBuilder::from_bytes("", plain.clone())
                .seipd_v1(OsRng, SymmetricKeyAlgorithm::AES256);
            builder.compression(algorithm);
            builder.encrypt_to_key(OsRng, &recipient).unwrap();
            let stored = builder.to_vec(OsRng).unwrap();
            assert_eq!(
                open(&pgp(PRIVATE, None), &stored).unwrap(),
                plain,
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn pgp_public_key_encrypts_private_key_decrypts_with_passphrase() {
        let plain = sample(200_000);
        let stored = seal(&pgp(PUBLIC, None), &plain);
        assert_eq!(open(&pgp(PRIVATE, None), &stored).unwrap(), plain);
        assert_eq!(
            open(&pgp(PROTECTED, Some(PASSPHRASE)), &stored).unwrap(),
            plain
        );

        let err = open(&pgp(PUBLIC, None), &stored).unwrap_err();
        assert!(err.contains("holds only a public key"), "{err}");
        let err = open(&pgp(PROTECTED, None), &stored).unwrap_err();
        assert!(err.contains("set WALG_PGP_KEY_PASSPHRASE"), "{err}");
        let err = open(&pgp(PROTECTED, Some("not-the-passphrase")), &stored).unwrap_err();
        assert!(err.contains("does not unlock"), "{err}");
        assert!(!err.contains("not-the-passphrase"), "{err}");
        let err = open(&pgp(OTHER, None), &stored).unwrap_err();
        assert!(
            err.contains("for key 74B0D9AF68882237") && err.contains("F875B65867966AAC"),
            "{err}"
        );
    }

    #[test]
    fn wrong_or_missing_key_is_named() {
        let plain = sample(5000);
        let by_pgp = seal(&pgp(PUBLIC, None), &plain);
        let by_sodium = seal(&sodium(SODIUM_HEX), &plain);

        let err = open(&Encryption::none(), &by_pgp).unwrap_err();
        assert_eq!(
            err,
            "object wal_005/000000010000000000000003.lz4 is encrypted with OpenPGP but no key is configured: set WALG_PGP_KEY or WALG_PGP_KEY_PATH"
        );
        let err = open(&Encryption::none(), &by_sodium).unwrap_err();
        assert!(err.contains("WALG_LIBSODIUM_KEY_PATH"), "{err}");
        let err = open(&sodium(SODIUM_HEX), &by_pgp).unwrap_err();
        assert!(
            err.contains("only a libsodium key is configured") && err.contains("WALG_PGP_KEY"),
            "{err}"
        );
        let err = open(&pgp(PRIVATE, None), &by_sodium).unwrap_err();
        assert!(err.contains("only an OpenPGP key"), "{err}");

        let other = sodium(&"ab".repeat(32));
        let err = open(&other, &by_sodium).unwrap_err();
        assert!(err.contains("another libsodium key"), "{err}");
    }

    #[test]
    fn modified_or_truncated_ciphertext_is_detected() {
        let plain = sample(3 * SODIUM_CHUNK + 100);
        for enc in [pgp(PRIVATE, None), sodium(SODIUM_HEX)] {
            let stored = seal(&enc, &plain);
            let len = stored.len();
            for pos in [40, len / 2, len - 20, len - 1] {
                let mut bad = stored.clone();
                bad[pos] ^= 0x04;
                assert!(open(&enc, &bad).is_err(), "{enc:?}: flip at {pos}");
            }
            for cut in [
                1,
                17,
                len - 3 * (SODIUM_CHUNK + SODIUM_TAG),
                len / 2,
                len - 60,
            ] {
                assert!(
                    open(&enc, &stored[..len - cut]).is_err(),
                    "{enc:?}: truncated by {cut}"
                );
            }
        }
        // Cut at a chunk boundary: the new last chunk was not sealed as last.
        let enc = sodium(SODIUM_HEX);
        let stored = seal(&enc, &plain);
        let boundary = SODIUM_HEADER_LEN + 2 * (SODIUM_CHUNK + SODIUM_TAG);
        let err = open(&enc, &stored[..boundary]).unwrap_err();
        assert!(err.contains("modified or truncated"), "{err}");
        let err = open(&enc, &stored[..SODIUM_HEADER_LEN]).unwrap_err();
        assert!(err.contains("modified or truncated"), "{err}");
    }

    #[test]
    fn codec_objects_decode_through_encryption_and_damage_is_corruption() {
        use crate::backup::codec::{self, CodecError, Compression};
        let plain = sample(400_000);
        let (object, digest) = codec::encode(&plain, Compression::Lz4).unwrap();
        for enc in [pgp(PRIVATE, None), sodium(SODIUM_HEX)] {
            let stored = enc.encrypt_vec(object.clone()).unwrap();
            let decode = |bytes: Vec<u8>| {
                let reader = enc
                    .wrap_reader(&object_key(), io::Cursor::new(bytes))
                    .unwrap();
                codec::decode_from(reader)
            };
            assert_eq!(decode(stored.clone()).unwrap(), (plain.clone(), digest));
            let mut bad = stored.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x01;
            assert!(
                matches!(decode(bad), Err(CodecError::Corrupt(_))),
                "{enc:?}"
            );
        }
    }

    #[test]
    fn libsodium_key_transforms_follow_wal_g() {
        let key = [7u8; 32];
        let hex_text = hex::encode(key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        assert_eq!(sodium_key_bytes(&hex_text, KeyTransform::Hex).unwrap(), key);
        assert_eq!(
            sodium_key_bytes(&format!("{b64}\n"), KeyTransform::Base64).unwrap(),
            key
        );
        let raw = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            &sodium_key_bytes(raw, KeyTransform::None).unwrap(),
            raw.as_bytes()
        );
        let padded = sodium_key_bytes("0123456789012345678901234", KeyTransform::None).unwrap();
        assert_eq!(&padded[25..], &[0u8; 7]);
        assert!(sodium_key_bytes("too short", KeyTransform::None)
            .unwrap_err()
            .contains("at least 25"));
        assert!(sodium_key_bytes("abcd", KeyTransform::Hex)
            .unwrap_err()
            .contains("32 are needed"));
        assert!(sodium_key_bytes("zz", KeyTransform::Hex)
            .unwrap_err()
            .contains("not hex"));
    }

    #[test]
    fn unusable_keys_are_clear_errors_without_key_material() {
        let err = Encryption::new(
            &EncryptionConfig::Pgp {
                key: Secret::new("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
                origin: "WALG_PGP_KEY".into(),
                passphrase: None,
            },
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("WALG_PGP_KEY does not hold a usable key")
                && err.contains("first line"),
            "{err}"
        );
        let err = Encryption::new(
            &EncryptionConfig::Sodium {
                key: Secret::new("secret-but-short"),
                origin: "WALG_LIBSODIUM_KEY".into(),
                transform: KeyTransform::None,
            },
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("secret-but-short"), "{err}");
        let shown = format!(
            "{:?} {:?}",
            pgp(PROTECTED, Some(PASSPHRASE)),
            sodium(SODIUM_HEX)
        );
        assert!(
            !shown.contains(PASSPHRASE) && !shown.contains(SODIUM_HEX.trim()),
            "{shown}"
        );
    }
}
