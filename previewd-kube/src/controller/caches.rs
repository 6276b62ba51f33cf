//! The watch caches the planner reads, and the triggers that wake an environment when
//! one of its children changes or disappears.
//!
//! One watch per kind, shared by the cache and the trigger:
//! - Namespaces: metadata only, every namespace (a foreign namespace with a preview's
//!   name must be seen to be avoided);
//! - Deployments and Pods labelled `app.kubernetes.io/managed-by=previewd`: whole objects
//!   (readiness), without managed fields; Pods keep only labels, status and what the
//!   cost estimate needs from the spec (container and init-container requests, the
//!   restart policy that marks a sidecar, the pod overhead);
//! - PersistentVolumeClaims labelled the same: spec requests and status capacity (cost);
//! - every other kind the planner, the strategy and the stages create: metadata only,
//!   or whole objects where a plug-in judges health from them;
//! - `PreviewRepository`s: whole objects (strategies render from them); a change wakes
//!   every environment that references the repository;
//! - Secrets of the secret source namespace labelled `previewd.io/preview-secret=true`
//!   (when one is configured): whole objects (they are copied into previews); a change
//!   wakes every environment whose repository names the Secret.
//!
//! Every applied or deleted object is mapped through its `previewd.io/env` and
//! `previewd.io/env-namespace` labels to its environment, which is reconciled. After a
//! re-list (a watch expired or the connection dropped) every environment whose objects
//! were in the cache before or after is reconciled, since deletions during the gap are
//! not reported one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaim, Pod, PodSpec, ResourceRequirements, Secret,
};
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::children::LABEL_ENV_NAMESPACE;
use crate::crd::{LABEL_ENV, LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment, PreviewRepository};
use crate::strategy::WatchedKind;

/// Caches of one dynamic kind.
#[derive(Clone)]
pub enum KindCache {
    /// Metadata only.
    Metadata(Store<PartialObjectMeta<DynamicObject>>),
    /// Whole objects.
    Full(Store<DynamicObject>),
}

/// The read side of every watch.
#[derive(Clone)]
pub struct Caches {
    /// Every namespace's metadata.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// previewd's Deployments.
    pub deployments: Store<Deployment>,
    /// previewd's Pods (labels, status and requests).
    pub pods: Store<Pod>,
    /// Repository settings.
    pub repositories: Store<PreviewRepository>,
    /// The secret source namespace and its copyable Secrets, when one is configured.
    pub source_secrets: Option<(String, Store<Secret>)>,
    /// previewd's PersistentVolumeClaims (requests and capacity).
    pub pvcs: Store<PersistentVolumeClaim>,
    /// Other child kinds, by `apiVersion/kind`.
    pub kinds: BTreeMap<String, (ApiResource, KindCache)>,
    /// Optional kinds (`apiVersion/kind`) the cluster does not serve (yet): their caches
    /// are empty and ready, and the kind is looked up again every
    /// [`OPTIONAL_KIND_RECHECK`].
    pub missing: Arc<RwLock<BTreeSet<String>>>,
}

/// How often a watch of an optional kind that is not served looks again.
pub const OPTIONAL_KIND_RECHECK: Duration = Duration::from_secs(30);

enum KindWriter {
    Metadata(Writer<PartialObjectMeta<DynamicObject>>),
    Full(Writer<DynamicObject>),
}

/// The write side, taken once by [`Caches::start`].
pub struct CacheWriters {
    namespaces: Writer<PartialObjectMeta<Namespace>>,
    deployments: Writer<Deployment>,
    pods: Writer<Pod>,
    repositories: Writer<PreviewRepository>,
    source_secrets: Option<(String, Writer<Secret>)>,
    pvcs: Writer<PersistentVolumeClaim>,
    kinds: Vec<(ApiResource, bool, KindWriter)>,
    missing: Arc<RwLock<BTreeSet<String>>>,
}

/// Key of a dynamic kind in [`Caches::kinds`].
pub fn kind_key(api_version: &str, kind: &str) -> String {
    format!("{api_version}/{kind}")
}

impl Caches {
    /// Empty caches for the given extra kinds, and their writers.
    pub fn new(kinds: &[WatchedKind], secret_namespace: Option<&str>) -> (Caches, CacheWriters) {
        let namespaces = Writer::default();
        let deployments = Writer::default();
        let pods = Writer::default();
        let repositories = Writer::default();
        let source_secrets: Option<(String, Writer<Secret>)> =
            secret_namespace.map(|ns| (ns.to_string(), Writer::default()));
        let pvcs = Writer::default();
        let mut readers = BTreeMap::new();
        let mut writers = Vec::new();
        let missing = Arc::new(RwLock::new(BTreeSet::new()));
        for k in kinds {
            let key = kind_key(&k.resource.api_version, &k.resource.kind);
            if k.full {
                let w: Writer<DynamicObject> = Writer::new(k.resource.clone());
                readers.insert(key, (k.resource.clone(), KindCache::Full(w.as_reader())));
                writers.push((k.resource.clone(), k.optional, KindWriter::Full(w)));
            } else {
                let w: Writer<PartialObjectMeta<DynamicObject>> = Writer::new(k.resource.clone());
                readers.insert(
                    key,
                    (k.resource.clone(), KindCache::Metadata(w.as_reader())),
                );
                writers.push((k.resource.clone(), k.optional, KindWriter::Metadata(w)));
            }
        }
        (
            Caches {
                namespaces: namespaces.as_reader(),
                deployments: deployments.as_reader(),
                pods: pods.as_reader(),
                repositories: repositories.as_reader(),
                source_secrets: source_secrets
                    .as_ref()
                    .map(|(ns, w)| (ns.clone(), w.as_reader())),
                pvcs: pvcs.as_reader(),
                kinds: readers,
                missing: missing.clone(),
            },
            CacheWriters {
                namespaces,
                deployments,
                pods,
                repositories,
                source_secrets,
                pvcs,
                kinds: writers,
                missing,
            },
        )
    }

    /// True once every cache has completed its first list.
    pub async fn wait_until_ready(&self) -> bool {
        if self.namespaces.wait_until_ready().await.is_err()
            || self.deployments.wait_until_ready().await.is_err()
            || self.pods.wait_until_ready().await.is_err()
            || self.repositories.wait_until_ready().await.is_err()
            || self.pvcs.wait_until_ready().await.is_err()
        {
            return false;
        }
        if let Some((_, secrets)) = &self.source_secrets
            && secrets.wait_until_ready().await.is_err()
        {
            return false;
        }
        for (_, cache) in self.kinds.values() {
            let ok = match cache {
                KindCache::Metadata(s) => s.wait_until_ready().await.is_ok(),
                KindCache::Full(s) => s.wait_until_ready().await.is_ok(),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Objects held in all caches (for the memory figures).
    pub fn len(&self) -> usize {
        self.namespaces.state().len()
            + self.deployments.state().len()
            + self.pods.state().len()
            + self.repositories.state().len()
            + self
                .source_secrets
                .as_ref()
                .map_or(0, |(_, s)| s.state().len())
            + self.pvcs.state().len()
            + self
                .kinds
                .values()
                .map(|(_, c)| match c {
                    KindCache::Metadata(s) => s.state().len(),
                    KindCache::Full(s) => s.state().len(),
                })
                .sum::<usize>()
    }

    /// Optional kinds the cluster does not serve now.
    pub fn missing_kinds(&self) -> BTreeSet<String> {
        self.missing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the caches hold nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where triggers go, and which environments they may name.
#[derive(Clone)]
pub struct Triggers {
    /// Environments to reconcile.
    pub sender: UnboundedSender<ObjectRef<PreviewEnvironment>>,
    /// Only environments in this namespace, when set.
    pub watch_namespace: Option<String>,
    /// The controller's cache of environments, once it exists (repository changes are
    /// routed through it to the environments that reference the repository).
    pub environments: Arc<OnceLock<Store<PreviewEnvironment>>>,
    /// Where watch failures and recoveries are reported.
    pub health: super::Readiness,
    /// The repositories' cache (a source Secret's change wakes the environments of the
    /// repositories that name it).
    pub repositories: Store<PreviewRepository>,
}

impl Triggers {
    /// Wakes every environment that references `repo`.
    fn send_for_repository(&self, repo: &PreviewRepository) {
        let Some(envs) = self.environments.get() else {
            return;
        };
        let (Some(name), Some(ns)) = (
            repo.metadata.name.as_deref(),
            repo.metadata.namespace.as_deref(),
        ) else {
            return;
        };
        for env in envs.state() {
            if env.metadata.namespace.as_deref() == Some(ns)
                && env.spec.repository_ref.as_deref() == Some(name)
            {
                let _ = self
                    .sender
                    .unbounded_send(ObjectRef::from_obj(env.as_ref()));
            }
        }
    }

    /// Wakes every environment whose repository names the source Secret `secret`.
    fn send_for_source_secret(&self, secret: &Secret) {
        let name = secret.name_any();
        for repo in self.repositories.state() {
            if repo.spec.secrets.iter().any(|r| r.name == name) {
                self.send_for_repository(&repo);
            }
        }
    }

    fn send_for_child<K: Resource>(&self, obj: &K) {
        let labels = obj.labels();
        let (Some(env), Some(env_ns)) = (labels.get(LABEL_ENV), labels.get(LABEL_ENV_NAMESPACE))
        else {
            return;
        };
        if let Some(watched) = &self.watch_namespace
            && watched != env_ns
        {
            return;
        }
        let _ = self
            .sender
            .unbounded_send(ObjectRef::<PreviewEnvironment>::new(env).within(env_ns));
    }
}

/// Label selector of the child watches.
fn child_selector(watch_namespace: Option<&str>) -> String {
    match watch_namespace {
        Some(ns) => format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ENV_NAMESPACE}={ns}"),
        None => format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
    }
}

impl CacheWriters {
    /// Starts every watch; each runs until `shutdown`.
    pub fn start(
        self,
        client: &Client,
        triggers: Triggers,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let selector = child_selector(triggers.watch_namespace.as_deref());
        let children = watcher::Config::default().labels(&selector).any_semantic();
        let mut tasks = Vec::new();
        tasks.push(spawn_watch(
            "Namespace".into(),
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            self.namespaces,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_child,
                strip: strip_meta,
            },
            shutdown.clone(),
        ));
        tasks.push(spawn_watch(
            "Deployment".into(),
            Api::<Deployment>::all(client.clone()),
            children.clone(),
            self.deployments,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_child,
                strip: |d: &mut Deployment| d.metadata.managed_fields = None,
            },
            shutdown.clone(),
        ));
        tasks.push(spawn_watch(
            "Pod".into(),
            Api::<Pod>::all(client.clone()),
            children.clone(),
            self.pods,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_child,
                strip: strip_pod,
            },
            shutdown.clone(),
        ));
        if let Some((ns, writer)) = self.source_secrets {
            let selector = format!("{}=true", crate::children::secrets::LABEL_PREVIEW_SECRET);
            tasks.push(spawn_watch(
                "Secret".into(),
                Api::<Secret>::namespaced(client.clone(), &ns),
                watcher::Config::default().labels(&selector).any_semantic(),
                writer,
                triggers.clone(),
                Hooks {
                    route: Triggers::send_for_source_secret,
                    strip: strip_meta,
                },
                shutdown.clone(),
            ));
        }
        let repositories = match triggers.watch_namespace.as_deref() {
            Some(ns) => Api::<PreviewRepository>::namespaced(client.clone(), ns),
            None => Api::<PreviewRepository>::all(client.clone()),
        };
        tasks.push(spawn_watch(
            "PreviewRepository".into(),
            repositories,
            watcher::Config::default().any_semantic(),
            self.repositories,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_repository,
                strip: strip_meta,
            },
            shutdown.clone(),
        ));
        tasks.push(spawn_watch(
            "PersistentVolumeClaim".into(),
            Api::<PersistentVolumeClaim>::all(client.clone()),
            children.clone(),
            self.pvcs,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_child,
                strip: |c: &mut PersistentVolumeClaim| {
                    c.metadata.managed_fields = None;
                    c.metadata.annotations = None;
                },
            },
            shutdown.clone(),
        ));
        for (resource, optional, writer) in self.kinds {
            let served = optional.then(|| Served {
                client: client.clone(),
                resource: resource.clone(),
                missing: self.missing.clone(),
            });
            match writer {
                KindWriter::Metadata(w) => tasks.push(spawn_watch_when(
                    served,
                    resource.kind.clone(),
                    Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &resource),
                    children.clone(),
                    w,
                    triggers.clone(),
                    Hooks {
                        route: Triggers::send_for_child,
                        strip: strip_meta,
                    },
                    shutdown.clone(),
                )),
                KindWriter::Full(w) => tasks.push(spawn_watch_when(
                    served,
                    resource.kind.clone(),
                    Api::<DynamicObject>::all_with(client.clone(), &resource),
                    children.clone(),
                    w,
                    triggers.clone(),
                    Hooks {
                        route: Triggers::send_for_child,
                        strip: |o: &mut DynamicObject| o.metadata.managed_fields = None,
                    },
                    shutdown.clone(),
                )),
            }
        }
        tasks
    }
}

/// Keeps of a Pod what readiness and the cost estimate read: labels, status, and of the
/// spec only the containers' names and requests, the init containers' restart policy,
/// and the pod overhead.
pub fn strip_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    let keep = |c: &Container| Container {
        name: c.name.clone(),
        restart_policy: c.restart_policy.clone(),
        resources: c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .map(|requests| ResourceRequirements {
                requests: Some(requests),
                ..ResourceRequirements::default()
            }),
        ..Container::default()
    };
    p.spec = p.spec.take().map(|spec| PodSpec {
        containers: spec.containers.iter().map(keep).collect(),
        init_containers: spec
            .init_containers
            .map(|inits| inits.iter().map(keep).collect()),
        overhead: spec.overhead,
        ..PodSpec::default()
    });
}

/// What a watch does with each object: whom it wakes, and what it strips before caching.
struct Hooks<K> {
    route: fn(&Triggers, &K),
    strip: fn(&mut K),
}

/// What an optional kind's watch waits for: the kind served by the API server.
struct Served {
    client: Client,
    resource: ApiResource,
    missing: Arc<RwLock<BTreeSet<String>>>,
}

impl Served {
    /// Whether the API server serves the kind now (discovery of its group version); an
    /// error other than 404 counts as not served, and is looked up again.
    async fn now(&self) -> bool {
        match self
            .client
            .list_api_group_resources(&self.resource.api_version)
            .await
        {
            Ok(list) => {
                let served = list
                    .resources
                    .iter()
                    .any(|r| r.kind == self.resource.kind && r.name == self.resource.plural);
                // Served but not readable by this operator (its RBAC leaves the kind
                // out): as good as absent, and a watch would never sync.
                served && self.readable().await
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => false,
            Err(e) => {
                tracing::debug!(kind = %self.resource.kind, error = %e, "could not look the kind up; trying again");
                false
            }
        }
    }

    async fn readable(&self) -> bool {
        let api =
            Api::<PartialObjectMeta<DynamicObject>>::all_with(self.client.clone(), &self.resource);
        let params = kube::api::ListParams::default()
            .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
            .limit(1);
        match api.list_metadata(&params).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(kind = %self.resource.kind, error = %e, "kind served but not listable by the operator");
                false
            }
        }
    }

    fn mark(&self, missing: bool) {
        let key = kind_key(&self.resource.api_version, &self.resource.kind);
        let mut set = self.missing.write().unwrap_or_else(|p| p.into_inner());
        if missing {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

/// [`spawn_watch`], for an optional kind only once the API server serves it: until then
/// the cache is empty and ready (so it never holds up the controller's start) and the
/// kind is listed in [`Caches::missing`].
#[allow(clippy::too_many_arguments)]
fn spawn_watch_when<K>(
    served: Option<Served>,
    kind: String,
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K>,
    triggers: Triggers,
    hooks: Hooks<K>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let Some(served) = served else {
        return spawn_watch(kind, api, config, writer, triggers, hooks, shutdown);
    };
    tokio::spawn(async move {
        let mut first = true;
        while !served.now().await {
            if first {
                warn!(kind, api_version = %served.resource.api_version, "kind not served (or not readable by the operator); environments that need it are stalled until it is");
                served.mark(true);
                writer.apply_watcher_event(&Event::Init);
                writer.apply_watcher_event(&Event::InitDone);
                first = false;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(OPTIONAL_KIND_RECHECK) => {}
            }
        }
        served.mark(false);
        if !first {
            tracing::info!(kind, "kind now served; watching it");
            // Environments stalled for want of the kind go on now.
            if let Some(envs) = triggers.environments.get() {
                for env in envs.state() {
                    let _ = triggers
                        .sender
                        .unbounded_send(ObjectRef::from_obj(env.as_ref()));
                }
            }
        }
        let _ = spawn_watch(kind, api, config, writer, triggers, hooks, shutdown).await;
    })
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

fn spawn_watch<K>(
    kind: String,
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K>,
    triggers: Triggers,
    hooks: Hooks<K>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let Hooks { route, strip } = hooks;
    let reader = writer.as_reader();
    let seen_lists = Arc::new(Mutex::new(0u64));
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => next,
            };
            let Some(event) = next else { return };
            let mut event = match event {
                Ok(event) => {
                    triggers.health.watch_ok(&kind);
                    event
                }
                Err(e) => {
                    triggers.health.watch_failed(&kind);
                    warn!(kind, error = %e, "watch error; retrying with backoff");
                    continue;
                }
            };
            match &mut event {
                Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => strip(o),
                Event::Init | Event::InitDone => {}
            }
            match &event {
                Event::Apply(o) | Event::Delete(o) => {
                    writer.apply_watcher_event(&event);
                    route(&triggers, o);
                }
                Event::InitDone => {
                    let before = reader.state();
                    writer.apply_watcher_event(&event);
                    let mut lists = seen_lists.lock().unwrap_or_else(|p| p.into_inner());
                    *lists += 1;
                    // After a re-list, wake every environment the cache knew before or
                    // knows now: deletions during the gap are not reported one by one.
                    if *lists > 1 {
                        for o in before.iter().chain(reader.state().iter()) {
                            route(&triggers, o.as_ref());
                        }
                    }
                }
                Event::Init | Event::InitApply(_) => writer.apply_watcher_event(&event),
            }
        }
    })
}
