//! Prometheus metrics of the webhook and the REST client.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `previewd_webhook_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `X-GitHub-Event` (or `unknown` when missing).
    pub event: String,
    /// What happened (`applied`, `deleted`, `ignored`, `rejected_signature`, ...).
    pub outcome: String,
}

/// Webhook metrics.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    /// Deliveries by event and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
}

impl WebhookMetrics {
    /// Metrics registered in `registry` (`previewd_webhook_deliveries_total`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "previewd_webhook_deliveries",
            "GitHub webhook deliveries by event and outcome",
            metrics.deliveries.clone(),
        );
        metrics
    }

    /// Counts one delivery.
    pub fn record(&self, event: &str, outcome: &str) {
        // Bound label cardinality: event names are attacker-controlled before the
        // signature is checked.
        let event =
            if event.len() <= 40 && event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                event
            } else {
                "other"
            };
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Deliveries counted for `event` and `outcome` so far.
    pub fn count(&self, event: &str, outcome: &str) -> u64 {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event.to_string(),
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
        metrics
    }
}
