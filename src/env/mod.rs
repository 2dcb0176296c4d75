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
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error("backup tool `{command}` failed: {detail}")]
    BackupTool { command: String, detail: String },
    #[error("postgres: {0}")]
    Postgres(String),
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

/// What a drill needs from an environment.
#[async_trait]
pub trait Environment: Send {
    /// `local`, `containers` or `kind`.
    fn kind(&self) -> &'static str;
    /// The server version, e.g. "15.10".
    fn postgres_version(&self) -> String;
    /// Connection settings of the primary (for the workload's writers).
    fn primary_config(&self) -> tokio_postgres::Config;
    /// WAL segment size of the primary, in bytes.
    fn wal_segment_size(&self) -> u64;
    /// Runs a backup-tool verb against the primary and its storage; returns
    /// its stdout.
    async fn backup_tool(&self, args: &[&str]) -> Result<String, EnvError>;
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
    /// Runs amcheck on restore `label`.
    async fn amcheck(&self, label: &str) -> Result<(), EnvError>;
    /// Stops restore `label` and frees what it used.
    async fn discard_restore(&mut self, label: &str);
    /// Keeps everything (processes stopped, directories left) for `--keep`;
    /// returns where.
    fn keep(&mut self) -> Option<std::path::PathBuf>;
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
