//! The embedded S3 server as a child process, and the backup tool's
//! settings (an env directory) that reach it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::process::RunAs;
use super::{io_err, LocalError};
use crate::backup::config::Secret;
use crate::env::s3_server::ServerFault;

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
    /// The server's fault file (`s3-serve --fault-file`).
    fault_file: PathBuf,
}

impl LocalS3 {
    /// Starts the server on a free loopback port with one bucket.
    pub fn start(pgdrill: &Path, data_dir: &Path, bucket: &str) -> Result<LocalS3, LocalError> {
        let (access_key, secret_key) = drill_credentials();
        let fault_file = data_dir.with_extension("fault");
        let mut child = Command::new(pgdrill)
            .arg("s3-serve")
            .arg("--dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--bucket")
            .arg(bucket)
            .arg("--fault-file")
            .arg(&fault_file)
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
            fault_file,
        })
    }

    /// A handle that makes this server misbehave, for as long as it runs.
    pub fn faults(&self) -> LocalS3Faults {
        LocalS3Faults {
            pid: self.child.id(),
            fault_file: self.fault_file.clone(),
        }
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

    /// CPU time (user and system, every thread's) the server has used so
    /// far, from `/proc`: what the storage costs the machine it shares
    /// with the tools (`pgdrill bench`). None where `/proc` cannot tell.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
        let ticks = cpu_ticks_of_stat(&stat)?;
        (ticks_per_sec > 0)
            .then(|| std::time::Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64))
    }

    /// Path of a stored object on the server's disk (for fault injection).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data_dir.join(&self.bucket).join(key)
    }
}

/// Storage outages of a running [`LocalS3`]: owned, so a task can inject
/// one while a restore runs.
#[derive(Debug, Clone)]
pub struct LocalS3Faults {
    pid: u32,
    fault_file: PathBuf,
}

impl LocalS3Faults {
    /// Puts `fault` in force (None: serve again). The file is replaced
    /// whole, so the server never reads half of it.
    pub fn set(&self, fault: Option<ServerFault>) -> std::io::Result<()> {
        match fault {
            Some(f) => {
                let tmp = self.fault_file.with_extension("fault.tmp");
                std::fs::write(&tmp, f.as_str())?;
                std::fs::rename(&tmp, &self.fault_file)
            }
            None => match std::fs::remove_file(&self.fault_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: while stopped,
    /// connections are accepted by the kernel and never answered.
    pub fn freeze(&self, frozen: bool) -> std::io::Result<()> {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let pid = libc::pid_t::try_from(self.pid).map_err(std::io::Error::other)?;
        // SAFETY: kill has no memory preconditions; pid is our child's.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// utime + stime (clock ticks) of a `/proc/<pid>/stat` line. The command
/// name in parentheses may hold spaces and parentheses itself, so fields
/// are counted after its last `)`: state is field 3, utime 14, stime 15.
fn cpu_ticks_of_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis of its own.
        let stat =
            "4242 (s3 (serve)) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 269 0 0 20 0 6 0 100 0 0";
        assert_eq!(cpu_ticks_of_stat(stat), Some(731 + 269));
        assert_eq!(cpu_ticks_of_stat("4242 (cut short) S 1"), None);
        assert_eq!(cpu_ticks_of_stat("no name at all"), None);
    }

    #[test]
    fn this_process_stat_line_parses() {
        let me = format!("/proc/{}/stat", std::process::id());
        let stat = std::fs::read_to_string(me).unwrap();
        assert!(cpu_ticks_of_stat(&stat).is_some(), "{stat}");
    }
}
