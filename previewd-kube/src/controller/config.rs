use std::time::Duration;

use previewd_core::Pricing;

use crate::children::namespace::GuardSettings;
use crate::children::workload::WorkloadSettings;

/// Operator-wide settings of the controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Namespace whose `PreviewEnvironment`s are reconciled; `None` for all namespaces.
    pub watch_namespace: Option<String>,
    /// Environments reconciled at the same time.
    pub concurrency: u16,
    /// Base domain for environments that do not name a host.
    pub base_domain: String,
    /// Default cert-manager ClusterIssuer.
    pub cert_issuer: String,
    /// How long a new head commit may take to become available before the environment fails.
    pub readiness_timeout: Duration,
    /// How often a provisioning environment is looked at while waiting for its pods.
    pub poll_interval: Duration,
    /// Periodic re-check of every environment, even without events.
    pub resync_interval: Duration,
    /// Safety-net sweep interval (expired environments, orphan namespaces).
    pub cleanup_interval: Duration,
    /// Prices for the cost estimate.
    pub pricing: Pricing,
    /// Guard-rail settings of each namespace.
    pub guard: GuardSettings,
    /// Workload settings.
    pub workload: WorkloadSettings,
    /// First retry delay after a failed reconcile.
    pub backoff_base: Duration,
    /// Largest retry delay after repeated failures.
    pub backoff_max: Duration,
    /// Longest wait for the advisor; past it every service is deployed.
    pub advice_timeout: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            watch_namespace: None,
            concurrency: 8,
            base_domain: "preview.example.com".into(),
            cert_issuer: "letsencrypt".into(),
            readiness_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            resync_interval: Duration::from_secs(300),
            cleanup_interval: Duration::from_secs(300),
            pricing: Pricing::default(),
            guard: GuardSettings::default(),
            workload: WorkloadSettings::default(),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            advice_timeout: Duration::from_secs(45),
        }
    }
}
