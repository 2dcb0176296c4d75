//! A drill report for the report formats' tests: one restore verified,
//! one failed with a server log's characters in its error, one that had to
//! fail and passed, a met and a missed objective, and a failure of the
//! drill itself.

use super::{
    DrillReport, Expected, MustFail, ObjectiveResult, RestoreFaultRecord, RestoreRecord,
    RtoBreakdown,
};

fn restore(label: &str, as_expected: bool, error: Option<&str>) -> RestoreRecord {
    RestoreRecord {
        label: label.into(),
        kind: "pitr".into(),
        target: Some("2026-12-02T01:02:03Z".parse().unwrap()),
        target_as_given: Some("2026-12-02 06:32:03.000000+05:30".into()),
        backup: "base_000000010000000000000004".into(),
        expected: Expected::Pass,
        expected_because: None,
        passed: as_expected,
        as_expected,
        error: error.map(str::to_string),
        failure: None,
        verify: None,
        rto: RtoBreakdown {
            total_s: 4.5,
            ..RtoBreakdown::default()
        },
        storage_fault: None,
    }
}

pub fn report() -> DrillReport {
    let mut hole = restore("pitr-2", false, None);
    hole.expected = Expected::Fail;
    hole.expected_because = Some(MustFail::NeedsDeletedSegment(
        "000000010000000000000010".into(),
    ));
    hole.passed = true;
    // Restored under a storage fault: the first attempt failed loudly,
    // the retry passed.
    let mut latest = restore("latest", true, None);
    latest.storage_fault = Some(RestoreFaultRecord {
        injected:
            "storage answering every request 503 for 8s, as the restored server became consistent"
                .into(),
        first_attempt_error: Some(
            "restore_command exited with code 200, which aborts recovery".into(),
        ),
    });
    DrillReport {
        pgdrill_version: "0.1.0".into(),
        scenario: "quick".into(),
        scenario_file: "scenarios/quick.yaml".into(),
        description: String::new(),
        seed: 42,
        environment: "local".into(),
        engine: "pgdrill".into(),
        sabotage: None,
        encryption: "none".into(),
        storage_format: "pgdrill".into(),
        postgres_version: "15.18".into(),
        started_at: "2026-12-02T01:00:00Z".parse().unwrap(),
        finished_at: "2026-12-02T01:01:30Z".parse().unwrap(),
        passed: false,
        failures: vec![
            "restore pitr-1 (target x): row_count".into(),
            "wal-fetch did not refuse the corrupted segment 0000000100000000000000AB as corrupt"
                .into(),
        ],
        workload: None,
        steps: Vec::new(),
        backups: Vec::new(),
        wal_archived: None,
        wal_gaps: Vec::new(),
        disaster: None,
        restores: vec![
            latest,
            // A server log in the message: markup and a control character.
            restore(
                "pitr-1",
                false,
                Some("FATAL:  <bad> & \u{1}\"quoted\"\nsecond line"),
            ),
            hole,
        ],
        objectives: vec![
            ObjectiveResult {
                name: "rpo".into(),
                limit_s: 5.0,
                measured_s: Some(1.0),
                passed: true,
            },
            ObjectiveResult {
                name: "rto".into(),
                limit_s: 5.0,
                measured_s: Some(9.0),
                passed: false,
            },
        ],
        series: None,
        images: Vec::new(),
        docker_version: None,
        conditions: super::ConditionsRecord {
            timezone: "Asia/Kolkata".into(),
            timezone_drawn: true,
            start_segment: "0000000100000000000000FE".into(),
            start_segment_drawn: false,
            leftover_recovery_settings: true,
            leftover_recovery_settings_drawn: true,
            restores_in_place: true,
            restores_in_place_drawn: true,
            seed_commands: false,
            chaos: None,
        },
    }
}
