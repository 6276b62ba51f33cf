//! Shared helpers of the webhook tests: a real server on 127.0.0.1 over a
//! [`MemoryStore`], signed requests, and the octokit example payloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use previewd_github::metrics::WebhookMetrics;
use previewd_github::signature::sign;
use previewd_github::store::MemoryStore;
use previewd_github::webhook::{self, WebhookConfig, WebhookState};
use previewd_kube::crd::PreviewRepository;
use previewd_kube::testing;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-webhook-secret";
pub const REPOSITORY: &str = "Codertocat/Hello-World";
pub const NAMESPACE: &str = "previews";

/// Repository settings for the octokit examples' repository.
pub fn settings(gating: Value) -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "hello-world", "namespace": NAMESPACE},
        "spec": {
            "repository": REPOSITORY,
            "baseDomain": "preview.example.com",
            "catalogue": {"services": [
                {"name": "web", "image": "ghcr.io/codertocat/web:pr-{{number}}-{{shortSha}}"}
            ]},
            "gating": gating
        }
    }))
    .expect("valid PreviewRepository")
}

/// A throwaway namespace of the local control plane (`testenv/up`), with the CRDs
/// installed and [`settings`] (no gating) created in it; returns the client and the
/// namespace's name.
pub async fn cluster_with_settings(prefix: &str) -> (kube::Client, String) {
    let client = testing::client().await;
    testing::install_crds(&client).await;
    let ns = testing::temp_namespace(&client, prefix).await;
    let mut settings = settings(json!({}));
    settings.metadata.namespace = Some(ns.clone());
    kube::Api::<PreviewRepository>::namespaced(client.clone(), &ns)
        .create(&kube::api::PostParams::default(), &settings)
        .await
        .expect("create PreviewRepository");
    (client, ns)
}

/// A running webhook server.
pub struct Server {
    pub addr: SocketAddr,
    pub store: Arc<MemoryStore>,
    pub metrics: WebhookMetrics,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

pub async fn start(store: Arc<MemoryStore>, configure: impl FnOnce(&mut WebhookConfig)) -> Server {
    let mut config = WebhookConfig::new(SECRET);
    configure(&mut config);
    let metrics = WebhookMetrics::default();
    let state = WebhookState::new(config, store.clone(), metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));
    Server {
        addr,
        store,
        metrics,
        shutdown,
        handle,
    }
}

/// A server over any store (e.g. the Kubernetes one); `store` field holds an empty
/// in-memory store that this server does not use.
pub async fn start_with_store(store: Arc<dyn previewd_github::store::EnvironmentStore>) -> Server {
    let state = WebhookState::new(WebhookConfig::new(SECRET), store, WebhookMetrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));
    Server {
        addr,
        store: Arc::new(MemoryStore::new()),
        metrics: WebhookMetrics::default(),
        shutdown,
        handle,
    }
}

/// A server over `state` (any store, any responder); the `store` field holds an empty
/// in-memory store that this server does not use.
pub async fn start_with_state(state: WebhookState) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));
    Server {
        addr,
        store: Arc::new(MemoryStore::new()),
        metrics: WebhookMetrics::default(),
        shutdown,
        handle,
    }
}

/// The first `issue_comment` example (`created`, on an issue), made a comment on pull
/// request `pr` with `body` by a commenter with `association`, and comment id `id`.
pub fn pr_comment(pr: u64, id: u64, body: &str, association: &str) -> Value {
    let mut payload = examples("issue_comment")
        .into_iter()
        .find(|e| e["action"] == "created")
        .expect("a created issue_comment example");
    payload["issue"]["number"] = json!(pr);
    payload["issue"]["pull_request"] = json!({
        "url": format!("https://api.github.com/repos/{REPOSITORY}/pulls/{pr}"),
        "html_url": format!("https://github.com/{REPOSITORY}/pull/{pr}"),
    });
    payload["comment"]["id"] = json!(id);
    payload["comment"]["body"] = json!(body);
    payload["comment"]["author_association"] = json!(association);
    payload
}

/// [`pr_comment`] by `login` instead of the example's commenter.
pub fn pr_comment_by(pr: u64, id: u64, body: &str, login: &str, association: &str) -> Value {
    let mut payload = pr_comment(pr, id, body, association);
    payload["comment"]["user"]["login"] = json!(login);
    payload["sender"]["login"] = json!(login);
    payload
}

/// The first example of `event` whose `action` is `action`.
pub fn example_of(event: &str, action: &str) -> Value {
    examples(event)
        .into_iter()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no {event} example with action {action}"))
}

/// Same as [`deliver_json`]; named for servers over other stores.
pub async fn deliver_json_to(
    server: &Server,
    event: &str,
    delivery: &str,
    payload: &Value,
) -> Answer {
    deliver_json(server, event, delivery, payload).await
}

pub async fn start_default(gating: Value) -> Server {
    start(
        Arc::new(MemoryStore::with_repositories(vec![settings(gating)])),
        |_| {},
    )
    .await
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A response: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn outcome(&self) -> &str {
        self.body["outcome"].as_str().unwrap_or("")
    }
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
}

/// POSTs `body` signed with the test secret as a `event` delivery.
pub async fn deliver(server: &Server, event: &str, delivery: &str, body: &[u8]) -> Answer {
    let signature = sign(SECRET.as_bytes(), body);
    send(
        server,
        &[
            ("content-type", "application/json"),
            ("x-github-event", event),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &signature),
            ("user-agent", "GitHub-Hookshot/test"),
        ],
        body.to_vec(),
    )
    .await
}

pub async fn deliver_json(server: &Server, event: &str, delivery: &str, payload: &Value) -> Answer {
    deliver(
        server,
        event,
        delivery,
        &serde_json::to_vec(payload).unwrap(),
    )
    .await
}

pub async fn send(server: &Server, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut request = http().post(server.url()).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body }
}

fn fixtures_index() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../tests/fixtures/npm/node_modules/@octokit/webhooks-examples/api.github.com/index.json",
    )
}

/// Every example payload of `event` from `@octokit/webhooks-examples`.
pub fn examples(event: &str) -> Vec<Value> {
    let path = fixtures_index();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): the real webhook payloads are not installed; run `npm ci --prefix tests/fixtures/npm` from the repository root",
            path.display()
        )
    });
    let index: Vec<Value> = serde_json::from_str(&text).expect("index.json is JSON");
    let entry = index
        .into_iter()
        .find(|e| e["name"] == event)
        .unwrap_or_else(|| panic!("no {event} entry in index.json"));
    entry["examples"]
        .as_array()
        .cloned()
        .expect("examples array")
}

/// The first `pull_request` example with `action`.
pub fn example(action: &str) -> Value {
    examples("pull_request")
        .into_iter()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no pull_request example with action {action}"))
}

pub fn delivery_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
