//! Processes and directories on this host: the user servers run as, commands
//! run as that user, scratch directories it owns, free ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{io_err, LocalError};

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

/// Picks a free TCP port on loopback. Another process may take it before
/// we bind it, so callers retry on "address in use".
pub fn free_port() -> Result<u16, LocalError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}
