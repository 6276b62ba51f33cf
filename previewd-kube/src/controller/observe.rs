//! Observe: everything the planner needs, read from the watch caches (and the advisor,
//! once per head commit). Makes no decisions and writes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::Context;
use super::caches::{Caches, KindCache};
use crate::advice::Advice;
use crate::children::{ANNOTATION_APPLIED_HASH, LABEL_ENV_NAMESPACE};
use crate::crd::{AiStatus, LABEL_ENV, PreviewEnvironment};
use crate::plan::Observed;
use crate::plan::host::{HostClaim, requested_host};
use crate::plan::namespace::{self, ANNOTATION_OWNER_UID, NamespaceMeta};
use crate::plan::object::{ChildKey, ObservedChild, fingerprint};
use crate::strategy::NamespaceView;

/// Reads what the planner needs about `env`.
pub(crate) async fn observe(env: &PreviewEnvironment, ctx: &Context) -> Observed {
    let mut observed = Observed::default();
    let deleting = env.metadata.deletion_timestamp.is_some();
    let names = if deleting {
        vec![namespace::recorded_name(env).unwrap_or_else(|| namespace::primary_name(env))]
    } else {
        namespace::candidates(env)
    };
    for name in names {
        if let Some(ns) = ctx.caches.namespaces.get(&ObjectRef::new(&name)) {
            observed
                .namespaces
                .insert(name.clone(), namespace_meta(&ns));
            observed
                .views
                .insert(name.clone(), namespace_view(&ctx.caches, env, &name));
        }
    }
    if let (Some(repo), Some(ns)) = (
        env.spec.repository_ref.as_deref(),
        env.metadata.namespace.as_deref(),
    ) {
        observed.repository = ctx
            .caches
            .repositories
            .get(&ObjectRef::new(repo).within(ns));
    }
    if let (Some(repo), Some((_, sources))) = (&observed.repository, &ctx.caches.source_secrets) {
        for reference in &repo.spec.secrets {
            if let Some(secret) = sources.get(
                &ObjectRef::new(&reference.name)
                    .within(ctx.config.secret_namespace.as_deref().unwrap_or_default()),
            ) {
                observed
                    .source_secrets
                    .insert(reference.name.clone(), secret);
            }
        }
    }
    if deleting {
        return observed;
    }
    let head = env.spec.head_sha.as_str();
    let advised = env.status.as_ref().and_then(|s| s.advised_sha.as_deref());
    if advised != Some(head) {
        observed.advice = Some(
            tokio::time::timeout(
                ctx.config.advice_timeout,
                ctx.advisor.advise(&crate::advice::view_of(env)),
            )
            .await
            .unwrap_or_else(|_| Advice {
                services: None,
                status: AiStatus {
                    source: Some("fallback".into()),
                    reason: Some("advisor timed out; deploying every service".into()),
                    ..Default::default()
                },
            }),
        );
    }
    if ingress_enabled(env)
        && let Some(envs) = ctx.environments.get()
    {
        observed.host_claims = host_claims(&envs.state(), ctx);
    }
    observed
}

/// Hosts claimed by every environment in the cache (the planner skips its own).
fn host_claims(
    envs: &[std::sync::Arc<PreviewEnvironment>],
    ctx: &Context,
) -> BTreeMap<String, Vec<HostClaim>> {
    let mut claims: BTreeMap<String, Vec<HostClaim>> = BTreeMap::new();
    for other in envs {
        if other.meta().deletion_timestamp.is_some() || !ingress_enabled(other) {
            continue;
        }
        let host = requested_host(other, &ctx.config);
        claims.entry(host).or_default().push(HostClaim {
            environment: format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            ),
            recorded: other
                .status
                .as_ref()
                .and_then(|s| s.host.as_ref())
                .is_some(),
            created: other
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::MAX),
        });
    }
    claims
}

/// Whether the environment is exposed: no `ingress` in the spec means the default, on.
fn ingress_enabled(env: &PreviewEnvironment) -> bool {
    env.spec.ingress.as_ref().is_none_or(|i| i.enabled)
}

fn namespace_meta(ns: &PartialObjectMeta<Namespace>) -> NamespaceMeta {
    NamespaceMeta {
        labels: ns.labels().clone(),
        owner_uid: ns.annotations().get(ANNOTATION_OWNER_UID).cloned(),
        deleting: ns.meta().deletion_timestamp.is_some(),
        applied_hash: ns.annotations().get(ANNOTATION_APPLIED_HASH).cloned(),
    }
}

fn belongs<K: Resource>(obj: &K, env: &PreviewEnvironment, namespace: &str) -> bool {
    let labels = obj.labels();
    obj.meta().namespace.as_deref() == Some(namespace)
        && labels.get(LABEL_ENV).map(String::as_str) == Some(env.name_any().as_str())
        && labels.get(LABEL_ENV_NAMESPACE) == env.namespace().as_ref()
}

fn child<K: Resource>(obj: &K, fingerprint: Option<String>) -> ObservedChild {
    ObservedChild {
        applied_hash: obj.annotations().get(ANNOTATION_APPLIED_HASH).cloned(),
        deleting: obj.meta().deletion_timestamp.is_some(),
        fingerprint,
    }
}

/// What the caches hold for `env` in `namespace`.
pub(crate) fn namespace_view(
    caches: &Caches,
    env: &PreviewEnvironment,
    namespace: &str,
) -> NamespaceView {
    let mut view = NamespaceView::default();
    for d in caches.deployments.state() {
        if !belongs(d.as_ref(), env, namespace) {
            continue;
        }
        let fp = serde_json::to_value(d.as_ref())
            .ok()
            .and_then(|v| fingerprint("Deployment", &v));
        view.children.insert(
            ChildKey::of::<k8s_openapi::api::apps::v1::Deployment>(&d.name_any()),
            child(d.as_ref(), fp),
        );
        view.deployments.push(d);
    }
    view.pods = caches
        .pods
        .state()
        .into_iter()
        .filter(|p| belongs(p.as_ref(), env, namespace))
        .collect();
    view.pvcs = caches
        .pvcs
        .state()
        .into_iter()
        .filter(|c| belongs(c.as_ref(), env, namespace))
        .collect();
    for (resource, cache) in caches.kinds.values() {
        let key = |name: String| ChildKey {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            name,
        };
        match cache {
            KindCache::Metadata(store) => {
                for o in store.state() {
                    if belongs(o.as_ref(), env, namespace) {
                        view.children
                            .insert(key(o.name_any()), child(o.as_ref(), None));
                    }
                }
            }
            KindCache::Full(store) => {
                for o in store.state() {
                    if belongs(o.as_ref(), env, namespace) {
                        let fp = fingerprint(&resource.kind, &o.data);
                        let k = key(o.name_any());
                        view.children.insert(k.clone(), child(o.as_ref(), fp));
                        view.objects.insert(k, o);
                    }
                }
            }
        }
    }
    view
}
