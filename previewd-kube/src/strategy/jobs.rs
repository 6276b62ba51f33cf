//! What the stage Jobs share: the restricted pod every stage Job runs, the settings the
//! operator gives them, and how a Job and its pod are judged from the watch caches.
//!
//! A stage Job is named after the head commit and a hash of its own spec
//! (`previewd-tests-<sha12>-<hash8>`): a new push or a changed spec makes a new Job (a
//! Job's pod template is immutable), and the old one is pruned with propagation
//! `Background`, which also deletes its pods. Jobs have `backoffLimit: 0` (a flaky run
//! is not retried behind the reviewer's back) and no `ttlSecondsAfterFinished`: a Job
//! that vanished after finishing would be created again and rerun; finished Jobs go with
//! the next push or with the namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStateTerminated, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::NamespaceView;
use crate::children::common_labels;
use crate::crd::PreviewEnvironment;
use crate::plan::object::{ChildKey, hash_of};

/// Label naming the stage a Job (and its pod) belongs to.
pub const LABEL_STAGE: &str = "previewd.io/stage";

/// Name of the container in every stage Job.
pub const CONTAINER: &str = "runner";

/// Operator-wide settings of stage Jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageJobSettings {
    /// Image of the operator itself, which the data-seed Job runs (`previewd seed-data`).
    pub operator_image: String,
    /// Node selector of stage Job pods (e.g. a node pool for CI work); empty for none.
    pub node_selector: BTreeMap<String, String>,
    /// The operator's internal endpoint through which seed Jobs reach the model; `None`:
    /// seed Jobs get no model.
    pub data_proposals: Option<super::seed::DataProposalEndpoint>,
}

impl Default for StageJobSettings {
    fn default() -> Self {
        StageJobSettings {
            operator_image: default_operator_image(),
            node_selector: BTreeMap::new(),
            data_proposals: None,
        }
    }
}

/// `ghcr.io/previewd/previewd:<version>`, the Helm chart's default image.
pub fn default_operator_image() -> String {
    format!("ghcr.io/previewd/previewd:{}", env!("CARGO_PKG_VERSION"))
}

/// A restricted Job (Pod Security `restricted`): non-root, no privilege escalation, every
/// capability dropped, the runtime's seccomp profile, no service-account token, one
/// attempt. The name is `<prefix>-<sha12>-<hash8>`, the hash covering the Job itself.
pub fn restricted_job(
    env: &PreviewEnvironment,
    namespace: &str,
    stage: &str,
    prefix: &str,
    mut container: Container,
    active_deadline_seconds: i64,
    settings: &StageJobSettings,
) -> Job {
    let mut labels = common_labels(env);
    labels.insert(LABEL_STAGE.to_string(), stage.to_string());
    container.name = CONTAINER.to_string();
    container.termination_message_policy = Some("File".into());
    container.security_context = Some(SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        read_only_root_filesystem: Some(false),
        ..SecurityContext::default()
    });
    let spec = JobSpec {
        backoff_limit: Some(0),
        completions: Some(1),
        parallelism: Some(1),
        active_deadline_seconds: Some(active_deadline_seconds.max(1)),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                node_selector: (!settings.node_selector.is_empty())
                    .then(|| settings.node_selector.clone()),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(65532),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..PodSecurityContext::default()
                }),
                containers: vec![container],
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    };
    let sha: String = env.spec.head_sha.chars().take(12).collect();
    let hash = hash_of(&serde_json::to_value(&spec).unwrap_or_default());
    let name = format!("{prefix}-{sha}-{}", &hash[..8.min(hash.len())]);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// What the caches say about a stage Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not in the cache yet (being created).
    Missing,
    /// Created, not finished.
    Running,
    /// Finished: the `Complete` (or `SuccessCriteriaMet`) condition.
    Succeeded,
    /// Finished: the `Failed` (or `FailureTarget`) condition, with its reason
    /// (`DeadlineExceeded`, `BackoffLimitExceeded`, ...) and message.
    Failed {
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
}

/// The Job named `name` as the caches hold it.
pub fn job(view: &NamespaceView, name: &str) -> Option<Job> {
    let obj = view.objects.get(&ChildKey::of::<Job>(name))?;
    serde_json::to_value(obj.as_ref())
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// The state of a Job from its conditions.
pub fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else {
        return JobState::Missing;
    };
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let holds = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if let Some(c) = holds("Failed").or_else(|| holds("FailureTarget")) {
        return JobState::Failed {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    if holds("Complete")
        .or_else(|| holds("SuccessCriteriaMet"))
        .is_some()
    {
        return JobState::Succeeded;
    }
    JobState::Running
}

/// How the Job's runner container ended, from its pod's status: the first terminated
/// runner among the Job's pods (a Job with `backoffLimit: 0` has one).
pub fn terminated_runner<'a>(
    view: &'a NamespaceView,
    job_name: &str,
) -> Option<&'a ContainerStateTerminated> {
    view.pods
        .iter()
        .filter(|p| pod_of_job(p, job_name))
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == CONTAINER)
        .find_map(|c| c.state.as_ref()?.terminated.as_ref())
}

fn pod_of_job(pod: &Pod, job_name: &str) -> bool {
    let labels = pod.meta().labels.as_ref();
    labels.is_some_and(|l| {
        l.get("batch.kubernetes.io/job-name").map(String::as_str) == Some(job_name)
            || l.get("job-name").map(String::as_str) == Some(job_name)
    })
}

/// An environment variable name for a service: `PREVIEW_URL_<NAME>`, upper case, `-`
/// and `.` as `_`.
pub fn service_env_name(prefix: &str, service: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + service.len());
    name.push_str(prefix);
    name.extend(service.chars().map(|c| match c {
        'a'..='z' => c.to_ascii_uppercase(),
        'A'..='Z' | '0'..='9' => c,
        _ => '_',
    }));
    name
}

/// Seconds of a duration for `activeDeadlineSeconds`.
pub fn deadline_seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// The container resources of a stage Job: the environment's tier (`auto` resolved to
/// the advisor's recommendation).
pub fn stage_resources(
    env: &PreviewEnvironment,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    let recommended = env
        .status
        .as_ref()
        .and_then(|s| s.ai.as_ref())
        .and_then(|ai| ai.recommended_tier);
    crate::children::workload::tier_resources(
        env.spec
            .resources
            .tier
            .unwrap_or_default()
            .resolve(recommended),
    )
}

/// A stage's one Job as a desired object.
pub fn desired_job_object(job: &Job) -> Result<Vec<super::DesiredObject>, super::StrategyError> {
    let object = super::DesiredObject::from_typed(job).map_err(|e| super::StrategyError {
        reason: "RenderFailed".into(),
        message: e.to_string(),
    })?;
    Ok(vec![object])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn service_variables_are_shell_names() {
        assert_eq!(
            service_env_name("PREVIEW_URL_", "order-api.v2"),
            "PREVIEW_URL_ORDER_API_V2"
        );
    }
}
