//! `backup-push` and `backup-fetch`: physical base backups as compressed tar
//! parts, uploaded and downloaded in parallel, verified file by file.
//!
//! Push order (crash safety): `pg_backup_start` on one connection held for
//! the whole backup; data parts in parallel; `global/pg_control` in a part
//! of its own, read last; `pg_backup_stop` (waits for the WAL to be
//! archived); the archive check (every segment from the start to the stop
//! segment is in this store); `metadata.json`; the sentinel LAST. A push
//! that dies or fails anywhere leaves objects without a sentinel: not a
//! backup, never listed.

mod fetch;
mod pgconf;
mod push;
mod recovery;
mod walk;

pub(crate) use fetch::safe_relative;
pub use fetch::{
    backup_fetch, files_by_path, read_stored_part, record_rebuilt, FetchOptions, PartReport,
    Rebuilt,
};
pub use push::{backup_push, DeltaBase, PushOptions};
pub use recovery::RecoveryConfig;

#[cfg(test)]
mod tests {

    use super::fetch::*;

    use super::walk::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn relation_file_classification() {
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t3_16384_fsm"));
        assert!(is_temp_relation("t12_16384.1"));
        assert!(!is_temp_relation("16384"));
        assert!(!is_temp_relation("tx_1"));
        assert_eq!(relation_of("16384"), Some(("16384", false)));
        assert_eq!(relation_of("16384.2"), Some(("16384", false)));
        assert_eq!(relation_of("16384_vm"), Some(("16384", false)));
        assert_eq!(relation_of("16384_init"), Some(("16384", true)));
        assert_eq!(relation_of("PG_VERSION"), None);
    }

    #[test]
    fn walk_applies_pg_basebackup_exclusions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in [
            "base/5",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc",
            "base/5/pgsql_tmp",
        ] {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "global/pg_control",
            "global/pg_internal.init",
            "base/5/16384",
            "base/5/16384_fsm",
            "base/5/16390",
            "base/5/16390_init",
            "base/5/16390_fsm",
            "base/5/t3_16400",
            "base/5/pgsql_tmp/x",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/global.stat",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let got: Vec<String> = walk_data_dir(d)
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(
            got,
            [
                "PG_VERSION",
                "base",
                "base/5",
                "base/5/16384",
                "base/5/16384_fsm",
                "base/5/16390_init",
                "global",
                "global/pg_control",
                "pg_stat_tmp",
                "pg_tblspc",
                "pg_wal",
            ]
        );
        std::os::unix::fs::symlink("/tmp", d.join("pg_tblspc/16500")).unwrap();
        let err = walk_data_dir(d).unwrap_err().to_string();
        assert!(err.contains("tablespaces"), "{err}");
    }

    #[test]
    fn part_size_balances_workers_within_bounds() {
        let gib = 1u64 << 30;
        assert_eq!(part_size(3 * gib / 2, gib, 2), 3 * gib / 8);
        assert_eq!(part_size(100 << 20, gib, 2), 64 << 20);
        assert_eq!(part_size(100 * gib, gib, 4), gib);
    }

    #[test]
    fn partition_respects_threshold() {
        let e = |rel: &str, size, is_dir| WalkEntry {
            rel: rel.into(),
            abs: PathBuf::new(),
            is_dir,
            size,
            mode: 0o600,
        };
        let parts = partition(
            vec![
                e("a", 60, false),
                e("b", 50, false),
                e("d", 0, true),
                e("c", 500, false),
                e("e", 10, false),
            ],
            100,
        );
        let names: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.rel.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "d"], vec!["b"], vec!["c"], vec!["e"]]);
    }

    #[test]
    fn force_empties_the_target_and_keeps_a_symlinked_pg_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (data, wal) = (dir.path().join("data"), dir.path().join("wal-disk"));
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        std::fs::create_dir_all(wal.join(".pgdrill/prefetch")).unwrap();
        std::fs::write(data.join("base/1/999"), b"x").unwrap();
        std::fs::write(wal.join("000000010000000000000009"), b"x").unwrap();
        std::fs::write(wal.join(".pgdrill/prefetch/00000001000000000000000A"), b"x").unwrap();
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).unwrap();
        assert!(prepare_target(&data, false).is_err());
        prepare_target(&data, true).unwrap();
        let left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["pg_wal"], "only the symlink stays");
        assert!(std::fs::symlink_metadata(data.join("pg_wal"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_dir(&wal).unwrap().count(),
            0,
            "pg_wal's disk emptied"
        );
        assert!(sync_filesystem(&data).is_ok());
        assert!(sync_filesystem(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn unsafe_tar_paths_are_rejected() {
        assert!(safe_relative(Path::new("../etc/passwd")).is_none());
        assert!(safe_relative(Path::new("/etc/passwd")).is_none());
        assert_eq!(
            safe_relative(Path::new("./base/1")),
            Some(PathBuf::from("base/1"))
        );
    }

    /// A file a delta rebuilt is re-read against its checksum taken right
    /// after rebuilding (the backup records only the delta entry's).
    #[test]
    fn verify_rereads_files_rebuilt_from_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("base/1")).unwrap();
        std::fs::write(d.join("base/1/16384"), b"rebuilt").unwrap();
        let entry = crate::backup::catalog::FileEntry {
            path: "base/1/16384".into(),
            is_dir: false,
            size: 7,
            mode: 0o600,
            blake3: Some(blake3::hash(b"the delta entry").to_hex().to_string()),
            part: "part_1".into(),
            delta: true,
            mtime: None,
        };
        let files = [entry];
        let mut rebuilt = Rebuilt::new();
        let err = verify_restored(d, &files, &rebuilt)
            .unwrap_err()
            .to_string();
        assert!(err.contains("was not taken"), "{err}");
        rebuilt.insert(
            "base/1/16384".into(),
            blake3::hash(b"rebuilt").to_hex().to_string(),
        );
        verify_restored(d, &files, &rebuilt).unwrap();
        std::fs::write(d.join("base/1/16384"), b"damaged").unwrap();
        let err = verify_restored(d, &files, &rebuilt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("base/1/16384: checksum differs from the file as its delta rebuilt it"),
            "{err}"
        );
    }
}
