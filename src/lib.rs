//! pgdrill: disaster-recovery drills for PostgreSQL, and the WAL-G-compatible
//! physical backup tool they exercise.
//!
//! - [`backup`]: the backup tool (store, codec, WAL, base backups, catalog,
//!   retention).
//! - [`config`]: WAL-G-style settings from the environment and env dirs.
//! - [`scenario`]: drill scenario files, strictly validated.
//! - [`env`]: environments drills run in, behind one trait, and the
//!   embedded S3 server.
//! - [`workload`]: writers and the client-side ledger of every commit.
//! - [`fault`]: deliberate defects that prove drills can fail.
//! - [`drill`]: the runner; [`verify`]: checks of restored clusters;
//!   [`report`]: report.json and report.md.
//! - [`bench`]: backup benchmarks; [`cli`]: the command line.

pub mod backup;
pub mod bench;
pub mod cli;
pub mod config;
pub mod drill;
pub mod env;
pub mod fault;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod verify;
pub mod workload;
