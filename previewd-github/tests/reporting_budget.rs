//! GitHub's secondary limits, against a local server that speaks GitHub's API: the
//! client's budget keeps mutations under the configured limits a minute, an hour, in
//! points and in concurrent requests; the reporter sends only each pull request's latest
//! state, final states before intermediate ones, shows its backlog as metrics, and leaves
//! no per-PR environment on GitHub. Nothing here measures time: a gate in the server lets
//! writes through when the test says so, and every assertion counts requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use fake_github::*;
use previewd_core::source_control::{CommitState, CommitStatus, RepoRef, SourceControl};
use previewd_github::client::budget::BudgetLimits;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::metrics::ClientMetrics;
use previewd_github::reporter::GitHubReporter;
use previewd_kube::advice::view_of;
use previewd_kube::report::EnvironmentReporter;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;

fn repo() -> RepoRef {
    RepoRef::new("acme", "shop")
}

fn config(github: &FakeGitHub, budget: BudgetLimits, concurrency: usize) -> ClientConfig {
    let mut config = ClientConfig::new(github.base_url());
    // Requests wait at the server's gate as long as the test holds them.
    config.request_timeout = Duration::from_secs(60);
    config.max_retries = 2;
    config.backoff_base = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(40);
    config.mutation_spacing = Duration::from_millis(1);
    config.budget = budget;
    config.max_concurrent_requests = concurrency;
    config
}

fn client(
    github: &FakeGitHub,
    budget: BudgetLimits,
    concurrency: usize,
) -> (GitHubClient, ClientMetrics) {
    let metrics = ClientMetrics::default();
    let client = GitHubClient::new(
        config(github, budget, concurrency),
        GitHubAuth::Token(SecretString::from(TOKEN.to_string())),
        metrics.clone(),
    )
    .unwrap();
    (client, metrics)
}

/// Polls `done` until it holds (at most about 20 s; the bound is a hang guard, not a
/// measurement).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn sha(i: u64) -> String {
    format!("{i:0>40}")
}

/// Spawns `n` commit-status writes, one per commit.
fn spawn_writes(client: &GitHubClient, n: u64) -> Vec<tokio::task::JoinHandle<()>> {
    (1..=n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let status = CommitStatus::new(CommitState::Pending, "building", None);
                client
                    .set_commit_status(&repo(), &sha(i), &status)
                    .await
                    .unwrap();
            })
        })
        .collect()
}

/// Sends writes until the budget makes one wait, and returns how many GitHub received.
async fn writes_before_the_budget_waits(limits: BudgetLimits, attempts: u64) -> usize {
    let github = FakeGitHub::start().await;
    let (client, metrics) = client(&github, limits, 10);
    let tasks = spawn_writes(&client, attempts);
    until("a write waits for the budget", || {
        metrics.budget_waits.get() >= 1
    })
    .await;
    let received = github.mutation_log().len();
    // Mutations go one at a time, so the write that waits holds back every later one.
    assert!(
        tasks.iter().filter(|t| !t.is_finished()).count() as u64 >= attempts - received as u64,
        "the writes over the budget are still waiting"
    );
    assert!(github.with(|s| s.max_in_flight_mutations) <= 1);
    for task in tasks {
        task.abort();
    }
    received
}

#[tokio::test]
async fn the_budget_keeps_mutations_under_the_limit_a_minute() {
    let received = writes_before_the_budget_waits(
        BudgetLimits {
            writes_per_minute: 3,
            writes_per_hour: 1000,
            points_per_minute: 10_000,
        },
        6,
    )
    .await;
    assert_eq!(received, 3);
}

#[tokio::test]
async fn the_budget_keeps_mutations_under_the_limit_an_hour() {
    let received = writes_before_the_budget_waits(
        BudgetLimits {
            writes_per_minute: 100,
            writes_per_hour: 4,
            points_per_minute: 10_000,
        },
        7,
    )
    .await;
    assert_eq!(received, 4);
}

/// Reads cost a point, mutations five: with 12 points a minute, two mutations and two
/// reads fit, and the next read waits.
#[tokio::test]
async fn the_budget_counts_points_reads_and_mutations_alike() {
    let github = FakeGitHub::start().await;
    let (client, metrics) = client(
        &github,
        BudgetLimits {
            writes_per_minute: 100,
            writes_per_hour: 100,
            points_per_minute: 12,
        },
        10,
    );
    for task in spawn_writes(&client, 2) {
        task.await.unwrap();
    }
    client.pull_request(&repo(), 1).await.unwrap();
    client.pull_request(&repo(), 2).await.unwrap();
    assert_eq!(metrics.budget_waits.get(), 0);
    let third = {
        let client = client.clone();
        tokio::spawn(async move { client.pull_request(&repo(), 3).await })
    };
    until("the third read waits for the budget", || {
        metrics.budget_waits.get() >= 1
    })
    .await;
    assert!(!third.is_finished());
    let reads = github.with(|s| s.log.iter().filter(|l| l.method == Method::GET).count());
    assert_eq!(reads, 2, "the read over the budget was not sent");
    assert_eq!(github.mutation_log().len(), 2);
    third.abort();
}

/// At most `max_concurrent_requests` requests are at GitHub at once; the others wait in
/// the client, then all are answered.
#[tokio::test]
async fn the_client_bounds_concurrent_requests() {
    let github = FakeGitHub::start().await;
    let (client, _) = client(&github, BudgetLimits::unlimited(), 2);
    // Every answer lingers, so requests sent together would be at GitHub together.
    for i in 1..=6 {
        github.script(
            Method::GET,
            &format!("/repos/acme/shop/pulls/{i}"),
            vec![Scripted::processed_then_stall(Duration::from_millis(100))],
        );
    }
    let tasks: Vec<_> = (1..=6)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.pull_request(&repo(), i).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    github.with(|s| {
        assert_eq!(s.log.len(), 6);
        assert!(
            s.max_in_flight_requests <= 2,
            "at most two at once: {}",
            s.max_in_flight_requests
        );
    });
}

fn environment(number: u64, phase: &str) -> previewd_kube::crd::PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": format!("preview-acme-shop-{number}"), "namespace": "previews"},
        "spec": {
            "repository": "acme/shop", "prNumber": number, "branch": "feature/x",
            "headSHA": sha(number), "services": []
        },
        "status": {
            "phase": phase,
            "url": format!("https://pr-{number}.preview.acme.dev"),
            "deployedSHA": sha(number),
        }
    }))
    .unwrap()
}

/// Commit statuses GitHub received for PR `number`'s commit, in order, as
/// `(index among all commit statuses, state)`.
fn statuses_of(github: &FakeGitHub, number: u64) -> Vec<(usize, String)> {
    github.with(|s| {
        s.commit_statuses
            .iter()
            .enumerate()
            .filter(|(_, (sha_, _))| *sha_ == sha(number))
            .map(|(i, (_, body))| (i, body["state"].as_str().unwrap_or("").to_string()))
            .collect()
    })
}

/// Deployments of PR `number` (by the payload previewd gives them) and the statuses of
/// the last one.
fn deployments_of(github: &FakeGitHub, number: u64) -> (usize, Vec<serde_json::Value>) {
    github.with(|s| {
        let mine: Vec<&serde_json::Value> = s
            .deployments
            .iter()
            .filter(|d| d["payload"]["pull_request"] == number)
            .collect();
        let statuses = mine
            .last()
            .map(|d| {
                s.deployment_statuses
                    .iter()
                    .filter(|(id, _)| d["id"] == *id)
                    .map(|(_, body)| body.clone())
                    .collect()
            })
            .unwrap_or_default();
        (mine.len(), statuses)
    })
}

#[tokio::test]
async fn reports_coalesce_per_pull_request_and_final_states_go_first() {
    let github = FakeGitHub::start().await;
    let (client, _) = client(&github, BudgetLimits::unlimited(), 10);
    let scm: Arc<dyn SourceControl> = Arc::new(client);
    let reporter = GitHubReporter::new(scm, None).with_retry_base(Duration::from_millis(5));
    let mut registry = prometheus_client::registry::Registry::default();
    reporter.register(&mut registry);
    let changed = |number: u64, phase: &'static str| {
        let reporter = reporter.clone();
        async move {
            reporter
                .environment_changed(&view_of(&environment(number, phase)))
                .await
        }
    };

    let gate = github.gate_mutations();
    // PR 1's first write reaches GitHub and is held there: the lane is busy.
    changed(1, "Provisioning").await;
    until("PR 1's first write is held", || {
        github.with(|s| s.held_mutations) == 1
    })
    .await;
    // Meanwhile: PR 2 goes through three phases, PR 3 through two intermediate ones,
    // PR 4 is Ready, PR 5 opens and is deleted before anything was said about it, and
    // PR 1 becomes Ready while its Provisioning report is on the wire.
    for phase in ["Pending", "Provisioning", "Ready"] {
        changed(2, phase).await;
    }
    changed(3, "Pending").await;
    changed(3, "Provisioning").await;
    changed(4, "Ready").await;
    changed(5, "Pending").await;
    reporter
        .environment_deleted(&view_of(&environment(5, "Terminating")))
        .await;
    changed(1, "Ready").await;

    // The backlog: PRs 1 to 5, one state each.
    assert_eq!(reporter.backlog(), 5);
    assert_eq!(reporter.superseded(), 4, "PR 2 twice, PR 3 once, PR 5 once");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "previewd_github_report_backlog 5"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("previewd_github_report_oldest_pending_seconds ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("previewd_github_reports_superseded_total ")),
        "{text}"
    );

    gate.add_permits(1000);
    reporter.idle().await;
    assert_eq!(reporter.backlog(), 0);
    assert_eq!(reporter.failures(), 0);

    // A superseded state is never sent: one commit status for each of PRs 2, 3 and 4
    // (their latest state), PR 1's Provisioning (already on the wire) then its Ready.
    let [p1, p2, p3, p4, p5] = [1, 2, 3, 4, 5].map(|n| statuses_of(&github, n));
    assert_eq!(
        p1.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
        ["pending", "success"]
    );
    assert_eq!(
        p2.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
        ["success"]
    );
    assert_eq!(
        p3.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
        ["pending"]
    );
    assert_eq!(
        p4.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
        ["success"]
    );
    // PR 5 was gone before anything was said about it: no write at all.
    assert!(p5.is_empty());
    assert_eq!(deployments_of(&github, 5).0, 0);
    // Final states before intermediate ones: PR 3 (Provisioning) is sent after the Ready
    // of PRs 1, 2 and 4, though it was queued before two of them.
    let last_final = [&p1, &p2, &p4]
        .iter()
        .map(|p| p.last().unwrap().0)
        .max()
        .unwrap();
    assert!(p3[0].0 > last_final, "{p1:?} {p2:?} {p3:?} {p4:?}");
    // PR 1's deployment was created for its Ready state only (its Provisioning report
    // stopped before its next write) and, like every Ready PR's, carries the PR's URL.
    for number in [1, 2, 4] {
        let (count, statuses) = deployments_of(&github, number);
        assert_eq!(count, 1, "PR {number}");
        let last = statuses.last().unwrap();
        assert_eq!(last["state"], "success", "PR {number}");
        assert_eq!(
            last["environment_url"],
            format!("https://pr-{number}.preview.acme.dev"),
            "PR {number}"
        );
    }

    // PRs close: each deployment goes inactive, and GitHub is left with the one shared
    // environment, no `preview/pr-<n>`.
    for number in [1, 2, 3, 4] {
        reporter
            .environment_deleted(&view_of(&environment(number, "Terminating")))
            .await;
    }
    reporter.idle().await;
    for number in [1, 2, 3, 4] {
        let (count, statuses) = deployments_of(&github, number);
        assert_eq!(count, 1, "PR {number}");
        assert_eq!(statuses.last().unwrap()["state"], "inactive", "PR {number}");
    }
    github.with(|s| {
        assert_eq!(
            s.environments
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["preview"]
        );
        assert!(!s.environments.iter().any(|e| e.starts_with("preview/pr-")));
    });
}
