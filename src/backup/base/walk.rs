//! The data directory walk of `backup-push`: what is backed up (as
//! `pg_basebackup` decides), and how files are spread over parts.

use std::io;
use std::path::{Path, PathBuf};

use crate::backup::BackupError;

/// Directories whose contents are never backed up (the directory itself is
/// kept, empty), as in `pg_basebackup`.
pub(super) const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_xlog",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Top-level files never backed up.
pub(super) const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "standby.signal",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
];

pub(super) const PG_CONTROL: &str = "global/pg_control";

/// One file or directory found in the data directory.
#[derive(Debug, Clone)]
pub(super) struct WalkEntry {
    pub(super) rel: String,
    pub(super) abs: PathBuf,
    pub(super) is_dir: bool,
    pub(super) size: u64,
    pub(super) mode: u32,
}

/// Whether a file in a relation directory is a temporary relation
/// (`t<backend>_<relfilenode>[_fork][.seg]`).
pub(super) fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, tail)) = rest.split_once('_') else {
        return false;
    };
    let node: String = tail.chars().take_while(char::is_ascii_digit).collect();
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && !node.is_empty()
}

/// The relfilenode a relation file belongs to and whether it is the init
/// fork: `123`, `123.1`, `123_fsm`, `123_init` -> `("123", is_init)`.
pub(super) fn relation_of(name: &str) -> Option<(&str, bool)> {
    let base = name.split('.').next()?;
    let (node, fork) = base.split_once('_').unwrap_or((base, ""));
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some((node, fork == "init"))
}

/// Lists what a base backup contains, sorted, with pg_basebackup's
/// exclusions: see `EMPTY_DIRS`, `SKIP_TOP_FILES`, `pg_internal.init`,
/// `pgsql_tmp*`, temporary relations, and every fork but `_init` of
/// unlogged relations.
pub(super) fn walk_data_dir(root: &Path) -> Result<Vec<WalkEntry>, BackupError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let mut names: Vec<(String, std::fs::Metadata, PathBuf)> = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(BackupError::io(format!("reading {}", dir.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(BackupError::io(format!("reading {}", dir.display())))?;
            let path = entry.path();
            // Follow symlinks (pg_wal may be one); vanished entries are skipped.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackupError::io(format!("reading {}", path.display()))(e)),
            };
            names.push((entry.file_name().to_string_lossy().into_owned(), meta, path));
        }
        let is_relation_dir = rel_dir.starts_with("base/") || rel_dir == "global";
        let unlogged: Vec<String> = if is_relation_dir {
            names
                .iter()
                .filter_map(|(n, _, _)| {
                    relation_of(n)
                        .filter(|(_, init)| *init)
                        .map(|(r, _)| r.to_string())
                })
                .collect()
        } else {
            Vec::new()
        };
        for (name, meta, path) in names {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if name == "pg_internal.init" || name.starts_with("pgsql_tmp") {
                continue;
            }
            if rel_dir.is_empty() && !meta.is_dir() && SKIP_TOP_FILES.contains(&name.as_str()) {
                continue;
            }
            if is_relation_dir && !meta.is_dir() {
                if is_temp_relation(&name) {
                    continue;
                }
                if let Some((node, is_init)) = relation_of(&name) {
                    if !is_init && unlogged.iter().any(|u| u == node) {
                        continue;
                    }
                }
            }
            if rel == "pg_tblspc" && meta.is_dir() {
                let has_tablespaces = std::fs::read_dir(&path)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
                if has_tablespaces {
                    return Err(BackupError::Invalid(
                        "the cluster has tablespaces (pg_tblspc is not empty); pgdrill does not back up tablespaces yet".into(),
                    ));
                }
            }
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode() & 0o7777
            };
            if meta.is_dir() {
                out.push(WalkEntry {
                    rel: rel.clone(),
                    abs: path.clone(),
                    is_dir: true,
                    size: 0,
                    mode,
                });
                if !(rel_dir.is_empty() && EMPTY_DIRS.contains(&name.as_str())) {
                    stack.push((path, rel));
                }
            } else if meta.is_file() {
                out.push(WalkEntry {
                    rel,
                    abs: path,
                    is_dir: false,
                    size: meta.len(),
                    mode,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Plaintext bytes per part: at most `threshold` (WALG_TAR_SIZE_THRESHOLD),
/// and small enough that every upload worker gets about two parts, so the
/// cores stay busy to the end (one 1 GiB part beside a small one would
/// leave a core idle); never below 64 MiB, so small clusters stay one part.
pub(super) fn part_size(total: u64, threshold: u64, workers: usize) -> u64 {
    let balanced = total / (2 * workers.max(1) as u64);
    threshold.min(balanced.max(64 << 20))
}

/// Splits files into parts of at most `threshold` plaintext bytes (a larger
/// file gets a part of its own); directories go into the first part.
pub(super) fn partition(entries: Vec<WalkEntry>, threshold: u64) -> Vec<Vec<WalkEntry>> {
    let mut parts: Vec<Vec<WalkEntry>> = vec![Vec::new()];
    let mut current = 0u64;
    for e in entries {
        if e.is_dir {
            parts[0].push(e);
            continue;
        }
        if current > 0 && current + e.size > threshold {
            parts.push(Vec::new());
            current = 0;
        }
        current += e.size;
        parts.last_mut().expect("never empty").push(e);
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// `part_1`, `part_2`, ..., then `pg_control`.
pub(super) fn part_order(name: &str) -> (u8, u64) {
    // pgdrill's part_N, WAL-G's part_NNN.tar.<ext>.
    match name
        .strip_prefix("part_")
        .and_then(|n| n.split('.').next()?.parse().ok())
    {
        Some(n) => (0, n),
        None => (1, 0),
    }
}
