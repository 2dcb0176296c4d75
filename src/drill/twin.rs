//! A `pitr_failover` with a twin: a second server promoted at once, from
//! the same backup to the same target, pushing into the same archive, as a
//! confused failover or two operators leave it. Both take the same new
//! timeline (neither had archived its history when the other chose), so
//! both push files of the same names. Stated outcome, checked here once
//! the primary has stored its first segment of that timeline: the twin,
//! let go, stores nothing but what the primary stored identically (the
//! timeline's history) and has its own segment refused, so the archive
//! keeps the primary's timeline and no restore can mix the two.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::env::EnvError;

/// How long the twin's archiver gets to reach its own segment once let go.
const TWIN_WAIT: Duration = Duration::from_secs(30);

/// `pg_stat_archiver` of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Archiver {
    failed: i64,
    last_archived: Option<String>,
    last_failed: Option<String>,
}

async fn archiver(client: &Client) -> Result<Archiver, EnvError> {
    let row = client
        .query_one(
            "SELECT failed_count, last_archived_wal, last_failed_wal FROM pg_stat_archiver",
            &[],
        )
        .await
        .map_err(twin_err)?;
    Ok(Archiver {
        failed: row.get(0),
        last_archived: row.get(1),
        last_failed: row.get(2),
    })
}

fn twin_err(e: tokio_postgres::Error) -> EnvError {
    crate::env::pg::pg_err("a statement on the twin")(e)
}

/// The timeline of `client`'s current WAL segment.
pub(super) async fn timeline_of(client: &Client) -> Result<u32, EnvError> {
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(twin_err)?
        .get(0);
    Ok(u32::from_str_radix(&name[..8], 16).unwrap_or(0))
}

/// Whether `file` is a WAL segment (not a history or partial file) of
/// `timeline`.
fn is_segment_of(file: &str, timeline: u32) -> bool {
    use crate::backup::layout::{wal_file_kind, WalFileKind};
    wal_file_kind(file) == Some(WalFileKind::Segment)
        && u32::from_str_radix(&file[..8], 16) == Ok(timeline)
}

/// What the twin's archiver shows: `Ok` with the note for the report when
/// it was refused its own segment of `timeline`, `Err` when it stored one
/// (the archive now mixes two servers' WAL), `None` while undecided.
fn judge(now: &Archiver, released: &Archiver, timeline: u32) -> Option<Result<String, String>> {
    if let Some(own) = now
        .last_archived
        .as_deref()
        .filter(|f| is_segment_of(f, timeline))
    {
        return Some(Err(format!(
            "the twin stored its own segment {own} of timeline {timeline}: two servers' WAL of \
             one timeline mixed in one archive"
        )));
    }
    let refused = now.failed > released.failed
        && now
            .last_failed
            .as_deref()
            .is_some_and(|f| is_segment_of(f, timeline));
    refused.then(|| {
        Ok(format!(
            "its segment {} refused (failed attempts: {}), stored only {} (identical to the \
             primary's)",
            now.last_failed.as_deref().unwrap_or_default(),
            now.failed - released.failed,
            now.last_archived.as_deref().unwrap_or("nothing"),
        ))
    })
}

/// Lets the twin's archiving go (the primary has stored its first segment
/// of `timeline`, which the twin shares) after it has written something of
/// its own, and waits for the outcome (module docs); the note for the
/// report, or the error that fails the step.
pub(super) async fn let_go(twin: &Client, timeline: u32) -> Result<String, EnvError> {
    let twin_timeline = timeline_of(twin).await?;
    if twin_timeline != timeline {
        return Err(EnvError::Other(format!(
            "the twin took timeline {twin_timeline} and the failover {timeline}: they were not \
             promoted at once"
        )));
    }
    // Its own writes: its segment differs from the primary's.
    for sql in [
        "CREATE TABLE pgdrill_twin AS SELECT g FROM generate_series(1, 1000) g",
        // Not in one batch with the above: a batch is one transaction.
        "ALTER SYSTEM RESET archive_command",
    ] {
        twin.batch_execute(sql).await.map_err(twin_err)?;
    }
    let released = archiver(twin).await?;
    twin.query_one("SELECT pg_reload_conf()", &[])
        .await
        .map_err(twin_err)?;
    let switched: String = twin
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(twin_err)?
        .get(0);
    let deadline = Instant::now() + TWIN_WAIT;
    loop {
        let now = archiver(twin).await?;
        match judge(&now, &released, timeline) {
            Some(Ok(note)) => {
                return Ok(format!(
                    "a twin promoted at once to timeline {timeline} (archiving held until the \
                     primary stored its first segment), then let go with {switched} switched: {note}"
                ))
            }
            Some(Err(wrong)) => return Err(EnvError::Other(wrong)),
            None if Instant::now() > deadline => {
                return Err(EnvError::Other(format!(
                    "the twin's archiver was neither refused nor stored a segment of timeline \
                     {timeline} within {TWIN_WAIT:?} of being let go: {now:?}"
                )))
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(failed: i64, archived: Option<&str>, failed_wal: Option<&str>) -> Archiver {
        Archiver {
            failed,
            last_archived: archived.map(str::to_string),
            last_failed: failed_wal.map(str::to_string),
        }
    }

    #[test]
    fn the_twin_passes_only_when_refused_its_own_segment_after_release() {
        let released = state(3, None, Some("00000002.history"));
        // Still failing on what it failed on while held: undecided.
        assert_eq!(
            judge(&state(6, None, Some("00000002.history")), &released, 2),
            None
        );
        // Stored the identical history, refused its segment: the outcome.
        let ok = judge(
            &state(
                9,
                Some("00000002.history"),
                Some("000000020000000000000005"),
            ),
            &released,
            2,
        );
        assert!(matches!(ok, Some(Ok(note)) if note.contains("000000020000000000000005 refused")));
        // Stored a segment of the shared timeline: wrong, whatever failed.
        let mixed = judge(
            &state(
                9,
                Some("000000020000000000000005"),
                Some("000000020000000000000005"),
            ),
            &released,
            2,
        );
        assert!(matches!(mixed, Some(Err(e)) if e.contains("mixed")));
        // A partial file or another timeline's segment is not its own.
        assert_eq!(
            judge(
                &state(3, Some("000000010000000000000005.partial"), None),
                &released,
                2
            ),
            None
        );
        assert_eq!(
            judge(
                &state(4, None, Some("000000030000000000000005")),
                &released,
                2
            ),
            None
        );
    }
}
