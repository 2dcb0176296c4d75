"""An independent reader of WAL-G's backup format (Python's tarfile, lz4
and zstandard, none of pgdrill's code): restores backup NAME from the
directory store ARCHIVE into DEST as WAL-G's backup-fetch does, then prints
the BLAKE3 of every restored file as JSON ({relative path: hex}).
tests/it/walg.rs runs it on backups pgdrill wrote with
PGDRILL_STORAGE_FORMAT=walg and compares with pgdrill's own restore.

WAL-G's rules followed (wal-g commit 43fb039f, internal/databases/postgres/):
- the chain: the sentinel's DeltaFrom back to the full backup, restored
  full first (backup_fetch_handler.go:69-111);
- a backup's tars are what tar_partitions/ holds (backup.go:65-76),
  part_* first, then backup_label.tar and pg_control.tar, those two only
  of the backup restored (tars_to_extract_provider.go:33-55);
- entries are "/" + the path (the data directory is "/"), backup_label and
  tablespace_map bare (bundle.go:246-263, :376-395);
- in a delta, an entry files_metadata.json marks IsIncremented is an
  increment applied to the base's file: "wi1" 0x55, u64 size, u32 count,
  u32 block numbers, the pages (incremental_page_reader.go:86-112,
  pagefile.go:196-284); a file the delta does not list is not restored.
"""

import io
import json
import os
import struct
import sys
import tarfile

import blake3
import lz4.frame
import zstandard

PAGE = 8192


def decompress(path):
    data = open(path, "rb").read()
    if path.endswith(".lz4"):
        return lz4.frame.decompress(data)
    if path.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.endswith(".tar"):
        return data
    sys.exit(f"{path}: not a compression this check reads")


def apply_increment(target, data):
    if data[:4] != b"wi1\x55":
        sys.exit(f"{target}: not a WAL-G increment")
    size, count = struct.unpack_from("<QI", data, 4)
    blocks = struct.unpack_from(f"<{count}I", data, 16)
    pages = data[16 + 4 * count:]
    if len(pages) != count * PAGE:
        sys.exit(f"{target}: increment of {count} pages holds {len(pages)} bytes")
    with open(target, "r+b") as f:
        f.truncate(size)
        for i, block in enumerate(blocks):
            f.seek(block * PAGE)
            f.write(pages[i * PAGE:(i + 1) * PAGE])


def chain(archive, name):
    names = []
    while name:
        names.insert(0, name)
        sentinel = json.load(open(os.path.join(archive, "basebackups_005", name + "_backup_stop_sentinel.json")))
        name = sentinel.get("DeltaFrom")
    return names


def restore(archive, dest, name, is_delta, is_last):
    folder = os.path.join(archive, "basebackups_005", name)
    files = json.load(open(os.path.join(folder, "files_metadata.json")))["Files"]
    tars = sorted(os.listdir(os.path.join(folder, "tar_partitions")))
    parts = [t for t in tars if t.startswith("part_")]
    last = [t for t in tars if t.startswith("backup_label.tar")] + [t for t in tars if t.startswith("pg_control.tar")]
    if is_delta:
        # What the delta does not list is gone (a dropped relation).
        for root, dirs, names in os.walk(dest):
            for n in names:
                rel = "/" + os.path.relpath(os.path.join(root, n), dest)
                if rel not in files and rel != "/global/pg_control":
                    os.remove(os.path.join(root, n))
    for tar_name in parts + (last if is_last else []):
        with tarfile.open(fileobj=io.BytesIO(decompress(os.path.join(folder, "tar_partitions", tar_name)))) as tar:
            for member in tar:
                rel = member.name.lstrip("/")
                target = os.path.join(dest, rel) if rel else dest
                if member.isdir():
                    os.makedirs(target, exist_ok=True)
                    continue
                data = tar.extractfile(member).read()
                if is_delta and files.get(member.name, {}).get("IsIncremented"):
                    apply_increment(target, data)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    open(target, "wb").write(data)


def main():
    archive, name, dest = sys.argv[1:4]
    members = chain(archive, name)
    os.makedirs(dest, exist_ok=True)
    for i, member in enumerate(members):
        restore(archive, dest, member, i > 0, i == len(members) - 1)
    hashes = {}
    for root, _, names in os.walk(dest):
        for n in names:
            path = os.path.join(root, n)
            hashes[os.path.relpath(path, dest)] = blake3.blake3(open(path, "rb").read()).hexdigest()
    json.dump(hashes, sys.stdout, sort_keys=True)


main()
