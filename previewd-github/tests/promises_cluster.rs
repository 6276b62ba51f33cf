//! Promises the docs make about status, metrics, Events and the PR comment, checked end
//! to end on the local control plane (`testenv/up`) with a local server that speaks
//! GitHub's API: an environment whose tests start in the pass that makes it Ready was
//! Ready (`readyAt`, `previewd_time_to_ready_seconds`, the Ready transition counter), and a
//! budget exceeded under the `sleep` policy raises `BudgetExceeded`, a Warning Event and
//! the budget line on the pull request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_github;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fake_github::FakeGitHub;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_core::source_control::SourceControl;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::metrics::ClientMetrics;
use previewd_github::reporter::GitHubReporter;
use previewd_kube::controller::Context;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::metrics::Metrics;
use previewd_kube::strategy::TestRunStage;
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
    unique_suffix,
};
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
const SHA: &str = "3333333333333333333333333333333333333333";

struct Setup {
    client: Client,
    ns: String,
    github: FakeGitHub,
    operator: Operator,
    envs: Api<PreviewEnvironment>,
    registry: Registry,
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
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut config = test_config(&ns);
    // No node matches the test Job's pods: the test plays their kubelet.
    config.stage_jobs.node_selector =
        BTreeMap::from([("previewd.io/test-kubelet".to_string(), "manual".to_string())]);
    let ctx = Context::new(client.clone(), config)
        .with_metrics(metrics)
        .with_reporter(Arc::new(reporter))
        .with_stage(Arc::new(TestRunStage));
    let operator = Operator::start_with(Arc::new(ctx)).await;
    let envs = Api::namespaced(client.clone(), &ns);
    Setup {
        client,
        ns,
        github,
        operator,
        envs,
        registry,
    }
}

impl Setup {
    async fn finish(self) {
        for env in self.envs.list(&ListParams::default()).await.unwrap() {
            let _ = self.envs.delete(&env.name_any(), &Default::default()).await;
        }
        let envs = self.envs.clone();
        eventually(TIMEOUT, "environments gone", || {
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

    /// The value of one sample of the operator's metrics, as `/metrics` would show it.
    fn sample(&self, series: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    async fn events_of(&self, env: &PreviewEnvironment) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let uid = env.uid().unwrap();
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str()))
            .collect()
    }
}

fn manifest(number: u64, extra: Value) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": "acme/shop",
        "prNumber": number,
        "branch": format!("promises-{}", unique_suffix()),
        "headSHA": SHA,
        "services": [{"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": format!("shop-pr-{number}")},
        "spec": spec,
    }))
    .unwrap()
}

async fn wait_env(
    envs: &Api<PreviewEnvironment>,
    name: &str,
    what: &str,
    check: impl Fn(&PreviewEnvironment) -> bool,
) -> PreviewEnvironment {
    eventually(TIMEOUT, what, || {
        let envs = envs.clone();
        let check = &check;
        async move { envs.get_opt(name).await.ok().flatten().filter(|e| check(e)) }
    })
    .await
}

fn condition(env: &PreviewEnvironment, type_: &str) -> Option<(String, String, String)> {
    env.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_with_tests_records_having_been_ready() {
    let s = setup("promise-ready").await;
    let ready_before = s
        .sample(r#"previewd_phase_transitions_total{phase="Ready"}"#)
        .unwrap_or(0.0);
    let env = manifest(
        7301,
        json!({"tests": {"enabled": true, "image": "ghcr.io/acme/shop-tests:1", "command": ["pytest"]}}),
    );
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    // The services become available and the tests start in one reconcile: the
    // environment goes Provisioning -> Ready -> Testing and never rests in Ready.
    let testing = wait_env(&s.envs, "shop-pr-7301", "Testing", |e| {
        e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Testing)
    })
    .await;
    let status = testing.status.as_ref().unwrap();
    let ready_at = status.ready_at.as_ref().expect("readyAt is set").0;
    let since = status.provisioning_since.as_ref().unwrap().0;
    assert!(ready_at >= since, "{ready_at} before {since}");

    // The metrics and Events see the Ready the environment crossed.
    let counted = eventually(TIMEOUT, "time to Ready counted", || {
        let n = s.sample("previewd_time_to_ready_seconds_count");
        async move { n.filter(|n| *n >= 1.0) }
    })
    .await;
    assert!(counted >= 1.0);
    let ready_after = s
        .sample(r#"previewd_phase_transitions_total{phase="Ready"}"#)
        .unwrap();
    assert!(
        ready_after > ready_before,
        "{ready_before} -> {ready_after}"
    );
    assert!(
        s.sample(r#"previewd_phase_transitions_total{phase="Testing"}"#)
            .is_some_and(|n| n >= 1.0)
    );
    let events = eventually(TIMEOUT, "the Ready Event", || {
        let s = &s;
        let testing = testing.clone();
        async move {
            let events = s.events_of(&testing).await;
            events
                .iter()
                .any(|e| {
                    e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("phase Provisioning -> Ready"))
                })
                .then_some(events)
        }
    })
    .await;
    assert!(
        events.iter().any(|e| e
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("phase Ready -> Testing"))),
        "{:?}",
        events.iter().map(|e| e.note.clone()).collect::<Vec<_>>()
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_sleep_raises_budget_exceeded_with_a_warning_and_a_line_on_the_pr() {
    let s = setup("promise-budget").await;
    // One small service: $0.30 a day, within the $0.50 daily budget.
    let env = manifest(
        7302,
        json!({"costBudget": {"daily": "$0.50", "policy": "sleep"}}),
    );
    s.envs.create(&PostParams::default(), &env).await.unwrap();
    wait_env(&s.envs, "shop-pr-7302", "Ready and priced", |e| {
        let Some(status) = e.status.as_ref() else {
            return false;
        };
        status.phase == Some(Phase::Ready)
            && status
                .costs
                .as_ref()
                .and_then(|c| c.hourly)
                .is_some_and(|h| h > previewd_core::Money::ZERO)
    })
    .await;
    // Three replicas: $0.90 a day, over the budget.
    let patch = json!({"spec": {"services": [
        {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080, "replicas": 3}
    ]}});
    s.envs
        .patch(
            "shop-pr-7302",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let asleep = wait_env(&s.envs, "shop-pr-7302", "asleep for the budget", |e| {
        condition(e, "Sleeping").is_some_and(|c| c.0 == "True" && c.1 == "Budget")
    })
    .await;
    let (status, reason, message) = condition(&asleep, "BudgetExceeded").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "DailyBudgetExceeded")
    );
    assert!(
        message.contains("$0.90") && message.contains("policy sleep"),
        "{message}"
    );
    let warnings = eventually(TIMEOUT, "the Warning Event", || {
        let s = &s;
        let asleep = asleep.clone();
        async move {
            let found: Vec<Event> = s
                .events_of(&asleep)
                .await
                .into_iter()
                .filter(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("DailyBudgetExceeded")
                })
                .collect();
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    assert_eq!(warnings.len(), 1, "one Warning per crossing");
    let body = eventually(TIMEOUT, "the budget line on the PR", || {
        let found = s.github.with(|st| {
            st.comments
                .iter()
                .find(|c| c.body.contains("**Budget exceeded:**"))
                .map(|c| c.body.clone())
        });
        async move { found }
    })
    .await;
    assert!(
        body.contains("policy sleep") && body.contains("asleep"),
        "{body}"
    );
    s.finish().await;
}
