//! Counts the API requests the controller sends, by verb, on the cluster named by
//! `KUBECONFIG` (e.g. `testenv/up`): per environment brought to Ready (three services),
//! and per reconcile of a Ready environment.
//!
//! ```sh
//! export $(testenv/up | tail -n1)
//! cargo run -p previewd-kube --example api_requests -- 10
//! ```
//!
//! The operator runs in-process with a client whose requests are counted; the test's own
//! requests go through a separate client and are not counted. Watches are counted when
//! they are opened (a long-running watch is one request). The last line is one JSON object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::Context;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{
    Operator, config, delete_namespace, install_crds, temp_namespace, test_config,
};
use serde_json::json;

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn verb(req: &http::Request<kube::client::Body>) -> String {
    let query = req.uri().query().unwrap_or_default();
    match *req.method() {
        http::Method::GET if query.contains("watch=true") || query.contains("watch=1") => {
            "watch".into()
        }
        http::Method::GET => {
            // A collection path has an even number of segments after the group/version.
            let path = req.uri().path();
            let last = path.rsplit('/').next().unwrap_or_default();
            let list = ["namespaces", "deployments", "pods", "services", "ingresses"]
                .contains(&last)
                || last.ends_with("quotas")
                || last.ends_with("ranges")
                || last.ends_with("policies")
                || last.ends_with("environments")
                || last.ends_with("events");
            if list { "list".into() } else { "get".into() }
        }
        ref m => m.as_str().to_lowercase(),
    }
}

async fn counting_client(counts: Counts) -> Client {
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let v = verb(&req);
        *counts.lock().unwrap().entry(v).or_default() += 1;
        req
    });
    ClientBuilder::try_from(config().await)
        .unwrap()
        .with_layer(&layer)
        .build()
}

fn snapshot(counts: &Counts) -> BTreeMap<String, u64> {
    counts.lock().unwrap().clone()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn per(d: &BTreeMap<String, u64>, n: u64) -> serde_json::Value {
    let total: u64 = d.values().sum();
    let mut m = serde_json::Map::new();
    for (k, v) in d {
        m.insert(k.clone(), json!(*v as f64 / n as f64));
    }
    m.insert("total".into(), json!(total as f64 / n as f64));
    serde_json::Value::Object(m)
}

async fn settled(api: &Api<PreviewEnvironment>, names: &[String]) {
    let mut last = Vec::new();
    let mut same = 0;
    while same < 4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rvs = Vec::new();
        for n in names {
            rvs.push(api.get(n).await.unwrap().resource_version());
        }
        same = if rvs == last { same + 1 } else { 0 };
        last = rvs;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let admin = Client::try_default().await?;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "api-requests").await;
    let counts: Counts = Arc::default();
    let client = counting_client(counts.clone()).await;
    let mut cfg = test_config(&ns);
    cfg.resync_interval = Duration::from_secs(3600);
    let op = Operator::start_with(Arc::new(Context::new(client, cfg))).await;
    let api: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);

    // Brought to Ready.
    let before = snapshot(&counts);
    let mut names = Vec::new();
    for i in 1..=n {
        let name = format!("env-{i}");
        let env: PreviewEnvironment = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {"name": name},
            "spec": {
                "repository": "acme/shop", "prNumber": i, "branch": format!("b{i}"),
                "headSHA": "0123456789abcdef0123456789abcdef01234567",
                "services": [
                    {"name": "frontend", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"},
                    {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 9090},
                    {"name": "auth", "image": "registry.k8s.io/pause:3.10", "port": 7070}
                ]
            }
        }))?;
        api.create(&PostParams::default(), &env).await?;
        names.push(name);
    }
    for name in &names {
        loop {
            let e = api.get(name).await?;
            if e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    settled(&api, &names).await;
    let to_ready = delta(&snapshot(&counts), &before);

    // Reconciles of Ready environments, each triggered by an unrelated annotation change.
    let before = snapshot(&counts);
    let rounds = 3u64;
    for round in 0..rounds {
        for name in &names {
            let patch =
                json!({"metadata": {"annotations": {"example.com/poke": round.to_string()}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        settled(&api, &names).await;
    }
    let per_reconcile = delta(&snapshot(&counts), &before);
    for name in &names {
        let e = api.get(name).await?;
        assert_eq!(
            e.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Ready),
            "{}",
            e.name_any()
        );
    }
    for name in &names {
        let _ = api.delete(name, &Default::default()).await;
    }
    for name in &names {
        while api.get_opt(name).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    op.stop().await;
    delete_namespace(&admin, &ns).await;
    println!(
        "{}",
        json!({
            "environments": n,
            "per_environment_to_ready": per(&to_ready, n),
            "per_reconcile_of_ready": per(&per_reconcile, n * rounds),
        })
    );
    Ok(())
}
