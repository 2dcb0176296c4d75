//! The mixed workload's second table, [`ITEMS`]: each writer's items are
//! inserted, updated (HOT, changing only the unindexed body, and non-HOT,
//! changing indexed columns) and deleted, with bodies now and then large
//! enough to be TOASTed, so restores are checked where queries go through
//! indexes, the visibility map and TOAST.
//!
//! Before the workload starts, each writer's [`Mix::prefill`] items are
//! loaded: most pages of the table then stay cold for a while, so a
//! VACUUM's all-visible bits survive into a backup until a later change
//! clears them, as in a real table (in a small, hot table every page is
//! changed again within seconds).
//!
//! Every workload transaction of a mixed workload inserts its ledger row
//! and carries exactly one operation on its writer's own items, in one
//! statement. The operation of writer `w`'s seq `n` is a pure function of
//! (seed, mix, w) and the operations before it ([`ItemModel`]), so the
//! items a restore must hold follow from the number of ledger rows it holds.
//!
//! With [`Mix::sweep_during_backups`], writer [`SWEEPER`] (0) has
//! [`SWEEP_ITEMS`] items of its own and only updates them, one drawn at
//! random per transaction, and it runs only while a backup runs (see
//! [`super::WorkloadHandle::sweep`]): every backup then copies pages that
//! change under it, spread over a table too large for one backup's sweep
//! to touch every page, so a page changed during one backup is often left
//! alone until well after the next. Delta backups must take such pages
//! from the WAL's point of view (the previous backup's start), which only
//! a drill like this shows every run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::content::{draw, text};

/// The items table.
pub const ITEMS: &str = "pgdrill_items";

/// Creates [`ITEMS`] with a btree primary key, a btree and a GIN index,
/// room for HOT updates, and autovacuum that acts on every few hundred
/// changes (so visibility-map bits are set and cleared during a drill).
pub const CREATE_ITEMS: &str = "\
    CREATE TABLE IF NOT EXISTS pgdrill_items (\
      writer int NOT NULL, id bigint NOT NULL, rev int NOT NULL, tag int NOT NULL, \
      labels int[] NOT NULL, body text NOT NULL, PRIMARY KEY (writer, id)) \
    WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0, \
      autovacuum_vacuum_threshold = 200, autovacuum_vacuum_insert_scale_factor = 0, \
      autovacuum_vacuum_insert_threshold = 200, autovacuum_analyze_scale_factor = 0, \
      autovacuum_analyze_threshold = 200); \
    CREATE INDEX IF NOT EXISTS pgdrill_items_tag ON pgdrill_items (tag); \
    CREATE INDEX IF NOT EXISTS pgdrill_items_labels ON pgdrill_items USING gin (labels)";

/// What a mixed workload does besides inserting ledger rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Percent of transactions that update one of the writer's items (half
    /// of them only its body: HOT updates; half its indexed columns too).
    pub updates: u8,
    /// Percent of transactions that delete one of the writer's items.
    pub deletes: u8,
    /// Run `VACUUM (FREEZE)` on the workload tables this often.
    pub vacuum_freeze_every: Option<Duration>,
    /// Items each writer has before the workload starts.
    pub prefill: u32,
    /// Run one DDL operation (see [`super::ddl`]) this often.
    pub ddl_every: Option<Duration>,
    /// Whether writer [`SWEEPER`] updates its items while backups run.
    pub sweep_during_backups: bool,
}

/// The writer that runs only while backups run (see the module docs).
pub const SWEEPER: u32 = 0;

/// Items of [`SWEEPER`]: about 330 heap pages, which a backup's sweep
/// (a few hundred updates) touches only in part.
pub const SWEEP_ITEMS: u32 = 20_000;

/// One item as the table holds it (besides its writer and id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub rev: i32,
    pub tag: i32,
    pub labels: Vec<i32>,
    pub body: String,
}

/// The operation one transaction carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOp {
    Insert { id: u64, item: Item },
    Update { id: u64, item: Item },
    Delete { id: u64 },
}

/// Body length of most items, and of the one in [`LARGE_EVERY`] that is
/// TOASTed (the 64-symbol text compresses to about 3/4, above the 2 kB
/// TOAST threshold).
const BODY: usize = 64;
const LARGE_BODY: usize = 6000;
const LARGE_EVERY: u64 = 8;

/// Ids of prefilled items start here; those of items inserted by the
/// workload are the seq of the inserting transaction.
pub const PREFILL_ID_BASE: u64 = 1 << 40;

/// Writer `writer`'s items after each of its operations.
#[derive(Debug, Clone)]
pub struct ItemModel {
    seed: u64,
    mix: Mix,
    writer: u32,
    /// The seq of the last operation applied.
    seq: u64,
    live: BTreeMap<u64, Item>,
}

impl ItemModel {
    /// The writer's items before its first operation: its prefill.
    pub fn new(seed: u64, mix: Mix, writer: u32) -> ItemModel {
        let prefill = if writer == SWEEPER {
            SWEEP_ITEMS
        } else {
            mix.prefill
        };
        let live = (0..u64::from(prefill))
            .map(|i| {
                let r = draw(b"pgdrill item prefill v1\0", seed, writer, i);
                let item = Item {
                    rev: 1,
                    tag: tag(r),
                    labels: labels(r),
                    body: body(seed, writer, PREFILL_ID_BASE + i, r),
                };
                (PREFILL_ID_BASE + i, item)
            })
            .collect();
        ItemModel {
            seed,
            mix,
            writer,
            seq: 0,
            live,
        }
    }

    /// The model after the writer's operations 1..=`seq`.
    pub fn after(seed: u64, mix: Mix, writer: u32, seq: u64) -> ItemModel {
        let mut model = ItemModel::new(seed, mix, writer);
        while model.seq < seq {
            model.next_op();
        }
        model
    }

    /// The items, by id.
    pub fn items(&self) -> &BTreeMap<u64, Item> {
        &self.live
    }

    /// The operation of the writer's next transaction, applied to the model.
    pub fn next_op(&mut self) -> ItemOp {
        self.seq += 1;
        let n = self.seq;
        let r = draw(b"pgdrill item op v1\0", self.seed, self.writer, n);
        let roll = (r % 100) as u8;
        // Percent of deletes, and of deletes and updates: the sweeper only
        // updates.
        let (deletes, changes) = match self.writer {
            SWEEPER => (0, 100),
            _ => (
                self.mix.deletes,
                self.mix.deletes.saturating_add(self.mix.updates),
            ),
        };
        let body = || body(self.seed, self.writer, n, r);
        let picked = (!self.live.is_empty())
            .then(|| (r >> 16) as usize % self.live.len())
            .and_then(|i| self.live.keys().nth(i).copied());
        let op = match picked {
            Some(id) if roll < deletes => ItemOp::Delete { id },
            Some(id) if roll < changes => {
                let old = &self.live[&id];
                let hot = (r >> 8) & 1 == 0;
                ItemOp::Update {
                    id,
                    item: Item {
                        rev: old.rev + 1,
                        tag: if hot { old.tag } else { tag(r) },
                        labels: if hot { old.labels.clone() } else { labels(r) },
                        body: body(),
                    },
                }
            }
            _ => ItemOp::Insert {
                id: n,
                item: Item {
                    rev: 1,
                    tag: tag(r),
                    labels: labels(r),
                    body: body(),
                },
            },
        };
        match &op {
            ItemOp::Insert { id, item } | ItemOp::Update { id, item } => {
                self.live.insert(*id, item.clone());
            }
            ItemOp::Delete { id } => {
                self.live.remove(id);
            }
        }
        op
    }
}

/// The body written by operation `n` (or prefill item `n`) with draw `r`;
/// never TOASTed for the sweeper, whose table part stays small.
fn body(seed: u64, writer: u32, n: u64, r: u64) -> String {
    let len = if writer != SWEEPER && (r >> 56).is_multiple_of(LARGE_EVERY) {
        LARGE_BODY
    } else {
        BODY
    };
    text(b"pgdrill item body v1\0", seed, writer, n, len)
}

/// The writer's prefill as lines of `COPY ... FROM STDIN` text format
/// (bodies and numbers need no escaping).
pub fn prefill_copy_text(seed: u64, mix: Mix, writer: u32) -> String {
    let mut out = String::new();
    for (id, item) in ItemModel::new(seed, mix, writer).items() {
        let labels: Vec<String> = item.labels.iter().map(i32::to_string).collect();
        out.push_str(&format!(
            "{writer}\t{id}\t{}\t{}\t{{{}}}\t{}\n",
            item.rev,
            item.tag,
            labels.join(","),
            item.body
        ));
    }
    out
}

fn tag(r: u64) -> i32 {
    ((r >> 24) % 1000) as i32
}

/// Three labels out of 100, for the GIN index.
fn labels(r: u64) -> Vec<i32> {
    let mut labels: Vec<i32> = [32, 40, 48]
        .iter()
        .map(|s| ((r >> s) % 100) as i32)
        .collect();
    labels.sort_unstable();
    labels.dedup();
    labels
}

impl Mix {
    /// 30% updates, 15% deletes, `prefill` items, no VACUUM task: the mix
    /// unit tests use.
    #[cfg(test)]
    pub(crate) fn for_tests(prefill: u32) -> Mix {
        Mix {
            updates: 30,
            deletes: 15,
            vacuum_freeze_every: None,
            prefill,
            ddl_every: None,
            sweep_during_backups: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix::for_tests(0)
    }

    #[test]
    fn the_model_is_a_pure_function_of_the_operations_so_far() {
        let mut model = ItemModel::new(7, mix(), 2);
        let ops: Vec<ItemOp> = (0..500).map(|_| model.next_op()).collect();
        assert_eq!(ItemModel::after(7, mix(), 2, 500).items(), model.items());
        assert_eq!(ItemModel::after(7, mix(), 2, 0).items().len(), 0);
        let count = |f: fn(&ItemOp) -> bool| ops.iter().filter(|o| f(o)).count();
        let (inserts, updates, deletes) = (
            count(|o| matches!(o, ItemOp::Insert { .. })),
            count(|o| matches!(o, ItemOp::Update { .. })),
            count(|o| matches!(o, ItemOp::Delete { .. })),
        );
        assert!(
            updates > 100 && deletes > 40 && inserts > 200,
            "{inserts} {updates} {deletes}"
        );
        assert_eq!(model.items().len(), inserts - deletes);
        assert!(
            model.items().values().any(|i| i.body.len() == LARGE_BODY),
            "some items are TOASTed"
        );
        assert_ne!(
            ItemModel::after(8, mix(), 2, 500).items(),
            model.items(),
            "the seed matters"
        );
    }

    #[test]
    fn prefilled_items_are_there_before_the_first_operation() {
        let prefilled = Mix {
            prefill: 100,
            ..mix()
        };
        let model = ItemModel::new(7, prefilled, 1);
        assert_eq!(model.items().len(), 100);
        assert!(model.items().keys().all(|&id| id >= PREFILL_ID_BASE));
        let text = prefill_copy_text(7, prefilled, 1);
        assert_eq!(text.lines().count(), 100);
        let first = text.lines().next().unwrap();
        let item = &model.items()[&PREFILL_ID_BASE];
        assert!(
            first.starts_with(&format!("1\t{PREFILL_ID_BASE}\t1\t{}\t{{", item.tag))
                && first.ends_with(&item.body),
            "{first}"
        );
        // Operations pick prefilled items too.
        let mut model = model;
        let touched = (0..200)
            .filter_map(|_| match model.next_op() {
                ItemOp::Update { id, .. } | ItemOp::Delete { id } => Some(id),
                ItemOp::Insert { .. } => None,
            })
            .filter(|&id| id >= PREFILL_ID_BASE)
            .count();
        assert!(touched > 30, "{touched}");
    }

    #[test]
    fn the_sweeper_only_updates_its_own_items_across_its_table() {
        let mix = Mix {
            sweep_during_backups: true,
            ..Mix::for_tests(10)
        };
        let mut model = ItemModel::new(7, mix, SWEEPER);
        assert_eq!(model.items().len(), SWEEP_ITEMS as usize);
        let ids: std::collections::BTreeSet<u64> = (0..300)
            .map(|_| match model.next_op() {
                ItemOp::Update { id, item } => {
                    assert_eq!(item.body.len(), BODY);
                    id
                }
                op => panic!("the sweeper inserted or deleted: {op:?}"),
            })
            .collect();
        assert_eq!(model.items().len(), SWEEP_ITEMS as usize);
        // Spread over the table, not one page after another.
        let (lo, hi) = (ids.first().unwrap(), ids.last().unwrap());
        assert!(
            ids.len() > 280 && hi - lo > u64::from(SWEEP_ITEMS) / 2,
            "{ids:?}"
        );
        assert_eq!(
            ItemModel::after(7, mix, SWEEPER, 300).items(),
            model.items()
        );
    }

    #[test]
    fn without_updates_or_deletes_every_operation_inserts() {
        let none = Mix {
            updates: 0,
            deletes: 0,
            vacuum_freeze_every: None,
            prefill: 0,
            ddl_every: None,
            sweep_during_backups: false,
        };
        let model = ItemModel::after(1, none, 1, 50);
        assert_eq!(
            model.items().keys().copied().collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
    }
}
