//! The SDK examples, run: a platform operator that adds its own child resource to every
//! environment, and a custom AI provider plugged into the advisors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/platform_operator.rs"]
#[allow(dead_code)]
mod platform_operator;

#[path = "../examples/custom_ai_provider.rs"]
#[allow(dead_code)]
mod custom_ai_provider;

use std::sync::atomic::Ordering;
use std::time::Duration;

use previewd::core::Phase;
use previewd::core::ai::DecisionSource;
use previewd::k8s_openapi::api::core::v1::ConfigMap;
use previewd::kube::ResourceExt;
use previewd::kube::api::{Api, PostParams};
use previewd::kube_adapter::crd::PreviewEnvironment;
use previewd::kube_adapter::testing::{
    SETUP_TIMEOUT, client, delete_namespace, eventually, install_crds, temp_namespace,
};
use previewd::operator::cli::RunArgs;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_custom_ai_provider_adds_to_the_deterministic_answer() {
    let model = custom_ai_provider::keyword_model();
    let decision = custom_ai_provider::advise(model.clone()).await.unwrap();
    // `api` from its path; `web` only from the model (the banner note is no service's
    // path); `payments` neither.
    assert_eq!(
        decision.value.into_iter().collect::<Vec<_>>(),
        vec!["api".to_string(), "web".to_string()]
    );
    assert!(
        matches!(&decision.source, DecisionSource::Model { provider, .. } if provider == "keyword-model:v1"),
        "{:?}",
        decision.source
    );
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_operator_adds_its_own_child_to_every_environment() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "ex-platform").await;
    let args = RunArgs {
        namespace: Some(ns.clone()),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: None,
        github_token: None,
        github_app_id: None,
        base_domain: "preview.test".into(),
        ingress_namespace: "ingress-system".into(),
        ..RunArgs::default()
    };
    let shutdown = CancellationToken::new();
    let operator = tokio::spawn(
        platform_operator::platform_operator(args)
            .client(client.clone())
            .shutdown_on(shutdown.clone())
            .run(),
    );
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let env: PreviewEnvironment = serde_json::from_value(serde_json::json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-11"},
        "spec": {
            "repository": "acme/shop", "prNumber": 11, "branch": format!("platform-{}", &ns[ns.len() - 8..]),
            "headSHA": "0123456789abcdef0123456789abcdef01234567",
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]
        }
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    let ready = eventually(Duration::from_secs(90), "environment Ready", || {
        let envs = envs.clone();
        async move {
            let e = envs.get("shop-pr-11").await.ok()?;
            (e.status.as_ref()?.phase? == Phase::Ready).then_some(e)
        }
    })
    .await;
    let env_ns = ready.status.as_ref().unwrap().namespace.clone().unwrap();
    let settings = Api::<ConfigMap>::namespaced(client.clone(), &env_ns)
        .get(platform_operator::SETTINGS_NAME)
        .await
        .expect("the platform's ConfigMap exists");
    let data = settings.data.clone().unwrap();
    assert_eq!(data["pr"], "11");
    assert_eq!(data["url"], "https://pr-11.preview.test/");
    assert_eq!(
        settings.labels().get("previewd.io/env").map(String::as_str),
        Some("shop-pr-11"),
        "the controller labels it as the environment's, so it is watched and cleaned up"
    );
    assert_eq!(
        settings
            .labels()
            .get("team.example.com/kind")
            .map(String::as_str),
        Some("settings")
    );
    // Deleted by hand, it comes back through the watch.
    Api::<ConfigMap>::namespaced(client.clone(), &env_ns)
        .delete(platform_operator::SETTINGS_NAME, &Default::default())
        .await
        .unwrap();
    eventually(SETUP_TIMEOUT, "platform ConfigMap recreated", || {
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &env_ns);
        async move {
            cms.get_opt(platform_operator::SETTINGS_NAME)
                .await
                .ok()
                .flatten()
                .map(|_| ())
        }
    })
    .await;
    envs.delete("shop-pr-11", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(90), "environment gone", || {
        let envs = envs.clone();
        async move {
            envs.get_opt("shop-pr-11")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    shutdown.cancel();
    operator.await.unwrap().unwrap();
    delete_namespace(&client, &ns).await;
}
