//! Test selection as the controller records it: the repository's selection settings
//! (`spec.tests.selection`), what the advisor is asked (`TestSelectionRequest`), and the
//! answer recorded in `status.testSelection` and handed to the test runner.
//!
//! The advisor itself (mapping rules, smoke set, the model's ranking) lives in the AI
//! engine; this module holds only the shapes both sides agree on.
//!
//! # The runner's contract
//!
//! When the controller selected a subset, the runner gets `PREVIEWD_TESTS`: the selected
//! test ids (inventory entries), one per line, sorted, possibly empty (nothing to run), and
//! `PREVIEWD_TESTS_COUNT`, their number. Without `PREVIEWD_TESTS` the runner runs every
//! test. Ids come only from the repository's inventory, which the platform team writes:
//! no text of the pull request reaches the variable.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most test ids recorded in the status and passed to the runner. A larger selection
/// runs every test (a superset is safe; a truncated list is not).
pub const MAX_SELECTED_TESTS: usize = 100;

/// `source` of a selection computed by the rules alone.
pub const SOURCE_DETERMINISTIC: &str = "deterministic";
/// `source` of a selection the model ranked.
pub const SOURCE_MODEL: &str = "model";
/// `source` of a selection that fell back (model failed, change unknown, bad settings).
pub const SOURCE_FALLBACK: &str = "fallback";

/// Maps changed source paths to test patterns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestMappingRule {
    /// Regular expression matched against the whole changed path, with named or numbered
    /// groups, e.g. `src/(?P<svc>[^/]+)/.*\.go`.
    #[schemars(length(min = 1, max = 512))]
    pub source: String,
    /// Test patterns (globs over inventory entries) with `{name}` / `{1}` placeholders
    /// filled from the groups, e.g. `tests/{svc}/**`.
    #[schemars(length(max = 20), inner(length(min = 1, max = 256)))]
    pub tests: Vec<String>,
}

/// How the `changed-files` and `ai-smart` selectors find the tests of a change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSelectionSpec {
    /// Every test of the repository (test files or suite names, as the runner accepts
    /// them): selected tests are always inventory entries. Without an inventory,
    /// `changed-files` and `ai-smart` run every test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 5000),
        inner(length(min = 1, max = 256), regex(pattern = r"^\S+$"))
    )]
    pub inventory: Vec<String>,
    /// Changed source paths → tests to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub rules: Vec<TestMappingRule>,
    /// Test patterns always run (smoke tests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 256)))]
    pub smoke: Vec<String>,
    /// Most tests `ai-smart` keeps after the model ranked the candidates (smoke tests and
    /// changed test files come on top); unset or 0: no trimming, the model is not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5000))]
    pub budget: Option<i32>,
}

/// What the controller asks the advisor to select for an environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestSelectionRequest {
    /// `all`, `changed-files` or `ai-smart`.
    pub selector: String,
    /// The repository's selection settings.
    pub spec: TestSelectionSpec,
}

/// The tests selected for the head commit, as `status.testSelection` records them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSelectionStatus {
    /// The selector asked for (`spec.tests.selector`).
    pub selector: String,
    /// What produced the answer: `all`, `changed-files`, or `ai-smart` (`changed-files`
    /// after an `ai-smart` fallback).
    pub strategy: String,
    /// `deterministic`, `model` or `fallback`.
    pub source: String,
    /// Why these tests (or why every test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The runner runs every test (`PREVIEWD_TESTS` is not set).
    #[serde(default)]
    pub run_all: bool,
    /// Tests selected, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// The selected test ids, sorted (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<String>,
    /// Selected tests left out of `tests` (the selection was too large to pass on, so
    /// every test runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<i64>,
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl TestSelectionStatus {
    /// Every test runs, for `reason`.
    pub fn every_test(selector: &str, source: &str, reason: impl Into<String>) -> Self {
        TestSelectionStatus {
            selector: selector.to_owned(),
            strategy: "all".to_owned(),
            source: source.to_owned(),
            reason: Some(reason.into()),
            run_all: true,
            ..TestSelectionStatus::default()
        }
    }

    /// A selected subset; more than [`MAX_SELECTED_TESTS`] tests run every test instead,
    /// with the first ones recorded and the rest counted.
    pub fn subset(
        selector: &str,
        strategy: &str,
        source: &str,
        reason: impl Into<String>,
        tests: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut tests: Vec<String> = tests.into_iter().collect();
        tests.sort();
        tests.dedup();
        let total = tests.len();
        let mut reason = reason.into();
        let mut run_all = false;
        let mut omitted = None;
        if total > MAX_SELECTED_TESTS {
            tests.truncate(MAX_SELECTED_TESTS);
            omitted = Some(count(total - MAX_SELECTED_TESTS));
            run_all = true;
            reason = format!(
                "{reason}; {total} tests selected, more than the {MAX_SELECTED_TESTS} passed to the runner: running every test"
            );
        }
        TestSelectionStatus {
            selector: selector.to_owned(),
            strategy: strategy.to_owned(),
            source: source.to_owned(),
            reason: Some(reason),
            run_all,
            count: Some(count(total)),
            tests,
            omitted,
        }
    }

    /// `PREVIEWD_TESTS`: the selected ids one per line, or `None` when every test runs.
    pub fn runner_tests(&self) -> Option<String> {
        (!self.run_all).then(|| self.tests.join("\n"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_is_sorted_deduplicated_and_passed_on() {
        let s = TestSelectionStatus::subset(
            "changed-files",
            "changed-files",
            SOURCE_DETERMINISTIC,
            "2 tests",
            ["b".to_owned(), "a".to_owned(), "b".to_owned()],
        );
        assert_eq!(s.tests, ["a", "b"]);
        assert_eq!(s.count, Some(2));
        assert!(!s.run_all);
        assert_eq!(s.runner_tests().as_deref(), Some("a\nb"));
    }

    #[test]
    fn an_empty_subset_runs_nothing_not_everything() {
        let s = TestSelectionStatus::subset("changed-files", "changed-files", "x", "none", []);
        assert_eq!(s.runner_tests().as_deref(), Some(""));
        assert_eq!(s.count, Some(0));
    }

    #[test]
    fn a_large_subset_is_truncated_with_a_count_and_runs_everything() {
        let s = TestSelectionStatus::subset(
            "ai-smart",
            "changed-files",
            SOURCE_FALLBACK,
            "because",
            (0..150).map(|i| format!("t{i:03}")),
        );
        assert_eq!(s.tests.len(), MAX_SELECTED_TESTS);
        assert_eq!(s.omitted, Some(50));
        assert_eq!(s.count, Some(150));
        assert!(s.run_all);
        assert_eq!(s.runner_tests(), None);
        assert!(s.reason.unwrap().contains("150 tests selected"));
    }

    #[test]
    fn every_test_sets_no_list() {
        let s = TestSelectionStatus::every_test("all", SOURCE_DETERMINISTIC, "selector all");
        assert!(s.run_all);
        assert_eq!(s.runner_tests(), None);
        assert_eq!(s.strategy, "all");
    }
}
