//! Attacks by an unauthenticated stranger on the webhook server: big bodies, slow
//! connections, floods, label explosions and readiness probes. Each test performs the
//! attack against the real server on 127.0.0.1 and shows it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use previewd_github::metrics::{KNOWN_EVENTS, WebhookMetrics};
use previewd_github::store::{EnvironmentStore, MemoryStore, Precondition, StoreError};
use previewd_github::webhook::{self, ServeLimits, WebhookConfig, WebhookState};
use previewd_kube::crd::{ClosedPullRequest, PreviewEnvironment, PreviewRepository};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const VALID_LOOKING_SIGNATURE: &str =
    "sha256=0000000000000000000000000000000000000000000000000000000000000000";

/// Sends only a request head announcing `content_length` bytes, never the body, and
/// returns the first line of the answer (or what happened).
async fn head_only(addr: std::net::SocketAddr, extra: &str, content_length: usize) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-github-event: pull_request\r\nx-github-delivery: d-1\r\n{extra}\
         content-length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        Ok(Err(e)) => format!("error {e}"),
        Err(_) => "no answer without the body".to_string(),
    }
}

#[tokio::test]
async fn a_big_or_unsigned_body_is_refused_before_it_is_read() {
    let server = start_default(json!({})).await;
    // 5 MiB announced, nothing sent: refused from the headers alone.
    let unsigned = head_only(server.addr, "", 5 * 1024 * 1024).await;
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    let signed_looking = head_only(
        server.addr,
        &format!("x-hub-signature-256: {VALID_LOOKING_SIGNATURE}\r\n"),
        5 * 1024 * 1024,
    )
    .await;
    assert!(
        signed_looking.starts_with("HTTP/1.1 413"),
        "{signed_looking}"
    );
    // Events previewd does not handle are answered without reading the body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              x-github-event: star\r\nx-github-delivery: d\r\ncontent-length: 5242880\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(server.store.write_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn bodies_in_flight_are_capped_and_the_rest_is_shed() {
    let store = Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))]));
    let server = start(store, |c| {
        c.max_in_flight = 2;
        c.read_timeout = Duration::from_secs(2);
    })
    .await;
    // Two slow senders hold every slot: headers that look signed, a body that never comes.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             x-github-event: pull_request\r\nx-github-delivery: d\r\n\
             x-hub-signature-256: {VALID_LOOKING_SIGNATURE}\r\ncontent-length: 1000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        holders.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third delivery is shed at once, before its body is read.
    let body = serde_json::to_vec(&example("opened")).unwrap();
    let shed = deliver(&server, "pull_request", &delivery_id(), &body).await;
    assert_eq!((shed.status, shed.outcome()), (503, "overloaded"));
    // The holders are cut off by the read timeout (408) and the slots come back.
    for mut stream in holders {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    }
    let ok = deliver(&server, "pull_request", &delivery_id(), &body).await;
    assert_eq!((ok.status, ok.outcome()), (202, "applied"));
    assert_eq!(server.metrics.count("pull_request", "overloaded"), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let store = Arc::new(MemoryStore::new());
    let state = WebhookState::new(WebhookConfig::new(SECRET), store, WebhookMetrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let handle = tokio::spawn(webhook::serve_with_limits(
        listener,
        webhook::router(state),
        shutdown.clone(),
        limits,
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The server closes the connection (EOF or an error answer, then EOF).
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the slow connection was closed by the server"
    );
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_flood_of_event_names_does_not_grow_the_metric_labels() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let state = WebhookState::new(
        WebhookConfig::new(SECRET),
        Arc::new(MemoryStore::new()),
        metrics,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));
    let client = http();
    for i in 0..300 {
        let name = match i % 3 {
            0 => format!("evil_{i}"),
            1 => format!("pull_request{}", "x".repeat(i)),
            _ => format!("Évènement-{i}"),
        };
        let response = client
            .post(format!("http://{addr}/webhook"))
            .header("content-type", "application/json")
            .header("x-github-event", name)
            .header("x-github-delivery", format!("d-{i}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        // Unknown ASCII names are ignored (200); non-ASCII ones are not a valid event
        // header at all (400).
        assert!(
            [200, 400].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("previewd_webhook_deliveries_total{"))
        .collect();
    // 300 distinct names, at most two label values: `other` and `unknown`.
    assert!(series.len() <= 2, "{series:?}");
    assert!(
        series
            .iter()
            .all(|s| s.contains("event=\"other\"") || s.contains("event=\"unknown\"")),
        "{series:?}"
    );
    let total: u64 = series
        .iter()
        .filter_map(|s| s.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 300, "{series:?}");
    assert!(KNOWN_EVENTS.contains(&"pull_request"));
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

/// Counts readiness checks and repository lookups, and holds lookups until the gate
/// (when there is one) lets them through; everything else is a [`MemoryStore`].
struct CountingStore {
    inner: MemoryStore,
    ready_calls: AtomicUsize,
    lookups: AtomicUsize,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl CountingStore {
    fn new(inner: MemoryStore, gate: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        CountingStore {
            inner,
            ready_calls: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
            gate,
        }
    }
}

#[async_trait]
impl EnvironmentStore for CountingStore {
    async fn find_repositories(&self, r: &str) -> Result<Vec<PreviewRepository>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        self.inner.find_repositories(r).await
    }
    async fn record_claim(
        &self,
        v: &previewd_github::claims::ClaimVerdict,
    ) -> Result<(), StoreError> {
        self.inner.record_claim(v).await
    }
    async fn record_tombstone(
        &self,
        s: &PreviewRepository,
        n: &str,
        t: &ClosedPullRequest,
        e: &[String],
    ) -> Result<(), StoreError> {
        self.inner.record_tombstone(s, n, t, e).await
    }
    async fn get_environment(
        &self,
        ns: &str,
        n: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError> {
        self.inner.get_environment(ns, n).await
    }
    async fn apply_environment(
        &self,
        e: &PreviewEnvironment,
        p: &Precondition,
    ) -> Result<(), StoreError> {
        self.inner.apply_environment(e, p).await
    }
    async fn delete_environment(&self, ns: &str, n: &str, rv: &str) -> Result<bool, StoreError> {
        self.inner.delete_environment(ns, n, rv).await
    }
    async fn ready(&self) -> Result<(), StoreError> {
        self.ready_calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

#[tokio::test]
async fn readiness_probes_do_not_reach_the_api_server_per_request() {
    let store = Arc::new(CountingStore::new(MemoryStore::new(), None));
    let mut config = WebhookConfig::new(SECRET);
    config.ready_cache_ttl = Duration::from_secs(60);
    let state = WebhookState::new(config, store.clone(), WebhookMetrics::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(webhook::serve(
        listener,
        webhook::router(state),
        shutdown.clone(),
    ));
    let client = http();
    let mut probes = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        probes.push(tokio::spawn(async move {
            client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for p in probes {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert_eq!(store.ready_calls.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_verified_delivery_frees_its_body_slot_while_the_api_is_slow() {
    // The API is stuck: every repository lookup waits for the gate.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = Arc::new(CountingStore::new(
        MemoryStore::with_repositories(vec![settings(json!({}))]),
        Some(gate.clone()),
    ));
    let mut config = WebhookConfig::new(SECRET);
    config.max_in_flight = 2;
    config.max_handling = 3;
    config.store_timeout = Duration::from_secs(60);
    let metrics = WebhookMetrics::default();
    let state = WebhookState::new(config, store.clone(), metrics.clone());
    let server = Arc::new(start_with_state(state).await);
    let body = |n: u64| {
        let mut event = example("opened");
        event["number"] = json!(n);
        event["pull_request"]["number"] = json!(n);
        serde_json::to_vec(&event).unwrap()
    };
    // Three deliveries wait on the API at once, more than there are body slots: each is
    // sent once the one before reached the store.
    let mut waiting = Vec::new();
    for n in 1..=3u64 {
        let (server, body) = (server.clone(), body(n));
        waiting.push(tokio::spawn(async move {
            deliver(&server, "pull_request", &delivery_id(), &body).await
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.lookups.load(Ordering::SeqCst) < n as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "delivery {n} never reached the store: {:?}",
                metrics.deliveries
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A fourth is read and verified (a body slot is free) and refused for want of a
    // handling slot.
    let refused = deliver(&server, "pull_request", &delivery_id(), &body(4)).await;
    assert_eq!((refused.status, refused.outcome()), (503, "overloaded"));
    assert_eq!(refused.reason(), "too many deliveries being handled");
    assert_eq!(store.lookups.load(Ordering::SeqCst), 3);
    // The API recovers: the three are applied.
    gate.add_permits(100);
    for w in waiting {
        let answer = w.await.unwrap();
        assert_eq!((answer.status, answer.outcome()), (202, "applied"));
    }
    assert_eq!(store.inner.environments().len(), 3);
    assert_eq!(metrics.count("pull_request", "overloaded"), 1);
    Arc::into_inner(server).unwrap().stop().await;
}
