//! `pgdrill run` and `pgdrill report` as a CI job uses them: drills side by
//! side with their reports (HTML included), skipped environments, trends
//! that flag regressions, and the workflows' calls into `ci/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pgdrill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgdrill"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("pgdrill runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small drill: one writer, a backup, one random restore and the latest.
const SMALL: &str = "name: small
description: a small drill for the soak test
environment: local
postgres:
  version: 15
  settings: { archive_timeout: 1s, track_commit_timestamp: \"on\" }
storage: { bucket: drill }
workload: { writers: 1, rate_per_second: 20, duration: 6s }
steps:
  - { at: 0s, action: base_backup }
restores: { random_targets: 1, latest: true }
verify: [row_count]
";

/// Report directories (those with a report.json) under `dir`.
fn report_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("report.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_soak_runs_drills_side_by_side_each_with_its_own_report() {
    let work = tempfile::tempdir().unwrap();
    let scenario = work.path().join("small.yaml");
    std::fs::write(&scenario, SMALL).unwrap();
    let reports = work.path().join("reports");
    let junit = work.path().join("junit.xml");
    let out = pgdrill(&[
        "run",
        scenario.to_str().unwrap(),
        "--seeds",
        "7..9",
        "--parallel",
        "2",
        "--quiet",
        "--report-dir",
        reports.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let dirs = report_dirs(&reports);
    assert_eq!(
        dirs.len(),
        2,
        "a directory per drill, even in the same second: {dirs:?}"
    );
    let mut seeds = Vec::new();
    for d in &dirs {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
        seeds.push(json["seed"].as_u64().unwrap());
        let series = &json["series"];
        let acked: u64 = series["acked_per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(
            acked,
            json["workload"]["acked"].as_u64().unwrap(),
            "every acknowledged commit is charted"
        );
        assert!(
            series["wal_archived"].as_array().unwrap().len() >= 3,
            "the archiver is sampled every second: {series}"
        );
        let html = std::fs::read_to_string(d.join("report.html")).unwrap();
        assert!(
            html.contains("data-restore=\"latest\"") && html.contains("data-restore=\"pitr-1\"")
        );
        assert!(html.contains("acknowledged commits per second"));
    }
    seeds.sort();
    assert_eq!(seeds, [7, 8]);
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(junit.matches("<testsuite ").count(), 2, "{junit}");
    let summary = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-soak"))
        .expect("a soak summary directory");
    let md = std::fs::read_to_string(summary.join("summary.md")).unwrap();
    assert!(md.contains("| small | 2 | 2 | 0 |"), "{md}");
}

#[test]
fn bad_seed_ranges_are_refused_with_the_form_to_use() {
    for bad in ["9..7", "7", "a..b", "7..7"] {
        let out = pgdrill(&["run", "scenarios/quick.yaml", "--seeds", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains("write A..B with whole numbers A < B"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = pgdrill(&[
        "run",
        "scenarios/quick.yaml",
        "--seeds",
        "1..3",
        "--repeat",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_drill_whose_environment_is_absent_is_skipped_with_exit_3() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kind = pgdrill::scenario::Scenario::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/kind-kill.yaml"
    )))
    .unwrap();
    if runtime.block_on(pgdrill::env::availability(&kind)).is_ok() {
        eprintln!("a Kubernetes API server answers here: nothing is skipped, nothing to check");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let junit = work.path().join("junit.xml");
    let out = pgdrill(&[
        "run",
        "scenarios/kind-kill.yaml",
        "--quiet",
        "--report-dir",
        work.path().to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "SKIPPED kind-kill (scenarios/kind-kill.yaml): environment kind is not available here"
        ),
        "{}",
        text(&out.stderr)
    );
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        junit.contains("<skipped message=\"environment kind is not available here"),
        "{junit}"
    );
}

/// A report.json as an old pgdrill wrote it: only the fields a trend needs.
fn old_report(dir: &Path, day: u32, rto_s: f64, passed: bool) {
    let d = dir.join(format!("2026120{day}T020000Z-quick"));
    std::fs::create_dir_all(&d).unwrap();
    let json = serde_json::json!({
        "scenario": "quick",
        "seed": day,
        "started_at": format!("2026-12-0{day}T02:00:00Z"),
        "passed": passed,
        "restores": [{ "backup": "base_1", "expected": "pass", "rto": { "fetch_s": 1.0, "total_s": rto_s } }],
    });
    std::fs::write(d.join("report.json"), json.to_string()).unwrap();
}

#[test]
fn a_trend_flags_a_slower_night_and_fails_only_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let nights = work.path().join("nights");
    for day in 1..=4 {
        old_report(&nights, day, 3.0, true);
    }
    old_report(&nights, 5, 12.0, true);
    let out_dir = work.path().join("trend");
    let args = |fail: bool| {
        let mut a = vec![
            "report".to_string(),
            "trend".into(),
            nights.display().to_string(),
            "--out".into(),
            out_dir.display().to_string(),
        ];
        if fail {
            a.push("--fail-on-regression".into());
        }
        a
    };
    let run = |a: Vec<String>| pgdrill(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args(false));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("rto_s: 12.00 s against a baseline of 3.00 s"),
        "{}",
        text(&out.stdout)
    );
    for f in ["trend.md", "trend.html", "trend.json"] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
    assert_eq!(run(args(true)).status.code(), Some(1));
    // The same RTO as before: nothing to flag.
    old_report(&nights, 6, 3.0, true);
    assert_eq!(run(args(true)).status.code(), Some(0));
    // Nothing to read: a clear error.
    let empty = tempfile::tempdir().unwrap();
    let out = pgdrill(&[
        "report",
        "trend",
        empty.path().to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no report.json under"),
        "{}",
        text(&out.stderr)
    );
}

/// The `bash ci/...` commands of the workflows' `run` steps.
fn workflow_calls() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows");
    let mut calls = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value =
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for job in doc["jobs"].as_object().expect("jobs").values() {
            for step in job["steps"].as_array().expect("steps") {
                let Some(run) = step["run"].as_str() else {
                    continue;
                };
                for line in run.lines() {
                    if let Some(call) = line.trim().strip_prefix("bash ci/") {
                        let name = path.file_name().unwrap().to_string_lossy().into_owned();
                        calls.push((name, format!("ci/{call}")));
                    }
                }
            }
        }
    }
    calls.sort();
    calls
}

#[test]
fn the_workflows_call_ci_scripts_that_exist_and_parse() {
    let calls = workflow_calls();
    let scripts: Vec<&str> = calls.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        scripts,
        [
            "ci/drills nightly",
            "ci/fuzz",
            "ci/kind-up",
            "ci/drills release",
            "ci/kind-up",
            "ci/test",
            "ci/test"
        ],
        "{calls:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (workflow, call) in &calls {
        let script = call.split_whitespace().next().unwrap();
        let out = Command::new("bash")
            .arg("-n")
            .arg(root.join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{workflow}: {script}: {}",
            text(&out.stderr)
        );
    }
    let out = Command::new("bash")
        .arg(root.join("ci/drills"))
        .arg("weekly")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: ci/drills nightly|release"));
    let run = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(run.trim_end().ends_with("exec bash ci/test"), "{run}");
}
