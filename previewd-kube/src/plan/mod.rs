//! The planner: a pure function from an environment, what the watch caches hold, the
//! advice and the time to what the controller must do.
//!
//! ```text
//! observe (async, reads caches) → plan (pure, this module) → execute (async, writes)
//! ```
//!
//! [`plan`] performs no I/O and is not async. It returns the next phase and its reason,
//! the status and conditions, the objects to apply and to delete, the Events, whether to
//! report to the source-control system, what to do with the finalizer and when to look
//! again. The phase machine itself is `previewd_core::phase`; this module turns what was
//! observed into its observations. It depends on neither the controller nor its caches:
//! its settings are [`PlannerConfig`] and its conditions [`conditions`].
//!
//! A live environment goes through these steps, one module each, in this order; any of
//! them may end the pass early (a deletion, a stall):
//!
//! 1. [`admit`]: expiry, a delete request, the authorisation of the environment against
//!    the repository claims ([`crate::tenancy`]), spec problems the schema cannot see;
//! 2. [`lifecycle`]: sleep and wake, redeploy and retry, a new head commit, the CI gate,
//!    the advice for the head commit;
//! 3. [`render`]: the namespace, the host, the strategy, and every object the
//!    environment needs (guard rails, Ingress, copied Secrets, the application), checked
//!    by what they do ([`crate::strategy::rules`]);
//! 4. the budget ([`budget`], [`cost`]), which may delete the environment or put it to
//!    sleep ([`sleep`]);
//! 5. [`provision`]: waves, health, the phases the pass crosses, then the post-Ready
//!    [`stages`], then what to apply and prune;
//! 6. [`live`]: conditions, Events, the report and the requeue.
//!
//! A deleted environment is torn down by [`teardown`]. Every transition and failure
//! reason has a unit test in `tests.rs`.

mod admit;
pub mod budget;
pub mod conditions;
mod config;
pub mod cost;
pub mod expiry;
pub mod fork;
pub mod health;
pub mod host;
mod lifecycle;
mod live;
#[cfg(test)]
mod manifests_tests;
pub mod namespace;
pub mod object;
mod pass;
mod provision;
mod render;
pub mod sleep;
mod stages;
mod teardown;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::ResourceExt;
use kube::core::ApiResource;
use previewd_core::checks::{Gate, RecordedChecks, gate};
use previewd_core::{Phase, Ttl};

use crate::advice::Advice;
use crate::crd::{
    ANNOTATION_CHECKS, DeployPolicy, PreviewEnvironment, PreviewEnvironmentStatus,
    PreviewRepository, condition,
};
use crate::strategy::{Stage, Strategies, WatchedKind};
pub use config::PlannerConfig;
use host::HostClaim;
use namespace::NamespaceMeta;
use object::{ChildKey, ObservedChild};
pub use render::desired_objects;

/// How soon an environment whose deletion was just requested (expiry, budget, a PR
/// command) is looked at again, besides the watch that reports the deletion.
pub const TEARDOWN_POLL: Duration = Duration::from_secs(1);

/// How often a terminating environment looks again at the namespace (or the objects
/// outside it) being deleted. This is only a safety net: the watches of namespaces and of
/// those kinds wake the environment as soon as the object is gone. Polling every second
/// instead made 1000 closing environments cost 1000 reconciles per second, which starved
/// the environments whose teardown had not started yet.
pub const TEARDOWN_WAIT: Duration = Duration::from_secs(30);

/// Failure reasons the `Ready` condition can carry.
pub const FAILURE_REASONS: [&str; 4] = [
    "ReadinessDeadlineExceeded",
    "ServiceFailed",
    "TestsFailed",
    "ChecksFailed",
];

/// How often an environment waiting for CI checks looks again (besides the webhook's
/// annotation, which wakes it at once, and the fallback poll of the GitHub API).
pub const CHECKS_RECHECK: Duration = Duration::from_secs(30);

/// Everything the planner looks at besides the environment itself.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The candidate namespaces that exist, by name ([`namespace::candidates`]).
    pub namespaces: BTreeMap<String, NamespaceMeta>,
    /// What each existing candidate namespace holds for this environment.
    pub views: BTreeMap<String, crate::strategy::NamespaceView>,
    /// Advice for the current head commit, when the status does not record it yet.
    pub advice: Option<Advice>,
    /// Hosts claimed by other environments.
    pub host_claims: BTreeMap<String, Vec<HostClaim>>,
    /// The `PreviewRepository` objects that bear on the environment's authorisation:
    /// every one that claims `spec.repository`, and the one `spec.repositoryRef` names.
    /// The planner decides from them, with the claim policy, whether the environment
    /// may act at all and which settings it gets ([`crate::tenancy::authorise`]).
    pub repositories: Vec<Arc<PreviewRepository>>,
    /// Secrets of the operator's secret source namespace that the repository names and
    /// that may be copied, by name.
    pub source_secrets: BTreeMap<String, Arc<Secret>>,
    /// Optional kinds (`apiVersion/kind`) the cluster does not serve.
    pub missing_kinds: BTreeSet<String>,
    /// The environment's objects outside preview namespaces (a strategy's
    /// [`crate::strategy::DeployStrategy::external_namespace`]), marked with its UID.
    pub external: BTreeMap<ChildKey, ExternalChild>,
    /// Required checks of the head commit as the source-control system reported them
    /// to the fallback poll, when it ran (merged with the webhook's annotation).
    pub polled_checks: Option<RecordedChecks>,
}

/// An object of the environment outside its namespace.
#[derive(Clone, Debug, Default)]
pub struct ExternalChild {
    /// Its namespace.
    pub namespace: String,
    /// What the planner needs to apply or prune it.
    pub child: ObservedChild,
    /// The whole object, for kinds watched whole.
    pub object: Option<Arc<kube::api::DynamicObject>>,
}

/// The planner's inputs.
#[derive(Clone, Copy)]
pub struct PlanInput<'a> {
    /// The environment as read from the cache.
    pub env: &'a PreviewEnvironment,
    /// What the caches hold.
    pub observed: &'a Observed,
    /// The time of this reconcile.
    pub now: jiff::Timestamp,
    /// The operator's settings.
    pub config: &'a PlannerConfig,
    /// The deploy strategies offered; the environment's is chosen by name.
    pub strategies: &'a Strategies,
    /// What happens after Ready, in order.
    pub stages: &'a [Arc<dyn Stage>],
}

/// What to do with the finalizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FinalizerAction {
    /// Leave it.
    #[default]
    Keep,
    /// Add it before anything else is written.
    Add,
    /// Teardown finished: release it after the status is written.
    Release,
}

/// What to tell the source-control system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The phase (or URL, or results) changed.
    Changed,
    /// The environment is gone.
    Deleted,
}

/// An Event to publish on the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (else Normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Message for people.
    pub note: String,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write (written only when it differs from the live one).
    pub status: PreviewEnvironmentStatus,
    /// Finalizer handling.
    pub finalizer: FinalizerAction,
    /// Delete the environment (teardown follows through the finalizer): it expired, or
    /// its budget policy says so.
    pub delete_environment: bool,
    /// Why the environment is deleted: `TTLExpired` or `BudgetExceeded`.
    pub deletion_reason: Option<&'static str>,
    /// Annotations to set (`Some`) or remove (`None`) on the environment itself.
    pub annotate: BTreeMap<String, Option<String>>,
    /// Objects to server-side apply, in order.
    pub apply: Vec<object::DesiredObject>,
    /// Objects to delete.
    pub delete: Vec<object::ChildRef>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// What to report.
    pub report: Option<Report>,
    /// Every phase this plan enters, in order: a pass that takes an environment from
    /// Provisioning through Ready to Testing enters both, and each counts (timestamps,
    /// metrics, Events).
    pub entered: Vec<Phase>,
    /// When to look again; `None` waits for a change.
    pub requeue_after: Option<Duration>,
}

impl Plan {
    fn idle(status: PreviewEnvironmentStatus) -> Plan {
        Plan {
            status,
            finalizer: FinalizerAction::Keep,
            delete_environment: false,
            deletion_reason: None,
            annotate: BTreeMap::new(),
            apply: Vec::new(),
            delete: Vec::new(),
            events: Vec::new(),
            report: None,
            entered: Vec::new(),
            requeue_after: None,
        }
    }

    /// The last phase this plan enters, if any.
    pub fn last_entered(&self) -> Option<Phase> {
        self.entered.last().copied()
    }
}

/// Every kind the controller watches in preview namespaces besides Deployments, Pods and
/// Namespaces (always watched): the guard rails and the Ingress, plus what the strategy
/// and the stages create.
pub fn watched_kinds(strategies: &Strategies, stages: &[Arc<dyn Stage>]) -> Vec<WatchedKind> {
    let mut kinds = vec![
        WatchedKind::metadata::<ResourceQuota>(),
        WatchedKind::metadata::<LimitRange>(),
        WatchedKind::metadata::<NetworkPolicy>(),
        WatchedKind::metadata::<Ingress>(),
    ];
    for strategy in strategies.iter() {
        kinds.extend(strategy.watched_kinds());
    }
    for stage in stages {
        kinds.extend(stage.watched_kinds());
    }
    // A kind watched both ways is watched whole.
    let whole: BTreeSet<(String, String)> = kinds
        .iter()
        .filter(|k| k.full)
        .map(|k| (k.resource.api_version.clone(), k.resource.kind.clone()))
        .collect();
    let mut seen = BTreeSet::new();
    kinds.retain(|k| {
        seen.insert((k.resource.api_version.clone(), k.resource.kind.clone()))
            && !matches!(k.resource.kind.as_str(), "Deployment" | "Pod" | "Namespace")
    });
    for k in &mut kinds {
        k.full |= whole.contains(&(k.resource.api_version.clone(), k.resource.kind.clone()));
    }
    kinds
}

/// The environment as deployed: with `serviceSelection: Affected`, only the selected
/// services (never none: an empty selection deploys everything); `tier: auto` resolved
/// to the advisor's recommendation.
pub fn effective_environment(
    env: &PreviewEnvironment,
    status: &PreviewEnvironmentStatus,
) -> PreviewEnvironment {
    let mut effective = env.clone();
    // The test Job passes on the selection recorded for this head commit.
    let recorded = effective.status.get_or_insert_default();
    recorded.test_selection = status.test_selection.clone();
    recorded.advised_sha = status.advised_sha.clone();
    // The services the detector selected mark their Deployments in the same pass.
    recorded.selected_services = status.selected_services.clone();
    if let Some(choice) = env.spec.resources.tier {
        let recommended = status.ai.as_ref().and_then(|ai| ai.recommended_tier);
        effective.spec.resources.tier = Some(choice.resolve(recommended).into());
    }
    if env.spec.service_selection == Some(DeployPolicy::Affected)
        && let Some(selected) = status.selected_services.as_ref().filter(|s| !s.is_empty())
    {
        effective
            .spec
            .services
            .retain(|s| selected.contains(&s.name));
        if effective.spec.services.is_empty() {
            effective.spec.services = env.spec.services.clone();
        }
    }
    effective
}

/// Plans one reconcile.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut plan = if input.env.metadata.deletion_timestamp.is_some() {
        teardown::plan_teardown(input)
    } else {
        live::plan_live(input)
    };
    durable_report(input, &mut plan);
    plan
}

/// With [`PlannerConfig::durable_reports`], records a new report in
/// `status.pendingReport` (a token: the time of the plan) in the same status write as the
/// change it reports, and reports again while a recorded one is not confirmed, so a
/// report survives a crash between the status write and the send. A report made while
/// the finalizer is released is not recorded: the object is gone once it is sent. An
/// environment no claim authorises reports nothing, a pending report included.
fn durable_report(input: &PlanInput<'_>, plan: &mut Plan) {
    if !input.config.durable_reports {
        plan.status.pending_report = None;
        return;
    }
    if admit::refused(input) {
        plan.status.pending_report = None;
        plan.report = None;
        return;
    }
    match plan.report {
        Some(Report::Changed) => plan.status.pending_report = Some(input.now.to_string()),
        Some(Report::Deleted) => {}
        None if plan.status.pending_report.is_some() => plan.report = Some(Report::Changed),
        None => {}
    }
}

/// Whether `env` may act for its repository, and with which settings, from the
/// `PreviewRepository` objects observed and the claim policy
/// ([`crate::tenancy::authorise`]). The planner's first decision; the controller asks it
/// too before it reads anything from the source-control system for the environment.
pub fn authorisation(
    env: &PreviewEnvironment,
    observed: &Observed,
    config: &PlannerConfig,
) -> Result<crate::tenancy::Grant, crate::tenancy::Refusal> {
    let namespace = env.namespace().unwrap_or_default();
    crate::tenancy::authorise(
        crate::tenancy::Subject {
            namespace: &namespace,
            repository: &env.spec.repository,
            repository_ref: env.spec.repository_ref.as_deref(),
        },
        &observed.repositories,
        &config.claim_policy,
    )
}

/// The verdict on the head commit's required checks: the webhook's annotation merged
/// with the fallback poll's answer.
pub fn checks_gate(env: &PreviewEnvironment, polled: Option<&RecordedChecks>) -> Gate {
    if env.spec.required_checks.is_empty() {
        return Gate::Open;
    }
    let recorded: RecordedChecks = env
        .annotations()
        .get(ANNOTATION_CHECKS)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let recorded = match polled {
        Some(p) => recorded.merged(p),
        None => recorded,
    };
    gate(&env.spec.required_checks, &env.spec.head_sha, &recorded)
}

/// The reason of the `Ready` condition recorded in `status`.
fn ready_reason(status: &PreviewEnvironmentStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}

/// The reason of a failure: the observation that caused it, or, on later reconciles of
/// an environment already in Failed, the reason recorded when it failed.
pub fn reason_of_failure(old: &PreviewEnvironmentStatus, reason: &'static str) -> &'static str {
    if let Some(found) = FAILURE_REASONS.iter().find(|f| **f == reason) {
        return found;
    }
    old.conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .and_then(|c| FAILURE_REASONS.iter().find(|f| **f == c.reason))
        .copied()
        .unwrap_or("Failed")
}

pub(crate) fn humanize(d: Duration) -> String {
    Ttl::try_from(d)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{d:?}"))
}

/// The time from `now` to `at` (zero when past), plus a few milliseconds so that the
/// reconcile lands after `at`.
fn until(now: jiff::Timestamp, at: jiff::Timestamp) -> Duration {
    at.duration_since(now).try_into().unwrap_or(Duration::ZERO) + Duration::from_millis(5)
}

fn is_true(status: &PreviewEnvironmentStatus, type_: &str) -> bool {
    conditions::condition_is_true(&status.conditions, type_)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Kinds whose controllers recreate what they own while it is deleted: deleted before
/// their namespace.
fn is_workload_controller(key: &ChildKey) -> bool {
    matches!(
        (key.api_version.as_str(), key.kind.as_str()),
        (
            "apps/v1",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
        ) | ("batch/v1", "Job" | "CronJob")
    )
}

/// The API resource of a key, from the kinds the controller knows.
fn resource_of(key: &ChildKey, input: &PlanInput<'_>) -> Option<ApiResource> {
    use k8s_openapi::api::apps::v1::Deployment;
    if key.kind == "Deployment" && key.api_version == "apps/v1" {
        return Some(ApiResource::erase::<Deployment>(&()));
    }
    watched_kinds(input.strategies, input.stages)
        .into_iter()
        .chain(crate::children::httproute::watched_kinds(
            &input.config.routing,
        ))
        .chain(crate::children::waker::watched_kinds(
            input.config.waker.as_ref(),
        ))
        .map(|k| k.resource)
        .find(|r| r.kind == key.kind && r.api_version == key.api_version)
}
