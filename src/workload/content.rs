//! Row payloads and the canonical content hash.
//!
//! A row's payload is a pure function of (seed, writer, seq, length), so the
//! expected table content follows from the ledger alone. The content hash is
//! BLAKE3 over the rows in (writer, seq) order, each encoded as
//! `writer|seq|payload\n`; the ledger and the verifier both hash through
//! [`ContentHasher`], so the two always use the same encoding.

use std::fmt::Display;

/// The payload characters: 64 URL-safe ASCII symbols, one per 6 bits.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The payload of row (`writer`, `seq`): `len` ASCII characters drawn from
/// BLAKE3's extendable output keyed by `seed`, `writer` and `seq`.
pub fn payload(seed: u64, writer: u32, seq: u64, len: usize) -> String {
    text(b"pgdrill payload v1\0", seed, writer, seq, len)
}

/// `len` ASCII characters of the stream `domain` for (`seed`, `writer`,
/// `seq`): every stream of the workload is a pure function of these.
pub(super) fn text(domain: &[u8], seed: u64, writer: u32, seq: u64, len: usize) -> String {
    let mut bytes = vec![0u8; len];
    stream(domain, seed, writer, seq).fill(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
        .collect()
}

/// The first 8 bytes of the stream `domain` for (`seed`, `writer`, `seq`).
pub(super) fn draw(domain: &[u8], seed: u64, writer: u32, seq: u64) -> u64 {
    let mut bytes = [0u8; 8];
    stream(domain, seed, writer, seq).fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn stream(domain: &[u8], seed: u64, writer: u32, seq: u64) -> blake3::OutputReader {
    let mut hasher = blake3::Hasher::new();
    hasher.update(domain);
    hasher.update(&seed.to_le_bytes());
    hasher.update(&writer.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.finalize_xof()
}

/// Hashes rows in the canonical encoding; feed rows in (writer, seq) order.
#[derive(Debug, Clone, Default)]
pub struct ContentHasher {
    hasher: blake3::Hasher,
}

impl ContentHasher {
    /// An empty hash.
    pub fn new() -> ContentHasher {
        ContentHasher::default()
    }

    /// Adds one row as `writer|seq|payload\n` (numbers in decimal, so the
    /// encoding does not depend on their integer types).
    pub fn row(&mut self, writer: impl Display, seq: impl Display, payload: &str) {
        self.hasher.update(format!("{writer}|{seq}|").as_bytes());
        self.hasher.update(payload.as_bytes());
        self.hasher.update(b"\n");
    }

    /// The hash of the rows so far, as lowercase hex.
    pub fn finish(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_sized() {
        let a = payload(7, 1, 42, 100);
        assert_eq!(a.len(), 100);
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)));
        assert_eq!(a, payload(7, 1, 42, 100));
        assert_ne!(a, payload(8, 1, 42, 100));
        assert_ne!(a, payload(7, 2, 42, 100));
        assert_ne!(a, payload(7, 1, 43, 100));
        assert!(payload(7, 1, 42, 0).is_empty());
        // A longer payload extends the shorter one (same XOF stream).
        assert!(payload(7, 1, 42, 300).starts_with(&a));
    }

    #[test]
    fn hash_is_the_blake3_of_the_canonical_encoding() {
        let mut h = ContentHasher::new();
        h.row(1, 1, "ab");
        h.row(2, 10, "");
        let expected = blake3::hash(b"1|1|ab\n2|10|\n").to_hex().to_string();
        assert_eq!(h.finish(), expected);
        assert_eq!(
            ContentHasher::new().finish(),
            blake3::hash(b"").to_hex().to_string()
        );
    }
}
