//! History in PostgreSQL.
//!
//! The table is created on connect (`CREATE TABLE IF NOT EXISTS`, under an advisory lock
//! so that replicas starting together do not race). Timestamps are stored as Unix
//! milliseconds (`BIGINT`, pushes as `BIGINT[]`) so the store needs no optional
//! `tokio-postgres` features.

use std::str::FromStr;

use async_trait::async_trait;
use jiff::Timestamp;
use previewd_core::Tier;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row};

use super::{EnvironmentRecord, HistoryError, HistoryStore, PeakUsage};

/// Default table name.
pub const DEFAULT_TABLE: &str = "previewd_environment_history";

/// Arbitrary constant identifying previewd's migration advisory lock.
const MIGRATION_LOCK_KEY: i64 = 0x7072_6576_6965_7764; // "previewd"

/// History in a PostgreSQL table.
pub struct PostgresHistory {
    url: String,
    table: String,
    client: Mutex<Option<std::sync::Arc<Client>>>,
}

impl std::fmt::Debug for PostgresHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print the URL: it carries the password
        f.debug_struct("PostgresHistory")
            .field("table", &self.table)
            .finish()
    }
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl PostgresHistory {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) and creates the table if
    /// needed.
    pub async fn connect(url: &str) -> Result<Self, HistoryError> {
        Self::connect_with_table(url, DEFAULT_TABLE).await
    }

    /// [`PostgresHistory::connect`] with another table name (lowercase letters, digits and
    /// `_`), e.g. one per test.
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, HistoryError> {
        if !valid_identifier(table) {
            return Err(HistoryError::Encoding(format!(
                "invalid table name {table:?}"
            )));
        }
        let store = PostgresHistory {
            url: url.to_owned(),
            table: table.to_owned(),
            client: Mutex::new(None),
        };
        store.client().await?;
        Ok(store)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// A live client, reconnecting (and migrating) when the connection dropped.
    async fn client(&self) -> Result<std::sync::Arc<Client>, HistoryError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let (mut client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "history database connection closed");
            }
        });
        self.migrate(&mut client).await?;
        let client = std::sync::Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    async fn migrate(&self, client: &mut Client) -> Result<(), HistoryError> {
        let t = &self.table;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                repo TEXT NOT NULL,
                pr BIGINT NOT NULL,
                opened_at_ms BIGINT NOT NULL,
                author TEXT NOT NULL,
                pushes_ms BIGINT[] NOT NULL DEFAULT '{{}}',
                closed_at_ms BIGINT,
                tier TEXT NOT NULL,
                peak_cpu_millicores BIGINT,
                peak_memory_bytes BIGINT,
                peak_hit_limits BOOLEAN,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (repo, pr, opened_at_ms)
            );
            ALTER TABLE {t} ADD COLUMN IF NOT EXISTS ready_at_ms BIGINT;
            ALTER TABLE {t} ADD COLUMN IF NOT EXISTS slept_ms BIGINT[] NOT NULL DEFAULT '{{}}';
            ALTER TABLE {t} ADD COLUMN IF NOT EXISTS cost_micros BIGINT;
            ALTER TABLE {t} ADD COLUMN IF NOT EXISTS peak_by_service TEXT;
            CREATE INDEX IF NOT EXISTS {t}_repo_idx ON {t} (repo, opened_at_ms DESC);
            CREATE INDEX IF NOT EXISTS {t}_author_idx ON {t} (author, opened_at_ms DESC);"
        ))
        .await?;
        tx.commit().await?;
        Ok(())
    }

    fn columns() -> &'static str {
        "repo, pr, opened_at_ms, author, pushes_ms, closed_at_ms, tier, \
         peak_cpu_millicores, peak_memory_bytes, peak_hit_limits, ready_at_ms, slept_ms, \
         cost_micros, peak_by_service"
    }

    async fn query(
        &self,
        filter: &str,
        key: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter} = $1 ORDER BY opened_at_ms DESC, repo, pr LIMIT $2",
            Self::columns(),
            self.table
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&sql, &[&key, &limit]).await?;
        rows.iter().map(from_row).collect()
    }
}

fn ms(ts: Timestamp) -> i64 {
    ts.as_millisecond()
}

fn ts(ms: i64) -> Result<Timestamp, HistoryError> {
    Timestamp::from_millisecond(ms).map_err(|e| HistoryError::Encoding(e.to_string()))
}

fn to_i64(v: u64) -> Result<i64, HistoryError> {
    i64::try_from(v).map_err(|_| HistoryError::Encoding(format!("{v} does not fit in BIGINT")))
}

fn to_u64(v: i64) -> Result<u64, HistoryError> {
    u64::try_from(v).map_err(|_| HistoryError::Encoding(format!("negative value {v}")))
}

fn from_row(row: &Row) -> Result<EnvironmentRecord, HistoryError> {
    let pushes: Vec<i64> = row.try_get("pushes_ms")?;
    let closed: Option<i64> = row.try_get("closed_at_ms")?;
    let tier: String = row.try_get("tier")?;
    let cpu: Option<i64> = row.try_get("peak_cpu_millicores")?;
    let mem: Option<i64> = row.try_get("peak_memory_bytes")?;
    let hit: Option<bool> = row.try_get("peak_hit_limits")?;
    let ready: Option<i64> = row.try_get("ready_at_ms")?;
    let slept: Vec<i64> = row.try_get("slept_ms")?;
    let peak_usage = match (cpu, mem, hit) {
        (Some(cpu), Some(mem), Some(hit)) => Some(PeakUsage {
            cpu_millicores: to_u64(cpu)?,
            memory_bytes: to_u64(mem)?,
            hit_limits: hit,
        }),
        _ => None,
    };
    Ok(EnvironmentRecord {
        repo: row.try_get("repo")?,
        pr: to_u64(row.try_get("pr")?)?,
        author: row.try_get("author")?,
        opened_at: ts(row.try_get("opened_at_ms")?)?,
        pushes: pushes.into_iter().map(ts).collect::<Result<_, _>>()?,
        closed_at: closed.map(ts).transpose()?,
        tier: Tier::from_str(&tier)
            .map_err(|_| HistoryError::Encoding(format!("unknown tier {tier:?}")))?,
        peak_usage,
        ready_at: ready.map(ts).transpose()?,
        slept: slept.into_iter().map(ts).collect::<Result<_, _>>()?,
        cost_micros: row.try_get("cost_micros")?,
        peak_by_service: match row.try_get::<_, Option<String>>("peak_by_service")? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| HistoryError::Encoding(format!("peak_by_service: {e}")))?,
            None => Default::default(),
        },
    })
}

#[async_trait]
impl HistoryStore for PostgresHistory {
    async fn upsert(&self, record: &EnvironmentRecord) -> Result<(), HistoryError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {t} ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (repo, pr, opened_at_ms) DO UPDATE SET
               author = EXCLUDED.author,
               pushes_ms = EXCLUDED.pushes_ms,
               closed_at_ms = EXCLUDED.closed_at_ms,
               tier = EXCLUDED.tier,
               peak_cpu_millicores = EXCLUDED.peak_cpu_millicores,
               peak_memory_bytes = EXCLUDED.peak_memory_bytes,
               peak_hit_limits = EXCLUDED.peak_hit_limits,
               ready_at_ms = EXCLUDED.ready_at_ms,
               slept_ms = EXCLUDED.slept_ms,
               cost_micros = EXCLUDED.cost_micros,
               peak_by_service = EXCLUDED.peak_by_service,
               updated_at = now()",
            t = self.table,
            cols = Self::columns()
        );
        let pushes: Vec<i64> = record.pushes.iter().copied().map(ms).collect();
        let closed = record.closed_at.map(ms);
        let ready = record.ready_at.map(ms);
        let slept: Vec<i64> = record.slept.iter().copied().map(ms).collect();
        let by_service: Option<String> = (!record.peak_by_service.is_empty())
            .then(|| serde_json::to_string(&record.peak_by_service))
            .transpose()
            .map_err(|e| HistoryError::Encoding(e.to_string()))?;
        let (cpu, mem, hit) = match record.peak_usage {
            Some(p) => (
                Some(to_i64(p.cpu_millicores)?),
                Some(to_i64(p.memory_bytes)?),
                Some(p.hit_limits),
            ),
            None => (None, None, None),
        };
        client
            .execute(
                &sql,
                &[
                    &record.repo,
                    &to_i64(record.pr)?,
                    &ms(record.opened_at),
                    &record.author,
                    &pushes,
                    &closed,
                    &record.tier.as_str(),
                    &cpu,
                    &mem,
                    &hit,
                    &ready,
                    &slept,
                    &record.cost_micros,
                    &by_service,
                ],
            )
            .await?;
        Ok(())
    }

    async fn latest(&self, repo: &str, pr: u64) -> Result<Option<EnvironmentRecord>, HistoryError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM {} WHERE repo = $1 AND pr = $2 ORDER BY opened_at_ms DESC LIMIT 1",
            Self::columns(),
            self.table
        );
        let rows = client.query(&sql, &[&repo, &to_i64(pr)?]).await?;
        rows.first().map(from_row).transpose()
    }

    async fn by_repo(
        &self,
        repo: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        self.query("repo", repo, limit).await
    }

    async fn by_author(
        &self,
        author: &str,
        limit: usize,
    ) -> Result<Vec<EnvironmentRecord>, HistoryError> {
        self.query("author", author, limit).await
    }
}
