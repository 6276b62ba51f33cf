//! The REST client against a local server that speaks GitHub's API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_github;

use std::sync::Arc;
use std::time::Duration;

use fake_github::*;
use previewd_core::Phase;
use previewd_core::source_control::{
    CommentUpsert, CommitState, CommitStatus, DeploymentRequest, DeploymentState,
    DeploymentStatusUpdate, PullRequestDiff, RepoRef, SourceControl, SourceControlError,
    deployment_environment,
};
use previewd_github::client::{AppCredentials, ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::comment::{COMMENT_MARKER, CommentView, TestsView, render_comment};
use previewd_github::metrics::ClientMetrics;
use reqwest::Method;
use secrecy::SecretString;

fn repo() -> RepoRef {
    RepoRef::new("acme", "shop")
}

fn fast_config(github: &FakeGitHub) -> ClientConfig {
    let mut config = ClientConfig::new(github.base_url());
    config.request_timeout = Duration::from_millis(500);
    config.max_retries = 5;
    config.backoff_base = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(40);
    config.secondary_rate_limit_wait = Duration::from_millis(20);
    config.rate_limit_reset_margin = Duration::ZERO;
    config.mutation_spacing = Duration::from_millis(1);
    config
}

fn token_client(github: &FakeGitHub) -> GitHubClient {
    GitHubClient::new(
        fast_config(github),
        GitHubAuth::Token(SecretString::from(TOKEN.to_string())),
        ClientMetrics::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn sticky_comment_is_updated_in_place_across_ten_events() {
    let github = FakeGitHub::start().await;
    github.with(|s| {
        for i in 0..230 {
            s.comments.push(Comment {
                id: i + 1,
                body: format!("review comment {i}"),
                user: format!("reviewer{}", i % 3),
            });
        }
        // Someone else planted the marker: it must never be edited.
        s.comments.push(Comment {
            id: 5000,
            body: format!("{COMMENT_MARKER}\nfake preview at https://evil.example"),
            user: "mallory".into(),
        });
    });
    let client = token_client(&github);
    let phases = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Provisioning,
        Phase::Ready,
        Phase::Testing,
        Phase::Testing,
        Phase::Failed,
        Phase::Provisioning,
        Phase::Ready,
        Phase::Complete,
    ];
    let mut results = Vec::new();
    let mut last_body = String::new();
    for (i, phase) in phases.iter().enumerate() {
        let view = CommentView {
            phase: Some(*phase),
            url: Some("https://pr-7.preview.acme.dev".into()),
            head_sha: Some(format!("{i:0>40}")),
            tests: Some(TestsView {
                total: 10,
                passed: i as i64,
                failed: 10 - i as i64,
                ..TestsView::default()
            }),
            ..CommentView::default()
        };
        last_body = render_comment(&view);
        results.push(client.upsert_comment(&repo(), 7, &last_body).await.unwrap());
    }
    assert!(matches!(results[0], CommentUpsert::Created(_)));
    let id = results[0].id();
    for r in &results[1..] {
        assert_eq!(*r, CommentUpsert::Updated(id));
    }
    // Same body again: nothing is sent.
    assert_eq!(
        client.upsert_comment(&repo(), 7, &last_body).await.unwrap(),
        CommentUpsert::Unchanged(id)
    );
    github.with(|s| {
        let mine: Vec<&Comment> = s
            .comments
            .iter()
            .filter(|c| c.body.contains(COMMENT_MARKER) && c.user == BOT)
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].body, last_body);
        assert!(mine[0].body.contains("**Complete**"));
        let planted = s.comments.iter().find(|c| c.id == 5000).unwrap();
        assert!(planted.body.contains("evil.example"));
    });
    assert_eq!(
        github.hits(&Method::POST, "/repos/acme/shop/issues/7/comments"),
        1
    );
    assert_eq!(
        github.hits(
            &Method::PATCH,
            &format!("/repos/acme/shop/issues/comments/{}", id.0)
        ),
        9
    );
    // 231 comments, 100 per page: every lookup reads three pages (plus the bot's own).
    assert!(github.hits(&Method::GET, "/repos/acme/shop/issues/7/comments") >= 33);
    assert_eq!(github.hits(&Method::GET, "/user"), 1, "bot login is cached");
}

#[tokio::test]
async fn commit_status_and_deployment_lifecycle() {
    let github = FakeGitHub::start().await;
    let client = token_client(&github);
    let sha = "abcdef1234567890abcdef1234567890abcdef12";
    let long = "x".repeat(300);
    client
        .set_commit_status(
            &repo(),
            sha,
            &CommitStatus::new(
                CommitState::Pending,
                long,
                Some("https://pr-7.preview.acme.dev".into()),
            ),
        )
        .await
        .unwrap();
    client
        .set_commit_status(
            &repo(),
            sha,
            &CommitStatus::new(CommitState::Success, "Preview ready", None),
        )
        .await
        .unwrap();
    github.with(|s| {
        assert_eq!(s.statuses.len(), 2);
        assert_eq!(s.statuses[0]["state"], "pending");
        assert_eq!(s.statuses[0]["context"], "previewd");
        assert_eq!(s.statuses[0]["target_url"], "https://pr-7.preview.acme.dev");
        assert_eq!(
            s.statuses[0]["description"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            140
        );
        assert_eq!(s.statuses[1]["state"], "success");
        assert!(s.statuses[1].get("target_url").is_none());
    });

    let request = DeploymentRequest {
        git_ref: sha.into(),
        environment: deployment_environment(7),
        description: "previewd environment for PR #7".into(),
    };
    let id = client.create_deployment(&repo(), &request).await.unwrap();
    // Creating again for the same ref and environment reuses it.
    assert_eq!(
        client.create_deployment(&repo(), &request).await.unwrap(),
        id
    );
    github.with(|s| {
        assert_eq!(s.deployments.len(), 1);
        let d = &s.deployments[0];
        assert_eq!(d["environment"], "preview/pr-7");
        assert_eq!(d["ref"], sha);
        assert_eq!(d["transient_environment"], true);
        assert_eq!(d["production_environment"], false);
        assert_eq!(d["required_contexts"], serde_json::json!([]));
        assert_eq!(d["auto_merge"], false);
    });
    for state in [
        DeploymentState::InProgress,
        DeploymentState::Success,
        DeploymentState::Inactive,
    ] {
        client
            .set_deployment_status(
                &repo(),
                id,
                &DeploymentStatusUpdate {
                    state,
                    environment_url: Some("https://pr-7.preview.acme.dev".into()),
                    log_url: Some("https://previewd.acme.dev/envs/pr-7".into()),
                    description: "d".repeat(200),
                },
            )
            .await
            .unwrap();
    }
    github.with(|s| {
        let states: Vec<&str> = s
            .deployment_statuses
            .iter()
            .map(|(_, b)| b["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["in_progress", "success", "inactive"]);
        assert!(s.deployment_statuses.iter().all(|(d, b)| *d == id.0
            && b["environment_url"] == "https://pr-7.preview.acme.dev"
            && b["log_url"] == "https://previewd.acme.dev/envs/pr-7"
            && b["description"].as_str().unwrap().chars().count() == 140));
    });
    // A deployment that does not exist: 404, not retried.
    let err = client
        .set_deployment_status(
            &repo(),
            previewd_core::source_control::DeploymentId(1),
            &DeploymentStatusUpdate {
                state: DeploymentState::Success,
                environment_url: None,
                log_url: None,
                description: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SourceControlError::NotFound(_)), "{err:?}");
    assert_eq!(
        github.hits(&Method::POST, "/repos/acme/shop/deployments/1/statuses"),
        1
    );
}

#[tokio::test]
async fn pull_request_files_and_diff() {
    let github = FakeGitHub::start().await;
    github.with(|s| {
        s.pr_files.insert(7, 250);
        s.pr_files.insert(8, 3100);
        s.pr_files.insert(9, 400);
        s.diff_refused.push(9);
    });
    let client = token_client(&github);
    let pr = client.pull_request(&repo(), 7).await.unwrap();
    assert_eq!(pr.number, 7);
    assert_eq!(pr.head_sha, "abcdef1234567890abcdef1234567890abcdef12");
    assert_eq!(pr.head_ref, "feature/checkout");
    assert_eq!(pr.labels, ["preview"]);
    assert!(!pr.is_fork());

    let files = client.changed_files(&repo(), 7).await.unwrap();
    assert_eq!(files.files.len(), 250);
    assert!(!files.incomplete);
    assert_eq!(
        github.hits(&Method::GET, "/repos/acme/shop/pulls/7/files"),
        3
    );

    let capped = client.changed_files(&repo(), 8).await.unwrap();
    assert_eq!(capped.files.len(), 3000);
    assert!(capped.incomplete, "GitHub stops at 3000 files");
    assert_eq!(
        github.hits(&Method::GET, "/repos/acme/shop/pulls/8/files"),
        30
    );

    match client.diff(&repo(), 7).await.unwrap() {
        PullRequestDiff::Unified(text) => assert!(text.contains("+b 7")),
        other => panic!("expected a unified diff, got {other:?}"),
    }
    match client.diff(&repo(), 9).await.unwrap() {
        PullRequestDiff::Files(files) => {
            assert_eq!(files.files.len(), 400);
            assert!(files.files[0].patch.is_some());
        }
        other => panic!("expected the file list, got {other:?}"),
    }
    // The refused diff was asked once (406 is not retried).
    let diff_requests = github.with(|s| {
        s.log
            .iter()
            .filter(|l| {
                l.path == "/repos/acme/shop/pulls/9" && l.accept == "application/vnd.github.diff"
            })
            .count()
    });
    assert_eq!(diff_requests, 1);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let github = FakeGitHub::start().await;
    let client = token_client(&github);
    let path = "/repos/acme/shop/pulls/1";
    github.script(Method::GET, path, vec![Scripted::status(404, "Not Found")]);
    let err = client.pull_request(&repo(), 1).await.unwrap_err();
    assert!(matches!(err, SourceControlError::NotFound(_)), "{err:?}");
    assert_eq!(github.hits(&Method::GET, path), 1);

    github.script(
        Method::GET,
        path,
        vec![Scripted::status(422, "Validation Failed")],
    );
    let err = client.pull_request(&repo(), 1).await.unwrap_err();
    assert!(matches!(err, SourceControlError::Rejected(_)), "{err:?}");
    assert_eq!(github.hits(&Method::GET, path), 2);

    github.script(
        Method::GET,
        path,
        vec![Scripted::status(400, "Problems parsing JSON")],
    );
    let err = client.pull_request(&repo(), 1).await.unwrap_err();
    assert!(matches!(err, SourceControlError::Rejected(_)), "{err:?}");
    assert_eq!(github.hits(&Method::GET, path), 3);

    github.script(
        Method::GET,
        path,
        vec![Scripted::status(
            403,
            "Resource not accessible by integration",
        )],
    );
    let err = client.pull_request(&repo(), 1).await.unwrap_err();
    assert!(matches!(err, SourceControlError::Forbidden(_)), "{err:?}");
    assert_eq!(github.hits(&Method::GET, path), 4);

    // Wrong token: 401, not retried.
    let bad = GitHubClient::new(
        fast_config(&github),
        GitHubAuth::Token(SecretString::from("wrong".to_string())),
        ClientMetrics::default(),
    )
    .unwrap();
    let err = bad.pull_request(&repo(), 1).await.unwrap_err();
    assert!(
        matches!(err, SourceControlError::Unauthorized(_)),
        "{err:?}"
    );
    assert_eq!(github.hits(&Method::GET, path), 5);
}

#[tokio::test]
async fn rate_limits_are_waited_out() {
    let github = FakeGitHub::start().await;
    let metrics = ClientMetrics::default();
    let client = GitHubClient::new(
        fast_config(&github),
        GitHubAuth::Token(SecretString::from(TOKEN.to_string())),
        metrics.clone(),
    )
    .unwrap();
    let status = CommitStatus::new(CommitState::Pending, "building", None);
    let path = "/repos/acme/shop/statuses/abc1234";
    let secondary =
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";

    // Secondary limit with Retry-After.
    github.script(
        Method::POST,
        path,
        vec![Scripted::status(403, secondary).header("retry-after", "1")],
    );
    client
        .set_commit_status(&repo(), "abc1234", &status)
        .await
        .unwrap();
    assert_eq!(github.hits(&Method::POST, path), 2);

    // Secondary limit without Retry-After, twice: waits the base, then doubles.
    github.script(
        Method::POST,
        path,
        vec![
            Scripted::status(403, secondary),
            Scripted::status(403, secondary),
        ],
    );
    client
        .set_commit_status(&repo(), "abc1234", &status)
        .await
        .unwrap();
    assert_eq!(github.hits(&Method::POST, path), 5);

    // Primary limit exhausted: wait until the reset time.
    let reset = jiff::Timestamp::now().as_second().to_string();
    github.script(
        Method::POST,
        path,
        vec![
            Scripted::status(403, "API rate limit exceeded for installation.")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", &reset),
        ],
    );
    client
        .set_commit_status(&repo(), "abc1234", &status)
        .await
        .unwrap();
    assert_eq!(github.hits(&Method::POST, path), 7);

    // 429 with Retry-After.
    github.script(
        Method::POST,
        path,
        vec![Scripted::status(429, "Too Many Requests").header("retry-after", "0")],
    );
    client
        .set_commit_status(&repo(), "abc1234", &status)
        .await
        .unwrap();
    assert_eq!(github.hits(&Method::POST, path), 9);

    // A Retry-After beyond the longest wait the client accepts fails fast.
    github.script(
        Method::POST,
        path,
        vec![Scripted::status(403, secondary).header("retry-after", "3600")],
    );
    let err = client
        .set_commit_status(&repo(), "abc1234", &status)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SourceControlError::RateLimited {
            retry_after_secs: Some(3600)
        }
    );
    assert_eq!(github.hits(&Method::POST, path), 10);
    assert!(metrics.retries.get() >= 5);
    // The remaining budget follows x-ratelimit-remaining of the last answer.
    let remaining = github.with(|s| s.rate_limit_remaining);
    assert_eq!(metrics.rate_limit_remaining.get(), remaining as i64);
}

#[tokio::test]
async fn server_errors_and_stalls_are_retried_a_bounded_number_of_times() {
    let github = FakeGitHub::start().await;
    let client = token_client(&github);
    let path = "/repos/acme/shop/pulls/3";
    github.script(
        Method::GET,
        path,
        vec![Scripted::status(502, "Bad Gateway")],
    );
    assert_eq!(client.pull_request(&repo(), 3).await.unwrap().number, 3);
    assert_eq!(github.hits(&Method::GET, path), 2);

    // A stalled answer times out and the retry succeeds.
    github.script(
        Method::GET,
        path,
        vec![Scripted::stall(Duration::from_secs(3))],
    );
    assert_eq!(client.pull_request(&repo(), 3).await.unwrap().number, 3);
    assert_eq!(github.hits(&Method::GET, path), 4);

    // Always failing: 1 attempt + 5 retries, then an error.
    github.script(
        Method::GET,
        path,
        (0..6)
            .map(|_| Scripted::status(503, "Unavailable"))
            .collect(),
    );
    let err = client.pull_request(&repo(), 3).await.unwrap_err();
    assert!(matches!(err, SourceControlError::Unavailable(_)), "{err:?}");
    assert_eq!(github.hits(&Method::GET, path), 10);

    let mut config = fast_config(&github);
    config.max_retries = 1;
    let impatient = GitHubClient::new(
        config,
        GitHubAuth::Token(SecretString::from(TOKEN.to_string())),
        ClientMetrics::default(),
    )
    .unwrap();
    github.script(
        Method::GET,
        path,
        vec![
            Scripted::stall(Duration::from_secs(3)),
            Scripted::stall(Duration::from_secs(3)),
        ],
    );
    let err = impatient.pull_request(&repo(), 3).await;
    match err {
        Err(SourceControlError::Unavailable(msg)) => assert!(msg.contains("in time"), "{msg}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(github.hits(&Method::GET, path), 12);
}

#[tokio::test]
async fn mutations_are_serialised() {
    let github = FakeGitHub::start().await;
    let client = token_client(&github);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .set_commit_status(
                    &repo(),
                    "abc1234",
                    &CommitStatus::new(CommitState::Pending, format!("step {i}"), None),
                )
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    github.with(|s| {
        assert_eq!(s.statuses.len(), 8);
        assert_eq!(s.max_in_flight_mutations, 1);
    });
}

/// An RSA key pair made with openssl for this test run.
fn app_key_pair() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    let public = dir.path().join("app.pub.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed to make a test key");
    assert!(status.success());
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success());
    (
        std::fs::read_to_string(key).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

fn app_client(github: &FakeGitHub, private_pem: &str, slug: Option<&str>) -> GitHubClient {
    GitHubClient::new(
        fast_config(github),
        GitHubAuth::App(AppCredentials {
            app_id: APP_ID,
            installation_id: Some(INSTALLATION_ID),
            private_key_pem: SecretString::from(private_pem.to_string()),
            app_slug: slug.map(str::to_owned),
        }),
        ClientMetrics::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn github_app_tokens_are_verified_cached_and_refreshed() {
    let (private_pem, public_pem) = app_key_pair();
    let github = FakeGitHub::start().await;
    github.with(|s| s.public_key_pem = Some(public_pem.clone()));
    let client = app_client(&github, &private_pem, None);

    // Concurrent first calls share one token.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.pull_request(&repo(), 5).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().number, 5);
    }
    for _ in 0..5 {
        client.pull_request(&repo(), 5).await.unwrap();
    }
    github.with(|s| {
        assert!(s.jwt_errors.is_empty(), "{:?}", s.jwt_errors);
        assert_eq!(s.issued_tokens, ["ghs_1"]);
    });
    let token_requests = format!("/app/installations/{INSTALLATION_ID}/access_tokens");
    assert_eq!(github.hits(&Method::POST, &token_requests), 1);

    // A revoked token: one 401, a fresh token, success.
    github.with(|s| s.revoked_tokens.push("ghs_1".into()));
    client.pull_request(&repo(), 5).await.unwrap();
    github.with(|s| assert_eq!(s.issued_tokens.len(), 2));

    // The bot login of an App is `<slug>[bot]`, the slug read from GET /app with the JWT;
    // the sticky comment is found by it.
    assert_eq!(
        client.bot_login().await.unwrap(),
        format!("{APP_SLUG}[bot]")
    );
    let first = client
        .upsert_comment(&repo(), 5, "state one")
        .await
        .unwrap();
    let second = client
        .upsert_comment(&repo(), 5, "state two")
        .await
        .unwrap();
    assert!(matches!(first, CommentUpsert::Created(_)));
    assert_eq!(second, CommentUpsert::Updated(first.id()));
    github.with(|s| {
        assert_eq!(s.comments.len(), 1);
        assert_eq!(s.comments[0].body, format!("{COMMENT_MARKER}\nstate two"));
    });
}

#[tokio::test]
async fn github_app_tokens_near_expiry_are_refreshed_early() {
    let (private_pem, public_pem) = app_key_pair();
    let github = FakeGitHub::start().await;
    github.with(|s| {
        s.public_key_pem = Some(public_pem.clone());
        // Inside the five-minute refresh margin from the start.
        s.token_lifetime = Duration::from_secs(4 * 60);
    });
    let client = Arc::new(app_client(&github, &private_pem, Some(APP_SLUG)));
    for _ in 0..3 {
        client.pull_request(&repo(), 5).await.unwrap();
    }
    github.with(|s| assert_eq!(s.issued_tokens.len(), 3));
    // A key that is not the app's is refused by the server.
    let (other_private, _) = app_key_pair();
    let impostor = app_client(&github, &other_private, Some(APP_SLUG));
    let err = impostor.pull_request(&repo(), 5).await.unwrap_err();
    assert!(
        matches!(err, SourceControlError::Unauthorized(_)),
        "{err:?}"
    );
    github.with(|s| assert!(!s.jwt_errors.is_empty()));
    // A malformed key fails at construction.
    let err = GitHubClient::new(
        fast_config(&github),
        GitHubAuth::App(AppCredentials {
            app_id: APP_ID,
            installation_id: Some(INSTALLATION_ID),
            private_key_pem: SecretString::from("not a key".to_string()),
            app_slug: None,
        }),
        ClientMetrics::default(),
    )
    .unwrap_err();
    assert_eq!(err.category(), "config");
}

fn environment(phase: &str, sha: &str) -> previewd_kube::crd::PreviewEnvironment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "preview-acme-shop-7", "namespace": "previews"},
        "spec": {
            "repository": "acme/shop", "prNumber": 7, "branch": "feature/checkout",
            "headSHA": sha, "services": []
        },
        "status": {
            "phase": phase,
            "url": "https://pr-7.preview.acme.dev",
            "urls": {"web": "https://pr-7.preview.acme.dev/web"},
            "deployedSHA": sha,
            "tests": {"total": 4, "passed": 4, "failed": 0, "skipped": 0}
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn reporter_sends_the_latest_state_once_per_change() {
    use previewd_github::reporter::GitHubReporter;
    use previewd_kube::advice::view_of;
    use previewd_kube::report::EnvironmentReporter;

    let github = FakeGitHub::start().await;
    let client: Arc<dyn SourceControl> = Arc::new(token_client(&github));
    let reporter = GitHubReporter::new(client, Some("https://previewd.acme.dev/envs".into()))
        .with_retry_base(Duration::from_millis(5));
    let sha = "abcdef1234567890abcdef1234567890abcdef12";
    for phase in ["Pending", "Provisioning", "Ready", "Testing", "Complete"] {
        reporter
            .environment_changed(&view_of(&environment(phase, sha)))
            .await;
    }
    reporter.idle().await;
    github.with(|s| {
        let last = s.statuses.last().unwrap();
        assert_eq!(last["state"], "success");
        assert_eq!(last["context"], "previewd");
        assert_eq!(s.deployments.len(), 1);
        let (_, status) = s.deployment_statuses.last().unwrap();
        assert_eq!(status["state"], "success");
        assert_eq!(status["environment_url"], "https://pr-7.preview.acme.dev");
        assert_eq!(
            status["log_url"],
            "https://previewd.acme.dev/envs/previews/preview-acme-shop-7"
        );
        assert_eq!(s.comments.len(), 1);
        assert!(s.comments[0].body.contains("**Complete**"));
        assert!(s.comments[0].body.contains("4 passed"));
    });
    // The same state again sends no status, only looks at the comment.
    let statuses_before = github.with(|s| (s.statuses.len(), s.deployment_statuses.len()));
    reporter
        .environment_changed(&view_of(&environment("Complete", sha)))
        .await;
    reporter.idle().await;
    assert_eq!(
        github.with(|s| (s.statuses.len(), s.deployment_statuses.len())),
        statuses_before
    );

    // Deletion: the deployment goes inactive and the comment says so, in place.
    reporter
        .environment_deleted(&view_of(&environment("Terminating", sha)))
        .await;
    reporter.idle().await;
    github.with(|s| {
        let (_, status) = s.deployment_statuses.last().unwrap();
        assert_eq!(status["state"], "inactive");
        assert_eq!(s.comments.len(), 1);
        assert!(s.comments[0].body.contains("Terminated"));
        assert_eq!(s.deployments.len(), 1);
    });
    assert_eq!(reporter.failures(), 0);

    // GitHub down for a while (30 answers of 503, more than one send's own retries): the
    // reporter counts every failed attempt and keeps trying until the report is delivered.
    let down_sha = "1".repeat(40);
    github.script(
        Method::POST,
        &format!("/repos/acme/shop/statuses/{down_sha}"),
        (0..30)
            .map(|_| Scripted::status(503, "Unavailable"))
            .collect(),
    );
    reporter
        .environment_changed(&view_of(&environment("Ready", &down_sha)))
        .await;
    reporter.idle().await;
    assert!(reporter.failures() >= 1, "failed attempts are counted");
    github.with(|s| {
        let last = s.statuses.last().unwrap();
        assert_eq!(
            last["state"], "success",
            "delivered once GitHub answered again"
        );
    });
}

/// The attack: GitHub carries out a create but the answer is lost (timeout), and a
/// naive client sends the POST again. The client looks before creating again, so there
/// is still exactly one deployment and one sticky comment.
#[tokio::test]
async fn a_create_whose_answer_is_lost_is_not_duplicated() {
    let github = FakeGitHub::start().await;
    let client = token_client(&github);
    let request = DeploymentRequest {
        git_ref: "abc1234".into(),
        environment: deployment_environment(9),
        description: "preview".into(),
    };
    github.script(
        Method::POST,
        "/repos/acme/shop/deployments",
        vec![Scripted::processed_then_stall(Duration::from_secs(2))],
    );
    let id = client.create_deployment(&repo(), &request).await.unwrap();
    github.with(|s| {
        assert_eq!(s.deployments.len(), 1, "exactly one deployment");
        assert_eq!(s.deployments[0]["id"], id.0);
    });
    assert_eq!(
        github.hits(&Method::POST, "/repos/acme/shop/deployments"),
        1
    );

    github.script(
        Method::POST,
        "/repos/acme/shop/issues/9/comments",
        vec![Scripted::processed_then_stall(Duration::from_secs(2))],
    );
    let body = format!("{COMMENT_MARKER}\nfirst");
    let upsert = client.upsert_comment(&repo(), 9, &body).await.unwrap();
    assert!(matches!(upsert, CommentUpsert::Unchanged(_)), "{upsert:?}");
    github.with(|s| assert_eq!(s.comments.len(), 1, "exactly one comment"));
    assert_eq!(
        github.hits(&Method::POST, "/repos/acme/shop/issues/9/comments"),
        1
    );

    // A 502 from a proxy after the create is treated the same way.
    github.script(
        Method::POST,
        "/repos/acme/shop/deployments",
        vec![Scripted::status(502, "Bad Gateway")],
    );
    let other = DeploymentRequest {
        git_ref: "def5678".into(),
        ..request
    };
    client.create_deployment(&repo(), &other).await.unwrap();
    github.with(|s| assert_eq!(s.deployments.len(), 2));
}

/// One pull request's writes are rate limited for a while; another pull request's
/// writes go through meanwhile instead of queueing behind the wait.
#[tokio::test]
async fn a_rate_limit_wait_does_not_hold_the_write_gate() {
    let github = FakeGitHub::start().await;
    let mut config = fast_config(&github);
    config.max_rate_limit_wait = Duration::from_secs(60);
    let client = GitHubClient::new(
        config,
        GitHubAuth::Token(SecretString::from(TOKEN.to_string())),
        ClientMetrics::default(),
    )
    .unwrap();
    let limited = "/repos/acme/shop/statuses/aaaaaaa";
    github.script(
        Method::POST,
        limited,
        vec![
            Scripted::status(403, "You have exceeded a secondary rate limit.")
                .header("retry-after", "3"),
        ],
    );
    let status = CommitStatus::new(CommitState::Pending, "building", None);
    let slow = {
        let client = client.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            client
                .set_commit_status(&repo(), "aaaaaaa", &status)
                .await
                .unwrap();
            started.elapsed()
        })
    };
    // Let the first request meet its rate limit.
    while github.hits(&Method::POST, limited) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .set_commit_status(&repo(), "bbbbbbb", &status)
        .await
        .unwrap();
    // The other PR's write completed while the rate-limited one is still waiting.
    assert!(
        !slow.is_finished(),
        "the rate-limited request is still waiting"
    );
    assert_eq!(
        github.hits(&Method::POST, "/repos/acme/shop/statuses/bbbbbbb"),
        1
    );
    let waited = slow.await.unwrap();
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert_eq!(github.hits(&Method::POST, limited), 2);
}

#[tokio::test]
async fn commit_checks_read_runs_suites_and_statuses_of_one_commit() {
    use previewd_core::checks::{CheckState, Gate, gate};
    let github = FakeGitHub::start().await;
    let sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
    github.with(|s| {
        s.check_runs.push(serde_json::json!({
            "name": "build", "head_sha": sha, "status": "completed", "conclusion": "success",
            "started_at": "2026-11-29T12:00:00Z", "completed_at": "2026-11-29T12:04:00Z"
        }));
        s.check_runs.push(serde_json::json!({
            "name": "lint", "head_sha": sha, "status": "in_progress", "conclusion": null,
            "started_at": "2026-11-29T12:00:00Z"
        }));
        // Another commit's run and a run nobody requires are left out.
        s.check_runs.push(serde_json::json!({
            "name": "build", "head_sha": "ffff", "status": "completed", "conclusion": "failure"
        }));
        s.check_runs.push(serde_json::json!({
            "name": "docs", "head_sha": sha, "status": "completed", "conclusion": "failure"
        }));
        s.check_suites.push(serde_json::json!({
            "head_sha": sha, "status": "completed", "conclusion": "success",
            "updated_at": "2026-11-29T12:05:00Z",
            "app": {"slug": "octocoders-linter", "name": "Octocoders Linter"}
        }));
        for state in ["pending", "failure"] {
            s.commit_statuses.push((
                sha.to_string(),
                serde_json::json!({"context": "ci/jenkins", "state": state,
                                   "updated_at": "2026-11-29T12:06:00+00:00"}),
            ));
        }
    });
    let client = token_client(&github);
    let required: Vec<previewd_core::checks::RequiredCheck> =
        ["build", "lint", "octocoders-linter", "ci/jenkins"]
            .into_iter()
            .map(Into::into)
            .collect();
    let checks = SourceControl::commit_checks(&client, &repo(), sha, &required)
        .await
        .unwrap();
    assert_eq!(checks.sha, sha);
    assert_eq!(checks.checks.len(), 4, "{checks:?}");
    assert_eq!(checks.checks["build"].state, CheckState::Success);
    assert_eq!(checks.checks["build"].at, "2026-11-29T12:04:00Z");
    assert_eq!(checks.checks["lint"].state, CheckState::Pending);
    assert_eq!(
        checks.checks["octocoders-linter"].state,
        CheckState::Success
    );
    assert_eq!(checks.checks["ci/jenkins"].state, CheckState::Failure);
    assert_eq!(checks.checks["ci/jenkins"].at, "2026-11-29T12:06:00Z");
    assert_eq!(
        gate(&required, sha, &checks),
        Gate::Failed("ci/jenkins".into())
    );
    for path in ["check-runs", "check-suites", "status"] {
        assert_eq!(
            github.hits(
                &Method::GET,
                &format!("/repos/acme/shop/commits/{sha}/{path}")
            ),
            1
        );
    }

    // GitHub refusing the read (no Checks permission) is an error, not a verdict.
    github.script(
        Method::GET,
        &format!("/repos/acme/shop/commits/{sha}/check-runs"),
        vec![Scripted::status(
            403,
            "Resource not accessible by integration",
        )],
    );
    let refused = SourceControl::commit_checks(&client, &repo(), sha, &required).await;
    assert!(
        matches!(refused, Err(SourceControlError::Forbidden(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_poll_counts_only_the_bound_app_for_a_bound_check() {
    use previewd_core::checks::{CheckState, Gate, RequiredCheck, gate};
    const ACTIONS: u64 = 15368;
    const LINTER: u64 = 29310;
    let github = FakeGitHub::start().await;
    let sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
    // The pull request's own workflow publishes a passing "lint" check run and a "lint"
    // commit status; the bound App's run is still in progress.
    github.with(|s| {
        s.check_runs.push(serde_json::json!({
            "name": "lint", "head_sha": sha, "status": "completed", "conclusion": "success",
            "completed_at": "2026-11-29T12:09:00Z",
            "app": {"id": ACTIONS, "slug": "github-actions"}
        }));
        s.check_runs.push(serde_json::json!({
            "name": "lint", "head_sha": sha, "status": "in_progress", "conclusion": null,
            "started_at": "2026-11-29T12:00:00Z",
            "app": {"id": LINTER, "slug": "octocoders-linter"}
        }));
        s.commit_statuses.push((
            sha.to_string(),
            serde_json::json!({"context": "lint", "state": "success",
                               "updated_at": "2026-11-29T12:09:30+00:00"}),
        ));
    });
    let client = token_client(&github);
    let required = vec![RequiredCheck::bound("lint", LINTER)];
    let checks = SourceControl::commit_checks(&client, &repo(), sha, &required)
        .await
        .unwrap();
    assert_eq!(
        checks.checks["lint"].state,
        CheckState::Pending,
        "{checks:?}"
    );
    assert_eq!(checks.checks["lint"].app, Some(LINTER));
    assert_eq!(
        gate(&required, sha, &checks),
        Gate::Waiting(vec!["lint".into()])
    );
    // The bound App's run passes: now the gate opens.
    github.with(|s| {
        s.check_runs.push(serde_json::json!({
            "name": "lint", "head_sha": sha, "status": "completed", "conclusion": "success",
            "completed_at": "2026-11-29T12:10:00Z",
            "app": {"id": LINTER, "slug": "octocoders-linter"}
        }));
    });
    let checks = SourceControl::commit_checks(&client, &repo(), sha, &required)
        .await
        .unwrap();
    assert_eq!(gate(&required, sha, &checks), Gate::Open);
    // Unbound, the workflow's run is as good as any (the behaviour of unbound checks).
    let unbound = vec![RequiredCheck::named("lint")];
    github.with(|s| s.check_runs.retain(|r| r["app"]["id"] == ACTIONS));
    let checks = SourceControl::commit_checks(&client, &repo(), sha, &unbound)
        .await
        .unwrap();
    assert_eq!(gate(&unbound, sha, &checks), Gate::Open);
}

fn app_client_with_default(
    github: &FakeGitHub,
    private_pem: &str,
    default: Option<u64>,
) -> GitHubClient {
    GitHubClient::new(
        fast_config(github),
        GitHubAuth::App(AppCredentials {
            app_id: APP_ID,
            installation_id: default,
            private_key_pem: SecretString::from(private_pem.to_string()),
            app_slug: Some(APP_SLUG.to_string()),
        }),
        ClientMetrics::default(),
    )
    .unwrap()
}

/// The installations whose tokens the requests about `repository` carried (the App-level
/// lookup, made with the JWT, carries none).
fn installations_used(github: &FakeGitHub, repository: &str) -> Vec<Option<u64>> {
    let lookup = format!("GET /repos/{repository}/installation");
    let mut used: Vec<Option<u64>> = github
        .repository_requests(repository)
        .into_iter()
        .filter(|(request, _)| *request != lookup)
        .map(|(_, installation)| installation)
        .collect();
    used.dedup();
    used
}

#[tokio::test]
async fn one_app_client_serves_two_installations() {
    let (private_pem, public_pem) = app_key_pair();
    let github = FakeGitHub::start().await;
    github.with(|s| s.public_key_pem = Some(public_pem.clone()));
    github.two_installations(&["acme/shop"], &["globex/web"]);
    let shop = RepoRef::new("acme", "shop");
    let web = RepoRef::new("globex", "web");
    // No default installation: each repository's comes from GitHub.
    let client = app_client_with_default(&github, &private_pem, None);

    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = client.clone();
        let repo = if i % 2 == 0 {
            shop.clone()
        } else {
            web.clone()
        };
        tasks.push(tokio::spawn(
            async move { client.pull_request(&repo, 5).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().number, 5);
    }
    let status = CommitStatus::new(CommitState::Success, "ready", None);
    client
        .set_commit_status(&shop, "abcdef1", &status)
        .await
        .unwrap();
    client
        .set_commit_status(&web, "abcdef2", &status)
        .await
        .unwrap();

    // Each repository's requests carried its own installation's token, and nothing was
    // refused for a wrong installation.
    assert_eq!(
        installations_used(&github, "acme/shop"),
        [Some(INSTALLATION_ID)]
    );
    assert_eq!(
        installations_used(&github, "globex/web"),
        [Some(OTHER_INSTALLATION_ID)]
    );
    github.with(|s| {
        assert!(
            s.wrong_installation.is_empty(),
            "{:?}",
            s.wrong_installation
        )
    });
    // One token per installation, one lookup per repository (concurrent requests share it).
    for installation in [INSTALLATION_ID, OTHER_INSTALLATION_ID] {
        let path = format!("/app/installations/{installation}/access_tokens");
        assert_eq!(github.hits(&Method::POST, &path), 1, "{path}");
    }
    assert_eq!(
        github.hits(&Method::GET, "/repos/acme/shop/installation"),
        1
    );
    assert_eq!(
        github.hits(&Method::GET, "/repos/globex/web/installation"),
        1
    );

    // An installation a verified delivery named is used without asking GitHub.
    let seeded = app_client_with_default(&github, &private_pem, None);
    seeded
        .installations()
        .remember("Globex/Web", OTHER_INSTALLATION_ID)
        .await;
    seeded.pull_request(&web, 6).await.unwrap();
    assert_eq!(
        github.hits(&Method::GET, "/repos/globex/web/installation"),
        1
    );

    // A repository no installation serves: a clear error without a default ...
    let err = client
        .pull_request(&RepoRef::new("initech", "app"), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SourceControlError::NotFound(m) if m.contains("not installed on initech/app")),
        "{err:?}"
    );
    // ... and the default installation with one.
    let defaulted = app_client_with_default(&github, &private_pem, Some(OTHER_INSTALLATION_ID));
    assert!(
        defaulted
            .pull_request(&RepoRef::new("initech", "app"), 1)
            .await
            .is_err()
    );
    github.with(|s| {
        assert_eq!(
            s.wrong_installation,
            [format!(
                "GET /repos/initech/app/pulls/1 ({OTHER_INSTALLATION_ID})"
            )]
        )
    });
}

#[tokio::test]
async fn discovery_walks_the_installations_only_as_far_as_needed() {
    let (private_pem, public_pem) = app_key_pair();
    let github = FakeGitHub::start().await;
    github.with(|s| s.public_key_pem = Some(public_pem.clone()));
    // 150 repositories in the first installation (two pages), one in the second.
    let many: Vec<String> = (0..150).map(|i| format!("acme/repo-{i:03}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    github.two_installations(&many, &["globex/web"]);
    let client = app_client_with_default(&github, &private_pem, None);
    let listings = |installation: u64| {
        github.with(|s| {
            s.log
                .iter()
                .filter(|l| l.path == "/installation/repositories")
                .filter(|l| l.installation == Some(installation))
                .count()
        })
    };

    // Found on the first page of the first installation: nothing more is listed.
    let wanted = std::collections::BTreeSet::from(["ACME/repo-003".to_string()]);
    let walked = client.discover_installations(&wanted).await.unwrap();
    assert_eq!(walked.installations, 2);
    assert_eq!(
        walked.found,
        std::collections::BTreeMap::from([("acme/repo-003".to_string(), INSTALLATION_ID)])
    );
    assert!(walked.failed.is_empty());
    assert_eq!(
        (listings(INSTALLATION_ID), listings(OTHER_INSTALLATION_ID)),
        (1, 0)
    );

    // On the second page of the first installation and in the second installation.
    let wanted = std::collections::BTreeSet::from([
        "acme/repo-149".to_string(),
        "globex/web".to_string(),
        "initech/app".to_string(),
    ]);
    let walked = client.discover_installations(&wanted).await.unwrap();
    assert_eq!(
        walked.found,
        std::collections::BTreeMap::from([
            ("acme/repo-149".to_string(), INSTALLATION_ID),
            ("globex/web".to_string(), OTHER_INSTALLATION_ID),
        ])
    );
    assert_eq!(
        (listings(INSTALLATION_ID), listings(OTHER_INSTALLATION_ID)),
        (3, 1)
    );
    // What was found is used without a lookup.
    client
        .pull_request(&RepoRef::new("globex", "web"), 1)
        .await
        .unwrap();
    assert_eq!(
        github.hits(&Method::GET, "/repos/globex/web/installation"),
        0
    );
    assert_eq!(
        installations_used(&github, "globex/web"),
        [Some(OTHER_INSTALLATION_ID)]
    );
}
