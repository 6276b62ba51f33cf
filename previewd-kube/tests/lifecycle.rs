//! The environment lifecycle against the local control plane (`testenv/up`): each test
//! makes its own namespaces and runs an operator scoped to them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::{FixedClock, Phase};
use previewd_kube::controller::{self, Context};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::{Value, json};
use support::*;

const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA2: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn env_manifest(
    name: &str,
    pr: i64,
    branch: &str,
    services: Value,
    extra: Value,
) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": "acme/shop",
        "prNumber": pr,
        "branch": branch,
        "headSHA": SHA1,
        "services": services,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn three_services() -> Value {
    json!([
        {"name": "frontend", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"},
        {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 9090},
        {"name": "auth", "image": "registry.k8s.io/pause:3.10", "port": 7070, "replicas": 2}
    ])
}

async fn create(client: &Client, ns: &str, env: &PreviewEnvironment) {
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), env)
        .await
        .expect("create PreviewEnvironment");
}

async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> PreviewEnvironment {
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), ns);
    eventually(timeout, &format!("{name} in phase {phase}"), || {
        let api = api.clone();
        async move {
            let env = api.get_opt(name).await.ok().flatten()?;
            (env.status.as_ref()?.phase? == phase).then_some(env)
        }
    })
    .await
}

async fn wait_gone<K>(api: Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(timeout, &format!("{name} gone"), || {
        let api = api.clone();
        async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
    })
    .await
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
        .unwrap_or_else(|| panic!("condition {type_} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_with_guard_rails() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-full").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;

    let env = env_manifest(
        "shop-pr-42",
        42,
        "feature/Login_Page",
        three_services(),
        json!({}),
    );
    create(&client, &ns, &env).await;
    let ready = wait_phase(
        &client,
        &ns,
        "shop-pr-42",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let status = ready.status.clone().unwrap();

    // Status: URL, per-service URLs, timestamps, conditions, generation.
    assert_eq!(status.url.as_deref(), Some("https://pr-42.preview.test/"));
    assert_eq!(
        status.urls.get("api").map(String::as_str),
        Some("https://pr-42.preview.test/api")
    );
    assert_eq!(
        status.urls.get("frontend").map(String::as_str),
        Some("https://pr-42.preview.test/")
    );
    assert_eq!(status.observed_generation, ready.metadata.generation);
    assert_eq!(status.deployed_sha.as_deref(), Some(SHA1));
    assert!(status.ready_at.is_some() && status.created_at.is_some());
    let expires = status.expires_at.clone().unwrap().0;
    let created = status.created_at.clone().unwrap().0;
    assert_eq!(
        expires.duration_since(created).as_secs(),
        4 * 3600,
        "default TTL is 4h"
    );
    for (type_, want) in [
        ("Ready", "True"),
        ("NamespaceReady", "True"),
        ("ServicesDeployed", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
    ] {
        assert_eq!(condition(&ready, type_).status, want, "condition {type_}");
    }
    assert!(
        ready
            .finalizers()
            .contains(&"previewd.io/cleanup".to_string())
    );

    // Namespace, labels and pod security.
    let ns_name = status.namespace.clone().unwrap();
    assert!(
        ns_name.starts_with("preview-42-feature-login-page"),
        "{ns_name}"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let live_ns = namespaces.get(&ns_name).await.unwrap();
    let labels = live_ns.labels();
    assert_eq!(
        labels.get("previewd.io/env").map(String::as_str),
        Some("shop-pr-42")
    );
    assert_eq!(labels.get("previewd.io/pr").map(String::as_str), Some("42"));
    assert_eq!(
        labels.get("previewd.io/repo").map(String::as_str),
        Some("acme.shop")
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("previewd")
    );
    for mode in ["enforce", "warn", "audit"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("restricted")
        );
    }

    // Quota, limit range, network policies.
    let quota = Api::<ResourceQuota>::namespaced(client.clone(), &ns_name)
        .get("previewd")
        .await
        .unwrap();
    let hard = quota.spec.unwrap().hard.unwrap();
    let q = |k: &str| hard.get(k).map(|q| q.0.clone()).unwrap_or_default();
    assert_eq!(
        (
            q("requests.cpu"),
            q("requests.memory"),
            q("requests.storage"),
            q("persistentvolumeclaims"),
            q("pods")
        ),
        (
            "2".into(),
            "4Gi".into(),
            "10Gi".into(),
            "5".into(),
            "20".into()
        )
    );
    let lr = Api::<LimitRange>::namespaced(client.clone(), &ns_name)
        .get("previewd")
        .await
        .unwrap();
    let item = &lr.spec.unwrap().limits[0];
    assert_eq!(item.type_, "Container");
    assert!(item.default_request.as_ref().unwrap().contains_key("cpu"));
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &ns_name);
    let deny = policies.get("previewd").await.unwrap().spec.unwrap();
    assert_eq!(deny.policy_types.unwrap(), vec!["Ingress", "Egress"]);
    assert!(
        deny.ingress.is_none() && deny.egress.is_none(),
        "default deny has no allow rules"
    );
    let allow =
        serde_json::to_value(policies.get("previewd-allow").await.unwrap().spec.unwrap()).unwrap();
    let allow_text = allow.to_string();
    assert!(
        allow_text.contains("\"port\":53"),
        "DNS allowed: {allow_text}"
    );
    assert!(
        allow_text.contains("ingress-nginx"),
        "ingress controller allowed: {allow_text}"
    );

    // Workloads: one Deployment and Service per service, restricted and sized by tier.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns_name);
    for (name, replicas) in [("frontend", 1), ("api", 1), ("auth", 2)] {
        let d = deployments.get(name).await.unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(replicas));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(req.get("cpu").unwrap().0, "250m", "small tier");
        assert_eq!(req.get("memory").unwrap().0, "512Mi");
        let svc = Api::<Service>::namespaced(client.clone(), &ns_name)
            .get(name)
            .await
            .unwrap();
        assert_eq!(
            svc.spec.unwrap().ports.unwrap()[0].port,
            match name {
                "frontend" => 8080,
                "api" => 9090,
                _ => 7070,
            }
        );
    }
    let ingress = Api::<Ingress>::namespaced(client.clone(), &ns_name)
        .get("preview")
        .await
        .unwrap();
    let ann = ingress.annotations();
    assert_eq!(
        ann.get("cert-manager.io/cluster-issuer")
            .map(String::as_str),
        Some("letsencrypt")
    );
    assert_eq!(
        ann.get("external-dns.alpha.kubernetes.io/hostname")
            .map(String::as_str),
        Some("pr-42.preview.test")
    );
    let ispec = ingress.spec.unwrap();
    assert_eq!(
        ispec.tls.unwrap()[0].secret_name.as_deref(),
        Some("preview-tls")
    );
    assert_eq!(
        ispec.rules.unwrap()[0].http.as_ref().unwrap().paths.len(),
        3
    );

    // Costs are estimated: 4 small containers (1 + 1 + 2 replicas).
    let costs = status.costs.clone().unwrap();
    assert!(costs.estimated_daily.is_some());

    // Delete: Terminating, namespace gone, then the resource itself.
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    envs.delete("shop-pr-42", &DeleteParams::default())
        .await
        .unwrap();
    // Deleting twice is harmless.
    let _ = envs.delete("shop-pr-42", &DeleteParams::default()).await;
    wait_gone(envs.clone(), "shop-pr-42", Duration::from_secs(90)).await;
    let gone = namespaces.get_opt(&ns_name).await.unwrap();
    assert!(
        gone.is_none(),
        "namespace {ns_name} is gone before the finalizer is released"
    );

    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_becomes_ready_fails_with_a_useful_message() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-fail").await;
    let mut config = test_config(&ns);
    config.readiness_timeout = Duration::from_secs(8);
    let op = Operator::start(client.clone(), config).await;

    let services = json!([
        {"name": "web", "image": "registry.k8s.io/pause:3.10"},
        {"name": "broken", "image": "image-pull-error.invalid/broken:pr-7"}
    ]);
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-7", 7, "broken-image", services, json!({})),
    )
    .await;
    let failed = wait_phase(
        &client,
        &ns,
        "shop-pr-7",
        Phase::Failed,
        Duration::from_secs(90),
    )
    .await;
    let ready = condition(&failed, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "ReadinessDeadlineExceeded");
    assert!(
        ready.message.contains("service broken"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("ImagePullBackOff"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("pod broken-"),
        "names the failing pod: {}",
        ready.message
    );
    assert_eq!(condition(&failed, "Stalled").status, "True");

    // A Warning event on the environment says the same.
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let uid = failed.uid().unwrap();
    eventually(Duration::from_secs(20), "Warning event", || {
        let events = events.clone();
        let uid = uid.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str())
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("ImagePullBackOff"))
            })
        }
    })
    .await;
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_deletes_at_the_expiry_time_not_at_the_next_sweep() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-ttl").await;
    // The sweep runs hourly here: only the exact requeue can delete the environment.
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let services = json!([{"name": "web", "image": "registry.k8s.io/pause:3.10"}]);
    create(
        &client,
        &ns,
        &env_manifest(
            "shop-pr-9",
            9,
            "short-lived",
            services,
            json!({"ttl": "20s"}),
        ),
    )
    .await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let expires_at = eventually(Duration::from_secs(30), "expiresAt", || {
        let envs = envs.clone();
        async move {
            envs.get("shop-pr-9")
                .await
                .ok()?
                .status?
                .expires_at
                .map(|t| t.0)
        }
    })
    .await;
    // Observe the deletion timestamp: it is set at (not before) the expiry time.
    let deleted_at = eventually(Duration::from_secs(60), "deletion started", || {
        let envs = envs.clone();
        async move {
            match envs.get_opt("shop-pr-9").await {
                Ok(Some(env)) => env.metadata.deletion_timestamp.map(|t| Some(t.0)),
                Ok(None) => Some(None),
                Err(_) => None,
            }
        }
    })
    .await;
    if let Some(deleted_at) = deleted_at {
        // deletionTimestamp has second precision; allow the truncation.
        assert!(
            deleted_at.as_second() >= expires_at.as_second(),
            "deleted at {deleted_at}, expires at {expires_at}"
        );
    }
    wait_gone(envs.clone(), "shop-pr-9", Duration::from_secs(60)).await;
    assert!(jiff::Timestamp::now() >= expires_at);
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_orphan_namespaces_and_keeps_live_ones() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-orphan").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let services = json!([{"name": "web", "image": "registry.k8s.io/pause:3.10"}]);
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-5", 5, "live", services, json!({})),
    )
    .await;
    let live = wait_phase(
        &client,
        &ns,
        "shop-pr-5",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let live_ns = live.status.unwrap().namespace.unwrap();

    // A namespace previewd created (ownership marker) whose environment is gone.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let suffix = &ns[ns.len() - 8..];
    let orphan_name = format!("preview-999-orphan-{suffix}");
    let orphan: Namespace =
        serde_json::from_value(json!({"metadata": {"name": orphan_name, "labels": {
            "app.kubernetes.io/managed-by": "previewd",
            "previewd.io/env": "shop-pr-999",
            "previewd.io/env-namespace": ns,
        }, "annotations": {"previewd.io/owner-uid": "0d5a3a8e-0000-4000-8000-00000000dead"}}}))
        .unwrap();
    namespaces
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    // The attack: somebody labels their own namespaces as previewd's, with and without
    // previewd's name prefix. Labels alone prove nothing; neither may be deleted.
    let mut decoys = Vec::new();
    for name in [
        format!("preview-998-decoy-{suffix}"),
        format!("tenant-db-{suffix}"),
    ] {
        let decoy: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {
                "app.kubernetes.io/managed-by": "previewd",
                "previewd.io/env": "shop-pr-998",
                "previewd.io/env-namespace": ns,
            }}}))
            .unwrap();
        namespaces
            .create(&PostParams::default(), &decoy)
            .await
            .unwrap();
        decoys.push(name);
    }

    let report = controller::sweep_once(&op.ctx).await.unwrap();
    assert_eq!(report.orphans, vec![orphan_name.clone()]);
    assert!(report.expired.is_empty());
    let after = namespaces.get_opt(&orphan_name).await.unwrap();
    assert!(
        after.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "orphan deleted"
    );
    for decoy in &decoys {
        let kept = namespaces.get(decoy).await.unwrap();
        assert!(
            kept.metadata.deletion_timestamp.is_none(),
            "{decoy} carries previewd's labels but no ownership marker: kept"
        );
        delete_namespace(&client, decoy).await;
    }
    let kept = namespaces.get(&live_ns).await.unwrap();
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "a live environment's namespace is kept"
    );
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_provisioning_converges_to_the_same_state() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-restart").await;
    let first = Operator::start(client.clone(), test_config(&ns)).await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-11", 11, "restart", three_services(), json!({})),
    )
    .await;
    // Stop as soon as provisioning has started.
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "provisioning started", || {
        let envs = envs.clone();
        async move {
            envs.get("shop-pr-11")
                .await
                .ok()?
                .status?
                .namespace
                .map(|_| ())
        }
    })
    .await;
    first.stop().await;

    let second = Operator::start(client.clone(), test_config(&ns)).await;
    let ready = wait_phase(
        &client,
        &ns,
        "shop-pr-11",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let ns_name = ready.status.clone().unwrap().namespace.unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns_name)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut names: Vec<String> = deployments.items.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(names, ["api", "auth", "frontend"]);
    assert_eq!(
        ready
            .finalizers()
            .iter()
            .filter(|f| *f == "previewd.io/cleanup")
            .count(),
        1
    );
    second.stop().await;

    // A third start on a settled environment changes nothing.
    let before = envs.get("shop-pr-11").await.unwrap();
    let third = Operator::start(client.clone(), test_config(&ns)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = envs.get("shop-pr-11").await.unwrap();
    assert_eq!(
        before.resource_version(),
        after.resource_version(),
        "no write on a converged environment"
    );
    third.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_reconcile_performs_no_writes() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-noop").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-3", 3, "noop", three_services(), json!({})),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "shop-pr-3",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    // Converged: the resource stops changing once late Deployment status updates settle.
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let mut last = String::new();
    let mut unchanged = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while unchanged < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "environment kept changing"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let rv = envs
            .get("shop-pr-3")
            .await
            .unwrap()
            .resource_version()
            .unwrap();
        unchanged = if rv == last { unchanged + 1 } else { 0 };
        last = rv;
    }
    op.stop().await;
    let ready = envs.get("shop-pr-3").await.unwrap();

    // A fresh operator (a restart) whose every request is counted: its first reconcile
    // of the converged environment, and reconciles forced by unrelated changes, write
    // nothing.
    let (counting, writes) = counting_client().await;
    let created = ready.status.clone().unwrap().created_at.unwrap().0;
    let clock = Arc::new(FixedClock::new(
        created
            .checked_add(jiff::SignedDuration::from_secs(5))
            .unwrap(),
    ));
    let ctx = Arc::new(Context::new(counting, test_config(&ns)).with_clock(clock));
    let op = Operator::start_with(ctx.clone()).await;
    for round in 0..3 {
        let patch = json!({"metadata": {"annotations": {"example.com/poke": round.to_string()}}});
        envs.patch("shop-pr-3", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let reconciles = ctx.metrics.reconciles.get();
    // The caches keep only what the planner reads (and the reconciles above found
    // nothing to write with them): environments without managed fields, Deployments
    // without their pod template (their drift fingerprint computed when they arrived),
    // the Services by the few fields observation reads.
    let cached = ctx.environments.get().expect("controller store").state();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].metadata.managed_fields.is_none());
    let deployments: Vec<_> = ctx
        .caches
        .deployments
        .state()
        .iter()
        .filter_map(|d| d.unpack())
        .collect();
    assert_eq!(deployments.len(), 3);
    for d in &deployments {
        let spec = d.spec.as_ref().unwrap();
        assert!(spec.template.metadata.is_none() && spec.template.spec.is_none());
        assert!(spec.replicas.is_some());
        assert!(previewd_kube::controller::caches::observed_fingerprint(d).is_some());
        assert!(d.metadata.managed_fields.is_none());
    }
    let (_, services) = &ctx.caches.kinds["v1/Service"];
    let previewd_kube::controller::caches::KindCache::Metadata(services) = services else {
        panic!("Services are cached by their metadata");
    };
    let services = services.state();
    assert_eq!(services.len(), 3);
    for s in &services {
        assert!(s.applied_hash.is_some() && s.env.as_deref() == Some("shop-pr-3"));
    }
    op.stop().await;
    assert!(
        reconciles >= 3,
        "the controller reconciled ({reconciles} times)"
    );
    assert_eq!(
        writes.get(),
        0,
        "a reconcile of a converged environment writes nothing"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_environment_reaches_ready_without_a_refused_write() {
    // The first reconcile adds the finalizer and then writes the status: the status
    // write must be conditional on the version the finalizer patch produced, not on the
    // one before it (refused with 409, which cost every new environment a second
    // reconcile, the slowest part of provisioning at scale).
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-conflict").await;
    let (counting, conflicts) = conflict_counting_client().await;
    let ctx = Arc::new(Context::new(counting, test_config(&ns)));
    let op = Operator::start_with(ctx.clone()).await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-4", 4, "conflict", three_services(), json!({})),
    )
    .await;
    let ready = wait_phase(
        &client,
        &ns,
        "shop-pr-4",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    op.stop().await;
    assert!(
        ready
            .finalizers()
            .iter()
            .any(|f| f == previewd_kube::crd::FINALIZER),
        "the finalizer is in place"
    );
    assert!(
        ready
            .status
            .as_ref()
            .and_then(|s| s.provisioning_since.as_ref())
            .is_some(),
        "the first status write landed"
    );
    assert_eq!(
        conflicts.get(),
        0,
        "no write of the controller was refused with a conflict"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_repositories_with_the_same_pull_request_number_get_different_hosts() {
    // Each reconcile gathers the other environments' claims on the hosts it may use
    // (its own and its fallback) from the environment cache.
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-hosts").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-7", 7, "hosts", three_services(), json!({})),
    )
    .await;
    let host = |env: &PreviewEnvironment| env.status.as_ref().and_then(|s| s.host.clone());
    let first = wait_phase(
        &client,
        &ns,
        "shop-pr-7",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(host(&first).as_deref(), Some("pr-7.preview.test"));
    create(
        &client,
        &ns,
        &env_manifest(
            "web-pr-7",
            7,
            "hosts",
            three_services(),
            json!({"repository": "acme/web"}),
        ),
    )
    .await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-8", 8, "hosts", three_services(), json!({})),
    )
    .await;
    let second = wait_phase(
        &client,
        &ns,
        "web-pr-7",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let third = wait_phase(
        &client,
        &ns,
        "shop-pr-8",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let second_host = host(&second).unwrap();
    assert!(
        second_host.starts_with("pr-7-") && second_host.ends_with(".preview.test"),
        "the later repository's pull request 7 gets the fallback host, not {second_host}"
    );
    assert_eq!(host(&third).as_deref(), Some("pr-8.preview.test"));
    // The older environment keeps its host, and each Ingress serves its own.
    let first = wait_phase(
        &client,
        &ns,
        "shop-pr-7",
        Phase::Ready,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(host(&first).as_deref(), Some("pr-7.preview.test"));
    for env in [&first, &second, &third] {
        let preview_ns = env
            .status
            .as_ref()
            .and_then(|s| s.namespace.clone())
            .unwrap();
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &preview_ns);
        let hosts: Vec<String> = ingresses
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .flat_map(|i| i.spec.iter().flat_map(|s| s.rules.iter().flatten()))
            .filter_map(|r| r.host.clone())
            .collect();
        assert_eq!(hosts, [host(env).unwrap()], "{}", env.name_any());
    }
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_head_commit_rolls_services_in_place() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-update").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let services = json!([{"name": "web", "image": "registry.k8s.io/pause:3.10"}]);
    create(
        &client,
        &ns,
        &env_manifest(
            "shop-pr-8",
            8,
            "update",
            services,
            json!({"autoExtend": true}),
        ),
    )
    .await;
    let ready = wait_phase(
        &client,
        &ns,
        "shop-pr-8",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let ns_name = ready.status.clone().unwrap().namespace.unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns_name);
    let uid_before = deployments.get("web").await.unwrap().uid();
    let expires_before = ready.status.clone().unwrap().expires_at.unwrap().0;

    // A push: new head SHA and a later activity time.
    let later = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(1))
        .unwrap();
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "metadata": {"annotations": {"previewd.io/last-activity": later.to_string()}},
        "spec": {"headSHA": SHA2}
    });
    envs.patch("shop-pr-8", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rolled = eventually(Duration::from_secs(90), "new SHA ready", || {
        let envs = envs.clone();
        async move {
            let env = envs.get("shop-pr-8").await.ok()?;
            let s = env.status.clone()?;
            (s.deployed_sha.as_deref() == Some(SHA2) && s.phase == Some(Phase::Ready))
                .then_some(env)
        }
    })
    .await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.uid(), uid_before, "rolled in place, not recreated");
    let ann: BTreeMap<String, String> = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(
        ann.get("previewd.io/head-sha").map(String::as_str),
        Some(SHA2)
    );
    let expires_after = rolled.status.unwrap().expires_at.unwrap().0;
    assert!(
        expires_after > expires_before,
        "activity extends the TTL with autoExtend"
    );
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_while_provisioning_is_safe() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-early").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-12", 12, "early", three_services(), json!({})),
    )
    .await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let ns_name = eventually(Duration::from_secs(30), "namespace chosen", || {
        let envs = envs.clone();
        async move { envs.get("shop-pr-12").await.ok()?.status?.namespace }
    })
    .await;
    envs.delete("shop-pr-12", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(envs.clone(), "shop-pr-12", Duration::from_secs(90)).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&ns_name).await.unwrap().is_none());
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_rejects_bad_specs() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-schema").await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let svc = json!([{"name": "web", "image": "x"}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("pr-zero", json!({"prNumber": 0}), "prNumber"),
        ("bad-ttl", json!({"ttl": "4x"}), "ttl"),
        (
            "too-many-replicas",
            json!({"services": [{"name": "web", "image": "x", "replicas": 11}]}),
            "replicas",
        ),
        (
            "dup-names",
            json!({"services": [{"name": "web", "image": "x"}, {"name": "web", "image": "y"}]}),
            "Duplicate",
        ),
        ("bad-sha", json!({"headSHA": "not-a-sha"}), "headSHA"),
        ("bad-repo", json!({"repository": "no-slash"}), "repository"),
        (
            "bad-budget",
            json!({"costBudget": {"daily": "five dollars"}}),
            "daily",
        ),
    ];
    for (name, patch, needle) in cases {
        let env = env_manifest(name, 1, "b", svc.clone(), json!({}));
        let mut spec = serde_json::to_value(&env.spec).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut raw = serde_json::to_value(&env).unwrap();
        raw["spec"] = spec;
        // Send the raw JSON so client-side types cannot hide what the server checks.
        let result = raw_create(&client, &ns, &raw).await;
        let err = result.expect_err(&format!("{name} must be rejected"));
        assert!(err.contains(needle), "{name}: {err}");
    }

    // Immutable fields.
    envs.create(
        &PostParams::default(),
        &env_manifest("immutable", 1, "b", svc.clone(), json!({})),
    )
    .await
    .unwrap();
    let err = envs
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"repository": "acme/other"}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("repository is immutable"), "{err}");
    let err = envs
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"prNumber": 2}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("prNumber is immutable"), "{err}");
    delete_namespace(&client, &ns).await;
}

async fn raw_create(client: &Client, ns: &str, body: &Value) -> Result<(), String> {
    let req = http::Request::post(format!(
        "/apis/previewd.io/v1alpha1/namespaces/{ns}/previewenvironments"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(body).unwrap())
    .unwrap();
    client
        .request::<Value>(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_rejection_fails_the_environment_at_once() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-quota").await;
    // A long deadline: only the quota rejection itself can fail the environment in time.
    let mut config = test_config(&ns);
    config.readiness_timeout = Duration::from_secs(3600);
    let op = Operator::start(client.clone(), config).await;
    let services = json!([{"name": "web", "image": "registry.k8s.io/pause:3.10", "replicas": 3}]);
    create(
        &client,
        &ns,
        &env_manifest(
            "shop-pr-21",
            21,
            "quota",
            services,
            json!({"quota": {"pods": 1}}),
        ),
    )
    .await;
    let failed = wait_phase(
        &client,
        &ns,
        "shop-pr-21",
        Phase::Failed,
        Duration::from_secs(90),
    )
    .await;
    let ready = condition(&failed, "Ready");
    assert_eq!(ready.reason, "ServiceFailed");
    assert!(ready.message.contains("service web"), "{}", ready.message);
    assert!(
        ready.message.contains("exceeded quota"),
        "{}",
        ready.message
    );
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

/// Settings whose periodic resync never happens during a test: whatever the controller
/// does there, a watch made it happen.
fn watch_only_config(ns: &str) -> previewd_kube::ControllerConfig {
    let mut config = test_config(ns);
    config.resync_interval = Duration::from_secs(3600);
    config.poll_interval = Duration::from_secs(3600);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_deleted_or_edited_by_hand_is_repaired_through_the_watches() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-repair").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-8", 8, "repair", three_services(), json!({})),
    )
    .await;
    let ready = wait_phase(
        &client,
        &ns,
        "shop-pr-8",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    op.stop().await;
    let env_ns = ready.status.unwrap().namespace.unwrap();
    // From here on, no resync and no readiness poll: only the watches can wake it.
    let op = Operator::start(client.clone(), watch_only_config(&ns)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &env_ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &env_ns);

    // A Deployment deleted by hand comes back.
    let old_uid = deployments.get("api").await.unwrap().uid();
    deployments
        .delete("api", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "Deployment api recreated", || {
        let deployments = deployments.clone();
        let old_uid = old_uid.clone();
        async move {
            let d = deployments.get_opt("api").await.ok().flatten()?;
            (d.uid() != old_uid && d.metadata.deletion_timestamp.is_none()).then_some(())
        }
    })
    .await;
    // A Service deleted by hand comes back.
    services
        .delete("auth", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "Service auth recreated", || {
        let services = services.clone();
        async move { services.get_opt("auth").await.ok().flatten().map(|_| ()) }
    })
    .await;
    // A Deployment scaled and re-imaged by hand (by another field manager) is put back.
    let patch = json!({"spec": {"replicas": 0, "template": {"spec": {"containers": [
        {"name": "frontend", "image": "registry.k8s.io/pause:3.9"}]}}}});
    deployments
        .patch(
            "frontend",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "Deployment frontend restored",
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("frontend").await.ok()?;
                let spec = d.spec?;
                let image = spec.template.spec?.containers[0].image.clone()?;
                (spec.replicas == Some(1) && image == "registry.k8s.io/pause:3.10").then_some(())
            }
        },
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "shop-pr-8",
        Phase::Ready,
        Duration::from_secs(60),
    )
    .await;

    // The namespace deleted by hand: the environment waits for it to go, then rebuilds it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let old_ns_uid = namespaces.get(&env_ns).await.unwrap().uid();
    namespaces
        .delete(&env_ns, &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(90),
        "namespace recreated and Ready again",
        || {
            let namespaces = namespaces.clone();
            let client = client.clone();
            let ns = ns.clone();
            let env_ns = env_ns.clone();
            let old_ns_uid = old_ns_uid.clone();
            async move {
                let n = namespaces.get_opt(&env_ns).await.ok().flatten()?;
                if n.uid() == old_ns_uid || n.metadata.deletion_timestamp.is_some() {
                    return None;
                }
                let envs: Api<PreviewEnvironment> = Api::namespaced(client, &ns);
                let e = envs.get("shop-pr-8").await.ok()?;
                let d = Api::<Deployment>::namespaced(namespaces.clone().into_client(), &env_ns)
                    .get_opt("api")
                    .await
                    .ok()
                    .flatten()?;
                (e.status?.phase? == Phase::Ready && d.metadata.deletion_timestamp.is_none())
                    .then_some(())
            }
        },
    )
    .await;
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_only_looks_like_ours_is_never_adopted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "lc-adopt").await;
    let suffix = &ns[ns.len() - 8..];
    let branch = format!("adopt-{suffix}");
    // The attack: a namespace with the environment's future name and previewd's labels,
    // created before the environment.
    let squatted = previewd_core::naming::namespace_name(9, &branch);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let decoy: Namespace =
        serde_json::from_value(json!({"metadata": {"name": squatted, "labels": {
            "app.kubernetes.io/managed-by": "previewd",
            "previewd.io/env": "shop-pr-9",
            "previewd.io/env-namespace": ns,
            "team": "attacker"
        }}}))
        .unwrap();
    namespaces
        .create(&PostParams::default(), &decoy)
        .await
        .unwrap();
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let services = json!([{"name": "web", "image": "registry.k8s.io/pause:3.10"}]);
    create(
        &client,
        &ns,
        &env_manifest("shop-pr-9", 9, &branch, services, json!({})),
    )
    .await;
    let ready = wait_phase(
        &client,
        &ns,
        "shop-pr-9",
        Phase::Ready,
        Duration::from_secs(90),
    )
    .await;
    let used = ready.status.as_ref().unwrap().namespace.clone().unwrap();
    assert_ne!(used, squatted, "the squatted namespace is not used");
    let owned = namespaces.get(&used).await.unwrap();
    assert_eq!(
        owned.annotations().get("previewd.io/owner-uid"),
        ready.uid().as_ref(),
        "the namespace previewd created carries the environment's UID"
    );
    let untouched = namespaces.get(&squatted).await.unwrap();
    assert!(
        untouched
            .annotations()
            .get("previewd.io/owner-uid")
            .is_none()
    );
    assert_eq!(
        untouched.labels().get("team").map(String::as_str),
        Some("attacker")
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &squatted)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was deployed into it"
    );
    // Deleting the environment deletes its own namespace, never the squatted one.
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    envs.delete("shop-pr-9", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(envs.clone(), "shop-pr-9", Duration::from_secs(90)).await;
    let still = namespaces.get(&squatted).await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
    op.stop().await;
    delete_namespace(&client, &squatted).await;
    delete_namespace(&client, &ns).await;
}
