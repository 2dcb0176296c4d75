//! Drill scenarios: the YAML model, strict parsing and validation.
//!
//! A scenario file describes one drill: the PostgreSQL server, the storage,
//! the write workload, a timeline of steps (base backups, retention, faults,
//! a disaster) and the restores to verify afterwards. `scenarios/README.md`
//! documents the format for people; the doc comments here are the reference
//! for code.
//!
//! Parsing is strict: unknown keys, wrong types and out-of-range values are
//! rejected, and every [`ScenarioError::Invalid`] names the file, line and
//! column of the offending node, its key path and a hint.

mod error;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub use error::{Location, ScenarioError};

/// One drill, as read from a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short identifier: 1-64 lowercase letters, digits and `-`, starting
    /// with a letter or digit. Used in reports and directory names.
    pub name: String,
    /// Free text for people. Default: empty.
    #[serde(default)]
    pub description: String,
    /// Where the drill runs. Default: [`Environment::Local`].
    #[serde(default)]
    pub environment: Environment,
    /// The backup tool under test. Default: [`Engine::Pgdrill`].
    #[serde(default)]
    pub engine: Engine,
    /// How the sabotaged engine misbehaves; required with
    /// [`Engine::PgdrillSabotaged`] and rejected otherwise.
    pub sabotage: Option<Sabotage>,
    /// Seed for every random choice of the drill (restore targets, payloads).
    /// When absent the runner picks one and reports it.
    pub seed: Option<u64>,
    /// The PostgreSQL server.
    pub postgres: Postgres,
    /// Where backups go. Default: bucket `drill`, lz4.
    #[serde(default)]
    pub storage: Storage,
    /// The write load that runs from time 0 while the steps happen.
    pub workload: Workload,
    /// The timeline, in non-decreasing order of `at`. Default: none.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Restores done after the timeline. Default: none.
    #[serde(default)]
    pub restores: Restores,
    /// Checks run on every restored server, each listed once.
    /// Default: `[row_count, content_hash]`.
    #[serde(default = "default_verify")]
    pub verify: Vec<Check>,
    /// Recovery objectives the drill must meet. Default: none.
    #[serde(default)]
    pub objectives: Objectives,
}

/// Where a drill runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// PostgreSQL processes and the embedded S3 server on this machine.
    #[default]
    Local,
    /// Containers on one network; the only environment with storage and
    /// network faults.
    Containers,
    /// A Kubernetes-in-Docker cluster.
    Kind,
}

impl Environment {
    /// The name used in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Containers => "containers",
            Environment::Kind => "kind",
        }
    }
}

/// The backup tool under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// pgdrill's own backup tool, as shipped.
    #[default]
    Pgdrill,
    /// pgdrill's backup tool with a deliberate defect ([`Scenario::sabotage`]),
    /// to prove the harness notices a broken backup tool.
    PgdrillSabotaged,
}

/// The defect of [`Engine::PgdrillSabotaged`]. `N` counts archived WAL
/// segments; 1 means every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sabotage {
    /// `wal-push` reports success for every Nth segment without uploading it.
    DropEveryNthWal(u32),
    /// `wal-push` uploads every Nth segment with one byte flipped.
    CorruptEveryNthWal(u32),
}

/// The PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// Major version, 12 to 18.
    pub version: u32,
    /// Extra `postgresql.conf` settings: name to value, scalars written as
    /// given. Settings the harness owns (archiving, recovery, port, paths)
    /// are rejected. Default: none.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `initdb --wal-segsize` in MiB: a power of two from 1 to 1024.
    /// Default: PostgreSQL's (16).
    pub wal_segment_size_mb: Option<u32>,
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// S3 bucket name: 3-63 characters of lowercase letters, digits, `-` and
    /// `.`, starting and ending with a letter or digit. Default: `drill`.
    pub bucket: String,
    /// Compression of backup objects. Default: lz4.
    pub compression: Compression,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            bucket: "drill".to_owned(),
            compression: Compression::Lz4,
        }
    }
}

/// Compression of backup objects (`WALG_COMPRESSION_METHOD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
    /// Stored as is.
    None,
}

impl From<Compression> for crate::backup::codec::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Lz4 => Self::Lz4,
            Compression::Zstd => Self::Zstd,
            Compression::None => Self::None,
        }
    }
}

/// The write load.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Concurrent writer connections, 1 to 256.
    pub writers: u32,
    /// Commits per second across all writers, at least 1.
    pub rate_per_second: u32,
    /// How long the writers run, from time 0: more than 0s, at most 24h.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// Bytes of random payload per row, at most 1 MiB. Default: 100.
    #[serde(default = "default_payload_bytes")]
    pub payload_bytes: u32,
}

/// One timed event of the drill, tagged by `action`. `at` is the time since
/// the workload started; every step but `disaster` happens while the
/// workload runs (`at` ≤ `workload.duration`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Take a base backup (`backup-push`).
    BaseBackup {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Close the current WAL segment (`pg_switch_wal()`).
    SwitchWal {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Run `CHECKPOINT`.
    Checkpoint {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Stop the writers for a while; the workload's end does not move.
    Pause {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// How long, more than 0s.
        #[serde(deserialize_with = "duration")]
        duration: Duration,
    },
    /// Apply retention: `delete retain N --confirm`.
    Delete {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// Base backups to keep, at least 1.
        retain: u32,
    },
    /// End the drill with a disaster; at most one, and the last step. It may
    /// come at or after the workload's end.
    Disaster {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// What happens.
        kind: DisasterKind,
    },
    /// Make the storage unreachable for a while. Containers only.
    StorageOutage {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// How long, more than 0s.
        #[serde(deserialize_with = "duration")]
        duration: Duration,
    },
    /// Damage one stored backup object. Containers only.
    StorageCorruption {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Delay traffic to the storage from here on. Containers only.
    NetworkLatency {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// Added one-way delay, more than 0s.
        #[serde(deserialize_with = "duration")]
        delay: Duration,
    },
}

impl Step {
    /// Time since the workload started.
    pub fn at(&self) -> Duration {
        match *self {
            Step::BaseBackup { at }
            | Step::SwitchWal { at }
            | Step::Checkpoint { at }
            | Step::Pause { at, .. }
            | Step::Delete { at, .. }
            | Step::Disaster { at, .. }
            | Step::StorageOutage { at, .. }
            | Step::StorageCorruption { at }
            | Step::NetworkLatency { at, .. } => at,
        }
    }

    /// The `action` name used in scenario files.
    pub fn action(&self) -> &'static str {
        match self {
            Step::BaseBackup { .. } => "base_backup",
            Step::SwitchWal { .. } => "switch_wal",
            Step::Checkpoint { .. } => "checkpoint",
            Step::Pause { .. } => "pause",
            Step::Delete { .. } => "delete",
            Step::Disaster { .. } => "disaster",
            Step::StorageOutage { .. } => "storage_outage",
            Step::StorageCorruption { .. } => "storage_corruption",
            Step::NetworkLatency { .. } => "network_latency",
        }
    }

    /// Whether the step needs [`Environment::Containers`].
    pub fn needs_containers(&self) -> bool {
        matches!(
            self,
            Step::StorageOutage { .. } | Step::StorageCorruption { .. } | Step::NetworkLatency { .. }
        )
    }
}

/// What a [`Step::Disaster`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisasterKind {
    /// SIGKILL the primary's postmaster and throw its data directory away.
    KillPrimary,
}

/// Restores done after the timeline, each into a fresh data directory and
/// checked with [`Scenario::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Restores {
    /// Point-in-time restores to commit timestamps drawn uniformly (from the
    /// seed) between the end of the first base backup and the last archived
    /// commit, each from the newest base backup that ended before its target.
    /// At most 1000. Default: 0.
    pub random_targets: u32,
    /// Also restore to the end of the archived WAL. Default: false.
    pub latest: bool,
    /// Which base backup the latest restore starts from; only with
    /// `latest: true`. Default: [`BackupChoice::Latest`].
    pub from: BackupChoice,
}

/// Which of the stored base backups to restore from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupChoice {
    /// The newest one (`backup-fetch LATEST`).
    #[default]
    Latest,
    /// The oldest one still stored, e.g. the oldest kept by retention.
    Oldest,
}

/// A check run on a restored server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The restored row count equals the count committed by the target.
    RowCount,
    /// The hash of the restored rows equals the hash of the committed rows.
    ContentHash,
    /// `amcheck` finds no corrupt index or heap page.
    Amcheck,
}

/// Recovery objectives. A drill that misses one fails.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objectives {
    /// Recovery point objective: the most commit time the latest restore may
    /// lose. Needs `restores.latest: true`.
    #[serde(deserialize_with = "optional_duration")]
    pub rpo: Option<Duration>,
    /// Recovery time objective: the longest any restore may take until the
    /// server accepts queries. Needs at least one restore.
    #[serde(deserialize_with = "optional_duration")]
    pub rto: Option<Duration>,
}

fn default_verify() -> Vec<Check> {
    vec![Check::RowCount, Check::ContentHash]
}

fn default_payload_bytes() -> u32 {
    100
}

/// A humantime duration (`500ms`, `20s`, `1m 30s`); a bare `0` is zero.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct HumanDuration;
    impl Visitor<'_> for HumanDuration {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as `20s`")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text.trim())
                .map_err(|e| E::custom(format_args!("invalid duration `{text}`: {e}")))
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            match n {
                0 => Ok(Duration::ZERO),
                _ => Err(E::custom(format_args!(
                    "invalid duration `{n}`: a unit is needed, e.g. `{n}s`"
                ))),
            }
        }
    }
    deserializer.deserialize_any(HumanDuration)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl Scenario {
    /// Reads and validates the scenario file at `path`; errors name `path`.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_owned(),
            source,
        })?;
        Scenario::from_str(&text, &path.display().to_string())
    }

    /// Parses and validates scenario `text`; `origin` names it in errors
    /// (usually the file's path).
    #[allow(clippy::should_implement_trait)] // FromStr has no room for `origin`
    pub fn from_str(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let options = serde_saphyr::options! { strict_booleans: true, with_snippet: false };
        let mut key = Vec::new();
        let scenario: Scenario =
            serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    key = error::key_path(e.path());
                    e.into_inner()
                })
            })
            .map_err(|e| error::from_yaml(&e, key, text, origin))?;
        validate::check(&scenario).map_err(|problem| problem.locate(text, origin))?;
        Ok(scenario)
    }
}

/// The `*.yaml` files directly in `dir`, sorted by file name.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let io = |source| ScenarioError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") && entry.file_type().map_err(io)?.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}
