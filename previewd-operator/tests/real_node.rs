//! Previews on testenv's real node, where containers run: the preview answers over HTTP
//! with its head commit, network policy isolates it, restricted pod security admits a
//! non-root app and refuses a root one, the test and seed Jobs run their images and report
//! through their termination messages, and sleep stops the containers.
//!
//! The operator runs in the test process (its controller, as `previewd run` does); the
//! cluster is `PREVIEWD_TESTENV_NODES=0 PREVIEWD_TESTENV_REAL_NODE=1 testenv/up`. HTTP goes
//! through each preview's Service from a pod in the namespace the previews' policies admit as
//! their ingress controller's (no ingress controller runs on the node). Built only with the
//! `real-node` feature: `scripts/test` starts the node and runs them with
//! `--features real-node`, and then they fail (never skip) when the node is not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod realnode;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::controller::Context;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::render::{PullRequestSnapshot, render_environment};
use previewd_kube::strategy::{ManifestsStrategy, SeedStage, TestRunStage};
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
    unique_suffix,
};
use realnode::*;
use serde_json::{Value, json};

const SHA1: &str = "1111111111111111111111111111111111111111";
const SHA2: &str = "2222222222222222222222222222222222222222";
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

/// A team namespace with the operator watching it, and what the tests create there.
struct Setup {
    client: Client,
    team: String,
    secrets: String,
    /// The namespace the previews' policies admit as their ingress controller's.
    ingress: String,
    /// A pod there: what an ingress controller would see of the previews.
    front: Prober,
    operator: Operator,
    images: Images,
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        let client = client().await;
        require_node(&client).await;
        let images = images();
        install_crds(&client).await;
        let team = temp_namespace(&client, prefix).await;
        let secrets = temp_namespace(&client, &format!("{prefix}-secrets")).await;
        let ingress = temp_namespace(&client, &format!("{prefix}-ingress")).await;
        let front = Prober::start(&client, &ingress, &images.app, false).await;
        let guard = previewd_kube::children::namespace::GuardSettings {
            ingress_namespace: ingress.clone(),
            ..Default::default()
        };
        let mut config = test_config(&team);
        config.secret_namespace = Some(secrets.clone());
        config.guard = guard;
        config.readiness_timeout = PHASE_TIMEOUT;
        config.stage_jobs = previewd_kube::strategy::StageJobSettings {
            operator_image: images.operator.clone(),
            ..Default::default()
        };
        let ctx = Context::new(client.clone(), config)
            .with_strategy(Arc::new(ManifestsStrategy::default()))
            .with_stage(Arc::new(SeedStage))
            .with_stage(Arc::new(TestRunStage));
        let operator = Operator::start_with(Arc::new(ctx)).await;
        Setup {
            client,
            team,
            secrets,
            ingress,
            front,
            operator,
            images,
        }
    }

    fn envs(&self) -> Api<PreviewEnvironment> {
        Api::namespaced(self.client.clone(), &self.team)
    }

    /// A repository `owner/name` whose one service `web` runs the app image with a small
    /// request (the node has 2 CPUs), plus `extra` merged into its spec.
    async fn repository(&self, name: &str, extra: Value) -> PreviewRepository {
        let mut spec = json!({
            "repository": format!("realnode/{name}"),
            "baseDomain": "preview.test",
            "tls": false,
            "defaultTier": "minimal",
            "catalogue": {"services": [
                {"name": "web", "image": self.images.app, "port": 8080, "ingressPath": "/"}
            ]}
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let repo: PreviewRepository = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewRepository",
            "metadata": {"name": name, "namespace": self.team},
            "spec": spec
        }))
        .unwrap();
        Api::<PreviewRepository>::namespaced(self.client.clone(), &self.team)
            .create(&PostParams::default(), &repo)
            .await
            .unwrap()
    }

    /// The environment the webhook renders for PR `number` at `sha`, created.
    async fn open(&self, repo: &PreviewRepository, number: u64, sha: &str) -> String {
        let env = render_environment(
            repo,
            &PullRequestSnapshot {
                repository: repo.spec.repository.clone(),
                number,
                branch: format!("feature-{}", unique_suffix()),
                head_sha: sha.into(),
                base_branch: Some("main".into()),
                author: Some("octocat".into()),
                updated_at: None,
                last_activity: None,
            },
        )
        .unwrap();
        self.envs()
            .create(&PostParams::default(), &env)
            .await
            .unwrap();
        env.name_any()
    }

    async fn wait_phase(&self, env: &str, phase: Phase) -> PreviewEnvironment {
        let envs = self.envs();
        eventually(PHASE_TIMEOUT, &format!("{env} {phase:?}"), || {
            let envs = envs.clone();
            async move {
                let e = envs.get(env).await.ok()?;
                (e.status.as_ref()?.phase? == phase).then_some(e)
            }
        })
        .await
    }

    /// Deletes the environments (their namespaces go with them), stops the operator and
    /// removes the test's namespaces.
    async fn finish(self, extra_namespaces: &[&str]) {
        let envs = self.envs();
        for env in envs.list(&ListParams::default()).await.unwrap() {
            let _ = envs.delete(&env.name_any(), &DeleteParams::default()).await;
        }
        eventually(PHASE_TIMEOUT, "environments gone", || {
            let envs = envs.clone();
            async move {
                envs.list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .is_empty()
                    .then_some(())
            }
        })
        .await;
        self.operator.stop().await;
        for ns in [
            self.team.as_str(),
            self.secrets.as_str(),
            self.ingress.as_str(),
        ]
        .into_iter()
        .chain(extra_namespaces.iter().copied())
        {
            delete_namespace(&self.client, ns).await;
        }
    }
}

fn condition_status(env: &PreviewEnvironment, kind: &str) -> String {
    env.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn condition_message(env: &PreviewEnvironment, kind: &str) -> String {
    env.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

/// Item 1: the preview answers through its Service with the PR's head commit, and after a
/// push the new commit answers and the old pods are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_answers_over_http_with_its_head_commit() {
    let s = Setup::new("rn-http").await;
    let repo = s.repository("http", json!({})).await;
    let env = s.open(&repo, 1, SHA1).await;
    s.wait_phase(&env, Phase::Ready).await;
    let ns = namespace_of(&s.envs(), &env).await;
    let nodes = nodes_of_pods(&s.client, &ns, "previewd.io/service=web").await;
    assert_eq!(
        nodes,
        vec![NODE.to_string()],
        "the preview's pods run on the real node"
    );
    let url = service_url(&s.client, &ns, "web").await;
    let body = s
        .front
        .answers(&url, &[&format!("sha={SHA1}"), "service=web"])
        .await;
    eprintln!("GET {url} (PR 1 at {SHA1}):\n{body}");
    assert!(
        body.contains("uid=65532"),
        "the app runs as its non-root user: {body}"
    );

    // A push: the new commit answers and no pod of the old one is left.
    s.envs()
        .patch(
            &env,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"headSHA": SHA2}})),
        )
        .await
        .unwrap();
    let envs = s.envs();
    eventually(PHASE_TIMEOUT, "Ready at the new commit", || {
        let envs = envs.clone();
        let env = env.clone();
        async move {
            let status = envs.get(&env).await.ok()?.status?;
            (status.phase? == Phase::Ready && status.deployed_sha.as_deref() == Some(SHA2))
                .then_some(())
        }
    })
    .await;
    let body = s.front.answers(&url, &[&format!("sha={SHA2}")]).await;
    eprintln!("GET {url} (PR 1 after a push to {SHA2}):\n{body}");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &ns);
    eventually(PHASE_TIMEOUT, "the old commit's pods gone", || {
        let pods = pods.clone();
        async move {
            let all = pods.list(&ListParams::default()).await.ok()?;
            let old = all.items.iter().filter(|p| {
                p.annotations()
                    .get("previewd.io/head-sha")
                    .map(String::as_str)
                    == Some(SHA1)
            });
            (old.count() == 0).then_some(())
        }
    })
    .await;
    s.finish(&[]).await;
}

/// Item 2: what reaches what, measured with probe pods (`app fetch URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_isolates_previews() {
    let s = Setup::new("rn-isolation").await;
    let app = s.images.app.clone();
    // Ordinary namespaces: one holds the allow-listed target and a second server on the same
    // port; the other is where an ordinary workload probes from.
    let targets = temp_namespace(&s.client, "rn-targets").await;
    let ordinary = temp_namespace(&s.client, "rn-ordinary").await;
    let allowed_ip = app_server(&s.client, &targets, &app, "allowed").await;
    let other_ip = app_server(&s.client, &targets, &app, "other").await;
    let egress =
        json!({"egress": [{"cidrs": [format!("{allowed_ip}/32")], "ports": [{"port": 8080}]}]});
    let repo_a = s.repository("isolation-a", egress).await;
    let repo_b = s.repository("isolation-b", json!({})).await;
    let env_a = s.open(&repo_a, 1, SHA1).await;
    let env_b = s.open(&repo_b, 1, SHA1).await;
    s.wait_phase(&env_a, Phase::Ready).await;
    s.wait_phase(&env_b, Phase::Ready).await;
    let ns_a = namespace_of(&s.envs(), &env_a).await;
    let ns_b = namespace_of(&s.envs(), &env_b).await;
    let a_url = service_url(&s.client, &ns_a, "web").await;
    let b_url = service_url(&s.client, &ns_b, "web").await;
    let api_url = "https://10.96.0.1:443/version";
    let metadata_url = "http://169.254.169.254/";
    let allowed_url = format!("http://{allowed_ip}:8080/");
    let other_url = format!("http://{other_ip}:8080/");

    // Pods to fetch from: in the ordinary namespace, in preview B, in preview A.
    let from_ordinary = Prober::start(&s.client, &ordinary, &app, false).await;
    let from_b = Prober::start(&s.client, &ns_b, &app, true).await;
    let from_a = Prober::start(&s.client, &ns_a, &app, true).await;
    // Every preview answers its ingress namespace, and A its own pods (the enforcer has
    // caught up with the new pods once these answer).
    s.front.answers(&a_url, &["service=web"]).await;
    s.front.answers(&b_url, &["service=web"]).await;
    let own = from_a.reaches(&a_url).await;
    report("preview A", "its own Service", &own);

    // Controls: from an ordinary namespace (no policy) every other target answers.
    let mut measured = vec![(
        "ordinary -> preview A's Service".to_string(),
        from_ordinary.fetch(&a_url),
    )];
    report("ordinary namespace", "preview A's Service", &measured[0].1);
    for (to, url) in [
        ("the API server's Service", api_url),
        ("the metadata address", metadata_url),
        ("the allow-listed target", allowed_url.as_str()),
        ("the other address, same port", other_url.as_str()),
    ] {
        let p = from_ordinary.reaches(url).await;
        report("ordinary namespace", to, &p);
        measured.push((format!("ordinary -> {to}"), p));
    }
    // Into a preview from another preview.
    let b_to_a = from_b.fetch(&a_url);
    report("preview B", "preview A's Service", &b_to_a);
    // Out of a preview.
    let allowed = from_a.reaches(&allowed_url).await;
    let from_a: Vec<(&str, Probe)> = vec![
        ("preview B's Service", from_a.fetch(&b_url)),
        ("the API server's Service", from_a.fetch(api_url)),
        ("the metadata address", from_a.fetch(metadata_url)),
        ("the allow-listed target", allowed),
        ("the other address, same port", from_a.fetch(&other_url)),
    ];
    for (to, p) in &from_a {
        report("preview A", to, p);
    }

    let ordinary_to = |i: usize| &measured[i].1;
    assert!(
        !ordinary_to(0).reached,
        "an ordinary namespace reached a preview: {:?}",
        ordinary_to(0)
    );
    // (The controls polled until they were reached; testenv's stand-in answers at the
    // metadata address.)
    assert!(
        measured[2].1.output.contains("service=metadata-stand-in"),
        "{:?}",
        measured[2]
    );
    assert!(!b_to_a.reached, "preview B reached preview A: {b_to_a:?}");
    let probes: Vec<Probe> = from_a.into_iter().map(|(_, p)| p).collect();
    let [b, api, metadata, allowed, other]: [Probe; 5] = probes.try_into().unwrap();
    assert!(own.output.contains("service=web"), "{own:?}");
    assert!(!b.reached, "preview A reached preview B: {b:?}");
    assert!(!api.reached, "preview A reached the API server: {api:?}");
    assert!(
        !metadata.reached,
        "preview A reached the metadata address: {metadata:?}"
    );
    assert!(
        allowed.reached && allowed.output.contains("service=allowed"),
        "{allowed:?}"
    );
    assert!(
        !other.reached,
        "preview A reached a port off its allow-list: {other:?}"
    );
    s.finish(&[&targets, &ordinary]).await;
}

/// Item 3: restricted pod security lets the non-root app run, and refuses a template that
/// asks for root, with the reason in the environment's condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_pod_security_runs_non_root_and_refuses_root() {
    let s = Setup::new("rn-pss").await;
    let app = s.images.app.clone();
    let root = json!({
        "strategy": "manifests",
        "manifests": [{"template": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "as-root"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "as-root"}},
                "template": {
                    "metadata": {"labels": {"app": "as-root"}},
                    "spec": {
                        "securityContext": {"runAsUser": 0},
                        "containers": [{"name": "app", "image": app,
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                          "limits": {"cpu": "100m", "memory": "64Mi"}}}]
                    }
                }
            }
        }}]
    });
    let plain = s.repository("pss-plain", json!({})).await;
    let as_root = s.repository("pss-root", root).await;
    let ok = s.open(&plain, 1, SHA1).await;
    let refused = s.open(&as_root, 2, SHA1).await;

    s.wait_phase(&ok, Phase::Ready).await;
    let ns = namespace_of(&s.envs(), &ok).await;
    let url = service_url(&s.client, &ns, "web").await;
    let body = s.front.answers(&url, &["uid=65532"]).await;
    eprintln!("restricted namespace {ns}, the app answered:\n{body}");

    let failed = s.wait_phase(&refused, Phase::Failed).await;
    let message = condition_message(&failed, "Ready");
    eprintln!("root template: Ready condition: {message}");
    assert!(
        message.contains("violates PodSecurity") && message.contains("restricted"),
        "the condition names the pod-security refusal: {message}"
    );
    s.finish(&[]).await;
}

/// A PostgreSQL database for one test, reachable from pods at `HOST_IP:port` through a
/// forwarder in the test process (PostgreSQL itself listens on 127.0.0.1 only).
struct Database {
    name: String,
    admin: tokio_postgres::Config,
    url_for_pods: String,
    port: u16,
    forwarder: tokio::task::JoinHandle<()>,
}

/// The host's end of the veth pair to the real node.
const HOST_IP: &str = "10.245.255.1";

async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl Database {
    async fn create(schema: &str) -> Database {
        let url = std::env::var("PREVIEWD_PG_URL")
            .expect("PREVIEWD_PG_URL is not set: run scripts/pg-up (scripts/test does)");
        let admin = tokio_postgres::Config::from_str(&url).unwrap();
        let name = format!("pvd_realnode_{}", unique_suffix());
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut config = admin.clone();
        config.dbname(&name);
        connect(&config).await.batch_execute(schema).await.unwrap();
        let target = {
            let host = match admin.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".into(),
            };
            format!(
                "{host}:{}",
                admin.get_ports().first().copied().unwrap_or(5432)
            )
        };
        let listener = tokio::net::TcpListener::bind((HOST_IP, 0))
            .await
            .expect("listen on the host's end of the real node's veth");
        let port = listener.local_addr().unwrap().port();
        let forwarder = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let (user, password) = (
            admin.get_user().unwrap_or("previewd").to_string(),
            String::from_utf8_lossy(admin.get_password().unwrap_or_default()).to_string(),
        );
        Database {
            url_for_pods: format!("postgres://{user}:{password}@{HOST_IP}:{port}/{name}"),
            name,
            admin,
            port,
            forwarder,
        }
    }

    async fn count(&self, table: &str) -> i64 {
        let mut config = self.admin.clone();
        config.dbname(&self.name);
        connect(&config)
            .await
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn drop(self) {
        self.forwarder.abort();
        connect(&self.admin)
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

/// Item 4: the seed Job runs `previewd seed-data` from the operator image against a
/// PostgreSQL reached through the egress allow-list, the test Job runs the test-runner
/// image, and their termination messages drive Testing → Complete, or Failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_test_jobs_run_their_images() {
    let s = Setup::new("rn-stages").await;
    let db = Database::create(
        "CREATE TABLE teams (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE people (id serial PRIMARY KEY, email text NOT NULL UNIQUE,
                              team_id int NOT NULL REFERENCES teams);",
    )
    .await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "preview-database", "labels": {"previewd.io/preview-secret": "true"},
                     "annotations": {"previewd.io/allowed-repositories": "realnode/*"}},
        "stringData": {"url": db.url_for_pods}
    }))
    .unwrap();
    Api::<Secret>::namespaced(s.client.clone(), &s.secrets)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let stages = |args: Vec<&str>| {
        json!({
            "secrets": [{"name": "preview-database"}],
            "egress": [{"cidrs": [format!("{HOST_IP}/32")], "ports": [{"port": db.port}]}],
            "testData": {"enabled": true, "counts": {"people": 40}, "defaultRows": 3, "seed": 7},
            "tests": {"enabled": true, "image": s.images.testrunner, "args": args, "timeout": "5m"}
        })
    };
    let passing = s.repository("stages-pass", stages(vec![])).await;
    let env = s.open(&passing, 1, SHA1).await;
    s.wait_phase(&env, Phase::Testing).await;
    let done = s.wait_phase(&env, Phase::Complete).await;
    let status = done.status.unwrap();
    let data = status.test_data.expect("status.testData");
    eprintln!("seed: {data:?}");
    assert_eq!(data.state, "Seeded", "{data:?}");
    assert_eq!(data.rows, Some(43), "{data:?}");
    assert_eq!(db.count("people").await, 40);
    let tests = status.tests.expect("status.tests");
    eprintln!("tests: {tests:?}");
    assert_eq!(
        (tests.total, tests.passed, tests.failed),
        (2, 2, 0),
        "{tests:?}"
    );
    assert_eq!(tests.state.as_deref(), Some("Passed"));

    // A run whose test fails: the runner's own summary fails the environment. It finds the
    // data seeded by the first run and adds none.
    let failing = s
        .repository("stages-fail", stages(vec!["expect/no-such-text"]))
        .await;
    let env = s.open(&failing, 2, SHA1).await;
    let failed = s.wait_phase(&env, Phase::Failed).await;
    let tests = failed.status.unwrap().tests.expect("status.tests");
    eprintln!("failing run: {tests:?}");
    assert_eq!(
        (tests.total, tests.passed, tests.failed),
        (3, 2, 1),
        "{tests:?}"
    );
    assert_eq!(
        tests.failed_tests,
        vec!["preview.expect/no-such-text".to_string()]
    );
    s.finish(&[]).await;
    db.drop().await;
}

/// Item 5: sleep stops the containers on the node; wake brings them back answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_stops_the_containers_and_wake_brings_them_back() {
    let s = Setup::new("rn-sleep").await;
    let repo = s.repository("sleep", json!({})).await;
    let env = s.open(&repo, 1, SHA1).await;
    s.wait_phase(&env, Phase::Ready).await;
    let ns = namespace_of(&s.envs(), &env).await;
    let url = service_url(&s.client, &ns, "web").await;
    s.front.answers(&url, &[SHA1]).await;
    assert!(
        !running_containers(&ns).is_empty(),
        "the app runs before sleep"
    );

    let annotate = |value: Value| {
        let envs = s.envs();
        let env = env.clone();
        async move {
            envs.patch(
                &env,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"previewd.io/sleep": value}}})),
            )
            .await
            .unwrap();
        }
    };
    annotate(json!("command")).await;
    let envs = s.envs();
    eventually(PHASE_TIMEOUT, "the Sleeping condition", || {
        let envs = envs.clone();
        let env = env.clone();
        async move {
            let e = envs.get(&env).await.ok()?;
            (condition_status(&e, "Sleeping") == "True").then_some(())
        }
    })
    .await;
    eventually(
        PHASE_TIMEOUT,
        "no container of the preview running on the node",
        || {
            let ns = ns.clone();
            async move { running_containers(&ns).is_empty().then_some(()) }
        },
    )
    .await;
    let asleep = s.front.fetch(&url);
    assert!(!asleep.reached, "nothing answers while asleep: {asleep:?}");

    annotate(Value::Null).await;
    eventually(PHASE_TIMEOUT, "awake and Ready", || {
        let envs = envs.clone();
        let env = env.clone();
        async move {
            let e = envs.get(&env).await.ok()?;
            (condition_status(&e, "Sleeping") != "True" && condition_status(&e, "Ready") == "True")
                .then_some(())
        }
    })
    .await;
    let body = s.front.answers(&url, &[SHA1]).await;
    eprintln!("after wake: {body}");
    assert!(!running_containers(&ns).is_empty());
    s.finish(&[]).await;
}
