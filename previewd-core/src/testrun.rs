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
    /// What the model proposed, when it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposals: Option<ProposalSummary>,
}

/// Most rejection reasons a [`ProposalSummary`] carries.
pub const MAX_PROPOSAL_REJECTIONS: usize = 8;

/// What a model proposed for an environment's test data and what passed validation, as
/// the seed Job reports it (bounded to fit the termination message).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProposalSummary {
    /// The model asked.
    #[serde(default)]
    pub source: String,
    /// Proposals received (one per column vocabulary, one per lookup table's rows).
    #[serde(default)]
    pub made: u32,
    /// Proposals that passed validation and were used.
    #[serde(default)]
    pub passed: u32,
    /// Rejections: proposals, rows and values dropped.
    #[serde(default)]
    pub rejected_total: u32,
    /// The first rejections, `what: reason` (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
    /// Share of generated text values that came from the model, in percent.
    #[serde(default)]
    pub model_text_percent: u32,
    /// Start of the digest of what passed: equal digests and seeds, equal data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

impl ProposalSummary {
    fn sanitise(mut self) -> Self {
        self.source = shorten(&clean(&self.source), 80);
        self.rejected.truncate(MAX_PROPOSAL_REJECTIONS);
        self.rejected = self
            .rejected
            .iter()
            .map(|r| shorten(&clean(r), 160))
            .collect();
        self.model_text_percent = self.model_text_percent.min(100);
        self.digest = self
            .digest
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(16)
            .collect();
        self
    }
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
    report.proposals = report.proposals.map(ProposalSummary::sanitise);
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

// ---- Other frameworks' reports ----------------------------------------------------------

/// The report format a test runner writes, chosen by `spec.tests.framework`.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TestFramework {
    /// JUnit XML (pytest `--junitxml`, jest-junit, Maven Surefire, `go-junit-report`, ...).
    #[default]
    Junit,
    /// `go test -json` output (one JSON event per line).
    Go,
    /// pytest's JSON report (`pytest --json-report`, the pytest-json-report plugin).
    Pytest,
    /// Jest's JSON results (`jest --json --outputFile=...`).
    Jest,
}

impl TestFramework {
    /// The name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            TestFramework::Junit => "junit",
            TestFramework::Go => "go",
            TestFramework::Pytest => "pytest",
            TestFramework::Jest => "jest",
        }
    }
}

impl std::str::FromStr for TestFramework {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "junit" | "junit-xml" | "xml" => Ok(TestFramework::Junit),
            "go" | "go-test-json" | "gotest" => Ok(TestFramework::Go),
            "pytest" | "pytest-json" => Ok(TestFramework::Pytest),
            "jest" | "jest-json" => Ok(TestFramework::Jest),
            other => Err(format!(
                "unknown test framework {other:?}: expected junit, go, pytest or jest"
            )),
        }
    }
}

/// Turns reports in `framework`'s format into one summary.
pub fn summary_from_reports<S: AsRef<str>>(
    framework: TestFramework,
    reports: &[S],
) -> Result<TestRunSummary, JunitError> {
    match framework {
        TestFramework::Junit => summary_from_junit(reports),
        TestFramework::Go => {
            let mut summary = TestRunSummary::default();
            for r in reports {
                add(&mut summary, summary_from_go_test_json(r.as_ref())?);
            }
            Ok(summary)
        }
        TestFramework::Pytest => {
            let mut summary = TestRunSummary::default();
            for r in reports {
                add(&mut summary, summary_from_pytest_json(r.as_ref())?);
            }
            Ok(summary)
        }
        TestFramework::Jest => {
            let mut summary = TestRunSummary::default();
            for r in reports {
                add(&mut summary, summary_from_jest_json(r.as_ref())?);
            }
            Ok(summary)
        }
    }
}

fn add(total: &mut TestRunSummary, one: TestRunSummary) {
    total.total += one.total;
    total.passed += one.passed;
    total.failed += one.failed;
    total.skipped += one.skipped;
    total.duration_ms = total.duration_ms.saturating_add(one.duration_ms);
    total.failures.extend(one.failures);
}

fn report_error(format: &str, e: impl std::fmt::Display) -> JunitError {
    JunitError(shorten(&format!("not {format}: {e}"), MAX_REASON_CHARS))
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// `go test -json`: one event per line; a test's last `pass`/`fail`/`skip` counts (package
/// events, without `Test`, are not tests). The failure reason is the first output line
/// that mentions the test's file (`x_test.go:12: ...`), else its first output line.
pub fn summary_from_go_test_json(report: &str) -> Result<TestRunSummary, JunitError> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "Action")]
        action: String,
        #[serde(rename = "Package", default)]
        package: String,
        #[serde(rename = "Test", default)]
        test: Option<String>,
        #[serde(rename = "Output", default)]
        output: Option<String>,
        #[serde(rename = "Elapsed", default)]
        elapsed: Option<f64>,
    }
    let mut outcome: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut output: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    let mut elapsed_ms: u64 = 0;
    let mut events = 0usize;
    for (n, line) in report.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(line)
            .map_err(|err| report_error("go test -json", format!("line {}: {err}", n + 1)))?;
        events += 1;
        let Some(test) = e.test else {
            if matches!(e.action.as_str(), "pass" | "fail")
                && let Some(s) = e.elapsed
            {
                elapsed_ms = elapsed_ms.saturating_add((s * 1000.0) as u64);
            }
            continue;
        };
        let name = format!("{}.{test}", e.package);
        match e.action.as_str() {
            "pass" | "fail" | "skip" => {
                outcome.insert(name, e.action);
            }
            "output" => {
                if let Some(o) = e.output {
                    let lines = output.entry(name).or_default();
                    if lines.len() < 20 {
                        lines.push(o);
                    }
                }
            }
            _ => {}
        }
    }
    if events == 0 {
        return Err(report_error("go test -json", "no events"));
    }
    let mut summary = TestRunSummary {
        duration_ms: elapsed_ms,
        ..TestRunSummary::default()
    };
    for (name, action) in &outcome {
        summary.total += 1;
        match action.as_str() {
            "pass" => summary.passed += 1,
            "skip" => summary.skipped += 1,
            _ => {
                summary.failed += 1;
                let lines = output.get(name).cloned().unwrap_or_default();
                let reason = lines
                    .iter()
                    .map(|l| l.trim())
                    .find(|l| l.contains("_test.go:"))
                    .or_else(|| {
                        lines.iter().map(|l| l.trim()).find(|l| {
                            !l.is_empty() && !l.starts_with("=== ") && !l.starts_with("--- ")
                        })
                    })
                    .unwrap_or_default();
                summary.failures.push(TestFailure {
                    name: name.clone(),
                    reason: reason.to_string(),
                });
            }
        }
    }
    Ok(summary)
}

/// pytest's JSON report: `summary` counts and `tests[]` with `nodeid`, `outcome`
/// (`passed`, `failed`, `error`, `skipped`, `xfailed`, `xpassed`) and the failing phase's
/// `longrepr` or `crash.message`.
pub fn summary_from_pytest_json(report: &str) -> Result<TestRunSummary, JunitError> {
    let v: serde_json::Value =
        serde_json::from_str(report).map_err(|e| report_error("a pytest JSON report", e))?;
    let tests = v
        .get("tests")
        .and_then(|t| t.as_array())
        .ok_or_else(|| report_error("a pytest JSON report", "no `tests` array"))?;
    let mut summary = TestRunSummary {
        duration_ms: v
            .get("duration")
            .and_then(serde_json::Value::as_f64)
            .map_or(0, |s| (s * 1000.0) as u64),
        ..TestRunSummary::default()
    };
    for t in tests {
        let name = t["nodeid"].as_str().unwrap_or("?").to_string();
        summary.total += 1;
        match t["outcome"].as_str().unwrap_or("") {
            "passed" | "xfailed" => summary.passed += 1,
            "skipped" => summary.skipped += 1,
            _ => {
                summary.failed += 1;
                let phase = ["call", "setup", "teardown"]
                    .iter()
                    .map(|p| &t[*p])
                    .find(|p| p["outcome"].as_str().is_some_and(|o| o != "passed"))
                    .unwrap_or(&t["call"]);
                let reason = phase["crash"]["message"]
                    .as_str()
                    .map(first_line)
                    .or_else(|| {
                        phase["longrepr"].as_str().map(|l| {
                            l.lines()
                                .rev()
                                .map(str::trim)
                                .find(|x| x.starts_with("E ") || x.contains("Error"))
                                .map_or_else(
                                    || first_line(l),
                                    |x| x.trim_start_matches("E ").trim().to_string(),
                                )
                        })
                    })
                    .unwrap_or_default();
                summary.failures.push(TestFailure { name, reason });
            }
        }
    }
    Ok(summary)
}

/// Jest's `--json` results: `testResults[].assertionResults[]` with `fullName`, `status`
/// (`passed`, `failed`, `pending`, `skipped`, `todo`, `disabled`) and `failureMessages`.
pub fn summary_from_jest_json(report: &str) -> Result<TestRunSummary, JunitError> {
    let v: serde_json::Value =
        serde_json::from_str(report).map_err(|e| report_error("Jest JSON results", e))?;
    let files = v
        .get("testResults")
        .and_then(|t| t.as_array())
        .ok_or_else(|| report_error("Jest JSON results", "no `testResults` array"))?;
    let mut summary = TestRunSummary::default();
    for file in files {
        if let (Some(start), Some(end)) = (file["startTime"].as_u64(), file["endTime"].as_u64()) {
            summary.duration_ms = summary
                .duration_ms
                .saturating_add(end.saturating_sub(start));
        }
        let assertions = file["assertionResults"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if assertions.is_empty() && file["status"].as_str() == Some("failed") {
            // A file that failed to run (syntax error, failing import) has no assertions.
            summary.total += 1;
            summary.failed += 1;
            summary.failures.push(TestFailure {
                name: file["name"].as_str().unwrap_or("?").to_string(),
                reason: first_line(file["message"].as_str().unwrap_or("test file failed")),
            });
            continue;
        }
        for a in assertions {
            summary.total += 1;
            match a["status"].as_str().unwrap_or("") {
                "passed" => summary.passed += 1,
                "failed" => {
                    summary.failed += 1;
                    let name = a["fullName"]
                        .as_str()
                        .or_else(|| a["title"].as_str())
                        .unwrap_or("?")
                        .to_string();
                    let reason = a["failureMessages"][0]
                        .as_str()
                        .map(first_line)
                        .unwrap_or_default();
                    summary.failures.push(TestFailure { name, reason });
                }
                _ => summary.skipped += 1,
            }
        }
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

    #[test]
    fn proposal_summaries_are_bounded() {
        let rejected: Vec<String> = (0..20)
            .map(|i| format!("t{i} rows: {}", "x".repeat(170)))
            .collect();
        let message = serde_json::json!({
            "tables": 3, "rows": 10, "durationMs": 5, "error": null,
            "proposals": {"source": "openai:m", "made": 9, "passed": 7, "rejectedTotal": 20,
                          "rejected": rejected, "modelTextPercent": 140, "digest": "ab12<zz>cd"}
        })
        .to_string();
        let report = parse_seed_report(&message).unwrap();
        let p = report.proposals.unwrap();
        assert_eq!((p.made, p.passed, p.rejected_total), (9, 7, 20));
        assert_eq!(p.rejected.len(), MAX_PROPOSAL_REJECTIONS);
        assert!(p.rejected.iter().all(|r| r.chars().count() <= 160));
        assert_eq!(p.model_text_percent, 100);
        assert_eq!(p.digest, "ab12cd");
        let plain =
            parse_seed_report(r#"{"tables":1,"rows":1,"durationMs":1,"error":null}"#).unwrap();
        assert_eq!(plain.proposals, None);
    }

    const GO_JSON: &str = r#"{"Time":"2024-05-01T10:00:00Z","Action":"start","Package":"shop/cart"}
{"Time":"2024-05-01T10:00:00Z","Action":"run","Package":"shop/cart","Test":"TestAdd"}
{"Time":"2024-05-01T10:00:00Z","Action":"output","Package":"shop/cart","Test":"TestAdd","Output":"=== RUN   TestAdd\n"}
{"Time":"2024-05-01T10:00:00Z","Action":"pass","Package":"shop/cart","Test":"TestAdd","Elapsed":0.01}
{"Time":"2024-05-01T10:00:00Z","Action":"run","Package":"shop/cart","Test":"TestTotal"}
{"Time":"2024-05-01T10:00:00Z","Action":"output","Package":"shop/cart","Test":"TestTotal","Output":"=== RUN   TestTotal\n"}
{"Time":"2024-05-01T10:00:00Z","Action":"output","Package":"shop/cart","Test":"TestTotal","Output":"    cart_test.go:31: total = 9, want 10\n"}
{"Time":"2024-05-01T10:00:00Z","Action":"output","Package":"shop/cart","Test":"TestTotal","Output":"--- FAIL: TestTotal (0.00s)\n"}
{"Time":"2024-05-01T10:00:00Z","Action":"fail","Package":"shop/cart","Test":"TestTotal","Elapsed":0}
{"Time":"2024-05-01T10:00:00Z","Action":"run","Package":"shop/cart","Test":"TestTotal/empty"}
{"Time":"2024-05-01T10:00:00Z","Action":"skip","Package":"shop/cart","Test":"TestTotal/empty","Elapsed":0}
{"Time":"2024-05-01T10:00:01Z","Action":"fail","Package":"shop/cart","Elapsed":1.25}
"#;

    #[test]
    fn go_test_json_is_counted_per_test() {
        let s = summary_from_reports(TestFramework::Go, &[GO_JSON]).unwrap();
        assert_eq!((s.total, s.passed, s.failed, s.skipped), (3, 1, 1, 1));
        assert_eq!(s.duration_ms, 1250);
        assert_eq!(s.failures[0].name, "shop/cart.TestTotal");
        assert_eq!(s.failures[0].reason, "cart_test.go:31: total = 9, want 10");
        assert!(summary_from_go_test_json("not json\n").is_err());
        assert!(summary_from_go_test_json("").is_err());
    }

    #[test]
    fn pytest_json_reports_are_read() {
        let report = serde_json::json!({
            "duration": 2.5,
            "summary": {"passed": 2, "failed": 1, "skipped": 1, "total": 5},
            "tests": [
                {"nodeid": "tests/test_cart.py::test_add", "outcome": "passed"},
                {"nodeid": "tests/test_cart.py::test_total", "outcome": "failed",
                 "call": {"outcome": "failed", "crash": {"message": "AssertionError: assert 9 == 10\n+  where 9 = total()"},
                          "longrepr": "def test_total():\n>       assert total() == 10\nE       AssertionError"}},
                {"nodeid": "tests/test_db.py::test_conn", "outcome": "error",
                 "setup": {"outcome": "failed", "longrepr": "fixture 'db' not found\nE       ConnectionError: refused"}},
                {"nodeid": "tests/test_cart.py::test_slow", "outcome": "skipped"},
                {"nodeid": "tests/test_cart.py::test_known", "outcome": "xfailed"}
            ]
        })
        .to_string();
        let s = summary_from_reports(TestFramework::Pytest, &[report]).unwrap();
        assert_eq!((s.total, s.passed, s.failed, s.skipped), (5, 2, 2, 1));
        assert_eq!(s.duration_ms, 2500);
        assert_eq!(s.failures[0].reason, "AssertionError: assert 9 == 10");
        assert_eq!(s.failures[1].name, "tests/test_db.py::test_conn");
        assert_eq!(s.failures[1].reason, "ConnectionError: refused");
        assert!(summary_from_pytest_json("{}").is_err());
    }

    #[test]
    fn jest_json_results_are_read() {
        let report = serde_json::json!({
            "numTotalTests": 4,
            "testResults": [
                {"name": "/app/cart.test.js", "status": "failed", "startTime": 1000, "endTime": 1800,
                 "assertionResults": [
                    {"fullName": "cart adds", "status": "passed", "failureMessages": []},
                    {"fullName": "cart totals", "status": "failed",
                     "failureMessages": ["Error: expect(received).toBe(expected)\n\nExpected: 10\nReceived: 9"]},
                    {"fullName": "cart later", "status": "pending", "failureMessages": []}
                 ]},
                {"name": "/app/broken.test.js", "status": "failed", "startTime": 1000, "endTime": 1100,
                 "message": "  ● Test suite failed to run\n\n    SyntaxError: Unexpected token", "assertionResults": []}
            ]
        })
        .to_string();
        let s = summary_from_reports(TestFramework::Jest, &[report]).unwrap();
        assert_eq!((s.total, s.passed, s.failed, s.skipped), (4, 1, 2, 1));
        assert_eq!(s.duration_ms, 900);
        assert_eq!(
            s.failures[0].reason,
            "Error: expect(received).toBe(expected)"
        );
        assert_eq!(s.failures[1].name, "/app/broken.test.js");
        assert_eq!(s.failures[1].reason, "● Test suite failed to run");
        // Whatever the format, the summary encodes to a valid termination message.
        assert!(parse_summary(&encode_summary(&s)).is_ok());
    }

    #[test]
    fn framework_names_parse() {
        for (text, f) in [
            ("junit", TestFramework::Junit),
            ("go", TestFramework::Go),
            ("PYTEST", TestFramework::Pytest),
            ("jest-json", TestFramework::Jest),
        ] {
            assert_eq!(text.parse::<TestFramework>(), Ok(f));
        }
        assert!("mocha".parse::<TestFramework>().is_err());
        let f: TestFramework = serde_json::from_str("\"go\"").unwrap();
        assert_eq!(f.as_str(), "go");
    }
}
