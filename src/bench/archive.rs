//! `pgdrill bench archive`: does archiving keep up with a busy primary?
//! (Issue 15: RPO is decided where `archive_command` falls behind.)
//!
//! One cluster, one embedded S3 server, in one run:
//! 1. **Per-segment loop**: `--wal-segments` segments of real pgbench WAL
//!    (copied out of the archive) and as many incompressible ones (random
//!    bytes), each pushed by its own process as PostgreSQL's archiver runs
//!    `archive_command`, into a fresh destination per repetition. The tools
//!    side by side: `pgdrill wal-push`, and when installed pgBackRest
//!    `archive-push` (sync, lz4; through `stunnel` for TLS, which it needs)
//!    and `barman-cloud-wal-archive` (real WAL only: both check or expect
//!    PostgreSQL's own segments). The order of tools rotates across the
//!    `--repeat` repetitions; each figure is the median, with min and max.
//! 2. **Under load**: `pgbench` at full speed (`--clients`, the built-in
//!    TPC-B-like script plus a bulk insert, so WAL is written faster than
//!    by small transactions alone) for `--duration` seconds, with
//!    `archive_command` set in turn to `pgdrill wal-push` without and with
//!    upload-ahead (`WALG_UPLOAD_CONCURRENCY` 1 and the default), and
//!    pgBackRest `archive-push` sync and async. Sampled every second: WAL
//!    written, segments archived (`pg_stat_archiver`) and the archive lag
//!    (segments `.ready` in `pg_wal/archive_status`); after the load, how
//!    long the archiver takes to catch up.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::Serialize;
use tokio_postgres::Client;

use super::peers::{barman_wal_archive, on_path, PgBackRest};
use super::{
    median_min_max, mib, on_a_rig, push_skipped_and_method, query_value, run_timed, BenchArgs,
    Machine, Rig, MIB, SEGMENT_SIZE,
};
use crate::backup::layout::Segment;
use crate::env::local::write_env_dir;

/// The goals for the per-segment loop, segments per second.
const REAL_WAL_GOAL: f64 = 60.0;
const INCOMPRESSIBLE_GOAL: f64 = 40.0;
/// The bulk-insert script mixed into the load (one in ten transactions).
const BULK_SQL: &str = "INSERT INTO bench_bulk SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 5000) g;\n";
/// How long the archiver may take to catch up after the load.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);

/// One tool of the per-segment loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum LoopTool {
    PgdrillWalPush,
    /// `wal-push` into a local directory (`WALG_FILE_PREFIX`): the same
    /// loop without an S3 server, so the tool's own cost shows apart from
    /// the storage's.
    PgdrillWalPushToDirectory,
    PgbackrestArchivePush,
    BarmanCloudWalArchive,
}

impl LoopTool {
    /// Another tool than pgdrill (its figures get a ratio to pgdrill's).
    fn is_peer(self) -> bool {
        !matches!(
            self,
            LoopTool::PgdrillWalPush | LoopTool::PgdrillWalPushToDirectory
        )
    }

    fn writes_to_s3(self) -> bool {
        self != LoopTool::PgdrillWalPushToDirectory
    }

    fn name(self) -> &'static str {
        match self {
            LoopTool::PgdrillWalPush => "pgdrill wal-push (lz4)",
            LoopTool::PgdrillWalPushToDirectory => {
                "pgdrill wal-push (lz4) into a local directory, no S3 server"
            }
            LoopTool::PgbackrestArchivePush => "pgBackRest archive-push (sync, lz4)",
            LoopTool::BarmanCloudWalArchive => "barman-cloud-wal-archive (no compression)",
        }
    }
}

/// The figures of one tool on one kind of segment.
#[derive(Debug, Serialize)]
struct LoopResult {
    tool: LoopTool,
    /// `real pgbench WAL` or `incompressible`.
    content: &'static str,
    segments: usize,
    /// Segments per second of each repetition.
    runs: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
    peak_rss_bytes: u64,
    /// The archiving processes' CPU time per segment, median of the
    /// repetitions.
    tool_cpu_ms_per_segment: f64,
    /// The embedded S3 server's CPU time per segment, median of the
    /// repetitions (None where /proc cannot tell).
    storage_cpu_ms_per_segment: Option<f64>,
}

/// One second of the load.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    at_secs: f64,
    wal_bytes: u64,
    archived: i64,
    ready: usize,
}

/// How one archiver fared under the load.
#[derive(Debug, Serialize)]
struct LoadResult {
    archiver: String,
    load_secs: f64,
    wal_mib_per_sec: f64,
    segments_written: f64,
    segments_archived_during_load: i64,
    archived_per_sec_during_load: f64,
    max_ready: usize,
    ready_at_end_of_load: usize,
    catch_up_secs: f64,
    failed_attempts: i64,
    samples: Vec<Sample>,
}

/// The JSON report of `bench archive`.
#[derive(Debug, Serialize)]
pub(super) struct ArchiveReport {
    benchmark: &'static str,
    pub(super) started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    pgdrill_version: &'static str,
    postgres_version: String,
    machine: Machine,
    method: Vec<String>,
    per_segment: Vec<LoopResult>,
    under_load: Vec<LoadResult>,
    /// Peers not measured, and why.
    skipped: Vec<String>,
}

/// One pass of the per-segment loop.
struct LoopRun {
    segments_per_sec: f64,
    peak_rss_bytes: u64,
    /// CPU time (user + system) of the archiving processes per segment.
    tool_cpu_ms_per_segment: f64,
}

/// Pushes every file with its own process, one after the other.
fn push_loop(mut command: impl FnMut(&Path) -> Command, files: &[PathBuf]) -> Result<LoopRun> {
    let cpu_before = children_cpu_time();
    let started = Instant::now();
    let mut peak = 0;
    for f in files {
        let t = run_timed(command(f), "archiving a segment")?.timed;
        peak = peak.max(t.peak_rss_bytes);
    }
    let segments = files.len() as f64;
    Ok(LoopRun {
        segments_per_sec: segments / started.elapsed().as_secs_f64(),
        peak_rss_bytes: peak,
        tool_cpu_ms_per_segment: (children_cpu_time() - cpu_before).as_secs_f64() * 1000.0
            / segments,
    })
}

/// CPU time (user + system) of this process's children that have ended
/// and been waited for.
fn children_cpu_time() -> Duration {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let secs = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// `count` files of random bytes named as segments of timeline 9 (no
/// clash with the cluster's own).
fn incompressible_segments(rig: &Rig, count: u64) -> Result<Vec<PathBuf>> {
    let dir = rig.dir("incompressible")?;
    let mut rng = rand::rng();
    let mut files = Vec::new();
    let mut data = vec![0u8; SEGMENT_SIZE as usize];
    for segno in 1..=count {
        rng.fill_bytes(&mut data);
        let name = Segment { timeline: 9, segno }.file_name(SEGMENT_SIZE);
        let path = dir.join(name);
        std::fs::write(&path, &data)?;
        files.push(path);
    }
    if let Some(u) = rig.cluster.archive.run_as {
        u.chown_tree(&dir)?;
    }
    Ok(files)
}

/// The per-segment loop, every tool side by side, rotating their order.
fn measure_loop(
    rig: &Rig,
    pgbackrest: Option<&PgBackRest>,
    barman: bool,
    real: &[PathBuf],
    random: &[PathBuf],
    repeat: u32,
) -> Result<Vec<LoopResult>> {
    let mut cases: Vec<(LoopTool, &'static str, &[PathBuf])> = vec![
        (LoopTool::PgdrillWalPush, "real pgbench WAL", real),
        (LoopTool::PgdrillWalPush, "incompressible", random),
        (
            LoopTool::PgdrillWalPushToDirectory,
            "real pgbench WAL",
            real,
        ),
        (
            LoopTool::PgdrillWalPushToDirectory,
            "incompressible",
            random,
        ),
    ];
    if pgbackrest.is_some() {
        cases.push((LoopTool::PgbackrestArchivePush, "real pgbench WAL", real));
    }
    if barman {
        cases.push((LoopTool::BarmanCloudWalArchive, "real pgbench WAL", real));
    }
    /// Every repetition's figures of one case.
    #[derive(Default, Clone)]
    struct Runs {
        rates: Vec<f64>,
        peak_rss_bytes: u64,
        tool_cpu_ms: Vec<f64>,
        storage_cpu_ms: Vec<f64>,
    }
    let mut runs = vec![Runs::default(); cases.len()];
    for rep in 0..repeat as usize {
        for i in (0..cases.len()).map(|k| (k + rep) % cases.len()) {
            let (tool, content, files) = cases[i];
            let dest = format!("loop-{rep}-{i}");
            eprintln!(
                "bench: {} of {} {content} segments, one process each (repetition {})",
                tool.name(),
                files.len(),
                rep + 1
            );
            // The S3 server's CPU counts only where the tool writes to it.
            let storage_cpu_before = tool.writes_to_s3().then(|| rig.s3().cpu_time()).flatten();
            let run = match tool {
                LoopTool::PgdrillWalPush | LoopTool::PgdrillWalPushToDirectory => {
                    let env_name = format!("env-{dest}");
                    let env = if tool.writes_to_s3() {
                        rig.env_dir(&env_name, &dest, 0)?
                    } else {
                        rig.directory_env_dir(&env_name, &dest)?
                    };
                    push_loop(
                        |f| rig.pgdrill(&env, [OsStr::new("wal-push"), f.as_os_str()]),
                        files,
                    )?
                }
                LoopTool::PgbackrestArchivePush => {
                    let pbr = pgbackrest.expect("measured only when set up");
                    let conf = pbr.configure(rig, &dest, false)?;
                    push_loop(
                        |f| {
                            let mut cmd = pbr.command(rig, &conf);
                            cmd.arg("archive-push").arg(f);
                            cmd
                        },
                        files,
                    )?
                }
                LoopTool::BarmanCloudWalArchive => {
                    push_loop(|f| barman_wal_archive(rig, &dest, f), files)?
                }
            };
            let r = &mut runs[i];
            if let (Some(before), Some(after)) = (storage_cpu_before, rig.s3().cpu_time()) {
                let per_segment = (after - before).as_secs_f64() * 1000.0 / files.len() as f64;
                r.storage_cpu_ms.push(per_segment);
            }
            eprintln!("bench: {:.1} segments/s", run.segments_per_sec);
            r.rates.push(run.segments_per_sec);
            r.peak_rss_bytes = r.peak_rss_bytes.max(run.peak_rss_bytes);
            r.tool_cpu_ms.push(run.tool_cpu_ms_per_segment);
        }
    }
    let median = |v: &[f64]| (!v.is_empty()).then(|| median_min_max(v).0);
    Ok(cases
        .into_iter()
        .zip(runs)
        .map(|((tool, content, files), r)| {
            let (median_rate, min, max) = median_min_max(&r.rates);
            LoopResult {
                tool,
                content,
                segments: files.len(),
                median: median_rate,
                min,
                max,
                peak_rss_bytes: r.peak_rss_bytes,
                tool_cpu_ms_per_segment: median(&r.tool_cpu_ms).unwrap_or_default(),
                storage_cpu_ms_per_segment: median(&r.storage_cpu_ms),
                runs: r.rates,
            }
        })
        .collect())
}

/// How many segments wait in `pg_wal/archive_status`.
fn ready_count(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("pg_wal/archive_status"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                .count()
        })
        .unwrap_or(0)
}

/// `archive_command` set to `command`, taking effect (a reload).
async fn set_archive_command(client: &Client, command: &str) -> Result<()> {
    let sql = format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        command.replace('\'', "''")
    );
    client.batch_execute(&sql).await?;
    client.batch_execute("SELECT pg_reload_conf()").await?;
    // The archiver re-reads its configuration between files.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn sample(client: &Client, data_dir: &Path, start_lsn: &str, t0: Instant) -> Result<Sample> {
    let row = client
        .query_one(
            &format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')::bigint, archived_count FROM pg_stat_archiver"
            ),
            &[],
        )
        .await?;
    Ok(Sample {
        at_secs: t0.elapsed().as_secs_f64(),
        wal_bytes: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        archived: row.get(1),
        ready: ready_count(data_dir),
    })
}

/// The load: pgbench for `secs` seconds, the TPC-B-like script and the
/// bulk insert.
fn load_command(rig: &Rig, args: &BenchArgs, script: &Path, secs: u64) -> Command {
    let (clients, secs) = (args.clients.to_string(), secs.to_string());
    let mut pgbench = rig.client(
        "pgbench",
        [
            "-n",
            "-c",
            &clients,
            "-j",
            "2",
            "-T",
            &secs,
            "-b",
            "tpcb-like@9",
            "-f",
        ],
    );
    pgbench.arg(format!("{}@1", script.display()));
    pgbench
}

/// Runs the load until at least `bytes` of WAL are written.
async fn write_load_wal(
    rig: &Rig,
    client: &Client,
    args: &BenchArgs,
    script: &Path,
    bytes: u64,
) -> Result<()> {
    let start: String = query_value(client, "SELECT pg_current_wal_lsn()::text").await?;
    let written_sql = format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}')::bigint");
    loop {
        let written = u64::try_from(query_value::<i64>(client, &written_sql).await?).unwrap_or(0);
        if written >= bytes {
            return Ok(());
        }
        eprintln!(
            "bench: {} of {} MiB of WAL written",
            written / MIB,
            bytes / MIB
        );
        super::timed(load_command(rig, args, script, 5), "pgbench").await?;
    }
}

/// Runs the load with the current `archive_command` and samples it.
async fn measure_load(
    rig: &Rig,
    client: &Client,
    archiver: &str,
    args: &BenchArgs,
    script: &Path,
) -> Result<LoadResult> {
    eprintln!("bench: load for {} s with {archiver}", args.duration);
    rig.settle(client).await?;
    let data_dir = rig.primary().data_dir.clone();
    let start_lsn: String = query_value(client, "SELECT pg_current_wal_lsn()::text").await?;
    let failed_before: i64 =
        query_value(client, "SELECT failed_count FROM pg_stat_archiver").await?;
    let mut pgbench = load_command(rig, args, script, args.duration);
    pgbench.stdout(Stdio::null()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = pgbench.spawn().context("starting pgbench")?;
    let mut samples = Vec::new();
    let first = sample(client, &data_dir, &start_lsn, t0).await?;
    samples.push(first.clone());
    let status = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(sample(client, &data_dir, &start_lsn, t0).await?);
        if let Some(status) = child.try_wait()? {
            break status;
        }
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("pgbench failed ({status}): {}", super::last_lines(&err, 10));
    }
    let end_of_load = sample(client, &data_dir, &start_lsn, t0).await?;
    let load_secs = end_of_load.at_secs;
    samples.push(end_of_load.clone());
    // Close the last segment, then wait until nothing is left to archive.
    client.batch_execute("SELECT pg_switch_wal()").await?;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = sample(client, &data_dir, &start_lsn, t0).await?;
        let done = s.ready == 0;
        samples.push(s);
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("{archiver}: the archiver did not catch up within {CATCH_UP_TIMEOUT:?}");
        }
    }
    let caught_up = samples.last().expect("sampled").at_secs;
    let failed_after: i64 =
        query_value(client, "SELECT failed_count FROM pg_stat_archiver").await?;
    let archived = end_of_load.archived - first.archived;
    Ok(LoadResult {
        archiver: archiver.to_string(),
        load_secs,
        wal_mib_per_sec: mib(end_of_load.wal_bytes) / load_secs,
        segments_written: end_of_load.wal_bytes as f64 / SEGMENT_SIZE as f64,
        segments_archived_during_load: archived,
        archived_per_sec_during_load: archived as f64 / load_secs,
        max_ready: samples.iter().map(|s| s.ready).max().unwrap_or(0),
        ready_at_end_of_load: end_of_load.ready,
        catch_up_secs: caught_up - load_secs,
        failed_attempts: failed_after - failed_before,
        samples,
    })
}

/// Measures archiving on a fresh rig.
pub(super) async fn run(args: &BenchArgs) -> Result<ArchiveReport> {
    let started_at = Utc::now();
    let ((postgres_version, per_segment, under_load, skipped), machine) =
        on_a_rig(args.keep, async |rig| measure(args, rig).await).await?;
    Ok(ArchiveReport {
        benchmark: "archive",
        started_at,
        finished_at: Utc::now(),
        pgdrill_version: env!("CARGO_PKG_VERSION"),
        postgres_version,
        machine,
        method: method(args),
        per_segment,
        under_load,
        skipped,
    })
}

type Measured = (String, Vec<LoopResult>, Vec<LoadResult>, Vec<String>);

async fn measure(args: &BenchArgs, rig: &Rig) -> Result<Measured> {
    let client = rig.primary().connect().await?;
    let version: String = query_value(&client, "SELECT current_setting('server_version')").await?;
    let scale = args.archive_scale.to_string();
    eprintln!("bench: pgbench -i -s {scale}");
    super::timed(
        rig.client("pgbench", ["-i", "-q", "-s", &scale]),
        "pgbench -i",
    )
    .await?;
    client
        .batch_execute("CREATE TABLE bench_bulk (id int, payload text)")
        .await?;
    let script = rig.dir("load")?.join("bulk.sql");
    std::fs::write(&script, BULK_SQL)?;
    if let Some(u) = rig.cluster.archive.run_as {
        u.chown_tree(&script)?;
    }
    let mut skipped = Vec::new();
    let pgbackrest = match PgBackRest::start(rig)? {
        Ok(p) => Some(p),
        Err(why) => {
            skipped.push(why);
            None
        }
    };
    let barman = on_path("barman-cloud-wal-archive");
    if !barman {
        skipped.push(
            "barman-cloud-wal-archive not measured: not installed (apt-get install barman-cli-cloud)"
                .into(),
        );
    }

    // Real pgbench WAL for the loop: written by transactions, archived,
    // copied out.
    eprintln!(
        "bench: writing {} segments of pgbench WAL for the per-segment loop",
        args.wal_segments
    );
    write_load_wal(
        rig,
        &client,
        args,
        &script,
        args.wal_segments * SEGMENT_SIZE,
    )
    .await?;
    let last = rig.switch_and_wait_archived(&client).await?;
    let real = rig.wal_files(&client, last, args.wal_segments).await?;
    let random = incompressible_segments(rig, args.wal_segments)?;
    let per_segment = tokio::task::block_in_place(|| {
        measure_loop(
            rig,
            pgbackrest.as_ref(),
            barman,
            &real,
            &random,
            args.repeat,
        )
    })?;

    // Under load: each archiver in turn on the same cluster.
    let pgdrill = &rig.cluster.archive.pgdrill;
    let mut under_load = Vec::new();
    let default_concurrency = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(2, 16);
    for concurrency in [1, default_concurrency] {
        let prefix = format!("load-c{concurrency}");
        let mut vars = rig.s3().settings(&prefix);
        vars.extend(super::tool_vars(0));
        vars.push(("WALG_UPLOAD_CONCURRENCY".into(), concurrency.to_string()));
        let env = rig.dir(&format!("env-{prefix}"))?;
        write_env_dir(&env, &vars, rig.cluster.archive.run_as)?;
        let command = format!(
            "{} --env-dir {} --log warn wal-push %p",
            pgdrill.display(),
            env.display()
        );
        set_archive_command(&client, &command).await?;
        under_load.push(
            measure_load(
                rig,
                &client,
                &format!("pgdrill wal-push, WALG_UPLOAD_CONCURRENCY={concurrency}"),
                args,
                &script,
            )
            .await?,
        );
    }
    if let Some(pbr) = &pgbackrest {
        for (async_push, what) in [(false, "sync"), (true, "async, process-max 2")] {
            let repo = format!(
                "load-pgbackrest-{}",
                if async_push { "async" } else { "sync" }
            );
            let conf = pbr.configure(rig, &repo, async_push)?;
            let command = format!(
                "pgbackrest --config={} --stanza=bench archive-push %p",
                conf.display()
            );
            set_archive_command(&client, &command).await?;
            under_load.push(
                measure_load(
                    rig,
                    &client,
                    &format!("pgBackRest archive-push ({what}, lz4)"),
                    args,
                    &script,
                )
                .await?,
            );
        }
    }
    Ok((version, per_segment, under_load, skipped))
}

fn method(args: &BenchArgs) -> Vec<String> {
    vec![
        format!("One cluster (initdb, pgbench -i -s {}; fsync = off, max_wal_size = 1GB) and the embedded S3 server on loopback; every tool writes to it (pgBackRest through stunnel, as it needs TLS).", args.archive_scale),
        format!("Per-segment loop: {} segments, each archived by its own process, sequentially, as PostgreSQL's archiver runs archive_command; a fresh destination per tool and repetition; {} repetitions with the order of tools rotated; median (min-max).", args.wal_segments, args.repeat),
        "CPU per segment: the tool's, the user and system time of the archiving processes (as the OS accounts it to the bench's ended children: the tool, and GNU time and setpriv around it), and the S3 server's, the embedded server's own (/proc), each during a loop divided by its segments, median of the repetitions. On this machine the storage's work (the body's MD5 for the ETag and SHA-256 for the signature, the file written) is CPU every push waits for and competes with, which remote storage's is not.".into(),
        "Into a local directory, no S3 server: the same pgdrill loop with WALG_FILE_PREFIX, each object synced to disk before wal-push exits; what the tool itself costs here, the storage's work left out (the server's hashing) or replaced (a local write and fsync).".into(),
        "Real pgbench WAL: segments written by the load below (pgbench's TPC-B-like transactions and bulk inserts), archived by the cluster, copied out of the archive. Incompressible: random bytes.".into(),
        format!("Under load: pgbench -n -c {} -j 2 -T {} with the TPC-B-like script (weight 9) and a bulk insert of 5000 rows (weight 1); sampled every second; after the load a segment switch, then the time until no segment is .ready.", args.clients, args.duration),
    ]
}

impl ArchiveReport {
    pub(super) fn markdown(&self) -> String {
        let mut md = format!(
            "# pgdrill bench archive, {}\n\npgdrill {}, PostgreSQL {}, {} CPUs, load average {:.2} at start, {:.2} at end.\n\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.pgdrill_version,
            self.postgres_version,
            self.machine.nproc,
            self.machine.load_average_start[0],
            self.machine.load_average_end[0],
        );
        md.push_str("## Per-segment loop (one process per segment)\n\n| tool | segments | segments/s, median (min-max) | ratio to pgdrill | goal | peak RSS | CPU per segment: tool / S3 server |\n|---|---|---:|---:|---|---:|---:|\n");
        let pgdrill_real = self
            .per_segment
            .iter()
            .find(|r| r.tool == LoopTool::PgdrillWalPush && r.content == "real pgbench WAL")
            .map(|r| r.median);
        for r in &self.per_segment {
            let ratio = match (pgdrill_real, r.content) {
                (Some(p), "real pgbench WAL") if r.tool.is_peer() => {
                    format!("{:.2}", r.median / p)
                }
                _ => String::new(),
            };
            let goal = match (r.tool, r.content) {
                (LoopTool::PgdrillWalPush, "real pgbench WAL") => Some(REAL_WAL_GOAL),
                (LoopTool::PgdrillWalPush, _) => Some(INCOMPRESSIBLE_GOAL),
                _ => None,
            }
            .map(|g| {
                format!(
                    "≥ {g} ({})",
                    if r.median >= g { "met" } else { "**missed**" }
                )
            })
            .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} × {} | {:.1} ({:.1}-{:.1}) | {ratio} | {goal} | {:.0} MiB | {:.0} ms / {} |",
                r.tool.name(),
                r.segments,
                r.content,
                r.median,
                r.min,
                r.max,
                mib(r.peak_rss_bytes),
                r.tool_cpu_ms_per_segment,
                r.storage_cpu_ms_per_segment
                    .map(|ms| format!("{ms:.0} ms"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        let budget = |goal: f64| self.machine.nproc as f64 * 1000.0 / goal;
        let _ = writeln!(
            md,
            "\nAt the goals, the {} CPUs have {:.0} ms (real WAL) and {:.0} ms (incompressible) of CPU per segment for tool and storage together.",
            self.machine.nproc,
            budget(REAL_WAL_GOAL),
            budget(INCOMPRESSIBLE_GOAL)
        );
        md.push_str("\n## Under load\n\n| archive_command | WAL written | segments archived during the load | lag (.ready) max / at end | catch-up after the load | failed attempts |\n|---|---:|---:|---:|---:|---:|\n");
        for r in &self.under_load {
            let _ = writeln!(
                md,
                "| {} | {:.1} MiB/s ({:.0} segments in {:.0} s) | {} ({:.1}/s) | {} / {} | {:.1} s | {} |",
                r.archiver,
                r.wal_mib_per_sec,
                r.segments_written,
                r.load_secs,
                r.segments_archived_during_load,
                r.archived_per_sec_during_load,
                r.max_ready,
                r.ready_at_end_of_load,
                r.catch_up_secs,
                r.failed_attempts
            );
        }
        push_skipped_and_method(&mut md, &self.skipped, &self.method);
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: LoopTool, content: &'static str, median: f64) -> LoopResult {
        LoopResult {
            tool,
            content,
            segments: 60,
            runs: vec![median],
            median,
            min: median,
            max: median,
            peak_rss_bytes: 40 * MIB,
            tool_cpu_ms_per_segment: 25.0,
            storage_cpu_ms_per_segment: tool.writes_to_s3().then_some(30.0),
        }
    }

    fn per_segment_line(md: &str, tool: LoopTool, content: &str) -> String {
        let start = format!("| {} | 60 × {content} |", tool.name());
        md.lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("no row {start} in\n{md}"))
            .to_string()
    }

    #[test]
    fn children_cpu_time_counts_a_child_that_burned_cpu() {
        let before = children_cpu_time();
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let burned = children_cpu_time() - before;
        assert!(burned >= Duration::from_millis(20), "{burned:?}");
    }

    /// The local-directory rows are pgdrill's own: no goal (the issue's
    /// goals are for the S3 loop), no ratio (that is for peers), no S3 CPU.
    #[test]
    fn directory_rows_carry_no_goal_ratio_or_storage_cpu() {
        let report = ArchiveReport {
            benchmark: "archive",
            started_at: Utc::now(),
            finished_at: Utc::now(),
            pgdrill_version: "0",
            postgres_version: "15".into(),
            machine: Machine {
                nproc: 2,
                load_average_start: [0.0; 3],
                load_average_end: [0.0; 3],
            },
            method: Vec::new(),
            per_segment: vec![
                row(LoopTool::PgdrillWalPush, "real pgbench WAL", 20.0),
                row(
                    LoopTool::PgdrillWalPushToDirectory,
                    "real pgbench WAL",
                    25.0,
                ),
                row(LoopTool::PgdrillWalPushToDirectory, "incompressible", 15.0),
                row(LoopTool::PgbackrestArchivePush, "real pgbench WAL", 10.0),
            ],
            under_load: Vec::new(),
            skipped: Vec::new(),
        };
        let md = report.markdown();
        let s3 = per_segment_line(&md, LoopTool::PgdrillWalPush, "real pgbench WAL");
        assert!(
            s3.contains("≥ 60 (**missed**)") && s3.contains("| 25 ms / 30 ms |"),
            "{s3}"
        );
        for content in ["real pgbench WAL", "incompressible"] {
            let dir = per_segment_line(&md, LoopTool::PgdrillWalPushToDirectory, content);
            assert!(
                dir.ends_with("|  |  | 40 MiB | 25 ms / - |"),
                "a directory row with a goal, ratio or S3 CPU: {dir}"
            );
        }
        let peer = per_segment_line(&md, LoopTool::PgbackrestArchivePush, "real pgbench WAL");
        assert!(peer.contains("| 0.50 |"), "{peer}");
        assert!(
            md.contains(
                "the 2 CPUs have 33 ms (real WAL) and 50 ms (incompressible) of CPU per segment"
            ),
            "{md}"
        );
    }
}
