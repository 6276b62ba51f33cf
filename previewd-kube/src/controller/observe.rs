//! Reading the health of an environment's services from Deployments and Pods.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::crd::LABEL_SERVICE;
use crate::error::{Error, KubeContext};

/// Container waiting reasons that will not fix themselves without a new image or spec.
/// They still get until the readiness deadline (an image may be pushed late by CI), but
/// their reason is what the condition reports.
const FAILING_WAIT_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "RunContainerError",
    "CreateContainerError",
];

/// Waiting reasons that fail the environment at once: no amount of waiting helps.
const FATAL_WAIT_REASONS: &[&str] = &["InvalidImageName", "CreateContainerConfigError"];

/// What the services look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceHealth {
    /// Every Deployment has its replicas updated and available.
    Available,
    /// Rolling out; the message names what is missing or failing so far.
    Progressing(String),
    /// A service cannot become available; the message names the service, the pod and why.
    Failed(String),
}

/// True when a Deployment reports all its replicas updated and available for its latest
/// generation.
pub fn deployment_available(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &d.status else {
        return false;
    };
    let generation_seen =
        status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    generation_seen
        && status.updated_replicas.unwrap_or(0) >= want
        && status.available_replicas.unwrap_or(0) >= want
        && status.replicas.unwrap_or(0) <= want
}

/// Reads Deployment conditions and, for unavailable services, their Pods.
pub async fn observe_services(
    client: &Client,
    namespace: &str,
    deployments: &[Deployment],
) -> Result<ServiceHealth, Error> {
    let mut waiting = Vec::new();
    for d in deployments {
        if deployment_available(d) {
            continue;
        }
        let name = d.name_any();
        // Quota rejections and other create failures show on the Deployment.
        if let Some(cond) = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            })
        {
            return Ok(ServiceHealth::Failed(format!(
                "service {name}: {}: {}",
                cond.reason.as_deref().unwrap_or("ReplicaFailure"),
                cond.message.as_deref().unwrap_or("pods cannot be created")
            )));
        }
        if let Some(cond) = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == "Progressing" && c.status == "False")
            })
        {
            return Ok(ServiceHealth::Failed(format!(
                "service {name}: {}: {}",
                cond.reason.as_deref().unwrap_or("ProgressDeadlineExceeded"),
                cond.message.as_deref().unwrap_or("rollout stopped")
            )));
        }
        match pod_problem(client, namespace, &name).await? {
            Some(PodProblem {
                fatal: true,
                message,
            }) => {
                return Ok(ServiceHealth::Failed(format!("service {name}: {message}")));
            }
            Some(PodProblem {
                fatal: false,
                message,
            }) => {
                waiting.push(format!("service {name}: {message}"));
            }
            None => waiting.push(format!("service {name}: waiting for available replicas")),
        }
    }
    if waiting.is_empty() {
        Ok(ServiceHealth::Available)
    } else {
        Ok(ServiceHealth::Progressing(waiting.join("; ")))
    }
}

struct PodProblem {
    fatal: bool,
    message: String,
}

async fn pod_problem(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<Option<PodProblem>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("{LABEL_SERVICE}={service}"));
    let list = pods
        .list(&lp)
        .await
        .context(|| format!("list Pods of {namespace}/{service}"))?;
    let mut best: Option<PodProblem> = None;
    for pod in list.items {
        let pod_name = pod.name_any();
        let Some(status) = &pod.status else { continue };
        for cs in status.container_statuses.iter().flatten() {
            if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = waiting.reason.clone().unwrap_or_default();
                let detail = waiting.message.clone().unwrap_or_default();
                let fatal = FATAL_WAIT_REASONS.contains(&reason.as_str());
                if fatal || FAILING_WAIT_REASONS.contains(&reason.as_str()) {
                    let message = format!("pod {pod_name}: {reason}: {detail}")
                        .trim_end_matches(": ")
                        .to_string();
                    return Ok(Some(PodProblem { fatal, message }));
                }
            }
            if cs.restart_count >= 3 && !cs.ready {
                best.get_or_insert(PodProblem {
                    fatal: false,
                    message: format!(
                        "pod {pod_name}: container {} restarted {} times",
                        cs.name, cs.restart_count
                    ),
                });
            }
        }
        for cond in status.conditions.iter().flatten() {
            if cond.type_ == "PodScheduled" && cond.status == "False" {
                best.get_or_insert(PodProblem {
                    fatal: false,
                    message: format!(
                        "pod {pod_name}: {}: {}",
                        cond.reason.as_deref().unwrap_or("Unschedulable"),
                        cond.message.as_deref().unwrap_or("")
                    ),
                });
            }
        }
        if best.is_none() && status.phase.as_deref() == Some("Pending") {
            best = Some(PodProblem {
                fatal: false,
                message: format!("pod {pod_name}: Pending"),
            });
        }
    }
    Ok(best)
}
