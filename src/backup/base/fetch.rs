//! `backup-fetch`: parts downloaded and extracted in parallel, every file
//! checked against the backup's list, `pg_control` last, then recovery
//! settings and one sync.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tracing::info;

use super::recovery::*;
use crate::backup::catalog::{
    self, BackupFormat, BackupMetadata, BackupSummary, FileEntry, PartInfo,
};
use crate::backup::codec::ObjectReader;
use crate::backup::delta;
use crate::backup::layout::{self};
use crate::backup::progress::{human_bytes, Progress};
use crate::backup::sabotage::Sabotage;
use crate::backup::store::Key;
use crate::backup::{walg, BackupError, Context};

/// Options of `backup-fetch`.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Restore into a non-empty directory.
    pub force: bool,
    /// Re-read every restored file and check it against the backup.
    pub verify: bool,
    pub recovery: RecoveryConfig,
    /// restore_command to write; default: this binary's `wal-fetch`.
    pub restore_command: Option<String>,
    /// Write `archive_mode = off` so a restored copy never archives into
    /// the source archive (drills, DR tests).
    pub no_archive: bool,
}

/// Restores one backup's parts into `dest` (its data parts in parallel,
/// `pg_control` last) and checks that every listed entry arrived.
pub(super) async fn restore_files(
    ctx: &Context,
    dest: &Path,
    metadata: &BackupMetadata,
    progress: &Arc<Progress>,
) -> Result<(), BackupError> {
    let expected = files_by_path(metadata);
    let (control, data): (Vec<&PartInfo>, Vec<&PartInfo>) = metadata
        .parts
        .iter()
        .partition(|p| p.name == layout::PG_CONTROL_PART);
    let restored: Vec<usize> = futures::stream::iter(data)
        .map(|p| download_part(ctx, p, dest, Arc::clone(&expected), Arc::clone(progress)))
        .buffer_unordered(ctx.settings.download_concurrency)
        .try_collect()
        .await?;
    let mut count: usize = restored.iter().sum();
    for p in control {
        count += download_part(ctx, p, dest, Arc::clone(&expected), Arc::clone(progress)).await?;
    }
    let wanted = metadata.files.len();
    if count != wanted {
        return Err(BackupError::VerifyFailed(format!(
            "{}: restored {count} entries, the backup lists {wanted}",
            metadata.backup_name
        )));
    }
    Ok(())
}

/// After a chain restore: removes files that earlier members had and the
/// restored backup does not list (relations dropped in between).
pub(super) fn remove_unlisted(dest: &Path, metadata: &BackupMetadata) -> Result<(), BackupError> {
    let listed: std::collections::HashSet<&str> =
        metadata.files.iter().map(|f| f.path.as_str()).collect();
    let mut stack = vec![(dest.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(BackupError::io(format!("reading {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(BackupError::io(format!("reading {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel_dir.is_empty() {
                name
            } else {
                format!("{rel_dir}/{name}")
            };
            if entry.path().is_dir() {
                stack.push((entry.path(), rel));
            } else if !listed.contains(rel.as_str()) {
                std::fs::remove_file(entry.path()).map_err(BackupError::io(format!(
                    "removing {}",
                    entry.path().display()
                )))?;
            }
        }
    }
    Ok(())
}

/// A chain read and checked before the target is touched.
enum Restore {
    Pgdrill(Vec<(BackupSummary, BackupMetadata)>),
    Walg(walg::restore::Plan),
}

/// Restores backup `name` (or `LATEST`) into `dest`.
pub async fn backup_fetch(
    ctx: &Context,
    dest: &Path,
    name: &str,
    opts: &FetchOptions,
) -> Result<BackupSummary, BackupError> {
    let summary = catalog::resolve(ctx, name).await?;
    // A delta restores as its chain: the full backup, then each delta.
    let members = catalog::chain(ctx, &summary).await?;
    if let Some(other) = members.iter().find(|m| m.format != summary.format) {
        return Err(BackupError::Invalid(format!(
            "the delta chain of {} holds {}, of the other format (pgdrill and WAL-G backups do not build on each other)",
            summary.backup_name, other.backup_name
        )));
    }
    let (restore, total) = match summary.format {
        BackupFormat::Pgdrill => {
            let mut chain = Vec::new();
            for member in members {
                let metadata = catalog::read_metadata(ctx, &member).await?;
                chain.push((member, metadata));
            }
            let total = chain
                .iter()
                .flat_map(|(_, m)| &m.parts)
                .map(|p| p.plain_size)
                .sum();
            (Restore::Pgdrill(chain), total)
        }
        BackupFormat::Walg => (
            Restore::Walg(walg::restore::plan(ctx, &members).await?),
            walg::restore::total_size(&members),
        ),
    };
    if opts.force && ctx.settings.sabotage == Some(Sabotage::ForceKeepsContents) {
        tracing::warn!("SABOTAGE: --force writes over the target's contents without removing them");
    } else {
        prepare_target(dest, opts.force)?;
    }
    let (progress, _guard) = Progress::start("backup-fetch", total, Duration::from_secs(5));
    match restore {
        Restore::Pgdrill(chain) => restore_chain(ctx, dest, &chain, opts.verify, &progress).await?,
        Restore::Walg(plan) => {
            let mut rebuilt = Rebuilt::new();
            let record = opts.verify.then_some(&mut rebuilt);
            walg::restore::run(ctx, &plan, Some(dest), &progress, record).await?;
            if opts.verify {
                match plan.into_recorded_files() {
                    None => info!("a WAL-G backup records no file checksums: its frames' checksums, its increments and its file list were checked while restoring"),
                    // Written by pgdrill: its record has every file's BLAKE3.
                    Some(files) => {
                        let dest = dest.to_path_buf();
                        tokio::task::spawn_blocking(move || verify_restored(&dest, &files, &rebuilt))
                            .await
                            .map_err(BackupError::internal("the verification task"))??;
                        info!("verified every restored file against pgdrill's record of the backup");
                    }
                }
            }
        }
    }
    write_recovery_config(ctx, dest, opts)?;
    sync_filesystem(dest)?;
    info!(
        backup = %summary.backup_name,
        size = %human_bytes(total),
        rate = %format!("{}/s", human_bytes(progress.rate() as u64)),
        "restored"
    );
    Ok(summary)
}

/// Restores a pgdrill chain, its backup_label and tablespace_map, and
/// with `verify` re-reads every file against the backup's checksums.
async fn restore_chain(
    ctx: &Context,
    dest: &Path,
    chain: &[(BackupSummary, BackupMetadata)],
    verify: bool,
    progress: &Arc<Progress>,
) -> Result<(), BackupError> {
    let mut rebuilt = Rebuilt::new();
    for (backup, metadata) in chain {
        if chain.len() > 1 {
            info!(backup = %backup.backup_name, "restoring chain member");
        }
        restore_files(ctx, dest, metadata, progress).await?;
        if verify {
            let (deltas, whole): (Vec<&FileEntry>, Vec<&FileEntry>) = metadata
                .files
                .iter()
                .filter(|f| !f.is_dir)
                .partition(|f| f.delta);
            let paths =
                |files: Vec<&FileEntry>| files.into_iter().map(|f| f.path.clone()).collect();
            record_rebuilt(dest, paths(deltas), paths(whole), &mut rebuilt).await?;
        }
    }
    let metadata = &chain.last().expect("chain has the backup itself").1;
    if chain.len() > 1 {
        remove_unlisted(dest, metadata)?;
    }
    write_file(&dest.join("backup_label"), metadata.backup_label.as_bytes())?;
    if !metadata.tablespace_map.is_empty() {
        write_file(
            &dest.join("tablespace_map"),
            metadata.tablespace_map.as_bytes(),
        )?;
    }
    // Verify before recovery settings change postgresql.auto.conf.
    if verify {
        let dest = dest.to_path_buf();
        let files = metadata.files.clone();
        tokio::task::spawn_blocking(move || verify_restored(&dest, &files, &rebuilt))
            .await
            .map_err(BackupError::internal("the verification task"))??;
        info!("verified every restored file against the backup's checksums (and each file a delta rebuilt against its checksum right after rebuilding)");
    }
    Ok(())
}

/// Makes `dest` an empty directory for a restore: created when absent;
/// refused when not empty unless `force`, which empties it.
pub(super) fn prepare_target(dest: &Path, force: bool) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::read_dir(dest) {
        Ok(mut d) => {
            if d.next().is_some() {
                if !force {
                    return Err(BackupError::Invalid(format!(
                        "{} is not empty; restore into an empty directory or pass --force to replace its contents",
                        dest.display()
                    )));
                }
                info!(target = %dest.display(), "--force: removing the target's contents");
                empty_directory(dest)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(dest)
            .map_err(BackupError::io(format!("creating {}", dest.display())))?,
        Err(e) => return Err(BackupError::io(format!("reading {}", dest.display()))(e)),
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700)).map_err(BackupError::io(
        format!("setting permissions of {}", dest.display()),
    ))
}

/// Removes everything inside `dir`: whatever the backup does not hold
/// (old relation files, WAL segments, prefetched segments) could be picked
/// up by recovery. A symlink to a directory (`pg_wal` on another disk) is
/// kept and the directory it points to emptied.
pub(super) fn empty_directory(dir: &Path) -> Result<(), BackupError> {
    let entries =
        std::fs::read_dir(dir).map_err(BackupError::io(format!("reading {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(BackupError::io(format!("reading {}", dir.display())))?
            .path();
        let removing = BackupError::io(format!("removing {}", path.display()));
        let meta = std::fs::symlink_metadata(&path)
            .map_err(BackupError::io(format!("reading {}", path.display())))?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).map_err(removing)?;
        } else if meta.file_type().is_symlink() && path.is_dir() {
            empty_directory(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(removing)?;
        }
    }
    Ok(())
}

pub(super) fn write_file(path: &Path, data: &[u8]) -> Result<(), BackupError> {
    std::fs::write(path, data).map_err(BackupError::io(format!("writing {}", path.display())))
}

/// A relative path from a tar entry that stays inside the target.
pub(crate) fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// A backup's file list by path, as [`read_stored_part`] checks entries against it.
pub fn files_by_path(metadata: &BackupMetadata) -> Arc<HashMap<String, FileEntry>> {
    Arc::new(
        metadata
            .files
            .iter()
            .map(|f| (f.path.clone(), f.clone()))
            .collect(),
    )
}

/// What reading one part found.
#[derive(Debug, Default)]
pub struct PartReport {
    /// Paths of the entries that are in the file list (restored or checked).
    pub entries: Vec<String>,
    /// Entries that do not match the file list (unsafe or unknown paths,
    /// content checksums), a bad object trailer, a part checksum that
    /// differs from the metadata's. Reading went on past each of them.
    pub problems: Vec<String>,
}

pub(super) async fn download_part(
    ctx: &Context,
    part: &PartInfo,
    dest: &Path,
    expected: Arc<HashMap<String, FileEntry>>,
    progress: Arc<Progress>,
) -> Result<usize, BackupError> {
    let report = read_stored_part(ctx, part, expected, Some(dest.to_path_buf()), progress).await?;
    if report.problems.is_empty() {
        Ok(report.entries.len())
    } else {
        Err(BackupError::Corrupt {
            key: Key::new(part.key.clone()),
            detail: report.problems.join("; "),
        })
    }
}

/// Streams a stored part through [`read_part`]: restores it under `dest`
/// (backup-fetch), or with `None` only decodes and checks it (backup-verify).
/// `Err` when reading could not go on (storage, decoding, a broken tar
/// stream, writing); mismatches that reading survives are in the report.
pub async fn read_stored_part(
    ctx: &Context,
    part: &PartInfo,
    expected: Arc<HashMap<String, FileEntry>>,
    dest: Option<PathBuf>,
    progress: Arc<Progress>,
) -> Result<PartReport, BackupError> {
    let key = Key::new(part.key.clone());
    let part = part.clone();
    ctx.read_object(&key.clone(), move |reader| {
        read_part(reader, &part, &key, dest.as_deref(), &expected, &progress)
    })
    .await
}

/// Decodes one part, walks its tar entries and checks each against the
/// backup's file list (path known and safe, content BLAKE3), writing them
/// under `dest` when given; then checks the object's trailer and the part's
/// checksum.
pub(super) fn read_part(
    reader: impl Read,
    part: &PartInfo,
    key: &Key,
    dest: Option<&Path>,
    expected: &HashMap<String, FileEntry>,
    progress: &Progress,
) -> Result<PartReport, BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let corrupt = |detail: String| BackupError::Corrupt {
        key: key.clone(),
        detail,
    };
    let mut object = ObjectReader::new(reader).map_err(|e| BackupError::from_codec(key, e))?;
    let mut report = PartReport::default();
    {
        let mut archive = tar::Archive::new(&mut object);
        let entries = archive
            .entries()
            .map_err(|e| corrupt(format!("bad tar stream: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(format!("bad tar entry: {e}")))?;
            let raw_path = entry
                .path()
                .map_err(|e| corrupt(format!("bad path: {e}")))?
                .into_owned();
            let Some(rel) = safe_relative(&raw_path) else {
                report
                    .problems
                    .push(format!("unsafe path {}", raw_path.display()));
                continue;
            };
            let rel_str = rel.to_string_lossy().into_owned();
            let Some(want) = expected.get(&rel_str) else {
                report
                    .problems
                    .push(format!("{rel_str} is not in the backup's file list"));
                continue;
            };
            let target = dest.map(|d| d.join(&rel));
            let io_err = |e: io::Error| {
                let shown = target.as_deref().unwrap_or(&rel);
                BackupError::io(format!("writing {}", shown.display()))(e)
            };
            if want.is_dir {
                if let Some(target) = &target {
                    std::fs::create_dir_all(target).map_err(io_err)?;
                    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
                        .map_err(io_err)?;
                }
            } else if want.delta {
                let mut hashing = HashingReader {
                    inner: &mut entry,
                    hasher: blake3::Hasher::new(),
                    progress,
                };
                let applied = match &target {
                    // The earlier members of the chain restored the file.
                    Some(target) => std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(target)
                        .and_then(|mut f| delta::apply_entry(&mut hashing, &mut f, want.size)),
                    None => io::copy(&mut hashing, &mut io::sink()).map(|_| ()),
                };
                if let Err(e) = applied {
                    report
                        .problems
                        .push(format!("{rel_str}: cannot apply its delta: {e}"));
                    continue;
                }
                check_hash(&mut report, &rel_str, want, hashing.hasher.finalize());
            } else {
                let mut out = match &target {
                    Some(target) => {
                        if let Some(parent) = target.parent() {
                            std::fs::create_dir_all(parent).map_err(io_err)?;
                        }
                        Some(io::BufWriter::with_capacity(
                            256 * 1024,
                            std::fs::File::create(target).map_err(io_err)?,
                        ))
                    }
                    None => None,
                };
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => {
                            return Err(BackupError::from_codec(
                                key,
                                crate::backup::codec::CodecError::Io(e),
                            ))
                        }
                    };
                    hasher.update(&buf[..n]);
                    if let Some(out) = &mut out {
                        out.write_all(&buf[..n]).map_err(io_err)?;
                    }
                    progress.add(n as u64);
                }
                if let (Some(mut out), Some(target)) = (out, &target) {
                    out.flush().map_err(io_err)?;
                    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o600))
                        .map_err(io_err)?;
                }
                check_hash(&mut report, &rel_str, want, hasher.finalize());
            }
            report.entries.push(rel_str);
        }
    }
    // Tar stops before the padding at the end; the trailer follows it.
    io::copy(&mut object, &mut io::sink())
        .map_err(|e| BackupError::from_codec(key, crate::backup::codec::CodecError::Io(e)))?;
    // Every entry was read: a bad trailer is one more problem of this part.
    match object.verified_digest() {
        Ok(digest) if digest.hex() != part.blake3 => report.problems.push(format!(
            "part hashes to {}, metadata says {}",
            digest.hex(),
            part.blake3
        )),
        Ok(_) => {}
        Err(crate::backup::codec::CodecError::Corrupt(detail)) => report.problems.push(detail),
        Err(e) => return Err(BackupError::from_codec(key, e)),
    }
    Ok(report)
}

/// Records a problem when an entry's content does not hash as recorded.
pub(super) fn check_hash(
    report: &mut PartReport,
    rel: &str,
    want: &FileEntry,
    actual: blake3::Hash,
) {
    let actual = actual.to_hex().to_string();
    if want.blake3.as_deref() != Some(actual.as_str()) {
        report.problems.push(format!(
            "{rel}: content hashes to {actual}, the backup recorded {}",
            want.blake3.as_deref().unwrap_or("nothing")
        ));
    }
}

/// Hashes what passes through and counts it as progress.
pub(super) struct HashingReader<'a, R> {
    inner: R,
    hasher: blake3::Hasher,
    progress: &'a Progress,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// The BLAKE3 of each file a delta rebuilt (by path in the data
/// directory), taken right after the delta was applied: what `--verify`
/// re-reads those files against at the end, as the backup records only
/// the checksum of the delta entry (checked when it was applied).
pub type Rebuilt = HashMap<String, String>;

/// Records in `rebuilt` the BLAKE3 of the files `paths` (relative to
/// `dest`) as they are now, and forgets the files in `replaced` (restored
/// whole by a later backup of the chain).
pub async fn record_rebuilt(
    dest: &Path,
    paths: Vec<String>,
    replaced: Vec<String>,
    rebuilt: &mut Rebuilt,
) -> Result<(), BackupError> {
    for path in &replaced {
        rebuilt.remove(path);
    }
    let dest = dest.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|p| file_blake3(&dest.join(&p)).map(|h| (p, h)))
            .collect::<io::Result<Vec<_>>>()
    })
    .await
    .map_err(BackupError::internal("the hashing task"))?
    .map_err(BackupError::io("hashing a file rebuilt from a delta"))?;
    rebuilt.extend(hashed);
    Ok(())
}

fn file_blake3(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Re-reads every restored file and compares it with the backup's list,
/// and a file rebuilt from a delta entry with its checksum in `rebuilt`.
pub(super) fn verify_restored(
    dest: &Path,
    files: &[FileEntry],
    rebuilt: &Rebuilt,
) -> Result<(), BackupError> {
    let mut problems = Vec::new();
    for f in files.iter().filter(|f| !f.is_dir) {
        let expected = match f.delta {
            false => f.blake3.as_deref(),
            true => rebuilt.get(&f.path).map(String::as_str),
        };
        let Some(expected) = expected else {
            problems.push(format!(
                "{}: rebuilt from a delta entry, but its checksum after rebuilding was not taken",
                f.path
            ));
            continue;
        };
        match file_blake3(&dest.join(&f.path)) {
            Err(e) => problems.push(format!("{}: {e}", f.path)),
            Ok(actual) if actual != expected => problems.push(format!(
                "{}: checksum differs from {}",
                f.path,
                match f.delta {
                    false => "the backup",
                    true => "the file as its delta rebuilt it",
                }
            )),
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BackupError::VerifyFailed(format!(
            "{} file(s) differ: {}",
            problems.len(),
            problems
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }
}

/// Flushes everything written to the target's file system at once
/// (cheaper than an fsync per file). A restore that could not be made
/// durable is a failed restore.
pub(super) fn sync_filesystem(dest: &Path) -> Result<(), BackupError> {
    use std::os::unix::io::AsRawFd;
    let dir = std::fs::File::open(dest).map_err(BackupError::io(format!(
        "opening {} to sync it",
        dest.display()
    )))?;
    // SAFETY: syncfs on a file descriptor that `dir` keeps open.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(BackupError::io(format!(
            "syncing the file system of {}",
            dest.display()
        ))(io::Error::last_os_error()));
    }
    Ok(())
}
