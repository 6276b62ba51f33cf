//! The webhook server: `POST /webhook`, `GET /healthz`, `GET /readyz`.
//!
//! A delivery is checked in this order, and nothing is written unless every check passes:
//!
//! | check | answer |
//! |---|---|
//! | `Content-Type` is `application/json` or `application/x-www-form-urlencoded` | 415 |
//! | `X-GitHub-Event` and `X-GitHub-Delivery` present | 400 |
//! | event is `pull_request`, `issue_comment`, a check event, an access event (`member`, `membership`, `organization`, `team`) or `ping` (nothing else is read) | 200 `ignored` |
//! | `X-Hub-Signature-256` is `sha256=` and 64 hex digits | 401 |
//! | declared `Content-Length` within the limit (default 1 MiB) | 413 |
//! | fewer than [`WebhookConfig::max_in_flight`] bodies being read | 503 `overloaded` |
//! | body within the limit while reading | 413 |
//! | body read within the read timeout | 408 |
//! | `X-Hub-Signature-256` matches the raw body | 401 |
//! | same delivery id seen and answered 2xx recently | 200 `duplicate` |
//! | payload parsed (the body's slot is freed); fewer than [`WebhookConfig::max_handling`] deliveries being handled | 503 `overloaded` |
//! | `ping` | 200 `pong` |
//! | an access event: cached permissions it may change are dropped | 200 `forgotten` |
//! | unhandled actions, policy says leave alone | 200 `ignored` |
//! | payload parses as a `pull_request` event with an RFC 3339 `updated_at` | 400 |
//! | exactly one allowed `PreviewRepository` claims the repository | 202 `unknown_repository` / `conflicting_claims` |
//! | a fork approval (approval label added): the sender is a maintainer and GitHub still reports the payload's head ([`crate::approval`]) | 200 `refused` / 503 `github_unavailable` |
//! | event newer than what the environment or the recorded close holds ([`crate::decision`]) | 202 `stale` / 200 `duplicate` |
//! | the environment rendered and written (or deleted) | 202 `applied` / `deleted` / `unchanged` / `absent` |
//! | rendering refused the settings or payload | 422 |
//! | the Kubernetes API failed or timed out | 503 (GitHub records a failure; redeliver) |
//!
//! The handler never waits for the environment: the `PreviewEnvironment` is the durable
//! queue the controller works from. It calls GitHub only to authorise: the permission of
//! a PR command's author and of a fork's approver, and the head of a pull request being
//! approved ([`crate::permission`], [`crate::approval`]), each within
//! [`WebhookConfig::github_timeout`].
//!
//! # Before authentication
//!
//! Everything up to the signature check is open to anyone on the internet, so it is
//! bounded: [`serve`] speaks HTTP/1.1 only, closes connections whose request head does not
//! arrive within [`ServeLimits::header_read_timeout`], caps open connections and the
//! per-connection buffer; the handler rejects by headers alone (event, signature syntax,
//! `Content-Length`) before reading a byte of the body, and reads at most
//! [`WebhookConfig::max_in_flight`] bodies at once, so buffered bodies never exceed
//! `max_in_flight × body_limit`. A verified delivery keeps only its parsed event while
//! the Kubernetes API is called, under a second, larger limit
//! ([`WebhookConfig::max_handling`]): when the API server is slow, deliveries wait on it
//! instead of being refused for want of body slots. The `event` label of the delivery
//! metric takes values from a fixed list only ([`crate::metrics::event_label`]).
//! `/readyz` answers from a cached check of the API server, refreshed at most every
//! [`WebhookConfig::ready_cache_ttl`], whatever the request rate.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use previewd_core::checks::RecordedChecks;
use previewd_kube::crd::{
    ANNOTATION_CHECKS, ANNOTATION_DELIVERY, ANNOTATION_LAST_ACTIVITY, ANNOTATION_PR_TITLE,
    ANNOTATION_PR_URL, CONDITION_CLAIMED, LABEL_FORK, PR_TITLE_MAX_CHARS, PreviewEnvironment,
    PreviewRepository,
};
use previewd_kube::render::{self, PullRequestSnapshot};
use secrecy::SecretString;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::approval::{self, ApprovalCheck, ApprovalRecord};
use crate::ci;
use crate::claims::{self, ClaimPolicy, ClaimVerdict};
use crate::command::{self, CommandPolicy, CommandResponder, Reaction};
use crate::decision::{self, ANNOTATION_APPROVED_AT, ANNOTATION_APPROVED_BY, Plan};
use crate::event::{Envelope, IssueCommentEvent, PullRequestEvent};
use crate::metrics::WebhookMetrics;
use crate::permission::{self, PermissionPolicy, Permissions, RepositoryAccess};
use crate::policy::{self, Approval, Decision};
use crate::signature::{self, SIGNATURE_HEADER};
use crate::store::{EnvironmentStore, Precondition, StoreError};

pub use crate::decision::{ANNOTATION_APPROVED_SHA, ANNOTATION_HEAD_SHA};

/// Default body limit: 1 MiB. The largest real `pull_request` payload is ~28 KB; a PR
/// body is capped by GitHub at 65 536 characters, so even an adversarial but genuine
/// payload stays far below.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Events whose body is read; every other event is answered `ignored` from its headers.
pub const HANDLED_EVENTS: &[&str] = &[
    "pull_request",
    "issue_comment",
    "ping",
    "check_run",
    "check_suite",
    "status",
    "member",
    "membership",
    "organization",
    "team",
];

const LOCK_STRIPES: usize = 64;
const REACTIONS_IN_FLIGHT: usize = 16;
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
    /// Deliveries whose body is read, verified and parsed at once; more are answered 503
    /// before their body is read. Bounds buffered bodies to `max_in_flight × body_limit`.
    pub max_in_flight: usize,
    /// Verified deliveries being handled (their Kubernetes API calls) at once, each
    /// holding only its parsed event; more are answered 503 `overloaded`.
    pub max_handling: usize,
    /// How long `/readyz` reuses the answer of the last API server check.
    pub ready_cache_ttl: Duration,
    /// Which namespaces may claim which repositories.
    pub claim_policy: ClaimPolicy,
    /// Deprecated filter on PR commenters' author association, in front of the
    /// permission check (default: none).
    pub command_policy: CommandPolicy,
    /// Who is a maintainer (runs PR commands, approves forks): their permission on the
    /// repository.
    pub permission_policy: PermissionPolicy,
    /// How long a user's permission on a repository is reused.
    pub permission_cache_ttl: Duration,
    /// Time allowed for each question to GitHub (a permission, a pull request's head);
    /// slower answers count as no answer, and the action waiting on them is refused.
    pub github_timeout: Duration,
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
            .field("max_in_flight", &self.max_in_flight)
            .field("max_handling", &self.max_handling)
            .field("ready_cache_ttl", &self.ready_cache_ttl)
            .field("claim_policy", &self.claim_policy)
            .field("command_policy", &self.command_policy)
            .field("permission_policy", &self.permission_policy)
            .field("permission_cache_ttl", &self.permission_cache_ttl)
            .field("github_timeout", &self.github_timeout)
            .finish()
    }
}

impl WebhookConfig {
    /// Defaults (1 MiB, 10 s read timeout, 5 s store timeout, 10 000 deliveries for 1 h,
    /// 32 in flight, `/readyz` cached for 5 s, any namespace may claim a repository,
    /// maintainers have write or above, permissions reused for 5 min, 5 s per question
    /// to GitHub) with one secret.
    pub fn new(secret: impl Into<String>) -> Self {
        WebhookConfig {
            secrets: vec![SecretString::from(secret.into())],
            body_limit: DEFAULT_BODY_LIMIT,
            read_timeout: Duration::from_secs(10),
            store_timeout: Duration::from_secs(5),
            delivery_cache_capacity: 10_000,
            delivery_cache_ttl: Duration::from_secs(3600),
            max_in_flight: 32,
            max_handling: 256,
            ready_cache_ttl: Duration::from_secs(5),
            claim_policy: ClaimPolicy::open(),
            command_policy: CommandPolicy::default(),
            permission_policy: PermissionPolicy::default(),
            permission_cache_ttl: Duration::from_secs(300),
            github_timeout: Duration::from_secs(5),
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
    locks: Vec<Mutex<()>>,
    in_flight: Arc<Semaphore>,
    /// Verified deliveries being handled.
    handling: Arc<Semaphore>,
    /// Last `/readyz` check of the store: when, and the answer. The lock is held while
    /// checking, so concurrent probes share one API call.
    ready: Mutex<Option<(Instant, Result<(), String>)>>,
    /// Acknowledges PR commands on GitHub, when configured.
    responder: Option<Arc<dyn CommandResponder>>,
    /// Answers who is a maintainer, when GitHub is configured; without it no command
    /// runs and no fork is approved.
    permissions: Option<Arc<Permissions>>,
    /// Bounds the background acknowledgements in flight.
    reactions: Arc<Semaphore>,
    /// Where verified deliveries record which App installation serves their repository.
    installations: Option<crate::client::InstallationDirectory>,
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
        let locks = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let handling = Arc::new(Semaphore::new(config.max_handling.max(1)));
        WebhookState {
            inner: Arc::new(Inner {
                config,
                store,
                metrics,
                deliveries,
                locks,
                in_flight,
                handling,
                ready: Mutex::new(None),
                responder: None,
                permissions: None,
                reactions: Arc::new(Semaphore::new(REACTIONS_IN_FLIGHT)),
                installations: None,
            }),
        }
    }

    /// Acknowledges PR commands with reactions through `responder` (call before serving).
    pub fn with_responder(mut self, responder: Arc<dyn CommandResponder>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.responder = Some(responder);
        }
        self
    }

    /// Decides who is a maintainer by asking `access` (call before serving): the
    /// permission of PR commenters and fork approvers, and the head of a pull request
    /// being approved. Without it, commands and fork approvals are refused.
    pub fn with_repository_access(mut self, access: Arc<dyn RepositoryAccess>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.permissions = Some(Arc::new(Permissions::new(
                access,
                inner.config.permission_policy.clone(),
                inner.config.permission_cache_ttl,
                inner.config.github_timeout,
            )));
        }
        self
    }

    /// Records in `directory` the App installation each verified delivery names for its
    /// repository (`installation.id`), so that the GitHub client answering it uses that
    /// installation's token without asking GitHub (call before serving).
    pub fn with_installations(mut self, directory: crate::client::InstallationDirectory) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.installations = Some(directory);
        }
        self
    }

    /// Reacts to a comment in the background; dropped when too many are in flight (a
    /// flood of comments never queues work without bound).
    fn react(&self, repository: &str, comment_id: u64, reaction: Reaction) {
        let Some(responder) = self.inner.responder.clone() else {
            return;
        };
        let Ok(permit) = self.inner.reactions.clone().try_acquire_owned() else {
            tracing::warn!(
                repository,
                comment_id,
                "too many reactions in flight; skipped"
            );
            return;
        };
        let repository = repository.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            responder.react(&repository, comment_id, reaction).await;
        });
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

    /// Runs one store call under the store timeout, timing it as `operation`.
    async fn with_timeout<T>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let (outcome, result) =
            match tokio::time::timeout(self.inner.config.store_timeout, fut).await {
                Ok(Ok(value)) => ("ok", Ok(value)),
                Ok(Err(err)) => ("error", Err(err)),
                Err(_) => (
                    "timeout",
                    Err(StoreError::Unavailable("store call timed out".into())),
                ),
            };
        self.inner
            .metrics
            .observe_store(operation, outcome, started.elapsed().as_secs_f64());
        result
    }
}

/// The webhook router: `POST /webhook`, `GET /healthz`, `GET /readyz`.
pub fn router(state: WebhookState) -> Router {
    let config = &state.inner.config;
    // Backstop over the whole request; the body read and each store call have their own,
    // shorter deadlines that answer 408 and 503.
    let overall = config.read_timeout
        + config.store_timeout * 8
        + config.github_timeout * 2
        + Duration::from_secs(1);
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

/// Connection-level limits of [`serve_with_limits`].
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Open connections; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Time for a request head (line and headers) to arrive, from connection open and
    /// between keep-alive requests; slower connections are closed.
    pub header_read_timeout: Duration,
    /// Largest read buffer of one connection (bounds a request head), bytes.
    pub max_buf_size: usize,
    /// Time in-flight requests get to finish after shutdown is requested.
    pub drain_timeout: Duration,
}

impl Default for ServeLimits {
    /// 256 connections, 5 s for a request head, 64 KiB buffers, 10 s to drain.
    fn default() -> Self {
        ServeLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            max_buf_size: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` with [`ServeLimits::default`] until `shutdown` is
/// cancelled, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, shutdown, ServeLimits::default()).await
}

/// Serves `router` over HTTP/1.1 with a header read timeout, a connection cap and a
/// bounded read buffer per connection (`axum::serve` sets no timer, so hyper's header
/// timeout would silently be off, and HTTP/2 has none).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %err, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_buf_size.max(8192));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "webhook connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(limits.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("webhook connections still open after the drain timeout");
    }
    Ok(())
}

async fn readyz(State(state): State<WebhookState>) -> Response {
    let ttl = state.inner.config.ready_cache_ttl;
    let mut cached = state.inner.ready.lock().await;
    let answer = match cached.as_ref() {
        Some((at, answer)) if at.elapsed() < ttl => answer.clone(),
        _ => {
            let answer = state
                .with_timeout("ready", state.inner.store.ready())
                .await
                .map_err(|err| err.to_string());
            *cached = Some((Instant::now(), answer.clone()));
            answer
        }
    };
    drop(cached);
    match answer {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err).into_response(),
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
    // Everything below runs before the sender is authenticated: answer from the headers
    // alone wherever possible, and read at most `max_in_flight` bodies at once.
    if !HANDLED_EVENTS.contains(&event) {
        return (
            DeliveryOutcome::new(StatusCode::OK, "ignored", Some("event_not_handled".into())),
            facts,
        );
    }
    if let Err(err) = signature::check_syntax(header_str(headers, SIGNATURE_HEADER)) {
        return (
            DeliveryOutcome::new(
                StatusCode::UNAUTHORIZED,
                "rejected_signature",
                Some(err.category().to_string()),
            ),
            facts,
        );
    }
    let declared =
        header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.body_limit as u64) {
        return (
            DeliveryOutcome::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", None),
            facts,
        );
    }
    let Ok(body_permit) = state.inner.in_flight.clone().try_acquire_owned() else {
        return (overloaded("too many deliveries in flight"), facts);
    };
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
        // The signature is verified: the installation is GitHub's word.
        if let (Some(directory), Some(repository), Some(installation)) = (
            &state.inner.installations,
            &envelope.repository,
            &envelope.installation,
        ) {
            directory
                .remember(&repository.full_name, installation.id)
                .await;
        }
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
    // Parsed, the body is no longer needed: its slot goes to the next delivery, and this
    // one waits on the API under the larger handling limit.
    let parsed = match event {
        "ping" => Parsed::Ping,
        "pull_request" => match serde_json::from_slice::<PullRequestEvent>(&payload) {
            Ok(pr_event) => {
                facts.number = Some(pr_event.number);
                Parsed::PullRequest(Box::new(pr_event))
            }
            Err(err) => Parsed::Answer(DeliveryOutcome::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some(format!("not a pull_request payload: {err}")),
            )),
        },
        "check_run" | "check_suite" | "status" => match ci::report_of(event, &payload) {
            Ok(Some(report)) => Parsed::Check(Box::new(report)),
            Ok(None) => Parsed::Answer(DeliveryOutcome::new(
                StatusCode::OK,
                "ignored",
                Some("action_not_handled".into()),
            )),
            Err(err) => Parsed::Answer(DeliveryOutcome::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some(format!("not a {event} payload: {err}")),
            )),
        },
        "member" | "membership" | "organization" | "team" => {
            match permission::access_change(event, &payload) {
                Ok(change) => Parsed::Access(change),
                Err(err) => Parsed::Answer(DeliveryOutcome::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    Some(format!("not a {event} payload: {err}")),
                )),
            }
        }
        "issue_comment" => match serde_json::from_slice::<IssueCommentEvent>(&payload) {
            Ok(comment) => {
                facts.number = Some(comment.issue.number);
                Parsed::Comment(Box::new(comment))
            }
            Err(err) => Parsed::Answer(DeliveryOutcome::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                Some(format!("not an issue_comment payload: {err}")),
            )),
        },
        _ => Parsed::Answer(DeliveryOutcome::new(
            StatusCode::OK,
            "ignored",
            Some("event_not_handled".into()),
        )),
    };
    drop(payload);
    drop(body_permit);
    // Only deliveries that call the store take a handling slot.
    let _handling = match &parsed {
        Parsed::Ping | Parsed::Answer(_) | Parsed::Access(_) => None,
        _ => match state.inner.handling.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return (overloaded("too many deliveries being handled"), facts),
        },
    };
    let outcome = match parsed {
        Parsed::Ping => DeliveryOutcome::new(StatusCode::OK, "pong", None),
        Parsed::PullRequest(pr_event) => handle_pull_request(state, delivery, &pr_event).await,
        Parsed::Check(report) => handle_check(state, &report).await,
        Parsed::Comment(comment) => handle_issue_comment(state, &comment).await,
        Parsed::Access(change) => match &state.inner.permissions {
            Some(permissions) => {
                permissions.apply(&change).await;
                DeliveryOutcome::new(StatusCode::OK, "forgotten", None)
            }
            None => DeliveryOutcome::new(
                StatusCode::OK,
                "ignored",
                Some("no_permission_cache".into()),
            ),
        },
        Parsed::Answer(outcome) => outcome,
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

/// A verified delivery, parsed: what is left of it once its body is dropped.
enum Parsed {
    Ping,
    PullRequest(Box<PullRequestEvent>),
    Check(Box<ci::CheckReport>),
    Comment(Box<IssueCommentEvent>),
    /// Someone's access to repositories may have changed.
    Access(permission::AccessChange),
    /// Answered without the store.
    Answer(DeliveryOutcome),
}

fn annotation<'a>(env: &'a PreviewEnvironment, key: &str) -> Option<&'a str> {
    env.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// 503 `overloaded`: a limit of the webhook itself is reached; redeliver later.
fn overloaded(why: &str) -> DeliveryOutcome {
    DeliveryOutcome::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        Some(why.to_string()),
    )
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

/// Whether `repo` already carries the `Claimed` condition `verdict` describes.
fn claim_recorded(repo: &PreviewRepository, verdict: &ClaimVerdict) -> bool {
    repo.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|c| {
            c.type_ == CONDITION_CLAIMED
                && c.status == if verdict.claimed { "True" } else { "False" }
                && c.reason == verdict.reason
                && c.message == verdict.message
        })
    })
}

/// Writes the `Claimed` conditions that changed. Failures are logged, not fatal: the
/// binding itself is decided from the objects, not from their status.
async fn record_claims(
    state: &WebhookState,
    candidates: &[PreviewRepository],
    verdicts: &[ClaimVerdict],
) {
    for verdict in verdicts {
        let recorded = candidates.iter().any(|r| {
            r.metadata.namespace.as_deref() == Some(verdict.namespace.as_str())
                && r.metadata.name.as_deref() == Some(verdict.name.as_str())
                && claim_recorded(r, verdict)
        });
        if recorded {
            continue;
        }
        if let Err(err) = state
            .with_timeout("record_claim", state.inner.store.record_claim(verdict))
            .await
        {
            tracing::warn!(namespace = %verdict.namespace, name = %verdict.name, error = %err, "could not record the Claimed condition");
        }
    }
}

/// Handles a parsed `pull_request` event: find the repository's one binding, then plan
/// ([`decision::plan`]) and carry the plan out.
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
    let candidates = match state
        .with_timeout(
            "find_repositories",
            state.inner.store.find_repositories(&repository),
        )
        .await
    {
        Ok(candidates) => candidates,
        Err(err) => return store_failure(&err),
    };
    let resolution = claims::resolve(
        &repository,
        candidates.clone(),
        &state.inner.config.claim_policy,
    );
    record_claims(state, &candidates, &resolution.verdicts).await;
    let Some(settings) = resolution.bound else {
        let conflict = resolution
            .verdicts
            .iter()
            .any(|v| v.reason == claims::REASON_CONFLICT);
        return if conflict {
            DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                "conflicting_claims",
                Some(format!(
                    "several PreviewRepository objects claim {repository}; see their Claimed condition"
                )),
            )
        } else {
            DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                "unknown_repository",
                Some(format!("no PreviewRepository may claim {repository}")),
            )
        };
    };
    let Some(namespace) = settings.metadata.namespace.clone() else {
        return DeliveryOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("PreviewRepository has no namespace".into()),
        );
    };
    let approved = match verify_approval(state, event, &settings).await {
        Ok(approved) => approved,
        Err(outcome) => return outcome,
    };
    let name = render::environment_name(&settings.spec.repository, event.number);
    let _guard = state.lock_for(&namespace, &name).lock().await;
    let mut settings = settings;
    for round in 0..MAX_CONFLICT_RETRIES {
        if round > 0 {
            // Re-read the settings too, from the API server: their status holds the
            // tombstones.
            let repo_name = settings.metadata.name.clone().unwrap_or_default();
            match state
                .with_timeout(
                    "read_repository",
                    state
                        .inner
                        .store
                        .read_repository(&namespace, &repo_name, &repository),
                )
                .await
            {
                Ok(Some(fresh)) => settings = fresh,
                Ok(None) => {}
                Err(err) => return store_failure(&err),
            }
        }
        let attempted = attempt(
            state,
            delivery,
            event,
            &settings,
            &namespace,
            &name,
            approved.as_ref(),
            round > 0,
        )
        .await;
        match attempted {
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

/// Handles a check report: if the repository requires that check, records its state on
/// every environment of the repository at that commit (`previewd.io/checks`), which wakes
/// the controller. Nothing else is written; the controller decides.
async fn handle_check(state: &WebhookState, report: &ci::CheckReport) -> DeliveryOutcome {
    let store = &state.inner.store;
    let candidates = match state
        .with_timeout(
            "find_repositories",
            store.find_repositories(&report.repository),
        )
        .await
    {
        Ok(candidates) => candidates,
        Err(err) => return store_failure(&err),
    };
    let resolution = claims::resolve(
        &report.repository,
        candidates,
        &state.inner.config.claim_policy,
    );
    let Some(settings) = resolution.bound else {
        return DeliveryOutcome::new(
            StatusCode::ACCEPTED,
            "unknown_repository",
            Some(format!(
                "no PreviewRepository is bound to {}",
                report.repository
            )),
        );
    };
    let Some(required) = ci::required_check(report, &settings.spec.required_checks) else {
        let why = if ci::bound_elsewhere(report, &settings.spec.required_checks) {
            "check_not_from_bound_app"
        } else {
            "check_not_required"
        };
        return DeliveryOutcome::new(StatusCode::OK, "ignored", Some(why.into()));
    };
    let Some(namespace) = settings.metadata.namespace.as_deref() else {
        return DeliveryOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("PreviewRepository has no namespace".into()),
        );
    };
    for _ in 0..MAX_CONFLICT_RETRIES {
        let environments = match state
            .with_timeout(
                "environments_at",
                store.environments_at(namespace, &report.repository, &report.sha),
            )
            .await
        {
            Ok(environments) => environments,
            Err(err) => return store_failure(&err),
        };
        if environments.is_empty() {
            return DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                "absent",
                Some(format!("no environment is at commit {}", report.sha)),
            );
        }
        let mut conflict = false;
        let mut recorded = 0;
        for env in &environments {
            if env.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let mut checks: RecordedChecks = annotation(env, ANNOTATION_CHECKS)
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default();
            if !checks.record_from(
                &report.sha,
                &required.name,
                report.app,
                report.state,
                &report.at,
            ) {
                continue;
            }
            let (Some(env_name), Some(rv)) = (
                env.metadata.name.as_deref(),
                env.metadata.resource_version.as_deref(),
            ) else {
                continue;
            };
            match state
                .with_timeout(
                    "record_checks",
                    store.record_checks(namespace, env_name, &checks, rv),
                )
                .await
            {
                Ok(()) => recorded += 1,
                Err(StoreError::Conflict) => conflict = true,
                Err(err) => return store_failure(&err),
            }
        }
        if !conflict {
            return DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                if recorded > 0 {
                    "recorded"
                } else {
                    "unchanged"
                },
                Some(format!("{}: {}", required.name, report.state.as_str())),
            );
        }
    }
    DeliveryOutcome::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        Some("the environment kept changing concurrently".into()),
    )
}

/// When `event` asks to approve a fork's head commit, checks the approval against GitHub
/// ([`approval::check`]): `Ok(Some(record))` approved, `Ok(None)` no approval asked,
/// `Err` the answer to give (refused, or GitHub unavailable), with nothing written.
async fn verify_approval(
    state: &WebhookState,
    event: &PullRequestEvent,
    settings: &PreviewRepository,
) -> Result<Option<ApprovalRecord>, DeliveryOutcome> {
    let gating = &settings.spec.gating;
    // Whether an approval is asked does not depend on what the cluster holds.
    let Decision::Apply {
        approval: Approval::Requested(sha),
    } = policy::decide(event, gating, None)
    else {
        return Ok(None);
    };
    match approval::check(
        state.inner.permissions.as_deref(),
        event,
        &sha,
        &gating.approval_label,
    )
    .await
    {
        ApprovalCheck::Approved(record) => Ok(Some(record)),
        ApprovalCheck::Refused(why) => Err(DeliveryOutcome::new(
            StatusCode::OK,
            "refused",
            Some(format!("fork approval refused: {why}")),
        )),
        ApprovalCheck::Unavailable(why) => Err(DeliveryOutcome::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "github_unavailable",
            Some(format!("fork approval not checked: {why}; redeliver later")),
        )),
    }
}

/// The approval an existing environment records for `sha`.
fn recorded_approval(existing: Option<&PreviewEnvironment>, sha: &str) -> ApprovalRecord {
    let recorded = |key| {
        existing
            .filter(|e| annotation(e, ANNOTATION_APPROVED_SHA) == Some(sha))
            .and_then(|e| annotation(e, key))
            .map(str::to_string)
    };
    ApprovalRecord {
        sha: sha.to_string(),
        by: recorded(ANNOTATION_APPROVED_BY),
        at: recorded(ANNOTATION_APPROVED_AT),
    }
}

/// One read-plan-write round; `Err(Conflict)` means read again (`fresh`: from the API
/// server, not the store's watch). `approved` is the approval [`verify_approval`]
/// checked for this event, if it asked for one.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    state: &WebhookState,
    delivery: &str,
    event: &PullRequestEvent,
    settings: &PreviewRepository,
    namespace: &str,
    name: &str,
    approved: Option<&ApprovalRecord>,
    fresh: bool,
) -> Result<DeliveryOutcome, StoreError> {
    let store = &state.inner.store;
    // From the store's watch first; after a conflict, from the API server.
    let existing = if fresh {
        state
            .with_timeout("read_environment", store.read_environment(namespace, name))
            .await?
    } else {
        state
            .with_timeout("get_environment", store.get_environment(namespace, name))
            .await?
    };
    let plan = decision::plan(
        event,
        &settings.spec.gating,
        delivery,
        existing.as_ref(),
        settings
            .status
            .as_ref()
            .and_then(|s| s.closed_pull_requests.get(name)),
    );
    let closed = settings.status.as_ref().map(|s| &s.closed_pull_requests);
    let accepted = |outcome, reason: Option<String>| {
        Ok(DeliveryOutcome::new(StatusCode::ACCEPTED, outcome, reason))
    };
    match plan {
        Plan::Ignore(reason) => Ok(DeliveryOutcome::new(
            StatusCode::OK,
            "ignored",
            Some(reason.to_string()),
        )),
        Plan::Invalid(reason) => Ok(DeliveryOutcome::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(reason),
        )),
        Plan::Duplicate => Ok(DeliveryOutcome::new(
            StatusCode::OK,
            "duplicate",
            Some("this delivery is already recorded".into()),
        )),
        Plan::Stale(reason) => accepted("stale", Some(reason)),
        Plan::AlreadyDeleting(reason) => accepted(
            "deleted",
            Some(format!("{reason}; deletion already in progress")),
        ),
        Plan::Terminating => Ok(DeliveryOutcome::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            Some("the environment is being deleted; redeliver later".into()),
        )),
        Plan::Remove {
            reason,
            resource_version,
            tombstone,
        } => {
            // The tombstone first: if it cannot be written nothing is deleted, and the
            // redelivery tries again.
            let expired = closed
                .map(|c| decision::expired_tombstones(c, Timestamp::now()))
                .unwrap_or_default();
            state
                .with_timeout(
                    "record_tombstone",
                    store.record_tombstone(settings, name, &tombstone, &expired),
                )
                .await?;
            let Some(rv) = resource_version else {
                // Nothing to delete; the tombstone keeps a late event from creating it.
                return accepted("absent", Some(reason.to_string()));
            };
            let deleted = state
                .with_timeout(
                    "delete_environment",
                    store.delete_environment(namespace, name, &rv),
                )
                .await?;
            accepted(
                if deleted { "deleted" } else { "absent" },
                Some(reason.to_string()),
            )
        }
        Plan::Apply { approval } => {
            let record = match approval {
                Approval::NotNeeded => None,
                Approval::Kept(sha) => Some(recorded_approval(existing.as_ref(), &sha)),
                Approval::Requested(sha) => match approved {
                    Some(record) if record.sha.eq_ignore_ascii_case(&sha) => Some(record.clone()),
                    _ => {
                        return Ok(DeliveryOutcome::new(
                            StatusCode::OK,
                            "refused",
                            Some("fork approval refused: not checked".into()),
                        ));
                    }
                },
            };
            let desired = match desired_environment(
                event,
                settings,
                existing.as_ref(),
                delivery,
                record.as_ref(),
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
                return accepted("unchanged", None);
            }
            let precondition = match existing.and_then(|e| e.metadata.resource_version) {
                Some(rv) => Precondition::ResourceVersion(rv),
                None => Precondition::Absent,
            };
            state
                .with_timeout(
                    "apply_environment",
                    store.apply_environment(&desired, &precondition),
                )
                .await?;
            accepted("applied", None)
        }
    }
}

/// Handles an `issue_comment`: a PR command from someone allowed to run it is recorded
/// on the environment ([`crate::command_record`]) and acknowledged with a reaction; the
/// controller acts on it and answers on the sticky comment.
async fn handle_issue_comment(state: &WebhookState, event: &IssueCommentEvent) -> DeliveryOutcome {
    let ignored = |why: &str| DeliveryOutcome::new(StatusCode::OK, "ignored", Some(why.into()));
    if event.action != "created" {
        return ignored("action_not_handled");
    }
    if !event.on_pull_request() {
        return ignored("not_a_pull_request");
    }
    let Some(command) = command::parse(&event.comment.body) else {
        return ignored("no_command");
    };
    let repository = event.repository.full_name.clone();
    let comment_id = event.comment.id;
    let login = event.comment.user.login.as_str();
    let refused = |why: String| {
        state.react(&repository, comment_id, Reaction::Refused);
        DeliveryOutcome::new(StatusCode::OK, "refused", Some(why))
    };
    // The deprecated association filter, when set, refuses before any request.
    if !state
        .inner
        .config
        .command_policy
        .allows(&event.comment.author_association)
    {
        return refused(format!(
            "{login} may not run commands (author association {:?})",
            event.comment.author_association
        ));
    }
    // The commenter's permission on the repository decides; no answer refuses too, and
    // then (below) the sticky comment says why. A refusal writes nothing, so a flood of
    // comments costs no store calls.
    let Some(permissions) = state.inner.permissions.as_deref() else {
        return refused(
            "commands need GitHub credentials to check the commenter's permission".into(),
        );
    };
    let unverified = match permissions.check(&repository, login).await {
        permission::Verdict::Allowed(_) => None,
        permission::Verdict::Refused(held) => {
            return refused(format!(
                "{login} has the role {} on {repository}; commands need {}",
                held.describe(),
                permissions.policy().describe()
            ));
        }
        permission::Verdict::Unknown(why) => Some(format!("could not check the permission: {why}")),
    };
    let candidates = match state
        .with_timeout(
            "find_repositories",
            state.inner.store.find_repositories(&repository),
        )
        .await
    {
        Ok(candidates) => candidates,
        Err(err) => return store_failure(&err),
    };
    let resolution = claims::resolve(&repository, candidates, &state.inner.config.claim_policy);
    let Some(settings) = resolution.bound else {
        return DeliveryOutcome::new(
            StatusCode::ACCEPTED,
            "unknown_repository",
            Some(format!("no PreviewRepository may claim {repository}")),
        );
    };
    let Some(namespace) = settings.metadata.namespace.clone() else {
        return DeliveryOutcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("PreviewRepository has no namespace".into()),
        );
    };
    let name = render::environment_name(&settings.spec.repository, event.issue.number);
    let _guard = state.lock_for(&namespace, &name).lock().await;
    for _ in 0..MAX_CONFLICT_RETRIES {
        let existing = match state
            .with_timeout(
                "get_environment",
                state.inner.store.get_environment(&namespace, &name),
            )
            .await
        {
            Ok(existing) => existing,
            Err(err) => return store_failure(&err),
        };
        let Some(env) = existing else {
            state.react(&repository, comment_id, Reaction::Refused);
            return DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                "absent",
                Some("this pull request has no preview environment".into()),
            );
        };
        if env.metadata.deletion_timestamp.is_some() {
            return DeliveryOutcome::new(
                StatusCode::ACCEPTED,
                "deleted",
                Some("the environment is being deleted".into()),
            );
        }
        let recorded = match &unverified {
            // Not refused silently: the comment is answered on the sticky comment.
            Some(why) => {
                crate::command_record::record_refusal(&env, &command, comment_id, login, why)
            }
            None => {
                if let Some(why) =
                    crate::command_record::fork_refusal(&env, settings.spec.gating.forks)
                {
                    return refused(why.into());
                }
                crate::command_record::record(&env, &command, comment_id, login, Timestamp::now())
            }
        };
        let (annotations, reaction) = match recorded {
            crate::command_record::Recorded::Duplicate => {
                return DeliveryOutcome::new(
                    StatusCode::OK,
                    "duplicate",
                    Some("this comment is already recorded".into()),
                );
            }
            crate::command_record::Recorded::Write {
                annotations,
                reaction,
            } => (annotations, reaction),
        };
        let Some(rv) = env.metadata.resource_version.clone() else {
            return store_failure(&StoreError::Unavailable("no resourceVersion".into()));
        };
        match state
            .with_timeout(
                "apply_command_annotations",
                state
                    .inner
                    .store
                    .apply_command_annotations(&namespace, &name, &annotations, &rv),
            )
            .await
        {
            Err(StoreError::Conflict) => continue,
            Err(err) => return store_failure(&err),
            Ok(()) => {
                state.react(&repository, comment_id, reaction);
                return match &unverified {
                    Some(why) => DeliveryOutcome::new(StatusCode::OK, "refused", Some(why.clone())),
                    None => DeliveryOutcome::new(
                        StatusCode::ACCEPTED,
                        "command",
                        Some(command.verb().to_string()),
                    ),
                };
            }
        }
    }
    DeliveryOutcome::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        Some("the environment kept changing concurrently".into()),
    )
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
/// annotations (head SHA, delivery id, and the approval of a fork's head commit: its
/// SHA, who approved it and when).
pub fn desired_environment(
    event: &PullRequestEvent,
    settings: &PreviewRepository,
    existing: Option<&PreviewEnvironment>,
    delivery: &str,
    approval: Option<&ApprovalRecord>,
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
    // For people reading the environment; untrusted text, escaped where it is shown.
    let title: String = event
        .pull_request
        .title
        .chars()
        .take(PR_TITLE_MAX_CHARS)
        .collect();
    if !title.is_empty() {
        annotations.insert(ANNOTATION_PR_TITLE.to_string(), title);
    }
    let url = event.pull_request.html_url.as_str();
    if (url.starts_with("https://") || url.starts_with("http://")) && url.len() <= 2048 {
        annotations.insert(ANNOTATION_PR_URL.to_string(), url.to_string());
    }
    if let Some(approval) = approval {
        annotations.insert(ANNOTATION_APPROVED_SHA.to_string(), approval.sha.clone());
        for (key, value) in [
            (ANNOTATION_APPROVED_BY, &approval.by),
            (ANNOTATION_APPROVED_AT, &approval.at),
        ] {
            if let Some(value) = value {
                annotations.insert(key.to_string(), value.clone());
            }
        }
    }
    mark_fork(&mut env, event, existing);
    // No finalizer: the controller adds its own before its first reconcile creates
    // anything, so an environment deleted before the controller ever saw it is gone at
    // once, and no apply of the webhook's can take the finalizer away from a running one.
    Ok(env)
}

/// Labels the environment of a fork's pull request `previewd.io/fork: "true"` (the
/// planner then withholds the repository's Secrets and egress rules). The mark is
/// sticky: once an environment carries it, no later event (whatever its payload says)
/// removes it, since the head repository of a pull request never changes.
fn mark_fork(
    env: &mut PreviewEnvironment,
    event: &PullRequestEvent,
    existing: Option<&PreviewEnvironment>,
) {
    let marked = existing
        .and_then(|e| e.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_FORK))
        .is_some_and(|v| v == "true");
    if event.is_fork() || marked {
        env.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_FORK.to_string(), "true".to_string());
    }
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
    use previewd_kube::crd::ANNOTATION_PR_UPDATED_AT;
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

    fn approved(sha: &str) -> ApprovalRecord {
        ApprovalRecord {
            sha: sha.into(),
            by: Some("maintainer".into()),
            at: Some("2024-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn desired_environment_is_a_complete_apply_body() {
        let env = desired_environment(
            &event("opened", "abcdef1", "2024-01-01T00:00:00Z"),
            &settings(),
            None,
            "d-1",
            Some(&approved("abcdef1")),
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
        assert_eq!(annotations[ANNOTATION_APPROVED_BY], "maintainer");
        assert_eq!(annotations[ANNOTATION_APPROVED_AT], "2024-01-01T00:00:00Z");
        assert_eq!(
            annotations[ANNOTATION_PR_UPDATED_AT],
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            annotations[ANNOTATION_LAST_ACTIVITY],
            "2024-01-01T00:00:00Z"
        );
        assert!(body.get("status").is_none_or(serde_json::Value::is_null));
        assert!(
            body["metadata"]
                .get("finalizers")
                .is_none_or(serde_json::Value::is_null),
            "the webhook never owns the controller's finalizer"
        );
        // No title or page in the event: none recorded.
        assert!(annotations.get(ANNOTATION_PR_TITLE).is_none());
        assert!(annotations.get(ANNOTATION_PR_URL).is_none());
    }

    #[test]
    fn the_title_and_page_are_recorded_as_given_and_a_page_that_is_no_web_address_is_not() {
        let mut e = event("opened", "abcdef1", "2024-01-01T00:00:00Z");
        e.pull_request.title = format!("<script>alert(1)</script> {}", "x".repeat(400));
        e.pull_request.html_url = "https://github.com/acme/shop/pull/12".into();
        let env = desired_environment(&e, &settings(), None, "d-1", None).unwrap();
        let annotations = env.metadata.annotations.unwrap();
        let title = &annotations[ANNOTATION_PR_TITLE];
        assert!(
            title.starts_with("<script>alert(1)</script> x"),
            "kept as text"
        );
        assert_eq!(title.chars().count(), PR_TITLE_MAX_CHARS);
        assert_eq!(
            annotations[ANNOTATION_PR_URL],
            "https://github.com/acme/shop/pull/12"
        );
        e.pull_request.html_url = "javascript:alert(1)".into();
        let env = desired_environment(&e, &settings(), None, "d-1", None).unwrap();
        assert!(
            !env.metadata
                .annotations
                .unwrap()
                .contains_key(ANNOTATION_PR_URL)
        );
    }

    /// A fork's `pull_request` payload as GitHub sends it: `head.repo` is the fork (a
    /// full repository object with `fork: true` and another owner), `base.repo` the
    /// repository the PR is opened against.
    fn fork_event(action: &str) -> PullRequestEvent {
        serde_json::from_value(json!({
            "action": action,
            "number": 12,
            "pull_request": {
                "number": 12, "state": "open", "draft": false,
                "updated_at": "2024-01-01T00:00:00Z",
                "author_association": "FIRST_TIME_CONTRIBUTOR",
                "user": {"login": "mallory", "type": "User"},
                "head": {
                    "label": "mallory:feat/x", "ref": "feat/x", "sha": "abcdef1",
                    "user": {"login": "mallory"},
                    "repo": {"id": 2, "name": "shop", "full_name": "mallory/shop",
                             "private": false, "fork": true, "owner": {"login": "mallory"}}
                },
                "base": {
                    "label": "acme:main", "ref": "main", "sha": "bbbbbbb",
                    "user": {"login": "acme"},
                    "repo": {"id": 1, "name": "shop", "full_name": "acme/shop",
                             "private": false, "fork": false, "owner": {"login": "acme"}}
                }
            },
            "repository": {"id": 1, "full_name": "acme/shop", "fork": false}
        }))
        .unwrap()
    }

    #[test]
    fn fork_environments_are_labelled_and_stay_labelled() {
        let fork_label = |env: &PreviewEnvironment| {
            env.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_FORK))
                .cloned()
        };
        let s = settings();
        let forked = desired_environment(
            &fork_event("opened"),
            &s,
            None,
            "d-1",
            Some(&approved("abcdef1")),
        )
        .unwrap();
        assert_eq!(fork_label(&forked).as_deref(), Some("true"));
        let own = desired_environment(
            &event("opened", "abcdef1", "2024-01-01T00:00:00Z"),
            &s,
            None,
            "d-2",
            None,
        )
        .unwrap();
        assert_eq!(fork_label(&own), None);
        // An update whose payload no longer looks like a fork keeps the label.
        let update = desired_environment(
            &event("synchronize", "abcdef2", "2024-01-02T00:00:00Z"),
            &s,
            Some(&forked),
            "d-3",
            None,
        )
        .unwrap();
        assert_eq!(fork_label(&update).as_deref(), Some("true"));
        assert!(
            !same_desired_state(&own, &forked),
            "the label is part of the state"
        );
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
            Some(&approved("abcdef1")),
        )
        .unwrap();
        assert!(!same_desired_state(&a, &d));
    }
}
