//! GitHub REST client: implements [`SourceControl`](previewd_core::source_control::SourceControl).
//!
//! Transport is reqwest over rustls with the ring provider. Every request:
//! - carries `Accept: application/vnd.github+json` (or the diff media type),
//!   `X-GitHub-Api-Version` and a user agent, and has a per-request timeout;
//! - on 403/429 honours `Retry-After`; else, with `x-ratelimit-remaining: 0`, waits until
//!   `x-ratelimit-reset`; else, for a secondary rate limit, waits at least
//!   [`ClientConfig::secondary_rate_limit_wait`] and doubles that on each repeat;
//! - retries 5xx, timeouts and connection errors with exponential backoff and jitter, at
//!   most [`ClientConfig::max_retries`] times; never retries 400, 401 (except once after
//!   refreshing an App token), 404, 422 or other 4xx;
//! - when it mutates (POST, PATCH, PUT, DELETE), holds its installation's write gate while
//!   the request is on the wire, so mutations are serialised per installation and spaced
//!   by [`ClientConfig::mutation_spacing`]; the gate is released while waiting out a rate
//!   limit or a backoff, so one rate-limited pull request never stalls the others;
//! - never re-sends a POST that creates something (deployment, comment) after its answer
//!   was lost (timeout, connection error, 5xx): the caller looks for the object first and
//!   creates it only if it is not there, so a retry cannot make a duplicate.
//!
//! `x-ratelimit-remaining` is exported as a gauge.
//!
//! With GitHub App credentials, one client serves every installation of the App. A
//! request about a repository (its path starts `repos/{owner}/{repo}/`) uses the token of
//! that repository's installation, found in the client's [`InstallationDirectory`]: filled
//! from verified webhook deliveries (`installation.id`), from the installations the
//! backfill walks, and otherwise from GitHub itself (`GET /repos/{owner}/{repo}/installation`,
//! asked once per repository and hour). Requests that name no repository use the
//! installation the client is bound to ([`GitHubClient::for_installation`]) or the
//! default installation of the credentials.

mod api;
mod auth;
mod error;
mod installations;
mod pulls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use jiff::Timestamp;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OnceCell, OwnedMutexGuard};
use tokio::time::Instant;
use url::Url;

pub use api::{DEFAULT_DEPLOYMENT_TASK, MAX_CHANGED_FILES};
pub use auth::{AppCredentials, GitHubAuth, TOKEN_REFRESH_MARGIN, app_jwt};
pub use error::GitHubError;
pub use installations::{AppInstallation, InstallationDirectory, RepositoryInstallations};

use crate::metrics::{ClientMetrics, RequestLabels};
use auth::{AccessTokenResponse, AuthState, InstallationToken};

/// Media type of GitHub's JSON API.
pub const JSON_MEDIA_TYPE: &str = "application/vnd.github+json";
/// Media type of a unified diff.
pub const DIFF_MEDIA_TYPE: &str = "application/vnd.github.diff";
/// REST API version sent with every request.
pub const API_VERSION: &str = "2022-11-28";

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// API root: `https://api.github.com/`, or `https://HOST/api/v3/` for GitHub
    /// Enterprise Server.
    pub base_url: Url,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Limit on one request, body included.
    pub request_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff after a 5xx or a timeout; doubles each time, with jitter.
    pub backoff_base: Duration,
    /// Longest backoff after a 5xx or a timeout.
    pub backoff_max: Duration,
    /// First wait after a secondary rate limit without `Retry-After` (GitHub: at least a
    /// minute); doubles each time.
    pub secondary_rate_limit_wait: Duration,
    /// Added to the wait until `x-ratelimit-reset` (the header has one-second resolution).
    pub rate_limit_reset_margin: Duration,
    /// Longest rate-limit wait the client sits out; longer ones fail with
    /// [`GitHubError::RateLimited`] so the caller can requeue.
    pub max_rate_limit_wait: Duration,
    /// Least time between two mutating requests.
    pub mutation_spacing: Duration,
}

impl ClientConfig {
    /// GitHub's documented defaults against `base_url`.
    pub fn new(base_url: Url) -> Self {
        let mut base_url = base_url;
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        ClientConfig {
            base_url,
            user_agent: format!("previewd/{}", env!("CARGO_PKG_VERSION")),
            request_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            secondary_rate_limit_wait: Duration::from_secs(60),
            rate_limit_reset_margin: Duration::from_secs(1),
            max_rate_limit_wait: Duration::from_secs(15 * 60),
            mutation_spacing: Duration::from_secs(1),
        }
    }

    /// Defaults for github.com.
    #[allow(clippy::expect_used)]
    pub fn github_com() -> Self {
        Self::new(Url::parse("https://api.github.com/").expect("a valid URL literal"))
    }
}

/// Which credential a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthKind {
    /// The token or installation token.
    Installation,
    /// The App JWT (app-level endpoints).
    AppJwt,
}

/// One request to send.
pub(crate) struct RequestSpec {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) body: Option<serde_json::Value>,
    pub(crate) accept: &'static str,
    pub(crate) auth: AuthKind,
    /// A POST that creates an object (a deployment, a comment): sending it twice may
    /// create two, so it is not re-sent after an answer was lost (the caller looks for
    /// the object first, then creates again).
    pub(crate) creates: bool,
}

impl RequestSpec {
    fn replay_safe(&self) -> bool {
        !self.creates
    }
}

/// One answer to judge.
pub(crate) struct Exchange<'a> {
    pub(crate) status: StatusCode,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

/// Where a request stands in its retries.
pub(crate) struct RetryState {
    /// 1-based attempt just made.
    pub(crate) attempt: u32,
    /// Secondary rate limits met so far.
    pub(crate) secondary_hits: u32,
    /// A 401 may be answered by refreshing the installation token once.
    pub(crate) may_refresh_token: bool,
    /// Sending the request again cannot duplicate anything.
    pub(crate) replay_safe: bool,
}

/// What to do after one attempt.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Success (2xx or 304).
    Done,
    /// Refresh the installation token and send again.
    RefreshToken,
    /// Wait out a rate limit, then send again.
    RateLimited {
        /// How long.
        wait: Duration,
        /// A secondary limit without `Retry-After` (the next wait doubles).
        secondary: bool,
    },
    /// Back off, then send again.
    Retry {
        /// How long.
        wait: Duration,
        /// For logs.
        why: &'static str,
    },
    /// Give up.
    Fail(GitHubError),
}

impl Verdict {
    fn outcome(&self) -> &'static str {
        match self {
            Verdict::Done => "ok",
            Verdict::RefreshToken => "unauthorized",
            Verdict::RateLimited { .. } => "rate_limited",
            Verdict::Retry { why, .. } => why,
            Verdict::Fail(err) => match err {
                GitHubError::RateLimited { .. } => "rate_limited",
                GitHubError::Server { .. } => "server_error",
                GitHubError::Rejected { .. } => "rejected",
                other => other.category(),
            },
        }
    }
}

/// Judges one HTTP answer: pure, so every rule is tested without a server.
pub(crate) fn classify_answer(
    answer: &Exchange<'_>,
    retry: &RetryState,
    config: &ClientConfig,
    now: Timestamp,
) -> Verdict {
    let status = answer.status;
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Verdict::Done;
    }
    let retries_left = retry.attempt <= config.max_retries;
    let message = message_of(answer.body);
    let code = status.as_u16();
    if status == StatusCode::UNAUTHORIZED {
        return if retry.may_refresh_token {
            Verdict::RefreshToken
        } else {
            Verdict::Fail(GitHubError::Unauthorized(message))
        };
    }
    if let Some(wait) = rate_limit_wait(
        status,
        answer.headers,
        &message,
        retry.secondary_hits,
        config,
        now,
    ) {
        // A rate-limited request was not carried out, so sending it again is safe.
        if !retries_left || wait > config.max_rate_limit_wait {
            return Verdict::Fail(GitHubError::RateLimited {
                retry_after: Some(wait),
            });
        }
        let secondary = answer.headers.get(RETRY_AFTER).is_none()
            && header_u64(answer.headers, "x-ratelimit-remaining") != Some(0);
        return Verdict::RateLimited { wait, secondary };
    }
    match status {
        StatusCode::FORBIDDEN => Verdict::Fail(GitHubError::Forbidden(message)),
        StatusCode::NOT_FOUND => Verdict::Fail(GitHubError::NotFound(message)),
        // A 5xx may come from a proxy after GitHub carried the request out: only
        // replay-safe requests are sent again here.
        s if s.is_server_error() && retries_left && retry.replay_safe => Verdict::Retry {
            wait: backoff(retry.attempt, config),
            why: "server_error",
        },
        s if s.is_server_error() => Verdict::Fail(GitHubError::Server {
            status: code,
            attempts: retry.attempt,
        }),
        _ => Verdict::Fail(GitHubError::Rejected {
            status: code,
            message,
        }),
    }
}

/// Judges a request that got no answer (timeout, connection failure).
pub(crate) fn classify_transport(
    timeout: bool,
    error: &str,
    attempt: u32,
    replay_safe: bool,
    config: &ClientConfig,
) -> Verdict {
    if attempt <= config.max_retries && replay_safe {
        return Verdict::Retry {
            wait: backoff(attempt, config),
            why: if timeout { "timeout" } else { "transport" },
        };
    }
    Verdict::Fail(if timeout {
        GitHubError::Timeout { attempts: attempt }
    } else {
        GitHubError::Transport(error.to_string())
    })
}

/// An answer with a 2xx status.
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, GitHubError> {
        serde_json::from_slice(&self.body).map_err(|e| GitHubError::Decode(e.to_string()))
    }
}

type BoxedTokenFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<SecretString, GitHubError>> + Send + 'a>,
>;

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    auth: AuthState,
    metrics: ClientMetrics,
    /// Per installation (0 for a token): the last time a mutating request finished; held
    /// while one is in flight.
    write_gates: std::sync::Mutex<HashMap<u64, Arc<Mutex<Option<Instant>>>>>,
    /// Which installation of the App serves which repository.
    installations: InstallationDirectory,
    /// Serialises find-then-create of the sticky comment.
    comment_lock: Mutex<()>,
    bot_login: OnceCell<String>,
}

/// The GitHub REST client. Cheap to clone; clones share the token caches, the write
/// gates, the installation directory and the metrics.
#[derive(Clone)]
pub struct GitHubClient {
    inner: Arc<Inner>,
    /// The installation every request of this handle uses (App credentials only); `None`:
    /// the installation of the repository each request is about.
    installation: Option<u64>,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubClient")
            .field("base_url", &self.inner.config.base_url.as_str())
            .field("installation", &self.installation)
            .finish_non_exhaustive()
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The wait a 403/429 answer asks for, or `None` when it is not a rate limit.
/// `secondary_hits` counts earlier secondary limits of this request.
pub(crate) fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    message: &str,
    secondary_hits: u32,
    config: &ClientConfig,
    now: Timestamp,
) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    if let Some(wait) = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| previewd_core::retry::retry_after(v, now))
    {
        return Some(wait);
    }
    if header_u64(headers, "x-ratelimit-remaining") == Some(0)
        && let Some(reset) = header_u64(headers, "x-ratelimit-reset")
    {
        let now = u64::try_from(now.as_second()).unwrap_or(0);
        return Some(
            Duration::from_secs(reset.saturating_sub(now)) + config.rate_limit_reset_margin,
        );
    }
    let secondary = message
        .to_ascii_lowercase()
        .contains("secondary rate limit");
    if secondary || status == StatusCode::TOO_MANY_REQUESTS {
        let factor = 1u32.checked_shl(secondary_hits.min(16)).unwrap_or(u32::MAX);
        return Some(config.secondary_rate_limit_wait.saturating_mul(factor));
    }
    None
}

/// Exponential backoff with equal jitter for retry number `retry` (1-based).
pub(crate) fn backoff(retry: u32, config: &ClientConfig) -> Duration {
    previewd_core::retry::Backoff::equal_jitter(config.backoff_base, config.backoff_max)
        .delay(retry, rand::random_range(0.0..=1.0))
}

fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}

/// The `rel="next"` URL of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(http::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        let is_next = pieces.any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            Some(
                target
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            )
        } else {
            None
        }
    })
}

impl GitHubClient {
    /// A client for `config.base_url` authenticating with `auth`, counting into
    /// `metrics`. Installs rustls' ring provider as the process default if no provider
    /// is installed yet.
    pub fn new(
        config: ClientConfig,
        auth: GitHubAuth,
        metrics: ClientMetrics,
    ) -> Result<Self, GitHubError> {
        // Only ring is linked; a second install attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| GitHubError::Config(format!("could not build the HTTP client: {e}")))?;
        Ok(GitHubClient {
            inner: Arc::new(Inner {
                http,
                auth: AuthState::new(auth)?,
                config,
                metrics,
                write_gates: std::sync::Mutex::new(HashMap::new()),
                installations: InstallationDirectory::new(),
                comment_lock: Mutex::new(()),
                bot_login: OnceCell::new(),
            }),
            installation: None,
        })
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn url(&self, path: &str) -> Result<Url, GitHubError> {
        self.inner
            .config
            .base_url
            .join(path.trim_start_matches('/'))
            .map_err(|e| GitHubError::Config(format!("bad API path {path}: {e}")))
    }

    /// A URL from a `Link` header, accepted only on the API's own origin so credentials
    /// never leave it.
    pub(crate) fn same_origin(&self, url: &str) -> Result<Url, GitHubError> {
        let url = Url::parse(url).map_err(|e| GitHubError::Decode(format!("bad Link URL: {e}")))?;
        let base = &self.inner.config.base_url;
        if url.origin() != base.origin() {
            return Err(GitHubError::Decode(format!(
                "Link URL {url} is not on the API origin"
            )));
        }
        Ok(url)
    }

    /// The token of `installation`, from the cache or freshly issued. Returns a boxed
    /// future: issuing a token sends a request itself.
    fn installation_token(&self, installation: u64, force_refresh: bool) -> BoxedTokenFuture<'_> {
        Box::pin(async move {
            let Some(slot) = self.inner.auth.token_slot(installation) else {
                return Err(GitHubError::Config("not a GitHub App client".into()));
            };
            let mut guard = slot.lock().await;
            if !force_refresh && let Some(token) = guard.as_ref() {
                let left = token.expires_at.duration_since(Timestamp::now());
                if left.as_secs()
                    > i64::try_from(TOKEN_REFRESH_MARGIN.as_secs()).unwrap_or(i64::MAX)
                {
                    return Ok(token.token.clone());
                }
            }
            let url = self.url(&format!("app/installations/{installation}/access_tokens"))?;
            let answer = self
                .execute(RequestSpec {
                    method: Method::POST,
                    url,
                    body: None,
                    accept: JSON_MEDIA_TYPE,
                    auth: AuthKind::AppJwt,
                    creates: false,
                })
                .await?;
            let fresh: AccessTokenResponse = answer.json()?;
            let token = SecretString::from(fresh.token);
            *guard = Some(InstallationToken {
                token: token.clone(),
                expires_at: fresh.expires_at,
            });
            tracing::debug!(installation, expires_at = %fresh.expires_at, "installation token refreshed");
            Ok(token)
        })
    }

    async fn authorization(
        &self,
        kind: AuthKind,
        installation: Option<u64>,
        refresh: bool,
    ) -> Result<HeaderValue, GitHubError> {
        let value = match (&self.inner.auth, kind) {
            (AuthState::Token(token), _) => format!("Bearer {}", token.expose_secret()),
            (
                AuthState::App {
                    credentials, key, ..
                },
                AuthKind::AppJwt,
            ) => {
                format!(
                    "Bearer {}",
                    app_jwt(credentials.app_id, key, Timestamp::now())?
                )
            }
            (AuthState::App { .. }, AuthKind::Installation) => {
                let installation = installation.ok_or_else(|| {
                    GitHubError::Config("no installation chosen for the request".into())
                })?;
                format!(
                    "token {}",
                    self.installation_token(installation, refresh)
                        .await?
                        .expose_secret()
                )
            }
        };
        let mut header = HeaderValue::from_str(&value)
            .map_err(|_| GitHubError::Config("credential is not a valid header value".into()))?;
        header.set_sensitive(true);
        Ok(header)
    }

    fn count(&self, method: &Method, outcome: &str) {
        self.inner
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Waits for the write gate of `installation` (0: a token) and the spacing after its
    /// previous mutation.
    async fn acquire_gate(&self, installation: u64) -> OwnedMutexGuard<Option<Instant>> {
        let gate = self
            .inner
            .write_gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(installation)
            .or_default()
            .clone();
        let guard = gate.lock_owned().await;
        if let Some(last) = *guard {
            tokio::time::sleep_until(last + self.inner.config.mutation_spacing).await;
        }
        guard
    }

    /// Sends a request with GitHub's retry and rate-limit rules. The write gate is held
    /// only while a mutation is on the wire, never while waiting out a rate limit or a
    /// backoff, so one rate-limited pull request does not stall the others.
    pub(crate) async fn execute(&self, spec: RequestSpec) -> Result<Answer, GitHubError> {
        let config = &self.inner.config;
        let mutating = spec.method != Method::GET && spec.method != Method::HEAD;
        // App-level token requests bypass the gate: they run while a gated request waits
        // for its credentials.
        let gated = mutating && spec.auth == AuthKind::Installation;
        // With App credentials, the installation whose token the request carries.
        let installation = match (&self.inner.auth, spec.auth) {
            (AuthState::App { .. }, AuthKind::Installation) => {
                Some(self.installation_for(&spec.url).await?)
            }
            _ => None,
        };
        let mut attempt: u32 = 0;
        let mut secondary_hits: u32 = 0;
        let mut refreshed = false;
        let mut force_refresh = false;
        loop {
            attempt += 1;
            let authorization = self
                .authorization(spec.auth, installation, force_refresh)
                .await?;
            force_refresh = false;
            let mut request = self
                .inner
                .http
                .request(spec.method.clone(), spec.url.clone())
                .header(ACCEPT, spec.accept)
                .header(AUTHORIZATION, authorization)
                .header("x-github-api-version", API_VERSION)
                .header(USER_AGENT, config.user_agent.as_str());
            if let Some(body) = &spec.body {
                request = request.json(body);
            }
            let mut gate = if gated {
                Some(self.acquire_gate(installation.unwrap_or(0)).await)
            } else {
                None
            };
            let sent = async {
                let response = request.send().await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            }
            .await;
            if let Some(guard) = gate.as_mut() {
                **guard = Some(Instant::now());
            }
            drop(gate);
            let verdict = match &sent {
                Ok((status, headers, body)) => {
                    if let Some(remaining) = header_u64(headers, "x-ratelimit-remaining") {
                        self.inner
                            .metrics
                            .rate_limit_remaining
                            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
                    }
                    classify_answer(
                        &Exchange {
                            status: *status,
                            headers,
                            body,
                        },
                        &RetryState {
                            attempt,
                            secondary_hits,
                            may_refresh_token: matches!(self.inner.auth, AuthState::App { .. })
                                && spec.auth == AuthKind::Installation
                                && !refreshed,
                            replay_safe: spec.replay_safe(),
                        },
                        config,
                        Timestamp::now(),
                    )
                }
                Err(err) => classify_transport(
                    err.is_timeout(),
                    &err.to_string(),
                    attempt,
                    spec.replay_safe(),
                    config,
                ),
            };
            self.count(&spec.method, verdict.outcome());
            match verdict {
                Verdict::Done => {
                    let Ok((_, headers, body)) = sent else {
                        return Err(GitHubError::Transport("no answer".into()));
                    };
                    return Ok(Answer { headers, body });
                }
                Verdict::RefreshToken => {
                    refreshed = true;
                    force_refresh = true;
                }
                Verdict::Fail(err) => return Err(err),
                Verdict::RateLimited { wait, secondary } => {
                    if secondary {
                        secondary_hits += 1;
                    }
                    tracing::warn!(url = %spec.url, ?wait, "GitHub rate limit; waiting");
                    self.inner.metrics.retries.inc();
                    tokio::time::sleep(wait).await;
                }
                Verdict::Retry { wait, why } => {
                    tracing::warn!(url = %spec.url, attempt, ?wait, why, "GitHub request failed; retrying");
                    self.inner.metrics.retries.inc();
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    pub(crate) async fn get(&self, url: Url, accept: &'static str) -> Result<Answer, GitHubError> {
        self.execute(RequestSpec {
            method: Method::GET,
            url,
            body: None,
            accept,
            auth: AuthKind::Installation,
            creates: false,
        })
        .await
    }

    pub(crate) async fn send_json(
        &self,
        method: Method,
        url: Url,
        body: serde_json::Value,
    ) -> Result<Answer, GitHubError> {
        self.execute(RequestSpec {
            method,
            url,
            body: Some(body),
            accept: JSON_MEDIA_TYPE,
            auth: AuthKind::Installation,
            creates: false,
        })
        .await
    }

    /// POSTs `body` to create an object; not re-sent after a lost answer (see
    /// [`RequestSpec::creates`]).
    pub(crate) async fn create_json(
        &self,
        url: Url,
        body: serde_json::Value,
    ) -> Result<Answer, GitHubError> {
        self.execute(RequestSpec {
            method: Method::POST,
            url,
            body: Some(body),
            accept: JSON_MEDIA_TYPE,
            auth: AuthKind::Installation,
            creates: true,
        })
        .await
    }

    /// Creates an object idempotently: looks for it with `find`, creates it with `create`
    /// only when absent, and after a lost answer looks again before creating again
    /// (bounded by [`ClientConfig::max_retries`]).
    pub(crate) async fn find_or_create<T, F, FF, C, CF>(
        &self,
        find: F,
        create: C,
    ) -> Result<T, GitHubError>
    where
        F: Fn() -> FF,
        FF: std::future::Future<Output = Result<Option<T>, GitHubError>>,
        C: Fn() -> CF,
        CF: std::future::Future<Output = Result<T, GitHubError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(found) = find().await? {
                return Ok(found);
            }
            match create().await {
                Ok(created) => return Ok(created),
                Err(
                    err @ (GitHubError::Timeout { .. }
                    | GitHubError::Transport(_)
                    | GitHubError::Server { .. }),
                ) if attempt <= self.inner.config.max_retries => {
                    let wait = backoff(attempt, &self.inner.config);
                    tracing::warn!(attempt, ?wait, error = %err, "create on GitHub may have happened; looking before retrying");
                    self.inner.metrics.retries.inc();
                    tokio::time::sleep(wait).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Every item of a paginated list, following `Link: rel="next"`, up to `max_items`.
    /// Returns the items and whether more were left. Every page goes to the installation
    /// of the first (GitHub's next links name the repository by id, not by name).
    pub(crate) async fn get_all<T: DeserializeOwned>(
        &self,
        first: Url,
        max_items: usize,
    ) -> Result<(Vec<T>, bool), GitHubError> {
        let pinned = self.pinned_for(&first).await?;
        let this = pinned.as_ref().unwrap_or(self);
        let mut items = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let answer = this.get(url, JSON_MEDIA_TYPE).await?;
            let page: Vec<T> = answer.json()?;
            let page_was_empty = page.is_empty();
            items.extend(page);
            if items.len() >= max_items {
                let more = items.len() > max_items || next_link(&answer.headers).is_some();
                items.truncate(max_items);
                return Ok((items, more));
            }
            if page_was_empty {
                break;
            }
            if let Some(link) = next_link(&answer.headers) {
                next = Some(self.same_origin(&link)?);
            }
        }
        Ok((items, false))
    }

    /// Login the client's comments are authored by: the token's user (`GET /user`), or
    /// `<slug>[bot]` for an App (slug from the credentials or `GET /app`).
    pub async fn bot_login(&self) -> Result<String, GitHubError> {
        self.inner
            .bot_login
            .get_or_try_init(|| async {
                #[derive(serde::Deserialize)]
                struct Login {
                    login: String,
                }
                #[derive(serde::Deserialize)]
                struct App {
                    slug: String,
                }
                match &self.inner.auth {
                    AuthState::Token(_) => {
                        let answer = self.get(self.url("user")?, JSON_MEDIA_TYPE).await?;
                        Ok(answer.json::<Login>()?.login)
                    }
                    AuthState::App { credentials, .. } => {
                        let slug = match &credentials.app_slug {
                            Some(slug) => slug.clone(),
                            None => {
                                let answer = self
                                    .execute(RequestSpec {
                                        method: Method::GET,
                                        url: self.url("app")?,
                                        body: None,
                                        accept: JSON_MEDIA_TYPE,
                                        auth: AuthKind::AppJwt,
                                        creates: false,
                                    })
                                    .await?;
                                answer.json::<App>()?.slug
                            }
                        };
                        Ok(format!("{slug}[bot]"))
                    }
                }
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        let mut c = ClientConfig::github_com();
        c.secondary_rate_limit_wait = Duration::from_secs(60);
        c.rate_limit_reset_margin = Duration::from_secs(1);
        c
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limit_rules_follow_githubs_order() {
        let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let c = config();
        let forbidden = StatusCode::FORBIDDEN;
        assert_eq!(
            rate_limit_wait(forbidden, &headers(&[("retry-after", "7")]), "", 0, &c, now),
            Some(Duration::from_secs(7))
        );
        // An HTTP date, as proxies in front of GitHub Enterprise send it.
        assert_eq!(
            rate_limit_wait(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "Mon, 01 Jan 2024 00:00:12 GMT")]),
                "",
                0,
                &c,
                now
            ),
            Some(Duration::from_secs(12))
        );
        let reset = (now.as_second() + 30).to_string();
        assert_eq!(
            rate_limit_wait(
                forbidden,
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset)
                ]),
                "API rate limit exceeded",
                0,
                &c,
                now
            ),
            Some(Duration::from_secs(31))
        );
        let msg = "You have exceeded a secondary rate limit. Please wait a few minutes.";
        assert_eq!(
            rate_limit_wait(forbidden, &HeaderMap::new(), msg, 0, &c, now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            rate_limit_wait(forbidden, &HeaderMap::new(), msg, 2, &c, now),
            Some(Duration::from_secs(240))
        );
        assert_eq!(
            rate_limit_wait(
                forbidden,
                &HeaderMap::new(),
                "Resource not accessible",
                0,
                &c,
                now
            ),
            None
        );
        assert_eq!(
            rate_limit_wait(
                StatusCode::NOT_FOUND,
                &headers(&[("retry-after", "7")]),
                "",
                0,
                &c,
                now
            ),
            None
        );
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let mut c = config();
        c.backoff_base = Duration::from_millis(100);
        c.backoff_max = Duration::from_millis(1000);
        for retry in 1..10 {
            let ceiling = (Duration::from_millis(100) * (1 << (retry - 1))).min(c.backoff_max);
            let wait = backoff(retry, &c);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{retry}: {wait:?}");
        }
    }

    #[test]
    fn link_header_next_is_found() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/x?page=3>; rel=\"next\", <https://api.github.com/x?page=9>; rel=\"last\"",
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        let last_only = headers(&[("link", "<https://api.github.com/x?page=1>; rel=\"prev\"")]);
        assert_eq!(next_link(&last_only), None);
    }
}
