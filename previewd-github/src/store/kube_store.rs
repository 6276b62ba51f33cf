//! [`EnvironmentStore`] on the Kubernetes API: server-side apply with field manager
//! `previewd` (forced), resourceVersion preconditions, settings looked up by listing
//! `PreviewRepository` objects; claim conditions and tombstones are merge patches of the
//! `PreviewRepository` status subresource.

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use previewd_core::checks::RecordedChecks;
use previewd_kube::crd::{
    ANNOTATION_CHECKS, COMMAND_FIELD_MANAGER, CONDITION_CLAIMED, ClosedPullRequest, FIELD_MANAGER,
    PreviewEnvironment, PreviewRepository,
};
use serde_json::json;

use super::coalesce::Coalescer;
use super::{EnvironmentStore, Precondition, StoreError};
use crate::claims::ClaimVerdict;

/// Kubernetes-backed store.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    settings_namespace: Option<String>,
    tombstones: Arc<Coalescer>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("settings_namespace", &self.settings_namespace)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store that looks for `PreviewRepository` settings in `settings_namespace`, or in
    /// every namespace when `None`. Environments are written to the namespace of the
    /// settings they are rendered from.
    pub fn new(client: Client, settings_namespace: Option<String>) -> Self {
        KubeStore {
            client,
            settings_namespace,
            tombstones: Arc::new(Coalescer::default()),
        }
    }

    fn repositories(&self) -> Api<PreviewRepository> {
        match &self.settings_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

fn map_error(err: kube::Error) -> StoreError {
    match err {
        kube::Error::Api(status) => match status.code {
            409 => StoreError::Conflict,
            400 | 422 => StoreError::Invalid(status.message.clone()),
            code => {
                StoreError::Unavailable(format!("API server answered {code}: {}", status.message))
            }
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl EnvironmentStore for KubeStore {
    async fn find_repositories(
        &self,
        repository: &str,
    ) -> Result<Vec<PreviewRepository>, StoreError> {
        let list = self
            .repositories()
            .list(&ListParams::default())
            .await
            .map_err(map_error)?;
        Ok(list
            .items
            .into_iter()
            .filter(|r| r.spec.repository.eq_ignore_ascii_case(repository))
            .collect())
    }

    async fn record_claim(&self, verdict: &ClaimVerdict) -> Result<(), StoreError> {
        let api: Api<PreviewRepository> = Api::namespaced(self.client.clone(), &verdict.namespace);
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": CONDITION_CLAIMED,
                    "status": if verdict.claimed { "True" } else { "False" },
                    "reason": verdict.reason,
                    "message": verdict.message,
                    "lastTransitionTime": jiff::Timestamp::now().to_string(),
                }]
            }
        });
        match api
            .patch_status(
                &verdict.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing to record.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(map_error(err)),
        }
    }

    async fn record_tombstone(
        &self,
        settings: &PreviewRepository,
        env_name: &str,
        tombstone: &ClosedPullRequest,
        expired: &[String],
    ) -> Result<(), StoreError> {
        let namespace = settings
            .metadata
            .namespace
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("PreviewRepository has no namespace".into()))?;
        let api: Api<PreviewRepository> = Api::namespaced(self.client.clone(), namespace);
        // A merge patch of map entries: concurrent tombstones of other pull requests
        // never overwrite each other, and those written at once share one patch.
        let mut closed = serde_json::Map::new();
        for name in expired {
            closed.insert(name.clone(), serde_json::Value::Null);
        }
        closed.insert(
            env_name.to_string(),
            serde_json::to_value(tombstone).map_err(|e| StoreError::Invalid(e.to_string()))?,
        );
        let name = settings.name_any();
        let key = format!("{namespace}/{name}");
        self.tombstones
            .submit(&key, closed, |closed| async move {
                let patch = json!({ "status": { "closedPullRequests": closed } });
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(map_error)
            })
            .await
    }

    async fn get_environment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(map_error)
    }

    async fn apply_environment(
        &self,
        env: &PreviewEnvironment,
        precondition: &Precondition,
    ) -> Result<(), StoreError> {
        let namespace = env
            .metadata
            .namespace
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("environment has no namespace".into()))?;
        let name = env
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("environment has no name".into()))?;
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let mut body = env.clone();
        body.status = None;
        body.metadata.managed_fields = None;
        body.metadata.resource_version = match precondition {
            Precondition::ResourceVersion(rv) => Some(rv.clone()),
            Precondition::Absent => None,
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(map_error)
    }

    async fn apply_command_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: &std::collections::BTreeMap<String, String>,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let body = json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": resource_version,
                "annotations": annotations,
            },
        });
        let params = PatchParams::apply(COMMAND_FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(map_error)
    }

    async fn delete_environment(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
    ) -> Result<bool, StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(map_error(err)),
        }
    }

    async fn environments_at(
        &self,
        namespace: &str,
        repository: &str,
        sha: &str,
    ) -> Result<Vec<PreviewEnvironment>, StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await.map_err(map_error)?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| {
                e.spec.repository.eq_ignore_ascii_case(repository) && e.spec.head_sha == sha
            })
            .collect())
    }

    async fn record_checks(
        &self,
        namespace: &str,
        name: &str,
        checks: &RecordedChecks,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let value =
            serde_json::to_string(checks).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // The resourceVersion makes the merge patch fail with a conflict when another
        // delivery recorded a check meanwhile; the handler reads again and merges.
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": { ANNOTATION_CHECKS: value },
            }
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing to record.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(map_error(err)),
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.repositories()
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(map_error)
    }
}
