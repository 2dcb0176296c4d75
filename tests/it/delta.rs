//! Delta backups: only changed pages are stored, names say the base
//! (`base_X_D_Y`), restores walk the chain exactly, the chain is bounded by
//! WALG_DELTA_MAX_STEPS, and retention never removes a base a kept delta
//! needs.

use crate::common;

use common::*;
use pgdrill::env::local::InitOptions;

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
    let full = env.backup_push(&[]);
    assert!(!full.contains("_D_"), "first backup is full: {full}");

    // About 1% of pgbench_accounts' pages change.
    c.batch_execute("UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 5000; CHECKPOINT")
        .await
        .unwrap();
    let d1 = env.backup_push(&[]);
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
    let d2 = env.backup_push(&[]);
    assert!(
        d2.ends_with(&d1[5..29]),
        "second delta builds on the first: {d2}"
    );
    let third_full = env.backup_push(&[]);
    assert!(
        !third_full.contains("_D_"),
        "WALG_DELTA_MAX_STEPS=2 ends the chain: {third_full}"
    );
    let forced = env.backup_push(&["--full"]);
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
    amcheck_all(&r);
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

/// Issue 9.1: clearing a visibility-map bit (a DELETE on an all-visible
/// page) does not change the map page's LSN. A delta that picked `_vm`
/// pages by LSN kept the full backup's map, so after the restore
/// index-only scans returned deleted rows while sequential scans did not.
#[tokio::test(flavor = "multi_thread")]
async fn delta_restore_keeps_the_visibility_map_exact() {
    let env = TestEnv::start(
        "delta-vm",
        Storage::Dir,
        &[("WALG_DELTA_MAX_STEPS", "1")],
        InitOptions::default(),
    );
    let c = env.primary.connect().await.unwrap();
    c.batch_execute(
        "CREATE EXTENSION pg_visibility; \
         CREATE TABLE vm(id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off); \
         INSERT INTO vm SELECT g, 'row ' || g FROM generate_series(1, 200000) g",
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM (FREEZE) vm").await.unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
    let full = env.backup_push(&[]);
    c.batch_execute("DELETE FROM vm WHERE id % 10 = 0")
        .await
        .unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
    let delta = env.backup_push(&[]);
    assert!(delta.ends_with(&full[5..]), "a delta of {full}: {delta}");
    switch_and_wait_archived(&env.primary).await;

    let r = env.restore("vm-restored", &delta, &["--recover"]).await;
    let rc = r.connect().await.unwrap();
    rc.batch_execute(
        "SET enable_indexscan = off; SET enable_indexonlyscan = off; \
         SET enable_bitmapscan = off",
    )
    .await
    .unwrap();
    let seq = count(&rc, "SELECT count(*) FROM vm").await;
    assert_eq!(seq, 180_000);
    rc.batch_execute(
        "RESET ALL; SET enable_seqscan = off; SET enable_bitmapscan = off; \
         SET enable_indexscan = off",
    )
    .await
    .unwrap();
    let plan: String = rc
        .query("EXPLAIN SELECT count(id) FROM vm WHERE id > 0", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Index Only Scan"), "{plan}");
    let index_only = count(&rc, "SELECT count(id) FROM vm WHERE id > 0").await;
    assert_eq!(index_only, seq, "index-only scan sees what a seq scan sees");
    let not_visible = count(&rc, "SELECT count(*) FROM pg_check_visible('vm')").await;
    assert_eq!(
        not_visible, 0,
        "pg_check_visible finds no wrongly all-visible tuple"
    );
}

/// The `visibility` verdicts of two delta restores on PostgreSQL `major`:
/// the fixed tool's, then with the defect of issue 9.1 put back
/// (`PGDRILL_SABOTAGE=stale_visibility_map`, test builds only), after a
/// VACUUM (FREEZE), a full backup and deletes on all-visible pages.
async fn sabotaged_delta_visibility(major: u32) -> [pgdrill::verify::Check; 2] {
    let env = TestEnv::start_version(
        &format!("delta-vm-mutant-{major}"),
        Storage::Dir,
        &[("WALG_DELTA_MAX_STEPS", "1")],
        InitOptions::default(),
        major,
    );
    let c = env.primary.connect().await.unwrap();
    c.batch_execute(
        "CREATE TABLE vm(id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off); \
         INSERT INTO vm SELECT g, 'row ' || g FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    let mut verdicts = Vec::new();
    for (round, sabotage) in [(0, None), (1, Some("stale_visibility_map"))] {
        c.batch_execute("VACUUM (FREEZE) vm").await.unwrap();
        c.batch_execute("CHECKPOINT").await.unwrap();
        env.backup_push(&["--full"]);
        c.batch_execute(&format!("DELETE FROM vm WHERE id % 10 = {round}"))
            .await
            .unwrap();
        c.batch_execute("CHECKPOINT").await.unwrap();
        let push = ["backup-push", env.primary.data_dir.to_str().unwrap()];
        let out = match sabotage {
            Some(s) => env.pgdrill_env(&push, &[("PGDRILL_SABOTAGE", s)]),
            None => env.pgdrill(&push),
        };
        assert_success(&out, "backup-push of the delta");
        let delta = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(delta.contains("_D_"), "{delta}");
        switch_and_wait_archived(&env.primary).await;
        let r = env
            .restore(&format!("vm-{round}"), &delta, &["--recover"])
            .await;
        let check = pgdrill::verify::check_visibility(&r.connect().await.unwrap())
            .await
            .unwrap();
        verdicts.push(check);
    }
    verdicts.try_into().expect("two restores")
}

/// The drills' `visibility` check must be able to fail: on 15 a delta
/// with map pages picked by LSN restores a stale visibility map, and the
/// check names the table; the same steps with the fixed tool pass it.
#[tokio::test(flavor = "multi_thread")]
async fn visibility_check_catches_a_stale_visibility_map() {
    let verdicts = sabotaged_delta_visibility(15).await;
    assert!(verdicts[0].passed, "{:?}", verdicts[0]);
    assert!(!verdicts[1].passed, "the check sees the stale map");
    assert!(
        verdicts[1]
            .detail
            .contains("vm: an index-only scan of vm_pkey counts")
            && verdicts[1].detail.contains("pg_check_visible")
            && verdicts[1]
                .detail
                .contains("pages all-visible whose page header does not"),
        "{}",
        verdicts[1].detail
    );
}

/// Why the mutation suite calls `stale_visibility_map` equivalent on 18:
/// there a map page's LSN moves when a heap change clears its bits, so the
/// same steps restore a current map (if a release changes that, this fails
/// and the mutant must be run there again).
#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql_18_map_pages_picked_by_lsn_are_current() {
    let verdicts = sabotaged_delta_visibility(18).await;
    assert!(verdicts[0].passed, "{:?}", verdicts[0]);
    assert!(verdicts[1].passed, "{:?}", verdicts[1]);
    assert!(pgdrill::backup::sabotage::Sabotage::StaleVisibilityMap
        .harmless_on(18)
        .is_some());
}
