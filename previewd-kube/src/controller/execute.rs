//! Execute: carries out a [`Plan`]. Generic server-side apply (one field manager,
//! `previewd`, forced) of dynamic objects, deletes where a 404 counts as done, the status
//! written only when it changed, Events, the report, the finalizer. Makes no decisions.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::Context;
use crate::crd::{FIELD_MANAGER, FINALIZER, PreviewEnvironment, PreviewEnvironmentStatus};
use crate::error::{Error, KubeContext};
use crate::plan::namespace::ANNOTATION_OWNER_UID;
use crate::plan::object::{ChildRef, DesiredObject};
use crate::plan::{FinalizerAction, Plan, Report};

/// Carries out `plan` for `env`.
pub(crate) async fn execute(
    env: &PreviewEnvironment,
    plan: Plan,
    ctx: &Context,
) -> Result<Action, Error> {
    // The resourceVersion the status write is conditional on: the one the plan was
    // computed from, or the one our own finalizer patch produced from it (that patch
    // was conditional on the same version, so nothing else changed in between). Without
    // this, every new environment's first status write failed with a conflict and cost
    // a second reconcile.
    let mut status_precondition = env.resource_version();
    if plan.finalizer == FinalizerAction::Add {
        status_precondition = add_finalizer(env, ctx).await?;
    }
    if !plan.annotate.is_empty() {
        annotate(env, ctx, &plan.annotate).await?;
        // Not conditional: another writer may have changed the object meanwhile, so the
        // status stays conditional on the version it was computed from.
        status_precondition = env.resource_version();
    }
    if plan.delete_environment {
        match plan.deletion_reason {
            Some(crate::plan::budget::REASON_BUDGET_EXCEEDED) => {
                ctx.metrics.budget_deleted.inc();
            }
            _ => {
                ctx.metrics.expired.inc();
                if let Some(expires) = plan.status.expires_at.as_ref() {
                    observe_since(&ctx.metrics.cleanup_lag, expires.0, ctx);
                }
            }
        }
        // What the pass recorded before deciding (a budget's condition) is written
        // first, so that the teardown's report carries it.
        let old = env.status.clone().unwrap_or_default();
        if let Err(e) =
            write_status(env, ctx, status_precondition.clone(), &old, &plan.status).await
        {
            tracing::debug!(env = %env.name_any(), error = %e, "status before deletion not written");
        }
        publish_all(env, &plan, ctx).await;
        let api = ctx.env_api(env)?;
        match api.delete(&env.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("delete expired environment {}", env.name_any()),
                    source,
                });
            }
        }
        return Ok(requeue(&plan));
    }
    apply_in_groups(ctx, &plan.apply).await?;
    for child in &plan.delete {
        delete(ctx, child).await?;
    }
    let old = env.status.clone().unwrap_or_default();
    let mut resource_version = status_precondition.clone();
    match write_status(env, ctx, status_precondition, &old, &plan.status).await {
        Ok(Some(rv)) => resource_version = Some(rv),
        Ok(None) => {}
        // The status was computed from an older object than the API server holds (a
        // stale cache): look again at the current one rather than overwrite it.
        Err(Error::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 409 => {
            return Ok(Action::requeue(std::time::Duration::from_millis(200)));
        }
        // The environment is gone while tearing down: nothing left to do.
        Err(Error::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.is_not_found() && plan.finalizer == FinalizerAction::Release => {
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    }
    for &phase in &plan.entered {
        if phase == previewd_core::Phase::Ready
            && let Some(since) = plan
                .status
                .provisioning_since
                .as_ref()
                .or(plan.status.created_at.as_ref())
        {
            observe_since(&ctx.metrics.time_to_ready, since.0, ctx);
        }
        ctx.metrics
            .transitions
            .get_or_create(&crate::metrics::PhaseLabels {
                phase: phase.to_string(),
            })
            .inc();
    }
    let labels = crate::metrics::EnvironmentLabels {
        namespace: env.namespace().unwrap_or_default(),
        name: env.name_any(),
    };
    if plan.finalizer == FinalizerAction::Release {
        remove_finalizer(env, ctx, resource_version).await?;
        if let Some(deleted) = env.metadata.deletion_timestamp.as_ref() {
            observe_since(&ctx.metrics.teardown, deleted.0, ctx);
        }
        ctx.metrics.record_cost(labels, None);
    } else if let Some(costs) = &plan.status.costs {
        ctx.metrics.record_cost(
            labels,
            Some((
                costs.hourly.unwrap_or_default(),
                costs.actual_to_date.unwrap_or_default(),
            )),
        );
    }
    publish_all(env, &plan, ctx).await;
    if let Some(report) = plan.report {
        let mut reported = env.clone();
        reported.status = Some(plan.status.clone());
        let reported = crate::advice::view_of(&reported);
        match report {
            Report::Changed => {
                if ctx.hand_report(env, plan.status.pending_report.as_deref()) {
                    ctx.reporter.environment_changed(&reported).await;
                }
            }
            Report::Deleted => {
                ctx.forget_reports(env);
                ctx.reporter.environment_deleted(&reported).await;
                ctx.advisor.environment_deleted(&reported).await;
            }
        }
    }
    Ok(requeue(&plan))
}

/// Records the seconds from `since` to now (never negative) in `histogram`.
fn observe_since(
    histogram: &prometheus_client::metrics::histogram::Histogram,
    since: jiff::Timestamp,
    ctx: &Context,
) {
    let seconds = ctx.clock.now().duration_since(since).as_secs_f64();
    histogram.observe(seconds.max(0.0));
}

fn requeue(plan: &Plan) -> Action {
    match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

/// Publishes the plan's events, all at once: they are independent writes, and a
/// reconcile that waited for each in turn held its slot for a round trip per event.
async fn publish_all(env: &PreviewEnvironment, plan: &Plan, ctx: &Context) {
    futures::future::join_all(plan.events.iter().map(|event| {
        let type_ = if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.publish(env, type_, &event.reason, event.note.clone())
    }))
    .await;
}

fn api_for(
    ctx: &Context,
    resource: &kube::core::ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, resource),
        None => Api::all_with(ctx.client.clone(), resource),
    }
}

/// Makes sure a namespace carrying an ownership marker is this environment's before it
/// is applied. The planner chose the name from the watch cache, which may not have seen
/// another environment's namespace of the same name yet (two environments of the same PR
/// number and branch, in different repositories, created at once); a forced apply would
/// then take that namespace over, and both environments would deploy into it. So a
/// namespace the cache does not show as ours is created exclusively (a POST fails when it
/// exists), and an existing one is applied only while its marker names this owner (or
/// carries none: an unmarked namespace is adopted by the planner's rules). Anything else
/// fails the reconcile; the next one sees the namespace and chooses another name.
async fn claim_namespace(ctx: &Context, object: &DesiredObject) -> Result<(), Error> {
    if !(object.resource.group.is_empty() && object.resource.kind == "Namespace") {
        return Ok(());
    }
    let Some(owner) = object
        .object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_OWNER_UID))
        .and_then(serde_json::Value::as_str)
    else {
        return Ok(());
    };
    let marker_of = |annotations: Option<&std::collections::BTreeMap<String, String>>| {
        annotations
            .and_then(|a| a.get(ANNOTATION_OWNER_UID))
            .cloned()
    };
    let check = |marker: Option<String>| match marker {
        Some(marker) if marker != owner => Err(Error::NamespaceTaken(object.name.clone())),
        _ => Ok(()),
    };
    if let Some(cached) = ctx
        .caches
        .namespaces
        .get(&kube::runtime::reflector::ObjectRef::new(&object.name))
    {
        return check(marker_of(cached.metadata.annotations.as_ref()));
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace: Namespace = serde_json::from_value(object.object.clone())?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    match api.create(&params, &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Listed, not read: the shipped roles grant namespaces list and watch only.
            let live = api
                .list_metadata(
                    &kube::api::ListParams::default()
                        .fields(&format!("metadata.name={}", object.name)),
                )
                .await
                .context(|| format!("list Namespace {}", object.name))?;
            match live.items.into_iter().next() {
                Some(ns) => check(marker_of(ns.metadata.annotations.as_ref())),
                // Deleted meanwhile: the next reconcile creates it.
                None => Err(Error::NamespaceTaken(object.name.clone())),
            }
        }
        Err(source) => Err(Error::Kube {
            action: format!("create Namespace {}", object.name),
            source,
        }),
    }
}

/// Which objects may be applied together: the namespace alone and first, then its guard
/// rails (quota, limit range, network policies: in force before any pod is admitted),
/// then the rest, each wave after the one before.
fn apply_group(object: &DesiredObject) -> (i32, u8) {
    let kind = object.resource.kind.as_str();
    let class = match (object.resource.group.as_str(), kind) {
        ("", "Namespace") => 0,
        ("", "ResourceQuota" | "LimitRange") | ("networking.k8s.io", "NetworkPolicy") => 1,
        _ => 2,
    };
    (object.wave, class)
}

/// The groups of consecutive objects of the same [`apply_group`], in the plan's order.
pub(crate) fn apply_groups(objects: &[DesiredObject]) -> Vec<&[DesiredObject]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=objects.len() {
        if i == objects.len() || apply_group(&objects[i]) != apply_group(&objects[start]) {
            if start < i {
                groups.push(&objects[start..i]);
            }
            start = i;
        }
    }
    groups
}

/// How many applies of one group are in flight at once.
const APPLIES_IN_FLIGHT: usize = 8;

/// Applies the plan's objects: a group's objects at the same time (they do not depend on
/// each other), the groups one after the other. A reconcile then costs a few round
/// trips to the API server instead of one per object.
async fn apply_in_groups(ctx: &Context, objects: &[DesiredObject]) -> Result<(), Error> {
    use futures::{StreamExt, TryStreamExt};
    type Applying<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + 'a>>;
    for group in apply_groups(objects) {
        let applies: Vec<Applying<'_>> = group
            .iter()
            .map(|object| Box::pin(claim_and_apply(ctx, object)) as Applying<'_>)
            .collect();
        futures::stream::iter(applies)
            .buffer_unordered(APPLIES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(())
}

async fn claim_and_apply(ctx: &Context, object: &DesiredObject) -> Result<(), Error> {
    claim_namespace(ctx, object).await?;
    apply(ctx, object).await
}

/// Server-side applies one object.
pub(crate) async fn apply(ctx: &Context, object: &DesiredObject) -> Result<(), Error> {
    let api = api_for(ctx, &object.resource, object.namespace.as_deref());
    api.patch(
        &object.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object.object),
    )
    .await
    .context(|| format!("apply {} {}", object.resource.kind, object.name))?;
    Ok(())
}

/// Deletes one object in the background; already gone counts as done.
pub(crate) async fn delete(ctx: &Context, child: &ChildRef) -> Result<(), Error> {
    let api = api_for(ctx, &child.resource, child.namespace.as_deref());
    match api.delete(&child.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("delete {} {}", child.resource.kind, child.name),
            source,
        }),
    }
}

/// Adds our finalizer with a patch conditional on the environment's resourceVersion;
/// returns the resourceVersion the patch produced.
async fn add_finalizer(env: &PreviewEnvironment, ctx: &Context) -> Result<Option<String>, Error> {
    let api = ctx.env_api(env)?;
    let mut finalizers = env.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    // A merge patch carrying the resourceVersion fails with a conflict instead of
    // overwriting a concurrent change of the finalizer list.
    let patch = json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": env.resource_version()}
    });
    let patched = api
        .patch(
            &env.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context(|| format!("add finalizer to {}", env.name_any()))?;
    Ok(patched.resource_version())
}

/// Removes our finalizer. The merge patch carries the resourceVersion last seen, so a
/// concurrent change of the finalizer list fails with a conflict (and is retried) instead
/// of being overwritten.
async fn remove_finalizer(
    env: &PreviewEnvironment,
    ctx: &Context,
    resource_version: Option<String>,
) -> Result<(), Error> {
    if !env.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let finalizers: Vec<&String> = env
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let api = ctx.env_api(env)?;
    let patch = json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": resource_version}
    });
    match api
        .patch(
            &env.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("remove finalizer from {}", env.name_any()),
            source,
        }),
    }
}

/// Sets or removes annotations of the environment (a merge patch of those keys only).
async fn annotate(
    env: &PreviewEnvironment,
    ctx: &Context,
    annotations: &std::collections::BTreeMap<String, Option<String>>,
) -> Result<(), Error> {
    let api = ctx.env_api(env)?;
    let patch = json!({"metadata": {"annotations": annotations}});
    api.patch(
        &env.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .context(|| format!("annotate {}", env.name_any()))?;
    Ok(())
}

/// Writes the status with server-side apply, only when it differs from the live one,
/// conditional on `resource_version` (the version it was computed from).
/// Returns the new resourceVersion when it wrote.
pub(crate) async fn write_status(
    env: &PreviewEnvironment,
    ctx: &Context,
    resource_version: Option<String>,
    old: &PreviewEnvironmentStatus,
    new: &PreviewEnvironmentStatus,
) -> Result<Option<String>, Error> {
    if old == new {
        return Ok(None);
    }
    let api = ctx.env_api(env)?;
    // The resourceVersion makes the write conditional: the status (the spend to date in
    // particular) is only written over the object it was computed from.
    let patch = json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"resourceVersion": resource_version},
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn object<K: kube::Resource<DynamicType = ()> + serde::Serialize>(name: &str) -> DesiredObject {
        let mut value = serde_json::json!({"metadata": {"name": name}});
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = K::kind(&()).into();
        DesiredObject::from_value(kube::core::ApiResource::erase::<K>(&()), value)
    }

    #[test]
    fn the_namespace_goes_alone_then_its_guard_rails_then_the_rest() {
        let objects = vec![
            object::<Namespace>("ns"),
            object::<ResourceQuota>("q"),
            object::<LimitRange>("l"),
            object::<NetworkPolicy>("deny"),
            object::<NetworkPolicy>("allow"),
            object::<Deployment>("api"),
            object::<Service>("api"),
        ];
        let groups: Vec<Vec<&str>> = apply_groups(&objects)
            .iter()
            .map(|g| g.iter().map(|o| o.resource.kind.as_str()).collect())
            .collect();
        assert_eq!(
            groups,
            vec![
                vec!["Namespace"],
                vec![
                    "ResourceQuota",
                    "LimitRange",
                    "NetworkPolicy",
                    "NetworkPolicy"
                ],
                vec!["Deployment", "Service"],
            ]
        );
        // A later wave waits for the one before, whatever its kinds.
        let mut later = object::<Service>("late");
        later.wave = 1;
        let mut waves = objects.clone();
        waves.push(later);
        assert_eq!(apply_groups(&waves).len(), 4);
        assert!(apply_groups(&[]).is_empty());
    }
}
