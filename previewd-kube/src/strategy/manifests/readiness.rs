//! Readiness of any object from its live JSON, after kstatus (`sigs.k8s.io/cli-utils`)
//! with Flux's rule for Jobs: Deployments, StatefulSets, DaemonSets and ReplicaSets are
//! ready when rolled out; a Job when `Complete` (a `Failed` Job fails); anything else
//! with a `Ready` condition when it is `True` (`Stalled=True` fails); everything else
//! when it exists.

use serde_json::Value;

use crate::plan::health::Health;

/// Judges a live object. `what` names it in messages (e.g. `Job migrate`).
pub fn object_health(what: &str, kind: &str, live: &Value) -> Health {
    if live.pointer("/metadata/deletionTimestamp").is_some() {
        return Health::Progressing(format!("{what}: being deleted"));
    }
    if let Some(seen) = int(live, "/status/observedGeneration") {
        let generation = int(live, "/metadata/generation").unwrap_or(0);
        if seen < generation {
            return Health::Progressing(format!("{what}: waiting for its controller"));
        }
    }
    if let Some(c) = condition(live, "Stalled").filter(|c| is_true(c)) {
        return Health::Failed(format!("{what}: {}", describe(c, "Stalled")));
    }
    match kind {
        "Deployment" => deployment(what, live),
        "StatefulSet" => stateful_set(what, live),
        "DaemonSet" => daemon_set(what, live),
        "ReplicaSet" => replica_set(what, live),
        "Job" => job(what, live),
        _ => match condition(live, "Ready") {
            Some(c) if is_true(c) => Health::Available(format!("{what} ready")),
            Some(c) => Health::Progressing(format!("{what}: {}", describe(c, "not ready"))),
            None => Health::Available(format!("{what} exists")),
        },
    }
}

fn deployment(what: &str, d: &Value) -> Health {
    let want = int(d, "/spec/replicas").unwrap_or(1);
    if let Some(c) = condition(d, "ReplicaFailure").filter(|c| is_true(c)) {
        return Health::Failed(format!("{what}: {}", describe(c, "ReplicaFailure")));
    }
    if let Some(c) = condition(d, "Progressing").filter(|c| str_of(c, "status") == "False") {
        return Health::Failed(format!(
            "{what}: {}",
            describe(c, "ProgressDeadlineExceeded")
        ));
    }
    let status = |f: &str| int(d, &format!("/status/{f}")).unwrap_or(0);
    if status("updatedReplicas") < want {
        return progress(what, "updated", status("updatedReplicas"), want);
    }
    if status("replicas") > want {
        return Health::Progressing(format!("{what}: old replicas terminating"));
    }
    if status("availableReplicas") < want {
        return progress(what, "available", status("availableReplicas"), want);
    }
    Health::Available(format!("{what} rolled out"))
}

fn stateful_set(what: &str, s: &Value) -> Health {
    let want = int(s, "/spec/replicas").unwrap_or(1);
    let status = |f: &str| int(s, &format!("/status/{f}")).unwrap_or(0);
    if status("readyReplicas") < want {
        return progress(what, "ready", status("readyReplicas"), want);
    }
    if status("replicas") > want {
        return Health::Progressing(format!("{what}: old replicas terminating"));
    }
    let on_delete = s
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("OnDelete");
    if on_delete {
        return Health::Available(format!("{what} ready"));
    }
    if let Some(partition) = int(s, "/spec/updateStrategy/rollingUpdate/partition") {
        let need = (want - partition).max(0);
        if status("updatedReplicas") < need {
            return progress(what, "updated", status("updatedReplicas"), need);
        }
        return Health::Available(format!("{what} rolled out"));
    }
    let current = s.pointer("/status/currentRevision").and_then(Value::as_str);
    let update = s.pointer("/status/updateRevision").and_then(Value::as_str);
    if current.is_some() && update.is_some() && current != update {
        return Health::Progressing(format!("{what}: rolling update in progress"));
    }
    Health::Available(format!("{what} rolled out"))
}

fn daemon_set(what: &str, d: &Value) -> Health {
    let Some(desired) = int(d, "/status/desiredNumberScheduled") else {
        return Health::Progressing(format!("{what}: waiting for its controller"));
    };
    for field in ["updatedNumberScheduled", "numberAvailable", "numberReady"] {
        let have = int(d, &format!("/status/{field}")).unwrap_or(0);
        if have < desired {
            return progress(what, field, have, desired);
        }
    }
    Health::Available(format!("{what} rolled out"))
}

fn replica_set(what: &str, r: &Value) -> Health {
    let want = int(r, "/spec/replicas").unwrap_or(1);
    if let Some(c) = condition(r, "ReplicaFailure").filter(|c| is_true(c)) {
        return Health::Failed(format!("{what}: {}", describe(c, "ReplicaFailure")));
    }
    let available = int(r, "/status/availableReplicas").unwrap_or(0);
    if available < want {
        return progress(what, "available", available, want);
    }
    Health::Available(format!("{what} ready"))
}

fn job(what: &str, j: &Value) -> Health {
    if let Some(c) = condition(j, "Failed").filter(|c| is_true(c)) {
        return Health::Failed(format!("{what} failed: {}", describe(c, "Failed")));
    }
    if condition(j, "Complete").is_some_and(is_true) {
        return Health::Available(format!("{what} completed"));
    }
    if j.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Health::Progressing(format!("{what}: suspended"));
    }
    Health::Progressing(format!("{what}: running"))
}

fn progress(what: &str, field: &str, have: i64, want: i64) -> Health {
    Health::Progressing(format!("{what}: {have}/{want} {field}"))
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn is_true(c: &Value) -> bool {
    str_of(c, "status") == "True"
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `Reason: message`, or `fallback` when the condition has neither.
fn describe(c: &Value, fallback: &str) -> String {
    let reason = str_of(c, "reason");
    let message = str_of(c, "message");
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_string(),
        (true, false) => message.to_string(),
        (true, true) => fallback.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn available(h: &Health) -> bool {
        matches!(h, Health::Available(_))
    }

    #[test]
    fn deployments_are_ready_when_rolled_out() {
        let ready = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(available(&object_health(
            "Deployment api",
            "Deployment",
            &ready
        )));
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(
            object_health("Deployment api", "Deployment", &stale),
            Health::Progressing("Deployment api: waiting for its controller".into())
        );
        let rolling = json!({"spec": {}, "status": {"replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}});
        assert_eq!(
            object_health("Deployment api", "Deployment", &rolling),
            Health::Progressing("Deployment api: old replicas terminating".into())
        );
        let new = json!({"spec": {"replicas": 2}, "status": {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}});
        assert_eq!(
            object_health("Deployment api", "Deployment", &new),
            Health::Progressing("Deployment api: 1/2 available".into())
        );
        let stuck = json!({"spec": {"replicas": 1}, "status": {"conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}});
        assert_eq!(
            object_health("Deployment api", "Deployment", &stuck),
            Health::Failed("Deployment api: ProgressDeadlineExceeded: too slow".into())
        );
    }

    #[test]
    fn stateful_sets_need_ready_replicas_and_one_revision() {
        let ready = json!({"spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 1,
            "currentRevision": "db-1", "updateRevision": "db-1"}});
        assert!(available(&object_health(
            "StatefulSet db",
            "StatefulSet",
            &ready
        )));
        let starting =
            json!({"spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 0}});
        assert_eq!(
            object_health("StatefulSet db", "StatefulSet", &starting),
            Health::Progressing("StatefulSet db: 0/1 ready".into())
        );
        let updating = json!({"spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 1,
            "currentRevision": "db-1", "updateRevision": "db-2"}});
        assert!(matches!(
            object_health("StatefulSet db", "StatefulSet", &updating),
            Health::Progressing(m) if m.contains("rolling update")
        ));
        let partitioned = json!({"spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"partition": 2}}}, "status": {"replicas": 3, "readyReplicas": 3,
            "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}});
        assert!(available(&object_health(
            "StatefulSet db",
            "StatefulSet",
            &partitioned
        )));
    }

    #[test]
    fn daemon_sets_need_every_scheduled_pod_ready() {
        let unknown = json!({"status": {}});
        assert!(matches!(
            object_health("DaemonSet d", "DaemonSet", &unknown),
            Health::Progressing(_)
        ));
        let ready = json!({"status": {"desiredNumberScheduled": 2, "updatedNumberScheduled": 2,
            "numberAvailable": 2, "numberReady": 2}});
        assert!(available(&object_health(
            "DaemonSet d",
            "DaemonSet",
            &ready
        )));
        let half = json!({"status": {"desiredNumberScheduled": 2, "updatedNumberScheduled": 2,
            "numberAvailable": 1, "numberReady": 1}});
        assert_eq!(
            object_health("DaemonSet d", "DaemonSet", &half),
            Health::Progressing("DaemonSet d: 1/2 numberAvailable".into())
        );
    }

    #[test]
    fn jobs_complete_or_fail_with_their_reason() {
        let running = json!({"status": {"active": 1}});
        assert_eq!(
            object_health("Job migrate", "Job", &running),
            Health::Progressing("Job migrate: running".into())
        );
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(available(&object_health("Job migrate", "Job", &done)));
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert_eq!(
            object_health("Job migrate", "Job", &failed),
            Health::Failed(
                "Job migrate failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
                    .into()
            )
        );
    }

    #[test]
    fn other_kinds_use_ready_conditions_or_exist() {
        let cm = json!({"metadata": {"name": "settings"}, "data": {}});
        assert_eq!(
            object_health("ConfigMap settings", "ConfigMap", &cm),
            Health::Available("ConfigMap settings exists".into())
        );
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
            "reason": "Provisioning", "message": "creating the cluster"}]}});
        assert_eq!(
            object_health("Cluster pg", "Cluster", &not_ready),
            Health::Progressing("Cluster pg: Provisioning: creating the cluster".into())
        );
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(available(&object_health("Cluster pg", "Cluster", &ready)));
        let stalled = json!({"status": {"conditions": [{"type": "Stalled", "status": "True",
            "reason": "InvalidSpec", "message": "bad"}]}});
        assert_eq!(
            object_health("Cluster pg", "Cluster", &stalled),
            Health::Failed("Cluster pg: InvalidSpec: bad".into())
        );
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-11-29T12:00:00Z"}});
        assert!(matches!(
            object_health("ConfigMap c", "ConfigMap", &deleting),
            Health::Progressing(_)
        ));
    }
}
