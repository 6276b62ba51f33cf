//! Least privilege of the install with the manifests strategy and Secrets by reference
//! (`deploy/manifests/previewd-manifests.yaml`): the operator reads Secrets in the secret
//! source namespace only, and an environment with templated manifests and a copied
//! Secret runs its whole life (copy, update, removal, teardown) under exactly the shipped
//! roles and admission policy, authenticated as a ServiceAccount token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use previewd_core::Phase;
use previewd_kube::controller::Context;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::render::{PullRequestSnapshot, render_environment};
use previewd_kube::strategy::ManifestsStrategy;
use previewd_kube::strategy::manifests::ManifestKinds;
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
    unique_suffix,
};
use serde_json::{Value, json};
use support::*;

const SA: &str = "previewd";
const TIMEOUT: Duration = Duration::from_secs(90);

fn verbs_on_secrets(doc: &Value) -> BTreeSet<String> {
    let mut verbs = BTreeSet::new();
    for rule in doc["rules"].as_array().unwrap() {
        let resources = rule["resources"].as_array().unwrap();
        if rule["apiGroups"].as_array().unwrap().contains(&json!(""))
            && resources.contains(&json!("secrets"))
        {
            for v in rule["verbs"].as_array().unwrap() {
                verbs.insert(v.as_str().unwrap().to_string());
            }
        }
    }
    verbs
}

#[test]
fn secrets_are_read_in_the_source_namespace_only() {
    let docs = rendered("previewd-manifests");
    let mut readers = Vec::new();
    for doc in &docs {
        if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        let verbs = verbs_on_secrets(doc);
        if verbs.is_empty() {
            continue;
        }
        let name = doc["metadata"]["name"].as_str().unwrap();
        if doc["kind"] == "ClusterRole" {
            assert_eq!(name, "previewd-controller");
            assert_eq!(
                verbs,
                BTreeSet::from(["create".into(), "patch".into(), "delete".into()]),
                "copies are written, never read, outside the source namespace"
            );
        } else {
            assert_eq!(doc["metadata"]["namespace"], "previewd-secrets");
            assert_eq!(verbs, BTreeSet::from(["list".into(), "watch".into()]));
            readers.push(name.to_string());
        }
    }
    assert_eq!(readers, ["previewd-secret-source"]);
    // The controller is bound to the source Role.
    let binding = document(&docs, "RoleBinding", "previewd-secret-source");
    assert_eq!(binding["metadata"]["namespace"], "previewd-secrets");
    assert_eq!(binding["subjects"][0]["name"], SA);
    // The operator is told the same list of kinds the role grants.
    let deployment = document(&docs, "Deployment", "previewd");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    assert_eq!(
        value("PREVIEWD_SECRET_NAMESPACE").as_deref(),
        Some("previewd-secrets")
    );
    let kinds = value("PREVIEWD_MANIFEST_KINDS").unwrap();
    let allowed = ManifestKinds::builtin_list(&kinds).unwrap();
    let rules = document(&docs, "ClusterRole", "previewd-controller");
    for kind in allowed.watched() {
        let (group, plural) = (kind.resource.group.clone(), kind.resource.plural.clone());
        let granted: BTreeSet<String> = rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["apiGroups"].as_array().unwrap().contains(&json!(group))
                    && r["resources"].as_array().unwrap().contains(&json!(plural))
            })
            .flat_map(|r| r["verbs"].as_array().unwrap().clone())
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for verb in ["list", "watch", "create", "patch", "delete"] {
            assert!(
                granted.contains(verb),
                "{verb} {group}/{plural} is not granted"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_and_secret_copies_run_under_the_shipped_roles() {
    let admin = client().await;
    install_crds(&admin).await;
    let home = temp_namespace(&admin, "rbac-mf-home").await;
    let team = temp_namespace(&admin, "rbac-mf-team").await;
    let source = temp_namespace(&admin, "rbac-mf-secrets").await;
    service_account(&admin, &home, SA).await;
    let suffix = unique_suffix();
    let docs = rendered("previewd-manifests");
    let shipped = ShippedRbac {
        controller_role: document(&docs, "ClusterRole", "previewd-controller"),
        webhook_role: document(&docs, "ClusterRole", "previewd-webhook"),
        lease_role: document(&docs, "Role", "previewd-leader-election"),
        policy: document(&docs, "ValidatingAdmissionPolicy", "previewd-confine"),
        policy_binding: document(
            &docs,
            "ValidatingAdmissionPolicyBinding",
            "previewd-confine",
        ),
    };
    let name = format!("previewd-rbac-mf-{suffix}");
    let mut installed =
        install_cluster_role(&admin, &name, &shipped.controller_rules(), &home, SA).await;
    installed.extend(install_policy(&admin, &shipped, &name, &home, SA).await);
    // The source Role and its binding, as shipped, moved to this test's namespaces.
    let mut role = document(&docs, "Role", "previewd-secret-source");
    role["metadata"]["namespace"] = json!(source);
    let mut binding = document(&docs, "RoleBinding", "previewd-secret-source");
    binding["metadata"]["namespace"] = json!(source);
    binding["subjects"][0]["namespace"] = json!(home);
    apply(&admin, &role).await;
    apply(&admin, &binding).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db", "labels": {"previewd.io/preview-secret": "true"},
                     "annotations": {"previewd.io/allowed-repositories": "acme/shop"}},
        "stringData": {"password": "first"}
    }))
    .unwrap();
    let sources: Api<Secret> = Api::namespaced(admin.clone(), &source);
    sources
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let repo: PreviewRepository = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": team},
        "spec": {
            "repository": "acme/shop", "baseDomain": "preview.test", "strategy": "manifests",
            "catalogue": {"services": [{"name": "api", "image": "registry.k8s.io/pause:3.10"}]},
            "secrets": [{"name": "db"}],
            "manifests": [
                {"template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                              "data": {"ref": "{{shortSha}}"}}},
                {"wave": 1, "template": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate-{{shortSha}}"},
                  "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "m", "image": "registry.k8s.io/pause:3.10",
                      "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}}}}
            ]
        }
    }))
    .unwrap();
    let repos: Api<PreviewRepository> = Api::namespaced(admin.clone(), &team);
    repos.create(&PostParams::default(), &repo).await.unwrap();

    let token = token(&admin, &home, SA).await;
    let (sa_client, recording) = recorded_client(&token).await;
    let mut config = test_config(&team);
    config.secret_namespace = Some(source.clone());
    let ctx =
        Context::new(sa_client, config).register_strategy(Arc::new(ManifestsStrategy::default()));
    let operator = Operator::start_with(Arc::new(ctx)).await;

    let env = render_environment(
        &repo,
        &PullRequestSnapshot {
            repository: "acme/shop".into(),
            number: 77,
            branch: "rbac".into(),
            head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            base_branch: None,
            author: None,
            updated_at: None,
            last_activity: None,
        },
    )
    .unwrap();
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &team);
    envs.create(&PostParams::default(), &env).await.unwrap();
    let env_name = env.metadata.name.clone().unwrap();
    let ready = eventually(TIMEOUT, "Ready under the shipped roles", || {
        let envs = envs.clone();
        let env_name = env_name.clone();
        let recording = recording.clone();
        async move {
            assert!(
                recording.forbidden().is_empty(),
                "refused: {:?}",
                recording.forbidden()
            );
            let e = envs.get(&env_name).await.ok()?;
            (e.status.as_ref()?.phase == Some(Phase::Ready)).then_some(e)
        }
    })
    .await;
    let ns = ready.status.unwrap().namespace.unwrap();
    let copies: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    assert!(copies.get_opt("db").await.unwrap().is_some());

    // The source changes, then the repository stops naming it.
    sources
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "second"}})),
        )
        .await
        .unwrap();
    eventually(TIMEOUT, "the copy follows", || {
        let copies = copies.clone();
        async move {
            let data = copies.get("db").await.ok()?.data?;
            (data["password"].0 == b"second").then_some(())
        }
    })
    .await;
    repos
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secrets": null}})),
        )
        .await
        .unwrap();
    eventually(TIMEOUT, "the copy is removed", || {
        let copies = copies.clone();
        async move { copies.get_opt("db").await.ok()?.is_none().then_some(()) }
    })
    .await;
    envs.delete(&env_name, &DeleteParams::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    eventually(TIMEOUT, "torn down", || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) }
    })
    .await;
    operator.stop().await;

    assert!(
        recording.forbidden().is_empty(),
        "refused: {:?}",
        recording.forbidden()
    );
    let calls = recording.calls();
    let secret_calls: Vec<_> = calls.iter().filter(|c| c.resource == "secrets").collect();
    for c in &secret_calls {
        if matches!(c.verb.as_str(), "get" | "list" | "watch") {
            assert_eq!(
                c.namespace.as_deref(),
                Some(source.as_str()),
                "secret read outside the source: {c:?}"
            );
        } else {
            assert!(
                c.namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with("preview-")),
                "secret write outside previews: {c:?}"
            );
        }
    }
    for verb in ["patch", "delete"] {
        assert!(
            secret_calls.iter().any(|c| c.verb == verb),
            "no secrets {verb}: {secret_calls:?}"
        );
    }

    Installed {
        cluster_objects: installed,
    }
    .remove(&admin)
    .await;
    delete_namespace(&admin, &team).await;
    delete_namespace(&admin, &source).await;
    delete_namespace(&admin, &home).await;
}
