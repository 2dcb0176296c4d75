//! Physical consistency of a restored cluster with `pg_amcheck`.

use std::process::Stdio;

use super::VerifyError;
use crate::env::local::LocalPostgres;

/// Runs `pg_amcheck --all --install-missing --heapallindexed` against `pg`
/// (heap pages, and every btree index against its heap, in every
/// database); Err carries its output when it reports corruption or fails.
/// `--install-missing` creates the amcheck extension where it is missing,
/// which a throw-away restored cluster can afford.
pub fn amcheck(pg: &LocalPostgres) -> Result<(), VerifyError> {
    let out = pg
        .client_tool("pg_amcheck")
        .args(["--all", "--install-missing", "--heapallindexed"])
        .stdin(Stdio::null())
        .output()
        .map_err(VerifyError::AmcheckStart)?;
    if out.status.success() {
        return Ok(());
    }
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Err(VerifyError::Amcheck {
        status: out.status.to_string(),
        output: output.trim().to_string(),
    })
}
