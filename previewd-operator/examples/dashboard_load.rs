//! What the web view costs at scale: the time to render the list page and the JSON API
//! (and one environment's page) from caches holding N environments, and the memory the
//! web view adds to the operator.
//!
//! ```sh
//! cargo run --release -p previewd-operator --example dashboard_load -- [ENVIRONMENTS] [REQUESTS]
//! ```
//!
//! The caches are filled as the controller's are (a reflector store per kind): N
//! environments over 20 repositories and 50 authors, each with two services (two
//! Deployments, two Pods). That is the controller's memory and is measured first. Then the
//! web view starts over those caches, with its own cache of Events (5 per environment,
//! which the controller does not keep) and its change poller, and answers REQUESTS
//! requests of each kind over HTTP on loopback, each with a bearer token (the access
//! review is answered in-process and cached, as the real one is after the first request).
//! The resident set size is read from `/proc/self/status` before and after.
//!
//! The last line is one JSON object with the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::runtime::reflector::{Store, store};
use kube::runtime::watcher;
use previewd_kube::controller::caches::Packed;
use previewd_kube::crd::PreviewEnvironment;
use previewd_operator::dashboard::auth::{AccessReview, AuthMode, ReviewError, User};
use previewd_operator::dashboard::model::Source;
use previewd_operator::dashboard::{DashboardState, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Every token is `bench`, who may list everything.
struct AllowAll;

#[async_trait]
impl AccessReview for AllowAll {
    async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        Ok((token == "bench").then(|| User {
            name: "bench".into(),
            ..User::default()
        }))
    }
    async fn may_list(&self, _user: &User, _ns: Option<&str>) -> Result<bool, ReviewError> {
        Ok(true)
    }
}

fn filled<K>(items: Vec<K>) -> Store<K>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for item in items {
        writer.apply_watcher_event(&watcher::Event::InitApply(item));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

fn environment(i: usize) -> PreviewEnvironment {
    let repo = format!("acme/service-{:02}", i % 20);
    let phases = [
        "Ready",
        "Ready",
        "Ready",
        "Testing",
        "Failed",
        "Provisioning",
    ];
    let phase = phases[i % phases.len()];
    let tests = if phase == "Failed" {
        json!({"state": "Failed", "total": 120, "passed": 118, "failed": 2, "skipped": 0,
               "failedTests": ["tests.test_cart.test_total", "tests.test_auth.test_login"]})
    } else {
        json!({"state": "Passed", "total": 120, "passed": 120, "failed": 0, "skipped": 0})
    };
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
        "metadata": {
            "name": format!("service-{:02}-pr-{i}", i % 20), "namespace": format!("team-{}", i % 10),
            "uid": format!("uid-{i}"), "resourceVersion": format!("{i}"),
            "creationTimestamp": "2026-12-07T08:00:00Z",
            "annotations": {
                "previewd.io/pr-title": format!("Change number {i}: make the checkout faster for <everyone>"),
                "previewd.io/pr-url": format!("https://github.com/{repo}/pull/{i}")
            }
        },
        "spec": {
            "repository": repo, "prNumber": i, "branch": format!("feature/{i}"),
            "headSHA": "0123456789abcdef0123456789abcdef01234567", "author": format!("dev{}", i % 50),
            "services": [{"name": "web", "image": "web:1", "port": 8080, "ingressPath": "/"},
                         {"name": "api", "image": "api:1", "port": 9090}]
        },
        "status": {
            "phase": phase, "namespace": format!("preview-{i}"),
            "url": format!("https://pr-{i}.preview.example.com/"), "host": format!("pr-{i}.preview.example.com"),
            "expiresAt": "2026-12-07T16:00:00Z",
            "tests": tests,
            "conditions": [
                {"type": "Ready", "status": if phase == "Ready" { "True" } else { "False" },
                 "reason": phase, "message": "", "lastTransitionTime": "2026-12-07T08:05:00Z"}
            ]
        }
    }))
    .unwrap()
}

fn labels(i: usize, service: &str) -> Value {
    json!({"previewd.io/env": format!("service-{:02}-pr-{i}", i % 20),
           "previewd.io/env-namespace": format!("team-{}", i % 10),
           "previewd.io/service": service})
}

fn deployment(i: usize, service: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": service, "namespace": format!("preview-{i}"), "labels": labels(i, service),
                     "resourceVersion": format!("{i}")},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": service}},
                 "template": {"metadata": {"labels": {"app": service}},
                              "spec": {"containers": [{"name": service, "image": format!("{service}:1")}]}}},
        "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    }))
    .unwrap()
}

fn pod(i: usize, service: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-abc12"), "namespace": format!("preview-{i}"),
                     "labels": labels(i, service), "resourceVersion": format!("{i}")},
        "spec": {"containers": [{"name": service, "image": format!("{service}:1")}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": service, "image": format!("{service}:1"),
            "imageID": "", "ready": true, "restartCount": i % 3, "started": true,
            "state": {"running": {"startedAt": "2026-12-07T08:01:00Z"}}}]}
    }))
    .unwrap()
}

fn event(i: usize, k: usize) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": format!("ev-{i}-{k}"), "namespace": format!("team-{}", i % 10),
                     "resourceVersion": format!("{i}{k}")},
        "eventTime": "2026-12-07T08:02:00.000000Z",
        "reason": "Applied", "note": format!("applied 7 objects (pass {k})"), "type": "Normal",
        "action": "Reconcile", "reportingController": "previewd.io/controller", "reportingInstance": "previewd",
        "regarding": {"apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
                      "name": format!("service-{:02}-pr-{i}", i % 20), "namespace": format!("team-{}", i % 10),
                      "uid": format!("uid-{i}")}
    }))
    .unwrap()
}

/// The resident set size in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn timed(http: &reqwest::Client, url: &str, n: usize) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let start = Instant::now();
        let answer = http.get(url).bearer_auth("bench").send().await.unwrap();
        assert!(answer.status().is_success(), "{url}: {}", answer.status());
        bytes = answer.bytes().await.unwrap().len();
        times.push(start.elapsed());
    }
    times.sort();
    (times, bytes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let requests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);

    // The controller's caches.
    let environments = filled((0..n).map(environment).collect());
    let deployments = filled(
        (0..n)
            .flat_map(|i| [deployment(i, "web"), deployment(i, "api")])
            .map(Packed::pack)
            .collect(),
    );
    let pods = filled(
        (0..n)
            .flat_map(|i| [pod(i, "web"), pod(i, "api")])
            .map(Packed::pack)
            .collect(),
    );
    let controller_rss = rss_kib();

    // The web view over them, with its own Events cache.
    let events = filled(
        (0..n)
            .flat_map(|i| (0..5).map(move |k| event(i, k)))
            .collect(),
    );
    let cell = Arc::new(OnceLock::new());
    let _ = cell.set(environments);
    let source = Source {
        environments: cell,
        deployments,
        pods,
        events,
        standby: Arc::new(OnceLock::new()),
        idle_sleep_after: Some(Duration::from_secs(2 * 3600)),
    };
    let shutdown = CancellationToken::new();
    let state = DashboardState::new(
        source,
        Arc::new(AllowAll),
        AuthMode::Kubernetes,
        Some("previewd".into()),
        Duration::from_secs(30),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(listener, state, shutdown.clone()));
    let http = reqwest::Client::new();

    let (list, list_bytes) = timed(&http, &base, requests).await;
    let (api, api_bytes) = timed(&http, &format!("{base}api/v1/environments"), requests).await;
    let (filtered, _) = timed(
        &http,
        &format!("{base}api/v1/environments?repo=acme/service-03&sort=cost"),
        requests,
    )
    .await;
    let (detail, _) = timed(
        &http,
        &format!("{base}environments/team-4/service-04-pr-4"),
        requests,
    )
    .await;
    let dashboard_rss = rss_kib();
    shutdown.cancel();
    let _ = server.await;

    let figures = json!({
        "environments": n,
        "requests_each": requests,
        "list_html_ms": {"median": percentile(&list, 0.5), "p95": percentile(&list, 0.95), "bytes": list_bytes},
        "list_json_ms": {"median": percentile(&api, 0.5), "p95": percentile(&api, 0.95), "bytes": api_bytes},
        "list_json_filtered_ms": {"median": percentile(&filtered, 0.5), "p95": percentile(&filtered, 0.95)},
        "detail_html_ms": {"median": percentile(&detail, 0.5), "p95": percentile(&detail, 0.95)},
        "controller_caches_rss_mib": controller_rss as f64 / 1024.0,
        "dashboard_extra_rss_mib": dashboard_rss.saturating_sub(controller_rss) as f64 / 1024.0,
    });
    println!("{figures}");
}
