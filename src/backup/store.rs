//! Object storage behind one small trait, with two real backends: S3 (any
//! S3-compatible server, through the `object_store` crate) and a local
//! directory. Both make writes atomic: an object is either absent or whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::backup::config::{S3Config, StorageConfig};

/// A key inside the store, relative to the configured prefix, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

/// Why a key read from storage (metadata, a sentinel) cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("key {key:?} {why}: a stored key is relative to the prefix, `/`-separated, without `.`, `..` or empty parts, NUL, or more than {MAX_KEY_LEN} bytes; the object that named it was written by something other than pgdrill or is damaged")]
pub struct BadKey {
    pub key: String,
    pub why: &'static str,
}

/// S3's limit on a key's length.
pub const MAX_KEY_LEN: usize = 1024;

impl Key {
    /// A key the program built itself (from layout functions and names
    /// already checked).
    pub fn new(key: impl Into<String>) -> Key {
        Key(key.into())
    }

    /// A key read from storage: checked to stay under the prefix, so that
    /// neither a directory store nor a restore can be led outside it.
    pub fn parse(key: &str) -> Result<Key, BadKey> {
        let bad = |why| {
            Err(BadKey {
                key: key.to_string(),
                why,
            })
        };
        if key.is_empty() {
            return bad("is empty");
        }
        if key.len() > MAX_KEY_LEN {
            return bad("is too long");
        }
        if key.contains('\0') {
            return bad("holds a NUL byte");
        }
        if key.starts_with('/') {
            return bad("is absolute");
        }
        if key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return bad("has an empty, `.` or `..` part");
        }
        Ok(Key(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The last path component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a listing says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: Key,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// Storage failures, classified so callers can decide what to tell the user.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found in storage")]
    NotFound(Key),
    #[error("storage refused access to {key} ({detail}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    AccessDenied { key: Key, detail: String },
    #[error("storage error on {key}: {detail}")]
    Other { key: Key, detail: String },
    #[error("local storage error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upload of {key} was aborted: {reason}")]
    Aborted { key: Key, reason: String },
    /// The store's location itself (bucket, directory) is missing or not
    /// served; the message names it and the setting to check.
    #[error("{0}")]
    NoLocation(String),
    /// An object larger than its reader takes (see [`Store::get`]).
    #[error("object {key} is {size} bytes, more than the {max} bytes its reader takes")]
    TooLarge { key: Key, size: u64, max: u64 },
    /// A key that would leave the store (see [`Key::parse`]).
    #[error(transparent)]
    BadKey(#[from] BadKey),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }
    /// Whether trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_)
                | StoreError::AccessDenied { .. }
                | StoreError::Aborted { .. }
                | StoreError::NoLocation(_)
                | StoreError::TooLarge { .. }
                | StoreError::BadKey(_)
        )
    }
}

/// What [`Store::put_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object is stored.
    Stored,
    /// An object had the key already; nothing was written.
    AlreadyExists,
}

/// A stream of chunks for [`Store::put_stream`]; an `Err` aborts the upload
/// and nothing is stored.
pub type ChunkReceiver = mpsc::Receiver<Result<Bytes, String>>;

/// The object store operations pgdrill needs. Keys are relative to the
/// configured prefix.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a whole object atomically.
    async fn put(&self, key: &Key, data: Bytes) -> Result<(), StoreError>;
    /// Stores an object from a stream of chunks; it becomes visible only when
    /// the stream ends without error. Returns the bytes stored.
    async fn put_stream(&self, key: &Key, chunks: ChunkReceiver) -> Result<u64, StoreError>;
    /// Stores a whole object only if no object has its key, atomically:
    /// of writers racing for one key exactly one stores it, and the others
    /// are told it exists. "Look, then write" is not this: both writers
    /// would look, find nothing and write.
    async fn put_new(&self, key: &Key, data: Bytes) -> Result<Created, StoreError>;
    /// Size and time of an object; `None` when absent.
    async fn head(&self, key: &Key) -> Result<Option<ObjectInfo>, StoreError>;
    /// Reads a whole object.
    /// The whole object, unless the store says it is larger than `max`
    /// bytes: then [`StoreError::TooLarge`], before any of it is read (a
    /// damaged or hostile object must not take the memory it asks for).
    /// Every whole read states what it can take.
    async fn get(&self, key: &Key, max: u64) -> Result<Bytes, StoreError>;
    /// Reads an object as a stream.
    async fn get_stream(
        &self,
        key: &Key,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Removes an object; removing an absent object is not an error.
    async fn delete(&self, key: &Key) -> Result<(), StoreError>;
    /// Confirms that the store's location (bucket and prefix, directory)
    /// exists, answers and holds an archive (`wal_005/` or
    /// `basebackups_005/`), with one listing at most. S3 answers 404 for a
    /// missing bucket as for a missing key, an unmounted volume is an empty
    /// directory, and a mistyped prefix is an empty listing: an object is
    /// known to be absent from an archive only when this succeeds.
    async fn confirm_archive(&self) -> Result<(), StoreError>;
    /// Where this store is, for messages (no secrets).
    fn describe(&self) -> String;
}

/// The top-level folders of an archive; a location with neither is not one.
const ARCHIVE_DIRS: [&str; 2] = [
    crate::backup::layout::WAL_DIR,
    crate::backup::layout::BACKUP_DIR,
];

/// `Ok` when `top` (the names at a location's top level) holds one of
/// [`ARCHIVE_DIRS`]; otherwise the error names the location.
fn archive_dirs_present(top: &[&str], describe: impl Fn() -> String) -> Result<(), StoreError> {
    let found = ARCHIVE_DIRS
        .iter()
        .any(|dir| top.contains(&dir.trim_end_matches('/')));
    match found {
        true => Ok(()),
        false => Err(StoreError::NoLocation(format!(
            "{} holds neither {} nor {}: it is not an archive, so nothing can be fetched from it; check that the volume is mounted and that WALG_FILE_PREFIX or WALG_S3_PREFIX names the archive",
            describe(),
            ARCHIVE_DIRS[0],
            ARCHIVE_DIRS[1]
        ))),
    }
}

/// Opens the configured store.
pub fn open(config: &StorageConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StorageConfig::S3(s3) => Arc::new(S3Store::new(s3)?),
        StorageConfig::Dir { root } => Arc::new(DirStore::new(root.clone())),
    })
}

/// Multipart chunk size for large uploads, and how many chunks of one
/// object may be in flight; together they bound memory per upload.
const MULTIPART_CHUNK: usize = 8 << 20;
const MULTIPART_IN_FLIGHT: usize = 2;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The HTTP client of a plain `http://` endpoint: object_store's own
/// minus the system's CA certificates, which plain HTTP never uses and
/// whose loading (every file of /etc/ssl/certs) cost each wal-push process
/// milliseconds; PostgreSQL's archiver starts one per segment.
#[derive(Debug)]
struct PlainHttp;

impl object_store::client::HttpConnector for PlainHttp {
    fn connect(
        &self,
        _options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// An S3-compatible bucket, optionally under a path prefix.
#[derive(Debug)]
pub struct S3Store {
    inner: object_store::aws::AmazonS3,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Store {
    pub fn new(cfg: &S3Config) -> Result<S3Store, StoreError> {
        let retry = object_store::RetryConfig {
            max_retries: cfg.max_retries,
            retry_timeout: cfg.retry_timeout,
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(10),
                base: 2.0,
            },
        };
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(cfg.secret_access_key.expose())
            .with_virtual_hosted_style_request(!cfg.force_path_style)
            .with_retry(retry)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT),
            );
        if cfg.endpoint.is_some() {
            builder = builder.with_endpoint(&endpoint);
        }
        if endpoint.starts_with("http://") {
            builder = builder.with_http_connector(PlainHttp);
        }
        let inner = builder.build().map_err(|e| StoreError::Other {
            key: Key::new(""),
            detail: format!("cannot configure S3 client: {e}"),
        })?;
        Ok(S3Store {
            inner,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            endpoint,
        })
    }

    fn path(&self, key: &Key) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key.as_str())
        } else {
            ObjPath::from(format!("{}/{}", self.prefix, key.as_str()))
        }
    }

    fn key_of(&self, path: &ObjPath) -> Key {
        let p = path.as_ref();
        let rel = if self.prefix.is_empty() {
            p
        } else {
            p.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(p)
        };
        Key::new(rel)
    }
}

/// The S3 error code in an error response body (`<Code>X</Code>`).
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

impl S3Store {
    /// Maps an `object_store` error to ours, with a message that says what
    /// to check. Its messages carry no credentials.
    fn error(&self, key: &Key, err: object_store::Error) -> StoreError {
        // HTTP statuses of list requests are only in the text (the retry
        // error type is private to object_store).
        let text = err.to_string();
        let code = s3_code(&text);
        if code == Some("NoSuchBucket") {
            return self.no_bucket();
        }
        if let object_store::Error::NotFound { .. } = err {
            return StoreError::NotFound(key.clone());
        }
        let denied = matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || ["403 Forbidden", "401 Unauthorized"]
            .iter()
            .any(|m| text.contains(m))
            || matches!(
                code,
                Some("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied")
            );
        if denied {
            return StoreError::AccessDenied {
                key: key.clone(),
                detail: code.unwrap_or("HTTP 403").to_string(),
            };
        }
        if text.contains("error sending request") || text.contains("kind Connect") {
            let retries = text
                .find("after ")
                .map(|i| text[i..].split(',').next().unwrap_or("").to_string())
                .unwrap_or_default();
            return StoreError::Other {
                key: key.clone(),
                detail: format!(
                    "cannot reach storage at {} ({}): check AWS_ENDPOINT and that the server is up",
                    self.endpoint,
                    if retries.is_empty() {
                        "connection failed".to_string()
                    } else {
                        format!("connection failed {retries}")
                    }
                ),
            };
        }
        StoreError::Other {
            key: key.clone(),
            detail: first_line(&text),
        }
    }
}

impl S3Store {
    fn no_bucket(&self) -> StoreError {
        StoreError::NoLocation(format!(
            "bucket {} does not exist at {} (or the endpoint does not serve it): check WALG_S3_PREFIX and AWS_ENDPOINT",
            self.bucket, self.endpoint
        ))
    }
}

fn first_line(s: &str) -> String {
    // object_store appends the raw response body; one line is enough.
    s.lines().next().unwrap_or(s).chars().take(400).collect()
}

#[async_trait]
impl Store for S3Store {
    async fn put(&self, key: &Key, data: Bytes) -> Result<(), StoreError> {
        if data.len() > MULTIPART_CHUNK * 4 {
            return self
                .put_stream(key, one_chunk(data).await)
                .await
                .map(|_| ());
        }
        self.inner
            .put(&self.path(key), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.error(key, e))
    }

    async fn put_stream(&self, key: &Key, mut chunks: ChunkReceiver) -> Result<u64, StoreError> {
        // Small objects go up as one PUT; larger ones as a multipart upload
        // that is completed only after the last chunk (aborted otherwise).
        let mut first = Vec::new();
        let mut total = 0u64;
        loop {
            match chunks.recv().await {
                None => {
                    let n = first.len() as u64;
                    self.put_small(key, first).await?;
                    return Ok(n);
                }
                Some(Err(reason)) => {
                    return Err(StoreError::Aborted {
                        key: key.clone(),
                        reason,
                    })
                }
                Some(Ok(b)) => {
                    total += b.len() as u64;
                    first.extend_from_slice(&b);
                    if first.len() >= MULTIPART_CHUNK {
                        break;
                    }
                }
            }
        }
        let upload = self
            .inner
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| self.error(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
        writer.write(&first);
        drop(first);
        loop {
            match chunks.recv().await {
                None => break,
                Some(Err(reason)) => {
                    let _ = writer.abort().await;
                    return Err(StoreError::Aborted {
                        key: key.clone(),
                        reason,
                    });
                }
                Some(Ok(b)) => {
                    if let Err(e) = writer.wait_for_capacity(MULTIPART_IN_FLIGHT).await {
                        return Err(self.error(key, e));
                    }
                    total += b.len() as u64;
                    writer.put(b);
                }
            }
        }
        writer.finish().await.map_err(|e| self.error(key, e))?;
        Ok(total)
    }

    async fn put_new(&self, key: &Key, data: Bytes) -> Result<Created, StoreError> {
        // One PUT with `If-None-Match: *` whatever the size (S3 takes up to
        // 5 GiB in one): a multipart upload's completion cannot be made
        // conditional through object_store.
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(&self.path(key), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(Created::Stored),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn head(&self, key: &Key) -> Result<Option<ObjectInfo>, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                key: key.clone(),
                size: meta.size,
                last_modified: meta.last_modified,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn get(&self, key: &Key, max: u64) -> Result<Bytes, StoreError> {
        let r = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| self.error(key, e))?;
        if r.meta.size > max {
            return Err(StoreError::TooLarge {
                key: key.clone(),
                size: r.meta.size,
                max,
            });
        }
        r.bytes().await.map_err(|e| self.error(key, e))
    }

    async fn get_stream(
        &self,
        key: &Key,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let r = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| self.error(key, e))?;
        let key = key.clone();
        let endpoint = self.endpoint.clone();
        Ok(r.into_stream()
            .map_err(move |e| StoreError::Other {
                key: key.clone(),
                detail: format!("reading from {endpoint}: {}", first_line(&e.to_string())),
            })
            .boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // object_store lists by path segments; list the enclosing directory
        // and filter by the full prefix.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let dir_key = Key::new(dir);
        let dir_path = self.path(&dir_key);
        let listing_root = (!dir_path.as_ref().is_empty()).then_some(&dir_path);
        let mut out: Vec<ObjectInfo> = self
            .inner
            .list(listing_root)
            .map_err(|e| self.error(&dir_key, e))
            .try_filter_map(|meta| {
                let key = self.key_of(&meta.location);
                let keep = key.as_str().starts_with(prefix);
                async move {
                    Ok(keep.then_some(ObjectInfo {
                        key,
                        size: meta.size,
                        last_modified: meta.last_modified,
                    }))
                }
            })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn confirm_archive(&self) -> Result<(), StoreError> {
        // The top level of the prefix: one request (an archive has two
        // entries there) that fails when the bucket is missing or refused.
        let root = Key::new("");
        let prefix = self.path(&root);
        let prefix = (!prefix.as_ref().is_empty()).then_some(&prefix);
        match self.inner.list_with_delimiter(prefix).await {
            Ok(top) => {
                let names: Vec<&str> = top
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename())
                    .collect();
                archive_dirs_present(&names, || self.describe())
            }
            Err(object_store::Error::NotFound { .. }) => Err(self.no_bucket()),
            Err(e) => Err(self.error(&root, e)),
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }
}

impl S3Store {
    async fn put_small(&self, key: &Key, data: Vec<u8>) -> Result<(), StoreError> {
        self.inner
            .put(&self.path(key), PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| self.error(key, e))
    }
}

/// `data` as a finished stream of one chunk.
async fn one_chunk(data: Bytes) -> ChunkReceiver {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(Ok(data)).await;
    rx
}

/// A directory on a local (or mounted) file system. Objects are files;
/// writes go to a temporary file that is fsynced and renamed into place.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

/// Suffix of in-progress files; listings never show them.
const DIR_TMP_SUFFIX: &str = ".pgdrill-tmp";

impl DirStore {
    pub fn new(root: PathBuf) -> DirStore {
        DirStore { root }
    }

    /// Where `key` lives: only ever under the root, whatever the key.
    fn path(&self, key: &Key) -> Result<PathBuf, StoreError> {
        Ok(self.root.join(Key::parse(key.as_str())?.as_str()))
    }

    fn io_err(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn not_found_or_io(&self, key: &Key, path: &Path, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound(key.clone())
        } else {
            Self::io_err(path, e)
        }
    }

    /// Creates `dir` and its missing parents, syncing each directory that
    /// gained an entry, so that a new directory survives a crash.
    async fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
        if tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Box::pin(Self::create_dir_durable(parent)).await?;
        }
        match tokio::fs::create_dir(dir).await {
            // Made by another writer just now: it may not have synced the
            // parent yet, so sync it here too.
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Self::io_err(dir, e)),
        }
        match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => Self::sync_dir(parent).await,
            None => Ok(()),
        }
    }

    /// Makes a directory's entries (new files, renames) durable.
    async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
        let sync = async {
            let d = tokio::fs::File::open(dir).await?;
            d.sync_all().await
        };
        sync.await.map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                source.kind(),
                format!("cannot sync the directory: {source}"),
            ),
        })
    }

    /// Writes `chunks` to a temporary file, syncs it and puts it in place:
    /// by rename, or with `replace` false by a hard link, which fails
    /// atomically when the name exists (`None`, nothing stored).
    async fn write_atomic(
        &self,
        key: &Key,
        mut chunks: ChunkReceiver,
        replace: bool,
    ) -> Result<Option<u64>, StoreError> {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.path(key)?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        Self::create_dir_durable(&parent).await?;
        // Unique per write, so that writers of one key in one process do
        // not share a temporary file either.
        let tmp = path.with_file_name(format!(
            "{}.{}.{}{}",
            key.file_name(),
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            DIR_TMP_SUFFIX
        ));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| Self::io_err(&tmp, e))?;
            let mut total = 0u64;
            while let Some(chunk) = chunks.recv().await {
                let chunk = chunk.map_err(|reason| StoreError::Aborted {
                    key: key.clone(),
                    reason,
                })?;
                total += chunk.len() as u64;
                f.write_all(&chunk)
                    .await
                    .map_err(|e| Self::io_err(&tmp, e))?;
            }
            f.sync_all().await.map_err(|e| Self::io_err(&tmp, e))?;
            if replace {
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| Self::io_err(&path, e))?;
            } else {
                let linked = tokio::fs::hard_link(&tmp, &path).await;
                let _ = tokio::fs::remove_file(&tmp).await;
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
                    Err(e) => return Err(Self::io_err(&path, e)),
                }
            }
            // Make the rename itself durable: until then the object may
            // vanish in a crash. If that fails, take the object away again,
            // so that a retry does not find it and take it as stored.
            if let Err(e) = Self::sync_dir(&parent).await {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
            Ok(Some(total))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[async_trait]
impl Store for DirStore {
    async fn put(&self, key: &Key, data: Bytes) -> Result<(), StoreError> {
        self.write_atomic(key, one_chunk(data).await, true)
            .await
            .map(|_| ())
    }

    async fn put_stream(&self, key: &Key, chunks: ChunkReceiver) -> Result<u64, StoreError> {
        Ok(self.write_atomic(key, chunks, true).await?.unwrap_or(0))
    }

    async fn put_new(&self, key: &Key, data: Bytes) -> Result<Created, StoreError> {
        Ok(
            match self.write_atomic(key, one_chunk(data).await, false).await? {
                Some(_) => Created::Stored,
                None => Created::AlreadyExists,
            },
        )
    }

    async fn head(&self, key: &Key) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                key: key.clone(),
                size: meta.len(),
                last_modified: meta
                    .modified()
                    .map(DateTime::<Utc>::from)
                    .unwrap_or_else(|_| Utc::now()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(&path, e)),
        }
    }

    async fn get(&self, key: &Key, max: u64) -> Result<Bytes, StoreError> {
        use tokio::io::AsyncReadExt as _;
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.not_found_or_io(key, &path, e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| Self::io_err(&path, e))?
            .len();
        if size > max {
            return Err(StoreError::TooLarge {
                key: key.clone(),
                size,
                max,
            });
        }
        // Never past `max`, should the file grow meanwhile.
        let mut data = Vec::with_capacity(size as usize);
        (&mut file)
            .take(max)
            .read_to_end(&mut data)
            .await
            .map_err(|e| Self::io_err(&path, e))?;
        Ok(Bytes::from(data))
    }

    async fn get_stream(
        &self,
        key: &Key,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.not_found_or_io(key, &path, e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(move |e| Self::io_err(&path, e));
        Ok(stream.boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // Only walk the directory that can contain matches.
            let start = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Self::io_err(&dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| Self::io_err(&dir, e))?;
                    let path = entry.path();
                    let meta = match entry.metadata() {
                        Ok(m) => m,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Self::io_err(&path, e)),
                    };
                    if meta.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(rel) = path.strip_prefix(&root) else {
                        continue;
                    };
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key.ends_with(DIR_TMP_SUFFIX) || !key.starts_with(&prefix) {
                        continue;
                    }
                    out.push(ObjectInfo {
                        key: Key::new(key),
                        size: meta.len(),
                        last_modified: meta
                            .modified()
                            .map(DateTime::<Utc>::from)
                            .unwrap_or_else(|_| Utc::now()),
                    });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Other {
            key: Key::new(""),
            detail: e.to_string(),
        })?
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io_err(&path, e)),
        }
    }

    async fn confirm_archive(&self) -> Result<(), StoreError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => {
                let mut names = Vec::new();
                for dir in ARCHIVE_DIRS {
                    let path = self.root.join(dir.trim_end_matches('/'));
                    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
                        names.push(dir.trim_end_matches('/'));
                    }
                }
                archive_dirs_present(&names, || self.describe())
            }
            Ok(_) => Err(StoreError::NoLocation(format!(
                "{} is not a directory: check WALG_FILE_PREFIX",
                self.root.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NoLocation(format!(
                    "directory {} does not exist: check WALG_FILE_PREFIX",
                    self.root.display()
                )))
            }
            Err(e) => Err(Self::io_err(&self.root, e)),
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dir_store_round_trip_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().join("store"));
        let k = Key::new("wal_005/000000010000000000000001.lz4");
        store.put(&k, Bytes::from_static(b"hello")).await.unwrap();
        store
            .put(
                &Key::new("basebackups_005/x/part"),
                Bytes::from_static(b"p"),
            )
            .await
            .unwrap();
        assert_eq!(
            store.get(&k, 1 << 20).await.unwrap(),
            Bytes::from_static(b"hello")
        );
        let listed = store.list("wal_005/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, k);
        assert_eq!(listed[0].size, 5);
        assert!(store.list("wal_005/0000000200").await.unwrap().is_empty());
        store.delete(&k).await.unwrap();
        store.delete(&k).await.unwrap();
        assert!(store.get(&k, 1 << 20).await.unwrap_err().is_not_found());
    }

    #[test]
    fn keys_that_leave_the_prefix_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "./a",
            "a/..",
            "a\0b",
            "a//b",
            "a/",
        ] {
            let err = Key::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(
            Key::parse(&"k".repeat(1025)).is_err(),
            "over S3's 1024 bytes"
        );
        for good in [
            "wal_005/000000010000000000000001.lz4",
            "basebackups_005/base_1/tar_partitions/part_1.tar.lz4",
            "a..b/c.",
        ] {
            assert_eq!(Key::parse(good).unwrap().as_str(), good);
        }
    }

    #[tokio::test]
    async fn a_directory_store_never_leaves_its_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        let store = DirStore::new(dir.path().join("store"));
        store
            .put(&Key::new("inside"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        for key in ["../secret", "a/../../secret"] {
            let err = store.get(&Key::new(key), 1 << 20).await.unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
            assert!(store.head(&Key::new(key)).await.is_err());
            assert!(store.delete(&Key::new(key)).await.is_err());
            assert!(store.get_stream(&Key::new(key)).await.is_err());
        }
        assert!(store
            .put(&Key::new("../planted"), Bytes::from_static(b"x"))
            .await
            .is_err());
        assert!(!dir.path().join("planted").exists());
        assert!(dir.path().join("secret").exists());
    }

    /// Of writers racing to create one key, exactly one stores it, whole;
    /// a later create is told the object exists and changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn put_new_stores_exactly_one_of_racing_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(dir.path().to_path_buf()));
        let key = Key::new("wal_005/00000002.history");
        let writes = (0..16u8).map(|i| {
            let (store, key) = (Arc::clone(&store), key.clone());
            tokio::spawn(async move {
                (
                    i,
                    store
                        .put_new(&key, Bytes::from(vec![i; 100_000]))
                        .await
                        .unwrap(),
                )
            })
        });
        let results = futures::future::join_all(writes).await;
        let stored: Vec<u8> = results
            .into_iter()
            .map(Result::unwrap)
            .filter(|(_, c)| *c == Created::Stored)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(
            store.get(&key, 1 << 20).await.unwrap(),
            vec![stored[0]; 100_000]
        );
        assert_eq!(
            store
                .put_new(&key, Bytes::from_static(b"other"))
                .await
                .unwrap(),
            Created::AlreadyExists
        );
        assert_eq!(
            store.list("").await.unwrap().len(),
            1,
            "no temporary file left"
        );
    }

    #[tokio::test]
    async fn aborted_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().to_path_buf());
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(Bytes::from_static(b"partial"))).await.unwrap();
        tx.send(Err("producer failed".into())).await.unwrap();
        drop(tx);
        let k = Key::new("a/b");
        let err = store.put_stream(&k, rx).await.unwrap_err();
        assert!(err.to_string().contains("producer failed"));
        assert!(
            store.list("").await.unwrap().is_empty(),
            "no temp file left"
        );
        assert!(store.get(&k, 1 << 20).await.unwrap_err().is_not_found());
    }
}
