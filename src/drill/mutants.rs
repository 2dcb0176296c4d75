//! The mutation suite: a drill is only worth its PASS if it fails when the
//! backup tool is broken. Every deliberate defect of the catalogue
//! ([`Sabotage::catalogue`], test builds only) is run against a fixed set
//! of scenarios, each turned into a `pgdrill-sabotaged` drill; a mutant is
//! killed by the first drill that fails, and survives if all pass. A
//! defect that is none on a scenario's PostgreSQL version
//! ([`Sabotage::harmless_on`]) is not run there; when that holds for every
//! scenario, the mutant is reported equivalent, with the reason.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{DrillError, RunOptions};
use crate::backup::sabotage::Sabotage;
use crate::report::DrillReport;
use crate::scenario::{Engine, Scenario};

/// How one mutant fared.
#[derive(Debug, Clone, Serialize)]
pub struct MutantResult {
    /// The defect, as `PGDRILL_SABOTAGE` spells it.
    pub mutant: String,
    /// What the defect does.
    pub description: String,
    pub killed: bool,
    /// Why the defect is no defect on the scenarios' PostgreSQL version
    /// (no drill was run for it).
    pub equivalent: Option<String>,
    /// The scenario whose drill failed.
    pub scenario: Option<String>,
    /// What failed: the checks of the restores, or the step.
    pub caught_by: String,
    /// Drills run for this mutant.
    pub drills: usize,
    /// The PostgreSQL major version the drills ran on.
    pub postgres_major: u32,
    /// The report of the drill that killed it (or of the last one run).
    pub report_dir: Option<PathBuf>,
}

/// Runs every mutant against the scenarios, in order, until a drill fails.
pub async fn run(
    mutants: &[Sabotage],
    scenarios: &[(Scenario, PathBuf)],
    opts: &RunOptions,
    mut progress: impl FnMut(&MutantResult),
) -> Result<Vec<MutantResult>, DrillError> {
    let mut results = Vec::new();
    for &mutant in mutants {
        let mut result = MutantResult {
            mutant: mutant.to_setting(),
            description: mutant.description().to_string(),
            killed: false,
            equivalent: None,
            scenario: None,
            caught_by: "every drill passed".to_string(),
            drills: 0,
            postgres_major: 0,
            report_dir: None,
        };
        let mut harmless = None;
        for (scenario, file) in scenarios {
            result.postgres_major = scenario.postgres.version;
            if let Some(why) = mutant.harmless_on(scenario.postgres.version) {
                harmless = Some(why);
                continue;
            }
            let sabotaged = Scenario {
                engine: Engine::PgdrillSabotaged,
                sabotage: Some(mutant),
                ..scenario.clone()
            };
            let outcome = super::run(&sabotaged, file, opts).await?;
            result.drills += 1;
            result.report_dir = Some(outcome.dir.clone());
            if !outcome.report.passed {
                result.killed = true;
                result.scenario = Some(scenario.name.clone());
                result.caught_by = caught_by(&outcome.report);
                break;
            }
        }
        if result.drills == 0 {
            if let Some(why) = harmless {
                result.caught_by = why.to_string();
                result.equivalent = Some(why.to_string());
            }
        }
        progress(&result);
        results.push(result);
    }
    Ok(results)
}

impl MutantResult {
    /// Killed, or equivalent on this version: the suite passes.
    pub fn passed(&self) -> bool {
        self.killed || self.equivalent.is_some()
    }

    /// The result column: killed, equivalent or SURVIVED.
    pub fn verdict(&self) -> &'static str {
        if self.killed {
            "killed"
        } else if self.equivalent.is_some() {
            "equivalent"
        } else {
            "**SURVIVED**"
        }
    }
}

/// What made a drill fail, briefly: the failed checks of each restore that
/// did not end as expected, or the failed steps.
pub fn caught_by(report: &DrillReport) -> String {
    let mut parts: Vec<String> = report
        .steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| format!("step {} failed", s.action))
        .collect();
    for r in report.restores.iter().filter(|r| !r.as_expected) {
        let failed: Vec<&str> = r
            .verify
            .iter()
            .flat_map(|v| &v.checks)
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        parts.push(if failed.is_empty() {
            let error = r.error.as_deref().unwrap_or("failed");
            format!("restore {}: {}", r.label, cause(error))
        } else {
            format!("restore {}: {}", r.label, failed.join(", "))
        });
    }
    if parts.is_empty() {
        parts.extend(report.failures.iter().map(|f| first_words(f, 12)));
    }
    parts.truncate(3);
    parts.join("; ")
}

/// The telling part of a restore's error: the server's FATAL or PANIC
/// message, else the backup tool's complaint about a corrupt object, else
/// its first words.
fn cause(error: &str) -> String {
    let server = error.lines().find_map(|l| {
        let (_, message) = l.split_once("FATAL:").or_else(|| l.split_once("PANIC:"))?;
        Some(format!("server: {}", message.trim()))
    });
    let tool = || {
        error
            .lines()
            .find(|l| l.contains("is corrupt"))
            .map(|l| first_words(l, 12))
    };
    server
        .or_else(tool)
        .unwrap_or_else(|| first_words(error, 12))
}

fn first_words(text: &str, n: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = words[..words.len().min(n)].join(" ");
    if words.len() > n {
        out.push_str(" …");
    }
    out
}

/// The results as a Markdown table.
pub fn to_markdown(results: &[MutantResult]) -> String {
    let killed = results.iter().filter(|r| r.killed).count();
    let equivalent = results.iter().filter(|r| r.equivalent.is_some()).count();
    let mut majors: Vec<String> = results
        .iter()
        .map(|r| r.postgres_major.to_string())
        .collect();
    majors.dedup();
    let mut out = format!(
        "# Mutation suite: {killed} of {} mutants killed{} (PostgreSQL {})\n\n| mutant | what it breaks | result | caught by | scenario |\n|---|---|---|---|---|\n",
        results.len() - equivalent,
        if equivalent > 0 {
            format!(", {equivalent} equivalent on this version")
        } else {
            String::new()
        },
        majors.join(", ")
    );
    for r in results {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            r.mutant,
            r.description,
            r.verdict(),
            r.caught_by.replace('|', "\\|"),
            r.scenario.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// Writes `mutants.md` and `mutants.json` into `dir`.
pub fn write(dir: &Path, results: &[MutantResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("mutants.md"), to_markdown(results))?;
    let json = serde_json::to_vec_pretty(results).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("mutants.json"), json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(mutant: Sabotage, killed: bool) -> MutantResult {
        MutantResult {
            mutant: mutant.to_setting(),
            description: mutant.description().to_string(),
            killed,
            equivalent: None,
            scenario: killed.then(|| "quick".to_string()),
            caught_by: if killed {
                "restore latest: row_count | acked_kept".to_string()
            } else {
                "every drill passed".to_string()
            },
            drills: 1,
            postgres_major: 18,
            report_dir: None,
        }
    }

    #[test]
    fn the_cause_of_a_failed_start_is_the_servers_fatal_message() {
        let error = "pg_ctl start failed: exit status: 1: pg_ctl: could not start server\nExamine the log output.; server log tail:\n2026-12-02 01:35:08.547 UTC [32661] LOG:  invalid xl_info in checkpoint record\n2026-12-02 01:35:08.547 UTC [32661] FATAL:  could not locate required checkpoint record\n";
        assert_eq!(
            cause(error),
            "server: could not locate required checkpoint record"
        );
        let corrupt = "restore stopped during recovery (connection closed); log:\npgdrill: stored object wal_005/000000010000000000000003.lz4 is corrupt: checksum mismatch\n";
        assert_eq!(
            cause(corrupt),
            "pgdrill: stored object wal_005/000000010000000000000003.lz4 is corrupt: checksum mismatch"
        );
        assert_eq!(cause("connection refused"), "connection refused");
    }

    #[test]
    fn the_table_names_survivors_and_what_caught_the_others() {
        let table = to_markdown(&[
            result(Sabotage::LateRecoveryTarget, true),
            result(Sabotage::DropHistory, false),
        ]);
        assert!(
            table.starts_with("# Mutation suite: 1 of 2 mutants killed (PostgreSQL 18)"),
            "{table}"
        );
        assert!(
            table.contains("| `late_recovery_target` | the recovery target written two seconds late | killed | restore latest: row_count \\| acked_kept | quick |"),
            "{table}"
        );
        assert!(table.contains("| `drop_history` | timeline history files not stored | **SURVIVED** | every drill passed | - |"), "{table}");
        let mut equivalent = result(Sabotage::StaleVisibilityMap, false);
        equivalent.equivalent = Sabotage::StaleVisibilityMap
            .harmless_on(18)
            .map(str::to_string);
        assert!(equivalent.passed() && !result(Sabotage::DropHistory, false).passed());
        let table = to_markdown(&[result(Sabotage::DropHistory, true), equivalent]);
        assert!(
            table.starts_with(
                "# Mutation suite: 1 of 1 mutants killed, 1 equivalent on this version"
            ),
            "{table}"
        );
        assert!(
            table.contains("| `stale_visibility_map` | delta backups pick visibility-map pages by LSN | equivalent |"),
            "{table}"
        );
        assert_eq!(Sabotage::StaleVisibilityMap.harmless_on(15), None);
        assert_eq!(Sabotage::DropHistory.harmless_on(18), None);
        assert_eq!(first_words("a b c d", 2), "a b …");
        assert_eq!(first_words("a b", 2), "a b");
    }
}
