//! `pgdrill bench verify`: what each group of checks costs per restore.
//!
//! Runs the drill of `--scenario` `--repeat` times (new seeds), reads the
//! seconds every restore's checks took (`verify.cost_s` in report.json,
//! measured around each group in the drill) and reports, per group, the
//! median and the largest cost per restore next to the restore's whole
//! RTO, so the price of each check is a figure and not a guess.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::BenchArgs;
use crate::drill::{self, RunOptions};
use crate::report::RestoreRecord;
use crate::scenario::Scenario;
use crate::verify::CostGroup;

/// One group's cost over every restore measured.
#[derive(Debug, Clone, Serialize)]
pub struct GroupCost {
    pub group: CostGroup,
    /// Restores in which it ran.
    pub restores: usize,
    pub median_s: f64,
    pub max_s: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyBench {
    pub started_at: DateTime<Utc>,
    pub scenario: String,
    pub drills: u32,
    pub seeds: Vec<u64>,
    pub restores: usize,
    pub groups: Vec<GroupCost>,
    /// Median of the whole verification (every group, and what joins
    /// them) and of the whole RTO, per restore.
    pub verify_median_s: f64,
    pub rto_median_s: f64,
}

pub async fn run(args: &BenchArgs) -> Result<VerifyBench> {
    let scenario = Scenario::load(&args.scenario)?;
    let started_at = Utc::now();
    let opts = RunOptions {
        seed: None,
        report_dir: std::env::temp_dir().join("pgdrill-bench-verify"),
        keep: false,
        quiet: true,
        pgdrill: std::env::current_exe()?,
        tag: None,
    };
    let mut restores: Vec<RestoreRecord> = Vec::new();
    let mut seeds = Vec::new();
    for i in 1..=args.repeat {
        eprintln!(
            "bench verify: drill {i} of {} ({})",
            args.repeat, scenario.name
        );
        let outcome = drill::run(&scenario, &args.scenario, &opts).await?;
        seeds.push(outcome.report.seed);
        if !outcome.report.passed {
            bail!(
                "drill {} failed (report in {}): its checks' costs would not be those of a good restore",
                scenario.name,
                outcome.dir.display()
            );
        }
        restores.extend(outcome.report.restores);
        let _ = std::fs::remove_dir_all(&outcome.dir);
    }
    Ok(summarize(&scenario.name, started_at, seeds, &restores))
}

/// The median of `values` (not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn summarize(
    scenario: &str,
    started_at: DateTime<Utc>,
    seeds: Vec<u64>,
    restores: &[RestoreRecord],
) -> VerifyBench {
    let mut per_group: BTreeMap<CostGroup, Vec<f64>> = BTreeMap::new();
    for r in restores {
        for (&group, &s) in r.verify.iter().flat_map(|v| &v.cost_s) {
            per_group.entry(group).or_default().push(s);
        }
    }
    let groups = per_group
        .into_iter()
        .map(|(group, mut s)| GroupCost {
            group,
            restores: s.len(),
            max_s: s.iter().copied().fold(0.0, f64::max),
            median_s: median(&mut s),
        })
        .collect();
    let mut verify: Vec<f64> = restores.iter().map(|r| r.rto.verify_s).collect();
    let mut rto: Vec<f64> = restores.iter().map(|r| r.rto.total_s).collect();
    VerifyBench {
        started_at,
        scenario: scenario.to_string(),
        drills: seeds.len() as u32,
        seeds,
        restores: restores.len(),
        groups,
        verify_median_s: if verify.is_empty() {
            0.0
        } else {
            median(&mut verify)
        },
        rto_median_s: if rto.is_empty() {
            0.0
        } else {
            median(&mut rto)
        },
    }
}

impl VerifyBench {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Verification cost: {} restores of {} drills of `{}`\n\n\
             Per restore, median {:.2} s of verification in a median RTO of {:.2} s.\n\n\
             | checks | restores | median | max | share of the median RTO |\n|---|---|---|---|---|\n",
            self.restores, self.drills, self.scenario, self.verify_median_s, self.rto_median_s
        );
        for g in &self.groups {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} s | {:.3} s | {:.0}% |",
                g.group.as_str(),
                g.restores,
                g.median_s,
                g.max_s,
                100.0 * g.median_s / self.rto_median_s.max(f64::EPSILON)
            );
        }
        let _ = writeln!(
            md,
            "\nSeeds: {:?}. Groups: ledger = table .. content_hash (one scan), ddl = ddl_objects, sequence, unlogged, identity = system_identifier and timeline, checksums includes the clean shutdown it needs.",
            self.seeds
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn each_group_is_summarized_over_the_restores_it_ran_in() {
        let record = |costs: &[(CostGroup, f64)]| RestoreRecord {
            label: "latest".into(),
            kind: "latest".into(),
            target: None,
            target_as_given: None,
            backup: "b".into(),
            expected: crate::report::Expected::Pass,
            expected_because: None,
            passed: true,
            as_expected: true,
            error: None,
            failure: None,
            verify: Some(crate::verify::VerifyOutcome {
                passed: true,
                target: None,
                exact: true,
                rows: 0,
                checks: Vec::new(),
                per_writer: Vec::new(),
                lost_acked: Vec::new(),
                lost_acked_count: 0,
                content_hash: String::new(),
                last_commit_time: None,
                cost_s: costs.iter().copied().collect(),
            }),
            rto: crate::report::RtoBreakdown {
                verify_s: costs.iter().map(|c| c.1).sum(),
                total_s: 4.0,
                ..Default::default()
            },
            storage_fault: None,
        };
        let bench = summarize(
            "quick",
            Utc::now(),
            vec![1],
            &[
                record(&[(CostGroup::Ledger, 0.1), (CostGroup::Checksums, 0.5)]),
                record(&[(CostGroup::Ledger, 0.3)]),
            ],
        );
        let ledger = &bench.groups[0];
        assert_eq!((ledger.group, ledger.restores), (CostGroup::Ledger, 2));
        assert!((ledger.median_s - 0.2).abs() < 1e-9 && ledger.max_s == 0.3);
        assert_eq!(bench.groups[1].restores, 1);
        assert_eq!(bench.rto_median_s, 4.0);
        let md = bench.markdown();
        assert!(
            md.contains("| checksums | 1 | 0.500 s | 0.500 s | 12% |"),
            "{md}"
        );
    }
}
