//! Operations a cron schedule overlaps in real life, each with its stated
//! outcome: two `backup-push` runs at once both end with a backup of their
//! own, under names of their own, that verify and restore; of servers
//! racing to archive different content under one name exactly one wins and
//! the others fail; nothing listed that cannot restore.

use crate::common;

use std::process::Output;

use common::*;
use pgdrill::env::local::InitOptions;

/// Two `backup-push` runs started together begin in one WAL segment, and
/// a name derived from it (`base_<segment>`) used to be shared: both
/// uploaded to the same keys and both exited 0. Exactly one run may own a
/// name; the other takes the next segment's.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_backup_pushes_each_own_a_backup() {
    let env = TestEnv::start("overlap", Storage::S3, &[], InitOptions::default());
    let client = env.primary.connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 50000) g")
        .await
        .unwrap();
    switch_and_wait_archived(&env.primary).await;
    let data = env.primary.data_dir.to_str().unwrap().to_string();
    let runs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| env.pgdrill(&["backup-push", &data])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut names = Vec::new();
    for out in &runs {
        assert_success(out, "an overlapping backup-push");
        names.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    assert_ne!(
        names[0],
        names[1],
        "each run owns its name:\n{}\n{}",
        stderr(&runs[0]),
        stderr(&runs[1])
    );
    for name in &names {
        assert_success(&env.pgdrill(&["backup-verify", name]), "backup-verify");
    }
    let list = env.pgdrill(&["backup-list", "--json"]);
    assert_success(&list, "backup-list");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for name in &names {
        let restored = env
            .restore(&format!("r-{name}"), name, &["--recover"])
            .await;
        let c = restored.connect().await.unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM t").await, 50000);
    }
}

/// Two servers promoted at once both archive a `.history` file of the
/// same new timeline, with different content: "look, then write" let both
/// exit 0 and one file replaced the other. Exactly one may be stored; the
/// others fail and the stored file is the winner's, whole.
#[tokio::test(flavor = "multi_thread")]
async fn racing_history_files_store_exactly_one() {
    for storage in [Storage::S3, Storage::Dir] {
        let env = TestEnv::start("history-race", storage, &[], InitOptions::default());
        for timeline in 2..6u32 {
            let name = format!("{timeline:08X}.history");
            let files: Vec<std::path::PathBuf> = (0..6)
                .map(|writer| {
                    let path = env.dir(&format!("w{timeline}-{writer}")).join(&name);
                    std::fs::write(&path, format!("1\t0/{writer:X}000000\tserver {writer}\n"))
                        .unwrap();
                    path
                })
                .collect();
            let outs: Vec<Output> = std::thread::scope(|s| {
                let handles: Vec<_> = files
                    .iter()
                    .map(|f| s.spawn(|| env.pgdrill(&["wal-push", f.to_str().unwrap()])))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<usize> = outs
                .iter()
                .enumerate()
                .filter(|(_, o)| o.status.success())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                winners.len(),
                1,
                "{name}: exactly one push wins: {winners:?}"
            );
            for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
                assert!(
                    stderr(out).contains("different content"),
                    "{name} writer {i}: {}",
                    stderr(out)
                );
            }
            let fetched = env.dir(&format!("fetched-{timeline}")).join(&name);
            assert_success(
                &env.pgdrill(&["wal-fetch", &name, fetched.to_str().unwrap()]),
                "wal-fetch of the history file",
            );
            assert_eq!(
                std::fs::read(&fetched).unwrap(),
                std::fs::read(&files[winners[0]]).unwrap(),
                "the winner's file, whole"
            );
        }
    }
}
