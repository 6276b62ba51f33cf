//! The operator's writer of history: a [`HistoryRecorder`] receives every reported change
//! of an environment (it is an [`EnvironmentReporter`]) and records the environment's
//! life (opened, pushes, ready, slept, closed, cost) in a [`HistoryStore`].
//!
//! Reconciles never wait for the store: a change is turned into a [`LifeEvent`] and put
//! on a bounded queue (dropped, and counted, when the queue is full); one background task
//! writes them, each with a deadline. Writes are merges keyed by the environment's
//! `(repo, pr, opened_at)`: a push, a sleep or a close recorded twice is recorded once,
//! so a redelivered or repeated report never adds a row or an entry.
//!
//! With a [`PeakSource`] (the operator's sampler of the metrics API), an environment's
//! peak CPU and memory per service go into its record when it falls asleep or is
//! deleted; the record's `peakUsage` is then the largest of them, which the tier advisor
//! reads to size the repository's next environments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use previewd_core::Tier;
use previewd_core::environment::{EnvironmentReporter, EnvironmentView};
use tokio::sync::mpsc;

use super::{EnvironmentRecord, HistoryError, HistoryStore, PeakUsage};

/// Where measured peak usage comes from: per service of an environment, so far.
pub trait PeakSource: Send + Sync {
    /// The peaks of the environment `view` describes (empty when nothing was measured).
    fn peaks(&self, view: &EnvironmentView) -> BTreeMap<String, PeakUsage>;
}

/// The operator's sampler of the metrics API: an environment's peaks, found by the labels
/// its namespace carries (repository and PR).
#[cfg(feature = "kube")]
impl PeakSource for previewd_kube::usage::UsageTracker {
    fn peaks(&self, view: &EnvironmentView) -> BTreeMap<String, PeakUsage> {
        let key = (
            previewd_kube::render::repo_label_value(&view.repository),
            view.pr_number,
        );
        let tier = view.tier.unwrap_or_default();
        previewd_kube::usage::UsageTracker::peaks(self, &key)
            .into_iter()
            .map(|(service, u)| {
                (
                    service,
                    PeakUsage {
                        cpu_millicores: u.cpu_millicores,
                        memory_bytes: u.memory_bytes,
                        // A pod within 10% of its tier's limits counts as hitting them.
                        hit_limits: u.near_limits(tier),
                    },
                )
            })
            .collect()
    }
}

/// What one report says about an environment's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifeEvent {
    /// `owner/name`.
    pub repo: String,
    /// PR number.
    pub pr: u64,
    /// PR author.
    pub author: String,
    /// When the environment was created (the record's key).
    pub opened_at: Timestamp,
    /// Its tier.
    pub tier: Tier,
    /// The last push, if after creation.
    pub push: Option<Timestamp>,
    /// When it became ready.
    pub ready_at: Option<Timestamp>,
    /// Since when it sleeps.
    pub slept_at: Option<Timestamp>,
    /// When it was deleted.
    pub closed_at: Option<Timestamp>,
    /// Spend so far, micro-dollars.
    pub cost_micros: Option<i64>,
    /// Peak usage per service measured so far (set when it sleeps or closes).
    pub peaks: BTreeMap<String, PeakUsage>,
}

impl LifeEvent {
    /// The event of a reported view (`closed_at` when the environment is gone); `None`
    /// when the view has no creation time or a repository that is not `owner/name`.
    pub fn of(view: &EnvironmentView, closed_at: Option<Timestamp>) -> Option<LifeEvent> {
        let opened_at = view.created_at?;
        if !view.repository.contains('/') || view.pr_number == 0 {
            return None;
        }
        Some(LifeEvent {
            repo: view.repository.clone(),
            pr: view.pr_number,
            author: view.author.clone().unwrap_or_default(),
            opened_at,
            tier: view.tier.unwrap_or_default(),
            push: view.last_push.filter(|p| *p > opened_at),
            ready_at: view.ready_at,
            slept_at: view.sleeping_since,
            closed_at,
            cost_micros: view.actual_to_date.map(|m| m.micros()),
            peaks: BTreeMap::new(),
        })
    }

    /// `record` (the environment's record, if it exists) with this event merged in.
    pub fn merge_into(&self, record: Option<EnvironmentRecord>) -> EnvironmentRecord {
        let mut rec = record
            .filter(|r| r.repo == self.repo && r.pr == self.pr && r.opened_at == self.opened_at)
            .unwrap_or_else(|| {
                EnvironmentRecord::opened(
                    &self.repo,
                    self.pr,
                    &self.author,
                    self.opened_at,
                    self.tier,
                )
            });
        rec.tier = self.tier;
        if let Some(push) = self.push
            && !rec.pushes.contains(&push)
        {
            rec.pushes.push(push);
            rec.pushes.sort();
        }
        if let Some(ready) = self.ready_at {
            rec.ready_at = Some(rec.ready_at.map_or(ready, |r| r.min(ready)));
        }
        if let Some(slept) = self.slept_at
            && !rec.slept.contains(&slept)
        {
            rec.slept.push(slept);
            rec.slept.sort();
        }
        if self.closed_at.is_some() && rec.closed_at.is_none() {
            rec.closed_at = self.closed_at;
        }
        if let Some(cost) = self.cost_micros {
            rec.cost_micros = Some(rec.cost_micros.map_or(cost, |c| c.max(cost)));
        }
        for (service, peak) in &self.peaks {
            let kept = rec.peak_by_service.entry(service.clone()).or_default();
            kept.cpu_millicores = kept.cpu_millicores.max(peak.cpu_millicores);
            kept.memory_bytes = kept.memory_bytes.max(peak.memory_bytes);
            kept.hit_limits |= peak.hit_limits;
        }
        if !rec.peak_by_service.is_empty() {
            let mut env = rec.peak_usage.unwrap_or_default();
            for p in rec.peak_by_service.values() {
                env.cpu_millicores = env.cpu_millicores.max(p.cpu_millicores);
                env.memory_bytes = env.memory_bytes.max(p.memory_bytes);
                env.hit_limits |= p.hit_limits;
            }
            rec.peak_usage = Some(env);
        }
        rec
    }
}

/// Records environments' lives in a history store, off the reconcile path.
#[derive(Clone)]
pub struct HistoryRecorder {
    queue: mpsc::Sender<LifeEvent>,
    peaks: Option<Arc<dyn PeakSource>>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl std::fmt::Debug for HistoryRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryRecorder")
            .field("dropped", &self.dropped())
            .field("failed", &self.failed())
            .finish_non_exhaustive()
    }
}

/// Events queued before new ones are dropped.
pub const RECORDER_QUEUE: usize = 1024;
/// Deadline of one store write.
pub const RECORDER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl HistoryRecorder {
    /// A recorder writing to `store` from a background task (needs a Tokio runtime).
    pub fn spawn(store: Arc<dyn HistoryStore>) -> Self {
        let (queue, mut rx) = mpsc::channel::<LifeEvent>(RECORDER_QUEUE);
        let recorder = HistoryRecorder {
            queue,
            peaks: None,
            dropped: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
        };
        let failed = recorder.failed.clone();
        let written = recorder.written.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match tokio::time::timeout(RECORDER_WRITE_TIMEOUT, write(store.as_ref(), &event))
                    .await
                {
                    Ok(Ok(())) => {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(err)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(repo = %event.repo, pr = event.pr, error = %err, category = err.category(), "could not record environment history");
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(repo = %event.repo, pr = event.pr, "recording environment history timed out");
                    }
                }
            }
        });
        recorder
    }

    /// Records measured peaks from `source` when environments sleep or close.
    pub fn with_peaks(mut self, source: Arc<dyn PeakSource>) -> Self {
        self.peaks = Some(source);
        self
    }

    fn with_measured_peaks(&self, view: &EnvironmentView, mut event: LifeEvent) -> LifeEvent {
        if let Some(source) = &self.peaks {
            event.peaks = source.peaks(view);
        }
        event
    }

    /// Queues `event`; never waits.
    pub fn record(&self, event: LifeEvent) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes that failed or timed out.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes that succeeded.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

async fn write(store: &dyn HistoryStore, event: &LifeEvent) -> Result<(), HistoryError> {
    // The latest record of the PR is this environment's unless a newer one was opened
    // since (a reopened PR); then look through the repository's records for ours.
    let latest = store.latest(&event.repo, event.pr).await?;
    let existing = match latest {
        Some(r) if r.opened_at == event.opened_at => Some(r),
        Some(r) if r.opened_at > event.opened_at => store
            .by_repo(&event.repo, 500)
            .await?
            .into_iter()
            .find(|r| r.pr == event.pr && r.opened_at == event.opened_at),
        _ => None,
    };
    let merged = event.merge_into(existing.clone());
    if existing.as_ref() == Some(&merged) {
        return Ok(());
    }
    store.upsert(&merged).await
}

#[async_trait]
impl EnvironmentReporter for HistoryRecorder {
    async fn environment_changed(&self, env: &EnvironmentView) {
        if let Some(event) = LifeEvent::of(env, None) {
            let event = if env.sleeping_since.is_some() {
                self.with_measured_peaks(env, event)
            } else {
                event
            };
            self.record(event);
        }
    }

    async fn environment_deleted(&self, env: &EnvironmentView) {
        if let Some(event) = LifeEvent::of(env, Some(Timestamp::now())) {
            let event = self.with_measured_peaks(env, event);
            self.record(event);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::MemoryHistory;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn view() -> EnvironmentView {
        EnvironmentView {
            repository: "acme/shop".into(),
            pr_number: 7,
            author: Some("alice".into()),
            created_at: Some(t("2026-01-01T00:00:00Z")),
            tier: Some(Tier::Small),
            ..EnvironmentView::default()
        }
    }

    #[test]
    fn events_merge_into_one_record_and_repeat_harmlessly() {
        let mut v = view();
        let opened = LifeEvent::of(&v, None).unwrap();
        let rec = opened.merge_into(None);
        v.ready_at = Some(t("2026-01-01T00:01:00Z"));
        v.last_push = Some(t("2026-01-01T00:30:00Z"));
        v.sleeping_since = Some(t("2026-01-01T02:30:00Z"));
        v.actual_to_date = Some(previewd_core::Money::from_cents(12));
        let later = LifeEvent::of(&v, None).unwrap();
        let rec = later.merge_into(Some(rec));
        let again = later.merge_into(Some(rec.clone()));
        assert_eq!(rec, again, "the same event twice changes nothing");
        assert_eq!(rec.pushes, vec![t("2026-01-01T00:30:00Z")]);
        assert_eq!(rec.slept, vec![t("2026-01-01T02:30:00Z")]);
        assert_eq!(rec.ready_at, Some(t("2026-01-01T00:01:00Z")));
        assert_eq!(rec.cost_micros, Some(120_000));
        let closed = LifeEvent::of(&v, Some(t("2026-01-01T05:00:00Z"))).unwrap();
        let rec = closed.merge_into(Some(rec));
        assert_eq!(rec.closed_at, Some(t("2026-01-01T05:00:00Z")));
        let late = LifeEvent::of(&v, Some(t("2026-01-01T06:00:00Z"))).unwrap();
        assert_eq!(late.merge_into(Some(rec.clone())).closed_at, rec.closed_at);
    }

    #[tokio::test]
    async fn the_recorder_writes_in_the_background_once_per_environment() {
        let store = Arc::new(MemoryHistory::default());
        let recorder = HistoryRecorder::spawn(store.clone());
        let mut v = view();
        recorder.environment_changed(&v).await;
        v.last_push = Some(t("2026-01-01T00:30:00Z"));
        recorder.environment_changed(&v).await;
        recorder.environment_changed(&v).await;
        recorder.environment_deleted(&v).await;
        for _ in 0..200 {
            if store
                .latest("acme/shop", 7)
                .await
                .unwrap()
                .is_some_and(|r| r.closed_at.is_some())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all = store.by_repo("acme/shop", 10).await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].pushes.len(), 1);
        assert!(all[0].closed_at.is_some());
        assert_eq!(recorder.dropped(), 0);
    }

    struct Measured(BTreeMap<String, PeakUsage>);

    impl PeakSource for Measured {
        fn peaks(&self, view: &EnvironmentView) -> BTreeMap<String, PeakUsage> {
            assert_eq!(view.pr_number, 7);
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn measured_peaks_are_recorded_when_the_environment_sleeps_or_closes() {
        let store = Arc::new(MemoryHistory::default());
        let peak = |cpu, mem| PeakUsage {
            cpu_millicores: cpu,
            memory_bytes: mem,
            hit_limits: false,
        };
        let measured = Arc::new(Measured(BTreeMap::from([
            ("api".to_string(), peak(450, 300 << 20)),
            ("web".to_string(), peak(80, 900 << 20)),
        ])));
        let recorder = HistoryRecorder::spawn(store.clone()).with_peaks(measured);
        let mut v = view();
        recorder.environment_changed(&v).await;
        // While it runs, nothing is recorded yet (the peak may still grow).
        v.sleeping_since = Some(t("2026-01-01T02:30:00Z"));
        recorder.environment_changed(&v).await;
        let mut rec = None;
        for _ in 0..200 {
            rec = store.latest("acme/shop", 7).await.unwrap();
            if rec.as_ref().is_some_and(|r| !r.peak_by_service.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rec = rec.unwrap();
        assert_eq!(rec.peak_by_service["api"].cpu_millicores, 450);
        assert_eq!(rec.peak_by_service["web"].memory_bytes, 900 << 20);
        assert_eq!(
            rec.peak_usage,
            Some(peak(450, 900 << 20)),
            "the environment's peak is the largest of its services'"
        );
        // A later, lower measurement never lowers a recorded peak.
        let lower = LifeEvent {
            peaks: BTreeMap::from([("api".to_string(), peak(10, 1))]),
            ..LifeEvent::of(&v, Some(t("2026-01-01T05:00:00Z"))).unwrap()
        };
        let merged = lower.merge_into(Some(rec));
        assert_eq!(merged.peak_by_service["api"].cpu_millicores, 450);
        assert!(merged.closed_at.is_some());
    }
}
