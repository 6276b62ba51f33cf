//! The lifecycle policy end to end on the local control plane (`testenv/up`): signed
//! `pull_request` and `issue_comment` deliveries (variants of the real octokit examples)
//! through the real webhook server and the Kubernetes store, the real controller scoped
//! to a throwaway namespace, reporting to a local server that speaks GitHub's API and
//! recording history in the real PostgreSQL (`scripts/pg-up`).
//!
//! One environment lives through: Ready → a sleep command from a read-only collaborator
//! (refused) → `/preview sleep` (every Deployment at zero replicas) → `/preview
//! wake` (replicas from the spec) → `/preview extend 3w` (expiry moved, capped at
//! `maxLifespan`) with the expiry warning on the sticky comment → `/preview delete`; then
//! its history row is read back from PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_github::FakeGitHub;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use previewd_ai::history::{HistoryRecorder, HistoryStore, PostgresHistory};
use previewd_core::Phase;
use previewd_core::environment::{EnvironmentReporter, Reporters};
use previewd_core::source_control::SourceControl;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::metrics::{ClientMetrics, WebhookMetrics};
use previewd_github::reporter::GitHubReporter;
use previewd_github::store::KubeStore;
use previewd_github::webhook::{WebhookConfig, WebhookState};
use previewd_kube::controller::Context;
use previewd_kube::crd::{PreviewEnvironment, condition};
use previewd_kube::testing::{Operator, delete_namespace, eventually, test_config, unique_suffix};
use secrecy::SecretString;

const TIMEOUT: Duration = Duration::from_secs(120);

fn github_client(github: &FakeGitHub) -> GitHubClient {
    let mut config = ClientConfig::new(github.base_url());
    config.request_timeout = Duration::from_secs(5);
    config.max_retries = 1;
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    config.mutation_spacing = Duration::from_millis(1);
    config.budget = previewd_github::client::budget::BudgetLimits::unlimited();
    GitHubClient::new(
        config,
        GitHubAuth::Token(SecretString::from(fake_github::TOKEN.to_string())),
        ClientMetrics::default(),
    )
    .unwrap()
}

fn condition_of(env: &PreviewEnvironment, type_: &str) -> Option<(String, String)> {
    env.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn replicas(client: &kube::Client, namespace: &str, name: &str) -> Option<i32> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.ok().flatten()?.spec?.replicas
}

#[tokio::test]
async fn sleep_wake_extend_warn_delete_and_history_through_pr_commands() {
    let pg_url = std::env::var("PREVIEWD_PG_URL").expect(
        "PREVIEWD_PG_URL is not set: start PostgreSQL with `export $(scripts/pg-up | tail -n1)`",
    );
    let (client, ns) = cluster_with_settings("lifecycle-cmd").await;
    let mut cleanup = CleanupOnDrop(client.clone(), ns.clone(), true);
    let github = FakeGitHub::start().await;
    github.grant("Codertocat", "admin");
    github.grant("reader", "read");
    let gh = github_client(&github);

    // History in a table of its own.
    let table = format!("history_cmd_{}", unique_suffix());
    let history = Arc::new(
        PostgresHistory::connect_with_table(&pg_url, &table)
            .await
            .expect("connect to PostgreSQL"),
    );

    // The controller: explicit sleep only (no idle timer), and an expiry warning longer
    // than any TTL so that the warning shows at once.
    let mut config = test_config(&ns);
    config.idle_sleep_after = None;
    config.base_domain = "preview.example.com".into();
    config.expiry_warning = Duration::from_secs(30 * 24 * 3600);
    let reporters: Vec<Arc<dyn EnvironmentReporter>> = vec![
        Arc::new(GitHubReporter::new(
            Arc::new(gh.clone()) as Arc<dyn SourceControl>,
            None,
        )),
        Arc::new(HistoryRecorder::spawn(history.clone())),
    ];
    let operator = Operator::start_with(Arc::new(
        Context::new(client.clone(), config).with_reporter(Arc::new(Reporters(reporters))),
    ))
    .await;

    // The webhook over the cluster, acknowledging commands on the local GitHub.
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        Arc::new(KubeStore::new(client.clone(), Some(ns.clone()))),
        WebhookMetrics::default(),
    )
    .with_responder(Arc::new(gh.clone()))
    .with_repository_access(Arc::new(gh.clone()));
    let server = start_with_state(state).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let env_name = previewd_kube::render::environment_name(REPOSITORY, 2);
    let env_name = env_name.as_str();

    let opened = deliver_json(&server, "pull_request", &delivery_id(), &example("opened")).await;
    assert_eq!(opened.outcome(), "applied", "{opened:?}");
    let env = eventually(TIMEOUT, "environment Ready", || {
        let envs = envs.clone();
        async move {
            let env = match envs.get_opt(env_name).await {
                Ok(env) => env?,
                Err(err) => {
                    eprintln!("reading {env_name}: {err}");
                    return None;
                }
            };
            (env.status.as_ref()?.phase? == Phase::Ready).then_some(env)
        }
    })
    .await;
    let preview_ns = env.status.clone().unwrap().namespace.unwrap();
    assert_eq!(replicas(&client, &preview_ns, "web").await, Some(1));

    // A read-only collaborator: refused, nothing recorded.
    let refused = pr_comment_by(2, 9000, "/preview sleep", "reader", "COLLABORATOR");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &refused).await;
    assert_eq!(answer.outcome(), "refused", "{answer:?}");

    // `/preview sleep`: the Deployment at zero, namespace kept, phase kept.
    let sleep = pr_comment(2, 9001, "/preview sleep", "OWNER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &sleep).await;
    assert_eq!(answer.outcome(), "command", "{answer:?}");
    let asleep = eventually(TIMEOUT, "asleep at zero replicas", || {
        let (envs, client, preview_ns) = (envs.clone(), client.clone(), preview_ns.clone());
        async move {
            let env = envs.get_opt(env_name).await.ok().flatten()?;
            let sleeping = condition_of(&env, condition::SLEEPING)?;
            (sleeping == ("True".into(), "Command".into())
                && replicas(&client, &preview_ns, "web").await == Some(0))
            .then_some(env)
        }
    })
    .await;
    assert_eq!(asleep.status.as_ref().unwrap().phase, Some(Phase::Ready));
    assert_eq!(
        condition_of(&asleep, condition::READY),
        Some(("False".into(), "Sleeping".into()))
    );
    assert!(
        asleep
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("previewd.io/command-ids")
            .is_some_and(|ids| !ids.contains("9000")),
        "the refused comment left no trace"
    );

    // `/preview wake`: replicas from the spec, Ready again.
    let wake = pr_comment(2, 9002, "/preview wake", "MEMBER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &wake).await;
    assert_eq!(answer.outcome(), "command", "{answer:?}");
    eventually(TIMEOUT, "awake with its replicas", || {
        let (envs, client, preview_ns) = (envs.clone(), client.clone(), preview_ns.clone());
        async move {
            let env = envs.get_opt(env_name).await.ok().flatten()?;
            let awake = condition_of(&env, condition::SLEEPING)?.0 == "False"
                && env.status.as_ref()?.phase? == Phase::Ready;
            (awake && replicas(&client, &preview_ns, "web").await == Some(1)).then_some(())
        }
    })
    .await;

    // `/preview extend 3w`: past the 7-day cap, so the expiry is the cap.
    let extend = pr_comment(2, 9003, "/preview extend 3w", "OWNER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &extend).await;
    assert_eq!(answer.outcome(), "command", "{answer:?}");
    let extended = eventually(TIMEOUT, "expiry at the cap", || {
        let envs = envs.clone();
        async move {
            let env = envs.get_opt(env_name).await.ok().flatten()?;
            let status = env.status.as_ref()?;
            let created = status.created_at.as_ref()?.0;
            let cap = created
                .checked_add(jiff::SignedDuration::from_hours(7 * 24))
                .ok()?;
            (status.expires_at.as_ref()?.0 == cap).then_some(env)
        }
    })
    .await;
    assert_eq!(
        condition_of(&extended, condition::EXPIRING_SOON).map(|c| c.0),
        Some("True".into()),
        "within the warning time"
    );

    // The sticky comment warns before deletion and answers the last command.
    eventually(TIMEOUT, "the expiry warning on the PR comment", || {
        let github = &github;
        async move {
            let body = github.with(|s| s.comments.last().map(|c| c.body.clone()))?;
            (body.contains("will be deleted at")
                && body.contains("/preview extend")
                && body.contains("**Last command:**")
                && body.contains("extend 3w"))
            .then_some(())
        }
    })
    .await;
    let reactions = github.with(|s| s.reactions.clone());
    for (id, content) in [(9000, "-1"), (9001, "+1"), (9002, "+1"), (9003, "+1")] {
        assert!(
            reactions.contains(&(id, content.to_string())),
            "{id} {content} in {reactions:?}"
        );
    }

    // `/preview delete`: gone, namespace and all.
    let delete = pr_comment(2, 9004, "/preview delete", "OWNER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &delete).await;
    assert_eq!(answer.outcome(), "command", "{answer:?}");
    eventually(TIMEOUT, "environment deleted", || {
        let envs = envs.clone();
        async move { envs.get_opt(env_name).await.ok()?.is_none().then_some(()) }
    })
    .await;

    // Its life, read back from PostgreSQL.
    let record = eventually(TIMEOUT, "history row closed", || {
        let history = history.clone();
        async move {
            let record = history.latest("Codertocat/Hello-World", 2).await.ok()??;
            record.closed_at.is_some().then_some(record)
        }
    })
    .await;
    assert_eq!(record.author, "Codertocat");
    assert!(record.ready_at.is_some(), "{record:?}");
    assert_eq!(record.slept.len(), 1, "{record:?}");
    assert!(record.cost_micros.is_some(), "{record:?}");
    assert_eq!(
        history
            .by_repo("Codertocat/Hello-World", 10)
            .await
            .unwrap()
            .len(),
        1,
        "one row per environment"
    );

    server.stop().await;
    operator.stop().await;
    delete_namespace(&client, &ns).await;
    cleanup.2 = false;
}

/// Starts deleting the test's namespace when an assertion fails (on success the test
/// deletes it itself).
struct CleanupOnDrop(kube::Client, String, bool);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let (client, ns) = (self.0.clone(), self.1.clone());
        if self.2
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move { delete_namespace(&client, &ns).await });
        }
    }
}
