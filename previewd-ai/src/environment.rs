//! The AI engine as the controller's [`EnvironmentAdvisor`]: which services of an
//! environment a pull request affects, how long the environment should live and how large
//! it should be, recorded in `status.ai`.
//!
//! For each head commit, [`AiEnvironmentAdvisor`]:
//!
//! 1. reads the service catalogue and the build definitions from its [`CatalogueSource`]
//!    (in the operator: `spec.catalogue` and `spec.buildDefinitions` of the
//!    `PreviewRepository` named by `spec.repositoryRef`, same namespace, [`KubeCatalogues`]
//!    with the `kube` feature);
//! 2. asks source control for the pull request (is it a fork? its title) and its changed
//!    files; the diff is fetched only when the model will be asked (a provider is
//!    configured, the fork policy allows it, and some changed file is claimed by no
//!    service);
//! 3. runs the advisors ([`Advisors`]): path matching plus dependency closure, the
//!    optional model that may only add catalogue services, the lifespan rule and the tier
//!    rule.
//!
//! # What is deployed
//!
//! The selected services are the affected services, plus the catalogue's `alwaysDeploy`
//! services, plus the environment's services the catalogue does not know (nothing can be
//! said about their paths, so they are never left out), restricted to the services the
//! environment lists. When the change affects **no** service (a documentation-only change,
//! say) every service is selected: a preview holding only databases and gateways shows
//! the reviewer nothing, while a full one shows the application the pull request leaves
//! unchanged. The selection is never empty.
//!
//! # When the change cannot be read
//!
//! The advisor always answers. Without a `repositoryRef`, a readable `PreviewRepository`,
//! a valid catalogue, source control, or when source control fails, every service is
//! selected, `status.ai.source` is `fallback` and `status.ai.reason` says why. A change
//! list that source control reports incomplete also selects every service (with
//! confidence `0.50`), as the services advisor does. A model that fails leaves the
//! deterministic answer standing, with source `fallback` and the model's error as reason.
//!
//! The controller only restricts what it deploys when the environment's
//! `serviceSelection` is `Affected`; `status.ai` and `status.selectedServices` are
//! recorded either way.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use previewd_core::ServiceCatalogue;
use previewd_core::ai::{AiProvider, DecisionSource};
use previewd_core::environment::{Advice, AiStatus, EnvironmentAdvisor, EnvironmentView};
use previewd_core::source_control::{RepoRef, SourceControl, SourceControlError};

use crate::advisor::{Advisors, PullRequestFacts};
use crate::builddefs::BuildDefinitions;
use crate::config::{AiConfig, ConfigError, build_stack};
use crate::history::HistoryStore;
use crate::lifespan::{HistoryStats, LifespanConfig, PrSize, predict_ttl};
use crate::provider::for_environment;
use crate::provider::layers::Cached;
use crate::services::{
    CONFIDENCE_ASSUMED_ALL, ChangeInput, CompiledCatalogue, ServicesAdvisor, ServicesError,
    ServicesOptions,
};
use crate::tests_select::{TestSelection, TestSelectionConfig, TestSelector, TestStrategy};
use crate::tier::{TierPolicy, advise_tier};
use previewd_core::ai::Decision;
use previewd_core::testselect::{
    SOURCE_DETERMINISTIC as TESTS_DETERMINISTIC, SOURCE_FALLBACK as TESTS_FALLBACK,
    SOURCE_MODEL as TESTS_MODEL, TestSelectionRequest, TestSelectionStatus,
};

/// `status.ai.source` when only the deterministic rules ran.
pub const SOURCE_DETERMINISTIC: &str = "deterministic";
/// `status.ai.source` when the model added to the deterministic answer.
pub const SOURCE_MODEL: &str = "model";
/// `status.ai.source` when the model failed or the change could not be read.
pub const SOURCE_FALLBACK: &str = "fallback";

/// Why the advisor fell back to every service.
#[derive(Debug, thiserror::Error)]
pub enum AdviceError {
    /// The environment names no `PreviewRepository`.
    #[error("the environment has no spec.repositoryRef")]
    NoRepositoryRef,
    /// The named `PreviewRepository` does not exist.
    #[error("PreviewRepository {0:?} not found")]
    RepositoryNotFound(String),
    /// Reading the `PreviewRepository` failed.
    #[error("reading PreviewRepository {name:?}: {source}")]
    ReadRepository {
        /// Its name.
        name: String,
        /// The error of the catalogue source.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The catalogue does not compile (bad pattern, unknown dependency).
    #[error("invalid service catalogue: {0}")]
    InvalidCatalogue(#[from] ServicesError),
    /// No source control is configured.
    #[error("no source control configured")]
    NoSourceControl,
    /// `spec.repository` is not `owner/name`.
    #[error("spec.repository {0:?} is not owner/name")]
    InvalidRepository(String),
    /// `spec.prNumber` is not a positive number.
    #[error("spec.prNumber {0} is not a pull request number")]
    InvalidPullRequest(u64),
    /// A source-control call failed.
    #[error("source control failed reading the {what}: {source}")]
    SourceControl {
        /// What was being read (`pull request`, `changed files`).
        what: &'static str,
        /// The error.
        #[source]
        source: SourceControlError,
    },
}

impl AdviceError {
    /// Short static category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            AdviceError::NoRepositoryRef => "no_repository_ref",
            AdviceError::RepositoryNotFound(_) => "repository_not_found",
            AdviceError::ReadRepository { .. } => "read_repository",
            AdviceError::InvalidCatalogue(_) => "invalid_catalogue",
            AdviceError::NoSourceControl => "no_source_control",
            AdviceError::InvalidRepository(_) => "invalid_repository",
            AdviceError::InvalidPullRequest(_) => "invalid_pull_request",
            AdviceError::SourceControl { .. } => "source_control",
        }
    }
}

/// What the advisor reads from a repository's settings: its service catalogue and, when
/// known, how the services are built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepositorySettings {
    /// The service catalogue.
    pub catalogue: ServiceCatalogue,
    /// How the catalogue's images are built; `None` when the settings do not say (the
    /// build-definition rules then read compose and skaffold files alone, and env files
    /// and Dockerfiles no definition names are matched by path).
    pub builds: Option<BuildDefinitions>,
}

/// Where the advisor finds an environment's service catalogue.
#[async_trait]
pub trait CatalogueSource: Send + Sync {
    /// The catalogue of the repository settings the environment was rendered from.
    async fn catalogue(&self, env: &EnvironmentView) -> Result<ServiceCatalogue, AdviceError>;

    /// The catalogue and the build definitions of those settings. The default has no
    /// build definitions.
    async fn settings(&self, env: &EnvironmentView) -> Result<RepositorySettings, AdviceError> {
        Ok(RepositorySettings {
            catalogue: self.catalogue(env).await?,
            builds: None,
        })
    }
}

/// A fixed catalogue for every environment (embedders, tests, single-repository setups).
#[derive(Clone, Debug, Default)]
pub struct FixedCatalogue(pub ServiceCatalogue);

#[async_trait]
impl CatalogueSource for FixedCatalogue {
    async fn catalogue(&self, _env: &EnvironmentView) -> Result<ServiceCatalogue, AdviceError> {
        Ok(self.0.clone())
    }
}

/// Reads the `PreviewRepository` named by the environment's `spec.repositoryRef`, in the
/// environment's namespace: from the controller's watch cache when it is given one (the
/// shipped roles grant PreviewRepositories list and watch only), else with a GET.
#[cfg(feature = "kube")]
#[derive(Clone)]
pub struct KubeCatalogues {
    client: kube::Client,
    cache: Option<
        Arc<
            std::sync::OnceLock<
                kube::runtime::reflector::Store<previewd_kube::crd::PreviewRepository>,
            >,
        >,
    >,
}

#[cfg(feature = "kube")]
impl KubeCatalogues {
    /// Reads through `client`.
    pub fn new(client: kube::Client) -> Self {
        KubeCatalogues {
            client,
            cache: None,
        }
    }

    /// Reads from the controller's cache of repositories once it is filled
    /// ([`previewd_kube::controller::Context::repository_store`]), through `client`
    /// until then.
    pub fn cached(
        client: kube::Client,
        cache: Arc<
            std::sync::OnceLock<
                kube::runtime::reflector::Store<previewd_kube::crd::PreviewRepository>,
            >,
        >,
    ) -> Self {
        KubeCatalogues {
            client,
            cache: Some(cache),
        }
    }
}

#[cfg(feature = "kube")]
#[async_trait]
impl CatalogueSource for KubeCatalogues {
    async fn catalogue(&self, env: &EnvironmentView) -> Result<ServiceCatalogue, AdviceError> {
        Ok(self.settings(env).await?.catalogue)
    }

    /// `spec.catalogue` and `spec.buildDefinitions` of the `PreviewRepository`.
    async fn settings(&self, env: &EnvironmentView) -> Result<RepositorySettings, AdviceError> {
        use previewd_kube::crd::PreviewRepository;
        let name = env
            .repository_ref
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or(AdviceError::NoRepositoryRef)?;
        let namespace = if env.namespace.is_empty() {
            "default"
        } else {
            env.namespace.as_str()
        };
        if let Some(store) = self.cache.as_ref().and_then(|c| c.get()) {
            let key = kube::runtime::reflector::ObjectRef::<PreviewRepository>::new(name)
                .within(namespace);
            return match store.get(&key) {
                Some(repo) => Ok(settings_of(repo.spec.clone())),
                None => Err(AdviceError::RepositoryNotFound(name.to_owned())),
            };
        }
        let api: kube::Api<PreviewRepository> =
            kube::Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(repo)) => Ok(settings_of(repo.spec)),
            Ok(None) => Err(AdviceError::RepositoryNotFound(name.to_owned())),
            Err(source) => Err(AdviceError::ReadRepository {
                name: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }
}

/// The advisor's view of a `PreviewRepository`'s spec: its catalogue and its build
/// definitions, normalised ([`crate::builddefs::from_spec`]; what is left out is logged).
#[cfg(feature = "kube")]
pub fn settings_of(spec: previewd_kube::crd::PreviewRepositorySpec) -> RepositorySettings {
    let builds = spec.build_definitions.as_ref().map(|b| {
        let (builds, warnings) = crate::builddefs::from_spec(b);
        for w in warnings {
            tracing::warn!(repository = %spec.repository, "buildDefinitions: {w}; entry ignored");
        }
        builds
    });
    RepositorySettings {
        catalogue: spec.catalogue,
        builds,
    }
}

/// Tunables of the environment advisor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvironmentAdvisorOptions {
    /// Options of the services advisor; `services.allow_forks` (default `false`) lets the
    /// content of fork pull requests reach external providers.
    pub services: ServicesOptions,
    /// Lifespan rule settings.
    pub lifespan: LifespanConfig,
    /// Tier rule settings.
    pub tier: TierPolicy,
}

/// The AI engine's [`EnvironmentAdvisor`] (see the module documentation).
#[derive(Clone)]
pub struct AiEnvironmentAdvisor {
    catalogues: Arc<dyn CatalogueSource>,
    source_control: Option<Arc<dyn SourceControl>>,
    provider: Option<Arc<dyn AiProvider>>,
    history: Option<Arc<dyn HistoryStore>>,
    options: EnvironmentAdvisorOptions,
    /// The response cache of the provider stack, to drop a deleted environment's answers.
    cache: Option<Arc<Cached>>,
    /// The counters of the provider stack, when it was built from configuration.
    metrics: Option<Arc<crate::provider::AiMetrics>>,
}

impl std::fmt::Debug for AiEnvironmentAdvisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiEnvironmentAdvisor")
            .field("source_control", &self.source_control.is_some())
            .field(
                "provider",
                &self.provider.as_ref().map(|p| p.id().to_owned()),
            )
            .field("history", &self.history.is_some())
            .field("options", &self.options)
            .finish()
    }
}

/// What source control said about the pull request.
struct PullRequestChange {
    repo: RepoRef,
    number: u64,
    author: String,
    change: ChangeInput,
    lines_changed: usize,
    /// The changed files as source control listed them (with their patches).
    files: previewd_core::source_control::ChangedFiles,
}

impl AiEnvironmentAdvisor {
    /// An advisor reading catalogues from `catalogues`; without `source_control` every
    /// service is selected, without `provider` only the deterministic rules run.
    pub fn new(
        catalogues: Arc<dyn CatalogueSource>,
        source_control: Option<Arc<dyn SourceControl>>,
        provider: Option<Arc<dyn AiProvider>>,
    ) -> Self {
        AiEnvironmentAdvisor {
            catalogues,
            source_control,
            provider,
            history: None,
            options: EnvironmentAdvisorOptions::default(),
            cache: None,
            metrics: None,
        }
    }

    /// An advisor whose provider stack and fork policy come from `config` (no provider
    /// when AI is disabled).
    pub fn from_config(
        catalogues: Arc<dyn CatalogueSource>,
        source_control: Option<Arc<dyn SourceControl>>,
        config: &AiConfig,
    ) -> Result<Self, ConfigError> {
        let stack = build_stack(config)?;
        let mut options = EnvironmentAdvisorOptions::default();
        options.services.allow_forks = config.allow_external_for_forks;
        let cache = stack.as_ref().map(|s| s.cache.clone());
        let metrics = stack.as_ref().map(|s| s.metrics.clone());
        let provider = stack.map(|s| s.provider);
        let mut advisor = Self::new(catalogues, source_control, provider).with_options(options);
        advisor.cache = cache;
        advisor.metrics = metrics;
        Ok(advisor)
    }

    /// The provider the advisors ask (the full stack when built from configuration), for
    /// other features that must go through the same stack; `None` when AI is off.
    pub fn provider(&self) -> Option<Arc<dyn AiProvider>> {
        self.provider.clone()
    }

    /// The provider stack's counters (built from configuration with AI enabled), for
    /// [`crate::provider::AiMetrics::register`].
    pub fn metrics(&self) -> Option<&Arc<crate::provider::AiMetrics>> {
        self.metrics.as_ref()
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: EnvironmentAdvisorOptions) -> Self {
        self.options = options;
        self
    }

    /// Uses `history` for the lifespan and tier rules (without it they use their defaults).
    pub fn with_history(mut self, history: Arc<dyn HistoryStore>) -> Self {
        self.history = Some(history);
        self
    }

    /// The pull request's metadata and changed files (no diff yet).
    async fn pull_request_change(
        &self,
        env: &EnvironmentView,
    ) -> Result<(Arc<dyn SourceControl>, PullRequestChange), AdviceError> {
        let sc = self
            .source_control
            .clone()
            .ok_or(AdviceError::NoSourceControl)?;
        let repo = RepoRef::parse(&env.repository)
            .ok_or_else(|| AdviceError::InvalidRepository(env.repository.clone()))?;
        let number = Some(env.pr_number)
            .filter(|n| *n > 0)
            .ok_or(AdviceError::InvalidPullRequest(env.pr_number))?;
        let (pr, files) = tokio::join!(
            sc.pull_request(&repo, number),
            sc.changed_files(&repo, number)
        );
        let pr = pr.map_err(|source| AdviceError::SourceControl {
            what: "pull request",
            source,
        })?;
        let files = files.map_err(|source| AdviceError::SourceControl {
            what: "changed files",
            source,
        })?;
        let lines_changed = files
            .files
            .iter()
            .map(|f| f.additions.saturating_add(f.deletions))
            .fold(0u64, u64::saturating_add);
        let change = ChangeInput {
            files: files.paths().into_iter().map(str::to_owned).collect(),
            file_list_incomplete: files.incomplete,
            diff: None,
            title: Some(pr.title.clone()),
            is_fork: pr.is_fork(),
        };
        Ok((
            sc,
            PullRequestChange {
                repo,
                number,
                author: pr.author,
                change,
                lines_changed: usize::try_from(lines_changed).unwrap_or(usize::MAX),
                files,
            },
        ))
    }

    fn advisors(
        &self,
        catalogue: &ServiceCatalogue,
        builds: Option<&BuildDefinitions>,
    ) -> Result<Advisors, ServicesError> {
        let mut compiled = CompiledCatalogue::new(catalogue)?;
        if let Some(builds) = builds {
            compiled = compiled.with_build_definitions(builds.clone());
        }
        let services = ServicesAdvisor::from_compiled(Arc::new(compiled), self.provider.clone())
            .with_options(self.options.services.clone());
        Ok(Advisors {
            services,
            tests: None,
            lifespan: self.options.lifespan.clone(),
            tier: self.options.tier.clone(),
            history: self.history.clone(),
        })
    }

    /// Whether the model will be asked about `change` (so the diff is worth fetching).
    fn model_will_be_asked(&self, services: &ServicesAdvisor, change: &ChangeInput) -> bool {
        let Some(provider) = &self.provider else {
            return false;
        };
        if crate::scrub::may_send(
            &provider.capabilities(),
            change.is_fork,
            self.options.services.allow_forks,
        )
        .is_err()
        {
            return false;
        }
        let base = services.deterministic(change);
        base.all_services_reason.is_none()
            && !base.unmapped_files.is_empty()
            && services
                .catalogue()
                .names()
                .any(|n| !base.services.contains(n))
    }

    /// Advice for `env` given its repository's catalogue (source control and the model
    /// are consulted; the `PreviewRepository` is not read).
    pub async fn advise_with_catalogue(
        &self,
        env: &EnvironmentView,
        catalogue: &ServiceCatalogue,
    ) -> Advice {
        self.advise_with_builds(env, catalogue, None).await
    }

    /// Advice for `env` given its repository's catalogue and build definitions (source
    /// control and the model are consulted; the `PreviewRepository` is not read).
    pub async fn advise_with_builds(
        &self,
        env: &EnvironmentView,
        catalogue: &ServiceCatalogue,
        builds: Option<&BuildDefinitions>,
    ) -> Advice {
        let now = Timestamp::now();
        let advisors = match self.advisors(catalogue, builds) {
            Ok(a) => a,
            Err(e) => return self.fallback(env, None, &AdviceError::InvalidCatalogue(e), now),
        };
        let (sc, mut pr) = match self.pull_request_change(env).await {
            Ok(found) => found,
            Err(e) => return self.fallback(env, Some(catalogue), &e, now),
        };
        if self.model_will_be_asked(&advisors.services, &pr.change) {
            match sc.diff(&pr.repo, pr.number).await {
                Ok(diff) => pr.change.diff = Some(diff.to_text()),
                Err(e) => {
                    tracing::info!(error = %e, category = e.category(), "diff unavailable; the model sees the file list only");
                }
            }
        }
        // A changed build definition (compose, skaffold, .env, Dockerfile, .dockerignore)
        // is read from its patch: the changed files already carry them, so no further
        // request. Files without a patch fall back to path matching, with a note.
        if pr.change.diff.is_none() && advisors.services.catalogue().needs_diff(&pr.change) {
            pr.change.diff = Some(
                previewd_core::source_control::PullRequestDiff::Files(pr.files.clone()).to_text(),
            );
        }
        let mut advisors = advisors;
        let mut tests = None;
        if let Some(request) = &env.test_selection {
            match self.test_selector(request) {
                Err(status) => tests = Some(*status),
                Ok(_) if pr.change.file_list_incomplete => {
                    tests = Some(TestSelectionStatus::every_test(
                        &request.selector,
                        TESTS_FALLBACK,
                        "the list of changed files is incomplete; running every test",
                    ));
                }
                Ok(selector) => advisors.tests = Some(Arc::new(selector)),
            }
        }
        let inventory = env
            .test_selection
            .as_ref()
            .map(|r| r.spec.inventory.clone())
            .unwrap_or_default();
        let changed = pr.change.files.len();
        let facts = PullRequestFacts {
            repo: pr.repo.full_name(),
            pr: pr.number,
            author: pr.author,
            change: pr.change,
            lines_changed: pr.lines_changed,
            test_inventory: inventory,
        };
        let advice = advisors.advise(&facts, now).await;
        if let (Some(request), Some(decision)) = (&env.test_selection, &advice.tests) {
            tests = Some(selection_status(
                &request.selector,
                decision,
                changed,
                facts.test_inventory.len(),
            ));
        }
        let affected = &advice.services.value.services;
        let (source, mut reason) = match &advice.services.source {
            DecisionSource::Deterministic => (SOURCE_DETERMINISTIC, None),
            DecisionSource::Model { .. } => (SOURCE_MODEL, None),
            DecisionSource::Fallback { reason, detail } => (
                SOURCE_FALLBACK,
                Some(format!("model not used ({reason}): {detail}")),
            ),
        };
        if let Some(all) = &advice.services.value.all_services_reason {
            reason = Some(join_reason(reason, all));
        }
        if affected.is_empty() {
            reason = Some(join_reason(
                reason,
                "no service is affected by the change; deploying every service",
            ));
        }
        if !advice.services.value.notes.is_empty() {
            reason = Some(join_reason(reason, &advice.services.value.notes.join("; ")));
        }
        if let Some(e) = &advice.history_error {
            reason = Some(join_reason(reason, &format!("history unavailable ({e})")));
        }
        if advice.tier.value.bumped {
            // Recorded usage raised the tier: say why, next to the other reasons.
            reason = Some(join_reason(
                reason,
                &format!(
                    "tier {}: {}",
                    advice.tier.value.tier.as_str(),
                    advice.tier.value.explanation
                ),
            ));
        }
        Advice {
            services: selected_services(env, catalogue, affected),
            status: AiStatus {
                services_detected: affected.iter().cloned().collect(),
                confidence: Some(format_confidence(advice.services.value.confidence)),
                source: Some(source.to_owned()),
                reason,
                predicted_ttl: Some(advice.lifespan.value.ttl),
                recommended_tier: Some(advice.tier.value.tier),
            },
            tests,
        }
    }

    /// The test selector for `request`, or (selector `all`, no inventory, settings that
    /// do not compile) the selection to record instead.
    fn test_selector(
        &self,
        request: &TestSelectionRequest,
    ) -> Result<TestSelector, Box<TestSelectionStatus>> {
        let strategy = match request.selector.as_str() {
            "changed-files" => TestStrategy::ChangedFiles,
            "ai-smart" => TestStrategy::AiSmart,
            _ => {
                return Err(Box::new(TestSelectionStatus::every_test(
                    &request.selector,
                    TESTS_DETERMINISTIC,
                    "selector all: every test",
                )));
            }
        };
        if request.spec.inventory.is_empty() {
            return Err(Box::new(TestSelectionStatus::every_test(
                &request.selector,
                TESTS_FALLBACK,
                "no test inventory (spec.tests.selection.inventory); running every test",
            )));
        }
        let config = TestSelectionConfig {
            strategy,
            rules: request.spec.rules.clone(),
            smoke: request.spec.smoke.clone(),
            budget: request
                .spec
                .budget
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(0),
        };
        TestSelector::new(config, self.provider.clone())
            .map(|s| s.allow_forks(self.options.services.allow_forks))
            .map_err(|e| {
                Box::new(TestSelectionStatus::every_test(
                    &request.selector,
                    TESTS_FALLBACK,
                    format!("invalid test selection settings: {e}; running every test"),
                ))
            })
    }

    /// Every service, with the reason. The lifespan rule still answers (without history:
    /// the size of the change is unknown too); when the catalogue is known every service
    /// counts as detected with confidence [`CONFIDENCE_ASSUMED_ALL`] and the tier rule
    /// answers for all of them.
    fn fallback(
        &self,
        env: &EnvironmentView,
        catalogue: Option<&ServiceCatalogue>,
        error: &AdviceError,
        now: Timestamp,
    ) -> Advice {
        tracing::info!(
            environment = %env.key(),
            category = error.category(),
            error = %error,
            "advising every service"
        );
        let prediction = predict_ttl(
            &self.options.lifespan,
            &PrSize::default(),
            &HistoryStats::default(),
            &HistoryStats::default(),
            now,
        );
        let (detected, confidence, tier) = match catalogue {
            Some(catalogue) => {
                let all: BTreeSet<String> = catalogue.names().map(str::to_owned).collect();
                let tier = advise_tier(catalogue, &all, &[], &self.options.tier);
                (
                    all.into_iter().collect(),
                    Some(format_confidence(CONFIDENCE_ASSUMED_ALL)),
                    Some(tier.value.tier),
                )
            }
            None => (Vec::new(), None, None),
        };
        let tests = env
            .test_selection
            .as_ref()
            .map(|request| match self.test_selector(request) {
                Err(status) => *status,
                Ok(_) => TestSelectionStatus::every_test(
                    &request.selector,
                    TESTS_FALLBACK,
                    format!("{error}; running every test"),
                ),
            });
        Advice {
            services: every_service(env),
            status: AiStatus {
                services_detected: detected,
                confidence,
                source: Some(SOURCE_FALLBACK.to_owned()),
                reason: Some(format!("{error}; deploying every service")),
                predicted_ttl: Some(prediction.ttl),
                recommended_tier: tier,
            },
            tests,
        }
    }
}

#[async_trait]
impl EnvironmentAdvisor for AiEnvironmentAdvisor {
    async fn advise(&self, env: &EnvironmentView) -> Advice {
        // Model answers are tagged with the environment so its deletion drops them.
        for_environment(environment_key(env), async {
            match self.catalogues.settings(env).await {
                Ok(settings) => {
                    self.advise_with_builds(env, &settings.catalogue, settings.builds.as_ref())
                        .await
                }
                Err(e) => self.fallback(env, None, &e, Timestamp::now()),
            }
        })
        .await
    }

    async fn environment_deleted(&self, env: &EnvironmentView) {
        if let Some(cache) = &self.cache {
            let dropped = cache.invalidate_environment(&environment_key(env)).await;
            tracing::debug!(env = %environment_key(env), dropped, "dropped cached model answers");
        }
    }
}

/// Cache tag of an environment: `namespace/name`.
fn environment_key(env: &EnvironmentView) -> String {
    env.key()
}

/// Every service of the environment, sorted; `None` when it lists none.
fn every_service(env: &EnvironmentView) -> Option<Vec<String>> {
    let all: BTreeSet<String> = env.services.iter().cloned().collect();
    (!all.is_empty()).then(|| all.into_iter().collect())
}

/// The services to deploy (see the module documentation), sorted; `None` when the
/// environment lists no service.
pub fn selected_services(
    env: &EnvironmentView,
    catalogue: &ServiceCatalogue,
    affected: &BTreeSet<String>,
) -> Option<Vec<String>> {
    if affected.is_empty() {
        return every_service(env);
    }
    let selected: BTreeSet<String> = env
        .services
        .iter()
        .map(String::as_str)
        .filter(|name| match catalogue.get(name) {
            Some(service) => service.always_deploy || affected.contains(*name),
            None => true,
        })
        .map(str::to_owned)
        .collect();
    if selected.is_empty() {
        every_service(env)
    } else {
        Some(selected.into_iter().collect())
    }
}

/// The selection to record for the advisor's answer: the selected tests with a reason
/// that counts them by why they were chosen, and the model's error when it fell back.
pub fn selection_status(
    selector: &str,
    decision: &Decision<TestSelection>,
    changed_files: usize,
    inventory: usize,
) -> TestSelectionStatus {
    let selection = &decision.value;
    let strategy = match selection.strategy {
        TestStrategy::All => "all",
        TestStrategy::ChangedFiles => "changed-files",
        TestStrategy::AiSmart => "ai-smart",
    };
    let with = |kind: &dyn Fn(&str) -> bool| {
        selection
            .reasons
            .values()
            .filter(|r| r.iter().any(|x| kind(x)))
            .count()
    };
    let mut parts = vec![format!(
        "{} of {inventory} tests for {changed_files} changed files",
        selection.tests.len()
    )];
    for (label, n) in [
        ("by mapping rules", with(&|r| r.starts_with("rule:"))),
        ("smoke", with(&|r| r == "smoke")),
        ("changed test files", with(&|r| r == "changed")),
        ("ranked by the model", with(&|r| r == "model")),
    ] {
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    if selection.dropped > 0 {
        parts.push(format!("{} dropped by the budget", selection.dropped));
    }
    let mut reason = parts.join(", ");
    let source = match &decision.source {
        DecisionSource::Deterministic => TESTS_DETERMINISTIC,
        DecisionSource::Model { .. } => TESTS_MODEL,
        DecisionSource::Fallback {
            reason: why,
            detail,
        } => {
            reason = format!("{reason}; model not used ({why}): {detail}");
            TESTS_FALLBACK
        }
    };
    TestSelectionStatus::subset(
        selector,
        strategy,
        source,
        reason,
        selection.tests.iter().cloned(),
    )
}

/// A confidence as a decimal string with two places, clamped to `0..1`.
pub fn format_confidence(confidence: f64) -> String {
    let c = if confidence.is_finite() {
        confidence.clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!("{c:.2}")
}

fn join_reason(reason: Option<String>, more: &str) -> String {
    match reason {
        Some(r) => format!("{r}; {more}"),
        None => more.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use previewd_core::catalogue::CatalogueService;

    fn env(services: &[&str]) -> EnvironmentView {
        EnvironmentView {
            namespace: "ns".into(),
            name: "e".into(),
            repository: "acme/shop".into(),
            pr_number: 1,
            branch: "b".into(),
            head_sha: "0123456789abcdef".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            ..EnvironmentView::default()
        }
    }

    fn catalogue() -> ServiceCatalogue {
        let svc = |name: &str, always: bool| CatalogueService {
            name: name.to_owned(),
            image: "img".to_owned(),
            always_deploy: always,
            ..CatalogueService::default()
        };
        ServiceCatalogue {
            services: vec![svc("api", false), svc("db", true), svc("web", false)],
            shared_paths: Vec::new(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selection_adds_always_deploy_and_unknown_services() {
        let e = env(&["web", "api", "db", "extra"]);
        assert_eq!(
            selected_services(&e, &catalogue(), &set(&["api"])),
            Some(vec!["api".into(), "db".into(), "extra".into()])
        );
    }

    #[test]
    fn nothing_affected_selects_every_service() {
        let e = env(&["web", "api", "db"]);
        assert_eq!(
            selected_services(&e, &catalogue(), &BTreeSet::new()),
            Some(vec!["api".into(), "db".into(), "web".into()])
        );
    }

    #[test]
    fn selection_stays_within_the_environment() {
        // `api` is affected but the environment does not list it: never selected; the
        // selection is never empty.
        let e = env(&["web"]);
        assert_eq!(
            selected_services(&e, &catalogue(), &set(&["api"])),
            Some(vec!["web".into()])
        );
        assert_eq!(
            selected_services(&env(&[]), &catalogue(), &set(&["api"])),
            None
        );
    }

    #[test]
    fn confidence_is_a_clamped_decimal() {
        assert_eq!(format_confidence(1.0), "1.00");
        assert_eq!(format_confidence(0.7), "0.70");
        assert_eq!(format_confidence(1.5), "1.00");
        assert_eq!(format_confidence(f64::NAN), "0.00");
    }
}
