//! `wal-push` (archive_command) and `wal-fetch` (restore_command), with
//! upload-ahead of other `.ready` segments and download-ahead (prefetch).
//!
//! Local state lives in `pg_wal/.pgdrill/`, so parallel restores of the same
//! archive never share it:
//! - `uploaded/<store id>/<name>`: a segment already pushed ahead into the
//!   store of that id (a digest of its location); holds the BLAKE3 of what
//!   was stored, so PostgreSQL's later call for it is answered without
//!   uploading again, only if the file is still byte-identical and only
//!   while the same store is configured.
//! - `prefetch/<name>`: a segment fetched ahead, verified, complete (it
//!   appears by rename only after verification);
//!   `prefetch/running/<name>`: the claim of a fetch in progress (its age
//!   tells a live prefetcher from a dead one; it holds the claimant's
//!   token, `<pid>.<n>`, so only the claimant releases it);
//!   `prefetch/running/<name>.<token>.download`: the download itself,
//!   written only by the prefetcher that named it and renamed into place
//!   by it alone, so a claim taken over never publishes another's file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::codec::{self, Compression, Digest};
use super::config::StorageFormat;
use super::crypto::CryptoError;
use super::layout::{self, Segment, WalFileKind};
use super::sabotage::Sabotage;
use super::store::{Created, Key};
use super::{BackupError, Context};

const STATE_DIR: &str = ".pgdrill";

/// What `wal-push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Uploaded,
    /// Identical content was already stored (a retried archive_command).
    AlreadyArchived,
    /// Pushed earlier by upload-ahead; the marker matched the file.
    UploadedAhead,
}

fn validate_name(name: &str) -> Result<WalFileKind, BackupError> {
    layout::wal_file_kind(name).ok_or_else(|| {
        BackupError::Invalid(format!(
            "{name:?} is not a WAL file name (expected a segment, .partial, .history or .backup file)"
        ))
    })
}

/// Fetches WAL file `name` into a new file `tmp`, whatever compression it
/// was stored with (the configured one is tried first), by pgdrill or by
/// WAL-G, decoding as it downloads, and syncs it; false when the archive
/// has no such file. What `tmp` holds is verified only when this returns
/// `Ok(true)`: callers rename it into place only then.
async fn fetch_wal_file(ctx: &Context, name: &str, tmp: &Path) -> Result<bool, BackupError> {
    let io_err = || BackupError::io(format!("writing {}", tmp.display()));
    for key in layout::wal_keys(name, ctx.settings.compression) {
        let file = tokio::fs::File::create(tmp).await.map_err(io_err())?;
        match ctx
            .fetch_wal_object_into(&key, name, file.into_std().await)
            .await
        {
            Ok((file, _)) => {
                tokio::task::spawn_blocking(move || file.sync_all())
                    .await
                    .map_err(BackupError::internal("the sync task"))?
                    .map_err(io_err())?;
                return Ok(true);
            }
            Err(BackupError::Store(e)) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Archives one WAL file given as a path (archive_command's `%p`).
pub async fn wal_push(ctx: &Context, path: &Path) -> Result<PushOutcome, BackupError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BackupError::Invalid(format!("{} has no file name", path.display())))?
        .to_string();
    let kind = validate_name(&name)?;
    let data = read_wal_file(path)
        .await
        .map_err(BackupError::io(format!("reading {}", path.display())))?;
    let pg_wal = path.parent().unwrap_or(Path::new("."));
    let marker = marker_dir(ctx, pg_wal).join(&name);
    if let Ok(stored_hash) = tokio::fs::read_to_string(&marker).await {
        let _ = tokio::fs::remove_file(&marker).await;
        if stored_hash.trim() == blake3::hash(&data).to_hex().as_str() {
            debug!(%name, "already pushed ahead");
            return Ok(PushOutcome::UploadedAhead);
        }
    }
    let (outcome, _) = push_bytes(ctx, &name, data).await?;
    if kind == WalFileKind::Segment && ctx.settings.upload_concurrency > 1 {
        upload_ahead(ctx, pg_wal, &name).await;
    }
    Ok(outcome)
}

/// A WAL file's bytes, memory-mapped rather than copied: a segment is
/// 16 MiB or more, and the copy and the fresh pages it needs were a fifth
/// of wal-push's CPU. PostgreSQL neither writes nor truncates a segment
/// while archive_command archives it; if the file changed anyway, the
/// digest would not match the stored payload and every fetch would refuse
/// the object (never serve it).
async fn read_wal_file(path: &Path) -> std::io::Result<Bytes> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: see above; the mapping is read-only and private.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Bytes::from_owner(map))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Where upload-ahead markers for the configured store live: a marker
/// vouches for one store only, so after the prefix or bucket changes no
/// marker can answer for a segment the new store does not have.
fn marker_dir(ctx: &Context, pg_wal: &Path) -> PathBuf {
    let id = blake3::hash(ctx.store.describe().as_bytes()).to_hex();
    pg_wal
        .join(STATE_DIR)
        .join("uploaded")
        .join(&id.as_str()[..16])
}

/// The stored object of WAL file `name`, whatever compression it was
/// written with; the existence checks run concurrently (one round trip).
pub(super) async fn find_wal(ctx: &Context, name: &str) -> Result<Option<Key>, BackupError> {
    let keys = layout::wal_keys(name, ctx.settings.compression);
    let found = futures::future::try_join_all(keys.iter().map(|k| ctx.store.head(k))).await?;
    Ok(found.into_iter().flatten().next().map(|o| o.key))
}

/// Stores `data` as WAL file `name` unless identical content is there
/// already; different content under the same name is an error. The object
/// is created only if absent (a conditional write), so of two pushes
/// racing with different content (two promoted servers, two `.history`
/// files of one timeline) exactly one is stored and the other fails.
/// Returns the plaintext digest.
pub async fn push_bytes(
    ctx: &Context,
    name: &str,
    data: Bytes,
) -> Result<(PushOutcome, Digest), BackupError> {
    // Under any compression's name: a segment pushed by a run with other
    // settings is this segment too.
    let existing = find_wal(ctx, name).await?;
    let overwrite =
        existing.is_some() && ctx.settings.sabotage == Some(Sabotage::WalPushOverwrites);
    if let Some(existing) = existing.filter(|_| !overwrite) {
        return compare_with_stored(ctx, name, &existing, &data).await;
    }
    let compression = ctx.settings.compression;
    let content = Sabotage::wal_content(ctx.settings.sabotage, name, data.clone());
    let format = ctx.settings.storage_format;
    let (object, digest) = encode(ctx, content, compression, format).await?;
    let key = match format {
        StorageFormat::Pgdrill => layout::wal_key(name, compression),
        StorageFormat::Walg => layout::walg_wal_key(name, compression),
    };
    if overwrite {
        tracing::warn!(%name, "SABOTAGE: storing over the archived file");
        ctx.store.put(&key, Bytes::from(object)).await?;
        return Ok((PushOutcome::Uploaded, digest));
    }
    match ctx.store.put_new(&key, Bytes::from(object)).await? {
        Created::Stored => {
            info!(%name, "archived");
            Ok((PushOutcome::Uploaded, digest))
        }
        // Stored meanwhile by another push (or by this one, whose answer
        // was lost and the request retried).
        Created::AlreadyExists => compare_with_stored(ctx, name, &key, &data).await,
    }
}

/// WAL file `name` is stored as `existing`: fine when its content is
/// `data`, an error otherwise.
async fn compare_with_stored(
    ctx: &Context,
    name: &str,
    existing: &Key,
    data: &[u8],
) -> Result<(PushOutcome, Digest), BackupError> {
    // Only its digest counts: the plaintext is verified and dropped.
    let stored = match ctx
        .fetch_wal_object_into(existing, name, std::io::sink())
        .await
    {
        Ok((_, stored)) => stored,
        Err(BackupError::Crypto(CryptoError::PublicKeyOnly { origin, .. })) => {
            return Err(BackupError::WalUncomparable {
                name: name.to_string(),
                key: existing.clone(),
                origin,
            });
        }
        Err(e) => return Err(e),
    };
    let local = blake3::hash(data);
    if stored.blake3 == *local.as_bytes() && stored.plain_len == data.len() as u64 {
        info!(%name, "already archived with identical content");
        return Ok((PushOutcome::AlreadyArchived, stored));
    }
    Err(BackupError::WalConflict {
        name: name.to_string(),
        stored: stored.hex(),
        local: local.to_hex().to_string(),
    })
}

/// A WAL file as it is stored: compressed, then encrypted when
/// configured, in `format` (WAL-G's: the bare compressed stream, which
/// fetches verify by its frame checksum and the segment's own header).
async fn encode(
    ctx: &Context,
    data: Bytes,
    compression: Compression,
    format: StorageFormat,
) -> Result<(Vec<u8>, Digest), BackupError> {
    let encryption = Arc::clone(&ctx.encryption);
    tokio::task::spawn_blocking(move || match format {
        StorageFormat::Pgdrill => {
            let (object, digest) = codec::encode(&data, compression)?;
            Ok::<_, std::io::Error>((encryption.encrypt_vec(object)?, digest))
        }
        StorageFormat::Walg => {
            let object = crate::backup::walg::encode(&data, compression)?;
            Ok((
                encryption.encrypt_vec_walg(object)?,
                codec::digest_of(&data),
            ))
        }
    })
    .await
    .map_err(BackupError::internal("the encoder task"))?
    .map_err(BackupError::io("compressing and encrypting WAL"))
}

/// Pushes up to `upload_concurrency - 1` later `.ready` segments in parallel
/// and leaves a marker for each; failures are only logged, because
/// PostgreSQL will ask for those segments itself anyway.
async fn upload_ahead(ctx: &Context, pg_wal: &Path, current: &str) {
    let status_dir = pg_wal.join("archive_status");
    let Ok(mut entries) = tokio::fs::read_dir(&status_dir).await else {
        return;
    };
    let mut ready = Vec::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(seg) = file.strip_suffix(".ready") {
            if layout::wal_file_kind(seg) == Some(WalFileKind::Segment) && seg > current {
                ready.push(seg.to_string());
            }
        }
    }
    ready.sort();
    ready.truncate(ctx.settings.upload_concurrency - 1);
    if ready.is_empty() {
        return;
    }
    let marker_dir = marker_dir(ctx, pg_wal);
    if tokio::fs::create_dir_all(&marker_dir).await.is_err() {
        return;
    }
    futures::stream::iter(ready)
        .for_each_concurrent(None, |seg| {
            let marker_dir = marker_dir.clone();
            async move {
                let path = pg_wal.join(&seg);
                let Ok(data) = read_wal_file(&path).await else {
                    return;
                };
                let hash = blake3::hash(&data).to_hex().to_string();
                match push_bytes(ctx, &seg, data).await {
                    Ok(_) => {
                        if let Err(e) = write_atomic(&marker_dir.join(&seg), hash.as_bytes()).await
                        {
                            warn!(%seg, "cannot record upload-ahead marker: {e}");
                        }
                    }
                    Err(e) => warn!(%seg, "upload-ahead failed (will be retried): {e}"),
                }
            }
        })
        .await;
}

/// Writes a file by temp file, fsync and rename; removes the temp file on
/// failure.
pub async fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, data).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.pgdrill-tmp", std::process::id()));
    path.with_file_name(name)
}

fn prefetch_dir(dest: &Path) -> PathBuf {
    dest.parent()
        .unwrap_or(Path::new("."))
        .join(STATE_DIR)
        .join("prefetch")
}

/// How long a prefetch claim may go without finishing before it is
/// considered abandoned (the prefetcher died).
const CLAIM_STALE_AFTER: Duration = Duration::from_secs(60);

fn claim_is_fresh(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < CLAIM_STALE_AFTER)
}

/// Fetches WAL file `name` into `dest` (restore_command's `%f %p`), using a
/// prefetched copy when one is complete, and starts prefetching the next
/// segments in the background.
pub async fn wal_fetch(ctx: &Context, name: &str, dest: &Path) -> Result<(), BackupError> {
    let kind = validate_name(name)?;
    if kind == WalFileKind::Partial {
        return Err(BackupError::Invalid(format!(
            "{name} is a partial segment and is never served as a complete one"
        )));
    }
    if Sabotage::hides(ctx.settings.sabotage, name) {
        warn!(%name, "SABOTAGE: answering not found for a stored segment");
        return Err(not_found(ctx, name));
    }
    let prefetched = prefetch_dir(dest).join(name);
    let running = prefetch_dir(dest).join("running").join(name);
    // A prefetch of exactly this file is under way: wait for it rather
    // than downloading the same bytes twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while claim_is_fresh(&running) && !prefetched.exists() && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if tokio::fs::rename(&prefetched, dest).await.is_ok() {
        debug!(%name, "served from prefetch");
    } else {
        let tmp = tmp_path(dest);
        let fetched = fetch_wal_file(ctx, name, &tmp).await;
        let published = match fetched {
            Ok(true) => tokio::fs::rename(&tmp, dest)
                .await
                .map_err(BackupError::io(format!("writing {}", dest.display()))),
            Ok(false) => Err(not_found(ctx, name)),
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            let _ = tokio::fs::remove_file(&tmp).await;
            if ctx.settings.sabotage == Some(Sabotage::FetchFailureAsMissing)
                && !matches!(e, BackupError::WalNotFound { .. })
            {
                warn!(%name, error = %e, "SABOTAGE: answering not found for a failed fetch");
                return Err(not_found(ctx, name));
            }
            // Not found only when the store's location answers: a missing
            // bucket is an error, not the end of the archive (which would
            // end recovery early).
            if matches!(e, BackupError::WalNotFound { .. }) {
                ctx.store.confirm_archive().await?;
            }
            return Err(e);
        }
    }
    if kind == WalFileKind::Segment && ctx.settings.prefetch > 0 {
        let seg_size = read_head(dest)
            .await
            .as_deref()
            .and_then(layout::segment_size_from_header)
            .unwrap_or(layout::DEFAULT_WAL_SEGMENT_SIZE);
        if prefetch_window_runs_low(&prefetch_dir(dest), name, ctx.settings.prefetch, seg_size) {
            spawn_prefetcher(ctx, name, dest, seg_size);
        }
    }
    Ok(())
}

/// Whether fewer than half of the `window` segments after `name` are in
/// prefetch directory `dir` or claimed there by a live prefetcher.
/// Topping the window up only then starts a prefetcher every few segments
/// rather than after each one: with a prefetched segment, starting the
/// prefetcher was half of wal-fetch's time, and its start-up CPU was taken
/// from the startup process replaying WAL.
fn prefetch_window_runs_low(dir: &Path, name: &str, window: usize, seg_size: u64) -> bool {
    let Some(current) = Segment::parse(name, seg_size) else {
        return true;
    };
    let running = dir.join("running");
    let ahead = segments_after(current, window, seg_size)
        .filter(|next| prefetched_or_claimed(dir, &running, next))
        .count();
    ahead * 2 < window
}

/// The names of the `count` segments after `current`: the prefetch window.
fn segments_after(current: Segment, count: usize, seg_size: u64) -> impl Iterator<Item = String> {
    std::iter::successors(Some(current.next()), |s| Some(s.next()))
        .take(count)
        .map(move |s| s.file_name(seg_size))
}

/// Whether segment `name` is prefetched into `dir` or claimed in `running`
/// by a live prefetcher: nothing for another prefetcher to do.
fn prefetched_or_claimed(dir: &Path, running: &Path, name: &str) -> bool {
    dir.join(name).exists() || claim_is_fresh(&running.join(name))
}

async fn read_head(path: &Path) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let mut buf = vec![0u8; 64];
    f.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

fn not_found(ctx: &Context, name: &str) -> BackupError {
    BackupError::WalNotFound {
        name: name.to_string(),
        store: ctx.store.describe(),
    }
}

/// Starts `pgdrill wal-prefetch` detached, so that this restore_command
/// returns at once while the next segments download.
fn spawn_prefetcher(ctx: &Context, name: &str, dest: &Path, seg_size: u64) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(d) = &ctx.env_dir {
        cmd.arg("--env-dir").arg(d);
    }
    cmd.arg("wal-prefetch")
        .arg(name)
        .arg(dest.parent().unwrap_or(Path::new(".")))
        .arg("--segment-size")
        .arg(seg_size.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // Detach from PostgreSQL's process group so a signal to the startup
    // process's group does not leave half-claimed files behind.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    if let Err(e) = cmd.spawn() {
        warn!("cannot start prefetcher: {e}");
    }
}

/// The background prefetcher: fetches the `WALG_PREFETCH` segments after
/// `after` into `pg_wal/.pgdrill/prefetch/`, each verified and then renamed
/// into place, and removes prefetched segments recovery has passed.
pub async fn wal_prefetch(
    ctx: &Context,
    after: &str,
    pg_wal: &Path,
    seg_size: u64,
) -> Result<(), BackupError> {
    let current = Segment::parse(after, seg_size)
        .ok_or_else(|| BackupError::Invalid(format!("{after:?} is not a WAL segment name")))?;
    let dir = pg_wal.join(STATE_DIR).join("prefetch");
    let running = dir.join("running");
    tokio::fs::create_dir_all(&running)
        .await
        .map_err(BackupError::io(format!("creating {}", running.display())))?;
    remove_passed(&dir, after).await;
    let wanted = segments_after(current, ctx.settings.prefetch, seg_size);
    let concurrency = ctx.settings.download_concurrency;
    futures::stream::iter(wanted)
        .for_each_concurrent(concurrency, |name| {
            let dir = dir.clone();
            let running = running.clone();
            async move {
                if let Err(e) = prefetch_one(ctx, &dir, &running, &name).await {
                    debug!(%name, "prefetch stopped: {e}");
                }
            }
        })
        .await;
    Ok(())
}

async fn prefetch_one(
    ctx: &Context,
    dir: &Path,
    running: &Path,
    name: &str,
) -> Result<(), BackupError> {
    // Segments past the end of the archive are normal here, and a failure
    // only stops prefetching: restore_command itself tells them apart.
    let download = |own: PathBuf| async move {
        match fetch_wal_file(ctx, name, &own).await? {
            true => Ok(()),
            false => Err(not_found(ctx, name)),
        }
    };
    prefetch_into(dir, running, name, download).await
}

/// Claims segment `name`, runs `download`, which writes the segment,
/// verified, into the file it is given, and publishes that file as
/// `dir/name`, unless it is there already or a live prefetcher claimed it.
async fn prefetch_into<F: std::future::Future<Output = Result<(), BackupError>>>(
    dir: &Path,
    running: &Path,
    name: &str,
    download: impl FnOnce(PathBuf) -> F,
) -> Result<(), BackupError> {
    if prefetched_or_claimed(dir, running, name) {
        return Ok(());
    }
    let target = dir.join(name);
    let claim = running.join(name);
    // A stale claim (its prefetcher died, or is still downloading after
    // CLAIM_STALE_AFTER) is replaced; create_new makes the claim exclusive
    // among concurrent prefetchers.
    let _ = std::fs::remove_file(&claim);
    // The claim holds a token only this prefetcher uses, and the download
    // goes into a file named by it: the claim may be taken over, but no
    // prefetcher ever publishes or releases another's.
    let token = format!(
        "{}.{}",
        std::process::id(),
        DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let claimed = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&claim)
        .and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()));
    if claimed.is_err() {
        return Ok(());
    }
    let own = running.join(format!("{name}.{token}.download"));
    let result = async {
        download(own.clone()).await?;
        tokio::fs::rename(&own, &target)
            .await
            .map_err(BackupError::io(format!("publishing prefetched {name}")))
    }
    .await;
    let _ = tokio::fs::remove_file(&own).await;
    if std::fs::read_to_string(&claim).is_ok_and(|held| held == token) {
        let _ = tokio::fs::remove_file(&claim).await;
    }
    result
}

/// Claims and downloads started by this process, for unique tokens.
static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Deletes prefetched segments at or before `current`: recovery is past them.
/// Downloads of passed segments that dead prefetchers left in `running/`
/// go too.
async fn remove_passed(dir: &Path, current: &str) {
    for dir in [dir.to_path_buf(), dir.join("running")] {
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            continue;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            let segment = name.get(..24).unwrap_or("");
            let passed = layout::wal_file_kind(segment) == Some(WalFileKind::Segment)
                && segment[8..] <= current[8..];
            if passed && (name.len() == 24 || name.ends_with(".download")) {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    fn modified(path: &Path) -> Option<SystemTime> {
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    fn set_modified(path: &Path, at: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A prefetcher is started only when fewer than half of the window
    /// ahead is prefetched or claimed by a live prefetcher; a stale claim
    /// does not count.
    #[test]
    fn the_prefetch_window_is_topped_up_when_half_empty() {
        let dir = tempfile::tempdir().unwrap();
        let running = dir.path().join("running");
        std::fs::create_dir_all(&running).unwrap();
        let seg_size = layout::DEFAULT_WAL_SEGMENT_SIZE;
        let name = "000000010000000000000005";
        let low = || prefetch_window_runs_low(dir.path(), name, 8, seg_size);
        assert!(low(), "nothing ahead");
        for n in ["000000010000000000000006", "000000010000000000000007"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let claim = running.join("000000010000000000000009");
        std::fs::write(&claim, b"token").unwrap();
        assert!(low(), "3 of 8 ahead");
        std::fs::write(dir.path().join("00000001000000000000000C"), b"").unwrap();
        assert!(!low(), "4 of 8 ahead, one of them claimed");
        // Segments behind or past the window do not count.
        std::fs::write(dir.path().join("000000010000000000000005"), b"").unwrap();
        std::fs::write(dir.path().join("00000001000000000000000E"), b"").unwrap();
        set_modified(
            &claim,
            SystemTime::now() - CLAIM_STALE_AFTER - Duration::from_secs(1),
        );
        assert!(low(), "a stale claim is not a prefetch under way");
        assert!(
            prefetch_window_runs_low(dir.path(), "not a segment", 8, seg_size),
            "an unparsable name tops up (as before: always)"
        );
    }

    /// Issue 9.7: a download that outlives its claim's staleness window
    /// must not publish the file of the prefetcher that took the claim
    /// over (nor may that one publish the first one's file): only a file
    /// its own prefetcher completed is ever renamed into place.
    #[tokio::test(flavor = "multi_thread")]
    async fn prefetch_publishes_only_its_own_complete_download() {
        let dir = tempfile::tempdir().unwrap();
        let prefetch = dir.path().join("pg_wal/.pgdrill/prefetch");
        let running = prefetch.join("running");
        std::fs::create_dir_all(&running).unwrap();
        let name = "000000010000000000000005";
        let segment: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
        let start = |download: oneshot::Receiver<Vec<u8>>| {
            let (prefetch, running) = (prefetch.clone(), running.clone());
            tokio::spawn(async move {
                let download = |own: PathBuf| async move {
                    let data = download
                        .await
                        .map_err(BackupError::internal("the prefetch download task"))?;
                    tokio::fs::write(&own, data)
                        .await
                        .map_err(BackupError::io("writing the download"))
                };
                prefetch_into(&prefetch, &running, name, download).await
            })
        };

        // The first prefetcher claims the segment and waits for storage...
        let (first_done, first_download) = oneshot::channel();
        let first = start(first_download);
        let claim = running.join(name);
        wait_for("the first claim", || claim.exists()).await;
        // ...so long that its claim goes stale and a second one takes over.
        let stale = SystemTime::now() - Duration::from_secs(3600);
        set_modified(&claim, stale);
        let (second_done, second_download) = oneshot::channel();
        let second = start(second_download);
        wait_for("the second claim", || {
            modified(&claim).is_some_and(|t| t > stale)
        })
        .await;

        // The first download completes: what is published is complete.
        first_done.send(segment.clone()).unwrap();
        first.await.unwrap().unwrap();
        let published = std::fs::read(prefetch.join(name)).unwrap_or_default();
        assert!(
            published == segment,
            "published {} bytes, not the downloaded segment",
            published.len()
        );
        assert!(
            claim.exists(),
            "the second prefetcher's claim is left to it"
        );
        second_done.send(segment.clone()).unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(std::fs::read(prefetch.join(name)).unwrap(), segment);
        let left: Vec<_> = std::fs::read_dir(&running).unwrap().collect();
        assert!(left.is_empty(), "claims and downloads cleaned up: {left:?}");
    }
}
