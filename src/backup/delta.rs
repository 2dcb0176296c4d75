//! Delta (incremental) backups at page level.
//!
//! A delta backup stores, for each main-fork relation segment that its base
//! chain also holds, only the pages whose LSN is at or after the previous
//! backup's start LSN, plus all-zero pages (extension leftovers whose older
//! content must not resurface) and pages beyond the file's previous size.
//! Every other file is stored whole. Pages with an older LSN were not
//! touched since the previous backup began, so its copy is current; pages
//! changed later are fixed by WAL replay from the delta's own start, as for
//! any base backup.
//!
//! The LSN rule holds for the main fork only. Clearing a visibility-map bit
//! (a DELETE or UPDATE on an all-visible page) does not set the map page's
//! LSN, and free-space-map pages are not WAL-logged at all, so `_vm` and
//! `_fsm` files always go whole (as WAL-G increments only main forks): a
//! stale visibility map makes index-only scans return deleted rows.
//!
//! A delta file entry (inside the tar part, under the file's own path):
//!
//! ```text
//! "PGDRDLT1" | file size (u64 LE) | page count n (u32 LE) |
//! n page numbers (u32 LE each, ascending) | n pages of 8192 bytes
//! ```

use std::io::{self, Read, Seek, SeekFrom, Write};

pub const BLCKSZ: usize = 8192;
const MAGIC: &[u8; 8] = b"PGDRDLT1";

/// Whether a data-directory path is a main-fork relation segment, whose
/// changed pages a delta can pick by LSN: `base/<db>/<node>[.seg]` or
/// `global/<node>[.seg]` (not `_fsm`, `_vm` or `_init`).
pub fn pages_selectable_by_lsn(rel: &str) -> bool {
    relation_fork(rel) == Some("")
}

/// The fork of a relation segment file (`""` for the main fork, `fsm`,
/// `vm`, `init`); `None` for any other path.
pub fn relation_fork(rel: &str) -> Option<&str> {
    let name = match rel.rsplit_once('/') {
        Some((dir, name)) if dir == "global" || is_db_dir(dir) => name,
        _ => return None,
    };
    let base = name.split('.').next().unwrap_or("");
    let seg_ok = name
        .split_once('.')
        .is_none_or(|(_, seg)| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()));
    let (node, fork) = base.split_once('_').unwrap_or((base, ""));
    (seg_ok
        && !node.is_empty()
        && node.bytes().all(|b| b.is_ascii_digit())
        && matches!(fork, "" | "fsm" | "vm" | "init"))
    .then_some(fork)
}

fn is_db_dir(dir: &str) -> bool {
    dir.strip_prefix("base/")
        .is_some_and(|oid| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()))
}

/// A page's LSN (`pd_lsn`: xlogid, then xrecoff, native endianness).
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_ne_bytes(page[0..4].try_into().expect("4 bytes")) as u64;
    let lo = u32::from_ne_bytes(page[4..8].try_into().expect("4 bytes")) as u64;
    (hi << 32) | lo
}

/// What a scan of one file decided.
#[derive(Debug, PartialEq)]
pub enum Scan {
    /// Store these pages (numbers ascending, bytes concatenated).
    Pages { numbers: Vec<u32>, pages: Vec<u8> },
    /// Too much changed (or the file is not page-aligned): store it whole.
    Whole,
}

/// Reads `size` bytes of a relation file and picks the pages a delta
/// needs: LSN >= `from_lsn`, all-zero, or at/after `previous_size`. Gives
/// up (`Whole`) once more than `limit` bytes of pages would be kept, so
/// memory stays bounded; then the caller stores the file whole.
pub fn scan(
    mut file: impl Read,
    size: u64,
    previous_size: u64,
    from_lsn: u64,
    limit: usize,
) -> io::Result<Scan> {
    if !size.is_multiple_of(BLCKSZ as u64) {
        return Ok(Scan::Whole);
    }
    let mut numbers = Vec::new();
    let mut pages = Vec::new();
    let mut page = vec![0u8; BLCKSZ];
    for number in 0..(size / BLCKSZ as u64) {
        let n = read_full(&mut file, &mut page)?;
        // A file that shrank while read: the rest is zero, as for a full copy.
        page[n..].fill(0);
        let offset = number * BLCKSZ as u64;
        let changed =
            offset >= previous_size || page_lsn(&page) >= from_lsn || page.iter().all(|b| *b == 0);
        if changed {
            if pages.len() + BLCKSZ > limit {
                return Ok(Scan::Whole);
            }
            numbers.push(number as u32);
            pages.extend_from_slice(&page);
        }
    }
    Ok(Scan::Pages { numbers, pages })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Largest relation file a delta entry may describe: far above any segment
/// size PostgreSQL can be built with (`--with-segsize`), far below what a
/// damaged length could make a restore allocate on disk.
const MAX_FILE_SIZE: u64 = 1 << 40;

/// Size of the tar entry holding a delta of `count` pages.
pub fn entry_len(count: usize) -> u64 {
    (MAGIC.len() + 8 + 4 + 4 * count + BLCKSZ * count) as u64
}

/// The part of a delta entry before its pages.
pub fn entry_head(file_size: u64, numbers: &[u32]) -> Vec<u8> {
    let mut head = Vec::with_capacity(MAGIC.len() + 12 + 4 * numbers.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&file_size.to_le_bytes());
    head.extend_from_slice(&(numbers.len() as u32).to_le_bytes());
    for n in numbers {
        head.extend_from_slice(&n.to_le_bytes());
    }
    head
}

#[cfg(test)]
fn write_entry(
    mut out: impl Write,
    file_size: u64,
    numbers: &[u32],
    pages: &[u8],
) -> io::Result<()> {
    out.write_all(&entry_head(file_size, numbers))?;
    out.write_all(pages)
}

/// Applies a delta entry to `target`, which holds the file as of the
/// previous backup in the chain: resizes it to `listed_size` (its size in
/// the backup's file list, which the entry must agree with) and writes
/// the pages.
pub fn apply_entry(
    mut entry: impl Read,
    target: &mut (impl Write + Seek + SetLen),
    listed_size: u64,
) -> io::Result<()> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad delta entry: {m}"));
    let mut head = [0u8; 20];
    entry.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(bad("magic"));
    }
    let size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
    // Stored lengths are checked before they size or resize anything.
    if size > MAX_FILE_SIZE {
        return Err(bad("file size over 1 TiB"));
    }
    if size != listed_size {
        return Err(bad(&format!(
            "file size {size} differs from the backup's list ({listed_size})"
        )));
    }
    if count as u64 > size / BLCKSZ as u64 {
        return Err(bad("page count beyond the file's size"));
    }
    // Grows with what the entry holds, not with what its count claims.
    let mut numbers = Vec::new();
    (&mut entry)
        .take(4 * count as u64)
        .read_to_end(&mut numbers)?;
    if numbers.len() != 4 * count {
        return Err(bad("page numbers cut short"));
    }
    target.set_len(size)?;
    let mut page = vec![0u8; BLCKSZ];
    for chunk in numbers.chunks_exact(4) {
        let n = u32::from_le_bytes(chunk.try_into().expect("4 bytes")) as u64;
        if (n + 1) * BLCKSZ as u64 > size {
            return Err(bad("page beyond the file's size"));
        }
        entry.read_exact(&mut page)?;
        target.seek(SeekFrom::Start(n * BLCKSZ as u64))?;
        target.write_all(&page)?;
    }
    if entry.read(&mut [0u8; 1])? != 0 {
        return Err(bad("trailing bytes"));
    }
    Ok(())
}

/// Files that can be resized (so tests can use an in-memory target).
pub trait SetLen {
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl SetLen for std::fs::File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

impl SetLen for io::Cursor<Vec<u8>> {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.get_mut().resize(len as usize, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lengths_are_checked_before_they_size_anything() {
        // A page count of 2^32 - 1 (16 GiB of page numbers) over a tiny
        // entry, more pages than the file holds, a file over 1 TiB.
        let cases: [(u64, u32, &str); 3] = [
            (8192, u32::MAX, "page count"),
            (8191, 1, "page count"),
            (1 << 41, 0, "file size"),
        ];
        for (size, count, what) in cases {
            let mut entry = MAGIC.to_vec();
            entry.extend_from_slice(&size.to_le_bytes());
            entry.extend_from_slice(&count.to_le_bytes());
            let mut target = io::Cursor::new(vec![0u8; 8192]);
            let err = apply_entry(io::Cursor::new(entry), &mut target, size).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
            assert_eq!(target.get_ref().len(), 8192, "target untouched");
        }
    }

    fn page(lsn: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
        p
    }

    #[test]
    fn only_main_forks_take_pages_by_lsn() {
        for yes in ["base/5/16384", "base/5/16384.2", "global/1262"] {
            assert!(pages_selectable_by_lsn(yes), "{yes}");
        }
        for no in [
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16384_vm.1",
            "base/5/16390_init",
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/PG_VERSION",
            "pg_xact/0000",
            "base/5/t3_16384",
            "base/x/1",
            "base/5/1.",
            "16384",
        ] {
            assert!(!pages_selectable_by_lsn(no), "{no}");
        }
    }

    #[test]
    fn scan_keeps_new_changed_zero_and_appended_pages() {
        let mut file = Vec::new();
        file.extend(page(0x1_0000_0000, 1)); // 0: old
        file.extend(page(0x2_0000_0000, 2)); // 1: changed since from_lsn
        file.extend(vec![0u8; BLCKSZ]); // 2: zero page
        file.extend(page(0x1_0000_0000, 4)); // 3: old but beyond previous size
        let scan = scan(
            &file[..],
            file.len() as u64,
            3 * BLCKSZ as u64,
            0x1_8000_0000,
            1 << 20,
        )
        .unwrap();
        let Scan::Pages { numbers, pages } = scan else {
            panic!("pages")
        };
        assert_eq!(numbers, [1, 2, 3]);
        assert_eq!(pages.len(), 3 * BLCKSZ);
        assert_eq!(scan_whole_when_over_limit(&file), Scan::Whole);
        assert_eq!(
            super::scan(&file[..100], 100, 0, 0, 1 << 20).unwrap(),
            Scan::Whole,
            "not page-aligned"
        );
    }

    fn scan_whole_when_over_limit(file: &[u8]) -> Scan {
        scan(file, file.len() as u64, 0, 0, BLCKSZ).unwrap()
    }

    #[test]
    fn entry_round_trip_patches_grows_and_shrinks() {
        let base: Vec<u8> = [page(1, 1), page(1, 2), page(1, 3)].concat();
        let mut target = io::Cursor::new(base.clone());
        let new_page = page(9, 7);
        let mut entry = Vec::new();
        write_entry(
            &mut entry,
            4 * BLCKSZ as u64,
            &[1, 3],
            &[new_page.clone(), new_page.clone()].concat(),
        )
        .unwrap();
        assert_eq!(entry.len() as u64, entry_len(2));
        apply_entry(&entry[..], &mut target, 4 * BLCKSZ as u64).unwrap();
        let out = target.into_inner();
        assert_eq!(out.len(), 4 * BLCKSZ);
        assert_eq!(&out[..BLCKSZ], &base[..BLCKSZ]);
        assert_eq!(&out[BLCKSZ..2 * BLCKSZ], &new_page[..]);
        assert_eq!(&out[2 * BLCKSZ..3 * BLCKSZ], &base[2 * BLCKSZ..]);

        let mut shrink = io::Cursor::new(out);
        let mut entry = Vec::new();
        write_entry(&mut entry, BLCKSZ as u64, &[], &[]).unwrap();
        apply_entry(&entry[..], &mut shrink, BLCKSZ as u64).unwrap();
        assert_eq!(shrink.into_inner().len(), BLCKSZ);

        let mut bad = Vec::new();
        write_entry(&mut bad, BLCKSZ as u64, &[5], &page(1, 1)).unwrap();
        assert!(apply_entry(&bad[..], &mut io::Cursor::new(Vec::new()), BLCKSZ as u64).is_err());
        // An entry that disagrees with the file list is not applied.
        let mut other = Vec::new();
        write_entry(&mut other, 2 * BLCKSZ as u64, &[], &[]).unwrap();
        let err =
            apply_entry(&other[..], &mut io::Cursor::new(Vec::new()), BLCKSZ as u64).unwrap_err();
        assert!(
            err.to_string().contains("differs from the backup's list"),
            "{err}"
        );
    }
}
