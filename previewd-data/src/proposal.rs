//! Model-assisted test data: a model proposes, the schema decides.
//!
//! Per table, a [`ProposalSource`] (normally the operator's model, reached through its
//! internal endpoint) is asked for
//!
//! - **value vocabularies** for text-like columns (names, titles, descriptions, categories,
//!   addresses) in the schema's domain, and
//! - **a few realistic rows for small lookup tables** (tables without foreign keys to other
//!   tables, or only to other lookup tables), as one SQL `INSERT`.
//!
//! Nothing in an answer is used before it is validated against the introspected schema.
//! The `INSERT` is parsed with a real SQL parser ([`sqlparser`], PostgreSQL dialect) and
//! must be exactly one `INSERT INTO <the table asked> (<columns>) VALUES (<literals>), ...`:
//! no second statement, no other statement kind, no expressions, functions or subqueries,
//! no `RETURNING` or `ON CONFLICT`. Its text is never sent to the database: the values are
//! checked (column exists and may be written, type and length fit, NOT NULL, check
//! constraints the engine understands, uniqueness within the rows, foreign keys resolvable
//! to rows proposed for the parent) and loaded with COPY. Vocabulary values are checked the
//! same way (length, check constraints, no control characters). Whatever fails is dropped
//! with a [`Rejection`] naming it and the reason; an answer larger than
//! [`MAX_ANSWER_BYTES`] is refused whole.
//!
//! The deterministic engine then generates the volume from what passed: a vocabulary
//! becomes the column's generator ([`GeneratorKind::Vocabulary`]: a value drawn from the
//! cell's own random stream), and lookup rows are inserted first and serve as parents like
//! rows that already existed. The same seed and the same proposal give byte-identical data;
//! no model at all gives exactly the data of the heuristics. The model is never asked for
//! bulk rows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, pin_mut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlparser::ast::{Expr, SetExpr, Statement, TableObject, UnaryOperator, Value as SqlValue};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::checks::ColumnRule;
use crate::generate::{GeneratorKind, Value, heuristic_kind};
use crate::load::write_copy_value;
use crate::schema::{Column, Schema, Table, TableId, TypeKind, quote_ident};

/// Version of the questions asked; part of every cache key.
pub const PROMPT_VERSION: u32 = 2;
/// Largest answer accepted for one table (JSON text); larger answers are refused whole.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Values kept per vocabulary.
pub const MAX_VOCABULARY_VALUES: usize = 64;
/// Fewest distinct valid values a vocabulary needs to be used.
pub const MIN_VOCABULARY_VALUES: usize = 3;
/// Fewest values the answer schema asks per column.
pub const MIN_ASKED_VALUES: usize = 8;
/// Most values the answer schema allows per column: a model whose decoding follows the
/// schema must close the list there, well within its output budget.
pub const MAX_ASKED_VALUES: usize = 16;
/// Longest vocabulary value, in characters (the column's own limit may be lower).
pub const MAX_VALUE_CHARS: usize = 200;
/// Most rows used for one lookup table.
pub const MAX_LOOKUP_ROWS: usize = 30;
/// Lookup tables have at most this many columns.
pub const MAX_LOOKUP_COLUMNS: usize = 6;
/// Rejections kept in a report (the rest are counted).
pub const MAX_REJECTIONS_KEPT: usize = 50;

/// The generator kinds a vocabulary may replace: free text of a domain, never formats
/// (emails, phones, codes, tokens, URLs) that the engine must keep valid.
const VOCABULARY_KINDS: &[&str] = &[
    "first_name",
    "last_name",
    "full_name",
    "company",
    "job_title",
    "street_address",
    "city",
    "region",
    "country",
    "word",
    "title",
    "sentence",
    "paragraph",
];

/// A column in a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ColumnHint {
    /// Column name.
    pub name: String,
    /// Type as PostgreSQL prints it.
    #[serde(rename = "type")]
    pub type_name: String,
    /// What the heuristics would generate (`city`, `title`, ...), or `NOT NULL` notes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// What one table's question holds: names and types only, never data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TableRequest {
    /// `schema.table`.
    pub table: String,
    /// Text columns a vocabulary is asked for.
    #[serde(default)]
    pub vocabularies: Vec<ColumnHint>,
    /// Columns the rows of a small lookup table may set; empty when no rows are asked.
    #[serde(default)]
    pub lookup_columns: Vec<ColumnHint>,
}

impl TableRequest {
    /// The JSON schema of an answer (an object at the root, every property required, as
    /// OpenAI's strict mode wants), holding only what is asked: `values` with one array of
    /// [`MIN_ASKED_VALUES`] to [`MAX_ASKED_VALUES`] strings per column, and `insert`,
    /// one SQL statement whose start (`INSERT INTO <table> (<columns>) VALUES (`) a
    /// pattern fixes when the names are plain. Servers that constrain decoding with the schema (llama.cpp, Ollama,
    /// OpenAI's strict mode) then cannot answer in another shape; the answer is validated
    /// all the same.
    pub fn answer_schema(&self) -> serde_json::Value {
        let mut top = serde_json::Map::new();
        let mut required = Vec::new();
        if !self.vocabularies.is_empty() {
            let mut properties = serde_json::Map::new();
            for c in &self.vocabularies {
                properties.insert(
                    c.name.clone(),
                    serde_json::json!({
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": 120},
                        "minItems": MIN_ASKED_VALUES,
                        "maxItems": MAX_ASKED_VALUES,
                    }),
                );
            }
            let names: Vec<&str> = self.vocabularies.iter().map(|c| c.name.as_str()).collect();
            top.insert(
                "values".into(),
                serde_json::json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": names,
                    "properties": properties,
                }),
            );
            required.push("values");
        }
        if !self.lookup_columns.is_empty() {
            let mut insert = serde_json::json!({"type": "string"});
            if let Some(pattern) = self.insert_pattern() {
                insert["pattern"] = serde_json::Value::String(pattern);
            }
            top.insert("insert".into(), insert);
            required.push("insert");
        }
        serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": required,
            "properties": top,
        })
    }

    /// `^INSERT INTO <table> \\(<columns>\\) VALUES \\(.*$` when every name is plain
    /// (`[A-Za-z0-9_]`, the table's `.` left as the regex's any-character, which matches
    /// it): names with other characters get no pattern, because regex-to-grammar
    /// converters differ in the escapes they accept and a grammar a model server cannot
    /// parse may take it down.
    pub fn insert_pattern(&self) -> Option<String> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        let columns: Vec<&str> = self
            .lookup_columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        (plain(&self.table) && columns.iter().all(|c| plain(c) && !c.contains('.'))).then(|| {
            format!(
                "^INSERT INTO {} \\({}\\) VALUES \\(.*$",
                self.table,
                columns.join(", ")
            )
        })
    }

    /// Stable fingerprint of the question (with [`PROMPT_VERSION`]): the cache key of its
    /// answer together with the model's identity.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(PROMPT_VERSION.to_le_bytes());
        h.update(serde_json::to_vec(self).unwrap_or_default());
        hex(&h.finalize())
    }
}

/// Why a source gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ProposalError(pub String);

/// Answers [`TableRequest`]s: the model behind the operator, or anything else.
#[async_trait]
pub trait ProposalSource: Send + Sync {
    /// Who answers (the model's identity), for reports and cache keys.
    fn name(&self) -> &str;
    /// The answer to one table's question, as JSON.
    async fn propose(&self, request: &TableRequest) -> Result<serde_json::Value, ProposalError>;
}

/// A proposal that was dropped, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// What was proposed: `schema.table.column values`, `schema.table rows`,
    /// `schema.table row 3`, `schema.table answer`.
    pub what: String,
    /// Why it was dropped.
    pub reason: String,
}

/// What the proposal step did, for the seed report and the environment's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProposalOutcome {
    /// Who answered.
    pub source: String,
    /// Tables asked.
    pub requests: u32,
    /// Proposals received: one per vocabulary, one per lookup table's rows.
    pub made: u32,
    /// Proposals that passed validation and were used.
    pub passed: u32,
    /// Dropped proposals, rows and values with their reasons (at most
    /// [`MAX_REJECTIONS_KEPT`]).
    pub rejected: Vec<Rejection>,
    /// Rejections beyond those kept.
    pub rejected_omitted: u32,
    /// Lookup rows inserted from proposals.
    pub lookup_rows: u64,
    /// Share of generated text cells (0 to 1) whose value came from a proposal.
    pub model_text_share: f64,
    /// SHA-256 of what passed: equal digests and seeds give byte-identical data.
    pub digest: String,
}

impl ProposalOutcome {
    fn reject(&mut self, what: impl Into<String>, reason: impl Into<String>) {
        if self.rejected.len() < MAX_REJECTIONS_KEPT {
            self.rejected.push(Rejection {
                what: what.into(),
                reason: reason.into(),
            });
        } else {
            self.rejected_omitted += 1;
        }
    }
}

/// A validated literal, in PostgreSQL's text input form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Literal {
    /// SQL NULL.
    Null,
    /// Text form of the value.
    Text(String),
}

/// Rows for one lookup table that passed validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupRows {
    /// The table.
    pub table: TableId,
    /// Columns set (indices into the table's columns).
    pub columns: Vec<usize>,
    /// The rows, one literal per column.
    pub rows: Vec<Vec<Literal>>,
}

/// Everything that passed.
#[derive(Debug, Clone, Default)]
pub struct Validated {
    /// `schema.table.column` → values.
    pub vocabularies: BTreeMap<String, Vec<String>>,
    /// Lookup rows, parents before children.
    pub rows: Vec<LookupRows>,
    /// The report.
    pub outcome: ProposalOutcome,
}

impl Validated {
    /// The vocabularies as generator advice for [`crate::build_plan`].
    pub fn advice(&self) -> BTreeMap<String, GeneratorKind> {
        self.vocabularies
            .iter()
            .map(|(k, v)| (k.clone(), GeneratorKind::Vocabulary { values: v.clone() }))
            .collect()
    }

    fn seal(&mut self, schema: &Schema) {
        let mut h = Sha256::new();
        h.update(PROMPT_VERSION.to_le_bytes());
        for (k, values) in &self.vocabularies {
            h.update(k.as_bytes());
            for v in values {
                h.update([0]);
                h.update(v.as_bytes());
            }
            h.update([1]);
        }
        for r in &self.rows {
            h.update(schema.tables[r.table].qualified().as_bytes());
            h.update(serde_json::to_vec(&r.columns).unwrap_or_default());
            h.update(serde_json::to_vec(&r.rows).unwrap_or_default());
        }
        self.outcome.digest = hex(&h.finalize());
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The heuristic kind's name, when a vocabulary may replace it.
fn vocabulary_hint(table: &Table, column: &Column) -> Option<&'static str> {
    if !column.kind.is_text() || column.generated {
        return None;
    }
    if matches!(column.kind, TypeKind::Char { len } if len < 8) {
        return None;
    }
    if column
        .rules
        .iter()
        .any(|r| matches!(r, ColumnRule::OneOf(_)))
    {
        return None;
    }
    let kind = heuristic_kind(&table.name, column)?;
    let name = serde_json::to_value(&kind).ok()?;
    let name = name.get("kind")?.as_str()?;
    VOCABULARY_KINDS.iter().copied().find(|k| *k == name)
}

fn in_foreign_key(table: &Table, column: usize) -> bool {
    table
        .foreign_keys
        .iter()
        .any(|f| f.columns.contains(&column))
}

/// Whether the engine can check a literal of this type.
fn literal_type(kind: &TypeKind) -> bool {
    matches!(
        kind,
        TypeKind::Int16
            | TypeKind::Int32
            | TypeKind::Int64
            | TypeKind::Numeric { .. }
            | TypeKind::Float32
            | TypeKind::Float64
            | TypeKind::Bool
            | TypeKind::Text { .. }
            | TypeKind::Char { .. }
            | TypeKind::Date
            | TypeKind::Timestamp
            | TypeKind::TimestampTz
            | TypeKind::Uuid
            | TypeKind::Enum(_)
    )
}

/// Columns of `table` that lookup rows may set: not generated, not filled by a sequence,
/// not a self-reference, of a type the engine can check.
fn settable(table: &Table, tid: TableId, c: usize) -> bool {
    let col = &table.columns[c];
    let self_ref = table
        .foreign_keys
        .iter()
        .any(|f| f.parent == tid && f.columns.contains(&c));
    !col.generated
        && col.sequence.is_none()
        && !col.identity_always
        && !self_ref
        && literal_type(&col.kind)
}

/// Small lookup tables: at most [`MAX_LOOKUP_COLUMNS`] columns, a row key, a text column,
/// every NOT NULL column without a default settable, and foreign keys only to other
/// lookup tables (through settable columns) or to itself (through nullable columns).
pub fn lookup_tables(schema: &Schema) -> BTreeSet<TableId> {
    let mut candidates: BTreeSet<TableId> = schema
        .tables
        .iter()
        .enumerate()
        .filter(|(tid, t)| {
            t.columns.len() <= MAX_LOOKUP_COLUMNS
                && t.row_key().is_some()
                && t.columns
                    .iter()
                    .enumerate()
                    .any(|(c, col)| col.kind.is_text() && !in_foreign_key(t, c))
                && t.columns.iter().enumerate().all(|(c, col)| {
                    settable(t, *tid, c) || col.has_default || !col.not_null || col.generated
                })
                && t.foreign_keys.iter().all(|f| {
                    if f.parent == *tid {
                        f.columns.iter().all(|c| !t.columns[*c].not_null)
                    } else {
                        f.columns.iter().all(|c| settable(t, *tid, *c))
                    }
                })
        })
        .map(|(tid, _)| tid)
        .collect();
    // Drop tables whose parents are not lookup tables, until nothing changes.
    loop {
        let before = candidates.len();
        let keep: BTreeSet<TableId> = candidates
            .iter()
            .copied()
            .filter(|tid| {
                schema.tables[*tid]
                    .foreign_keys
                    .iter()
                    .all(|f| f.parent == *tid || candidates.contains(&f.parent))
            })
            .collect();
        candidates = keep;
        if candidates.len() == before {
            return candidates;
        }
    }
}

/// The questions for a schema: one per table that has text columns a vocabulary may serve
/// or that is a small lookup table. Depends on the schema only (not on counts or seed), so
/// answers are cached by schema and model.
pub fn requests(schema: &Schema) -> Vec<(TableId, TableRequest)> {
    let lookups = lookup_tables(schema);
    let mut out = Vec::new();
    for (tid, t) in schema.tables.iter().enumerate() {
        let mut request = TableRequest {
            table: format!("{}.{}", t.schema, t.name),
            vocabularies: Vec::new(),
            lookup_columns: Vec::new(),
        };
        if lookups.contains(&tid) {
            for (c, col) in t.columns.iter().enumerate() {
                if settable(t, tid, c) {
                    let mut notes = Vec::new();
                    if col.not_null && !col.has_default {
                        notes.push("required".to_string());
                    }
                    if t.row_key().is_some_and(|k| k.contains(&c))
                        || t.uniques.iter().any(|u| u.columns == [c])
                    {
                        notes.push("unique".to_string());
                    }
                    if let Some(f) = t.foreign_keys.iter().find(|f| f.columns.contains(&c)) {
                        let p = &schema.tables[f.parent];
                        let pc = f
                            .columns
                            .iter()
                            .position(|x| *x == c)
                            .map_or("", |i| p.columns[f.parent_columns[i]].name.as_str());
                        notes.push(format!("references {}.{}.{pc}", p.schema, p.name));
                    }
                    if let TypeKind::Enum(labels) = &col.kind {
                        notes.push(format!("one of {}", labels.join(", ")));
                    }
                    request.lookup_columns.push(ColumnHint {
                        name: col.name.clone(),
                        type_name: col.type_name.clone(),
                        hint: notes.join("; "),
                    });
                }
            }
        } else {
            for (c, col) in t.columns.iter().enumerate() {
                if in_foreign_key(t, c) {
                    continue;
                }
                if let Some(hint) = vocabulary_hint(t, col) {
                    request.vocabularies.push(ColumnHint {
                        name: col.name.clone(),
                        type_name: col.type_name.clone(),
                        hint: hint.to_string(),
                    });
                }
            }
        }
        if !request.vocabularies.is_empty() || !request.lookup_columns.is_empty() {
            out.push((tid, request));
        }
    }
    out
}

/// Asks `source` every question and validates the answers.
pub async fn propose(schema: &Schema, source: &dyn ProposalSource) -> Validated {
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (tid, request) in requests(schema) {
        match source.propose(&request).await {
            Ok(value) => answers.push((tid, request, value)),
            Err(e) => failures.push((request.table.clone(), e.0)),
        }
    }
    let mut validated = validate(schema, &answers);
    validated.outcome.source = source.name().to_string();
    validated.outcome.requests += failures.len() as u32;
    for (table, reason) in failures {
        validated
            .outcome
            .reject(format!("{table} answer"), format!("no answer: {reason}"));
    }
    validated
}

/// Validates answers against the schema. `answers` pairs each table with the question
/// asked and the answer received.
pub fn validate(
    schema: &Schema,
    answers: &[(TableId, TableRequest, serde_json::Value)],
) -> Validated {
    let mut out = Validated::default();
    out.outcome.requests = answers.len() as u32;
    let mut lookups: Vec<(TableId, &TableRequest, &str)> = Vec::new();
    for (tid, request, value) in answers {
        let table = &schema.tables[*tid];
        let label = format!("{}.{}", table.schema, table.name);
        let size = serde_json::to_string(value).map_or(usize::MAX, |s| s.len());
        if size > MAX_ANSWER_BYTES {
            out.outcome.made += 1;
            out.outcome.reject(
                format!("{label} answer"),
                format!("answer of {size} bytes is larger than {MAX_ANSWER_BYTES}"),
            );
            continue;
        }
        let Some(object) = value.as_object() else {
            out.outcome.made += 1;
            out.outcome
                .reject(format!("{label} answer"), "answer is not a JSON object");
            continue;
        };
        // Vocabularies.
        if let Some(values) = object.get("values").and_then(|v| v.as_object()) {
            for (column, proposed) in values {
                let Some(items) = proposed.as_array() else {
                    continue;
                };
                if items.is_empty() {
                    continue;
                }
                out.outcome.made += 1;
                let what = format!("{label}.{column} values");
                if !request.vocabularies.iter().any(|c| &c.name == column) {
                    out.outcome.reject(what, "column was not asked for");
                    continue;
                }
                let Some(c) = table.columns.iter().position(|c| &c.name == column) else {
                    out.outcome.reject(what, "no such column");
                    continue;
                };
                match vocabulary(table, &table.columns[c], items, &mut out.outcome, &what) {
                    Ok(values) => {
                        out.outcome.passed += 1;
                        out.vocabularies.insert(format!("{label}.{column}"), values);
                    }
                    Err(reason) => out.outcome.reject(what, reason),
                }
            }
        }
        // Lookup rows.
        if let Some(insert) = object.get("insert").and_then(|v| v.as_str())
            && !insert.trim().is_empty()
        {
            out.outcome.made += 1;
            if request.lookup_columns.is_empty() {
                out.outcome.reject(
                    format!("{label} rows"),
                    "rows were not asked for this table",
                );
            } else {
                lookups.push((*tid, request, insert));
            }
        }
    }
    // Parents before children, so foreign keys resolve against rows that passed.
    let order = lookup_order(schema, lookups.iter().map(|(t, _, _)| *t).collect());
    let mut accepted: HashMap<TableId, LookupRows> = HashMap::new();
    for tid in order {
        let Some((_, _, insert)) = lookups.iter().find(|(t, _, _)| *t == tid) else {
            continue;
        };
        let label = schema.tables[tid].display_name();
        match lookup_rows(schema, tid, insert, &accepted, &mut out.outcome) {
            Ok(rows) => {
                out.outcome.passed += 1;
                accepted.insert(tid, rows.clone());
                out.rows.push(rows);
            }
            Err(reason) => out.outcome.reject(format!("{label} rows"), reason),
        }
    }
    out.seal(schema);
    out
}

fn lookup_order(schema: &Schema, tables: Vec<TableId>) -> Vec<TableId> {
    let set: HashSet<TableId> = tables.iter().copied().collect();
    let mut done: Vec<TableId> = Vec::new();
    let mut pending = tables;
    pending.sort_unstable();
    while !pending.is_empty() {
        let ready: Vec<TableId> = pending
            .iter()
            .copied()
            .filter(|t| {
                schema.tables[*t]
                    .foreign_keys
                    .iter()
                    .all(|f| f.parent == *t || !set.contains(&f.parent) || done.contains(&f.parent))
            })
            .collect();
        if ready.is_empty() {
            // A cycle between lookup tables: keep the order, foreign keys will not resolve.
            done.append(&mut pending);
            break;
        }
        pending.retain(|t| !ready.contains(t));
        done.extend(ready);
    }
    done
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Checks a text value against the column's type and rules.
fn check_text(column: &Column, s: &str) -> Result<(), String> {
    if s.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    let len = char_len(s);
    match column.kind {
        TypeKind::Text { max_len: Some(m) } if len > m as usize => {
            return Err(format!("{len} characters, the column holds {m}"));
        }
        TypeKind::Char { len: n } if len > n as usize => {
            return Err(format!("{len} characters, the column holds {n}"));
        }
        _ => {}
    }
    for rule in &column.rules {
        match rule {
            ColumnRule::Length { min, max }
                if min.is_some_and(|m| len < m as usize)
                    || max.is_some_and(|m| len > m as usize) =>
            {
                return Err(format!("length {len} breaks a check constraint"));
            }
            ColumnRule::OneOf(values) if !values.iter().any(|v| v == s) => {
                return Err(format!("{s:?} is not one of {}", values.join(", ")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Words of the question itself (JSON-schema keywords and type names): a value made of
/// them, or naming a column of the table, echoes the question instead of answering it.
const ECHO_WORDS: &[&str] = &[
    "additionalproperties",
    "array",
    "boolean",
    "integer",
    "insert",
    "items",
    "maxitems",
    "maxlength",
    "minitems",
    "minlength",
    "null",
    "number",
    "object",
    "pattern",
    "properties",
    "required",
    "schema",
    "string",
    "text",
    "type",
    "values",
];

/// Whether `value` echoes the question: a schema keyword or type name, or the name of a
/// column or of the table, as one of its words, or a bare snake_case identifier.
fn echoes_question(value: &str, table: &Table) -> bool {
    if value.contains('_') && !value.contains(char::is_whitespace) {
        return true;
    }
    let lower = value.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().any(|w| {
        ECHO_WORDS.contains(w)
            || *w == table.name.to_lowercase()
            || table
                .columns
                .iter()
                .any(|c| c.name.len() > 2 && c.name.to_lowercase() == *w)
    }) || table
        .columns
        .iter()
        .any(|c| c.name.contains('_') && lower.contains(&c.name.to_lowercase()))
}

fn vocabulary(
    table: &Table,
    column: &Column,
    items: &[serde_json::Value],
    outcome: &mut ProposalOutcome,
    what: &str,
) -> Result<Vec<String>, String> {
    let mut values: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut dropped: Vec<String> = Vec::new();
    for item in items {
        let Some(s) = item.as_str() else {
            dropped.push("a value that is not a string".into());
            continue;
        };
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        if char_len(s) > MAX_VALUE_CHARS {
            dropped.push(format!("a value of {} characters", char_len(s)));
            continue;
        }
        if let Err(reason) = check_text(column, s) {
            dropped.push(format!("{s:?}: {reason}"));
            continue;
        }
        if echoes_question(s, table) {
            dropped.push(format!("{s:?}: echoes the question"));
            continue;
        }
        if seen.insert(s.to_string()) && values.len() < MAX_VOCABULARY_VALUES {
            values.push(s.to_string());
        }
    }
    for reason in dropped.iter().take(3) {
        outcome.reject(format!("{what} (one value)"), reason.clone());
    }
    if values.len() < MIN_VOCABULARY_VALUES {
        return Err(format!(
            "{} distinct valid values, at least {MIN_VOCABULARY_VALUES} needed",
            values.len()
        ));
    }
    Ok(values)
}

/// Parses and checks the `INSERT` for one lookup table.
fn lookup_rows(
    schema: &Schema,
    tid: TableId,
    sql: &str,
    accepted: &HashMap<TableId, LookupRows>,
    outcome: &mut ProposalOutcome,
) -> Result<LookupRows, String> {
    let table = &schema.tables[tid];
    let label = table.display_name();
    let statements =
        Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| format!("not valid SQL: {e}"))?;
    let insert = match statements.as_slice() {
        [Statement::Insert(insert)] => insert,
        [one] => {
            return Err(format!(
                "a {} statement; only one INSERT is accepted",
                statement_kind(one)
            ));
        }
        many => {
            return Err(format!(
                "{} statements ({}); only one INSERT is accepted",
                many.len(),
                many.iter()
                    .map(statement_kind)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    let TableObject::TableName(name) = &insert.table else {
        return Err("INSERT into a table function".into());
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map_or(String::new(), |i| i.value.clone()))
        .collect();
    let names_this_table = match parts.as_slice() {
        [t] => *t == table.name,
        [s, t] => *s == table.schema && *t == table.name,
        _ => false,
    };
    if !names_this_table {
        return Err(format!(
            "INSERT into {}, but rows were asked for {label}",
            parts.join(".")
        ));
    }
    if insert.or.is_some()
        || insert.ignore
        || insert.table_alias.is_some()
        || insert.by_name
        || insert.overwrite
        || !insert.assignments.is_empty()
        || insert.partitioned.is_some()
        || !insert.after_columns.is_empty()
        || insert.overriding.is_some()
        || insert.has_table_keyword
        || insert.on.is_some()
        || insert.returning.is_some()
        || insert.output.is_some()
        || insert.replace_into
        || insert.priority.is_some()
        || insert.insert_alias.is_some()
        || insert.settings.is_some()
        || insert.format_clause.is_some()
        || insert.multi_table_insert_type.is_some()
        || !insert.multi_table_into_clauses.is_empty()
    {
        return Err(
            "INSERT with clauses beyond a column list and VALUES (ON CONFLICT, RETURNING, ...)"
                .into(),
        );
    }
    if insert.columns.is_empty() {
        return Err("INSERT without a column list".into());
    }
    let mut columns = Vec::new();
    for c in &insert.columns {
        let name =
            c.0.last()
                .and_then(|p| p.as_ident())
                .map_or(String::new(), |i| i.value.clone());
        let Some(i) = table.columns.iter().position(|col| col.name == name) else {
            return Err(format!("no column {name:?} in {label}"));
        };
        if !settable(table, tid, i) {
            return Err(format!(
                "column {name} is filled by the database or refers to the table itself"
            ));
        }
        if columns.contains(&i) {
            return Err(format!("column {name} is listed twice"));
        }
        columns.push(i);
    }
    for (i, col) in table.columns.iter().enumerate() {
        if col.not_null && !col.has_default && !col.generated && !columns.contains(&i) {
            return Err(format!("required column {} is missing", col.name));
        }
    }
    let Some(query) = &insert.source else {
        return Err("INSERT without VALUES".into());
    };
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
        || !query.locks.is_empty()
    {
        return Err("INSERT with a query instead of plain VALUES".into());
    }
    let SetExpr::Values(values) = query.body.as_ref() else {
        return Err("INSERT ... SELECT; only VALUES of literals are accepted".into());
    };
    let mut rows: Vec<Vec<Literal>> = Vec::new();
    let keys: Vec<Vec<usize>> = table
        .primary_key
        .iter()
        .cloned()
        .chain(table.uniques.iter().map(|u| u.columns.clone()))
        .collect();
    let mut seen: Vec<HashSet<Vec<Literal>>> = vec![HashSet::new(); keys.len()];
    for (n, row) in values.rows.iter().enumerate() {
        let what = format!("{label} row {}", n + 1);
        if rows.len() == MAX_LOOKUP_ROWS {
            outcome.reject(
                format!("{label} rows"),
                format!(
                    "{} rows; the first {MAX_LOOKUP_ROWS} are used",
                    values.rows.len()
                ),
            );
            break;
        }
        let row = &row.content;
        if row.len() != columns.len() {
            outcome.reject(
                what,
                format!("{} values for {} columns", row.len(), columns.len()),
            );
            continue;
        }
        let parsed: Result<Vec<Literal>, String> = row
            .iter()
            .zip(&columns)
            .map(|(expr, c)| literal(expr, &table.columns[*c]))
            .collect();
        let parsed = match parsed.and_then(|p| row_rules(table, &columns, p)) {
            Ok(p) => p,
            Err(reason) => {
                outcome.reject(what, reason);
                continue;
            }
        };
        // Foreign keys resolve to rows proposed (and accepted) for the parent.
        if let Err(reason) = resolve_foreign_keys(schema, tid, &columns, &parsed, accepted) {
            outcome.reject(what, reason);
            continue;
        }
        // Uniqueness within the rows (the table is empty when they are used).
        let mut duplicate = None;
        for (k, key) in keys.iter().enumerate() {
            let Some(value) = key_value(key, &columns, &parsed) else {
                continue;
            };
            if seen[k].contains(&value) {
                let names: Vec<&str> = key
                    .iter()
                    .map(|c| table.columns[*c].name.as_str())
                    .collect();
                duplicate = Some(format!("repeats the unique ({})", names.join(", ")));
                break;
            }
        }
        if let Some(reason) = duplicate {
            outcome.reject(what, reason);
            continue;
        }
        for (k, key) in keys.iter().enumerate() {
            if let Some(value) = key_value(key, &columns, &parsed) {
                seen[k].insert(value);
            }
        }
        rows.push(parsed);
    }
    if rows.is_empty() {
        return Err("no row passed validation".into());
    }
    Ok(LookupRows {
        table: tid,
        columns,
        rows,
    })
}

/// The values of `key` in a row; `None` when a key column is NULL or not set (NULLs are
/// distinct) — a key column that is not set is filled by the database.
fn key_value(key: &[usize], columns: &[usize], row: &[Literal]) -> Option<Vec<Literal>> {
    key.iter()
        .map(|c| {
            let i = columns.iter().position(|x| x == c)?;
            match &row[i] {
                Literal::Null => None,
                l => Some(l.clone()),
            }
        })
        .collect()
}

fn resolve_foreign_keys(
    schema: &Schema,
    tid: TableId,
    columns: &[usize],
    row: &[Literal],
    accepted: &HashMap<TableId, LookupRows>,
) -> Result<(), String> {
    let table = &schema.tables[tid];
    for f in &table.foreign_keys {
        if f.parent == tid {
            continue;
        }
        let Some(value) = key_value(&f.columns, columns, row) else {
            if f.columns.iter().any(|c| table.columns[*c].not_null) {
                return Err(format!("foreign key {} is not set", f.name));
            }
            continue;
        };
        let parent = &schema.tables[f.parent];
        let found = accepted.get(&f.parent).is_some_and(|p| {
            p.rows
                .iter()
                .any(|prow| key_value(&f.parent_columns, &p.columns, prow).as_ref() == Some(&value))
        });
        if !found {
            let shown: Vec<String> = value
                .iter()
                .map(|l| match l {
                    Literal::Text(s) => format!("{s:?}"),
                    Literal::Null => "NULL".into(),
                })
                .collect();
            return Err(format!(
                "foreign key {} ({}) matches no row proposed for {}",
                f.name,
                shown.join(", "),
                parent.display_name()
            ));
        }
    }
    Ok(())
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [a, b] if matches!(*a, "DROP" | "CREATE" | "ALTER" | "TRUNCATE") => format!("{a} {b}"),
        [a, ..] => (*a).to_string(),
        [] => "empty".into(),
    }
}

/// A literal's text form, checked against the column's type.
fn literal(expr: &Expr, column: &Column) -> Result<Literal, String> {
    let name = &column.name;
    let (raw, quoted) = match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::Null => {
                if column.not_null {
                    return Err(format!("{name} is NOT NULL"));
                }
                return Ok(Literal::Null);
            }
            SqlValue::Number(n, false) => (n.clone(), false),
            SqlValue::SingleQuotedString(s) => (s.clone(), true),
            SqlValue::Boolean(b) => (if *b { "t" } else { "f" }.to_string(), false),
            other => return Err(format!("{name}: unsupported literal {other}")),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                SqlValue::Number(n, false) => (format!("-{n}"), false),
                _ => return Err(format!("{name}: not a literal")),
            },
            _ => return Err(format!("{name}: not a literal")),
        },
        other => {
            return Err(format!(
                "{name}: {} is not a literal",
                other.to_string().chars().take(60).collect::<String>()
            ));
        }
    };
    let ok = |s: String| Ok(Literal::Text(s));
    match &column.kind {
        TypeKind::Int16 | TypeKind::Int32 | TypeKind::Int64 => {
            let v: i64 = raw
                .parse()
                .map_err(|_| format!("{name}: {raw:?} is not an integer"))?;
            let (lo, hi) = match column.kind {
                TypeKind::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                TypeKind::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            if v < lo || v > hi {
                return Err(format!(
                    "{name}: {v} is out of range for {}",
                    column.type_name
                ));
            }
            check_number(column, v as f64)?;
            ok(v.to_string())
        }
        TypeKind::Numeric { precision, scale } => {
            let v: f64 = raw
                .parse()
                .map_err(|_| format!("{name}: {raw:?} is not a number"))?;
            if !v.is_finite() {
                return Err(format!("{name}: {raw:?} is not a finite number"));
            }
            let digits = raw.trim_start_matches('-');
            let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
            if let (Some(p), Some(s)) = (precision, scale) {
                let int_digits = int_part.trim_start_matches('0').len();
                if int_digits > (*p - *s) as usize {
                    return Err(format!("{name}: {raw} does not fit {}", column.type_name));
                }
                if frac_part.trim_end_matches('0').len() > *s as usize {
                    return Err(format!("{name}: {raw} has more than {s} decimals"));
                }
            }
            check_number(column, v)?;
            ok(raw)
        }
        TypeKind::Float32 | TypeKind::Float64 => {
            let v: f64 = raw
                .parse()
                .map_err(|_| format!("{name}: {raw:?} is not a number"))?;
            if !v.is_finite() {
                return Err(format!("{name}: {raw:?} is not a finite number"));
            }
            check_number(column, v)?;
            ok(raw)
        }
        TypeKind::Bool => match raw.to_ascii_lowercase().as_str() {
            "t" | "true" => ok("t".into()),
            "f" | "false" => ok("f".into()),
            _ => Err(format!("{name}: {raw:?} is not a boolean")),
        },
        TypeKind::Text { .. } | TypeKind::Char { .. } => {
            if !quoted {
                return Err(format!("{name}: text must be a quoted string"));
            }
            check_text(column, &raw).map_err(|e| format!("{name}: {e}"))?;
            ok(raw)
        }
        TypeKind::Enum(labels) => {
            if labels.contains(&raw) {
                ok(raw)
            } else {
                Err(format!(
                    "{name}: {raw:?} is not one of {}",
                    labels.join(", ")
                ))
            }
        }
        TypeKind::Date => {
            parse_date(&raw)
                .ok_or_else(|| format!("{name}: {raw:?} is not a date (YYYY-MM-DD)"))?;
            ok(raw)
        }
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            let (date, time) = raw
                .split_once([' ', 'T'])
                .unwrap_or((raw.as_str(), "00:00:00"));
            let time = time.trim_end_matches('Z').trim_end_matches("+00");
            if parse_date(date).is_none() || !valid_time(time) {
                return Err(format!(
                    "{name}: {raw:?} is not a timestamp (YYYY-MM-DD HH:MM:SS)"
                ));
            }
            ok(format!("{date} {time}"))
        }
        TypeKind::Uuid => {
            let hexes: String = raw.chars().filter(|c| *c != '-').collect();
            if raw.len() == 36 && hexes.len() == 32 && hexes.chars().all(|c| c.is_ascii_hexdigit())
            {
                ok(raw.to_ascii_lowercase())
            } else {
                Err(format!("{name}: {raw:?} is not a UUID"))
            }
        }
        _ => Err(format!(
            "{name}: values of type {} are not accepted",
            column.type_name
        )),
    }
}

fn check_number(column: &Column, v: f64) -> Result<(), String> {
    for rule in &column.rules {
        let broken = match rule {
            ColumnRule::Min { value, inclusive } => {
                if *inclusive {
                    v < *value
                } else {
                    v <= *value
                }
            }
            ColumnRule::Max { value, inclusive } => {
                if *inclusive {
                    v > *value
                } else {
                    v >= *value
                }
            }
            ColumnRule::OneOf(values) => !values
                .iter()
                .any(|x| x.parse::<f64>().is_ok_and(|x| x == v)),
            _ => false,
        };
        if broken {
            return Err(format!("{}: {v} breaks a check constraint", column.name));
        }
    }
    Ok(())
}

/// Checks comparing two columns of the same row (`valid_until >= valid_from`).
fn row_rules(table: &Table, columns: &[usize], row: Vec<Literal>) -> Result<Vec<Literal>, String> {
    for (i, c) in columns.iter().enumerate() {
        for rule in &table.columns[*c].rules {
            let ColumnRule::After { column, or_equal } = rule else {
                continue;
            };
            let Some(j) = columns.iter().position(|x| x == column) else {
                continue;
            };
            let (Literal::Text(later), Literal::Text(earlier)) = (&row[i], &row[j]) else {
                continue;
            };
            let kind = &table.columns[*c].kind;
            let ordered = if kind.is_numeric() {
                match (later.parse::<f64>(), earlier.parse::<f64>()) {
                    (Ok(a), Ok(b)) => {
                        if *or_equal {
                            a >= b
                        } else {
                            a > b
                        }
                    }
                    _ => false,
                }
            } else {
                // ISO dates and timestamps order as text.
                if *or_equal {
                    later >= earlier
                } else {
                    later > earlier
                }
            };
            if !ordered {
                return Err(format!(
                    "{} must come after {}",
                    table.columns[*c].name, table.columns[*column].name
                ));
            }
        }
    }
    Ok(row)
}

fn parse_date(s: &str) -> Option<(i64, i64, i64)> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    ((1..=12).contains(&m) && d >= 1 && d <= days[(m - 1) as usize]).then_some((y, m, d))
}

fn valid_time(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = |p: &str, max: u32| p.len() == 2 && p.parse::<u32>().is_ok_and(|v| v <= max);
    match parts.as_slice() {
        [h, m] => ok(h, 23) && ok(m, 59),
        [h, m, sec] => {
            let whole = sec.split_once('.').map_or(*sec, |(w, _)| w);
            ok(h, 23) && ok(m, 59) && ok(whole, 59)
        }
        _ => false,
    }
}

/// Share of the text cells about to be written (generated rows and inserted lookup rows)
/// whose value comes from a proposal: cells of columns generated from a vocabulary, and
/// the text cells of lookup rows.
pub fn text_share(
    schema: &Schema,
    plan: &crate::Plan,
    lookup: &[LookupRows],
    inserted: &[TableId],
) -> f64 {
    let mut total: u64 = 0;
    let mut from_model: u64 = 0;
    for (tid, t) in plan.tables.iter().enumerate() {
        if t.kept || t.rows == 0 {
            continue;
        }
        for (c, source) in t.sources.iter().enumerate() {
            if !schema.tables[tid].columns[c].kind.is_text() {
                continue;
            }
            match source {
                crate::plan::Source::Scalar { kind, .. } => {
                    total += t.rows;
                    if matches!(kind, GeneratorKind::Vocabulary { .. }) {
                        from_model += t.rows;
                    }
                }
                crate::plan::Source::Omit | crate::plan::Source::Null => {}
                _ => total += t.rows,
            }
        }
    }
    for set in lookup.iter().filter(|r| inserted.contains(&r.table)) {
        let table = &schema.tables[set.table];
        let text_columns = set
            .columns
            .iter()
            .filter(|c| table.columns[**c].kind.is_text())
            .count() as u64;
        total += text_columns * set.rows.len() as u64;
        from_model += text_columns * set.rows.len() as u64;
    }
    if total == 0 {
        0.0
    } else {
        from_model as f64 / total as f64
    }
}

/// Inserts validated lookup rows into empty tables, in one transaction, each table under
/// its own savepoint: a table the database refuses (a check the engine could not evaluate)
/// is dropped with the database's reason and the others stay. Returns the tables that
/// received rows and the rows inserted.
pub async fn insert_lookup_rows(
    client: &mut tokio_postgres::Client,
    schema: &Schema,
    rows: &[LookupRows],
    outcome: &mut ProposalOutcome,
) -> Result<Vec<TableId>, crate::DataError> {
    let tx = client.transaction().await?;
    let mut inserted = Vec::new();
    for set in rows {
        let table = &schema.tables[set.table];
        let cols: Vec<String> = set
            .columns
            .iter()
            .map(|c| quote_ident(&table.columns[*c].name))
            .collect();
        let mut data = BytesMut::new();
        let mut scratch = String::new();
        for row in &set.rows {
            for (i, (lit, c)) in row.iter().zip(&set.columns).enumerate() {
                if i > 0 {
                    data.extend_from_slice(b"\t");
                }
                let value = match lit {
                    Literal::Null => Value::Null,
                    Literal::Text(s) => Value::Text(s.clone()),
                };
                write_copy_value(&value, &table.columns[*c].kind, &mut scratch, &mut data);
            }
            data.extend_from_slice(b"\n");
        }
        tx.batch_execute("SAVEPOINT previewd_lookup").await?;
        let copied: Result<u64, tokio_postgres::Error> = async {
            let sink = tx
                .copy_in::<_, Bytes>(&format!(
                    "COPY {} ({}) FROM STDIN",
                    table.qualified(),
                    cols.join(", ")
                ))
                .await?;
            pin_mut!(sink);
            sink.send(data.freeze()).await?;
            sink.as_mut().finish().await
        }
        .await;
        match copied {
            Ok(n) => {
                tx.batch_execute("RELEASE SAVEPOINT previewd_lookup")
                    .await?;
                outcome.lookup_rows += n;
                inserted.push(set.table);
            }
            Err(e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT previewd_lookup")
                    .await?;
                outcome.passed = outcome.passed.saturating_sub(1);
                outcome.reject(
                    format!("{} rows", table.display_name()),
                    format!("the database refused them: {}", crate::DataError::from(e)),
                );
            }
        }
    }
    tx.commit().await?;
    Ok(inserted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::schema::{ForeignKey, UniqueKey};

    fn col(name: &str, kind: TypeKind, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_name: format!("{kind:?}"),
            kind,
            not_null,
            has_default: false,
            identity_always: false,
            generated: false,
            sequence: None,
            rules: Vec::new(),
        }
    }

    fn table(name: &str, columns: Vec<Column>, pk: Vec<usize>) -> Table {
        Table {
            schema: "public".into(),
            name: name.into(),
            columns,
            primary_key: Some(pk),
            uniques: Vec::new(),
            foreign_keys: Vec::new(),
            checks: Vec::new(),
            has_rows: false,
        }
    }

    /// countries(code char(2) pk, name text unique), warehouses(id serial, city, country
    /// → countries), products(id serial, name text, summary text, sku), orders(id, product
    /// → products NOT NULL).
    fn schema() -> Schema {
        let mut countries = table(
            "countries",
            vec![
                col("code", TypeKind::Char { len: 2 }, true),
                col("name", TypeKind::Text { max_len: Some(40) }, true),
            ],
            vec![0],
        );
        countries.uniques.push(UniqueKey {
            name: "countries_name_key".into(),
            columns: vec![1],
        });
        let mut id = col("id", TypeKind::Int32, true);
        id.sequence = Some("\"public\".\"warehouses_id_seq\"".into());
        id.has_default = true;
        let mut warehouses = table(
            "warehouses",
            vec![
                id.clone(),
                col("city", TypeKind::Text { max_len: None }, true),
                col("country_code", TypeKind::Char { len: 2 }, true),
            ],
            vec![0],
        );
        warehouses.foreign_keys.push(ForeignKey {
            name: "warehouses_country_code_fkey".into(),
            columns: vec![2],
            parent: 0,
            parent_columns: vec![0],
            deferrable: false,
        });
        let products = table(
            "products",
            vec![
                id.clone(),
                col("name", TypeKind::Text { max_len: Some(30) }, true),
                col("summary", TypeKind::Text { max_len: None }, false),
                col("sku", TypeKind::Text { max_len: Some(20) }, true),
                col("price", TypeKind::Int32, true),
                col("stock", TypeKind::Int32, true),
                col("weight", TypeKind::Int32, true),
            ],
            vec![0],
        );
        let mut orders = table(
            "orders",
            vec![id, col("product_id", TypeKind::Int32, true)],
            vec![0],
        );
        orders.foreign_keys.push(ForeignKey {
            name: "orders_product_id_fkey".into(),
            columns: vec![1],
            parent: 2,
            parent_columns: vec![0],
            deferrable: false,
        });
        Schema {
            tables: vec![countries, warehouses, products, orders],
        }
    }

    fn answers(
        schema: &Schema,
        by_table: &[(&str, serde_json::Value)],
    ) -> Vec<(TableId, TableRequest, serde_json::Value)> {
        requests(schema)
            .into_iter()
            .filter_map(|(tid, r)| {
                let name = &schema.tables[tid].name;
                by_table
                    .iter()
                    .find(|(t, _)| t == name)
                    .map(|(_, v)| (tid, r, v.clone()))
            })
            .collect()
    }

    #[test]
    fn lookup_tables_are_small_and_refer_only_to_each_other() {
        let s = schema();
        let lookups = lookup_tables(&s);
        assert_eq!(lookups, BTreeSet::from([0, 1]));
        let reqs = requests(&s);
        let products = reqs.iter().find(|(t, _)| *t == 2).unwrap();
        let names: Vec<&str> = products
            .1
            .vocabularies
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // sku is a code: the engine keeps its format; price is not text.
        assert_eq!(names, ["name", "summary"]);
        assert!(products.1.lookup_columns.is_empty());
        let warehouses = reqs.iter().find(|(t, _)| *t == 1).unwrap();
        let cols: Vec<&str> = warehouses
            .1
            .lookup_columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            ["city", "country_code"],
            "the serial id is never asked"
        );
        assert!(
            warehouses.1.lookup_columns[1]
                .hint
                .contains("references public.countries.code")
        );
        // orders has nothing to ask.
        assert!(!reqs.iter().any(|(t, _)| *t == 3));
    }

    #[test]
    fn valid_proposals_pass_and_give_a_stable_digest() {
        let s = schema();
        let a = answers(
            &s,
            &[
                (
                    "countries",
                    serde_json::json!({"values": {}, "insert":
                        "INSERT INTO countries (code, name) VALUES ('FR', 'France'), ('DE', 'Germany'), ('JP', 'Japan')"}),
                ),
                (
                    "warehouses",
                    serde_json::json!({"values": {}, "insert":
                        "insert into public.warehouses (city, country_code) values ('Lyon', 'FR'), ('Osaka', 'JP')"}),
                ),
                (
                    "products",
                    serde_json::json!({"values": {
                        "name": ["Espresso Machine", "Milk Frother", "Burr Grinder", "Espresso Machine"],
                        "summary": ["Brews two cups at once.", "Steams milk in a minute.", "Grinds beans evenly."]
                    }, "insert": ""}),
                ),
            ],
        );
        let v = validate(&s, &a);
        assert_eq!(v.outcome.made, 4, "{:?}", v.outcome);
        assert_eq!(v.outcome.passed, 4, "{:?}", v.outcome.rejected);
        assert!(v.outcome.rejected.is_empty());
        assert_eq!(
            v.vocabularies["public.products.name"],
            ["Espresso Machine", "Milk Frother", "Burr Grinder"],
            "duplicates are dropped"
        );
        assert_eq!(v.rows.len(), 2);
        assert_eq!(v.rows[0].table, 0, "parents first");
        assert_eq!(
            v.rows[1].rows[1],
            vec![Literal::Text("Osaka".into()), Literal::Text("JP".into())]
        );
        let again = validate(&s, &a);
        assert_eq!(v.outcome.digest, again.outcome.digest);
        assert!(matches!(
            v.advice()["public.products.name"],
            GeneratorKind::Vocabulary { .. }
        ));
    }

    #[test]
    fn statements_other_than_one_plain_insert_are_refused() {
        let s = schema();
        let cases = [
            ("DROP TABLE countries", "DROP TABLE"),
            (
                "INSERT INTO countries (code, name) VALUES ('FR', 'France'); DROP TABLE orders",
                "2 statements",
            ),
            (
                "INSERT INTO orders (product_id) VALUES (1)",
                "rows were asked for countries",
            ),
            (
                "INSERT INTO countries (code, name) SELECT code, name FROM secrets",
                "only VALUES",
            ),
            (
                "INSERT INTO countries (code, name) VALUES ('FR', 'France') ON CONFLICT DO NOTHING",
                "ON CONFLICT",
            ),
            (
                "INSERT INTO countries (code, name) VALUES ('FR', 'France') RETURNING *",
                "RETURNING",
            ),
            (
                "INSERT INTO countries VALUES ('FR', 'France')",
                "column list",
            ),
            ("not sql at all", "not valid SQL"),
        ];
        for (sql, expected) in cases {
            let v = validate(
                &s,
                &answers(
                    &s,
                    &[(
                        "countries",
                        serde_json::json!({"values": {}, "insert": sql}),
                    )],
                ),
            );
            assert_eq!(v.outcome.passed, 0, "{sql}");
            assert!(v.rows.is_empty(), "{sql}");
            let reasons: Vec<&str> = v
                .outcome
                .rejected
                .iter()
                .map(|r| r.reason.as_str())
                .collect();
            assert!(
                reasons.iter().any(|r| r.contains(expected)),
                "{sql}: {reasons:?}"
            );
        }
    }

    #[test]
    fn values_are_checked_row_by_row() {
        let s = schema();
        let sql = "INSERT INTO countries (code, name) VALUES \
            ('FR', 'France'), ('FR', 'Frankreich'), ('DEU', 'Germany'), (upper('jp'), 'Japan'), \
            ('IT', NULL), ('ES', 'Spain'), ('PT', 'Spain')";
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "countries",
                    serde_json::json!({"values": {}, "insert": sql}),
                )],
            ),
        );
        assert_eq!(v.outcome.passed, 1);
        assert_eq!(v.rows[0].rows.len(), 2, "{:?}", v.outcome.rejected);
        let reasons: Vec<String> = v
            .outcome
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.what, r.reason))
            .collect();
        let expect = [
            "countries row 2: repeats the unique (code)",
            "countries row 3: code: 3 characters, the column holds 2",
            "countries row 4: code: upper('jp') is not a literal",
            "countries row 5: name is NOT NULL",
            "countries row 7: repeats the unique (name)",
        ];
        for e in expect {
            assert!(reasons.iter().any(|r| r == e), "{e} not in {reasons:#?}");
        }
    }

    #[test]
    fn foreign_keys_must_resolve_to_proposed_parents() {
        let s = schema();
        let v = validate(
            &s,
            &answers(
                &s,
                &[
                    (
                        "countries",
                        serde_json::json!({"values": {}, "insert":
                            "INSERT INTO countries (code, name) VALUES ('FR', 'France')"}),
                    ),
                    (
                        "warehouses",
                        serde_json::json!({"values": {}, "insert":
                            "INSERT INTO warehouses (city, country_code) VALUES ('Lyon', 'FR'), ('Atlantis', 'XX')"}),
                    ),
                ],
            ),
        );
        assert_eq!(v.rows[1].rows.len(), 1);
        assert!(v.outcome.rejected.iter().any(|r| {
            r.what == "warehouses row 2"
                && r.reason
                    .contains("(\"XX\") matches no row proposed for countries")
        }));
        // Without accepted parent rows, no child row resolves.
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "warehouses",
                    serde_json::json!({"values": {}, "insert":
                        "INSERT INTO warehouses (city, country_code) VALUES ('Lyon', 'FR')"}),
                )],
            ),
        );
        assert!(v.rows.is_empty());
    }

    #[test]
    fn serial_columns_and_unasked_tables_are_refused() {
        let s = schema();
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "warehouses",
                    serde_json::json!({"values": {}, "insert":
                        "INSERT INTO warehouses (id, city, country_code) VALUES (1, 'Lyon', 'FR')"}),
                )],
            ),
        );
        assert!(
            v.outcome.rejected[0]
                .reason
                .contains("filled by the database")
        );
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "products",
                    serde_json::json!({"values": {"sku": ["A", "B", "C"]}, "insert":
                        "INSERT INTO products (name, sku, price, stock, weight) VALUES ('x', 'y', 1, 1, 1)"}),
                )],
            ),
        );
        assert_eq!(v.outcome.made, 2);
        assert_eq!(v.outcome.passed, 0);
        let reasons: Vec<&str> = v
            .outcome
            .rejected
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert!(reasons.contains(&"column was not asked for"), "{reasons:?}");
        assert!(
            reasons.contains(&"rows were not asked for this table"),
            "{reasons:?}"
        );
    }

    #[test]
    fn vocabularies_are_bounded_and_checked() {
        let s = schema();
        let long = "x".repeat(31);
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "products",
                    serde_json::json!({"values": {
                        "name": ["Kettle", long, "Tea\u{7}pot", 5, "Mug"],
                        "summary": ["a", "b", "c", "d"]
                    }, "insert": ""}),
                )],
            ),
        );
        assert_eq!(v.outcome.made, 2);
        assert_eq!(v.outcome.passed, 1);
        assert!(!v.vocabularies.contains_key("public.products.name"));
        let reasons: Vec<String> = v
            .outcome
            .rejected
            .iter()
            .map(|r| r.reason.clone())
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("31 characters, the column holds 30"))
        );
        assert!(reasons.iter().any(|r| r.contains("control characters")));
        assert!(reasons.iter().any(|r| r.contains("not a string")));
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("2 distinct valid values"))
        );
    }

    #[test]
    fn values_that_echo_the_question_are_dropped() {
        let s = schema();
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "products",
                    serde_json::json!({"values": {
                        "name": ["Desk Lamp", "product_id", "minItems:12,", "object",
                                 "sku", "Monitor Arm", "Type: string", "Standing Desk"],
                    }}),
                )],
            ),
        );
        assert_eq!(
            v.vocabularies["public.products.name"],
            ["Desk Lamp", "Monitor Arm", "Standing Desk"]
        );
        let echoed: Vec<&str> = v
            .outcome
            .rejected
            .iter()
            .map(|r| r.reason.as_str())
            .filter(|r| r.ends_with("echoes the question"))
            .collect();
        assert_eq!(
            echoed.len(),
            3,
            "the first three dropped values are reported"
        );
    }

    #[test]
    fn a_huge_answer_is_refused_whole() {
        let s = schema();
        let huge = "Lorem ipsum ".repeat(1_000_000);
        let v = validate(
            &s,
            &answers(
                &s,
                &[(
                    "products",
                    serde_json::json!({"values": {"name": [huge, "a", "b", "c"]}, "insert": ""}),
                )],
            ),
        );
        assert_eq!(v.outcome.made, 1);
        assert_eq!(v.outcome.passed, 0);
        assert!(v.vocabularies.is_empty());
        assert!(
            v.outcome.rejected[0]
                .reason
                .contains("is larger than 65536")
        );
    }

    #[test]
    fn answer_schemas_list_the_columns_asked() {
        let s = schema();
        let (_, r) = requests(&s).into_iter().find(|(t, _)| *t == 2).unwrap();
        let schema = r.answer_schema();
        assert_eq!(
            schema["required"],
            serde_json::json!(["values"]),
            "no rows asked: no insert"
        );
        assert_eq!(
            schema["properties"]["values"]["required"],
            serde_json::json!(["name", "summary"])
        );
        assert_eq!(
            schema["properties"]["values"]["properties"]["name"]["minItems"],
            8
        );
        let (_, w) = requests(&s).into_iter().find(|(t, _)| *t == 1).unwrap();
        let rows = w.answer_schema();
        assert_eq!(rows["required"], serde_json::json!(["insert"]));
        assert_eq!(
            rows["properties"]["insert"]["pattern"],
            r"^INSERT INTO public.warehouses \(city, country_code\) VALUES \(.*$"
        );
        let odd = TableRequest {
            table: "public.\"odd name\"".into(),
            ..w.clone()
        };
        assert!(
            odd.answer_schema()["properties"]["insert"]
                .get("pattern")
                .is_none()
        );
        assert_eq!(
            schema["properties"]["values"]["additionalProperties"],
            false
        );
        assert_ne!(
            r.fingerprint(),
            TableRequest {
                table: "x".into(),
                ..r.clone()
            }
            .fingerprint()
        );
    }

    #[test]
    fn dates_and_timestamps_are_checked() {
        assert!(parse_date("2024-02-29").is_some());
        assert!(parse_date("2023-02-29").is_none());
        assert!(parse_date("2024-13-01").is_none());
        assert!(valid_time("23:59:59.5"));
        assert!(!valid_time("24:00:00"));
    }
}
