//! Model proposals against a real PostgreSQL and the 18-table shop schema: answers that
//! attack the database or break its constraints are refused with their reasons, and the
//! data still loads with every constraint enforced by the database.
//!
//! Needs `PREVIEWD_PG_URL` (start one with `scripts/pg-up`); `PREVIEWD_SKIP_PG=1` skips.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{TestDb, row_counts, table_hashes};
use previewd_data::proposal::{ProposalError, ProposalSource, TableRequest};
use previewd_data::{SeedOptions, Strategy, TestDataSpec, seed};

const SHOP: &str = include_str!("schemas/shop.sql");

/// Answers from a script, by table; records every question.
struct Scripted {
    answers: BTreeMap<&'static str, serde_json::Value>,
    asked: Mutex<Vec<TableRequest>>,
}

impl Scripted {
    fn new(answers: &[(&'static str, serde_json::Value)]) -> Self {
        Scripted {
            answers: answers.iter().cloned().collect(),
            asked: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl ProposalSource for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn propose(&self, request: &TableRequest) -> Result<serde_json::Value, ProposalError> {
        self.asked.lock().unwrap().push(request.clone());
        match self.answers.get(request.table.as_str()) {
            Some(v) => Ok(v.clone()),
            None => Err(ProposalError("timeout after 30s".into())),
        }
    }
}

fn spec(seed: i64, ai: Option<bool>) -> TestDataSpec {
    TestDataSpec {
        enabled: true,
        strategy: Strategy::Synthetic,
        ai_model: ai,
        counts: [("users", 80), ("orders", 200), ("order_items", 500)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        default_rows: Some(30),
        seed: Some(seed),
    }
}

fn attack() -> Scripted {
    let huge = "Ergonomic Chair ".repeat(700_000); // about 11 MB
    Scripted::new(&[
        (
            "public.countries",
            serde_json::json!({"values": {}, "insert":
                "INSERT INTO countries (code, name) VALUES ('FR', 'France'), ('DE', 'Germany'), \
                 ('JP', 'Japan'), ('FR', 'Francia'), ('US', 'United States')"}),
        ),
        (
            "public.warehouses",
            serde_json::json!({"values": {}, "insert":
                "INSERT INTO warehouses (city, country_code) VALUES ('Lyon', 'FR'), ('Atlantis', 'XX'), ('Osaka', 'JP')"}),
        ),
        (
            "public.coupons",
            serde_json::json!({"values": {}, "insert":
                "INSERT INTO coupons (code, percent_off, valid_from, valid_until) VALUES ('SPRING10', 10, '2025-03-01', '2025-05-31'); \
                 DROP TABLE users CASCADE"}),
        ),
        (
            "public.categories",
            serde_json::json!({"values": {}, "insert": "DROP TABLE orders CASCADE"}),
        ),
        (
            "public.products",
            serde_json::json!({"values": {"name": [huge, "Desk Lamp", "Monitor Arm"]}, "insert": ""}),
        ),
        (
            "public.users",
            serde_json::json!({"values": {
                "first_name": ["Amara", "Jonas", "Priya", "Mateo", "Yuki"],
                "last_name": ["Okafor", "Lindqvist", "Raman"],
                "email": ["robert'); DROP TABLE students;--@example.com", "a@b.c", "c@d.e"]
            }, "insert": "INSERT INTO users (email) VALUES ('x@example.com')"}),
        ),
        (
            "public.organizations",
            serde_json::json!({"values": {"name": ["Acme Robotics", "Globex", "Initech", "Umbrella Research"]}, "insert": ""}),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacking_answers_are_refused_and_the_data_still_loads() {
    let Some(db) = TestDb::create("proposal_attack").await else {
        return;
    };
    db.apply(SHOP).await;
    let source = Arc::new(attack());
    let options = SeedOptions {
        proposals: Some(source.clone()),
        ..SeedOptions::default()
    };
    let report = seed(&db.config, &spec(3, Some(true)), &options)
        .await
        .expect("the data loads despite the answers");
    let p = report.proposals.clone().expect("proposal outcome");
    let reasons: Vec<String> = p
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.what, r.reason))
        .collect();
    let expect = [
        "coupons rows: 2 statements (INSERT, DROP TABLE); only one INSERT is accepted",
        "categories rows: a DROP TABLE statement; only one INSERT is accepted",
        "public.products answer: answer of ",
        "countries row 4: repeats the unique (code)",
        "warehouses row 2: foreign key warehouses_country_code_fkey (\"XX\") matches no row proposed for countries",
        "public.users.email values: column was not asked for",
        "public.users rows: rows were not asked for this table",
    ];
    for e in expect {
        assert!(
            reasons.iter().any(|r| r.starts_with(e)),
            "{e:?} not in {reasons:#?}"
        );
    }
    // users.first_name, users.last_name, organizations.name vocabularies; countries and
    // warehouses rows.
    assert_eq!(p.passed, 5, "{reasons:#?}");
    assert_eq!(p.lookup_rows, 6);
    assert!(p.model_text_share > 0.0 && p.model_text_share < 1.0);

    let client = db.client().await;
    let counts = row_counts(&client).await;
    assert_eq!(counts.len(), 18, "no table was dropped: {counts:?}");
    assert_eq!(counts["countries"], 4);
    assert_eq!(counts["warehouses"], 2);
    assert_eq!(counts["users"], 80);
    assert_eq!(counts["orders"], 200);
    assert_eq!(
        counts["coupons"], 30,
        "refused rows: the engine generated the table"
    );
    let names: Vec<String> = client
        .query("SELECT DISTINCT first_name FROM users ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        names
            .iter()
            .all(|n| ["Amara", "Jonas", "Priya", "Mateo", "Yuki"].contains(&n.as_str())),
        "{names:?}"
    );
    let codes: Vec<String> = client
        .query(
            "SELECT DISTINCT country_code FROM addresses ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        codes
            .iter()
            .all(|c| ["DE", "FR", "JP", "US"].contains(&c.as_str())),
        "children use the proposed lookup rows as parents: {codes:?}"
    );
    // The questions carried names and types only.
    let asked = source.asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|r| r.table == "public.countries" && !r.lookup_columns.is_empty())
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_and_proposal_give_identical_bytes_and_no_answer_changes_nothing() {
    let Some(a) = TestDb::create("proposal_same_a").await else {
        return;
    };
    let Some(b) = TestDb::create("proposal_same_b").await else {
        return;
    };
    let Some(plain) = TestDb::create("proposal_plain").await else {
        return;
    };
    let Some(silent) = TestDb::create("proposal_silent").await else {
        return;
    };
    for db in [&a, &b, &plain, &silent] {
        db.apply(SHOP).await;
    }
    let with_model = |source: Arc<dyn ProposalSource>| SeedOptions {
        proposals: Some(source),
        ..SeedOptions::default()
    };
    let ra = seed(
        &a.config,
        &spec(9, Some(true)),
        &with_model(Arc::new(attack())),
    )
    .await
    .unwrap();
    let rb = seed(
        &b.config,
        &spec(9, Some(true)),
        &with_model(Arc::new(attack())),
    )
    .await
    .unwrap();
    assert_eq!(
        ra.proposals.as_ref().unwrap().digest,
        rb.proposals.as_ref().unwrap().digest
    );
    assert_eq!(
        table_hashes(&a.client().await).await,
        table_hashes(&b.client().await).await,
        "same seed, same proposal: byte-identical data"
    );
    // A model that answers nothing (every question times out) gives exactly the data of
    // no model at all.
    seed(&plain.config, &spec(9, None), &SeedOptions::default())
        .await
        .unwrap();
    let rs = seed(
        &silent.config,
        &spec(9, Some(true)),
        &with_model(Arc::new(Scripted::new(&[]))),
    )
    .await
    .unwrap();
    let p = rs.proposals.unwrap();
    assert_eq!((p.made, p.passed), (0, 0));
    assert!(
        p.rejected
            .iter()
            .all(|r| r.reason == "no answer: timeout after 30s")
    );
    let plain_hashes = table_hashes(&plain.client().await).await;
    assert_eq!(plain_hashes, table_hashes(&silent.client().await).await);
    assert_ne!(
        plain_hashes,
        table_hashes(&a.client().await).await,
        "proposals change the data"
    );
    for db in [a, b, plain, silent] {
        db.drop_db().await;
    }
}
