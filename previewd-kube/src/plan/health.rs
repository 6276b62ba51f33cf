//! Judging workloads from what the caches hold: Deployment conditions and, for
//! unavailable services, their Pods. Pure: no API calls.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::LABEL_SERVICE;

/// Container waiting reasons that will not fix themselves without a new image or spec.
/// They still get until the readiness deadline (an image may be pushed late by CI), but
/// their reason is what the condition reports.
pub const FAILING_WAIT_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "RunContainerError",
    "CreateContainerError",
];

/// Waiting reasons that fail the environment at once: no amount of waiting helps.
pub const FATAL_WAIT_REASONS: &[&str] = &["InvalidImageName", "CreateContainerConfigError"];

/// What the application looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Everything is available; the message says what.
    Available(String),
    /// Rolling out; the message names what is missing or failing so far.
    Progressing(String),
    /// Something cannot become available; the message names the object, the pod and why.
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

/// Judges one service's Deployment (`None`: not created yet) with the Pods of the
/// namespace. `None` when it is available.
pub fn service_problem(
    name: &str,
    deployment: Option<&Deployment>,
    pods: &[&Pod],
) -> Option<Health> {
    let Some(d) = deployment else {
        return Some(Health::Progressing(format!(
            "service {name}: Deployment being created"
        )));
    };
    if deployment_available(d) {
        return None;
    }
    let conditions = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    // Quota rejections and other create failures show on the Deployment.
    if let Some(cond) = conditions.and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
    }) {
        return Some(Health::Failed(format!(
            "service {name}: {}: {}",
            cond.reason.as_deref().unwrap_or("ReplicaFailure"),
            cond.message.as_deref().unwrap_or("pods cannot be created")
        )));
    }
    if let Some(cond) = conditions.and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "Progressing" && c.status == "False")
    }) {
        return Some(Health::Failed(format!(
            "service {name}: {}: {}",
            cond.reason.as_deref().unwrap_or("ProgressDeadlineExceeded"),
            cond.message.as_deref().unwrap_or("rollout stopped")
        )));
    }
    let of_service: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.labels().get(LABEL_SERVICE).map(String::as_str) == Some(name))
        .collect();
    Some(match pods_problem(&of_service) {
        Some(PodProblem {
            fatal: true,
            message,
        }) => Health::Failed(format!("service {name}: {message}")),
        Some(PodProblem {
            fatal: false,
            message,
        }) => Health::Progressing(format!("service {name}: {message}")),
        None => Health::Progressing(format!("service {name}: waiting for available replicas")),
    })
}

/// Combines per-object judgements: the first failure wins; otherwise every progressing
/// message, joined; otherwise available with `available`.
pub fn combine(problems: impl IntoIterator<Item = Health>, available: String) -> Health {
    let mut waiting = Vec::new();
    for p in problems {
        match p {
            Health::Failed(m) => return Health::Failed(m),
            Health::Progressing(m) => waiting.push(m),
            Health::Available(_) => {}
        }
    }
    if waiting.is_empty() {
        Health::Available(available)
    } else {
        Health::Progressing(waiting.join("; "))
    }
}

struct PodProblem {
    fatal: bool,
    message: String,
}

/// What is wrong with some pods, if anything: `(fatal, message)`, where fatal means no
/// amount of waiting helps ([`FATAL_WAIT_REASONS`]).
pub(crate) fn pod_problem(pods: &[&Pod]) -> Option<(bool, String)> {
    pods_problem(pods).map(|p| (p.fatal, p.message))
}

fn pods_problem(pods: &[&Pod]) -> Option<PodProblem> {
    let mut best: Option<PodProblem> = None;
    for pod in pods {
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
                    return Some(PodProblem { fatal, message });
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
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, available: i32, conditions: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "generation": 2},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": replicas, "updatedReplicas": available,
                       "availableReplicas": available, "conditions": conditions}
        }))
        .unwrap()
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "api-1", "labels": {LABEL_SERVICE: "api"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn available_deployments_have_no_problem() {
        assert_eq!(
            service_problem("api", Some(&deployment(2, 2, json!([]))), &[]),
            None
        );
    }

    #[test]
    fn a_missing_deployment_is_progressing() {
        assert!(matches!(
            service_problem("api", None, &[]),
            Some(Health::Progressing(m)) if m.contains("being created")
        ));
    }

    #[test]
    fn failure_reasons_name_service_pod_and_cause() {
        let quota = deployment(
            1,
            0,
            json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                    "message": "exceeded quota"}]),
        );
        assert_eq!(
            service_problem("api", Some(&quota), &[]),
            Some(Health::Failed(
                "service api: FailedCreate: exceeded quota".into()
            ))
        );
        let stuck = deployment(
            1,
            0,
            json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]),
        );
        assert!(matches!(
            service_problem("api", Some(&stuck), &[]),
            Some(Health::Failed(m)) if m.contains("ProgressDeadlineExceeded")
        ));
        let fatal = pod(
            json!({"containerStatuses": [{"name": "api", "ready": false, "restartCount": 0,
            "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}}]}),
        );
        assert_eq!(
            service_problem("api", Some(&deployment(1, 0, json!([]))), &[&fatal]),
            Some(Health::Failed(
                "service api: pod api-1: InvalidImageName: bad ref".into()
            ))
        );
        let pulling = pod(
            json!({"containerStatuses": [{"name": "api", "ready": false, "restartCount": 0,
            "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
        );
        assert_eq!(
            service_problem("api", Some(&deployment(1, 0, json!([]))), &[&pulling]),
            Some(Health::Progressing(
                "service api: pod api-1: ImagePullBackOff".into()
            ))
        );
        let crashing = pod(
            json!({"containerStatuses": [{"name": "api", "ready": false, "restartCount": 4,
            "image": "x", "imageID": ""}]}),
        );
        assert!(matches!(
            service_problem("api", Some(&deployment(1, 0, json!([]))), &[&crashing]),
            Some(Health::Progressing(m)) if m.contains("restarted 4 times")
        ));
        let unschedulable = pod(
            json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/2 nodes"}]}),
        );
        assert!(matches!(
            service_problem("api", Some(&deployment(1, 0, json!([]))), &[&unschedulable]),
            Some(Health::Progressing(m)) if m.contains("Unschedulable: 0/2 nodes")
        ));
        let pending = pod(json!({"phase": "Pending"}));
        assert!(matches!(
            service_problem("api", Some(&deployment(1, 0, json!([]))), &[&pending]),
            Some(Health::Progressing(m)) if m.ends_with("Pending")
        ));
    }

    #[test]
    fn combining_prefers_failures_then_lists_what_waits() {
        assert_eq!(
            combine(
                [
                    Health::Progressing("a".into()),
                    Health::Failed("b".into()),
                    Health::Progressing("c".into())
                ],
                "ok".into()
            ),
            Health::Failed("b".into())
        );
        assert_eq!(
            combine(
                [
                    Health::Progressing("a".into()),
                    Health::Progressing("c".into())
                ],
                "ok".into()
            ),
            Health::Progressing("a; c".into())
        );
        assert_eq!(combine([], "ok".into()), Health::Available("ok".into()));
    }
}
