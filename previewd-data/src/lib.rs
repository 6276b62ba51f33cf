//! Synthetic, reproducible test data for a preview environment's PostgreSQL database.
//!
//! [`seed`] reads the schema after the application's migrations ran, plans rows per table
//! (ordered by required foreign keys; nullable cycles are filled in afterwards; required
//! cycles are refused with the cycle named), generates every cell as a pure function of
//! (seed, table, column, row) and loads the tables with COPY, in parallel where foreign keys
//! allow. The same seed gives byte-identical data. Tables that already hold rows are left as
//! they are and serve as parents, so running it twice changes nothing.
//!
//! With `aiModel: true` and a [`proposal::ProposalSource`], a model proposes value
//! vocabularies for text columns and a few rows for small lookup tables; everything is
//! validated against the schema before use (see [`proposal`]), and the deterministic engine
//! still makes the volume.
//!
//! The strategy `production-snapshot` restores an anonymised dump instead (see
//! [`snapshot`]); `minimal` seeds only the tables named in `counts` and the parent rows
//! their required foreign keys need.

pub mod advisor;
pub mod checks;
pub mod error;
pub mod generate;
pub mod load;
pub mod plan;
pub mod proposal;
pub mod schema;
pub mod snapshot;
pub mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Config;

pub use advisor::{CachedAdvisor, GeneratorAdvisor, HeuristicsOnly, SchemaOutline};
pub use error::DataError;
pub use generate::GeneratorKind;
pub use load::{LoadOptions, TableLoad};
pub use plan::{Plan, build_plan};
pub use proposal::{ProposalOutcome, ProposalSource};
pub use schema::{Schema, introspect};
pub use snapshot::{DownloadPolicy, SnapshotSource};
pub use spec::{Strategy, TestDataSpec};

use crate::plan::ExistingKeys;
use crate::schema::quote_ident;

/// Rows read from a table that already holds data, to serve as parents.
const MAX_EXISTING_PARENT_ROWS: i64 = 1_000_000;

/// How [`seed`] runs.
#[derive(Clone, Default)]
pub struct SeedOptions {
    /// PostgreSQL schemas to seed; default: every user schema.
    pub schemas: Option<Vec<String>>,
    /// Loading parallelism.
    pub load: LoadOptions,
    /// The dump for `production-snapshot`.
    pub snapshot: Option<SnapshotSource>,
    /// How the dump is downloaded and checked.
    pub snapshot_policy: snapshot::DownloadPolicy,
    /// Chooses generator kinds when the spec sets `aiModel: true`.
    pub advisor: Option<Arc<dyn GeneratorAdvisor>>,
    /// Proposes vocabularies and lookup rows when the spec sets `aiModel: true`.
    pub proposals: Option<Arc<dyn ProposalSource>>,
}

/// What seeding did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedReport {
    /// Strategy used.
    pub strategy: Option<Strategy>,
    /// Tables that received rows.
    pub tables: u64,
    /// Rows written per table, in load order.
    pub loaded: Vec<TableLoad>,
    /// Tables that already held rows and were left as they are.
    pub kept: Vec<String>,
    /// Total rows written.
    pub rows: u64,
    /// Rows updated afterwards to close nullable foreign-key cycles.
    pub deferred_updates: u64,
    /// Who chose the generators (`heuristics` or the advisor's name).
    pub generators: String,
    /// Notes: capped counts, check constraints left to the database, advice ignored.
    pub warnings: Vec<String>,
    /// What the model proposed and what passed validation (`aiModel: true` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposals: Option<ProposalOutcome>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// Seeds the database at `config` according to `spec`.
pub async fn seed(
    config: &Config,
    spec: &TestDataSpec,
    options: &SeedOptions,
) -> Result<SeedReport, DataError> {
    let started = Instant::now();
    if spec.strategy == Strategy::ProductionSnapshot {
        let source = options.snapshot.as_ref().ok_or_else(|| {
            DataError::Spec("strategy production-snapshot needs a snapshot source".into())
        })?;
        let outcome = snapshot::restore(config, source, &options.snapshot_policy).await?;
        return Ok(SeedReport {
            strategy: Some(spec.strategy),
            tables: outcome.tables,
            loaded: Vec::new(),
            kept: Vec::new(),
            rows: outcome.rows,
            deferred_updates: 0,
            generators: "snapshot".into(),
            warnings: Vec::new(),
            proposals: None,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    let mut client = load::connect(config).await?;
    let mut schema = introspect(&client, options.schemas.as_deref()).await?;
    let mut warnings = Vec::new();
    let mut generators = "heuristics".to_string();
    let ai = spec.ai_model == Some(true);
    let mut advice = match (&options.advisor, ai) {
        (Some(advisor), true) => match advisor.advise(&SchemaOutline::of(&schema)).await {
            Ok(a) => {
                generators = advisor.name().to_string();
                a
            }
            Err(e) => {
                warnings.push(format!(
                    "generator advice unavailable ({e}); heuristics used"
                ));
                BTreeMap::new()
            }
        },
        (None, true) if options.proposals.is_none() => {
            warnings.push("aiModel is set but no model is configured; heuristics used".into());
            BTreeMap::new()
        }
        _ => BTreeMap::new(),
    };
    let mut proposals = None;
    let mut lookup = Vec::new();
    let mut inserted = Vec::new();
    if let (Some(source), true) = (&options.proposals, ai) {
        let mut validated = proposal::propose(&schema, source.as_ref()).await;
        let explicit: Vec<schema::TableId> = spec
            .counts
            .keys()
            .filter_map(|name| schema.find(name).ok().flatten())
            .collect();
        let mut outcome = std::mem::take(&mut validated.outcome);
        validated.rows.retain(|r| {
            let t = &schema.tables[r.table];
            let why = if spec.strategy == Strategy::Minimal {
                Some("strategy minimal seeds only the tables named in counts")
            } else if t.has_rows {
                Some("the table already holds rows")
            } else if explicit.contains(&r.table) {
                Some("counts names the table, so its rows are generated")
            } else {
                None
            };
            if let Some(why) = why {
                outcome.passed = outcome.passed.saturating_sub(1);
                outcome.rejected.push(proposal::Rejection {
                    what: format!("{} rows", t.display_name()),
                    reason: format!("not used: {why}"),
                });
            }
            why.is_none()
        });
        inserted =
            proposal::insert_lookup_rows(&mut client, &schema, &validated.rows, &mut outcome)
                .await?;
        for t in &inserted {
            schema.tables[*t].has_rows = true;
        }
        advice.extend(validated.advice());
        lookup = validated.rows;
        generators = format!("{generators} + proposals from {}", source.name());
        proposals = Some(outcome);
    }
    let existing = read_existing_parents(&client, &schema).await?;
    let plan = build_plan(&schema, spec, &advice, existing)?;
    warnings.extend(plan.warnings.iter().cloned());
    let kept: Vec<String> = schema
        .tables
        .iter()
        .enumerate()
        .filter(|(i, t)| t.has_rows && !inserted.contains(i))
        .map(|(_, t)| t.display_name())
        .collect();
    if let Some(p) = proposals.as_mut() {
        p.model_text_share = proposal::text_share(&schema, &plan, &lookup, &inserted);
    }
    let mut loaded: Vec<TableLoad> = lookup
        .iter()
        .filter(|r| inserted.contains(&r.table))
        .map(|r| TableLoad {
            table: schema.tables[r.table].display_name(),
            rows: r.rows.len() as u64,
        })
        .collect();
    let outcome = load::load(config, Arc::new(schema), Arc::new(plan), &options.load).await?;
    loaded.extend(outcome.tables);
    Ok(SeedReport {
        strategy: Some(spec.strategy),
        tables: loaded.iter().filter(|t| t.rows > 0).count() as u64,
        rows: loaded.iter().map(|t| t.rows).sum(),
        loaded,
        kept,
        deferred_updates: outcome.deferred_updates,
        generators,
        warnings,
        proposals,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Reads the referenced columns of tables that already hold rows, ordered, as text.
pub async fn read_existing_parents(
    client: &tokio_postgres::Client,
    schema: &Schema,
) -> Result<ExistingKeys, DataError> {
    let mut out = ExistingKeys::new();
    for t in &schema.tables {
        for fk in &t.foreign_keys {
            let parent = &schema.tables[fk.parent];
            if !parent.has_rows || out.contains_key(&(fk.parent, fk.parent_columns.clone())) {
                continue;
            }
            let cols: Vec<String> = fk
                .parent_columns
                .iter()
                .map(|c| quote_ident(&parent.columns[*c].name))
                .collect();
            let select: Vec<String> = cols.iter().map(|c| format!("{c}::text")).collect();
            let not_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
            let rows = client
                .query(
                    &format!(
                        "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {MAX_EXISTING_PARENT_ROWS}",
                        select.join(", "),
                        parent.qualified(),
                        not_null.join(" AND "),
                        cols.join(", ")
                    ),
                    &[],
                )
                .await?;
            let values = rows
                .iter()
                .map(|r| {
                    (0..cols.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect();
            out.insert((fk.parent, fk.parent_columns.clone()), values);
        }
    }
    Ok(out)
}
