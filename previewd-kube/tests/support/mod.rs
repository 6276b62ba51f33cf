//! Shared harness of the black-box tests: a client for the local control plane
//! (`testenv/up`), CRD installation, throwaway namespaces, and an operator scoped to one
//! namespace.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use previewd_kube::controller::{self, Context, ControllerConfig, Readiness};
use tokio_util::sync::CancellationToken;

/// Client for the local control plane named by `KUBECONFIG`.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: start the local control plane with `testenv/up` and export the KUBECONFIG line it prints (scripts/test does both)"
    );
    let config = Config::infer().await.expect("load KUBECONFIG");
    Client::try_from(config).expect("client")
}

/// Counts the write requests (anything but GET, HEAD and watches) a client sends.
#[derive(Clone, Default)]
pub struct WriteCounter(pub Arc<AtomicUsize>);

impl WriteCounter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A client whose writes are counted.
pub async fn counting_client() -> (Client, WriteCounter) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::infer().await.expect("load KUBECONFIG");
    let counter = WriteCounter::default();
    let c2 = counter.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let m = req.method();
        if m != http::Method::GET && m != http::Method::HEAD {
            c2.0.fetch_add(1, Ordering::SeqCst);
            eprintln!("write: {} {}", req.method(), req.uri());
        }
        req
    });
    let client = ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&layer)
        .build();
    (client, counter)
}

/// Installs (server-side applies) the CRDs and waits until they are established.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in previewd_kube::crdgen::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("previewd-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
    }
}

/// Creates a namespace with a unique name.
pub async fn temp_namespace(client: &Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"previewd.io/test": "true"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Deletes a namespace (best effort).
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Controller settings for tests: scoped to one namespace, fast polls.
pub fn test_config(namespace: &str) -> ControllerConfig {
    ControllerConfig {
        watch_namespace: Some(namespace.to_string()),
        concurrency: 4,
        poll_interval: Duration::from_millis(500),
        readiness_timeout: Duration::from_secs(120),
        resync_interval: Duration::from_secs(60),
        cleanup_interval: Duration::from_secs(3600),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        base_domain: "preview.test".into(),
        ..ControllerConfig::default()
    }
}

/// A running operator; stops when dropped or on [`Operator::stop`].
pub struct Operator {
    pub ctx: Arc<Context>,
    pub readiness: Readiness,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    pub async fn start(client: Client, config: ControllerConfig) -> Operator {
        let ctx = Arc::new(Context::new(client, config));
        Self::start_with(ctx).await
    }

    pub async fn start_with(ctx: Arc<Context>) -> Operator {
        let readiness = Readiness::default();
        let token = CancellationToken::new();
        let task = tokio::spawn(controller::run(
            ctx.clone(),
            readiness.clone(),
            token.clone(),
        ));
        let r = readiness.clone();
        eventually(Duration::from_secs(30), "controller caches synced", || {
            let r = r.clone();
            async move { r.is_ready().then_some(()) }
        })
        .await;
        Operator {
            ctx,
            readiness,
            token,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
