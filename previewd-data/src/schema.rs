//! The shape of a PostgreSQL database, read from `pg_catalog`: tables, columns and their
//! types, NOT NULL, defaults, identity and generated columns, primary keys, unique
//! constraints and unique indexes, foreign keys, check constraints (parsed where they have
//! a simple form), enums and domains.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use crate::checks::{self, ColumnRule};
use crate::error::DataError;

/// Index of a table in [`Schema::tables`].
pub type TableId = usize;

/// Every user table of the database.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Tables ordered by schema and name.
    pub tables: Vec<Table>,
}

/// One table.
#[derive(Debug, Clone)]
pub struct Table {
    /// PostgreSQL schema (namespace).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in their physical order (dropped columns left out).
    pub columns: Vec<Column>,
    /// Primary key columns (indices into `columns`).
    pub primary_key: Option<Vec<usize>>,
    /// Unique constraints and unique indexes, the primary key excluded.
    pub uniques: Vec<UniqueKey>,
    /// Foreign keys of this table.
    pub foreign_keys: Vec<ForeignKey>,
    /// Check constraints as PostgreSQL prints them.
    pub checks: Vec<CheckConstraint>,
    /// Whether the table already holds rows when the schema was read.
    pub has_rows: bool,
}

/// A unique constraint or unique index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// Constraint or index name.
    pub name: String,
    /// Columns (indices into the table's columns).
    pub columns: Vec<usize>,
}

/// A foreign key.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    /// Constraint name.
    pub name: String,
    /// Referencing columns of this table.
    pub columns: Vec<usize>,
    /// Referenced table.
    pub parent: TableId,
    /// Referenced columns of the parent, in the same order as `columns`.
    pub parent_columns: Vec<usize>,
    /// Declared `DEFERRABLE`.
    pub deferrable: bool,
}

/// A check constraint.
#[derive(Debug, Clone)]
pub struct CheckConstraint {
    /// Constraint name.
    pub name: String,
    /// `pg_get_constraintdef` text, e.g. `CHECK ((price >= (0)::numeric))`.
    pub definition: String,
    /// Whether the engine understood it (and so guarantees it holds).
    pub understood: bool,
}

/// One column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type as PostgreSQL prints it (`character varying(80)`, `order_status`, ...).
    pub type_name: String,
    /// What the engine knows how to generate for it.
    pub kind: TypeKind,
    /// NOT NULL (on the column or on its domain).
    pub not_null: bool,
    /// Has a default expression.
    pub has_default: bool,
    /// `GENERATED ALWAYS AS IDENTITY` (explicit values need an override).
    pub identity_always: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: never written.
    pub generated: bool,
    /// The sequence behind a serial or identity column, qualified and quoted.
    pub sequence: Option<String>,
    /// Constraints on this column's values taken from check constraints and domains.
    pub rules: Vec<ColumnRule>,
}

/// Column types the generators know.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeKind {
    /// `smallint`.
    Int16,
    /// `integer`.
    Int32,
    /// `bigint`.
    Int64,
    /// `numeric(precision, scale)`.
    Numeric {
        /// Total digits.
        precision: Option<u32>,
        /// Digits after the point.
        scale: Option<u32>,
    },
    /// `real`.
    Float32,
    /// `double precision`.
    Float64,
    /// `money`.
    Money,
    /// `boolean`.
    Bool,
    /// `text`, `varchar(n)`, `citext`, `name`.
    Text {
        /// Maximum length in characters.
        max_len: Option<u32>,
    },
    /// `char(n)`.
    Char {
        /// Exact length in characters.
        len: u32,
    },
    /// `date`.
    Date,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `time`.
    Time,
    /// `interval`.
    Interval,
    /// `uuid`.
    Uuid,
    /// `json`.
    Json,
    /// `jsonb`.
    Jsonb,
    /// `bytea`.
    Bytea,
    /// `inet`.
    Inet,
    /// `cidr`.
    Cidr,
    /// `macaddr`.
    MacAddr,
    /// A PostgreSQL enum with its labels in order.
    Enum(Vec<String>),
    /// A one-dimensional array of a known element type.
    Array(Box<TypeKind>),
    /// Anything else (geometry, ranges, composite types, tsvector, ...).
    Other,
}

impl TypeKind {
    /// Integer types.
    pub fn is_integer(&self) -> bool {
        matches!(self, TypeKind::Int16 | TypeKind::Int32 | TypeKind::Int64)
    }

    /// Types ordered by value (for range and column-comparison checks).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            TypeKind::Int16
                | TypeKind::Int32
                | TypeKind::Int64
                | TypeKind::Numeric { .. }
                | TypeKind::Float32
                | TypeKind::Float64
                | TypeKind::Money
        )
    }

    /// Date and time types.
    pub fn is_temporal(&self) -> bool {
        matches!(
            self,
            TypeKind::Date | TypeKind::Timestamp | TypeKind::TimestampTz
        )
    }

    /// Text types.
    pub fn is_text(&self) -> bool {
        matches!(self, TypeKind::Text { .. } | TypeKind::Char { .. })
    }
}

impl Schema {
    /// Finds a table by `schema.table` or by bare name when it is unambiguous.
    pub fn find(&self, name: &str) -> Result<Option<TableId>, DataError> {
        if let Some((schema, table)) = name.split_once('.')
            && let Some(id) = self
                .tables
                .iter()
                .position(|t| t.schema == schema && t.name == table)
        {
            return Ok(Some(id));
        }
        let matches: Vec<TableId> = self
            .tables
            .iter()
            .enumerate()
            .filter(|(_, t)| t.name == name)
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(DataError::Spec(format!(
                "table name {name:?} is ambiguous (it exists in several schemas); write schema.table"
            ))),
        }
    }
}

impl Table {
    /// `"schema"."table"`, quoted for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.table` for messages and reports.
    pub fn display_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }

    /// A key that identifies rows: the primary key or a unique key of NOT NULL columns.
    pub fn row_key(&self) -> Option<Vec<usize>> {
        if let Some(pk) = &self.primary_key {
            return Some(pk.clone());
        }
        self.uniques
            .iter()
            .find(|u| u.columns.iter().all(|c| self.columns[*c].not_null))
            .map(|u| u.columns.clone())
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone)]
struct PgType {
    name: String,
    typtype: String,
    base: u32,
    base_typmod: i32,
    elem: u32,
    not_null: bool,
}

/// Reads the schema of every user table (system and extension tables left out). With
/// `schemas` set, only those PostgreSQL schemas are read.
pub async fn introspect(client: &Client, schemas: Option<&[String]>) -> Result<Schema, DataError> {
    let schema_filter: Option<Vec<String>> = schemas.map(<[String]>::to_vec);
    let table_rows = client
        .query(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                AND ($1::text[] IS NULL OR n.nspname = ANY($1))
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.deptype = 'e')
              ORDER BY n.nspname, c.relname",
            &[&schema_filter],
        )
        .await?;
    let mut oids: Vec<i64> = Vec::new();
    let mut by_oid: HashMap<i64, TableId> = HashMap::new();
    let mut tables: Vec<Table> = Vec::new();
    for row in &table_rows {
        let oid: i64 = row.get(0);
        by_oid.insert(oid, tables.len());
        oids.push(oid);
        tables.push(Table {
            schema: row.get(1),
            name: row.get(2),
            columns: Vec::new(),
            primary_key: None,
            uniques: Vec::new(),
            foreign_keys: Vec::new(),
            checks: Vec::new(),
            has_rows: false,
        });
    }

    let types = read_types(client).await?;
    let enums = read_enums(client).await?;
    let domain_checks = read_domain_checks(client).await?;

    // Columns; attnum → index per table.
    let column_rows = client
        .query(
            "SELECT a.attrelid::int8, a.attnum::int4, a.attname::text, a.atttypid::int8,
                    a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.atthasdef, a.attidentity::text, a.attgenerated::text,
                    pg_get_serial_sequence(a.attrelid::regclass::text, a.attname)
               FROM pg_attribute a
              WHERE a.attrelid = ANY($1::int8[]::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await?;
    let mut attnums: HashMap<(TableId, i16), usize> = HashMap::new();
    for row in &column_rows {
        let Some(&table) = by_oid.get(&row.get::<_, i64>(0)) else {
            continue;
        };
        let attnum: i32 = row.get(1);
        let type_oid = row.get::<_, i64>(3) as u32;
        let typmod: i32 = row.get(4);
        let (kind, domain_not_null, domain_oids) = resolve_type(type_oid, typmod, &types, &enums);
        let mut rules = Vec::new();
        let name: String = row.get(2);
        for domain in domain_oids {
            for def in domain_checks.get(&domain).into_iter().flatten() {
                if let Some(rule) = checks::parse_domain_check(def) {
                    rules.push(rule);
                }
            }
        }
        let identity: String = row.get(8);
        let generated: String = row.get(9);
        let t = &mut tables[table];
        attnums.insert((table, attnum as i16), t.columns.len());
        t.columns.push(Column {
            name,
            type_name: row.get(5),
            kind,
            not_null: row.get::<_, bool>(6) || domain_not_null,
            has_default: row.get::<_, bool>(7) || !identity.is_empty(),
            identity_always: identity == "a",
            generated: !generated.is_empty(),
            sequence: row.get(10),
            rules,
        });
    }

    let constraint_rows = client
        .query(
            "SELECT conrelid::int8, conname::text, contype::text, conkey, confrelid::int8,
                    confkey, condeferrable, pg_get_constraintdef(oid)
               FROM pg_constraint
              WHERE conrelid = ANY($1::int8[]::oid[]) AND contype IN ('p', 'u', 'f', 'c')
              ORDER BY conrelid, conname",
            &[&oids],
        )
        .await?;
    for row in &constraint_rows {
        let Some(&table) = by_oid.get(&row.get::<_, i64>(0)) else {
            continue;
        };
        let name: String = row.get(1);
        let contype: String = row.get(2);
        let conkey: Option<Vec<i16>> = row.get(3);
        let cols = map_attnums(table, conkey.as_deref().unwrap_or_default(), &attnums);
        match contype.as_str() {
            "p" => tables[table].primary_key = cols,
            "u" => {
                if let Some(columns) = cols {
                    tables[table].uniques.push(UniqueKey { name, columns });
                }
            }
            "f" => {
                let Some(&parent) = by_oid.get(&row.get::<_, i64>(4)) else {
                    // References a table outside the schemas read: cannot satisfy it.
                    return Err(DataError::Schema(format!(
                        "foreign key {name} of {} references a table outside the schemas read",
                        tables[table].display_name()
                    )));
                };
                let confkey: Option<Vec<i16>> = row.get(5);
                let parent_cols =
                    map_attnums(parent, confkey.as_deref().unwrap_or_default(), &attnums);
                if let (Some(columns), Some(parent_columns)) = (cols, parent_cols) {
                    tables[table].foreign_keys.push(ForeignKey {
                        name,
                        columns,
                        parent,
                        parent_columns,
                        deferrable: row.get(6),
                    });
                }
            }
            _ => {
                let definition: String = row.get(7);
                let t = &mut tables[table];
                let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
                let parsed = checks::parse_table_check(&definition, &names);
                let understood = parsed.is_some();
                for (column, rule) in parsed.into_iter().flatten() {
                    t.columns[column].rules.push(rule);
                }
                t.checks.push(CheckConstraint {
                    name,
                    definition,
                    understood,
                });
            }
        }
    }

    // Unique indexes that are not constraints (e.g. `CREATE UNIQUE INDEX ... (lower(email))`).
    let index_rows = client
        .query(
            "SELECT i.indrelid::int8, ic.relname::text, i.indkey::int2[], pg_get_indexdef(i.indexrelid)
               FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indisunique AND i.indrelid = ANY($1::int8[]::oid[])
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
              ORDER BY i.indrelid, ic.relname",
            &[&oids],
        )
        .await?;
    for row in &index_rows {
        let Some(&table) = by_oid.get(&row.get::<_, i64>(0)) else {
            continue;
        };
        let name: String = row.get(1);
        let keys: Vec<i16> = row.get(2);
        let definition: String = row.get(3);
        let t = &mut tables[table];
        let mut columns: Vec<usize> = keys
            .iter()
            .filter(|k| **k > 0)
            .filter_map(|k| attnums.get(&(table, *k)).copied())
            .collect();
        if keys.contains(&0) {
            // Expression columns: every column named in the index definition counts
            // (`lower(email)` is unique when `email` is generated unique).
            let expr = definition.split_once(" USING ").map_or("", |(_, e)| e);
            for (i, c) in t.columns.iter().enumerate() {
                if !columns.contains(&i) && checks::mentions_identifier(expr, &c.name) {
                    columns.push(i);
                }
            }
        }
        if !columns.is_empty() {
            t.uniques.push(UniqueKey { name, columns });
        }
    }

    for t in &mut tables {
        let row = client
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", t.qualified()),
                &[],
            )
            .await?;
        t.has_rows = row.get(0);
    }
    Ok(Schema { tables })
}

fn map_attnums(
    table: TableId,
    keys: &[i16],
    attnums: &HashMap<(TableId, i16), usize>,
) -> Option<Vec<usize>> {
    if keys.is_empty() {
        return None;
    }
    keys.iter()
        .map(|k| attnums.get(&(table, *k)).copied())
        .collect()
}

async fn read_types(client: &Client) -> Result<HashMap<u32, PgType>, DataError> {
    let rows = client
        .query(
            "SELECT oid::int8, typname::text, typtype::text, typbasetype::int8, typtypmod,
                    typelem::int8, typnotnull
               FROM pg_type",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) as u32,
                PgType {
                    name: r.get(1),
                    typtype: r.get(2),
                    base: r.get::<_, i64>(3) as u32,
                    base_typmod: r.get(4),
                    elem: r.get::<_, i64>(5) as u32,
                    not_null: r.get(6),
                },
            )
        })
        .collect())
}

async fn read_enums(client: &Client) -> Result<HashMap<u32, Vec<String>>, DataError> {
    let rows = client
        .query(
            "SELECT enumtypid::int8, enumlabel::text FROM pg_enum ORDER BY enumtypid, enumsortorder",
            &[],
        )
        .await?;
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    for r in &rows {
        out.entry(r.get::<_, i64>(0) as u32)
            .or_default()
            .push(r.get(1));
    }
    Ok(out)
}

async fn read_domain_checks(client: &Client) -> Result<BTreeMap<u32, Vec<String>>, DataError> {
    let rows = client
        .query(
            "SELECT contypid::int8, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE contypid <> 0 AND contype = 'c' ORDER BY contypid, conname",
            &[],
        )
        .await?;
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for r in &rows {
        out.entry(r.get::<_, i64>(0) as u32)
            .or_default()
            .push(r.get(1));
    }
    Ok(out)
}

/// Resolves domains to their base type; returns the kind, whether a domain says NOT NULL
/// and the domains passed through (their checks apply).
fn resolve_type(
    oid: u32,
    typmod: i32,
    types: &HashMap<u32, PgType>,
    enums: &HashMap<u32, Vec<String>>,
) -> (TypeKind, bool, Vec<u32>) {
    let mut oid = oid;
    let mut typmod = typmod;
    let mut not_null = false;
    let mut domains = Vec::new();
    for _ in 0..16 {
        let Some(t) = types.get(&oid) else {
            return (TypeKind::Other, not_null, domains);
        };
        if t.typtype == "d" {
            not_null |= t.not_null;
            domains.push(oid);
            typmod = t.base_typmod;
            oid = t.base;
            continue;
        }
        return (kind_of(oid, typmod, types, enums), not_null, domains);
    }
    (TypeKind::Other, not_null, domains)
}

fn kind_of(
    oid: u32,
    typmod: i32,
    types: &HashMap<u32, PgType>,
    enums: &HashMap<u32, Vec<String>>,
) -> TypeKind {
    let Some(t) = types.get(&oid) else {
        return TypeKind::Other;
    };
    if t.typtype == "e" {
        return enums
            .get(&oid)
            .map_or(TypeKind::Other, |labels| TypeKind::Enum(labels.clone()));
    }
    if t.name.starts_with('_') && t.elem != 0 {
        let elem = resolve_type(t.elem, -1, types, enums).0;
        return match elem {
            TypeKind::Other | TypeKind::Array(_) => TypeKind::Other,
            e => TypeKind::Array(Box::new(e)),
        };
    }
    match t.name.as_str() {
        "int2" => TypeKind::Int16,
        "int4" => TypeKind::Int32,
        "int8" => TypeKind::Int64,
        "numeric" => {
            if typmod >= 4 {
                let m = typmod - 4;
                TypeKind::Numeric {
                    precision: Some(((m >> 16) & 0xffff) as u32),
                    scale: Some((m & 0xffff) as u32),
                }
            } else {
                TypeKind::Numeric {
                    precision: None,
                    scale: None,
                }
            }
        }
        "float4" => TypeKind::Float32,
        "float8" => TypeKind::Float64,
        "money" => TypeKind::Money,
        "bool" => TypeKind::Bool,
        "text" | "citext" | "name" => TypeKind::Text { max_len: None },
        "varchar" => TypeKind::Text {
            max_len: (typmod >= 4).then(|| (typmod - 4) as u32),
        },
        "bpchar" => TypeKind::Char {
            len: if typmod >= 4 { (typmod - 4) as u32 } else { 1 },
        },
        "date" => TypeKind::Date,
        "timestamp" => TypeKind::Timestamp,
        "timestamptz" => TypeKind::TimestampTz,
        "time" => TypeKind::Time,
        "interval" => TypeKind::Interval,
        "uuid" => TypeKind::Uuid,
        "json" => TypeKind::Json,
        "jsonb" => TypeKind::Jsonb,
        "bytea" => TypeKind::Bytea,
        "inet" => TypeKind::Inet,
        "cidr" => TypeKind::Cidr,
        "macaddr" => TypeKind::MacAddr,
        _ => TypeKind::Other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
