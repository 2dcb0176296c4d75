"""Writes fixtures/walg/codecs/<ext>/wal_005/: one WAL segment (the
uncompressed fixtures/walg/archive one) as WAL-G stores it with its other
compressions, by independent producers (Python's lzma and gzip, PyPI's
brotli):
- lzma/: LZMA "alone" as ulikunitz/xz's lzma.NewWriter writes it (wal-g
  internal/compression/lzma/compressor.go:18; its defaults: lc 3, lp 0,
  pb 2, an 8 MiB dictionary, unknown size and an end marker), which is
  Python's FORMAT_ALONE at preset 6;
- br/: brotli at quality 3 (wal-g internal/compression/brotli/compressor.go:22);
- gz/: gzip, which WAL-G only reads (wal-g internal/compression/gzip, WAL-E's).
"""

import gzip
import lzma
import os
import shutil
import sys

import brotli

out = sys.argv[1]
name = "000000010000000000000009"
plain = open(os.path.join("fixtures/walg/archive/wal_005", name), "rb").read()
shutil.rmtree(out, ignore_errors=True)
for ext, body in [
    ("lzma", lzma.compress(plain, format=lzma.FORMAT_ALONE, preset=6)),
    ("br", brotli.compress(plain, quality=3)),
    ("gz", gzip.compress(plain, mtime=0)),
]:
    os.makedirs(os.path.join(out, ext, "wal_005"))
    open(os.path.join(out, ext, "wal_005", f"{name}.{ext}"), "wb").write(body)
print("fixtures/walg/codecs:", name, "as .lzma, .br, .gz")
