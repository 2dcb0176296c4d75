"""Writes fixtures/walg/restore/: a WAL-G archive of a real PostgreSQL 15
cluster, a full backup, a delta of it and the WAL from the full backup's
start to the end, laid out byte for byte as WAL-G writes them, by a producer
independent of pgdrill (Python's tarfile, lz4 and zstandard). Called by
ci/walg-fixtures with a running cluster (1 MB segments, archive_command
copying to ARCHIVE); every choice cites the wal-g source it follows (wal-g
commit 43fb039f).

- Each backup is taken by pg_basebackup -Fp -X none (the non-exclusive
  backup WAL-G takes with pg_backup_start/stop); its copy is then packed as
  WAL-G packs the data directory it walks (internal/databases/postgres/
  bundle.go:184-300): entries named "/" + the path relative to the data
  directory (internal/bundle.go:112-117: the root is "/"), directories as
  headers, in tar_partitions/part_NNN.tar.<ext> (internal/storage_tar_ball.go:44)
  cut at a size threshold (WALG_TAR_SIZE_THRESHOLD, small here so there are
  several), global/pg_control alone in pg_control.tar.<ext> (bundle.go:
  308-351), backup_label and tablespace_map (empty when there are no
  tablespaces) in backup_label.tar.<ext> (bundle.go:357-407).
- The delta (name base_<seg>_D_<base seg>, backup_push_handler.go:281):
  a file the base had with the same bytes is skipped (in files_metadata as
  IsSkipped, in no tar; WAL-G decides by mtime, bundle.go:270-280); a paged
  file the base had (pagefile.go isPagedFile) is an increment in WAL-G's
  format (pagefile.go:1-9, incremental_page_reader.go:86-112: "wi1" 0x55,
  u64 file size, u32 block count, the block numbers, the pages; little
  endian) holding the pages that are new or whose LSN is at or after the
  base's start LSN (incremental_page_reader.go:201-222), and also any page
  whose bytes differ from the base's (hint bits are not WAL-logged), so a
  restore is byte-exact; any other file is whole.
- Per backup: metadata.json (ExtendedMetadataDto), files_metadata.json
  (FilesMetadataDto: Files with IsIncremented, IsSkipped, MTime,
  UpdatesCount; TarFileSets), then the V2 sentinel (BackupSentinelDtoV2)
  last (backup_push_handler.go:472-489), as Go's encoding/json writes them.
- The full backup's parts are zstd (WALG_COMPRESSION_METHOD=zstd), the
  delta's and the WAL lz4 (WAL-G's default), as ci/walg-fixtures writes
  single WAL objects.

expected.json records, for each backup, the BLAKE3 of every file a restore
must produce, and what the cluster holds at the end of the archived WAL.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time

import blake3
import lz4.frame
import zstandard

BIN = "/usr/lib/postgresql/15/bin"
PAGE = 8192
# Small, so that each backup has several parts (WAL-G's default is 1 GB).
TAR_THRESHOLD = 6 << 20
SEG = 1 << 20


def run(cmd):
    return subprocess.run(["su", "postgres", "-c", cmd], check=True,
                          capture_output=True, text=True).stdout


def psql(sock, sql):
    return run(f"{BIN}/psql -h {sock} -U postgres -Atq -c \"{sql}\"").strip()


def compress(data, ext):
    if ext == "lz4":
        # pierrec/lz4 v4 defaults (wal-g internal/compression/lz4/compressor.go:17-19).
        return lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX4MB,
                                  content_checksum=True, block_checksum=False,
                                  block_linked=False, store_size=False)
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def go_json(value):
    return json.dumps(value, separators=(",", ":"))


def lsn_of(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def go_time(seconds):
    """A time as Go's time.Time marshals it (RFC 3339, nanoseconds, UTC)."""
    whole = int(seconds)
    nanos = int(round((seconds - whole) * 1e9))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if nanos:
        stamp += ("." + f"{nanos:09d}").rstrip("0")
    return stamp + "Z"


def base_backup(sock, work, label):
    copy = os.path.join(work, label)
    started = time.time()
    run(f"{BIN}/pg_basebackup -h {sock} -U postgres -D {copy} -X none -c fast")
    manifest = json.load(open(os.path.join(copy, "backup_manifest")))
    os.remove(os.path.join(copy, "backup_manifest"))
    ranges = manifest["WAL-Ranges"][0]
    label_text = open(os.path.join(copy, "backup_label")).read()
    os.remove(os.path.join(copy, "backup_label"))
    times = (started, time.time())
    return copy, lsn_of(ranges["Start-LSN"]), lsn_of(ranges["End-LSN"]), label_text, times


def walk(copy):
    """(name, path) of every entry in filepath.Walk's lexical order; the
    root is "/"."""
    out = [("/", copy)]
    for root, dirs, files in os.walk(copy):
        dirs.sort()
        names = sorted(dirs + files)
        for n in names:
            p = os.path.join(root, n)
            out.append(("/" + os.path.relpath(p, copy), p))
    out.sort(key=lambda e: e[0].split("/"))
    return out


def is_paged(name, size):
    # wal-g pagefile.go isPagedFile (the transaction-state directories excluded).
    base = name.rsplit("/", 1)[-1]
    if any(d in name for d in ("pg_xact", "pg_clog", "pg_multixact")):
        return False
    digits = base.split(".")
    return (("/base/" in name or "/pg_tblspc/" in name) and size > 0 and size % PAGE == 0
            and digits[0].isdigit() and (len(digits) == 1 or (len(digits) == 2 and digits[1].isdigit())))


def page_valid_lsn(page):
    """(is new, is valid, lsn) as wal-g postgres_page_header.go reads a page."""
    hi, lo, _, flags, lower, upper, special, size_version = struct.unpack_from("<IIHHHHHH", page)
    lsn = (hi << 32) | lo
    new = upper == 0
    valid = not ((flags & 7) != flags or lower < 24 or lower > upper or upper > special
                 or special > PAGE or lsn == 0 or (size_version & 0xFF00) != PAGE
                 or (size_version & 0xFF) > 5)
    return new, valid, lsn


def increment(data, old, from_lsn):
    """WAL-G's increment of `data`, or None when a page is invalid (WAL-G
    then stores the whole file, tar_ball_file_packer.go:151-157)."""
    blocks = []
    for no in range(len(data) // PAGE):
        page = data[no * PAGE:(no + 1) * PAGE]
        new, valid, lsn = page_valid_lsn(page)
        if not valid and not new:
            return None
        if new or lsn >= from_lsn or old[no * PAGE:(no + 1) * PAGE] != page:
            blocks.append(no)
    head = b"wi1\x55" + struct.pack("<QI", len(data), len(blocks))
    head += b"".join(struct.pack("<I", b) for b in blocks)
    return head + b"".join(data[b * PAGE:(b + 1) * PAGE] for b in blocks)


class Parts:
    """Tar partitions cut at TAR_THRESHOLD, as WAL-G's tarball queue does."""

    def __init__(self, folder, ext):
        self.folder, self.ext = folder, ext
        self.sets, self.number, self.buf, self.tar, self.size = {}, 0, None, None, 0
        self.compressed = 0
        os.makedirs(folder, exist_ok=True)

    def _open(self):
        self.number += 1
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)
        self.size = 0
        self.name = f"part_{self.number:03d}.tar.{self.ext}"
        self.sets[self.name] = []

    def add(self, info, data=None):
        if self.tar is None or self.size >= TAR_THRESHOLD:
            self.close()
            self._open()
        self.tar.addfile(info, io.BytesIO(data) if data is not None else None)
        self.sets[self.name].append(info.name)
        self.size += info.size

    def close(self):
        if self.tar is not None:
            self.tar.close()
            body = compress(self.buf.getvalue(), self.ext)
            self.compressed += len(body)
            open(os.path.join(self.folder, self.name), "wb").write(body)
            self.tar = None


class GoTarInfo(tarfile.TarInfo):
    """A header named exactly as given: Go's archive/tar writes a
    directory's name as set (bundle.go:263), Python would add a slash."""

    def get_info(self):
        info = super().get_info()
        info["name"] = self.name
        return info


def header(name, path, size=None, is_dir=False):
    st = os.lstat(path)
    info = GoTarInfo(name)
    info.mode = st.st_mode & 0o7777
    info.mtime = int(st.st_mtime)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = "postgres"
    if is_dir:
        info.type = tarfile.DIRTYPE
    else:
        info.size = st.st_size if size is None else size
    return info


def single_tar(folder, tar_name, entries, ext):
    """pg_control.tar / backup_label.tar: one small tar of its own."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
    body = compress(buf.getvalue(), ext)
    name = f"{tar_name}.{ext}"
    open(os.path.join(folder, name), "wb").write(body)
    return name, len(body)


def write_backup(out, name, copy, start, finish, label, times, ext, sysid, pg_version, base=None):
    """Packs `copy` as WAL-G backup `name`; with `base` (its name, start
    LSN, copy) as a delta of it. Returns the expected files' BLAKE3."""
    folder = os.path.join(out, "basebackups_005", name)
    parts_dir = os.path.join(folder, "tar_partitions")
    parts = Parts(parts_dir, ext)
    files, expected, uncompressed = {}, {}, 0
    for entry, path in walk(copy):
        st = os.lstat(path)
        mtime = go_time(st.st_mtime)
        description = {"IsIncremented": False, "IsSkipped": False, "MTime": mtime, "UpdatesCount": 0}
        if os.path.isdir(path):
            parts.add(header(entry, path, is_dir=True))
            files[entry] = description
            continue
        rel = entry[1:]
        data = open(path, "rb").read()
        expected[rel] = blake3.blake3(data).hexdigest()
        if rel == "global/pg_control":
            continue  # pg_control.tar, last
        old_path = os.path.join(base[2], rel) if base else None
        old = open(old_path, "rb").read() if old_path and os.path.isfile(old_path) else None
        if old is not None and old == data:
            description["IsSkipped"] = True
            files[entry] = description
            continue
        body = data
        if old is not None and is_paged(entry, len(data)):
            inc = increment(data, old, base[1])
            if inc is not None:
                body = inc
                description["IsIncremented"] = True
        parts.add(header(entry, path, size=len(body)), body)
        uncompressed += len(body)
        files[entry] = description
    parts.close()
    control = os.path.join(copy, "global", "pg_control")
    control_data = open(control, "rb").read()
    _, control_size = single_tar(parts_dir, "pg_control.tar",
                                 [(header("/global/pg_control", control), control_data)], ext)
    label_info = GoTarInfo("backup_label")
    label_info.size, label_info.mode, label_info.mtime = len(label), 0o600, int(time.time())
    map_info = GoTarInfo("tablespace_map")
    map_info.size, map_info.mode, map_info.mtime = 0, 0o600, label_info.mtime
    label_tar, label_size = single_tar(parts_dir, "backup_label.tar",
                                       [(label_info, label.encode()), (map_info, b"")], ext)
    parts.sets[label_tar] = ["tablespace_map", "backup_label"]
    expected["backup_label"] = blake3.blake3(label.encode()).hexdigest()
    expected["tablespace_map"] = blake3.blake3(b"").hexdigest()
    uncompressed += len(control_data) + len(label)
    compressed = parts.compressed + control_size + label_size
    sentinel = {"LSN": start}
    if base:
        sentinel.update({"DeltaLSN": base[1], "DeltaFrom": base[0], "DeltaFullName": base[0], "DeltaCount": 1})
    sentinel.update({"PgVersion": pg_version,
                     "FinishLSN": finish, "SystemIdentifier": sysid,
                     "UncompressedSize": uncompressed, "CompressedSize": compressed,
                     "DataCatalogSize": uncompressed, "ChkpNum": None})
    metadata = {"start_time": go_time(times[0]), "finish_time": go_time(times[1]),
                "date_fmt": "%Y-%m-%dT%H:%M:%S.%fZ", "hostname": "pg-0",
                "data_dir": "/var/lib/postgresql/data", "pg_version": sentinel["PgVersion"],
                "start_lsn": start, "finish_lsn": finish, "is_permanent": False,
                "system_identifier": sysid, "uncompressed_size": uncompressed,
                "compressed_size": compressed}
    open(os.path.join(folder, "metadata.json"), "w").write(go_json(metadata))
    files_metadata = {"Files": dict(sorted(files.items())), "TarFileSets": parts.sets}
    open(os.path.join(folder, "files_metadata.json"), "w").write(go_json(files_metadata))
    # BackupSentinelDtoV2: the sentinel's fields, then the V2 ones.
    v2 = dict(sentinel)
    v2.update({"Version": 2, "StartTime": metadata["start_time"], "FinishTime": metadata["finish_time"],
               "DateFmt": metadata["date_fmt"], "Hostname": "pg-0", "DataDir": metadata["data_dir"],
               "IsPermanent": False})
    sentinel_path = os.path.join(out, "basebackups_005", name + "_backup_stop_sentinel.json")
    open(sentinel_path, "w").write(go_json(v2))
    return expected


def segment_name(lsn, timeline=1):
    segno = lsn // SEG
    per = 0x100000000 // SEG
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def main():
    sock, archive, work, out = sys.argv[1:5]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "wal_005"))
    psql(sock, "CREATE TABLE doomed(id int); INSERT INTO doomed SELECT generate_series(1, 500)")
    psql(sock, "CREATE TABLE ledger(id int PRIMARY KEY, note text)")
    psql(sock, "INSERT INTO ledger SELECT g, md5(g::text) FROM generate_series(1, 8000) g")
    # Hint bits and the visibility map set before the full backup, so that
    # the delta holds what the statements below changed.
    psql(sock, "VACUUM FREEZE")
    psql(sock, "CHECKPOINT")
    full_copy, full_start, full_finish, full_label, full_times = base_backup(sock, work, "full")
    full = "base_" + segment_name(full_start)
    # Between the backups: updates and deletes in old pages, new rows, a
    # new table, a dropped one.
    psql(sock, "UPDATE ledger SET note = 'changed' WHERE id BETWEEN 100 AND 200")
    psql(sock, "DELETE FROM ledger WHERE id BETWEEN 3000 AND 3499")
    psql(sock, "INSERT INTO ledger SELECT g, md5(g::text) FROM generate_series(8001, 9000) g")
    psql(sock, "CREATE TABLE added AS SELECT g AS id FROM generate_series(1, 300) g")
    psql(sock, "DROP TABLE doomed")
    psql(sock, "CHECKPOINT")
    delta_copy, delta_start, delta_finish, delta_label, delta_times = base_backup(sock, work, "delta")
    delta = "base_" + segment_name(delta_start) + "_D_" + segment_name(full_start)
    # After the delta: what only WAL replay brings.
    psql(sock, "INSERT INTO ledger SELECT g, 'after' FROM generate_series(9001, 9500) g")
    psql(sock, "UPDATE added SET id = id + 1000 WHERE id <= 10")
    last = psql(sock, "SELECT pg_walfile_name(pg_switch_wal())")
    sysid = int(psql(sock, "SELECT system_identifier FROM pg_control_system()"))
    pg_version = int(psql(sock, "SHOW server_version_num"))
    for _ in range(100):
        if os.path.exists(os.path.join(archive, last)):
            break
        time.sleep(0.2)
    else:
        sys.exit(f"segment {last} was not archived")
    expected = {
        full: write_backup(out, full, full_copy, full_start, full_finish, full_label, full_times, "zst", sysid, pg_version),
        delta: write_backup(out, delta, delta_copy, delta_start, delta_finish, delta_label, delta_times, "lz4",
                            sysid, pg_version, (full, full_start, full_copy)),
    }
    first = segment_name(full_start)
    for seg in sorted(n for n in os.listdir(archive) if len(n) == 24 and first <= n <= last):
        body = compress(open(os.path.join(archive, seg), "rb").read(), "lz4")
        open(os.path.join(out, "wal_005", seg + ".lz4"), "wb").write(body)
    content = {
        "ledger": psql(sock, "SELECT count(*) || ' ' || sum(id) || ' ' || md5(string_agg(note, ',' ORDER BY id)) FROM ledger"),
        "added": psql(sock, "SELECT count(*) || ' ' || sum(id) FROM added"),
        "doomed": psql(sock, "SELECT count(*) FROM pg_class WHERE relname = 'doomed'"),
    }
    json.dump({"backups": expected, "last_segment": last, "content": content},
              open(os.path.join(out, "..", "restore.json"), "w"), indent=1, sort_keys=True)
    print(f"fixtures/walg/restore: {full}, {delta}, WAL {first}..{last}")


main()
