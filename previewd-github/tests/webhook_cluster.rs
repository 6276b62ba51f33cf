//! Every `pull_request` example of `@octokit/webhooks-examples`, signed over the exact
//! bytes sent, through the real webhook server into the local control plane
//! (`testenv/up`): the resulting `PreviewEnvironment` is read back from the API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use previewd_github::metrics::WebhookMetrics;
use previewd_github::signature::sign;
use previewd_github::store::KubeStore;
use previewd_github::webhook::{self, WebhookConfig, WebhookState};
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::delete_namespace;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn deliver(url: &str, event: &str, body: &[u8]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sign(common::SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octokit_pull_request_examples_reach_the_api_server() {
    let (client, ns) = common::cluster_with_settings("wh").await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);

    let examples = common::examples("pull_request");
    assert!(
        examples.len() >= 20,
        "the package ships the pull_request examples"
    );
    let mut applied = 0;
    let mut deleted = 0;
    for example in examples {
        // A fresh server and a clean slate per example: each one is judged on its own.
        for env in envs.list(&Default::default()).await.unwrap() {
            let _ = envs.delete(&env.name_any(), &DeleteParams::default()).await;
        }
        // Closes are remembered (tombstones in the settings' status); forget them too.
        Api::<PreviewRepository>::namespaced(client.clone(), &ns)
            .patch_status(
                "hello-world",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"closedPullRequests": null}})),
            )
            .await
            .unwrap();
        let store = Arc::new(KubeStore::new(client.clone(), Some(ns.clone())));
        let state = WebhookState::new(
            WebhookConfig::new(common::SECRET),
            store,
            WebhookMetrics::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        let server = tokio::spawn(webhook::serve(
            listener,
            webhook::router(state),
            token.clone(),
        ));

        let action = example["action"].as_str().unwrap().to_string();
        let body = serde_json::to_vec(&example).unwrap();
        let (status, answer) = deliver(&url, "pull_request", &body).await;
        assert!(
            (200..300).contains(&status),
            "{action}: HTTP {status} {answer}"
        );
        let pr = &example["pull_request"];
        let listed = envs.list(&Default::default()).await.unwrap().items;
        let draft = pr["draft"].as_bool().unwrap_or(false);
        match action.as_str() {
            "opened" | "reopened" | "synchronize" | "ready_for_review" if !draft => {
                assert_eq!(
                    listed.len(),
                    1,
                    "{action}: one environment, answer {answer}"
                );
                let env = &listed[0];
                assert_eq!(env.spec.repository, common::REPOSITORY);
                assert_eq!(env.spec.pr_number, pr["number"].as_i64().unwrap());
                assert_eq!(env.spec.head_sha, pr["head"]["sha"].as_str().unwrap());
                assert_eq!(env.spec.branch, pr["head"]["ref"].as_str().unwrap());
                assert_eq!(env.spec.services.len(), 1);
                assert!(
                    env.spec.services[0]
                        .image
                        .starts_with("ghcr.io/codertocat/web:pr-")
                );
                applied += 1;
            }
            "closed" | "converted_to_draft" => {
                assert!(listed.is_empty(), "{action}: no environment");
                deleted += 1;
            }
            _ => assert!(listed.len() <= 1, "{action}: at most one environment"),
        }
        token.cancel();
        server.await.unwrap().unwrap();
    }
    assert!(
        applied >= 3,
        "opened/reopened/synchronize examples applied ({applied})"
    );
    assert!(deleted >= 1, "closed examples deleted ({deleted})");
    delete_namespace(&client, &ns).await;
}
