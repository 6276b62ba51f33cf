//! Denial-of-service run against the webhook server: the server runs as a separate
//! process (this example re-executed with `--serve`) so its memory is measured alone.
//! While valid, signed deliveries arrive at a steady rate, strangers send:
//! - many concurrent 5 MiB unsigned bodies (with `Content-Length`);
//! - many concurrent 5 MiB bodies with a well-formed but wrong signature, half with
//!   `Content-Length`, half chunked (no length, so the server has to read to find out);
//! - a flood of requests with distinct `X-GitHub-Event` names.
//!
//! Prints the server's resident memory before and at its peak (`VmHWM`), the latency of
//! the valid deliveries during the flood, what the attack requests got, and how many
//! metric series the server ended with.
//!
//! ```text
//! npm ci --prefix tests/fixtures/npm
//! cargo run --release -p previewd-github --example webhook_attack -- \
//!     --big 400 --concurrency 200 --events 20000 --valid 200
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use previewd_github::metrics::WebhookMetrics;
use previewd_github::signature::sign;
use previewd_github::store::MemoryStore;
use previewd_github::webhook::{self, WebhookConfig, WebhookState};
use previewd_kube::crd::PreviewRepository;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "attack-secret";
const BIG: usize = 5 * 1024 * 1024;
const FAKE_SIGNATURE: &str =
    "sha256=0000000000000000000000000000000000000000000000000000000000000000";

struct Args {
    big: usize,
    concurrency: usize,
    events: usize,
    valid: usize,
}

fn parse_args() -> Result<(bool, Args), String> {
    let mut serve = false;
    let mut args = Args {
        big: 400,
        concurrency: 200,
        events: 20_000,
        valid: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--serve" {
            serve = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--big" => args.big = n.min(100_000),
            "--concurrency" => args.concurrency = n.clamp(1, 2000),
            "--events" => args.events = n.min(10_000_000),
            "--valid" => args.valid = n.min(100_000),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok((serve, args))
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

/// Server mode: prints the address, serves until stdin closes, then prints the number
/// of delivery metric series.
async fn serve() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let store = Arc::new(MemoryStore::with_repositories(vec![settings()?]));
    let state = WebhookState::new(WebhookConfig::new(SECRET), store, metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", listener.local_addr().map_err(|e| e.to_string())?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));
    // Blocks until the parent closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| e.to_string())?;
    let series = text
        .lines()
        .filter(|l| l.starts_with("previewd_webhook_deliveries_total{"))
        .count();
    println!("series {series}");
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends one raw request and returns the status code of the answer (0: the connection
/// was closed or failed without one).
async fn raw_request(
    addr: std::net::SocketAddr,
    head: String,
    body: Arc<Vec<u8>>,
    chunked: bool,
) -> u16 {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return 0;
    };
    let (reader, mut writer) = stream.split();
    let send = async {
        writer.write_all(head.as_bytes()).await?;
        if chunked {
            for chunk in body.chunks(64 * 1024) {
                writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                writer.write_all(chunk).await?;
                writer.write_all(b"\r\n").await?;
            }
            writer.write_all(b"0\r\n\r\n").await?;
        } else {
            writer.write_all(&body).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let mut lines = BufReader::new(reader);
    let read = async {
        let mut line = String::new();
        let _ = lines.read_line(&mut line).await;
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0u16)
    };
    // The server may answer (and close) before the body is sent; the answer counts.
    tokio::pin!(read);
    tokio::select! {
        status = &mut read => status,
        _ = send => tokio::time::timeout(Duration::from_secs(30), read).await.unwrap_or(0),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
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

#[tokio::main]
async fn main() -> Result<(), String> {
    let (serve_mode, args) = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    if serve_mode {
        return serve().await;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id().ok_or("no child pid")?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = line.trim().parse().map_err(|e| format!("{e}: {line}"))?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline_kb = status_kb(pid, "VmRSS:");

    let base = example()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{addr}/webhook");

    // Valid deliveries, one every 20 ms, throughout the attack.
    let valid = {
        let client = client.clone();
        let url = url.clone();
        let n = args.valid;
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..n {
                tick.tick().await;
                let mut payload = base.clone();
                let number = (i % 50) as u64 + 1;
                payload["number"] = json!(number);
                payload["pull_request"]["number"] = json!(number);
                payload["pull_request"]["head"]["sha"] = json!(format!("{:040x}", i + 1));
                payload["pull_request"]["updated_at"] =
                    json!(format!("2024-01-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60));
                let body = serde_json::to_vec(&payload).unwrap_or_default();
                let signature = sign(SECRET.as_bytes(), &body);
                let started = Instant::now();
                let status = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-github-event", "pull_request")
                    .header("x-github-delivery", format!("valid-{i}"))
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                latencies.push(started.elapsed());
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        })
    };

    let big_body = Arc::new(vec![b'x'; BIG]);
    let outcomes: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let attack_started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let big_body = big_body.clone();
        let outcomes = outcomes.clone();
        let next = next.clone();
        let (big, events) = (args.big, args.events);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= big + events {
                    break;
                }
                let (kind, status) = if i < big {
                    let (kind, signature, chunked) = match i % 3 {
                        0 => ("5MiB unsigned", "", false),
                        1 => ("5MiB bad signature", FAKE_SIGNATURE, false),
                        _ => ("5MiB bad signature chunked", FAKE_SIGNATURE, true),
                    };
                    let mut head = format!(
                        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                         x-github-event: pull_request\r\nx-github-delivery: attack-{i}\r\n"
                    );
                    if !signature.is_empty() {
                        head.push_str(&format!("x-hub-signature-256: {signature}\r\n"));
                    }
                    if chunked {
                        head.push_str("transfer-encoding: chunked\r\n\r\n");
                    } else {
                        head.push_str(&format!("content-length: {BIG}\r\n\r\n"));
                    }
                    (
                        kind,
                        raw_request(addr, head, big_body.clone(), chunked).await,
                    )
                } else {
                    let head = format!(
                        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                         x-github-event: event_{i}_{}\r\nx-github-delivery: e-{i}\r\n\
                         content-length: 2\r\n\r\n",
                        "z".repeat(i % 100)
                    );
                    (
                        "distinct event name",
                        raw_request(addr, head, Arc::new(b"{}".to_vec()), false).await,
                    )
                };
                *outcomes
                    .lock()
                    .await
                    .entry(format!("{kind}: {status}"))
                    .or_default() += 1;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let attack_time = attack_started.elapsed();
    let (mut latencies, statuses) = valid.await.map_err(|e| e.to_string())?;
    latencies.sort();
    let peak_kb = status_kb(pid, "VmHWM:");
    let end_kb = status_kb(pid, "VmRSS:");
    drop(child.stdin.take());
    let mut series = String::new();
    let _ = out.read_line(&mut series).await;
    let _ = child.wait().await;

    println!(
        "attack: {} requests of 5 MiB, {} distinct event names, {} concurrent, {:.1} s",
        args.big,
        args.events,
        args.concurrency,
        attack_time.as_secs_f64()
    );
    for (k, v) in outcomes.lock().await.iter() {
        println!("  {k:<40} {v}");
    }
    println!(
        "server memory: {:.1} MiB before, {:.1} MiB peak (VmHWM), {:.1} MiB after",
        baseline_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0,
        end_kb as f64 / 1024.0
    );
    println!(
        "valid deliveries during the attack: {} sent, statuses {:?}",
        latencies.len(),
        statuses
    );
    println!(
        "  latency p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "metric series of previewd_webhook_deliveries_total: {}",
        series.trim().trim_start_matches("series ")
    );
    Ok(())
}
