//! Every real `pull_request` example of `@octokit/webhooks-examples` 7.6.1, plus variants
//! derived from them, through the real webhook server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_github;

use std::sync::Arc;

use common::*;
use fake_github::FakeGitHub;
use previewd_github::metrics::WebhookMetrics;
use previewd_github::signature::sign;
use previewd_github::store::MemoryStore;
use previewd_github::store::StoreOp;
use previewd_github::webhook::ANNOTATION_APPROVED_SHA;
use previewd_github::webhook::{WebhookConfig, WebhookState};
use previewd_kube::crd::{ANNOTATION_PR_UPDATED_AT, PreviewEnvironment};
use serde_json::{Value, json};

const HEAD_SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

fn applied(op: &StoreOp) -> &PreviewEnvironment {
    match op {
        StoreOp::Applied(env) => env,
        other => panic!("expected an apply, got {other:?}"),
    }
}

fn assert_applied_for_example(env: &PreviewEnvironment, example: &Value) {
    let pr = &example["pull_request"];
    assert_eq!(env.spec.pr_number, 2);
    assert_eq!(env.spec.pr_number, pr["number"].as_i64().unwrap());
    assert_eq!(env.spec.head_sha, HEAD_SHA);
    assert_eq!(env.spec.branch, "changes");
    assert_eq!(env.spec.base_branch.as_deref(), Some("master"));
    assert_eq!(env.spec.repository, REPOSITORY);
    assert_eq!(env.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        env.spec.services[0].image,
        "ghcr.io/codertocat/web:pr-2-ec26c3e"
    );
    assert_eq!(
        env.metadata.annotations.as_ref().unwrap()[ANNOTATION_PR_UPDATED_AT],
        pr["updated_at"].as_str().unwrap()
    );
}

/// Delivers the `opened` example so an environment exists, and checks it was applied.
async fn seed_opened(server: &Server) {
    let answer = deliver_json(server, "pull_request", &delivery_id(), &example("opened")).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.outcome(), "applied");
}

#[tokio::test]
async fn every_pull_request_example_is_handled_by_action() {
    let all = examples("pull_request");
    assert_eq!(
        all.len(),
        29,
        "the pinned package has 29 pull_request examples"
    );
    let mut seen = std::collections::BTreeSet::new();
    for (index, payload) in all.iter().enumerate() {
        let action = payload["action"].as_str().unwrap().to_string();
        seen.insert(action.clone());
        let server = start_default(json!({})).await;
        let seeded = matches!(action.as_str(), "closed" | "converted_to_draft");
        if seeded {
            seed_opened(&server).await;
        }
        let before = server.store.write_count();
        let answer = deliver_json(&server, "pull_request", &delivery_id(), payload).await;
        let ops = server.store.ops();
        let new_ops = &ops[before..];
        let context = format!("example #{index} ({action}): {answer:?}");
        match action.as_str() {
            "opened" | "reopened" | "synchronize" | "ready_for_review" | "labeled"
            | "unlabeled" => {
                assert_eq!(answer.status, 202, "{context}");
                assert_eq!(answer.outcome(), "applied", "{context}");
                assert_eq!(new_ops.len(), 1, "{context}");
                assert_applied_for_example(applied(&new_ops[0]), payload);
                assert_eq!(server.store.environments().len(), 1, "{context}");
            }
            "closed" | "converted_to_draft" => {
                assert_eq!(answer.status, 202, "{context}");
                assert_eq!(answer.outcome(), "deleted", "{context}");
                let expected_reason = if action == "closed" {
                    "closed"
                } else {
                    "draft"
                };
                assert_eq!(answer.reason(), expected_reason, "{context}");
                assert_eq!(
                    new_ops,
                    &[StoreOp::Deleted {
                        namespace: NAMESPACE.into(),
                        name: previewd_kube::render::environment_name(REPOSITORY, 2),
                    }],
                    "{context}"
                );
                assert!(server.store.environments().is_empty(), "{context}");
            }
            "assigned"
            | "unassigned"
            | "locked"
            | "unlocked"
            | "review_requested"
            | "review_request_removed" => {
                assert_eq!(answer.status, 200, "{context}");
                assert_eq!(answer.outcome(), "ignored", "{context}");
                assert_eq!(answer.reason(), "action_not_handled", "{context}");
                assert!(new_ops.is_empty(), "{context}");
            }
            other => panic!("no expectation for action {other}"),
        }
        assert_eq!(
            server.metrics.count("pull_request", answer.outcome()),
            1,
            "{context}"
        );
        server.stop().await;
    }
    assert_eq!(seen.len(), 14, "actions covered: {seen:?}");
}

#[tokio::test]
async fn label_gating_with_the_examples_label() {
    let gating = json!({"requiredLabel": "bug"});
    // The `opened` example without labels gets nothing.
    let server = start_default(gating.clone()).await;
    let first = examples("pull_request")
        .into_iter()
        .find(|e| {
            e["action"] == "opened" && e["pull_request"]["labels"].as_array().unwrap().is_empty()
        })
        .unwrap();
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &first).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (202, "absent", "missing_required_label")
    );
    assert_eq!(server.store.write_count(), 0);
    // Adding the label creates it.
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &example("labeled")).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    assert_eq!(server.store.environments().len(), 1);
    // Removing it tears it down, although the example's label list still shows it.
    let unlabeled = example("unlabeled");
    assert_eq!(unlabeled["pull_request"]["labels"][0]["name"], "bug");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &unlabeled).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (202, "deleted", "missing_required_label")
    );
    assert!(server.store.environments().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn merged_close_deletes() {
    let server = start_default(json!({})).await;
    seed_opened(&server).await;
    let mut merged = example("closed");
    merged["pull_request"]["merged"] = json!(true);
    merged["pull_request"]["merged_at"] = json!("2019-05-15T15:21:18Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &merged).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (202, "deleted", "merged")
    );
    assert!(server.store.environments().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn edited_only_matters_for_base_changes() {
    let server = start_default(json!({})).await;
    seed_opened(&server).await;
    let mut title_edit = example("opened");
    title_edit["action"] = json!("edited");
    title_edit["changes"] = json!({"title": {"from": "Old title"}});
    title_edit["pull_request"]["updated_at"] = json!("2019-05-15T15:25:00Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &title_edit).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (200, "ignored", "edit_without_base_change")
    );
    assert_eq!(server.store.write_count(), 1);

    let mut base_edit = title_edit.clone();
    base_edit["changes"] = json!({"base": {"ref": {"from": "master"}, "sha": {"from": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"}}});
    base_edit["pull_request"]["base"]["ref"] = json!("main");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &base_edit).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    let envs = server.store.environments();
    assert_eq!(envs[0].spec.base_branch.as_deref(), Some("main"));
    server.stop().await;
}

#[tokio::test]
async fn drafts_are_skipped_by_default_and_allowed_on_request() {
    let mut draft = example("opened");
    draft["pull_request"]["draft"] = json!(true);
    let server = start_default(json!({})).await;
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &draft).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (202, "absent", "draft")
    );
    assert_eq!(server.store.write_count(), 0);
    server.stop().await;

    let server = start_default(json!({"skipDrafts": false})).await;
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &draft).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    server.stop().await;
}

fn forked(mut payload: Value) -> Value {
    payload["pull_request"]["head"]["repo"]["full_name"] = json!("attacker/Hello-World");
    payload["pull_request"]["head"]["repo"]["fork"] = json!(true);
    payload["pull_request"]["author_association"] = json!("FIRST_TIME_CONTRIBUTOR");
    payload
}

/// GitHub's view of the fork pull request: `head` at its tip, `labels` on it.
fn fork_pull_request(head: &str, labels: &[&str]) -> Value {
    let mut pr = forked(example("labeled"))["pull_request"].clone();
    pr["head"]["sha"] = json!(head);
    pr["labels"] = labels.iter().map(|l| json!({"name": l})).collect();
    pr
}

#[tokio::test]
async fn fork_prs_need_an_approval_per_head_commit() {
    // The examples' sender, Codertocat, maintains the repository.
    let github = FakeGitHub::start().await;
    github.grant("Codertocat", "write");
    github.with(|s| {
        s.pulls
            .insert(2, fork_pull_request(HEAD_SHA, &["preview/approved"]))
    });
    let store = Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))]));
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        store.clone(),
        WebhookMetrics::default(),
    )
    .with_repository_access(Arc::new(github.client()));
    let mut server = start_with_state(state).await;
    server.store = store;
    let opened = forked(example("opened"));
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &opened).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (200, "ignored", "fork_not_approved")
    );
    assert_eq!(server.store.write_count(), 0);

    // A maintainer approves the current head.
    let mut approve = forked(example("labeled"));
    approve["label"]["name"] = json!("preview/approved");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &approve).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    let env = &server.store.environments()[0];
    assert_eq!(env.spec.head_sha, HEAD_SHA);
    let annotations = env.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[ANNOTATION_APPROVED_SHA], HEAD_SHA);
    assert_eq!(annotations["previewd.io/approved-by"], "Codertocat");
    assert_eq!(
        annotations["previewd.io/approved-at"],
        "2019-05-15T15:20:35Z"
    );

    // A new push to the fork is not deployed: the environment stays on the approved commit.
    let mut push = forked(example("synchronize"));
    push["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
    push["pull_request"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &push).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (200, "ignored", "fork_head_not_approved")
    );
    assert_eq!(server.store.environments()[0].spec.head_sha, HEAD_SHA);

    // Removing the approval tears it down; approving again deploys the new head.
    let mut unapprove = forked(example("unlabeled"));
    unapprove["label"]["name"] = json!("preview/approved");
    unapprove["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
    unapprove["pull_request"]["updated_at"] = json!("2019-05-15T16:01:00Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &unapprove).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (202, "deleted", "fork_approval_removed")
    );
    github.with(|s| {
        s.pulls.insert(
            2,
            fork_pull_request(
                "1111111111111111111111111111111111111111",
                &["preview/approved"],
            ),
        )
    });
    let mut reapprove = approve.clone();
    reapprove["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
    reapprove["pull_request"]["updated_at"] = json!("2019-05-15T16:02:00Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &reapprove).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    assert_eq!(
        server.store.environments()[0].spec.head_sha,
        "1111111111111111111111111111111111111111"
    );
    server.stop().await;
}

#[tokio::test]
async fn deleted_fork_head_follows_the_fork_policy() {
    let mut payload = example("opened");
    payload["pull_request"]["head"]["repo"] = Value::Null;
    let server = start_default(json!({"forks": "Deny"})).await;
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &payload).await;
    assert_eq!(
        (answer.status, answer.outcome(), answer.reason()),
        (202, "absent", "fork_denied")
    );
    server.stop().await;

    let server = start_default(json!({"forks": "Allow"})).await;
    let answer = deliver_json(
        &server,
        "pull_request",
        &delivery_id(),
        &forked(example("opened")),
    )
    .await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &payload).await;
    assert_eq!((answer.status, answer.outcome()), (202, "unchanged"));
    server.stop().await;
}

#[tokio::test]
async fn ping_examples_answer_pong() {
    let server = start_default(json!({})).await;
    let pings = examples("ping");
    assert!(!pings.is_empty());
    for ping in &pings {
        let answer = deliver_json(&server, "ping", &delivery_id(), ping).await;
        assert_eq!((answer.status, answer.outcome()), (200, "pong"));
    }
    assert_eq!(server.store.write_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn fork_prs_are_labelled_and_the_label_is_never_removed() {
    use previewd_kube::crd::LABEL_FORK;
    let fork_label = |server: &Server| {
        server.store.environments()[0]
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get(LABEL_FORK)
            .cloned()
    };
    // A PR from the repository itself carries no fork label.
    let server = start_default(json!({})).await;
    seed_opened(&server).await;
    assert_eq!(fork_label(&server), None);
    server.stop().await;

    // A fork's PR, admitted by the policy: labelled on create.
    let server = start_default(json!({"forks": "Allow"})).await;
    let answer = deliver_json(
        &server,
        "pull_request",
        &delivery_id(),
        &forked(example("opened")),
    )
    .await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    assert_eq!(fork_label(&server).as_deref(), Some("true"));

    // And on update: a push to the fork keeps it.
    let mut push = forked(example("synchronize"));
    push["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
    push["pull_request"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &push).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    assert_eq!(fork_label(&server).as_deref(), Some("true"));

    // A later payload that looks like a same-repository PR (the head repository was
    // renamed to match, say) does not remove it.
    let mut same = example("synchronize");
    same["pull_request"]["head"]["sha"] = json!("2222222222222222222222222222222222222222");
    same["pull_request"]["updated_at"] = json!("2019-05-15T16:01:00Z");
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &same).await;
    assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    let env = &server.store.environments()[0];
    assert_eq!(
        env.spec.head_sha,
        "2222222222222222222222222222222222222222"
    );
    assert_eq!(fork_label(&server).as_deref(), Some("true"));
    server.stop().await;
}

#[tokio::test]
async fn verified_deliveries_record_the_installation_of_their_repository() {
    let directory = previewd_github::client::InstallationDirectory::new();
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))])),
        WebhookMetrics::default(),
    )
    .with_installations(directory.clone());
    let server = start_with_state(state).await;

    // A forged delivery (wrong signature) records nothing.
    let mut forged = example("opened");
    forged["installation"] = json!({"id": 99, "node_id": "x"});
    let body = serde_json::to_vec(&forged).unwrap();
    let answer = send(
        &server,
        &[
            ("content-type", "application/json"),
            ("x-github-event", "pull_request"),
            ("x-github-delivery", &delivery_id()),
            ("x-hub-signature-256", &sign(b"not-the-secret", &body)),
        ],
        body,
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(directory.get(REPOSITORY).await, None);

    // A signed one records its installation for its repository, in any case.
    let mut payload = example("opened");
    payload["installation"] = json!({"id": 88, "node_id": "x"});
    let answer = deliver_json(&server, "pull_request", &delivery_id(), &payload).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(
        directory.get(&REPOSITORY.to_ascii_uppercase()).await,
        Some(88)
    );
    server.stop().await;
}
