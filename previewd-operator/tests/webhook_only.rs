//! `previewd run --webhook-only` (the split webhook Deployment): the webhook serves, the
//! controller never runs; and a required webhook without a secret refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use kube::api::{Api, PostParams};
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{client, delete_namespace, eventually, install_crds, temp_namespace};
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_only_replicas_never_reconcile() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "webhook-only").await;
    let (admin_port, webhook_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args([
            "run",
            "--webhook-only",
            "--webhook-secret",
            "s3cret",
            "--namespace",
            &ns,
        ])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "webhook ready", || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{webhook_port}/readyz"))
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);
    let env: PreviewEnvironment = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-1"},
        "spec": {"repository": "acme/shop", "prNumber": 1, "branch": "b",
                 "headSHA": "0123456789abcdef0123456789abcdef01234567",
                 "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080}]}
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    // Long enough for a controller to have added its finalizer several times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = envs.get("shop-pr-1").await.unwrap();
    assert!(
        seen.metadata.finalizers.unwrap_or_default().is_empty(),
        "a controller ran"
    );
    assert!(seen.status.is_none(), "a controller wrote status");
    let admin_ready = reqwest::get(format!("http://127.0.0.1:{admin_port}/readyz"))
        .await
        .unwrap();
    assert_eq!(
        admin_ready.status().as_u16(),
        503,
        "no controller caches on a webhook-only replica"
    );
    let _ = child.kill();
    let _ = child.wait();
    delete_namespace(&admin, &ns).await;
}

#[test]
fn a_required_webhook_without_a_secret_refuses_to_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args([
            "run",
            "--ingress-namespace",
            "ingress-system",
            "--webhook-required",
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env_remove("PREVIEWD_WEBHOOK_SECRET")
        .env("PREVIEWD_KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no webhook secret is set"), "{stderr}");
}
