//! Sets of sequence numbers per writer, kept as sorted disjoint ranges so
//! that a gap-free table of millions of rows costs one range per writer.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::Serialize;

/// The sequence numbers found per writer (e.g. in a restored table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeqSet {
    ranges: BTreeMap<u32, Vec<RangeInclusive<u64>>>,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// Adds `seq` for `writer`. Fastest in ascending order, correct in any.
    pub fn insert(&mut self, writer: u32, seq: u64) {
        let ranges = self.ranges.entry(writer).or_default();
        // Ranges before `i` end too early to touch `seq`.
        let i = ranges.partition_point(|r| r.end().saturating_add(1) < seq);
        match ranges.get(i) {
            Some(r) if *r.start() <= seq.saturating_add(1) => {
                let start = seq.min(*r.start());
                let mut end = seq.max(*r.end());
                if let Some(next) = ranges.get(i + 1) {
                    if *next.start() <= end.saturating_add(1) {
                        end = end.max(*next.end());
                        ranges.remove(i + 1);
                    }
                }
                ranges[i] = start..=end;
            }
            _ => ranges.insert(i, seq..=seq),
        }
    }

    /// How many sequence numbers `writer` has.
    pub fn count(&self, writer: u32) -> u64 {
        self.ranges
            .get(&writer)
            .map_or(0, |rs| rs.iter().map(|r| r.end() - r.start() + 1).sum())
    }

    /// The highest sequence number of `writer`, 0 when it has none.
    pub fn max(&self, writer: u32) -> u64 {
        self.ranges
            .get(&writer)
            .and_then(|rs| rs.last())
            .map_or(0, |r| *r.end())
    }

    /// The sequence numbers in `within` that `writer` lacks, as ranges.
    pub fn gaps(&self, writer: u32, within: RangeInclusive<u64>) -> Vec<RangeInclusive<u64>> {
        let (lo, hi) = within.into_inner();
        let mut gaps = Vec::new();
        if lo > hi {
            return gaps;
        }
        // The first number not yet known to be covered; None once past `hi`.
        let mut next = Some(lo);
        for r in self.ranges.get(&writer).into_iter().flatten() {
            let Some(n) = next else { break };
            if *r.start() > hi {
                break;
            }
            if *r.end() < n {
                continue;
            }
            if *r.start() > n {
                gaps.push(n..=*r.start() - 1);
            }
            next = r.end().checked_add(1).filter(|&m| m <= hi);
        }
        if let Some(n) = next {
            gaps.push(n..=hi);
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(writer: u32, seqs: &[u64]) -> SeqSet {
        let mut s = SeqSet::new();
        for &q in seqs {
            s.insert(writer, q);
        }
        s
    }

    #[test]
    fn insert_merges_adjacent_ranges_in_any_order() {
        let s = set(1, &[5, 1, 3, 2, 4, 9, 3]);
        assert_eq!(s.ranges[&1], vec![1..=5, 9..=9]);
        assert_eq!(s.count(1), 6);
        assert_eq!(s.max(1), 9);
        assert_eq!(s.count(2), 0);
        assert_eq!(s.max(2), 0);
        let ascending = set(1, &(1..=1000).collect::<Vec<_>>());
        assert_eq!(ascending.ranges[&1], vec![1..=1000]);
    }

    #[test]
    fn gaps_within_a_range() {
        let s = set(1, &[2, 3, 6, 10]);
        assert_eq!(s.gaps(1, 1..=12), vec![1..=1, 4..=5, 7..=9, 11..=12]);
        assert_eq!(s.gaps(1, 2..=3), Vec::<RangeInclusive<u64>>::new());
        assert_eq!(s.gaps(1, 3..=7), vec![4..=5, 7..=7]);
        assert_eq!(s.gaps(2, 1..=3), vec![1..=3]);
        // An empty range has no gaps (a writer expected to have no rows).
        assert!(s.gaps(1, RangeInclusive::new(1, 0)).is_empty());
        let top = set(1, &[u64::MAX]);
        assert_eq!(
            top.gaps(1, (u64::MAX - 2)..=u64::MAX),
            vec![(u64::MAX - 2)..=(u64::MAX - 1)]
        );
    }
}
