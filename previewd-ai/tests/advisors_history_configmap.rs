//! The ConfigMap history store against the local control plane (`testenv/up`).
//!
//! Needs `KUBECONFIG` (export the line `testenv/up` prints); set `PREVIEWD_SKIP_KUBE=1`
//! to skip.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config};
use previewd_ai::history::{
    CONFIGMAP_DATA_KEY, ConfigMapHistory, EnvironmentRecord, HistoryStore, decode_history,
};
use previewd_core::Tier;

async fn client() -> Option<Client> {
    if std::env::var("PREVIEWD_SKIP_KUBE").is_ok_and(|v| v == "1") {
        eprintln!("PREVIEWD_SKIP_KUBE=1: skipping the ConfigMap history tests");
        return None;
    }
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: start the local control plane with `testenv/up` and export the \
         KUBECONFIG line it prints (or set PREVIEWD_SKIP_KUBE=1 to skip)"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::infer().await.expect("load KUBECONFIG");
    Some(Client::try_from(config).expect("client"))
}

async fn namespace(client: &Client, prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{prefix}-{}", nanos % 1_000_000_000);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

async fn cleanup(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_760_000_000 + s).unwrap()
}

#[tokio::test]
async fn concurrent_writers_lose_no_update() {
    let Some(client) = client().await else { return };
    let ns = namespace(&client, "hist-cm").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    // eight writers, each with its own store object, race on one ConfigMap (first one
    // creates it): optimistic concurrency must keep every record
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = Arc::new(ConfigMapHistory::new(api.clone(), "previewd-history"));
        tasks.push(tokio::spawn(async move {
            for i in 0..3u64 {
                let rec = EnvironmentRecord::opened(
                    "acme/shop",
                    w * 100 + i,
                    &format!("author{w}"),
                    t((w * 10 + i) as i64),
                    Tier::Small,
                );
                store.upsert(&rec).await.expect("upsert");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let store = ConfigMapHistory::new(api.clone(), "previewd-history");
    let all = store.by_repo("acme/shop", 1000).await.expect("query");
    assert_eq!(
        all.len(),
        24,
        "lost updates: {:?}",
        all.iter().map(|r| r.pr).collect::<Vec<_>>()
    );
    assert_eq!(
        store.by_author("author3", 10).await.expect("query").len(),
        3
    );

    // lifecycle updates through the trait's default methods
    store
        .record_push("acme/shop", 301, t(5000))
        .await
        .expect("push");
    let rec = store
        .latest("acme/shop", 301)
        .await
        .expect("latest")
        .expect("exists");
    assert_eq!(rec.pushes, vec![t(5000)]);

    // the stored document is the bounded JSON encoding
    let cm = api.get("previewd-history").await.expect("configmap");
    let text = cm.data.expect("data")[CONFIGMAP_DATA_KEY].clone();
    assert_eq!(decode_history(&text).expect("decodes").len(), 24);
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn the_document_stays_bounded() {
    let Some(client) = client().await else { return };
    let ns = namespace(&client, "hist-bound").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let store = ConfigMapHistory::new(api.clone(), "h").with_bounds(5, 64 * 1024);
    for i in 0..12 {
        store
            .upsert(&EnvironmentRecord::opened(
                "r/r",
                i,
                "a",
                t(i as i64),
                Tier::Small,
            ))
            .await
            .expect("upsert");
    }
    let kept: Vec<u64> = store
        .by_repo("r/r", 100)
        .await
        .expect("query")
        .iter()
        .map(|r| r.pr)
        .collect();
    assert_eq!(kept, vec![11, 10, 9, 8, 7], "the newest five remain");
    cleanup(&client, &ns).await;
}
