//! Environments drills run in, behind one trait: `local` (PostgreSQL
//! processes and the embedded S3 server on loopback) is implemented;
//! `containers` and `kind` report themselves unavailable until built.

pub mod local;
pub mod s3_server;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Failures of an environment, with the cause spelled out.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The local environment's processes or files.
    #[error(transparent)]
    Local(#[from] local::LocalError),
    /// A backup-tool verb exited non-zero (or could not be read).
    #[error("backup tool `{command}` failed: {detail}")]
    BackupTool {
        /// The verb and its arguments.
        command: String,
        /// The exit status and the end of its stderr.
        detail: String,
    },
    /// The backup tool's settings, read as the tool reads them, are unusable.
    #[error("backup tool settings: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The archive's storage, reached directly (not through the tool).
    #[error("storage: {0}")]
    Storage(#[from] crate::backup::store::StoreError),
    /// A statement on a server failed.
    #[error("postgres: {0}")]
    Postgres(String),
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
    pub tool_secrets: Vec<(String, crate::config::Secret)>,
    /// postgresql.conf settings for the primary.
    pub postgres_settings: Vec<(String, String)>,
    pub wal_segsize_mb: Option<u32>,
}

/// How long the phases of one restore took.
#[derive(Debug, Clone, Default)]
pub struct RestoreTimings {
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
}

/// How a backup-tool run ended, and what it printed.
#[derive(Debug)]
pub struct ToolRun {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// What a drill needs from an environment.
#[async_trait]
pub trait Environment: Send + Sync {
    /// `local`, `containers` or `kind`.
    fn kind(&self) -> &'static str;
    /// The server version, e.g. "15.10".
    fn postgres_version(&self) -> String;
    /// Connection settings of the primary (for the workload's writers).
    fn primary_config(&self) -> tokio_postgres::Config;
    /// WAL segment size of the primary, in bytes.
    fn wal_segment_size(&self) -> u64;
    /// Runs a backup-tool verb against the primary and its storage, however
    /// it exits; `Err` only when it could not be run.
    async fn backup_tool_status(&self, args: &[&str]) -> Result<ToolRun, EnvError>;
    /// Runs a backup-tool verb that must succeed; returns its stdout.
    async fn backup_tool(&self, args: &[&str]) -> Result<String, EnvError> {
        let run = self.backup_tool_status(args).await?;
        if !run.status.success() {
            return Err(EnvError::BackupTool {
                command: args.join(" "),
                detail: format!("{}: {}", run.status, tail(run.stderr.trim(), 5)),
            });
        }
        Ok(run.stdout)
    }
    /// Deletes archived WAL segment `segment` (a 24-digit file name) from
    /// the storage, whatever its compression; returns the object's key.
    async fn delete_wal(&self, segment: &str) -> Result<String, EnvError>;
    /// SIGKILLs the primary and destroys its data directory.
    async fn kill_primary(&mut self) -> Result<(), EnvError>;
    /// Restores `backup` into a fresh server: to the end of the archive, or
    /// to `target`; returns once the server is promoted.
    async fn restore(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<DateTime<Utc>>,
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
        target: DateTime<Utc>,
    ) -> Result<Restored, EnvError>;
    /// Runs amcheck on restore `label`.
    async fn amcheck(&self, label: &str) -> Result<(), EnvError>;
    /// Stops restore `label` and frees what it used.
    async fn discard_restore(&mut self, label: &str);
    /// Keeps everything (processes stopped, directories left) for `--keep`;
    /// returns where.
    fn keep(&mut self) -> Option<std::path::PathBuf>;
}

/// The last `lines` lines of `text` (for error messages).
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether drills can run in an environment here; `Err` says why not.
pub fn availability(kind: crate::scenario::Environment) -> Result<(), String> {
    use crate::scenario::Environment as Kind;
    match kind {
        Kind::Local => local::PgBinaries::find()
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Kind::Containers => Err(
            "the containers environment is not implemented yet (issue: containers environment)"
                .into(),
        ),
        Kind::Kind => Err(
            "the kind environment is not implemented yet and needs a Kubernetes API server".into(),
        ),
    }
}
