//! The web view's own watches.
//!
//! - Events about environments: one watch of `events.k8s.io/v1` Events whose `regarding`
//!   object is a `PreviewEnvironment` (in the watched namespace, or everywhere), kept
//!   without what the page does not show. The API server deletes Events after its event
//!   TTL (one hour by default), which bounds the cache.
//! - On a replica that does not run the controller (a standby behind the web view's
//!   Service): environments, Deployments and Pods, as the controller's caches keep them,
//!   until the replica runs the controller itself.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use previewd_kube::PreviewEnvironment;
use previewd_kube::controller::caches::{
    Packed, convert_event, strip_deployment, strip_environment, strip_pod,
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::model::{Source, StandbyCaches};

/// Keeps of an Event what the page shows: what it is about, its type, reason, note,
/// times and count.
pub fn strip_event(e: &mut Event) {
    e.metadata.managed_fields = None;
    e.metadata.annotations = None;
    e.metadata.labels = None;
    e.metadata.owner_references = None;
    e.related = None;
    e.deprecated_source = None;
    e.reporting_instance = None;
    e.action = None;
    if let Some(r) = e.regarding.as_mut() {
        r.field_path = None;
        r.resource_version = None;
    }
}

/// Field selector of the watch: Events about environments only.
pub const EVENT_SELECTOR: &str = "regarding.kind=PreviewEnvironment";

/// Starts the watch (in `namespace`, or every namespace) and returns its cache; the
/// watch runs until `shutdown`.
pub fn watch_events(
    client: Client,
    namespace: Option<&str>,
    shutdown: CancellationToken,
) -> Store<Event> {
    let api: Api<Event> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let config = watcher::Config::default()
        .fields(EVENT_SELECTOR)
        .any_semantic();
    cache(
        api,
        config,
        |mut e| {
            strip_event(&mut e);
            e
        },
        shutdown,
    )
}

/// A cache of `api` filled by a watch with `config`, each object kept as `convert` makes
/// it (stripped, or stripped and packed as the controller's caches keep it); the watch
/// runs until `shutdown`.
fn cache<K, C>(
    api: Api<K>,
    config: watcher::Config,
    convert: fn(K) -> C,
    shutdown: CancellationToken,
) -> Store<C>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
    C: reflector::Lookup + Clone + Send + Sync + 'static,
    C::DynamicType: Default + Clone + Eq + std::hash::Hash + Send + Sync,
{
    let (reader, mut writer) = reflector::store::<C>();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => match next {
                    None => return,
                    Some(Err(e)) => tracing::warn!(kind, error = %e, "web view watch error; retrying with backoff"),
                    Some(Ok(event)) => writer.apply_watcher_event(&convert_event(event, convert)),
                },
            }
        }
    });
    reader
}

/// Which environments the operator reconciles (the standby's watches select the same).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only this namespace's environments (`--namespace`).
    pub namespace: Option<String>,
    /// Only environments matching this selector (`--environment-selector`).
    pub environment_selector: Option<String>,
}

/// How long after start a replica whose controller has not filled its caches starts
/// watches of its own.
pub const STANDBY_AFTER: Duration = Duration::from_secs(5);

/// Gives `source` caches of its own while this replica does not run the controller:
/// they start [`STANDBY_AFTER`] start-up and stop once the controller's caches exist.
pub fn keep_standby_caches(
    client: Client,
    source: Source,
    scope: Scope,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STANDBY_AFTER) => {}
        }
        if source.environments.get().is_some() {
            return;
        }
        tracing::info!("this replica does not run the controller: the web view watches on its own");
        let own = shutdown.child_token();
        let environments = match &scope.namespace {
            Some(ns) => Api::<PreviewEnvironment>::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut env_config = watcher::Config::default().any_semantic();
        if let Some(selector) = &scope.environment_selector {
            env_config = env_config.labels(selector);
        }
        let children = watcher::Config::default()
            .labels(&match &scope.namespace {
                Some(ns) => format!(
                    "{}={},{}={ns}",
                    previewd_kube::crd::LABEL_MANAGED_BY,
                    previewd_kube::crd::MANAGED_BY,
                    previewd_kube::children::LABEL_ENV_NAMESPACE
                ),
                None => format!(
                    "{}={}",
                    previewd_kube::crd::LABEL_MANAGED_BY,
                    previewd_kube::crd::MANAGED_BY
                ),
            })
            .any_semantic();
        let caches = StandbyCaches {
            environments: cache(
                environments,
                env_config,
                |mut e| {
                    strip_environment(&mut e);
                    e
                },
                own.clone(),
            ),
            deployments: cache(
                Api::<Deployment>::all(client.clone()),
                children.clone(),
                |mut d| {
                    strip_deployment(&mut d);
                    Packed::pack(d)
                },
                own.clone(),
            ),
            pods: cache(
                Api::<Pod>::all(client),
                children,
                |mut p| {
                    strip_pod(&mut p);
                    Packed::pack(p)
                },
                own.clone(),
            ),
        };
        let _ = source.standby.set(caches);
        let mut tick = tokio::time::interval(STANDBY_AFTER);
        loop {
            tokio::select! {
                _ = own.cancelled() => return,
                _ = tick.tick() => if source.environments.get().is_some() {
                    tracing::info!("the controller runs here now: the web view reads its caches");
                    own.cancel();
                    return;
                },
            }
        }
    });
}
