//! Who GitHub says may act, on the local control plane (`testenv/up`): signed deliveries
//! derived from the real `@octokit/webhooks-examples` payloads through the real webhook
//! server into the Kubernetes store, and a local server speaking GitHub's REST API that
//! answers the collaborator permission, pull request and checks APIs (errors included)
//! and records every request.
//!
//! Each attack is shown to fail, next to the legitimate path that still works:
//! - a read-only collaborator's `/preview delete` (the payload calls them `COLLABORATOR`,
//!   which the association rule admitted) is refused; a writer's is recorded; GitHub
//!   failing refuses too; a `member` webhook drops a demoted writer's cached permission;
//! - a fork approval racing a push approves neither commit; a triager's label approves
//!   nothing; a maintainer's approval of the head GitHub reports is recorded with who and
//!   when, and a later push never inherits it;
//! - a check run with the required name from another App (the pull request's own
//!   workflow, the `github-actions` App) and a commit status of that name do not open a
//!   gate bound to an App, the webhook's record nor the controller's fallback poll; the
//!   bound App's check run does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_github::{FakeGitHub, Scripted};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use previewd_core::Phase;
use previewd_core::checks::{RecordedChecks, RequiredCheck};
use previewd_core::source_control::SourceControl;
use previewd_github::metrics::WebhookMetrics;
use previewd_github::reporter::GitHubReporter;
use previewd_github::store::KubeStore;
use previewd_github::webhook::{WebhookConfig, WebhookState};
use previewd_kube::controller::Context;
use previewd_kube::crd::{
    ANNOTATION_CHECKS, ANNOTATION_COMMAND_REPLY, ANNOTATION_DELETE_REQUESTED,
    ANNOTATION_EXTENDED_UNTIL, PreviewEnvironment, PreviewRepository,
};
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
};
use reqwest::Method;
use serde_json::{Value, json};

/// The examples' head commit (and the commit their checks run on).
const SHA_A: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
/// A commit pushed to the fork after it.
const SHA_B: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
/// And another, later still.
const SHA_C: &str = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";
/// The App a pull request's own GitHub Actions workflow reports as.
const GITHUB_ACTIONS: u64 = 15368;
/// The App of the examples' check runs.
const LINTER: u64 = 29310;
const TIMEOUT: Duration = Duration::from_secs(90);

/// The webhook over the namespace's Kubernetes store, asking `github` who may act.
async fn webhook(client: &kube::Client, ns: &str, github: &FakeGitHub) -> Server {
    let gh = github.client();
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        Arc::new(KubeStore::new(client.clone(), Some(ns.to_string()))),
        WebhookMetrics::default(),
    )
    .with_responder(Arc::new(gh.clone()))
    .with_repository_access(Arc::new(gh));
    start_with_state(state).await
}

fn annotation(env: &PreviewEnvironment, key: &str) -> Option<String> {
    env.metadata.annotations.as_ref()?.get(key).cloned()
}

fn permission_path(login: &str) -> String {
    format!("/repos/{REPOSITORY}/collaborators/{login}/permission")
}

async fn reaction(github: &FakeGitHub, id: u64) -> String {
    eventually(TIMEOUT, "the reaction on the comment", || async move {
        github.with(|s| {
            s.reactions
                .iter()
                .find(|(c, _)| *c == id)
                .map(|(_, r)| r.clone())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_collaborator_cannot_delete_a_preview_and_a_writer_can() {
    let (client, ns) = cluster_with_settings("trust-cmd").await;
    let github = FakeGitHub::start().await;
    github.grant("reader", "read");
    github.grant("writer", "write");
    let server = webhook(&client, &ns, &github).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let name = previewd_kube::render::environment_name(REPOSITORY, 2);

    let opened = deliver_json(&server, "pull_request", &delivery_id(), &example("opened")).await;
    assert_eq!(opened.outcome(), "applied", "{opened:?}");
    let before = envs.get(&name).await.unwrap();

    // Attack: a read-only collaborator. The payload's association, COLLABORATOR, is what
    // the association rule admitted; the permission GitHub reports is `read`.
    let attack = pr_comment_by(2, 7001, "/preview delete", "reader", "COLLABORATOR");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &attack).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "refused"),
        "{answer:?}"
    );
    assert!(answer.reason().contains("has the role read"), "{answer:?}");
    let after = envs.get(&name).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "nothing written"
    );
    assert_eq!(annotation(&after, ANNOTATION_DELETE_REQUESTED), None);
    assert_eq!(github.hits(&Method::GET, &permission_path("reader")), 1);
    assert_eq!(reaction(&github, 7001).await, "-1");

    // GitHub failing to answer for a writer refuses as well, and says so on the PR.
    github.script(
        Method::GET,
        &permission_path("writer"),
        vec![
            Scripted::status(502, "Bad Gateway"),
            Scripted::status(502, "Bad Gateway"),
        ],
    );
    let unanswered = pr_comment_by(2, 7002, "/preview delete", "writer", "MEMBER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &unanswered).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "refused"),
        "{answer:?}"
    );
    let env = envs.get(&name).await.unwrap();
    assert_eq!(annotation(&env, ANNOTATION_DELETE_REQUESTED), None);
    let reply = annotation(&env, ANNOTATION_COMMAND_REPLY).unwrap();
    assert!(
        reply.starts_with("7002 `/preview delete` by @writer: refused, could not check"),
        "{reply}"
    );
    assert_eq!(reaction(&github, 7002).await, "-1");

    // Control: the writer's command is recorded (the controller deletes on it).
    let legit = pr_comment_by(2, 7003, "/preview delete", "writer", "MEMBER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &legit).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "command"),
        "{answer:?}"
    );
    let env = envs.get(&name).await.unwrap();
    assert_eq!(
        annotation(&env, ANNOTATION_DELETE_REQUESTED).as_deref(),
        Some("7003")
    );
    assert_eq!(reaction(&github, 7003).await, "+1");
    // Answers are reused: a second command asks GitHub nothing more.
    let hits = github.hits(&Method::GET, &permission_path("writer"));
    let extend = pr_comment_by(2, 7004, "/preview extend 1h", "writer", "MEMBER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &extend).await;
    assert_eq!(answer.outcome(), "command", "{answer:?}");
    assert_eq!(github.hits(&Method::GET, &permission_path("writer")), hits);

    // The writer is made read-only; GitHub's `member` webhook (the real `edited`
    // example, for this user) drops the cached answer at once.
    github.grant("writer", "read");
    let mut member = example_of("member", "edited");
    member["member"]["login"] = json!("writer");
    let answer = deliver_json(&server, "member", &delivery_id(), &member).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "forgotten"),
        "{answer:?}"
    );
    let demoted = pr_comment_by(2, 7005, "/preview extend 4h", "writer", "MEMBER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &demoted).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "refused"),
        "{answer:?}"
    );
    assert_eq!(
        github.hits(&Method::GET, &permission_path("writer")),
        hits + 1
    );
    let env = envs.get(&name).await.unwrap();
    assert_eq!(
        annotation(&env, "previewd.io/command-ids").as_deref(),
        Some("7002,7003,7004"),
        "the refused comment left no trace"
    );
    assert!(annotation(&env, ANNOTATION_EXTENDED_UNTIL).is_some());

    server.stop().await;
    delete_namespace(&client, &ns).await;
}

/// The real `pull_request` example of `action`, from a fork, at `head`, at time `at`,
/// sent by `sender`.
fn fork_event(action: &str, head: &str, at: &str, sender: &str) -> Value {
    let mut e = example(action);
    e["pull_request"]["head"]["repo"]["full_name"] = json!("attacker/Hello-World");
    e["pull_request"]["head"]["repo"]["fork"] = json!(true);
    e["pull_request"]["head"]["sha"] = json!(head);
    e["pull_request"]["updated_at"] = json!(at);
    e["sender"]["login"] = json!(sender);
    if action == "labeled" || action == "unlabeled" {
        e["label"]["name"] = json!("preview/approved");
    }
    e
}

/// What GitHub's pull request API says about the fork's pull request now.
fn github_view(github: &FakeGitHub, head: &str, labelled: bool) {
    let mut pr = fork_event("labeled", head, "2019-05-15T15:30:00Z", "x")["pull_request"].clone();
    pr["labels"] = if labelled {
        json!([{"name": "preview/approved"}])
    } else {
        json!([])
    };
    github.with(|s| s.pulls.insert(2, pr));
}

async fn environments(envs: &Api<PreviewEnvironment>) -> Vec<PreviewEnvironment> {
    envs.list(&ListParams::default()).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_racing_a_push_does_not_approve_the_pushed_commit() {
    let (client, ns) = cluster_with_settings("trust-fork").await;
    let github = FakeGitHub::start().await;
    github.grant("maintainer", "write");
    github.grant("triager", "triage");
    let server = webhook(&client, &ns, &github).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let send = |event: Value| {
        let server = &server;
        async move { deliver_json(server, "pull_request", &delivery_id(), &event).await }
    };

    let answer = send(fork_event(
        "opened",
        SHA_A,
        "2019-05-15T15:20:33Z",
        "attacker",
    ))
    .await;
    assert_eq!(answer.reason(), "fork_not_approved", "{answer:?}");

    // Attack: the maintainer adds the label while the head is A; the fork pushes B
    // before previewd handles the label. GitHub now reports B: nothing is approved,
    // neither A nor B.
    github_view(&github, SHA_B, true);
    let answer = send(fork_event(
        "labeled",
        SHA_A,
        "2019-05-15T15:21:00Z",
        "maintainer",
    ))
    .await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "refused"),
        "{answer:?}"
    );
    assert!(
        answer
            .reason()
            .contains("head moved from ec26c3e57ca3 to b0b0b0b0b0b0"),
        "{answer:?}"
    );
    assert_eq!(
        github.hits(&Method::GET, &format!("/repos/{REPOSITORY}/pulls/2")),
        1
    );
    let answer = send(fork_event(
        "synchronize",
        SHA_B,
        "2019-05-15T15:21:01Z",
        "attacker",
    ))
    .await;
    assert_eq!(answer.reason(), "fork_not_approved", "{answer:?}");
    assert!(environments(&envs).await.is_empty(), "nothing approved");

    // Attack: someone who may add labels (triage) but not push approves B.
    let answer = send(fork_event(
        "labeled",
        SHA_B,
        "2019-05-15T15:22:00Z",
        "triager",
    ))
    .await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "refused"),
        "{answer:?}"
    );
    assert!(
        answer.reason().contains("has the role triage"),
        "{answer:?}"
    );
    assert!(environments(&envs).await.is_empty());
    let answer = send(fork_event(
        "unlabeled",
        SHA_B,
        "2019-05-15T15:22:30Z",
        "maintainer",
    ))
    .await;
    assert_eq!(answer.reason(), "fork_approval_removed", "{answer:?}");

    // GitHub failing to report the head approves nothing; the delivery fails (503) so
    // that it can be redelivered.
    github_view(&github, SHA_B, true);
    github.script(
        Method::GET,
        &format!("/repos/{REPOSITORY}/pulls/2"),
        vec![
            Scripted::status(502, "Bad Gateway"),
            Scripted::status(502, "Bad Gateway"),
        ],
    );
    let approve_b = fork_event("labeled", SHA_B, "2019-05-15T15:23:00Z", "maintainer");
    let delivery = delivery_id();
    let answer = deliver_json(&server, "pull_request", &delivery, &approve_b).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (503, "github_unavailable"),
        "{answer:?}"
    );
    assert!(environments(&envs).await.is_empty());

    // Control: redelivered once GitHub answers, the maintainer's approval of the head
    // GitHub reports is recorded: the full SHA, who, when.
    let answer = deliver_json(&server, "pull_request", &delivery, &approve_b).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "applied"),
        "{answer:?}"
    );
    let all = environments(&envs).await;
    assert_eq!(all.len(), 1);
    let env = &all[0];
    assert_eq!(env.spec.head_sha, SHA_B);
    assert_eq!(
        annotation(env, "previewd.io/approved-sha").as_deref(),
        Some(SHA_B)
    );
    assert_eq!(
        annotation(env, "previewd.io/approved-by").as_deref(),
        Some("maintainer")
    );
    assert_eq!(
        annotation(env, "previewd.io/approved-at").as_deref(),
        Some("2019-05-15T15:23:00Z")
    );

    // A later push never inherits the approval: the environment stays on B.
    github_view(&github, SHA_C, true);
    let answer = send(fork_event(
        "synchronize",
        SHA_C,
        "2019-05-15T15:24:00Z",
        "attacker",
    ))
    .await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (200, "ignored", "fork_head_not_approved")
    );
    let env = envs
        .get(env.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(env.spec.head_sha, SHA_B);
    assert_eq!(
        annotation(&env, "previewd.io/approved-sha").as_deref(),
        Some(SHA_B)
    );

    server.stop().await;
    delete_namespace(&client, &ns).await;
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
    let server = webhook(&client, &ns, &github).await;
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
