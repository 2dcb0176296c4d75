//! The mixed workload's items (see [`crate::workload::items`]): every
//! writer's items in the restored [`ITEMS`] table must be exactly its
//! model's after the operations of the ledger rows the restore holds.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use tokio_postgres::Client;

use super::outcome::{Check, CheckName, WriterResult};
use super::{pg_err, Listed, VerifyError, LIST_LIMIT};
use crate::workload::{Item, ItemModel, Mix, ITEMS};

/// Reads the restored items and compares each writer's with its model
/// after its highest restored seq (the ledger checks judge that seq).
pub async fn check_items(
    client: &Client,
    seed: u64,
    mix: Mix,
    per_writer: &[WriterResult],
) -> Result<Check, VerifyError> {
    let exists = super::relation_exists(client, ITEMS).await?;
    let mut restored: BTreeMap<i32, BTreeMap<i64, Item>> = BTreeMap::new();
    if exists {
        let rows = client
            .query_raw(
                &format!(
                    "SELECT writer, id, rev, tag, labels, body FROM {ITEMS} ORDER BY writer, id"
                ),
                std::iter::empty::<i32>(),
            )
            .await
            .map_err(pg_err("reading the items table"))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(pg_err("reading the items table"))?
        {
            let item = Item {
                rev: row.get(2),
                tag: row.get(3),
                labels: row.get(4),
                body: row.get(5),
            };
            restored
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1), item);
        }
    }
    Ok(compare(seed, mix, per_writer, exists, restored))
}

/// The verdict on `restored` items (writer to id to item).
fn compare(
    seed: u64,
    mix: Mix,
    per_writer: &[WriterResult],
    exists: bool,
    mut restored: BTreeMap<i32, BTreeMap<i64, Item>>,
) -> Check {
    let mut problems = Listed::new(LIST_LIMIT);
    let mut items = 0;
    for r in per_writer {
        let model = ItemModel::after(seed, mix, r.writer, r.max_seq);
        let found = i32::try_from(r.writer)
            .ok()
            .and_then(|w| restored.remove(&w))
            .unwrap_or_default();
        items += found.len();
        for (&id, want) in model.items() {
            match i64::try_from(id).ok().and_then(|id| found.get(&id)) {
                None => problems.push(format!("writer {} item {id} is missing", r.writer)),
                Some(got) if got != want => problems.push(format!(
                    "writer {} item {id} differs: {}",
                    r.writer,
                    differences(got, want)
                )),
                Some(_) => {}
            }
        }
        for id in found.keys() {
            if !u64::try_from(*id).is_ok_and(|id| model.items().contains_key(&id)) {
                problems.push(format!("writer {} item {id} should not exist", r.writer));
            }
        }
    }
    for (writer, found) in restored {
        for id in found.keys() {
            problems.push(format!("writer {writer} item {id} was never written"));
        }
    }
    let expected: usize = per_writer
        .iter()
        .map(|r| {
            ItemModel::after(seed, mix, r.writer, r.max_seq)
                .items()
                .len()
        })
        .sum();
    let passed = problems.count == 0 && (exists || expected == 0);
    let detail = if !exists && expected > 0 {
        format!("{ITEMS} is missing; {expected} items expected")
    } else if passed {
        format!(
            "{items} items of {} writers are exactly what their restored commits wrote",
            per_writer.len()
        )
    } else {
        super::outcome::list(&problems.first, problems.count)
    };
    Check {
        name: CheckName::Items,
        passed,
        detail,
    }
}

/// What differs between a restored item and the model's.
fn differences(got: &Item, want: &Item) -> String {
    let mut out = Vec::new();
    if got.rev != want.rev {
        out.push(format!("rev {} (expected {})", got.rev, want.rev));
    }
    if got.tag != want.tag {
        out.push(format!("tag {} (expected {})", got.tag, want.tag));
    }
    if got.labels != want.labels {
        out.push(format!(
            "labels {:?} (expected {:?})",
            got.labels, want.labels
        ));
    }
    if got.body != want.body {
        out.push(format!(
            "body of {} characters differs from the expected {}",
            got.body.len(),
            want.body.len()
        ));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix::for_tests(20)
    }

    fn writer(w: u32, max_seq: u64) -> WriterResult {
        WriterResult {
            writer: w,
            expected: max_seq..=max_seq,
            found: max_seq,
            max_seq,
            missing: vec![],
            missing_count: 0,
        }
    }

    fn restored_as_modelled(per_writer: &[WriterResult]) -> BTreeMap<i32, BTreeMap<i64, Item>> {
        per_writer
            .iter()
            .map(|r| {
                let model = ItemModel::after(3, mix(), r.writer, r.max_seq);
                let items = model
                    .items()
                    .iter()
                    .map(|(&id, item)| (id as i64, item.clone()))
                    .collect();
                (r.writer as i32, items)
            })
            .collect()
    }

    #[test]
    fn exact_items_pass_and_each_difference_is_named() {
        let per_writer = [writer(1, 200), writer(2, 150)];
        let good = restored_as_modelled(&per_writer);
        let check = compare(3, mix(), &per_writer, true, good.clone());
        assert!(check.passed, "{}", check.detail);

        let mut bad = good.clone();
        let items = bad.get_mut(&2).unwrap();
        let (&first, _) = items.iter().next().unwrap();
        items.remove(&first);
        let (&second, item) = items.iter_mut().next().unwrap();
        item.rev += 1;
        item.body.push('x');
        bad.get_mut(&1).unwrap().insert(9999, items_sample());
        bad.insert(7, BTreeMap::from([(1, items_sample())]));
        let check = compare(3, mix(), &per_writer, true, bad);
        assert!(!check.passed);
        for part in [
            format!("writer 2 item {first} is missing"),
            format!("writer 2 item {second} differs: rev"),
            "body of".to_string(),
            "writer 1 item 9999 should not exist".to_string(),
            "writer 7 item 1 was never written".to_string(),
        ] {
            assert!(check.detail.contains(&part), "{part}: {}", check.detail);
        }

        // A restore one commit short of the ledger's count: the items of a
        // restored ledger row that is not there must not be there either.
        let short = [writer(1, 199), writer(2, 150)];
        assert!(!compare(3, mix(), &short, true, good).passed);
        let check = compare(3, mix(), &per_writer, false, BTreeMap::new());
        assert!(
            !check.passed && check.detail.contains("is missing"),
            "{}",
            check.detail
        );
        // Before any operation only the prefill is expected; without one,
        // a missing table is fine.
        assert!(!compare(3, mix(), &[writer(1, 0)], false, BTreeMap::new()).passed);
        let no_prefill = Mix {
            prefill: 0,
            ..mix()
        };
        assert!(compare(3, no_prefill, &[writer(1, 0)], false, BTreeMap::new()).passed);
    }

    fn items_sample() -> Item {
        Item {
            rev: 1,
            tag: 1,
            labels: vec![1],
            body: "x".into(),
        }
    }
}
