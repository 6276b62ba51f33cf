//! Secrets by reference: copies of Secrets from the operator's secret source namespace
//! in an environment's namespace.
//!
//! Only Secrets labelled [`LABEL_PREVIEW_SECRET`]` = "true"` are copied, so that a Secret
//! that happens to live in the source namespace (the operator's own credentials, say,
//! when the source is the operator's namespace) can never be named into a preview. The
//! names come from the `PreviewRepository` alone, never from a pull request.
//!
//! A source Secret also says who may receive it: [`ANNOTATION_ALLOWED_REPOSITORIES`]
//! (repository patterns: `owner/name`, `owner/*`, `*`) and
//! [`ANNOTATION_ALLOWED_NAMESPACES`] (the namespaces whose claims may name it). A copy
//! is made only for an environment authorised for a matching repository, in a matching
//! namespace when that annotation is set; a Secret with neither annotation is copied to
//! nobody. The platform team, which owns the source namespace, decides; a tenant naming
//! another team's Secret gets a refusal naming the annotation.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::namespace::child_meta;
use crate::crd::PreviewEnvironment;

/// Label a Secret of the source namespace must carry (value `"true"`) to be copied.
pub const LABEL_PREVIEW_SECRET: &str = "previewd.io/preview-secret";
/// Annotation on a copy naming its source, `namespace/name`.
pub const ANNOTATION_COPIED_FROM: &str = "previewd.io/copied-from";

/// Annotation on a source Secret: the repositories (patterns `owner/name`, `owner/*` or
/// `*`, separated by commas) whose environments may receive a copy.
pub const ANNOTATION_ALLOWED_REPOSITORIES: &str = "previewd.io/allowed-repositories";
/// Annotation on a source Secret: the namespaces (comma-separated) whose environments
/// may receive a copy; when set, both annotations must allow the environment.
pub const ANNOTATION_ALLOWED_NAMESPACES: &str = "previewd.io/allowed-namespaces";

/// Whether a source Secret may be copied.
pub fn copyable(source: &Secret) -> bool {
    source
        .labels()
        .get(LABEL_PREVIEW_SECRET)
        .map(String::as_str)
        == Some("true")
}

/// Whether the source Secret's owner lets an environment of `repository` in
/// `namespace` receive it; `Err` says why not.
pub fn may_receive(source: &Secret, repository: &str, namespace: &str) -> Result<(), String> {
    let annotations = source.annotations();
    let repositories = annotations.get(ANNOTATION_ALLOWED_REPOSITORIES);
    let namespaces = annotations.get(ANNOTATION_ALLOWED_NAMESPACES);
    if repositories.is_none() && namespaces.is_none() {
        return Err(format!(
            "Secret {} names no receiver: annotate it with {ANNOTATION_ALLOWED_REPOSITORIES} (and optionally {ANNOTATION_ALLOWED_NAMESPACES})",
            source.name_any()
        ));
    }
    if let Some(patterns) = repositories {
        let allowed = previewd_core::tenancy::RepositoryPatterns::parse(patterns).map_err(|e| {
            format!(
                "Secret {}: {ANNOTATION_ALLOWED_REPOSITORIES}: {e}",
                source.name_any()
            )
        })?;
        if !allowed.matches(repository) {
            return Err(format!(
                "Secret {} may not be copied for {repository} ({ANNOTATION_ALLOWED_REPOSITORIES}: {allowed})",
                source.name_any()
            ));
        }
    }
    if let Some(list) = namespaces
        && !list
            .split(|c: char| c == ',' || c.is_whitespace())
            .any(|ns| ns == namespace)
    {
        return Err(format!(
            "Secret {} may not be copied for namespace {namespace} ({ANNOTATION_ALLOWED_NAMESPACES}: {list})",
            source.name_any()
        ));
    }
    Ok(())
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

    #[test]
    fn a_secret_goes_only_where_its_owner_says() {
        let secret = |annotations: serde_json::Value| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "previewd-secrets",
                    "labels": {LABEL_PREVIEW_SECRET: "true"}, "annotations": annotations}
            }))
            .unwrap()
        };
        let none = secret(json!({}));
        assert!(
            may_receive(&none, "acme/shop", "team")
                .unwrap_err()
                .contains("names no receiver")
        );
        let repos = secret(json!({ANNOTATION_ALLOWED_REPOSITORIES: "acme/shop, acme-labs/*"}));
        assert!(may_receive(&repos, "ACME/shop", "team").is_ok());
        assert!(may_receive(&repos, "acme-labs/x", "anyone").is_ok());
        let e = may_receive(&repos, "acme/web", "team").unwrap_err();
        assert!(e.contains("may not be copied for acme/web"), "{e}");
        let both = secret(json!({ANNOTATION_ALLOWED_REPOSITORIES: "acme/*",
            ANNOTATION_ALLOWED_NAMESPACES: "team-a,team-b"}));
        assert!(may_receive(&both, "acme/shop", "team-b").is_ok());
        assert!(
            may_receive(&both, "acme/shop", "attacker")
                .unwrap_err()
                .contains("namespace attacker")
        );
        let only_ns = secret(json!({ANNOTATION_ALLOWED_NAMESPACES: "team-a"}));
        assert!(may_receive(&only_ns, "any/repo", "team-a").is_ok());
        assert!(may_receive(&only_ns, "any/repo", "team-c").is_err());
        let bad = secret(json!({ANNOTATION_ALLOWED_REPOSITORIES: "acme"}));
        assert!(may_receive(&bad, "acme/shop", "team").is_err());
    }
}
