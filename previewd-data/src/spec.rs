//! What to seed: the `testData` section of a `PreviewEnvironment`, as a plain struct with the
//! same JSON shape as the CRD (`previewd-kube`'s `TestDataSpec`), so this crate needs no
//! Kubernetes dependency.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Rows per table when neither `counts` nor `defaultRows` says otherwise.
pub const DEFAULT_ROWS: i64 = 100;

/// How test data is produced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Generated from the schema, reproducible from the seed.
    #[default]
    Synthetic,
    /// Restore an anonymised dump provided by the platform team.
    ProductionSnapshot,
    /// Only the tables named in `counts` and the parent rows their required foreign keys need.
    Minimal,
}

/// The `testData` spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TestDataSpec {
    /// Seed the environment's database.
    #[serde(default)]
    pub enabled: bool,
    /// Strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Let a model pick column generators (`true`), or use heuristics only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_model: Option<bool>,
    /// Rows per table (`table` or `schema.table` → count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, i64>,
    /// Rows per table not listed in `counts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rows: Option<i64>,
    /// Seed of the generators; the same seed gives the same data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

impl TestDataSpec {
    /// The seed, 0 when unset.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0) as u64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_crd_shape() {
        let spec: TestDataSpec = serde_json::from_str(
            r#"{"enabled":true,"strategy":"production-snapshot","aiModel":false,
                "counts":{"users":100,"orders":500},"defaultRows":20,"seed":7}"#,
        )
        .unwrap();
        assert_eq!(spec.strategy, Strategy::ProductionSnapshot);
        assert_eq!(spec.counts["orders"], 500);
        assert_eq!(spec.default_rows, Some(20));
        assert_eq!(spec.seed(), 7);
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["defaultRows"], 20);
        assert_eq!(back["aiModel"], false);
        let empty: TestDataSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.strategy, Strategy::Synthetic);
        assert!(!empty.enabled);
    }
}
