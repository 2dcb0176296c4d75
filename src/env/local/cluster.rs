//! The archiving-cluster fixture that the local environment, the
//! integration tests and `pgdrill bench` share: storage (the embedded S3
//! server or a directory), the env directory the backup tool reads, and a
//! primary whose `archive_command` is `pgdrill wal-push %p` into that
//! storage, all in one work directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::postgres::{
    archiving_settings_with, pgdrill_command, InitOptions, LocalPostgres, PgBinaries,
};
use super::process::{as_user, owned_dir, RunAs, WorkDir};
use super::s3::{write_env_dir, LocalS3};
use super::LocalError;

/// Where an archive keeps its objects.
#[derive(Debug, Clone)]
pub enum ArchiveStorage {
    /// The embedded S3 server, with one bucket; the archive is at `prefix`.
    S3 { bucket: String, prefix: String },
    /// A directory in the work directory (`WALG_FILE_PREFIX`).
    Dir,
}

/// How the backup tool is invoked.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// `pgdrill --env-dir DIR VERB ...`.
    Pgdrill,
    /// `envdir DIR wal-g VERB ...`, as the seed's Kubernetes setup runs
    /// WAL-G; `walg` links to pgdrill's binary.
    Seed { walg: PathBuf },
}

/// Whether `program` is an executable in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Storage and the settings that reach it; everything lives in `work`,
/// removed on drop unless kept.
#[derive(Debug)]
pub struct LocalArchive {
    /// The S3 server, when the storage is S3; stopped on drop.
    pub s3: Option<LocalS3>,
    /// The env directory of the archive: its storage settings plus the
    /// extra settings it was started with.
    pub env_dir: PathBuf,
    /// What `env_dir` holds, as variables.
    pub storage_vars: Vec<(String, String)>,
    pub bin: PgBinaries,
    pub run_as: Option<RunAs>,
    /// The pgdrill binary that archives and restores.
    pub pgdrill: PathBuf,
    /// How the tool is invoked.
    pub invocation: Invocation,
    /// Last, so that it goes after the servers that use it.
    pub work: WorkDir,
}

impl LocalArchive {
    /// Creates a work directory named `work_prefix…`, starts the storage and
    /// writes the env directory: the storage's settings, then `extra`.
    pub fn start(
        pgdrill: &Path,
        work_prefix: &str,
        storage: &ArchiveStorage,
        extra: &[(String, String)],
        major: u32,
    ) -> Result<LocalArchive, LocalError> {
        let bin = PgBinaries::find(major)?;
        let run_as = RunAs::detect()?;
        let work = WorkDir::new(work_prefix, run_as)?;
        let (s3, mut storage_vars) = match storage {
            ArchiveStorage::S3 { bucket, prefix } => {
                let s3 = LocalS3::start(pgdrill, &work.path().join("s3"), bucket)?;
                let vars = s3.settings(prefix);
                (Some(s3), vars)
            }
            ArchiveStorage::Dir => {
                let dir = owned_dir(work.path(), "archive", run_as)?;
                let vars = vec![("WALG_FILE_PREFIX".to_string(), dir.display().to_string())];
                (None, vars)
            }
        };
        storage_vars.extend(extra.iter().cloned());
        let env_dir = work.path().join("env");
        write_env_dir(&env_dir, &storage_vars, run_as)?;
        Ok(LocalArchive {
            s3,
            env_dir,
            storage_vars,
            bin,
            run_as,
            pgdrill: pgdrill.to_path_buf(),
            invocation: Invocation::Pgdrill,
            work,
        })
    }

    /// From now on the tool is invoked as the seed's setup invokes WAL-G:
    /// `envdir ENV_DIR wal-g VERB ...`, `wal-g` being a link to pgdrill's
    /// binary in the work directory; and the env directory is rewritten as
    /// hands leave one (trailing spaces and tabs, a second line of notes:
    /// `envdir` reads the first line and trims them).
    pub fn invoke_as_seed(&mut self) -> Result<(), LocalError> {
        if !on_path("envdir") {
            return Err(LocalError::Command {
                what: "envdir".into(),
                detail: "daemontools' envdir is not on PATH, and conditions.seed_commands runs \
                         the tool through it: install it with `bash ci/setup` (or `apt-get \
                         install daemontools`)"
                    .into(),
            });
        }
        let bin = owned_dir(self.work.path(), "bin", self.run_as)?;
        let walg = bin.join("wal-g");
        std::os::unix::fs::symlink(&self.pgdrill, &walg)
            .map_err(super::io_err(format!("linking {}", walg.display())))?;
        let hand_edited: Vec<(String, String)> = self
            .storage_vars
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    format!("{v} \t \nset by hand; envdir reads line one"),
                )
            })
            .collect();
        write_env_dir(&self.env_dir, &hand_edited, self.run_as)?;
        self.invocation = Invocation::Seed { walg };
        Ok(())
    }

    /// The command line of `verb` for a server setting (archive_command,
    /// restore_command) as this archive's invocation writes it.
    pub fn server_command(&self, verb: &str) -> String {
        match &self.invocation {
            Invocation::Pgdrill => pgdrill_command(&self.pgdrill, &self.env_dir, verb),
            Invocation::Seed { walg } => format!(
                "envdir {} {} {verb}",
                self.env_dir.display(),
                walg.display()
            ),
        }
    }

    /// A fresh directory `name` in the work directory, owned by the server
    /// user.
    pub fn dir(&self, name: &str) -> Result<PathBuf, LocalError> {
        owned_dir(self.work.path(), name, self.run_as)
    }

    /// Writes another env directory `name` holding `vars`; returns it.
    pub fn env_dir_with(
        &self,
        name: &str,
        vars: &[(String, String)],
    ) -> Result<PathBuf, LocalError> {
        let dir = self.work.path().join(name);
        write_env_dir(&dir, vars, self.run_as)?;
        Ok(dir)
    }

    /// `initdb`s and starts a primary in `primary/` that archives into this
    /// storage, with `extra` then `init.settings` in postgresql.conf.
    pub fn start_primary(
        &self,
        init: &InitOptions,
        extra: &[(&str, &str)],
    ) -> Result<LocalPostgres, LocalError> {
        let mut settings = archiving_settings_with(&self.server_command("wal-push %p"), extra);
        settings.extend(init.settings.iter().cloned());
        let base = self.dir("primary")?;
        let options = InitOptions {
            settings,
            ..init.clone()
        };
        let mut primary = LocalPostgres::init(&self.bin, &base, self.run_as, &options)?;
        primary.start(Duration::from_secs(60))?;
        Ok(primary)
    }

    /// `pgdrill --env-dir ENV_DIR`, run as the server user, with `primary`'s
    /// connection settings (PGHOST, PGPORT, PGUSER) when given.
    pub fn tool_command(&self, env_dir: &Path, primary: Option<&LocalPostgres>) -> Command {
        let mut cmd = match &self.invocation {
            Invocation::Pgdrill => {
                let mut cmd = Command::new(&self.pgdrill);
                cmd.arg("--env-dir").arg(env_dir);
                cmd
            }
            Invocation::Seed { walg } => {
                let mut cmd = Command::new("envdir");
                cmd.arg(env_dir).arg(walg);
                cmd
            }
        };
        if let Some(p) = primary {
            cmd.envs(p.pg_settings());
        }
        as_user(&mut cmd, self.run_as);
        cmd
    }
}

/// A primary archiving into a [`LocalArchive`]. The primary stops before
/// the storage does.
#[derive(Debug)]
pub struct ArchivingCluster {
    pub primary: LocalPostgres,
    pub archive: LocalArchive,
}

impl ArchivingCluster {
    /// Starts the storage and the primary; see [`LocalArchive::start`] and
    /// [`LocalArchive::start_primary`].
    pub fn start(
        pgdrill: &Path,
        work_prefix: &str,
        storage: &ArchiveStorage,
        tool_settings: &[(String, String)],
        init: &InitOptions,
        primary_settings: &[(&str, &str)],
        major: u32,
    ) -> Result<ArchivingCluster, LocalError> {
        let archive = LocalArchive::start(pgdrill, work_prefix, storage, tool_settings, major)?;
        let primary = archive.start_primary(init, primary_settings)?;
        Ok(ArchivingCluster { primary, archive })
    }

    /// `pgdrill --env-dir ENV_DIR` against the primary; see
    /// [`LocalArchive::tool_command`].
    pub fn tool_command(&self) -> Command {
        self.archive
            .tool_command(&self.archive.env_dir, Some(&self.primary))
    }
}
