//! The drill runner: one scenario from start to report.
//!
//! 1. Start storage and an archiving primary in the scenario's environment.
//! 2. Run the workload (every commit recorded in the ledger) while the
//!    timeline's steps fire at their offsets: base backups, retention,
//!    WAL switches, checkpoints, pauses, and at most one disaster.
//! 3. Without a disaster, close the last segment and wait until it is
//!    archived: the archive then holds every acknowledged commit.
//! 4. Restore to the end of the archive (always after a disaster: that is
//!    the recovery whose RPO and RTO are measured), then to random targets
//!    drawn from the seeded RNG, each from the newest backup that ended
//!    before it; verify each against the ledger exactly.
//! 5. Judge objectives, write `report.json` and `report.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use serde::Deserialize;

use crate::env::local::LocalEnvironment;
use crate::env::{EnvError, EnvSpec, Environment};
use crate::report::{
    DisasterRecord, DrillReport, ObjectiveResult, RestoreRecord, RtoBreakdown, StepRecord,
};
use crate::scenario::{BackupChoice, Check, DisasterKind, Engine, Scenario, Step};
use crate::verify;
use crate::workload::{self, Ledger, WorkloadError, WorkloadHandle, WorkloadSpec};

/// Failures that stop a drill before it can report (a failed check does
/// not: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("environment {environment} is not available here: {reason}")]
    Unavailable { environment: String, reason: String },
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("workload: {0}")]
    Workload(#[from] WorkloadError),
    #[error("cannot write the report to {}: {source}", path.display())]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

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
}

/// A finished drill.
#[derive(Debug)]
pub struct DrillOutcome {
    pub report: DrillReport,
    pub dir: PathBuf,
}

/// A row of `backup-list --json`: the fields the runner uses, and the
/// whole row for the report.
#[derive(Debug, Clone)]
struct ListedBackup {
    backup_name: String,
    finish_time: DateTime<Utc>,
    row: serde_json::Value,
}

impl<'de> Deserialize<'de> for ListedBackup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            backup_name: String,
            finish_time: DateTime<Utc>,
        }
        let row = serde_json::Value::deserialize(d)?;
        let f = Fields::deserialize(&row).map_err(serde::de::Error::custom)?;
        Ok(ListedBackup {
            backup_name: f.backup_name,
            finish_time: f.finish_time,
            row,
        })
    }
}

struct Progress {
    quiet: bool,
    started: Instant,
}

impl Progress {
    fn say(&self, what: &str) {
        if !self.quiet {
            eprintln!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
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
    crate::env::availability(scenario.environment).map_err(|reason| DrillError::Unavailable {
        environment: scenario.environment.as_str().to_string(),
        reason,
    })?;
    let seed = opts.seed.or(scenario.seed).unwrap_or_else(rand::random);
    let progress = Progress {
        quiet: opts.quiet,
        started: Instant::now(),
    };
    progress.say(&format!(
        "drill {} (seed {seed}; replay with --seed {seed})",
        scenario.name
    ));
    let started_at = Utc::now();
    let dir = opts.report_dir.join(format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        scenario.name
    ));
    let mut env: Box<dyn Environment> = Box::new(
        LocalEnvironment::start(&env_spec(scenario), &opts.pgdrill)
            .await
            .map_err(EnvError::from)?,
    );
    progress.say(&format!(
        "{} environment up, PostgreSQL {}",
        env.kind(),
        env.postgres_version()
    ));
    let mut report = DrillReport {
        pgdrill_version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: scenario.name.clone(),
        scenario_file: file.display().to_string(),
        description: scenario.description.clone(),
        seed,
        environment: env.kind().to_string(),
        engine: engine_name(scenario.engine).to_string(),
        sabotage: sabotage_setting(scenario),
        postgres_version: env.postgres_version(),
        started_at,
        finished_at: started_at,
        passed: false,
        failures: Vec::new(),
        workload: None,
        steps: Vec::new(),
        backups: Vec::new(),
        wal_archived: None,
        disaster: None,
        restores: Vec::new(),
        objectives: Vec::new(),
    };
    let result = drive(scenario, seed, env.as_mut(), &mut report, &progress).await;
    if let Err(e) = &result {
        report.failures.push(format!("drill aborted: {e}"));
    }
    report.finished_at = Utc::now();
    report.passed = report.failures.is_empty();
    report.write(&dir).map_err(|source| DrillError::Report {
        path: dir.clone(),
        source,
    })?;
    if opts.keep {
        if let Some(kept) = env.keep() {
            progress.say(&format!("kept work directory {}", kept.display()));
        }
    }
    progress.say(&format!(
        "drill {}: {} (report {})",
        scenario.name,
        if report.passed { "PASSED" } else { "FAILED" },
        dir.join("report.md").display()
    ));
    Ok(DrillOutcome { report, dir })
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Pgdrill => "pgdrill",
        Engine::PgdrillSabotaged => "pgdrill-sabotaged",
    }
}

fn sabotage_setting(scenario: &Scenario) -> Option<String> {
    match scenario.engine {
        Engine::PgdrillSabotaged => scenario.sabotage.map(crate::fault::Sabotage::to_setting),
        Engine::Pgdrill => None,
    }
}

fn env_spec(scenario: &Scenario) -> EnvSpec {
    let mut tool_settings = vec![
        (
            "WALG_COMPRESSION_METHOD".to_string(),
            scenario.storage.compression.as_str().to_string(),
        ),
        (
            "WALG_DELTA_MAX_STEPS".to_string(),
            scenario.storage.delta_max_steps.to_string(),
        ),
    ];
    if let Some(s) = sabotage_setting(scenario) {
        tool_settings.push(("PGDRILL_SABOTAGE".into(), s));
    }
    EnvSpec {
        bucket: scenario.storage.bucket.clone(),
        tool_settings,
        postgres_settings: scenario
            .postgres
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        wal_segsize_mb: scenario.postgres.wal_segment_size_mb,
    }
}

fn pg_err(e: tokio_postgres::Error) -> EnvError {
    EnvError::Postgres(crate::backup::pg::pg_error_text(&e))
}

/// Steps 2 to 5; failures of checks go into the report, errors end the drill.
async fn drive(
    scenario: &Scenario,
    seed: u64,
    env: &mut dyn Environment,
    report: &mut DrillReport,
    progress: &Progress,
) -> Result<(), DrillError> {
    let primary = connect(env.primary_config()).await?;
    workload::prepare(&primary).await?;
    let spec = WorkloadSpec {
        writers: scenario.workload.writers,
        rate_per_second: scenario.workload.rate_per_second,
        duration: scenario.workload.duration,
        payload_bytes: scenario.workload.payload_bytes as usize,
        seed,
    };
    let timeline_start = Instant::now();
    let handle = workload::start(env.primary_config(), spec)?;
    progress.say(&format!(
        "workload: {} writers, {}/s for {:?}",
        scenario.workload.writers, scenario.workload.rate_per_second, scenario.workload.duration
    ));
    let mut steps = scenario.steps.clone();
    steps.sort_by_key(Step::at);
    let mut disaster: Option<(String, DateTime<Utc>)> = None;
    for step in &steps {
        wait_until(
            timeline_start + step.at(),
            &handle,
            &primary,
            disaster.is_some(),
            progress,
        )
        .await;
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = run_step(step, env, &primary, &handle).await;
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
        wait_until(
            timeline_start + scenario.workload.duration,
            &handle,
            &primary,
            false,
            progress,
        )
        .await;
    }
    handle.stop();
    let ledger = handle.join().await;
    report.workload = Some(ledger.summary());
    if disaster.is_none() {
        let segment = switch_and_wait_archived(&primary).await?;
        progress.say(&format!("workload done; archive complete up to {segment}"));
        report.wal_archived = archived_count(&primary).await;
    }
    drop(primary);

    let backups = list_backups(env).await?;
    report.backups = backups.iter().map(|b| b.row.clone()).collect();
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
        .expect("not empty")
        .backup_name
        .clone();
        progress.say(&format!("restore latest from {backup}"));
        let (record, loss) = restore_and_verify(
            scenario,
            env,
            &ledger,
            "latest",
            &backup,
            None,
            disaster.is_some(),
        )
        .await;
        rto_s = Some(record.rto.total_s);
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
            last_point = recovered;
        }
        note_restore(report, record, progress);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let earliest = backups[0].finish_time + chrono::Duration::milliseconds(1);
    for i in 1..=scenario.restores.random_targets {
        let Some(target) = last_point.and_then(|to| ledger.pick_target(&mut rng, earliest, to))
        else {
            report.failures.push(format!(
                "no random target possible: the archive holds no commit after the first backup ended ({earliest})"
            ));
            break;
        };
        let backup = backups
            .iter()
            .rev()
            .find(|b| b.finish_time < target)
            .unwrap_or(&backups[0])
            .backup_name
            .clone();
        let label = format!("pitr-{i}");
        progress.say(&format!(
            "restore {label} to {} from {backup}",
            target.format("%H:%M:%S%.6f")
        ));
        let (record, _) =
            restore_and_verify(scenario, env, &ledger, &label, &backup, Some(target), false).await;
        rto_s = rto_s
            .or(Some(record.rto.total_s))
            .map(|r: f64| r.max(record.rto.total_s));
        note_restore(report, record, progress);
    }
    judge_objectives(scenario, report, rto_s);
    Ok(())
}

fn note_restore(report: &mut DrillReport, record: RestoreRecord, progress: &Progress) {
    progress.say(&format!(
        "restore {}: {} in {:.1}s",
        record.label,
        if record.passed { "verified" } else { "FAILED" },
        record.rto.total_s
    ));
    if !record.passed {
        report.failures.push(format!(
            "restore {} (target {}): {}",
            record.label,
            record
                .target
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "end of WAL".into()),
            record.error.as_deref().unwrap_or("failed")
        ));
    }
    report.restores.push(record);
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

async fn connect(config: tokio_postgres::Config) -> Result<tokio_postgres::Client, EnvError> {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(pg_err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn archived_count(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .query_one("SELECT archived_count FROM pg_stat_archiver", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Sleeps until `deadline`, printing progress every 5 s.
async fn wait_until(
    deadline: Instant,
    handle: &WorkloadHandle,
    primary: &tokio_postgres::Client,
    primary_gone: bool,
    progress: &Progress,
) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_secs(5))).await;
        if Instant::now() < deadline {
            let archived = if primary_gone {
                None
            } else {
                archived_count(primary).await
            };
            progress.say(&format!(
                "workload: {} sent, {} acknowledged; WAL archived: {}",
                handle.rows_sent(),
                handle.rows_acked(),
                archived.map_or("-".to_string(), |n| n.to_string())
            ));
        }
    }
}

async fn run_step(
    step: &Step,
    env: &mut dyn Environment,
    primary: &tokio_postgres::Client,
    handle: &WorkloadHandle,
) -> Result<String, EnvError> {
    match step {
        Step::BaseBackup { full, .. } => {
            let args: &[&str] = if *full {
                &["backup-push", "--full"]
            } else {
                &["backup-push"]
            };
            Ok(env.backup_tool(args).await?.trim().to_string())
        }
        Step::Delete { retain, .. } => apply_retention(env, *retain as usize).await,
        Step::SwitchWal { .. } => {
            let row = primary
                .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
                .await
                .map_err(pg_err)?;
            Ok(format!("switched from {}", row.get::<_, String>(0)))
        }
        Step::Checkpoint { .. } => {
            primary.batch_execute("CHECKPOINT").await.map_err(pg_err)?;
            Ok("checkpoint done".into())
        }
        Step::Pause { duration, .. } => {
            handle.pause();
            tokio::time::sleep(*duration).await;
            handle.resume();
            Ok(format!("paused writers for {duration:?}"))
        }
        Step::Disaster { kind, .. } => {
            env.kill_primary().await?;
            Ok(format!(
                "{kind:?}: primary SIGKILLed, data directory destroyed"
            ))
        }
        other => Err(EnvError::Other(format!(
            "step {} needs the containers environment",
            other.action()
        ))),
    }
}

async fn list_backups(env: &dyn Environment) -> Result<Vec<ListedBackup>, EnvError> {
    let json = env.backup_tool(&["backup-list", "--json"]).await?;
    serde_json::from_str(&json)
        .map_err(|e| EnvError::Other(format!("backup-list --json is not what we expect: {e}")))
}

/// `delete --confirm retain N`, then proves it: exactly the newest N
/// backups are listed, and the others cannot be fetched.
async fn apply_retention(env: &mut dyn Environment, retain: usize) -> Result<String, EnvError> {
    let before = list_backups(env).await?;
    env.backup_tool(&["delete", "--confirm", "retain", &retain.to_string()])
        .await?;
    let after = list_backups(env).await?;
    let names = |v: &[ListedBackup]| v.iter().map(|b| b.backup_name.clone()).collect::<Vec<_>>();
    let expected_kept = names(&before[before.len().saturating_sub(retain)..]);
    if names(&after) != expected_kept {
        return Err(EnvError::Other(format!(
            "after delete retain {retain}: listed {:?}, expected {expected_kept:?}",
            names(&after)
        )));
    }
    let gone = names(&before[..before.len().saturating_sub(retain)]);
    for name in &gone {
        if env
            .backup_tool(&["backup-fetch", "/nonexistent/pgdrill-retention-check", name])
            .await
            .is_ok()
        {
            return Err(EnvError::Other(format!(
                "deleted backup {name} can still be fetched"
            )));
        }
    }
    Ok(format!(
        "kept {expected_kept:?}; deleted and unfetchable: {gone:?}"
    ))
}

/// Forces a segment switch and waits until the archiver stored it.
async fn switch_and_wait_archived(client: &tokio_postgres::Client) -> Result<String, EnvError> {
    // A write first, so the switch has something to close.
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS pgdrill_switch(x int); INSERT INTO pgdrill_switch VALUES (1)")
        .await
        .map_err(pg_err)?;
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let archived: String = row.get(0);
        if archived.len() >= 24 && archived[8..24] >= segment[8..24] {
            return Ok(segment);
        }
        if Instant::now() > deadline {
            let failed: String = row.get(1);
            return Err(EnvError::Other(format!(
                "segment {segment} not archived within 300s (last archived {archived:?}, last failed {failed:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restores, verifies against the ledger, and records timings; never
/// fails: a failure is a failed record. After a disaster the archive ends
/// where it ends, so the restore must equal the ledger as of its own last
/// recovered commit; the second value then compares it with everything
/// acknowledged, which is the disaster's loss.
async fn restore_and_verify(
    scenario: &Scenario,
    env: &mut dyn Environment,
    ledger: &Ledger,
    label: &str,
    backup: &str,
    target: Option<DateTime<Utc>>,
    after_disaster: bool,
) -> (RestoreRecord, Option<verify::VerifyOutcome>) {
    let clock = Instant::now();
    let mut record = RestoreRecord {
        label: label.to_string(),
        kind: if target.is_some() { "pitr" } else { "latest" }.to_string(),
        target,
        backup: backup.to_string(),
        passed: false,
        error: None,
        verify: None,
        rto: RtoBreakdown::default(),
    };
    let restored = match env.restore(label, backup, target).await {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(e.to_string());
            record.rto.total_s = clock.elapsed().as_secs_f64();
            env.discard_restore(label).await;
            return (record, None);
        }
    };
    let t = &restored.timings;
    record.rto.fetch_s = t.fetch.as_secs_f64();
    record.rto.start_to_consistent_s = t.start_to_consistent.as_secs_f64();
    record.rto.consistent_to_promoted_s = t.consistent_to_promoted.as_secs_f64();
    record.rto.wal_segments_fetched = t.wal_segments;
    record.rto.wal_bytes_fetched = t.wal_segments * env.wal_segment_size();
    let verify_clock = Instant::now();
    let mut errors = Vec::new();
    let mut loss = None;
    let mut expected_at = target;
    if after_disaster {
        match verify::verify_restore(&restored.client, ledger, None).await {
            Ok(o) => {
                expected_at = Some(o.last_commit_time.unwrap_or(ledger.started_at()));
                loss = Some(o);
            }
            Err(e) => errors.push(format!("verification could not run: {e}")),
        }
    }
    let outcome = verify::verify_restore(&restored.client, ledger, expected_at).await;
    match outcome {
        Ok(o) => {
            if !o.passed {
                errors.push(o.summary());
            }
            record.verify = Some(o);
        }
        Err(e) => errors.push(format!("verification could not run: {e}")),
    }
    if scenario.verify.contains(&Check::Amcheck) {
        if let Err(e) = env.amcheck(label).await {
            errors.push(format!("amcheck: {e}"));
        }
    }
    record.rto.verify_s = verify_clock.elapsed().as_secs_f64();
    drop(restored);
    record.rto.total_s = clock.elapsed().as_secs_f64();
    record.passed = errors.is_empty();
    record.error = (!errors.is_empty()).then(|| errors.join("; "));
    env.discard_restore(label).await;
    (record, loss)
}

/// The scenario-file name of a disaster.
fn disaster_name(kind: DisasterKind) -> &'static str {
    match kind {
        DisasterKind::KillPrimary => "kill_primary",
    }
}
