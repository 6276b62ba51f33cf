//! The data-seed stage: when `spec.testData.enabled`, once the services are available, a
//! Job in the environment's namespace runs the operator's own image as
//! `previewd seed-data` with
//!
//! - `PREVIEWD_SEED_SPEC`: `spec.testData` as JSON;
//! - `DATABASE_URL`: from a Secret in the same namespace (`spec.testData.databaseSecret`,
//!   default Secret `preview-database`, key `url`).
//!
//! The subcommand writes a [`SeedReport`](previewd_core::testrun::SeedReport)
//! (`{"tables":N,"rows":N,"durationMs":N,"error":null}`) to its termination message.
//! The outcome goes to `status.testData` and the `DataSeeded` condition. A new head
//! commit seeds again (the Job is named after it).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, SecretKeySelector};
use previewd_core::testrun::parse_seed_report;

use super::jobs::{JobState, deadline_seconds, job, job_state, restricted_job, terminated_runner};
use super::{NamespaceView, RenderInput, Stage, StageOutcome, StrategyError, WatchedKind};
use crate::crd::{PreviewEnvironment, PreviewEnvironmentStatus, TestDataStatus, condition};
use crate::plan::conditions::set_condition;
use crate::plan::object::DesiredObject;

/// How long a seed Job may run.
pub const SEED_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Seeds the environment's database with `previewd seed-data`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedStage;

impl SeedStage {
    /// The seed Job of the environment's head commit.
    pub fn desired_job(&self, input: &RenderInput<'_>) -> Result<Job, StrategyError> {
        let env = input.env;
        let spec = env.spec.test_data.clone().unwrap_or_default();
        let secret = spec.database_secret.clone().unwrap_or_default();
        let seed_spec = serde_json::to_string(&spec).map_err(|e| StrategyError {
            reason: "RenderFailed".into(),
            message: format!("cannot serialise spec.testData: {e}"),
        })?;
        let container = Container {
            image: Some(input.config.stage_jobs.operator_image.clone()),
            args: Some(vec!["seed-data".into()]),
            env: Some(vec![
                EnvVar {
                    name: "PREVIEWD_SEED_SPEC".into(),
                    value: Some(seed_spec),
                    value_from: None,
                },
                EnvVar {
                    name: "DATABASE_URL".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret.name,
                            key: secret.key,
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                },
            ]),
            resources: Some(super::jobs::stage_resources(env)),
            ..Container::default()
        };
        Ok(restricted_job(
            env,
            input.namespace,
            "seed",
            "previewd-seed",
            container,
            deadline_seconds(SEED_TIMEOUT),
            &input.config.stage_jobs,
        ))
    }

    fn job_name(&self, input: &RenderInput<'_>) -> Option<String> {
        self.desired_job(input).ok()?.metadata.name
    }

    /// What the caches say, as the status records it.
    pub fn judge(&self, input: &RenderInput<'_>, view: &NamespaceView) -> TestDataStatus {
        let name = self.job_name(input).unwrap_or_default();
        let mut status = TestDataStatus {
            state: "Running".into(),
            sha: Some(input.env.spec.head_sha.clone()),
            job: Some(name.clone()),
            ..TestDataStatus::default()
        };
        let state = job_state(job(view, &name).as_ref());
        let terminated = terminated_runner(view, &name);
        let fail = |mut s: TestDataStatus, error: String| {
            s.state = "Failed".into();
            s.error = Some(error);
            s
        };
        match (terminated, &state) {
            (Some(t), _) => match t.message.as_deref().map(parse_seed_report) {
                Some(Ok(report)) => {
                    status.tables = Some(to_i64(report.tables));
                    status.rows = Some(to_i64(report.rows));
                    status.duration_ms = Some(to_i64(report.duration_ms));
                    match report.error {
                        Some(error) => fail(status, format!("seeding failed: {error}")),
                        None if t.exit_code != 0 => {
                            fail(status, format!("seed job exited with code {}", t.exit_code))
                        }
                        None => {
                            status.state = "Seeded".into();
                            status
                        }
                    }
                }
                Some(Err(e)) => fail(status, format!("seed job: {e}")),
                None => fail(
                    status,
                    format!(
                        "seed job exited with code {} ({}) and wrote no report",
                        t.exit_code,
                        t.reason.as_deref().unwrap_or("no reason")
                    ),
                ),
            },
            (None, JobState::Failed { reason, message }) if reason == "DeadlineExceeded" => fail(
                status,
                format!(
                    "seeding did not finish within {}: {message}",
                    crate::plan::humanize(SEED_TIMEOUT)
                ),
            ),
            (None, JobState::Failed { reason, message }) => {
                fail(status, format!("seed job failed ({reason}): {message}"))
            }
            (None, JobState::Succeeded) => fail(
                status,
                "seed job finished but its pod left no report".to_string(),
            ),
            (None, JobState::Missing | JobState::Running) => status,
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Stage for SeedStage {
    fn name(&self) -> &str {
        "seed"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::full::<Job>()]
    }

    fn enabled(&self, env: &PreviewEnvironment) -> bool {
        env.spec.test_data.as_ref().is_some_and(|t| t.enabled)
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        super::jobs::desired_job_object(&self.desired_job(input)?)
    }

    fn outcome(&self, input: &RenderInput<'_>, view: &NamespaceView) -> StageOutcome {
        let status = self.judge(input, view);
        match status.state.as_str() {
            "Seeded" => StageOutcome::Passed(format!(
                "test data seeded: {} rows in {} tables",
                status.rows.unwrap_or_default(),
                status.tables.unwrap_or_default()
            )),
            "Failed" => StageOutcome::Failed(status.error.unwrap_or_default()),
            _ => StageOutcome::Running("seeding test data".into()),
        }
    }

    fn timeout(&self, _env: &PreviewEnvironment) -> Option<Duration> {
        Some(SEED_TIMEOUT + Duration::from_secs(60))
    }

    fn record(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        outcome: &StageOutcome,
        status: &mut PreviewEnvironmentStatus,
    ) {
        let mut data = self.judge(input, view);
        let (seeded, reason) = match outcome {
            StageOutcome::Passed(_) => (true, "DataSeeded"),
            StageOutcome::Failed(message) => {
                data.state = "Failed".into();
                data.error = Some(message.clone());
                (false, "SeedFailed")
            }
            StageOutcome::Running(_) => (false, "Seeding"),
        };
        let message = match outcome {
            StageOutcome::Passed(m) | StageOutcome::Failed(m) | StageOutcome::Running(m) => {
                m.clone()
            }
        };
        status.test_data = Some(data);
        set_condition(
            &mut status.conditions,
            condition::DATA_SEEDED,
            seeded,
            reason,
            &message,
            input.env.metadata.generation,
            input.now,
        );
    }
}
