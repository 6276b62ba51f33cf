//! Tenancy attacks through the real interfaces, on the local control plane (`testenv/up`).
//!
//! The operator runs as it is shipped: the whole operator (`OperatorBuilder`, the same as
//! `previewd run`), authenticated as a ServiceAccount holding exactly the chart's roles,
//! under the chart's admission policy, with a repository claim policy, reporting to a
//! local server that speaks GitHub's API and records every request. A tenant acts with a
//! token that has rights in its own namespace only (kubectl's rights: it writes the
//! objects a tenant can write). Each attack is shown to fail, with nothing written where
//! it must not be and no request to another team's repository; a control shows the
//! legitimate path (a signed webhook delivery for the team's own repository) still works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../previewd-github/tests/fake_github/mod.rs"]
mod fake_github;
mod support;

use std::time::Duration;

use clap::Parser;
use fake_github::{FakeGitHub, TOKEN};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::strategy::{application_resource, project_resource};
use previewd_kube::testing::{
    client, delete_namespace, eventually, install_crds, temp_namespace, unique_suffix,
};
use previewd_operator::OperatorBuilder;
use previewd_operator::cli::{Cli, Command};
use serde_json::{Value, json};
use support::*;
use tokio_util::sync::CancellationToken;

const SA: &str = "previewd";
const TENANT: &str = "tenant";
const SECRET: &str = "tenancy-webhook-secret";
const TIMEOUT: Duration = Duration::from_secs(90);
const SHA: &str = "5555555555555555555555555555555555555555";
/// The head commit of every environment the tenant writes by hand.
const ATTACK_SHA: &str = "6666666666666666666666666666666666666666";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rig {
    admin: Client,
    tenant: Client,
    home: String,
    team: String,
    attacker: String,
    source: String,
    argo: String,
    /// `acme-<suffix>`: the team's organisation (unique, so that no other test's objects
    /// bear on the claims).
    org: String,
    /// `attacker-<suffix>`: the tenant's own organisation.
    own: String,
    selector: String,
    github: FakeGitHub,
    webhook: String,
    recording: Recording,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    installed: Vec<Value>,
}

impl Rig {
    async fn start() -> Rig {
        let admin = client().await;
        install_crds(&admin).await;
        install_argocd_crds(&admin).await;
        let suffix = unique_suffix();
        let home = temp_namespace(&admin, "ten-home").await;
        let team = temp_namespace(&admin, "ten-team").await;
        let attacker = temp_namespace(&admin, "ten-attacker").await;
        let source = temp_namespace(&admin, "ten-secrets").await;
        let argo = temp_namespace(&admin, "ten-argo").await;
        let org = format!("acme-{suffix}");
        let own = format!("attacker-{suffix}");

        // The operator's identity, with the chart's roles and admission policy.
        service_account(&admin, &home, SA).await;
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
        let name = format!("previewd-tenancy-{suffix}");
        let mut rules = shipped.controller_rules();
        rules.extend(
            shipped.webhook_role["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        // With argocd.enabled the chart also grants reading Argo CD's kinds everywhere.
        rules.push(json!({"apiGroups": ["argoproj.io"],
            "resources": ["applications", "appprojects"], "verbs": ["list", "watch"]}));
        let mut installed = install_cluster_role(&admin, &name, &rules, &home, SA).await;
        installed.extend(install_policy(&admin, &shipped, &name, &home, SA).await);
        // The history ConfigMap's Role in the operator's namespace, as shipped.
        let mut history = document(&docs, "Role", "previewd-history");
        history["metadata"]["namespace"] = json!(home);
        let mut history_binding = document(&docs, "RoleBinding", "previewd-history");
        history_binding["metadata"]["namespace"] = json!(home);
        history_binding["subjects"][0]["namespace"] = json!(home);
        apply(&admin, &history).await;
        apply(&admin, &history_binding).await;
        // Argo CD's namespace, as the chart grants it (Applications and AppProjects).
        let argo_rules = json!([{"apiGroups": ["argoproj.io"],
            "resources": ["applications", "appprojects"],
            "verbs": ["list", "watch", "create", "patch", "delete"]}]);
        namespaced_role(&admin, &argo, "previewd-argocd", argo_rules, &home, SA).await;
        let argo_exempt = exempt_argo_namespace(&admin, &name, &argo).await;
        installed.extend(argo_exempt);
        let mut role = document(&docs, "Role", "previewd-secret-source");
        role["metadata"]["namespace"] = json!(source);
        let mut binding = document(&docs, "RoleBinding", "previewd-secret-source");
        binding["metadata"]["namespace"] = json!(source);
        binding["subjects"][0]["namespace"] = json!(home);
        apply(&admin, &role).await;
        apply(&admin, &binding).await;

        // The tenant: rights in its own namespace only.
        service_account(&admin, &attacker, TENANT).await;
        let tenant_rules = json!([
            {"apiGroups": ["previewd.io"], "resources": ["previewenvironments", "previewrepositories"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["services", "configmaps", "secrets"],
             "verbs": ["get", "list", "create", "patch", "delete"]}
        ]);
        namespaced_role(&admin, &attacker, "tenant", tenant_rules, &attacker, TENANT).await;
        let tenant_token = token(&admin, &attacker, TENANT).await;
        let tenant = Client::try_from(token_config(&tenant_token).await).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The team's Secret, for its repositories only.
        let db: Secret = serde_json::from_value(json!({
            "metadata": {"name": "team-db", "labels": {"previewd.io/preview-secret": "true"},
                         "annotations": {"previewd.io/allowed-repositories": format!("{org}/*")}},
            "stringData": {"password": "team-only"}
        }))
        .unwrap();
        Api::<Secret>::namespaced(admin.clone(), &source)
            .create(&PostParams::default(), &db)
            .await
            .unwrap();
        // The team's trusted settings, created by the platform team.
        let team_repo = repository(&format!("{org}/shop"), "shop", json!({}));
        Api::<PreviewRepository>::namespaced(admin.clone(), &team)
            .create(&PostParams::default(), &team_repo)
            .await
            .unwrap();

        let github = FakeGitHub::start().await;
        let sa_token = token(&admin, &home, SA).await;
        let (sa_client, recording) = recorded_client(&sa_token).await;
        let webhook_port = free_port();
        let selector = format!("previewd.io/repo in ({org}.shop,{own}.app)");
        let cli = Cli::try_parse_from([
            "previewd",
            "run",
            "--ingress-namespace",
            "ingress-system",
            "--webhook-addr",
            &format!("127.0.0.1:{webhook_port}"),
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--webhook-secret",
            SECRET,
            "--github-token",
            TOKEN,
            "--github-api-url",
            github.base_url().as_str(),
            "--repository-claims",
            &format!("{team}={org}/*;{attacker}={own}/*"),
            "--environment-selector",
            &selector,
            "--secret-namespace",
            &source,
            "--manifest-kinds",
            previewd_kube::strategy::manifests::DEFAULT_KINDS,
            "--argocd-namespace",
            &argo,
            "--base-domain",
            "preview.test",
            "--cleanup-interval",
            "1h",
            "--backfill-interval",
            "0s",
            "--history-config-map",
            &format!("{home}/previewd-history"),
            "--log-format",
            "text",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not the run subcommand");
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            OperatorBuilder::new(*args)
                .client(sa_client)
                .shutdown_on(shutdown.clone())
                .run(),
        );
        let webhook = format!("http://127.0.0.1:{webhook_port}/webhook");
        eventually(TIMEOUT, "the webhook answers", || {
            let url = format!("http://127.0.0.1:{webhook_port}/healthz");
            async move { reqwest::get(&url).await.ok().map(|_| ()) }
        })
        .await;
        Rig {
            admin,
            tenant,
            home,
            team,
            attacker,
            source,
            argo,
            org,
            own,
            selector,
            github,
            webhook,
            recording,
            shutdown,
            task,
            installed,
        }
    }

    async fn stop(self) {
        for ns in [&self.team, &self.attacker] {
            let envs: Api<PreviewEnvironment> = Api::namespaced(self.admin.clone(), ns);
            for env in envs.list(&ListParams::default()).await.unwrap() {
                let _ = envs.delete(&env.name_any(), &Default::default()).await;
            }
        }
        // Argo CD is not running: release its finalizer on the Applications.
        let apps: Api<DynamicObject> = Api::namespaced_with(
            self.admin.clone(),
            &self.argo,
            &application_resource("argoproj.io", "v1alpha1"),
        );
        for _ in 0..20 {
            for app in apps.list(&ListParams::default()).await.unwrap() {
                let _ = apps
                    .patch(
                        &app.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
            let left = {
                let mut n = 0;
                for ns in [&self.team, &self.attacker] {
                    let envs: Api<PreviewEnvironment> = Api::namespaced(self.admin.clone(), ns);
                    n += envs.list(&ListParams::default()).await.unwrap().items.len();
                }
                n
            };
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.shutdown.cancel();
        let _ = self.task.await;
        Installed {
            cluster_objects: self.installed,
        }
        .remove(&self.admin)
        .await;
        for ns in [
            &self.team,
            &self.attacker,
            &self.source,
            &self.argo,
            &self.home,
        ] {
            delete_namespace(&self.admin, ns).await;
        }
    }

    /// Every request the GitHub server received about `repository` that is not about the
    /// team's own pull request `legit` (its path names another pull request, or it
    /// carries the tenant's head commit).
    fn github_requests_for(&self, repository: &str, legit: u64) -> Vec<String> {
        let needle = format!("/repos/{repository}/");
        let own = [format!("/issues/{legit}/"), format!("/pulls/{legit}")];
        self.github.with(|s| {
            s.log
                .iter()
                .filter(|l| l.path.contains(&needle))
                .filter(|l| {
                    l.body.to_string().contains(ATTACK_SHA)
                        || l.path.contains(ATTACK_SHA)
                        || ((l.path.contains("/issues/") || l.path.contains("/pulls/"))
                            && !l.path.contains("/issues/comments/")
                            && !own.iter().any(|o| l.path.contains(o.as_str())))
                })
                .map(|l| format!("{} {}", l.method, l.path))
                .collect()
        })
    }

    /// Creates `env` in the tenant's namespace as the tenant.
    async fn tenant_creates_environment(&self, env: &PreviewEnvironment) {
        Api::<PreviewEnvironment>::namespaced(self.tenant.clone(), &self.attacker)
            .create(&PostParams::default(), env)
            .await
            .expect("the tenant may create environments in its namespace");
    }

    async fn tenant_creates_repository(&self, repo: &PreviewRepository) {
        Api::<PreviewRepository>::namespaced(self.tenant.clone(), &self.attacker)
            .create(&PostParams::default(), repo)
            .await
            .expect("the tenant may create repositories in its namespace");
    }

    /// Waits until the environment is stalled with `reason`; returns its message.
    async fn stalled(&self, ns: &str, name: &str, reason: &str) -> String {
        let envs: Api<PreviewEnvironment> = Api::namespaced(self.admin.clone(), ns);
        let reason = reason.to_string();
        eventually(TIMEOUT, &format!("{name} stalled with {reason}"), || {
            let envs = envs.clone();
            let reason = reason.clone();
            async move {
                let e = envs.get_opt(name).await.ok().flatten()?;
                e.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == reason)
                    .map(|c| c.message)
            }
        })
        .await
    }

    async fn phase(&self, ns: &str, name: &str, phase: Phase) -> PreviewEnvironment {
        let envs: Api<PreviewEnvironment> = Api::namespaced(self.admin.clone(), ns);
        eventually(TIMEOUT, &format!("{name} in {phase}"), || {
            let envs = envs.clone();
            async move {
                let e = envs.get_opt(name).await.ok().flatten()?;
                (e.status.as_ref()?.phase? == phase).then_some(e)
            }
        })
        .await
    }

    /// Preview namespaces of the tenant's environments (none must exist for a refused
    /// one).
    async fn preview_namespaces_of(&self, env_namespace: &str) -> Vec<String> {
        Api::<Namespace>::all(self.admin.clone())
            .list(
                &ListParams::default()
                    .labels(&format!("previewd.io/env-namespace={env_namespace}")),
            )
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| n.name_any())
            .collect()
    }

    /// Signed `pull_request` delivery for `repository` (the real `opened` payload).
    async fn deliver_opened(&self, repository: &str, number: u64) -> u16 {
        let mut payload: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/demo/pull_request.opened.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let (owner, name) = repository.split_once('/').unwrap();
        payload["number"] = json!(number);
        payload["pull_request"]["number"] = json!(number);
        payload["pull_request"]["head"]["sha"] = json!(SHA);
        for pointer in [
            "/repository",
            "/pull_request/base/repo",
            "/pull_request/head/repo",
        ] {
            let repo = payload.pointer_mut(pointer).unwrap();
            repo["full_name"] = json!(repository);
            repo["name"] = json!(name);
            repo["owner"]["login"] = json!(owner);
        }
        let body = serde_json::to_vec(&payload).unwrap();
        let signature = previewd_github::signature::sign(SECRET.as_bytes(), &body);
        reqwest::Client::new()
            .post(&self.webhook)
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header(
                "x-github-delivery",
                format!("tenancy-{number}-{}", unique_suffix()),
            )
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn repository(repository: &str, name: &str, extra: Value) -> PreviewRepository {
    let mut spec = json!({
        "repository": repository,
        "baseDomain": "preview.test",
        "catalogue": {"services": [
            {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080}
        ]},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// An environment as a tenant writes it by hand, selected by the operator's shard label.
fn environment(name: &str, repository: &str, number: i64, extra: Value) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": repository,
        "prNumber": number,
        "branch": format!("attack-{number}"),
        "headSHA": ATTACK_SHA,
        "services": [{"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 8080}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
        "metadata": {"name": name, "labels": {"previewd.io/repo": repository.replace('/', ".")}},
        "spec": spec
    }))
    .unwrap()
}

async fn namespaced_role(
    admin: &Client,
    namespace: &str,
    name: &str,
    rules: Value,
    subject_namespace: &str,
    subject: &str,
) {
    apply(
        admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace}, "rules": rules}),
    )
    .await;
    apply(
        admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": subject_namespace}]}),
    )
    .await;
}

/// The chart exempts Argo CD's namespace from the admission policy when `argocd.enabled`;
/// the rendered policy of the plain manifests has it off, so this test's Argo CD
/// namespace is exempted the same way: a second policy replaces the first with the
/// chart's Argo CD exemption.
async fn exempt_argo_namespace(admin: &Client, name: &str, argo: &str) -> Vec<Value> {
    let policies: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicy",
            ),
            "validatingadmissionpolicies",
        ),
    );
    let mut policy = serde_json::to_value(policies.get(name).await.unwrap()).unwrap();
    let conditions = policy["spec"]["matchConditions"].as_array_mut().unwrap();
    for c in conditions.iter_mut() {
        if c["name"] == "not-own-records" {
            let e = c["expression"].as_str().unwrap().to_string();
            c["expression"] = json!(format!(
                "{e} && !(request.resource.group == 'argoproj.io' && (request.resource.resource == 'applications' || request.resource.resource == 'appprojects') && request.namespace == '{argo}')"
            ));
        }
    }
    policy["metadata"] = json!({"name": name});
    apply(admin, &policy).await;
    Vec::new()
}

/// Argo CD's Application and AppProject CRDs from its Go module.
async fn install_argocd_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::{await_condition, conditions};
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../testenv/argocd-crds");
    let out = std::process::Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dir = stdout.lines().last().unwrap().trim();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["application-crd.yaml", "appproject-crd.yaml"] {
        let yaml = std::fs::read(format!("{dir}/{file}")).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_slice(&yaml).unwrap();
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("previewd-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        tokio::time::timeout(
            TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap()
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_act_for_other_teams_and_the_legitimate_path_works() {
    let rig = Rig::start().await;
    let team_repo = format!("{}/shop", rig.org);
    let own_repo = format!("{}/app", rig.own);

    // Control: a signed delivery for the team's own repository gives a Ready environment
    // reported to that repository.
    assert_eq!(rig.deliver_opened(&team_repo, 41).await, 202);
    let legit = eventually(TIMEOUT, "the team's environment", || {
        let envs: Api<PreviewEnvironment> = Api::namespaced(rig.admin.clone(), &rig.team);
        async move {
            envs.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    rig.phase(&rig.team, &legit.name_any(), Phase::Ready).await;
    eventually(TIMEOUT, "the team's commit status", || {
        let n = rig.github.with(|s| {
            s.commit_statuses
                .iter()
                .filter(|(sha, b)| sha == SHA && b["state"] == "success")
                .count()
        });
        async move { (n > 0).then_some(()) }
    })
    .await;

    // 1. Reporting to someone else's repository: a bare environment naming the team's
    // repository, in the tenant's namespace.
    rig.tenant_creates_environment(&environment("hijack", &team_repo, 9041, json!({})))
        .await;
    let message = rig
        .stalled(&rig.attacker, "hijack", "RepositoryNotClaimed")
        .await;
    assert!(
        message.contains(&format!(
            "namespace {} may not claim {team_repo}",
            rig.attacker
        )),
        "{message}"
    );

    // 2. Refused settings: a PreviewRepository the policy refuses, naming the team's
    // Secret, and an environment rendered from it.
    rig.tenant_creates_repository(&repository(
        &team_repo,
        "stolen",
        json!({"secrets": [{"name": "team-db"}]}),
    ))
    .await;
    rig.tenant_creates_environment(&environment(
        "stolen",
        &team_repo,
        9042,
        json!({"repositoryRef": "stolen"}),
    ))
    .await;
    rig.stalled(&rig.attacker, "stolen", "RepositoryNotClaimed")
        .await;
    // The tenant's own (allowed) repository naming the team's Secret: not its receiver.
    rig.tenant_creates_repository(&repository(
        &own_repo,
        "app",
        json!({"secrets": [{"name": "team-db"}]}),
    ))
    .await;
    rig.tenant_creates_environment(&environment(
        "secret-theft",
        &own_repo,
        43,
        json!({"repositoryRef": "app"}),
    ))
    .await;
    let message = rig
        .stalled(&rig.attacker, "secret-theft", "SecretNotAllowed")
        .await;
    assert!(message.contains("team-db"), "{message}");

    // 3. Templated objects checked by what they do: a LoadBalancer, an ExternalName
    // standing in for a catalogue Service, and a pod running as the operator.
    let attacks = [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "public"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
               "spec": {"type": "ExternalName", "externalName": "kubernetes.default.svc"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "escalate"},
               "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                 "metadata": {"labels": {"a": "b"}},
                 "spec": {"serviceAccountName": SA, "containers": [{"name": "c", "image": "busybox"}]}}}}),
    ];
    for (i, template) in attacks.iter().enumerate() {
        let name = format!("tpl-{i}");
        let repo = format!("{}/tpl{i}", rig.own);
        rig.tenant_creates_repository(&repository(
            &repo,
            &name,
            json!({"strategy": "manifests", "manifests": [{"template": template}]}),
        ))
        .await;
        let mut env = environment(&name, &repo, 50 + i as i64, json!({"repositoryRef": name}));
        env.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("previewd.io/repo".into(), format!("{}.app", rig.own));
        rig.tenant_creates_environment(&env).await;
        let message = rig.stalled(&rig.attacker, &name, "ManifestRefused").await;
        assert!(message.contains("nothing was applied"), "{message}");
    }

    // 4. Argo CD settings chosen by the tenant: a project, a namespace and a destination
    // in its repository settings are not part of the API (the API server drops them); the
    // Application lands in the platform's Argo CD namespace, confined by a project of its
    // own. A manifests repository that is another team's is refused.
    let argocd = |repo_url: &str| {
        json!({"strategy": "argocd", "argocd": {
            "repoURL": repo_url, "path": "deploy",
            "project": "default", "namespace": "kube-system",
            "destinationServer": "https://elsewhere.example.com"}})
    };
    let repos: Api<DynamicObject> = Api::namespaced_with(
        rig.tenant.clone(),
        &rig.attacker,
        &kube::core::ApiResource::erase::<PreviewRepository>(&()),
    );
    let mut argo_repo = serde_json::to_value(repository(
        &format!("{}/argo", rig.own),
        "argo",
        argocd(&format!("https://github.com/{}/argo.git", rig.own)),
    ))
    .unwrap();
    argo_repo["spec"]["argocd"]["project"] = json!("default");
    // A server-side apply naming them is refused outright; a plain create drops them.
    let refused = repos
        .patch(
            "argo",
            &PatchParams::apply("tenant").force(),
            &Patch::Apply(&argo_repo),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("field not declared in schema"),
        "{refused}"
    );
    let object: DynamicObject = serde_json::from_value(argo_repo).unwrap();
    repos.create(&PostParams::default(), &object).await.unwrap();
    let stored = repos.get("argo").await.unwrap();
    assert!(
        stored.data["spec"]["argocd"].get("project").is_none()
            && stored.data["spec"]["argocd"].get("namespace").is_none(),
        "{:?}",
        stored.data["spec"]["argocd"]
    );
    let mut argo_env = environment(
        "argo",
        &format!("{}/argo", rig.own),
        60,
        json!({"repositoryRef": "argo"}),
    );
    argo_env
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("previewd.io/repo".into(), format!("{}.app", rig.own));
    rig.tenant_creates_environment(&argo_env).await;
    let apps: Api<DynamicObject> = Api::namespaced_with(
        rig.admin.clone(),
        &rig.argo,
        &application_resource("argoproj.io", "v1alpha1"),
    );
    let app = eventually(TIMEOUT, "the Application", || {
        let apps = apps.clone();
        async move {
            apps.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    let preview_ns = app.data["spec"]["destination"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(preview_ns.starts_with("preview-"), "{preview_ns}");
    assert_eq!(app.data["spec"]["project"], json!(preview_ns));
    assert_eq!(
        app.data["spec"]["destination"]["server"],
        "https://kubernetes.default.svc"
    );
    let projects: Api<DynamicObject> = Api::namespaced_with(
        rig.admin.clone(),
        &rig.argo,
        &project_resource("argoproj.io", "v1alpha1"),
    );
    let project = projects.get(&preview_ns).await.unwrap();
    assert_eq!(
        project.data["spec"]["destinations"],
        json!([{"server": "https://kubernetes.default.svc", "namespace": preview_ns}])
    );
    assert_eq!(project.data["spec"]["clusterResourceWhitelist"], json!([]));
    let mut other_repo = repository(
        &format!("{}/argo2", rig.own),
        "argo2",
        argocd(&format!("https://github.com/{}/private.git", rig.org)),
    );
    other_repo.spec.repository = format!("{}/argo2", rig.own);
    rig.tenant_creates_repository(&other_repo).await;
    let mut other_env = environment(
        "argo2",
        &format!("{}/argo2", rig.own),
        61,
        json!({"repositoryRef": "argo2"}),
    );
    other_env
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("previewd.io/repo".into(), format!("{}.app", rig.own));
    rig.tenant_creates_environment(&other_env).await;
    let message = rig
        .stalled(&rig.attacker, "argo2", "ArgoCdSourceRefused")
        .await;
    assert!(
        message.contains(&format!("{}/private", rig.org)),
        "{message}"
    );

    // Nothing of the refused environments exists, and the team's repository received no
    // request because of them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies: Vec<String> = Api::<Secret>::all(rig.admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.name_any() == "team-db" && s.namespace().as_deref() != Some(&rig.source))
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    assert!(
        copies.is_empty(),
        "the team's Secret was copied: {copies:?}"
    );
    let services: Vec<String> = Api::<Service>::all(rig.admin.clone())
        .list(&ListParams::default().labels(&format!("previewd.io/env-namespace={}", rig.attacker)))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.type_.as_deref())
                .is_some_and(|t| t != "ClusterIP")
        })
        .map(|s| s.name_any())
        .collect();
    assert!(services.is_empty(), "{services:?}");
    let attacker_namespaces = rig.preview_namespaces_of(&rig.attacker).await;
    assert_eq!(
        attacker_namespaces.len(),
        1,
        "only the Argo CD environment of the tenant's own repository got a namespace: {attacker_namespaces:?}"
    );
    let team_requests = rig.github_requests_for(&team_repo, 41);
    assert!(
        team_requests.is_empty(),
        "requests to the team's repository because of the tenant: {team_requests:?}"
    );
    // The legitimate environment did report (the control of the filter above).
    assert!(
        rig.github.with(|s| s
            .log
            .iter()
            .any(|l| l.path.contains(&format!("/repos/{team_repo}/issues/41/")))),
        "the team's own pull request got its comment"
    );
    assert!(
        rig.recording.forbidden().is_empty(),
        "the operator was refused: {:?}",
        rig.recording.forbidden()
    );
    let _ = (&rig.home, &rig.selector);
    rig.stop().await;
}
