//! `pgdrill bench`: speed measured side by side with the tools users
//! compare pgdrill with, on one freshly loaded cluster archiving into the
//! embedded S3 server (the [`Rig`]). `backup`: backup, restore, replay and
//! wal-push ([`backup`]); `archive`: whether archiving keeps up with a busy
//! primary ([`archive`]); `verify`: the cost of each check of a restore
//! ([`verify`]). The peers (pgBackRest, barman-cloud) are in [`peers`].
//!
//! Every command's wall time is measured around it, and its peak RSS comes
//! from GNU time (see [`measured`]); figures go to
//! `<report-dir>/bench/<benchmark>-<UTC time>.json` and `.md`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_postgres::types::FromSql;
use tokio_postgres::Client;

use crate::backup::codec::Compression;
use crate::backup::config::{EnvVars, Settings};
use crate::backup::layout::{self, Segment, DEFAULT_WAL_SEGMENT_SIZE};
use crate::backup::pg::pg_error_text;
use crate::env::local::{ArchiveStorage, ArchivingCluster, InitOptions, LocalPostgres, LocalS3};

mod archive;
mod backup;
mod peers;
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
    /// `backup`: how many times each tool backs up and restores, and each
    /// source of WAL is replayed (order rotated); `verify`: how many drills
    /// (different seeds) are run; `archive`: how many times the
    /// per-segment loop runs each tool (order rotated).
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
/// Longest wait for the archiver.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(1800);
/// The server settings of the loaded primary.
const PRIMARY_SETTINGS: [(&str, &str); 2] = [("max_wal_size", "1GB"), ("fsync", "off")];
/// How WAL is written between measurements: short pgbench runs, until
/// enough has been written.
const PGBENCH_CHUNK: [&str; 7] = ["-n", "-c", "4", "-j", "2", "-T", "3"];

/// Runs the benchmark; returns the exit code.
pub async fn run(args: BenchArgs) -> Result<i32> {
    let (json, markdown, stem) = match args.what.as_str() {
        "backup" => {
            let report = backup::run(&args).await?;
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

    /// Writes an env dir `name` for a local directory `dir` of the work
    /// directory (`WALG_FILE_PREFIX`) instead of the S3 server.
    fn directory_env_dir(&self, name: &str, dir: &str) -> Result<PathBuf> {
        let mut vars = vec![(
            "WALG_FILE_PREFIX".to_string(),
            self.dir(dir)?.display().to_string(),
        )];
        vars.extend(tool_vars(0));
        Ok(self.cluster.archive.env_dir_with(name, &vars)?)
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
        let names = segment_names(last.timeline, last.segno + 1 - count..=last.segno);
        self.copy_out(&names, &dir).await
    }

    /// Copies the WAL segments `names` out of the primary's archive into
    /// `dir` (decompressed and verified, as `wal-fetch` would), owned by
    /// the server user; returns the files.
    async fn copy_out(&self, names: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
        let vars = &self.cluster.archive.storage_vars;
        let settings = Settings::from_vars(&EnvVars::from_pairs(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))?;
        let ctx = crate::backup::Context::open(settings, None)?;
        let ctx = &ctx;
        let files: Vec<PathBuf> = futures::stream::iter(names)
            .map(|name| async move {
                let key = layout::wal_key(name, Compression::Lz4);
                let (data, _) = ctx
                    .fetch_wal_object(&key, name)
                    .await
                    .with_context(|| format!("fetching {name} from the archive"))?;
                let path = dir.join(name);
                tokio::fs::write(&path, data)
                    .await
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok::<_, anyhow::Error>(path)
            })
            .buffered(4)
            .try_collect()
            .await?;
        if let Some(u) = self.cluster.archive.run_as {
            u.chown_tree(dir)?;
        }
        Ok(files)
    }
}

/// The names of segments `segnos` of `timeline`.
fn segment_names(timeline: u32, segnos: std::ops::RangeInclusive<u64>) -> Vec<String> {
    segnos
        .map(|segno| Segment { timeline, segno }.file_name(SEGMENT_SIZE))
        .collect()
}

/// The end of a report's Markdown: the peers not measured, if any, and
/// the method, each a list.
fn push_skipped_and_method(md: &mut String, skipped: &[String], method: &[String]) {
    if !skipped.is_empty() {
        md.push_str("\nNot measured:\n\n");
        for s in skipped {
            let _ = writeln!(md, "- {s}");
        }
    }
    md.push_str("\nMethod:\n\n");
    for line in method {
        let _ = writeln!(md, "- {line}");
    }
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

#[derive(Debug, Serialize)]
struct Machine {
    nproc: usize,
    load_average_start: [f64; 3],
    load_average_end: [f64; 3],
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Median, min and max of repeated measures.
fn median_min_max(runs: &[f64]) -> (f64, f64, f64) {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
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
    fn medians_of_odd_and_even_runs() {
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_min_max(&[4.0, 1.0]), (2.5, 1.0, 4.0));
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
