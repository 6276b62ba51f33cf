// The derive repeats `type_ = ...` across printer columns, which the lint misreads.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use previewd_core::checks::RequiredCheck;
use previewd_core::{Money, Phase, Tier, Ttl, TtlChoice};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of one preview environment: a pull request's services, running in a
/// namespace of their own until the PR closes or the TTL expires.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "previewd.io",
    version = "v1alpha1",
    kind = "PreviewEnvironment",
    plural = "previewenvironments",
    singular = "previewenvironment",
    shortname = "pe",
    category = "previewd",
    namespaced,
    status = "PreviewEnvironmentStatus",
    derive = "PartialEq",
    doc = "A short-lived, isolated environment for one pull request.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "PR", type_ = "integer", json_path = ".spec.prNumber"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    // An expiry lies in the future, and kubectl prints a future `date` column as
    // `<invalid>`: the column is the exact UTC time (`previewd list` says how long is left).
    printcolumn(
        name = "Expires",
        type_ = "string",
        format = "date-time",
        json_path = ".status.expiresAt",
        description = "When the environment is deleted (UTC)"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters")
)]
#[serde(rename_all = "camelCase")]
pub struct PreviewEnvironmentSpec {
    /// Repository as `owner/name`. Immutable.
    #[schemars(
        length(min = 3, max = 140),
        regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("repository is immutable"))]
    pub repository: String,
    /// Pull request number. Immutable.
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("prNumber is immutable"))]
    pub pr_number: i64,
    /// Head branch of the pull request (any name GitHub allows).
    #[schemars(length(min = 1, max = 255))]
    pub branch: String,
    /// Head commit to deploy.
    #[serde(rename = "headSHA")]
    #[schemars(regex(pattern = r"^[0-9a-f]{7,64}$"))]
    pub head_sha: String,
    /// Base branch the PR merges into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub base_branch: Option<String>,
    /// Login of the PR's author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub author: Option<String>,
    /// Name of the `PreviewRepository` (same namespace) this environment was rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<String>,
    /// Deploy strategy by name (`catalogue`, `manifests`, `argocd`, or one an embedding
    /// operator registers). Default: the repository's, else the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub strategy: Option<String>,
    /// Services to deploy. Names are unique (a list map keyed by name: the API server
    /// rejects duplicates).
    #[serde(default)]
    #[schemars(length(max = 50))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceSpec>,
    /// Deploy every service (`All`), or only those the change affects (`Affected`, decided
    /// by the advisor once per head commit and recorded in `status.ai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selection: Option<crate::crd::DeployPolicy>,
    /// Synthetic test data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_data: Option<TestDataSpec>,
    /// Tests run against the environment once it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsSpec>,
    /// Size of the environment.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Time to live, e.g. `4h`, `30m`, `7d`, `1w`, or `auto`: the lifespan predictor's
    /// answer for this PR (`status.ai.predictedTtl`, from the repository's history),
    /// never past `maxLifespan`, and 4h until there is one. Default 4h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<TtlChoice>,
    /// Renew the TTL from the last activity (push or PR command) instead of from creation.
    #[serde(default)]
    pub auto_extend: bool,
    /// Hard cap on the environment's life, counted from creation, that no extension and
    /// no opt-out label escapes. Default 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifespan: Option<Ttl>,
    /// Spending limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_budget: Option<CostBudget>,
    /// HTTP exposure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Namespace quota; defaults are cpu 2, memory 4Gi, storage 10Gi, 5 PVCs, 20 pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Checks the head commit must pass before it is deployed (check runs, commit status
    /// contexts or GitHub Apps' check suites, by name; with `app`, only that GitHub App's
    /// check runs and suites count); meanwhile the environment waits with reason
    /// `WaitingForChecks`, and a failed one fails it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub required_checks: Vec<RequiredCheck>,
}

/// One service of the environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service name, a DNS-1123 label; names the Deployment and the Service.
    #[schemars(
        length(min = 1, max = 50),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Container image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Container and Service port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Replicas.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// HTTP path prefix on the environment host (default `/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9/._~-]*$"))]
    pub ingress_path: Option<String>,
    /// Extra environment variables for the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The container's own requests and limits; what is not stated comes from the tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ServiceResources>,
}

fn default_port() -> i32 {
    8080
}

fn default_replicas() -> i32 {
    1
}

/// How test data is produced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TestDataStrategy {
    /// Generated from the database schema, reproducible from the seed.
    #[default]
    Synthetic,
    /// Restores an anonymised dump the platform team provides (never a live production
    /// connection).
    ProductionSnapshot,
    /// Only the tables named in `counts`, plus the parent rows their required foreign
    /// keys need.
    Minimal,
}

/// Synthetic test data settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestDataSpec {
    /// Seed the environment's database.
    #[serde(default)]
    pub enabled: bool,
    /// Strategy: `synthetic` (every table, generated from the schema, reproducible from
    /// the seed), `production-snapshot` (restores the anonymised dump the platform team
    /// provides) or `minimal` (only the tables in `counts`, plus the parent rows their
    /// required foreign keys need).
    #[serde(default)]
    pub strategy: TestDataStrategy,
    /// Let a model propose values for text columns and rows for small lookup tables
    /// (`true`), validated against the schema before use; without it, or without a model
    /// configured on the operator, the heuristics alone decide. The seed Job reaches the
    /// operator's model only through the operator's internal endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_model: Option<bool>,
    /// Rows to generate per table (table name → count); tables not listed get `defaultRows`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, i64>,
    /// Rows per table when not listed in `counts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub default_rows: Option<i64>,
    /// Seed of the generator; the same seed gives the same data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
    /// Secret in the environment's namespace holding the database URL the seed job
    /// connects with (given to it as `DATABASE_URL`). Default: Secret `preview-database`,
    /// key `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_secret: Option<SecretKeyRef>,
    /// The anonymised dump `production-snapshot` restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSpec>,
}

/// Where a `production-snapshot` dump comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// https URL of the dump (plain SQL or `pg_dump -Fc`); plain http is refused.
    #[schemars(length(min = 9, max = 2048), regex(pattern = r"^https://[^\s]+$"))]
    pub url: String,
    /// Secret in the environment's namespace whose key holds the `Authorization` header
    /// value sent with the download (e.g. `Bearer ...`). It reaches the namespace like every
    /// other copied Secret (the repository's `spec.secrets`, under the same claim rules;
    /// a fork's environment gets none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretKeyRef>,
    /// Expected SHA-256 of the dump, in hex (`sha256:` prefix allowed); a mismatch
    /// refuses the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
}

/// A key of a Secret in the environment's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl Default for SecretKeyRef {
    fn default() -> Self {
        SecretKeyRef {
            name: "preview-database".into(),
            key: "url".into(),
        }
    }
}

/// How tests are selected.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TestSelector {
    /// Every test.
    #[default]
    All,
    /// Tests mapped from the changed files, plus the smoke set.
    ChangedFiles,
    /// Changed-files, ranked and trimmed by the model within a budget; smoke set always kept.
    AiSmart,
}

/// Test run settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestsSpec {
    /// Run tests once the environment is ready.
    #[serde(default)]
    pub enabled: bool,
    /// Format of the runner's results, which selects the parser `previewd test-summary`
    /// uses (given to the Job as `PREVIEWD_TEST_FRAMEWORK`): `junit` (JUnit XML, the
    /// default), `go` (`go test -json`), `pytest` (pytest's JSON report) or `jest`
    /// (`jest --json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<previewd_core::testrun::TestFramework>,
    /// Test runner image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Selection strategy: `all`, `changed-files` (the inventory entries the rules map
    /// the PR's changed files to, the smoke set and changed test files) or `ai-smart`
    /// (those ranked by the model and trimmed to `selection.budget`; the `changed-files`
    /// answer on any model error). The controller computes the selection once per head
    /// commit, records it in `status.testSelection` and passes it to the runner as
    /// `PREVIEWD_TESTS` (docs/TESTS.md).
    #[serde(default)]
    pub selector: TestSelector,
    /// Inventory, mapping rules, smoke set and budget of `changed-files` and `ai-smart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<previewd_core::testselect::TestSelectionSpec>,
    /// Limit on the test run, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Ttl>,
    /// Parallel test workers, given to the runner as `PREVIEWD_TEST_WORKERS` (one pod
    /// runs the tests; the runner spreads them over this many workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub parallel: Option<i32>,
    /// Entrypoint of the runner container (default: the image's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// Arguments of the runner container (default: the image's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,
}

/// Size of the environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// Resource tier of every container (requests and limits) that does not state its
    /// own `resources`; `auto` applies the tier advisor's recommendation
    /// (`status.ai.recommendedTier`, `small` until there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierChoice>,
    /// Allow spot nodes; used only when the expected lifespan is under 4h.
    #[serde(default)]
    pub use_spot: bool,
}

/// A tier, or `auto` for the tier advisor's recommendation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TierChoice {
    /// 100m CPU, 256Mi memory.
    Minimal,
    /// 250m CPU, 512Mi memory (the default).
    #[default]
    Small,
    /// 500m CPU, 1Gi memory.
    Medium,
    /// 1 CPU, 2Gi memory.
    Large,
    /// The tier advisor's recommendation.
    Auto,
}

impl From<Tier> for TierChoice {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Minimal => TierChoice::Minimal,
            Tier::Small => TierChoice::Small,
            Tier::Medium => TierChoice::Medium,
            Tier::Large => TierChoice::Large,
        }
    }
}

impl TierChoice {
    /// The tier to run: the chosen one, or for `auto` the recommendation (`small` without
    /// one).
    pub fn resolve(self, recommended: Option<Tier>) -> Tier {
        match self {
            TierChoice::Minimal => Tier::Minimal,
            TierChoice::Small => Tier::Small,
            TierChoice::Medium => Tier::Medium,
            TierChoice::Large => Tier::Large,
            TierChoice::Auto => recommended.unwrap_or_default(),
        }
    }
}

/// Requests and limits a service states for its container (Kubernetes quantities); what
/// it leaves out comes from the tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResources {
    /// Requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<CpuMemory>,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CpuMemory>,
}

/// CPU and memory quantities.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuMemory {
    /// CPU, e.g. `250m`, `1`, `1.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "previewd_core::cost::quantity_schema")]
    pub cpu: Option<String>,
    /// Memory, e.g. `512Mi`, `1Gi`, `1G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "previewd_core::cost::quantity_schema")]
    pub memory: Option<String>,
}

/// Spending limits, e.g. `$5.00`, and what happens when one is exceeded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostBudget {
    /// When a limit is exceeded: `warn` (condition `BudgetExceeded`, a Warning event, a
    /// line in the PR comment), `sleep` (also scale every workload to zero, keeping the
    /// namespace and volumes, until the budget allows it again) or `delete` (also delete
    /// the environment). An environment whose estimate already exceeds a limit is not
    /// created, whatever the policy.
    #[serde(default)]
    pub policy: previewd_core::BudgetPolicy,
    /// Limit on the estimated daily cost of the environment as specified (its desired
    /// workloads and volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<Money>,
    /// Limit on the total cost over the environment's life (`status.costs.actualToDate`;
    /// at creation, the estimate over the TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Money>,
}

/// HTTP exposure of the environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Create an Ingress.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Host; default `pr-<number>.<baseDomain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::host_schema")]
    pub host: Option<String>,
    /// Serve TLS with a certificate from cert-manager.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// IngressClass name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// cert-manager ClusterIssuer; default is the operator's `--cert-issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_issuer: Option<String>,
}

impl Default for IngressSpec {
    fn default() -> Self {
        IngressSpec {
            enabled: true,
            host: None,
            tls: true,
            class_name: None,
            cluster_issuer: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// ResourceQuota of the environment's namespace (Kubernetes quantities).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// `requests.cpu`.
    #[serde(default = "QuotaSpec::default_cpu")]
    #[schemars(schema_with = "previewd_core::cost::quantity_schema")]
    pub cpu: String,
    /// `requests.memory`.
    #[serde(default = "QuotaSpec::default_memory")]
    #[schemars(schema_with = "previewd_core::cost::quantity_schema")]
    pub memory: String,
    /// `requests.storage`.
    #[serde(default = "QuotaSpec::default_storage")]
    #[schemars(schema_with = "previewd_core::cost::quantity_schema")]
    pub storage: String,
    /// `persistentvolumeclaims`.
    #[serde(default = "QuotaSpec::default_pvcs")]
    #[schemars(range(min = 0, max = 1000))]
    pub persistent_volume_claims: i32,
    /// `pods`.
    #[serde(default = "QuotaSpec::default_pods")]
    #[schemars(range(min = 1, max = 1000))]
    pub pods: i32,
}

impl QuotaSpec {
    fn default_cpu() -> String {
        "2".into()
    }
    fn default_memory() -> String {
        "4Gi".into()
    }
    fn default_storage() -> String {
        "10Gi".into()
    }
    fn default_pvcs() -> i32 {
        5
    }
    fn default_pods() -> i32 {
        20
    }
}

impl Default for QuotaSpec {
    fn default() -> Self {
        QuotaSpec {
            cpu: Self::default_cpu(),
            memory: Self::default_memory(),
            storage: Self::default_storage(),
            persistent_volume_claims: Self::default_pvcs(),
            pods: Self::default_pods(),
        }
    }
}

/// Observed state, written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewEnvironmentStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Main URL of the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// URL of each service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub urls: BTreeMap<String, String>,
    /// Namespace holding the environment's workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Public host of the environment, once chosen (unique across environments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Head commit currently deployed.
    #[serde(
        default,
        rename = "deployedSHA",
        skip_serializing_if = "Option::is_none"
    )]
    pub deployed_sha: Option<String>,
    /// Human-readable summary of the current state or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Test results of the head commit (or of the run in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestSummary>,
    /// Outcome of seeding the database with test data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_data: Option<TestDataStatus>,
    /// Tests selected for the head commit (with `advisedSHA`) and why; what the test
    /// runner receives as `PREVIEWD_TESTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_selection: Option<previewd_core::testselect::TestSelectionStatus>,
    /// Cost estimate and spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<CostStatus>,
    /// What the AI engine decided, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiStatus>,
    /// Services deployed when `serviceSelection` is `Affected` (absent: every service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_services: Option<Vec<String>>,
    /// Head commit the `ai` advice was computed for.
    #[serde(
        default,
        rename = "advisedSHA",
        skip_serializing_if = "Option::is_none"
    )]
    pub advised_sha: Option<String>,
    /// Secrets copied into the namespace from the operator's secret source namespace: the
    /// source's resourceVersion each copy was made from, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copied_secrets: BTreeMap<String, String>,
    /// Standard conditions: Ready, Reconciling, Stalled, NamespaceReady, ServicesDeployed,
    /// TestsCompleted, Sleeping, ExpiringSoon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the controller first saw the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// When the environment first became ready for its current head commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Time>,
    /// When the environment expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When deletion started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Time>,
    /// When provisioning of the current head commit started (readiness deadline base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_since: Option<Time>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The value of the `previewd.io/retry` annotation last acted on: a new value retries
    /// a Failed environment once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Token of the last `/preview redeploy` or `/preview retry` acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_for: Option<String>,
    /// Id of the PR comment whose command answer was last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_command: Option<String>,
    /// A report to the source-control system (commit status, deployment, PR comment)
    /// that is not confirmed delivered yet: it is sent again after an operator restart
    /// and removed once delivered. Set only when a reporter confirms deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_report: Option<String>,
}

/// Summary of one test run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSummary {
    /// Tests run.
    pub total: i64,
    /// Passed.
    pub passed: i64,
    /// Failed.
    pub failed: i64,
    /// Skipped.
    pub skipped: i64,
    /// Names of failed tests (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tests: Vec<String>,
    /// Failed tests with the reason (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<previewd_core::testrun::TestFailure>,
    /// Failed tests the runner left out of its summary to fit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted_failures: Option<i64>,
    /// Wall time of the run in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Head commit the run tested.
    #[serde(default, rename = "sha", skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// `Running`, `Passed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the run failed when it gave no results (timeout, crash, malformed summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How tests were selected (`all`, `changed-files`, `ai-smart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Name of the test Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Outcome of seeding the environment's database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestDataStatus {
    /// `Running`, `Seeded` or `Failed`.
    pub state: String,
    /// Head commit the data was seeded for.
    #[serde(default, rename = "sha", skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// Tables filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<i64>,
    /// Rows loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    /// Wall time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Why seeding failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Name of the seed Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// What the model proposed for the data and what passed validation (`aiModel: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposals: Option<previewd_core::testrun::ProposalSummary>,
}

/// Cost estimate and spend, priced from what runs (the environment's pods and volumes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostStatus {
    /// Estimated cost per hour of what runs now (the rate accrued since `lastAccruedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<Money>,
    /// `hourly × 24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_daily: Option<Money>,
    /// `hourly × 730`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<Money>,
    /// Spend since creation up to `lastAccruedAt`: the hourly rate integrated between
    /// observations (exact to the micro-dollar, rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_to_date: Option<Money>,
    /// The instant `actualToDate` covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accrued_at: Option<Time>,
    /// Spend below a micro-dollar not yet in `actualToDate`, in 1/3600 micro-dollars
    /// (kept so that the sum stays exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3599))]
    pub accrual_carry: Option<i64>,
    /// The hourly estimate by category (adds up to `hourly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<CostBreakdown>,
}

/// Cost by category.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostBreakdown {
    /// CPU and memory.
    pub compute: Money,
    /// Persistent volumes.
    pub storage: Money,
    /// Network egress and load balancers.
    pub network: Money,
}

/// What the AI engine decided (defined in `previewd-core`).
pub use previewd_core::environment::AiStatus;

/// Condition types written by the controller.
pub mod condition {
    /// The environment is serving its current head commit.
    pub const READY: &str = "Ready";
    /// The controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// Progress stopped and needs a change of spec or a human.
    pub const STALLED: &str = "Stalled";
    /// The namespace and its guard rails exist.
    pub const NAMESPACE_READY: &str = "NamespaceReady";
    /// Every service's Deployment is available.
    pub const SERVICES_DEPLOYED: &str = "ServicesDeployed";
    /// The test run finished.
    pub const TESTS_COMPLETED: &str = "TestsCompleted";
    /// A cost budget is exceeded (`True`), or not (`False`, reason `WithinBudget` or
    /// `BudgetWarning` from 80% of a limit).
    pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";
    /// The environment's database holds its test data.
    pub const DATA_SEEDED: &str = "DataSeeded";
    /// Workloads are scaled to zero (idle, on request or over budget); the reason says
    /// which, the message since when and how to wake it.
    pub const SLEEPING: &str = "Sleeping";
    /// The environment will be deleted within the expiry warning time.
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    /// A fork's environment is planned without the repository's Secrets and egress.
    pub const FORK_RESTRICTED: &str = "ForkRestricted";

    /// Every condition type the controller writes. A test drives the planner to each
    /// of them, so a new type without a test fails the suite.
    pub const ALL: [&str; 11] = [
        READY,
        RECONCILING,
        STALLED,
        NAMESPACE_READY,
        SERVICES_DEPLOYED,
        TESTS_COMPLETED,
        BUDGET_EXCEEDED,
        DATA_SEEDED,
        SLEEPING,
        EXPIRING_SOON,
        FORK_RESTRICTED,
    ];
}
