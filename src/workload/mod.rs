//! The drill workload: concurrent writers committing one row per
//! transaction into [`TABLE`] on the primary, and the client-side
//! [`Ledger`] of every commit, which is the truth restores are verified
//! against (see [`crate::verify`]).
//!
//! Writer `w` (from 1) inserts rows `(w, seq, payload)` with seq 1, 2, 3, …
//! (or on from a given seq, on a server that holds the first ones: see
//! [`start_from`]), one autocommit statement each, with a payload derived
//! from (seed, writer, seq), so the expected table content follows from the
//! ledger alone. With a [`Mix`], the same statement also inserts, updates
//! or deletes one of the writer's rows in [`ITEMS`] (see [`items`]), and a
//! task runs `VACUUM (FREEZE)` now and then, and another DDL (see
//! [`ddl`]); and writer 0, the sweeper, updates items while backups run
//! (see [`items`]).

mod content;
pub mod ddl;
pub mod items;
mod ledger;
mod seqs;
mod writer;

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::backup::pg::PgError;

pub use content::{payload, ContentHasher};
pub use items::{Item, ItemModel, ItemOp, Mix, ITEMS, SWEEPER};
pub use ledger::{Expectation, Ledger, LedgerEntry, LedgerSummary, Outcome};
pub use seqs::SeqSet;
pub use writer::{start, start_from, Sweep, WorkloadHandle};

/// The table the writers fill.
pub const TABLE: &str = "pgdrill_ledger";

/// What the writers do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadSpec {
    /// Concurrent writers, each on its own connection; at least 1.
    pub writers: u32,
    /// Commits per second across all writers; at least 1.
    pub rate_per_second: u32,
    /// How long the writers run unless stopped earlier.
    pub duration: Duration,
    /// Characters of payload per row.
    pub payload_bytes: usize,
    /// Seed of the payloads.
    pub seed: u64,
    /// Updates, deletes and VACUUM besides the ledger's inserts; `None`:
    /// ledger inserts only.
    pub mix: Option<Mix>,
}

impl WorkloadSpec {
    /// The writers' numbers: 1..=writers, and [`SWEEPER`] (0) first when
    /// the mix sweeps during backups.
    pub fn writer_ids(&self) -> std::ops::RangeInclusive<u32> {
        let sweeps = self.mix.is_some_and(|m| m.sweep_during_backups);
        (if sweeps { SWEEPER } else { 1 })..=self.writers
    }
}

/// Failures of the workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The spec cannot be run.
    #[error("invalid workload: {0}")]
    InvalidSpec(String),
    /// A statement failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The table holds rows of an earlier run, which the new ledger would
    /// not account for.
    #[error("table {TABLE} already holds rows: use a fresh database")]
    NotEmpty,
}

/// Maps a tokio-postgres error to [`WorkloadError::Postgres`].
fn pg_err(context: &str) -> impl Fn(tokio_postgres::Error) -> WorkloadError + '_ {
    move |e| WorkloadError::Postgres(PgError::new(context, &e))
}

/// Creates [`TABLE`] (and [`ITEMS`] for a mixed workload) if missing and
/// checks that it is empty.
pub async fn prepare(client: &Client, spec: &WorkloadSpec) -> Result<(), WorkloadError> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (\
             writer int NOT NULL, seq bigint NOT NULL, payload text NOT NULL, \
             PRIMARY KEY (writer, seq))"
        ))
        .await
        .map_err(pg_err("creating the workload table"))?;
    if let Some(mix) = spec.mix {
        client
            .batch_execute(items::CREATE_ITEMS)
            .await
            .map_err(pg_err("creating the items table"))?;
        prefill(client, spec, mix).await?;
        if mix.ddl_every.is_some() {
            ddl::prepare(client).await?;
        }
    }
    let row = client
        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {TABLE})"), &[])
        .await
        .map_err(pg_err("checking the workload table"))?;
    if row.get::<_, bool>(0) {
        return Err(WorkloadError::NotEmpty);
    }
    Ok(())
}

/// Loads every writer's prefilled items (one COPY, one transaction).
async fn prefill(client: &Client, spec: &WorkloadSpec, mix: Mix) -> Result<(), WorkloadError> {
    use futures::SinkExt;
    let copy = client
        .copy_in(&format!(
            "COPY {ITEMS} (writer, id, rev, tag, labels, body) FROM STDIN"
        ))
        .await
        .map_err(pg_err("starting the prefill of the items table"))?;
    let mut copy = std::pin::pin!(copy);
    for writer in spec.writer_ids() {
        let text = items::prefill_copy_text(spec.seed, mix, writer);
        copy.send(bytes::Bytes::from(text))
            .await
            .map_err(pg_err("prefilling the items table"))?;
    }
    copy.as_mut()
        .finish()
        .await
        .map_err(pg_err("prefilling the items table"))?;
    Ok(())
}

/// `VACUUM (FREEZE)` of the workload's tables: the ledger, and the items of
/// a mixed workload.
pub fn vacuum_freeze_sql(mixed: bool) -> String {
    if mixed {
        format!("VACUUM (FREEZE) {TABLE}, {ITEMS}")
    } else {
        format!("VACUUM (FREEZE) {TABLE}")
    }
}
