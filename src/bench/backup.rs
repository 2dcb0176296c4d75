//! `pgdrill bench backup`: backup and restore speed measured side by side
//! with `pg_basebackup` and the peers ([`super::peers`]) on one freshly
//! loaded cluster.
//!
//! One run: `initdb` and `pgbench -i -s SCALE` with `archive_mode = on` and
//! `archive_command` = our `wal-push` into the embedded S3 server, then
//! 1. side by side, `--repeat` times with the order of tools rotated:
//!    `pg_basebackup -Ft -X none -c fast` to local disk (no compression;
//!    the WAL comes from the archive, as for `backup-push`), `backup-push`
//!    (lz4), pgBackRest `backup` and `barman-cloud-backup` to the local S3;
//!    then each backup restored into an empty directory (`tar -x` of
//!    `pg_basebackup`'s tar, `backup-fetch`, pgBackRest `restore`,
//!    `barman-cloud-restore`); medians with min and max, ratios of medians;
//! 2. after about `--replay-wal-mib` of pgbench WAL, restores of the last
//!    pgdrill backup from four sources of WAL, `--repeat` times each with
//!    their order rotated, each timed from server start until
//!    `pg_is_in_recovery()` is false: `--recover` with `WALG_PREFETCH=8`;
//!    the same WAL copied into `pg_wal` beforehand, once in archive
//!    recovery with a `restore_command` that finds nothing (the floor the
//!    goal compares with: the same recovery, only the WAL's source differs)
//!    and once in crash recovery (no recovery settings; PostgreSQL skips
//!    restartpoints there, so it is faster still); and `--recover` with
//!    `WALG_PREFETCH=0`; medians with min and max, ratios of medians;
//! 3. wal-push throughput: the last `--wal-segments` archived segments are
//!    copied out of the archive and pushed into a fresh prefix, one process
//!    per segment as `archive_command` runs it.
//!
//! Every command's wall time is measured around it, and its peak RSS comes
//! from GNU time (see [`super::measured`]). Figures and goals go to
//! `<report-dir>/bench/backup-<UTC time>.json` and `.md`; the Markdown is
//! printed at the end. Missing a goal is a result, not an error: the exit
//! code is 0 unless the run itself failed.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::peers::{barman_backup, barman_restore, on_path, PgBackRest};
use super::{
    blocking, median_min_max, mib, on_a_rig, push_skipped_and_method, query_value, run_timed,
    segment_names, timed, BenchArgs, GeneratedWal, Machine, Rig, Timed, ARCHIVE_PREFIX, MIB,
    SEGMENT_SIZE,
};
use crate::backup::catalog::BackupListRow;
use crate::backup::layout::Segment;
use crate::env::local::{as_user, run_checked, LocalPostgres};

/// Fresh prefix the wal-push throughput is measured into.
const WAL_PUSH_PREFIX: &str = "wal-push";
/// `WALG_PREFETCH` of the restore with prefetch on.
const PREFETCH_ON: u32 = 8;
/// Issue 15's goals: backup-push no slower than pg_basebackup, backup-fetch
/// at most 1.1 times an untar of its tar, replay from the archive at most
/// 1.2 times replay from `pg_wal`.
const PUSH_RATIO_GOAL: f64 = 1.0;
const FETCH_RATIO_GOAL: f64 = 1.1;
const REPLAY_RATIO_GOAL: f64 = 1.2;
const WAL_PUSH_RATE_GOAL: f64 = 60.0;
const WAL_PUSH_RSS_GOAL_MIB: f64 = 64.0;
const BACKUP_PUSH_RSS_GOAL_MIB: f64 = 256.0;
/// Longest wait for a restore to finish recovery.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// One tool of the side-by-side backup and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Tool {
    PgBasebackup,
    Pgdrill,
    Pgbackrest,
    BarmanCloud,
}

impl Tool {
    fn backup_name(self) -> &'static str {
        match self {
            Tool::PgBasebackup => "pg_basebackup -Ft -X none -c fast (local disk)",
            Tool::Pgdrill => "pgdrill backup-push (lz4)",
            Tool::Pgbackrest => "pgBackRest backup (full, lz4, process-max 2)",
            Tool::BarmanCloud => "barman-cloud-backup (no compression, 2 jobs)",
        }
    }

    fn restore_name(self) -> &'static str {
        match self {
            Tool::PgBasebackup => "tar -x of pg_basebackup's tar, then sync",
            Tool::Pgdrill => "pgdrill backup-fetch",
            Tool::Pgbackrest => "pgBackRest restore (process-max 2, --type=none)",
            Tool::BarmanCloud => "barman-cloud-restore",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Tool::PgBasebackup => "pg_basebackup",
            Tool::Pgdrill => "pgdrill",
            Tool::Pgbackrest => "pgbackrest",
            Tool::BarmanCloud => "barman",
        }
    }
}

/// A tool's backups and restores, one of each per repetition.
#[derive(Debug, Serialize)]
struct ToolRuns {
    tool: Tool,
    backup: Vec<Timed>,
    restore: Vec<Timed>,
}

impl ToolRuns {
    fn backup_secs(&self) -> Spread {
        Spread::of(self.backup.iter().map(|t| t.wall_secs))
    }

    fn restore_secs(&self) -> Spread {
        Spread::of(self.restore.iter().map(|t| t.wall_secs))
    }

    fn backup_peak_rss(&self) -> u64 {
        peak_rss(&self.backup)
    }

    fn restore_peak_rss(&self) -> u64 {
        peak_rss(&self.restore)
    }
}

fn peak_rss(runs: &[Timed]) -> u64 {
    runs.iter().map(|t| t.peak_rss_bytes).max().unwrap_or(0)
}

/// Median, min and max of repeated measures.
#[derive(Debug, Clone, Copy, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(runs: impl Iterator<Item = f64>) -> Spread {
        let runs: Vec<f64> = runs.collect();
        let (median, min, max) = median_min_max(&runs);
        Spread { median, min, max }
    }
}

/// A backup made in one repetition, for its restore.
enum Made {
    /// `pg_basebackup`'s output directory.
    Tar(PathBuf),
    /// pgdrill's backup name.
    Pgdrill(String),
    /// pgBackRest's configuration (one repository per repetition).
    Pgbackrest(PathBuf),
    /// barman-cloud's destination and backup name.
    Barman(String, String),
}

#[derive(Debug, Serialize)]
struct WalPush {
    segments: u64,
    wall_secs: f64,
    segments_per_sec: f64,
    slowest_secs: f64,
    peak_rss_bytes: u64,
}

/// Where a restore's recovery reads its WAL.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum WalSource {
    /// `restore_command` = `wal-fetch` with `WALG_PREFETCH` = this.
    Archive { prefetch: u32 },
    /// Every segment copied into `pg_wal` before the server starts;
    /// archive recovery (recovery.signal) whose `restore_command` finds
    /// nothing, so the WAL comes from `pg_wal`.
    PgWalArchiveRecovery,
    /// Every segment copied into `pg_wal` before the server starts; crash
    /// recovery from the backup label, no recovery settings.
    PgWalCrashRecovery,
}

#[derive(Debug, Serialize)]
struct ReplayRun {
    source: WalSource,
    backup_fetch: Timed,
    /// From server start until `pg_is_in_recovery()` is false.
    replay_secs: f64,
}

/// Every restore's replay of the same WAL, `--repeat` times each, the
/// order of the sources rotated.
#[derive(Debug, Serialize)]
struct Replay {
    /// WAL written after the base backup (replayed by each restore).
    wal: GeneratedWal,
    prefetch_on: Vec<ReplayRun>,
    pg_wal_archive_recovery: Vec<ReplayRun>,
    pg_wal_crash_recovery: Vec<ReplayRun>,
    prefetch_off: Vec<ReplayRun>,
}

/// Median, min and max replay time of `runs`.
fn replay_spread(runs: &[ReplayRun]) -> Spread {
    Spread::of(runs.iter().map(|r| r.replay_secs))
}

/// Every raw figure of a run.
#[derive(Debug, Serialize)]
struct Figures {
    pgbench_init: Timed,
    /// Sum of `pg_database_size` over all databases after the load.
    database_bytes: u64,
    pg_basebackup_output_bytes: u64,
    side_by_side: Vec<ToolRuns>,
    /// Peers not measured, and why.
    skipped: Vec<String>,
    /// The last pgdrill backup (the one replayed).
    backup_name: String,
    backup_uncompressed_bytes: u64,
    backup_compressed_bytes: u64,
    replay: Replay,
    wal_push: WalPush,
}

impl Figures {
    fn runs(&self, tool: Tool) -> Option<&ToolRuns> {
        self.side_by_side.iter().find(|r| r.tool == tool)
    }
}

impl Rig {
    /// Restores `backup` into a fresh directory and times recovery from
    /// server start until promotion, its WAL read from `source`. `wal` are
    /// the segments the recovery replays (copied into `pg_wal` for the
    /// `PgWal*` sources).
    async fn replay(&self, backup: &str, source: WalSource, wal: &[String]) -> Result<ReplayRun> {
        let (label, prefetch) = match source {
            WalSource::Archive { prefetch } => (format!("prefetch-{prefetch}"), prefetch),
            WalSource::PgWalArchiveRecovery => ("pg-wal-archive-recovery".to_string(), 0),
            WalSource::PgWalCrashRecovery => ("pg-wal-crash-recovery".to_string(), 0),
        };
        eprintln!("bench: restore and replay, {label}");
        let env = self.env_dir(&format!("env-{label}"), ARCHIVE_PREFIX, prefetch)?;
        let base = self.dir(&format!("replay-{label}"))?;
        let data = base.join("data");
        let mut fetch_args: Vec<&OsStr> = vec!["backup-fetch".as_ref(), data.as_os_str()];
        fetch_args.push(backup.as_ref());
        match source {
            WalSource::Archive { .. } => {
                fetch_args.extend::<[&OsStr; 2]>(["--recover".as_ref(), "--no-archive".as_ref()]);
            }
            // `false` exits 1: "not in the archive", so PostgreSQL reads pg_wal.
            WalSource::PgWalArchiveRecovery => fetch_args.extend::<[&OsStr; 4]>([
                "--recover".as_ref(),
                "--no-archive".as_ref(),
                "--restore-command".as_ref(),
                "false".as_ref(),
            ]),
            WalSource::PgWalCrashRecovery => {}
        }
        let fetch = timed(self.pgdrill(&env, fetch_args), "backup-fetch").await?;
        if !matches!(source, WalSource::Archive { .. }) {
            let pg_wal = data.join("pg_wal");
            eprintln!("bench: copying {} segments into pg_wal", wal.len());
            self.copy_out(wal, &pg_wal).await?;
        }
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
        let client = pg.connect().await?;
        let log_tail = || async { pg.log_tail(20) };
        crate::env::pg::wait_promoted(&client, "bench restore", RECOVERY_TIMEOUT, log_tail).await?;
        let replay_secs = started.elapsed().as_secs_f64();
        // A replay that stopped short would make a fast figure.
        let reached: String =
            query_value(&client, "SELECT pg_walfile_name(pg_current_wal_lsn())").await?;
        let last = wal.last().context("no WAL to replay")?;
        match (
            Segment::parse(&reached, SEGMENT_SIZE),
            Segment::parse(last, SEGMENT_SIZE),
        ) {
            (Some(r), Some(l)) if r.segno >= l.segno => {}
            _ => bail!(
                "the restore ({label}) ended in {reached}, before {last}, the last segment written"
            ),
        }
        drop(client);
        eprintln!("bench: replay, {label}, took {replay_secs:.1} s");
        blocking(move || {
            let mut pg = pg;
            Ok(pg.stop("immediate")?)
        })
        .await?;
        remove_dir(&base).await?;
        Ok(ReplayRun {
            source,
            backup_fetch: fetch.timed,
            replay_secs,
        })
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

    /// The catalog entry of `backup` (sizes, first segment).
    async fn backup_row(&self, backup: &str) -> Result<BackupListRow> {
        let list = timed(self.archive_tool(["backup-list", "--json"]), "backup-list").await?;
        let all: Vec<BackupListRow> =
            serde_json::from_str(&list.stdout).context("parsing backup-list --json")?;
        all.into_iter()
            .find(|b| b.backup_name == backup)
            .with_context(|| format!("backup-list does not show {backup}"))
    }

    /// Makes one backup with `tool` (repetition `rep`), timed.
    async fn make_backup(
        &self,
        tool: Tool,
        rep: usize,
        pgbackrest: Option<&PgBackRest>,
    ) -> Result<(Timed, Made)> {
        let tag = format!("{}-{rep}", tool.short());
        Ok(match tool {
            Tool::PgBasebackup => {
                let out = self.dir(&format!("backup-{tag}"))?.join("out");
                let mut cmd = self.client("pg_basebackup", ["-Ft", "-X", "none", "-c", "fast"]);
                cmd.arg("-D").arg(&out);
                (timed(cmd, "pg_basebackup").await?.timed, Made::Tar(out))
            }
            Tool::Pgdrill => {
                let data_dir = self.primary().data_dir.as_os_str();
                let push = timed(
                    self.archive_tool([OsStr::new("backup-push"), data_dir]),
                    "backup-push",
                )
                .await?;
                let name = push
                    .stdout
                    .lines()
                    .last()
                    .map(str::trim)
                    .filter(|l| l.starts_with("base_"))
                    .with_context(|| {
                        format!("backup-push did not print a backup name: {:?}", push.stdout)
                    })?
                    .to_string();
                (push.timed, Made::Pgdrill(name))
            }
            Tool::Pgbackrest => {
                let pbr = pgbackrest.context("pgBackRest is measured only when set up")?;
                let conf = tokio::task::block_in_place(|| pbr.configure(self, &tag, false))?;
                let t = timed(pbr.backup(self, &conf), "pgbackrest backup").await?;
                (t.timed, Made::Pgbackrest(conf))
            }
            Tool::BarmanCloud => {
                let t = timed(barman_backup(self, &tag, &tag), "barman-cloud-backup").await?;
                (t.timed, Made::Barman(tag.clone(), tag))
            }
        })
    }

    /// Restores `made` into an empty directory, timed; removes the
    /// restored copy (and `pg_basebackup`'s output) afterwards.
    async fn restore(
        &self,
        tool: Tool,
        rep: usize,
        made: &Made,
        pgbackrest: Option<&PgBackRest>,
    ) -> Result<Timed> {
        let dest = self.dir(&format!("restore-{}-{rep}", tool.short()))?;
        let t = match made {
            Made::Tar(out) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"tar -xf "$1/base.tar" -C "$2" && sync -f "$2""#)
                    .arg("sh")
                    .arg(out)
                    .arg(&dest);
                as_user(&mut cmd, self.cluster.archive.run_as);
                let t = timed(cmd, "tar -x").await?.timed;
                remove_dir(out).await?;
                t
            }
            Made::Pgdrill(name) => {
                let args = [
                    OsStr::new("backup-fetch"),
                    dest.as_os_str(),
                    OsStr::new(name),
                ];
                timed(self.archive_tool(args), "backup-fetch").await?.timed
            }
            Made::Pgbackrest(conf) => {
                let pbr = pgbackrest.context("pgBackRest is measured only when set up")?;
                timed(pbr.restore(self, conf, &dest), "pgbackrest restore")
                    .await?
                    .timed
            }
            Made::Barman(from, name) => {
                timed(
                    barman_restore(self, from, name, &dest),
                    "barman-cloud-restore",
                )
                .await?
                .timed
            }
        };
        remove_dir(&dest).await?;
        Ok(t)
    }
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

/// The peers this machine can run, and why the others are skipped.
fn peers(rig: &Rig) -> Result<(Option<PgBackRest>, bool, Vec<String>)> {
    let mut skipped = Vec::new();
    let pgbackrest = match PgBackRest::start(rig)? {
        Ok(p) => Some(p),
        Err(why) => {
            skipped.push(why);
            None
        }
    };
    let barman = on_path("barman-cloud-backup") && on_path("barman-cloud-restore");
    if !barman {
        skipped.push(
            "barman-cloud not measured: not installed (apt-get install barman-cli-cloud)".into(),
        );
    }
    Ok((pgbackrest, barman, skipped))
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
        "bench: loaded {} MiB in {:.1} s",
        database_bytes / MIB,
        init.timed.wall_secs
    );

    let (pgbackrest, barman, skipped) = peers(rig)?;
    let mut tools = vec![Tool::PgBasebackup, Tool::Pgdrill];
    if pgbackrest.is_some() {
        tools.push(Tool::Pgbackrest);
    }
    if barman {
        tools.push(Tool::BarmanCloud);
    }
    let mut side_by_side: Vec<ToolRuns> = tools
        .iter()
        .map(|&tool| ToolRuns {
            tool,
            backup: Vec::new(),
            restore: Vec::new(),
        })
        .collect();
    let (mut last_backup, mut tar_bytes) = (None, 0);
    for rep in 0..args.repeat as usize {
        let order: Vec<usize> = (0..tools.len()).map(|k| (k + rep) % tools.len()).collect();
        let mut made = Vec::new();
        for &i in &order {
            let tool = tools[i];
            eprintln!("bench: {} (repetition {})", tool.backup_name(), rep + 1);
            rig.settle(&client).await?;
            let (t, m) = rig.make_backup(tool, rep, pgbackrest.as_ref()).await?;
            eprintln!("bench: {:.1} s", t.wall_secs);
            side_by_side[i].backup.push(t);
            match &m {
                Made::Tar(out) => tar_bytes = files_size(out)?,
                Made::Pgdrill(name) => last_backup = Some(name.clone()),
                _ => {}
            }
            made.push((i, m));
        }
        for (i, m) in &made {
            let tool = tools[*i];
            eprintln!("bench: {} (repetition {})", tool.restore_name(), rep + 1);
            let t = rig.restore(tool, rep, m, pgbackrest.as_ref()).await?;
            eprintln!("bench: {:.1} s", t.wall_secs);
            side_by_side[*i].restore.push(t);
        }
    }
    let name = last_backup.context("no pgdrill backup was made")?;
    let listed = rig.backup_row(&name).await?;

    eprintln!(
        "bench: writing {} MiB of WAL to replay",
        args.replay_wal_mib
    );
    let wal = rig.write_wal(&client, args.replay_wal_mib * MIB).await?;
    let last = rig.switch_and_wait_archived(&client).await?;
    let first = Segment::parse(&listed.wal_file_name, SEGMENT_SIZE).with_context(|| {
        format!(
            "{:?} (the backup's first segment) is not a WAL segment name",
            listed.wal_file_name
        )
    })?;
    let replayed = segment_names(last.timeline, first.segno..=last.segno);
    // The machine is noisy and a warm page cache favours later runs:
    // every source is replayed `--repeat` times, the order rotated.
    let sources = [
        WalSource::Archive {
            prefetch: PREFETCH_ON,
        },
        WalSource::PgWalArchiveRecovery,
        WalSource::PgWalCrashRecovery,
        WalSource::Archive { prefetch: 0 },
    ];
    let mut replays: [Vec<ReplayRun>; 4] = Default::default();
    for rep in 0..args.repeat as usize {
        for i in (0..sources.len()).map(|k| (k + rep) % sources.len()) {
            replays[i].push(rig.replay(&name, sources[i], &replayed).await?);
        }
    }
    let [prefetch_on, pg_wal_archive_recovery, pg_wal_crash_recovery, prefetch_off] = replays;

    let files = rig.wal_files(&client, last, args.wal_segments).await?;
    let wal_push = rig.push_each(&files).await?;
    eprintln!(
        "bench: wal-push: {:.1} segments/s",
        wal_push.segments_per_sec
    );

    let figures = Figures {
        pgbench_init: init.timed,
        database_bytes,
        pg_basebackup_output_bytes: tar_bytes,
        side_by_side,
        skipped,
        backup_name: name,
        backup_uncompressed_bytes: listed.uncompressed_size,
        backup_compressed_bytes: listed.compressed_size,
        replay: Replay {
            wal,
            prefetch_on,
            pg_wal_archive_recovery,
            pg_wal_crash_recovery,
            prefetch_off,
        },
        wal_push,
    };
    Ok((version, figures))
}

/// Measures backup and restore on a fresh rig.
pub(super) async fn run(args: &BenchArgs) -> Result<Report> {
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
        method: method(args),
        goals_met: results.iter().all(|r| r.ok != Some(false)),
        results,
        figures,
    })
}

/// How the figures are taken (in both report files).
fn method(args: &BenchArgs) -> Vec<String> {
    vec![
        "One cluster (initdb, pgbench -i; fsync = off, max_wal_size = 1GB, archive_command = pgdrill wal-push into the embedded S3 server on loopback, lz4); a CHECKPOINT and an idle archiver before each backup.".into(),
        format!("Side by side: {} repetitions, the order of tools rotated in each; every tool's backups first, then each restored into an empty directory in the same order; median (min-max), ratios of medians. Peers write to the same S3 server (pgBackRest through stunnel, as it needs TLS; its archive check off, as the WAL goes to pgdrill's archive).", args.repeat),
        "pg_basebackup -Ft -X none -c fast to local disk: no compression, WAL left to the archive as with backup-push; it fsyncs its output and waits for the WAL to be archived, as backup-push waits in pg_backup_stop. Its restore: tar -x of base.tar, then sync of the file system.".into(),
        "backup-push and backup-fetch with WAL-G default concurrency (nproc clamped to 2..16); backup-fetch into an empty directory, synced at the end.".into(),
        format!("Replay: the last pgdrill backup restored from four sources of WAL, {} times each, the order of the sources rotated in each repetition (this one in the first): backup-fetch --recover --no-archive with WALG_PREFETCH={PREFETCH_ON}; every segment copied into pg_wal first and --recover --restore-command false (archive recovery, the WAL read from pg_wal: the floor the goal compares with, as only the WAL's source differs); every segment copied into pg_wal and no recovery settings (crash recovery from the backup label, which PostgreSQL runs without restartpoints); --recover with WALG_PREFETCH=0. Timed from pg_ctl start until pg_is_in_recovery() is false; median (min-max), ratios of medians.", args.repeat),
        "wal-push: the newest archived segments copied out of the archive, then each pushed by its own pgdrill wal-push process into a fresh prefix, sequentially as the archiver runs them (no archive_status directory, so no upload-ahead).".into(),
        "Peak RSS: GNU time's %M of each command (its own, not inherited from the bench); wall times are measured around each command.".into(),
    ]
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
    /// The median when the measure was repeated.
    value: f64,
    unit: &'static str,
    /// Min and max of the repetitions.
    spread: Option<(f64, f64)>,
    ratio: Option<f64>,
    /// What the ratio is (e.g. "backup-push / pg_basebackup").
    ratio_of: Option<String>,
    goal: Option<Goal>,
    ok: Option<bool>,
}

impl Row {
    fn new(measure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            measure: measure.into(),
            value,
            unit,
            spread: None,
            ratio: None,
            ratio_of: None,
            goal: None,
            ok: None,
        }
    }

    /// A repeated measure: its median, min and max.
    fn repeated(measure: impl Into<String>, s: Spread, unit: &'static str) -> Row {
        let mut row = Row::new(measure, s.median, unit);
        row.spread = Some((s.min, s.max));
        row
    }

    fn ratio(mut self, ratio: f64, of: impl Into<String>) -> Row {
        self.ratio = Some(ratio);
        self.ratio_of = Some(of.into());
        self
    }

    fn value_text(&self) -> String {
        match self.spread {
            Some((min, max)) => format!("{:.2} {} ({min:.2}-{max:.2})", self.value, self.unit),
            None => format!("{:.2} {}", self.value, self.unit),
        }
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

/// The summary rows: measures, ratios and goals.
fn results(f: &Figures) -> Vec<Row> {
    let mut rows = Vec::new();
    let pgdrill = f.runs(Tool::Pgdrill);
    let basebackup = f.runs(Tool::PgBasebackup);
    // pgdrill against pg_basebackup (and its untar), the peers against
    // pgdrill.
    for (restore, goal, of) in [
        (false, PUSH_RATIO_GOAL, "pgdrill / pg_basebackup"),
        (true, FETCH_RATIO_GOAL, "pgdrill / untar"),
    ] {
        let secs = |r: &ToolRuns| {
            if restore {
                r.restore_secs()
            } else {
                r.backup_secs()
            }
        };
        let reference_secs = basebackup.map(|r| secs(r).median);
        let pgdrill_secs = pgdrill.map(|r| secs(r).median);
        for runs in &f.side_by_side {
            let name = if restore {
                runs.tool.restore_name()
            } else {
                runs.tool.backup_name()
            };
            let s = secs(runs);
            let row = Row::repeated(name, s, "s");
            rows.push(match (runs.tool, reference_secs, pgdrill_secs) {
                (Tool::Pgdrill, Some(base), _) => row
                    .ratio(s.median / base, of)
                    .goal(Subject::Ratio, Bound::AtMost(goal)),
                (Tool::PgBasebackup, ..) | (_, _, None) => row,
                (tool, _, Some(p)) => {
                    row.ratio(s.median / p, format!("{} / pgdrill", tool.short()))
                }
            });
        }
    }
    if let Some(p) = pgdrill {
        rows.push(
            Row::new("backup-push peak RSS", mib(p.backup_peak_rss()), "MiB")
                .goal(Subject::Value, Bound::Below(BACKUP_PUSH_RSS_GOAL_MIB)),
        );
        rows.push(Row::new(
            "backup-fetch peak RSS",
            mib(p.restore_peak_rss()),
            "MiB",
        ));
    }
    rows.push(
        Row::new(
            format!(
                "wal-push, {} × 16 MiB, one process each",
                f.wal_push.segments
            ),
            f.wal_push.segments_per_sec,
            "segments/s",
        )
        .goal(Subject::Value, Bound::AtLeast(WAL_PUSH_RATE_GOAL)),
    );
    rows.push(
        Row::new("wal-push peak RSS", mib(f.wal_push.peak_rss_bytes), "MiB")
            .goal(Subject::Value, Bound::Below(WAL_PUSH_RSS_GOAL_MIB)),
    );
    let replay_mib = mib(f.replay.wal.bytes);
    let local = replay_spread(&f.replay.pg_wal_archive_recovery);
    let crash = replay_spread(&f.replay.pg_wal_crash_recovery);
    let on = replay_spread(&f.replay.prefetch_on);
    let off = replay_spread(&f.replay.prefetch_off);
    let (local_secs, on_secs) = (local.median, on.median);
    rows.push(Row::repeated(
        format!("replay of {replay_mib:.0} MiB of WAL from pg_wal, archive recovery (restore_command finds nothing)"),
        local,
        "s",
    ));
    rows.push(
        Row::repeated(
            format!("replay of {replay_mib:.0} MiB of WAL from pg_wal, crash recovery (no restartpoints)"),
            crash,
            "s",
        )
        .ratio(crash.median / local_secs, "crash / archive recovery"),
    );
    rows.push(
        Row::repeated(
            format!("replay of {replay_mib:.0} MiB of WAL, wal-fetch, WALG_PREFETCH={PREFETCH_ON}"),
            on,
            "s",
        )
        .ratio(
            on_secs / local_secs,
            "archive / pg_wal, both archive recovery",
        )
        .goal(Subject::Ratio, Bound::AtMost(REPLAY_RATIO_GOAL)),
    );
    rows.push(
        Row::repeated(
            format!("replay of {replay_mib:.0} MiB of WAL, wal-fetch, WALG_PREFETCH=0"),
            off,
            "s",
        )
        .ratio(off.median / on_secs, "prefetch off / prefetch on"),
    );
    rows
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) started_at: DateTime<Utc>,
    benchmark: &'static str,
    finished_at: DateTime<Utc>,
    pgdrill_version: &'static str,
    postgres_version: String,
    scale: u32,
    machine: Machine,
    method: Vec<String>,
    results: Vec<Row>,
    goals_met: bool,
    figures: Figures,
}

impl Report {
    pub(super) fn markdown(&self) -> String {
        let f = &self.figures;
        let m = &self.machine;
        let mut md = format!(
            "# pgdrill bench backup, {}\n\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        // Writing to a String cannot fail.
        let _ = writeln!(
            md,
            "pgdrill {}, PostgreSQL {}, pgbench scale {}: database {:.0} MiB, pgdrill backup {:.0} MiB ({:.0} MiB lz4), pg_basebackup tar {:.0} MiB. \
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
        md.push_str(
            "| measure | value, median (min-max) | goal | ratio | ok |\n|---|---:|---|---:|---|\n",
        );
        for r in &self.results {
            let ratio = match (r.ratio, &r.ratio_of) {
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
                "| {} | {} | {} | {} | {} |",
                r.measure,
                r.value_text(),
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
        push_skipped_and_method(&mut md, &f.skipped, &self.method);
        md
    }
}
