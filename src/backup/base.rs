//! `backup-push` and `backup-fetch`: physical base backups as compressed tar
//! parts, uploaded and downloaded in parallel, verified file by file.
//!
//! Push order (crash safety): `pg_backup_start` on one connection held for
//! the whole backup; data parts in parallel; `global/pg_control` in a part
//! of its own, read last; `pg_backup_stop` (waits for the WAL to be
//! archived); the archive check (every segment from the start to the stop
//! segment is in this store); `metadata.json`; the sentinel LAST. A push
//! that dies or fails anywhere leaves objects without a sentinel: not a
//! backup, never listed.

use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::catalog::{self, BackupMetadata, BackupSummary, FileEntry, PartInfo};
use super::codec::{Compression, ObjectReader, ObjectWriter};
use super::crypto::Encryption;
use super::delta;
use super::layout::{self, Segment};
use super::pg::{connect, pg_err};
use super::store::Key;
use super::wal;
use super::{BackupError, Context};
use crate::backup::progress::{human_bytes, Progress};
use crate::backup::sabotage::Sabotage;

/// Directories whose contents are never backed up (the directory itself is
/// kept, empty), as in `pg_basebackup`.
const EMPTY_DIRS: &[&str] = &[
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
const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "standby.signal",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
];

const PG_CONTROL: &str = "global/pg_control";

/// One file or directory found in the data directory.
#[derive(Debug, Clone)]
struct WalkEntry {
    rel: String,
    abs: PathBuf,
    is_dir: bool,
    size: u64,
    mode: u32,
}

/// Whether a file in a relation directory is a temporary relation
/// (`t<backend>_<relfilenode>[_fork][.seg]`).
fn is_temp_relation(name: &str) -> bool {
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
fn relation_of(name: &str) -> Option<(&str, bool)> {
    let base = name.split('.').next()?;
    let (node, fork) = base.split_once('_').unwrap_or((base, ""));
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some((node, fork == "init"))
}

/// Lists what a base backup contains, sorted, with pg_basebackup's
/// exclusions: see `EMPTY_DIRS`, `SKIP_TOP_FILES`, `pg_internal.init`,
/// `pgsql_tmp*`, temporary relations, and every fork but `_init` of
/// unlogged relations.
fn walk_data_dir(root: &Path) -> Result<Vec<WalkEntry>, BackupError> {
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
fn part_size(total: u64, threshold: u64, workers: usize) -> u64 {
    let balanced = total / (2 * workers.max(1) as u64);
    threshold.min(balanced.max(64 << 20))
}

/// Splits files into parts of at most `threshold` plaintext bytes (a larger
/// file gets a part of its own); directories go into the first part.
fn partition(entries: Vec<WalkEntry>, threshold: u64) -> Vec<Vec<WalkEntry>> {
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

/// A `Write` that cuts its input into chunks for [`super::store::Store::put_stream`].
struct ChunkSink {
    tx: mpsc::Sender<Result<Bytes, String>>,
    buf: Vec<u8>,
    total: u64,
}

const SINK_CHUNK: usize = 1 << 20;

impl ChunkSink {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SINK_CHUNK));
        self.total += chunk.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SINK_CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads exactly `size` bytes of a file that may change underneath: a file
/// that shrank is padded with zeros, one that grew is cut (WAL replay makes
/// both consistent). Hashes what it hands out and counts progress.
struct FileReader<'a> {
    inner: io::Take<std::fs::File>,
    remaining: u64,
    hasher: blake3::Hasher,
    progress: &'a Progress,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        self.hasher.update(&buf[..n]);
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// What a delta backup compares with: the previous backup in its chain.
#[derive(Debug)]
pub struct DeltaBase {
    /// Pages with an LSN at or after this one changed (its start LSN).
    from_lsn: u64,
    /// Its files' sizes.
    sizes: HashMap<String, u64>,
    /// A deliberate defect (test builds only).
    sabotage: Option<Sabotage>,
}

impl DeltaBase {
    /// Whether `rel`'s changed pages are picked by LSN.
    fn by_lsn(&self, rel: &str) -> bool {
        if self.sabotage == Some(Sabotage::StaleVisibilityMap) {
            return matches!(delta::relation_fork(rel), Some("" | "vm" | "fsm"));
        }
        delta::pages_selectable_by_lsn(rel)
    }

    /// Pages of `rel` with an LSN at or after this one changed.
    fn changed_since(&self, rel: &str) -> u64 {
        if self.sabotage == Some(Sabotage::DeltaMissesChanges) && is_user_relation(rel) {
            return u64::MAX;
        }
        self.from_lsn
    }
}

/// Whether `rel` is a file of a relation users made (OID at least
/// FirstNormalObjectId, 16384) in a database directory.
fn is_user_relation(rel: &str) -> bool {
    rel.strip_prefix("base/")
        .and_then(|r| r.split('/').nth(1))
        .and_then(|name| name.split(['_', '.']).next())
        .and_then(|oid| oid.parse::<u32>().ok())
        .is_some_and(|oid| oid >= 16384)
}

/// Most bytes of changed pages one file may keep in memory before the
/// file is stored whole instead (bounds backup-push's memory).
const DELTA_PAGE_LIMIT: usize = 32 << 20;

/// Writes one tar part into `sink`; returns the files it holds. With a
/// delta base, relation files it also holds are stored as changed pages.
fn write_part(
    entries: &[WalkEntry],
    part_name: &str,
    sink: ChunkSink,
    compression: Compression,
    encryption: &Encryption,
    delta_base: Option<&DeltaBase>,
    progress: &Progress,
) -> io::Result<(Vec<FileEntry>, super::codec::Digest, u64)> {
    let mut tar = tar::Builder::new(ObjectWriter::new(
        encryption.wrap_writer(sink)?,
        compression,
    )?);
    let mut files = Vec::with_capacity(entries.len());
    let mtime = Utc::now().timestamp().max(0) as u64;
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode);
        header.set_mtime(mtime);
        if e.is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, &e.rel, io::empty())?;
            files.push(FileEntry {
                path: e.rel.clone(),
                is_dir: true,
                size: 0,
                mode: e.mode,
                blake3: None,
                part: part_name.to_string(),
                delta: false,
            });
            continue;
        }
        let file = match std::fs::File::open(&e.abs) {
            Ok(f) => f,
            // Dropped tables vanish during a backup: WAL replay knows.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("{}: {err}", e.abs.display()),
                ))
            }
        };
        let mut file = file;
        let size = file.metadata()?.len();
        header.set_entry_type(tar::EntryType::Regular);
        let previous_size = delta_base
            .filter(|d| d.by_lsn(&e.rel))
            .and_then(|d| Some((d.changed_since(&e.rel), *d.sizes.get(&e.rel)?)));
        if let Some((from_lsn, previous_size)) = previous_size {
            match delta::scan(&mut file, size, previous_size, from_lsn, DELTA_PAGE_LIMIT)? {
                delta::Scan::Pages { numbers, pages } => {
                    let head = delta::entry_head(size, &numbers);
                    header.set_size(delta::entry_len(numbers.len()));
                    tar.append_data(&mut header, &e.rel, head.as_slice().chain(pages.as_slice()))?;
                    progress.add(size);
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(&head);
                    hasher.update(&pages);
                    files.push(FileEntry {
                        path: e.rel.clone(),
                        is_dir: false,
                        size,
                        mode: e.mode,
                        blake3: Some(hasher.finalize().to_hex().to_string()),
                        part: part_name.to_string(),
                        delta: true,
                    });
                    continue;
                }
                delta::Scan::Whole => {
                    file.seek(io::SeekFrom::Start(0))?;
                }
            }
        }
        header.set_size(size);
        let mut reader = FileReader {
            inner: file.take(size),
            remaining: size,
            hasher: blake3::Hasher::new(),
            progress,
        };
        tar.append_data(&mut header, &e.rel, &mut reader)?;
        files.push(FileEntry {
            path: e.rel.clone(),
            is_dir: false,
            size,
            mode: e.mode,
            blake3: Some(reader.hasher.finalize().to_hex().to_string()),
            part: part_name.to_string(),
            delta: false,
        });
    }
    let object = tar.into_inner()?;
    let (sealed, digest) = object.finish()?;
    let mut sink = sealed.finish()?;
    sink.send_buf()?;
    Ok((files, digest, sink.total))
}

/// Uploads one part: a blocking producer (read, tar, compress) feeding the
/// store's streaming upload through a small bounded channel.
async fn upload_part(
    ctx: &Context,
    backup: &str,
    part_name: String,
    entries: Vec<WalkEntry>,
    delta_base: Option<Arc<DeltaBase>>,
    progress: Arc<Progress>,
) -> Result<(PartInfo, Vec<FileEntry>), BackupError> {
    let compression = ctx.settings.compression;
    let key = layout::part_key(backup, &part_name, compression);
    let (tx, rx) = mpsc::channel(4);
    let abort_tx = tx.clone();
    let name = part_name.clone();
    let encryption = Arc::clone(&ctx.encryption);
    let producer = tokio::task::spawn_blocking(move || {
        let sink = ChunkSink {
            tx,
            buf: Vec::with_capacity(SINK_CHUNK),
            total: 0,
        };
        let result = write_part(
            &entries,
            &name,
            sink,
            compression,
            &encryption,
            delta_base.as_deref(),
            &progress,
        );
        if let Err(e) = &result {
            let _ = abort_tx.blocking_send(Err(e.to_string()));
        }
        result
    });
    let stored = ctx.store.put_stream(&key, rx).await;
    let produced = producer
        .await
        .map_err(BackupError::internal("the part writer task"))?;
    let (files, digest, compressed) =
        produced.map_err(BackupError::io(format!("writing {part_name}")))?;
    stored?;
    Ok((
        PartInfo {
            name: part_name,
            key: key.as_str().to_string(),
            plain_size: digest.plain_len,
            compressed_size: compressed,
            blake3: digest.hex(),
        },
        files,
    ))
}

/// Options of `backup-push`.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub permanent: bool,
    /// A full backup even when `WALG_DELTA_MAX_STEPS` allows a delta.
    pub full: bool,
    /// Checkpoint at once instead of spreading it (pg_backup_start's `fast`).
    pub fast_checkpoint: bool,
}

/// Takes a base backup of the cluster whose data directory is `data_dir`.
pub async fn backup_push(
    ctx: &Context,
    data_dir: &Path,
    opts: &PushOptions,
) -> Result<BackupSummary, BackupError> {
    let client = connect(&ctx.settings.pg).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    current_setting('data_directory'), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    pg_is_in_recovery(), \
                    current_setting('archive_mode'), \
                    current_setting('archive_command'), \
                    coalesce(current_setting('archive_library', true), '')",
            &[],
        )
        .await
        .map_err(pg_err("reading server settings"))?;
    let pg_version: i32 = row.get(0);
    let server_data_dir: String = row.get(1);
    let seg_size = row.get::<_, i64>(2) as u64;
    let system_identifier: String = row.get(3);
    if row.get::<_, bool>(4) {
        return Err(BackupError::Invalid(
            "the server is a standby; pgdrill takes backups from the primary only".into(),
        ));
    }
    check_archiving(row.get(5), row.get(6), row.get(7))?;
    if pg_version < 100000 {
        return Err(BackupError::Invalid(format!(
            "PostgreSQL {pg_version} is too old; pgdrill supports 10 and later"
        )));
    }
    let data_dir = std::fs::canonicalize(data_dir).map_err(BackupError::io(format!(
        "data directory {}",
        data_dir.display()
    )))?;
    if !data_dir.join("PG_VERSION").is_file() {
        return Err(BackupError::Invalid(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            data_dir.display()
        )));
    }
    if std::fs::canonicalize(&server_data_dir).ok().as_deref() != Some(data_dir.as_path()) {
        warn!(
            server = %server_data_dir,
            given = %data_dir.display(),
            "the server reports another data directory; backing up the given one (a sidecar mount?)"
        );
    }
    let previous = delta_previous(ctx, opts, &system_identifier).await?;
    let start_time = Utc::now();
    let label = format!("pgdrill {}", start_time.to_rfc3339());
    let start_sql = if pg_version >= 150000 {
        "SELECT lsn::text, pg_walfile_name(lsn) FROM pg_backup_start($1, $2) AS lsn"
    } else {
        "SELECT lsn::text, pg_walfile_name(lsn) FROM pg_start_backup($1, $2, false) AS lsn"
    };
    let row = client
        .query_one(start_sql, &[&label, &opts.fast_checkpoint])
        .await
        .map_err(pg_err("starting the backup"))?;
    let start_lsn: String = row.get(0);
    let start_wal: String = row.get(1);
    let timeline = u32::from_str_radix(&start_wal[..8], 16).unwrap_or(1);
    // A delta only on the same timeline: after a point-in-time restore,
    // LSNs of the new timeline say nothing about the old one's pages.
    let previous = previous.filter(|(p, _)| p.timeline == timeline);
    let backup_name = match &previous {
        Some((p, _)) => format!("base_{start_wal}_D_{}", p.wal_file_name),
        None => format!("base_{start_wal}"),
    };
    let delta_base = previous.as_ref().map(|(p, metadata)| {
        Arc::new(DeltaBase {
            from_lsn: layout::Lsn::parse(&p.start_lsn).map_or(0, |l| l.0),
            sizes: metadata
                .files
                .iter()
                .filter(|f| !f.is_dir)
                .map(|f| (f.path.clone(), f.size))
                .collect(),
            sabotage: ctx.settings.sabotage,
        })
    });
    info!(%backup_name, %start_lsn, "backup started");

    let walk_dir = data_dir.clone();
    let mut entries = tokio::task::spawn_blocking(move || walk_data_dir(&walk_dir))
        .await
        .map_err(BackupError::internal("the directory walk task"))??;
    if ctx.settings.sabotage == Some(Sabotage::OmitRelationFile) {
        let largest = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| is_user_relation(&e.rel) && delta::pages_selectable_by_lsn(&e.rel))
            .max_by_key(|(_, e)| e.size)
            .map(|(i, _)| i);
        if let Some(i) = largest {
            warn!(file = %entries[i].rel, "SABOTAGE: leaving a relation file out of the backup");
            entries.remove(i);
        }
    }
    let (pg_control, data_entries): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|e| e.rel == PG_CONTROL);
    if pg_control.is_empty() {
        return Err(BackupError::Invalid(format!(
            "{} has no {PG_CONTROL}",
            data_dir.display()
        )));
    }
    let total: u64 = data_entries.iter().map(|e| e.size).sum();
    let (progress, progress_guard) = Progress::start("backup-push", total, Duration::from_secs(5));
    let parts = partition(
        data_entries,
        part_size(
            total,
            ctx.settings.tar_size_threshold,
            ctx.settings.upload_concurrency,
        ),
    );
    info!(
        parts = parts.len(),
        size = %human_bytes(total),
        "uploading with concurrency {}",
        ctx.settings.upload_concurrency
    );
    let mut uploaded: Vec<(PartInfo, Vec<FileEntry>)> =
        futures::stream::iter(parts.into_iter().enumerate())
            .map(|(i, entries)| {
                upload_part(
                    ctx,
                    &backup_name,
                    format!("part_{}", i + 1),
                    entries,
                    delta_base.clone(),
                    Arc::clone(&progress),
                )
            })
            .buffer_unordered(ctx.settings.upload_concurrency)
            .try_collect()
            .await?;
    // pg_control last, after every data file was read.
    uploaded.push(
        upload_part(
            ctx,
            &backup_name,
            layout::PG_CONTROL_PART.to_string(),
            pg_control,
            None,
            Arc::clone(&progress),
        )
        .await?,
    );
    // The data is read: later waits (archiving) are not upload progress.
    let rate = progress.rate();
    drop(progress_guard);

    let stop_sql = if pg_version >= 150000 {
        "SELECT lsn::text, labelfile, spcmapfile, pg_walfile_name(lsn) FROM pg_backup_stop(true)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile, pg_walfile_name(lsn) FROM pg_stop_backup(false, true)"
    };
    let row = client.query_one(stop_sql, &[]).await.map_err(pg_err(
        "stopping the backup (the WAL it needs may not be archived: check archive_command)",
    ))?;
    let finish_lsn: String = row.get(0);
    let mut backup_label: String = row.get(1);
    if ctx.settings.sabotage == Some(Sabotage::WrongBackupLabel) {
        warn!("SABOTAGE: backup_label names the backup's end as its checkpoint");
        backup_label = backup_label
            .lines()
            .map(|line| match line.strip_prefix("CHECKPOINT LOCATION: ") {
                Some(_) => format!("CHECKPOINT LOCATION: {}", row.get::<_, String>(0)),
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    let tablespace_map: Option<String> = row.get(2);
    let finish_wal: String = row.get(3);
    let finish_time = Utc::now();
    // pg_backup_stop waited for the archiver, but not necessarily for this
    // store: prove the backup's WAL is here before declaring it complete.
    if let Err(e) = wait_for_wal(ctx, &backup_name, &start_wal, &finish_wal, seg_size).await {
        discard_unfinished(ctx, &backup_name).await;
        return Err(e);
    }

    uploaded.sort_by_key(|a| part_order(&a.0.name));
    let (parts, files): (Vec<PartInfo>, Vec<Vec<FileEntry>>) = uploaded.into_iter().unzip();
    let mut files: Vec<FileEntry> = files.into_iter().flatten().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let metadata = BackupMetadata {
        backup_name: backup_name.clone(),
        backup_label,
        tablespace_map: tablespace_map.unwrap_or_default(),
        parts,
        files,
    };
    let metadata_json = serde_json::to_vec_pretty(&metadata)
        .map_err(BackupError::internal("serializing metadata.json"))?;
    let summary = BackupSummary {
        backup_name: backup_name.clone(),
        start_time,
        finish_time,
        start_lsn,
        finish_lsn,
        wal_file_name: start_wal,
        finish_wal_file_name: finish_wal,
        timeline,
        pg_version,
        system_identifier,
        hostname: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        data_dir: data_dir.display().to_string(),
        uncompressed_size: metadata.parts.iter().map(|p| p.plain_size).sum(),
        compressed_size: metadata.parts.iter().map(|p| p.compressed_size).sum(),
        is_permanent: opts.permanent,
        compression: ctx.settings.compression.extension().to_string(),
        wal_segment_size: seg_size,
        metadata_blake3: blake3::hash(&metadata_json).to_hex().to_string(),
        increment_from: previous.as_ref().map(|(p, _)| p.backup_name.clone()),
        increment_full_name: previous.as_ref().map(|(p, _)| {
            p.increment_full_name
                .clone()
                .unwrap_or_else(|| p.backup_name.clone())
        }),
        increment_count: previous.as_ref().map_or(0, |(p, _)| p.increment_count + 1),
        pgdrill_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    ctx.store
        .put(
            &layout::metadata_key(&backup_name),
            Bytes::from(metadata_json),
        )
        .await?;
    let sentinel = serde_json::to_vec_pretty(&summary)
        .map_err(BackupError::internal("serializing the sentinel"))?;
    ctx.store
        .put(&layout::sentinel_key(&backup_name), Bytes::from(sentinel))
        .await?;
    info!(
        %backup_name,
        size = %human_bytes(summary.uncompressed_size),
        compressed = %human_bytes(summary.compressed_size),
        rate = %format!("{}/s", human_bytes(rate as u64)),
        "backup complete"
    );
    Ok(summary)
}

/// Refuses to start a backup that could never be restored: a server that
/// does not archive WAL at all.
fn check_archiving(mode: String, command: String, library: String) -> Result<(), BackupError> {
    if mode == "off" {
        return Err(BackupError::ArchivingOff(
            "archive_mode is off on this server".into(),
        ));
    }
    if command.trim().is_empty() && library.trim().is_empty() {
        return Err(BackupError::ArchivingOff(
            "archive_command is empty on this server (archive_mode is on but nothing archives)"
                .into(),
        ));
    }
    Ok(())
}

/// Waits until every WAL segment from `start_wal` to `finish_wal` is stored
/// (in any compression), up to `PGDRILL_ARCHIVE_CHECK_TIMEOUT`, as
/// pgBackRest's archive check does. A backup whose WAL is elsewhere (or
/// nowhere) cannot be restored from this store, and a listed one would make
/// retention delete older good backups.
async fn wait_for_wal(
    ctx: &Context,
    backup: &str,
    start_wal: &str,
    finish_wal: &str,
    seg_size: u64,
) -> Result<(), BackupError> {
    let (Some(start), Some(finish)) = (
        Segment::parse(start_wal, seg_size),
        Segment::parse(finish_wal, seg_size),
    ) else {
        return Err(BackupError::Invalid(format!(
            "the server reported WAL segments {start_wal} and {finish_wal}, which are not segment names for {seg_size}-byte segments"
        )));
    };
    let mut missing: Vec<String> = (start.segno..=finish.segno)
        .map(|segno| {
            Segment {
                timeline: finish.timeline,
                segno,
            }
            .file_name(seg_size)
        })
        .collect();
    let timeout = ctx.settings.archive_check_timeout;
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let found: Vec<bool> =
            futures::stream::iter(&missing)
                .map(|name| async move {
                    Ok::<_, BackupError>(wal::find_wal(ctx, name).await?.is_some())
                })
                .buffered(ctx.settings.download_concurrency)
                .try_collect()
                .await?;
        let mut found = found.into_iter();
        missing.retain(|_| !found.next().unwrap_or(false));
        let waited = started.elapsed();
        let (Some(first), Some(last)) = (missing.first(), missing.last()) else {
            return Ok(());
        };
        if waited >= timeout {
            return Err(BackupError::WalNotArchived {
                backup: backup.to_string(),
                missing: if first == last {
                    format!("WAL segment {first}")
                } else {
                    format!("{} WAL segments ({first} to {last})", missing.len())
                },
                is_are: if first == last { "is" } else { "are" },
                store: ctx.store.describe(),
                waited: humantime::format_duration(Duration::from_secs(waited.as_secs()))
                    .to_string(),
            });
        }
        if pause == Duration::from_millis(100) {
            info!(first = %first, last = %last, "waiting for the backup's WAL to be archived");
        }
        tokio::time::sleep(pause.min(timeout - waited)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Best effort: removes what an unfinished backup uploaded (it has no
/// sentinel, so it is not listed either way; `delete` would remove it later).
async fn discard_unfinished(ctx: &Context, backup: &str) {
    let Ok(objects) = ctx.store.list(&layout::backup_prefix(backup)).await else {
        return;
    };
    for o in objects {
        if let Err(e) = ctx.store.delete(&o.key).await {
            warn!(key = %o.key, "cannot remove a part of the unfinished backup: {e}");
        }
    }
}

/// The backup a new delta builds on, with its metadata: the newest backup
/// of the same cluster, while its chain is shorter than
/// `WALG_DELTA_MAX_STEPS`. `None`: take a full backup.
async fn delta_previous(
    ctx: &Context,
    opts: &PushOptions,
    system_identifier: &str,
) -> Result<Option<(BackupSummary, BackupMetadata)>, BackupError> {
    let max = ctx.settings.delta_max_steps;
    if opts.full || max == 0 {
        return Ok(None);
    }
    let Some(newest) = catalog::list_backups(ctx).await?.pop() else {
        return Ok(None);
    };
    let s = newest.summary;
    if s.system_identifier != system_identifier || s.increment_count >= max {
        info!(previous = %s.backup_name, "taking a full backup (chain at WALG_DELTA_MAX_STEPS or another cluster)");
        return Ok(None);
    }
    let metadata = catalog::read_metadata(ctx, &s).await?;
    Ok(Some((s, metadata)))
}

/// `part_1`, `part_2`, ..., then `pg_control`.
fn part_order(name: &str) -> (u8, u64) {
    match name.strip_prefix("part_").and_then(|n| n.parse().ok()) {
        Some(n) => (0, n),
        None => (1, 0),
    }
}

/// What `backup-fetch` writes for recovery.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryConfig {
    /// Only restore files; print what to do next.
    None,
    /// `recovery.signal` plus restore_command: recover to the end of the archive.
    EndOfArchive,
    /// `recovery.signal`, restore_command, `recovery_target_time` (UTC,
    /// explicit offset) and `recovery_target_action = 'promote'`.
    Time(chrono::DateTime<Utc>),
}

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
async fn restore_files(
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
fn remove_unlisted(dest: &Path, metadata: &BackupMetadata) -> Result<(), BackupError> {
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

/// Restores backup `name` (or `LATEST`) into `dest`.
pub async fn backup_fetch(
    ctx: &Context,
    dest: &Path,
    name: &str,
    opts: &FetchOptions,
) -> Result<BackupSummary, BackupError> {
    let summary = catalog::resolve(ctx, name).await?;
    // A delta restores as its chain: the full backup, then each delta.
    let mut chain = Vec::new();
    for member in catalog::chain(ctx, &summary).await? {
        let metadata = catalog::read_metadata(ctx, &member).await?;
        chain.push((member, metadata));
    }
    prepare_target(dest, opts.force)?;
    let total: u64 = chain
        .iter()
        .flat_map(|(_, m)| &m.parts)
        .map(|p| p.plain_size)
        .sum();
    let (progress, _guard) = Progress::start("backup-fetch", total, Duration::from_secs(5));
    for (backup, metadata) in &chain {
        if chain.len() > 1 {
            info!(backup = %backup.backup_name, "restoring chain member");
        }
        restore_files(ctx, dest, metadata, &progress).await?;
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
    if opts.verify {
        let dest = dest.to_path_buf();
        let files = metadata.files.clone();
        tokio::task::spawn_blocking(move || verify_restored(&dest, &files))
            .await
            .map_err(BackupError::internal("the verification task"))??;
        info!("verified every restored file against the backup's checksums");
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

/// Makes `dest` an empty directory for a restore: created when absent;
/// refused when not empty unless `force`, which empties it.
fn prepare_target(dest: &Path, force: bool) -> Result<(), BackupError> {
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
fn empty_directory(dir: &Path) -> Result<(), BackupError> {
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

fn write_file(path: &Path, data: &[u8]) -> Result<(), BackupError> {
    std::fs::write(path, data).map_err(BackupError::io(format!("writing {}", path.display())))
}

/// A relative path from a tar entry that stays inside the target.
fn safe_relative(path: &Path) -> Option<PathBuf> {
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

async fn download_part(
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
    let stream = ctx.store.get_stream(&key).await?.map_err(io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let part = part.clone();
    let encryption = Arc::clone(&ctx.encryption);
    tokio::task::spawn_blocking(move || {
        let reader = encryption.wrap_reader(&key, reader)?;
        read_part(reader, &part, &key, dest.as_deref(), &expected, &progress)
    })
    .await
    .map_err(BackupError::internal("the extract task"))?
}

/// Decodes one part, walks its tar entries and checks each against the
/// backup's file list (path known and safe, content BLAKE3), writing them
/// under `dest` when given; then checks the object's trailer and the part's
/// checksum.
fn read_part(
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
                        .and_then(|mut f| delta::apply_entry(&mut hashing, &mut f)),
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
                                super::codec::CodecError::Io(e),
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
        .map_err(|e| BackupError::from_codec(key, super::codec::CodecError::Io(e)))?;
    // Every entry was read: a bad trailer is one more problem of this part.
    match object.verified_digest() {
        Ok(digest) if digest.hex() != part.blake3 => report.problems.push(format!(
            "part hashes to {}, metadata says {}",
            digest.hex(),
            part.blake3
        )),
        Ok(_) => {}
        Err(super::codec::CodecError::Corrupt(detail)) => report.problems.push(detail),
        Err(e) => return Err(BackupError::from_codec(key, e)),
    }
    Ok(report)
}

/// Records a problem when an entry's content does not hash as recorded.
fn check_hash(report: &mut PartReport, rel: &str, want: &FileEntry, actual: blake3::Hash) {
    let actual = actual.to_hex().to_string();
    if want.blake3.as_deref() != Some(actual.as_str()) {
        report.problems.push(format!(
            "{rel}: content hashes to {actual}, the backup recorded {}",
            want.blake3.as_deref().unwrap_or("nothing")
        ));
    }
}

/// Hashes what passes through and counts it as progress.
struct HashingReader<'a, R> {
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

/// Re-reads every restored file and compares it with the backup's list
/// (files restored from a delta entry have the entry's checksum, checked
/// when it was applied, so they are skipped here).
fn verify_restored(dest: &Path, files: &[FileEntry]) -> Result<(), BackupError> {
    let mut problems = Vec::new();
    for f in files.iter().filter(|f| !f.is_dir && !f.delta) {
        let path = dest.join(&f.path);
        match std::fs::File::open(&path) {
            Err(e) => problems.push(format!("{}: {e}", f.path)),
            Ok(mut file) => {
                let mut hasher = blake3::Hasher::new();
                if let Err(e) = io::copy(&mut file, &mut hasher) {
                    problems.push(format!("{}: {e}", f.path));
                    continue;
                }
                let actual = hasher.finalize().to_hex().to_string();
                if f.blake3.as_deref() != Some(actual.as_str()) {
                    problems.push(format!("{}: checksum differs from the backup", f.path));
                }
            }
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

fn write_recovery_config(
    ctx: &Context,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<(), BackupError> {
    let restore_command = opts
        .restore_command
        .clone()
        .unwrap_or_else(|| ctx.self_command("wal-fetch %f %p"));
    let mut settings = Vec::new();
    match &opts.recovery {
        RecoveryConfig::None => {
            println!(
                "restored into {}; to recover, create {}/recovery.signal and set in postgresql.auto.conf:\n  restore_command = '{}'\n  recovery_target_time = '<time with UTC offset>'   # optional, for point-in-time recovery\n  recovery_target_action = 'promote'",
                dest.display(),
                dest.display(),
                restore_command
            );
        }
        RecoveryConfig::EndOfArchive => {
            settings.push(format!(
                "restore_command = '{}'",
                restore_command.replace('\'', "''")
            ));
        }
        RecoveryConfig::Time(t) => {
            let t = if ctx.settings.sabotage == Some(Sabotage::LateRecoveryTarget) {
                warn!("SABOTAGE: writing the recovery target two seconds late");
                *t + chrono::Duration::seconds(2)
            } else {
                *t
            };
            settings.push(format!(
                "restore_command = '{}'",
                restore_command.replace('\'', "''")
            ));
            settings.push(format!(
                "recovery_target_time = '{}'",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
            settings.push("recovery_target_action = 'promote'".into());
        }
    }
    if opts.no_archive {
        settings.push("archive_mode = 'off'".into());
    }
    if settings.is_empty() {
        return Ok(());
    }
    if opts.recovery != RecoveryConfig::None {
        write_file(&dest.join("recovery.signal"), b"")?;
    }
    let auto_conf = dest.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    conf.push_str("\n# written by pgdrill backup-fetch\n");
    for s in &settings {
        conf.push_str(s);
        conf.push('\n');
    }
    write_file(&auto_conf, conf.as_bytes())?;
    println!(
        "restored into {} with recovery settings:\n  {}\nstart PostgreSQL on it to recover",
        dest.display(),
        settings.join("\n  ")
    );
    Ok(())
}

/// Flushes everything written to the target's file system at once
/// (cheaper than an fsync per file). A restore that could not be made
/// durable is a failed restore.
fn sync_filesystem(dest: &Path) -> Result<(), BackupError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_classification() {
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t3_16384_fsm"));
        assert!(is_temp_relation("t12_16384.1"));
        assert!(!is_temp_relation("16384"));
        assert!(!is_temp_relation("tx_1"));
        assert_eq!(relation_of("16384"), Some(("16384", false)));
        assert_eq!(relation_of("16384.2"), Some(("16384", false)));
        assert_eq!(relation_of("16384_vm"), Some(("16384", false)));
        assert_eq!(relation_of("16384_init"), Some(("16384", true)));
        assert_eq!(relation_of("PG_VERSION"), None);
    }

    #[test]
    fn walk_applies_pg_basebackup_exclusions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in [
            "base/5",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc",
            "base/5/pgsql_tmp",
        ] {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "global/pg_control",
            "global/pg_internal.init",
            "base/5/16384",
            "base/5/16384_fsm",
            "base/5/16390",
            "base/5/16390_init",
            "base/5/16390_fsm",
            "base/5/t3_16400",
            "base/5/pgsql_tmp/x",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/global.stat",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let got: Vec<String> = walk_data_dir(d)
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(
            got,
            [
                "PG_VERSION",
                "base",
                "base/5",
                "base/5/16384",
                "base/5/16384_fsm",
                "base/5/16390_init",
                "global",
                "global/pg_control",
                "pg_stat_tmp",
                "pg_tblspc",
                "pg_wal",
            ]
        );
        std::os::unix::fs::symlink("/tmp", d.join("pg_tblspc/16500")).unwrap();
        let err = walk_data_dir(d).unwrap_err().to_string();
        assert!(err.contains("tablespaces"), "{err}");
    }

    #[test]
    fn part_size_balances_workers_within_bounds() {
        let gib = 1u64 << 30;
        assert_eq!(part_size(3 * gib / 2, gib, 2), 3 * gib / 8);
        assert_eq!(part_size(100 << 20, gib, 2), 64 << 20);
        assert_eq!(part_size(100 * gib, gib, 4), gib);
    }

    #[test]
    fn partition_respects_threshold() {
        let e = |rel: &str, size, is_dir| WalkEntry {
            rel: rel.into(),
            abs: PathBuf::new(),
            is_dir,
            size,
            mode: 0o600,
        };
        let parts = partition(
            vec![
                e("a", 60, false),
                e("b", 50, false),
                e("d", 0, true),
                e("c", 500, false),
                e("e", 10, false),
            ],
            100,
        );
        let names: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.rel.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "d"], vec!["b"], vec!["c"], vec!["e"]]);
    }

    #[test]
    fn force_empties_the_target_and_keeps_a_symlinked_pg_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (data, wal) = (dir.path().join("data"), dir.path().join("wal-disk"));
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        std::fs::create_dir_all(wal.join(".pgdrill/prefetch")).unwrap();
        std::fs::write(data.join("base/1/999"), b"x").unwrap();
        std::fs::write(wal.join("000000010000000000000009"), b"x").unwrap();
        std::fs::write(wal.join(".pgdrill/prefetch/00000001000000000000000A"), b"x").unwrap();
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).unwrap();
        assert!(prepare_target(&data, false).is_err());
        prepare_target(&data, true).unwrap();
        let left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["pg_wal"], "only the symlink stays");
        assert!(std::fs::symlink_metadata(data.join("pg_wal"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_dir(&wal).unwrap().count(),
            0,
            "pg_wal's disk emptied"
        );
        assert!(sync_filesystem(&data).is_ok());
        assert!(sync_filesystem(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn unsafe_tar_paths_are_rejected() {
        assert!(safe_relative(Path::new("../etc/passwd")).is_none());
        assert!(safe_relative(Path::new("/etc/passwd")).is_none());
        assert_eq!(
            safe_relative(Path::new("./base/1")),
            Some(PathBuf::from("base/1"))
        );
    }
}
