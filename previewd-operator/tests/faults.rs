//! Faults, black-box: the `previewd` binary on the local control plane, driven by signed
//! webhooks, with a GitHub-speaking server on loopback (see `previewd_scenario`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams};
use previewd_core::Phase;
use previewd_kube::crd::PreviewEnvironment;
use previewd_scenario::github::PullState;
use previewd_scenario::rig::{Rig, RigOptions};
use previewd_scenario::webhook::{sha, time};
use serde_json::json;

async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn options(prefix: &str) -> RigOptions {
    RigOptions {
        prefix: prefix.into(),
        services: 1,
        binary: Some(env!("CARGO_BIN_EXE_previewd").into()),
        resync_interval: "30s".into(),
        ..RigOptions::default()
    }
}

fn pull(number: u64, open: bool, at: u64) -> PullState {
    PullState {
        open,
        head_sha: sha(number),
        branch: format!("feature/{number}"),
        labels: vec![],
        updated_at: time(at),
    }
}

async fn send(rig: &Rig, url: &str, action: &str, number: u64, open: bool, at: u64) {
    let d = rig.event(action, number, &pull(number, open, at), None);
    let (answer, _) = rig.deliver(url, &d, Duration::from_secs(30)).await;
    assert!((200..300).contains(&answer.status), "{action}: {answer:?}");
}

async fn env(rig: &Rig, number: u64) -> Option<PreviewEnvironment> {
    let api: Api<PreviewEnvironment> = Api::namespaced(rig.client.clone(), &rig.namespace);
    api.get_opt(&Rig::env_name(number)).await.unwrap()
}

async fn ready(rig: &Rig, number: u64) -> PreviewEnvironment {
    eventually(Duration::from_secs(120), "environment Ready", || async {
        env(rig, number).await.filter(|e| {
            let s = e.status.clone().unwrap_or_default();
            s.phase == Some(Phase::Ready) && s.deployed_sha.as_deref() == Some(sha(number).as_str())
        })
    })
    .await
}

async fn namespace_gone(rig: &Rig, ns: &str) {
    let api: Api<Namespace> = Api::all(rig.client.clone());
    eventually(Duration::from_secs(120), "namespace gone", || async {
        api.get_opt(ns).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_down_during_provisioning_and_teardown_reports_catch_up() {
    let rig = Rig::new(&options("fault-github")).await.unwrap();
    let op = rig.start_operator().await.unwrap();
    rig.github.set_outage(true);
    send(&rig, &op.webhook_url, "opened", 1, true, 10).await;
    let e = ready(&rig, 1).await;
    let ns = e.status.unwrap().namespace.unwrap();
    eventually(
        Duration::from_secs(30),
        "the reporter tried GitHub",
        || async { (rig.github.with(|s| s.refused) > 0).then_some(()) },
    )
    .await;
    rig.github.set_outage(false);
    eventually(
        Duration::from_secs(120),
        "deployment reported success",
        || async {
            rig.github.with(|s| {
                let (d, last) = s.latest_deployment(1)?;
                (d.git_ref == sha(1) && last == Some("success")).then_some(())
            })
        },
    )
    .await;
    assert!(rig.github.with(|s| {
        s.commit_statuses
            .iter()
            .any(|(c, st)| *c == sha(1) && st == "success")
    }));

    rig.github.set_outage(true);
    let refused_before = rig.github.with(|s| s.refused);
    send(&rig, &op.webhook_url, "closed", 1, false, 20).await;
    namespace_gone(&rig, &ns).await;
    eventually(Duration::from_secs(60), "environment gone", || async {
        env(&rig, 1).await.is_none().then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the reporter tried GitHub again",
        || async { (rig.github.with(|s| s.refused) > refused_before).then_some(()) },
    )
    .await;
    rig.github.set_outage(false);
    eventually(
        Duration::from_secs(180),
        "deployment reported inactive",
        || async {
            rig.github
                .with(|s| (s.latest_deployment(1)?.1 == Some("inactive")).then_some(()))
        },
    )
    .await;
    rig.github.with(|s| {
        assert_eq!(
            s.bot_comments(1),
            1,
            "one sticky comment: {:?} {:?}",
            s.requests,
            s.comments
        );
        assert!(s.duplicate_deployments().is_empty());
    });
    op.stop().await.unwrap();
    rig.cleanup(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_never_pulls_fails_with_the_reason() {
    let mut o = options("fault-image");
    o.image = "image-pull-error.invalid/never:1".into();
    o.readiness_timeout = "30s".into();
    let rig = Rig::new(&o).await.unwrap();
    let op = rig.start_operator().await.unwrap();
    send(&rig, &op.webhook_url, "opened", 1, true, 10).await;
    let failed = eventually(Duration::from_secs(120), "environment Failed", || async {
        env(&rig, 1)
            .await
            .and_then(|e| e.status)
            .filter(|s| s.phase == Some(Phase::Failed))
    })
    .await;
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains("ImagePullBackOff") || message.contains("ErrImagePull"),
        "the reason names the image pull: {message}"
    );
    assert!(
        message.contains("image-pull-error.invalid/never:1"),
        "{message}"
    );
    op.stop().await.unwrap();
    rig.cleanup(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_stuck_terminating_is_reported_without_a_hot_loop() {
    const HOLD: &str = "scenario.previewd.io/hold";
    let rig = Rig::new(&options("fault-stuck")).await.unwrap();
    let op = rig.start_operator().await.unwrap();
    send(&rig, &op.webhook_url, "opened", 1, true, 10).await;
    let ns = ready(&rig, 1).await.status.unwrap().namespace.unwrap();
    let namespaces: Api<Namespace> = Api::all(rig.client.clone());
    // Something else holds the namespace: a finalizer nobody removes.
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": [HOLD]}})),
        )
        .await
        .unwrap();
    send(&rig, &op.webhook_url, "closed", 1, false, 20).await;
    let stuck = eventually(
        Duration::from_secs(60),
        "environment Terminating",
        || async {
            env(&rig, 1).await.filter(|e| {
                e.metadata.deletion_timestamp.is_some()
                    && e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Terminating)
            })
        },
    )
    .await;
    let conditions = stuck.status.unwrap().conditions;
    let reconciling = conditions
        .iter()
        .find(|c| c.type_ == "Reconciling")
        .expect("Reconciling condition");
    assert_eq!(reconciling.status, "True", "{conditions:?}");
    // The Event is published right after the status write: wait for it.
    let events: Api<Event> = Api::namespaced(rig.client.clone(), &rig.namespace);
    eventually(
        Duration::from_secs(30),
        "a Terminating event on the environment",
        || async {
            let listed = events.list(&ListParams::default()).await.ok()?;
            listed
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Terminating"))
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "namespace deletion requested",
        || async {
            namespaces
                .get_opt(&ns)
                .await
                .unwrap()
                .filter(|n| n.metadata.deletion_timestamp.is_some())
        },
    )
    .await;
    // The Terminating report reaches GitHub and is confirmed in the status (one write).
    eventually(
        Duration::from_secs(60),
        "the Terminating report confirmed",
        || async {
            env(&rig, 1).await.filter(|e| {
                e.status
                    .as_ref()
                    .is_some_and(|s| s.pending_report.is_none())
            })
        },
    )
    .await;
    // No hot loop: while the namespace stays, the operator only polls now and then.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rig.proxy.counts();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = rig.proxy.counts().since(&before);
    assert!(
        during.total() <= 40,
        "requests in 10 s while stuck: {:?}",
        during.by_kind
    );
    assert_eq!(
        during.writes(),
        0,
        "nothing rewritten while waiting: {:?}",
        during.by_kind
    );
    assert!(
        env(&rig, 1).await.is_some(),
        "the finalizer holds until the namespace is gone"
    );

    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    namespace_gone(&rig, &ns).await;
    eventually(Duration::from_secs(60), "environment gone", || async {
        env(&rig, 1).await.is_none().then_some(())
    })
    .await;
    op.stop().await.unwrap();
    rig.cleanup(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_write_by_another_field_manager_is_undone() {
    let rig = Rig::new(&options("fault-conflict")).await.unwrap();
    let op = rig.start_operator().await.unwrap();
    send(&rig, &op.webhook_url, "opened", 1, true, 10).await;
    let ns = ready(&rig, 1).await.status.unwrap().namespace.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(rig.client.clone(), &ns);
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap_or_default()
    };
    let live = deployments.get("svc-0").await.unwrap();
    let original = image(&live);
    // Another tool takes the image over with a forced server-side apply.
    let intrusion = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "svc-0"},
        "spec": {"template": {"spec": {"containers": [{"name": live.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].name, "image": "registry.k8s.io/pause:intruder"}]}}}
    });
    deployments
        .patch(
            "svc-0",
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(&intrusion),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "previewd restored its image",
        || async {
            let d = deployments.get("svc-0").await.ok()?;
            (image(&d) == original).then_some(())
        },
    )
    .await;
    op.stop().await.unwrap();
    rig.cleanup(false).await;
}
