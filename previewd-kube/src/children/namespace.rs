//! The environment's namespace and its guard rails: ResourceQuota, LimitRange and a
//! default-deny NetworkPolicy with the few allows a web service needs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::common_labels;
use crate::crd::{EgressRule, LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment, QuotaSpec};

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
    /// Object-count limits of the namespace's ResourceQuota, by quota resource name
    /// (`services`, `configmaps`, `count/jobs.batch`, ...). Load balancers and node
    /// ports are always capped at 0 besides these.
    pub object_counts: BTreeMap<String, i64>,
}

/// The default object-count limits of a preview namespace: room for a large
/// application, not for one that fills etcd.
pub const DEFAULT_OBJECT_COUNTS: [(&str, i64); 9] = [
    ("services", 50),
    ("configmaps", 100),
    ("secrets", 100),
    ("replicationcontrollers", 0),
    ("count/deployments.apps", 50),
    ("count/statefulsets.apps", 20),
    ("count/jobs.batch", 50),
    ("count/cronjobs.batch", 20),
    ("count/ingresses.networking.k8s.io", 10),
];

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            ingress_namespace: "ingress-nginx".into(),
            pod_security_level: "restricted".into(),
            object_counts: DEFAULT_OBJECT_COUNTS
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
        }
    }
}

/// Parses object-count limits `name=count[,name=count]` (e.g.
/// `services=20,count/jobs.batch=10`), each replacing the default of that name.
pub fn parse_object_counts(text: &str) -> Result<BTreeMap<String, i64>, String> {
    let mut counts: BTreeMap<String, i64> = DEFAULT_OBJECT_COUNTS
        .iter()
        .map(|(k, v)| ((*k).to_string(), *v))
        .collect();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, count) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected name=count"))?;
        let name = name.trim();
        let valid_name = name == "services"
            || name == "configmaps"
            || name == "secrets"
            || name == "replicationcontrollers"
            || name == "persistentvolumeclaims"
            || name
                .strip_prefix("count/")
                .is_some_and(|r| !r.is_empty() && !r.contains('/'));
        if !valid_name {
            return Err(format!(
                "{name:?}: an object count is services, configmaps, secrets, replicationcontrollers or count/<resource>.<group>"
            ));
        }
        if name.starts_with("services.") {
            return Err(format!("{name}: load balancers and node ports stay at 0"));
        }
        let count: i64 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c >= 0)
            .ok_or_else(|| format!("{entry:?}: the count must be a whole number >= 0"))?;
        counts.insert(name.to_string(), count);
    }
    Ok(counts)
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

/// The namespace's ResourceQuota: the environment's requests and pods, the platform's
/// object counts, and no load balancer or node port at all.
pub fn desired_resource_quota(
    env: &PreviewEnvironment,
    namespace: &str,
    guard: &GuardSettings,
) -> ResourceQuota {
    let quota = env.spec.quota.clone().unwrap_or_default();
    let mut hard = quota_hard(&quota);
    for (name, count) in &guard.object_counts {
        hard.entry(name.clone())
            .or_insert_with(|| Quantity(count.to_string()));
    }
    hard.insert("services.loadbalancers".into(), Quantity("0".into()));
    hard.insert("services.nodeports".into(), Quantity("0".into()));
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

/// Cloud instance-metadata addresses, never reachable from a preview whatever the
/// allow-list says (they hand out the node's credentials).
pub const METADATA_ADDRESSES: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];

/// Adds a repository's egress allow-list to the allow policy: one egress rule per entry,
/// to the named namespaces (never another preview: namespaces previewd manages are
/// excluded by label) and IP blocks (minus the metadata addresses), on the given ports.
pub fn add_egress(policy: &mut NetworkPolicy, rules: &[EgressRule]) -> Result<(), String> {
    let metadata: Vec<ipnet::IpNet> = METADATA_ADDRESSES
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let mut egress = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        if rule.namespaces.is_empty() && rule.cidrs.is_empty() {
            return Err(format!(
                "egress[{i}] names no namespace and no CIDR (use 0.0.0.0/0 to allow every address)"
            ));
        }
        let mut peers = Vec::new();
        for ns in &rule.namespaces {
            if !previewd_core::naming::is_dns1123_label(ns) {
                return Err(format!("egress[{i}]: {ns:?} is not a namespace name"));
            }
            peers.push(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        ns.clone(),
                    )])),
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: LABEL_MANAGED_BY.to_string(),
                        operator: "NotIn".into(),
                        values: Some(vec![MANAGED_BY.to_string()]),
                    }]),
                }),
                ..NetworkPolicyPeer::default()
            });
        }
        for cidr in &rule.cidrs {
            let net: ipnet::IpNet = cidr
                .parse()
                .map_err(|_| format!("egress[{i}]: {cidr:?} is not a CIDR such as 10.0.0.0/8"))?;
            let net = net.trunc();
            if metadata.iter().any(|m| m.contains(&net)) {
                return Err(format!(
                    "egress[{i}]: {cidr} is a cloud metadata address, which previews may never reach"
                ));
            }
            let except: Vec<String> = metadata
                .iter()
                .filter(|m| net.contains(*m))
                .map(ToString::to_string)
                .collect();
            peers.push(NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: net.to_string(),
                    except: (!except.is_empty()).then_some(except),
                }),
                ..NetworkPolicyPeer::default()
            });
        }
        let ports: Vec<NetworkPolicyPort> = rule
            .ports
            .iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(p.port)),
                end_port: p.end_port.filter(|e| *e > p.port),
                protocol: Some(p.protocol.as_str().to_string()),
            })
            .collect();
        egress.push(NetworkPolicyEgressRule {
            to: Some(peers),
            ports: (!ports.is_empty()).then_some(ports),
        });
    }
    if let Some(spec) = policy.spec.as_mut() {
        spec.egress.get_or_insert_with(Vec::new).extend(egress);
    }
    Ok(())
}

pub(crate) fn child_meta(env: &PreviewEnvironment, namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(common_labels(env)),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn env() -> PreviewEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567"}
        }))
        .unwrap()
    }

    fn rules(v: serde_json::Value) -> Vec<EgressRule> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn egress_rules_are_added_after_dns_and_the_namespace() {
        let mut policy = desired_allow_policy(&env(), "preview-7-b", &GuardSettings::default());
        add_egress(
            &mut policy,
            &rules(json!([
                {"namespaces": ["staging"], "ports": [{"port": 5432}]},
                {"cidrs": ["0.0.0.0/0"], "ports": [{"port": 443}, {"port": 8000, "endPort": 8100, "protocol": "UDP"}]},
                {"cidrs": ["10.1.2.3/16"]}
            ])),
        )
        .unwrap();
        let egress = serde_json::to_value(&policy.spec.unwrap().egress).unwrap();
        assert_eq!(
            egress.as_array().unwrap().len(),
            5,
            "DNS, own namespace, three rules"
        );
        assert_eq!(
            egress[2],
            json!({"to": [{"namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "staging"},
                    "matchExpressions": [{"key": "app.kubernetes.io/managed-by", "operator": "NotIn", "values": ["previewd"]}]}}],
                "ports": [{"port": 5432, "protocol": "TCP"}]})
        );
        assert_eq!(
            egress[3],
            json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
                "ports": [{"port": 443, "protocol": "TCP"}, {"port": 8000, "endPort": 8100, "protocol": "UDP"}]})
        );
        assert_eq!(
            egress[4],
            json!({"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}),
            "host bits are cleared; no ports means every port"
        );
    }

    #[test]
    fn metadata_addresses_and_bad_entries_are_refused() {
        let mut policy = desired_allow_policy(&env(), "ns", &GuardSettings::default());
        for bad in [
            json!([{"cidrs": ["169.254.169.254/32"]}]),
            json!([{"cidrs": ["169.254.169.254"]}]),
            json!([{"cidrs": ["10.0.0.0/33"]}]),
            json!([{"cidrs": ["example.com"]}]),
            json!([{"namespaces": ["Not_A_Name"]}]),
            json!([{"ports": [{"port": 443}]}]),
        ] {
            assert!(
                add_egress(&mut policy, &rules(bad.clone())).is_err(),
                "{bad}"
            );
        }
        let mut v6 = desired_allow_policy(&env(), "ns", &GuardSettings::default());
        add_egress(&mut v6, &rules(json!([{"cidrs": ["::/0"]}]))).unwrap();
        let egress = serde_json::to_value(&v6.spec.unwrap().egress).unwrap();
        assert_eq!(
            egress[2]["to"][0]["ipBlock"]["except"],
            json!(["fd00:ec2::254/128"])
        );
    }
}
