//! Encrypted archives end to end: a real PostgreSQL 15 archives WAL and is
//! backed up with OpenPGP (protected private key from a key file) and with
//! the symmetric `WALG_LIBSODIUM_KEY`, then restored with backup-fetch and
//! wal-fetch; a stored WAL object decrypts with Debian's `gpg` to exactly
//! the object pgdrill stores without encryption; wrong, missing and
//! public-only keys fail with messages that name the cause.
//!
//! How the `gpg` check works: `gpg --decrypt` of the stored object must give
//! a codec object (`PGDR` header) that (a) decodes, checksum verified, to
//! the same segment `pgdrill wal-fetch` returns and (b) is byte for byte
//! what `codec::encode` makes of that segment unencrypted (lz4 framing is
//! deterministic), i.e. the encryption wraps the unencrypted object.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use pgdrill::backup::codec::{self, Compression};
use pgdrill::backup::exit::FETCH_FAILED;
use pgdrill::env::local::InitOptions;

const PASSPHRASE: &str = "pgdrill-test-passphrase";

fn key_file(name: &str) -> String {
    format!("{}/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sodium_key() -> String {
    std::fs::read_to_string(key_file("libsodium.hex"))
        .unwrap()
        .trim()
        .to_string()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The archived WAL segments (not .history or .backup files) in `dir`.
fn segment_objects(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.len() == 28 && name.ends_with(".lz4")
        })
        .collect();
    found.sort();
    assert!(
        !found.is_empty(),
        "no archived segment in {}",
        dir.display()
    );
    found
}

/// Writes rows, takes a backup, writes more, archives, restores the latest
/// state through backup-fetch and wal-fetch and checks the row count.
async fn backup_and_restore(env: &TestEnv) {
    let client = env.primary.connect().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t(id int, pad text); \
             INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    env.backup_push(&[]);
    client
        .batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(1001, 1500) g")
        .await
        .unwrap();
    switch_and_wait_archived(&env.primary).await;
    let restored = env.restore("restore", "LATEST", &["--recover"]).await;
    let c = restored.connect().await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM t").await, 1500);
}

/// Runs `pgdrill wal-fetch NAME` with exactly `vars` (no env dir).
fn wal_fetch_with(env: &TestEnv, vars: &[(String, String)], name: &str, dest: &Path) -> Output {
    let mut vars = vars.to_vec();
    vars.push(("WALG_PREFETCH".into(), "0".into()));
    env.pgdrill_with_vars(&vars, &["wal-fetch", name, dest.to_str().unwrap()])
}

/// Debian's `gpg` in a throw-away GNUPGHOME holding `key`; its agent is
/// stopped when dropped.
struct Gpg(tempfile::TempDir);

impl Gpg {
    fn with_key(key: &str) -> Gpg {
        let gpg = Gpg(tempfile::tempdir().unwrap());
        gpg.run(&["--import", &key_file(key)]);
        gpg
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.0.path())
            .args(["--batch", "--yes"])
            .args(args)
            .output()
            .expect("gpg runs (ci/setup installs gnupg)");
        assert_success(&out, &format!("gpg {args:?}"));
        out
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.0.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// `gpg --decrypt` with the protected key.
fn gpg_decrypt(object: &Path) -> Vec<u8> {
    Gpg::with_key("private-protected.asc")
        .run(&[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            PASSPHRASE,
            "--decrypt",
            object.to_str().unwrap(),
        ])
        .stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn openpgp_archive_restores_and_decrypts_with_gpg() {
    let key = key_file("private-protected.asc");
    let env = TestEnv::start(
        "enc-pgp",
        Storage::Dir,
        &[
            ("WALG_PGP_KEY_PATH", key.as_str()),
            ("WALG_PGP_KEY_PASSPHRASE", PASSPHRASE),
        ],
        InitOptions::default(),
    );
    backup_and_restore(&env).await;

    let storage: Vec<(String, String)> = env
        .archive
        .storage_vars
        .iter()
        .filter(|(k, _)| k == "WALG_FILE_PREFIX")
        .cloned()
        .collect();
    let root = PathBuf::from(&storage[0].1);
    let object = segment_objects(&root.join("wal_005")).remove(0);
    let name = object.file_stem().unwrap().to_str().unwrap().to_string();
    let stored = std::fs::read(&object).unwrap();
    assert_eq!(stored[0], 0xc1, "an OpenPGP PKESK packet comes first");

    // gpg returns the unencrypted codec object of the same segment.
    let inner = gpg_decrypt(&object);
    assert_eq!(&inner[..4], b"PGDR");
    let (segment, _) = codec::decode(&inner).expect("gpg output is a codec object");
    let scratch = env.dir("scratch");
    let fetched = scratch.join(&name);
    assert_success(
        &env.pgdrill(&["wal-fetch", &name, fetched.to_str().unwrap()]),
        "wal-fetch",
    );
    assert_eq!(std::fs::read(&fetched).unwrap(), segment);
    assert_eq!(codec::encode(&segment, Compression::Lz4).unwrap().0, inner);

    // Wrong, missing and public-only keys, and a wrong passphrase.
    let dest = scratch.join("RECOVERYXLOG");
    let with = |extra: &[(&str, &str)]| {
        let mut vars = storage.clone();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let out = wal_fetch_with(&env, &vars, &name, &dest);
        assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
        assert!(!dest.exists());
        stderr(&out)
    };
    let err = with(&[]);
    assert!(
        err.contains(&format!("object wal_005/{name}.lz4 is encrypted with OpenPGP but no key is configured: set WALG_PGP_KEY or WALG_PGP_KEY_PATH")),
        "{err}"
    );
    let err = with(&[("WALG_PGP_KEY_PATH", &key_file("other-private.asc"))]);
    assert!(
        err.contains("for key 74B0D9AF68882237") && err.contains("other-private.asc"),
        "{err}"
    );
    let err = with(&[
        ("WALG_PGP_KEY_PATH", &key),
        ("WALG_PGP_KEY_PASSPHRASE", "wrong-passphrase"),
    ]);
    assert!(
        err.contains("WALG_PGP_KEY_PASSPHRASE does not unlock")
            && !err.contains("wrong-passphrase"),
        "{err}"
    );
    let err = with(&[("WALG_PGP_KEY_PATH", &key_file("public.asc"))]);
    assert!(err.contains("holds only a public key"), "{err}");
    let err = with(&[
        ("WALG_PGP_KEY_PATH", &key),
        ("WALG_LIBSODIUM_KEY", &sodium_key()),
    ]);
    assert!(
        err.contains("WALG_PGP_KEY_PATH and WALG_LIBSODIUM_KEY are both set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn libsodium_archive_over_s3_restores_and_refuses_another_key() {
    let key = sodium_key();
    let env = TestEnv::start(
        "enc-sodium",
        Storage::S3,
        &[
            ("WALG_LIBSODIUM_KEY", key.as_str()),
            ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
        ],
        InitOptions::default(),
    );
    backup_and_restore(&env).await;

    // Objects are encrypted; metadata and sentinel stay plaintext JSON.
    let s3 = env.archive.s3.as_ref().unwrap();
    let object = segment_objects(&s3.object_path("enc-sodium/wal_005")).remove(0);
    assert_eq!(&std::fs::read(&object).unwrap()[..4], b"PGDS");
    let backups = s3.object_path("enc-sodium/basebackups_005");
    let backup = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a backup directory");
    let part = backup.join("tar_partitions/part_1.tar.lz4");
    assert_eq!(&std::fs::read(part).unwrap()[..4], b"PGDS");
    assert_eq!(
        std::fs::read(backup.join("metadata.json")).unwrap()[0],
        b'{'
    );

    let name = object.file_stem().unwrap().to_str().unwrap().to_string();
    let dest = env.dir("scratch").join("RECOVERYXLOG");
    let mut vars: Vec<(String, String)> = env
        .archive
        .storage_vars
        .iter()
        .filter(|(k, _)| !k.starts_with("WALG_LIBSODIUM"))
        .cloned()
        .collect();
    vars.push(("WALG_LIBSODIUM_KEY".into(), "cd".repeat(32)));
    vars.push(("WALG_LIBSODIUM_KEY_TRANSFORM".into(), "hex".into()));
    let out = wal_fetch_with(&env, &vars, &name, &dest);
    assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is encrypted with another libsodium key"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(&key), "the key is never printed");
    assert!(!dest.exists());
}

/// Runs pgdrill with a directory store at `store` and exactly `vars`.
fn run_on(store: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(PGDRILL);
    cmd.args(args)
        .env("WALG_FILE_PREFIX", store)
        .env("WALG_PREFETCH", "0")
        .env_remove("PGDRILL_ENV_DIR");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A segment file holding `content` in a `pg_wal` directory under `dir`.
fn segment_file(dir: &Path, content: &[u8]) -> PathBuf {
    let pg_wal = dir.join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let segment = pg_wal.join("000000010000000000000001");
    std::fs::write(&segment, content).unwrap();
    segment
}

fn sample_segment() -> Vec<u8> {
    (0..1_000_000u32).map(|i| (i % 251) as u8).collect()
}

/// A directory store under `dir` holding one segment pushed without a key;
/// returns the store and the segment's content.
fn unencrypted_archive(dir: &Path) -> (PathBuf, Vec<u8>) {
    let store = dir.join("store");
    let content = sample_segment();
    let segment = segment_file(dir, &content);
    assert_success(
        &run_on(&store, &[], &["wal-push", segment.to_str().unwrap()]),
        "unencrypted wal-push",
    );
    (store, content)
}

/// An archiving host may hold only the public key. It cannot decrypt what
/// is stored, so it cannot tell a retried push of the same file from other
/// content of the same size (issue 9.6): it refuses both, saying why.
#[test]
fn public_key_only_wal_push_refuses_what_it_cannot_compare() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let content = sample_segment();
    let segment = segment_file(dir.path(), &content);
    let seg = segment.to_str().unwrap();
    let public = key_file("public.asc");
    let private = key_file("private.asc");
    // No compression: every segment is stored at the same size.
    let with_public = [
        ("WALG_PGP_KEY_PATH", public.as_str()),
        ("WALG_COMPRESSION_METHOD", "none"),
    ];
    let with_private = [("WALG_PGP_KEY_PATH", private.as_str())];
    assert_success(
        &run_on(&store, &with_public, &["wal-push", seg]),
        "wal-push",
    );

    let other: Vec<u8> = content.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&segment, &other).unwrap();
    let out = run_on(&store, &with_public, &["wal-push", seg]);
    assert_eq!(
        code(&out),
        1,
        "same size is not the same content: {}",
        stderr(&out)
    );
    let msg = stderr(&out);
    assert!(
        msg.contains("cannot compare") && msg.contains("public key"),
        "{msg}"
    );

    std::fs::write(&segment, &content).unwrap();
    let out = run_on(&store, &with_public, &["wal-push", seg]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // With the private key the comparison is made: identical is accepted,
    // different content refused.
    assert_success(
        &run_on(&store, &with_private, &["wal-push", seg]),
        "identical re-push with the private key",
    );
    std::fs::write(&segment, &other).unwrap();
    let out = run_on(&store, &with_private, &["wal-push", seg]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );

    let dest = dir.path().join("fetched");
    let dest_s = dest.to_str().unwrap();
    let out = run_on(
        &store,
        &with_public,
        &["wal-fetch", "000000010000000000000001", dest_s],
    );
    assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds only a public key"),
        "{}",
        stderr(&out)
    );
    assert_success(
        &run_on(
            &store,
            &with_private,
            &["wal-fetch", "000000010000000000000001", dest_s],
        ),
        "wal-fetch with the private key",
    );
    assert_eq!(std::fs::read(&dest).unwrap(), content);
}

/// Issue 9.4: with a key configured, an unencrypted object is an attack
/// or a mistake (someone without the key planted it): refused, unless the
/// documented migration switch is set.
#[test]
fn unencrypted_objects_are_refused_when_a_key_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (store, content) = unencrypted_archive(dir.path());
    let sodium = sodium_key();
    let private = key_file("private.asc");
    let dest = dir.path().join("fetched");
    let fetch = |vars: &[(&str, &str)]| {
        run_on(
            &store,
            vars,
            &[
                "wal-fetch",
                "000000010000000000000001",
                dest.to_str().unwrap(),
            ],
        )
    };
    let sodium_vars = [
        ("WALG_LIBSODIUM_KEY", sodium.as_str()),
        ("WALG_LIBSODIUM_KEY_TRANSFORM", "hex"),
    ];
    for vars in [&sodium_vars[..], &[("WALG_PGP_KEY_PATH", private.as_str())]] {
        let out = fetch(vars);
        assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
        let msg = stderr(&out);
        assert!(
            msg.contains("is not encrypted") && msg.contains("PGDRILL_ALLOW_UNENCRYPTED_READS"),
            "{msg}"
        );
        assert!(!dest.exists());
    }
    let mut migrating = sodium_vars.to_vec();
    migrating.push(("PGDRILL_ALLOW_UNENCRYPTED_READS", "true"));
    assert_success(&fetch(&migrating), "wal-fetch while migrating");
    assert_eq!(std::fs::read(&dest).unwrap(), content);
}

/// `gpg --encrypt` for the fixture's public key, compressing with
/// `compress_algo` first.
fn gpg_encrypt(input: &Path, output: &Path, compress_algo: &str) {
    Gpg::with_key("public.asc").run(&[
        "--trust-model",
        "always",
        "--recipient",
        "74B0D9AF68882237",
        "--compress-algo",
        compress_algo,
        "--output",
        output.to_str().unwrap(),
        "--encrypt",
        input.to_str().unwrap(),
    ]);
}

/// Issue 9.13: gpg compresses before it encrypts unless told otherwise;
/// such messages (a compressed data packet inside) must be read.
#[test]
fn gpg_encrypted_objects_with_compression_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (store, content) = unencrypted_archive(dir.path());
    let object = store.join("wal_005/000000010000000000000001.lz4");
    let plain_object = dir.path().join("object");
    std::fs::copy(&object, &plain_object).unwrap();
    let private = key_file("private.asc");
    for algo in ["zlib", "zip"] {
        gpg_encrypt(&plain_object, &object, algo);
        let dest = dir.path().join(format!("fetched-{algo}"));
        let out = run_on(
            &store,
            &[("WALG_PGP_KEY_PATH", private.as_str())],
            &[
                "wal-fetch",
                "000000010000000000000001",
                dest.to_str().unwrap(),
            ],
        );
        assert_success(
            &out,
            &format!("wal-fetch of a gpg --compress-algo {algo} object"),
        );
        assert_eq!(std::fs::read(&dest).unwrap(), content, "{algo}");
    }
}
