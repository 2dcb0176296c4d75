//! Environments drills run in, behind one trait: `local` (PostgreSQL
//! processes and the embedded S3 server on loopback), `containers`
//! (Docker, through testcontainers) and `kind` (a Kubernetes cluster,
//! through its API with kube-rs).

pub mod containers;
pub mod fault;
pub mod image_layout;
pub mod kind;
pub mod local;
pub mod pg;
pub mod recovery;
pub mod recovery_stop;
pub mod s3_server;
pub mod zone;

pub use fault::{damage_wal, Damage};
pub use pg::connect_once;
pub use recovery::RestoreFailure;
pub use recovery_stop::RecoveryStop;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Failures of an environment, with the cause spelled out.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The local environment's processes or files.
    #[error(transparent)]
    Local(#[from] local::LocalError),
    /// The containers environment's Docker side.
    #[error(transparent)]
    Containers(#[from] containers::ContainersError),
    /// The kind environment's Kubernetes side.
    #[error(transparent)]
    Kube(#[from] kind::KubeError),
    /// A backup-tool verb exited non-zero (or could not be read).
    #[error("backup tool `{command}` failed: {detail}")]
    BackupTool {
        /// The verb and its arguments.
        command: String,
        /// The exit status and the end of its stderr.
        detail: String,
    },
    /// A restore ended without a promoted server: `failure` says how,
    /// `detail` shows the evidence (backup-fetch's stderr, the server log).
    #[error("{failure}: {detail}")]
    Restore {
        failure: RestoreFailure,
        detail: String,
    },
    /// The backup tool's settings, read as the tool reads them, are unusable.
    #[error("backup tool settings: {0}")]
    Config(#[from] crate::backup::config::ConfigError),
    /// The archive's storage, reached directly (not through the tool).
    #[error("storage: {0}")]
    Storage(#[from] crate::backup::store::StoreError),
    /// A statement on a server failed.
    #[error("postgres: {0}")]
    Postgres(crate::backup::pg::PgError),
    /// Anything else, spelled out.
    #[error("{0}")]
    Other(String),
}

/// Settings for the drill's primary and storage.
#[derive(Debug, Clone, Default)]
pub struct EnvSpec {
    /// Bucket for the archive.
    pub bucket: String,
    /// Extra backup-tool settings (WALG_*, PGDRILL_SABOTAGE).
    pub tool_settings: Vec<(String, String)>,
    /// Backup-tool settings that are secrets (a key's passphrase): handed
    /// to the tool as its settings are, never printed.
    pub tool_secrets: Vec<(String, crate::backup::config::Secret)>,
    /// postgresql.conf settings for the primary.
    pub postgres_settings: Vec<(String, String)>,
    pub wal_segsize_mb: Option<u32>,
    /// The WAL segment the primary writes first (`pg_resetwal -l`);
    /// `None`: where initdb leaves it. Local and containers environments.
    pub start_segment: Option<String>,
    /// Each restore after the first goes into the one before's data
    /// directory, with `backup-fetch --force`. Local environment only.
    pub restores_in_place: bool,
    /// Run the tool as the seed's commands do: `envdir DIR wal-g VERB`.
    /// Local environment only.
    pub seed_commands: bool,
    /// The scenario's PostgreSQL major version (picks default images).
    pub postgres_major: u32,
    /// The scenario's `images` (containers only).
    pub images: crate::scenario::Images,
    /// Where container logs go (the drill's report directory).
    pub log_dir: Option<std::path::PathBuf>,
}

/// How long the phases of one restore took.
#[derive(Debug, Clone, Default)]
pub struct RestoreTimings {
    /// Until the restore's fetch started (kind: its Job's pod scheduled
    /// and started; zero elsewhere).
    pub scheduling: Duration,
    /// backup-fetch.
    pub fetch: Duration,
    /// Server start until it accepts connections (consistent state).
    pub start_to_consistent: Duration,
    /// Until recovery ended and the server was promoted.
    pub consistent_to_promoted: Duration,
    /// WAL segments restore_command delivered.
    pub wal_segments: u64,
}

/// A restored, promoted server.
pub struct Restored {
    pub client: tokio_postgres::Client,
    pub timings: RestoreTimings,
    /// Where its recovery stopped, by its own log.
    pub stop: RecoveryStop,
}

/// How a backup-tool run ended, and what it printed.
#[derive(Debug)]
pub struct ToolRun {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolRun {
    /// Its stdout when it exited 0; else the failure of verb `args`, with
    /// the end of its stderr.
    pub fn stdout_if_ok(self, args: &[&str]) -> Result<String, EnvError> {
        if !self.status.success() {
            return Err(EnvError::BackupTool {
                command: args.join(" "),
                detail: format!("{}: {}", self.status, tail(self.stderr.trim(), 5)),
            });
        }
        Ok(self.stdout)
    }
}

/// What a started environment is: fixed for its life, shown in the report.
#[derive(Debug, Clone)]
pub struct EnvFacts {
    pub kind: crate::scenario::Environment,
    /// The server version, e.g. "15.10".
    pub postgres_version: String,
    /// WAL segment size of the primary, in bytes.
    pub wal_segment_size: u64,
    /// Tool settings (an env directory) that reach the archive's storage
    /// from this host, for faults injected from outside.
    pub storage_settings: std::path::PathBuf,
    /// The container images in use (none outside containers).
    pub images: Vec<ImageRecord>,
}

/// An image as the report shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRecord {
    /// `postgres` or `storage`.
    pub role: String,
    /// The reference used.
    pub reference: String,
    /// The engine's image id (`sha256:...`).
    pub id: String,
    /// The image's creation time, as the engine reports it.
    pub created: String,
}

impl ToolRun {
    /// Hands this run of a verification program to `judge` (see
    /// [`crate::verify::amcheck_check`]).
    pub fn judged(
        &self,
        judge: fn(bool, &str, &str) -> crate::verify::Check,
    ) -> crate::verify::Check {
        judge(self.status.success(), &self.stdout, &self.stderr)
    }
}

/// What a drill needs from an environment.
#[async_trait]
pub trait Environment: Send + Sync {
    /// What it is.
    fn facts(&self) -> &EnvFacts;
    /// Connection settings of the primary (for the workload's writers); a
    /// failover changes them.
    fn primary_config(&self) -> tokio_postgres::Config;
    /// Runs a backup-tool verb against the primary and its storage, however
    /// it exits; `Err` only when it could not be run.
    async fn backup_tool_status(&self, args: &[&str]) -> Result<ToolRun, EnvError>;
    /// Runs a backup-tool verb that must succeed; returns its stdout.
    async fn backup_tool(&self, args: &[&str]) -> Result<String, EnvError> {
        self.backup_tool_status(args).await?.stdout_if_ok(args)
    }
    /// Takes a base backup as this environment's operators do (`backup-push`,
    /// `--full` when asked); returns the new backup's name.
    async fn base_backup(&mut self, full: bool) -> Result<String, EnvError> {
        let args: &[&str] = if full {
            &["backup-push", "--full"]
        } else {
            &["backup-push"]
        };
        Ok(self.backup_tool(args).await?.trim().to_string())
    }
    /// The storage faults this environment can inject, when it can: exactly
    /// when its kind [`supports`](crate::scenario::Environment::supports)
    /// them.
    fn storage_faults(&mut self) -> Option<&mut dyn StorageFaults> {
        None
    }
    /// SIGKILLs the primary and destroys its data directory.
    async fn kill_primary(&mut self) -> Result<(), EnvError>;
    /// An owned handle that fails this environment's storage for a while,
    /// when it can: held by a task while a restore runs.
    fn outage_switch(&self) -> Option<Arc<dyn OutageSwitch>> {
        None
    }
    /// Restores `backup` into a fresh server: to the end of the archive, or
    /// to `target`; returns once the server is promoted. A restore that
    /// ends without a promoted server is [`EnvError::Restore`]. `phases`
    /// is told as the restore reaches each of its phases.
    async fn restore(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&zone::TargetTime>,
        phases: &mut dyn RestorePhases,
    ) -> Result<Restored, EnvError>;
    /// Makes a point-in-time restore of `backup` to `target` the primary:
    /// stops the primary, restores into a fresh server (named `label`)
    /// that archives into the same storage, so its promotion starts a new
    /// timeline, and returns once it is promoted. From then on
    /// [`Environment::primary_config`] and the backup tool use it.
    async fn fail_over(
        &mut self,
        label: &str,
        backup: &str,
        target: &zone::TargetTime,
    ) -> Result<Restored, EnvError>;
    /// Restores `backup` to `target` into a fresh server `label` that
    /// archives into the primary's storage, with its archiving held (its
    /// `archive_command` fails, set in `postgresql.auto.conf`, so that
    /// `ALTER SYSTEM RESET archive_command` lets it go), and returns once
    /// it is promoted: a second server promoted from the point a failover
    /// restores to, which takes the same new timeline as that failover
    /// because it has archived nothing. It stays restore `label`, not the
    /// primary. Local environment (validation keeps it from the others).
    async fn promote_twin(
        &mut self,
        label: &str,
        backup: &str,
        target: &zone::TargetTime,
    ) -> Result<Restored, EnvError> {
        let _ = (label, backup, target);
        Err(EnvError::Other(format!(
            "a twin promotion is not available in environment `{}`",
            self.facts().kind.as_str()
        )))
    }
    /// Runs `pg_amcheck` ([`crate::verify::AMCHECK_ARGS`]) on restore
    /// `label`; the check fails when it finds corruption.
    async fn amcheck(&self, label: &str) -> Result<crate::verify::Check, EnvError>;
    /// Shuts restore `label` down cleanly and runs `pg_checksums --check`
    /// on its data directory; the restore serves no query after this.
    async fn checksums(&mut self, label: &str) -> Result<crate::verify::Check, EnvError>;
    /// Stops restore `label` and frees what it used.
    async fn discard_restore(&mut self, label: &str);
    /// Stops everything and removes it, or with `keep` leaves it for
    /// inspection (processes stopped, directories, containers and volumes
    /// left) and returns where. Dropping an environment without this still
    /// cleans up, blocking.
    async fn teardown(self: Box<Self>, keep: bool) -> Option<std::path::PathBuf>;
}

/// Told as a restore reaches each phase, so that a drill can fail the
/// storage exactly there; and asked whether to kill backup-fetch mid-way.
pub trait RestorePhases: Send {
    fn reached(&mut self, phase: crate::scenario::RestorePhase);
    /// Whether the environment is to kill backup-fetch (SIGKILL) once it
    /// has written [`INTERRUPT_AFTER_FILES`] files (local environment;
    /// validation keeps it from the others).
    fn interrupt_fetch(&self) -> bool {
        false
    }
    /// backup-fetch was killed with `files` files written.
    fn fetch_interrupted(&mut self, _files: u64) {}
}

/// Files backup-fetch has written when [`RestorePhases::interrupt_fetch`]
/// kills it: about a tenth of a fresh cluster's, so the directory holds a
/// part of the backup, and a file may be half written.
pub const INTERRUPT_AFTER_FILES: u64 = 100;

/// Phases nobody watches.
pub struct Unwatched;

impl RestorePhases for Unwatched {
    fn reached(&mut self, _: crate::scenario::RestorePhase) {}
}

/// Fails an environment's storage for a while; owned and shared, so that
/// a task can do it while the environment restores.
#[async_trait]
pub trait OutageSwitch: Send + Sync {
    /// Makes the storage fail in `mode` for `duration`, then serve again;
    /// says how.
    async fn outage(
        &self,
        mode: crate::scenario::OutageMode,
        duration: Duration,
    ) -> Result<String, EnvError>;
}

/// Faults on the archive's storage that only some environments can inject.
#[async_trait]
pub trait StorageFaults: Send {
    /// Makes the storage unreachable for `duration`; says how.
    async fn storage_outage(
        &mut self,
        mode: crate::scenario::OutageMode,
        duration: Duration,
    ) -> Result<String, EnvError>;
    /// Delays or throttles the storage's network link from now on.
    async fn limit_storage_link(&mut self, limit: &fault::LinkLimit) -> Result<String, EnvError>;
}

/// Runs `fut` to completion from a `Drop` (on any tokio runtime).
pub(crate) fn block_on_in_drop(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        _ => {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(fut)
                }
            })
            .join();
        }
    }
}

/// The last `lines` lines of `text` (for error messages).
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `backup-fetch DATA_DIR BACKUP ...` as every environment's restores run
/// it: to `target` or (None) the end of the archive; the restored server
/// archives only with `archive` (a failover).
pub(crate) fn backup_fetch_args(
    data_dir: &str,
    backup: &str,
    target: Option<&zone::TargetTime>,
    archive: bool,
) -> Vec<String> {
    let mut args = vec![
        "backup-fetch".to_string(),
        data_dir.to_string(),
        backup.to_string(),
    ];
    if !archive {
        args.push("--no-archive".into());
    }
    match target {
        Some(t) => args.extend(["--recovery-target-time".to_string(), t.arg()]),
        None => args.push("--recover".into()),
    }
    args
}

/// The error for a restore whose backup-fetch exited with `exit_code`
/// (None: killed) and printed `stderr`.
pub(crate) fn fetch_failed(exit_code: Option<i32>, stderr: &str) -> EnvError {
    EnvError::Restore {
        failure: RestoreFailure::Fetch { exit_code },
        detail: tail(stderr.trim(), 5),
    }
}

/// The error for a restored server that stopped (or never started):
/// why, read from its `log`, with `error` as the evidence.
pub(crate) fn recovery_failed(log: &str, error: impl std::fmt::Display) -> EnvError {
    EnvError::Restore {
        failure: RestoreFailure::from_server_log(log),
        detail: error.to_string(),
    }
}

/// Counts the WAL files restore_command delivered, from a server's log.
pub(crate) fn restored_wal_files(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("restored log file") && !l.contains(".history"))
        .count() as u64
}

/// Starts the environment of kind `kind`: storage and an archiving primary.
pub async fn start(
    kind: crate::scenario::Environment,
    spec: &EnvSpec,
    pgdrill: &Path,
) -> Result<Box<dyn Environment>, EnvError> {
    use crate::scenario::{Capability, Environment as Kind};
    let mut env: Box<dyn Environment> = match kind {
        Kind::Local => Box::new(local::LocalEnvironment::start(spec, pgdrill).await?),
        Kind::Containers => {
            Box::new(containers::ContainersEnvironment::start(spec, pgdrill).await?)
        }
        Kind::Kind => Box::new(kind::KubeEnvironment::start(spec, pgdrill).await?),
    };
    // The validator trusts the kind's declared capabilities.
    let declared =
        kind.supports(Capability::StorageOutage) || kind.supports(Capability::LinkShaping);
    if env.storage_faults().is_some() != declared {
        return Err(EnvError::Other(format!(
            "internal error: the {} environment's storage faults do not match its declared capabilities",
            kind.as_str()
        )));
    }
    Ok(env)
}

/// Whether drills of `scenario` can run here; `Err` says why not.
pub async fn availability(scenario: &crate::scenario::Scenario) -> Result<(), String> {
    use crate::scenario::Environment as Kind;
    match scenario.environment {
        Kind::Local => {
            let major = scenario.postgres.version;
            let bin = local::PgBinaries::find(major).map_err(|e| e.to_string())?;
            let needed = scenario.needed_extensions();
            let missing = bin.missing_extensions(&needed).map_err(|e| e.to_string())?;
            match missing.is_empty() {
                true => Ok(()),
                false => Err(format!(
                    "the PostgreSQL {major} binaries in {} lack the extension(s) {} that this scenario needs (its verify checks or DDL workload); use binaries with contrib (PGDRILL_PG_BIN_{major}), or drop those checks",
                    bin.dir.display(),
                    missing.join(", ")
                )),
            }
        }
        Kind::Containers => {
            containers::engine_answers().await?;
            if scenario.needs_netem() {
                crate::env::fault::netem_available()?;
            }
            containers::images_available(scenario).await
        }
        Kind::Kind => kind::availability().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_wal_files_count_segments_not_history_files() {
        let log = "LOG:  restored log file \"000000010000000000000003\" from archive\nLOG:  restored log file \"00000002.history\" from archive\nLOG: other";
        assert_eq!(restored_wal_files(log), 1);
    }
}
