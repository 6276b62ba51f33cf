//! Plugging your own model into previewd's advisors.
//!
//! `KeywordModel` stands in for an in-house model server: it implements the
//! `AiProvider` trait (one JSON answer per request, matching the request's schema). The
//! services advisor computes its deterministic answer from path globs first; the model
//! may only add catalogue services to it, and anything outside the allow-list, any
//! error or timeout leaves the deterministic answer standing.
//!
//! ```sh
//! cargo run --example custom_ai_provider            # ask the advisor about one change
//! cargo run --example custom_ai_provider -- --operator --namespace previews
//!                                                   # the operator, advised by this model
//! ```
//!
//! The test suite runs the first form (`tests/examples.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use previewd::ai::services::{ChangeInput, ServicesAdvisor};
use previewd::core::ai::{
    AiError, AiProvider, AiRequest, AiResponse, Capabilities, Decision, DecisionSource,
};
use previewd::core::catalogue::{CatalogueService, ServiceCatalogue};

/// Answers "which other services does this change affect" from keywords in the change.
pub struct KeywordModel {
    /// (keyword in a changed path or the title, service it implies).
    pub rules: Vec<(&'static str, &'static str)>,
    /// Requests answered.
    pub calls: AtomicUsize,
}

#[async_trait]
impl AiProvider for KeywordModel {
    fn id(&self) -> &str {
        "keyword-model:v1"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            json_schema: true,
            max_context_tokens: 8192,
            // Runs inside the cluster: fork PRs may be sent to it.
            external: false,
        }
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // The allow-list is in the schema: answer only with names from it.
        let allowed: BTreeSet<String> = request
            .schema
            .pointer("/properties/additional_services/items/enum")
            .and_then(|v| v.as_array())
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .ok_or_else(|| AiError::BadRequest("no allow-list in the schema".into()))?;
        let text: String = request
            .untrusted
            .iter()
            .map(|u| u.text.to_lowercase())
            .collect::<Vec<_>>()
            .join("\n");
        let picked: BTreeSet<&str> = self
            .rules
            .iter()
            .filter(|(keyword, service)| text.contains(keyword) && allowed.contains(*service))
            .map(|(_, service)| *service)
            .collect();
        Ok(AiResponse {
            value: serde_json::json!({
                "additional_services": picked,
                "reasons": format!("keywords matched: {picked:?}"),
            }),
            model: self.id().to_owned(),
            prompt_tokens: None,
            completion_tokens: None,
        })
    }
}

/// The model used by this example.
pub fn keyword_model() -> Arc<KeywordModel> {
    Arc::new(KeywordModel {
        rules: vec![("banner", "web"), ("checkout", "payments")],
        calls: AtomicUsize::new(0),
    })
}

/// A small catalogue: three services with their source paths.
pub fn catalogue() -> ServiceCatalogue {
    let service = |name: &str| CatalogueService {
        name: name.to_owned(),
        image: format!("ghcr.io/acme/{name}:pr-{{{{number}}}}"),
        paths: vec![format!("src/{name}/")],
        ..CatalogueService::default()
    };
    ServiceCatalogue {
        services: vec![service("api"), service("web"), service("payments")],
        shared_paths: Vec::new(),
    }
}

/// Asks the services advisor, with `model` plugged in, about a change to the API and
/// to a deployment note about the web banner.
pub async fn advise(model: Arc<KeywordModel>) -> anyhow::Result<Decision<BTreeSet<String>>> {
    let advisor = ServicesAdvisor::new(&catalogue(), Some(model as Arc<dyn AiProvider>))?;
    let change = ChangeInput {
        title: Some("Update the holiday banner copy".into()),
        ..ChangeInput::from_files(["src/api/handler.go", "deploy/notes/banner.txt"])
    };
    let decision = advisor.advise(&change).await;
    Ok(Decision {
        value: decision.value.services,
        source: decision.source,
    })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--operator") {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[arg(long)]
            operator: bool,
            #[command(flatten)]
            run: previewd::operator::cli::RunArgs,
        }
        let flags = Flags::parse();
        previewd::operator::run::init_tracing(flags.run.log_format);
        return previewd::operator::OperatorBuilder::new(flags.run)
            .ai_provider(keyword_model())
            .run()
            .await;
    }
    let decision = advise(keyword_model()).await?;
    let source = match &decision.source {
        DecisionSource::Model { provider, .. } => format!("model {provider}"),
        other => format!("{other:?}"),
    };
    println!("affected services: {:?} (from {source})", decision.value);
    Ok(())
}
