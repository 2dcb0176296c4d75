//! WAL-G's increment of a paged file, as a delta backup stores a relation
//! file that its base already had (wal-g
//! `internal/databases/postgres/pagefile.go:1-9`, `:196-284`;
//! `incremental_page_reader.go:16`, `:86-112`): the header `w` `i` `1`
//! 0x55, the file's new size (u64), the number of changed blocks (u32),
//! their numbers (u32 each), then each block's page; little endian.
//! Applying one truncates the file to the new size and writes the pages
//! in place; nothing may follow the last page.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// PostgreSQL's block size, the only page size WAL-G's increments use
/// for PostgreSQL's own relations.
pub const PAGE_SIZE: u64 = 8192;
/// The largest file an increment may describe: PostgreSQL's relation
/// segment (RELSEG_SIZE pages of BLCKSZ, 1 GiB unless built otherwise).
/// A larger size in a stored increment is damage or an attack (it would
/// make a huge sparse file), not a relation.
pub const MAX_FILE_SIZE: u64 = 1 << 30;

/// Why an increment could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum IncrementError {
    /// The entry does not start with `wi` .. 0x55.
    #[error("it does not start with WAL-G's increment header ('wi1' and 0x55)")]
    BadHeader,
    /// A format version other than `1`.
    #[error("it is a WAL-G increment of format version {0:?}, and pgdrill knows only version '1'")]
    UnknownVersion(char),
    /// A block number at or past the file's new end.
    #[error("it changes block {block}, past the end of the file's {size} bytes")]
    BlockOutside { block: u32, size: u64 },
    /// A file size beyond a relation segment.
    #[error(
        "it gives the file a size of {0} bytes, more than a PostgreSQL relation segment (1 GiB)"
    )]
    TooLarge(u64),
    /// More changed blocks than the file has pages.
    #[error("it lists {count} changed blocks, more than the file's {pages} pages")]
    TooManyBlocks { count: u32, pages: u64 },
    /// Bytes after the last page (wal-g `pagefile.go:273-276` refuses them too).
    #[error("data follows its last page")]
    TrailingData,
    /// Reading the increment or writing the file failed (a short entry
    /// shows up here as an unexpected end of file).
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The header of an increment: the file's new size and the changed blocks.
#[derive(Debug, PartialEq, Eq)]
pub struct Increment {
    pub file_size: u64,
    pub blocks: Vec<u32>,
}

/// The part of an increment before its pages, as WAL-G writes it
/// (wal-g `incremental_page_reader.go:86-112`): the header, the file's
/// size and the changed blocks' numbers, ascending.
pub fn head(file_size: u64, blocks: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 4 * blocks.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&file_size.to_le_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        out.extend_from_slice(&b.to_le_bytes());
    }
    out
}

/// The length of an increment of `count` pages.
pub fn len(count: usize) -> u64 {
    (16 + count * (4 + PAGE_SIZE as usize)) as u64
}

/// `w` `i` `1` 0x55 (wal-g `incremental_page_reader.go:16`, `pagefile.go:29`).
const MAGIC: [u8; 4] = [b'w', b'i', b'1', 0x55];

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads and checks an increment's header.
pub fn read_header(r: &mut impl Read) -> Result<Increment, IncrementError> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if magic[0] != b'w' || magic[1] != b'i' || magic[3] != 0x55 {
        return Err(IncrementError::BadHeader);
    }
    if magic[2] != b'1' {
        return Err(IncrementError::UnknownVersion(char::from(magic[2])));
    }
    let mut size = [0u8; 8];
    r.read_exact(&mut size)?;
    let file_size = u64::from_le_bytes(size);
    if file_size > MAX_FILE_SIZE {
        return Err(IncrementError::TooLarge(file_size));
    }
    let count = read_u32(r)?;
    let pages = file_size / PAGE_SIZE;
    if u64::from(count) > pages {
        return Err(IncrementError::TooManyBlocks { count, pages });
    }
    let mut blocks = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let block = read_u32(r)?;
        if u64::from(block) >= pages {
            return Err(IncrementError::BlockOutside {
                block,
                size: file_size,
            });
        }
        blocks.push(block);
    }
    Ok(Increment { file_size, blocks })
}

/// Reads an increment from `r` and applies it to `file` (the base
/// version of the file); with `None` only reads and checks it. Calls
/// `counted` with the bytes of each page read.
pub fn apply(
    r: &mut impl Read,
    file: Option<&std::fs::File>,
    mut counted: impl FnMut(u64),
) -> Result<(), IncrementError> {
    let increment = read_header(r)?;
    if let Some(file) = file {
        file.set_len(increment.file_size)?;
    }
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for block in increment.blocks {
        r.read_exact(&mut page)?;
        if let Some(file) = file {
            file.write_all_at(&page, u64::from(block) * PAGE_SIZE)?;
        }
        counted(PAGE_SIZE);
    }
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(IncrementError::TrailingData);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = PAGE_SIZE as usize;

    fn increment(file_size: u64, blocks: &[(u32, u8)]) -> Vec<u8> {
        let numbers: Vec<u32> = blocks.iter().map(|(b, _)| *b).collect();
        let mut out = head(file_size, &numbers);
        for (_, fill) in blocks {
            out.extend(std::iter::repeat_n(*fill, PAGE));
        }
        assert_eq!(out.len() as u64, len(blocks.len()));
        out
    }

    /// The writer's bytes, spelled out as WAL-G's reader takes them.
    #[test]
    fn the_head_is_walgs() {
        let mut want = b"wi1\x55".to_vec();
        want.extend_from_slice(&(3 * PAGE_SIZE).to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        assert_eq!(head(3 * PAGE_SIZE, &[0, 2]), want);
    }

    #[test]
    fn an_increment_rewrites_its_pages_and_sets_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        std::fs::write(&path, vec![1u8; 3 * PAGE]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Grows to four pages: page 1 changed, page 3 new.
        let inc = increment(4 * PAGE_SIZE, &[(1, 7), (3, 9)]);
        let mut counted = 0;
        apply(&mut inc.as_slice(), Some(&file), |n| counted += n).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 4 * PAGE);
        assert!(data[..PAGE].iter().all(|&b| b == 1));
        assert!(data[PAGE..2 * PAGE].iter().all(|&b| b == 7));
        assert!(data[2 * PAGE..3 * PAGE].iter().all(|&b| b == 1));
        assert!(data[3 * PAGE..].iter().all(|&b| b == 9));
        assert_eq!(counted, 2 * PAGE_SIZE);
        // Shrinks to one page with nothing changed (a truncated relation).
        apply(
            &mut increment(PAGE_SIZE, &[]).as_slice(),
            Some(&file),
            |_| {},
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![1u8; PAGE]);
    }

    #[test]
    fn malformed_increments_are_refused_naming_the_fault() {
        let good = increment(2 * PAGE_SIZE, &[(1, 5)]);
        apply(&mut good.as_slice(), None, |_| {}).unwrap();
        let mut bad_magic = good.clone();
        bad_magic[3] = 0x56;
        let mut version = good.clone();
        version[2] = b'2';
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: [(Vec<u8>, &str); 7] = [
            (bad_magic, "does not start with WAL-G's increment header"),
            (version, "format version '2'"),
            (trailing, "data follows its last page"),
            (
                good[..good.len() - 1].to_vec(),
                "failed to fill whole buffer",
            ),
            (
                increment(2 * PAGE_SIZE, &[(2, 5)]),
                "block 2, past the end of the file's 16384 bytes",
            ),
            (
                increment(PAGE_SIZE, &[(0, 1), (0, 2)]),
                "2 changed blocks, more than the file's 1 pages",
            ),
            (
                increment(u64::MAX - 5, &[]),
                "more than a PostgreSQL relation segment",
            ),
        ];
        for (bytes, says) in cases {
            let e = apply(&mut bytes.as_slice(), None, |_| {})
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e} (wanted {says})");
        }
    }
}
