//! The data engine against a real PostgreSQL: every constraint is enforced by the database,
//! so a successful load means zero violations.
//!
//! Needs `PREVIEWD_PG_URL` (start one with `scripts/pg-up`); `PREVIEWD_SKIP_PG=1` skips.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{TestDb, row_counts, table_hashes};
use previewd_data::{DataError, SeedOptions, Strategy, TestDataSpec, seed};

const SHOP: &str = include_str!("schemas/shop.sql");
const TENANTS: &str = include_str!("schemas/tenants.sql");
const CYCLE: &str = include_str!("schemas/cycle.sql");

fn spec(seed: i64, counts: &[(&str, i64)], default_rows: Option<i64>) -> TestDataSpec {
    TestDataSpec {
        enabled: true,
        strategy: Strategy::Synthetic,
        ai_model: None,
        counts: counts.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        default_rows,
        seed: Some(seed),
    }
}

fn shop_spec(seed: i64) -> TestDataSpec {
    spec(
        seed,
        &[
            ("users", 300),
            ("orders", 800),
            ("products", 120),
            ("order_items", 2500),
            ("reviews", 400),
            ("employees", 150),
            ("categories", 40),
        ],
        Some(60),
    )
}

async fn seeded(
    label: &str,
    schema: &str,
    spec: &TestDataSpec,
) -> Option<(TestDb, previewd_data::SeedReport)> {
    let db = TestDb::create(label).await?;
    db.apply(schema).await;
    let report = seed(&db.config, spec, &SeedOptions::default())
        .await
        .unwrap_or_else(|e| panic!("seeding {label}: {e}"));
    Some((db, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_loads_with_exact_counts_and_no_violations() {
    let Some((db, report)) = seeded("shop", SHOP, &shop_spec(42)).await else {
        return;
    };
    let client = db.client().await;
    let counts = row_counts(&client).await;
    assert_eq!(counts.len(), 18, "{counts:?}");
    let expected: BTreeMap<&str, i64> = [
        ("users", 300),
        ("orders", 800),
        ("products", 120),
        ("order_items", 2500),
        ("reviews", 400),
        ("employees", 150),
        ("categories", 40),
    ]
    .into();
    for (table, n) in &counts {
        let want = expected.get(table.as_str()).copied().unwrap_or(60);
        assert_eq!(*n, want, "rows in {table}");
    }
    assert_eq!(report.rows, counts.values().sum::<i64>() as u64);

    // Emails are unique and on reserved domains only.
    let bad: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT email FROM users UNION ALL SELECT email FROM employees) e
              WHERE split_part(email, '@', 2) NOT IN ('example.com', 'example.net', 'example.org')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    // The nullable cycle was closed afterwards: most users have a default organisation.
    let with_org: i64 = client
        .query_one(
            "SELECT count(*) FROM users WHERE default_org_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(with_org > 200, "{with_org} users with an organisation");
    assert!(report.deferred_updates > 0);
    // Self-references form trees: some employees have managers, the first has none.
    let managed: i64 = client
        .query_one(
            "SELECT count(*) FROM employees WHERE manager_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(managed > 100, "{managed}");
    // Checks across columns hold (the database enforces them; this shows they were exercised).
    let shipped: i64 = client
        .query_one(
            "SELECT count(*) FROM orders WHERE shipped_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(shipped > 0);
    // Enums take several values.
    let statuses: i64 = client
        .query_one("SELECT count(DISTINCT status) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(statuses, 5);
    // Sequences were moved past the generated keys: the application can insert.
    client
        .batch_execute(
            "INSERT INTO users (email, first_name, last_name) VALUES ('new@example.com', 'A', 'B');
             INSERT INTO categories (name, slug) VALUES ('New', 'new-category');",
        )
        .await
        .expect("inserts after seeding");
    // Identity columns are GENERATED ALWAYS again.
    let always: String = client
        .query_one(
            "SELECT attidentity::text FROM pg_attribute
              WHERE attrelid = 'categories'::regclass AND attname = 'id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(always, "a");
    drop(client);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let Some((a, _)) = seeded("same_a", SHOP, &shop_spec(7)).await else {
        return;
    };
    let Some((b, _)) = seeded("same_b", SHOP, &shop_spec(7)).await else {
        return;
    };
    let Some((c, _)) = seeded("other", SHOP, &shop_spec(8)).await else {
        return;
    };
    let ha = table_hashes(&a.client().await).await;
    let hb = table_hashes(&b.client().await).await;
    let hc = table_hashes(&c.client().await).await;
    assert_eq!(ha.len(), 18);
    assert_eq!(ha, hb, "same seed, same bytes");
    for (table, hash) in &ha {
        assert_ne!(
            hc.get(table),
            Some(hash),
            "{table} is the same with another seed"
        );
    }
    for db in [a, b, c] {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_does_not_depend_on_parallelism() {
    let Some(a) = TestDb::create("par1").await else {
        return;
    };
    let Some(b) = TestDb::create("par4").await else {
        return;
    };
    a.apply(TENANTS).await;
    b.apply(TENANTS).await;
    let s = spec(3, &[("tasks", 700)], Some(90));
    let mut one = SeedOptions::default();
    one.load.parallelism = 1;
    let mut four = SeedOptions::default();
    four.load.parallelism = 4;
    // Every table of 50 rows or more is copied through four streams at once.
    four.load.split_rows = 50;
    seed(&a.config, &s, &one).await.unwrap();
    seed(&b.config, &s, &four).await.unwrap();
    assert_eq!(
        table_hashes(&a.client().await).await,
        table_hashes(&b.client().await).await
    );
    a.drop_db().await;
    b.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_and_a_table_without_a_primary_key() {
    let s = spec(
        11,
        &[
            ("tenants", 5),
            ("projects", 40),
            ("tasks", 600),
            ("task_labels", 900),
        ],
        Some(120),
    );
    let Some((db, report)) = seeded("tenants", TENANTS, &s).await else {
        return;
    };
    let client = db.client().await;
    let counts = row_counts(&client).await;
    assert_eq!(counts["tenants"], 5);
    assert_eq!(counts["projects"], 40);
    assert_eq!(counts["tasks"], 600);
    assert_eq!(counts["labels"], 120);
    assert_eq!(counts["task_labels"], 900);
    assert_eq!(counts["activity"], 120);
    // Projects spread over the tenants (composite key: tenant digit plus a counter).
    let tenants_used: i64 = client
        .query_one("SELECT count(DISTINCT tenant_id) FROM projects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenants_used, 5);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    drop(client);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_cycle_is_refused_naming_the_cycle() {
    let Some(db) = TestDb::create("cycle").await else {
        return;
    };
    db.apply(CYCLE).await;
    let err = seed(&db.config, &spec(1, &[], Some(10)), &SeedOptions::default())
        .await
        .expect_err("a required cycle cannot be seeded");
    let DataError::Schema(message) = &err else {
        panic!("{err}");
    };
    assert!(message.contains("required foreign-key cycle"), "{message}");
    assert!(
        message.contains("authors.first_book_id → books"),
        "{message}"
    );
    assert!(message.contains("books.author_id → authors"), "{message}");
    // Nothing was written.
    let counts = row_counts(&db.client().await).await;
    assert!(counts.values().all(|n| *n == 0), "{counts:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_twice_changes_nothing_and_existing_rows_serve_as_parents() {
    let Some(db) = TestDb::create("again").await else {
        return;
    };
    db.apply(SHOP).await;
    // Migrations seeded the countries.
    db.apply("INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France'), ('JP', 'Japan')")
        .await;
    let s = spec(5, &[("users", 50)], Some(20));
    let first = seed(&db.config, &s, &SeedOptions::default()).await.unwrap();
    assert!(
        first.kept.contains(&"countries".to_string()),
        "{:?}",
        first.kept
    );
    let client = db.client().await;
    let hashes = table_hashes(&client).await;
    let counts = row_counts(&client).await;
    assert_eq!(counts["countries"], 3);
    assert_eq!(counts["users"], 50);
    let foreign: i64 = client
        .query_one(
            "SELECT count(*) FROM warehouses WHERE country_code NOT IN ('DE', 'FR', 'JP')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0);
    let second = seed(&db.config, &s, &SeedOptions::default()).await.unwrap();
    assert_eq!(second.rows, 0);
    assert_eq!(table_hashes(&client).await, hashes);
    drop(client);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_seeds_only_what_foreign_keys_need() {
    let Some(db) = TestDb::create("minimal").await else {
        return;
    };
    db.apply(SHOP).await;
    let mut s = spec(9, &[("order_items", 30), ("payments", 12)], Some(500));
    s.strategy = Strategy::Minimal;
    seed(&db.config, &s, &SeedOptions::default()).await.unwrap();
    let counts = row_counts(&db.client().await).await;
    assert_eq!(counts["order_items"], 30);
    assert_eq!(counts["payments"], 12);
    // payments.order_id is unique: twelve payments need twelve orders.
    assert_eq!(counts["orders"], 12);
    for needed in ["users", "products", "categories"] {
        assert_eq!(counts[needed], 1, "{needed}");
    }
    for unneeded in [
        "reviews",
        "memberships",
        "employees",
        "sessions",
        "audit_log",
        "coupons",
        "organizations",
    ] {
        assert_eq!(counts[unneeded], 0, "{unneeded}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_counts_are_refused_clearly() {
    let Some(db) = TestDb::create("impossible").await else {
        return;
    };
    db.apply(SHOP).await;
    // One payment per order at most.
    let err = seed(
        &db.config,
        &spec(1, &[("orders", 5), ("payments", 6)], Some(3)),
        &SeedOptions::default(),
    )
    .await
    .expect_err("6 payments cannot reference 5 orders uniquely");
    assert!(err.to_string().contains("payments"), "{err}");
    let err = seed(
        &db.config,
        &spec(1, &[("nope", 5)], None),
        &SeedOptions::default(),
    )
    .await
    .expect_err("unknown table");
    assert!(err.to_string().contains("\"nope\""), "{err}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_snapshot_restores_into_a_fresh_database() {
    let Some((source, _)) = seeded("snap_src", TENANTS, &spec(4, &[], Some(40))).await else {
        return;
    };
    let dump = std::env::temp_dir().join(format!("{}.sql", source.name));
    let status = std::process::Command::new("pg_dump")
        .args(["--data-only", "--format=plain", "--file"])
        .arg(&dump)
        .arg(&source.url)
        .status()
        .expect("pg_dump");
    assert!(status.success());
    let Some(target) = TestDb::create("snap_dst").await else {
        return;
    };
    target.apply(TENANTS).await;
    let mut s = spec(0, &[], None);
    s.strategy = Strategy::ProductionSnapshot;
    let options = SeedOptions {
        snapshot: Some(previewd_data::SnapshotSource::parse(dump.to_str().unwrap()).unwrap()),
        ..SeedOptions::default()
    };
    let report = seed(&target.config, &s, &options).await.unwrap();
    assert!(report.rows > 0);
    assert_eq!(
        table_hashes(&source.client().await).await,
        table_hashes(&target.client().await).await
    );
    let _ = std::fs::remove_file(&dump);
    source.drop_db().await;
    target.drop_db().await;
}

struct FixedAdvice;

#[async_trait::async_trait]
impl previewd_data::GeneratorAdvisor for FixedAdvice {
    fn name(&self) -> &str {
        "fixed"
    }
    async fn advise(
        &self,
        outline: &previewd_data::SchemaOutline,
    ) -> Result<BTreeMap<String, previewd_data::GeneratorKind>, previewd_data::advisor::AdvisorError>
    {
        use previewd_data::GeneratorKind as K;
        assert!(
            outline
                .columns
                .iter()
                .any(|c| c.key == "public.users.last_name")
        );
        // Foreign keys are never offered.
        assert!(
            !outline
                .columns
                .iter()
                .any(|c| c.key == "public.orders.user_id")
        );
        Ok(BTreeMap::from([
            (
                "public.users.last_name".to_string(),
                K::OneOf {
                    values: vec!["Doe".into()],
                },
            ),
            // Does not fit a text column: ignored.
            ("public.users.first_name".to_string(), K::Boolean),
            // A unique column cannot take a kind that repeats: ignored.
            (
                "public.users.email".to_string(),
                K::OneOf {
                    values: vec!["x@example.com".into()],
                },
            ),
            // Out-of-range parameters: ignored.
            (
                "public.products.stock".to_string(),
                K::Integer { min: 10, max: 1 },
            ),
        ]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advice_is_applied_only_where_it_fits() {
    let Some(db) = TestDb::create("advice").await else {
        return;
    };
    db.apply(SHOP).await;
    let mut s = spec(2, &[("users", 40)], Some(10));
    s.ai_model = Some(true);
    let options = SeedOptions {
        advisor: Some(std::sync::Arc::new(previewd_data::CachedAdvisor::new(
            FixedAdvice,
        ))),
        ..SeedOptions::default()
    };
    let report = seed(&db.config, &s, &options).await.unwrap();
    assert_eq!(report.generators, "fixed");
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE last_name = 'Doe'), count(DISTINCT email),
                    count(*) FILTER (WHERE first_name IN ('true', 'false', 't', 'f'))
               FROM users",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 40);
    assert_eq!(row.get::<_, i64>(1), 40);
    assert_eq!(row.get::<_, i64>(2), 0);
    drop(client);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_leaves_its_table_empty() {
    let Some(db) = TestDb::create("rollback").await else {
        return;
    };
    // A check the engine does not understand: some generated names violate it.
    db.apply(
        "CREATE TABLE teams (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE members (id int PRIMARY KEY, team_id int NOT NULL REFERENCES teams,
                               nickname text NOT NULL CHECK (nickname ~ '^[a-m]'));",
    )
    .await;
    let mut options = SeedOptions::default();
    options.load.parallelism = 3;
    options.load.split_rows = 10;
    let err = seed(
        &db.config,
        &spec(6, &[("members", 300)], Some(20)),
        &options,
    )
    .await
    .expect_err("the check rejects some rows");
    assert!(
        err.to_string()
            .contains("violates check constraint \"members_nickname_check\""),
        "{err}"
    );
    let counts = row_counts(&db.client().await).await;
    assert_eq!(counts["teams"], 20);
    assert_eq!(counts["members"], 0, "no stream of a failed table commits");
    db.drop_db().await;
}
