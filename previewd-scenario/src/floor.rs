//! The floor: what the cluster must do anyway. The same N × S objects previewd renders for
//! N environments of S services (namespace, quota, limit range, two network policies,
//! S Deployments and Services, one Ingress), rendered by previewd's own functions
//! ([`previewd_kube::plan::desired_objects`]) from the same repository settings, then
//! server-side applied straight to the API server by parallel clients with no operator
//! running; then torn down the way previewd tears an environment down (its Deployments,
//! then its namespace). The times from the first apply to every Deployment available and
//! from the first delete to every namespace gone are what previewd's figures are divided
//! by.
//!
//! Environments are started at the scale run's delivery rate, so both see the same
//! arrivals; each client applies one environment's objects in order (namespace first),
//! as the controller does, and takes the next.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use previewd_kube::children::LABEL_ENV_NAMESPACE;
use previewd_kube::plan::PlannerConfig;
use previewd_kube::plan::object::DesiredObject;
use previewd_kube::strategy::CatalogueStrategy;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::github::PullState;
use crate::stats::percentiles;
use crate::webhook::{sha, time};

/// Field manager of the floor's writes.
pub const FLOOR_MANAGER: &str = "previewd-floor";
/// The base domain the scenario's operator runs with (its hosts are the floor's too).
pub const BASE_DOMAIN: &str = "preview.scenario.test";

/// Flags of `previewd-scenario floor`.
#[derive(Clone, Debug, Args)]
pub struct FloorArgs {
    /// Environments.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub environments: u64,
    /// Services per environment.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub services: u64,
    /// Environments started per second (the scale run's delivery rate).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Parallel clients, each with its own connections (the operator's default
    /// `--concurrency`).
    #[arg(long, default_value_t = usize::from(previewd_kube::controller::DEFAULT_CONCURRENCY))]
    pub clients: usize,
    /// Longest wait for each stage, seconds.
    #[arg(long, default_value_t = 1200)]
    pub stage_timeout: u64,
}

/// What one floor run measured.
#[derive(Clone, Debug, Default)]
pub struct FloorRun {
    /// First apply → every Deployment available.
    pub all_available: Option<Duration>,
    /// First delete → every namespace gone.
    pub all_gone: Option<Duration>,
    /// Objects applied per environment.
    pub objects_per_environment: usize,
    /// Latency of every apply (one API write each).
    pub write_latency: Vec<Duration>,
    /// Stages that did not finish in time.
    pub errors: Vec<String>,
    /// Writes to the API server while provisioning, by writer (from the audit log).
    pub writes_provisioning: Option<crate::audit::Writes>,
    /// Writes to the API server while tearing down.
    pub writes_teardown: Option<crate::audit::Writes>,
    /// Environments.
    pub environments: u64,
}

impl FloorRun {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "created_to_all_available_s": self.all_available.map(|d| d.as_secs_f64()),
            "deleted_to_all_gone_s": self.all_gone.map(|d| d.as_secs_f64()),
            "objects_per_environment": self.objects_per_environment,
            "api_write_latency_ms": percentiles(&self.write_latency),
            "api_writes_provisioning": self.writes_provisioning.as_ref().map(|w| w.to_json(
                self.environments, self.all_available.map(|d| d.as_secs_f64()).unwrap_or(0.0))),
            "api_writes_teardown": self.writes_teardown.as_ref().map(|w| w.to_json(
                self.environments, self.all_gone.map(|d| d.as_secs_f64()).unwrap_or(0.0))),
            "errors": self.errors,
        })
    }
}

/// The objects of environment `number` of a floor run labelled `run` (the value of its
/// objects' `previewd.io/env-namespace` label), as previewd renders them for the
/// scenario's repository settings.
pub fn environment_objects(
    run: &str,
    number: u64,
    services: usize,
    image: &str,
) -> anyhow::Result<Vec<DesiredObject>> {
    let settings = crate::cluster::repository(run, services, "4h", None, image)?;
    let pull = PullState {
        open: true,
        head_sha: sha(number),
        // Another branch than the scale run's PRs, so the namespaces never collide.
        branch: format!("floor/{number}"),
        labels: vec![],
        updated_at: time(10),
    };
    let event: previewd_github::event::PullRequestEvent =
        serde_json::from_value(crate::webhook::payload("opened", number, &pull, None))?;
    let mut env =
        previewd_github::webhook::desired_environment(&event, &settings, None, "floor", None)?;
    // A UID, as the API server gives one: the namespace carries it as its owner marker.
    env.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    let config = PlannerConfig {
        base_domain: BASE_DOMAIN.into(),
        ..PlannerConfig::default()
    };
    let namespace = previewd_kube::plan::namespace::primary_name(&env);
    let host = previewd_kube::plan::host::requested_host(&env, &config);
    previewd_kube::plan::desired_objects(
        &env,
        &namespace,
        Some(&host),
        &config,
        &CatalogueStrategy,
        Some(&settings),
        jiff::Timestamp::now(),
    )
    .map_err(|e| anyhow::anyhow!("{}: {}", e.reason, e.message))
}

fn api_for(client: &Client, object: &DesiredObject) -> Api<DynamicObject> {
    match &object.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &object.resource),
        None => Api::all_with(client.clone(), &object.resource),
    }
}

/// What the floor's watches saw.
#[derive(Default)]
struct Seen {
    available: HashSet<String>,
    namespaces_gone: HashSet<String>,
    all_available_at: Option<Instant>,
    all_gone_at: Option<Instant>,
}

/// `previewd-scenario floor`: one floor run on its own.
pub async fn run(args: FloorArgs) -> anyhow::Result<Value> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer()
        .await
        .context("no cluster: set KUBECONFIG (export $(testenv/up | tail -n1))")?;
    let started = Instant::now();
    let floor = measure(
        &config,
        args.environments,
        args.services as usize,
        args.rate,
        args.clients,
        Duration::from_secs(args.stage_timeout),
    )
    .await?;
    let mut value = floor.to_json();
    value["scenario"] = json!("floor");
    value["environments"] = json!(args.environments);
    value["services"] = json!(args.services);
    value["clients"] = json!(args.clients);
    value["wall_seconds"] = json!(started.elapsed().as_secs());
    Ok(value)
}

/// Applies N environments' objects with `clients` parallel clients, waits until every
/// Deployment is available, deletes them, waits until every namespace is gone.
pub async fn measure(
    config: &kube::Config,
    environments: u64,
    services: usize,
    rate: f64,
    clients: usize,
    stage_timeout: Duration,
) -> anyhow::Result<FloorRun> {
    let mut suffix = uuid::Uuid::new_v4().simple().to_string();
    suffix.truncate(8);
    let run = format!("floor-{suffix}");
    let image = "registry.k8s.io/pause:3.10";
    let mut all = Vec::with_capacity(environments as usize);
    for number in 1..=environments {
        all.push(environment_objects(&run, number, services, image)?);
    }
    let objects_per_environment = all.first().map_or(0, Vec::len);
    let namespaces: Vec<String> = all
        .iter()
        .filter_map(|objects| {
            objects
                .iter()
                .find(|o| o.resource.kind == "Namespace")
                .map(|o| o.name.clone())
        })
        .collect();
    let deployments = environments as usize * services;

    let client = Client::try_from(config.clone())?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    let selector = format!("{LABEL_ENV_NAMESPACE}={run}");
    let (synced_tx, mut synced) = tokio::sync::mpsc::channel::<()>(2);
    {
        let api: Api<Deployment> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&selector);
        let (seen, stop, synced_tx) = (seen.clone(), stop.clone(), synced_tx.clone());
        tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = stream.next() => e,
                };
                let Some(event) = event else { return };
                match event {
                    Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => {
                        let key = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        if previewd_kube::plan::health::deployment_available(&d) {
                            seen.available.insert(key);
                            if seen.available.len() >= deployments
                                && seen.all_available_at.is_none()
                            {
                                seen.all_available_at = Some(Instant::now());
                            }
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = synced_tx.try_send(());
                    }
                    _ => {}
                }
            }
        });
    }
    {
        let api: Api<Namespace> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&selector);
        let (seen, stop, synced_tx) = (seen.clone(), stop.clone(), synced_tx.clone());
        let expected = namespaces.len();
        tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = stream.next() => e,
                };
                let Some(event) = event else { return };
                match event {
                    Ok(watcher::Event::Delete(ns)) => {
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.namespaces_gone.insert(ns.name_any());
                        if seen.namespaces_gone.len() >= expected && seen.all_gone_at.is_none() {
                            seen.all_gone_at = Some(Instant::now());
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = synced_tx.try_send(());
                    }
                    _ => {}
                }
            }
        });
    }
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), synced.recv())
            .await
            .context("the floor's watches did not list within 60 s")?;
    }
    let mut floor = FloorRun {
        objects_per_environment,
        environments,
        ..FloorRun::default()
    };
    let audit = crate::audit::AuditLog::from_env();
    let mark0 = audit.as_ref().map(crate::audit::AuditLog::mark);

    // 1. Apply, environments started at `rate`, each client one environment at a time.
    eprintln!(
        "floor: applying {environments} environments × {objects_per_environment} objects with {clients} clients"
    );
    let all = Arc::new(all);
    let interval = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 10_000.0));
    let started = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients.max(1) {
        let client = Client::try_from(config.clone())?;
        let (all, next, latencies, failures) = (
            all.clone(),
            next.clone(),
            latencies.clone(),
            failures.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(objects) = all.get(i) else { return };
                tokio::time::sleep_until((started + interval * i as u32).into()).await;
                for object in objects {
                    let api = api_for(&client, object);
                    let params = PatchParams::apply(FLOOR_MANAGER).force();
                    // A refused write is retried, as the controller retries a reconcile.
                    for attempt in 0..20u32 {
                        let at = Instant::now();
                        let result = api
                            .patch(&object.name, &params, &Patch::Apply(&object.object))
                            .await;
                        let took = at.elapsed();
                        match result {
                            Ok(_) => {
                                latencies
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(took);
                                break;
                            }
                            Err(err) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                if attempt == 0 {
                                    eprintln!(
                                        "floor: apply {} {} failed: {err}; retrying",
                                        object.resource.kind, object.name
                                    );
                                }
                                tokio::time::sleep(Duration::from_millis(
                                    200 * u64::from(attempt + 1),
                                ))
                                .await;
                            }
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let deadline = Instant::now() + stage_timeout;
    loop {
        let (done, at) = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            (seen.available.len(), seen.all_available_at)
        };
        if let Some(at) = at {
            floor.all_available = Some(at - started);
            break;
        }
        if Instant::now() > deadline {
            floor.errors.push(format!(
                "floor: only {done} of {deployments} Deployments available after {stage_timeout:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("floor: all available after {:?}", floor.all_available);
    let mark1 = audit.as_ref().map(crate::audit::AuditLog::mark);

    // 2. Delete as previewd tears down: the Deployments, then the namespace.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients.max(1) {
        let client = Client::try_from(config.clone())?;
        let (all, next) = (all.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(objects) = all.get(i) else { return };
                tokio::time::sleep_until((started + interval * i as u32).into()).await;
                let workloads = objects.iter().filter(|o| o.resource.kind == "Deployment");
                let namespace = objects.iter().filter(|o| o.resource.kind == "Namespace");
                for object in workloads.chain(namespace) {
                    let _ = api_for(&client, object)
                        .delete(&object.name, &DeleteParams::background())
                        .await;
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + stage_timeout;
    let mut last_list = Instant::now();
    loop {
        if let Some(at) = seen.lock().unwrap_or_else(|e| e.into_inner()).all_gone_at {
            floor.all_gone = Some(at - started);
            break;
        }
        // A deletion the watch missed (it re-listed meanwhile) is caught by a list.
        if last_list.elapsed() > Duration::from_secs(2) {
            last_list = Instant::now();
            if let Ok(list) = ns_api
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                && list.items.is_empty()
            {
                floor.all_gone = Some(started.elapsed());
                break;
            }
        }
        if Instant::now() > deadline {
            let left = namespaces.len()
                - seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .namespaces_gone
                    .len();
            floor.errors.push(format!(
                "floor: {left} namespaces still there after {stage_timeout:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("floor: all gone after {:?}", floor.all_gone);
    let mark2 = audit.as_ref().map(crate::audit::AuditLog::mark);
    if let (Some(audit), Some(m0), Some(m1), Some(m2)) = (&audit, mark0, mark1, mark2) {
        floor.writes_provisioning = Some(audit.writes(&m0, &m1));
        floor.writes_teardown = Some(audit.writes(&m1, &m2));
    }
    stop.cancel();
    floor.write_latency = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    let refused = failures.load(Ordering::Relaxed);
    if refused > 0 {
        floor
            .errors
            .push(format!("floor: {refused} applies refused and retried"));
    }
    Ok(floor)
}

/// Figures of previewd beside their floor: `{"previewd": x, "floor": [y...], "ratio": x / mean(y)}`.
pub fn beside(previewd: Option<f64>, floors: &[Option<f64>]) -> Value {
    let known: Vec<f64> = floors.iter().flatten().copied().collect();
    let mean = (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
    let ratio = match (previewd, mean) {
        (Some(p), Some(f)) if f > 0.0 => Some((p / f * 1000.0).round() / 1000.0),
        _ => None,
    };
    json!({"previewd": previewd, "floor": floors, "ratio": ratio})
}

/// Counts per-namespace figures for the summary (a helper for tests).
pub fn kinds(objects: &[DesiredObject]) -> HashMap<String, usize> {
    let mut kinds = HashMap::new();
    for o in objects {
        *kinds.entry(o.resource.kind.clone()).or_default() += 1;
    }
    kinds
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_applies_what_previewd_renders_for_an_environment() {
        let objects =
            environment_objects("floor-test", 7, 5, "registry.k8s.io/pause:3.10").unwrap();
        let kinds = kinds(&objects);
        for (kind, n) in [
            ("Namespace", 1),
            ("ResourceQuota", 1),
            ("LimitRange", 1),
            ("NetworkPolicy", 2),
            ("Deployment", 5),
            ("Service", 5),
            ("Ingress", 1),
        ] {
            assert_eq!(kinds.get(kind).copied(), Some(n), "{kind}: {kinds:?}");
        }
        assert_eq!(objects.len(), 16);
        // The namespace comes first and everything else lives in it.
        assert_eq!(objects[0].resource.kind, "Namespace");
        let ns = objects[0].name.clone();
        assert!(
            objects[1..]
                .iter()
                .all(|o| o.namespace.as_deref() == Some(ns.as_str()))
        );
        // Labelled as previewd labels them, with the floor run in the env-namespace label.
        let labels = objects[0].object["metadata"]["labels"].as_object().unwrap();
        assert_eq!(labels[LABEL_ENV_NAMESPACE], "floor-test");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "previewd");
    }

    #[test]
    fn ratios_divide_by_the_mean_floor() {
        let v = beside(Some(120.0), &[Some(100.0), Some(140.0)]);
        assert_eq!(v["ratio"], json!(1.0));
        assert_eq!(beside(Some(1.0), &[None])["ratio"], Value::Null);
    }
}
