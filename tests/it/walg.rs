//! An archive WAL-G wrote (fixtures/walg, made by ci/walg-fixtures with
//! Python's lz4, zstandard and json as WAL-G's defaults write them):
//! wal-fetch serves its WAL verified, damage is refused, wal-push after a
//! switch from WAL-G treats an identical segment as archived and refuses a
//! different one; its backups are listed and deleted by retention, and
//! what pgdrill cannot do with them yet is refused naming WAL-G.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use pgdrill::backup::exit::{FAILURE, FETCH_FAILED};

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
fn walg_backups_are_listed_refused_for_restore_and_deleted_by_retention() {
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

    let dest = work.path().join("restore");
    for args in [
        vec!["backup-fetch", dest.to_str().unwrap(), delta],
        vec!["backup-verify", newer],
        vec!["backup-mark", newer],
    ] {
        let out = pgdrill(&archive, &args);
        assert_eq!(
            out.status.code(),
            Some(FAILURE),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("was written by WAL-G"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!dest.join("PG_VERSION").exists());

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
