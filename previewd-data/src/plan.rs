//! From a schema and a spec to a generation plan: rows per table, where each column's
//! values come from (a generator, a parent row through a foreign key, a unique-key digit),
//! the load order by required foreign keys, and the foreign keys filled in afterwards
//! because they close a cycle. The plan then answers "what is the value of (table, column,
//! row)" as a pure function, which is what makes output reproducible and parallel.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::Rng;

use crate::advisor::advice_is_sane;
use crate::checks::ColumnRule;
use crate::error::DataError;
use crate::generate::{
    CellContext, GeneratorKind, Value, cell_rng, heuristic_kind, scalar_value, stream_key,
};
use crate::schema::{Schema, TableId, TypeKind};
use crate::spec::{DEFAULT_ROWS, Strategy, TestDataSpec};

/// No plan generates more rows than this in total.
pub const MAX_TOTAL_ROWS: u64 = 100_000_000;

/// Percentage of NULLs in nullable, non-key columns.
const NULL_PERCENT: u32 = 5;
/// Percentage of NULLs in nullable foreign keys.
const NULL_FK_PERCENT: u32 = 10;

/// Existing values of referenced columns of tables that already hold rows:
/// (table, columns) → rows of text values.
pub type ExistingKeys = HashMap<(TableId, Vec<usize>), Vec<Vec<Option<String>>>>;

/// Where a column's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Not written; the database default applies (generated columns, types with defaults
    /// the engine cannot produce).
    Omit,
    /// Always NULL (nullable columns of types the engine cannot produce).
    Null,
    /// A generator.
    Scalar {
        /// Generator kind.
        kind: GeneratorKind,
        /// Every row gets a distinct value.
        unique: bool,
    },
    /// An array of generated elements.
    Array(GeneratorKind),
    /// The referenced column of the parent row chosen for foreign key `fk`.
    Foreign {
        /// Foreign key index in the table.
        fk: usize,
        /// Position of this column in the foreign key.
        position: usize,
    },
    /// A digit of a composite unique key: its value follows from the row's position in the
    /// key's space of combinations.
    Digit {
        /// Group index in the table plan.
        group: usize,
        /// Digit index in the group.
        digit: usize,
        /// Generator of an unbounded digit's values.
        kind: Option<GeneratorKind>,
    },
}

/// How a foreign key chooses its parent row.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// A random parent row.
    Random,
    /// A self-reference: a random earlier row (a tree); the first row has no parent.
    Tree,
    /// A digit of a unique group.
    Digit {
        /// Group index.
        group: usize,
        /// Digit index.
        digit: usize,
    },
}

/// One foreign key of a planned table.
#[derive(Debug, Clone)]
pub struct FkPlan {
    /// How the parent row is chosen.
    pub pick: Pick,
    /// Every column of the key is nullable.
    pub nullable: bool,
    /// Written NULL first and filled in by an UPDATE after every table is loaded (it
    /// closes a cycle, or its parent is loaded at the same time).
    pub deferred: bool,
    /// Random stream of the parent choice.
    pub key: [u8; 32],
}

/// A digit of a unique group.
#[derive(Debug, Clone, PartialEq)]
pub enum DigitKind {
    /// A foreign key: the digit is the parent row.
    Foreign(usize),
    /// A column with a finite set of values (enum, `IN` list, boolean).
    Finite {
        /// Column index.
        column: usize,
        /// The values (text form); booleans are `f`, `t`.
        values: Vec<String>,
    },
    /// A column made injective: the quotient of the row by the finite digits' capacity.
    Unbounded(usize),
}

/// A unique key whose uniqueness is built by enumerating combinations.
#[derive(Debug, Clone)]
pub struct Group {
    /// Constraint name.
    pub name: String,
    /// Finite digits first, then at most one unbounded digit.
    pub digits: Vec<DigitKind>,
    /// Radix of each finite digit (filled in once row counts are final).
    pub radices: Vec<u64>,
    /// Product of the finite radices.
    pub capacity: u128,
    /// Affine permutation `r → (a·r + b) mod capacity`.
    pub a: u128,
    /// See `a`.
    pub b: u128,
}

impl Group {
    fn has_unbounded(&self) -> bool {
        self.digits
            .iter()
            .any(|d| matches!(d, DigitKind::Unbounded(_)))
    }

    /// The digits of row `row`: finite digits in order, then the quotient.
    fn decompose(&self, row: u64) -> (Vec<u64>, u64) {
        let cap = self.capacity.max(1);
        let (q, r) = if self.has_unbounded() {
            ((u128::from(row) / cap) as u64, u128::from(row) % cap)
        } else {
            (0, u128::from(row) % cap)
        };
        let mut x = (self.a * r + self.b) % cap;
        let mut digits = Vec::with_capacity(self.radices.len());
        for radix in &self.radices {
            let radix = u128::from((*radix).max(1));
            digits.push((x % radix) as u64);
            x /= radix;
        }
        (digits, q)
    }
}

/// The plan of one table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    /// Rows to generate.
    pub rows: u64,
    /// The count was given in the spec.
    pub explicit: bool,
    /// The table already held rows: it is left as it is and its rows serve as parents.
    pub kept: bool,
    /// Source of each column.
    pub sources: Vec<Source>,
    /// Random stream key of each column.
    pub keys: Vec<[u8; 32]>,
    /// Foreign keys, in the table's order.
    pub fks: Vec<FkPlan>,
    /// Unique groups.
    pub groups: Vec<Group>,
    /// Load level: every table of a level can be loaded at the same time.
    pub level: usize,
}

impl TablePlan {
    /// Columns written by COPY (indices).
    pub fn written_columns(&self) -> Vec<usize> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != Source::Omit)
            .map(|(i, _)| i)
            .collect()
    }

    /// Foreign keys filled in after loading.
    pub fn deferred_fks(&self) -> Vec<usize> {
        self.fks
            .iter()
            .enumerate()
            .filter(|(_, f)| f.deferred)
            .map(|(i, _)| i)
            .collect()
    }
}

/// A complete generation plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// One plan per schema table (same indices).
    pub tables: Vec<TablePlan>,
    /// Load levels: tables (with rows) grouped by level, in order.
    pub levels: Vec<Vec<TableId>>,
    /// Things worth telling the user (capped counts, checks not understood, ...).
    pub warnings: Vec<String>,
    /// Values of referenced columns of kept tables.
    pub existing: ExistingKeys,
}

/// Builds the plan. `advice` maps `schema.table.column` to a generator kind chosen by a
/// model; kinds that do not fit the column are ignored.
pub fn build_plan(
    schema: &Schema,
    spec: &TestDataSpec,
    advice: &BTreeMap<String, GeneratorKind>,
    existing: ExistingKeys,
) -> Result<Plan, DataError> {
    let seed = spec.seed();
    let mut warnings = Vec::new();
    let mut tables: Vec<TablePlan> = Vec::with_capacity(schema.tables.len());

    // 1. Row counts.
    let mut explicit: HashMap<TableId, u64> = HashMap::new();
    for (name, count) in &spec.counts {
        let Some(id) = schema.find(name)? else {
            return Err(DataError::Spec(format!(
                "counts names table {name:?}, which the database does not have"
            )));
        };
        if *count < 0 {
            return Err(DataError::Spec(format!(
                "counts for {name:?} is negative ({count})"
            )));
        }
        explicit.insert(id, *count as u64);
    }
    if spec.default_rows.is_some_and(|d| d < 0) {
        return Err(DataError::Spec("defaultRows is negative".into()));
    }
    let default_rows = match spec.strategy {
        Strategy::Minimal => 0,
        _ => spec.default_rows.unwrap_or(DEFAULT_ROWS) as u64,
    };

    // 2. Column sources.
    for (tid, table) in schema.tables.iter().enumerate() {
        let kept = table.has_rows;
        let rows = if kept {
            if explicit.contains_key(&tid) {
                warnings.push(format!(
                    "{} already holds rows: left as it is",
                    table.display_name()
                ));
            }
            0
        } else {
            explicit.get(&tid).copied().unwrap_or(default_rows)
        };
        let mut sources = vec![Source::Omit; table.columns.len()];
        let keys: Vec<[u8; 32]> = table
            .columns
            .iter()
            .map(|c| stream_key(seed, &table.schema, &table.name, &c.name))
            .collect();
        let mut fks = Vec::new();
        let mut fk_of_column: HashMap<usize, usize> = HashMap::new();
        for (i, fk) in table.foreign_keys.iter().enumerate() {
            for (pos, col) in fk.columns.iter().enumerate() {
                if let Some(other) = fk_of_column.get(col) {
                    return Err(DataError::Schema(format!(
                        "{}: column {} belongs to two foreign keys ({} and {}); overlapping \
                         foreign keys are not supported",
                        table.display_name(),
                        table.columns[*col].name,
                        table.foreign_keys[*other].name,
                        fk.name
                    )));
                }
                fk_of_column.insert(*col, i);
                sources[*col] = Source::Foreign {
                    fk: i,
                    position: pos,
                };
            }
            fks.push(FkPlan {
                pick: if fk.parent == tid {
                    Pick::Tree
                } else {
                    Pick::Random
                },
                nullable: fk.columns.iter().all(|c| !table.columns[*c].not_null),
                deferred: false,
                key: stream_key(seed, &table.schema, &table.name, &format!("fk:{}", fk.name)),
            });
        }
        let pk_single = table
            .primary_key
            .as_ref()
            .filter(|pk| pk.len() == 1)
            .map(|pk| pk[0]);
        for (c, col) in table.columns.iter().enumerate() {
            if fk_of_column.contains_key(&c) {
                continue;
            }
            if col.generated {
                sources[c] = Source::Omit;
                continue;
            }
            let qualified = format!("{}.{}.{}", table.schema, table.name, col.name);
            let single_unique = table
                .uniques
                .iter()
                .map(|u| u.columns.as_slice())
                .chain(table.primary_key.as_deref())
                .any(|cols| cols == [c]);
            let exact = matches!(col.kind, TypeKind::Enum(_))
                || col.rules.iter().any(|r| matches!(r, ColumnRule::OneOf(_)));
            let advised = advice.get(&qualified).filter(|k| {
                k.fits(&col.kind)
                    && advice_is_sane(k)
                    && !exact
                    && (!single_unique || k.can_be_unique())
            });
            let kind = if Some(c) == pk_single && col.kind.is_integer() {
                Some(GeneratorKind::Sequence)
            } else {
                advised
                    .cloned()
                    .or_else(|| heuristic_kind(&table.name, col))
            };
            sources[c] = match (kind, &col.kind) {
                (Some(kind), _) => Source::Scalar {
                    kind,
                    unique: false,
                },
                (None, TypeKind::Array(elem)) => {
                    let mut elem_col = col.clone();
                    elem_col.kind = (**elem).clone();
                    elem_col.rules.clear();
                    match heuristic_kind(&table.name, &elem_col) {
                        Some(k) => Source::Array(k),
                        None if col.has_default => Source::Omit,
                        None if !col.not_null => Source::Null,
                        None => return Err(cannot_generate(table, c)),
                    }
                }
                (None, _) if col.has_default => Source::Omit,
                (None, _) if !col.not_null => Source::Null,
                (None, _) => return Err(cannot_generate(table, c)),
            };
        }
        for check in &table.checks {
            if !check.understood {
                warnings.push(format!(
                    "{}: check constraint {} is not understood ({}); the database enforces it",
                    table.display_name(),
                    check.name,
                    check.definition
                ));
            }
        }
        tables.push(TablePlan {
            rows,
            explicit: explicit.contains_key(&tid),
            kept,
            sources,
            keys,
            fks,
            groups: Vec::new(),
            level: 0,
        });
    }

    // 3. Unique keys.
    for (tid, table) in schema.tables.iter().enumerate() {
        let mut keys: Vec<(String, Vec<usize>)> = Vec::new();
        if let Some(pk) = &table.primary_key {
            keys.push((format!("{}_pkey", table.name), pk.clone()));
        }
        for u in &table.uniques {
            keys.push((u.name.clone(), u.columns.clone()));
        }
        keys.sort_by_key(|(_, cols)| cols.len());
        let plan = &mut tables[tid];
        for (name, cols) in keys {
            plan_unique(table, plan, &name, &cols, seed)?;
        }
    }

    // 4. Row counts that foreign keys and unique keys need.
    settle_counts(schema, &mut tables, &existing, spec.strategy, &mut warnings)?;
    let total: u64 = tables.iter().map(|t| t.rows).sum();
    if total > MAX_TOTAL_ROWS {
        return Err(DataError::Spec(format!(
            "{total} rows requested; at most {MAX_TOTAL_ROWS} are generated"
        )));
    }

    // 5. Order.
    let levels = order(schema, &mut tables, &mut warnings)?;
    Ok(Plan {
        seed,
        tables,
        levels,
        warnings,
        existing,
    })
}

fn cannot_generate(table: &crate::schema::Table, c: usize) -> DataError {
    DataError::Schema(format!(
        "{}.{}: no generator for type {} (NOT NULL, no default)",
        table.display_name(),
        table.columns[c].name,
        table.columns[c].type_name
    ))
}

fn is_controlled(plan: &TablePlan, c: usize) -> bool {
    match &plan.sources[c] {
        Source::Scalar { unique, .. } => *unique,
        Source::Digit { .. } => true,
        Source::Foreign { fk, .. } => matches!(plan.fks[*fk].pick, Pick::Digit { .. }),
        _ => false,
    }
}

fn plan_unique(
    table: &crate::schema::Table,
    plan: &mut TablePlan,
    name: &str,
    cols: &[usize],
    seed: u64,
) -> Result<(), DataError> {
    // Already unique through a member column or a foreign key that is a unique digit of a
    // group made of that key alone.
    for &c in cols {
        match &plan.sources[c] {
            Source::Scalar { unique: true, .. } => return Ok(()),
            Source::Foreign { fk, .. } => {
                if let Pick::Digit { group, .. } = plan.fks[*fk].pick {
                    let g = &plan.groups[group];
                    if g.digits.len() == 1
                        && table.foreign_keys[*fk]
                            .columns
                            .iter()
                            .all(|x| cols.contains(x))
                    {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    // A single free scalar that can be made injective.
    if cols.len() == 1 {
        let c = cols[0];
        if let Source::Scalar { kind, unique } = &mut plan.sources[c]
            && kind.can_be_unique()
        {
            *unique = true;
            return Ok(());
        }
    }
    let mut digits: Vec<DigitKind> = Vec::new();
    let mut unbounded: Option<usize> = None;
    let mut used_fks: HashSet<usize> = HashSet::new();
    for &c in cols {
        if is_controlled(plan, c) {
            continue;
        }
        match &plan.sources[c] {
            Source::Foreign { fk, .. } => {
                let fk = *fk;
                if used_fks.contains(&fk) {
                    continue;
                }
                let covered = table.foreign_keys[fk]
                    .columns
                    .iter()
                    .all(|x| cols.contains(x));
                if covered {
                    used_fks.insert(fk);
                    digits.push(DigitKind::Foreign(fk));
                }
            }
            Source::Scalar { kind, .. } => {
                if let GeneratorKind::OneOf { values } = kind {
                    digits.push(DigitKind::Finite {
                        column: c,
                        values: values.clone(),
                    });
                } else if *kind == GeneratorKind::Boolean {
                    digits.push(DigitKind::Finite {
                        column: c,
                        values: vec!["f".into(), "t".into()],
                    });
                } else if unbounded.is_none() && kind.can_be_unique() {
                    unbounded = Some(c);
                }
            }
            _ => {}
        }
    }
    if digits.is_empty() && unbounded.is_none() {
        return Err(DataError::Schema(format!(
            "{}: cannot keep unique key {name} unique (its columns are all taken by other keys)",
            table.display_name()
        )));
    }
    if digits.is_empty()
        && let Some(c) = unbounded
        && let Source::Scalar { unique, .. } = &mut plan.sources[c]
    {
        *unique = true;
        return Ok(());
    }
    let group = plan.groups.len();
    if let Some(c) = unbounded {
        digits.push(DigitKind::Unbounded(c));
    }
    for (d, digit) in digits.iter().enumerate() {
        match digit {
            DigitKind::Foreign(fk) => plan.fks[*fk].pick = Pick::Digit { group, digit: d },
            DigitKind::Finite { column, .. } | DigitKind::Unbounded(column) => {
                let kind = match &plan.sources[*column] {
                    Source::Scalar { kind, .. } => Some(kind.clone()),
                    _ => None,
                };
                plan.sources[*column] = Source::Digit {
                    group,
                    digit: d,
                    kind,
                };
            }
        }
    }
    let key = stream_key(seed, &table.schema, &table.name, &format!("unique:{name}"));
    let mut rng = cell_rng(&key, 0);
    plan.groups.push(Group {
        name: name.to_string(),
        digits,
        radices: Vec::new(),
        capacity: 0,
        a: u128::from(rng.random::<u32>()),
        b: u128::from(rng.random::<u32>()),
    });
    Ok(())
}

fn parent_rows(
    schema: &Schema,
    tables: &[TablePlan],
    existing: &ExistingKeys,
    tid: TableId,
    fk: usize,
) -> u64 {
    let f = &schema.tables[tid].foreign_keys[fk];
    let parent = &tables[f.parent];
    if parent.kept {
        existing
            .get(&(f.parent, f.parent_columns.clone()))
            .map_or(0, |v| v.len() as u64)
    } else {
        parent.rows
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Raises parent counts that required foreign keys need (only counts not given in the
/// spec), caps or refuses counts that unique keys cannot hold, and fills in group radices.
fn settle_counts(
    schema: &Schema,
    tables: &mut [TablePlan],
    existing: &ExistingKeys,
    strategy: Strategy,
    warnings: &mut Vec<String>,
) -> Result<(), DataError> {
    for _round in 0..64 {
        let mut changed = false;
        for tid in 0..tables.len() {
            if tables[tid].rows == 0 {
                continue;
            }
            let table = &schema.tables[tid];
            // Required parents get at least one row.
            for (i, fk) in table.foreign_keys.iter().enumerate() {
                if tables[tid].fks[i].nullable || fk.parent == tid {
                    continue;
                }
                let have = parent_rows(schema, tables, existing, tid, i);
                if have == 0 {
                    let parent = &mut tables[fk.parent];
                    if parent.kept || parent.explicit {
                        return Err(DataError::Spec(format!(
                            "{} needs rows in {} (foreign key {}), which gets none",
                            table.display_name(),
                            schema.tables[fk.parent].display_name(),
                            fk.name
                        )));
                    }
                    parent.rows = 1;
                    changed = true;
                }
            }
            // Unique groups without an unbounded digit hold a limited number of rows.
            for g in 0..tables[tid].groups.len() {
                let group = tables[tid].groups[g].clone();
                if group.has_unbounded() {
                    continue;
                }
                let radices: Vec<u64> = group
                    .digits
                    .iter()
                    .map(|d| match d {
                        DigitKind::Foreign(fk) => parent_rows(schema, tables, existing, tid, *fk),
                        DigitKind::Finite { values, .. } => values.len() as u64,
                        DigitKind::Unbounded(_) => 1,
                    })
                    .collect();
                let capacity: u128 = radices.iter().map(|r| u128::from(*r)).product();
                let rows = tables[tid].rows;
                if u128::from(rows) <= capacity {
                    continue;
                }
                // Minimal: grow a parent whose count is ours to choose.
                if strategy == Strategy::Minimal {
                    let grow = group.digits.iter().enumerate().find_map(|(d, digit)| {
                        let DigitKind::Foreign(fk) = digit else {
                            return None;
                        };
                        let parent = table.foreign_keys[*fk].parent;
                        let p = &tables[parent];
                        (!p.kept && !p.explicit && parent != tid).then_some((d, parent))
                    });
                    if let Some((d, parent)) = grow {
                        let others: u128 = radices
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != d)
                            .map(|(_, r)| u128::from(*r))
                            .product::<u128>()
                            .max(1);
                        let need = u128::from(rows).div_ceil(others) as u64;
                        if need > tables[parent].rows {
                            tables[parent].rows = need;
                            changed = true;
                            continue;
                        }
                    }
                }
                if tables[tid].explicit {
                    return Err(DataError::Spec(format!(
                        "{}: {rows} rows cannot keep unique key {} unique; its columns allow \
                         {capacity} combinations",
                        table.display_name(),
                        group.name
                    )));
                }
                warnings.push(format!(
                    "{}: {rows} rows capped to {capacity}, the combinations unique key {} allows",
                    table.display_name(),
                    group.name
                ));
                tables[tid].rows = capacity as u64;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Final radices and permutations.
    for tid in 0..tables.len() {
        for g in 0..tables[tid].groups.len() {
            let radices: Vec<u64> = tables[tid].groups[g]
                .digits
                .iter()
                .filter_map(|d| match d {
                    DigitKind::Foreign(fk) => Some(parent_rows(schema, tables, existing, tid, *fk)),
                    DigitKind::Finite { values, .. } => Some(values.len() as u64),
                    DigitKind::Unbounded(_) => None,
                })
                .collect();
            let capacity: u128 = radices.iter().map(|r| u128::from(*r)).product();
            let group = &mut tables[tid].groups[g];
            group.radices = radices;
            group.capacity = capacity;
            if capacity > 1 {
                let mut a = group.a % capacity;
                if a == 0 {
                    a = 1;
                }
                while gcd(a, capacity) != 1 {
                    a += 1;
                }
                group.a = a;
                group.b %= capacity;
            } else {
                group.a = 1;
                group.b = 0;
            }
        }
    }
    Ok(())
}

/// Topological levels over required foreign keys plus the nullable ones that close no cycle;
/// the remaining nullable ones are deferred. A cycle of required keys is an error.
fn order(
    schema: &Schema,
    tables: &mut [TablePlan],
    warnings: &mut Vec<String>,
) -> Result<Vec<Vec<TableId>>, DataError> {
    let n = tables.len();
    let loaded = |t: &TablePlan| t.rows > 0 && !t.kept;
    let mut edges: Vec<Vec<TableId>> = vec![Vec::new(); n];
    // Required edges.
    for tid in 0..n {
        if !loaded(&tables[tid]) {
            continue;
        }
        for (i, fk) in schema.tables[tid].foreign_keys.iter().enumerate() {
            if fk.parent != tid && !tables[tid].fks[i].nullable && loaded(&tables[fk.parent]) {
                edges[tid].push(fk.parent);
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let fk = schema.tables[w[0]]
                    .foreign_keys
                    .iter()
                    .find(|f| f.parent == w[1])
                    .map_or(String::new(), |f| {
                        let cols: Vec<&str> = f
                            .columns
                            .iter()
                            .map(|c| schema.tables[w[0]].columns[*c].name.as_str())
                            .collect();
                        format!(".{}", cols.join(","))
                    });
                format!(
                    "{}{fk} → {}",
                    schema.tables[w[0]].display_name(),
                    schema.tables[w[1]].display_name()
                )
            })
            .collect();
        return Err(DataError::Schema(format!(
            "required foreign-key cycle: {}; make one of these columns nullable so it can be \
             filled in after the rows exist",
            names.join(", ")
        )));
    }
    // Nullable edges that keep the graph acyclic; the others are deferred.
    for tid in 0..n {
        if !loaded(&tables[tid]) {
            continue;
        }
        for (i, fk) in schema.tables[tid].foreign_keys.iter().enumerate() {
            if fk.parent == tid || !tables[tid].fks[i].nullable || !loaded(&tables[fk.parent]) {
                continue;
            }
            if reachable(&edges, fk.parent, tid) {
                if schema.tables[tid].row_key().is_none() {
                    warnings.push(format!(
                        "{}: foreign key {} closes a cycle and the table has no key to update \
                         rows by; it stays NULL",
                        schema.tables[tid].display_name(),
                        fk.name
                    ));
                    // Deferred without an update: written NULL, never filled in.
                }
                tables[tid].fks[i].deferred = true;
            } else {
                edges[tid].push(fk.parent);
            }
        }
    }
    // Levels: longest path to a table without parents.
    let mut level: Vec<Option<usize>> = vec![None; n];
    fn depth(t: usize, edges: &[Vec<usize>], level: &mut [Option<usize>]) -> usize {
        if let Some(l) = level[t] {
            return l;
        }
        let l = edges[t]
            .iter()
            .map(|p| depth(*p, edges, level) + 1)
            .max()
            .unwrap_or(0);
        level[t] = Some(l);
        l
    }
    let mut levels: Vec<Vec<TableId>> = Vec::new();
    #[allow(clippy::needless_range_loop)]
    for tid in 0..n {
        if !loaded(&tables[tid]) {
            continue;
        }
        let l = depth(tid, &edges, &mut level);
        tables[tid].level = l;
        if levels.len() <= l {
            levels.resize(l + 1, Vec::new());
        }
        levels[l].push(tid);
    }
    Ok(levels)
}

fn reachable(edges: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![from];
    while let Some(t) = stack.pop() {
        if t == to {
            return true;
        }
        if std::mem::replace(&mut seen[t], true) {
            continue;
        }
        stack.extend(edges[t].iter().copied());
    }
    false
}

/// A cycle as a path `[a, b, ..., a]`.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on stack, 2 = done.
    let mut state = vec![0u8; edges.len()];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        t: usize,
        edges: &[Vec<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[t] = 1;
        path.push(t);
        for &p in &edges[t] {
            if state[p] == 1 {
                let start = path.iter().position(|x| *x == p).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(p);
                return Some(cycle);
            }
            if state[p] == 0
                && let Some(c) = visit(p, edges, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state[t] = 2;
        None
    }
    for t in 0..edges.len() {
        if state[t] == 0
            && let Some(c) = visit(t, edges, &mut state, &mut path)
        {
            return Some(c);
        }
    }
    None
}

/// Rows of a table's parent and the parent row a foreign key picks.
impl Plan {
    /// The parent row foreign key `fk` of `table` picks for `row`, `None` for NULL.
    pub fn parent_row(&self, schema: &Schema, table: TableId, fk: usize, row: u64) -> Option<u64> {
        let t = &self.tables[table];
        let f = &schema.tables[table].foreign_keys[fk];
        let plan = &t.fks[fk];
        let parents = if self.tables[f.parent].kept {
            self.existing
                .get(&(f.parent, f.parent_columns.clone()))
                .map_or(0, |v| v.len() as u64)
        } else {
            self.tables[f.parent].rows
        };
        if parents == 0 {
            return None;
        }
        let mut rng = cell_rng(&plan.key, row);
        match plan.pick {
            Pick::Digit { group, digit } => {
                let (digits, _) = t.groups[group].decompose(row);
                Some(digits[digit])
            }
            Pick::Tree => {
                if row == 0 || (plan.nullable && rng.random_range(0..100) < NULL_FK_PERCENT) {
                    if plan.nullable { None } else { Some(0) }
                } else {
                    Some(rng.random_range(0..row.min(parents)))
                }
            }
            Pick::Random => {
                if plan.nullable && rng.random_range(0..100) < NULL_FK_PERCENT {
                    None
                } else {
                    Some(rng.random_range(0..parents))
                }
            }
        }
    }

    /// The value of one cell.
    pub fn cell(&self, schema: &Schema, table: TableId, column: usize, row: u64) -> Value {
        self.cell_at_depth(schema, table, column, row, 0)
    }

    fn cell_at_depth(
        &self,
        schema: &Schema,
        table: TableId,
        column: usize,
        row: u64,
        depth: u32,
    ) -> Value {
        if depth > 32 {
            return Value::Null;
        }
        let t = &self.tables[table];
        let col = &schema.tables[table].columns[column];
        match &t.sources[column] {
            Source::Omit | Source::Null => Value::Null,
            Source::Foreign { fk, position } => {
                let Some(parent_row) = self.parent_row(schema, table, *fk, row) else {
                    return Value::Null;
                };
                let f = &schema.tables[table].foreign_keys[*fk];
                if self.tables[f.parent].kept {
                    let rows = self.existing.get(&(f.parent, f.parent_columns.clone()));
                    match rows
                        .and_then(|r| r.get(parent_row as usize))
                        .and_then(|r| r.get(*position))
                    {
                        Some(Some(v)) => Value::Text(v.clone()),
                        _ => Value::Null,
                    }
                } else {
                    self.cell_at_depth(
                        schema,
                        f.parent,
                        f.parent_columns[*position],
                        parent_row,
                        depth + 1,
                    )
                }
            }
            Source::Digit { group, digit, kind } => {
                let g = &t.groups[*group];
                let (digits, q) = g.decompose(row);
                match &g.digits[*digit] {
                    DigitKind::Finite { values, .. } => {
                        let v = &values[digits[*digit] as usize % values.len().max(1)];
                        if col.kind == TypeKind::Bool {
                            Value::Bool(v == "t")
                        } else {
                            Value::Text(v.clone())
                        }
                    }
                    DigitKind::Unbounded(_) => {
                        let kind = kind.clone().unwrap_or(GeneratorKind::Sequence);
                        self.scalar(schema, table, column, &kind, row, Some(q), depth)
                    }
                    DigitKind::Foreign(_) => Value::Null,
                }
            }
            Source::Scalar { kind, unique } => {
                if !unique && !col.not_null && !self.is_rule_anchor(schema, table, column) {
                    let mut rng = cell_rng(&t.keys[column], row);
                    // A separate draw from the same stream decides NULL; the value draws
                    // come from a fresh stream below, so NULLs do not shift other rows.
                    if rng.random_range(0..100) < NULL_PERCENT {
                        return Value::Null;
                    }
                }
                let unique_index = unique.then_some(row);
                self.scalar(schema, table, column, kind, row, unique_index, depth)
            }
            Source::Array(kind) => {
                let mut rng = cell_rng(&t.keys[column], row);
                let n = rng.random_range(0..4usize);
                let mut elem_col = col.clone();
                if let TypeKind::Array(e) = &col.kind {
                    elem_col.kind = (**e).clone();
                }
                elem_col.rules.clear();
                let mut out = String::from("{");
                for i in 0..n {
                    let v = scalar_value(CellContext {
                        column: &elem_col,
                        kind,
                        rng: &mut rng,
                        unique_index: None,
                    });
                    if i > 0 {
                        out.push(',');
                    }
                    let mut s = String::new();
                    v.write_text(&elem_col.kind, &mut s);
                    out.push('"');
                    for ch in s.chars() {
                        if ch == '"' || ch == '\\' {
                            out.push('\\');
                        }
                        out.push(ch);
                    }
                    out.push('"');
                }
                out.push('}');
                Value::Text(out)
            }
        }
    }

    /// Whether another column's `After` rule refers to this one (it then keeps a value so
    /// the comparison is meaningful).
    fn is_rule_anchor(&self, schema: &Schema, table: TableId, column: usize) -> bool {
        schema.tables[table].columns.iter().any(|c| {
            c.rules
                .iter()
                .any(|r| matches!(r, ColumnRule::After { column: o, .. } if *o == column))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn scalar(
        &self,
        schema: &Schema,
        table: TableId,
        column: usize,
        kind: &GeneratorKind,
        row: u64,
        unique_index: Option<u64>,
        depth: u32,
    ) -> Value {
        let t = &self.tables[table];
        let col = &schema.tables[table].columns[column];
        if *kind == GeneratorKind::Sequence && col.kind.is_integer() && col.rules.is_empty() {
            return Value::Int(unique_index.unwrap_or(row) as i64 + 1);
        }
        let mut key = t.keys[column];
        key[31] ^= 0x5a; // value stream, distinct from the NULL draw
        let mut rng = cell_rng(&key, row);
        let value = scalar_value(CellContext {
            column: col,
            kind,
            rng: &mut rng,
            unique_index: unique_index.or((*kind == GeneratorKind::Sequence).then_some(row)),
        });
        // `a > b` checks: a follows b by a positive step.
        for rule in &col.rules {
            if let ColumnRule::After { column: other, .. } = rule {
                let base = self.cell_at_depth(schema, table, *other, row, depth + 1);
                let step: i64 = rng.random_range(1..=30);
                return match base {
                    Value::Null => value,
                    Value::Int(v) => Value::Int(v + step),
                    Value::Float(v) => Value::Float(v + step as f64),
                    Value::Decimal { units, scale } => Value::Decimal {
                        units: units + i128::from(step) * 10i128.pow(scale),
                        scale,
                    },
                    Value::Date(d) => match col.kind {
                        TypeKind::Date => Value::Date(d + step),
                        _ => Value::Timestamp(d * 86_400 + step * 3_600),
                    },
                    Value::Timestamp(s) => match col.kind {
                        TypeKind::Date => Value::Date(s.div_euclid(86_400) + 1 + step),
                        _ => Value::Timestamp(s + step * 3_600 + rng.random_range(0..3_600)),
                    },
                    other => {
                        let _ = other;
                        value
                    }
                };
            }
        }
        value
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn groups_enumerate_distinct_combinations() {
        let g = Group {
            name: "k".into(),
            digits: vec![DigitKind::Foreign(0), DigitKind::Foreign(1)],
            radices: vec![7, 5],
            capacity: 35,
            a: 11,
            b: 3,
        };
        let mut seen = HashSet::new();
        for row in 0..35 {
            assert!(seen.insert(g.decompose(row).0));
        }
    }

    #[test]
    fn unbounded_digit_counts_up_per_combination() {
        let g = Group {
            name: "k".into(),
            digits: vec![DigitKind::Foreign(0), DigitKind::Unbounded(1)],
            radices: vec![4],
            capacity: 4,
            a: 3,
            b: 1,
        };
        let mut seen = HashSet::new();
        for row in 0..40 {
            let (d, q) = g.decompose(row);
            assert!(seen.insert((d, q)));
            assert_eq!(q, row / 4);
        }
    }

    #[test]
    fn cycles_are_found() {
        let edges = vec![vec![1], vec![2], vec![0], vec![]];
        let c = find_cycle(&edges).unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
        assert!(find_cycle(&[vec![1], vec![], vec![0]]).is_none());
    }
}
