//! An in-memory history store.

use async_trait::async_trait;
use tokio::sync::RwLock;

use super::{EnvironmentRecord, HistoryError, HistoryStore, select, upsert_into};

/// Keeps records in memory, newest first, dropping the oldest beyond a bound.
#[derive(Debug)]
pub struct MemoryHistory {
    records: RwLock<Vec<EnvironmentRecord>>,
    max_records: usize,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        MemoryHistory::new(10_000)
    }
}

impl MemoryHistory {
    /// A store keeping at most `max_records` records.
    pub fn new(max_records: usize) -> Self {
        MemoryHistory {
            records: RwLock::new(Vec::new()),
            max_records: max_records.max(1),
        }
    }

    /// Number of records held.
    pub async fn len(&self) -> usize {
        self.records.read().await.len()
    }

    /// Whether the store is empty.
    pub async fn is_empty(&self) -> bool {
        self.records.read().await.is_empty()
    }
}

#[async_trait]
impl HistoryStore for MemoryHistory {
    async fn upsert(&self, record: &EnvironmentRecord) -> Result<(), HistoryError> {
        let mut records = self.records.write().await;
        upsert_into(&mut records, record);
        records.truncate(self.max_records);
        Ok(())
    }

    async fn latest(&self, repo: &str, pr: u64) -> Result<Option<EnvironmentRecord>, HistoryError> {
        let records = self.records.read().await;
        Ok(records
            .iter()
            .find(|r| r.repo == repo && r.pr == pr)
            .cloned())
    }

    async fn by_repo(
        &self,
        repo: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        let records = self.records.read().await;
        Ok(select(records.iter(), |r| r.repo == repo, limit))
    }

    async fn by_author(
        &self,
        author: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        let records = self.records.read().await;
        Ok(select(records.iter(), |r| r.author == author, limit))
    }
}
