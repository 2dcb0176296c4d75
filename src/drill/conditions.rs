//! The conditions a drill runs under beyond its target times, drawn from
//! the seed where the scenario leaves them open (so `--seed` replays
//! them): the server's time zone, in which the tool is given its recovery
//! targets, the WAL segment the cluster starts in, and whether the
//! primary's configuration carries recovery settings an earlier
//! point-in-time restore done by hand left behind, and whether restores
//! go in place, into the directory of the restore before.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};

use crate::env::zone::{self, ServerZone};
use crate::report::ConditionsRecord;
use crate::scenario::{Environment, Scenario, DST_DURING_RUN};

/// Zones a drill draws from: UTC, east and west, half- and quarter-hour
/// offsets, one with half-hour daylight saving, and (drawn as well) one
/// whose daylight-saving time starts during the run.
pub const ZONES: [&str; 8] = [
    "UTC",
    "Europe/Berlin",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
];

/// The conditions of one drill.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub zone: Arc<ServerZone>,
    /// `None`: where initdb leaves the WAL.
    pub start_segment: Option<String>,
    /// Recovery settings left in the primary's configuration, as a
    /// point-in-time restore done by hand leaves them.
    pub leftover_recovery_settings: bool,
    /// Each restore after the first goes into the one before's data
    /// directory with `backup-fetch --force` (local environment).
    pub restores_in_place: bool,
    /// The tool runs as the seed's commands run it (never drawn).
    pub seed_commands: bool,
    /// What a chaos drill drew for its timeline and restore fault.
    pub chaos: Option<String>,
    /// Whether each was drawn (else the scenario set it).
    drawn_zone: bool,
    drawn_start: bool,
    drawn_leftovers: bool,
    drawn_in_place: bool,
}

impl Conditions {
    /// The scenario's conditions, the open ones drawn from `seed`; a zone
    /// whose daylight saving starts during the run has it start half the
    /// workload's length after `started` (the drill's start: the workload
    /// starts a few seconds later, so the switch falls inside it).
    pub fn draw(
        scenario: &Scenario,
        seed: u64,
        started: DateTime<Utc>,
    ) -> Result<Conditions, String> {
        // A stream of its own: the other draws of a seed stay as they were.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(0x636f_6e64));
        let set = &scenario.conditions;
        let drawn_zone = set.timezone.is_none();
        let zone = match set.timezone.clone() {
            Some(zone) => zone,
            None => match rng.random_range(0..=ZONES.len()) {
                i if i == ZONES.len() => DST_DURING_RUN.to_string(),
                i => ZONES[i].to_string(),
            },
        };
        let zone = match zone.as_str() {
            DST_DURING_RUN => {
                let half =
                    chrono::Duration::from_std(scenario.workload.duration / 2).unwrap_or_default();
                ServerZone::new(&zone::dst_starting_at(started + half))?
            }
            "UTC" => ServerZone::utc(),
            name => ServerZone::new(name)?,
        };
        let seg_size = u64::from(scenario.postgres.wal_segment_size_mb.unwrap_or(16)) << 20;
        let drawn_start = set.start_segment.is_none();
        let start_segment = match set.start_segment.as_deref() {
            Some("initdb") => None,
            Some(segment) => Some(segment.to_string()),
            None if scenario.environment == Environment::Kind => None,
            None => {
                // Two segments before a log boundary: the run crosses it.
                let per_log = 0x1_0000_0000 / seg_size;
                match rng.random_range(0..3) {
                    0 => None,
                    1 => Some(format!("0000000100000000{:08X}", per_log - 2)),
                    _ => Some(format!("00000001000000FF{:08X}", per_log - 2)),
                }
            }
        };
        let drawn_leftovers = set.leftover_recovery_settings.is_none();
        let leftover_recovery_settings = set
            .leftover_recovery_settings
            .unwrap_or_else(|| rng.random_ratio(1, 3));
        // An interrupted restore is retried in its own directory.
        let implied_in_place = scenario.restores.interrupt_fetch;
        let drawn_in_place = set.restores_in_place.is_none()
            && !implied_in_place
            && scenario.environment == Environment::Local;
        let restores_in_place = match set.restores_in_place {
            Some(set) => set,
            None => implied_in_place || (drawn_in_place && rng.random_ratio(1, 3)),
        };
        Ok(Conditions {
            zone: Arc::new(zone),
            start_segment,
            leftover_recovery_settings,
            restores_in_place,
            seed_commands: set.seed_commands,
            chaos: None,
            drawn_zone,
            drawn_start,
            drawn_leftovers,
            drawn_in_place,
        })
    }

    /// What the report shows.
    pub fn record(&self) -> ConditionsRecord {
        ConditionsRecord {
            timezone: self.zone.setting().to_string(),
            timezone_drawn: self.drawn_zone,
            start_segment: self
                .start_segment
                .clone()
                .unwrap_or_else(|| "initdb".into()),
            start_segment_drawn: self.drawn_start,
            leftover_recovery_settings: self.leftover_recovery_settings,
            leftover_recovery_settings_drawn: self.drawn_leftovers,
            restores_in_place: self.restores_in_place,
            restores_in_place_drawn: self.drawn_in_place,
            seed_commands: self.seed_commands,
            chaos: self.chaos.clone(),
        }
    }

    /// Leaves in the primary's configuration what a point-in-time restore
    /// done by hand leaves (when the conditions say so): a target at `at`
    /// in `postgresql.conf`, spelled as PostgreSQL's lexer allows but not
    /// as pgdrill writes it, and `recovery_target_action` in a file it
    /// includes. Written through the server itself (`COPY ... TO
    /// PROGRAM`, run in its data directory), so it works in every
    /// environment; never reloaded, as a promoted primary never applies
    /// them, but every base backup carries them.
    pub async fn leave_recovery_settings(
        &self,
        primary: &tokio_postgres::Client,
        at: DateTime<Utc>,
    ) -> Result<(), tokio_postgres::Error> {
        if !self.leftover_recovery_settings {
            return Ok(());
        }
        let lines = [
            (
                "postgresql.conf",
                format!(
                    "Recovery_Target_Time '{}'   # left by a PITR done by hand",
                    self.zone.format(at)
                ),
            ),
            (
                "postgresql.conf",
                "include_if_exists 'pitr-by-hand.conf'".to_string(),
            ),
            (
                "pitr-by-hand.conf",
                "RECOVERY_TARGET_ACTION=promote".to_string(),
            ),
        ];
        for (file, line) in lines {
            // Dollar quoting: the line holds single quotes.
            primary
                .batch_execute(&format!(
                    "COPY (SELECT $line${line}$line$) TO PROGRAM 'cat >> {file}'"
                ))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Scenario {
        Scenario::from_str(
            &format!("name: c\npostgres: {{ version: 15 }}\nworkload: {{ writers: 1, rate_per_second: 1, duration: 20s }}\n{extra}"),
            "c.yaml",
        )
        .unwrap()
    }

    #[test]
    fn the_seed_draws_every_zone_and_start_and_replays_them() {
        let s = scenario("");
        let started: DateTime<Utc> = "2026-12-05T10:00:00Z".parse().unwrap();
        let mut zones = std::collections::BTreeSet::new();
        let mut starts = std::collections::BTreeSet::new();
        let mut leftovers = std::collections::BTreeSet::new();
        let mut in_place = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let c = Conditions::draw(&s, seed, started).unwrap();
            let again = Conditions::draw(&s, seed, started).unwrap();
            assert_eq!(
                (&c.zone, &c.start_segment),
                (&again.zone, &again.start_segment)
            );
            zones.insert(c.zone.setting().to_string());
            starts.insert(c.record().start_segment);
            leftovers.insert(c.leftover_recovery_settings);
            in_place.insert(c.restores_in_place);
        }
        assert_eq!(leftovers.len(), 2);
        assert_eq!(in_place.len(), 2);
        assert_eq!(zones.len(), ZONES.len() + 1, "{zones:?}");
        assert!(zones.iter().any(|z| z.starts_with("<-0330>")), "{zones:?}");
        assert_eq!(
            starts.into_iter().collect::<Vec<_>>(),
            [
                "0000000100000000000000FE",
                "00000001000000FF000000FE",
                "initdb"
            ]
        );
    }

    #[test]
    fn the_scenario_sets_them() {
        let s = scenario("conditions: { timezone: dst_during_run, start_segment: initdb }");
        let started: DateTime<Utc> = "2026-12-05T10:00:00Z".parse().unwrap();
        let c = Conditions::draw(&s, 7, started).unwrap();
        let switch = started + chrono::Duration::seconds(10);
        assert_eq!(
            c.zone.offset_at(switch - chrono::Duration::seconds(1)),
            -12600
        );
        assert_eq!(c.zone.offset_at(switch), -9000);
        assert_eq!(c.start_segment, None);
        assert!(!c.record().timezone_drawn && !c.record().start_segment_drawn);
        assert!(c.record().leftover_recovery_settings_drawn);
        // Restores in place only where the environment can.
        let containers = scenario("environment: containers");
        assert!((0..50).all(|seed| {
            let c = Conditions::draw(&containers, seed, started).unwrap();
            !c.restores_in_place && !c.record().restores_in_place_drawn
        }));
        // Start segments in containers too (the image's entrypoint), not
        // in kind.
        let starts = |s: &Scenario| {
            (0..50)
                .filter(|&seed| {
                    Conditions::draw(s, seed, started)
                        .unwrap()
                        .start_segment
                        .is_some()
                })
                .count()
        };
        assert!(starts(&containers) > 10);
        assert_eq!(starts(&scenario("environment: kind")), 0);
        let c = Conditions::draw(
            &scenario("conditions: { timezone: Asia/Kathmandu }"),
            7,
            started,
        )
        .unwrap();
        assert_eq!(c.zone.setting(), "Asia/Kathmandu");
    }
}
