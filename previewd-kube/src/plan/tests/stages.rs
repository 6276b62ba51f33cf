//! The seed and test-run stages in the planner: Ready → Testing → Complete or Failed,
//! with the Jobs and pods the caches would hold (the test plays the Job controller and the
//! kubelet).

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use previewd_core::Phase;
use serde_json::json;

use super::*;
use crate::strategy::{SeedStage, Stage, TestRunStage};

fn stages() -> Vec<Arc<dyn Stage>> {
    vec![Arc::new(SeedStage), Arc::new(TestRunStage)]
}

fn tested_env(timeout: &str) -> PreviewEnvironment {
    env_with(json!({
        "testData": {"enabled": true, "seed": 42, "counts": {"users": 100}},
        "tests": {
            "enabled": true, "image": "ghcr.io/acme/shop-tests:pr-7",
            "command": ["pytest"], "args": ["-q"], "timeout": timeout, "parallel": 4
        }
    }))
}

/// Drives `e` to Ready with the stages registered (the first plans run no stage yet).
fn ready(world: &mut World, e: PreviewEnvironment) -> PreviewEnvironment {
    let first = run_with(&e, world, at(1), Arc::new(CatalogueStrategy), &stages());
    world.apply(&e, &first, true);
    written(&e, &first)
}

/// The Job the plan applies for `stage` (`seed` or `tests`).
fn applied_job(plan: &Plan, stage: &str) -> Job {
    let d = plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "Job" && d.name.starts_with(&format!("previewd-{stage}-")))
        .unwrap_or_else(|| panic!("no {stage} job in {:?}", kinds(&plan.apply)));
    serde_json::from_value(d.object.clone()).unwrap()
}

/// The Job controller: the applied Job appears in the cache, created at `created`, with
/// the given conditions.
fn job_exists(
    world: &mut World,
    job: &Job,
    created: jiff::Timestamp,
    conditions: serde_json::Value,
) {
    let ns = job.metadata.namespace.clone().unwrap();
    let name = job.metadata.name.clone().unwrap();
    let mut value = serde_json::to_value(job).unwrap();
    value["apiVersion"] = json!("batch/v1");
    value["kind"] = json!("Job");
    value["metadata"]["creationTimestamp"] = json!(created.to_string());
    value["status"] = json!({"conditions": conditions});
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    world
        .view(&ns)
        .objects
        .insert(ChildKey::of::<Job>(&name), Arc::new(obj));
}

/// The kubelet: the Job's pod ended with `exit_code` and termination `message`.
fn pod_ended(world: &mut World, job: &Job, exit_code: i32, message: Option<&str>) {
    let ns = job.metadata.namespace.clone().unwrap();
    let name = job.metadata.name.clone().unwrap();
    let mut labels = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .clone()
        .unwrap()
        .labels
        .unwrap();
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-abcde"), "namespace": ns, "labels": labels},
        "status": {
            "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{
                "name": "runner", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" }, "message": message}}
            }]
        }
    }))
    .unwrap();
    world.view(&ns).pods.push(Arc::new(pod));
}

fn complete() -> serde_json::Value {
    json!([{"type": "Complete", "status": "True"}])
}

/// Ready, the seed Job applied and finished with `report`; returns the environment and
/// the plan that judged the seed.
fn seeded(world: &mut World, report: &str) -> (PreviewEnvironment, Plan) {
    let e = ready(world, tested_env("10m"));
    let plan = run_with(&e, world, at(5), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(phase(&plan), Phase::Testing);
    let seed = applied_job(&plan, "seed");
    assert!(
        !plan
            .apply
            .iter()
            .any(|d| d.name.starts_with("previewd-tests-")),
        "tests wait for the data"
    );
    assert_eq!(cond(&plan, condition::DATA_SEEDED).reason, "Seeding");
    world.apply(&e, &plan, true);
    let e = written(&e, &plan);
    job_exists(world, &seed, at(5), complete());
    pod_ended(world, &seed, 0, Some(report));
    let plan = run_with(&e, world, at(8), Arc::new(CatalogueStrategy), &stages());
    (e, plan)
}

#[test]
fn seed_then_tests_pass_to_complete() {
    let mut world = World::empty();
    let (e, plan) = seeded(
        &mut world,
        r#"{"tables":15,"rows":2300,"durationMs":900,"error":null}"#,
    );
    let data = plan.status.test_data.clone().unwrap();
    assert_eq!(data.state, "Seeded");
    assert_eq!((data.tables, data.rows), (Some(15), Some(2300)));
    assert_eq!(data.sha.as_deref(), Some(SHA1));
    assert_eq!(cond(&plan, condition::DATA_SEEDED).status, "True");
    assert_eq!(phase(&plan), Phase::Testing);
    let tests = applied_job(&plan, "tests");
    assert_eq!(
        plan.status.tests.as_ref().unwrap().state.as_deref(),
        Some("Running")
    );
    world.apply(&e, &plan, true);
    let e = written(&e, &plan);

    job_exists(&mut world, &tests, at(9), complete());
    pod_ended(
        &mut world,
        &tests,
        0,
        Some(r#"{"total":12,"passed":11,"failed":0,"skipped":1,"durationMs":5300}"#),
    );
    let plan = run_with(&e, &world, at(20), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(phase(&plan), Phase::Complete, "{:?}", plan.status.message);
    assert_eq!(plan.report, Some(Report::Changed));
    let t = plan.status.tests.clone().unwrap();
    assert_eq!((t.total, t.passed, t.failed, t.skipped), (12, 11, 0, 1));
    assert_eq!(t.state.as_deref(), Some("Passed"));
    assert_eq!(t.duration_ms, Some(5300));
    assert_eq!(cond(&plan, condition::TESTS_COMPLETED).status, "True");
    assert_eq!(cond(&plan, condition::READY).status, "True");
    assert!(
        plan.apply.is_empty() && plan.delete.is_empty(),
        "{:?}",
        kinds(&plan.apply)
    );

    // Converged: the same caches plan nothing and write the same status.
    world.apply(&e, &plan, true);
    let done = written(&e, &plan);
    let again = run_with(
        &done,
        &world,
        at(30),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(again.status.tests, done.status.as_ref().unwrap().tests);
    assert_eq!(
        again.status.test_data,
        done.status.as_ref().unwrap().test_data
    );
    assert!(again.apply.is_empty() && again.delete.is_empty() && again.entered.is_empty());
}

#[test]
fn failed_tests_fail_the_environment_with_their_names() {
    let mut world = World::empty();
    let (e, plan) = seeded(
        &mut world,
        r#"{"tables":1,"rows":1,"durationMs":1,"error":null}"#,
    );
    let tests = applied_job(&plan, "tests");
    world.apply(&e, &plan, true);
    let e = written(&e, &plan);
    pod_ended(
        &mut world,
        &tests,
        1,
        Some(
            r#"{"total":3,"passed":1,"failed":2,"skipped":0,"failures":[
                {"name":"tests.test_cart.test_pay","reason":"expected 200, got 500"},
                {"name":"tests.test_auth.test_login","reason":"timeout"}]}"#,
        ),
    );
    let plan = run_with(&e, &world, at(20), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(phase(&plan), Phase::Failed);
    assert_eq!(cond(&plan, condition::READY).reason, "TestsFailed");
    assert_eq!(cond(&plan, condition::TESTS_COMPLETED).status, "False");
    let t = plan.status.tests.clone().unwrap();
    assert_eq!(
        t.failed_tests,
        vec!["tests.test_cart.test_pay", "tests.test_auth.test_login"]
    );
    assert_eq!(t.failures[0].reason, "expected 200, got 500");
    assert_eq!(t.error, None);
    let message = plan.status.message.clone().unwrap();
    assert!(
        message.contains("2 failed") && message.contains("tests.test_cart.test_pay"),
        "{message}"
    );
    assert!(
        plan.events
            .iter()
            .any(|ev| ev.warning && ev.reason == "TestsFailed")
    );
}

#[test]
fn a_seed_failure_fails_the_environment_and_runs_no_tests() {
    let mut world = World::empty();
    let (_, plan) = seeded(
        &mut world,
        r#"{"tables":0,"rows":0,"durationMs":4,"error":"required cycle: orders -> users -> orders"}"#,
    );
    assert_eq!(phase(&plan), Phase::Failed);
    let data = plan.status.test_data.clone().unwrap();
    assert_eq!(data.state, "Failed");
    assert!(data.error.unwrap().contains("required cycle"));
    let seeded = cond(&plan, condition::DATA_SEEDED);
    assert_eq!(
        (seeded.status.as_str(), seeded.reason.as_str()),
        ("False", "SeedFailed")
    );
    assert!(
        plan.status
            .message
            .unwrap()
            .contains("seeding failed: required cycle")
    );
    assert!(
        !plan
            .apply
            .iter()
            .any(|d| d.name.starts_with("previewd-tests-"))
    );
}

/// Ready without seeding, the test Job applied; returns the environment and the Job.
fn testing(world: &mut World, timeout: &str) -> (PreviewEnvironment, Job) {
    let mut e = tested_env(timeout);
    e.spec.test_data = None;
    let e = ready(world, e);
    let plan = run_with(&e, world, at(5), Arc::new(CatalogueStrategy), &stages());
    let job = applied_job(&plan, "tests");
    world.apply(&e, &plan, true);
    (written(&e, &plan), job)
}

#[test]
fn timeouts_crashes_and_bad_summaries_fail_clearly() {
    // The Job controller stopped the run at its deadline.
    let mut world = World::empty();
    let (e, job) = testing(&mut world, "5m");
    job_exists(
        &mut world,
        &job,
        at(5),
        json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]),
    );
    let plan = run_with(&e, &world, at(400), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(phase(&plan), Phase::Failed);
    let message = plan.status.message.clone().unwrap();
    assert!(
        message.contains("did not finish within 5m (timeout)"),
        "{message}"
    );
    assert_eq!(
        plan.status.tests.unwrap().error.as_deref(),
        Some(message.as_str())
    );

    // Nobody stopped it: the stage's own limit (timeout plus a minute) fails it.
    let mut world = World::empty();
    let (e, job) = testing(&mut world, "5m");
    job_exists(&mut world, &job, at(5), json!([]));
    let plan = run_with(
        &e,
        &world,
        at(5 + 300 + 59),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(phase(&plan), Phase::Testing);
    let plan = run_with(
        &e,
        &world,
        at(5 + 360),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(phase(&plan), Phase::Failed);
    assert_eq!(
        plan.status.message.as_deref(),
        Some("stage tests did not finish within 6m")
    );

    for (exit, message, expected) in [
        (0, Some("all good!"), "malformed summary"),
        (
            0,
            Some(r#"{"total":3,"passed":1,"failed":0,"skipped":0}"#),
            "inconsistent summary",
        ),
        (0, None, "wrote no summary"),
        (
            137,
            None,
            "test runner exited with code 137 (Error); the runner wrote no summary",
        ),
        (
            1,
            Some(r#"{"total":1,"passed":1,"failed":0,"skipped":0}"#),
            "exited with code 1",
        ),
    ] {
        let mut world = World::empty();
        let (e, job) = testing(&mut world, "5m");
        pod_ended(&mut world, &job, exit, message);
        let plan = run_with(&e, &world, at(30), Arc::new(CatalogueStrategy), &stages());
        assert_eq!(phase(&plan), Phase::Failed, "{message:?}");
        let got = plan.status.message.clone().unwrap();
        assert!(got.contains(expected), "{message:?}: {got}");
        assert_eq!(plan.status.tests.unwrap().state.as_deref(), Some("Failed"));
    }
}

#[test]
fn a_new_push_prunes_the_running_job_and_tests_again() {
    let mut world = World::empty();
    let (e, job) = testing(&mut world, "5m");
    let old = job.metadata.name.clone().unwrap();
    assert!(
        old.starts_with(&format!("previewd-tests-{}-", &SHA1[..12])),
        "{old}"
    );
    job_exists(&mut world, &job, at(5), json!([]));
    let mut pushed = e.clone();
    pushed.spec.head_sha = SHA2.into();
    let plan = run_with(
        &pushed,
        &world,
        at(10),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(phase(&plan), Phase::Provisioning);
    assert!(
        plan.delete
            .iter()
            .any(|c| c.resource.kind == "Job" && c.name == old)
    );
    assert_eq!(
        plan.status.tests, None,
        "the old commit's run is not this one's"
    );
    world.apply(&pushed, &plan, true);
    world
        .view(plan.status.namespace.as_deref().unwrap())
        .objects
        .clear();
    let pushed = written(&pushed, &plan);
    // Services available again: straight to Testing with a Job for the new commit.
    let plan = run_with(
        &pushed,
        &world,
        at(11),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(phase(&plan), Phase::Testing);
    let new = applied_job(&plan, "tests").metadata.name.unwrap();
    assert!(
        new.starts_with(&format!("previewd-tests-{}-", &SHA2[..12])),
        "{new}"
    );
}

#[test]
fn stage_jobs_are_restricted_and_carry_their_inputs() {
    let mut world = World::empty();
    let (e, plan) = seeded(
        &mut world,
        r#"{"tables":1,"rows":1,"durationMs":1,"error":null}"#,
    );
    let ns = e.status.as_ref().unwrap().namespace.clone().unwrap();
    let tests = applied_job(&plan, "tests");
    {
        let spec = tests.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, None);
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["previewd.io/env"], "shop-pr-7");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "previewd");
    }
    let c = &tests
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/shop-tests:pr-7"));
    assert_eq!(c.command, Some(vec!["pytest".to_string()]));
    assert_eq!(c.args, Some(vec!["-q".to_string()]));
    let vars: std::collections::BTreeMap<String, String> = c
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.value.unwrap_or_default()))
        .collect();
    assert_eq!(vars["PREVIEW_URL"], format!("http://api.{ns}.svc:8080"));
    assert_eq!(vars["PREVIEW_URL_WEB"], format!("http://web.{ns}.svc:8080"));
    assert_eq!(vars["PREVIEW_PUBLIC_URL"], "https://pr-7.preview.test/");
    assert_eq!(vars["PREVIEWD_TEST_SELECTOR"], "all");
    assert_eq!(vars["PREVIEWD_TEST_WORKERS"], "4");
    assert_eq!(vars["PREVIEWD_TEST_TIMEOUT_SECONDS"], "600");
    assert_eq!(vars["PREVIEWD_HEAD_SHA"], SHA1);
}

#[test]
fn the_seed_job_runs_the_operator_image_with_the_spec_and_the_database_secret() {
    let mut world = World::empty();
    let e = ready(&mut world, tested_env("10m"));
    let plan = run_with(&e, &world, at(5), Arc::new(CatalogueStrategy), &stages());
    let seed = applied_job(&plan, "seed");
    assert!(
        seed.metadata
            .name
            .unwrap()
            .starts_with(&format!("previewd-seed-{}-", &SHA1[..12]))
    );
    let c = &seed
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.image,
        Some(crate::strategy::jobs::default_operator_image())
    );
    assert_eq!(c.args, Some(vec!["seed-data".to_string()]));
    let env = c.env.clone().unwrap();
    let spec: serde_json::Value = serde_json::from_str(
        env.iter()
            .find(|v| v.name == "PREVIEWD_SEED_SPEC")
            .unwrap()
            .value
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(spec["seed"], 42);
    assert_eq!(spec["counts"]["users"], 100);
    let db = env.iter().find(|v| v.name == "DATABASE_URL").unwrap();
    let secret = db
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("preview-database", "url")
    );
    assert_eq!(db.value, None, "the URL never appears in the Job");

    // A repository's own secret.
    let mut custom = e.clone();
    custom.spec.test_data.as_mut().unwrap().database_secret = Some(crate::crd::SecretKeyRef {
        name: "shop-db".into(),
        key: "dsn".into(),
    });
    let plan = run_with(
        &custom,
        &world,
        at(5),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    let c = applied_job(&plan, "seed")
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .clone();
    let secret = c
        .env
        .unwrap()
        .into_iter()
        .find(|v| v.name == "DATABASE_URL")
        .unwrap();
    assert_eq!(
        secret.value_from.unwrap().secret_key_ref.unwrap().name,
        "shop-db"
    );
}

#[test]
fn tests_enabled_without_an_image_stall_with_a_clear_reason() {
    let mut world = World::empty();
    let mut e = tested_env("10m");
    e.spec.test_data = None;
    e.spec.tests.as_mut().unwrap().image = None;
    let e = ready(&mut world, e);
    let plan = run_with(&e, &world, at(5), Arc::new(CatalogueStrategy), &stages());
    assert_eq!(cond(&plan, condition::STALLED).reason, "InvalidSpec");
    assert!(plan.status.message.unwrap().contains("spec.tests.image"));
}

fn runner_env(job: &Job) -> std::collections::BTreeMap<String, String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.value.unwrap_or_default()))
        .collect()
}

fn selection_advice(tests: &[&str]) -> Advice {
    Advice {
        tests: Some(previewd_core::testselect::TestSelectionStatus::subset(
            "changed-files",
            "changed-files",
            "deterministic",
            format!("{} tests", tests.len()),
            tests.iter().map(|t| (*t).to_owned()),
        )),
        ..Advice::default()
    }
}

fn changed_files_env() -> PreviewEnvironment {
    let mut e = tested_env("10m");
    e.spec.test_data = None;
    let tests = e.spec.tests.as_mut().unwrap();
    tests.selector = crate::crd::TestSelector::ChangedFiles;
    e
}

#[test]
fn the_advised_selection_is_recorded_and_passed_to_the_runner_per_head_commit() {
    let mut world = World::empty();
    world.observed.advice = Some(selection_advice(&["tests/b.py", "tests/a.py"]));
    let e = ready(&mut world, changed_files_env());
    let recorded = e.status.as_ref().unwrap().test_selection.clone().unwrap();
    assert_eq!(recorded.tests, ["tests/a.py", "tests/b.py"]);
    assert_eq!(recorded.count, Some(2));
    assert!(!recorded.run_all);
    let plan = run_with(&e, &world, at(5), Arc::new(CatalogueStrategy), &stages());
    let job = applied_job(&plan, "tests");
    let vars = runner_env(&job);
    assert_eq!(vars["PREVIEWD_TESTS"], "tests/a.py\ntests/b.py");
    assert_eq!(vars["PREVIEWD_TESTS_COUNT"], "2");
    assert_eq!(vars["PREVIEWD_TEST_SELECTOR"], "changed-files");
    world.apply(&e, &plan, true);
    let e = written(&e, &plan);

    // A new head commit: the advisor answers again and the new Job carries its answer.
    world.observed.advice = Some(selection_advice(&["tests/c.py"]));
    let mut pushed = e.clone();
    pushed.spec.head_sha = SHA2.into();
    let plan = run_with(
        &pushed,
        &world,
        at(10),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    assert_eq!(
        plan.status.test_selection.as_ref().unwrap().tests,
        ["tests/c.py"]
    );
    assert_eq!(plan.status.advised_sha.as_deref(), Some(SHA2));
    world.apply(&pushed, &plan, true);
    world
        .view(plan.status.namespace.as_deref().unwrap())
        .objects
        .clear();
    let pushed = written(&pushed, &plan);
    let plan = run_with(
        &pushed,
        &world,
        at(11),
        Arc::new(CatalogueStrategy),
        &stages(),
    );
    let job = applied_job(&plan, "tests");
    assert!(job.metadata.name.as_deref().unwrap().contains(&SHA2[..12]));
    let vars = runner_env(&job);
    assert_eq!(vars["PREVIEWD_TESTS"], "tests/c.py");
    assert_eq!(vars["PREVIEWD_TESTS_COUNT"], "1");
}

#[test]
fn without_an_advised_selection_every_test_runs_and_the_status_says_why() {
    // An advisor that selects no tests (an embedder's, or one that timed out).
    let mut world = World::empty();
    world.observed.advice = Some(Advice {
        status: AiStatus {
            reason: Some("advisor timed out".into()),
            ..AiStatus::default()
        },
        ..Advice::default()
    });
    let e = ready(&mut world, changed_files_env());
    let recorded = e.status.as_ref().unwrap().test_selection.clone().unwrap();
    assert!(recorded.run_all);
    assert_eq!(recorded.source, "fallback");
    assert!(
        recorded
            .reason
            .as_deref()
            .unwrap()
            .contains("advisor timed out"),
        "{recorded:?}"
    );
    let plan = run_with(&e, &world, at(5), Arc::new(CatalogueStrategy), &stages());
    let vars = runner_env(&applied_job(&plan, "tests"));
    assert!(!vars.contains_key("PREVIEWD_TESTS"), "{vars:?}");
    assert!(!vars.contains_key("PREVIEWD_TESTS_COUNT"));

    // A selection too large to pass on runs every test too.
    let many: Vec<String> = (0..150).map(|i| format!("tests/t{i:03}.py")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut world = World::empty();
    world.observed.advice = Some(selection_advice(&many));
    let e = ready(&mut world, changed_files_env());
    let recorded = e.status.as_ref().unwrap().test_selection.clone().unwrap();
    assert_eq!((recorded.tests.len(), recorded.omitted), (100, Some(50)));
    let plan = run_with(&e, &world, at(5), Arc::new(CatalogueStrategy), &stages());
    let vars = runner_env(&applied_job(&plan, "tests"));
    assert!(!vars.contains_key("PREVIEWD_TESTS"), "{vars:?}");
}

#[test]
fn an_environment_without_tests_records_no_selection() {
    let mut world = World::empty();
    world.observed.advice = Some(selection_advice(&["tests/a.py"]));
    let mut e = changed_files_env();
    e.spec.tests = None;
    let e = ready(&mut world, e);
    assert_eq!(e.status.as_ref().unwrap().test_selection, None);
}
