//! The seed and test-run stages on the local control plane (`testenv/up`), reporting to a
//! local server that speaks GitHub's API. The Job controller of the real
//! kube-controller-manager creates the pods and finishes the Jobs; the test plays the
//! kubelet by writing the runner pod's phase and its container's termination message.
//! Stage pods get a node selector no node matches, so that no fake node "runs" them
//! before the test does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_github;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fake_github::FakeGitHub;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_core::source_control::SourceControl;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::metrics::ClientMetrics;
use previewd_github::reporter::GitHubReporter;
use previewd_kube::controller::Context;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::strategy::{SeedStage, TestRunStage};
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
    unique_suffix,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
const GITHUB_TIMEOUT: Duration = Duration::from_secs(60);
const SHA1: &str = "1111111111111111111111111111111111111111";
const SHA2: &str = "2222222222222222222222222222222222222222";

struct Setup {
    client: Client,
    ns: String,
    github: FakeGitHub,
    operator: Operator,
    envs: Api<PreviewEnvironment>,
}

async fn setup(prefix: &str) -> Setup {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, prefix).await;
    let github = FakeGitHub::start().await;
    let mut gh = ClientConfig::new(github.base_url());
    gh.request_timeout = Duration::from_secs(5);
    gh.max_retries = 1;
    gh.backoff_base = Duration::from_millis(20);
    gh.backoff_max = Duration::from_millis(100);
    gh.mutation_spacing = Duration::from_millis(5);
    gh.budget = previewd_github::client::budget::BudgetLimits::unlimited();
    let scm: Arc<dyn SourceControl> = Arc::new(
        GitHubClient::new(
            gh,
            GitHubAuth::Token(SecretString::from(fake_github::TOKEN.to_string())),
            ClientMetrics::default(),
        )
        .unwrap(),
    );
    let reporter = GitHubReporter::new(scm, None).with_retry_base(Duration::from_millis(200));
    let mut config = test_config(&ns);
    // No node matches: the Job's pod stays unscheduled until the test "runs" it.
    config.stage_jobs.node_selector =
        BTreeMap::from([("previewd.io/test-kubelet".to_string(), "manual".to_string())]);
    let ctx = Context::new(client.clone(), config)
        .with_reporter(Arc::new(reporter))
        .with_stage(Arc::new(SeedStage))
        .with_stage(Arc::new(TestRunStage));
    let operator = Operator::start_with(Arc::new(ctx)).await;
    let envs = Api::namespaced(client.clone(), &ns);
    Setup {
        client,
        ns,
        github,
        operator,
        envs,
    }
}

impl Setup {
    /// Deletes the environments while the operator runs (their namespaces go with them),
    /// then stops it and removes the test namespace.
    async fn finish(self) {
        for env in self.envs.list(&ListParams::default()).await.unwrap() {
            let _ = self.envs.delete(&env.name_any(), &Default::default()).await;
        }
        let envs = self.envs.clone();
        eventually(PHASE_TIMEOUT, "environments gone", || {
            let envs = envs.clone();
            async move {
                let left = envs.list(&ListParams::default()).await.ok()?;
                left.items.is_empty().then_some(())
            }
        })
        .await;
        self.operator.stop().await;
        delete_namespace(&self.client, &self.ns).await;
    }
}

fn manifest(number: u64, sha: &str, tests: Value, test_data: Value) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": format!("shop-pr-{number}")},
        "spec": {
            "repository": "acme/shop",
            "prNumber": number,
            "branch": format!("stages-{}", unique_suffix()),
            "headSHA": sha,
            "services": [
                {"name": "frontend", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"},
                {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 9090}
            ],
            "tests": tests,
            "testData": test_data
        }
    }))
    .unwrap()
}

fn tests_spec(timeout: &str) -> Value {
    json!({"enabled": true, "image": "ghcr.io/acme/shop-tests:1", "command": ["pytest"], "timeout": timeout, "parallel": 2})
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

fn env_namespace(env: &PreviewEnvironment) -> String {
    env.status.as_ref().unwrap().namespace.clone().unwrap()
}

fn condition<'a>(
    env: &'a PreviewEnvironment,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    env.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// The stage Job (`seed` or `tests`) for `sha`, once the controller created it, and its
/// pod, once the Job controller created that.
async fn job_and_pod(client: &Client, ns: &str, stage: &str, sha: &str) -> (Job, Pod) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let prefix = format!("previewd-{stage}-{}-", &sha[..12]);
    let job = eventually(PHASE_TIMEOUT, &format!("{stage} job for {sha}"), || {
        let jobs = jobs.clone();
        let prefix = prefix.clone();
        async move {
            jobs.list(&ListParams::default().labels(&format!("previewd.io/stage={stage}")))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|j| j.name_any().starts_with(&prefix))
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
    let pod = eventually(PHASE_TIMEOUT, &format!("pod of {}", job.name_any()), || {
        let pods = pods.clone();
        let selector = selector.clone();
        async move {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    (job, pod)
}

/// Plays the kubelet: the runner container ended with `exit_code` and wrote `message` to
/// its termination log.
async fn runner_ended(client: &Client, pod: &Pod, exit_code: i32, message: Option<&str>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
    let now = jiff::Timestamp::now().to_string();
    let mut terminated = json!({
        "exitCode": exit_code,
        "reason": if exit_code == 0 { "Completed" } else { "Error" },
        "startedAt": now, "finishedAt": now
    });
    if let Some(m) = message {
        terminated["message"] = json!(m);
    }
    let image = pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    let status = json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": "runner", "image": image, "imageID": "", "ready": false,
            "restartCount": 0, "started": false, "state": {"terminated": terminated}
        }]
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await
    .expect("write the pod's status");
}

/// `previewd` commit statuses for `sha`, in order.
fn commit_states(github: &FakeGitHub, sha: &str) -> Vec<(String, String)> {
    github.with(|s| {
        s.commit_statuses
            .iter()
            .filter(|(at, body)| at == sha && body["context"] == "previewd")
            .map(|(_, b)| {
                (
                    b["state"].as_str().unwrap_or_default().to_string(),
                    b["description"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    })
}

async fn wait_commit_state(github: &FakeGitHub, sha: &str, state: &str) -> Vec<(String, String)> {
    eventually(GITHUB_TIMEOUT, &format!("commit status {state}"), || {
        let states = commit_states(github, sha);
        let done = states.last().is_some_and(|(s, _)| s == state);
        async move { done.then_some(states) }
    })
    .await
}

async fn wait_comment_containing(github: &FakeGitHub, needle: &str) -> String {
    eventually(
        GITHUB_TIMEOUT,
        &format!("comment containing {needle:?}"),
        || {
            let found = github.with(|s| {
                s.comments
                    .iter()
                    .find(|c| c.body.contains(needle))
                    .map(|c| c.body.clone())
            });
            async move { found }
        },
    )
    .await
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_run_completes_and_turns_the_commit_green() {
    let s = setup("st-pass").await;
    let env = manifest(7201, SHA1, tests_spec("10m"), json!(null));
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    let testing = wait_phase(&s.envs, "shop-pr-7201", Phase::Testing).await;
    let ns = env_namespace(&testing);
    let (job, pod) = job_and_pod(&s.client, &ns, "tests", SHA1).await;
    // The Job as the Job controller received it.
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    let vars: BTreeMap<String, String> = pod.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.value.unwrap_or_default()))
        .collect();
    assert_eq!(
        vars["PREVIEW_URL"],
        format!("http://frontend.{ns}.svc:8080")
    );
    assert_eq!(vars["PREVIEW_URL_API"], format!("http://api.{ns}.svc:9090"));
    assert_eq!(vars["PREVIEWD_TEST_WORKERS"], "2");

    runner_ended(
        &s.client,
        &pod,
        0,
        Some(r#"{"total":3,"passed":3,"failed":0,"skipped":0,"durationMs":4200}"#),
    )
    .await;
    let done = wait_phase(&s.envs, "shop-pr-7201", Phase::Complete).await;
    let tests = done.status.as_ref().unwrap().tests.clone().unwrap();
    assert_eq!((tests.total, tests.passed, tests.failed), (3, 3, 0));
    assert_eq!(tests.state.as_deref(), Some("Passed"));
    assert_eq!(tests.sha.as_deref(), Some(SHA1));
    assert_eq!(condition(&done, "TestsCompleted").status, "True");
    assert_eq!(condition(&done, "Ready").status, "True");

    let states = wait_commit_state(&s.github, SHA1, "success").await;
    assert!(states.iter().all(|(st, _)| st != "failure"), "{states:?}");
    let body = wait_comment_containing(&s.github, "**Tests:** 3 passed, 0 failed").await;
    assert!(body.contains("Complete"), "{body}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_names_the_failed_tests_in_status_and_comment_and_turns_the_commit_red() {
    let s = setup("st-fail").await;
    let env = manifest(7202, SHA1, tests_spec("10m"), json!(null));
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    let testing = wait_phase(&s.envs, "shop-pr-7202", Phase::Testing).await;
    let (_, pod) = job_and_pod(&s.client, &env_namespace(&testing), "tests", SHA1).await;
    runner_ended(
        &s.client,
        &pod,
        1,
        Some(
            r#"{"total":4,"passed":2,"failed":2,"skipped":0,"durationMs":900,"failures":[
              {"name":"tests.test_cart.test_pay","reason":"expected 200, got 500"},
              {"name":"tests.test_auth.test_login","reason":"timeout after 5s"}]}"#,
        ),
    )
    .await;
    let failed = wait_phase(&s.envs, "shop-pr-7202", Phase::Failed).await;
    let status = failed.status.clone().unwrap();
    let tests = status.tests.clone().unwrap();
    assert_eq!((tests.total, tests.passed, tests.failed), (4, 2, 2));
    assert_eq!(
        tests.failed_tests,
        vec!["tests.test_cart.test_pay", "tests.test_auth.test_login"]
    );
    assert_eq!(tests.failures[0].reason, "expected 200, got 500");
    assert_eq!(condition(&failed, "Ready").reason, "TestsFailed");
    assert_eq!(condition(&failed, "TestsCompleted").status, "False");
    assert!(
        status.message.unwrap().contains("tests.test_cart.test_pay"),
        "the message names the failures"
    );

    let states = wait_commit_state(&s.github, SHA1, "failure").await;
    assert_eq!(states.last().unwrap().0, "failure", "{states:?}");
    let body = wait_comment_containing(&s.github, "**Tests:** 2 passed, 2 failed").await;
    assert!(body.contains("tests.test_cart.test_pay"), "{body}");
    assert!(body.contains("tests.test_auth.test_login"), "{body}");
    assert!(body.contains("expected 200, got 500"), "{body}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_fails_with_the_reason() {
    let s = setup("st-time").await;
    // Nobody plays the kubelet: the Job controller stops the Job at its deadline.
    let env = manifest(7203, SHA1, tests_spec("5s"), json!(null));
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    let failed = wait_phase(&s.envs, "shop-pr-7203", Phase::Failed).await;
    let status = failed.status.clone().unwrap();
    let message = status.message.clone().unwrap();
    assert!(
        message.contains("did not finish within 5s (timeout)"),
        "{message}"
    );
    let tests = status.tests.unwrap();
    assert_eq!(tests.state.as_deref(), Some("Failed"));
    assert_eq!(tests.error.as_deref(), Some(message.as_str()));
    // Red on GitHub: `error` (the environment failed without test results), where failed
    // tests give `failure`.
    wait_commit_state(&s.github, SHA1, "error").await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_summary_fails_clearly() {
    let s = setup("st-bad").await;
    let env = manifest(7204, SHA1, tests_spec("10m"), json!(null));
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    let testing = wait_phase(&s.envs, "shop-pr-7204", Phase::Testing).await;
    let (_, pod) = job_and_pod(&s.client, &env_namespace(&testing), "tests", SHA1).await;
    runner_ended(&s.client, &pod, 0, Some("=== 3 passed in 0.2s ===")).await;
    let failed = wait_phase(&s.envs, "shop-pr-7204", Phase::Failed).await;
    let message = failed.status.clone().unwrap().message.unwrap();
    assert!(message.starts_with("malformed summary:"), "{message}");
    assert_eq!(condition(&failed, "Ready").reason, "TestsFailed");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_push_during_a_run_cancels_it_and_tests_the_new_commit() {
    let s = setup("st-push").await;
    let env = manifest(7205, SHA1, tests_spec("10m"), json!(null));
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    let testing = wait_phase(&s.envs, "shop-pr-7205", Phase::Testing).await;
    let ns = env_namespace(&testing);
    let (old_job, old_pod) = job_and_pod(&s.client, &ns, "tests", SHA1).await;

    s.envs
        .patch(
            "shop-pr-7205",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"headSHA": SHA2}})),
        )
        .await
        .unwrap();
    // The old run's Job and its pod are deleted (propagation Background).
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &ns);
    eventually(PHASE_TIMEOUT, "old job and pod gone", || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        let (j, p) = (old_job.name_any(), old_pod.name_any());
        async move {
            let job_gone = jobs.get_opt(&j).await.ok()?.is_none();
            let pod_gone = pods
                .get_opt(&p)
                .await
                .ok()?
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            (job_gone && pod_gone).then_some(())
        }
    })
    .await;
    let (_, pod) = job_and_pod(&s.client, &ns, "tests", SHA2).await;
    runner_ended(
        &s.client,
        &pod,
        0,
        Some(r#"{"total":1,"passed":1,"failed":0,"skipped":0}"#),
    )
    .await;
    let done = wait_phase(&s.envs, "shop-pr-7205", Phase::Complete).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.deployed_sha.as_deref(), Some(SHA2));
    assert_eq!(status.tests.unwrap().sha.as_deref(), Some(SHA2));
    wait_commit_state(&s.github, SHA2, "success").await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_success_and_failure_reach_the_status() {
    let s = setup("st-seed").await;
    let data = json!({"enabled": true, "seed": 7, "counts": {"users": 100, "orders": 500}});
    for (number, report, phase) in [
        (
            7206,
            r#"{"tables":15,"rows":2300,"durationMs":850,"error":null}"#,
            Phase::Complete,
        ),
        (
            7207,
            r#"{"tables":0,"rows":0,"durationMs":3,"error":"required cycle: orders -> users -> orders"}"#,
            Phase::Failed,
        ),
    ] {
        let env = manifest(number, SHA1, json!(null), data.clone());
        s.envs.create(&PostParams::default(), &env).await.unwrap();
        let name = format!("shop-pr-{number}");
        let testing = wait_phase(&s.envs, &name, Phase::Testing).await;
        assert_eq!(condition(&testing, "DataSeeded").status, "False");
        let (_, pod) = job_and_pod(&s.client, &env_namespace(&testing), "seed", SHA1).await;
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.args, Some(vec!["seed-data".to_string()]));
        let secret = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "DATABASE_URL")
            .and_then(|v| v.value_from.as_ref()?.secret_key_ref.clone())
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("preview-database", "url")
        );
        runner_ended(&s.client, &pod, 0, Some(report)).await;
        let done = wait_phase(&s.envs, &name, phase).await;
        let seeded = done.status.clone().unwrap().test_data.unwrap();
        let cond = condition(&done, "DataSeeded");
        if phase == Phase::Complete {
            assert_eq!(seeded.state, "Seeded");
            assert_eq!((seeded.tables, seeded.rows), (Some(15), Some(2300)));
            assert_eq!(cond.status, "True");
        } else {
            assert_eq!(seeded.state, "Failed");
            assert!(seeded.error.unwrap().contains("required cycle"));
            assert_eq!(
                (cond.status.as_str(), cond.reason.as_str()),
                ("False", "SeedFailed")
            );
        }
    }
    s.finish().await;
}
