//! Every metric the controller registers is a promise (`docs/operations.md`,
//! `docs/COST.md`): each is documented, and each moves when the controller on the local
//! control plane (`testenv/up`) goes through the path that should move it. The list of
//! families comes from the code (what `Metrics::register` registers), so a new metric
//! without documentation or without a path here fails the suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use previewd_core::Phase;
use previewd_kube::controller::{Context, sweep_once};
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use support::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TIMEOUT: Duration = Duration::from_secs(90);

/// Families of [`Metrics`], and the path below that moves each.
const PROMISED: &[(&str, &str)] = &[
    ("previewd_reconciles", "any reconcile"),
    (
        "previewd_reconcile_failures",
        "an apply the API server refuses",
    ),
    ("previewd_reconcile_duration_seconds", "any reconcile"),
    (
        "previewd_phase_transitions",
        "Pending -> Provisioning -> Ready",
    ),
    ("previewd_environments", "the controller's cache"),
    ("previewd_environments_by_phase", "the controller's cache"),
    (
        "previewd_time_to_ready_seconds",
        "an environment becoming Ready",
    ),
    ("previewd_teardown_seconds", "an environment deleted"),
    ("previewd_cleanup_lag_seconds", "an environment expiring"),
    ("previewd_environments_expired", "an environment expiring"),
    (
        "previewd_orphan_namespaces_swept",
        "the sweep deleting an orphan",
    ),
    (
        "previewd_environments_deleted_for_budget",
        "a budget with policy delete",
    ),
    (
        "previewd_environment_cost_hourly_dollars",
        "a running environment",
    ),
    (
        "previewd_environment_cost_to_date_dollars",
        "a running environment",
    ),
    (
        "previewd_environments_cost_hourly_dollars",
        "a running environment",
    ),
];

/// The families `Metrics::register` registers, read from its source (a family with
/// labels and no sample yet is not encoded at all, so the registry cannot tell).
fn families() -> Vec<String> {
    let source = include_str!("../src/metrics.rs");
    let body = source
        .split("pub fn register(")
        .nth(1)
        .expect("Metrics::register in metrics.rs");
    let body = &body[..body.find("\n    }\n").expect("end of register")];
    let mut out: Vec<String> = body
        .split(".register(")
        .skip(1)
        .filter_map(|call| {
            let start = call.find('"')? + 1;
            let end = start + call[start..].find('"')?;
            Some(format!("previewd_{}", &call[start..end]))
        })
        .collect();
    out.sort();
    out
}

fn value(registry: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn present(registry: &Registry, series: &str) -> bool {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines().any(|l| l.starts_with(series))
}

#[test]
fn every_registered_metric_is_documented_and_has_a_path() {
    let docs = [
        include_str!("../../docs/operations.md"),
        include_str!("../../docs/COST.md"),
    ]
    .concat();
    let mut promised: Vec<String> = PROMISED.iter().map(|(n, _)| (*n).to_string()).collect();
    promised.sort();
    assert_eq!(
        families(),
        promised,
        "a metric family without a path in PROMISED (or a stale entry)"
    );
    for (name, _) in PROMISED {
        assert!(docs.contains(name), "{name} is not documented");
    }
}

fn environment(name: &str, pr: i64, extra: Value) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": "acme/shop",
        "prNumber": pr,
        "branch": format!("promise-{}", unique_suffix()),
        "headSHA": SHA,
        "services": [{"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_moves_on_its_path() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "promise-metrics").await;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut config = test_config(&ns);
    config.resync_interval = Duration::from_secs(2);
    let ctx = Arc::new(
        Context::new(client.clone(), config)
            .with_metrics(metrics)
            .register_strategy(Arc::new(
                previewd_kube::strategy::ManifestsStrategy::default(),
            )),
    );
    let op = Operator::start_with(ctx.clone()).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let phase_of = |name: &'static str| {
        let envs = envs.clone();
        move || {
            let envs = envs.clone();
            async move { envs.get_opt(name).await.ok().flatten()?.status?.phase }
        }
    };

    // Ready, running, priced.
    envs.create(&PostParams::default(), &environment("ready", 1, json!({})))
        .await
        .unwrap();
    let ready = phase_of("ready");
    eventually(TIMEOUT, "ready", || {
        let f = ready();
        async move { (f.await? == Phase::Ready).then_some(()) }
    })
    .await;
    for series in [
        "previewd_environments_cost_hourly_dollars",
        "previewd_environment_cost_hourly_dollars",
        r#"previewd_environments_by_phase{phase="Ready"}"#,
    ] {
        eventually(
            TIMEOUT,
            &format!("{series} (a running environment)"),
            || {
                let v = value(&registry, series);
                async move { (v > 0.0).then_some(()) }
            },
        )
        .await;
    }
    // The spend to date is persisted every few minutes (so a resync writes nothing):
    // the environment's series exists from its first pass.
    assert!(present(
        &registry,
        "previewd_environment_cost_to_date_dollars{"
    ));

    // Expiring: a TTL already over once the environment is created.
    envs.create(
        &PostParams::default(),
        &environment("expiring", 2, json!({"ttl": "3s"})),
    )
    .await
    .ok();
    // A budget deleted at once (3 replicas over a tiny total, policy delete), after it
    // ran: created within budget, then lowered.
    envs.create(
        &PostParams::default(),
        &environment(
            "over",
            3,
            json!({"costBudget": {"total": "$100", "policy": "delete"}}),
        ),
    )
    .await
    .unwrap();
    let over = phase_of("over");
    eventually(TIMEOUT, "over ready", || {
        let f = over();
        async move { (f.await? == Phase::Ready).then_some(()) }
    })
    .await;
    envs.patch(
        "over",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"costBudget": {"total": "$0.000001", "policy": "delete"}}})),
    )
    .await
    .unwrap();

    // An apply the API server refuses: a templated ConfigMap whose data is not text.
    let repo: previewd_kube::crd::PreviewRepository = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": "broken"},
        "spec": {"repository": "acme/broken", "baseDomain": "preview.test",
            "catalogue": {"services": []}, "strategy": "manifests",
            "manifests": [{"template": {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "bad"}, "data": {"count": 5}}}]}
    }))
    .unwrap();
    Api::<previewd_kube::crd::PreviewRepository>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &repo)
        .await
        .unwrap();
    let mut broken = environment("broken", 4, json!({"repositoryRef": "broken"}));
    broken.spec.repository = "acme/broken".into();
    envs.create(&PostParams::default(), &broken).await.unwrap();

    // An orphan: a namespace marked for an environment that no longer exists.
    let orphan = format!("preview-orphan-{}", unique_suffix());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {
        "name": orphan,
        "labels": {"app.kubernetes.io/managed-by": "previewd", "previewd.io/env": "gone",
                   "previewd.io/env-namespace": ns},
        "annotations": {"previewd.io/owner-uid": "00000000-0000-0000-0000-000000000000"}
    }}))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let report = sweep_once(&ctx).await.unwrap();
    assert!(report.orphans.contains(&orphan), "{report:?}");

    // Teardown of the Ready one.
    envs.delete("ready", &DeleteParams::default())
        .await
        .unwrap();
    eventually(TIMEOUT, "ready torn down", || {
        let envs = envs.clone();
        async move { envs.get_opt("ready").await.ok()?.is_none().then_some(()) }
    })
    .await;

    for (series, path) in [
        ("previewd_reconciles_total", "reconciles"),
        ("previewd_reconcile_duration_seconds_count", "reconciles"),
        (
            r#"previewd_phase_transitions_total{phase="Ready"}"#,
            "Ready",
        ),
        ("previewd_environments ", "the cache"),
        ("previewd_time_to_ready_seconds_count", "Ready"),
        ("previewd_teardown_seconds_count", "teardown"),
        ("previewd_cleanup_lag_seconds_count", "expiry"),
        ("previewd_environments_expired_total", "expiry"),
        ("previewd_orphan_namespaces_swept_total", "the sweep"),
        (
            "previewd_environments_deleted_for_budget_total",
            "budget delete",
        ),
        ("previewd_reconcile_failures_total", "a refused apply"),
    ] {
        eventually(TIMEOUT, &format!("{series} moved ({path})"), || {
            let v = value(&registry, series);
            async move { (v > 0.0).then_some(()) }
        })
        .await;
    }
    op.stop().await;
    delete_namespace(&client, &ns).await;
}
