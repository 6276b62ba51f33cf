use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::plan::PlannerConfig;

/// Operator-wide settings of the controller: which environments it reconciles and how,
/// and the planner's settings ([`PlannerConfig`], reachable through `Deref`).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Namespace whose `PreviewEnvironment`s are reconciled; `None` for all namespaces.
    pub watch_namespace: Option<String>,
    /// Label selector of the `PreviewEnvironment`s this controller reconciles (a shard,
    /// e.g. `previewd.io/repo in (acme.shop,acme.web)`); `None` for all. Shards must
    /// select disjoint environments and hold different leader Leases.
    pub environment_selector: Option<String>,
    /// Environments reconciled at the same time. A reconcile spends nearly all its time
    /// waiting on the API server (a new environment's Services wait behind each other
    /// for their cluster IPs), so slots are cheap and too few of them, not the API
    /// server, bound provisioning: at 1000 environments on two cores, 8 slots took
    /// 424 s to all Ready and 32 took 294 s (docs/PERFORMANCE.md).
    pub concurrency: u16,
    /// How long a woken environment waits for more wake-ups before it is reconciled: the
    /// updates of its Pods and Deployments while they roll out come in bursts, and one
    /// reconcile for a burst does what one per update would.
    pub debounce: Duration,
    /// Safety-net sweep interval (expired environments, orphan namespaces).
    pub cleanup_interval: Duration,
    /// First retry delay after a failed reconcile.
    pub backoff_base: Duration,
    /// Largest retry delay after repeated failures.
    pub backoff_max: Duration,
    /// Longest wait for the advisor; past it every service is deployed.
    pub advice_timeout: Duration,
    /// The planner's settings.
    pub planner: PlannerConfig,
}

/// Environments reconciled at the same time unless configured: see
/// [`ControllerConfig::concurrency`]. The binary's `--concurrency` and the scale
/// scenario's defaults are this value.
pub const DEFAULT_CONCURRENCY: u16 = 32;

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            watch_namespace: None,
            environment_selector: None,
            concurrency: DEFAULT_CONCURRENCY,
            debounce: Duration::from_millis(500),
            cleanup_interval: Duration::from_secs(300),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            advice_timeout: Duration::from_secs(45),
            planner: PlannerConfig::default(),
        }
    }
}

impl Deref for ControllerConfig {
    type Target = PlannerConfig;

    fn deref(&self) -> &PlannerConfig {
        &self.planner
    }
}

impl DerefMut for ControllerConfig {
    fn deref_mut(&mut self) -> &mut PlannerConfig {
        &mut self.planner
    }
}
