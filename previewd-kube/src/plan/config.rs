//! The planner's settings: everything [`super::plan`] and the plug-ins it calls read
//! besides the environment and what the caches hold. The controller's own settings
//! (which environments it watches, its concurrency, backoff) live in
//! [`crate::controller::ControllerConfig`], which holds one of these.

use std::time::Duration;

use previewd_core::Pricing;
use previewd_core::tenancy::ClaimPolicy;

use crate::children::httproute::Routing;
use crate::children::namespace::GuardSettings;
use crate::children::waker::WakerEndpoint;
use crate::children::workload::WorkloadSettings;
use crate::strategy::StageJobSettings;
use crate::strategy::rules::TemplateRules;

/// Operator-wide settings of the planner.
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// Base domain for environments that do not name a host.
    pub base_domain: String,
    /// Default cert-manager ClusterIssuer.
    pub cert_issuer: String,
    /// Base domains environments may serve under (their hosts must be subdomains of
    /// one); empty means only `base_domain`.
    pub allowed_base_domains: Vec<String>,
    /// cert-manager ClusterIssuers environments may name; empty means only `cert_issuer`.
    pub allowed_cluster_issuers: Vec<String>,
    /// How long a new head commit may take to become available before the environment fails.
    pub readiness_timeout: Duration,
    /// How often a provisioning environment is looked at while waiting for its pods.
    pub poll_interval: Duration,
    /// Periodic re-check of every environment, even without events.
    pub resync_interval: Duration,
    /// Prices for the cost estimate.
    pub pricing: Pricing,
    /// Guard-rail settings of each namespace.
    pub guard: GuardSettings,
    /// Workload settings.
    pub workload: WorkloadSettings,
    /// Namespace of the Secrets repositories may copy into previews (`spec.secrets`);
    /// `None` switches copies off.
    pub secret_namespace: Option<String>,
    /// Settings of the Jobs the stages run (test data, tests).
    pub stage_jobs: StageJobSettings,
    /// Idle time after which an environment's workloads are scaled to zero (`None`:
    /// never for idleness). See [`crate::plan::sleep`] for what counts as activity.
    pub idle_sleep_after: Option<Duration>,
    /// How long before deletion the PR comment warns that the environment expires
    /// (zero: no warning).
    pub expiry_warning: Duration,
    /// Record each report in `status.pendingReport` until the reporter confirms it was
    /// delivered, and send it again until then (after a restart in particular). Set by
    /// [`Context::with_reporter`](crate::controller::Context::with_reporter) when the
    /// reporter confirms deliveries; without such a reporter nothing would ever confirm
    /// them.
    pub durable_reports: bool,
    /// Which namespaces may claim which repositories: checked for every environment
    /// before anything is rendered, applied, copied or reported ([`crate::tenancy`]).
    pub claim_policy: ClaimPolicy,
    /// What templated objects may do ([`crate::strategy::rules`]).
    pub template_rules: TemplateRules,
    /// How environments are reached: an Ingress or a Gateway API HTTPRoute each.
    pub routing: Routing,
    /// The operator's waker: while an environment sleeps (and until it is Ready again
    /// after a wake) its route points there ([`crate::children::waker`]). `None`: the
    /// route is left as it is while asleep.
    pub waker: Option<WakerEndpoint>,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            base_domain: "preview.example.com".into(),
            cert_issuer: "letsencrypt".into(),
            allowed_base_domains: Vec::new(),
            allowed_cluster_issuers: Vec::new(),
            readiness_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
            resync_interval: Duration::from_secs(300),
            pricing: Pricing::default(),
            guard: GuardSettings::default(),
            workload: WorkloadSettings::default(),
            secret_namespace: None,
            stage_jobs: StageJobSettings::default(),
            idle_sleep_after: Some(Duration::from_secs(2 * 3600)),
            expiry_warning: Duration::from_secs(3600),
            durable_reports: false,
            claim_policy: ClaimPolicy::open(),
            template_rules: TemplateRules::default(),
            routing: Routing::Ingress,
            waker: None,
        }
    }
}

impl PlannerConfig {
    /// The base domains hosts may lie under (lower-cased, without surrounding dots).
    pub fn allowed_base_domains(&self) -> Vec<&str> {
        let domains: Vec<&str> = if self.allowed_base_domains.is_empty() {
            vec![self.base_domain.as_str()]
        } else {
            self.allowed_base_domains
                .iter()
                .map(String::as_str)
                .collect()
        };
        domains
            .into_iter()
            .map(|d| d.trim().trim_matches('.'))
            .filter(|d| !d.is_empty())
            .collect()
    }

    /// The ClusterIssuers environments may name.
    pub fn allowed_cluster_issuers(&self) -> Vec<&str> {
        if self.allowed_cluster_issuers.is_empty() {
            vec![self.cert_issuer.as_str()]
        } else {
            self.allowed_cluster_issuers
                .iter()
                .map(String::as_str)
                .collect()
        }
    }
}
