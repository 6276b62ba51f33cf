//! Cost budgets against the local control plane (`testenv/up`): the estimate comes from
//! the pods the fake nodes run, and each budget policy acts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::{Money, Phase};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::{Value, json};
use support::*;

const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

/// One small service (250m, 512Mi: $0.0125 an hour, $0.30 a day at default prices).
fn environment(name: &str, pr: i64, budget: Value) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": {
            "repository": "acme/shop",
            "prNumber": pr,
            "branch": "feature",
            "headSHA": SHA1,
            "services": [{"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080}],
            "costBudget": budget,
        }
    }))
    .unwrap()
}

async fn get(api: &Api<PreviewEnvironment>, name: &str) -> Option<PreviewEnvironment> {
    api.get_opt(name).await.ok().flatten()
}

fn condition(env: &PreviewEnvironment, type_: &str) -> Option<(String, String, String)> {
    env.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Creates the environment and waits until it is Ready and priced from its running pod.
async fn ready_and_priced(client: &Client, ns: &str, env: &PreviewEnvironment) {
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), env).await.unwrap();
    let name = env.name_any();
    let ready = eventually(Duration::from_secs(90), "ready and priced", || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let e = get(&api, &name).await?;
            let s = e.status.as_ref()?;
            (s.phase? == Phase::Ready && s.costs.as_ref()?.hourly? > Money::ZERO).then_some(e)
        }
    })
    .await;
    let costs = ready.status.unwrap().costs.unwrap();
    // From the running pod: 250m × $0.04 + 0.5 GiB × $0.005 = $0.0125 an hour.
    assert_eq!(costs.hourly, Some("0.0125".parse().unwrap()));
    assert_eq!(costs.estimated_daily, Some("0.30".parse().unwrap()));
    assert!(costs.last_accrued_at.is_some());
}

/// Three replicas: $0.90 a day, over the $0.50 daily budget.
async fn scale_up(client: &Client, ns: &str, name: &str) {
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), ns);
    let patch = json!({"spec": {"services": [
        {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080, "replicas": 3}
    ]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn replicas(client: &Client, ns: &str) -> Option<i32> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt("api")
        .await
        .ok()
        .flatten()?
        .spec?
        .replicas
}

async fn warning_event(client: &Client, ns: &str, env: &PreviewEnvironment, reason: &str) {
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), ns);
    let uid = env.uid().unwrap();
    eventually(
        Duration::from_secs(20),
        &format!("Warning {reason}"),
        || {
            let events = events.clone();
            let uid = uid.clone();
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items
                    .into_iter()
                    .find(|e| {
                        e.type_.as_deref() == Some("Warning")
                            && e.reason.as_deref() == Some(reason)
                            && e.regarding.as_ref().and_then(|r| r.uid.as_deref())
                                == Some(uid.as_str())
                    })
                    .map(|_| ())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_over_its_budget_is_never_created() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "budget-refuse").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &environment("refused", 1, json!({"daily": "$0.10"})),
    )
    .await
    .unwrap();
    let stalled = eventually(Duration::from_secs(30), "stalled for budget", || {
        let api = api.clone();
        async move {
            let e = get(&api, "refused").await?;
            let c = condition(&e, "Stalled")?;
            (c.0 == "True" && c.1 == "BudgetExceeded").then_some(c.2)
        }
    })
    .await;
    assert!(
        stalled.contains("$0.30") && stalled.contains("$0.10"),
        "{stalled}"
    );
    let e = get(&api, "refused").await.unwrap();
    let ns_name = previewd_kube::plan::namespace::primary_name(&e);
    // Nothing was created, even after a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&ns_name).await.unwrap().is_none());
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_warn_marks_and_keeps_running() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "budget-warn").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let env = environment("warned", 2, json!({"daily": "$0.50", "policy": "warn"}));
    ready_and_priced(&client, &ns, &env).await;
    scale_up(&client, &ns, "warned").await;
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let e = eventually(Duration::from_secs(30), "BudgetExceeded", || {
        let api = api.clone();
        async move {
            let e = get(&api, "warned").await?;
            (condition(&e, "BudgetExceeded")?.0 == "True").then_some(e)
        }
    })
    .await;
    let (_, reason, message) = condition(&e, "BudgetExceeded").unwrap();
    assert_eq!(reason, "DailyBudgetExceeded");
    assert!(
        message.contains("$0.90") && message.contains("policy warn"),
        "{message}"
    );
    warning_event(&client, &ns, &e, "DailyBudgetExceeded").await;
    let app_ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    assert_eq!(replicas(&client, &app_ns).await, Some(3), "warn only warns");
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_sleep_scales_to_zero_and_wakes_when_the_budget_allows() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "budget-sleep").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let env = environment("sleepy", 3, json!({"daily": "$0.50", "policy": "sleep"}));
    ready_and_priced(&client, &ns, &env).await;
    scale_up(&client, &ns, "sleepy").await;
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let e = eventually(Duration::from_secs(30), "asleep", || {
        let api = api.clone();
        async move {
            let e = get(&api, "sleepy").await?;
            (e.annotations().get("previewd.io/sleep").map(String::as_str) == Some("budget"))
                .then_some(e)
        }
    })
    .await;
    let app_ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    eventually(Duration::from_secs(30), "scaled to zero", || {
        let client = client.clone();
        let app_ns = app_ns.clone();
        async move { (replicas(&client, &app_ns).await == Some(0)).then_some(()) }
    })
    .await;
    // Asleep, it is charged for nothing once its pods are gone.
    eventually(Duration::from_secs(60), "no pods, no charge", || {
        let api = api.clone();
        async move {
            let e = get(&api, "sleepy").await?;
            (e.status?.costs?.hourly? == Money::ZERO).then_some(())
        }
    })
    .await;
    // A budget that allows three replicas wakes it.
    api.patch(
        "sleepy",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"costBudget": {"daily": "$5", "policy": "sleep"}}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "awake with 3 replicas", || {
        let api = api.clone();
        let client = client.clone();
        let app_ns = app_ns.clone();
        async move {
            let e = get(&api, "sleepy").await?;
            (!e.annotations().contains_key("previewd.io/sleep")
                && replicas(&client, &app_ns).await == Some(3))
            .then_some(())
        }
    })
    .await;
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_delete_deletes_the_environment_and_its_namespace() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "budget-delete").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let env = environment("doomed", 4, json!({"daily": "$0.50", "policy": "delete"}));
    ready_and_priced(&client, &ns, &env).await;
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let live = get(&api, "doomed").await.unwrap();
    let app_ns = live.status.as_ref().unwrap().namespace.clone().unwrap();
    scale_up(&client, &ns, "doomed").await;
    warning_event(&client, &ns, &live, "DailyBudgetExceeded").await;
    eventually(Duration::from_secs(60), "environment gone", || {
        let api = api.clone();
        async move { get(&api, "doomed").await.is_none().then_some(()) }
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&app_ns).await.unwrap().is_none());
    op.stop().await;
    delete_namespace(&client, &ns).await;
}
