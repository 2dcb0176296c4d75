//! Relation rewrites and DDL during the run (a mixed workload with
//! `ddl_every`): one task, one connection, one operation at a time, each
//! recorded with when it was sent and acknowledged, so the catalogue a
//! restore must hold at any target follows from the record ([`DdlModel`]).
//!
//! Round `r` creates table `pgdrill_ddl_t<r>` with rows (and a btree index
//! on `tag`), creates database `pgdrill_db_<r>` from the template
//! `pgdrill_template` (alternating the `FILE_COPY` and `WAL_LOG`
//! strategies: FILE_COPY's replay is a known edge), `TRUNCATE`s the table
//! and refills it (new relfilenode), builds an index on `v` with
//! `CREATE INDEX CONCURRENTLY`, rewrites the table with `VACUUM FULL`, and
//! drops round `r-1`'s table and database. After each operation one
//! statement inserts the next value of the sequence `pgdrill_ddl_seq` into
//! the unlogged table `pgdrill_unlogged` (which a restore must hold empty).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::{Client, Config, NoTls};

use super::writer::{now, stop_or_deadline, Control};
use super::{pg_err, WorkloadError};
use crate::backup::pg::pg_error_text;

/// Table `r` is `pgdrill_ddl_t<r>`.
pub const TABLE_PREFIX: &str = "pgdrill_ddl_t";
/// Database `r` is `pgdrill_db_<r>`.
pub const DATABASE_PREFIX: &str = "pgdrill_db_";
/// The template of the created databases.
pub const TEMPLATE: &str = "pgdrill_template";
/// The table the template holds, with [`TEMPLATE_ROWS`] rows.
pub const TEMPLATE_TABLE: &str = "pgdrill_template_rows";
pub const TEMPLATE_ROWS: i64 = 1000;
/// The sequence, used once after every operation.
pub const SEQUENCE: &str = "pgdrill_ddl_seq";
/// The unlogged table that receives the sequence's values.
pub const UNLOGGED: &str = "pgdrill_unlogged";

/// One DDL operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DdlOp {
    /// `CREATE TABLE` with a primary key and an index on `tag`, and
    /// [`rows`] rows of generation 0, in one transaction.
    CreateTable {
        table: u32,
    },
    /// `CREATE DATABASE ... TEMPLATE pgdrill_template STRATEGY ...`.
    CreateDatabase {
        database: u32,
        file_copy: bool,
    },
    /// `TRUNCATE` and [`rows`] rows of generation 1, in one transaction.
    Truncate {
        table: u32,
    },
    /// `CREATE INDEX CONCURRENTLY` on `v`.
    CreateIndexConcurrently {
        table: u32,
    },
    /// `VACUUM FULL`: the same rows in a new relfilenode.
    VacuumFull {
        table: u32,
    },
    DropTable {
        table: u32,
    },
    DropDatabase {
        database: u32,
    },
    /// `INSERT INTO pgdrill_unlogged SELECT nextval('pgdrill_ddl_seq')`,
    /// which returned `value`.
    NextVal {
        value: i64,
    },
}

/// The operations of round `r` (from 1), in order.
pub fn round(r: u32) -> Vec<DdlOp> {
    let mut ops = vec![
        DdlOp::CreateTable { table: r },
        DdlOp::CreateDatabase {
            database: r,
            file_copy: r % 2 == 1,
        },
        DdlOp::Truncate { table: r },
        DdlOp::CreateIndexConcurrently { table: r },
        DdlOp::VacuumFull { table: r },
    ];
    if r > 1 {
        ops.push(DdlOp::DropTable { table: r - 1 });
        ops.push(DdlOp::DropDatabase { database: r - 1 });
    }
    ops
}

/// How many rows table `table` holds in `generation` (0 after create, 1
/// after truncate).
pub fn rows(table: u32, generation: u8) -> u32 {
    match generation {
        0 => 100,
        _ => 50 + table % 50,
    }
}

/// Column `v` of row `id` of `table` in `generation`.
pub fn value(table: u32, generation: u8, id: u32) -> String {
    format!("{table}:{generation}:{id}")
}

/// One operation as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DdlEvent {
    pub op: DdlOp,
    pub sent_at: DateTime<Utc>,
    /// None: it failed or its outcome is unknown (the task's last event).
    pub acked_at: Option<DateTime<Utc>>,
}

/// The DDL task's record: its events, and why it stopped early.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DdlLog {
    pub events: Vec<DdlEvent>,
    pub error: Option<String>,
}

/// One DDL table as it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableState {
    pub generation: u8,
    /// The index on `v` (CREATE INDEX CONCURRENTLY) exists.
    pub v_index: bool,
}

/// The objects the DDL task manages, after some prefix of its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DdlState {
    pub tables: BTreeMap<u32, TableState>,
    pub databases: BTreeSet<u32>,
}

impl DdlState {
    fn apply(&mut self, op: DdlOp) {
        match op {
            DdlOp::CreateTable { table } => {
                self.tables.insert(
                    table,
                    TableState {
                        generation: 0,
                        v_index: false,
                    },
                );
            }
            DdlOp::Truncate { table } => {
                if let Some(t) = self.tables.get_mut(&table) {
                    t.generation = 1;
                }
            }
            DdlOp::CreateIndexConcurrently { table } => {
                if let Some(t) = self.tables.get_mut(&table) {
                    t.v_index = true;
                }
            }
            DdlOp::VacuumFull { .. } | DdlOp::NextVal { .. } => {}
            DdlOp::DropTable { table } => {
                self.tables.remove(&table);
            }
            DdlOp::CreateDatabase { database, .. } => {
                self.databases.insert(database);
            }
            DdlOp::DropDatabase { database } => {
                self.databases.remove(&database);
            }
        }
    }
}

/// What a restore to a point between `lo` and `hi` may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlExpectation {
    /// The states it may be in, from the fewest events applied: one when
    /// no operation was in flight, else before and after each.
    pub candidates: Vec<DdlState>,
    /// The operation in flight after each candidate (None after the last).
    pub in_flight: Vec<Option<DdlOp>>,
    /// The highest sequence value acknowledged by `lo`: the sequence must
    /// be at or past it.
    pub sequence_at_least: Option<i64>,
    /// Databases that may be marked invalid though no candidate drops
    /// them: DROP DATABASE invalidates a database with a non-transactional
    /// update before its commit, and recovery to a time replays WAL up to
    /// the first commit after the target, so a drop sent after `hi` but
    /// before that commit leaves its mark.
    pub may_be_invalid: std::collections::BTreeSet<u32>,
}

/// The pure model over a [`DdlLog`].
pub struct DdlModel<'a> {
    log: &'a DdlLog,
}

impl<'a> DdlModel<'a> {
    pub fn new(log: &'a DdlLog) -> DdlModel<'a> {
        DdlModel { log }
    }

    /// The expectation for a restore whose recovery ended between `lo` and
    /// `hi` (None: anywhere after `lo`). Events run one after another, so
    /// those acknowledged by `lo` are applied, those sent after `hi` are
    /// not, and any in between may be. `stop_by`: recovery's stopping
    /// commit was made by then (None: not known), for
    /// [`DdlExpectation::may_be_invalid`].
    pub fn expected(
        &self,
        lo: DateTime<Utc>,
        hi: Option<DateTime<Utc>>,
        stop_by: Option<DateTime<Utc>>,
    ) -> DdlExpectation {
        let events = &self.log.events;
        let applied = events
            .iter()
            .take_while(|e| e.acked_at.is_some_and(|a| a <= lo))
            .count();
        let possible = match hi {
            Some(hi) => events.iter().take_while(|e| e.sent_at <= hi).count(),
            None => events.len(),
        }
        .max(applied);
        let mut state = DdlState::default();
        for e in &events[..applied] {
            state.apply(e.op);
        }
        let mut candidates = vec![state.clone()];
        let mut in_flight = Vec::new();
        for e in &events[applied..possible] {
            in_flight.push(Some(e.op));
            state.apply(e.op);
            candidates.push(state.clone());
        }
        in_flight.push(None);
        let sequence_at_least = events[..applied]
            .iter()
            .filter_map(|e| match e.op {
                DdlOp::NextVal { value } => Some(value),
                _ => None,
            })
            .max();
        let may_be_invalid = match hi {
            Some(_) => events[possible..]
                .iter()
                .take_while(|e| stop_by.is_none_or(|s| e.sent_at <= s))
                .filter_map(|e| match e.op {
                    DdlOp::DropDatabase { database } => Some(database),
                    _ => None,
                })
                .collect(),
            None => Default::default(),
        };
        DdlExpectation {
            candidates,
            in_flight,
            sequence_at_least,
            may_be_invalid,
        }
    }
}

/// A libpq connection string, as an SQL expression, for database `$1` of
/// the server the statement runs on (for `dblink`): its port, and its
/// first socket directory or else the loopback address.
pub const CONNINFO_SQL: &str = "format('dbname=%s port=%s host=%s user=%s', $1::text, \
     current_setting('port'), \
     coalesce(nullif(split_part(current_setting('unix_socket_directories'), ',', 1), ''), '127.0.0.1'), \
     current_user)";

/// Creates the template database (filled through `dblink`), the sequence
/// and the unlogged table.
pub async fn prepare(client: &Client) -> Result<(), WorkloadError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&TEMPLATE],
        )
        .await
        .map_err(pg_err("looking for the template database"))?
        .get(0);
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
            .await
            .map_err(pg_err("creating the template database"))?;
    }
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS dblink")
        .await
        .map_err(pg_err("creating the dblink extension"))?;
    client
        .execute(
            &format!("SELECT dblink_exec({CONNINFO_SQL}, $2)"),
            &[&TEMPLATE, &template_sql()],
        )
        .await
        .map_err(pg_err("filling the template database"))?;
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}; \
             CREATE UNLOGGED TABLE IF NOT EXISTS {UNLOGGED} (n bigint PRIMARY KEY)"
        ))
        .await
        .map_err(pg_err("creating the DDL sequence and unlogged table"))
}

/// The SQL that fills the template database (run connected to it).
pub fn template_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {TEMPLATE_TABLE} (id bigint PRIMARY KEY); \
         INSERT INTO {TEMPLATE_TABLE} SELECT generate_series(1, {TEMPLATE_ROWS}) \
         ON CONFLICT DO NOTHING"
    )
}

/// The SQL of `op` (not [`DdlOp::NextVal`]).
fn sql(op: DdlOp) -> String {
    let fill = |table: u32, generation: u8| {
        format!(
            "INSERT INTO {TABLE_PREFIX}{table} (id, v, tag) \
             SELECT i, format('%s:%s:%s', {table}, {generation}, i), i % 7 \
             FROM generate_series(1, {}) i",
            rows(table, generation)
        )
    };
    match op {
        DdlOp::CreateTable { table } => format!(
            "BEGIN; CREATE TABLE {TABLE_PREFIX}{table} (id int PRIMARY KEY, v text NOT NULL, tag int NOT NULL); \
             CREATE INDEX {TABLE_PREFIX}{table}_tag ON {TABLE_PREFIX}{table} (tag); {}; COMMIT",
            fill(table, 0)
        ),
        DdlOp::CreateDatabase {
            database,
            file_copy,
        } => format!(
            "CREATE DATABASE {DATABASE_PREFIX}{database} TEMPLATE {TEMPLATE} STRATEGY {}",
            if file_copy { "FILE_COPY" } else { "WAL_LOG" }
        ),
        DdlOp::Truncate { table } => format!(
            "BEGIN; TRUNCATE {TABLE_PREFIX}{table}; {}; COMMIT",
            fill(table, 1)
        ),
        DdlOp::CreateIndexConcurrently { table } => format!(
            "CREATE INDEX CONCURRENTLY {TABLE_PREFIX}{table}_v ON {TABLE_PREFIX}{table} (v)"
        ),
        DdlOp::VacuumFull { table } => format!("VACUUM FULL {TABLE_PREFIX}{table}"),
        DdlOp::DropTable { table } => format!("DROP TABLE {TABLE_PREFIX}{table}"),
        DdlOp::DropDatabase { database } => format!("DROP DATABASE {DATABASE_PREFIX}{database}"),
        DdlOp::NextVal { .. } => {
            format!("INSERT INTO {UNLOGGED} SELECT nextval('{SEQUENCE}') RETURNING n")
        }
    }
}

/// Runs rounds of DDL, one operation every `every`, until the stop or the
/// deadline or the first failure (recorded; the server going away in a
/// disaster is one).
pub(super) async fn run(
    config: Arc<Config>,
    every: Duration,
    deadline: Instant,
    mut control: watch::Receiver<Control>,
) -> DdlLog {
    let mut log = DdlLog::default();
    let client = match config.connect(NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        }
        Err(e) => {
            log.error = Some(format!("connecting: {}", pg_error_text(&e)));
            return log;
        }
    };
    for r in 1.. {
        for op in round(r) {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop_or_deadline(&mut control, deadline) => return log,
            }
            if let Err(e) = execute(&client, op, &mut log).await {
                log.error = Some(e);
                return log;
            }
        }
    }
    log
}

/// Runs `op` and then the sequence's statement, recording both.
async fn execute(client: &Client, op: DdlOp, log: &mut DdlLog) -> Result<(), String> {
    let fail = |op: DdlOp, e: tokio_postgres::Error| format!("{op:?}: {}", pg_error_text(&e));
    log.events.push(DdlEvent {
        op,
        sent_at: now(),
        acked_at: None,
    });
    client
        .batch_execute(&sql(op))
        .await
        .map_err(|e| fail(op, e))?;
    log.events.last_mut().expect("pushed").acked_at = Some(now());
    let next = DdlOp::NextVal { value: 0 };
    log.events.push(DdlEvent {
        op: next,
        sent_at: now(),
        acked_at: None,
    });
    let row = client
        .query_one(&sql(next), &[])
        .await
        .map_err(|e| fail(next, e))?;
    let event = log.events.last_mut().expect("pushed");
    event.op = DdlOp::NextVal { value: row.get(0) };
    event.acked_at = Some(now());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    /// Round 1 and 2, each event sent at 100·i ms and acked 50 ms later.
    fn log() -> DdlLog {
        let events = round(1)
            .into_iter()
            .chain(round(2))
            .enumerate()
            .map(|(i, op)| DdlEvent {
                op,
                sent_at: t(100 * i as i64),
                acked_at: Some(t(100 * i as i64 + 50)),
            })
            .collect();
        DdlLog {
            events,
            error: None,
        }
    }

    #[test]
    fn a_drop_sent_before_recoverys_stopping_commit_may_leave_its_mark() {
        let log = log();
        let i = log
            .events
            .iter()
            .position(|e| e.op == DdlOp::DropDatabase { database: 1 })
            .expect("round 2 drops database 1");
        let sent = log.events[i].sent_at;
        let model = DdlModel::new(&log);
        let before = sent - chrono::Duration::milliseconds(10);
        let e = model.expected(
            before,
            Some(before),
            Some(sent + chrono::Duration::milliseconds(5)),
        );
        assert_eq!(e.may_be_invalid, BTreeSet::from([1]));
        assert!(
            e.candidates.iter().all(|c| c.databases.contains(&1)),
            "not dropped"
        );
        let e = model.expected(
            before,
            Some(before),
            Some(sent - chrono::Duration::milliseconds(5)),
        );
        assert!(
            e.may_be_invalid.is_empty(),
            "recovery stopped before the drop was sent"
        );
    }

    #[test]
    fn a_quiet_moment_has_one_state_and_an_operation_in_flight_two() {
        let log = log();
        let model = DdlModel::new(&log);
        // After round 1's TRUNCATE (event 2, acked at 250 ms).
        let e = model.expected(t(260), Some(t(260)), Some(t(260)));
        assert_eq!(e.candidates.len(), 1);
        assert_eq!(
            e.candidates[0].tables[&1],
            TableState {
                generation: 1,
                v_index: false
            }
        );
        assert_eq!(e.candidates[0].databases, BTreeSet::from([1]));
        // During the CREATE INDEX CONCURRENTLY (sent 300, acked 350).
        let e = model.expected(t(320), Some(t(320)), Some(t(320)));
        assert_eq!(e.candidates.len(), 2);
        assert_eq!(
            e.in_flight[0],
            Some(DdlOp::CreateIndexConcurrently { table: 1 })
        );
        assert!(e.candidates[1].tables[&1].v_index);
        // At the end: round 1's objects are dropped, round 2's are there.
        let e = model.expected(t(10_000), Some(t(10_000)), None);
        let end = e.candidates.last().unwrap();
        assert_eq!(end.tables.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(end.databases, BTreeSet::from([2]));
        // Open-ended: every later state may be.
        let e = model.expected(t(260), None, None);
        assert_eq!(e.candidates.len(), log.events.len() - 3 + 1);
    }

    #[test]
    fn a_failed_operation_may_or_may_not_have_happened() {
        let mut log = log();
        log.events.truncate(3);
        log.events[2].acked_at = None;
        let e = DdlModel::new(&log).expected(t(10_000), Some(t(10_000)), None);
        assert_eq!(e.candidates.len(), 2);
        assert_eq!(e.candidates[0].tables[&1].generation, 0);
        assert_eq!(e.candidates[1].tables[&1].generation, 1);
    }

    #[test]
    fn the_sequence_bound_is_the_last_acknowledged_value() {
        let log = DdlLog {
            events: vec![
                DdlEvent {
                    op: DdlOp::NextVal { value: 1 },
                    sent_at: t(0),
                    acked_at: Some(t(10)),
                },
                DdlEvent {
                    op: DdlOp::NextVal { value: 2 },
                    sent_at: t(20),
                    acked_at: Some(t(30)),
                },
            ],
            error: None,
        };
        let model = DdlModel::new(&log);
        assert_eq!(
            model.expected(t(5), Some(t(5)), None).sequence_at_least,
            None
        );
        assert_eq!(
            model.expected(t(25), Some(t(25)), None).sequence_at_least,
            Some(1)
        );
        assert_eq!(
            model.expected(t(40), Some(t(40)), None).sequence_at_least,
            Some(2)
        );
    }

    #[test]
    fn rounds_drop_the_previous_round() {
        assert_eq!(round(1).len(), 5);
        assert_eq!(
            round(3)[5..],
            [
                DdlOp::DropTable { table: 2 },
                DdlOp::DropDatabase { database: 2 }
            ]
        );
        assert!(sql(DdlOp::CreateDatabase {
            database: 3,
            file_copy: true
        })
        .ends_with("STRATEGY FILE_COPY"));
        assert_eq!(value(4, 1, 7), "4:1:7");
        assert_eq!(rows(4, 1), 54);
    }
}
