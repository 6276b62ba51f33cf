//! Least privilege, proven on the local control plane: the controller runs a whole
//! environment lifecycle authenticated as a ServiceAccount token bound to exactly the
//! roles the chart ships (and under its admission policy); no request is refused, every
//! granted verb is used, removing any one rule breaks the lifecycle, and the admission
//! policy refuses writes outside the namespaces previewd created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::controller::{self, Context};
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
    unique_suffix,
};
use serde_json::{Value, json};
use support::*;

const SA: &str = "previewd";

fn environment(name: &str, pr: i64, ttl: Option<&str>) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": "acme/shop",
        "prNumber": pr,
        "branch": format!("rbac-{pr}"),
        "headSHA": "0123456789abcdef0123456789abcdef01234567",
        "services": [
            {"name": "frontend", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"},
            {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 9090}
        ],
    });
    if let Some(ttl) = ttl {
        spec["ttl"] = json!(ttl);
    } else {
        // The long-lived environment runs tests: a Job after Ready.
        spec["tests"] =
            json!({"enabled": true, "image": "registry.k8s.io/pause:3.10", "timeout": "10m"});
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// What happened to one lifecycle run.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    /// A request was refused (403) before the lifecycle completed.
    Refused(Vec<Call>),
}

/// The lifecycle the controller must be able to run: two environments, one of which
/// expires on its own (its TTL); the other becomes Ready, loses a service and its
/// Ingress, is deleted, and its namespace goes with it; then a cleanup sweep. Stops early
/// when the recorded client saw a 403.
async fn lifecycle(
    admin: &Client,
    team: &str,
    recording: &Recording,
    ctx: &Arc<Context>,
) -> Outcome {
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), team);
    let pr = i64::from(u16::from_str_radix(&unique_suffix()[..4], 16).unwrap()) + 1;
    let main = format!("shop-pr-{pr}");
    let short = format!("shop-pr-{}", pr + 100_000);
    envs.create(&PostParams::default(), &environment(&main, pr, None))
        .await
        .unwrap();
    envs.create(
        &PostParams::default(),
        &environment(&short, pr + 100_000, Some("25s")),
    )
    .await
    .unwrap();

    // Polls `check` until it holds; gives up with the refused calls as soon as any.
    macro_rules! until {
        ($timeout:expr, $what:expr, $check:expr) => {{
            let deadline = tokio::time::Instant::now() + $timeout;
            loop {
                let refused = recording.forbidden();
                if !refused.is_empty() {
                    return Outcome::Refused(refused);
                }
                if $check {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting for {}",
                    $what
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }};
    }

    // Ready, then straight into its test run (or past it: kwok finishes Job pods).
    until!(Duration::from_secs(90), "Ready", {
        envs.get_opt(&main)
            .await
            .unwrap()
            .and_then(|e| e.status)
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_serving() || p == Phase::Failed)
    });
    let ns = envs
        .get(&main)
        .await
        .unwrap()
        .status
        .unwrap()
        .namespace
        .unwrap();

    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    #[allow(unused_assignments)]
    let mut test_job = None;
    until!(Duration::from_secs(60), "test Job", {
        test_job = jobs
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
            .map(|j| j.name_any());
        test_job.is_some()
    });
    let test_job = test_job.unwrap_or_default();

    // Drop a service and the Ingress, and push a new commit: the controller deletes both
    // and the test Job of the old commit.
    envs.patch(
        &main,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "headSHA": "89abcdef0123456789abcdef0123456789abcdef",
            "services": [{"name": "frontend", "image": "registry.k8s.io/pause:3.10", "port": 8080}],
            "ingress": {"enabled": false},
        }})),
    )
    .await
    .unwrap();
    until!(Duration::from_secs(60), "old test Job pruned", {
        matches!(jobs.get_opt(&test_job).await, Ok(None))
    });
    // The new commit's run ends like the first (kwok finishes the runner without a
    // summary): the same failure again, which the Event recorder patches into a series.
    until!(Duration::from_secs(60), "second test run judged", {
        envs.get_opt(&main)
            .await
            .unwrap()
            .and_then(|e| e.status)
            .is_some_and(|s| {
                s.phase == Some(Phase::Failed)
                    && s.tests.and_then(|t| t.sha).as_deref()
                        == Some("89abcdef0123456789abcdef0123456789abcdef")
            })
    });
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    until!(Duration::from_secs(60), "api service and Ingress pruned", {
        matches!(deployments.get_opt("api").await, Ok(None))
            && matches!(services.get_opt("api").await, Ok(None))
            && matches!(ingresses.get_opt("preview").await, Ok(None))
    });

    // Teardown through the finalizer, and expiry of the short-lived environment.
    envs.delete(&main, &DeleteParams::default()).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    // The finalizer releases the environment only once its namespace is gone.
    until!(Duration::from_secs(90), "environments gone", {
        matches!(envs.get_opt(&main).await, Ok(None))
            && matches!(envs.get_opt(&short).await, Ok(None))
    });
    assert!(
        namespaces.get_opt(&ns).await.unwrap().is_none(),
        "namespace {ns} outlived its environment"
    );
    if let Err(e) = controller::sweep_once(ctx).await {
        let refused = recording.forbidden();
        assert!(!refused.is_empty(), "sweep failed without a refusal: {e}");
        return Outcome::Refused(refused);
    }
    let refused = recording.forbidden();
    if refused.is_empty() {
        Outcome::Completed
    } else {
        Outcome::Refused(refused)
    }
}

/// Namespaces and a ServiceAccount for one test: `home` plays the release namespace,
/// `team` holds the environments.
struct Stage {
    admin: Client,
    home: String,
    team: String,
    suffix: String,
}

impl Stage {
    async fn new(prefix: &str) -> Stage {
        let admin = client().await;
        install_crds(&admin).await;
        let home = temp_namespace(&admin, &format!("{prefix}-home")).await;
        let team = temp_namespace(&admin, &format!("{prefix}-team")).await;
        service_account(&admin, &home, SA).await;
        Stage {
            admin,
            home,
            team,
            suffix: unique_suffix(),
        }
    }

    async fn remove(self) {
        delete_namespace(&self.admin, &self.team).await;
        delete_namespace(&self.admin, &self.home).await;
    }

    /// Runs the lifecycle with the controller authenticated as the ServiceAccount.
    async fn run_lifecycle(&self) -> (Outcome, Recording) {
        let token = token(&self.admin, &self.home, SA).await;
        let (sa_client, recording) = recorded_client(&token).await;
        let ctx = Arc::new(
            Context::new(sa_client, test_config(&self.team))
                .with_stage(Arc::new(previewd_kube::strategy::SeedStage))
                .with_stage(Arc::new(previewd_kube::strategy::TestRunStage)),
        );
        // The usage sampler, as the operator runs it with a history store.
        let _ = previewd_kube::usage::UsageTracker::default()
            .sample_once(&ctx.client)
            .await;
        let operator =
            tokio::time::timeout(Duration::from_secs(20), Operator::start_with(ctx.clone())).await;
        let outcome = match operator {
            Ok(operator) => {
                let outcome = lifecycle(&self.admin, &self.team, &recording, &ctx).await;
                operator.stop().await;
                outcome
            }
            // Without list/watch the caches never sync.
            Err(_) => Outcome::Refused(recording.forbidden()),
        };
        (outcome, recording)
    }
}

fn granted(rules: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn shipped_roles_have_no_wildcards_escalation_or_secret_access() {
    for manifest in ["previewd", "previewd-combined"] {
        for doc in rendered(manifest) {
            if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
                continue;
            }
            for (group, resource, verb) in granted(doc["rules"].as_array().unwrap()) {
                let what = format!(
                    "{manifest}: {} grants {verb} on {group}/{resource}",
                    doc["metadata"]["name"]
                );
                assert!(
                    ![&group, &resource, &verb].iter().any(|s| s.contains('*')),
                    "wildcard: {what}"
                );
                assert!(
                    !["escalate", "bind", "impersonate"].contains(&verb.as_str()),
                    "{what}"
                );
                assert!(resource != "secrets", "{what}");
                assert!(
                    !["pods/exec", "nodes/proxy", "serviceaccounts/token"]
                        .contains(&resource.as_str()),
                    "{what}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_runs_under_exactly_the_shipped_roles_and_policy() {
    let stage = Stage::new("rbac-full").await;
    let shipped = ShippedRbac::load();
    let rules = shipped.controller_rules();
    let name = format!("previewd-rbac-{}", stage.suffix);
    let mut installed = install_cluster_role(&stage.admin, &name, &rules, &stage.home, SA).await;
    installed.extend(install_policy(&stage.admin, &shipped, &name, &stage.home, SA).await);
    wait_for_policy(&stage).await;

    let (outcome, recording) = stage.run_lifecycle().await;
    assert_eq!(
        outcome,
        Outcome::Completed,
        "the shipped roles must be enough"
    );

    // Every verb the role grants was used: nothing is granted "just in case". The local
    // control plane serves no metrics API: the sampler's list is answered 404, which the
    // API server returns only after authorising the request.
    let mut used = recording.used();
    for c in recording.calls() {
        if c.group == "metrics.k8s.io" && c.status == 404 {
            used.insert((c.group.clone(), c.resource.clone(), c.verb.clone()));
        }
    }
    let unused: Vec<_> = granted(&rules).difference(&used).cloned().collect();
    assert!(
        unused.is_empty(),
        "granted but never used: {unused:?}\nused: {used:?}"
    );

    // Every write went to a preview namespace, the environments' own namespace (the
    // environments themselves and Events about them), or nowhere namespaced (namespaces).
    for call in recording.calls() {
        if matches!(call.verb.as_str(), "get" | "list" | "watch") {
            continue;
        }
        let ns = call.namespace.clone().unwrap_or_default();
        assert!(
            ns.starts_with("preview-") || ns == stage.team || call.resource == "namespaces",
            "write outside preview namespaces: {call:?}"
        );
    }
    Installed {
        cluster_objects: installed,
    }
    .remove(&stage.admin)
    .await;
    stage.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_any_rule_breaks_the_lifecycle() {
    let stage = Stage::new("rbac-minus").await;
    let shipped = ShippedRbac::load();
    let rules = shipped.controller_rules();
    let mut report = Vec::new();
    for (index, removed) in rules.iter().enumerate() {
        let reduced: Vec<Value> = rules
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, r)| r.clone())
            .collect();
        let name = format!("previewd-rbac-{}-{index}", stage.suffix);
        let installed = install_cluster_role(&stage.admin, &name, &reduced, &stage.home, SA).await;
        // Wait until the authorizer sees the reduced role (reading environments is in
        // every variant but the one that removes it).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (outcome, _) = stage.run_lifecycle().await;
        Installed {
            cluster_objects: installed,
        }
        .remove(&stage.admin)
        .await;
        let refused = match outcome {
            Outcome::Refused(calls) => calls,
            Outcome::Completed => panic!("the lifecycle completed without rule {removed}"),
        };
        let groups = removed["apiGroups"].as_array().unwrap();
        let resources = removed["resources"].as_array().unwrap();
        assert!(
            refused.iter().any(|c| groups.contains(&json!(c.group)) && resources.contains(&json!(c.resource))),
            "without {removed} other requests were refused: {refused:?}"
        );
        report.push(format!(
            "without rule {index} ({}): refused {}",
            removed["resources"], refused[0].verb
        ));
        // Leftovers of the interrupted lifecycle go with the team namespace at the end;
        // start each variant with no environment.
        let envs: Api<PreviewEnvironment> = Api::namespaced(stage.admin.clone(), &stage.team);
        for env in envs.list(&Default::default()).await.unwrap() {
            let _ = envs
                .patch(
                    &env.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            let _ = envs.delete(&env.name_any(), &DeleteParams::default()).await;
        }
        remove_preview_namespaces(&stage.admin, &stage.team).await;
    }
    eprintln!("{}", report.join("\n"));
    stage.remove().await;
}

/// Deletes the preview namespaces made for environments of `team`.
async fn remove_preview_namespaces(admin: &Client, team: &str) {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let selector = format!("previewd.io/env-namespace={team}");
    for ns in namespaces
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap()
    {
        delete_namespace(admin, &ns.name_any()).await;
    }
}

/// Waits until the admission policy refuses the ServiceAccount a write outside preview
/// namespaces (policies take a moment to reach the API server's admission chain).
async fn wait_for_policy(stage: &Stage) {
    let token = token(&stage.admin, &stage.home, SA).await;
    let (sa, _) = recorded_client(&token).await;
    let services: Api<Service> = Api::namespaced(sa, &stage.team);
    let probe: Service = serde_json::from_value(json!({
        "metadata": {"name": "policy-probe"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    eventually(Duration::from_secs(30), "admission policy active", || {
        let services = services.clone();
        let probe = probe.clone();
        async move {
            match services
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &probe,
                )
                .await
            {
                Err(kube::Error::Api(s))
                    if s.code == 403 && s.message.contains("namespaces it created") =>
                {
                    Some(())
                }
                _ => None,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_policy_refuses_writes_outside_preview_namespaces() {
    let stage = Stage::new("rbac-vap").await;
    let shipped = ShippedRbac::load();
    let name = format!("previewd-vap-{}", stage.suffix);
    // Give the ServiceAccount broad rights on purpose: the policy must hold regardless.
    let broad = vec![
        json!({"apiGroups": [""], "resources": ["namespaces", "configmaps", "services"], "verbs": ["get", "list", "create", "patch", "update", "delete"]}),
    ];
    let mut installed = install_cluster_role(&stage.admin, &name, &broad, &stage.home, SA).await;
    installed.extend(install_policy(&stage.admin, &shipped, &name, &stage.home, SA).await);
    wait_for_policy(&stage).await;

    let token = token(&stage.admin, &stage.home, SA).await;
    let (sa, _) = recorded_client(&token).await;
    let refused = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s))
            if s.code == 403 && s.message.contains("namespaces it created") => {}
        other => panic!("{what}: expected the policy to refuse, got {other:?}"),
    };
    let configmap: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    refused(
        Api::<ConfigMap>::namespaced(sa.clone(), &stage.team)
            .create(&PostParams::default(), &configmap)
            .await
            .map(|_| ()),
        "ConfigMap in a team namespace",
    );
    refused(
        Api::<ConfigMap>::namespaced(sa.clone(), "kube-system")
            .create(&PostParams::default(), &configmap)
            .await
            .map(|_| ()),
        "ConfigMap in kube-system",
    );
    let namespaces: Api<Namespace> = Api::all(sa.clone());
    let unlabelled: Namespace =
        serde_json::from_value(json!({"metadata": {"name": format!("preview-{}", stage.suffix)}}))
            .unwrap();
    refused(
        namespaces
            .create(&PostParams::default(), &unlabelled)
            .await
            .map(|_| ()),
        "unlabelled preview-* namespace",
    );
    let wrong_name: Namespace = serde_json::from_value(json!({"metadata": {
        "name": format!("team-{}", stage.suffix),
        "labels": {"app.kubernetes.io/managed-by": "previewd"},
    }}))
    .unwrap();
    refused(
        namespaces
            .create(&PostParams::default(), &wrong_name)
            .await
            .map(|_| ()),
        "labelled namespace not named preview-*",
    );
    // Adopting someone else's namespace by labelling it: judged on the stored object.
    refused(
        namespaces
            .patch(
                &stage.team,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "previewd"}}}),
                ),
            )
            .await
            .map(|_| ()),
        "labelling a team namespace",
    );
    refused(
        namespaces
            .delete(&stage.team, &DeleteParams::default())
            .await
            .map(|_| ()),
        "deleting a team namespace",
    );

    // A namespace of its own without restricted pod security, or with it only enforced.
    let pss_refused = |r: Result<Namespace, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s))
            if s.code == 403 && s.message.contains("restricted Pod Security Standard") => {}
        other => panic!("{what}: expected the pod-security rule to refuse, got {other:?}"),
    };
    for labels in [
        json!({"app.kubernetes.io/managed-by": "previewd"}),
        json!({"app.kubernetes.io/managed-by": "previewd",
               "pod-security.kubernetes.io/enforce": "restricted"}),
        json!({"app.kubernetes.io/managed-by": "previewd",
               "pod-security.kubernetes.io/enforce": "baseline",
               "pod-security.kubernetes.io/audit": "restricted",
               "pod-security.kubernetes.io/warn": "restricted"}),
    ] {
        let lax: Namespace = serde_json::from_value(json!({"metadata": {
            "name": format!("preview-lax-{}", stage.suffix),
            "labels": labels,
        }}))
        .unwrap();
        pss_refused(
            namespaces.create(&PostParams::default(), &lax).await,
            &format!("preview namespace labelled {labels}"),
        );
    }

    // Inside a namespace previewd created, the same writes pass.
    let ours: Namespace = serde_json::from_value(json!({"metadata": {
        "name": format!("preview-{}", stage.suffix),
        "labels": {
            "app.kubernetes.io/managed-by": "previewd",
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        },
    }}))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ours)
        .await
        .expect("a managed preview namespace");
    Api::<ConfigMap>::namespaced(sa.clone(), &ours.name_any())
        .create(&PostParams::default(), &configmap)
        .await
        .expect("a write inside a managed preview namespace");
    // Dropping restricted pod security from it later is refused too.
    pss_refused(
        namespaces
            .patch(
                &ours.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})),
            )
            .await,
        "relaxing a managed namespace's pod security",
    );
    namespaces
        .delete(&ours.name_any(), &DeleteParams::default())
        .await
        .expect("deleting a managed namespace");

    Installed {
        cluster_objects: installed,
    }
    .remove(&stage.admin)
    .await;
    stage.remove().await;
}

/// The rendered policy for Services in preview namespaces, renamed for one test and
/// narrowed to the namespace `only` (the cluster is shared), with `exempt_user` as its
/// only exempt user.
fn preview_services_policy(suffix: &str, only: &str, exempt_user: &str) -> (Value, Value) {
    let docs = rendered("previewd");
    let mut policy = document(
        &docs,
        "ValidatingAdmissionPolicy",
        "previewd-preview-services",
    );
    let mut binding = document(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "previewd-preview-services",
    );
    let name = format!("previewd-preview-services-{suffix}");
    policy["metadata"]["name"] = json!(name);
    assert_eq!(
        policy["spec"]["matchConstraints"]["namespaceSelector"],
        json!({"matchLabels": {"app.kubernetes.io/managed-by": "previewd"}})
    );
    policy["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] =
        json!(only);
    policy["spec"]["matchConditions"] = json!([{
        "name": "not-exempt",
        "expression": format!("request.userInfo.username != '{exempt_user}'"),
    }]);
    binding["metadata"]["name"] = json!(name);
    binding["spec"]["policyName"] = json!(name);
    (policy, binding)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_namespaces_refuse_exposing_services_whoever_writes_them() {
    let stage = Stage::new("rbac-svc").await;
    // An admin-like identity: every verb on Services everywhere (as Argo CD's application
    // controller has), not exempt from the policy.
    let argo = "argocd-like";
    service_account(&stage.admin, &stage.home, argo).await;
    let name = format!("previewd-svc-{}", stage.suffix);
    let broad = vec![
        json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "create", "patch", "update", "delete"]}),
    ];
    let mut installed = install_cluster_role(&stage.admin, &name, &broad, &stage.home, argo).await;
    let preview = format!("preview-svc-{}", stage.suffix);
    let (policy, binding) =
        preview_services_policy(&stage.suffix, &preview, "break-glass@example.test");
    apply(&stage.admin, &policy).await;
    apply(&stage.admin, &binding).await;
    installed.extend([policy, binding]);

    // A namespace previewd manages, and a team namespace that it does not.
    let namespaces: Api<Namespace> = Api::all(stage.admin.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {
        "name": preview,
        "labels": {"app.kubernetes.io/managed-by": "previewd", "previewd.io/test": "true"},
    }}))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let token = token(&stage.admin, &stage.home, argo).await;
    let (sa, _) = recorded_client(&token).await;
    let in_preview: Api<Service> = Api::namespaced(sa.clone(), &preview);
    let service = |name: &str, spec: Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let load_balancer = service(
        "public",
        json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
    );
    // Policies take a moment to reach the admission chain.
    let first = eventually(
        Duration::from_secs(30),
        "the policy refuses a LoadBalancer",
        || {
            let in_preview = in_preview.clone();
            let load_balancer = load_balancer.clone();
            async move {
                match in_preview
                    .create(&PostParams::default(), &load_balancer)
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 403 => Some(s.message),
                    Ok(_) => {
                        let _ = in_preview.delete("public", &DeleteParams::default()).await;
                        None
                    }
                    Err(_) => None,
                }
            }
        },
    )
    .await;
    assert!(first.contains("type LoadBalancer is refused"), "{first}");
    assert!(first.contains(&preview), "{first}");

    for (svc, expected) in [
        (
            service(
                "nodeport",
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            ),
            "type NodePort is refused",
        ),
        (
            service(
                "alias",
                json!({"type": "ExternalName", "externalName": "metadata.google.internal"}),
            ),
            "type ExternalName is refused",
        ),
        (
            service(
                "intercept",
                json!({"ports": [{"port": 80}], "externalIPs": ["10.0.0.10"]}),
            ),
            "spec.externalIPs is refused",
        ),
    ] {
        match in_preview.create(&PostParams::default(), &svc).await {
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(expected) => {}
            other => panic!("{}: expected {expected:?}, got {other:?}", svc.name_any()),
        }
    }
    // A ClusterIP Service passes, and cannot be turned into a NodePort afterwards.
    in_preview
        .create(
            &PostParams::default(),
            &service("web", json!({"ports": [{"port": 80}]})),
        )
        .await
        .expect("a ClusterIP Service in a preview namespace");
    match in_preview
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("NodePort") => {}
        other => panic!("turning web into a NodePort: {other:?}"),
    }
    // Outside preview namespaces the policy does not apply.
    Api::<Service>::namespaced(sa.clone(), &stage.team)
        .create(
            &PostParams::default(),
            &service(
                "public",
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("a NodePort Service in a team namespace is the team's business");

    namespaces
        .delete(&preview, &DeleteParams::default())
        .await
        .unwrap();
    Installed {
        cluster_objects: installed,
    }
    .remove(&stage.admin)
    .await;
    stage.remove().await;
}

/// Every API call the webhook's store makes (the split webhook's whole use of the API,
/// and the backfill's), authenticated as a ServiceAccount bound to exactly the shipped
/// webhook role: nothing is refused, and every granted verb is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_store_runs_under_exactly_the_shipped_webhook_role() {
    use previewd_github::{EnvironmentStore, KubeStore, Precondition};
    use previewd_kube::crd::{ClosedPullRequest, PreviewRepository};

    let stage = Stage::new("rbac-hook").await;
    let hook = "previewd-webhook";
    service_account(&stage.admin, &stage.home, hook).await;
    let shipped = ShippedRbac::load();
    let rules = shipped.webhook_role["rules"].as_array().unwrap().clone();
    let name = format!("previewd-hook-{}", stage.suffix);
    let installed = install_cluster_role(&stage.admin, &name, &rules, &stage.home, hook).await;

    let repo: PreviewRepository = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": stage.team},
        "spec": {"repository": "acme/shop", "baseDomain": "preview.test", "catalogue": {"services": [
            {"name": "web", "image": "registry.k8s.io/pause:3.10"}]}}
    }))
    .unwrap();
    Api::<PreviewRepository>::namespaced(stage.admin.clone(), &stage.team)
        .create(&PostParams::default(), &repo)
        .await
        .unwrap();

    let token = token(&stage.admin, &stage.home, hook).await;
    let (sa, recording) = recorded_client(&token).await;
    let store = KubeStore::new(sa, Some(stage.team.clone()));
    // The authorizer may take a moment to see the new binding.
    eventually(Duration::from_secs(30), "the webhook role applies", || {
        let store = store.clone();
        async move { store.ready().await.ok() }
    })
    .await;
    let found = store.find_repositories("acme/shop").await.unwrap();
    assert_eq!(found.len(), 1);
    store
        .record_claim(&previewd_kube::tenancy::ClaimVerdict {
            namespace: stage.team.clone(),
            name: "shop".into(),
            claimed: true,
            reason: previewd_kube::tenancy::REASON_BOUND,
            message: "bound".into(),
        })
        .await
        .unwrap();
    let mut env = environment("shop-pr-9", 9, None);
    env.metadata.namespace = Some(stage.team.clone());
    assert!(
        store
            .get_environment(&stage.team, "shop-pr-9")
            .await
            .unwrap()
            .is_none()
    );
    store
        .apply_environment(&env, &Precondition::Absent)
        .await
        .unwrap();
    let live = store
        .get_environment(&stage.team, "shop-pr-9")
        .await
        .unwrap()
        .unwrap();
    let version = live.metadata.resource_version.clone().unwrap();
    store
        .apply_command_annotations(
            &stage.team,
            "shop-pr-9",
            &[("previewd.io/command".to_string(), "extend".to_string())].into(),
            &version,
        )
        .await
        .unwrap();
    let at = store
        .environments_at(&stage.team, "acme/shop", &env.spec.head_sha)
        .await
        .unwrap();
    assert_eq!(at.len(), 1);
    let live = store
        .get_environment(&stage.team, "shop-pr-9")
        .await
        .unwrap()
        .unwrap();
    let checks = previewd_core::checks::RecordedChecks {
        sha: env.spec.head_sha.clone(),
        ..Default::default()
    };
    store
        .record_checks(
            &stage.team,
            "shop-pr-9",
            &checks,
            live.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap();
    let live = store
        .get_environment(&stage.team, "shop-pr-9")
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .delete_environment(
                &stage.team,
                "shop-pr-9",
                live.metadata.resource_version.as_deref().unwrap()
            )
            .await
            .unwrap()
    );
    store
        .record_tombstone(
            &found[0],
            "shop-pr-9",
            &ClosedPullRequest {
                updated_at: "2026-01-01T00:00:00Z".into(),
                delivery: "d-1".into(),
            },
            &[],
        )
        .await
        .unwrap();

    assert!(
        recording.forbidden().is_empty(),
        "refused: {:?}",
        recording.forbidden()
    );
    let used = recording.used();
    let unused: Vec<_> = granted(&rules).difference(&used).cloned().collect();
    assert!(
        unused.is_empty(),
        "granted but never used: {unused:?}\nused: {used:?}"
    );
    Installed {
        cluster_objects: installed,
    }
    .remove(&stage.admin)
    .await;
    stage.remove().await;
}
