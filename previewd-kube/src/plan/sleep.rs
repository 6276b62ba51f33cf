//! Sleep and wake: when an environment's workloads are scaled to zero while its
//! namespace, Services, volumes and data stay.
//!
//! # What "idle" means
//!
//! An environment is idle when nobody has *acted on it* for the idle time
//! (`--idle-sleep-after`): no push to the PR (`previewd.io/last-activity`), no accepted PR
//! command (`previewd.io/last-command-at`, which `/preview wake` also sets), counted from
//! the latest of those and the creation time. HTTP traffic to an awake preview is not
//! observed: the operator sees no request logs. Opening a sleeping preview wakes it when
//! the operator runs a waker (the waker records the visit as a command would, so it
//! counts as activity); without one, a reviewer who only browses wakes it with `/preview
//! wake`. Idle is measured from what the `PreviewEnvironment` records, so it is exact
//! across operator restarts.
//!
//! # Reasons and who decides
//!
//! [`sleep_reason`] is the one decision, in this order:
//! 1. `Budget`: the budget policy says so (the `over_budget` argument, filled by the
//!    budget check), or the annotation `previewd.io/sleep: budget` asks for it. Activity
//!    does not wake a budget sleep; it ends when the request is withdrawn.
//! 2. `Command`: the annotation `previewd.io/sleep` with any other value (written by
//!    `/preview sleep`). Activity *after* `previewd.io/sleep-requested-at` (a push,
//!    `/preview wake`) wakes it; without a request time it holds until removed.
//! 3. `Idle`: the idle time has passed since the last activity.
//!
//! # While asleep
//!
//! Every Deployment and StatefulSet the strategy renders is applied with `replicas: 0`,
//! every Job and CronJob with `suspend: true` (nothing else changes, so no volume, claim
//! or Service is touched); a stage's Job still running is deleted; post-Ready stages do
//! not run. The phase stays what it was (the rollout state of the deployed commit) and
//! the `Sleeping` condition is `True` with the reason and since when; `Ready` is `False`
//! with reason `Sleeping`. On waking the environment is rolled out again like a new push
//! (phase `Provisioning` until the restored replicas are available).
//!
//! # The route while asleep
//!
//! With a waker configured ([`PlannerConfig::waker`]), the environment's route points at
//! the waker from the pass it falls asleep until it is Ready again after a wake
//! ([`route_to_waker`]): whoever opens the preview meanwhile gets a page that says so
//! (and wakes it) instead of an error from the ingress controller. The route goes back
//! to the services only once they answer, the order Knative's activator keeps.

use std::time::Duration;

use kube::ResourceExt;
use previewd_core::Phase;

use super::object::{ChildKey, ChildRef};
use super::pass::Pass;
use super::{Plan, PlannedEvent, Report, is_true, resource_of, until};
use crate::crd::condition;
use crate::strategy::NamespaceView;

use crate::children::waker::WakerEndpoint;
use crate::crd::PreviewEnvironmentStatus;
use crate::crd::{
    ANNOTATION_LAST_COMMAND, ANNOTATION_SLEEP, ANNOTATION_SLEEP_REQUESTED_AT, PreviewEnvironment,
};
use crate::plan::PlannerConfig;
use crate::plan::expiry;
use crate::plan::object::DesiredObject;

/// Value of [`ANNOTATION_SLEEP`] set by the budget policy.
pub const SLEEP_REQUEST_BUDGET: &str = "budget";
/// Value of [`ANNOTATION_SLEEP`] set by `/preview sleep`.
pub const SLEEP_REQUEST_COMMAND: &str = "command";

/// Whether a value of [`ANNOTATION_SLEEP`] is the budget's request (any case, trimmed):
/// the one test every reader of the annotation uses.
pub fn is_budget_request(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case(SLEEP_REQUEST_BUDGET)
}

/// Kinds scaled to zero while asleep.
pub const SCALED_KINDS: [&str; 2] = ["Deployment", "StatefulSet"];

/// Why an environment sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SleepReason {
    /// Nobody acted on it for the idle time.
    Idle,
    /// A PR command (`/preview sleep`) or a person asked for it.
    Command,
    /// The budget policy put it to sleep.
    Budget,
}

impl SleepReason {
    /// CamelCase word, used as the `Sleeping` condition's reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            SleepReason::Idle => "Idle",
            SleepReason::Command => "Command",
            SleepReason::Budget => "Budget",
        }
    }

    /// Why, for people (the condition message and the PR comment).
    pub fn describe(self, idle_after: Option<Duration>) -> String {
        match self {
            SleepReason::Idle => format!(
                "asleep: no push or command for {}",
                idle_after
                    .and_then(|d| previewd_core::Ttl::try_from(d).ok())
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "the idle time".into())
            ),
            SleepReason::Command => "asleep: put to sleep on request".into(),
            SleepReason::Budget => "asleep: the cost budget is exhausted".into(),
        }
    }
}

fn timestamp_annotation(env: &PreviewEnvironment, key: &str) -> Option<jiff::Timestamp> {
    env.annotations().get(key).and_then(|v| v.parse().ok())
}

/// The latest time someone acted on the environment: creation, the last push, the last
/// accepted PR command.
pub fn last_active(env: &PreviewEnvironment, now: jiff::Timestamp) -> jiff::Timestamp {
    let created = expiry::created_at(env, now);
    [
        expiry::last_push(env),
        timestamp_annotation(env, ANNOTATION_LAST_COMMAND),
    ]
    .into_iter()
    .flatten()
    .fold(created, jiff::Timestamp::max)
}

/// The sleep requested through [`ANNOTATION_SLEEP`], if it still holds.
pub fn requested(env: &PreviewEnvironment, now: jiff::Timestamp) -> Option<SleepReason> {
    let value = env.annotations().get(ANNOTATION_SLEEP)?.trim();
    if is_budget_request(value) {
        return Some(SleepReason::Budget);
    }
    if value.is_empty() {
        return None;
    }
    match timestamp_annotation(env, ANNOTATION_SLEEP_REQUESTED_AT) {
        // Activity after the request wakes the environment.
        Some(at) if last_active(env, now) > at => None,
        _ => Some(SleepReason::Command),
    }
}

/// Whether the environment should sleep at `now`, and why (see the module documentation
/// for the order). `idle_after` is the idle time (`None`: never sleep for idleness);
/// `over_budget` is the budget policy's verdict.
pub fn sleep_reason(
    env: &PreviewEnvironment,
    now: jiff::Timestamp,
    idle_after: Option<Duration>,
    over_budget: bool,
) -> Option<SleepReason> {
    if over_budget {
        return Some(SleepReason::Budget);
    }
    if let Some(reason) = requested(env, now) {
        return Some(reason);
    }
    let at = idle_sleep_at(env, now, idle_after)?;
    (now >= at).then_some(SleepReason::Idle)
}

/// When the environment falls asleep for idleness if nobody acts on it.
pub fn idle_sleep_at(
    env: &PreviewEnvironment,
    now: jiff::Timestamp,
    idle_after: Option<Duration>,
) -> Option<jiff::Timestamp> {
    let idle = jiff::SignedDuration::try_from(idle_after?).ok()?;
    last_active(env, now).checked_add(idle).ok()
}

/// The waker the environment's route points at in this pass, if any: while it sleeps
/// (`sleeping`, this pass's decision), and, judged from the status as read (`old`), while
/// it was asleep or has been woken and not been Ready since. A woken environment whose
/// rollout fails stays on the waker, which then says why.
pub fn route_to_waker<'c>(
    config: &'c PlannerConfig,
    sleeping: bool,
    old: &PreviewEnvironmentStatus,
) -> Option<&'c WakerEndpoint> {
    let waker = config.waker.as_ref()?;
    let sleep = old
        .conditions
        .iter()
        .find(|c| c.type_ == condition::SLEEPING);
    let asleep_or_waking = sleep.is_some_and(|c| {
        c.status == "True"
            || (c.reason == "Awake"
                && old
                    .ready_at
                    .as_ref()
                    .is_none_or(|ready| ready.0 < c.last_transition_time.0))
    });
    (sleeping || asleep_or_waking).then_some(waker)
}

/// Kinds suspended while asleep (`spec.suspend: true`): a suspended Job's pods are
/// deleted and none is started, a suspended CronJob schedules nothing.
pub const SUSPENDED_KINDS: [&str; 2] = ["Job", "CronJob"];

/// The object as it runs while asleep: Deployments and StatefulSets with `replicas: 0`,
/// Jobs and CronJobs suspended (everything else unchanged). Waking applies the object
/// as rendered, which withdraws both.
pub fn asleep(object: DesiredObject) -> DesiredObject {
    let kind = object.resource.kind.as_str();
    let batch = object.resource.group == "batch";
    let (field, value) = if SCALED_KINDS.contains(&kind) && object.resource.group == "apps" {
        ("replicas", serde_json::Value::from(0))
    } else if SUSPENDED_KINDS.contains(&kind) && batch {
        ("suspend", serde_json::Value::Bool(true))
    } else {
        return object;
    };
    let mut json = without_hash(object.object);
    if let Some(spec) = json.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.insert(field.into(), value);
    }
    DesiredObject::from_value(object.resource, json).in_wave(object.wave)
}

/// The object without the applied-hash annotation (recomputed after a change).
fn without_hash(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(a) = value
        .pointer_mut("/metadata/annotations")
        .and_then(|a| a.as_object_mut())
    {
        a.remove(crate::children::ANNOTATION_APPLIED_HASH);
    }
    value
}

/// The object with its pods restarted for `token` (redeploy and retry): the pod
/// template of Deployments and StatefulSets carries `previewd.io/restarted-for`.
pub fn restarted(object: DesiredObject, token: &str) -> DesiredObject {
    if !SCALED_KINDS.contains(&object.resource.kind.as_str()) {
        return object;
    }
    let mut value = without_hash(object.object);
    if let Some(template) = value
        .pointer_mut("/spec/template")
        .and_then(|t| t.as_object_mut())
    {
        let meta = template
            .entry("metadata")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(ANNOTATION_RESTARTED_FOR.into(), token.into());
            }
        }
    }
    DesiredObject::from_value(object.resource, value).in_wave(object.wave)
}

/// Pod-template annotation carrying the redeploy/retry token that restarted the pods.
pub const ANNOTATION_RESTARTED_FOR: &str = "previewd.io/restarted-for";

/// What an asleep environment's plan is made of.
pub(super) struct Asleep {
    /// Why it sleeps.
    pub reason: SleepReason,
    /// Its namespace.
    pub namespace: String,
    /// The objects as they are while asleep ([`asleep`]).
    pub desired: Vec<DesiredObject>,
}

/// An asleep environment: the namespace and everything in it kept, every Deployment and
/// StatefulSet at zero replicas, Jobs and CronJobs suspended, stage Jobs still running
/// deleted, nothing else pruned, no stage run; the phase kept, the `Sleeping` condition
/// set.
pub(super) fn plan_asleep(pass: &mut Pass<'_, '_>, asleep: Asleep) -> Plan {
    let Asleep {
        reason,
        namespace,
        desired,
    } = asleep;
    let input = pass.input;
    let env = input.env;
    let now = input.now;
    let empty = NamespaceView::default();
    let view = input.observed.views.get(&namespace).unwrap_or(&empty);
    let wanted: std::collections::BTreeSet<ChildKey> =
        desired.iter().map(DesiredObject::key).collect();
    let applying =
        super::provision::needs_apply(&desired, view, input.observed.namespaces.get(&namespace));
    let mut apply: Vec<DesiredObject> = desired
        .into_iter()
        .filter(|d| applying.contains(&d.key()))
        .collect();
    apply.sort_by_key(|d| (d.resource.kind != "Namespace", d.wave));

    let message = format!(
        "{}; workloads scaled to zero, namespace and data kept; push or comment `/preview wake` to wake it",
        reason.describe(input.config.idle_sleep_after)
    );
    if pass.status.phase.is_none() {
        pass.status.phase = Some(Phase::Pending);
    }
    pass.status.message = Some(message.clone());
    for (type_, value, why) in [
        (condition::SLEEPING, true, reason.as_str()),
        (condition::READY, false, "Sleeping"),
        (condition::RECONCILING, false, "Sleeping"),
    ] {
        pass.set(type_, value, why, &message);
    }
    let mut plan = pass.idle_plan();
    plan.apply = apply;
    // Jobs a stage started (not part of the application) stop too.
    plan.delete = view
        .objects
        .iter()
        .filter(|(key, job)| {
            key.kind == "Job"
                && key.api_version == "batch/v1"
                && !wanted.contains(key)
                && view.children.get(key).is_some_and(|c| !c.deleting)
                && job
                    .data
                    .pointer("/status/active")
                    .and_then(serde_json::Value::as_i64)
                    .is_some_and(|active| active > 0)
        })
        .filter_map(|(key, _)| {
            Some(ChildRef {
                resource: resource_of(key, input)?,
                namespace: Some(namespace.clone()),
                name: key.name.clone(),
            })
        })
        .collect();
    let entering = !is_true(&pass.old, condition::SLEEPING)
        || pass
            .old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::SLEEPING && c.reason != reason.as_str());
    if entering {
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "Sleeping".into(),
            note: message.clone(),
        });
        plan.report = Some(Report::Changed);
    }
    if super::live::lifecycle_conditions(pass) {
        plan.report = Some(Report::Changed);
    }
    let mut wait = input
        .config
        .resync_interval
        .min(until(now, pass.expires_at));
    if let Some(at) = super::expiry::warning_at(env, now, input.config.expiry_warning)
        && at > now
    {
        wait = wait.min(until(now, at));
    }
    if !plan.apply.is_empty() || !plan.delete.is_empty() {
        wait = wait.min(input.config.poll_interval);
    }
    plan.requeue_after = Some(wait);
    plan.status = pass.status.clone();
    plan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd::ANNOTATION_LAST_ACTIVITY;
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::core::ApiResource;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn env(annotations: &[(&str, &str)]) -> PreviewEnvironment {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {
                "name": "pe", "namespace": "ns",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": annotations,
            },
            "spec": {"repository": "acme/shop", "prNumber": 1, "branch": "b", "headSHA": "abcdef1"},
        }))
        .unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn idle_counts_from_the_latest_push_or_command() {
        let e = env(&[]);
        assert_eq!(
            sleep_reason(&e, t("2026-01-01T01:59:59Z"), Some(2 * HOUR), false),
            None
        );
        assert_eq!(
            sleep_reason(&e, t("2026-01-01T02:00:00Z"), Some(2 * HOUR), false),
            Some(SleepReason::Idle)
        );
        let pushed = env(&[(ANNOTATION_LAST_ACTIVITY, "2026-01-01T01:00:00Z")]);
        assert_eq!(
            sleep_reason(&pushed, t("2026-01-01T02:30:00Z"), Some(2 * HOUR), false),
            None
        );
        let commanded = env(&[
            (ANNOTATION_LAST_ACTIVITY, "2026-01-01T01:00:00Z"),
            (ANNOTATION_LAST_COMMAND, "2026-01-01T02:00:00Z"),
        ]);
        assert_eq!(
            idle_sleep_at(&commanded, t("2026-01-01T02:30:00Z"), Some(2 * HOUR)),
            Some(t("2026-01-01T04:00:00Z"))
        );
        // No idle time: never sleeps for idleness.
        assert_eq!(
            sleep_reason(&e, t("2027-01-01T00:00:00Z"), None, false),
            None
        );
    }

    #[test]
    fn a_command_sleep_ends_with_later_activity() {
        let asked = env(&[
            (ANNOTATION_SLEEP, "command"),
            (ANNOTATION_SLEEP_REQUESTED_AT, "2026-01-01T00:10:00Z"),
            (ANNOTATION_LAST_COMMAND, "2026-01-01T00:10:00Z"),
        ]);
        let now = t("2026-01-01T00:20:00Z");
        assert_eq!(
            sleep_reason(&asked, now, None, false),
            Some(SleepReason::Command)
        );
        let pushed = env(&[
            (ANNOTATION_SLEEP, "command"),
            (ANNOTATION_SLEEP_REQUESTED_AT, "2026-01-01T00:10:00Z"),
            (ANNOTATION_LAST_ACTIVITY, "2026-01-01T00:15:00Z"),
        ]);
        assert_eq!(sleep_reason(&pushed, now, None, false), None);
        // A request without a time (set by hand) holds until removed.
        let by_hand = env(&[
            (ANNOTATION_SLEEP, "maintenance"),
            (ANNOTATION_LAST_ACTIVITY, "2026-01-01T00:15:00Z"),
        ]);
        assert_eq!(
            sleep_reason(&by_hand, now, None, false),
            Some(SleepReason::Command)
        );
        assert_eq!(
            sleep_reason(&env(&[(ANNOTATION_SLEEP, " ")]), now, None, false),
            None
        );
    }

    #[test]
    fn budget_wins_and_activity_does_not_wake_it() {
        let now = t("2026-01-01T00:20:00Z");
        assert_eq!(
            sleep_reason(&env(&[]), now, None, true),
            Some(SleepReason::Budget)
        );
        let e = env(&[
            (ANNOTATION_SLEEP, "Budget"),
            (ANNOTATION_SLEEP_REQUESTED_AT, "2026-01-01T00:10:00Z"),
            (ANNOTATION_LAST_ACTIVITY, "2026-01-01T00:15:00Z"),
        ]);
        assert_eq!(
            sleep_reason(&e, now, Some(HOUR), false),
            Some(SleepReason::Budget)
        );
    }

    fn deployment(replicas: i32) -> DesiredObject {
        let value = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": []}}}
        });
        DesiredObject::from_value(ApiResource::erase::<Deployment>(&()), value)
    }

    #[test]
    fn asleep_scales_workloads_only() {
        let d = asleep(deployment(3));
        assert_eq!(d.object["spec"]["replicas"], 0);
        assert_ne!(d.hash, deployment(3).hash);
        assert_eq!(d.hash, asleep(deployment(3)).hash, "stable hash");
        let service = DesiredObject::from_value(
            ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web"}, "spec": {"ports": []}}),
        );
        assert_eq!(asleep(service.clone()), service);
    }

    #[test]
    fn the_route_points_at_the_waker_from_sleep_until_ready_again() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let waker = WakerEndpoint {
            address: "10.0.0.9".parse().unwrap(),
            port: 8090,
        };
        let config = PlannerConfig {
            waker: Some(waker.clone()),
            ..PlannerConfig::default()
        };
        let status = |sleeping: Option<(&str, &str, &str)>, ready_at: Option<&str>| {
            let mut s = PreviewEnvironmentStatus {
                ready_at: ready_at.map(|r| Time(t(r))),
                ..PreviewEnvironmentStatus::default()
            };
            if let Some((value, reason, at)) = sleeping {
                crate::plan::conditions::set_condition(
                    &mut s.conditions,
                    condition::SLEEPING,
                    value == "True",
                    reason,
                    "",
                    None,
                    t(at),
                );
            }
            s
        };
        let never_slept = status(None, Some("2026-01-01T00:05:00Z"));
        assert_eq!(route_to_waker(&config, false, &never_slept), None);
        // Falling asleep in this pass, and asleep as read.
        assert_eq!(route_to_waker(&config, true, &never_slept), Some(&waker));
        let asleep = status(Some(("True", "Idle", "2026-01-01T02:00:00Z")), None);
        assert_eq!(route_to_waker(&config, false, &asleep), Some(&waker));
        // Woken, rolling out: still the waker; Ready since the wake: the services.
        let woken = status(
            Some(("False", "Awake", "2026-01-01T03:00:00Z")),
            Some("2026-01-01T00:05:00Z"),
        );
        assert_eq!(route_to_waker(&config, false, &woken), Some(&waker));
        let rolling = status(Some(("False", "Awake", "2026-01-01T03:00:00Z")), None);
        assert_eq!(route_to_waker(&config, false, &rolling), Some(&waker));
        let ready = status(
            Some(("False", "Awake", "2026-01-01T03:00:00Z")),
            Some("2026-01-01T03:00:40Z"),
        );
        assert_eq!(route_to_waker(&config, false, &ready), None);
        // Without a waker the route never changes.
        let off = PlannerConfig::default();
        assert_eq!(route_to_waker(&off, true, &asleep), None);
    }

    #[test]
    fn restarted_stamps_the_pod_template() {
        let d = restarted(deployment(1), "123");
        assert_eq!(
            d.object["spec"]["template"]["metadata"]["annotations"][ANNOTATION_RESTARTED_FOR],
            "123"
        );
        assert_ne!(d.hash, deployment(1).hash);
    }
}
