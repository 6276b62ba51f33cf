//! The PostgreSQL history store against a real PostgreSQL.
//!
//! Needs `PREVIEWD_PG_URL` (start one with `scripts/pg-up`, which prints it); set
//! `PREVIEWD_SKIP_PG=1` to skip.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use jiff::Timestamp;
use previewd_ai::history::{EnvironmentRecord, HistoryStore, PeakUsage, PostgresHistory};
use previewd_core::Tier;

fn pg_url() -> Option<String> {
    if std::env::var("PREVIEWD_SKIP_PG").is_ok_and(|v| v == "1") {
        eprintln!("PREVIEWD_SKIP_PG=1: skipping the PostgreSQL history tests");
        return None;
    }
    match std::env::var("PREVIEWD_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => panic!(
            "PREVIEWD_PG_URL is not set: run `scripts/pg-up` and export the PREVIEWD_PG_URL=... \
             line it prints (or set PREVIEWD_SKIP_PG=1 to skip)"
        ),
    }
}

/// A table unique to this test run, so runs and tests do not see each other's rows.
fn table(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "hist_{test}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_760_000_000 + s).expect("valid timestamp")
}

#[tokio::test]
async fn records_round_trip_and_queries_order_newest_first() -> anyhow::Result<()> {
    let Some(url) = pg_url() else { return Ok(()) };
    let store = PostgresHistory::connect_with_table(&url, &table("roundtrip")).await?;

    let mut a = EnvironmentRecord::opened("acme/shop", 7, "alice", t(0), Tier::Small);
    a.pushes = vec![t(60), t(120)];
    a.closed_at = Some(t(3600));
    a.peak_usage = Some(PeakUsage {
        cpu_millicores: 420,
        memory_bytes: 300 << 20,
        hit_limits: true,
    });
    a.peak_by_service.insert(
        "api".into(),
        PeakUsage {
            cpu_millicores: 420,
            memory_bytes: 300 << 20,
            hit_limits: true,
        },
    );
    let b = EnvironmentRecord::opened("acme/shop", 8, "bob", t(100), Tier::Large);
    let c = EnvironmentRecord::opened("acme/other", 1, "alice", t(200), Tier::Minimal);
    for r in [&a, &b, &c] {
        store.upsert(r).await?;
    }

    let shop = store.by_repo("acme/shop", 10).await?;
    assert_eq!(shop, vec![b.clone(), a.clone()]);
    let alice = store.by_author("alice", 10).await?;
    assert_eq!(alice, vec![c.clone(), a.clone()]);
    assert_eq!(store.by_author("alice", 1).await?, vec![c.clone()]);
    assert!(store.by_repo("nobody/none", 10).await?.is_empty());

    // lifecycle updates go through upsert on the same key
    store.record_push("acme/shop", 8, t(500)).await?;
    store
        .record_close(
            "acme/shop",
            8,
            t(900),
            Some(PeakUsage {
                cpu_millicores: 1,
                memory_bytes: 2,
                hit_limits: false,
            }),
        )
        .await?;
    let latest = store.latest("acme/shop", 8).await?.expect("record exists");
    assert_eq!(latest.pushes, vec![t(500)]);
    assert_eq!(latest.closed_at, Some(t(900)));
    assert_eq!(
        store.by_repo("acme/shop", 10).await?.len(),
        2,
        "no duplicate row"
    );

    // a reopened PR gets a second record; latest is the newest
    let reopened = EnvironmentRecord::opened("acme/shop", 8, "bob", t(5000), Tier::Medium);
    store.upsert(&reopened).await?;
    assert_eq!(store.latest("acme/shop", 8).await?, Some(reopened));
    assert!(store.record_push("acme/shop", 999, t(1)).await.is_err());
    Ok(())
}

#[tokio::test]
async fn migration_is_idempotent_and_data_survives_reconnects() -> anyhow::Result<()> {
    let Some(url) = pg_url() else { return Ok(()) };
    let name = table("migrate");
    let first = PostgresHistory::connect_with_table(&url, &name).await?;
    first
        .upsert(&EnvironmentRecord::opened("r/r", 1, "a", t(0), Tier::Small))
        .await?;
    // a second store (another replica) runs the migration again on the same table
    let (second, third) = tokio::join!(
        PostgresHistory::connect_with_table(&url, &name),
        PostgresHistory::connect_with_table(&url, &name)
    );
    let (second, _third) = (second?, third?);
    assert_eq!(second.by_repo("r/r", 10).await?.len(), 1);
    assert!(
        PostgresHistory::connect_with_table(&url, "bad-name; DROP TABLE x")
            .await
            .is_err()
    );
    Ok(())
}
