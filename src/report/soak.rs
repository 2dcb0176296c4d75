//! The summary of many drills (`pgdrill run --repeat N`): per scenario, how
//! many passed, the failed seeds as replay commands, and the distribution
//! of RPO and RTO (min, median, p95, max). Written as `summary.md` and
//! `summary.json` into `REPORT_DIR/<UTC time>-soak/`.

use serde::Serialize;

use super::{DrillReport, Expected};

/// Min, median, 95th percentile and max of some seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub count: usize,
    pub min_s: f64,
    pub median_s: f64,
    pub p95_s: f64,
    pub max_s: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least p of them at or
        // below it.
        let rank =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Spread {
            count: values.len(),
            min_s: values[0],
            median_s: rank(0.5),
            p95_s: rank(0.95),
            max_s: values[values.len() - 1],
        })
    }
}

/// One scenario's drills.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub runs: usize,
    pub passed: usize,
    /// Replay commands of the failed drills, with their first failure.
    pub failed: Vec<FailedRun>,
    /// RPO of the drills with a disaster.
    pub rpo: Option<Spread>,
    /// RTO of every restore that had to pass.
    pub rto: Option<Spread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedRun {
    pub seed: u64,
    pub replay: String,
    pub first_failure: String,
}

/// The drills of a run, by scenario in the order first seen.
pub fn summarize(reports: &[DrillReport]) -> Vec<ScenarioSummary> {
    let mut names: Vec<&str> = Vec::new();
    for r in reports {
        if !names.contains(&r.scenario.as_str()) {
            names.push(&r.scenario);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let runs: Vec<&DrillReport> = reports.iter().filter(|r| r.scenario == name).collect();
            ScenarioSummary {
                scenario: name.to_string(),
                runs: runs.len(),
                passed: runs.iter().filter(|r| r.passed).count(),
                failed: runs
                    .iter()
                    .filter(|r| !r.passed)
                    .map(|r| FailedRun {
                        seed: r.seed,
                        replay: format!("pgdrill run {} --seed {}", r.scenario_file, r.seed),
                        first_failure: r.failures.first().cloned().unwrap_or_default(),
                    })
                    .collect(),
                rpo: Spread::of(
                    runs.iter()
                        .filter_map(|r| r.disaster.as_ref()?.rpo_s)
                        .collect(),
                ),
                rto: Spread::of(
                    runs.iter()
                        .flat_map(|r| &r.restores)
                        .filter(|x| x.expected == Expected::Pass)
                        .map(|x| x.rto.total_s)
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The summary as Markdown.
pub fn to_markdown(summaries: &[ScenarioSummary]) -> String {
    let spread = |s: &Option<Spread>| match s {
        Some(s) => format!(
            "{:.1} / {:.1} / {:.1} / {:.1} ({})",
            s.min_s, s.median_s, s.p95_s, s.max_s, s.count
        ),
        None => "-".to_string(),
    };
    let mut md = String::from(
        "# Soak summary\n\n| scenario | runs | passed | failed | RPO s (min / median / p95 / max, n) | RTO s (min / median / p95 / max, n) |\n|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s.scenario,
            s.runs,
            s.passed,
            s.failed.len(),
            spread(&s.rpo),
            spread(&s.rto)
        ));
    }
    let failed: Vec<&FailedRun> = summaries.iter().flat_map(|s| &s.failed).collect();
    if !failed.is_empty() {
        md.push_str("\n## Failed drills (replay)\n\n");
        for f in failed {
            md.push_str(&format!("- `{}`: {}\n", f.replay, f.first_failure));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::super::sample::report;
    use super::*;

    #[test]
    fn drills_are_summarized_by_scenario_with_replays_for_failures() {
        let mut passed = report();
        passed.passed = true;
        passed.seed = 7;
        let mut other = report();
        other.scenario = "wal-gap".into();
        let summaries = summarize(&[report(), passed, other]);
        assert_eq!(summaries.len(), 2);
        let quick = &summaries[0];
        assert_eq!(
            (quick.scenario.as_str(), quick.runs, quick.passed),
            ("quick", 2, 1)
        );
        assert_eq!(quick.failed.len(), 1);
        assert_eq!(
            quick.failed[0].replay,
            "pgdrill run scenarios/quick.yaml --seed 42"
        );
        // Restores that had to pass: latest and pitr-1 of each drill.
        assert_eq!(quick.rto.as_ref().unwrap().count, 4);
        assert_eq!(quick.rpo, None, "no disaster, no RPO");
        let md = to_markdown(&summaries);
        assert!(
            md.contains("| quick | 2 | 1 | 1 | - | 4.5 / 4.5 / 4.5 / 4.5 (4) |"),
            "{md}"
        );
        assert!(
            md.contains("- `pgdrill run scenarios/quick.yaml --seed 42`: restore pitr-1"),
            "{md}"
        );
    }

    #[test]
    fn spreads_use_the_nearest_rank() {
        let s = Spread::of((1..=20).map(f64::from).collect()).unwrap();
        assert_eq!(
            (s.min_s, s.median_s, s.p95_s, s.max_s, s.count),
            (1.0, 10.0, 19.0, 20.0, 20)
        );
        let one = Spread::of(vec![3.0]).unwrap();
        assert_eq!((one.median_s, one.p95_s), (3.0, 3.0));
        assert_eq!(Spread::of(Vec::new()), None);
        let unsorted = Spread::of(vec![5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (unsorted.min_s, unsorted.median_s, unsorted.max_s),
            (1.0, 3.0, 5.0)
        );
    }
}
