//! The planner's unit tests: every phase transition the controller can take and every
//! failure reason, from plain values (no cluster).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gate;
mod promises;
mod stages;
mod tenancy;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use previewd_core::Phase;
use serde_json::json;

use super::health::Health;
use super::host::HostClaim;
use super::namespace::{ANNOTATION_OWNER_UID, NamespaceMeta, alternative_name, primary_name};
use super::object::{ChildKey, DesiredObject, ObservedChild};
use super::*;
use crate::advice::Advice;
use crate::crd::{AiStatus, PreviewEnvironment, condition};
use crate::plan::PlannerConfig;
use crate::strategy::{
    CatalogueStrategy, DeployStrategy, NamespaceView, RenderInput, Stage, StageOutcome, Strategies,
    WatchedKind,
};

const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA2: &str = "89abcdef0123456789abcdef0123456789abcdef";
const UID: &str = "1f0c6a52-8d7e-4c55-9b1e-0a8c3c2f9e11";

fn t0() -> jiff::Timestamp {
    "2026-11-29T12:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> jiff::Timestamp {
    t0().checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap()
}

fn config() -> PlannerConfig {
    PlannerConfig {
        base_domain: "preview.test".into(),
        readiness_timeout: Duration::from_secs(600),
        poll_interval: Duration::from_secs(2),
        resync_interval: Duration::from_secs(300),
        // Lifecycle policy is off here; `lifecycle_config` turns it on.
        idle_sleep_after: None,
        expiry_warning: Duration::ZERO,
        ..PlannerConfig::default()
    }
}

fn lifecycle_config() -> PlannerConfig {
    PlannerConfig {
        idle_sleep_after: Some(Duration::from_secs(3600)),
        expiry_warning: Duration::from_secs(1800),
        ..config()
    }
}

fn env_with(extra: serde_json::Value) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": "acme/shop",
        "prNumber": 7,
        "branch": "feature",
        "headSHA": SHA1,
        "services": [
            {"name": "api", "image": "ghcr.io/acme/api:pr-7", "port": 8080},
            {"name": "web", "image": "ghcr.io/acme/web:pr-7", "port": 8080, "replicas": 2}
        ],
        "ingress": {"enabled": true}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {
            "name": "shop-pr-7", "namespace": "team", "uid": UID, "generation": 1,
            "creationTimestamp": t0().to_string(),
            "finalizers": ["previewd.io/cleanup"]
        },
        "spec": spec,
    }))
    .unwrap()
}

fn env() -> PreviewEnvironment {
    env_with(json!({}))
}

struct World {
    observed: Observed,
}

impl World {
    fn empty() -> World {
        World {
            observed: Observed::default(),
        }
    }

    /// Carries out a plan the way the API server would: applied objects appear with
    /// their hash; Deployments become available when `available`.
    fn apply(&mut self, env: &PreviewEnvironment, plan: &Plan, available: bool) {
        for d in &plan.apply {
            if d.resource.kind == "Namespace" {
                self.observed.namespaces.insert(
                    d.name.clone(),
                    NamespaceMeta {
                        labels: serde_json::from_value(d.object["metadata"]["labels"].clone())
                            .unwrap(),
                        owner_uid: d.object["metadata"]["annotations"][ANNOTATION_OWNER_UID]
                            .as_str()
                            .map(str::to_string),
                        deleting: false,
                        applied_hash: Some(d.hash.clone()),
                    },
                );
                continue;
            }
            let ns = d.namespace.clone().unwrap();
            let view = self.observed.views.entry(ns).or_default();
            view.children.insert(
                d.key(),
                ObservedChild {
                    applied_hash: Some(d.hash.clone()),
                    deleting: false,
                    fingerprint: d.fingerprint.clone(),
                },
            );
            if d.resource.kind == "Deployment" {
                let mut dep: Deployment = serde_json::from_value(d.object.clone()).unwrap();
                let replicas = dep.spec.as_ref().unwrap().replicas.unwrap();
                dep.metadata.generation = Some(1);
                let ready = if available { replicas } else { 0 };
                dep.status = Some(
                    serde_json::from_value(json!({
                        "observedGeneration": 1, "replicas": replicas,
                        "updatedReplicas": ready, "availableReplicas": ready
                    }))
                    .unwrap(),
                );
                view.deployments
                    .retain(|x| x.metadata.name != dep.metadata.name);
                view.deployments.push(Arc::new(dep));
            }
        }
        for c in &plan.delete {
            if c.resource.kind == "Namespace" {
                if let Some(ns) = self.observed.namespaces.get_mut(&c.name) {
                    ns.deleting = true;
                }
                continue;
            }
            if let Some(view) = self.observed.views.get_mut(c.namespace.as_ref().unwrap()) {
                view.children
                    .retain(|k, _| !(k.kind == c.resource.kind && k.name == c.name));
                view.deployments.retain(|d| {
                    !(c.resource.kind == "Deployment"
                        && d.metadata.name.as_deref() == Some(&c.name))
                });
            }
        }
        let _ = env;
    }

    fn view(&mut self, ns: &str) -> &mut NamespaceView {
        self.observed.views.entry(ns.to_string()).or_default()
    }
}

fn run(env: &PreviewEnvironment, world: &World, now: jiff::Timestamp) -> Plan {
    run_with(env, world, now, Arc::new(CatalogueStrategy), &[])
}

fn run_with(
    env: &PreviewEnvironment,
    world: &World,
    now: jiff::Timestamp,
    strategy: Arc<dyn DeployStrategy>,
    stages: &[Arc<dyn Stage>],
) -> Plan {
    run_configured(env, world, now, &config(), strategy, stages)
}

fn run_configured(
    env: &PreviewEnvironment,
    world: &World,
    now: jiff::Timestamp,
    cfg: &PlannerConfig,
    strategy: Arc<dyn DeployStrategy>,
    stages: &[Arc<dyn Stage>],
) -> Plan {
    let strategies = Strategies::new(strategy);
    plan(&PlanInput {
        env,
        observed: &world.observed,
        now,
        config: cfg,
        strategies: &strategies,
        stages,
    })
}

/// The environment after the plan's status was written.
fn written(env: &PreviewEnvironment, plan: &Plan) -> PreviewEnvironment {
    let mut next = env.clone();
    next.status = Some(plan.status.clone());
    next
}

fn phase(plan: &Plan) -> Phase {
    plan.status.phase.unwrap()
}

fn cond<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn kinds(objects: &[DesiredObject]) -> Vec<String> {
    objects
        .iter()
        .map(|d| format!("{}/{}", d.resource.kind, d.name))
        .collect()
}

/// Drives a fresh environment to Ready: Pending → Provisioning → Ready.
fn to_ready(world: &mut World) -> PreviewEnvironment {
    let e = env();
    let first = run(&e, world, at(1));
    world.apply(&e, &first, true);
    let e = written(&e, &first);
    let second = run(&e, world, at(2));
    assert_eq!(phase(&second), Phase::Ready, "{:?}", second.status.message);
    world.apply(&e, &second, true);
    written(&e, &second)
}

#[test]
fn a_new_environment_gets_its_finalizer_namespace_first_and_provisions() {
    let mut e = env();
    e.metadata.finalizers = None;
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(plan.finalizer, FinalizerAction::Add);
    assert_eq!(phase(&plan), Phase::Provisioning);
    let applied = kinds(&plan.apply);
    assert_eq!(applied[0], format!("Namespace/{}", primary_name(&e)));
    for want in [
        "ResourceQuota/previewd",
        "LimitRange/previewd",
        "NetworkPolicy/previewd",
        "NetworkPolicy/previewd-allow",
        "Ingress/preview",
        "Deployment/api",
        "Service/api",
        "Deployment/web",
        "Service/web",
    ] {
        assert!(
            applied.iter().any(|a| a == want),
            "{want} missing from {applied:?}"
        );
    }
    let ns = &plan.apply[0];
    assert_eq!(
        ns.object["metadata"]["annotations"][ANNOTATION_OWNER_UID], UID,
        "the namespace carries the ownership marker"
    );
    assert_eq!(plan.report, Some(Report::Changed));
    assert_eq!(plan.entered, vec![Phase::Provisioning]);
    assert_eq!(plan.events[0].reason, "NamespaceReady");
    assert!(cond(&plan, condition::NAMESPACE_READY).status == "True");
    assert!(cond(&plan, condition::RECONCILING).status == "True");
    assert_eq!(
        plan.requeue_after,
        Some(Duration::from_secs(2)),
        "polls while provisioning"
    );
    assert_eq!(
        plan.status.url.as_deref(),
        Some("https://pr-7.preview.test/")
    );
    assert_eq!(plan.status.host.as_deref(), Some("pr-7.preview.test"));
}

#[test]
fn available_services_make_it_ready_and_a_converged_environment_plans_nothing() {
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, true);
    let e = written(&e, &first);
    let second = run(&e, &world, at(2));
    assert_eq!(phase(&second), Phase::Ready);
    assert!(second.apply.is_empty(), "{:?}", kinds(&second.apply));
    assert_eq!(second.status.ready_at, Some(Time(at(2))));
    assert_eq!(second.events[0].reason, "ServicesAvailable");
    assert_eq!(cond(&second, condition::READY).status, "True");
    assert_eq!(cond(&second, condition::RECONCILING).status, "False");
    assert_eq!(cond(&second, condition::STALLED).status, "False");
    let e = written(&e, &second);
    let third = run(&e, &world, at(3));
    assert_eq!(third.status, e.status.clone().unwrap(), "no status write");
    assert!(third.apply.is_empty() && third.delete.is_empty() && third.events.is_empty());
    assert_eq!(third.report, None);
    assert!(third.entered.is_empty());
}

/// Plans with durable reports on (a reporter that confirms deliveries).
fn run_durable(env: &PreviewEnvironment, world: &World, now: jiff::Timestamp) -> Plan {
    let cfg = PlannerConfig {
        durable_reports: true,
        ..config()
    };
    run_configured(env, world, now, &cfg, Arc::new(CatalogueStrategy), &[])
}

#[test]
fn a_report_stays_pending_in_the_status_until_confirmed() {
    let mut world = World::empty();
    let e = env();
    let first = run_durable(&e, &world, at(1));
    assert_eq!(first.report, Some(Report::Changed));
    assert_eq!(
        first.status.pending_report.as_deref(),
        Some(at(1).to_string().as_str()),
        "the report is recorded in the same status write as the change"
    );
    world.apply(&e, &first, true);
    let e = written(&e, &first);

    // Ready: a new report, a new token.
    let second = run_durable(&e, &world, at(2));
    assert_eq!(phase(&second), Phase::Ready);
    assert_eq!(second.report, Some(Report::Changed));
    let token = at(2).to_string();
    assert_eq!(
        second.status.pending_report.as_deref(),
        Some(token.as_str())
    );
    let e = written(&e, &second);

    // A restarted operator sees the unconfirmed report and sends it again, without a
    // status write (the token stays).
    let again = run_durable(&e, &world, at(3));
    assert_eq!(again.report, Some(Report::Changed));
    assert_eq!(again.status, e.status.clone().unwrap(), "no status write");
    assert!(again.events.is_empty() && again.entered.is_empty());

    // Once confirmed (the reporter removed the token), a resync plans nothing at all.
    let mut confirmed = e.clone();
    confirmed.status.as_mut().unwrap().pending_report = None;
    let quiet = run_durable(&confirmed, &world, at(4));
    assert_eq!(quiet.report, None);
    assert_eq!(quiet.status, confirmed.status.clone().unwrap());

    // Without a confirming reporter nothing is recorded, and a stale token is dropped.
    let plain = run(&e, &world, at(5));
    assert_eq!(plain.report, None);
    assert_eq!(plain.status.pending_report, None);
}

#[test]
fn progressing_services_keep_it_provisioning_with_what_waits() {
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    let e = written(&e, &first);
    let second = run(&e, &world, at(2));
    assert_eq!(phase(&second), Phase::Provisioning);
    assert!(
        second
            .status
            .message
            .clone()
            .unwrap()
            .contains("service api: waiting for available replicas")
    );
    assert!(second.entered.is_empty());
}

#[test]
fn a_deleted_or_edited_child_is_put_back() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    // Deleted by hand.
    world
        .view(&ns)
        .deployments
        .retain(|d| d.metadata.name.as_deref() != Some("api"));
    world
        .view(&ns)
        .children
        .remove(&ChildKey::of::<Deployment>("api"));
    let plan = run(&e, &world, at(10));
    assert_eq!(kinds(&plan.apply), vec!["Deployment/api"]);
    assert_eq!(cond(&plan, condition::SERVICES_DEPLOYED).status, "False");
    // Scaled by hand: the fingerprint differs.
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let key = ChildKey::of::<Deployment>("web");
    world.view(&ns).children.get_mut(&key).unwrap().fingerprint = Some("scaled".into());
    let plan = run(&e, &world, at(10));
    assert_eq!(kinds(&plan.apply), vec!["Deployment/web"]);
    // A hash annotation removed by hand.
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let key = ChildKey::of::<Service>("api");
    world.view(&ns).children.get_mut(&key).unwrap().applied_hash = None;
    assert_eq!(kinds(&run(&e, &world, at(10)).apply), vec!["Service/api"]);
    // The namespace's marker removed by hand.
    let mut world = World::empty();
    let e = to_ready(&mut world);
    world.observed.namespaces.get_mut(&ns).unwrap().applied_hash = None;
    assert_eq!(
        kinds(&run(&e, &world, at(10)).apply),
        vec![format!("Namespace/{ns}")]
    );
}

#[test]
fn expiry_deletes_the_environment_without_touching_anything_else() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let plan = run(&e, &world, at(4 * 3600));
    assert!(plan.delete_environment);
    assert_eq!(plan.events[0].reason, "TTLExpired");
    assert!(plan.apply.is_empty());
    assert_eq!(plan.status, e.status.clone().unwrap());
    // One second before, it requeues at the expiry time exactly (+5 ms).
    let before = run(&e, &world, at(4 * 3600 - 1));
    assert!(!before.delete_environment);
    assert_eq!(before.requeue_after, Some(Duration::from_millis(1005)));
}

#[test]
fn an_invalid_ttl_stalls_with_invalid_spec() {
    let e = env_with(json!({"ttl": "8d", "maxLifespan": "7d"}));
    let plan = run(&e, &World::empty(), at(1));
    assert!(plan.apply.is_empty());
    assert_eq!(cond(&plan, condition::STALLED).reason, "InvalidSpec");
    assert_eq!(cond(&plan, condition::STALLED).status, "True");
    assert_eq!(phase(&plan), Phase::Pending);
    assert!(plan.events[0].warning);
    // A second look changes nothing and publishes nothing again.
    let again = run(&written(&e, &plan), &World::empty(), at(2));
    assert!(again.events.is_empty());
}

#[test]
fn a_foreign_namespace_is_avoided_then_refused() {
    let e = env();
    let mut world = World::empty();
    // Same labels as ours, but no marker: somebody else's namespace.
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(crate::crd::LABEL_ENV.to_string(), "shop-pr-7".to_string());
    labels.insert(
        crate::children::LABEL_ENV_NAMESPACE.to_string(),
        "team".to_string(),
    );
    labels.insert(
        crate::crd::LABEL_MANAGED_BY.to_string(),
        "previewd".to_string(),
    );
    world.observed.namespaces.insert(
        primary_name(&e),
        NamespaceMeta {
            labels: labels.clone(),
            ..NamespaceMeta::default()
        },
    );
    let plan = run(&e, &world, at(1));
    assert_eq!(
        plan.status.namespace.as_deref(),
        Some(alternative_name(&e).as_str())
    );
    assert_eq!(plan.apply[0].name, alternative_name(&e));
    // Both taken: NamespaceConflict, nothing applied.
    world.observed.namespaces.insert(
        alternative_name(&e),
        NamespaceMeta {
            owner_uid: Some("another-uid".into()),
            labels,
            ..NamespaceMeta::default()
        },
    );
    let plan = run(&e, &world, at(1));
    assert!(plan.apply.is_empty());
    assert_eq!(cond(&plan, condition::STALLED).reason, "NamespaceConflict");
}

#[test]
fn a_namespace_from_an_earlier_release_is_adopted_only_when_recorded() {
    let mut e = env();
    let name = primary_name(&e);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(crate::crd::LABEL_ENV.to_string(), "shop-pr-7".to_string());
    labels.insert(
        crate::children::LABEL_ENV_NAMESPACE.to_string(),
        "team".to_string(),
    );
    labels.insert(
        crate::crd::LABEL_MANAGED_BY.to_string(),
        "previewd".to_string(),
    );
    let mut world = World::empty();
    world.observed.namespaces.insert(
        name.clone(),
        NamespaceMeta {
            labels,
            ..NamespaceMeta::default()
        },
    );
    e.status = Some(crate::crd::PreviewEnvironmentStatus {
        namespace: Some(name.clone()),
        ..Default::default()
    });
    let plan = run(&e, &world, at(1));
    assert_eq!(plan.status.namespace.as_deref(), Some(name.as_str()));
    assert_eq!(
        plan.apply[0].name, name,
        "adopted, and the marker is written"
    );
}

#[test]
fn a_terminating_namespace_is_waited_for() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    world.observed.namespaces.get_mut(&ns).unwrap().deleting = true;
    let plan = run(&e, &world, at(10));
    assert!(plan.apply.is_empty() && plan.delete.is_empty());
    assert!(
        plan.status
            .message
            .clone()
            .unwrap()
            .contains("finish terminating")
    );
    assert_eq!(cond(&plan, condition::NAMESPACE_READY).status, "False");
}

#[test]
fn failure_reasons() {
    // ServiceFailed: a quota rejection fails at once, with the service and the cause.
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    let ns = first.status.namespace.clone().unwrap();
    let api = world
        .view(&ns)
        .deployments
        .iter()
        .position(|d| d.metadata.name.as_deref() == Some("api"))
        .unwrap();
    let mut broken = (*world.view(&ns).deployments[api]).clone();
    broken.status.as_mut().unwrap().conditions = Some(vec![
        serde_json::from_value(json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "exceeded quota: previewd"
        }))
        .unwrap(),
    ]);
    world.view(&ns).deployments[api] = Arc::new(broken);
    let e = written(&e, &first);
    let plan = run(&e, &world, at(2));
    assert_eq!(phase(&plan), Phase::Failed);
    assert_eq!(cond(&plan, condition::READY).reason, "ServiceFailed");
    assert_eq!(cond(&plan, condition::STALLED).reason, "ServiceFailed");
    assert_eq!(
        cond(&plan, condition::SERVICES_DEPLOYED).reason,
        "ServicesFailed"
    );
    assert!(plan.events[0].warning);
    assert_eq!(plan.events[0].reason, "ServiceFailed");
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .contains("service api: FailedCreate: exceeded quota")
    );
    // Later reconciles keep the recorded reason, even when the services recover.
    let failed = written(&e, &plan);
    let mut healed = World::empty();
    let again = run(&failed, &healed, at(3));
    healed.apply(&failed, &again, true);
    let later = run(&failed, &healed, at(4));
    assert_eq!(phase(&later), Phase::Failed);
    assert_eq!(cond(&later, condition::READY).reason, "ServiceFailed");

    // A fatal pod reason fails at once too.
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api-1", "labels": {"previewd.io/service": "api"}},
        "status": {"containerStatuses": [{"name": "api", "ready": false, "restartCount": 0,
            "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "InvalidImageName", "message": "bad"}}}]}
    }))
    .unwrap();
    world.view(&ns).pods.push(Arc::new(pod));
    let plan = run(&written(&e, &first), &world, at(2));
    assert_eq!(phase(&plan), Phase::Failed);
    assert!(
        plan.status
            .message
            .clone()
            .unwrap()
            .contains("InvalidImageName")
    );

    // ReadinessDeadlineExceeded: progressing past the deadline.
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    let e = written(&e, &first);
    let early = run(&e, &world, at(600));
    assert_eq!(phase(&early), Phase::Provisioning);
    let late = run(&e, &world, at(601));
    assert_eq!(phase(&late), Phase::Failed);
    assert_eq!(
        cond(&late, condition::READY).reason,
        "ReadinessDeadlineExceeded"
    );
    assert!(
        late.status
            .message
            .clone()
            .unwrap()
            .starts_with("services not available within 10m")
    );
}

#[test]
fn a_new_head_commit_rolls_the_services_again() {
    let mut world = World::empty();
    let mut e = to_ready(&mut world);
    e.spec.head_sha = SHA2.into();
    let plan = run(&e, &world, at(100));
    assert_eq!(phase(&plan), Phase::Provisioning);
    assert_eq!(plan.entered, vec![Phase::Provisioning]);
    assert_eq!(plan.events[0].reason, "SpecChanged", "{:?}", plan.events);
    assert_eq!(
        plan.report,
        Some(Report::Changed),
        "the new commit is reported as pending"
    );
    assert_eq!(plan.status.provisioning_since, Some(Time(at(100))));
    assert_eq!(plan.status.ready_at, None);
    assert_eq!(plan.status.deployed_sha.as_deref(), Some(SHA2));
    let applied = kinds(&plan.apply);
    assert!(
        applied.contains(&"Deployment/api".to_string()),
        "{applied:?}"
    );
    world.apply(&e, &plan, true);
    let e = written(&e, &plan);
    let ready = run(&e, &world, at(101));
    assert_eq!(phase(&ready), Phase::Ready);
    assert_eq!(ready.status.ready_at, Some(Time(at(101))));

    // A failed environment recovers through a new push.
    let mut failed = e.clone();
    failed.status.as_mut().unwrap().phase = Some(Phase::Failed);
    failed.spec.head_sha = SHA1.into();
    let plan = run(&failed, &world, at(200));
    assert_eq!(phase(&plan), Phase::Provisioning);
}

#[test]
fn children_no_longer_desired_are_pruned() {
    let mut world = World::empty();
    let mut e = to_ready(&mut world);
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    e.spec.services.retain(|s| s.name == "api");
    e.spec.ingress = Some(crate::crd::IngressSpec {
        enabled: false,
        ..Default::default()
    });
    e.metadata.generation = Some(2);
    let plan = run(&e, &world, at(50));
    let mut deleted: Vec<String> = plan
        .delete
        .iter()
        .map(|c| format!("{}/{}", c.resource.kind, c.name))
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        vec!["Deployment/web", "Ingress/preview", "Service/web"]
    );
    assert!(
        plan.delete
            .iter()
            .all(|c| c.namespace.as_deref() == Some(ns.as_str()))
    );
    assert_eq!(plan.status.url, None);
}

#[test]
fn affected_services_only_deploy_what_the_advice_selected() {
    let mut e = env_with(json!({"serviceSelection": "Affected"}));
    e.metadata.finalizers = None;
    let mut world = World::empty();
    world.observed.advice = Some(Advice {
        services: Some(vec!["web".into()]),
        status: AiStatus {
            source: Some("deterministic".into()),
            services_detected: vec!["web".into()],
            ..Default::default()
        },
        tests: None,
    });
    let plan = run(&e, &world, at(1));
    let applied = kinds(&plan.apply);
    assert!(applied.contains(&"Deployment/web".to_string()));
    assert!(!applied.contains(&"Deployment/api".to_string()));
    assert_eq!(plan.status.advised_sha.as_deref(), Some(SHA1));
    assert_eq!(plan.status.selected_services, Some(vec!["web".to_string()]));
    assert_eq!(
        plan.status.ai.unwrap().source.as_deref(),
        Some("deterministic")
    );
}

#[test]
fn hosts_stay_under_allowed_domains_and_unique() {
    // Not under the allowed domain.
    let e = env_with(json!({"ingress": {"enabled": true, "host": "www.bank.example"}}));
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(cond(&plan, condition::STALLED).reason, "HostNotAllowed");
    assert!(plan.apply.is_empty());
    // The domain itself, or a look-alike suffix, is not a subdomain of it.
    for host in ["preview.test", "evilpreview.test", "a..preview.test"] {
        let e = env_with(json!({"ingress": {"enabled": true, "host": host}}));
        let plan = run(&e, &World::empty(), at(1));
        assert_eq!(
            cond(&plan, condition::STALLED).reason,
            "HostNotAllowed",
            "{host}"
        );
    }
    // The hosts the observer gathers claims on: the default host and its fallback, or
    // only the host named in the spec.
    let candidates = crate::plan::host::candidate_hosts(&env(), &config());
    assert_eq!(candidates.len(), 2, "{candidates:?}");
    assert_eq!(candidates[0], "pr-7.preview.test");
    assert!(candidates[1].starts_with("pr-7-"), "{candidates:?}");
    let named = env_with(json!({"ingress": {"enabled": true, "host": "shop.preview.test"}}));
    assert_eq!(
        crate::plan::host::candidate_hosts(&named, &config()),
        ["shop.preview.test"]
    );
    // Default host taken by an older environment of another repository: fallback.
    let e = env();
    let mut world = World::empty();
    world.observed.host_claims.insert(
        "pr-7.preview.test".into(),
        vec![HostClaim {
            environment: "other/web-pr-7".into(),
            recorded: true,
            created: at(-100),
        }],
    );
    let plan = run(&e, &world, at(1));
    let host = plan.status.host.clone().unwrap();
    assert!(
        host.starts_with("pr-7-") && host.ends_with(".preview.test"),
        "{host}"
    );
    assert_ne!(host, "pr-7.preview.test");
    // A host named explicitly and taken: HostConflict.
    let e = env_with(json!({"ingress": {"enabled": true, "host": "shop.preview.test"}}));
    let mut world = World::empty();
    world.observed.host_claims.insert(
        "shop.preview.test".into(),
        vec![HostClaim {
            environment: "other/web-pr-3".into(),
            recorded: false,
            created: at(-100),
        }],
    );
    let plan = run(&e, &world, at(1));
    assert_eq!(cond(&plan, condition::STALLED).reason, "HostConflict");
    assert!(
        plan.status
            .message
            .clone()
            .unwrap()
            .contains("other/web-pr-3")
    );
    // A younger claimant does not take the host from us.
    let mut world = World::empty();
    world.observed.host_claims.insert(
        "pr-7.preview.test".into(),
        vec![HostClaim {
            environment: "other/web-pr-7".into(),
            recorded: false,
            created: at(100),
        }],
    );
    assert_eq!(
        run(&env(), &world, at(1)).status.host.as_deref(),
        Some("pr-7.preview.test")
    );
    // A cluster issuer the platform team did not allow.
    let e =
        env_with(json!({"ingress": {"enabled": true, "tls": true, "clusterIssuer": "attacker"}}));
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(
        cond(&plan, condition::STALLED).reason,
        "ClusterIssuerNotAllowed"
    );
}

/// A stage whose outcome the test sets.
struct FakeStage(StageOutcome);

impl Stage for FakeStage {
    fn name(&self) -> &str {
        "fake"
    }
    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::metadata::<ConfigMap>()]
    }
    fn enabled(&self, _env: &PreviewEnvironment) -> bool {
        true
    }
    fn desired(
        &self,
        input: &RenderInput<'_>,
    ) -> Result<Vec<DesiredObject>, crate::strategy::StrategyError> {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("stage-{}", &input.env.spec.head_sha[..7]), "namespace": input.namespace}
        })).unwrap();
        Ok(vec![DesiredObject::from_typed(&cm).unwrap()])
    }
    fn outcome(&self, _input: &RenderInput<'_>, _view: &NamespaceView) -> StageOutcome {
        self.0.clone()
    }
}

#[test]
fn stages_move_ready_through_testing_to_complete_or_failed() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let running: Vec<Arc<dyn Stage>> = vec![Arc::new(FakeStage(StageOutcome::Running(
        "running 3 tests".into(),
    )))];
    let plan = run_with(&e, &world, at(10), Arc::new(CatalogueStrategy), &running);
    assert_eq!(phase(&plan), Phase::Testing);
    assert_eq!(kinds(&plan.apply), vec!["ConfigMap/stage-0123456"]);
    assert_eq!(cond(&plan, condition::TESTS_COMPLETED).status, "False");
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(2)));
    world.apply(&e, &plan, true);
    let testing = written(&e, &plan);

    let passed: Vec<Arc<dyn Stage>> = vec![Arc::new(FakeStage(StageOutcome::Passed(
        "12 passed".into(),
    )))];
    let plan = run_with(
        &testing,
        &world,
        at(20),
        Arc::new(CatalogueStrategy),
        &passed,
    );
    assert_eq!(phase(&plan), Phase::Complete);
    assert_eq!(cond(&plan, condition::TESTS_COMPLETED).status, "True");
    assert_eq!(plan.events[0].reason, "TestsPassed");
    assert!(
        plan.apply.is_empty() && plan.delete.is_empty(),
        "the stage's objects are kept"
    );

    let failed: Vec<Arc<dyn Stage>> = vec![Arc::new(FakeStage(StageOutcome::Failed(
        "2 of 12 failed: login, cart".into(),
    )))];
    let plan = run_with(
        &testing,
        &world,
        at(20),
        Arc::new(CatalogueStrategy),
        &failed,
    );
    assert_eq!(phase(&plan), Phase::Failed);
    assert_eq!(cond(&plan, condition::READY).reason, "TestsFailed");
    assert_eq!(
        plan.status.message.as_deref(),
        Some("2 of 12 failed: login, cart")
    );
    let f = written(&testing, &plan);
    let again = run_with(&f, &world, at(30), Arc::new(CatalogueStrategy), &failed);
    assert!(
        again.delete.is_empty(),
        "a failed stage's objects stay for inspection"
    );

    // A new head commit: back to Provisioning; the old stage object is pruned.
    let mut pushed = testing.clone();
    pushed.spec.head_sha = SHA2.into();
    let plan = run_with(
        &pushed,
        &world,
        at(40),
        Arc::new(CatalogueStrategy),
        &running,
    );
    assert_eq!(phase(&plan), Phase::Provisioning);
    assert!(plan.delete.iter().any(|c| c.name == "stage-0123456"));
}

#[test]
fn teardown_deletes_the_owned_namespace_then_releases_the_finalizer() {
    let mut world = World::empty();
    let mut e = to_ready(&mut world);
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    e.metadata.deletion_timestamp = Some(Time(at(100)));
    let plan = run(&e, &world, at(100));
    assert_eq!(phase(&plan), Phase::Terminating);
    assert_eq!(plan.status.deleted_at, Some(Time(at(100))));
    // The Deployments first (their controllers would recreate what the namespace
    // controller deletes), then the namespace, all in one pass.
    let (namespace, workloads) = plan.delete.split_last().unwrap();
    assert_eq!(namespace.resource.kind, "Namespace");
    assert_eq!(namespace.name, ns);
    let mut deployments: Vec<&str> = workloads.iter().map(|c| c.name.as_str()).collect();
    deployments.sort();
    assert_eq!(deployments, ["api", "web"], "{:?}", plan.delete);
    assert!(
        workloads
            .iter()
            .all(|c| c.resource.kind == "Deployment" && c.namespace.as_deref() == Some(&*ns))
    );
    assert_eq!(plan.report, Some(Report::Changed));
    assert_eq!(plan.finalizer, FinalizerAction::Keep);
    // The namespace watch wakes it when the namespace is gone; the requeue is a safety net.
    assert_eq!(plan.requeue_after, Some(TEARDOWN_WAIT));
    world.apply(&e, &plan, true);
    let e = written(&e, &plan);
    // Still terminating: no second delete, no second event.
    let waiting = run(&e, &world, at(101));
    assert!(waiting.delete.is_empty() && waiting.events.is_empty());
    // Gone: Terminated, finalizer released, deletion reported.
    world.observed.namespaces.clear();
    let done = run(&e, &world, at(105));
    assert_eq!(phase(&done), Phase::Terminated);
    assert_eq!(done.finalizer, FinalizerAction::Release);
    assert_eq!(done.report, Some(Report::Deleted));
    assert_eq!(done.events[0].reason, "Terminated");
}

#[test]
fn teardown_never_deletes_a_namespace_it_does_not_own() {
    let mut world = World::empty();
    let mut e = to_ready(&mut world);
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    world.observed.namespaces.get_mut(&ns).unwrap().owner_uid = Some("someone-else".into());
    e.metadata.deletion_timestamp = Some(Time(at(100)));
    let plan = run(&e, &world, at(100));
    assert!(plan.delete.is_empty());
    assert_eq!(phase(&plan), Phase::Terminated);
    assert_eq!(plan.finalizer, FinalizerAction::Release);
}

#[test]
fn without_the_finalizer_a_deleted_environment_is_left_alone() {
    let mut e = env();
    e.metadata.finalizers = None;
    e.metadata.deletion_timestamp = Some(Time(at(1)));
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(plan.status, Default::default());
    assert!(plan.delete.is_empty() && plan.events.is_empty() && plan.report.is_none());
}

#[test]
fn the_sweep_deletes_only_marked_namespaces_of_gone_environments() {
    use super::namespace::is_orphan;
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        crate::crd::LABEL_MANAGED_BY.to_string(),
        "previewd".to_string(),
    );
    let live: BTreeSet<String> = [UID.to_string()].into();
    let marked = |uid: &str| NamespaceMeta {
        labels: labels.clone(),
        owner_uid: Some(uid.into()),
        ..NamespaceMeta::default()
    };
    assert!(is_orphan("preview-7-x", &marked("gone"), &live));
    assert!(
        !is_orphan("preview-7-x", &marked(UID), &live),
        "environment alive"
    );
    assert!(
        !is_orphan("kube-system", &marked("gone"), &live),
        "not our prefix"
    );
    let labelled_only = NamespaceMeta {
        labels: labels.clone(),
        ..NamespaceMeta::default()
    };
    assert!(
        !is_orphan("preview-7-x", &labelled_only, &live),
        "labels alone prove nothing"
    );
    let unlabelled = NamespaceMeta {
        owner_uid: Some("gone".into()),
        ..NamespaceMeta::default()
    };
    assert!(!is_orphan("preview-7-x", &unlabelled, &live));
}

#[test]
fn watched_kinds_cover_every_kind_the_plan_creates() {
    let stages: Vec<Arc<dyn Stage>> =
        vec![Arc::new(FakeStage(StageOutcome::Running(String::new())))];
    let kinds: BTreeSet<String> = watched_kinds(&Strategies::default(), &stages)
        .into_iter()
        .map(|k| k.resource.kind)
        .collect();
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let plan = run_with(&e, &world, at(10), Arc::new(CatalogueStrategy), &stages);
    let mut created: BTreeSet<String> =
        plan.apply.iter().map(|d| d.resource.kind.clone()).collect();
    let fresh = run_with(
        &env(),
        &World::empty(),
        at(1),
        Arc::new(CatalogueStrategy),
        &stages,
    );
    created.extend(fresh.apply.iter().map(|d| d.resource.kind.clone()));
    for kind in created {
        assert!(
            kind == "Namespace" || kind == "Deployment" || kinds.contains(&kind),
            "{kind} is created but not watched"
        );
    }
    assert!(!kinds.contains("Ingress") || kinds.contains("Service"));
    let _ = Ingress::default();
}

/// A strategy that renders into a namespace it was not given.
struct Escaping;

impl DeployStrategy for Escaping {
    fn name(&self) -> &str {
        "escaping"
    }
    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::metadata::<ConfigMap>()]
    }
    fn desired(
        &self,
        _input: &RenderInput<'_>,
    ) -> Result<Vec<DesiredObject>, crate::strategy::StrategyError> {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "kube-system"}
        }))
        .unwrap();
        Ok(vec![DesiredObject::from_typed(&cm).unwrap()])
    }
    fn health(&self, _: &RenderInput<'_>, _: &NamespaceView, _: &BTreeSet<ChildKey>) -> Health {
        Health::Available(String::new())
    }
}

#[test]
fn plug_in_objects_get_the_environment_labels_and_never_leave_its_namespace() {
    let plan = run_with(&env(), &World::empty(), at(1), Arc::new(Escaping), &[]);
    assert!(plan.apply.is_empty(), "nothing is written");
    assert_eq!(cond(&plan, condition::STALLED).reason, "ForeignNamespace");
    assert!(plan.status.message.clone().unwrap().contains("kube-system"));

    let running: Vec<Arc<dyn Stage>> =
        vec![Arc::new(FakeStage(StageOutcome::Running(String::new())))];
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let plan = run_with(&e, &world, at(10), Arc::new(CatalogueStrategy), &running);
    let cm = plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "ConfigMap")
        .unwrap();
    assert_eq!(
        cm.object["metadata"]["labels"]["previewd.io/env"],
        "shop-pr-7"
    );
    assert_eq!(
        cm.object["metadata"]["labels"]["previewd.io/env-namespace"],
        "team"
    );
    assert_eq!(
        cm.object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "previewd"
    );
    assert_eq!(
        cm.object["metadata"]["annotations"]["previewd.io/applied-hash"],
        cm.hash.as_str(),
        "the hash covers the labels added"
    );
}

/// A strategy that deploys one ConfigMap, to tell which strategy a plan used.
struct Marker(&'static str);

impl DeployStrategy for Marker {
    fn name(&self) -> &str {
        self.0
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::metadata::<ConfigMap>()]
    }

    fn desired(
        &self,
        input: &RenderInput<'_>,
    ) -> Result<Vec<DesiredObject>, crate::strategy::StrategyError> {
        let repo = input
            .repository
            .and_then(|r| r.metadata.name.clone())
            .unwrap_or_default();
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": self.0, "namespace": input.namespace},
            "data": {"repository": repo}
        }))
        .unwrap();
        Ok(vec![DesiredObject::from_typed(&cm).unwrap()])
    }

    fn health(
        &self,
        _input: &RenderInput<'_>,
        _view: &NamespaceView,
        _applying: &BTreeSet<ChildKey>,
    ) -> super::health::Health {
        super::health::Health::Progressing("marker".into())
    }
}

fn plan_with_strategies(
    env: &PreviewEnvironment,
    observed: &Observed,
    strategies: &Strategies,
) -> Plan {
    let cfg = config();
    plan(&PlanInput {
        env,
        observed,
        now: at(1),
        config: &cfg,
        strategies,
        stages: &[],
    })
}

fn configmaps(plan: &Plan) -> Vec<&str> {
    plan.apply
        .iter()
        .filter(|d| d.resource.kind == "ConfigMap")
        .map(|d| d.name.as_str())
        .collect()
}

fn repository(strategy: Option<&str>) -> Arc<PreviewRepository> {
    let mut spec = json!({
        "repository": "acme/shop",
        "catalogue": {"services": []},
        "baseDomain": "preview.test"
    });
    if let Some(s) = strategy {
        spec["strategy"] = json!(s);
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewRepository",
            "metadata": {"name": "shop", "namespace": "team"},
            "spec": spec
        }))
        .unwrap(),
    )
}

#[test]
fn the_strategy_is_the_environments_else_the_repositorys_else_the_default() {
    let mut strategies = Strategies::new(Arc::new(Marker("house")));
    strategies.register(Arc::new(Marker("manifests")));
    strategies.register(Arc::new(Marker("argocd")));
    assert_eq!(strategies.default_name(), "house");

    // Neither names one: the operator's default.
    let plan = plan_with_strategies(&env(), &Observed::default(), &strategies);
    assert_eq!(configmaps(&plan), ["house"]);
    let plain = env_with(json!({"repositoryRef": "shop"}));

    // The repository names one, and the strategy sees the repository.
    let observed = Observed {
        repositories: vec![repository(Some("manifests"))],
        ..Observed::default()
    };
    let plan = plan_with_strategies(&plain, &observed, &strategies);
    assert_eq!(configmaps(&plan), ["manifests"]);
    let cm = plan.apply.iter().find(|d| d.name == "manifests").unwrap();
    assert_eq!(cm.object["data"]["repository"], "shop");

    // The environment's own choice wins over the repository's.
    let own = env_with(json!({"repositoryRef": "shop", "strategy": "argocd"}));
    let plan = plan_with_strategies(&own, &observed, &strategies);
    assert_eq!(configmaps(&plan), ["argocd"]);

    // The catalogue stays available by name.
    let catalogue = env_with(json!({"strategy": "catalogue"}));
    let plan = plan_with_strategies(&catalogue, &Observed::default(), &strategies);
    assert!(configmaps(&plan).is_empty());
    assert!(plan.apply.iter().any(|d| d.resource.kind == "Deployment"));

    // Every strategy's kinds are watched.
    assert!(
        watched_kinds(&strategies, &[])
            .iter()
            .any(|k| k.resource.kind == "ConfigMap")
    );
}

#[test]
fn an_unknown_strategy_stalls_and_writes_nothing() {
    let strategies = Strategies::default();
    let e = env_with(json!({"repositoryRef": "shop"}));
    let observed = Observed {
        repositories: vec![repository(Some("argocd"))],
        ..Observed::default()
    };
    let plan = plan_with_strategies(&e, &observed, &strategies);
    assert!(plan.apply.is_empty(), "{:?}", plan.apply);
    let stalled = cond(&plan, condition::STALLED);
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "UnknownStrategy");
    assert!(
        stalled.message.contains("\"argocd\""),
        "{}",
        stalled.message
    );
    assert!(stalled.message.contains("catalogue"), "{}", stalled.message);
}

fn with_budget(e: &PreviewEnvironment, budget: serde_json::Value) -> PreviewEnvironment {
    let mut e = e.clone();
    e.spec.cost_budget = Some(serde_json::from_value(budget).unwrap());
    e
}

fn spent(e: &PreviewEnvironment, dollars: &str) -> PreviewEnvironment {
    let mut e = e.clone();
    let costs = e.status.as_mut().unwrap().costs.as_mut().unwrap();
    costs.actual_to_date = Some(dollars.parse().unwrap());
    e
}

fn replicas_of(plan: &Plan, name: &str) -> Option<i64> {
    plan.apply
        .iter()
        .find(|d| d.resource.kind == "Deployment" && d.name == name)
        .and_then(|d| d.object.pointer("/spec/replicas")?.as_i64())
}

#[test]
fn an_environment_over_its_budget_is_not_created() {
    // Three small containers: $0.0375 an hour, $0.90 a day.
    let e = with_budget(&env(), json!({"daily": "$0.50"}));
    let plan = run(&e, &World::empty(), at(1));
    assert!(plan.apply.is_empty(), "{:?}", kinds(&plan.apply));
    let stalled = cond(&plan, condition::STALLED);
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "BudgetExceeded");
    assert!(
        stalled.message.contains("$0.90") && stalled.message.contains("$0.50"),
        "{}",
        stalled.message
    );
    // Over the TTL (4h × $0.0375 = $0.15) against a total of $0.10.
    let e = with_budget(&env(), json!({"total": "$0.10"}));
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(cond(&plan, condition::STALLED).reason, "BudgetExceeded");
    // Within both: created, and the condition says so.
    let e = with_budget(&env(), json!({"daily": "$5", "total": "$1"}));
    let plan = run(&e, &World::empty(), at(1));
    assert!(!plan.apply.is_empty());
    assert_eq!(cond(&plan, condition::BUDGET_EXCEEDED).status, "False");
    assert_eq!(
        cond(&plan, condition::BUDGET_EXCEEDED).reason,
        "WithinBudget"
    );
}

#[test]
fn each_budget_policy_acts_when_the_total_is_exceeded() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    assert!(ready.status.as_ref().unwrap().costs.is_some());

    // warn: condition, one Warning event, the PR comment is updated; nothing else.
    let e = spent(
        &with_budget(&ready, json!({"total": "$1", "policy": "warn"})),
        "1.50",
    );
    let plan = run(&e, &world, at(10));
    let c = cond(&plan, condition::BUDGET_EXCEEDED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "TotalBudgetExceeded")
    );
    assert!(c.message.contains("policy warn"), "{}", c.message);
    assert!(
        plan.events
            .iter()
            .any(|ev| ev.warning && ev.reason == "TotalBudgetExceeded")
    );
    assert_eq!(plan.report, Some(Report::Changed));
    assert!(plan.annotate.is_empty() && !plan.delete_environment);
    let again = run(&written(&e, &plan), &world, at(11));
    assert!(again.events.is_empty(), "the event is sent once");

    // sleep: annotated, every Deployment applied at zero replicas.
    let e = spent(
        &with_budget(&ready, json!({"total": "$1", "policy": "sleep"})),
        "1.50",
    );
    let plan = run(&e, &world, at(10));
    assert_eq!(
        plan.annotate.get(budget::ANNOTATION_SLEEP),
        Some(&Some("budget".to_string()))
    );
    assert_eq!(replicas_of(&plan, "api"), Some(0));
    assert_eq!(replicas_of(&plan, "web"), Some(0));
    // Asleep: stays asleep while the budget is exceeded...
    let mut asleep = written(&e, &plan);
    asleep
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(budget::ANNOTATION_SLEEP.into(), "budget".into());
    world.apply(&asleep, &plan, true);
    let still = run(&asleep, &world, at(20));
    assert!(still.annotate.is_empty() && still.apply.is_empty());
    // ...and wakes when the budget allows it again.
    let raised = with_budget(&asleep, json!({"total": "$5", "policy": "sleep"}));
    let woken = run(&raised, &world, at(30));
    assert_eq!(woken.annotate.get(budget::ANNOTATION_SLEEP), Some(&None));
    // Awake from the next pass, rolled out again like a push.
    let mut awake = written(&raised, &woken);
    if let Some(a) = awake.metadata.annotations.as_mut() {
        a.remove(budget::ANNOTATION_SLEEP);
    }
    let rolled = run(&awake, &world, at(31));
    assert_eq!(replicas_of(&rolled, "web"), Some(2));
    assert_eq!(phase(&rolled), Phase::Provisioning);

    // delete: the environment is deleted, with a Warning that says why.
    let e = spent(
        &with_budget(&ready, json!({"total": "$1", "policy": "delete"})),
        "1.50",
    );
    let plan = run(&e, &world, at(10));
    assert!(plan.delete_environment);
    assert_eq!(plan.deletion_reason, Some("BudgetExceeded"));
    assert!(plan.apply.is_empty());
    assert!(plan.events[0].warning && plan.events[0].note.contains("policy delete"));
}

#[test]
fn the_estimate_follows_the_pods_and_the_spend_accrues() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let ns = ready.status.as_ref().unwrap().namespace.clone().unwrap();
    let costs = ready.status.as_ref().unwrap().costs.clone().unwrap();
    // No pods observed yet: nothing runs, nothing is charged.
    assert_eq!(costs.hourly, Some(previewd_core::Money::ZERO));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": ns},
        "spec": {"containers": [{"name": "web", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap();
    world.view(&ns).pods.push(Arc::new(pod));
    let plan = run(&ready, &world, at(3600));
    let costs = plan.status.costs.clone().unwrap();
    assert_eq!(costs.hourly, Some("0.05".parse().unwrap()));
    assert_eq!(costs.estimated_daily, Some("1.20".parse().unwrap()));
    assert_eq!(costs.monthly, Some("36.50".parse().unwrap()));
    let e = written(&ready, &plan);
    // Two hours later at $0.05/h: $0.10.
    let later = run(&e, &world, at(3600 + 7200));
    assert_eq!(
        later.status.costs.unwrap().actual_to_date,
        Some("0.10".parse().unwrap())
    );
}

#[test]
fn tier_auto_applies_the_recommendation_and_spot_its_preset() {
    let e = env_with(json!({"resources": {"tier": "auto", "useSpot": true}, "ttl": "2h"}));
    let requests_of = |plan: &Plan| {
        plan.apply
            .iter()
            .find(|d| d.resource.kind == "Deployment" && d.name == "api")
            .map(|d| {
                d.object["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
                    .clone()
            })
            .unwrap()
    };
    // No recommendation yet: small.
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(
        requests_of(&plan),
        json!({"cpu": "250m", "memory": "512Mi"})
    );
    let pod_spec = &plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "Deployment")
        .unwrap()
        .object["spec"]["template"]["spec"];
    assert_eq!(
        pod_spec["nodeSelector"],
        json!({"karpenter.sh/capacity-type": "spot"})
    );
    // The advisor recommends large.
    let mut world = World::empty();
    world.observed.advice = Some(Advice {
        services: None,
        status: AiStatus {
            recommended_tier: Some(previewd_core::Tier::Large),
            ..AiStatus::default()
        },
        tests: None,
    });
    let plan = run(&e, &world, at(1));
    assert_eq!(
        requests_of(&plan),
        json!({"cpu": "1000m", "memory": "2048Mi"})
    );
    // A service that states its own CPU request keeps it.
    let e = env_with(json!({"resources": {"tier": "medium"}}));
    let mut e2 = e.clone();
    e2.spec.services[0].resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "2"}})).unwrap());
    let plan = run(&e2, &World::empty(), at(1));
    assert_eq!(requests_of(&plan), json!({"cpu": "2", "memory": "1024Mi"}));
    // Long-lived environments never go to spot.
    let e = env_with(json!({"resources": {"useSpot": true}, "ttl": "1d"}));
    let plan = run(&e, &World::empty(), at(1));
    let pod_spec = &plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "Deployment")
        .unwrap()
        .object["spec"]["template"]["spec"];
    assert!(pod_spec.get("nodeSelector").is_none());
}

fn run_lifecycle(env: &PreviewEnvironment, world: &World, now: jiff::Timestamp) -> Plan {
    run_configured(
        env,
        world,
        now,
        &lifecycle_config(),
        Arc::new(CatalogueStrategy),
        &[],
    )
}

fn annotate(env: &PreviewEnvironment, pairs: &[(&str, &str)]) -> PreviewEnvironment {
    let mut env = env.clone();
    let annotations = env
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (k, v) in pairs {
        annotations.insert(k.to_string(), v.to_string());
    }
    env
}

fn replicas_applied(plan: &Plan) -> Vec<(String, i64)> {
    plan.apply
        .iter()
        .filter(|d| d.resource.kind == "Deployment")
        .map(|d| {
            (
                d.name.clone(),
                d.object["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_idle_environment_sleeps_at_zero_replicas_and_a_push_wakes_it() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    // Still awake just before the idle time; the requeue lands on it.
    let before = run_lifecycle(&e, &world, at(3599));
    assert!(before.apply.is_empty());
    assert!(before.requeue_after.unwrap() <= Duration::from_secs(2));
    let asleep = run_lifecycle(&e, &world, at(3600));
    assert_eq!(
        replicas_applied(&asleep),
        vec![("api".into(), 0), ("web".into(), 0)]
    );
    assert!(asleep.delete.is_empty(), "nothing is pruned while asleep");
    assert_eq!(phase(&asleep), Phase::Ready, "the phase is kept");
    let sleeping = cond(&asleep, condition::SLEEPING);
    assert_eq!(
        (sleeping.status.as_str(), sleeping.reason.as_str()),
        ("True", "Idle")
    );
    assert_eq!(cond(&asleep, condition::READY).reason, "Sleeping");
    assert!(
        asleep
            .status
            .message
            .as_ref()
            .unwrap()
            .contains("/preview wake")
    );
    assert_eq!(asleep.report, Some(Report::Changed));
    assert_eq!(asleep.events[0].reason, "Sleeping");
    world.apply(&e, &asleep, true);
    let e = written(&e, &asleep);
    let again = run_lifecycle(&e, &world, at(3700));
    assert!(again.apply.is_empty() && again.events.is_empty() && again.report.is_none());
    assert_eq!(
        again.status,
        e.status.clone().unwrap(),
        "converged while asleep"
    );

    // A push wakes it: replicas from the spec, rolled out again.
    let pushed = annotate(
        &e,
        &[(crate::crd::ANNOTATION_LAST_ACTIVITY, &at(3800).to_string())],
    );
    let awake = run_lifecycle(&pushed, &world, at(3801));
    assert_eq!(
        replicas_applied(&awake),
        vec![("api".into(), 1), ("web".into(), 2)]
    );
    assert_eq!(phase(&awake), Phase::Provisioning);
    assert_eq!(cond(&awake, condition::SLEEPING).status, "False");
    assert!(awake.events.iter().any(|ev| ev.reason == "Woken"));
    world.apply(&pushed, &awake, true);
    let e = written(&pushed, &awake);
    assert_eq!(phase(&run_lifecycle(&e, &world, at(3802))), Phase::Ready);
}

fn waker_config(routing: crate::children::httproute::Routing) -> PlannerConfig {
    PlannerConfig {
        waker: Some(crate::children::waker::WakerEndpoint {
            address: "10.0.0.9".parse().unwrap(),
            port: 8090,
        }),
        routing,
        ..lifecycle_config()
    }
}

/// Where each path of the planned Ingress (or HTTPRoute) goes, if the plan applies one.
fn route_targets(plan: &Plan) -> Option<Vec<String>> {
    let route = plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "Ingress" || d.resource.kind == "HTTPRoute")?;
    let targets = if route.resource.kind == "Ingress" {
        route.object["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["backend"]["service"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    } else {
        route.object["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["backendRefs"][0]["name"].as_str().unwrap().to_string())
            .collect()
    };
    Some(targets)
}

#[test]
fn a_sleeping_environment_routes_to_the_waker_until_it_is_ready_again() {
    use crate::children::httproute::{GatewayRef, Routing};
    use crate::children::waker::WAKER_SERVICE;
    let gateway = Routing::HttpRoute(GatewayRef {
        namespace: "gateway".into(),
        name: "previews".into(),
        section_name: None,
    });
    for routing in [Routing::Ingress, gateway] {
        let cfg = waker_config(routing.clone());
        let run = |e: &PreviewEnvironment, world: &World, now| {
            run_configured(e, world, now, &cfg, Arc::new(CatalogueStrategy), &[])
        };
        let mut world = World::empty();
        // Awake, the route goes to the services.
        let e = env();
        let first = run(&e, &world, at(1));
        world.apply(&e, &first, true);
        let e = written(&e, &first);
        assert_eq!(
            route_targets(&first).unwrap(),
            ["api", "web"],
            "{routing:?}"
        );
        let second = run(&e, &world, at(2));
        world.apply(&e, &second, true);
        let e = written(&e, &second);
        assert_eq!(phase(&second), Phase::Ready);

        // Asleep: every path to the waker's Service, which comes with its endpoints.
        let asleep = run(&e, &world, at(3600));
        assert_eq!(
            route_targets(&asleep).unwrap(),
            [WAKER_SERVICE, WAKER_SERVICE],
            "{routing:?}"
        );
        let applied = kinds(&asleep.apply);
        assert!(
            applied.contains(&format!("Service/{WAKER_SERVICE}")),
            "{applied:?}"
        );
        let slice = asleep
            .apply
            .iter()
            .find(|d| d.resource.kind == "EndpointSlice")
            .expect("the waker's EndpointSlice");
        assert_eq!(slice.object["endpoints"][0]["addresses"][0], "10.0.0.9");
        assert_eq!(slice.object["ports"][0]["port"], 8090);
        world.apply(&e, &asleep, true);
        let e = written(&e, &asleep);
        assert!(
            run(&e, &world, at(3700)).apply.is_empty(),
            "converged asleep"
        );

        // Woken by a push: the route stays on the waker while the services roll out...
        let pushed = annotate(
            &e,
            &[(crate::crd::ANNOTATION_LAST_ACTIVITY, &at(3800).to_string())],
        );
        let woken = run(&pushed, &world, at(3801));
        assert_eq!(phase(&woken), Phase::Provisioning);
        assert_eq!(route_targets(&woken), None, "the route is not touched");
        assert!(woken.delete.is_empty(), "{:?}", woken.delete);
        world.apply(&pushed, &woken, true);
        let e = written(&pushed, &woken);
        // The pass that finds the services available is Ready, still on the waker.
        let ready = run(&e, &world, at(3803));
        assert_eq!(phase(&ready), Phase::Ready);
        assert_eq!(route_targets(&ready), None);
        assert!(ready.delete.is_empty());
        world.apply(&e, &ready, true);
        let e = written(&e, &ready);

        // ...and goes back to them once they are Ready; the waker's objects go.
        let back = run(&e, &world, at(3804));
        assert_eq!(route_targets(&back).unwrap(), ["api", "web"], "{routing:?}");
        let mut pruned: Vec<String> = back
            .delete
            .iter()
            .map(|c| format!("{}/{}", c.resource.kind, c.name))
            .collect();
        pruned.sort();
        assert_eq!(
            pruned,
            [
                format!("EndpointSlice/{WAKER_SERVICE}"),
                format!("Service/{WAKER_SERVICE}")
            ]
        );
        world.apply(&e, &back, true);
        let e = written(&e, &back);
        let settled = run(&e, &world, at(3805));
        assert!(settled.apply.is_empty() && settled.delete.is_empty());
    }
}

#[test]
fn a_sleep_command_holds_until_a_later_wake_command() {
    use crate::crd::{ANNOTATION_LAST_COMMAND, ANNOTATION_SLEEP, ANNOTATION_SLEEP_REQUESTED_AT};
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let t = at(60).to_string();
    let asked = annotate(
        &e,
        &[
            (ANNOTATION_SLEEP, "command"),
            (ANNOTATION_SLEEP_REQUESTED_AT, &t),
            (ANNOTATION_LAST_COMMAND, &t),
        ],
    );
    let plan = run_lifecycle(&asked, &world, at(61));
    assert_eq!(cond(&plan, condition::SLEEPING).reason, "Command");
    assert_eq!(replicas_applied(&plan).len(), 2);
    world.apply(&asked, &plan, true);
    let asleep = written(&asked, &plan);
    let woken = annotate(&asleep, &[(ANNOTATION_LAST_COMMAND, &at(120).to_string())]);
    let plan = run_lifecycle(&woken, &world, at(121));
    assert_eq!(cond(&plan, condition::SLEEPING).status, "False");
    assert_eq!(
        replicas_applied(&plan),
        vec![("api".into(), 1), ("web".into(), 2)]
    );
}

#[test]
fn the_expiry_warning_is_reported_once_before_deletion() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    // TTL 4h, warning 30 minutes before: at 3h30.
    let mut e = annotate(
        &e,
        &[(
            crate::crd::ANNOTATION_LAST_COMMAND,
            &at(3 * 3600).to_string(),
        )],
    );
    e.spec.auto_extend = false;
    let early = run_lifecycle(&e, &world, at(3 * 3600 + 1799));
    assert!(
        early
            .status
            .conditions
            .iter()
            .all(|c| c.type_ != condition::EXPIRING_SOON)
    );
    let warned = run_lifecycle(&e, &world, at(3 * 3600 + 1800));
    let c = cond(&warned, condition::EXPIRING_SOON);
    assert_eq!(c.status, "True");
    assert!(c.message.contains("/preview extend"), "{}", c.message);
    assert_eq!(warned.report, Some(Report::Changed));
    let e = written(&e, &warned);
    let later = run_lifecycle(&e, &world, at(3 * 3600 + 1900));
    assert_eq!(later.report, None, "warned once");
    assert!(!later.delete_environment);
    assert!(run_lifecycle(&e, &world, at(4 * 3600)).delete_environment);
    // Extending ends the warning and reports it.
    let extended = annotate(
        &e,
        &[(
            crate::crd::ANNOTATION_EXTENDED_UNTIL,
            &at(10 * 3600).to_string(),
        )],
    );
    let plan = run_lifecycle(&extended, &world, at(3 * 3600 + 2000));
    assert_eq!(cond(&plan, condition::EXPIRING_SOON).status, "False");
    assert_eq!(plan.report, Some(Report::Changed));
    assert_eq!(plan.status.expires_at, Some(Time(at(10 * 3600))));
}

#[test]
fn retry_rebuilds_a_failed_environment_and_redeploy_restarts_pods_once() {
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    let e = written(&e, &first);
    let failed = run(&e, &world, at(700));
    assert_eq!(phase(&failed), Phase::Failed);
    let e = written(&e, &failed);
    let retried = annotate(&e, &[(crate::crd::ANNOTATION_RETRY, "1001")]);
    let plan = run(&retried, &world, at(701));
    assert_eq!(phase(&plan), Phase::Provisioning);
    assert_eq!(plan.status.provisioning_since, Some(Time(at(701))));
    let restarted: Vec<_> = plan
        .apply
        .iter()
        .filter(|d| d.resource.kind == "Deployment")
        .map(|d| {
            d.object["spec"]["template"]["metadata"]["annotations"][sleep::ANNOTATION_RESTARTED_FOR]
                .clone()
        })
        .collect();
    assert_eq!(restarted, vec![json!("/1001"), json!("/1001")]);
    world.apply(&retried, &plan, true);
    let e = written(&retried, &plan);
    let ready = run(&e, &world, at(702));
    assert_eq!(phase(&ready), Phase::Ready);
    world.apply(&e, &ready, true);
    let e = written(&e, &ready);
    let again = run(&e, &world, at(703));
    assert!(
        again.apply.is_empty() && again.entered.is_empty(),
        "acted on once"
    );
}

#[test]
fn a_delete_command_deletes_the_environment() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let asked = annotate(&e, &[(crate::crd::ANNOTATION_DELETE_REQUESTED, "1002")]);
    let plan = run(&asked, &world, at(10));
    assert!(plan.delete_environment);
    assert_eq!(plan.events[0].reason, "DeleteRequested");
}

#[test]
fn a_command_answer_updates_the_comment_once() {
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let answered = annotate(
        &e,
        &[(crate::crd::ANNOTATION_COMMAND_REPLY, "1003 extended")],
    );
    let plan = run(&answered, &world, at(10));
    assert_eq!(plan.report, Some(Report::Changed));
    assert_eq!(plan.status.answered_command.as_deref(), Some("1003"));
    let e = written(&answered, &plan);
    assert_eq!(run(&e, &world, at(11)).report, None);
}

#[test]
fn ttl_auto_follows_the_lifespan_prediction_within_the_cap() {
    let e = env_with(json!({"ttl": "auto", "maxLifespan": "1d"}));
    let expires = |plan: &Plan| plan.status.expires_at.as_ref().map(|t| t.0);
    // No prediction yet: the default 4h.
    let mut world = World::empty();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    assert_eq!(expires(&first), Some(at(4 * 3600)));
    // The advisor predicts 6h: once recorded in status, the expiry follows it.
    world.observed.advice = Some(Advice {
        services: None,
        status: AiStatus {
            predicted_ttl: Some("6h".parse().unwrap()),
            ..AiStatus::default()
        },
        tests: None,
    });
    let advised = run(&written(&e, &first), &world, at(2));
    let e6 = written(&e, &advised);
    let plan = run(&e6, &world, at(3));
    assert_eq!(expires(&plan), Some(at(6 * 3600)));
    // A prediction past maxLifespan is capped, not refused.
    let mut long = e6.clone();
    if let Some(ai) = long.status.as_mut().and_then(|s| s.ai.as_mut()) {
        ai.predicted_ttl = Some("3d".parse().unwrap());
    }
    let plan = run(&long, &world, at(4));
    assert_eq!(expires(&plan), Some(at(24 * 3600)));
    assert!(
        plan.status
            .conditions
            .iter()
            .all(|c| c.type_ != condition::STALLED || c.status != "True")
    );
}
