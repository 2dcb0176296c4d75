//! Timelines: a point-in-time restore that promotes starts timeline 2 and
//! archives its `.history`; a second restore from the same base backup
//! follows timeline 2 (recovery_target_timeline = 'latest', the default)
//! to a target on it.

use crate::common;

use std::time::Duration;

use common::*;
use pgdrill::env::local::InitOptions;

async fn insert(client: &tokio_postgres::Client, batch: &str, n: i64) {
    client
        .execute(
            "INSERT INTO t(batch) SELECT $1 FROM generate_series(1, $2::bigint)",
            &[&batch, &n],
        )
        .await
        .unwrap();
}

async fn now_target(client: &tokio_postgres::Client) -> String {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t: String = client
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    t
}

async fn batches(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    client
        .query(
            "SELECT batch, count(*) FROM t GROUP BY batch ORDER BY batch",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn second_pitr_follows_the_new_timeline() {
    let env = TestEnv::start("timelines", Storage::S3, &[], InitOptions::default());
    let primary = env.primary.connect().await.unwrap();
    primary
        .batch_execute("CREATE TABLE t(id bigserial, batch text)")
        .await
        .unwrap();
    let backup = env.backup_push(&[]);

    insert(&primary, "a", 10).await;
    let t1 = now_target(&primary).await;
    insert(&primary, "b", 20).await;
    switch_and_wait_archived(&env.primary).await;

    // First PITR, archiving on: it promotes to timeline 2.
    let r1 = env
        .restore_with("r1", &backup, &["--recovery-target-time", &t1], true)
        .await;
    let c1 = r1.connect().await.unwrap();
    let tli: i32 = c1
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tli, 2, "promotion starts timeline 2");
    assert_eq!(batches(&c1).await, [("a".to_string(), 10)]);
    insert(&c1, "c", 30).await;
    let t2 = now_target(&c1).await;
    insert(&c1, "d", 40).await;
    switch_and_wait_archived(&r1).await;

    // The new timeline's history is archived and is never overwritten.
    let history = env.dir("scratch").join("00000002.history");
    assert_success(
        &env.pgdrill(&["wal-fetch", "00000002.history", history.to_str().unwrap()]),
        "wal-fetch of the .history file",
    );
    let text = std::fs::read_to_string(&history).unwrap();
    assert!(text.starts_with("1\t"), "history names its parent: {text}");
    std::fs::write(&history, "1\t0/FFFFFFFF\tforged\n").unwrap();
    let out = env.pgdrill(&["wal-push", history.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a different .history must not overwrite the archived one"
    );

    // Second PITR from the same base backup, to a time on timeline 2.
    let r2 = env
        .restore("r2", &backup, &["--recovery-target-time", &t2])
        .await;
    let c2 = r2.connect().await.unwrap();
    assert_eq!(
        batches(&c2).await,
        [("a".to_string(), 10), ("c".to_string(), 30)],
        "rows of timeline 1 before the switch and of timeline 2 before the target"
    );
    let tli: i32 = c2
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tli, 3, "promoting the second restore starts timeline 3");
}

/// A server promoted by a point-in-time restore keeps that restore's
/// recovery settings in postgresql.auto.conf (PostgreSQL ignores them once
/// promoted), and its base backups carry them: a later restore must
/// recover to what it is asked, not to the old target. Here the carried
/// target lies before the backup (the restore used to fail: "requested
/// recovery stop point is before consistent recovery point"), and a carried
/// `recovery_target_xid` would clash with a new target time ("multiple
/// recovery targets specified").
#[tokio::test]
async fn recovery_settings_carried_in_a_backup_do_not_steer_its_restore() {
    let env = TestEnv::start("carried-target", Storage::Dir, &[], InitOptions::default());
    let client = env.primary.connect().await.unwrap();
    for sql in [
        "ALTER SYSTEM SET recovery_target_time = '2001-01-01 00:00:00+00'",
        "ALTER SYSTEM SET recovery_target_action = 'shutdown'",
        "ALTER SYSTEM SET recovery_target_xid = '3'",
        "CREATE TABLE t(id bigserial PRIMARY KEY, batch text)",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let backup = env.backup_push(&[]);
    insert(&client, "a", 100).await;
    let target = now_target(&client).await;
    insert(&client, "b", 10).await;
    switch_and_wait_archived(&env.primary).await;
    let latest = env.restore("latest", &backup, &["--recover"]).await;
    assert_eq!(rows(&latest).await, 110, "the end of the archive");
    drop(latest);
    let pitr = env
        .restore("pitr", &backup, &["--recovery-target-time", &target])
        .await;
    assert_eq!(rows(&pitr).await, 100, "the point in time asked for");
}

/// Recovery settings carried in `postgresql.conf` and the files it
/// includes, in any spelling PostgreSQL accepts (`key value` without `=`,
/// mixed case, `key=value`, quotes), steer a restore exactly as those in
/// `postgresql.auto.conf` would: after a point-in-time restore done by hand
/// as PostgreSQL's documentation shows, the target stays in
/// `postgresql.conf`, the promoted primary ignores it, and every later
/// base backup carries it. Here the carried target lies between the backup
/// and the last commits (the restore used to stop there silently, with
/// rows missing), the carried `recovery_target_action` sits in an
/// `include`d file, a carried `recovery_target_timeline = 'current'` in an
/// `include_dir` directory, and `recovery_target_inclusive = off` behind a
/// quoted `include_if_exists`.
#[tokio::test]
async fn recovery_settings_carried_in_postgresql_conf_and_its_includes_do_not_steer_a_restore() {
    let env = TestEnv::start("carried-conf", Storage::Dir, &[], InitOptions::default());
    let client = env.primary.connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE t(id bigserial PRIMARY KEY, batch text)")
        .await
        .unwrap();
    // Written without a reload: the running primary never reads them, as a
    // promoted primary ignores them; its base backups carry them.
    let carried_target: String = client
        .query_one(
            "SELECT to_char((clock_timestamp() + interval '8 seconds') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let data = &env.primary.data_dir;
    let write = |name: &str, text: &str| {
        let path = data.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let mut old = std::fs::read_to_string(&path).unwrap_or_default();
        old.push_str(text);
        std::fs::write(&path, old).unwrap();
    };
    write(
        "postgresql.conf",
        &format!(
            "\nRecovery_Target_Time '{carried_target}'   # left by a PITR done by hand\ninclude 'pitr.conf'\ninclude_dir 'conf.d'\ninclude_if_exists = 'extra/more.conf'\n"
        ),
    );
    write("pitr.conf", "RECOVERY_TARGET_ACTION=promote\n");
    write(
        "conf.d/10-recovery.conf",
        "recovery_target_timeline = current\n",
    );
    write("extra/more.conf", "recovery_target_inclusive='off'\n");
    let backup = env.backup_push(&[]);
    insert(&client, "a", 100).await;
    while count(
        &client,
        &format!("SELECT (clock_timestamp() > '{carried_target}')::int::bigint"),
    )
    .await
        == 0
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let target = now_target(&client).await;
    insert(&client, "b", 10).await;
    switch_and_wait_archived(&env.primary).await;

    let latest = env.restore("latest", &backup, &["--recover"]).await;
    assert_eq!(
        rows(&latest).await,
        110,
        "the end of the archive, not the target carried in postgresql.conf"
    );
    drop(latest);
    let pitr = env
        .restore("pitr", &backup, &["--recovery-target-time", &target])
        .await;
    assert_eq!(rows(&pitr).await, 100, "the point in time asked for");

    // Without --recover the operator sets recovery up by hand: the tool
    // names every carried setting that would steer it, with its file and line.
    let out = env.pgdrill(&[
        "backup-fetch",
        env.dir("by-hand").join("data").to_str().unwrap(),
        &backup,
    ]);
    assert_success(&out, "backup-fetch without recovery settings");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    for expected in [
        "postgresql.conf:",
        "Recovery_Target_Time",
        "pitr.conf:1",
        "conf.d/10-recovery.conf:1",
        "extra/more.conf:1",
    ] {
        assert!(said.contains(expected), "{expected:?} named in:\n{said}");
    }
}

async fn rows(pg: &pgdrill::env::local::LocalPostgres) -> i64 {
    let c = pg.connect().await.unwrap();
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}
