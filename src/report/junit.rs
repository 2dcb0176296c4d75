//! JUnit XML of drills, for CI dashboards (GitHub Actions test reporters,
//! GitLab, Jenkins): `junit.xml` in every report directory and
//! `pgdrill run --junit FILE` for a whole run.
//!
//! Format (Jenkins' `junit-10.xsd`, which a test validates against):
//! `<testsuites>` holds one `<testsuite>` per drill, named after the
//! scenario, with properties `seed`, `environment`, `postgres_version`,
//! `scenario_file` and `replay` (the command that replays the drill). Its
//! test cases:
//! - one per restore (`classname` `pgdrill.<scenario>.restore`, `time` its
//!   RTO), failing when the restore did not turn out as expected, with the
//!   failing checks or error;
//! - one per objective (`pgdrill.<scenario>.objective`: `rpo`, `rto`);
//! - `drill` (`pgdrill.<scenario>`), failing with every other failure of
//!   the drill (an aborted drill, damage the tool did not notice).
//!
//! Every failure's text ends with the replay command.

use super::{xml_attr as attr, xml_text as text_node, DrillReport};

/// A drill that did not run: its environment is not available here.
#[derive(Debug, Clone)]
pub struct SkippedDrill {
    pub scenario: String,
    pub scenario_file: String,
    pub reason: String,
}

/// One run's drills as a JUnit XML document.
pub fn to_junit(reports: &[&DrillReport]) -> String {
    to_junit_with_skips(reports, &[])
}

/// One run's drills and the drills it skipped (a suite each, with one
/// skipped case `drill` giving the reason).
pub fn to_junit_with_skips(reports: &[&DrillReport], skipped: &[SkippedDrill]) -> String {
    let (mut tests, mut failures, mut time) = (skipped.len(), 0, 0.0);
    let suites: Vec<String> = reports
        .iter()
        .map(|r| {
            let suite = Suite::of(r);
            tests += suite.cases.len();
            failures += suite.failures();
            time += suite.time;
            suite.xml()
        })
        .collect();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(&format!(
        "<testsuites name=\"pgdrill\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{time:.3}\">\n"
    ));
    for suite in suites {
        xml.push_str(&suite);
    }
    for s in skipped {
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"1\" failures=\"0\" errors=\"0\" skipped=\"1\" time=\"0\">\n    <properties>\n      <property name=\"scenario_file\" value=\"{}\"/>\n    </properties>\n    <testcase classname=\"pgdrill.{}\" name=\"drill\" time=\"0\">\n      <skipped message=\"{}\"/>\n    </testcase>\n  </testsuite>\n",
            attr(&s.scenario),
            attr(&s.scenario_file),
            attr(&s.scenario),
            attr(&s.reason)
        ));
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// A test case: its class, name, time, and failure (message, text).
struct Case {
    classname: String,
    name: String,
    time: f64,
    failure: Option<(String, String)>,
}

struct Suite<'a> {
    report: &'a DrillReport,
    replay: String,
    time: f64,
    cases: Vec<Case>,
}

impl<'a> Suite<'a> {
    fn of(report: &'a DrillReport) -> Suite<'a> {
        let replay = format!(
            "pgdrill run {} --seed {}",
            report.scenario_file, report.seed
        );
        let scenario = &report.scenario;
        let with_replay = |text: String| format!("{text}\n\nreplay: {replay}");
        let mut cases = Vec::new();
        for r in &report.restores {
            let target = r
                .target
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "the end of the WAL".into());
            let failure = (!r.as_expected).then(|| {
                let checks: Vec<String> = r
                    .verify
                    .iter()
                    .flat_map(|v| v.checks.iter())
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                let message = match (&r.expected_because, r.passed) {
                    (Some(because), true) => {
                        format!("must fail ({because}) but passed: a hole in the archive went unnoticed")
                    }
                    _ => r
                        .error
                        .clone()
                        .unwrap_or_else(|| "failed".to_string())
                        .lines()
                        .next()
                        .unwrap_or("failed")
                        .to_string(),
                };
                let mut text = format!(
                    "restore {} of backup {} to {target}: {}",
                    r.label,
                    r.backup,
                    r.error.as_deref().unwrap_or("failed")
                );
                for check in checks {
                    text.push_str(&format!("\n{check}"));
                }
                (message, with_replay(text))
            });
            cases.push(Case {
                classname: format!("pgdrill.{scenario}.restore"),
                name: format!("{} (to {target})", r.label),
                time: r.rto.total_s,
                failure,
            });
        }
        for o in &report.objectives {
            let measured = o
                .measured_s
                .map_or("not measured".to_string(), |m| format!("{m:.1}s"));
            cases.push(Case {
                classname: format!("pgdrill.{scenario}.objective"),
                name: o.name.clone(),
                time: 0.0,
                failure: (!o.passed).then(|| {
                    let message =
                        format!("{}: measured {measured}, limit {:.1}s", o.name, o.limit_s);
                    (message.clone(), with_replay(message))
                }),
            });
        }
        let other: Vec<&String> = report
            .failures
            .iter()
            .filter(|f| !f.starts_with("restore ") && !f.starts_with("objective "))
            .collect();
        let time = (report.finished_at - report.started_at)
            .to_std()
            .map_or(0.0, |d| d.as_secs_f64());
        cases.push(Case {
            classname: format!("pgdrill.{scenario}"),
            name: "drill".into(),
            time,
            failure: other.first().map(|first| {
                let all: Vec<&str> = other.iter().map(|f| f.as_str()).collect();
                ((*first).clone(), with_replay(all.join("\n")))
            }),
        });
        Suite {
            report,
            replay,
            time,
            cases,
        }
    }

    fn failures(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_some()).count()
    }

    fn xml(&self) -> String {
        let r = self.report;
        let mut xml = format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\" timestamp=\"{}\" hostname=\"{}\">\n    <properties>\n",
            attr(&r.scenario),
            self.cases.len(),
            self.failures(),
            self.time,
            r.started_at.format("%Y-%m-%dT%H:%M:%S"),
            attr(&hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()),
        );
        let properties = [
            ("seed", r.seed.to_string()),
            ("environment", r.environment.clone()),
            ("postgres_version", r.postgres_version.clone()),
            ("scenario_file", r.scenario_file.clone()),
            ("replay", self.replay.clone()),
        ];
        for (name, value) in properties {
            xml.push_str(&format!(
                "      <property name=\"{name}\" value=\"{}\"/>\n",
                attr(&value)
            ));
        }
        xml.push_str("    </properties>\n");
        for c in &self.cases {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                attr(&c.classname),
                attr(&c.name),
                c.time
            ));
            match &c.failure {
                None => xml.push_str("/>\n"),
                Some((message, text)) => xml.push_str(&format!(
                    ">\n      <failure message=\"{}\" type=\"drill\">{}</failure>\n    </testcase>\n",
                    attr(message),
                    text_node(text)
                )),
            }
        }
        xml.push_str("  </testsuite>\n");
        xml
    }
}

#[cfg(test)]
mod tests {
    use super::super::sample::report;
    use super::*;

    /// Jenkins' junit-10.xsd, as `ci/setup` fetches it.
    fn schema() -> std::path::PathBuf {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
            .unwrap_or_default();
        let xsd = cache.join("pgdrill/junit-10.xsd");
        assert!(
            xsd.is_file(),
            "{} is missing: run ci/setup (it fetches Jenkins' JUnit schema)",
            xsd.display()
        );
        xsd
    }

    /// xmllint's verdict on `xml` against the schema: Ok, or its complaint.
    fn validate(xml: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junit.xml");
        std::fs::write(&file, xml).unwrap();
        let out = std::process::Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(schema())
            .arg(&file)
            .output()
            .expect("xmllint runs (run ci/setup: Debian's libxml2-utils)");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[test]
    fn a_drill_is_a_suite_with_a_case_per_restore_and_objective() {
        let xml = to_junit(&[&report()]);
        validate(&xml).unwrap();
        assert!(
            xml.contains(r#"<testsuites name="pgdrill" tests="6" failures="4" errors="0""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testsuite name="quick" tests="6" failures="4""#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<property name="replay" value="pgdrill run scenarios/quick.yaml --seed 42"/>"#
            ),
            "{xml}"
        );
        assert!(xml.contains(r#"<testcase classname="pgdrill.quick.restore" name="latest (to 2026-12-02T01:02:03+00:00)" time="4.500"/>"#), "{xml}");
        assert!(
            xml.contains(
                r#"<failure message="FATAL:  &lt;bad&gt; &amp; &quot;quoted&quot;" type="drill">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                "must fail (needs deleted WAL segment 000000010000000000000010) but passed"
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<failure message="rto: measured 9.0s, limit 5.0s""#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<testcase classname="pgdrill.quick.objective" name="rpo" time="0.000"/>"#
            ),
            "{xml}"
        );
        // The drill's own case carries what no restore or objective does.
        assert!(
            xml.contains("wal-fetch did not refuse the corrupted segment"),
            "{xml}"
        );
        assert!(!xml.contains('\u{1}'));
        assert_eq!(
            xml.matches("replay: pgdrill run scenarios/quick.yaml --seed 42")
                .count(),
            4
        );
        // Several drills: one suite each.
        let two = to_junit(&[&report(), &report()]);
        validate(&two).unwrap();
        assert!(
            two.contains(r#"<testsuites name="pgdrill" tests="12" failures="8""#),
            "{two}"
        );
    }

    #[test]
    fn a_skipped_drill_is_a_suite_with_a_skipped_case_and_its_reason() {
        let skipped = SkippedDrill {
            scenario: "kind-kill".into(),
            scenario_file: "scenarios/kind-kill.yaml".into(),
            reason: "environment kind is not available here: no Kubernetes API server".into(),
        };
        let xml = to_junit_with_skips(&[&report()], &[skipped]);
        validate(&xml).unwrap();
        assert!(
            xml.contains("<testsuites name=\"pgdrill\" tests=\"7\""),
            "{xml}"
        );
        assert!(
            xml.contains("<skipped message=\"environment kind is not available here: no Kubernetes API server\"/>"),
            "{xml}"
        );
    }

    #[test]
    fn the_schema_check_can_fail() {
        // A suite without its required `tests` count, a case without a name.
        let bad = "<testsuites><testsuite name=\"x\"><testcase classname=\"c\"/></testsuite></testsuites>";
        let e = validate(bad).unwrap_err();
        assert!(e.contains("tests") || e.contains("name"), "{e}");
    }

    #[test]
    fn markup_and_control_characters_cannot_break_the_document() {
        assert_eq!(attr("a<b & \"c\"\nd"), "a&lt;b &amp; &quot;c&quot;&#10;d");
        assert_eq!(text_node("x\u{1}y\u{7}<z>"), "xy&lt;z&gt;");
    }
}
