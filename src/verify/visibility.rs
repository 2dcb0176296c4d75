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

/// For every indexed user table: forced index and index-only scans count
/// what a sequential scan counts (in one snapshot), and the map agrees
/// with the heap ([`map_problems`]; the `pg_visibility` extension, created
/// here: a restored copy is throw-away).
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
        for (path, n) in [
            ("an index scan", counts.index),
            ("an index-only scan", counts.index_only),
        ] {
            match n {
                Some(n) if n != counts.seq => problems.push(format!(
                    "{table}: {path} of {index} counts {n} rows, a sequential scan {}",
                    counts.seq
                )),
                Some(_) => compared += 1,
                // The planner will not take that path: nothing to compare.
                None => {}
            }
        }
        if tables.insert(table.clone()) {
            problems.extend(map_problems(client, &table).await?);
        }
    }
    let passed = problems.is_empty();
    let detail = if passed {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{}: {} through forced index and index-only scans count what sequential scans count; the map marks no page its header does not, pg_check_visible and pg_check_frozen find nothing",
            plural(tables.len(), "indexed table", "indexed tables"),
            plural(compared, "count", "counts")
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

/// What `pg_visibility` finds wrong with `table`'s visibility map: pages
/// the map calls all-visible whose own header does not (the state VACUUM
/// warns about as "page is not marked all-visible but visibility map bit
/// is set": a map restored older than its heap, also when index-only
/// scans happen to agree because the index entries of the dead tuples were
/// already marked killed, as FPIs for hint bits carry them on clusters
/// with checksums), and tuples on all-visible (all-frozen) pages that are
/// not visible to all (frozen).
async fn map_problems(client: &Client, table: &str) -> Result<Vec<String>, VerifyError> {
    let mut problems = Vec::new();
    let count = |sql: String| async move {
        client
            .query_one(&sql, &[])
            .await
            .map_err(pg_err("running pg_visibility's checks"))
            .map(|row| row.get::<_, i64>(0))
    };
    let unmarked = count(format!(
        "SELECT count(*) FROM pg_visibility('{table}'::regclass) WHERE all_visible AND NOT pd_all_visible"
    ))
    .await?;
    if unmarked > 0 {
        problems.push(format!(
            "{table}: the visibility map calls {unmarked} pages all-visible whose page header does not (a map older than its heap)"
        ));
    }
    for (function, bit) in [
        ("pg_check_visible", "all-visible"),
        ("pg_check_frozen", "all-frozen"),
    ] {
        let wrong = count(format!(
            "SELECT count(*) FROM {function}('{table}'::regclass)"
        ))
        .await?;
        if wrong > 0 {
            problems.push(format!(
                "{table}: {function} finds {wrong} tuples on pages the visibility map calls {bit}"
            ));
        }
    }
    Ok(problems)
}

/// The row counts of one table through each path a query can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    seq: i64,
    /// `None` when the planner will not use that path even when forced.
    index: Option<i64>,
    index_only: Option<i64>,
}

/// Counts the rows of `table` with a sequential scan, a forced index scan
/// and a forced index-only scan of the index on `column`, in one
/// snapshot. The rows are ordered by `column`, which makes the planner
/// consider the index (a bare count would not).
async fn compare_scans(client: &Client, table: &str, column: &str) -> Result<Counts, VerifyError> {
    let count =
        format!("SELECT count(*) FROM (SELECT {column} FROM {table} ORDER BY {column}) rows");
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(pg_err("starting the comparison"))?;
    let result = async {
        let seq = count_through(client, &count, "enable_seqscan", "Seq Scan").await?;
        // Index-only before index scan: an index scan marks the entries of
        // dead heap tuples killed, and index-only scans skip killed entries,
        // which would hide a stale visibility map.
        let index_only =
            count_through(client, &count, "enable_indexonlyscan", "Index Only Scan").await?;
        Ok(Counts {
            seq: seq.unwrap_or(-1),
            index: count_through(client, &count, "enable_indexscan", "Index Scan").await?,
            index_only,
        })
    }
    .await;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg_err("ending the comparison"))?;
    result
}

/// Runs `count` with only the scan `enable` allows; `None` when the plan
/// does not use `node`.
async fn count_through(
    client: &Client,
    count: &str,
    enable: &str,
    node: &str,
) -> Result<Option<i64>, VerifyError> {
    let mut settings = String::new();
    for scan in [
        "enable_seqscan",
        "enable_indexscan",
        "enable_indexonlyscan",
        "enable_bitmapscan",
    ] {
        let on = if scan == enable { "on" } else { "off" };
        settings.push_str(&format!("SET LOCAL {scan} = {on}; "));
    }
    client
        .batch_execute(&settings)
        .await
        .map_err(pg_err("choosing the scan"))?;
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {count}"), &[])
        .await
        .map_err(pg_err("explaining the count"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // "Index Scan" also matches "Index Only Scan": compare whole node names.
    let uses = plan.iter().any(|line| {
        line.trim_start()
            .trim_start_matches("->")
            .trim_start()
            .starts_with(node)
    });
    if !uses {
        return Ok(None);
    }
    let n: i64 = client
        .query_one(count, &[])
        .await
        .map_err(pg_err("counting"))?
        .get(0);
    Ok(Some(n))
}
