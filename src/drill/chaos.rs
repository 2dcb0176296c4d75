//! The chaos drill (`chaos: true`): its timeline and the storage fault its
//! restores meet are drawn from the seed, as its conditions are, so that
//! many seeds (`--repeat`) cover operations overlapping, failing storage
//! during writes and restores, retention, failovers, holes in the archive
//! and disasters in combinations no hand-written scenario lists, and
//! `--seed` replays any one of them. The drawn plan is an ordinary
//! scenario, checked by the same rules as a file.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{
    DisasterKind, Environment, OutageMode, RestoreFault, RestorePhase, Scenario, Step,
};

/// WAL segment sizes a chaos drill draws from (MiB): the smallest, the
/// default, and a large one as fleets tuned for bulk loads use.
const SEGMENT_SIZES_MB: [u32; 3] = [1, 16, 64];

/// The tool's retry window when the scenario sets none.
const TOOL_RETRY_WINDOW: Duration = Duration::from_secs(120);

/// `scenario` with its timeline and restore fault drawn from `seed`, and a
/// line saying what was drawn.
pub(super) fn draw(scenario: &Scenario, seed: u64) -> Result<(Scenario, String), String> {
    // A stream of its own: the other draws of a seed stay as they were.
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x6368_616f));
    let end = scenario.workload.duration;
    let mut drawn = scenario.clone();
    drawn.chaos = false;
    drawn.steps = timeline(&mut rng, scenario, end);
    drawn.restores.storage_fault = restore_fault(&mut rng, scenario);
    if scenario.storage.prefetch.is_none() && rng.random_ratio(1, 2) {
        drawn.storage.prefetch = Some(0);
    }
    // Restores without a storage fault: half of them have backup-fetch
    // killed mid-way, where the environment can.
    drawn.restores.interrupt_fetch = drawn.restores.storage_fault.is_none()
        && scenario.environment == Environment::Local
        && rng.random_ratio(1, 2);
    // Drawn after the rest, so that the draws above replay as before these
    // existed: a twin to half the failovers, where the environment can
    // promote one; the WAL segment size, unless the scenario sets it.
    let twin_able = scenario.environment == Environment::Local;
    for step in &mut drawn.steps {
        if let Step::PitrFailover { twin, .. } = step {
            *twin = twin_able && rng.random_ratio(1, 2);
        }
    }
    if scenario.postgres.wal_segment_size_mb.is_none() {
        drawn.postgres.wal_segment_size_mb =
            Some(SEGMENT_SIZES_MB[rng.random_range(0..SEGMENT_SIZES_MB.len())]);
    }
    // One backup after the first in three starts at a segment boundary.
    for step in drawn.steps.iter_mut().skip(1) {
        if let Step::BaseBackup {
            at_segment_start, ..
        } = step
        {
            *at_segment_start = rng.random_ratio(1, 3);
        }
    }
    drawn
        .check_drawn()
        .map_err(|why| format!("the chaos plan drawn from seed {seed} is invalid: {why}"))?;
    let steps: Vec<String> = drawn
        .steps
        .iter()
        .map(|s| {
            let how = match s {
                Step::PitrFailover { twin: true, .. } => " with a twin",
                Step::BaseBackup {
                    at_segment_start: true,
                    ..
                } => " at a segment start",
                _ => "",
            };
            format!("{} {}{how}", humantime::format_duration(s.at()), s.action())
        })
        .collect();
    let fault = match &drawn.restores.storage_fault {
        Some(f) => format!(
            "storage {} for {} from {}",
            f.mode.as_str(),
            humantime::format_duration(f.duration),
            f.during.as_str()
        ),
        None if drawn.restores.interrupt_fetch => "backup-fetch killed mid-way".into(),
        None => "none".into(),
    };
    let prefetch = match drawn.storage.prefetch {
        Some(0) => "off",
        _ => "on",
    };
    let summary = format!(
        "steps: {}; restores meet: {fault}; prefetch {prefetch}; WAL segments of {} MiB",
        steps.join(", "),
        drawn.postgres.wal_segment_size_mb.unwrap_or(16)
    );
    Ok((drawn, summary))
}

/// A time in `[from, to)` of the workload, in whole 100 ms.
fn time_in(rng: &mut StdRng, from: Duration, to: Duration) -> Duration {
    let (lo, hi) = (from.as_millis() / 100, to.as_millis() / 100);
    Duration::from_millis(100 * rng.random_range(lo..hi.max(lo + 1)) as u64)
}

/// The steps: a backup at 0s, then each kind of event with its own odds
/// at a random time. A failover comes in the first half, retention and
/// holes in the archive in the second, so that neither takes what a
/// failover restores (soak of 2026-12-05: a failover through a deleted
/// or corrupted segment failed, as it must, and stopped the drill); a
/// disaster, when drawn, ends the run.
fn timeline(rng: &mut StdRng, scenario: &Scenario, end: Duration) -> Vec<Step> {
    let s = Duration::from_secs;
    let (early, late) = (s(2), end.saturating_sub(s(2)).max(s(3)));
    let half = end / 2;
    let mut steps = vec![Step::BaseBackup {
        at: Duration::ZERO,
        full: false,
        at_segment_start: false,
    }];
    for _ in 0..rng.random_range(1..=2) {
        let full = scenario.storage.delta_max_steps > 0 && rng.random_ratio(1, 3);
        steps.push(Step::BaseBackup {
            at: time_in(rng, early, late),
            full,
            at_segment_start: false,
        });
    }
    let maybe = |rng: &mut StdRng, odds: (u32, u32), from: Duration, to: Duration| {
        rng.random_ratio(odds.0, odds.1)
            .then(|| time_in(rng, from, to))
    };
    if let Some(at) = maybe(rng, (1, 3), early, late) {
        steps.push(Step::OverlappingBackups { at });
    }
    if let Some(at) = maybe(rng, (1, 3), s(4).max(early), half) {
        steps.push(Step::PitrFailover { at, twin: false });
    }
    if let Some(at) = maybe(rng, (1, 3), half, late) {
        steps.push(Step::DeleteDuringBackup { at, retain: 2 });
    }
    if let Some(at) = maybe(rng, (1, 4), half, late) {
        steps.push(Step::Delete {
            at,
            retain: 2,
            full: false,
        });
    }
    if let Some(at) = maybe(rng, (1, 2), early, late) {
        let modes = outage_modes(scenario);
        steps.push(Step::StorageOutage {
            at,
            duration: s(rng.random_range(1..=4)),
            mode: modes[rng.random_range(0..modes.len())],
        });
    }
    // Holes in the archive come after any failover: a failover's restore
    // through one must fail, and the drill's failover expects to succeed.
    if let Some(at) = maybe(rng, (1, 5), half, late) {
        steps.push(Step::DeleteWal { at });
    }
    if let Some(at) = maybe(rng, (1, 6), half, late) {
        steps.push(Step::StorageCorruption { at });
    }
    if let Some(at) = maybe(rng, (1, 2), early, late) {
        steps.push(Step::VacuumFreeze { at });
    }
    if let Some(at) = maybe(rng, (1, 3), early, late) {
        steps.push(Step::Checkpoint { at });
    }
    steps.sort_by_key(Step::at);
    if rng.random_ratio(1, 4) {
        steps.push(Step::Disaster {
            at: end,
            kind: DisasterKind::KillPrimary,
        });
    }
    // Drawn last, so that the draws above replay as before they existed.
    if let Some(at) = maybe(rng, (1, 3), early, late) {
        steps.push(Step::VerifyDuringWrites { at });
        steps.sort_by_key(Step::at);
    }
    steps
}

/// The ways the scenario's environment can fail its storage.
fn outage_modes(scenario: &Scenario) -> Vec<OutageMode> {
    [
        OutageMode::Disconnect,
        OutageMode::Pause,
        OutageMode::Errors,
    ]
    .into_iter()
    .filter(|m| m.available_in(scenario.environment))
    .collect()
}

/// The storage fault restores meet, in one drill of two: from a random
/// phase, in a mode the environment has, either within the tool's retry
/// window (a restore must go through it) or beyond it (a restore may fail,
/// loudly, and its retry must be exact).
fn restore_fault(rng: &mut StdRng, scenario: &Scenario) -> Option<RestoreFault> {
    if !rng.random_ratio(1, 2) {
        return None;
    }
    let phases = [
        RestorePhase::BackupFetch,
        RestorePhase::WalReplay,
        RestorePhase::Consistent,
    ];
    let modes = outage_modes(scenario);
    let window = scenario.storage.retry_timeout.unwrap_or(TOOL_RETRY_WINDOW);
    let duration = match rng.random_ratio(1, 2) {
        true => Duration::from_secs(1),
        false => window + Duration::from_secs(2),
    };
    Some(RestoreFault {
        during: phases[rng.random_range(0..phases.len())],
        mode: modes[rng.random_range(0..modes.len())],
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn shipped(file: &str) -> Scenario {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios/chaos")
            .join(file);
        Scenario::load(&path).unwrap()
    }

    #[test]
    fn every_seed_draws_a_valid_plan_and_seeds_cover_every_kind() {
        for file in ["chaos.yaml", "chaos-containers.yaml"] {
            let scenario = shipped(file);
            let (mut actions, mut phases, mut modes) =
                (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
            let (mut interrupted, mut twins) = (0, 0);
            let mut sizes = BTreeSet::new();
            let mut boundary_starts = 0;
            for seed in 0..400 {
                let (plan, summary) = draw(&scenario, seed).unwrap_or_else(|e| panic!("{e}"));
                assert!(!plan.chaos && summary.starts_with("steps: 0s base_backup"));
                // The same seed, the same plan.
                assert_eq!(draw(&scenario, seed).unwrap().0, plan);
                actions.extend(plan.steps.iter().map(Step::action));
                // Nothing a failover restores is taken away before it.
                let failover = plan.steps.iter().find(|s| s.action() == "pitr_failover");
                if let Some(f) = failover {
                    assert!(
                        plan.steps
                            .iter()
                            .filter(|s| matches!(
                                s.action(),
                                "delete"
                                    | "delete_during_backup"
                                    | "delete_wal"
                                    | "storage_corruption"
                            ))
                            .all(|s| s.at() >= f.at()),
                        "seed {seed}: {summary}"
                    );
                }
                if plan
                    .steps
                    .iter()
                    .any(|s| matches!(s, Step::PitrFailover { twin: true, .. }))
                {
                    twins += 1;
                }
                if let Some(f) = plan.restores.storage_fault {
                    phases.insert(f.during.as_str());
                    modes.insert(f.mode.as_str());
                }
                sizes.insert(plan.postgres.wal_segment_size_mb);
                boundary_starts += plan
                    .steps
                    .iter()
                    .filter(|s| {
                        matches!(
                            s,
                            Step::BaseBackup {
                                at_segment_start: true,
                                ..
                            }
                        )
                    })
                    .count();
                if plan.restores.interrupt_fetch {
                    assert!(plan.restores.storage_fault.is_none());
                    interrupted += 1;
                }
            }
            // A quarter of the local drills; none where it cannot be done.
            match file {
                "chaos.yaml" => assert!((60..140).contains(&interrupted), "{interrupted}"),
                _ => assert_eq!(interrupted, 0),
            }
            // Half the failovers of local drills have a twin (a third of
            // drills fail over); none where it cannot be done.
            match file {
                "chaos.yaml" => assert!((40..100).contains(&twins), "{twins}"),
                _ => assert_eq!(twins, 0),
            }
            for action in [
                "base_backup",
                "overlapping_backups",
                "delete_during_backup",
                "delete",
                "pitr_failover",
                "storage_outage",
                "delete_wal",
                "storage_corruption",
                "vacuum_freeze",
                "checkpoint",
                "verify_during_writes",
                "disaster",
            ] {
                assert!(actions.contains(action), "{file}: {action} never drawn");
            }
            assert_eq!(phases.len(), 3, "{file}: {phases:?}");
            // One in three of the 1.5 backups after the first, per drill.
            assert!((120..280).contains(&boundary_starts), "{boundary_starts}");
            assert_eq!(
                sizes,
                BTreeSet::from([Some(1), Some(16), Some(64)]),
                "{file}"
            );
            assert_eq!(modes.len(), 3, "{file}: {modes:?}");
        }
    }
}
