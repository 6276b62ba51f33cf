//! Observe: everything the planner needs, read from the watch caches (and the advisor,
//! once per head commit). Makes no decisions and writes nothing.

use std::collections::BTreeMap;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::Context;
use super::caches::{Caches, ChildMeta, KindCache};
use previewd_core::checks::RecordedChecks;
use previewd_core::source_control::RepoRef;

use crate::advice::Advice;
use crate::children::waker::{ENDPOINT_SLICE_MANAGER, LABEL_ENDPOINT_SLICE_MANAGED_BY};
use crate::children::{ANNOTATION_APPLIED_HASH, LABEL_ENV_NAMESPACE};
use crate::crd::{AiStatus, LABEL_ENV, PreviewEnvironment, PreviewRepository};
use crate::plan::host::{HostClaim, candidate_hosts, requested_host};
use crate::plan::namespace::{self, ANNOTATION_OWNER_UID, NamespaceMeta};
use crate::plan::object::{ChildKey, ObservedChild, fingerprint};
use crate::plan::{ExternalChild, Observed};
use crate::strategy::NamespaceView;

/// Reads what the planner needs about `env`.
pub(crate) async fn observe(env: &PreviewEnvironment, ctx: &Context) -> Observed {
    let mut observed = Observed::default();
    let deleting = env.metadata.deletion_timestamp.is_some();
    observed.external = external_children(&ctx.caches, env);
    observed.missing_kinds = ctx.caches.missing_kinds();
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
    observed.repositories = repositories_of(&ctx.caches, env);
    let authorisation = crate::plan::authorisation(env, &observed, &ctx.config);
    let granted = authorisation
        .as_ref()
        .ok()
        .and_then(|grant| grant.repository.clone());
    if let (Some(repo), Some((_, sources))) = (granted.as_ref(), &ctx.caches.source_secrets) {
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
        ctx.forget_checks(env);
        return observed;
    }
    // Nothing is read from the source-control system, and no advice asked, for an
    // environment no claim authorises: the planner stalls it anyway.
    if authorisation.is_err() {
        return observed;
    }
    observed.polled_checks = poll_checks(env, ctx).await;
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
                tests: None,
            }),
        );
    }
    if ingress_enabled(env)
        && let Some(envs) = ctx.environments.get()
    {
        observed.host_claims = host_claims(env, &envs.state(), ctx);
    }
    observed
}

/// The `PreviewRepository` objects that bear on `env`'s authorisation: every one that
/// claims its repository, and the one it names.
pub(crate) fn repositories_of(
    caches: &Caches,
    env: &PreviewEnvironment,
) -> Vec<Arc<PreviewRepository>> {
    let namespace = env.namespace();
    caches
        .repositories
        .state()
        .into_iter()
        .filter(|r| {
            r.spec.repository.eq_ignore_ascii_case(&env.spec.repository)
                || (r.metadata.namespace == namespace
                    && r.metadata.name.is_some()
                    && r.metadata.name == env.spec.repository_ref)
        })
        .collect()
}

/// The CI gate's fallback poll: what the source-control system says about the required
/// checks of the head commit, asked at most every [`super::CHECKS_POLL_INTERVAL`] while
/// the webhook's reports leave the environment waiting; the last answer otherwise.
async fn poll_checks(env: &PreviewEnvironment, ctx: &Context) -> Option<RecordedChecks> {
    let source = ctx.checks_source.as_ref()?;
    if env.spec.required_checks.is_empty() {
        return None;
    }
    let (last, due) = ctx.polled_checks(env);
    let waiting = matches!(
        crate::plan::checks_gate(env, last.as_ref()),
        previewd_core::checks::Gate::Waiting(_)
    );
    // A retry asks again at once: a re-run may have passed without its webhook arriving.
    let retry = env.annotations().get(crate::crd::ANNOTATION_RETRY);
    let retrying = retry.is_some() && retry != env.status.as_ref().and_then(|s| s.retry.as_ref());
    if !retrying && (!waiting || !due) {
        return last;
    }
    let repo = RepoRef::parse(&env.spec.repository)?;
    let asked = tokio::time::timeout(
        ctx.config.advice_timeout,
        source.commit_checks(&repo, &env.spec.head_sha, &env.spec.required_checks),
    )
    .await;
    match asked {
        Ok(Ok(checks)) => {
            ctx.remember_checks(env, checks.clone());
            Some(checks)
        }
        Ok(Err(e)) => {
            tracing::warn!(env = %env.name_any(), error = %e, "could not read the checks of the head commit; relying on webhooks");
            if let Some(last) = &last {
                ctx.remember_checks(env, last.clone());
            } else {
                ctx.remember_checks(
                    env,
                    RecordedChecks {
                        sha: env.spec.head_sha.clone(),
                        ..RecordedChecks::default()
                    },
                );
            }
            last
        }
        Err(_) => {
            tracing::warn!(env = %env.name_any(), "reading the checks of the head commit timed out");
            last
        }
    }
}

/// Other environments' claims on the hosts `env` may use ([`candidate_hosts`]); the
/// planner skips `env`'s own. Only those hosts are kept: a map of every environment's
/// host, rebuilt on each reconcile, was the largest allocation of a reconcile at 1000
/// environments.
fn host_claims(
    env: &PreviewEnvironment,
    envs: &[std::sync::Arc<PreviewEnvironment>],
    ctx: &Context,
) -> BTreeMap<String, Vec<HostClaim>> {
    let mut claims: BTreeMap<String, Vec<HostClaim>> = candidate_hosts(env, &ctx.config)
        .into_iter()
        .map(|host| (host, Vec::new()))
        .collect();
    for other in envs {
        if other.meta().deletion_timestamp.is_some() || !ingress_enabled(other) {
            continue;
        }
        let host = requested_host(other, &ctx.config);
        let Some(holders) = claims.get_mut(&host) else {
            continue;
        };
        holders.push(HostClaim {
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

/// Whether `obj` is one of `env`'s children in `namespace`. The EndpointSlices Kubernetes
/// makes for previewd's Services carry their Service's labels; another controller
/// manages them, so they are not children (previewd's own slice names previewd).
fn belongs<K: Resource>(obj: &K, env: &PreviewEnvironment, namespace: &str) -> bool {
    let label = |k: &str| obj.labels().get(k).map(String::as_str);
    belongs_with(
        obj.meta().namespace.as_deref(),
        label(LABEL_ENV),
        label(LABEL_ENV_NAMESPACE),
        label(LABEL_ENDPOINT_SLICE_MANAGED_BY),
        env,
        namespace,
    )
}

/// [`belongs`], for a child cached by its metadata.
fn belongs_meta(obj: &ChildMeta, env: &PreviewEnvironment, namespace: &str) -> bool {
    belongs_with(
        obj.namespace.as_deref(),
        obj.env.as_deref(),
        obj.env_namespace.as_deref(),
        obj.slice_manager.as_deref(),
        env,
        namespace,
    )
}

fn belongs_with(
    obj_namespace: Option<&str>,
    env_label: Option<&str>,
    env_namespace_label: Option<&str>,
    slice_manager: Option<&str>,
    env: &PreviewEnvironment,
    namespace: &str,
) -> bool {
    obj_namespace == Some(namespace)
        && env_label == Some(env.name_any().as_str())
        && env_namespace_label == env.namespace().as_deref()
        && slice_manager.is_none_or(|m| m == ENDPOINT_SLICE_MANAGER)
}

fn child<K: Resource>(obj: &K, fingerprint: Option<String>) -> ObservedChild {
    ObservedChild {
        applied_hash: obj.annotations().get(ANNOTATION_APPLIED_HASH).cloned(),
        deleting: obj.meta().deletion_timestamp.is_some(),
        fingerprint,
    }
}

/// [`child`], for a child cached by its metadata.
fn child_meta(obj: &ChildMeta) -> ObservedChild {
    ObservedChild {
        applied_hash: obj.applied_hash.clone(),
        deleting: obj.deleting,
        fingerprint: None,
    }
}

/// The environment's objects outside preview namespaces (Argo CD Applications): labelled
/// as the environment's and marked with its UID. Labels alone are not enough, since
/// anybody who can write in that namespace can set them.
pub(crate) fn external_children(
    caches: &Caches,
    env: &PreviewEnvironment,
) -> BTreeMap<ChildKey, ExternalChild> {
    let mut found = BTreeMap::new();
    let Some(uid) = env.uid() else {
        return found;
    };
    let marked = |meta: &ChildMeta| {
        !meta
            .namespace
            .as_deref()
            .is_some_and(|ns| ns.starts_with(namespace::NAMESPACE_PREFIX))
            && meta.env.as_deref() == Some(env.name_any().as_str())
            && meta.env_namespace.as_deref() == env.namespace().as_deref()
            && meta.owner_uid.as_ref() == Some(&uid)
    };
    for (kind_key, (resource, cache)) in &caches.kinds {
        // Objects outside preview namespaces only, through the namespace index.
        let outside: Vec<(String, String)> = caches
            .kind_indexes
            .get(kind_key)
            .map(|index| {
                index
                    .namespaces()
                    .into_iter()
                    .filter(|ns| !ns.starts_with(namespace::NAMESPACE_PREFIX))
                    .flat_map(|ns| {
                        index
                            .names(&ns)
                            .into_iter()
                            .map(move |name| (ns.clone(), name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut add = |meta: &ChildMeta, object: Option<Arc<DynamicObject>>| {
            if !marked(meta) {
                return;
            }
            found.insert(
                ChildKey {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                    name: meta.name.clone(),
                },
                ExternalChild {
                    namespace: meta.namespace.clone().unwrap_or_default(),
                    child: child_meta(meta),
                    object,
                },
            );
        };
        match cache {
            KindCache::Metadata(store) => {
                for o in outside
                    .iter()
                    .filter_map(|(ns, n)| store.get(&cache_ref(ns, n, ())))
                {
                    add(&o, None);
                }
            }
            KindCache::Full(store) => {
                for o in outside
                    .iter()
                    .filter_map(|(ns, n)| store.get(&cache_ref(ns, n, resource.clone())))
                {
                    add(&ChildMeta::of(&o.metadata), Some(o.clone()));
                }
            }
        }
    }
    found
}

/// The cache key of `namespace/name` (`namespace` empty: cluster-scoped), for a cache
/// whose objects are of `dyntype`.
fn cache_ref<K: kube::runtime::reflector::Lookup>(
    namespace: &str,
    name: &str,
    dyntype: K::DynamicType,
) -> ObjectRef<K> {
    let r = ObjectRef::new_with(name, dyntype);
    if namespace.is_empty() {
        r
    } else {
        r.within(namespace)
    }
}

/// What the caches hold for `env` in `namespace`.
pub(crate) fn namespace_view(
    caches: &Caches,
    env: &PreviewEnvironment,
    namespace: &str,
) -> NamespaceView {
    let mut view = NamespaceView::default();
    // Only the namespace's own objects, through the caches' namespace indexes.
    let deployments = caches
        .deployments_index
        .names(namespace)
        .into_iter()
        .filter_map(|name| {
            caches
                .deployments
                .get(&ObjectRef::new(&name).within(namespace))
        })
        .filter_map(|d| d.unpack().map(Arc::new));
    for d in deployments {
        if !belongs(d.as_ref(), env, namespace) {
            continue;
        }
        let fp = super::caches::observed_fingerprint(d.as_ref());
        view.children.insert(
            ChildKey::of::<k8s_openapi::api::apps::v1::Deployment>(&d.name_any()),
            child(d.as_ref(), fp),
        );
        view.deployments.push(d);
    }
    view.pods = caches
        .pods_index
        .names(namespace)
        .into_iter()
        .filter_map(|name| caches.pods.get(&ObjectRef::new(&name).within(namespace)))
        .filter_map(|p| p.unpack().map(Arc::new))
        .filter(|p| belongs(p.as_ref(), env, namespace))
        .collect();
    view.pvcs = caches
        .pvcs_index
        .names(namespace)
        .into_iter()
        .filter_map(|name| caches.pvcs.get(&ObjectRef::new(&name).within(namespace)))
        .filter(|c| belongs(c.as_ref(), env, namespace))
        .collect();
    for (kind_key, (resource, cache)) in &caches.kinds {
        let key = |name: String| ChildKey {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            name,
        };
        let names = caches
            .kind_indexes
            .get(kind_key)
            .map(|index| index.names(namespace))
            .unwrap_or_default();
        match cache {
            KindCache::Metadata(store) => {
                for o in names
                    .iter()
                    .filter_map(|n| store.get(&cache_ref(namespace, n, ())))
                {
                    if belongs_meta(&o, env, namespace) {
                        view.children.insert(key(o.name.clone()), child_meta(&o));
                    }
                }
            }
            KindCache::Full(store) => {
                for o in names
                    .iter()
                    .filter_map(|n| store.get(&cache_ref(namespace, n, resource.clone())))
                {
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
    // The environment's objects in Argo CD's namespace are judged with the rest.
    for (key, external) in external_children(caches, env) {
        view.children.insert(key.clone(), external.child);
        if let Some(object) = external.object {
            view.objects.insert(key, object);
        }
    }
    view
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    #[test]
    fn slices_kubernetes_manages_for_previewd_services_are_not_children() {
        let env: PreviewEnvironment = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567"}
        }))
        .unwrap();
        let slice = |managed_by: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "api-x7k2p", "namespace": "preview-7-shop", "labels": {
                    "app.kubernetes.io/managed-by": "previewd",
                    "previewd.io/env": "shop-pr-7", "previewd.io/env-namespace": "team",
                    "endpointslice.kubernetes.io/managed-by": managed_by}},
                "addressType": "IPv4", "endpoints": []
            }))
            .unwrap()
        };
        // The copy of the Service's labels the EndpointSlice controller makes.
        assert!(!belongs(
            &slice("endpointslice-controller.k8s.io"),
            &env,
            "preview-7-shop"
        ));
        // The waker's own slice.
        assert!(belongs(&slice("previewd.io"), &env, "preview-7-shop"));
        assert!(!belongs(&slice("previewd.io"), &env, "elsewhere"));
    }

    /// Every question observation asks of a child known by its metadata, and of a
    /// namespace, has the same answer on the cached form as on the object the API server
    /// sends.
    #[test]
    fn cached_metadata_answers_what_observation_asks() {
        use crate::controller::caches::strip_namespace;
        use k8s_openapi::api::core::v1::Namespace;
        let env: PreviewEnvironment = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team", "uid": "u-1"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567"}
        }))
        .unwrap();
        let whole = |namespace: &str, env_name: &str, deleting: bool, manager: &str| {
            let mut meta = json!({
                "name": "api", "namespace": namespace, "uid": "0f0e",
                "resourceVersion": "981", "generation": 3,
                "creationTimestamp": "2026-12-01T00:00:00Z",
                "labels": {
                    "app.kubernetes.io/managed-by": "previewd",
                    "previewd.io/env": env_name, "previewd.io/env-namespace": "team",
                    "previewd.io/pr": "7", "previewd.io/repo": "acme.shop",
                    "previewd.io/service": "api",
                    "endpointslice.kubernetes.io/managed-by": manager},
                "annotations": {"previewd.io/applied-hash": "h-1",
                                "previewd.io/owner-uid": "u-1",
                                "kubectl.kubernetes.io/restartedAt": "now"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "api",
                                     "uid": "0f0e"}],
                "managedFields": [{"manager": "previewd", "operation": "Apply"}]
            });
            if deleting {
                meta["deletionTimestamp"] = json!("2026-12-01T00:01:00Z");
            }
            let object: PartialObjectMeta<DynamicObject> =
                serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                                              "metadata": meta}))
                .unwrap();
            object
        };
        for (namespace, env_name, deleting, manager) in [
            ("preview-7-shop", "shop-pr-7", false, "previewd.io"),
            ("preview-7-shop", "shop-pr-7", true, "previewd.io"),
            (
                "preview-7-shop",
                "shop-pr-7",
                false,
                "endpointslice-controller.k8s.io",
            ),
            ("preview-7-shop", "other", false, "previewd.io"),
            ("argocd", "shop-pr-7", false, "previewd.io"),
        ] {
            let whole = whole(namespace, env_name, deleting, manager);
            let cached = ChildMeta::of(&whole.metadata);
            for ns in ["preview-7-shop", "argocd"] {
                assert_eq!(
                    belongs_meta(&cached, &env, ns),
                    belongs(&whole, &env, ns),
                    "{namespace} {env_name} {manager} in {ns}"
                );
            }
            let (a, b) = (child_meta(&cached), child(&whole, None));
            assert_eq!(
                (a.applied_hash, a.deleting, a.fingerprint),
                (b.applied_hash, b.deleting, b.fingerprint)
            );
            assert_eq!(cached.env.as_ref(), whole.labels().get(LABEL_ENV));
            assert_eq!(
                cached.owner_uid.as_ref(),
                whole.annotations().get(ANNOTATION_OWNER_UID)
            );
            assert_eq!(cached.name, whole.name_any());
            assert_eq!(cached.namespace, whole.namespace());
        }

        let ns: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "preview-7-shop", "uid": "n-1", "resourceVersion": "4",
                "deletionTimestamp": "2026-12-01T00:01:00Z",
                "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                           "previewd.io/env": "shop-pr-7"},
                "annotations": {"previewd.io/applied-hash": "h-2",
                                "previewd.io/owner-uid": "u-1",
                                "scheduler.alpha.kubernetes.io/node-selector": "x"},
                "managedFields": [{"manager": "previewd", "operation": "Apply"}]}
        }))
        .unwrap();
        let mut stripped = ns.clone();
        strip_namespace(&mut stripped);
        let (a, b) = (namespace_meta(&stripped), namespace_meta(&ns));
        assert_eq!(
            (a.labels, a.owner_uid, a.deleting, a.applied_hash),
            (b.labels, b.owner_uid, b.deleting, b.applied_hash)
        );
        assert_eq!(stripped.name_any(), "preview-7-shop");
        assert_eq!(stripped.annotations().len(), 2);
        assert!(stripped.metadata.managed_fields.is_none() && stripped.uid().is_none());
    }
}
