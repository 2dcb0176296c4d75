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

pub use crate::backup::sabotage::Sabotage;
pub use error::{Location, ScenarioError};
pub use validate::DST_DURING_RUN;

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
    /// How the sabotaged engine misbehaves, e.g.
    /// `sabotage: { drop_every_nth_wal: 10 }`; required with
    /// [`Engine::PgdrillSabotaged`] and rejected otherwise.
    #[serde(default)]
    pub sabotage: Option<Sabotage>,
    /// Seed for every random choice of the drill (restore targets, payloads).
    /// When absent the runner picks one and reports it.
    pub seed: Option<u64>,
    /// The PostgreSQL server.
    pub postgres: Postgres,
    /// The conditions the drill runs under beyond its targets (time zone,
    /// WAL start position); each drawn from the seed where absent, so
    /// `--seed` replays them, and shown in the report.
    #[serde(default)]
    pub conditions: Conditions,
    /// Where backups go. Default: bucket `drill`, lz4.
    #[serde(default)]
    pub storage: Storage,
    /// The write load that runs from time 0 while the steps happen.
    pub workload: Workload,
    /// The timeline, in non-decreasing order of `at`. Default: none.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Draw the timeline and the storage fault restores meet from the
    /// seed (`steps` and `restores.storage_fault` are left out): the
    /// chaos drill. Local and containers environments. Default: false.
    #[serde(default)]
    pub chaos: bool,
    /// Restores done after the timeline. Default: none.
    #[serde(default)]
    pub restores: Restores,
    /// Checks run on every restored server, each listed once.
    /// Default: all of them, `[row_count, content_hash, visibility,
    /// amcheck]`.
    #[serde(default = "default_verify")]
    pub verify: Vec<Check>,
    /// Recovery objectives the drill must meet. Default: none.
    #[serde(default)]
    pub objectives: Objectives,
    /// Container images; `containers` environment only. Default: see
    /// [`Images`].
    #[serde(default)]
    pub images: Images,
}

/// Container images of the `containers` environment, as `name:tag`. Unset
/// ones default by `PGDRILL_IMAGES`: unset, `postgres:<postgres.version>`
/// and `minio/minio` (pulled from a registry); `local`, the images
/// `ci/images/build` makes (`pgdrill/postgres:15-local`,
/// `pgdrill/storage:local`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Images {
    /// A PostgreSQL image with the official image's interface
    /// (`docker-entrypoint.sh`, `POSTGRES_*` variables, PGDATA at
    /// `/var/lib/postgresql/data`) and `runuser`.
    pub postgres: Option<String>,
    /// An S3 server: a `minio` image, or any other image in which the
    /// harness runs `pgdrill s3-serve`.
    pub storage: Option<String>,
}

impl Images {
    pub(crate) fn is_set(&self) -> bool {
        self.postgres.is_some() || self.storage.is_some()
    }
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

/// What an environment can do beyond the core (storage, a primary,
/// restores, crashing the primary), asked for by steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Cutting the storage off for a while (`storage_outage`).
    StorageOutage,
    /// Delaying and throttling the storage's network link
    /// (`network_latency`).
    LinkShaping,
}

impl Capability {
    /// Which environments have it, for error messages.
    pub fn environments(self) -> Vec<Environment> {
        [
            Environment::Local,
            Environment::Containers,
            Environment::Kind,
        ]
        .into_iter()
        .filter(|e| e.supports(self))
        .collect()
    }
}

impl Environment {
    /// Whether drills in this environment can use `capability`; the
    /// environments' `storage_faults()` agree (checked when one starts).
    pub fn supports(self, capability: Capability) -> bool {
        match (self, capability) {
            (Environment::Containers, _) => true,
            (Environment::Kind | Environment::Local, Capability::StorageOutage) => true,
            (Environment::Kind | Environment::Local, Capability::LinkShaping) => false,
        }
    }

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

/// The conditions a drill runs under beyond its target times. Restores go
/// wrong at the edges of these, and a drill that always ran in UTC from
/// the start of the WAL never saw them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// The server's `timezone`; recovery targets reach the tool in it, as
    /// an operator copies them from psql (local time with its offset). An
    /// IANA name (`Asia/Kolkata`, `America/St_Johns`, `UTC`) or
    /// `dst_during_run`: a zone whose daylight-saving time starts during
    /// the workload (half its length after the drill starts). Default: drawn from the seed among UTC, zones
    /// east and west, half- and quarter-hour offsets and `dst_during_run`.
    pub timezone: Option<String>,
    /// The WAL segment the cluster writes first (`pg_resetwal -l` after
    /// `initdb`), e.g. `0000000100000000000000FE` to cross the 4 GiB
    /// boundary during the run, or `initdb` for where initdb leaves it.
    /// Local and containers environments (pgdrill's images; the official
    /// image's entrypoint cannot, which the drill detects). Default: drawn
    /// from the seed among `initdb`, just before the 4 GiB boundary and
    /// just before the 1 TiB one (local and containers), `initdb` in kind.
    pub start_segment: Option<String>,
    /// Whether the primary's `postgresql.conf` carries the recovery
    /// settings a point-in-time restore done by hand leaves behind
    /// (`Recovery_Target_Time` for a moment three quarters into the workload,
    /// `recovery_target_action` in an included file): a primary ignores
    /// them, every base backup carries them, and no restore may stop there.
    /// Default: drawn from the seed (one drill in three).
    pub leftover_recovery_settings: Option<bool>,
    /// Whether each restore after the first goes into the data directory
    /// of the one before (its server stopped), with `backup-fetch --force`,
    /// as an operator repeating a restore in place: the directory then
    /// holds another cluster's state (its WAL and timeline history in
    /// `pg_wal`, its commit log), which `--force` must clear. A retry after
    /// a storage fault goes into the failed attempt's directory. Local
    /// environment only. Default: drawn from the seed in the local
    /// environment (one drill in three), no elsewhere.
    pub restores_in_place: Option<bool>,
    /// Whether every backup-tool command runs as the seed's Kubernetes
    /// setup writes it: `envdir DIR wal-g VERB ...` (daemontools' `envdir`;
    /// `wal-g` is pgdrill's binary under that name), with
    /// `archive_command = 'envdir DIR wal-g wal-push %p'` and
    /// `restore_command = 'envdir DIR wal-g wal-fetch %f %p'`, and the
    /// settings directory written as hands leave one: trailing spaces and
    /// tabs after each value and a second line of notes, which `envdir`
    /// ignores. Local environment (needs `envdir`: `bash ci/setup` installs
    /// daemontools). Default: false.
    pub seed_commands: bool,
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
    /// Longest chain of delta backups on a full one
    /// (`WALG_DELTA_MAX_STEPS`); 0 makes every backup full. Default: 0.
    pub delta_max_steps: u32,
    /// Encryption of stored objects. Default: [`Encryption::None`].
    pub encryption: Encryption,
    /// How long the tool retries a failing storage request before giving
    /// up (`PGDRILL_S3_RETRY_TIMEOUT_SECS`, whole seconds). Default: the
    /// tool's (120s).
    #[serde(deserialize_with = "optional_duration")]
    pub retry_timeout: Option<Duration>,
    /// How many WAL segments `wal-fetch` fetches ahead of recovery
    /// (`WALG_PREFETCH`); 0 fetches each only when the server asks for it.
    /// Default: the tool's (8).
    pub prefetch: Option<u32>,
    /// The on-storage format the tool writes (`PGDRILL_STORAGE_FORMAT`):
    /// `pgdrill` or `walg` (WAL-G's bytes; restores then go through the
    /// WAL-G reader). Default: pgdrill.
    pub format: StorageFormat,
}

/// The on-storage format of backups and WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageFormat {
    /// pgdrill's objects, each carrying its BLAKE3.
    #[default]
    Pgdrill,
    /// WAL-G's.
    Walg,
}

impl StorageFormat {
    /// The name used in scenario files and reports, which is also the
    /// tool's `PGDRILL_STORAGE_FORMAT` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageFormat::Pgdrill => "pgdrill",
            StorageFormat::Walg => "walg",
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            bucket: "drill".to_owned(),
            compression: Compression::Lz4,
            delta_max_steps: 0,
            encryption: Encryption::None,
            retry_timeout: None,
            prefetch: None,
            format: StorageFormat::Pgdrill,
        }
    }
}

/// Encryption of stored objects: `none`, `{ pgp: { key_path, passphrase_path } }`
/// or `{ libsodium: { key_path } }`. Paths are written relative to the
/// scenario file's directory; once loaded they are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Encryption {
    /// Objects are stored unencrypted.
    #[default]
    None,
    /// OpenPGP (`WALG_PGP_KEY_PATH`).
    Pgp {
        /// An armored private key (restores decrypt with it).
        key_path: PathBuf,
        /// A file whose first line is the key's passphrase
        /// (`WALG_PGP_KEY_PASSPHRASE`); for a protected key only.
        passphrase_path: Option<PathBuf>,
    },
    /// A 32-byte symmetric key (`WALG_LIBSODIUM_KEY_PATH`, with
    /// `WALG_LIBSODIUM_KEY_TRANSFORM=hex`).
    Libsodium {
        /// A file holding the key as 64 hex digits.
        key_path: PathBuf,
    },
}

impl Encryption {
    /// The name used in scenario files and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::Pgp { .. } => "pgp",
            Encryption::Libsodium { .. } => "libsodium",
        }
    }

    /// The key files, each with its key name, as written.
    fn files_mut(&mut self) -> Vec<(&'static str, &mut PathBuf)> {
        match self {
            Encryption::None => Vec::new(),
            Encryption::Pgp {
                key_path,
                passphrase_path,
            } => std::iter::once(("key_path", key_path))
                .chain(passphrase_path.as_mut().map(|p| ("passphrase_path", p)))
                .collect(),
            Encryption::Libsodium { key_path } => vec![("key_path", key_path)],
        }
    }
}

/// Compression of backup objects.
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

impl Compression {
    /// The name used in scenario files, which is also the tool's
    /// `WALG_COMPRESSION_METHOD` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::None => "none",
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
    /// Updates, deletes and VACUUM besides the ledger's inserts (a second
    /// table, `pgdrill_items`); absent: ledger inserts only.
    #[serde(default)]
    pub mix: Option<WorkloadMix>,
}

/// `workload.mix`: what each transaction does besides its ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadMix {
    /// Percent of transactions that update one of the writer's items (half
    /// HOT, half changing indexed columns). Default: 0.
    #[serde(default)]
    pub updates: u8,
    /// Percent of transactions that delete one of the writer's items.
    /// Default: 0. The rest insert one.
    #[serde(default)]
    pub deletes: u8,
    /// `VACUUM (FREEZE)` of the workload tables this often, at least 1s.
    /// Default: never (autovacuum still runs, tuned to act often).
    #[serde(default, deserialize_with = "optional_duration")]
    pub vacuum_freeze_every: Option<Duration>,
    /// Items each writer has before the workload starts, at most 100000.
    /// Default: 1000.
    #[serde(default = "default_prefill")]
    pub prefill: u32,
    /// One DDL operation this often (relation rewrites, CREATE INDEX
    /// CONCURRENTLY, CREATE/DROP TABLE and DATABASE; see scenarios/README),
    /// at least 500ms. Default: none.
    #[serde(default, deserialize_with = "optional_duration")]
    pub ddl_every: Option<Duration>,
    /// Writer 0 updates its own 20000 items, at four times the workload's
    /// rate, while each backup runs, so every backup copies pages that
    /// change under it (and deltas must take them). Default: true.
    #[serde(default = "yes")]
    pub sweep_during_backups: bool,
}

fn default_prefill() -> u32 {
    1000
}

fn yes() -> bool {
    true
}

impl WorkloadMix {
    /// The workload's form of the mix.
    pub fn to_mix(self) -> crate::workload::Mix {
        crate::workload::Mix {
            updates: self.updates,
            deletes: self.deletes,
            vacuum_freeze_every: self.vacuum_freeze_every,
            prefill: self.prefill,
            ddl_every: self.ddl_every,
            sweep_during_backups: self.sweep_during_backups,
        }
    }
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
        /// Force a full backup even when `storage.delta_max_steps` allows a
        /// delta (`backup-push --full`). Default: false.
        #[serde(default)]
        full: bool,
        /// Start the backup at a WAL segment boundary: the writers paused
        /// (the sweeper too) and the WAL switched, so that the backup's
        /// checkpoint is the first record of a fresh segment; the writers
        /// go on once it is done, and the workload's end and the later
        /// steps move by as long as they were held. The report says where
        /// it started, and one more restore (`edge-N`) goes from this backup
        /// to a moment after its end and before the writers' first commit
        /// after it: recovery must stop at the first commit of the segment
        /// after the backup's. (Its
        /// stop is at a boundary in every backup: PostgreSQL switches the
        /// WAL when a backup stops.) Default: false.
        #[serde(default)]
        at_segment_start: bool,
    },
    /// Two full base backups at once (`backup-push --full` twice), as a
    /// cron run overlapping a manual one, with the writers paused meanwhile
    /// as on a quiet night, so both runs start in one WAL segment, the one
    /// their names come from (the workload's end and the later steps move
    /// by as long as the writers were held). Each must end with a backup of its own under
    /// a name of its own, or fail cleanly with nothing listed for it, and
    /// every backup listed must verify (`backup-verify`).
    OverlappingBackups {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// A full base backup (`backup-push --full`) with retention (`delete
    /// --confirm retain N`) run over and over while it runs, as a
    /// retention CronJob overlapping the backup CronJob. The backup-push
    /// must succeed and its backup verify; every delete must succeed and
    /// keep the `retain` newest backups complete before, plus the new one
    /// (the `retain` newest of all when the last delete saw it complete).
    DeleteDuringBackup {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// Base backups to keep, at least 1.
        retain: u32,
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
    /// Five WAL switches 30 ms apart (a bulk load's worth of segments for
    /// the archiver to catch up on), then, while the writers commit and
    /// the archiver works through them, `wal-verify integrity` and
    /// `backup-verify` of the newest backup, as a monitoring CronJob runs
    /// them on a busy primary. Stated outcome, checked: segments not yet
    /// stored are reported uploading or delayed, never lost (but those a
    /// `delete_wal` step deleted), the exit code matches the status, and
    /// backup-verify exits 0.
    VerifyDuringWrites {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Run `VACUUM (FREEZE)` on the workload's tables: sets visibility-map
    /// and freeze bits that the writers' updates and deletes then clear.
    VacuumFreeze {
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
    /// Apply retention: `delete --confirm retain N`, or with `full`
    /// `delete --confirm retain FULL N`.
    Delete {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// Base backups to keep, at least 1.
        retain: u32,
        /// Count full backups only: the newest `retain` full backups and
        /// every backup after the oldest of them are kept. Default: false.
        #[serde(default)]
        full: bool,
    },
    /// Delete the archived WAL segment that was being written at `at`,
    /// once the archiver has stored it: a silent hole in the archive.
    DeleteWal {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Stop the writers, restore a base backup to a quiet moment between
    /// the end of the first base backup and now, with archiving into the
    /// same storage (a new timeline), make that server the primary (the
    /// old one is stopped) and go on writing on it. The writers stop for
    /// as long as it takes, so the steps after it and the workload's end
    /// move by that much.
    PitrFailover {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// Promote a second server at once, as a confused failover or two
        /// operators do: restored from the same backup to the same target
        /// and archiving into the same storage, its archiving held until
        /// it is promoted, so both take the same new timeline and push
        /// files of the same names. Stated outcome, checked: the archive
        /// keeps the primary's timeline; the twin, let go once the primary
        /// has stored its first segment of it, stores only files identical
        /// to the primary's (the timeline history) and has its own
        /// segment refused; every restore after is exact. Local
        /// environment. Default: false.
        #[serde(default)]
        twin: bool,
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
    /// Make the storage unreachable for a while.
    StorageOutage {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// How long, more than 0s.
        #[serde(deserialize_with = "duration")]
        duration: Duration,
        /// How. Default: [`OutageMode::Disconnect`].
        #[serde(default)]
        mode: OutageMode,
    },
    /// Flip bytes in the stored WAL segment that was being written at `at`,
    /// once the archiver has stored it: restores that need it must fail
    /// on its checksum.
    StorageCorruption {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
    },
    /// Delay and/or throttle the storage's network link from here on (`tc`
    /// in the storage container's network namespace). Containers only.
    NetworkLatency {
        /// When.
        #[serde(deserialize_with = "duration")]
        at: Duration,
        /// Added one-way delay (`tc netem`; the kernel needs
        /// CONFIG_NET_SCH_NETEM). Default: none.
        #[serde(default, deserialize_with = "optional_duration")]
        delay: Option<Duration>,
        /// Bandwidth limit such as `20mbit` or `512kbit` (`tc htb`).
        /// Default: none. At least one of `delay` and `rate`.
        #[serde(default, deserialize_with = "optional_rate")]
        rate: Option<u64>,
    },
}

/// How a [`Step::StorageOutage`] cuts the storage off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// Disconnect the storage container from the network: connections are
    /// refused and names do not resolve (locally: every connection is
    /// closed unanswered).
    #[default]
    Disconnect,
    /// Freeze the storage container (`docker pause`; locally SIGSTOP):
    /// connections hang.
    Pause,
    /// Answer every request `503 Service Unavailable`. Local and
    /// containers environments (pgdrill's own S3 server).
    Errors,
}

impl OutageMode {
    /// The name used in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            OutageMode::Disconnect => "disconnect",
            OutageMode::Pause => "pause",
            OutageMode::Errors => "errors",
        }
    }

    /// Whether environment `env` can fail its storage this way.
    pub fn available_in(self, env: Environment) -> bool {
        env.supports(Capability::StorageOutage)
            && (self != OutageMode::Errors || env != Environment::Kind)
    }
}

/// A bandwidth such as `20mbit`, `512kbit` or `1gbit`, in kbit/s.
fn optional_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Rate;
    impl Visitor<'_> for Rate {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a rate such as `20mbit`")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_rate(text).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Err(E::custom(format_args!(
                "invalid rate `{n}`: a unit is needed, e.g. `{n}mbit`"
            )))
        }
    }
    d.deserialize_any(Rate).map(Some)
}

fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, factor) = [("gbit", 1_000_000), ("mbit", 1_000), ("kbit", 1)]
        .iter()
        .find_map(|(unit, f)| t.strip_suffix(unit).map(|d| (d.trim(), *f)))
        .ok_or_else(|| format!("invalid rate `{text}`: use kbit, mbit or gbit, e.g. `20mbit`"))?;
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n * factor),
        _ => Err(format!(
            "invalid rate `{text}`: a whole number above zero, e.g. `20mbit`"
        )),
    }
}

impl Step {
    /// Time since the workload started.
    pub fn at(&self) -> Duration {
        match *self {
            Step::BaseBackup { at, .. }
            | Step::OverlappingBackups { at }
            | Step::DeleteDuringBackup { at, .. }
            | Step::SwitchWal { at }
            | Step::Checkpoint { at }
            | Step::VerifyDuringWrites { at }
            | Step::VacuumFreeze { at }
            | Step::Pause { at, .. }
            | Step::Delete { at, .. }
            | Step::DeleteWal { at }
            | Step::PitrFailover { at, .. }
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
            Step::OverlappingBackups { .. } => "overlapping_backups",
            Step::DeleteDuringBackup { .. } => "delete_during_backup",
            Step::SwitchWal { .. } => "switch_wal",
            Step::Checkpoint { .. } => "checkpoint",
            Step::VerifyDuringWrites { .. } => "verify_during_writes",
            Step::VacuumFreeze { .. } => "vacuum_freeze",
            Step::Pause { .. } => "pause",
            Step::Delete { .. } => "delete",
            Step::DeleteWal { .. } => "delete_wal",
            Step::PitrFailover { .. } => "pitr_failover",
            Step::Disaster { .. } => "disaster",
            Step::StorageOutage { .. } => "storage_outage",
            Step::StorageCorruption { .. } => "storage_corruption",
            Step::NetworkLatency { .. } => "network_latency",
        }
    }

    /// The capability beyond the core that the step needs, if any.
    pub fn needs(&self) -> Option<Capability> {
        match self {
            Step::StorageOutage { .. } => Some(Capability::StorageOutage),
            Step::NetworkLatency { .. } => Some(Capability::LinkShaping),
            _ => None,
        }
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
    /// Point-in-time restores to quiet moments drawn (from the seed)
    /// between the end of the oldest base backup still stored and the last
    /// archived commit, in turn from each period between later backups,
    /// deleted WAL segments and failovers; each from the newest base backup
    /// that ended before its target. At most 1000. Default: 0.
    pub random_targets: u32,
    /// Also restore to the end of the archived WAL. Default: false.
    pub latest: bool,
    /// Which base backup the latest restore starts from; only with
    /// `latest: true`. Default: [`BackupChoice::Latest`].
    pub from: BackupChoice,
    /// A storage outage that every restore runs into. A restore under it
    /// must finish exactly or fail loudly; one that fails is retried once
    /// the storage is back, and the retry must be exact. Never may a
    /// restore come up short (recovery ended early by a storage error
    /// taken for the end of the archive). Local and containers
    /// environments. Default: none.
    pub storage_fault: Option<RestoreFault>,
    /// Kill `backup-fetch` (SIGKILL) of every restore mid-way, once it has
    /// written 100 files, as a lost node or an operator's Ctrl-C would;
    /// the restore is then retried as an operator would: `backup-fetch
    /// --force` into the same directory (restores go in place), and the
    /// retry must be exact. Local environment; not with `storage_fault`.
    /// Default: false.
    pub interrupt_fetch: bool,
}

/// A storage outage injected when a restore reaches a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreFault {
    /// The phase it starts at.
    pub during: RestorePhase,
    /// How the storage fails. Default: [`OutageMode::Disconnect`].
    #[serde(default)]
    pub mode: OutageMode,
    /// How long, more than 0s; longer than `storage.retry_timeout` makes
    /// the tool give up.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
}

/// A phase of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestorePhase {
    /// `backup-fetch` unpacking the base backup.
    BackupFetch,
    /// The restored server starting: `wal-fetch` brings the backup's own
    /// WAL, up to the point where the server is consistent.
    WalReplay,
    /// The restored server consistent (accepting connections) and
    /// replaying on toward its target: a storage error taken for the end
    /// of the archive here ends recovery early without an error.
    Consistent,
}

impl RestorePhase {
    /// The name used in scenario files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RestorePhase::BackupFetch => "backup_fetch",
            RestorePhase::WalReplay => "wal_replay",
            RestorePhase::Consistent => "consistent",
        }
    }
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
    /// Index-only scans see what sequential scans see in every table, and
    /// `pg_check_visible` finds no tuple the visibility map wrongly calls
    /// all-visible (a stale map makes index-only scans return deleted rows).
    Visibility,
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
    vec![
        Check::RowCount,
        Check::ContentHash,
        Check::Visibility,
        Check::Amcheck,
    ]
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
    /// Checks a scenario made in code (a chaos drill's drawn plan) by the
    /// rules a file must follow; the broken rule as text.
    pub fn check_drawn(&self) -> Result<(), String> {
        validate::check(self).map_err(|p| format!("{} ({})", p.message, p.hint))
    }

    /// The PostgreSQL extensions the drill uses: `pg_visibility` for the
    /// visibility check, `amcheck` for pg_amcheck, `dblink` for the DDL
    /// task (its transactions that must not commit).
    pub fn needed_extensions(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.verify.contains(&Check::Visibility) {
            names.push("pg_visibility");
        }
        if self.verify.contains(&Check::Amcheck) {
            names.push("amcheck");
        }
        if self
            .workload
            .mix
            .as_ref()
            .is_some_and(|m| m.ddl_every.is_some())
        {
            names.push("dblink");
        }
        names
    }

    /// Whether a step adds network delay (which needs `tc netem`).
    pub fn needs_netem(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::NetworkLatency { delay: Some(_), .. }))
    }

    /// Reads and validates the scenario file at `path`; errors name `path`.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_owned(),
            source,
        })?;
        Scenario::from_str(&text, &path.display().to_string())
    }

    /// Parses and validates scenario `text`; `origin` names it in errors
    /// (usually the file's path), and relative key file paths are resolved
    /// against its directory (the current one when it has none).
    #[allow(clippy::should_implement_trait)] // FromStr has no room for `origin`
    pub fn from_str(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let mut key = Vec::new();
        let mut scenario: Scenario =
            serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    key = error::key_path(e.path());
                    e.into_inner()
                })
            })
            .map_err(|e| error::from_yaml(&e, key, text, origin))?;
        let base = Path::new(origin).parent().unwrap_or(Path::new(""));
        validate::check(&scenario)
            .and_then(|()| validate::key_files(&mut scenario.storage.encryption, base))
            .map_err(|problem| problem.locate(text, origin))?;
        Ok(scenario)
    }
}

/// How scenario YAML is read: YAML 1.2 booleans only (`true`/`false`, so a
/// stray `yes` is an error, not a boolean), no source snippets in errors.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true, with_snippet: false }
}

/// The `*.yaml` files directly in `dir`, sorted by file name.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let io = |source| ScenarioError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "yaml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: t\npostgres: { version: 15 }\nworkload: { writers: 2, rate_per_second: 50, duration: 20s }\n";

    fn parse(extra: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_str(&format!("{MINIMAL}{extra}"), "t.yaml")
    }

    fn error(extra: &str) -> String {
        parse(extra).expect_err(extra).to_string()
    }

    #[test]
    fn minimal_scenario_gets_the_documented_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.description, "");
        assert_eq!(s.environment, Environment::Local);
        assert_eq!(s.engine, Engine::Pgdrill);
        assert_eq!((s.sabotage, s.seed), (None, None));
        assert_eq!(s.postgres.settings.len(), 0);
        assert_eq!(s.postgres.wal_segment_size_mb, None);
        assert_eq!(s.storage, Storage::default());
        assert_eq!(s.storage.bucket, "drill");
        assert_eq!(s.workload.duration, Duration::from_secs(20));
        assert_eq!(s.workload.payload_bytes, 100);
        assert!(s.steps.is_empty());
        assert_eq!(s.restores, Restores::default());
        assert_eq!(s.restores.from, BackupChoice::Latest);
        assert_eq!(
            s.verify,
            [
                Check::RowCount,
                Check::ContentHash,
                Check::Visibility,
                Check::Amcheck
            ]
        );
        assert_eq!(s.objectives, Objectives::default());
    }

    #[test]
    fn full_scenario_parses() {
        let s = Scenario::from_str(
            r#"
name: quick-pitr
description: base backup, steady writes, three random point-in-time restores
environment: containers
engine: pgdrill-sabotaged
sabotage: { drop_every_nth_wal: 10 }
seed: 42
postgres:
  version: 15
  settings: { archive_timeout: 1s, track_commit_timestamp: "on", max_connections: 50, pg_stat_statements.max: 100 }
  wal_segment_size_mb: 1
storage: { bucket: drill.backups-1, compression: none }
workload: { writers: 4, rate_per_second: 200, duration: 1m 30s, payload_bytes: 0 }
steps:
  - { at: 0, action: base_backup }
  - { at: 500ms, action: switch_wal }
  - { at: 12s, action: checkpoint }
  - { at: 12s, action: pause, duration: 2s }
  - { at: 20s, action: delete, retain: 2 }
  - { at: 21s, action: storage_outage, duration: 5s }
  - { at: 30s, action: storage_corruption }
  - { at: 31s, action: network_latency, delay: 50ms }
  - { at: 2m, action: disaster, kind: kill_primary }
restores: { random_targets: 3, latest: true, from: oldest }
verify: [row_count, content_hash, amcheck]
objectives: { rpo: 5s, rto: 60s }
"#,
            "full.yaml",
        )
        .unwrap();
        assert_eq!(s.sabotage, Some(Sabotage::DropEveryNthWal(10)));
        assert_eq!(s.seed, Some(42));
        assert_eq!(s.postgres.settings["track_commit_timestamp"], "on");
        assert_eq!(s.postgres.settings["max_connections"], "50");
        assert_eq!(s.storage.compression, Compression::None);
        assert_eq!(s.workload.duration, Duration::from_secs(90));
        let ats: Vec<_> = s.steps.iter().map(|step| step.at().as_millis()).collect();
        assert_eq!(
            ats,
            [0, 500, 12_000, 12_000, 20_000, 21_000, 30_000, 31_000, 120_000]
        );
        assert_eq!(
            s.steps[4],
            Step::Delete {
                at: Duration::from_secs(20),
                retain: 2,
                full: false
            }
        );
        assert_eq!(s.steps[8].action(), "disaster");
        assert_eq!(s.steps[5].needs(), Some(Capability::StorageOutage));
        assert!(!Environment::Local.supports(Capability::LinkShaping));
        assert!(Environment::Containers.supports(Capability::StorageOutage));
        assert_eq!(s.steps[4].needs(), None);
        assert_eq!(s.restores.from, BackupChoice::Oldest);
        assert_eq!(s.objectives.rpo, Some(Duration::from_secs(5)));
    }

    #[test]
    fn shape_errors_carry_location_key_and_hint() {
        let e = error("seed: 1\nseed: 2\n");
        assert!(
            e.starts_with("t.yaml:5:1: duplicate mapping key `seed`"),
            "{e}"
        );
        let e = error("restores: { latest: yes }\n");
        assert!(e.starts_with("t.yaml:4:21: restores.latest: "), "{e}");
        assert!(e.contains("hint: write `true` or `false`"), "{e}");
        let e = error("steps:\n  - { at: 5, action: base_backup }\n");
        assert!(
            e.contains("t.yaml:5:5: steps[0]: invalid duration `5`: a unit is needed, e.g. `5s`"),
            "{e}"
        );
        let e = error("steps:\n  - { at: 5s, action: base_backup, retain: 2 }\n");
        assert!(
            e.contains("unknown field `retain`, expected one of at"),
            "{e}"
        );
        let e = error("sabotage: { drop_every_nth_hour: 1 }\n");
        assert!(
            e.contains("sabotage: unknown variant `drop_every_nth_hour`"),
            "{e}"
        );
        let e = Scenario::from_str("postgres: { version: 15 }\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.yaml:1:1: missing field `name`\n  hint: add the key"),
            "{e}"
        );
        let e = error("postgres: { version: 15 }\n");
        assert!(e.contains("duplicate mapping key"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_node() {
        for (extra, expected) in [
            ("seed: 1\nrestores: { latest: true }\n", "t.yaml:5:11: restores: restores need at least one base_backup"),
            ("steps: [{ at: 0s, action: disaster, kind: kill_primary }, { at: 1s, action: base_backup }]\n", "t.yaml:4:59: steps[1]: `base_backup` comes after the disaster"),
            ("steps: [{ at: 0s, action: delete, retain: 0 }]\n", "t.yaml:4:43: steps[0].retain: `delete` needs a `retain` above zero"),
            ("engine: pgdrill-sabotaged\n", "t.yaml:4:9: engine: engine `pgdrill-sabotaged` needs a `sabotage` entry"),
            ("sabotage: { corrupt_every_nth_wal: 3 }\n", "t.yaml:4:11: sabotage: `sabotage` only applies"),
            ("engine: pgdrill-sabotaged\nsabotage: { corrupt_every_nth_wal: 0 }\n", "sabotage: the sabotage interval must be at least 1"),
            ("storage: { bucket: 10.0.0.1 }\n", "it must not look like an IP address"),
            ("storage: { bucket: a..b }\n", "it must not contain `..`"),
            ("storage: { bucket: -ab }\n", "it must start and end with a letter or digit"),
            ("storage: { bucket: ab }\n", "it must be 3 to 63 characters long"),
            ("restores: { from: oldest }\n", "restores.from: `from` picks the backup of the latest restore"),
            ("objectives: { rpo: 1s }\n", "objectives.rpo: rpo is measured on the latest restore"),
            ("objectives: { rto: 1s }\n", "objectives.rto: rto is measured on restores"),
            ("verify: [amcheck, row_count, amcheck]\n", "t.yaml:4:30: verify[2]: this check is already listed"),
            ("conditions: { timezone: Mars/Olympus_Mons }\n", "t.yaml:4:25: conditions.timezone: time zone \"Mars/Olympus_Mons\" is neither a zone in the system's zoneinfo nor a POSIX rule"),
            ("conditions: { start_segment: 000000020000000000000010 }\n", "conditions.start_segment: `000000020000000000000010` is not a segment of timeline 1"),
            ("conditions: { start_segment: 000000010000000000000100 }\n", "is not a segment of timeline 1 after 000000010000000000000001 for 16 MiB segments"),
            ("environment: kind\nconditions: { start_segment: 0000000100000000000000FE }\n", "`start_segment` applies to the local and containers environments only"),
            ("environment: containers\nconditions: { restores_in_place: true }\n", "`restores_in_place` applies to the local environment only"),
            ("environment: kind\nconditions: { seed_commands: true }\n", "conditions.seed_commands: `seed_commands` applies to the local environment only"),
            ("environment: containers\nsteps: [{ at: 0s, action: base_backup }, { at: 5s, action: pitr_failover, twin: true }]\n", "steps[1].twin: a `pitr_failover` with a twin is available in the local environment only"),
            ("environment: containers\nrestores: { interrupt_fetch: true }\n", "restores.interrupt_fetch: `interrupt_fetch` is available in the local environment only"),
            ("restores: { interrupt_fetch: true, storage_fault: { during: consistent, duration: 5s } }\n", "`interrupt_fetch` and `storage_fault` cannot be combined"),
            ("conditions: { restores_in_place: false }\nrestores: { interrupt_fetch: true }\n", "conditions.restores_in_place: an interrupted restore is retried in its own directory"),
            ("chaos: true\nrestores: { interrupt_fetch: true }\n", "restores.interrupt_fetch: a chaos drill draws the faults its restores meet from the seed"),
            ("steps: [{ at: 0s, action: delete_during_backup, retain: 0 }]\n", "steps[0].retain: `delete_during_backup` needs a `retain` above zero"),
            ("restores: { storage_fault: { during: consistent, duration: 0s } }\n", "restores.storage_fault.duration: `storage_fault` needs a `duration` above zero"),
            ("environment: kind\nrestores: { storage_fault: { during: wal_replay, duration: 5s } }\n", "restores.storage_fault: `storage_fault` during restores is not available in environment `kind`"),
            ("chaos: true\nsteps: [{ at: 0s, action: base_backup }]\n", "steps: a chaos drill draws its steps from the seed"),
            ("environment: kind\nchaos: true\n", "chaos: `chaos` is not available in environment `kind`"),
            ("chaos: true\nrestores: { storage_fault: { during: consistent, duration: 5s } }\n", "restores.storage_fault: a chaos drill draws the storage fault its restores meet from the seed"),
            ("restores: { storage_fault: { during: replay, duration: 5s } }\n", "restores.storage_fault.during: unknown variant `replay`, expected one of backup_fetch, wal_replay, consistent"),
        ] {
            let e = error(extra);
            assert!(e.contains(expected), "{extra}: {e}");
        }
        let e = Scenario::from_str(&MINIMAL.replace("name: t", "name: Quick_PITR"), "t.yaml")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.yaml:1:7: name: invalid scenario name `Quick_PITR`"),
            "{e}"
        );
        for (postgres, expected) in [
            ("{ version: 11 }", "t.yaml:2:22: postgres.version: unsupported postgres version 11"),
            ("{ version: 15, wal_segment_size_mb: 24 }", "postgres.wal_segment_size_mb: invalid wal segment size of 24 MiB"),
            ("{ version: 15, settings: { archive_command: /bin/true } }", "t.yaml:2:55: postgres.settings.archive_command: setting `archive_command` is managed"),
            ("{ version: 15, settings: { Recovery_Target_Time: x } }", "setting `Recovery_Target_Time` is managed"),
            ("{ version: 15, settings: { TimeZone: UTC } }", "setting `TimeZone` is managed"),
            ("{ version: 15, settings: { a.b.c: 1 } }", "invalid setting name `a.b.c`"),
            ("{ version: 15, settings: { \"work mem\": 1 } }", "invalid setting name `work mem`"),
        ] {
            let e = Scenario::from_str(&MINIMAL.replace("{ version: 15 }", postgres), "t.yaml").unwrap_err();
            assert!(e.to_string().contains(expected), "{postgres}: {e}");
        }
        for (workload, expected) in [
            (
                "writers: 0, rate_per_second: 50, duration: 20s",
                "workload.writers: 0 writers is out of range",
            ),
            (
                "writers: 2, rate_per_second: 0, duration: 20s",
                "rate_per_second must be at least 1",
            ),
            (
                "writers: 2, rate_per_second: 5, duration: 0s",
                "workload duration 0s is out of range",
            ),
            (
                "writers: 2, rate_per_second: 5, duration: 2days",
                "workload duration 2days is out of range",
            ),
            (
                "writers: 2, rate_per_second: 5, duration: 1s, payload_bytes: 2000000",
                "payload_bytes 2000000 is too large",
            ),
        ] {
            let text = MINIMAL.replace("writers: 2, rate_per_second: 50, duration: 20s", workload);
            let e = Scenario::from_str(&text, "t.yaml").unwrap_err();
            assert!(e.to_string().contains(expected), "{workload}: {e}");
        }
    }

    #[test]
    fn disaster_may_follow_the_workload_other_steps_may_not() {
        let s = parse("steps: [{ at: 0s, action: base_backup }, { at: 1h, action: disaster, kind: kill_primary }]\n");
        assert_eq!(s.unwrap().steps[1].at(), Duration::from_secs(3600));
        let e = error("steps: [{ at: 21s, action: switch_wal }]\n");
        assert!(
            e.contains("steps[0].at: `switch_wal` at 21s is after the workload ends at 20s"),
            "{e}"
        );
        assert!(parse(
            "steps: [{ at: 0s, action: base_backup }]\nrestores: { random_targets: 1 }\n"
        )
        .is_ok());
        let e =
            error("steps: [{ at: 20s, action: base_backup }]\nrestores: { random_targets: 1 }\n");
        assert!(e.contains("restores.random_targets: random targets need a base backup before the workload ends"), "{e}");
    }

    #[test]
    fn container_faults_need_the_containers_environment() {
        // Corrupting a stored object goes through the S3 API: anywhere.
        let corrupt = "steps: [{ at: 1s, action: storage_corruption }]\n";
        assert!(parse(&format!("environment: kind\n{corrupt}")).is_ok());
        // Cutting the storage off: everywhere, with 503 errors where the
        // storage is pgdrill's own server (not kind); shaping its link:
        // containers only.
        let outage = "steps: [{ at: 1s, action: storage_outage, duration: 1s }]\n";
        assert!(parse(&format!("environment: kind\n{outage}")).is_ok());
        assert!(parse(&format!("environment: local\n{outage}")).is_ok());
        let errors = "steps: [{ at: 1s, action: storage_outage, duration: 1s, mode: errors }]\n";
        assert!(parse(&format!("environment: local\n{errors}")).is_ok());
        assert!(parse(&format!("environment: containers\n{errors}")).is_ok());
        let e = error(&format!("environment: kind\n{errors}"));
        assert!(
            e.contains("steps[0].mode: outage mode `errors` is only available in environment `local` or `containers`, not `kind`"),
            "{e}"
        );
        let latency = "steps: [{ at: 1s, action: network_latency, delay: 10ms }]\n";
        assert!(parse(&format!("environment: containers\n{latency}")).is_ok());
        let e = error(&format!("environment: kind\n{latency}"));
        assert!(
            e.contains("is only available in environment `containers`, not `kind`"),
            "{e}"
        );
        let e = error(
            "environment: containers\nsteps: [{ at: 1s, action: network_latency, delay: 0s }]\n",
        );
        assert!(
            e.contains("steps[0].delay: `network_latency` needs a `delay` above zero"),
            "{e}"
        );
        let e = error("environment: containers\nsteps: [{ at: 1s, action: network_latency }]\n");
        assert!(e.contains("needs a `delay` or a `rate`"), "{e}");
        let e = error(
            "environment: containers\nsteps: [{ at: 1s, action: network_latency, rate: 5 }]\n",
        );
        assert!(e.contains("invalid rate `5`: a unit is needed"), "{e}");
        let s = parse(
            "environment: containers\nsteps: [{ at: 1s, action: network_latency, rate: 20mbit }, { at: 2s, action: storage_outage, duration: 3s, mode: pause }]\n",
        )
        .unwrap();
        assert_eq!(
            s.steps[0],
            Step::NetworkLatency {
                at: Duration::from_secs(1),
                delay: None,
                rate: Some(20_000)
            }
        );
        assert!(!s.needs_netem());
        assert!(matches!(
            s.steps[1],
            Step::StorageOutage {
                mode: OutageMode::Pause,
                ..
            }
        ));
    }

    #[test]
    fn rates_parse_in_kbit() {
        assert_eq!(parse_rate("512kbit"), Ok(512));
        assert_eq!(parse_rate(" 20Mbit "), Ok(20_000));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000));
        assert!(parse_rate("0mbit").is_err());
        assert!(parse_rate("20mb").is_err());
    }

    #[test]
    fn images_are_for_the_containers_environment() {
        let s = parse("environment: containers\nimages: { postgres: \"postgres:16\" }\n").unwrap();
        assert_eq!(s.images.postgres.as_deref(), Some("postgres:16"));
        let e = error("images: { storage: minio/minio }\n");
        assert!(
            e.contains("images: `images` apply to `environment: containers` and `kind` only"),
            "{e}"
        );
    }

    #[test]
    fn new_steps_parse_with_their_rules() {
        let s = parse(
            "steps:\n  - { at: 0s, action: base_backup }\n  - { at: 5s, action: delete_wal }\n  - { at: 8s, action: pitr_failover }\n  - { at: 9s, action: delete, retain: 1, full: true }\n",
        )
        .unwrap();
        let actions: Vec<_> = s.steps.iter().map(Step::action).collect();
        assert_eq!(
            actions,
            ["base_backup", "delete_wal", "pitr_failover", "delete"]
        );
        assert_eq!(s.steps[1].needs(), None);
        assert!(matches!(
            s.steps[3],
            Step::Delete {
                retain: 1,
                full: true,
                ..
            }
        ));
        let e =
            error("steps: [{ at: 0s, action: pitr_failover }, { at: 0s, action: base_backup }]\n");
        assert!(
            e.contains(
                "t.yaml:4:9: steps[0]: `pitr_failover` at 0s needs a base_backup step before it"
            ),
            "{e}"
        );
        // delete_wal works wherever the harness reaches the storage.
        assert!(
            parse("environment: containers\nsteps: [{ at: 1s, action: delete_wal }]\n").is_ok()
        );
    }

    #[test]
    fn encryption_keys_are_files_next_to_the_scenario() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        for f in ["key.asc", "pass", "sodium.hex"] {
            std::fs::write(dir.path().join("keys").join(f), "x\n").unwrap();
        }
        let origin = dir.path().join("s.yaml");
        let load = |storage: &str| {
            Scenario::from_str(
                &format!("{MINIMAL}storage: {storage}\n"),
                origin.to_str().unwrap(),
            )
        };
        assert_eq!(
            load("{ encryption: none }").unwrap().storage.encryption,
            Encryption::None
        );
        let s =
            load("{ encryption: { pgp: { key_path: keys/key.asc, passphrase_path: keys/pass } } }")
                .unwrap();
        assert_eq!(s.storage.encryption.as_str(), "pgp");
        assert_eq!(
            s.storage.encryption,
            Encryption::Pgp {
                key_path: dir.path().join("keys/key.asc"),
                passphrase_path: Some(dir.path().join("keys/pass")),
            }
        );
        let s = load("{ encryption: { libsodium: { key_path: ./keys/sodium.hex } } }").unwrap();
        assert_eq!(s.storage.encryption.as_str(), "libsodium");
        let e =
            load("{ encryption: { pgp: { key_path: keys/key.asc, passphrase_path: keys/nope } } }")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains(":4:74: storage.encryption.pgp.passphrase_path: cannot read `keys/nope` ("),
            "{e}"
        );
        assert!(
            e.contains("hint: key files are read relative to the scenario file's directory"),
            "{e}"
        );
        let e = load("{ encryption: { libsodium: { key_path: keys } } }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.encryption.libsodium.key_path: cannot read `keys`"),
            "{e}"
        );
        let e = load("{ encryption: { pgp: { key: k } } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `key`"), "{e}");
        let e = load("{ encryption: gpg }").unwrap_err().to_string();
        assert!(e.contains("unknown variant `gpg`"), "{e}");
    }

    #[test]
    fn storage_format_is_pgdrill_unless_walg_is_asked() {
        let parse = |storage: &str| {
            Scenario::from_str(
                &format!("name: f\nenvironment: local\npostgres: {{ version: 15 }}\nstorage: {storage}\nworkload: {{ writers: 1, rate_per_second: 1, duration: 1s }}\n"),
                "f.yaml",
            )
        };
        assert_eq!(parse("{}").unwrap().storage.format, StorageFormat::Pgdrill);
        let s = parse("{ format: walg }").unwrap();
        assert_eq!(s.storage.format.as_str(), "walg");
        let e = parse("{ format: wal-g }").unwrap_err().to_string();
        assert!(
            e.contains("f.yaml:4:")
                && e.contains("unknown variant `wal-g`")
                && e.contains("pgdrill")
                && e.contains("walg"),
            "{e}"
        );
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "~",
            "[]",
            "42",
            "name: [",
            "a: b: c",
            "\u{0}\u{7}",
            "*x",
            "&a [*a]",
            "name: {{{{{{{{{{",
            "- - - - -",
            &"[".repeat(1000),
            "name: x\n---\nname: y\n",
        ] {
            let e = Scenario::from_str(text, "odd.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("odd.yaml"), "{text:?}: {e}");
            assert!(e.contains("hint: "), "{text:?}: {e}");
        }
        let e = error("\"bogus\\e[31m\": 1\n");
        assert!(e.contains("unknown field `bogus\\u{1b}[31m`"), "{e}");
        assert!(!e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn location_without_a_position_shows_the_origin_alone() {
        let at = |line, column| {
            Location {
                origin: "x.yaml".into(),
                line,
                column,
            }
            .to_string()
        };
        assert_eq!(
            (at(0, 0), at(3, 7)),
            ("x.yaml".to_owned(), "x.yaml:3:7".to_owned())
        );
    }

    #[test]
    fn discover_lists_yaml_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yaml", "a.yaml", "c.yml", "d.yaml.bak", "README.md"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("e.yaml")).unwrap();
        let names: Vec<_> = discover(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yaml"]);
        let missing = dir.path().join("missing");
        assert!(discover(&missing)
            .unwrap_err()
            .to_string()
            .starts_with("cannot read "));
        assert!(matches!(
            Scenario::load(&missing),
            Err(ScenarioError::Io { .. })
        ));
    }
}
