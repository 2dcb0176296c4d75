//! One trial per scenario file in `scenarios/` (sorted; zero files is a
//! failure). Trials whose environment is not available here are reported
//! as ignored, with the reason.

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use pgdrill::drill::{self, RunOptions};
use pgdrill::scenario::{self, Scenario};

fn trial(file: PathBuf) -> Trial {
    let name = file
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let kind = scenario_kind(&file);
    Trial::ignorable_test(name, move || {
        let scenario = Scenario::load(&file).map_err(|e| Failed::from(e.to_string()))?;
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        if let Err(reason) = runtime.block_on(pgdrill::env::availability(&scenario)) {
            return Ok(Completion::ignored_with(format!(
                "environment {}: {reason}",
                scenario.environment.as_str()
            )));
        }
        let opts = RunOptions {
            seed: None,
            report_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-reports"),
            keep: false,
            quiet: std::env::var_os("PGDRILL_TRIAL_PROGRESS").is_none(),
            pgdrill: PathBuf::from(env!("CARGO_BIN_EXE_pgdrill")),
        };
        let outcome = runtime
            .block_on(drill::run(&scenario, &file, &opts))
            .map_err(|e| Failed::from(e.to_string()))?;
        if outcome.report.passed {
            Ok(Completion::Completed)
        } else {
            Err(format!(
                "drill failed (seed {}, report {}):\n- {}",
                outcome.report.seed,
                outcome.dir.display(),
                outcome.report.failures.join("\n- ")
            )
            .into())
        }
    })
    .with_kind(kind)
}

fn scenario_kind(file: &Path) -> String {
    Scenario::load(file)
        .map(|s| s.environment.as_str().to_string())
        .unwrap_or_else(|_| "invalid".into())
}

fn main() {
    let args = Arguments::from_args();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let files = scenario::discover(&dir).expect("scenarios directory is readable");
    assert!(!files.is_empty(), "no scenario files in {}", dir.display());
    let trials = files.into_iter().map(trial).collect();
    libtest_mimic::run(&args, trials).exit();
}
