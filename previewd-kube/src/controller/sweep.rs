//! The safety-net sweep: deletes environments whose expiry passed while nothing requeued
//! them (a restart), and namespaces previewd created whose environment is gone.
//!
//! A namespace is deleted only when it has previewd's name prefix and labels *and* an
//! ownership marker (`previewd.io/owner-uid`) naming an environment that no longer
//! exists: labels alone prove nothing, anybody who may label a namespace can set them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use crate::children::{ANNOTATION_APPLIED_HASH, LABEL_ENV_NAMESPACE, delete_if_present};
use crate::crd::{LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment};
use crate::error::{Error, KubeContext};
use crate::plan::expiry;
use crate::plan::namespace::{ANNOTATION_OWNER_UID, NamespaceMeta, is_orphan};

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
    // Expiry acts on this shard's environments only; orphans are judged against every
    // environment, whichever shard reconciles it.
    let selected = match &ctx.config.environment_selector {
        Some(selector) => {
            envs.list(&ListParams::default().labels(selector))
                .await
                .context(|| format!("list PreviewEnvironments matching {selector:?}"))?
                .items
        }
        None => all.items.clone(),
    };
    for env in &selected {
        if env.meta().deletion_timestamp.is_some() {
            continue;
        }
        if expiry::is_expired(env, now) {
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
    let live_uids: std::collections::BTreeSet<String> =
        all.items.iter().filter_map(|e| e.uid()).collect();

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
        let Some(env_ns) = labels.get(LABEL_ENV_NAMESPACE) else {
            continue;
        };
        if let Some(watched) = &ctx.config.watch_namespace
            && watched != env_ns
        {
            continue;
        }
        let name = ns.name_any();
        let meta = NamespaceMeta {
            labels: labels.clone(),
            owner_uid: ns.annotations().get(ANNOTATION_OWNER_UID).cloned(),
            deleting: false,
            applied_hash: ns.annotations().get(ANNOTATION_APPLIED_HASH).cloned(),
        };
        if is_orphan(&name, &meta, &live_uids) {
            info!(namespace = %name, owner = ?meta.owner_uid, "deleting orphan namespace");
            if delete_if_present(&namespaces, &name, &DeleteParams::background()).await? {
                ctx.metrics.orphans_swept.inc();
                report.orphans.push(name);
            }
        }
    }
    Ok(report)
}
