//! PostgreSQL server processes: where the binaries are, `initdb`, start,
//! stop, crash, and the programs run against a data directory.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{as_user, free_port, run_checked, RunAs};
use super::{io_err, tail, LocalError};

/// Where PostgreSQL's server binaries are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub dir: PathBuf,
    /// The major version of its `postgres`, read once when found.
    pub major: u32,
}

/// The version drills and tests use unless a scenario says otherwise
/// (Debian 12's).
pub const DEFAULT_MAJOR: u32 = 15;

/// Where `ci/setup` unpacks the PyPI builds of other versions:
/// `PGDRILL_PG_CACHE`, else `$XDG_CACHE_HOME/pgdrill/postgres`, else
/// `~/.cache/pgdrill/postgres`.
pub fn pg_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGDRILL_PG_CACHE") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("pgdrill/postgres")
}

/// The directories searched for `major`'s binaries, in order.
fn candidates(major: u32) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [format!("PGDRILL_PG_BIN_{major}"), "PGDRILL_PG_BIN".into()]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    if let Ok(entries) = std::fs::read_dir(pg_cache().join(major.to_string())) {
        let mut cached: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("pginstall/bin"))
            .filter(|p| p.is_dir())
            .collect();
        cached.sort();
        dirs.extend(cached);
    }
    dirs.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    dirs
}

impl PgBinaries {
    /// PostgreSQL `major`'s binaries, the first of (README, "PostgreSQL
    /// versions"): `PGDRILL_PG_BIN_<major>`; `PGDRILL_PG_BIN`; the cache
    /// `ci/setup` fills ([`pg_cache`]`/<major>/*/pginstall/bin`); the
    /// system's `/usr/lib/postgresql/<major>/bin`. A directory counts when
    /// it has `initdb` and `pg_ctl` and its `postgres` is that major.
    pub fn find(major: u32) -> Result<PgBinaries, LocalError> {
        Self::find_in(major, candidates(major))
    }

    /// The first of `dirs` holding PostgreSQL `major`.
    fn find_in(major: u32, dirs: Vec<PathBuf>) -> Result<PgBinaries, LocalError> {
        let mut looked = Vec::new();
        for dir in dirs {
            let complete = ["initdb", "pg_ctl"].iter().all(|t| dir.join(t).is_file());
            match major_in(&dir) {
                Ok(m) if m == major && complete => return Ok(PgBinaries { dir, major }),
                Ok(m) if m != major => looked.push(format!("{} (PostgreSQL {m})", dir.display())),
                _ => looked.push(dir.display().to_string()),
            }
        }
        Err(LocalError::NoBinaries { major, looked })
    }

    /// Of the extensions `names`, those these binaries do not ship (no
    /// `<sharedir>/extension/<name>.control`).
    pub fn missing_extensions<'a>(&self, names: &[&'a str]) -> Result<Vec<&'a str>, LocalError> {
        let share = run_checked(
            self.tool("pg_config").arg("--sharedir"),
            "pg_config --sharedir",
        )?;
        let dir = Path::new(share.trim()).join("extension");
        Ok(names
            .iter()
            .copied()
            .filter(|n| !dir.join(format!("{n}.control")).is_file())
            .collect())
    }

    pub fn tool(&self, name: &str) -> Command {
        Command::new(self.dir.join(name))
    }

    /// `postgres --version`'s number, e.g. "15.10".
    pub fn version(&self) -> Result<String, LocalError> {
        version_in(&self.dir)
    }
}

/// The number `postgres --version` of the binaries in `dir` prints.
fn version_in(dir: &Path) -> Result<String, LocalError> {
    // "postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"
    let out = run_checked(
        Command::new(dir.join("postgres")).arg("--version"),
        "postgres --version",
    )?;
    let mut words = out.split_whitespace().skip_while(|w| *w != "(PostgreSQL)");
    Ok(words.nth(1).unwrap_or(out.trim()).to_string())
}

/// The major version of the `postgres` in `dir`.
fn major_in(dir: &Path) -> Result<u32, LocalError> {
    let version = version_in(dir)?;
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| LocalError::Command {
            what: format!("{} --version", dir.join("postgres").display()),
            detail: format!("no major version in {version:?}"),
        })
}

/// `pgdrill --env-dir ENV_DIR --log warn VERB`: a tool verb as a server
/// setting (archive_command, restore_command) runs it.
pub fn pgdrill_command(pgdrill: &Path, env_dir: &Path, verb: &str) -> String {
    format!(
        "{} --env-dir {} --log warn {verb}",
        pgdrill.display(),
        env_dir.display()
    )
}

/// postgresql.conf settings of a primary that archives with
/// `pgdrill --env-dir ENV_DIR wal-push %p`, plus `extra`.
pub fn archiving_settings(
    pgdrill: &Path,
    env_dir: &Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    archiving_settings_with(&pgdrill_command(pgdrill, env_dir, "wal-push %p"), extra)
}

/// postgresql.conf settings of a primary that archives with
/// `archive_command`, plus `extra`.
pub fn archiving_settings_with(
    archive_command: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    [
        ("wal_level", "replica"),
        ("archive_mode", "on"),
        ("track_commit_timestamp", "on"),
        ("archive_command", archive_command),
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

/// Options for a new cluster.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// `initdb --wal-segsize` in MiB.
    pub wal_segsize_mb: Option<u32>,
    /// Extra postgresql.conf settings.
    pub settings: Vec<(String, String)>,
    /// The WAL segment the new cluster writes first (`pg_resetwal -l`
    /// after `initdb`): a cluster placed just before a boundary (the 4 GiB
    /// "log" boundary, say) crosses it while a drill runs.
    pub start_segment: Option<String>,
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
        if let Some(segment) = &opts.start_segment {
            let mut reset = bin.tool("pg_resetwal");
            reset.arg("-l").arg(segment).arg(&data_dir);
            run_checked(as_user(&mut reset, run_as), "pg_resetwal -l")?;
        }
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
    /// A data directory of another major version (a restored backup of
    /// 18 under 15's binaries) is refused before the server reads its
    /// configuration, which would fail first on settings the older server
    /// does not know and hide the reason.
    fn check_version(&self) -> Result<(), LocalError> {
        let Ok(text) = std::fs::read_to_string(self.data_dir.join("PG_VERSION")) else {
            return Ok(());
        };
        let data = text.trim();
        let server = self.bin.major;
        match data == server.to_string() {
            true => Ok(()),
            false => Err(LocalError::Command {
                what: format!("starting PostgreSQL on {}", self.data_dir.display()),
                detail: format!(
                    "the data directory is PostgreSQL {data}'s (its PG_VERSION: a backup of a {data} server), but the binaries in {} are PostgreSQL {server}; restore it with PostgreSQL {data} (postgres.version, PGDRILL_PG_BIN_{data})",
                    self.bin.dir.display()
                ),
            }),
        }
    }

    pub fn start(&mut self, timeout: Duration) -> Result<(), LocalError> {
        self.check_version()?;
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

    /// Runs `pg_checksums --check` on this server's data directory; the
    /// server must have been shut down cleanly (`pg_checksums` refuses a
    /// running or crashed cluster).
    pub async fn checksums(&self) -> Result<crate::verify::Check, LocalError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_15: &str = "/usr/lib/postgresql/15/bin";

    #[test]
    fn binaries_are_taken_only_for_their_own_version() {
        let found = PgBinaries::find_in(
            15,
            vec![PathBuf::from("/nonexistent/bin"), PathBuf::from(DEBIAN_15)],
        )
        .expect("Debian's 15 (run ci/setup)");
        assert_eq!(found.dir, Path::new(DEBIAN_15));
        assert_eq!(found.major, 15);
        assert_eq!(
            found
                .missing_extensions(&["amcheck", "pg_visibility", "dblink", "no_such_ext"])
                .unwrap(),
            ["no_such_ext"]
        );
        let err = PgBinaries::find_in(
            16,
            vec![PathBuf::from("/nonexistent/bin"), PathBuf::from(DEBIAN_15)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("PostgreSQL 16 binaries not found (looked in: /nonexistent/bin, /usr/lib/postgresql/15/bin (PostgreSQL 15))"),
            "{err}"
        );
        assert!(
            err.contains("bash ci/setup") && err.contains("PGDRILL_PG_BIN_16"),
            "{err}"
        );
    }

    #[test]
    fn the_search_order_is_setting_cache_then_system() {
        let dirs = candidates(17);
        assert_eq!(
            dirs.last().unwrap(),
            Path::new("/usr/lib/postgresql/17/bin")
        );
        assert!(
            pg_cache().ends_with("pgdrill/postgres")
                || std::env::var_os("PGDRILL_PG_CACHE").is_some()
        );
    }
}
