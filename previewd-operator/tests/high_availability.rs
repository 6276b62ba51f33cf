//! Two `previewd` processes with `--leader-elect` on the local control plane: exactly one
//! reconciles; SIGKILL on the leader hands the controller over once the lease expires;
//! no environment is lost or duplicated, and no GitHub comment or deployment either; a
//! SIGTERM releases the lease at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../previewd-github/tests/fake_github/mod.rs"]
mod fake_github;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_github::{FakeGitHub, TOKEN};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{
    client, delete_namespace, eventually, install_crds, temp_namespace, unique_suffix,
};
use serde_json::json;

const LEASE_DURATION: Duration = Duration::from_secs(6);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    identity: String,
    admin_port: u16,
    webhook_port: u16,
    child: Child,
}

impl Replica {
    fn start(identity: &str, team: &str, home: &str, lease: &str, github: &FakeGitHub) -> Replica {
        let admin_port = free_port();
        let webhook_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_previewd"))
            .args([
                "run",
                "--ingress-namespace",
                "ingress-system",
                "--namespace",
                team,
                "--leader-elect",
            ])
            .args(["--leader-elect-lease-name", lease])
            .args(["--leader-elect-namespace", home])
            .args(["--leader-elect-identity", identity])
            .args([
                "--leader-elect-lease-duration",
                &format!("{}s", LEASE_DURATION.as_secs()),
            ])
            .args(["--leader-elect-grace-period", "2s"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
            .args(["--webhook-secret", "ha-test-secret", "--webhook-required"])
            .args([
                "--github-token",
                TOKEN,
                "--github-api-url",
                github.base_url().as_str(),
            ])
            .args(["--base-domain", "preview.test", "--log-format", "text"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Replica {
            identity: identity.into(),
            admin_port,
            webhook_port,
            child,
        }
    }

    async fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// `previewd_reconciles_total` from this replica's /metrics.
    async fn reconciles(&self) -> Option<u64> {
        let (_, body) = self.get(self.admin_port, "/metrics").await?;
        body.lines()
            .find(|l| l.starts_with("previewd_reconciles_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

fn environment(pr: u64, branch: &str) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": format!("shop-pr-{pr}")},
        "spec": {
            "repository": "acme/shop",
            "prNumber": pr,
            "branch": branch,
            "headSHA": "0123456789abcdef0123456789abcdef01234567",
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"}],
        }
    }))
    .unwrap()
}

async fn wait_ready(envs: &Api<PreviewEnvironment>, name: &str) {
    eventually(Duration::from_secs(120), &format!("{name} Ready"), || {
        let envs = envs.clone();
        async move {
            let env = envs.get_opt(name).await.ok().flatten()?;
            (env.status?.phase? == Phase::Ready).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_sigkill_hands_over() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin: Client = client().await;
    install_crds(&admin).await;
    let home = temp_namespace(&admin, "ha-home").await;
    let team = temp_namespace(&admin, "ha-team").await;
    let github = FakeGitHub::start().await;
    let lease = format!("previewd-ha-{}", unique_suffix());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &home);
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &team);

    let mut replicas = vec![
        Replica::start("replica-a", &team, &home, &lease, &github),
        Replica::start("replica-b", &team, &home, &lease, &github),
    ];
    let first = eventually(Duration::from_secs(30), "a lease holder", || {
        let leases = leases.clone();
        let lease = lease.clone();
        async move { holder(&leases, &lease).await }
    })
    .await;
    let leader = replicas
        .iter()
        .position(|r| r.identity == first)
        .expect("holder is one of ours");
    let standby = 1 - leader;

    // Both replicas serve the webhook.
    for r in &replicas {
        let port = r.webhook_port;
        eventually(
            Duration::from_secs(30),
            "webhook ready on every replica",
            || async move {
                let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                    .await
                    .ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
    }

    let suffix = unique_suffix();
    let pr_base = u64::from(u16::from_str_radix(&suffix[..4], 16).unwrap()) + 1;
    let (pr1, pr2) = (pr_base, pr_base + 100_000);
    envs.create(
        &PostParams::default(),
        &environment(pr1, &format!("ha-{suffix}-1")),
    )
    .await
    .unwrap();
    wait_ready(&envs, &format!("shop-pr-{pr1}")).await;

    // Exactly one replica reconciles.
    let leader_reconciles = replicas[leader].reconciles().await.expect("leader metrics");
    let standby_reconciles = replicas[standby]
        .reconciles()
        .await
        .expect("standby metrics");
    assert!(leader_reconciles > 0, "the leader reconciled nothing");
    assert_eq!(standby_reconciles, 0, "the standby reconciled");

    // The first environment's report reached GitHub. (The reporter queues in memory: a
    // report still queued when the leader is killed is not sent again by its successor,
    // which sees the phase already recorded.)
    eventually(
        Duration::from_secs(60),
        "first environment reported",
        || {
            let done = github.with(|s| !s.deployments.is_empty()).then_some(());
            async move { done }
        },
    )
    .await;

    // SIGKILL: no lease release; the standby takes over once the lease expires.
    let killed_at = Instant::now();
    replicas[leader].child.kill().unwrap();
    replicas[leader].child.wait().unwrap();
    envs.create(
        &PostParams::default(),
        &environment(pr2, &format!("ha-{suffix}-2")),
    )
    .await
    .unwrap();
    let standby_id = replicas[standby].identity.clone();
    eventually(LEASE_DURATION * 4, "the standby holds the lease", || {
        let leases = leases.clone();
        let lease = lease.clone();
        let standby_id = standby_id.clone();
        async move { (holder(&leases, &lease).await? == standby_id).then_some(()) }
    })
    .await;
    let handover = killed_at.elapsed();
    wait_ready(&envs, &format!("shop-pr-{pr2}")).await;
    let converged = killed_at.elapsed();
    eprintln!(
        "{{\"lease_duration_s\": {}, \"handover_s\": {:.2}, \"second_environment_ready_s\": {:.2}}}",
        LEASE_DURATION.as_secs(),
        handover.as_secs_f64(),
        converged.as_secs_f64()
    );
    // The lease protocol's promise: a dead holder is replaced within the lease duration
    // (plus the standby's retry interval).
    assert!(
        handover <= LEASE_DURATION + Duration::from_secs(3),
        "handover took {handover:?}"
    );

    // Nothing lost, nothing duplicated.
    let names: Vec<String> = envs
        .list(&Default::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.name_any())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let first_env = envs.get(&format!("shop-pr-{pr1}")).await.unwrap();
    assert_eq!(
        first_env.status.unwrap().phase,
        Some(Phase::Ready),
        "the first environment stays Ready"
    );
    eventually(
        Duration::from_secs(60),
        "both environments reported to GitHub",
        || {
            let (a, b) = github.with(|s| {
                let count = |pr: u64| {
                    s.log
                        .iter()
                        .filter(|l| {
                            l.method == "POST"
                                && l.path == format!("/repos/acme/shop/issues/{pr}/comments")
                        })
                        .count()
                };
                (count(pr1), count(pr2))
            });
            let deployments = github.with(|s| s.deployments.len());
            let done = (a + b >= 1 && deployments >= 2).then_some(());
            async move { done }
        },
    )
    .await;
    github.with(|s| {
        // Every PR's deployment lives in the one shared environment: one per PR.
        let mut per_environment: BTreeMap<String, usize> = BTreeMap::new();
        for d in &s.deployments {
            let key = format!("{} {}", d["environment"], d["payload"]["pull_request"]);
            *per_environment.entry(key).or_default() += 1;
        }
        assert!(
            per_environment.values().all(|n| *n == 1),
            "duplicated deployments: {per_environment:?}"
        );
        assert_eq!(per_environment.len(), 2, "{per_environment:?}");
        for pr in [pr1, pr2] {
            let created = s
                .log
                .iter()
                .filter(|l| {
                    l.method == "POST" && l.path == format!("/repos/acme/shop/issues/{pr}/comments")
                })
                .count();
            assert!(created <= 1, "PR {pr}: {created} comments created");
        }
    });

    // The new leader's /metrics after its part of the lifecycle: the key series are there
    // and sensible.
    // A delivery without a signature is refused and counted by event and outcome.
    let refused = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/webhook",
            replicas[standby].webhook_port
        ))
        .header("x-github-event", "ping")
        .header("x-github-delivery", "00000000-0000-0000-0000-000000000001")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let (_, metrics) = replicas[standby]
        .get(replicas[standby].admin_port, "/metrics")
        .await
        .expect("/metrics");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
    };
    assert!(value("previewd_reconciles_total") >= 2.0);
    assert!(value("previewd_reconcile_duration_seconds_count") >= 2.0);
    assert!(value("previewd_reconcile_duration_seconds_sum") > 0.0);
    assert_eq!(value("previewd_environments"), 2.0);
    assert!(value("previewd_phase_transitions_total{phase=\"Ready\"}") >= 1.0);
    assert!(value("previewd_github_rate_limit_remaining") > 0.0);
    assert!(
        metrics.contains("previewd_github_requests_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("previewd_webhook_deliveries_total{event=\"ping\","),
        "{metrics}"
    );

    // Clean up while the new leader runs the finalizers, then stop it gracefully: the lease
    // is released at once instead of expiring.
    for pr in [pr1, pr2] {
        envs.delete(&format!("shop-pr-{pr}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(90), "environments deleted", || {
        let envs = envs.clone();
        async move {
            envs.list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let survivor = replicas.remove(standby);
    survivor.signal("TERM");
    let stopped_at = Instant::now();
    eventually(Duration::from_secs(15), "lease released on SIGTERM", || {
        let leases = leases.clone();
        let lease = lease.clone();
        async move { holder(&leases, &lease).await.is_none().then_some(()) }
    })
    .await;
    assert!(
        stopped_at.elapsed() < LEASE_DURATION,
        "released only after {:?}",
        stopped_at.elapsed()
    );
    drop(survivor);
    delete_namespace(&admin, &team).await;
    delete_namespace(&admin, &home).await;
}
