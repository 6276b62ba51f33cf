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

#[tokio::test]
async fn batched_writes_read_once_and_skip_what_is_already_written() {
    let Some(client) = client().await else { return };
    let ns = namespace(&client, "hist-batch").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    // an interval longer than the test: only explicit flushes write
    let store = ConfigMapHistory::new(api.clone(), "h")
        .with_flush_interval(std::time::Duration::from_secs(3600));
    let mut records = Vec::new();
    for i in 0..40u64 {
        let rec = EnvironmentRecord::opened("acme/shop", i, "alice", t(i as i64), Tier::Small);
        store.upsert(&rec).await.expect("upsert");
        records.push(rec);
    }
    for i in 0..40u64 {
        let latest = store.latest("acme/shop", i).await.expect("latest");
        assert_eq!(latest.as_ref(), Some(&records[i as usize]));
    }
    assert_eq!(store.reads(), 1, "one read on first use, then memory");
    assert_eq!(store.writes(), 0, "nothing is written before a flush");
    assert_eq!(store.pending(), 40);
    assert!(api.get_opt("h").await.expect("get").is_none());

    store.flush().await.expect("flush");
    assert_eq!(store.writes(), 1, "forty changes, one write");
    assert_eq!(store.pending(), 0);

    // the same records again (a repeated report, a no-op resync): nothing to write
    for rec in &records {
        store.upsert(rec).await.expect("upsert");
    }
    assert_eq!(store.pending(), 0);
    store.flush().await.expect("flush");
    assert_eq!(store.writes(), 1, "unchanged content is not written");

    // a real change is written at the next flush, and a fresh store (an operator that
    // restarted) reads what was flushed
    store
        .record_push("acme/shop", 7, t(9000))
        .await
        .expect("push");
    store.flush().await.expect("flush");
    assert_eq!(store.writes(), 2);
    let fresh = ConfigMapHistory::new(api.clone(), "h");
    let rec = fresh
        .latest("acme/shop", 7)
        .await
        .expect("latest")
        .expect("exists");
    assert_eq!(rec.pushes, vec![t(9000)]);
    assert_eq!(
        fresh.by_repo("acme/shop", 100).await.expect("query").len(),
        40
    );

    // another writer's records survive a batched write that conflicts with them
    fresh
        .upsert(&EnvironmentRecord::opened(
            "acme/shop",
            500,
            "bob",
            t(500),
            Tier::Small,
        ))
        .await
        .expect("upsert");
    store
        .upsert(&EnvironmentRecord::opened(
            "acme/shop",
            600,
            "carol",
            t(600),
            Tier::Small,
        ))
        .await
        .expect("upsert");
    store.flush().await.expect("flush after a conflict");
    let cm = api.get("h").await.expect("configmap");
    let text = cm.data.expect("data")[CONFIGMAP_DATA_KEY].clone();
    let prs: Vec<u64> = decode_history(&text)
        .expect("decodes")
        .iter()
        .map(|r| r.pr)
        .collect();
    assert!(prs.contains(&500) && prs.contains(&600), "{prs:?}");
    assert_eq!(prs.len(), 42);
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn the_background_task_writes_within_its_interval() {
    let Some(client) = client().await else { return };
    let ns = namespace(&client, "hist-tick").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let store = ConfigMapHistory::new(api.clone(), "h")
        .with_bounds(3, 64 * 1024)
        .with_flush_interval(std::time::Duration::from_millis(200));
    for i in 0..5u64 {
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
    let mut text = None;
    for _ in 0..100 {
        if let Some(cm) = api.get_opt("h").await.expect("get") {
            text = cm.data.and_then(|mut d| d.remove(CONFIGMAP_DATA_KEY));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let prs: Vec<u64> = decode_history(&text.expect("written by the background task"))
        .expect("decodes")
        .iter()
        .map(|r| r.pr)
        .collect();
    assert_eq!(
        prs,
        vec![4, 3, 2],
        "bounded: the oldest records are dropped"
    );
    assert_eq!(store.by_repo("r/r", 10).await.expect("query").len(), 3);
    cleanup(&client, &ns).await;
}
