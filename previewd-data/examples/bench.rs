//! Throughput of the data engine: rows generated per second (COPY text produced in memory,
//! nothing sent) and rows loaded per second (generated and loaded with COPY into the local
//! PostgreSQL, foreign keys and unique constraints enforced) for one million rows across a
//! six-table schema.
//!
//! ```sh
//! export $(scripts/pg-up | tail -n1)
//! cargo run --release -p previewd-data --example bench            # 1,000,000 rows
//! cargo run --release -p previewd-data --example bench -- 100000   # other totals
//! ```
//!
//! Prints one JSON object as its last line.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio_postgres::{Config, NoTls};

use previewd_data::{SeedOptions, Strategy, TestDataSpec, build_plan, introspect, seed};

const SCHEMA: &str = "
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled');
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    email varchar(120) NOT NULL UNIQUE,
    first_name text NOT NULL,
    last_name text NOT NULL,
    country_code char(2),
    created_at timestamptz NOT NULL
);
CREATE TABLE categories (
    id serial PRIMARY KEY,
    parent_id int REFERENCES categories,
    name text NOT NULL
);
CREATE TABLE products (
    id bigserial PRIMARY KEY,
    sku varchar(20) NOT NULL UNIQUE,
    name text NOT NULL,
    category_id int NOT NULL REFERENCES categories,
    price numeric(10, 2) NOT NULL CHECK (price >= 0)
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    status order_status NOT NULL,
    placed_at timestamptz NOT NULL,
    total numeric(12, 2) NOT NULL CHECK (total >= 0)
);
CREATE TABLE order_items (
    order_id bigint REFERENCES orders,
    line_no int,
    product_id bigint NOT NULL REFERENCES products,
    quantity int NOT NULL CHECK (quantity > 0),
    unit_price numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE TABLE reviews (
    id bigserial PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES products,
    customer_id bigint NOT NULL REFERENCES customers,
    rating smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body text,
    UNIQUE (product_id, customer_id)
);
";

async fn connect(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let url = std::env::var("PREVIEWD_PG_URL")
        .map_err(|_| anyhow::anyhow!("PREVIEWD_PG_URL is not set: run scripts/pg-up"))?;
    let admin = Config::from_str(&url)?;
    let name = format!("pvd_data_bench_{}", std::process::id());
    connect(&admin)
        .await?
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut config = admin.clone();
    config.dbname(&name);
    let result = run(&config, total).await;
    connect(&admin)
        .await?
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    let line = result?;
    println!("{line}");
    Ok(())
}

async fn run(config: &Config, total: u64) -> anyhow::Result<String> {
    connect(config).await?.batch_execute(SCHEMA).await?;
    // Shares of the total per table.
    let share = |f: f64| ((total as f64) * f).round() as i64;
    let counts = [
        ("customers", share(0.10)),
        ("categories", share(0.001).max(1)),
        ("products", share(0.019)),
        ("orders", share(0.25)),
        ("order_items", share(0.55)),
        ("reviews", share(0.08)),
    ];
    let rows: i64 = counts.iter().map(|(_, n)| n).sum();
    let spec = TestDataSpec {
        enabled: true,
        strategy: Strategy::Synthetic,
        ai_model: None,
        counts: counts.iter().map(|(t, n)| ((*t).to_string(), *n)).collect(),
        default_rows: Some(0),
        seed: Some(1),
    };

    // Generation only: every table's COPY text produced in memory on one thread.
    let client = connect(config).await?;
    let schema = introspect(&client, None).await?;
    let plan = build_plan(&schema, &spec, &Default::default(), Default::default())?;
    let (schema, plan) = (Arc::new(schema), Arc::new(plan));
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut buf = BytesMut::with_capacity(1 << 20);
    for level in &plan.levels {
        for &table in level {
            let n = plan.tables[table].rows;
            let mut row = 0;
            while row < n {
                let end = (row + 4096).min(n);
                previewd_data::load::write_rows(&schema, &plan, table, row, end, &mut buf);
                bytes += buf.len();
                buf.clear();
                row = end;
            }
        }
    }
    let generate_secs = started.elapsed().as_secs_f64();

    // Generation and loading: the real path.
    let report = seed(config, &spec, &SeedOptions::default()).await?;
    let load_secs = report.duration_ms as f64 / 1000.0;
    anyhow::ensure!(
        report.rows == rows as u64,
        "loaded {} of {rows} rows",
        report.rows
    );
    for t in &report.loaded {
        eprintln!("{:>12} {:>9} rows", t.table, t.rows);
    }
    Ok(serde_json::json!({
        "rows": rows,
        "tables": report.loaded.len(),
        "copyBytes": bytes,
        "generateSeconds": (generate_secs * 1000.0).round() / 1000.0,
        "rowsGeneratedPerSecond": (rows as f64 / generate_secs).round(),
        "loadSeconds": load_secs,
        "rowsLoadedPerSecond": (rows as f64 / load_secs).round(),
        "rowsLoadedPerMinute": (rows as f64 / load_secs * 60.0).round(),
        "parallelism": SeedOptions::default().load.parallelism,
    })
    .to_string())
}
