//! Waiting for CI, retries, objects in a strategy's external namespace (Argo CD's),
//! teardown order and kinds the cluster does not serve.

use previewd_core::checks::{CheckState, RecordedChecks};

use super::*;
use crate::crd::{ANNOTATION_CHECKS, ANNOTATION_RETRY};
use crate::plan::ExternalChild;

fn gated(checks: Option<RecordedChecks>) -> PreviewEnvironment {
    let mut e = env_with(json!({"requiredChecks": ["build", "lint"]}));
    if let Some(checks) = checks {
        e.metadata.annotations = Some(
            [(
                ANNOTATION_CHECKS.to_string(),
                serde_json::to_string(&checks).unwrap(),
            )]
            .into(),
        );
    }
    e
}

fn checks(sha: &str, states: &[(&str, CheckState)]) -> RecordedChecks {
    let mut r = RecordedChecks::default();
    for (name, state) in states {
        r.record(sha, name, *state, "2026-11-29T12:00:00Z");
    }
    r
}

#[test]
fn a_gated_commit_waits_for_its_checks_with_the_namespace_ready_and_no_application() {
    let e = gated(Some(checks(SHA1, &[("build", CheckState::Success)])));
    let plan = run(&e, &World::empty(), at(1));
    assert_eq!(phase(&plan), Phase::Pending);
    let ready = cond(&plan, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForChecks")
    );
    assert_eq!(ready.message, "waiting for checks: lint");
    assert_eq!(
        cond(&plan, condition::SERVICES_DEPLOYED).reason,
        "WaitingForChecks"
    );
    let applied = kinds(&plan.apply);
    assert!(applied[0].starts_with("Namespace/"), "{applied:?}");
    assert!(
        !applied.iter().any(|a| a.starts_with("Deployment/")),
        "nothing of the application before the checks pass: {applied:?}"
    );
    assert_eq!(plan.requeue_after, Some(CHECKS_RECHECK));
    assert_eq!(
        plan.status.provisioning_since, None,
        "the deadline waits too"
    );
    assert_eq!(plan.events[0].reason, "WaitingForChecks");
}

#[test]
fn passing_checks_deploy_and_a_failed_one_fails_at_once() {
    let mut world = World::empty();
    let waiting = gated(None);
    let first = run(&waiting, &world, at(1));
    world.apply(&waiting, &first, true);
    let waiting = written(&waiting, &first);

    // Both passed (reported by the webhook): the application is deployed.
    let mut passed = waiting.clone();
    passed.metadata.annotations = gated(Some(checks(
        SHA1,
        &[
            ("build", CheckState::Success),
            ("lint", CheckState::Success),
        ],
    )))
    .metadata
    .annotations;
    let plan = run(&passed, &world, at(2));
    assert_eq!(phase(&plan), Phase::Provisioning);
    assert!(kinds(&plan.apply).iter().any(|a| a == "Deployment/api"));
    assert!(plan.status.provisioning_since.is_some());

    // One failed: Failed at once, with its name, reported.
    let mut failed = waiting.clone();
    failed.metadata.annotations = gated(Some(checks(
        SHA1,
        &[
            ("build", CheckState::Success),
            ("lint", CheckState::Failure),
        ],
    )))
    .metadata
    .annotations;
    let plan = run(&failed, &world, at(2));
    assert_eq!(phase(&plan), Phase::Failed);
    let ready = cond(&plan, condition::READY);
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("ChecksFailed", "build failed: lint")
    );
    assert_eq!(cond(&plan, condition::STALLED).reason, "ChecksFailed");
    assert_eq!(plan.report, Some(Report::Changed));
    assert!(plan.events[0].warning);
    assert!(
        !kinds(&plan.apply)
            .iter()
            .any(|a| a.starts_with("Deployment/"))
    );

    // The check re-run on GitHub passes: the environment goes on by itself.
    let failed = written(&failed, &plan);
    let mut rerun = failed.clone();
    rerun.metadata.annotations = passed.metadata.annotations.clone();
    let plan = run(&rerun, &world, at(3));
    assert_eq!(
        phase(&plan),
        Phase::Provisioning,
        "{:?}",
        plan.status.message
    );
    assert_eq!(plan.events[0].reason, "RetryRequested");

    // The fallback poll's answer counts like the webhook's.
    world.observed.polled_checks = Some(checks(
        SHA1,
        &[
            ("build", CheckState::Success),
            ("lint", CheckState::Success),
        ],
    ));
    let plan = run(&waiting, &world, at(2));
    assert_eq!(phase(&plan), Phase::Provisioning);
}

#[test]
fn a_new_head_commit_waits_without_touching_the_running_application() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let mut pushed = ready.clone();
    pushed.spec.head_sha = SHA2.into();
    pushed.spec.required_checks = vec!["build".into()];
    // Checks of the previous commit say nothing about this one.
    pushed.metadata.annotations = gated(Some(checks(SHA1, &[("build", CheckState::Success)])))
        .metadata
        .annotations;
    let plan = run(&pushed, &world, at(10));
    assert_eq!(phase(&plan), Phase::Pending);
    assert_eq!(
        plan.status.message.as_deref(),
        Some("waiting for checks: build")
    );
    assert!(plan.delete.is_empty(), "nothing is pruned while waiting");
    assert!(
        !kinds(&plan.apply)
            .iter()
            .any(|a| a.starts_with("Deployment/"))
    );
    assert_eq!(plan.report, Some(Report::Changed));
}

#[test]
fn the_retry_annotation_retries_a_failed_environment_once() {
    let mut world = World::empty();
    let e = env();
    let first = run(&e, &world, at(1));
    world.apply(&e, &first, false);
    let e = written(&e, &first);
    // Past the readiness deadline: Failed.
    let failed = run(&e, &world, at(700));
    assert_eq!(phase(&failed), Phase::Failed);
    let failed_env = written(&e, &failed);

    let mut retried = failed_env.clone();
    retried.metadata.annotations = Some([(ANNOTATION_RETRY.to_string(), "1".to_string())].into());
    let plan = run(&retried, &world, at(710));
    assert_eq!(phase(&plan), Phase::Provisioning);
    assert_eq!(plan.status.retry.as_deref(), Some("1"));
    assert_eq!(plan.events[0].reason, "RetryRequested");
    assert_eq!(plan.report, Some(Report::Changed));
    assert_eq!(
        plan.status.provisioning_since.as_ref().map(|t| t.0),
        Some(at(710)),
        "a fresh deadline"
    );

    // The same value again does nothing more: it failed again and stays Failed.
    let again = written(&retried, &plan);
    let plan = run(&again, &world, at(1400));
    assert_eq!(phase(&plan), Phase::Failed);
    let failed_again = written(&again, &plan);
    let plan = run(&failed_again, &world, at(1410));
    assert_eq!(phase(&plan), Phase::Failed);

    // A retry value set while healthy is recorded (its pods restart; the phase stays).
    let mut healthy_world = World::empty();
    let mut ready = to_ready(&mut healthy_world);
    ready.metadata.annotations = Some([(ANNOTATION_RETRY.to_string(), "x".to_string())].into());
    let plan = run(&ready, &healthy_world, at(20));
    assert_eq!(phase(&plan), Phase::Ready);
    assert_eq!(plan.status.retry.as_deref(), Some("x"));
}

/// A strategy that keeps one ConfigMap in an external namespace, like Argo CD's
/// Applications.
struct External {
    namespace: &'static str,
    optional: bool,
}

impl DeployStrategy for External {
    fn name(&self) -> &str {
        "external"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        let mut kind = WatchedKind::metadata::<ConfigMap>();
        kind.optional = self.optional;
        vec![kind]
    }

    fn external_namespace(&self, _input: &RenderInput<'_>) -> Option<String> {
        Some("argocd".into())
    }

    fn desired(
        &self,
        input: &RenderInput<'_>,
    ) -> Result<Vec<DesiredObject>, crate::strategy::StrategyError> {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": input.namespace, "namespace": self.namespace},
        }))
        .unwrap();
        Ok(vec![DesiredObject::from_typed(&cm).unwrap()])
    }

    fn health(
        &self,
        _input: &RenderInput<'_>,
        _view: &NamespaceView,
        _applying: &BTreeSet<ChildKey>,
    ) -> Health {
        Health::Progressing("waiting".into())
    }
}

#[test]
fn objects_in_the_external_namespace_are_marked_with_the_environment() {
    let plan = run_with(
        &env(),
        &World::empty(),
        at(1),
        Arc::new(External {
            namespace: "argocd",
            optional: false,
        }),
        &[],
    );
    let cm = plan
        .apply
        .iter()
        .find(|d| d.resource.kind == "ConfigMap")
        .expect("the external object is applied");
    assert_eq!(cm.namespace.as_deref(), Some("argocd"));
    assert_eq!(
        cm.object["metadata"]["annotations"][ANNOTATION_OWNER_UID],
        UID
    );
    assert_eq!(
        cm.object["metadata"]["labels"]["previewd.io/env"],
        "shop-pr-7"
    );
    assert_eq!(
        cm.object["metadata"]["labels"]["previewd.io/env-namespace"],
        "team"
    );

    // Any other namespace is still refused, and nothing is written.
    let plan = run_with(
        &env(),
        &World::empty(),
        at(1),
        Arc::new(External {
            namespace: "kube-system",
            optional: false,
        }),
        &[],
    );
    assert!(plan.apply.is_empty());
    assert_eq!(cond(&plan, condition::STALLED).reason, "ForeignNamespace");
}

#[test]
fn teardown_deletes_external_objects_first_and_waits_for_them() {
    let mut world = World::empty();
    let ready = to_ready(&mut world);
    let ns = ready.status.as_ref().unwrap().namespace.clone().unwrap();
    let key = ChildKey::of::<ConfigMap>(&ns);
    world.observed.external.insert(
        key.clone(),
        ExternalChild {
            namespace: "argocd".into(),
            ..ExternalChild::default()
        },
    );
    let mut deleting = ready.clone();
    deleting.metadata.deletion_timestamp = Some(Time(at(30)));
    let strategy = || -> Arc<dyn DeployStrategy> {
        Arc::new(External {
            namespace: "argocd",
            optional: false,
        })
    };
    let plan = run_with(&deleting, &world, at(30), strategy(), &[]);
    assert_eq!(phase(&plan), Phase::Terminating);
    assert_eq!(plan.delete.len(), 1, "{:?}", plan.delete);
    assert_eq!(plan.delete[0].namespace.as_deref(), Some("argocd"));
    assert_eq!(plan.delete[0].name, ns);
    assert_eq!(plan.finalizer, FinalizerAction::Keep);

    // Being deleted (Argo CD's finalizer at work): waited for, the namespace untouched.
    world
        .observed
        .external
        .get_mut(&key)
        .unwrap()
        .child
        .deleting = true;
    let deleting = written(&deleting, &plan);
    let plan = run_with(&deleting, &world, at(31), strategy(), &[]);
    assert!(plan.delete.is_empty());
    // No poll every second: the watch of the kind wakes it when the object is gone, and
    // the requeue comes no later than the wait becomes overdue.
    let requeue = plan.requeue_after.unwrap();
    assert!(
        requeue > TEARDOWN_POLL && requeue <= TEARDOWN_WAIT,
        "{requeue:?}"
    );
    // Long overdue: said so, still waiting.
    let plan = run_with(&deleting, &world, at(30 + 700), strategy(), &[]);
    assert!(plan.delete.is_empty());
    assert_eq!(plan.requeue_after, Some(TEARDOWN_WAIT));
    let stalled = cond(&plan, condition::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "ExternalObjectsRemain")
    );

    // Gone: now the namespace.
    world.observed.external.clear();
    let plan = run_with(&deleting, &world, at(32), strategy(), &[]);
    let kinds: Vec<&str> = plan
        .delete
        .iter()
        .map(|c| c.resource.kind.as_str())
        .collect();
    assert_eq!(kinds.last(), Some(&"Namespace"), "{kinds:?}");
    assert!(
        kinds[..kinds.len() - 1].iter().all(|k| *k == "Deployment"),
        "only workload controllers go before the namespace: {kinds:?}"
    );
}

#[test]
fn a_strategy_whose_kind_is_not_served_stalls_before_writing() {
    let mut world = World::empty();
    world
        .observed
        .missing_kinds
        .insert("v1/ConfigMap".to_string());
    let plan = run_with(
        &env(),
        &world,
        at(1),
        Arc::new(External {
            namespace: "argocd",
            optional: true,
        }),
        &[],
    );
    assert!(plan.apply.is_empty());
    let stalled = cond(&plan, condition::STALLED);
    assert_eq!(stalled.reason, "StrategyUnavailable");
    assert!(
        stalled
            .message
            .starts_with("deploy strategy external needs ConfigMap v1"),
        "{}",
        stalled.message
    );
}
