//! Error paths of the model-assisted advisors against `mockall` mocks of `AiProvider`: a
//! provider that times out, refuses, runs out of quota or answers off-schema leaves the
//! deterministic answer in place, with the reason; an external provider is never asked
//! about a fork's pull request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use previewd_ai::tests_select::{TestChange, TestSelectionConfig, TestSelector, TestStrategy};
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities, DecisionSource};
use previewd_core::testselect::TestMappingRule;

mockall::mock! {
    Provider {}
    #[async_trait]
    impl AiProvider for Provider {
        fn id(&self) -> &str;
        fn capabilities(&self) -> Capabilities;
        async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError>;
    }
}

fn inventory() -> Vec<String> {
    [
        "tests/cart/test_add.py",
        "tests/cart/test_total.py",
        "tests/cart/test_coupons.py",
        "tests/smoke/test_health.py",
        "tests/users/test_login.py",
    ]
    .map(String::from)
    .to_vec()
}

fn selector(provider: MockProvider) -> TestSelector {
    TestSelector::new(
        TestSelectionConfig {
            strategy: TestStrategy::AiSmart,
            rules: vec![TestMappingRule {
                source: "src/(?P<svc>[^/]+)/.*".into(),
                tests: vec!["tests/{svc}/**".into()],
            }],
            smoke: vec!["tests/smoke/".into()],
            budget: 2,
        },
        Some(Arc::new(provider)),
    )
    .unwrap()
}

fn change(is_fork: bool) -> TestChange {
    TestChange {
        files: vec!["src/cart/total.py".into()],
        diff: None,
        is_fork,
    }
}

fn provider(external: bool, answer: Result<serde_json::Value, AiError>) -> MockProvider {
    let mut p = MockProvider::new();
    p.expect_id().return_const("mock:model".to_string());
    p.expect_capabilities().return_const(Capabilities {
        json_schema: true,
        max_context_tokens: 8192,
        external,
    });
    p.expect_complete_json().times(1).returning(move |request| {
        // The model may only rank candidates: the schema enumerates them.
        assert!(
            request
                .schema
                .to_string()
                .contains("tests/cart/test_total.py")
        );
        answer.clone().map(|value| AiResponse {
            value,
            model: "m".into(),
            prompt_tokens: Some(100),
            completion_tokens: Some(10),
        })
    });
    p
}

#[tokio::test]
async fn model_failures_leave_the_changed_files_answer_with_the_reason() {
    let deterministic = {
        let mut p = MockProvider::new();
        p.expect_id().return_const("unused".to_string());
        selector(p).changed_files(&change(false), &inventory())
    };
    assert_eq!(deterministic.tests.len(), 4, "{:?}", deterministic.tests);
    for (answer, reason) in [
        (Err(AiError::Timeout(Duration::from_secs(30))), "timeout"),
        (
            Err(AiError::Refused("I cannot help with that".into())),
            "refused",
        ),
        (
            Err(AiError::QuotaExhausted("insufficient_quota".into())),
            "quota_exhausted",
        ),
        (
            Ok(serde_json::json!({"ranked_tests": ["tests/secret/test_admin.py"], "reasons": "x"})),
            "schema_violation",
        ),
        (
            Ok(serde_json::json!({"ranked_tests": "all of them"})),
            "schema_violation",
        ),
    ] {
        let decision = selector(provider(false, answer))
            .select(&change(false), &inventory())
            .await;
        match &decision.source {
            DecisionSource::Fallback { reason: r, .. } => assert_eq!(r, reason),
            other => panic!("{reason}: {other:?}"),
        }
        assert_eq!(decision.value, deterministic, "{reason}");
    }
}

#[tokio::test]
async fn a_valid_ranking_trims_to_the_budget_and_keeps_smoke_and_changed_tests() {
    let answer = serde_json::json!({"ranked_tests": ["tests/cart/test_total.py"], "reasons": "totals changed"});
    let decision = selector(provider(false, Ok(answer)))
        .select(&change(false), &inventory())
        .await;
    assert!(matches!(decision.source, DecisionSource::Model { .. }));
    assert!(decision.value.tests.contains("tests/smoke/test_health.py"));
    assert!(decision.value.tests.contains("tests/cart/test_total.py"));
    assert!(decision.value.dropped > 0);
}

#[tokio::test]
async fn an_external_provider_is_never_asked_about_a_fork() {
    let mut p = MockProvider::new();
    p.expect_id().return_const("openai:gpt".to_string());
    p.expect_capabilities().return_const(Capabilities {
        json_schema: true,
        max_context_tokens: 8192,
        external: true,
    });
    p.expect_complete_json().never();
    let decision = selector(p).select(&change(true), &inventory()).await;
    match decision.source {
        DecisionSource::Fallback { reason, .. } => assert_eq!(reason, "disabled"),
        other => panic!("{other:?}"),
    }
}
