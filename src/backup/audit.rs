//! `backup-verify NAME|LATEST`: checks a stored backup without restoring
//! it, and for a delta every backup of its chain, since a restore applies
//! them all: `metadata.json` against the sentinel's checksum; every part present,
//! of the size the metadata records, decoded in full (object trailer, tar
//! stream, every file's BLAKE3 against the file list, the part's checksum);
//! every file of the list found in its part; and every WAL segment from the
//! backup's own start to its finish segment stored and decodable. Every
//! problem is reported, not just the first. A WAL-G backup is read as its
//! restore reads it (`walg::restore`), up to its first damaged object.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::base::{files_by_path, read_stored_part};
use super::catalog::{self, BackupFormat, BackupMetadata, BackupSummary, PartInfo};
use super::layout::{self, Segment};
use super::store::Key;
use super::walverify::{count, valid_segment_size, CheckStatus, MAX_SCAN};
use super::{walg, BackupError, Context};
use crate::backup::progress::Progress;

/// One thing wrong with a stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The object's key (relative to the storage prefix).
    pub object: String,
    pub detail: String,
}

impl Problem {
    fn new(object: impl fmt::Display, detail: impl Into<String>) -> Problem {
        Problem {
            object: object.to_string(),
            detail: detail.into(),
        }
    }

    /// A failure reading `key`; the key is not repeated in the detail.
    fn from_error(key: &Key, e: BackupError) -> Problem {
        match e {
            BackupError::Corrupt { detail, .. } => Problem::new(key, format!("corrupt: {detail}")),
            other => Problem::new(key, other.to_string()),
        }
    }
}

/// What `backup-verify` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub backup_name: String,
    /// The backups checked: the chain a restore applies, full backup
    /// first, ending with this one.
    pub backups_checked: Vec<String>,
    /// OK or FAILURE.
    pub status: CheckStatus,
    pub parts_checked: usize,
    pub files_checked: usize,
    pub wal_segments_checked: usize,
    pub problems: Vec<Problem>,
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = match self.backups_checked.split_last() {
            Some((_, bases)) if !bases.is_empty() => {
                format!(" (a delta: with {})", bases.join(", "))
            }
            _ => String::new(),
        };
        writeln!(
            f,
            "backup {}{chain}: {}, {} and {} checked",
            self.backup_name,
            count(self.parts_checked as u64, "part"),
            count(self.files_checked as u64, "file"),
            count(self.wal_segments_checked as u64, "WAL segment")
        )?;
        if self.problems.is_empty() {
            return writeln!(
                f,
                "OK: every object is present, decodes and matches metadata.json"
            );
        }
        writeln!(f, "FAILURE: {} problem(s)", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {}: {}", p.object, p.detail)?;
        }
        Ok(())
    }
}

/// Runs `backup-verify`. `Err` only when the backup cannot be found or
/// storage cannot be listed; everything wrong with the backup itself is
/// in the report.
pub async fn backup_verify(ctx: &Context, name: &str) -> Result<AuditReport, BackupError> {
    let summary = catalog::resolve(ctx, name).await?;
    let mut report = AuditReport {
        backup_name: summary.backup_name.clone(),
        backups_checked: Vec::new(),
        status: CheckStatus::Ok,
        parts_checked: 0,
        files_checked: 0,
        wal_segments_checked: 0,
        problems: Vec::new(),
    };
    let chain = match catalog::chain(ctx, &summary).await {
        Ok(chain) => chain,
        Err(e) => {
            report.problems.push(Problem::from_error(
                &layout::sentinel_key(&summary.backup_name),
                e,
            ));
            vec![summary.clone()]
        }
    };
    report
        .backups_checked
        .extend(chain.iter().map(|m| m.backup_name.clone()));
    match summary.format {
        BackupFormat::Pgdrill => {
            for member in &chain {
                match catalog::read_metadata(ctx, member).await {
                    Ok(metadata) => check_parts(ctx, &metadata, &mut report).await?,
                    Err(e) => report.problems.push(Problem::from_error(
                        &layout::metadata_key(&member.backup_name),
                        e,
                    )),
                }
            }
        }
        BackupFormat::Walg => check_walg(ctx, &chain, &mut report).await,
    }
    check_wal(ctx, &summary, &mut report).await?;
    if !report.problems.is_empty() {
        report.status = CheckStatus::Failure;
    }
    Ok(report)
}

/// Reads a WAL-G chain as a restore would, writing nothing (see
/// [`walg::restore`] for what that checks); it stops at the first object
/// with problems.
async fn check_walg(ctx: &Context, chain: &[BackupSummary], report: &mut AuditReport) {
    let total = walg::restore::total_size(chain);
    let (progress, _guard) = Progress::start("backup-verify", total, Duration::from_secs(5));
    let checked = match walg::restore::plan(ctx, chain).await {
        Ok(plan) => walg::restore::run(ctx, &plan, None, &progress, None).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(checked) => {
            report.parts_checked += checked.tars;
            report.files_checked += checked.entries;
        }
        Err(BackupError::Corrupt { key, detail }) => report
            .problems
            .push(Problem::new(key, format!("corrupt: {detail}"))),
        Err(e) => {
            let last = chain.last().map_or("", |s| s.backup_name.as_str());
            report
                .problems
                .push(Problem::from_error(&layout::sentinel_key(last), e));
        }
    }
}

async fn check_parts(
    ctx: &Context,
    metadata: &BackupMetadata,
    report: &mut AuditReport,
) -> Result<(), BackupError> {
    let sizes: HashMap<Key, u64> = ctx
        .store
        .list(&layout::backup_prefix(&metadata.backup_name))
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let expected = files_by_path(metadata);
    let total = metadata.parts.iter().map(|p| p.plain_size).sum();
    let (progress, _guard) = Progress::start("backup-verify", total, Duration::from_secs(5));
    let checked: Vec<PartCheck> = futures::stream::iter(&metadata.parts)
        .map(|part| {
            let size = sizes.get(&Key::new(part.key.clone())).copied();
            check_part(
                ctx,
                part,
                size,
                Arc::clone(&expected),
                Arc::clone(&progress),
            )
        })
        .buffer_unordered(ctx.settings.download_concurrency)
        .collect()
        .await;
    let mut seen = HashSet::new();
    let mut complete = HashSet::new();
    for checked in checked {
        report.problems.extend(checked.problems);
        if let Some(entries) = checked.entries {
            report.parts_checked += 1;
            report.files_checked += entries.len();
            seen.extend(entries);
            complete.insert(checked.part.name.as_str());
        }
    }
    let parts: HashSet<&str> = metadata.parts.iter().map(|p| p.name.as_str()).collect();
    // Files of a part that could not be read through are unchecked, not
    // missing: that part's problem says why.
    for file in &metadata.files {
        let part_known = parts.contains(file.part.as_str());
        if seen.contains(&file.path) || (part_known && !complete.contains(file.part.as_str())) {
            continue;
        }
        let detail = if part_known {
            format!("{} is in the file list but not in its part", file.path)
        } else {
            format!(
                "{} is in the file list in part {:?}, which the backup does not have",
                file.path, file.part
            )
        };
        report.problems.push(Problem::new(
            layout::metadata_key(&metadata.backup_name),
            detail,
        ));
    }
    Ok(())
}

/// What checking one part found.
struct PartCheck<'a> {
    part: &'a PartInfo,
    /// The entries read; `None` when reading could not go through.
    entries: Option<Vec<String>>,
    problems: Vec<Problem>,
}

/// Checks one part: present, of the recorded size, read through.
async fn check_part<'a>(
    ctx: &Context,
    part: &'a PartInfo,
    stored_size: Option<u64>,
    expected: Arc<HashMap<String, catalog::FileEntry>>,
    progress: Arc<Progress>,
) -> PartCheck<'a> {
    let key = Key::new(part.key.clone());
    let mut problems = Vec::new();
    let entries = match stored_size {
        None => {
            problems.push(Problem::new(&key, "missing from storage"));
            None
        }
        Some(size) => {
            if size != part.compressed_size {
                problems.push(Problem::new(
                    &key,
                    format!(
                        "{size} bytes stored, metadata.json says {}",
                        part.compressed_size
                    ),
                ));
            }
            match read_stored_part(ctx, part, expected, None, progress).await {
                Ok(read) => {
                    problems.extend(read.problems.into_iter().map(|d| Problem::new(&key, d)));
                    Some(read.entries)
                }
                Err(e) => {
                    problems.push(Problem::from_error(&key, e));
                    None
                }
            }
        }
    };
    PartCheck {
        part,
        entries,
        problems,
    }
}

/// Every segment from the backup's start to its finish segment: stored,
/// decodable with a good checksum, a whole segment long.
async fn check_wal(
    ctx: &Context,
    summary: &BackupSummary,
    report: &mut AuditReport,
) -> Result<(), BackupError> {
    let seg_size = summary.wal_segment_size;
    let bounds = Some(seg_size)
        .filter(|s| valid_segment_size(*s))
        .and_then(|s| {
            Segment::parse(&summary.wal_file_name, s)
                .zip(Segment::parse(&summary.finish_wal_file_name, s))
        });
    let Some((start, finish)) =
        bounds.filter(|(s, f)| s.timeline == f.timeline && s <= f && f.segno - s.segno < MAX_SCAN)
    else {
        report.problems.push(Problem::new(
            layout::sentinel_key(&summary.backup_name),
            format!(
                "WAL range {}..{} with {seg_size}-byte segments is not a range of segments",
                summary.wal_file_name, summary.finish_wal_file_name
            ),
        ));
        return Ok(());
    };
    let mut stored: HashMap<String, Key> = HashMap::new();
    for o in ctx.store.list(layout::WAL_DIR).await? {
        if let Some(name) = layout::wal_name_of(&o.key) {
            stored.entry(name.to_string()).or_insert(o.key);
        }
    }
    let names: Vec<String> = (start.segno..=finish.segno)
        .map(|segno| {
            Segment {
                timeline: start.timeline,
                segno,
            }
            .file_name(seg_size)
        })
        .collect();
    report.wal_segments_checked = names.len();
    let problems: Vec<Option<Problem>> = futures::stream::iter(&names)
        .map(|name| {
            let key = stored.get(name).cloned();
            async move {
                let Some(key) = key else {
                    return Some(Problem::new(
                        format!("{}{name}", layout::WAL_DIR),
                        "missing from storage: the backup needs it to reach consistency",
                    ));
                };
                match ctx.fetch_wal_object(&key, name).await {
                    Err(e) => Some(Problem::from_error(&key, e)),
                    Ok((data, _)) if data.len() as u64 != seg_size => Some(Problem::new(
                        &key,
                        format!("decoded {} bytes, a segment is {seg_size}", data.len()),
                    )),
                    Ok(_) => None,
                }
            }
        })
        .buffered(ctx.settings.download_concurrency)
        .collect()
        .await;
    report.problems.extend(problems.into_iter().flatten());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_every_problem() {
        let mut report = AuditReport {
            backup_name: "base_000000010000000000000003".into(),
            backups_checked: vec!["base_000000010000000000000003".into()],
            status: CheckStatus::Ok,
            parts_checked: 2,
            files_checked: 10,
            wal_segments_checked: 1,
            problems: Vec::new(),
        };
        assert!(report.to_string().contains("\nOK: "));
        report.status = CheckStatus::Failure;
        report.problems = vec![
            Problem::from_error(
                &Key::new("p1"),
                BackupError::Corrupt {
                    key: Key::new("p1"),
                    detail: "checksum mismatch".into(),
                },
            ),
            Problem::new("wal_005/X", "missing from storage"),
        ];
        let text = report.to_string();
        assert!(text.contains("FAILURE: 2 problem(s)"), "{text}");
        assert!(
            text.contains("  p1: corrupt: checksum mismatch\n"),
            "{text}"
        );
        assert!(
            text.contains("  wal_005/X: missing from storage\n"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["status"], "FAILURE");
        assert_eq!(json["problems"][1]["object"], "wal_005/X");
    }
}
