//! The plain manifests rendered from the Helm chart (`deploy/manifests/`), applied for
//! real to the local control plane: every object is accepted (schemas, the admission
//! policy's CEL), the operator Deployment rolls out (kwok plays the kubelet) and the
//! webhook and metrics Services select its pods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use previewd_kube::testing::{
    client, delete_namespace, eventually, install_crds, temp_namespace, unique_suffix,
};
use serde_json::{Value, json};
use support::*;

/// The manifest with its namespace replaced by `namespace` and cluster-scoped names made
/// unique with `suffix` (the cluster is shared by concurrent tests).
fn relocate(docs: Vec<Value>, namespace: &str, suffix: &str) -> Vec<Value> {
    let text = serde_json::to_string(&docs).unwrap();
    let text = text
        .replace(
            "system:serviceaccount:previewd-system:",
            &format!("system:serviceaccount:{namespace}:"),
        )
        .replace("'previewd-system'", &format!("'{namespace}'"))
        .replace("\"previewd-system\"", &format!("\"{namespace}\""));
    let docs: Vec<Value> = serde_json::from_str(&text).unwrap();
    docs.into_iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|mut d| {
            let cluster_scoped = matches!(
                d["kind"].as_str(),
                Some(
                    "ClusterRole"
                        | "ClusterRoleBinding"
                        | "ValidatingAdmissionPolicy"
                        | "ValidatingAdmissionPolicyBinding"
                )
            );
            if cluster_scoped {
                let name = format!("{}-{suffix}", d["metadata"]["name"].as_str().unwrap());
                d["metadata"]["name"] = json!(name);
                d["metadata"]["labels"]["previewd.io/test"] = json!("true");
                for key in ["roleRef"] {
                    if let Some(role) = d[key]["name"].as_str() {
                        d[key]["name"] = json!(format!("{role}-{suffix}"));
                    }
                }
                if let Some(policy) = d["spec"]["policyName"].as_str() {
                    d["spec"]["policyName"] = json!(format!("{policy}-{suffix}"));
                }
            }
            d
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_apply_and_roll_out() {
    let admin = client().await;
    install_crds(&admin).await;
    for manifest in ["previewd", "previewd-split-webhook"] {
        let namespace = temp_namespace(&admin, "chart").await;
        let suffix = unique_suffix();
        // The Secret the install expects to exist (the chart refuses to render without one).
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "previewd-github"},
            "stringData": {"webhook-secret": "s3cret", "token": "t0ken"},
        }))
        .unwrap();
        Api::<Secret>::namespaced(admin.clone(), &namespace)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let docs = relocate(rendered(manifest), &namespace, &suffix);
        let mut cluster_objects = Vec::new();
        for doc in &docs {
            apply(&admin, doc).await;
            if doc["metadata"]["namespace"].is_null() {
                cluster_objects.push(doc.clone());
            }
        }
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
        let expected: Vec<String> = docs
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert!(!expected.is_empty());
        for name in &expected {
            eventually(
                Duration::from_secs(90),
                &format!("{manifest}: {name} available"),
                || {
                    let deployments = deployments.clone();
                    let name = name.clone();
                    async move {
                        let d = deployments.get_opt(&name).await.ok().flatten()?;
                        let want = d.spec.as_ref()?.replicas?;
                        (d.status?.available_replicas? >= want).then_some(())
                    }
                },
            )
            .await;
        }
        // The webhook Service selects pods that serve the webhook, in both layouts.
        let endpoints: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(admin.clone(), &namespace);
        eventually(
            Duration::from_secs(60),
            &format!("{manifest}: webhook endpoints"),
            || {
                let endpoints = endpoints.clone();
                async move {
                    let slices = endpoints
                        .list(
                            &kube::api::ListParams::default()
                                .labels("kubernetes.io/service-name=previewd-webhook"),
                        )
                        .await
                        .ok()?;
                    let ready = slices
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                        .count();
                    (ready >= 2).then_some(())
                }
            },
        )
        .await;
        Installed { cluster_objects }.remove(&admin).await;
        delete_namespace(&admin, &namespace).await;
    }
}
