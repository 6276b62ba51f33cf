//! The real controller, scoped to a throwaway namespace of the local control plane
//! (`testenv/up`), reporting through a real [`GitHubReporter`] and [`GitHubClient`] to a
//! local server that speaks GitHub's API: phase changes become the `previewd` commit
//! status, a transient deployment with its statuses and one sticky comment, and a GitHub
//! outage never holds back or fails an environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use fake_github::{BOT, FakeGitHub, Scripted};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_core::source_control::{SourceControl, deployment_environment};
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::comment::COMMENT_MARKER;
use previewd_github::metrics::ClientMetrics;
use previewd_github::reporter::GitHubReporter;
use previewd_kube::controller::Context;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
    unique_suffix,
};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
const GITHUB_TIMEOUT: Duration = Duration::from_secs(60);

// ---- the operator --------------------------------------------------------------------------

/// The controller scoped to `namespace`, reporting through `reporter`.
async fn operator(client: Client, namespace: &str, reporter: &GitHubReporter) -> Operator {
    Operator::start_with(Arc::new(
        Context::new(client, test_config(namespace)).with_reporter(Arc::new(reporter.clone())),
    ))
    .await
}

// ---- environments -------------------------------------------------------------------------

/// One test's environment: its PR number, a branch unique to the run (the environment's
/// namespace is named after both) and its head commit.
struct Pr {
    number: u64,
    branch: String,
    sha: &'static str,
}

impl Pr {
    fn new(number: u64, sha: &'static str) -> Pr {
        Pr {
            number,
            branch: format!("reporting-{}", unique_suffix()),
            sha,
        }
    }

    fn name(&self) -> String {
        format!("shop-pr-{}", self.number)
    }

    fn manifest(&self) -> PreviewEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {"name": self.name()},
            "spec": {
                "repository": "acme/shop",
                "prNumber": self.number,
                "branch": self.branch,
                "headSHA": self.sha,
                "services": [
                    {"name": "frontend", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"},
                    {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 9090},
                    {"name": "auth", "image": "registry.k8s.io/pause:3.10", "port": 7070}
                ]
            }
        }))
        .unwrap()
    }
}

async fn create(envs: &Api<PreviewEnvironment>, pr: &Pr) {
    envs.create(&PostParams::default(), &pr.manifest())
        .await
        .expect("create PreviewEnvironment");
}

async fn wait_phase(
    envs: &Api<PreviewEnvironment>,
    name: &str,
    phase: Phase,
) -> PreviewEnvironment {
    eventually(PHASE_TIMEOUT, &format!("{name} in phase {phase}"), || {
        let envs = envs.clone();
        async move {
            let env = envs.get_opt(name).await.ok().flatten()?;
            (env.status.as_ref()?.phase? == phase).then_some(env)
        }
    })
    .await
}

fn condition_status(env: &PreviewEnvironment, type_: &str) -> String {
    env.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.status.clone())
        .unwrap_or_else(|| panic!("condition {type_} missing"))
}

/// Asserts the environment is Ready by its own status, whatever GitHub did.
fn assert_ready(env: &PreviewEnvironment, pr: &Pr) -> String {
    let status = env.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Ready));
    assert_eq!(status.deployed_sha.as_deref(), Some(pr.sha));
    for (type_, want) in [
        ("Ready", "True"),
        ("NamespaceReady", "True"),
        ("ServicesDeployed", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
    ] {
        assert_eq!(condition_status(env, type_), want, "condition {type_}");
    }
    let url = status.url.expect("environment URL");
    assert_eq!(url, format!("https://pr-{}.preview.test/", pr.number));
    url
}

/// Deletes the environment and waits until its finalizer ran and its namespace is gone.
async fn delete_and_wait(
    client: &Client,
    envs: &Api<PreviewEnvironment>,
    env: &PreviewEnvironment,
) {
    let name = env.name_any();
    let namespace = env
        .status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .expect("status.namespace");
    envs.delete(&name, &DeleteParams::default())
        .await
        .expect("delete PreviewEnvironment");
    eventually(PHASE_TIMEOUT, &format!("{name} gone"), || {
        let envs = envs.clone();
        let name = name.clone();
        async move { matches!(envs.get_opt(&name).await, Ok(None)).then_some(()) }
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(
        namespaces.get_opt(&namespace).await.unwrap().is_none(),
        "namespace {namespace} is gone once the finalizer was released"
    );
}

// ---- GitHub ----------------------------------------------------------------------------------

fn reporter(
    github: &FakeGitHub,
    request_timeout: Duration,
    retry_base: Duration,
) -> GitHubReporter {
    let mut config = ClientConfig::new(github.base_url());
    config.request_timeout = request_timeout;
    config.max_retries = 1;
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    config.secondary_rate_limit_wait = Duration::from_millis(20);
    config.rate_limit_reset_margin = Duration::ZERO;
    config.mutation_spacing = Duration::from_millis(5);
    config.budget = previewd_github::client::budget::BudgetLimits::unlimited();
    let client = GitHubClient::new(
        config,
        GitHubAuth::Token(SecretString::from(fake_github::TOKEN.to_string())),
        ClientMetrics::default(),
    )
    .unwrap();
    let scm: Arc<dyn SourceControl> = Arc::new(client);
    GitHubReporter::new(scm, None).with_retry_base(retry_base)
}

fn statuses_path(sha: &str) -> String {
    format!("/repos/acme/shop/statuses/{sha}")
}

/// `previewd` commit statuses GitHub accepted for `sha`: (state, target_url).
fn commit_statuses(github: &FakeGitHub, sha: &str) -> Vec<(String, Option<String>)> {
    github.with(|s| {
        s.commit_statuses
            .iter()
            .filter(|(at, body)| at == sha && body["context"] == "previewd")
            .map(|(_, body)| {
                (
                    body["state"].as_str().unwrap_or_default().to_string(),
                    body["target_url"].as_str().map(str::to_string),
                )
            })
            .collect()
    })
}

/// Requests sent to set the commit status of `sha` to `state`, accepted or not.
fn status_attempts(github: &FakeGitHub, sha: &str, state: &str) -> usize {
    let path = statuses_path(sha);
    github.with(|s| {
        s.log
            .iter()
            .filter(|l| l.method == Method::POST && l.path == path && l.body["state"] == state)
            .count()
    })
}

/// The deployments of the PR's environment and the statuses of the only one.
fn deployment(github: &FakeGitHub, number: u64) -> Option<(Value, Vec<Value>)> {
    github.with(|s| {
        let environment = deployment_environment(number);
        let found: Vec<&Value> = s
            .deployments
            .iter()
            .filter(|d| {
                d["environment"] == environment.as_str() && d["payload"]["pull_request"] == number
            })
            .collect();
        assert!(found.len() <= 1, "one deployment per commit: {found:?}");
        let deployment = (*found.first()?).clone();
        let statuses = s
            .deployment_statuses
            .iter()
            .filter(|(id, _)| deployment["id"] == *id)
            .map(|(_, body)| body.clone())
            .collect();
        Some((deployment, statuses))
    })
}

/// Waits until the last `previewd` commit status of `sha` is success, and returns them all.
async fn wait_status_success(
    github: &FakeGitHub,
    sha: &str,
    what: &str,
) -> Vec<(String, Option<String>)> {
    eventually(GITHUB_TIMEOUT, what, || {
        let states = commit_statuses(github, sha);
        let done = states.last().is_some_and(|(state, _)| state == "success");
        async move { done.then_some(states) }
    })
    .await
}

/// Waits until the last status of the PR's deployment is success, and returns the
/// deployment and its statuses.
async fn wait_deployment_success(github: &FakeGitHub, number: u64) -> (Value, Vec<Value>) {
    eventually(GITHUB_TIMEOUT, "deployment status success", || {
        let found = deployment(github, number)
            .filter(|(_, statuses)| statuses.last().is_some_and(|s| s["state"] == "success"));
        async move { found }
    })
    .await
}

fn last_deployment_state(github: &FakeGitHub, number: u64) -> Option<Value> {
    deployment(github, number).and_then(|(_, statuses)| statuses.last().cloned())
}

fn comments(github: &FakeGitHub) -> Vec<fake_github::Comment> {
    github.with(|s| s.comments.clone())
}

fn assert_deployment_request(deployment: &Value, pr: &Pr) {
    assert_eq!(deployment["environment"], "preview");
    assert_eq!(deployment["payload"], json!({"pull_request": pr.number}));
    assert_eq!(deployment["ref"], pr.sha);
    assert_eq!(deployment["transient_environment"], true);
    assert_eq!(deployment["production_environment"], false);
    assert_eq!(deployment["required_contexts"], json!([]));
    assert_eq!(deployment["auto_merge"], false);
}

/// Waits until the sticky comment shows `phase`, and returns it (the only one).
async fn wait_comment(github: &FakeGitHub, phase: &str) -> fake_github::Comment {
    let badge = format!("**{phase}**");
    let found = eventually(GITHUB_TIMEOUT, &format!("comment showing {phase}"), || {
        let found = comments(github)
            .into_iter()
            .find(|c| c.body.contains(&badge));
        async move { found }
    })
    .await;
    let all = comments(github);
    assert_eq!(all.len(), 1, "exactly one sticky comment: {all:?}");
    assert_eq!(found.user, BOT);
    assert!(found.body.starts_with(COMMENT_MARKER), "{}", found.body);
    found
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_changes_reach_github_and_deletion_deactivates_the_deployment() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "rep-ok").await;
    let github = FakeGitHub::start().await;
    let reporter = reporter(&github, Duration::from_secs(5), Duration::from_millis(200));
    let operator = operator(client.clone(), &ns, &reporter).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let pr = Pr::new(7101, "1111111111111111111111111111111111111111");

    create(&envs, &pr).await;
    let ready = wait_phase(&envs, &pr.name(), Phase::Ready).await;
    let url = assert_ready(&ready, &pr);

    // Commit status: success with the URL, after at most pending ones (a state replaced
    // by a newer one before it was sent is never sent, so the pending one may be skipped
    // when the environment is Ready first).
    let states = wait_status_success(&github, pr.sha, "commit status success").await;
    assert_eq!(
        states.last().unwrap().0,
        "success",
        "the last status is success: {states:?}"
    );
    assert!(
        states[..states.len() - 1]
            .iter()
            .all(|(state, _)| state == "pending"),
        "only pending statuses before it: {states:?}"
    );
    assert_eq!(states.last().unwrap().1.as_deref(), Some(url.as_str()));
    assert!(
        states
            .iter()
            .all(|(state, _)| state == "pending" || state == "success"),
        "{states:?}"
    );

    // A deployment in the shared `preview` environment: transient, never production, no required contexts,
    // and its latest status is success with the environment's URL.
    let (created, statuses) = wait_deployment_success(&github, pr.number).await;
    assert_deployment_request(&created, &pr);
    let success = statuses.last().unwrap();
    assert_eq!(success["environment_url"], url.as_str());
    assert!(
        statuses[..statuses.len() - 1]
            .iter()
            .all(|s| s["state"] == "queued" || s["state"] == "in_progress"),
        "before success only queued/in_progress: {statuses:?}"
    );

    // One sticky comment with the URL and the phase.
    let comment = wait_comment(&github, "Ready").await;
    assert!(comment.body.contains(&url), "{}", comment.body);
    assert!(comment.body.contains(&pr.sha[..7]), "{}", comment.body);

    // Deletion: the namespace goes, the deployment becomes inactive, the comment says so.
    delete_and_wait(&client, &envs, &ready).await;
    wait_deleted_status(&github, pr.number).await;
    let comment = wait_comment(&github, "Terminated").await;
    assert!(!comment.body.contains(&url), "{}", comment.body);
    reporter.idle().await;
    assert_eq!(
        commit_statuses(&github, pr.sha),
        states,
        "deletion sets no commit status"
    );
    assert_eq!(comments(&github).len(), 1);
    // Nothing on GitHub outlives the pull request: the one shared environment holds
    // every PR's deployments, so no `preview/pr-<n>` environment is left behind.
    github.with(|s| {
        assert_eq!(
            s.environments.iter().collect::<Vec<_>>(),
            ["preview"],
            "no per-PR environment"
        );
        assert!(
            !s.environments
                .contains(&format!("preview/pr-{}", pr.number))
        );
    });
    assert_eq!(reporter.failures(), 0);

    operator.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_answering_502_neither_holds_back_nor_fails_the_environment() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "rep-502").await;
    let github = FakeGitHub::start().await;
    github.outage(Some(Scripted::status(502, "Bad Gateway")));
    // Three attempts, 3 s and 6 s apart: room to end the outage between two of them.
    let reporter = reporter(&github, Duration::from_secs(5), Duration::from_secs(3));
    let operator = operator(client.clone(), &ns, &reporter).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let pr = Pr::new(7102, "2222222222222222222222222222222222222222");

    create(&envs, &pr).await;
    let ready = wait_phase(&envs, &pr.name(), Phase::Ready).await;
    let url = assert_ready(&ready, &pr);
    assert!(
        commit_statuses(&github, pr.sha).is_empty(),
        "GitHub accepted nothing while the environment became ready"
    );

    // The controller did report Ready: its first attempt met the outage.
    eventually(GITHUB_TIMEOUT, "an attempt to report success", || {
        let tried = status_attempts(&github, pr.sha, "success") > 0;
        async move { tried.then_some(()) }
    })
    .await;
    assert!(commit_statuses(&github, pr.sha).is_empty());
    github.outage(None);

    // A later attempt of the same report gets through.
    let states =
        wait_status_success(&github, pr.sha, "commit status success after the outage").await;
    assert_eq!(states.last().unwrap().1.as_deref(), Some(url.as_str()));
    assert!(
        status_attempts(&github, pr.sha, "success") >= 2,
        "the success status was retried"
    );
    let (created, statuses) = wait_deployment_success(&github, pr.number).await;
    assert_deployment_request(&created, &pr);
    assert_eq!(statuses.last().unwrap()["environment_url"], url.as_str());
    let comment = wait_comment(&github, "Ready").await;
    assert!(comment.body.contains(&url), "{}", comment.body);

    // The environment's own status never changed because of GitHub.
    let now = envs.get(&pr.name()).await.unwrap();
    assert_ready(&now, &pr);

    delete_and_wait(&client, &envs, &now).await;
    operator.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_delayed_by_a_stall_are_delivered_once_github_answers() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "rep-stall").await;
    let github = FakeGitHub::start().await;
    // GitHub accepts connections and never answers.
    github.outage(Some(Scripted::stall(Duration::from_secs(300))));
    let reporter = reporter(&github, Duration::from_secs(1), Duration::from_millis(200));
    let operator = operator(client.clone(), &ns, &reporter).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let pr = Pr::new(7103, "3333333333333333333333333333333333333333");

    create(&envs, &pr).await;
    let ready = wait_phase(&envs, &pr.name(), Phase::Ready).await;
    assert_ready(&ready, &pr);

    // The Ready report is tried and times out, again and again: failed attempts are
    // counted, GitHub has nothing, the environment is unaffected.
    eventually(GITHUB_TIMEOUT, "an attempt to report success", || {
        let tried = status_attempts(&github, pr.sha, "success") > 0;
        async move { tried.then_some(()) }
    })
    .await;
    eventually(GITHUB_TIMEOUT, "failed attempts counted", || {
        let failed = reporter.failures() >= 1;
        async move { failed.then_some(()) }
    })
    .await;
    github.with(|s| {
        assert!(s.commit_statuses.is_empty());
        assert!(s.deployments.is_empty());
        assert!(s.comments.is_empty());
    });
    let now = envs.get(&pr.name()).await.unwrap();
    assert_ready(&now, &pr);

    // GitHub is back: the same Ready report is delivered without any phase change.
    github.outage(None);
    let url = ready.status.as_ref().unwrap().url.clone().unwrap();
    wait_comment(&github, "Ready").await;
    eventually(
        GITHUB_TIMEOUT,
        "success status delivered after the stall",
        || {
            let delivered = github.with(|s| {
                s.commit_statuses.iter().any(|(sha, body)| {
                    sha == pr.sha
                        && body["state"] == "success"
                        && body["target_url"] == url.as_str()
                })
            });
            async move { delivered.then_some(()) }
        },
    )
    .await;

    // And the deletion is reported too.
    delete_and_wait(&client, &envs, &now).await;
    wait_deleted_status(&github, pr.number).await;
    let (created, _) = deployment(&github, pr.number).unwrap();
    assert_deployment_request(&created, &pr);
    wait_comment(&github, "Terminated").await;
    tokio::time::timeout(GITHUB_TIMEOUT, reporter.idle())
        .await
        .expect("every report delivered");

    operator.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_stopped_operator_never_delivered_is_sent_by_its_successor() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "rep-durable").await;
    let github = FakeGitHub::start().await;
    github.outage(Some(Scripted::status(502, "Bad Gateway")));
    // The first operator tries once and would wait ten minutes before trying again: it
    // is as good as dead once stopped, its queue lost.
    let first_reporter = reporter(&github, Duration::from_secs(5), Duration::from_secs(600));
    let first = operator(client.clone(), &ns, &first_reporter).await;
    assert!(
        first.ctx.config.durable_reports,
        "a GitHub reporter confirms its deliveries"
    );
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let pr = Pr::new(7104, "4444444444444444444444444444444444444444");

    create(&envs, &pr).await;
    let ready = wait_phase(&envs, &pr.name(), Phase::Ready).await;
    let url = assert_ready(&ready, &pr);
    // Its report met the outage (the Pending one, or the Ready one if that replaced it
    // before it was sent) and waits for its retry.
    eventually(GITHUB_TIMEOUT, "an attempt to report", || {
        let tried = status_attempts(&github, pr.sha, "pending")
            + status_attempts(&github, pr.sha, "success")
            > 0;
        async move { tried.then_some(()) }
    })
    .await;
    first.stop().await;
    let pending = envs.get(&pr.name()).await.unwrap();
    assert!(
        pending.status.as_ref().unwrap().pending_report.is_some(),
        "the undelivered report is recorded in the status"
    );
    assert!(commit_statuses(&github, pr.sha).is_empty());

    // GitHub is back and a new operator starts: nothing about the environment changed,
    // yet the Ready report reaches GitHub, once, and is confirmed in the status.
    github.outage(None);
    let second_reporter = reporter(&github, Duration::from_secs(5), Duration::from_millis(200));
    let second = operator(client.clone(), &ns, &second_reporter).await;
    let states = wait_status_success(&github, pr.sha, "commit status success").await;
    assert_eq!(states.last().unwrap().1.as_deref(), Some(url.as_str()));
    let (created, statuses) = wait_deployment_success(&github, pr.number).await;
    assert_deployment_request(&created, &pr);
    assert_eq!(statuses.last().unwrap()["environment_url"], url.as_str());
    let comment = wait_comment(&github, "Ready").await;
    assert!(comment.body.contains(&url), "{}", comment.body);
    let confirmed = eventually(GITHUB_TIMEOUT, "the report confirmed", || {
        let envs = envs.clone();
        let name = pr.name();
        async move {
            let env = envs.get(&name).await.ok()?;
            env.status.as_ref()?.pending_report.is_none().then_some(env)
        }
    })
    .await;
    assert_ready(&confirmed, &pr);
    tokio::time::timeout(GITHUB_TIMEOUT, second_reporter.idle())
        .await
        .expect("every report delivered");
    let sent = github.with(|s| s.log.len());

    // Confirmed reports are not sent again: a change GitHub does not see (an annotation)
    // reconciles the environment without a single GitHub request.
    envs.patch(
        &pr.name(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"example.com/poke": "1"}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::time::timeout(GITHUB_TIMEOUT, second_reporter.idle())
        .await
        .expect("nothing queued");
    assert_eq!(
        github.with(|s| s.log.len()),
        sent,
        "no request after the confirmation"
    );

    delete_and_wait(&client, &envs, &confirmed).await;
    second.stop().await;
    delete_namespace(&client, &ns).await;
}

/// Waits for the deployment status of a deleted environment: inactive, without the URL.
/// The Terminating report (inactive, still with the URL) may reach GitHub first.
async fn wait_deleted_status(github: &FakeGitHub, number: u64) {
    let inactive = eventually(GITHUB_TIMEOUT, "deployment status inactive, no URL", || {
        let last = last_deployment_state(github, number)
            .filter(|s| s["state"] == "inactive" && s.get("environment_url").is_none());
        async move { last }
    })
    .await;
    assert_eq!(inactive["description"], "Preview environment was deleted");
}
