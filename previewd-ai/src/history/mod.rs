//! History of preview environments: when they were opened, pushed to and closed, at which
//! tier, and how much they used. The lifespan and tier advisors learn from it.
//!
//! Three stores implement [`HistoryStore`]:
//!
//! * [`MemoryHistory`]: in-process, for tests and single-replica setups that accept losing
//!   history on restart;
//! * [`ConfigMapHistory`]: the in-cluster default, one bounded JSON document in a
//!   ConfigMap, read once and kept in memory, written (in batches, if asked) with
//!   optimistic concurrency;
//! * [`PostgresHistory`]: a table in PostgreSQL, created on connect.
//!
//! Records are keyed by `(repo, pr, opened_at)`: a PR that is closed and reopened gets a
//! second record. [`HistoryStore::upsert`] replaces a record with the same key.

#[cfg(feature = "kube")]
mod configmap;
mod memory;
mod postgres;
mod recorder;

#[cfg(feature = "kube")]
pub use configmap::{
    CONFIGMAP_DATA_KEY, CONFIGMAP_MAX_BYTES, ConfigMapHistory, decode_history, encode_history,
};
pub use memory::MemoryHistory;
pub use postgres::PostgresHistory;
pub use recorder::{HistoryRecorder, LifeEvent, PeakSource};

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use previewd_core::Tier;
use serde::{Deserialize, Serialize};

/// Peak resource usage of an environment over its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeakUsage {
    /// Highest CPU use of any container, in millicores.
    pub cpu_millicores: u64,
    /// Highest memory use of any container, in bytes.
    pub memory_bytes: u64,
    /// A container was OOM-killed or throttled at its limit.
    pub hit_limits: bool,
}

/// One environment's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentRecord {
    /// `owner/name` of the repository.
    pub repo: String,
    /// Pull request number.
    pub pr: u64,
    /// Login of the PR author.
    pub author: String,
    /// When the environment was created (the PR opened or was labelled).
    pub opened_at: Timestamp,
    /// Pushes to the PR while the environment existed, oldest first.
    #[serde(default)]
    pub pushes: Vec<Timestamp>,
    /// When the PR closed (or the environment was deleted), if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// The tier the environment ran at.
    pub tier: Tier,
    /// Peak usage, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_usage: Option<PeakUsage>,
    /// When it first became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Timestamp>,
    /// When it fell asleep (workloads scaled to zero), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slept: Vec<Timestamp>,
    /// Spend over its life, in micro-dollars, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<i64>,
    /// Peak usage per service, measured while it ran (recorded when it sleeps or closes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peak_by_service: BTreeMap<String, PeakUsage>,
}

impl EnvironmentRecord {
    /// A freshly opened environment with no pushes.
    pub fn opened(repo: &str, pr: u64, author: &str, opened_at: Timestamp, tier: Tier) -> Self {
        EnvironmentRecord {
            repo: repo.to_owned(),
            pr,
            author: author.to_owned(),
            opened_at,
            pushes: Vec::new(),
            closed_at: None,
            tier,
            peak_usage: None,
            ready_at: None,
            slept: Vec::new(),
            cost_micros: None,
            peak_by_service: BTreeMap::new(),
        }
    }

    fn same_key(&self, other: &EnvironmentRecord) -> bool {
        self.repo == other.repo && self.pr == other.pr && self.opened_at == other.opened_at
    }
}

/// Why a history store failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The Kubernetes API failed.
    #[cfg(feature = "kube")]
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The stored document could not be encoded or decoded.
    #[error("encoding: {0}")]
    Encoding(String),
    /// Concurrent writers kept conflicting.
    #[error("gave up after {0} conflicting updates")]
    Conflict(u32),
    /// No record for this PR.
    #[error("no environment recorded for {repo}#{pr}")]
    NotFound {
        /// Repository.
        repo: String,
        /// PR number.
        pr: u64,
    },
}

impl HistoryError {
    /// Short static category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            #[cfg(feature = "kube")]
            HistoryError::Kube(_) => "kube",
            HistoryError::Postgres(_) => "postgres",
            HistoryError::Encoding(_) => "encoding",
            HistoryError::Conflict(_) => "conflict",
            HistoryError::NotFound { .. } => "not_found",
        }
    }
}

/// Where environment lifecycles are recorded and queried.
///
/// Queries return records most recently opened first.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Inserts a record or replaces the one with the same `(repo, pr, opened_at)`.
    async fn upsert(&self, record: &EnvironmentRecord) -> Result<(), HistoryError>;

    /// The most recently opened record of a PR.
    async fn latest(&self, repo: &str, pr: u64) -> Result<Option<EnvironmentRecord>, HistoryError>;

    /// Up to `limit` records of a repository.
    async fn by_repo(
        &self,
        repo: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError>;

    /// Up to `limit` records of an author, across repositories.
    async fn by_author(
        &self,
        author: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError>;

    /// Records a push on the PR's latest environment.
    async fn record_push(&self, repo: &str, pr: u64, at: Timestamp) -> Result<(), HistoryError> {
        let mut rec = self
            .latest(repo, pr)
            .await?
            .ok_or_else(|| HistoryError::NotFound {
                repo: repo.to_owned(),
                pr,
            })?;
        if !rec.pushes.contains(&at) {
            rec.pushes.push(at);
            rec.pushes.sort();
        }
        self.upsert(&rec).await
    }

    /// Records the close of the PR's latest environment, with its peak usage if known.
    async fn record_close(
        &self,
        repo: &str,
        pr: u64,
        at: Timestamp,
        peak_usage: Option<PeakUsage>,
    ) -> Result<(), HistoryError> {
        let mut rec = self
            .latest(repo, pr)
            .await?
            .ok_or_else(|| HistoryError::NotFound {
                repo: repo.to_owned(),
                pr,
            })?;
        rec.closed_at = Some(at);
        if peak_usage.is_some() {
            rec.peak_usage = peak_usage;
        }
        self.upsert(&rec).await
    }
}

/// Inserts or replaces `record` in `records` (by key) and keeps them newest first.
pub(crate) fn upsert_into(records: &mut Vec<EnvironmentRecord>, record: &EnvironmentRecord) {
    if let Some(existing) = records.iter_mut().find(|r| r.same_key(record)) {
        *existing = record.clone();
    } else {
        records.push(record.clone());
    }
    sort_newest_first(records);
}

pub(crate) fn sort_newest_first(records: &mut [EnvironmentRecord]) {
    records.sort_by(|a, b| {
        b.opened_at
            .cmp(&a.opened_at)
            .then_with(|| a.repo.cmp(&b.repo))
            .then_with(|| a.pr.cmp(&b.pr))
    });
}

/// Filters newest-first records.
pub(crate) fn select<'a>(
    records: impl Iterator<Item = &'a EnvironmentRecord>,
    pred: impl Fn(&EnvironmentRecord) -> bool,
    limit: usize,
) -> Vec<EnvironmentRecord> {
    records.filter(|r| pred(r)).take(limit).cloned().collect()
}
