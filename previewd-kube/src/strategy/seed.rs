//! The data-seed stage: when `spec.testData.enabled`, once the services are available, a
//! Job in the environment's namespace runs the operator's own image as
//! `previewd seed-data` with
//!
//! - `PREVIEWD_SEED_SPEC`: `spec.testData` as JSON;
//! - `DATABASE_URL`: from a Secret in the same namespace (`spec.testData.databaseSecret`,
//!   default Secret `preview-database`, key `url`).
//!
//! - `PREVIEWD_SEED_SNAPSHOT`, `PREVIEWD_SEED_SNAPSHOT_SHA256` and
//!   `PREVIEWD_SEED_SNAPSHOT_AUTHORIZATION` (a `secretKeyRef`): `spec.testData.snapshot`;
//! - `PREVIEWD_SEED_PROPOSALS_URL` and `PREVIEWD_SEED_PROPOSALS_TOKEN`: with `aiModel:
//!   true` and the operator's internal endpoint configured, where the Job asks the model
//!   for data proposals. No model credential ever enters the namespace: the token is an
//!   HMAC of the namespace under the operator's key, good only for this namespace's
//!   questions at that endpoint, and a NetworkPolicy opens egress from seed pods to the
//!   endpoint's port on the operator's pods and nowhere else.
//!
//! The subcommand writes a [`SeedReport`](previewd_core::testrun::SeedReport)
//! (`{"tables":N,"rows":N,"durationMs":N,"error":null,"proposals":{...}}`) to its
//! termination message. The outcome goes to `status.testData` and the `DataSeeded`
//! condition. A new head commit seeds again (the Job is named after it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, SecretKeySelector};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use previewd_core::testrun::parse_seed_report;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::jobs::{JobState, deadline_seconds, job, job_state, restricted_job, terminated_runner};
use super::{NamespaceView, RenderInput, Stage, StageOutcome, StrategyError, WatchedKind};
use crate::crd::{PreviewEnvironment, PreviewEnvironmentStatus, TestDataStatus, condition};
use crate::plan::conditions::set_condition;
use crate::plan::object::DesiredObject;

/// How long a seed Job may run.
pub const SEED_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Name of the NetworkPolicy that lets seed pods reach the operator's endpoint.
pub const MODEL_EGRESS_POLICY: &str = "previewd-seed-model";

/// The operator's internal endpoint for data proposals, as seed Jobs are given it.
#[derive(Clone, PartialEq, Eq)]
pub struct DataProposalEndpoint {
    /// Base URL the seed Job posts to, e.g.
    /// `http://previewd-proposals.previewd-system.svc:8082`.
    pub url: String,
    /// Namespace of the operator's pods.
    pub operator_namespace: String,
    /// Labels that select the operator's pods.
    pub operator_labels: BTreeMap<String, String>,
    /// Port the endpoint listens on, in the operator's pods.
    pub port: u16,
    /// Key of the per-namespace tokens (shared by every replica).
    pub key: Arc<Vec<u8>>,
    /// Whether fork pull requests' environments may use it (the model is local, or the
    /// AI settings allow forks).
    pub forks: bool,
}

impl std::fmt::Debug for DataProposalEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataProposalEndpoint")
            .field("url", &self.url)
            .field("operator_namespace", &self.operator_namespace)
            .field("operator_labels", &self.operator_labels)
            .field("port", &self.port)
            .field("key", &"<redacted>")
            .field("forks", &self.forks)
            .finish()
    }
}

fn token_mac(key: &[u8], namespace: &str) -> Option<Vec<u8>> {
    // HMAC takes keys of any length: this fails for no key.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(b"previewd data-proposal token v1\0");
    mac.update(namespace.as_bytes());
    Some(mac.finalize().into_bytes().to_vec())
}

/// The token a seed Job in `namespace` presents: `v1.<namespace>.<hmac hex>`.
pub fn proposal_token(key: &[u8], namespace: &str) -> String {
    let mac = token_mac(key, namespace).unwrap_or_default();
    format!("v1.{namespace}.{}", hex::encode(mac))
}

/// The namespace a token was minted for, when it is genuine (compared in constant time).
pub fn verify_proposal_token(key: &[u8], token: &str) -> Option<String> {
    let rest = token.strip_prefix("v1.")?;
    let (namespace, mac) = rest.rsplit_once('.')?;
    if !previewd_core::naming::is_dns1123_label(namespace) {
        return None;
    }
    let given = hex::decode(mac).ok()?;
    let expected = token_mac(key, namespace)?;
    (given.len() == expected.len() && bool::from(given.ct_eq(&expected)))
        .then(|| namespace.to_string())
}

/// The NetworkPolicy that opens egress from the environment's seed pods to the endpoint's
/// port on the operator's pods, and nowhere else (NetworkPolicies add up: the namespace's
/// default deny still holds for everything else).
pub fn desired_model_egress(
    env: &PreviewEnvironment,
    namespace: &str,
    endpoint: &DataProposalEndpoint,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(MODEL_EGRESS_POLICY.into()),
            namespace: Some(namespace.into()),
            labels: Some(crate::children::common_labels(env)),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    super::jobs::LABEL_STAGE.to_string(),
                    "seed".to_string(),
                )])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Egress".into()]),
            ingress: None,
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            endpoint.operator_namespace.clone(),
                        )])),
                        ..LabelSelector::default()
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(endpoint.operator_labels.clone()),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(endpoint.port))),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
        }),
    }
}

/// The endpoint a seed Job of `env` may use: `aiModel: true`, configured, and not a fork
/// unless forks are allowed.
pub fn proposal_endpoint<'a>(
    env: &PreviewEnvironment,
    settings: &'a super::StageJobSettings,
) -> Option<&'a DataProposalEndpoint> {
    let wants = env
        .spec
        .test_data
        .as_ref()
        .is_some_and(|t| t.ai_model == Some(true));
    let endpoint = settings.data_proposals.as_ref()?;
    (wants && (endpoint.forks || !crate::plan::fork::is_fork(env))).then_some(endpoint)
}

/// Seeds the environment's database with `previewd seed-data`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedStage;

impl SeedStage {
    /// The seed Job of the environment's head commit.
    pub fn desired_job(&self, input: &RenderInput<'_>) -> Result<Job, StrategyError> {
        let env = input.env;
        let spec = env.spec.test_data.clone().unwrap_or_default();
        let secret = spec.database_secret.clone().unwrap_or_default();
        let seed_spec = serde_json::to_string(&spec).map_err(|e| StrategyError {
            reason: "RenderFailed".into(),
            message: format!("cannot serialise spec.testData: {e}"),
        })?;
        let value = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            value_from: None,
        };
        let secret_ref = |name: &str, r: crate::crd::SecretKeyRef| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name,
                    key: r.key,
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        };
        let mut vars = vec![
            value("PREVIEWD_SEED_SPEC", seed_spec),
            secret_ref("DATABASE_URL", secret),
        ];
        if let Some(snapshot) = &spec.snapshot {
            vars.push(value("PREVIEWD_SEED_SNAPSHOT", snapshot.url.clone()));
            if let Some(sha) = &snapshot.sha256 {
                vars.push(value("PREVIEWD_SEED_SNAPSHOT_SHA256", sha.clone()));
            }
            if let Some(credentials) = &snapshot.credentials {
                vars.push(secret_ref(
                    "PREVIEWD_SEED_SNAPSHOT_AUTHORIZATION",
                    credentials.clone(),
                ));
            }
        }
        if let Some(endpoint) = proposal_endpoint(env, &input.config.stage_jobs) {
            vars.push(value("PREVIEWD_SEED_PROPOSALS_URL", endpoint.url.clone()));
            vars.push(value(
                "PREVIEWD_SEED_PROPOSALS_TOKEN",
                proposal_token(&endpoint.key, input.namespace),
            ));
        }
        let container = Container {
            image: Some(input.config.stage_jobs.operator_image.clone()),
            args: Some(vec!["seed-data".into()]),
            env: Some(vars),
            resources: Some(super::jobs::stage_resources(env)),
            ..Container::default()
        };
        Ok(restricted_job(
            env,
            input.namespace,
            "seed",
            "previewd-seed",
            container,
            deadline_seconds(SEED_TIMEOUT),
            &input.config.stage_jobs,
        ))
    }

    fn job_name(&self, input: &RenderInput<'_>) -> Option<String> {
        self.desired_job(input).ok()?.metadata.name
    }

    /// What the caches say, as the status records it.
    pub fn judge(&self, input: &RenderInput<'_>, view: &NamespaceView) -> TestDataStatus {
        let name = self.job_name(input).unwrap_or_default();
        let mut status = TestDataStatus {
            state: "Running".into(),
            sha: Some(input.env.spec.head_sha.clone()),
            job: Some(name.clone()),
            ..TestDataStatus::default()
        };
        let state = job_state(job(view, &name).as_ref());
        let terminated = terminated_runner(view, &name);
        let fail = |mut s: TestDataStatus, error: String| {
            s.state = "Failed".into();
            s.error = Some(error);
            s
        };
        match (terminated, &state) {
            (Some(t), _) => match t.message.as_deref().map(parse_seed_report) {
                Some(Ok(report)) => {
                    status.tables = Some(to_i64(report.tables));
                    status.rows = Some(to_i64(report.rows));
                    status.duration_ms = Some(to_i64(report.duration_ms));
                    status.proposals = report.proposals;
                    match report.error {
                        Some(error) => fail(status, format!("seeding failed: {error}")),
                        None if t.exit_code != 0 => {
                            fail(status, format!("seed job exited with code {}", t.exit_code))
                        }
                        None => {
                            status.state = "Seeded".into();
                            status
                        }
                    }
                }
                Some(Err(e)) => fail(status, format!("seed job: {e}")),
                None => fail(
                    status,
                    format!(
                        "seed job exited with code {} ({}) and wrote no report",
                        t.exit_code,
                        t.reason.as_deref().unwrap_or("no reason")
                    ),
                ),
            },
            (None, JobState::Failed { reason, message }) if reason == "DeadlineExceeded" => fail(
                status,
                format!(
                    "seeding did not finish within {}: {message}",
                    crate::plan::humanize(SEED_TIMEOUT)
                ),
            ),
            (None, JobState::Failed { reason, message }) => {
                fail(status, format!("seed job failed ({reason}): {message}"))
            }
            (None, JobState::Succeeded) => fail(
                status,
                "seed job finished but its pod left no report".to_string(),
            ),
            (None, JobState::Missing | JobState::Running) => status,
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Stage for SeedStage {
    fn name(&self) -> &str {
        "seed"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![WatchedKind::full::<Job>()]
    }

    fn enabled(&self, env: &PreviewEnvironment) -> bool {
        env.spec.test_data.as_ref().is_some_and(|t| t.enabled)
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        let mut objects = super::jobs::desired_job_object(&self.desired_job(input)?)?;
        if let Some(endpoint) = proposal_endpoint(input.env, &input.config.stage_jobs) {
            let policy = desired_model_egress(input.env, input.namespace, endpoint);
            objects.push(
                DesiredObject::from_typed(&policy).map_err(|e| StrategyError {
                    reason: "RenderFailed".into(),
                    message: e.to_string(),
                })?,
            );
        }
        Ok(objects)
    }

    fn outcome(&self, input: &RenderInput<'_>, view: &NamespaceView) -> StageOutcome {
        let status = self.judge(input, view);
        match status.state.as_str() {
            "Seeded" => StageOutcome::Passed(format!(
                "test data seeded: {} rows in {} tables",
                status.rows.unwrap_or_default(),
                status.tables.unwrap_or_default()
            )),
            "Failed" => StageOutcome::Failed(status.error.unwrap_or_default()),
            _ => StageOutcome::Running("seeding test data".into()),
        }
    }

    fn timeout(&self, _env: &PreviewEnvironment) -> Option<Duration> {
        Some(SEED_TIMEOUT + Duration::from_secs(60))
    }

    fn record(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        outcome: &StageOutcome,
        status: &mut PreviewEnvironmentStatus,
    ) {
        let mut data = self.judge(input, view);
        let (seeded, reason) = match outcome {
            StageOutcome::Passed(_) => (true, "DataSeeded"),
            StageOutcome::Failed(message) => {
                data.state = "Failed".into();
                data.error = Some(message.clone());
                (false, "SeedFailed")
            }
            StageOutcome::Running(_) => (false, "Seeding"),
        };
        let message = match outcome {
            StageOutcome::Passed(m) | StageOutcome::Failed(m) | StageOutcome::Running(m) => {
                m.clone()
            }
        };
        status.test_data = Some(data);
        set_condition(
            &mut status.conditions,
            condition::DATA_SEEDED,
            seeded,
            reason,
            &message,
            input.env.metadata.generation,
            input.now,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::controller::ControllerConfig;
    use serde_json::json;

    fn env(fork: bool, test_data: serde_json::Value) -> PreviewEnvironment {
        let mut labels = serde_json::Map::new();
        if fork {
            labels.insert("previewd.io/fork".into(), json!("true"));
        }
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team", "uid": "u1", "labels": labels},
            "spec": {
                "repository": "acme/shop", "prNumber": 7, "branch": "feat/db",
                "headSHA": "0123456789abcdef0123456789abcdef01234567",
                "services": [{"name": "api", "image": "ghcr.io/acme/api:pr-7", "port": 8080}],
                "testData": test_data
            }
        }))
        .unwrap()
    }

    fn endpoint(forks: bool) -> DataProposalEndpoint {
        DataProposalEndpoint {
            url: "http://previewd-proposals.previewd-system.svc:8082".into(),
            operator_namespace: "previewd-system".into(),
            operator_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "previewd".to_string(),
            )]),
            port: 8082,
            key: Arc::new(b"operator key".to_vec()),
            forks,
        }
    }

    fn config(endpoint: Option<DataProposalEndpoint>) -> ControllerConfig {
        let mut c = ControllerConfig::default();
        c.stage_jobs.data_proposals = endpoint;
        c
    }

    fn render<'a>(env: &'a PreviewEnvironment, config: &'a ControllerConfig) -> RenderInput<'a> {
        RenderInput {
            env,
            namespace: "preview-shop-7",
            config,
            use_spot: false,
            host: None,
            repository: None,
            now: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn vars(job: &Job) -> BTreeMap<String, EnvVar> {
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
            .map(|v| (v.name.clone(), v))
            .collect()
    }

    #[test]
    fn tokens_name_their_namespace_and_cannot_be_forged() {
        let key = b"operator key";
        let token = proposal_token(key, "preview-shop-7");
        assert!(token.starts_with("v1.preview-shop-7."));
        assert_eq!(
            verify_proposal_token(key, &token).as_deref(),
            Some("preview-shop-7")
        );
        // Another namespace, another key, a changed byte, garbage: refused.
        let other = token.replace("preview-shop-7", "preview-bank-1");
        assert_eq!(verify_proposal_token(key, &other), None);
        assert_eq!(verify_proposal_token(b"another key", &token), None);
        let mut flipped = token.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(verify_proposal_token(key, &flipped), None);
        for bad in ["", "v1.", "v1.ns", "v2.ns.00", "v1.Bad_NS.00", "v1.ns.zz"] {
            assert_eq!(verify_proposal_token(key, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_seed_job_gets_the_endpoint_and_a_token_but_no_model_credential() {
        let e = env(false, json!({"enabled": true, "aiModel": true}));
        let c = config(Some(endpoint(false)));
        let input = render(&e, &c);
        let job = SeedStage.desired_job(&input).unwrap();
        let v = vars(&job);
        assert_eq!(
            v["PREVIEWD_SEED_PROPOSALS_URL"].value.as_deref(),
            Some("http://previewd-proposals.previewd-system.svc:8082")
        );
        let token = v["PREVIEWD_SEED_PROPOSALS_TOKEN"].value.clone().unwrap();
        assert_eq!(
            verify_proposal_token(b"operator key", &token).as_deref(),
            Some("preview-shop-7")
        );
        assert!(
            !v.keys()
                .any(|k| k.contains("OPENAI") || k.starts_with("AI_") || k == "ENABLE_AI"),
            "{:?}",
            v.keys()
        );
        let objects = SeedStage.desired(&input).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].resource.kind, "NetworkPolicy");

        let policy = desired_model_egress(&e, "preview-shop-7", &endpoint(false));
        let spec = policy.spec.unwrap();
        assert_eq!(spec.policy_types, Some(vec!["Egress".to_string()]));
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()["previewd.io/stage"],
            "seed"
        );
        let rule = &spec.egress.unwrap()[0];
        let peer = &rule.to.as_ref().unwrap()[0];
        assert_eq!(
            peer.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "previewd-system"
        );
        assert!(peer.ip_block.is_none());
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8082))
        );
    }

    #[test]
    fn no_endpoint_without_ai_model_or_for_forks_unless_allowed() {
        let c = config(Some(endpoint(false)));
        for (e, why) in [
            (env(false, json!({"enabled": true})), "aiModel unset"),
            (
                env(false, json!({"enabled": true, "aiModel": false})),
                "aiModel false",
            ),
            (env(true, json!({"enabled": true, "aiModel": true})), "fork"),
        ] {
            let input = render(&e, &c);
            let v = vars(&SeedStage.desired_job(&input).unwrap());
            assert!(!v.contains_key("PREVIEWD_SEED_PROPOSALS_TOKEN"), "{why}");
            assert_eq!(SeedStage.desired(&input).unwrap().len(), 1, "{why}");
        }
        let fork = env(true, json!({"enabled": true, "aiModel": true}));
        let allowed = config(Some(endpoint(true)));
        let v = vars(&SeedStage.desired_job(&render(&fork, &allowed)).unwrap());
        assert!(v.contains_key("PREVIEWD_SEED_PROPOSALS_TOKEN"));
        let none = config(None);
        let e = env(false, json!({"enabled": true, "aiModel": true}));
        let v = vars(&SeedStage.desired_job(&render(&e, &none)).unwrap());
        assert!(!v.contains_key("PREVIEWD_SEED_PROPOSALS_URL"));
    }

    #[test]
    fn the_snapshot_source_reaches_the_job_with_credentials_by_reference() {
        let e = env(
            false,
            json!({"enabled": true, "strategy": "production-snapshot", "snapshot": {
                "url": "https://dumps.example.com/shop.sql",
                "credentials": {"name": "dump-token", "key": "authorization"},
                "sha256": "aa".repeat(32)
            }}),
        );
        let c = config(None);
        let v = vars(&SeedStage.desired_job(&render(&e, &c)).unwrap());
        assert_eq!(
            v["PREVIEWD_SEED_SNAPSHOT"].value.as_deref(),
            Some("https://dumps.example.com/shop.sql")
        );
        assert_eq!(
            v["PREVIEWD_SEED_SNAPSHOT_SHA256"].value.as_deref(),
            Some("aa".repeat(32).as_str())
        );
        let auth = &v["PREVIEWD_SEED_SNAPSHOT_AUTHORIZATION"];
        assert_eq!(auth.value, None, "the credential is never inlined");
        let r = auth
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("dump-token", "authorization")
        );
    }
}
