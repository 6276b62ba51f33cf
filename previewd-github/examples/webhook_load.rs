//! Load run of the webhook server: starts the real server on 127.0.0.1 over the
//! in-memory store, fires signed `pull_request` deliveries from concurrent clients, and
//! prints latency percentiles and throughput. Bounded in request count and time.
//!
//! ```text
//! npm ci --prefix tests/fixtures/npm
//! cargo run --release -p previewd-github --example webhook_load -- --requests 5000 --concurrency 64
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use previewd_github::metrics::WebhookMetrics;
use previewd_github::signature::sign;
use previewd_github::store::MemoryStore;
use previewd_github::webhook::{self, WebhookConfig, WebhookState};
use previewd_kube::crd::PreviewRepository;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "load-secret";

struct Args {
    requests: usize,
    concurrency: usize,
    max_seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        requests: 5000,
        concurrency: 64,
        max_seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--requests" => args.requests = usize::try_from(n).map_err(|e| e.to_string())?,
            "--concurrency" => {
                args.concurrency = usize::try_from(n.max(1)).map_err(|e| e.to_string())?
            }
            "--max-seconds" => args.max_seconds = n,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    args.requests = args.requests.min(1_000_000);
    args.concurrency = args.concurrency.min(1024);
    Ok(args)
}

fn example() -> Result<Value, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../tests/fixtures/npm/node_modules/@octokit/webhooks-examples/api.github.com/index.json",
    );
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {} ({e}); run `npm ci --prefix tests/fixtures/npm`",
            path.display()
        )
    })?;
    let index: Vec<Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    index
        .iter()
        .find(|e| e["name"] == "pull_request")
        .and_then(|e| e["examples"].as_array())
        .and_then(|xs| xs.iter().find(|x| x["action"] == "synchronize"))
        .cloned()
        .ok_or_else(|| "no synchronize example".to_string())
}

fn settings() -> Result<PreviewRepository, String> {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "hello-world", "namespace": "previews"},
        "spec": {
            "repository": "Codertocat/Hello-World",
            "baseDomain": "preview.example.com",
            "catalogue": {"services": [{"name": "web", "image": "ghcr.io/codertocat/web:pr-{{number}}"}]}
        }
    }))
    .map_err(|e| e.to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = Arc::new(MemoryStore::with_repositories(vec![settings()?]));
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        store.clone(),
        WebhookMetrics::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));

    // Distinct pushes to 200 PRs; bodies are made before the clock starts.
    let base = example()?;
    let distinct = args.requests.clamp(1, 2000);
    let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..distinct)
            .map(|i| {
                let mut payload = base.clone();
                let number = (i % 200) as u64 + 1;
                payload["number"] = json!(number);
                payload["pull_request"]["number"] = json!(number);
                payload["pull_request"]["head"]["sha"] = json!(format!("{:040x}", i + 1));
                payload["pull_request"]["updated_at"] = json!(format!(
                    "2024-01-01T{:02}:{:02}:{:02}Z",
                    (i / 3600) % 24,
                    (i / 60) % 60,
                    i % 60
                ));
                let body = serde_json::to_vec(&payload).unwrap_or_default();
                let signature = sign(SECRET.as_bytes(), &body);
                (body, signature)
            })
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{addr}/webhook");
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, next, bodies) =
            (client.clone(), url.clone(), next.clone(), bodies.clone());
        let total = args.requests;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let (body, signature) = &bodies[i % bodies.len()];
                let t0 = Instant::now();
                let result = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-github-event", "pull_request")
                    .header("x-github-delivery", format!("load-{i}"))
                    .header("x-hub-signature-256", signature.as_str())
                    .body(body.clone())
                    .send()
                    .await;
                let status = match result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                latencies.push(t0.elapsed());
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for worker in workers {
        let (l, s) = worker.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    let _ = server.await;
    latencies.sort();
    let done = latencies.len();
    println!(
        "requests:     {done} ({} concurrent clients)",
        args.concurrency
    );
    println!("statuses:     {statuses:?} (0 = transport error)");
    println!("store writes: {}", store.write_count());
    println!("elapsed:      {:.3} s", elapsed.as_secs_f64());
    println!(
        "throughput:   {:.0} req/s",
        done as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency p50:  {:.2} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3
    );
    println!(
        "latency p90:  {:.2} ms",
        percentile(&latencies, 90.0).as_secs_f64() * 1e3
    );
    println!(
        "latency p99:  {:.2} ms",
        percentile(&latencies, 99.0).as_secs_f64() * 1e3
    );
    println!(
        "latency max:  {:.2} ms",
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    Ok(())
}
