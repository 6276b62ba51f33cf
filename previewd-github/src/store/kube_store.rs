//! [`EnvironmentStore`] on the Kubernetes API: server-side apply with field manager
//! `previewd` (forced), resourceVersion preconditions, settings looked up by listing
//! `PreviewRepository` objects (or, with [`KubeStore::with_watch_cache`], from a watch
//! of them); claim conditions and tombstones are merge patches of the
//! `PreviewRepository` status subresource.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, watcher};

use async_trait::async_trait;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use previewd_core::checks::RecordedChecks;
use previewd_kube::controller::caches::{Packed, convert_event};
use previewd_kube::crd::{
    ANNOTATION_CHECKS, COMMAND_FIELD_MANAGER, CONDITION_CLAIMED, ClosedPullRequest, FIELD_MANAGER,
    PreviewEnvironment, PreviewRepository,
};
use serde_json::json;

use super::coalesce::Coalescer;
use super::{EnvironmentStore, Precondition, StoreError};
use crate::claims::ClaimVerdict;

/// Kubernetes-backed store.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    settings_namespace: Option<String>,
    tombstones: Arc<Coalescer>,
    cache: Option<RepositoryCache>,
}

/// Watches of the `PreviewRepository` objects the store reads settings from and of the
/// `PreviewEnvironment`s it writes, and what the store wrote that they may not show yet.
#[derive(Clone)]
struct RepositoryCache {
    store: Store<PreviewRepository>,
    /// Set once the first list is in, dropped while the watch fails.
    synced: Arc<AtomicBool>,
    /// Environments without status, packed: the webhook reads one at a time.
    environments: Store<Packed<PreviewEnvironment>>,
    environments_synced: Arc<AtomicBool>,
    /// Environments this store applied or deleted, with the resourceVersion of its
    /// write, until the watch shows that version or a later one.
    written: Arc<std::sync::Mutex<HashMap<ObjectKey, Written>>>,
    /// Tombstones this store recorded, by repository, until the watch shows them.
    tombstones: Arc<std::sync::Mutex<HashMap<ObjectKey, BTreeMap<String, ClosedPullRequest>>>>,
}

/// `(namespace, name)`.
type ObjectKey = (String, String);

/// The resourceVersion of a write and the object after it (`None`: gone).
type Written = (u64, Option<PreviewEnvironment>);

fn version(rv: Option<&str>) -> u64 {
    rv.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Runs a watch into a reflector store, each object as `convert` keeps it, keeping
/// `synced` set while it works.
fn reflect<K, C>(
    api: Api<K>,
    mut writer: kube::runtime::reflector::store::Writer<C>,
    synced: Arc<AtomicBool>,
    convert: fn(K) -> C,
    seen: impl Fn(&watcher::Event<C>) + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    C: kube::runtime::reflector::Lookup + Clone + Send + Sync + 'static,
    C::DynamicType: Default + Clone + Eq + std::hash::Hash + Send + Sync,
{
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    let event = convert_event(event, convert);
                    writer.apply_watcher_event(&event);
                    seen(&event);
                    if matches!(event, watcher::Event::InitDone) {
                        synced.store(true, Ordering::SeqCst);
                    }
                }
                Some(Err(err)) => {
                    synced.store(false, Ordering::SeqCst);
                    tracing::warn!(error = %err, "a watch of the webhook's store failed; reading from the API server meanwhile");
                }
                None => return,
            }
        }
    });
}

/// Drops the store's record of its own write to an environment once the watch shows
/// that write or a later version (applied, or deleted), so that the record lives for the
/// moment the watch lags and not until the next delivery for the same pull request
/// (objects a re-list shows count too).
fn forget_what_the_watch_shows(
    written: &std::sync::Mutex<HashMap<ObjectKey, Written>>,
    event: &watcher::Event<Packed<PreviewEnvironment>>,
) {
    let key = |env: &Packed<PreviewEnvironment>| {
        (env.namespace.clone().unwrap_or_default(), env.name.clone())
    };
    let mut written = written.lock().unwrap_or_else(|e| e.into_inner());
    if written.is_empty() {
        return;
    }
    match event {
        watcher::Event::Apply(env)
        | watcher::Event::InitApply(env)
        | watcher::Event::Delete(env) => {
            let shown = version(env.resource_version.as_deref());
            let key = key(env);
            if written.get(&key).is_some_and(|(at, _)| shown >= *at) {
                written.remove(&key);
            }
        }
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("settings_namespace", &self.settings_namespace)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store that looks for `PreviewRepository` settings in `settings_namespace`, or in
    /// every namespace when `None`. Environments are written to the namespace of the
    /// settings they are rendered from.
    pub fn new(client: Client, settings_namespace: Option<String>) -> Self {
        KubeStore {
            client,
            settings_namespace,
            tombstones: Arc::new(Coalescer::default()),
            cache: None,
        }
    }

    /// Reads repository settings and environments from watches instead of asking the
    /// API server on every delivery (until a watch has listed once, and while it fails,
    /// the store asks the API server as before). The watches run until `shutdown`.
    ///
    /// A cache may be a moment behind the API server. A delivery then decides on an
    /// environment a moment old, and its write carries that version's resourceVersion,
    /// so it fails with a conflict if the environment changed meanwhile; the webhook then
    /// reads afresh from the API server ([`EnvironmentStore::read_environment`],
    /// [`EnvironmentStore::read_repository`]) and decides again. What the store writes
    /// itself (environments applied and deleted, tombstones) it answers from its own
    /// record until the watch shows it, so a delivery never decides on a state older than
    /// this process's own last write. Environments are cached without status, which the
    /// webhook never reads.
    pub fn with_watch_cache(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        let (store, writer) = kube::runtime::reflector::store::<PreviewRepository>();
        let synced = Arc::new(AtomicBool::new(false));
        reflect(
            self.repositories(),
            writer,
            synced.clone(),
            |mut repo| {
                repo.metadata.managed_fields = None;
                repo
            },
            |_| {},
            shutdown.clone(),
        );
        let (environments, writer) =
            kube::runtime::reflector::store::<Packed<PreviewEnvironment>>();
        let environments_synced = Arc::new(AtomicBool::new(false));
        let api: Api<PreviewEnvironment> = match &self.settings_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let written: Arc<std::sync::Mutex<HashMap<ObjectKey, Written>>> = Arc::default();
        let shown = written.clone();
        reflect(
            api,
            writer,
            environments_synced.clone(),
            |mut env| {
                env.metadata.managed_fields = None;
                env.status = None;
                Packed::pack(env)
            },
            move |event| forget_what_the_watch_shows(&shown, event),
            shutdown,
        );
        self.cache = Some(RepositoryCache {
            store,
            synced,
            environments,
            environments_synced,
            written,
            tombstones: Arc::default(),
        });
        self
    }

    /// Records `written`, the environment as a write of this store left it, until the
    /// watch shows it: every write, so that the next read's resourceVersion is the
    /// latest and a write based on it does not fail with a conflict.
    fn wrote_environment(&self, namespace: &str, name: &str, mut written: PreviewEnvironment) {
        written.metadata.managed_fields = None;
        written.status = None;
        let at = version(written.metadata.resource_version.as_deref());
        self.wrote(namespace, name, at, Some(written));
    }

    /// Records what this store wrote of `namespace/name`: the object after the write (or
    /// `None`: gone) and the resourceVersion the watch must reach to show it.
    fn wrote(&self, namespace: &str, name: &str, at: u64, object: Option<PreviewEnvironment>) {
        if let Some(cache) = &self.cache {
            cache
                .written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((namespace.to_string(), name.to_string()), (at, object));
        }
    }

    fn repositories(&self) -> Api<PreviewRepository> {
        match &self.settings_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

fn map_error(err: kube::Error) -> StoreError {
    match err {
        kube::Error::Api(status) => match status.code {
            409 => StoreError::Conflict,
            400 | 422 => StoreError::Invalid(status.message.clone()),
            code => {
                StoreError::Unavailable(format!("API server answered {code}: {}", status.message))
            }
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl EnvironmentStore for KubeStore {
    async fn find_repositories(
        &self,
        repository: &str,
    ) -> Result<Vec<PreviewRepository>, StoreError> {
        if let Some(cache) = &self.cache
            && cache.synced.load(Ordering::SeqCst)
        {
            let mut recorded = cache.tombstones.lock().unwrap_or_else(|e| e.into_inner());
            return Ok(cache
                .store
                .state()
                .iter()
                .filter(|r| r.spec.repository.eq_ignore_ascii_case(repository))
                .map(|r| {
                    let mut repo = r.as_ref().clone();
                    let key = (repo.namespace().unwrap_or_default(), repo.name_any());
                    if let Some(mine) = recorded.get_mut(&key) {
                        let status = repo.status.get_or_insert_with(Default::default);
                        // Shown by the watch now: no longer needed.
                        mine.retain(|name, t| status.closed_pull_requests.get(name) != Some(t));
                        for (name, tombstone) in mine.iter() {
                            status
                                .closed_pull_requests
                                .insert(name.clone(), tombstone.clone());
                        }
                    }
                    repo
                })
                .collect());
        }
        let list = self
            .repositories()
            .list(&ListParams::default())
            .await
            .map_err(map_error)?;
        Ok(list
            .items
            .into_iter()
            .filter(|r| r.spec.repository.eq_ignore_ascii_case(repository))
            .collect())
    }

    async fn read_repository(
        &self,
        namespace: &str,
        name: &str,
        _repository: &str,
    ) -> Result<Option<PreviewRepository>, StoreError> {
        let api: Api<PreviewRepository> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(map_error)
    }

    async fn record_claim(&self, verdict: &ClaimVerdict) -> Result<(), StoreError> {
        let api: Api<PreviewRepository> = Api::namespaced(self.client.clone(), &verdict.namespace);
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": CONDITION_CLAIMED,
                    "status": if verdict.claimed { "True" } else { "False" },
                    "reason": verdict.reason,
                    "message": verdict.message,
                    "lastTransitionTime": jiff::Timestamp::now().to_string(),
                }]
            }
        });
        match api
            .patch_status(
                &verdict.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing to record.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(map_error(err)),
        }
    }

    async fn record_tombstone(
        &self,
        settings: &PreviewRepository,
        env_name: &str,
        tombstone: &ClosedPullRequest,
        expired: &[String],
    ) -> Result<(), StoreError> {
        let namespace = settings
            .metadata
            .namespace
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("PreviewRepository has no namespace".into()))?;
        let api: Api<PreviewRepository> = Api::namespaced(self.client.clone(), namespace);
        // A merge patch of map entries: concurrent tombstones of other pull requests
        // never overwrite each other, and those written at once share one patch.
        let mut closed = serde_json::Map::new();
        for name in expired {
            closed.insert(name.clone(), serde_json::Value::Null);
        }
        closed.insert(
            env_name.to_string(),
            serde_json::to_value(tombstone).map_err(|e| StoreError::Invalid(e.to_string()))?,
        );
        let name = settings.name_any();
        let key = format!("{namespace}/{name}");
        self.tombstones
            .submit(&key, closed, |closed| async move {
                let patch = json!({ "status": { "closedPullRequests": closed } });
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(map_error)
            })
            .await?;
        if let Some(cache) = &self.cache {
            cache
                .tombstones
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((namespace.to_string(), settings.name_any()))
                .or_default()
                .insert(env_name.to_string(), tombstone.clone());
        }
        Ok(())
    }

    async fn get_environment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError> {
        let Some(cache) = self
            .cache
            .as_ref()
            .filter(|c| c.environments_synced.load(Ordering::SeqCst))
        else {
            return self.read_environment(namespace, name).await;
        };
        let cached = cache
            .environments
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
            .and_then(|env| env.unpack());
        let key = (namespace.to_string(), name.to_string());
        let mut written = cache.written.lock().unwrap_or_else(|e| e.into_inner());
        match written.get(&key) {
            Some((at, mine)) => {
                let seen = cached
                    .as_ref()
                    .is_some_and(|c| version(c.metadata.resource_version.as_deref()) >= *at);
                if seen || (cached.is_none() && mine.is_none()) {
                    written.remove(&key);
                    Ok(cached)
                } else {
                    Ok(mine.clone())
                }
            }
            None => Ok(cached),
        }
    }

    async fn read_environment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PreviewEnvironment>, StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(map_error)
    }

    async fn apply_environment(
        &self,
        env: &PreviewEnvironment,
        precondition: &Precondition,
    ) -> Result<(), StoreError> {
        let namespace = env
            .metadata
            .namespace
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("environment has no namespace".into()))?;
        let name = env
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("environment has no name".into()))?;
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let mut body = env.clone();
        body.status = None;
        body.metadata.managed_fields = None;
        body.metadata.resource_version = match precondition {
            Precondition::ResourceVersion(rv) => Some(rv.clone()),
            Precondition::Absent => None,
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .map_err(map_error)?;
        self.wrote_environment(namespace, name, applied);
        Ok(())
    }

    async fn apply_command_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: &std::collections::BTreeMap<String, String>,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let body = json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": resource_version,
                "annotations": annotations,
            },
        });
        let params = PatchParams::apply(COMMAND_FIELD_MANAGER).force();
        let written = api
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .map_err(map_error)?;
        self.wrote_environment(namespace, name, written);
        Ok(())
    }

    async fn delete_environment(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
    ) -> Result<bool, StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(outcome) => {
                // Held by its finalizer (being deleted), or gone at once.
                match outcome.left() {
                    Some(mut deleting) => {
                        deleting.metadata.managed_fields = None;
                        deleting.status = None;
                        let at = version(deleting.metadata.resource_version.as_deref());
                        self.wrote(namespace, name, at, Some(deleting));
                    }
                    None => {
                        self.wrote(namespace, name, version(Some(resource_version)) + 1, None);
                    }
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(map_error(err)),
        }
    }

    async fn environments_at(
        &self,
        namespace: &str,
        repository: &str,
        sha: &str,
    ) -> Result<Vec<PreviewEnvironment>, StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await.map_err(map_error)?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| {
                e.spec.repository.eq_ignore_ascii_case(repository) && e.spec.head_sha == sha
            })
            .collect())
    }

    async fn record_checks(
        &self,
        namespace: &str,
        name: &str,
        checks: &RecordedChecks,
        resource_version: &str,
    ) -> Result<(), StoreError> {
        let api: Api<PreviewEnvironment> = Api::namespaced(self.client.clone(), namespace);
        let value =
            serde_json::to_string(checks).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // The resourceVersion makes the merge patch fail with a conflict when another
        // delivery recorded a check meanwhile; the handler reads again and merges.
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": { ANNOTATION_CHECKS: value },
            }
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.wrote_environment(namespace, name, written);
                Ok(())
            }
            // Deleted meanwhile: nothing to record.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(map_error(err)),
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.repositories()
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(map_error)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(name: &str, rv: u64) -> PreviewEnvironment {
        let mut env: PreviewEnvironment = serde_json::from_value(serde_json::json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": name, "namespace": "previews"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "feature",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567"}
        }))
        .unwrap();
        env.metadata.resource_version = Some(rv.to_string());
        env
    }

    fn record(
        map: &std::sync::Mutex<HashMap<ObjectKey, Written>>,
        name: &str,
        at: u64,
        gone: bool,
    ) {
        let object = (!gone).then(|| env(name, at));
        map.lock()
            .unwrap()
            .insert(("previews".into(), name.into()), (at, object));
    }

    fn held(map: &std::sync::Mutex<HashMap<ObjectKey, Written>>) -> Vec<String> {
        let mut names: Vec<String> = map.lock().unwrap().keys().map(|(_, n)| n.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_record_of_a_write_goes_once_the_watch_shows_that_write() {
        let written = std::sync::Mutex::new(HashMap::new());
        record(&written, "shop-7", 10, false);
        record(&written, "shop-8", 20, false);
        record(&written, "shop-9", 30, true);
        // an older version of shop-7 (the watch lags): kept
        forget_what_the_watch_shows(
            &written,
            &watcher::Event::Apply(Packed::pack(env("shop-7", 9))),
        );
        assert_eq!(held(&written), ["shop-7", "shop-8", "shop-9"]);
        // the write itself: gone
        forget_what_the_watch_shows(
            &written,
            &watcher::Event::Apply(Packed::pack(env("shop-7", 10))),
        );
        assert_eq!(held(&written), ["shop-8", "shop-9"]);
        // a later version seen in a re-list
        forget_what_the_watch_shows(
            &written,
            &watcher::Event::InitApply(Packed::pack(env("shop-8", 25))),
        );
        assert_eq!(held(&written), ["shop-9"]);
        // a deletion shown by the watch
        forget_what_the_watch_shows(
            &written,
            &watcher::Event::Delete(Packed::pack(env("shop-9", 31))),
        );
        assert!(held(&written).is_empty());
    }
}
