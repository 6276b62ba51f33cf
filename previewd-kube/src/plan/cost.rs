//! What the environment costs: from what runs (its pods and volumes, read from the
//! caches) for the estimate and the spend to date, and from what the plan is about to
//! apply (the desired workloads) for the budget.
//!
//! - **Live**: every pod of the environment that holds resources (not `Succeeded` or
//!   `Failed`), counted the scheduler's way ([`PodRequests::effective`]), plus each
//!   PersistentVolumeClaim's storage (its bound capacity, else its request). A sleeping
//!   environment has no pods: it pays only for its volumes.
//! - **Projected**: `replicas ×` the pod template of every desired Deployment,
//!   StatefulSet and ReplicaSet, each desired Pod, the desired PersistentVolumeClaims and
//!   a StatefulSet's `volumeClaimTemplates × replicas`. This is what the environment costs
//!   once rolled out, known before any workload exists.
//!
//! Quantities that do not parse count as zero: a hostile manifest cannot fail the
//! estimate, and the scheduler would refuse such a pod anyway.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use previewd_core::{
    Accrual, CostEstimate, InitContainer, Money, PodRequests, Pricing, ResourceRequests, parse_cpu,
    parse_memory,
};

use super::object::DesiredObject;
use crate::crd::{CostBreakdown, CostStatus};
use crate::strategy::NamespaceView;

/// The spend to date is written at least this often while the rate stays the same (and
/// at once when it changes), so an idle environment's status is not rewritten at every
/// reconcile.
pub const ACCRUAL_WRITE_INTERVAL: Duration = Duration::from_secs(900);

/// Resources an environment holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU and memory requested by its pods.
    pub requests: ResourceRequests,
    /// Bytes of persistent storage.
    pub storage_bytes: u64,
    /// Pods holding resources.
    pub pods: u64,
}

impl Usage {
    /// Priced.
    pub fn estimate(&self, pricing: &Pricing) -> CostEstimate {
        CostEstimate::estimate_running(&self.requests, self.storage_bytes, self.pods > 0, pricing)
    }
}

fn requests_of(map: Option<&BTreeMap<String, Quantity>>) -> ResourceRequests {
    let get = |key: &str| map.and_then(|m| m.get(key)).map(|q| q.0.as_str());
    ResourceRequests {
        cpu_millicores: get("cpu").and_then(|q| parse_cpu(q).ok()).unwrap_or(0),
        memory_bytes: get("memory")
            .and_then(|q| parse_memory(q).ok())
            .unwrap_or(0),
    }
}

fn container_requests(c: &Container) -> ResourceRequests {
    requests_of(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

/// The requests of a pod spec, as stated.
pub fn pod_requests(spec: &PodSpec) -> PodRequests {
    PodRequests {
        containers: spec.containers.iter().map(container_requests).collect(),
        init_containers: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| InitContainer {
                requests: container_requests(c),
                sidecar: c.restart_policy.as_deref() == Some("Always"),
            })
            .collect(),
        overhead: requests_of(spec.overhead.as_ref()),
    }
}

fn claim_bytes(pvc: &PersistentVolumeClaim) -> u64 {
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let requested = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    capacity
        .or(requested)
        .and_then(|q| parse_memory(&q.0).ok())
        .unwrap_or(0)
}

/// What the environment's pods and volumes hold now.
pub fn live_usage(view: &NamespaceView) -> Usage {
    let mut usage = Usage::default();
    for pod in &view.pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        if let Some(spec) = &pod.spec {
            usage.requests += pod_requests(spec).effective();
        }
        usage.pods += 1;
    }
    usage.storage_bytes = view
        .pvcs
        .iter()
        .map(|c| claim_bytes(c))
        .fold(0u64, u64::saturating_add);
    usage
}

/// What the desired objects hold once rolled out.
pub fn projected_usage(desired: &[DesiredObject]) -> Usage {
    let mut usage = Usage::default();
    for d in desired {
        let value = &d.object;
        match (d.resource.group.as_str(), d.resource.kind.as_str()) {
            ("apps", "Deployment" | "StatefulSet" | "ReplicaSet") => {
                let replicas = value
                    .pointer("/spec/replicas")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(1);
                if let Some(spec) = value
                    .pointer("/spec/template/spec")
                    .and_then(|s| serde_json::from_value::<PodSpec>(s.clone()).ok())
                {
                    usage.requests += pod_requests(&spec).effective().scaled(replicas);
                    usage.pods = usage.pods.saturating_add(replicas);
                }
                for template in value
                    .pointer("/spec/volumeClaimTemplates")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Ok(pvc) =
                        serde_json::from_value::<PersistentVolumeClaim>(template.clone())
                    {
                        usage.storage_bytes = usage
                            .storage_bytes
                            .saturating_add(claim_bytes(&pvc).saturating_mul(replicas));
                    }
                }
            }
            ("", "Pod") => {
                if let Ok(pod) = serde_json::from_value::<Pod>(value.clone())
                    && let Some(spec) = &pod.spec
                {
                    usage.requests += pod_requests(spec).effective();
                    usage.pods += 1;
                }
            }
            ("", "PersistentVolumeClaim") => {
                if let Ok(pvc) = serde_json::from_value::<PersistentVolumeClaim>(value.clone()) {
                    usage.storage_bytes = usage.storage_bytes.saturating_add(claim_bytes(&pvc));
                }
            }
            _ => {}
        }
    }
    usage
}

/// The accrual recorded in a status, if any.
pub fn recorded_accrual(costs: Option<&CostStatus>) -> Option<Accrual> {
    let costs = costs?;
    Some(Accrual {
        spent: costs.actual_to_date.unwrap_or_default(),
        carry: u32::try_from(costs.accrual_carry.unwrap_or(0).clamp(0, 3599)).unwrap_or(0),
        accrued_at: costs.last_accrued_at.as_ref()?.0,
        hourly: costs.hourly.unwrap_or_default(),
    })
}

/// The cost status after observing `estimate` at `now`, and the spend up to `now`
/// (which may be ahead of the persisted `actualToDate` by less than
/// [`ACCRUAL_WRITE_INTERVAL`]).
pub fn cost_status(
    old: Option<&CostStatus>,
    estimate: &CostEstimate,
    created_at: jiff::Timestamp,
    now: jiff::Timestamp,
) -> (CostStatus, Money) {
    let persisted = match recorded_accrual(old) {
        Some(a) => a.persisted(now, created_at, estimate.hourly, ACCRUAL_WRITE_INTERVAL),
        // First observation (or a status written before accrual existed: its amount is
        // kept and accrual starts now).
        None => Accrual {
            spent: old.and_then(|c| c.actual_to_date).unwrap_or_default(),
            ..Accrual::start(now, estimate.hourly)
        },
    };
    let spent_now = persisted.advance(now, created_at).spent;
    // Figures shown are those of the persisted rate, so the status changes only when it
    // is written for a reason.
    let shown = if persisted.hourly == estimate.hourly {
        *estimate
    } else {
        old.map(shown_estimate).unwrap_or(*estimate)
    };
    let status = CostStatus {
        hourly: Some(shown.hourly),
        estimated_daily: Some(shown.daily),
        monthly: Some(shown.monthly),
        actual_to_date: Some(persisted.spent),
        last_accrued_at: Some(Time(persisted.accrued_at)),
        accrual_carry: Some(i64::from(persisted.carry)),
        breakdown: Some(CostBreakdown {
            compute: shown.breakdown.compute,
            storage: shown.breakdown.storage,
            network: shown.breakdown.network,
        }),
    };
    (status, spent_now)
}

fn shown_estimate(c: &CostStatus) -> CostEstimate {
    let b = c.breakdown.clone().unwrap_or_default();
    CostEstimate {
        hourly: c.hourly.unwrap_or_default(),
        daily: c.estimated_daily.unwrap_or_default(),
        monthly: c.monthly.unwrap_or_default(),
        breakdown: previewd_core::CostBreakdown {
            compute: b.compute,
            storage: b.storage,
            network: b.network,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use k8s_openapi::api::apps::v1::StatefulSet;
    use serde_json::json;

    use super::*;

    fn pod(value: serde_json::Value) -> Arc<Pod> {
        let mut p: Pod = serde_json::from_value(value).unwrap();
        crate::controller::caches::strip_pod(&mut p);
        Arc::new(p)
    }

    #[test]
    fn live_usage_counts_running_pods_the_scheduler_way_and_volumes() {
        let view = NamespaceView {
            pods: vec![
                pod(json!({
                    "metadata": {"name": "a", "annotations": {"x": "y"}},
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1"}}},
                            {"name": "log", "image": "i", "resources": {"requests": {"cpu": "0.05", "memory": "64e6"}}}
                        ],
                        "initContainers": [
                            {"name": "migrate", "image": "i", "resources": {"requests": {"cpu": "1", "memory": "128Mi"}}},
                            {"name": "proxy", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}
                        ],
                        "overhead": {"cpu": "10m", "memory": "1Mi"}
                    },
                    "status": {"phase": "Running"}
                })),
                pod(json!({
                    "metadata": {"name": "done"},
                    "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "4"}}}]},
                    "status": {"phase": "Succeeded"}
                })),
                pod(json!({
                    "metadata": {"name": "bad"},
                    "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}]},
                    "status": {"phase": "Pending"}
                })),
            ],
            pvcs: vec![
                Arc::new(
                    serde_json::from_value(json!({
                        "metadata": {"name": "data"},
                        "spec": {"resources": {"requests": {"storage": "5Gi"}}},
                        "status": {"capacity": {"storage": "8Gi"}}
                    }))
                    .unwrap(),
                ),
                Arc::new(
                    serde_json::from_value(json!({
                        "metadata": {"name": "pending"},
                        "spec": {"resources": {"requests": {"storage": "1G"}}}
                    }))
                    .unwrap(),
                ),
            ],
            ..NamespaceView::default()
        };
        let usage = live_usage(&view);
        // Running: 250m + 50m + the 100m sidecar = 400m; starting: the migration (1 CPU,
        // before the sidecar starts) = 1000m; plus 10m overhead. The finished pod is
        // not counted, the unparsable CPU counts as zero.
        assert_eq!(usage.requests.cpu_millicores, 1010);
        // memory: 512Mi + 64e6 + 32Mi = 608Mi + 64e6 vs 128Mi; + 1Mi; + bad pod 1Gi.
        assert_eq!(
            usage.requests.memory_bytes,
            (512 + 32 + 1 + 1024) * (1 << 20) + 64_000_000
        );
        assert_eq!(usage.pods, 2);
        assert_eq!(usage.storage_bytes, (8u64 << 30) + 1_000_000_000);
    }

    #[test]
    fn projected_usage_multiplies_templates_by_replicas() {
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "selector": {},
                "template": {"spec": {"containers": [{"name": "pg", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "10Gi"}}}}]
            }
        }))
        .unwrap();
        let desired = vec![DesiredObject::from_typed(&sts).unwrap()];
        let usage = projected_usage(&desired);
        assert_eq!(
            usage.requests,
            ResourceRequests::from_quantities("1", "2Gi").unwrap()
        );
        assert_eq!(usage.storage_bytes, 20 << 30);
        assert_eq!(usage.pods, 2);
    }

    #[test]
    fn the_status_accrues_between_observations() {
        let t0: jiff::Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        let pricing = Pricing::default();
        let running = Usage {
            requests: ResourceRequests::from_quantities("1", "2Gi").unwrap(),
            storage_bytes: 0,
            pods: 1,
        }
        .estimate(&pricing);
        assert_eq!(running.hourly, Money::from_micros(50_000));
        let (first, _) = cost_status(None, &running, t0, t0);
        assert_eq!(first.actual_to_date, Some(Money::ZERO));
        // Ten minutes later, same rate: nothing to write yet, but the spend is known.
        let (same, spent) = cost_status(Some(&first), &running, t0, at(600));
        assert_eq!(same, first);
        assert_eq!(spent, Money::from_micros(8_333));
        // Asleep after half an hour: accrued at the old rate, the new one recorded.
        let asleep = Usage::default().estimate(&pricing);
        let (slept, spent) = cost_status(Some(&same), &asleep, t0, at(1800));
        assert_eq!(slept.actual_to_date, Some(Money::from_micros(25_000)));
        assert_eq!(spent, Money::from_micros(25_000));
        assert_eq!(slept.hourly, Some(Money::ZERO));
        // A day asleep costs nothing more.
        let (later, spent) = cost_status(Some(&slept), &asleep, t0, at(1800 + 86_400));
        assert_eq!(spent, Money::from_micros(25_000));
        assert_eq!(later.actual_to_date, Some(Money::from_micros(25_000)));
    }

    /// The figures of the comparison table in docs/COST.md (previewd's column).
    #[test]
    fn the_cost_document_table() {
        let pricing = Pricing::default();
        let hourly = |pods: Vec<serde_json::Value>, pvcs: Vec<serde_json::Value>| {
            let view = NamespaceView {
                pods: pods.into_iter().map(pod).collect(),
                pvcs: pvcs
                    .into_iter()
                    .map(|v| Arc::new(serde_json::from_value(v).unwrap()))
                    .collect(),
                ..NamespaceView::default()
            };
            live_usage(&view).estimate(&pricing).hourly
        };
        let c = |cpu: &str, mem: &str| json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}});
        let p = |spec: serde_json::Value| json!({"metadata": {"name": "p"}, "spec": spec, "status": {"phase": "Running"}});
        let pvc = json!({"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "10Gi"}}}});
        let small = || p(json!({"containers": [c("250m", "512Mi")]}));
        let m = |s: &str| s.parse::<Money>().unwrap();
        assert_eq!(hourly(vec![small()], vec![]), m("0.0125"));
        assert_eq!(hourly(vec![small(), small(), small()], vec![]), m("0.0375"));
        assert_eq!(
            hourly(
                vec![p(
                    json!({"containers": [c("200m", "256Mi")], "initContainers": [c("1", "128Mi")]})
                )],
                vec![]
            ),
            m("0.04125")
        );
        let mut sidecar = c("100m", "64Mi");
        sidecar["restartPolicy"] = json!("Always");
        assert_eq!(
            hourly(
                vec![p(
                    json!({"containers": [c("250m", "512Mi")], "initContainers": [sidecar]})
                )],
                vec![]
            ),
            m("0.016813")
        );
        assert_eq!(
            hourly(
                vec![p(
                    json!({"containers": [c("250m", "512Mi")], "overhead": {"cpu": "250m", "memory": "120Mi"}})
                )],
                vec![]
            ),
            m("0.023086")
        );
        assert_eq!(
            hourly(
                vec![p(json!({"containers": [c("500m", "1Gi")]}))],
                vec![pvc.clone()]
            ),
            m("0.026")
        );
        assert_eq!(hourly(vec![], vec![pvc]), m("0.001"));
        assert_eq!(
            hourly(
                vec![p(json!({"containers": [c("0.25", "536870912")]}))],
                vec![]
            ),
            m("0.0125")
        );
    }
}
