//! Restoring (and checking) WAL-G's base backups, as WAL-G's own
//! `backup-fetch` does (wal-g `internal/databases/postgres/`):
//! - the backup's objects are the tar files listed under
//!   `<name>/tar_partitions/` (`backup.go:65-76`), compressed as WAL
//!   objects are (see the module above): `part_NNN.tar.<ext>`
//!   extracted in parallel, then `backup_label.tar.<ext>` and
//!   `pg_control.tar.<ext>` last (`tars_to_extract_provider.go:33-55`,
//!   `backup.go:268-300`);
//! - entries are named `/` + the path in the data directory (the root is
//!   `/`), except `backup_label` and `tablespace_map` (`bundle.go:263`,
//!   `:376-395`, `internal/bundle.go:112-117`);
//! - `files_metadata.json` lists every file and directory with
//!   `IsIncremented` (the entry is an increment, [`super::increment`]) and
//!   `IsSkipped` (unchanged since the base: in no tar); a V2 sentinel
//!   requires it, older backups may carry `Files` in the sentinel or have
//!   none (then everything is extracted) (`backup.go:78-166`);
//! - a delta is restored after its base, which gives only the files the
//!   delta skipped or incremented (`backup_fetch_handler.go:69-111`,
//!   `:127-143`); `backup_label` and `pg_control` come from the restored
//!   backup alone.
//!
//! What is verified of a backup pgdrill wrote in WAL-G's format: the
//! BLAKE3 and length of every tar's content against pgdrill's record
//! beside it (`pgdrill_metadata.json`, itself checked against the
//! sentinel's `PgdrillMetadataBlake3`), and that exactly the recorded tars
//! are stored. Of any WAL-G backup, as WAL-G stores no checksums: each object's
//! frame checksums (lz4 content checksum, zstd frame checksum, gzip CRC;
//! LZMA and brotli have none) and tar
//! structure, each increment's header, block numbers and length, that every
//! entry is one `files_metadata.json` lists and every listed file arrived,
//! and that `pg_control` and `backup_label` are there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use super::{increment, WalgCodec};
use crate::backup::catalog::{self, BackupSummary, FileEntry, PartInfo};
use crate::backup::layout;
use crate::backup::progress::Progress;
use crate::backup::store::Key;
use crate::backup::{BackupError, Context};

/// What `files_metadata.json` says of one file or directory (wal-g
/// `internal/backup_file_description.go:10-16`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct FileDescription {
    #[serde(rename = "IsIncremented", default)]
    pub incremented: bool,
    #[serde(rename = "IsSkipped", default)]
    pub skipped: bool,
}

/// `files_metadata.json` (wal-g `backup_sentinel_dto.go:148-154`); only
/// `Files` is read: the tars are listed from storage, as WAL-G does.
#[derive(Debug, Default, Deserialize)]
struct FilesMetadata {
    #[serde(rename = "Files", default)]
    files: BTreeMap<String, FileDescription>,
}

/// The sentinel's fields that decide where the file list is.
#[derive(Debug, Deserialize)]
struct SentinelFiles {
    #[serde(rename = "Version", default)]
    version: u32,
    #[serde(rename = "FilesMetadataDisabled", default)]
    files_metadata_disabled: bool,
    /// Where WAL-G before files_metadata.json kept the list.
    #[serde(rename = "Files", default)]
    files: Option<BTreeMap<String, FileDescription>>,
}

#[derive(Debug, Clone)]
struct TarObject {
    key: Key,
    codec: WalgCodec,
    /// What pgdrill recorded of it, when pgdrill wrote the backup.
    recorded: Option<PartInfo>,
}

/// One backup of a chain, read before anything is written.
#[derive(Debug)]
struct Member {
    name: String,
    is_delta: bool,
    /// `None`: no file list (WAL-E or WAL-G without files metadata).
    files: Option<Arc<BTreeMap<String, FileDescription>>>,
    parts: Vec<TarObject>,
    label: Option<TarObject>,
    control: Option<TarObject>,
    /// Every file's BLAKE3 from pgdrill's record, when pgdrill wrote it.
    recorded_files: Option<Vec<FileEntry>>,
}

/// Which entries of a member a restore takes.
#[derive(Debug, Clone)]
enum Wanted {
    All,
    Only(Arc<HashSet<String>>),
}

impl Wanted {
    fn contains(&self, name: &str) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Only(set) => set.contains(name),
        }
    }
}

/// A WAL-G chain ready to restore: each member with the entries taken
/// from it.
#[derive(Debug)]
pub struct Plan {
    members: Vec<(Member, Wanted)>,
}

impl Plan {
    /// The restored backup's files with their BLAKE3 from pgdrill's
    /// record (read while planning), when pgdrill wrote the backup.
    pub fn into_recorded_files(self) -> Option<Vec<FileEntry>> {
        self.members.into_iter().last()?.0.recorded_files
    }
}

/// Entries that are not data-directory files of `files_metadata.json`.
const LABEL_FILES: [&str; 2] = ["backup_label", "tablespace_map"];
const PG_CONTROL: &str = "/global/pg_control";

fn corrupt(key: &Key, detail: impl Into<String>) -> BackupError {
    BackupError::Corrupt {
        key: key.clone(),
        detail: detail.into(),
    }
}

/// Reads the file lists and lists the tars of every member of `chain`
/// (full backup first), and works out what each member must give.
pub async fn plan(ctx: &Context, chain: &[BackupSummary]) -> Result<Plan, BackupError> {
    let mut members = Vec::with_capacity(chain.len());
    for summary in chain {
        members.push(read_member(ctx, summary).await?);
    }
    let last = members.last().expect("a chain has its backup");
    if last.control.is_none() {
        return Err(corrupt(
            &layout::sentinel_key(&last.name),
            format!(
                "WAL-G backup {} has no pg_control.tar in its tar_partitions",
                last.name
            ),
        ));
    }
    // Backwards: a member gives what its successor skipped or incremented
    // of what the successor is asked for.
    let mut wanted = vec![Wanted::All; members.len()];
    for i in (0..members.len().saturating_sub(1)).rev() {
        let next = &members[i + 1];
        let Some(files) = &next.files else {
            return Err(corrupt(
                &layout::sentinel_key(&next.name),
                format!(
                    "WAL-G delta {} has no file list (files_metadata.json), so what it takes from {} is unknown",
                    next.name, members[i].name
                ),
            ));
        };
        let from_base = files
            .iter()
            .filter(|(name, d)| (d.skipped || d.incremented) && wanted[i + 1].contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        wanted[i] = Wanted::Only(Arc::new(from_base));
    }
    Ok(Plan {
        members: members.into_iter().zip(wanted).collect(),
    })
}

async fn read_member(ctx: &Context, summary: &BackupSummary) -> Result<Member, BackupError> {
    let name = &summary.backup_name;
    let sentinel_key = layout::sentinel_key(name);
    let sentinel: SentinelFiles = serde_json::from_slice(
        &ctx.store
            .get(&sentinel_key, layout::MAX_SENTINEL_SIZE)
            .await?,
    )
    .map_err(|e| corrupt(&sentinel_key, format!("a WAL-G sentinel, but {e}")))?;
    let files_key = layout::walg_files_metadata_key(name);
    let files = if sentinel.files_metadata_disabled {
        None
    } else {
        match ctx.store.get(&files_key, layout::MAX_METADATA_SIZE).await {
            Ok(raw) => {
                let m: FilesMetadata = serde_json::from_slice(&raw)
                    .map_err(|e| corrupt(&files_key, format!("WAL-G's file list, but {e}")))?;
                Some(m.files)
            }
            Err(e) if e.is_not_found() && sentinel.version >= 2 => {
                return Err(corrupt(
                    &files_key,
                    "missing: a version 2 WAL-G sentinel promises this file list",
                ))
            }
            Err(e) if e.is_not_found() => sentinel.files,
            Err(e) => return Err(e.into()),
        }
    }
    .filter(|files| !files.is_empty())
    .map(Arc::new);
    // pgdrill's record of a backup it wrote: every tar with its BLAKE3.
    let (mut recorded, recorded_files): (Option<HashMap<String, PartInfo>>, _) =
        if summary.metadata_blake3.is_empty() {
            (None, None)
        } else {
            let record = catalog::read_metadata(ctx, summary).await?;
            let parts = record
                .parts
                .into_iter()
                .map(|p| (p.key.clone(), p))
                .collect();
            (Some(parts), Some(record.files))
        };
    let (mut parts, mut label, mut control) = (Vec::new(), None, None);
    let prefix = layout::walg_tar_partitions_prefix(name);
    for object in ctx.store.list(&prefix).await? {
        let part = match &mut recorded {
            None => None,
            Some(record) => Some(record.remove(object.key.as_str()).ok_or_else(|| {
                corrupt(
                    &object.key,
                    format!("not in pgdrill's record of backup {name} (pgdrill_metadata.json): an object that does not belong"),
                )
            })?),
        };
        let file = object.key.as_str()[prefix.len()..].to_string();
        let Some((stem, ext)) = file.split_once(".tar") else {
            return Err(corrupt(
                &object.key,
                "not a tar file (WAL-G names them *.tar.<compression>)",
            ));
        };
        let codec = WalgCodec::from_extension(ext.strip_prefix('.').unwrap_or(ext))
            .filter(|_| ext.is_empty() || ext.starts_with('.'))
            .ok_or_else(|| {
                corrupt(
                    &object.key,
                    format!("a tar compressed as {ext:?}, which WAL-G does not write"),
                )
            })?;
        let tar = TarObject {
            key: object.key,
            codec,
            recorded: part,
        };
        // wal-g matches the names anywhere before ".tar"
        // (tars_to_extract_provider.go:33-34).
        if stem.ends_with("pg_control") {
            control = Some(tar);
        } else if stem.ends_with("backup_label") {
            label = Some(tar);
        } else {
            parts.push(tar);
        }
    }
    if let Some(missing) = recorded.and_then(|r| r.into_keys().min()) {
        return Err(corrupt(
            &Key::new(missing),
            format!("missing: pgdrill's record of backup {name} lists this tar"),
        ));
    }
    Ok(Member {
        name: name.clone(),
        is_delta: summary.increment_from.is_some(),
        files,
        parts,
        label,
        control,
        recorded_files,
    })
}

/// What reading one tar object found.
#[derive(Debug, Default)]
struct TarReport {
    /// Entries taken (written, or checked with no target).
    taken: Vec<String>,
    problems: Vec<String>,
}

/// How much a run read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub tars: usize,
    pub entries: usize,
}

/// Restores (`dest`) or only reads and checks (`None`) a planned chain.
/// `Err` at the first object that could not be read or that has
/// problems; the problems say which entries. With `rebuilt`, records the
/// checksum of each file an increment rebuilt, right after rebuilding.
pub async fn run(
    ctx: &Context,
    plan: &Plan,
    dest: Option<&Path>,
    progress: &Arc<Progress>,
    mut rebuilt: Option<&mut crate::backup::base::Rebuilt>,
) -> Result<Checked, BackupError> {
    let count = plan.members.len();
    let mut checked = Checked::default();
    for (i, (member, wanted)) in plan.members.iter().enumerate() {
        let read = |tar: &TarObject| {
            read_tar(
                ctx,
                tar.clone(),
                member.is_delta,
                member.files.clone(),
                wanted.clone(),
                dest.map(Path::to_path_buf),
                Arc::clone(progress),
            )
        };
        let mut taken: HashSet<String> = futures::stream::iter(&member.parts)
            .map(&read)
            .buffer_unordered(ctx.settings.download_concurrency)
            .try_collect::<Vec<Vec<String>>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        checked.tars += member.parts.len();
        // backup_label, then pg_control: only of the backup restored.
        if i + 1 == count {
            for tar in member.label.iter().chain(&member.control) {
                taken.extend(read(tar).await?);
                checked.tars += 1;
            }
            for needed in [LABEL_FILES[0], PG_CONTROL] {
                if !taken.contains(needed) {
                    return Err(corrupt(
                        &layout::sentinel_key(&member.name),
                        format!("WAL-G backup {} holds no {needed}", member.name),
                    ));
                }
            }
        }
        let taken_by = plan.members.get(i + 1).map(|(next, _)| next.name.as_str());
        check_coverage(member, wanted, &taken, i == 0, taken_by)?;
        checked.entries += taken.len();
        if let (Some(dest), Some(rebuilt)) = (dest, rebuilt.as_deref_mut()) {
            let (increments, whole): (Vec<&String>, Vec<&String>) = taken
                .iter()
                .filter(|name| !LABEL_FILES.contains(&name.as_str()))
                .partition(|name| {
                    member.is_delta
                        && member
                            .files
                            .as_ref()
                            .and_then(|f| f.get(name.as_str()))
                            .is_some_and(|d| d.incremented)
                });
            let relative = |names: Vec<&String>| -> Vec<String> {
                names
                    .into_iter()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .collect()
            };
            crate::backup::base::record_rebuilt(
                dest,
                relative(increments),
                relative(whole),
                rebuilt,
            )
            .await?;
        }
    }
    Ok(checked)
}

/// Every file the member must give arrived: each file it lists (a full
/// backup skips nothing), and each file the next backup of the chain
/// (`taken_by`, a delta) takes from it, whether this member lists it or
/// not, unless this member skipped it too (an earlier one gives it then).
/// A file taken from a member that neither lists nor holds it is in no
/// backup of the chain: the restore would lack it.
fn check_coverage(
    member: &Member,
    wanted: &Wanted,
    taken: &HashSet<String>,
    is_first: bool,
    taken_by: Option<&str>,
) -> Result<(), BackupError> {
    let listed = |name: &str| member.files.as_ref().and_then(|f| f.get(name));
    let given_here = |name: &str| is_first || !listed(name).is_some_and(|d| d.skipped);
    let missing: Vec<&str> = match wanted {
        Wanted::All => member
            .files
            .iter()
            .flat_map(|f| f.keys())
            .map(String::as_str)
            .filter(|name| !taken.contains(*name) && given_here(name))
            .collect(),
        Wanted::Only(set) => {
            let mut names: Vec<&str> = set
                .iter()
                .map(String::as_str)
                .filter(|name| !taken.contains(*name) && given_here(name))
                .collect();
            names.sort_unstable();
            names
        }
    };
    if missing.is_empty() {
        return Ok(());
    }
    let shown = missing
        .iter()
        .take(10)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let detail = match taken_by.filter(|_| matches!(wanted, Wanted::Only(_))) {
        Some(delta) => {
            let unlisted = missing.iter().filter(|name| listed(name).is_none()).count();
            format!(
                "{} file(s) that delta {delta} takes from {} (skipped or incremented there) are in none of its tars{}: {shown}",
                missing.len(),
                member.name,
                match unlisted {
                    0 => String::new(),
                    n => format!(", and it does not list {n} of them either: no backup of the chain has them"),
                }
            )
        }
        None => format!(
            "{} listed file(s) are in none of the backup's tars{}: {shown}",
            missing.len(),
            if is_first {
                " (or are marked skipped in a full backup)"
            } else {
                ""
            },
        ),
    };
    Err(corrupt(
        &layout::walg_files_metadata_key(&member.name),
        detail,
    ))
}

async fn read_tar(
    ctx: &Context,
    tar: TarObject,
    is_delta: bool,
    files: Option<Arc<BTreeMap<String, FileDescription>>>,
    wanted: Wanted,
    dest: Option<std::path::PathBuf>,
    progress: Arc<Progress>,
) -> Result<Vec<String>, BackupError> {
    let key = tar.key.clone();
    let recorded = tar.recorded.clone();
    let report = ctx
        .read_object(&tar.key, move |decrypted| {
            let decoded = tar
                .codec
                .reader(decrypted)
                .map_err(|e| corrupt(&key, e.to_string()))?;
            let mut digest = TarDigest {
                inner: decoded,
                hasher: blake3::Hasher::new(),
                len: 0,
            };
            let entries = Entries {
                is_delta,
                files: files.as_deref(),
                wanted: &wanted,
                dest: dest.as_deref(),
                progress: &progress,
            };
            let mut report = entries.read(&mut digest, &key)?;
            if let Some(part) = recorded {
                let actual = digest.hasher.finalize().to_hex().to_string();
                if actual != part.blake3 || digest.len != part.plain_size {
                    report.problems.insert(
                        0,
                        format!(
                            "its tar ({} bytes) hashes to {actual}, pgdrill's record says {} bytes hashing to {}",
                            digest.len, part.plain_size, part.blake3
                        ),
                    );
                }
            }
            Ok(report)
        })
        .await?;
    if report.problems.is_empty() {
        Ok(report.taken)
    } else {
        Err(corrupt(&tar.key, report.problems.join("; ")))
    }
}

/// Hashes and counts a tar's plain bytes as they are read.
struct TarDigest<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
}

impl<R: Read> Read for TarDigest<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// How the entries of one tar are taken.
struct Entries<'a> {
    is_delta: bool,
    files: Option<&'a BTreeMap<String, FileDescription>>,
    wanted: &'a Wanted,
    dest: Option<&'a Path>,
    progress: &'a Progress,
}

impl Entries<'_> {
    fn read(&self, mut decoded: impl Read, key: &Key) -> Result<TarReport, BackupError> {
        let broken = |what: &str, e: io::Error| {
            corrupt(key, format!("{what}: {e} (a damaged frame, or not a tar)"))
        };
        let mut report = TarReport::default();
        {
            let mut archive = tar::Archive::new(&mut decoded);
            for entry in archive.entries().map_err(|e| broken("bad tar stream", e))? {
                let mut entry = entry.map_err(|e| broken("bad tar entry", e))?;
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                self.entry(&mut entry, &name, &mut report)
                    .map_err(|e| match e {
                        EntryError::Read(e) => broken(&format!("reading {name}"), e),
                        EntryError::Backup(e) => e,
                    })?;
            }
        }
        // The frame's checksum follows the tar's end.
        io::copy(&mut decoded, &mut io::sink()).map_err(|e| broken("after the tar's end", e))?;
        Ok(report)
    }

    fn entry(
        &self,
        entry: &mut tar::Entry<impl Read>,
        name: &str,
        report: &mut TarReport,
    ) -> Result<(), EntryError> {
        use std::os::unix::fs::PermissionsExt;
        let relative = name.trim_start_matches('/');
        if relative.is_empty() {
            // The data directory itself, which the restore prepared.
            report.taken.push(name.to_string());
            return Ok(());
        }
        let is_label = LABEL_FILES.contains(&name);
        let listed = self.files.map(|f| f.get(name));
        if matches!(listed, Some(None)) && !is_label && name != PG_CONTROL {
            report
                .problems
                .push(format!("{name} is not in files_metadata.json"));
            return Ok(());
        }
        if !self.wanted.contains(name) && !is_label && name != PG_CONTROL {
            return Ok(()); // a later backup of the chain has it
        }
        let Some(rel) = crate::backup::base::safe_relative(Path::new(relative)) else {
            report.problems.push(format!("unsafe path {name}"));
            return Ok(());
        };
        let target = self.dest.map(|d| d.join(&rel));
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if let Some(target) = &target {
                    std::fs::create_dir_all(target).map_err(write_failed(target))?;
                    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
                        .map_err(write_failed(target))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let incremented = self.is_delta && listed.flatten().is_some_and(|d| d.incremented);
                if incremented {
                    let file = match &target {
                        Some(target) => Some(
                            std::fs::OpenOptions::new()
                                .read(true)
                                .write(true)
                                .open(target)
                                .map_err(|e| {
                                    EntryError::Backup(BackupError::Invalid(format!(
                                        "{name} is an increment, and its base file was not restored ({e}): the delta's base backup lacks it"
                                    )))
                                })?,
                        ),
                        None => None,
                    };
                    if let Err(e) = increment::apply(entry, file.as_ref(), |n| self.progress.add(n))
                    {
                        report
                            .problems
                            .push(format!("{name}: its increment does not apply: {e}"));
                        return Ok(());
                    }
                } else {
                    self.copy_file(entry, target.as_deref())?;
                }
            }
            other => {
                report.problems.push(format!(
                    "{name} is a {other:?} entry, which pgdrill does not restore (tablespaces are not supported)"
                ));
                return Ok(());
            }
        }
        report.taken.push(name.to_string());
        Ok(())
    }

    fn copy_file(&self, entry: &mut impl Read, target: Option<&Path>) -> Result<(), EntryError> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = match target {
            Some(target) => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(write_failed(target))?;
                }
                let file = std::fs::File::create(target).map_err(write_failed(target))?;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(write_failed(target))?;
                Some((io::BufWriter::with_capacity(256 * 1024, file), target))
            }
            None => None,
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = entry.read(&mut buf).map_err(EntryError::Read)?;
            if n == 0 {
                break;
            }
            if let Some((out, target)) = &mut out {
                out.write_all(&buf[..n]).map_err(write_failed(target))?;
            }
            self.progress.add(n as u64);
        }
        if let Some((mut out, target)) = out {
            out.flush().map_err(write_failed(target))?;
        }
        Ok(())
    }
}

/// Reading an entry failed (the object is damaged) or the restore
/// could not go on (writing, a missing base file).
enum EntryError {
    Read(io::Error),
    Backup(BackupError),
}

fn write_failed(target: &Path) -> impl Fn(io::Error) -> EntryError + '_ {
    move |e| EntryError::Backup(BackupError::io(format!("writing {}", target.display()))(e))
}

impl From<BackupError> for EntryError {
    fn from(e: BackupError) -> Self {
        EntryError::Backup(e)
    }
}

/// The size a restore of `plan` writes, for progress: the sum of the
/// sentinels' uncompressed sizes.
pub fn total_size(chain: &[BackupSummary]) -> u64 {
    chain.iter().map(|s| s.uncompressed_size).sum()
}
