//! Crash and bad-input behaviour of the backup verbs against real
//! PostgreSQL and a real S3 server.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pgdrill::backup::exit::FETCH_FAILED;
use pgdrill::env::local::{as_user, write_env_dir, InitOptions, RunAs};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The first archived segment's object path on the S3 server's disk.
fn first_wal_object(env: &TestEnv) -> std::path::PathBuf {
    let s3 = env.archive.s3.as_ref().unwrap();
    let dir = s3.object_path("faults/wal_005");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lz4"))
        .collect();
    names.sort();
    names.into_iter().next().expect("an archived segment")
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_push_is_idempotent_and_refuses_different_content() {
    let env = TestEnv::start("faults", Storage::S3, &[], InitOptions::default());
    let segment = switch_and_wait_archived(&env.primary).await;
    let scratch = env.dir("scratch");

    // Re-push of identical content (fetched back from the archive) succeeds.
    let same = scratch.join(&segment);
    let out = env.pgdrill(&["wal-fetch", &segment, same.to_str().unwrap()]);
    assert_success(&out, "wal-fetch");
    assert_success(
        &env.pgdrill(&["wal-push", same.to_str().unwrap()]),
        "identical re-push",
    );

    // Different content under the same name is an error, loudly.
    let other_dir = env.dir("other");
    let other = other_dir.join(&segment);
    let mut bytes = std::fs::read(&same).unwrap();
    bytes[1000] ^= 0xFF;
    std::fs::write(&other, &bytes).unwrap();
    let out = env.pgdrill(&["wal-push", other.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );

    // A .history file is never overwritten.
    let h = scratch.join("00000002.history");
    std::fs::write(&h, "1\t0/3000000\tno recovery target specified\n").unwrap();
    assert_success(
        &env.pgdrill(&["wal-push", h.to_str().unwrap()]),
        "history push",
    );
    assert_success(
        &env.pgdrill(&["wal-push", h.to_str().unwrap()]),
        "history re-push",
    );
    std::fs::write(&h, "1\t0/4000000\tsomething else\n").unwrap();
    let out = env.pgdrill(&["wal-push", h.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));

    // Names PostgreSQL never archives are refused.
    let junk = scratch.join("RECOVERYXLOG");
    std::fs::write(&junk, b"x").unwrap();
    let out = env.pgdrill(&["wal-push", junk.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not a WAL file name"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_segment_exits_74_and_corruption_is_detected() {
    let env = TestEnv::start(
        "faults",
        Storage::S3,
        &[("WALG_PREFETCH", "0")],
        InitOptions::default(),
    );
    switch_and_wait_archived(&env.primary).await;
    let scratch = env.dir("scratch");
    let dest = scratch.join("RECOVERYXLOG");

    let out = env.pgdrill(&[
        "wal-fetch",
        "0000000100000000000000FF",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    let msg = stderr(&out);
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    assert!(msg.contains("not found"), "{msg}");
    assert!(!dest.exists());

    // Damage a stored segment. A flipped payload byte is either detected
    // (an exit code above 125, so PostgreSQL aborts recovery instead of
    // promoting early, and nothing written) or harmless: in a segment that
    // is mostly zeros, an lz4 match offset can change and still copy zeros,
    // and the BLAKE3 of the plaintext then vouches for the same bytes. A
    // flipped byte of that BLAKE3 is always detected. Nothing unverified is
    // ever served.
    let object = first_wal_object(&env);
    let name = object.file_stem().unwrap().to_str().unwrap().to_string();
    let good = scratch.join("good");
    let out = env.pgdrill(&["wal-fetch", &name, good.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let good = std::fs::read(&good).unwrap();
    let original = std::fs::read(&object).unwrap();
    let len = original.len();
    let trailer_digest = len - pgdrill::backup::codec::TRAILER_LEN + 16;
    let mut detected = Vec::new();
    for offset in [len / 4, len / 2, 3 * len / 4, trailer_digest] {
        let mut bytes = original.clone();
        bytes[offset] ^= 0x01;
        std::fs::write(&object, &bytes).unwrap();
        let out = env.pgdrill(&["wal-fetch", &name, dest.to_str().unwrap()]);
        if code(&out) == 0 {
            assert!(
                std::fs::read(&dest).unwrap() == good,
                "byte {offset} flipped: wal-fetch exited 0 with other bytes than were archived"
            );
            std::fs::remove_file(&dest).unwrap();
        } else {
            assert_eq!(
                code(&out),
                pgdrill::backup::exit::FETCH_FAILED,
                "{}",
                stderr(&out)
            );
            assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
            assert!(!dest.exists(), "nothing written for a corrupt object");
            detected.push(offset);
        }
    }
    assert!(
        detected.contains(&trailer_digest),
        "a damaged checksum must be detected (detected: {detected:?})"
    );

    // An object stored larger than any WAL file's can be is refused by the
    // size the server gives, before its body is read.
    let max = pgdrill::backup::layout::MAX_WAL_OBJECT_SIZE;
    let huge = std::fs::File::options().write(true).open(&object).unwrap();
    huge.set_len(max + 1).unwrap();
    drop(huge);
    let out = env.pgdrill(&["wal-fetch", &name, dest.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        pgdrill::backup::exit::FETCH_FAILED,
        "{}",
        stderr(&out)
    );
    let limit = format!("more than {max} bytes");
    assert!(stderr(&out).contains(&limit), "{}", stderr(&out));
    assert!(!dest.exists(), "nothing written for an oversized object");
    std::fs::write(&object, &original).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_backup_part_fails_fetch() {
    let env = TestEnv::start("faults", Storage::S3, &[], InitOptions::default());
    env.backup_push(&[]);
    let s3 = env.archive.s3.as_ref().unwrap();
    let parts = s3.object_path("faults/basebackups_005");
    let part = walk_files(&parts)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("part_1.tar"))
        .expect("a part object");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&part, &bytes).unwrap();
    let target = env.dir("restore").join("data");
    let out = env.pgdrill(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_backup_push_leaves_no_listed_backup() {
    // Small parts uploaded one at a time, so the kill lands mid-backup.
    let env = TestEnv::start(
        "killed",
        Storage::Dir,
        &[
            ("WALG_TAR_SIZE_THRESHOLD", "1048576"),
            ("WALG_UPLOAD_CONCURRENCY", "1"),
        ],
        InitOptions::default(),
    );
    run_ok(
        env.primary
            .client_tool("pgbench")
            .args(["-i", "-q", "-s", "3"]),
        "pgbench -i",
    );
    let archive = std::path::PathBuf::from(&env.archive.storage_vars[0].1);
    let mut cmd = Command::new(PGDRILL);
    cmd.arg("--env-dir")
        .arg(&env.archive.env_dir)
        .arg("backup-push")
        .arg(&env.primary.data_dir);
    for (k, v) in env.primary.pg_settings() {
        cmd.env(k, v);
    }
    let mut child = as_user(&mut cmd, env.archive.run_as)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parts = walk_files(&archive.join("basebackups_005"));
        if parts
            .iter()
            .filter(|p| p.to_string_lossy().contains("part_"))
            .count()
            >= 3
        {
            break;
        }
        assert!(Instant::now() < deadline, "backup-push made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup-push finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = env.pgdrill(&["backup-list", "--json"]);
    assert_success(&out, "backup-list");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = env.pgdrill(&[
        "backup-fetch",
        env.dir("r").join("d").to_str().unwrap(),
        "LATEST",
    ]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no backups"), "{}", stderr(&out));

    // The server's side of the killed backup was released: a new backup
    // works, and retention removes the dead one's leftovers.
    env.backup_push(&[]);
    let out = env.pgdrill(&["backup-list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let before = walk_files(&archive.join("basebackups_005")).len();
    assert_success(
        &env.pgdrill(&["delete", "--confirm", "retain", "1"]),
        "delete",
    );
    let after = walk_files(&archive.join("basebackups_005")).len();
    assert!(
        after < before,
        "leftovers of the killed backup were deleted ({before} -> {after})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_endpoints_give_clear_errors() {
    let env = TestEnv::start("creds", Storage::S3, &[], InitOptions::default());
    let secret = "definitely-wrong-secret-value";
    let mut vars = env.archive.storage_vars.clone();
    for (k, v) in vars.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = secret.to_string();
        }
    }
    vars.push(("WALG_S3_MAX_RETRIES".into(), "1".into()));
    let out = env.pgdrill_with_vars(&vars, &["backup-list"]);
    assert_eq!(code(&out), 1);
    let msg = stderr(&out);
    assert!(
        msg.contains("AWS_SECRET_ACCESS_KEY") && msg.contains("refused access"),
        "{msg}"
    );
    assert!(!msg.contains(secret), "secret printed: {msg}");

    let mut unreachable = vars.clone();
    for (k, v) in unreachable.iter_mut() {
        if k == "AWS_ENDPOINT" {
            *v = "http://127.0.0.1:1".into();
        }
    }
    let started = Instant::now();
    let out = env.pgdrill_with_vars(&unreachable, &["backup-list"]);
    assert_eq!(code(&out), 1);
    let msg = stderr(&out);
    assert!(
        msg.contains("127.0.0.1:1") || msg.contains("connect"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gives up in bounded time"
    );

    let out = env.pgdrill_with_vars(&[], &["backup-list"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("WALG_S3_PREFIX"), "{}", stderr(&out));

    let out = env.pgdrill_with_vars(
        &[("WALG_S3_PREFIX".into(), "s3://b/p".into())],
        &["backup-list"],
    );
    assert!(
        stderr(&out).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&out)
    );

    let out = env.pgdrill(&["delete", "retain", "zero"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("positive count"), "{}", stderr(&out));

    let out = env.pgdrill(&["no-such-verb"]);
    assert_eq!(code(&out), 2, "usage errors exit 2");
}

/// `count` segments (segment i filled with byte i) in `pg_wal`, each with
/// a `.ready` file as the archiver leaves them; their names.
fn ready_segments(pg_wal: &std::path::Path, count: u32) -> Vec<String> {
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let names: Vec<String> = (1..=count)
        .map(|i| format!("0000000100000000{i:08X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(pg_wal.join(n), vec![i as u8; 64 * 1024]).unwrap();
        std::fs::write(
            pg_wal.join("archive_status").join(format!("{n}.ready")),
            b"",
        )
        .unwrap();
    }
    names
}

/// wal-push with WALG_UPLOAD_CONCURRENCY > 1 uploads later `.ready`
/// segments ahead and answers PostgreSQL's later call for them from a
/// marker, but only while the file is byte-identical.
#[test]
fn upload_ahead_pushes_ready_segments_and_trusts_only_identical_files() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("archive");
    let pg_wal = work.path().join("pg_wal");
    let names = ready_segments(&pg_wal, 4);
    let push = |name: &str| {
        Command::new(PGDRILL)
            .args(["wal-push", pg_wal.join(name).to_str().unwrap()])
            .env("WALG_FILE_PREFIX", &archive)
            .env("WALG_UPLOAD_CONCURRENCY", "3")
            .env_remove("PGDRILL_ENV_DIR")
            .output()
            .unwrap()
    };
    assert_success(&push(&names[0]), "wal-push");
    let stored = |n: &str| archive.join(format!("wal_005/{n}.lz4")).exists();
    assert!(
        stored(&names[1]) && stored(&names[2]),
        "two segments pushed ahead"
    );
    assert!(!stored(&names[3]), "no more than concurrency - 1 ahead");
    let markers: Vec<std::path::PathBuf> = walk_files(&pg_wal.join(".pgdrill/uploaded"));
    let marker = markers
        .iter()
        .find(|m| m.file_name().unwrap().to_str() == Some(names[1].as_str()))
        .expect("a marker for the pushed-ahead segment, under the store's id")
        .clone();

    // PostgreSQL's own call for a pushed-ahead segment: answered from the
    // marker, which is consumed.
    assert_success(&push(&names[1]), "wal-push of a pushed-ahead segment");
    assert!(!marker.exists());

    // A file that changed since it was pushed ahead is not trusted: the
    // push compares with storage and refuses the different content.
    std::fs::write(pg_wal.join(&names[2]), vec![9u8; 64 * 1024]).unwrap();
    let out = push(&names[2]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
}

fn listed_backups(env: &TestEnv) -> String {
    let out = env.pgdrill(&["backup-list", "--json"]);
    assert_success(&out, "backup-list");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Issue 9.2: with `archive_mode = off` the backup's WAL never reaches the
/// store; backup-push must fail, naming the setting, and list nothing.
#[tokio::test(flavor = "multi_thread")]
async fn backup_push_without_archiving_fails_and_lists_nothing() {
    let env = TestEnv::start(
        "no-archive",
        Storage::Dir,
        &[("PGDRILL_ARCHIVE_CHECK_TIMEOUT", "5s")],
        InitOptions {
            settings: vec![("archive_mode".into(), "off".into())],
            ..InitOptions::default()
        },
    );
    let out = env.pgdrill(&["backup-push", env.primary.data_dir.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("archive_mode"), "{}", stderr(&out));
    assert_eq!(listed_backups(&env), "[]");
}

/// Issue 9.2: archive_command archives into another prefix; the backup's
/// WAL is archived, but not where the backup goes.
#[tokio::test(flavor = "multi_thread")]
async fn backup_push_fails_when_its_wal_goes_to_another_store() {
    let env = TestEnv::start(
        "archive-elsewhere",
        Storage::Dir,
        &[("PGDRILL_ARCHIVE_CHECK_TIMEOUT", "5s")],
        InitOptions::default(),
    );
    let elsewhere = env.dir("elsewhere");
    let other_env = env.archive.work.path().join("env-elsewhere");
    write_env_dir(
        &other_env,
        &[(
            "WALG_FILE_PREFIX".to_string(),
            elsewhere.display().to_string(),
        )],
        env.archive.run_as,
    )
    .unwrap();
    let c = env.primary.connect().await.unwrap();
    let command = format!("{PGDRILL} --env-dir {} wal-push %p", other_env.display());
    c.execute(
        &format!("ALTER SYSTEM SET archive_command = '{command}'"),
        &[],
    )
    .await
    .unwrap();
    c.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let out = env.pgdrill(&["backup-push", env.primary.data_dir.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("archive_command") && msg.contains("not in"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded by PGDRILL_ARCHIVE_CHECK_TIMEOUT"
    );
    assert_eq!(listed_backups(&env), "[]");
    assert!(
        !walk_files(&elsewhere.join("wal_005")).is_empty(),
        "the WAL went to the other store"
    );
}

/// Issue 9.3: a missing bucket is not the end of the archive. S3 answers
/// 404 for it too; wal-fetch must exit above 125 (PostgreSQL aborts
/// recovery) and name the bucket, and exit 74 only when the bucket
/// answers and the object is absent.
#[tokio::test(flavor = "multi_thread")]
async fn wal_fetch_from_a_missing_bucket_aborts_recovery() {
    let env = TestEnv::start("no-bucket", Storage::S3, &[], InitOptions::default());
    let dest = env.dir("scratch").join("RECOVERYXLOG");
    let fetch = |prefix: &str, segment: &str| {
        let mut vars = env.archive.storage_vars.clone();
        for (k, v) in vars.iter_mut() {
            if k == "WALG_S3_PREFIX" {
                *v = prefix.to_string();
            }
        }
        vars.push(("WALG_PREFETCH".into(), "0".into()));
        vars.push(("WALG_S3_MAX_RETRIES".into(), "1".into()));
        env.pgdrill_with_vars(&vars, &["wal-fetch", segment, dest.to_str().unwrap()])
    };
    let with_prefix = |prefix: &str| fetch(prefix, "000000010000000000000001");
    let out = with_prefix("s3://no-such-bucket/db");
    assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
    assert!(!dest.exists());

    // The bucket exists, the prefix is empty (a typo, say): not an
    // archive, so not the end of one either.
    let out = with_prefix("s3://drill/empty-prefix");
    assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s3://drill/empty-prefix") && stderr(&out).contains("not an archive"),
        "{}",
        stderr(&out)
    );

    // The archive holds WAL, not this segment: the end of the archive.
    switch_and_wait_archived(&env.primary).await;
    let out = fetch("s3://drill/no-bucket", "0000000100000000000000FF");
    assert_eq!(code(&out), 74, "{}", stderr(&out));
}

/// Issue 31.5: a storage that fails while a restore runs (every request
/// answered 503, or every connection closed unanswered) for longer than
/// the tool retries: wal-fetch of a stored segment must exit above 125,
/// so that PostgreSQL aborts recovery, never 74, which PostgreSQL takes
/// for the end of the archive (recovery would end early, as complete:
/// WAL-G issue 1126). Once the storage serves again, the same fetch works.
#[tokio::test(flavor = "multi_thread")]
async fn wal_fetch_during_a_storage_outage_fails_loudly_never_not_found() {
    use pgdrill::env::s3_server::ServerFault;
    let env = TestEnv::start("outage", Storage::S3, &[], InitOptions::default());
    let segment = switch_and_wait_archived(&env.primary).await;
    let dest = env.dir("scratch").join("RECOVERYXLOG");
    let mut vars = env.archive.storage_vars.clone();
    vars.push(("WALG_PREFETCH".into(), "0".into()));
    vars.push(("PGDRILL_S3_RETRY_TIMEOUT_SECS".into(), "1".into()));
    let fetch = || env.pgdrill_with_vars(&vars, &["wal-fetch", &segment, dest.to_str().unwrap()]);
    let faults = env.archive.s3.as_ref().expect("S3 storage").faults();
    for fault in [ServerFault::Errors, ServerFault::Refuse] {
        faults.set(Some(fault)).unwrap();
        let out = fetch();
        faults.set(None).unwrap();
        assert_eq!(code(&out), FETCH_FAILED, "{fault:?}: {}", stderr(&out));
        assert!(!dest.exists(), "{fault:?}");
    }
    let out = fetch();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(dest.exists());
}

/// Issue 9.3: a typo in restore_command must not end recovery early:
/// usage errors of wal-fetch exit above 125 too, and so does a wal-fetch
/// whose runtime cannot start.
#[test]
fn wal_fetch_usage_errors_exit_above_125() {
    let run = |args: &[&str]| {
        Command::new(PGDRILL)
            .args(args)
            .env("WALG_FILE_PREFIX", "/nonexistent")
            .env_remove("PGDRILL_ENV_DIR")
            .output()
            .unwrap()
    };
    for args in [
        &["wal-fetch", "000000010000000000000001"][..],
        &["wal-fetch", "--prefetch-ahead", "a", "b"],
        &["--log", "warn", "wal-fetch"],
    ] {
        let out = run(args);
        assert_eq!(code(&out), FETCH_FAILED, "{args:?}: {}", stderr(&out));
    }
    assert_eq!(code(&run(&["wal-fetch", "--help"])), 0);
    assert_eq!(code(&run(&["wal-push"])), 2, "other verbs keep exit 2");

    // No thread may start (RLIMIT_NPROC of 1; root ignores it, so as the
    // server user): the async runtime cannot start, which panics in tokio.
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -u 1 && exec {PGDRILL} wal-fetch 000000010000000000000001 /tmp/unused"
        ))
        .env("WALG_FILE_PREFIX", "/nonexistent")
        .env_remove("PGDRILL_ENV_DIR");
    let out = as_user(&mut cmd, RunAs::detect().unwrap())
        .output()
        .unwrap();
    assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
    assert!(stderr(&out).contains("thread"), "{}", stderr(&out));
}

/// A time without a UTC offset is refused wherever the tool takes one:
/// PostgreSQL reads such a time in the server's `timezone`, an operator
/// copies it from psql in local time, and taking it as UTC restored to the
/// wrong moment. The message names the accepted forms.
#[test]
fn times_without_a_utc_offset_are_refused() {
    let store = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(PGDRILL)
            .args(args)
            .env("WALG_FILE_PREFIX", store.path())
            .env_remove("PGDRILL_ENV_DIR")
            .output()
            .unwrap()
    };
    let dest = store.path().join("restore");
    let dest = dest.to_str().unwrap();
    for (args, exit) in [
        (
            &[
                "backup-fetch",
                dest,
                "LATEST",
                "--recovery-target-time",
                "2026-12-05 07:53:26",
            ][..],
            2,
        ),
        (
            &[
                "backup-fetch",
                dest,
                "LATEST",
                "--recovery-target-time",
                "2026-12-05T07:53:26.5",
            ],
            2,
        ),
        (&["delete", "before", "2026-12-05 07:53:26"], 1),
        (&["delete", "--confirm", "before", "2026-12-05T07:53"], 1),
    ] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(code(&out), exit, "{args:?}: {err}");
        assert!(
            err.contains("no UTC offset") && err.contains("+02:00") && err.contains("07:53:26Z"),
            "{args:?}: {err}"
        );
    }
    assert!(!std::path::Path::new(dest).exists(), "nothing restored");
}

/// An unmounted volume is an empty directory, and a bucket prefix with a
/// typo is an empty listing: a location that holds neither WAL nor
/// backups is not an archive, so wal-fetch must not answer "not found"
/// (74, which ends recovery as the end of the archive) but fail (above
/// 125) naming the location.
#[test]
fn wal_fetch_from_a_location_that_is_no_archive_aborts_recovery() {
    let store = tempfile::tempdir().unwrap();
    let dest = store.path().join("restored-segment");
    let fetch = || {
        Command::new(PGDRILL)
            .args([
                "wal-fetch",
                "000000010000000000000001",
                dest.to_str().unwrap(),
            ])
            .env("WALG_FILE_PREFIX", store.path())
            .env_remove("PGDRILL_ENV_DIR")
            .output()
            .unwrap()
    };
    let out = fetch();
    assert_eq!(code(&out), FETCH_FAILED, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&store.path().display().to_string())
            && stderr(&out).contains("wal_005"),
        "{}",
        stderr(&out)
    );
    // An archive with WAL but not this segment: the end of the archive.
    std::fs::create_dir_all(store.path().join("wal_005")).unwrap();
    std::fs::write(
        store.path().join("wal_005/000000010000000000000009.lz4"),
        b"x",
    )
    .unwrap();
    assert_eq!(code(&fetch()), 74);
}

/// Issue 9.10: an upload-ahead marker vouches for one store only: after
/// the prefix changes, wal-push must store the segment in the new one.
#[test]
fn upload_ahead_markers_are_tied_to_their_store() {
    let work = tempfile::tempdir().unwrap();
    let pg_wal = work.path().join("pg_wal");
    let names = ready_segments(&pg_wal, 2);
    let push = |archive: &std::path::Path, name: &str| {
        Command::new(PGDRILL)
            .args(["wal-push", pg_wal.join(name).to_str().unwrap()])
            .env("WALG_FILE_PREFIX", archive)
            .env("WALG_UPLOAD_CONCURRENCY", "2")
            .env_remove("PGDRILL_ENV_DIR")
            .output()
            .unwrap()
    };
    let (first, second) = (work.path().join("first"), work.path().join("second"));
    assert_success(&push(&first, &names[0]), "wal-push into the first store");
    assert!(first.join(format!("wal_005/{}.lz4", names[1])).exists());
    assert_success(&push(&second, &names[1]), "wal-push into the second store");
    assert!(
        second.join(format!("wal_005/{}.lz4", names[1])).exists(),
        "exit 0 means stored in the configured store"
    );
}

/// Issue 9.12: the directory store syncs the directories it changes, new
/// ones included, and a failed directory sync is an error. A directory
/// the server user may write but not read cannot be opened for fsync.
#[test]
fn directory_store_fails_when_a_directory_cannot_be_synced() {
    use std::os::unix::fs::PermissionsExt;
    let run_as = RunAs::detect().unwrap();
    let work = tempfile::tempdir().unwrap();
    let segment = work.path().join("000000010000000000000001");
    std::fs::write(&segment, vec![7u8; 64 * 1024]).unwrap();
    let push = |archive: &std::path::Path| {
        let mut cmd = Command::new(PGDRILL);
        cmd.args(["wal-push", segment.to_str().unwrap()])
            .env("WALG_FILE_PREFIX", archive)
            .env("WALG_UPLOAD_CONCURRENCY", "1")
            .env_remove("PGDRILL_ENV_DIR");
        as_user(&mut cmd, run_as).output().unwrap()
    };
    let owned = |path: &std::path::Path| {
        std::fs::create_dir_all(path).unwrap();
        if let Some(u) = run_as {
            u.chown_tree(path).unwrap();
        }
    };
    owned(work.path());
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // wal_005/ is new: the store root that gained it must be synced.
    let root = work.path().join("new-dir");
    owned(&root);
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o300)).unwrap();
    let out = push(&root);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("sync"), "{}", stderr(&out));

    // wal_005/ exists: the rename into it must be synced.
    let root = work.path().join("old-dir");
    owned(&root.join("wal_005"));
    std::fs::set_permissions(root.join("wal_005"), std::fs::Permissions::from_mode(0o300)).unwrap();
    let out = push(&root);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("sync"), "{}", stderr(&out));
}
