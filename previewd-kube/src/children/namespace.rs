//! The environment's namespace and its guard rails: ResourceQuota, LimitRange and a
//! default-deny NetworkPolicy with the few allows a web service needs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::common_labels;
use crate::crd::{PreviewEnvironment, QuotaSpec};

/// Name of the ResourceQuota, LimitRange and NetworkPolicy objects.
pub const GUARD_NAME: &str = "previewd";
/// Name of the NetworkPolicy that allows DNS, same-namespace and ingress-controller traffic.
pub const ALLOW_NAME: &str = "previewd-allow";

/// Settings of the guard rails that come from the operator, not the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSettings {
    /// Namespace of the ingress controller, allowed to reach every pod.
    pub ingress_namespace: String,
    /// Pod Security Standard level enforced, warned and audited (`restricted`).
    pub pod_security_level: String,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            ingress_namespace: "ingress-nginx".into(),
            pod_security_level: "restricted".into(),
        }
    }
}

/// The namespace, labelled as ours and with restricted pod security.
pub fn desired_namespace(env: &PreviewEnvironment, name: &str, guard: &GuardSettings) -> Namespace {
    let mut labels = common_labels(env);
    for mode in ["enforce", "warn", "audit"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            guard.pod_security_level.clone(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The namespace's ResourceQuota.
pub fn desired_resource_quota(env: &PreviewEnvironment, namespace: &str) -> ResourceQuota {
    let quota = env.spec.quota.clone().unwrap_or_default();
    let hard = quota_hard(&quota);
    ResourceQuota {
        metadata: child_meta(env, namespace, GUARD_NAME),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn quota_hard(quota: &QuotaSpec) -> BTreeMap<String, Quantity> {
    let mut hard = BTreeMap::new();
    hard.insert("requests.cpu".into(), Quantity(quota.cpu.clone()));
    hard.insert("requests.memory".into(), Quantity(quota.memory.clone()));
    hard.insert("requests.storage".into(), Quantity(quota.storage.clone()));
    hard.insert(
        "persistentvolumeclaims".into(),
        Quantity(quota.persistent_volume_claims.to_string()),
    );
    hard.insert("pods".into(), Quantity(quota.pods.to_string()));
    hard
}

/// A LimitRange whose defaults admit pods that declare no requests or limits.
pub fn desired_limit_range(env: &PreviewEnvironment, namespace: &str) -> LimitRange {
    let q = |s: &str| Quantity(s.to_string());
    let mut default_request = BTreeMap::new();
    default_request.insert("cpu".to_string(), q("100m"));
    default_request.insert("memory".to_string(), q("128Mi"));
    let mut default_limit = BTreeMap::new();
    default_limit.insert("cpu".to_string(), q("500m"));
    default_limit.insert("memory".to_string(), q("512Mi"));
    let mut max = BTreeMap::new();
    max.insert("cpu".to_string(), q("2"));
    max.insert("memory".to_string(), q("4Gi"));
    LimitRange {
        metadata: child_meta(env, namespace, GUARD_NAME),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(default_limit),
                default_request: Some(default_request),
                max: Some(max),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

/// Deny all ingress and egress traffic of every pod in the namespace.
pub fn desired_default_deny(env: &PreviewEnvironment, namespace: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: child_meta(env, namespace, GUARD_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    }
}

/// Allow DNS to kube-system, traffic within the namespace, and ingress from the ingress
/// controller's namespace.
pub fn desired_allow_policy(
    env: &PreviewEnvironment,
    namespace: &str,
    guard: &GuardSettings,
) -> NetworkPolicy {
    let ns_selector = |name: &str| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                name.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let dns_port = |protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.to_string()),
        ..NetworkPolicyPort::default()
    };
    NetworkPolicy {
        metadata: child_meta(env, namespace, ALLOW_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![same_namespace.clone()]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![ns_selector(&guard.ingress_namespace)]),
                    ports: None,
                },
            ]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![ns_selector("kube-system")]),
                    ports: Some(vec![dns_port("UDP"), dns_port("TCP")]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![same_namespace]),
                    ports: None,
                },
            ]),
        }),
    }
}

pub(crate) fn child_meta(env: &PreviewEnvironment, namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(common_labels(env)),
        ..ObjectMeta::default()
    }
}
