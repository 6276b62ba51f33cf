//! One Deployment and one Service per service of the environment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec as K8sServiceSpec, TCPSocketAction, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use previewd_core::Tier;

use super::namespace::child_meta;
use crate::crd::{LABEL_SERVICE, PreviewEnvironment, ServiceSpec};

/// Pod-template annotation carrying the head commit; a new commit rolls the pods even when
/// the image tag (e.g. `pr-123`) does not change.
pub const ANNOTATION_HEAD_SHA: &str = "previewd.io/head-sha";

/// Annotation on a Deployment selected by affected-service detection.
pub const ANNOTATION_AUTO_DETECTED: &str = "previewd.io/auto-detected";

/// Operator-wide settings for workloads.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSettings {
    /// Node selector that places pods on spot capacity.
    pub spot_node_selector: BTreeMap<String, String>,
    /// Tolerations of the taints spot nodes carry, if any.
    pub spot_tolerations: Vec<Toleration>,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        SpotPreset::Karpenter.settings()
    }
}

/// Where spot capacity comes from: each cloud labels (and may taint) spot nodes its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpotPreset {
    /// Karpenter on any cloud: label `karpenter.sh/capacity-type: spot`; node pools that
    /// taint spot nodes use the same key, tolerated with `Exists`.
    Karpenter,
    /// GKE Spot VMs: label `cloud.google.com/gke-spot: "true"`, and the taint GKE puts on
    /// spot node pools created with `--spot` and a taint of the same key.
    Gke,
    /// EKS managed node groups: label `eks.amazonaws.com/capacityType: SPOT` (no taint by
    /// default).
    Eks,
}

impl std::str::FromStr for SpotPreset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "karpenter" => Ok(SpotPreset::Karpenter),
            "gke" => Ok(SpotPreset::Gke),
            "eks" => Ok(SpotPreset::Eks),
            other => Err(format!(
                "unknown spot preset {other:?} (expected karpenter, gke or eks)"
            )),
        }
    }
}

impl SpotPreset {
    /// The node selector and tolerations of this preset.
    pub fn settings(self) -> WorkloadSettings {
        let toleration = |key: &str, value: Option<&str>| Toleration {
            key: Some(key.to_string()),
            operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
            value: value.map(str::to_string),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        };
        let (label, value, tolerations) = match self {
            SpotPreset::Karpenter => (
                "karpenter.sh/capacity-type",
                "spot",
                vec![toleration("karpenter.sh/capacity-type", None)],
            ),
            SpotPreset::Gke => (
                "cloud.google.com/gke-spot",
                "true",
                vec![toleration("cloud.google.com/gke-spot", Some("true"))],
            ),
            SpotPreset::Eks => ("eks.amazonaws.com/capacityType", "SPOT", Vec::new()),
        };
        WorkloadSettings {
            spot_node_selector: BTreeMap::from([(label.to_string(), value.to_string())]),
            spot_tolerations: tolerations,
        }
    }
}

/// Parses `key=value[,key=value]` (a node selector).
pub fn parse_node_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("expected key=value, got {pair:?}"))
        })
        .collect()
}

/// Parses tolerations written as `key[=value]:Effect[,...]` (`Exists` without a value).
pub fn parse_tolerations(text: &str) -> Result<Vec<Toleration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|item| {
            let (key_value, effect) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("expected key[=value]:Effect, got {item:?}"))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(format!(
                    "unknown taint effect {effect:?} (NoSchedule, PreferNoSchedule or NoExecute)"
                ));
            }
            let (key, value) = match key_value.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (key_value, None),
            };
            if key.is_empty() {
                return Err(format!("a toleration needs a key: {item:?}"));
            }
            Ok(Toleration {
                key: Some(key.to_string()),
                operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
                value,
                effect: Some(effect.to_string()),
                ..Toleration::default()
            })
        })
        .collect()
}

/// Labels that select one service's pods.
pub fn selector_labels(env: &PreviewEnvironment, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SERVICE.to_string(), service.to_string()),
        (
            crate::crd::LABEL_ENV.to_string(),
            kube::ResourceExt::name_any(env),
        ),
    ])
}

/// Requests and limits of one container of the given tier: requests as the tier says,
/// CPU limit twice the request, memory limit equal to the request (no overcommit of memory).
pub fn tier_resources(tier: Tier) -> ResourceRequirements {
    let req = tier.requests();
    let cpu = |m: u64| Quantity(format!("{m}m"));
    let mem = |b: u64| Quantity(format!("{}Mi", b / (1024 * 1024)));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), cpu(req.cpu_millicores)),
            ("memory".to_string(), mem(req.memory_bytes)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), cpu(req.cpu_millicores * 2)),
            ("memory".to_string(), mem(req.memory_bytes)),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The container's requests and limits: what the service states, the rest from the tier.
pub fn container_resources(
    tier: Tier,
    stated: Option<&crate::crd::ServiceResources>,
) -> ResourceRequirements {
    let mut resources = tier_resources(tier);
    let Some(stated) = stated else {
        return resources;
    };
    let merge = |target: &mut Option<BTreeMap<String, Quantity>>,
                 given: Option<&crate::crd::CpuMemory>| {
        let Some(given) = given else { return };
        let map = target.get_or_insert_with(BTreeMap::new);
        if let Some(cpu) = &given.cpu {
            map.insert("cpu".into(), Quantity(cpu.clone()));
        }
        if let Some(memory) = &given.memory {
            map.insert("memory".into(), Quantity(memory.clone()));
        }
    };
    merge(&mut resources.requests, stated.requests.as_ref());
    merge(&mut resources.limits, stated.limits.as_ref());
    resources
}

/// Whether `service` is deployed because affected-service detection selected it: the
/// environment deploys only affected services and the detector's answer, recorded in
/// `status.selectedServices`, names it. Nothing a tenant writes in the spec can claim it.
pub fn auto_detected(env: &PreviewEnvironment, service: &str) -> bool {
    env.spec.service_selection == Some(crate::crd::DeployPolicy::Affected)
        && env
            .status
            .as_ref()
            .and_then(|s| s.selected_services.as_ref())
            .is_some_and(|selected| selected.iter().any(|s| s == service))
}

/// The Deployment of one service.
pub fn desired_deployment(
    env: &PreviewEnvironment,
    namespace: &str,
    service: &ServiceSpec,
    tier: Tier,
    use_spot: bool,
    settings: &WorkloadSettings,
) -> Deployment {
    let selector = selector_labels(env, &service.name);
    let mut meta = child_meta(env, namespace, &service.name);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(LABEL_SERVICE.to_string(), service.name.clone());
        labels.insert("app.kubernetes.io/name".into(), service.name.clone());
    }
    if auto_detected(env, &service.name) {
        meta.annotations = Some(BTreeMap::from([(
            ANNOTATION_AUTO_DETECTED.to_string(),
            "true".to_string(),
        )]));
    }
    let mut pod_labels = meta.labels.clone().unwrap_or_default();
    pod_labels.extend(selector.clone());
    let pinned = service.image.contains("@sha256:") || service.image.contains(&env.spec.head_sha);
    let mut env_vars: Vec<EnvVar> = vec![
        env_var("PREVIEWD_PR", &env.spec.pr_number.to_string()),
        env_var("PREVIEWD_SHA", &env.spec.head_sha),
        env_var("PREVIEWD_SERVICE", &service.name),
        env_var("PORT", &service.port.to_string()),
    ];
    env_vars.extend(service.env.iter().map(|(k, v)| env_var(k, v)));
    let container = Container {
        name: service.name.clone(),
        image: Some(service.image.clone()),
        image_pull_policy: Some(if pinned { "IfNotPresent" } else { "Always" }.into()),
        ports: Some(vec![ContainerPort {
            container_port: service.port,
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env_vars),
        resources: Some(container_resources(tier, service.resources.as_ref())),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(service.port),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let (node_selector, tolerations) = if use_spot {
        (
            Some(settings.spot_node_selector.clone()),
            (!settings.spot_tolerations.is_empty()).then(|| settings.spot_tolerations.clone()),
        )
    } else {
        (None, None)
    };
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(service.replicas),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_HEAD_SHA.to_string(),
                        env.spec.head_sha.clone(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    node_selector,
                    tolerations,
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The ClusterIP Service of one service.
pub fn desired_service(
    env: &PreviewEnvironment,
    namespace: &str,
    service: &ServiceSpec,
) -> Service {
    let mut meta = child_meta(env, namespace, &service.name);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(LABEL_SERVICE.to_string(), service.name.clone());
    }
    Service {
        metadata: meta,
        spec: Some(K8sServiceSpec {
            selector: Some(selector_labels(env, &service.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: service.port,
                target_port: Some(IntOrString::Int(service.port)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_service_states_its_own_resources_and_the_tier_fills_the_rest() {
        let stated: crate::crd::ServiceResources = serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "750m"},
            "limits": {"memory": "3Gi"}
        }))
        .unwrap();
        let r = container_resources(Tier::Small, Some(&stated));
        let req = r.requests.unwrap();
        let lim = r.limits.unwrap();
        assert_eq!(req["cpu"].0, "750m");
        assert_eq!(req["memory"].0, "512Mi");
        assert_eq!(lim["cpu"].0, "500m");
        assert_eq!(lim["memory"].0, "3Gi");
        assert_eq!(
            container_resources(Tier::Large, None),
            tier_resources(Tier::Large)
        );
    }

    #[test]
    fn spot_presets_per_cloud() {
        let k = SpotPreset::Karpenter.settings();
        assert_eq!(k.spot_node_selector["karpenter.sh/capacity-type"], "spot");
        assert_eq!(k.spot_tolerations[0].operator.as_deref(), Some("Exists"));
        let g = "GKE".parse::<SpotPreset>().unwrap().settings();
        assert_eq!(g.spot_node_selector["cloud.google.com/gke-spot"], "true");
        assert_eq!(g.spot_tolerations[0].value.as_deref(), Some("true"));
        let e = SpotPreset::Eks.settings();
        assert_eq!(
            e.spot_node_selector["eks.amazonaws.com/capacityType"],
            "SPOT"
        );
        assert!(e.spot_tolerations.is_empty());
        assert!("azure".parse::<SpotPreset>().is_err());
    }

    #[test]
    fn custom_selectors_and_tolerations_parse() {
        let sel =
            parse_node_selector("kubernetes.azure.com/scalesetpriority=spot, pool=cheap").unwrap();
        assert_eq!(sel.len(), 2);
        assert!(parse_node_selector("novalue").is_err());
        let t = parse_tolerations(
            "kubernetes.azure.com/scalesetpriority=spot:NoSchedule,spot:NoExecute",
        )
        .unwrap();
        assert_eq!(t[0].operator.as_deref(), Some("Equal"));
        assert_eq!(t[0].value.as_deref(), Some("spot"));
        assert_eq!(t[1].operator.as_deref(), Some("Exists"));
        assert_eq!(t[1].effect.as_deref(), Some("NoExecute"));
        assert!(parse_tolerations("key:Sometimes").is_err());
        assert!(parse_tolerations("key").is_err());
    }

    #[test]
    fn services_the_detector_selected_are_annotated_as_auto_detected() {
        let env = |selection: &str, selected: serde_json::Value| -> PreviewEnvironment {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "previewd.io/v1alpha1",
                "kind": "PreviewEnvironment",
                "metadata": {"name": "shop-pr-7", "namespace": "team", "uid": "u1"},
                "spec": {
                    "repository": "acme/shop", "prNumber": 7, "branch": "b",
                    "headSHA": "0123456789abcdef0123456789abcdef01234567",
                    "serviceSelection": selection,
                    "services": [{"name": "api", "image": "ghcr.io/acme/api:pr-7"},
                                 {"name": "web", "image": "ghcr.io/acme/web:pr-7"}]
                },
                "status": {"selectedServices": selected}
            }))
            .unwrap()
        };
        let annotated = |e: &PreviewEnvironment, name: &str| {
            let service = e.spec.services.iter().find(|s| s.name == name).unwrap();
            let d = desired_deployment(
                e,
                "preview-shop-7",
                service,
                Tier::Small,
                false,
                &WorkloadSettings::default(),
            );
            d.metadata
                .annotations
                .is_some_and(|a| a.get(ANNOTATION_AUTO_DETECTED).is_some_and(|v| v == "true"))
        };
        let affected = env("Affected", serde_json::json!(["api"]));
        assert!(annotated(&affected, "api"));
        assert!(!annotated(&affected, "web"));
        // Deploying everything selects nothing.
        let all = env("All", serde_json::json!(["api"]));
        assert!(!annotated(&all, "api"));
        // Before the detector answered, nothing is claimed.
        let pending = env("Affected", serde_json::Value::Null);
        assert!(!annotated(&pending, "api"));
    }
}
