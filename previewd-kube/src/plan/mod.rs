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

pub mod expiry;
pub mod health;
pub mod host;
pub mod namespace;
pub mod object;
pub mod sleep;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::ApiResource;
use previewd_core::phase::transition;
use previewd_core::{Observation, Phase, Pricing, ResourceRequests, Ttl, tier};

use crate::advice::Advice;
use crate::children::ingress::{desired_ingress, urls};
use crate::children::namespace::{
    desired_allow_policy, desired_default_deny, desired_limit_range, desired_namespace,
    desired_resource_quota,
};
use crate::controller::ControllerConfig;
use crate::controller::status::set_condition;
use crate::crd::{
    ANNOTATION_COMMAND_REPLY, ANNOTATION_DELETE_REQUESTED, ANNOTATION_REDEPLOY, ANNOTATION_RETRY,
    CostBreakdown, CostStatus, DeployPolicy, FINALIZER, PreviewEnvironment,
    PreviewEnvironmentStatus, condition,
};
use crate::strategy::{
    DeployStrategy, NamespaceView, RenderInput, Stage, StageOutcome, StrategyError, WatchedKind,
};
use health::Health;
use host::{HostChoice, HostClaim};
use namespace::{NamespaceChoice, NamespaceMeta};
use object::{ChildKey, ChildRef, DesiredObject};

/// How often a terminating environment looks at its namespace, besides the watch.
pub const TEARDOWN_POLL: Duration = Duration::from_secs(1);

/// Failure reasons the `Ready` condition can carry.
pub const FAILURE_REASONS: [&str; 3] =
    ["ReadinessDeadlineExceeded", "ServiceFailed", "TestsFailed"];

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
    /// How the application is deployed.
    pub strategy: &'a dyn DeployStrategy,
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
    /// The environment expired: delete it (teardown follows through the finalizer).
    pub delete_environment: bool,
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
    strategy: &dyn DeployStrategy,
    stages: &[std::sync::Arc<dyn Stage>],
) -> Vec<WatchedKind> {
    let mut kinds = vec![
        WatchedKind::metadata::<ResourceQuota>(),
        WatchedKind::metadata::<LimitRange>(),
        WatchedKind::metadata::<NetworkPolicy>(),
        WatchedKind::metadata::<Ingress>(),
    ];
    kinds.extend(strategy.watched_kinds());
    for stage in stages {
        kinds.extend(stage.watched_kinds());
    }
    let mut seen = BTreeSet::new();
    kinds.retain(|k| {
        seen.insert((k.resource.api_version.clone(), k.resource.kind.clone()))
            && !matches!(k.resource.kind.as_str(), "Deployment" | "Pod" | "Namespace")
    });
    // A kind watched both ways is watched whole.
    kinds
}

/// The environment as deployed: with `serviceSelection: Affected`, only the selected
/// services (never none: an empty selection deploys everything).
pub fn effective_environment(
    env: &PreviewEnvironment,
    status: &PreviewEnvironmentStatus,
) -> PreviewEnvironment {
    let mut effective = env.clone();
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
        // The budget policy's verdict (issue #11, budgets) is passed here; until then a
        // budget sleep is requested with the `previewd.io/sleep: budget` annotation.
        false,
    );
    let was_asleep = is_true(&old, condition::SLEEPING);
    let woke = was_asleep && sleeping.is_none();
    let restart_token = restart_token(env);
    let restart_requested = restart_token.is_some() && restart_token != old.restarted_for;
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

    // Advice once per head commit: which services, what the AI engine decided.
    if let Some(advice) = &input.observed.advice
        && status.advised_sha.as_deref() != Some(env.spec.head_sha.as_str())
    {
        status.ai =
            (advice.status != crate::crd::AiStatus::default()).then(|| advice.status.clone());
        status.selected_services = advice.services.clone();
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

    let expected_lifespan = expiry::expiry_policy(env).ttl.as_duration();
    let render = RenderInput {
        env: &effective,
        namespace: &ns_name,
        config: input.config,
        use_spot: tier::use_spot(expected_lifespan, env.spec.resources.use_spot),
        host: host.as_deref(),
    };

    // Desired objects: the namespace and its guard rails, the Ingress, the application.
    let base = match base_objects(&render, &ingress_spec) {
        Ok(base) => base,
        Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
    };
    let labels = crate::children::common_labels(env);
    let mut app = match input
        .strategy
        .desired(&render)
        .and_then(|objects| scoped(objects, &ns_name, &labels))
    {
        Ok(app) => app,
        Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
    };
    if let Some(token) = &restart_token {
        app = app
            .into_iter()
            .map(|o| sleep::restarted(o, token))
            .collect();
    }
    if let Some(reason) = sleeping {
        return plan_asleep(
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
    }
    let empty = NamespaceView::default();
    let view = input.observed.views.get(&ns_name).unwrap_or(&empty);
    let ns_meta = input.observed.namespaces.get(&ns_name);

    let mut plan = Plan::idle(old.clone());
    plan.finalizer = finalizer;
    let mut desired: Vec<DesiredObject> = Vec::new();
    if !waiting_for_namespace {
        desired.extend(base);
        desired.extend(app);
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
    } else {
        input.strategy.health(&render, view, &applying)
    };
    let (observation, message, services_deployed) = match health {
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
    let mut reason = if phase != original {
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
            match stage
                .desired(&render)
                .and_then(|objects| scoped(objects, &ns_name, &labels))
            {
                Ok(objects) => stage_objects.extend(objects),
                Err(e) => return stall(input, old, status, finalizer, &e.reason, &e.message),
            }
            outcome = stage.outcome(&render, view);
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
    let wanted: BTreeSet<ChildKey> = desired.iter().map(DesiredObject::key).collect();
    let applying = needs_apply(&desired, view, ns_meta);
    desired.retain(|d| applying.contains(&d.key()));
    // The namespace first, then by wave, keeping the strategy's order within a wave.
    desired.sort_by_key(|d| (d.resource.kind != "Namespace", d.wave));
    plan.apply = desired;
    if !waiting_for_namespace {
        plan.delete = view
            .children
            .iter()
            .filter(|(key, child)| !wanted.contains(key) && !child.deleting)
            .filter_map(|(key, _)| {
                let resource = resource_of(key, input)?;
                Some(ChildRef {
                    resource,
                    namespace: Some(ns_name.clone()),
                    name: key.name.clone(),
                })
            })
            .collect();
    }

    if status.provisioning_since.is_none() {
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
    status.costs = Some(estimate_costs(
        &effective,
        &input.config.pricing,
        created_at,
        now,
    ));

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
    if matches!(next, Phase::Provisioning | Phase::Pending | Phase::Testing) {
        wait = wait.min(input.config.poll_interval);
    }
    plan.requeue_after = Some(wait);
    plan.status = status;
    plan
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
fn resource_of(key: &ChildKey, input: &PlanInput<'_>) -> Option<ApiResource> {
    use k8s_openapi::api::apps::v1::Deployment;
    if key.kind == "Deployment" && key.api_version == "apps/v1" {
        return Some(ApiResource::erase::<Deployment>(&()));
    }
    watched_kinds(input.strategy, input.stages)
        .into_iter()
        .map(|k| k.resource)
        .find(|r| r.kind == key.kind && r.api_version == key.api_version)
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
    let mut objects = vec![
        DesiredObject::from_typed(&namespace).map_err(err)?,
        DesiredObject::from_typed(&desired_resource_quota(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&desired_limit_range(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&desired_default_deny(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&desired_allow_policy(env, ns, &cfg.guard)).map_err(err)?,
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

    let ns_name = namespace::recorded_name(env).unwrap_or_else(|| namespace::primary_name(env));
    if let Some(ns) = input.observed.namespaces.get(&ns_name)
        && namespace::is_owned(env, &ns_name, ns)
    {
        if !ns.deleting {
            plan.delete.push(ChildRef {
                resource: ApiResource::erase::<Namespace>(&()),
                namespace: None,
                name: ns_name,
            });
        }
        plan.status = status;
        plan.requeue_after = Some(TEARDOWN_POLL);
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

fn humanize(d: Duration) -> String {
    Ttl::try_from(d)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{d:?}"))
}

/// Cost of the environment as specified: the tier's requests times the replicas.
fn estimate_costs(
    env: &PreviewEnvironment,
    pricing: &Pricing,
    created_at: jiff::Timestamp,
    now: jiff::Timestamp,
) -> CostStatus {
    let tier = env.spec.resources.tier.unwrap_or_default();
    let per_container = tier.requests();
    let requests: ResourceRequests = env
        .spec
        .services
        .iter()
        .map(|s| {
            let n = u64::try_from(s.replicas).unwrap_or_default();
            ResourceRequests {
                cpu_millicores: per_container.cpu_millicores * n,
                memory_bytes: per_container.memory_bytes * n,
            }
        })
        .sum();
    let estimate = previewd_core::CostEstimate::estimate(&requests, pricing);
    // Spend to date is recomputed from the age rounded down to whole quarter hours, so an
    // idle environment's status changes (and is written) at most four times an hour.
    let age_secs = now.duration_since(created_at).as_secs().max(0) as u64;
    let age = Duration::from_secs(age_secs - age_secs % 900);
    let actual = previewd_core::cost::actual_cost(&requests, pricing, age);
    CostStatus {
        estimated_daily: Some(estimate.daily),
        actual_to_date: Some(actual),
        breakdown: Some(CostBreakdown {
            compute: estimate.breakdown.compute,
            storage: estimate.breakdown.storage,
            network: estimate.breakdown.network,
        }),
    }
}
