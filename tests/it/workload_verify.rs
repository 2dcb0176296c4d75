//! The workload and the verifier against a real PostgreSQL 15: a short
//! two-writer workload after a base backup, a point-in-time restore to a
//! quiet moment in its middle that must match the ledger exactly (and stop
//! matching once a row is deleted), a restore to the end of WAL, and writers
//! that outlive a killed primary.

use crate::common;

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use rand::SeedableRng;

use common::*;
use pgdrill::env::local::{InitOptions, LocalPostgres};
use pgdrill::env::zone::ServerZone;
use pgdrill::verify::{identity, identity_checks, verify_restore, CheckName};
use pgdrill::workload::{self, Mix, Outcome, WorkloadSpec, ITEMS, SWEEPER, TABLE};

/// Connection settings for database `db` of `pg`.
fn config(pg: &LocalPostgres, db: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(&pg.socket_dir)
        .port(pg.port)
        .user("postgres")
        .dbname(db);
    cfg
}

async fn connect(cfg: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A mixed workload: ledger rows plus item inserts, updates (HOT and not)
/// and deletes, VACUUM (FREEZE) every second, and DDL every 400 ms.
fn spec(duration: Duration) -> WorkloadSpec {
    WorkloadSpec {
        writers: 2,
        rate_per_second: 40,
        duration,
        payload_bytes: 64,
        seed: 42,
        mix: Some(Mix {
            updates: 30,
            deletes: 15,
            vacuum_freeze_every: Some(Duration::from_secs(1)),
            prefill: 500,
            ddl_every: Some(Duration::from_millis(400)),
            sweep_during_backups: true,
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_match_the_ledger_and_tampering_is_named() {
    let clock = Instant::now();
    let mut env = TestEnv::start("workload-verify", Storage::Dir, &[], InitOptions::default());
    let client = env.primary.connect().await.unwrap();
    workload::prepare(&client, &spec(Duration::ZERO))
        .await
        .unwrap();
    env.backup_push(&[]);

    let handle = workload::start(
        config(&env.primary, "postgres"),
        spec(Duration::from_secs(3)),
    )
    .unwrap();
    // The sweeper (writer 0) commits only while its guard lives, as a
    // backup's would.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sweep = handle.sweep();
    let swept_from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sweep);
    let swept_until = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert!(
        handle.vacuums() >= 1,
        "VACUUM (FREEZE) ran during the workload"
    );
    let ledger = handle.join().await;
    assert!(
        ledger.writer_errors().is_empty(),
        "{:?}",
        ledger.writer_errors()
    );
    let (swept, written): (Vec<_>, Vec<_>) =
        ledger.entries().iter().partition(|e| e.writer == SWEEPER);
    // 160/s for 0.5 s.
    assert!((40..=90).contains(&swept.len()), "{}", swept.len());
    assert!(
        swept
            .iter()
            .all(|e| swept_from <= e.sent_at && e.sent_at <= swept_until),
        "the sweeper wrote outside its window"
    );
    let acked = ledger.acked_count();
    assert!(
        (90..=125).contains(&written.len()),
        "40/s for 3 s sent {}",
        written.len()
    );
    assert_eq!(acked, ledger.entries().len() as u64);

    // A quiet moment in the middle second, so the expectation is exact.
    let middle = ledger.started_at() + TimeDelta::seconds(1);
    let target = ledger
        .pick_target(
            &mut rand::rngs::StdRng::seed_from_u64(7),
            middle,
            middle + TimeDelta::seconds(1),
        )
        .unwrap();
    let expectation = ledger.expected_at(target);
    assert!(expectation.exact, "{expectation:?}");
    switch_and_wait_archived(&env.primary).await;

    // (a) Point in time: exactly the rows acknowledged by the target.
    let pitr = env
        .restore(
            "pitr",
            "LATEST",
            &["--recovery-target-time", &ServerZone::utc().format(target)],
        )
        .await;
    let c = pitr.connect().await.unwrap();
    let v = verify_restore(&c, &ledger, Some(target)).await.unwrap();
    assert!(v.passed && v.exact, "{v}");
    assert!(v.rows > 0 && v.rows < acked, "{v}");
    assert!(v.check(CheckName::Items).unwrap().passed, "{v}");
    let last_commit = v.last_commit_time.expect("track_commit_timestamp is on");
    let last_acked = ledger.last_acked_before(target).unwrap();
    assert!(
        last_acked.sent_at <= last_commit && last_commit <= target,
        "{last_commit} vs {last_acked:?}"
    );
    let amcheck = pitr.amcheck().await.unwrap();
    assert!(amcheck.passed, "{amcheck:?}");

    // Tampering with an item (a lost update) is named by writer and id.
    let changed = c
        .execute(
            &format!("UPDATE {ITEMS} SET rev = rev - 1 WHERE (writer, id) = (SELECT writer, id FROM {ITEMS} WHERE rev > 1 LIMIT 1)"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1, "some item was updated by the target");
    let v = verify_restore(&c, &ledger, Some(target)).await.unwrap();
    let items = v.check(CheckName::Items).unwrap();
    assert!(!v.passed && !items.passed, "{v}");
    assert!(items.detail.contains("differs: rev"), "{}", items.detail);

    // The DDL objects: round 1's table and database exist by the target;
    // a table gone, rows in the unlogged table and a sequence set back are
    // each named.
    let ddl = ledger.ddl();
    assert!(ddl.error.is_none(), "{:?}", ddl.error);
    assert!(ddl.events.len() >= 8, "{:?}", ddl.events);
    for check in [
        CheckName::DdlObjects,
        CheckName::Sequence,
        CheckName::Unlogged,
    ] {
        assert!(v.check(check).unwrap().passed, "{v}");
    }
    c.batch_execute(
        "DROP TABLE pgdrill_ddl_t1; INSERT INTO pgdrill_unlogged VALUES (-1); SELECT setval('pgdrill_ddl_seq', 1, false)",
    )
    .await
    .unwrap();
    let v = verify_restore(&c, &ledger, Some(target)).await.unwrap();
    let detail = |name| v.check(name).unwrap().detail.clone();
    assert!(
        detail(CheckName::DdlObjects).contains("pgdrill_ddl_t1 is missing"),
        "{v}"
    );
    assert!(detail(CheckName::Unlogged).contains("holds 1 rows"), "{v}");
    assert!(
        detail(CheckName::Sequence).contains("went back to 0"),
        "{v}"
    );
    // A table that cannot be read fails its check, by name.
    c.batch_execute(&format!("ALTER TABLE {ITEMS} DROP COLUMN body"))
        .await
        .unwrap();
    let v = verify_restore(&c, &ledger, Some(target)).await.unwrap();
    let items = v.check(CheckName::Items).unwrap();
    assert!(
        !items.passed && items.detail.contains("cannot be read"),
        "{v}"
    );

    // A failed statement keeps the server's SQLSTATE, not only its text.
    let e = c
        .query_one("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    let e = pgdrill::backup::pg::PgError::new("reading no_such_table", &e);
    assert_eq!(e.code.as_deref(), Some("42P01"), "{e}");
    assert!(
        e.to_string().starts_with("reading no_such_table: relation"),
        "{e}"
    );

    // Tampering: one acknowledged row deleted is named by writer and seq.
    let seq = *expectation.per_writer[&2].start() / 2;
    let deleted = c
        .execute(
            &format!("DELETE FROM {TABLE} WHERE writer = 2 AND seq = $1"),
            &[&(seq as i64)],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let v = verify_restore(&c, &ledger, Some(target)).await.unwrap();
    assert!(!v.passed);
    assert_eq!(v.lost_acked, vec![(2, seq)]);
    assert!(!v.check(CheckName::ContentHash).unwrap().passed);
    let summary = v.summary();
    assert!(summary.contains(&format!("missing seq {seq}")), "{summary}");
    assert!(
        summary.contains(&format!("acknowledged but lost: writer 2 seq {seq}")),
        "{summary}"
    );
    drop(c);
    drop(pitr);

    // (b) End of WAL: every acknowledged row.
    let latest = env.restore("latest", "LATEST", &["--recover"]).await;
    let c = latest.connect().await.unwrap();
    let v = verify_restore(&c, &ledger, None).await.unwrap();
    assert!(v.passed && v.exact, "{v}");
    assert_eq!(v.rows, acked);
    // The source's cluster, promoted to timeline 2.
    let source = identity(&client).await.unwrap();
    let restored = identity(&c).await.unwrap();
    assert_eq!(restored.timeline, 2, "{restored:?}");
    for check in identity_checks(&source, &restored) {
        assert!(check.passed, "{check:?}");
    }
    // pg_checksums passes on the stopped restore, and names a block whose
    // bytes changed behind PostgreSQL's back.
    let file: String = c
        .query_one(&format!("SELECT pg_relation_filepath('{TABLE}')"), &[])
        .await
        .unwrap()
        .get(0);
    drop(c);
    let mut latest = latest;
    latest.stop("fast").unwrap();
    let checksums = latest.checksums().await.unwrap();
    assert!(checksums.passed, "{checksums:?}");
    let path = latest.data_dir.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let checksums = latest.checksums().await.unwrap();
    assert!(!checksums.passed, "{checksums:?}");
    assert!(checksums.detail.contains(&file), "{checksums:?}");
    drop(latest);

    // (c) The primary dies mid-workload: each writer ends with its commit
    // in flight unknown (or none in flight), and nothing panics.
    client.batch_execute("CREATE DATABASE crash").await.unwrap();
    let crash = config(&env.primary, "crash");
    workload::prepare(&connect(&crash).await, &spec(Duration::ZERO))
        .await
        .unwrap();
    let handle = workload::start(crash, spec(Duration::from_secs(30))).unwrap();
    while handle.rows_acked() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.primary.kill().unwrap();
    let ledger = tokio::time::timeout(Duration::from_secs(15), handle.join())
        .await
        .expect("writers end soon after the server dies");
    assert_eq!(
        ledger.writer_errors().len(),
        2,
        "{:?}",
        ledger.writer_errors()
    );
    for e in ledger.entries() {
        let last = ledger
            .entries()
            .iter()
            .rfind(|x| x.writer == e.writer)
            .unwrap();
        match &e.outcome {
            Outcome::Acked => {}
            Outcome::Unknown(_) | Outcome::Failed(_) => {
                assert_eq!(e.seq, last.seq, "only the last commit fails")
            }
        }
    }
    eprintln!("workload_verify took {:?}", clock.elapsed());
}
