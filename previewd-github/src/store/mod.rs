//! Where the webhook records desired state: the [`EnvironmentStore`] trait, the
//! Kubernetes-backed [`KubeStore`] and the in-memory [`MemoryStore`].
//!
//! The webhook reads the existing environment, decides, and writes with an optimistic
//! precondition (the resourceVersion it read), so a concurrent writer makes the write
//! fail with [`StoreError::Conflict`] and the handler decides again on fresh data.

mod coalesce;
mod kube_store;
mod memory;

use async_trait::async_trait;
use previewd_core::checks::RecordedChecks;
use previewd_kube::crd::{ClosedPullRequest, PreviewEnvironment, PreviewRepository};

use crate::claims::ClaimVerdict;

pub use kube_store::KubeStore;
pub use memory::{MemoryStore, StoreOp};

/// What must hold for a write to go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The object did not exist when it was read. (Server-side apply cannot require
    /// absence; the handler's per-environment lock covers races inside one process.)
    Absent,
    /// The object still has this resourceVersion.
    ResourceVersion(String),
}

/// Why the store could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read; read again and retry.
    #[error("the object changed concurrently")]
    Conflict,
    /// The API server rejected the object as invalid.
    #[error("rejected as invalid: {0}")]
    Invalid(String),
    /// The API server could not be reached, timed out or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Short static category for metrics labels and logs.
    pub const fn category(&self) -> &'static str {
        match self {
            StoreError::Conflict => "conflict",
            StoreError::Invalid(_) => "invalid",
            StoreError::Unavailable(_) => "unavailable",
        }
    }
}

/// Reads repository settings and reads/writes `PreviewEnvironment`s.
#[async_trait]
pub trait EnvironmentStore: Send + Sync + 'static {
    /// Every `PreviewRepository` naming repository `owner/name` (case-insensitive), in
    /// every namespace the store reads settings from. Which one is used is decided by
    /// [`crate::claims::resolve`], never by the store.
    async fn find_repositories(
        &self,
        repository: &str,
    ) -> Result<Vec<PreviewRepository>, StoreError>;

    /// The `PreviewRepository` `namespace/name` as the API server holds it now (not from
    /// a cache): read where a decision rests on its tombstones. The default finds it
    /// among [`EnvironmentStore::find_repositories`] of `repository`.
    async fn read_repository(
        &self,
        namespace: &str,
        name: &str,
        repository: &str,
    ) -> Result<Option<PreviewRepository>, StoreError> {
        Ok(self
            .find_repositories(repository)
            .await?
            .into_iter()
            .find(|r| {
                r.metadata.namespace.as_deref() == Some(namespace)
                    && r.metadata.name.as_deref() == Some(name)
            }))
    }

    /// Records the `Claimed` condition of one `PreviewRepository` in its status.
    async fn record_claim(&self, verdict: &ClaimVerdict) -> Result<(), StoreError>;

    /// Records in `settings`' status that the environment `env_name` was removed by an
    /// event (a tombstone), and drops the `expired` tombstones.
    async fn record_tombstone(
        &self,
        settings: &PreviewRepository,
        env_name: &str,
        tombstone: &ClosedPullRequest,
        expired: &[String],
    ) -> Result<(), StoreError>;

    /// The environment `namespace/name`, if it exists.
    async fn get_environment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError>;

    /// The environment `namespace/name` as the API server holds it now (not from a
    /// cache): read after a write failed with a conflict. The default is
    /// [`EnvironmentStore::get_environment`].
    async fn read_environment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError> {
        self.get_environment(namespace, name).await
    }

    /// Server-side applies `env` (field manager `previewd`, forced) if `precondition`
    /// still holds.
    async fn apply_environment(
        &self,
        env: &PreviewEnvironment,
        precondition: &Precondition,
    ) -> Result<(), StoreError>;

    /// Sets the PR-command annotations of the environment `namespace/name` if it still
    /// has `resource_version`: afterwards, of the keys in
    /// [`previewd_kube::crd::COMMAND_ANNOTATIONS`], exactly those in `annotations` are set
    /// by the commands (server-side apply with field manager `previewd-commands`, so the
    /// webhook's apply of a push neither owns nor removes them).
    async fn apply_command_annotations(
        &self,
        _namespace: &str,
        _name: &str,
        _annotations: &std::collections::BTreeMap<String, String>,
        _resource_version: &str,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(
            "this store does not record PR commands".into(),
        ))
    }

    /// Deletes the environment if it still has `resource_version`; `Ok(false)` when it
    /// was already gone.
    async fn delete_environment(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
    ) -> Result<bool, StoreError>;

    /// Environments in `namespace` rendered for `repository` (`owner/name`,
    /// case-insensitive) whose head commit is `sha`.
    async fn environments_at(
        &self,
        namespace: &str,
        repository: &str,
        sha: &str,
    ) -> Result<Vec<PreviewEnvironment>, StoreError> {
        let _ = (namespace, repository, sha);
        Err(StoreError::Unavailable(
            "this store does not record checks".into(),
        ))
    }

    /// Writes `checks` into the environment's `previewd.io/checks` annotation if it still
    /// has `resource_version` (else [`StoreError::Conflict`]).
    async fn record_checks(
        &self,
        namespace: &str,
        name: &str,
        checks: &RecordedChecks,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        let _ = (namespace, name, checks, resource_version);
        Err(StoreError::Unavailable(
            "this store does not record checks".into(),
        ))
    }

    /// The store can serve requests (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
