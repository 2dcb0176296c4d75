//! `delete`: which backups and WAL a retention policy removes, and the
//! crash-safe order in which they go.
//!
//! Rules: permanent backups are always kept; WAL is deleted only when its
//! log/segment digits are below the start segment of every kept backup and
//! of every backup that may be in progress (any timeline: a restore only
//! reads forward from its backup's start, so WAL below it on any timeline
//! is never read); `.history` files are kept unless everything goes; a
//! backup without a sentinel is a leftover only when it started before the
//! oldest kept backup of its own timeline (a new timeline numbers its segments from
//! its switch point, lower than the old timeline's newer backups, so
//! positions compare within a timeline only); a backup's sentinel is
//! deleted before its other objects, so an interrupted delete never leaves
//! a listed, broken backup.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::catalog::{self, BackupSummary};
use super::layout;
use super::sabotage::Sabotage;
use super::store::{Key, ObjectInfo};
use super::timestamp::{self, TimestampError};
use super::{BackupError, Context};

/// A retention policy, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Keep the newest `count` backups (`full_only`: count full backups).
    Retain { count: usize, full_only: bool },
    /// Delete backups older than a time or than a named backup.
    Before(Before),
    /// Delete every backup and all WAL; permanent backups only with
    /// `force` (`everything FORCE`), as in WAL-G.
    Everything { force: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Before {
    Time(DateTime<Utc>),
    Backup(String),
}

impl Policy {
    /// Parses WAL-G's argument forms: `retain [FULL] N`,
    /// `before TIMESTAMP|BACKUP_NAME`, `everything`.
    pub fn parse(args: &[String]) -> Result<Policy, BackupError> {
        let bad = |m: &str| {
            BackupError::Invalid(format!("{m}; usage: delete [--confirm] retain [FULL] N | before TIMESTAMP|BACKUP_NAME | everything [FORCE]"))
        };
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let count = |s: &str| -> Result<usize, BackupError> {
            match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(&format!("retain needs a positive count, got {s:?}"))),
            }
        };
        match words.as_slice() {
            ["retain", n] => Ok(Policy::Retain {
                count: count(n)?,
                full_only: false,
            }),
            ["retain", mode, n] if mode.eq_ignore_ascii_case("FULL") => Ok(Policy::Retain {
                count: count(n)?,
                full_only: true,
            }),
            ["before", target] if target.starts_with("base_") => {
                Ok(Policy::Before(Before::Backup(target.to_string())))
            }
            ["before", target] => match timestamp::parse(target) {
                Ok(t) => Ok(Policy::Before(Before::Time(t))),
                Err(e @ TimestampError::NoOffset { .. }) => Err(bad(&e.to_string())),
                Err(TimestampError::NotATime { .. }) => Err(bad(&format!(
                    "{target:?} is neither a timestamp with a UTC offset ({}) nor a backup name (base_...)",
                    timestamp::ACCEPTED
                ))),
            },
            ["everything"] => Ok(Policy::Everything { force: false }),
            ["everything", "FORCE"] => Ok(Policy::Everything { force: true }),
            [] => Err(bad("missing policy")),
            _ => Err(bad(&format!("unknown policy {:?}", words.join(" ")))),
        }
    }
}

/// What a delete would remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub delete_backups: Vec<String>,
    pub keep_backups: Vec<String>,
    /// Leftovers of backups that never completed (no sentinel), older than
    /// the oldest kept backup.
    pub delete_incomplete: Vec<String>,
    /// WAL objects to remove, oldest first.
    pub delete_wal: Vec<Key>,
}

/// Decides what goes. `backups` are complete backups, oldest first;
/// `wal` and `backup_objects` are the store's listings.
pub fn plan(
    backups: &[BackupSummary],
    wal: &[ObjectInfo],
    backup_objects: &[ObjectInfo],
    policy: &Policy,
) -> Result<Plan, BackupError> {
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    match policy {
        Policy::Everything { force: true } => {}
        Policy::Everything { force: false } => {
            let permanent: Vec<&str> = backups
                .iter()
                .filter(|b| b.is_permanent)
                .map(|b| b.backup_name.as_str())
                .collect();
            if !permanent.is_empty() {
                return Err(BackupError::Invalid(format!(
                    "`delete everything` deletes permanent backups only with FORCE, and {} permanent: {}; add FORCE (`delete --confirm everything FORCE`) to delete them too, or make them ordinary first with `backup-mark -i NAME`",
                    if permanent.len() == 1 { "this one is" } else { "these are" },
                    permanent.join(", ")
                )));
            }
        }
        Policy::Retain { count, full_only } => {
            // FULL counts full backups only and keeps every delta newer
            // than the oldest full backup kept.
            let counted = backups
                .iter()
                .rev()
                .enumerate()
                .filter(|(_, b)| !*full_only || b.increment_count == 0)
                .nth(*count - 1)
                .map_or(backups.len(), |(i, _)| i + 1);
            for b in backups.iter().rev().take(counted) {
                keep.insert(&b.backup_name);
            }
        }
        Policy::Before(before) => {
            let cutoff = match before {
                Before::Time(t) => *t,
                Before::Backup(name) => {
                    backups
                        .iter()
                        .find(|b| &b.backup_name == name)
                        .ok_or_else(|| {
                            BackupError::Invalid(format!(
                                "backup {name} not found (run backup-list)"
                            ))
                        })?
                        .start_time
                }
            };
            for b in backups.iter().filter(|b| b.start_time >= cutoff) {
                keep.insert(&b.backup_name);
            }
            if keep.is_empty() && !backups.is_empty() {
                return Err(BackupError::Invalid(
                    "this would delete every backup; use `delete everything` to do that".into(),
                ));
            }
        }
    }
    let everything = matches!(policy, Policy::Everything { .. });
    if !everything {
        for b in backups.iter().filter(|b| b.is_permanent) {
            keep.insert(&b.backup_name);
        }
        // A kept delta needs every backup of its chain.
        let by_name: BTreeMap<&str, &BackupSummary> = backups
            .iter()
            .map(|b| (b.backup_name.as_str(), b))
            .collect();
        let mut pending: Vec<&str> = keep.iter().copied().collect();
        while let Some(name) = pending.pop() {
            let base = by_name.get(name).and_then(|b| b.increment_from.as_deref());
            if let Some(base) = base.and_then(|n| by_name.get_key_value(n)).map(|(k, _)| *k) {
                if keep.insert(base) {
                    pending.push(base);
                }
            }
        }
    }
    let mut out = Plan::default();
    for b in backups {
        if keep.contains(b.backup_name.as_str()) {
            out.keep_backups.push(b.backup_name.clone());
        } else {
            out.delete_backups.push(b.backup_name.clone());
        }
    }
    let kept: Vec<(&str, &str)> = backups
        .iter()
        .filter(|b| keep.contains(b.backup_name.as_str()))
        .filter_map(|b| timeline_position(&b.wal_file_name))
        .collect();
    // Backups without a sentinel: leftovers of killed runs when they started
    // before the oldest kept backup of their timeline; otherwise they may be
    // in progress (the first backup on a new timeline, say), and they keep
    // their parts and the WAL they need.
    let complete: BTreeSet<&str> = backups.iter().map(|b| b.backup_name.as_str()).collect();
    let mut incomplete: BTreeMap<&str, Option<(&str, &str)>> = BTreeMap::new();
    for o in backup_objects {
        if let Some(name) = layout::backup_of_key(&o.key).filter(|n| !complete.contains(n)) {
            let start = name
                .strip_prefix("base_")
                .and_then(|n| n.get(..24))
                .and_then(timeline_position);
            incomplete.insert(name, start);
        }
    }
    let mut in_progress = Vec::new();
    for (name, start) in incomplete {
        let leftover = everything
            || start.is_some_and(|(timeline, pos)| {
                kept.iter()
                    .filter(|(t, _)| *t == timeline)
                    .map(|(_, kept_pos)| *kept_pos)
                    .min()
                    .is_some_and(|oldest| pos < oldest)
            });
        if leftover {
            out.delete_incomplete.push(name.to_string());
        } else {
            in_progress.extend(start);
        }
    }
    let oldest_needed = kept.iter().chain(&in_progress).map(|(_, pos)| *pos).min();
    for o in wal {
        let Some(name) = layout::wal_name_of(&o.key) else {
            continue;
        };
        let goes = match (layout::wal_sort_key(name), oldest_needed) {
            (_, _) if everything => true,
            (None, _) => false, // .history: kept
            (Some(pos), Some(bound)) => pos < bound,
            (Some(_), None) => false, // nothing kept, nothing known: keep WAL
        };
        if goes {
            out.delete_wal.push(o.key.clone());
        }
    }
    Ok(out)
}

/// A segment name's timeline and its position within it (log and segment
/// digits); `None` for anything else.
fn timeline_position(segment: &str) -> Option<(&str, &str)> {
    Some((segment.get(..8)?, layout::wal_sort_key(segment)?))
}

/// Runs `delete`: prints the plan, and carries it out with `confirm`.
pub async fn delete(ctx: &Context, policy: &Policy, confirm: bool) -> Result<Plan, BackupError> {
    let listed = catalog::list_backups(ctx).await?;
    let summaries: Vec<BackupSummary> = listed.into_iter().map(|b| b.summary).collect();
    let wal = ctx.store.list(layout::WAL_DIR).await?;
    let backup_objects = ctx.store.list(layout::BACKUP_DIR).await?;
    let mut plan = plan(&summaries, &wal, &backup_objects, policy)?;
    match ctx.settings.sabotage {
        Some(Sabotage::RetentionDeletesNeededWal) => {
            tracing::warn!("SABOTAGE: deleting the WAL the oldest kept backup needs");
            delete_wal_below_newest_kept(&mut plan, &summaries, &wal);
        }
        Some(Sabotage::RetentionDeletesUnfinished) => {
            tracing::warn!("SABOTAGE: deleting every backup without a sentinel");
            delete_every_unfinished(&mut plan, &summaries, &backup_objects);
        }
        _ => {}
    }
    let verb = if confirm { "deleting" } else { "would delete" };
    for b in &plan.delete_backups {
        println!("{verb} backup {b}");
    }
    for b in &plan.delete_incomplete {
        println!("{verb} incomplete backup leftovers {b}");
    }
    if let (Some(first), Some(last)) = (plan.delete_wal.first(), plan.delete_wal.last()) {
        println!(
            "{verb} {} WAL objects ({} .. {})",
            plan.delete_wal.len(),
            first.file_name(),
            last.file_name()
        );
    }
    for b in &plan.keep_backups {
        println!("keeping backup {b}");
    }
    if plan.delete_backups.is_empty()
        && plan.delete_incomplete.is_empty()
        && plan.delete_wal.is_empty()
    {
        println!("nothing to delete");
    }
    if !confirm {
        println!("dry run: nothing deleted; add --confirm to delete");
        return Ok(plan);
    }
    for name in &plan.delete_backups {
        // Sentinel first: from here on the backup is no longer listed.
        ctx.store.delete(&layout::sentinel_key(name)).await?;
        delete_prefix(ctx, &backup_objects, &layout::backup_prefix(name)).await?;
    }
    for name in &plan.delete_incomplete {
        delete_prefix(ctx, &backup_objects, &layout::backup_prefix(name)).await?;
    }
    for key in &plan.delete_wal {
        ctx.store.delete(key).await?;
    }
    Ok(plan)
}

/// The sabotage [`Sabotage::RetentionDeletesUnfinished`]: every backup
/// without a sentinel goes as a leftover, the one in progress too.
fn delete_every_unfinished(plan: &mut Plan, backups: &[BackupSummary], objects: &[ObjectInfo]) {
    for o in objects {
        if let Some(name) = layout::backup_of_key(&o.key) {
            let complete = backups.iter().any(|b| b.backup_name == name);
            if !complete && !plan.delete_incomplete.iter().any(|n| n == name) {
                plan.delete_incomplete.push(name.to_string());
            }
        }
    }
}

/// The defect `retention_deletes_needed_wal`: WAL goes up to the start of
/// the newest kept backup instead of the oldest.
fn delete_wal_below_newest_kept(plan: &mut Plan, backups: &[BackupSummary], wal: &[ObjectInfo]) {
    let newest_kept = backups
        .iter()
        .filter(|b| plan.keep_backups.contains(&b.backup_name))
        .filter_map(|b| layout::wal_sort_key(&b.wal_file_name))
        .max();
    let Some(bound) = newest_kept else {
        return;
    };
    for o in wal {
        let below = layout::wal_name_of(&o.key)
            .and_then(layout::wal_sort_key)
            .is_some_and(|pos| pos < bound);
        if below && !plan.delete_wal.contains(&o.key) {
            plan.delete_wal.push(o.key.clone());
        }
    }
}

async fn delete_prefix(
    ctx: &Context,
    objects: &[ObjectInfo],
    prefix: &str,
) -> Result<(), BackupError> {
    for o in objects
        .iter()
        .filter(|o| o.key.as_str().starts_with(prefix))
    {
        ctx.store.delete(&o.key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::catalog::tests::summary;

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: Key::new(key),
            size: 1,
            last_modified: Utc::now(),
        }
    }

    fn fixture() -> (Vec<BackupSummary>, Vec<ObjectInfo>) {
        let backups = vec![
            summary("base_000000010000000000000002", "2026-01-01T00:00:00Z"),
            summary("base_000000010000000000000005", "2026-01-02T00:00:00Z"),
            summary("base_000000010000000000000009", "2026-01-03T00:00:00Z"),
        ];
        let mut wal: Vec<ObjectInfo> = (1..=11)
            .map(|i| obj(&format!("wal_005/0000000100000000{i:08X}.lz4")))
            .collect();
        wal.push(obj("wal_005/00000002.history.lz4"));
        wal.push(obj("wal_005/000000010000000000000005.00000028.backup.lz4"));
        (backups, wal)
    }

    fn wal_names(plan: &Plan) -> Vec<&str> {
        plan.delete_wal
            .iter()
            .filter_map(layout::wal_name_of)
            .collect()
    }

    #[test]
    fn retain_keeps_newest_and_their_wal() {
        let (backups, wal) = fixture();
        let p = plan(
            &backups,
            &wal,
            &[],
            &Policy::parse(&["retain".into(), "2".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(p.delete_backups, ["base_000000010000000000000002"]);
        assert_eq!(
            p.keep_backups,
            [
                "base_000000010000000000000005",
                "base_000000010000000000000009"
            ]
        );
        assert_eq!(
            wal_names(&p),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004"
            ],
            "WAL from the oldest kept backup's start on stays, .history stays"
        );
    }

    /// Backups at segments 0x10, 0x20 and 0x30 of timeline 1; a restore of
    /// the first to a point in segment 0x15 promoted to timeline 2, which
    /// numbers its segments from 0x15 on; its first backup (at 0x16) is
    /// uploaded but has no sentinel yet when `delete retain 2` runs. The
    /// new timeline's segment numbers are lower than the kept backups' of
    /// timeline 1, yet nothing of timeline 2 is older than them.
    #[test]
    fn retention_compares_positions_within_a_timeline() {
        let backups = vec![
            summary("base_000000010000000000000010", "2026-01-01T00:00:00Z"),
            summary("base_000000010000000000000020", "2026-01-02T00:00:00Z"),
            summary("base_000000010000000000000030", "2026-01-03T00:00:00Z"),
        ];
        let mut wal: Vec<ObjectInfo> = (0x10..=0x35)
            .map(|i| obj(&format!("wal_005/0000000100000000{i:08X}.lz4")))
            .collect();
        wal.extend((0x15..=0x18).map(|i| obj(&format!("wal_005/0000000200000000{i:08X}.lz4"))));
        wal.push(obj("wal_005/00000002.history.lz4"));
        let in_progress = "base_000000020000000000000016";
        let objects = [
            obj(&format!(
                "basebackups_005/{in_progress}/tar_partitions/part_1.tar.lz4"
            )),
            obj(&format!(
                "basebackups_005/{in_progress}/tar_partitions/pg_control.tar.lz4"
            )),
            obj("basebackups_005/base_00000001000000000000000F/tar_partitions/part_1.tar.lz4"),
        ];
        let p = plan(
            &backups,
            &wal,
            &objects,
            &Policy::parse(&["retain".into(), "2".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(p.delete_backups, ["base_000000010000000000000010"]);
        assert_eq!(
            p.delete_incomplete,
            ["base_00000001000000000000000F"],
            "a killed run's leftovers go; the new timeline's backup in progress stays"
        );
        let deleted = wal_names(&p);
        for needed in (0x16..=0x18).map(|i| format!("0000000200000000{i:08X}")) {
            assert!(
                !deleted.contains(&needed.as_str()),
                "{needed}, which the backup in progress needs, is deleted: {deleted:?}"
            );
        }
        assert!(deleted.contains(&"000000010000000000000010"), "{deleted:?}");
    }

    #[test]
    fn retain_more_than_exist_deletes_nothing() {
        let (backups, wal) = fixture();
        let p = plan(
            &backups,
            &wal,
            &[],
            &Policy::Retain {
                count: 7,
                full_only: true,
            },
        )
        .unwrap();
        assert!(p.delete_backups.is_empty());
        assert_eq!(wal_names(&p), ["000000010000000000000001"]);
    }

    #[test]
    fn permanent_backups_and_their_wal_survive() {
        let (mut backups, wal) = fixture();
        backups[0].is_permanent = true;
        let p = plan(
            &backups,
            &wal,
            &[],
            &Policy::Retain {
                count: 1,
                full_only: false,
            },
        )
        .unwrap();
        assert_eq!(p.delete_backups, ["base_000000010000000000000005"]);
        assert_eq!(wal_names(&p), ["000000010000000000000001"]);
    }

    #[test]
    fn before_time_and_before_name() {
        let (backups, wal) = fixture();
        let p = plan(
            &backups,
            &wal,
            &[],
            &Policy::parse(&["before".into(), "2026-01-02T12:00:00Z".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            p.delete_backups,
            [
                "base_000000010000000000000002",
                "base_000000010000000000000005"
            ]
        );
        assert_eq!(
            wal_names(&p).len(),
            9,
            "segments 1-8 and the .backup file of 5"
        );
        let p = plan(
            &backups,
            &wal,
            &[],
            &Policy::parse(&["before".into(), "base_000000010000000000000005".into()]).unwrap(),
        )
        .unwrap();
        assert_eq!(p.delete_backups, ["base_000000010000000000000002"]);
        let err = plan(
            &backups,
            &wal,
            &[],
            &Policy::Before(Before::Time("2027-01-01T00:00:00Z".parse().unwrap())),
        )
        .unwrap_err();
        assert!(err.to_string().contains("everything"));
    }

    /// base 2 <- delta 5 <- delta 9, then full 12 <- delta 15.
    fn chain_fixture() -> Vec<BackupSummary> {
        let mut b = vec![
            summary("base_000000010000000000000002", "2026-01-01T00:00:00Z"),
            summary(
                "base_000000010000000000000005_D_000000010000000000000002",
                "2026-01-02T00:00:00Z",
            ),
            summary(
                "base_000000010000000000000009_D_000000010000000000000005",
                "2026-01-03T00:00:00Z",
            ),
            summary("base_00000001000000000000000C", "2026-01-04T00:00:00Z"),
            summary(
                "base_00000001000000000000000F_D_00000001000000000000000C",
                "2026-01-05T00:00:00Z",
            ),
        ];
        for (i, from) in [(1, 0), (2, 1), (4, 3)] {
            b[i].increment_from = Some(b[from].backup_name.clone());
            b[i].increment_count = b[from].increment_count + 1;
            b[i].wal_file_name = b[i].backup_name[5..29].to_string();
        }
        b
    }

    #[test]
    fn kept_deltas_keep_their_chain_and_full_counts_full_backups() {
        let backups = chain_fixture();
        let names = |p: &Plan| {
            p.keep_backups
                .iter()
                .map(|n| n[5..29].to_string())
                .collect::<Vec<_>>()
        };
        // retain 3 keeps delta 9, whose chain is 5 and 2: nothing goes.
        let p = plan(
            &backups,
            &[],
            &[],
            &Policy::Retain {
                count: 3,
                full_only: false,
            },
        )
        .unwrap();
        assert!(p.delete_backups.is_empty(), "{:?}", p.delete_backups);
        // retain 2 keeps 12 and its delta: the old chain goes whole.
        let p = plan(
            &backups,
            &[],
            &[],
            &Policy::Retain {
                count: 2,
                full_only: false,
            },
        )
        .unwrap();
        assert_eq!(p.delete_backups.len(), 3);
        // retain 1 keeps delta 15 and therefore its base 12.
        let p = plan(
            &backups,
            &[],
            &[],
            &Policy::Retain {
                count: 1,
                full_only: false,
            },
        )
        .unwrap();
        assert_eq!(
            names(&p),
            ["00000001000000000000000C", "00000001000000000000000F"]
        );
        // retain FULL 1: the newest full backup and everything after it.
        let p = plan(
            &backups,
            &[],
            &[],
            &Policy::Retain {
                count: 1,
                full_only: true,
            },
        )
        .unwrap();
        assert_eq!(
            names(&p),
            ["00000001000000000000000C", "00000001000000000000000F"]
        );
        // retain FULL 2: both chains.
        let p = plan(
            &backups,
            &[],
            &[],
            &Policy::Retain {
                count: 2,
                full_only: true,
            },
        )
        .unwrap();
        assert!(p.delete_backups.is_empty());
        // before the last delta keeps its base.
        let p = plan(
            &backups,
            &[],
            &[],
            &Policy::Before(Before::Time("2026-01-04T12:00:00Z".parse().unwrap())),
        )
        .unwrap();
        assert_eq!(
            names(&p),
            ["00000001000000000000000C", "00000001000000000000000F"]
        );
    }

    #[test]
    fn everything_deletes_all_including_history() {
        let (backups, wal) = fixture();
        let p = plan(&backups, &wal, &[], &Policy::Everything { force: false }).unwrap();
        assert_eq!(p.delete_backups.len(), 3);
        assert_eq!(p.delete_wal.len(), wal.len());
    }

    #[test]
    fn everything_spares_permanent_backups_unless_forced() {
        let (mut backups, wal) = fixture();
        backups[1].is_permanent = true;
        let words =
            |w: &[&str]| Policy::parse(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let policy = words(&["everything"]).unwrap();
        assert_eq!(policy, Policy::Everything { force: false });
        let err = plan(&backups, &wal, &[], &policy).unwrap_err().to_string();
        assert!(
            err.contains("base_000000010000000000000005") && err.contains("FORCE"),
            "{err}"
        );
        let forced = words(&["everything", "FORCE"]).unwrap();
        let p = plan(&backups, &wal, &[], &forced).unwrap();
        assert_eq!(p.delete_backups.len(), 3);
        assert!(p.keep_backups.is_empty());
    }

    #[test]
    fn old_incomplete_backups_go_new_ones_stay() {
        let (backups, wal) = fixture();
        let objects = vec![
            obj("basebackups_005/base_000000010000000000000001/tar_partitions/part_1.tar.lz4"),
            obj("basebackups_005/base_00000001000000000000000A/tar_partitions/part_1.tar.lz4"),
        ];
        let p = plan(
            &backups,
            &wal,
            &objects,
            &Policy::Retain {
                count: 2,
                full_only: false,
            },
        )
        .unwrap();
        assert_eq!(p.delete_incomplete, ["base_000000010000000000000001"]);
    }

    #[test]
    fn policy_parse_errors_are_clear() {
        let e = Policy::parse(&["retain".into(), "0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("positive"), "{e}");
        let e = Policy::parse(&["before".into(), "yesterday".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("timestamp"), "{e}");
        let e = Policy::parse(&["keep".into()]).unwrap_err().to_string();
        assert!(e.contains("usage"), "{e}");
        let e = Policy::parse(&["before".into(), "2026-02-09 14:30:00".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no UTC offset"), "{e}");
        assert_eq!(
            Policy::parse(&["before".into(), "2026-02-09 16:30:00+02".into()]).unwrap(),
            Policy::parse(&["before".into(), "2026-02-09T14:30:00Z".into()]).unwrap()
        );
    }
}
