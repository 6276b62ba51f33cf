//! All advisors together over an in-memory history that the operator's own recorder wrote:
//! the usage tracker folds metrics-API samples into peaks, the history recorder records
//! them when environments sleep and close, and the tier advisor reads them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use jiff::Timestamp;
use previewd_ai::advisor::{Advisors, PullRequestFacts};
use previewd_ai::history::{HistoryRecorder, HistoryStore, MemoryHistory};
use previewd_ai::lifespan::LifespanBasis;
use previewd_ai::services::{ChangeInput, ServicesAdvisor};
use previewd_core::ai::DecisionSource;
use previewd_core::environment::{EnvironmentReporter, EnvironmentView};
use previewd_core::{CatalogueService, ServiceCatalogue, Tier};
use previewd_kube::usage::{UsageTracker, usage_by_service};

fn catalogue() -> ServiceCatalogue {
    ServiceCatalogue {
        services: vec![
            CatalogueService {
                name: "api".to_owned(),
                paths: vec!["api/".to_owned()],
                tier: Some(Tier::Small),
                ..CatalogueService::default()
            },
            CatalogueService {
                name: "search".to_owned(),
                paths: vec!["search/".to_owned()],
                tier: Some(Tier::Medium),
                ..CatalogueService::default()
            },
        ],
        shared_paths: vec![],
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[tokio::test]
async fn history_drives_lifespan_and_tier() {
    let history = Arc::new(MemoryHistory::default());
    let tracker = Arc::new(UsageTracker::default());
    let recorder = HistoryRecorder::spawn(history.clone()).with_peaks(tracker.clone());
    // Three environments of the repository ran at small; the metrics API saw api's pod at
    // 480m CPU (small's limit is 500m) and 400Mi.
    for (i, day) in ["2026-02-02", "2026-02-03", "2026-02-04"]
        .iter()
        .enumerate()
    {
        let pr = i as u64 + 1;
        let mut view = EnvironmentView {
            repository: "acme/shop".into(),
            pr_number: pr,
            author: Some("dana".into()),
            created_at: Some(ts(&format!("{day}T09:00:00Z"))),
            tier: Some(Tier::Small),
            ..EnvironmentView::default()
        };
        recorder.environment_changed(&view).await;
        let sample = serde_json::json!({"items": [
            {"metadata": {"name": "api-1", "labels": {"previewd.io/service": "api"}},
             "containers": [{"name": "app", "usage": {"cpu": "480m", "memory": "400Mi"}}]}
        ]});
        let key = (previewd_kube::render::repo_label_value("acme/shop"), pr);
        tracker.observe(&key, &usage_by_service(&sample));
        view.sleeping_since = Some(ts(&format!("{day}T20:00:00Z")));
        recorder.environment_changed(&view).await;
        recorder.environment_deleted(&view).await;
    }
    for _ in 0..300 {
        let recorded = history.by_repo("acme/shop", 10).await.unwrap();
        if recorded.len() == 3
            && recorded
                .iter()
                .all(|r| r.closed_at.is_some() && r.peak_usage.is_some_and(|p| p.hit_limits))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let recorded = history.by_repo("acme/shop", 10).await.unwrap();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for r in &recorded {
        assert_eq!(r.peak_by_service["api"].cpu_millicores, 480);
        assert!(r.peak_usage.is_some_and(|p| p.hit_limits), "{r:?}");
    }
    let mut advisors = Advisors::new(ServicesAdvisor::new(&catalogue(), None).unwrap());
    advisors.history = Some(history.clone() as Arc<dyn HistoryStore>);
    let facts = PullRequestFacts {
        repo: "acme/shop".to_owned(),
        pr: 9,
        author: "erin".to_owned(),
        change: ChangeInput::from_files(["api/main.go"]),
        lines_changed: 10,
        ..PullRequestFacts::default()
    };
    let advice = advisors.advise(&facts, ts("2026-03-03T10:00:00Z")).await;
    assert_eq!(advice.history_error, None);
    assert_eq!(advice.services.source, DecisionSource::Deterministic);
    assert_eq!(advice.services.value.services.len(), 1);
    // erin has no history: the repository's is the base
    assert_eq!(advice.lifespan.value.basis, LifespanBasis::Repository);
    // api declares small; three environments near small's limits bump it to medium
    assert_eq!(advice.tier.value.declared, Tier::Small);
    assert_eq!(advice.tier.value.tier, Tier::Medium);
    assert!(advice.tier.value.bumped);

    // without history: defaults
    advisors.history = None;
    let advice = advisors.advise(&facts, ts("2026-03-03T10:00:00Z")).await;
    assert_eq!(advice.lifespan.value.basis, LifespanBasis::Default);
    // 4h, times a small size factor for one file and ten lines
    let ttl = advice.lifespan.value.ttl.as_secs();
    assert!((4 * 3600..5 * 3600).contains(&ttl), "{ttl}");
    assert_eq!(advice.tier.value.tier, Tier::Small);
}
