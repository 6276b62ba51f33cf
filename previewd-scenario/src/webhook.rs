//! Signed `pull_request` deliveries, shaped like GitHub's (the demo's recorded payload
//! with the PR's number, head, labels and time filled in), sent the way GitHub sends
//! them: a POST with `X-GitHub-Event`, `X-GitHub-Delivery` and `X-Hub-Signature-256`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::github::PullState;

/// The recorded payload every delivery starts from.
const TEMPLATE: &str = include_str!("../../examples/demo/pull_request.opened.json");

/// One delivery, ready to send (signed body).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub id: String,
    /// Action.
    pub action: String,
    /// PR number.
    pub number: u64,
    /// Body.
    pub body: bytes::Bytes,
    /// `X-Hub-Signature-256`.
    pub signature: String,
}

/// The body of a `pull_request` delivery for PR `number` in state `pull`.
pub fn payload(action: &str, number: u64, pull: &PullState, label: Option<&str>) -> Value {
    let mut p: Value = serde_json::from_str(TEMPLATE).unwrap_or_else(|_| json!({}));
    p["action"] = json!(action);
    p["number"] = json!(number);
    let pr = &mut p["pull_request"];
    pr["number"] = json!(number);
    pr["state"] = json!(if pull.open { "open" } else { "closed" });
    pr["merged"] = json!(false);
    pr["updated_at"] = json!(pull.updated_at);
    pr["head"]["sha"] = json!(pull.head_sha);
    pr["head"]["ref"] = json!(pull.branch);
    pr["labels"] = json!(
        pull.labels
            .iter()
            .map(|l| json!({"name": l}))
            .collect::<Vec<_>>()
    );
    if let Some(label) = label {
        p["label"] = json!({"name": label});
    }
    p
}

/// Signs `payload` with `secret` under a fresh delivery id.
pub fn delivery(secret: &str, action: &str, number: u64, payload: &Value) -> Delivery {
    let body = bytes::Bytes::from(serde_json::to_vec(payload).unwrap_or_default());
    Delivery {
        id: uuid::Uuid::new_v4().to_string(),
        action: action.to_string(),
        number,
        signature: previewd_github::signature::sign(secret.as_bytes(), &body),
        body,
    }
}

/// What the webhook server answered.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status; 0 when the connection failed.
    pub status: u16,
    /// `outcome` of the JSON answer.
    pub outcome: String,
    /// Round trip.
    pub latency: Duration,
}

/// Sends one delivery.
pub async fn send(http: &reqwest::Client, url: &str, d: &Delivery) -> Answer {
    let started = Instant::now();
    let result = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", &d.id)
        .header("x-hub-signature-256", &d.signature)
        .body(d.body.clone())
        .send()
        .await;
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Answer {
                status,
                outcome: body["outcome"].as_str().unwrap_or("").to_string(),
                latency: started.elapsed(),
            }
        }
        Err(_) => Answer {
            status: 0,
            outcome: "connection_failed".into(),
            latency: started.elapsed(),
        },
    }
}

/// A 40-hex-digit commit id derived from `n`.
pub fn sha(n: u64) -> String {
    format!("{n:040x}")
}

/// RFC 3339 time `seconds` after an origin an hour before this process started, so event
/// order is explicit and every time is in the past (the operator extends a TTL from the
/// PR's last activity, so a future time would keep an environment alive).
pub fn time(seconds: u64) -> String {
    static ORIGIN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| jiff::Timestamp::now().as_second() - 3600);
    let t = jiff::Timestamp::from_second(origin + i64::try_from(seconds).unwrap_or(0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    t.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn payload_parses_as_a_pull_request_event() {
        let pull = PullState {
            open: true,
            head_sha: sha(7),
            branch: "feature/x".into(),
            labels: vec!["preview".into()],
            updated_at: time(5),
        };
        let p = payload("labeled", 12, &pull, Some("preview"));
        let event: previewd_github::event::PullRequestEvent =
            serde_json::from_value(p).expect("parses");
        assert_eq!(event.number, 12);
        assert_eq!(event.pull_request.head.sha, sha(7));
        assert!(event.has_label("preview"));
        let d = delivery("s", "labeled", 12, &payload("labeled", 12, &pull, None));
        assert!(
            previewd_github::signature::verify(
                &[secrecy::SecretString::from("s".to_string())],
                Some(&d.signature),
                &d.body
            )
            .is_ok()
        );
    }
}
