//! The `PreviewEnvironment` controller: drives each environment through its phases.
//!
//! Every reconcile is observe → plan → execute: [`observe`] reads the environment's
//! namespace and children from watch caches ([`caches`]), [`crate::plan::plan`] decides
//! (pure), [`execute`] applies what differs with server-side apply (one field manager,
//! forced), prunes, writes the status only when it changed, publishes Events and
//! reports. A change or deletion of any child wakes its environment through the watches;
//! the periodic resync (`resync_interval`) is a safety net. A child edited by hand is put
//! back when its desired-state hash annotation changes or disappears, and, for
//! Deployments, StatefulSets and DaemonSets, when its replicas, images or environment
//! differ from the desired ones (seen by the watch within seconds). Edits of other
//! fields are overwritten at the next apply of that object.

pub mod caches;
mod config;
pub mod events;
mod execute;
mod observe;
pub mod status;
mod sweep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use previewd_core::checks::RecordedChecks;
use previewd_core::source_control::SourceControl;
use previewd_core::{Clock, SystemClock};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{ControllerConfig, DEFAULT_CONCURRENCY};
pub use sweep::{SweepReport, sweep_once};

use crate::advice::{EnvironmentAdvisor, NoAdvice};
use crate::crd::PreviewEnvironment;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::report::{EnvironmentReporter, NoopReporter};
use crate::strategy::{DeployStrategy, Stage, Strategies};
use caches::{CacheWriters, Caches, Triggers};

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings.
    pub config: ControllerConfig,
    /// Event recorder (one per process; it folds repeated events into series).
    pub recorder: events::EventRecorder,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Reports phase changes to the source-control system.
    pub reporter: Arc<dyn EnvironmentReporter>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Advises which services to deploy and records AI decisions.
    pub advisor: Arc<dyn EnvironmentAdvisor>,
    /// How applications are deployed: the strategies offered, by name.
    pub strategies: Strategies,
    /// What happens after Ready, in order.
    pub stages: Vec<Arc<dyn Stage>>,
    /// The watch caches the planner reads (filled once [`run`] starts).
    pub caches: Caches,
    writers: Mutex<Option<CacheWriters>>,
    /// The controller's cache of environments (set by [`run`]).
    pub environments: Arc<OnceLock<Store<PreviewEnvironment>>>,
    /// The controller's cache of repositories, for reporters' authorisation (set by
    /// [`run`]).
    repository_store: Arc<OnceLock<Store<crate::crd::PreviewRepository>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Asked for the required checks of a head commit when the webhook has not reported
    /// them all (the CI gate's fallback poll); `None` without GitHub credentials.
    pub checks_source: Option<Arc<dyn SourceControl>>,
    polled_checks: Mutex<HashMap<String, (RecordedChecks, std::time::Instant)>>,
    handed_reports: Mutex<HashMap<String, String>>,
}

/// Every kind the caches watch in preview namespaces: what the plug-ins create
/// ([`crate::plan::watched_kinds`]), the environments' routes and, with a waker, the
/// objects that point a sleeping route at it.
fn cached_kinds(
    strategies: &Strategies,
    stages: &[Arc<dyn Stage>],
    config: &ControllerConfig,
) -> Vec<crate::strategy::WatchedKind> {
    let mut kinds = crate::plan::watched_kinds(strategies, stages);
    kinds.extend(crate::children::httproute::watched_kinds(&config.routing));
    for kind in crate::children::waker::watched_kinds(config.waker.as_ref()) {
        if !kinds.iter().any(|k| {
            k.resource.api_version == kind.resource.api_version
                && k.resource.kind == kind.resource.kind
        }) {
            kinds.push(kind);
        }
    }
    kinds
}

/// How often the CI gate's fallback poll asks the source-control system about one
/// environment's head commit.
pub const CHECKS_POLL_INTERVAL: Duration = Duration::from_secs(60);

impl Context {
    /// Creates a context with the system clock and no reporter.
    pub fn new(client: Client, config: ControllerConfig) -> Self {
        let recorder =
            events::EventRecorder::new(client.clone(), "previewd", std::env::var("POD_NAME").ok());
        let strategies = Strategies::default();
        let (caches, writers) = Caches::new(
            &cached_kinds(&strategies, &[], &config),
            config.secret_namespace.as_deref(),
        );
        Context {
            client,
            config,
            recorder,
            clock: Arc::new(SystemClock),
            reporter: Arc::new(NoopReporter),
            metrics: Arc::new(Metrics::default()),
            advisor: Arc::new(NoAdvice),
            strategies,
            stages: Vec::new(),
            caches,
            writers: Mutex::new(Some(writers)),
            environments: Arc::new(OnceLock::new()),
            repository_store: Arc::new(OnceLock::new()),
            failures: Mutex::new(HashMap::new()),
            checks_source: None,
            polled_checks: Mutex::new(HashMap::new()),
            handed_reports: Mutex::new(HashMap::new()),
        }
    }

    /// Deploys environments that name no strategy with `strategy` (before [`run`]). The
    /// catalogue strategy stays available by name.
    pub fn with_strategy(mut self, strategy: Arc<dyn DeployStrategy>) -> Self {
        self.strategies.set_default(strategy);
        self.rebuild_caches();
        self
    }

    /// Offers `strategy` to environments and repositories that name it (before [`run`]);
    /// replaces one of the same name.
    pub fn register_strategy(mut self, strategy: Arc<dyn DeployStrategy>) -> Self {
        self.strategies.register(strategy);
        self.rebuild_caches();
        self
    }

    /// Adds a stage that runs after Ready, after those added before (before [`run`]).
    pub fn with_stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
        self.rebuild_caches();
        self
    }

    fn rebuild_caches(&mut self) {
        let (caches, writers) = Caches::new(
            &cached_kinds(&self.strategies, &self.stages, &self.config),
            self.config.secret_namespace.as_deref(),
        );
        self.caches = caches;
        self.writers = Mutex::new(Some(writers));
    }

    /// Polls `source` for the required checks of head commits the webhook has not
    /// reported on (every [`CHECKS_POLL_INTERVAL`] per environment while it waits).
    pub fn with_checks_source(mut self, source: Arc<dyn SourceControl>) -> Self {
        self.checks_source = Some(source);
        self
    }

    /// The last poll of `env`'s head commit, and whether it is due again.
    pub(crate) fn polled_checks(&self, env: &PreviewEnvironment) -> (Option<RecordedChecks>, bool) {
        let polled = self.polled_checks.lock().unwrap_or_else(|p| p.into_inner());
        match polled.get(&backoff_key(env)) {
            Some((checks, at)) if checks.sha == env.spec.head_sha => {
                (Some(checks.clone()), at.elapsed() >= CHECKS_POLL_INTERVAL)
            }
            _ => (None, true),
        }
    }

    /// Remembers a poll of `env`'s head commit.
    pub(crate) fn remember_checks(&self, env: &PreviewEnvironment, checks: RecordedChecks) {
        let mut polled = self.polled_checks.lock().unwrap_or_else(|p| p.into_inner());
        polled.insert(backoff_key(env), (checks, std::time::Instant::now()));
    }

    /// Forgets polls of an environment that is gone.
    pub(crate) fn forget_checks(&self, env: &PreviewEnvironment) {
        let mut polled = self.polled_checks.lock().unwrap_or_else(|p| p.into_inner());
        polled.remove(&backoff_key(env));
    }

    /// Whether to hand the report `token` of `env` to the reporter: once per token and
    /// process. An unconfirmed report is planned on every reconcile, but the reporter
    /// has it already (queued, retried until delivered); handing it over again would
    /// only make the other reporters (history) record it again. A new process hands
    /// over every pending token once. `None` (reports not durable) is always handed
    /// over.
    pub(crate) fn hand_report(&self, env: &PreviewEnvironment, token: Option<&str>) -> bool {
        let mut handed = self
            .handed_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = backoff_key(env);
        let Some(token) = token else {
            handed.remove(&key);
            return true;
        };
        if handed.get(&key).is_some_and(|t| t == token) {
            return false;
        }
        handed.insert(key, token.to_string());
        true
    }

    /// Forgets the reports handed over for an environment that is gone.
    pub(crate) fn forget_reports(&self, env: &PreviewEnvironment) {
        let mut handed = self
            .handed_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        handed.remove(&backoff_key(env));
    }

    /// The controller's cache of `PreviewRepository` objects, filled once [`run`] starts
    /// (for plug-ins that read repository settings without an API request per read).
    pub fn repository_store(&self) -> Arc<OnceLock<Store<crate::crd::PreviewRepository>>> {
        self.repository_store.clone()
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the reporter. A reporter that confirms deliveries
    /// ([`EnvironmentReporter::acknowledge_with`]) is given a confirmation that clears
    /// `status.pendingReport`, and reports become durable
    /// ([`ControllerConfig::durable_reports`]).
    pub fn with_reporter(mut self, reporter: Arc<dyn EnvironmentReporter>) -> Self {
        self.config.durable_reports = reporter.acknowledge_with(Arc::new(
            crate::report::StatusAcknowledger::new(self.client.clone()),
        ));
        reporter.authorise_with(Arc::new(crate::tenancy::ClaimAuthoriser::new(
            self.repository_store.clone(),
            self.config.claim_policy.clone(),
        )));
        self.reporter = reporter;
        self
    }

    /// Replaces the advisor.
    pub fn with_advisor(mut self, advisor: Arc<dyn EnvironmentAdvisor>) -> Self {
        self.advisor = advisor;
        self
    }

    /// Replaces the metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Api for environments in the object's namespace.
    pub(crate) fn env_api(
        &self,
        env: &PreviewEnvironment,
    ) -> Result<Api<PreviewEnvironment>, Error> {
        let ns = env.namespace().ok_or(Error::MissingField("namespace"))?;
        Ok(Api::namespaced(self.client.clone(), &ns))
    }

    /// Publishes an event on the environment; failures are logged, never fatal.
    pub(crate) async fn publish(
        &self,
        env: &PreviewEnvironment,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &env.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        // Jitter of up to 10 % derived from the key, so retries of many objects spread
        // out and one object's retries stay predictable.
        previewd_core::retry::Backoff {
            base: self.config.backoff_base,
            max: self.config.backoff_max,
            jitter: 0.1,
        }
        .delay(*n, previewd_core::retry::fraction_of(key))
    }

    fn reset_backoff(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }

    /// Consecutive failures recorded for an object (0 after a success).
    pub fn failure_count(&self, env: &PreviewEnvironment) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(&backoff_key(env)).copied().unwrap_or(0)
    }
}

fn backoff_key(env: &PreviewEnvironment) -> String {
    env.uid()
        .unwrap_or_else(|| format!("{}/{}", env.namespace().unwrap_or_default(), env.name_any()))
}

/// Reconciles one environment. Public so that embedding operators and tests can drive it.
pub async fn reconcile(env: Arc<PreviewEnvironment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        env = %env.name_any(),
        namespace = %env.namespace().unwrap_or_default(),
        generation = env.metadata.generation.unwrap_or_default(),
    );
    let _entered = span.enter();
    drop(_entered);
    let result = {
        use tracing::Instrument;
        observe_plan_execute(&env, &ctx).instrument(span).await
    };
    ctx.metrics.observe(started.elapsed());
    if result.is_ok() {
        ctx.reset_backoff(&backoff_key(&env));
    }
    result
}

async fn observe_plan_execute(env: &PreviewEnvironment, ctx: &Context) -> Result<Action, Error> {
    let observed = observe::observe(env, ctx).await;
    let plan = crate::plan::plan(&crate::plan::PlanInput {
        env,
        observed: &observed,
        now: ctx.clock.now(),
        config: &ctx.config,
        strategies: &ctx.strategies,
        stages: &ctx.stages,
    });
    tracing::debug!(
        env = %env.name_any(),
        apply = plan.apply.len(),
        delete = plan.delete.len(),
        phase = ?plan.status.phase,
        requeue = ?plan.requeue_after,
        "planned"
    );
    execute::execute(env, plan, ctx).await
}

/// Decides when to retry after a failed reconcile: exponential backoff per object, and a
/// Warning event with the error.
pub fn error_policy(env: Arc<PreviewEnvironment>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff(&backoff_key(&env));
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            error: error.category().to_string(),
        })
        .inc();
    warn!(env = %env.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    let note = error.to_string();
    let ctx2 = ctx.clone();
    let env2 = env.clone();
    tokio::spawn(async move {
        ctx2.publish(&env2, EventType::Warning, "ReconcileError", note)
            .await;
    });
    Action::requeue(delay)
}

/// Whether the controller is doing its job: set once every cache has synced, and
/// dropped while a watch has been failing for longer than the grace period (lost
/// connection, revoked permissions, an API server that stopped answering) or after the
/// controller stopped.
#[derive(Clone, Debug)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    failing: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    grace: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            ready: Arc::default(),
            failing: Arc::default(),
            grace: WATCH_FAILURE_GRACE,
        }
    }
}

/// How long a watch may keep failing (retrying with backoff) before readiness drops.
pub const WATCH_FAILURE_GRACE: Duration = Duration::from_secs(30);

impl Readiness {
    /// Readiness that drops after watches failed for `grace`.
    pub fn with_watch_grace(grace: Duration) -> Readiness {
        Readiness {
            grace,
            ..Readiness::default()
        }
    }

    /// True once the controller's caches are synced, while no watch has been failing for
    /// longer than the grace period.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.failing_watches().is_empty()
    }

    /// Watches failing for longer than the grace period.
    pub fn failing_watches(&self) -> Vec<String> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let mut kinds: Vec<String> = failing
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.grace)
            .map(|(kind, _)| kind.clone())
            .collect();
        kinds.sort();
        kinds
    }

    /// Records that the watch of `kind` failed (the first failure starts the clock).
    pub fn watch_failed(&self, kind: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing
            .entry(kind.to_string())
            .or_insert_with(std::time::Instant::now);
    }

    /// Records that the watch of `kind` delivered an event.
    pub fn watch_ok(&self, kind: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if !failing.is_empty() {
            failing.remove(kind);
        }
    }

    fn set(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    fn unset(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// How often the per-phase gauges are recomputed from the cache.
const PHASE_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Checks that the `PreviewEnvironment` CRD is installed and readable, and that the
/// environment selector, if any, is valid.
pub async fn preflight(client: &Client, config: &ControllerConfig) -> Result<(), Error> {
    let api: Api<PreviewEnvironment> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.list(&kube::api::ListParams::default().limit(1))
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            action: "list PreviewEnvironments (is the CRD installed? run `previewd crd | kubectl apply -f -`)".into(),
            source,
        })?;
    if let Some(selector) = &config.environment_selector {
        api.list(&kube::api::ListParams::default().labels(selector).limit(1))
            .await
            .map(|_| ())
            .map_err(|source| Error::Kube {
                action: format!("list PreviewEnvironments with the environment selector {selector:?} (is it a valid label selector?)"),
                source,
            })?;
    }
    Ok(())
}

/// The watch of the environments this controller reconciles.
fn environment_watch(config: &ControllerConfig) -> watcher::Config {
    let watch = watcher::Config::default().any_semantic();
    match &config.environment_selector {
        Some(selector) => watch.labels(selector),
        None => watch,
    }
}

/// Runs the controller, its watches and the cleanup sweep until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, readiness: Readiness, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let config = &ctx.config;
    let envs: Api<PreviewEnvironment> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (sender, triggers) = futures::channel::mpsc::unbounded();
    let writers = ctx.writers.lock().unwrap_or_else(|p| p.into_inner()).take();
    let watch_tasks = match writers {
        Some(writers) => writers.start(
            &client,
            Triggers {
                sender,
                watch_namespace: config.watch_namespace.clone(),
                environments: ctx.environments.clone(),
                health: readiness.clone(),
                repositories: ctx.caches.repositories.clone(),
            },
            shutdown.clone(),
        ),
        None => {
            warn!("the controller's caches are already running; not starting them twice");
            Vec::new()
        }
    };

    // The planner must not see half-filled caches: a child missing from a cache that has
    // not finished its first list would be applied again for nothing.
    tokio::select! {
        ready = ctx.caches.wait_until_ready() => {
            if !ready {
                warn!("the controller's caches stopped before they synced");
                return;
            }
        }
        _ = shutdown.cancelled() => {
            for task in watch_tasks {
                task.abort();
            }
            return;
        }
    }

    let controller = caches::environment_controller(envs, environment_watch(config));
    let store = controller.store();
    let _ = ctx.environments.set(store.clone());
    let _ = ctx.repository_store.set(ctx.caches.repositories.clone());
    let controller = controller
        .reconcile_on(triggers)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(config.concurrency)
                .debounce(config.debounce),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());

    let ready_store = store.clone();
    let caches = ctx.caches.clone();
    let readiness_task = {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Re-arm the wait every 250 ms: a waiter registered before the store is
            // initialised is not always woken, a fresh one after initialisation returns
            // at once.
            loop {
                tokio::select! {
                    r = tokio::time::timeout(Duration::from_millis(250), async {
                        ready_store.wait_until_ready().await.is_ok() && caches.wait_until_ready().await
                    }) => {
                        match r {
                            Ok(true) => {
                                readiness.set();
                                info!("controller caches synced");
                                return;
                            }
                            Ok(false) => return,
                            Err(_) => continue,
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };

    let sweep_ctx = ctx.clone();
    let sweep_shutdown = shutdown.clone();
    let sweeper = tokio::spawn(async move {
        sweep::run_periodically(sweep_ctx, sweep_shutdown).await;
    });

    let phases_task = {
        let metrics = ctx.metrics.clone();
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PHASE_GAUGE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => metrics.set_phases(
                        store
                            .state()
                            .iter()
                            .map(|e| e.status.as_ref().and_then(|s| s.phase)),
                    ),
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };

    let metrics = ctx.metrics.clone();
    let gauge_store = store.clone();
    let env_health = readiness.clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            metrics.environments.set(gauge_store.len() as i64);
            match result {
                Ok(_) => env_health.watch_ok("PreviewEnvironment"),
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    env_health.watch_failed("PreviewEnvironment");
                    warn!(error = %e, "PreviewEnvironment watch error; retrying with backoff");
                }
                Err(other) => tracing::debug!(error = %other, "controller event"),
            }
            futures::future::ready(())
        })
        .await;
    readiness.unset();
    readiness_task.abort();
    phases_task.abort();
    let _ = sweeper.await;
    for task in watch_tasks {
        task.abort();
    }
    info!("controller stopped");
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    #[test]
    fn readiness_drops_while_a_watch_keeps_failing_and_returns_when_it_recovers() {
        let r = Readiness::with_watch_grace(Duration::from_millis(50));
        assert!(!r.is_ready(), "not ready before the caches synced");
        r.set();
        assert!(r.is_ready());
        r.watch_failed("Deployment");
        assert!(
            r.is_ready(),
            "a blip within the grace period keeps readiness"
        );
        std::thread::sleep(Duration::from_millis(80));
        r.watch_failed("Deployment");
        assert!(
            !r.is_ready(),
            "a watch failing past the grace period drops readiness"
        );
        assert_eq!(r.failing_watches(), ["Deployment"]);
        r.watch_ok("Pod");
        assert!(!r.is_ready(), "another kind's events do not count");
        r.watch_ok("Deployment");
        assert!(r.is_ready());
        r.unset();
        assert!(!r.is_ready(), "a stopped controller is not ready");
    }
}
