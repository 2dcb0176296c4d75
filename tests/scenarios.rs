//! One trial per scenario file in `scenarios/` (sorted; zero files is a
//! failure), the version matrix (`quick`, `delta-chain`, `timeline-switch`
//! and `versions-core` again on PostgreSQL 16 and 18: `quick@pg18`), plus a
//! trial that interrupts a containers drill. Trials whose
//! environment is not available here are reported as ignored, with the
//! reason.

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use pgdrill::drill::{self, RunOptions};
use pgdrill::scenario::{self, Scenario};

/// Loads scenario `file` (on PostgreSQL `major` when given) and makes a
/// runtime; `Ok(Err(ignored))` when its environment is not available here
/// (the trial is ignored, saying why).
fn prepare(
    file: &Path,
    major: Option<u32>,
) -> Result<Result<(Scenario, tokio::runtime::Runtime), Completion>, Failed> {
    let mut scenario = Scenario::load(file).map_err(|e| Failed::from(e.to_string()))?;
    if let Some(major) = major {
        scenario.postgres.version = major;
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    if let Err(reason) = runtime.block_on(pgdrill::env::availability(&scenario)) {
        return Ok(Err(Completion::ignored_with(format!(
            "environment {}: {reason}",
            scenario.environment.as_str()
        ))));
    }
    Ok(Ok((scenario, runtime)))
}

/// How trials run drills: the test build's binary, reports under the
/// target directory, a random seed.
fn run_options(quiet: bool) -> RunOptions {
    RunOptions {
        seed: None,
        report_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-reports"),
        keep: false,
        quiet,
        pgdrill: PathBuf::from(env!("CARGO_BIN_EXE_pgdrill")),
        tag: None,
    }
}

/// The drills of the version matrix, run again on each major below
/// besides their own (15).
const MATRIX: [&str; 4] = ["quick", "delta-chain", "timeline-switch", "versions-core"];
const MATRIX_MAJORS: [u32; 2] = [16, 18];

fn trial(file: PathBuf, major: Option<u32>) -> Trial {
    let stem = file
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let name = match major {
        Some(m) => format!("{stem}@pg{m}"),
        None => stem,
    };
    let kind = scenario_kind(&file);
    Trial::ignorable_test(name, move || {
        let (scenario, runtime) = match prepare(&file, major)? {
            Ok(ready) => ready,
            Err(ignored) => return Ok(ignored),
        };
        let opts = run_options(std::env::var_os("PGDRILL_TRIAL_PROGRESS").is_none());
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

/// Ctrl-C (SIGINT) in the middle of a containers drill removes everything
/// the drill created: containers, volumes, network. After a SIGKILL, the
/// next drill's sweep removes what the dead process left.
fn interrupted_containers_drill(file: PathBuf) -> Trial {
    use pgdrill::env::containers::sweep_abandoned;
    Trial::ignorable_test("containers-interrupted-leaves-nothing", move || {
        let (_, runtime) = match prepare(&file, None)? {
            Ok(ready) => ready,
            Err(ignored) => return Ok(ignored),
        };
        let (drill, status) = run_and_signal(&runtime, &file, libc::SIGINT)?;
        let left = left_by(&runtime, &drill)?;
        if !left.is_empty() {
            return Err(format!(
                "after Ctrl-C ({status}), drill {drill} left: {}",
                left.join(", ")
            )
            .into());
        }
        if status.success() {
            return Err("an interrupted drill must not exit 0".into());
        }
        let (drill, _) = run_and_signal(&runtime, &file, libc::SIGKILL)?;
        if left_by(&runtime, &drill)?.is_empty() {
            return Err("a SIGKILLed drill left nothing: the sweep is not tested".into());
        }
        runtime.block_on(sweep_abandoned());
        let left = left_by(&runtime, &drill)?;
        if !left.is_empty() {
            return Err(format!("the sweep left {}", left.join(", ")).into());
        }
        Ok(Completion::Completed)
    })
    .with_kind("containers")
}

/// `--keep` leaves the drill's containers, volumes and network in place,
/// and later sweeps leave them alone; `remove_drill` removes them.
fn kept_containers_drill(file: PathBuf) -> Trial {
    use pgdrill::env::containers::{drills_with_containers, remove_drill, sweep_abandoned};
    Trial::ignorable_test("containers-keep-leaves-everything", move || {
        let (_, runtime) = match prepare(&file, None)? {
            Ok(ready) => ready,
            Err(ignored) => return Ok(ignored),
        };
        let before = runtime
            .block_on(drills_with_containers())
            .map_err(|e| e.to_string())?;
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_pgdrill"))
            .args(["run", "--quiet", "--keep", "--report-dir"])
            .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-reports"))
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the kept drill failed: {status}").into());
        }
        // Other trials' drills may be running: ours is the kept one.
        let now = runtime
            .block_on(drills_with_containers())
            .map_err(|e| e.to_string())?;
        let mut kept = Vec::new();
        for d in now.difference(&before) {
            let left = left_by(&runtime, d)?;
            if left.iter().any(|l| l.ends_with("-kept")) {
                kept.push((d.clone(), left));
            }
        }
        let [(drill, left)] = &kept[..] else {
            return Err(format!("expected one kept drill, found {kept:?}").into());
        };
        if !left.iter().any(|l| l.ends_with("-storage"))
            || !left.iter().any(|l| l.starts_with("network"))
        {
            return Err(format!("--keep left only {}", left.join(", ")).into());
        }
        runtime.block_on(sweep_abandoned());
        if left_by(&runtime, drill)? != *left {
            return Err("a sweep removed a kept drill".into());
        }
        runtime
            .block_on(remove_drill(drill))
            .map_err(|e| e.to_string())?;
        let left = left_by(&runtime, drill)?;
        if !left.is_empty() {
            return Err(format!("remove_drill left {}", left.join(", ")).into());
        }
        Ok(Completion::Completed)
    })
    .with_kind("containers")
}

/// What drill `drill` left on the Docker engine.
fn left_by(runtime: &tokio::runtime::Runtime, drill: &str) -> Result<Vec<String>, Failed> {
    runtime
        .block_on(pgdrill::env::containers::leftovers(drill))
        .map_err(|e| Failed::from(e.to_string()))
}

/// Starts `pgdrill run FILE`, waits until its primary container exists,
/// sends `signal` and waits for the process; the drill's id and how the
/// process ended.
fn run_and_signal(
    runtime: &tokio::runtime::Runtime,
    file: &Path,
    signal: i32,
) -> Result<(String, std::process::ExitStatus), Failed> {
    use pgdrill::env::containers::{drills_with_containers, leftovers};
    let before = runtime
        .block_on(drills_with_containers())
        .map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgdrill"))
        .args(["run", "--quiet", "--report-dir"])
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-reports"))
        .arg(file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    // The drill's id is the new label value that has a primary.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let drill = loop {
        let now = runtime
            .block_on(drills_with_containers())
            .map_err(|e| e.to_string())?;
        let primary_up = now.difference(&before).find(|d| {
            runtime
                .block_on(leftovers(d))
                .is_ok_and(|l| l.iter().any(|x| x.ends_with("-primary")))
        });
        if let Some(d) = primary_up {
            break d.clone();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err("the drill started no primary container within 120s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok((drill, status))
}

/// A containers drill whose image runs another major than the scenario's
/// `postgres.version` stops at start, naming both, instead of running the
/// drill on the wrong version.
fn image_of_another_version_is_refused(file: PathBuf) -> Trial {
    Trial::ignorable_test("containers-image-of-another-version-is-refused", move || {
        let (mut scenario, runtime) = match prepare(&file, Some(18))? {
            Ok(ready) => ready,
            Err(ignored) => return Ok(ignored),
        };
        scenario.images.postgres = Some("pgdrill/postgres:15-local".into());
        let opts = run_options(true);
        let outcome = runtime.block_on(drill::run(&scenario, &file, &opts));
        let text = match outcome {
            Err(e) => e.to_string(),
            Ok(o) => o.report.failures.join("\n"),
        };
        if text.contains("the scenario asks for PostgreSQL 18 (postgres.version), but image pgdrill/postgres:15-local runs PostgreSQL 15.") {
            Ok(Completion::Completed)
        } else {
            Err(format!("expected the version mismatch to be refused, got: {text}").into())
        }
    })
    .with_kind("containers")
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
    let interrupted = dir.join("containers-kill.yaml");
    let mut matrix = Vec::new();
    for m in MATRIX_MAJORS {
        for name in MATRIX {
            matrix.push(trial(dir.join(format!("{name}.yaml")), Some(m)));
        }
    }
    // A second version in containers (the local images of 18).
    matrix.push(trial(dir.join("containers-kill.yaml"), Some(18)));
    let trials = files
        .into_iter()
        .map(|f| trial(f, None))
        .chain(matrix)
        .chain([
            interrupted_containers_drill(interrupted.clone()),
            kept_containers_drill(interrupted.clone()),
            image_of_another_version_is_refused(interrupted),
        ])
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
