#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use super::*;
use crate::crd::ArgoCdHelm;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn settings(path: &str, tool: ArgoCdTool) -> ArgoCdSettings {
    serde_json::from_value(json!({
        "repoURL": "https://github.com/acme/shop.git",
        "path": path,
        "tool": tool,
    }))
    .unwrap()
}

fn services() -> Vec<ServiceSpec> {
    serde_json::from_value(json!([
        {"name": "api", "image": "ghcr.io/acme/api:pr-7"},
        {"name": "web", "image": "registry.local:5000/acme/web@sha256:abcd"}
    ]))
    .unwrap()
}

fn resource() -> ApiResource {
    application_resource("argoproj.io", "v1alpha1")
}

#[test]
fn forks_and_foreign_sources_are_refused_unless_the_platform_allows_them() {
    use crate::strategy::DeployStrategy;
    let env = |fork: bool,
               repo_url: &str|
     -> (
        crate::crd::PreviewEnvironment,
        crate::crd::PreviewRepository,
    ) {
        let mut labels = serde_json::Map::new();
        if fork {
            labels.insert(crate::crd::LABEL_FORK.into(), json!("true"));
        }
        let e = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team", "labels": labels},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "f", "headSHA": SHA,
                     "services": [{"name": "api", "image": "ghcr.io/acme/api:pr-7"}]}
        }))
        .unwrap();
        let r = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
            "metadata": {"name": "shop", "namespace": "team"},
            "spec": {"repository": "acme/shop", "catalogue": {"services": []},
                     "baseDomain": "preview.test", "strategy": "argocd", "argocd": {"repoURL": repo_url, "path": "deploy"}}
        }))
        .unwrap();
        (e, r)
    };
    let desired = |strategy: &ArgoCdStrategy, fork: bool, url: &str| {
        let (e, r) = env(fork, url);
        let config = crate::plan::PlannerConfig::default();
        strategy.desired(&RenderInput {
            env: &e,
            namespace: "preview-7-f",
            config: &config,
            use_spot: false,
            host: None,
            repository: Some(&r),
            now: jiff::Timestamp::UNIX_EPOCH,
        })
    };
    let stock = ArgoCdStrategy::new();
    let own = "https://github.com/acme/shop.git";
    let objects = desired(&stock, false, own).unwrap();
    assert_eq!(objects[0].resource.kind, "AppProject");
    assert_eq!(objects[1].resource.kind, "Application");
    assert_eq!(
        desired(&stock, true, own).unwrap_err().reason,
        "ArgoCdForkRefused"
    );
    assert_eq!(
        desired(&stock, false, "https://github.com/other/private.git")
            .unwrap_err()
            .reason,
        "ArgoCdSourceRefused"
    );
    let permissive = ArgoCdStrategy::with_platform(ArgoCdPlatform {
        allow_forks: true,
        source_repos: vec!["https://github.com/other/".into()],
        ..ArgoCdPlatform::default()
    });
    assert!(desired(&permissive, true, "https://github.com/other/private.git").is_ok());
}

#[test]
fn the_platform_decides_where_applications_live_and_deploy() {
    let p = ArgoCdPlatform::default();
    assert_eq!(p.namespace, "argocd");
    assert_eq!(p.destination_server, "https://kubernetes.default.svc");
    assert!(!p.allow_forks);
    let s = settings("deploy/{service}", ArgoCdTool::Kustomize);
    assert_eq!(s.target_revision, None);
    // A tenant's repository settings naming a project, a namespace or a server: those
    // fields do not exist (the API server prunes them; here they are ignored).
    let s: ArgoCdSettings = serde_json::from_value(json!({
        "repoURL": "https://github.com/acme/shop.git", "path": "deploy",
        "project": "default", "namespace": "kube-system",
        "destinationServer": "https://elsewhere.example.com"
    }))
    .unwrap();
    let planned = planned_applications(&s, "preview-7-feature", &services());
    let d = desired_application(
        &resource(),
        &p,
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap();
    assert_eq!(d.object["metadata"]["namespace"], "argocd");
    assert_eq!(d.object["spec"]["project"], "preview-7-feature");
    assert_eq!(
        d.object["spec"]["destination"],
        json!({"server": "https://kubernetes.default.svc", "namespace": "preview-7-feature"})
    );
}

#[test]
fn each_environment_gets_a_project_that_allows_only_its_namespace_and_source() {
    let platform = ArgoCdPlatform::default();
    let project = desired_project(
        &project_resource("argoproj.io", "v1alpha1"),
        &platform,
        "preview-7-feature",
        "https://github.com/acme/shop.git",
    );
    let spec = &project.object["spec"];
    assert_eq!(project.object["metadata"]["name"], "preview-7-feature");
    assert_eq!(project.object["metadata"]["namespace"], "argocd");
    assert_eq!(
        spec["destinations"],
        json!([{"server": "https://kubernetes.default.svc", "namespace": "preview-7-feature"}])
    );
    assert_eq!(
        spec["sourceRepos"],
        json!(["https://github.com/acme/shop.git"])
    );
    assert_eq!(spec["clusterResourceWhitelist"], json!([]));
    assert_eq!(spec["sourceNamespaces"], json!([]));
    let kinds: Vec<String> = spec["namespaceResourceWhitelist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            format!(
                "{}/{}",
                k["group"].as_str().unwrap(),
                k["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert!(kinds.contains(&"apps/Deployment".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"/Service".to_string()), "{kinds:?}");
    assert!(
        !kinds
            .iter()
            .any(|k| k.contains("rbac") || k.ends_with("NetworkPolicy") || k.ends_with("Secret")),
        "{kinds:?}"
    );
}

#[test]
fn only_the_claimed_repository_or_an_allowed_source_is_deployed() {
    assert!(source_allowed(
        "https://github.com/acme/shop.git",
        "acme/shop",
        &[]
    ));
    assert!(source_allowed(
        "https://GitHub.com/Acme/Shop/",
        "acme/shop",
        &[]
    ));
    assert!(!source_allowed(
        "https://github.com/other/private.git",
        "acme/shop",
        &[]
    ));
    assert!(!source_allowed(
        "https://github.com/acme/shop-secrets",
        "acme/shop",
        &[]
    ));
    let allowed = vec![
        "https://git.example.com/platform/".to_string(),
        "https://github.com/acme/deploy.git".to_string(),
    ];
    assert!(source_allowed(
        "https://git.example.com/platform/manifests.git",
        "acme/shop",
        &allowed
    ));
    assert!(source_allowed(
        "https://github.com/acme/deploy",
        "acme/shop",
        &allowed
    ));
    assert!(!source_allowed(
        "https://git.example.com/platformX/m",
        "acme/shop",
        &allowed
    ));
    assert!(!source_allowed(
        "https://git.example.com/platform/",
        "acme/shop",
        &allowed
    ));
}

#[test]
fn images_split_into_repository_and_tag() {
    assert_eq!(
        split_image("ghcr.io/acme/api:pr-7"),
        ("ghcr.io/acme/api", "pr-7")
    );
    assert_eq!(
        split_image("registry.local:5000/acme/web"),
        ("registry.local:5000/acme/web", "latest")
    );
    assert_eq!(
        split_image("registry.local:5000/web:1.2"),
        ("registry.local:5000/web", "1.2")
    );
    assert_eq!(split_image("web@sha256:abcd"), ("web", "sha256:abcd"));
}

#[test]
fn names_derive_from_the_namespace_and_stay_label_sized() {
    assert_eq!(
        application_name("preview-7-feature", Some("api")),
        "preview-7-feature-api"
    );
    assert_eq!(
        application_name("preview-7-feature", None),
        "preview-7-feature"
    );
    let long_ns = format!("preview-7-{}", "x".repeat(53));
    let a = application_name(&long_ns, Some("api"));
    let b = application_name(&long_ns, Some("web"));
    assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    assert_ne!(a, b);
    assert!(previewd_core::naming::is_dns1123_label(&a));
}

#[test]
fn one_application_per_service_with_kustomize_images_at_the_head_commit() {
    let s = settings("deploy/{service}/overlays/preview", ArgoCdTool::Kustomize);
    let planned = planned_applications(&s, "preview-7-feature", &services());
    assert_eq!(planned.len(), 2);
    let d = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap();
    assert_eq!(d.name, "preview-7-feature-api");
    assert_eq!(d.namespace.as_deref(), Some("argocd"));
    let o = &d.object;
    assert_eq!(o["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(o["kind"], "Application");
    assert_eq!(
        o["metadata"]["finalizers"],
        json!([ARGOCD_RESOURCES_FINALIZER])
    );
    assert_eq!(o["spec"]["project"], "preview-7-feature");
    assert_eq!(
        o["spec"]["source"]["repoURL"],
        "https://github.com/acme/shop.git"
    );
    assert_eq!(o["spec"]["source"]["path"], "deploy/api/overlays/preview");
    assert_eq!(o["spec"]["source"]["targetRevision"], SHA);
    assert_eq!(
        o["spec"]["source"]["kustomize"]["images"],
        json!(["ghcr.io/acme/api=ghcr.io/acme/api:pr-7"])
    );
    assert_eq!(
        o["spec"]["destination"],
        json!({"server": "https://kubernetes.default.svc", "namespace": "preview-7-feature"})
    );
    assert_eq!(
        o["spec"]["syncPolicy"]["automated"],
        json!({"prune": true, "selfHeal": true})
    );
    // A new head commit is a new desired state.
    let newer = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        OLD,
        &services(),
        None,
    )
    .unwrap();
    assert_ne!(newer.hash, d.hash);
    assert_eq!(newer.object["spec"]["source"]["targetRevision"], OLD);
}

#[test]
fn one_application_for_the_environment_with_helm_parameters_per_service() {
    let mut s = settings("charts/shop", ArgoCdTool::Helm);
    s.helm = Some(ArgoCdHelm {
        value_files: vec!["values-preview.yaml".into()],
        image_repository_parameter: "{service}.image.repository".into(),
        image_tag_parameter: "{service}.image.tag".into(),
    });
    let planned = planned_applications(&s, "preview-7-feature", &services());
    assert_eq!(
        planned,
        vec![PlannedApplication {
            name: "preview-7-feature".into(),
            service: None
        }]
    );
    let d = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap();
    let helm = &d.object["spec"]["source"]["helm"];
    assert_eq!(helm["valueFiles"], json!(["values-preview.yaml"]));
    assert_eq!(
        helm["parameters"],
        json!([
            {"name": "api.image.repository", "value": "ghcr.io/acme/api", "forceString": true},
            {"name": "api.image.tag", "value": "pr-7", "forceString": true},
            {"name": "web.image.repository", "value": "registry.local:5000/acme/web", "forceString": true},
            {"name": "web.image.tag", "value": "sha256:abcd", "forceString": true},
        ])
    );
    assert!(d.object["spec"]["source"].get("kustomize").is_none());
}

#[test]
fn helm_parameters_shared_by_several_services_are_refused() {
    let s = settings("charts/shop", ArgoCdTool::Helm);
    let planned = planned_applications(&s, "preview-7-feature", &services());
    let e = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.reason, "ArgoCdSettingsInvalid");
    assert!(e.message.contains("{service}"), "{}", e.message);
    // One Application per service may use plain names.
    let s = settings("charts/{service}", ArgoCdTool::Helm);
    let planned = planned_applications(&s, "preview-7-feature", &services());
    let d = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[1],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap();
    assert_eq!(
        d.object["spec"]["source"]["helm"]["parameters"][0]["name"],
        "image.repository"
    );
}

#[test]
fn a_pinned_revision_replaces_the_head_commit() {
    let mut s = settings("deploy/{service}", ArgoCdTool::Kustomize);
    s.target_revision = Some("main".into());
    let planned = planned_applications(&s, "preview-7-feature", &services());
    let d = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap();
    assert_eq!(d.object["spec"]["source"]["targetRevision"], "main");
}

fn app(status: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": "a"}, "status": status})
}

fn available(h: &Health) -> bool {
    matches!(h, Health::Available(_))
}

#[test]
fn synced_and_healthy_at_the_head_commit_is_available() {
    let ok = app(json!({
        "sync": {"status": "Synced", "revision": SHA},
        "health": {"status": "Healthy"},
        "operationState": {"phase": "Succeeded", "syncResult": {"revision": SHA}}
    }));
    assert!(available(&application_health("a", &ok, Some(SHA))));
    // No operation recorded yet is fine too.
    let no_op = app(json!({
        "sync": {"status": "Synced", "revision": SHA},
        "health": {"status": "Healthy"}
    }));
    assert!(available(&application_health("a", &no_op, Some(SHA))));
    // A pinned revision is not compared.
    assert!(available(&application_health("a", &no_op, None)));
}

#[test]
fn anything_short_of_that_is_progressing() {
    let cases = [
        json!(null),
        json!({"sync": {"status": "OutOfSync", "revision": OLD}, "health": {"status": "Healthy"}}),
        json!({"sync": {"status": "Synced", "revision": OLD}, "health": {"status": "Healthy"}}),
        json!({"sync": {"status": "Synced", "revision": SHA}, "health": {"status": "Progressing", "message": "1 of 2 replicas"}}),
        json!({"sync": {"status": "Synced", "revision": SHA}, "health": {"status": "Healthy"},
               "operationState": {"phase": "Running", "syncResult": {"revision": SHA}}}),
        // Degraded at the previous commit: the new one may fix it.
        json!({"sync": {"status": "OutOfSync", "revision": OLD}, "health": {"status": "Degraded"}}),
        // A failed sync of the previous commit.
        json!({"sync": {"status": "OutOfSync", "revision": OLD}, "health": {"status": "Healthy"},
               "operationState": {"phase": "Failed", "message": "old", "syncResult": {"revision": OLD}}}),
    ];
    for status in cases {
        let h = application_health("a", &app(status.clone()), Some(SHA));
        assert!(matches!(h, Health::Progressing(_)), "{status}: {h:?}");
    }
    let h = application_health(
        "a",
        &app(
            json!({"sync": {"status": "Synced", "revision": OLD}, "health": {"status": "Healthy"}}),
        ),
        Some(SHA),
    );
    assert_eq!(
        h,
        Health::Progressing(
            "Argo CD application a: sync Synced, health Healthy, waiting for revision 0123456"
                .into()
        )
    );
}

#[test]
fn degraded_failed_syncs_and_error_conditions_fail_with_argos_message() {
    let degraded = app(json!({
        "sync": {"status": "Synced", "revision": SHA},
        "health": {"status": "Degraded", "message": "Deployment \"api\" exceeded its progress deadline"}
    }));
    assert_eq!(
        application_health("a", &degraded, Some(SHA)),
        Health::Failed(
            "Argo CD application a: Degraded: Deployment \"api\" exceeded its progress deadline"
                .into()
        )
    );
    let sync_failed = app(json!({
        "sync": {"status": "OutOfSync", "revision": SHA},
        "health": {"status": "Missing"},
        "operationState": {"phase": "Failed", "message": "one or more objects failed to apply",
                           "syncResult": {"revision": SHA}}
    }));
    assert_eq!(
        application_health("a", &sync_failed, Some(SHA)),
        Health::Failed(
            "Argo CD application a: sync failed: one or more objects failed to apply".into()
        )
    );
    let error = app(json!({
        "sync": {"status": "Unknown"},
        "conditions": [
            {"type": "OrphanedResourceWarning", "message": "ignored"},
            {"type": "ComparisonError", "message": "rpc error: path does not exist"}
        ]
    }));
    assert_eq!(
        application_health("a", &error, Some(SHA)),
        Health::Failed(
            "Argo CD application a: ComparisonError: rpc error: path does not exist".into()
        )
    );
}

#[test]
fn a_retry_requests_one_sync_and_waits_for_it() {
    let s = settings("deploy/{service}", ArgoCdTool::Kustomize);
    let planned = planned_applications(&s, "preview-7-feature", &services());
    let plain = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        None,
    )
    .unwrap();
    assert!(plain.object.get("operation").is_none());
    let retry = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        Some("1"),
    )
    .unwrap();
    assert_eq!(retry.object["operation"]["sync"]["revision"], SHA);
    assert_eq!(
        retry.object["metadata"]["annotations"][ANNOTATION_RETRY],
        "1"
    );
    assert_ne!(retry.hash, plain.hash);
    let again = desired_application(
        &resource(),
        &ArgoCdPlatform::default(),
        &s,
        &planned[0],
        "preview-7-feature",
        SHA,
        &services(),
        Some("2"),
    )
    .unwrap();
    assert_ne!(
        again.hash, retry.hash,
        "each retry value is one new operation"
    );
    // While Argo CD has not finished the operation, the old failure does not count.
    let mut pending = app(json!({
        "sync": {"status": "OutOfSync", "revision": SHA},
        "health": {"status": "Degraded"},
        "operationState": {"phase": "Failed", "message": "old", "syncResult": {"revision": SHA}}
    }));
    pending["operation"] = json!({"sync": {"revision": SHA}});
    assert!(matches!(
        application_health("a", &pending, Some(SHA)),
        Health::Progressing(_)
    ));
}
