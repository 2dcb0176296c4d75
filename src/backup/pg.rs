//! The libpq-style connection used by `backup-push`.

use tokio_postgres::{Client, NoTls};

use super::BackupError;
use crate::backup::config::PgConfig;

/// Connects with libpq's settings; a host starting with `/` is a Unix
/// socket directory, as in libpq.
pub async fn connect(cfg: &PgConfig) -> Result<Client, BackupError> {
    let mut c = tokio_postgres::Config::new();
    c.host(&cfg.host)
        .port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name("pgdrill")
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(p) = &cfg.password {
        c.password(p.expose());
    }
    let (client, connection) = c.connect(NoTls).await.map_err(|e| {
        BackupError::Postgres(PgError::new(
            format!(
                "cannot connect to {}:{} as {} (PGHOST/PGPORT/PGUSER/PGPASSWORD)",
                cfg.host, cfg.port, cfg.user
            ),
            &e,
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("postgres connection ended: {}", pg_error_text(&e));
        }
    });
    Ok(client)
}

/// The server's message when there is one, else the client's.
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

pub fn pg_err(context: &str) -> impl Fn(tokio_postgres::Error) -> BackupError + '_ {
    move |e| BackupError::Postgres(PgError::new(context, &e))
}

/// A failed PostgreSQL connection or statement: what pgdrill was doing,
/// the server's message (else the client's), and the SQLSTATE when the
/// server sent one, so callers can tell kinds of failure apart without
/// reading the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {message}")]
pub struct PgError {
    pub context: String,
    pub message: String,
    /// The SQLSTATE, e.g. `42P01` (undefined table).
    pub code: Option<String>,
}

impl PgError {
    pub fn new(context: impl Into<String>, e: &tokio_postgres::Error) -> PgError {
        PgError {
            context: context.into(),
            message: pg_error_text(e),
            code: e.code().map(|c| c.code().to_string()),
        }
    }

    /// A failure found by pgdrill in what the server returned.
    pub fn other(context: impl Into<String>, message: impl Into<String>) -> PgError {
        PgError {
            context: context.into(),
            message: message.into(),
            code: None,
        }
    }
}
