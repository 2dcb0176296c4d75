//! `report.html`: one drill as a page a person reads at a glance. One
//! self-contained file (inline CSS and SVG; no scripts, no fonts, nothing
//! fetched), well-formed XML so that tools can parse it too.
//!
//! Sections: the verdict and the facts (seed with its replay command,
//! environment, versions); the failures; a timeline chart on one time
//! axis (seconds from the workload's start): acknowledged commits per
//! second, WAL segments archived, every step as a bar (faults in orange,
//! failed steps in red), the disaster, the RPO window with the lost
//! acknowledged commits, damaged WAL segments, and every restore target;
//! an RTO bar per restore split into its phases; then the restores, the
//! checks per restore, the objectives and the steps as tables. Every
//! restore's row carries `data-restore="<label>"`.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::{DrillReport, Expected, RestoreRecord};

/// Steps that break something, drawn as faults.
const FAULTS: &[&str] = &[
    "delete",
    "delete_wal",
    "pitr_failover",
    "disaster",
    "storage_outage",
    "storage_corruption",
    "network_latency",
];

/// Chart width and the plot's left and right edges.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = WIDTH - 20.0;

pub(super) const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}\
h1{margin:0 0 4px}h2{margin-top:28px;border-bottom:1px solid #ccc}\
.verdict{padding:12px 16px;border-radius:6px;color:#fff}.pass{background:#2e7d32}.fail{background:#c62828}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.ok{color:#2e7d32}td.bad{color:#c62828;font-weight:bold}\
code{background:#f3f3f3;padding:1px 3px}pre{white-space:pre-wrap;word-break:break-word;font-size:12px;max-height:400px;overflow:auto}summary{cursor:pointer}svg{display:block}svg text{font-size:11px;font-family:sans-serif}\
.legend span{display:inline-block;margin-right:14px;font-size:12px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}";

/// The RTO phases: name and colour.
pub(super) const PHASES: [(&str, &str); 5] = [
    ("scheduling", "#9e9e9e"),
    ("fetch", "#1e88e5"),
    ("to consistent", "#fb8c00"),
    ("to promoted", "#8e24aa"),
    ("verify", "#43a047"),
];

/// Text for the page, in content or an attribute.
pub(super) fn esc(text: &str) -> String {
    super::xml_attr(text)
}

fn secs(v: f64) -> String {
    format!("{v:.1} s")
}

/// The report as one HTML page.
pub fn to_html(r: &DrillReport) -> String {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>pgdrill {} {verdict}</title><style>{STYLE}</style></head><body>\n",
        esc(&r.scenario)
    );
    let _ = writeln!(
        h,
        "<div class=\"verdict {}\"><h1>Drill {}: {verdict}</h1><div>{}</div></div>",
        if r.passed { "pass" } else { "fail" },
        esc(&r.scenario),
        esc(&r.description)
    );
    facts(&mut h, r);
    if !r.failures.is_empty() {
        h.push_str("<h2>Failures</h2><ul>");
        for f in &r.failures {
            let _ = write!(h, "<li>{}</li>", long_text(f));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<h2>Timeline</h2>\n");
    match Timeline::of(r) {
        Some(t) => t.svg(&mut h, r),
        None => h.push_str("<p>No workload ran: nothing to chart.</p>\n"),
    }
    if let Some(d) = &r.disaster {
        let _ = writeln!(
            h,
            "<h2>Disaster</h2><p>{} at {}: RPO <b>{}</b> (last recovered commit {}), <b>{}</b> acknowledged transactions lost{}.</p>",
            esc(&d.kind),
            d.at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            d.rpo_s.map(secs).unwrap_or_else(|| "unknown".into()),
            d.last_recovered_commit
                .map(|t| t.format("%H:%M:%S%.3f").to_string())
                .unwrap_or_else(|| "none".into()),
            d.lost_acked_count,
            if d.lost_acked.is_empty() {
                String::new()
            } else {
                format!(" (first: {})", d.lost_acked_list())
            }
        );
    }
    if !r.restores.is_empty() {
        h.push_str("<h2>Recovery time per restore</h2>\n");
        rto_chart(&mut h, &r.restores);
    }
    restores_table(&mut h, r);
    checks_table(&mut h, &r.restores);
    if !r.objectives.is_empty() {
        h.push_str("<h2>Objectives</h2><table><tr><th>objective</th><th>limit</th><th>measured</th><th>result</th></tr>");
        for o in &r.objectives {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
                esc(&o.name),
                secs(o.limit_s),
                o.measured_s
                    .map(secs)
                    .unwrap_or_else(|| "not measured".into()),
                verdict_cell(o.passed, "pass", "FAIL")
            );
        }
        h.push_str("</table>\n");
    }
    if !r.wal_gaps.is_empty() {
        h.push_str("<h2>Damaged WAL</h2><table><tr><th>segment</th><th>damage</th><th>its commits from</th><th>to</th><th>detected by the tool</th></tr>");
        for g in &r.wal_gaps {
            let (ok, said) = g.verdict();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td>{}</tr>",
                esc(&g.segment),
                g.damage,
                g.from.format("%H:%M:%S%.3f"),
                g.to.format("%H:%M:%S%.3f"),
                verdict_cell(ok, &said, &said)
            );
        }
        h.push_str("</table>\n");
    }
    if !r.steps.is_empty() {
        h.push_str(
            "<h2>Steps</h2><table><tr><th>at</th><th>action</th><th>took</th><th>result</th></tr>",
        );
        for s in &r.steps {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
                secs(s.planned_at_s),
                esc(&s.action),
                secs(s.duration_s),
                verdict_cell(s.ok, &s.detail, &s.detail)
            );
        }
        h.push_str("</table>\n");
    }
    let _ = writeln!(
        h,
        "<p><small>pgdrill {}, report written {}</small></p>\n</body></html>",
        esc(&r.pgdrill_version),
        r.finished_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    h
}

fn verdict_cell(ok: bool, ok_text: &str, bad_text: &str) -> String {
    match ok {
        true => format!("<td class=\"ok\">{}</td>", long_text(ok_text)),
        false => format!("<td class=\"bad\">{}</td>", long_text(bad_text)),
    }
}

/// Characters of a long text (an error with a server log) shown before
/// the reader opens it.
const SHOWN: usize = 100;

/// `text`, escaped; a long one folded: its start, the rest on a click.
fn long_text(text: &str) -> String {
    if text.chars().count() <= SHOWN {
        return esc(text);
    }
    let start: String = text.chars().take(SHOWN).collect();
    format!(
        "<details><summary>{} ...</summary><pre>{}</pre></details>",
        esc(&start),
        esc(text)
    )
}

fn facts(h: &mut String, r: &DrillReport) {
    let mut rows = vec![
        (
            "seed",
            format!(
                "{} (replay: <code>pgdrill run {} --seed {}</code>)",
                r.seed,
                esc(&r.scenario_file),
                r.seed
            ),
        ),
        ("environment", esc(&r.environment)),
        (
            "engine",
            esc(&format!(
                "{}{}",
                r.engine,
                r.sabotage
                    .as_deref()
                    .map(|s| format!(" (sabotage: {s})"))
                    .unwrap_or_default()
            )),
        ),
        ("encryption", esc(&r.encryption)),
        ("storage format", esc(&r.storage_format)),
        ("PostgreSQL", esc(&r.postgres_version)),
        ("conditions", esc(&r.conditions.summary())),
        ("pgdrill", esc(&r.pgdrill_version)),
        (
            "started",
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        ),
        (
            "duration",
            secs((r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0),
        ),
    ];
    if let Some(w) = &r.workload {
        rows.push((
            "workload",
            format!(
                "{} writers, {} sent, {} acknowledged, {} failed, {} unknown",
                w.writers, w.sent, w.acked, w.failed, w.unknown
            ),
        ));
    }
    if let Some(n) = r.wal_archived {
        rows.push(("WAL archived", format!("{n} segments")));
    }
    h.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    h.push_str("</table>\n");
}

/// A colour per restore outcome: as expected or not.
fn restore_colour(r: &RestoreRecord) -> &'static str {
    if r.as_expected {
        "#2e7d32"
    } else {
        "#c62828"
    }
}

/// The timeline chart's time axis and data.
struct Timeline {
    start: DateTime<Utc>,
    /// Seconds shown.
    span: f64,
}

impl Timeline {
    fn of(r: &DrillReport) -> Option<Timeline> {
        let series = r.series.as_ref()?;
        let start = series.start;
        let at = |t: DateTime<Utc>| (t - start).num_milliseconds() as f64 / 1000.0;
        let mut span = series.acked_per_second.len() as f64;
        let mut see = |s: f64| span = span.max(s);
        for s in &r.steps {
            see(at(s.started_at) + s.duration_s);
        }
        for a in &series.wal_archived {
            see(at(a.at));
        }
        for x in r.restores.iter().filter_map(|x| x.target) {
            see(at(x));
        }
        if let Some(d) = &r.disaster {
            see(at(d.at));
        }
        for g in &r.wal_gaps {
            see(at(g.to));
        }
        Some(Timeline {
            start,
            span: span.max(1.0),
        })
    }

    fn secs_of(&self, t: DateTime<Utc>) -> f64 {
        (t - self.start).num_milliseconds() as f64 / 1000.0
    }

    fn x(&self, s: f64) -> f64 {
        LEFT + (s.clamp(0.0, self.span) / self.span) * (RIGHT - LEFT)
    }

    fn x_at(&self, t: DateTime<Utc>) -> f64 {
        self.x(self.secs_of(t))
    }

    fn svg(&self, h: &mut String, r: &DrillReport) {
        let series = r.series.as_ref().expect("a timeline has series");
        // Bands, top to bottom.
        let (commits_top, commits_h) = (34.0, 110.0);
        let (wal_top, wal_h) = (164.0, 80.0);
        let steps_top = 262.0;
        let axis_y = 318.0;
        let height = axis_y + 34.0;
        let _ = writeln!(
            h,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"drill timeline\">"
        );
        // Commits per second.
        let peak = series
            .acked_per_second
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1);
        let _ = write!(
            h,
            "<text x=\"{LEFT}\" y=\"{}\">acknowledged commits per second (peak {peak})</text>",
            commits_top - 4.0
        );
        self.frame(h, commits_top, commits_h, &format!("{peak}"));
        let bar = (self.x(1.0) - self.x(0.0)).max(1.0);
        for (i, n) in series.acked_per_second.iter().enumerate() {
            let bh = f64::from(*n) / f64::from(peak) * commits_h;
            let _ = write!(
                h,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#90caf9\"><title>{i}-{} s: {n} commits</title></rect>",
                self.x(i as f64),
                commits_top + commits_h - bh,
                (bar - 0.5).max(0.5),
                i + 1
            );
        }
        // The RPO window and the lost acknowledged commits.
        if let Some(d) = &r.disaster {
            if let Some(last) = d.last_recovered_commit {
                let (x0, x1) = (self.x_at(last), self.x_at(d.at));
                let _ = write!(
                    h,
                    "<rect x=\"{x0:.1}\" y=\"{commits_top}\" width=\"{:.1}\" height=\"{}\" fill=\"#ef5350\" fill-opacity=\"0.25\"><title>RPO {}: commits after the last recovered one are lost</title></rect>",
                    (x1 - x0).max(1.0),
                    wal_top + wal_h - commits_top,
                    d.rpo_s.map(secs).unwrap_or_default()
                );
                let _ = write!(
                    h,
                    "<text x=\"{:.1}\" y=\"{}\" fill=\"#c62828\" text-anchor=\"end\">RPO {} · {} acknowledged lost</text>",
                    x1 - 3.0,
                    commits_top - 4.0,
                    d.rpo_s.map(secs).unwrap_or_else(|| "?".into()),
                    d.lost_acked_count
                );
            }
            for t in &series.lost_acked_at {
                let x = self.x_at(*t);
                let _ = write!(
                    h,
                    "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#c62828\" stroke-width=\"1.5\"><title>lost acknowledged commit at {}</title></line>",
                    commits_top + commits_h - 14.0,
                    commits_top + commits_h,
                    t.format("%H:%M:%S%.3f")
                );
            }
        }
        // WAL archived: the archiver's count restarts on a new primary;
        // the chart adds up what each primary archived.
        let mut total = 0i64;
        let mut prev = 0i64;
        let points: Vec<(f64, i64)> = series
            .wal_archived
            .iter()
            .map(|a| {
                total += if a.count >= prev {
                    a.count - prev
                } else {
                    a.count
                };
                prev = a.count;
                (self.secs_of(a.at), total)
            })
            .collect();
        let top = points.last().map_or(0, |p| p.1).max(1);
        let _ = write!(
            h,
            "<text x=\"{LEFT}\" y=\"{}\">WAL segments archived ({top} by the last sample)</text>",
            wal_top - 4.0
        );
        self.frame(h, wal_top, wal_h, &format!("{top}"));
        if !points.is_empty() {
            let y = |n: i64| wal_top + wal_h - n as f64 / top as f64 * wal_h;
            let mut path = format!("M{:.1},{:.1}", self.x(points[0].0), y(points[0].1));
            for w in points.windows(2) {
                let _ = write!(path, " H{:.1} V{:.1}", self.x(w[1].0), y(w[1].1));
            }
            let _ = write!(
                h,
                "<path d=\"{path}\" fill=\"none\" stroke=\"#3949ab\" stroke-width=\"2\"/>"
            );
        }
        for g in &r.wal_gaps {
            let (x0, x1) = (self.x_at(g.from), self.x_at(g.to));
            let _ = write!(
                h,
                "<rect x=\"{x0:.1}\" y=\"{wal_top}\" width=\"{:.1}\" height=\"{wal_h}\" fill=\"#fb8c00\" fill-opacity=\"0.35\"><title>{:?} segment {}</title></rect><text x=\"{x0:.1}\" y=\"{}\" fill=\"#e65100\">{:?} {}</text>",
                (x1 - x0).max(2.0),
                g.damage,
                esc(&g.segment),
                wal_top + wal_h - 4.0,
                g.damage,
                esc(&g.segment)
            );
        }
        // Steps: a bar each, labels on two alternating rows.
        let _ = write!(
            h,
            "<text x=\"{LEFT}\" y=\"{}\">steps (orange: faults; red: failed)</text>",
            steps_top - 4.0
        );
        for (i, s) in r.steps.iter().enumerate() {
            let x0 = self.x_at(s.started_at);
            let x1 = self.x(self.secs_of(s.started_at) + s.duration_s);
            let fill = match (s.ok, FAULTS.contains(&s.action.as_str())) {
                (false, _) => "#c62828",
                (true, true) => "#fb8c00",
                (true, false) => "#5c6bc0",
            };
            let row = (i % 2) as f64 * 14.0;
            let _ = write!(
                h,
                "<rect x=\"{x0:.1}\" y=\"{steps_top}\" width=\"{:.1}\" height=\"14\" fill=\"{fill}\"><title>{} at {:.1} s, took {:.1} s: {}</title></rect><text x=\"{x0:.1}\" y=\"{}\">{}</text>",
                (x1 - x0).max(3.0),
                esc(&s.action),
                s.planned_at_s,
                s.duration_s,
                esc(&s.detail),
                steps_top + 27.0 + row,
                esc(&s.action)
            );
        }
        // The disaster and the restore targets, across every band.
        if let Some(d) = &r.disaster {
            let x = self.x_at(d.at);
            let _ = write!(
                h,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{axis_y}\" stroke=\"#b71c1c\" stroke-width=\"2.5\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#b71c1c\" font-weight=\"bold\" text-anchor=\"end\">disaster: {}</text>",
                commits_top - 16.0,
                x - 4.0,
                commits_top - 18.0,
                esc(&d.kind)
            );
        }
        for (i, x) in r.restores.iter().enumerate() {
            let Some(target) = x.target else { continue };
            let px = self.x_at(target);
            let colour = restore_colour(x);
            let _ = write!(
                h,
                "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{}\" y2=\"{axis_y}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"><title>restore {} to {}</title></line><text x=\"{:.1}\" y=\"{}\" fill=\"{colour}\" text-anchor=\"middle\">{}</text>",
                commits_top - 14.0,
                esc(&x.label),
                target.to_rfc3339(),
                px,
                8.0 + (i % 2) as f64 * 10.0,
                esc(&x.label)
            );
        }
        // The time axis.
        let _ = write!(
            h,
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"#555\"/>"
        );
        let step = tick_step(self.span);
        let mut s = 0.0;
        while s <= self.span + 1e-9 {
            let x = self.x(s);
            let _ = write!(
                h,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{axis_y}\" y2=\"{}\" stroke=\"#555\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{s}</text>",
                axis_y + 4.0,
                axis_y + 16.0
            );
            s += step;
        }
        let _ = write!(
            h,
            "<text x=\"{RIGHT}\" y=\"{}\" text-anchor=\"end\">seconds from the workload's start ({})</text>",
            axis_y + 30.0,
            self.start.format("%Y-%m-%d %H:%M:%S UTC")
        );
        h.push_str("</svg>\n");
    }

    /// A band's frame and its top value.
    fn frame(&self, h: &mut String, top: f64, height: f64, max_label: &str) {
        let _ = write!(
            h,
            "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{}\" height=\"{height}\" fill=\"#fafafa\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max_label}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
            RIGHT - LEFT,
            LEFT - 4.0,
            top + 10.0,
            LEFT - 4.0,
            top + height
        );
    }
}

/// A tick spacing giving at most about ten ticks over `span` seconds.
fn tick_step(span: f64) -> f64 {
    [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| span / s <= 10.0)
    .unwrap_or(7200.0)
}

/// The colours of the RTO phases.
pub(super) fn phase_legend(h: &mut String) {
    h.push_str("<div class=\"legend\">");
    for (name, colour) in PHASES {
        let _ = write!(
            h,
            "<span><i style=\"background:{colour}\"></i>{name}</span>"
        );
    }
    h.push_str("</div>\n");
}

/// A stacked bar per restore: its RTO split into phases.
fn rto_chart(h: &mut String, restores: &[RestoreRecord]) {
    let longest = restores
        .iter()
        .map(|x| x.rto.total_s)
        .fold(0.0, f64::max)
        .max(0.1);
    let (label_w, row_h) = (150.0, 22.0);
    let plot = RIGHT - label_w - 60.0;
    let height = restores.len() as f64 * row_h + 10.0;
    phase_legend(h);
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"recovery time per restore\">"
    );
    for (i, x) in restores.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let rto = &x.rto;
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"{}\">{}{}</text>",
            label_w - 6.0,
            y + 13.0,
            restore_colour(x),
            esc(&x.label),
            if x.passed { "" } else { " (failed)" }
        );
        let mut at = label_w;
        let phases = [
            rto.scheduling_s,
            rto.fetch_s,
            rto.start_to_consistent_s,
            rto.consistent_to_promoted_s,
            rto.verify_s,
        ];
        for ((name, colour), s) in PHASES.iter().zip(phases) {
            let w = s / longest * plot;
            if w > 0.0 {
                let _ = write!(
                    h,
                    "<rect x=\"{at:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"{colour}\"><title>{name}: {}</title></rect>",
                    secs(s)
                );
                at += w;
            }
        }
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{}\">{}</text>",
            at + 4.0,
            y + 13.0,
            secs(rto.total_s)
        );
    }
    h.push_str("</svg>\n");
}

fn restores_table(h: &mut String, r: &DrillReport) {
    if r.restores.is_empty() {
        h.push_str("<h2>Restores</h2><p>No restore ran.</p>\n");
        return;
    }
    h.push_str("<h2>Restores</h2><table><tr><th>restore</th><th>target</th><th>backup</th><th>expected</th><th>actual</th><th>exact</th><th>rows found</th><th>RTO</th><th>WAL segments</th></tr>");
    for x in &r.restores {
        let actual = match (x.passed, &x.error) {
            (true, _) => "pass".to_string(),
            (false, e) => format!("fail: {}", e.as_deref().unwrap_or("failed")),
        };
        let actual = match x.fault_note() {
            Some(note) => format!("{actual} ({note})"),
            None => actual,
        };
        let actual = match x.as_expected {
            true => actual,
            false => format!("UNEXPECTED {actual}"),
        };
        let (exact, found) = x.exact_and_found();
        let _ = write!(
            h,
            "<tr data-restore=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}<td>{exact}</td><td>{found}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.label),
            esc(&x.label),
            x.target_text(),
            esc(&x.backup),
            esc(&x.expected_text()),
            verdict_cell(x.as_expected, &actual, &actual),
            secs(x.rto.total_s),
            x.rto.wal_segments_fetched
        );
    }
    h.push_str("</table>\n");
}

fn checks_table(h: &mut String, restores: &[RestoreRecord]) {
    let (verified, names) = super::verified_checks(restores);
    if names.is_empty() {
        return;
    }
    h.push_str("<h2>Checks</h2><table><tr><th>check</th>");
    for (label, _) in &verified {
        let must_fail = restores
            .iter()
            .any(|x| x.label == *label && x.expected == Expected::Fail);
        let _ = write!(
            h,
            "<th>{}{}</th>",
            esc(label),
            if must_fail { " (must fail)" } else { "" }
        );
    }
    h.push_str("</tr>");
    for name in names {
        let _ = write!(h, "<tr><td>{name}</td>");
        for (_, v) in &verified {
            match v.check(name) {
                Some(c) => {
                    let _ = write!(
                        h,
                        "<td class=\"{}\" title=\"{}\">{}</td>",
                        if c.passed { "ok" } else { "bad" },
                        esc(&c.detail),
                        if c.passed { "pass" } else { "FAIL" }
                    );
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use quick_xml::events::Event;

    use super::super::sample;
    use super::super::{ArchiveSample, DisasterRecord, Series, StepRecord, WalGapRecord};
    use super::*;

    fn t(s: f64) -> DateTime<Utc> {
        sample::report().started_at + chrono::Duration::milliseconds((s * 1000.0) as i64)
    }

    /// The sample with a timeline: steps, a fault, damaged WAL, a disaster.
    fn drill() -> DrillReport {
        let mut r = sample::report();
        let step = |action: &str, at: f64, ok: bool| StepRecord {
            action: action.into(),
            planned_at_s: at,
            started_at: t(at),
            duration_s: 1.5,
            ok,
            detail: format!("{action} <done>"),
        };
        r.steps = vec![
            step("base_backup", 2.0, true),
            step("delete_wal", 8.0, true),
            step("checkpoint", 12.0, false),
            step("disaster", 20.0, true),
        ];
        r.series = Some(Series {
            start: t(0.0),
            acked_per_second: (0..20).map(|i| 40 + i % 7).collect(),
            wal_archived: (1..=20)
                .map(|i| ArchiveSample {
                    at: t(f64::from(i)),
                    count: i64::from(i / 3),
                })
                .collect(),
            lost_acked_at: vec![t(19.6), t(19.8)],
        });
        r.wal_gaps = vec![WalGapRecord {
            segment: "000000010000000000000005".into(),
            key: "wal_005/000000010000000000000005".into(),
            damage: crate::env::Damage::Deleted,
            from: t(8.0),
            to: t(9.5),
            detected: true,
            retired: false,
            wal_verify: "MISSING_LOST".into(),
        }];
        r.disaster = Some(DisasterRecord {
            kind: "kill_primary".into(),
            at: t(20.0),
            last_recovered_commit: Some(t(19.5)),
            rpo_s: Some(0.5),
            lost_acked_count: 2,
            lost_acked: vec![(1, 7), (2, 9)],
        });
        for (i, x) in r.restores.iter_mut().enumerate() {
            x.target = Some(t(4.0 + 5.0 * i as f64));
            x.rto.fetch_s = 1.0;
            x.rto.start_to_consistent_s = 2.0;
            x.rto.verify_s = 1.5;
        }
        r
    }

    /// Parses `html` as XML; returns every element's name and the
    /// `data-restore` values.
    fn parse(html: &str) -> (Vec<String>, Vec<String>) {
        let mut reader = quick_xml::Reader::from_str(html);
        reader.config_mut().check_end_names = true;
        let (mut names, mut restores) = (Vec::new(), Vec::new());
        loop {
            match reader.read_event() {
                Ok(Event::Eof) => break,
                Ok(Event::Start(e) | Event::Empty(e)) => {
                    names.push(String::from_utf8(e.name().as_ref().to_vec()).unwrap());
                    for a in e.attributes() {
                        let a = a.expect("well-formed attribute");
                        if a.key.as_ref() == b"data-restore" {
                            restores.push(a.unescape_value().unwrap().into_owned());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "not well-formed at byte {}: {e}\n{html}",
                    reader.buffer_position()
                ),
            }
        }
        (names, restores)
    }

    #[test]
    fn the_page_is_well_formed_and_holds_every_restore_and_chart() {
        let r = drill();
        let html = to_html(&r);
        let (names, restores) = parse(&html);
        assert_eq!(restores, ["latest", "pitr-1", "pitr-2"]);
        assert_eq!(
            names.iter().filter(|n| *n == "svg").count(),
            2,
            "timeline and RTO charts"
        );
        // A bar per second with commits, a bar per step.
        assert!(names.iter().filter(|n| *n == "rect").count() >= 20 + 4);
        assert!(html.contains("disaster: kill_primary"));
        assert!(html.contains("RPO 0.5 s · 2 acknowledged lost"));
        assert!(html.contains("Deleted 000000010000000000000005"));
        assert!(html.contains("pgdrill run scenarios/quick.yaml --seed 42"));
        // Nothing is fetched: no scripts, no external references.
        for banned in ["<script", "http://", "https://", "<link", "@import"] {
            let outside_namespace = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!outside_namespace.contains(banned), "{banned} in the page");
        }
    }

    #[test]
    fn server_log_text_is_escaped_and_control_characters_dropped() {
        let html = to_html(&drill());
        assert!(html.contains("FATAL:  &lt;bad&gt; &amp; &quot;quoted&quot;&#10;second line"));
        assert!(!html.contains('\u{1}'));
        assert!(html.contains("checkpoint &lt;done&gt;"));
    }

    #[test]
    fn a_drill_without_a_workload_still_renders() {
        let mut r = sample::report();
        r.restores.clear();
        let html = to_html(&r);
        let (names, restores) = parse(&html);
        assert!(restores.is_empty());
        assert!(!names.contains(&"svg".to_string()));
        assert!(html.contains("No workload ran"));
        assert!(html.contains("No restore ran"));
    }

    #[test]
    #[should_panic(expected = "not well-formed")]
    fn the_well_formedness_check_can_fail() {
        parse("<html><body><p>unclosed</body></html>");
    }

    #[test]
    fn ticks_stay_few() {
        assert_eq!(tick_step(8.0), 1.0);
        assert_eq!(tick_step(45.0), 5.0);
        assert_eq!(tick_step(600.0), 60.0);
        assert_eq!(tick_step(1e6), 7200.0);
    }
}
