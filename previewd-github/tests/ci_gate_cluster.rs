//! Waiting for CI end to end: real signed `pull_request`, `check_suite`, `status` and
//! `check_run` payloads from `@octokit/webhooks-examples` through the real webhook
//! server into the local control plane (`testenv/up`), the real controller deciding, and
//! a local server speaking GitHub's REST API for the fallback poll and the reports.
//!
//! The examples' checks are on commit `ec26c3e…` of `Codertocat/Hello-World`; the pull
//! request and status examples name other commits, so they are derived with the head
//! commit set to it (nothing else changed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use fake_github::FakeGitHub;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use previewd_core::Phase;
use previewd_core::checks::{CheckState, RecordedChecks};
use previewd_core::source_control::SourceControl;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::metrics::ClientMetrics;
use previewd_github::reporter::GitHubReporter;
use previewd_github::store::KubeStore;
use previewd_kube::controller::Context;
use previewd_kube::crd::{ANNOTATION_CHECKS, PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const CHECK_SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

fn example(event: &str, pick: impl Fn(&Value) -> bool) -> Value {
    common::examples(event)
        .into_iter()
        .find(|e| pick(e))
        .unwrap_or_else(|| panic!("no matching {event} example"))
}

fn github_client(github: &FakeGitHub) -> Arc<dyn SourceControl> {
    let mut config = ClientConfig::new(github.base_url());
    config.request_timeout = Duration::from_secs(2);
    config.max_retries = 1;
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    config.mutation_spacing = Duration::from_millis(5);
    config.budget = previewd_github::client::budget::BudgetLimits::unlimited();
    Arc::new(
        GitHubClient::new(
            config,
            GitHubAuth::Token(SecretString::from(fake_github::TOKEN.to_string())),
            ClientMetrics::default(),
        )
        .unwrap(),
    )
}

async fn wait_env(
    envs: &Api<PreviewEnvironment>,
    what: &str,
    check: impl Fn(&PreviewEnvironment) -> bool,
) -> PreviewEnvironment {
    eventually(Duration::from_secs(60), what, || {
        let envs = envs.clone();
        let check = &check;
        async move {
            let list = envs.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| check(e))
        }
    })
    .await
}

fn phase(env: &PreviewEnvironment) -> Option<Phase> {
    env.status.as_ref()?.phase
}

fn ready(env: &PreviewEnvironment) -> (String, String) {
    env.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn recorded(env: &PreviewEnvironment) -> RecordedChecks {
    env.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CHECKS))
        .map(|a| serde_json::from_str(a).unwrap())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_commit_is_deployed_only_after_its_checks_passed() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "ci-gate").await;
    let mut settings = common::settings(json!({}));
    settings.metadata.namespace = Some(ns.clone());
    // A check run, the check suite of an App (by its slug) and a commit status context.
    settings.spec.required_checks = vec![
        "Octocoders-linter".into(),
        "octocoders-linter".into(),
        "default".into(),
    ];
    Api::<PreviewRepository>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &settings)
        .await
        .unwrap();
    let github = FakeGitHub::start().await;
    let scm = github_client(&github);
    let mut config = test_config(&ns);
    config.base_domain = "preview.example.com".into();
    let ctx = Context::new(client.clone(), config)
        .with_reporter(Arc::new(GitHubReporter::new(scm.clone(), None)))
        .with_checks_source(scm);
    let op = Operator::start_with(Arc::new(ctx)).await;
    let server =
        common::start_with_store(Arc::new(KubeStore::new(client.clone(), Some(ns.clone())))).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);

    // The pull request is opened at the commit the checks run on: it waits.
    let mut opened = common::example("opened");
    opened["pull_request"]["head"]["sha"] = json!(CHECK_SHA);
    let a = common::deliver_json(&server, "pull_request", &common::delivery_id(), &opened).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    let waiting = wait_env(&envs, "waiting for checks", |e| {
        ready(e).0 == "WaitingForChecks"
    })
    .await;
    assert_eq!(phase(&waiting), Some(Phase::Pending));
    assert_eq!(
        ready(&waiting).1,
        "waiting for checks: Octocoders-linter, octocoders-linter, default"
    );
    let name = waiting.metadata.name.clone().unwrap();
    let preview_ns = waiting.status.as_ref().unwrap().namespace.clone().unwrap();

    // The App's check suite is requested, then completes; the status context passes.
    let requested = example("check_suite", |e| e["action"] == "requested");
    let mut requested_here = requested.clone();
    requested_here["check_suite"]["head_sha"] = json!(CHECK_SHA);
    let a = common::deliver_json(
        &server,
        "check_suite",
        &common::delivery_id(),
        &requested_here,
    )
    .await;
    assert_eq!((a.status, a.outcome()), (202, "recorded"), "{:?}", a.body);
    let suite = example("check_suite", |e| {
        e["action"] == "completed" && e["check_suite"]["head_sha"] == CHECK_SHA
    });
    let a = common::deliver_json(&server, "check_suite", &common::delivery_id(), &suite).await;
    assert_eq!((a.status, a.outcome()), (202, "recorded"), "{:?}", a.body);
    let mut status = example("status", |e| e["state"] == "success");
    status["sha"] = json!(CHECK_SHA);
    let a = common::deliver_json(&server, "status", &common::delivery_id(), &status).await;
    assert_eq!((a.status, a.outcome()), (202, "recorded"), "{:?}", a.body);
    // The check run is created: still waiting, for it alone.
    let created = example("check_run", |e| e["action"] == "created");
    let a = common::deliver_json(&server, "check_run", &common::delivery_id(), &created).await;
    assert_eq!((a.status, a.outcome()), (202, "recorded"), "{:?}", a.body);
    let still = wait_env(&envs, "waiting for the check run", |e| {
        ready(e).1 == "waiting for checks: Octocoders-linter"
    })
    .await;
    assert_eq!(phase(&still), Some(Phase::Pending));
    let record = recorded(&still);
    assert_eq!(record.sha, CHECK_SHA);
    assert_eq!(
        record.checks["octocoders-linter"].state,
        CheckState::Success
    );
    assert_eq!(record.checks["default"].state, CheckState::Success);
    assert_eq!(record.checks["default"].at, "2019-05-15T15:20:55Z");
    assert_eq!(
        record.checks["Octocoders-linter"].state,
        CheckState::Pending
    );
    // Nothing of the application exists while waiting.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &preview_ns);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The same delivery again changes nothing.
    let a = common::deliver_json(&server, "check_run", &common::delivery_id(), &created).await;
    assert_eq!((a.status, a.outcome()), (202, "unchanged"), "{:?}", a.body);

    // The check run fails: Failed at once, on the environment and on the pull request.
    let failure = example("check_run", |e| e["check_run"]["conclusion"] == "failure");
    let a = common::deliver_json(&server, "check_run", &common::delivery_id(), &failure).await;
    assert_eq!((a.status, a.outcome()), (202, "recorded"), "{:?}", a.body);
    let failed = wait_env(&envs, "Failed", |e| phase(e) == Some(Phase::Failed)).await;
    assert_eq!(
        ready(&failed),
        (
            "ChecksFailed".into(),
            "build failed: Octocoders-linter".into()
        )
    );
    eventually(
        Duration::from_secs(30),
        "the failure on the pull request",
        || {
            let github = &github;
            async move {
                github.with(|s| {
                    s.commit_statuses.iter().find_map(|(sha, body)| {
                        (sha == CHECK_SHA
                            && body["context"] == "previewd"
                            && body["description"]
                                .as_str()
                                .is_some_and(|d| d.contains("build failed: Octocoders-linter")))
                        .then_some(())
                    })
                })
            }
        },
    )
    .await;
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Re-run on GitHub and passed, but its webhook never arrived. A retry asks GitHub
    // (the fallback poll) and deploys.
    github.with(|s| {
        s.check_runs.push(json!({
            "name": "Octocoders-linter", "head_sha": CHECK_SHA, "status": "completed",
            "conclusion": "success", "started_at": "2019-05-15T15:30:00Z",
            "completed_at": "2019-05-15T15:31:00Z"
        }));
    });
    envs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"previewd.io/retry": "1"}}})),
    )
    .await
    .unwrap();
    let deployed = wait_env(&envs, "Ready after the retry", |e| {
        phase(e) == Some(Phase::Ready)
    })
    .await;
    assert_eq!(
        deployed.status.as_ref().unwrap().retry.as_deref(),
        Some("1")
    );
    assert!(
        github.hits(
            &reqwest::Method::GET,
            &format!("/repos/Codertocat/Hello-World/commits/{CHECK_SHA}/check-runs")
        ) >= 1
    );
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
    eventually(Duration::from_secs(60), "environment gone", || {
        let envs = envs.clone();
        let name = name.clone();
        async move { matches!(envs.get_opt(&name).await, Ok(None)).then_some(()) }
    })
    .await;
    server.stop().await;
    op.stop().await;
    delete_namespace(&client, &ns).await;
}
