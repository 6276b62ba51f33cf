//! The generated CRDs: committed copy up to date, structural, and the CEL rules reject
//! bad specs (client-side here; `tests/lifecycle.rs` checks the same rules at a real API server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::CustomResourceExt;
use kube::core::cel::{validate_cel, validate_cel_update};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::{Value, json};

fn committed_yaml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds/previewd.yaml");
    std::fs::read_to_string(path).expect("deploy/crds/previewd.yaml exists")
}

#[test]
fn committed_crds_match_the_code() {
    let generated = previewd_kube::crdgen::crds_yaml().unwrap();
    assert!(
        committed_yaml() == generated,
        "deploy/crds/previewd.yaml is stale; regenerate with `cargo run -p previewd-operator -- crd > deploy/crds/previewd.yaml`"
    );
}

#[test]
fn the_crd_reference_matches_the_schemas() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference/crds.md");
    let generated = previewd_kube::crdgen::reference_markdown();
    if std::env::var_os("PREVIEWD_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/reference/crds.md is stale: run `scripts/manifests` (or PREVIEWD_BLESS=1 cargo test -p previewd-kube --test crd)"
    );
    // Every field the webhook renders from a repository is in it.
    for field in [
        "spec.repositoryRef",
        "spec.serviceSelection",
        "status.selectedServices",
        "spec.strategy",
        "spec.requiredChecks",
    ] {
        assert!(generated.contains(&format!("`{field}`")), "{field}");
    }
}

fn schema_of(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

#[test]
fn environment_crd_has_the_expected_shape() {
    let crd = serde_json::to_value(PreviewEnvironment::crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "previewd.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["pe"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Phase", "PR", "URL", "Expires", "Age"]);
    let spec = &schema_of(&crd)["properties"]["spec"];
    assert_eq!(
        spec["properties"]["prNumber"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        spec["properties"]["services"]["x-kubernetes-list-type"],
        "map"
    );
    assert!(spec["properties"]["ttl"]["pattern"].is_string());
    assert_eq!(
        spec["properties"]["services"]["items"]["properties"]["replicas"]["maximum"].as_f64(),
        Some(10.0)
    );
}

/// Every schema node has a type (or is int-or-string / preserves unknown fields), there
/// is no `$ref`, and every object lists its properties or its value type: what the API
/// server calls structural.
#[test]
fn schemas_are_structural() {
    fn walk(v: &Value, path: &str, in_junction: bool, problems: &mut Vec<String>) {
        let Some(obj) = v.as_object() else { return };
        if obj.contains_key("$ref") {
            problems.push(format!("{path}: $ref"));
        }
        let special = obj.contains_key("x-kubernetes-int-or-string")
            || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let ty = obj.get("type").and_then(Value::as_str);
        if ty.is_none() && !special && !in_junction {
            problems.push(format!("{path}: no type"));
        }
        if ty == Some("object")
            && !special
            && !obj.contains_key("properties")
            && !obj.contains_key("additionalProperties")
            && path != "/metadata"
        {
            problems.push(format!("{path}: object without properties"));
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, child) in props {
                walk(child, &format!("{path}/{k}"), false, problems);
            }
        }
        if let Some(items) = obj.get("items") {
            walk(items, &format!("{path}[]"), false, problems);
        }
        if let Some(ap) = obj.get("additionalProperties").filter(|a| a.is_object()) {
            walk(ap, &format!("{path}{{}}"), false, problems);
        }
        for junction in ["anyOf", "oneOf", "allOf"] {
            for (i, child) in obj
                .get(junction)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                walk(child, &format!("{path}/{junction}[{i}]"), true, problems);
            }
        }
    }
    for crd in previewd_kube::crdgen::crds() {
        let crd = serde_json::to_value(crd).unwrap();
        let mut problems = Vec::new();
        walk(schema_of(&crd), "", false, &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd["metadata"]["name"]
        );
    }
}

fn environment(spec: Value) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-1", "namespace": "previews"},
        "spec": spec,
    }))
    .unwrap()
}

fn good_spec() -> Value {
    json!({
        "repository": "acme/shop",
        "prNumber": 1,
        "branch": "feature/login",
        "headSHA": "0123456789abcdef0123456789abcdef01234567",
        "services": [
            {"name": "api", "image": "ghcr.io/acme/api:pr-1"},
            {"name": "web", "image": "ghcr.io/acme/web:pr-1"}
        ]
    })
}

#[test]
fn cel_accepts_a_good_spec() {
    validate_cel(&environment(good_spec())).unwrap();
}

#[test]
fn service_lists_are_maps_keyed_by_name() {
    // Uniqueness is enforced by the API server through the list type (a CEL rule over
    // all pairs would exceed the CEL cost budget); tests/lifecycle.rs checks the rejection.
    for crd in previewd_kube::crdgen::crds() {
        let crd = serde_json::to_value(crd).unwrap();
        let spec = &schema_of(&crd)["properties"]["spec"]["properties"];
        let services = if spec["services"].is_object() {
            &spec["services"]
        } else {
            &spec["catalogue"]["properties"]["services"]
        };
        assert_eq!(
            services["x-kubernetes-list-type"], "map",
            "{}",
            crd["metadata"]["name"]
        );
        assert_eq!(services["x-kubernetes-list-map-keys"], json!(["name"]));
        assert!(services["maxItems"].is_number());
    }
}

#[test]
fn cel_rejects_changing_the_repository_or_pr() {
    let old = environment(good_spec());
    let mut spec = good_spec();
    spec["repository"] = json!("acme/other");
    let err = validate_cel_update(&environment(spec), &old).unwrap_err();
    assert!(err.to_string().contains("repository is immutable"), "{err}");
    let mut spec = good_spec();
    spec["prNumber"] = json!(2);
    let err = validate_cel_update(&environment(spec), &old).unwrap_err();
    assert!(err.to_string().contains("prNumber is immutable"), "{err}");
    // Changing the head SHA is an ordinary update.
    let mut spec = good_spec();
    spec["headSHA"] = json!("1111111111111111111111111111111111111111");
    validate_cel_update(&environment(spec), &old).unwrap();
}
