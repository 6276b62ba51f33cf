//! Attacks that involve Kubernetes, on the local control plane (`testenv/up`):
//! a tenant claiming another team's repository, and a late event after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use kube::api::{Api, PostParams};
use previewd_github::claims::{ClaimPolicy, REASON_CONFLICT, REASON_NOT_ALLOWED};
use previewd_github::metrics::WebhookMetrics;
use previewd_github::store::KubeStore;
use previewd_github::webhook::{self, WebhookConfig, WebhookState};
use previewd_kube::crd::{CONDITION_CLAIMED, PreviewEnvironment, PreviewRepository};
use previewd_kube::testing;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn claim(namespace: &str, repository: &str, image: &str) -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "settings", "namespace": namespace},
        "spec": {
            "repository": repository,
            "baseDomain": "preview.example.com",
            "catalogue": {"services": [{"name": "web", "image": image}]}
        }
    }))
    .unwrap()
}

/// The octokit `opened` example, moved to `repository`.
fn opened_for(repository: &str) -> Value {
    let mut e = common::example("opened");
    e["repository"]["full_name"] = json!(repository);
    e["pull_request"]["base"]["repo"]["full_name"] = json!(repository);
    e["pull_request"]["head"]["repo"]["full_name"] = json!(repository);
    e
}

async fn server(
    store: Arc<KubeStore>,
    policy: ClaimPolicy,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let mut config = WebhookConfig::new(common::SECRET);
    config.claim_policy = policy;
    let state = WebhookState::new(config, store, WebhookMetrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    let handle = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        token.clone(),
    ));
    (url, token, handle)
}

async fn post(url: &str, payload: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let response = common::http()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", common::delivery_id())
        .header(
            "x-hub-signature-256",
            previewd_github::signature::sign(common::SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn claimed_condition(repo: &PreviewRepository) -> (String, String, String) {
    let c = repo
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_CLAIMED))
        .expect("a Claimed condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tenant_cannot_hijack_a_repository() {
    let client = testing::client().await;
    testing::install_crds(&client).await;
    let owner = testing::temp_namespace(&client, "sec-owner").await;
    let tenant = testing::temp_namespace(&client, "sec-tenant").await;
    // A repository name only this test uses: the store reads settings cluster-wide.
    let repository = format!("sec-test/{owner}");
    let pp = PostParams::default();
    Api::<PreviewRepository>::namespaced(client.clone(), &owner)
        .create(
            &pp,
            &claim(&owner, &repository, "ghcr.io/owner/web:{{sha}}"),
        )
        .await
        .unwrap();
    // The attacker, with namespace access elsewhere, claims the same repository with
    // their own image.
    Api::<PreviewRepository>::namespaced(client.clone(), &tenant)
        .create(
            &pp,
            &claim(&tenant, &repository, "ghcr.io/attacker/miner:latest"),
        )
        .await
        .unwrap();

    let store = Arc::new(KubeStore::new(client.clone(), None));
    let (url, token, handle) = server(store.clone(), ClaimPolicy::open()).await;
    let (status, answer) = post(&url, &opened_for(&repository)).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("conflicting_claims")),
        "{answer}"
    );
    for ns in [&owner, &tenant] {
        let envs = Api::<PreviewEnvironment>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap();
        assert!(envs.items.is_empty(), "no environment in {ns}");
    }
    // Both claims carry a clear condition naming the other.
    let owner_repo = Api::<PreviewRepository>::namespaced(client.clone(), &owner)
        .get("settings")
        .await
        .unwrap();
    let tenant_repo = Api::<PreviewRepository>::namespaced(client.clone(), &tenant)
        .get("settings")
        .await
        .unwrap();
    let (s, r, m) = claimed_condition(&owner_repo);
    assert_eq!((s.as_str(), r.as_str()), ("False", REASON_CONFLICT));
    assert!(m.contains(&format!("{tenant}/settings")), "{m}");
    let (s, r, m) = claimed_condition(&tenant_repo);
    assert_eq!((s.as_str(), r.as_str()), ("False", REASON_CONFLICT));
    assert!(m.contains(&format!("{owner}/settings")), "{m}");
    token.cancel();
    handle.await.unwrap().unwrap();

    // The platform team binds the repository to the owner's namespace: the owner's
    // settings are used, the tenant's claim is marked NotAllowed.
    let policy = ClaimPolicy::parse(&format!("{owner}=sec-test/*")).unwrap();
    let (url, token, handle) = server(store, policy).await;
    let (status, answer) = post(&url, &opened_for(&repository)).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("applied")),
        "{answer}"
    );
    let envs = Api::<PreviewEnvironment>::namespaced(client.clone(), &owner)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(envs.items.len(), 1);
    assert!(
        envs.items[0].spec.services[0]
            .image
            .starts_with("ghcr.io/owner/web:")
    );
    assert!(
        Api::<PreviewEnvironment>::namespaced(client.clone(), &tenant)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let tenant_repo = Api::<PreviewRepository>::namespaced(client.clone(), &tenant)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(
        claimed_condition(&tenant_repo).1,
        REASON_NOT_ALLOWED.to_string()
    );
    let owner_repo = Api::<PreviewRepository>::namespaced(client.clone(), &owner)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(claimed_condition(&owner_repo).0, "True");
    token.cancel();
    handle.await.unwrap().unwrap();
    testing::delete_namespace(&client, &tenant).await;
    testing::delete_namespace(&client, &owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_survives_a_restart_and_a_late_open_stays_out() {
    let (client, ns) = common::cluster_with_settings("sec-tomb").await;
    let store = Arc::new(KubeStore::new(client.clone(), Some(ns.clone())));
    let (url, token, handle) = server(store.clone(), ClaimPolicy::open()).await;
    // The PR is closed before previewd ever made an environment for it.
    let mut close = common::example("closed");
    close["pull_request"]["updated_at"] = json!("2019-05-15T15:50:00Z");
    let (status, answer) = post(&url, &close).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("absent")),
        "{answer}"
    );
    // previewd restarts: every in-memory cache is gone.
    token.cancel();
    handle.await.unwrap().unwrap();
    let (url, token, handle) = server(store, ClaimPolicy::open()).await;
    // GitHub delivers the `opened` late.
    let mut opened = common::example("opened");
    opened["pull_request"]["updated_at"] = json!("2019-05-15T15:40:00Z");
    let (status, answer) = post(&url, &opened).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("stale")),
        "{answer}"
    );
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    assert!(
        envs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The tombstone is in the cluster, readable by whoever owns the settings.
    let settings = Api::<PreviewRepository>::namespaced(client.clone(), &ns)
        .get("hello-world")
        .await
        .unwrap();
    let closed = &settings.status.unwrap().closed_pull_requests;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(
        closed
            .values()
            .all(|t| t.updated_at == "2019-05-15T15:50:00Z")
    );
    // A real reopen later still works.
    let mut reopen = common::example("reopened");
    reopen["pull_request"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    let (status, answer) = post(&url, &reopen).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("applied")),
        "{answer}"
    );
    token.cancel();
    handle.await.unwrap().unwrap();
    testing::delete_namespace(&client, &ns).await;
}
