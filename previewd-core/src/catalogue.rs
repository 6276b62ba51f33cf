//! The service catalogue of a repository: which services exist, how they are deployed,
//! and which repository paths each one is built from.
//!
//! The catalogue is trusted configuration owned by platform engineers (it lives in the
//! `PreviewRepository` resource); nothing in it comes from a pull request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tier::Tier;

/// One deployable service of a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueService {
    /// Service name, a DNS-1123 label (it names the Deployment and Service).
    #[schemars(
        length(min = 1, max = 50),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Image template. `{{number}}`, `{{sha}}`, `{{shortSha}}`, `{{branch}}` and `{{service}}`
    /// are replaced, e.g. `ghcr.io/acme/auth:pr-{{number}}`; any other variable, and a
    /// brace outside a variable, is refused.
    #[schemars(schema_with = "crate::image_template::schema")]
    pub image: String,
    /// Container and Service port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Replicas in a preview environment.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// Repository-relative inputs of the service: directory prefixes ending in `/`,
    /// single files, or globs (`*`, `?`, `[...]`, `**`). A change to any of them affects
    /// the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Repository-relative globs excluded from `paths` (for example what a
    /// `.dockerignore` drops). Exclusions win over `paths`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_paths: Vec<String>,
    /// Names of catalogue services this service depends on: when one of them is
    /// affected, this service is affected too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Declared resource tier; the environment runs at the largest tier among its services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// HTTP path prefix on the environment's host (default `/<name>`; one service may use `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_path: Option<String>,
    /// Deploy this service in every environment, affected or not (databases, gateways).
    #[serde(default)]
    pub always_deploy: bool,
}

fn default_port() -> i32 {
    8080
}

fn default_replicas() -> i32 {
    1
}

/// The services of one repository, plus paths that affect every service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCatalogue {
    /// The services; names are unique (in a CRD this is a list map keyed by name, so the
    /// API server rejects duplicates).
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<CatalogueService>,
    /// Repository-relative paths or globs shared by every service (lockfiles, shared
    /// protos, base images): a change to one affects all services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_paths: Vec<String>,
}

impl ServiceCatalogue {
    /// Looks a service up by name.
    pub fn get(&self, name: &str) -> Option<&CatalogueService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Service names in catalogue order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| s.name.as_str())
    }
}
