//! The hook through which the AI engine (or any embedder) advises the controller about an
//! environment. The interface lives in `previewd-core` ([`EnvironmentAdvisor`] takes an
//! [`EnvironmentView`], so implementations need no kube); this module re-exports it and
//! builds the view from the custom resource.

pub use previewd_core::environment::{Advice, EnvironmentAdvisor, EnvironmentView, NoAdvice};

use kube::ResourceExt;
use previewd_core::environment::TestResults;

use crate::crd::{ANNOTATION_COMMAND_REPLY, PreviewEnvironment, condition};

/// The Kubernetes-free view of an environment (spec and status).
pub fn view_of(env: &PreviewEnvironment) -> EnvironmentView {
    let status = env.status.clone().unwrap_or_default();
    let expiring_soon = condition_true(&status, condition::EXPIRING_SOON).is_some();
    let sleeping = condition_true(&status, condition::SLEEPING)
        .map(|c| (c.message.clone(), c.last_transition_time.0));
    let created_at = status
        .created_at
        .as_ref()
        .or(env.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    let ready_at = status.ready_at.as_ref().map(|t| t.0);
    let status_ai_tier = status.ai.as_ref().and_then(|ai| ai.recommended_tier);
    EnvironmentView {
        namespace: env.namespace().unwrap_or_default(),
        name: env.name_any(),
        uid: env.uid(),
        repository: env.spec.repository.clone(),
        pr_number: u64::try_from(env.spec.pr_number).unwrap_or_default(),
        branch: env.spec.branch.clone(),
        head_sha: env.spec.head_sha.clone(),
        base_branch: env.spec.base_branch.clone(),
        author: env.spec.author.clone(),
        repository_ref: env.spec.repository_ref.clone(),
        services: env.spec.services.iter().map(|s| s.name.clone()).collect(),
        phase: status.phase,
        url: status.url,
        urls: status.urls,
        deployed_sha: status.deployed_sha,
        message: status.message,
        // Results only: a run in progress, or one that ended without results (timeout,
        // crash, malformed summary: the status message says why), shows none.
        tests: status
            .tests
            .filter(|t| t.state.as_deref() != Some("Running") && t.error.is_none())
            .map(|t| TestResults {
                total: t.total,
                passed: t.passed,
                failed: t.failed,
                skipped: t.skipped,
                failed_tests: t.failed_tests,
                failure_reasons: t
                    .failures
                    .into_iter()
                    .filter(|f| !f.reason.is_empty())
                    .map(|f| (f.name, f.reason))
                    .collect(),
            }),
        estimated_daily: status.costs.as_ref().and_then(|c| c.estimated_daily),
        actual_to_date: status.costs.as_ref().and_then(|c| c.actual_to_date),
        budget_exceeded: status
            .conditions
            .iter()
            .find(|c| c.type_ == crate::crd::condition::BUDGET_EXCEEDED && c.status == "True")
            .map(|c| c.message.clone()),
        expires_at: status.expires_at.map(|t| t.0),
        expiring_soon,
        sleeping_since: sleeping.as_ref().map(|s| s.1),
        sleeping: sleeping.map(|s| s.0),
        command_reply: env
            .annotations()
            .get(ANNOTATION_COMMAND_REPLY)
            .map(|r| r.split_once(' ').map_or("", |(_, text)| text).to_string())
            .filter(|r| !r.is_empty()),
        created_at,
        ready_at,
        last_push: crate::plan::expiry::last_push(env),
        tier: Some(
            env.spec
                .resources
                .tier
                .unwrap_or_default()
                .resolve(status_ai_tier),
        ),
        test_selection: crate::strategy::testrun::selection_request(env),
        report_token: status.pending_report,
    }
}

fn condition_true<'a>(
    status: &'a crate::crd::PreviewEnvironmentStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}
