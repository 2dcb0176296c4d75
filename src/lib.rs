//! pgdrill: disaster-recovery drills for PostgreSQL, and the WAL-G-compatible
//! physical backup tool they exercise.
//!
//! - [`backup`]: the backup tool (store, codec, WAL, base backups, catalog,
//!   retention).
//! - [`config`]: WAL-G-style settings from the environment and env dirs.
//! - [`env`]: environments drills run in (the embedded S3 server).
//! - [`cli`]: the command line.

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
