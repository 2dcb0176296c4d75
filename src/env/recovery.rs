//! How a restore ends when it does not produce a promoted server, typed
//! once at the environment's edge: from backup-fetch's exit code, and from
//! the restored server's last FATAL or PANIC (PostgreSQL's only report of
//! why recovery stopped). The drill judges restores that must fail on this
//! type, never on message text.

use serde::{Deserialize, Serialize};

/// Why a restore ended without a promoted server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestoreFailure {
    /// `backup-fetch` exited non-zero (`None`: killed by a signal).
    Fetch { exit_code: Option<i32> },
    /// PostgreSQL ended recovery before the recovery target: the archive's
    /// WAL stops short of it (a deleted segment, say).
    TargetNotReached,
    /// `restore_command` exited above 125 (wal-fetch's
    /// [`crate::backup::exit::FETCH_FAILED`] for a corrupt or unreadable
    /// segment), so PostgreSQL aborted recovery instead of promoting.
    RestoreCommandAborted { exit_code: i32 },
    /// The server stopped for another reason: its FATAL or PANIC message,
    /// or none when its log has neither.
    ServerStopped { message: Option<String> },
    /// Recovery did not end within the environment's time limit.
    TimedOut,
}

/// PostgreSQL's message when recovery ends before `recovery_target_*`.
const TARGET_NOT_REACHED: &str = "recovery ended before configured recovery target was reached";

impl RestoreFailure {
    /// Reads why recovery stopped from a restored server's log: its last
    /// FATAL or PANIC message.
    pub fn from_server_log(log: &str) -> RestoreFailure {
        let Some(message) = last_fatal(log) else {
            return RestoreFailure::ServerStopped { message: None };
        };
        if message.contains(TARGET_NOT_REACHED) {
            return RestoreFailure::TargetNotReached;
        }
        // PostgreSQL: could not restore file "%s" from archive: child
        // process exited with exit code %d
        if message.starts_with("could not restore file") {
            if let Some(code) = message
                .rsplit_once("exited with exit code ")
                .and_then(|(_, code)| code.trim().parse().ok())
            {
                return RestoreFailure::RestoreCommandAborted { exit_code: code };
            }
        }
        RestoreFailure::ServerStopped {
            message: Some(message.to_string()),
        }
    }
}

impl std::fmt::Display for RestoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreFailure::Fetch {
                exit_code: Some(code),
            } => write!(f, "backup-fetch exited with code {code}"),
            RestoreFailure::Fetch { exit_code: None } => {
                write!(f, "backup-fetch was killed by a signal")
            }
            RestoreFailure::TargetNotReached => write!(f, "PostgreSQL: {TARGET_NOT_REACHED}"),
            RestoreFailure::RestoreCommandAborted { exit_code } => write!(
                f,
                "restore_command exited with code {exit_code}, which aborts recovery"
            ),
            RestoreFailure::ServerStopped { message: Some(m) } => {
                write!(f, "the server stopped during recovery: {m}")
            }
            RestoreFailure::ServerStopped { message: None } => {
                write!(
                    f,
                    "the server stopped during recovery (no FATAL in its log)"
                )
            }
            RestoreFailure::TimedOut => write!(f, "recovery did not end in time"),
        }
    }
}

/// The message of the last FATAL or PANIC line of a server log.
pub fn last_fatal(log: &str) -> Option<&str> {
    log.lines().rev().find_map(|line| {
        let (_, message) = line
            .split_once("FATAL:")
            .or_else(|| line.split_once("PANIC:"))?;
        Some(message.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_log_is_read_into_why_recovery_stopped() {
        let target = "2026-12-02 01:35:08.547 UTC [32661] LOG:  redo done at 0/3000100\n2026-12-02 01:35:08.547 UTC [32661] FATAL:  recovery ended before configured recovery target was reached\n";
        assert_eq!(
            RestoreFailure::from_server_log(target),
            RestoreFailure::TargetNotReached
        );
        let aborted = "LOG:  restored log file \"000000010000000000000003\" from archive\nFATAL:  could not restore file \"000000010000000000000004\" from archive: child process exited with exit code 200\nLOG:  startup process (PID 9) exited with exit code 1\n";
        assert_eq!(
            RestoreFailure::from_server_log(aborted),
            RestoreFailure::RestoreCommandAborted { exit_code: 200 }
        );
        let other = "LOG:  invalid xl_info in checkpoint record\nPANIC:  could not locate a valid checkpoint record\n";
        assert_eq!(
            RestoreFailure::from_server_log(other),
            RestoreFailure::ServerStopped {
                message: Some("could not locate a valid checkpoint record".into())
            }
        );
        assert_eq!(
            RestoreFailure::from_server_log("LOG:  shutting down\n"),
            RestoreFailure::ServerStopped { message: None }
        );
    }

    #[test]
    fn it_is_stored_tagged_by_kind() {
        let json = serde_json::to_string(&RestoreFailure::RestoreCommandAborted { exit_code: 200 })
            .unwrap();
        assert_eq!(
            json,
            r#"{"kind":"restore_command_aborted","exit_code":200}"#
        );
        let back: RestoreFailure = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back,
            RestoreFailure::RestoreCommandAborted { exit_code: 200 }
        );
    }
}
