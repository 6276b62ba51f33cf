//! The watch caches the planner reads, and the triggers that wake an environment when
//! one of its children changes or disappears.
//!
//! One watch per kind, shared by the cache and the trigger:
//! - Namespaces: metadata only, every namespace (a foreign namespace with a preview's
//!   name must be seen to be avoided);
//! - Deployments and Pods labelled `app.kubernetes.io/managed-by=previewd`, without
//!   managed fields: Deployments keep metadata, status, replicas, selector and of the pod
//!   template only each container's name, image and literal environment (the fields the
//!   drift fingerprint reads, [`crate::plan::object::fingerprint`]); Pods keep only
//!   labels, status and what the cost estimate needs from the spec (container and
//!   init-container requests, the restart policy that marks a sidecar, the pod overhead).
//!   A Pod update wakes its environment only when something the planner reads changed
//!   ([`pod_wakes`]): the scheduler rewriting an unschedulable pod's condition message
//!   every few seconds does not;
//! - PersistentVolumeClaims labelled the same: spec requests and status capacity (cost);
//! - every other kind the planner, the strategy and the stages create: metadata only,
//!   or whole objects where a plug-in judges health from them;
//! - `PreviewRepository`s: metadata and spec (strategies render from them), no status
//!   (the webhook's tombstones); a change of either wakes every environment that
//!   references the repository, a status write wakes none;
//! - Secrets of the secret source namespace labelled `previewd.io/preview-secret=true`
//!   (when one is configured): whole objects (they are copied into previews); a change
//!   wakes every environment whose repository names the Secret.
//!
//! Every applied or deleted object is mapped through its `previewd.io/env` and
//! `previewd.io/env-namespace` labels to its environment, which is reconciled. After a
//! re-list (a watch expired or the connection dropped) every environment whose objects
//! were in the cache before or after is reconciled, since deletions during the gap are
//! not reported one by one.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, Namespace,
    PersistentVolumeClaim, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    ResourceRequirements, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ObjectMeta, PartialObjectMeta};
use kube::core::ApiResource;
use kube::runtime::reflector::{Lookup, ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::children::waker::LABEL_ENDPOINT_SLICE_MANAGED_BY;
use crate::children::{ANNOTATION_APPLIED_HASH, LABEL_ENV_NAMESPACE};
use crate::crd::{LABEL_ENV, LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment, PreviewRepository};
use crate::plan::namespace::ANNOTATION_OWNER_UID;
use crate::strategy::WatchedKind;

/// Caches of one dynamic kind.
#[derive(Clone)]
pub enum KindCache {
    /// What observation reads of each object's metadata ([`ChildMeta`]).
    Metadata(Store<ChildMeta>),
    /// Whole objects.
    Full(Store<DynamicObject>),
}

/// The names of a cache's objects by namespace, kept beside its store by its watch, so
/// that one environment's view reads its own namespace's objects instead of scanning
/// every object of the kind (which made a reconcile cost O(environments)).
#[derive(Clone, Debug, Default)]
pub struct NamespaceIndex(Arc<RwLock<std::collections::HashMap<String, BTreeSet<String>>>>);

impl NamespaceIndex {
    fn insert(&self, namespace: &str, name: &str) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.entry(namespace.to_string())
            .or_default()
            .insert(name.to_string());
    }

    fn remove(&self, namespace: &str, name: &str) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(names) = map.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                map.remove(namespace);
            }
        }
    }

    fn rebuild(&self, objects: impl Iterator<Item = (String, String)>) {
        let mut fresh: std::collections::HashMap<String, BTreeSet<String>> = Default::default();
        for (namespace, name) in objects {
            fresh.entry(namespace).or_default().insert(name);
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Names of the objects in `namespace` (`""`: cluster-scoped ones).
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(namespace)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Namespaces that hold objects.
    pub fn namespaces(&self) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }
}

fn index_key<K: Lookup>(obj: &K) -> (String, String) {
    (
        obj.namespace().map(Cow::into_owned).unwrap_or_default(),
        obj.name().map(Cow::into_owned).unwrap_or_default(),
    )
}

/// The read side of every watch.
#[derive(Clone)]
pub struct Caches {
    /// Every namespace's metadata.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// previewd's Deployments, packed ([`strip_deployment`], [`Packed`]).
    pub deployments: Store<Packed<Deployment>>,
    /// previewd's Pods (labels, status and requests), packed ([`strip_pod`], [`Packed`]).
    pub pods: Store<Packed<Pod>>,
    /// Repository settings.
    pub repositories: Store<PreviewRepository>,
    /// The secret source namespace and its copyable Secrets, when one is configured.
    pub source_secrets: Option<(String, Store<Secret>)>,
    /// previewd's PersistentVolumeClaims (requests and capacity).
    pub pvcs: Store<PersistentVolumeClaim>,
    /// Other child kinds, by `apiVersion/kind`.
    pub kinds: BTreeMap<String, (ApiResource, KindCache)>,
    /// The Deployments' names by namespace.
    pub deployments_index: NamespaceIndex,
    /// The Pods' names by namespace.
    pub pods_index: NamespaceIndex,
    /// The PersistentVolumeClaims' names by namespace.
    pub pvcs_index: NamespaceIndex,
    /// Each other kind's names by namespace, by `apiVersion/kind`.
    pub kind_indexes: BTreeMap<String, NamespaceIndex>,
    /// Optional kinds (`apiVersion/kind`) the cluster does not serve (yet): their caches
    /// are empty and ready, and the kind is looked up again every
    /// [`OPTIONAL_KIND_RECHECK`].
    pub missing: Arc<RwLock<BTreeSet<String>>>,
}

/// How often a watch of an optional kind that is not served looks again.
pub const OPTIONAL_KIND_RECHECK: Duration = Duration::from_secs(30);

enum KindWriter {
    Metadata(Writer<ChildMeta>),
    Full(Writer<DynamicObject>),
}

/// The write side, taken once by [`Caches::start`].
pub struct CacheWriters {
    namespaces: Writer<PartialObjectMeta<Namespace>>,
    deployments: Writer<Packed<Deployment>>,
    pods: Writer<Packed<Pod>>,
    repositories: Writer<PreviewRepository>,
    source_secrets: Option<(String, Writer<Secret>)>,
    pvcs: Writer<PersistentVolumeClaim>,
    kinds: Vec<(ApiResource, bool, KindWriter, NamespaceIndex)>,
    missing: Arc<RwLock<BTreeSet<String>>>,
    deployments_index: NamespaceIndex,
    pods_index: NamespaceIndex,
    pvcs_index: NamespaceIndex,
}

pub use crate::plan::object::kind_key;

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
        let mut indexes = BTreeMap::new();
        let mut writers = Vec::new();
        let missing = Arc::new(RwLock::new(BTreeSet::new()));
        for k in kinds {
            let key = kind_key(&k.resource.api_version, &k.resource.kind);
            let index = NamespaceIndex::default();
            indexes.insert(key.clone(), index.clone());
            if k.full {
                let w: Writer<DynamicObject> = Writer::new(k.resource.clone());
                readers.insert(key, (k.resource.clone(), KindCache::Full(w.as_reader())));
                writers.push((k.resource.clone(), k.optional, KindWriter::Full(w), index));
            } else {
                let w: Writer<ChildMeta> = Writer::default();
                readers.insert(
                    key,
                    (k.resource.clone(), KindCache::Metadata(w.as_reader())),
                );
                writers.push((
                    k.resource.clone(),
                    k.optional,
                    KindWriter::Metadata(w),
                    index,
                ));
            }
        }
        let (deployments_index, pods_index, pvcs_index) = Default::default();
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
                deployments_index: NamespaceIndex::clone(&deployments_index),
                pods_index: NamespaceIndex::clone(&pods_index),
                pvcs_index: NamespaceIndex::clone(&pvcs_index),
                kind_indexes: indexes,
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
                deployments_index,
                pods_index,
                pvcs_index,
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
    /// Wakes every environment that references `repo`, and every environment of the
    /// repository it claims (a new, changed or deleted claim changes who may act for it).
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
            if (env.metadata.namespace.as_deref() == Some(ns)
                && env.spec.repository_ref.as_deref() == Some(name))
                || env
                    .spec
                    .repository
                    .eq_ignore_ascii_case(&repo.spec.repository)
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
        self.send_for(
            labels.get(LABEL_ENV).map(String::as_str),
            labels.get(LABEL_ENV_NAMESPACE).map(String::as_str),
            obj.meta().namespace.as_deref(),
        );
    }

    fn send_for_packed<K>(&self, obj: &Packed<K>) {
        self.send_for(
            obj.env.as_deref(),
            obj.env_namespace.as_deref(),
            obj.namespace.as_deref(),
        );
    }

    fn send_for_child_meta(&self, obj: &ChildMeta) {
        self.send_for(
            obj.env.as_deref(),
            obj.env_namespace.as_deref(),
            obj.namespace.as_deref(),
        );
    }

    /// Wakes the environment `env` in `env_ns` that a child in `obj_ns` is labelled with.
    fn send_for(&self, env: Option<&str>, env_ns: Option<&str>, obj_ns: Option<&str>) {
        let (Some(env), Some(env_ns)) = (env, env_ns) else {
            return;
        };
        if let Some(watched) = &self.watch_namespace
            && watched != env_ns
        {
            return;
        }
        let target = ObjectRef::<PreviewEnvironment>::new(env).within(env_ns);
        if self.inside_a_namespace_being_torn_down(&target, obj_ns) {
            return;
        }
        let _ = self.sender.unbounded_send(target);
    }

    /// Whether `obj_ns` is the preview namespace of an environment that is being
    /// deleted. Its teardown waits for the namespace (and for objects outside it) only,
    /// so the deletions of the namespace's contents, dozens per environment, need not
    /// wake it: closing 1000 pull requests would otherwise cost tens of thousands of
    /// reconciles.
    fn inside_a_namespace_being_torn_down(
        &self,
        target: &ObjectRef<PreviewEnvironment>,
        obj_ns: Option<&str>,
    ) -> bool {
        let (Some(envs), Some(obj_ns)) = (self.environments.get(), obj_ns) else {
            return false;
        };
        envs.get(target).is_some_and(|env| {
            env.metadata.deletion_timestamp.is_some()
                && env.status.as_ref().and_then(|s| s.namespace.as_deref()) == Some(obj_ns)
        })
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
                convert: |mut ns| {
                    strip_namespace(&mut ns);
                    ns
                },
                wakes: always,
                dyntype: (),
            },
            NamespaceIndex::default(),
            shutdown.clone(),
        ));
        tasks.push(spawn_watch(
            "Deployment".into(),
            Api::<Deployment>::all(client.clone()),
            children.clone(),
            self.deployments,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_packed,
                convert: |mut d| {
                    strip_deployment(&mut d);
                    Packed::pack(d)
                },
                wakes: always,
                dyntype: (),
            },
            self.deployments_index.clone(),
            shutdown.clone(),
        ));
        tasks.push(spawn_watch(
            "Pod".into(),
            Api::<Pod>::all(client.clone()),
            children.clone(),
            self.pods,
            triggers.clone(),
            Hooks {
                route: Triggers::send_for_packed,
                convert: |mut p| {
                    strip_pod(&mut p);
                    Packed::pack(p)
                },
                wakes: packed_pod_wakes,
                dyntype: (),
            },
            self.pods_index.clone(),
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
                    convert: |mut secret| {
                        strip_meta(&mut secret);
                        secret
                    },
                    wakes: always,
                    dyntype: (),
                },
                NamespaceIndex::default(),
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
                convert: |mut r| {
                    strip_repository(&mut r);
                    r
                },
                wakes: repository_wakes,
                dyntype: (),
            },
            NamespaceIndex::default(),
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
                convert: |mut c: PersistentVolumeClaim| {
                    c.metadata.managed_fields = None;
                    c.metadata.annotations = None;
                    c
                },
                wakes: always,
                dyntype: (),
            },
            self.pvcs_index.clone(),
            shutdown.clone(),
        ));
        for (resource, optional, writer, index) in self.kinds {
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
                        route: Triggers::send_for_child_meta,
                        convert: |o: PartialObjectMeta<DynamicObject>| ChildMeta::of(&o.metadata),
                        wakes: always,
                        dyntype: (),
                    },
                    index.clone(),
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
                        convert: |mut o: DynamicObject| {
                            o.metadata.managed_fields = None;
                            o
                        },
                        wakes: always,
                        dyntype: resource.clone(),
                    },
                    index.clone(),
                    shutdown.clone(),
                )),
            }
        }
        tasks
    }
}

/// The controller of `PreviewEnvironment`s, as [`kube::runtime::Controller::new`] builds
/// it, except that its store (every environment, held for the life of the process) keeps
/// them without managed fields, which nothing in the operator reads and which grow with
/// every field manager that writes an environment.
pub fn environment_controller(
    api: Api<PreviewEnvironment>,
    config: watcher::Config,
) -> Controller<PreviewEnvironment> {
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = watcher(api, config)
        .modify(strip_environment)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(stream, reader)
}

/// What the environment store drops: managed fields.
pub fn strip_environment(env: &mut PreviewEnvironment) {
    env.metadata.managed_fields = None;
}

/// What the repository cache drops: managed fields and the status. The planner reads a
/// repository's spec and metadata only; its status holds the webhook's tombstones of
/// closed pull requests, which grow with every close.
pub fn strip_repository(r: &mut PreviewRepository) {
    r.metadata.managed_fields = None;
    r.status = None;
}

/// Whether a repository update (both stripped by [`strip_repository`]) should wake its
/// environments: a change of what the planner reads (spec, labels, annotations,
/// deletion). The webhook writes the status on every close (a tombstone); waking every
/// environment of the repository for each of those would make closing N pull requests
/// cost N × N reconciles.
pub fn repository_wakes(old: &PreviewRepository, new: &PreviewRepository) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
        || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
}

/// Keeps of a Pod what readiness, the test runner's outcome, the web view and the cost
/// estimate read: labels and the resource version; of the spec only the containers'
/// names and requests, the init containers' restart policy and the pod overhead; of the
/// status the phase, reason and message, the `PodScheduled` condition's status, reason
/// and message (the only condition anything reads: a Pod's readiness is read from its
/// containers), and each container's name, readiness, restart count and state (without
/// the running state's start time). Addresses, images, container ids, mounts, times,
/// the other conditions, the UID and the last state go: at 1000 environments they were
/// most of the cache.
pub fn strip_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    p.metadata.generate_name = None;
    p.metadata.uid = None;
    p.metadata.creation_timestamp = None;
    p.status = p.status.take().map(|status| PodStatus {
        phase: status.phase,
        reason: status.reason,
        message: status.message,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "PodScheduled")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    ..PodCondition::default()
                })
                .collect()
        }),
        container_statuses: status.container_statuses.map(strip_container_statuses),
        init_container_statuses: status.init_container_statuses.map(strip_container_statuses),
        ..PodStatus::default()
    });
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

fn strip_container_statuses(statuses: Vec<ContainerStatus>) -> Vec<ContainerStatus> {
    statuses
        .into_iter()
        .map(|c| ContainerStatus {
            name: c.name,
            ready: c.ready,
            restart_count: c.restart_count,
            state: c.state.map(|state| ContainerState {
                running: state.running.map(|_| ContainerStateRunning::default()),
                ..state
            }),
            ..ContainerStatus::default()
        })
        .collect()
}

/// Where the cached copy of a Deployment keeps its drift fingerprint
/// ([`crate::plan::object::fingerprint`]), computed when the watch receives it. The
/// annotation exists only in previewd's cache and is never written to the API server;
/// a value sent by the API server under this key is replaced.
pub const ANNOTATION_OBSERVED_FINGERPRINT: &str = "previewd.io/observed-fingerprint";

/// The drift fingerprint of a Deployment stripped by [`strip_deployment`].
pub fn observed_fingerprint(d: &Deployment) -> Option<String> {
    d.annotations()
        .get(ANNOTATION_OBSERVED_FINGERPRINT)
        .cloned()
}

/// Keeps of a Deployment what the planner, the strategies, the stages and the web view
/// read: metadata (labels, annotations with the applied hash, generation, deletion),
/// status and the desired replicas. The drift fingerprint (replicas, container names,
/// images and literal environment) is computed first, from the template cut down to what
/// it reads, and kept as [`ANNOTATION_OBSERVED_FINGERPRINT`]; then the template and the
/// selector go, which nothing else reads. A reconcile thus never serialises a
/// Deployment to compute its fingerprint, and the cache holds no pod template (with S
/// services each container has about S environment variables, and a container is over
/// 2 KB in memory however empty).
pub fn strip_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    d.metadata.owner_references = None;
    if let Some(spec) = d.spec.as_mut() {
        let template = std::mem::take(&mut spec.template);
        spec.template = PodTemplateSpec {
            metadata: None,
            spec: template.spec.map(|pod| PodSpec {
                containers: pod
                    .containers
                    .into_iter()
                    .map(|c| Container {
                        name: c.name,
                        image: c.image,
                        env: c.env,
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
        };
        spec.strategy = None;
    }
    // Fingerprinted once the template is down to what the fingerprint reads, then the
    // environment goes too.
    let fingerprint = serde_json::to_value(&*d)
        .ok()
        .and_then(|v| crate::plan::object::fingerprint("Deployment", &v));
    let annotations = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match fingerprint {
        Some(fp) => annotations.insert(ANNOTATION_OBSERVED_FINGERPRINT.to_string(), fp),
        None => annotations.remove(ANNOTATION_OBSERVED_FINGERPRINT),
    };
    // Nothing reads the cached template or selector once the fingerprint is taken (a
    // container alone is over 2 KB in memory, however empty).
    if let Some(spec) = d.spec.as_mut() {
        spec.template = PodTemplateSpec::default();
        spec.selector = LabelSelector::default();
    }
}

/// [`pod_wakes`] for packed Pods: an update that changes nothing of what is kept but
/// the resource version wakes nothing, without unpacking.
pub fn packed_pod_wakes(old: &Packed<Pod>, new: &Packed<Pod>) -> bool {
    !old.same_content(new)
        && match (old.unpack(), new.unpack()) {
            (Some(old), Some(new)) => pod_wakes(&old, &new),
            _ => true,
        }
}

/// Whether a Pod update (`old` as cached, `new` as received, both stripped by
/// [`strip_pod`]) changes anything the planner reads, so that it should wake the Pod's
/// environment: labels, deletion, the kept spec, the phase, each condition's type,
/// status and reason, and each container's name, readiness, restart count and state
/// (the waiting reason, running, how it terminated). Condition messages, probe and
/// transition times and container ids are left out: the scheduler rewrites an
/// unschedulable Pod's `PodScheduled` message on every attempt, which would wake the
/// environment every few seconds for nothing.
pub fn pod_wakes(old: &Pod, new: &Pod) -> bool {
    pod_signature(old) != pod_signature(new)
}

#[derive(PartialEq)]
struct PodSignature<'a> {
    labels: &'a BTreeMap<String, String>,
    deleting: bool,
    spec: Option<&'a PodSpec>,
    phase: Option<&'a str>,
    conditions: Vec<(&'a str, &'a str, Option<&'a str>)>,
    containers: Vec<ContainerSignature<'a>>,
}

#[derive(PartialEq)]
struct ContainerSignature<'a> {
    name: &'a str,
    ready: bool,
    restarts: i32,
    waiting: Option<Option<&'a str>>,
    running: bool,
    terminated: Option<(i32, Option<&'a str>, Option<&'a str>)>,
}

fn container_signature(c: &ContainerStatus) -> ContainerSignature<'_> {
    let state = c.state.as_ref();
    ContainerSignature {
        name: &c.name,
        ready: c.ready,
        restarts: c.restart_count,
        waiting: state
            .and_then(|s: &ContainerState| s.waiting.as_ref())
            .map(|w| w.reason.as_deref()),
        running: state.is_some_and(|s| s.running.is_some()),
        terminated: state
            .and_then(|s| s.terminated.as_ref())
            .map(|t| (t.exit_code, t.reason.as_deref(), t.message.as_deref())),
    }
}

fn pod_signature(p: &Pod) -> PodSignature<'_> {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let status = p.status.as_ref();
    PodSignature {
        labels: p.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        deleting: p.metadata.deletion_timestamp.is_some(),
        spec: p.spec.as_ref(),
        phase: status.and_then(|s| s.phase.as_deref()),
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
            .collect(),
        containers: status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .map(container_signature)
            .collect(),
    }
}

/// What a watch does with each object it receives (a `K`) before caching it (as a `C`):
/// `convert` strips or projects it; `wakes` says whether an update (cached object, new
/// object, both converted) is worth waking for; `route` wakes the environment it belongs
/// to.
struct Hooks<K, C: Lookup = K> {
    route: fn(&Triggers, &C),
    convert: fn(K) -> C,
    wakes: fn(&C, &C) -> bool,
    dyntype: C::DynamicType,
}

fn always<K>(_: &K, _: &K) -> bool {
    true
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
fn spawn_watch_when<K, C>(
    served: Option<Served>,
    kind: String,
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<C>,
    triggers: Triggers,
    hooks: Hooks<K, C>,
    index: NamespaceIndex,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    C: Lookup + Clone + Send + Sync + 'static,
    C::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let Some(served) = served else {
        return spawn_watch(kind, api, config, writer, triggers, hooks, index, shutdown);
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
        let _ = spawn_watch(kind, api, config, writer, triggers, hooks, index, shutdown).await;
    })
}

fn strip_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// The annotations of a namespace that observation reads.
const NAMESPACE_ANNOTATIONS: [&str; 2] = [ANNOTATION_APPLIED_HASH, ANNOTATION_OWNER_UID];

fn only(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// What the cache keeps of an object watched for its metadata only (Services, Ingresses,
/// network policies, quotas, limit ranges, a strategy's kinds): what observation and
/// routing read, as plain fields. There are S + 5 such objects per environment; kept as
/// API objects each cost about 1.8 KB (an object's metadata with two label maps, a
/// 540-byte node each however few entries, and a cache key carrying the kind's five
/// names), as this about 0.3 KB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (none: cluster-scoped).
    pub namespace: Option<String>,
    /// The environment it belongs to ([`LABEL_ENV`]).
    pub env: Option<String>,
    /// The environment's namespace ([`LABEL_ENV_NAMESPACE`]).
    pub env_namespace: Option<String>,
    /// Who manages it when it is an EndpointSlice
    /// ([`LABEL_ENDPOINT_SLICE_MANAGED_BY`]).
    pub slice_manager: Option<String>,
    /// What previewd applied ([`ANNOTATION_APPLIED_HASH`]).
    pub applied_hash: Option<String>,
    /// The environment's UID it is marked with ([`ANNOTATION_OWNER_UID`]).
    pub owner_uid: Option<String>,
    /// Whether it is being deleted.
    pub deleting: bool,
}

impl ChildMeta {
    /// The fields of `meta` observation and routing read.
    pub fn of(meta: &ObjectMeta) -> ChildMeta {
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        ChildMeta {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            env: label(LABEL_ENV),
            env_namespace: label(LABEL_ENV_NAMESPACE),
            slice_manager: label(LABEL_ENDPOINT_SLICE_MANAGED_BY),
            applied_hash: annotation(ANNOTATION_APPLIED_HASH),
            owner_uid: annotation(ANNOTATION_OWNER_UID),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// The cache's key is the name and namespace alone.
impl Lookup for ChildMeta {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// An object of kind `K` held in a cache as the JSON of its stripped form, beside the
/// few fields the cache's key and the routing of its changes read. Deployments and Pods
/// are cached this way: a `k8s-openapi` Pod or Deployment is over 2 KB in memory before
/// any of its content (every optional field of its spec is inline, and a container
/// alone is 2 KB however empty), and with the maps and strings of what is kept each cost
/// 4 to 6 KB; packed, the same content costs under 1 KB. At 1000 environments of 5
/// services that is about 40 MB. A reader unpacks the few objects of the one namespace
/// it looks at ([`Packed::unpack`]), which costs microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed<K> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// The environment it belongs to ([`LABEL_ENV`]).
    pub env: Option<String>,
    /// The environment's namespace ([`LABEL_ENV_NAMESPACE`]).
    pub env_namespace: Option<String>,
    /// The object without its name, namespace and resource version, as JSON.
    json: Box<[u8]>,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Packed<K>
where
    K: Resource + serde::Serialize + DeserializeOwned,
{
    /// Packs `obj` (as the cache's hook stripped it).
    pub fn pack(mut obj: K) -> Packed<K> {
        let label = |k: &str| obj.labels().get(k).cloned();
        let (env, env_namespace) = (label(LABEL_ENV), label(LABEL_ENV_NAMESPACE));
        let meta = obj.meta_mut();
        let name = meta.name.take().unwrap_or_default();
        let namespace = meta.namespace.take();
        let resource_version = meta.resource_version.take();
        let json = serde_json::to_vec(&obj).unwrap_or_else(|e| {
            // Serialising a Kubernetes object to JSON does not fail; should it ever,
            // the object is kept by its name alone, and unpacks empty or not at all.
            warn!(name, error = %e, "an object could not be packed for the cache");
            b"{}".to_vec()
        });
        Packed {
            name,
            namespace,
            resource_version,
            env,
            env_namespace,
            json: json.into_boxed_slice(),
            kind: std::marker::PhantomData,
        }
    }

    /// The object as it was packed (`None`, logged, should what was packed from a
    /// Kubernetes object not read back as one).
    pub fn unpack(&self) -> Option<K> {
        let mut obj: K = serde_json::from_slice(&self.json)
            .inspect_err(|e| {
                warn!(name = self.name, error = %e, "a cached object could not be unpacked");
            })
            .ok()?;
        let meta = obj.meta_mut();
        meta.name = Some(self.name.clone());
        meta.namespace = self.namespace.clone();
        meta.resource_version = self.resource_version.clone();
        Some(obj)
    }

    /// Whether `other` holds the same content, its resource version aside.
    pub fn same_content(&self, other: &Packed<K>) -> bool {
        self.json == other.json
    }
}

/// The cache's key is the name and namespace alone, as for `K` itself.
impl<K: Resource<DynamicType = ()>> Lookup for Packed<K> {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// Keeps of a namespace what observation reads: its name, labels, deletion, applied hash
/// and owner's UID (every namespace of the cluster is cached).
pub fn strip_namespace(ns: &mut PartialObjectMeta<Namespace>) {
    let meta = ns.meta_mut();
    *meta = ObjectMeta {
        name: meta.name.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        labels: meta.labels.take(),
        annotations: only(meta.annotations.take(), &NAMESPACE_ANNOTATIONS),
        ..ObjectMeta::default()
    };
}

/// `event` with its object converted by `convert`, as a cache keeps it.
pub fn convert_event<K, C>(event: Event<K>, convert: impl Fn(K) -> C) -> Event<C> {
    match event {
        Event::Apply(o) => Event::Apply(convert(o)),
        Event::Delete(o) => Event::Delete(convert(o)),
        Event::InitApply(o) => Event::InitApply(convert(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_watch<K, C>(
    kind: String,
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<C>,
    triggers: Triggers,
    hooks: Hooks<K, C>,
    index: NamespaceIndex,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    C: Lookup + Clone + Send + Sync + 'static,
    C::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let Hooks {
        route,
        convert,
        wakes,
        dyntype,
    } = hooks;
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
            let event = match event {
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
            let event = convert_event(event, convert);
            match &event {
                Event::Apply(o) => {
                    let old = reader.get(&ObjectRef::from_obj_with(o, dyntype.clone()));
                    writer.apply_watcher_event(&event);
                    let (namespace, name) = index_key(o);
                    index.insert(&namespace, &name);
                    if old.is_none_or(|old| wakes(old.as_ref(), o)) {
                        route(&triggers, o);
                    }
                }
                Event::Delete(o) => {
                    writer.apply_watcher_event(&event);
                    let (namespace, name) = index_key(o);
                    index.remove(&namespace, &name);
                    route(&triggers, o);
                }
                Event::InitDone => {
                    let before = reader.state();
                    writer.apply_watcher_event(&event);
                    index.rebuild(reader.state().iter().map(|o| index_key(o.as_ref())));
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
                Event::InitApply(o) => {
                    writer.apply_watcher_event(&event);
                    let (namespace, name) = index_key(o);
                    index.insert(&namespace, &name);
                }
                Event::Init => writer.apply_watcher_event(&event),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::health::{deployment_available, service_problem};
    use crate::plan::object::fingerprint;
    use crate::strategy::manifests::readiness::object_health;
    use serde_json::json;

    /// A Deployment as the API server returns it: a full pod template, managed fields.
    fn live_deployment(available: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {
                "name": "api", "namespace": "preview-acme-shop-7", "generation": 3,
                "labels": {"app.kubernetes.io/managed-by": "previewd", "previewd.io/env": "shop-7",
                           "previewd.io/env-namespace": "previews", "previewd.io/service": "api"},
                "annotations": {"previewd.io/applied-hash": "abc123", "deployment.kubernetes.io/revision": "2"},
                "managedFields": [{"manager": "previewd", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Namespace", "name": "x", "uid": "u"}]
            },
            "spec": {
                "replicas": 2, "revisionHistoryLimit": 2,
                "selector": {"matchLabels": {"previewd.io/service": "api"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {
                    "metadata": {"labels": {"previewd.io/service": "api"},
                                 "annotations": {"previewd.io/head-sha": "0123abcd"}},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": {"runAsNonRoot": true},
                        "containers": [{
                            "name": "api", "image": "ghcr.io/acme/api:0123abcd",
                            "imagePullPolicy": "Always",
                            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                            "env": [{"name": "PREVIEWD_PR", "value": "7"},
                                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}],
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                          "limits": {"memory": "512Mi"}},
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                            "securityContext": {"allowPrivilegeEscalation": false,
                                                "capabilities": {"drop": ["ALL"]}},
                            "terminationMessagePolicy": "FallbackToLogsOnError"
                        }]
                    }
                }
            },
            "status": {
                "observedGeneration": 3, "replicas": 2, "updatedReplicas": available,
                "availableReplicas": available, "readyReplicas": available,
                "conditions": [{"type": "Available", "status": if available == 2 { "True" } else { "False" },
                                "reason": "MinimumReplicasAvailable"},
                               {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
            }
        }))
        .unwrap()
    }

    fn container_of(d: &mut Deployment) -> &mut Container {
        &mut d
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn the_namespace_index_follows_applies_deletions_and_relists() {
        let index = NamespaceIndex::default();
        index.insert("preview-1", "api");
        index.insert("preview-1", "web");
        index.insert("preview-2", "api");
        assert_eq!(index.names("preview-1"), ["api", "web"]);
        index.remove("preview-1", "api");
        assert_eq!(index.names("preview-1"), ["web"]);
        index.remove("preview-1", "web");
        assert!(index.names("preview-1").is_empty());
        assert_eq!(index.namespaces(), ["preview-2"]);
        // A re-list replaces everything: what was deleted during the gap goes.
        index.rebuild([("argocd".to_string(), "app".to_string())].into_iter());
        assert!(index.names("preview-2").is_empty());
        assert_eq!(index.names("argocd"), ["app"]);
    }

    #[test]
    fn a_stripped_deployment_still_tells_the_planner_everything_it_reads() {
        for available in [0, 1, 2] {
            let live = live_deployment(available);
            let mut stripped = live.clone();
            strip_deployment(&mut stripped);

            let full_json = serde_json::to_value(&live).unwrap();
            let stripped_json = serde_json::to_value(&stripped).unwrap();
            // drift detection: replicas, container names, images, literal environment,
            // fingerprinted before the environment variables go
            assert!(observed_fingerprint(&stripped).is_some());
            assert_eq!(
                observed_fingerprint(&stripped),
                fingerprint("Deployment", &full_json)
            );
            // the template and selector, which nothing reads once fingerprinted, go
            assert_eq!(
                stripped.spec.as_ref().unwrap().template,
                PodTemplateSpec::default()
            );
            assert_eq!(
                stripped.spec.as_ref().unwrap().replicas,
                live.spec.as_ref().unwrap().replicas
            );
            // readiness, as the catalogue and the manifests strategies judge it
            assert_eq!(deployment_available(&stripped), deployment_available(&live));
            assert_eq!(
                service_problem("api", Some(&stripped), &[]),
                service_problem("api", Some(&live), &[])
            );
            assert_eq!(
                object_health("Deployment api", "Deployment", &stripped_json),
                object_health("Deployment api", "Deployment", &full_json)
            );
            // what observe reads: labels (ownership), the applied hash, deletion
            assert_eq!(stripped.metadata.labels, live.metadata.labels);
            assert_eq!(
                stripped
                    .annotations()
                    .get(crate::children::ANNOTATION_APPLIED_HASH),
                Some(&"abc123".to_string())
            );
            assert_eq!(stripped.metadata.generation, live.metadata.generation);
            assert_eq!(stripped.status, live.status);
            // and it is much smaller
            let (full, small) = (full_json.to_string().len(), stripped_json.to_string().len());
            assert!(small * 2 < full, "{small} bytes stripped vs {full} whole");
        }
        // a hand edit of the image still shows as drift after stripping
        let mut edited = live_deployment(2);
        container_of(&mut edited).image = Some("evil:latest".into());
        strip_deployment(&mut edited);
        let mut original = live_deployment(2);
        strip_deployment(&mut original);
        assert_ne!(
            observed_fingerprint(&edited),
            observed_fingerprint(&original)
        );
        // so does a hand edit of a literal environment variable
        let mut edited = live_deployment(2);
        container_of(&mut edited).env.as_mut().unwrap()[0].value = Some("8".into());
        strip_deployment(&mut edited);
        assert_ne!(
            observed_fingerprint(&edited),
            observed_fingerprint(&original)
        );
    }

    #[test]
    fn a_fingerprint_annotation_from_the_api_server_is_replaced() {
        let mut forged = live_deployment(2);
        let mut original = forged.clone();
        forged
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANNOTATION_OBSERVED_FINGERPRINT.into(), "forged".into());
        container_of(&mut forged).image = Some("evil:latest".into());
        strip_deployment(&mut forged);
        strip_deployment(&mut original);
        assert_ne!(observed_fingerprint(&forged).as_deref(), Some("forged"));
        assert_ne!(
            observed_fingerprint(&forged),
            observed_fingerprint(&original)
        );
    }

    /// A Pod as the API server returns it, with everything a kubelet reports.
    fn live_pod(state: serde_json::Value, restarts: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "api-5d9f-x2", "generateName": "api-5d9f-",
                         "namespace": "preview-acme-shop-7",
                         "labels": {"previewd.io/service": "api", "pod-template-hash": "5d9f",
                                    "batch.kubernetes.io/job-name": "tests"},
                         "annotations": {"kubectl.kubernetes.io/restartedAt": "x"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "api-5d9f", "uid": "u"}]},
            "spec": {"containers": [{"name": "api", "image": "x",
                                     "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]},
            "status": {
                "phase": "Running", "hostIP": "10.0.0.7", "hostIPs": [{"ip": "10.0.0.7"}],
                "podIP": "10.244.3.9", "podIPs": [{"ip": "10.244.3.9"}], "qosClass": "Burstable",
                "startTime": "2026-11-29T10:00:00Z",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-29T10:00:00Z"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                     "message": "containers with unready status: [api]",
                     "lastProbeTime": null, "lastTransitionTime": "2026-11-29T10:00:00Z"}],
                "containerStatuses": [{
                    "name": "api", "image": "ghcr.io/acme/api:0123abcd",
                    "imageID": "ghcr.io/acme/api@sha256:0123", "containerID": "containerd://abc",
                    "ready": false, "started": false, "restartCount": restarts, "state": state,
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                 "startedAt": "2026-11-29T10:00:00Z",
                                                 "finishedAt": "2026-11-29T10:00:01Z"}},
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets",
                                      "readOnly": true, "recursiveReadOnly": "Disabled"}]
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_stripped_pod_still_tells_the_planner_everything_it_reads() {
        let states = [
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}),
            json!({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}),
            json!({"running": {"startedAt": "2026-11-29T10:00:02Z"}}),
            json!({"terminated": {"exitCode": 3, "reason": "Error", "message": "2 tests failed",
                                  "startedAt": "2026-11-29T10:00:00Z",
                                  "finishedAt": "2026-11-29T10:01:00Z"}}),
        ];
        for state in states {
            for restarts in [0, 4] {
                let live = live_pod(state.clone(), restarts);
                let mut stripped = live.clone();
                strip_pod(&mut stripped);
                // health, as the strategies and the web view judge it
                assert_eq!(
                    crate::plan::health::pod_problem(&[&stripped]),
                    crate::plan::health::pod_problem(&[&live])
                );
                let (l, s) = (
                    live.status.as_ref().unwrap(),
                    stripped.status.as_ref().unwrap(),
                );
                assert_eq!(s.phase, l.phase);
                // of the conditions only the one health reads
                let kept: Vec<&str> = s
                    .conditions
                    .iter()
                    .flatten()
                    .map(|c| c.type_.as_str())
                    .collect();
                assert_eq!(kept, ["PodScheduled"]);
                let (lc, sc) = (
                    &l.container_statuses.as_ref().unwrap()[0],
                    &s.container_statuses.as_ref().unwrap()[0],
                );
                assert_eq!(
                    (&sc.name, sc.ready, sc.restart_count),
                    (&lc.name, lc.ready, lc.restart_count)
                );
                let (ls, ss) = (lc.state.as_ref().unwrap(), sc.state.as_ref().unwrap());
                // the test runner's outcome and the waiting reason, whole
                assert_eq!(ss.terminated, ls.terminated);
                assert_eq!(ss.waiting, ls.waiting);
                assert_eq!(ss.running.is_some(), ls.running.is_some());
                // the cost estimate's requests, the job's and the service's labels
                assert_eq!(
                    stripped.spec.as_ref().unwrap().containers[0].resources,
                    live.spec.as_ref().unwrap().containers[0].resources
                );
                assert_eq!(stripped.metadata.labels, live.metadata.labels);
                // a kubelet's report that changes nothing the planner reads wakes nobody
                assert!(!pod_wakes(&stripped, &stripped.clone()));
                // and it is much smaller
                let (full, small) = (
                    serde_json::to_string(&live).unwrap().len(),
                    serde_json::to_string(&stripped).unwrap().len(),
                );
                assert!(small * 2 < full, "{small} bytes stripped vs {full} whole");
            }
        }
    }

    fn pod(status: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "api-1", "namespace": "preview-acme-shop-7",
                         "labels": {"previewd.io/service": "api"},
                         "managedFields": [{"manager": "kube-scheduler"}]},
            "spec": {"containers": [{"name": "api", "image": "x",
                                     "resources": {"requests": {"cpu": "250m"}}}]},
            "status": status
        }))
        .unwrap();
        strip_pod(&mut p);
        p
    }

    fn unschedulable(message: &str, probed: &str) -> Pod {
        pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": message, "lastProbeTime": probed,
                            "lastTransitionTime": "2026-11-29T10:00:00Z"}]
        }))
    }

    fn running(ready: bool, restarts: i32, started: &str) -> Pod {
        pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": started}],
            "containerStatuses": [{"name": "api", "image": "x", "imageID": "", "ready": ready,
                                   "restartCount": restarts,
                                   "state": {"running": {"startedAt": started}}}]
        }))
    }

    #[test]
    fn packed_objects_unpack_to_what_was_stripped_in_a_fraction_of_the_memory() {
        let mut pod = live_pod(json!({"running": {"startedAt": "2026-11-29T10:00:02Z"}}), 2);
        pod.metadata.labels.as_mut().unwrap().extend([
            (LABEL_ENV.to_string(), "shop-pr-7".to_string()),
            (LABEL_ENV_NAMESPACE.to_string(), "team".to_string()),
        ]);
        pod.metadata.resource_version = Some("4711".into());
        strip_pod(&mut pod);
        let packed = Packed::pack(pod.clone());
        assert_eq!(packed.unpack(), Some(pod.clone()));
        let garbled = Packed::<Pod> {
            json: b"[1, 2".to_vec().into_boxed_slice(),
            ..packed.clone()
        };
        assert_eq!(garbled.unpack(), None);
        // what the key and the routing read, without unpacking
        assert_eq!(packed.name, "api-5d9f-x2");
        assert_eq!(packed.namespace.as_deref(), Some("preview-acme-shop-7"));
        assert_eq!(packed.resource_version.as_deref(), Some("4711"));
        assert_eq!(packed.env.as_deref(), Some("shop-pr-7"));
        assert_eq!(packed.env_namespace.as_deref(), Some("team"));
        assert_eq!(
            ObjectRef::from_obj(&packed),
            ObjectRef::<Packed<Pod>>::new("api-5d9f-x2").within("preview-acme-shop-7")
        );
        // a Pod struct alone is over 2 KB, its one container another 2 KB
        assert!(
            packed.json.len() + std::mem::size_of::<Packed<Pod>>() < std::mem::size_of::<Pod>() / 2,
            "{} bytes packed",
            packed.json.len()
        );

        let mut deployment = live_deployment(1);
        strip_deployment(&mut deployment);
        let packed = Packed::pack(deployment.clone());
        let unpacked = packed.unpack().unwrap();
        assert_eq!(unpacked, deployment);
        assert_eq!(
            observed_fingerprint(&unpacked),
            observed_fingerprint(&deployment)
        );
        assert_eq!(
            deployment_available(&unpacked),
            deployment_available(&deployment)
        );
        assert!(packed.json.len() < std::mem::size_of::<Deployment>());

        // a new resource version alone is no change of content
        let mut again = pod.clone();
        again.metadata.resource_version = Some("4712".into());
        let (old, new) = (Packed::pack(pod), Packed::pack(again));
        assert!(old.same_content(&new));
        assert!(!packed_pod_wakes(&old, &new));
    }

    #[test]
    fn irrelevant_pod_updates_do_not_wake_the_environment() {
        // the scheduler retrying an unschedulable pod: new message, new probe time
        assert!(!pod_wakes(
            &unschedulable(
                "0/20 nodes are available: 20 Insufficient cpu.",
                "2026-11-29T10:00:00Z"
            ),
            &unschedulable(
                "0/60 nodes are available: 60 Insufficient cpu.",
                "2026-11-29T10:00:05Z"
            ),
        ));
        // a container restarted without changing readiness or count: only times moved
        assert!(!pod_wakes(
            &running(true, 0, "2026-11-29T10:00:00Z"),
            &running(true, 0, "2026-11-29T10:00:09Z"),
        ));
        // managed fields and annotations are stripped before the comparison
        let mut annotated = running(true, 0, "2026-11-29T10:00:00Z");
        annotated.metadata.annotations = None;
        assert!(!pod_wakes(
            &running(true, 0, "2026-11-29T10:00:00Z"),
            &annotated
        ));
    }

    #[test]
    fn relevant_pod_updates_wake_the_environment() {
        let pending = unschedulable("0/20 nodes are available", "2026-11-29T10:00:00Z");
        let scheduled = pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "api", "image": "x", "imageID": "", "ready": false,
                                   "restartCount": 0,
                                   "state": {"waiting": {"reason": "ContainerCreating"}}}]
        }));
        let pull_failed = pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "api", "image": "x", "imageID": "", "ready": false,
                                   "restartCount": 0,
                                   "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]
        }));
        let up = running(false, 0, "2026-11-29T10:00:00Z");
        let ready = running(true, 0, "2026-11-29T10:00:00Z");
        let restarted = running(true, 1, "2026-11-29T10:00:00Z");
        let crashed = pod(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "api", "image": "x", "imageID": "", "ready": false,
                                   "restartCount": 1,
                                   "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
        }));
        for (what, old, new) in [
            ("scheduled", &pending, &scheduled),
            ("image pull failed", &scheduled, &pull_failed),
            ("running", &scheduled, &up),
            ("ready", &up, &ready),
            ("restart count", &ready, &restarted),
            ("terminated", &restarted, &crashed),
        ] {
            assert!(pod_wakes(old, new), "{what} must wake the environment");
            assert!(
                packed_pod_wakes(&Packed::pack(old.clone()), &Packed::pack(new.clone())),
                "{what} must wake the environment when packed"
            );
        }
        let mut deleting = ready.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-29T11:00:00Z".parse().unwrap(),
            ));
        assert!(pod_wakes(&ready, &deleting), "deletion must wake");
        let mut relabelled = ready.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("previewd.io/service".into(), "web".into());
        assert!(pod_wakes(&ready, &relabelled), "labels must wake");
    }

    #[test]
    fn only_a_change_the_planner_reads_wakes_a_repository_s_environments() {
        let mut repo: PreviewRepository = serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewRepository",
            "metadata": {"name": "shop", "namespace": "team", "resourceVersion": "1",
                         "managedFields": [{"manager": "previewd-webhook"}]},
            "spec": {"repository": "acme/shop", "catalogue": {"services": []},
                     "baseDomain": "preview.example.com"},
            "status": {"closedPullRequests": {
                "shop-pr-1": {"updatedAt": "2026-11-29T10:00:00Z", "delivery": "d1"}}}
        }))
        .unwrap();
        strip_repository(&mut repo);
        assert_eq!(repo.status, None, "tombstones are not cached");
        assert_eq!(repo.metadata.managed_fields, None);

        // A tombstone written by the webhook: a new resourceVersion, same spec.
        let mut tombstoned = repo.clone();
        tombstoned.metadata.resource_version = Some("2".into());
        assert!(!repository_wakes(&repo, &tombstoned));

        let mut changed = repo.clone();
        changed.spec.base_domain = "preview.example.org".into();
        assert!(repository_wakes(&repo, &changed), "a spec change must wake");
        let mut labelled = repo.clone();
        labelled.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        assert!(repository_wakes(&repo, &labelled), "labels must wake");
        let mut deleting = repo.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-29T11:00:00Z".parse().unwrap(),
            ));
        assert!(repository_wakes(&repo, &deleting), "deletion must wake");
    }

    #[test]
    fn the_contents_of_a_namespace_being_torn_down_wake_nobody() {
        let (sender, mut woken) = futures::channel::mpsc::unbounded();
        let (envs, mut writer) = kube::runtime::reflector::store::<PreviewEnvironment>();
        let environments = Arc::new(OnceLock::new());
        let _ = environments.set(envs);
        let (repositories, _) = kube::runtime::reflector::store::<PreviewRepository>();
        let triggers = Triggers {
            sender,
            watch_namespace: None,
            environments,
            health: super::super::Readiness::default(),
            repositories,
        };
        let env = |deleting: bool| -> PreviewEnvironment {
            let mut env: PreviewEnvironment = serde_json::from_value(json!({
                "apiVersion": "previewd.io/v1alpha1",
                "kind": "PreviewEnvironment",
                "metadata": {"name": "shop-pr-1", "namespace": "team"},
                "spec": {"repository": "acme/shop", "prNumber": 1, "branch": "f",
                         "headSHA": "0123456789abcdef0123456789abcdef01234567"},
                "status": {"namespace": "preview-1-f"}
            }))
            .unwrap();
            if deleting {
                env.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        "2026-11-29T11:00:00Z".parse().unwrap(),
                    ));
            }
            env
        };
        let child = |namespace: Option<&str>| -> PartialObjectMeta<Namespace> {
            let mut meta = PartialObjectMeta::<Namespace>::default();
            meta.metadata.name = Some("x".into());
            meta.metadata.namespace = namespace.map(str::to_string);
            meta.metadata.labels = Some(
                [
                    (LABEL_ENV.to_string(), "shop-pr-1".to_string()),
                    (LABEL_ENV_NAMESPACE.to_string(), "team".to_string()),
                ]
                .into(),
            );
            meta
        };
        let mut count = || {
            let mut n = 0;
            while woken.try_recv().is_ok() {
                n += 1;
            }
            n
        };

        // Live: everything of the environment wakes it.
        writer.apply_watcher_event(&Event::Apply(env(false)));
        triggers.send_for_child(&child(Some("preview-1-f")));
        triggers.send_for_child(&child(None));
        assert_eq!(count(), 2);

        // Being deleted: the namespace itself and objects outside it still wake it (its
        // teardown waits for them), the namespace's contents do not.
        writer.apply_watcher_event(&Event::Apply(env(true)));
        triggers.send_for_child(&child(Some("preview-1-f")));
        assert_eq!(count(), 0);
        triggers.send_for_child(&child(None));
        triggers.send_for_child(&child(Some("argocd")));
        assert_eq!(count(), 2);
    }
}
