//! What `backup-fetch` writes so that the restored server recovers:
//! `recovery.signal`, `restore_command`, the target.

use std::path::Path;

use chrono::Utc;
use tracing::warn;

use super::fetch::*;
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

pub(super) fn write_recovery_config(
    ctx: &Context,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<(), BackupError> {
    let restore_command = opts
        .restore_command
        .clone()
        .unwrap_or_else(|| ctx.self_command("wal-fetch %f %p"));
    let mut settings = Vec::new();
    match &opts.recovery {
        RecoveryConfig::None => {
            println!(
                "restored into {}; to recover, create {}/recovery.signal and set in postgresql.auto.conf:\n  restore_command = '{}'\n  recovery_target_time = '<time with UTC offset>'   # optional, for point-in-time recovery\n  recovery_target_action = 'promote'",
                dest.display(),
                dest.display(),
                restore_command
            );
        }
        RecoveryConfig::EndOfArchive => {
            settings.push(format!(
                "restore_command = '{}'",
                restore_command.replace('\'', "''")
            ));
        }
        RecoveryConfig::Time(t) => {
            let t = if ctx.settings.sabotage == Some(Sabotage::LateRecoveryTarget) {
                warn!("SABOTAGE: writing the recovery target two seconds late");
                *t + chrono::Duration::seconds(2)
            } else {
                *t
            };
            settings.push(format!(
                "restore_command = '{}'",
                restore_command.replace('\'', "''")
            ));
            settings.push(format!(
                "recovery_target_time = '{}'",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
            settings.push("recovery_target_action = 'promote'".into());
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
    conf.push_str("\n# written by pgdrill backup-fetch\n");
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
    Ok(())
}
