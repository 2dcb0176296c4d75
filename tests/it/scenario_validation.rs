//! Every shipped scenario loads; every bad fixture fails with its own
//! located, hinted message.

use std::path::{Path, PathBuf};

use pgdrill::scenario::{discover, Scenario, ScenarioError};

fn dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

#[test]
fn every_shipped_scenario_loads() {
    let files = discover(&dir("scenarios")).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap())
        .collect();
    for expected in [
        "delta-chain",
        "disaster-kill",
        "encrypted-pgp",
        "pitr-many",
        "quick",
        "retention",
        "retention-full",
        "timeline-switch",
        "wal-gap",
    ] {
        assert!(
            names.contains(&expected),
            "scenarios/{expected}.yaml missing: {names:?}"
        );
    }
    for (file, stem) in files.iter().zip(&names) {
        let scenario = Scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scenario.name, *stem, "a scenario is named like its file");
    }
    // The chaos drills, which nightly runs (not a per-change trial each).
    let chaos = discover(&dir("scenarios/chaos")).unwrap();
    assert_eq!(chaos.len(), 2, "{chaos:?}");
    for file in &chaos {
        let scenario = Scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(scenario.chaos, "{}", file.display());
        assert_eq!(
            scenario.name,
            file.file_stem().unwrap().to_str().unwrap(),
            "a scenario is named like its file"
        );
    }
}

/// (fixture, `line:column`, message, hint) — the whole first line after the
/// file name, and a word of the hint.
const BAD: &[(&str, &str, &str, &str)] = &[
    ("bad-bucket", "5:11", "storage.bucket: invalid bucket name `Drill_Backups`: it may only contain lowercase letters, digits, `-` and `.`", "S3 bucket names"),
    ("bad-ddl-with-failover", "8:47", "workload.mix.ddl_every: ddl_every cannot be combined with a pitr_failover step yet", "without a pitr_failover"),
    ("bad-duration", "7:13", "workload.duration: invalid duration `20 sex`: unknown time unit \"sex\"", "`1m 30s`"),
    ("bad-encryption-key-missing", "8:24", "storage.encryption.pgp.passphrase_path: cannot read `../keys/no-such-passphrase` (", "relative to the scenario file's directory"),
    ("bad-environment", "2:14", "environment: unknown variant `vm`, expected one of local, containers, kind", "values listed"),
    ("bad-failover-before-backup", "9:5", "steps[0]: `pitr_failover` at 5s needs a base_backup step before it", "add a `base_backup` step"),
    ("bad-images-local", "9:3", "images: `images` apply to `environment: containers` and `kind` only", "environment: containers"),
    ("bad-local-fault", "11:23", "steps[1].action: `network_latency` is only available in environment `containers`, not `local`", "environment: containers"),
    ("bad-missing-field", "5:3", "workload: missing field `rate_per_second`", "add the key"),
    ("bad-restore-without-backup", "11:3", "restores: restores need at least one base_backup step", "action: base_backup"),
    ("bad-step-after-end", "10:11", "steps[1].at: `base_backup` at 25s is after the workload ends at 20s", "only `disaster`"),
    ("bad-steps-out-of-order", "10:9", "steps[1].at: `switch_wal` at 5s comes before the previous step at 10s", "time order"),
    ("bad-unknown-key", "7:3", "workload.writerz: unknown field `writerz`, expected one of writers, rate_per_second, duration, payload_bytes, mix", "spelling"),
    ("bad-wrong-type", "5:12", "workload.writers: invalid u32", "whole number"),
    ("bad-yaml-syntax", "9:9", "verify: illegal placement of ':' indicator", "YAML syntax"),
];

#[test]
fn every_bad_fixture_fails_with_its_message() {
    let fixtures = discover(&dir("fixtures/scenarios")).unwrap();
    let stems: Vec<_> = fixtures
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap())
        .collect();
    let listed: Vec<_> = BAD.iter().map(|(name, ..)| *name).collect();
    let bad: Vec<_> = stems
        .iter()
        .copied()
        .filter(|s| s.starts_with("bad-"))
        .collect();
    assert_eq!(
        bad, listed,
        "every fixtures/scenarios/bad-*.yaml needs a row in BAD, in name order"
    );

    for (name, position, message, hint) in BAD {
        let file = dir(&format!("fixtures/scenarios/{name}.yaml"));
        let err = Scenario::load(&file).expect_err(name);
        assert!(
            matches!(err, ScenarioError::Invalid { .. }),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        let expected = format!("{}:{position}: {message}", file.display());
        assert!(
            text.starts_with(&expected),
            "{name}:\n  got: {text}\n want: {expected}"
        );
        let hint_line = text.lines().nth(1).unwrap_or_default();
        assert!(
            hint_line.starts_with("  hint: ") && hint_line.contains(hint),
            "{name}: {text}"
        );
    }
}

/// An error's cause is printed once: `cannot read X: No such file`, not the
/// cause again after it (anyhow's `{:#}` repeats causes that messages name).
#[test]
fn a_missing_scenario_file_is_named_with_its_cause_once() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgdrill"))
        .args(["run", "/nonexistent/drill.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/drill.yaml"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
