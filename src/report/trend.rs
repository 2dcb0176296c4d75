//! Trends across runs: `pgdrill report trend DIR...` reads the
//! `report.json` of earlier drills (a report directory, or any directory
//! above report directories, e.g. a nightly job's downloaded artifacts)
//! and writes `trend.md` and `trend.html`: per scenario and in time order,
//! pass/fail, RPO, RTO per phase, and backup and restore throughput.
//!
//! Reports are read leniently (only the fields below, each optional where
//! older reports lack it), so reports of every pgdrill version load.
//!
//! Per run:
//! - `rpo_s`: the disaster's RPO;
//! - `rto_s`: the longest RTO of the restores that had to pass (what the
//!   RTO objective judges), and per phase the mean over those restores;
//! - backup MB/s: the stored backups' uncompressed bytes over their
//!   start-to-finish times;
//! - restore MB/s: per restore that had to pass, its backup's uncompressed
//!   bytes over its fetch time, the mean.
//!
//! A **regression** is the newest run of a scenario against the median of
//! up to [`BASELINE_RUNS`] runs before it: failing after a passing
//! baseline; RPO or RTO above the baseline times (1 + threshold) and more
//! than `min_delta_s` above it; a throughput below the baseline divided
//! by (1 + threshold) that cost more than `min_delta_s` (a 50 MB backup
//! taking 0.3 s instead of 0.1 s is noise, not a regression). `--fail-on-regression` makes the command exit 1 if
//! any scenario has one.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::html::{esc, STYLE};

/// Reads one figure of a run, if it has it.
type Figure = fn(&RunPoint) -> Option<f64>;

/// How many earlier runs make the baseline.
pub const BASELINE_RUNS: usize = 10;

/// What a trend needs of a report.json.
#[derive(Debug, Clone, Deserialize)]
struct StoredReport {
    scenario: String,
    #[serde(default)]
    seed: u64,
    started_at: DateTime<Utc>,
    passed: bool,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    postgres_version: String,
    #[serde(default)]
    disaster: Option<StoredDisaster>,
    #[serde(default)]
    restores: Vec<StoredRestore>,
    #[serde(default)]
    backups: Vec<StoredBackup>,
}

#[derive(Debug, Clone, Deserialize)]
struct StoredDisaster {
    rpo_s: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
struct StoredRestore {
    #[serde(default)]
    backup: String,
    expected: super::Expected,
    rto: StoredRto,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct StoredRto {
    scheduling_s: f64,
    fetch_s: f64,
    start_to_consistent_s: f64,
    consistent_to_promoted_s: f64,
    verify_s: f64,
    total_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct StoredBackup {
    backup_name: String,
    start_time: DateTime<Utc>,
    finish_time: DateTime<Utc>,
    uncompressed_size: u64,
}

/// Why the trend could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TrendError {
    /// A directory could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No report.json anywhere under the directories given.
    #[error("no report.json under {dirs}; give report directories or the directories above them (pgdrill run writes them to --report-dir, default reports/)")]
    NoReports { dirs: String },
    /// The output could not be written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One drill's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunPoint {
    pub scenario: String,
    pub started_at: DateTime<Utc>,
    pub seed: u64,
    pub passed: bool,
    pub environment: String,
    pub postgres_version: String,
    pub report: PathBuf,
    pub rpo_s: Option<f64>,
    pub rto_s: Option<f64>,
    /// Mean seconds per RTO phase: scheduling, fetch, to consistent, to
    /// promoted, verify.
    pub rto_phases_s: Option<[f64; 5]>,
    pub backup_mb_per_s: Option<f64>,
    /// Seconds the backups took, in all.
    pub backup_s: Option<f64>,
    pub restore_mb_per_s: Option<f64>,
    /// Mean fetch seconds of the restores in `restore_mb_per_s`.
    pub restore_fetch_s: Option<f64>,
}

/// A figure of the newest run that is worse than its baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regression {
    pub metric: &'static str,
    pub baseline: f64,
    pub latest: f64,
    /// Why it counts, in words.
    pub why: String,
}

/// One scenario over time.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioTrend {
    pub scenario: String,
    /// Oldest first.
    pub runs: Vec<RunPoint>,
    pub regressions: Vec<Regression>,
}

/// When a change counts as a regression.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Allowed relative worsening (0.5: 50% longer, or throughput at
    /// 1/1.5 of the baseline).
    pub relative: f64,
    /// Seconds an RPO or RTO may grow regardless (noise on short drills).
    pub min_delta_s: f64,
}

/// Finds every report.json under `dirs` (recursing, without following
/// links); unreadable or foreign JSON files are skipped with a warning in
/// the returned list.
pub fn load(dirs: &[PathBuf]) -> Result<(Vec<RunPoint>, Vec<String>), TrendError> {
    let mut files = Vec::new();
    for d in dirs {
        collect(d, &mut files, 0)?;
    }
    files.sort();
    files.dedup();
    let mut warnings = Vec::new();
    let mut points = Vec::new();
    for f in files {
        let parsed = std::fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<StoredReport>(&bytes).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(r) => points.push(point(&f, r)),
            Err(e) => warnings.push(format!(
                "skipped {}: not a pgdrill report ({e})",
                f.display()
            )),
        }
    }
    if points.is_empty() {
        return Err(TrendError::NoReports {
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok((points, warnings))
}

/// Report directories nest at most this deep under a directory given.
const MAX_DEPTH: usize = 6;

fn collect(path: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), TrendError> {
    let read = |source| TrendError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(read)? {
        let entry = entry.map_err(read)?;
        let kind = entry.file_type().map_err(read)?;
        let p = entry.path();
        if kind.is_dir() && depth < MAX_DEPTH {
            collect(&p, out, depth + 1)?;
        } else if kind.is_file() && entry.file_name() == "report.json" {
            out.push(p);
        }
    }
    Ok(())
}

fn point(path: &Path, r: StoredReport) -> RunPoint {
    let must_pass: Vec<&StoredRestore> = r
        .restores
        .iter()
        .filter(|x| x.expected == super::Expected::Pass)
        .collect();
    let mean = |f: fn(&StoredRto) -> f64| {
        must_pass.iter().map(|x| f(&x.rto)).sum::<f64>() / must_pass.len() as f64
    };
    let rto_phases_s = (!must_pass.is_empty()).then(|| {
        [
            mean(|r| r.scheduling_s),
            mean(|r| r.fetch_s),
            mean(|r| r.start_to_consistent_s),
            mean(|r| r.consistent_to_promoted_s),
            mean(|r| r.verify_s),
        ]
    });
    let mb = |bytes: u64, secs: f64| (secs > 0.0).then(|| bytes as f64 / 1e6 / secs);
    let backup_secs: f64 = r
        .backups
        .iter()
        .map(|b| (b.finish_time - b.start_time).num_milliseconds() as f64 / 1000.0)
        .sum();
    let restores: Vec<(f64, f64)> = must_pass
        .iter()
        .filter_map(|x| {
            let b = r.backups.iter().find(|b| b.backup_name == x.backup)?;
            Some((mb(b.uncompressed_size, x.rto.fetch_s)?, x.rto.fetch_s))
        })
        .collect();
    let mean_of = |f: fn(&(f64, f64)) -> f64| {
        (!restores.is_empty()).then(|| restores.iter().map(f).sum::<f64>() / restores.len() as f64)
    };
    RunPoint {
        scenario: r.scenario,
        started_at: r.started_at,
        seed: r.seed,
        passed: r.passed,
        environment: r.environment,
        postgres_version: r.postgres_version,
        report: path.to_path_buf(),
        rpo_s: r.disaster.and_then(|d| d.rpo_s),
        rto_s: must_pass.iter().map(|x| x.rto.total_s).reduce(f64::max),
        rto_phases_s,
        backup_mb_per_s: mb(
            r.backups.iter().map(|b| b.uncompressed_size).sum(),
            backup_secs,
        ),
        backup_s: (!r.backups.is_empty()).then_some(backup_secs),
        restore_mb_per_s: mean_of(|r| r.0),
        restore_fetch_s: mean_of(|r| r.1),
    }
}

/// The runs by scenario (in name order), each oldest first, with the
/// newest run's regressions.
pub fn trends(points: Vec<RunPoint>, t: Thresholds) -> Vec<ScenarioTrend> {
    let mut by: BTreeMap<String, Vec<RunPoint>> = BTreeMap::new();
    for p in points {
        by.entry(p.scenario.clone()).or_default().push(p);
    }
    by.into_iter()
        .map(|(scenario, mut runs)| {
            runs.sort_by_key(|r| r.started_at);
            let regressions = regressions(&runs, t);
            ScenarioTrend {
                scenario,
                runs,
                regressions,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The newest run against the median of the runs before it.
fn regressions(runs: &[RunPoint], t: Thresholds) -> Vec<Regression> {
    let Some((latest, earlier)) = runs.split_last() else {
        return Vec::new();
    };
    let base = &earlier[earlier.len().saturating_sub(BASELINE_RUNS)..];
    if base.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let passing = base.iter().filter(|r| r.passed).count();
    if !latest.passed && passing * 2 > base.len() {
        found.push(Regression {
            metric: "passed",
            baseline: passing as f64 / base.len() as f64,
            latest: 0.0,
            why: format!(
                "failed after {passing} of {} earlier runs passed",
                base.len()
            ),
        });
    }
    let seconds: [(&'static str, Figure); 2] = [("rpo_s", |r| r.rpo_s), ("rto_s", |r| r.rto_s)];
    for (metric, get) in seconds {
        let (Some(b), Some(l)) = (median(base.iter().filter_map(get).collect()), get(latest))
        else {
            continue;
        };
        if l > b * (1.0 + t.relative) && l - b > t.min_delta_s {
            found.push(Regression {
                metric,
                baseline: b,
                latest: l,
                why: format!(
                    "{l:.2} s against a baseline of {b:.2} s (more than {:.0}% and {:.1} s longer)",
                    t.relative * 100.0,
                    t.min_delta_s
                ),
            });
        }
    }
    // Each rate with the seconds its newest figure took.
    let rates: [(&'static str, Figure, Figure); 2] = [
        ("backup_mb_per_s", |r| r.backup_mb_per_s, |r| r.backup_s),
        (
            "restore_mb_per_s",
            |r| r.restore_mb_per_s,
            |r| r.restore_fetch_s,
        ),
    ];
    for (metric, get, seconds) in rates {
        let (Some(b), Some(l)) = (median(base.iter().filter_map(get).collect()), get(latest))
        else {
            continue;
        };
        // What the slower rate cost: the newest seconds less what they
        // would have been at the baseline's rate.
        let cost_s = seconds(latest).unwrap_or(0.0) * (1.0 - l / b);
        if l < b / (1.0 + t.relative) && cost_s > t.min_delta_s {
            found.push(Regression {
                metric,
                baseline: b,
                latest: l,
                why: format!(
                    "{l:.1} MB/s against a baseline of {b:.1} MB/s (below 1/{:.2} of it, {cost_s:.1} s lost)",
                    1.0 + t.relative
                ),
            });
        }
    }
    found
}

/// The columns of a scenario's table of runs.
const COLUMNS: [&str; 11] = [
    "started",
    "seed",
    "result",
    "RPO",
    "RTO",
    "fetch",
    "to consistent",
    "to promoted",
    "verify",
    "backup MB/s",
    "restore MB/s",
];

/// A run's cells under [`COLUMNS`] (plain text).
fn row(r: &RunPoint) -> [String; 11] {
    let phase = |i: usize| opt(r.rto_phases_s.map(|p| p[i]), " s");
    [
        r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        r.seed.to_string(),
        if r.passed { "pass" } else { "FAIL" }.to_string(),
        opt(r.rpo_s, " s"),
        opt(r.rto_s, " s"),
        phase(1),
        phase(2),
        phase(3),
        phase(4),
        opt(r.backup_mb_per_s, ""),
        opt(r.restore_mb_per_s, ""),
    ]
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}{unit}"))
}

/// The trends as Markdown.
pub fn to_markdown(trends: &[ScenarioTrend]) -> String {
    let mut md = String::from("# Drill trends\n\n| scenario | runs | passed | newest | regressions |\n|---|---|---|---|---|\n");
    for s in trends {
        let newest = s.runs.last().expect("a scenario has runs");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} {} | {} |",
            s.scenario,
            s.runs.len(),
            s.runs.iter().filter(|r| r.passed).count(),
            newest.started_at.format("%Y-%m-%d %H:%M"),
            if newest.passed { "pass" } else { "**FAIL**" },
            if s.regressions.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "**{}**",
                    s.regressions
                        .iter()
                        .map(|r| format!("{}: {}", r.metric, r.why))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
    }
    for s in trends {
        let _ = write!(
            md,
            "\n## {}\n\n| {} |\n|{}\n",
            s.scenario,
            COLUMNS.join(" | "),
            "---|".repeat(COLUMNS.len())
        );
        for r in &s.runs {
            let _ = writeln!(md, "| {} |", row(r).join(" | "));
        }
    }
    md
}

/// The trends as one self-contained HTML page: per scenario, the RTO
/// phases as a stacked bar per run (a failed run's bar outlined in red),
/// the RPO, and backup and restore throughput, run by run.
pub fn to_html(trends: &[ScenarioTrend]) -> String {
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>pgdrill trends</title><style>{STYLE}</style></head><body>\n<h1>Drill trends</h1>\n"
    );
    let regressed = trends.iter().filter(|s| !s.regressions.is_empty()).count();
    let _ = writeln!(
        h,
        "<div class=\"verdict {}\">{} scenarios, {} with a regression in the newest run</div>",
        if regressed == 0 { "pass" } else { "fail" },
        trends.len(),
        regressed
    );
    for s in trends {
        let _ = writeln!(
            h,
            "<h2 data-scenario=\"{}\">{} ({} run{}, {} passed)</h2>",
            esc(&s.scenario),
            esc(&s.scenario),
            s.runs.len(),
            if s.runs.len() == 1 { "" } else { "s" },
            s.runs.iter().filter(|r| r.passed).count()
        );
        if !s.regressions.is_empty() {
            h.push_str("<ul>");
            for r in &s.regressions {
                let _ = write!(
                    h,
                    "<li class=\"bad\"><b>{}</b>: {}</li>",
                    r.metric,
                    esc(&r.why)
                );
            }
            h.push_str("</ul>\n");
        }
        super::html::phase_legend(&mut h);
        chart(&mut h, s);
        h.push_str("<table><tr>");
        for c in COLUMNS {
            let _ = write!(h, "<th>{c}</th>");
        }
        h.push_str("</tr>");
        for r in s.runs.iter().rev() {
            let cells = row(r);
            let _ = write!(
                h,
                "<tr class=\"{}\" title=\"{}\">",
                if r.passed { "ok" } else { "bad" },
                esc(&r.report.display().to_string())
            );
            for (i, c) in cells.iter().enumerate() {
                let class = match (i, r.passed) {
                    (2, true) => " class=\"ok\"",
                    (2, false) => " class=\"bad\"",
                    _ => "",
                };
                let _ = write!(h, "<td{class}>{}</td>", esc(c));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn chart(h: &mut String, s: &ScenarioTrend) {
    const W: f64 = 960.0;
    const LEFT: f64 = 60.0;
    let n = s.runs.len() as f64;
    let slot = (W - LEFT - 20.0) / n;
    let x = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let (rto_top, rto_h) = (20.0, 120.0);
    let (line_top, line_h) = (170.0, 90.0);
    let height = line_top + line_h + 40.0;
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"trend of {}\">",
        esc(&s.scenario)
    );
    // RTO phases.
    let top = s
        .runs
        .iter()
        .filter_map(|r| r.rto_s)
        .fold(0.0, f64::max)
        .max(0.1);
    let _ = write!(
        h,
        "<text x=\"{LEFT}\" y=\"{}\">RTO per phase, seconds (longest {top:.1})</text><rect x=\"{LEFT}\" y=\"{rto_top}\" width=\"{}\" height=\"{rto_h}\" fill=\"#fafafa\" stroke=\"#ddd\"/>",
        rto_top - 6.0,
        W - LEFT - 20.0
    );
    for (i, r) in s.runs.iter().enumerate() {
        let bw = (slot * 0.6).clamp(1.0, 40.0);
        let mut y = rto_top + rto_h;
        if let Some(phases) = r.rto_phases_s {
            for ((name, colour), v) in super::html::PHASES.iter().zip(phases) {
                let bh = v / top * rto_h;
                y -= bh;
                let _ = write!(
                    h,
                    "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{name}: {v:.1} s</title></rect>",
                    x(i) - bw / 2.0
                );
            }
        }
        if !r.passed {
            let _ = write!(
                h,
                "<rect x=\"{:.1}\" y=\"{rto_top}\" width=\"{bw:.1}\" height=\"{rto_h}\" fill=\"none\" stroke=\"#c62828\" stroke-width=\"2\"><title>failed: seed {}</title></rect>",
                x(i) - bw / 2.0,
                r.seed
            );
        }
    }
    // RPO and throughput, each scaled to its own maximum.
    let lines: [(&str, &str, Figure); 3] = [
        ("RPO s", "#c62828", |r| r.rpo_s),
        ("backup MB/s", "#1e88e5", |r| r.backup_mb_per_s),
        ("restore MB/s", "#43a047", |r| r.restore_mb_per_s),
    ];
    let _ = write!(
        h,
        "<rect x=\"{LEFT}\" y=\"{line_top}\" width=\"{}\" height=\"{line_h}\" fill=\"#fafafa\" stroke=\"#ddd\"/>",
        W - LEFT - 20.0
    );
    let mut legend = LEFT;
    for (name, colour, get) in lines {
        let top = s.runs.iter().filter_map(get).fold(0.0, f64::max);
        let scale = match top > 0.0 {
            true => format!("max {top:.1}"),
            false => "none".to_string(),
        };
        let _ = write!(
            h,
            "<text x=\"{legend}\" y=\"{}\" fill=\"{colour}\">{name} ({scale})</text>",
            line_top - 6.0
        );
        legend += 170.0;
        if top <= 0.0 {
            continue;
        }
        let pts: Vec<String> = s
            .runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let v = get(r)?;
                Some(format!(
                    "{:.1},{:.1}",
                    x(i),
                    line_top + line_h - v / top * line_h
                ))
            })
            .collect();
        let _ = write!(
            h,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            pts.join(" ")
        );
        for p in &pts {
            let (cx, cy) = p.split_once(',').expect("x,y");
            let _ = write!(
                h,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"{colour}\"/>"
            );
        }
    }
    // Run labels: every run when few, else about ten.
    let every = (s.runs.len() / 10).max(1);
    for (i, r) in s.runs.iter().enumerate().filter(|(i, _)| i % every == 0) {
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{}</text>",
            x(i),
            line_top + line_h + 16.0,
            if r.passed { "#222" } else { "#c62828" },
            r.started_at.format("%m-%d %H:%M")
        );
    }
    h.push_str("</svg>\n");
}

/// Writes `trend.md`, `trend.html` and `trend.json` into `out`.
pub fn write(trends: &[ScenarioTrend], out: &Path) -> Result<PathBuf, TrendError> {
    let write = |name: &str, bytes: Vec<u8>| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|source| TrendError::Write { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| TrendError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    write("trend.md", to_markdown(trends).into_bytes())?;
    write("trend.html", to_html(trends).into_bytes())?;
    write(
        "trend.json",
        serde_json::to_vec_pretty(trends).expect("plain data serializes"),
    )?;
    Ok(out.join("trend.html"))
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    const T: Thresholds = Thresholds {
        relative: 0.5,
        min_delta_s: 1.0,
    };

    /// Writes the sample report, started `day` days after it, with every
    /// restore's RTO `rto` and `passed`, under `root`.
    fn stored(root: &Path, day: i64, rto: f64, passed: bool) {
        let mut r = sample::report();
        r.started_at += chrono::Duration::days(day);
        r.passed = passed;
        r.seed = day as u64;
        for x in &mut r.restores {
            x.rto.total_s = rto;
            x.rto.fetch_s = rto / 2.0;
        }
        let dir = root.join(format!("day{day}")).join("quick");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("report.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    }

    #[test]
    fn a_slower_or_failing_newest_run_is_a_regression() {
        let root = tempfile::tempdir().unwrap();
        for day in 0..5 {
            stored(root.path(), day, 4.0 + day as f64 * 0.1, true);
        }
        stored(root.path(), 5, 9.0, false);
        std::fs::write(root.path().join("day0/notes.json"), "{}").unwrap();
        std::fs::write(root.path().join("day1/quick/stray"), "x").unwrap();
        std::fs::create_dir_all(root.path().join("bad")).unwrap();
        std::fs::write(root.path().join("bad/report.json"), "{\"scenario\": 1}").unwrap();
        let (points, warnings) = load(&[root.path().to_path_buf()]).unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("bad/report.json"), "{warnings:?}");
        let t = trends(points, T);
        assert_eq!(t.len(), 1);
        let metrics: Vec<&str> = t[0].regressions.iter().map(|r| r.metric).collect();
        assert_eq!(metrics, ["passed", "rto_s"]);
        assert!((t[0].regressions[1].baseline - 4.2).abs() < 1e-9);
        assert_eq!(t[0].runs[0].rto_phases_s.unwrap()[1], 2.0);
        let md = to_markdown(&t);
        assert!(md.contains("| quick | 6 | 5 |"), "{md}");
        assert!(
            md.contains("**passed: failed after 5 of 5 earlier runs passed; rto_s: 9.00 s"),
            "{md}"
        );
    }

    #[test]
    fn noise_within_the_thresholds_is_not_a_regression() {
        let root = tempfile::tempdir().unwrap();
        stored(root.path(), 0, 1.0, true);
        stored(root.path(), 1, 1.0, true);
        // 90% longer but only 0.9 s: under min_delta_s.
        stored(root.path(), 2, 1.9, true);
        let (points, _) = load(&[root.path().to_path_buf()]).unwrap();
        assert!(trends(points, T)[0].regressions.is_empty());
    }

    #[test]
    fn a_single_run_has_no_baseline_and_an_empty_directory_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = load(&[root.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("no report.json under"), "{err}");
        stored(root.path(), 0, 100.0, false);
        let (points, _) = load(&[root.path().to_path_buf()]).unwrap();
        assert!(trends(points, T)[0].regressions.is_empty());
    }

    #[test]
    fn throughput_drops_count_and_the_page_is_well_formed() {
        let run = |mb: f64| RunPoint {
            scenario: "quick".into(),
            started_at: sample::report().started_at,
            seed: 1,
            passed: true,
            environment: "local".into(),
            postgres_version: "15".into(),
            report: PathBuf::new(),
            rpo_s: Some(0.2),
            rto_s: Some(3.0),
            rto_phases_s: Some([0.0, 1.0, 1.0, 0.5, 0.5]),
            backup_mb_per_s: Some(mb),
            backup_s: Some(600.0 / mb),
            restore_mb_per_s: None,
            restore_fetch_s: None,
        };
        let runs = vec![run(100.0), run(90.0), run(110.0), run(60.0)];
        let found = regressions(&runs, T);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].metric, "backup_mb_per_s");
        assert!(regressions(&runs[..3], T).is_empty());
        // As slow, but on a small database: 0.6 s lost is noise.
        let mut small = runs.clone();
        small[3].backup_s = Some(1.5);
        assert!(regressions(&small, T).is_empty());
        let trend = ScenarioTrend {
            scenario: "quick <&>".into(),
            runs,
            regressions: found,
        };
        let html = to_html(&[trend]);
        let mut reader = quick_xml::Reader::from_str(&html);
        reader.config_mut().check_end_names = true;
        let mut polylines = 0;
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(quick_xml::events::Event::Empty(e)) if e.name().as_ref() == b"polyline" => {
                    polylines += 1
                }
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}\n{html}"),
            }
        }
        assert_eq!(
            polylines, 2,
            "RPO and backup throughput; no restore figures"
        );
        assert!(html.contains("quick &lt;&amp;&gt;"));
    }
}
