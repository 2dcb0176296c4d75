//! Delta backups: only changed pages are stored, names say the base
//! (`base_X_D_Y`), restores walk the chain exactly, the chain is bounded by
//! WALG_DELTA_MAX_STEPS, and retention never removes a base a kept delta
//! needs.

mod common;

use common::*;
use pgdrill::env::local::InitOptions;

fn push(env: &TestEnv, extra: &[&str]) -> String {
    let mut args = vec!["backup-push", env.primary.data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = env.pgdrill(&args);
    assert_success(&out, "backup-push");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn list(env: &TestEnv) -> Vec<serde_json::Value> {
    let out = env.pgdrill(&["backup-list", "--json"]);
    assert_success(&out, "backup-list");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn size_of(rows: &[serde_json::Value], name: &str, field: &str) -> u64 {
    rows.iter()
        .find(|r| r["backup_name"] == name)
        .and_then(|r| r[field].as_u64())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_chain_stores_changed_pages_and_restores_exactly() {
    let env = TestEnv::start(
        "delta",
        Storage::Dir,
        &[("WALG_DELTA_MAX_STEPS", "2")],
        InitOptions::default(),
    );
    let c = env.primary.connect().await.unwrap();
    run_ok(
        env.primary
            .client_tool("pgbench")
            .args(["-i", "-q", "-s", "5"]),
        "pgbench -i",
    );
    c.batch_execute("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 10000) g; CHECKPOINT")
        .await
        .unwrap();
    let full = push(&env, &[]);
    assert!(!full.contains("_D_"), "first backup is full: {full}");

    // About 1% of pgbench_accounts' pages change.
    c.batch_execute("UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 5000; CHECKPOINT")
        .await
        .unwrap();
    let d1 = push(&env, &[]);
    assert_eq!(
        d1,
        format!("{}_D_{}", &d1[..29], &full[5..]),
        "delta named after its base"
    );
    let rows = list(&env);
    let (full_c, d1_c) = (
        size_of(&rows, &full, "compressed_size"),
        size_of(&rows, &d1, "compressed_size"),
    );
    eprintln!(
        "full backup {full_c} bytes compressed, delta after ~1% of pages changed {d1_c} bytes ({:.1}%)",
        100.0 * d1_c as f64 / full_c as f64
    );
    assert!(d1_c * 4 < full_c, "delta {d1_c} vs full {full_c}");

    c.batch_execute(
        "DROP TABLE doomed; CREATE TABLE fresh AS SELECT g FROM generate_series(1, 5000) g; \
         UPDATE pgbench_accounts SET abalance = 9 WHERE aid BETWEEN 400001 AND 401000; CHECKPOINT",
    )
    .await
    .unwrap();
    let d2 = push(&env, &[]);
    assert!(
        d2.ends_with(&d1[5..29]),
        "second delta builds on the first: {d2}"
    );
    let third_full = push(&env, &[]);
    assert!(
        !third_full.contains("_D_"),
        "WALG_DELTA_MAX_STEPS=2 ends the chain: {third_full}"
    );
    let forced = push(&env, &["--full"]);
    assert!(!forced.contains("_D_"));
    switch_and_wait_archived(&env.primary).await;

    let out = env.pgdrill(&["backup-list", "--detail"]);
    let detail = String::from_utf8_lossy(&out.stdout).into_owned();
    let d2_line = detail
        .lines()
        .find(|l| l.starts_with(&d2))
        .expect("d2 listed");
    assert!(
        d2_line.trim_end().ends_with(&d1),
        "detail shows what d2 is a delta of: {d2_line}"
    );

    // Restore the second delta: full + d1 + d2, then WAL; exact data, and
    // the dropped table's files are gone.
    let r = env
        .restore("from-delta", &d2, &["--recover", "--verify"])
        .await;
    let rc = r.connect().await.unwrap();
    assert_eq!(
        count(
            &rc,
            "SELECT count(*) FROM pgbench_accounts WHERE abalance = 7"
        )
        .await,
        5000
    );
    assert_eq!(
        count(
            &rc,
            "SELECT count(*) FROM pgbench_accounts WHERE abalance = 9"
        )
        .await,
        1000
    );
    assert_eq!(count(&rc, "SELECT count(*) FROM fresh").await, 5000);
    assert_eq!(
        count(
            &rc,
            "SELECT count(*) FROM pg_class WHERE relname = 'doomed'"
        )
        .await,
        0
    );
    run_ok(
        r.client_tool("pg_amcheck")
            .args(["--all", "--install-missing", "--heapallindexed"]),
        "pg_amcheck",
    );
    drop(r);

    // Retention keeps what kept deltas need.
    assert_success(
        &env.pgdrill(&["delete", "--confirm", "retain", "3"]),
        "delete retain 3",
    );
    let names: Vec<String> = list(&env)
        .iter()
        .map(|r| r["backup_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [&full, &d1, &d2, &third_full, &forced].map(String::as_str),
        "retain 3 keeps d2, so its chain d1 and full stay"
    );
    assert_success(
        &env.pgdrill(&["delete", "--confirm", "retain", "FULL", "1"]),
        "delete retain FULL 1",
    );
    let names: Vec<String> = list(&env)
        .iter()
        .map(|r| r["backup_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [forced]);
}
