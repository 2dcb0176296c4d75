//! The layout inside a PostgreSQL container, shared by the containers and
//! kind environments so that both match the seed's manifests: where the
//! backup tool's settings and binary are mounted, where data volumes go,
//! and the server's command line.

/// Where the seed's manifests mount the WAL-G Secret (the env directory).
pub const ENV_DIR: &str = "/etc/wal-g/env";
/// Where encryption keys are mounted (the Secret's other files).
pub const KEYS_DIR: &str = "/etc/wal-g/keys";
/// Where a data volume is mounted, as in the official image and the seed.
pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
/// The pgdrill binary inside every container.
pub const PGDRILL: &str = "/usr/local/bin/pgdrill";

/// `postgres` with `settings` as `-c` options, listening on every
/// address; no shell, so values need no quoting.
pub fn postgres_command(settings: &[(String, String)]) -> Vec<String> {
    let mut cmd = vec![
        "postgres".to_string(),
        "-c".into(),
        "listen_addresses=*".into(),
    ];
    for (k, v) in settings {
        cmd.push("-c".into());
        cmd.push(format!("{k}={v}"));
    }
    cmd
}

/// `POSTGRES_INITDB_ARGS` of the official image's entrypoint: data
/// checksums, and the WAL segment size when not the default.
pub fn initdb_args(wal_segsize_mb: Option<u32>) -> String {
    match wal_segsize_mb {
        Some(mb) => format!("--data-checksums --wal-segsize={mb}"),
        None => "--data-checksums".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_command_passes_settings_without_a_shell() {
        let cmd = postgres_command(&[("archive_command".into(), "a b %p".into())]);
        assert_eq!(
            cmd,
            [
                "postgres",
                "-c",
                "listen_addresses=*",
                "-c",
                "archive_command=a b %p"
            ]
        );
    }
}
