//! Shared set-up for the integration tests: a real PostgreSQL 15 archiving
//! with the built `pgdrill` into a real S3 server (or a directory), and
//! helpers to run the backup verbs as the server's user.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pgdrill::env::local::{
    archiving_settings, as_user, owned_dir, write_env_dir, InitOptions, LocalPostgres, LocalS3,
    PgBinaries, RunAs, WorkDir,
};

pub const PGDRILL: &str = env!("CARGO_BIN_EXE_pgdrill");

/// Where the archive lives.
pub enum Storage {
    S3,
    Dir,
}

/// A primary cluster archiving into storage, with the env dir its
/// archive_command and our commands use.
pub struct TestEnv {
    pub work: WorkDir,
    pub bin: PgBinaries,
    pub run_as: Option<RunAs>,
    pub s3: Option<LocalS3>,
    pub env_dir: PathBuf,
    pub storage_vars: Vec<(String, String)>,
    pub primary: LocalPostgres,
}

impl TestEnv {
    /// Starts storage and an archiving primary.
    pub fn start(
        name: &str,
        storage: Storage,
        extra: &[(&str, &str)],
        init: InitOptions,
    ) -> TestEnv {
        let bin = PgBinaries::find().expect("PostgreSQL 15 binaries (run ci/setup)");
        let run_as = RunAs::detect().expect("user to run PostgreSQL as");
        let work = WorkDir::new(&format!("pgdrill-{name}-"), run_as).expect("work dir");
        let (s3, mut storage_vars) = match storage {
            Storage::S3 => {
                let s3 = LocalS3::start(Path::new(PGDRILL), &work.path().join("s3"), "drill")
                    .expect("s3-serve starts");
                let vars = s3.settings(name);
                (Some(s3), vars)
            }
            Storage::Dir => {
                let dir = work.path().join("archive");
                std::fs::create_dir_all(&dir).unwrap();
                if let Some(u) = run_as {
                    u.chown_tree(&dir).unwrap();
                }
                (
                    None,
                    vec![("WALG_FILE_PREFIX".to_string(), dir.display().to_string())],
                )
            }
        };
        storage_vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env_dir = work.path().join("env");
        write_env_dir(&env_dir, &storage_vars, run_as).expect("env dir");
        let mut settings = archiving_settings(
            Path::new(PGDRILL),
            &env_dir,
            &[("max_wal_size", "1GB"), ("fsync", "off")],
        );
        settings.extend(init.settings.iter().cloned());
        let base = owned_dir(work.path(), "primary", run_as).expect("primary dir");
        let mut primary =
            LocalPostgres::init(&bin, &base, run_as, &InitOptions { settings, ..init })
                .expect("initdb");
        primary
            .start(Duration::from_secs(60))
            .expect("primary starts");
        TestEnv {
            work,
            bin,
            run_as,
            s3,
            env_dir,
            storage_vars,
            primary,
        }
    }

    /// Runs `pgdrill --env-dir ENV ARGS` as the server user, with the
    /// primary's connection settings in the environment.
    pub fn pgdrill(&self, args: &[&str]) -> Output {
        self.pgdrill_env(args, &[])
    }

    /// Like [`TestEnv::pgdrill`], with `extra` variables set too.
    pub fn pgdrill_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(PGDRILL);
        cmd.arg("--env-dir").arg(&self.env_dir).args(args);
        for (k, v) in self.primary.pg_settings() {
            cmd.env(k, v);
        }
        cmd.envs(extra.iter().copied());
        as_user(&mut cmd, self.run_as)
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
        as_user(&mut cmd, self.run_as)
            .output()
            .expect("pgdrill runs")
    }

    /// A fresh directory the server user owns.
    pub fn dir(&self, name: &str) -> PathBuf {
        owned_dir(self.work.path(), name, self.run_as).expect("test dir")
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
        let mut pg = LocalPostgres::existing(&self.bin, &base, &data, self.run_as).unwrap();
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
