//! Which checks count, on the local control plane (`testenv/up`): signed deliveries
//! derived from the real `@octokit/webhooks-examples` payloads through the real webhook
//! server into the Kubernetes store, the real controller deciding, and a local server
//! speaking GitHub's REST API that answers the checks APIs and records every request.
//!
//! A check run with the required name from another App (the pull request's own
//! workflow, the `github-actions` App) and a commit status of that name do not open a
//! gate bound to an App, neither through the webhook's record nor through the
//! controller's fallback poll; the bound App's check run does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_github::FakeGitHub;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use previewd_core::Phase;
use previewd_core::checks::{RecordedChecks, RequiredCheck};
use previewd_core::source_control::SourceControl;
use previewd_github::reporter::GitHubReporter;
use previewd_github::store::KubeStore;
use previewd_kube::controller::Context;
use previewd_kube::crd::{ANNOTATION_CHECKS, PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
};
use reqwest::Method;
use serde_json::{Value, json};

/// The examples' head commit (and the commit their checks run on).
const SHA_A: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
/// The App a pull request's own GitHub Actions workflow reports as.
const GITHUB_ACTIONS: u64 = 15368;
/// The App of the examples' check runs.
const LINTER: u64 = 29310;
const TIMEOUT: Duration = Duration::from_secs(90);

/// The webhook over the namespace's Kubernetes store.
async fn webhook(client: &kube::Client, ns: &str) -> Server {
    start_with_store(Arc::new(KubeStore::new(
        client.clone(),
        Some(ns.to_string()),
    )))
    .await
}

fn annotation(env: &PreviewEnvironment, key: &str) -> Option<String> {
    env.metadata.annotations.as_ref()?.get(key).cloned()
}

fn pick(event: &str, matches: impl Fn(&Value) -> bool) -> Value {
    examples(event)
        .into_iter()
        .find(|e| matches(e))
        .unwrap_or_else(|| panic!("no matching {event} example"))
}

fn ready(env: &PreviewEnvironment) -> (String, String) {
    env.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

async fn wait_env(
    envs: &Api<PreviewEnvironment>,
    what: &str,
    check: impl Fn(&PreviewEnvironment) -> bool,
) -> PreviewEnvironment {
    eventually(TIMEOUT, what, || {
        let envs = envs.clone();
        let check = &check;
        async move {
            let list = envs.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| check(e))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_run_from_another_app_does_not_open_a_bound_gate() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "trust-checks").await;
    let mut settings = common::settings(json!({}));
    settings.metadata.namespace = Some(ns.clone());
    // The examples' linter App must pass, and the commit status `default` (any source).
    settings.spec.required_checks = vec![
        RequiredCheck::bound("Octocoders-linter", LINTER),
        RequiredCheck::named("default"),
    ];
    Api::<PreviewRepository>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &settings)
        .await
        .unwrap();
    // The pull request's own workflow has published a passing check run of that name,
    // which the controller's fallback poll sees.
    let github = FakeGitHub::start().await;
    github.with(|s| {
        s.check_runs.push(json!({
            "name": "Octocoders-linter", "head_sha": SHA_A, "status": "completed",
            "conclusion": "success", "completed_at": "2019-05-15T15:21:00Z",
            "app": {"id": GITHUB_ACTIONS, "slug": "github-actions"}
        }));
    });
    let scm: Arc<dyn SourceControl> = Arc::new(github.client());
    let mut config = test_config(&ns);
    config.base_domain = "preview.example.com".into();
    let ctx = Context::new(client.clone(), config)
        .with_reporter(Arc::new(GitHubReporter::new(scm.clone(), None)))
        .with_checks_source(scm);
    let op = Operator::start_with(Arc::new(ctx)).await;
    let server = webhook(&client, &ns).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);

    let answer = deliver_json(&server, "pull_request", &delivery_id(), &example("opened")).await;
    assert_eq!(answer.outcome(), "applied", "{answer:?}");
    let waiting = wait_env(&envs, "waiting for both checks", |e| {
        ready(e).1 == "waiting for checks: Octocoders-linter, default"
    })
    .await;
    let name = waiting.metadata.name.clone().unwrap();
    let preview_ns = waiting.status.as_ref().unwrap().namespace.clone().unwrap();
    let runs = format!("/repos/{REPOSITORY}/commits/{SHA_A}/check-runs");
    eventually(TIMEOUT, "the fallback poll of the check runs", || {
        let (github, runs) = (&github, &runs);
        async move { (github.hits(&Method::GET, runs) >= 1).then_some(()) }
    })
    .await;

    // Attack: the workflow's check run (the real completed example, reported by the
    // github-actions App) and a commit status of the same name.
    let passed = pick("check_run", |e| e["check_run"]["conclusion"] == "success");
    let mut forged = passed.clone();
    forged["check_run"]["app"]["id"] = json!(GITHUB_ACTIONS);
    forged["check_run"]["app"]["slug"] = json!("github-actions");
    let answer = deliver_json(&server, "check_run", &delivery_id(), &forged).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (200, "ignored", "check_not_from_bound_app")
    );
    let status = pick("status", |e| e["state"] == "success");
    let mut named_status = status.clone();
    named_status["sha"] = json!(SHA_A);
    named_status["context"] = json!("Octocoders-linter");
    let answer = deliver_json(&server, "status", &delivery_id(), &named_status).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (200, "ignored", "check_not_from_bound_app")
    );
    // The unbound status passes: the environment is re-planned, the bound check still
    // waited for (the poll's record of the workflow's run included).
    let mut default_status = status;
    default_status["sha"] = json!(SHA_A);
    let answer = deliver_json(&server, "status", &delivery_id(), &default_status).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "recorded"),
        "{answer:?}"
    );
    let still = wait_env(&envs, "waiting for the bound check alone", |e| {
        ready(e).1 == "waiting for checks: Octocoders-linter"
    })
    .await;
    assert_eq!(still.status.as_ref().unwrap().phase, Some(Phase::Pending));
    let record: RecordedChecks =
        serde_json::from_str(&annotation(&still, ANNOTATION_CHECKS).unwrap()).unwrap();
    assert!(
        !record.checks.contains_key("Octocoders-linter"),
        "{record:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &preview_ns);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing of the application while the bound check waits"
    );

    // Control: the bound App's own passing run opens the gate.
    let answer = deliver_json(&server, "check_run", &delivery_id(), &passed).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "recorded"),
        "{answer:?}"
    );
    let deployed = wait_env(&envs, "Ready", |e| {
        e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;
    let record: RecordedChecks =
        serde_json::from_str(&annotation(&deployed, ANNOTATION_CHECKS).unwrap()).unwrap();
    assert_eq!(record.checks["Octocoders-linter"].app, Some(LINTER));
    assert_eq!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    envs.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(TIMEOUT, "environment gone", || {
        let envs = envs.clone();
        let name = name.clone();
        async move { matches!(envs.get_opt(&name).await, Ok(None)).then_some(()) }
    })
    .await;
    server.stop().await;
    op.stop().await;
    delete_namespace(&client, &ns).await;
}
