//! Throwaway databases on the PostgreSQL that `scripts/pg-up` starts.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::str::FromStr;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Config, NoTls};

/// `PREVIEWD_PG_URL`, or `None` when `PREVIEWD_SKIP_PG=1`.
pub fn pg_url() -> Option<String> {
    if std::env::var("PREVIEWD_SKIP_PG").is_ok_and(|v| v == "1") {
        eprintln!("PREVIEWD_SKIP_PG=1: skipping the PostgreSQL data tests");
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

pub async fn connect(config: &Config) -> Client {
    let (client, conn) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1",
        )
        .await
        .expect("session settings");
    client
}

/// A database created for one test and dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub config: Config,
    pub url: String,
    admin: Config,
}

impl TestDb {
    pub async fn create(label: &str) -> Option<TestDb> {
        let url = pg_url()?;
        let admin = Config::from_str(&url).expect("PREVIEWD_PG_URL");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "pvd_data_{label}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000
        );
        let client = connect(&admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let mut config = admin.clone();
        config.dbname(&name);
        let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
        let url = format!("{base}/{name}");
        Some(TestDb {
            name,
            config,
            url,
            admin,
        })
    }

    pub async fn client(&self) -> Client {
        connect(&self.config).await
    }

    pub async fn apply(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .expect("schema");
    }

    pub async fn drop_db(self) {
        let client = connect(&self.admin).await;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop database");
    }
}

/// Row counts of every table in `public`.
pub async fn row_counts(client: &Client) -> std::collections::BTreeMap<String, i64> {
    let tables = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let name: String = t.get(0);
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
            .await
            .unwrap()
            .get(0);
        out.insert(name, n);
    }
    out
}

/// SHA-256 of `COPY (SELECT * FROM t ORDER BY t::text) TO STDOUT` per table of `public`.
pub async fn table_hashes(client: &Client) -> std::collections::BTreeMap<String, String> {
    let tables = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let name: String = t.get(0);
        let stream = client
            .copy_out(&format!(
                "COPY (SELECT * FROM \"{name}\" AS t ORDER BY t::text) TO STDOUT"
            ))
            .await
            .unwrap();
        futures::pin_mut!(stream);
        let mut h = Sha256::new();
        while let Some(chunk) = stream.next().await {
            h.update(chunk.unwrap());
        }
        out.insert(name, format!("{:x}", h.finalize()));
    }
    out
}
