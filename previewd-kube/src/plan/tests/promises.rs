//! Promises a pass must keep whatever path it takes: every phase crossed counts as
//! entered (its timestamp, its Event, its report), and a budget exceeded raises its
//! condition whatever the policy.

use std::sync::Arc;

use super::*;
use crate::strategy::{SeedStage, Stage, TestRunStage};

fn stages() -> Vec<Arc<dyn Stage>> {
    vec![Arc::new(SeedStage), Arc::new(TestRunStage)]
}

fn tested() -> PreviewEnvironment {
    env_with(json!({
        "tests": {"enabled": true, "image": "ghcr.io/acme/shop-tests:pr-7", "command": ["pytest"]}
    }))
}

#[test]
fn a_pass_from_provisioning_through_ready_to_testing_records_ready() {
    let mut world = World::empty();
    let e = tested();
    let first = run_with(&e, &world, at(1), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(first.entered, vec![Phase::Provisioning]);
    world.apply(&e, &first, true);
    let e = written(&e, &first);

    // The services are available and the tests start in the same pass.
    let plan = run_with(&e, &world, at(7), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(phase(&plan), Phase::Testing);
    assert_eq!(plan.entered, vec![Phase::Ready, Phase::Testing]);
    assert_eq!(
        plan.status.ready_at.as_ref().map(|t| t.0),
        Some(at(7)),
        "readyAt is set although the pass ends in Testing"
    );
    let reasons: Vec<(&str, &str)> = plan
        .events
        .iter()
        .map(|e| (e.reason.as_str(), e.note.as_str()))
        .collect();
    assert!(
        reasons[0].0 == "ServicesAvailable"
            && reasons[0].1.starts_with("phase Provisioning -> Ready"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == "TestsStarted" && reasons[1].1.starts_with("phase Ready -> Testing"),
        "{reasons:?}"
    );
    assert_eq!(plan.report, Some(Report::Changed));

    // Later passes keep the time it became Ready.
    world.apply(&e, &plan, true);
    let testing = written(&e, &plan);
    let again = run_with(
        &testing,
        &world,
        at(9),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(again.status.ready_at.as_ref().map(|t| t.0), Some(at(7)));
    assert!(again.entered.is_empty());
}

#[test]
fn a_spec_change_that_is_ready_within_the_pass_counts_both_phases() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    // A new generation that changes no object (a longer TTL): rolled out again, and
    // available at once.
    let mut pushed = ready.clone();
    pushed.spec.ttl = Some("8h".parse().unwrap());
    pushed.metadata.generation = Some(2);
    let plan = run(&pushed, &world, at(20));
    assert_eq!(plan.entered, vec![Phase::Provisioning, Phase::Ready]);
    assert_eq!(plan.status.ready_at.as_ref().map(|t| t.0), Some(at(20)));
    assert_eq!(plan.events.len(), 2, "{:?}", plan.events);
}

#[test]
fn a_budget_sleep_raises_budget_exceeded_once_and_reports_it() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let e = spent(
        &with_budget(&ready, json!({"total": "$1", "policy": "sleep"})),
        "1.50",
    );
    let plan = run(&e, &world, at(10));
    assert_eq!(replicas_of(&plan, "api"), Some(0), "asleep");
    let c = cond(&plan, condition::BUDGET_EXCEEDED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "TotalBudgetExceeded")
    );
    assert!(c.message.contains("policy sleep"), "{}", c.message);
    assert!(
        plan.events
            .iter()
            .any(|ev| ev.warning && ev.reason == "TotalBudgetExceeded"),
        "{:?}",
        plan.events
    );
    assert_eq!(plan.report, Some(Report::Changed));
    assert_eq!(cond(&plan, condition::SLEEPING).status, "True");

    // Asleep for the budget: the condition stays, the Warning is not repeated.
    let mut asleep = written(&e, &plan);
    asleep
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(budget::ANNOTATION_SLEEP.into(), "budget".into());
    world.apply(&asleep, &plan, true);
    let still = run(&asleep, &world, at(20));
    assert_eq!(cond(&still, condition::BUDGET_EXCEEDED).status, "True");
    assert!(
        !still.events.iter().any(|ev| ev.warning),
        "{:?}",
        still.events
    );
    // The PR comment's line comes from the condition (advice::view_of).
    let view = crate::advice::view_of(&written(&asleep, &still));
    assert!(
        view.budget_exceeded
            .as_deref()
            .is_some_and(|m| m.contains("above the total budget")),
        "{:?}",
        view.budget_exceeded
    );
}

#[test]
fn a_budget_delete_records_the_condition_before_deleting() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let e = spent(
        &with_budget(&ready, json!({"total": "$1", "policy": "delete"})),
        "1.50",
    );
    let plan = run(&e, &world, at(10));
    assert!(plan.delete_environment);
    assert_eq!(cond(&plan, condition::BUDGET_EXCEEDED).status, "True");
}

#[test]
fn sleep_suspends_jobs_and_cronjobs_and_stops_running_stage_jobs() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let object = |resource: kube::core::ApiResource, name: &str| {
        DesiredObject::from_value(
            resource,
            json!({"metadata": {"name": name}, "spec": {"template": {"spec": {"containers": []}}}}),
        )
    };
    let job = sleep::asleep(object(
        kube::core::ApiResource::erase::<Job>(&()),
        "migrate",
    ));
    assert_eq!(job.object["spec"]["suspend"], json!(true));
    let cron = sleep::asleep(object(
        kube::core::ApiResource::erase::<CronJob>(&()),
        "nightly",
    ));
    assert_eq!(cron.object["spec"]["suspend"], json!(true));
    let dep = sleep::asleep(object(
        kube::core::ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
        "api",
    ));
    assert_eq!(dep.object["spec"]["replicas"], json!(0));
    assert!(dep.object["spec"].get("suspend").is_none());

    // A stage's Job still running when the environment falls asleep is deleted.
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let ns = ready.status.as_ref().unwrap().namespace.clone().unwrap();
    let running: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "previewd-tests-abc", "namespace": ns},
        "status": {"active": 1}
    }))
    .unwrap();
    let key = ChildKey::of::<Job>("previewd-tests-abc");
    world
        .view(&ns)
        .objects
        .insert(key.clone(), Arc::new(running));
    world
        .view(&ns)
        .children
        .insert(key, ObservedChild::default());
    let asleep = annotate(&ready, &[(crate::crd::ANNOTATION_SLEEP, "command")]);
    let stages: Vec<Arc<dyn Stage>> = vec![Arc::new(TestRunStage)];
    let plan = run_with(
        &asleep,
        &world,
        at(30),
        Arc::new(CatalogueStrategy),
        &stages,
    );
    assert_eq!(cond(&plan, condition::SLEEPING).status, "True");
    assert!(
        plan.delete.iter().any(|d| d.name == "previewd-tests-abc"),
        "{:?}",
        plan.delete
    );
}

/// One pass that produces each condition type, with the status it must have.
fn condition_promises() -> Vec<(&'static str, &'static str, Plan)> {
    use crate::crd::condition::*;
    let mut out = Vec::new();
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, true);
    let ready = run(&written(&e, &first), &world, at(2));
    for (type_, status) in [
        (READY, "True"),
        (RECONCILING, "False"),
        (STALLED, "False"),
        (NAMESPACE_READY, "True"),
        (SERVICES_DEPLOYED, "True"),
    ] {
        out.push((type_, status, ready.clone()));
    }

    let mut world = World::empty();
    let seeded = env_with(json!({
        "testData": {"enabled": true, "seed": 1, "counts": {"users": 10}},
        "tests": {"enabled": true, "image": "ghcr.io/acme/shop-tests:1", "command": ["pytest"]}
    }));
    let first = run_with(
        &seeded,
        &world,
        at(1),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    world.apply(&seeded, &first, true);
    let stage = run_with(
        &written(&seeded, &first),
        &world,
        at(2),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    out.push((TESTS_COMPLETED, "False", stage.clone()));
    out.push((DATA_SEEDED, "False", stage));

    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let over = spent(
        &with_budget(&ready, json!({"total": "$1", "policy": "warn"})),
        "1.50",
    );
    out.push((BUDGET_EXCEEDED, "True", run(&over, &world, at(10))));
    let asleep = annotate(&ready, &[(crate::crd::ANNOTATION_SLEEP, "command")]);
    out.push((SLEEPING, "True", run(&asleep, &world, at(10))));
    let mut expiring = ready.clone();
    expiring.spec.auto_extend = false;
    out.push((
        EXPIRING_SOON,
        "True",
        run_lifecycle(&expiring, &world, at(4 * 3600 - 60)),
    ));

    let mut fork = env_with(json!({"repositoryRef": "shop"}));
    fork.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(crate::crd::LABEL_FORK.into(), "true".into());
    let mut repo = (*repository(None)).clone();
    repo.spec.egress = serde_json::from_value(json!([{"cidrs": ["192.0.2.0/24"]}])).unwrap();
    let world = World {
        observed: Observed {
            repositories: vec![Arc::new(repo)],
            ..Observed::default()
        },
    };
    out.push((FORK_RESTRICTED, "True", run(&fork, &world, at(1))));
    out
}

#[test]
fn every_condition_type_is_produced_by_a_tested_pass() {
    let promises = condition_promises();
    let mut tested: Vec<&str> = promises.iter().map(|(t, _, _)| *t).collect();
    tested.sort_unstable();
    tested.dedup();
    let mut all = crate::crd::condition::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(
        tested, all,
        "every condition type in condition::ALL needs a pass in condition_promises()"
    );
    for (type_, status, plan) in &promises {
        let c = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == *type_)
            .unwrap_or_else(|| panic!("{type_} not set; conditions: {:?}", plan.status.conditions));
        assert_eq!(c.status, *status, "{type_}: {c:?}");
        assert!(!c.reason.is_empty(), "{type_} has no reason");
        assert_eq!(c.observed_generation, Some(1), "{type_}");
    }
}
