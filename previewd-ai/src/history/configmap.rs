//! The in-cluster history store: one JSON document in a ConfigMap.
//!
//! The document (`data["history.json"]`) is `{"version":1,"records":[...]}` with records
//! newest first. It is bounded: at most `max_records` records and `max_bytes` bytes
//! (default [`CONFIGMAP_MAX_BYTES`], half the 1 MiB object limit); when history outgrows
//! either bound the oldest records are dropped, from the document and from memory.
//!
//! The store keeps the records in memory: the ConfigMap is read once (on first use), and
//! every query is answered from memory afterwards. A change is written only when it
//! changes a record, and a write is skipped when the encoded document is the one last
//! read or written, so repeating what is already recorded costs no request.
//!
//! Writes go out in one of two ways:
//!
//! * write-through (the default, [`ConfigMapHistory::new`]): every changing upsert is
//!   written before it returns;
//! * batched ([`ConfigMapHistory::with_flush_interval`]): upserts change memory only and
//!   a background task writes the document at most once per interval, so a thousand
//!   environments changing at once cost one write per interval, not one per change. A
//!   crash loses what changed since the last successful write (at most one interval);
//!   call [`ConfigMapHistory::flush`] before a planned shutdown.
//!
//! A write is a replace carrying the `resourceVersion` last seen (optimistic
//! concurrency): when another writer got there first the API server answers 409
//! Conflict, the store reads the ConfigMap again, re-applies the records it changed since
//! its last write on top of the other writer's, and retries after a short random pause
//! that grows with each attempt (up to [`MAX_ATTEMPTS`] attempts). A missing ConfigMap is
//! created; a create that loses the race (409 AlreadyExists) is retried the same way. A
//! write that fails keeps its changes pending for the next one.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};

use super::{
    EnvironmentRecord, HistoryError, HistoryStore, select, sort_newest_first, upsert_into,
};

/// Key of the JSON document in the ConfigMap's `data`.
pub const CONFIGMAP_DATA_KEY: &str = "history.json";
/// Default bound on the document size: 512 KiB.
pub const CONFIGMAP_MAX_BYTES: usize = 512 * 1024;
/// Read-modify-write attempts before giving up on conflicts.
pub const MAX_ATTEMPTS: u32 = 12;

const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    records: Vec<EnvironmentRecord>,
}

/// Encodes records (any order) into the bounded document. Returns the JSON text and how
/// many records were dropped to respect `max_records` and `max_bytes`.
pub fn encode_history(
    records: &[EnvironmentRecord],
    max_records: usize,
    max_bytes: usize,
) -> Result<(String, usize), HistoryError> {
    let mut sorted = records.to_vec();
    sort_newest_first(&mut sorted);
    let head = format!("{{\"version\":{FORMAT_VERSION},\"records\":[");
    let tail = "]}";
    let mut out = head.clone();
    let mut kept = 0;
    for rec in sorted.iter().take(max_records) {
        let json = serde_json::to_string(rec).map_err(|e| HistoryError::Encoding(e.to_string()))?;
        let sep = usize::from(kept > 0);
        if out.len() + sep + json.len() + tail.len() > max_bytes {
            break;
        }
        if kept > 0 {
            out.push(',');
        }
        out.push_str(&json);
        kept += 1;
    }
    out.push_str(tail);
    Ok((out, sorted.len() - kept))
}

/// Decodes a document written by [`encode_history`]; records come back newest first.
pub fn decode_history(text: &str) -> Result<Vec<EnvironmentRecord>, HistoryError> {
    let doc: Document =
        serde_json::from_str(text).map_err(|e| HistoryError::Encoding(e.to_string()))?;
    if doc.version != FORMAT_VERSION {
        return Err(HistoryError::Encoding(format!(
            "unsupported history format version {}",
            doc.version
        )));
    }
    let mut records = doc.records;
    sort_newest_first(&mut records);
    Ok(records)
}

/// Key of a record: `(repo, pr, opened_at)`.
type Key = (String, u64, jiff::Timestamp);

fn key(r: &EnvironmentRecord) -> Key {
    (r.repo.clone(), r.pr, r.opened_at)
}

#[derive(Default)]
struct State {
    /// Whether the ConfigMap has been read.
    loaded: bool,
    /// Every record, newest first, at most `max_records`.
    records: Vec<EnvironmentRecord>,
    /// Records changed in memory since the last successful write.
    pending: HashSet<Key>,
    /// `resourceVersion` of the ConfigMap as last read or written; `None`: it does not
    /// exist.
    resource_version: Option<String>,
    /// The document as last read or written.
    last_document: Option<String>,
}

struct Inner {
    api: Api<ConfigMap>,
    name: String,
    max_records: usize,
    max_bytes: usize,
    state: Mutex<State>,
    /// Serialises loads and writes (held across API calls; `state` never is).
    io: tokio::sync::Mutex<()>,
    writes: AtomicU64,
    reads: AtomicU64,
}

/// History in a ConfigMap (see the module documentation).
#[derive(Clone)]
pub struct ConfigMapHistory {
    inner: Arc<Inner>,
    flush_interval: Option<Duration>,
}

impl std::fmt::Debug for ConfigMapHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapHistory")
            .field("name", &self.inner.name)
            .field("max_records", &self.inner.max_records)
            .field("max_bytes", &self.inner.max_bytes)
            .field("flush_interval", &self.flush_interval)
            .finish()
    }
}

impl ConfigMapHistory {
    /// A write-through store in the ConfigMap `name` of the namespace `api` is scoped to.
    pub fn new(api: Api<ConfigMap>, name: &str) -> Self {
        ConfigMapHistory {
            inner: Arc::new(Inner {
                api,
                name: name.to_owned(),
                max_records: 2000,
                max_bytes: CONFIGMAP_MAX_BYTES,
                state: Mutex::new(State::default()),
                io: tokio::sync::Mutex::new(()),
                writes: AtomicU64::new(0),
                reads: AtomicU64::new(0),
            }),
            flush_interval: None,
        }
    }

    /// Changes the bounds (call before first use).
    pub fn with_bounds(self, max_records: usize, max_bytes: usize) -> Self {
        let inner = Inner {
            api: self.inner.api.clone(),
            name: self.inner.name.clone(),
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(64),
            state: Mutex::new(State::default()),
            io: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        };
        let store = ConfigMapHistory {
            inner: Arc::new(inner),
            flush_interval: None,
        };
        match self.flush_interval {
            Some(interval) => store.with_flush_interval(interval),
            None => store,
        }
    }

    /// Batches writes: upserts change memory only, and a background task (spawned here,
    /// so this needs a Tokio runtime) writes pending changes at most once per `interval`.
    /// The task ends when the last clone of the store is dropped.
    pub fn with_flush_interval(mut self, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(10));
        self.flush_interval = Some(interval);
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if let Err(err) = inner.flush().await {
                    tracing::warn!(configmap = %inner.name, error = %err, category = err.category(), "could not write environment history; retrying at the next interval");
                }
            }
        });
        self
    }

    /// Writes pending changes now (a no-op when nothing changed).
    pub async fn flush(&self) -> Result<(), HistoryError> {
        self.inner.flush().await
    }

    /// Records changed in memory and not written yet.
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Writes (creates and replaces) this store has sent to the API server.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Reads of the ConfigMap this store has sent to the API server.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// The records after the first load, answered from memory.
    async fn records<T>(
        &self,
        f: impl FnOnce(&[EnvironmentRecord]) -> T,
    ) -> Result<T, HistoryError> {
        self.inner.ensure_loaded().await?;
        Ok(f(&self.inner.lock().records))
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // a panic while holding the lock leaves consistent data (every change is one
        // assignment or one upsert), so a poisoned lock is used as is
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(
        &self,
    ) -> Result<(Option<String>, Option<String>, Vec<EnvironmentRecord>), HistoryError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let cm = self.api.get_opt(&self.name).await?;
        let rv = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        let text = cm
            .and_then(|c| c.data)
            .and_then(|mut d| d.remove(CONFIGMAP_DATA_KEY));
        let records = match text.as_deref().map(decode_history) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                // History is advisory: a corrupt document is replaced, not fatal.
                tracing::warn!(configmap = %self.name, error = %e, "discarding unreadable history");
                Vec::new()
            }
            None => Vec::new(),
        };
        Ok((rv, text, records))
    }

    /// Replaces memory with the ConfigMap's records, with this store's pending records
    /// applied on top.
    fn merge_remote(
        &self,
        state: &mut State,
        rv: Option<String>,
        text: Option<String>,
        mut remote: Vec<EnvironmentRecord>,
    ) {
        for rec in state
            .records
            .iter()
            .filter(|r| state.pending.contains(&key(r)))
        {
            upsert_into(&mut remote, rec);
        }
        remote.truncate(self.max_records);
        state.records = remote;
        state.resource_version = rv;
        state.last_document = text;
        state.loaded = true;
    }

    async fn ensure_loaded(&self) -> Result<(), HistoryError> {
        if self.lock().loaded {
            return Ok(());
        }
        let _io = self.io.lock().await;
        if self.lock().loaded {
            return Ok(());
        }
        let (rv, text, remote) = self.read().await?;
        let mut state = self.lock();
        self.merge_remote(&mut state, rv, text, remote);
        Ok(())
    }

    async fn upsert(&self, record: &EnvironmentRecord) -> Result<bool, HistoryError> {
        self.ensure_loaded().await?;
        let mut state = self.lock();
        if state.records.iter().any(|r| r == record) {
            return Ok(false);
        }
        upsert_into(&mut state.records, record);
        let max = self.max_records;
        state.records.truncate(max);
        state.pending.insert(key(record));
        Ok(true)
    }

    async fn flush(&self) -> Result<(), HistoryError> {
        let _io = self.io.lock().await;
        if !self.lock().loaded {
            return Ok(());
        }
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // random pause in [0, 20ms·2^attempt), capped at 1s, so racing writers spread out
                let ceiling = (20u64 << attempt.min(6)).min(1000);
                let pause = rand::random::<u64>() % ceiling;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            // what is written now: later upserts stay pending for the next write
            let (records, written, rv, last) = {
                let mut state = self.lock();
                if state.pending.is_empty() {
                    return Ok(());
                }
                (
                    state.records.clone(),
                    std::mem::take(&mut state.pending),
                    state.resource_version.clone(),
                    state.last_document.clone(),
                )
            };
            let (text, dropped) = encode_history(&records, self.max_records, self.max_bytes)?;
            if last.as_deref() == Some(text.as_str()) {
                return Ok(());
            }
            if dropped > 0 {
                tracing::debug!(configmap = %self.name, dropped, "history bounded: oldest records dropped");
            }
            let result = self.write(rv.as_deref(), &text).await;
            match result {
                Ok(new_rv) => {
                    let mut state = self.lock();
                    state.resource_version = new_rv;
                    state.last_document = Some(text);
                    if dropped > 0 {
                        // memory keeps what the document holds: the oldest records go
                        let kept = records.len() - dropped;
                        let cut = match kept.checked_sub(1).and_then(|i| records.get(i)) {
                            Some(oldest_kept) => {
                                let oldest_kept = key(oldest_kept);
                                state
                                    .records
                                    .iter()
                                    .position(|r| key(r) == oldest_kept)
                                    .map(|i| i + 1)
                            }
                            None => Some(0),
                        };
                        if let Some(cut) = cut {
                            state.records.truncate(cut);
                        }
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(status))
                    if status.is_conflict() || status.is_already_exists() =>
                {
                    tracing::debug!(configmap = %self.name, "history write conflicted; merging and retrying");
                    self.lock().pending.extend(written);
                    let (rv, text, remote) = match self.read().await {
                        Ok(r) => r,
                        Err(e) => return Err(e),
                    };
                    let mut state = self.lock();
                    self.merge_remote(&mut state, rv, text, remote);
                }
                Err(e) => {
                    self.lock().pending.extend(written);
                    return Err(e.into());
                }
            }
        }
        Err(HistoryError::Conflict(MAX_ATTEMPTS))
    }

    /// Creates (no `resourceVersion`) or replaces (compare-and-swap on it) the ConfigMap.
    async fn write(&self, rv: Option<&str>, text: &str) -> Result<Option<String>, kube::Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: rv.map(str::to_owned),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "previewd".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                CONFIGMAP_DATA_KEY.to_owned(),
                text.to_owned(),
            )])),
            ..ConfigMap::default()
        };
        let written = match rv {
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &cm)
                    .await?
            }
            None => self.api.create(&PostParams::default(), &cm).await?,
        };
        Ok(written.metadata.resource_version)
    }
}

#[async_trait]
impl HistoryStore for ConfigMapHistory {
    async fn upsert(&self, record: &EnvironmentRecord) -> Result<(), HistoryError> {
        let changed = self.inner.upsert(record).await?;
        if changed && self.flush_interval.is_none() {
            self.inner.flush().await?;
        }
        Ok(())
    }

    async fn latest(&self, repo: &str, pr: u64) -> Result<Option<EnvironmentRecord>, HistoryError> {
        self.records(|records| {
            records
                .iter()
                .find(|r| r.repo == repo && r.pr == pr)
                .cloned()
        })
        .await
    }

    async fn by_repo(
        &self,
        repo: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        self.records(|records| select(records.iter(), |r| r.repo == repo, limit))
            .await
    }

    async fn by_author(
        &self,
        author: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        self.records(|records| select(records.iter(), |r| r.author == author, limit))
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::PeakUsage;
    use jiff::Timestamp;
    use previewd_core::Tier;

    fn rec(pr: u64, opened_secs: i64) -> EnvironmentRecord {
        let mut r = EnvironmentRecord::opened(
            "acme/shop",
            pr,
            "octocat",
            Timestamp::from_second(opened_secs).unwrap(),
            Tier::Medium,
        );
        r.pushes = vec![Timestamp::from_second(opened_secs + 60).unwrap()];
        r.closed_at = Some(Timestamp::from_second(opened_secs + 3600).unwrap());
        r.peak_usage = Some(PeakUsage {
            cpu_millicores: 300,
            memory_bytes: 400 << 20,
            hit_limits: pr.is_multiple_of(2),
        });
        r
    }

    #[test]
    fn round_trip_keeps_every_field_newest_first() {
        let records = vec![rec(1, 1_000), rec(2, 5_000), rec(3, 3_000)];
        let (text, dropped) = encode_history(&records, 100, CONFIGMAP_MAX_BYTES).unwrap();
        assert_eq!(dropped, 0);
        let back = decode_history(&text).unwrap();
        assert_eq!(back.iter().map(|r| r.pr).collect::<Vec<_>>(), [2, 3, 1]);
        assert_eq!(back[2], records[0]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["records"][0]["tier"], "medium");
        assert_eq!(v["records"][0]["peakUsage"]["hitLimits"], true);
    }

    #[test]
    fn bounds_drop_the_oldest() {
        let records: Vec<_> = (0..50).map(|i| rec(i, 1_000 + i as i64 * 100)).collect();
        let (text, dropped) = encode_history(&records, 10, CONFIGMAP_MAX_BYTES).unwrap();
        assert_eq!(dropped, 40);
        let back = decode_history(&text).unwrap();
        assert_eq!(back.len(), 10);
        assert_eq!(back[0].pr, 49);
        assert_eq!(back[9].pr, 40);

        let one = serde_json::to_string(&records[49]).unwrap().len();
        let budget = 30 + one * 5 + 5;
        let (text, dropped) = encode_history(&records, 1000, budget).unwrap();
        assert!(text.len() <= budget, "{} > {budget}", text.len());
        assert_eq!(dropped, 45);
        assert_eq!(decode_history(&text).unwrap()[0].pr, 49);
    }

    #[test]
    fn rejects_unknown_versions_and_garbage() {
        assert_eq!(
            decode_history(r#"{"version":2,"records":[]}"#)
                .unwrap_err()
                .category(),
            "encoding"
        );
        assert!(decode_history("not json").is_err());
    }
}
