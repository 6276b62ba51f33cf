//! The CLI subcommands against the local control plane, with the real controller running:
//! `list` and `describe` (tables and JSON), `extend` moves the expiry, `delete` tears the
//! environment down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use kube::api::{Api, PostParams};
use previewd_core::Phase;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
};
use serde_json::{Value, json};

fn previewd(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_describe_extend_delete() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "cli").await;
    let operator = Operator::start(admin.clone(), test_config(&ns)).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);
    let env: PreviewEnvironment = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-7"},
        "spec": {
            "repository": "acme/shop", "prNumber": 7, "branch": format!("cli-{ns}"),
            "headSHA": "0123456789abcdef0123456789abcdef01234567", "ttl": "4h",
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"}],
        }
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    let ready = eventually(Duration::from_secs(90), "shop-pr-7 Ready", || {
        let envs = envs.clone();
        async move {
            let env = envs.get_opt("shop-pr-7").await.ok().flatten()?;
            (env.status.as_ref()?.phase? == Phase::Ready).then_some(env)
        }
    })
    .await;
    let expires_before = ready.status.unwrap().expires_at.unwrap().0;

    let (ok, out, err) = previewd(&["list", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "shop-pr-7");
    assert_eq!(rows[0]["pr"], 7);
    assert_eq!(rows[0]["phase"], "Ready");
    assert_eq!(rows[0]["url"], "https://pr-7.preview.test/");
    assert!(
        rows[0]["expiresIn"].as_str().unwrap().starts_with("3h") || rows[0]["expiresIn"] == "4h 0m"
    );

    let (ok, out, err) = previewd(&["list", "-n", &ns]);
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{out}");
    assert!(lines.next().unwrap().starts_with("shop-pr-7"), "{out}");

    // By PR number, with conditions and events.
    let (ok, out, err) = previewd(&["describe", "7", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["name"], "shop-pr-7");
    let conditions = doc["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{doc}"
    );
    assert_eq!(doc["services"][0]["name"], "web");
    let (ok, out, _) = previewd(&["describe", "shop-pr-7", "-n", &ns]);
    assert!(ok);
    assert!(
        out.contains("Conditions:") && out.contains("Ready"),
        "{out}"
    );

    // Extend by 2 hours: spec.ttl moves, and the controller moves the expiry.
    let (ok, out, err) = previewd(&["extend", "shop-pr-7", "--by", "2h", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["ttl"], "360m", "{answer}");
    eventually(Duration::from_secs(30), "expiry moved by 2h", || {
        let envs = envs.clone();
        async move {
            let expires = envs.get("shop-pr-7").await.ok()?.status?.expires_at?.0;
            (expires.duration_since(expires_before).as_secs() == 7200).then_some(())
        }
    })
    .await;

    let (ok, _, err) = previewd(&["describe", "nope", "-n", &ns]);
    assert!(!ok);
    assert!(err.contains("no environment \"nope\""), "{err}");

    let (ok, _, err) = previewd(&["delete", "shop-pr-7", "-n", &ns]);
    assert!(ok, "{err}");
    eventually(Duration::from_secs(90), "shop-pr-7 gone", || {
        let envs = envs.clone();
        async move { matches!(envs.get_opt("shop-pr-7").await, Ok(None)).then_some(()) }
    })
    .await;
    operator.stop().await;
    delete_namespace(&admin, &ns).await;
}
