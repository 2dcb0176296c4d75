//! One test per reader of stored bytes.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgdrill::backup::base::read_stored_part;
use pgdrill::backup::catalog::{self, BackupMetadata, BackupSummary, FileEntry, PartInfo};
use pgdrill::backup::codec::{self, Compression};
use pgdrill::backup::config::{EnvVars, Settings};
use pgdrill::backup::progress::Progress;
use pgdrill::backup::store::Key;
use pgdrill::backup::{delta, layout, wal, BackupError, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fuzz::{self, mutate_bytes, mutate_json, Verdict};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A context over a directory store in `dir`, with `extra` settings.
pub(crate) fn context(dir: &Path, extra: &[(&str, &str)]) -> Context {
    let prefix = dir.display().to_string();
    let mut pairs = vec![("WALG_FILE_PREFIX", prefix.as_str())];
    pairs.extend_from_slice(extra);
    let settings = Settings::from_vars(&EnvVars::from_pairs(pairs)).expect("valid settings");
    Context::open(settings, None).expect("a context")
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Some plaintext: a compressible stretch and an incompressible one.
fn plaintext(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = b"PostgreSQL page ".repeat(64);
    v.extend((0..1024).map(|_| rng.random::<u8>()));
    v
}

fn encoded(plain: &[u8], c: Compression) -> Vec<u8> {
    codec::encode(plain, c).expect("encodes").0
}

/// An error must name the object it is about.
pub(crate) fn names(e: &dyn std::fmt::Display, object: &str) -> Verdict {
    let text = e.to_string();
    match text.contains(object) {
        true => Ok(()),
        false => Err(format!("the error does not name {object}: {text}")),
    }
}

#[test]
fn object_codec() {
    let seeds: Vec<Vec<u8>> = [Compression::None, Compression::Lz4, Compression::Zstd]
        .into_iter()
        .enumerate()
        .map(|(i, c)| encoded(&plaintext(i as u64), c))
        .collect();
    fuzz::run("codec", &seeds, mutate_bytes, |input| {
        let _ = codec::decode(input);
        let _ = codec::trailer_digest(input);
        Ok(())
    });
}

/// Encrypted objects as `wal-fetch` and `backup-fetch` open them.
fn encrypted(reader: &str, settings: &[(&str, &str)]) {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), settings);
    let key = Key::new("wal_005/000000010000000000000001.lz4");
    let seeds: Vec<Vec<u8>> = [Compression::None, Compression::Lz4]
        .into_iter()
        .map(|c| {
            ctx.encryption
                .encrypt_vec(encoded(&plaintext(7), c))
                .expect("encrypts")
        })
        .collect();
    fuzz::run(reader, &seeds, mutate_bytes, |input| {
        match ctx
            .encryption
            .wrap_reader(&key, Cursor::new(input.to_vec()))
        {
            Ok(r) => {
                let _ = codec::decode_from(r);
            }
            Err(e) => names(&e, key.as_str())?,
        }
        Ok(())
    });
}

#[test]
fn openpgp_objects() {
    let key = root().join("fixtures/keys/private.asc");
    encrypted("openpgp", &[("WALG_PGP_KEY_PATH", key.to_str().unwrap())]);
}

#[test]
fn libsodium_objects() {
    let key = root().join("fixtures/keys/libsodium.hex");
    encrypted(
        "libsodium",
        &[
            ("WALG_LIBSODIUM_KEY_PATH", key.to_str().unwrap()),
            ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
        ],
    );
}

#[test]
fn wal_fetch_of_stored_wal() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), &[("WALG_COMPRESSION_METHOD", "lz4")]);
    let rt = runtime();
    let names_ = ["000000010000000000000003", "00000002.history"];
    let seeds: Vec<Vec<u8>> = vec![
        encoded(&plaintext(3), Compression::Lz4),
        encoded(
            b"1\t0/3000000\tno recovery target specified\n",
            Compression::Lz4,
        ),
    ];
    let out = tempfile::tempdir().unwrap();
    let mut case = 0usize;
    fuzz::run("wal-fetch", &seeds, mutate_bytes, |input| {
        case += 1;
        let name = names_[case % 2];
        let key = layout::wal_key(name, Compression::Lz4);
        std::fs::create_dir_all(store.path().join("wal_005")).unwrap();
        std::fs::write(store.path().join(key.as_str()), input).unwrap();
        let dest = out.path().join("RECOVERYXLOG");
        match rt.block_on(wal::wal_fetch(&ctx, name, &dest)) {
            Ok(()) => Ok(()),
            Err(e) => names(&e, name),
        }
    });
}

/// The segment the oversized-WAL tests store.
const WAL_NAME: &str = "000000010000000000000003";

/// A directory store configured for lz4, and the path of WAL file
/// `name`'s object in it (its directory made).
fn lz4_wal_store(name: &str) -> (tempfile::TempDir, Context, PathBuf) {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), &[("WALG_COMPRESSION_METHOD", "lz4")]);
    let object = store
        .path()
        .join(layout::wal_key(name, Compression::Lz4).as_str());
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    (store, ctx, object)
}

/// A new file at `path` of 64 GiB of zeros that takes no disk.
fn sparse_64_gib(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
}

/// An object under a WAL file's name that decodes to more than the
/// largest WAL segment PostgreSQL can have (1 GiB) is refused while it
/// decodes, and nothing is left in pg_wal: wal-fetch writes what it
/// decodes into a file, and a small object that inflates without end
/// (an lz4 frame of zeros, or a trailer that lies) would otherwise fill
/// the disk before the checksum is ever looked at.
#[test]
fn wal_fetch_refuses_an_object_larger_than_any_wal_file() {
    let (_store, ctx, object) = lz4_wal_store(WAL_NAME);
    let huge = vec![0u8; (1 << 30) + (1 << 20)];
    std::fs::write(&object, encoded(&huge, Compression::Lz4)).unwrap();
    drop(huge);
    wal_fetch_refuses_as_corrupt(&ctx, WAL_NAME);
}

/// A WAL object stored far larger than any WAL file can be (a sparse
/// 64 GiB file here) is refused from its size, before it is read: it
/// used to be read whole into memory first (or to fail as out of memory,
/// a storage error rather than a damaged object).
#[test]
fn wal_fetch_refuses_an_object_stored_larger_than_any_wal_file() {
    let (_store, ctx, object) = lz4_wal_store(WAL_NAME);
    sparse_64_gib(&object);
    let err = wal_fetch_refuses_as_corrupt(&ctx, WAL_NAME);
    let limit = format!("more than {} bytes", layout::MAX_WAL_OBJECT_SIZE);
    assert!(err.to_string().contains(&limit), "{err}");
}

/// Runs wal-fetch of `name` into an empty pg_wal and checks that it is
/// refused as a corrupt object naming `name`, with nothing left in
/// pg_wal; returns the error.
pub(crate) fn wal_fetch_refuses_as_corrupt(ctx: &Context, name: &str) -> BackupError {
    let pg_wal = tempfile::tempdir().unwrap();
    let dest = pg_wal.path().join("RECOVERYXLOG");
    let err = runtime()
        .block_on(wal::wal_fetch(ctx, name, &dest))
        .expect_err("a WAL file larger than 1 GiB is refused");
    assert!(matches!(err, BackupError::Corrupt { .. }), "{err:?}");
    names(&err, name).unwrap();
    let left: Vec<_> = std::fs::read_dir(pg_wal.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing left in pg_wal: {left:?}");
    err
}

/// A valid sentinel of backup `name` whose metadata hashes to `metadata`.
fn sentinel(name: &str, metadata: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "backup_name": name,
        "start_time": "2026-12-02T01:00:00Z",
        "finish_time": "2026-12-02T01:00:05Z",
        "start_lsn": "0/2000028",
        "finish_lsn": "0/2000100",
        "wal_file_name": "000000010000000000000002",
        "finish_wal_file_name": "000000010000000000000002",
        "timeline": 1,
        "pg_version": 150010,
        "system_identifier": "7300000000000000000",
        "hostname": "db-0",
        "data_dir": "/var/lib/postgresql/data",
        "uncompressed_size": 4096,
        "compressed_size": 1024,
        "is_permanent": false,
        "compression": "lz4",
        "wal_segment_size": 16777216,
        "metadata_blake3": blake3::hash(metadata).to_hex().to_string(),
        "increment_from": "base_000000010000000000000001",
        "increment_count": 1,
        "pgdrill_version": "0.1.0",
    })
}

#[test]
fn backup_list_over_arbitrary_sentinels() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), &[]);
    let rt = runtime();
    let name = "base_000000010000000000000002";
    let seeds = vec![serde_json::to_vec(&sentinel(name, b"{}")).unwrap()];
    let dir = store.path().join("basebackups_005");
    std::fs::create_dir_all(&dir).unwrap();
    let key = layout::sentinel_key(name);
    fuzz::run("backup-list", &seeds, mutate_json, |input| {
        std::fs::write(store.path().join(key.as_str()), input).unwrap();
        match rt.block_on(catalog::list_backups(&ctx)) {
            Ok(list) => {
                for b in &list {
                    if b.summary.backup_name != name {
                        return Err(format!(
                            "listed as {:?}, stored as {name}",
                            b.summary.backup_name
                        ));
                    }
                    // The delta chain is followed by name: following it
                    // must not panic, whatever name the sentinel gives.
                    let _ = rt.block_on(catalog::chain(&ctx, &b.summary));
                }
                Ok(())
            }
            Err(e) => names(&e, key.as_str()),
        }
    });
}

/// A sentinel or a file list stored far larger than any can be (sparse
/// 64 GiB files here) is refused by its size, naming the object, before
/// it is read: backup-list read every sentinel whole, whatever its size.
#[test]
fn oversized_sentinels_and_file_lists_are_refused_unread() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), &[]);
    let rt = runtime();
    let name = "base_000000010000000000000002";
    std::fs::create_dir_all(store.path().join(layout::backup_prefix(name))).unwrap();
    let sparse = |key: &Key| sparse_64_gib(&store.path().join(key.as_str()));
    let refused = |err: BackupError, key: &Key, max: u64| {
        let text = err.to_string();
        assert!(
            text.contains(key.as_str()) && text.contains(&format!("more than the {max} bytes")),
            "{err:?}"
        );
    };
    let sentinel_key = layout::sentinel_key(name);
    sparse(&sentinel_key);
    let err = rt.block_on(catalog::list_backups(&ctx)).unwrap_err();
    refused(err, &sentinel_key, layout::MAX_SENTINEL_SIZE);

    let metadata = b"{}";
    std::fs::write(
        store.path().join(sentinel_key.as_str()),
        serde_json::to_vec(&sentinel(name, metadata)).unwrap(),
    )
    .unwrap();
    let metadata_key = layout::metadata_key(name);
    sparse(&metadata_key);
    let summary: BackupSummary = serde_json::from_value(sentinel(name, metadata)).unwrap();
    let err = rt
        .block_on(catalog::read_metadata(&ctx, &summary))
        .unwrap_err();
    refused(err, &metadata_key, layout::MAX_METADATA_SIZE);
}

/// Peak memory of `backup-list` over sentinels that are large but legal:
/// WAL-G before `files_metadata.json` kept the file list in the sentinel
/// (`Files`, about 100 bytes a file), so an old backup of a cluster with a
/// million files has a 100 MB sentinel. Parsing each into a generic JSON
/// value took about 17 times its size, several at once (1.6 GB for one
/// 100 MB sentinel). The whole process, measured by the kernel, must stay
/// under 256 MiB whatever the bucket holds.
#[test]
fn backup_list_memory_is_bounded_over_large_sentinels() {
    use std::io::Write;
    const PEAK_GOAL: u64 = 256 << 20;
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("basebackups_005");
    std::fs::create_dir_all(&dir).unwrap();
    for segment in 2..6u64 {
        let name = format!("base_0000000100000000{segment:08X}");
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join(format!("{name}_backup_stop_sentinel.json"))).unwrap(),
        );
        write!(
            f,
            "{{\"LSN\":{},\"FinishLSN\":{},\"PgVersion\":150010,\"Files\":{{",
            segment * (16 << 20) + 40,
            segment * (16 << 20) + 4096
        )
        .unwrap();
        for i in 0..1_000_000u32 {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}\"/base/16384/{}\":{{\"IsIncremented\":false,\"IsSkipped\":false,\"MTime\":\"2020-01-01T00:00:00.123456789Z\"}}", 100_000 + i).unwrap();
        }
        write!(f, "}}}}").unwrap();
        f.flush().unwrap();
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgdrill"))
        .args(["backup-list", "--json"])
        .env("WALG_FILE_PREFIX", store.path())
        .env_remove("PGDRILL_ENV_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (output, peak) = output_and_peak_rss(child);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 4, "every sentinel listed");
    assert!(
        peak < PEAK_GOAL,
        "backup-list peaked at {} MiB over four 100 MB sentinels (goal: under {} MiB)",
        peak >> 20,
        PEAK_GOAL >> 20
    );
}

/// A child's output and its peak resident memory in bytes, as the kernel
/// accounts it (`wait4`'s `ru_maxrss`).
fn output_and_peak_rss(mut child: std::process::Child) -> (std::process::Output, u64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).unwrap();
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).unwrap();
        buf
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we spawned, which nothing else waits for.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    let output = std::process::Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, usage.ru_maxrss as u64 * 1024)
}

/// A backup with two files and a directory in one part; returns the
/// metadata, the part's plain tar and the summary.
fn small_backup(name: &str) -> (BackupMetadata, Vec<u8>) {
    let files: [(&str, &[u8]); 2] = [("base/1/1259", &[7u8; 8192]), ("PG_VERSION", b"15\n")];
    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = vec![FileEntry {
        path: "base/1".into(),
        is_dir: true,
        size: 0,
        mode: 0o700,
        blake3: None,
        part: "part_1".into(),
        delta: false,
        mtime: None,
    }];
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o700);
    h.set_size(0);
    tar.append_data(&mut h, "base/1", std::io::empty()).unwrap();
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o600);
        tar.append_data(&mut h, path, content).unwrap();
        entries.push(FileEntry {
            path: path.into(),
            is_dir: false,
            size: content.len() as u64,
            mode: 0o600,
            blake3: Some(blake3::hash(content).to_hex().to_string()),
            part: "part_1".into(),
            delta: false,
            mtime: None,
        });
    }
    let plain = tar.into_inner().unwrap();
    let metadata = BackupMetadata {
        backup_name: name.into(),
        backup_label: "START WAL LOCATION: 0/2000028".into(),
        tablespace_map: String::new(),
        parts: vec![PartInfo {
            name: "part_1".into(),
            key: layout::part_key(name, "part_1", Compression::Lz4)
                .as_str()
                .to_string(),
            plain_size: 0,
            compressed_size: 0,
            blake3: String::new(),
        }],
        files: entries,
    };
    (metadata, plain)
}

/// Everything under `dir` (relative paths), links not followed.
pub(crate) fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads stored part `part` as backup-fetch (into `dest`) or
/// backup-verify (`None`) does, without progress lines.
fn read_part(
    rt: &tokio::runtime::Runtime,
    ctx: &Context,
    part: &PartInfo,
    expected: Arc<HashMap<String, FileEntry>>,
    dest: Option<&Path>,
) -> Result<pgdrill::backup::base::PartReport, BackupError> {
    rt.block_on(async {
        let (progress, _guard) = Progress::start("fuzz", 0, Duration::from_secs(3600));
        read_stored_part(ctx, part, expected, dest.map(Path::to_path_buf), progress).await
    })
}

/// Runs `restore` into `sandbox/dest`, then checks that nothing else in
/// `sandbox` changed and no link was made under `dest`.
pub(crate) fn confined(sandbox: &Path, restore: impl FnOnce(&Path) -> Verdict) -> Verdict {
    let dest = sandbox.join("dest");
    let outside = || -> Vec<PathBuf> {
        tree(sandbox)
            .into_iter()
            .filter(|p| !p.starts_with("dest"))
            .collect()
    };
    let before = outside();
    restore(&dest)?;
    let after = outside();
    if before != after {
        return Err(format!(
            "written outside the target: {before:?} -> {after:?}"
        ));
    }
    for p in tree(&dest) {
        if std::fs::symlink_metadata(dest.join(&p)).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!("a link was restored: {}", p.display()));
        }
    }
    Ok(())
}

/// Restores every part of `metadata` into `sandbox/dest`, [`confined`].
fn restore_into_sandbox(
    rt: &tokio::runtime::Runtime,
    ctx: &Context,
    metadata: &BackupMetadata,
    sandbox: &Path,
) -> Verdict {
    confined(sandbox, |dest| {
        let _ = std::fs::remove_dir_all(dest);
        std::fs::create_dir_all(dest).unwrap();
        let expected = pgdrill::backup::base::files_by_path(metadata);
        for part in metadata.parts.iter().take(4) {
            let result = read_part(rt, ctx, part, Arc::clone(&expected), Some(dest));
            if let Err(e) = result {
                names(&e, &part.key).or_else(|_| match &e {
                    // Failing to write inside the target is about that path.
                    BackupError::Io { .. } => Ok(()),
                    _ => names(&e, "key"),
                })?;
            }
        }
        Ok(())
    })
}

/// A tar header with raw `name` bytes (tar::Builder refuses `..`).
fn raw_entry(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o600);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    let padded = size.div_ceil(512) * 512;
    v.extend(std::iter::repeat_n(b'x', padded.min(1 << 16) as usize));
    v
}

/// Tars that try to leave the target: `..`, absolute paths, links,
/// duplicates, lengths beyond the data.
fn hostile_tars(plain: &[u8]) -> Vec<Vec<u8>> {
    let end = vec![0u8; 1024];
    let with = |entries: Vec<Vec<u8>>| {
        let mut v: Vec<u8> = entries.concat();
        v.extend_from_slice(plain);
        v.extend_from_slice(&end);
        v
    };
    use tar::EntryType::*;
    vec![
        with(vec![raw_entry(b"../escape", Regular, 3, b"")]),
        with(vec![raw_entry(b"/tmp/pgdrill-escape", Regular, 3, b"")]),
        with(vec![raw_entry(b"base/1/../../../escape", Regular, 3, b"")]),
        with(vec![raw_entry(b"base/1/1259", Symlink, 0, b"/etc/passwd")]),
        with(vec![raw_entry(b"base/1", Symlink, 0, b"../../outside")]),
        with(vec![raw_entry(b"base/1/1259", Link, 0, b"../../outside/x")]),
        with(vec![
            raw_entry(b"PG_VERSION", Regular, 3, b""),
            raw_entry(b"PG_VERSION", Regular, 3, b""),
        ]),
        with(vec![raw_entry(b"././@LongLink", GNULongName, 1 << 40, b"")]),
        with(vec![raw_entry(b"PG_VERSION", Regular, u64::MAX >> 8, b"")]),
    ]
}

#[test]
fn backup_fetch_of_hostile_parts() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = sandbox.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let ctx = context(&store, &[]);
    let rt = runtime();
    let name = "base_000000010000000000000002";
    let (metadata, plain) = small_backup(name);
    let mut seeds = vec![plain.clone()];
    seeds.extend(hostile_tars(&plain));
    let key = store.join(&metadata.parts[0].key);
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    fuzz::run("tar-part", &seeds, mutate_bytes, |tar| {
        std::fs::write(&key, encoded(tar, Compression::Lz4)).unwrap();
        restore_into_sandbox(&rt, &ctx, &metadata, sandbox.path())
    });
}

#[test]
fn backup_fetch_of_hostile_metadata() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = sandbox.path().join("store");
    let ctx = context(&store, &[]);
    let rt = runtime();
    let name = "base_000000010000000000000002";
    let (metadata, plain) = small_backup(name);
    let part_key = store.join(&metadata.parts[0].key);
    std::fs::create_dir_all(part_key.parent().unwrap()).unwrap();
    std::fs::write(&part_key, encoded(&plain, Compression::Lz4)).unwrap();
    // A valid part outside the store, for keys that try to reach it.
    std::fs::create_dir_all(sandbox.path().join("outside")).unwrap();
    std::fs::write(
        sandbox.path().join("outside/part"),
        encoded(&plain, Compression::Lz4),
    )
    .unwrap();
    let mut seeds = vec![serde_json::to_vec(&metadata).unwrap()];
    let mut escaping = metadata.clone();
    escaping.parts[0].key = "../outside/part".into();
    seeds.push(serde_json::to_vec(&escaping).unwrap());
    let mut absolute = metadata.clone();
    absolute.parts[0].key = sandbox.path().join("outside/part").display().to_string();
    seeds.push(serde_json::to_vec(&absolute).unwrap());
    let metadata_key = store.join(layout::metadata_key(name).as_str());
    fuzz::run("metadata", &seeds, mutate_json, |input| {
        std::fs::write(&metadata_key, input).unwrap();
        let summary: BackupSummary = serde_json::from_value(sentinel(name, input)).unwrap();
        let read = match rt.block_on(catalog::read_metadata(&ctx, &summary)) {
            Ok(m) => m,
            Err(e) => return names(&e, layout::metadata_key(name).as_str()),
        };
        for part in &read.parts {
            let stays = Key::parse(&part.key).is_ok();
            let expected = pgdrill::backup::base::files_by_path(&read);
            let result = read_part(&rt, &ctx, part, expected, None);
            if !stays && result.is_ok() {
                return Err(format!("part key {:?} was read", part.key));
            }
        }
        restore_into_sandbox(&rt, &ctx, &read, sandbox.path())
    });
}

#[test]
fn delta_entries() {
    let page = |b: u8| vec![b; 8192];
    let mut valid = delta::entry_head(3 * 8192, &[0, 2]);
    valid.extend(page(1));
    valid.extend(page(2));
    let seeds = vec![valid, delta::entry_head(8192, &[])];
    fuzz::run("delta", &seeds, mutate_bytes, |input| {
        // The file list says 3 pages (metadata is checked against its
        // sentinel, so the entry is what is hostile here).
        let mut target = Cursor::new(vec![0u8; 4 * 8192]);
        let _ = delta::apply_entry(Cursor::new(input), &mut target, 3 * 8192);
        if target.get_ref().len() > 64 << 20 {
            return Err(format!(
                "the target grew to {} bytes",
                target.get_ref().len()
            ));
        }
        Ok(())
    });
}

#[test]
fn timeline_histories() {
    let seeds = vec![
        b"1\t0/3000000\tno recovery target specified\n".to_vec(),
        b"1\t0/3000000\tbefore 2026-12-02 01:00:00+00\n2\t0/5000000\tat restore point\n".to_vec(),
    ];
    fuzz::run("history", &seeds, mutate_bytes, |input| {
        let text = String::from_utf8_lossy(input);
        for current in [1, 3, u32::MAX] {
            let _ =
                pgdrill::backup::walverify::TimelinePath::from_history(current, &text, 16 << 20);
        }
        Ok(())
    });
}

#[test]
fn names_and_keys() {
    let seeds: Vec<Vec<u8>> = [
        "000000010000000000000003",
        "00000002.history",
        "000000010000000000000003.00000028.backup",
        "000000010000000000000003.partial",
        "0/3000028",
        "basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json",
        "wal_005/000000010000000000000003.lz4",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz::run("names", &seeds, mutate_bytes, |input| {
        let s = String::from_utf8_lossy(input);
        let _ = layout::Lsn::parse(&s);
        for size in [1 << 20, 16 << 20, 1 << 30] {
            if let Some(seg) = layout::Segment::parse(&s, size) {
                let _ = seg.file_name(size);
                let _ = seg.next();
            }
        }
        let _ = layout::wal_file_kind(&s);
        let _ = layout::wal_sort_key(&s);
        let key = Key::new(s.to_string());
        let _ = layout::backup_of_sentinel(&key);
        let _ = layout::backup_of_key(&key);
        let _ = layout::wal_name_of(&key);
        if let Ok(k) = Key::parse(&s) {
            let p = Path::new(k.as_str());
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!("Key::parse accepted {s:?}"));
            }
        }
        Ok(())
    });
}

#[test]
fn env_directories() {
    let seeds: Vec<Vec<u8>> = vec![
        b"WALG_COMPRESSION_METHOD\0lz4\nWALG_UPLOAD_CONCURRENCY\x004\n".to_vec(),
        b"WALG_DELTA_MAX_STEPS\x006\nAWS_REGION\0us-east-1\n".to_vec(),
    ];
    let dir = tempfile::tempdir().unwrap();
    fuzz::run("env-dir", &seeds, mutate_bytes, |input| {
        let env = dir.path().join("env");
        let _ = std::fs::remove_dir_all(&env);
        std::fs::create_dir_all(&env).unwrap();
        // Each line is NAME\0VALUE: a file per variable.
        for line in input.split(|b| *b == b'\n').take(16) {
            let (name, value) = match line.iter().position(|b| *b == 0) {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &b""[..]),
            };
            let name = String::from_utf8_lossy(name).replace(['/', '\0'], "_");
            if name.is_empty() || name == "." || name == ".." {
                continue;
            }
            let _ = std::fs::write(env.join(name), value);
        }
        let mut vars = EnvVars::from_pairs([("WALG_FILE_PREFIX", "/tmp/pgdrill-fuzz-store")]);
        match vars.overlay_env_dir(&env) {
            Ok(()) => {
                let _ = Settings::from_vars(&vars).map(|s| format!("{s:?}"));
            }
            Err(e) => names(&e, &env.display().to_string())?,
        }
        Ok(())
    });
}

/// Inputs that once broke a reader, replayed on every run: each must be
/// refused with an error naming its object.
#[test]
fn fixtures_replay() {
    let dir = root().join("fixtures/hostile");
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), &[]);
    let rt = runtime();
    let backup = "base_000000010000000000000002";
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let bytes = std::fs::read(&path).unwrap();
        let put = |key: &Key, bytes: &[u8]| {
            let file = store.path().join(key.as_str());
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, bytes).unwrap();
        };
        let verdict = if name.starts_with("delta-") {
            let mut target = Cursor::new(vec![0u8; 8192]);
            match delta::apply_entry(Cursor::new(bytes), &mut target, 8192) {
                Ok(()) => Err("applied".to_string()),
                Err(_) => Ok(()),
            }
        } else if name.starts_with("sentinel-") {
            let key = layout::sentinel_key(backup);
            put(&key, &bytes);
            let result = rt.block_on(catalog::list_backups(&ctx));
            std::fs::remove_file(store.path().join(key.as_str())).unwrap();
            match result {
                Ok(list) => Err(format!("listed {} backups", list.len())),
                Err(e) => names(&e, key.as_str()),
            }
        } else if name.starts_with("metadata-") {
            let key = layout::metadata_key(backup);
            put(&key, &bytes);
            let summary: BackupSummary = serde_json::from_value(sentinel(backup, &bytes)).unwrap();
            match rt.block_on(catalog::read_metadata(&ctx, &summary)) {
                Ok(_) => Err("read".to_string()),
                Err(e) => names(&e, key.as_str()),
            }
        } else {
            continue;
        };
        if let Err(e) = verdict {
            panic!("fixtures/hostile/{name} is not refused: {e}");
        }
        replayed += 1;
    }
    assert!(
        replayed >= 3,
        "regression fixtures missing in {}",
        dir.display()
    );
}
