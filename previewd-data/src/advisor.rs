//! The optional hook where a model chooses a generator kind per column, from the closed
//! vocabulary of [`GeneratorKind`], once per schema. The engine works without it: the
//! default advisor answers nothing and the heuristics decide. Whatever an advisor answers is
//! checked column by column; kinds that do not fit a column are ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::generate::GeneratorKind;
use crate::schema::{Schema, TypeKind};

/// A column a model may choose a generator for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ColumnOutline {
    /// `schema.table.column`.
    pub key: String,
    /// Type as PostgreSQL prints it.
    pub type_name: String,
}

/// What an advisor sees: column names and types only, never data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaOutline {
    /// Columns that are not keys, in schema order.
    pub columns: Vec<ColumnOutline>,
}

impl SchemaOutline {
    /// The columns of a schema a model may choose for: not part of a foreign key, not a
    /// generated column, not an enum (its labels are exact already).
    pub fn of(schema: &Schema) -> Self {
        let mut columns = Vec::new();
        for t in &schema.tables {
            for (i, c) in t.columns.iter().enumerate() {
                let in_fk = t.foreign_keys.iter().any(|f| f.columns.contains(&i));
                if in_fk || c.generated || matches!(c.kind, TypeKind::Enum(_) | TypeKind::Other) {
                    continue;
                }
                columns.push(ColumnOutline {
                    key: format!("{}.{}.{}", t.schema, t.name, c.name),
                    type_name: c.type_name.clone(),
                });
            }
        }
        SchemaOutline { columns }
    }

    /// A stable fingerprint (cache key).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for c in &self.columns {
            h.update(c.key.as_bytes());
            h.update([0]);
            h.update(c.type_name.as_bytes());
            h.update([1]);
        }
        hex_string(&h.finalize())
    }
}

fn hex_string(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Why an advisor gave no answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdvisorError(pub String);

/// Chooses generator kinds per column (`schema.table.column` → kind).
#[async_trait]
pub trait GeneratorAdvisor: Send + Sync {
    /// Name for reports.
    fn name(&self) -> &str;
    /// Kinds for some columns; columns left out use the heuristics.
    async fn advise(
        &self,
        outline: &SchemaOutline,
    ) -> Result<BTreeMap<String, GeneratorKind>, AdvisorError>;
}

/// The deterministic default: no advice, heuristics only.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeuristicsOnly;

#[async_trait]
impl GeneratorAdvisor for HeuristicsOnly {
    fn name(&self) -> &str {
        "heuristics"
    }

    async fn advise(
        &self,
        _outline: &SchemaOutline,
    ) -> Result<BTreeMap<String, GeneratorKind>, AdvisorError> {
        Ok(BTreeMap::new())
    }
}

/// Asks the inner advisor once per schema fingerprint and remembers the answer.
pub struct CachedAdvisor<A> {
    inner: A,
    cache: Mutex<HashMap<String, BTreeMap<String, GeneratorKind>>>,
}

impl<A> CachedAdvisor<A> {
    /// Wraps an advisor.
    pub fn new(inner: A) -> Self {
        CachedAdvisor {
            inner,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<A: GeneratorAdvisor> GeneratorAdvisor for CachedAdvisor<A> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn advise(
        &self,
        outline: &SchemaOutline,
    ) -> Result<BTreeMap<String, GeneratorKind>, AdvisorError> {
        let key = outline.fingerprint();
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(hit);
        }
        let answer = self.inner.advise(outline).await?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, answer.clone());
        }
        Ok(answer)
    }
}

/// Whether an advised kind is acceptable: parameters in range, values short.
pub fn advice_is_sane(kind: &GeneratorKind) -> bool {
    match kind {
        GeneratorKind::Integer { min, max } => min <= max,
        GeneratorKind::Decimal { min, max } | GeneratorKind::Float { min, max } => {
            min.is_finite() && max.is_finite() && min <= max && max.abs() < 1e15 && min.abs() < 1e15
        }
        GeneratorKind::OneOf { values } | GeneratorKind::Vocabulary { values } => {
            !values.is_empty() && values.len() <= 1_000 && values.iter().all(|v| v.len() <= 200)
        }
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    #[async_trait]
    impl GeneratorAdvisor for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        async fn advise(
            &self,
            _outline: &SchemaOutline,
        ) -> Result<BTreeMap<String, GeneratorKind>, AdvisorError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(BTreeMap::from([(
                "public.users.nickname".to_string(),
                GeneratorKind::Username,
            )]))
        }
    }

    #[tokio::test]
    async fn asks_once_per_schema() {
        let advisor = CachedAdvisor::new(Counting(AtomicUsize::new(0)));
        let outline = SchemaOutline {
            columns: vec![ColumnOutline {
                key: "public.users.nickname".into(),
                type_name: "text".into(),
            }],
        };
        let a = advisor.advise(&outline).await.unwrap();
        let b = advisor.advise(&outline).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(advisor.inner.0.load(Ordering::SeqCst), 1);
        let other = SchemaOutline { columns: vec![] };
        advisor.advise(&other).await.unwrap();
        assert_eq!(advisor.inner.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn insane_parameters_are_refused() {
        assert!(!advice_is_sane(&GeneratorKind::Integer { min: 5, max: 1 }));
        assert!(!advice_is_sane(&GeneratorKind::Float {
            min: f64::NAN,
            max: 1.0
        }));
        assert!(!advice_is_sane(&GeneratorKind::OneOf { values: vec![] }));
        assert!(advice_is_sane(&GeneratorKind::Email));
    }

    #[test]
    fn kinds_serialise_as_a_closed_vocabulary() {
        let k: GeneratorKind = serde_json::from_str(r#"{"kind":"one_of","values":["a"]}"#).unwrap();
        assert_eq!(
            k,
            GeneratorKind::OneOf {
                values: vec!["a".into()]
            }
        );
        assert!(serde_json::from_str::<GeneratorKind>(r#"{"kind":"drop_table"}"#).is_err());
        for name in GeneratorKind::NAMES {
            let json = match *name {
                "integer" => r#"{"kind":"integer","min":0,"max":1}"#.to_string(),
                "decimal" | "float" => format!(r#"{{"kind":"{name}","min":0,"max":1}}"#),
                "one_of" => r#"{"kind":"one_of","values":["x"]}"#.to_string(),
                n => format!(r#"{{"kind":"{n}"}}"#),
            };
            assert!(
                serde_json::from_str::<GeneratorKind>(&json).is_ok(),
                "{name}"
            );
        }
    }
}
