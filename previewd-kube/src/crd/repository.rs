// The derive repeats `type_ = ...` across printer columns, which the lint misreads.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use previewd_core::checks::RequiredCheck;
use previewd_core::{ServiceCatalogue, Ttl, TtlChoice};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    ArgoCdSettings, BuildDefinitionsSpec, CostBudget, EgressRule, ManifestTemplate, QuotaSpec,
    SecretReference, TestDataSpec, TestsSpec,
};

/// Trusted per-repository settings from which pull-request webhooks render
/// `PreviewEnvironment`s. Owned by platform engineers; a pull request cannot change it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "previewd.io",
    version = "v1alpha1",
    kind = "PreviewRepository",
    plural = "previewrepositories",
    singular = "previewrepository",
    shortname = "prepo",
    category = "previewd",
    namespaced,
    status = "PreviewRepositoryStatus",
    derive = "PartialEq",
    doc = "Trusted preview settings of one GitHub repository.",
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repository"),
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.baseDomain"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PreviewRepositorySpec {
    /// Repository as `owner/name`. Immutable.
    #[schemars(
        length(min = 3, max = 140),
        regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("repository is immutable"))]
    pub repository: String,
    /// Services, their image templates and the paths they are built from.
    pub catalogue: ServiceCatalogue,
    /// How the catalogue's images are built (compose or skaffold file, context,
    /// Dockerfile, `.dockerignore`, build arguments, env files, image names). With it,
    /// affected-service detection reads what changed inside shared build files (a compose
    /// entry, an env variable a build substitutes, a Dockerfile, an ignore rule, an image
    /// in Helm values) instead of matching their paths only. Generate it with `previewd
    /// catalogue --from-compose FILE --build-definitions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_definitions: Option<BuildDefinitionsSpec>,
    /// Which services an environment deploys.
    #[serde(default)]
    pub deploy: DeployPolicy,
    /// Deploy strategy of the repository's environments by name (`catalogue`,
    /// `manifests`, `argocd`, or one an embedding operator registers). Default: the
    /// operator's default (`catalogue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub strategy: Option<String>,
    /// Base domain; environments are served at `pr-<number>.<baseDomain>`.
    #[schemars(schema_with = "crate::crd::base_domain_schema")]
    pub base_domain: String,
    /// IngressClass name for environments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Serve environments over TLS (cert-manager).
    #[serde(default = "default_true")]
    pub tls: bool,
    /// cert-manager ClusterIssuer; default is the operator's `--cert-issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_issuer: Option<String>,
    /// Default TTL of environments (`spec.ttl`), or `auto` for the lifespan predictor's
    /// answer. Default 4h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<TtlChoice>,
    /// Hard cap on any environment's life. Default 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifespan: Option<Ttl>,
    /// Renew the TTL on every push.
    #[serde(default = "default_true")]
    pub auto_extend: bool,
    /// Default resource tier when no service declares one; `auto`: every environment
    /// takes the tier advisor's recommendation (the largest tier its affected services
    /// declare, raised by the usage this repository's environments recorded), with the
    /// reason in the environment's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<crate::crd::TierChoice>,
    /// Allow spot nodes for short-lived environments.
    #[serde(default)]
    pub use_spot: bool,
    /// Namespace quota of each environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Spending limits of each environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_budget: Option<CostBudget>,
    /// Which pull requests get an environment.
    #[serde(default)]
    pub gating: GatingPolicy,
    /// Tests run in each environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsSpec>,
    /// Test data seeded into each environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_data: Option<TestDataSpec>,
    /// Templated objects applied into each environment's namespace by the `manifests`
    /// strategy, besides the catalogue's Deployments and Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub manifests: Vec<ManifestTemplate>,
    /// Apply wave of the catalogue's Deployments and Services under the `manifests`
    /// strategy (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -100, max = 100))]
    pub catalogue_wave: Option<i32>,
    /// Secrets of the operator's secret source namespace copied into each environment's
    /// namespace and kept in sync. Never copied for pull requests from forks (label
    /// `previewd.io/fork`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub secrets: Vec<SecretReference>,
    /// Destinations the environments' pods may reach besides DNS and their own namespace.
    /// Not granted to pull requests from forks (label `previewd.io/fork`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub egress: Vec<EgressRule>,
    /// Settings of the `argocd` deploy strategy: Argo CD deploys the environment from
    /// the repository's own manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argocd: Option<ArgoCdSettings>,
    /// Checks a head commit must pass before it is deployed: names of check runs,
    /// commit status contexts, or GitHub Apps whose check suite must pass. With `app`
    /// (a GitHub App id), only that App's check runs and suites satisfy the check, never
    /// a commit status or another App's check run of the same name (a pull request's own
    /// workflow can publish either). Empty: deploy at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub required_checks: Vec<RequiredCheck>,
}

fn default_true() -> bool {
    true
}

/// Which services an environment deploys.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeployPolicy {
    /// Every catalogue service.
    #[default]
    All,
    /// Services the change affects, their dependents and `alwaysDeploy` services; every
    /// service when the change cannot be read.
    Affected,
}

pub use previewd_core::gating::{ForkPolicy, GatingPolicy};

/// Observed state of a repository's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewRepositoryStatus {
    /// `Claimed`: whether these settings are the one binding of the repository (written by
    /// the webhook; `False` with reason `Conflict` when another object claims the same
    /// repository, or `NotAllowed` when the platform's claim policy does not let this
    /// namespace claim it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pull requests closed recently, by environment name: the `updated_at` of the close,
    /// so a late or replayed event for a closed pull request cannot bring its environment
    /// back, across restarts of the webhook. Entries expire after a retention period.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub closed_pull_requests: BTreeMap<String, ClosedPullRequest>,
}

/// A recorded close of a pull request (a tombstone).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClosedPullRequest {
    /// `updated_at` of the event that removed the environment, RFC 3339.
    pub updated_at: String,
    /// GitHub delivery id of that event.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delivery: String,
}

/// Condition type on `PreviewRepository`: the object is the repository's binding.
pub const CONDITION_CLAIMED: &str = "Claimed";
