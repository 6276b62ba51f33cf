//! The kinds templated manifests may create: an allow-list the platform team controls
//! (`--manifest-kinds`, Helm value `manifests.kinds`), never containing a kind that
//! could reach outside the environment's namespace or loosen its guard rails.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{ApiResource, GroupVersionKind};

use crate::strategy::WatchedKind;

/// The suggested allow-list (the Helm chart's default): configuration, storage claims,
/// Services and the workload kinds an application needs. Left out: Secrets (watching
/// them means reading every Secret of the cluster; credentials come by reference,
/// `spec.secrets`), DaemonSets (a pod on every node for one preview), Ingresses (the
/// environment has its own, on its own host), ReplicaSets, PodDisruptionBudgets and
/// HorizontalPodAutoscalers; a platform team may add them.
pub const DEFAULT_KINDS: &str =
    "ConfigMap,Service,ServiceAccount,PersistentVolumeClaim,Deployment,StatefulSet,Job,CronJob";

/// A kind templates may create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestKind {
    /// The resource (group, version, kind, plural).
    pub resource: ApiResource,
    /// Readiness needs the object's status (workloads, custom resources); otherwise the
    /// object only has to exist and its metadata is enough.
    pub full: bool,
}

/// The allow-list, keyed by `(apiVersion, kind)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestKinds {
    kinds: BTreeMap<(String, String), ManifestKind>,
}

impl Default for ManifestKinds {
    fn default() -> Self {
        let kinds = parse_list(DEFAULT_KINDS)
            .into_iter()
            .filter_map(|name| builtin(&name))
            .collect();
        // The defaults are built-in kinds none of which is refused.
        ManifestKinds::new(kinds).unwrap_or(ManifestKinds {
            kinds: BTreeMap::new(),
        })
    }
}

impl ManifestKinds {
    /// An allow-list of `kinds`; refuses any kind [`refusal`] refuses.
    pub fn new(kinds: Vec<ManifestKind>) -> Result<ManifestKinds, String> {
        let mut map = BTreeMap::new();
        for k in kinds {
            if let Some((_, why)) = refusal(&k.resource.api_version, &k.resource.kind) {
                return Err(format!(
                    "manifest kind {} cannot be allowed: {why}",
                    k.resource.kind
                ));
            }
            map.insert((k.resource.api_version.clone(), k.resource.kind.clone()), k);
        }
        Ok(ManifestKinds { kinds: map })
    }

    /// An allow-list of built-in kinds from a comma-separated list such as
    /// `ConfigMap,apps/v1/StatefulSet`; kinds that are not built in need [`Self::resolve`].
    pub fn builtin_list(list: &str) -> Result<ManifestKinds, String> {
        let kinds = parse_list(list)
            .into_iter()
            .map(|name| builtin(&name).ok_or_else(|| format!("{name} is not a built-in namespaced kind; give custom kinds as group/version/Kind")))
            .collect::<Result<Vec<_>, _>>()?;
        ManifestKinds::new(kinds)
    }

    /// An allow-list from a comma-separated list of built-in kinds (`StatefulSet`) and
    /// custom kinds (`group/version/Kind`), the latter looked up in the API server's
    /// discovery (which gives their plural and scope: cluster-scoped kinds are refused).
    pub async fn resolve(client: &kube::Client, list: &str) -> Result<ManifestKinds, String> {
        let mut kinds = Vec::new();
        for name in parse_list(list) {
            if let Some(k) = builtin(&name) {
                kinds.push(k);
                continue;
            }
            let gvk = parse_gvk(&name).ok_or_else(|| {
                format!("{name} is neither a built-in namespaced kind nor group/version/Kind")
            })?;
            if let Some((_, why)) = refusal(&api_version(&gvk), &gvk.kind) {
                return Err(format!("manifest kind {name} cannot be allowed: {why}"));
            }
            let (resource, caps) =
                kube::discovery::pinned_kind(client, &gvk)
                    .await
                    .map_err(|e| {
                        format!("manifest kind {name} is not served by the API server: {e}")
                    })?;
            if caps.scope == kube::discovery::Scope::Cluster {
                return Err(format!(
                    "manifest kind {name} cannot be allowed: it is cluster-scoped"
                ));
            }
            kinds.push(ManifestKind {
                resource,
                full: true,
            });
        }
        ManifestKinds::new(kinds)
    }

    /// The allowed kind with this `apiVersion` and `kind`.
    pub fn get(&self, api_version: &str, kind: &str) -> Option<&ManifestKind> {
        self.kinds.get(&(api_version.to_string(), kind.to_string()))
    }

    /// The resources of the allowed kinds.
    pub fn resources(&self) -> impl Iterator<Item = &ApiResource> {
        self.kinds.values().map(|k| &k.resource)
    }

    /// The kinds the controller must watch.
    pub fn watched(&self) -> Vec<WatchedKind> {
        self.kinds
            .values()
            .map(|k| WatchedKind {
                resource: k.resource.clone(),
                full: k.full,
                optional: false,
            })
            .collect()
    }

    /// `apiVersion/Kind` of every allowed kind, for messages.
    pub fn names(&self) -> Vec<String> {
        self.kinds
            .values()
            .map(|k| k.resource.kind.clone())
            .collect()
    }
}

fn parse_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_gvk(name: &str) -> Option<GroupVersionKind> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        [group, version, kind] if !group.is_empty() && !version.is_empty() && !kind.is_empty() => {
            Some(GroupVersionKind::gvk(group, version, kind))
        }
        _ => None,
    }
}

fn api_version(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    }
}

/// A built-in namespaced kind by name (`StatefulSet`) or `apiVersion/Kind`
/// (`apps/v1/StatefulSet`, `v1/ConfigMap`).
pub fn builtin(name: &str) -> Option<ManifestKind> {
    fn meta<K: kube::Resource<DynamicType = ()>>() -> ManifestKind {
        ManifestKind {
            resource: ApiResource::erase::<K>(&()),
            full: false,
        }
    }
    fn full<K: kube::Resource<DynamicType = ()>>() -> ManifestKind {
        ManifestKind {
            resource: ApiResource::erase::<K>(&()),
            full: true,
        }
    }
    let all = [
        meta::<ConfigMap>(),
        meta::<Secret>(),
        meta::<Service>(),
        meta::<ServiceAccount>(),
        meta::<PersistentVolumeClaim>(),
        full::<Deployment>(),
        full::<StatefulSet>(),
        full::<DaemonSet>(),
        full::<ReplicaSet>(),
        full::<Job>(),
        meta::<CronJob>(),
        meta::<PodDisruptionBudget>(),
        meta::<HorizontalPodAutoscaler>(),
        meta::<Ingress>(),
    ];
    all.into_iter().find(|k| {
        name == k.resource.kind || name == format!("{}/{}", k.resource.api_version, k.resource.kind)
    })
}

/// Kinds that are cluster-scoped in every Kubernetes release (and those of well-known
/// add-ons), so that a template naming one is told so rather than "not allowed".
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CertificateSigningRequest",
    "ClusterIssuer",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterTrustBundle",
    "ComponentStatus",
    "CSIDriver",
    "CSINode",
    "CustomResourceDefinition",
    "DeviceClass",
    "FlowSchema",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
    "VolumeAttributesClass",
];

/// Why a kind may never be created from a template (the condition reason and a
/// message), whatever the allow-list says; `None` when nothing forbids it.
pub fn refusal(api_version: &str, kind: &str) -> Option<(&'static str, String)> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    if kind == "Namespace" && group.is_empty() {
        return Some((
            "ManifestNamespaceRefused",
            "Namespaces are refused: every object goes into the environment's own namespace".into(),
        ));
    }
    if group == "rbac.authorization.k8s.io" {
        return Some((
            "ManifestRBACRefused",
            format!("{kind} is an RBAC object; templates may not grant permissions"),
        ));
    }
    if CLUSTER_SCOPED.contains(&kind) || (kind.starts_with("Cluster") && kind.len() > 7) {
        return Some((
            "ManifestClusterScoped",
            format!(
                "{kind} is cluster-scoped; templates may only create objects in the environment's namespace"
            ),
        ));
    }
    if matches!(kind, "ResourceQuota" | "LimitRange" | "NetworkPolicy") {
        return Some((
            "ManifestGuardRailRefused",
            format!("{kind} is one of the environment's guard rails, which previewd alone manages"),
        ));
    }
    if group == crate::crd::GROUP {
        return Some((
            "ManifestKindRefused",
            format!("{kind} is a previewd resource"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_list_holds_the_documented_kinds() {
        let kinds = ManifestKinds::default();
        for (v, k) in [
            ("v1", "ConfigMap"),
            ("v1", "Service"),
            ("v1", "ServiceAccount"),
            ("v1", "PersistentVolumeClaim"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "StatefulSet"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
        ] {
            assert!(kinds.get(v, k).is_some(), "{k}");
        }
        assert!(kinds.get("apps/v1", "DaemonSet").is_none());
        assert!(kinds.get("v1", "Secret").is_none());
        assert!(kinds.get("networking.k8s.io/v1", "Ingress").is_none());
        assert_eq!(
            kinds.get("batch/v1", "Job").unwrap().resource.plural,
            "jobs"
        );
        assert!(kinds.get("batch/v1", "Job").unwrap().full);
        assert!(!kinds.get("v1", "ConfigMap").unwrap().full);
        // Only the version the template names matches.
        assert!(kinds.get("apps/v1beta1", "Deployment").is_none());
    }

    #[test]
    fn the_list_is_configurable_but_never_holds_dangerous_kinds() {
        let kinds = ManifestKinds::builtin_list("ConfigMap, apps/v1/DaemonSet").unwrap();
        assert!(kinds.get("apps/v1", "DaemonSet").is_some());
        assert!(kinds.get("apps/v1", "Deployment").is_none());
        assert!(ManifestKinds::builtin_list("Role").is_err());
        assert!(ManifestKinds::builtin_list("example.com/v1/Widget").is_err());
        let role = ManifestKind {
            resource: ApiResource::from_gvk(&GroupVersionKind::gvk(
                "rbac.authorization.k8s.io",
                "v1",
                "Role",
            )),
            full: false,
        };
        assert!(ManifestKinds::new(vec![role]).unwrap_err().contains("RBAC"));
        let quota = ManifestKind {
            resource: ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ResourceQuota")),
            full: false,
        };
        assert!(
            ManifestKinds::new(vec![quota])
                .unwrap_err()
                .contains("guard rails")
        );
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            refusal("v1", "Namespace").unwrap().0,
            "ManifestNamespaceRefused"
        );
        assert_eq!(
            refusal("rbac.authorization.k8s.io/v1", "RoleBinding")
                .unwrap()
                .0,
            "ManifestRBACRefused"
        );
        assert_eq!(
            refusal("rbac.authorization.k8s.io/v1", "ClusterRole")
                .unwrap()
                .0,
            "ManifestRBACRefused"
        );
        assert_eq!(
            refusal("v1", "PersistentVolume").unwrap().0,
            "ManifestClusterScoped"
        );
        assert_eq!(
            refusal("cert-manager.io/v1", "ClusterIssuer").unwrap().0,
            "ManifestClusterScoped"
        );
        assert_eq!(
            refusal("networking.k8s.io/v1", "NetworkPolicy").unwrap().0,
            "ManifestGuardRailRefused"
        );
        assert_eq!(refusal("apps/v1", "Deployment"), None);
        assert_eq!(refusal("v1", "ConfigMap"), None);
    }
}
