//! Semantic checks: the rules a well-formed scenario must also follow.

use std::path::Path;
use std::time::Duration;

use humantime::format_duration;

use super::error::{Problem, Seg};
use super::{BackupChoice, Encryption, Engine, Environment, OutageMode, Sabotage, Scenario, Step};

/// Returns a [`Problem`] at key path `[segs]` with `hint` and a formatted message.
macro_rules! bail {
    ([$($seg:expr),*], $hint:expr, $($message:tt)+) => {
        return Err(Problem {
            path: vec![$(Seg::from($seg)),*],
            message: format!($($message)+),
            hint: $hint.into(),
        })
    };
}

/// [`bail!`] unless `ok`.
macro_rules! ensure {
    ($ok:expr, $($rest:tt)+) => {
        if !$ok {
            bail!($($rest)+);
        }
    };
}

/// `conditions.timezone` for a zone whose daylight-saving time starts
/// halfway through the workload.
pub const DST_DURING_RUN: &str = "dst_during_run";

/// Settings the harness writes itself: archiving, recovery, where the server
/// listens and keeps its files, its time zone (`conditions.timezone`).
const OWNED_SETTINGS: [&str; 13] = [
    "timezone",
    "archive_mode",
    "archive_command",
    "archive_library",
    "archive_cleanup_command",
    "restore_command",
    "recovery_end_command",
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
];

/// The first rule `scenario` breaks, if any.
pub(super) fn check(scenario: &Scenario) -> Result<(), Problem> {
    let name = &scenario.name;
    ensure!(
        is_scenario_name(name),
        ["name"],
        "use 1-64 lowercase letters, digits and `-`, starting with a letter or digit, e.g. `quick-pitr`",
        "invalid scenario name `{name}`"
    );
    engine(scenario)?;
    postgres(scenario)?;
    if let Some(reason) = bucket_problem(&scenario.storage.bucket) {
        bail!(
            ["storage", "bucket"],
            "S3 bucket names are 3-63 lowercase letters, digits, `-` and `.`, e.g. `drill`",
            "invalid bucket name `{}`: {reason}",
            scenario.storage.bucket
        );
    }
    ensure!(
        !scenario.images.is_set() || scenario.environment != Environment::Local,
        ["images"],
        "remove `images`, or set `environment: containers` (or `kind`)",
        "`images` apply to `environment: containers` and `kind` only"
    );
    if let Some(t) = scenario.storage.retry_timeout {
        ensure!(
            t >= Duration::from_secs(1),
            ["storage", "retry_timeout"],
            "use whole seconds, e.g. `10s`",
            "`retry_timeout` must be at least 1s"
        );
    }
    conditions(scenario)?;
    workload(scenario)?;
    steps(scenario)?;
    chaos(scenario)?;
    restores(scenario)?;
    objectives(scenario)?;
    for (i, check) in scenario.verify.iter().enumerate() {
        ensure!(
            !scenario.verify[..i].contains(check),
            ["verify", i],
            "list each check once",
            "this check is already listed"
        );
    }
    Ok(())
}

fn engine(s: &Scenario) -> Result<(), Problem> {
    match (s.engine, s.sabotage) {
        (Engine::Pgdrill, Some(_)) => bail!(
            ["sabotage"],
            "remove `sabotage`, or set `engine: pgdrill-sabotaged`",
            "`sabotage` only applies to engine `pgdrill-sabotaged`"
        ),
        (Engine::PgdrillSabotaged, None) => bail!(
            ["engine"],
            "add e.g. `sabotage: { drop_every_nth_wal: 10 }`",
            "engine `pgdrill-sabotaged` needs a `sabotage` entry"
        ),
        (Engine::PgdrillSabotaged, Some(_)) if !crate::backup::sabotage::SABOTAGE_BUILT_IN => {
            bail!(
                ["engine"],
                "run it from a test build (`cargo test`, or build with `--features sabotage`)",
                "this pgdrill is built for use and cannot sabotage itself"
            )
        }
        (
            _,
            Some(
                Sabotage::DropEveryNthWal(n)
                | Sabotage::CorruptEveryNthWal(n)
                | Sabotage::AlterEveryNthWal(n)
                | Sabotage::TruncateEveryNthWal(n)
                | Sabotage::HideEveryNthWal(n),
            ),
        ) => ensure!(
            n >= 1,
            ["sabotage"],
            "1 sabotages every WAL segment, 10 every tenth",
            "the sabotage interval must be at least 1"
        ),
        (_, Some(_)) | (Engine::Pgdrill, None) => {}
    }
    Ok(())
}

fn postgres(s: &Scenario) -> Result<(), Problem> {
    let pg = &s.postgres;
    ensure!(
        (12..=18).contains(&pg.version),
        ["postgres", "version"],
        "pgdrill drills PostgreSQL 12 to 18",
        "unsupported postgres version {}",
        pg.version
    );
    for name in pg.settings.keys() {
        ensure!(
            is_setting_name(name),
            ["postgres", "settings", name.as_str()],
            "setting names are letters, digits and `_`, with at most one `.` (e.g. `pg_stat_statements.max`)",
            "invalid setting name `{name}`"
        );
        let lower = name.to_ascii_lowercase();
        ensure!(
            !OWNED_SETTINGS.contains(&lower.as_str()) && !lower.starts_with("recovery_target"),
            ["postgres", "settings", name.as_str()],
            "remove it: pgdrill sets it to archive WAL and to restore (the time zone through `conditions.timezone`)",
            "setting `{name}` is managed by pgdrill"
        );
    }
    if let Some(mb) = pg.wal_segment_size_mb {
        ensure!(
            mb.is_power_of_two() && mb <= 1024,
            ["postgres", "wal_segment_size_mb"],
            "initdb takes a power of two from 1 to 1024 (MiB), e.g. 16",
            "invalid wal segment size of {mb} MiB"
        );
    }
    Ok(())
}

fn conditions(s: &Scenario) -> Result<(), Problem> {
    let c = &s.conditions;
    if let Some(zone) = c.timezone.as_deref().filter(|z| *z != DST_DURING_RUN) {
        if let Err(why) = crate::env::zone::ServerZone::new(zone) {
            bail!(
                ["conditions", "timezone"],
                format!("use an IANA zone name such as `Asia/Kolkata` or `America/St_Johns`, or `{DST_DURING_RUN}`"),
                "{why}"
            );
        }
    }
    ensure!(
        !c.seed_commands || s.environment == Environment::Local,
        ["conditions", "seed_commands"],
        "remove it, or set `environment: local`",
        "`seed_commands` applies to the local environment only"
    );
    ensure!(
        c.restores_in_place != Some(true) || s.environment == Environment::Local,
        ["conditions", "restores_in_place"],
        "remove it, or set `environment: local`",
        "`restores_in_place` applies to the local environment only"
    );
    if let Some(segment) = c.start_segment.as_deref().filter(|s| *s != "initdb") {
        ensure!(
            s.environment != Environment::Kind,
            ["conditions", "start_segment"],
            "remove it, or set `environment: local` or `containers`",
            "`start_segment` applies to the local and containers environments only"
        );
        let seg_size = u64::from(s.postgres.wal_segment_size_mb.unwrap_or(16)) << 20;
        let parsed = crate::backup::layout::Segment::parse(segment, seg_size);
        ensure!(
            parsed.is_some_and(|p| p.timeline == 1 && p.segno >= 2),
            ["conditions", "start_segment"],
            "a segment name of timeline 1 after initdb's first, e.g. `0000000100000000000000FE` (16 MiB segments), or `initdb`",
            "`{segment}` is not a segment of timeline 1 after 000000010000000000000001 for {} MiB segments",
            seg_size >> 20
        );
    }
    Ok(())
}

fn workload(s: &Scenario) -> Result<(), Problem> {
    let w = &s.workload;
    ensure!(
        (1..=256).contains(&w.writers),
        ["workload", "writers"],
        "use 1 to 256 writers",
        "{} writers is out of range",
        w.writers
    );
    ensure!(
        w.rate_per_second >= 1,
        ["workload", "rate_per_second"],
        "the rate is commits per second across all writers; use at least 1",
        "rate_per_second must be at least 1"
    );
    ensure!(
        !w.duration.is_zero() && w.duration <= Duration::from_secs(24 * 3600),
        ["workload", "duration"],
        "use a duration above 0s and at most 24h, e.g. `30s`",
        "workload duration {} is out of range",
        format_duration(w.duration)
    );
    ensure!(
        w.payload_bytes <= 1 << 20,
        ["workload", "payload_bytes"],
        "use at most 1048576 bytes (1 MiB) per row",
        "payload_bytes {} is too large",
        w.payload_bytes
    );
    if let Some(mix) = &w.mix {
        ensure!(
            u32::from(mix.updates) + u32::from(mix.deletes) <= 90,
            ["workload", "mix"],
            "updates and deletes are percent of transactions; leave at least 10 for inserts",
            "updates {} + deletes {} is more than 90 percent",
            mix.updates,
            mix.deletes
        );
        ensure!(
            mix.prefill <= 100_000,
            ["workload", "mix", "prefill"],
            "use at most 100000 items per writer",
            "prefill {} is too large",
            mix.prefill
        );
        if let Some(every) = mix.vacuum_freeze_every {
            ensure!(
                every >= Duration::from_secs(1),
                ["workload", "mix", "vacuum_freeze_every"],
                "use at least 1s, e.g. `3s`",
                "vacuum_freeze_every {} is too short",
                format_duration(every)
            );
        }
        if let Some(every) = mix.ddl_every {
            ensure!(
                every >= Duration::from_millis(500),
                ["workload", "mix", "ddl_every"],
                "use at least 500ms, e.g. `1s`",
                "ddl_every {} is too short",
                format_duration(every)
            );
            // Its record and its objects would have to carry over to the
            // new primary, from a target that may fall inside an operation
            // (not built yet).
            ensure!(
                !s.steps
                    .iter()
                    .any(|st| matches!(st, Step::PitrFailover { .. })),
                ["workload", "mix", "ddl_every"],
                "run DDL in a scenario without a pitr_failover step",
                "ddl_every cannot be combined with a pitr_failover step yet"
            );
        }
    }
    Ok(())
}

fn steps(s: &Scenario) -> Result<(), Problem> {
    let end = s.workload.duration;
    let mut previous: Option<&Step> = None;
    for (i, step) in s.steps.iter().enumerate() {
        let (at, action) = (step.at(), step.action());
        if let Some(previous) = previous {
            ensure!(
                !matches!(previous, Step::Disaster { .. }),
                ["steps", i],
                "a disaster ends the drill: make it the last step",
                "`{action}` comes after the disaster"
            );
            ensure!(
                at >= previous.at(),
                ["steps", i, "at"],
                "list steps in time order",
                "`{action}` at {} comes before the previous step at {}",
                format_duration(at),
                format_duration(previous.at())
            );
        }
        ensure!(
            at <= end || matches!(step, Step::Disaster { .. }),
            ["steps", i, "at"],
            format!(
                "only `disaster` may come after the workload; others happen from 0s to {}",
                format_duration(end)
            ),
            "`{action}` at {} is after the workload ends at {}",
            format_duration(at),
            format_duration(end)
        );
        if let Some(capability) = step.needs().filter(|&c| !s.environment.supports(c)) {
            let able: Vec<String> = capability
                .environments()
                .iter()
                .map(|e| format!("`{}`", e.as_str()))
                .collect();
            let able = able.join(" or ");
            bail!(
                ["steps", i, "action"],
                format!(
                    "`{action}` needs `environment: {}`; change the environment or remove the step",
                    capability.environments()[0].as_str()
                ),
                "`{action}` is only available in environment {able}, not `{}`",
                s.environment.as_str()
            );
        }
        ensure!(
            !matches!(step, Step::PitrFailover { twin: true, .. })
                || s.environment == Environment::Local,
            ["steps", i, "twin"],
            "remove `twin`, or set `environment: local`",
            "a `pitr_failover` with a twin is available in the local environment only"
        );
        if let Step::StorageOutage { mode, .. } = *step {
            outage_mode(s, mode, &["steps".into(), i.into(), "mode".into()])?;
        }
        ensure!(
            !matches!(step, Step::PitrFailover { .. })
                || s.steps[..i]
                    .iter()
                    .any(|b| matches!(b, Step::BaseBackup { .. }) && b.at() < at),
            ["steps", i],
            "the failover restores a base backup: add a `base_backup` step before it",
            "`{action}` at {} needs a base_backup step before it",
            format_duration(at)
        );
        let zero = match *step {
            Step::Delete { retain: 0, .. } | Step::DeleteDuringBackup { retain: 0, .. } => {
                Some("retain")
            }
            Step::Pause { duration, .. } | Step::StorageOutage { duration, .. } => {
                duration.is_zero().then_some("duration")
            }
            Step::NetworkLatency { delay, .. } => {
                delay.is_some_and(|d| d.is_zero()).then_some("delay")
            }
            _ => None,
        };
        ensure!(
            !matches!(
                step,
                Step::NetworkLatency {
                    delay: None,
                    rate: None,
                    ..
                }
            ),
            ["steps", i],
            "add e.g. `delay: 50ms` or `rate: 20mbit`",
            "`{action}` needs a `delay` or a `rate`"
        );
        if let Some(key) = zero {
            bail!(
                ["steps", i, key],
                "use a value above zero",
                "`{action}` needs a `{key}` above zero"
            );
        }
        previous = Some(step);
    }
    Ok(())
}

fn chaos(s: &Scenario) -> Result<(), Problem> {
    if !s.chaos {
        return Ok(());
    }
    ensure!(
        s.environment != Environment::Kind,
        ["chaos"],
        "remove it, or set `environment: local` or `containers`",
        "`chaos` is not available in environment `kind`"
    );
    ensure!(
        s.steps.is_empty(),
        ["steps"],
        "remove `steps`, or `chaos`",
        "a chaos drill draws its steps from the seed"
    );
    ensure!(
        s.restores.storage_fault.is_none(),
        ["restores", "storage_fault"],
        "remove `restores.storage_fault`, or `chaos`",
        "a chaos drill draws the storage fault its restores meet from the seed"
    );
    ensure!(
        !s.restores.interrupt_fetch,
        ["restores", "interrupt_fetch"],
        "remove `restores.interrupt_fetch`, or `chaos`",
        "a chaos drill draws the faults its restores meet from the seed"
    );
    ensure!(
        s.workload.duration >= Duration::from_secs(10),
        ["workload", "duration"],
        "give the chaos drill at least `10s` of workload to place its steps in",
        "a chaos drill needs a workload of at least 10s"
    );
    Ok(())
}

fn restores(s: &Scenario) -> Result<(), Problem> {
    let r = &s.restores;
    // A chaos drill's drawn timeline starts with a backup.
    let first_backup = match s.chaos {
        true => Some(Duration::ZERO),
        false => s
            .steps
            .iter()
            .find(|step| matches!(step, Step::BaseBackup { .. }))
            .map(Step::at),
    };
    if r.random_targets > 0 || r.latest {
        ensure!(
            first_backup.is_some(),
            ["restores"],
            "add a step such as `- { at: 0s, action: base_backup }`",
            "restores need at least one base_backup step"
        );
    }
    ensure!(
        r.random_targets <= 1000,
        ["restores", "random_targets"],
        "use at most 1000 random targets",
        "{} random targets is too many",
        r.random_targets
    );
    if r.random_targets > 0 {
        ensure!(
            first_backup < Some(s.workload.duration),
            ["restores", "random_targets"],
            "random targets lie after the end of a base backup: take one before the workload ends",
            "random targets need a base backup before the workload ends at {}",
            format_duration(s.workload.duration)
        );
    }
    if r.interrupt_fetch {
        ensure!(
            s.environment == Environment::Local,
            ["restores", "interrupt_fetch"],
            "remove it, or set `environment: local`",
            "`interrupt_fetch` is available in the local environment only"
        );
        ensure!(
            r.storage_fault.is_none(),
            ["restores", "interrupt_fetch"],
            "remove `interrupt_fetch` or `storage_fault`",
            "a restore meets one fault: `interrupt_fetch` and `storage_fault` cannot be combined"
        );
        ensure!(
            s.conditions.restores_in_place != Some(false),
            ["conditions", "restores_in_place"],
            "remove it: with `interrupt_fetch`, restores go in place",
            "an interrupted restore is retried in its own directory, so `restores_in_place` cannot be false"
        );
    }
    if let Some(fault) = &r.storage_fault {
        ensure!(
            s.environment != Environment::Kind,
            ["restores", "storage_fault"],
            "remove it, or set `environment: local` or `containers`",
            "`storage_fault` during restores is not available in environment `kind`"
        );
        ensure!(
            !fault.duration.is_zero(),
            ["restores", "storage_fault", "duration"],
            "give how long the storage fails, e.g. `8s`",
            "`storage_fault` needs a `duration` above zero"
        );
        outage_mode(
            s,
            fault.mode,
            &["restores".into(), "storage_fault".into(), "mode".into()],
        )?;
    }
    ensure!(
        r.from == BackupChoice::Latest || r.latest,
        ["restores", "from"],
        "set `latest: true`, or remove `from`",
        "`from` picks the backup of the latest restore, but `latest` is not set"
    );
    Ok(())
}

/// Whether the scenario's environment can fail its storage in `mode`; the
/// problem is reported at `path`.
fn outage_mode(s: &Scenario, mode: OutageMode, path: &[Seg]) -> Result<(), Problem> {
    if mode.available_in(s.environment) {
        return Ok(());
    }
    let able: Vec<String> = [
        Environment::Local,
        Environment::Containers,
        Environment::Kind,
    ]
    .into_iter()
    .filter(|&e| mode.available_in(e))
    .map(|e| format!("`{}`", e.as_str()))
    .collect();
    Err(Problem {
        path: path.to_vec(),
        message: format!(
            "outage mode `{}` is only available in environment {}, not `{}`",
            mode.as_str(),
            able.join(" or "),
            s.environment.as_str()
        ),
        hint: "use `disconnect` or `pause`, or change the environment".into(),
    })
}

fn objectives(s: &Scenario) -> Result<(), Problem> {
    let (o, r) = (&s.objectives, &s.restores);
    ensure!(
        o.rpo.is_none() || r.latest,
        ["objectives", "rpo"],
        "set `restores.latest: true`, or remove `rpo`",
        "rpo is measured on the latest restore, which is not requested"
    );
    ensure!(
        o.rto.is_none() || r.latest || r.random_targets > 0,
        ["objectives", "rto"],
        "request restores (`restores.latest` or `restores.random_targets`), or remove `rto`",
        "rto is measured on restores, and none is requested"
    );
    Ok(())
}

/// Checks that the key files of `encryption` are readable files, written
/// relative to `base` (the scenario file's directory), and makes their
/// paths absolute (the backup tool may run in another directory).
pub(super) fn key_files(encryption: &mut Encryption, base: &Path) -> Result<(), Problem> {
    let variant = encryption.as_str();
    for (key, path) in encryption.files_mut() {
        let resolved = base.join(&*path);
        let readable = std::fs::File::open(&resolved).and_then(|f| match f.metadata()?.is_file() {
            true => std::path::absolute(&resolved),
            false => Err(std::io::Error::other("not a file")),
        });
        match readable {
            Ok(absolute) => *path = absolute,
            Err(e) => bail!(
                ["storage", "encryption", variant, key],
                "key files are read relative to the scenario file's directory, e.g. `../fixtures/keys/private.asc`",
                "cannot read `{}` ({}): {e}",
                path.display(),
                resolved.display()
            ),
        }
    }
    Ok(())
}

/// 1-64 of `[a-z0-9-]`, not starting with `-`.
fn is_scenario_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A PostgreSQL parameter name, optionally qualified by an extension
/// (`pg_stat_statements.max`).
fn is_setting_name(name: &str) -> bool {
    let is_ident = |part: &str| {
        part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    name.split('.').count() <= 2 && name.split('.').all(is_ident)
}

/// Why `name` is not a valid S3 bucket name, if it is not.
fn bucket_problem(name: &str) -> Option<&'static str> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !(3..=63).contains(&name.len()) {
        Some("it must be 3 to 63 characters long")
    } else if !name.chars().all(|c| alnum(c) || c == '-' || c == '.') {
        Some("it may only contain lowercase letters, digits, `-` and `.`")
    } else if !name.starts_with(alnum) || !name.ends_with(alnum) {
        Some("it must start and end with a letter or digit")
    } else if name.contains("..") {
        Some("it must not contain `..`")
    } else if name.parse::<std::net::Ipv4Addr>().is_ok() {
        Some("it must not look like an IP address")
    } else {
        None
    }
}
