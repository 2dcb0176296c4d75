//! wal-fetch prefetch: the next segments appear, verified, in
//! pg_wal/.pgdrill/prefetch; a prefetched segment is served by rename; an
//! unfinished (claimed) file is never served.

use crate::common;

use std::time::{Duration, SystemTime};

use common::*;
use pgdrill::env::local::InitOptions;

#[tokio::test(flavor = "multi_thread")]
async fn prefetched_segments_are_complete_and_served() {
    let env = TestEnv::start(
        "prefetch",
        Storage::S3,
        &[("WALG_PREFETCH", "3")],
        InitOptions::default(),
    );
    let mut segments = Vec::new();
    for _ in 0..5 {
        segments.push(switch_and_wait_archived(&env.primary).await);
    }
    let pg_wal = env.dir("restore/pg_wal");
    let dest = pg_wal.join("RECOVERYXLOG");
    let prefetch = pg_wal.join(".pgdrill/prefetch");

    assert_success(
        &env.pgdrill(&["wal-fetch", &segments[0], dest.to_str().unwrap()]),
        "wal-fetch",
    );
    // The segments right after segments[0] (consecutive names) are fetched ahead.
    let first = segments[0].clone();
    let next_names: Vec<String> = (1..=3u64)
        .map(|i| {
            let n = u64::from_str_radix(&first[16..], 16).unwrap() + i;
            format!("{}{:08X}", &first[..16], n)
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !next_names.iter().all(|n| prefetch.join(n).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not complete: {next_names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Served from the prefetch directory (moved, not copied), identical
    // to a direct download.
    let direct_dir = env.dir("direct/pg_wal");
    let direct = direct_dir.join("RECOVERYXLOG");
    let out = env.pgdrill_with_vars(
        &[
            env.archive.storage_vars.clone(),
            vec![("WALG_PREFETCH".into(), "0".into())],
        ]
        .concat(),
        &["wal-fetch", &next_names[0], direct.to_str().unwrap()],
    );
    assert_success(&out, "direct wal-fetch");
    assert_success(
        &env.pgdrill(&["wal-fetch", &next_names[0], dest.to_str().unwrap()]),
        "wal-fetch",
    );
    assert!(!prefetch.join(&next_names[0]).exists(), "served by rename");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&direct).unwrap()
    );

    // A stale claim with half-written content is never served.
    let victim = &next_names[2];
    let _ = std::fs::remove_file(prefetch.join(victim));
    let claim = prefetch.join("running").join(victim);
    std::fs::write(&claim, b"half-written").unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&claim)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_success(
        &env.pgdrill(&["wal-fetch", victim, dest.to_str().unwrap()]),
        "wal-fetch",
    );
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(
        got.len(),
        16 << 20,
        "a whole segment, not the claim's content"
    );
}
