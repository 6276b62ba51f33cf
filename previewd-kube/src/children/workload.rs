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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSettings {
    /// Node selector that places pods on spot capacity.
    pub spot_node_selector: BTreeMap<String, String>,
    /// Taint key that spot nodes carry (tolerated with `NoSchedule`), if any.
    pub spot_taint_key: Option<String>,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        WorkloadSettings {
            spot_node_selector: BTreeMap::from([(
                "karpenter.sh/capacity-type".to_string(),
                "spot".to_string(),
            )]),
            spot_taint_key: Some("karpenter.sh/capacity-type".to_string()),
        }
    }
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
    if service.auto_detected == Some(true) {
        // Deployed because affected-service detection selected it.
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
        resources: Some(tier_resources(tier)),
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
            settings.spot_taint_key.as_ref().map(|key| {
                vec![Toleration {
                    key: Some(key.clone()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Toleration::default()
                }]
            }),
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
