//! WAL objects WAL-G wrote (fixtures/walg, made by ci/walg-fixtures with
//! Python's lz4 and zstandard as WAL-G's defaults write them): wal-fetch
//! serves them verified, damage is refused, and wal-push after a switch
//! from WAL-G treats an identical segment as archived and refuses a
//! different one.

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

/// A copy of the fixture archive, for tests that damage it.
fn archive_copy(dir: &Path) -> std::path::PathBuf {
    let archive = dir.join("archive");
    std::fs::create_dir_all(archive.join("wal_005")).unwrap();
    for (_, f) in fixtures() {
        std::fs::copy(
            Path::new(FIXTURES).join("archive").join(&f.key),
            archive.join(&f.key),
        )
        .unwrap();
    }
    archive
}

fn pgdrill(archive: &Path, args: &[&str]) -> Output {
    Command::new(PGDRILL)
        .args(args)
        .env("WALG_FILE_PREFIX", archive)
        .env_remove("PGDRILL_ENV_DIR")
        .env_remove("WALG_COMPRESSION_METHOD")
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
