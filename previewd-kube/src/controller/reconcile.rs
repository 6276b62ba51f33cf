//! The apply path of the reconciler.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use previewd_core::phase::transition;
use previewd_core::ttl::{DO_NOT_EXPIRE_LABEL, label_requests_no_expiry};
use previewd_core::{
    ExpiryPolicy, Observation, Phase, Pricing, ResourceRequests, Tier, Ttl, naming, tier,
};
use serde_json::json;
use tracing::{debug, info};

use super::Context;
use super::cleanup;
use super::observe::{ServiceHealth, observe_services};
use super::status::set_condition;
use crate::children::ingress::{INGRESS_NAME, desired_ingress, urls};
use crate::children::namespace::{
    desired_allow_policy, desired_default_deny, desired_limit_range, desired_namespace,
    desired_resource_quota,
};
use crate::children::workload::{desired_deployment, desired_service};
use crate::children::{Applied, LABEL_ENV_NAMESPACE, apply, delete_if_present, ensure};
use crate::crd::{
    ANNOTATION_LAST_ACTIVITY, CostBreakdown, CostStatus, FIELD_MANAGER, FINALIZER, LABEL_ENV,
    LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment, PreviewEnvironmentStatus, condition,
};
use crate::error::{Error, KubeContext};

/// Entry point: deletion goes to cleanup, everything else to apply.
pub(super) async fn reconcile(
    env: Arc<PreviewEnvironment>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if env.meta().deletion_timestamp.is_some() {
        if env.finalizers().iter().any(|f| f == FINALIZER) {
            return cleanup::cleanup(&env, &ctx).await;
        }
        return Ok(Action::await_change());
    }
    if !env.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&env, &ctx).await?;
    }
    apply_environment(&env, &ctx).await
}

async fn add_finalizer(env: &PreviewEnvironment, ctx: &Context) -> Result<(), Error> {
    let api = ctx.env_api(env)?;
    let mut finalizers = env.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    // A merge patch carrying the resourceVersion fails with a conflict instead of
    // overwriting a concurrent change of the finalizer list.
    let patch = json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": env.resource_version()}
    });
    api.patch(
        &env.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .context(|| format!("add finalizer to {}", env.name_any()))?;
    Ok(())
}

/// The environment as deployed: with `serviceSelection: Affected`, only the selected
/// services (never none: an empty selection deploys everything).
fn effective_environment(
    env: &PreviewEnvironment,
    status: &PreviewEnvironmentStatus,
) -> PreviewEnvironment {
    let mut effective = env.clone();
    if env.spec.service_selection == Some(crate::crd::DeployPolicy::Affected)
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

fn parse_time(value: Option<&String>) -> Option<jiff::Timestamp> {
    value.and_then(|v| v.parse::<jiff::Timestamp>().ok())
}

/// The expiry policy of an environment: spec fields plus the opt-out label.
pub(crate) fn expiry_policy(env: &PreviewEnvironment) -> ExpiryPolicy {
    ExpiryPolicy {
        ttl: env.spec.ttl.unwrap_or(Ttl::DEFAULT),
        auto_extend: env.spec.auto_extend,
        max_lifespan: env.spec.max_lifespan.unwrap_or(Ttl::MAX_LIFESPAN_DEFAULT),
        do_not_expire: env
            .labels()
            .get(DO_NOT_EXPIRE_LABEL)
            .is_some_and(|v| label_requests_no_expiry(v)),
    }
}

/// Name of the environment's namespace: recorded in the status once chosen.
pub(crate) fn namespace_of(env: &PreviewEnvironment) -> String {
    env.status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .unwrap_or_else(|| {
            naming::namespace_name(
                u64::try_from(env.spec.pr_number).unwrap_or_default(),
                &env.spec.branch,
            )
        })
}

/// True when a namespace carries this environment's labels.
pub(crate) fn namespace_is_ours(ns: &Namespace, env: &PreviewEnvironment) -> bool {
    let labels = ns.labels();
    labels.get(LABEL_ENV) == Some(&env.name_any())
        && labels.get(LABEL_ENV_NAMESPACE) == env.namespace().as_ref()
        && labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
}

struct Progress {
    observation: Observation,
    message: String,
    namespace_ready: bool,
    services_deployed: bool,
    stalled: Option<(String, String)>,
}

async fn apply_environment(env: &PreviewEnvironment, ctx: &Context) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let old = env.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let phase = old.phase.unwrap_or(Phase::Pending);
    let generation = env.metadata.generation;

    let created_at = old
        .created_at
        .as_ref()
        .map(|t| t.0)
        .or_else(|| env.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    status.created_at = Some(Time(created_at));

    // Expiry first: an expired environment is deleted, whatever else is going on.
    let policy = expiry_policy(env);
    let last_activity = parse_time(env.annotations().get(ANNOTATION_LAST_ACTIVITY));
    let expires_at = policy.expires_at(created_at, last_activity);
    status.expires_at = Some(Time(expires_at));
    if now >= expires_at {
        info!(env = %env.name_any(), %expires_at, "TTL expired; deleting");
        ctx.metrics.expired.inc();
        ctx.publish(
            env,
            EventType::Normal,
            "TTLExpired",
            format!("environment expired at {expires_at}; deleting"),
        )
        .await;
        delete_if_present(
            &ctx.env_api(env)?,
            &env.name_any(),
            &DeleteParams::default(),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // Spec problems the schema cannot express stall the environment with a clear message.
    if let Err(e) = policy.validate() {
        return stall(env, ctx, old, status, "InvalidSpec", &e.to_string(), now).await;
    }

    // A new head commit or spec rolls the services again.
    let mut phase = phase;
    let spec_changed = old.observed_generation.is_some()
        && (old.observed_generation != generation
            || old.deployed_sha.as_deref() != Some(env.spec.head_sha.as_str()));
    if spec_changed && phase != Phase::Pending {
        let t = transition(phase, &Observation::SpecChanged)
            .map_err(|_| Error::MissingField("phase"))?;
        phase = t.next;
        status.provisioning_since = Some(Time(now));
        status.ready_at = None;
    }

    // Advice once per head commit: which services, what the AI engine decided.
    if status.advised_sha.as_deref() != Some(env.spec.head_sha.as_str()) {
        let advice = tokio::time::timeout(ctx.config.advice_timeout, ctx.advisor.advise(env))
            .await
            .unwrap_or_else(|_| crate::advice::Advice {
                services: None,
                status: crate::crd::AiStatus {
                    source: Some("fallback".into()),
                    reason: Some("advisor timed out; deploying every service".into()),
                    ..Default::default()
                },
            });
        status.ai = (advice.status != crate::crd::AiStatus::default()).then_some(advice.status);
        status.selected_services = advice.services;
        status.advised_sha = Some(env.spec.head_sha.clone());
    }
    let effective = effective_environment(env, &status);
    let env = &effective;

    let ns_name = namespace_of(env);
    status.namespace = Some(ns_name.clone());
    let progress = apply_children(env, ctx, &ns_name, &mut status, now).await?;
    if let Some((reason, message)) = progress.stalled {
        return stall(env, ctx, old, status, &reason, &message, now).await;
    }
    if status.provisioning_since.is_none() {
        status.provisioning_since = Some(Time(now));
    }

    // Phase: namespace first, then services.
    let mut next = phase;
    let mut reason = "Pending";
    if progress.namespace_ready
        && let Ok(t) = transition(next, &Observation::NamespaceReady)
    {
        reason = if t.next != next { t.reason } else { reason };
        next = t.next;
    }
    if let Ok(t) = transition(next, &progress.observation) {
        if t.next != next {
            reason = t.reason;
        }
        next = t.next;
    }
    if next == Phase::Ready && phase != Phase::Ready {
        status.ready_at = Some(Time(now));
    }
    status.phase = Some(next);
    status.deployed_sha = Some(env.spec.head_sha.clone());
    status.observed_generation = generation;
    status.message = Some(progress.message.clone());

    // Conditions.
    let serving = next.is_serving();
    let failed = next == Phase::Failed;
    set_condition(
        &mut status.conditions,
        condition::NAMESPACE_READY,
        progress.namespace_ready,
        if progress.namespace_ready {
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
        progress.services_deployed,
        if progress.services_deployed {
            "ServicesAvailable"
        } else if failed {
            "ServicesFailed"
        } else {
            "ServicesProgressing"
        },
        &progress.message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::READY,
        serving,
        if serving {
            "Ready"
        } else if failed {
            reason_of_failure(&old, reason)
        } else {
            "Provisioning"
        },
        &progress.message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        !serving && !failed,
        if !serving && !failed {
            "Provisioning"
        } else {
            "Settled"
        },
        if !serving && !failed {
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
        if failed {
            reason_of_failure(&old, reason)
        } else {
            "NotStalled"
        },
        if failed {
            progress.message.as_str()
        } else {
            ""
        },
        generation,
        now,
    );

    status.costs = Some(estimate_costs(
        env,
        &ctx.config.pricing,
        created_at,
        now,
        &old,
    ));

    write_status(env, ctx, &old, &status).await?;
    if next != phase || old.phase.is_none() {
        ctx.metrics
            .transitions
            .get_or_create(&crate::metrics::PhaseLabels {
                phase: next.to_string(),
            })
            .inc();
        let (type_, note) = if next == Phase::Failed {
            (EventType::Warning, progress.message.clone())
        } else {
            (
                EventType::Normal,
                format!("phase {phase} -> {next}: {}", progress.message),
            )
        };
        ctx.publish(env, type_, reason, note).await;
        let mut reported = env.clone();
        reported.status = Some(status.clone());
        ctx.reporter.environment_changed(&reported).await;
    }

    // Requeue at the earliest of expiry, the next poll while provisioning, the resync.
    let until_expiry = expires_at
        .duration_since(now)
        .try_into()
        .unwrap_or(Duration::ZERO)
        + Duration::from_millis(5);
    let mut wait = ctx.config.resync_interval.min(until_expiry);
    if next == Phase::Provisioning || next == Phase::Pending {
        wait = wait.min(ctx.config.poll_interval);
    }
    debug!(env = %env.name_any(), phase = %next, requeue = ?wait, "reconciled");
    Ok(Action::requeue(wait))
}

/// The reason of a failure: the observation that caused it, or, on later reconciles of
/// an environment already in Failed, the reason recorded when it failed.
fn reason_of_failure(old: &PreviewEnvironmentStatus, reason: &'static str) -> &'static str {
    const FAILURES: [&str; 3] = ["ReadinessDeadlineExceeded", "ServiceFailed", "TestsFailed"];
    if let Some(found) = FAILURES.iter().find(|f| **f == reason) {
        return found;
    }
    old.conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .and_then(|c| FAILURES.iter().find(|f| **f == c.reason))
        .copied()
        .unwrap_or("Failed")
}

async fn stall(
    env: &PreviewEnvironment,
    ctx: &Context,
    old: PreviewEnvironmentStatus,
    mut status: PreviewEnvironmentStatus,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> Result<Action, Error> {
    let generation = env.metadata.generation;
    status.observed_generation = generation;
    status.message = Some(message.to_string());
    if status.phase.is_none() {
        status.phase = Some(Phase::Pending);
    }
    set_condition(
        &mut status.conditions,
        condition::STALLED,
        true,
        reason,
        message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::READY,
        false,
        reason,
        message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        false,
        reason,
        message,
        generation,
        now,
    );
    let changed = write_status(env, ctx, &old, &status).await?;
    if changed.is_some() {
        ctx.publish(env, EventType::Warning, reason, message.to_string())
            .await;
    }
    Ok(Action::requeue(ctx.config.resync_interval))
}

/// Writes the status with server-side apply, only when it differs from the live one.
/// Returns the new resourceVersion when it wrote.
pub(crate) async fn write_status(
    env: &PreviewEnvironment,
    ctx: &Context,
    old: &PreviewEnvironmentStatus,
    new: &PreviewEnvironmentStatus,
) -> Result<Option<String>, Error> {
    if old == new {
        return Ok(None);
    }
    let api = ctx.env_api(env)?;
    let patch = json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "status": new,
    });
    let written = api
        .patch_status(
            &env.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .context(|| format!("write status of {}", env.name_any()))?;
    Ok(Some(written.resource_version().unwrap_or_default()))
}

fn estimate_costs(
    env: &PreviewEnvironment,
    pricing: &Pricing,
    created_at: jiff::Timestamp,
    now: jiff::Timestamp,
    old: &PreviewEnvironmentStatus,
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
    let _ = old;
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

async fn apply_children(
    env: &PreviewEnvironment,
    ctx: &Context,
    ns_name: &str,
    status: &mut PreviewEnvironmentStatus,
    now: jiff::Timestamp,
) -> Result<Progress, Error> {
    let client = ctx.client.clone();
    let cfg = &ctx.config;

    // Namespace and guard rails.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let live_ns = namespaces
        .get_opt(ns_name)
        .await
        .context(|| format!("get Namespace {ns_name}"))?;
    if let Some(ns) = &live_ns {
        if !namespace_is_ours(ns, env) {
            // Another environment (another repository or namespace with the same PR
            // number and branch) holds the name: choose a disambiguated one, once; the
            // choice is recorded in the status and kept.
            let recorded =
                env.status.as_ref().and_then(|s| s.namespace.as_deref()) == Some(ns_name);
            let alternative = naming::namespace_name(
                u64::try_from(env.spec.pr_number).unwrap_or_default(),
                &format!(
                    "{}@{}/{}/{}",
                    env.spec.branch,
                    env.spec.repository,
                    env.namespace().unwrap_or_default(),
                    env.name_any()
                ),
            );
            if recorded || alternative == ns_name {
                return Ok(stalled(
                    "NamespaceConflict",
                    format!("namespace {ns_name} exists and does not belong to this environment"),
                ));
            }
            status.namespace = Some(alternative.clone());
            return Box::pin(apply_children(env, ctx, &alternative, status, now)).await;
        }
        if ns.meta().deletion_timestamp.is_some() {
            return Ok(Progress {
                observation: Observation::ServicesProgressing,
                message: format!(
                    "waiting for the previous namespace {ns_name} to finish terminating"
                ),
                namespace_ready: false,
                services_deployed: false,
                stalled: None,
            });
        }
    }
    apply(
        &namespaces,
        desired_namespace(env, ns_name, &cfg.guard),
        live_ns.as_ref(),
    )
    .await
    .context(|| format!("apply Namespace {ns_name}"))?;

    ensure(
        &Api::<ResourceQuota>::namespaced(client.clone(), ns_name),
        desired_resource_quota(env, ns_name),
    )
    .await?;
    ensure(
        &Api::<LimitRange>::namespaced(client.clone(), ns_name),
        desired_limit_range(env, ns_name),
    )
    .await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns_name);
    ensure(&policies, desired_default_deny(env, ns_name)).await?;
    ensure(&policies, desired_allow_policy(env, ns_name, &cfg.guard)).await?;

    // Workloads.
    let tier_ = env.spec.resources.tier.unwrap_or(Tier::Small);
    let expected_lifespan = expiry_policy(env).ttl.as_duration();
    let use_spot = tier::use_spot(expected_lifespan, env.spec.resources.use_spot);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns_name);
    let services: Api<Service> = Api::namespaced(client.clone(), ns_name);
    let mut live_deployments = Vec::new();
    for svc in &env.spec.services {
        let desired = desired_deployment(env, ns_name, svc, tier_, use_spot, &cfg.workload);
        let current = match ensure(&deployments, desired).await? {
            (Applied::Unchanged, Some(live)) => live,
            _ => deployments
                .get(&svc.name)
                .await
                .context(|| format!("get Deployment {ns_name}/{}", svc.name))?,
        };
        live_deployments.push(current);
        ensure(&services, desired_service(env, ns_name, svc)).await?;
    }
    prune_removed_services(env, &deployments, &services).await?;

    // Ingress.
    let ingress_spec = env.spec.ingress.clone().unwrap_or_default();
    let host = ingress_spec.host.clone().unwrap_or_else(|| {
        naming::ingress_host(
            u64::try_from(env.spec.pr_number).unwrap_or_default(),
            &cfg.base_domain,
        )
    });
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns_name);
    if ingress_spec.enabled {
        let issuer = ingress_spec
            .cluster_issuer
            .clone()
            .unwrap_or_else(|| cfg.cert_issuer.clone());
        let desired = desired_ingress(
            env,
            ns_name,
            &host,
            ingress_spec.tls,
            ingress_spec.class_name.as_deref(),
            &issuer,
        );
        ensure(&ingresses, desired).await?;
        let (url, per_service) = urls(&host, ingress_spec.tls, &env.spec.services);
        status.url = Some(url);
        status.urls = per_service;
    } else {
        // Exposure switched off: an Ingress created earlier goes away (read first, so a
        // converged environment sends no write).
        let existing = ingresses
            .get_opt(INGRESS_NAME)
            .await
            .context(|| format!("get Ingress {ns_name}"))?;
        if existing.is_some() {
            delete_if_present(&ingresses, INGRESS_NAME, &DeleteParams::default()).await?;
        }
        status.url = None;
        status.urls.clear();
    }

    // Observe.
    let deadline = status
        .provisioning_since
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now)
        .checked_add(
            jiff::SignedDuration::try_from(ctx.config.readiness_timeout).unwrap_or_default(),
        )
        .unwrap_or(jiff::Timestamp::MAX);
    let health = observe_services(&client, ns_name, &live_deployments).await?;
    let progress = match health {
        ServiceHealth::Available => Progress {
            observation: Observation::ServicesAvailable,
            message: format!("{} service(s) available", env.spec.services.len()),
            namespace_ready: true,
            services_deployed: true,
            stalled: None,
        },
        ServiceHealth::Failed(message) => Progress {
            observation: Observation::ServiceFailed {
                reason: message.clone(),
            },
            message,
            namespace_ready: true,
            services_deployed: false,
            stalled: None,
        },
        ServiceHealth::Progressing(message) if now >= deadline => Progress {
            observation: Observation::ReadinessDeadlineExceeded,
            message: format!(
                "services not available within {}: {message}",
                humanize(ctx.config.readiness_timeout)
            ),
            namespace_ready: true,
            services_deployed: false,
            stalled: None,
        },
        ServiceHealth::Progressing(message) => Progress {
            observation: Observation::ServicesProgressing,
            message,
            namespace_ready: true,
            services_deployed: false,
            stalled: None,
        },
    };
    Ok(progress)
}

fn humanize(d: Duration) -> String {
    Ttl::try_from(d)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{d:?}"))
}

fn stalled(reason: &str, message: String) -> Progress {
    Progress {
        observation: Observation::ServicesProgressing,
        message: message.clone(),
        namespace_ready: false,
        services_deployed: false,
        stalled: Some((reason.to_string(), message)),
    }
}

/// Deletes Deployments and Services of services no longer in the spec.
async fn prune_removed_services(
    env: &PreviewEnvironment,
    deployments: &Api<Deployment>,
    services: &Api<Service>,
) -> Result<(), Error> {
    let selector = format!(
        "{LABEL_ENV}={},{LABEL_MANAGED_BY}={MANAGED_BY}",
        env.name_any()
    );
    let lp = ListParams::default().labels(&selector);
    let wanted: Vec<&str> = env.spec.services.iter().map(|s| s.name.as_str()).collect();
    let live = deployments
        .list_metadata(&lp)
        .await
        .context(|| "list Deployments".to_string())?;
    for d in live.items {
        let name = d.name_any();
        if !wanted.contains(&name.as_str()) {
            info!(env = %env.name_any(), service = %name, "removing service no longer in the spec");
            delete_if_present(deployments, &name, &DeleteParams::background()).await?;
            delete_if_present(services, &name, &DeleteParams::background()).await?;
        }
    }
    Ok(())
}
