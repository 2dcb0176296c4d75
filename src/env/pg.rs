//! PostgreSQL client helpers for the whole harness (environments, the
//! drill, the benchmark, the integration tests), each written once:
//! connecting, waiting for the archiver, waiting for promotion.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config};

use super::EnvError;
use crate::backup::pg::{pg_error_text, PgError};

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);

/// Maps a failed statement to [`EnvError::Postgres`], saying what it did.
pub fn pg_err(context: &str) -> impl Fn(tokio_postgres::Error) -> EnvError + '_ {
    move |e| EnvError::Postgres(PgError::new(context, &e))
}

/// One connection attempt; the connection runs on its own task.
pub async fn connect_once(config: &Config) -> Result<Client, EnvError> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(pg_err("connecting"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Connects, retrying for up to `timeout` while the server starts.
pub async fn connect_retrying(config: &Config, timeout: Duration) -> Result<Client, EnvError> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect_once(config).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The server's version (`SHOW server_version`'s first word, e.g.
/// `18.6`), refused unless its major is `major`, the scenario's: an image
/// of another version would run the whole drill on it and report the wrong
/// version's result, and restores of other majors' backups would fail
/// later on PostgreSQL's own, less clear error. `image` names what ran it.
pub async fn server_version_of_major(
    client: &Client,
    major: u32,
    image: &str,
) -> Result<String, EnvError> {
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(pg_err("reading the server version"))?
        .get(0);
    let version = version.split_whitespace().next().unwrap_or("").to_string();
    check_major(&version, major, image).map_err(EnvError::Other)?;
    Ok(version)
}

/// `version` (`15.20`, `18.6`, `19devel`) is of major `major`, or why not.
fn check_major(version: &str, major: u32, image: &str) -> Result<(), String> {
    let found: String = version.chars().take_while(char::is_ascii_digit).collect();
    if found == major.to_string() {
        return Ok(());
    }
    Err(format!(
        "the scenario asks for PostgreSQL {major} (postgres.version), but image {image} runs PostgreSQL {version}\nhint: name an image of PostgreSQL {major} in the scenario's images.postgres, or set postgres.version to {found}"
    ))
}

/// Forces a WAL segment switch and waits up to `timeout` until the
/// archiver stored the closed segment; returns that segment's name.
pub async fn switch_and_wait_archived(
    client: &Client,
    timeout: Duration,
) -> Result<String, EnvError> {
    // A commit record first, so that the switch has a segment to close.
    client
        .batch_execute("SELECT txid_current()")
        .await
        .map_err(pg_err("writing before the WAL switch"))?;
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(pg_err("pg_switch_wal()"))?
        .get(0);
    wait_archived(client, &segment, timeout).await?;
    Ok(segment)
}

/// Waits up to `timeout` until the archiver stored `segment` or a later one
/// (compared timeline-blind, so a promoted server's segments count).
pub async fn wait_archived(
    client: &Client,
    segment: &str,
    timeout: Duration,
) -> Result<(), EnvError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut next_note = started + Duration::from_secs(15);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(pg_err("reading pg_stat_archiver"))?;
        let archived: String = row.get(0);
        if archived.len() >= 24 && segment.len() >= 24 && archived[8..24] >= segment[8..24] {
            return Ok(());
        }
        if Instant::now() > deadline {
            let failed: String = row.get(1);
            return Err(EnvError::Other(format!(
                "segment {segment} not archived within {}s (last archived {archived:?}, last failed {failed:?}): check archive_command and the server log",
                timeout.as_secs()
            )));
        }
        if Instant::now() > next_note {
            tracing::info!("waiting for the archiver: at {archived:?}, waiting for {segment}");
            next_note += Duration::from_secs(15);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits up to `timeout` until the restored server `label` (reached by
/// `client`) has left recovery; returns how long that took. A server that
/// accepted connections (hot standby) may still end recovery with a FATAL
/// error: then the error carries `log_tail()`.
pub async fn wait_promoted<F, Fut>(
    client: &Client,
    label: &str,
    timeout: Duration,
    log_tail: F,
) -> Result<Duration, EnvError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let started = Instant::now();
    loop {
        let in_recovery: bool = match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                let log = log_tail().await;
                let error = format!(
                    "restore {label} stopped during recovery ({}); log:\n{log}",
                    pg_error_text(&e)
                );
                return Err(super::recovery_failed(&log, error));
            }
        };
        if !in_recovery {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(EnvError::Restore {
                failure: super::RestoreFailure::TimedOut,
                detail: format!(
                    "restore {label} did not finish recovery within {}s; log:\n{}",
                    timeout.as_secs(),
                    log_tail().await
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Connection settings for the workload's writers on a server that this
/// host reaches at `127.0.0.1:port` (a published container port, a
/// port-forward).
pub fn loopback_config(port: u16) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .application_name("pgdrill-workload")
        .connect_timeout(Duration::from_secs(5));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_of_another_major_than_the_scenarios_is_refused_naming_both() {
        assert!(check_major("15.20", 15, "pgdrill/postgres:15-local").is_ok());
        assert!(check_major("18.6", 18, "postgres:18").is_ok());
        let e = check_major("15.20", 18, "my/postgres:latest").unwrap_err();
        assert!(
            e.starts_with("the scenario asks for PostgreSQL 18 (postgres.version), but image my/postgres:latest runs PostgreSQL 15.20"),
            "{e}"
        );
        assert!(e.contains("set postgres.version to 15"), "{e}");
        // 1 is not 18's prefix match: whole majors are compared.
        assert!(check_major("1.0", 18, "x").is_err());
        assert!(check_major("180.1", 18, "x").is_err());
    }
}
