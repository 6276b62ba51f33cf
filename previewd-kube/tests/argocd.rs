//! The `argocd` strategy against the local control plane, with Argo CD's own CRDs (from
//! the `github.com/argoproj/argo-cd/v3` Go module, fetched by `testenv/argocd-crds`). No
//! Argo CD controller runs here: the test plays its part by writing Application status
//! and removing its finalizer, exactly the fields Argo CD writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::controller::Context;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::strategy::{
    ARGOCD_RESOURCES_FINALIZER, ArgoCdPlatform, ArgoCdStrategy, application_resource,
    project_resource,
};
use serde_json::{Value, json};
use support::*;

const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA2: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Installs Argo CD's Application and AppProject CRDs as the Go module ships them.
async fn install_argocd_crds(client: &Client) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../testenv/argocd-crds");
    let out = std::process::Command::new(script)
        .output()
        .expect("run testenv/argocd-crds");
    assert!(
        out.status.success(),
        "testenv/argocd-crds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dir = stdout.lines().last().expect("directory of the CRDs").trim();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["application-crd.yaml", "appproject-crd.yaml"] {
        let yaml = std::fs::read(format!("{dir}/{file}")).expect("read CRD manifest");
        let crd: CustomResourceDefinition = serde_saphyr::from_slice(&yaml).expect("parse CRD");
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply Argo CD CRD");
        tokio::time::timeout(
            SETUP_TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("Argo CD CRD established in time")
        .expect("watch CRD");
    }
}

fn repository() -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "shop"},
        "spec": {
            "repository": "acme/shop",
            "baseDomain": "preview.test",
            "catalogue": {"services": [
                {"name": "api", "image": "ghcr.io/acme/api:pr-{{number}}"},
                {"name": "web", "image": "ghcr.io/acme/web:pr-{{number}}"}
            ]},
            "strategy": "argocd",
            "argocd": {
                "repoURL": "https://github.com/acme/shop.git",
                "path": "deploy/{service}/overlays/preview",
            }
        }
    }))
    .unwrap()
}

fn environment(name: &str, pr: i64) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": {
            "repository": "acme/shop",
            "prNumber": pr,
            "branch": format!("feature-{}", unique_suffix()),
            "headSHA": SHA1,
            "repositoryRef": "shop",
            "services": [
                {"name": "api", "image": format!("ghcr.io/acme/api:pr-{pr}")},
                {"name": "web", "image": format!("ghcr.io/acme/web:pr-{pr}")}
            ],
        }
    }))
    .unwrap()
}

fn projects(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &project_resource("argoproj.io", "v1alpha1"),
    )
}

fn applications(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &application_resource("argoproj.io", "v1alpha1"),
    )
}

async fn wait_env(
    envs: &Api<PreviewEnvironment>,
    name: &str,
    what: &str,
    check: impl Fn(&PreviewEnvironment) -> bool,
) -> PreviewEnvironment {
    eventually(Duration::from_secs(60), what, || {
        let envs = envs.clone();
        let check = &check;
        async move { envs.get_opt(name).await.ok().flatten().filter(|e| check(e)) }
    })
    .await
}

fn phase(env: &PreviewEnvironment) -> Option<Phase> {
    env.status.as_ref()?.phase
}

fn ready_condition(env: &PreviewEnvironment) -> (String, String, String) {
    let c = env
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// Plays Argo CD's application controller: writes the status it would write.
async fn argo_writes_status(apps: &Api<DynamicObject>, name: &str, status: Value) {
    apps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .expect("write Application status");
}

fn synced_healthy(sha: &str) -> Value {
    json!({
        "sync": {"status": "Synced", "revision": sha},
        "health": {"status": "Healthy"},
        "operationState": {"phase": "Succeeded", "message": "successfully synced",
                           "operation": {"sync": {"revision": sha}},
                           "startedAt": "2026-11-29T12:00:00Z",
                           "finishedAt": "2026-11-29T12:00:05Z",
                           "syncResult": {"revision": sha}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_applications_drive_readiness_updates_failure_retry_and_teardown() {
    let client = client().await;
    install_crds(&client).await;
    install_argocd_crds(&client).await;
    let ns = temp_namespace(&client, "argo-team").await;
    // Stands for Argo CD's namespace (a test must not share the real one).
    let argo_ns = temp_namespace(&client, "argo-apps").await;
    let ctx = Context::new(client.clone(), test_config(&ns)).register_strategy(Arc::new(
        ArgoCdStrategy::with_platform(ArgoCdPlatform {
            namespace: argo_ns.clone(),
            ..ArgoCdPlatform::default()
        }),
    ));
    let op = Operator::start_with(Arc::new(ctx)).await;

    let repos: Api<PreviewRepository> = Api::namespaced(client.clone(), &ns);
    repos
        .create(&PostParams::default(), &repository())
        .await
        .unwrap();
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    envs.create(&PostParams::default(), &environment("shop-pr-7", 7))
        .await
        .unwrap();

    // One Application per service, in Argo CD's namespace, at the head commit.
    let apps = applications(&client, &argo_ns);
    let listed = eventually(Duration::from_secs(60), "two Applications", || {
        let apps = apps.clone();
        async move {
            let list = apps.list(&ListParams::default()).await.ok()?;
            (list.items.len() == 2).then_some(list.items)
        }
    })
    .await;
    // The Applications are applied before the status that names the namespace is
    // written, in the same reconcile.
    let env = wait_env(&envs, "shop-pr-7", "the namespace recorded", |e| {
        e.status
            .as_ref()
            .and_then(|s| s.namespace.as_ref())
            .is_some()
    })
    .await;
    let preview_ns = env.status.as_ref().unwrap().namespace.clone().unwrap();
    let mut names: Vec<String> = listed.iter().map(|a| a.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![format!("{preview_ns}-api"), format!("{preview_ns}-web")]
    );
    let api_app = apps.get(&names[0]).await.unwrap();
    let spec = &api_app.data["spec"];
    assert_eq!(spec["source"]["targetRevision"], SHA1);
    assert_eq!(spec["source"]["path"], "deploy/api/overlays/preview");
    assert_eq!(
        spec["source"]["kustomize"]["images"],
        json!(["ghcr.io/acme/api=ghcr.io/acme/api:pr-7"])
    );
    assert_eq!(spec["destination"]["namespace"], preview_ns.as_str());
    // Confined by a project of its own: this namespace, this repository, no
    // cluster-scoped kind.
    assert_eq!(spec["project"], preview_ns.as_str());
    let projects = projects(&client, &argo_ns);
    let project = projects.get(&preview_ns).await.unwrap();
    assert_eq!(
        project.data["spec"]["destinations"],
        json!([{"server": "https://kubernetes.default.svc", "namespace": preview_ns}])
    );
    assert_eq!(
        project.data["spec"]["sourceRepos"],
        json!(["https://github.com/acme/shop.git"])
    );
    assert_eq!(project.data["spec"]["clusterResourceWhitelist"], json!([]));
    assert_eq!(
        project
            .annotations()
            .get("previewd.io/owner-uid")
            .map(String::as_str),
        env.metadata.uid.as_deref()
    );
    assert_eq!(
        spec["syncPolicy"]["automated"],
        json!({"prune": true, "selfHeal": true})
    );
    assert_eq!(
        api_app.finalizers(),
        &[ARGOCD_RESOURCES_FINALIZER.to_string()]
    );
    assert_eq!(
        api_app.labels().get("previewd.io/env").map(String::as_str),
        Some("shop-pr-7")
    );
    assert_eq!(
        api_app
            .annotations()
            .get("previewd.io/owner-uid")
            .map(String::as_str),
        env.metadata.uid.as_deref()
    );
    // Nothing from Argo CD yet: provisioning.
    let (ready, _, message) = ready_condition(&env);
    assert_eq!(ready, "False");
    assert!(message.contains("Argo CD application"), "{message}");

    // Argo CD syncs both at the head commit: Ready.
    for name in &names {
        argo_writes_status(&apps, name, synced_healthy(SHA1)).await;
    }
    let ready = wait_env(&envs, "shop-pr-7", "Ready", |e| {
        phase(e) == Some(Phase::Ready)
    })
    .await;
    assert_eq!(
        ready_condition(&ready).2,
        "2 Argo CD application(s) Synced and Healthy"
    );

    // A push: targetRevision follows the head commit; the old status does not count.
    envs.patch(
        "shop-pr-7",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"headSHA": SHA2}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(60), "targetRevision = SHA2", || {
        let apps = apps.clone();
        let names = names.clone();
        async move {
            for name in &names {
                let app = apps.get(name).await.ok()?;
                if app.data["spec"]["source"]["targetRevision"] != SHA2 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    // Provisioning, and (once the pass that applied the new revision has seen it on the
    // Applications) saying what it waits for.
    let rolling = wait_env(&envs, "shop-pr-7", "Provisioning, waiting for SHA2", |e| {
        phase(e) == Some(Phase::Provisioning)
            && ready_condition(e)
                .2
                .contains("waiting for revision 89abcde")
    })
    .await;
    assert_eq!(ready_condition(&rolling).1, "Provisioning");
    for name in &names {
        argo_writes_status(&apps, name, synced_healthy(SHA2)).await;
    }
    wait_env(&envs, "shop-pr-7", "Ready at SHA2", |e| {
        phase(e) == Some(Phase::Ready)
    })
    .await;

    // Degraded: Failed, with Argo CD's message in the condition.
    argo_writes_status(
        &apps,
        &names[1],
        json!({"health": {"status": "Degraded",
                          "message": "Deployment \"web\" exceeded its progress deadline"}}),
    )
    .await;
    let failed = wait_env(&envs, "shop-pr-7", "Failed", |e| {
        phase(e) == Some(Phase::Failed)
    })
    .await;
    let (status, reason, message) = ready_condition(&failed);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ServiceFailed")
    );
    assert_eq!(
        message,
        format!(
            "Argo CD application {}: Degraded: Deployment \"web\" exceeded its progress deadline",
            names[1]
        )
    );

    // A retry without a push: one sync operation on each Application; the environment
    // waits for it, then is Ready again.
    envs.patch(
        "shop-pr-7",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"previewd.io/retry": "1"}}})),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "a sync operation requested",
        || {
            let apps = apps.clone();
            let name = names[1].clone();
            async move {
                let app = apps.get(&name).await.ok()?;
                (app.data["operation"]["sync"]["revision"] == SHA2).then_some(())
            }
        },
    )
    .await;
    wait_env(&envs, "shop-pr-7", "Provisioning after the retry", |e| {
        phase(e) == Some(Phase::Provisioning)
    })
    .await;
    for name in &names {
        // Argo CD runs the operation, removes it and records the result.
        apps.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"operation": null, "status": synced_healthy(SHA2)})),
        )
        .await
        .unwrap();
    }
    wait_env(&envs, "shop-pr-7", "Ready after the retry", |e| {
        phase(e) == Some(Phase::Ready)
    })
    .await;

    // Teardown: the Applications first (their finalizer holds them while Argo CD
    // deletes what they deployed), the namespace only once they are gone.
    envs.delete("shop-pr-7", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "Applications being deleted",
        || {
            let apps = apps.clone();
            let names = names.clone();
            async move {
                for name in &names {
                    apps.get(name).await.ok()?.metadata.deletion_timestamp?;
                }
                Some(())
            }
        },
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live_ns = namespaces.get(&preview_ns).await.unwrap();
    assert!(
        live_ns.metadata.deletion_timestamp.is_none(),
        "the namespace waits for the Applications"
    );
    let terminating = envs.get("shop-pr-7").await.unwrap();
    assert_eq!(phase(&terminating), Some(Phase::Terminating));
    assert!(
        projects
            .get(&preview_ns)
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none(),
        "the project stays while its Applications are being deleted"
    );
    for name in &names {
        // Argo CD deleted the resources and releases its finalizer.
        apps.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(60), "environment gone", || {
        let envs = envs.clone();
        async move { matches!(envs.get_opt("shop-pr-7").await, Ok(None)).then_some(()) }
    })
    .await;
    let gone = namespaces.get_opt(&preview_ns).await.unwrap();
    assert!(
        gone.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "the namespace is deleted after the Applications"
    );
    assert!(
        apps.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        projects.get_opt(&preview_ns).await.unwrap().is_none(),
        "the project goes after its Applications"
    );

    op.stop().await;
    delete_namespace(&client, &ns).await;
    delete_namespace(&client, &argo_ns).await;
}

/// The shared cluster has Argo CD's CRDs once any test installed them, so the missing
/// case is shown with the same strategy pointed at a group nobody serves
/// (`argoproj.invalid`): discovery at start finds no such kind, the operator starts and
/// deploys catalogue environments normally, and an environment that asks for `argocd`
/// stalls at once with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_argocd_crds_the_operator_runs_and_argocd_environments_stall() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "argo-none").await;
    let ctx = Context::new(client.clone(), test_config(&ns)).register_strategy(Arc::new(
        ArgoCdStrategy::new().with_resource(application_resource("argoproj.invalid", "v1alpha1")),
    ));
    let op = Operator::start_with(Arc::new(ctx)).await;
    assert!(op.readiness.is_ready(), "caches synced without the kind");
    assert_eq!(
        op.ctx.caches.missing_kinds(),
        [
            "argoproj.invalid/v1alpha1/AppProject".to_string(),
            "argoproj.invalid/v1alpha1/Application".to_string()
        ]
        .into()
    );

    let repos: Api<PreviewRepository> = Api::namespaced(client.clone(), &ns);
    repos
        .create(&PostParams::default(), &repository())
        .await
        .unwrap();
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    envs.create(&PostParams::default(), &environment("shop-pr-8", 8))
        .await
        .unwrap();
    let stalled = wait_env(&envs, "shop-pr-8", "stalled", |e| {
        e.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
        })
    })
    .await;
    let stalled_condition = stalled
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .clone();
    assert_eq!(stalled_condition.reason, "StrategyUnavailable");
    assert!(
        stalled_condition
            .message
            .contains("needs Application argoproj.invalid/v1alpha1"),
        "{}",
        stalled_condition.message
    );
    assert!(stalled.status.as_ref().unwrap().namespace.is_some());

    // The same operator deploys catalogue environments as usual.
    let mut plain = environment("shop-pr-9", 9);
    plain.spec.repository_ref = None;
    plain.spec.services = serde_json::from_value(json!([
        {"name": "api", "image": "registry.k8s.io/pause:3.10"}
    ]))
    .unwrap();
    envs.create(&PostParams::default(), &plain).await.unwrap();
    wait_env(&envs, "shop-pr-9", "catalogue environment Ready", |e| {
        phase(e) == Some(Phase::Ready)
    })
    .await;

    for name in ["shop-pr-8", "shop-pr-9"] {
        let _ = envs.delete(name, &DeleteParams::default()).await;
    }
    eventually(Duration::from_secs(60), "environments gone", || {
        let envs = envs.clone();
        async move {
            envs.list(&ListParams::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    op.stop().await;
    delete_namespace(&client, &ns).await;
}
