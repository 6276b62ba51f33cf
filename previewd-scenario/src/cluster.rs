//! The cluster side of a scenario: CRDs, the namespace that holds the repository
//! settings and environments, a watcher that timestamps what the operator does, and
//! restarts of the local control plane's own processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::children::LABEL_ENV_NAMESPACE;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Field manager of the scenario's own writes.
pub const MANAGER: &str = "previewd-scenario";

/// Installs the CRDs (forced server-side apply) and waits until they are Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in previewd_kube::crdgen::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established in 30 s"))??;
    }
    Ok(())
}

/// Creates the namespace `name` (labelled as a test namespace, so leftovers can be found).
pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"previewd.io/test": "true"}}
    }))?;
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Deletes a namespace the scenario created (background; everything in it goes too).
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Repository settings for `acme/shop` with `services` services of the pause image.
pub fn repository(
    namespace: &str,
    services: usize,
    ttl: &str,
    required_label: Option<&str>,
    image: &str,
) -> anyhow::Result<PreviewRepository> {
    let count = services;
    let services: Vec<serde_json::Value> = (0..services)
        .map(|i| {
            let mut s = json!({"name": format!("svc-{i}"), "image": image, "port": 8080});
            if i == 0 {
                s["ingressPath"] = json!("/");
            }
            s
        })
        .collect();
    let mut gating = json!({"skipDrafts": true});
    if let Some(label) = required_label {
        gating["requiredLabel"] = json!(label);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "acme-shop", "namespace": namespace},
        "spec": {
            "repository": "acme/shop",
            "baseDomain": "preview.scenario.test",
            "defaultTtl": ttl,
            "gating": gating,
            "catalogue": {"services": services},
            // Room for every service at the catalogue's default requests (250m CPU,
            // 512Mi memory each), twice over for rollouts that surge all at once: the
            // default quota holds 8 services.
            "quota": {
                "cpu": format!("{}m", 500 * count.max(4)),
                "memory": format!("{}Mi", 1024 * count.max(4)),
                "pods": 2 * count + 10
            }
        }
    }))?)
}

/// Applies repository settings.
pub async fn apply_repository(client: &Client, repo: &PreviewRepository) -> anyhow::Result<()> {
    let ns = repo.namespace().context("repository without namespace")?;
    let api: Api<PreviewRepository> = Api::namespaced(client.clone(), &ns);
    api.patch(
        &repo.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(repo),
    )
    .await
    .context("applying the PreviewRepository")?;
    Ok(())
}

/// One observed state of an environment.
#[derive(Clone, Debug)]
pub struct Sighting {
    /// When the watch delivered it.
    pub at: Instant,
    /// The same moment on the wall clock.
    pub wall: Timestamp,
    /// Phase.
    pub phase: Option<Phase>,
    /// Deployed commit.
    pub deployed_sha: Option<String>,
    /// `status.expiresAt`.
    pub expires_at: Option<Timestamp>,
    /// Deletion requested.
    pub deleting: bool,
    /// Preview namespace.
    pub namespace: Option<String>,
}

#[derive(Default)]
struct Seen {
    envs: HashMap<String, Vec<Sighting>>,
    namespaces_gone: HashMap<String, Instant>,
}

/// Timestamps what the operator does, from two watches (environments in the scenario's
/// namespace, preview namespaces). Reads go straight to the API server, not through the
/// counting proxy.
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tracker {
    /// Starts both watches and waits until their first lists are in.
    pub async fn start(client: &Client, namespace: &str) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(2);
        let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), namespace);
        {
            let seen = seen.clone();
            let stop = stop.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = watcher(envs, watcher::Config::default()).boxed();
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = stream.next() => e,
                    };
                    let Some(event) = event else { return };
                    let now = Instant::now();
                    match event {
                        Ok(watcher::Event::Apply(env) | watcher::Event::InitApply(env)) => {
                            record(&seen, &env, now, false)
                        }
                        Ok(watcher::Event::Delete(env)) => record(&seen, &env, now, true),
                        Ok(watcher::Event::InitDone) => {
                            let _ = tx.try_send(());
                        }
                        Ok(watcher::Event::Init) | Err(_) => {}
                    }
                }
            });
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let selector = format!("{LABEL_ENV_NAMESPACE}={namespace}");
        {
            let seen = seen.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut stream =
                    watcher(namespaces, watcher::Config::default().labels(&selector)).boxed();
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = stream.next() => e,
                    };
                    let Some(event) = event else { return };
                    match event {
                        Ok(watcher::Event::Delete(ns)) => {
                            lock(&seen)
                                .namespaces_gone
                                .insert(ns.name_any(), Instant::now());
                        }
                        Ok(watcher::Event::InitDone) => {
                            let _ = tx.try_send(());
                        }
                        _ => {}
                    }
                }
            });
        }
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .context("watches did not list within 60 s")?;
        }
        Ok(Tracker { seen, stop })
    }

    /// First time after `since` that `name` was Ready at `sha`.
    pub fn ready_at(&self, name: &str, sha: &str, since: Instant) -> Option<Instant> {
        lock(&self.seen).envs.get(name).and_then(|s| {
            s.iter()
                .find(|s| {
                    s.at >= since
                        && !s.deleting
                        && s.phase == Some(Phase::Ready)
                        && s.deployed_sha.as_deref() == Some(sha)
                })
                .map(|s| s.at)
        })
    }

    /// Latest sighting of `name`.
    pub fn latest(&self, name: &str) -> Option<Sighting> {
        lock(&self.seen)
            .envs
            .get(name)
            .and_then(|s| s.last().cloned())
    }

    /// All sightings of `name`.
    pub fn history(&self, name: &str) -> Vec<Sighting> {
        lock(&self.seen).envs.get(name).cloned().unwrap_or_default()
    }

    /// When namespace `ns` was seen deleted.
    pub fn namespace_gone(&self, ns: &str) -> Option<Instant> {
        lock(&self.seen).namespaces_gone.get(ns).copied()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn record(seen: &Mutex<Seen>, env: &PreviewEnvironment, at: Instant, deleted: bool) {
    let status = env.status.clone().unwrap_or_default();
    let sighting = Sighting {
        at,
        wall: Timestamp::now(),
        phase: if deleted { None } else { status.phase },
        deployed_sha: status.deployed_sha,
        expires_at: status.expires_at.map(|t| t.0),
        deleting: deleted || env.metadata.deletion_timestamp.is_some(),
        namespace: status.namespace,
    };
    let mut seen = lock(seen);
    let list = seen.envs.entry(env.name_any()).or_default();
    let changed = list.last().is_none_or(|last| {
        last.phase != sighting.phase
            || last.deployed_sha != sighting.deployed_sha
            || last.deleting != sighting.deleting
            || last.namespace != sighting.namespace
            || last.expires_at != sighting.expires_at
    });
    if changed {
        list.push(sighting);
    }
}

/// The local control plane's state directory for `KUBECONFIG` (testenv puts the
/// kubeconfig at `$STATE/kubeconfig`), when it is one.
pub fn testenv_state(kubeconfig: &Path) -> Option<PathBuf> {
    let dir = kubeconfig.parent()?;
    dir.join(".previewd-testenv")
        .is_file()
        .then(|| dir.to_path_buf())
}

/// Restarts a control-plane process of the testenv in `state` (`etcd`,
/// `kube-apiserver`): SIGKILL, then the same command line again, logging to the same
/// file. Refuses the shared default state directory, which other test runs use.
pub async fn restart_component(state: &Path, name: &str) -> anyhow::Result<()> {
    let shared = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/previewd-testenv/run"))
        .unwrap_or_default();
    if state == shared {
        bail!(
            "refusing to restart {name} of the shared control plane in {}; start a private one with PREVIEWD_TESTENV_STATE",
            state.display()
        );
    }
    let pid_file = state.join("pids").join(format!("{name}.pid"));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .trim()
        .parse()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("{name} (pid {pid}) is not running"))?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let Some((program, args)) = argv.split_first() else {
        bail!("empty command line for {name}");
    };
    if Path::new(program).file_name().and_then(|f| f.to_str()) != Some(name) {
        bail!("pid {pid} is not {name}");
    }
    crate::operator::signal(pid, "KILL").await?;
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(state.join("logs").join(format!("{name}.log")))?;
    // setsid, like testenv/up, so the process outlives the scenario's process group.
    let child = std::process::Command::new("setsid")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("restarting {name}"))?;
    // setsid execs the program in place when the caller is not a group leader, so the
    // child's pid is the component's pid.
    std::fs::write(&pid_file, format!("{}\n", child.id()))?;
    Ok(())
}

/// Waits until the API server answers `/readyz`.
pub async fn wait_api_ready(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let request = http::Request::get("/readyz").body(Vec::new())?;
        if let Ok(text) = client.request_text(request).await
            && text.trim() == "ok"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("API server not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes a scenario's namespace `ns`: first the preview namespaces of its environments
/// (selected by the `previewd.io/env-namespace` label the operator puts on them, so only
/// this scenario's), then the environments' finalizers, then `ns` itself.
pub async fn remove_scenario(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{LABEL_ENV_NAMESPACE}={ns}");
    if let Ok(list) = namespaces
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await
    {
        for item in list.items {
            let _ = namespaces
                .delete(&item.name_any(), &DeleteParams::background())
                .await;
        }
    }
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = envs.list_metadata(&kube::api::ListParams::default()).await {
        for item in list.items {
            let patch = json!({"metadata": {"finalizers": null}});
            let _ = envs
                .patch(
                    &item.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
    }
    delete_namespace(client, ns).await;
}
