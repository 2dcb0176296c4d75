//! Drill reports: `report.json` (schema below, stable field names; new
//! fields only), `report.md` (a table a person reads in ten seconds),
//! `report.html` (charts; see [`html`]) and `junit.xml` (for CI
//! dashboards; its format is in [`junit`]), written to
//! `reports/<UTC timestamp>-<scenario>/`.
//!
//! `report.json` schema (all times RFC 3339 UTC, durations in seconds):
//! - `pgdrill_version`, `scenario`, `scenario_file`, `description`, `seed`,
//!   `environment`, `engine`, `sabotage` (null unless sabotaged),
//!   `encryption` (none | pgp | libsodium), `storage_format` (pgdrill |
//!   walg), `postgres_version`,
//!   `started_at`, `finished_at`, `passed`, `failures` (one line each).
//! - `conditions`: `timezone` (the server's, in which targets reached the
//!   tool), `start_segment` (the WAL segment the cluster started in, or
//!   `initdb`), `leftover_recovery_settings` (recovery settings left in the
//!   primary's postgresql.conf, as a PITR by hand leaves them),
//!   `restores_in_place` (each restore after the first went into the one
//!   before's data directory with `backup-fetch --force`), each with
//!   `_drawn` (from the seed) or set by the scenario; `seed_commands` (the
//!   tool ran as `envdir DIR wal-g VERB`, as the seed's setup runs it).
//! - `workload`: writers, sent / acked / failed / unknown counts, times.
//! - `steps[]`: `action`, `planned_at_s`, `started_at`, `duration_s`, `ok`,
//!   `detail`.
//! - `backups[]`: the stored backups after the timeline (`backup-list --json`).
//! - `wal_archived`: segments archived by the primary (pg_stat_archiver).
//! - `wal_gaps[]`: WAL segments a `delete_wal` step removed or a
//!   `storage_corruption` step damaged: `segment`, `key`, `damage`
//!   (deleted | corrupted), `from`, `to` (every commit in the segment was
//!   made between these times), `detected` (deleted: `wal-verify integrity`
//!   reported it lost; corrupted: `wal-fetch` refused it as corrupt),
//!   `wal_verify` (what the tool reported).
//! - `disaster`: `kind`, `at`, `last_recovered_commit`, `rpo_s`,
//!   `lost_acked_count`, `lost_acked` (writer, seq pairs).
//! - `restores[]`: `label`, `kind` (latest | pitr), `target`,
//!   `target_as_given` (as the tool got it: local time and offset), `backup`,
//!   `expected` (pass | fail: a restore that needs a deleted WAL segment
//!   must fail), `expected_because`, `passed` (the actual result: restored
//!   and verified), `as_expected`, `error`, `verify` (per-writer expected
//!   vs found, checks, exactness), `failure` (how a restore without a
//!   promoted server ended: `kind` fetch | target_not_reached |
//!   restore_command_aborted | server_stopped | timed_out), `rto`
//!   (`scheduling_s`, `fetch_s`, `start_to_consistent_s`,
//!   `consistent_to_promoted_s`, `verify_s`, `total_s`, `wal_segments_fetched`,
//!   `wal_bytes_fetched`), `storage_fault` (only when the restore ran
//!   into `restores.storage_fault` or `interrupt_fetch`: `injected`, `first_attempt_error`,
//!   set when the first attempt failed loudly and the record is its
//!   retry's).
//! - `objectives[]`: `name` (rpo | rto), `limit_s`, `measured_s`, `passed`.
//! - `series` (for charts; null when the workload did not run): `start`
//!   (the workload's start), `acked_per_second[]` (acknowledged commits in
//!   each second from `start`), `wal_archived[]` (`at`, `count`:
//!   pg_stat_archiver's archived_count on the primary of the time, sampled
//!   every second while it was up; it restarts from 0 on a new primary),
//!   `lost_acked_at[]` (when the first lost acknowledged transactions of
//!   the disaster were acknowledged).
//! - `images[]` (containers only): `role` (postgres | storage),
//!   `reference`, `id` (the engine's image id), `created`; and
//!   `docker_version`, the engine's version.

pub mod html;
pub mod junit;
#[cfg(test)]
mod sample;
pub mod soak;
pub mod trend;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::verify::VerifyOutcome;
use crate::workload::LedgerSummary;

/// One executed step of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub action: String,
    pub planned_at_s: f64,
    pub started_at: DateTime<Utc>,
    pub duration_s: f64,
    pub ok: bool,
    pub detail: String,
}

/// What the disaster cost.
#[derive(Debug, Clone, Serialize)]
pub struct DisasterRecord {
    pub kind: String,
    pub at: DateTime<Utc>,
    pub last_recovered_commit: Option<DateTime<Utc>>,
    pub rpo_s: Option<f64>,
    pub lost_acked_count: usize,
    pub lost_acked: Vec<(u32, u64)>,
}

/// A WAL segment deleted from the archive by a `delete_wal` step, and
/// whether `wal-verify` noticed.
#[derive(Debug, Clone, Serialize)]
pub struct WalGapRecord {
    /// The segment's file name.
    pub segment: String,
    /// The object deleted or damaged.
    pub key: String,
    /// What happened to it.
    pub damage: crate::env::Damage,
    /// Just before the WAL switch that opened the segment: every commit in
    /// it was made between `from` and `to`.
    pub from: DateTime<Utc>,
    /// When it was seen archived, after the switch that closed it.
    pub to: DateTime<Utc>,
    /// Whether `wal-verify integrity` reported it lost (exit 4, FAILURE, a
    /// MISSING_LOST range holding it).
    pub detected: bool,
    /// No listed backup needs it any more (each started after its
    /// commits): retention may have taken it, and the tool need not
    /// report it. Not checked then.
    pub retired: bool,
    /// What `wal-verify` reported about it.
    pub wal_verify: String,
}

impl WalGapRecord {
    /// Whether the tool did what it must about the gap, and what it said.
    pub fn verdict(&self) -> (bool, String) {
        match (self.retired, self.detected) {
            (true, _) => (
                true,
                "not needed any more: every listed backup started after it (retention may take it)"
                    .into(),
            ),
            (false, true) => (true, format!("yes: {}", self.wal_verify)),
            (false, false) => (false, format!("NOT detected: {}", self.wal_verify)),
        }
    }
}

/// How a restore must turn out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// Restored and verified exactly.
    Pass,
    /// Refused by PostgreSQL (a target beyond lost WAL), or missing
    /// acknowledged transactions (the end of an archive with a hole).
    Fail,
}

/// Where a restore's time went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RtoBreakdown {
    /// Until the fetch started (kind: its Job's pod scheduled and
    /// started); 0 elsewhere.
    pub scheduling_s: f64,
    pub fetch_s: f64,
    pub start_to_consistent_s: f64,
    pub consistent_to_promoted_s: f64,
    pub verify_s: f64,
    pub total_s: f64,
    pub wal_segments_fetched: u64,
    pub wal_bytes_fetched: u64,
}

/// Why a restore must fail: the archive it needs was damaged on purpose.
/// Written to report.json as its sentence, e.g. "needs deleted WAL
/// segment 000000010000000000000010".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MustFail {
    NeedsDeletedSegment(String),
    NeedsCorruptedSegment(String),
}

impl std::fmt::Display for MustFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MustFail::NeedsDeletedSegment(s) => write!(f, "needs deleted WAL segment {s}"),
            MustFail::NeedsCorruptedSegment(s) => write!(f, "needs corrupted WAL segment {s}"),
        }
    }
}

impl Serialize for MustFail {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One restore and its verification.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreRecord {
    pub label: String,
    pub kind: String,
    pub target: Option<DateTime<Utc>>,
    /// The target as the tool was given it: in the server's time zone,
    /// with its offset.
    pub target_as_given: Option<String>,
    pub backup: String,
    pub expected: Expected,
    /// Why it must fail.
    pub expected_because: Option<MustFail>,
    /// Restored and verified.
    pub passed: bool,
    /// The result is the expected one (a failure also the expected kind).
    pub as_expected: bool,
    pub error: Option<String>,
    /// How the restore ended when it produced no promoted server (typed:
    /// restores that must fail are judged on this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::env::RestoreFailure>,
    pub verify: Option<VerifyOutcome>,
    pub rto: RtoBreakdown,
    /// The fault it ran into (`restores.storage_fault`, when the restore
    /// reached the fault's phase; or `restores.interrupt_fetch`, when
    /// backup-fetch was killed). Named for the first kind, kept so that
    /// report.json stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_fault: Option<RestoreFaultRecord>,
}

/// A fault a restore ran into: a storage outage, or backup-fetch killed.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreFaultRecord {
    /// What was injected and from when.
    pub injected: String,
    /// How the first attempt failed, loudly, when it did; the restore's
    /// result is then its retry's, made once the storage was back.
    pub first_attempt_error: Option<String>,
}

/// What happened over time during the timeline, for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The workload's start: second 0 of `acked_per_second`.
    pub start: DateTime<Utc>,
    /// Acknowledged commits in each second from `start`.
    pub acked_per_second: Vec<u32>,
    /// The primary's archiver, sampled.
    pub wal_archived: Vec<ArchiveSample>,
    /// When the lost acknowledged transactions of the disaster (the
    /// first ones, as `disaster.lost_acked`) were acknowledged.
    pub lost_acked_at: Vec<DateTime<Utc>>,
}

/// pg_stat_archiver's `archived_count` at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ArchiveSample {
    pub at: DateTime<Utc>,
    pub count: i64,
}

impl DisasterRecord {
    /// The first lost acknowledged transactions (at most 20) as
    /// `w1#2, w2#5`; empty when none was lost.
    fn lost_acked_list(&self) -> String {
        self.lost_acked
            .iter()
            .take(20)
            .map(|(w, s)| format!("w{w}#{s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl RestoreRecord {
    /// How it must turn out, in words: `pass`, or `fail: <why>`.
    fn expected_text(&self) -> String {
        match (self.expected, &self.expected_because) {
            (Expected::Pass, _) => "pass".to_string(),
            (Expected::Fail, because) => format!(
                "fail: {}",
                because
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        }
    }

    /// Its target as tables show it: UTC, and as the tool was given it
    /// when that differs (the server's local time with its offset).
    fn target_text(&self) -> String {
        let Some(t) = self.target else {
            return "end of WAL".into();
        };
        let utc = t.format("%H:%M:%S%.6f").to_string();
        match self
            .target_as_given
            .as_deref()
            .and_then(|given| given.split_once(' '))
            .map(|(_, time)| time)
        {
            Some(given) if given != format!("{utc}+00") => format!("{utc} UTC (given as {given})"),
            _ => format!("{utc} UTC"),
        }
    }

    /// How it fared under its storage fault, when it ran into one.
    fn fault_note(&self) -> Option<String> {
        let fault = self.storage_fault.as_ref()?;
        Some(match &fault.first_attempt_error {
            None => format!("under a fault ({}): finished through it", fault.injected),
            Some(e) => {
                let first: String = e
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(160)
                    .collect();
                format!(
                    "under a fault ({}): the first attempt failed loudly ({first}); this is its retry",
                    fault.injected
                )
            }
        })
    }

    /// Whether its expectation was exact (`yes` or `range`) and the rows
    /// found; `-` for both when it was not verified.
    fn exact_and_found(&self) -> (String, String) {
        match &self.verify {
            Some(v) => (
                if v.exact { "yes" } else { "range" }.to_string(),
                v.per_writer
                    .iter()
                    .map(|w| w.found)
                    .sum::<u64>()
                    .to_string(),
            ),
            None => ("-".into(), "-".into()),
        }
    }
}

/// An objective from the scenario and how the drill did.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectiveResult {
    pub name: String,
    pub limit_s: f64,
    pub measured_s: Option<f64>,
    pub passed: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub pgdrill_version: String,
    pub scenario: String,
    pub scenario_file: String,
    pub description: String,
    pub seed: u64,
    pub environment: String,
    pub engine: String,
    pub sabotage: Option<String>,
    pub encryption: String,
    /// The on-storage format the tool wrote: pgdrill or walg.
    pub storage_format: String,
    pub postgres_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub passed: bool,
    pub failures: Vec<String>,
    pub workload: Option<LedgerSummary>,
    pub steps: Vec<StepRecord>,
    pub backups: Vec<crate::backup::catalog::BackupListRow>,
    pub wal_archived: Option<i64>,
    pub wal_gaps: Vec<WalGapRecord>,
    pub disaster: Option<DisasterRecord>,
    pub restores: Vec<RestoreRecord>,
    pub objectives: Vec<ObjectiveResult>,
    pub series: Option<Series>,
    pub images: Vec<crate::env::ImageRecord>,
    pub docker_version: Option<String>,
    /// The conditions beyond the targets: time zone, WAL start.
    pub conditions: ConditionsRecord,
}

/// The conditions a drill ran under beyond its targets, and whether each
/// was drawn from the seed (else the scenario set it).
#[derive(Debug, Clone, Serialize)]
pub struct ConditionsRecord {
    /// The server's `timezone`, in which targets reached the tool.
    pub timezone: String,
    pub timezone_drawn: bool,
    /// The WAL segment the cluster started in, or `initdb`.
    pub start_segment: String,
    pub start_segment_drawn: bool,
    /// Recovery settings left in the primary's `postgresql.conf` (and a
    /// file it includes), as a point-in-time restore by hand leaves them.
    pub leftover_recovery_settings: bool,
    pub leftover_recovery_settings_drawn: bool,
    /// Each restore after the first went into the one before's data
    /// directory (`backup-fetch --force`).
    pub restores_in_place: bool,
    pub restores_in_place_drawn: bool,
    /// The tool ran as the seed's commands run it (`envdir DIR wal-g VERB`).
    #[serde(default)]
    pub seed_commands: bool,
    /// A chaos drill's drawn timeline and restore fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<String>,
}

impl ConditionsRecord {
    /// One line for the facts tables.
    pub fn summary(&self) -> String {
        let how = |drawn: bool| if drawn { "drawn" } else { "set" };
        format!(
            "time zone {} ({}), WAL from {} ({}), recovery settings left in postgresql.conf: {} ({}), restores in place with --force: {} ({})",
            self.timezone,
            how(self.timezone_drawn),
            self.start_segment,
            how(self.start_segment_drawn),
            yes_no(self.leftover_recovery_settings),
            how(self.leftover_recovery_settings_drawn),
            yes_no(self.restores_in_place),
            how(self.restores_in_place_drawn)
        ) + match self.seed_commands {
            true => ", tool run as the seed writes it (envdir DIR wal-g VERB)",
            false => "",
        } + &self
            .chaos
            .as_ref()
            .map(|c| format!("; chaos drew {c}"))
            .unwrap_or_default()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `text` as XML character data (JUnit, HTML): markup escaped, the
/// characters XML 1.0 does not allow (control characters from a server
/// log) dropped.
fn xml_text(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` as an XML attribute value in double quotes.
fn xml_attr(text: &str) -> String {
    xml_text(text).replace('"', "&quot;").replace('\n', "&#10;")
}

/// Makes text safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A table cell saying `ok_text`, or FAIL with the start of `error` (the
/// Failures section has it whole).
fn result_cell(ok: bool, ok_text: &str, error: &str) -> String {
    if ok {
        cell(ok_text)
    } else {
        let short: String = error.chars().take(160).collect();
        let more = if short.len() < error.len() {
            " ..."
        } else {
            ""
        };
        format!("**FAIL**: {}{more}", cell(&short))
    }
}

/// A restore's actual result for the table: pass, or fail with the start
/// of the error; flagged when it is not the expected one.
fn actual_cell(r: &RestoreRecord) -> String {
    let actual = match r.passed {
        true => "pass".to_string(),
        false => result_cell(false, "", r.error.as_deref().unwrap_or("failed"))
            .replacen("**FAIL**", "fail", 1),
    };
    let actual = match r.fault_note() {
        Some(note) => format!("{actual} ({})", cell(&note)),
        None => actual,
    };
    match r.as_expected {
        true => actual,
        false => format!("**UNEXPECTED** {actual}"),
    }
}

fn secs(v: f64) -> String {
    format!("{v:.1}s")
}

impl DrillReport {
    /// The Markdown summary.
    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "# Drill `{}`: {}\n\n{}\n\n| | |\n|---|---|\n| seed | {} (replay: `pgdrill run {} --seed {}`) |\n| environment | {} |\n| engine | {}{} |\n| encryption | {} |\n| storage format | {} |\n| PostgreSQL | {} |\n| conditions | {} |\n| pgdrill | {} |\n| started | {} |\n| duration | {} |\n",
            self.scenario,
            if self.passed { "PASSED" } else { "FAILED" },
            self.description,
            self.seed,
            self.scenario_file,
            self.seed,
            self.environment,
            self.engine,
            self.sabotage.as_deref().map(|s| format!(" (sabotage: {s})")).unwrap_or_default(),
            self.encryption,
            self.storage_format,
            self.postgres_version,
            self.conditions.summary(),
            self.pgdrill_version,
            self.started_at.to_rfc3339(),
            secs((self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0),
        );
        if let Some(w) = &self.workload {
            md.push_str(&format!(
                "| workload | {} writers, {} sent, {} acknowledged, {} failed, {} unknown |\n",
                w.writers, w.sent, w.acked, w.failed, w.unknown
            ));
        }
        if let Some(n) = self.wal_archived {
            md.push_str(&format!("| WAL archived | {n} segments |\n"));
        }
        if let Some(v) = &self.docker_version {
            md.push_str(&format!("| Docker engine | {v} |\n"));
        }
        for i in &self.images {
            md.push_str(&format!(
                "| {} image | {} ({}, created {}) |\n",
                i.role, i.reference, i.id, i.created
            ));
        }
        if !self.failures.is_empty() {
            md.push_str("\n## Failures\n\n");
            for f in &self.failures {
                md.push_str(&format!("- {}\n", cell(f)));
            }
        }
        if let Some(d) = &self.disaster {
            md.push_str(&format!(
                "\n## Disaster: {} at {}\n\nRPO {} (last recovered commit {}), {} acknowledged transactions lost{}\n",
                d.kind,
                d.at.to_rfc3339(),
                d.rpo_s.map(secs).unwrap_or_else(|| "unknown".into()),
                d.last_recovered_commit.map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into()),
                d.lost_acked_count,
                if d.lost_acked.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.lost_acked_list())
                }
            ));
        }
        if !self.wal_gaps.is_empty() {
            md.push_str("\n## WAL gaps\n\n| segment | damage | its commits from | to | detected by the tool |\n|---|---|---|---|---|\n");
            for g in &self.wal_gaps {
                let (ok, said) = g.verdict();
                md.push_str(&format!(
                    "| {} | {:?} | {} | {} | {} |\n",
                    g.segment,
                    g.damage,
                    g.from.format("%H:%M:%S%.6f"),
                    g.to.format("%H:%M:%S%.6f"),
                    result_cell(ok, &said, &said),
                ));
            }
        }
        md.push_str("\n## Restores\n\n| restore | target | backup | expected | actual | exact | rows found | RTO | fetch | to consistent | to promoted | verify | WAL segments |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.restores {
            let (exact, found) = r.exact_and_found();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.label,
                r.target_text(),
                r.backup,
                cell(&r.expected_text()),
                actual_cell(r),
                exact,
                found,
                secs(r.rto.total_s),
                secs(r.rto.fetch_s),
                secs(r.rto.start_to_consistent_s),
                secs(r.rto.consistent_to_promoted_s),
                secs(r.rto.verify_s),
                r.rto.wal_segments_fetched,
            ));
        }
        md.push_str(&checks_table(&self.restores));
        if !self.objectives.is_empty() {
            md.push_str(
                "\n## Objectives\n\n| objective | limit | measured | result |\n|---|---|---|---|\n",
            );
            for o in &self.objectives {
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    o.name,
                    secs(o.limit_s),
                    o.measured_s
                        .map(secs)
                        .unwrap_or_else(|| "not measured".into()),
                    if o.passed { "pass" } else { "**FAIL**" }
                ));
            }
        }
        md.push_str("\n## Timeline\n\n| at | action | took | result |\n|---|---|---|---|\n");
        for s in &self.steps {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                secs(s.planned_at_s),
                s.action,
                secs(s.duration_s),
                result_cell(s.ok, &s.detail, &s.detail),
            ));
        }
        md
    }

    /// Writes `report.json`, `report.md`, `report.html` and `junit.xml`
    /// into `dir`; returns the first two.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("report.json");
        let md = dir.join("report.md");
        std::fs::write(
            &json,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(&md, self.to_markdown())?;
        std::fs::write(dir.join("report.html"), html::to_html(self))?;
        std::fs::write(dir.join("junit.xml"), junit::to_junit(&[self]))?;
        Ok((json, md))
    }
}

/// The verified restores (label, outcome) and the names of their checks,
/// in first-seen order.
fn verified_checks(
    restores: &[RestoreRecord],
) -> (Vec<(&str, &VerifyOutcome)>, Vec<crate::verify::CheckName>) {
    let verified: Vec<(&str, &VerifyOutcome)> = restores
        .iter()
        .filter_map(|r| Some((r.label.as_str(), r.verify.as_ref()?)))
        .collect();
    let mut names = Vec::new();
    for (_, v) in &verified {
        for c in &v.checks {
            if !names.contains(&c.name) {
                names.push(c.name);
            }
        }
    }
    (verified, names)
}

/// The checks of every verified restore by name: one row per check, one
/// column per restore ("pass", "**FAIL**", or "-" where it did not run);
/// empty when no restore was verified.
fn checks_table(restores: &[RestoreRecord]) -> String {
    let (verified, names) = verified_checks(restores);
    if names.is_empty() {
        return String::new();
    }
    let labels: Vec<&str> = verified.iter().map(|(l, _)| *l).collect();
    let mut md = format!(
        "\n## Checks\n\n| check | {} |\n|---|{}\n",
        labels.join(" | "),
        "---|".repeat(labels.len())
    );
    for name in names {
        let cells: Vec<&str> = verified
            .iter()
            .map(|(_, v)| match v.check(name) {
                Some(c) if c.passed => "pass",
                Some(_) => "**FAIL**",
                None => "-",
            })
            .collect();
        md.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Check, CheckName};

    fn restore(label: &str, checks: Vec<Check>) -> RestoreRecord {
        RestoreRecord {
            label: label.into(),
            kind: "pitr".into(),
            target: None,
            target_as_given: None,
            backup: "base_1".into(),
            expected: Expected::Pass,
            expected_because: None,
            passed: true,
            as_expected: true,
            error: None,
            failure: None,
            verify: Some(VerifyOutcome {
                passed: checks.iter().all(|c| c.passed),
                target: None,
                exact: true,
                rows: 0,
                checks,
                per_writer: Vec::new(),
                lost_acked: Vec::new(),
                lost_acked_count: 0,
                content_hash: String::new(),
                last_commit_time: None,
                cost_s: Default::default(),
            }),
            rto: RtoBreakdown::default(),
            storage_fault: None,
        }
    }

    fn check(name: CheckName, passed: bool) -> Check {
        Check {
            name,
            passed,
            detail: String::new(),
        }
    }

    #[test]
    fn a_restore_under_a_storage_fault_says_how_it_fared() {
        let md = super::sample::report().to_markdown();
        let row = md
            .lines()
            .find(|l| l.starts_with("| latest |"))
            .expect("the latest restore's row");
        assert!(
            row.contains("pass (under a fault (storage answering every request 503 for 8s, as the restored server became consistent): the first attempt failed loudly (restore_command exited with code 200, which aborts recovery); this is its retry)"),
            "{row}"
        );
        let html = super::html::to_html(&super::sample::report());
        assert!(html.contains("the first attempt failed loudly"), "{html}");
    }

    #[test]
    fn why_a_restore_must_fail_is_written_as_its_sentence() {
        let because = MustFail::NeedsCorruptedSegment("000000010000000000000010".into());
        assert_eq!(
            serde_json::to_string(&because).unwrap(),
            r#""needs corrupted WAL segment 000000010000000000000010""#
        );
    }

    #[test]
    fn the_checks_table_names_every_check_of_every_restore() {
        let table = checks_table(&[
            restore(
                "latest",
                vec![
                    check(CheckName::RowCount, true),
                    check(CheckName::Checksums, true),
                ],
            ),
            restore(
                "pitr-1",
                vec![
                    check(CheckName::RowCount, true),
                    check(CheckName::Visibility, false),
                ],
            ),
        ]);
        assert_eq!(
            table,
            "\n## Checks\n\n| check | latest | pitr-1 |\n|---|---|---|\n\
             | row_count | pass | pass |\n\
             | checksums | pass | - |\n\
             | visibility | - | **FAIL** |\n"
        );
        assert_eq!(checks_table(&[]), "");
    }
}
