//! Loading a plan into PostgreSQL with `COPY ... FROM STDIN` (text format): one connection
//! and one transaction per table, the tables of a load level in parallel, rows generated
//! on a blocking thread while the previous chunk streams to the server. Afterwards the
//! deferred foreign keys of nullable cycles are filled in with one `UPDATE ... FROM` per
//! table, and serial/identity sequences are moved past the generated keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt, pin_mut};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::DataError;
use crate::generate::Value;
use crate::plan::Plan;
use crate::schema::{Schema, TableId, quote_ident};

/// Bytes per COPY chunk.
const CHUNK_BYTES: usize = 256 * 1024;

/// How loading runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Tables loaded at the same time (connections).
    pub parallelism: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoadOptions {
            parallelism: cores.clamp(2, 8),
        }
    }
}

/// Rows written to one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableLoad {
    /// `schema.table` (`table` for `public`).
    pub table: String,
    /// Rows written.
    pub rows: u64,
}

/// Opens a connection and drives it on the runtime.
pub async fn connect(config: &Config) -> Result<Client, DataError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    client
        .batch_execute(
            "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'",
        )
        .await?;
    Ok(client)
}

/// Appends one value in COPY text format.
pub fn write_copy_value(
    value: &Value,
    kind: &crate::schema::TypeKind,
    scratch: &mut String,
    out: &mut BytesMut,
) {
    if *value == Value::Null {
        out.put_slice(b"\\N");
        return;
    }
    scratch.clear();
    value.write_text(kind, scratch);
    for b in scratch.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            other => out.put_u8(other),
        }
    }
}

/// Writes rows `[from, to)` of a table in COPY text format (deferred foreign keys as NULL).
pub fn write_rows(
    schema: &Schema,
    plan: &Plan,
    table: TableId,
    from: u64,
    to: u64,
    out: &mut BytesMut,
) {
    let t = &plan.tables[table];
    let columns = t.written_columns();
    let deferred_cols: Vec<usize> = t
        .deferred_fks()
        .iter()
        .flat_map(|fk| schema.tables[table].foreign_keys[*fk].columns.clone())
        .collect();
    let mut scratch = String::new();
    for row in from..to {
        for (i, &c) in columns.iter().enumerate() {
            if i > 0 {
                out.put_u8(b'\t');
            }
            if deferred_cols.contains(&c) {
                out.put_slice(b"\\N");
                continue;
            }
            let v = plan.cell(schema, table, c, row);
            write_copy_value(&v, &schema.tables[table].columns[c].kind, &mut scratch, out);
        }
        out.put_u8(b'\n');
    }
}

/// Generates a whole table into chunks on a blocking thread.
fn spawn_generator(
    schema: Arc<Schema>,
    plan: Arc<Plan>,
    table: TableId,
) -> (mpsc::Receiver<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let handle = tokio::task::spawn_blocking(move || {
        let rows = plan.tables[table].rows;
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 4096);
        let mut row = 0;
        let step = 256;
        while row < rows {
            let end = (row + step).min(rows);
            write_rows(&schema, &plan, table, row, end, &mut buf);
            row = end;
            if buf.len() >= CHUNK_BYTES && tx.blocking_send(buf.split().freeze()).is_err() {
                return;
            }
        }
        if !buf.is_empty() {
            let _ = tx.blocking_send(buf.split().freeze());
        }
    });
    (rx, handle)
}

fn column_list(schema: &Schema, table: TableId, columns: &[usize]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(&schema.tables[table].columns[*c].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads one table in its own transaction.
async fn load_table(
    config: Config,
    schema: Arc<Schema>,
    plan: Arc<Plan>,
    table: TableId,
) -> Result<TableLoad, DataError> {
    let t = &schema.tables[table];
    let p = &plan.tables[table];
    let columns = p.written_columns();
    let mut client = connect(&config).await?;
    let tx = client.transaction().await?;
    let always: Vec<usize> = columns
        .iter()
        .copied()
        .filter(|c| t.columns[*c].identity_always)
        .collect();
    for c in &always {
        tx.batch_execute(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET GENERATED BY DEFAULT",
            t.qualified(),
            quote_ident(&t.columns[*c].name)
        ))
        .await?;
    }
    let statement = format!(
        "COPY {} ({}) FROM STDIN",
        t.qualified(),
        column_list(&schema, table, &columns)
    );
    let sink = tx.copy_in::<_, Bytes>(&statement).await?;
    pin_mut!(sink);
    let (mut rx, generator) = spawn_generator(schema.clone(), plan.clone(), table);
    while let Some(chunk) = rx.recv().await {
        sink.feed(chunk).await?;
    }
    generator
        .await
        .map_err(|e| DataError::Internal(format!("generator of {}: {e}", t.display_name())))?;
    let rows = sink.as_mut().finish().await?;
    for c in &always {
        tx.batch_execute(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET GENERATED ALWAYS",
            t.qualified(),
            quote_ident(&t.columns[*c].name)
        ))
        .await?;
    }
    for &c in &columns {
        if let Some(seq) = &t.columns[c].sequence {
            tx.execute(
                &format!(
                    "SELECT setval($1::text::regclass, GREATEST((SELECT max({}) FROM {})::int8, 1))",
                    quote_ident(&t.columns[c].name),
                    t.qualified()
                ),
                &[seq],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(TableLoad {
        table: t.display_name(),
        rows,
    })
}

/// Fills in foreign keys that were written NULL because they close a cycle.
async fn fill_deferred(
    client: &mut Client,
    schema: &Schema,
    plan: &Plan,
    table: TableId,
) -> Result<u64, DataError> {
    let t = &schema.tables[table];
    let p = &plan.tables[table];
    let Some(key) = t.row_key() else {
        return Ok(0);
    };
    let fk_cols: Vec<usize> = p
        .deferred_fks()
        .iter()
        .flat_map(|fk| t.foreign_keys[*fk].columns.clone())
        .filter(|c| !key.contains(c))
        .collect();
    if fk_cols.is_empty() {
        return Ok(0);
    }
    let mut all = key.clone();
    all.extend(&fk_cols);
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE previewd_deferred ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
        column_list(schema, table, &all),
        t.qualified()
    ))
    .await?;
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY previewd_deferred ({}) FROM STDIN",
            column_list(schema, table, &all)
        ))
        .await?;
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 4096);
    let mut scratch = String::new();
    for row in 0..p.rows {
        let values: Vec<Value> = fk_cols
            .iter()
            .map(|c| plan.cell(schema, table, *c, row))
            .collect();
        if values.iter().all(|v| *v == Value::Null) {
            continue;
        }
        for (i, &c) in key.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b'\t');
            }
            let v = plan.cell(schema, table, c, row);
            write_copy_value(&v, &t.columns[c].kind, &mut scratch, &mut buf);
        }
        for (v, &c) in values.iter().zip(&fk_cols) {
            buf.put_u8(b'\t');
            write_copy_value(v, &t.columns[c].kind, &mut scratch, &mut buf);
        }
        buf.put_u8(b'\n');
        if buf.len() >= CHUNK_BYTES {
            sink.feed(buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.split().freeze()).await?;
    }
    sink.as_mut().finish().await?;
    let set: Vec<String> = fk_cols
        .iter()
        .map(|c| {
            let n = quote_ident(&t.columns[*c].name);
            format!("{n} = d.{n}")
        })
        .collect();
    let on: Vec<String> = key
        .iter()
        .map(|c| {
            let n = quote_ident(&t.columns[*c].name);
            format!("t.{n} = d.{n}")
        })
        .collect();
    let updated = tx
        .execute(
            &format!(
                "UPDATE {} AS t SET {} FROM previewd_deferred d WHERE {}",
                t.qualified(),
                set.join(", "),
                on.join(" AND ")
            ),
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(updated)
}

/// What loading did.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// Rows per table, in load order.
    pub tables: Vec<TableLoad>,
    /// Rows updated to fill in deferred foreign keys.
    pub deferred_updates: u64,
    /// Wall time.
    pub duration: Duration,
}

/// Loads every table of the plan.
pub async fn load(
    config: &Config,
    schema: Arc<Schema>,
    plan: Arc<Plan>,
    options: &LoadOptions,
) -> Result<LoadOutcome, DataError> {
    let started = Instant::now();
    let mut tables = Vec::new();
    for level in &plan.levels {
        let tasks = futures::stream::iter(
            level
                .iter()
                .copied()
                .map(|table| load_table(config.clone(), schema.clone(), plan.clone(), table)),
        )
        .buffered(options.parallelism.max(1));
        pin_mut!(tasks);
        while let Some(result) = tasks.next().await {
            let loaded = result?;
            tracing::info!(table = %loaded.table, rows = loaded.rows, "loaded");
            tables.push(loaded);
        }
    }
    let mut deferred_updates = 0;
    let mut client = connect(config).await?;
    for level in &plan.levels {
        for &table in level {
            if !plan.tables[table].deferred_fks().is_empty() {
                deferred_updates += fill_deferred(&mut client, &schema, &plan, table).await?;
            }
        }
    }
    Ok(LoadOutcome {
        tables,
        deferred_updates,
        duration: started.elapsed(),
    })
}
