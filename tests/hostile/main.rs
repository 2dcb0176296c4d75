//! Hostile storage: every reader of bytes that come from a bucket (or from
//! an operator's env directory) is fed random bytes and mutations of valid
//! inputs. Properties, per case:
//! - no panic; a failure is a typed error, and where the reader knows the
//!   object it names it;
//! - nothing is written outside the restore's target directory;
//! - no single allocation above [`alloc::LIMIT`] however large a length
//!   field in the input (a counting global allocator watches this test
//!   binary, whose tests run one at a time);
//! - each case ends within [`CASE_TIME`] (a watchdog aborts the binary,
//!   naming the reader and case, if one hangs).
//!
//! `cargo test --test hostile` runs [`DEFAULT_CASES`] cases per reader;
//! the scheduled job runs many more:
//! `PGDRILL_FUZZ_CASES=100000 cargo test --release --test hostile -- --nocapture`.
//! Cases are deterministic (seeded by the reader's name and
//! `PGDRILL_FUZZ_SEED`); a failing case is written to
//! `target/hostile-failures/<reader>-<case>.bin` and regressions found this
//! way live in `fixtures/hostile/`, each replayed by [`fixtures_replay`].

mod alloc;
mod fuzz;
mod readers;
mod walg;

/// Cases per reader unless `PGDRILL_FUZZ_CASES` says otherwise.
pub const DEFAULT_CASES: usize = 2000;

/// Longest a single case may take before it counts as a hang.
pub const CASE_TIME: std::time::Duration = std::time::Duration::from_secs(30);
