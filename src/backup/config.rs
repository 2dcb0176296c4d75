//! Settings read the way WAL-G reads them: `WALG_*`, `AWS_*` and `PG*`
//! environment variables, optionally overlaid by an envdir-style directory
//! (`--env-dir DIR`: each file is a variable named after the file, its first
//! line the value), because the seed's manifests mount a Kubernetes Secret as
//! a directory and run `envdir /etc/wal-g/env wal-g ...`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backup::codec::Compression;

/// A configuration problem; every message names the variable involved and
/// never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither storage variable is set.
    #[error("no storage configured: set WALG_S3_PREFIX (s3://bucket/path) or WALG_FILE_PREFIX (a directory)")]
    NoStorage,
    /// Both storage variables are set.
    #[error("WALG_S3_PREFIX and WALG_FILE_PREFIX are both set: choose one storage")]
    TwoStorages,
    /// A required variable is absent.
    #[error("{name} is not set: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    /// A variable has a value we cannot use.
    #[error("{name} has an invalid value {value:?}: {hint}")]
    Invalid {
        name: String,
        value: String,
        hint: String,
    },
    /// The env directory could not be read.
    #[error("cannot read env directory {}: {source}", path.display())]
    EnvDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Two variables that exclude each other are both set.
    #[error("{first} and {second} are both set: {hint}")]
    Conflicting {
        first: &'static str,
        second: &'static str,
        hint: &'static str,
    },
    /// The key file a variable names could not be read.
    #[error("cannot read the key file {} named by {name}: {source}", path.display())]
    KeyFile {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A WAL-G setting pgdrill does not implement and must not ignore.
    #[error("{name} is not supported: {hint}")]
    Unsupported {
        name: &'static str,
        hint: &'static str,
    },
}

/// A secret value (password, key): shown as `***` in every `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for handing to a client library; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The raw variables: process environment overlaid by the env directory.
#[derive(Debug, Clone, Default)]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    /// The process environment.
    pub fn from_process() -> Self {
        EnvVars(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        EnvVars(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Overlays an envdir directory with daemontools' semantics: the file
    /// name is the variable, the first line of the file its value (trailing
    /// spaces and tabs removed, NUL bytes turned into newlines), and an empty
    /// file removes the variable. Hidden files (`..data` and friends that
    /// Kubernetes puts into Secret volumes) are skipped.
    pub fn overlay_env_dir(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let env_dir_err = |source| ConfigError::EnvDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(env_dir_err)?
            .collect::<Result<_, _>>()
            .map_err(env_dir_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || entry.path().is_dir() {
                continue;
            }
            let content = std::fs::read(entry.path()).map_err(env_dir_err)?;
            if content.is_empty() {
                self.0.remove(&name);
                continue;
            }
            let first_line = content.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let value: Vec<u8> = first_line
                .iter()
                .map(|b| if *b == 0 { b'\n' } else { *b })
                .collect();
            let value = String::from_utf8_lossy(&value)
                .trim_end_matches([' ', '\t', '\r'])
                .to_string();
            self.0.insert(name, value);
        }
        Ok(())
    }

    /// A variable's value; empty values count as unset, as in WAL-G.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_string(), value.to_string());
    }

    /// The variables as pairs, for passing on to a child process.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &str,
        default: T,
        hint: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: name.to_string(),
                value: v.to_string(),
                hint: hint.to_string(),
            }),
        }
    }

    /// A duration given as seconds (`60`) or with units (`90s`, `2m`).
    fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        let Some(v) = self.get(name) else {
            return Ok(default);
        };
        let v = v.trim();
        v.parse::<u64>()
            .map(Duration::from_secs)
            .or_else(|_| humantime::parse_duration(v))
            .map_err(|_| ConfigError::Invalid {
                name: name.to_string(),
                value: v.to_string(),
                hint: "expected seconds or a duration such as 90s or 5m".into(),
            })
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| ConfigError::Invalid {
                name: name.to_string(),
                value: v.to_string(),
                hint: "expected true or false".into(),
            }),
        }
    }

    fn positive(&self, name: &str, default: usize) -> Result<usize, ConfigError> {
        let n: usize = self.parse(name, default, "expected a positive integer")?;
        if n == 0 {
            return Err(ConfigError::Invalid {
                name: name.to_string(),
                value: "0".into(),
                hint: "expected a positive integer".into(),
            });
        }
        Ok(n)
    }
}

/// Where backups live.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    /// `WALG_S3_PREFIX=s3://bucket/path` plus `AWS_*`.
    S3(S3Config),
    /// `WALG_FILE_PREFIX=/some/dir`.
    Dir { root: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    pub bucket: String,
    /// Path inside the bucket, without leading or trailing slashes.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    pub max_retries: usize,
    pub retry_timeout: Duration,
}

/// PostgreSQL connection settings (libpq's variable names).
#[derive(Debug, Clone, PartialEq)]
pub struct PgConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
}

/// Everything the backup verbs need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: StorageConfig,
    pub compression: Compression,
    pub upload_concurrency: usize,
    pub download_concurrency: usize,
    /// How many WAL segments `wal-fetch` fetches ahead (0 disables).
    pub prefetch: usize,
    /// Plaintext bytes per base backup part (`WALG_TAR_SIZE_THRESHOLD`).
    pub tar_size_threshold: u64,
    /// Longest chain of delta backups on a full one (`WALG_DELTA_MAX_STEPS`);
    /// 0 makes every backup full.
    pub delta_max_steps: u32,
    pub pg: PgConfig,
    pub pgdata: Option<PathBuf>,
    /// How long `backup-push` waits for the WAL its backup needs to appear
    /// in the store before it fails (`PGDRILL_ARCHIVE_CHECK_TIMEOUT`).
    pub archive_check_timeout: Duration,
    /// A deliberate defect (`PGDRILL_SABOTAGE`), for proving drills fail.
    pub sabotage: Option<crate::backup::sabotage::Sabotage>,
    /// Encryption of stored objects (`WALG_PGP_KEY*`, `WALG_LIBSODIUM_KEY*`).
    pub encryption: EncryptionConfig,
    /// Read unencrypted objects although a key is configured
    /// (`PGDRILL_ALLOW_UNENCRYPTED_READS`, while migrating an archive to
    /// encryption); refused otherwise.
    pub allow_unencrypted_reads: bool,
    /// The format new objects are written in (`PGDRILL_STORAGE_FORMAT`).
    pub storage_format: StorageFormat,
}

/// The on-storage format of what pgdrill writes; both are read whatever
/// this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageFormat {
    /// pgdrill's objects: a header and a trailer with the content's
    /// BLAKE3, so every fetch verifies what it serves end to end.
    #[default]
    Pgdrill,
    /// WAL-G's bytes, so WAL-G can read the archive: WAL objects and base
    /// backups as WAL-G writes them, with pgdrill's BLAKE3 record of each
    /// backup beside it where WAL-G does not look (`backup::walg::write`).
    Walg,
}

/// How stored objects are encrypted; the keys themselves are parsed by
/// [`crate::backup::crypto::Encryption::new`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum EncryptionConfig {
    #[default]
    None,
    /// An armored OpenPGP key (`WALG_PGP_KEY` or the file `WALG_PGP_KEY_PATH`):
    /// a public key encrypts; a private key also decrypts.
    Pgp {
        key: Secret,
        /// Where the key came from, for messages (`WALG_PGP_KEY_PATH (/path)`).
        origin: String,
        /// `WALG_PGP_KEY_PASSPHRASE`, for a protected private key.
        passphrase: Option<Secret>,
    },
    /// A 32-byte key (`WALG_LIBSODIUM_KEY` or the file
    /// `WALG_LIBSODIUM_KEY_PATH`), as configured, decoded with `transform`.
    Sodium {
        key: Secret,
        origin: String,
        transform: KeyTransform,
    },
}

/// `WALG_LIBSODIUM_KEY_TRANSFORM`: how the configured text becomes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyTransform {
    /// The text itself (as WAL-G: at least 25 bytes, zero-padded or cut to 32).
    #[default]
    None,
    Hex,
    Base64,
}

pub const DEFAULT_TAR_SIZE_THRESHOLD: u64 = 1 << 30;

/// pgBackRest's `archive-timeout` default.
pub const DEFAULT_ARCHIVE_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

impl Settings {
    /// Reads settings from the process environment and, if given, an env dir
    /// that overrides it.
    pub fn load(env_dir: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut vars = EnvVars::from_process();
        if let Some(dir) = env_dir {
            vars.overlay_env_dir(dir)?;
        }
        Settings::from_vars(&vars)
    }

    pub fn from_vars(vars: &EnvVars) -> Result<Settings, ConfigError> {
        let storage = match (vars.get("WALG_S3_PREFIX"), vars.get("WALG_FILE_PREFIX")) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoStorages),
            (None, None) => return Err(ConfigError::NoStorage),
            (None, Some(dir)) => StorageConfig::Dir {
                root: PathBuf::from(dir),
            },
            (Some(url), None) => StorageConfig::S3(s3_config(vars, url)?),
        };
        let compression = match vars.get("WALG_COMPRESSION_METHOD") {
            None => Compression::Lz4,
            Some(v) => Compression::from_name(v).ok_or_else(|| ConfigError::Invalid {
                name: "WALG_COMPRESSION_METHOD".into(),
                value: v.into(),
                hint: "expected lz4, zstd or none".into(),
            })?,
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Settings {
            storage,
            compression,
            upload_concurrency: vars.positive("WALG_UPLOAD_CONCURRENCY", cores.clamp(2, 16))?,
            download_concurrency: vars.positive("WALG_DOWNLOAD_CONCURRENCY", cores.clamp(2, 16))?,
            prefetch: vars.parse(
                "WALG_PREFETCH",
                8,
                "expected a count of segments (0 disables)",
            )?,
            delta_max_steps: vars.parse(
                "WALG_DELTA_MAX_STEPS",
                0,
                "expected a count of delta backups (0: always full)",
            )?,
            tar_size_threshold: vars.parse(
                "WALG_TAR_SIZE_THRESHOLD",
                DEFAULT_TAR_SIZE_THRESHOLD,
                "expected a size in bytes",
            )?,
            pg: PgConfig {
                host: vars.get("PGHOST").unwrap_or("localhost").to_string(),
                port: vars.parse("PGPORT", 5432, "expected a TCP port number")?,
                user: vars.get("PGUSER").unwrap_or("postgres").to_string(),
                password: vars.get("PGPASSWORD").map(Secret::new),
                dbname: vars.get("PGDATABASE").unwrap_or("postgres").to_string(),
            },
            pgdata: vars.get("PGDATA").map(PathBuf::from),
            archive_check_timeout: vars.duration(
                "PGDRILL_ARCHIVE_CHECK_TIMEOUT",
                DEFAULT_ARCHIVE_CHECK_TIMEOUT,
            )?,
            sabotage: sabotage(vars, crate::backup::sabotage::SABOTAGE_BUILT_IN)?,
            encryption: encryption_config(vars)?,
            allow_unencrypted_reads: vars.boolean("PGDRILL_ALLOW_UNENCRYPTED_READS", false)?,
            storage_format: match vars.get("PGDRILL_STORAGE_FORMAT").map(str::trim) {
                None | Some("pgdrill") => StorageFormat::Pgdrill,
                Some("walg") => StorageFormat::Walg,
                Some(v) => {
                    return Err(ConfigError::Invalid {
                        name: "PGDRILL_STORAGE_FORMAT".into(),
                        value: v.into(),
                        hint: "expected pgdrill (the default: every object carries its BLAKE3) or walg (WAL-G's bytes, for an archive WAL-G must read)".into(),
                    })
                }
            },
        })
    }
}

/// `PGDRILL_SABOTAGE`, honoured only by a build made for tests
/// (`built_in`): in a build made for use, one stray variable or env-dir
/// file must not make wal-push report success without storing.
fn sabotage(
    vars: &EnvVars,
    built_in: bool,
) -> Result<Option<crate::backup::sabotage::Sabotage>, ConfigError> {
    let Some(v) = vars.get("PGDRILL_SABOTAGE") else {
        return Ok(None);
    };
    if !built_in {
        return Err(ConfigError::Unsupported {
            name: "PGDRILL_SABOTAGE",
            hint: "this pgdrill is built for use and has no deliberate defects (they exist only in test builds, cargo feature `sabotage`); remove the variable, or the file of that name in the env directory",
        });
    }
    crate::backup::sabotage::Sabotage::parse(v)
        .map(Some)
        .ok_or_else(|| ConfigError::Invalid {
            name: "PGDRILL_SABOTAGE".into(),
            value: v.into(),
            hint: "expected drop_every_nth_wal:N or corrupt_every_nth_wal:N".into(),
        })
}

/// A key given in a variable or in a file named by another variable.
struct KeySource {
    /// The variable that was set.
    name: &'static str,
    origin: String,
    text: String,
}

/// The key in variable `name` or in the file named by `path_name`.
fn key_source(
    vars: &EnvVars,
    name: &'static str,
    path_name: &'static str,
) -> Result<Option<KeySource>, ConfigError> {
    match (vars.get(name), vars.get(path_name)) {
        (Some(_), Some(_)) => Err(ConfigError::Conflicting {
            first: name,
            second: path_name,
            hint: "set the key or a key file, not both",
        }),
        (Some(text), None) => Ok(Some(KeySource {
            name,
            origin: name.to_string(),
            text: text.to_string(),
        })),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                name: path_name,
                path: path.into(),
                source,
            })?;
            Ok(Some(KeySource {
                name: path_name,
                origin: format!("{path_name} ({path})"),
                text,
            }))
        }
        (None, None) => Ok(None),
    }
}

fn encryption_config(vars: &EnvVars) -> Result<EncryptionConfig, ConfigError> {
    // Ignoring these would store unencrypted what the user meant to encrypt.
    for name in ["WALG_GPG_KEY_ID", "WALE_GPG_KEY_ID"] {
        if vars.get(name).is_some() {
            return Err(ConfigError::Unsupported {
                name,
                hint:
                    "pgdrill does not run an external gpg: export the key and set WALG_PGP_KEY_PATH",
            });
        }
    }
    let pgp = key_source(vars, "WALG_PGP_KEY", "WALG_PGP_KEY_PATH")?;
    let sodium = key_source(vars, "WALG_LIBSODIUM_KEY", "WALG_LIBSODIUM_KEY_PATH")?;
    match (pgp, sodium) {
        (Some(p), Some(s)) => Err(ConfigError::Conflicting {
            first: p.name,
            second: s.name,
            hint: "choose one encryption (OpenPGP or libsodium)",
        }),
        (Some(p), None) => {
            // WAL-G accepts an armored key on one line with \n escapes
            // (an env directory keeps only the first line of a file).
            let text = if p.text.contains('\n') {
                p.text
            } else {
                p.text.replace("\\n", "\n")
            };
            Ok(EncryptionConfig::Pgp {
                key: Secret::new(text),
                origin: p.origin,
                passphrase: vars.get("WALG_PGP_KEY_PASSPHRASE").map(Secret::new),
            })
        }
        (None, Some(s)) => {
            let transform = match vars.get("WALG_LIBSODIUM_KEY_TRANSFORM") {
                None => KeyTransform::None,
                Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "none" => KeyTransform::None,
                    "hex" => KeyTransform::Hex,
                    "base64" => KeyTransform::Base64,
                    _ => {
                        return Err(ConfigError::Invalid {
                            name: "WALG_LIBSODIUM_KEY_TRANSFORM".into(),
                            value: v.into(),
                            hint: "expected none, hex or base64".into(),
                        })
                    }
                },
            };
            Ok(EncryptionConfig::Sodium {
                key: Secret::new(s.text),
                origin: s.origin,
                transform,
            })
        }
        (None, None) => Ok(EncryptionConfig::None),
    }
}

fn s3_config(vars: &EnvVars, url: &str) -> Result<S3Config, ConfigError> {
    let invalid_prefix = || ConfigError::Invalid {
        name: "WALG_S3_PREFIX".into(),
        value: url.into(),
        hint: "expected s3://bucket or s3://bucket/path".into(),
    };
    let rest = url.strip_prefix("s3://").ok_or_else(invalid_prefix)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid_prefix());
    }
    let access_key_id = vars
        .get("AWS_ACCESS_KEY_ID")
        .ok_or(ConfigError::Missing {
            name: "AWS_ACCESS_KEY_ID",
            hint: "S3 storage needs an access key",
        })?
        .to_string();
    let secret_access_key = Secret::new(vars.get("AWS_SECRET_ACCESS_KEY").ok_or(
        ConfigError::Missing {
            name: "AWS_SECRET_ACCESS_KEY",
            hint: "S3 storage needs a secret key",
        },
    )?);
    let endpoint = vars
        .get("AWS_ENDPOINT")
        .map(|e| e.trim_end_matches('/').to_string());
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                name: "AWS_ENDPOINT".into(),
                value: e.clone(),
                hint: "expected a URL such as http://127.0.0.1:9000".into(),
            });
        }
    }
    let force_path_style = vars.boolean("AWS_S3_FORCE_PATH_STYLE", endpoint.is_some())?;
    Ok(S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        endpoint,
        region: vars.get("AWS_REGION").unwrap_or("us-east-1").to_string(),
        access_key_id,
        secret_access_key,
        force_path_style,
        max_retries: vars.parse("WALG_S3_MAX_RETRIES", 8, "expected a count")?,
        retry_timeout: Duration::from_secs(vars.parse(
            "PGDRILL_S3_RETRY_TIMEOUT_SECS",
            120,
            "expected seconds",
        )?),
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_vars() -> EnvVars {
        EnvVars::from_pairs([
            ("WALG_S3_PREFIX", "s3://backups/prod/db1/"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
        ])
    }

    #[test]
    fn s3_prefix_is_split_into_bucket_and_path() {
        let s = Settings::from_vars(&s3_vars()).unwrap();
        let StorageConfig::S3(s3) = s.storage else {
            panic!("expected s3")
        };
        assert_eq!(s3.bucket, "backups");
        assert_eq!(s3.prefix, "prod/db1");
        assert!(s3.force_path_style, "custom endpoint implies path style");
        assert_eq!(s.compression, Compression::Lz4);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Settings::from_vars(&s3_vars()).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn contradictory_or_missing_settings_name_the_variable() {
        let mut v = s3_vars();
        v.set("WALG_FILE_PREFIX", "/tmp/x");
        let err = Settings::from_vars(&v).unwrap_err().to_string();
        assert!(err.contains("WALG_S3_PREFIX") && err.contains("WALG_FILE_PREFIX"));

        let err = Settings::from_vars(&EnvVars::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("WALG_S3_PREFIX"), "{err}");

        let v = EnvVars::from_pairs([("WALG_S3_PREFIX", "s3://b")]);
        let err = Settings::from_vars(&v).unwrap_err().to_string();
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");

        let mut v = s3_vars();
        v.set("PGDRILL_STORAGE_FORMAT", "wal-g");
        let err = Settings::from_vars(&v).unwrap_err().to_string();
        assert!(
            err.contains("PGDRILL_STORAGE_FORMAT") && err.contains("walg"),
            "{err}"
        );
        v.set("PGDRILL_STORAGE_FORMAT", "walg");
        assert_eq!(
            Settings::from_vars(&v).unwrap().storage_format,
            StorageFormat::Walg
        );

        let mut v = s3_vars();
        v.set("WALG_COMPRESSION_METHOD", "brotli9");
        let err = Settings::from_vars(&v).unwrap_err().to_string();
        assert!(
            err.contains("WALG_COMPRESSION_METHOD") && err.contains("lz4"),
            "{err}"
        );

        let mut v = s3_vars();
        v.set("WALG_UPLOAD_CONCURRENCY", "0");
        let err = Settings::from_vars(&v).unwrap_err().to_string();
        assert!(err.contains("WALG_UPLOAD_CONCURRENCY"), "{err}");

        let v = EnvVars::from_pairs([("WALG_S3_PREFIX", "gs://b/x")]);
        let err = Settings::from_vars(&v).unwrap_err().to_string();
        assert!(err.contains("s3://bucket"), "{err}");
    }

    #[test]
    fn env_dir_overrides_environment_with_first_line_of_each_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("WALG_FILE_PREFIX"),
            "/srv/backups  \nignored\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("PGPORT"), "5433").unwrap();
        std::fs::write(dir.path().join("PGUSER"), "").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        let mut vars = EnvVars::from_pairs([("PGPORT", "5432"), ("PGUSER", "alice")]);
        vars.overlay_env_dir(dir.path()).unwrap();
        assert_eq!(vars.get("WALG_FILE_PREFIX"), Some("/srv/backups"));
        assert_eq!(vars.get("PGPORT"), Some("5433"));
        assert_eq!(
            vars.get("PGUSER"),
            None,
            "an empty file unsets the variable"
        );
        assert_eq!(vars.get(".hidden"), None);
        let s = Settings::from_vars(&vars).unwrap();
        assert_eq!(
            s.storage,
            StorageConfig::Dir {
                root: "/srv/backups".into()
            }
        );
        assert_eq!(s.pg.port, 5433);
    }

    #[test]
    fn archive_check_timeout_takes_seconds_or_units() {
        let timeout = |v: &str| {
            let mut vars = s3_vars();
            vars.set("PGDRILL_ARCHIVE_CHECK_TIMEOUT", v);
            Settings::from_vars(&vars).map(|s| s.archive_check_timeout)
        };
        assert_eq!(timeout("90").unwrap(), Duration::from_secs(90));
        assert_eq!(timeout("2m").unwrap(), Duration::from_secs(120));
        let err = timeout("soon").unwrap_err().to_string();
        assert!(err.contains("PGDRILL_ARCHIVE_CHECK_TIMEOUT"), "{err}");
        assert_eq!(
            Settings::from_vars(&s3_vars())
                .unwrap()
                .archive_check_timeout,
            DEFAULT_ARCHIVE_CHECK_TIMEOUT
        );
    }

    #[test]
    fn sabotage_needs_a_test_build() {
        let mut v = s3_vars();
        v.set("PGDRILL_SABOTAGE", "drop_every_nth_wal:1");
        let err = sabotage(&v, false).unwrap_err().to_string();
        assert!(
            err.contains("PGDRILL_SABOTAGE") && err.contains("built for use"),
            "{err}"
        );
        assert_eq!(
            sabotage(&v, true).unwrap(),
            Some(crate::backup::sabotage::Sabotage::DropEveryNthWal(1))
        );
        assert_eq!(sabotage(&s3_vars(), false).unwrap(), None);
        v.set("PGDRILL_SABOTAGE", "explode");
        assert!(sabotage(&v, true).is_err());
    }

    #[test]
    fn missing_env_dir_is_a_clear_error() {
        let mut vars = EnvVars::default();
        let err = vars
            .overlay_env_dir(Path::new("/nonexistent/env"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/env"), "{err}");
    }

    #[test]
    fn encryption_settings_are_read_as_wal_g_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key.asc");
        std::fs::write(&key_file, "-----BEGIN PGP PRIVATE KEY BLOCK-----\nxyz\n").unwrap();
        let mut v = s3_vars();
        v.set("WALG_PGP_KEY_PATH", key_file.to_str().unwrap());
        v.set("WALG_PGP_KEY_PASSPHRASE", "pass-phrase-123");
        let s = Settings::from_vars(&v).unwrap();
        let EncryptionConfig::Pgp {
            key,
            origin,
            passphrase,
        } = &s.encryption
        else {
            panic!("expected pgp: {:?}", s.encryption)
        };
        assert!(key.expose().ends_with("xyz\n"));
        assert!(origin.starts_with("WALG_PGP_KEY_PATH ("), "{origin}");
        assert_eq!(passphrase.as_ref().unwrap().expose(), "pass-phrase-123");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("pass-phrase-123") && !shown.contains("xyz"),
            "{shown}"
        );

        // One line with \n escapes, as WAL-G accepts.
        let mut v = s3_vars();
        v.set(
            "WALG_PGP_KEY",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\\n\\nabc",
        );
        let s = Settings::from_vars(&v).unwrap();
        let EncryptionConfig::Pgp { key, .. } = &s.encryption else {
            panic!("expected pgp")
        };
        assert_eq!(key.expose(), "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabc");

        let mut v = s3_vars();
        v.set("WALG_LIBSODIUM_KEY", "00ff");
        v.set("WALG_LIBSODIUM_KEY_TRANSFORM", "base64");
        let s = Settings::from_vars(&v).unwrap();
        assert!(
            matches!(&s.encryption, EncryptionConfig::Sodium { transform: KeyTransform::Base64, origin, .. } if origin == "WALG_LIBSODIUM_KEY")
        );
        assert_eq!(
            Settings::from_vars(&s3_vars()).unwrap().encryption,
            EncryptionConfig::None
        );
    }

    #[test]
    fn contradictory_encryption_settings_name_the_variables() {
        let err_of = |pairs: &[(&str, &str)]| {
            let mut v = s3_vars();
            for (k, val) in pairs {
                v.set(k, val);
            }
            Settings::from_vars(&v).unwrap_err().to_string()
        };
        let err = err_of(&[
            ("WALG_PGP_KEY", "k"),
            ("WALG_LIBSODIUM_KEY", "secret-value"),
        ]);
        assert!(
            err.contains("WALG_PGP_KEY and WALG_LIBSODIUM_KEY are both set"),
            "{err}"
        );
        assert!(!err.contains("secret-value"), "{err}");
        let err = err_of(&[("WALG_PGP_KEY", "k"), ("WALG_PGP_KEY_PATH", "/k")]);
        assert!(err.contains("WALG_PGP_KEY_PATH"), "{err}");
        let err = err_of(&[("WALG_LIBSODIUM_KEY_PATH", "/nonexistent/key")]);
        assert!(
            err.contains("WALG_LIBSODIUM_KEY_PATH") && err.contains("/nonexistent/key"),
            "{err}"
        );
        let err = err_of(&[
            ("WALG_LIBSODIUM_KEY", "k"),
            ("WALG_LIBSODIUM_KEY_TRANSFORM", "rot13"),
        ]);
        assert!(err.contains("none, hex or base64"), "{err}");
        let err = err_of(&[("WALG_GPG_KEY_ID", "ABCD")]);
        assert!(err.contains("WALG_GPG_KEY_ID is not supported"), "{err}");
    }
}
