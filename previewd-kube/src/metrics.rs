//! Prometheus metrics of the controller.

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
