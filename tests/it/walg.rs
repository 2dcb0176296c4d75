//! An archive WAL-G wrote (fixtures/walg, made by ci/walg-fixtures with
//! Python's lz4, zstandard and json as WAL-G's defaults write them):
//! wal-fetch serves its WAL verified, damage is refused, wal-push after a
//! switch from WAL-G treats an identical segment as archived and refuses a
//! different one; its backups are listed and deleted by retention, and
//! what pgdrill cannot do with them yet is refused naming WAL-G. A real
//! WAL-G full backup and delta (fixtures/walg/restore, made by
//! ci/walg_backup_fixture.py) restore exactly, plain and encrypted.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use pgdrill::backup::exit::{CHECK_FAILURE, FAILURE, FETCH_FAILED};
use pgdrill::env::local::{ArchiveStorage, LocalArchive, LocalPostgres, DEFAULT_MAJOR};

#[derive(serde::Deserialize)]
struct Fixture {
    key: String,
    size: u64,
    blake3: String,
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/walg");

fn fixtures() -> BTreeMap<String, Fixture> {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("segments.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A copy of the fixture archive, for tests that change it.
fn archive_copy(dir: &Path) -> std::path::PathBuf {
    let from = Path::new(FIXTURES).join("archive");
    let archive = dir.join("archive");
    for file in walk_files(&from) {
        let to = archive.join(file.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    archive
}

fn pgdrill(archive: &Path, args: &[&str]) -> Output {
    pgdrill_with(archive, &[], args)
}

/// pgdrill on `archive` with only `extra` of the backup settings.
fn pgdrill_with(archive: &Path, extra: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(PGDRILL)
        .args(args)
        .env("WALG_FILE_PREFIX", archive)
        .env_remove("PGDRILL_ENV_DIR")
        .env_remove("WALG_COMPRESSION_METHOD")
        .envs(extra.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn wal_fetch_serves_walg_objects_of_every_compression_verified() {
    let work = tempfile::tempdir().unwrap();
    let archive = archive_copy(work.path());
    for (name, f) in fixtures() {
        let dest = work.path().join(&name);
        let out = pgdrill(&archive, &["wal-fetch", &name, dest.to_str().unwrap()]);
        assert_success(&out, &format!("wal-fetch of {}", f.key));
        let data = std::fs::read(&dest).unwrap();
        assert_eq!(data.len() as u64, f.size, "{}", f.key);
        assert_eq!(blake3::hash(&data).to_hex().as_str(), f.blake3, "{}", f.key);
    }
}

#[test]
fn damaged_walg_objects_are_refused_naming_the_cause() {
    let work = tempfile::tempdir().unwrap();
    let archive = archive_copy(work.path());
    let fixtures = fixtures();
    // (segment, byte to flip counted from the end (compressed) or start
    // (uncompressed), what the error says)
    let cases = [
        (
            "000000010000000000000007",
            Some(6),
            "lz4 frame does not decode",
        ),
        (
            "000000010000000000000008",
            Some(2),
            "zstd frame does not decode",
        ),
        // The page address in the first page header.
        (
            "000000010000000000000009",
            None,
            "the segment starts at 0/900000",
        ),
    ];
    for (name, from_end, says) in cases {
        let path = archive.join(&fixtures[name].key);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = from_end.map_or(10, |n| bytes.len() - n);
        bytes[at] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let dest = work.path().join(name);
        let out = pgdrill(&archive, &["wal-fetch", name, dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(FETCH_FAILED), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("a WAL-G object"), "{}", stderr(&out));
        assert!(!dest.exists(), "nothing served for {name}");
    }
}

#[test]
fn wal_push_after_walg_accepts_the_same_segment_and_refuses_another() {
    let work = tempfile::tempdir().unwrap();
    let archive = archive_copy(work.path());
    let pg_wal = work.path().join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    for (name, _) in fixtures() {
        let local = pg_wal.join(&name);
        let fetched = pgdrill(&archive, &["wal-fetch", &name, local.to_str().unwrap()]);
        assert_success(&fetched, "wal-fetch");
        let again = pgdrill(&archive, &["wal-push", local.to_str().unwrap()]);
        assert_success(&again, &format!("wal-push of {name}, archived by WAL-G"));
        let mut other = std::fs::read(&local).unwrap();
        let last = other.len() - 1;
        other[last] ^= 1;
        std::fs::write(&local, other).unwrap();
        let out = pgdrill(&archive, &["wal-push", local.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(FAILURE), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("different content"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn walg_backups_are_listed_checked_and_deleted_by_retention() {
    let work = tempfile::tempdir().unwrap();
    let archive = archive_copy(work.path());
    let list = pgdrill(&archive, &["backup-list", "--json"]);
    assert_success(&list, "backup-list --json");
    let rows: Vec<pgdrill::backup::catalog::BackupListRow> =
        serde_json::from_slice(&list.stdout).unwrap();
    let (full, newer, delta) = (
        "base_000000010000000000000005",
        "base_000000010000000000000007",
        "base_000000010000000000000009_D_000000010000000000000007",
    );
    let names: Vec<&str> = rows.iter().map(|r| r.backup_name.as_str()).collect();
    assert_eq!(names, [full, newer, delta]);
    let r = &rows[1];
    assert_eq!((r.start_lsn, r.finish_lsn), (0x700028, 0x700100));
    assert_eq!(r.wal_file_name, "000000010000000000000007");
    assert_eq!(r.start_time, "2026-12-01T01:00:00.250Z");
    assert_eq!((r.hostname.as_str(), r.pg_version), ("pg-0", 150018));
    assert_success(
        &pgdrill(&archive, &["backup-list", "--detail"]),
        "backup-list --detail",
    );

    // These sentinels have no tars: backup-fetch refuses before touching
    // the target, backup-verify reports it.
    let dest = work.path().join("restore");
    let out = pgdrill(&archive, &["backup-fetch", dest.to_str().unwrap(), delta]);
    assert_eq!(out.status.code(), Some(FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("WAL-G backup {delta} has no pg_control.tar")),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists());
    let out = pgdrill(&archive, &["backup-verify", newer]);
    assert_eq!(out.status.code(), Some(CHECK_FAILURE), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("has no pg_control.tar"), "{report}");

    // Retention keeps the newest backup's chain (the delta and its full
    // backup) and deletes the older full backup, sentinel and folder.
    let out = pgdrill(&archive, &["delete", "--confirm", "retain", "1"]);
    assert_success(&out, "delete --confirm retain 1");
    let backups = archive.join("basebackups_005");
    assert!(!backups
        .join(format!("{full}_backup_stop_sentinel.json"))
        .exists());
    assert!(
        walk_files(&backups.join(full)).is_empty(),
        "its folder's objects are gone"
    );
    for kept in [newer, delta] {
        assert!(backups
            .join(format!("{kept}_backup_stop_sentinel.json"))
            .exists());
        assert!(backups.join(kept).join("metadata.json").exists());
    }
    for (_, f) in fixtures() {
        assert!(archive.join(&f.key).exists(), "{} is needed", f.key);
    }

    // backup-mark as WAL-G's: the delta with its chain, in metadata.json;
    // the base of a permanent delta stays permanent.
    let permanent = |name: &str| -> bool {
        let raw = std::fs::read(backups.join(name).join("metadata.json")).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        m["is_permanent"].as_bool().unwrap()
    };
    assert!(!permanent(newer) && !permanent(delta));
    let out = pgdrill(&archive, &["backup-mark", delta]);
    assert_success(&out, "backup-mark of a WAL-G delta");
    assert!(permanent(newer) && permanent(delta));
    let list = pgdrill(&archive, &["backup-list", "--json"]);
    let rows: Vec<pgdrill::backup::catalog::BackupListRow> =
        serde_json::from_slice(&list.stdout).unwrap();
    assert!(rows.iter().all(|r| r.is_permanent), "{rows:?}");
    let out = pgdrill(&archive, &["backup-mark", "-i", newer]);
    assert_eq!(out.status.code(), Some(FAILURE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{newer} is the base of permanent delta {delta}")),
        "{}",
        stderr(&out)
    );
    assert!(permanent(newer));
    for name in [delta, newer] {
        let out = pgdrill(&archive, &["backup-mark", "-i", name]);
        assert_success(&out, &format!("backup-mark -i {name}"));
        assert!(!permanent(name), "{name}");
    }
}

/// WAL-G encrypts its compressed stream with OpenPGP (fixtures/walg/
/// pgp-archive: gpg for the test key, without compression as go-crypto
/// writes and with gpg's compression packet): read with the key, refused
/// without it, and an unencrypted WAL-G object is refused once a key is
/// configured, as pgdrill's own are.
#[test]
fn openpgp_walg_objects_are_read_with_the_key_only() {
    let work = tempfile::tempdir().unwrap();
    let pgp_archive = Path::new(FIXTURES).join("pgp-archive");
    let key = format!("{}/fixtures/keys/private.asc", env!("CARGO_MANIFEST_DIR"));
    let with_key = [("WALG_PGP_KEY_PATH", key.as_str())];
    let encrypted: Vec<(String, Fixture)> = fixtures()
        .into_iter()
        .filter(|(_, f)| pgp_archive.join(&f.key).exists())
        .collect();
    assert_eq!(encrypted.len(), 2, "the .lz4 and .zst fixtures");
    for (name, f) in &encrypted {
        let dest = work.path().join(name);
        let args = ["wal-fetch", name.as_str(), dest.to_str().unwrap()];
        let out = pgdrill_with(&pgp_archive, &with_key, &args);
        assert_success(&out, &format!("wal-fetch of encrypted {}", f.key));
        let data = std::fs::read(&dest).unwrap();
        assert_eq!(blake3::hash(&data).to_hex().as_str(), f.blake3, "{}", f.key);
        std::fs::remove_file(&dest).unwrap();
        let out = pgdrill(&pgp_archive, &args);
        assert_eq!(out.status.code(), Some(FETCH_FAILED), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("encrypted with OpenPGP but no key is configured"),
            "{}",
            stderr(&out)
        );
        assert!(!dest.exists());
    }
    let plain_archive = Path::new(FIXTURES).join("archive");
    let (name, _) = &encrypted[0];
    let dest = work.path().join(name);
    let out = pgdrill_with(
        &plain_archive,
        &with_key,
        &["wal-fetch", name, dest.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(FETCH_FAILED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not encrypted, but a key is configured"),
        "{}",
        stderr(&out)
    );
}

/// What ci/walg_backup_fixture.py recorded of fixtures/walg/restore.
#[derive(serde::Deserialize)]
struct RestoreFixture {
    /// Per backup: every file a restore must produce, with its BLAKE3.
    backups: BTreeMap<String, BTreeMap<String, String>>,
    /// What the cluster held at the end of the archived WAL.
    content: BTreeMap<String, String>,
}

/// A directory archive holding fixtures/walg/restore (a WAL-G full
/// backup, a delta of it and the WAL to the end) for the server user;
/// with `encrypted`, its tars and WAL encrypted by gpg for the test key
/// as WAL-G's go-crypto writes them (no compression packet; WAL-G leaves
/// the JSON documents plaintext), and the private key configured.
fn walg_restore_archive(encrypted: bool) -> (LocalArchive, RestoreFixture) {
    let key = format!("{}/fixtures/keys/private.asc", env!("CARGO_MANIFEST_DIR"));
    let settings = if encrypted {
        vec![("WALG_PGP_KEY_PATH".to_string(), key)]
    } else {
        Vec::new()
    };
    let archive = LocalArchive::start(
        Path::new(PGDRILL),
        "pgdrill-walg-restore-",
        &ArchiveStorage::Dir,
        &settings,
        DEFAULT_MAJOR,
    )
    .unwrap_or_else(|e| panic!("archive starts (run ci/setup): {e}"));
    let prefix = Path::new(&archive.storage_vars[0].1);
    let from = Path::new(FIXTURES).join("restore");
    let gnupg = tempfile::tempdir().unwrap();
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(gnupg.path())
            .args(["--batch", "--yes", "--quiet", "--trust-model", "always"])
            .args(args)
            .output()
            .expect("gpg runs (ci/setup installs gnupg)");
        assert_success(&out, &format!("gpg {args:?}"));
    };
    if encrypted {
        let public = format!("{}/fixtures/keys/public.asc", env!("CARGO_MANIFEST_DIR"));
        gpg(&["--import", &public]);
    }
    for file in walk_files(&from) {
        let to = prefix.join(file.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if encrypted && file.extension().is_none_or(|e| e != "json") {
            let recipient = "test-only@pgdrill.invalid";
            gpg(&[
                "--recipient",
                recipient,
                "--compress-algo",
                "none",
                "--output",
                to.to_str().unwrap(),
                "--encrypt",
                file.to_str().unwrap(),
            ]);
        } else {
            std::fs::copy(&file, &to).unwrap();
        }
    }
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(gnupg.path())
        .args(["--kill", "gpg-agent"])
        .output();
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("restore.json")).unwrap();
    (archive, serde_json::from_str(&text).unwrap())
}

fn run_tool(archive: &LocalArchive, args: &[&str]) -> Output {
    archive
        .tool_command(&archive.env_dir, None)
        .args(args)
        .output()
        .unwrap()
}

/// Every file of `dir` with its BLAKE3, by path relative to `dir`.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    walk_files(dir)
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(dir).unwrap().display().to_string();
            let hash = blake3::hash(&std::fs::read(&f).unwrap())
                .to_hex()
                .to_string();
            (rel, hash)
        })
        .collect()
}

/// backup-verify and backup-fetch of WAL-G backup `name`: every file as
/// the backed-up copy had it (backup-fetch's recovery settings aside) and
/// nothing else; with `recover`, the restored server recovers through
/// WAL-G's WAL to exactly what the cluster held.
async fn restore_and_check(
    archive: &LocalArchive,
    fixture: &RestoreFixture,
    name: &str,
    recover: bool,
) {
    let out = run_tool(archive, &["backup-verify", name]);
    assert_success(&out, &format!("backup-verify {name}"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("\nOK"), "{report}");
    // Short: the server's socket path must fit 107 bytes.
    let base = archive
        .dir(if recover { "recovered" } else { "restored" })
        .unwrap();
    let data = base.join("data");
    let out = run_tool(
        archive,
        &[
            "backup-fetch",
            data.to_str().unwrap(),
            name,
            "--recover",
            "--no-archive",
        ],
    );
    assert_success(&out, &format!("backup-fetch {name}"));
    let mut restored = hashes(&data);
    let mut expected = fixture.backups[name].clone();
    assert!(restored.remove("recovery.signal").is_some());
    assert!(restored.remove("postgresql.auto.conf").is_some());
    assert!(expected.remove("postgresql.auto.conf").is_some());
    let differ: Vec<_> = expected
        .iter()
        .filter(|(path, hash)| restored.get(*path) != Some(hash))
        .map(|(path, _)| path)
        .collect();
    assert!(
        differ.is_empty(),
        "{name}: restored differently: {differ:?}"
    );
    let extra: Vec<_> = restored
        .keys()
        .filter(|p| !expected.contains_key(*p))
        .collect();
    assert!(extra.is_empty(), "{name}: not in the backup: {extra:?}");
    if !recover {
        return;
    }
    let mut pg = LocalPostgres::existing(&archive.bin, &base, &data, archive.run_as).unwrap();
    pg.start(std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("restored server starts: {e}"));
    wait_promoted(&pg).await;
    let client = pg.connect().await.unwrap();
    for (what, sql) in [
        ("ledger", "SELECT count(*) || ' ' || sum(id) || ' ' || md5(string_agg(note, ',' ORDER BY id)) FROM ledger"),
        ("added", "SELECT count(*) || ' ' || sum(id) FROM added"),
        ("doomed", "SELECT count(*)::text FROM pg_class WHERE relname = 'doomed'"),
    ] {
        let got: String = client.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(got, fixture.content[what], "{what}");
    }
}

/// WAL-G's full backup and its delta (increments, skipped files, a table
/// dropped in between) restore byte for byte as the backed-up copies
/// were, backup-verify and wal-verify read them, and the delta's restore
/// recovers through WAL-G's WAL to exactly what the cluster held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walg_full_and_delta_restore_exactly_and_recover() {
    let (archive, fixture) = walg_restore_archive(false);
    let names: Vec<&String> = fixture.backups.keys().collect();
    assert!(names[1].contains("_D_"), "{names:?}");
    // wal-verify walks WAL-G's WAL from the oldest backup's start.
    let out = run_tool(&archive, &["wal-verify", "integrity"]);
    assert_success(&out, "wal-verify integrity");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("integrity check status: OK") && report.contains("4 segments verified"),
        "{report}"
    );
    restore_and_check(&archive, &fixture, names[0], false).await;
    restore_and_check(&archive, &fixture, names[1], true).await;
}

/// The same archive with its tars and WAL OpenPGP-encrypted, as WAL-G
/// with WALG_PGP_KEY writes it: the delta restores and recovers exactly
/// with the private key configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walg_encrypted_delta_restores_with_the_key() {
    let (archive, fixture) = walg_restore_archive(true);
    let delta = fixture.backups.keys().nth(1).unwrap().clone();
    restore_and_check(&archive, &fixture, &delta, true).await;
}

/// Damage to a WAL-G backup is found by backup-verify and stops
/// backup-fetch, naming the object: a flipped byte in a compressed tar
/// (the frame checksum), a missing tar (files listed but absent), a
/// delta whose base is gone.
#[test]
fn damaged_walg_backups_are_refused_naming_the_object() {
    let work = tempfile::tempdir().unwrap();
    let from = Path::new(FIXTURES).join("restore");
    let fixture: RestoreFixture = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("restore.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&String> = fixture.backups.keys().collect();
    let (full, delta) = (names[0].as_str(), names[1].as_str());
    let fresh = |case: &str| {
        let archive = work.path().join(case);
        for file in walk_files(&from) {
            let to = archive.join(file.strip_prefix(&from).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&file, &to).unwrap();
        }
        archive
    };
    let tars = |archive: &Path, backup: &str| {
        archive
            .join("basebackups_005")
            .join(backup)
            .join("tar_partitions")
    };
    let refused = |archive: &Path, backup: &str, says: &str| {
        let out = pgdrill(archive, &["backup-verify", backup]);
        assert_eq!(out.status.code(), Some(CHECK_FAILURE), "{}", stderr(&out));
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(report.contains(says), "backup-verify: {report}");
        let dest = archive.join("restored");
        let out = pgdrill(archive, &["backup-fetch", dest.to_str().unwrap(), backup]);
        assert_eq!(out.status.code(), Some(FAILURE), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(says),
            "backup-fetch: {}",
            stderr(&out)
        );
    };

    let flipped = fresh("flipped");
    let part = tars(&flipped, delta).join("part_001.tar.lz4");
    let mut bytes = std::fs::read(&part).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&part, bytes).unwrap();
    refused(
        &flipped,
        delta,
        &format!("basebackups_005/{delta}/tar_partitions/part_001.tar.lz4"),
    );

    let missing = fresh("missing");
    std::fs::remove_file(tars(&missing, full).join("part_002.tar.zst")).unwrap();
    refused(
        &missing,
        full,
        "listed file(s) are in none of the backup's tars",
    );

    // A delta takes a file from its base (skipped: unchanged since the
    // base) that the base neither lists nor holds: no backup of the chain
    // has it, and the restore must not go on without it.
    let unlisted = fresh("unlisted");
    let list = unlisted
        .join("basebackups_005")
        .join(delta)
        .join("files_metadata.json");
    let mut files: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    files["Files"]["/base/1/424242"] = serde_json::json!({"IsIncremented": false, "IsSkipped": true, "MTime": "2026-01-01T00:00:00Z"});
    std::fs::write(&list, serde_json::to_vec(&files).unwrap()).unwrap();
    refused(&unlisted, delta, "/base/1/424242");

    let orphan = fresh("orphan");
    std::fs::remove_file(
        orphan
            .join("basebackups_005")
            .join(format!("{full}_backup_stop_sentinel.json")),
    )
    .unwrap();
    refused(
        &orphan,
        delta,
        &format!("{delta} is a delta of {full}, which cannot be read"),
    );
}

/// WAL-G's libsodium objects (fixtures/walg/sodium, sealed by libsodium
/// itself as WAL-G's writer does) carry no magic: with the libsodium key
/// configured wal-fetch opens them; with another key they are refused
/// saying what may be wrong; an unencrypted WAL-G object is refused under
/// the key unless unencrypted reads are allowed.
#[test]
fn libsodium_walg_objects_are_read_with_the_key() {
    let work = tempfile::tempdir().unwrap();
    let sodium_archive = Path::new(FIXTURES).join("sodium/archive");
    let key = format!("{}/fixtures/keys/libsodium.hex", env!("CARGO_MANIFEST_DIR"));
    let with_key = [
        ("WALG_LIBSODIUM_KEY_PATH", key.as_str()),
        ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
    ];
    let other_key = [
        (
            "WALG_LIBSODIUM_KEY",
            "an entirely different key, long enough",
        ),
        ("WALG_LIBSODIUM_KEY_TRANSFORM", "none"),
    ];
    let encrypted: Vec<(String, Fixture)> = fixtures()
        .into_iter()
        .filter(|(_, f)| sodium_archive.join(&f.key).exists())
        .collect();
    assert_eq!(encrypted.len(), 2, "the .lz4 and .zst fixtures");
    for (name, f) in &encrypted {
        let dest = work.path().join(name);
        let args = ["wal-fetch", name.as_str(), dest.to_str().unwrap()];
        let out = pgdrill_with(&sodium_archive, &with_key, &args);
        assert_success(&out, &format!("wal-fetch of encrypted {}", f.key));
        let data = std::fs::read(&dest).unwrap();
        assert_eq!(blake3::hash(&data).to_hex().as_str(), f.blake3, "{}", f.key);
        std::fs::remove_file(&dest).unwrap();
        let out = pgdrill_with(&sodium_archive, &other_key, &args);
        assert_eq!(out.status.code(), Some(FETCH_FAILED), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("does not open as WAL-G's libsodium stream"),
            "{}",
            stderr(&out)
        );
        let out = pgdrill(&sodium_archive, &args);
        assert_eq!(out.status.code(), Some(FETCH_FAILED), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("WALG_LIBSODIUM_KEY"),
            "{}",
            stderr(&out)
        );
        assert!(!dest.exists());
    }
    let plain_archive = Path::new(FIXTURES).join("archive");
    let (name, f) = &encrypted[0];
    let dest = work.path().join(name);
    let args = ["wal-fetch", name.as_str(), dest.to_str().unwrap()];
    let out = pgdrill_with(&plain_archive, &with_key, &args);
    assert_eq!(out.status.code(), Some(FETCH_FAILED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("PGDRILL_ALLOW_UNENCRYPTED_READS"),
        "{}",
        stderr(&out)
    );
    let mut allowed = with_key.to_vec();
    allowed.push(("PGDRILL_ALLOW_UNENCRYPTED_READS", "true"));
    let out = pgdrill_with(&plain_archive, &allowed, &args);
    assert_success(&out, "wal-fetch of an unencrypted object, allowed");
    let data = std::fs::read(&dest).unwrap();
    assert_eq!(blake3::hash(&data).to_hex().as_str(), f.blake3);
}

/// WAL-G's other compressions (fixtures/walg/codecs: LZMA "alone" as its
/// default lzma compressor writes, brotli, WAL-E's gzip): wal-fetch finds
/// and decodes each; a damaged gzip fails its CRC, and a cut LZMA or
/// brotli stream (formats without a checksum) fails for its missing end.
#[test]
fn wal_fetch_reads_lzma_brotli_and_gzip() {
    let work = tempfile::tempdir().unwrap();
    let name = "000000010000000000000009";
    let want = &fixtures()[name];
    for ext in ["lzma", "br", "gz"] {
        let archive = work.path().join(ext);
        let from = Path::new(FIXTURES).join("codecs").join(ext);
        for file in walk_files(&from) {
            let to = archive.join(file.strip_prefix(&from).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&file, &to).unwrap();
        }
        let dest = work.path().join(format!("{name}.{ext}.out"));
        let args = ["wal-fetch", name, dest.to_str().unwrap()];
        let out = pgdrill(&archive, &args);
        assert_success(&out, &format!("wal-fetch of .{ext}"));
        let data = std::fs::read(&dest).unwrap();
        assert_eq!(blake3::hash(&data).to_hex().as_str(), want.blake3, "{ext}");
        std::fs::remove_file(&dest).unwrap();
        let object = archive.join(format!("wal_005/{name}.{ext}"));
        let bytes = std::fs::read(&object).unwrap();
        let damaged = match ext {
            "gz" => {
                let mut b = bytes.clone();
                let at = b.len() / 2;
                b[at] ^= 0x01;
                b
            }
            _ => bytes[..bytes.len() - 64].to_vec(),
        };
        std::fs::write(&object, damaged).unwrap();
        let out = pgdrill(&archive, &args);
        assert_eq!(
            out.status.code(),
            Some(FETCH_FAILED),
            "{ext}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(&format!("wal_005/{name}.{ext}")),
            "{ext}: {}",
            stderr(&out)
        );
        assert!(!dest.exists(), "{ext}");
    }
}

/// PGDRILL_STORAGE_FORMAT=walg: wal-push stores a segment as WAL-G does
/// (a bare LZ4 frame with pierrec's descriptor under .lz4, a zstd frame
/// under .zst, the bytes under the bare name; OpenPGP a standard message
/// that gpg decrypts to that frame; libsodium secretstream), wal-fetch
/// serves it back verified, pushing it again succeeds and different
/// content under the name is refused; backup-push refuses the format.
#[test]
fn wal_push_in_walg_format_writes_what_walg_reads() {
    let work = tempfile::tempdir().unwrap();
    let name = "000000010000000000000009";
    let plain = std::fs::read(Path::new(FIXTURES).join("archive/wal_005").join(name)).unwrap();
    let pg_wal = work.path().join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let segment = pg_wal.join(name);
    std::fs::write(&segment, &plain).unwrap();
    let keys = format!("{}/fixtures/keys", env!("CARGO_MANIFEST_DIR"));
    let (public, private, sodium) = (
        format!("{keys}/public.asc"),
        format!("{keys}/private.asc"),
        format!("{keys}/libsodium.hex"),
    );
    // (WALG_COMPRESSION_METHOD, the stored extension, key settings)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: [Case; 5] = [
        ("lz4", ".lz4", vec![]),
        ("zstd", ".zst", vec![]),
        ("none", "", vec![]),
        ("lz4", ".lz4", vec![("WALG_PGP_KEY_PATH", public.as_str())]),
        (
            "lz4",
            ".lz4",
            vec![
                ("WALG_LIBSODIUM_KEY_PATH", sodium.as_str()),
                ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
            ],
        ),
    ];
    for (i, (method, ext, key_settings)) in cases.into_iter().enumerate() {
        let archive = work.path().join(format!("archive-{i}"));
        let mut settings = vec![
            ("PGDRILL_STORAGE_FORMAT", "walg"),
            ("WALG_COMPRESSION_METHOD", method),
        ];
        settings.extend(key_settings.iter().copied());
        let what = format!("{method} {key_settings:?}");
        let out = pgdrill_with(
            &archive,
            &settings,
            &["wal-push", segment.to_str().unwrap()],
        );
        assert_success(&out, &format!("wal-push ({what})"));
        let object = archive.join(format!("wal_005/{name}{ext}"));
        let stored = std::fs::read(&object).unwrap_or_else(|e| panic!("{what}: {e}"));
        let frame = match (key_settings.first(), method) {
            (None, _) => stored.clone(),
            (Some(("WALG_PGP_KEY_PATH", _)), _) => {
                let gnupg = tempfile::tempdir().unwrap();
                let gpg = |args: &[&str]| {
                    let out = Command::new("gpg")
                        .arg("--homedir")
                        .arg(gnupg.path())
                        .args(["--batch", "--yes", "--quiet"])
                        .args(args)
                        .output()
                        .expect("gpg runs (ci/setup installs gnupg)");
                    assert_success(&out, &format!("gpg {args:?}"));
                    out.stdout
                };
                gpg(&["--import", &private]);
                let frame = gpg(&["--decrypt", object.to_str().unwrap()]);
                let _ = Command::new("gpgconf")
                    .arg("--homedir")
                    .arg(gnupg.path())
                    .args(["--kill", "gpg-agent"])
                    .output();
                frame
            }
            // libsodium: no magic; it must not be pgdrill's PGDS.
            (Some(_), _) => {
                assert!(!stored.starts_with(b"PGDS") && !stored.starts_with(b"PGDR"));
                Vec::new()
            }
        };
        match (method, frame.is_empty()) {
            ("lz4", false) => {
                assert_eq!(&frame[..6], &[0x04, 0x22, 0x4D, 0x18, 0x64, 0x70], "{what}")
            }
            ("zstd", false) => assert_eq!(&frame[..4], &[0x28, 0xB5, 0x2F, 0xFD], "{what}"),
            ("none", false) => assert_eq!(frame, plain, "{what}"),
            _ => {}
        }
        // wal-fetch reads it back (the private key for OpenPGP).
        let mut read_settings = settings.clone();
        if let Some(("WALG_PGP_KEY_PATH", _)) = key_settings.first() {
            read_settings.retain(|(k, _)| *k != "WALG_PGP_KEY_PATH");
            read_settings.push(("WALG_PGP_KEY_PATH", private.as_str()));
        }
        let dest = work.path().join(format!("fetched-{i}"));
        let out = pgdrill_with(
            &archive,
            &read_settings,
            &["wal-fetch", name, dest.to_str().unwrap()],
        );
        assert_success(&out, &format!("wal-fetch ({what})"));
        assert_eq!(std::fs::read(&dest).unwrap(), plain, "{what}");
        let out = pgdrill_with(
            &archive,
            &read_settings,
            &["wal-push", segment.to_str().unwrap()],
        );
        assert_success(&out, &format!("wal-push again ({what})"));
        let other = pg_wal.join("other").join(name);
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        let mut changed = plain.clone();
        changed[100_000] ^= 1;
        std::fs::write(&other, changed).unwrap();
        let out = pgdrill_with(
            &archive,
            &read_settings,
            &["wal-push", other.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(FAILURE), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("different content"),
            "{what}: {}",
            stderr(&out)
        );
    }
}

/// The plain tar of a stored lz4 WAL-G tar object, and its entries'
/// names and first bytes.
fn walg_tar_entries(object: &Path) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    use std::io::Read;
    let mut plain = Vec::new();
    lz4_flex::frame::FrameDecoder::new(std::fs::File::open(object).unwrap())
        .read_to_end(&mut plain)
        .unwrap();
    let mut entries = Vec::new();
    for entry in tar::Archive::new(plain.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut head = Vec::new();
        (&mut entry).take(4).read_to_end(&mut head).unwrap();
        entries.push((name, head));
    }
    (plain, entries)
}

/// PGDRILL_STORAGE_FORMAT=walg: backup-push writes a full backup and a
/// delta as WAL-G lays them out (tar_partitions with "/"-named entries,
/// pg_control.tar and backup_label.tar, increments in WAL-G's format,
/// files_metadata.json, metadata.json and a V2 sentinel), with WAL in
/// WAL-G's format; the delta restores through the WAL-G reader and
/// recovers exactly; pgdrill's record beside the backup catches a tar
/// replaced by another valid one, which frame checksums cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_written_in_walg_format_are_walgs_and_restore() {
    let env = TestEnv::start(
        "walg-w",
        Storage::Dir,
        &[
            ("PGDRILL_STORAGE_FORMAT", "walg"),
            ("WALG_DELTA_MAX_STEPS", "1"),
            ("WALG_COMPRESSION_METHOD", "lz4"),
        ],
        pgdrill::env::local::InitOptions::default(),
    );
    let archive = std::path::PathBuf::from(
        &env.archive
            .storage_vars
            .iter()
            .find(|(k, _)| k == "WALG_FILE_PREFIX")
            .unwrap()
            .1,
    );
    let c = env.primary.connect().await.unwrap();
    c.batch_execute(
        "CREATE TABLE ledger(id int PRIMARY KEY, note text); \
         INSERT INTO ledger SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         CREATE TABLE doomed AS SELECT g FROM generate_series(1, 1000) g",
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM FREEZE").await.unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
    let full = env.backup_push(&[]);
    c.batch_execute(
        "UPDATE ledger SET note = 'changed' WHERE id <= 300; \
         DELETE FROM ledger WHERE id BETWEEN 5000 AND 5999; \
         DROP TABLE doomed; CREATE TABLE fresh AS SELECT g FROM generate_series(1, 700) g",
    )
    .await
    .unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
    let delta = env.backup_push(&[]);
    assert_eq!(delta, format!("{}_D_{}", &delta[..29], &full[5..]));
    c.batch_execute("INSERT INTO ledger SELECT g, 'after' FROM generate_series(30001, 30500) g")
        .await
        .unwrap();
    let last = switch_and_wait_archived(&env.primary).await;

    // WAL-G's layout, WAL-G's bytes.
    let backups = archive.join("basebackups_005");
    let sentinel: serde_json::Value = serde_json::from_slice(
        &std::fs::read(backups.join(format!("{delta}_backup_stop_sentinel.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        sentinel["LSN"].is_u64() && sentinel["FinishLSN"].is_u64(),
        "{sentinel}"
    );
    assert_eq!(sentinel["Version"], 2);
    assert_eq!(sentinel["DeltaFrom"], full.as_str());
    assert_eq!(sentinel["DeltaFullName"], full.as_str());
    assert_eq!(sentinel["DeltaCount"], 1);
    assert!(sentinel["DeltaLSN"].is_u64());
    assert_eq!(
        sentinel["PgdrillMetadataBlake3"].as_str().unwrap().len(),
        64
    );
    let folder = backups.join(&delta);
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(metadata["start_lsn"], sentinel["LSN"]);
    assert_eq!(metadata["date_fmt"], "%Y-%m-%dT%H:%M:%S.%fZ");
    let files: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("files_metadata.json")).unwrap())
            .unwrap();
    let listed = files["Files"].as_object().unwrap();
    assert!(listed.contains_key("/") && listed.contains_key("/PG_VERSION"));
    assert!(
        !listed.contains_key("/global/pg_control"),
        "pg_control is WAL-G's sentinel file"
    );
    let incremented: Vec<&String> = listed
        .iter()
        .filter(|(_, d)| d["IsIncremented"] == true)
        .map(|(n, _)| n)
        .collect();
    assert!(
        !incremented.is_empty(),
        "the delta increments relation files"
    );
    let tars = folder.join("tar_partitions");
    for stem in ["part_001", "pg_control", "backup_label"] {
        assert!(tars.join(format!("{stem}.tar.lz4")).is_file(), "{stem}");
    }
    let (_, entries) = walg_tar_entries(&tars.join("part_001.tar.lz4"));
    assert_eq!(entries[0].0, "/", "the data directory itself comes first");
    assert!(
        entries.iter().all(|(n, _)| n.starts_with('/')),
        "{entries:?}"
    );
    let increment = entries
        .iter()
        .find(|(n, _)| incremented.contains(&n))
        .expect("an increment in part_001");
    assert_eq!(increment.1, b"wi1\x55", "{}", increment.0);
    let (_, label) = walg_tar_entries(&tars.join("backup_label.tar.lz4"));
    assert_eq!(
        label.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["backup_label", "tablespace_map"]
    );
    let (_, control) = walg_tar_entries(&tars.join("pg_control.tar.lz4"));
    assert_eq!(control[0].0, "/global/pg_control");
    let segment = archive.join("wal_005").join(format!("{last}.lz4"));
    let segment_bytes = std::fs::read(&segment).unwrap();
    assert_eq!(
        &segment_bytes[..4],
        [0x04, 0x22, 0x4D, 0x18],
        "a bare LZ4 frame"
    );

    // An independent reader following WAL-G's restore rules (Python's
    // tarfile, lz4; ci/walg_restore_check.py) restores the chain to the
    // same files, byte for byte, as pgdrill's reader.
    let by_python = env.dir("by-python");
    let venv = std::env::var("PGDRILL_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/pgdrill", std::env::var("HOME").unwrap()));
    let out = Command::new(format!("{venv}/walg-fixtures-venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/ci/walg_restore_check.py"
        ))
        .args([
            archive.as_path(),
            Path::new(&delta),
            by_python.join("data").as_path(),
        ])
        .output()
        .expect("the venv of ci/setup runs ci/walg_restore_check.py");
    assert_success(&out, "ci/walg_restore_check.py");
    let independent: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    let by_pgdrill = env.dir("by-pgdrill").join("data");
    assert_success(
        &env.pgdrill(&["backup-fetch", by_pgdrill.to_str().unwrap(), &delta]),
        "backup-fetch",
    );
    for file in ["backup_label", "global/pg_control", "PG_VERSION"] {
        assert!(independent.contains_key(file), "{file}");
    }
    let ours = hashes(&by_pgdrill);
    let differ: std::collections::BTreeSet<&String> = ours
        .keys()
        .chain(independent.keys())
        .filter(|f| ours.get(*f) != independent.get(*f))
        .collect();
    assert!(differ.is_empty(), "restored differently: {differ:?}");

    // Listed, verified, restored through the WAL-G reader, recovered.
    let out = env.pgdrill(&["backup-list", "--json"]);
    assert_success(&out, "backup-list");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_success(&env.pgdrill(&["backup-verify", &delta]), "backup-verify");
    let r = env
        .restore("walg-restored", &delta, &["--recover", "--verify"])
        .await;
    let rc = r.connect().await.unwrap();
    assert_eq!(count(&rc, "SELECT count(*) FROM ledger").await, 19_500);
    assert_eq!(
        count(&rc, "SELECT count(*) FROM ledger WHERE note = 'changed'").await,
        300
    );
    assert_eq!(count(&rc, "SELECT count(*) FROM fresh").await, 700);
    assert_eq!(
        count(
            &rc,
            "SELECT count(*) FROM pg_class WHERE relname = 'doomed'"
        )
        .await,
        0
    );
    amcheck_all(&r);
    drop(r);

    // A tar replaced by another valid one (one byte of a file changed,
    // the frame re-made with its checksum): only pgdrill's record sees it.
    let part = tars.join("part_001.tar.lz4");
    let original = std::fs::read(&part).unwrap();
    let (mut plain, _) = walg_tar_entries(&part);
    let at = tar::Archive::new(plain.as_slice())
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| &*e.path_bytes() == b"/PG_VERSION")
        .map(|e| e.raw_file_position() as usize)
        .unwrap();
    plain[at] ^= 0x01;
    let mut frame = lz4_flex::frame::FrameEncoder::new(Vec::new());
    std::io::Write::write_all(&mut frame, &plain).unwrap();
    std::fs::write(&part, frame.finish().unwrap()).unwrap();
    let out = env.pgdrill(&["backup-verify", &delta]);
    assert_eq!(out.status.code(), Some(CHECK_FAILURE), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("part_001.tar.lz4") && report.contains("pgdrill's record says"),
        "{report}"
    );
    std::fs::write(&part, &original).unwrap();
    // A tar that does not belong.
    std::fs::write(tars.join("part_099.tar.lz4"), &original).unwrap();
    let out = env.pgdrill(&["backup-verify", &delta]);
    assert_eq!(out.status.code(), Some(CHECK_FAILURE), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does not belong"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
