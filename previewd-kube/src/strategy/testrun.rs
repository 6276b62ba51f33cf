//! The test-run stage: when `spec.tests.enabled`, once the services are available (and
//! the test data is seeded, when the seed stage runs first), a Job in the environment's
//! namespace runs the repository's test image (`spec.tests.image`, `command`, `args`).
//!
//! The runner's environment:
//!
//! | variable | value |
//! |---|---|
//! | `PREVIEW_URL` | in-cluster URL of the main service (the one served at `/`, else the first) |
//! | `PREVIEW_URL_<SERVICE>` | in-cluster URL of each service, e.g. `PREVIEW_URL_ORDER_API` |
//! | `PREVIEW_PUBLIC_URL` | the environment's public URL, when it has an Ingress |
//! | `PREVIEWD_TEST_SELECTOR` | `spec.tests.selector`: `all`, `changed-files` or `ai-smart` |
//! | `PREVIEWD_TEST_FRAMEWORK` | `spec.tests.framework`: the results' format for `previewd test-summary` (`junit` by default) |
//! | `PREVIEWD_TESTS` | the selected test ids, one per line (absent: run every test) |
//! | `PREVIEWD_TESTS_COUNT` | how many ids `PREVIEWD_TESTS` holds (set with it) |
//! | `PREVIEWD_TEST_WORKERS` | `spec.tests.parallel` (default 1): workers the runner uses |
//! | `PREVIEWD_TEST_TIMEOUT_SECONDS` | `spec.tests.timeout` (default 30m) |
//! | `PREVIEWD_HEAD_SHA`, `PREVIEWD_PR_NUMBER` | the commit and pull request under test |
//!
//! URLs are in-cluster because the namespace's network policy lets its pods reach only
//! each other (and DNS). The runner writes a
//! [`TestRunSummary`](previewd_core::testrun::TestRunSummary) to `/dev/termination-log`
//! (`previewd junit-summary` converts JUnit XML into one; docs/TESTS.md). The run is
//! limited by `activeDeadlineSeconds` (the Job controller stops it) and, should that not
//! happen, by the stage timeout a minute later. The outcome goes to `status.tests`.
//!
//! The selection is computed by the environment advisor once per head commit (it has the
//! PR's changed files), recorded by the planner in `status.testSelection`
//! ([`recorded_selection`]) and read back here for the Job.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use previewd_core::testrun::{SummaryError, TestRunSummary, parse_summary};

use super::jobs::{
    JobState, deadline_seconds, job, job_state, restricted_job, service_env_name, terminated_runner,
};
use super::{NamespaceView, RenderInput, Stage, StageOutcome, StrategyError, WatchedKind};
use crate::advice::Advice;
use crate::children::ingress::urls;
use crate::crd::{PreviewEnvironment, PreviewEnvironmentStatus, TestSelector, TestSummary};
use crate::plan::object::DesiredObject;
use previewd_core::testselect::{
    SOURCE_DETERMINISTIC, SOURCE_FALLBACK, TestSelectionRequest, TestSelectionStatus,
};

/// Test run limit when `spec.tests.timeout` is not set.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Extra time the stage gives the Job controller to enforce `activeDeadlineSeconds`.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// Runs the repository's tests against the environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestRunStage;

/// The selector's name as the runner sees it.
pub fn selector_name(selector: TestSelector) -> &'static str {
    match selector {
        TestSelector::All => "all",
        TestSelector::ChangedFiles => "changed-files",
        TestSelector::AiSmart => "ai-smart",
    }
}

/// What the advisor is asked to select for `env`: `None` when it runs no tests.
pub fn selection_request(env: &PreviewEnvironment) -> Option<TestSelectionRequest> {
    let tests = env.spec.tests.as_ref().filter(|t| t.enabled)?;
    Some(TestSelectionRequest {
        selector: selector_name(tests.selector).to_owned(),
        spec: tests.selection.clone().unwrap_or_default(),
    })
}

/// The selection to record in `status.testSelection` for the advice of the head commit:
/// the advisor's, else (an advisor that selects no tests, or one that timed out) every
/// test, saying why. `None` when the environment runs no tests.
pub fn recorded_selection(
    env: &PreviewEnvironment,
    advice: &Advice,
) -> Option<TestSelectionStatus> {
    let request = selection_request(env)?;
    if let Some(tests) = &advice.tests {
        return Some(tests.clone());
    }
    Some(if request.selector == selector_name(TestSelector::All) {
        TestSelectionStatus::every_test(
            &request.selector,
            SOURCE_DETERMINISTIC,
            "selector all: every test",
        )
    } else {
        let why = advice
            .status
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        TestSelectionStatus::every_test(
            &request.selector,
            SOURCE_FALLBACK,
            format!("the advisor selected no tests{why}; running every test"),
        )
    })
}

/// The selection recorded for the environment's head commit, if any.
pub fn current_selection(env: &PreviewEnvironment) -> Option<&TestSelectionStatus> {
    let status = env.status.as_ref()?;
    if status.advised_sha.as_deref() != Some(env.spec.head_sha.as_str()) {
        return None;
    }
    status.test_selection.as_ref()
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The verdict on a test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestVerdict {
    /// Not finished.
    Running,
    /// The runner's summary, and whether the run passed (nothing failed, exit code 0).
    Finished {
        /// The summary.
        summary: TestRunSummary,
        /// Why the run failed despite its summary (non-zero exit code), if it did.
        problem: Option<String>,
    },
    /// No usable result: timeout, crash, missing or malformed summary.
    Broken(String),
}

impl TestRunStage {
    fn timeout_of(env: &PreviewEnvironment) -> Duration {
        env.spec
            .tests
            .as_ref()
            .and_then(|t| t.timeout)
            .map(|t| t.as_duration())
            .unwrap_or(DEFAULT_TEST_TIMEOUT)
    }

    /// The test Job of the environment's head commit.
    pub fn desired_job(&self, input: &RenderInput<'_>) -> Result<Job, StrategyError> {
        let env = input.env;
        let spec = env.spec.tests.clone().unwrap_or_default();
        let image = spec
            .image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .ok_or_else(|| StrategyError {
                reason: "InvalidSpec".into(),
                message: "spec.tests.enabled is set but spec.tests.image is not".into(),
            })?;
        let timeout = Self::timeout_of(env);
        let mut vars = Vec::new();
        let main = env
            .spec
            .services
            .iter()
            .find(|s| s.ingress_path.as_deref() == Some("/"))
            .or_else(|| env.spec.services.first());
        let internal = |s: &crate::crd::ServiceSpec| {
            format!("http://{}.{}.svc:{}", s.name, input.namespace, s.port)
        };
        if let Some(main) = main {
            vars.push(env_var("PREVIEW_URL", internal(main)));
        }
        for s in &env.spec.services {
            vars.push(env_var(
                &service_env_name("PREVIEW_URL_", &s.name),
                internal(s),
            ));
        }
        if let Some(host) = input.host {
            let tls = env.spec.ingress.as_ref().is_none_or(|i| i.tls);
            let (url, _) = urls(host, tls, &env.spec.services);
            vars.push(env_var("PREVIEW_PUBLIC_URL", url));
        }
        vars.push(env_var(
            "PREVIEWD_TEST_SELECTOR",
            selector_name(spec.selector),
        ));
        vars.push(env_var(
            "PREVIEWD_TEST_FRAMEWORK",
            spec.framework.unwrap_or_default().as_str(),
        ));
        if let Some(selection) = current_selection(env)
            && let Some(list) = selection.runner_tests()
        {
            vars.push(env_var("PREVIEWD_TESTS", list));
            vars.push(env_var(
                "PREVIEWD_TESTS_COUNT",
                selection.tests.len().to_string(),
            ));
        }
        vars.push(env_var(
            "PREVIEWD_TEST_WORKERS",
            spec.parallel.unwrap_or(1).max(1).to_string(),
        ));
        vars.push(env_var(
            "PREVIEWD_TEST_TIMEOUT_SECONDS",
            deadline_seconds(timeout).to_string(),
        ));
        vars.push(env_var("PREVIEWD_HEAD_SHA", env.spec.head_sha.clone()));
        vars.push(env_var(
            "PREVIEWD_PR_NUMBER",
            env.spec.pr_number.to_string(),
        ));
        let container = Container {
            image: Some(image),
            command: (!spec.command.is_empty()).then(|| spec.command.clone()),
            args: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(vars),
            resources: Some(super::jobs::stage_resources(env)),
            ..Container::default()
        };
        Ok(restricted_job(
            env,
            input.namespace,
            "tests",
            "previewd-tests",
            container,
            deadline_seconds(timeout),
            &input.config.stage_jobs,
        ))
    }

    /// Judges the run from the caches.
    pub fn verdict(&self, input: &RenderInput<'_>, view: &NamespaceView) -> TestVerdict {
        let Some(name) = self.desired_job(input).ok().and_then(|j| j.metadata.name) else {
            return TestVerdict::Broken("the test job cannot be rendered".into());
        };
        let state = job_state(job(view, &name).as_ref());
        if let Some(t) = terminated_runner(view, &name) {
            let problem = (t.exit_code != 0).then(|| {
                format!(
                    "test runner exited with code {}{}",
                    t.exit_code,
                    t.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            });
            return match parse_summary(t.message.as_deref().unwrap_or_default()) {
                Ok(summary) => TestVerdict::Finished { summary, problem },
                Err(e @ SummaryError::Missing) => TestVerdict::Broken(match problem {
                    Some(p) => format!("{p}; {e}"),
                    None => e.to_string(),
                }),
                Err(e) => TestVerdict::Broken(e.to_string()),
            };
        }
        match state {
            JobState::Failed { reason, message } if reason == "DeadlineExceeded" => {
                TestVerdict::Broken(format!(
                    "tests did not finish within {} (timeout)",
                    crate::plan::humanize(Self::timeout_of(input.env))
                ))
                .with_detail(&message)
            }
            JobState::Failed { reason, message } => {
                TestVerdict::Broken(format!("test job failed ({reason})")).with_detail(&message)
            }
            JobState::Succeeded => TestVerdict::Broken(format!(
                "test job finished but its pod left no summary: {}",
                SummaryError::Missing
            )),
            JobState::Missing | JobState::Running => TestVerdict::Running,
        }
    }
}

impl TestVerdict {
    fn with_detail(self, detail: &str) -> TestVerdict {
        match self {
            TestVerdict::Broken(m) if !detail.trim().is_empty() => {
                TestVerdict::Broken(format!("{m}: {}", detail.trim()))
            }
            other => other,
        }
    }
}

impl Stage for TestRunStage {
    fn name(&self) -> &str {
        "tests"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::full::<Job>()]
    }

    fn enabled(&self, env: &PreviewEnvironment) -> bool {
        env.spec.tests.as_ref().is_some_and(|t| t.enabled)
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        super::jobs::desired_job_object(&self.desired_job(input)?)
    }

    fn outcome(&self, input: &RenderInput<'_>, view: &NamespaceView) -> StageOutcome {
        match self.verdict(input, view) {
            TestVerdict::Running => StageOutcome::Running("running tests".into()),
            TestVerdict::Finished { summary, problem } => {
                let headline = format!("tests: {}", summary.headline());
                match problem {
                    _ if !summary.passed() => {
                        let names: Vec<&str> = summary
                            .failures
                            .iter()
                            .take(5)
                            .map(|f| f.name.as_str())
                            .collect();
                        StageOutcome::Failed(if names.is_empty() {
                            headline
                        } else {
                            format!("{headline}; failed: {}", names.join(", "))
                        })
                    }
                    Some(problem) => StageOutcome::Failed(format!("{headline}; {problem}")),
                    None => StageOutcome::Passed(headline),
                }
            }
            TestVerdict::Broken(message) => StageOutcome::Failed(message),
        }
    }

    fn timeout(&self, env: &PreviewEnvironment) -> Option<Duration> {
        Some(Self::timeout_of(env) + DEADLINE_GRACE)
    }

    fn record(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        outcome: &StageOutcome,
        status: &mut PreviewEnvironmentStatus,
    ) {
        let spec = input.env.spec.tests.clone().unwrap_or_default();
        let mut tests = TestSummary {
            sha: Some(input.env.spec.head_sha.clone()),
            selector: Some(selector_name(spec.selector).into()),
            job: self.desired_job(input).ok().and_then(|j| j.metadata.name),
            ..TestSummary::default()
        };
        if let TestVerdict::Finished { summary, .. } = self.verdict(input, view) {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            tests.total = n(summary.total);
            tests.passed = n(summary.passed);
            tests.failed = n(summary.failed);
            tests.skipped = n(summary.skipped);
            tests.duration_ms = Some(n(summary.duration_ms));
            tests.omitted_failures =
                (summary.omitted_failures > 0).then(|| n(summary.omitted_failures));
            tests.failed_tests = summary.failures.iter().map(|f| f.name.clone()).collect();
            tests.failures = summary.failures;
        }
        match outcome {
            StageOutcome::Running(_) => tests.state = Some("Running".into()),
            StageOutcome::Passed(_) => tests.state = Some("Passed".into()),
            StageOutcome::Failed(message) => {
                tests.state = Some("Failed".into());
                if tests.failed == 0 {
                    tests.error = Some(message.clone());
                }
            }
        }
        status.tests = Some(tests);
    }
}
