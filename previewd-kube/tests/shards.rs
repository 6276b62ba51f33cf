//! Sharding by repository against the local control plane (`testenv/up`): two
//! controllers with disjoint environment selectors each reconcile only their own
//! environments, and an invalid selector is refused before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::{Api, PostParams};
use previewd_core::Phase;
use previewd_kube::controller::{self, ControllerConfig};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::json;
use support::*;

fn environment(name: &str, pr: i64, repo: &str) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name, "labels": {"previewd.io/repo": repo.replace('/', ".")}},
        "spec": {
            "repository": repo,
            "prNumber": pr,
            "branch": "shard",
            "headSHA": "0123456789abcdef0123456789abcdef01234567",
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]
        }
    }))
    .unwrap()
}

fn shard(ns: &str, selector: &str) -> ControllerConfig {
    ControllerConfig {
        environment_selector: Some(selector.to_string()),
        ..test_config(ns)
    }
}

async fn phase(api: &Api<PreviewEnvironment>, name: &str) -> Option<Phase> {
    api.get(name).await.ok()?.status?.phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_reconcile_only_the_environments_they_select() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "shard").await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    envs.create(
        &PostParams::default(),
        &environment("shop-pr-1", 1, "acme/shop"),
    )
    .await
    .unwrap();
    envs.create(
        &PostParams::default(),
        &environment("web-pr-2", 2, "acme/web"),
    )
    .await
    .unwrap();

    let shop = Operator::start(client.clone(), shard(&ns, "previewd.io/repo=acme.shop")).await;
    eventually(Duration::from_secs(60), "shop-pr-1 Ready", || {
        let envs = envs.clone();
        async move { (phase(&envs, "shop-pr-1").await == Some(Phase::Ready)).then_some(()) }
    })
    .await;
    // The other shard's environment is left alone: no status, no finalizer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let web = envs.get("web-pr-2").await.unwrap();
    assert!(web.status.is_none(), "{:?}", web.status);
    assert!(web.metadata.finalizers.unwrap_or_default().is_empty());

    let web_shard = Operator::start(client.clone(), shard(&ns, "previewd.io/repo=acme.web")).await;
    eventually(Duration::from_secs(60), "web-pr-2 Ready", || {
        let envs = envs.clone();
        async move { (phase(&envs, "web-pr-2").await == Some(Phase::Ready)).then_some(()) }
    })
    .await;
    shop.stop().await;
    web_shard.stop().await;

    // A selector the API server cannot parse is refused at start, with its text.
    let err = controller::preflight(&client, &shard(&ns, "previewd.io/repo in (("))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("environment selector"), "{err}");
    delete_namespace(&client, &ns).await;
}
