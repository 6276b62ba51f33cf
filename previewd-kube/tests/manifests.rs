//! The `manifests` strategy, Secrets by reference and the egress allow-list on the local
//! control plane (`testenv/up`), with the documented example
//! (`examples/manifests/shop.yaml`).
//!
//! The real controller manager runs the StatefulSet, Job and Deployment controllers and
//! kwok runs the pods, so workloads become ready the way they do in a cluster. The test
//! plays the kubelet where it must decide: it holds the database's and the migration's
//! pods back with a scheduling gate and lets them go one at a time (proving that a wave
//! waits for the one before), and it marks a migration pod failed to fail its Job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::controller::Context;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository, condition};
use previewd_kube::render::{PullRequestSnapshot, render_environment};
use previewd_kube::strategy::ManifestsStrategy;
use serde_json::{Value, json};
use support::*;

const EXAMPLE: &str = include_str!("../../examples/manifests/shop.yaml");
const HOLD: &str = "previewd.test/hold";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TIMEOUT: Duration = Duration::from_secs(90);

/// The documented example, in namespace `ns`, named `name`.
fn example(ns: &str, name: &str) -> PreviewRepository {
    let mut repo: PreviewRepository = serde_saphyr::from_str(EXAMPLE).unwrap();
    repo.metadata.namespace = Some(ns.to_string());
    repo.metadata.name = Some(name.to_string());
    repo
}

/// Holds every pod of the templates of `kinds` with a scheduling gate.
fn hold_pods(repo: &mut PreviewRepository, kinds: &[&str]) {
    for m in &mut repo.spec.manifests {
        let kind = m.template["kind"].as_str().unwrap_or_default().to_string();
        if kinds.contains(&kind.as_str()) {
            m.template["spec"]["template"]["spec"]["schedulingGates"] = json!([{"name": HOLD}]);
        }
    }
}

struct Setup {
    client: Client,
    team: String,
    source: String,
    operator: Operator,
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        let client = client().await;
        install_crds(&client).await;
        let team = temp_namespace(&client, prefix).await;
        let source = temp_namespace(&client, &format!("{prefix}-secrets")).await;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "shop-db-credentials",
                         "labels": {"previewd.io/preview-secret": "true"},
                         "annotations": {"previewd.io/allowed-repositories": "acme/*"}},
            "stringData": {"username": "shop", "password": "first"}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &source)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        // A Secret of the source namespace that is not labelled for previews.
        let private: Secret = serde_json::from_value(json!({
            "metadata": {"name": "operator-credentials"},
            "stringData": {"token": "never-copied"}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &source)
            .create(&PostParams::default(), &private)
            .await
            .unwrap();
        let mut config = test_config(&team);
        config.secret_namespace = Some(source.clone());
        config.base_domain = "preview.example.com".into();
        let ctx = Context::new(client.clone(), config)
            .with_strategy(Arc::new(ManifestsStrategy::default()));
        let operator = Operator::start_with(Arc::new(ctx)).await;
        Setup {
            client,
            team,
            source,
            operator,
        }
    }

    /// Creates `repo` and the environment the webhook would render from it for PR `pr`.
    async fn deploy(&self, repo: &PreviewRepository, pr: u64) -> String {
        Api::<PreviewRepository>::namespaced(self.client.clone(), &self.team)
            .create(&PostParams::default(), repo)
            .await
            .unwrap();
        let snapshot = PullRequestSnapshot {
            repository: repo.spec.repository.clone(),
            number: pr,
            branch: format!("feature-{pr}"),
            head_sha: SHA.into(),
            base_branch: Some("main".into()),
            author: Some("octocat".into()),
            updated_at: None,
            last_activity: None,
        };
        let env = render_environment(repo, &snapshot).unwrap();
        self.envs()
            .create(&PostParams::default(), &env)
            .await
            .unwrap();
        env.name_any()
    }

    fn envs(&self) -> Api<PreviewEnvironment> {
        Api::namespaced(self.client.clone(), &self.team)
    }

    async fn namespace_of(&self, env: &str) -> String {
        let envs = self.envs();
        eventually(TIMEOUT, "the environment's namespace", || {
            let envs = envs.clone();
            async move { envs.get(env).await.ok()?.status?.namespace }
        })
        .await
    }

    async fn stop(self) {
        self.operator.stop().await;
        delete_namespace(&self.client, &self.team).await;
        delete_namespace(&self.client, &self.source).await;
    }
}

async fn exists<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap().is_some()
}

async fn wait_for<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(TIMEOUT, &format!("{name} exists"), || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok().flatten() }
    })
    .await
}

/// Lets the held pods matching `selector` be scheduled (kwok then runs them).
async fn release(client: &Client, ns: &str, selector: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let held = eventually(TIMEOUT, &format!("held pods {selector}"), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            (!list.items.is_empty()).then_some(list.items)
        }
    })
    .await;
    for pod in held {
        pods.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/schedulingGates"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    }
}

fn ready_condition(env: &PreviewEnvironment) -> Option<(String, String)> {
    env.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_reaches_ready_in_wave_order() {
    let setup = Setup::new("manifests-waves").await;
    let mut repo = example(&setup.team, "shop");
    hold_pods(&mut repo, &["StatefulSet", "Job"]);
    let env = setup.deploy(&repo, 401).await;
    let ns = setup.namespace_of(&env).await;
    let c = &setup.client;
    let statefulsets: Api<StatefulSet> = Api::namespaced(c.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let services: Api<Service> = Api::namespaced(c.clone(), &ns);

    // Wave 0: the database, its Service and the settings, rendered for this environment.
    wait_for(&statefulsets, "db").await;
    assert!(exists(&services, "db").await);
    let settings = wait_for(
        &Api::<ConfigMap>::namespaced(c.clone(), &ns),
        "shop-settings",
    )
    .await;
    let data = settings.data.unwrap();
    assert_eq!(data["DATABASE_HOST"], format!("db.{ns}.svc"));
    assert_eq!(data["GIT_SHA"], SHA);
    assert_eq!(data["PUBLIC_URL"], "https://pr-401.preview.example.com");

    // The referenced Secret was copied; the unlabelled one was not.
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let copy = wait_for(&secrets, "shop-db-credentials").await;
    assert_eq!(
        copy.data.unwrap()["password"],
        ByteString(b"first".to_vec())
    );
    assert!(!exists(&secrets, "operator-credentials").await);

    // The egress allow-list is in the NetworkPolicy.
    let policy = wait_for(
        &Api::<NetworkPolicy>::namespaced(c.clone(), &ns),
        "previewd-allow",
    )
    .await;
    let egress = serde_json::to_value(policy.spec.unwrap().egress.unwrap()).unwrap();
    assert!(
        egress.as_array().unwrap().contains(&json!({
            "to": [{"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "payments-sandbox"},
                "matchExpressions": [{"key": "app.kubernetes.io/managed-by", "operator": "NotIn", "values": ["previewd"]}]}}],
            "ports": [{"port": 8443, "protocol": "TCP"}]
        })),
        "{egress}"
    );
    assert!(
        egress.as_array().unwrap().contains(&json!({
            "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
            "ports": [{"port": 443, "protocol": "TCP"}]
        })),
        "{egress}"
    );

    // While the database is not ready, nothing of the later waves exists.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs_now = jobs.list(&ListParams::default()).await.unwrap();
    assert!(
        jobs_now.items.is_empty(),
        "the migration waits for the database"
    );
    assert!(!exists(&deployments, "api").await && !exists(&deployments, "web").await);
    let e = setup.envs().get(&env).await.unwrap();
    assert_eq!(e.status.as_ref().unwrap().phase, Some(Phase::Provisioning));
    let message = e.status.unwrap().message.unwrap();
    assert!(message.starts_with("wave 0: StatefulSet db"), "{message}");

    // The database starts: the migration Job of this head commit follows, the app waits.
    release(c, &ns, "app=db").await;
    let job = wait_for(&jobs, "migrate-0123456").await;
    assert_eq!(
        job.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("ghcr.io/acme/shop-api:pr-401")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!exists(&deployments, "api").await && !exists(&deployments, "web").await);

    // The migration completes: the app rolls out and the environment is Ready.
    release(c, &ns, "batch.kubernetes.io/job-name=migrate-0123456").await;
    let ready = eventually(TIMEOUT, "Ready", || {
        let envs = setup.envs();
        let env = env.clone();
        async move {
            let e = envs.get(&env).await.ok()?;
            (e.status.as_ref()?.phase == Some(Phase::Ready)).then_some(e)
        }
    })
    .await;
    let status = ready.status.unwrap();
    assert_eq!(
        status.message.as_deref(),
        Some("8 object(s) ready in 3 wave(s)")
    );
    // The template's Deployment api replaced the catalogue's; web is the catalogue's.
    let api = deployments.get("api").await.unwrap();
    let pod = api.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].env_from.as_ref().unwrap()[0]
            .config_map_ref
            .as_ref()
            .unwrap()
            .name,
        "shop-settings"
    );
    assert!(exists(&deployments, "web").await);
    assert!(exists(&services, "api").await && exists(&services, "web").await);

    // A change at the source shows up in the copy.
    Api::<Secret>::namespaced(c.clone(), &setup.source)
        .patch(
            "shop-db-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "second"}})),
        )
        .await
        .unwrap();
    eventually(TIMEOUT, "the copy follows its source", || {
        let secrets = secrets.clone();
        async move {
            let data = secrets.get("shop-db-credentials").await.ok()?.data?;
            (data.get("password") == Some(&ByteString(b"second".to_vec()))).then_some(())
        }
    })
    .await;

    // Deleting the environment removes the namespace, and the copy with it.
    setup
        .envs()
        .delete(&env, &DeleteParams::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(c.clone());
    eventually(TIMEOUT, "the preview namespace is gone", || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(!exists(&secrets, "shop-db-credentials").await);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_fails_the_environment_with_its_reason() {
    let setup = Setup::new("manifests-fail").await;
    let mut repo = example(&setup.team, "shop");
    hold_pods(&mut repo, &["Job"]);
    for m in &mut repo.spec.manifests {
        if m.template["kind"] == "Job" {
            m.template["spec"]["backoffLimit"] = json!(0);
        }
    }
    let env = setup.deploy(&repo, 402).await;
    let ns = setup.namespace_of(&env).await;
    let c = &setup.client;

    // Play the kubelet: the migration's container exits with an error.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let selector = "batch.kubernetes.io/job-name=migrate-0123456";
    let pod = eventually(TIMEOUT, "the migration pod", || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            list.items.into_iter().next()
        }
    })
    .await;
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Failed",
            "containerStatuses": [{
                "name": "migrate", "image": "ghcr.io/acme/shop-api:pr-402", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "relation \"orders\" already exists"}}
            }]
        }})),
    )
    .await
    .unwrap();

    let failed = eventually(TIMEOUT, "Failed", || {
        let envs = setup.envs();
        let env = env.clone();
        async move {
            let e = envs.get(&env).await.ok()?;
            (e.status.as_ref()?.phase == Some(Phase::Failed)).then_some(e)
        }
    })
    .await;
    let (reason, message) = ready_condition(&failed).unwrap();
    assert_eq!(reason, "ServiceFailed");
    assert!(
        message.starts_with("Job migrate-0123456 failed: BackoffLimitExceeded"),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    assert!(
        !exists(&deployments, "api").await,
        "the app is not deployed over a failed migration"
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_kind_gives_its_condition_and_writes_nothing() {
    let setup = Setup::new("manifests-refused").await;
    let cases: Vec<(&str, Value)> = vec![
        (
            "ManifestNamespaceRefused",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}}),
        ),
        (
            "ManifestRBACRefused",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "admin"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "{{namespace}}"}]}),
        ),
        (
            "ManifestRBACRefused",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}}),
        ),
        (
            "ManifestClusterScoped",
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "x"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/"}}}),
        ),
        (
            "ManifestGuardRailRefused",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-all"}, "spec": {"podSelector": {}, "egress": [{}]}}),
        ),
        (
            "ManifestKindNotAllowed",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"}}),
        ),
        (
            "ManifestForeignNamespace",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "kube-system"}}),
        ),
        // Allowed kinds, refused for what they do.
        (
            "ManifestRefused",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "public"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
        ),
        (
            "ManifestRefused",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
            "spec": {"type": "ExternalName", "externalName": "metadata.google.internal"}}),
        ),
        (
            "ManifestRefused",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "intercept"},
            "spec": {"externalIPs": ["10.96.0.1"], "ports": [{"port": 443}]}}),
        ),
        (
            "ManifestRefused",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "steal"},
            "spec": {"selector": {"matchLabels": {"app": "steal"}}, "template": {
                "metadata": {"labels": {"app": "steal"}},
                "spec": {"serviceAccountName": "previewd",
                         "containers": [{"name": "c", "image": "busybox"}]}}}}),
        ),
    ];
    let mut envs = Vec::new();
    for (i, (reason, template)) in cases.iter().enumerate() {
        let mut repo = example(&setup.team, &format!("refused-{i}"));
        // One repository each: a repository has one claim.
        repo.spec.repository = format!("acme/shop-refused-{i}");
        // A harmless object first: nothing of a refused set is written, not even that.
        repo.spec.manifests.truncate(1);
        repo.spec
            .manifests
            .push(serde_json::from_value(json!({"template": template})).unwrap());
        let env = setup.deploy(&repo, 410 + i as u64).await;
        envs.push((env, *reason));
    }
    for (env, reason) in &envs {
        let stalled = eventually(TIMEOUT, &format!("{env} stalled with {reason}"), || {
            let api = setup.envs();
            let env = env.clone();
            async move {
                let e = api.get(&env).await.ok()?;
                let stalled = e
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition::STALLED && c.status == "True")?
                    .clone();
                Some((e, stalled))
            }
        })
        .await;
        assert_eq!(stalled.1.reason, *reason, "{env}: {}", stalled.1.message);
        assert!(
            stalled.1.message.contains("nothing was applied"),
            "{}",
            stalled.1.message
        );
        let ns = stalled.0.status.unwrap().namespace.unwrap();
        assert!(
            Api::<Namespace>::all(setup.client.clone())
                .get_opt(&ns)
                .await
                .unwrap()
                .is_none(),
            "{env}: namespace {ns} was created"
        );
    }
    // Nothing reached the cluster outside either.
    assert!(
        Api::<Namespace>::all(setup.client.clone())
            .get_opt("elsewhere")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !exists(
            &Api::<ConfigMap>::namespaced(setup.client.clone(), "kube-system"),
            "x"
        )
        .await
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_environment_gets_no_secret_and_no_egress() {
    let setup = Setup::new("manifests-fork").await;
    let repo = example(&setup.team, "shop");
    assert!(!repo.spec.secrets.is_empty() && !repo.spec.egress.is_empty());
    Api::<PreviewRepository>::namespaced(setup.client.clone(), &setup.team)
        .create(&PostParams::default(), &repo)
        .await
        .unwrap();
    let snapshot = PullRequestSnapshot {
        repository: "acme/shop".into(),
        number: 412,
        branch: "feature-412".into(),
        head_sha: SHA.into(),
        base_branch: Some("main".into()),
        author: Some("mallory".into()),
        updated_at: None,
        last_activity: None,
    };
    let mut env = render_environment(&repo, &snapshot).unwrap();
    // What the webhook writes for a pull request from a fork.
    env.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(previewd_kube::crd::LABEL_FORK.into(), "true".into());
    setup
        .envs()
        .create(&PostParams::default(), &env)
        .await
        .unwrap();
    let name = env.name_any();
    let ns = setup.namespace_of(&name).await;
    let c = &setup.client;

    // Wave 0 is applied after the Secret copies would be: none was made.
    wait_for(&Api::<StatefulSet>::namespaced(c.clone(), &ns), "db").await;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    assert!(!exists(&secrets, "shop-db-credentials").await);

    // The allow policy holds only DNS and the namespace itself.
    let policy = wait_for(
        &Api::<NetworkPolicy>::namespaced(c.clone(), &ns),
        "previewd-allow",
    )
    .await;
    let egress = serde_json::to_value(policy.spec.unwrap().egress.unwrap()).unwrap();
    assert_eq!(egress.as_array().unwrap().len(), 2, "{egress}");
    let text = egress.to_string();
    assert!(
        !text.contains("203.0.113.0/24") && !text.contains("payments-sandbox"),
        "{text}"
    );

    // The status says what was withheld.
    let message = eventually(TIMEOUT, "the ForkRestricted condition", || {
        let envs = setup.envs();
        let name = name.clone();
        async move {
            let e = envs.get(&name).await.ok()?;
            e.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ForkRestricted" && c.status == "True")
                .map(|c| c.message)
        }
    })
    .await;
    assert!(
        message.contains("Secrets (1) and egress rules (2)"),
        "{message}"
    );
    let status = setup.envs().get(&name).await.unwrap().status.unwrap();
    assert!(status.copied_secrets.is_empty(), "{status:?}");

    setup
        .envs()
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(TIMEOUT, "the environment is gone", || {
        let envs = setup.envs();
        let name = name.clone();
        async move { matches!(envs.get_opt(&name).await, Ok(None)).then_some(()) }
    })
    .await;
    setup.stop().await;
}
