//! Command line: WAL-G's verbs and flags, plus pgdrill's own.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::backup::base::{self, FetchOptions, PushOptions, RecoveryConfig};
use crate::backup::config::{Secret, Settings};
use crate::backup::retention::{self, Policy};
use crate::backup::walverify::{self, CheckError};
use crate::backup::{audit, catalog, exit, monitor, timestamp, wal, BackupError, Context};
use crate::env::s3_server::{S3Server, S3ServerConfig};
use crate::scenario::{self, Scenario};

/// `--version`; a build that can sabotage itself says so.
const VERSION: &str = if crate::backup::sabotage::SABOTAGE_BUILT_IN {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (test build: honours PGDRILL_SABOTAGE)"
    )
} else {
    env!("CARGO_PKG_VERSION")
};

/// pgdrill: disaster-recovery drills for PostgreSQL, with a WAL-G-compatible
/// physical backup tool.
///
/// Storage and connection settings come from WAL-G's environment variables
/// (WALG_S3_PREFIX or WALG_FILE_PREFIX, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT, AWS_REGION, AWS_S3_FORCE_PATH_STYLE,
/// WALG_COMPRESSION_METHOD, WALG_UPLOAD_CONCURRENCY, WALG_DOWNLOAD_CONCURRENCY,
/// WALG_PREFETCH, WALG_TAR_SIZE_THRESHOLD, WALG_DELTA_MAX_STEPS,
/// WALG_PGP_KEY / WALG_PGP_KEY_PATH / WALG_PGP_KEY_PASSPHRASE,
/// WALG_LIBSODIUM_KEY / WALG_LIBSODIUM_KEY_PATH, PGHOST, PGPORT, PGUSER,
/// PGPASSWORD, PGDATABASE, PGDATA), optionally from an env directory. The
/// README lists them with defaults.
///
/// Exit codes: 0 success; 1 failure; 2 bad command line; wal-fetch: 74 file
/// not in storage, 200 any other failure (bad command line included);
/// wal-verify: 3 WARNING, 4 FAILURE; backup-verify: 4 problems found;
/// backup-check: Nagios' 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
#[derive(Debug, Parser)]
#[command(name = "pgdrill", version = VERSION, max_term_width = 100)]
pub struct Cli {
    /// Read settings from this directory too (envdir semantics: each file
    /// is a variable named after the file, its first line the value); they
    /// override the environment. Same as `envdir DIR pgdrill ...`.
    #[arg(long, global = true, value_name = "DIR", env = "PGDRILL_ENV_DIR")]
    pub env_dir: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, or a tracing filter); logs go
    /// to stderr.
    #[arg(long, global = true, default_value = "info", env = "PGDRILL_LOG")]
    pub log: String,

    /// How a failure is reported on stderr's last line: `text` (a message
    /// for people) or `json` (`{"kind", "exit_code", "message"}`, for
    /// programs that drive pgdrill; the kinds are in the README).
    #[arg(long, global = true, value_enum, default_value_t = ErrorFormat::Text, env = "PGDRILL_ERROR_FORMAT")]
    pub error_format: ErrorFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file: use as `archive_command = 'pgdrill wal-push %p'`.
    ///
    /// Exits 0 only once the file is durably stored. Pushing a file that is
    /// already stored with identical content succeeds; different content
    /// under the same name is an error (and .history files are never
    /// overwritten). With WALG_UPLOAD_CONCURRENCY > 1, later segments that
    /// are already .ready are uploaded ahead in parallel.
    WalPush {
        /// Path of the WAL file (%p).
        path: PathBuf,
    },
    /// Restore one WAL file: use as `restore_command = 'pgdrill wal-fetch %f %p'`.
    ///
    /// Exits 74 when the file is not in storage and the bucket (or
    /// directory) answers (the normal end of recovery), 200 on any other
    /// error (missing bucket, denied access, corrupt, undecryptable or
    /// unexpectedly unencrypted object, storage failing after retries, bad
    /// settings or arguments): above 125, PostgreSQL aborts recovery
    /// instead of taking the failure for the end of the archive and
    /// promoting early without the rest. Starts prefetching the next
    /// WALG_PREFETCH segments in the background into pg_wal/.pgdrill/prefetch.
    WalFetch {
        /// WAL file name (%f).
        name: String,
        /// Destination path (%p).
        dest: PathBuf,
    },
    /// Background prefetcher started by wal-fetch (internal).
    #[command(hide = true)]
    WalPrefetch {
        /// The segment just fetched; the ones after it are prefetched.
        after: String,
        /// The pg_wal directory.
        pg_wal: PathBuf,
        #[arg(long, default_value_t = crate::backup::layout::DEFAULT_WAL_SEGMENT_SIZE)]
        segment_size: u64,
    },
    /// Take a base backup of a running cluster.
    ///
    /// Connects with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE, runs a
    /// non-exclusive backup, uploads the data directory in parallel
    /// compressed parts, waits (up to PGDRILL_ARCHIVE_CHECK_TIMEOUT) until
    /// the WAL from the backup's start to its end is in this storage, and
    /// writes the completion sentinel last. Refuses a server that does not
    /// archive (archive_mode off); fails, listing nothing, when the WAL does
    /// not arrive (archive_command storing elsewhere). With
    /// WALG_DELTA_MAX_STEPS > 0 it takes a delta of the newest backup
    /// (only pages changed since that backup started) while the chain is
    /// shorter than that.
    BackupPush {
        /// The data directory (default: $PGDATA).
        data_dir: Option<PathBuf>,
        /// Mark the backup permanent: no `delete` removes it or its WAL.
        #[arg(long)]
        permanent: bool,
        /// Let the starting checkpoint be spread out instead of immediate.
        #[arg(long)]
        spread_checkpoint: bool,
        /// Take a full backup even when WALG_DELTA_MAX_STEPS allows a delta.
        #[arg(long)]
        full: bool,
    },
    /// Restore a base backup into a directory.
    ///
    /// Refuses a non-empty target unless --force. Writes backup_label and,
    /// with --recovery-target-time or --recover, recovery.signal and the
    /// recovery settings (restore_command = this binary's wal-fetch).
    BackupFetch {
        /// Target data directory.
        dest: PathBuf,
        /// Backup name (base_...) or LATEST.
        name: String,
        /// Restore into a non-empty directory: everything in it is removed
        /// first (stale relation files, WAL and prefetch state would be
        /// picked up by recovery); a symlinked pg_wal stays, emptied.
        #[arg(long)]
        force: bool,
        /// Re-read every restored file and check it against the backup.
        #[arg(long)]
        verify: bool,
        /// Point-in-time recovery target, with its UTC offset as psql
        /// prints it ('2026-02-09 16:30:00+02', '2026-02-09 14:30:00Z');
        /// a time without one is refused (PostgreSQL would read it in the
        /// server's time zone). Writes recovery.signal, restore_command,
        /// recovery_target_time and recovery_target_action = 'promote'.
        #[arg(long, value_name = "TIME", conflicts_with = "recover", value_parser = timestamp::parse)]
        recovery_target_time: Option<chrono::DateTime<chrono::Utc>>,
        /// Write recovery.signal and restore_command to recover to the end
        /// of the archived WAL.
        #[arg(long)]
        recover: bool,
        /// restore_command to write (default: this binary's wal-fetch with
        /// the same --env-dir).
        #[arg(long, value_name = "CMD")]
        restore_command: Option<String>,
        /// Write archive_mode = off, so the restored copy never archives into
        /// the source archive (DR tests).
        #[arg(long)]
        no_archive: bool,
    },
    /// List complete backups, oldest first.
    ///
    /// Default: WAL-G's table (name last_modified wal_segment_backup_start).
    /// --json: an array, OLDEST FIRST, so `.[-1]` is the newest backup.
    BackupList {
        /// Add times, LSNs, sizes, version and host.
        #[arg(long)]
        detail: bool,
        /// JSON array (oldest first).
        #[arg(long)]
        json: bool,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Mark a backup permanent: no `delete` removes it or its WAL.
    ///
    /// A WAL-G backup is marked as WAL-G marks it: `is_permanent` in its
    /// metadata.json, a permanent delta with its whole chain, and a base
    /// of a permanent delta cannot be made ordinary.
    BackupMark {
        /// Backup name (base_...) or LATEST.
        name: String,
        /// Make it ordinary again.
        #[arg(long, short = 'i')]
        impermanent: bool,
    },
    /// Delete old backups and the WAL no kept backup needs.
    ///
    /// Policies: `retain N`, `retain FULL N`, `before TIMESTAMP|BACKUP_NAME`,
    /// `everything [FORCE]`. Permanent backups (and the WAL from their
    /// start on) are kept by every policy; `everything` refuses while any
    /// exist, `everything FORCE` deletes them too. A dry run that prints
    /// what would go unless --confirm.
    Delete {
        /// Actually delete.
        #[arg(long)]
        confirm: bool,
        /// The policy words.
        #[arg(required = true, num_args = 1.., value_name = "POLICY")]
        policy: Vec<String>,
    },
    /// Check the WAL archive (WAL-G's wal-verify): `integrity` (no segment
    /// missing from the oldest backup's start to the cluster's current
    /// segment, following the timeline history) and `timeline` (storage's
    /// highest timeline is the cluster's). Both when none is given.
    ///
    /// Works without the cluster for `integrity` (up to the newest stored
    /// segment). Exits 0 OK, 3 WARNING (segments not archived yet; storage
    /// behind the cluster's timeline), 4 FAILURE (lost segments; a timeline
    /// in storage the cluster never had), 1 when a check cannot run.
    WalVerify {
        /// Checks to run; both when none is given.
        #[arg(value_enum)]
        checks: Vec<walverify::WalCheck>,
        /// WAL-G's JSON: {"integrity": {"status", "details"}, "timeline": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// Check a stored backup without restoring it: every part decoded and
    /// every file's checksum compared with metadata.json (for a delta, of
    /// every backup in its chain), and the WAL from its start to its finish
    /// segment present and decodable.
    ///
    /// Lists every problem. Exits 0 when clean, 4 when problems were found,
    /// 1 when the check cannot run (no such backup, storage unreachable).
    BackupVerify {
        /// Backup name (base_...) or LATEST.
        name: String,
        /// JSON report.
        #[arg(long)]
        json: bool,
    },
    /// One-line monitor check (Nagios plugin): newest backup's age, WAL
    /// continuity since it, archive lag.
    ///
    /// Prints `OK: ...`, `WARNING: ...` or `CRITICAL: ...` and exits 0, 1
    /// or 2; `UNKNOWN: ...` and 3 when the check cannot run.
    BackupCheck {
        /// CRITICAL when the newest backup finished longer ago (e.g. 24h, 2d).
        #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_age: std::time::Duration,
        /// WARNING when fewer WAL segments are stored since the newest backup.
        #[arg(long, default_value_t = 0, value_name = "N")]
        min_wal: u64,
        /// CRITICAL when archiving lags more (e.g. 5m); unchecked if not given.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_archive_lag: Option<std::time::Duration>,
        /// Metrics as JSON (numbers, plus status and message).
        #[arg(long)]
        json: bool,
    },
    /// Run drills: start PostgreSQL and storage, write a workload, back up,
    /// break things, restore to random points in time, verify exactly, and
    /// report RPO/RTO into REPORT_DIR/<UTC time>-<scenario>/.
    ///
    /// Exits 0 when every drill passed, 1 when any check or objective
    /// failed, 3 when none failed but a scenario was skipped because its
    /// environment is not available here (printed with the reason, and a
    /// skipped case in --junit).
    Run {
        /// Scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        #[command(flatten)]
        plan: DrillPlan,
    },
    /// Run the mutation suite: every deliberate defect of the backup tool
    /// must make one of the scenarios' drills fail.
    ///
    /// Each mutant (see `--mutant`) runs as engine `pgdrill-sabotaged`
    /// against the scenarios in order until a drill fails (killed); one
    /// that passes them all survived. Prints a table (mutant, result, what
    /// caught it, in which scenario), writes it as mutants.md and
    /// mutants.json into REPORT_DIR/<UTC time>-mutants/, and exits 1 when
    /// a mutant survived. Needs a test build: `cargo run --release
    /// --features sabotage -- mutants`.
    Mutants {
        /// Scenarios, in the order they are tried.
        #[arg(default_values = [
            "scenarios/quick.yaml",
            "scenarios/delta-chain.yaml",
            "scenarios/retention.yaml",
            "scenarios/timeline-switch.yaml",
            "scenarios/edges.yaml",
            "scenarios/restore-faults.yaml",
        ])]
        scenarios: Vec<PathBuf>,
        /// Only this mutant (repeatable), by its PGDRILL_SABOTAGE name,
        /// e.g. `stale_visibility_map` or `drop_every_nth_wal:3`; default:
        /// the whole catalogue.
        #[arg(long = "mutant", value_name = "NAME")]
        mutants: Vec<String>,
        /// Where reports go.
        #[arg(long, default_value = "reports")]
        report_dir: PathBuf,
        /// No progress lines from the drills.
        #[arg(long, short)]
        quiet: bool,
        /// Run the drills on this PostgreSQL major version instead of the
        /// scenarios' `postgres.version` (as `pgdrill run
        /// --postgres-version`); a version whose binaries lack what a
        /// scenario needs is an error here, since a drill that cannot run
        /// kills nothing.
        #[arg(long, value_name = "MAJOR", value_parser = clap::value_parser!(u32).range(12..=18))]
        postgres_version: Option<u32>,
    },
    /// Check scenario files without running them.
    Validate {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// List the scenarios in a directory with environment and description.
    List {
        #[arg(default_value = "scenarios")]
        dir: PathBuf,
    },
    /// Measure backup speed against pg_basebackup (figures go to reports/bench/).
    Bench(crate::bench::BenchArgs),
    /// Work with the reports of earlier drills.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Serve an S3-compatible API from a directory (for tests and local drills).
    ///
    /// Prints `listening on http://ADDR` on stdout once ready; with port 0
    /// a free port is chosen.
    S3Serve {
        /// Directory holding the buckets.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long, env = "PGDRILL_S3_ACCESS_KEY")]
        access_key: String,
        #[arg(long, env = "PGDRILL_S3_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
        /// Bucket to create before serving (repeatable).
        #[arg(long = "bucket")]
        buckets: Vec<String>,
        /// Misbehave while this file says so, for drills: `refuse` closes
        /// new connections unanswered, `errors` answers every request 503;
        /// absent or anything else, serve.
        #[arg(long)]
        fault_file: Option<PathBuf>,
    },
}

/// `pgdrill report ...`.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Trends across runs: read the report.json files under DIRs (report
    /// directories or any directory above them, e.g. a CI job's downloaded
    /// artifacts) and write trend.md, trend.html and trend.json: per
    /// scenario and in time order, pass/fail, RPO, RTO per phase, backup
    /// and restore throughput.
    ///
    /// The newest run of each scenario is compared with the median of up to
    /// 10 runs before it; it is a regression when it failed after passing
    /// runs, when its RPO or RTO is more than THRESHOLD longer (and more
    /// than MIN_DELTA seconds), or a throughput below 1/(1 + THRESHOLD) of
    /// the baseline that cost more than MIN_DELTA seconds. Exits 1 on a regression with --fail-on-regression,
    /// else 0.
    Trend {
        /// Directories to search for report.json (recursively).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where trend.md, trend.html and trend.json go.
        #[arg(long, default_value = "reports/trend")]
        out: PathBuf,
        /// Allowed relative worsening before a figure counts as a
        /// regression (0.5: 50%).
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        /// Seconds an RPO, an RTO or a slower throughput may cost
        /// regardless of THRESHOLD (noise on small drills).
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        min_delta: f64,
        /// Exit 1 when the newest run of any scenario regressed (for
        /// nightly jobs).
        #[arg(long)]
        fail_on_regression: bool,
    },
}

/// How failures are printed (`--error-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorFormat {
    Text,
    Json,
}

/// The line that reports a failure of `kind` with `message`, ending the
/// process with `exit_code`, in `format`.
pub fn failure_line(
    format: ErrorFormat,
    kind: exit::FailureKind,
    exit_code: i32,
    message: String,
) -> String {
    match format {
        ErrorFormat::Text => format!("pgdrill: {message}"),
        ErrorFormat::Json => {
            let report = exit::FailureReport {
                kind,
                exit_code,
                message,
            };
            serde_json::to_string(&report)
                .unwrap_or_else(|_| format!("pgdrill: {}", report.message))
        }
    }
}

/// [`failure_line`] for an error that reached `main`: its kind is that of
/// the tool's error in its chain, if any.
pub fn error_line(e: &anyhow::Error, format: ErrorFormat, exit_code: i32) -> String {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<BackupError>())
        .map_or(exit::FailureKind::Internal, BackupError::kind);
    failure_line(format, kind, exit_code, error_text(e))
}

/// An error and its causes as one line, each cause once: many messages
/// name their cause already ("cannot read X: No such file"), and anyhow's
/// `{:#}` would repeat it.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Whether a command line (program name first) runs `wal-fetch`: its verb
/// is the first argument that is neither an option nor the value of a
/// global option. Decided before parsing, so that even a command line
/// clap rejects exits as wal-fetch must.
pub fn runs_wal_fetch(args: &[std::ffi::OsString]) -> bool {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("--env-dir" | "--log" | "--error-format") => {
                rest.next();
            }
            Some(a) if a.starts_with('-') => {}
            verb => return verb == Some("wal-fetch"),
        }
    }
    false
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let env_dir = cli.env_dir.as_deref();
    match cli.command {
        Command::S3Serve {
            dir,
            listen,
            access_key,
            secret_key,
            buckets,
            fault_file,
        } => {
            let server = S3Server::bind(&S3ServerConfig {
                dir,
                listen,
                access_key,
                secret_key: Secret::new(secret_key),
                buckets,
                fault_file,
            })
            .await?;
            println!("listening on http://{}", server.local_addr());
            use std::io::Write;
            std::io::stdout().flush()?;
            server.serve(shutdown_signal()).await;
            Ok(exit::OK)
        }
        Command::Bench(args) => tokio::select! {
            r = crate::bench::run(args) => r,
            () = shutdown_signal() => {
                eprintln!("pgdrill: interrupted; cleaned up");
                Ok(130)
            }
        },
        Command::Run { scenarios, plan } => run_drills(&scenarios, plan).await,
        Command::Report(ReportCommand::Trend {
            dirs,
            out,
            threshold,
            min_delta,
            fail_on_regression,
        }) => report_trend(&dirs, &out, threshold, min_delta, fail_on_regression),
        Command::Mutants {
            scenarios,
            mutants,
            report_dir,
            quiet,
            postgres_version,
        } => run_mutants(&scenarios, &mutants, report_dir, quiet, postgres_version).await,
        Command::Validate { scenarios } => {
            let mut code = exit::OK;
            for path in &scenarios {
                match Scenario::load(path) {
                    Ok(s) => println!(
                        "{}: ok ({}, {})",
                        path.display(),
                        s.name,
                        s.environment.as_str()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        code = exit::FAILURE;
                    }
                }
            }
            Ok(code)
        }
        Command::List { dir } => {
            for path in scenario::discover(&dir)? {
                match Scenario::load(&path) {
                    Ok(s) => println!(
                        "{:<24} {:<11} {}",
                        s.name,
                        s.environment.as_str(),
                        s.description
                    ),
                    Err(e) => println!("{:<24} INVALID     {e}", path.display()),
                }
            }
            Ok(exit::OK)
        }
        Command::WalVerify { checks, json } => Ok(check_exit_code(
            async {
                let ctx = open_context(env_dir)?;
                let report = walverify::wal_verify(&ctx, &checks).await?;
                print_report(&report, json)?;
                Ok(report.status().exit_code())
            }
            .await,
        )),
        Command::BackupVerify { name, json } => Ok(check_exit_code(
            async {
                let ctx = open_context(env_dir)?;
                let report = audit::backup_verify(&ctx, &name).await?;
                print_report(&report, json)?;
                Ok(report.status.exit_code())
            }
            .await,
        )),
        Command::BackupCheck {
            max_age,
            min_wal,
            max_archive_lag,
            json,
        } => {
            let limits = monitor::Limits {
                max_age,
                min_wal,
                max_archive_lag,
            };
            let outcome = async {
                let ctx = open_context(env_dir)?;
                monitor::backup_check(&ctx, &limits).await
            }
            .await;
            Ok(match outcome {
                Ok(o) if json => {
                    println!("{}", serde_json::to_string(&o)?);
                    o.exit_code
                }
                Ok(o) => {
                    println!("{}", o.message);
                    o.exit_code
                }
                Err(e) => {
                    println!("UNKNOWN: {e}");
                    exit::NAGIOS_UNKNOWN
                }
            })
        }
        other => {
            let fetch = matches!(other, Command::WalFetch { .. });
            Ok(match run_backup_verb(other, env_dir).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    let code = match e.exit_code() {
                        exit::FAILURE if fetch => exit::FETCH_FAILED,
                        code => code,
                    };
                    eprintln!(
                        "{}",
                        failure_line(cli.error_format, e.kind(), code, e.to_string())
                    );
                    code
                }
            })
        }
    }
}

/// How `pgdrill run` runs its scenarios.
#[derive(Debug, clap::Args)]
pub struct DrillPlan {
    /// Seed for the random targets and payloads (replays a drill exactly).
    #[arg(long)]
    seed: Option<u64>,
    /// Where reports go.
    #[arg(long, default_value = "reports")]
    report_dir: PathBuf,
    /// Keep the drill's directories (data, logs, storage) for inspection.
    #[arg(long)]
    keep: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    /// Also write every drill of this run as one JUnit XML file (each
    /// drill's report directory holds its own junit.xml anyway).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Run each scenario N times (a soak), each with its own seed
    /// (`--seed S` gives S, S+1, ...; else random), then write a
    /// summary (passed, failed seeds as replay commands, RPO and RTO
    /// min/median/p95/max) to REPORT_DIR/<UTC time>-soak/.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Run each scenario once per seed from A up to B (B excluded), e.g.
    /// `--seeds 100..200`: a soak over chosen seeds, summarized like
    /// `--repeat`.
    #[arg(long, value_name = "A..B", value_parser = parse_seed_range, conflicts_with_all = ["seed", "repeat"])]
    seeds: Option<std::ops::Range<u64>>,
    /// Run up to K drills at a time (default: one after another). Each
    /// drill has its own servers, ports and directories; the machine's
    /// cores and memory are the limit, and timings (RTO) of drills that
    /// share cores are longer than alone. Progress lines are prefixed
    /// with the drill's scenario and number.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// Run the scenarios on this PostgreSQL major version instead of their
    /// `postgres.version` (a release's version matrix: run once per
    /// version). Binaries are searched as the README's "PostgreSQL
    /// versions" says; a version without them skips the drill (exit 3).
    #[arg(long, value_name = "MAJOR", value_parser = clap::value_parser!(u32).range(12..=18))]
    postgres_version: Option<u32>,
}

/// `A..B` with A < B, for `--seeds`.
fn parse_seed_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || {
        format!("{text:?} is not a seed range; write A..B with whole numbers A < B, e.g. 100..200 (B excluded)")
    };
    let (a, b) = text.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a >= b {
        return Err(bad());
    }
    Ok(a..b)
}

/// Loads the scenario files, each run on `postgres_version` when given
/// instead of its own `postgres.version`.
fn load_scenarios(
    files: &[PathBuf],
    postgres_version: Option<u32>,
) -> Result<Vec<Scenario>, crate::scenario::ScenarioError> {
    files
        .iter()
        .map(|f| {
            let mut scenario = Scenario::load(f)?;
            if let Some(major) = postgres_version {
                scenario.postgres.version = major;
            }
            Ok(scenario)
        })
        .collect()
}

/// Runs the drills of `pgdrill run`, up to `--parallel` at a time; Ctrl-C
/// or SIGTERM stops them and cleans up (dropping a drill stops its servers
/// and removes its directories).
async fn run_drills(files: &[PathBuf], plan: DrillPlan) -> anyhow::Result<i32> {
    use crate::report::junit::SkippedDrill;
    use futures::StreamExt as _;
    let scenarios = load_scenarios(files, plan.postgres_version)?;
    let pgdrill = std::env::current_exe()?;
    // Each round runs every scenario once, with that round's seed.
    let rounds: Vec<Option<u64>> = match &plan.seeds {
        Some(range) => range.clone().map(Some).collect(),
        None => (0..plan.repeat)
            .map(|round| plan.seed.map(|s| s.wrapping_add(u64::from(round))))
            .collect(),
    };
    let soak = rounds.len() > 1;
    let jobs = rounds.iter().enumerate().flat_map(|(round, seed)| {
        scenarios
            .iter()
            .zip(files)
            .map(move |(scenario, file)| (round, *seed, scenario, file))
    });
    let pgdrill = &pgdrill;
    let plan = &plan;
    let mut drills = futures::stream::iter(jobs)
        .map(|(round, seed, scenario, file)| async move {
            let opts = crate::drill::RunOptions {
                seed,
                report_dir: plan.report_dir.clone(),
                keep: plan.keep,
                quiet: plan.quiet,
                pgdrill: pgdrill.clone(),
                tag: (plan.parallel > 1).then(|| format!("{}#{}", scenario.name, round + 1)),
            };
            (
                scenario,
                file,
                crate::drill::run(scenario, file, &opts).await,
            )
        })
        .buffer_unordered(plan.parallel as usize);
    let mut failed = false;
    let mut reports = Vec::new();
    let mut skipped: Vec<SkippedDrill> = Vec::new();
    loop {
        let (scenario, file, result) = tokio::select! {
            next = drills.next() => match next {
                Some(r) => r,
                None => break,
            },
            () = shutdown_signal() => {
                eprintln!("pgdrill: interrupted; cleaned up");
                return Ok(130);
            }
        };
        match result {
            Ok(outcome) => {
                print!("{}", outcome.report.to_markdown());
                failed |= !outcome.report.passed;
                reports.push(outcome.report);
            }
            Err(e @ crate::drill::DrillError::Unavailable { .. }) => {
                eprintln!(
                    "pgdrill: SKIPPED {} ({}): {e}",
                    scenario.name,
                    file.display()
                );
                if !skipped.iter().any(|s| s.scenario == scenario.name) {
                    skipped.push(SkippedDrill {
                        scenario: scenario.name.clone(),
                        scenario_file: file.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(path) = &plan.junit {
            // Rewritten after every drill: a run cut short still has one.
            let all: Vec<&crate::report::DrillReport> = reports.iter().collect();
            std::fs::write(
                path,
                crate::report::junit::to_junit_with_skips(&all, &skipped),
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let code = match (failed, skipped.is_empty()) {
        (true, _) => exit::FAILURE,
        (false, false) => exit::DRILL_SKIPPED,
        (false, true) => exit::OK,
    };
    if soak {
        let summaries = crate::report::soak::summarize(&reports);
        let md = crate::report::soak::to_markdown(&summaries);
        let dir = plan.report_dir.join(format!(
            "{}-soak",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("summary.md"), &md)?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_vec_pretty(&summaries)?,
        )?;
        print!("{md}");
        eprintln!(
            "pgdrill: soak summary in {}",
            dir.join("summary.md").display()
        );
    }
    Ok(code)
}

/// `pgdrill report trend` (see [`ReportCommand::Trend`]).
fn report_trend(
    dirs: &[PathBuf],
    out: &Path,
    threshold: f64,
    min_delta: f64,
    fail_on_regression: bool,
) -> anyhow::Result<i32> {
    use crate::report::trend;
    if !(threshold.is_finite() && threshold >= 0.0 && min_delta.is_finite() && min_delta >= 0.0) {
        anyhow::bail!("--threshold and --min-delta must be numbers of at least 0 (e.g. --threshold 0.5 --min-delta 1)");
    }
    let (points, warnings) = trend::load(dirs)?;
    for w in &warnings {
        eprintln!("pgdrill: {w}");
    }
    let trends = trend::trends(
        points,
        trend::Thresholds {
            relative: threshold,
            min_delta_s: min_delta,
        },
    );
    let page = trend::write(&trends, out)?;
    print!("{}", trend::to_markdown(&trends));
    eprintln!("pgdrill: trend in {}", page.display());
    let regressed = trends.iter().any(|s| !s.regressions.is_empty());
    Ok(if regressed && fail_on_regression {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// Runs the mutation suite (see `Command::Mutants`).
async fn run_mutants(
    files: &[PathBuf],
    names: &[String],
    report_dir: PathBuf,
    quiet: bool,
    postgres_version: Option<u32>,
) -> anyhow::Result<i32> {
    if !crate::backup::sabotage::SABOTAGE_BUILT_IN {
        anyhow::bail!(
            "this pgdrill is built for use and has no deliberate defects; run the mutation suite from a test build: cargo run --release --features sabotage -- mutants"
        );
    }
    let mutants = if names.is_empty() {
        crate::backup::sabotage::Sabotage::catalogue()
    } else {
        names
            .iter()
            .map(|n| {
                crate::backup::sabotage::Sabotage::parse(n).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--mutant {n:?} is not a known defect; the catalogue: {}",
                        crate::backup::sabotage::Sabotage::catalogue()
                            .iter()
                            .map(|m| m.to_setting())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let scenarios: Vec<(Scenario, PathBuf)> = load_scenarios(files, postgres_version)?
        .into_iter()
        .zip(files.iter().cloned())
        .collect();
    let opts = crate::drill::RunOptions {
        seed: None,
        report_dir: report_dir.clone(),
        keep: false,
        quiet,
        pgdrill: std::env::current_exe()?,
        tag: None,
    };
    let suite = crate::drill::mutants::run(&mutants, &scenarios, &opts, |r| {
        eprintln!(
            "mutant {}: {} ({})",
            r.mutant,
            r.verdict().trim_matches('*'),
            r.caught_by
        );
    });
    let results = tokio::select! {
        r = suite => r?,
        () = shutdown_signal() => {
            eprintln!("pgdrill: interrupted; cleaned up");
            return Ok(130);
        }
    };
    let dir = report_dir.join(format!(
        "{}-mutants",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    crate::drill::mutants::write(&dir, &results)?;
    print!("{}", crate::drill::mutants::to_markdown(&results));
    println!("\nwritten to {}", dir.join("mutants.md").display());
    Ok(if results.iter().all(|r| r.passed()) {
        exit::OK
    } else {
        exit::FAILURE
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn open_context(env_dir: Option<&Path>) -> Result<Context, BackupError> {
    Context::open(Settings::load(env_dir)?, env_dir)
}

/// A check verb's exit code; errors running it are printed and exit 1.
fn check_exit_code(result: Result<i32, CheckError>) -> i32 {
    result.unwrap_or_else(|e| {
        eprintln!("pgdrill: {e}");
        exit::FAILURE
    })
}

/// Prints a check's report as JSON or as its text.
fn print_report(
    report: &(impl serde::Serialize + std::fmt::Display),
    json: bool,
) -> Result<(), CheckError> {
    if json {
        let text = serde_json::to_string(report)
            .map_err(|e| BackupError::Invalid(format!("serializing the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{report}");
    }
    Ok(())
}

fn data_dir_arg(arg: Option<PathBuf>, settings: &Settings) -> Result<PathBuf, BackupError> {
    arg.or_else(|| settings.pgdata.clone()).ok_or_else(|| {
        BackupError::Invalid("no data directory: give it as an argument or set PGDATA".into())
    })
}

async fn run_backup_verb(command: Command, env_dir: Option<&Path>) -> Result<(), BackupError> {
    let ctx = open_context(env_dir)?;
    match command {
        Command::WalPush { path } => {
            wal::wal_push(&ctx, &path).await?;
        }
        Command::WalFetch { name, dest } => wal::wal_fetch(&ctx, &name, &dest).await?,
        Command::WalPrefetch {
            after,
            pg_wal,
            segment_size,
        } => wal::wal_prefetch(&ctx, &after, &pg_wal, segment_size).await?,
        Command::BackupPush {
            data_dir,
            permanent,
            spread_checkpoint,
            full,
        } => {
            let dir = data_dir_arg(data_dir, &ctx.settings)?;
            let summary = base::backup_push(
                &ctx,
                &dir,
                &PushOptions {
                    permanent,
                    full,
                    fast_checkpoint: !spread_checkpoint,
                },
            )
            .await?;
            println!("{}", summary.backup_name);
        }
        Command::BackupFetch {
            dest,
            name,
            force,
            verify,
            recovery_target_time,
            recover,
            restore_command,
            no_archive,
        } => {
            let recovery = match (recovery_target_time, recover) {
                (Some(t), _) => RecoveryConfig::Time(t),
                (None, true) => RecoveryConfig::EndOfArchive,
                (None, false) => RecoveryConfig::None,
            };
            base::backup_fetch(
                &ctx,
                &dest,
                &name,
                &FetchOptions {
                    force,
                    verify,
                    recovery,
                    restore_command,
                    no_archive,
                },
            )
            .await?;
        }
        Command::BackupList {
            detail,
            json,
            pretty,
        } => {
            let backups = catalog::list_readable_warning(&ctx).await?;
            if json {
                let rows: Vec<_> = backups.iter().map(catalog::ListedBackup::row).collect();
                let text = if pretty {
                    serde_json::to_string_pretty(&rows)
                } else {
                    serde_json::to_string(&rows)
                }
                .map_err(|e| BackupError::Invalid(e.to_string()))?;
                println!("{text}");
            } else if backups.is_empty() {
                eprintln!("no backups found in {}", ctx.store.describe());
            } else {
                print!("{}", catalog::render_table(&backups, detail));
            }
        }
        Command::BackupMark { name, impermanent } => {
            let s = catalog::mark(&ctx, &name, !impermanent).await?;
            println!(
                "{} is {}",
                s.backup_name,
                if s.is_permanent {
                    "permanent"
                } else {
                    "impermanent"
                }
            );
        }
        Command::Delete { confirm, policy } => {
            retention::delete(&ctx, &Policy::parse(&policy)?, confirm).await?;
        }
        Command::S3Serve { .. }
        | Command::Bench(_)
        | Command::Report(_)
        | Command::Run { .. }
        | Command::Mutants { .. }
        | Command::Validate { .. }
        | Command::List { .. }
        | Command::WalVerify { .. }
        | Command::BackupVerify { .. }
        | Command::BackupCheck { .. } => unreachable!("handled by run"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x.yaml: {source}")]
        struct Named {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Named {
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(
            format!("{e:#}"),
            "cannot read x.yaml: entity not found: entity not found"
        );
        assert_eq!(error_text(&e), "cannot read x.yaml: entity not found");
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("loading the scenario");
        assert_eq!(error_text(&e), "loading the scenario: entity not found");
    }

    #[test]
    fn a_failure_is_a_typed_json_line_for_programs() {
        let e = anyhow::Error::new(BackupError::Corrupt {
            key: crate::backup::store::Key::new("wal_005/x.lz4"),
            detail: "BLAKE3 mismatch".into(),
        })
        .context("wal-fetch x");
        let line = error_line(&e, ErrorFormat::Json, exit::FETCH_FAILED);
        let report =
            exit::FailureReport::from_stderr(&format!("WARN something\n{line}\n")).unwrap();
        assert_eq!(report.kind, exit::FailureKind::Corrupt);
        assert_eq!(report.exit_code, exit::FETCH_FAILED);
        assert!(report.message.contains("BLAKE3 mismatch"), "{report:?}");
        assert_eq!(
            error_line(&e, ErrorFormat::Text, 1),
            format!("pgdrill: {}", error_text(&e))
        );
        let other = anyhow::anyhow!("no tool error");
        let line = error_line(&other, ErrorFormat::Json, 1);
        let report = exit::FailureReport::from_stderr(&line).unwrap();
        assert_eq!(report.kind, exit::FailureKind::Internal);
        assert!(exit::FailureReport::from_stderr("pgdrill: text").is_none());
    }

    #[test]
    fn the_wal_fetch_verb_is_found_before_parsing() {
        let runs = |line: &str| {
            let args: Vec<std::ffi::OsString> = line.split_whitespace().map(Into::into).collect();
            runs_wal_fetch(&args)
        };
        assert!(runs("pgdrill wal-fetch"));
        assert!(runs("pgdrill --env-dir /etc/wal-g/env wal-fetch %f %p"));
        assert!(runs("pgdrill --log warn --bogus wal-fetch a"));
        assert!(runs("pgdrill --env-dir=/e wal-fetch a b"));
        assert!(!runs("pgdrill --env-dir wal-fetch wal-push %p"));
        assert!(!runs("pgdrill wal-push wal-fetch"));
        assert!(!runs("pgdrill"));
    }
}
