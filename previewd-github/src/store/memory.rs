//! An in-memory [`EnvironmentStore`] that keeps objects in a map and records every write.
//! Used by tests, the load example and embedders that want to see what the webhook
//! would do without a cluster.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use previewd_core::checks::RecordedChecks;
use previewd_kube::crd::{
    ANNOTATION_CHECKS, COMMAND_ANNOTATIONS, CONDITION_CLAIMED, ClosedPullRequest,
    PreviewEnvironment, PreviewRepository,
};

use crate::claims::ClaimVerdict;

use super::{EnvironmentStore, Precondition, StoreError};

/// One write the store performed.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// An environment was applied (the object as written).
    Applied(Box<PreviewEnvironment>),
    /// An environment was deleted.
    Deleted {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

#[derive(Default)]
struct State {
    repositories: Vec<PreviewRepository>,
    environments: BTreeMap<(String, String), PreviewEnvironment>,
    ops: Vec<StoreOp>,
}

/// In-memory store. Resource versions are a global counter, like the API server's.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    version: AtomicU64,
    unavailable: AtomicBool,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding these repository settings.
    pub fn with_repositories(repositories: Vec<PreviewRepository>) -> Self {
        let store = Self::default();
        store.lock().repositories = repositories;
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces repository settings.
    pub fn put_repository(&self, repository: PreviewRepository) {
        let mut state = self.lock();
        state.repositories.retain(|r| {
            r.metadata.name != repository.metadata.name
                || r.metadata.namespace != repository.metadata.namespace
        });
        state.repositories.push(repository);
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (an API server outage).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Every write so far, in order.
    pub fn ops(&self) -> Vec<StoreOp> {
        self.lock().ops.clone()
    }

    /// Number of writes so far.
    pub fn write_count(&self) -> usize {
        self.lock().ops.len()
    }

    /// Current repository settings (with the status the webhook recorded).
    pub fn repositories(&self) -> Vec<PreviewRepository> {
        self.lock().repositories.clone()
    }

    /// Current environments.
    pub fn environments(&self) -> Vec<PreviewEnvironment> {
        self.lock().environments.values().cloned().collect()
    }

    /// Puts an environment directly (a pre-existing object), without recording a write.
    pub fn seed_environment(&self, mut env: PreviewEnvironment) {
        env.metadata.resource_version = Some(self.next_version());
        let key = key_of(&env);
        self.lock().environments.insert(key, env);
    }

    fn next_version(&self) -> String {
        (self.version.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }

    fn check_available(&self) -> Result<(), StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("store marked unavailable".into()))
        } else {
            Ok(())
        }
    }
}

fn key_of(env: &PreviewEnvironment) -> (String, String) {
    (
        env.metadata.namespace.clone().unwrap_or_default(),
        env.metadata.name.clone().unwrap_or_default(),
    )
}

#[async_trait]
impl EnvironmentStore for MemoryStore {
    async fn find_repositories(
        &self,
        repository: &str,
    ) -> Result<Vec<PreviewRepository>, StoreError> {
        self.check_available()?;
        Ok(self
            .lock()
            .repositories
            .iter()
            .filter(|r| r.spec.repository.eq_ignore_ascii_case(repository))
            .cloned()
            .collect())
    }

    async fn record_claim(&self, verdict: &ClaimVerdict) -> Result<(), StoreError> {
        self.check_available()?;
        let mut state = self.lock();
        let Some(repo) = state.repositories.iter_mut().find(|r| {
            r.metadata.namespace.as_deref() == Some(verdict.namespace.as_str())
                && r.metadata.name.as_deref() == Some(verdict.name.as_str())
        }) else {
            return Ok(());
        };
        let status = repo.status.get_or_insert_with(Default::default);
        status.conditions.retain(|c| c.type_ != CONDITION_CLAIMED);
        status.conditions.push(Condition {
            type_: CONDITION_CLAIMED.into(),
            status: if verdict.claimed { "True" } else { "False" }.into(),
            reason: verdict.reason.into(),
            message: verdict.message.clone(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            ),
            observed_generation: None,
        });
        Ok(())
    }

    async fn record_tombstone(
        &self,
        settings: &PreviewRepository,
        env_name: &str,
        tombstone: &ClosedPullRequest,
        expired: &[String],
    ) -> Result<(), StoreError> {
        self.check_available()?;
        let mut state = self.lock();
        let Some(repo) = state.repositories.iter_mut().find(|r| {
            r.metadata.namespace == settings.metadata.namespace
                && r.metadata.name == settings.metadata.name
        }) else {
            return Err(StoreError::Unavailable(
                "repository settings are gone".into(),
            ));
        };
        let status = repo.status.get_or_insert_with(Default::default);
        for name in expired {
            status.closed_pull_requests.remove(name);
        }
        status
            .closed_pull_requests
            .insert(env_name.to_string(), tombstone.clone());
        Ok(())
    }

    async fn get_environment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError> {
        self.check_available()?;
        Ok(self
            .lock()
            .environments
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }

    async fn apply_environment(
        &self,
        env: &PreviewEnvironment,
        precondition: &Precondition,
    ) -> Result<(), StoreError> {
        self.check_available()?;
        if env.metadata.name.is_none() || env.metadata.namespace.is_none() {
            return Err(StoreError::Invalid(
                "name and namespace are required".into(),
            ));
        }
        let version = self.next_version();
        let mut state = self.lock();
        let key = key_of(env);
        let current = state
            .environments
            .get(&key)
            .and_then(|e| e.metadata.resource_version.clone());
        match (precondition, &current) {
            (Precondition::ResourceVersion(expected), Some(actual)) if expected == actual => {}
            (Precondition::ResourceVersion(_), _) => return Err(StoreError::Conflict),
            (Precondition::Absent, Some(_)) => return Err(StoreError::Conflict),
            (Precondition::Absent, None) => {}
        }
        let mut stored = env.clone();
        stored.metadata.resource_version = Some(version);
        if let Some(old) = state.environments.get(&key) {
            stored.status = old.status.clone();
            stored.metadata.finalizers = old.metadata.finalizers.clone();
            // The PR commands' annotations belong to another field manager.
            let kept: Vec<(String, String)> = old
                .metadata
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| COMMAND_ANNOTATIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !kept.is_empty() {
                stored
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .extend(kept);
            }
        }
        state.environments.insert(key, stored);
        state.ops.push(StoreOp::Applied(Box::new(env.clone())));
        Ok(())
    }

    async fn apply_command_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        self.check_available()?;
        let version = self.next_version();
        let mut state = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let Some(env) = state.environments.get_mut(&key) else {
            return Err(StoreError::Conflict);
        };
        if env.metadata.resource_version.as_deref() != Some(resource_version) {
            return Err(StoreError::Conflict);
        }
        let current = env
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        current.retain(|k, _| !COMMAND_ANNOTATIONS.contains(&k.as_str()));
        current.extend(
            annotations
                .iter()
                .filter(|(k, _)| COMMAND_ANNOTATIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env.metadata.resource_version = Some(version);
        let written = env.clone();
        state.ops.push(StoreOp::Applied(Box::new(written)));
        Ok(())
    }

    async fn delete_environment(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
    ) -> Result<bool, StoreError> {
        self.check_available()?;
        let mut state = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let Some(current) = state.environments.get(&key) else {
            return Ok(false);
        };
        if current.metadata.resource_version.as_deref() != Some(resource_version) {
            return Err(StoreError::Conflict);
        }
        state.environments.remove(&key);
        state.ops.push(StoreOp::Deleted {
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
        Ok(true)
    }

    async fn environments_at(
        &self,
        namespace: &str,
        repository: &str,
        sha: &str,
    ) -> Result<Vec<PreviewEnvironment>, StoreError> {
        self.check_available()?;
        Ok(self
            .lock()
            .environments
            .values()
            .filter(|e| {
                e.metadata.namespace.as_deref() == Some(namespace)
                    && e.spec.repository.eq_ignore_ascii_case(repository)
                    && e.spec.head_sha == sha
            })
            .cloned()
            .collect())
    }

    async fn record_checks(
        &self,
        namespace: &str,
        name: &str,
        checks: &RecordedChecks,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        self.check_available()?;
        let value =
            serde_json::to_string(checks).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let version = self.next_version();
        let mut state = self.lock();
        let Some(env) = state
            .environments
            .get_mut(&(namespace.to_string(), name.to_string()))
        else {
            return Ok(());
        };
        if env.metadata.resource_version.as_deref() != Some(resource_version) {
            return Err(StoreError::Conflict);
        }
        env.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_CHECKS.to_string(), value);
        env.metadata.resource_version = Some(version);
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.check_available()
    }
}
