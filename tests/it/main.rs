//! The integration tests, in one binary so that the whole dependency tree
//! is linked once (twelve binaries took minutes on 2 cores). Each module
//! is one area, against real PostgreSQL servers and the embedded S3
//! server; the scenario trials stay in their own binary
//! (`tests/scenarios.rs`, libtest-mimic).

mod common;

mod backup_e2e;
mod backup_faults;
mod concurrency;
mod delta;
mod encryption;
mod report_cli;
mod retention;
mod sabotage;
mod scenario_validation;
mod timelines;
mod verify_verbs;
mod wal_prefetch;
mod walg;
mod workload_verify;
mod zones;
