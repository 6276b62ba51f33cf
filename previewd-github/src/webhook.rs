//! The webhook server: `POST /webhook`, `GET /healthz`, `GET /readyz`.
//!
//! A delivery is checked in this order, and nothing is written unless every check passes:
//!
//! | check | answer |
//! |---|---|
//! | `Content-Type` is `application/json` or `application/x-www-form-urlencoded` | 415 |
//! | `X-GitHub-Event` and `X-GitHub-Delivery` present | 400 |
//! | body within the limit (default 5 MiB) | 413 |
//! | body read within the read timeout | 408 |
//! | `X-Hub-Signature-256` matches the raw body | 401 |
//! | same delivery id seen and answered 2xx recently | 200 `duplicate` |
//! | `ping` | 200 `pong` |
//! | other events, unhandled actions, policy says leave alone | 200 `ignored` |
//! | payload parses as a `pull_request` event | 400 |
//! | repository has a `PreviewRepository` | 202 `unknown_repository` |
//! | event older than what the environment records | 202 `stale` |
//! | the environment rendered and written (or deleted) | 202 `applied` / `deleted` / `unchanged` / `absent` |
//! | rendering refused the settings or payload | 422 |
//! | the Kubernetes API failed or timed out | 503 (GitHub records a failure; redeliver) |
//!
//! The handler never calls GitHub and never waits for the environment: the
//! `PreviewEnvironment` is the durable queue the controller works from.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use previewd_kube::crd::{
    ANNOTATION_DELIVERY, ANNOTATION_LAST_ACTIVITY, ANNOTATION_PR_UPDATED_AT, PreviewEnvironment,
    PreviewRepository,
};
use previewd_kube::render::{self, PullRequestSnapshot};
use secrecy::SecretString;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::event::{Envelope, PullRequestEvent};
use crate::metrics::WebhookMetrics;
use crate::policy::{self, Decision};
use crate::signature::{self, SIGNATURE_HEADER};
use crate::store::{EnvironmentStore, Precondition, StoreError};

/// Annotation: head commit of the newest event applied.
pub const ANNOTATION_HEAD_SHA: &str = "previewd.io/head-sha";
/// Annotation: head commit of a fork PR that a maintainer approved.
pub const ANNOTATION_APPROVED_SHA: &str = "previewd.io/approved-sha";

/// Default body limit: 5 MiB (the largest real `pull_request` payload is ~28 KB).
pub const DEFAULT_BODY_LIMIT: usize = 5 * 1024 * 1024;

const LOCK_STRIPES: usize = 64;
const MAX_CONFLICT_RETRIES: usize = 3;

/// Settings of the webhook server.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Webhook secrets; a delivery signed with any of them is accepted (rotation).
    pub secrets: Vec<SecretString>,
    /// Largest accepted body, bytes.
    pub body_limit: usize,
    /// Time allowed to read the body; slower clients get 408.
    pub read_timeout: Duration,
    /// Time allowed for each store call; slower calls answer 503.
    pub store_timeout: Duration,
    /// Delivery ids remembered for de-duplication.
    pub delivery_cache_capacity: u64,
    /// How long a delivery id is remembered.
    pub delivery_cache_ttl: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("body_limit", &self.body_limit)
            .field("read_timeout", &self.read_timeout)
            .field("store_timeout", &self.store_timeout)
            .field("delivery_cache_capacity", &self.delivery_cache_capacity)
            .field("delivery_cache_ttl", &self.delivery_cache_ttl)
            .finish()
    }
}

impl WebhookConfig {
    /// Defaults (5 MiB, 10 s read timeout, 5 s store timeout, 10 000 deliveries for 1 h)
    /// with one secret.
    pub fn new(secret: impl Into<String>) -> Self {
        WebhookConfig {
            secrets: vec![SecretString::from(secret.into())],
            body_limit: DEFAULT_BODY_LIMIT,
            read_timeout: Duration::from_secs(10),
            store_timeout: Duration::from_secs(5),
            delivery_cache_capacity: 10_000,
            delivery_cache_ttl: Duration::from_secs(3600),
        }
    }
}

/// Outcome of one delivery: HTTP status plus what happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryOutcome {
    /// HTTP status code answered.
    #[serde(skip)]
    pub status: u16,
    /// Short outcome, also the metric label.
    pub outcome: &'static str,
    /// Why, when there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DeliveryOutcome {
    fn new(status: StatusCode, outcome: &'static str, reason: Option<String>) -> Self {
        DeliveryOutcome {
            status: status.as_u16(),
            outcome,
            reason,
        }
    }

    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Serialize)]
struct ResponseBody<'a> {
    delivery: Option<&'a str>,
    #[serde(flatten)]
    outcome: &'a DeliveryOutcome,
}

struct Inner {
    config: WebhookConfig,
    store: Arc<dyn EnvironmentStore>,
    metrics: WebhookMetrics,
    deliveries: moka::future::Cache<String, DeliveryOutcome>,
    tombstones: moka::sync::Cache<(String, String), Timestamp>,
    locks: Vec<Mutex<()>>,
}

/// Shared state of the webhook handlers. Cheap to clone.
#[derive(Clone)]
pub struct WebhookState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl WebhookState {
    /// State over `store`, counting into `metrics`.
    pub fn new(
        config: WebhookConfig,
        store: Arc<dyn EnvironmentStore>,
        metrics: WebhookMetrics,
    ) -> Self {
        let deliveries = moka::future::Cache::builder()
            .max_capacity(config.delivery_cache_capacity)
            .time_to_live(config.delivery_cache_ttl)
            .build();
        let tombstones = moka::sync::Cache::builder()
            .max_capacity(config.delivery_cache_capacity)
            .time_to_live(config.delivery_cache_ttl)
            .build();
        let locks = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        WebhookState {
            inner: Arc::new(Inner {
                config,
                store,
                metrics,
                deliveries,
                tombstones,
                locks,
            }),
        }
    }

    /// The metrics this state counts into.
    pub fn metrics(&self) -> &WebhookMetrics {
        &self.inner.metrics
    }

    fn lock_for(&self, namespace: &str, name: &str) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        (namespace, name).hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        &self.inner.locks[index]
    }

    async fn with_timeout<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.config.store_timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable("store call timed out".into())),
        }
    }
}

/// The webhook router: `POST /webhook`, `GET /healthz`, `GET /readyz`.
pub fn router(state: WebhookState) -> Router {
    let config = &state.inner.config;
    // Backstop over the whole request; the body read and each store call have their own,
    // shorter deadlines that answer 408 and 503.
    let overall = config.read_timeout + config.store_timeout * 8 + Duration::from_secs(1);
    // The body limit is enforced in the handler (Content-Length first, then while
    // reading), so oversized deliveries are logged and counted like every other.
    let webhook = Router::new()
        .route("/webhook", post(handle_delivery))
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .merge(webhook)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            overall,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(state): State<WebhookState>) -> Response {
    match state.with_timeout(state.inner.store.ready()).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response(),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

enum PayloadKind {
    Json,
    Form,
}

fn payload_kind(headers: &HeaderMap) -> Option<PayloadKind> {
    let value = header_str(headers, header::CONTENT_TYPE.as_str())?;
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(PayloadKind::Json),
        "application/x-www-form-urlencoded" => Some(PayloadKind::Form),
        _ => None,
    }
}

fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

async fn handle_delivery(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let delivery = header_str(&headers, "x-github-delivery").map(str::to_owned);
    let event = header_str(&headers, "x-github-event").map(str::to_owned);
    let span = tracing::info_span!(
        "webhook_delivery",
        delivery = delivery.as_deref().unwrap_or(""),
        event = event.as_deref().unwrap_or(""),
    );
    let (outcome, facts) = receive(
        &state,
        &headers,
        body,
        delivery.as_deref(),
        event.as_deref(),
    )
    .instrument(span.clone())
    .await;
    state
        .inner
        .metrics
        .record(event.as_deref().unwrap_or("unknown"), outcome.outcome);
    tracing::info!(
        parent: &span,
        delivery = delivery.as_deref().unwrap_or(""),
        event = event.as_deref().unwrap_or(""),
        action = facts.action.as_deref().unwrap_or(""),
        repository = facts.repository.as_deref().unwrap_or(""),
        pr = facts.number.unwrap_or(0),
        status = outcome.status,
        outcome = outcome.outcome,
        reason = outcome.reason.as_deref().unwrap_or(""),
        "webhook delivery"
    );
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ResponseBody {
        delivery: delivery.as_deref(),
        outcome: &outcome,
    };
    (status, axum::Json(body)).into_response()
}

/// What the logs say about a delivery.
#[derive(Default)]
struct Facts {
    action: Option<String>,
    repository: Option<String>,
    number: Option<u64>,
}

async fn receive(
    state: &WebhookState,
    headers: &HeaderMap,
    body: Body,
    delivery: Option<&str>,
    event: Option<&str>,
) -> (DeliveryOutcome, Facts) {
    let mut facts = Facts::default();
    let config = &state.inner.config;
    let Some(kind) = payload_kind(headers) else {
        return (
            DeliveryOutcome::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Some(
                    "content type must be application/json or application/x-www-form-urlencoded"
                        .into(),
                ),
            ),
            facts,
        );
    };
    let (Some(delivery), Some(event)) = (delivery, event) else {
        return (
            DeliveryOutcome::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some("X-GitHub-Event and X-GitHub-Delivery are required".into()),
            ),
            facts,
        );
    };
    let declared =
        header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.body_limit as u64) {
        return (
            DeliveryOutcome::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", None),
            facts,
        );
    }
    let raw = match tokio::time::timeout(
        config.read_timeout,
        axum::body::to_bytes(body, config.body_limit),
    )
    .await
    {
        Err(_) => {
            return (
                DeliveryOutcome::new(StatusCode::REQUEST_TIMEOUT, "timeout", None),
                facts,
            );
        }
        Ok(Err(err)) => {
            let inner = err.into_inner();
            let outcome = if is_length_limit(inner.as_ref()) {
                DeliveryOutcome::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", None)
            } else {
                DeliveryOutcome::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    Some(format!("could not read body: {inner}")),
                )
            };
            return (outcome, facts);
        }
        Ok(Ok(raw)) => raw,
    };
    if let Err(err) =
        signature::verify(&config.secrets, header_str(headers, SIGNATURE_HEADER), &raw)
    {
        return (
            DeliveryOutcome::new(
                StatusCode::UNAUTHORIZED,
                "rejected_signature",
                Some(err.category().to_string()),
            ),
            facts,
        );
    }
    let payload: bytes::Bytes = match kind {
        PayloadKind::Json => raw,
        PayloadKind::Form => match form_urlencoded::parse(&raw).find(|(key, _)| key == "payload") {
            Some((_, value)) => bytes::Bytes::from(value.into_owned()),
            None => {
                return (
                    DeliveryOutcome::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        Some("form body has no payload field".into()),
                    ),
                    facts,
                );
            }
        },
    };
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(&payload) {
        facts.action = envelope.action;
        facts.repository = envelope.repository.map(|r| r.full_name);
    }
    if let Some(previous) = state.inner.deliveries.get(delivery).await {
        return (
            DeliveryOutcome::new(
                StatusCode::OK,
                "duplicate",
                Some(format!("already answered {}", previous.outcome)),
            ),
            facts,
        );
    }
    let outcome = match event {
        "ping" => DeliveryOutcome::new(StatusCode::OK, "pong", None),
        "pull_request" => match serde_json::from_slice::<PullRequestEvent>(&payload) {
            Ok(pr_event) => {
                facts.number = Some(pr_event.number);
                handle_pull_request(state, delivery, &pr_event).await
            }
            Err(err) => DeliveryOutcome::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some(format!("not a pull_request payload: {err}")),
            ),
        },
        _ => DeliveryOutcome::new(StatusCode::OK, "ignored", Some("event_not_handled".into())),
    };
    if outcome.is_success() {
        state
            .inner
            .deliveries
            .insert(delivery.to_string(), outcome.clone())
            .await;
    }
    (outcome, facts)
}

fn parse_time(value: Option<&str>) -> Option<Timestamp> {
    value.and_then(|v| v.parse::<Timestamp>().ok())
}

fn annotation<'a>(env: &'a PreviewEnvironment, key: &str) -> Option<&'a str> {
    env.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn store_failure(err: &StoreError) -> DeliveryOutcome {
    match err {
        StoreError::Invalid(msg) => DeliveryOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some(msg.clone()),
        ),
        other => DeliveryOutcome::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            Some(other.to_string()),
        ),
    }
}

/// Handles a parsed `pull_request` event: decide, then apply or delete the environment.
async fn handle_pull_request(
    state: &WebhookState,
    delivery: &str,
    event: &PullRequestEvent,
) -> DeliveryOutcome {
    // Cheap exit before any store call for actions that never matter.
    if !policy::HANDLED_ACTIONS.contains(&event.action.as_str()) {
        return DeliveryOutcome::new(StatusCode::OK, "ignored", Some("action_not_handled".into()));
    }
    let repository = event.base_repository().to_string();
    let settings = match state
        .with_timeout(state.inner.store.find_repository(&repository))
        .await
    {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            return DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                "unknown_repository",
                Some(format!("no PreviewRepository for {repository}")),
            );
        }
        Err(err) => return store_failure(&err),
    };
    let Some(namespace) = settings.metadata.namespace.clone() else {
        return DeliveryOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("PreviewRepository has no namespace".into()),
        );
    };
    let name = render::environment_name(&settings.spec.repository, event.number);
    let _guard = state.lock_for(&namespace, &name).lock().await;
    for _ in 0..MAX_CONFLICT_RETRIES {
        match attempt(state, delivery, event, &settings, &namespace, &name).await {
            Err(StoreError::Conflict) => continue,
            Err(err) => return store_failure(&err),
            Ok(outcome) => return outcome,
        }
    }
    DeliveryOutcome::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        Some("the environment kept changing concurrently".into()),
    )
}

/// One read-decide-write round; `Err(Conflict)` means read again.
async fn attempt(
    state: &WebhookState,
    delivery: &str,
    event: &PullRequestEvent,
    settings: &PreviewRepository,
    namespace: &str,
    name: &str,
) -> Result<DeliveryOutcome, StoreError> {
    let store = &state.inner.store;
    let existing = state
        .with_timeout(store.get_environment(namespace, name))
        .await?;
    let approved = existing
        .as_ref()
        .and_then(|e| annotation(e, ANNOTATION_APPROVED_SHA));
    let decision = policy::decide(event, &settings.spec.gating, approved);
    let incoming = parse_time(Some(&event.pull_request.updated_at));
    let key = (namespace.to_string(), name.to_string());

    // Out-of-order protection: an event older than what the environment (or its
    // deletion) records never changes anything.
    let recorded = existing
        .as_ref()
        .and_then(|e| parse_time(annotation(e, ANNOTATION_PR_UPDATED_AT)));
    let stale = match (incoming, recorded, existing.is_some()) {
        (Some(inc), Some(rec), true) => inc < rec,
        (Some(inc), _, false) => state
            .inner
            .tombstones
            .get(&key)
            .is_some_and(|deleted| inc <= deleted),
        _ => false,
    };
    let terminating = existing
        .as_ref()
        .is_some_and(|e| e.metadata.deletion_timestamp.is_some());

    match decision {
        Decision::Ignore { reason } => Ok(DeliveryOutcome::new(
            StatusCode::OK,
            "ignored",
            Some(reason.to_string()),
        )),
        Decision::Remove { reason } => {
            let Some(existing) = existing else {
                return Ok(DeliveryOutcome::new(
                    StatusCode::ACCEPTED,
                    "absent",
                    Some(reason.to_string()),
                ));
            };
            if stale {
                return Ok(DeliveryOutcome::new(
                    StatusCode::ACCEPTED,
                    "stale",
                    Some(format!("older than the environment ({reason})")),
                ));
            }
            if terminating {
                return Ok(DeliveryOutcome::new(
                    StatusCode::ACCEPTED,
                    "deleted",
                    Some(format!("{reason}; deletion already in progress")),
                ));
            }
            let rv = existing
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            let deleted = state
                .with_timeout(store.delete_environment(namespace, name, &rv))
                .await?;
            if let Some(inc) = incoming {
                state.inner.tombstones.insert(key, inc);
            }
            Ok(DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                if deleted { "deleted" } else { "absent" },
                Some(reason.to_string()),
            ))
        }
        Decision::Apply { approved_sha } => {
            if stale {
                return Ok(DeliveryOutcome::new(
                    StatusCode::ACCEPTED,
                    "stale",
                    Some("older than the environment".into()),
                ));
            }
            if terminating {
                return Ok(DeliveryOutcome::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    Some("the environment is being deleted; redeliver later".into()),
                ));
            }
            let desired = match desired_environment(
                event,
                settings,
                existing.as_ref(),
                delivery,
                approved_sha.as_deref(),
            ) {
                Ok(env) => env,
                Err(err) => {
                    return Ok(DeliveryOutcome::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        Some(format!("{}: {err}", err.category())),
                    ));
                }
            };
            if let Some(existing) = &existing
                && same_desired_state(existing, &desired)
            {
                return Ok(DeliveryOutcome::new(
                    StatusCode::ACCEPTED,
                    "unchanged",
                    None,
                ));
            }
            let precondition = match existing.and_then(|e| e.metadata.resource_version) {
                Some(rv) => Precondition::ResourceVersion(rv),
                None => Precondition::Absent,
            };
            state
                .with_timeout(store.apply_environment(&desired, &precondition))
                .await?;
            Ok(DeliveryOutcome::new(StatusCode::ACCEPTED, "applied", None))
        }
    }
}

/// The PR snapshot the renderer needs, from a webhook event.
pub fn snapshot(event: &PullRequestEvent, previous_activity: Option<&str>) -> PullRequestSnapshot {
    let pr = &event.pull_request;
    let pushed = matches!(event.action.as_str(), "opened" | "reopened" | "synchronize");
    PullRequestSnapshot {
        repository: event.base_repository().to_string(),
        number: event.number,
        branch: pr.head.git_ref.clone(),
        head_sha: pr.head.sha.clone(),
        base_branch: Some(pr.base.git_ref.clone()),
        author: Some(pr.user.login.clone()),
        updated_at: Some(pr.updated_at.clone()),
        last_activity: if pushed {
            Some(pr.updated_at.clone())
        } else {
            previous_activity
                .map(str::to_owned)
                .or_else(|| Some(pr.updated_at.clone()))
        },
    }
}

/// Renders the environment for `event` from `settings` and adds the webhook's
/// annotations (head SHA, delivery id, approved fork commit).
pub fn desired_environment(
    event: &PullRequestEvent,
    settings: &PreviewRepository,
    existing: Option<&PreviewEnvironment>,
    delivery: &str,
    approved_sha: Option<&str>,
) -> Result<PreviewEnvironment, render::RenderError> {
    let previous_activity = existing.and_then(|e| annotation(e, ANNOTATION_LAST_ACTIVITY));
    let mut env = render::render_environment(settings, &snapshot(event, previous_activity))?;
    let annotations = env
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(
        ANNOTATION_HEAD_SHA.to_string(),
        event.pull_request.head.sha.clone(),
    );
    annotations.insert(ANNOTATION_DELIVERY.to_string(), delivery.to_string());
    if let Some(sha) = approved_sha {
        annotations.insert(ANNOTATION_APPROVED_SHA.to_string(), sha.to_string());
    }
    Ok(env)
}

/// The existing object already holds everything `desired` says, apart from the
/// delivery id.
fn same_desired_state(existing: &PreviewEnvironment, desired: &PreviewEnvironment) -> bool {
    if existing.spec != desired.spec {
        return false;
    }
    let existing_annotations = existing.metadata.annotations.clone().unwrap_or_default();
    let desired_annotations = desired.metadata.annotations.clone().unwrap_or_default();
    let annotations_match = desired_annotations
        .iter()
        .filter(|(k, _)| k.as_str() != ANNOTATION_DELIVERY)
        .all(|(k, v)| existing_annotations.get(k) == Some(v))
        && existing_annotations.contains_key(ANNOTATION_APPROVED_SHA)
            == desired_annotations.contains_key(ANNOTATION_APPROVED_SHA);
    let existing_labels = existing.metadata.labels.clone().unwrap_or_default();
    let labels_match = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing_labels.get(k) == Some(v));
    annotations_match && labels_match
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> PreviewRepository {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewRepository",
            "metadata": {"name": "shop", "namespace": "previews"},
            "spec": {
                "repository": "acme/shop",
                "baseDomain": "preview.acme.dev",
                "catalogue": {"services": [{"name": "web", "image": "ghcr.io/acme/web:{{sha}}"}]}
            }
        }))
        .unwrap()
    }

    fn event(action: &str, sha: &str, updated_at: &str) -> PullRequestEvent {
        serde_json::from_value(json!({
            "action": action,
            "number": 12,
            "pull_request": {
                "number": 12, "state": "open", "draft": false,
                "updated_at": updated_at,
                "user": {"login": "dev"},
                "head": {"ref": "feat/x", "sha": sha, "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "sha": "bbbbbbb", "repo": {"full_name": "acme/shop"}}
            },
            "repository": {"full_name": "acme/shop"}
        }))
        .unwrap()
    }

    #[test]
    fn desired_environment_is_a_complete_apply_body() {
        let env = desired_environment(
            &event("opened", "abcdef1", "2024-01-01T00:00:00Z"),
            &settings(),
            None,
            "d-1",
            Some("abcdef1"),
        )
        .unwrap();
        let body = serde_json::to_value(&env).unwrap();
        assert_eq!(body["apiVersion"], "previewd.io/v1alpha1");
        assert_eq!(body["kind"], "PreviewEnvironment");
        assert_eq!(body["metadata"]["namespace"], "previews");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations[ANNOTATION_HEAD_SHA], "abcdef1");
        assert_eq!(annotations[ANNOTATION_DELIVERY], "d-1");
        assert_eq!(annotations[ANNOTATION_APPROVED_SHA], "abcdef1");
        assert_eq!(
            annotations[ANNOTATION_PR_UPDATED_AT],
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            annotations[ANNOTATION_LAST_ACTIVITY],
            "2024-01-01T00:00:00Z"
        );
        assert!(body.get("status").is_none_or(serde_json::Value::is_null));
    }

    #[test]
    fn last_activity_moves_only_on_pushes() {
        let s = snapshot(
            &event("labeled", "abcdef1", "2024-01-02T00:00:00Z"),
            Some("2024-01-01T00:00:00Z"),
        );
        assert_eq!(s.last_activity.as_deref(), Some("2024-01-01T00:00:00Z"));
        let s = snapshot(
            &event("synchronize", "abcdef2", "2024-01-03T00:00:00Z"),
            Some("2024-01-01T00:00:00Z"),
        );
        assert_eq!(s.last_activity.as_deref(), Some("2024-01-03T00:00:00Z"));
    }

    #[test]
    fn same_state_ignores_the_delivery_id_only() {
        let s = settings();
        let a = desired_environment(
            &event("opened", "abcdef1", "2024-01-01T00:00:00Z"),
            &s,
            None,
            "d-1",
            None,
        )
        .unwrap();
        let b = desired_environment(
            &event("opened", "abcdef1", "2024-01-01T00:00:00Z"),
            &s,
            None,
            "d-2",
            None,
        )
        .unwrap();
        assert!(same_desired_state(&a, &b));
        let c = desired_environment(
            &event("opened", "abcdef2", "2024-01-01T00:00:00Z"),
            &s,
            None,
            "d-3",
            None,
        )
        .unwrap();
        assert!(!same_desired_state(&a, &c));
        let d = desired_environment(
            &event("opened", "abcdef1", "2024-01-01T00:00:00Z"),
            &s,
            None,
            "d-4",
            Some("abcdef1"),
        )
        .unwrap();
        assert!(!same_desired_state(&a, &d));
    }
}
