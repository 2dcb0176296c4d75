//! The timeline while it runs: the primary, its writers, and the steps,
//! including those that change what restores must show (a deleted WAL
//! segment, a failover to a new timeline).

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use tokio_postgres::Client;

use super::{
    list_backups, pg_err, switch_and_wait_archived, wait_archived, ListedBackup, Progress,
};
use crate::backup::exit::{self, FailureKind, FailureReport};
use crate::backup::layout::{Lsn, Segment};
use crate::env::{Damage, EnvError, Environment, StorageFaults};
use crate::report::{ArchiveSample, WalGapRecord};
use crate::scenario::{Scenario, Step};
use crate::verify;
use crate::workload::{self, Ledger, LedgerEntry, WorkloadHandle, WorkloadSpec};

/// A `pitr_failover`: the old timeline was given up after `target`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Failover {
    /// The quiet moment the new primary was restored to.
    pub target: DateTime<Utc>,
    /// When the new primary was promoted and took writes.
    pub promoted_at: DateTime<Utc>,
}

/// What the steps did that decides where restore targets lie and how the
/// restores must turn out.
#[derive(Debug, Default)]
pub(super) struct History {
    /// WAL segments deleted from the archive.
    pub gaps: Vec<WalGapRecord>,
    pub failovers: Vec<Failover>,
    /// Backups of a timeline given up by a failover that ended after its
    /// target: not on the new timeline's history, so never restored.
    pub abandoned: Vec<String>,
    /// Backups that started at a segment boundary, each with when the
    /// writers went on after it: until then nothing committed.
    pub boundary_backups: Vec<(String, DateTime<Utc>)>,
}

/// The drill while its timeline runs.
pub(super) struct Live<'a> {
    pub scenario: &'a Scenario,
    pub env: &'a mut dyn Environment,
    pub progress: &'a Progress,
    /// A connection to the current primary.
    pub primary: Client,
    /// The writers on the current primary; None once stopped for good.
    pub handle: Option<WorkloadHandle>,
    /// The workload as specified, and when it started.
    pub spec: WorkloadSpec,
    pub started_at: DateTime<Utc>,
    /// When the writers stop.
    pub workload_end: Instant,
    /// Transactions of earlier primaries that the current one holds (after
    /// a `pitr_failover`), and why their writers stopped early.
    pub inherited: Vec<LedgerEntry>,
    pub inherited_errors: BTreeMap<u32, String>,
    /// Deltas on the newest backup of this timeline (None: no backup yet).
    pub chain: Option<u32>,
    /// The server's time zone, in which targets reach the tool.
    pub zone: std::sync::Arc<crate::env::zone::ServerZone>,
    /// Choices of the failovers.
    pub rng: StdRng,
    pub history: History,
    /// The primaries' cluster, and the newest timeline one wrote on.
    pub source: verify::ClusterIdentity,
    /// The primary's archiver, sampled while waiting for the next step.
    pub archive_samples: Vec<ArchiveSample>,
}

impl Live<'_> {
    /// The environment's storage faults, for step `action`; validation
    /// keeps steps from environments that have none.
    fn storage_faults(&mut self, action: &str) -> Result<&mut dyn StorageFaults, EnvError> {
        let kind = self.env.facts().kind;
        self.env.storage_faults().ok_or_else(|| {
            EnvError::Other(format!(
                "step {action} is not available in the {} environment",
                kind.as_str()
            ))
        })
    }

    /// Runs one step; the detail for the report, or why it failed.
    pub async fn run_step(&mut self, step: &Step) -> Result<String, EnvError> {
        match step {
            Step::BaseBackup {
                full,
                at_segment_start,
                ..
            } => self.base_backup(*full, *at_segment_start).await,
            Step::OverlappingBackups { .. } => self.overlapping_backups().await,
            Step::DeleteDuringBackup { retain, .. } => {
                self.delete_during_backup(*retain as usize).await
            }
            Step::Delete { retain, full, .. } => {
                apply_retention(&*self.env, *retain as usize, *full).await
            }
            Step::SwitchWal { .. } => {
                let row = self
                    .primary
                    .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
                    .await
                    .map_err(pg_err)?;
                Ok(format!("switched from {}", row.get::<_, String>(0)))
            }
            Step::Checkpoint { .. } => {
                self.primary
                    .batch_execute("CHECKPOINT")
                    .await
                    .map_err(pg_err)?;
                Ok("checkpoint done".into())
            }
            Step::VerifyDuringWrites { .. } => self.verify_during_writes().await,
            Step::VacuumFreeze { .. } => {
                let sql = workload::vacuum_freeze_sql(self.spec.mix.is_some());
                self.primary.batch_execute(&sql).await.map_err(pg_err)?;
                Ok(sql)
            }
            Step::Pause { duration, .. } => {
                if let Some(h) = &self.handle {
                    h.pause();
                    tokio::time::sleep(*duration).await;
                    h.resume();
                }
                Ok(format!("paused writers for {duration:?}"))
            }
            Step::DeleteWal { .. } => self.damage_wal(Damage::Deleted).await,
            Step::StorageCorruption { .. } => self.damage_wal(Damage::Corrupted).await,
            Step::PitrFailover { twin, .. } => self.fail_over(*twin).await,
            Step::Disaster { kind, .. } => {
                self.env.kill_primary().await?;
                Ok(format!(
                    "{kind:?}: primary SIGKILLed, data directory destroyed"
                ))
            }
            Step::StorageOutage { duration, mode, .. } => {
                self.storage_outage(*mode, *duration).await
            }
            Step::NetworkLatency { delay, rate, .. } => {
                let limit = crate::env::fault::LinkLimit {
                    delay: *delay,
                    rate_kbit: *rate,
                };
                self.storage_faults(step.action())?
                    .limit_storage_link(&limit)
                    .await
            }
        }
    }

    /// Cuts the storage off for `duration`, then waits until the archiver
    /// has caught up: it must have failed while the storage was away (and
    /// never claimed a segment it could not store, which the restores
    /// check) and archive everything once it is back.
    async fn storage_outage(
        &mut self,
        mode: crate::scenario::OutageMode,
        duration: std::time::Duration,
    ) -> Result<String, EnvError> {
        let (archived_before, failed_before) = archiver_counts(&self.primary).await?;
        let cut = self
            .storage_faults("storage_outage")?
            .storage_outage(mode, duration)
            .await?;
        let (archived, failed) = archiver_counts(&self.primary).await?;
        let caught_up = std::time::Instant::now();
        let segment = super::switch_and_wait_archived(&self.primary).await?;
        Ok(format!(
            "{cut}; meanwhile archive_command failed {} times and succeeded {} times; archive caught up to {segment} {:.1}s after the storage came back",
            failed - failed_before,
            archived - archived_before,
            caught_up.elapsed().as_secs_f64()
        ))
    }

    /// `backup-push` (`--full` when asked); checks that the tool made a
    /// delta exactly when `storage.delta_max_steps` allows one (WAL-G names
    /// a delta `base_<start>_D_<parent start>`).
    /// With `at_segment_start`, the backup starts at a segment boundary
    /// (see [`Step::BaseBackup`]).
    async fn base_backup(
        &mut self,
        full: bool,
        at_segment_start: bool,
    ) -> Result<String, EnvError> {
        let (name, boundary) = if at_segment_start {
            let held = self.hold_writers();
            // Commits in flight end before the switch.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let switched = self
                .primary
                .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
                .await
                .map_err(pg_err);
            let name = match switched {
                Ok(_) => self.env.base_backup(full).await,
                Err(e) => Err(e),
            };
            let resumed = Utc::now();
            self.release_writers(held);
            let name = name?;
            self.history.boundary_backups.push((name.clone(), resumed));
            let boundary = self.start_in_segment(&name).await?;
            (name, boundary)
        } else {
            let sweep = self.handle.as_ref().map(WorkloadHandle::sweep);
            let name = self.env.base_backup(full).await;
            drop(sweep);
            (name?, String::new())
        };
        let max = self.scenario.storage.delta_max_steps;
        let expected = self.chain.filter(|&c| !full && c < max).map(|c| c + 1);
        let made = delta_parent(&name).map(|_| self.chain.unwrap_or(0) + 1);
        self.chain = Some(made.unwrap_or(0));
        let kind = |n: Option<u32>| match n {
            Some(n) => format!("delta {n} of at most {max}"),
            None => "full".to_string(),
        };
        if made != expected {
            return Err(EnvError::Other(format!(
                "backup-push made {name}, a {} backup; expected a {} backup",
                kind(made),
                kind(expected)
            )));
        }
        Ok(format!("{name} ({}){boundary}", kind(made)))
    }

    /// Where backup `name` started within its WAL segment, for the report.
    async fn start_in_segment(&self, name: &str) -> Result<String, EnvError> {
        let backups = list_backups(&*self.env).await?;
        let Some(row) = backups.iter().find(|b| b.backup_name == name) else {
            return Err(EnvError::Other(format!(
                "backup-push made {name}, which backup-list does not list"
            )));
        };
        let offset = row.start_lsn % self.env.facts().wal_segment_size;
        let start = Lsn(row.start_lsn);
        Ok(match offset {
            // XLogLongPageHeaderData: a segment's first record follows it.
            40 => format!(", started at {start}: the first record of its segment"),
            _ => format!(
                ", started at {start}, {offset} bytes into its segment (WAL came before its \
                 checkpoint: not at the boundary)"
            ),
        })
    }

    /// Two `backup-push --full` runs at once, the writers paused so that
    /// both start in one WAL segment. Stated outcome: each run that exits
    /// 0 names a backup no other run names, a run that fails leaves
    /// nothing listed under a name it printed, at least one succeeds, and
    /// every listed backup verifies.
    async fn overlapping_backups(&mut self) -> Result<String, EnvError> {
        let args = ["backup-push", "--full"];
        let held = self.hold_writers();
        let (a, b) = futures::join!(
            self.env.backup_tool_status(&args),
            self.env.backup_tool_status(&args)
        );
        self.release_writers(held);
        let runs = [a?, b?];
        let made: Vec<String> = runs
            .iter()
            .filter(|r| r.status.success())
            .map(|r| r.stdout.trim().to_string())
            .collect();
        let failed: Vec<String> = runs
            .iter()
            .filter(|r| !r.status.success())
            .map(|r| format!("{}: {}", r.status, crate::env::tail(r.stderr.trim(), 2)))
            .collect();
        match made.as_slice() {
            [] => {
                return Err(EnvError::Other(format!(
                    "both overlapping backup-push runs failed: {}",
                    failed.join("; ")
                )))
            }
            [a, b] if a == b => {
                return Err(EnvError::Other(format!(
                    "both overlapping backup-push runs exited 0 naming {a}: one name, two writers"
                )))
            }
            _ => {}
        }
        let listed: Vec<String> = list_backups(&*self.env)
            .await?
            .into_iter()
            .map(|b| b.backup_name)
            .collect();
        for name in &made {
            if !listed.contains(name) {
                return Err(EnvError::Other(format!(
                    "backup-push exited 0 for {name}, which is not listed"
                )));
            }
        }
        for name in &listed {
            self.env.backup_tool(&["backup-verify", name]).await?;
        }
        self.chain = Some(0);
        Ok(format!(
            "made {}{}; every listed backup verifies",
            made.join(" and "),
            match failed.as_slice() {
                [] => String::new(),
                f => format!("; the other run failed cleanly ({})", f.join("; ")),
            }
        ))
    }

    /// `backup-push --full` with `delete --confirm retain N` run over and
    /// over while it runs, as a retention CronJob overlapping the backup
    /// CronJob. Stated outcome: the backup-push exits 0 and its backup is
    /// listed and verifies (retention never takes the parts of a backup
    /// in progress), every delete exits 0, and afterwards the listed
    /// backups are the `retain` newest of those complete before, plus the
    /// new one (or, when the last delete saw it complete, the `retain`
    /// newest of all).
    async fn delete_during_backup(&mut self, retain: usize) -> Result<String, EnvError> {
        let before: Vec<String> = list_backups(&*self.env)
            .await?
            .into_iter()
            .map(|b| b.backup_name)
            .collect();
        let count = retain.to_string();
        let delete = ["delete", "--confirm", "retain", count.as_str()];
        let env = &*self.env;
        let push_args = ["backup-push", "--full"];
        let pushed = std::sync::atomic::AtomicBool::new(false);
        let push = async {
            let run = env.backup_tool_status(&push_args).await;
            pushed.store(true, std::sync::atomic::Ordering::SeqCst);
            run
        };
        let deletes = async {
            let mut runs = Vec::new();
            loop {
                runs.push(env.backup_tool_status(&delete).await);
                if pushed.load(std::sync::atomic::Ordering::SeqCst) {
                    return runs;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let sweep = self.handle.as_ref().map(WorkloadHandle::sweep);
        let (push, deletes) = futures::join!(push, deletes);
        drop(sweep);
        let name = push?
            .stdout_if_ok(&push_args)
            .map_err(|e| EnvError::Other(format!("with retention running meanwhile, {e}")))?
            .trim()
            .to_string();
        let ran = deletes.len();
        for run in deletes {
            run?.stdout_if_ok(&delete)
                .map_err(|e| EnvError::Other(format!("during backup-push, {e}")))?;
        }
        self.chain = Some(0);
        // The last delete may have begun before or after the new backup's
        // sentinel was stored: it kept `retain` of those before, or of
        // those before and the new one.
        let (mut while_running, _) = retained(&before, retain, false);
        while_running.push(name.clone());
        let (after_it, _) = retained(&[before, vec![name.clone()]].concat(), retain, false);
        let listed: Vec<String> = list_backups(&*self.env)
            .await?
            .into_iter()
            .map(|b| b.backup_name)
            .collect();
        if listed != while_running && listed != after_it {
            return Err(EnvError::Other(format!(
                "after backup-push and delete retain {retain} at once: listed {listed:?}, expected {while_running:?} or {after_it:?}"
            )));
        }
        self.env.backup_tool(&["backup-verify", &name]).await?;
        Ok(format!(
            "{name} made while delete retain {retain} ran {ran} times; listed {listed:?}, {name} verifies"
        ))
    }

    /// See [`Step::VerifyDuringWrites`].
    async fn verify_during_writes(&mut self) -> Result<String, EnvError> {
        use crate::backup::walverify::{CheckStatus, SegmentStatus};
        for _ in 0..SWITCH_BURST {
            self.primary
                .batch_execute("SELECT pg_switch_wal()")
                .await
                .map_err(pg_err)?;
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let (code, integrity) = wal_verify_integrity(&*self.env).await?;
        let integrity = integrity
            .map_err(|why| EnvError::Other(format!("wal-verify integrity during writes: {why}")))?;
        let deleted: Vec<&str> = self
            .history
            .gaps
            .iter()
            .filter(|g| g.damage == Damage::Deleted)
            .map(|g| g.segment.as_str())
            .collect();
        let lost = lost_beyond(&integrity.details, &deleted);
        if !lost.is_empty() {
            return Err(EnvError::Other(format!(
                "wal-verify integrity during writes reported segments lost that no step deleted: {}",
                lost.join(", ")
            )));
        }
        let expected_code = integrity.status.exit_code();
        if code != Some(expected_code) {
            return Err(EnvError::Other(format!(
                "wal-verify integrity during writes said {} but exited {}",
                integrity.status.as_str(),
                code.map_or("by a signal".to_string(), |c| c.to_string())
            )));
        }
        let in_flight: u64 = integrity
            .details
            .iter()
            .filter(|d| {
                matches!(
                    d.status,
                    SegmentStatus::MissingUploading | SegmentStatus::MissingDelayed
                )
            })
            .map(|d| d.segments_count)
            .sum();
        let newest = list_backups(&*self.env)
            .await?
            .pop()
            .map(|b| b.backup_name)
            .ok_or_else(|| EnvError::Other("verify_during_writes: no backup listed".into()))?;
        self.env.backup_tool(&["backup-verify", &newest]).await?;
        let lost_by_steps = match integrity.status {
            CheckStatus::Failure => " (lost: only what delete_wal took)",
            _ => "",
        };
        Ok(format!(
            "wal-verify integrity {}{lost_by_steps}, {in_flight} segments still being archived, none lost; backup-verify {newest} passed",
            integrity.status.as_str()
        ))
    }

    /// Deletes or corrupts a segment of the writers' commits in the
    /// archive, once the archiver has stored it, and records when they were
    /// made: the segment opened by a WAL switch now, closed by another a
    /// second later (or earlier, by `archive_timeout`).
    async fn damage_wal(&mut self, damage: Damage) -> Result<String, EnvError> {
        let from = Utc::now();
        let switch = "SELECT pg_switch_wal()::text, pg_walfile_name(pg_current_wal_lsn())";
        let row = self.primary.query_one(switch, &[]).await.map_err(pg_err)?;
        let (end, current): (String, String) = (row.get(0), row.get(1));
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        self.primary.query_one(switch, &[]).await.map_err(pg_err)?;
        let timeline = u32::from_str_radix(&current[..8], 16)
            .map_err(|e| EnvError::Other(format!("timeline of {current}: {e}")))?;
        let end = Lsn::parse(&end)
            .ok_or_else(|| EnvError::Other(format!("pg_switch_wal returned {end:?}")))?;
        // The switch returns the end of the segment it closed, within it, or
        // (when there was nothing to close) the start of the current one:
        // either way the new segment starts at the next boundary from there.
        let seg_size = self.env.facts().wal_segment_size;
        let first = Lsn(end.0.div_ceil(seg_size) * seg_size);
        let segment = Segment::of_lsn(timeline, first, seg_size).file_name(seg_size);
        wait_archived(&self.primary, &segment).await?;
        let to = Utc::now();
        let key =
            crate::env::damage_wal(&self.env.facts().storage_settings, &segment, damage).await?;
        let detail = format!(
            "{} {key}; every commit in it was made between {} and {}",
            match damage {
                Damage::Deleted => "deleted",
                Damage::Corrupted => "flipped bytes in",
            },
            from.format("%H:%M:%S%.6f"),
            to.format("%H:%M:%S%.6f")
        );
        self.history.gaps.push(WalGapRecord {
            segment,
            key,
            damage,
            from,
            to,
            detected: false,
            retired: false,
            wal_verify: "not checked".into(),
        });
        Ok(detail)
    }

    /// The ledger of what the current primary holds: the inherited
    /// transactions and those of `run`, its writers' ledger.
    fn combined(&self, run: Ledger) -> Ledger {
        let mut entries = self.inherited.clone();
        entries.extend_from_slice(run.entries());
        let mut errors = self.inherited_errors.clone();
        errors.extend(run.writer_errors().clone());
        // DDL runs without failovers only (see scenario validation).
        Ledger::new(self.spec.clone(), self.started_at, entries, errors).with_ddl(run.ddl().clone())
    }

    /// Holds the writers for a step that needs a quiet cluster; returns
    /// when, for [`Live::release_writers`].
    fn hold_writers(&self) -> Instant {
        if let Some(h) = &self.handle {
            h.pause();
        }
        Instant::now()
    }

    /// Lets the writers held since `held` go on, and moves the workload's
    /// end (and so the steps after this one) by as long as they were held:
    /// a step's quiet is not the scenario's time to write (chaos soak of
    /// 2026-12-05: two backups at once from 64 MiB segments held the
    /// writers 15 s, and no random target was left).
    fn release_writers(&mut self, held: Instant) {
        if let Some(h) = &self.handle {
            h.resume();
        }
        self.workload_end += held.elapsed();
    }

    /// Stops the writers and returns the ledger of everything the current
    /// primary holds.
    pub async fn stop_writers(&mut self) -> Ledger {
        let run = match self.handle.take() {
            Some(h) => {
                h.stop();
                h.join().await
            }
            None => Ledger::new(
                self.spec.clone(),
                self.started_at,
                Vec::new(),
                BTreeMap::new(),
            ),
        };
        self.combined(run)
    }

    /// `pitr_failover`: see [`Step::PitrFailover`]; with `twin`, a second
    /// server promoted at once (see [`super::twin`]).
    async fn fail_over(&mut self, twin: bool) -> Result<String, EnvError> {
        let stopped = Instant::now();
        let ledger = self.stop_writers().await;
        // Every commit made so far is then in the archive.
        switch_and_wait_archived(&self.primary).await?;
        let backups: Vec<ListedBackup> = list_backups(&*self.env)
            .await?
            .into_iter()
            .filter(|b| !self.history.abandoned.contains(&b.backup_name))
            .collect();
        let earliest = backups
            .first()
            .ok_or_else(|| EnvError::Other("no base backup to fail over from".into()))?
            .finish_time
            + chrono::Duration::milliseconds(1);
        let target = ledger
            .summary()
            .last_acked_at
            .and_then(|last| ledger.pick_target(&mut self.rng, earliest, last))
            .ok_or_else(|| {
                EnvError::Other(format!(
                    "no commit after the first backup ended ({earliest}) to fail over to"
                ))
            })?;
        let exact = ledger.expected_at(target).exact;
        let backup = newest_before(&backups, target).backup_name.clone();
        self.progress.say(&format!(
            "failover: restoring {backup} to {} with archiving",
            target.format("%H:%M:%S%.6f")
        ));
        let given = crate::env::zone::TargetTime {
            instant: target,
            zone: std::sync::Arc::clone(&self.zone),
        };
        // The twin first: promoted before the failover has archived its
        // history, it takes the same timeline.
        let twin = match twin {
            true => Some(self.env.promote_twin("twin", &backup, &given).await?),
            false => None,
        };
        let restored = self.env.fail_over("failover", &backup, &given).await?;
        let promoted_at = Utc::now();
        let outcome = verify::verify_restore(&restored.client, &ledger, Some(target))
            .await
            .map_err(|e| EnvError::Other(format!("verifying the new primary: {e}")))?;
        if !outcome.passed {
            return Err(EnvError::Other(format!(
                "the new primary does not hold the commits up to its target: {}",
                outcome.summary()
            )));
        }
        let current: String = restored
            .client
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        let timeline = u32::from_str_radix(&current[..8], 16).unwrap_or(0);
        let twin_note = match twin {
            Some(twin) => {
                switch_and_wait_archived(&restored.client).await?;
                let outcome = super::twin::let_go(&twin.client, timeline).await;
                self.env.discard_restore("twin").await;
                format!("; {}", outcome?)
            }
            None => String::new(),
        };
        let promoted = verify::identity(&restored.client)
            .await
            .map_err(|e| EnvError::Other(format!("the new primary: {e}")))?;
        if let Some(wrong) = verify::identity_checks(&self.source, &promoted)
            .into_iter()
            .find(|c| !c.passed)
        {
            return Err(EnvError::Other(format!(
                "the new primary: {}: {}",
                wrong.name, wrong.detail
            )));
        }
        self.source = promoted;
        let held: BTreeMap<u32, u64> = outcome
            .per_writer
            .iter()
            .map(|w| (w.writer, w.found))
            .collect();
        let abandoned_acked = ledger
            .entries()
            .iter()
            .filter(|e| e.acked_at.is_some() && e.seq > held[&e.writer])
            .count();
        self.inherited = ledger
            .entries()
            .iter()
            .filter(|e| e.seq <= held[&e.writer])
            .cloned()
            .collect();
        self.inherited_errors = ledger.writer_errors().clone();
        let abandoned: Vec<String> = backups
            .iter()
            .filter(|b| b.finish_time >= target)
            .map(|b| b.backup_name.clone())
            .collect();
        self.history.abandoned.extend(abandoned.iter().cloned());
        self.history.failovers.push(Failover {
            target,
            promoted_at,
        });
        self.chain = None;
        self.primary = restored.client;
        let next: BTreeMap<u32, u64> = held.iter().map(|(&w, &n)| (w, n + 1)).collect();
        // The writers stopped for the failover: the workload's end moves by
        // that much (a failover promoting a twin from 64 MiB segments takes
        // a dozen seconds; the chaos soak saw every later backup then taken
        // after the writers had ended, and no random target left).
        self.workload_end += stopped.elapsed();
        let remaining = self.workload_end.saturating_duration_since(Instant::now());
        if !remaining.is_zero() {
            let spec = WorkloadSpec {
                duration: remaining,
                ..self.spec.clone()
            };
            let handle = workload::start_from(self.env.primary_config(), spec, &next)
                .map_err(|e| EnvError::Other(format!("workload on the new primary: {e}")))?;
            self.handle = Some(handle);
        }
        Ok(format!(
            "T1 {} ({}): restored {backup} with archiving, promoted to timeline {timeline} ({current}) as the primary; \
             {abandoned_acked} acknowledged commits of the old timeline after T1 given up; \
             backups off the new timeline: {abandoned:?}; writers continue at seq {next:?}{twin_note}",
            target.format("%H:%M:%S%.6f"),
            if exact { "quiet: exact" } else { "no quiet moment: within a commit" },
        ))
    }
}

/// The newest of `backups` (oldest first) that ended before `target`, else
/// the oldest.
pub(super) fn newest_before(backups: &[ListedBackup], target: DateTime<Utc>) -> &ListedBackup {
    backups
        .iter()
        .rev()
        .find(|b| b.finish_time < target)
        .unwrap_or(&backups[0])
}

/// The start segment of the backup a delta was taken on, from its name
/// (`base_<start>_D_<parent start>`); None for a full backup.
fn delta_parent(name: &str) -> Option<&str> {
    name.split_once("_D_").map(|(_, parent)| parent)
}

/// What `delete retain [FULL] N` must keep of `backups` (names, oldest
/// first), and what it must delete: the newest N (with `full`: from the
/// N-th newest full backup on), and every backup a kept delta builds on.
fn retained(backups: &[String], retain: usize, full: bool) -> (Vec<String>, Vec<String>) {
    let keep_from = if full {
        backups
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| delta_parent(b).is_none())
            .nth(retain.saturating_sub(1))
            .map_or(0, |(i, _)| i)
    } else {
        backups.len().saturating_sub(retain)
    };
    let mut kept: Vec<bool> = (0..backups.len()).map(|i| i >= keep_from).collect();
    // Newest first, so that a kept delta's parent is marked before it is seen.
    for i in (0..backups.len()).rev() {
        if let Some(parent) = delta_parent(&backups[i]).filter(|_| kept[i]) {
            let full_name = format!("base_{parent}");
            let delta_prefix = format!("{full_name}_D_");
            for (j, b) in backups.iter().enumerate() {
                kept[j] |= *b == full_name || b.starts_with(&delta_prefix);
            }
        }
    }
    let (keep, drop): (Vec<_>, Vec<_>) = backups.iter().cloned().zip(kept).partition(|(_, k)| *k);
    let names = |v: Vec<(String, bool)>| v.into_iter().map(|(b, _)| b).collect();
    (names(keep), names(drop))
}

/// `delete --confirm retain [FULL] N`, then proves it: exactly the
/// backups [`retained`] names are listed, and the others cannot be fetched.
async fn apply_retention(
    env: &dyn Environment,
    retain: usize,
    full: bool,
) -> Result<String, EnvError> {
    let before = list_backups(env).await?;
    let count = retain.to_string();
    let mut args = vec!["delete", "--confirm", "retain"];
    if full {
        args.push("FULL");
    }
    args.push(&count);
    env.backup_tool(&args).await?;
    let after = list_backups(env).await?;
    let names: Vec<String> = before.iter().map(|b| b.backup_name.clone()).collect();
    let (expected_kept, gone) = retained(&names, retain, full);
    let listed: Vec<String> = after.iter().map(|b| b.backup_name.clone()).collect();
    let policy = args[2..].join(" ");
    if listed != expected_kept {
        return Err(EnvError::Other(format!(
            "after delete {policy}: listed {listed:?}, expected {expected_kept:?}"
        )));
    }
    for name in &gone {
        if env
            .backup_tool(&["backup-fetch", "/nonexistent/pgdrill-retention-check", name])
            .await
            .is_ok()
        {
            return Err(EnvError::Other(format!(
                "deleted backup {name} can still be fetched"
            )));
        }
    }
    Ok(format!(
        "{policy}: kept {expected_kept:?}; deleted and unfetchable: {gone:?}"
    ))
}

/// The MISSING_LOST ranges of `details` that hold none of `deleted`.
fn lost_beyond(
    details: &[crate::backup::walverify::SegmentRange],
    deleted: &[&str],
) -> Vec<String> {
    use crate::backup::walverify::SegmentStatus;
    details
        .iter()
        .filter(|d| d.status == SegmentStatus::MissingLost)
        .filter(|d| !deleted.iter().any(|s| d.holds_lost(s)))
        .map(|d| format!("{} to {}", d.start_segment, d.end_segment))
        .collect()
}

/// The integrity check of `wal-verify integrity --json`
/// and its exit code, or why its output is not that check.
async fn wal_verify_integrity(
    env: &dyn Environment,
) -> Result<(Option<i32>, Result<WalIntegrity, String>), EnvError> {
    use crate::backup::walverify::WalVerifyReport;
    let run = env
        .backup_tool_status(&["wal-verify", "integrity", "--json"])
        .await?;
    let integrity = serde_json::from_str::<WalVerifyReport>(&run.stdout)
        .and_then(|r| {
            r.integrity
                .ok_or_else(|| serde::de::Error::custom("it has no integrity check"))
        })
        .map_err(|e| {
            format!(
                "{}, output is not its JSON ({e}): {}",
                run.status,
                crate::env::tail(run.stderr.trim(), 3)
            )
        });
    Ok((run.status.code(), integrity))
}

/// `wal-verify`'s integrity check as its JSON holds it.
type WalIntegrity =
    crate::backup::walverify::CheckResult<Vec<crate::backup::walverify::SegmentRange>>;

/// WAL switches of a `verify_during_writes` step.
const SWITCH_BURST: usize = 5;

/// `pg_stat_archiver`'s (archived_count, failed_count) of `primary`.
async fn archiver_counts(primary: &Client) -> Result<(i64, i64), EnvError> {
    let row = primary
        .query_one(
            "SELECT archived_count, failed_count FROM pg_stat_archiver",
            &[],
        )
        .await
        .map_err(pg_err)?;
    Ok((row.get(0), row.get(1)))
}

/// Records, for each damaged segment a listed backup still needs, whether
/// the tool noticed: a deleted one must be reported lost by `wal-verify
/// integrity` (see [`detect_deleted`]); a corrupted one must be refused by
/// `wal-fetch` as corrupt, with the exit code that makes PostgreSQL abort
/// recovery. One that no listed backup needs is retired: retention run
/// after the damage may have taken it (chaos soak of 2026-12-05).
pub(super) async fn detect_gaps(
    env: &dyn Environment,
    gaps: &mut [WalGapRecord],
) -> Result<(), EnvError> {
    let backups = list_backups(env).await?;
    for gap in gaps.iter_mut() {
        gap.retired = !needed(gap, &backups);
    }
    let (deleted, corrupted): (Vec<_>, Vec<_>) = gaps
        .iter_mut()
        .filter(|g| !g.retired)
        .partition(|g| g.damage == Damage::Deleted);
    if !deleted.is_empty() {
        detect_deleted(env, deleted).await?;
    }
    for gap in corrupted {
        let dest = format!("/tmp/pgdrill-check-{}", gap.segment);
        let run = env
            .backup_tool_status(&["--error-format", "json", "wal-fetch", &gap.segment, &dest])
            .await?;
        let code = run.status.code();
        let failure = FailureReport::from_stderr(&run.stderr);
        gap.detected = code == Some(exit::FETCH_FAILED)
            && failure
                .as_ref()
                .is_some_and(|f| f.kind == FailureKind::Corrupt);
        gap.wal_verify = format!(
            "wal-fetch exit {}: {}",
            code.map_or("-".to_string(), |c| c.to_string()),
            failure.map_or_else(
                || crate::env::tail(run.stderr.trim(), 1),
                |f| format!("{:?}: {}", f.kind, f.message)
            )
        );
    }
    Ok(())
}

/// Whether a restore of one of `backups` may need `gap`.
fn needed(gap: &WalGapRecord, backups: &[ListedBackup]) -> bool {
    backups.iter().any(|b| needs(b, gap))
}

/// Whether a restore of `backup` replays through `gap`: it started before
/// the gap's last commit.
pub(super) fn needs(backup: &ListedBackup, gap: &WalGapRecord) -> bool {
    gap.to >= backup.start_time
}

/// Runs `wal-verify integrity --json` and records, for each deleted
/// segment, whether it was reported lost: exit 4, FAILURE, and a
/// MISSING_LOST range holding the segment.
async fn detect_deleted(
    env: &dyn Environment,
    gaps: Vec<&mut WalGapRecord>,
) -> Result<(), EnvError> {
    use crate::backup::walverify::CheckStatus;
    let (code, report) = wal_verify_integrity(env).await?;
    for gap in gaps {
        let segment = gap.segment.as_str();
        (gap.detected, gap.wal_verify) = match &report {
            Err(why) => (false, why.clone()),
            Ok(integrity) => {
                let range = integrity.details.iter().find(|d| d.holds_lost(segment));
                (
                    code == Some(exit::CHECK_FAILURE)
                        && integrity.status == CheckStatus::Failure
                        && range.is_some(),
                    format!(
                        "exit {}, integrity {}, {}",
                        code.map_or("-".to_string(), |c| c.to_string()),
                        integrity.status.as_str(),
                        range.map_or("no MISSING_LOST range holds it".to_string(), |d| {
                            format!("MISSING_LOST {} to {}", d.start_segment, d.end_segment)
                        })
                    ),
                )
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_lost_ranges_no_step_made_fail_a_verify_during_writes() {
        use crate::backup::walverify::{SegmentRange, SegmentStatus};
        let range = |start: &str, end: &str, status| SegmentRange {
            timeline_id: 1,
            start_segment: start.into(),
            end_segment: end.into(),
            segments_count: 1,
            status,
        };
        let details = [
            range(
                "000000010000000000000003",
                "000000010000000000000009",
                SegmentStatus::Found,
            ),
            range(
                "00000001000000000000000A",
                "00000001000000000000000A",
                SegmentStatus::MissingLost,
            ),
            range(
                "00000001000000000000000B",
                "000000010000000000000010",
                SegmentStatus::Found,
            ),
            range(
                "000000010000000000000011",
                "000000010000000000000013",
                SegmentStatus::MissingUploading,
            ),
        ];
        assert!(lost_beyond(&details, &["00000001000000000000000A"]).is_empty());
        assert_eq!(
            lost_beyond(&details, &[]),
            ["00000001000000000000000A to 00000001000000000000000A"]
        );
    }

    #[test]
    fn retention_keeps_what_the_policy_and_delta_chains_need() {
        let (a, a1, a2) = (
            "base_000000010000000000000002",
            "base_000000010000000000000008_D_000000010000000000000002",
            "base_00000001000000000000000F_D_000000010000000000000008",
        );
        let (b, b1) = (
            "base_000000010000000000000015",
            "base_00000001000000000000001A_D_000000010000000000000015",
        );
        let all = names(&[a, a1, a2, b, b1]);
        assert_eq!(delta_parent(a1), Some("000000010000000000000002"));
        assert_eq!(delta_parent(a), None);
        assert_eq!(
            retained(&all, 1, true),
            (names(&[b, b1]), names(&[a, a1, a2]))
        );
        assert_eq!(retained(&all, 2, true), (all.clone(), vec![]));
        // A kept delta keeps the backups it builds on.
        assert_eq!(
            retained(&all, 1, false),
            (names(&[b, b1]), names(&[a, a1, a2]))
        );
        assert_eq!(retained(&all[..3], 1, false), (names(&[a, a1, a2]), vec![]));
        let fulls = names(&[a, b, "base_000000010000000000000020"]);
        assert_eq!(
            retained(&fulls, 2, false),
            (fulls[1..].to_vec(), fulls[..1].to_vec())
        );
    }
}
