//! The peers `pgdrill bench` measures side by side with pgdrill, each
//! against the same embedded S3 server: pgBackRest (through `stunnel`, as
//! it needs TLS) and barman-cloud. Absent tools are skipped with the reason
//! (`ci/setup-bench` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::Rig;
use crate::env::local::{as_user, free_port, run_checked};

/// pgBackRest against the embedded S3 server: a TLS front (`stunnel`), a
/// self-signed certificate and one configuration per repository path.
pub(super) struct PgBackRest {
    dir: PathBuf,
    tls_port: u16,
    stunnel: Child,
}

impl Drop for PgBackRest {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

/// Whether `program` is an executable on `PATH`.
pub(super) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

impl PgBackRest {
    /// Starts the TLS front, or says why pgBackRest cannot be measured.
    pub(super) fn start(rig: &Rig) -> Result<std::result::Result<PgBackRest, String>> {
        for program in ["pgbackrest", "stunnel", "openssl"] {
            if !on_path(program) {
                return Ok(Err(format!(
                    "pgBackRest not measured: `{program}` is not installed (apt-get install pgbackrest stunnel4 openssl)"
                )));
            }
        }
        let dir = rig.dir("pgbackrest")?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let mut openssl = Command::new("openssl");
        openssl
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        run_checked(&mut openssl, "openssl req")?;
        let tls_port = free_port()?;
        let upstream = rig.s3().endpoint.trim_start_matches("http://").to_string();
        // No Nagle on either side: the TLS front is the bench's, not
        // pgBackRest's, and must not add delayed-ACK stalls to its many
        // small requests (one object per file).
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n[s3]\naccept = 127.0.0.1:{tls_port}\nconnect = {upstream}\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("stunnel.log"))?;
        let stunnel = Command::new("stunnel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting stunnel")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            if Instant::now() > deadline {
                bail!("stunnel did not listen on 127.0.0.1:{tls_port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for sub in ["log", "lock", "spool"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        if let Some(u) = rig.cluster.archive.run_as {
            u.chown_tree(&dir)?;
        }
        Ok(Ok(PgBackRest {
            dir,
            tls_port,
            stunnel,
        }))
    }

    /// Writes the configuration of repository path `repo` (asynchronous
    /// archiving when `async_push`) and creates its stanza; returns the
    /// configuration file.
    pub(super) fn configure(&self, rig: &Rig, repo: &str, async_push: bool) -> Result<PathBuf> {
        let s3 = rig.s3();
        let pg = rig.primary();
        let d = &self.dir;
        let asynchronous = if async_push {
            "archive-async=y\nprocess-max=2\n"
        } else {
            ""
        };
        let text = format!(
            "[global]\nrepo1-type=s3\nrepo1-s3-bucket={bucket}\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={port}\n\
             repo1-s3-region=us-east-1\nrepo1-s3-key={key}\nrepo1-s3-key-secret={secret}\nrepo1-s3-uri-style=path\n\
             repo1-storage-verify-tls=n\nrepo1-path=/{repo}\ncompress-type=lz4\nlog-level-console=warn\nlog-level-file=off\n\
             log-path={d}/log\nlock-path={d}/lock\nspool-path={d}/spool\n{asynchronous}\
             [bench]\npg1-path={data}\npg1-port={pgport}\npg1-socket-path={socket}\n",
            bucket = s3.bucket,
            port = self.tls_port,
            key = s3.access_key,
            secret = s3.secret_key.expose(),
            d = d.display(),
            data = pg.data_dir.display(),
            pgport = pg.port,
            socket = pg.socket_dir.display(),
        );
        let conf = d.join(format!("{repo}.conf"));
        std::fs::write(&conf, text)?;
        if let Some(u) = rig.cluster.archive.run_as {
            u.chown_tree(&conf)?;
        }
        let mut create = self.command(rig, &conf);
        create.arg("stanza-create");
        run_checked(&mut create, "pgbackrest stanza-create")?;
        Ok(conf)
    }

    /// `pgbackrest --config CONF --stanza bench`, as the server user.
    pub(super) fn command(&self, rig: &Rig, conf: &Path) -> Command {
        let mut cmd = Command::new("pgbackrest");
        cmd.arg(format!("--config={}", conf.display()))
            .arg("--stanza=bench");
        as_user(&mut cmd, rig.cluster.archive.run_as);
        cmd
    }
}

impl PgBackRest {
    /// A full backup (lz4, two processes, fast checkpoint) into the
    /// repository of `conf`; the archive check is off, as the WAL goes to
    /// pgdrill's archive.
    pub(super) fn backup(&self, rig: &Rig, conf: &Path) -> Command {
        let mut cmd = self.command(rig, conf);
        cmd.args([
            "--type=full",
            "--process-max=2",
            "--start-fast",
            "--no-archive-check",
            "backup",
        ]);
        cmd
    }

    /// Restores the newest backup of `conf`'s repository into `dest` (an
    /// empty directory) without recovery settings.
    pub(super) fn restore(&self, rig: &Rig, conf: &Path, dest: &Path) -> Command {
        let mut cmd = self.command(rig, conf);
        cmd.arg(format!("--pg1-path={}", dest.display())).args([
            "--process-max=2",
            "--type=none",
            "restore",
        ]);
        cmd
    }
}

/// A barman-cloud tool with the S3 server's endpoint and credentials, as
/// the server user.
fn barman(rig: &Rig, program: &str) -> Command {
    let s3 = rig.s3();
    let mut cmd = Command::new(program);
    cmd.arg("--endpoint-url")
        .arg(&s3.endpoint)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key.expose())
        .env("AWS_DEFAULT_REGION", "us-east-1");
    as_user(&mut cmd, rig.cluster.archive.run_as);
    cmd
}

/// `s3://bucket/dest`.
fn barman_url(rig: &Rig, dest: &str) -> String {
    format!("s3://{}/{dest}", rig.s3().bucket)
}

/// `barman-cloud-wal-archive` of `file` into `dest`.
pub(super) fn barman_wal_archive(rig: &Rig, dest: &str, file: &Path) -> Command {
    let mut cmd = barman(rig, "barman-cloud-wal-archive");
    cmd.arg(barman_url(rig, dest)).arg("bench").arg(file);
    cmd
}

/// `barman-cloud-backup` of the primary into `dest` as backup `name`
/// (no compression, two upload jobs, fast checkpoint).
pub(super) fn barman_backup(rig: &Rig, dest: &str, name: &str) -> Command {
    let mut cmd = barman(rig, "barman-cloud-backup");
    cmd.envs(rig.primary().pg_settings())
        .args(["--immediate-checkpoint", "--jobs", "2", "--name", name])
        .arg(barman_url(rig, dest))
        .arg("bench");
    cmd
}

/// `barman-cloud-restore` of backup `name` from `dest` into `into`.
pub(super) fn barman_restore(rig: &Rig, dest: &str, name: &str, into: &Path) -> Command {
    let mut cmd = barman(rig, "barman-cloud-restore");
    cmd.arg(barman_url(rig, dest))
        .arg("bench")
        .arg(name)
        .arg(into);
    cmd
}
