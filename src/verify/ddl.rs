//! The DDL task's objects in a restored cluster (see
//! [`crate::workload::ddl`]): which tables and databases exist, their
//! rows, indexes and validity, the sequence and the unlogged table,
//! against the model's states for the restore's target.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::{pg_err, Check, CheckName, VerifyError};
use crate::workload::ddl::{
    self, DdlExpectation, DdlOp, DdlState, CONNINFO_SQL, DATABASE_PREFIX, SEQUENCE, TABLE_PREFIX,
    TEMPLATE_ROWS, TEMPLATE_TABLE, UNLOGGED,
};

/// One DDL table as restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTable {
    /// `id=v` of every row, by id, comma-separated.
    pub content: String,
    /// Its indexes: name and `indisvalid`.
    pub indexes: BTreeMap<String, bool>,
}

/// The DDL task's objects as restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedDdl {
    pub tables: BTreeMap<u32, ObservedTable>,
    /// Each created database and the rows its template table holds (or
    /// why they could not be counted).
    pub databases: BTreeMap<u32, Result<i64, String>>,
    /// Databases marked invalid (`datconnlimit = -2`): what a DROP
    /// DATABASE leaves when recovery stops inside it.
    pub invalid_databases: BTreeSet<u32>,
    /// The last value the sequence handed out, None when it is missing.
    pub sequence: Option<i64>,
    /// The unlogged table's `relpersistence` and row count, None when it
    /// is missing.
    pub unlogged: Option<(i8, i64)>,
}

/// Reads the DDL task's objects from the restored cluster.
pub async fn observe(client: &Client) -> Result<ObservedDdl, VerifyError> {
    let mut observed = ObservedDdl::default();
    let names = client
        .query(
            "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relname ~ $1",
            &[&format!("^{TABLE_PREFIX}[0-9]+$")],
        )
        .await
        .map_err(pg_err("listing the DDL tables"))?;
    for row in names {
        let name: String = row.get(0);
        let Ok(number) = name[TABLE_PREFIX.len()..].parse::<u32>() else {
            continue;
        };
        let content: String = client
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM {name}"
                ),
                &[],
            )
            .await
            .map_err(pg_err("reading a DDL table"))?
            .get(0);
        let indexes = client
            .query(
                "SELECT indexrelid::regclass::text, indisvalid FROM pg_index WHERE indrelid = $1::text::regclass",
                &[&name],
            )
            .await
            .map_err(pg_err("listing a DDL table's indexes"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        observed
            .tables
            .insert(number, ObservedTable { content, indexes });
    }
    let databases = client
        .query(
            "SELECT datname::text, datconnlimit = -2 FROM pg_database WHERE datname ~ $1",
            &[&format!("^{DATABASE_PREFIX}[0-9]+$")],
        )
        .await
        .map_err(pg_err("listing the DDL databases"))?;
    for row in databases {
        let name: String = row.get(0);
        let Ok(number) = name[DATABASE_PREFIX.len()..].parse::<u32>() else {
            continue;
        };
        if row.get::<_, bool>(1) {
            observed.invalid_databases.insert(number);
            observed
                .databases
                .insert(number, Err("it is marked invalid".into()));
            continue;
        }
        let count = client
            .query_one(
                &format!(
                    "SELECT n FROM dblink({CONNINFO_SQL}, 'SELECT count(*) FROM {TEMPLATE_TABLE}') AS t(n bigint)"
                ),
                &[&name],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| crate::backup::pg::pg_error_text(&e));
        observed.databases.insert(number, count);
    }
    if super::relation_exists(client, SEQUENCE).await? {
        // The last value handed out: last_value itself only once called
        // (after setval(.., false) the next nextval returns last_value
        // again, so an acknowledged value would be handed out twice).
        observed.sequence = Some(
            client
                .query_one(
                    &format!(
                        "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {SEQUENCE}"
                    ),
                    &[],
                )
                .await
                .map_err(pg_err("reading the DDL sequence"))?
                .get(0),
        );
    }
    if super::relation_exists(client, UNLOGGED).await? {
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT relpersistence::\"char\" FROM pg_class WHERE oid = '{UNLOGGED}'::regclass), \
                     (SELECT count(*) FROM {UNLOGGED})"
                ),
                &[],
            )
            .await
            .map_err(pg_err("reading the unlogged table"))?;
        observed.unlogged = Some((row.get(0), row.get(1)));
    }
    Ok(observed)
}

/// The rows of `table` in `generation`, as [`ObservedTable::content`].
fn expected_content(table: u32, generation: u8) -> String {
    (1..=ddl::rows(table, generation))
        .map(|id| format!("{id}={}", ddl::value(table, generation, id)))
        .collect::<Vec<_>>()
        .join(",")
}

/// What is wrong with the tables for state `state`, with `in_flight` the
/// operation that may have begun after it (an interrupted CREATE INDEX
/// CONCURRENTLY leaves an invalid index); empty when they match.
fn table_differences(
    state: &DdlState,
    in_flight: Option<DdlOp>,
    observed: &BTreeMap<u32, ObservedTable>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for number in observed.keys().filter(|n| !state.tables.contains_key(n)) {
        wrong.push(format!("{TABLE_PREFIX}{number} exists but must not"));
    }
    for (&number, table) in &state.tables {
        let name = format!("{TABLE_PREFIX}{number}");
        let Some(found) = observed.get(&number) else {
            wrong.push(format!("{name} is missing"));
            continue;
        };
        let expected = expected_content(number, table.generation);
        if found.content != expected {
            let rows = found.content.split(',').filter(|r| !r.is_empty()).count();
            wrong.push(format!(
                "{name} holds {rows} rows that differ from its {} rows of generation {}",
                ddl::rows(number, table.generation),
                table.generation
            ));
        }
        for index in [format!("{name}_pkey"), format!("{name}_tag")] {
            if found.indexes.get(&index) != Some(&true) {
                wrong.push(format!("index {index} is missing or invalid"));
            }
        }
        let v_index = format!("{name}_v");
        let building = in_flight == Some(DdlOp::CreateIndexConcurrently { table: number });
        match (table.v_index, found.indexes.get(&v_index)) {
            (true, Some(true)) | (false, None) => {}
            (false, Some(false)) if building => {}
            (true, _) => wrong.push(format!("index {v_index} is missing or invalid")),
            (false, Some(_)) => wrong.push(format!("index {v_index} exists but must not")),
        }
    }
    wrong
}

/// What is wrong with the databases for state `state`, with `in_flight`
/// the operation that may have begun after it (recovery that stops inside
/// a DROP DATABASE leaves the database marked invalid); empty when they
/// match.
fn database_differences(
    state: &DdlState,
    in_flight: Option<DdlOp>,
    may_be_invalid: &BTreeSet<u32>,
    observed: &ObservedDdl,
) -> Vec<String> {
    let found: BTreeSet<u32> = observed.databases.keys().copied().collect();
    let mut wrong: Vec<String> = found
        .difference(&state.databases)
        .map(|n| format!("{DATABASE_PREFIX}{n} exists but must not"))
        .chain(
            state
                .databases
                .difference(&found)
                .map(|n| format!("{DATABASE_PREFIX}{n} is missing")),
        )
        .collect();
    for n in state.databases.intersection(&found) {
        if observed.invalid_databases.contains(n) {
            if in_flight != Some(DdlOp::DropDatabase { database: *n })
                && !may_be_invalid.contains(n)
            {
                wrong.push(format!(
                    "{DATABASE_PREFIX}{n} is marked invalid, as an interrupted DROP DATABASE leaves it, but no drop of it was under way"
                ));
            }
            continue;
        }
        match &observed.databases[n] {
            Ok(TEMPLATE_ROWS) => {}
            Ok(rows) => wrong.push(format!(
                "{DATABASE_PREFIX}{n} holds {rows} template rows, not {TEMPLATE_ROWS}"
            )),
            Err(e) => wrong.push(format!("{DATABASE_PREFIX}{n} cannot be read: {e}")),
        }
    }
    wrong
}

/// The `ddl_objects`, `sequence` and `unlogged` checks.
pub fn judge(expected: &DdlExpectation, observed: &ObservedDdl) -> Vec<Check> {
    let states = expected.candidates.iter().zip(&expected.in_flight);
    let differences: Vec<Vec<String>> = states
        .map(|(state, &in_flight)| {
            let mut d = table_differences(state, in_flight, &observed.tables);
            d.extend(database_differences(
                state,
                in_flight,
                &expected.may_be_invalid,
                observed,
            ));
            d
        })
        .collect();
    let matching = differences.iter().position(Vec::is_empty);
    let objects = Check {
        name: CheckName::DdlObjects,
        passed: matching.is_some(),
        detail: match matching {
            Some(k) => {
                let state = &expected.candidates[k];
                format!(
                    "tables {:?} and databases {:?} as the DDL record has them{}",
                    state.tables.keys().collect::<Vec<_>>(),
                    state.databases,
                    if expected.candidates.len() > 1 {
                        format!(" (one of {} possible states)", expected.candidates.len())
                    } else {
                        String::new()
                    }
                )
            }
            None => {
                let nearest = differences.iter().min_by_key(|d| d.len()).expect("a state");
                format!(
                    "{}{}",
                    nearest.join("; "),
                    if differences.len() > 1 {
                        format!(" (in the nearest of {} possible states)", differences.len())
                    } else {
                        String::new()
                    }
                )
            }
        },
    };
    let sequence = match (expected.sequence_at_least, observed.sequence) {
        (bound, Some(last)) if bound.is_none_or(|b| last >= b) => Check {
            name: CheckName::Sequence,
            passed: true,
            detail: format!(
                "{SEQUENCE} at {last}, at or past the last acknowledged value ({})",
                bound.map_or_else(|| "none".to_string(), |b| b.to_string())
            ),
        },
        (bound, Some(last)) => Check {
            name: CheckName::Sequence,
            passed: false,
            detail: format!(
                "{SEQUENCE} went back to {last}: value {} was acknowledged by the target",
                bound.expect("a bound")
            ),
        },
        (_, None) => Check {
            name: CheckName::Sequence,
            passed: false,
            detail: format!("{SEQUENCE} is missing"),
        },
    };
    let unlogged = match observed.unlogged {
        Some((p, 0)) if p == b'u' as i8 => Check {
            name: CheckName::Unlogged,
            passed: true,
            detail: format!("{UNLOGGED} exists and is empty"),
        },
        Some((p, rows)) => Check {
            name: CheckName::Unlogged,
            passed: false,
            detail: format!(
                "{UNLOGGED} holds {rows} rows with persistence {:?}: an unlogged table must come back empty",
                p as u8 as char
            ),
        },
        None => Check {
            name: CheckName::Unlogged,
            passed: false,
            detail: format!("{UNLOGGED} is missing"),
        },
    };
    vec![objects, sequence, unlogged]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::ddl::TableState;

    fn state(tables: &[(u32, u8, bool)], databases: &[u32]) -> DdlState {
        DdlState {
            tables: tables
                .iter()
                .map(|&(n, generation, v_index)| {
                    (
                        n,
                        TableState {
                            generation,
                            v_index,
                        },
                    )
                })
                .collect(),
            databases: databases.iter().copied().collect(),
        }
    }

    fn table(n: u32, generation: u8, v_index: Option<bool>) -> ObservedTable {
        let name = format!("{TABLE_PREFIX}{n}");
        let mut indexes = BTreeMap::from([
            (format!("{name}_pkey"), true),
            (format!("{name}_tag"), true),
        ]);
        if let Some(valid) = v_index {
            indexes.insert(format!("{name}_v"), valid);
        }
        ObservedTable {
            content: expected_content(n, generation),
            indexes,
        }
    }

    fn observed(tables: Vec<ObservedTable>, numbers: &[u32], databases: &[u32]) -> ObservedDdl {
        ObservedDdl {
            tables: numbers.iter().copied().zip(tables).collect(),
            databases: databases.iter().map(|&d| (d, Ok(TEMPLATE_ROWS))).collect(),
            invalid_databases: BTreeSet::new(),
            sequence: Some(40),
            unlogged: Some((b'u' as i8, 0)),
        }
    }

    fn expectation(states: Vec<DdlState>, in_flight: Vec<Option<DdlOp>>) -> DdlExpectation {
        DdlExpectation {
            candidates: states,
            in_flight,
            sequence_at_least: Some(33),
            may_be_invalid: BTreeSet::new(),
        }
    }

    fn failed(checks: &[Check]) -> Vec<(CheckName, String)> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| (c.name, c.detail.clone()))
            .collect()
    }

    #[test]
    fn the_model_state_passes_and_every_difference_is_named() {
        let e = expectation(vec![state(&[(2, 1, true)], &[2])], vec![None]);
        let good = observed(vec![table(2, 1, Some(true))], &[2], &[2]);
        assert!(
            failed(&judge(&e, &good)).is_empty(),
            "{:?}",
            judge(&e, &good)
        );

        // A dropped table back, a lost TRUNCATE, an invalid index, a
        // missing database, a sequence gone back, rows in the unlogged table.
        let mut bad = observed(
            vec![table(1, 0, None), table(2, 0, Some(false))],
            &[1, 2],
            &[],
        );
        bad.sequence = Some(12);
        bad.unlogged = Some((b'u' as i8, 7));
        let wrong = failed(&judge(&e, &bad));
        let text = format!("{wrong:?}");
        for expected in [
            "pgdrill_ddl_t1 exists but must not",
            "pgdrill_ddl_t2 holds 100 rows that differ from its 52 rows of generation 1",
            "index pgdrill_ddl_t2_v is missing or invalid",
            "pgdrill_db_2 is missing",
            "went back to 12: value 33",
            "holds 7 rows",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert_eq!(wrong.len(), 3);
        let mut unreadable = good.clone();
        unreadable
            .databases
            .insert(2, Err("no such database".into()));
        assert!(!judge(&e, &unreadable)[0].passed);
    }

    #[test]
    fn an_operation_in_flight_allows_both_states_and_a_half_built_index() {
        let cic = DdlOp::CreateIndexConcurrently { table: 1 };
        let e = expectation(
            vec![state(&[(1, 1, false)], &[1]), state(&[(1, 1, true)], &[1])],
            vec![Some(cic), None],
        );
        for v in [None, Some(false), Some(true)] {
            let o = observed(vec![table(1, 1, v)], &[1], &[1]);
            assert!(judge(&e, &o)[0].passed, "{v:?}: {:?}", judge(&e, &o));
        }
        // A database marked invalid only while it is being dropped.
        let drop = DdlOp::DropDatabase { database: 1 };
        let e = expectation(
            vec![state(&[(1, 1, false)], &[1]), state(&[(1, 1, false)], &[])],
            vec![Some(drop), None],
        );
        let mut o = observed(vec![table(1, 1, None)], &[1], &[1]);
        o.databases.insert(1, Err("it is marked invalid".into()));
        o.invalid_databases.insert(1);
        assert!(judge(&e, &o)[0].passed, "{:?}", judge(&e, &o));
        let mut e = expectation(vec![state(&[(1, 1, false)], &[1])], vec![None]);
        let check = &judge(&e, &o)[0];
        assert!(
            !check.passed && check.detail.contains("marked invalid"),
            "{check:?}"
        );
        // A drop sent after the target but before recovery's stopping
        // commit: its non-transactional invalidation is replayed.
        e.may_be_invalid.insert(1);
        assert!(judge(&e, &o)[0].passed, "{:?}", judge(&e, &o));
        // An invalid index is only allowed while it is being built.
        let e = expectation(vec![state(&[(1, 1, false)], &[1])], vec![None]);
        let o = observed(vec![table(1, 1, Some(false))], &[1], &[1]);
        assert!(!judge(&e, &o)[0].passed);
    }
}
