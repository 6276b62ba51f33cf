//! A Kubernetes-free view of one preview environment, and the two interfaces through
//! which the controller talks to the outside world: the [`EnvironmentAdvisor`] (which
//! services a change affects, how long and how large the environment should be) and the
//! [`EnvironmentReporter`] (commit status, deployment, PR comment).
//!
//! Both take an [`EnvironmentView`], so the AI engine and the GitHub client implement
//! them without depending on kube; the Kubernetes adapter builds the view from its
//! custom resource.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Money, Phase, Tier, Ttl};

/// Test results of an environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestResults {
    /// Tests run.
    pub total: i64,
    /// Passed.
    pub passed: i64,
    /// Failed.
    pub failed: i64,
    /// Skipped.
    pub skipped: i64,
    /// Names of failed tests.
    pub failed_tests: Vec<String>,
    /// Why each failed test failed (by name), where the runner said.
    pub failure_reasons: BTreeMap<String, String>,
}

/// One preview environment: what it is for (spec) and where it stands (status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvironmentView {
    /// Namespace of the environment object (where its repository settings live).
    pub namespace: String,
    /// Name of the environment object.
    pub name: String,
    /// UID of the environment object, when stored.
    pub uid: Option<String>,
    /// `owner/name`.
    pub repository: String,
    /// Pull request number.
    pub pr_number: u64,
    /// Head branch.
    pub branch: String,
    /// Head commit wanted.
    pub head_sha: String,
    /// Base branch.
    pub base_branch: Option<String>,
    /// PR author.
    pub author: Option<String>,
    /// Name of the repository settings the environment was rendered from.
    pub repository_ref: Option<String>,
    /// Names of the services in the spec.
    pub services: Vec<String>,
    /// Lifecycle phase.
    pub phase: Option<Phase>,
    /// Main URL.
    pub url: Option<String>,
    /// Service name → URL.
    pub urls: BTreeMap<String, String>,
    /// Head commit deployed.
    pub deployed_sha: Option<String>,
    /// Status message (what it waits for, why it failed). Untrusted text.
    pub message: Option<String>,
    /// Test results.
    pub tests: Option<TestResults>,
    /// Estimated cost per day.
    pub estimated_daily: Option<Money>,
    /// Spend so far.
    pub actual_to_date: Option<Money>,
    /// Why the cost budget is exceeded and what the policy does, while it is.
    pub budget_exceeded: Option<String>,
    /// When the environment expires.
    pub expires_at: Option<Timestamp>,
    /// The environment will be deleted soon (within the expiry warning time).
    pub expiring_soon: bool,
    /// Why the environment is asleep (workloads scaled to zero), when it is.
    pub sleeping: Option<String>,
    /// Since when it is asleep.
    pub sleeping_since: Option<Timestamp>,
    /// The answer to the last PR command. Untrusted text (it quotes the command).
    pub command_reply: Option<String>,
    /// When the environment was created.
    pub created_at: Option<Timestamp>,
    /// When it first became ready for its current head commit.
    pub ready_at: Option<Timestamp>,
    /// The last push to the PR.
    pub last_push: Option<Timestamp>,
    /// The tier its workloads run at.
    pub tier: Option<Tier>,
    /// Which tests to select for the head commit, when the environment runs tests.
    pub test_selection: Option<crate::testselect::TestSelectionRequest>,
    /// The token of the report the controller is waiting to see delivered
    /// (`status.pendingReport`), when it keeps reports durable: a reporter that
    /// [acknowledges](EnvironmentReporter::acknowledge_with) passes it back once the
    /// report reached its destination.
    pub report_token: Option<String>,
}

impl EnvironmentView {
    /// `namespace/name` of the environment object.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the AI engine decided, as recorded in the environment's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiStatus {
    /// Services detected as affected by the change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services_detected: Vec<String>,
    /// Confidence of the detection, 0..1, as a decimal string (e.g. `0.97`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
    /// `deterministic`, `model` or `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why the deterministic answer was used, when the model failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Predicted lifespan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_ttl: Option<Ttl>,
    /// Recommended tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_tier: Option<Tier>,
}

/// Advice for one head commit of an environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advice {
    /// Services to deploy; `None` means every service in the spec.
    pub services: Option<Vec<String>>,
    /// What to record in `status.ai`.
    pub status: AiStatus,
    /// The tests selected for the head commit (`status.testSelection`), when the view
    /// asked for a selection; the controller runs every test when this is `None`.
    pub tests: Option<crate::testselect::TestSelectionStatus>,
}

/// Advises the controller about an environment.
///
/// The controller asks once per head commit, records the answer in `status.ai`, and,
/// when the environment's `serviceSelection` is `Affected`, deploys only the advised
/// services. An advisor must always answer: when a model is slow, wrong or absent it
/// returns the deterministic answer with the reason (the trait has no error type on
/// purpose).
#[async_trait]
pub trait EnvironmentAdvisor: Send + Sync {
    /// Advice for the environment's current head commit.
    async fn advise(&self, env: &EnvironmentView) -> Advice;

    /// The environment is gone: drop what was kept for it (cached model answers).
    async fn environment_deleted(&self, _env: &EnvironmentView) {}
}

/// The advisor used when no AI engine is configured: every service, nothing recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAdvice;

#[async_trait]
impl EnvironmentAdvisor for NoAdvice {
    async fn advise(&self, _env: &EnvironmentView) -> Advice {
        Advice::default()
    }
}

/// Receives phase changes of environments.
///
/// The controller calls the reporter after it recorded a phase change in the status. A
/// reporter must never block or fail the environment: implementations queue the work
/// and retry on their own; the environment's status stays the source of truth.
#[async_trait]
pub trait EnvironmentReporter: Send + Sync {
    /// The environment's status changed phase (or its URL or test results changed).
    async fn environment_changed(&self, env: &EnvironmentView);

    /// The environment is gone (finalizer released).
    async fn environment_deleted(&self, env: &EnvironmentView);

    /// Offers the reporter a way to confirm deliveries. A reporter that returns `true`
    /// promises to call [`ReportAcknowledger::delivered`] with the view's
    /// [`report_token`](EnvironmentView::report_token) once a report reached its
    /// destination (or failed for good). The controller then records each report in the
    /// environment's status until it is confirmed, and sends it again after a restart,
    /// so a crash between the status write and the send loses nothing. The default keeps
    /// reports in memory only.
    fn acknowledge_with(&self, _acknowledger: std::sync::Arc<dyn ReportAcknowledger>) -> bool {
        false
    }

    /// Gives the reporter the controller's authorisation check, to ask right before it
    /// writes anything about an environment (a report may wait minutes in a queue; the
    /// claim that allowed it may be gone by then). A reporter that writes to a
    /// source-control system must ask it; the default ignores it.
    fn authorise_with(&self, _authoriser: std::sync::Arc<dyn ReportAuthoriser>) {}
}

/// Whether an environment may (still) act for its repository: asked by reporters right
/// before each write, with the same rules the controller applied when it planned the
/// report.
pub trait ReportAuthoriser: Send + Sync {
    /// `Ok` when `env` may be reported to its repository; `deleted` for the last report
    /// of an environment that is gone. `Err` says why not.
    fn authorise(&self, env: &EnvironmentView, deleted: bool) -> Result<(), String>;
}

/// Confirms that an environment's report was delivered, so it is not sent again.
#[async_trait]
pub trait ReportAcknowledger: Send + Sync {
    /// The report `token` of `env` reached its destination, or failed in a way that
    /// sending it again cannot fix. Confirming a token that was since replaced by a newer
    /// report does nothing.
    async fn delivered(&self, env: &EnvironmentView, token: &str);
}

/// Several reporters, each told about every change in turn (each queues its own work, so
/// none waits for another).
#[derive(Default, Clone)]
pub struct Reporters(pub Vec<std::sync::Arc<dyn EnvironmentReporter>>);

#[async_trait]
impl EnvironmentReporter for Reporters {
    async fn environment_changed(&self, env: &EnvironmentView) {
        for reporter in &self.0 {
            reporter.environment_changed(env).await;
        }
    }

    async fn environment_deleted(&self, env: &EnvironmentView) {
        for reporter in &self.0 {
            reporter.environment_deleted(env).await;
        }
    }

    /// Durable when any reporter is. A report is confirmed by the first reporter that
    /// acknowledges; the others keep their in-memory queues.
    fn acknowledge_with(&self, acknowledger: std::sync::Arc<dyn ReportAcknowledger>) -> bool {
        let mut durable = false;
        for reporter in &self.0 {
            durable |= reporter.acknowledge_with(acknowledger.clone());
        }
        durable
    }

    fn authorise_with(&self, authoriser: std::sync::Arc<dyn ReportAuthoriser>) {
        for reporter in &self.0 {
            reporter.authorise_with(authoriser.clone());
        }
    }
}

/// A reporter that reports nothing (no source-control system configured).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReporter;

#[async_trait]
impl EnvironmentReporter for NoopReporter {
    async fn environment_changed(&self, _env: &EnvironmentView) {}
    async fn environment_deleted(&self, _env: &EnvironmentView) {}
}
