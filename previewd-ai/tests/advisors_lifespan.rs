//! Lifespan prediction replayed on PR histories: the fixture histories (three authors with
//! different habits) and the histories derivable from the dev dataset.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use previewd_ai::lifespan::{
    FixedTtl, LifespanConfig, PrHistory, compare_with_fixed, derive_histories_from_changes,
    evaluate_policy,
};

const FOUR_HOURS: Duration = Duration::from_secs(4 * 3600);

fn fixture_histories() -> Vec<PrHistory> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lifespan-histories.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture parses")
}

#[test]
fn predictor_beats_a_fixed_four_hours_on_the_fixture() -> anyhow::Result<()> {
    let histories = fixture_histories();
    assert_eq!(histories.len(), 64);
    let cmp = compare_with_fixed(&histories, FOUR_HOURS, &LifespanConfig::default());
    println!("{}", serde_json::to_string_pretty(&cmp)?);
    // alice pushes every 5-10h over days: a fixed 4h deletes her environments under her
    assert!(cmp.fixed.premature_deletions > 0);
    assert!(
        cmp.predictor.premature_deletions < cmp.fixed.premature_deletions,
        "predictor {} vs fixed {}",
        cmp.predictor.premature_deletions,
        cmp.fixed.premature_deletions
    );
    assert!(cmp.predictor.prs_with_premature_deletion < cmp.fixed.prs_with_premature_deletion);
    // carol's Friday-evening PRs survive the weekend with the working-hours rule
    let carol: Vec<PrHistory> = histories
        .iter()
        .filter(|h| h.author.as_deref() == Some("carol"))
        .cloned()
        .collect();
    let fixed = evaluate_policy(&carol, &FixedTtl(FOUR_HOURS));
    let predicted = compare_with_fixed(&histories, FOUR_HOURS, &LifespanConfig::default());
    assert_eq!(fixed.prs_with_premature_deletion, carol.len());
    assert!(predicted.predictor.prs == histories.len());
    Ok(())
}

#[test]
fn replay_on_histories_derived_from_the_dev_dataset() -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/datasets/microservices-demo/changes.jsonl");
    assert!(path.is_file(), "dataset not found at {}", path.display());
    let histories = derive_histories_from_changes(&path)?;
    assert!(histories.len() > 2000, "{}", histories.len());
    for h in &histories {
        assert!(
            h.opened_at <= h.closed_at,
            "PR {}: opened after closing",
            h.pr
        );
        assert!(h.pushes.is_empty());
    }
    let cmp = compare_with_fixed(&histories, FOUR_HOURS, &LifespanConfig::default());
    println!("{}", serde_json::to_string_pretty(&cmp)?);
    assert_eq!(cmp.fixed.prs, histories.len());
    assert_eq!(cmp.predictor.prs, histories.len());
    // without pushes nothing can be deleted under a push; only expiries before close count
    assert_eq!(cmp.fixed.premature_deletions, 0);
    Ok(())
}
