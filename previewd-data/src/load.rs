//! Loading a plan into PostgreSQL with `COPY ... FROM STDIN` (text format): the tables of a
//! load level in parallel, a large table split into row ranges copied at the same time on
//! separate connections whose transactions commit together, rows generated on blocking
//! threads while the previous chunk streams to the server. Afterwards the
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
    /// Tables loaded at the same time, and COPY streams per large table.
    pub parallelism: usize,
    /// Tables with at least this many rows are split into `parallelism` streams.
    pub split_rows: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoadOptions {
            parallelism: cores.clamp(2, 8),
            split_rows: SPLIT_ROWS,
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

/// Generates rows `[from, to)` of a table into chunks on a blocking thread.
fn spawn_generator(
    schema: Arc<Schema>,
    plan: Arc<Plan>,
    table: TableId,
    from: u64,
    to: u64,
) -> (mpsc::Receiver<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let handle = tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 4096);
        let mut row = from;
        let step = 256;
        while row < to {
            let end = (row + step).min(to);
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

/// Rows from which a table is loaded through several COPY streams at once (default).
pub const SPLIT_ROWS: u64 = 50_000;

/// Streams rows `[from, to)` into an open transaction on `client`.
async fn copy_range(
    client: &Client,
    statement: &str,
    schema: &Arc<Schema>,
    plan: &Arc<Plan>,
    table: TableId,
    range: (u64, u64),
) -> Result<u64, DataError> {
    let sink = client.copy_in::<_, Bytes>(statement).await?;
    pin_mut!(sink);
    let (mut rx, generator) =
        spawn_generator(schema.clone(), plan.clone(), table, range.0, range.1);
    while let Some(chunk) = rx.recv().await {
        sink.feed(chunk).await?;
    }
    generator.await.map_err(|e| {
        DataError::Internal(format!(
            "generator of {}: {e}",
            schema.tables[table].display_name()
        ))
    })?;
    Ok(sink.as_mut().finish().await?)
}

/// Loads one table. Large tables without `GENERATED ALWAYS` columns are split into row
/// ranges copied at the same time on separate connections (PostgreSQL checks each stream on
/// its own core); every stream's transaction commits only once all of them succeeded, so a
/// failure leaves the table empty.
async fn load_table(
    config: Config,
    schema: Arc<Schema>,
    plan: Arc<Plan>,
    table: TableId,
    streams: usize,
    split_rows: u64,
) -> Result<TableLoad, DataError> {
    let t = &schema.tables[table];
    let p = &plan.tables[table];
    let columns = p.written_columns();
    let always: Vec<usize> = columns
        .iter()
        .copied()
        .filter(|c| t.columns[*c].identity_always)
        .collect();
    // A self-reference points at earlier rows, which another stream's open transaction
    // would hide: such tables load through one stream.
    let self_referencing = t.foreign_keys.iter().any(|f| f.parent == table);
    let streams = if always.is_empty() && !self_referencing && p.rows >= split_rows.max(1) {
        streams.clamp(1, 8) as u64
    } else {
        1
    };
    let statement = format!(
        "COPY {} ({}) FROM STDIN",
        t.qualified(),
        column_list(&schema, table, &columns)
    );
    let per = p.rows.div_ceil(streams);
    let ranges: Vec<(u64, u64)> = (0..streams)
        .map(|i| (i * per, ((i + 1) * per).min(p.rows)))
        .filter(|(a, b)| a < b)
        .collect();
    let results = futures::future::join_all(ranges.into_iter().map(|range| {
        let (config, schema, plan, statement, always) = (
            config.clone(),
            schema.clone(),
            plan.clone(),
            statement.clone(),
            always.clone(),
        );
        async move {
            let client = connect(&config).await?;
            let t = &schema.tables[table];
            client.batch_execute("BEGIN").await?;
            for c in &always {
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {} ALTER COLUMN {} SET GENERATED BY DEFAULT",
                        t.qualified(),
                        quote_ident(&t.columns[*c].name)
                    ))
                    .await?;
            }
            let rows = copy_range(&client, &statement, &schema, &plan, table, range).await?;
            for c in &always {
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {} ALTER COLUMN {} SET GENERATED ALWAYS",
                        t.qualified(),
                        quote_ident(&t.columns[*c].name)
                    ))
                    .await?;
            }
            Ok::<_, DataError>((client, rows))
        }
    }))
    .await;
    // Any failure: the open transactions roll back when their connections drop.
    let mut clients = Vec::with_capacity(results.len());
    let mut rows = 0;
    for result in results {
        let (client, n) = result?;
        rows += n;
        clients.push(client);
    }
    for client in &clients {
        client.batch_execute("COMMIT").await?;
    }
    let client = match clients.into_iter().next() {
        Some(c) => c,
        None => connect(&config).await?,
    };
    for &c in &columns {
        if let Some(seq) = &t.columns[c].sequence {
            client
                .execute(
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
        let streams = options.parallelism.max(1);
        let tasks = futures::stream::iter(level.iter().copied().map(|table| {
            load_table(
                config.clone(),
                schema.clone(),
                plan.clone(),
                table,
                streams,
                options.split_rows,
            )
        }))
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
