//! Prometheus metrics of the controller.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of reconcile failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error category.
    pub error: String,
}

/// Label set of phase transitions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Phase entered.
    pub phase: String,
}

/// Controller metrics, registered under the `previewd_` prefix.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconcile failures by category.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Phase transitions by target phase.
    pub transitions: Family<PhaseLabels, Counter>,
    /// Namespaces removed by the sweep because their environment was gone.
    pub orphans_swept: Counter,
    /// Environments deleted because their TTL expired.
    pub expired: Counter,
    /// Environments known to the controller.
    pub environments: Gauge,
    /// Environments by phase (recomputed from the cache every few seconds).
    pub environments_by_phase: Family<PhaseLabels, Gauge>,
    /// Seconds from the start of provisioning (creation, or a new head commit) to Ready.
    pub time_to_ready: Histogram,
    /// Seconds from the deletion request to the finalizer's release (namespace gone).
    pub teardown: Histogram,
    /// Seconds from an environment's expiry time to the controller deleting it.
    pub cleanup_lag: Histogram,
    /// Environments deleted by their budget policy.
    pub budget_deleted: Counter,
    /// Estimated hourly cost of each environment, in dollars.
    pub cost_hourly: Family<EnvironmentLabels, Gauge<f64, AtomicU64>>,
    /// Spend to date of each environment, in dollars.
    pub cost_to_date: Family<EnvironmentLabels, Gauge<f64, AtomicU64>>,
    /// Estimated hourly cost of every environment together, in dollars.
    pub cost_hourly_total: Gauge<f64, AtomicU64>,
    /// Per-environment hourly cost in micro-dollars, from which the total is summed.
    hourly_by_environment: Mutex<BTreeMap<EnvironmentLabels, i64>>,
}

/// Label set of per-environment metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EnvironmentLabels {
    /// Namespace of the environment object.
    pub namespace: String,
    /// Name of the environment object.
    pub name: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            transitions: Family::default(),
            orphans_swept: Counter::default(),
            expired: Counter::default(),
            environments: Gauge::default(),
            environments_by_phase: Family::default(),
            // 0.1 s to about 1.8 h.
            time_to_ready: Histogram::new(exponential_buckets(0.1, 2.0, 17)),
            teardown: Histogram::new(exponential_buckets(0.1, 2.0, 17)),
            // 10 ms to about 1.5 h.
            cleanup_lag: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            budget_deleted: Counter::default(),
            cost_hourly: Family::default(),
            cost_to_date: Family::default(),
            cost_hourly_total: Gauge::default(),
            hourly_by_environment: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("previewd");
        r.register("reconciles", "Reconciles run", self.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconcile failures by error category",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            self.duration.clone(),
        );
        r.register(
            "phase_transitions",
            "Phase transitions by phase entered",
            self.transitions.clone(),
        );
        r.register(
            "orphan_namespaces_swept",
            "Namespaces deleted because their environment was gone",
            self.orphans_swept.clone(),
        );
        r.register(
            "environments_expired",
            "Environments deleted at TTL expiry",
            self.expired.clone(),
        );
        r.register(
            "environments",
            "Environments known to the controller",
            self.environments.clone(),
        );
        r.register(
            "environments_by_phase",
            "Environments known to the controller, by phase",
            self.environments_by_phase.clone(),
        );
        r.register(
            "time_to_ready_seconds",
            "Time from the start of provisioning to Ready",
            self.time_to_ready.clone(),
        );
        r.register(
            "teardown_seconds",
            "Time from an environment's deletion to its namespace being gone",
            self.teardown.clone(),
        );
        r.register(
            "cleanup_lag_seconds",
            "Time from an environment's expiry to its deletion by the controller",
            self.cleanup_lag.clone(),
        );
        r.register(
            "environments_deleted_for_budget",
            "Environments deleted by their budget policy",
            self.budget_deleted.clone(),
        );
        r.register(
            "environment_cost_hourly_dollars",
            "Estimated hourly cost of each environment, from its pods and volumes",
            self.cost_hourly.clone(),
        );
        r.register(
            "environment_cost_to_date_dollars",
            "Spend to date of each environment",
            self.cost_to_date.clone(),
        );
        r.register(
            "environments_cost_hourly_dollars",
            "Estimated hourly cost of every environment together",
            self.cost_hourly_total.clone(),
        );
    }

    /// Records an environment's costs (`None`: the environment is gone).
    pub fn record_cost(
        &self,
        labels: EnvironmentLabels,
        costs: Option<(previewd_core::Money, previewd_core::Money)>,
    ) {
        let mut by_env = self
            .hourly_by_environment
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match costs {
            Some((hourly, to_date)) => {
                self.cost_hourly
                    .get_or_create(&labels)
                    .set(hourly.micros() as f64 / 1e6);
                self.cost_to_date
                    .get_or_create(&labels)
                    .set(to_date.micros() as f64 / 1e6);
                by_env.insert(labels, hourly.micros());
            }
            None => {
                self.cost_hourly.remove(&labels);
                self.cost_to_date.remove(&labels);
                by_env.remove(&labels);
            }
        }
        let total: i64 = by_env.values().fold(0i64, |a, b| a.saturating_add(*b));
        self.cost_hourly_total.set(total as f64 / 1e6);
    }

    /// Sets the per-phase gauges from the phases of every environment known (`None`
    /// counts as Pending); phases no environment is in read zero.
    pub fn set_phases(&self, phases: impl IntoIterator<Item = Option<previewd_core::Phase>>) {
        let mut counts: std::collections::BTreeMap<String, i64> = previewd_core::Phase::ALL
            .iter()
            .map(|p| (p.to_string(), 0))
            .collect();
        for phase in phases {
            *counts
                .entry(phase.unwrap_or(previewd_core::Phase::Pending).to_string())
                .or_default() += 1;
        }
        for (phase, n) in counts {
            self.environments_by_phase
                .get_or_create(&PhaseLabels { phase })
                .set(n);
        }
    }

    /// Records one reconcile's duration.
    pub fn observe(&self, elapsed: Duration) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}
