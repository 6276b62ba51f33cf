//! Model-assisted test data on the 18-table shop schema with a real model: what the model
//! proposed, what passed validation and why the rest failed, the share of text values that
//! came from the model, a few sample rows, and rows per second with and without the model
//! (the proposal cached, as it is after the first environment of a schema).
//!
//! ```sh
//! export $(scripts/pg-up | tail -n1)
//! export $(scripts/llm-up | tail -n1)
//! cargo run --release -p previewd-ai --example data_proposals            # 200,000 rows
//! cargo run --release -p previewd-ai --example data_proposals -- 50000   # other totals
//! ```
//!
//! Every run seeds a fresh database; the timed runs alternate (no model, model) three
//! times and the median of each is reported. "Cached" means what the operator's cache
//! gives every environment after the first: the timed runs replay the answers (and the
//! failures) of the first run without asking the model again. Prints one JSON object as
//! its last line.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use previewd_ai::config::AiConfig;
use previewd_ai::data::ModelProposer;
use previewd_ai::provider::layers::stack_around;
use previewd_ai::provider::{OpenAiCompatible, ResponseFormatStyle};
use previewd_data::proposal::{ProposalError, ProposalSource, TableRequest};
use previewd_data::{SeedOptions, SeedReport, Strategy, TestDataSpec, seed};
use tokio_postgres::{Client, Config, NoTls};

const SHOP: &str = include_str!("../../previewd-data/tests/schemas/shop.sql");

async fn connect(config: &Config) -> Client {
    let (client, conn) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn fresh_db(admin: &Config, name: &str) -> Config {
    let client = connect(admin).await;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop database");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let mut config = admin.clone();
    config.dbname(name);
    connect(&config)
        .await
        .batch_execute(SHOP)
        .await
        .expect("schema");
    config
}

async fn drop_db(admin: &Config, name: &str) {
    let _ = connect(admin)
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

fn spec(total: i64, ai: bool) -> TestDataSpec {
    // About the shares of the engine's bench: many order lines, fewer of everything else.
    let share = |f: f64| ((total as f64) * f) as i64;
    TestDataSpec {
        enabled: true,
        strategy: Strategy::Synthetic,
        ai_model: ai.then_some(true),
        counts: [
            ("users", share(0.10)),
            ("orders", share(0.20)),
            ("order_items", share(0.40)),
            ("products", share(0.05)),
            ("reviews", share(0.10)),
            ("employees", share(0.02)),
            ("addresses", share(0.08)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        default_rows: Some(share(0.005).max(10)),
        seed: Some(11),
    }
}

/// Asks the model once per question and replays the outcome afterwards.
struct Replay {
    inner: Arc<dyn ProposalSource>,
    seen: std::sync::Mutex<std::collections::HashMap<String, Result<serde_json::Value, String>>>,
}

#[async_trait::async_trait]
impl ProposalSource for Replay {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn propose(&self, request: &TableRequest) -> Result<serde_json::Value, ProposalError> {
        let key = request.fingerprint();
        if let Some(hit) = self.seen.lock().unwrap().get(&key).cloned() {
            return hit.map_err(ProposalError);
        }
        let answer = self.inner.propose(request).await.map_err(|e| e.0);
        self.seen.lock().unwrap().insert(key, answer.clone());
        answer.map_err(ProposalError)
    }
}

fn rows_per_second(r: &SeedReport) -> f64 {
    r.rows as f64 / (r.duration_ms.max(1) as f64 / 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let total: i64 = std::env::args()
        .nth(1)
        .map_or(200_000, |s| s.parse().expect("row total"));
    let pg = std::env::var("PREVIEWD_PG_URL").expect("PREVIEWD_PG_URL (scripts/pg-up)");
    let llm = std::env::var("PREVIEWD_LLM_URL").expect("PREVIEWD_LLM_URL (scripts/llm-up)");
    let model = std::env::var("PREVIEWD_LLM_MODEL").unwrap_or("smollm2-135m-instruct".into());
    let admin = Config::from_str(&pg).expect("PREVIEWD_PG_URL");

    let provider = Arc::new(
        OpenAiCompatible::new(&llm, &model, None)
            .expect("provider")
            .with_response_format(ResponseFormatStyle::Auto)
            .with_seed(Some(7)),
    );
    let stack = stack_around(
        provider,
        &AiConfig {
            timeout: Duration::from_secs(300),
            ..AiConfig::default()
        },
    );
    let proposer = Arc::new(Replay {
        inner: Arc::new(ModelProposer::new(stack.provider).with_deadline(Duration::from_secs(300))),
        seen: Default::default(),
    });
    let with_model = SeedOptions {
        proposals: Some(proposer.clone()),
        ..SeedOptions::default()
    };

    // 1. The proposal, asked once (its time is the model's, not the engine's).
    let started = std::time::Instant::now();
    let config = fresh_db(&admin, "pvd_proposals_first").await;
    let first = seed(&config, &spec(2_000, true), &with_model)
        .await
        .expect("seeding with the model");
    let asked_in = started.elapsed();
    let outcome = first.proposals.clone().expect("proposal outcome");
    println!(
        "proposals: {} tables asked in {:.0} s, {} made, {} passed, {} lookup rows, \
         model text share {:.1}% (at 2,000 rows), digest {}",
        outcome.requests,
        asked_in.as_secs_f64(),
        outcome.made,
        outcome.passed,
        outcome.lookup_rows,
        outcome.model_text_share * 100.0,
        &outcome.digest[..12]
    );
    for r in &outcome.rejected {
        println!("  rejected {}: {}", r.what, r.reason);
    }
    let client = connect(&config).await;
    for (label, sql) in [
        (
            "countries",
            "SELECT code, name FROM countries ORDER BY code LIMIT 5",
        ),
        (
            "warehouses",
            "SELECT city, country_code FROM warehouses ORDER BY id LIMIT 5",
        ),
        (
            "categories",
            "SELECT name, slug FROM categories ORDER BY id LIMIT 5",
        ),
        (
            "coupons",
            "SELECT code, percent_off::text, valid_from::text FROM coupons ORDER BY code LIMIT 5",
        ),
        (
            "users",
            "SELECT first_name, last_name, email FROM users ORDER BY id LIMIT 5",
        ),
        (
            "organizations",
            "SELECT name FROM organizations ORDER BY id LIMIT 5",
        ),
        (
            "products",
            "SELECT name, sku FROM products ORDER BY sku LIMIT 5",
        ),
        (
            "addresses",
            "SELECT street, city FROM addresses ORDER BY id LIMIT 5",
        ),
        (
            "reviews",
            "SELECT left(body, 60) FROM reviews WHERE body IS NOT NULL ORDER BY id LIMIT 3",
        ),
    ] {
        let rows = client.query(sql, &[]).await.expect("sample");
        for row in rows {
            let cells: Vec<String> = (0..row.len())
                .map(|i| {
                    row.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect();
            println!("  sample {label}: {}", cells.join(" | "));
        }
    }
    drop(client);
    drop_db(&admin, "pvd_proposals_first").await;

    // 2. Throughput with and without the (now cached) proposal.
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut share = 0.0;
    for round in 0..3 {
        let name = format!("pvd_proposals_plain_{round}");
        let config = fresh_db(&admin, &name).await;
        let r = seed(&config, &spec(total, false), &SeedOptions::default())
            .await
            .expect("seeding without a model");
        println!(
            "round {round}: without the model {} rows in {} ms",
            r.rows, r.duration_ms
        );
        without.push(rows_per_second(&r));
        drop_db(&admin, &name).await;

        let name = format!("pvd_proposals_model_{round}");
        let config = fresh_db(&admin, &name).await;
        let r = seed(&config, &spec(total, true), &with_model)
            .await
            .expect("seeding with the model");
        let p = r.proposals.clone().expect("outcome");
        assert_eq!(p.digest, outcome.digest, "the cached proposal is the same");
        share = p.model_text_share;
        println!(
            "round {round}: with the model {} rows in {} ms",
            r.rows, r.duration_ms
        );
        with.push(rows_per_second(&r));
        drop_db(&admin, &name).await;
    }
    let (without, with) = (median(without), median(with));
    println!(
        "{}",
        serde_json::json!({
            "rows": total,
            "tablesAsked": outcome.requests,
            "proposalsMade": outcome.made,
            "proposalsPassed": outcome.passed,
            "rejections": outcome.rejected.len() as u32 + outcome.rejected_omitted,
            "lookupRows": outcome.lookup_rows,
            "modelTextShare": (share * 1000.0).round() / 1000.0,
            "askSeconds": asked_in.as_secs(),
            "rowsPerSecondWithoutModel": without.round(),
            "rowsPerSecondWithModel": with.round(),
            "ratio": ((with / without) * 1000.0).round() / 1000.0,
        })
    );
}
