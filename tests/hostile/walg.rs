//! The readers of WAL-G's format: its tars, file lists and sentinels as
//! a restore reads them, its increments, and its libsodium streams.

use std::io::{Cursor, Read};
use std::path::Path;

use pgdrill::backup::base::{backup_fetch, FetchOptions, RecoveryConfig};
use pgdrill::backup::walg::increment;
use pgdrill::backup::{layout, Context};

use super::fuzz::{self, mutate_bytes, mutate_json, Verdict};
use super::readers::{confined, context, names, runtime, tree, wal_fetch_refuses_as_corrupt};

const FULL: &str = "base_000000010000000000000002";
const DELTA: &str = "base_000000010000000000000004_D_000000010000000000000002";
const PAGE: usize = 8192;

/// A tar entry with `name` as given (WAL-G's names start with `/`, which
/// tar::Builder refuses) and `data` as its content.
fn entry(name: &str, kind: tar::EntryType, data: &[u8], link: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o700
    } else {
        0o600
    });
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len() + (512 - data.len() % 512) % 512, 0);
    v
}

fn tar_of(entries: Vec<Vec<u8>>) -> Vec<u8> {
    let mut v = entries.concat();
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(name, tar::EntryType::Regular, data, "")
}

fn dir(name: &str) -> Vec<u8> {
    entry(name, tar::EntryType::Directory, b"", "")
}

/// WAL-G's increment of a two-page file whose page 1 changed.
fn increment_of_page_1() -> Vec<u8> {
    let mut v = b"wi1\x55".to_vec();
    v.extend_from_slice(&(2 * PAGE as u64).to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend(std::iter::repeat_n(9u8, PAGE));
    v
}

/// The delta's data tar, valid.
fn delta_part() -> Vec<u8> {
    tar_of(vec![
        dir("/"),
        dir("/base"),
        dir("/base/1"),
        file("/base/1/1259", &increment_of_page_1()),
    ])
}

fn delta_files_metadata() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"Files": {
        "/": {}, "/base": {}, "/base/1": {},
        "/base/1/1259": {"IsIncremented": true},
        "/PG_VERSION": {"IsSkipped": true},
    }}))
    .unwrap()
}

fn delta_sentinel() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "LSN": 0x400_0028u64, "DeltaLSN": 0x200_0028u64, "DeltaFrom": FULL,
        "DeltaFullName": FULL, "DeltaCount": 1, "PgVersion": 150000,
        "FinishLSN": 0x400_0100u64, "Version": 2,
    }))
    .unwrap()
}

/// Writes a small WAL-G chain into `store`: full backup FULL (PG_VERSION,
/// a two-page /base/1/1259) and its delta DELTA (the file's page 1 as an
/// increment, PG_VERSION skipped), each with pg_control.tar and
/// backup_label.tar, tars uncompressed.
fn write_chain(store: &Path) {
    let put = |key: String, data: &[u8]| {
        let path = store.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    let tars = |name: &str, file: &str| format!("basebackups_005/{name}/tar_partitions/{file}");
    for (name, lsn) in [(FULL, 0x200_0028u64), (DELTA, 0x400_0028)] {
        put(
            tars(name, "pg_control.tar"),
            &tar_of(vec![file("/global/pg_control", &[1u8; 8192])]),
        );
        put(
            tars(name, "backup_label.tar"),
            &tar_of(vec![
                file("backup_label", b"START WAL LOCATION: 0/2000028\n"),
                file("tablespace_map", b""),
            ]),
        );
        if name == FULL {
            let sentinel = serde_json::json!({"LSN": lsn, "PgVersion": 150000, "FinishLSN": lsn + 0xd8, "Version": 2});
            put(
                format!("basebackups_005/{name}_backup_stop_sentinel.json"),
                &serde_json::to_vec(&sentinel).unwrap(),
            );
            put(
                format!("basebackups_005/{name}/files_metadata.json"),
                &serde_json::to_vec(&serde_json::json!({"Files": {
                    "/": {}, "/base": {}, "/base/1": {}, "/base/1/1259": {}, "/PG_VERSION": {},
                }}))
                .unwrap(),
            );
            let mut data = vec![1u8; PAGE];
            data.extend(vec![2u8; PAGE]);
            put(
                tars(name, "part_001.tar"),
                &tar_of(vec![
                    dir("/"),
                    dir("/base"),
                    dir("/base/1"),
                    file("/base/1/1259", &data),
                    file("/PG_VERSION", b"15\n"),
                ]),
            );
        }
    }
    put(
        format!("basebackups_005/{DELTA}_backup_stop_sentinel.json"),
        &delta_sentinel(),
    );
    put(
        format!("basebackups_005/{DELTA}/files_metadata.json"),
        &delta_files_metadata(),
    );
    put(tars(DELTA, "part_001.tar"), &delta_part());
}

/// Restores DELTA into `sandbox/dest`: whatever the restore says, it is
/// [`confined`] and no file grows past a relation segment.
fn restore_into_sandbox(rt: &tokio::runtime::Runtime, ctx: &Context, sandbox: &Path) -> Verdict {
    let dest = sandbox.join("dest");
    confined(sandbox, |dest| {
        let opts = FetchOptions {
            force: true,
            verify: false,
            recovery: RecoveryConfig::None,
            restore_command: None,
            no_archive: true,
        };
        // Refused or restored: both are fine here.
        let _ = rt.block_on(backup_fetch(ctx, dest, DELTA, &opts));
        Ok(())
    })?;
    for p in tree(&dest) {
        let len = std::fs::metadata(dest.join(&p)).map_or(0, |m| m.len());
        if len > increment::MAX_FILE_SIZE {
            return Err(format!("restored a {len}-byte {}", p.display()));
        }
    }
    Ok(())
}

#[test]
fn walg_restore_of_hostile_tars() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = sandbox.path().join("store");
    write_chain(&store);
    let ctx = context(&store, &[]);
    let rt = runtime();
    // The valid chain restores: the base's pages with the delta's page 1,
    // the skipped PG_VERSION from the base.
    restore_into_sandbox(&rt, &ctx, sandbox.path()).unwrap();
    let dest = sandbox.path().join("dest");
    let mut want = vec![1u8; PAGE];
    want.extend(vec![9u8; PAGE]);
    assert_eq!(std::fs::read(dest.join("base/1/1259")).unwrap(), want);
    assert_eq!(std::fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");
    assert_eq!(
        std::fs::read(dest.join("global/pg_control")).unwrap(),
        [1u8; 8192]
    );
    let head = || vec![dir("/"), dir("/base"), dir("/base/1")];
    let with = |extra: Vec<Vec<u8>>| {
        let mut entries = head();
        entries.extend(extra);
        entries.push(file("/base/1/1259", &increment_of_page_1()));
        tar_of(entries)
    };
    use tar::EntryType::*;
    let seeds = vec![
        delta_part(),
        with(vec![file("/../escape", b"x")]),
        with(vec![file("/base/1/../../../escape", b"x")]),
        with(vec![entry("/base/1/1260", Symlink, b"", "/etc/passwd")]),
        with(vec![entry("/base/2", Link, b"", "../../outside")]),
        with(vec![file(
            "/base/1/1259",
            b"wi1\x55\xff\xff\xff\xff\xff\xff\xff\x7f",
        )]),
    ];
    let key = store.join(format!(
        "basebackups_005/{DELTA}/tar_partitions/part_001.tar"
    ));
    fuzz::run("walg-tar", &seeds, mutate_bytes, |tar| {
        std::fs::write(&key, tar).unwrap();
        restore_into_sandbox(&rt, &ctx, sandbox.path())
    });
}

#[test]
fn walg_restore_of_hostile_file_lists_and_sentinels() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = sandbox.path().join("store");
    write_chain(&store);
    let ctx = context(&store, &[]);
    let rt = runtime();
    let files_key = store.join(layout::walg_files_metadata_key(DELTA).as_str());
    fuzz::run(
        "walg-files-metadata",
        &[delta_files_metadata()],
        mutate_json,
        |input| {
            std::fs::write(&files_key, input).unwrap();
            restore_into_sandbox(&rt, &ctx, sandbox.path())
        },
    );
    std::fs::write(&files_key, delta_files_metadata()).unwrap();
    let sentinel_key = store.join(layout::sentinel_key(DELTA).as_str());
    fuzz::run("walg-sentinel", &[delta_sentinel()], mutate_json, |input| {
        std::fs::write(&sentinel_key, input).unwrap();
        restore_into_sandbox(&rt, &ctx, sandbox.path())
    });
}

/// pgdrill's record beside a WAL-G backup it wrote (`pgdrill_metadata.json`):
/// each hostile record is named by the sentinel's digest, so it is parsed
/// and followed; whatever it says, nothing lands outside the target.
#[test]
fn walg_restore_of_hostile_pgdrill_records() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = sandbox.path().join("store");
    write_chain(&store);
    let ctx = context(&store, &[]);
    let rt = runtime();
    let tars = format!("basebackups_005/{DELTA}/tar_partitions");
    let parts: Vec<serde_json::Value> = ["part_001.tar", "pg_control.tar", "backup_label.tar"]
        .iter()
        .map(|file| {
            let data = std::fs::read(store.join(&tars).join(file)).unwrap();
            serde_json::json!({
                "name": file, "key": format!("{tars}/{file}"), "plain_size": data.len(),
                "compressed_size": data.len(), "blake3": blake3::hash(&data).to_hex().to_string(),
            })
        })
        .collect();
    let record = serde_json::to_vec(&serde_json::json!({
        "backup_name": DELTA, "backup_label": "", "parts": parts, "files": [],
    }))
    .unwrap();
    let record_key = store.join(layout::walg_pgdrill_metadata_key(DELTA).as_str());
    let sentinel_key = store.join(layout::sentinel_key(DELTA).as_str());
    let with_record = |input: &[u8]| {
        std::fs::write(&record_key, input).unwrap();
        let mut sentinel: serde_json::Value = serde_json::from_slice(&delta_sentinel()).unwrap();
        sentinel["PgdrillMetadataBlake3"] = blake3::hash(input).to_hex().to_string().into();
        std::fs::write(&sentinel_key, serde_json::to_vec(&sentinel).unwrap()).unwrap();
    };
    // The true record is followed: the chain restores.
    with_record(&record);
    restore_into_sandbox(&rt, &ctx, sandbox.path()).unwrap();
    let restored = sandbox.path().join("dest/base/1/1259");
    assert_eq!(std::fs::read(&restored).unwrap()[PAGE..], [9u8; PAGE]);
    fuzz::run("walg-pgdrill-record", &[record], mutate_json, |input| {
        with_record(input);
        restore_into_sandbox(&rt, &ctx, sandbox.path())
    });
}

#[test]
fn walg_increments() {
    let seeds = vec![increment_of_page_1()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1259");
    fuzz::run("walg-increment", &seeds, mutate_bytes, |input| {
        std::fs::write(&path, vec![1u8; 2 * PAGE]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let _ = increment::apply(&mut Cursor::new(input), Some(&file), |_| {});
        let len = file.metadata().unwrap().len();
        if len > increment::MAX_FILE_SIZE {
            return Err(format!("the file grew to {len} bytes"));
        }
        Ok(())
    });
}

/// WAL-G's libsodium streams (libsodium's own, fixtures/walg/sodium) as a
/// reader with the key opens them.
#[test]
fn walg_libsodium_streams() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let key_path = fixtures.join("keys/libsodium.hex");
    let store = tempfile::tempdir().unwrap();
    let ctx = context(
        store.path(),
        &[
            ("WALG_LIBSODIUM_KEY_PATH", key_path.to_str().unwrap()),
            ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
        ],
    );
    let seeds: Vec<Vec<u8>> = ["stream-1", "stream-8192", "stream-20000"]
        .iter()
        .map(|f| std::fs::read(fixtures.join("walg/sodium").join(f)).unwrap())
        .collect();
    let key = pgdrill::backup::store::Key::new("wal_005/000000010000000000000001.lz4");
    fuzz::run("walg-libsodium", &seeds, mutate_bytes, |input| {
        match ctx
            .encryption
            .wrap_reader(&key, Cursor::new(input.to_vec()))
        {
            Ok(mut r) => {
                let _ = r.read_to_end(&mut Vec::new());
            }
            Err(e) => names(&e, key.as_str())?,
        }
        Ok(())
    });
}

/// WAL objects WAL-G wrote, of every compression (fixtures/walg), as
/// wal-fetch decodes them.
#[test]
fn walg_wal_objects() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/walg");
    let objects = [
        ("lz4", "archive/wal_005/000000010000000000000007.lz4"),
        ("zst", "archive/wal_005/000000010000000000000008.zst"),
        ("lzma", "codecs/lzma/wal_005/000000010000000000000009.lzma"),
        ("br", "codecs/br/wal_005/000000010000000000000009.br"),
        ("gz", "codecs/gz/wal_005/000000010000000000000009.gz"),
    ];
    let seeds: Vec<Vec<u8>> = objects
        .iter()
        .map(|(_, path)| std::fs::read(fixtures.join(path)).unwrap())
        .collect();
    let mut case = 0usize;
    fuzz::run("walg-wal", &seeds, mutate_bytes, |input| {
        let (ext, _) = objects[case % objects.len()];
        case += 1;
        if let Ok(plain) = pgdrill::backup::walg::decode(input, ext, layout::MAX_WAL_FILE_SIZE) {
            let _ = pgdrill::backup::walg::check_segment("000000010000000000000009", &plain);
        }
        Ok(())
    });
}

/// A WAL-G-format WAL object is decoded in memory (its format has no
/// trailer to verify as it streams), so one that inflates past the largest
/// WAL file PostgreSQL can have (1 GiB) is refused as soon as it does,
/// as pgdrill's own objects are, before it holds the memory it asks for.
#[test]
fn walg_wal_fetch_refuses_an_object_larger_than_any_wal_file() {
    use std::io::Write as _;
    let store = tempfile::tempdir().unwrap();
    let ctx = context(store.path(), &[("WALG_COMPRESSION_METHOD", "lz4")]);
    let name = "000000010000000000000003";
    let key = layout::walg_wal_key(name, pgdrill::backup::codec::Compression::Lz4);
    let path = store.path().join(key.as_str());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut frame =
        pgdrill::backup::walg::Encoder::new(file, pgdrill::backup::codec::Compression::Lz4)
            .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(layout::MAX_WAL_FILE_SIZE >> 20) + 1 {
        frame.write_all(&zeros).unwrap();
    }
    frame.finish().unwrap().flush().unwrap();
    let err = wal_fetch_refuses_as_corrupt(&ctx, name);
    let limit = format!("more than {} bytes", layout::MAX_WAL_FILE_SIZE);
    assert!(err.to_string().contains(&limit), "{err}");
}
