//! The `local` environment: PostgreSQL server processes and the embedded S3
//! server on loopback. Used by local drills and by the integration tests.
//!
//! PostgreSQL refuses to run as root, so when we are root every server and
//! every backup command that touches a data directory runs as the
//! `postgres` user, in directories that user owns.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tail;
use crate::backup::config::Secret;

/// Failures of the local environment.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("PostgreSQL binaries not found in {}: install postgresql-15 (ci/setup does) or set PGDRILL_PG_BIN", dir.display())]
    NoBinaries { dir: PathBuf },
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

/// The user that PostgreSQL and the backup commands run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `postgres` when we are root, else ourselves (`None`).
    pub fn detect() -> Result<Option<RunAs>, LocalError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = std::ffi::CString::new("postgres").expect("no NUL");
        // SAFETY: getpwnam returns NULL or a pointer to a static record
        // that we read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(LocalError::NoPostgresUser);
        }
        // SAFETY: pw is non-null and points at a valid passwd record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Some(RunAs { uid, gid }))
    }

    /// Gives `path` (recursively) to this user.
    pub fn chown_tree(&self, path: &Path) -> Result<(), LocalError> {
        let walk = |p: &Path| std::os::unix::fs::lchown(p, Some(self.uid), Some(self.gid));
        walk(path).map_err(io_err(format!("chown {}", path.display())))?;
        if path.is_dir() {
            for entry in
                std::fs::read_dir(path).map_err(io_err(format!("reading {}", path.display())))?
            {
                let entry = entry.map_err(io_err("reading directory"))?;
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Makes `cmd` run as `run_as` (when set).
pub fn as_user(cmd: &mut Command, run_as: Option<RunAs>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
        // Avoid "could not change directory" warnings from a root-only cwd.
        cmd.current_dir("/");
    }
    cmd
}

/// Runs a command to completion; failure includes its stderr.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<String, LocalError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("starting {what}")))?;
    if !out.status.success() {
        return Err(LocalError::Command {
            what: what.to_string(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where PostgreSQL's server binaries are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub dir: PathBuf,
}

pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PgBinaries {
    /// `PGDRILL_PG_BIN`, else Debian's PostgreSQL 15.
    pub fn find() -> Result<PgBinaries, LocalError> {
        let dir = std::env::var_os("PGDRILL_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        if dir.join("postgres").is_file() && dir.join("initdb").is_file() {
            Ok(PgBinaries { dir })
        } else {
            Err(LocalError::NoBinaries { dir })
        }
    }

    pub fn tool(&self, name: &str) -> Command {
        Command::new(self.dir.join(name))
    }

    /// `postgres --version`'s number, e.g. "15.10".
    pub fn version(&self) -> Result<String, LocalError> {
        // "postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"
        let out = run_checked(self.tool("postgres").arg("--version"), "postgres --version")?;
        let mut words = out.split_whitespace().skip_while(|w| *w != "(PostgreSQL)");
        Ok(words.nth(1).unwrap_or(out.trim()).to_string())
    }
}

/// A scratch directory that the server user can use; removed on drop
/// unless kept.
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    pub fn new(prefix: &str, owner: Option<RunAs>) -> Result<WorkDir, LocalError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        if let Some(o) = owner {
            o.chown_tree(dir.path())?;
        }
        let path = dir.path().to_path_buf();
        Ok(WorkDir {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place (for `--keep`) and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }
}

/// Creates `parent/name` (and parents), owned by the server user.
pub fn owned_dir(parent: &Path, name: &str, owner: Option<RunAs>) -> Result<PathBuf, LocalError> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    if let Some(o) = owner {
        o.chown_tree(&dir)?;
    }
    Ok(dir)
}

/// postgresql.conf settings of a primary that archives with
/// `pgdrill --env-dir ENV_DIR wal-push %p`, plus `extra`.
pub fn archiving_settings(
    pgdrill: &Path,
    env_dir: &Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let archive_command = format!(
        "{} --env-dir {} --log warn wal-push %p",
        pgdrill.display(),
        env_dir.display()
    );
    [
        ("wal_level", "replica"),
        ("archive_mode", "on"),
        ("track_commit_timestamp", "on"),
        ("archive_command", archive_command.as_str()),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `cmd` (a verification program named `what`) off the runtime's
/// threads and hands its outcome to `judge`.
async fn judged(
    cmd: Command,
    what: &str,
    judge: fn(bool, &str, &str) -> crate::verify::Check,
) -> Result<crate::verify::Check, LocalError> {
    let out = tokio::process::Command::from(cmd)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_err(format!("running {what}")))?;
    Ok(judge(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    ))
}

/// Picks a free TCP port on loopback. Another process may take it before
/// we bind it, so callers retry on "address in use".
pub fn free_port() -> Result<u16, LocalError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

/// Fresh credentials for a drill's S3 server: the access key names this
/// process, the secret is random.
pub fn drill_credentials() -> (String, Secret) {
    (
        format!("drill-{}", std::process::id()),
        Secret::new(format!("secret-{:016x}", rand::random::<u64>())),
    )
}

/// WAL-G-style settings for an S3 server at `endpoint` (path-style
/// addressing, as the embedded server and minio need), archive at `prefix`
/// (`s3://bucket/path`).
pub fn s3_settings(
    prefix: &str,
    endpoint: &str,
    access_key: &str,
    secret_key: &Secret,
) -> Vec<(String, String)> {
    vec![
        ("WALG_S3_PREFIX".into(), prefix.to_string()),
        ("AWS_ENDPOINT".into(), endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID".into(), access_key.to_string()),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            secret_key.expose().to_string(),
        ),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_S3_FORCE_PATH_STYLE".into(), "true".into()),
    ]
}

/// The embedded S3 server (`pgdrill s3-serve`) as a child process.
#[derive(Debug)]
pub struct LocalS3 {
    child: Child,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: Secret,
    pub bucket: String,
    pub data_dir: PathBuf,
}

impl LocalS3 {
    /// Starts the server on a free loopback port with one bucket.
    pub fn start(pgdrill: &Path, data_dir: &Path, bucket: &str) -> Result<LocalS3, LocalError> {
        let (access_key, secret_key) = drill_credentials();
        let mut child = Command::new(pgdrill)
            .arg("s3-serve")
            .arg("--dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--bucket")
            .arg(bucket)
            .env("PGDRILL_S3_ACCESS_KEY", &access_key)
            .env("PGDRILL_S3_SECRET_KEY", secret_key.expose())
            .env("PGDRILL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io_err(format!("starting {} s3-serve", pgdrill.display())))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let endpoint = match (read, line.trim().strip_prefix("listening on ")) {
            (Ok(_), Some(url)) => url.to_string(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LocalError::Command {
                    what: "s3-serve".into(),
                    detail: format!("did not report its address (got {line:?})"),
                });
            }
        };
        Ok(LocalS3 {
            child,
            endpoint,
            access_key,
            secret_key,
            bucket: bucket.to_string(),
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// WAL-G-style settings pointing at this server, under `prefix`.
    pub fn settings(&self, prefix: &str) -> Vec<(String, String)> {
        s3_settings(
            &format!("s3://{}/{prefix}", self.bucket),
            &self.endpoint,
            &self.access_key,
            &self.secret_key,
        )
    }

    /// Path of a stored object on the server's disk (for fault injection).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data_dir.join(&self.bucket).join(key)
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an envdir-style directory (one file per variable), readable by
/// `owner`, as a Kubernetes Secret volume would be.
pub fn write_env_dir(
    dir: &Path,
    vars: &[(String, String)],
    owner: Option<RunAs>,
) -> Result<(), LocalError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    for (k, v) in vars {
        std::fs::write(dir.join(k), format!("{v}\n")).map_err(io_err(format!("writing {k}")))?;
    }
    if let Some(o) = owner {
        o.chown_tree(dir)?;
    }
    Ok(())
}

/// Options for a new cluster.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// `initdb --wal-segsize` in MiB.
    pub wal_segsize_mb: Option<u32>,
    /// Extra postgresql.conf settings.
    pub settings: Vec<(String, String)>,
}

/// One PostgreSQL server process on loopback; stopped (immediate) on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    pub bin: PgBinaries,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub port: u16,
    pub run_as: Option<RunAs>,
    running: bool,
}

/// Quotes a value for postgresql.conf.
pub fn conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

impl LocalPostgres {
    /// `initdb` into `base/data`, with sockets and logs beside it.
    pub fn init(
        bin: &PgBinaries,
        base: &Path,
        run_as: Option<RunAs>,
        opts: &InitOptions,
    ) -> Result<LocalPostgres, LocalError> {
        let data_dir = base.join("data");
        let mut cmd = bin.tool("initdb");
        cmd.arg("-D").arg(&data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            // pg_checksums --check then verifies every restored block.
            "--data-checksums",
        ]);
        if let Some(mb) = opts.wal_segsize_mb {
            cmd.arg(format!("--wal-segsize={mb}"));
        }
        run_checked(as_user(&mut cmd, run_as), "initdb")?;
        let pg = LocalPostgres::existing(bin, base, &data_dir, run_as)?;
        pg.append_conf(&opts.settings)?;
        Ok(pg)
    }

    /// A data directory that exists already (e.g. restored by backup-fetch).
    pub fn existing(
        bin: &PgBinaries,
        base: &Path,
        data_dir: &Path,
        run_as: Option<RunAs>,
    ) -> Result<LocalPostgres, LocalError> {
        let socket_dir = base.join("sock");
        std::fs::create_dir_all(&socket_dir).map_err(io_err("creating socket dir"))?;
        if let Some(o) = run_as {
            o.chown_tree(&socket_dir)?;
        }
        Ok(LocalPostgres {
            bin: bin.clone(),
            data_dir: data_dir.to_path_buf(),
            socket_dir,
            log_file: base.join(format!(
                "{}.log",
                data_dir
                    .file_name()
                    .and_then(OsStr::to_str)
                    .unwrap_or("postgres")
            )),
            port: 0,
            running: false,
            run_as,
        })
    }

    /// Appends settings to `postgresql.auto.conf`-style `postgresql.conf`.
    pub fn append_conf(&self, settings: &[(String, String)]) -> Result<(), LocalError> {
        use std::io::Write;
        let path = self.data_dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let mut text = String::from("\n# pgdrill\n");
        for (k, v) in settings {
            text.push_str(&format!("{k} = {}\n", conf_value(v)));
        }
        f.write_all(text.as_bytes())
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Starts the server on a free port (retrying when the port is taken)
    /// and waits until it accepts connections or `timeout` passes.
    /// Recovery runs before a server accepts connections, so the timeout
    /// covers WAL replay.
    pub fn start(&mut self, timeout: Duration) -> Result<(), LocalError> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            let opts = format!(
                "-p {} -k {} -c listen_addresses=''",
                self.port,
                self.socket_dir.display()
            );
            let mut cmd = self.bin.tool("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .arg("-o")
                .arg(&opts)
                .arg("-w")
                .arg("-t")
                .arg(timeout.as_secs().max(1).to_string());
            self.prepare_log()?;
            match run_checked(as_user(&mut cmd, self.run_as), "pg_ctl start") {
                Ok(_) => {
                    self.running = true;
                    return Ok(());
                }
                Err(e) => {
                    // pg_ctl may give up waiting while the server still
                    // runs (a long recovery): make sure it does not outlive us.
                    self.running = true;
                    let _ = self.stop("immediate");
                    self.running = false;
                    let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
                    if !log.contains("already in use") {
                        let detail = match e {
                            LocalError::Command { detail, .. } => detail,
                            other => other.to_string(),
                        };
                        return Err(LocalError::Command {
                            what: "pg_ctl start".into(),
                            detail: format!("{detail}; server log tail:\n{}", tail(&log, 12)),
                        });
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| LocalError::Timeout("could not start postgres".into())))
    }

    fn prepare_log(&self) -> Result<(), LocalError> {
        if !self.log_file.exists() {
            std::fs::write(&self.log_file, b"").map_err(io_err("creating server log"))?;
            if let Some(o) = self.run_as {
                o.chown_tree(&self.log_file)?;
            }
        }
        Ok(())
    }

    /// Stops the server (`fast`, `smart` or `immediate`).
    pub fn stop(&mut self, mode: &str) -> Result<(), LocalError> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.bin.tool("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w"]);
        run_checked(as_user(&mut cmd, self.run_as), "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// SIGKILLs the postmaster: a crash, not a shutdown.
    pub fn kill(&mut self) -> Result<(), LocalError> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(io_err("reading postmaster.pid"))?;
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| LocalError::Command {
                what: "kill".into(),
                detail: "postmaster.pid has no pid".into(),
            })?;
        // SAFETY: sending a signal to a pid we read from our own server.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        // Children exit once the postmaster is gone; wait for the socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks existence.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running = false;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// libpq-style connection settings for this server.
    pub fn pg_settings(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.socket_dir.display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
        ]
    }

    /// Connects with tokio-postgres over the Unix socket.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, LocalError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        let (client, conn) =
            cfg.connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| LocalError::Command {
                    what: format!("connecting to port {}", self.port),
                    detail: crate::backup::pg::pg_error_text(&e),
                })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs a client tool (psql, pgbench, pg_amcheck, ...) against this
    /// server, as the server user.
    pub fn client_tool(&self, name: &str) -> Command {
        let mut cmd = self.bin.tool(name);
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres");
        as_user(&mut cmd, self.run_as);
        cmd
    }

    /// Runs `pg_amcheck` ([`crate::verify::AMCHECK_ARGS`]) against this
    /// server.
    pub async fn amcheck(&self) -> Result<crate::verify::Check, LocalError> {
        let mut cmd = self.client_tool("pg_amcheck");
        cmd.args(crate::verify::AMCHECK_ARGS);
        judged(cmd, "pg_amcheck", crate::verify::amcheck_check).await
    }

    /// Shuts this server down cleanly and runs `pg_checksums --check` on
    /// its data directory (it refuses a running or crashed cluster).
    pub async fn checksums(&mut self) -> Result<crate::verify::Check, LocalError> {
        self.stop("fast")?;
        let mut cmd = self.bin.tool("pg_checksums");
        cmd.arg("--check").arg("-D").arg(&self.data_dir);
        as_user(&mut cmd, self.run_as);
        judged(cmd, "pg_checksums", crate::verify::checksums_check).await
    }

    /// The server log's last lines (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log_file).unwrap_or_default(),
            lines,
        )
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}

/// The `local` drill environment: the embedded S3 server, an archiving
/// primary, and restored servers, each a process on loopback in one work
/// directory that is removed at the end unless kept.
pub struct LocalEnvironment {
    // Field order is drop order: servers stop before the directory goes.
    primary: Option<LocalPostgres>,
    restores: std::collections::BTreeMap<String, LocalPostgres>,
    /// Kept alive for the whole drill; stopped on drop.
    _storage: LocalS3,
    bin: PgBinaries,
    run_as: Option<RunAs>,
    env_dir: PathBuf,
    pgdrill: PathBuf,
    version: String,
    wal_segment_size: u64,
    primary_config: tokio_postgres::Config,
    work: WorkDir,
}

impl LocalEnvironment {
    /// Starts storage and an archiving primary.
    pub async fn start(
        spec: &super::EnvSpec,
        pgdrill: &Path,
    ) -> Result<LocalEnvironment, LocalError> {
        let bin = PgBinaries::find()?;
        let version = bin.version()?;
        let run_as = RunAs::detect()?;
        let work = WorkDir::new("pgdrill-drill-", run_as)?;
        let s3 = LocalS3::start(pgdrill, &work.path().join("s3"), &spec.bucket)?;
        let env_dir = work.path().join("env");
        let mut tool_settings = s3.settings("drill");
        tool_settings.extend(spec.tool_settings.iter().cloned());
        tool_settings.extend(
            spec.tool_secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        );
        write_env_dir(&env_dir, &tool_settings, run_as)?;
        let primary_base = owned_dir(work.path(), "primary", run_as)?;
        let mut settings = archiving_settings(pgdrill, &env_dir, &[]);
        settings.extend(spec.postgres_settings.iter().cloned());
        let mut primary = LocalPostgres::init(
            &bin,
            &primary_base,
            run_as,
            &InitOptions {
                wal_segsize_mb: spec.wal_segsize_mb,
                settings,
            },
        )?;
        primary.start(Duration::from_secs(60))?;
        let primary_config = workload_config(&primary);
        Ok(LocalEnvironment {
            primary: Some(primary),
            restores: Default::default(),
            _storage: s3,
            bin,
            run_as,
            env_dir,
            pgdrill: pgdrill.to_path_buf(),
            version,
            wal_segment_size: u64::from(spec.wal_segsize_mb.unwrap_or(16)) << 20,
            primary_config,
            work,
        })
    }

    fn tool_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.pgdrill);
        cmd.arg("--env-dir").arg(&self.env_dir).args(args);
        if let Some(p) = &self.primary {
            cmd.envs(p.pg_settings()).env("PGDATA", &p.data_dir);
        }
        if let Some(u) = self.run_as {
            cmd.uid(u.uid).gid(u.gid).current_dir("/");
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Restores `backup` into a fresh server named `label` (kept in
    /// `restores`, also when it fails to start): to the end of the archive
    /// or to `target`; with `archive`, it archives into the storage as the
    /// primary does, else never. Returns once the server is promoted.
    async fn restore_server(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<chrono::DateTime<chrono::Utc>>,
        archive: bool,
    ) -> Result<super::Restored, super::EnvError> {
        use super::Environment;
        let base = owned_dir(self.work.path(), &format!("restore-{label}"), self.run_as)?;
        let data = base.join("data");
        let data_s = data.display().to_string();
        let target_s = target.map(crate::workload::target_time_arg);
        let mut args = vec!["backup-fetch", data_s.as_str(), backup];
        if !archive {
            args.push("--no-archive");
        }
        match &target_s {
            Some(t) => args.extend(["--recovery-target-time", t.as_str()]),
            None => args.push("--recover"),
        }
        let started = Instant::now();
        self.backup_tool(&args).await?;
        let fetch = started.elapsed();
        let mut pg = LocalPostgres::existing(&self.bin, &base, &data, self.run_as)?;
        let started = Instant::now();
        let start_result = pg.start(Duration::from_secs(1800));
        let start_to_consistent = started.elapsed();
        let log_file = pg.log_file.clone();
        self.restores.insert(label.to_string(), pg);
        start_result?;
        let pg = &self.restores[label];
        let client = pg.connect().await?;
        let log_tail = || async { pg.log_tail(20) };
        let consistent_to_promoted =
            super::pg::wait_promoted(&client, label, Duration::from_secs(1800), log_tail).await?;
        Ok(super::Restored {
            client,
            timings: super::RestoreTimings {
                fetch,
                start_to_consistent,
                consistent_to_promoted,
                wal_segments: super::restored_wal_files(
                    &std::fs::read_to_string(&log_file).unwrap_or_default(),
                ),
            },
        })
    }
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
    fn kind(&self) -> &'static str {
        "local"
    }

    fn postgres_version(&self) -> String {
        self.version.clone()
    }

    fn primary_config(&self) -> tokio_postgres::Config {
        self.primary_config.clone()
    }

    fn wal_segment_size(&self) -> u64 {
        self.wal_segment_size
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

    fn storage_settings(&self) -> &Path {
        &self.env_dir
    }

    async fn kill_primary(&mut self) -> Result<(), super::EnvError> {
        if let Some(mut p) = self.primary.take() {
            p.kill()?;
            std::fs::remove_dir_all(&p.data_dir)
                .map_err(io_err("destroying the primary's data directory"))?;
        }
        Ok(())
    }

    async fn restore(
        &mut self,
        label: &str,
        backup: &str,
        target: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<super::Restored, super::EnvError> {
        self.restore_server(label, backup, target, false).await
    }

    async fn fail_over(
        &mut self,
        label: &str,
        backup: &str,
        target: chrono::DateTime<chrono::Utc>,
    ) -> Result<super::Restored, super::EnvError> {
        if let Some(mut old) = self.primary.take() {
            old.stop("fast")?;
        }
        let restored = self
            .restore_server(label, backup, Some(target), true)
            .await?;
        let pg = self
            .restores
            .remove(label)
            .expect("restore_server keeps the server");
        self.primary_config = workload_config(&pg);
        self.primary = Some(pg);
        Ok(restored)
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
            .get_mut(label)
            .ok_or_else(|| super::EnvError::Other(format!("no restore {label}")))?;
        Ok(pg.checksums().await?)
    }

    async fn discard_restore(&mut self, label: &str) {
        if let Some(mut pg) = self.restores.remove(label) {
            let _ = pg.stop("immediate");
        }
    }

    fn keep(&mut self) -> Option<PathBuf> {
        Some(self.work.keep())
    }
}
