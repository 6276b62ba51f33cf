//! The result protocol of the jobs that run after an environment is ready, through the
//! Kubernetes API alone: the job's container writes one JSON object to its termination
//! message (`/dev/termination-log`, at most 4 KiB), the controller reads it from the
//! pod's status.
//!
//! - A test run writes a [`TestRunSummary`]:
//!   `{"total":12,"passed":10,"failed":1,"skipped":1,"durationMs":5300,
//!   "failures":[{"name":"checkout.test_pays","reason":"expected 200, got 500"}]}`.
//!   [`encode_summary`] fits it into the 4 KiB (reasons shortened, then failures left out
//!   and counted in `omittedFailures`); [`parse_summary`] checks it;
//!   [`summary_from_junit`] turns JUnit XML reports into one (the
//!   `previewd junit-summary` subcommand).
//! - A data-seed run writes a [`SeedReport`]:
//!   `{"tables":15,"rows":2300,"durationMs":900,"error":null}`.
//!
//! Everything here is hostile input: the runner is the pull request's own code. Parsing
//! never panics, sizes are bounded and counts must add up.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Size of a container's termination message that the kubelet keeps.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Longest failure reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 300;

/// Longest test name kept, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Most failures a parsed summary keeps.
pub const MAX_FAILURES: usize = 50;

/// Summary of one test run, as the runner writes it to its termination message.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestRunSummary {
    /// Tests run.
    pub total: u64,
    /// Tests passed.
    pub passed: u64,
    /// Tests failed (failures and errors).
    pub failed: u64,
    /// Tests skipped.
    pub skipped: u64,
    /// Wall time of the run in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Failed tests with the reason, as many as fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TestFailure>,
    /// Failed tests left out of `failures` to fit the message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_failures: u64,
}

/// One failed test.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct TestFailure {
    /// Test name, e.g. `tests.checkout.test_pays`.
    pub name: String,
    /// Why it failed (first line of the assertion or error).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A termination message that is not a valid summary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    /// No message at all.
    #[error("the runner wrote no summary to /dev/termination-log")]
    Missing,
    /// Not JSON of the expected shape.
    #[error("malformed summary: {0}")]
    Malformed(String),
    /// Counts that do not add up.
    #[error("inconsistent summary: {0}")]
    Inconsistent(String),
}

impl SummaryError {
    /// Short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            SummaryError::Missing => "SummaryMissing",
            SummaryError::Malformed(_) | SummaryError::Inconsistent(_) => "SummaryMalformed",
        }
    }
}

impl TestRunSummary {
    /// Whether the run passed: nothing failed.
    pub fn passed(&self) -> bool {
        self.failed == 0
    }

    /// A one-line account, e.g. `10 passed, 1 failed, 1 skipped (12 total) in 5.3s`.
    pub fn headline(&self) -> String {
        let mut out = format!(
            "{} passed, {} failed, {} skipped ({} total)",
            self.passed, self.failed, self.skipped, self.total
        );
        if self.duration_ms > 0 {
            let _ = write!(out, " in {:.1}s", self.duration_ms as f64 / 1000.0);
        }
        out
    }
}

/// Reads a summary from a termination message.
pub fn parse_summary(message: &str) -> Result<TestRunSummary, SummaryError> {
    let text = message.trim();
    if text.is_empty() {
        return Err(SummaryError::Missing);
    }
    if text.len() > TERMINATION_MESSAGE_LIMIT {
        return Err(SummaryError::Malformed(format!(
            "{} bytes, more than the {TERMINATION_MESSAGE_LIMIT} a termination message holds",
            text.len()
        )));
    }
    let mut summary: TestRunSummary = serde_json::from_str(text)
        .map_err(|e| SummaryError::Malformed(shorten(&e.to_string(), MAX_REASON_CHARS)))?;
    let counted = summary
        .passed
        .checked_add(summary.failed)
        .and_then(|n| n.checked_add(summary.skipped));
    if counted != Some(summary.total) {
        return Err(SummaryError::Inconsistent(format!(
            "passed {} + failed {} + skipped {} is not total {}",
            summary.passed, summary.failed, summary.skipped, summary.total
        )));
    }
    let listed = summary.failures.len() as u64;
    if listed.saturating_add(summary.omitted_failures) > summary.failed {
        return Err(SummaryError::Inconsistent(format!(
            "{} failures listed or omitted, but {} failed",
            listed.saturating_add(summary.omitted_failures),
            summary.failed
        )));
    }
    if summary.failures.len() > MAX_FAILURES {
        let dropped = summary.failures.len() - MAX_FAILURES;
        summary.failures.truncate(MAX_FAILURES);
        summary.omitted_failures += dropped as u64;
    }
    for f in &mut summary.failures {
        f.name = shorten(&clean(&f.name), MAX_NAME_CHARS);
        f.reason = shorten(&clean(&f.reason), MAX_REASON_CHARS);
    }
    Ok(summary)
}

/// Serialises a summary so that it fits a termination message: reasons are shortened
/// first, then failures are left out from the end (and counted in `omittedFailures`).
pub fn encode_summary(summary: &TestRunSummary) -> String {
    let mut s = summary.clone();
    for f in &mut s.failures {
        f.name = shorten(&clean(&f.name), MAX_NAME_CHARS);
        f.reason = shorten(&clean(&f.reason), MAX_REASON_CHARS);
    }
    let mut reason_limit = MAX_REASON_CHARS;
    loop {
        let json = serde_json::to_string(&s).unwrap_or_default();
        if json.len() <= TERMINATION_MESSAGE_LIMIT {
            return json;
        }
        if reason_limit > 60 {
            reason_limit /= 2;
            for f in &mut s.failures {
                f.reason = shorten(&f.reason, reason_limit);
            }
            continue;
        }
        if s.failures.pop().is_some() {
            s.omitted_failures += 1;
            continue;
        }
        // Cannot happen: a summary without failures is about 150 bytes.
        return json;
    }
}

/// Control characters become spaces; runs of whitespace collapse.
fn clean(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max` characters, with `…` when shortened.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Outcome of a data-seed job, as `previewd seed-data` writes it to its termination
/// message.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SeedReport {
    /// Tables filled.
    pub tables: u64,
    /// Rows loaded.
    pub rows: u64,
    /// Wall time in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Why seeding failed; `None` on success.
    #[serde(default)]
    pub error: Option<String>,
}

/// Reads a seed report from a termination message.
pub fn parse_seed_report(message: &str) -> Result<SeedReport, SummaryError> {
    let text = message.trim();
    if text.is_empty() {
        return Err(SummaryError::Missing);
    }
    if text.len() > TERMINATION_MESSAGE_LIMIT {
        return Err(SummaryError::Malformed(format!(
            "{} bytes, more than the {TERMINATION_MESSAGE_LIMIT} a termination message holds",
            text.len()
        )));
    }
    let mut report: SeedReport = serde_json::from_str(text)
        .map_err(|e| SummaryError::Malformed(shorten(&e.to_string(), MAX_REASON_CHARS)))?;
    report.error = report
        .error
        .map(|e| shorten(&clean(&e), MAX_REASON_CHARS * 2));
    Ok(report)
}

// ---- JUnit XML ------------------------------------------------------------------------------

/// A JUnit XML report that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid JUnit XML: {0}")]
pub struct JunitError(pub String);

/// `<testsuites>` or `<testsuite>`: both may hold suites and test cases.
#[derive(Deserialize, Debug, Default)]
struct JunitSuite {
    #[serde(rename = "@time", default)]
    time: Option<String>,
    #[serde(rename = "testsuite", default)]
    suites: Vec<JunitSuite>,
    #[serde(rename = "testcase", default)]
    cases: Vec<JunitCase>,
}

#[derive(Deserialize, Debug, Default)]
struct JunitCase {
    #[serde(rename = "@name", default)]
    name: String,
    #[serde(rename = "@classname", default)]
    classname: Option<String>,
    #[serde(rename = "@time", default)]
    time: Option<String>,
    #[serde(rename = "failure", default)]
    failures: Vec<JunitProblem>,
    #[serde(rename = "error", default)]
    errors: Vec<JunitProblem>,
    #[serde(rename = "skipped", default)]
    skipped: Vec<JunitProblem>,
}

#[derive(Deserialize, Debug, Default)]
struct JunitProblem {
    #[serde(rename = "@message", default)]
    message: Option<String>,
    #[serde(rename = "@type", default)]
    kind: Option<String>,
    #[serde(rename = "$text", default)]
    text: Option<String>,
}

impl JunitProblem {
    fn reason(&self, prefix: &str) -> String {
        let first_line = |s: &str| {
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        };
        let detail = self
            .message
            .as_deref()
            .and_then(first_line)
            .or_else(|| self.text.as_deref().and_then(first_line))
            .or_else(|| self.kind.clone())
            .unwrap_or_default();
        format!("{prefix}{detail}")
    }
}

fn seconds_to_ms(time: Option<&str>) -> Option<u64> {
    let secs: f64 = time?.trim().replace(',', "").parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as u64)
}

/// A suite's duration: its `time`, else the sum of its suites' and its cases'.
fn suite_ms(suite: &JunitSuite) -> u64 {
    seconds_to_ms(suite.time.as_deref()).unwrap_or_else(|| {
        let inner: u64 = suite.suites.iter().map(suite_ms).sum();
        let cases: u64 = suite
            .cases
            .iter()
            .map(|c| seconds_to_ms(c.time.as_deref()).unwrap_or(0))
            .sum();
        inner.saturating_add(cases)
    })
}

fn collect(suite: &JunitSuite, summary: &mut TestRunSummary) {
    for case in &suite.cases {
        summary.total += 1;
        let name = match case.classname.as_deref().map(str::trim) {
            Some(class) if !class.is_empty() => format!("{class}.{}", case.name.trim()),
            _ => case.name.trim().to_string(),
        };
        let problem = case
            .failures
            .first()
            .map(|f| f.reason(""))
            .or_else(|| case.errors.first().map(|e| e.reason("error: ")));
        if let Some(reason) = problem {
            summary.failed += 1;
            summary.failures.push(TestFailure { name, reason });
        } else if !case.skipped.is_empty() {
            summary.skipped += 1;
        } else {
            summary.passed += 1;
        }
    }
    for inner in &suite.suites {
        collect(inner, summary);
    }
}

/// One summary from JUnit XML reports (pytest `--junitxml`, jest-junit, Maven Surefire,
/// `go-junit-report`, ...). Counts come from the test cases themselves, never from the
/// suites' attributes; a case with both a failure and `skipped` counts as failed. The
/// duration of a report is its root's `time`, else the sum of its suites' (or cases').
pub fn summary_from_junit<S: AsRef<str>>(reports: &[S]) -> Result<TestRunSummary, JunitError> {
    let mut summary = TestRunSummary::default();
    for report in reports {
        let root: JunitSuite = quick_xml::de::from_str(report.as_ref())
            .map_err(|e| JunitError(shorten(&e.to_string(), MAX_REASON_CHARS)))?;
        collect(&root, &mut summary);
        summary.duration_ms = summary.duration_ms.saturating_add(suite_ms(&root));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_valid_summary_parses_and_cleans_names() {
        let s = parse_summary(
            r#" {"total":4,"passed":2,"failed":1,"skipped":1,"durationMs":1500,
                "failures":[{"name":"checkout\n pays","reason":"expected 200\u0000 got 500"}],
                "extra":"ignored"} "#,
        )
        .unwrap();
        assert_eq!((s.total, s.passed, s.failed, s.skipped), (4, 2, 1, 1));
        assert_eq!(s.failures[0].name, "checkout pays");
        assert_eq!(s.failures[0].reason, "expected 200 got 500");
        assert!(!s.passed());
        assert_eq!(
            s.headline(),
            "2 passed, 1 failed, 1 skipped (4 total) in 1.5s"
        );
    }

    #[test]
    fn missing_malformed_and_inconsistent_summaries_are_refused() {
        assert_eq!(parse_summary("  \n"), Err(SummaryError::Missing));
        for bad in [
            "not json",
            "{\"total\":1}",
            "{\"total\":-1,\"passed\":0,\"failed\":0,\"skipped\":0}",
            "[1,2]",
        ] {
            let err = parse_summary(bad).unwrap_err();
            assert!(matches!(err, SummaryError::Malformed(_)), "{bad}: {err:?}");
            assert_eq!(err.reason(), "SummaryMalformed");
        }
        let err = parse_summary(r#"{"total":5,"passed":1,"failed":1,"skipped":1}"#).unwrap_err();
        assert!(matches!(err, SummaryError::Inconsistent(_)), "{err:?}");
        let err = parse_summary(
            r#"{"total":1,"passed":0,"failed":1,"skipped":0,"failures":[{"name":"a"},{"name":"b"}]}"#,
        )
        .unwrap_err();
        assert!(matches!(err, SummaryError::Inconsistent(_)), "{err:?}");
        let huge = format!(
            "{{\"total\":0,\"passed\":0,\"failed\":0,\"skipped\":0,\"x\":\"{}\"}}",
            "a".repeat(5000)
        );
        assert!(matches!(
            parse_summary(&huge),
            Err(SummaryError::Malformed(_))
        ));
        let overflow = format!(
            "{{\"total\":1,\"passed\":{},\"failed\":{},\"skipped\":0}}",
            u64::MAX,
            u64::MAX
        );
        assert!(matches!(
            parse_summary(&overflow),
            Err(SummaryError::Inconsistent(_))
        ));
    }

    #[test]
    fn encoding_fits_four_kib_and_round_trips() {
        let failures: Vec<TestFailure> = (0..200)
            .map(|i| TestFailure {
                name: format!("tests.module_{i}.test_something_long_{i}"),
                reason: "x".repeat(1000),
            })
            .collect();
        let summary = TestRunSummary {
            total: 1000,
            passed: 800,
            failed: 200,
            skipped: 0,
            duration_ms: 12_345,
            failures,
            omitted_failures: 0,
        };
        let json = encode_summary(&summary);
        assert!(json.len() <= TERMINATION_MESSAGE_LIMIT, "{}", json.len());
        let back = parse_summary(&json).unwrap();
        assert_eq!((back.total, back.failed), (1000, 200));
        assert!(!back.failures.is_empty());
        assert_eq!(back.failures.len() as u64 + back.omitted_failures, 200);
        assert_eq!(
            back.failures[0].name,
            "tests.module_0.test_something_long_0"
        );

        let small = TestRunSummary {
            total: 2,
            passed: 2,
            ..TestRunSummary::default()
        };
        assert_eq!(
            encode_summary(&small),
            r#"{"total":2,"passed":2,"failed":0,"skipped":0,"durationMs":0}"#
        );
        assert_eq!(parse_summary(&encode_summary(&small)).unwrap(), small);
    }

    #[test]
    fn junit_reports_become_one_summary() {
        let pytest = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests">
  <testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="2.500">
    <testcase classname="tests.test_cart" name="test_add" time="0.1"/>
    <testcase classname="tests.test_cart" name="test_pay" time="0.2">
      <failure message="AssertionError: expected 200, got 500&#10;more">Traceback &lt;long&gt;</failure>
    </testcase>
    <testcase classname="tests.test_cart" name="test_skip" time="0.0">
      <skipped type="pytest.skip" message="not today"/>
    </testcase>
    <testcase classname="tests.test_auth" name="test_login" time="0.3">
      <error type="ConnectionError">connection refused
at line 3</error>
      <system-out>noise</system-out>
    </testcase>
    <testcase classname="" name="test_plain"/>
  </testsuite>
</testsuites>"#;
        let jest = r#"<testsuite name="jest" time="1.25"><testcase name="renders &amp; clicks" classname="App"/></testsuite>"#;
        let s = summary_from_junit(&[pytest, jest]).unwrap();
        assert_eq!((s.total, s.passed, s.failed, s.skipped), (6, 3, 2, 1));
        assert_eq!(s.duration_ms, 3750);
        assert_eq!(
            s.failures,
            vec![
                TestFailure {
                    name: "tests.test_cart.test_pay".into(),
                    reason: "AssertionError: expected 200, got 500".into()
                },
                TestFailure {
                    name: "tests.test_auth.test_login".into(),
                    reason: "error: connection refused".into()
                },
            ]
        );
        // The summary parses back as a termination message.
        let back = parse_summary(&encode_summary(&s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn junit_without_root_time_sums_cases_and_bad_xml_is_an_error() {
        let s = summary_from_junit(&[
            r#"<testsuites><testsuite><testsuite><testcase name="a" time="0.5"/></testsuite></testsuite><testcase name="b" time="1"/></testsuites>"#,
        ])
        .unwrap();
        assert_eq!((s.total, s.passed), (2, 2));
        assert_eq!(s.duration_ms, 1500);
        assert!(summary_from_junit(&["<testsuite><testcase"]).is_err());
        assert!(summary_from_junit(&["not xml at all"]).is_err());
        let empty = summary_from_junit::<&str>(&[]).unwrap();
        assert_eq!(empty, TestRunSummary::default());
    }

    #[test]
    fn seed_reports_parse() {
        let ok = parse_seed_report(r#"{"tables":15,"rows":2300,"durationMs":900,"error":null}"#)
            .unwrap();
        assert_eq!((ok.tables, ok.rows, ok.duration_ms), (15, 2300, 900));
        assert_eq!(ok.error, None);
        let failed = parse_seed_report(
            r#"{"tables":0,"rows":0,"durationMs":3,"error":"required cycle: a -> b -> a"}"#,
        )
        .unwrap();
        assert_eq!(failed.error.as_deref(), Some("required cycle: a -> b -> a"));
        assert_eq!(parse_seed_report(""), Err(SummaryError::Missing));
        assert!(matches!(
            parse_seed_report("{\"rows\":\"many\"}"),
            Err(SummaryError::Malformed(_))
        ));
    }
}
