//! [`OperatorBuilder`]: the whole operator (controller, cleanup sweep, GitHub webhook
//! server, reporter, AI advisor, admin server, web view) wired from [`RunArgs`], with every
//! plug-in replaceable. The stock binary is `OperatorBuilder::new(args).run()`; a
//! platform team's own operator adds its deploy strategy, stages, reporter, advisor or
//! AI provider first.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use previewd_operator::{OperatorBuilder, cli::RunArgs};
//! use previewd_kube::strategy::CatalogueStrategy;
//!
//! OperatorBuilder::new(RunArgs::default())
//!     .strategy(Arc::new(CatalogueStrategy))
//!     .run()
//!     .await
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use previewd_core::ai::AiProvider;
use previewd_core::environment::{EnvironmentAdvisor, EnvironmentReporter};
use previewd_kube::controller::{self, Context, Readiness};

use previewd_kube::metrics::Metrics;
use previewd_kube::strategy::{DeployStrategy, SeedStage, Stage, TestRunStage};
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::cli::RunArgs;
use crate::run::{
    WebhookClient, ai_config, client_as, controller_config, github_client, kube_config,
    start_webhook, wait_for_signal,
};

/// Builds and runs the operator.
pub struct OperatorBuilder {
    args: RunArgs,
    client: Option<Client>,
    strategy: Option<Arc<dyn DeployStrategy>>,
    extra_strategies: Vec<Arc<dyn DeployStrategy>>,
    stages: Vec<Arc<dyn Stage>>,
    reporter: Option<Arc<dyn EnvironmentReporter>>,
    advisor: Option<Arc<dyn EnvironmentAdvisor>>,
    ai_provider: Option<Arc<dyn AiProvider>>,
    shutdown: Option<CancellationToken>,
    admin_bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

impl OperatorBuilder {
    /// An operator configured by `args` (flags and `PREVIEWD_*` variables).
    pub fn new(args: RunArgs) -> Self {
        OperatorBuilder {
            args,
            client: None,
            strategy: None,
            extra_strategies: Vec::new(),
            stages: vec![Arc::new(SeedStage), Arc::new(TestRunStage)],
            reporter: None,
            advisor: None,
            ai_provider: None,
            shutdown: None,
            admin_bound: None,
        }
    }

    /// Uses this Kubernetes client instead of `--kubeconfig` / the default chain.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Deploys applications that name no strategy with `strategy` (default: the
    /// catalogue strategy, which stays available by name).
    pub fn strategy(mut self, strategy: Arc<dyn DeployStrategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Offers `strategy` to repositories and environments that name it
    /// (`spec.strategy`); replaces one of the same name.
    pub fn add_strategy(mut self, strategy: Arc<dyn DeployStrategy>) -> Self {
        self.extra_strategies.push(strategy);
        self
    }

    /// Adds a stage that runs after Ready, after those added before. The stock stages,
    /// seeding test data ([`SeedStage`]) then running the tests ([`TestRunStage`]), come
    /// first unless [`Self::without_stock_stages`] removed them.
    pub fn stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Removes the stages registered so far, the stock ones included.
    pub fn without_stock_stages(mut self) -> Self {
        self.stages.clear();
        self
    }

    /// Reports through `reporter` instead of the GitHub reporter.
    pub fn reporter(mut self, reporter: Arc<dyn EnvironmentReporter>) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Advises through `advisor` instead of the AI engine's advisor.
    pub fn advisor(mut self, advisor: Arc<dyn EnvironmentAdvisor>) -> Self {
        self.advisor = Some(advisor);
        self
    }

    /// Plugs `provider` into the AI engine's advisors (instead of the provider the AI
    /// configuration names). The advisors keep their deterministic answers; the provider
    /// may only add to them.
    pub fn ai_provider(mut self, provider: Arc<dyn AiProvider>) -> Self {
        self.ai_provider = Some(provider);
        self
    }

    /// Stops when `token` is cancelled (default: on SIGTERM or SIGINT).
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Sends the admin server's address once it listens (useful with port 0).
    pub fn on_admin_bound(mut self, sender: tokio::sync::oneshot::Sender<SocketAddr>) -> Self {
        self.admin_bound = Some(sender);
        self
    }

    /// Runs the operator until shutdown.
    pub async fn run(self) -> anyhow::Result<()> {
        let args = self.args;
        let mut config = controller_config(&args)?;
        let proposals = crate::run::data_proposal_settings(&args)?;
        args.replica.validate(
            args.webhook_secret
                .as_ref()
                .is_some_and(|s| !s.expose_secret().is_empty()),
        )?;
        // The webhook gets a client of its own (its own connections and user agent), so
        // that the API server's audit log and metrics tell its requests from the
        // controller's. The configuration is loaded once. An embedding caller's client
        // is shared.
        let (client, webhook_client) = match self.client {
            Some(client) => (client.clone(), WebhookClient::Shared(client)),
            None => {
                let config = kube_config(args.kubeconfig.as_deref()).await?;
                (
                    client_as(config.clone(), "previewd-controller")?,
                    WebhookClient::Own(Box::new(config)),
                )
            }
        };
        // The stock AI settings, read once: the advisor and the data-proposal endpoint share
        // one provider stack. An embedded advisor or provider replaces them.
        let stock_ai = if self.advisor.is_none() && self.ai_provider.is_none() {
            Some(ai_config(&args, &client).await?)
        } else {
            None
        };
        // Seed Jobs are told about the endpoint only when a model will answer there.
        let proposals = match proposals {
            Some((addr, mut endpoint)) if self.advisor.is_none() => {
                let forks = match (&self.ai_provider, &stock_ai) {
                    (Some(p), _) => Some(!p.capabilities().external),
                    (None, Some(ai)) => previewd_ai::config::build_bare_provider(ai)
                        .context("configuring the AI engine")?
                        .map(|p| !p.capabilities().external || ai.allow_external_for_forks),
                    (None, None) => None,
                };
                match forks {
                    Some(forks) => {
                        endpoint.forks = forks;
                        config.stage_jobs.data_proposals = Some(endpoint.clone());
                        Some((addr, endpoint))
                    }
                    None => {
                        info!("AI is off: the data-proposal endpoint is not started");
                        None
                    }
                }
            }
            Some(_) => {
                info!("a custom advisor is plugged in: the data-proposal endpoint is not started");
                None
            }
            None => None,
        };
        controller::preflight(&client, &config)
            .await
            .context("PreviewEnvironment CRD is not installed or not readable; install it with `previewd crd | kubectl apply --server-side -f -`")?;

        let shutdown = match self.shutdown {
            Some(token) => token,
            None => {
                let token = CancellationToken::new();
                let signal_token = token.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    info!("shutdown signal received; draining");
                    signal_token.cancel();
                });
                token
            }
        };

        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let readiness = Readiness::default();
        // Argo CD is offered by name; without its CRDs (or the RBAC to read them) the
        // operator runs normally and only environments that ask for it stall.
        let mut ctx = Context::new(client.clone(), config).with_metrics(metrics);
        let mut kinds = None;
        if !args.manifest_kinds.trim().is_empty() {
            let resolved = previewd_kube::strategy::manifests::ManifestKinds::resolve(
                &client,
                &args.manifest_kinds,
            )
            .await
            .map_err(anyhow::Error::msg)
            .context("--manifest-kinds")?;
            info!(kinds = ?resolved.names(), "manifests strategy enabled");
            ctx = ctx.register_strategy(Arc::new(previewd_kube::strategy::ManifestsStrategy::new(
                resolved.clone(),
            )));
            kinds = Some(resolved);
        }
        ctx = ctx.register_strategy(Arc::new(
            previewd_kube::strategy::ArgoCdStrategy::with_platform(crate::run::argocd_platform(
                &args, kinds,
            )),
        ));
        for strategy in self.extra_strategies {
            ctx = ctx.register_strategy(strategy);
        }
        if let Some(strategy) = self.strategy {
            ctx = ctx.with_strategy(strategy);
        }
        for stage in self.stages {
            ctx = ctx.with_stage(stage);
        }
        let history = crate::run::history_store(&args, &client).await?;
        let github = github_client(&args, &mut registry)?;
        let source_control = github
            .clone()
            .map(|c| Arc::new(c) as Arc<dyn previewd_core::source_control::SourceControl>);
        let mut reporters: Vec<Arc<dyn previewd_kube::report::EnvironmentReporter>> = Vec::new();
        match (self.reporter, &source_control) {
            (Some(reporter), _) => reporters.push(reporter),
            (None, Some(scm)) => {
                let reporter = previewd_github::reporter::GitHubReporter::new(
                    scm.clone(),
                    args.log_url_base.clone(),
                );
                reporter.register(&mut registry);
                reporters.push(Arc::new(reporter));
            }
            (None, None) => {
                info!("no GitHub credentials configured; environments are not reported to GitHub");
            }
        }
        // The CI gate reads the checks of head commits from GitHub when the webhook has
        // not reported them all.
        if let Some(scm) = &source_control {
            ctx = ctx.with_checks_source(scm.clone());
        }
        if let Some(store) = &history {
            let mut recorder = previewd_ai::history::HistoryRecorder::spawn(store.clone());
            // Peak usage per service, from the metrics API where the cluster serves it,
            // goes into the history when an environment sleeps or closes.
            if !args.usage_sample_interval.is_zero() {
                let tracker = previewd_kube::usage::UsageTracker::spawn(
                    client.clone(),
                    args.usage_sample_interval,
                    shutdown.clone(),
                );
                recorder = recorder.with_peaks(tracker);
            }
            reporters.push(Arc::new(recorder));
        }
        ctx = ctx.with_reporter(Arc::new(previewd_core::environment::Reporters(reporters)));
        let mut data_provider: Option<Arc<dyn AiProvider>> = None;
        let advisor: Arc<dyn EnvironmentAdvisor> = match self.advisor {
            Some(advisor) => advisor,
            None => {
                let catalogues = Arc::new(previewd_ai::environment::KubeCatalogues::cached(
                    client.clone(),
                    ctx.repository_store(),
                ));
                match self.ai_provider {
                    Some(provider) => {
                        info!(
                            provider = provider.id(),
                            "AI engine enabled with an embedded provider"
                        );
                        data_provider = Some(provider.clone());
                        let advisor = previewd_ai::environment::AiEnvironmentAdvisor::new(
                            catalogues,
                            source_control.clone(),
                            Some(provider),
                        );
                        Arc::new(match &history {
                            Some(store) => advisor.with_history(store.clone()),
                            None => advisor,
                        })
                    }
                    None => {
                        let ai_config = match stock_ai {
                            Some(ai) => ai,
                            None => ai_config(&args, &client).await?,
                        };
                        if ai_config.enabled {
                            info!(provider = ?ai_config.provider, "AI engine enabled");
                        }
                        let advisor = previewd_ai::environment::AiEnvironmentAdvisor::from_config(
                            catalogues,
                            source_control.clone(),
                            &ai_config,
                        )
                        .context("configuring the AI engine")?;
                        if let Some(metrics) = advisor.metrics() {
                            metrics.register(&mut registry);
                        }
                        data_provider = advisor.provider();
                        Arc::new(match &history {
                            Some(store) => advisor.with_history(store.clone()),
                            None => advisor,
                        })
                    }
                }
            }
        };
        let ctx = Arc::new(ctx.with_advisor(advisor));

        // The web view reads the controller's caches (filled on the replica that runs
        // the controller).
        let dashboard = match args.dashboard.dashboard_addr {
            Some(addr) => {
                let source = crate::dashboard::model::Source {
                    environments: ctx.environments.clone(),
                    deployments: ctx.caches.deployments.clone(),
                    pods: ctx.caches.pods.clone(),
                    events: kube::runtime::reflector::store().0,
                    standby: Arc::default(),
                    idle_sleep_after: ctx.config.idle_sleep_after,
                };
                let task = crate::dashboard::start(
                    &args.dashboard,
                    addr,
                    client.clone(),
                    source,
                    crate::dashboard::Scope {
                        namespace: args.namespace.clone(),
                        environment_selector: args.environment_selector.clone(),
                    },
                    shutdown.clone(),
                )
                .await?;
                Some(task)
            }
            None => None,
        };

        // The waker answers for sleeping previews from the same cache; the routes of
        // sleeping previews point at this replica's address (written by its controller).
        let waker = match args.waker.waker_addr {
            Some(addr) => {
                let state = crate::waker::WakerState::new(
                    ctx.environments.clone(),
                    client.clone(),
                    crate::waker::WakePolicy {
                        limit: args.waker.waker_limit,
                        window: args.waker.waker_window,
                        idle_sleep_after: ctx.config.idle_sleep_after,
                    },
                );
                state.register(&mut registry);
                Some(crate::waker::start(addr, state, shutdown.clone()).await?)
            }
            None => None,
        };

        let webhook = match &args.webhook_secret {
            Some(secret) if !secret.expose_secret().is_empty() => Some(
                start_webhook(
                    &args,
                    secret,
                    webhook_client,
                    github.clone(),
                    &mut registry,
                    shutdown.clone(),
                )
                .await?,
            ),
            _ => {
                info!("no webhook secret configured; the GitHub webhook server is off");
                None
            }
        };
        let admin_state = AdminState {
            readiness: readiness.clone(),
            registry: Arc::new(registry),
        };
        let listener = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
        if let Some(sender) = self.admin_bound {
            let _ = sender.send(listener.local_addr()?);
        }
        let admin = tokio::spawn(admin::serve_on(listener, admin_state, shutdown.clone()));
        let proposal_server = match (proposals, data_provider) {
            (Some((addr, endpoint)), Some(provider)) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the data-proposal endpoint to {addr}"))?;
                let source = Arc::new(previewd_ai::data::ModelProposer::new(provider));
                let state = crate::proposals::ProposalState::new(endpoint.key.clone(), source);
                Some(tokio::spawn(crate::proposals::serve_on(
                    listener,
                    state,
                    shutdown.clone(),
                )))
            }
            _ => None,
        };
        let backfill = crate::backfill::from_run_args(&args, client.clone())?;
        let controller = crate::leader::run_controller(
            &args.replica,
            client.clone(),
            ctx,
            readiness,
            shutdown.clone(),
            backfill,
        )
        .await;
        shutdown.cancel();
        admin
            .await
            .context("admin server task")?
            .context("admin server")?;
        if let Some(webhook) = webhook {
            webhook
                .await
                .context("webhook server task")?
                .context("webhook server")?;
        }
        if let Some(waker) = waker {
            waker.await.context("waker task")?.context("waker")?;
        }
        if let Some(dashboard) = dashboard {
            dashboard
                .await
                .context("web view task")?
                .context("web view")?;
        }
        if let Some(server) = proposal_server {
            server
                .await
                .context("data-proposal endpoint task")?
                .context("data-proposal endpoint")?;
        }
        controller?;
        info!("previewd stopped");
        Ok(())
    }
}
