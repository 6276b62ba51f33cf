//! [`KubeStore`] against the local control plane (`testenv/up`): server-side apply with
//! resourceVersion preconditions, deletes with preconditions, settings lookup, and the
//! webhook's no-rollback rule on a real API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use previewd_github::store::{EnvironmentStore, KubeStore, Precondition, StoreError};
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::delete_namespace;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_store_applies_with_preconditions_and_the_webhook_never_rolls_back() {
    let (client, ns) = common::cluster_with_settings("ks").await;
    let store = Arc::new(KubeStore::new(client.clone(), Some(ns.clone())));
    store.ready().await.unwrap();

    // Settings are found case-insensitively; unknown repositories are not.
    let found = store
        .find_repositories("codertocat/hello-world")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].spec.repository, common::REPOSITORY);
    assert!(
        store
            .find_repositories("acme/other")
            .await
            .unwrap()
            .is_empty()
    );

    // Through the real webhook server.
    let server = common::start_with_store(store.clone()).await;
    let newer = {
        let mut e = common::example("synchronize");
        e["pull_request"]["head"]["sha"] = json!("2222222222222222222222222222222222222222");
        e["pull_request"]["updated_at"] = json!("2019-05-15T15:40:00Z");
        e
    };
    let a = common::deliver_json_to(&server, "pull_request", &common::delivery_id(), &newer).await;
    assert_eq!((a.status, a.outcome()), (202, "applied"), "{a:?}");
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let name = previewd_kube::render::environment_name(common::REPOSITORY, 2);
    let first = envs.get(&name).await.unwrap();
    let rv = first.resource_version().unwrap();
    assert_eq!(
        first.spec.head_sha,
        "2222222222222222222222222222222222222222"
    );
    let managers: Vec<String> = first
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"previewd".to_string()), "{managers:?}");

    // The same event again: no write (resourceVersion unchanged).
    let a = common::deliver_json_to(&server, "pull_request", &common::delivery_id(), &newer).await;
    assert_eq!((a.status, a.outcome()), (202, "unchanged"));
    // An older push: stale, no rollback.
    let older = common::example("synchronize");
    let a = common::deliver_json_to(&server, "pull_request", &common::delivery_id(), &older).await;
    assert_eq!((a.status, a.outcome()), (202, "stale"));
    let after = envs.get(&name).await.unwrap();
    assert_eq!(after.resource_version().unwrap(), rv);
    assert_eq!(
        after.spec.head_sha,
        "2222222222222222222222222222222222222222"
    );

    // A write with an outdated resourceVersion is refused by the API server.
    let mut stale = after.clone();
    stale.spec.branch = "other".into();
    // Another field manager changes the object meanwhile.
    let bumped = envs
        .patch(
            &name,
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&json!({
                "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
                "metadata": {"name": name, "annotations": {"test/bump": "1"}}
            })),
        )
        .await
        .unwrap();
    assert_ne!(bumped.resource_version().unwrap(), rv);
    let err = store
        .apply_environment(&stale, &Precondition::ResourceVersion(rv.clone()))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Conflict);
    let err = store.delete_environment(&ns, &name, &rv).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict);

    // Close: deleted through the webhook; deleting again reports it gone.
    let mut close = common::example("closed");
    close["pull_request"]["updated_at"] = json!("2019-05-15T15:50:00Z");
    let a = common::deliver_json_to(&server, "pull_request", &common::delivery_id(), &close).await;
    assert_eq!((a.status, a.outcome()), (202, "deleted"), "{a:?}");
    assert!(envs.get_opt(&name).await.unwrap().is_none());
    assert!(!store.delete_environment(&ns, &name, "1").await.unwrap());
    server.stop().await;

    delete_namespace(&client, &ns).await;
}

/// A burst of closes records every tombstone in the repository's status, with fewer
/// patches than closes (they share patches instead of conflicting with each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_tombstones_is_written_whole_in_shared_patches() {
    let (client, ns) = common::cluster_with_settings("ks-tomb").await;
    let store = Arc::new(KubeStore::new(client.clone(), Some(ns.clone())));
    let settings = store
        .find_repositories(common::REPOSITORY)
        .await
        .unwrap()
        .remove(0);
    // Every patch that reaches the object is one watch event.
    let repos: Api<previewd_kube::crd::PreviewRepository> = Api::namespaced(client.clone(), &ns);
    let rv = repos
        .get(&settings.name_any())
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let mut events = repos
        .watch(&kube::api::WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        let settings = settings.clone();
        tasks.push(tokio::spawn(async move {
            let tombstone = previewd_kube::crd::ClosedPullRequest {
                updated_at: "2026-11-29T12:00:00Z".into(),
                delivery: format!("delivery-{i}"),
            };
            store
                .record_tombstone(&settings, &format!("pr-{i}"), &tombstone, &[])
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let live = repos.get(&settings.name_any()).await.unwrap();
    let closed = &live.status.as_ref().unwrap().closed_pull_requests;
    for i in 0..60 {
        assert_eq!(
            closed.get(&format!("pr-{i}")).map(|c| c.delivery.as_str()),
            Some(format!("delivery-{i}").as_str())
        );
    }
    let last = live.resource_version().unwrap();
    let mut patches = 0;
    while let Some(event) = events.try_next().await.unwrap() {
        if let kube::api::WatchEvent::Modified(repo) = event {
            patches += 1;
            if repo.resource_version().as_deref() == Some(last.as_str()) {
                break;
            }
        }
    }
    assert!(
        (1..60).contains(&patches),
        "{patches} patches for 60 tombstones"
    );
    delete_namespace(&client, &ns).await;
}
