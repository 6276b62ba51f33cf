//! The scale scenario: N environments with S services each through signed webhooks,
//! all Ready, a no-op resync, short-TTL expiry, a webhook throughput burst, then every PR
//! closed until every namespace is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::github::PullState;
use crate::proxy::Counts;
use crate::rig::{Rig, RigOptions};
use crate::stats::percentiles;

/// Wait after the last environment is Ready before counting the no-op resync: one
/// history write interval of the operator (`HISTORY_FLUSH_INTERVAL`, 5 s) and a margin.
const HISTORY_SETTLE: Duration = Duration::from_secs(6);
use crate::webhook::{Answer, sha, time};

/// Flags of `previewd-scenario scale`.
#[derive(Clone, Debug, Args)]
pub struct ScaleArgs {
    /// Environments (pull requests).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub environments: u64,
    /// Services per environment.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub services: u64,
    /// Webhook deliveries per second while opening and closing.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Operator's `--resync-interval`, seconds; the no-op window lasts this plus 10 s.
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// Operator's `--concurrency` (its default).
    #[arg(long, default_value_t = previewd_kube::controller::DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// Environments with a short TTL, for the expiry lag.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=200))]
    pub ttl_environments: u64,
    /// Their TTL, seconds.
    #[arg(long, default_value_t = 20)]
    pub ttl_seconds: u64,
    /// Deliveries of the throughput burst (unchanged redeliveries).
    #[arg(long, default_value_t = 2000)]
    pub burst: u64,
    /// Concurrent clients of the burst (default: the webhook's in-flight limit, so that
    /// the burst measures handling, not refusals; more clients are answered 503
    /// `overloaded`, counted apart).
    #[arg(long, default_value_t = 32)]
    pub burst_concurrency: usize,
    /// Run without GitHub reporting.
    #[arg(long)]
    pub no_github: bool,
    /// How long to wait for GitHub reporting to catch up at the end, seconds.
    #[arg(long, default_value_t = 60)]
    pub github_drain_seconds: u64,
    /// Longest wait for each stage (all Ready, all gone), seconds.
    #[arg(long, default_value_t = 1200)]
    pub stage_timeout: u64,
    /// Keep the working directory (operator log) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The `previewd` binary (default: next to this program).
    #[arg(long, env = "PREVIEWD_BIN")]
    pub previewd_bin: Option<std::path::PathBuf>,
    /// Floor runs in the same run (the same objects applied without previewd, by
    /// parallel clients): 0 none, 1 before previewd, 2 before and after.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub floor_runs: u8,
    /// Parallel clients of the floor (default: the operator's `--concurrency`).
    #[arg(long)]
    pub floor_clients: Option<usize>,
    /// Extra flags for `previewd run` (repeatable), e.g. `--operator-arg=--github-writes-per-hour=500`.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    pub operator_args: Vec<String>,
}

struct Sent {
    at: Instant,
    /// The first attempt's answer (its latency is the webhook latency).
    first: Answer,
    /// The answer that ended the redeliveries (2xx unless patience ran out).
    answer: Answer,
    /// Attempts made (1 when the first was accepted).
    attempts: u32,
    /// From the first attempt to the accepted one.
    accepted_after: Duration,
}

/// How long a failed delivery is redelivered before the scenario gives up on it.
const REDELIVERY_PATIENCE: Duration = Duration::from_secs(600);
/// Longest wait between two redeliveries of one delivery (the wait doubles from 250 ms).
const REDELIVERY_MAX_WAIT: Duration = Duration::from_secs(10);

/// Sends one delivery per PR number at `rate` per second; returns when each was sent. A
/// delivery answered with an error (503 when the webhook sheds load or the API server is
/// slow) is redelivered until it is accepted, backing off as a redelivery job would
/// (GitHub itself never redelivers on its own); the first answer is kept, so failures
/// are counted, not hidden.
async fn send_all(
    rig: &Arc<Rig>,
    url: &str,
    numbers: &[u64],
    rate: f64,
    make: impl Fn(u64) -> crate::webhook::Delivery,
) -> anyhow::Result<Vec<Sent>> {
    let interval = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 10_000.0));
    let limit = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let d = make(*n);
        let permit = limit.clone().acquire_owned().await?;
        let (rig, url) = (rig.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let first = crate::webhook::send(&rig.http, &url, &d).await;
            drop(permit);
            let (answer, attempts) = if (200..300).contains(&first.status) {
                (first.clone(), 1)
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (answer, more) = rig
                    .deliver_backing_off(&url, &d, REDELIVERY_PATIENCE, REDELIVERY_MAX_WAIT)
                    .await;
                (answer, more + 1)
            };
            Sent {
                at,
                first,
                answer,
                attempts,
                accepted_after: at.elapsed(),
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await?);
    }
    Ok(out)
}

/// Deliveries whose first attempt was not accepted, by status and outcome, with the
/// attempts and the time they took to be accepted.
fn first_attempt_failures(sent: &[Sent]) -> Value {
    let mut by_answer = std::collections::BTreeMap::<String, u64>::new();
    let mut to_accept = Vec::new();
    let mut attempts = 0u64;
    for s in sent.iter().filter(|s| s.attempts > 1) {
        *by_answer
            .entry(format!("{} {}", s.first.status, s.first.outcome))
            .or_default() += 1;
        to_accept.push(s.accepted_after);
        attempts += u64::from(s.attempts);
    }
    json!({
        "deliveries": to_accept.len(),
        "by_first_answer": by_answer,
        "attempts": attempts,
        "accepted_after_ms": percentiles(&to_accept),
    })
}

fn per_env(counts: &Counts, n: u64) -> Value {
    let n = n.max(1) as f64;
    json!({
        "total": counts.total() as f64 / n,
        "reads": counts.reads() as f64 / n,
        "writes": counts.writes() as f64 / n,
        "watches": counts.watches(),
        "by_kind": counts.by_kind,
    })
}

/// `/proc/loadavg`'s three figures.
fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Runs the scenario; the result is the JSON object printed last.
pub async fn run(args: ScaleArgs) -> anyhow::Result<Value> {
    let started_all = Instant::now();
    let options = RigOptions {
        prefix: "scale".into(),
        services: args.services as usize,
        github: !args.no_github,
        resync_interval: format!("{}s", args.resync_seconds),
        cleanup_interval: "1h".into(),
        concurrency: args.concurrency,
        binary: args.previewd_bin.clone(),
        extra_args: args.operator_args.clone(),
        ..RigOptions::default()
    };
    let rig = Arc::new(Rig::new(&options).await?);
    let result = scenario(&rig, &args).await;
    let rig = Arc::try_unwrap(rig).map_err(|_| anyhow::anyhow!("rig still shared"))?;
    let keep = args.keep || result.is_err();
    eprintln!("operator log and kubeconfig: {}", rig.dir.display());
    rig.cleanup(keep).await;
    let mut value = result?;
    value["wall_seconds"] = json!(started_all.elapsed().as_secs());
    Ok(value)
}

/// One write to the API server every 100 ms while it runs, through the counting proxy as
/// the operator's writes go (not counted as the operator's): the latency of a single API
/// write at the same moment and on the same path as the webhook's. [`WriteProbe::start`]
/// applies a ConfigMap in the scenario's namespace; [`WriteProbe::environment`] creates,
/// in a namespace the operator does not reconcile, a copy of the first environment the
/// webhook created under a new name each time: the same kind of write as the webhook's
/// own (a server-side apply that creates an object of the same schema and size; the
/// API server takes about twice as long to create a `PreviewEnvironment` as to update
/// one).
struct WriteProbe {
    /// When each write started, and how long it took.
    latencies: Arc<std::sync::Mutex<Vec<(Instant, Duration)>>>,
    stop: tokio_util::sync::CancellationToken,
}

/// One probe write: a forced server-side apply of `body` (named in its metadata).
async fn apply_probe<K>(api: &kube::Api<K>, body: &Value) -> bool
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = kube::api::PatchParams::apply(crate::cluster::MANAGER).force();
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(name, &params, &kube::api::Patch::Apply(body))
        .await
        .is_ok()
}

impl WriteProbe {
    fn start(client: &kube::Client, namespace: &str) -> Self {
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), namespace);
        Self::run(move |i| {
            let api = api.clone();
            async move {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "scenario-write-probe"}, "data": {"n": i.to_string()}});
                apply_probe(&api, &body).await
            }
        })
    }

    /// Probes with the webhook's own kind of write, a create: `source` is where the
    /// webhook creates environments, `target` a namespace nothing reconciles (deleted
    /// with what the probe created when the run ends).
    fn environment(client: &kube::Client, source: &str, target: &str) -> Self {
        use previewd_kube::crd::PreviewEnvironment;
        let from: kube::Api<PreviewEnvironment> = kube::Api::namespaced(client.clone(), source);
        let to: kube::Api<PreviewEnvironment> = kube::Api::namespaced(client.clone(), target);
        let template: Arc<tokio::sync::Mutex<Option<Value>>> = Arc::default();
        let target = target.to_string();
        Self::run(move |i| {
            let (from, to, template, target) =
                (from.clone(), to.clone(), template.clone(), target.clone());
            async move {
                let mut template = template.lock().await;
                if template.is_none() {
                    let first = from
                        .list(&kube::api::ListParams::default().limit(1))
                        .await
                        .ok()
                        .and_then(|l| l.items.into_iter().next());
                    *template = first.map(|env| {
                        json!({"apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
                               "metadata": {"name": "scenario-write-probe", "namespace": target,
                                            "labels": env.metadata.labels,
                                            "annotations": env.metadata.annotations},
                               "spec": env.spec})
                    });
                }
                let Some(mut body) = template.clone() else {
                    return false;
                };
                drop(template);
                body["metadata"]["name"] = json!(format!("scenario-write-probe-{i}"));
                apply_probe(&to, &body).await
            }
        })
    }

    /// Calls `write` every 100 ms, keeping the latency of each that succeeds.
    fn run<F, Fut>(write: F) -> Self
    where
        F: Fn(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (out, token) = (latencies.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for i in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = token.cancelled() => return,
                }
                let at = Instant::now();
                if write(i).await {
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((at, at.elapsed()));
                }
            }
        });
        WriteProbe { latencies, stop }
    }

    fn finish(self) -> Vec<(Instant, Duration)> {
        self.stop.cancel();
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn floor_run(args: &ScaleArgs) -> anyhow::Result<crate::floor::FloorRun> {
    let config = kube::Config::infer().await?;
    crate::floor::measure(
        &config,
        args.environments,
        args.services as usize,
        args.rate,
        args.floor_clients.unwrap_or(usize::from(args.concurrency)),
        Duration::from_secs(args.stage_timeout),
    )
    .await
}

async fn scenario(rig: &Arc<Rig>, args: &ScaleArgs) -> anyhow::Result<Value> {
    let n = args.environments;
    let load_at_start = load_average();
    let mut floors = Vec::new();
    if args.floor_runs >= 1 {
        floors.push(floor_run(args).await?);
    }
    let operator = rig.start_operator().await?;
    let audit = crate::audit::AuditLog::from_env();
    let mark = || audit.as_ref().map(crate::audit::AuditLog::mark);
    let mark_open = mark();
    let rss = crate::operator::RssByStage::start(operator.pid, "provisioning");
    let probe_client = {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&rig.proxy.kubeconfig())?;
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(crate::proxy::PROBE_AGENT),
        ));
        kube::Client::try_from(config)?
    };
    let probe = WriteProbe::start(&probe_client, &rig.namespace);
    let probe_namespace = format!("{}-probe", rig.namespace);
    crate::cluster::create_namespace(&rig.client, &probe_namespace).await?;
    let environment_probe =
        WriteProbe::environment(&probe_client, &rig.namespace, &probe_namespace);
    let url = operator.webhook_url.clone();
    let numbers: Vec<u64> = (1..=n).collect();
    let pull = |number: u64, open: bool, at: u64| PullState {
        open,
        head_sha: sha(number),
        branch: format!("feature/{number}"),
        labels: vec![],
        updated_at: time(at),
    };

    // 1. Open every PR.
    eprintln!("opening {n} pull requests at {} per second", args.rate);
    let usage0 = operator.usage();
    let counts0 = rig.proxy.counts();
    let opened = send_all(rig, &url, &numbers, args.rate, |k| {
        rig.event("opened", k, &pull(k, true, 10), None)
    })
    .await?;
    let open_elapsed = opened.first().map(|s| s.at.elapsed()).unwrap_or_default();
    let rejected: Vec<u16> = opened
        .iter()
        .map(|s| s.answer.status)
        .filter(|s| !(200..300).contains(s))
        .collect();
    if !rejected.is_empty() {
        bail!(
            "{} opening deliveries failed: {:?}",
            rejected.len(),
            &rejected[..rejected.len().min(10)]
        );
    }
    let webhook_latency: Vec<Duration> = opened.iter().map(|s| s.first.latency).collect();
    let open_failures = first_attempt_failures(&opened);

    // A stage that times out is recorded and the run goes on, so the figures measured so
    // far are still printed.
    let mut errors: Vec<String> = Vec::new();

    // 2. Wait until every environment is Ready at its head.
    let deadline = Instant::now() + Duration::from_secs(args.stage_timeout);
    let mut ready: Vec<Option<Instant>> = vec![None; n as usize];
    loop {
        for (i, k) in numbers.iter().enumerate() {
            if ready[i].is_none() {
                ready[i] = rig
                    .tracker
                    .ready_at(&Rig::env_name(*k), &sha(*k), opened[i].at);
            }
        }
        let done = ready.iter().filter(|r| r.is_some()).count();
        if done == n as usize {
            break;
        }
        if Instant::now() > deadline {
            errors.push(format!(
                "only {done} of {n} environments Ready after {} s",
                args.stage_timeout
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_ready: Vec<Duration> = ready
        .iter()
        .zip(&opened)
        .filter_map(|(r, s)| r.map(|r| r - s.at))
        .collect();
    let first_sent = opened.first().map(|s| s.at).unwrap_or_else(Instant::now);
    let batch_ready = ready
        .iter()
        .flatten()
        .max()
        .map(|t| *t - first_sent)
        .unwrap_or_default();
    // The probes' writes over the whole of provisioning, and those started while the
    // webhook's deliveries were being answered (the goal's "at the same time").
    let answering = first_sent
        ..opened
            .iter()
            .map(|s| s.at + s.first.latency)
            .max()
            .unwrap_or(first_sent);
    let probed = |all: Vec<(Instant, Duration)>| {
        let during: Vec<Duration> = all
            .iter()
            .filter(|(at, _)| answering.contains(at))
            .map(|(_, d)| *d)
            .collect();
        (all.into_iter().map(|(_, d)| d).collect::<Vec<_>>(), during)
    };
    let (write_latency, write_latency_answering) = probed(probe.finish());
    let (environment_write_latency, environment_write_latency_answering) =
        probed(environment_probe.finish());
    let _ = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(rig.client.clone())
        .delete(&probe_namespace, &kube::api::DeleteParams::background())
        .await;
    let mark_ready = mark();
    rss.enter("all_ready");
    // The operator writes environment history in batches (every 5 s): the batch holding
    // the last Ready reports belongs to provisioning, not to the no-op resync after it.
    tokio::time::sleep(HISTORY_SETTLE).await;
    let counts_ready = rig.proxy.counts();
    let usage_ready = operator.usage();
    if let Ok(text) = operator.metrics().await {
        let _ = std::fs::write(rig.dir.join("metrics-ready.txt"), text);
    }
    eprintln!("{} of {n} Ready after {batch_ready:?}", to_ready.len());
    eprintln!(
        "partial: {}",
        json!({"webhook_latency_ms": percentiles(&webhook_latency),
               "webhook_to_ready_ms": percentiles(&to_ready),
               "api_requests_per_env_provisioning": per_env(&counts_ready.since(&counts0), n),
               "operator_peak_rss_mib": usage_ready.peak_rss_bytes / 1048576,
               "operator_cpu_s": usage_ready.cpu_seconds - usage0.cpu_seconds})
    );

    // 3. A no-op resync: nothing changes, so nothing should be written.
    let window = Duration::from_secs(args.resync_seconds + 10);
    eprintln!("no-op resync window of {window:?}");
    tokio::time::sleep(window).await;
    let counts_resync = rig.proxy.counts();
    let usage_resync = operator.usage();
    eprintln!(
        "partial: {}",
        json!({"api_requests_per_env_noop_resync": per_env(&counts_resync.since(&counts_ready), n)})
    );

    // 4. Throughput: redeliveries of the PRs' current state (each answered `unchanged`).
    rss.enter("burst");
    let burst = args.burst;
    let bodies: Vec<crate::webhook::Delivery> = (0..burst.min(n * 4).max(1))
        .map(|i| {
            let k = i % n + 1;
            rig.event("synchronize", k, &pull(k, true, 10), None)
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let burst_started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.burst_concurrency.max(1) {
        let (rig, url, next, bodies) = (rig.clone(), url.clone(), next.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= burst {
                    return out;
                }
                let mut d = bodies[(i % bodies.len() as u64) as usize].clone();
                d.id = uuid::Uuid::new_v4().to_string();
                out.push(crate::webhook::send(&rig.http, &url, &d).await);
            }
        }));
    }
    let mut burst_answers = Vec::new();
    for w in workers {
        burst_answers.extend(w.await?);
    }
    let burst_elapsed = burst_started.elapsed();
    let mut burst_outcomes = std::collections::BTreeMap::<String, u64>::new();
    for a in &burst_answers {
        *burst_outcomes
            .entry(format!("{} {}", a.status, a.outcome))
            .or_default() += 1;
    }
    let burst_latency: Vec<Duration> = burst_answers.iter().map(|a| a.latency).collect();

    // 5. Short TTLs: the lag from expiry to the start of deletion.
    rss.enter("expiry");
    let mut expiry_lags = Vec::new();
    if args.ttl_environments > 0 {
        let repo = crate::cluster::repository(
            &rig.namespace,
            args.services as usize,
            &format!("{}s", args.ttl_seconds),
            None,
            "registry.k8s.io/pause:3.10",
        )?;
        crate::cluster::apply_repository(&rig.client, &repo).await?;
        let ttl_numbers: Vec<u64> = (n + 1..=n + args.ttl_environments).collect();
        send_all(rig, &url, &ttl_numbers, args.rate, |k| {
            rig.event("opened", k, &pull(k, true, 10), None)
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(args.ttl_seconds + 120);
        loop {
            let mut lags = Vec::new();
            for k in &ttl_numbers {
                let history = rig.tracker.history(&Rig::env_name(*k));
                let expires = history.iter().rev().find_map(|s| s.expires_at);
                let deleting = history.iter().find(|s| s.deleting);
                if let (Some(expires), Some(deleting)) = (expires, deleting) {
                    let lag = deleting.wall.duration_since(expires);
                    lags.push(Duration::try_from(lag).unwrap_or_default());
                }
            }
            if lags.len() == ttl_numbers.len() {
                expiry_lags = lags;
                break;
            }
            if Instant::now() > deadline {
                errors.push(format!(
                    "only {} of {} short-TTL environments were deleted",
                    lags.len(),
                    ttl_numbers.len()
                ));
                expiry_lags = lags;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // 6. Close every PR and wait until every namespace is gone.
    eprintln!("closing {n} pull requests");
    rss.enter("closing");
    let namespaces: Vec<String> = numbers
        .iter()
        .map(|k| {
            rig.tracker
                .latest(&Rig::env_name(*k))
                .and_then(|s| s.namespace)
                .unwrap_or_default()
        })
        .collect();
    let counts_before_close = rig.proxy.counts();
    let mark_close = mark();
    let closed = send_all(rig, &url, &numbers, args.rate, |k| {
        rig.event("closed", k, &pull(k, false, 20), None)
    })
    .await?;
    let close_failures = first_attempt_failures(&closed);
    let close_latency: Vec<Duration> = closed.iter().map(|s| s.first.latency).collect();
    let deadline = Instant::now() + Duration::from_secs(args.stage_timeout);
    let mut gone: Vec<Option<Instant>> = vec![None; n as usize];
    let ns_api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(rig.client.clone());
    let selector = format!(
        "{}={}",
        previewd_kube::children::LABEL_ENV_NAMESPACE,
        rig.namespace
    );
    let mut last_list = Instant::now();
    loop {
        for (i, ns) in namespaces.iter().enumerate() {
            if gone[i].is_none() {
                gone[i] = rig.tracker.namespace_gone(ns);
            }
        }
        // A deletion the watch did not report (it re-listed meanwhile) is caught by a
        // list every 2 s; such a namespace counts as gone when the list no longer has it.
        if last_list.elapsed() > Duration::from_secs(2) {
            last_list = Instant::now();
            if let Ok(list) = ns_api
                .list_metadata(&kube::api::ListParams::default().labels(&selector))
                .await
            {
                let present: std::collections::HashSet<String> = list
                    .items
                    .iter()
                    .filter_map(|m| m.metadata.name.clone())
                    .collect();
                for (i, ns) in namespaces.iter().enumerate() {
                    if gone[i].is_none() && !present.contains(ns) {
                        gone[i] = Some(Instant::now());
                    }
                }
            }
        }
        let done = gone.iter().filter(|g| g.is_some()).count();
        if done == n as usize {
            break;
        }
        if Instant::now() > deadline {
            errors.push(format!(
                "only {done} of {n} namespaces gone after {} s",
                args.stage_timeout
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_gone: Vec<Duration> = gone
        .iter()
        .zip(&closed)
        .filter_map(|(g, s)| g.map(|g| g.saturating_duration_since(s.at)))
        .collect();
    let close_first = closed.first().map(|s| s.at).unwrap_or_else(Instant::now);
    let batch_gone = gone
        .iter()
        .flatten()
        .max()
        .map(|t| *t - close_first)
        .unwrap_or_default();
    let counts_gone = rig.proxy.counts();
    let mark_gone = mark();
    let audited = |from: &Option<crate::audit::AuditMark>,
                   to: &Option<crate::audit::AuditMark>,
                   seconds: f64| match (&audit, from, to) {
        (Some(audit), Some(from), Some(to)) => Some(audit.writes(from, to).to_json(n, seconds)),
        _ => None,
    };
    let writes_provisioning = audited(&mark_open, &mark_ready, batch_ready.as_secs_f64());

    // 7. GitHub: let reporting catch up (bounded), then count.
    rss.enter("reporting_drain");
    let drain_started = Instant::now();
    let all_numbers: Vec<u64> = (1..=n + args.ttl_environments).collect();
    // A PR is reported to the end when it has no deployment that is not inactive (one
    // closed before anything was reported has none at all).
    let pending = |rig: &Rig| {
        rig.github.with(|s| {
            all_numbers
                .iter()
                .filter(|k| {
                    s.latest_deployment(**k)
                        .is_some_and(|(_, st)| st != Some("inactive"))
                })
                .count()
        })
    };
    let backlog_now = |text: &str| {
        crate::github::report_backlog(text)["previewd_github_report_backlog"]
            .as_f64()
            .unwrap_or(0.0)
    };
    if !args.no_github {
        while drain_started.elapsed() < Duration::from_secs(args.github_drain_seconds) {
            let backlog = backlog_now(&operator.metrics().await.unwrap_or_default());
            if backlog == 0.0 && pending(rig) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The operator's metrics (webhook store call durations among them) stay beside its
    // log for a closer look.
    if let Ok(text) = operator.metrics().await {
        let _ = std::fs::write(rig.dir.join("metrics-end.txt"), text);
    }
    let backlog = crate::github::report_backlog(&operator.metrics().await.unwrap_or_default());
    let reporting_drained_after = (!args.no_github
        && pending(rig) == 0
        && backlog["previewd_github_report_backlog"].as_f64() == Some(0.0))
    .then(|| drain_started.elapsed());
    // The same run's phase changes replayed into the reporter on a paused clock, under
    // the client's default budget: how long GitHub reporting takes to catch up.
    let origin = opened.first().map(|s| s.at).unwrap_or_else(Instant::now);
    let prs: Vec<_> = (0..n as usize)
        .map(|i| {
            (
                numbers[i],
                opened[i].at - origin,
                ready[i].map(|r| r - origin),
                closed[i].at.saturating_duration_since(origin),
                gone[i].map(|g| g.saturating_duration_since(origin)),
            )
        })
        .collect();
    let simulated = tokio::task::spawn_blocking(move || {
        crate::report_sim::simulate(
            crate::report_sim::timeline(&prs),
            previewd_github::client::budget::BudgetLimits::default(),
        )
    })
    .await?
    .unwrap_or_else(|e| json!({"error": e.to_string()}));
    rss.stop();
    let usage_end = operator.stop().await?;
    if args.floor_runs >= 2 {
        floors.push(floor_run(args).await?);
    }
    let load_at_end = load_average();
    let pr_events = 2 * n + args.ttl_environments;
    // Counted before taking the server's state below (`pending` takes it too).
    let not_yet_inactive = if args.no_github { 0 } else { pending(rig) };
    let github = rig.github.with(|s| {
        json!({
            "requests": s.total_requests(),
            "mutations": s.mutations(),
            "pr_events": pr_events,
            "calls_per_pr_event": s.total_requests() as f64 / pr_events as f64,
            "mutations_per_pr_event": s.mutations() as f64 / pr_events as f64,
            "prs_not_yet_reported_inactive": not_yet_inactive,
            "duplicate_deployments": s.duplicate_deployments().len(),
            "by_route": s.requests,
        })
    });
    let mib = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    let webhook = percentiles(&webhook_latency);
    let write = percentiles(&write_latency);
    let environment_write = percentiles(&environment_write_latency);
    let write_answering = percentiles(&write_latency_answering);
    let environment_write_answering = percentiles(&environment_write_latency_answering);
    let finished = |d: Duration, complete: bool| complete.then_some(d.as_secs_f64());
    let all_ready = finished(batch_ready, to_ready.len() == n as usize);
    let all_gone = finished(batch_gone, to_gone.len() == n as usize);
    let floor_ready: Vec<Option<f64>> = floors
        .iter()
        .map(|f| f.all_available.map(|d| d.as_secs_f64()))
        .collect();
    let floor_gone: Vec<Option<f64>> = floors
        .iter()
        .map(|f| f.all_gone.map(|d| d.as_secs_f64()))
        .collect();
    for f in &floors {
        errors.extend(f.errors.iter().cloned());
    }
    Ok(json!({
        "beside_floor": {
            "created_to_all_ready_s": crate::floor::beside(all_ready, &floor_ready),
            "deleted_to_all_namespaces_gone_s": crate::floor::beside(all_gone, &floor_gone),
            "webhook_p95_ms": webhook.p95_ms,
            // The probes' writes started while the deliveries were answered.
            "api_write_p95_ms": write_answering.p95_ms,
            "webhook_p95_within_write_p95_plus_20ms":
                webhook.p95_ms <= write_answering.p95_ms + 20.0,
            "environment_write_p95_ms": environment_write_answering.p95_ms,
            "webhook_p95_within_environment_write_p95_plus_20ms":
                webhook.p95_ms <= environment_write_answering.p95_ms + 20.0,
        },
        "floor": floors.iter().map(crate::floor::FloorRun::to_json).collect::<Vec<_>>(),
        "api_writes_provisioning": writes_provisioning,
        "api_writes_teardown": audited(&mark_close, &mark_gone, batch_gone.as_secs_f64()),
        "api_write_latency_ms_provisioning": write,
        "api_environment_write_latency_ms_provisioning": environment_write,
        "api_write_latency_ms_while_answering": write_answering,
        "api_environment_write_latency_ms_while_answering": environment_write_answering,
        "load_average": {"start": load_at_start, "end": load_at_end},
        "operator_rss_mib_by_stage": rss.peaks_mib(),
        "github_reporting": {
            "drained_after_s": reporting_drained_after.map(|d| d.as_secs_f64()),
            "backlog_at_end": backlog,
            "environments_created": rig.github.with(|s| s.environments()),
            "simulated_at_default_budget": simulated,
        },
        "scenario": "scale",
        "environments": n,
        "services": args.services,
        "operator_concurrency": args.concurrency,
        "webhook_latency_ms": webhook,
        "webhook_rate_per_s": n as f64 / open_elapsed.as_secs_f64().max(1e-3),
        "webhook_first_attempt_failures_open": open_failures,
        "webhook_close_latency_ms": percentiles(&close_latency),
        "webhook_first_attempt_failures_close": close_failures,
        "webhook_max_throughput_per_s": burst_answers.iter().filter(|a| (200..300).contains(&a.status)).count() as f64
            / burst_elapsed.as_secs_f64().max(1e-3),
        "webhook_burst": {"deliveries": burst_answers.len(), "concurrency": args.burst_concurrency,
            "latency_ms": percentiles(&burst_latency), "outcomes": burst_outcomes},
        "webhook_to_ready_ms": percentiles(&to_ready),
        "batch_to_all_ready_s": batch_ready.as_secs_f64(),
        "api_requests_per_env_provisioning": per_env(&counts_ready.since(&counts0), n),
        "api_requests_per_env_noop_resync": per_env(&counts_resync.since(&counts_ready), n),
        "noop_resync_window_s": window.as_secs(),
        "noop_resync_writes": counts_resync.since(&counts_ready).writes(),
        "api_requests_per_env_teardown": per_env(&counts_gone.since(&counts_before_close), n),
        "operator": {
            "peak_rss_mib_all_ready": mib(usage_ready.peak_rss_bytes),
            "rss_mib_all_ready": mib(usage_ready.rss_bytes),
            "rss_mib_after_resync": mib(usage_resync.rss_bytes),
            "peak_rss_mib": mib(usage_end.peak_rss_bytes),
            "cpu_seconds_provisioning": usage_ready.cpu_seconds - usage0.cpu_seconds,
            "cpu_seconds_noop_resync": usage_resync.cpu_seconds - usage_ready.cpu_seconds,
            "cpu_seconds_total": usage_end.cpu_seconds,
        },
        "expiry_to_deletion_start_ms": percentiles(&expiry_lags),
        "close_to_namespace_gone_ms": percentiles(&to_gone),
        "batch_close_to_all_gone_s": batch_gone.as_secs_f64(),
        "github": github,
        "errors": errors,
    }))
}
