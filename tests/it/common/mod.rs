//! Shared set-up for the integration tests: a real PostgreSQL 15 archiving
//! with the built `pgdrill` into a real S3 server (or a directory), and
//! helpers to run the backup verbs as the server's user.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pgdrill::env::local::{ArchiveStorage, ArchivingCluster, InitOptions, LocalPostgres};

pub const PGDRILL: &str = env!("CARGO_BIN_EXE_pgdrill");

/// Where the archive lives.
pub enum Storage {
    S3,
    Dir,
}

/// A primary cluster archiving into storage (the fixture the local
/// environment and `pgdrill bench` use too), with helpers that fail the
/// test on errors.
pub struct TestEnv {
    cluster: ArchivingCluster,
}

impl std::ops::Deref for TestEnv {
    type Target = ArchivingCluster;
    fn deref(&self) -> &ArchivingCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestEnv {
    fn deref_mut(&mut self) -> &mut ArchivingCluster {
        &mut self.cluster
    }
}

impl TestEnv {
    /// Starts storage and an archiving primary; `extra` tool settings go
    /// into its env directory, `init.settings` into postgresql.conf.
    pub fn start(
        name: &str,
        storage: Storage,
        extra: &[(&str, &str)],
        init: InitOptions,
    ) -> TestEnv {
        Self::start_version(
            name,
            storage,
            extra,
            init,
            pgdrill::env::local::DEFAULT_MAJOR,
        )
    }

    /// [`TestEnv::start`] on PostgreSQL `major` (its binaries as
    /// `PgBinaries::find` finds them; ci/setup installs 15, 16 and 18).
    pub fn start_version(
        name: &str,
        storage: Storage,
        extra: &[(&str, &str)],
        init: InitOptions,
        major: u32,
    ) -> TestEnv {
        let storage = match storage {
            Storage::S3 => ArchiveStorage::S3 {
                bucket: "drill".into(),
                prefix: name.into(),
            },
            Storage::Dir => ArchiveStorage::Dir,
        };
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cluster = ArchivingCluster::start(
            Path::new(PGDRILL),
            &format!("pgdrill-{name}-"),
            &storage,
            &extra,
            &init,
            &[("max_wal_size", "1GB"), ("fsync", "off")],
            major,
        )
        .unwrap_or_else(|e| panic!("archiving cluster starts (run ci/setup): {e}"));
        TestEnv { cluster }
    }

    /// Runs `pgdrill --env-dir ENV ARGS` as the server user, with the
    /// primary's connection settings in the environment.
    pub fn pgdrill(&self, args: &[&str]) -> Output {
        self.pgdrill_env(args, &[])
    }

    /// Like [`TestEnv::pgdrill`], with `extra` variables set too.
    pub fn pgdrill_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        self.tool_command()
            .args(args)
            .envs(extra.iter().copied())
            .output()
            .expect("pgdrill runs")
    }

    /// `backup-push` of the primary with `flags`; returns the backup's name.
    pub fn backup_push(&self, flags: &[&str]) -> String {
        let mut args = vec!["backup-push", self.primary.data_dir.to_str().unwrap()];
        args.extend_from_slice(flags);
        let out = self.pgdrill(&args);
        assert_success(&out, "backup-push");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Like [`TestEnv::pgdrill`] but with the given variables instead of the
    /// env dir (for bad-configuration tests).
    pub fn pgdrill_with_vars(&self, vars: &[(String, String)], args: &[&str]) -> Output {
        let mut cmd = Command::new(PGDRILL);
        cmd.args(args).env_remove("PGDRILL_ENV_DIR");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        pgdrill::env::local::as_user(&mut cmd, self.archive.run_as)
            .output()
            .expect("pgdrill runs")
    }

    /// A fresh directory the server user owns.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.archive.dir(name).expect("test dir")
    }

    /// Restores `backup` with the given extra backup-fetch flags, starts a
    /// server on it and waits until recovery has ended (promoted).
    pub async fn restore(&self, name: &str, backup: &str, flags: &[&str]) -> LocalPostgres {
        self.restore_with(name, backup, flags, false).await
    }

    /// Like [`TestEnv::restore`]; with `archive` the restored server keeps
    /// the primary's archive_command and archives into the same storage
    /// (its new timeline included).
    pub async fn restore_with(
        &self,
        name: &str,
        backup: &str,
        flags: &[&str],
        archive: bool,
    ) -> LocalPostgres {
        let base = self.dir(name);
        let data = base.join("data");
        let data_s = data.display().to_string();
        let mut args = vec!["backup-fetch", data_s.as_str(), backup];
        if !archive {
            args.push("--no-archive");
        }
        args.extend_from_slice(flags);
        let out = self.pgdrill(&args);
        assert_success(&out, "backup-fetch");
        let mut pg =
            LocalPostgres::existing(&self.archive.bin, &base, &data, self.archive.run_as).unwrap();
        pg.start(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("restored server starts: {e}"));
        wait_promoted(&pg).await;
        pg
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until the server has left recovery.
pub async fn wait_promoted(pg: &LocalPostgres) {
    let client = pg.connect().await.expect("connect to restored server");
    let log_tail = || async { pg.log_tail(30) };
    pgdrill::env::pg::wait_promoted(&client, "restore", Duration::from_secs(60), log_tail)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Forces a segment switch and waits until the archiver has stored it.
pub async fn switch_and_wait_archived(pg: &LocalPostgres) -> String {
    let client = pg.connect().await.unwrap();
    pgdrill::env::pg::switch_and_wait_archived(&client, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", pg.log_tail(30)))
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// `pg_amcheck` of every database of `pg`, indexes against their heaps.
pub fn amcheck_all(pg: &LocalPostgres) {
    run_ok(
        pg.client_tool("pg_amcheck")
            .args(["--all", "--install-missing", "--heapallindexed"]),
        "pg_amcheck",
    );
}

pub fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().expect(what);
    assert_success(&out, what);
}

/// Every file below `dir` (none when it does not exist).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
