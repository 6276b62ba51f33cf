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
//! observed into its observations. Every transition and failure reason has a unit test
//! in `tests.rs`.

pub mod budget;
pub mod cost;
pub mod expiry;
pub mod fork;
pub mod health;
pub mod host;
#[cfg(test)]
mod manifests_tests;
pub mod namespace;
pub mod object;
pub mod sleep;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::ApiResource;
use previewd_core::checks::{Gate, RecordedChecks, gate};
use previewd_core::phase::transition;
use previewd_core::{Observation, Phase, Ttl, tier};

use crate::advice::Advice;
use crate::children::ingress::{desired_ingress, urls};
use crate::children::namespace::{
    add_egress, desired_allow_policy, desired_default_deny, desired_limit_range, desired_namespace,
    desired_resource_quota,
};
use crate::controller::ControllerConfig;
use crate::controller::status::set_condition;
use crate::crd::{
    ANNOTATION_CHECKS, ANNOTATION_COMMAND_REPLY, ANNOTATION_DELETE_REQUESTED, ANNOTATION_REDEPLOY,
    ANNOTATION_RETRY, DeployPolicy, FINALIZER, PreviewEnvironment, PreviewEnvironmentStatus,
    PreviewRepository, condition,
};
use crate::strategy::{
    DeployStrategy, NamespaceView, RenderInput, Stage, StageOutcome, Strategies, StrategyError,
    WatchedKind,
};
use health::Health;
use host::{HostChoice, HostClaim};
use namespace::{NamespaceChoice, NamespaceMeta};
use object::{ChildKey, ChildRef, DesiredObject, ObservedChild};

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
    pub views: BTreeMap<String, NamespaceView>,
    /// Advice for the current head commit, when the status does not record it yet.
    pub advice: Option<Advice>,
    /// Hosts claimed by other environments.
    pub host_claims: BTreeMap<String, Vec<HostClaim>>,
    /// The `PreviewRepository` named by `spec.repositoryRef`, when it exists.
    pub repository: Option<std::sync::Arc<PreviewRepository>>,
    /// Secrets of the operator's secret source namespace that the repository names and
    /// that may be copied, by name.
    pub source_secrets: BTreeMap<String, std::sync::Arc<Secret>>,
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
    pub object: Option<std::sync::Arc<kube::api::DynamicObject>>,
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
    pub config: &'a ControllerConfig,
    /// The deploy strategies offered; the environment's is chosen by name.
    pub strategies: &'a Strategies,
    /// What happens after Ready, in order.
    pub stages: &'a [std::sync::Arc<dyn Stage>],
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
    pub apply: Vec<DesiredObject>,
    /// Objects to delete.
    pub delete: Vec<ChildRef>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// What to report.
    pub report: Option<Report>,
    /// The phase entered by this plan, if it changed.
    pub entered: Option<Phase>,
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
            entered: None,
            requeue_after: None,
        }
    }
}

/// Every kind the controller watches in preview namespaces besides Deployments, Pods and
/// Namespaces (always watched): the guard rails and the Ingress, plus what the strategy
/// and the stages create.
pub fn watched_kinds(
    strategies: &Strategies,
    stages: &[std::sync::Arc<dyn Stage>],
) -> Vec<WatchedKind> {
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
    let mut plan = plan_environment(input);
    durable_report(input, &mut plan);
    plan
}

/// With [`ControllerConfig::durable_reports`], records a new report in
/// `status.pendingReport` (a token: the time of the plan) in the same status write as the
/// change it reports, and reports again while a recorded one is not confirmed, so a
/// report survives a crash between the status write and the send. A report made while
/// the finalizer is released is not recorded: the object is gone once it is sent.
fn durable_report(input: &PlanInput<'_>, plan: &mut Plan) {
    if !input.config.durable_reports {
        plan.status.pending_report = None;
        return;
    }
    match plan.report {
        Some(Report::Changed) => plan.status.pending_report = Some(input.now.to_string()),
        Some(Report::Deleted) => {}
        None if plan.status.pending_report.is_some() => plan.report = Some(Report::Changed),
        None => {}
    }
}

fn plan_environment(input: &PlanInput<'_>) -> Plan {
    let env = input.env;
    if env.metadata.deletion_timestamp.is_some() {
        return plan_teardown(input);
    }
    let now = input.now;
    let old = env.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = env.metadata.generation;
    let finalizer = if env.finalizers().iter().any(|f| f == FINALIZER) {
        FinalizerAction::Keep
    } else {
        FinalizerAction::Add
    };

    let created_at = expiry::created_at(env, now);
    status.created_at = Some(Time(created_at));
    let expires_at = expiry::expires_at(env, now);
    status.expires_at = Some(Time(expires_at));

    // Expiry first: an expired environment is deleted, whatever else is going on.
    if now >= expires_at {
        let mut plan = Plan::idle(old);
        plan.finalizer = finalizer;
        plan.delete_environment = true;
        plan.deletion_reason = Some("TTLExpired");
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "TTLExpired".into(),
            note: format!("environment expired at {expires_at}; deleting"),
        });
        plan.requeue_after = Some(TEARDOWN_POLL);
        return plan;
    }

    // `/preview delete`: deleted like an expired environment.
    if let Some(comment) = env.annotations().get(ANNOTATION_DELETE_REQUESTED) {
        let mut plan = Plan::idle(old);
        plan.finalizer = finalizer;
        plan.delete_environment = true;
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "DeleteRequested".into(),
            note: format!(
                "deletion requested by PR comment {}; deleting",
                truncate(comment, 32)
            ),
        });
        plan.requeue_after = Some(TEARDOWN_POLL);
        return plan;
    }

    // Spec problems the schema cannot express stall the environment with a clear message.
    if let Err(e) = expiry::expiry_policy(env).validate() {
        return stall(input, old, status, finalizer, "InvalidSpec", &e.to_string());
    }

    // Lifecycle policy: asleep or awake, redeploy and retry requests.
    let sleeping = sleep::sleep_reason(
        env,
        now,
        input.config.idle_sleep_after,
        // The budget's verdict needs the rendered application and the live usage; it is
        // applied below, and a budget sleep already decided is the annotation.
        false,
    );
    let was_asleep = is_true(&old, condition::SLEEPING);
    let woke = was_asleep && sleeping.is_none();
    let restart_token = restart_token(env);
    // A new redeploy token rolls the environment out again; a new retry token alone is the
    // retry below (a Failed environment gets a fresh deadline; a healthy one only restarts
    // its pods).
    let redeploy_part = |token: Option<&str>| {
        token
            .map(|t| t.split_once('/').map_or(t, |p| p.0).to_string())
            .filter(|p| !p.is_empty())
    };
    let restart_requested = restart_token.is_some()
        && restart_token != old.restarted_for
        && redeploy_part(restart_token.as_deref()) != redeploy_part(old.restarted_for.as_deref());
    status.restarted_for = restart_token.clone();

    // A new head commit or spec rolls the services again; so do waking, redeploy and retry.
    let original = old.phase.unwrap_or(Phase::Pending);
    let mut phase = original;
    let spec_changed = old.observed_generation.is_some()
        && (old.observed_generation != generation
            || old.deployed_sha.as_deref() != Some(env.spec.head_sha.as_str()));
    if (spec_changed || woke || restart_requested)
        && sleeping.is_none()
        && phase != Phase::Pending
        && let Ok(t) = transition(phase, &Observation::SpecChanged)
    {
        phase = t.next;
        status.provisioning_since = Some(Time(now));
        status.ready_at = None;
    }
    // Results belong to the commit they were found for; the stages record them again.
    let head = Some(env.spec.head_sha.as_str());
    if status.tests.as_ref().and_then(|t| t.sha.as_deref()) != head {
        status.tests = None;
    }
    if status.test_data.as_ref().and_then(|t| t.sha.as_deref()) != head {
        status.test_data = None;
    }

    // Required CI checks of the head commit, and retries: a new value of the retry
    // annotation moves a Failed environment back to Provisioning once; so does a failed
    // check that is no longer failed (re-run on GitHub).
    let gate = checks_gate(env, input.observed.polled_checks.as_ref());
    let retry = env.annotations().get(ANNOTATION_RETRY).cloned();
    let failed_by_checks = original == Phase::Failed && ready_reason(&old) == Some("ChecksFailed");
    let retried = (retry.is_some() && retry != old.retry)
        || (failed_by_checks && !matches!(gate, Gate::Failed(_)));
    let mut retrying = false;
    if phase == Phase::Failed
        && retried
        && let Ok(t) = transition(phase, &Observation::RetryRequested)
    {
        phase = t.next;
        retrying = true;
        status.provisioning_since = Some(Time(now));
        status.ready_at = None;
    }
    status.retry = retry;
    let holding = !matches!(gate, Gate::Open);

    // Advice once per head commit: which services, what the AI engine decided.
    if let Some(advice) = &input.observed.advice
        && status.advised_sha.as_deref() != Some(env.spec.head_sha.as_str())
    {
        status.ai =
            (advice.status != crate::crd::AiStatus::default()).then(|| advice.status.clone());
        status.selected_services = advice.services.clone();
        status.test_selection = crate::strategy::testrun::recorded_selection(env, advice);
        status.advised_sha = Some(env.spec.head_sha.clone());
    }
    let effective = effective_environment(env, &status);

    // The namespace.
    let (ns_name, waiting_for_namespace) = match namespace::choose(env, &input.observed.namespaces)
    {
        NamespaceChoice::Use(name) => (name, false),
        NamespaceChoice::WaitForTermination(name) => (name, true),
        NamespaceChoice::Conflict(message) => {
            return stall(input, old, status, finalizer, "NamespaceConflict", &message);
        }
    };
    status.namespace = Some(ns_name.clone());

    // The host.
    let ingress_spec = env.spec.ingress.clone().unwrap_or_default();
    let host = if ingress_spec.enabled {
        match host::choose(env, input.config, &input.observed.host_claims) {
            HostChoice::Use(host) => Some(host),
            HostChoice::Refused { reason, message } => {
                return stall(input, old, status, finalizer, reason, &message);
            }
        }
    } else {
        None
    };
    if let Some(issuer) = ingress_spec.cluster_issuer.as_deref()
        && ingress_spec.enabled
        && ingress_spec.tls
        && !input.config.allowed_cluster_issuers().contains(&issuer)
    {
        return stall(
            input,
            old,
            status,
            finalizer,
            "ClusterIssuerNotAllowed",
            &format!(
                "cluster issuer {issuer:?} is not allowed (allowed: {})",
                input.config.allowed_cluster_issuers().join(", ")
            ),
        );
    }
    status.host = host.clone();

    // The deploy strategy: the environment's, else its repository's, else the default.
    let repository = input.observed.repository.as_deref();
    // A fork's environment gets neither the repository's Secrets nor its egress rules.
    fork::record(env, repository, &mut status, now);
    let restricted = fork::restricted_repository(env, repository);
    let repository = restricted.as_ref().or(repository);
    let strategy_name = input.strategies.name_for(env, repository);
    let Some(strategy) = input.strategies.get(strategy_name) else {
        return stall(
            input,
            old,
            status,
            finalizer,
            "UnknownStrategy",
            &format!(
                "deploy strategy {strategy_name:?} is not available in this operator (available: {})",
                input.strategies.names().join(", ")
            ),
        );
    };

    let expected_lifespan = expiry::expiry_policy(env).ttl.as_duration();
    let render = RenderInput {
        env: &effective,
        namespace: &ns_name,
        config: input.config,
        use_spot: tier::use_spot(expected_lifespan, env.spec.resources.use_spot),
        host: host.as_deref(),
        repository,
        now,
    };

    // Desired objects: the namespace and its guard rails, the Ingress, the application.
    let base = match base_objects(&render, &ingress_spec) {
        Ok(base) => base,
        Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
    };
    // Secrets by reference: copies of the source Secrets the repository names.
    let copies = match secret_copies(&render, &input.observed.source_secrets) {
        Ok(copies) => copies,
        Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
    };
    let labels = crate::children::common_labels(env);
    let external_namespace = strategy.external_namespace(&render);
    let mut app = match strategy.desired(&render).and_then(|objects| {
        scoped_app(
            objects,
            &ns_name,
            external_namespace.as_deref(),
            env,
            &labels,
        )
    }) {
        Ok(app) => app,
        Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
    };
    // A strategy whose kinds this cluster does not serve (Argo CD not installed) cannot
    // work: say so at once instead of waiting for the readiness deadline.
    if let Some(kind) = strategy.watched_kinds().into_iter().find(|k| {
        k.optional
            && input
                .observed
                .missing_kinds
                .contains(&crate::controller::caches::kind_key(
                    &k.resource.api_version,
                    &k.resource.kind,
                ))
    }) {
        return stall(
            input,
            old,
            status,
            finalizer,
            "StrategyUnavailable",
            &format!(
                "deploy strategy {} needs {} {} ({}), which this cluster does not serve; install its CRDs (the operator notices within 30 s)",
                strategy.name(),
                kind.resource.kind,
                kind.resource.api_version,
                kind.resource.plural
            ),
        );
    }
    if let Some(token) = &restart_token {
        app = app
            .into_iter()
            .map(|o| sleep::restarted(o, token))
            .collect();
    }
    let empty = NamespaceView::default();
    let view = input.observed.views.get(&ns_name).unwrap_or(&empty);
    let ns_meta = input.observed.namespaces.get(&ns_name);

    // Cost: projected from what is about to be applied (the budget), live from what runs
    // (the estimate and the spend).
    let pricing = &input.config.pricing;
    let projected = cost::projected_usage(&app).estimate(pricing);
    if ns_meta.is_none()
        && view.children.is_empty()
        && let Some(message) = budget::refuse_creation(env, &projected, expected_lifespan)
    {
        return stall(
            input,
            old,
            status,
            finalizer,
            budget::REASON_BUDGET_EXCEEDED,
            &message,
        );
    }
    let live = cost::live_usage(view).estimate(pricing);
    let (costs, spent_now) = cost::cost_status(old.costs.as_ref(), &live, created_at, now);
    status.costs = Some(costs);
    let decision = budget::decide(env, projected.daily, spent_now);
    if let Some(d) = decision
        && d.action == budget::BudgetAction::Delete
    {
        let mut plan = Plan::idle(old);
        plan.finalizer = finalizer;
        plan.delete_environment = true;
        plan.deletion_reason = Some(budget::REASON_BUDGET_EXCEEDED);
        plan.events.push(PlannedEvent {
            warning: true,
            reason: d.verdict.reason().into(),
            note: d.message(),
        });
        plan.requeue_after = Some(TEARDOWN_POLL);
        return plan;
    }
    // The budget's sleep is one of the lifecycle's reasons: it sets the sleep annotation
    // (asleep from this pass on) and withdraws it once the budget allows the environment
    // (awake from the next pass, rolled out like a push).
    let mut budget_annotation: Option<Option<String>> = None;
    let sleeping = match decision.map(|d| d.action) {
        Some(budget::BudgetAction::Sleep) => {
            budget_annotation = Some(Some(budget::SLEEP_FOR_BUDGET.into()));
            Some(sleep::SleepReason::Budget)
        }
        Some(budget::BudgetAction::Wake) => {
            budget_annotation = Some(None);
            sleeping
        }
        _ => sleeping,
    };
    if let Some(reason) = sleeping {
        let mut plan = plan_asleep(
            input,
            Asleep {
                old,
                status,
                finalizer,
                reason,
                namespace: ns_name,
                desired: if waiting_for_namespace {
                    Vec::new()
                } else {
                    base.into_iter()
                        .chain(app.into_iter().map(sleep::asleep))
                        .collect()
                },
                expires_at,
            },
        );
        if let Some(value) = budget_annotation {
            plan.annotate.insert(budget::ANNOTATION_SLEEP.into(), value);
        }
        return plan;
    }
    let mut plan = Plan::idle(old.clone());
    plan.finalizer = finalizer;
    if let Some(key) = first_duplicate(base.iter().chain(app.iter())) {
        return stall(
            input,
            old,
            status,
            finalizer,
            "DuplicateObject",
            &format!(
                "{key} is rendered twice (the application names an object previewd creates itself)"
            ),
        );
    }
    let mut desired: Vec<DesiredObject> = Vec::new();
    // Objects of later waves that are not applied yet; still wanted (never pruned).
    let mut held: Vec<ChildKey> = Vec::new();
    if !waiting_for_namespace {
        desired.extend(base);
        // Waiting for (or failed by) CI: the application stays as it is (applied
        // objects are neither changed nor pruned).
        if holding {
            held = app.iter().map(DesiredObject::key).collect();
        } else {
            let (now_, later) = open_waves(app, strategy.as_ref(), view, ns_meta);
            desired.extend(now_);
            held = later;
        }
    }

    // Phase: namespace first, then services, then stages.
    let deadline = status
        .provisioning_since
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now)
        .checked_add(
            jiff::SignedDuration::try_from(input.config.readiness_timeout).unwrap_or_default(),
        )
        .unwrap_or(jiff::Timestamp::MAX);
    let namespace_ready = !waiting_for_namespace;
    let applying = needs_apply(&desired, view, ns_meta);
    let health = if waiting_for_namespace {
        Health::Progressing(format!(
            "waiting for the previous namespace {ns_name} to finish terminating"
        ))
    } else if holding {
        Health::Progressing(String::new())
    } else {
        strategy.health(&render, view, &applying)
    };
    let (observation, message, services_deployed) = match health {
        _ if !waiting_for_namespace && let Gate::Failed(check) = &gate => (
            Observation::ChecksFailed {
                check: check.clone(),
            },
            format!("build failed: {check}"),
            false,
        ),
        _ if !waiting_for_namespace && let Gate::Waiting(names) = &gate => (
            Observation::ChecksPending,
            format!("waiting for checks: {}", names.join(", ")),
            false,
        ),
        Health::Available(message) => (Observation::ServicesAvailable, message, true),
        Health::Failed(message) => (
            Observation::ServiceFailed {
                reason: message.clone(),
            },
            message,
            false,
        ),
        Health::Progressing(message) if now >= deadline && !waiting_for_namespace => (
            Observation::ReadinessDeadlineExceeded,
            format!(
                "services not available within {}: {message}",
                humanize(input.config.readiness_timeout)
            ),
            false,
        ),
        Health::Progressing(message) => (Observation::ServicesProgressing, message, false),
    };
    let mut next = phase;
    let mut reason = if retrying {
        "RetryRequested"
    } else if phase != original {
        "SpecChanged"
    } else {
        "Pending"
    };
    if namespace_ready && let Ok(t) = transition(next, &Observation::NamespaceReady) {
        if t.next != next {
            reason = t.reason;
        }
        next = t.next;
    }
    if let Ok(t) = transition(next, &observation) {
        if t.next != next {
            reason = t.reason;
        }
        next = t.next;
    }
    let mut message = message;

    // Stages run once the application serves.
    let enabled: Vec<&std::sync::Arc<dyn Stage>> =
        input.stages.iter().filter(|s| s.enabled(env)).collect();
    let mut tests_condition: Option<(bool, &'static str, String)> = None;
    let failed_in_stage = next == Phase::Failed
        && old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.reason == "TestsFailed");
    if !enabled.is_empty() && services_deployed && (next.is_serving() || failed_in_stage) {
        let mut outcome = StageOutcome::Passed(String::new());
        let mut stage_objects = Vec::new();
        for stage in &enabled {
            let objects = match stage
                .desired(&render)
                .and_then(|objects| scoped(objects, &ns_name, &labels))
            {
                Ok(objects) => objects,
                Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
            };
            outcome = stage.outcome(&render, view);
            if let StageOutcome::Running(_) = outcome
                && let Some(limit) = stage.timeout(env)
                && let Some(started) = started_at(&objects, view)
                && now
                    >= started
                        .checked_add(jiff::SignedDuration::try_from(limit).unwrap_or_default())
                        .unwrap_or(jiff::Timestamp::MAX)
            {
                outcome = StageOutcome::Failed(format!(
                    "stage {} did not finish within {}",
                    stage.name(),
                    humanize(limit)
                ));
            }
            stage.record(&render, view, &outcome, &mut status);
            stage_objects.extend(objects);
            if !matches!(outcome, StageOutcome::Passed(_)) {
                break;
            }
        }
        let stage_applying = needs_apply(&stage_objects, view, ns_meta);
        desired.extend(stage_objects);
        let obs = match &outcome {
            _ if !stage_applying.is_empty() => Observation::TestsStarted,
            StageOutcome::Running(_) => Observation::TestsStarted,
            StageOutcome::Passed(_) => Observation::TestsPassed,
            StageOutcome::Failed(_) => Observation::TestsFailed { failed: 1 },
        };
        if let Ok(t) = transition(next, &obs) {
            if t.next != next {
                reason = t.reason;
            }
            next = t.next;
        }
        tests_condition = Some(match &outcome {
            StageOutcome::Passed(m) => (true, "StagesPassed", m.clone()),
            StageOutcome::Failed(m) => {
                message = m.clone();
                (false, "StageFailed", m.clone())
            }
            StageOutcome::Running(m) => (false, "StageRunning", m.clone()),
        });
    }

    // What to apply and to prune: everything desired is wanted; what differs is applied.
    let wanted: BTreeSet<ChildKey> = desired.iter().map(DesiredObject::key).chain(held).collect();
    let applying = needs_apply(&desired, view, ns_meta);
    desired.retain(|d| applying.contains(&d.key()));
    // Copies of Secrets are never read back (the operator may not read Secrets outside
    // the source namespace): the status records the source version of each copy, and a
    // copy is applied when that changes or the namespace is new.
    let mut copy_keys = BTreeSet::new();
    let mut dropped_copies = Vec::new();
    if !waiting_for_namespace {
        let fresh_namespace = ns_meta.is_none();
        let mut recorded = BTreeMap::new();
        for (copy, version) in copies {
            copy_keys.insert(copy.key());
            if fresh_namespace || old.copied_secrets.get(&copy.name) != Some(&version) {
                desired.push(copy.clone().in_wave(i32::MIN));
            }
            recorded.insert(copy.name.clone(), version);
        }
        if !fresh_namespace {
            dropped_copies = old
                .copied_secrets
                .keys()
                .filter(|name| !recorded.contains_key(*name))
                .map(|name| ChildRef {
                    resource: ApiResource::erase::<Secret>(&()),
                    namespace: Some(ns_name.clone()),
                    name: name.clone(),
                })
                .collect();
        }
        status.copied_secrets = recorded;
    }
    // The namespace first, then by wave, keeping the strategy's order within a wave.
    desired.sort_by_key(|d| (d.resource.kind != "Namespace", d.wave));
    plan.apply = desired;
    if !waiting_for_namespace && !holding {
        plan.delete = view
            .children
            .iter()
            .filter(|(key, child)| {
                !wanted.contains(key) && !copy_keys.contains(key) && !child.deleting
            })
            .filter_map(|(key, _)| {
                let resource = resource_of(key, input)?;
                let namespace = match input.observed.external.get(key) {
                    Some(external) => external.namespace.clone(),
                    None => ns_name.clone(),
                };
                Some(ChildRef {
                    resource,
                    namespace: Some(namespace),
                    name: key.name.clone(),
                })
            })
            .collect();
        plan.delete.extend(dropped_copies);
    }

    if holding && next == Phase::Pending {
        // The readiness deadline starts when the checks passed.
        status.provisioning_since = None;
    } else if status.provisioning_since.is_none() {
        status.provisioning_since = Some(Time(now));
    }
    if next == Phase::Ready && !phase.is_serving() {
        status.ready_at = Some(Time(now));
    }
    status.phase = Some(next);
    status.deployed_sha = Some(env.spec.head_sha.clone());
    status.observed_generation = generation;
    status.message = Some(message.clone());
    match (&host, ingress_spec.enabled) {
        (Some(host), true) => {
            let (url, per_service) = urls(host, ingress_spec.tls, &effective.spec.services);
            status.url = Some(url);
            status.urls = per_service;
        }
        _ => {
            status.url = None;
            status.urls.clear();
        }
    }

    // Conditions.
    let serving = next.is_serving();
    let failed = next == Phase::Failed;
    let waiting_for_checks = holding && next == Phase::Pending;
    set_condition(
        &mut status.conditions,
        condition::NAMESPACE_READY,
        namespace_ready,
        if namespace_ready {
            "NamespaceReady"
        } else {
            "NamespacePending"
        },
        &format!("namespace {ns_name}"),
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::SERVICES_DEPLOYED,
        services_deployed,
        if services_deployed {
            "ServicesAvailable"
        } else if failed {
            "ServicesFailed"
        } else if waiting_for_checks {
            "WaitingForChecks"
        } else {
            "ServicesProgressing"
        },
        &message,
        generation,
        now,
    );
    if let Some((passed, reason, msg)) = &tests_condition {
        set_condition(
            &mut status.conditions,
            condition::TESTS_COMPLETED,
            *passed,
            reason,
            msg,
            generation,
            now,
        );
    }
    let failure_reason = reason_of_failure(&old, reason);
    set_condition(
        &mut status.conditions,
        condition::READY,
        serving,
        if serving {
            "Ready"
        } else if failed {
            failure_reason
        } else if waiting_for_checks {
            "WaitingForChecks"
        } else {
            "Provisioning"
        },
        &message,
        generation,
        now,
    );
    let reconciling = !serving && !failed || next == Phase::Testing;
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        reconciling,
        if next == Phase::Testing {
            "Testing"
        } else if reconciling {
            "Provisioning"
        } else {
            "Settled"
        },
        if next == Phase::Testing {
            "running post-ready stages"
        } else if waiting_for_checks {
            "waiting for CI checks"
        } else if reconciling {
            "rolling out services"
        } else {
            ""
        },
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::STALLED,
        failed,
        if failed { failure_reason } else { "NotStalled" },
        if failed { message.as_str() } else { "" },
        generation,
        now,
    );
    if let Some(d) = &decision {
        let exceeded = d.verdict.is_exceeded();
        let was_exceeded = old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::BUDGET_EXCEEDED && c.status == "True");
        set_condition(
            &mut status.conditions,
            condition::BUDGET_EXCEEDED,
            exceeded,
            d.verdict.reason(),
            &d.message(),
            generation,
            now,
        );
        if exceeded && !was_exceeded {
            plan.events.push(PlannedEvent {
                warning: true,
                reason: d.verdict.reason().into(),
                note: d.message(),
            });
            plan.report = Some(Report::Changed);
        } else if !exceeded && was_exceeded {
            plan.report = Some(Report::Changed);
        }
    } else {
        status
            .conditions
            .retain(|c| c.type_ != condition::BUDGET_EXCEEDED);
    }

    if was_asleep {
        set_condition(
            &mut status.conditions,
            condition::SLEEPING,
            false,
            "Awake",
            "woken by activity",
            generation,
            now,
        );
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "Woken".into(),
            note: "workloads restored to their replicas".into(),
        });
    }
    let lifecycle_changed = lifecycle_conditions(input, &old, &mut status, expires_at);
    if lifecycle_changed {
        plan.report = Some(Report::Changed);
    }

    if next != original || phase != original || old.phase.is_none() {
        plan.entered = Some(next);
        plan.events.push(if next == Phase::Failed {
            PlannedEvent {
                warning: true,
                reason: failure_reason.to_string(),
                note: message.clone(),
            }
        } else {
            PlannedEvent {
                warning: false,
                reason: reason.to_string(),
                note: format!("phase {original} -> {next}: {message}"),
            }
        });
        plan.report = Some(Report::Changed);
    }

    // Look again at the earliest of expiry, the next poll while busy, the resync.
    let until_expiry = expires_at
        .duration_since(now)
        .try_into()
        .unwrap_or(Duration::ZERO)
        + Duration::from_millis(5);
    let mut wait = input.config.resync_interval.min(until_expiry);
    for at in [
        expiry::warning_at(env, now, input.config.expiry_warning),
        sleep::idle_sleep_at(env, now, input.config.idle_sleep_after),
    ]
    .into_iter()
    .flatten()
    .filter(|at| *at > now)
    {
        wait = wait.min(until(now, at));
    }
    if waiting_for_checks {
        wait = wait.min(CHECKS_RECHECK);
    } else if matches!(next, Phase::Provisioning | Phase::Pending | Phase::Testing) {
        wait = wait.min(input.config.poll_interval);
    }
    plan.requeue_after = Some(wait);
    plan.status = status;
    plan
}

/// When a stage started: the creation of the oldest of its objects the caches hold whole.
fn started_at(objects: &[DesiredObject], view: &NamespaceView) -> Option<jiff::Timestamp> {
    objects
        .iter()
        .filter_map(|o| view.objects.get(&o.key()))
        .filter_map(|o| o.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .min()
}

/// The time from `now` to `at` (zero when past), plus a few milliseconds so that the
/// reconcile lands after `at`.
fn until(now: jiff::Timestamp, at: jiff::Timestamp) -> Duration {
    at.duration_since(now).try_into().unwrap_or(Duration::ZERO) + Duration::from_millis(5)
}

fn is_true(status: &PreviewEnvironmentStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The redeploy and retry requests, as one token: a new token restarts the workloads.
fn restart_token(env: &PreviewEnvironment) -> Option<String> {
    let annotations = env.annotations();
    let redeploy = annotations
        .get(ANNOTATION_REDEPLOY)
        .map(|v| truncate(v, 32));
    let retry = annotations.get(ANNOTATION_RETRY).map(|v| truncate(v, 32));
    match (redeploy, retry) {
        (None, None) => None,
        (a, b) => Some(format!(
            "{}/{}",
            a.unwrap_or_default(),
            b.unwrap_or_default()
        )),
    }
}

/// Sets the `ExpiringSoon` condition and records the answer to the last PR command;
/// true when the PR comment must be updated (warning started or ended, new answer).
fn lifecycle_conditions(
    input: &PlanInput<'_>,
    old: &PreviewEnvironmentStatus,
    status: &mut PreviewEnvironmentStatus,
    expires_at: jiff::Timestamp,
) -> bool {
    let env = input.env;
    let now = input.now;
    let generation = env.metadata.generation;
    let mut changed = false;
    let warning =
        expiry::warning_at(env, now, input.config.expiry_warning).is_some_and(|at| now >= at);
    let was_warning = is_true(old, condition::EXPIRING_SOON);
    if warning
        || old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::EXPIRING_SOON)
    {
        set_condition(
            &mut status.conditions,
            condition::EXPIRING_SOON,
            warning,
            if warning { "ExpiryNear" } else { "Extended" },
            &if warning {
                format!(
                    "the environment will be deleted at {expires_at}; comment `/preview extend` to keep it"
                )
            } else {
                format!("expires at {expires_at}")
            },
            generation,
            now,
        );
    }
    changed |= warning != was_warning;
    if let Some(reply) = env.annotations().get(ANNOTATION_COMMAND_REPLY) {
        let id = reply.split_once(' ').map_or(reply.as_str(), |(id, _)| id);
        let id = truncate(id, 32);
        if old.answered_command.as_deref() != Some(id.as_str()) {
            changed = true;
        }
        status.answered_command = Some(id);
    }
    changed
}

/// What an asleep environment's plan is made of.
struct Asleep {
    old: PreviewEnvironmentStatus,
    status: PreviewEnvironmentStatus,
    finalizer: FinalizerAction,
    reason: sleep::SleepReason,
    namespace: String,
    desired: Vec<DesiredObject>,
    expires_at: jiff::Timestamp,
}

/// An asleep environment: the namespace and everything in it kept, every Deployment and
/// StatefulSet at zero replicas, nothing pruned, no stage run; the phase kept, the
/// `Sleeping` condition set.
fn plan_asleep(input: &PlanInput<'_>, asleep: Asleep) -> Plan {
    let Asleep {
        old,
        mut status,
        finalizer,
        reason,
        namespace,
        desired,
        expires_at,
    } = asleep;
    let env = input.env;
    let now = input.now;
    let generation = env.metadata.generation;
    let empty = NamespaceView::default();
    let view = input.observed.views.get(&namespace).unwrap_or(&empty);
    let applying = needs_apply(&desired, view, input.observed.namespaces.get(&namespace));
    let mut apply: Vec<DesiredObject> = desired
        .into_iter()
        .filter(|d| applying.contains(&d.key()))
        .collect();
    apply.sort_by_key(|d| (d.resource.kind != "Namespace", d.wave));

    let message = format!(
        "{}; workloads scaled to zero, namespace and data kept; push or comment `/preview wake` to wake it",
        reason.describe(input.config.idle_sleep_after)
    );
    if status.phase.is_none() {
        status.phase = Some(Phase::Pending);
    }
    status.message = Some(message.clone());
    for (type_, value, why) in [
        (condition::SLEEPING, true, reason.as_str()),
        (condition::READY, false, "Sleeping"),
        (condition::RECONCILING, false, "Sleeping"),
    ] {
        set_condition(
            &mut status.conditions,
            type_,
            value,
            why,
            &message,
            generation,
            now,
        );
    }
    let mut plan = Plan::idle(old.clone());
    plan.finalizer = finalizer;
    plan.apply = apply;
    let entering = !is_true(&old, condition::SLEEPING)
        || old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::SLEEPING && c.reason != reason.as_str());
    if entering {
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "Sleeping".into(),
            note: message.clone(),
        });
        plan.report = Some(Report::Changed);
    }
    if lifecycle_conditions(input, &old, &mut status, expires_at) {
        plan.report = Some(Report::Changed);
    }
    let mut wait = input.config.resync_interval.min(until(now, expires_at));
    if let Some(at) = expiry::warning_at(env, now, input.config.expiry_warning)
        && at > now
    {
        wait = wait.min(until(now, at));
    }
    if !plan.apply.is_empty() {
        wait = wait.min(input.config.poll_interval);
    }
    plan.requeue_after = Some(wait);
    plan.status = status;
    plan
}

/// Places every object of a plug-in in the environment's namespace with the
/// environment's labels; an object naming another namespace stalls the environment.
fn scoped(
    objects: Vec<DesiredObject>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<DesiredObject>, StrategyError> {
    objects
        .iter()
        .map(|o| {
            o.scoped_to(namespace, labels)
                .map_err(|message| StrategyError {
                    reason: "ForeignNamespace".into(),
                    message,
                })
        })
        .collect()
}

/// The application's objects that may be applied now: every wave up to and including
/// the first one that is not ready (an object of it differs from its live state, or the
/// strategy does not judge it ready), and the keys of the later waves held back.
fn open_waves(
    app: Vec<DesiredObject>,
    strategy: &dyn DeployStrategy,
    view: &NamespaceView,
    ns_meta: Option<&NamespaceMeta>,
) -> (Vec<DesiredObject>, Vec<ChildKey>) {
    let waves: BTreeSet<i32> = app.iter().map(|o| o.wave).collect();
    let first_unready = waves.into_iter().find(|w| {
        !app.iter().filter(|o| o.wave == *w).all(|o| {
            needs_apply(std::slice::from_ref(o), view, ns_meta).is_empty()
                && strategy.object_ready(o, view)
        })
    });
    match first_unready {
        None => (app, Vec::new()),
        Some(open) => {
            let (now, later): (Vec<_>, Vec<_>) = app.into_iter().partition(|o| o.wave <= open);
            (now, later.iter().map(DesiredObject::key).collect())
        }
    }
}

/// The first key rendered twice, if any.
fn first_duplicate<'a>(objects: impl Iterator<Item = &'a DesiredObject>) -> Option<ChildKey> {
    let mut seen = BTreeSet::new();
    objects
        .map(DesiredObject::key)
        .find(|k| !seen.insert(k.clone()))
}

/// [`scoped`] for a strategy's objects, which may also go to its external namespace
/// (never a preview namespace), marked with the environment's UID.
fn scoped_app(
    objects: Vec<DesiredObject>,
    namespace: &str,
    external: Option<&str>,
    env: &PreviewEnvironment,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<DesiredObject>, StrategyError> {
    let external = external.filter(|ext| {
        *ext != namespace && !ext.starts_with(namespace::NAMESPACE_PREFIX) && !ext.is_empty()
    });
    let (outside, inside): (Vec<DesiredObject>, Vec<DesiredObject>) = objects
        .into_iter()
        .partition(|o| external.is_some() && o.namespace.as_deref() == external);
    let mut scoped_objects = scoped(inside, namespace, labels)?;
    if !outside.is_empty() {
        let uid = env.uid().ok_or_else(|| StrategyError {
            reason: "RenderFailed".into(),
            message: "the environment has no UID yet".into(),
        })?;
        scoped_objects.extend(
            outside
                .iter()
                .map(|o| o.marked_external(labels, namespace::ANNOTATION_OWNER_UID, &uid)),
        );
    }
    Ok(scoped_objects)
}

/// The keys whose desired state differs from what the caches hold: missing, applied with
/// another hash, being deleted, or edited by hand (fingerprint).
fn needs_apply(
    desired: &[DesiredObject],
    view: &NamespaceView,
    ns_meta: Option<&NamespaceMeta>,
) -> BTreeSet<ChildKey> {
    desired
        .iter()
        .filter(|d| {
            if d.resource.kind == "Namespace" && d.namespace.is_none() {
                return ns_meta.is_none_or(|m| m.applied_hash.as_deref() != Some(d.hash.as_str()));
            }
            match view.children.get(&d.key()) {
                None => true,
                Some(live) => {
                    live.deleting
                        || live.applied_hash.as_deref() != Some(d.hash.as_str())
                        || (d.fingerprint.is_some()
                            && live.fingerprint.is_some()
                            && d.fingerprint != live.fingerprint)
                }
            }
        })
        .map(DesiredObject::key)
        .collect()
}

/// The API resource of a key, from the kinds the controller knows.
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

fn resource_of(key: &ChildKey, input: &PlanInput<'_>) -> Option<ApiResource> {
    use k8s_openapi::api::apps::v1::Deployment;
    if key.kind == "Deployment" && key.api_version == "apps/v1" {
        return Some(ApiResource::erase::<Deployment>(&()));
    }
    watched_kinds(input.strategies, input.stages)
        .into_iter()
        .map(|k| k.resource)
        .find(|r| r.kind == key.kind && r.api_version == key.api_version)
}

/// The copies of the Secrets the repository names, each with the version of its source.
fn secret_copies(
    render: &RenderInput<'_>,
    sources: &BTreeMap<String, std::sync::Arc<Secret>>,
) -> Result<Vec<(DesiredObject, String)>, StrategyError> {
    use crate::children::secrets::{
        LABEL_PREVIEW_SECRET, copyable, desired_secret_copy, source_version,
    };
    let Some(repository) = render.repository.filter(|r| !r.spec.secrets.is_empty()) else {
        return Ok(Vec::new());
    };
    let Some(source_ns) = render.config.secret_namespace.as_deref() else {
        return Err(StrategyError {
            reason: "SecretsNotConfigured".into(),
            message: "the repository names Secrets to copy, but the operator has no secret source namespace (--secret-namespace)".into(),
        });
    };
    let mut copies = Vec::with_capacity(repository.spec.secrets.len());
    for reference in &repository.spec.secrets {
        let Some(source) = sources.get(&reference.name).filter(|s| copyable(s)) else {
            return Err(StrategyError {
                reason: "SecretNotFound".into(),
                message: format!(
                    "Secret {} not found in namespace {source_ns}, or not labelled {LABEL_PREVIEW_SECRET}=true",
                    reference.name
                ),
            });
        };
        let copy = desired_secret_copy(render.env, render.namespace, source);
        let object = DesiredObject::from_typed(&copy).map_err(|e| StrategyError {
            reason: "RenderFailed".into(),
            message: e.to_string(),
        })?;
        copies.push((object, source_version(source)));
    }
    Ok(copies)
}

/// The namespace, its guard rails and the Ingress.
fn base_objects(
    render: &RenderInput<'_>,
    ingress: &crate::crd::IngressSpec,
) -> Result<Vec<DesiredObject>, StrategyError> {
    let env = render.env;
    let ns = render.namespace;
    let cfg = render.config;
    let mut namespace = desired_namespace(env, ns, &cfg.guard);
    if let Some(uid) = env.uid() {
        namespace
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(namespace::ANNOTATION_OWNER_UID.to_string(), uid);
    }
    let err = |e: object::ObjectError| StrategyError {
        reason: "RenderFailed".into(),
        message: e.to_string(),
    };
    let mut allow = desired_allow_policy(env, ns, &cfg.guard);
    if let Some(repository) = render.repository {
        add_egress(&mut allow, &repository.spec.egress).map_err(|message| StrategyError {
            reason: "EgressInvalid".into(),
            message,
        })?;
    }
    let mut objects = vec![
        DesiredObject::from_typed(&namespace).map_err(err)?,
        DesiredObject::from_typed(&desired_resource_quota(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&desired_limit_range(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&desired_default_deny(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&allow).map_err(err)?,
    ];
    if ingress.enabled
        && let Some(host) = render.host
    {
        let issuer = ingress
            .cluster_issuer
            .clone()
            .unwrap_or_else(|| cfg.cert_issuer.clone());
        let ing = desired_ingress(
            env,
            ns,
            host,
            ingress.tls,
            ingress.class_name.as_deref(),
            &issuer,
        );
        objects.push(DesiredObject::from_typed(&ing).map_err(err)?);
    }
    Ok(objects)
}

/// Teardown: Terminating until the namespace is gone, then Terminated and the finalizer
/// released.
fn plan_teardown(input: &PlanInput<'_>) -> Plan {
    let env = input.env;
    let now = input.now;
    let old = env.status.clone().unwrap_or_default();
    let mut plan = Plan::idle(old.clone());
    if !env.finalizers().iter().any(|f| f == FINALIZER) {
        return plan;
    }
    let mut status = old.clone();
    let generation = env.metadata.generation;
    let phase = old.phase.unwrap_or(Phase::Pending);
    let terminating = transition(phase, &Observation::DeletionRequested)
        .map(|t| t.next)
        .unwrap_or(Phase::Terminating);
    status.phase = Some(terminating);
    if status.deleted_at.is_none() {
        status.deleted_at = Some(Time(now));
    }
    set_condition(
        &mut status.conditions,
        condition::READY,
        false,
        "Terminating",
        "environment is being deleted",
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        true,
        "Terminating",
        "deleting the namespace",
        generation,
        now,
    );
    if phase != Phase::Terminating && old != status {
        plan.entered = Some(terminating);
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "Terminating".into(),
            note: "deleting the environment's namespace".into(),
        });
        plan.report = Some(Report::Changed);
    }

    // Objects outside the namespace (Argo CD Applications) go first, and are waited for:
    // their finalizers delete what they deployed into the namespace, which must still
    // exist then.
    if !input.observed.external.is_empty() {
        for (key, external) in &input.observed.external {
            if external.child.deleting {
                continue;
            }
            if let Some(resource) = resource_of(key, input) {
                plan.delete.push(ChildRef {
                    resource,
                    namespace: Some(external.namespace.clone()),
                    name: key.name.clone(),
                });
            }
        }
        let names: Vec<String> = input
            .observed
            .external
            .iter()
            .map(|(k, e)| format!("{} {}/{}", k.kind, e.namespace, k.name))
            .collect();
        let waited = status
            .deleted_at
            .as_ref()
            .map(|t| now.duration_since(t.0))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        let overdue = waited >= input.config.readiness_timeout;
        let message = if overdue {
            format!(
                "{} still not gone after {}; is its controller running? The namespace is deleted once they are",
                names.join(", "),
                humanize(input.config.readiness_timeout)
            )
        } else {
            format!("deleting {} before the namespace", names.join(", "))
        };
        set_condition(
            &mut status.conditions,
            condition::RECONCILING,
            true,
            "Terminating",
            &message,
            generation,
            now,
        );
        set_condition(
            &mut status.conditions,
            condition::STALLED,
            overdue,
            if overdue {
                "ExternalObjectsRemain"
            } else {
                "NotStalled"
            },
            if overdue { message.as_str() } else { "" },
            generation,
            now,
        );
        plan.status = status;
        // Looked at again when the wait becomes overdue, to say so on time.
        let until_overdue = input.config.readiness_timeout.saturating_sub(waited);
        plan.requeue_after = Some(if overdue {
            TEARDOWN_WAIT
        } else {
            TEARDOWN_WAIT.min(until_overdue.max(TEARDOWN_POLL))
        });
        return plan;
    }

    let ns_name = namespace::recorded_name(env).unwrap_or_else(|| namespace::primary_name(env));
    if let Some(ns) = input.observed.namespaces.get(&ns_name)
        && namespace::is_owned(env, &ns_name, ns)
    {
        if !ns.deleting {
            // Workload controllers first, in the same pass: the namespace controller
            // deletes Pods and ReplicaSets before Deployments, and until it reaches them
            // the Deployment and ReplicaSet controllers recreate what it deleted (refused
            // in a terminating namespace, retried, status rewritten): about 20 wasted
            // API requests per environment when 1000 close at once, and a slower
            // teardown for every namespace queued behind.
            if let Some(view) = input.observed.views.get(&ns_name) {
                for (key, child) in &view.children {
                    if child.deleting || !is_workload_controller(key) {
                        continue;
                    }
                    if let Some(resource) = resource_of(key, input) {
                        plan.delete.push(ChildRef {
                            resource,
                            namespace: Some(ns_name.clone()),
                            name: key.name.clone(),
                        });
                    }
                }
            }
            plan.delete.push(ChildRef {
                resource: ApiResource::erase::<Namespace>(&()),
                namespace: None,
                name: ns_name,
            });
        }
        plan.status = status;
        plan.requeue_after = Some(TEARDOWN_WAIT);
        return plan;
    }

    // Namespace gone (or never ours): Terminated, then release the finalizer.
    status.phase = Some(
        transition(terminating, &Observation::CleanupFinished)
            .map(|t| t.next)
            .unwrap_or(Phase::Terminated),
    );
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        false,
        "Terminated",
        "namespace deleted",
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::NAMESPACE_READY,
        false,
        "NamespaceDeleted",
        "namespace deleted",
        generation,
        now,
    );
    plan.status = status;
    plan.finalizer = FinalizerAction::Release;
    plan.report = Some(Report::Deleted);
    plan.entered = Some(Phase::Terminated);
    plan.events.push(PlannedEvent {
        warning: false,
        reason: "Terminated".into(),
        note: format!("namespace {ns_name} deleted"),
    });
    plan
}

/// A problem the environment cannot get past by waiting: `Stalled`, with the reason, and
/// nothing written but the status.
fn stall(
    input: &PlanInput<'_>,
    old: PreviewEnvironmentStatus,
    mut status: PreviewEnvironmentStatus,
    finalizer: FinalizerAction,
    reason: &str,
    message: &str,
) -> Plan {
    let generation = input.env.metadata.generation;
    let now = input.now;
    status.observed_generation = generation;
    status.message = Some(message.to_string());
    if status.phase.is_none() {
        status.phase = Some(Phase::Pending);
    }
    for (type_, value) in [
        (condition::STALLED, true),
        (condition::READY, false),
        (condition::RECONCILING, false),
    ] {
        set_condition(
            &mut status.conditions,
            type_,
            value,
            reason,
            message,
            generation,
            now,
        );
    }
    let mut plan = Plan::idle(status.clone());
    plan.finalizer = finalizer;
    if status != old {
        plan.events.push(PlannedEvent {
            warning: true,
            reason: reason.to_string(),
            note: message.to_string(),
        });
    }
    plan.requeue_after = Some(input.config.resync_interval);
    plan
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
