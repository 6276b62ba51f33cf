//! Secrets by reference: copies of Secrets from the operator's secret source namespace
//! in an environment's namespace.
//!
//! Only Secrets labelled [`LABEL_PREVIEW_SECRET`]` = "true"` are copied, so that a Secret
//! that happens to live in the source namespace (the operator's own credentials, say,
//! when the source is the operator's namespace) can never be named into a preview. The
//! names come from the `PreviewRepository` alone, never from a pull request.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::namespace::child_meta;
use crate::crd::PreviewEnvironment;

/// Label a Secret of the source namespace must carry (value `"true"`) to be copied.
pub const LABEL_PREVIEW_SECRET: &str = "previewd.io/preview-secret";
/// Annotation on a copy naming its source, `namespace/name`.
pub const ANNOTATION_COPIED_FROM: &str = "previewd.io/copied-from";

/// Whether a source Secret may be copied.
pub fn copyable(source: &Secret) -> bool {
    source
        .labels()
        .get(LABEL_PREVIEW_SECRET)
        .map(String::as_str)
        == Some("true")
}

/// The copy of `source` in `namespace`: same name, type and data, the environment's
/// labels, and an annotation naming the source. Neither the source's labels and
/// annotations nor `immutable` are copied (a copy must follow later changes).
pub fn desired_secret_copy(env: &PreviewEnvironment, namespace: &str, source: &Secret) -> Secret {
    let mut metadata = child_meta(env, namespace, &source.name_any());
    metadata.annotations = Some(
        [(
            ANNOTATION_COPIED_FROM.to_string(),
            format!(
                "{}/{}",
                source.namespace().unwrap_or_default(),
                source.name_any()
            ),
        )]
        .into(),
    );
    Secret {
        metadata,
        type_: source.type_.clone(),
        data: source.data.clone(),
        string_data: None,
        immutable: None,
    }
}

/// The version of a source a copy was made from: its resourceVersion, which changes with
/// every write (and is recorded in the environment's status instead of any digest of the
/// secret's content).
pub fn source_version(source: &Secret) -> String {
    source.resource_version().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn copies_carry_data_and_the_environment_labels_only() {
        let env: PreviewEnvironment = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567"}
        }))
        .unwrap();
        let source: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "previewd-secrets", "resourceVersion": "42",
                "labels": {LABEL_PREVIEW_SECRET: "true", "team": "x"},
                "annotations": {"note": "x"}},
            "type": "kubernetes.io/basic-auth", "immutable": true,
            "data": {"username": "cHJldmlldw=="}
        }))
        .unwrap();
        assert!(copyable(&source));
        let copy = desired_secret_copy(&env, "preview-7-b", &source);
        let v = serde_json::to_value(&copy).unwrap();
        assert_eq!(v["metadata"]["namespace"], "preview-7-b");
        assert_eq!(v["metadata"]["name"], "db");
        assert_eq!(v["metadata"]["labels"]["previewd.io/env"], "shop-pr-7");
        assert!(v["metadata"]["labels"].get("team").is_none());
        assert!(v["metadata"]["labels"].get(LABEL_PREVIEW_SECRET).is_none());
        assert_eq!(
            v["metadata"]["annotations"],
            json!({ANNOTATION_COPIED_FROM: "previewd-secrets/db"})
        );
        assert_eq!(v["type"], "kubernetes.io/basic-auth");
        assert_eq!(v["data"]["username"], "cHJldmlldw==");
        assert!(v.get("immutable").is_none());
        assert_eq!(source_version(&source), "42");
        let mut unlabelled = source.clone();
        unlabelled.labels_mut().remove(LABEL_PREVIEW_SECRET);
        assert!(!copyable(&unlabelled));
    }
}
