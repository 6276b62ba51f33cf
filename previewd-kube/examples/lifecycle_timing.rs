//! Measures, on the cluster named by `KUBECONFIG` (e.g. `testenv/up`), the time from a
//! `PreviewEnvironment` with three services being created to `Ready`, and from its
//! deletion to its namespace being gone. Runs an in-process operator scoped to a fresh
//! namespace.
//!
//! ```sh
//! export $(testenv/up | tail -n1)
//! cargo run --release -p previewd-kube --example lifecycle_timing -- 10
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::controller::{self, Context, ControllerConfig, Readiness};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn poll<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let client = Client::try_default().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in previewd_kube::crdgen::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("previewd-timing").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        await_condition(crds.clone(), &name, conditions::is_crd_established()).await?;
    }
    let ns = format!("timing-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;

    let mut config = ControllerConfig {
        watch_namespace: Some(ns.clone()),
        ..ControllerConfig::default()
    };
    config.poll_interval = Duration::from_millis(250);
    let ctx = Arc::new(Context::new(client.clone(), config));
    let readiness = Readiness::default();
    let token = CancellationToken::new();
    let task = tokio::spawn(controller::run(ctx, readiness.clone(), token.clone()));
    poll(|| {
        let r = readiness.clone();
        async move { r.is_ready().then_some(()) }
    })
    .await;

    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let mut to_ready = Vec::new();
    let mut to_gone = Vec::new();
    for i in 0..runs {
        let name = format!("timing-pr-{}", i + 1);
        let env: PreviewEnvironment = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": name},
            "spec": {"repository": "acme/shop", "prNumber": i + 1, "branch": format!("timing-{i}"),
                "headSHA": "0123456789abcdef0123456789abcdef01234567",
                "services": [
                    {"name": "frontend", "image": "registry.k8s.io/pause:3.10", "ingressPath": "/"},
                    {"name": "api", "image": "registry.k8s.io/pause:3.10"},
                    {"name": "auth", "image": "registry.k8s.io/pause:3.10"}]}
        }))?;
        let started = Instant::now();
        envs.create(&PostParams::default(), &env).await?;
        let ns_name = poll(|| {
            let envs = envs.clone();
            let name = name.clone();
            async move {
                let s = envs.get(&name).await.ok()?.status?;
                (s.phase == Some(Phase::Ready)).then_some(s.namespace)?
            }
        })
        .await;
        to_ready.push(started.elapsed());
        let started = Instant::now();
        envs.delete(&name, &DeleteParams::default()).await?;
        poll(|| {
            let namespaces = namespaces.clone();
            let ns_name = ns_name.clone();
            async move { matches!(namespaces.get_opt(&ns_name).await, Ok(None)).then_some(()) }
        })
        .await;
        to_gone.push(started.elapsed());
        println!(
            "run {}: ready {:?}, namespace gone {:?}",
            i + 1,
            to_ready[i],
            to_gone[i]
        );
    }
    token.cancel();
    let _ = task.await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    println!(
        "{{\"runs\": {runs}, \"created_to_ready_median_ms\": {}, \"delete_to_namespace_gone_median_ms\": {}}}",
        median(to_ready).as_millis(),
        median(to_gone).as_millis()
    );
    Ok(())
}
