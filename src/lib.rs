//! pgdrill: disaster-recovery drills for PostgreSQL, and the WAL-G-compatible
//! physical backup tool they exercise.
//!
//! - [`backup`]: the backup tool (WAL-G-style settings, store, codec, WAL,
//!   base backups, catalog, retention, and its deliberate defects for
//!   test builds). A leaf: it uses no other module of the crate.
//! - [`scenario`]: drill scenario files, strictly validated.
//! - [`env`]: environments drills run in, behind one trait, and the
//!   embedded S3 server.
//! - [`workload`]: writers and the client-side ledger of every commit.
//! - [`drill`]: the runner; [`verify`]: checks of restored clusters;
//!   [`report`]: report.json and report.md.
//! - [`bench`]: backup benchmarks; [`cli`]: the command line.

pub mod backup;
pub mod bench;
pub mod cli;
pub mod drill;
pub mod env;
pub mod report;
pub mod scenario;
pub mod verify;
pub mod workload;
