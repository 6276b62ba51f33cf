//! The services advisor with a scripted model: when the model is asked, what it may add,
//! and the evidence that comes back.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use previewd_ai::services::{
    CONFIDENCE_MODEL_ADDED, CONFIDENCE_PATH_EVIDENCE, ChangeInput, Evidence, ServicesAdvisor,
};
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities, DecisionSource};
use previewd_core::{CatalogueService, ServiceCatalogue};
use serde_json::{Value, json};

struct Scripted {
    answer: Value,
    calls: Mutex<Vec<AiRequest>>,
}

#[async_trait]
impl AiProvider for Scripted {
    fn id(&self) -> &str {
        "scripted:services"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            json_schema: true,
            max_context_tokens: 16_000,
            external: false,
        }
    }
    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        self.calls.lock().expect("lock").push(request.clone());
        Ok(AiResponse {
            value: self.answer.clone(),
            model: "scripted".to_owned(),
            prompt_tokens: None,
            completion_tokens: None,
        })
    }
}

fn catalogue() -> ServiceCatalogue {
    let svc = |name: &str, paths: &[&str]| CatalogueService {
        name: name.to_owned(),
        image: format!("example/{name}"),
        paths: paths.iter().map(|s| s.to_string()).collect(),
        ..CatalogueService::default()
    };
    ServiceCatalogue {
        services: vec![
            svc("api", &["services/api/"]),
            svc("worker", &["services/worker/"]),
            svc("web", &["web/"]),
        ],
        shared_paths: vec!["Makefile".to_owned()],
    }
}

fn provider(answer: Value) -> Arc<Scripted> {
    Arc::new(Scripted {
        answer,
        calls: Mutex::new(Vec::new()),
    })
}

#[tokio::test]
async fn the_model_may_add_a_candidate_with_its_reason() {
    let p = provider(
        json!({"additional_services": ["worker"], "reasons": "the proto is consumed by the worker"}),
    );
    let advisor = ServicesAdvisor::new(&catalogue(), Some(p.clone() as Arc<dyn AiProvider>))
        .expect("compiles");
    let change = ChangeInput {
        files: vec![
            "services/api/handler.go".to_owned(),
            "proto/jobs.proto".to_owned(),
        ],
        diff: Some(
            "diff --git a/proto/jobs.proto b/proto/jobs.proto\n+message Job {}\n".to_owned(),
        ),
        ..ChangeInput::default()
    };
    let d = advisor.advise(&change).await;
    assert_eq!(
        d.source,
        DecisionSource::Model {
            provider: "scripted:services".to_owned(),
            cached: false
        }
    );
    assert_eq!(
        d.value
            .services
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["api", "worker"]
    );
    assert_eq!(
        d.value.evidence["api"],
        [Evidence::Path {
            path: "services/api/handler.go".to_owned()
        }]
    );
    assert!(
        matches!(&d.value.evidence["worker"][0], Evidence::Model { reason } if reason.contains("proto"))
    );
    assert_eq!(d.value.confidence, CONFIDENCE_MODEL_ADDED);

    let calls = p.calls.lock().expect("lock");
    let req = &calls[0];
    assert_eq!(req.feature, "services");
    assert_eq!(
        req.schema["properties"]["additional_services"]["items"]["enum"],
        json!(["web", "worker"])
    );
    let unclaimed = req
        .untrusted
        .iter()
        .find(|u| u.label == "changed files no service claims")
        .expect("listed");
    assert_eq!(unclaimed.text, "proto/jobs.proto");
    let diff = req
        .untrusted
        .iter()
        .find(|u| u.label.starts_with("diff"))
        .expect("diff sent");
    assert!(diff.text.contains("message Job"));
}

#[tokio::test]
async fn the_model_is_not_asked_when_there_is_nothing_to_decide() {
    let p = provider(json!({"additional_services": ["web"], "reasons": "x"}));
    let advisor = ServicesAdvisor::new(&catalogue(), Some(p.clone() as Arc<dyn AiProvider>))
        .expect("compiles");
    // every path is claimed
    let d = advisor
        .advise(&ChangeInput::from_files([
            "services/api/a.go",
            "web/index.ts",
        ]))
        .await;
    assert_eq!(d.source, DecisionSource::Deterministic);
    assert_eq!(d.value.confidence, CONFIDENCE_PATH_EVIDENCE);
    // a shared path selects everything
    let d = advisor
        .advise(&ChangeInput::from_files(["Makefile", "docs/x.md"]))
        .await;
    assert_eq!(d.source, DecisionSource::Deterministic);
    assert_eq!(d.value.services.len(), 3);
    // an incomplete list selects everything
    let d = advisor
        .advise(&ChangeInput {
            files: vec!["docs/x.md".to_owned()],
            file_list_incomplete: true,
            ..ChangeInput::default()
        })
        .await;
    assert_eq!(d.source, DecisionSource::Deterministic);
    assert!(d.value.all_services_reason.is_some());
    assert!(p.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn an_empty_addition_confirms_the_rules() {
    let p = provider(json!({"additional_services": [], "reasons": "docs only"}));
    let advisor =
        ServicesAdvisor::new(&catalogue(), Some(p as Arc<dyn AiProvider>)).expect("compiles");
    let change = ChangeInput::from_files(["docs/x.md"]);
    let d = advisor.advise(&change).await;
    assert!(matches!(d.source, DecisionSource::Model { .. }));
    assert!(d.value.services.is_empty());
    assert_eq!(d.value, advisor.deterministic(&change));
}
