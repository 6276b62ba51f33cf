//! Measured resource usage of preview environments, for sizing: a [`UsageTracker`] samples
//! the metrics API (`metrics.k8s.io/v1beta1` PodMetrics, served by metrics-server) in every
//! namespace previewd manages and keeps, per environment and service, the highest CPU and
//! memory seen (the sum over the service's pods and containers at one sample). The history
//! recorder reads those peaks when an environment falls asleep or is deleted, and the tier
//! advisor raises the next environment's tier from them.
//!
//! Environments are keyed by the labels their namespace carries (`previewd.io/repo`,
//! `previewd.io/pr`); services by the `previewd.io/service` label of their pods. Where the
//! metrics API is not served, sampling finds nothing and says so once; nothing else
//! changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use tokio_util::sync::CancellationToken;

use crate::crd::{LABEL_MANAGED_BY, LABEL_PR, LABEL_REPO, LABEL_SERVICE, MANAGED_BY};

/// Usage of one service at one moment, or its peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceUsage {
    /// CPU of all its pods, in millicores.
    pub cpu_millicores: u64,
    /// Memory (working set) of all its pods, in bytes.
    pub memory_bytes: u64,
    /// CPU of its busiest pod, in millicores (what a pod's limit is compared with).
    pub pod_cpu_millicores: u64,
    /// Memory of its largest pod, in bytes.
    pub pod_memory_bytes: u64,
}

impl ServiceUsage {
    fn max(self, other: ServiceUsage) -> ServiceUsage {
        ServiceUsage {
            cpu_millicores: self.cpu_millicores.max(other.cpu_millicores),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            pod_cpu_millicores: self.pod_cpu_millicores.max(other.pod_cpu_millicores),
            pod_memory_bytes: self.pod_memory_bytes.max(other.pod_memory_bytes),
        }
    }

    /// Whether a pod came within 10% of the limits `tier` gives it (CPU limit twice the
    /// request, memory limit equal to it): the service needs a larger tier.
    pub fn near_limits(&self, tier: previewd_core::Tier) -> bool {
        let r = tier.requests();
        self.pod_cpu_millicores.saturating_mul(10) >= r.cpu_millicores.saturating_mul(18)
            || self.pod_memory_bytes.saturating_mul(10) >= r.memory_bytes.saturating_mul(9)
    }
}

/// An environment as its namespace's labels name it: (`previewd.io/repo` value, PR number).
pub type EnvironmentKey = (String, u64);

/// Parses a CPU quantity (`250m`, `1`, `1.5`, `12345678n`, `500u`) into millicores,
/// rounded up.
pub fn parse_cpu(q: &str) -> Option<u64> {
    let q = q.trim();
    let (number, scale) = if let Some(n) = q.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(n) = q.strip_suffix('u') {
        (n, 1e-3)
    } else if let Some(n) = q.strip_suffix('m') {
        (n, 1.0)
    } else {
        (q, 1000.0)
    };
    let v: f64 = number.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * scale).ceil() as u64)
}

/// Parses a memory quantity (`128Mi`, `1Gi`, `2048Ki`, `1G`, `1000k`, `123456`) into bytes.
pub fn parse_memory(q: &str) -> Option<u64> {
    let q = q.trim();
    const UNITS: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
    ];
    let (number, scale) = UNITS
        .iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((q, 1.0));
    let v: f64 = number.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * scale).round() as u64)
}

/// Sums a `PodMetricsList` (as the metrics API serves it) per service: every container of
/// every pod labelled with a service. Pods without the label (seed and test Jobs) are left
/// out.
pub fn usage_by_service(pod_metrics: &serde_json::Value) -> BTreeMap<String, ServiceUsage> {
    let mut out: BTreeMap<String, ServiceUsage> = BTreeMap::new();
    for pod in pod_metrics["items"].as_array().into_iter().flatten() {
        let Some(service) = pod["metadata"]["labels"][LABEL_SERVICE].as_str() else {
            continue;
        };
        let (mut cpu, mut memory) = (0, 0);
        for c in pod["containers"].as_array().into_iter().flatten() {
            cpu += c["usage"]["cpu"].as_str().and_then(parse_cpu).unwrap_or(0);
            memory += c["usage"]["memory"]
                .as_str()
                .and_then(parse_memory)
                .unwrap_or(0);
        }
        let total = out.entry(service.to_string()).or_default();
        total.cpu_millicores += cpu;
        total.memory_bytes += memory;
        total.pod_cpu_millicores = total.pod_cpu_millicores.max(cpu);
        total.pod_memory_bytes = total.pod_memory_bytes.max(memory);
    }
    out
}

/// Reads the PodMetrics of every pod previewd manages (labelled
/// `app.kubernetes.io/managed-by=previewd`, which the metrics API copies from the pods),
/// in one cluster-wide list: one request per sample whatever the number of environments.
pub async fn read_pod_metrics(client: &Client) -> Result<serde_json::Value, kube::Error> {
    let resource = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let list = api
        .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")))
        .await?;
    Ok(serde_json::json!({
        "items": list
            .items
            .iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect::<Vec<_>>()
    }))
}

/// Splits a `PodMetricsList` by environment, as its pods' labels name it
/// (`previewd.io/repo`, `previewd.io/pr`).
pub fn by_environment(
    pod_metrics: &serde_json::Value,
) -> BTreeMap<EnvironmentKey, serde_json::Value> {
    let mut out: BTreeMap<EnvironmentKey, Vec<serde_json::Value>> = BTreeMap::new();
    for pod in pod_metrics["items"].as_array().into_iter().flatten() {
        let labels = &pod["metadata"]["labels"];
        let (Some(repo), Some(pr)) = (
            labels[LABEL_REPO].as_str(),
            labels[LABEL_PR]
                .as_str()
                .and_then(|p| p.parse::<u64>().ok()),
        ) else {
            continue;
        };
        out.entry((repo.to_string(), pr))
            .or_default()
            .push(pod.clone());
    }
    out.into_iter()
        .map(|(k, items)| (k, serde_json::json!({ "items": items })))
        .collect()
}

/// Peak usage per environment and service, as sampled so far.
#[derive(Debug, Default)]
pub struct UsageTracker {
    peaks: Mutex<HashMap<EnvironmentKey, BTreeMap<String, ServiceUsage>>>,
}

impl UsageTracker {
    /// Folds one sample of an environment into its peaks.
    pub fn observe(&self, env: &EnvironmentKey, sample: &BTreeMap<String, ServiceUsage>) {
        let mut peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = peaks.entry(env.clone()).or_default();
        for (service, usage) in sample {
            let peak = entry.entry(service.clone()).or_default();
            *peak = peak.max(*usage);
        }
    }

    /// The peaks of an environment (empty when nothing was measured).
    pub fn peaks(&self, env: &EnvironmentKey) -> BTreeMap<String, ServiceUsage> {
        self.peaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(env)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets environments whose namespaces are gone (`keep` lists the live ones).
    pub fn retain(&self, keep: &[EnvironmentKey]) {
        self.peaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep.contains(k));
    }

    /// Samples every environment previewd manages once; the number sampled.
    pub async fn sample_once(&self, client: &Client) -> Result<usize, kube::Error> {
        let metrics = read_pod_metrics(client).await?;
        let environments = by_environment(&metrics);
        for (env, pods) in &environments {
            self.observe(env, &usage_by_service(pods));
        }
        Ok(environments.len())
    }

    /// Samples every `interval` until `shutdown`; a cluster without the metrics API is
    /// reported once and sampled again at the next interval.
    pub fn spawn(
        client: Client,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<UsageTracker> {
        let tracker = Arc::new(UsageTracker::default());
        let t = tracker.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match t.sample_once(&client).await {
                    Ok(_) => warned = false,
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(error = %e, "cannot read the metrics API (metrics.k8s.io); usage is not recorded until it can");
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        });
        tracker
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_the_metrics_api_writes_them() {
        assert_eq!(parse_cpu("250m"), Some(250));
        assert_eq!(parse_cpu("1"), Some(1000));
        assert_eq!(parse_cpu("1.5"), Some(1500));
        assert_eq!(parse_cpu("12345678n"), Some(13));
        assert_eq!(parse_cpu("500u"), Some(1));
        assert_eq!(parse_cpu("0"), Some(0));
        assert_eq!(parse_cpu("lots"), None);
        assert_eq!(parse_memory("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(parse_memory("2048Ki"), Some(2 * 1024 * 1024));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("123456"), Some(123_456));
        assert_eq!(parse_memory("-1Mi"), None);
    }

    /// A PodMetricsList as metrics-server serves it.
    fn sample(api_cpu: &str, api_mem: &str) -> serde_json::Value {
        serde_json::json!({
            "kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
            "items": [
                {"metadata": {"name": "api-1", "labels": {"previewd.io/service": "api"}},
                 "containers": [{"name": "app", "usage": {"cpu": api_cpu, "memory": api_mem}}]},
                {"metadata": {"name": "api-2", "labels": {"previewd.io/service": "api"}},
                 "containers": [{"name": "app", "usage": {"cpu": "100m", "memory": "64Mi"}},
                                {"name": "proxy", "usage": {"cpu": "5m", "memory": "16Mi"}}]},
                {"metadata": {"name": "web-1", "labels": {"previewd.io/service": "web"}},
                 "containers": [{"name": "app", "usage": {"cpu": "20m", "memory": "32Mi"}}]},
                {"metadata": {"name": "previewd-seed-abc", "labels": {"previewd.io/stage": "seed"}},
                 "containers": [{"name": "runner", "usage": {"cpu": "900m", "memory": "1Gi"}}]}
            ]
        })
    }

    #[test]
    fn usage_is_summed_per_service_and_jobs_are_left_out() {
        let u = usage_by_service(&sample("300m", "200Mi"));
        assert_eq!(u.len(), 2);
        assert_eq!(u["api"].cpu_millicores, 405);
        assert_eq!(u["api"].memory_bytes, (200 + 64 + 16) * 1024 * 1024);
        assert_eq!(u["api"].pod_cpu_millicores, 300);
        assert_eq!(u["api"].pod_memory_bytes, 200 * 1024 * 1024);
        assert_eq!(u["web"].cpu_millicores, 20);
    }

    #[test]
    fn a_pod_near_its_tier_limits_asks_for_a_larger_tier() {
        use previewd_core::Tier;
        let small = Tier::Small.requests();
        let at = |cpu, mem| ServiceUsage {
            pod_cpu_millicores: cpu,
            pod_memory_bytes: mem,
            ..ServiceUsage::default()
        };
        assert!(!at(small.cpu_millicores, small.memory_bytes / 2).near_limits(Tier::Small));
        assert!(at(small.cpu_millicores * 2, 0).near_limits(Tier::Small));
        assert!(at(0, small.memory_bytes * 95 / 100).near_limits(Tier::Small));
        assert!(!at(0, small.memory_bytes * 95 / 100).near_limits(Tier::Large));
    }

    #[test]
    fn the_tracker_keeps_the_highest_of_every_sample() {
        let t = UsageTracker::default();
        let env = ("acme.shop".to_string(), 7);
        t.observe(&env, &usage_by_service(&sample("300m", "200Mi")));
        t.observe(&env, &usage_by_service(&sample("900m", "100Mi")));
        t.observe(&env, &usage_by_service(&sample("10m", "10Mi")));
        let p = t.peaks(&env);
        assert_eq!(p["api"].cpu_millicores, 1005);
        assert_eq!(p["api"].memory_bytes, (200 + 64 + 16) * 1024 * 1024);
        assert!(t.peaks(&("acme.shop".to_string(), 8)).is_empty());
        t.retain(&[]);
        assert!(t.peaks(&env).is_empty());
    }

    #[test]
    fn one_cluster_wide_list_splits_by_environment() {
        let pod = |ns: &str, repo: &str, pr: &str, service: &str, cpu: &str| {
            serde_json::json!({"metadata": {"name": format!("{service}-1"), "namespace": ns,
                "labels": {LABEL_REPO: repo, LABEL_PR: pr, LABEL_SERVICE: service}},
                "containers": [{"name": "c", "usage": {"cpu": cpu, "memory": "64Mi"}}]})
        };
        let list = serde_json::json!({"items": [
            pod("preview-1-a", "acme.shop", "1", "api", "100m"),
            pod("preview-1-a", "acme.shop", "1", "web", "50m"),
            pod("preview-2-b", "acme.shop", "2", "api", "300m"),
            {"metadata": {"name": "stray", "labels": {}}, "containers": []}
        ]});
        let split = by_environment(&list);
        assert_eq!(
            split.len(),
            2,
            "the pod without an environment's labels is left out"
        );
        let first = usage_by_service(&split[&("acme.shop".to_string(), 1)]);
        assert_eq!(first["api"].cpu_millicores, 100);
        assert_eq!(first["web"].cpu_millicores, 50);
        let second = usage_by_service(&split[&("acme.shop".to_string(), 2)]);
        assert_eq!(second["api"].cpu_millicores, 300);
    }
}
