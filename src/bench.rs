//! `pgdrill bench backup`: backup and restore speed measured side by side
//! with `pg_basebackup` on one freshly loaded cluster.

/// Arguments of `pgdrill bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure (only `backup` for now).
    #[arg(default_value = "backup")]
    pub what: String,
    /// pgbench scale of the loaded cluster (100 is about 1.5 GB).
    #[arg(long, default_value_t = 100)]
    pub scale: u32,
    /// Where figures go (`<dir>/bench/backup-<date>.json` and `.md`).
    #[arg(long, default_value = "reports")]
    pub report_dir: std::path::PathBuf,
}

/// Runs the benchmark; returns the exit code.
pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("bench {} is not implemented yet", args.what)
}
