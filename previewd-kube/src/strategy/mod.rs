//! Plug-ins of the planner.
//!
//! - A [`DeployStrategy`] says how the application is deployed: which objects it needs in
//!   the environment's namespace and whether they are healthy. The catalogue strategy
//!   ([`CatalogueStrategy`]: a Deployment and a Service per service) is the default;
//!   templated manifests and Argo CD are further strategies; embedders add their own.
//! - A [`Stage`] runs after the application is Ready (test data, tests): it adds objects
//!   (typically a Job) and reports an outcome that moves the environment through
//!   Testing to Complete or Failed.
//!
//! Both are synchronous and never call the API: they render objects and judge what the
//! watch caches hold. The reconciler owns applying, pruning, the finalizer, conditions,
//! requeues and backoff. Every kind a plug-in creates must be listed in its
//! [`WatchedKind`]s, so that the controller watches it (a change or deletion wakes the
//! environment within seconds) and prunes it when it is no longer desired.

mod argocd;
mod catalogue;
pub mod jobs;
pub mod manifests;
pub mod rules;
pub mod seed;
pub mod testrun;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::core::ApiResource;

pub use argocd::{
    ARGOCD_ERROR_CONDITIONS, ARGOCD_RESOURCES_FINALIZER, ArgoCdPlatform, ArgoCdStrategy,
    IN_CLUSTER, PlannedApplication, application_health, application_name, application_resource,
    desired_application, desired_project, planned_applications, project_name, project_resource,
    source_allowed, split_image,
};
pub use catalogue::CatalogueStrategy;
pub use jobs::StageJobSettings;
pub use manifests::ManifestsStrategy;
pub use seed::SeedStage;
pub use testrun::TestRunStage;

use crate::crd::{PreviewEnvironment, PreviewEnvironmentStatus, PreviewRepository};
use crate::plan::PlannerConfig;
use crate::plan::health::Health;
use crate::plan::object::{ChildKey, DesiredObject, ObservedChild};

/// A kind the controller must watch in preview namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedKind {
    /// The resource.
    pub resource: ApiResource,
    /// Keep whole objects (needed to judge health from their status); otherwise only
    /// metadata is cached.
    pub full: bool,
    /// The kind may not be served (a custom resource of another product, e.g. Argo CD's
    /// Application): the controller looks it up at start and every 30 s, watches it only
    /// once it is served, and meanwhile stalls the environments whose strategy needs it
    /// instead of blocking every other one.
    pub optional: bool,
}

impl WatchedKind {
    /// Metadata-only watch of `K`.
    pub fn metadata<K: kube::Resource<DynamicType = ()>>() -> WatchedKind {
        WatchedKind {
            resource: ApiResource::erase::<K>(&()),
            full: false,
            optional: false,
        }
    }

    /// Whole-object watch of `K`.
    pub fn full<K: kube::Resource<DynamicType = ()>>() -> WatchedKind {
        WatchedKind {
            resource: ApiResource::erase::<K>(&()),
            full: true,
            optional: false,
        }
    }
}

/// What a plug-in renders from.
#[derive(Clone, Copy, Debug)]
pub struct RenderInput<'a> {
    /// The environment as deployed (with `serviceSelection: Affected`, only the selected
    /// services).
    pub env: &'a PreviewEnvironment,
    /// The environment's namespace.
    pub namespace: &'a str,
    /// The operator's settings.
    pub config: &'a PlannerConfig,
    /// Whether workloads go to spot capacity.
    pub use_spot: bool,
    /// The environment's public host, when it has an Ingress.
    pub host: Option<&'a str>,
    /// The `PreviewRepository` the environment was rendered from (`spec.repositoryRef`,
    /// same namespace), as the watch cache holds it now; `None` when the environment
    /// names none or it does not exist.
    pub repository: Option<&'a PreviewRepository>,
    /// The time of this reconcile.
    pub now: jiff::Timestamp,
}

/// What the caches hold about the environment's namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceView {
    /// Every child labelled as this environment's, by key.
    pub children: std::collections::BTreeMap<ChildKey, ObservedChild>,
    /// Deployments in the namespace.
    pub deployments: Vec<Arc<Deployment>>,
    /// Pods in the namespace (labels, status and requests only).
    pub pods: Vec<Arc<Pod>>,
    /// PersistentVolumeClaims in the namespace (requests and capacity).
    pub pvcs: Vec<Arc<k8s_openapi::api::core::v1::PersistentVolumeClaim>>,
    /// Whole objects of the kinds watched with `full: true`, by key.
    pub objects: std::collections::BTreeMap<ChildKey, Arc<DynamicObject>>,
}

impl NamespaceView {
    /// The Deployment named `name`.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments
            .iter()
            .map(AsRef::as_ref)
            .find(|d| d.metadata.name.as_deref() == Some(name))
    }
}

/// Name of the strategy used when neither the environment nor its repository names one
/// and the operator sets no other default.
pub const DEFAULT_STRATEGY: &str = "catalogue";

/// The deploy strategies an operator offers, by name, and the one used when an
/// environment names none.
#[derive(Clone)]
pub struct Strategies {
    by_name: BTreeMap<String, Arc<dyn DeployStrategy>>,
    default: String,
}

impl Default for Strategies {
    fn default() -> Self {
        Strategies::new(Arc::new(CatalogueStrategy))
    }
}

impl std::fmt::Debug for Strategies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strategies")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .field("default", &self.default)
            .finish()
    }
}

impl Strategies {
    /// Strategies with `default` as the only one and the default. The catalogue strategy
    /// is always offered as well.
    pub fn new(default: Arc<dyn DeployStrategy>) -> Strategies {
        let mut by_name: BTreeMap<String, Arc<dyn DeployStrategy>> = BTreeMap::new();
        by_name.insert(DEFAULT_STRATEGY.to_string(), Arc::new(CatalogueStrategy));
        let name = default.name().to_string();
        by_name.insert(name.clone(), default);
        Strategies {
            by_name,
            default: name,
        }
    }

    /// Offers `strategy` under its name (replacing one of the same name).
    pub fn register(&mut self, strategy: Arc<dyn DeployStrategy>) {
        self.by_name.insert(strategy.name().to_string(), strategy);
    }

    /// Offers `strategy` and makes it the default.
    pub fn set_default(&mut self, strategy: Arc<dyn DeployStrategy>) {
        self.default = strategy.name().to_string();
        self.register(strategy);
    }

    /// The default strategy's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The strategy named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DeployStrategy>> {
        self.by_name.get(name)
    }

    /// Every strategy offered.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn DeployStrategy>> {
        self.by_name.values()
    }

    /// Names of the strategies offered.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The name of the strategy `env` is deployed with: the environment's, else its
    /// repository's, else the default.
    pub fn name_for<'a>(
        &'a self,
        env: &'a PreviewEnvironment,
        repository: Option<&'a PreviewRepository>,
    ) -> &'a str {
        env.spec
            .strategy
            .as_deref()
            .or_else(|| repository.and_then(|r| r.spec.strategy.as_deref()))
            .unwrap_or(&self.default)
    }
}

/// A deploy strategy could not render the application.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct StrategyError {
    /// CamelCase reason for the `Stalled` condition, e.g. `ManifestRefused`.
    pub reason: String,
    /// What is wrong, for people.
    pub message: String,
}

/// How the application is deployed into the environment's namespace.
pub trait DeployStrategy: Send + Sync {
    /// Short name, e.g. `catalogue`.
    fn name(&self) -> &str;

    /// Kinds this strategy creates.
    fn watched_kinds(&self) -> Vec<WatchedKind>;

    /// The one namespace besides the environment's own this strategy may write to (Argo
    /// CD's, where Applications live), or `None` (the default: only the environment's
    /// namespace). Objects there carry the environment's labels and its UID
    /// (`previewd.io/owner-uid`); only objects with that UID are ever pruned, and they
    /// are deleted, and waited for, before the namespace on teardown.
    fn external_namespace(&self, _input: &RenderInput<'_>) -> Option<String> {
        None
    }

    /// On teardown, objects in the external namespace are deleted in rounds, lowest
    /// rank first, each round once the one before is gone (Argo CD's AppProject after
    /// its Applications). Default 0 for every object.
    fn external_teardown_rank(&self, _key: &ChildKey) -> u8 {
        0
    }

    /// The objects the application needs. An error stalls the environment with its
    /// reason and writes nothing.
    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError>;

    /// Judges the application from the caches. `applying` holds the keys this reconcile
    /// is about to (re)apply: their live state is stale and they are not ready yet.
    fn health(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        applying: &BTreeSet<ChildKey>,
    ) -> Health;

    /// Whether an object this strategy rendered is ready, so that the objects of later
    /// waves ([`DesiredObject::wave`]) may be applied. The planner asks only about
    /// objects whose live state matches the desired one. Default: it exists.
    fn object_ready(&self, object: &DesiredObject, view: &NamespaceView) -> bool {
        view.children.contains_key(&object.key())
    }
}

/// Outcome of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageOutcome {
    /// Not finished; the message says what it is doing.
    Running(String),
    /// Finished successfully.
    Passed(String),
    /// Finished with a failure; the message says why.
    Failed(String),
}

/// Something that happens after the application is Ready (test data, tests). Stages run
/// in order; each starts when the previous one passed.
pub trait Stage: Send + Sync {
    /// Short name, e.g. `tests`.
    fn name(&self) -> &str;

    /// Kinds this stage creates.
    fn watched_kinds(&self) -> Vec<WatchedKind>;

    /// Whether the stage applies to this environment.
    fn enabled(&self, env: &PreviewEnvironment) -> bool;

    /// Objects the stage needs (e.g. a Job named after the head commit).
    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError>;

    /// Judges the stage from the caches.
    fn outcome(&self, input: &RenderInput<'_>, view: &NamespaceView) -> StageOutcome;

    /// How long the stage may run before the environment fails, counted from the
    /// creation of the oldest of its objects that are watched whole (typically its Job);
    /// `None` for no limit of its own.
    fn timeout(&self, _env: &PreviewEnvironment) -> Option<Duration> {
        None
    }

    /// Records what the stage found in the status (results, its own conditions). Called
    /// on every plan that judged the stage, with the outcome the planner settled on (a
    /// stage past its timeout has failed whatever it reported). Must be deterministic:
    /// an unchanged outcome must record an unchanged status.
    fn record(
        &self,
        _input: &RenderInput<'_>,
        _view: &NamespaceView,
        _outcome: &StageOutcome,
        _status: &mut PreviewEnvironmentStatus,
    ) {
    }
}
