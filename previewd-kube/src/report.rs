//! Reporting environment changes to the outside world (GitHub commit statuses,
//! deployments, the sticky PR comment). The interface lives in `previewd-core`
//! ([`EnvironmentReporter`] takes an [`EnvironmentView`](crate::advice::EnvironmentView));
//! this module re-exports it and confirms deliveries in the environment's status.
//!
//! When the reporter confirms deliveries, each report the controller makes is recorded
//! in `status.pendingReport` (in the same status write as the change it reports) and
//! sent again on every reconcile until [`StatusAcknowledger`] removes it. A leader killed
//! between its status write and the send therefore loses nothing: its successor finds
//! the pending report and sends it.

use std::time::Duration;

use async_trait::async_trait;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
pub use previewd_core::environment::{
    EnvironmentReporter, EnvironmentView, NoopReporter, ReportAcknowledger,
};
use serde_json::json;

use crate::crd::PreviewEnvironment;

/// Attempts of one confirmation (0.2 s doubling: about 25 s in all). A confirmation
/// that still fails leaves the report pending until the next report of the environment
/// replaces it or a restarted operator sends it again.
const ATTEMPTS: u32 = 8;

/// Confirms deliveries by removing `status.pendingReport`, only while it still holds
/// the delivered report's token (a JSON patch `test` makes the removal conditional, in
/// one request, so a newer report is never confirmed by an older delivery).
#[derive(Clone)]
pub struct StatusAcknowledger {
    client: Client,
}

impl StatusAcknowledger {
    /// Confirms through `client`.
    pub fn new(client: Client) -> Self {
        StatusAcknowledger { client }
    }
}

impl std::fmt::Debug for StatusAcknowledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusAcknowledger").finish_non_exhaustive()
    }
}

/// The JSON patch that removes `status.pendingReport` only while it equals `token`.
pub fn confirmation_patch(token: &str) -> serde_json::Value {
    json!([
        {"op": "test", "path": "/status/pendingReport", "value": token},
        {"op": "remove", "path": "/status/pendingReport"},
    ])
}

#[async_trait]
impl ReportAcknowledger for StatusAcknowledger {
    async fn delivered(&self, env: &EnvironmentView, token: &str) {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), &env.namespace);
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let patch: Patch<()> = match serde_json::from_value(confirmation_patch(token)) {
                Ok(patch) => Patch::Json(patch),
                Err(err) => {
                    tracing::error!(error = %err, "cannot build the report confirmation");
                    return;
                }
            };
            match api
                .patch_status(&env.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => return,
                // Gone, or the token was replaced by a newer report (the `test` failed):
                // nothing left to confirm.
                Err(kube::Error::Api(s)) if s.code < 500 && s.code != 429 => {
                    tracing::debug!(env = %env.key(), code = s.code, "report confirmation not needed");
                    return;
                }
                Err(err) => {
                    tracing::warn!(env = %env.key(), attempt, error = %err, "cannot confirm a delivered report");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
}
