//! The drill runner: one scenario from start to report.
//!
//! 1. Start storage and an archiving primary in the scenario's environment.
//! 2. Run the workload (every commit recorded in the ledger) while the
//!    timeline's steps fire at their offsets: base backups, retention,
//!    WAL switches, checkpoints, pauses, a deleted WAL segment, a failover
//!    to a point-in-time restore, and at most one disaster.
//! 3. Without a disaster, close the last segment and wait until it is
//!    archived: the archive then holds every acknowledged commit (but
//!    those of deleted segments, which `wal-verify` must then report).
//! 4. Restore to the end of the archive (always after a disaster: that is
//!    the recovery whose RPO and RTO are measured), then to random targets
//!    drawn from the seeded RNG, in turn from each period between backups,
//!    gaps and failovers, each from the newest backup that ended before
//!    it; verify each against the ledger exactly. A restore that needs a
//!    deleted segment must fail; every restore must turn out as expected.
//! 5. Judge objectives, write `report.json` and `report.md`.

mod chaos;
mod conditions;
pub mod mutants;
mod restore_fault;
mod steps;
mod twin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backup::catalog::BackupListRow;
use chrono::{DateTime, Utc};
use rand::SeedableRng;

use crate::backup::config::Secret;
use crate::env::zone::{ServerZone, TargetTime};
use crate::env::{Damage, EnvError, EnvSpec, Environment, RestoreFailure, Unwatched};
use crate::report::{
    ArchiveSample, DisasterRecord, DrillReport, Expected, MustFail, ObjectiveResult, RestoreRecord,
    RtoBreakdown, Series, StepRecord,
};
use crate::scenario::{
    BackupChoice, Check, DisasterKind, Encryption, Engine, Environment as ScenarioEnv, Scenario,
    Step,
};
use crate::verify::{self, CostGroup};
use crate::workload::{self, Ledger, WorkloadError, WorkloadHandle, WorkloadSpec};
pub use conditions::{Conditions, ZONES};
use steps::{History, Live};

/// Failures that stop a drill before it can report (a failed check does
/// not: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The scenario's environment cannot run here.
    #[error("environment {environment} is not available here: {reason}")]
    Unavailable {
        /// Its name.
        environment: String,
        /// Why not.
        reason: String,
    },
    /// The environment failed (start-up, a server, the backup tool).
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The workload could not start.
    #[error("workload: {0}")]
    Workload(#[from] WorkloadError),
    /// The scenario's conditions cannot be set up (a time zone this
    /// machine does not know).
    #[error("conditions: {0}")]
    Conditions(String),
    /// A key's passphrase file could not be read (its content is never shown).
    #[error("cannot read the passphrase file {}: {source}", path.display())]
    Passphrase {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The report could not be written.
    #[error("cannot write the report to {}: {source}", path.display())]
    Report {
        /// The report directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// How far from a deleted segment's commits random targets stay, on both
/// sides: within it, whether recovery gets to the target depends on where
/// exactly the segment boundary fell.
const GAP_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Parent of the run's report directory.
    pub report_dir: PathBuf,
    /// Leave processes' directories in place.
    pub keep: bool,
    /// No progress lines.
    pub quiet: bool,
    /// The pgdrill binary that serves as backup tool and S3 server.
    pub pgdrill: PathBuf,
    /// Prefixes the progress lines (drills that run side by side).
    pub tag: Option<String>,
}

/// A finished drill.
#[derive(Debug)]
pub struct DrillOutcome {
    pub report: DrillReport,
    pub dir: PathBuf,
}

/// A backup as the runner uses it: a row of `backup-list --json` with its
/// times read.
#[derive(Debug, Clone)]
struct ListedBackup {
    backup_name: String,
    start_lsn: u64,
    start_time: DateTime<Utc>,
    finish_time: DateTime<Utc>,
}

impl ListedBackup {
    fn from_row(row: &BackupListRow) -> Result<ListedBackup, EnvError> {
        let time = |field: &str, value: &str| {
            DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    EnvError::Other(format!(
                        "backup-list --json: {field} {value:?} of {} is not a time: {e}",
                        row.backup_name
                    ))
                })
        };
        Ok(ListedBackup {
            backup_name: row.backup_name.clone(),
            start_lsn: row.start_lsn,
            start_time: time("start_time", &row.start_time)?,
            finish_time: time("finish_time", &row.finish_time)?,
        })
    }
}

struct Progress {
    quiet: bool,
    started: Instant,
    tag: Option<String>,
}

impl Progress {
    fn say(&self, what: &str) {
        if self.quiet {
            return;
        }
        let at = self.started.elapsed().as_secs_f64();
        match &self.tag {
            Some(tag) => eprintln!("[{tag} {at:>6.1}s] {what}"),
            None => eprintln!("[{at:>6.1}s] {what}"),
        }
    }
}

/// Runs one scenario. `file` is where it came from (for the report and the
/// replay hint).
pub async fn run(
    scenario: &Scenario,
    file: &Path,
    opts: &RunOptions,
) -> Result<DrillOutcome, DrillError> {
    crate::env::availability(scenario)
        .await
        .map_err(|reason| DrillError::Unavailable {
            environment: scenario.environment.as_str().to_string(),
            reason,
        })?;
    let seed = opts.seed.or(scenario.seed).unwrap_or_else(rand::random);
    let progress = Progress {
        quiet: opts.quiet,
        started: Instant::now(),
        tag: opts.tag.clone(),
    };
    progress.say(&format!(
        "drill {} (seed {seed}; replay with --seed {seed})",
        scenario.name
    ));
    let started_at = Utc::now();
    let drawn;
    let (scenario, chaos_summary) = match scenario.chaos {
        false => (scenario, None),
        true => {
            let (plan, summary) = chaos::draw(scenario, seed).map_err(DrillError::Conditions)?;
            drawn = plan;
            (&drawn, Some(summary))
        }
    };
    // From the plan: what a chaos drill drew decides some (restores in
    // place when fetches are interrupted).
    let mut conditions =
        Conditions::draw(scenario, seed, started_at).map_err(DrillError::Conditions)?;
    conditions.chaos = chaos_summary;
    progress.say(&format!("conditions: {}", conditions.record().summary()));
    let dir = claim_report_dir(
        &opts.report_dir,
        &format!("{}-{}", started_at.format("%Y%m%dT%H%M%SZ"), scenario.name),
    )
    .map_err(|source| DrillError::Report {
        path: opts.report_dir.clone(),
        source,
    })?;
    let spec = EnvSpec {
        log_dir: Some(dir.clone()),
        ..env_spec(scenario, &conditions)?
    };
    let mut env = crate::env::start(scenario.environment, &spec, &opts.pgdrill).await?;
    let docker_version = match scenario.environment {
        ScenarioEnv::Containers => crate::env::containers::engine_answers().await.ok(),
        _ => None,
    };
    let facts = env.facts().clone();
    progress.say(&format!(
        "{} environment up, PostgreSQL {}",
        facts.kind.as_str(),
        facts.postgres_version
    ));
    let mut report = DrillReport {
        pgdrill_version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: scenario.name.clone(),
        scenario_file: file.display().to_string(),
        description: scenario.description.clone(),
        seed,
        environment: facts.kind.as_str().to_string(),
        engine: engine_name(scenario.engine).to_string(),
        sabotage: sabotage_setting(scenario),
        encryption: scenario.storage.encryption.as_str().to_string(),
        storage_format: scenario.storage.format.as_str().to_string(),
        postgres_version: facts.postgres_version,
        started_at,
        finished_at: started_at,
        passed: false,
        failures: Vec::new(),
        workload: None,
        steps: Vec::new(),
        backups: Vec::new(),
        wal_archived: None,
        wal_gaps: Vec::new(),
        disaster: None,
        restores: Vec::new(),
        objectives: Vec::new(),
        series: None,
        images: facts.images,
        docker_version,
        conditions: conditions.record(),
    };
    let result = drive(
        scenario,
        seed,
        &conditions,
        env.as_mut(),
        &mut report,
        &progress,
    )
    .await;
    if let Err(e) = &result {
        report.failures.push(format!("drill aborted: {e}"));
    }
    if let Some(kept) = env.teardown(opts.keep).await {
        progress.say(&format!("kept work directory {}", kept.display()));
    }
    report.finished_at = Utc::now();
    report.passed = report.failures.is_empty();
    report.write(&dir).map_err(|source| DrillError::Report {
        path: dir.clone(),
        source,
    })?;
    progress.say(&format!(
        "drill {}: {} (report {})",
        scenario.name,
        if report.passed { "PASSED" } else { "FAILED" },
        dir.join("report.md").display()
    ));
    Ok(DrillOutcome { report, dir })
}

/// Creates `parent/name`, or `name-2`, `name-3`, ... when a drill that
/// started in the same second took it (drills run side by side).
fn claim_report_dir(parent: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    for n in 1u32.. {
        let dir = match n {
            1 => parent.join(name),
            n => parent.join(format!("{name}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("some name is free")
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Pgdrill => "pgdrill",
        Engine::PgdrillSabotaged => "pgdrill-sabotaged",
    }
}

fn sabotage_setting(scenario: &Scenario) -> Option<String> {
    match scenario.engine {
        Engine::PgdrillSabotaged => scenario
            .sabotage
            .map(crate::backup::sabotage::Sabotage::to_setting),
        Engine::Pgdrill => None,
    }
}

/// The environment's settings; reads the passphrase file, if any.
fn env_spec(scenario: &Scenario, conditions: &Conditions) -> Result<EnvSpec, DrillError> {
    let mut tool_settings = vec![
        (
            "WALG_COMPRESSION_METHOD".to_string(),
            scenario.storage.compression.as_str().to_string(),
        ),
        (
            "WALG_DELTA_MAX_STEPS".to_string(),
            scenario.storage.delta_max_steps.to_string(),
        ),
        (
            "PGDRILL_STORAGE_FORMAT".to_string(),
            scenario.storage.format.as_str().to_string(),
        ),
    ];
    if let Some(s) = sabotage_setting(scenario) {
        tool_settings.push(("PGDRILL_SABOTAGE".into(), s));
    }
    if let Some(t) = scenario.storage.retry_timeout {
        tool_settings.push((
            "PGDRILL_S3_RETRY_TIMEOUT_SECS".into(),
            t.as_secs().to_string(),
        ));
    }
    if let Some(n) = scenario.storage.prefetch {
        tool_settings.push(("WALG_PREFETCH".into(), n.to_string()));
    }
    let mut tool_secrets = Vec::new();
    let path_setting = |name: &str, path: &Path| (name.to_string(), path.display().to_string());
    match &scenario.storage.encryption {
        Encryption::None => {}
        Encryption::Pgp {
            key_path,
            passphrase_path,
        } => {
            tool_settings.push(path_setting("WALG_PGP_KEY_PATH", key_path));
            if let Some(path) = passphrase_path {
                let text =
                    std::fs::read_to_string(path).map_err(|source| DrillError::Passphrase {
                        path: path.clone(),
                        source,
                    })?;
                let passphrase = Secret::new(text.lines().next().unwrap_or_default());
                tool_secrets.push(("WALG_PGP_KEY_PASSPHRASE".to_string(), passphrase));
            }
        }
        Encryption::Libsodium { key_path } => {
            tool_settings.push(path_setting("WALG_LIBSODIUM_KEY_PATH", key_path));
            tool_settings.push(("WALG_LIBSODIUM_KEY_TRANSFORM".into(), "hex".into()));
        }
    }
    Ok(EnvSpec {
        bucket: scenario.storage.bucket.clone(),
        tool_settings,
        tool_secrets,
        postgres_settings: scenario
            .postgres
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([(
                "timezone".to_string(),
                conditions.zone.setting().to_string(),
            )])
            .collect(),
        wal_segsize_mb: scenario.postgres.wal_segment_size_mb,
        start_segment: conditions.start_segment.clone(),
        restores_in_place: conditions.restores_in_place,
        seed_commands: conditions.seed_commands,
        postgres_major: scenario.postgres.version,
        images: scenario.images.clone(),
        log_dir: None,
    })
}

fn pg_err(e: tokio_postgres::Error) -> EnvError {
    crate::env::pg::pg_err("a statement on the primary")(e)
}

/// Steps 2 to 5; failures of checks go into the report, errors end the drill.
async fn drive(
    scenario: &Scenario,
    seed: u64,
    conditions: &Conditions,
    env: &mut dyn Environment,
    report: &mut DrillReport,
    progress: &Progress,
) -> Result<(), DrillError> {
    let primary = crate::env::connect_once(&env.primary_config()).await?;
    let source = verify::identity(&primary)
        .await
        .map_err(|e| EnvError::Other(format!("the primary: {e}")))?;
    let spec = WorkloadSpec {
        writers: scenario.workload.writers,
        rate_per_second: scenario.workload.rate_per_second,
        duration: scenario.workload.duration,
        payload_bytes: scenario.workload.payload_bytes as usize,
        seed,
        mix: scenario
            .workload
            .mix
            .map(crate::scenario::WorkloadMix::to_mix),
    };
    workload::prepare(&primary, &spec).await?;
    // Three quarters in: after the backups of a short drill, so that a
    // restore obeying it comes up short rather than failing outright.
    let carried_target =
        chrono::Duration::from_std(scenario.workload.duration * 3 / 4).unwrap_or_default();
    conditions
        .leave_recovery_settings(&primary, Utc::now() + carried_target)
        .await
        .map_err(pg_err)?;
    let timeline_start = Instant::now();
    let handle = workload::start(env.primary_config(), spec.clone())?;
    progress.say(&format!(
        "workload: {} writers, {}/s for {:?}",
        scenario.workload.writers, scenario.workload.rate_per_second, scenario.workload.duration
    ));
    let mut live = Live {
        scenario,
        env,
        progress,
        primary,
        started_at: handle.started_at(),
        handle: Some(handle),
        spec,
        workload_end: timeline_start + scenario.workload.duration,
        inherited: Vec::new(),
        inherited_errors: Default::default(),
        chain: None,
        zone: Arc::clone(&conditions.zone),
        rng: rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1)),
        history: History::default(),
        source,
        archive_samples: Vec::new(),
    };
    let mut steps = scenario.steps.clone();
    steps.sort_by_key(Step::at);
    let mut disaster: Option<(String, DateTime<Utc>)> = None;
    // How far steps moved the workload's end, and with it the steps after
    // them (a failover stops the writers while it runs).
    let mut shift = Duration::ZERO;
    for step in &steps {
        wait_until(
            timeline_start + shift + step.at(),
            &mut live,
            disaster.is_some(),
        )
        .await;
        let started_at = Utc::now();
        let clock = Instant::now();
        let end_before = live.workload_end;
        let result = live.run_step(step).await;
        shift += live.workload_end.saturating_duration_since(end_before);
        if let (Step::Disaster { kind, .. }, Ok(_)) = (step, &result) {
            disaster = Some((disaster_name(*kind).to_string(), started_at));
        }
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(e) => {
                report
                    .failures
                    .push(format!("step {} at {:?}: {e}", step.action(), step.at()));
                (false, e.to_string())
            }
        };
        progress.say(&format!(
            "step {}: {}",
            step.action(),
            if ok { &detail } else { "FAILED" }
        ));
        report.steps.push(StepRecord {
            action: step.action().to_string(),
            planned_at_s: step.at().as_secs_f64(),
            started_at,
            duration_s: clock.elapsed().as_secs_f64(),
            ok,
            detail,
        });
    }
    if disaster.is_none() {
        wait_until(live.workload_end, &mut live, false).await;
    }
    let ledger = live.stop_writers().await;
    let Live {
        env,
        primary,
        mut history,
        source,
        archive_samples,
        ..
    } = live;
    report.workload = Some(ledger.summary());
    report.series = Some(Series {
        start: ledger.started_at(),
        acked_per_second: ledger.acked_per_second(ledger.started_at()),
        wal_archived: archive_samples,
        lost_acked_at: Vec::new(),
    });
    if disaster.is_none() {
        let segment = switch_and_wait_archived(&primary).await?;
        progress.say(&format!("workload done; archive complete up to {segment}"));
        report.wal_archived = archived_count(&primary).await;
        if !history.gaps.is_empty() {
            steps::detect_gaps(env, &mut history.gaps).await?;
            for gap in history.gaps.iter().filter(|g| !g.verdict().0) {
                report.failures.push(match gap.damage {
                    Damage::Deleted => format!(
                        "wal-verify integrity did not report the deleted segment {} as lost: {}",
                        gap.segment, gap.wal_verify
                    ),
                    Damage::Corrupted => format!(
                        "wal-fetch did not refuse the corrupted segment {} as corrupt: {}",
                        gap.segment, gap.wal_verify
                    ),
                });
            }
        }
    }
    report.wal_gaps = history.gaps.clone();
    drop(primary);

    let rows = backup_list(env).await?;
    let backups: Vec<ListedBackup> = rows
        .iter()
        .map(ListedBackup::from_row)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|b| !history.abandoned.contains(&b.backup_name))
        .collect();
    report.backups = rows;
    if backups.is_empty() {
        report
            .failures
            .push("no base backup in storage: nothing to restore".into());
        return Ok(());
    }
    let mut rto_s = None;
    let mut last_point = ledger.summary().last_acked_at;
    if scenario.restores.latest || disaster.is_some() {
        let backup = match scenario.restores.from {
            BackupChoice::Latest => backups.last(),
            BackupChoice::Oldest => backups.first(),
        }
        .expect("not empty");
        progress.say(&format!("restore latest from {}", backup.backup_name));
        let plan = Plan {
            label: "latest".to_string(),
            backup,
            target: None,
            must_fail: history.must_fail(backup, None),
        };
        let (record, loss) = restore_and_verify(
            scenario,
            &conditions.zone,
            env,
            &ledger,
            &source,
            &plan,
            disaster.is_some(),
        )
        .await;
        rto_s = rto_of(&record);
        if let Some((kind, at)) = &disaster {
            let recovered = record.verify.as_ref().and_then(|v| v.last_commit_time);
            report.disaster = Some(DisasterRecord {
                kind: kind.clone(),
                at: *at,
                last_recovered_commit: recovered,
                rpo_s: recovered.map(|c| (*at - c).num_microseconds().unwrap_or(0) as f64 / 1e6),
                lost_acked_count: loss.as_ref().map_or(0, |l| l.lost_acked_count as usize),
                lost_acked: loss.map(|l| l.lost_acked).unwrap_or_default(),
            });
            if let (Some(series), Some(d)) = (&mut report.series, &report.disaster) {
                series.lost_acked_at = d
                    .lost_acked
                    .iter()
                    .filter_map(|&(w, seq)| ledger.acked_at(w, seq))
                    .collect();
            }
            // A latest restore that had to fail (a hole in the archive)
            // recovers nothing: targets are then drawn up to the ledger's
            // last acknowledgement, and those past the hole must fail.
            if recovered.is_some() {
                last_point = recovered;
            }
        }
        note_restore(report, record, progress);
    }
    let earliest = backups[0].finish_time + chrono::Duration::milliseconds(1);
    let periods = last_point.map_or_else(Vec::new, |to| history.periods(&backups, earliest, to));
    let (plans, complete) = plan_random_restores(
        scenario.restores.random_targets as usize,
        &periods,
        &ledger,
        &backups,
        &history,
        seed,
    );
    if !complete {
        report.failures.push(format!(
            "no random target possible: the archive holds no commit after the first backup ended ({earliest})"
        ));
    }
    let edges = plan_edge_restores(&history, &backups, &ledger, seed);
    for plan in plans.into_iter().chain(edges) {
        progress.say(&format!(
            "restore {} to {} from {}",
            plan.label,
            plan.target.expect("a point in time").format("%H:%M:%S%.6f"),
            plan.backup.backup_name
        ));
        let (record, _) = restore_and_verify(
            scenario,
            &conditions.zone,
            env,
            &ledger,
            &source,
            &plan,
            false,
        )
        .await;
        rto_s = match (rto_s, rto_of(&record)) {
            (Some(a), Some(b)) => Some(f64::max(a, b)),
            (a, b) => a.or(b),
        };
        note_restore(report, record, progress);
    }
    judge_objectives(scenario, report, rto_s);
    Ok(())
}

/// The point-in-time restores of a drill, planned before any runs (pure:
/// the same seed gives the same plans): `count` targets drawn from
/// `periods` in turn, each restored from the newest backup that ended
/// before it, and failing when it needs a damaged segment. The flag is
/// false when a period held no commit to aim at (planning stops there).
fn plan_random_restores<'a>(
    count: usize,
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
    ledger: &Ledger,
    backups: &'a [ListedBackup],
    history: &History,
    seed: u64,
) -> (Vec<Plan<'a>>, bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut plans = Vec::new();
    for i in 0..count {
        let Some(target) = periods
            .get(i % periods.len().max(1))
            .and_then(|&(from, to)| ledger.pick_target(&mut rng, from, to))
        else {
            return (plans, false);
        };
        let backup = steps::newest_before(backups, target);
        plans.push(Plan {
            label: format!("pitr-{}", i + 1),
            backup,
            target: Some(target),
            must_fail: history.must_fail(backup, Some(target)),
        });
    }
    (plans, true)
}

/// A restore for each backup that started at a segment boundary (and is
/// still listed), to a moment after its end and before the writers' first
/// commit after it: recovery replays the backup's own WAL and the switch
/// that closed it, then must stop at the first commit of the segment after
/// it (labels `edge-N`).
fn plan_edge_restores<'a>(
    history: &History,
    backups: &'a [ListedBackup],
    ledger: &Ledger,
    seed: u64,
) -> Vec<Plan<'a>> {
    // A stream of its own: the random targets stay as they were.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(0x6564_6765));
    let micro = chrono::TimeDelta::microseconds(1);
    history
        .boundary_backups
        .iter()
        .filter_map(|(name, resumed)| {
            backups
                .iter()
                .find(|b| &b.backup_name == name)
                .zip(Some(resumed))
        })
        .enumerate()
        .filter_map(|(i, (backup, &resumed))| {
            let target = ledger.pick_target(&mut rng, backup.finish_time + micro, resumed)?;
            Some(Plan {
                label: format!("edge-{}", i + 1),
                backup,
                target: Some(target),
                must_fail: history.must_fail(backup, Some(target)),
            })
        })
        .collect()
}

/// The time to restore, for the RTO objective: restores that must fail
/// do not count.
fn rto_of(record: &RestoreRecord) -> Option<f64> {
    (record.expected == Expected::Pass).then_some(record.rto.total_s)
}

impl History {
    /// Why a restore of `backup` to `target` (None: the end of the
    /// archive) must fail, if it must: it needs a deleted WAL segment.
    fn must_fail(&self, backup: &ListedBackup, target: Option<DateTime<Utc>>) -> Option<MustFail> {
        self.gaps
            .iter()
            .find(|g| steps::needs(backup, g) && target.is_none_or(|t| t >= g.from))
            .map(|g| match g.damage {
                Damage::Deleted => MustFail::NeedsDeletedSegment(g.segment.clone()),
                Damage::Corrupted => MustFail::NeedsCorruptedSegment(g.segment.clone()),
            })
    }

    /// The periods random targets are drawn from in turn: `[from, to]` cut
    /// at the end of every backup after the first (so that each backup is
    /// restored from), around every deleted segment (both sides, at
    /// [`GAP_MARGIN`]) and between a failover's target and its promotion
    /// (before and after it).
    fn periods(
        &self,
        backups: &[ListedBackup],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let micro = chrono::TimeDelta::microseconds(1);
        let mut cuts: Vec<(DateTime<Utc>, DateTime<Utc>)> = backups[1..]
            .iter()
            .map(|b| (b.finish_time, b.finish_time))
            .chain(
                self.gaps
                    .iter()
                    .map(|g| (g.from - GAP_MARGIN, g.to + GAP_MARGIN)),
            )
            .chain(
                self.failovers
                    .iter()
                    .map(|f| (f.target + micro, f.promoted_at)),
            )
            .collect();
        cuts.sort();
        let mut periods = Vec::new();
        let mut start = from;
        for (cut_from, cut_to) in cuts {
            let end = to.min(cut_from - micro);
            if start <= end {
                periods.push((start, end));
            }
            start = start.max(cut_to + micro);
        }
        if start <= to {
            periods.push((start, to));
        }
        periods
    }
}

fn note_restore(report: &mut DrillReport, record: RestoreRecord, progress: &Progress) {
    progress.say(&format!(
        "restore {}: {} in {:.1}s",
        record.label,
        match (record.passed, record.as_expected) {
            (true, true) => "verified",
            (false, true) => "failed, as it must",
            (_, false) => "UNEXPECTED",
        },
        record.rto.total_s
    ));
    if !record.as_expected {
        let target = record
            .target
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "end of WAL".into());
        let error = record.error.as_deref().unwrap_or("failed");
        report.failures.push(match &record.expected_because {
            None => format!("restore {} (target {target}): {error}", record.label),
            Some(because) if record.passed => format!(
                "restore {} (target {target}) must fail ({because}), but it passed: a hole in the archive went unnoticed",
                record.label
            ),
            Some(because) => format!(
                "restore {} (target {target}) must fail ({because}) by {}, but: {error}",
                record.label,
                expected_failure(&record)
            ),
        });
    }
    report.restores.push(record);
}

/// Whether `record` must fail because it needs a corrupted segment.
fn needs_corrupted(record: &RestoreRecord) -> bool {
    matches!(
        record.expected_because,
        Some(MustFail::NeedsCorruptedSegment(_))
    )
}

/// How a restore that needs a damaged segment must fail: one that needs a
/// corrupted segment is aborted; for a deleted one, a point-in-time restore
/// is refused, a restore to the end of the archive stops early and lacks
/// acknowledged transactions.
fn expected_failure(record: &RestoreRecord) -> &'static str {
    if needs_corrupted(record) {
        return "wal-fetch refusing the corrupt segment, which aborts recovery";
    }
    match record.target {
        Some(_) => "PostgreSQL refusing it (FATAL: recovery ended before configured recovery target was reached)",
        None => "missing acknowledged transactions",
    }
}

fn judge_objectives(scenario: &Scenario, report: &mut DrillReport, rto_s: Option<f64>) {
    let rpo_s = report.disaster.as_ref().and_then(|d| d.rpo_s);
    let objectives = [
        ("rpo", scenario.objectives.rpo, rpo_s),
        ("rto", scenario.objectives.rto, rto_s),
    ];
    for (name, limit, measured) in objectives {
        let Some(limit) = limit else { continue };
        let limit_s = limit.as_secs_f64();
        let passed = measured.is_some_and(|m| m <= limit_s);
        if !passed {
            report.failures.push(match measured {
                Some(m) => format!("objective {name}: measured {m:.1}s, limit {limit_s:.1}s"),
                None => format!("objective {name}: not measured (an rpo needs a disaster step)"),
            });
        }
        report.objectives.push(ObjectiveResult {
            name: name.to_string(),
            limit_s,
            measured_s: measured,
            passed,
        });
    }
}

async fn archived_count(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .query_one("SELECT archived_count FROM pg_stat_archiver", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Sleeps until `deadline`, sampling the archiver every second (for the
/// report's chart) and printing progress every 5 s.
async fn wait_until(deadline: Instant, live: &mut Live<'_>, primary_gone: bool) {
    let mut last_said = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_secs(1))).await;
        let archived = if primary_gone {
            None
        } else {
            archived_count(&live.primary).await
        };
        if let Some(count) = archived {
            live.archive_samples.push(ArchiveSample {
                at: Utc::now(),
                count,
            });
        }
        if Instant::now() < deadline && last_said.elapsed() >= Duration::from_secs(5) {
            last_said = Instant::now();
            let count = |f: fn(&WorkloadHandle) -> u64| live.handle.as_ref().map_or(0, f);
            live.progress.say(&format!(
                "workload: {} sent, {} acknowledged; WAL archived: {}",
                count(WorkloadHandle::rows_sent),
                count(WorkloadHandle::rows_acked),
                archived.map_or("-".to_string(), |n| n.to_string())
            ));
        }
    }
}

/// `backup-list --json`, read with the tool's own row type.
async fn backup_list(env: &dyn Environment) -> Result<Vec<BackupListRow>, EnvError> {
    let json = env.backup_tool(&["backup-list", "--json"]).await?;
    serde_json::from_str(&json)
        .map_err(|e| EnvError::Other(format!("backup-list --json is not what we expect: {e}")))
}

/// The backups in storage, oldest first.
async fn list_backups(env: &dyn Environment) -> Result<Vec<ListedBackup>, EnvError> {
    backup_list(env)
        .await?
        .iter()
        .map(ListedBackup::from_row)
        .collect()
}

/// How long a drill waits for the archiver to store a segment.
const ARCHIVE_WAIT: Duration = Duration::from_secs(300);

/// Forces a segment switch and waits until the archiver stored it.
async fn switch_and_wait_archived(client: &tokio_postgres::Client) -> Result<String, EnvError> {
    crate::env::pg::switch_and_wait_archived(client, ARCHIVE_WAIT).await
}

/// Waits until the archiver stored `segment` (or a later one).
async fn wait_archived(client: &tokio_postgres::Client, segment: &str) -> Result<(), EnvError> {
    crate::env::pg::wait_archived(client, segment, ARCHIVE_WAIT).await
}

/// One restore to do.
#[derive(Debug)]
struct Plan<'a> {
    label: String,
    backup: &'a ListedBackup,
    /// None: the end of the archive.
    target: Option<DateTime<Utc>>,
    /// Why it must fail, if it must.
    must_fail: Option<MustFail>,
}

/// Restores, verifies against the ledger, and records timings; never
/// fails: a failure is a failed record, judged against what the plan
/// expects. After a disaster the archive ends where it ends, so the
/// restore must equal the ledger as of its own last recovered commit; the
/// second value then compares it with everything acknowledged, which is
/// the disaster's loss.
async fn restore_and_verify(
    scenario: &Scenario,
    zone: &Arc<ServerZone>,
    env: &mut dyn Environment,
    ledger: &Ledger,
    source: &verify::ClusterIdentity,
    plan: &Plan<'_>,
    after_disaster: bool,
) -> (RestoreRecord, Option<verify::VerifyOutcome>) {
    let (label, target) = (plan.label.as_str(), plan.target);
    let given = target.map(|instant| TargetTime {
        instant,
        zone: Arc::clone(zone),
    });
    let clock = Instant::now();
    let mut record = RestoreRecord {
        label: label.to_string(),
        kind: if target.is_some() { "pitr" } else { "latest" }.to_string(),
        target,
        target_as_given: given.as_ref().map(TargetTime::arg),
        backup: plan.backup.backup_name.clone(),
        expected: match plan.must_fail {
            Some(_) => Expected::Fail,
            None => Expected::Pass,
        },
        expected_because: plan.must_fail.clone(),
        passed: false,
        as_expected: false,
        error: None,
        failure: None,
        verify: None,
        rto: RtoBreakdown::default(),
        storage_fault: None,
    };
    let attempt = match restore_fault::injector(scenario, env) {
        None => {
            env.restore(label, &record.backup, given.as_ref(), &mut Unwatched)
                .await
        }
        Some(injector) => {
            restore_fault::restore_under_fault(env, injector, given.as_ref(), &mut record).await
        }
    };
    let loss = match attempt {
        Ok(restored) => {
            let loss = verify_restored(
                scenario,
                env,
                ledger,
                source,
                &mut record,
                restored,
                after_disaster,
            )
            .await;
            record.rto.total_s = clock.elapsed().as_secs_f64();
            loss
        }
        Err(e) => {
            if let EnvError::Restore { failure, .. } = &e {
                record.failure = Some(failure.clone());
            }
            record.error = Some(e.to_string());
            record.rto.total_s = clock.elapsed().as_secs_f64();
            None
        }
    };
    env.discard_restore(&record.label).await;
    record.as_expected = as_expected(&record);
    (record, loss)
}

/// Whether `record` turned out as expected: passed when it must pass; when
/// it must fail, stopped by wal-fetch refusing the corrupt segment (it
/// needs one), refused by PostgreSQL (a point-in-time restore: it never got
/// to verification) or short of acknowledged transactions (the end of the
/// archive).
fn as_expected(record: &RestoreRecord) -> bool {
    let stopped_by = |wanted: RestoreFailure| {
        record.verify.is_none() && record.failure.as_ref() == Some(&wanted)
    };
    match record.expected {
        Expected::Pass => record.passed,
        // Recovery must stop at the corrupt segment, whatever the target:
        // wal-fetch exits above 125, so PostgreSQL aborts.
        Expected::Fail if needs_corrupted(record) => {
            stopped_by(RestoreFailure::RestoreCommandAborted {
                exit_code: crate::backup::exit::FETCH_FAILED,
            })
        }
        Expected::Fail if record.target.is_some() => stopped_by(RestoreFailure::TargetNotReached),
        Expected::Fail => record
            .verify
            .as_ref()
            .is_some_and(|v| v.lost_acked_count > 0),
    }
}

/// Verifies restored server `restored` into `record`; see
/// [`restore_and_verify`].
async fn verify_restored(
    scenario: &Scenario,
    env: &mut dyn Environment,
    ledger: &Ledger,
    source: &verify::ClusterIdentity,
    record: &mut RestoreRecord,
    restored: crate::env::Restored,
    after_disaster: bool,
) -> Option<verify::VerifyOutcome> {
    let t = &restored.timings;
    record.rto.scheduling_s = t.scheduling.as_secs_f64();
    record.rto.fetch_s = t.fetch.as_secs_f64();
    record.rto.start_to_consistent_s = t.start_to_consistent.as_secs_f64();
    record.rto.consistent_to_promoted_s = t.consistent_to_promoted.as_secs_f64();
    record.rto.wal_segments_fetched = t.wal_segments;
    record.rto.wal_bytes_fetched = t.wal_segments * env.facts().wal_segment_size;
    let verify_clock = Instant::now();
    let mut errors = Vec::new();
    let mut loss = None;
    let mut expected_at = record.target;
    if after_disaster {
        match verify::verify_ledger(&restored.client, ledger, None).await {
            Ok(o) => {
                expected_at = Some(o.last_commit_time.unwrap_or(ledger.started_at()));
                loss = Some(o);
            }
            Err(e) => errors.push(format!("verification could not run: {e}")),
        }
    }
    let outcome = match expected_at {
        Some(last_commit) if after_disaster => {
            verify::verify_after_crash(&restored.client, ledger, last_commit).await
        }
        _ => verify::verify_restore(&restored.client, ledger, expected_at).await,
    };
    match outcome {
        Ok(o) => {
            if !o.passed {
                errors.push(o.summary());
            }
            record.verify = Some(o);
        }
        Err(e) => errors.push(format!("verification could not run: {e}")),
    }
    // Adds the checks of `group`, which started at `clock`.
    let mut add =
        |group: CostGroup, clock: Instant, checks: Result<Vec<verify::Check>, String>| match checks
        {
            Ok(checks) => {
                for check in checks {
                    if !check.passed {
                        errors.push(format!("{}: {}", check.name, check.detail));
                    }
                    if let Some(o) = &mut record.verify {
                        o.passed &= check.passed;
                        o.checks.push(check);
                    }
                }
                if let Some(o) = &mut record.verify {
                    o.cost(group, clock);
                }
            }
            Err(e) => errors.push(format!("{} checks could not run: {e}", group.as_str())),
        };
    fn one<E: std::fmt::Display>(
        c: Result<verify::Check, E>,
    ) -> Result<Vec<verify::Check>, String> {
        c.map(|c| vec![c]).map_err(|e| e.to_string())
    }
    // Where the server itself says it stopped: only a time target names
    // where it must.
    if let Some(target) = record.target.filter(|_| !after_disaster) {
        let clock = Instant::now();
        let check = verify::target_stop(&restored.stop, ledger, target);
        add(CostGroup::Ledger, clock, Ok(vec![check]));
    }
    if scenario.verify.contains(&Check::Visibility) {
        let clock = Instant::now();
        let check = verify::check_visibility(&restored.client).await;
        add(CostGroup::Visibility, clock, one(check));
    }
    let clock = Instant::now();
    let identity = verify::identity(&restored.client).await;
    add(
        CostGroup::Identity,
        clock,
        identity
            .map(|found| verify::identity_checks(source, &found).to_vec())
            .map_err(|e| e.to_string()),
    );
    if scenario.verify.contains(&Check::Amcheck) {
        let clock = Instant::now();
        add(
            CostGroup::Amcheck,
            clock,
            one(env.amcheck(&record.label).await),
        );
    }
    // Last: it shuts the restore down.
    drop(restored);
    let clock = Instant::now();
    add(
        CostGroup::Checksums,
        clock,
        one(env.checksums(&record.label).await),
    );
    record.rto.verify_s = verify_clock.elapsed().as_secs_f64();
    record.passed = errors.is_empty();
    record.error = (!errors.is_empty()).then(|| errors.join("; "));
    loss
}

/// The scenario-file name of a disaster.
fn disaster_name(kind: DisasterKind) -> &'static str {
    match kind {
        DisasterKind::KillPrimary => "kill_primary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::WalGapRecord;
    use steps::Failover;

    /// `s` seconds after an arbitrary epoch.
    fn t(s: f64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_000_000 + (s * 1e6) as i64).unwrap()
    }

    fn backup(start: f64, finish: f64) -> ListedBackup {
        ListedBackup {
            backup_name: format!("base_{start}"),
            start_lsn: 0,
            start_time: t(start),
            finish_time: t(finish),
        }
    }

    fn gap(from: f64, to: f64) -> WalGapRecord {
        WalGapRecord {
            segment: "000000010000000000000010".into(),
            key: "wal_005/000000010000000000000010.lz4".into(),
            damage: Damage::Deleted,
            from: t(from),
            to: t(to),
            detected: true,
            retired: false,
            wal_verify: String::new(),
        }
    }

    #[test]
    fn a_gap_no_listed_backup_needs_is_retired_and_need_not_be_detected() {
        let g = gap(8.0, 9.5);
        assert!(steps::needs(&backup(5.0, 6.0), &g));
        assert!(
            steps::needs(&backup(9.0, 9.8), &g),
            "started before its last commit"
        );
        assert!(!steps::needs(&backup(10.0, 11.0), &g));
        let mut undetected = WalGapRecord {
            detected: false,
            retired: true,
            ..g
        };
        assert!(undetected.verdict().0, "{:?}", undetected.verdict());
        undetected.retired = false;
        assert!(
            !undetected.verdict().0,
            "a gap a backup still needs must be detected"
        );
    }

    #[test]
    fn random_restores_are_planned_from_the_seed_alone() {
        use crate::workload::{LedgerEntry, Outcome, WorkloadSpec};
        let spec = WorkloadSpec {
            writers: 1,
            rate_per_second: 5,
            duration: Duration::from_secs(20),
            payload_bytes: 8,
            seed: 1,
            mix: None,
        };
        // A commit every 0.2 s for 20 s.
        let entries = (1..=100u64)
            .map(|seq| LedgerEntry {
                writer: 1,
                seq,
                sent_at: t(seq as f64 * 0.2),
                acked_at: Some(t(seq as f64 * 0.2 + 0.01)),
                outcome: Outcome::Acked,
            })
            .collect();
        let ledger = Ledger::new(spec, t(0.0), entries, Default::default());
        let backups = [backup(0.0, 1.0), backup(10.0, 11.0)];
        let history = History {
            gaps: vec![gap(14.0, 15.0)],
            ..History::default()
        };
        let periods = history.periods(&backups, t(1.001), t(20.0));
        let plan = |seed| plan_random_restores(8, &periods, &ledger, &backups, &history, seed);
        let (plans, complete) = plan(42);
        assert!(complete);
        let labels: Vec<&str> = plans.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            ["pitr-1", "pitr-2", "pitr-3", "pitr-4", "pitr-5", "pitr-6", "pitr-7", "pitr-8"]
        );
        for p in &plans {
            let target = p.target.unwrap();
            assert!(p.backup.finish_time < target, "{p:?}");
            assert_eq!(p.must_fail.is_some(), target >= t(14.0), "{p:?}");
        }
        // Every period is used, and each backup restored from.
        assert!(plans.iter().any(|p| p.backup.backup_name == "base_0"));
        assert!(plans.iter().any(|p| p.backup.backup_name == "base_10"));
        assert!(plans.iter().any(|p| p.must_fail.is_some()));
        let targets = |plans: &[Plan]| plans.iter().map(|p| p.target).collect::<Vec<_>>();
        assert_eq!(targets(&plan(42).0), targets(&plans));
        assert_ne!(targets(&plan(43).0), targets(&plans));
        // No period to aim at (no commit after the first backup): planning
        // says so.
        let (plans, complete) = plan_random_restores(2, &[], &ledger, &backups, &history, 1);
        assert!(plans.is_empty() && !complete);
        // A backup that started at a segment boundary: one more restore,
        // from it, between its end and the writers' going on; none for one
        // retention took.
        let history = History {
            boundary_backups: vec![("base_10".into(), t(11.5)), ("base_gone".into(), t(3.0))],
            ..History::default()
        };
        let edges = plan_edge_restores(&history, &backups, &ledger, 42);
        assert_eq!(edges.len(), 1, "{edges:?}");
        let target = edges[0].target.unwrap();
        assert_eq!(
            (
                edges[0].label.as_str(),
                edges[0].backup.backup_name.as_str()
            ),
            ("edge-1", "base_10")
        );
        assert!(t(11.0) < target && target <= t(11.5), "{target}");
    }

    #[test]
    fn periods_split_at_backups_and_skip_gaps_and_failovers() {
        let backups = [backup(0.0, 1.0), backup(4.0, 5.0)];
        let mut history = History {
            gaps: vec![gap(10.0, 11.0)],
            ..History::default()
        };
        let us = |s: f64| t(s) - chrono::TimeDelta::microseconds(1);
        let after = |s: f64| t(s) + chrono::TimeDelta::microseconds(1);
        assert_eq!(
            history.periods(&backups, t(1.0), t(20.0)),
            [
                (t(1.0), us(5.0)),
                (after(5.0), us(8.0)),
                (after(13.0), t(20.0))
            ]
        );
        history.gaps.clear();
        history.failovers.push(Failover {
            target: t(6.0),
            promoted_at: t(7.5),
        });
        assert_eq!(
            history.periods(&backups, t(1.0), t(20.0)),
            [
                (t(1.0), us(5.0)),
                (after(5.0), t(6.0)),
                (after(7.5), t(20.0))
            ]
        );
        // Nothing after the cuts: no empty period.
        assert_eq!(history.periods(&backups, t(1.0), t(7.0)).len(), 2);
    }

    #[test]
    fn restores_that_need_a_deleted_segment_must_fail() {
        let history = History {
            gaps: vec![gap(10.0, 11.0)],
            ..History::default()
        };
        let early = backup(0.0, 1.0);
        assert_eq!(history.must_fail(&early, Some(t(9.0))), None);
        let because = Some(MustFail::NeedsDeletedSegment(
            "000000010000000000000010".to_string(),
        ));
        assert_eq!(history.must_fail(&early, Some(t(12.0))), because);
        assert_eq!(history.must_fail(&early, None), because);
        assert_eq!(history.must_fail(&backup(12.0, 13.0), None), None);
    }

    #[test]
    fn a_failure_counts_only_when_expected_and_of_the_expected_kind() {
        let record = |expected, target: Option<f64>, passed, failure: Option<RestoreFailure>| {
            RestoreRecord {
                label: "r".into(),
                kind: "pitr".into(),
                target: target.map(t),
                target_as_given: None,
                backup: "b".into(),
                expected,
                expected_because: None,
                passed,
                as_expected: false,
                error: failure.as_ref().map(ToString::to_string),
                failure,
                verify: None,
                rto: RtoBreakdown::default(),
                storage_fault: None,
            }
        };
        let refused = || Some(RestoreFailure::TargetNotReached);
        let other = || {
            Some(RestoreFailure::ServerStopped {
                message: Some("connection refused".into()),
            })
        };
        assert!(as_expected(&record(Expected::Pass, Some(1.0), true, None)));
        assert!(!as_expected(&record(
            Expected::Pass,
            Some(1.0),
            false,
            other()
        )));
        assert!(as_expected(&record(
            Expected::Fail,
            Some(1.0),
            false,
            refused()
        )));
        assert!(!as_expected(&record(Expected::Fail, Some(1.0), true, None)));
        assert!(!as_expected(&record(
            Expected::Fail,
            Some(1.0),
            false,
            other()
        )));
        // A corrupt segment must stop recovery through wal-fetch's exit code.
        let mut corrupt = record(
            Expected::Fail,
            Some(1.0),
            false,
            Some(RestoreFailure::RestoreCommandAborted {
                exit_code: crate::backup::exit::FETCH_FAILED,
            }),
        );
        corrupt.expected_because = Some(MustFail::NeedsCorruptedSegment("s".into()));
        assert!(as_expected(&corrupt));
        corrupt.failure = refused();
        assert!(!as_expected(&corrupt));
        // The end of an archive with a hole: acknowledged commits missing.
        let mut latest = record(Expected::Fail, None, false, None);
        assert!(!as_expected(&latest));
        latest.verify = Some(crate::verify::VerifyOutcome {
            passed: false,
            target: None,
            exact: true,
            rows: 1,
            checks: Vec::new(),
            per_writer: Vec::new(),
            lost_acked: vec![(1, 2)],
            lost_acked_count: 1,
            content_hash: String::new(),
            last_commit_time: None,
            cost_s: Default::default(),
        });
        assert!(as_expected(&latest));
        assert!(!as_expected(&record(
            Expected::Fail,
            None,
            false,
            refused()
        )));
    }
}
