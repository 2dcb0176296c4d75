//! Physical consistency of a restored cluster with `pg_amcheck`.

use std::process::Stdio;

use super::VerifyError;
use crate::env::local::LocalPostgres;

/// `pg_amcheck`'s arguments: heap pages, and every btree index against its
/// heap, in every database. `--install-missing` creates the amcheck
/// extension where it is missing, which a throw-away restored cluster can
/// afford.
pub const AMCHECK_ARGS: &[&str] = &["--all", "--install-missing", "--heapallindexed"];

/// Runs `pg_amcheck` ([`AMCHECK_ARGS`]) against `pg`; Err carries its
/// output when it reports corruption or fails.
pub fn amcheck(pg: &LocalPostgres) -> Result<(), VerifyError> {
    let out = pg
        .client_tool("pg_amcheck")
        .args(AMCHECK_ARGS)
        .stdin(Stdio::null())
        .output()
        .map_err(VerifyError::AmcheckStart)?;
    amcheck_result(
        out.status,
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

/// The verdict on a finished `pg_amcheck` run, wherever it ran.
pub fn amcheck_result(
    status: std::process::ExitStatus,
    stdout: &str,
    stderr: &str,
) -> Result<(), VerifyError> {
    if status.success() {
        return Ok(());
    }
    let output = format!("{}\n{}", stdout.trim(), stderr.trim());
    Err(VerifyError::Amcheck {
        status: status.to_string(),
        output: output.trim().to_string(),
    })
}
