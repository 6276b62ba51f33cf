//! Resilience layers around any [`AiProvider`]. Each layer is itself an [`AiProvider`], so
//! they compose freely; [`stack_around`] builds the standard stack, outermost first:
//!
//! 1. [`Cached`] — validated answers for 7 days, keyed by everything that shapes the answer;
//! 2. [`Deadline`] — the request's total budget (`AiRequest::deadline`, default 30 s) over
//!    everything below, so waits for the rate limiter, retries and backoff all fit in it;
//! 3. [`RateLimited`] — a token bucket (10 requests/s) that waits rather than fails;
//! 4. [`CircuitBreaker`] — stops calling a provider that keeps failing;
//! 5. [`Retrying`] — bounded retries with exponential backoff and jitter, honouring
//!    `Retry-After`.
//!
//! The design lists the deadline last; it sits second here because a deadline below the
//! retries could only bound a single attempt, not the total.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock;
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::AiConfig;

/// Counters shared by the layers of one stack. [`AiMetrics::register`] exports them as
/// `previewd_ai_*_total`.
#[derive(Debug, Default)]
pub struct AiMetrics {
    requests: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    retries: Counter,
    rate_limit_waits: Counter,
    rate_limit_rejections: Counter,
    circuit_opened: Counter,
    circuit_rejections: Counter,
    timeouts: Counter,
    outcomes: Family<OutcomeLabels, Counter>,
}

/// Labels of `previewd_ai_requests_by_outcome_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// The provider's id (`openai`, `ollama`, an embedder's own).
    provider: String,
    /// The AI feature (`services`, `tests`, `data`, ...).
    feature: String,
    /// `ok`, `cache_hit`, or the error's category (`timeout`, `rate_limited`, ...).
    outcome: String,
}

/// A point-in-time copy of [`AiMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Requests that entered the stack.
    pub requests: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Requests that had to ask the provider.
    pub cache_misses: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Requests that waited for the rate limiter.
    pub rate_limit_waits: u64,
    /// Requests refused because the rate limiter's wait did not fit the deadline.
    pub rate_limit_rejections: u64,
    /// Times the circuit breaker opened.
    pub circuit_opened: u64,
    /// Requests refused by an open circuit.
    pub circuit_rejections: u64,
    /// Requests that ran out of their deadline.
    pub timeouts: u64,
}

impl AiMetrics {
    /// Counts one request's outcome at the top of the stack: `ok`, `cache_hit`, or the
    /// error's category. Provider ids and features are short names chosen by code, not
    /// by input; both are cut at 40 characters all the same.
    fn count_outcome(&self, provider: &str, feature: &str, outcome: &str) {
        let cut = |s: &str| s.chars().take(40).collect::<String>();
        self.outcomes
            .get_or_create(&OutcomeLabels {
                provider: cut(provider),
                feature: cut(feature),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// How many requests for `feature` through `provider` ended with `outcome`.
    pub fn outcome_count(&self, provider: &str, feature: &str, outcome: &str) -> u64 {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                provider: provider.to_string(),
                feature: feature.to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            requests: self.requests.get(),
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            retries: self.retries.get(),
            rate_limit_waits: self.rate_limit_waits.get(),
            rate_limit_rejections: self.rate_limit_rejections.get(),
            circuit_opened: self.circuit_opened.get(),
            circuit_rejections: self.circuit_rejections.get(),
            timeouts: self.timeouts.get(),
        }
    }

    /// Registers every counter in `registry` under the `previewd_ai` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("previewd_ai");
        let counters: [(&str, &str, &Counter); 9] = [
            (
                "requests",
                "Requests that entered the AI stack",
                &self.requests,
            ),
            (
                "cache_hits",
                "Answers served from the cache",
                &self.cache_hits,
            ),
            (
                "cache_misses",
                "Requests that had to ask the model",
                &self.cache_misses,
            ),
            ("retries", "Attempts after the first", &self.retries),
            (
                "rate_limit_waits",
                "Requests that waited for the rate limiter",
                &self.rate_limit_waits,
            ),
            (
                "rate_limit_rejections",
                "Requests refused because the rate limiter's wait did not fit the deadline",
                &self.rate_limit_rejections,
            ),
            (
                "circuit_opened",
                "Times the circuit breaker opened",
                &self.circuit_opened,
            ),
            (
                "circuit_rejections",
                "Requests refused by an open circuit",
                &self.circuit_rejections,
            ),
            (
                "timeouts",
                "Requests that ran out of their deadline",
                &self.timeouts,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "requests_by_outcome",
            "Requests by provider, feature and outcome (ok, cache_hit or the error's category)",
            self.outcomes.clone(),
        );
    }
}

fn bump(counter: &Counter) {
    counter.inc();
}

fn with_deadline(request: &AiRequest, deadline: Duration) -> Cow<'_, AiRequest> {
    if deadline >= request.deadline {
        Cow::Borrowed(request)
    } else {
        let mut shorter = request.clone();
        shorter.deadline = deadline;
        Cow::Owned(shorter)
    }
}

// ---------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------

tokio::task_local! {
    static ENVIRONMENT: String;
}

/// Runs `future` on behalf of the preview environment `env`: answers cached by [`Cached`]
/// while it runs are tagged with `env`, so [`Cached::invalidate_environment`] can drop them.
/// This works through any `Arc<dyn AiProvider>`, without changing the request type.
pub async fn for_environment<F: Future>(env: impl Into<String>, future: F) -> F::Output {
    ENVIRONMENT.scope(env.into(), future).await
}

/// Default time-to-live of cached answers.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Caches validated answers. Errors are never cached, and concurrent identical requests
/// share one upstream call.
///
/// The key is the SHA-256 of the feature, prompt version, provider id, schema name and
/// schema, instructions, context (the service catalogue), sampling parameters and the
/// normalised untrusted inputs ([`normalise_untrusted`]). Answers can be tagged with a
/// preview environment, either with [`Cached::complete_json_for`] or by running the
/// advisor inside [`for_environment`]; [`Cached::invalidate_environment`] then drops them.
pub struct Cached {
    inner: Arc<dyn AiProvider>,
    cache: moka::future::Cache<String, Arc<AiResponse>>,
    by_environment: Mutex<HashMap<String, HashSet<String>>>,
    metrics: Arc<AiMetrics>,
}

impl Cached {
    /// A cache of at most `capacity` answers, each kept for `ttl`.
    pub fn new(inner: Arc<dyn AiProvider>, ttl: Duration, capacity: u64) -> Self {
        Self {
            inner,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            by_environment: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
        }
    }

    /// Shares `metrics` with other layers.
    pub fn with_metrics(mut self, metrics: Arc<AiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The cache key of `request` for this provider.
    pub fn cache_key(&self, request: &AiRequest) -> String {
        cache_key(self.inner.id(), request)
    }

    /// Completes `request` on behalf of the preview environment `env`, tagging the cached
    /// answer with it.
    pub async fn complete_json_for(
        &self,
        env: &str,
        request: &AiRequest,
    ) -> Result<AiResponse, AiError> {
        self.complete(Some(env), request).await
    }

    /// Drops every cached answer used by the environment `env`; returns how many keys it had.
    /// An answer shared with another environment is dropped too (it is simply asked again).
    pub async fn invalidate_environment(&self, env: &str) -> usize {
        let keys = self
            .by_environment
            .lock()
            .map(|mut index| index.remove(env).unwrap_or_default())
            .unwrap_or_default();
        for key in &keys {
            self.cache.invalidate(key).await;
        }
        keys.len()
    }

    /// Number of cached answers (after pending maintenance has run).
    pub async fn len(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Whether the cache holds no answer.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    async fn complete(
        &self,
        env: Option<&str>,
        request: &AiRequest,
    ) -> Result<AiResponse, AiError> {
        bump(&self.metrics.requests);
        let key = self.cache_key(request);
        let missed = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .cache
            .try_get_with(key.clone(), async {
                missed.store(true, Ordering::Relaxed);
                self.inner.complete_json(request).await.map(Arc::new)
            })
            .await;
        let hit = !missed.load(Ordering::Relaxed);
        if hit {
            bump(&self.metrics.cache_hits);
        } else {
            bump(&self.metrics.cache_misses);
        }
        let outcome = match &result {
            Ok(_) if hit => "cache_hit",
            Ok(_) => "ok",
            Err(e) => e.category(),
        };
        self.metrics
            .count_outcome(self.inner.id(), &request.feature, outcome);
        let answer = result.map_err(|e| (*e).clone())?;
        if let Some(env) = env
            && let Ok(mut index) = self.by_environment.lock()
        {
            index.entry(env.to_string()).or_default().insert(key);
        }
        Ok((*answer).clone())
    }
}

#[async_trait]
impl AiProvider for Cached {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let env = ENVIRONMENT.try_with(Clone::clone).ok();
        self.complete(env.as_deref(), request).await
    }
}

/// Normalises untrusted text for the cache key. Every input gets CRLF → LF and trailing
/// whitespace trimmed per line; diffs (label containing `diff`, or text starting with
/// `diff --git`) also lose their `index <sha>..<sha>` lines, which change on every rebase
/// without changing the content.
pub fn normalise_untrusted(label: &str, text: &str) -> String {
    let is_diff = label.to_ascii_lowercase().contains("diff") || text.starts_with("diff --git");
    let mut out = String::with_capacity(text.len());
    for line in text.split('\n') {
        let line = line.trim_end();
        if is_diff && line.starts_with("index ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The cache key of `request` sent to `provider_id` (hex SHA-256).
pub fn cache_key(provider_id: &str, request: &AiRequest) -> String {
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let mut h = Sha256::new();
    field(&mut h, b"previewd-ai-cache-v1");
    field(&mut h, request.feature.as_bytes());
    field(&mut h, &request.prompt_version.to_le_bytes());
    field(&mut h, provider_id.as_bytes());
    field(&mut h, request.schema_name.as_bytes());
    // serde_json's map is ordered, so this rendering is canonical.
    field(&mut h, request.schema.to_string().as_bytes());
    field(&mut h, request.instructions.as_bytes());
    field(&mut h, request.context.as_bytes());
    field(&mut h, &request.temperature.to_bits().to_le_bytes());
    field(&mut h, &request.max_output_tokens.to_le_bytes());
    field(&mut h, &(request.untrusted.len() as u64).to_le_bytes());
    for input in &request.untrusted {
        field(&mut h, input.label.as_bytes());
        field(
            &mut h,
            normalise_untrusted(&input.label, &input.text).as_bytes(),
        );
    }
    hex::encode(h.finalize())
}

// ---------------------------------------------------------------------------------------
// Deadline
// ---------------------------------------------------------------------------------------

/// Bounds the whole call by `request.deadline` (or a default when it is zero); past it the
/// call is cancelled and [`AiError::Timeout`] returned.
pub struct Deadline {
    inner: Arc<dyn AiProvider>,
    default: Duration,
    metrics: Arc<AiMetrics>,
}

impl Deadline {
    /// Wraps `inner`; `default` applies to requests whose deadline is zero.
    pub fn new(inner: Arc<dyn AiProvider>, default: Duration) -> Self {
        Self {
            inner,
            default,
            metrics: Arc::default(),
        }
    }

    /// Shares `metrics` with other layers.
    pub fn with_metrics(mut self, metrics: Arc<AiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

#[async_trait]
impl AiProvider for Deadline {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let budget = if request.deadline.is_zero() {
            self.default
        } else {
            request.deadline
        };
        let request = if request.deadline.is_zero() {
            let mut r = request.clone();
            r.deadline = budget;
            Cow::Owned(r)
        } else {
            Cow::Borrowed(request)
        };
        match tokio::time::timeout(budget, self.inner.complete_json(&request)).await {
            Ok(result) => {
                if matches!(result, Err(AiError::Timeout(_))) {
                    bump(&self.metrics.timeouts);
                }
                result
            }
            Err(_) => {
                bump(&self.metrics.timeouts);
                Err(AiError::Timeout(budget))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------

/// A token bucket in front of the provider: `per_second` requests a second with bursts of
/// the same size. A request waits for its turn when the wait fits its deadline, and gets
/// [`AiError::RateLimited`] with the wait otherwise.
pub struct RateLimited {
    inner: Arc<dyn AiProvider>,
    limiter: governor::DefaultDirectRateLimiter,
    metrics: Arc<AiMetrics>,
}

impl RateLimited {
    /// Allows `per_second` requests a second.
    pub fn new(inner: Arc<dyn AiProvider>, per_second: NonZeroU32) -> Self {
        Self {
            inner,
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
            metrics: Arc::default(),
        }
    }

    /// Allows requests at the pace of any `governor` quota (e.g. per minute, or with a
    /// burst different from the rate).
    pub fn with_quota(inner: Arc<dyn AiProvider>, quota: governor::Quota) -> Self {
        Self {
            inner,
            limiter: governor::RateLimiter::direct(quota),
            metrics: Arc::default(),
        }
    }

    /// Shares `metrics` with other layers.
    pub fn with_metrics(mut self, metrics: Arc<AiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

#[async_trait]
impl AiProvider for RateLimited {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let start = Instant::now();
        let mut waited = false;
        while let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            if start.elapsed() + wait >= request.deadline {
                bump(&self.metrics.rate_limit_rejections);
                return Err(AiError::RateLimited {
                    retry_after: Some(wait),
                });
            }
            if !waited {
                bump(&self.metrics.rate_limit_waits);
                waited = true;
            }
            tokio::time::sleep(wait).await;
        }
        let remaining = request.deadline.saturating_sub(start.elapsed());
        self.inner
            .complete_json(&with_deadline(request, remaining))
            .await
    }
}

// ---------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------

/// When the [`CircuitBreaker`] opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive `Unavailable`/`Timeout` failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one trial request is let through.
    pub cooldown: Duration,
    /// How long the circuit stays open after `QuotaExhausted`.
    pub quota_cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
            quota_cooldown: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// Stops calling a provider that keeps failing. After `failure_threshold` consecutive
/// `Unavailable` or `Timeout` errors (or one `QuotaExhausted`) the circuit opens and every
/// call returns `Unavailable("circuit open")` at once; after the cool-down one trial call is
/// let through (half-open) and its outcome closes or re-opens the circuit. Other errors
/// (bad request, schema violation, refusal, rate limit) prove the provider is reachable and
/// reset the failure count.
pub struct CircuitBreaker {
    inner: Arc<dyn AiProvider>,
    policy: BreakerPolicy,
    state: Mutex<BreakerState>,
    metrics: Arc<AiMetrics>,
}

enum Outcome {
    Success,
    Failure,
    Quota,
}

struct TrialGuard<'a> {
    breaker: &'a CircuitBreaker,
    armed: bool,
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // The trial was cancelled (deadline): count it as a failure.
            self.breaker.record(true, Outcome::Failure);
        }
    }
}

impl CircuitBreaker {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: Arc<dyn AiProvider>, policy: BreakerPolicy) -> Self {
        Self {
            inner,
            policy,
            state: Mutex::new(BreakerState::default()),
            metrics: Arc::default(),
        }
    }

    /// Shares `metrics` with other layers.
    pub fn with_metrics(mut self, metrics: Arc<AiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Whether calls are currently refused.
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.open_until.is_some_and(|until| Instant::now() < until))
            .unwrap_or(false)
    }

    /// `Ok(is_trial)` when the call may proceed.
    fn admit(&self) -> Result<bool, AiError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| AiError::Unavailable("circuit breaker state poisoned".into()))?;
        match state.open_until {
            None => Ok(false),
            Some(until) if Instant::now() < until || state.trial_in_flight => {
                bump(&self.metrics.circuit_rejections);
                Err(AiError::Unavailable("circuit open".into()))
            }
            Some(_) => {
                state.trial_in_flight = true;
                Ok(true)
            }
        }
    }

    fn record(&self, trial: bool, outcome: Outcome) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if trial {
            state.trial_in_flight = false;
        }
        let now = Instant::now();
        match outcome {
            Outcome::Success => {
                state.consecutive_failures = 0;
                state.open_until = None;
            }
            Outcome::Quota => {
                state.open_until = Some(now + self.policy.quota_cooldown);
                bump(&self.metrics.circuit_opened);
                tracing::warn!(provider = self.inner.id(), "quota exhausted; circuit open");
            }
            Outcome::Failure => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                if trial || state.consecutive_failures >= self.policy.failure_threshold {
                    if state.open_until.is_none_or(|until| until <= now) {
                        bump(&self.metrics.circuit_opened);
                    }
                    state.open_until = Some(now + self.policy.cooldown);
                    tracing::warn!(
                        provider = self.inner.id(),
                        failures = state.consecutive_failures,
                        "provider failing; circuit open"
                    );
                }
            }
        }
    }
}

#[async_trait]
impl AiProvider for CircuitBreaker {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let trial = self.admit()?;
        let mut guard = TrialGuard {
            breaker: self,
            armed: trial,
        };
        let result = self.inner.complete_json(request).await;
        guard.armed = false;
        let outcome = match &result {
            Err(AiError::Unavailable(_) | AiError::Timeout(_)) => Outcome::Failure,
            Err(AiError::QuotaExhausted(_)) => Outcome::Quota,
            _ => Outcome::Success,
        };
        self.record(trial, outcome);
        result
    }
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

/// How [`Retrying`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles after each retry.
    pub base_delay: Duration,
    /// Upper bound of one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// Retries `RateLimited`, `Timeout` and `Unavailable` errors with exponential backoff and
/// "equal" jitter (a random wait between half and all of the backoff), never sooner than a
/// server's `Retry-After`. Never retries quota, credential, request, schema or refusal
/// errors. A retry whose wait does not fit in the request's deadline is not attempted: the
/// last error is returned instead.
pub struct Retrying {
    inner: Arc<dyn AiProvider>,
    policy: RetryPolicy,
    metrics: Arc<AiMetrics>,
}

impl Retrying {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: Arc<dyn AiProvider>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            metrics: Arc::default(),
        }
    }

    /// Shares `metrics` with other layers.
    pub fn with_metrics(mut self, metrics: Arc<AiMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The wait after failed attempt `retry` (0-based).
    fn backoff(&self, retry: u32) -> Duration {
        previewd_core::retry::Backoff::equal_jitter(self.policy.base_delay, self.policy.max_delay)
            .delay(retry.saturating_add(1), rand::rng().random_range(0.0..=1.0))
    }
}

#[async_trait]
impl AiProvider for Retrying {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let start = Instant::now();
        let attempts = self.policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let remaining = request.deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(AiError::Timeout(request.deadline));
            }
            let error = match self
                .inner
                .complete_json(&with_deadline(request, remaining))
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if !error.is_retryable() || attempt >= attempts {
                return Err(error);
            }
            let mut wait = self.backoff(attempt - 1);
            if let AiError::RateLimited {
                retry_after: Some(after),
            } = &error
            {
                wait = wait.max(*after);
            }
            if start.elapsed() + wait >= request.deadline {
                tracing::debug!(?wait, "retry would overrun the deadline; giving up");
                return Err(error);
            }
            tracing::debug!(attempt, ?wait, error = %error, "retrying model request");
            bump(&self.metrics.retries);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stack
// ---------------------------------------------------------------------------------------

/// The standard stack and handles on its cache and counters.
#[derive(Clone)]
pub struct AiStack {
    /// The outermost layer; hand this to advisors.
    pub provider: Arc<dyn AiProvider>,
    /// The cache layer, for [`Cached::invalidate_environment`].
    pub cache: Arc<Cached>,
    /// Counters of every layer.
    pub metrics: Arc<AiMetrics>,
}

impl std::fmt::Debug for AiStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiStack")
            .field("provider", &self.provider.id())
            .field("metrics", &self.metrics.snapshot())
            .finish()
    }
}

/// Wraps `provider` in cache, deadline, rate limit, circuit breaker and retries as
/// configured in `config`.
pub fn stack_around(provider: Arc<dyn AiProvider>, config: &AiConfig) -> AiStack {
    let metrics = Arc::new(AiMetrics::default());
    let retrying: Arc<dyn AiProvider> = Arc::new(
        Retrying::new(
            provider,
            RetryPolicy {
                max_attempts: config.max_attempts,
                ..RetryPolicy::default()
            },
        )
        .with_metrics(metrics.clone()),
    );
    let breaker: Arc<dyn AiProvider> = Arc::new(
        CircuitBreaker::new(
            retrying,
            BreakerPolicy {
                failure_threshold: config.breaker_failure_threshold,
                cooldown: config.breaker_cooldown,
                quota_cooldown: config.quota_cooldown,
            },
        )
        .with_metrics(metrics.clone()),
    );
    let per_second = NonZeroU32::new(config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
    let limited: Arc<dyn AiProvider> =
        Arc::new(RateLimited::new(breaker, per_second).with_metrics(metrics.clone()));
    let deadline: Arc<dyn AiProvider> =
        Arc::new(Deadline::new(limited, config.timeout).with_metrics(metrics.clone()));
    let cache = Arc::new(
        Cached::new(deadline, config.cache_ttl, config.cache_capacity)
            .with_metrics(metrics.clone()),
    );
    AiStack {
        provider: cache.clone(),
        cache,
        metrics,
    }
}

/// [`stack_around`] when only the provider is needed.
pub fn ai_stack(provider: Arc<dyn AiProvider>, config: &AiConfig) -> Arc<dyn AiProvider> {
    stack_around(provider, config).provider
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use previewd_core::ai::UntrustedInput;

    fn request(diff: &str) -> AiRequest {
        AiRequest {
            feature: "services".into(),
            prompt_version: 3,
            instructions: "pick".into(),
            context: "orders".into(),
            untrusted: vec![UntrustedInput {
                label: "diff".into(),
                text: diff.into(),
            }],
            schema_name: "s".into(),
            schema: serde_json::json!({"type": "object"}),
            temperature: 0.0,
            max_output_tokens: 10,
            deadline: Duration::from_secs(1),
        }
    }

    #[test]
    fn cache_key_ignores_index_lines_crlf_and_trailing_space_only() {
        let a = "diff --git a/x b/x\nindex 1111111..2222222 100644\n--- a/x\n+++ b/x\n+hello\n";
        let b = "diff --git a/x b/x\r\nindex 3333333..4444444 100644\r\n--- a/x  \r\n+++ b/x\r\n+hello\r\n";
        let c = "diff --git a/x b/x\nindex 1111111..2222222 100644\n--- a/x\n+++ b/x\n+hullo\n";
        assert_eq!(cache_key("p", &request(a)), cache_key("p", &request(b)));
        assert_ne!(cache_key("p", &request(a)), cache_key("p", &request(c)));
        assert_ne!(cache_key("p", &request(a)), cache_key("q", &request(a)));
        let mut v = request(a);
        v.prompt_version = 4;
        assert_ne!(cache_key("p", &request(a)), cache_key("p", &v));
        let mut ctx = request(a);
        ctx.context = "orders, billing".into();
        assert_ne!(cache_key("p", &request(a)), cache_key("p", &ctx));
        let mut sch = request(a);
        sch.schema = serde_json::json!({"type": "object", "required": ["x"]});
        assert_ne!(cache_key("p", &request(a)), cache_key("p", &sch));
    }

    #[test]
    fn index_lines_are_kept_outside_diffs() {
        assert_eq!(
            normalise_untrusted("pull request body", "index 1\n"),
            "index 1\n"
        );
        assert_eq!(normalise_untrusted("diff", "index 1\n+x \r\n"), "+x\n");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        struct Never;
        #[async_trait]
        impl AiProvider for Never {
            fn id(&self) -> &str {
                "never"
            }
            fn capabilities(&self) -> Capabilities {
                Capabilities::default()
            }
            async fn complete_json(&self, _: &AiRequest) -> Result<AiResponse, AiError> {
                Err(AiError::Unavailable("x".into()))
            }
        }
        let r = Retrying::new(
            Arc::new(Never),
            RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(300),
            },
        );
        for _ in 0..20 {
            let first = r.backoff(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = r.backoff(2);
            assert!(third >= Duration::from_millis(150) && third <= Duration::from_millis(300));
        }
    }

    #[tokio::test]
    async fn outcomes_are_counted_by_provider_feature_and_outcome() {
        struct ByFeature;
        #[async_trait]
        impl AiProvider for ByFeature {
            fn id(&self) -> &str {
                "local"
            }
            fn capabilities(&self) -> Capabilities {
                Capabilities::default()
            }
            async fn complete_json(&self, r: &AiRequest) -> Result<AiResponse, AiError> {
                if r.feature == "services" {
                    Ok(AiResponse {
                        value: serde_json::json!({"services": ["orders"]}),
                        model: "m".into(),
                        prompt_tokens: None,
                        completion_tokens: None,
                    })
                } else {
                    Err(AiError::Unavailable("down".into()))
                }
            }
        }
        let metrics = Arc::new(AiMetrics::default());
        let cache = Cached::new(Arc::new(ByFeature), Duration::from_secs(60), 10)
            .with_metrics(metrics.clone());
        let services = request("diff --git a/x b/x");
        cache.complete_json(&services).await.unwrap();
        cache.complete_json(&services).await.unwrap();
        let mut tests = services.clone();
        tests.feature = "tests".into();
        assert!(cache.complete_json(&tests).await.is_err());

        assert_eq!(metrics.outcome_count("local", "services", "ok"), 1);
        assert_eq!(metrics.outcome_count("local", "services", "cache_hit"), 1);
        assert_eq!(metrics.outcome_count("local", "tests", "unavailable"), 1);
        assert_eq!(metrics.outcome_count("local", "tests", "ok"), 0);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"previewd_ai_requests_by_outcome_total{provider="local",feature="tests",outcome="unavailable"} 1"#
            ),
            "{text}"
        );
    }
}
