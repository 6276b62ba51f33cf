//! The planner's authorisation: an environment no repository claim authorises is
//! stalled, writes nothing but its status and reports nothing; the legitimate paths go
//! on as before.

use previewd_core::tenancy::ClaimPolicy;

use super::*;

fn policy(text: &str) -> PlannerConfig {
    PlannerConfig {
        claim_policy: ClaimPolicy::parse(text).unwrap(),
        durable_reports: true,
        ..config()
    }
}

fn in_namespace(e: &PreviewEnvironment, ns: &str) -> PreviewEnvironment {
    let mut e = e.clone();
    e.metadata.namespace = Some(ns.to_string());
    e
}

fn claim(ns: &str, name: &str, repository: &str) -> Arc<PreviewRepository> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"repository": repository, "catalogue": {"services": []},
                     "baseDomain": "preview.test"}
        }))
        .unwrap(),
    )
}

fn assert_refused(plan: &Plan, what: &str) {
    let stalled = cond(plan, condition::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "RepositoryNotClaimed"),
        "{what}: {}",
        stalled.message
    );
    assert!(plan.apply.is_empty(), "{what}: {:?}", kinds(&plan.apply));
    assert!(plan.delete.is_empty(), "{what}: {:?}", plan.delete);
    assert_eq!(plan.report, None, "{what}: nothing reported");
    assert_eq!(plan.status.pending_report, None, "{what}: nothing pending");
    assert!(
        !plan.delete_environment && plan.annotate.is_empty(),
        "{what}"
    );
    assert!(plan.entered.is_empty(), "{what}: no phase entered");
}

#[test]
fn a_bare_environment_for_another_teams_repository_is_refused() {
    let cfg = policy("team=acme/shop;attacker=attacker/*");
    let world = World::empty();
    let mut e = in_namespace(&env(), "attacker");
    e.metadata.finalizers = None;
    let plan = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    assert_refused(&plan, "bare environment");
    assert_eq!(
        plan.finalizer,
        FinalizerAction::Keep,
        "not even the finalizer is written"
    );
    let message = &cond(&plan, condition::STALLED).message;
    assert!(
        message.contains("namespace attacker may not claim acme/shop")
            && message.contains("--repository-claims"),
        "{message}"
    );
    // The control: the team's own environment provisions and reports.
    let ok = run_configured(
        &env(),
        &world,
        at(1),
        &cfg,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert_eq!(phase(&ok), Phase::Provisioning);
    assert_eq!(ok.report, Some(Report::Changed));
    assert!(!ok.apply.is_empty());
}

#[test]
fn an_environment_rendered_from_a_refused_repository_is_refused() {
    // The team may claim acme/web only; its PreviewRepository claims acme/shop anyway.
    let cfg = policy("team=acme/web");
    let mut world = World::empty();
    world.observed.repositories = vec![claim("team", "shop", "acme/shop")];
    let e = env_with(json!({"repositoryRef": "shop"}));
    let plan = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    assert_refused(&plan, "refused repository");
    // Another namespace holds the claim: a second team cannot piggyback on it.
    let cfg = policy("team=acme/*;other=acme/*");
    world.observed.repositories = vec![claim("other", "shop", "acme/shop")];
    let plan = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    assert_refused(&plan, "claim held elsewhere");
    assert!(
        cond(&plan, condition::STALLED)
            .message
            .contains("claimed by PreviewRepository other/shop")
    );
}

#[test]
fn a_claim_revoked_while_the_environment_runs_stalls_it_and_stops_its_reports() {
    let cfg = policy("team=acme/*");
    let mut world = World::empty();
    world.observed.repositories = vec![claim("team", "shop", "acme/shop")];
    let e = env_with(json!({"repositoryRef": "shop"}));
    let first = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    world.apply(&e, &first, true);
    let e = written(&e, &first);
    let second = run_configured(&e, &world, at(2), &cfg, Arc::new(CatalogueStrategy), &[]);
    assert_eq!(phase(&second), Phase::Ready);
    world.apply(&e, &second, true);
    let ready = written(&e, &second);
    assert!(
        ready.status.as_ref().unwrap().pending_report.is_some(),
        "a report is pending (not confirmed yet)"
    );

    // The policy no longer allows the team (the platform revoked it): stalled, its
    // pending report dropped, nothing applied or pruned, the namespace kept.
    let revoked = policy("team=acme/web");
    let plan = run_configured(
        &ready,
        &world,
        at(3),
        &revoked,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert_refused(&plan, "revoked");
    assert_eq!(plan.status.phase, Some(Phase::Ready), "the phase is kept");

    // Its PreviewRepository deleted: the same.
    world.observed.repositories.clear();
    let plan = run_configured(
        &ready,
        &world,
        at(3),
        &cfg,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert_refused(&plan, "repository deleted");

    // The claim restored: it resumes where it was, without rolling anything out.
    world.observed.repositories = vec![claim("team", "shop", "acme/shop")];
    let back = run_configured(
        &written(&ready, &plan),
        &world,
        at(4),
        &cfg,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert_eq!(phase(&back), Phase::Ready);
    assert_eq!(cond(&back, condition::STALLED).status, "False");
    assert!(back.apply.is_empty(), "{:?}", kinds(&back.apply));
}

#[test]
fn an_unauthorised_environment_is_torn_down_without_reporting() {
    let cfg = policy("team=acme/*");
    let mut world = World::empty();
    let e = to_ready(&mut world);
    let mut deleted = e.clone();
    deleted.metadata.deletion_timestamp = Some(Time(at(10)));
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();

    // Allowed: the namespace goes, and the teardown is reported.
    let plan = run_configured(
        &deleted,
        &world,
        at(10),
        &cfg,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert!(plan.delete.iter().any(|d| d.name == ns));
    assert_eq!(plan.report, Some(Report::Changed));

    // Another namespace claims acme/shop now: the teardown still deletes what previewd
    // owns, but says nothing to that repository.
    world.observed.repositories = vec![claim("other", "shop", "acme/shop")];
    let cfg = policy("team=acme/*;other=acme/*");
    let plan = run_configured(
        &deleted,
        &world,
        at(10),
        &cfg,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert!(plan.delete.iter().any(|d| d.name == ns));
    assert_eq!(plan.report, None);
    world.apply(&deleted, &plan, true);
    world.observed.namespaces.remove(&ns);
    let gone = run_configured(
        &written(&deleted, &plan),
        &world,
        at(11),
        &cfg,
        Arc::new(CatalogueStrategy),
        &[],
    );
    assert_eq!(gone.finalizer, FinalizerAction::Release);
    assert_eq!(gone.report, None, "not even the last report");
}

#[test]
fn a_secret_goes_only_to_the_repositories_its_owner_names() {
    let cfg = PlannerConfig {
        secret_namespace: Some("previewd-secrets".into()),
        ..config()
    };
    let mut repo = (*claim("team", "shop", "acme/shop")).clone();
    repo.spec.secrets = serde_json::from_value(json!([{"name": "db"}])).unwrap();
    let mut world = World::empty();
    world.observed.repositories = vec![Arc::new(repo)];
    let source = |annotations: serde_json::Value| -> Arc<k8s_openapi::api::core::v1::Secret> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "db", "namespace": "previewd-secrets",
                "resourceVersion": "1", "labels": {"previewd.io/preview-secret": "true"},
                "annotations": annotations}, "data": {"password": "c2VjcmV0"}}),
            )
            .unwrap(),
        )
    };
    let e = env_with(json!({"repositoryRef": "shop"}));
    // Another team's Secret, labelled for copying but not for acme/shop.
    world.observed.source_secrets.insert(
        "db".into(),
        source(json!({"previewd.io/allowed-repositories": "payments/*"})),
    );
    let plan = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    let stalled = cond(&plan, condition::STALLED);
    assert_eq!(stalled.reason, "SecretNotAllowed");
    assert!(plan.apply.is_empty());
    // No owner annotation at all: copied to nobody.
    world
        .observed
        .source_secrets
        .insert("db".into(), source(json!({})));
    let plan = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    assert_eq!(cond(&plan, condition::STALLED).reason, "SecretNotAllowed");
    // The owner names the repository: copied.
    world.observed.source_secrets.insert(
        "db".into(),
        source(json!({"previewd.io/allowed-repositories": "acme/shop"})),
    );
    let plan = run_configured(&e, &world, at(1), &cfg, Arc::new(CatalogueStrategy), &[]);
    assert!(kinds(&plan.apply).contains(&"Secret/db".to_string()));
}
