//! Child resources of a `PreviewEnvironment`, one module per kind. Each exposes a pure
//! `desired_*` function; [`apply`] writes an object with server-side apply only when its
//! desired state changed.

pub mod httproute;
pub mod ingress;
pub mod namespace;
pub mod secrets;
pub mod waker;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::crd::{
    FIELD_MANAGER, LABEL_ENV, LABEL_MANAGED_BY, LABEL_PR, LABEL_REPO, MANAGED_BY,
    PreviewEnvironment,
};
use crate::render::repo_label_value;

/// Annotation holding the hash of the desired state last applied to a child.
pub const ANNOTATION_APPLIED_HASH: &str = "previewd.io/applied-hash";
/// Label holding the namespace of the owning `PreviewEnvironment`.
pub const LABEL_ENV_NAMESPACE: &str = "previewd.io/env-namespace";

/// Labels every child carries: which environment, PR and repository it belongs to.
pub fn common_labels(env: &PreviewEnvironment) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_ENV.to_string(), env.name_any());
    labels.insert(
        LABEL_ENV_NAMESPACE.to_string(),
        env.namespace().unwrap_or_default(),
    );
    labels.insert(LABEL_PR.to_string(), env.spec.pr_number.to_string());
    labels.insert(
        LABEL_REPO.to_string(),
        repo_label_value(&env.spec.repository),
    );
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    labels
}

/// Hash of an object's desired state (its JSON form), stored on the object so that an
/// unchanged object is never written again.
pub fn desired_hash<K: Serialize>(obj: &K) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..12])
}

/// Stamps the desired-state hash annotation on an object.
pub fn with_hash<K: Resource + Serialize>(mut obj: K) -> K {
    let hash = desired_hash(&obj);
    obj.annotations_mut()
        .insert(ANNOTATION_APPLIED_HASH.to_string(), hash);
    obj
}

/// Outcome of [`apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The live object already matched; nothing was written.
    Unchanged,
    /// The object was created or updated.
    Written,
}

/// Server-side applies `desired` (field manager `previewd`, forced) unless the live object
/// (`live`, as read by the caller) carries the same desired-state hash.
pub async fn apply<K>(api: &Api<K>, desired: K, live: Option<&K>) -> Result<Applied, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let desired = with_hash(desired);
    let want = desired.annotations().get(ANNOTATION_APPLIED_HASH);
    if let Some(live) = live {
        let have = live.annotations().get(ANNOTATION_APPLIED_HASH);
        if have.is_some() && have == want && live.meta().deletion_timestamp.is_none() {
            return Ok(Applied::Unchanged);
        }
    }
    let name = desired.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&desired)).await?;
    Ok(Applied::Written)
}

/// Reads the live object named like `desired` and applies `desired` when it changed.
/// Returns what happened and the live object as read (before the apply).
pub async fn ensure<K>(api: &Api<K>, desired: K) -> Result<(Applied, Option<K>), crate::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let name = desired.name_any();
    let live = api
        .get_opt(&name)
        .await
        .map_err(|source| crate::Error::Kube {
            action: format!("get {kind} {name}"),
            source,
        })?;
    let applied =
        apply(api, desired, live.as_ref())
            .await
            .map_err(|source| crate::Error::Kube {
                action: format!("apply {kind} {name}"),
                source,
            })?;
    Ok((applied, live))
}

/// Deletes an object; an object already gone is not an error. Returns whether this call
/// deleted it.
pub async fn delete_if_present<K>(
    api: &Api<K>,
    name: &str,
    params: &kube::api::DeleteParams,
) -> Result<bool, crate::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(source) => Err(crate::Error::Kube {
            action: format!("delete {} {name}", K::kind(&K::DynamicType::default())),
            source,
        }),
    }
}
