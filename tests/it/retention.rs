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
