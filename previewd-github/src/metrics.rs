//! Prometheus metrics of the webhook and the REST client.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// GitHub webhook event names (from GitHub's webhook documentation); the only values
/// the `event` label takes besides `unknown` (header missing) and `other`.
pub const KNOWN_EVENTS: &[&str] = &[
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "delete",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issues",
    "label",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "organization",
    "package",
    "page_build",
    "ping",
    "project",
    "project_card",
    "project_column",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_dispatch",
    "repository_ruleset",
    "secret_scanning_alert",
    "security_advisory",
    "star",
    "status",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// The metric label of an `X-GitHub-Event` value: the name itself when it is one of
/// [`KNOWN_EVENTS`], `unknown` when empty, else `other`. The label set is fixed whatever
/// is sent.
pub fn event_label(event: &str) -> &'static str {
    if event.is_empty() || event == "unknown" {
        return "unknown";
    }
    KNOWN_EVENTS
        .iter()
        .find(|known| **known == event)
        .copied()
        .unwrap_or("other")
}

/// Labels of `previewd_webhook_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `X-GitHub-Event` mapped by [`event_label`].
    pub event: String,
    /// What happened (`applied`, `deleted`, `ignored`, `rejected_signature`, ...).
    pub outcome: String,
}

/// Labels of `previewd_webhook_store_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The store call (`get_environment`, `record_tombstone`, ...): a fixed set.
    pub operation: &'static str,
    /// `ok`, `error` or `timeout`.
    pub outcome: &'static str,
}

/// Buckets of the store call histogram: 5 ms to about 10 s, doubling.
fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Webhook metrics.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Deliveries by event and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Duration of each store (Kubernetes API) call a delivery makes, by operation and
    /// outcome: where a slow or refused delivery spent its time.
    pub store_seconds: Family<StoreLabels, Histogram, fn() -> Histogram>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            deliveries: Family::default(),
            store_seconds: Family::new_with_constructor(store_histogram),
        }
    }
}

impl WebhookMetrics {
    /// Metrics registered in `registry` (`previewd_webhook_deliveries_total`,
    /// `previewd_webhook_store_seconds`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "previewd_webhook_deliveries",
            "GitHub webhook deliveries by event and outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "previewd_webhook_store_seconds",
            "Duration of the webhook's Kubernetes API calls by operation and outcome",
            metrics.store_seconds.clone(),
        );
        metrics
    }

    /// Records one store call.
    pub fn observe_store(&self, operation: &'static str, outcome: &'static str, seconds: f64) {
        self.store_seconds
            .get_or_create(&StoreLabels { operation, outcome })
            .observe(seconds);
    }

    /// Counts one delivery. The event label is [`event_label`] of `event`, so an
    /// unauthenticated sender cannot create label values.
    pub fn record(&self, event: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event_label(event).to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Deliveries counted for `event` and `outcome` so far.
    pub fn count(&self, event: &str, outcome: &str) -> u64 {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event_label(event).to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }
}

/// Labels of the REST client's request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// `ok`, or the error category.
    pub outcome: String,
}

/// REST client metrics.
#[derive(Clone, Debug, Default)]
pub struct ClientMetrics {
    /// Requests sent (each attempt counts).
    pub requests: Family<RequestLabels, Counter>,
    /// Retries after a failure or a rate limit.
    pub retries: Counter,
    /// Last `x-ratelimit-remaining` seen.
    pub rate_limit_remaining: Gauge,
    /// Rate-limit answers that paused every request.
    pub pauses: Counter,
    /// Requests that waited for such a pause.
    pub paused_requests: Counter,
    /// Times a request waited for the secondary-limit budget.
    pub budget_waits: Counter,
}

impl ClientMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "previewd_github_requests",
            "GitHub REST requests by method and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "previewd_github_retries",
            "GitHub REST request retries",
            metrics.retries.clone(),
        );
        registry.register(
            "previewd_github_rate_limit_remaining",
            "Remaining GitHub primary rate-limit budget (x-ratelimit-remaining)",
            metrics.rate_limit_remaining.clone(),
        );
        registry.register(
            "previewd_github_rate_limit_pauses",
            "GitHub rate-limit answers that paused every request of the client",
            metrics.pauses.clone(),
        );
        registry.register(
            "previewd_github_paused_requests",
            "GitHub requests that waited for a rate-limit pause",
            metrics.paused_requests.clone(),
        );
        registry.register(
            "previewd_github_budget_waits",
            "Times a GitHub request waited to stay under the secondary limits",
            metrics.budget_waits.clone(),
        );
        metrics
    }
}
