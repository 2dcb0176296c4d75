//! Whether a restored cluster answers queries the same whichever way the
//! planner reads a table. A stale visibility map (a map page restored older
//! than its heap) makes index-only scans return deleted rows while
//! sequential scans look right; a ledger read with sequential scans cannot
//! see it.

use tokio_postgres::Client;

use super::outcome::{Check, CheckName};
use super::{pg_err, VerifyError};

/// Ordinary permanent tables with a valid btree index whose first key is a
/// plain column, with that column: what a forced index-only scan can count.
const INDEXED_TABLES: &str = "\
    SELECT c.oid::regclass::text, ic.oid::regclass::text, quote_ident(a.attname) \
    FROM pg_index i \
    JOIN pg_class c ON c.oid = i.indrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_class ic ON ic.oid = i.indexrelid \
    JOIN pg_am am ON am.oid = ic.relam \
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
    WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND i.indisvalid \
      AND am.amname = 'btree' AND i.indkey[0] > 0 \
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
      AND n.nspname NOT LIKE 'pg_toast%' \
    ORDER BY 1, 2";

/// For every indexed user table: a forced index-only scan counts what a
/// sequential scan counts (in one snapshot), and `pg_check_visible` (the
/// `pg_visibility` extension, created here: a restored copy is
/// throw-away) finds no tuple on a page the map calls all-visible that is
/// not visible to all.
pub async fn check_visibility(client: &Client) -> Result<Check, VerifyError> {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        .await
        .map_err(pg_err("creating the pg_visibility extension"))?;
    let indexed = client
        .query(INDEXED_TABLES, &[])
        .await
        .map_err(pg_err("listing indexed tables"))?;
    let mut problems = Vec::new();
    let mut tables = std::collections::BTreeSet::new();
    let mut compared = 0;
    for row in &indexed {
        let (table, index, column): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let counts = compare_scans(client, &table, &column).await?;
        match counts {
            Some((seq, index_only)) if seq != index_only => problems.push(format!(
                "{table}: an index-only scan of {index} counts {index_only} rows, a sequential scan {seq}"
            )),
            Some(_) => compared += 1,
            // The planner would not use an index-only scan: nothing to compare.
            None => {}
        }
        if tables.insert(table.clone()) {
            let invisible: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM pg_check_visible('{table}'::regclass)"),
                    &[],
                )
                .await
                .map_err(pg_err("running pg_check_visible"))?
                .get(0);
            if invisible > 0 {
                problems.push(format!(
                    "{table}: pg_check_visible finds {invisible} tuples on pages the visibility map calls all-visible"
                ));
            }
        }
    }
    let passed = problems.is_empty();
    let detail = if passed {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{}: forced index-only scans of {} count what sequential scans count; pg_check_visible finds nothing",
            plural(tables.len(), "indexed table", "indexed tables"),
            plural(compared, "index", "indexes")
        )
    } else {
        problems.join("; ")
    };
    Ok(Check {
        name: CheckName::Visibility,
        passed,
        detail,
    })
}

/// Counts the rows of `table` with a sequential scan and with a forced
/// index-only scan of the index on `column`, in one snapshot; `None` when
/// the planner does not choose an index-only scan even when forced. The
/// rows are ordered by `column`, which makes the planner consider the
/// index (a bare count would not).
async fn compare_scans(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Option<(i64, i64)>, VerifyError> {
    let count =
        format!("SELECT count(*) FROM (SELECT {column} FROM {table} ORDER BY {column}) rows");
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; \
             SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off; \
             SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = on",
        )
        .await
        .map_err(pg_err("forcing a sequential scan"))?;
    let result = async {
        let seq: i64 = client
            .query_one(&count, &[])
            .await
            .map_err(pg_err("counting with a sequential scan"))?
            .get(0);
        client
            .batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_indexonlyscan = on")
            .await
            .map_err(pg_err("forcing an index-only scan"))?;
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {count}"), &[])
            .await
            .map_err(pg_err("explaining the index-only count"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !plan.iter().any(|line| line.contains("Index Only Scan")) {
            return Ok(None);
        }
        let index_only: i64 = client
            .query_one(&count, &[])
            .await
            .map_err(pg_err("counting with an index-only scan"))?
            .get(0);
        Ok(Some((seq, index_only)))
    }
    .await;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg_err("ending the comparison"))?;
    result
}
