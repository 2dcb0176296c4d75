//! What `backup-fetch` writes so that the restored server recovers:
//! `recovery.signal`, `restore_command`, the target.

use std::path::Path;

use chrono::Utc;
use tracing::warn;

use super::fetch::*;
use super::pgconf;
use crate::backup::sabotage::Sabotage;
use crate::backup::{BackupError, Context};

/// What `backup-fetch` writes for recovery.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryConfig {
    /// Only restore files; print what to do next.
    None,
    /// `recovery.signal` plus restore_command: recover to the end of the archive.
    EndOfArchive,
    /// `recovery.signal`, restore_command, `recovery_target_time` (UTC,
    /// explicit offset) and `recovery_target_action = 'promote'`.
    Time(chrono::DateTime<Utc>),
}

/// Every setting that steers archive recovery (PostgreSQL's "Archive
/// Recovery" and "Recovery Target" settings). A backup can carry any of
/// them: a point-in-time restore done by hand leaves them in
/// `postgresql.conf` or its includes, one done by a tool in
/// `postgresql.auto.conf`, and a promoted primary ignores them, so its
/// base backups keep them. A restore writes each one at the end of
/// `postgresql.auto.conf`, the last file the server reads, where the last
/// occurrence of a setting wins: whatever spelling or file carried them,
/// recovery goes where it is asked and nowhere else (and never sees two
/// targets, which the server refuses). Values are the server's defaults
/// except where [`write_recovery_config`] sets its own.
const RECOVERY_SETTINGS: [(&str, &str); 12] = [
    ("restore_command", "''"),
    ("archive_cleanup_command", "''"),
    ("recovery_end_command", "''"),
    ("recovery_min_apply_delay", "0"),
    ("recovery_target", "''"),
    ("recovery_target_lsn", "''"),
    ("recovery_target_name", "''"),
    ("recovery_target_xid", "''"),
    ("recovery_target_time", "''"),
    ("recovery_target_inclusive", "on"),
    ("recovery_target_timeline", "'latest'"),
    ("recovery_target_action", "'pause'"),
];

/// The settings of which at most one may be set; the server checks as it
/// applies each, in order.
const TARGETS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target_time",
];

/// The canonical (lower-case) name and default of the recovery setting
/// spelled `name`.
fn recovery_setting(name: &str) -> Option<(&'static str, &'static str)> {
    RECOVERY_SETTINGS
        .iter()
        .copied()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
}

/// The recovery settings the restored configuration carries.
fn carried_recovery_settings(dest: &Path) -> Vec<pgconf::Setting> {
    pgconf::settings(dest)
        .into_iter()
        .filter(|s| recovery_setting(&s.name).is_some())
        .collect()
}

/// Every recovery setting with `chosen` values in place of the defaults,
/// the chosen target last, preceded by the carried settings spelled
/// otherwise (`carried`). The server keeps only the last occurrence of a
/// name as written, compared case-sensitively: a carried
/// `Recovery_Target_Time` is another name than `recovery_target_time`, is
/// applied too, before these, and a target it sets makes the next target
/// setting fail ("multiple recovery targets specified"). So each other
/// spelling is overridden under that spelling, targets emptied, before the
/// block sets the one asked for.
fn recovery_block(chosen: &[(&str, String)], carried: &[pgconf::Setting]) -> Vec<String> {
    let value = |(name, default): (&str, &str)| -> String {
        chosen
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| default.to_string(), |(_, v)| v.clone())
    };
    let mut lines = Vec::new();
    let mut spelled: Vec<&str> = Vec::new();
    for s in carried {
        let Some(setting @ (canonical, _)) = recovery_setting(&s.name) else {
            continue;
        };
        if s.name == canonical || spelled.contains(&s.name.as_str()) {
            continue;
        }
        spelled.push(&s.name);
        let v = match TARGETS.contains(&canonical) {
            true => "''".to_string(),
            false => value(setting),
        };
        lines.push(format!("{} = {v}", s.name));
    }
    let (targets_chosen, rest): (Vec<_>, Vec<_>) = RECOVERY_SETTINGS
        .iter()
        .copied()
        .partition(|(name, _)| TARGETS.contains(name) && chosen.iter().any(|(n, _)| n == name));
    for setting @ (name, _) in rest.into_iter().chain(targets_chosen) {
        lines.push(format!("{name} = {}", value(setting)));
    }
    lines
}

fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

pub(super) fn write_recovery_config(
    ctx: &Context,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<(), BackupError> {
    let restore_command = opts
        .restore_command
        .clone()
        .unwrap_or_else(|| ctx.self_command("wal-fetch %f %p"));
    let carried = carried_recovery_settings(dest);
    let carried_lines: Vec<String> = carried.iter().map(|s| s.describe(dest)).collect();
    let mut settings = Vec::new();
    match &opts.recovery {
        RecoveryConfig::None => {
            println!(
                "restored into {}; to recover, create {}/recovery.signal and set in postgresql.auto.conf:\n  restore_command = '{}'\n  recovery_target_time = '<time with UTC offset>'   # optional, for point-in-time recovery\n  recovery_target_action = 'promote'",
                dest.display(),
                dest.display(),
                restore_command
            );
            if !carried_lines.is_empty() {
                println!(
                    "the backup carries recovery settings that would steer that recovery; remove each, or override it in postgresql.auto.conf under the same spelling (the last occurrence of a name as written wins):\n  {}",
                    carried_lines.join("\n  ")
                );
            }
        }
        RecoveryConfig::EndOfArchive => {
            settings = recovery_block(&[("restore_command", quoted(&restore_command))], &carried);
        }
        RecoveryConfig::Time(t) => {
            let t = if ctx.settings.sabotage == Some(Sabotage::LateRecoveryTarget) {
                warn!("SABOTAGE: writing the recovery target two seconds late");
                *t + chrono::Duration::seconds(2)
            } else {
                *t
            };
            let offset = if ctx.settings.sabotage == Some(Sabotage::TargetWithoutOffset) {
                warn!("SABOTAGE: writing the recovery target without its UTC offset");
                ""
            } else {
                "+00"
            };
            settings = recovery_block(
                &[
                    ("restore_command", quoted(&restore_command)),
                    (
                        "recovery_target_time",
                        quoted(&format!("{}{offset}", t.format("%Y-%m-%d %H:%M:%S%.6f"))),
                    ),
                    ("recovery_target_action", quoted("promote")),
                ],
                &carried,
            );
        }
    }
    if ctx.settings.sabotage == Some(Sabotage::CarriedSettingsSteer) {
        warn!("SABOTAGE: leaving the recovery settings the backup carries in force");
        settings.retain(|line| {
            line.starts_with("restore_command = ")
                || (line.starts_with("recovery_target_time = ") && !line.ends_with("''"))
                || line == "recovery_target_action = 'promote'"
        });
    }
    if ctx.settings.sabotage == Some(Sabotage::BackupTimelineOnly) {
        warn!("SABOTAGE: pinning recovery to the backup's own timeline");
        for line in settings.iter_mut() {
            if line.starts_with("recovery_target_timeline = ") {
                *line = "recovery_target_timeline = 'current'".into();
            }
        }
    }
    if opts.no_archive {
        settings.push("archive_mode = 'off'".into());
    }
    if settings.is_empty() {
        return Ok(());
    }
    if opts.recovery != RecoveryConfig::None {
        write_file(&dest.join("recovery.signal"), b"")?;
    }
    let auto_conf = dest.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    conf.push_str("\n# written by pgdrill backup-fetch; the last occurrence of a setting wins\n");
    for s in &settings {
        conf.push_str(s);
        conf.push('\n');
    }
    write_file(&auto_conf, conf.as_bytes())?;
    println!(
        "restored into {} with recovery settings:\n  {}\nstart PostgreSQL on it to recover",
        dest.display(),
        settings.join("\n  ")
    );
    if opts.recovery != RecoveryConfig::None && !carried_lines.is_empty() {
        println!(
            "overridden, carried in the backup:\n  {}",
            carried_lines.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(name: &str, value: &str) -> pgconf::Setting {
        pgconf::Setting {
            file: "postgresql.conf".into(),
            line: 1,
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_restore_sets_every_recovery_setting_once_the_chosen_target_last() {
        let block = recovery_block(
            &[
                ("restore_command", quoted("pgdrill wal-fetch %f %p")),
                (
                    "recovery_target_time",
                    quoted("2026-12-05 07:00:00.000000+00"),
                ),
            ],
            &[carried("recovery_target_xid", "'3'")],
        );
        assert_eq!(block.len(), RECOVERY_SETTINGS.len(), "{block:?}");
        for (name, _) in RECOVERY_SETTINGS {
            assert_eq!(
                block
                    .iter()
                    .filter(|l| l.starts_with(&format!("{name} = ")))
                    .count(),
                1,
                "{name} in {block:?}"
            );
        }
        assert_eq!(
            block.last().unwrap(),
            "recovery_target_time = '2026-12-05 07:00:00.000000+00'"
        );
        assert!(block.contains(&"restore_command = 'pgdrill wal-fetch %f %p'".to_string()));
        assert!(block.contains(&"recovery_target_xid = ''".to_string()));
        assert!(block.contains(&"recovery_target_timeline = 'latest'".to_string()));
        assert_eq!(quoted("it's"), "'it''s'");
    }

    /// The server keeps the last occurrence of a name as written: other
    /// spellings are overridden under their own, targets emptied first.
    #[test]
    fn carried_spellings_are_overridden_under_their_own_spelling_first() {
        let block = recovery_block(
            &[("restore_command", quoted("x"))],
            &[
                carried("Recovery_Target_Time", "'2026-12-05 07:00:00'"),
                carried("RECOVERY_TARGET_ACTION", "shutdown"),
                carried("Recovery_Target_Time", "'2026-12-06 07:00:00'"),
                carried("recovery_target_name", "'x'"),
            ],
        );
        assert_eq!(
            &block[..2],
            [
                "Recovery_Target_Time = ''",
                "RECOVERY_TARGET_ACTION = 'pause'"
            ]
        );
        assert_eq!(block.len(), RECOVERY_SETTINGS.len() + 2, "{block:?}");
    }

    #[test]
    fn carried_settings_are_found_in_any_spelling_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("postgresql.conf"),
            "work_mem = '8MB'\nRecovery_Target_Time '2026-12-05 07:00:00'\ninclude 'pitr.conf'\n",
        )
        .unwrap();
        std::fs::write(d.join("pitr.conf"), "recovery_target_action=promote\n").unwrap();
        std::fs::write(
            d.join("postgresql.auto.conf"),
            "# recovery_target_xid = '3'\nRESTORE_COMMAND = 'cp %f %p'\n",
        )
        .unwrap();
        let found: Vec<String> = carried_recovery_settings(d)
            .iter()
            .map(|s| s.describe(d))
            .collect();
        assert_eq!(
            found,
            [
                "postgresql.conf:2: Recovery_Target_Time = '2026-12-05 07:00:00'",
                "pitr.conf:1: recovery_target_action = promote",
                "postgresql.auto.conf:2: RESTORE_COMMAND = 'cp %f %p'",
            ]
        );
    }
}
