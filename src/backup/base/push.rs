//! `backup-push`: the parts, the archive check, metadata and the sentinel
//! last (see the module above for the order).

use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::walk::*;
use crate::backup::catalog::{
    self, BackupFormat, BackupMetadata, BackupSummary, FileEntry, PartInfo,
};
use crate::backup::codec::{Compression, Digest, ObjectWriter};
use crate::backup::config::StorageFormat;
use crate::backup::crypto::{EncryptWriter, Encryption};
use crate::backup::delta;
use crate::backup::layout::{self, Segment};
use crate::backup::pg::{connect, pg_err};
use crate::backup::progress::{human_bytes, Progress};
use crate::backup::sabotage::Sabotage;
use crate::backup::store::Created;
use crate::backup::wal;
use crate::backup::walg;
use crate::backup::{BackupError, Context};

/// A `Write` that cuts its input into chunks for [`crate::backup::store::Store::put_stream`].
pub(super) struct ChunkSink {
    tx: mpsc::Sender<Result<Bytes, String>>,
    buf: Vec<u8>,
    total: u64,
}

pub(super) const SINK_CHUNK: usize = 1 << 20;

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

/// The stream a tar part is written into, compressed and encrypted as
/// the storage format has it, its plain bytes counted and hashed.
pub(super) enum PartSink {
    /// pgdrill's object: header, payload, a trailer with the BLAKE3.
    Pgdrill(ObjectWriter<EncryptWriter<ChunkSink>>),
    /// WAL-G's: the compressed stream alone, encrypted as WAL-G does.
    Walg {
        encoder: walg::Encoder<EncryptWriter<ChunkSink>>,
        hasher: blake3::Hasher,
        plain_len: u64,
    },
}

impl PartSink {
    fn new(
        format: StorageFormat,
        sink: ChunkSink,
        compression: Compression,
        encryption: &Encryption,
    ) -> io::Result<PartSink> {
        Ok(match format {
            StorageFormat::Pgdrill => PartSink::Pgdrill(ObjectWriter::new(
                encryption.wrap_writer(sink)?,
                compression,
            )?),
            StorageFormat::Walg => PartSink::Walg {
                encoder: walg::Encoder::new(encryption.wrap_writer_walg(sink)?, compression)?,
                hasher: blake3::Hasher::new(),
                plain_len: 0,
            },
        })
    }

    /// Completes the object; the sink still holds its last chunk.
    fn finish(self) -> io::Result<(ChunkSink, Digest)> {
        match self {
            PartSink::Pgdrill(object) => {
                let (sealed, digest) = object.finish()?;
                Ok((sealed.finish()?, digest))
            }
            PartSink::Walg {
                encoder,
                hasher,
                plain_len,
            } => Ok((
                encoder.finish()?.finish()?,
                Digest {
                    plain_len,
                    blake3: *hasher.finalize().as_bytes(),
                },
            )),
        }
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            PartSink::Pgdrill(w) => w.write(data),
            PartSink::Walg {
                encoder,
                hasher,
                plain_len,
            } => {
                let n = encoder.write(data)?;
                hasher.update(&data[..n]);
                *plain_len += n as u64;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            PartSink::Pgdrill(w) => w.flush(),
            PartSink::Walg { encoder, .. } => encoder.flush(),
        }
    }
}

/// Appends one entry under the data-directory path `rel`: pgdrill names
/// it `rel`, WAL-G `/rel` (the data directory itself `/`) with the
/// file's own time.
fn append_entry(
    tar: &mut tar::Builder<PartSink>,
    format: StorageFormat,
    header: &mut tar::Header,
    rel: &str,
    data: impl Read,
) -> io::Result<()> {
    match format {
        StorageFormat::Pgdrill => tar.append_data(header, rel, data),
        StorageFormat::Walg => {
            walg::write::set_name(header, &format!("/{rel}"))?;
            tar.append(header, data)
        }
    }
}

/// Reads exactly `size` bytes of a file that may change underneath: a file
/// that shrank is padded with zeros, one that grew is cut (WAL replay makes
/// both consistent). Hashes what it hands out and counts progress.
pub(super) struct FileReader<'a> {
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
pub(super) fn is_user_relation(rel: &str) -> bool {
    rel.strip_prefix("base/")
        .and_then(|r| r.split('/').nth(1))
        .and_then(|name| name.split(['_', '.']).next())
        .and_then(|oid| oid.parse::<u32>().ok())
        .is_some_and(|oid| oid >= 16384)
}

/// Most bytes of changed pages one file may keep in memory before the
/// file is stored whole instead (bounds backup-push's memory).
pub(super) const DELTA_PAGE_LIMIT: usize = 32 << 20;

/// Writes one tar part into `sink` in the storage format; returns the
/// files it holds. With a delta base, relation files it also holds are
/// stored as changed pages (pgdrill's delta entries, or WAL-G's
/// increments).
#[allow(clippy::too_many_arguments)]
pub(super) fn write_part(
    entries: &[WalkEntry],
    part_name: &str,
    sink: ChunkSink,
    format: StorageFormat,
    compression: Compression,
    encryption: &Encryption,
    delta_base: Option<&DeltaBase>,
    progress: &Progress,
) -> io::Result<(Vec<FileEntry>, Digest, u64)> {
    let mut tar = tar::Builder::new(PartSink::new(format, sink, compression, encryption)?);
    let mut files = Vec::with_capacity(entries.len());
    let now = Utc::now();
    let new_header = || match format {
        StorageFormat::Pgdrill => tar::Header::new_gnu(),
        StorageFormat::Walg => tar::Header::new_ustar(),
    };
    for e in entries {
        let mut header = new_header();
        header.set_mode(e.mode);
        if e.is_dir {
            let mtime = match format {
                StorageFormat::Pgdrill => now,
                StorageFormat::Walg => modified(&std::fs::metadata(&e.abs)?),
            };
            header.set_mtime(mtime.timestamp().max(0) as u64);
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            append_entry(&mut tar, format, &mut header, &e.rel, io::empty())?;
            files.push(FileEntry {
                path: e.rel.clone(),
                is_dir: true,
                size: 0,
                mode: e.mode,
                blake3: None,
                part: part_name.to_string(),
                delta: false,
                mtime: (format == StorageFormat::Walg).then_some(mtime),
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
        let stat = file.metadata()?;
        let size = stat.len();
        let mtime = match format {
            StorageFormat::Pgdrill => now,
            StorageFormat::Walg => modified(&stat),
        };
        header.set_mtime(mtime.timestamp().max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        let entry = |blake3: blake3::Hash, delta: bool| FileEntry {
            path: e.rel.clone(),
            is_dir: false,
            size,
            mode: e.mode,
            blake3: Some(blake3.to_hex().to_string()),
            part: part_name.to_string(),
            delta,
            mtime: (format == StorageFormat::Walg).then_some(mtime),
        };
        let previous_size = delta_base
            .filter(|d| d.by_lsn(&e.rel))
            .and_then(|d| Some((d.changed_since(&e.rel), *d.sizes.get(&e.rel)?)));
        if let Some((from_lsn, previous_size)) = previous_size {
            match delta::scan(&mut file, size, previous_size, from_lsn, DELTA_PAGE_LIMIT)? {
                delta::Scan::Pages { numbers, pages } => {
                    let (head, len) = match format {
                        StorageFormat::Pgdrill => (
                            delta::entry_head(size, &numbers),
                            delta::entry_len(numbers.len()),
                        ),
                        StorageFormat::Walg => (
                            walg::increment::head(size, &numbers),
                            walg::increment::len(numbers.len()),
                        ),
                    };
                    header.set_size(len);
                    append_entry(
                        &mut tar,
                        format,
                        &mut header,
                        &e.rel,
                        head.as_slice().chain(pages.as_slice()),
                    )?;
                    progress.add(size);
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(&head);
                    hasher.update(&pages);
                    files.push(entry(hasher.finalize(), true));
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
        append_entry(&mut tar, format, &mut header, &e.rel, &mut reader)?;
        files.push(entry(reader.hasher.finalize(), false));
    }
    let (mut sink, digest) = tar.into_inner()?.finish()?;
    sink.send_buf()?;
    Ok((files, digest, sink.total))
}

/// A file's modification time (WAL-G records it, and a later WAL-G delta
/// skips a file whose time did not change).
fn modified(stat: &std::fs::Metadata) -> chrono::DateTime<Utc> {
    stat.modified()
        .map_or_else(|_| Utc::now(), chrono::DateTime::<Utc>::from)
}

/// Uploads one part: a blocking producer (read, tar, compress) feeding the
/// store's streaming upload through a small bounded channel.
pub(super) async fn upload_part(
    ctx: &Context,
    backup: &str,
    part_name: String,
    entries: Vec<WalkEntry>,
    delta_base: Option<Arc<DeltaBase>>,
    progress: Arc<Progress>,
) -> Result<(PartInfo, Vec<FileEntry>), BackupError> {
    let compression = ctx.settings.compression;
    let format = ctx.settings.storage_format;
    let key = match format {
        StorageFormat::Pgdrill => layout::part_key(backup, &part_name, compression),
        StorageFormat::Walg => layout::walg_tar_key(backup, &part_name, compression),
    };
    // WAL-G's file list names a tar by its file name.
    let part_name = match format {
        StorageFormat::Pgdrill => part_name,
        StorageFormat::Walg => key.file_name().to_string(),
    };
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
            format,
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
    let format = ctx.settings.storage_format;
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
    let Started {
        start_lsn,
        start_wal,
        timeline,
        previous,
        backup_name,
    } = start_under_owned_name(
        ctx,
        &client,
        pg_version,
        &label,
        opts.fast_checkpoint,
        previous,
    )
    .await?;
    let delta_base = previous.as_ref().map(|(p, metadata)| {
        let from_lsn = if ctx.settings.sabotage == Some(Sabotage::DeltaFromPreviousEnd) {
            &p.finish_lsn
        } else {
            &p.start_lsn
        };
        Arc::new(DeltaBase {
            from_lsn: layout::Lsn::parse(from_lsn).map_or(0, |l| l.0),
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
    let (pg_control, mut data_entries): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|e| e.rel == PG_CONTROL);
    if format == StorageFormat::Walg {
        // WAL-G's first entry is the data directory itself, named "/".
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data_dir)
            .map_err(BackupError::io(format!(
                "data directory {}",
                data_dir.display()
            )))?
            .permissions()
            .mode()
            & 0o7777;
        data_entries.insert(
            0,
            WalkEntry {
                rel: String::new(),
                abs: data_dir.clone(),
                is_dir: true,
                size: 0,
                mode,
            },
        );
    }
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
                    match format {
                        StorageFormat::Pgdrill => format!("part_{}", i + 1),
                        StorageFormat::Walg => format!("part_{:03}", i + 1),
                    },
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
    let (mut parts, files): (Vec<PartInfo>, Vec<Vec<FileEntry>>) = uploaded.into_iter().unzip();
    let tablespace_map = tablespace_map.unwrap_or_default();
    if format == StorageFormat::Walg {
        parts.push(upload_walg_label(ctx, &backup_name, &backup_label, &tablespace_map).await?);
    }
    parts_still_stored(ctx, &backup_name, &parts).await?;
    let mut files: Vec<FileEntry> = files.into_iter().flatten().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let metadata = BackupMetadata {
        backup_name: backup_name.clone(),
        backup_label,
        tablespace_map,
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
        format: match format {
            StorageFormat::Pgdrill => BackupFormat::Pgdrill,
            StorageFormat::Walg => BackupFormat::Walg,
        },
    };
    match format {
        StorageFormat::Pgdrill => {
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
        }
        StorageFormat::Walg => {
            let delta_lsn = delta_base.as_ref().map(|d| d.from_lsn);
            store_walg_documents(ctx, &summary, &metadata, metadata_json, delta_lsn).await?;
        }
    }
    info!(
        %backup_name,
        size = %human_bytes(summary.uncompressed_size),
        compressed = %human_bytes(summary.compressed_size),
        rate = %format!("{}/s", human_bytes(rate as u64)),
        "backup complete"
    );
    Ok(summary)
}

/// How many times a run starts its backup again when the name its start
/// segment gives is owned by another run. Each start after the first
/// begins in a later segment (ending a backup switches segments).
const NAME_ATTEMPTS: usize = 3;

/// A started backup under a name this run owns.
struct Started {
    start_lsn: String,
    start_wal: String,
    timeline: u32,
    /// The delta base, kept only on the same timeline: after a
    /// point-in-time restore, LSNs of the new timeline say nothing about
    /// the old one's pages.
    previous: Option<(BackupSummary, BackupMetadata)>,
    backup_name: String,
}

/// Starts the backup (`pg_backup_start`) and claims the name its start
/// segment gives. Two runs that start in one segment would share a name
/// and write over each other's objects: the claim is created only if
/// absent ([`Store::put_new`]), so exactly one run owns each name. A run
/// that finds its name owned ends its backup (`pg_backup_stop`, which
/// switches to a new segment) and starts again under the next segment's
/// name; it never writes or deletes under a name it does not own.
async fn start_under_owned_name(
    ctx: &Context,
    client: &tokio_postgres::Client,
    pg_version: i32,
    label: &str,
    fast_checkpoint: bool,
    previous: Option<(BackupSummary, BackupMetadata)>,
) -> Result<Started, BackupError> {
    let (start_sql, abandon_sql) = if pg_version >= 150000 {
        (
            "SELECT lsn::text, pg_walfile_name(lsn) FROM pg_backup_start($1, $2) AS lsn",
            "SELECT pg_backup_stop(false)",
        )
    } else {
        (
            "SELECT lsn::text, pg_walfile_name(lsn) FROM pg_start_backup($1, $2, false) AS lsn",
            "SELECT pg_stop_backup(false, false)",
        )
    };
    let mut attempt = 1;
    loop {
        let row = client
            .query_one(start_sql, &[&label, &fast_checkpoint])
            .await
            .map_err(pg_err("starting the backup"))?;
        let start_wal: String = row.get(1);
        let timeline = u32::from_str_radix(&start_wal[..8], 16).unwrap_or(1);
        let base = previous.as_ref().filter(|(p, _)| p.timeline == timeline);
        let backup_name = match base {
            Some((p, _)) => format!("base_{start_wal}_D_{}", p.wal_file_name),
            None => format!("base_{start_wal}"),
        };
        if claim_name(ctx, &backup_name, label).await? {
            return Ok(Started {
                start_lsn: row.get(0),
                start_wal,
                timeline,
                previous: previous.filter(|(p, _)| p.timeline == timeline),
                backup_name,
            });
        }
        if attempt == NAME_ATTEMPTS {
            return Err(BackupError::NameTaken {
                attempts: attempt,
                last: backup_name,
            });
        }
        warn!(%backup_name, "another backup-push run owns this name (it started in the same WAL segment); starting again in the next segment");
        client
            .query_one(abandon_sql, &[])
            .await
            .map_err(pg_err("ending a backup whose name another run owns"))?;
        attempt += 1;
    }
}

/// Creates the claim of `backup` for this run: `false` when another run
/// (or a backup already stored under that name) owns it.
async fn claim_name(ctx: &Context, backup: &str, label: &str) -> Result<bool, BackupError> {
    if ctx.settings.sabotage == Some(Sabotage::SharedBackupName) {
        warn!(%backup, "SABOTAGE: taking the backup name without claiming it");
        return Ok(true);
    }
    if ctx
        .store
        .head(&layout::sentinel_key(backup))
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let claim = serde_json::json!({
        "label": label,
        "hostname": hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "pid": std::process::id(),
        "claimed_at": Utc::now(),
    });
    let claim = serde_json::to_vec_pretty(&claim)
        .map_err(BackupError::internal("serializing the name claim"))?;
    Ok(ctx
        .store
        .put_new(&layout::claim_key(backup), Bytes::from(claim))
        .await?
        == Created::Stored)
}

/// Stores `backup_label.tar` of a backup in WAL-G's format: `backup_label`
/// and `tablespace_map`, mode 0600 and no time, as WAL-G writes them
/// (wal-g `internal/databases/postgres/bundle.go:372-407`).
async fn upload_walg_label(
    ctx: &Context,
    backup: &str,
    label: &str,
    tablespace_map: &str,
) -> Result<PartInfo, BackupError> {
    let compression = ctx.settings.compression;
    let key = layout::walg_tar_key(backup, "backup_label", compression);
    let tarred = (|| {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, text) in [("backup_label", label), ("tablespace_map", tablespace_map)] {
            let header =
                walg::write::header(name, tar::EntryType::Regular, text.len() as u64, 0o600, 0)?;
            tar.append(&header, text.as_bytes())?;
        }
        let plain = tar.into_inner()?;
        let digest = crate::backup::codec::digest_of(&plain);
        let object = ctx
            .encryption
            .encrypt_vec_walg(walg::encode(&plain, compression)?)?;
        Ok::<_, io::Error>((digest, object))
    })();
    let (digest, object) = tarred.map_err(BackupError::io("writing backup_label.tar"))?;
    let compressed_size = object.len() as u64;
    ctx.store.put(&key, Bytes::from(object)).await?;
    Ok(PartInfo {
        name: key.file_name().to_string(),
        key: key.as_str().to_string(),
        plain_size: digest.plain_len,
        compressed_size,
        blake3: digest.hex(),
    })
}

/// Stores the documents of a backup in WAL-G's format, the sentinel last:
/// `files_metadata.json`, `metadata.json`, pgdrill's record
/// (`metadata_json`) and the V2 sentinel naming its BLAKE3
/// (`walg::write`). `delta_lsn`: the start LSN of the backup a delta
/// builds on.
async fn store_walg_documents(
    ctx: &Context,
    summary: &BackupSummary,
    metadata: &BackupMetadata,
    metadata_json: Vec<u8>,
    delta_lsn: Option<u64>,
) -> Result<(), BackupError> {
    use walg::write::{go_time, Described, FileDescriptionOut, FilesMetadataOut};
    let name = &summary.backup_name;
    let mut listed = FilesMetadataOut {
        files: Default::default(),
        tar_file_sets: Default::default(),
    };
    for f in &metadata.files {
        let entry = format!("/{}", f.path);
        // pg_control is WAL-G's "sentinel file", in no list (bundle.go:230-231).
        if !f.part.starts_with("pg_control.tar") {
            listed.files.insert(
                entry.clone(),
                FileDescriptionOut {
                    incremented: f.delta,
                    skipped: false,
                    mtime: go_time(f.mtime.unwrap_or(summary.start_time)),
                    updates_count: 0,
                },
            );
            listed
                .tar_file_sets
                .entry(f.part.clone())
                .or_default()
                .push(entry);
        }
    }
    if let Some(label) = metadata
        .parts
        .iter()
        .find(|p| p.name.starts_with("backup_label.tar"))
    {
        listed.tar_file_sets.insert(
            label.name.clone(),
            vec!["tablespace_map".into(), "backup_label".into()],
        );
    }
    let lsn = |text: &str| layout::Lsn::parse(text).map_or(0, |l| l.0);
    let described = Described {
        start_lsn: lsn(&summary.start_lsn),
        finish_lsn: lsn(&summary.finish_lsn),
        delta: summary.increment_from.clone().map(|from| {
            (
                from,
                delta_lsn.unwrap_or(0),
                summary.increment_full_name.clone().unwrap_or_default(),
                summary.increment_count,
            )
        }),
        pg_version: summary.pg_version,
        system_identifier: summary.system_identifier.parse().unwrap_or(0),
        uncompressed_size: summary.uncompressed_size as i64,
        compressed_size: summary.compressed_size as i64,
        start_time: summary.start_time,
        finish_time: summary.finish_time,
        hostname: summary.hostname.clone(),
        data_dir: summary.data_dir.clone(),
        is_permanent: summary.is_permanent,
        wal_segment_size: summary.wal_segment_size,
    };
    let json = |r: serde_json::Result<Vec<u8>>, what: &'static str| {
        r.map(Bytes::from).map_err(BackupError::internal(what))
    };
    let documents = [
        (
            layout::walg_files_metadata_key(name),
            json(
                serde_json::to_vec(&listed),
                "serializing files_metadata.json",
            )?,
        ),
        (
            layout::metadata_key(name),
            json(described.metadata_json(), "serializing metadata.json")?,
        ),
        (
            layout::walg_pgdrill_metadata_key(name),
            Bytes::from(metadata_json),
        ),
        (
            layout::sentinel_key(name),
            json(
                described.sentinel_json(&summary.metadata_blake3),
                "serializing the sentinel",
            )?,
        ),
    ];
    for (key, body) in documents {
        ctx.store.put(&key, body).await?;
    }
    Ok(())
}

/// Refuses to start a backup that could never be restored: a server that
/// does not archive WAL at all.
pub(super) fn check_archiving(
    mode: String,
    command: String,
    library: String,
) -> Result<(), BackupError> {
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
pub(super) async fn wait_for_wal(
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
        let checked: Result<Vec<bool>, BackupError> =
            futures::stream::iter(&missing)
                .map(|name| async move {
                    Ok::<_, BackupError>(wal::find_wal(ctx, name).await?.is_some())
                })
                .buffered(ctx.settings.download_concurrency)
                .try_collect()
                .await;
        // A transient storage failure is one more reason to wait; a
        // permanent one (access denied, no bucket) ends the wait at once.
        let found = match checked {
            Ok(found) => found,
            Err(e) if e.is_permanent() || started.elapsed() >= timeout => return Err(e),
            Err(e) => {
                warn!("checking the backup's WAL in storage failed, trying again: {e}");
                vec![false; missing.len()]
            }
        };
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

/// Checks, right before the backup is made complete, that every part
/// uploaded is still stored: a `delete` running meanwhile that took the
/// unfinished backup for a killed run's leftovers must not end in a listed
/// backup without its data.
async fn parts_still_stored(
    ctx: &Context,
    backup: &str,
    parts: &[PartInfo],
) -> Result<(), BackupError> {
    let stored: std::collections::HashSet<String> = ctx
        .store
        .list(&layout::backup_prefix(backup))
        .await?
        .into_iter()
        .map(|o| o.key.as_str().to_string())
        .collect();
    match parts.iter().find(|p| !stored.contains(&p.key)) {
        None => Ok(()),
        Some(gone) => Err(BackupError::VerifyFailed(format!(
            "backup {backup} was not completed: its part {} is no longer in {} (deleted while the backup ran, by a `delete` that took it for a leftover?); run backup-push again",
            gone.key,
            ctx.store.describe()
        ))),
    }
}

/// Best effort: removes what an unfinished backup uploaded (it has no
/// sentinel, so it is not listed either way; `delete` would remove it later).
pub(super) async fn discard_unfinished(ctx: &Context, backup: &str) {
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
pub(super) async fn delta_previous(
    ctx: &Context,
    opts: &PushOptions,
    system_identifier: &str,
) -> Result<Option<(BackupSummary, BackupMetadata)>, BackupError> {
    let max = ctx.settings.delta_max_steps;
    if opts.full || max == 0 {
        return Ok(None);
    }
    let Some(newest) = catalog::list_readable_warning(ctx).await?.pop() else {
        return Ok(None);
    };
    let s = newest.summary;
    // A delta builds on pgdrill's record of its base: a backup pgdrill
    // wrote, in the format it writes now.
    let same_format = match ctx.settings.storage_format {
        StorageFormat::Pgdrill => s.format == BackupFormat::Pgdrill,
        StorageFormat::Walg => s.format == BackupFormat::Walg && !s.metadata_blake3.is_empty(),
    };
    if !same_format {
        info!(previous = %s.backup_name, "taking a full backup (the newest backup was written by WAL-G, or in the other PGDRILL_STORAGE_FORMAT)");
        return Ok(None);
    }
    if s.system_identifier != system_identifier || s.increment_count >= max {
        info!(previous = %s.backup_name, "taking a full backup (chain at WALG_DELTA_MAX_STEPS or another cluster)");
        return Ok(None);
    }
    let metadata = catalog::read_metadata(ctx, &s).await?;
    Ok(Some((s, metadata)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures::stream::BoxStream;

    use super::*;
    use crate::backup::codec::Compression;
    use crate::backup::config::{EnvVars, Settings};
    use crate::backup::store::{
        ChunkReceiver, Created, DirStore, Key, ObjectInfo, Store, StoreError,
    };

    /// A directory store whose `head` fails the first `failures` times
    /// with `error`.
    #[derive(Debug)]
    struct FlakyStore {
        inner: DirStore,
        failures: usize,
        calls: AtomicUsize,
        error: fn(&Key) -> StoreError,
    }

    #[async_trait]
    impl Store for FlakyStore {
        async fn put(&self, key: &Key, data: Bytes) -> Result<(), StoreError> {
            self.inner.put(key, data).await
        }
        async fn put_stream(&self, key: &Key, chunks: ChunkReceiver) -> Result<u64, StoreError> {
            self.inner.put_stream(key, chunks).await
        }
        async fn put_new(&self, key: &Key, data: Bytes) -> Result<Created, StoreError> {
            self.inner.put_new(key, data).await
        }
        async fn head(&self, key: &Key) -> Result<Option<ObjectInfo>, StoreError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err((self.error)(key));
            }
            self.inner.head(key).await
        }
        async fn get(&self, key: &Key, max: u64) -> Result<Bytes, StoreError> {
            self.inner.get(key, max).await
        }
        async fn get_stream(
            &self,
            key: &Key,
        ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
            self.inner.get_stream(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &Key) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        async fn confirm_archive(&self) -> Result<(), StoreError> {
            self.inner.confirm_archive().await
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    async fn context(
        dir: &std::path::Path,
        failures: usize,
        error: fn(&Key) -> StoreError,
    ) -> Context {
        let root = dir.display().to_string();
        let settings = Settings::from_vars(&EnvVars::from_pairs([
            ("WALG_FILE_PREFIX", root.as_str()),
            ("PGDRILL_ARCHIVE_CHECK_TIMEOUT", "20s"),
        ]))
        .unwrap();
        let inner = DirStore::new(dir.to_path_buf());
        let segment = layout::wal_key("000000010000000000000003", Compression::None);
        inner
            .put(&segment, Bytes::from_static(b"wal"))
            .await
            .unwrap();
        let encryption =
            Arc::new(crate::backup::crypto::Encryption::new(&settings.encryption, false).unwrap());
        Context {
            settings,
            store: Arc::new(FlakyStore {
                inner,
                failures,
                calls: AtomicUsize::new(0),
                error,
            }),
            encryption,
            env_dir: None,
        }
    }

    const SEGMENT: &str = "000000010000000000000003";

    #[tokio::test]
    async fn the_archive_check_waits_through_transient_storage_failures() {
        let dir = tempfile::tempdir().unwrap();
        let transient = |key: &Key| StoreError::Other {
            key: key.clone(),
            detail: "503 Slow Down".into(),
        };
        // Every head of the first check fails (one per compression).
        let ctx = context(dir.path(), Compression::ALL.len(), transient).await;
        wait_for_wal(&ctx, "base_x", SEGMENT, SEGMENT, 16 << 20)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_archive_check_stops_at_once_on_a_permanent_failure() {
        let dir = tempfile::tempdir().unwrap();
        let denied = |key: &Key| StoreError::AccessDenied {
            key: key.clone(),
            detail: "403".into(),
        };
        let ctx = context(dir.path(), usize::MAX, denied).await;
        let started = std::time::Instant::now();
        let e = wait_for_wal(&ctx, "base_x", SEGMENT, SEGMENT, 16 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BackupError::Store(StoreError::AccessDenied { .. })),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    }
}
