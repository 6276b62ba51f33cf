//! All advisors together over an in-memory history.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use jiff::Timestamp;
use previewd_ai::advisor::{Advisors, PullRequestFacts};
use previewd_ai::history::{EnvironmentRecord, HistoryStore, MemoryHistory, PeakUsage};
use previewd_ai::lifespan::LifespanBasis;
use previewd_ai::services::{ChangeInput, ServicesAdvisor};
use previewd_core::ai::DecisionSource;
use previewd_core::{CatalogueService, ServiceCatalogue, Tier};

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
    // three closed environments of the repository, each lived ~30h and hit its limits at small
    for (i, day) in ["2026-02-02", "2026-02-03", "2026-02-04"]
        .iter()
        .enumerate()
    {
        let opened = ts(&format!("{day}T09:00:00Z"));
        let mut r =
            EnvironmentRecord::opened("acme/shop", i as u64 + 1, "dana", opened, Tier::Small);
        r.closed_at = Some(ts(&format!("{day}T09:00:00Z")) + jiff::SignedDuration::from_hours(30));
        r.peak_usage = Some(PeakUsage {
            cpu_millicores: 500,
            memory_bytes: 512 << 20,
            hit_limits: true,
        });
        history.upsert(&r).await.unwrap();
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
    // erin has no history: the repository's ~30h is the base
    assert_eq!(advice.lifespan.value.basis, LifespanBasis::Repository);
    assert!(
        advice.lifespan.value.ttl.as_secs() >= 30 * 3600,
        "{:?}",
        advice.lifespan.value
    );
    // api declares small; three limit hits at small bump it to medium
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
