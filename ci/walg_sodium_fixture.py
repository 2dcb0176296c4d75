"""Writes fixtures/walg/sodium/: objects encrypted as WAL-G encrypts with
WALG_LIBSODIUM_KEY, by libsodium itself (PyPI's PyNaCl), for pgdrill's own
secretstream reader (src/backup/crypto/secretstream.rs). WAL-G's writer
(wal-g internal/crypto/libsodium/writer.go; chunk size crypter.go:20):
crypto_secretstream_xchacha20poly1305 with a 24-byte header, the
plaintext in 8192-byte chunks pushed with TAG_MESSAGE, and on close one
chunk of the remaining 0..8191 bytes pushed with TAG_FINAL.

- stream-N: N bytes of pseudo-random plaintext (0, 1, 8191, 8192, 20000),
  so the final chunk is empty, short, or after one or two full chunks;
  stream-rekey: two chunks, the first pushed with TAG_REKEY (libsodium's,
  not WAL-G's); streams.json: each plaintext's BLAKE3.
- archive/wal_005/: fixtures/walg/archive's compressed WAL objects,
  encrypted (WAL-G compresses, then encrypts: compress_and_encrypt.go:34-53).

The key is fixtures/keys/libsodium.hex (WALG_LIBSODIUM_KEY_TRANSFORM=hex).
"""

import hashlib
import json
import os
import shutil
import sys

import blake3
import nacl.bindings as sodium

out = sys.argv[1]
key = bytes.fromhex(open("fixtures/keys/libsodium.hex").read().strip())
CHUNK = 8192


def seal(plain, tags=None):
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    body = [header]
    chunks = [plain[i:i + CHUNK] for i in range(0, len(plain) - len(plain) % CHUNK, CHUNK)]
    for n, chunk in enumerate(chunks):
        tag = (tags or {}).get(n, sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE)
        body.append(sodium.crypto_secretstream_xchacha20poly1305_push(state, chunk, tag=tag))
    rest = plain[len(chunks) * CHUNK:]
    body.append(sodium.crypto_secretstream_xchacha20poly1305_push(
        state, rest, tag=sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL))
    return b"".join(body)


def pseudo_random(n):
    data = b""
    counter = 0
    while len(data) < n:
        data += hashlib.sha256(counter.to_bytes(8, "little")).digest()
        counter += 1
    return data[:n]


shutil.rmtree(out, ignore_errors=True)
os.makedirs(os.path.join(out, "archive", "wal_005"))
manifest = {}
for n in (0, 1, 8191, 8192, 20000):
    plain = pseudo_random(n)
    open(os.path.join(out, f"stream-{n}"), "wb").write(seal(plain))
    manifest[f"stream-{n}"] = blake3.blake3(plain).hexdigest()
plain = pseudo_random(2 * CHUNK - 5)
rekeyed = seal(plain, {0: sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY})
open(os.path.join(out, "stream-rekey"), "wb").write(rekeyed)
manifest["stream-rekey"] = blake3.blake3(plain).hexdigest()
json.dump(manifest, open(os.path.join(out, "streams.json"), "w"), indent=2, sort_keys=True)
src = "fixtures/walg/archive/wal_005"
for name in sorted(os.listdir(src)):
    if name.endswith((".lz4", ".zst")):
        sealed = seal(open(os.path.join(src, name), "rb").read())
        open(os.path.join(out, "archive", "wal_005", name), "wb").write(sealed)
print("fixtures/walg/sodium:", " ".join(sorted(manifest)), "and", " ".join(os.listdir(os.path.join(out, "archive", "wal_005"))))
