//! Unit tests of the manifests strategy: rendering, refusals, overrides, readiness by
//! wave.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::DynamicObject;
use serde_json::json;

use super::*;
use crate::crd::PreviewEnvironment;
use crate::plan::PlannerConfig as ControllerConfig;

const NS: &str = "preview-7-shop";

fn env() -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-7", "namespace": "team", "uid": "u1"},
        "spec": {
            "repository": "acme/shop", "prNumber": 7, "branch": "feat/db",
            "headSHA": "0123456789abcdef0123456789abcdef01234567",
            "repositoryRef": "shop",
            "services": [{"name": "api", "image": "ghcr.io/acme/api:pr-7", "port": 8080},
                         {"name": "web", "image": "ghcr.io/acme/web:pr-7", "port": 8080}]
        }
    }))
    .unwrap()
}

fn repository(manifests: serde_json::Value) -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": "team"},
        "spec": {
            "repository": "acme/shop", "baseDomain": "preview.test",
            "catalogue": {"services": [{"name": "api", "image": "ghcr.io/acme/api:pr-{{number}}"},
                                       {"name": "web", "image": "ghcr.io/acme/web:pr-{{number}}"}]},
            "catalogueWave": 2,
            "manifests": manifests
        }
    }))
    .unwrap()
}

fn example() -> serde_json::Value {
    json!([
        {"wave": 0, "template": {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings"}, "data": {"DATABASE_HOST": "db.{{namespace}}.svc", "REF": "{{shortSha}}"}}},
        {"wave": 0, "template": {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"}, "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "postgres:17"}]}}}}},
        {"wave": 1, "template": {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "migrate-{{shortSha}}"}, "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "migrate", "image": "ghcr.io/acme/api:{{sha}}"}]}}}}},
        {"wave": 2, "template": {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api"}, "spec": {"selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": "ghcr.io/acme/api:pr-{{number}}"}]}}}}}
    ])
}

fn input<'a>(
    env: &'a PreviewEnvironment,
    config: &'a ControllerConfig,
    repo: Option<&'a PreviewRepository>,
) -> RenderInput<'a> {
    RenderInput {
        env,
        namespace: NS,
        config,
        use_spot: false,
        host: Some("pr-7.preview.test"),
        repository: repo,
        now: jiff::Timestamp::UNIX_EPOCH,
    }
}

fn keys(objects: &[DesiredObject]) -> Vec<(i32, String)> {
    objects
        .iter()
        .map(|o| (o.wave, o.key().to_string()))
        .collect()
}

#[test]
fn renders_templates_with_the_catalogue_and_overrides() {
    let (env, config, repo) = (env(), ControllerConfig::default(), repository(example()));
    let objects = ManifestsStrategy::default()
        .desired(&input(&env, &config, Some(&repo)))
        .unwrap();
    assert_eq!(
        keys(&objects),
        vec![
            (2, "Service api".to_string()),
            (2, "Deployment web".to_string()),
            (2, "Service web".to_string()),
            (0, "ConfigMap settings".to_string()),
            (0, "StatefulSet db".to_string()),
            (1, "Job migrate-0123456".to_string()),
            (2, "Deployment api".to_string()),
        ],
        "the template's Deployment api replaces the catalogue's"
    );
    let cm = &objects[3].object;
    assert_eq!(cm["data"]["DATABASE_HOST"], "db.preview-7-shop.svc");
    assert_eq!(cm["data"]["REF"], "0123456");
    let job = &objects[5].object;
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/acme/api:0123456789abcdef0123456789abcdef01234567"
    );
    // Pods of workloads carry the environment's labels besides their own.
    let db = &objects[4].object;
    assert_eq!(db["spec"]["template"]["metadata"]["labels"]["app"], "db");
    assert_eq!(
        db["spec"]["template"]["metadata"]["labels"]["previewd.io/env"],
        "shop-pr-7"
    );
    assert_eq!(db["spec"]["selector"]["matchLabels"], json!({"app": "db"}));
}

fn refused(template: serde_json::Value) -> StrategyError {
    let (env, config) = (env(), ControllerConfig::default());
    let repo = repository(json!([{"template": template}]));
    ManifestsStrategy::default()
        .desired(&input(&env, &config, Some(&repo)))
        .unwrap_err()
}

#[test]
fn refuses_what_could_leave_the_namespace() {
    let cases = [
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
            "ManifestNamespaceRefused",
        ),
        (
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "x"}}),
            "ManifestRBACRefused",
        ),
        (
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}}),
            "ManifestRBACRefused",
        ),
        (
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "x"}}),
            "ManifestClusterScoped",
        ),
        (
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}}),
            "ManifestGuardRailRefused",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"}}),
            "ManifestKindNotAllowed",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kube-system"}}),
            "ManifestForeignNamespace",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "x-"}}),
            "ManifestInvalid",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{nope}}"}}),
            "ManifestInvalid",
        ),
    ];
    for (template, reason) in cases {
        let e = refused(template.clone());
        assert_eq!(e.reason, reason, "{template}: {e}");
    }
    // The namespace variable (or the environment's own namespace) is fine.
    let (env, config) = (env(), ControllerConfig::default());
    let repo = repository(
        json!([{"template": {"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "{{namespace}}"}}}]),
    );
    assert!(
        ManifestsStrategy::default()
            .desired(&input(&env, &config, Some(&repo)))
            .is_ok()
    );
    // A branch cannot steer an object into another namespace.
    let e = refused(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "{{branch}}"}}),
    );
    assert_eq!(e.reason, "ManifestForeignNamespace");
}

#[test]
fn duplicate_templates_and_a_missing_repository_are_errors() {
    let (env, config) = (env(), ControllerConfig::default());
    let cm =
        json!({"template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}});
    let repo = repository(json!([cm.clone(), cm]));
    let e = ManifestsStrategy::default()
        .desired(&input(&env, &config, Some(&repo)))
        .unwrap_err();
    assert_eq!(e.reason, "ManifestInvalid");
    let e = ManifestsStrategy::default()
        .desired(&input(&env, &config, None))
        .unwrap_err();
    assert_eq!(e.reason, "RepositoryNotFound");
}

fn live(o: &DesiredObject, status: serde_json::Value) -> Arc<DynamicObject> {
    let mut v = o.object.clone();
    v["status"] = status;
    Arc::new(serde_json::from_value(v).unwrap())
}

#[test]
fn health_follows_the_waves_and_names_a_failed_job() {
    let (env, config, repo) = (env(), ControllerConfig::default(), repository(example()));
    let strategy = ManifestsStrategy::default();
    let input = input(&env, &config, Some(&repo));
    let objects = strategy.desired(&input).unwrap();
    let mut view = NamespaceView::default();
    let none = BTreeSet::new();
    assert!(matches!(
        strategy.health(&input, &view, &none),
        Health::Progressing(m) if m.starts_with("wave 0: ConfigMap settings: not created yet")
    ));
    let by_name = |n: &str| objects.iter().find(|o| o.name == n).unwrap();
    for o in [by_name("settings"), by_name("db")] {
        view.children.insert(o.key(), Default::default());
    }
    view.objects.insert(
        by_name("db").key(),
        live(by_name("db"), json!({"replicas": 1, "readyReplicas": 0})),
    );
    assert!(!strategy.object_ready(by_name("db"), &view));
    assert!(strategy.object_ready(by_name("settings"), &view));
    assert!(matches!(
        strategy.health(&input, &view, &none),
        Health::Progressing(m) if m == "wave 0: StatefulSet db: 0/1 ready (2 later wave(s) waiting)"
    ));
    view.objects.insert(
        by_name("db").key(),
        live(by_name("db"), json!({"replicas": 1, "readyReplicas": 1})),
    );
    assert!(strategy.object_ready(by_name("db"), &view));
    let job = by_name("migrate-0123456");
    view.children.insert(job.key(), Default::default());
    view.objects.insert(job.key(), live(job, json!({"conditions": [{"type": "Failed", "status": "True",
        "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})));
    assert_eq!(
        strategy.health(&input, &view, &none),
        Health::Failed("Job migrate-0123456 failed: BackoffLimitExceeded: Job has reached the specified backoff limit".into())
    );
    view.objects.insert(
        job.key(),
        live(
            job,
            json!({"conditions": [{"type": "Complete", "status": "True"}]}),
        ),
    );
    assert!(matches!(
        strategy.health(&input, &view, &none),
        Health::Progressing(m) if m.starts_with("wave 2: Service api: not created yet")
    ));
    for o in &objects {
        view.children.entry(o.key()).or_default();
        if o.resource.kind == "Deployment" {
            let mut d = o.object.clone();
            d["status"] = json!({"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
            view.deployments
                .push(Arc::new(serde_json::from_value::<Deployment>(d).unwrap()));
        }
    }
    assert_eq!(
        strategy.health(&input, &view, &none),
        Health::Available("7 object(s) ready in 3 wave(s)".into())
    );
    // Something being applied is not ready.
    let applying = BTreeSet::from([by_name("settings").key()]);
    assert!(
        matches!(strategy.health(&input, &view, &applying), Health::Progressing(m) if m.contains("being applied"))
    );
}

#[test]
fn watched_kinds_follow_the_allow_list() {
    let strategy = ManifestsStrategy::new(ManifestKinds::builtin_list("ConfigMap,Job").unwrap());
    let kinds: Vec<(String, bool)> = strategy
        .watched_kinds()
        .into_iter()
        .map(|k| (k.resource.kind, k.full))
        .collect();
    assert!(kinds.contains(&("ConfigMap".to_string(), false)));
    assert!(kinds.contains(&("Job".to_string(), true)));
    assert!(kinds.contains(&("Service".to_string(), false)));
    assert!(!kinds.iter().any(|(k, _)| k == "StatefulSet"));
}
