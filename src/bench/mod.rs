//! `pgdrill bench backup`: backup and restore speed measured side by side
//! with `pg_basebackup` on one freshly loaded cluster. (`pgdrill bench
//! verify`, the cost of each check of a restore: [`verify`].)
//!
//! One run: `initdb` and `pgbench -i -s SCALE` with `archive_mode = on` and
//! `archive_command` = our `wal-push` into the embedded S3 server, then
//! 1. `pg_basebackup -Ft -X none -c fast` to local disk (no compression; the
//!    WAL comes from the archive, as for `backup-push`);
//! 2. `backup-push` (lz4) to the local S3;
//! 3. `backup-fetch` of that backup into an empty directory;
//! 4. after about `--replay-wal-mib` of pgbench WAL, two restores of that
//!    backup with `--recover`, `WALG_PREFETCH=8` then `0`, each timed from
//!    server start until `pg_is_in_recovery()` is false;
//! 5. wal-push throughput: the last `--wal-segments` archived segments are
//!    copied out of the archive and pushed into a fresh prefix, one process
//!    per segment as `archive_command` runs it.
//!
//! Every command's wall time is measured around it, and its peak RSS comes
//! from GNU time (see [`measured`]). Figures and goals go to
//! `<report-dir>/bench/backup-<UTC time>.json` and `.md`; the Markdown is
//! printed at the end. Missing a goal is a result, not an error: the exit
//! code is 0 unless the run itself failed.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_postgres::types::FromSql;
use tokio_postgres::Client;

use crate::backup::catalog::BackupListRow;
use crate::backup::codec::Compression;
use crate::backup::config::{EnvVars, Settings};
use crate::backup::layout::{self, Segment, DEFAULT_WAL_SEGMENT_SIZE};
use crate::backup::pg::pg_error_text;
use crate::env::local::{
    as_user, run_checked, ArchiveStorage, ArchivingCluster, InitOptions, LocalPostgres, LocalS3,
};

mod archive;
mod verify;

/// Arguments of `pgdrill bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure: `backup` (backup, restore and wal-push speed),
    /// `archive` (whether archiving keeps up: wal-push and its peers one
    /// process per segment, then under a pgbench load) or `verify` (what
    /// each check of a restore costs, over drills of `--scenario`).
    #[arg(default_value = "backup")]
    pub what: String,
    /// `verify`: the drill whose restores are measured.
    #[arg(long, default_value = "scenarios/quick.yaml")]
    pub scenario: PathBuf,
    /// `verify`: how many drills (different seeds) are run; `archive`: how
    /// many times the per-segment loop runs each tool (order rotated).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// `backup`: pgbench scale of the loaded cluster (100 is about 1.5 GB).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub scale: u32,
    /// `archive`: pgbench scale of the cluster (the load writes WAL; the
    /// database size matters little).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub archive_scale: u32,
    /// `archive`: seconds of pgbench load per archiver.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..))]
    pub duration: u64,
    /// `archive`: pgbench clients of the load.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Where figures go (`<dir>/bench/backup-<date>.json` and `.md`).
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,
    /// WAL segments (16 MiB each) pushed, one process each, for the
    /// throughput figures (`archive`: per tool and kind of content).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub wal_segments: u64,
    /// MiB of WAL written with pgbench after the base backup and replayed by
    /// each restore.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub replay_wal_mib: u64,
    /// Keep the work directory (data directories, archive, server logs);
    /// servers are stopped either way.
    #[arg(long)]
    pub keep: bool,
}

const SEGMENT_SIZE: u64 = DEFAULT_WAL_SEGMENT_SIZE;
const MIB: u64 = 1 << 20;
const BUCKET: &str = "bench";
/// Prefix of the primary's archive and backups.
const ARCHIVE_PREFIX: &str = "archive";
/// Fresh prefix the wal-push throughput is measured into.
const WAL_PUSH_PREFIX: &str = "wal-push";
/// `WALG_PREFETCH` of the restore with prefetch on.
const PREFETCH_ON: u32 = 8;
/// The brief's goals.
const PUSH_RATIO_GOAL: f64 = 1.25;
const FETCH_RATIO_GOAL: f64 = 1.0;
const WAL_PUSH_RATE_GOAL: f64 = 60.0;
const WAL_PUSH_RSS_GOAL_MIB: f64 = 64.0;
const BACKUP_PUSH_RSS_GOAL_MIB: f64 = 256.0;
/// Longest wait for the archiver, and for a restore to finish recovery.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(1800);
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The server settings of the loaded primary.
const PRIMARY_SETTINGS: [(&str, &str); 2] = [("max_wal_size", "1GB"), ("fsync", "off")];
/// How WAL is written between measurements: short pgbench runs, until
/// enough has been written.
const PGBENCH_CHUNK: [&str; 7] = ["-n", "-c", "4", "-j", "2", "-T", "3"];

/// Runs the benchmark; returns the exit code.
pub async fn run(args: BenchArgs) -> Result<i32> {
    let (json, markdown, stem) = match args.what.as_str() {
        "backup" => {
            let report = bench_backup(&args).await?;
            let stem = format!("backup-{}", report.started_at.format("%Y%m%dT%H%M%SZ"));
            (serde_json::to_value(&report)?, report.markdown(), stem)
        }
        "archive" => {
            let report = archive::run(&args).await?;
            let stem = format!("archive-{}", report.started_at.format("%Y%m%dT%H%M%SZ"));
            (serde_json::to_value(&report)?, report.markdown(), stem)
        }
        "verify" => {
            let report = verify::run(&args).await?;
            let stem = format!("verify-{}", report.started_at.format("%Y%m%dT%H%M%SZ"));
            (serde_json::to_value(&report)?, report.markdown(), stem)
        }
        other => bail!("unknown benchmark {other:?}: use `backup`, `archive` or `verify`"),
    };
    let written = write_report(&args.report_dir, &stem, &json, &markdown);
    print!("{markdown}");
    let (json, md) = written?;
    eprintln!("bench: figures in {} and {}", json.display(), md.display());
    Ok(0)
}

/// Wall time and peak resident set size of one finished command.
#[derive(Debug, Clone, Copy, Serialize)]
struct Timed {
    wall_secs: f64,
    peak_rss_bytes: u64,
}

/// A command that succeeded: its figures and its standard output.
#[derive(Debug)]
struct Finished {
    timed: Timed,
    stdout: String,
}

/// GNU time, which reports the peak RSS of the command it runs.
const GNU_TIME: &str = "/usr/bin/time";

/// `cmd` run as the server user under GNU time, which writes the
/// command's peak RSS (KiB) to `rss_file`. Not `wait4` on our own child:
/// a child forked from the bench inherits the bench's resident pages in
/// its `ru_maxrss` (a forked `/bin/true` of a 200 MiB parent reports
/// 200 MiB; `posix_spawn` passes on the parent's high-water mark instead),
/// which made every tool look as large as the bench. GNU time is small, so
/// what it forks starts small; `setpriv` then takes the server user
/// without another fork.
fn measured(cmd: &Command, rss_file: &Path) -> Result<Command> {
    if !Path::new(GNU_TIME).is_file() {
        bail!("{GNU_TIME} is needed to measure peak memory: apt-get install time (ci/setup-bench)");
    }
    let mut measured = Command::new(GNU_TIME);
    measured.args(["-f", "%M", "-o"]).arg(rss_file).arg("--");
    if let Some(u) = crate::env::local::RunAs::detect()? {
        measured
            .arg("setpriv")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--clear-groups")
            .arg("--");
    }
    measured.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => measured.env(k, v),
            None => measured.env_remove(k),
        };
    }
    measured.current_dir(cmd.get_current_dir().unwrap_or(Path::new("/")));
    Ok(measured)
}

/// GNU time's `%M` (KiB; the last line, after any "Command exited with
/// non-zero status") in bytes.
fn peak_rss_of(report: &str) -> Option<u64> {
    report
        .lines()
        .last()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// Runs `cmd` to completion as the server user, with stdin closed and
/// stdout/stderr captured, and measures it; a failure carries the end of
/// its stderr.
fn run_timed(cmd: Command, what: &str) -> Result<Finished> {
    let rss_file = tempfile::NamedTempFile::new().context("creating a file for peak RSS")?;
    let mut cmd = measured(&cmd, rss_file.path())?;
    let capture = || tempfile::tempfile().context("creating a file for a command's output");
    let (mut out, mut err) = (capture()?, capture()?);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().context("sharing a capture file")?)
        .stderr(err.try_clone().context("sharing a capture file")?);
    let started = Instant::now();
    let status = cmd
        .spawn()
        .with_context(|| format!("starting {what}"))?
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    let wall_secs = started.elapsed().as_secs_f64();
    let stdout = read_capture(&mut out)?;
    if !status.success() {
        let stderr = read_capture(&mut err)?;
        bail!("{what} failed ({status}):\n{}", last_lines(&stderr, 20));
    }
    let report = std::fs::read_to_string(rss_file.path()).context("reading GNU time's report")?;
    let peak_rss_bytes = peak_rss_of(&report)
        .with_context(|| format!("GNU time reported no peak RSS for {what}: {report:?}"))?;
    Ok(Finished {
        timed: Timed {
            wall_secs,
            peak_rss_bytes,
        },
        stdout,
    })
}

fn read_capture(file: &mut File) -> Result<String> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .context("reading a command's captured output")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs blocking work (child processes, `pg_ctl`) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task panicked")?
}

/// [`run_timed`] off the async workers.
async fn timed(cmd: Command, what: &str) -> Result<Finished> {
    let what = what.to_string();
    blocking(move || run_timed(cmd, &what)).await
}

/// One value of a query without parameters.
async fn query_value<T: for<'a> FromSql<'a>>(client: &Client, sql: &str) -> Result<T> {
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| anyhow!("{sql}: {}", pg_error_text(&e)))?;
    row.try_get(0)
        .map_err(|e| anyhow!("reading the result of {sql}: {e}"))
}

/// Creates `work/name`, owned by the server user.
/// The backup tool settings of every bench archive: lz4, with
/// `WALG_PREFETCH`.
fn tool_vars(prefetch: u32) -> Vec<(String, String)> {
    vec![
        ("WALG_COMPRESSION_METHOD".into(), "lz4".into()),
        ("WALG_PREFETCH".into(), prefetch.to_string()),
    ]
}

/// The loaded primary archiving into the local S3 (the archiving-cluster
/// fixture the local environment and the tests use too).
struct Rig {
    cluster: ArchivingCluster,
}

impl Rig {
    /// Starts the S3 server and an empty archiving primary (prefetch off)
    /// in a work directory `pgdrill-bench-…`.
    fn start(exe: &Path) -> Result<Rig> {
        let storage = ArchiveStorage::S3 {
            bucket: BUCKET.into(),
            prefix: ARCHIVE_PREFIX.into(),
        };
        let cluster = ArchivingCluster::start(
            exe,
            "pgdrill-bench-",
            &storage,
            &tool_vars(0),
            &InitOptions::default(),
            &PRIMARY_SETTINGS,
            crate::env::local::DEFAULT_MAJOR,
        )?;
        Ok(Rig { cluster })
    }

    fn primary(&self) -> &LocalPostgres {
        &self.cluster.primary
    }

    fn s3(&self) -> &LocalS3 {
        self.cluster
            .archive
            .s3
            .as_ref()
            .expect("the bench archive is on S3")
    }

    fn dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.cluster.archive.dir(name)?)
    }

    /// Writes an env dir `name` for `prefix` with `WALG_PREFETCH=prefetch`.
    fn env_dir(&self, name: &str, prefix: &str, prefetch: u32) -> Result<PathBuf> {
        let mut vars = self.s3().settings(prefix);
        vars.extend(tool_vars(prefetch));
        Ok(self.cluster.archive.env_dir_with(name, &vars)?)
    }

    /// `pgdrill --env-dir ENV ARGS` as the server user, with the primary's
    /// connection settings.
    fn pgdrill<S: AsRef<OsStr>>(&self, env: &Path, args: impl IntoIterator<Item = S>) -> Command {
        let mut cmd = self.cluster.archive.tool_command(env, Some(self.primary()));
        cmd.args(args);
        cmd
    }

    /// `pgdrill` with the primary's archive's env dir.
    fn archive_tool<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        self.pgdrill(&self.cluster.archive.env_dir, args)
    }

    /// A client tool (pgbench, pg_basebackup) against the primary.
    fn client<S: AsRef<OsStr>>(&self, tool: &str, args: impl IntoIterator<Item = S>) -> Command {
        let mut cmd = self.primary().client_tool(tool);
        cmd.args(args);
        cmd
    }

    /// A checkpoint, then every WAL segment archived: nothing left over
    /// from earlier work competes with the next measurement.
    async fn settle(&self, client: &Client) -> Result<Segment> {
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| anyhow!("CHECKPOINT: {}", pg_error_text(&e)))?;
        self.switch_and_wait_archived(client).await
    }

    /// Forces a segment switch and waits until the archiver has stored the
    /// segment; returns it.
    async fn switch_and_wait_archived(&self, client: &Client) -> Result<Segment> {
        let name = crate::env::pg::switch_and_wait_archived(client, ARCHIVE_TIMEOUT)
            .await
            .with_context(|| format!("server log:\n{}", self.primary().log_tail(20)))?;
        Segment::parse(&name, SEGMENT_SIZE)
            .with_context(|| format!("{name:?} is not a WAL segment name"))
    }

    /// Runs pgbench in short rounds until at least `bytes` of WAL are
    /// written; returns how much was written and how long it took.
    async fn write_wal(&self, client: &Client, bytes: u64) -> Result<GeneratedWal> {
        let start: String = query_value(client, "SELECT pg_current_wal_lsn()::text").await?;
        let written_sql =
            format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}')::bigint");
        let started = Instant::now();
        loop {
            let written =
                u64::try_from(query_value::<i64>(client, &written_sql).await?).unwrap_or(0);
            if written >= bytes {
                return Ok(GeneratedWal {
                    bytes: written,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
            eprintln!(
                "bench: {} of {} MiB of WAL written",
                written / MIB,
                bytes / MIB
            );
            timed(self.client("pgbench", PGBENCH_CHUNK), "pgbench").await?;
        }
    }

    /// Restores `backup` with `--recover` and `WALG_PREFETCH=prefetch`,
    /// starts a server on it and times recovery until promotion.
    async fn replay(&self, backup: &str, prefetch: u32) -> Result<ReplayRun> {
        eprintln!("bench: restore and replay with WALG_PREFETCH={prefetch}");
        let env = self.env_dir(
            &format!("env-prefetch-{prefetch}"),
            ARCHIVE_PREFIX,
            prefetch,
        )?;
        let base = self.dir(&format!("replay-prefetch-{prefetch}"))?;
        let data = base.join("data");
        let fetch_args: [&OsStr; 5] = [
            "backup-fetch".as_ref(),
            data.as_os_str(),
            backup.as_ref(),
            "--recover".as_ref(),
            "--no-archive".as_ref(),
        ];
        let fetch = timed(self.pgdrill(&env, fetch_args), "backup-fetch --recover").await?;
        let mut pg = LocalPostgres::existing(
            &self.primary().bin,
            &base,
            &data,
            self.cluster.archive.run_as,
        )?;
        let started = Instant::now();
        let pg = blocking(move || match pg.start(RECOVERY_TIMEOUT) {
            Ok(()) => Ok(pg),
            Err(e) => {
                // pg_ctl may give up waiting while the server still runs.
                let mut stop = pg.bin.tool("pg_ctl");
                stop.args(["stop", "-m", "immediate", "-D"])
                    .arg(&pg.data_dir);
                let _ = run_checked(as_user(&mut stop, pg.run_as), "pg_ctl stop");
                Err(e.into())
            }
        })
        .await?;
        wait_promoted(&pg).await?;
        let replay_secs = started.elapsed().as_secs_f64();
        eprintln!("bench: replay with WALG_PREFETCH={prefetch} took {replay_secs:.1} s");
        blocking(move || {
            let mut pg = pg;
            Ok(pg.stop("immediate")?)
        })
        .await?;
        remove_dir(&base).await?;
        Ok(ReplayRun {
            prefetch,
            backup_fetch: fetch.timed,
            replay_secs,
        })
    }

    /// Copies the `count` segments up to `last` out of the archive into a
    /// directory of their own (writing more WAL first when the archive has
    /// fewer).
    async fn wal_files(
        &self,
        client: &Client,
        mut last: Segment,
        count: u64,
    ) -> Result<Vec<PathBuf>> {
        if last.segno < count {
            let missing = (count - last.segno + 1) * SEGMENT_SIZE;
            eprintln!(
                "bench: the archive has {} segments; writing {} MiB more WAL",
                last.segno,
                missing / MIB
            );
            self.write_wal(client, missing).await?;
            last = self.switch_and_wait_archived(client).await?;
        }
        eprintln!("bench: copying {count} archived segments out for wal-push");
        let dir = self.dir("wal-push-source")?;
        let vars = &self.cluster.archive.storage_vars;
        let settings = Settings::from_vars(&EnvVars::from_pairs(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))?;
        let ctx = crate::backup::Context::open(settings, None)?;
        let names = (last.segno + 1 - count..=last.segno).map(|segno| {
            Segment {
                timeline: last.timeline,
                segno,
            }
            .file_name(SEGMENT_SIZE)
        });
        let (ctx, dir_ref) = (&ctx, &dir);
        let files: Vec<PathBuf> = futures::stream::iter(names)
            .map(|name| async move {
                let key = layout::wal_key(&name, Compression::Lz4);
                let (data, _) = ctx
                    .fetch_object(&key)
                    .await
                    .with_context(|| format!("fetching {name} from the archive"))?;
                let path = dir_ref.join(&name);
                tokio::fs::write(&path, data)
                    .await
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok::<_, anyhow::Error>(path)
            })
            .buffered(4)
            .try_collect()
            .await?;
        if let Some(u) = self.cluster.archive.run_as {
            u.chown_tree(&dir)?;
        }
        Ok(files)
    }

    /// Pushes each file into a fresh prefix with its own `wal-push`
    /// process, one after the other, as the archiver does.
    async fn push_each(&self, files: &[PathBuf]) -> Result<WalPush> {
        eprintln!(
            "bench: wal-push of {} segments, one process each",
            files.len()
        );
        let env = self.env_dir("env-wal-push", WAL_PUSH_PREFIX, 0)?;
        let cmds: Vec<Command> = files
            .iter()
            .map(|f| self.pgdrill(&env, [OsStr::new("wal-push"), f.as_os_str()]))
            .collect();
        blocking(move || {
            let segments = cmds.len() as u64;
            let started = Instant::now();
            let (mut slowest_secs, mut peak_rss_bytes) = (0.0_f64, 0);
            for cmd in cmds {
                let t = run_timed(cmd, "wal-push")?.timed;
                slowest_secs = slowest_secs.max(t.wall_secs);
                peak_rss_bytes = peak_rss_bytes.max(t.peak_rss_bytes);
            }
            let wall_secs = started.elapsed().as_secs_f64();
            Ok(WalPush {
                segments,
                wall_secs,
                segments_per_sec: segments as f64 / wall_secs,
                slowest_secs,
                peak_rss_bytes,
            })
        })
        .await
    }

    /// The catalog entry of `backup` (sizes).
    async fn backup_row(&self, backup: &str) -> Result<BackupListRow> {
        let list = timed(self.archive_tool(["backup-list", "--json"]), "backup-list").await?;
        let all: Vec<BackupListRow> =
            serde_json::from_str(&list.stdout).context("parsing backup-list --json")?;
        all.into_iter()
            .find(|b| b.backup_name == backup)
            .with_context(|| format!("backup-list does not show {backup}"))
    }
}

/// Waits until `pg` has left recovery.
async fn wait_promoted(pg: &LocalPostgres) -> Result<()> {
    let client = pg.connect().await?;
    let log_tail = || async { pg.log_tail(20) };
    crate::env::pg::wait_promoted(&client, "bench restore", RECOVERY_TIMEOUT, log_tail).await?;
    Ok(())
}

async fn remove_dir(dir: &Path) -> Result<()> {
    tokio::fs::remove_dir_all(dir)
        .await
        .with_context(|| format!("removing {}", dir.display()))
}

/// Total size of the files directly in `dir` (a `pg_basebackup -Ft` output).
fn files_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let meta = entry
            .and_then(|e| e.metadata())
            .with_context(|| format!("reading {}", dir.display()))?;
        total += meta.len();
    }
    Ok(total)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
fn load_average() -> Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    let mut next = || {
        fields
            .next()
            .and_then(|f| f.ok())
            .with_context(|| format!("unexpected /proc/loadavg: {text:?}"))
    };
    Ok([next()?, next()?, next()?])
}

#[derive(Debug, Serialize)]
struct GeneratedWal {
    bytes: u64,
    secs: f64,
}

#[derive(Debug, Serialize)]
struct WalPush {
    segments: u64,
    wall_secs: f64,
    segments_per_sec: f64,
    slowest_secs: f64,
    peak_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
struct ReplayRun {
    prefetch: u32,
    backup_fetch: Timed,
    /// From server start until `pg_is_in_recovery()` is false.
    replay_secs: f64,
}

#[derive(Debug, Serialize)]
struct Replay {
    /// WAL written after the base backup (replayed by each restore).
    wal: GeneratedWal,
    prefetch_on: ReplayRun,
    prefetch_off: ReplayRun,
}

/// Every raw figure of a run.
#[derive(Debug, Serialize)]
struct Figures {
    pgbench_init: Timed,
    /// Sum of `pg_database_size` over all databases after the load.
    database_bytes: u64,
    pg_basebackup: Timed,
    pg_basebackup_output_bytes: u64,
    backup_push: Timed,
    backup_name: String,
    backup_uncompressed_bytes: u64,
    backup_compressed_bytes: u64,
    backup_fetch: Timed,
    replay: Replay,
    wal_push: WalPush,
}

/// Loads the cluster and measures everything, in order; returns the
/// server's version too.
async fn measure(args: &BenchArgs, rig: &Rig) -> Result<(String, Figures)> {
    let client = rig.primary().connect().await?;
    let version: String = query_value(&client, "SELECT current_setting('server_version')").await?;
    eprintln!("bench: pgbench -i -s {}", args.scale);
    let scale = args.scale.to_string();
    let init = timed(
        rig.client("pgbench", ["-i", "-q", "-s", &scale]),
        "pgbench -i",
    )
    .await?;
    let database_bytes = u64::try_from(
        query_value::<i64>(
            &client,
            "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
        )
        .await?,
    )
    .unwrap_or(0);
    eprintln!(
        "bench: loaded {} MiB in {:.1} s; waiting for the archiver",
        database_bytes / MIB,
        init.timed.wall_secs
    );
    rig.settle(&client).await?;

    eprintln!("bench: pg_basebackup -Ft -X none -c fast");
    let out = rig.dir("pg_basebackup")?.join("out");
    let mut basebackup_args: Vec<&OsStr> = ["-Ft", "-X", "none", "-c", "fast", "-D"]
        .map(OsStr::new)
        .to_vec();
    basebackup_args.push(out.as_os_str());
    let basebackup = timed(
        rig.client("pg_basebackup", basebackup_args),
        "pg_basebackup",
    )
    .await?;
    let basebackup_bytes = files_size(&out)?;
    remove_dir(&out).await?;
    eprintln!(
        "bench: pg_basebackup took {:.1} s",
        basebackup.timed.wall_secs
    );
    rig.settle(&client).await?;

    eprintln!("bench: backup-push");
    let data_dir = rig.primary().data_dir.as_os_str();
    let push = timed(
        rig.archive_tool([OsStr::new("backup-push"), data_dir]),
        "backup-push",
    )
    .await?;
    let name = push
        .stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| l.starts_with("base_"))
        .with_context(|| format!("backup-push did not print a backup name: {:?}", push.stdout))?
        .to_string();
    let listed = rig.backup_row(&name).await?;
    eprintln!(
        "bench: backup-push of {name} took {:.1} s",
        push.timed.wall_secs
    );

    eprintln!("bench: backup-fetch");
    let dest = rig.dir("fetch")?.join("data");
    let fetch_args = [
        OsStr::new("backup-fetch"),
        dest.as_os_str(),
        OsStr::new(&name),
    ];
    let fetch = timed(rig.archive_tool(fetch_args), "backup-fetch").await?;
    remove_dir(&dest).await?;
    eprintln!("bench: backup-fetch took {:.1} s", fetch.timed.wall_secs);

    eprintln!(
        "bench: writing {} MiB of WAL to replay",
        args.replay_wal_mib
    );
    let wal = rig.write_wal(&client, args.replay_wal_mib * MIB).await?;
    let last = rig.switch_and_wait_archived(&client).await?;
    let prefetch_on = rig.replay(&name, PREFETCH_ON).await?;
    let prefetch_off = rig.replay(&name, 0).await?;

    let files = rig.wal_files(&client, last, args.wal_segments).await?;
    let wal_push = rig.push_each(&files).await?;
    eprintln!(
        "bench: wal-push: {:.1} segments/s",
        wal_push.segments_per_sec
    );

    let figures = Figures {
        pgbench_init: init.timed,
        database_bytes,
        pg_basebackup: basebackup.timed,
        pg_basebackup_output_bytes: basebackup_bytes,
        backup_push: push.timed,
        backup_name: name,
        backup_uncompressed_bytes: listed.uncompressed_size,
        backup_compressed_bytes: listed.compressed_size,
        backup_fetch: fetch.timed,
        replay: Replay {
            wal,
            prefetch_on,
            prefetch_off,
        },
        wal_push,
    };
    Ok((version, figures))
}

/// Starts a rig, runs `measure` on it and tears it down, also on error
/// (dropping the rig stops the servers; dropping the work dir removes it
/// unless `keep`); returns the figures and the machine they were taken on.
async fn on_a_rig<T>(
    keep: bool,
    measure: impl AsyncFnOnce(&Rig) -> Result<T>,
) -> Result<(T, Machine)> {
    let load_average_start = load_average()?;
    let exe = std::env::current_exe().context("locating the pgdrill binary")?;
    let rig = blocking(move || Rig::start(&exe)).await?;
    eprintln!(
        "bench: working in {}",
        rig.cluster.archive.work.path().display()
    );
    let measured = measure(&rig).await;
    // Stopping the servers waits for them: off the async workers.
    blocking(move || {
        let mut rig = rig;
        if keep {
            eprintln!("bench: kept {}", rig.cluster.archive.work.keep().display());
        }
        drop(rig);
        Ok(())
    })
    .await?;
    let measured = measured?;
    let machine = Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average_start,
        load_average_end: load_average()?,
    };
    Ok((measured, machine))
}

/// Measures backup and restore on a fresh rig.
async fn bench_backup(args: &BenchArgs) -> Result<Report> {
    let started_at = Utc::now();
    let ((postgres_version, figures), machine) =
        on_a_rig(args.keep, async |rig| measure(args, rig).await).await?;
    let results = results(&figures);
    Ok(Report {
        benchmark: "backup",
        started_at,
        finished_at: Utc::now(),
        pgdrill_version: env!("CARGO_PKG_VERSION"),
        postgres_version,
        scale: args.scale,
        machine,
        method: METHOD.to_vec(),
        goals_met: results.iter().all(|r| r.ok != Some(false)),
        results,
        figures,
    })
}

/// How the figures are taken (in both report files).
const METHOD: [&str; 6] = [
    "One cluster (initdb, pgbench -i; fsync = off, max_wal_size = 1GB, archive_command = pgdrill wal-push into the embedded S3 server on loopback, lz4); a CHECKPOINT and an idle archiver before each backup.",
    "pg_basebackup -Ft -X none -c fast to local disk: no compression, WAL left to the archive as with backup-push; it fsyncs its output and waits for the WAL to be archived, as backup-push waits in pg_backup_stop.",
    "backup-push and backup-fetch with WAL-G default concurrency (nproc clamped to 2..16); backup-fetch into an empty directory, synced at the end.",
    "Replay: the same base backup restored with backup-fetch --recover --no-archive, WALG_PREFETCH=8 first, then 0 (a warm page cache favours the second); timed from pg_ctl start until pg_is_in_recovery() is false.",
    "wal-push: the newest archived segments copied out of the archive, then each pushed by its own pgdrill wal-push process into a fresh prefix, sequentially as the archiver runs them (no archive_status directory, so no upload-ahead).",
    "Peak RSS: GNU time's %M of each command (its own, not inherited from the bench); wall times are measured around each command.",
];

#[derive(Debug, Serialize)]
struct Machine {
    nproc: usize,
    load_average_start: [f64; 3],
    load_average_end: [f64; 3],
}

/// A goal's limit.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Bound {
    AtMost(f64),
    Below(f64),
    AtLeast(f64),
}

impl Bound {
    fn holds(self, x: f64) -> bool {
        match self {
            Bound::AtMost(l) => x <= l,
            Bound::Below(l) => x < l,
            Bound::AtLeast(l) => x >= l,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtMost(l) => format!("≤ {l}"),
            Bound::Below(l) => format!("< {l}"),
            Bound::AtLeast(l) => format!("≥ {l}"),
        }
    }
}

/// What a goal is about: the row's value or its ratio.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Subject {
    Value,
    Ratio,
}

#[derive(Debug, Serialize)]
struct Goal {
    of: Subject,
    bound: Bound,
}

/// One line of the summary table.
#[derive(Debug, Serialize)]
struct Row {
    measure: String,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
    /// What the ratio is (e.g. "backup-push / pg_basebackup").
    ratio_of: Option<&'static str>,
    goal: Option<Goal>,
    ok: Option<bool>,
}

impl Row {
    fn new(measure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            measure: measure.into(),
            value,
            unit,
            ratio: None,
            ratio_of: None,
            goal: None,
            ok: None,
        }
    }

    fn ratio(mut self, ratio: f64, of: &'static str) -> Row {
        self.ratio = Some(ratio);
        self.ratio_of = Some(of);
        self
    }

    fn goal(mut self, of: Subject, bound: Bound) -> Row {
        let x = match of {
            Subject::Value => Some(self.value),
            Subject::Ratio => self.ratio,
        };
        self.ok = x.map(|x| bound.holds(x));
        self.goal = Some(Goal { of, bound });
        self
    }

    fn goal_text(&self) -> String {
        match &self.goal {
            None => String::new(),
            Some(Goal {
                of: Subject::Value,
                bound,
            }) => format!("{} {}", bound.text(), self.unit),
            Some(Goal {
                of: Subject::Ratio,
                bound,
            }) => format!("ratio {}", bound.text()),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// The summary rows: measures, ratios and goals.
fn results(f: &Figures) -> Vec<Row> {
    let replay_mib = mib(f.replay.wal.bytes);
    let base = f.pg_basebackup.wall_secs;
    let on = f.replay.prefetch_on.replay_secs;
    let off = f.replay.prefetch_off.replay_secs;
    vec![
        Row::new("pg_basebackup -Ft -X none -c fast", base, "s"),
        Row::new("backup-push (lz4, local S3)", f.backup_push.wall_secs, "s")
            .ratio(
                f.backup_push.wall_secs / base,
                "backup-push / pg_basebackup",
            )
            .goal(Subject::Ratio, Bound::AtMost(PUSH_RATIO_GOAL)),
        Row::new(
            "backup-push peak RSS",
            mib(f.backup_push.peak_rss_bytes),
            "MiB",
        )
        .goal(Subject::Value, Bound::Below(BACKUP_PUSH_RSS_GOAL_MIB)),
        Row::new(
            "backup-fetch (empty directory)",
            f.backup_fetch.wall_secs,
            "s",
        )
        .ratio(
            f.backup_fetch.wall_secs / base,
            "backup-fetch / pg_basebackup",
        )
        .goal(Subject::Ratio, Bound::AtMost(FETCH_RATIO_GOAL)),
        Row::new(
            "backup-fetch peak RSS",
            mib(f.backup_fetch.peak_rss_bytes),
            "MiB",
        ),
        Row::new(
            format!(
                "wal-push, {} × 16 MiB, one process each",
                f.wal_push.segments
            ),
            f.wal_push.segments_per_sec,
            "segments/s",
        )
        .goal(Subject::Value, Bound::AtLeast(WAL_PUSH_RATE_GOAL)),
        Row::new("wal-push peak RSS", mib(f.wal_push.peak_rss_bytes), "MiB")
            .goal(Subject::Value, Bound::Below(WAL_PUSH_RSS_GOAL_MIB)),
        Row::new(
            format!("replay of {replay_mib:.0} MiB of WAL, WALG_PREFETCH={PREFETCH_ON}"),
            on,
            "s",
        ),
        Row::new(
            format!("replay of {replay_mib:.0} MiB of WAL, WALG_PREFETCH=0"),
            off,
            "s",
        )
        .ratio(off / on, "prefetch off / prefetch on"),
    ]
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    pgdrill_version: &'static str,
    postgres_version: String,
    scale: u32,
    machine: Machine,
    method: Vec<&'static str>,
    results: Vec<Row>,
    goals_met: bool,
    figures: Figures,
}

impl Report {
    fn markdown(&self) -> String {
        let f = &self.figures;
        let m = &self.machine;
        let mut md = format!(
            "# pgdrill bench backup, {}\n\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        // Writing to a String cannot fail.
        let _ = writeln!(
            md,
            "pgdrill {}, PostgreSQL {}, pgbench scale {}: database {:.0} MiB, backup {:.0} MiB ({:.0} MiB lz4), pg_basebackup tar {:.0} MiB. \
             {} CPUs, load average {:.2} at start, {:.2} at end (1 min; other work on the machine shows here).\n",
            self.pgdrill_version,
            self.postgres_version,
            self.scale,
            mib(f.database_bytes),
            mib(f.backup_uncompressed_bytes),
            mib(f.backup_compressed_bytes),
            mib(f.pg_basebackup_output_bytes),
            m.nproc,
            m.load_average_start[0],
            m.load_average_end[0],
        );
        md.push_str("| measure | value | goal | ratio | ok |\n|---|---:|---|---:|---|\n");
        for r in &self.results {
            let ratio = match (r.ratio, r.ratio_of) {
                (Some(x), Some(of)) => format!("{x:.2} ({of})"),
                _ => String::new(),
            };
            let ok = match r.ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                md,
                "| {} | {:.2} {} | {} | {} | {} |",
                r.measure,
                r.value,
                r.unit,
                r.goal_text(),
                ratio,
                ok
            );
        }
        md.push('\n');
        md.push_str(if self.goals_met {
            "All goals met.\n"
        } else {
            "Some goals missed.\n"
        });
        md.push_str("\nMethod:\n\n");
        for line in &self.method {
            let _ = writeln!(md, "- {line}");
        }
        md
    }
}

/// Writes `<dir>/bench/<stem>.json` and `.md`.
fn write_report(
    dir: &Path,
    stem: &str,
    report: &serde_json::Value,
    markdown: &str,
) -> Result<(PathBuf, PathBuf)> {
    let dir = dir.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join(format!("{stem}.json"));
    let md_path = dir.join(format!("{stem}.md"));
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    Ok((json_path, md_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peak RSS of a measured command is its own: `/bin/true` run by a
    /// bench holding 200 MiB is small (a forked child's `ru_maxrss` said
    /// 200 MiB).
    #[test]
    fn a_commands_peak_rss_is_not_the_benchs() {
        let held: Vec<u8> = vec![1; 200 << 20];
        let t = run_timed(Command::new("/bin/true"), "true").unwrap().timed;
        assert!(held.iter().step_by(4096).all(|&b| b == 1));
        assert!(
            t.peak_rss_bytes > 0 && t.peak_rss_bytes < 20 * MIB,
            "{} MiB",
            t.peak_rss_bytes / MIB
        );
    }

    #[test]
    fn gnu_times_report_gives_the_peak_after_any_exit_note() {
        assert_eq!(peak_rss_of("1234\n"), Some(1234 * 1024));
        assert_eq!(
            peak_rss_of("Command exited with non-zero status 1\n2048\n"),
            Some(2048 * 1024)
        );
        assert_eq!(peak_rss_of(""), None);
    }
}
