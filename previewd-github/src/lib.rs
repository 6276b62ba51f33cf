//! GitHub integration for previewd.
//!
//! - [`webhook`]: the webhook server. It verifies `X-Hub-Signature-256` over the raw
//!   body, maps `pull_request` deliveries through the repository's gating policy
//!   ([`policy`]) and server-side applies (or deletes) the `PreviewEnvironment` rendered
//!   from the repository's `PreviewRepository` settings, through an [`store::EnvironmentStore`].
//! - [`client`]: the REST client implementing
//!   [`previewd_core::source_control::SourceControl`]: pull requests, changed files,
//!   diffs, commit statuses, deployments and the sticky PR comment, with token or GitHub
//!   App authentication and GitHub's rate-limit rules.
//! - [`comment`]: the pure renderer of the sticky comment's body.
//! - [`command`]: PR commands (`/preview extend`, `sleep`, `wake`, ...): parsing; the
//!   webhook records them on the environment.
//! - [`permission`]: who is a maintainer (runs commands, approves forks): the actor's
//!   permission on the repository as GitHub's collaborator permission API answers it.

pub mod approval;
pub mod ci;
#[cfg(feature = "kube")]
pub mod claims;
pub mod client;
pub mod command;
#[cfg(feature = "kube")]
pub mod command_record;
pub mod comment;
#[cfg(feature = "kube")]
pub mod decision;
pub mod event;
#[cfg(feature = "kube")]
pub mod fuzz_targets;
pub mod metrics;
pub mod permission;
pub mod policy;
pub mod reporter;
pub mod signature;
#[cfg(feature = "kube")]
pub mod store;
#[cfg(feature = "kube")]
pub mod webhook;

pub use client::{AppCredentials, ClientConfig, GitHubAuth, GitHubClient, GitHubError};
pub use reporter::GitHubReporter;
#[cfg(feature = "kube")]
pub use store::{EnvironmentStore, KubeStore, MemoryStore, Precondition, StoreError};
#[cfg(feature = "kube")]
pub use webhook::{ServeLimits, WebhookConfig, WebhookState, router, serve, serve_with_limits};

/// At most 64 characters of untrusted text for a message.
pub(crate) fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}
