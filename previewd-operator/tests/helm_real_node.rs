//! The Helm chart installed for real: the `helm` binary (built from its Go module by
//! testenv) installs `deploy/helm/previewd` with the image built from the repository's
//! Dockerfile onto testenv's real node, under the chart's own RBAC and admission policy.
//! The test drives the operator only through its webhook Service (signed deliveries) and
//! the API: a preview reaches Ready on the real node and answers (fetched from a pod in the
//! namespace its policy admits as the ingress controller's), an upgrade to a new image keeps
//! the environment and what its deliveries recorded, and closing the pull request removes it.
//!
//! Built only with the `real-node` feature: `scripts/test` starts the real node and runs it
//! with `--features real-node`, and then it fails (never skips) when the node is not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod realnode;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hmac::{Hmac, Mac};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::crd::{ANNOTATION_DELIVERY, PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::{client, delete_namespace, eventually, temp_namespace, unique_suffix};
use realnode::*;
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "real-node-webhook-secret";
const TIMEOUT: Duration = Duration::from_secs(240);
const OPENED: &str = include_str!("../../examples/demo/pull_request.opened.json");
const CLOSED: &str = include_str!("../../examples/demo/pull_request.closed.json");

fn helm() -> String {
    match std::env::var("PREVIEWD_TESTENV_HELM") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "PREVIEWD_TESTENV_HELM is not set: it comes from the env file of \
             `PREVIEWD_TESTENV_REAL_NODE=1 testenv/up` (scripts/test sources it)"
        ),
    }
}

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/previewd")
}

/// Runs helm with `args`; panics with its output when it fails.
fn run_helm(args: &[&str]) -> String {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {args:?} failed:\n{text}");
    text
}

/// `repository` and `tag` of an image reference `repository:tag`.
fn split_image(image: &str) -> (&str, &str) {
    image
        .rsplit_once(':')
        .expect("an image reference with a tag")
}

/// POSTs a signed GitHub delivery to the webhook Service's ClusterIP; the status code.
async fn deliver(url: &str, event: &str, delivery: &str, payload: &Value) -> Result<u16, String> {
    let body = serde_json::to_vec(payload).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    http.post(url)
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("POST {url}: {e}"))
}

/// Delivers like GitHub, which redelivers (same delivery id) what was not accepted: the
/// status once the webhook answers other than 503. Right after a rollout the Service may
/// have no endpoint yet, or still send requests to an operator that is shutting down (503).
async fn deliver_accepted(url: &str, event: &str, delivery: &str, payload: &Value) -> u16 {
    let mut redeliveries = 0;
    loop {
        let outcome = deliver(url, event, delivery, payload).await;
        match outcome {
            Ok(status) if status != 503 => {
                if redeliveries > 0 {
                    eprintln!("delivery {delivery}: {status} after {redeliveries} redeliveries");
                }
                return status;
            }
            _ if redeliveries < 40 => {
                redeliveries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("delivery {delivery} never accepted: {other:?}"),
        }
    }
}

/// Waits until the operator's Deployment `deployment` has rolled out `image` and returns
/// its Ready pod.
async fn operator_pod(client: &Client, namespace: &str, deployment: &str, image: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    eventually(TIMEOUT, &format!("the operator running {image}"), || {
        let pods = pods.clone();
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(deployment).await.ok()?;
            let status = d.status?;
            let want = d.spec.as_ref()?.replicas?;
            (status.updated_replicas? == want && status.available_replicas? == want)
                .then_some(())?;
            (status.replicas? == want).then_some(())?;
            let selector = d
                .spec
                .as_ref()?
                .selector
                .match_labels
                .as_ref()?
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let mut running = list.items.into_iter().filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().map(|s| s.containers[0].image.as_deref())
                        == Some(Some(image))
            });
            let pod = running.next()?;
            let ready = pod
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(pod)
        }
    })
    .await
}

fn describe(pod: &Pod) -> String {
    let status = pod.status.as_ref().unwrap();
    let container = &status.container_statuses.as_ref().unwrap()[0];
    format!(
        "pod {} on {} Ready, image {} ({}), restarts {}",
        pod.name_any(),
        pod.spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref()
            .unwrap_or("?"),
        container.image,
        container.image_id,
        container.restart_count
    )
}

async fn environment(envs: &Api<PreviewEnvironment>) -> Option<PreviewEnvironment> {
    envs.list(&ListParams::default().labels("previewd.io/pr=1234"))
        .await
        .ok()?
        .items
        .into_iter()
        .next()
}

async fn wait_ready_at(envs: &Api<PreviewEnvironment>, sha: &str) -> PreviewEnvironment {
    eventually(TIMEOUT, &format!("the environment Ready at {sha}"), || {
        let envs = envs.clone();
        async move {
            let env = environment(&envs).await?;
            let status = env.status.as_ref()?;
            (status.phase? == Phase::Ready && status.deployed_sha.as_deref() == Some(sha))
                .then_some(env)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_the_image_and_the_operator_serves_previews() {
    let client = client().await;
    require_node(&client).await;
    let images = images();
    let system = temp_namespace(&client, "rn-helm-system").await;
    let team = temp_namespace(&client, "rn-helm-team").await;
    // The namespace the previews' policies admit as their ingress controller's, and a pod
    // there to fetch them from.
    let ingress = temp_namespace(&client, "rn-helm-ingress").await;
    let front = Prober::start(&client, &ingress, &images.app, false).await;
    // The chart names its objects after the release (which contains "previewd"), cluster-wide
    // ones included, so a run never meets what an earlier one left.
    let release = format!("previewd-{}", unique_suffix());
    let (repository, tag) = split_image(&images.operator);
    let (_, next_tag) = split_image(&images.operator_next);
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // The chart installs the CRDs and keeps them after an uninstall: a cluster that ran
    // this test before has them under an earlier release, which this one takes over.
    let install = run_helm(&[
        "install",
        &release,
        chart,
        "--take-ownership",
        "--namespace",
        &system,
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={tag}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "controller.replicas=1",
        "--set",
        "webhook.replicas=1",
        "--set",
        &format!("watchNamespace={team}"),
        "--set",
        &format!("ingressNamespace={ingress}"),
        "--set",
        "baseDomain=preview.test",
        "--set",
        "logFormat=text",
        "--set",
        "controller.readinessTimeout=4m",
        "--set",
        &format!("github.webhookSecret.value={SECRET}"),
    ]);
    eprintln!("helm install:\n{install}");

    // The controller and, apart from it (the chart's default), the webhook.
    let pod = operator_pod(&client, &system, &release, &images.operator).await;
    eprintln!("{}", describe(&pod));
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE));
    let webhook_pod = operator_pod(
        &client,
        &system,
        &format!("{release}-webhook"),
        &images.operator,
    )
    .await;
    eprintln!("webhook: {}", describe(&webhook_pod));

    // The repository's settings, then a signed pull_request delivery through the Service.
    let repo: PreviewRepository = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "acme-shop"},
        "spec": {
            "repository": "acme/shop",
            "baseDomain": "preview.test",
            "tls": false,
            "defaultTier": "minimal",
            "catalogue": {"services": [
                {"name": "web", "image": images.app, "port": 8080, "ingressPath": "/"}
            ]}
        }
    }))
    .unwrap();
    Api::<PreviewRepository>::namespaced(client.clone(), &team)
        .create(&PostParams::default(), &repo)
        .await
        .unwrap();
    let webhook = format!(
        "{}webhook",
        service_url(&client, &system, &format!("{release}-webhook")).await
    );
    let opened: Value = serde_json::from_str(OPENED).unwrap();
    let sha1 = opened["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_string();
    let first_delivery = format!("realnode-{}", unique_suffix());
    assert_eq!(
        deliver_accepted(&webhook, "pull_request", &first_delivery, &opened).await,
        202
    );

    // The webhook recorded in the repository's status that it is the repository's binding.
    let repos: Api<PreviewRepository> = Api::namespaced(client.clone(), &team);
    eventually(TIMEOUT, "the Claimed condition on the repository", || {
        let repos = repos.clone();
        async move {
            let repo = repos.get("acme-shop").await.ok()?;
            let claimed = repo
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Claimed")?;
            (claimed.status == "True").then_some(())
        }
    })
    .await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &team);
    let env = wait_ready_at(&envs, &sha1).await;
    let preview_ns = env.status.as_ref().unwrap().namespace.clone().unwrap();
    assert_eq!(
        nodes_of_pods(&client, &preview_ns, "previewd.io/service=web").await,
        vec![NODE.to_string()]
    );
    let url = service_url(&client, &preview_ns, "web").await;
    let body = front.answers(&url, &[&format!("sha={sha1}")]).await;
    eprintln!("GET {url}:\n{body}");
    assert_eq!(
        env.annotations().get(ANNOTATION_DELIVERY),
        Some(&first_delivery)
    );

    // Upgrade to another image: the environment and its record of the delivery stay.
    let upgrade = run_helm(&[
        "upgrade",
        &release,
        chart,
        "--namespace",
        &system,
        "--reuse-values",
        "--set",
        &format!("image.tag={next_tag}"),
    ]);
    eprintln!("helm upgrade:\n{upgrade}");
    let pod = operator_pod(&client, &system, &release, &images.operator_next).await;
    eprintln!("after the upgrade: {}", describe(&pod));
    operator_pod(
        &client,
        &system,
        &format!("{release}-webhook"),
        &images.operator_next,
    )
    .await;
    let kept = environment(&envs)
        .await
        .expect("the environment survives the upgrade");
    assert_eq!(kept.uid(), env.uid());
    assert_eq!(
        kept.annotations().get(ANNOTATION_DELIVERY),
        Some(&first_delivery)
    );
    assert_eq!(kept.status.as_ref().unwrap().phase, Some(Phase::Ready));

    // The new operator takes the next delivery: a push, then the close.
    let sha2 = "7777777777777777777777777777777777777777";
    let mut pushed = opened.clone();
    pushed["action"] = json!("synchronize");
    pushed["pull_request"]["head"]["sha"] = json!(sha2);
    pushed["pull_request"]["updated_at"] = json!("2026-11-25T11:00:00Z");
    let push_delivery = format!("realnode-{}", unique_suffix());
    assert_eq!(
        deliver_accepted(&webhook, "pull_request", &push_delivery, &pushed).await,
        202
    );
    wait_ready_at(&envs, sha2).await;
    front.answers(&url, &[&format!("sha={sha2}")]).await;

    let closed: Value = serde_json::from_str(CLOSED).unwrap();
    let close_delivery = format!("realnode-{}", unique_suffix());
    assert_eq!(
        deliver_accepted(&webhook, "pull_request", &close_delivery, &closed).await,
        202
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(TIMEOUT, "the environment and its namespace gone", || {
        let envs = envs.clone();
        let namespaces = namespaces.clone();
        let preview_ns = preview_ns.clone();
        async move {
            environment(&envs).await.is_none().then_some(())?;
            namespaces
                .get_opt(&preview_ns)
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    run_helm(&["uninstall", &release, "--namespace", &system]);
    for ns in [&team, &system, &ingress] {
        delete_namespace(&client, ns).await;
    }
}
