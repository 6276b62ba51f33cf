//! Deletion: Terminating → Terminated. Deletes the namespace, waits until it is gone,
//! then releases the finalizer. Safe to run any number of times.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use previewd_core::phase::transition;
use previewd_core::{Observation, Phase};
use serde_json::json;
use tracing::info;

use super::Context;
use super::reconcile::{namespace_is_ours, namespace_of, write_status};
use super::status::set_condition;
use crate::children::delete_if_present;
use crate::crd::{FINALIZER, PreviewEnvironment, condition};
use crate::error::{Error, KubeContext};

/// How often a terminating environment checks whether its namespace is gone.
const NAMESPACE_POLL: Duration = Duration::from_secs(1);

pub(super) async fn cleanup(env: &PreviewEnvironment, ctx: &Context) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let old = env.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let phase = old.phase.unwrap_or(Phase::Pending);
    let next = transition(phase, &Observation::DeletionRequested)
        .map(|t| t.next)
        .unwrap_or(Phase::Terminating);
    status.phase = Some(next);
    if status.deleted_at.is_none() {
        status.deleted_at = Some(Time(now));
    }
    let generation = env.metadata.generation;
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
    let mut resource_version = env.resource_version();
    if let Some(rv) = write_status(env, ctx, &old, &status).await? {
        resource_version = Some(rv);
    }
    if phase != Phase::Terminating && old != status {
        ctx.publish(
            env,
            EventType::Normal,
            "Terminating",
            "deleting the environment's namespace".into(),
        )
        .await;
        let mut reported = env.clone();
        reported.status = Some(status.clone());
        ctx.reporter.environment_changed(&reported).await;
    }

    let ns_name = namespace_of(env);
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if let Some(ns) = namespaces
        .get_opt(&ns_name)
        .await
        .context(|| format!("get Namespace {ns_name}"))?
        && namespace_is_ours(&ns, env)
    {
        if ns.meta().deletion_timestamp.is_none() {
            info!(env = %env.name_any(), namespace = %ns_name, "deleting namespace");
            delete_if_present(&namespaces, &ns_name, &DeleteParams::background()).await?;
        }
        return Ok(Action::requeue(NAMESPACE_POLL));
    }

    // Namespace gone: record Terminated, then release the finalizer.
    let before_final = status.clone();
    status.phase = Some(
        transition(next, &Observation::CleanupFinished)
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
    match write_status(env, ctx, &before_final, &status).await {
        Ok(Some(rv)) => resource_version = Some(rv),
        Ok(None) => {}
        Err(Error::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.is_not_found() => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    }
    remove_finalizer(env, ctx, resource_version).await?;
    let mut reported = env.clone();
    reported.status = Some(status);
    ctx.reporter.environment_deleted(&reported).await;
    ctx.advisor.environment_deleted(&reported).await;
    ctx.publish(
        env,
        EventType::Normal,
        "Terminated",
        format!("namespace {ns_name} deleted"),
    )
    .await;
    Ok(Action::await_change())
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
