//! The `previewd` binary as an operator runs it: a clear refusal without the CRD,
//! health and readiness endpoints, and a clean exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An API server that knows no previewd CRD: every request answers 404 with a Status.
async fn api_server_without_crds() -> String {
    let app = Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#,
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn refuses_to_start_without_the_crd_with_a_clear_message() {
    let server = api_server_without_crds().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_previewd"))
            .args([
                "run",
                "--ingress-namespace",
                "ingress-system",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--log-format",
                "text",
            ])
            .env_remove("PREVIEWD_WEBHOOK_SECRET")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PreviewEnvironment CRD is not installed"),
        "{stderr}"
    );
    assert!(stderr.contains("previewd crd | kubectl apply"), "{stderr}");
}

#[tokio::test]
async fn serves_health_and_readiness_and_drains_on_sigterm() {
    let kubeconfig = std::env::var("KUBECONFIG")
        .expect("KUBECONFIG is not set: start the local control plane with `testenv/up` (scripts/test does)");
    let crd = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(crd.status.success());
    // Install the CRDs with the binary's own output through kube (no kubectl needed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.unwrap();
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(client);
    for crd in previewd_kube::crdgen::crds() {
        let name = kube::ResourceExt::name_any(&crd);
        crds.patch(
            &name,
            &kube::api::PatchParams::apply("previewd-tests").force(),
            &kube::api::Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args([
            "run",
            "--ingress-namespace",
            "ingress-system",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            "previewd-binary-test",
        ])
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .env_remove("PREVIEWD_WEBHOOK_SECRET")
        // A GitHub reporter and an AI stack, so that their counters are exported (nothing
        // listens at these addresses; no environment exists to report or advise on).
        .env("PREVIEWD_GITHUB_TOKEN", "test-token")
        .env("PREVIEWD_GITHUB_API_URL", "http://127.0.0.1:9/")
        .env("AI_PROVIDER", "ollama")
        .env("AI_BASE_URL", "http://127.0.0.1:9")
        .env("AI_MODEL", "test-model")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz answered 200 once caches synced");
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // One registry: the controller's, the GitHub client's and reporter's, and the AI
    // stack's counters.
    for name in [
        "previewd_reconciles_total",
        "previewd_environments_by_phase",
        "previewd_time_to_ready_seconds",
        "previewd_teardown_seconds",
        "previewd_cleanup_lag_seconds",
        "previewd_github_report_failures_total",
        "previewd_ai_requests_total",
        "previewd_ai_cache_hits_total",
        "previewd_ai_circuit_opened_total",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("previewd did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let logs = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("shutdown signal received"), "{logs}");
    assert!(logs.contains("previewd stopped"), "{logs}");
    // Structured logs: one JSON object per line.
    let first = logs
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON log line");
    let parsed: serde_json::Value = serde_json::from_str(first).unwrap();
    assert!(
        parsed.get("level").is_some() && parsed.get("fields").is_some(),
        "{first}"
    );
}
