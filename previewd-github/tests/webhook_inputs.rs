//! Bad inputs, idempotence, ordering and failure answers of the webhook server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use previewd_github::signature::sign;
use previewd_github::store::{MemoryStore, StoreOp};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn body_of_opened() -> Vec<u8> {
    serde_json::to_vec(&example("opened")).unwrap()
}

async fn assert_nothing_written(server: &Server) {
    assert_eq!(server.store.write_count(), 0);
    assert!(server.store.environments().is_empty());
}

#[tokio::test]
async fn bad_inputs_get_the_right_status_and_write_nothing() {
    let server = start(
        Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))])),
        |c| c.body_limit = 64 * 1024,
    )
    .await;
    let body = body_of_opened();
    let good_sig = sign(SECRET.as_bytes(), &body);
    let json_ct = ("content-type", "application/json");
    let event = ("x-github-event", "pull_request");
    let id = delivery_id();
    let delivery = ("x-github-delivery", id.as_str());

    // No signature.
    let a = send(&server, &[json_ct, event, delivery], body.clone()).await;
    assert_eq!(
        (a.status, a.outcome(), a.reason()),
        (401, "rejected_signature", "missing")
    );
    // Signed with another secret.
    let wrong = sign(b"another secret", &body);
    let a = send(
        &server,
        &[json_ct, event, delivery, ("x-hub-signature-256", &wrong)],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.reason()), (401, "mismatch"));
    // Only the legacy SHA-1 header.
    let a = send(
        &server,
        &[
            json_ct,
            event,
            delivery,
            (
                "x-hub-signature",
                "sha1=0123456789abcdef0123456789abcdef01234567",
            ),
        ],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.reason()), (401, "missing"));
    // A sha1= value in the SHA-256 header.
    let a = send(
        &server,
        &[
            json_ct,
            event,
            delivery,
            (
                "x-hub-signature-256",
                "sha1=0123456789abcdef0123456789abcdef01234567",
            ),
        ],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.reason()), (401, "sha1"));
    // Malformed hex.
    let a = send(
        &server,
        &[
            json_ct,
            event,
            delivery,
            ("x-hub-signature-256", "sha256=zz"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.reason()), (401, "bad_hex"));
    // Body truncated after signing.
    let a = send(
        &server,
        &[json_ct, event, delivery, ("x-hub-signature-256", &good_sig)],
        body[..body.len() / 2].to_vec(),
    )
    .await;
    assert_eq!((a.status, a.reason()), (401, "mismatch"));
    // Truncated JSON, correctly signed.
    let truncated = body[..body.len() / 2].to_vec();
    let a = deliver(&server, "pull_request", &delivery_id(), &truncated).await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    // Not JSON at all.
    let a = deliver(&server, "pull_request", &delivery_id(), b"this is not json").await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    // JSON of the wrong shape.
    let a = deliver_json(
        &server,
        "pull_request",
        &delivery_id(),
        &json!({"action": "opened", "number": "two"}),
    )
    .await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    let mut no_head = example("opened");
    no_head["pull_request"]
        .as_object_mut()
        .unwrap()
        .remove("head");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &no_head).await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    // Over the body limit (64 KiB here), with and without Content-Length checks.
    let mut big = example("opened");
    big["pull_request"]["body"] = json!("x".repeat(100 * 1024));
    let a = deliver_json(&server, "pull_request", &delivery_id(), &big).await;
    assert_eq!((a.status, a.outcome()), (413, "too_large"));
    // Missing delivery or event header.
    let a = send(
        &server,
        &[json_ct, event, ("x-hub-signature-256", &good_sig)],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    let a = send(
        &server,
        &[json_ct, delivery, ("x-hub-signature-256", &good_sig)],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    // Wrong or missing content type.
    let a = send(
        &server,
        &[
            ("content-type", "text/plain"),
            event,
            delivery,
            ("x-hub-signature-256", &good_sig),
        ],
        body.clone(),
    )
    .await;
    assert_eq!((a.status, a.outcome()), (415, "unsupported_media_type"));
    let a = send(
        &server,
        &[event, delivery, ("x-hub-signature-256", &good_sig)],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 415);
    // Unknown event, correctly signed: acknowledged, ignored.
    let a = deliver(&server, "star", &delivery_id(), br#"{"action":"created"}"#).await;
    assert_eq!(
        (a.status, a.outcome(), a.reason()),
        (200, "ignored", "event_not_handled")
    );
    // Unknown action.
    let mut odd = example("opened");
    odd["action"] = json!("some_future_action");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &odd).await;
    assert_eq!((a.status, a.outcome()), (200, "ignored"));

    assert_nothing_written(&server).await;
    assert_eq!(
        server.metrics.count("pull_request", "rejected_signature"),
        6
    );
    assert_eq!(server.metrics.count("pull_request", "too_large"), 1);
    server.stop().await;
}

#[tokio::test]
async fn form_encoded_deliveries_are_verified_over_the_raw_form() {
    let server = start_default(json!({})).await;
    let payload = String::from_utf8(body_of_opened()).unwrap();
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload)
        .finish();
    let signature = sign(SECRET.as_bytes(), form.as_bytes());
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-github-event", "pull_request"),
        ("x-hub-signature-256", signature.as_str()),
    ];
    let id = delivery_id();
    let mut with_id = headers.to_vec();
    with_id.push(("x-github-delivery", &id));
    // Signing the JSON instead of the form body does not pass.
    let json_sig = sign(SECRET.as_bytes(), payload.as_bytes());
    let bad = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-github-event", "pull_request"),
        ("x-hub-signature-256", json_sig.as_str()),
        ("x-github-delivery", id.as_str()),
    ];
    let a = send(&server, &bad, form.clone().into_bytes()).await;
    assert_eq!(a.status, 401);
    let a = send(&server, &with_id, form.into_bytes()).await;
    assert_eq!((a.status, a.outcome()), (202, "applied"));
    // A form without the payload field.
    let empty = "other=1";
    let sig = sign(SECRET.as_bytes(), empty.as_bytes());
    let id2 = delivery_id();
    let a = send(
        &server,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-github-event", "pull_request"),
            ("x-hub-signature-256", &sig),
            ("x-github-delivery", &id2),
        ],
        empty.as_bytes().to_vec(),
    )
    .await;
    assert_eq!((a.status, a.outcome()), (400, "bad_request"));
    assert_eq!(server.store.write_count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn redelivery_and_duplicates_change_nothing() {
    let server = start_default(json!({})).await;
    let body = body_of_opened();
    let id = delivery_id();
    let first = deliver(&server, "pull_request", &id, &body).await;
    assert_eq!((first.status, first.outcome()), (202, "applied"));
    // GitHub's redelivery reuses the delivery id.
    let again = deliver(&server, "pull_request", &id, &body).await;
    assert_eq!((again.status, again.outcome()), (200, "duplicate"));
    // The same event under a new delivery id is recognised as already applied.
    let copy = deliver(&server, "pull_request", &delivery_id(), &body).await;
    assert_eq!((copy.status, copy.outcome()), (202, "unchanged"));
    assert_eq!(server.store.write_count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_older_event_never_rolls_back() {
    let server = start_default(json!({})).await;
    let older = example("synchronize");
    let mut newer = older.clone();
    newer["pull_request"]["head"]["sha"] = json!("2222222222222222222222222222222222222222");
    newer["pull_request"]["updated_at"] = json!("2019-05-15T15:40:00Z");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &newer).await;
    assert_eq!((a.status, a.outcome()), (202, "applied"));
    let a = deliver_json(&server, "pull_request", &delivery_id(), &older).await;
    assert_eq!((a.status, a.outcome()), (202, "stale"));
    let envs = server.store.environments();
    assert_eq!(
        envs[0].spec.head_sha,
        "2222222222222222222222222222222222222222"
    );
    assert_eq!(server.store.write_count(), 1);

    // A late close older than the environment does not delete it either.
    let mut late_close = example("closed");
    late_close["pull_request"]["updated_at"] = json!("2019-05-15T15:30:00Z");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &late_close).await;
    assert_eq!((a.status, a.outcome()), (202, "stale"));
    assert_eq!(server.store.environments().len(), 1);

    // After a real close, a late push does not bring the environment back.
    let mut close = example("closed");
    close["pull_request"]["updated_at"] = json!("2019-05-15T15:50:00Z");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &close).await;
    assert_eq!((a.status, a.outcome()), (202, "deleted"));
    let a = deliver_json(&server, "pull_request", &delivery_id(), &newer).await;
    assert_eq!((a.status, a.outcome()), (202, "stale"));
    assert!(server.store.environments().is_empty());
    // Reopening later does.
    let mut reopen = example("reopened");
    reopen["pull_request"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &reopen).await;
    assert_eq!((a.status, a.outcome()), (202, "applied"));
    let ops = server.store.ops();
    assert_eq!(ops.len(), 3);
    assert!(matches!(ops[1], StoreOp::Deleted { .. }));
    server.stop().await;
}

#[tokio::test]
async fn store_outage_answers_503_and_redelivery_then_succeeds() {
    // No readiness caching here, so the probe follows the outage at once.
    let server = start(
        Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))])),
        |c| c.ready_cache_ttl = Duration::ZERO,
    )
    .await;
    let body = body_of_opened();
    let id = delivery_id();
    server.store.set_unavailable(true);
    let a = deliver(&server, "pull_request", &id, &body).await;
    assert_eq!((a.status, a.outcome()), (503, "store_unavailable"));
    // The failed call is timed under its operation and outcome.
    assert_eq!(
        store_calls(&server.metrics, "find_repositories", "error"),
        1
    );
    assert_eq!(store_calls(&server.metrics, "find_repositories", "ok"), 0);
    let ready = http()
        .get(format!("http://{}/readyz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    server.store.set_unavailable(false);
    let ready = http()
        .get(format!("http://{}/readyz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    // The failed delivery was not remembered: its redelivery is processed.
    let a = deliver(&server, "pull_request", &id, &body).await;
    assert_eq!((a.status, a.outcome()), (202, "applied"));
    assert_eq!(server.store.write_count(), 1);
    for operation in ["find_repositories", "get_environment", "apply_environment"] {
        assert_eq!(
            store_calls(&server.metrics, operation, "ok"),
            1,
            "{operation}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_repository_is_acknowledged_and_ignored() {
    let server = start(Arc::new(MemoryStore::new()), |_| {}).await;
    let a = deliver(&server, "pull_request", &delivery_id(), &body_of_opened()).await;
    assert_eq!((a.status, a.outcome()), (202, "unknown_repository"));
    assert!(a.reason().contains(REPOSITORY));
    let health = http()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let server = start(
        Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))])),
        |c| c.read_timeout = Duration::from_millis(300),
    )
    .await;
    let body = body_of_opened();
    let sig = sign(SECRET.as_bytes(), &body);
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nx-github-event: pull_request\r\nx-github-delivery: {}\r\nx-hub-signature-256: {sig}\r\ncontent-length: {}\r\n\r\n",
        server.addr,
        delivery_id(),
        body.len()
    );
    // Only the first 100 bytes of the body are ever sent.
    let text = raw_exchange(&server, &head, &[&body[..100]]).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(server.store.write_count(), 0);
    server.stop().await;
}

/// Sends a raw HTTP/1.1 request and reads the answer until the server closes or the
/// JSON body is complete.
async fn raw_exchange(server: &Server, head: &str, body_parts: &[&[u8]]) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body_parts {
        // The server may answer and close before reading everything.
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_413() {
    let server = start(
        Arc::new(MemoryStore::with_repositories(vec![settings(json!({}))])),
        |c| c.body_limit = 16 * 1024,
    )
    .await;
    let chunk = vec![b'x'; 8 * 1024];
    let framed = [
        format!("{:x}\r\n", chunk.len()).into_bytes(),
        chunk,
        b"\r\n".to_vec(),
    ]
    .concat();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nx-github-event: pull_request\r\nx-github-delivery: {}\r\nx-hub-signature-256: sha256={}\r\ntransfer-encoding: chunked\r\n\r\n",
        server.addr,
        delivery_id(),
        "0".repeat(64)
    );
    let parts: Vec<&[u8]> = std::iter::repeat_n(framed.as_slice(), 4)
        .chain([b"0\r\n\r\n".as_slice()])
        .collect();
    let text = raw_exchange(&server, &head, &parts).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(server.store.write_count(), 0);
    assert_eq!(server.metrics.count("pull_request", "too_large"), 1);
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_stops_the_server() {
    let server = start_default(json!({})).await;
    let addr = server.addr;
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// The ordering holes, attacked through the real server: a late `opened` after the close
/// of a PR that never had an environment, a redelivered older push in the same second,
/// and a payload whose `updated_at` does not parse.
#[tokio::test]
async fn ordering_holes_are_closed() {
    let server = start_default(json!({})).await;
    // Closed before any environment existed: the close is recorded.
    let mut close = example("closed");
    close["pull_request"]["updated_at"] = json!("2019-05-15T15:50:00Z");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &close).await;
    assert_eq!((a.status, a.outcome()), (202, "absent"), "{a:?}");
    let repos = server.store.repositories();
    let closed = &repos[0].status.as_ref().unwrap().closed_pull_requests;
    assert_eq!(closed.len(), 1, "{closed:?}");
    // The late `opened` (older, and in the same second) does not bring it back.
    for at in ["2019-05-15T15:40:00Z", "2019-05-15T15:50:00Z"] {
        let mut opened = example("opened");
        opened["pull_request"]["updated_at"] = json!(at);
        let a = deliver_json(&server, "pull_request", &delivery_id(), &opened).await;
        assert_eq!((a.status, a.outcome()), (202, "stale"), "{at}: {a:?}");
    }
    assert!(server.store.environments().is_empty());

    // Two pushes in the same second: the older one redelivered does not move the head.
    let mut reopen = example("reopened");
    reopen["pull_request"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    reopen["pull_request"]["head"]["sha"] = json!("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &reopen).await;
    assert_eq!((a.status, a.outcome()), (202, "applied"));
    let mut same_second = example("synchronize");
    same_second["pull_request"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    same_second["pull_request"]["head"]["sha"] = json!("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    let a = deliver_json(&server, "pull_request", &delivery_id(), &same_second).await;
    assert_eq!((a.status, a.outcome()), (202, "stale"), "{a:?}");
    assert_eq!(
        server.store.environments()[0].spec.head_sha,
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    );

    // An unparsable updated_at is refused; it never switches the check off.
    for bad in ["not a time", "", "2019-05-15"] {
        let mut odd = example("synchronize");
        odd["pull_request"]["updated_at"] = json!(bad);
        odd["pull_request"]["head"]["sha"] = json!("cccccccccccccccccccccccccccccccccccccccc");
        let a = deliver_json(&server, "pull_request", &delivery_id(), &odd).await;
        assert_eq!(
            (a.status, a.outcome()),
            (400, "bad_request"),
            "{bad:?}: {a:?}"
        );
    }
    assert_eq!(
        server.store.environments()[0].spec.head_sha,
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    );
    server.stop().await;
}

/// Store calls the webhook timed as `operation` ending in `outcome`.
fn store_calls(
    metrics: &previewd_github::metrics::WebhookMetrics,
    operation: &'static str,
    outcome: &'static str,
) -> u64 {
    metrics
        .store_seconds
        .get_or_create(&previewd_github::metrics::StoreLabels { operation, outcome })
        .count()
}
