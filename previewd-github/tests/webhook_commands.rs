//! PR commands through the real webhook server on 127.0.0.1: the real `issue_comment`
//! examples of `@octokit/webhooks-examples`, and variants of them made into commands on
//! a pull request, signed with the webhook secret. Reactions and the commenters'
//! permissions go through the real [`GitHubClient`] to a local server that speaks
//! GitHub's reactions and collaborator permission APIs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_github::FakeGitHub;
use previewd_core::source_control::RepoRef;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::command::{CommandResponder, Reaction};
use previewd_github::metrics::{ClientMetrics, WebhookMetrics};
use previewd_github::store::MemoryStore;
use previewd_github::webhook::{WebhookConfig, WebhookState};
use previewd_kube::crd::{
    ANNOTATION_COMMAND_IDS, ANNOTATION_COMMAND_REPLY, ANNOTATION_DELETE_REQUESTED,
    ANNOTATION_EXTENDED_UNTIL, ANNOTATION_LAST_COMMAND, ANNOTATION_SLEEP, PreviewEnvironment,
};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;

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

struct Rig {
    server: Server,
    store: Arc<MemoryStore>,
    github: FakeGitHub,
    client: GitHubClient,
}

/// The examples' commenter, `Codertocat`, has write permission.
async fn rig() -> Rig {
    let github = FakeGitHub::start().await;
    github.grant("Codertocat", "write");
    let store = Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))]));
    // Reads permissions; gives up at once on a rate limit longer than a second.
    let client = github.client();
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        store.clone(),
        WebhookMetrics::default(),
    )
    .with_responder(Arc::new(github_client(&github)))
    .with_repository_access(Arc::new(client.clone()));
    let server = start_with_state(state).await;
    Rig {
        server,
        store,
        github,
        client,
    }
}

impl Rig {
    fn environment(&self) -> PreviewEnvironment {
        let all = self.store.environments();
        assert_eq!(all.len(), 1, "one environment");
        all.into_iter().next().unwrap()
    }

    fn annotation(&self, key: &str) -> Option<String> {
        self.environment()
            .metadata
            .annotations
            .unwrap_or_default()
            .get(key)
            .cloned()
    }

    async fn reactions(&self, want: usize) -> Vec<(u64, String)> {
        for _ in 0..250 {
            let got = self.github.with(|s| s.reactions.clone());
            if got.len() >= want {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.github.with(|s| s.reactions.clone())
    }
}

async fn seed(rig: &Rig) {
    let answer = deliver_json(
        &rig.server,
        "pull_request",
        &delivery_id(),
        &example("opened"),
    )
    .await;
    assert_eq!(answer.outcome(), "applied", "{answer:?}");
}

#[tokio::test]
async fn every_real_issue_comment_example_is_read_and_left_alone() {
    let rig = rig().await;
    seed(&rig).await;
    let writes = rig.store.write_count();
    let all = examples("issue_comment");
    assert_eq!(
        all.len(),
        9,
        "the pinned package has 9 issue_comment examples"
    );
    for payload in &all {
        let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), payload).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.outcome(), "ignored");
        let why = if payload["action"] == "created" {
            "not_a_pull_request"
        } else {
            "action_not_handled"
        };
        assert_eq!(answer.reason(), why);
    }
    // On a pull request, but no command: still nothing.
    let chat = pr_comment(2, 1, "You are totally right!", "OWNER");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &chat).await;
    assert_eq!(answer.reason(), "no_command");
    assert_eq!(rig.store.write_count(), writes, "no write");
    assert!(rig.reactions(0).await.is_empty());
}

#[tokio::test]
async fn a_command_is_recorded_once_and_acknowledged() {
    let rig = rig().await;
    seed(&rig).await;
    let sleep = pr_comment(2, 5001, "please\n/preview sleep\n", "OWNER");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &sleep).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "command"),
        "{answer:?}"
    );
    assert_eq!(rig.annotation(ANNOTATION_SLEEP).as_deref(), Some("command"));
    assert!(rig.annotation(ANNOTATION_LAST_COMMAND).is_some());
    assert!(
        rig.annotation(ANNOTATION_COMMAND_REPLY)
            .unwrap()
            .starts_with("5001 `/preview sleep` by @Codertocat")
    );
    // The same comment delivered again (a redelivery has a new delivery id).
    let writes = rig.store.write_count();
    let again = deliver_json(&rig.server, "issue_comment", &delivery_id(), &sleep).await;
    assert_eq!(again.outcome(), "duplicate");
    assert_eq!(rig.store.write_count(), writes);
    assert_eq!(rig.reactions(1).await, vec![(5001, "+1".to_string())]);

    // A push re-renders the environment; the commands' annotations stay.
    let mut push = example("synchronize");
    push["pull_request"]["updated_at"] = json!("2030-01-01T00:00:00Z");
    let answer = deliver_json(&rig.server, "pull_request", &delivery_id(), &push).await;
    assert_eq!(answer.outcome(), "applied", "{answer:?}");
    assert_eq!(
        rig.annotation(ANNOTATION_COMMAND_IDS).as_deref(),
        Some("5001")
    );

    let extend = pr_comment(2, 5002, "/preview extend 2h", "COLLABORATOR");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &extend).await;
    assert_eq!(answer.outcome(), "command");
    let until: jiff::Timestamp = rig
        .annotation(ANNOTATION_EXTENDED_UNTIL)
        .unwrap()
        .parse()
        .unwrap();
    let ahead = until.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((7100..=7200).contains(&ahead), "{ahead}");
    assert_eq!(
        rig.annotation(ANNOTATION_COMMAND_IDS).as_deref(),
        Some("5001,5002")
    );
}

#[tokio::test]
async fn commands_without_write_permission_are_refused_before_any_write() {
    let rig = rig().await;
    seed(&rig).await;
    rig.github.grant("reader", "read");
    rig.github.grant("triager", "triage");
    let writes = rig.store.write_count();
    // The association the payload claims changes nothing: the permission decides.
    for (id, login, association, held) in [
        (6001, "reader", "COLLABORATOR", "read"),
        (6002, "triager", "MEMBER", "triage"),
        (6003, "stranger", "OWNER", "none"),
    ] {
        let delete = pr_comment_by(2, id, "/preview delete", login, association);
        let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &delete).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, "refused"),
            "{answer:?}"
        );
        assert!(
            answer.reason().contains(&format!("has the role {held}")),
            "{answer:?}"
        );
        assert!(answer.reason().contains("write or above"), "{answer:?}");
        assert_eq!(
            rig.github.hits(
                &Method::GET,
                &format!("/repos/{REPOSITORY}/collaborators/{login}/permission")
            ),
            1
        );
    }
    assert_eq!(rig.store.write_count(), writes, "nothing recorded");
    let mut got = rig.reactions(3).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            (6001, "-1".to_string()),
            (6002, "-1".to_string()),
            (6003, "-1".to_string())
        ]
    );
}

#[tokio::test]
async fn unknown_commands_are_answered_with_help() {
    let rig = rig().await;
    seed(&rig).await;
    let odd = pr_comment(2, 7001, "/preview teleport", "MEMBER");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &odd).await;
    assert_eq!(answer.outcome(), "command");
    let reply = rig.annotation(ANNOTATION_COMMAND_REPLY).unwrap();
    assert!(reply.contains("unknown command \"teleport\""), "{reply}");
    assert!(reply.contains("/preview extend"), "{reply}");
    assert_eq!(
        rig.annotation(ANNOTATION_LAST_COMMAND),
        None,
        "help is no activity"
    );
    assert_eq!(rig.reactions(1).await, vec![(7001, "confused".to_string())]);
}

#[tokio::test]
async fn a_command_on_a_pull_request_without_environment_is_refused() {
    let rig = rig().await;
    let wake = pr_comment(99, 8001, "/preview wake", "OWNER");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &wake).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "absent"),
        "{answer:?}"
    );
    assert_eq!(rig.reactions(1).await, vec![(8001, "-1".to_string())]);
}

#[tokio::test]
async fn the_reactions_client_is_idempotent_and_reports_errors() {
    let github = FakeGitHub::start().await;
    let client = github_client(&github);
    let repo = RepoRef::new("acme", "shop");
    client
        .react_to_comment(&repo, 42, Reaction::Accepted)
        .await
        .unwrap();
    client
        .react_to_comment(&repo, 42, Reaction::Accepted)
        .await
        .unwrap();
    assert_eq!(
        github.with(|s| s.reactions.clone()),
        vec![(42, "+1".to_string())]
    );
    let path = "/repos/acme/shop/issues/comments/43/reactions";
    github.script(
        Method::POST,
        path,
        vec![fake_github::Scripted::status(404, "Not Found")],
    );
    let err = client
        .react_to_comment(&repo, 43, Reaction::Refused)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "not_found", "{err}");
    github.script(
        Method::POST,
        path,
        vec![fake_github::Scripted::status(
            403,
            "Resource not accessible by integration",
        )],
    );
    let err = client
        .react_to_comment(&repo, 43, Reaction::Refused)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "forbidden", "{err}");
    // The responder logs and never fails the webhook.
    github.script(
        Method::POST,
        path,
        vec![
            fake_github::Scripted::status(500, "boom"),
            fake_github::Scripted::status(500, "boom"),
        ],
    );
    client.react("acme/shop", 43, Reaction::Confused).await;
    assert!(github.hits(&Method::POST, path) >= 3);
}

#[tokio::test]
async fn a_private_member_with_write_permission_is_obeyed() {
    // A member whose organisation membership is private arrives as CONTRIBUTOR.
    let rig = rig().await;
    seed(&rig).await;
    rig.github.grant("private-member", "maintain");
    let sleep = pr_comment_by(2, 6101, "/preview sleep", "private-member", "CONTRIBUTOR");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &sleep).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "command"),
        "{answer:?}"
    );
    assert_eq!(rig.annotation(ANNOTATION_SLEEP).as_deref(), Some("command"));
}

#[tokio::test]
async fn when_github_cannot_tell_the_command_is_refused_and_the_reply_says_why() {
    let rig = rig().await;
    seed(&rig).await;
    rig.github.grant("writer", "write");
    let path = format!("/repos/{REPOSITORY}/collaborators/writer/permission");
    // A server error after the client's retry, then a rate limit longer than the client
    // waits (one second): both refuse; nothing the command asks for is recorded.
    rig.github.script(
        Method::GET,
        &path,
        vec![
            fake_github::Scripted::status(502, "Bad Gateway"),
            fake_github::Scripted::status(502, "Bad Gateway"),
            fake_github::Scripted::status(429, "API rate limit exceeded")
                .header("retry-after", "2"),
        ],
    );
    for (id, category) in [(6201, "server_error"), (6202, "rate_limited")] {
        let delete = pr_comment_by(2, id, "/preview delete", "writer", "MEMBER");
        let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &delete).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, "refused"),
            "{answer:?}"
        );
        assert!(answer.reason().contains(category), "{answer:?}");
        assert_eq!(rig.annotation(ANNOTATION_DELETE_REQUESTED), None);
        let reply = rig.annotation(ANNOTATION_COMMAND_REPLY).unwrap();
        assert!(
            reply.starts_with(&format!("{id} `/preview delete` by @writer: refused")),
            "{reply}"
        );
        assert!(reply.contains(category), "{reply}");
    }
    // Every request of the client waits until GitHub's `retry-after` is over, as GitHub
    // asks.
    while let Some(until) = rig.client.paused_until() {
        tokio::time::sleep_until(until).await;
    }
    // GitHub answers again: the same person's next comment is obeyed.
    let delete = pr_comment_by(2, 6203, "/preview delete", "writer", "MEMBER");
    let answer = deliver_json(&rig.server, "issue_comment", &delivery_id(), &delete).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (202, "command"),
        "{answer:?}"
    );
    assert_eq!(
        rig.annotation(ANNOTATION_DELETE_REQUESTED).as_deref(),
        Some("6203")
    );
    let mut got = rig.reactions(3).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            (6201, "-1".to_string()),
            (6202, "-1".to_string()),
            (6203, "+1".to_string())
        ]
    );
}

#[tokio::test]
async fn without_github_credentials_no_command_runs() {
    let store = Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))]));
    let server = start(store.clone(), |_| {}).await;
    seed_server(&server).await;
    let writes = store.write_count();
    let delete = pr_comment(2, 6301, "/preview delete", "OWNER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &delete).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "refused"),
        "{answer:?}"
    );
    assert!(answer.reason().contains("credentials"), "{answer:?}");
    assert_eq!(store.write_count(), writes);
}

#[tokio::test]
async fn the_deprecated_association_filter_only_narrows() {
    let github = FakeGitHub::start().await;
    github.grant("Codertocat", "write");
    github.grant("outsider", "write");
    let store = Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))]));
    let mut config = WebhookConfig::new(SECRET);
    config.command_policy.allowed_associations = vec!["OWNER".into(), "MEMBER".into()];
    let state = WebhookState::new(config, store.clone(), WebhookMetrics::default())
        .with_repository_access(Arc::new(github.client()));
    let server = start_with_state(state).await;
    // start_with_state serves `state`'s store, not the server's own.
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &example("opened")).await;
    assert_eq!(answer.outcome(), "applied", "{answer:?}");
    // Not listed: refused without asking GitHub, whatever the permission.
    let sleep = pr_comment_by(2, 6401, "/preview sleep", "outsider", "CONTRIBUTOR");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &sleep).await;
    assert_eq!(answer.outcome(), "refused", "{answer:?}");
    assert_eq!(
        github.hits(
            &Method::GET,
            &format!("/repos/{REPOSITORY}/collaborators/outsider/permission")
        ),
        0
    );
    // Listed, and still asked.
    let sleep = pr_comment(2, 6402, "/preview sleep", "OWNER");
    let answer = deliver_json(&server, "issue_comment", &delivery_id(), &sleep).await;
    assert_eq!(answer.outcome(), "command", "{answer:?}");
    assert_eq!(
        github.hits(
            &Method::GET,
            &format!("/repos/{REPOSITORY}/collaborators/Codertocat/permission")
        ),
        1
    );
}

async fn seed_server(server: &Server) {
    let answer = deliver_json(server, "pull_request", &delivery_id(), &example("opened")).await;
    assert_eq!(answer.outcome(), "applied", "{answer:?}");
}
