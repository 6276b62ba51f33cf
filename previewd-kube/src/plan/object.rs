//! Desired and observed objects as the planner sees them: kind-agnostic, so that every
//! deploy strategy and stage (typed catalogue objects, templated manifests, Argo CD
//! applications, an embedder's own kinds) goes through one apply and one prune path.

use std::collections::BTreeMap;
use std::fmt;

use kube::Resource;
use kube::core::ApiResource;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::children::ANNOTATION_APPLIED_HASH;

/// Key of a dynamic kind (`apiVersion/kind`), e.g. in the caches' table of kinds and in
/// [`super::Observed::missing_kinds`].
pub fn kind_key(api_version: &str, kind: &str) -> String {
    format!("{api_version}/{kind}")
}

/// Identifies a child object inside the environment's namespace (or a cluster-scoped
/// object when `namespaced` is false, which only the Namespace itself is).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildKey {
    /// `group/version`, or `version` for the core group.
    pub api_version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Object name.
    pub name: String,
}

impl ChildKey {
    /// Key of an object of kind `K` named `name`.
    pub fn of<K: Resource<DynamicType = ()>>(name: &str) -> ChildKey {
        ChildKey {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ChildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// One object the plan wants to exist, ready for server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredObject {
    /// What kind of resource it is (for the API path).
    pub resource: ApiResource,
    /// Its namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The object, with the desired-state hash annotation stamped.
    pub object: serde_json::Value,
    /// Hash of the desired state (also in the `previewd.io/applied-hash` annotation).
    pub hash: String,
    /// Apply order: lower waves first; within a wave, the order of the list.
    pub wave: i32,
    /// A fingerprint of the fields a person is likely to change by hand (replicas,
    /// images, environment); compared with the live object's to put drift back.
    pub fingerprint: Option<String>,
}

/// A desired object could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise {kind} {name}: {source}")]
pub struct ObjectError {
    kind: String,
    name: String,
    #[source]
    source: serde_json::Error,
}

impl DesiredObject {
    /// Builds a desired object from a typed Kubernetes object (its name and namespace
    /// are taken from its metadata).
    pub fn from_typed<K>(obj: &K) -> Result<DesiredObject, ObjectError>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let mut value = serde_json::to_value(obj).map_err(|source| ObjectError {
            kind: resource.kind.clone(),
            name: obj.meta().name.clone().unwrap_or_default(),
            source,
        })?;
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), resource.api_version.clone().into());
            map.insert("kind".into(), resource.kind.clone().into());
        }
        Ok(Self::from_value(resource, value))
    }

    /// Builds a desired object from its JSON form (which must carry `metadata.name`).
    pub fn from_value(resource: ApiResource, mut value: serde_json::Value) -> DesiredObject {
        strip_nulls(&mut value);
        let hash = hash_of(&value);
        let fingerprint = fingerprint(&resource.kind, &value);
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let namespace = value
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .map(str::to_string);
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(ANNOTATION_APPLIED_HASH.into(), hash.clone().into());
            }
        }
        DesiredObject {
            resource,
            namespace,
            name,
            object: value,
            hash,
            wave: 0,
            fingerprint,
        }
    }

    /// The same object in another apply wave.
    pub fn in_wave(mut self, wave: i32) -> DesiredObject {
        self.wave = wave;
        self
    }

    /// The object placed in `namespace` with `labels` added (labels it already has
    /// win): what the planner does to every object a strategy or stage renders, so that
    /// the watches see it, map it to its environment and prune it. An object that names
    /// another namespace is refused.
    pub fn scoped_to(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<DesiredObject, String> {
        if let Some(other) = self.namespace.as_deref().filter(|ns| *ns != namespace) {
            return Err(format!(
                "{} {} names namespace {other:?}; objects may only go to the environment's namespace {namespace:?}",
                self.resource.kind, self.name
            ));
        }
        let mut value = self.object.clone();
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            if let Some(a) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
                a.remove(ANNOTATION_APPLIED_HASH);
                if a.is_empty() {
                    meta.remove("annotations");
                }
            }
            meta.insert("namespace".into(), namespace.into());
            let existing = meta
                .entry("labels")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(l) = existing.as_object_mut() {
                for (k, v) in labels {
                    l.entry(k.clone()).or_insert_with(|| v.clone().into());
                }
            }
        }
        Ok(DesiredObject::from_value(self.resource.clone(), value).in_wave(self.wave))
    }

    /// The object kept in its own namespace (a strategy's external namespace, e.g. Argo
    /// CD's) with `labels` added and the environment's UID in `owner_annotation`: the
    /// mark without which previewd never prunes or deletes an object there.
    pub fn marked_external(
        &self,
        labels: &BTreeMap<String, String>,
        owner_annotation: &str,
        owner_uid: &str,
    ) -> DesiredObject {
        let mut value = self.object.clone();
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.remove(ANNOTATION_APPLIED_HASH);
                a.insert(owner_annotation.into(), owner_uid.into());
            }
            let existing = meta
                .entry("labels")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(l) = existing.as_object_mut() {
                for (k, v) in labels {
                    l.insert(k.clone(), v.clone().into());
                }
            }
        }
        DesiredObject::from_value(self.resource.clone(), value).in_wave(self.wave)
    }

    /// Its key.
    pub fn key(&self) -> ChildKey {
        ChildKey {
            api_version: self.resource.api_version.clone(),
            kind: self.resource.kind.clone(),
            name: self.name.clone(),
        }
    }
}

/// An object the plan wants gone.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildRef {
    /// What kind of resource it is.
    pub resource: ApiResource,
    /// Its namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

/// What the caches hold about one child: enough to decide whether to apply or prune it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedChild {
    /// The desired-state hash it was last applied with.
    pub applied_hash: Option<String>,
    /// A deletion is in progress.
    pub deleting: bool,
    /// Fingerprint of its hand-editable fields (see [`DesiredObject::fingerprint`]).
    pub fingerprint: Option<String>,
}

/// Hash of an object's desired state.
pub fn hash_of(value: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// Removes `null` members, which server-side apply would read as "unset this field".
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The fields of a workload that people change by hand (`kubectl scale`, `kubectl set
/// image`, `kubectl set env`): replicas and each container's name, image and
/// environment. Defaulted fields are left out so that the live object's fingerprint
/// equals the desired one's until somebody edits it.
pub fn fingerprint(kind: &str, value: &serde_json::Value) -> Option<String> {
    if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
        return None;
    }
    let replicas = value
        .pointer("/spec/replicas")
        .cloned()
        .unwrap_or(serde_json::Value::from(1));
    let containers: Vec<serde_json::Value> = value
        .pointer("/spec/template/spec/containers")
        .and_then(|c| c.as_array())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let env: BTreeMap<String, serde_json::Value> = c
                        .get("env")
                        .and_then(|e| e.as_array())
                        .map(|vars| {
                            vars.iter()
                                .filter_map(|v| {
                                    let name = v.get("name")?.as_str()?.to_string();
                                    let value = v.get("value").cloned().unwrap_or_default();
                                    Some((name, value))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    serde_json::json!({
                        "name": c.get("name"),
                        "image": c.get("image"),
                        "env": env,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let kind_replicas = if kind == "DaemonSet" {
        serde_json::Value::Null
    } else {
        replicas
    };
    Some(hash_of(
        &serde_json::json!({"replicas": kind_replicas, "containers": containers}),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    #[test]
    fn typed_objects_carry_kind_hash_and_no_nulls() {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("settings".into()),
                namespace: Some("preview-1-main".into()),
                ..ObjectMeta::default()
            },
            data: Some([("a".to_string(), "b".to_string())].into()),
            ..ConfigMap::default()
        };
        let d = DesiredObject::from_typed(&cm).unwrap();
        assert_eq!(d.object["kind"], "ConfigMap");
        assert_eq!(d.object["apiVersion"], "v1");
        assert_eq!(d.name, "settings");
        assert_eq!(d.namespace.as_deref(), Some("preview-1-main"));
        assert_eq!(
            d.object["metadata"]["annotations"][ANNOTATION_APPLIED_HASH],
            d.hash.as_str()
        );
        assert!(d.object.get("binaryData").is_none(), "nulls are stripped");
        assert_eq!(d.key(), ChildKey::of::<ConfigMap>("settings"));
        // Same input, same hash; another input, another hash.
        assert_eq!(DesiredObject::from_typed(&cm).unwrap().hash, d.hash);
        let mut other = cm.clone();
        other.data = Some([("a".to_string(), "c".to_string())].into());
        assert_ne!(DesiredObject::from_typed(&other).unwrap().hash, d.hash);
    }

    #[test]
    fn fingerprints_see_hand_edits_but_not_defaults() {
        let desired = serde_json::json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "api", "image": "api:1", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let live_defaulted = serde_json::json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "api", "image": "api:1", "imagePullPolicy": "Always",
             "terminationMessagePath": "/dev/termination-log", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let scaled = serde_json::json!({"spec": {"replicas": 0, "template": {"spec": {"containers": [
            {"name": "api", "image": "api:1", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let reimaged = serde_json::json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "api", "image": "evil:1", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let f = |v| fingerprint("Deployment", v).unwrap();
        assert_eq!(f(&desired), f(&live_defaulted));
        assert_ne!(f(&desired), f(&scaled));
        assert_ne!(f(&desired), f(&reimaged));
        assert_eq!(fingerprint("ConfigMap", &desired), None);
    }
}
