//! The safety-net sweep: deletes environments whose expiry passed while nothing requeued
//! them (a restart), and namespaces labelled as ours whose environment is gone.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use super::reconcile::expiry_policy;
use crate::children::{LABEL_ENV_NAMESPACE, delete_if_present};
use crate::crd::{LABEL_ENV, LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment};
use crate::error::{Error, KubeContext};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Environments deleted because they expired.
    pub expired: Vec<String>,
    /// Orphan namespaces deleted.
    pub orphans: Vec<String>,
}

pub(super) async fn run_periodically(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(ctx.config.cleanup_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match sweep_once(&ctx).await {
            Ok(report) if report != SweepReport::default() => info!(?report, "cleanup sweep"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cleanup sweep failed"),
        }
    }
}

/// Runs one sweep.
pub async fn sweep_once(ctx: &Context) -> Result<SweepReport, Error> {
    let mut report = SweepReport::default();
    let now = ctx.clock.now();
    let envs: Api<PreviewEnvironment> = match &ctx.config.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let all = envs
        .list(&ListParams::default())
        .await
        .context(|| "list PreviewEnvironments".into())?;
    for env in &all.items {
        if env.meta().deletion_timestamp.is_some() {
            continue;
        }
        let created = env
            .status
            .as_ref()
            .and_then(|s| s.created_at.as_ref())
            .or(env.metadata.creation_timestamp.as_ref())
            .map(|t| t.0);
        let Some(created) = created else { continue };
        let last_activity = env
            .annotations()
            .get(crate::crd::ANNOTATION_LAST_ACTIVITY)
            .and_then(|v| v.parse().ok());
        if expiry_policy(env).is_expired(now, created, last_activity) {
            let ns = env.namespace().unwrap_or_default();
            let api: Api<PreviewEnvironment> = Api::namespaced(ctx.client.clone(), &ns);
            if delete_if_present(&api, &env.name_any(), &DeleteParams::default()).await? {
                ctx.metrics.expired.inc();
                ctx.publish(
                    env,
                    EventType::Normal,
                    "TTLExpired",
                    "expired; deleted by the cleanup sweep".into(),
                )
                .await;
                report.expired.push(format!("{ns}/{}", env.name_any()));
            }
        }
    }

    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let list = namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .context(|| "list previewd namespaces".into())?;
    for ns in list.items {
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = ns.labels();
        let (Some(env_name), Some(env_ns)) =
            (labels.get(LABEL_ENV), labels.get(LABEL_ENV_NAMESPACE))
        else {
            continue;
        };
        if let Some(watched) = &ctx.config.watch_namespace
            && watched != env_ns
        {
            continue;
        }
        let api: Api<PreviewEnvironment> = Api::namespaced(ctx.client.clone(), env_ns);
        let exists = api
            .get_opt(env_name)
            .await
            .context(|| format!("get {env_ns}/{env_name}"))?;
        if exists.is_none() {
            let name = ns.name_any();
            info!(namespace = %name, env = %format!("{env_ns}/{env_name}"), "deleting orphan namespace");
            if delete_if_present(&namespaces, &name, &DeleteParams::background()).await? {
                ctx.metrics.orphans_swept.inc();
                report.orphans.push(name);
            }
        }
    }
    Ok(report)
}
