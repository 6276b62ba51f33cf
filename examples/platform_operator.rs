//! A platform team's own operator built on the previewd SDK.
//!
//! Every preview environment also gets the team's `platform-settings` ConfigMap (the
//! preview's URL, PR and head commit, for the team's sidecars to read), added through a
//! deploy strategy that wraps the stock catalogue strategy. Everything else (webhook,
//! GitHub reporting, AI advice, expiry, cleanup) is the stock operator.
//!
//! ```sh
//! export $(testenv/up | tail -n1)
//! cargo run --example platform_operator -- --namespace previews --admin-addr 127.0.0.1:8080
//! ```
//!
//! The test suite runs this operator (`tests/examples.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use clap::Parser;
use previewd::k8s_openapi::api::core::v1::ConfigMap;
use previewd::kube::api::ObjectMeta;
use previewd::kube_adapter::plan::health::Health;
use previewd::kube_adapter::plan::object::{ChildKey, DesiredObject};
use previewd::kube_adapter::strategy::{
    CatalogueStrategy, DeployStrategy, NamespaceView, RenderInput, StrategyError, WatchedKind,
};
use previewd::operator::OperatorBuilder;
use previewd::operator::cli::RunArgs;

/// Name of the ConfigMap every environment gets.
pub const SETTINGS_NAME: &str = "platform-settings";

/// Wraps a deploy strategy and adds the `platform-settings` ConfigMap.
pub struct WithPlatformSettings<S> {
    inner: S,
}

impl<S: DeployStrategy> WithPlatformSettings<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        WithPlatformSettings { inner }
    }
}

impl<S: DeployStrategy> DeployStrategy for WithPlatformSettings<S> {
    fn name(&self) -> &str {
        "catalogue+platform-settings"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        let mut kinds = self.inner.watched_kinds();
        kinds.push(WatchedKind::metadata::<ConfigMap>());
        kinds
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        let mut objects = self.inner.desired(input)?;
        let env = input.env;
        let data = BTreeMap::from([
            (
                "url".to_string(),
                input
                    .host
                    .map(|h| format!("https://{h}/"))
                    .unwrap_or_default(),
            ),
            ("pr".to_string(), env.spec.pr_number.to_string()),
            ("sha".to_string(), env.spec.head_sha.clone()),
            ("repository".to_string(), env.spec.repository.clone()),
        ]);
        let settings = ConfigMap {
            metadata: ObjectMeta {
                name: Some(SETTINGS_NAME.into()),
                namespace: Some(input.namespace.into()),
                // The controller adds its own labels (environment, PR, repository).
                labels: Some(BTreeMap::from([(
                    "team.example.com/kind".into(),
                    "settings".into(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        objects.push(
            DesiredObject::from_typed(&settings).map_err(|e| StrategyError {
                reason: "RenderFailed".into(),
                message: e.to_string(),
            })?,
        );
        Ok(objects)
    }

    fn health(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        applying: &BTreeSet<ChildKey>,
    ) -> Health {
        let key = ChildKey::of::<ConfigMap>(SETTINGS_NAME);
        if applying.contains(&key) || !view.children.contains_key(&key) {
            return Health::Progressing("platform settings being written".into());
        }
        self.inner.health(input, view, applying)
    }
}

/// The strategy this operator deploys with.
pub fn platform_strategy() -> Arc<dyn DeployStrategy> {
    Arc::new(WithPlatformSettings::new(CatalogueStrategy))
}

/// The operator: the stock one with the platform strategy.
pub fn platform_operator(args: RunArgs) -> OperatorBuilder {
    OperatorBuilder::new(args).strategy(platform_strategy())
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = Flags::parse();
    previewd::operator::run::init_tracing(flags.run.log_format);
    platform_operator(flags.run).run().await
}
