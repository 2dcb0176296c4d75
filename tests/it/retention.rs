//! Retention against real backups: permanent backups and their WAL
//! survive every delete; a dry run deletes nothing; `before NAME` keeps
//! the named backup; `everything` empties the archive, permanent backups
//! only with FORCE.

use crate::common;

use common::*;
use pgdrill::env::local::InitOptions;

fn listed(env: &TestEnv) -> Vec<(String, bool)> {
    let out = env.pgdrill(&["backup-list", "--json"]);
    assert_success(&out, "backup-list");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["backup_name"].as_str().unwrap().to_string(),
                r["is_permanent"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn wal_files(env: &TestEnv) -> Vec<String> {
    let dir = std::path::Path::new(&env.archive.storage_vars[0].1).join("wal_005");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_backups_survive_and_policies_do_what_they_say() {
    let env = TestEnv::start("retention", Storage::Dir, &[], InitOptions::default());
    let first = env.backup_push(&["--permanent"]);
    switch_and_wait_archived(&env.primary).await;
    let second = env.backup_push(&[]);
    switch_and_wait_archived(&env.primary).await;
    let third = env.backup_push(&[]);
    switch_and_wait_archived(&env.primary).await;
    assert_eq!(listed(&env).len(), 3);
    let first_wal = format!("{}.lz4", first.trim_start_matches("base_"));

    // Dry run: prints, deletes nothing.
    let out = env.pgdrill(&["delete", "retain", "1"]);
    assert_success(&out, "delete dry run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("would delete backup"));
    assert_eq!(listed(&env).len(), 3);

    // retain 1: the permanent first backup and its WAL stay.
    assert_success(
        &env.pgdrill(&["delete", "--confirm", "retain", "1"]),
        "delete retain 1",
    );
    assert_eq!(
        listed(&env),
        [(first.clone(), true), (third.clone(), false)],
        "{second} deleted, the permanent one kept"
    );
    assert!(
        wal_files(&env).contains(&first_wal),
        "the permanent backup keeps its WAL"
    );

    // Unmark it: now `before` the third backup removes it, and its WAL.
    assert_success(
        &env.pgdrill(&["backup-mark", &first, "--impermanent"]),
        "backup-mark -i",
    );
    assert_success(
        &env.pgdrill(&["delete", "--confirm", "before", &third]),
        "delete before NAME",
    );
    assert_eq!(listed(&env), [(third.clone(), false)]);
    let oldest_needed = format!("{}.lz4", third.trim_start_matches("base_"));
    assert!(
        wal_files(&env)
            .iter()
            .filter(|n| n.len() == 28)
            .all(|n| n.as_str() >= oldest_needed.as_str()),
        "no segment older than the kept backup's start: {:?}",
        wal_files(&env)
    );
    // The kept backup still restores.
    let r = env
        .restore("after-retention", "LATEST", &["--recover"])
        .await;
    drop(r);

    // Issue 9.5: `everything` does not remove a permanent backup without
    // FORCE (as the help text and WAL-G say); it refuses and deletes nothing.
    assert_success(&env.pgdrill(&["backup-mark", &third]), "backup-mark");
    let out = env.pgdrill(&["delete", "--confirm", "everything"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains(&third) && msg.contains("permanent") && msg.contains("FORCE"),
        "{msg}"
    );
    assert_eq!(listed(&env), [(third.clone(), true)]);
    assert!(!wal_files(&env).is_empty());
    assert_success(
        &env.pgdrill(&["delete", "--confirm", "everything", "FORCE"]),
        "delete everything FORCE",
    );
    assert!(listed(&env).is_empty());
    assert!(wal_files(&env).is_empty(), "{:?}", wal_files(&env));
}

/// Commits a row, so that the next switch has something to close.
async fn switch_wal(pg: &pgdrill::env::local::LocalPostgres, times: usize) {
    let c = pg.connect().await.unwrap();
    for _ in 0..times {
        c.batch_execute("INSERT INTO t VALUES (0); SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    switch_and_wait_archived(pg).await;
}

/// Issue 30.7, its recipe with real backups and WAL: backups on timeline 1;
/// a point-in-time restore of the first promotes to timeline 2, which
/// numbers its segments from the switch point, below the newer backups of
/// timeline 1; its first backup is uploaded but not complete yet (its
/// sentinel not written: the moment a cron `delete` overlaps a
/// `backup-push`) when `delete --confirm retain 2` runs. Its parts and
/// the WAL of timeline 2 must stay; completed, it verifies and restores.
#[tokio::test(flavor = "multi_thread")]
async fn retention_during_the_first_backup_of_a_new_timeline_keeps_it() {
    let env = TestEnv::start("retention-tli", Storage::Dir, &[], InitOptions::default());
    let c = env.primary.connect().await.unwrap();
    c.batch_execute("CREATE TABLE t(id int)").await.unwrap();
    let first = env.backup_push(&[]);
    c.batch_execute("INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let target: String = c
        .query_one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'", &[])
        .await
        .unwrap()
        .get(0);
    std::thread::sleep(std::time::Duration::from_millis(700));
    switch_wal(&env.primary, 8).await;
    let second = env.backup_push(&[]);
    switch_wal(&env.primary, 4).await;
    let third = env.backup_push(&[]);
    switch_wal(&env.primary, 1).await;

    let tl2 = env
        .restore_with(
            "timeline-2",
            &first,
            &["--recovery-target-time", &target],
            true,
        )
        .await;
    switch_wal(&tl2, 1).await;
    let out = env
        .archive
        .tool_command(&env.archive.env_dir, Some(&tl2))
        .args(["backup-push", tl2.data_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "backup-push on timeline 2");
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(new.starts_with("base_00000002"), "{new}");
    assert!(
        new[13..29] < second[13..29],
        "the recipe: timeline 2's backup ({new}) numbers below timeline 1's kept {second}"
    );
    let store = std::path::PathBuf::from(&env.archive.storage_vars[0].1);
    let sentinel = store.join(format!("basebackups_005/{new}_backup_stop_sentinel.json"));
    let aside = store.join("sentinel-aside");
    std::fs::rename(&sentinel, &aside).unwrap();
    let tl2_wal = |env: &TestEnv| -> Vec<String> {
        wal_files(env)
            .into_iter()
            .filter(|n| n.starts_with("00000002") && n.len() == 28)
            .collect()
    };
    let tl2_wal_before = tl2_wal(&env);

    assert_success(
        &env.pgdrill(&["delete", "--confirm", "retain", "2"]),
        "delete retain 2 while timeline 2's backup is unfinished",
    );
    assert_eq!(
        listed(&env),
        [(second.clone(), false), (third.clone(), false)],
        "{first} deleted"
    );
    assert!(
        walk_files(&store.join(format!("basebackups_005/{new}"))).len() > 1,
        "the unfinished backup's parts stay"
    );
    let start_segment = &new[5..29];
    let kept: Vec<String> = tl2_wal(&env);
    for name in tl2_wal_before.iter().filter(|n| &n[..24] >= start_segment) {
        assert!(
            kept.contains(name),
            "{name} of timeline 2 deleted: {kept:?}"
        );
    }

    std::fs::rename(&aside, &sentinel).unwrap();
    assert_success(&env.pgdrill(&["backup-verify", &new]), "backup-verify");
    drop(tl2);
    let restored = env.restore("restored", &new, &["--recover"]).await;
    let r = restored.connect().await.unwrap();
    assert!(count(&r, "SELECT count(*) FROM t WHERE id > 0").await == 100);
}
