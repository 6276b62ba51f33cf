//! Which pull requests get a preview environment: the gating policy of a repository
//! (required label, drafts, forks). Pure values; the webhook applies them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}

/// Which pull requests get an environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatingPolicy {
    /// Only PRs carrying this label get an environment; removing it tears it down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_label: Option<String>,
    /// Skip draft PRs (an environment is torn down when its PR becomes a draft).
    #[serde(default = "default_true")]
    pub skip_drafts: bool,
    /// What to do with PRs from forks.
    #[serde(default)]
    pub forks: ForkPolicy,
    /// Label a maintainer sets to approve a fork PR's current head commit.
    #[serde(default = "GatingPolicy::default_approval_label")]
    pub approval_label: String,
}

impl GatingPolicy {
    fn default_approval_label() -> String {
        "preview/approved".into()
    }
}

impl Default for GatingPolicy {
    fn default() -> Self {
        GatingPolicy {
            required_label: None,
            skip_drafts: true,
            forks: ForkPolicy::default(),
            approval_label: Self::default_approval_label(),
        }
    }
}

/// Policy for pull requests whose head is in another repository.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ForkPolicy {
    /// Fork PRs never get an environment.
    Deny,
    /// Fork PRs get an environment once a maintainer sets the approval label; a new push
    /// needs a new approval.
    #[default]
    RequireApproval,
    /// Fork PRs are treated like any other PR.
    Allow,
}
