//! The `local` environment: PostgreSQL server processes and the embedded S3
//! server on loopback. Used by local drills and by the integration tests.
//!
//! PostgreSQL refuses to run as root, so when we are root every server and
//! every backup command that touches a data directory runs as the
//! `postgres` user, in directories that user owns.

mod cluster;
mod postgres;
mod process;
mod s3;

pub use cluster::{ArchiveStorage, ArchivingCluster, LocalArchive};
pub use postgres::{
    archiving_settings, conf_value, pg_cache, InitOptions, LocalPostgres, PgBinaries, DEFAULT_MAJOR,
};
pub use process::{as_user, free_port, owned_dir, run_checked, RunAs, WorkDir};
pub use s3::{drill_credentials, s3_settings, write_env_dir, LocalS3, LocalS3Faults};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::tail;
use crate::env::s3_server::ServerFault;
use crate::scenario::{OutageMode, RestorePhase};

/// Failures of the local environment.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("PostgreSQL {major} binaries not found (looked in: {}); install them with `bash ci/setup` (15 from Debian, 16 and 18 from PyPI into its cache), or set PGDRILL_PG_BIN_{major} to a directory holding initdb, pg_ctl and postgres of PostgreSQL {major}", looked.join(", "))]
    NoBinaries { major: u32, looked: Vec<String> },
    #[error("running as root but there is no `postgres` user to run PostgreSQL as: create it (apt-get install postgresql-15 does)")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Timeout(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let context = context.into();
    move |source| LocalError::Io { context, source }
}

/// Runs blocking work (initdb, pg_ctl: they wait for their servers) off the
/// async workers; a panic in it goes on here.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LocalError> + Send + 'static,
) -> Result<T, LocalError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(LocalError::Timeout(
            "cancelled: the runtime is shutting down".into(),
        )),
    }
}

/// Runs `work` on server `pg` off the async workers; hands the server back
/// with what `work` returned.
async fn on_server<T: Send + 'static>(
    mut pg: LocalPostgres,
    work: impl FnOnce(&mut LocalPostgres) -> Result<T, LocalError> + Send + 'static,
) -> Result<(LocalPostgres, Result<T, LocalError>), LocalError> {
    blocking(move || {
        let result = work(&mut pg);
        Ok((pg, result))
    })
    .await
}

/// The `local` drill environment: an [`LocalArchive`] (the embedded S3
/// server), an archiving primary, and restored servers, each a process on
/// loopback in one work directory that is removed at the end unless kept.
pub struct LocalEnvironment {
    // Field order is drop order: servers stop before the storage and the
    // directory go.
    primary: Option<LocalPostgres>,
    restores: std::collections::BTreeMap<String, LocalPostgres>,
    /// Restores go into the directory of the one before (see
    /// [`super::EnvSpec::restores_in_place`]).
    restores_in_place: bool,
    /// The label of the last restore (not failover) begun.
    last_restore: Option<String>,
    archive: LocalArchive,
    facts: super::EnvFacts,
    primary_config: tokio_postgres::Config,
}

impl LocalEnvironment {
    /// Starts storage and an archiving primary.
    pub async fn start(
        spec: &super::EnvSpec,
        pgdrill: &Path,
    ) -> Result<LocalEnvironment, LocalError> {
        let spec = spec.clone();
        let pgdrill = pgdrill.to_path_buf();
        // initdb and pg_ctl wait for their servers: off the async workers.
        blocking(move || {
            let storage = ArchiveStorage::S3 {
                bucket: spec.bucket.clone(),
                prefix: "drill".into(),
            };
            let mut tool_settings = spec.tool_settings.clone();
            tool_settings.extend(
                spec.tool_secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string())),
            );
            let mut archive = LocalArchive::start(
                &pgdrill,
                "pgdrill-drill-",
                &storage,
                &tool_settings,
                spec.postgres_major,
            )?;
            if spec.seed_commands {
                archive.invoke_as_seed()?;
            }
            let version = archive.bin.version()?;
            let init = InitOptions {
                wal_segsize_mb: spec.wal_segsize_mb,
                settings: spec.postgres_settings.clone(),
                start_segment: spec.start_segment.clone(),
            };
            let primary = archive.start_primary(&init, &[])?;
            Ok(LocalEnvironment {
                primary_config: workload_config(&primary),
                primary: Some(primary),
                restores: Default::default(),
                restores_in_place: spec.restores_in_place,
                last_restore: None,
                facts: super::EnvFacts {
                    kind: crate::scenario::Environment::Local,
                    postgres_version: version,
                    wal_segment_size: u64::from(spec.wal_segsize_mb.unwrap_or(16)) << 20,
                    storage_settings: archive.env_dir.clone(),
                    images: Vec::new(),
                },
                archive,
            })
        })
        .await
    }

    fn tool_command(&self, args: &[&str]) -> tokio::process::Command {
        let primary = self.primary.as_ref();
        let mut cmd = self.archive.tool_command(&self.archive.env_dir, primary);
        cmd.args(args).stdin(Stdio::null());
        if let Some(p) = primary {
            cmd.env("PGDATA", &p.data_dir);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    /// Moves restore `previous`'s data directory (its server stopped) to
    /// `data`, so the next restore goes into it, as into a directory
    /// where a restore was done before.
    async fn take_over_data_dir(
        &mut self,
        previous: &str,
        data: &Path,
    ) -> Result<(), super::EnvError> {
        use super::Environment;
        self.discard_restore(previous).await;
        let from = self
            .archive
            .dir(&format!("restore-{previous}"))?
            .join("data");
        if from.exists() {
            std::fs::rename(&from, data).map_err(|e| {
                super::EnvError::Other(format!(
                    "moving {} to {} for a restore in place: {e}",
                    from.display(),
                    data.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Restores `backup` into a fresh server named `label` (kept in
    /// `restores`, also when it fails to start): to the end of the archive
    /// or to `target`, archiving as `archiving` says. Returns once the
    /// server is promoted.
    async fn restore_server(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&super::zone::TargetTime>,
        archiving: Archiving,
        phases: &mut dyn super::RestorePhases,
    ) -> Result<super::Restored, super::EnvError> {
        use super::Environment;
        let base = self.archive.dir(&format!("restore-{label}"))?;
        let data = base.join("data");
        let data_s = data.display().to_string();
        let archive = archiving != Archiving::Off;
        let mut args = super::backup_fetch_args(&data_s, backup, target, archive);
        if let cluster::Invocation::Seed { .. } = self.archive.invocation {
            args.extend([
                "--restore-command".into(),
                self.archive.server_command("wal-fetch %f %p"),
            ]);
        }
        if !archive && self.restores_in_place {
            if let Some(previous) = self.last_restore.replace(label.to_string()) {
                self.take_over_data_dir(&previous, &data).await?;
                args.push("--force".into());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        phases.reached(RestorePhase::BackupFetch);
        let run = if phases.interrupt_fetch() {
            tokio::select! {
                run = self.backup_tool_status(&args) => run?,
                files = files_written(&data, std::time::SystemTime::now(), super::INTERRUPT_AFTER_FILES) => {
                    // Dropping the run killed backup-fetch (kill_on_drop).
                    phases.fetch_interrupted(files);
                    return Err(super::fetch_failed(
                        None,
                        &format!("killed by the drill with {files} files written"),
                    ));
                }
            }
        } else {
            self.backup_tool_status(&args).await?
        };
        if !run.status.success() {
            return Err(super::fetch_failed(run.status.code(), &run.stderr));
        }
        let fetch = started.elapsed();
        if archiving == Archiving::Held {
            hold_archiving(&data)?;
        }
        let pg = LocalPostgres::existing(&self.archive.bin, &base, &data, self.archive.run_as)?;
        let started = Instant::now();
        phases.reached(RestorePhase::WalReplay);
        let (pg, start_result) = on_server(pg, |pg| pg.start(Duration::from_secs(1800))).await?;
        let start_to_consistent = started.elapsed();
        let log_file = pg.log_file.clone();
        self.restores.insert(label.to_string(), pg);
        if let Err(e) = start_result {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            return Err(super::recovery_failed(&log, e));
        }
        phases.reached(RestorePhase::Consistent);
        let pg = &self.restores[label];
        let client = pg.connect().await?;
        let log_tail = || async { pg.log_tail(20) };
        let consistent_to_promoted =
            super::pg::wait_promoted(&client, label, Duration::from_secs(1800), log_tail).await?;
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        Ok(super::Restored {
            client,
            timings: super::RestoreTimings {
                scheduling: Duration::ZERO,
                fetch,
                start_to_consistent,
                consistent_to_promoted,
                wal_segments: super::restored_wal_files(&log),
            },
            stop: super::RecoveryStop::from_server_log(&log),
        })
    }
}

/// Whether a restored server archives into the primary's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archiving {
    /// Never (`backup-fetch --no-archive`): a restore to check.
    Off,
    /// As the primary does: a failover.
    On,
    /// As the primary does once let go: a twin ([`Archiving::Held`] until
    /// `ALTER SYSTEM RESET archive_command`).
    Held,
}

/// Makes the archive_command of the cluster in `data` fail until `ALTER
/// SYSTEM RESET archive_command` (it is set in `postgresql.auto.conf`,
/// which backup-fetch has written last).
fn hold_archiving(data: &Path) -> Result<(), super::EnvError> {
    use std::io::Write;
    let auto = data.join("postgresql.auto.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&auto)
        .and_then(|mut f| f.write_all(b"archive_command = 'false'\n"))
        .map_err(|e| {
            super::EnvError::Other(format!("holding archiving in {}: {e}", auto.display()))
        })
}

/// Resolves once at least `at_least` files under `dir` were written since
/// `since` (counted every 10 ms, off the async workers): how many. Files
/// already there (a restore in place) do not count.
async fn files_written(dir: &Path, since: std::time::SystemTime, at_least: u64) -> u64 {
    loop {
        let d = dir.to_path_buf();
        let files = blocking(move || Ok(count_files(&d, since)))
            .await
            .unwrap_or(0);
        if files >= at_least {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Regular files under `dir` whose inode changed at or after `since`
/// (ctime: a restored modification time does not hide a new file); 0
/// while `dir` does not exist.
fn count_files(dir: &Path, since: std::time::SystemTime) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let changed = |m: &std::fs::Metadata| {
        let ctime = std::time::Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        std::time::UNIX_EPOCH + ctime >= since
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => count_files(&e.path(), since),
            Ok(m) if m.is_file() && changed(&m) => 1,
            _ => 0,
        })
        .sum()
}

/// Connection settings for the workload's writers on `pg`.
fn workload_config(pg: &LocalPostgres) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&pg.socket_dir)
        .port(pg.port)
        .user("postgres")
        .dbname("postgres")
        .application_name("pgdrill-workload");
    config
}

#[async_trait::async_trait]
impl super::Environment for LocalEnvironment {
    fn facts(&self) -> &super::EnvFacts {
        &self.facts
    }

    fn primary_config(&self) -> tokio_postgres::Config {
        self.primary_config.clone()
    }

    async fn backup_tool_status(&self, args: &[&str]) -> Result<super::ToolRun, super::EnvError> {
        let out = self
            .tool_command(args)
            .output()
            .await
            .map_err(io_err("starting the backup tool"))?;
        Ok(super::ToolRun {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn kill_primary(&mut self) -> Result<(), super::EnvError> {
        if let Some(p) = self.primary.take() {
            let (p, killed) = on_server(p, LocalPostgres::kill).await?;
            killed?;
            tokio::fs::remove_dir_all(&p.data_dir)
                .await
                .map_err(io_err("destroying the primary's data directory"))?;
        }
        Ok(())
    }

    async fn restore(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<&super::zone::TargetTime>,
        phases: &mut dyn super::RestorePhases,
    ) -> Result<super::Restored, super::EnvError> {
        self.restore_server(label, backup, target, Archiving::Off, phases)
            .await
    }

    fn outage_switch(&self) -> Option<std::sync::Arc<dyn super::OutageSwitch>> {
        let faults = self.archive.s3.as_ref()?.faults();
        Some(std::sync::Arc::new(faults))
    }

    fn storage_faults(&mut self) -> Option<&mut dyn super::StorageFaults> {
        Some(self)
    }

    async fn fail_over(
        &mut self,
        label: &str,
        backup: &str,
        target: &super::zone::TargetTime,
    ) -> Result<super::Restored, super::EnvError> {
        if let Some(old) = self.primary.take() {
            on_server(old, |old| old.stop("fast")).await?.1?;
        }
        let restored = self
            .restore_server(
                label,
                backup,
                Some(target),
                Archiving::On,
                &mut super::Unwatched,
            )
            .await?;
        let pg = self
            .restores
            .remove(label)
            .expect("restore_server keeps the server");
        self.primary_config = workload_config(&pg);
        self.primary = Some(pg);
        Ok(restored)
    }

    async fn promote_twin(
        &mut self,
        label: &str,
        backup: &str,
        target: &super::zone::TargetTime,
    ) -> Result<super::Restored, super::EnvError> {
        self.restore_server(
            label,
            backup,
            Some(target),
            Archiving::Held,
            &mut super::Unwatched,
        )
        .await
    }

    async fn amcheck(&self, label: &str) -> Result<crate::verify::Check, super::EnvError> {
        let pg = self
            .restores
            .get(label)
            .ok_or_else(|| super::EnvError::Other(format!("no restore {label}")))?;
        Ok(pg.amcheck().await?)
    }

    async fn checksums(&mut self, label: &str) -> Result<crate::verify::Check, super::EnvError> {
        let pg = self
            .restores
            .remove(label)
            .ok_or_else(|| super::EnvError::Other(format!("no restore {label}")))?;
        let (pg, stopped) = on_server(pg, |pg| pg.stop("fast")).await?;
        self.restores.insert(label.to_string(), pg);
        stopped?;
        Ok(self.restores[label].checksums().await?)
    }

    async fn discard_restore(&mut self, label: &str) {
        if let Some(pg) = self.restores.remove(label) {
            let _ = on_server(pg, |pg| pg.stop("immediate")).await;
        }
    }

    async fn teardown(self: Box<Self>, keep: bool) -> Option<PathBuf> {
        let mut env = *self;
        // Stopping the servers waits for them; removing the directory
        // walks it: both off the async workers.
        blocking(move || {
            let kept = keep.then(|| env.archive.work.keep());
            drop(env);
            Ok(kept)
        })
        .await
        .ok()
        .flatten()
    }
}

#[async_trait::async_trait]
impl super::OutageSwitch for LocalS3Faults {
    async fn outage(
        &self,
        mode: OutageMode,
        duration: Duration,
    ) -> Result<String, super::EnvError> {
        let faults = self.clone();
        let start = move |on: bool| -> std::io::Result<()> {
            match mode {
                OutageMode::Pause => faults.freeze(on),
                OutageMode::Disconnect => faults.set(on.then_some(ServerFault::Refuse)),
                OutageMode::Errors => faults.set(on.then_some(ServerFault::Errors)),
            }
        };
        start(true).map_err(io_err("failing the storage"))?;
        tokio::time::sleep(duration).await;
        start(false).map_err(io_err("restoring the storage"))?;
        Ok(format!(
            "storage {} for {duration:?}",
            match mode {
                OutageMode::Pause => "stopped (SIGSTOP: connections hang)",
                OutageMode::Disconnect => "closing every connection unanswered",
                OutageMode::Errors => "answering every request 503",
            }
        ))
    }
}

#[async_trait::async_trait]
impl super::StorageFaults for LocalEnvironment {
    async fn storage_outage(
        &mut self,
        mode: OutageMode,
        duration: Duration,
    ) -> Result<String, super::EnvError> {
        use super::Environment;
        let switch = self.outage_switch().ok_or_else(|| {
            super::EnvError::Other("the local environment's storage is no S3 server".into())
        })?;
        switch.outage(mode, duration).await
    }

    async fn limit_storage_link(
        &mut self,
        _limit: &super::fault::LinkLimit,
    ) -> Result<String, super::EnvError> {
        Err(super::EnvError::Other(
            "network_latency is not available in the local environment (the storage shares loopback); use environment: containers".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_written_since_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        std::fs::write(dir.path().join("old"), "x").unwrap();
        std::fs::write(dir.path().join("base/5/old"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let since = std::time::SystemTime::now();
        assert_eq!(count_files(dir.path(), since), 0);
        // The file system's clock is coarse (a tick of a few ms).
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("base/5/new"), "x").unwrap();
        std::fs::write(dir.path().join("new"), "x").unwrap();
        assert_eq!(count_files(dir.path(), since), 2);
        assert_eq!(count_files(&dir.path().join("absent"), since), 0);
    }
}
