//! Repository settings of the `argocd` deploy strategy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How previewd hands an environment to Argo CD: one Argo CD `Application` per service
/// (when `path` contains `{service}`) or one for the whole environment, at the head
/// commit, synced automatically into the environment's namespace.
///
/// Where the Applications live, which cluster they deploy to and the Argo CD project
/// that confines them are the platform's settings (`--argocd-namespace`,
/// `--argocd-destination-server`; previewd writes one AppProject per environment), never
/// a repository's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgoCdSettings {
    /// Git repository of the manifests (`spec.source.repoURL`): the claimed repository
    /// itself (`https://github.com/<owner>/<name>[.git]`), or one the platform allows
    /// (`--argocd-source-repos`).
    #[schemars(length(min = 1, max = 512))]
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    /// Directory of the manifests in that repository. `{service}` is replaced by each
    /// service's name and gives one Application per service; without it, one
    /// Application deploys the whole environment.
    #[schemars(length(min = 1, max = 512))]
    pub path: String,
    /// Revision to deploy. Default: the pull request's head commit (a push changes it).
    /// Set it only when the manifests live in another repository than the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub target_revision: Option<String>,
    /// How the manifests are rendered, and so how the pull request's images are set.
    #[serde(default)]
    pub tool: ArgoCdTool,
    /// Helm settings (with `tool: Helm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<ArgoCdHelm>,
}

/// How the manifests are rendered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ArgoCdTool {
    /// A kustomization; each service's image is overridden with a Kustomize `images`
    /// entry `<repository>=<image>` (the manifests name the image by its repository).
    #[default]
    Kustomize,
    /// A Helm chart; each service's image is set with Helm parameters.
    Helm,
}

/// Helm settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgoCdHelm {
    /// Values files, relative to the chart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub value_files: Vec<String>,
    /// Parameter that takes the image repository (`{service}` is replaced by the
    /// service's name; required in it when one Application deploys several services).
    #[serde(default = "default_repository_parameter")]
    #[schemars(length(min = 1, max = 253))]
    pub image_repository_parameter: String,
    /// Parameter that takes the image tag (or digest), like the repository parameter.
    #[serde(default = "default_tag_parameter")]
    #[schemars(length(min = 1, max = 253))]
    pub image_tag_parameter: String,
}

impl Default for ArgoCdHelm {
    fn default() -> Self {
        ArgoCdHelm {
            value_files: Vec::new(),
            image_repository_parameter: default_repository_parameter(),
            image_tag_parameter: default_tag_parameter(),
        }
    }
}

fn default_repository_parameter() -> String {
    "image.repository".into()
}

fn default_tag_parameter() -> String {
    "image.tag".into()
}
