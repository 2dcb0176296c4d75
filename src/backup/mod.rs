//! The physical backup tool: WAL archiving, base backups, listing and
//! retention, WAL-G-compatible in verbs, settings and exit codes.

pub mod audit;
pub mod base;
pub mod catalog;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod delta;
pub mod json;
pub mod layout;
pub mod monitor;
pub mod pg;
pub mod progress;
pub mod retention;
pub mod sabotage;
pub mod store;
pub mod timestamp;
pub mod wal;
pub mod walg;
pub mod walverify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backup::config::{ConfigError, Settings};
use store::{Key, Store, StoreError};

/// Exit codes of the backup verbs (documented in the README).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any failure not listed below.
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap's usage errors).
    pub const USAGE: i32 = 2;
    /// `wal-fetch`: the requested file is not in storage (WAL-G uses 74,
    /// sysexits' EX_IOERR); PostgreSQL treats it as the end of the archive.
    pub const NOT_FOUND: i32 = 74;
    /// `wal-fetch`: any other failure (a corrupt or undecryptable object,
    /// storage failing after retries, bad settings). Above 125, so
    /// PostgreSQL aborts recovery rather than take the failure for the end
    /// of the archive and promote without the rest of the WAL.
    pub const FETCH_FAILED: i32 = 200;
    /// `wal-verify`: a check found only WARNING conditions (segments not
    /// archived yet, storage behind the cluster's timeline).
    pub const CHECK_WARNING: i32 = 3;
    /// `wal-verify` and `backup-verify`: a check found a FAILURE (lost WAL,
    /// a foreign timeline in storage, a damaged backup).
    pub const CHECK_FAILURE: i32 = 4;
    /// `pgdrill run`: no drill failed, but a scenario was skipped because
    /// its environment is not available here (each skip is printed with
    /// its reason).
    pub const DRILL_SKIPPED: i32 = 3;
    /// `backup-check` (Nagios plugin convention): WARNING.
    pub const NAGIOS_WARNING: i32 = 1;
    /// `backup-check`: CRITICAL.
    pub const NAGIOS_CRITICAL: i32 = 2;
    /// `backup-check`: the check itself could not run (storage unreachable,
    /// bad settings).
    pub const NAGIOS_UNKNOWN: i32 = 3;

    /// What kind of failure ended a verb: the last line of stderr with
    /// `--error-format json`, for programs that drive the tool (the drill)
    /// and must not read its messages.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum FailureKind {
        /// The WAL file, backup or object is not in storage.
        NotFound,
        /// A stored object failed verification (checksum, authentication).
        Corrupt,
        /// Storage refused the credentials.
        AccessDenied,
        /// Storage failed otherwise (after retries).
        Storage,
        /// The encryption key is missing, wrong or unusable.
        Key,
        /// Bad settings or arguments.
        Invalid,
        /// The server being backed up failed or is not set up for it.
        Postgres,
        /// Storage holds other content under the name being written.
        Conflict,
        /// A new backup's WAL did not reach storage in time.
        NotArchived,
        /// A restored file did not match its backup.
        VerifyFailed,
        /// A local file or directory failed.
        Io,
        /// pgdrill itself failed.
        Internal,
    }

    /// The failure line of `--error-format json`.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct FailureReport {
        pub kind: FailureKind,
        /// The code the process exits with.
        pub exit_code: i32,
        /// The message the text format prints.
        pub message: String,
    }

    impl FailureReport {
        /// The report on the last line of `stderr`, if it holds one.
        pub fn from_stderr(stderr: &str) -> Option<FailureReport> {
            let line = stderr.lines().rev().find(|l| !l.trim().is_empty())?;
            serde_json::from_str(line).ok()
        }
    }
}

/// Errors of the backup verbs. Messages are lowercase, say what failed and
/// what to check, and never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An encrypted object that cannot be read with the configured key, or
    /// an unusable key.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// `wal-fetch` of a file that the archive does not have.
    #[error("{name} not found in {store}")]
    WalNotFound { name: String, store: String },
    /// A WAL file is already archived with other content.
    #[error("{name} is already archived with different content (stored BLAKE3 {stored}, local {local}); refusing to overwrite it: check that two clusters do not archive into the same prefix")]
    WalConflict {
        name: String,
        stored: String,
        local: String,
    },
    /// A WAL file is already stored, and with only a public OpenPGP key the
    /// stored object cannot be decrypted to compare it with this file.
    #[error("{name} is already in storage ({key}), and with only a public key configured ({origin}) pgdrill cannot compare it with this file (it cannot decrypt it, and a size proves nothing); refusing to report it archived. If a wal-push of this file was interrupted, configure the private key for wal-push so it can compare, or check with the private key that the stored object is this file (pgdrill wal-fetch {name} FILE) and delete {key}, so that the next retry stores it")]
    WalUncomparable {
        name: String,
        key: Key,
        origin: String,
    },
    /// A stored object failed verification.
    #[error("stored object {key} is corrupt: {detail}")]
    Corrupt { key: Key, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("postgres: {0}")]
    Postgres(pg::PgError),
    #[error("no backups found in {0}")]
    NoBackups(String),
    #[error("backup {name} not found in {store} (run backup-list to see what exists)")]
    BackupNotFound { name: String, store: String },
    /// Bad user input that clap cannot catch.
    #[error("{0}")]
    Invalid(String),
    /// A failure of pgdrill itself, not of its input or storage: a worker
    /// task that panicked or was cancelled, a document that would not
    /// serialize. `what` says which.
    #[error("internal error: {what} failed: {detail}")]
    Internal { what: String, detail: String },
    /// The server does not archive WAL, so no backup of it can be restored.
    #[error("{0}; a backup is restorable only with the WAL from its start to its end in the same storage: set archive_mode = on (needs a restart) and archive_command = 'pgdrill wal-push %p' with this storage's settings")]
    ArchivingOff(String),
    /// The WAL a new backup needs did not reach this store in time.
    #[error("backup {backup} is not usable and was not completed: {missing} it needs {is_are} not in {store} after {waited}; check that archive_mode = on and that archive_command runs 'pgdrill wal-push %p' with this same storage (WALG_S3_PREFIX or WALG_FILE_PREFIX), or raise PGDRILL_ARCHIVE_CHECK_TIMEOUT if archiving is only slow")]
    WalNotArchived {
        backup: String,
        missing: String,
        is_are: &'static str,
        store: String,
        waited: String,
    },
    /// A restored file did not match the backup's file list.
    #[error("verification failed: {0}")]
    VerifyFailed(String),
    /// Every name this `backup-push` run started under was owned by
    /// another run (backups overlapping more than a few segments' worth).
    #[error("backup-push gave up after {attempts} starts: each began in a WAL segment whose backup name ({last}) another backup-push run owns; two runs overlap (a cron run and a manual one?): let the other finish, then run again")]
    NameTaken { attempts: usize, last: String },
}

impl BackupError {
    /// Its kind, for `--error-format json`.
    pub fn kind(&self) -> exit::FailureKind {
        use exit::FailureKind as K;
        match self {
            BackupError::Config(_) | BackupError::Invalid(_) => K::Invalid,
            BackupError::Store(StoreError::NotFound(_))
            | BackupError::WalNotFound { .. }
            | BackupError::NoBackups(_)
            | BackupError::BackupNotFound { .. } => K::NotFound,
            BackupError::Store(StoreError::AccessDenied { .. }) => K::AccessDenied,
            BackupError::Store(StoreError::Io { .. }) | BackupError::Io { .. } => K::Io,
            BackupError::Store(StoreError::BadKey(_) | StoreError::TooLarge { .. }) => K::Corrupt,
            BackupError::Store(_) => K::Storage,
            BackupError::Corrupt { .. }
            | BackupError::Crypto(crypto::CryptoError::Corrupt { .. }) => K::Corrupt,
            BackupError::Crypto(crypto::CryptoError::Read { .. }) => K::Storage,
            BackupError::Crypto(_) => K::Key,
            BackupError::WalConflict { .. }
            | BackupError::WalUncomparable { .. }
            | BackupError::NameTaken { .. } => K::Conflict,
            BackupError::Postgres(_) | BackupError::ArchivingOff(_) => K::Postgres,
            BackupError::WalNotArchived { .. } => K::NotArchived,
            BackupError::VerifyFailed(_) => K::VerifyFailed,
            BackupError::Internal { .. } => K::Internal,
        }
    }

    /// Whether trying the same operation again cannot help: everything but
    /// a transient storage failure ([`StoreError::is_permanent`]). Loops
    /// that wait anyway (the archive check) go on through transient ones.
    pub fn is_permanent(&self) -> bool {
        match self {
            BackupError::Store(e) => e.is_permanent(),
            _ => true,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            BackupError::WalNotFound { .. } => exit::NOT_FOUND,
            _ => exit::FAILURE,
        }
    }

    /// Maps a failure of pgdrill itself (see [`BackupError::Internal`]).
    pub fn internal<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BackupError + '_ {
        move |e| BackupError::Internal {
            what: what.to_string(),
            detail: e.to_string(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let context = context.into();
        move |source| BackupError::Io { context, source }
    }

    /// Maps a decoding failure of `key` to an error naming the object.
    pub fn from_codec(key: &Key, e: codec::CodecError) -> BackupError {
        match e {
            codec::CodecError::Corrupt(detail) => BackupError::Corrupt {
                key: key.clone(),
                detail,
            },
            // A store failure while streaming keeps its kind (not found,
            // access denied, ...), so callers and exit codes can tell.
            codec::CodecError::Io(source)
                if source.get_ref().is_some_and(|i| i.is::<StoreError>()) =>
            {
                match source.into_inner().map(|i| i.downcast::<StoreError>()) {
                    Some(Ok(store)) => BackupError::Store(*store),
                    _ => unreachable!("checked to be a StoreError"),
                }
            }
            codec::CodecError::Io(source) => BackupError::Io {
                context: format!("reading {key}"),
                source,
            },
            codec::CodecError::Write(source) => BackupError::Io {
                context: format!("writing the decoded content of {key}"),
                source,
            },
        }
    }
}

/// What every verb works with: settings and the opened store.
#[derive(Debug, Clone)]
pub struct Context {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    /// Encryption of stored objects; every object read or written by the
    /// verbs goes through it.
    pub encryption: Arc<crypto::Encryption>,
    /// `--env-dir`, passed on to the commands we write into configuration
    /// (restore_command) and to the background prefetcher.
    pub env_dir: Option<PathBuf>,
}

impl Context {
    pub fn open(settings: Settings, env_dir: Option<&Path>) -> Result<Context, BackupError> {
        let mut store = store::open(&settings.storage)?;
        if let Some(sabotage) = settings.sabotage {
            // Not through the log filter: a sabotaged run always says so.
            eprintln!(
                "pgdrill: WARNING: PGDRILL_SABOTAGE={} is set: this backup tool is deliberately broken (test build)",
                sabotage.to_setting()
            );
            store = Arc::new(crate::backup::sabotage::SabotagedStore {
                inner: store,
                sabotage,
            });
        }
        let encryption = Arc::new(crypto::Encryption::new(
            &settings.encryption,
            settings.allow_unencrypted_reads,
        )?);
        Ok(Context {
            settings,
            store,
            encryption,
            env_dir: env_dir.map(Path::to_path_buf),
        })
    }

    /// Streams stored object `key`, decrypted, into `read`, which runs off
    /// the async runtime and pulls the object as it downloads (backup
    /// tars: never held whole).
    pub async fn read_object<T, F>(&self, key: &Key, read: F) -> Result<T, BackupError>
    where
        T: Send + 'static,
        F: FnOnce(Box<dyn std::io::Read + Send>) -> Result<T, BackupError> + Send + 'static,
    {
        use futures::TryStreamExt as _;
        let stream = self
            .store
            .get_stream(key)
            .await?
            .map_err(std::io::Error::other);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let encryption = Arc::clone(&self.encryption);
        let key = key.clone();
        tokio::task::spawn_blocking(move || read(Box::new(encryption.wrap_reader(&key, reader)?)))
            .await
            .map_err(BackupError::internal("the extract task"))?
    }

    /// Fetches and verifies the object `key` of WAL file `name`, written
    /// by pgdrill or by WAL-G (no pgdrill envelope: decoded by the key's
    /// extension and checked as [`walg`] says). Decryption comes first:
    /// WAL-G encrypts its compressed stream with OpenPGP as pgdrill
    /// encrypts its object, and the first bytes of the plaintext tell the
    /// two apart. With a key configured, an unencrypted object of either
    /// tool is refused as always.
    pub async fn fetch_wal_object(
        &self,
        key: &Key,
        name: &str,
    ) -> Result<(Vec<u8>, codec::Digest), BackupError> {
        self.fetch_wal_object_into(key, name, Vec::new()).await
    }

    /// [`Self::fetch_wal_object`] writing the plaintext into `out` as it
    /// decodes (a file: a 16 MiB segment is never held whole, whose fresh
    /// pages and copies were most of a prefetch's CPU). Nothing in `out`
    /// is verified until this returns `Ok`: callers write where nothing is
    /// served until then. An object stored larger than
    /// [`layout::MAX_WAL_OBJECT_SIZE`] is refused before it is read, and one
    /// that decodes past [`layout::MAX_WAL_FILE_SIZE`] as soon as it does,
    /// so neither can take the memory or fill the disk.
    pub async fn fetch_wal_object_into<W: std::io::Write + Send + 'static>(
        &self,
        key: &Key,
        name: &str,
        out: W,
    ) -> Result<(W, codec::Digest), BackupError> {
        let raw = match self.store.get(key, layout::MAX_WAL_OBJECT_SIZE).await {
            Err(StoreError::TooLarge { key, size, max }) => {
                return Err(BackupError::Corrupt {
                    key,
                    detail: format!(
                        "it is stored as {size} bytes, more than {max} bytes, which no WAL file takes compressed or encrypted"
                    ),
                });
            }
            r => r?,
        };
        let ext = key
            .as_str()
            .rsplit('/')
            .next()
            .and_then(|file| file.strip_prefix(name))
            .map_or("", |rest| rest.trim_start_matches('.'))
            .to_string();
        let (key, name) = (key.clone(), name.to_string());
        let encryption = Arc::clone(&self.encryption);
        tokio::task::spawn_blocking(move || {
            let io_err = |e| BackupError::from_codec(&key, codec::CodecError::from_io(e));
            let mut object = encryption.wrap_reader(&key, std::io::Cursor::new(raw))?;
            let mut head = Vec::with_capacity(codec::HEADER_LEN);
            std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut object, codec::HEADER_LEN as u64),
                &mut head,
            )
            .map_err(io_err)?;
            let mut object = std::io::Read::chain(&head[..], object);
            if codec::is_pgdrill_object(&head) {
                return codec::decode_into(object, out, layout::MAX_WAL_FILE_SIZE)
                    .map_err(|e| BackupError::from_codec(&key, e));
            }
            let mut whole = Vec::new();
            std::io::Read::read_to_end(&mut object, &mut whole).map_err(io_err)?;
            let corrupt = |e: walg::WalgError| BackupError::Corrupt {
                key: key.clone(),
                detail: format!("a WAL-G object, but {e}"),
            };
            // Decoded in memory (WAL-G's format has no trailer to verify
            // as it streams), so bounded as pgdrill's objects are.
            let plain = walg::decode(&whole, &ext, layout::MAX_WAL_FILE_SIZE).map_err(corrupt)?;
            if layout::wal_file_kind(&name) == Some(layout::WalFileKind::Segment) {
                walg::check_segment(&name, &plain).map_err(corrupt)?;
            }
            let digest = codec::digest_of(&plain);
            let mut out = out;
            std::io::Write::write_all(&mut out, &plain)
                .map_err(|e| BackupError::from_codec(&key, codec::CodecError::Write(e)))?;
            Ok((out, digest))
        })
        .await
        .map_err(BackupError::internal("the decoder task"))?
    }

    /// The command line that runs this binary with the same `--env-dir`
    /// (for `restore_command`, run by a shell later).
    pub fn self_command(&self, verb: &str) -> String {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pgdrill"));
        command_line(&exe, self.env_dir.as_deref(), verb)
    }
}

/// `exe [--env-dir DIR] verb` for a shell: the paths quoted (a space in
/// either broke the command), and Linux's " (deleted)" mark dropped from
/// an executable replaced while it runs (an upgrade during a restore), so
/// the command runs the file now at that path.
fn command_line(exe: &Path, env_dir: Option<&Path>, verb: &str) -> String {
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    match env_dir {
        Some(d) => format!(
            "{} --env-dir {} {verb}",
            shell_quoted(exe),
            shell_quoted(&d.to_string_lossy())
        ),
        None => format!("{} {verb}", shell_quoted(exe)),
    }
}

/// `s` as one shell word: bare when it holds only safe characters, else in
/// single quotes.
fn shell_quoted(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words a shell makes of `line`.
    fn shell_words(line: &str) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "set -- {line}; for a; do printf '%s\\n' \"$a\"; done"
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_restore_command_survives_spaces_quotes_and_a_replaced_binary() {
        let line = command_line(
            Path::new("/opt/pg drill/bin/pgdrill (deleted)"),
            Some(Path::new("/etc/wal-g/it's env")),
            "wal-fetch %f %p",
        );
        assert_eq!(
            shell_words(&line),
            [
                "/opt/pg drill/bin/pgdrill",
                "--env-dir",
                "/etc/wal-g/it's env",
                "wal-fetch",
                "%f",
                "%p"
            ]
        );
        assert_eq!(
            command_line(Path::new("/usr/bin/pgdrill"), None, "wal-fetch %f %p"),
            "/usr/bin/pgdrill wal-fetch %f %p"
        );
    }

    #[tokio::test]
    async fn a_failed_worker_task_is_an_internal_error_not_bad_input() {
        let e = tokio::spawn(async { panic!("worker panicked") })
            .await
            .map_err(BackupError::internal("the test task"))
            .unwrap_err();
        assert!(matches!(e, BackupError::Internal { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("internal error: the test task failed: task "),
            "{e}"
        );
    }

    #[test]
    fn a_store_failure_while_decoding_keeps_its_kind() {
        let key = Key::new("wal_005/000000010000000000000003.lz4");
        let denied = StoreError::AccessDenied {
            key: key.clone(),
            detail: "403".into(),
        };
        let e = BackupError::from_codec(&key, codec::CodecError::Io(std::io::Error::other(denied)));
        assert!(
            matches!(e, BackupError::Store(StoreError::AccessDenied { .. })),
            "{e:?}"
        );
        let e = BackupError::from_codec(
            &key,
            codec::CodecError::Io(std::io::Error::other(StoreError::NotFound(key.clone()))),
        );
        assert!(
            matches!(e, BackupError::Store(StoreError::NotFound(_))),
            "{e:?}"
        );
        let e = BackupError::from_codec(
            &key,
            codec::CodecError::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        );
        assert!(matches!(e, BackupError::Io { .. }), "{e:?}");
    }

    /// The backup tool is a leaf: the harness uses it, never the other way
    /// round, so no file under src/backup/ names another module of the
    /// crate.
    #[test]
    fn the_backup_tool_names_no_harness_module() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backup");
        // Spelled in two pieces so that this test does not find itself.
        let prefix = concat!("crate", "::");
        let mut offenders = Vec::new();
        let mut files = Vec::new();
        let mut dirs = vec![dir];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 15, "{files:?}");
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let harness = line
                    .match_indices(prefix)
                    .any(|(i, _)| !line[i + prefix.len()..].starts_with("backup"));
                if harness {
                    offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    }
}
