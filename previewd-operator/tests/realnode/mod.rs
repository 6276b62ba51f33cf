//! Helpers of the tests that run containers on testenv's real node
//! (`PREVIEWD_TESTENV_REAL_NODE=1 PREVIEWD_TESTENV_NODES=0 testenv/up`; `scripts/test`
//! starts it and runs these tests with `--ignored`): the images testenv imported, pods that
//! fetch URLs from inside a namespace (`kubectl exec`), and what the node's containerd runs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use previewd_kube::testing::{eventually, unique_suffix};
use serde_json::json;

/// The real node's name.
pub const NODE: &str = "previewd-node";

/// How long pods on the real node get to start (images are local; the node has 2 CPUs).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

const NOT_RUNNING: &str = "the real node is not running: start it with \
    `PREVIEWD_TESTENV_STATE=~/.cache/previewd-testenv/real-node PREVIEWD_TESTENV_NODES=0 \
    PREVIEWD_TESTENV_REAL_NODE=1 testenv/up`, source the env file next to the KUBECONFIG it \
    prints, and run these tests with `--ignored` (scripts/test does all of that)";

/// The images testenv built and imported into the node's containerd.
pub struct Images {
    /// The preview app (`testenv/images/app`), by digest.
    pub app: String,
    /// The test runner (`testenv/images/testrunner`), by digest.
    pub testrunner: String,
    /// The operator image from the repository's Dockerfile.
    pub operator: String,
    /// The same operator under another tag and digest, to upgrade to.
    pub operator_next: String,
}

fn image(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{var} is not set; {NOT_RUNNING}"),
    }
}

/// The images, from the env file of testenv (panics with how to start the node).
pub fn images() -> Images {
    Images {
        app: image("PREVIEWD_TESTENV_IMAGE_APP"),
        testrunner: image("PREVIEWD_TESTENV_IMAGE_TESTRUNNER"),
        operator: image("PREVIEWD_TESTENV_IMAGE_OPERATOR"),
        operator_next: image("PREVIEWD_TESTENV_IMAGE_OPERATOR_NEXT"),
    }
}

/// Panics unless the real node exists and is Ready.
pub async fn require_node(client: &Client) {
    let node = Api::<Node>::all(client.clone())
        .get_opt(NODE)
        .await
        .expect("read the real node");
    let Some(node) = node else {
        panic!("no node {NODE} in the cluster; {NOT_RUNNING}")
    };
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node {NODE} is not Ready; {NOT_RUNNING}");
}

/// testenv's state directory (the KUBECONFIG lives there).
pub fn state_dir() -> PathBuf {
    let kubeconfig = PathBuf::from(std::env::var_os("KUBECONFIG").expect("KUBECONFIG"));
    kubeconfig.parent().expect("KUBECONFIG's directory").into()
}

/// `http://<ClusterIP>:<port>/` of a Service.
pub async fn service_url(client: &Client, namespace: &str, name: &str) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = services.get(name).await.expect("read the Service");
    let spec = service.spec.expect("Service spec");
    let ip = spec.cluster_ip.expect("ClusterIP");
    let port = spec.ports.expect("ports")[0].port;
    format!("http://{ip}:{port}/")
}

/// What a probe pod saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// A connection was made: an HTTP answer, or a TLS handshake that reached a server.
    pub reached: bool,
    /// The pod's output (the body, or the error).
    pub output: String,
}

/// The restricted pod spec of the app image running `args` (the image's entrypoint is `/app`).
fn app_pod(name: &str, app_image: &str, args: &[&str], labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": app_image,
                "args": args,
                "env": [{"name": "PREVIEWD_SERVICE", "value": name}],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "200m", "memory": "64Mi"}
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                }
            }]
        }
    }))
    .unwrap()
}

/// A pod running the app in a namespace, from which the tests fetch URLs (`kubectl exec
/// … /app fetch URL`), so its traffic is subject to that namespace's network policies.
pub struct Prober {
    pub namespace: String,
    pub pod: String,
    pub ip: String,
}

impl Prober {
    /// Starts the pod and, when `policed` (NetworkPolicies select it), waits until the node's
    /// policy enforcer has rules for its address: until then its own traffic is not
    /// filtered. (Other pods' rules may admit it a moment later still; checks that expect
    /// an answer poll with [`Prober::answers`].)
    pub async fn start(client: &Client, namespace: &str, app_image: &str, policed: bool) -> Prober {
        let pod = format!("client-{}", unique_suffix());
        let ip = app_server(client, namespace, app_image, &pod).await;
        if policed {
            let rule = format!("-s {ip}/32");
            eventually(
                START_TIMEOUT,
                &format!("the policy enforcer's rules for {ip}"),
                || {
                    let rule = rule.clone();
                    async move {
                        in_node_netns(&["iptables-save", "-t", "filter"])
                            .contains(&rule)
                            .then_some(())
                    }
                },
            )
            .await;
        }
        Prober {
            namespace: namespace.into(),
            pod,
            ip,
        }
    }

    /// Polls `app fetch URL` until the answer contains every one of `want`, and returns it.
    pub async fn answers(&self, url: &str, want: &[&str]) -> String {
        eventually(
            START_TIMEOUT,
            &format!("{url} answers {want:?} in {}", self.namespace),
            || async move {
                let p = self.fetch(url);
                (p.reached && want.iter().all(|w| p.output.contains(w))).then_some(p.output)
            },
        )
        .await
    }

    /// Polls until `url` is reached, and returns what was fetched.
    pub async fn reaches(&self, url: &str) -> Probe {
        eventually(
            START_TIMEOUT,
            &format!("{url} reached from {}", self.namespace),
            || async move {
                let p = self.fetch(url);
                p.reached.then_some(p)
            },
        )
        .await
    }

    /// `app fetch URL` from inside the pod.
    pub fn fetch(&self, url: &str) -> Probe {
        let out = Command::new("kubectl")
            .args(["exec", "-n", &self.namespace, &self.pod, "-c", "app", "--"])
            .args(["/app", "fetch", url])
            .output()
            .expect("run kubectl (on PATH from testenv's env file)");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let reached = out.status.success()
            || output.contains("x509")
            || output.contains("certificate")
            || output.lines().any(|l| l.starts_with("HTTP "));
        Probe { reached, output }
    }
}

/// Output of a command run in the real node's network namespace.
pub fn in_node_netns(args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg("--net=/run/netns/previewd-node")
        .args(args)
        .output()
        .expect("run nsenter");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `app serve` (port 8080) as pod `name` in `namespace` and returns its IP once it
/// is Running.
pub async fn app_server(client: &Client, namespace: &str, app_image: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod = app_pod(name, app_image, &["serve"], json!({"app": name}));
    pod.spec.as_mut().unwrap().restart_policy = Some("Always".into());
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create server pod {namespace}/{name}: {e}"));
    eventually(
        START_TIMEOUT,
        &format!("{namespace}/{name} running"),
        || {
            let pods = pods.clone();
            async move {
                let status = pods.get(name).await.ok()?.status?;
                (status.phase.as_deref() == Some("Running")).then_some(())?;
                status.pod_ip
            }
        },
    )
    .await
}

/// The nodes the pods of `namespace` run on (with `selector`, e.g. a service's label).
pub async fn nodes_of_pods(client: &Client, namespace: &str, selector: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect()
}

/// The containers the real node's containerd is running for pods of `namespace`, by id
/// (asked with `ctr`, not through the API server).
pub fn running_containers(namespace: &str) -> Vec<String> {
    let socket = state_dir().join("node/containerd.sock");
    let ctr = |args: &[&str]| {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let filter = format!("labels.\"io.kubernetes.pod.namespace\"=={namespace}");
    let of_namespace: Vec<String> = ctr(&["containers", "ls", "-q", &filter])
        .lines()
        .map(str::to_string)
        .collect();
    ctr(&["tasks", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let id = cols.next()?;
            let status = cols.nth(1)?;
            (status == "RUNNING" && of_namespace.iter().any(|c| c == id)).then(|| id.to_string())
        })
        .collect()
}

/// The name of an environment's namespace, once the controller chose it.
pub async fn namespace_of(envs: &Api<previewd_kube::crd::PreviewEnvironment>, env: &str) -> String {
    eventually(START_TIMEOUT, &format!("{env}'s namespace"), || {
        let envs = envs.clone();
        async move { envs.get(env).await.ok()?.status?.namespace }
    })
    .await
}

/// Prints one line of a measured matrix (shown by `cargo test -- --nocapture`).
pub fn report(from: &str, to: &str, probe: &Probe) {
    let verdict = if probe.reached { "allowed" } else { "blocked" };
    let first = probe.output.lines().next().unwrap_or_default();
    eprintln!("isolation: {from} -> {to}: {verdict} ({first})");
}
