//! Strategy selection against the local control plane (`testenv/up`): an environment is
//! deployed with the strategy its `PreviewRepository` names, the strategy renders from the
//! repository as the watch cache holds it, and a change to the repository wakes the
//! environments that reference it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use previewd_kube::controller::Context;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository, condition};
use previewd_kube::plan::health::Health;
use previewd_kube::plan::object::{ChildKey, DesiredObject};
use previewd_kube::strategy::{
    DeployStrategy, NamespaceView, RenderInput, StrategyError, WatchedKind,
};
use serde_json::json;
use support::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Deploys one ConfigMap holding the repository's `baseDomain`; ready once it exists.
struct Settings;

const SETTINGS: &str = "repository-settings";

impl DeployStrategy for Settings {
    fn name(&self) -> &str {
        "settings"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::metadata::<ConfigMap>()]
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        let repo = input.repository.ok_or_else(|| StrategyError {
            reason: "RepositoryMissing".into(),
            message: "the settings strategy needs the environment's repository".into(),
        })?;
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": SETTINGS, "namespace": input.namespace},
            "data": {"baseDomain": repo.spec.base_domain}
        }))
        .unwrap();
        Ok(vec![DesiredObject::from_typed(&cm).unwrap()])
    }

    fn health(
        &self,
        _input: &RenderInput<'_>,
        view: &NamespaceView,
        applying: &BTreeSet<ChildKey>,
    ) -> Health {
        let key = ChildKey::of::<ConfigMap>(SETTINGS);
        if applying.contains(&key) || !view.children.contains_key(&key) {
            Health::Progressing("settings being written".into())
        } else {
            Health::Available("settings written".into())
        }
    }
}

fn repository(name: &str, strategy: &str, domain: &str) -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": name},
        "spec": {
            "repository": format!("acme/{name}"),
            "catalogue": {"services": []},
            "baseDomain": domain,
            "strategy": strategy
        }
    }))
    .unwrap()
}

fn environment(name: &str, pr: i64, repository_ref: &str) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": {
            "repository": format!("acme/{repository_ref}"),
            "prNumber": pr,
            "branch": "strategies",
            "headSHA": SHA,
            "repositoryRef": repository_ref,
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]
        }
    }))
    .unwrap()
}

async fn settings_domain(client: &Client, env_ns: &str, env: &str) -> Option<String> {
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), env_ns);
    let ns = envs.get(env).await.ok()?.status?.namespace?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.get_opt(SETTINGS)
        .await
        .ok()??
        .data?
        .remove("baseDomain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_names_the_strategy_and_its_changes_wake_environments() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "strat").await;
    let ctx = Arc::new(
        Context::new(client.clone(), test_config(&ns)).register_strategy(Arc::new(Settings)),
    );
    let op = Operator::start_with(ctx.clone()).await;
    let repos: Api<PreviewRepository> = Api::namespaced(client.clone(), &ns);
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    repos
        .create(
            &PostParams::default(),
            &repository("shop", "settings", "one.preview.test"),
        )
        .await
        .unwrap();
    repos
        .create(
            &PostParams::default(),
            &repository("other", "argocd", "two.preview.test"),
        )
        .await
        .unwrap();
    envs.create(&PostParams::default(), &environment("shop-pr-1", 1, "shop"))
        .await
        .unwrap();

    // Deployed with the repository's strategy, from the repository's settings, and not
    // with the catalogue (no Deployment).
    eventually(Duration::from_secs(60), "settings ConfigMap", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            (settings_domain(&client, &ns, "shop-pr-1").await.as_deref()
                == Some("one.preview.test"))
            .then_some(())
        }
    })
    .await;
    let env = envs.get("shop-pr-1").await.unwrap();
    let child_ns = env.status.unwrap().namespace.unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &child_ns);
    assert!(
        deployments
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Ready, and measured: time to Ready, environments by phase.
    eventually(
        Duration::from_secs(30),
        "Ready counted in the metrics",
        || {
            let ctx = ctx.clone();
            async move {
                let mut registry = prometheus_client::registry::Registry::default();
                ctx.metrics.register(&mut registry);
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
                (text.contains("previewd_time_to_ready_seconds_count 1")
                    && text.contains("previewd_environments_by_phase{phase=\"Ready\"} 1"))
                .then_some(())
            }
        },
    )
    .await;

    // A change to the repository reaches the environment through the watch, long before
    // any resync.
    repos
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"baseDomain": "changed.preview.test"}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "settings follow the repository",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                (settings_domain(&client, &ns, "shop-pr-1").await.as_deref()
                    == Some("changed.preview.test"))
                .then_some(())
            }
        },
    )
    .await;

    // A repository naming a strategy this operator does not offer stalls its
    // environments with a clear reason.
    envs.create(
        &PostParams::default(),
        &environment("other-pr-2", 2, "other"),
    )
    .await
    .unwrap();
    let stalled = eventually(Duration::from_secs(30), "UnknownStrategy", || {
        let envs = envs.clone();
        async move {
            let env = envs.get("other-pr-2").await.ok()?;
            env.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == condition::STALLED && c.reason == "UnknownStrategy")
        }
    })
    .await;
    assert!(
        stalled.message.contains("\"argocd\""),
        "{}",
        stalled.message
    );
    assert!(stalled.message.contains("settings"), "{}", stalled.message);

    op.stop().await;
    delete_namespace(&client, &ns).await;
}
