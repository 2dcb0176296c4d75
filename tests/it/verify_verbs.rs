//! The read-only verification verbs against a real PostgreSQL 15 archiving
//! with pgdrill: `wal-verify`, `backup-verify` and `backup-check` pass on a
//! healthy archive and name each defect injected into it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use pgdrill::env::local::{as_user, InitOptions, LocalPostgres};
use serde_json::Value;

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr: {}", stdout(out), stderr(out)))
}

/// Stored WAL segments (not .history or .backup files), sorted.
fn stored_segments(wal_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    out.sort();
    out
}

fn segment_name(object: &Path) -> String {
    object.file_stem().unwrap().to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_archive_passes_and_each_defect_is_named() {
    let env = TestEnv::start("verify", Storage::S3, &[], InitOptions::default());
    let backup = env.backup_push(&[]);
    for _ in 0..3 {
        switch_and_wait_archived(&env.primary).await;
    }

    // Healthy: every verb says so.
    let out = env.pgdrill(&["wal-verify", "integrity", "timeline", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    assert_eq!(v["integrity"]["status"], "OK", "{v}");
    let details = v["integrity"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{v}");
    assert_eq!(details[0]["status"], "FOUND");
    assert_eq!(
        details[0]["start_segment"],
        backup.trim_start_matches("base_")
    );
    assert!(details[0]["segments_count"].as_u64().unwrap() >= 4, "{v}");
    assert_eq!(v["timeline"]["status"], "OK");
    assert_eq!(v["timeline"]["details"]["current_timeline_id"], 1);
    assert_eq!(v["timeline"]["details"]["highest_storage_timeline_id"], 1);
    let out = env.pgdrill(&["wal-verify"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).matches("segments verified").count(), 1);
    let out = env.pgdrill(&["backup-verify", "LATEST"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("\nOK: "), "{}", stdout(&out));
    let out = env.pgdrill(&["backup-check", "--max-age", "1h", "--max-archive-lag", "5m"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let line = stdout(&out);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!("OK: newest backup {backup} is ")),
        "{line}"
    );
    assert!(line.contains("WAL segments continuous since it"), "{line}");

    // One archived segment disappears between the backup and the newest.
    let s3 = env.archive.s3.as_ref().unwrap();
    let segments = stored_segments(&s3.object_path("verify/wal_005"));
    let victim = &segments[segments.len() - 2];
    let lost = segment_name(victim);
    std::fs::remove_file(victim).unwrap();
    let out = env.pgdrill(&["wal-verify", "integrity", "--json"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    assert_eq!(v["integrity"]["status"], "FAILURE");
    let gap: Vec<&Value> = v["integrity"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "MISSING_LOST")
        .collect();
    assert_eq!(gap.len(), 1, "{v}");
    assert_eq!(gap[0]["start_segment"], lost.as_str());
    assert_eq!(gap[0]["end_segment"], lost.as_str());
    let out = env.pgdrill(&["wal-verify", "integrity"]);
    assert_eq!(code(&out), 4);
    assert!(stdout(&out).contains("[wal-verify] integrity check status: FAILURE"));
    let out = env.pgdrill(&["backup-check"]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let line = stdout(&out);
    assert!(
        line.starts_with("CRITICAL: ") && line.contains(&lost),
        "{line}"
    );
    let out = env.pgdrill(&["backup-verify", &backup]);
    assert_eq!(
        code(&out),
        0,
        "the backup's own WAL is intact: {}",
        stdout(&out)
    );

    // A flipped byte in a backup part.
    let part = walk_files(&s3.object_path("verify/basebackups_005"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("part_1.tar"))
        .expect("a part object");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&part, &bytes).unwrap();
    let out = env.pgdrill(&["backup-verify", "LATEST", "--json"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "FAILURE");
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .all(|p| p["object"].as_str().unwrap().contains("part_1.tar")),
        "{v}"
    );
    assert!(!problems.is_empty());
    let out = env.pgdrill(&["backup-verify", "LATEST"]);
    assert!(stdout(&out).contains("FAILURE: "), "{}", stdout(&out));

    // Another cluster's timeline in this prefix.
    let scratch = env.dir("scratch");
    let history = scratch.join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    assert_success(
        &env.pgdrill(&["wal-push", history.to_str().unwrap()]),
        "wal-push history",
    );
    let out = env.pgdrill(&["wal-verify", "timeline", "--json"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    assert_eq!(v["timeline"]["status"], "FAILURE");
    assert_eq!(v["timeline"]["details"]["highest_storage_timeline_id"], 2);
    assert_eq!(v["timeline"]["details"]["current_timeline_id"], 1);
    assert!(v.get("integrity").is_none());
}

/// Runs pgdrill with the env dir and `pg`'s connection settings.
fn pgdrill_against(env: &TestEnv, pg: &LocalPostgres, args: &[&str]) -> Output {
    let mut cmd = Command::new(PGDRILL);
    cmd.arg("--env-dir").arg(&env.archive.env_dir).args(args);
    for (k, v) in pg.pg_settings() {
        cmd.env(k, v);
    }
    as_user(&mut cmd, env.archive.run_as)
        .output()
        .expect("pgdrill runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_only_checks_and_missing_backup_wal() {
    let env = TestEnv::start(
        "verifydir",
        Storage::Dir,
        &[("WALG_COMPRESSION_METHOD", "zstd")],
        InitOptions::default(),
    );
    let backup = env.backup_push(&[]);
    switch_and_wait_archived(&env.primary).await;

    // Without the cluster: integrity and backup-check work from storage,
    // the timeline check says what it needs.
    let mut vars = env.archive.storage_vars.clone();
    vars.push(("PGHOST".to_string(), "/nonexistent".to_string()));
    let out = env.pgdrill_with_vars(&vars, &["wal-verify", "integrity"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("segments verified"));
    let out = env.pgdrill_with_vars(&vars, &["wal-verify", "timeline"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("needs the cluster"),
        "{}",
        stderr(&out)
    );
    let out = env.pgdrill_with_vars(&vars, &["backup-check", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "OK");
    assert_eq!(v["backups"], 1);
    assert!(v["archive_lag_seconds"].is_u64(), "{v}");

    // A restore that archives into the same prefix promotes to timeline 2:
    // for it the archive is whole across the switch; for the primary,
    // storage now holds a timeline it never had (the DR-test pitfall).
    let restored = env
        .restore_with("restored", &backup, &["--recover"], true)
        .await;
    switch_and_wait_archived(&restored).await;
    let out = pgdrill_against(&env, &restored, &["wal-verify", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    let details = v["integrity"]["details"].as_array().unwrap();
    assert!(details.iter().all(|r| r["status"] == "FOUND"), "{v}");
    assert_eq!(details.first().unwrap()["timeline_id"], 1, "{v}");
    assert_eq!(details.last().unwrap()["timeline_id"], 2, "{v}");
    assert_eq!(v["timeline"]["status"], "OK", "{v}");
    let out = env.pgdrill(&["wal-verify", "timeline"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("another cluster"), "{}", stdout(&out));

    // The last segment the backup needs is gone.
    let archive = PathBuf::from(&env.archive.storage_vars[0].1);
    let sentinel: Value = serde_json::from_slice(
        &std::fs::read(archive.join(format!(
            "basebackups_005/{backup}_backup_stop_sentinel.json"
        )))
        .unwrap(),
    )
    .unwrap();
    let finish = sentinel["finish_wal_file_name"].as_str().unwrap();
    std::fs::remove_file(archive.join(format!("wal_005/{finish}.zst"))).unwrap();
    let out = env.pgdrill(&["backup-verify", "LATEST"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("wal_005/{finish}: missing from storage")),
        "{report}"
    );
    let out = env.pgdrill(&["wal-verify", "integrity"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("MISSING_LOST"));

    // No such backup: an error, not a report.
    let out = env.pgdrill(&["backup-verify", "base_0000000100000000000000AA"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

/// Issue 9.9: a delta restores as its chain, so `backup-verify` of a delta
/// checks every backup it builds on: a part missing from the full backup
/// fails the delta's verification.
#[tokio::test(flavor = "multi_thread")]
async fn backup_verify_of_a_delta_checks_its_whole_chain() {
    let env = TestEnv::start(
        "verify-chain",
        Storage::Dir,
        &[("WALG_DELTA_MAX_STEPS", "2")],
        InitOptions::default(),
    );
    let c = env.primary.connect().await.unwrap();
    c.batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    let full = env.backup_push(&[]);
    c.batch_execute("UPDATE t SET g = g + 1 WHERE g < 100")
        .await
        .unwrap();
    switch_and_wait_archived(&env.primary).await;
    let delta = env.backup_push(&[]);
    assert!(delta.contains("_D_"), "{delta}");
    switch_and_wait_archived(&env.primary).await;
    let out = env.pgdrill(&["backup-verify", &delta]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));

    let archive = Path::new(&env.archive.storage_vars[0].1);
    let part = archive.join(format!(
        "basebackups_005/{full}/tar_partitions/part_1.tar.lz4"
    ));
    std::fs::remove_file(&part).unwrap();
    let out = env.pgdrill(&["backup-verify", &delta, "--json"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    let report = json(&out);
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["object"]
            .as_str()
            .unwrap()
            .contains(&format!("{full}/tar_partitions/part_1"))),
        "{report}"
    );
}
