//! A drill is only worth running if it can fail: the same drill against a
//! deliberately broken backup tool must report the failure.

use std::path::{Path, PathBuf};

use pgdrill::drill::{self, RunOptions};
use pgdrill::report::Expected;
use pgdrill::scenario::Scenario;

/// A drill whose backup tool has `sabotage` every `n`th WAL segment.
fn scenario(sabotage: &str, n: u32) -> Scenario {
    let text = format!(
        r#"
name: sabotaged
description: archive with a broken backup tool; restores must notice
environment: local
engine: pgdrill-sabotaged
sabotage: {{ {sabotage}: {n} }}
seed: 7
postgres:
  version: 15
  settings: {{ archive_timeout: 1s }}
storage: {{ bucket: drill, compression: lz4 }}
workload: {{ writers: 2, rate_per_second: 40, duration: 8s }}
steps:
  - {{ at: 0s, action: base_backup }}
restores:
  latest: true
verify: [row_count, content_hash]
"#
    );
    Scenario::from_str(&text, "sabotage.yaml").expect("valid scenario")
}

async fn run(s: &Scenario) -> pgdrill::report::DrillReport {
    let opts = RunOptions {
        seed: None,
        report_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-reports"),
        keep: false,
        quiet: true,
        pgdrill: PathBuf::from(env!("CARGO_BIN_EXE_pgdrill")),
        tag: None,
    };
    drill::run(s, Path::new("sabotage.yaml"), &opts)
        .await
        .expect("drill runs")
        .report
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_wal_segments_fail_the_drill() {
    // Every fifth: not a segment the base backup itself needs (its archive
    // check would refuse the backup), but ones the latest restore needs.
    let report = run(&scenario("drop_every_nth_wal", 5)).await;
    assert!(!report.passed, "a tool that drops WAL must fail the drill");
    let latest = report
        .restores
        .iter()
        .find(|r| r.label == "latest")
        .expect("latest restore");
    assert!(!latest.passed, "{:?}", latest);
    assert!(
        latest.expected == Expected::Pass && !latest.as_expected,
        "an archive without a deleted segment must restore: {latest:?}"
    );
    assert!(
        report.failures.iter().any(|f| f.contains("restore latest")),
        "{:?}",
        report.failures
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_wal_segments_fail_the_drill() {
    let report = run(&scenario("corrupt_every_nth_wal", 2)).await;
    assert!(
        !report.passed,
        "a tool that corrupts WAL must fail the drill"
    );
    assert!(
        report.restores.iter().any(|r| !r.passed),
        "{:?}",
        report.restores
    );
}

/// The defect of issue 9.1 put back (delta backups pick visibility-map
/// pages by LSN): the map is set by a VACUUM before the second backup and
/// not touched by one again, so the later deltas skip it while the
/// writers' updates and deletes clear its bits; the chain restores a stale
/// map (the writers pause around the last backup, so no replayed change
/// fixes it), and the drill's `visibility` check must fail it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_visibility_map_fails_the_delta_drill() {
    stale_visibility_map_drill("pgdrill").await;
}

/// The same defect in WAL-G's storage format (its increments carry the
/// stale map pages; restores go through the WAL-G-format reader): the
/// drill in that format sees it too.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_visibility_map_fails_the_walg_format_delta_drill() {
    stale_visibility_map_drill("walg").await;
}

async fn stale_visibility_map_drill(format: &str) {
    let text = format!(
        r#"
name: stale-visibility-map
description: delta backups that keep stale visibility maps; restores must notice
environment: local
engine: pgdrill-sabotaged
sabotage: stale_visibility_map
seed: 11
postgres:
  version: 15
  settings: {{ archive_timeout: 1s, track_commit_timestamp: "on" }}
storage: {{ bucket: drill, delta_max_steps: 3, format: {format} }}
workload:
  writers: 2
  rate_per_second: 60
  duration: 20s
  mix: {{ updates: 30, deletes: 20 }}
steps:
  - {{ at: 0s, action: base_backup }}
  - {{ at: 3s, action: vacuum_freeze }}
  - {{ at: 5s, action: base_backup }}
  - {{ at: 10s, action: base_backup }}
  - {{ at: 14s, action: pause, duration: 6s }}
  - {{ at: 15s, action: base_backup }}
restores:
  latest: true
verify: [row_count, content_hash, visibility]
"#
    );
    let s = Scenario::from_str(&text, "stale-visibility-map.yaml").expect("valid scenario");
    let report = run(&s).await;
    assert_eq!(report.storage_format, format);
    assert!(!report.passed, "a stale visibility map must fail the drill");
    let latest = report
        .restores
        .iter()
        .find(|r| r.label == "latest")
        .expect("latest restore");
    let error = latest.error.clone().unwrap_or_default();
    assert!(
        !latest.passed && error.contains("visibility"),
        "the visibility check names it: {latest:?}"
    );
    let rows = latest.verify.as_ref().expect("verified");
    assert!(
        rows.check(pgdrill::verify::CheckName::RowCount)
            .unwrap()
            .passed,
        "the ledger's sequential reads cannot see it; only the visibility check does"
    );
}

/// The mutation suite's command, on one mutant and one short scenario:
/// recovery that stops two seconds after its target must be caught by the
/// ledger's checks, the table must say so, and the command exits 0.
#[test]
fn the_mutants_command_kills_a_late_recovery_target() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutants-command");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pitr.yaml");
    std::fs::write(
        &file,
        r#"name: pitr
description: two random point-in-time restores
environment: local
seed: 11
postgres:
  version: 15
  settings: { archive_timeout: 1s, track_commit_timestamp: "on" }
storage: { bucket: drill, compression: lz4 }
workload: { writers: 2, rate_per_second: 40, duration: 10s }
steps:
  - { at: 0s, action: base_backup }
restores:
  random_targets: 2
verify: [row_count, content_hash]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgdrill"))
        .args(["mutants", "--quiet", "--mutant", "late_recovery_target"])
        .arg("--report-dir")
        .arg(dir.join("reports"))
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# Mutation suite: 1 of 1 mutants killed"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| `late_recovery_target`"))
        .expect("a row for the mutant");
    assert!(
        row.contains("| killed |") && row.contains("row_count"),
        "{row}"
    );
}
