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
    }

    /// Records one reconcile's duration.
    pub fn observe(&self, elapsed: Duration) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}
