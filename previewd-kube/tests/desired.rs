//! The pure `desired_*` builders and the renderer, without a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use previewd_core::Tier;
use previewd_kube::children::ingress::{desired_ingress, urls};
use previewd_kube::children::namespace::{
    GuardSettings, desired_allow_policy, desired_default_deny, desired_namespace,
    desired_resource_quota,
};
use previewd_kube::children::workload::{WorkloadSettings, desired_deployment, tier_resources};
use previewd_kube::children::{desired_hash, with_hash};
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::render::{PullRequestSnapshot, RenderError, render_environment, render_image};
use serde_json::json;

fn env() -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-4", "namespace": "previews"},
        "spec": {"repository": "acme/shop", "prNumber": 4, "branch": "b",
            "headSHA": "0123456789abcdef0123456789abcdef01234567",
            "services": [{"name": "api", "image": "ghcr.io/acme/api:pr-4", "port": 9090},
                         {"name": "web", "image": "ghcr.io/acme/web@sha256:abc", "ingressPath": "/"}]}
    }))
    .unwrap()
}

#[test]
fn namespace_has_labels_and_restricted_pod_security() {
    let ns = desired_namespace(&env(), "preview-4-b", &GuardSettings::default());
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(labels["previewd.io/env"], "shop-pr-4");
    assert_eq!(labels["previewd.io/env-namespace"], "previews");
    assert_eq!(labels["previewd.io/repo"], "acme.shop");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels["pod-security.kubernetes.io/audit"], "restricted");
}

#[test]
fn quota_uses_defaults_and_overrides() {
    let q = desired_resource_quota(&env(), "ns", &Default::default())
        .spec
        .unwrap()
        .hard
        .unwrap();
    assert_eq!(q["requests.cpu"].0, "2");
    assert_eq!(q["pods"].0, "20");
    let mut e = env();
    e.spec.quota = Some(serde_json::from_value(json!({"cpu": "4", "pods": 50})).unwrap());
    let q = desired_resource_quota(&e, "ns", &Default::default())
        .spec
        .unwrap()
        .hard
        .unwrap();
    assert_eq!(q["requests.cpu"].0, "4");
    assert_eq!(q["requests.memory"].0, "4Gi");
    assert_eq!(q["pods"].0, "50");
}

#[test]
fn quota_caps_public_services_at_zero_and_counts_objects() {
    use previewd_kube::children::namespace::{GuardSettings, parse_object_counts};
    let q = desired_resource_quota(&env(), "ns", &GuardSettings::default())
        .spec
        .unwrap()
        .hard
        .unwrap();
    assert_eq!(q["services.loadbalancers"].0, "0");
    assert_eq!(q["services.nodeports"].0, "0");
    assert_eq!(q["services"].0, "50");
    assert_eq!(q["count/jobs.batch"].0, "50");
    let guard = GuardSettings {
        object_counts: parse_object_counts("services=8,count/jobs.batch=3").unwrap(),
        ..GuardSettings::default()
    };
    let q = desired_resource_quota(&env(), "ns", &guard)
        .spec
        .unwrap()
        .hard
        .unwrap();
    assert_eq!(
        (q["services"].0.as_str(), q["count/jobs.batch"].0.as_str()),
        ("8", "3")
    );
    assert_eq!(q["configmaps"].0, "100", "the other defaults stay");
    assert!(parse_object_counts("services.loadbalancers=5").is_err());
    assert!(parse_object_counts("pods=-1").is_err());
    assert!(parse_object_counts("widgets=3").is_err());
}

#[test]
fn network_policies_deny_by_default_and_allow_dns_and_ingress() {
    let deny = desired_default_deny(&env(), "ns").spec.unwrap();
    assert!(deny.ingress.is_none() && deny.egress.is_none());
    let guard = GuardSettings {
        ingress_namespace: "traefik".into(),
        ..GuardSettings::default()
    };
    let allow = serde_json::to_string(&desired_allow_policy(&env(), "ns", &guard)).unwrap();
    assert!(allow.contains("traefik") && allow.contains("kube-system") && allow.contains("53"));
}

#[test]
fn deployments_are_restricted_sized_and_pinned_when_possible() {
    let e = env();
    let d = desired_deployment(
        &e,
        "ns",
        &e.spec.services[0],
        Tier::Medium,
        false,
        &WorkloadSettings::default(),
    );
    let pod = d.spec.unwrap().template;
    assert_eq!(
        pod.metadata.unwrap().annotations.unwrap()["previewd.io/head-sha"],
        e.spec.head_sha
    );
    let spec = pod.spec.unwrap();
    let c = &spec.containers[0];
    assert_eq!(
        c.image_pull_policy.as_deref(),
        Some("Always"),
        "mutable tag is pulled again"
    );
    assert_eq!(c.resources, Some(tier_resources(Tier::Medium)));
    assert_eq!(
        c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "500m"
    );
    assert!(spec.node_selector.is_none());
    let d = desired_deployment(
        &e,
        "ns",
        &e.spec.services[1],
        Tier::Small,
        true,
        &WorkloadSettings::default(),
    );
    let spec = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent"),
        "digest is pinned"
    );
    assert_eq!(
        spec.node_selector.unwrap()["karpenter.sh/capacity-type"],
        "spot"
    );
    assert_eq!(spec.tolerations.unwrap().len(), 1);
}

#[test]
fn ingress_and_urls() {
    let e = env();
    let ing = desired_ingress(&e, "ns", "pr-4.preview.test", true, Some("nginx"), "issuer");
    let ann = ing.metadata.annotations.unwrap();
    assert_eq!(ann["cert-manager.io/cluster-issuer"], "issuer");
    assert_eq!(
        ann["external-dns.alpha.kubernetes.io/hostname"],
        "pr-4.preview.test"
    );
    let (url, per) = urls("pr-4.preview.test", false, &e.spec.services);
    assert_eq!(url, "http://pr-4.preview.test/");
    assert_eq!(per["api"], "http://pr-4.preview.test/api");
    assert_eq!(per["web"], "http://pr-4.preview.test/");
}

#[test]
fn the_desired_hash_is_stable_and_sensitive() {
    let e = env();
    let a = desired_namespace(&e, "n", &GuardSettings::default());
    assert_eq!(desired_hash(&a), desired_hash(&a.clone()));
    let b = desired_namespace(&e, "m", &GuardSettings::default());
    assert_ne!(desired_hash(&a), desired_hash(&b));
    let hashed = with_hash(a);
    assert!(
        hashed
            .metadata
            .annotations
            .unwrap()
            .contains_key("previewd.io/applied-hash")
    );
}

fn repo() -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": "previews"},
        "spec": {"repository": "acme/shop", "baseDomain": "preview.example.com", "defaultTtl": "2h",
            "catalogue": {"services": [
                {"name": "api", "image": "ghcr.io/acme/api:pr-{{number}}-{{shortSha}}", "tier": "medium"},
                {"name": "web", "image": "ghcr.io/acme/web:{{branch}}"}]}}
    }))
    .unwrap()
}

fn pr() -> PullRequestSnapshot {
    PullRequestSnapshot {
        repository: "acme/shop".into(),
        number: 17,
        branch: "feature/Login".into(),
        head_sha: "abcdef0123456789abcdef0123456789abcdef01".into(),
        base_branch: Some("main".into()),
        author: Some("octocat".into()),
        updated_at: Some("2026-11-25T10:00:00Z".into()),
        last_activity: None,
    }
}

#[test]
fn a_repository_default_tier_of_auto_leaves_the_tier_to_the_advisor() {
    use previewd_kube::crd::TierChoice;
    let mut r = repo();
    r.spec.default_tier = Some(TierChoice::Auto);
    let env = render_environment(&r, &pr()).unwrap();
    assert_eq!(env.spec.resources.tier, Some(TierChoice::Auto));
    // A fixed default applies only when no service declares a tier.
    r.spec.default_tier = Some(TierChoice::Large);
    let env = render_environment(&r, &pr()).unwrap();
    assert_eq!(env.spec.resources.tier, Some(TierChoice::Medium));
    for s in &mut r.spec.catalogue.services {
        s.tier = None;
    }
    let env = render_environment(&r, &pr()).unwrap();
    assert_eq!(env.spec.resources.tier, Some(TierChoice::Large));
    let yaml: PreviewRepository = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": "previews"},
        "spec": {"repository": "acme/shop", "baseDomain": "preview.example.com", "defaultTier": "auto",
                 "catalogue": {"services": [{"name": "api", "image": "x"}]}}
    }))
    .unwrap();
    assert_eq!(yaml.spec.default_tier, Some(TierChoice::Auto));
}

#[test]
fn renders_an_environment_from_repository_settings() {
    let env = render_environment(&repo(), &pr()).unwrap();
    assert_eq!(env.metadata.namespace.as_deref(), Some("previews"));
    assert_eq!(env.spec.pr_number, 17);
    assert_eq!(env.spec.services[0].image, "ghcr.io/acme/api:pr-17-abcdef0");
    assert_eq!(env.spec.services[1].image, "ghcr.io/acme/web:feature-Login");
    assert_eq!(
        env.spec.resources.tier,
        Some(previewd_kube::crd::TierChoice::Medium),
        "largest declared tier"
    );
    assert_eq!(env.spec.ttl.map(|t| t.to_string()).as_deref(), Some("2h"));
    assert_eq!(
        env.spec.ingress.unwrap().host.as_deref(),
        Some("pr-17.preview.example.com")
    );
    assert_eq!(
        env.metadata.annotations.unwrap()["previewd.io/pr-updated-at"],
        "2026-11-25T10:00:00Z"
    );
    assert!(env.status.is_none());
}

#[test]
fn rendering_rejects_mismatches_and_bad_shas() {
    let mut other = pr();
    other.repository = "evil/shop".into();
    assert!(matches!(
        render_environment(&repo(), &other),
        Err(RenderError::RepositoryMismatch { .. })
    ));
    let mut bad = pr();
    bad.head_sha = "zzz".into();
    assert!(matches!(
        render_environment(&repo(), &bad),
        Err(RenderError::InvalidSha(_))
    ));
    assert_eq!(
        render_image("x:{{service}}", &pr(), "api").as_deref(),
        Ok("x:api")
    );
    // An unknown variable fails the rendering, naming the service and the variable.
    let mut typo = repo();
    typo.spec.catalogue.services[0].image = "ghcr.io/acme/web:pr-{{nubmer}}".into();
    let err = render_environment(&typo, &pr()).unwrap_err();
    assert_eq!(err.category(), "image_template");
    assert!(
        err.to_string().contains("unknown variable {{nubmer}}"),
        "{err}"
    );
}
