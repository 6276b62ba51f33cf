use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a repository's service images are built: the input of the affected-services rules
/// that read what changed inside compose, skaffold, Helm values and `.env` files,
/// Dockerfiles and `.dockerignore` files. Generate it with
/// `previewd catalogue --from-compose FILE --build-definitions` (the document after `---`).
/// Paths are repository-relative with `/`; `""` is the repository root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinitionsSpec {
    /// One entry per built service.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceBuildSpec>,
}

/// How one catalogue service's image is built.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBuildSpec {
    /// Catalogue service name.
    #[schemars(
        length(min = 1, max = 50),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The compose or skaffold file holding the service's definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub defined_in: Option<String>,
    /// Name of the service (compose) or image (skaffold) inside `definedIn`, when it
    /// differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub key: Option<String>,
    /// Build context directory (`""`: the repository root).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub context: String,
    /// Dockerfile.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub dockerfile: String,
    /// The `.dockerignore` that governs the context, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub dockerignore: Option<String>,
    /// Build arguments as written; a null value is taken from the environment (compose
    /// `args: [NAME]`), so a change to `NAME` in an env file affects the service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100))]
    pub args: BTreeMap<String, Option<String>>,
    /// Build target stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub target: Option<String>,
    /// Variables the definition substitutes (`${VAR}`, `${VAR:-default}`) or passes
    /// through.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    #[schemars(length(max = 200), inner(length(min = 1, max = 255)))]
    pub variables: BTreeSet<String>,
    /// Env files whose variables the definition's file substitutes (the `.env` beside a
    /// compose file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 1024)))]
    pub env_files: Vec<String>,
    /// Image repositories that name this service in Helm values or skaffold files
    /// (`ghcr.io/acme/api`): a changed `image`, `repository` or `tag` next to one of them
    /// affects the service. The catalogue image (without its tag) always counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 512)))]
    pub images: Vec<String>,
}
