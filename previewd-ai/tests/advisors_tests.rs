//! Test selection with the three strategies, and ai-smart's guarantees.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use previewd_ai::tests_select::{
    TestChange, TestMappingRule, TestSelectionConfig, TestSelector, TestStrategy,
};
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities, DecisionSource};
use serde_json::{Value, json};

struct Ranker(Result<Value, AiError>);

#[async_trait]
impl AiProvider for Ranker {
    fn id(&self) -> &str {
        "scripted:ranker"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            json_schema: true,
            max_context_tokens: 16_000,
            external: false,
        }
    }
    async fn complete_json(&self, _request: &AiRequest) -> Result<AiResponse, AiError> {
        self.0.clone().map(|value| AiResponse {
            value,
            model: "scripted".to_owned(),
            prompt_tokens: None,
            completion_tokens: None,
        })
    }
}

fn inventory() -> Vec<String> {
    let mut v: Vec<String> = (0..6).map(|i| format!("tests/cart/t{i}_test.go")).collect();
    v.push("tests/smoke/health_test.go".to_owned());
    v.push("tests/web/ui_test.go".to_owned());
    v.push("tests/checkout/pay_test.go".to_owned());
    v
}

fn config(strategy: TestStrategy, budget: usize) -> TestSelectionConfig {
    TestSelectionConfig {
        strategy,
        rules: vec![TestMappingRule {
            source: r"src/(?P<svc>[^/]+)/.*\.go".to_owned(),
            tests: vec!["tests/{svc}/**".to_owned()],
        }],
        smoke: vec!["tests/smoke/".to_owned()],
        budget,
    }
}

fn change() -> TestChange {
    TestChange {
        files: vec![
            "src/cart/store.go".to_owned(),
            "tests/web/ui_test.go".to_owned(),
        ],
        ..TestChange::default()
    }
}

#[tokio::test]
async fn all_and_changed_files() {
    let all = TestSelector::new(config(TestStrategy::All, 0), None).expect("config");
    let d = all.select(&change(), &inventory()).await;
    assert_eq!(d.value.tests.len(), inventory().len());
    let cf = TestSelector::new(config(TestStrategy::ChangedFiles, 0), None).expect("config");
    let d = cf.select(&change(), &inventory()).await;
    assert_eq!(d.source, DecisionSource::Deterministic);
    // 6 cart tests by rule + smoke + the changed web test; checkout is not selected
    assert_eq!(d.value.tests.len(), 8);
    assert!(!d.value.tests.contains("tests/checkout/pay_test.go"));
}

#[tokio::test]
async fn ai_smart_trims_to_budget_and_keeps_smoke_and_changed_tests() {
    let provider = Arc::new(Ranker(Ok(json!({
        "ranked_tests": ["tests/cart/t4_test.go", "tests/cart/t1_test.go"],
        "reasons": "store.go is exercised by t4 and t1"
    }))));
    let sel = TestSelector::new(
        config(TestStrategy::AiSmart, 5),
        Some(provider as Arc<dyn AiProvider>),
    )
    .expect("config");
    let d = sel.select(&change(), &inventory()).await;
    assert!(
        matches!(d.source, DecisionSource::Model { .. }),
        "{:?}",
        d.source
    );
    assert_eq!(d.value.strategy, TestStrategy::AiSmart);
    let tests: Vec<&str> = d.value.tests.iter().map(String::as_str).collect();
    // 2 always kept + 3 slots: the two ranked ones, then the first unranked candidate
    assert_eq!(
        tests,
        [
            "tests/cart/t0_test.go",
            "tests/cart/t1_test.go",
            "tests/cart/t4_test.go",
            "tests/smoke/health_test.go",
            "tests/web/ui_test.go"
        ]
    );
    assert_eq!(d.value.dropped, 3);
    assert!(
        d.value.reasons["tests/cart/t4_test.go"]
            .iter()
            .any(|r| r == "model")
    );
}

#[tokio::test]
async fn ai_smart_failures_fall_back_to_changed_files() {
    let cf = TestSelector::new(config(TestStrategy::ChangedFiles, 0), None)
        .expect("config")
        .changed_files(&change(), &inventory());
    for (answer, reason) in [
        (
            Ok(json!({"ranked_tests": ["tests/checkout/pay_test.go"], "reasons": ""})),
            "schema_violation",
        ),
        (
            Ok(json!({"ranked_tests": ["../../etc/passwd"], "reasons": ""})),
            "schema_violation",
        ),
        (
            Ok(json!({"drop": ["tests/smoke/health_test.go"]})),
            "schema_violation",
        ),
        (
            Err(AiError::Timeout(std::time::Duration::from_secs(30))),
            "timeout",
        ),
    ] {
        let provider = Arc::new(Ranker(answer));
        let sel = TestSelector::new(
            config(TestStrategy::AiSmart, 3),
            Some(provider as Arc<dyn AiProvider>),
        )
        .expect("config");
        let d = sel.select(&change(), &inventory()).await;
        match &d.source {
            DecisionSource::Fallback { reason: r, .. } => assert_eq!(r, reason),
            other => panic!("expected a fallback, got {other:?}"),
        }
        assert_eq!(d.value, cf);
    }
    // no provider at all
    let sel = TestSelector::new(config(TestStrategy::AiSmart, 3), None).expect("config");
    let d = sel.select(&change(), &inventory()).await;
    assert!(matches!(d.source, DecisionSource::Fallback { .. }));
    assert_eq!(d.value, cf);
}
