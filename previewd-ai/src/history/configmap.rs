//! The in-cluster history store: one JSON document in a ConfigMap.
//!
//! The document (`data["history.json"]`) is `{"version":1,"records":[...]}` with records
//! newest first. It is bounded: at most `max_records` records and `max_bytes` bytes
//! (default [`CONFIGMAP_MAX_BYTES`], well below the 1 MiB object limit); the oldest records
//! are dropped first.
//!
//! Writes are read-modify-write with optimistic concurrency: the replace carries the
//! `resourceVersion` that was read, the API server answers 409 Conflict when another
//! writer got there first, and the update is retried from a fresh read after a short
//! random pause that grows with each attempt (up to [`MAX_ATTEMPTS`] attempts). A missing
//! ConfigMap is created; a create that loses the race (409 AlreadyExists) is retried the
//! same way.

use std::collections::BTreeMap;

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

/// History in a ConfigMap (see the module documentation).
#[derive(Clone)]
pub struct ConfigMapHistory {
    api: Api<ConfigMap>,
    name: String,
    max_records: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for ConfigMapHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapHistory")
            .field("name", &self.name)
            .field("max_records", &self.max_records)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl ConfigMapHistory {
    /// A store in the ConfigMap `name` of the namespace `api` is scoped to.
    pub fn new(api: Api<ConfigMap>, name: &str) -> Self {
        ConfigMapHistory {
            api,
            name: name.to_owned(),
            max_records: 2000,
            max_bytes: CONFIGMAP_MAX_BYTES,
        }
    }

    /// Changes the bounds.
    pub fn with_bounds(mut self, max_records: usize, max_bytes: usize) -> Self {
        self.max_records = max_records.max(1);
        self.max_bytes = max_bytes.max(64);
        self
    }

    async fn read(&self) -> Result<(Option<ConfigMap>, Vec<EnvironmentRecord>), HistoryError> {
        let cm = self.api.get_opt(&self.name).await?;
        let records = match cm
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(CONFIGMAP_DATA_KEY))
        {
            Some(text) => match decode_history(text) {
                Ok(r) => r,
                Err(e) => {
                    // History is advisory: a corrupt document is replaced, not fatal.
                    tracing::warn!(configmap = %self.name, error = %e, "discarding unreadable history");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        Ok((cm, records))
    }

    async fn update(
        &self,
        change: impl Fn(&mut Vec<EnvironmentRecord>),
    ) -> Result<(), HistoryError> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // random pause in [0, 20ms·2^attempt), capped at 1s, so racing writers spread out
                let ceiling = (20u64 << attempt.min(6)).min(1000);
                let pause = rand::random::<u64>() % ceiling;
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            let (existing, mut records) = self.read().await?;
            change(&mut records);
            let (text, dropped) = encode_history(&records, self.max_records, self.max_bytes)?;
            if dropped > 0 {
                tracing::debug!(configmap = %self.name, dropped, "history bounded");
            }
            let data = BTreeMap::from([(CONFIGMAP_DATA_KEY.to_owned(), text)]);
            let result = match existing {
                Some(mut cm) => {
                    // metadata.resourceVersion from the read makes this a compare-and-swap
                    cm.data = Some(data);
                    self.api
                        .replace(&self.name, &PostParams::default(), &cm)
                        .await
                }
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_owned(),
                                "previewd".to_owned(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        data: Some(data),
                        ..ConfigMap::default()
                    };
                    self.api.create(&PostParams::default(), &cm).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status))
                    if status.is_conflict() || status.is_already_exists() =>
                {
                    tracing::debug!(configmap = %self.name, "history update conflicted; retrying");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(HistoryError::Conflict(MAX_ATTEMPTS))
    }
}

#[async_trait]
impl HistoryStore for ConfigMapHistory {
    async fn upsert(&self, record: &EnvironmentRecord) -> Result<(), HistoryError> {
        self.update(|records| upsert_into(records, record)).await
    }

    async fn latest(&self, repo: &str, pr: u64) -> Result<Option<EnvironmentRecord>, HistoryError> {
        let (_, records) = self.read().await?;
        Ok(records.into_iter().find(|r| r.repo == repo && r.pr == pr))
    }

    async fn by_repo(
        &self,
        repo: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        let (_, records) = self.read().await?;
        Ok(select(records.iter(), |r| r.repo == repo, limit))
    }

    async fn by_author(
        &self,
        author: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        let (_, records) = self.read().await?;
        Ok(select(records.iter(), |r| r.author == author, limit))
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
