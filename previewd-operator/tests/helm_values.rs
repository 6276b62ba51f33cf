//! The Helm chart's values reference (`docs/reference/helm-values.md`), generated from
//! `values.schema.json` (types, descriptions) and `values.yaml` (defaults), so that it
//! cannot drift: this fails when the committed file differs, and rewrites it with
//! `PREVIEWD_BLESS=1` (`scripts/manifests` does both). It also fails when the schema and
//! `values.yaml` disagree: a value without a schema entry, or a schema entry without a
//! default or a description.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/helm/previewd");
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/reference/helm-values.md"
);

fn schema() -> Value {
    let text = std::fs::read_to_string(format!("{CHART}/values.schema.json")).unwrap();
    serde_json::from_str(&text).expect("values.schema.json is JSON")
}

fn values() -> Value {
    let text = std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap();
    serde_saphyr::from_str(&text).expect("values.yaml is YAML")
}

/// The node itself, or the definition it refers to (`$ref: #/$defs/x`).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let path = reference.trim_start_matches('#');
            root.pointer(path)
                .unwrap_or_else(|| panic!("dangling {reference}"))
        }
        None => node,
    }
}

/// One documented value: its dotted path, type, default and description.
struct Row {
    path: String,
    kind: String,
    default: String,
    description: String,
}

fn kind_of(node: &Value) -> String {
    let mut kind = match &node["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    if let Some(values) = node["enum"].as_array() {
        kind = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ");
    } else if kind == "array"
        && let Some(item) = node["items"]["type"].as_str()
    {
        kind = format!("array of {item}");
    } else if kind == "object"
        && let Some(inner) = node["additionalProperties"]["type"].as_str()
    {
        kind = format!("map of {inner}");
    } else if node["pattern"].as_str() == Some("^([0-9]+(ns|us|ms|s|m|h|d))+$") {
        kind = "duration".into();
    }
    kind
}

fn default_of(value: Option<&Value>) -> String {
    match value {
        None => String::new(),
        Some(Value::String(s)) if s.is_empty() => "`\"\"`".into(),
        Some(v) => {
            let text = serde_json::to_string(v).unwrap();
            let text = text.trim_matches('"').replace('|', "\\|");
            if text.len() > 80 {
                "see values.yaml".into()
            } else {
                format!("`{text}`")
            }
        }
    }
}

/// Walks the schema: every value becomes one row.
fn walk(root: &Value, node: &Value, values: Option<&Value>, path: &str, rows: &mut Vec<Row>) {
    let resolved = resolve(root, node);
    // Objects with their own keys are descended into, unless they are documented as one
    // value (`x-reference-leaf`: probe timings, which take any of Kubernetes' fields).
    if let Some(properties) = resolved["properties"].as_object()
        && resolved["additionalProperties"] == Value::Bool(false)
        && resolved["x-reference-leaf"] != Value::Bool(true)
    {
        for (key, child) in properties {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            walk(
                root,
                child,
                values.and_then(|v| v.get(key)),
                &child_path,
                rows,
            );
        }
        return;
    }
    let description = node["description"]
        .as_str()
        .or(resolved["description"].as_str())
        .unwrap_or_default()
        .replace('|', "\\|");
    rows.push(Row {
        path: path.to_string(),
        kind: kind_of(resolved),
        default: default_of(values),
        description,
    });
}

fn rows() -> Vec<Row> {
    let schema = schema();
    let values = values();
    let mut rows = Vec::new();
    walk(&schema, &schema, Some(&values), "", &mut rows);
    rows
}

/// The reference as Markdown.
fn reference() -> String {
    let mut out = String::from(
        "# Helm values reference\n\n\
         <!-- Generated from deploy/helm/previewd/values.schema.json and values.yaml by \
         previewd-operator/tests/helm_values.rs; do not edit. Regenerate with \
         `scripts/manifests`. -->\n\n\
         Every value of the chart `deploy/helm/previewd`, with its type, default and what it \
         sets. `values.schema.json` refuses any other key. Durations are written like `30s`, \
         `5m`, `4h`; the flags in parentheses are those of `previewd run` \
         ([configuration.md](../configuration.md)).\n",
    );
    let section_of = |path: &str| match path.split_once('.') {
        Some((top, _)) => top.to_string(),
        None => "general".to_string(),
    };
    // Values at the top level first, then one section per group, alphabetically.
    let mut rows: Vec<Row> = rows().into_iter().filter(|r| r.path != "global").collect();
    rows.sort_by_key(|r| {
        (
            section_of(&r.path) != "general",
            section_of(&r.path),
            r.path.clone(),
        )
    });
    let mut section = String::new();
    for row in rows {
        let top = section_of(&row.path);
        if top != section {
            let _ = write!(
                out,
                "\n## {top}\n\n| value | type | default | description |\n|---|---|---|---|\n"
            );
            section = top;
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            row.path, row.kind, row.default, row.description
        );
    }
    out
}

#[test]
fn helm_values_reference_is_up_to_date() {
    let generated = reference();
    if std::env::var_os("PREVIEWD_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(REFERENCE).parent().unwrap()).unwrap();
        std::fs::write(REFERENCE, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(REFERENCE).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/reference/helm-values.md is stale: run scripts/manifests"
    );
}

#[test]
fn every_schema_entry_has_a_default_and_a_description() {
    for row in rows() {
        if row.path == "global" {
            continue;
        }
        assert!(
            !row.default.is_empty(),
            "{} has no default in values.yaml",
            row.path
        );
        assert!(
            !row.description.is_empty(),
            "{} has no description in the schema",
            row.path
        );
    }
}

/// Dotted paths of every leaf of `values.yaml` (maps are descended into; lists and empty
/// maps are leaves).
fn leaves(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

#[test]
fn every_value_is_in_the_schema() {
    let documented: BTreeSet<String> = rows().into_iter().map(|r| r.path).collect();
    let mut in_values = BTreeSet::new();
    leaves(&values(), "", &mut in_values);
    for path in in_values {
        // A leaf is documented itself, or lies inside a documented map or object value
        // (resources, security contexts: Kubernetes objects).
        let covered = documented.contains(&path)
            || documented
                .iter()
                .any(|d| path.starts_with(&format!("{d}.")));
        assert!(
            covered,
            "values.yaml sets {path}, which the schema does not describe"
        );
    }
}
