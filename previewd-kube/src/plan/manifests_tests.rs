//! The planner with templated manifests, Secrets by reference and egress rules: waves
//! open one at a time, copies are written once per source version and pruned, and bad
//! input stalls before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::json;

use super::namespace::{ANNOTATION_OWNER_UID, NamespaceMeta};
use super::object::ObservedChild;
use super::*;
use crate::crd::PreviewRepository;
use crate::strategy::{CatalogueStrategy, DeployStrategy, ManifestsStrategy};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn now() -> jiff::Timestamp {
    "2026-11-29T12:00:00Z".parse().unwrap()
}

fn env() -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-7", "namespace": "team", "uid": "u-1", "generation": 1,
                     "creationTimestamp": now().to_string(), "finalizers": ["previewd.io/cleanup"]},
        "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "feature", "headSHA": SHA,
                 "repositoryRef": "shop", "ingress": {"enabled": false},
                 "services": [{"name": "api", "image": "ghcr.io/acme/api:pr-7", "port": 8080}]}
    }))
    .unwrap()
}

fn repository(extra: serde_json::Value) -> Arc<PreviewRepository> {
    let mut spec = json!({
        "repository": "acme/shop", "baseDomain": "preview.test",
        "catalogue": {"services": [{"name": "api", "image": "ghcr.io/acme/api:pr-{{number}}"}]}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
            "metadata": {"name": "shop", "namespace": "team"}, "spec": spec
        }))
        .unwrap(),
    )
}

fn config() -> PlannerConfig {
    PlannerConfig {
        secret_namespace: Some("previewd-secrets".into()),
        ..PlannerConfig::default()
    }
}

fn run(
    env: &PreviewEnvironment,
    observed: &Observed,
    strategy: Arc<dyn DeployStrategy>,
    config: &PlannerConfig,
) -> Plan {
    let strategies = Strategies::new(strategy);
    plan(&PlanInput {
        env,
        observed,
        now: now(),
        config,
        strategies: &strategies,
        stages: &[],
    })
}

/// What the API server would hold after the plan: every applied object with its hash.
fn apply(observed: &mut Observed, plan: &Plan) {
    for d in &plan.apply {
        if d.resource.kind == "Namespace" {
            observed.namespaces.insert(
                d.name.clone(),
                NamespaceMeta {
                    labels: serde_json::from_value(d.object["metadata"]["labels"].clone()).unwrap(),
                    owner_uid: d.object["metadata"]["annotations"][ANNOTATION_OWNER_UID]
                        .as_str()
                        .map(str::to_string),
                    deleting: false,
                    applied_hash: Some(d.hash.clone()),
                },
            );
            continue;
        }
        let view = observed
            .views
            .entry(d.namespace.clone().unwrap())
            .or_default();
        view.children.insert(
            d.key(),
            ObservedChild {
                applied_hash: Some(d.hash.clone()),
                deleting: false,
                fingerprint: d.fingerprint.clone(),
            },
        );
    }
}

fn written(env: &PreviewEnvironment, plan: &Plan) -> PreviewEnvironment {
    let mut next = env.clone();
    next.status = Some(plan.status.clone());
    next
}

fn names(plan: &Plan) -> Vec<String> {
    plan.apply
        .iter()
        .map(|d| format!("{}/{}", d.resource.kind, d.name))
        .collect()
}

/// Marks the applied object `kind/name` with `status` in the caches (whole object).
fn set_status(
    observed: &mut Observed,
    plan: &Plan,
    kind: &str,
    name: &str,
    status: serde_json::Value,
) {
    let d = plan
        .apply
        .iter()
        .find(|d| d.resource.kind == kind && d.name == name)
        .unwrap();
    let mut live = d.object.clone();
    live["status"] = status;
    let ns = d.namespace.clone().unwrap();
    observed.views.get_mut(&ns).unwrap().objects.insert(
        d.key(),
        Arc::new(serde_json::from_value::<DynamicObject>(live).unwrap()),
    );
}

fn stalled(plan: &Plan) -> (String, String) {
    let c = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::STALLED)
        .unwrap();
    (c.reason.clone(), c.message.clone())
}

#[test]
fn waves_open_one_at_a_time_and_later_waves_are_never_pruned() {
    let repo = repository(json!({
        "strategy": "manifests",
        "catalogueWave": 2,
        "manifests": [
            {"wave": 0, "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}},
            {"wave": 0, "template": {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": {"spec": {"containers": []}}}}},
            {"wave": 1, "template": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate-{{shortSha}}"},
                "spec": {"template": {"spec": {"containers": []}}}}}
        ]
    }));
    let strategy: Arc<dyn DeployStrategy> = Arc::new(ManifestsStrategy::default());
    let cfg = config();
    let mut observed = Observed {
        repositories: vec![repo],
        ..Observed::default()
    };
    let e = env();

    // Wave 0 with the namespace; the Job and the catalogue's objects wait.
    let first = run(&e, &observed, strategy.clone(), &cfg);
    let applied = names(&first);
    assert!(
        applied.contains(&"ConfigMap/settings".to_string()),
        "{applied:?}"
    );
    assert!(applied.contains(&"StatefulSet/db".to_string()));
    assert!(
        !applied
            .iter()
            .any(|n| n.starts_with("Job/") || n.ends_with("/api")),
        "{applied:?}"
    );
    apply(&mut observed, &first);
    let e = written(&e, &first);

    // The database is applied but not ready: nothing new is applied, nothing pruned, even
    // an object of a later wave left from an earlier commit.
    set_status(
        &mut observed,
        &first,
        "StatefulSet",
        "db",
        json!({"replicas": 1, "readyReplicas": 0}),
    );
    let ns = first.status.namespace.clone().unwrap();
    observed.views.get_mut(&ns).unwrap().children.insert(
        ChildKey::of::<k8s_openapi::api::apps::v1::Deployment>("api"),
        ObservedChild::default(),
    );
    let waiting = run(&e, &observed, strategy.clone(), &cfg);
    assert!(waiting.apply.is_empty(), "{:?}", names(&waiting));
    assert!(waiting.delete.is_empty(), "{:?}", waiting.delete);
    assert_eq!(waiting.status.phase, Some(Phase::Provisioning));
    assert!(
        waiting
            .status
            .message
            .as_deref()
            .unwrap()
            .starts_with("wave 0: StatefulSet db: 0/1 ready"),
        "{:?}",
        waiting.status.message
    );

    // Ready: wave 1, and only wave 1.
    set_status(
        &mut observed,
        &first,
        "StatefulSet",
        "db",
        json!({"replicas": 1, "readyReplicas": 1}),
    );
    let second = run(&e, &observed, strategy.clone(), &cfg);
    assert_eq!(names(&second), ["Job/migrate-0123456"]);
    apply(&mut observed, &second);

    // The Job completes: the catalogue's objects (wave 2) follow.
    set_status(
        &mut observed,
        &second,
        "Job",
        "migrate-0123456",
        json!({"conditions": [{"type": "Complete", "status": "True"}]}),
    );
    let third = run(&e, &observed, strategy, &cfg);
    assert_eq!(names(&third), ["Deployment/api", "Service/api"]);
}

fn source(rv: &str) -> Arc<Secret> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "previewd-secrets", "resourceVersion": rv,
                         "labels": {"previewd.io/preview-secret": "true"},
                         "annotations": {"previewd.io/allowed-repositories": "acme/*"}},
            "data": {"password": "c2VjcmV0"}
        }))
        .unwrap(),
    )
}

#[test]
fn secret_copies_are_written_once_per_source_version_and_pruned() {
    let cfg = config();
    let catalogue: Arc<dyn DeployStrategy> = Arc::new(CatalogueStrategy);
    let mut observed = Observed {
        repositories: vec![repository(json!({"secrets": [{"name": "db"}]}))],
        source_secrets: [("db".to_string(), source("1"))].into(),
        ..Observed::default()
    };
    let e = env();
    let first = run(&e, &observed, catalogue.clone(), &cfg);
    let applied = names(&first);
    assert_eq!(
        applied[0],
        format!("Namespace/{}", first.status.namespace.clone().unwrap())
    );
    assert_eq!(applied[1], "Secret/db", "copies right after the namespace");
    let copy = &first.apply[1].object;
    assert_eq!(copy["data"]["password"], "c2VjcmV0");
    assert_eq!(copy["metadata"]["labels"]["previewd.io/env"], "shop-pr-7");
    assert_eq!(
        first.status.copied_secrets,
        [("db".to_string(), "1".to_string())].into()
    );
    apply(&mut observed, &first);
    let e = written(&e, &first);

    // Unchanged source: not written again.
    let again = run(&e, &observed, catalogue.clone(), &cfg);
    assert!(
        !names(&again).contains(&"Secret/db".to_string()),
        "{:?}",
        names(&again)
    );

    // The source changed: the copy follows.
    observed.source_secrets.insert("db".into(), source("2"));
    let changed = run(&e, &observed, catalogue.clone(), &cfg);
    assert!(names(&changed).contains(&"Secret/db".to_string()));
    assert_eq!(changed.status.copied_secrets["db"], "2");
    let e = written(&e, &changed);

    // The repository no longer names it: the copy is deleted.
    observed.repositories = vec![repository(json!({}))];
    let dropped = run(&e, &observed, catalogue.clone(), &cfg);
    assert!(
        dropped
            .delete
            .iter()
            .any(|c| c.resource.kind == "Secret" && c.name == "db"),
        "{:?}",
        dropped.delete
    );
    assert!(dropped.status.copied_secrets.is_empty());

    // A source that is missing (or not labelled), or no source namespace at all: stalled,
    // nothing written.
    let fresh = env();
    let missing = Observed {
        repositories: vec![repository(json!({"secrets": [{"name": "db"}]}))],
        ..Observed::default()
    };
    let plan = run(&fresh, &missing, catalogue.clone(), &cfg);
    assert!(plan.apply.is_empty());
    assert_eq!(stalled(&plan).0, "SecretNotFound");
    let mut unlabelled = (*source("1")).clone();
    unlabelled.metadata.labels = None;
    let not_copyable = Observed {
        source_secrets: [("db".to_string(), Arc::new(unlabelled))].into(),
        ..missing.clone()
    };
    assert_eq!(
        stalled(&run(&fresh, &not_copyable, catalogue.clone(), &cfg)).0,
        "SecretNotFound"
    );
    let off = PlannerConfig::default();
    let plan = run(&fresh, &missing, catalogue, &off);
    assert!(plan.apply.is_empty());
    assert_eq!(stalled(&plan).0, "SecretsNotConfigured");
}

#[test]
fn egress_rules_reach_the_allow_policy_and_bad_ones_stall() {
    let cfg = config();
    let catalogue: Arc<dyn DeployStrategy> = Arc::new(CatalogueStrategy);
    let observed = Observed {
        repositories: vec![repository(
            json!({"egress": [{"cidrs": ["192.0.2.0/24"], "ports": [{"port": 443}]}]}),
        )],
        ..Observed::default()
    };
    let plan = run(&env(), &observed, catalogue.clone(), &cfg);
    let allow = plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "NetworkPolicy" && d.name == "previewd-allow")
        .unwrap();
    assert_eq!(
        allow.object["spec"]["egress"][2],
        json!({"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]})
    );
    let metadata = Observed {
        repositories: vec![repository(
            json!({"egress": [{"cidrs": ["169.254.169.254/32"]}]}),
        )],
        ..Observed::default()
    };
    let plan = run(&env(), &metadata, catalogue, &cfg);
    assert!(plan.apply.is_empty());
    let (reason, message) = stalled(&plan);
    assert_eq!(reason, "EgressInvalid");
    assert!(message.contains("metadata"), "{message}");
}

fn forked(mut e: PreviewEnvironment, value: &str) -> PreviewEnvironment {
    e.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(crate::crd::LABEL_FORK.into(), value.into());
    e
}

#[test]
fn fork_environments_get_no_secrets_and_no_egress() {
    use super::fork::CONDITION_FORK_RESTRICTED;
    let cfg = config();
    let catalogue: Arc<dyn DeployStrategy> = Arc::new(CatalogueStrategy);
    let both = json!({
        "secrets": [{"name": "db"}],
        "egress": [{"cidrs": ["192.0.2.0/24"], "ports": [{"port": 443}]}]
    });
    /// Fork label, repository extra, copy applied, egress rules in the allow policy,
    /// condition message.
    type Case = (
        Option<&'static str>,
        serde_json::Value,
        bool,
        usize,
        Option<&'static str>,
    );
    let table: [Case; 6] = [
        (None, both.clone(), true, 3, None),
        (Some("false"), both.clone(), true, 3, None),
        (
            Some("true"),
            both.clone(),
            false,
            2,
            Some("Secrets (1) and egress rules (1) are withheld"),
        ),
        (
            Some("true"),
            json!({"secrets": [{"name": "db"}]}),
            false,
            2,
            Some("Secrets (1) and egress rules (0)"),
        ),
        (
            Some("true"),
            json!({"egress": [{"cidrs": ["192.0.2.0/24"]}]}),
            false,
            2,
            Some("Secrets (0) and egress rules (1)"),
        ),
        (
            Some("true"),
            json!({}),
            false,
            2,
            Some("Secrets (0) and egress rules (0)"),
        ),
    ];
    for (label, extra, copied, egress_rules, condition) in table {
        let case = format!("{label:?} {extra}");
        let observed = Observed {
            repositories: vec![repository(extra)],
            source_secrets: [("db".to_string(), source("1"))].into(),
            ..Observed::default()
        };
        let e = match label {
            Some(v) => forked(env(), v),
            None => env(),
        };
        let plan = run(&e, &observed, catalogue.clone(), &cfg);
        assert!(
            plan.status.phase.is_some(),
            "{case}: not stalled: {:?}",
            plan.status
        );
        assert_eq!(
            names(&plan).contains(&"Secret/db".to_string()),
            copied,
            "{case}: {:?}",
            names(&plan)
        );
        assert_eq!(plan.status.copied_secrets.is_empty(), !copied, "{case}");
        let allow = plan
            .apply
            .iter()
            .find(|d| d.resource.kind == "NetworkPolicy" && d.name == "previewd-allow")
            .unwrap();
        assert_eq!(
            allow.object["spec"]["egress"].as_array().unwrap().len(),
            egress_rules,
            "{case}: {}",
            allow.object["spec"]["egress"]
        );
        let found = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_FORK_RESTRICTED);
        match condition {
            Some(text) => {
                let c = found.unwrap_or_else(|| panic!("{case}: no condition"));
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("True", "ForkPullRequest")
                );
                assert!(c.message.contains(text), "{case}: {}", c.message);
            }
            None => assert!(found.is_none(), "{case}"),
        }
    }
}

#[test]
fn a_copy_made_before_the_fork_label_is_deleted() {
    let cfg = config();
    let catalogue: Arc<dyn DeployStrategy> = Arc::new(CatalogueStrategy);
    let mut observed = Observed {
        repositories: vec![repository(json!({"secrets": [{"name": "db"}]}))],
        source_secrets: [("db".to_string(), source("1"))].into(),
        ..Observed::default()
    };
    let e = env();
    let first = run(&e, &observed, catalogue.clone(), &cfg);
    assert!(names(&first).contains(&"Secret/db".to_string()));
    apply(&mut observed, &first);
    let e = forked(written(&e, &first), "true");
    let plan = run(&e, &observed, catalogue, &cfg);
    assert!(
        plan.delete
            .iter()
            .any(|c| c.resource.kind == "Secret" && c.name == "db"),
        "{:?}",
        plan.delete
    );
    assert!(plan.status.copied_secrets.is_empty());
    assert!(!names(&plan).contains(&"Secret/db".to_string()));
}
