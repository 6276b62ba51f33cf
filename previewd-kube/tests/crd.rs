//! The generated CRDs: committed copy up to date, structural, and the CEL rules reject
//! bad specs with messages that say what is wrong (client-side here; `tests/lifecycle.rs`
//! and `tests/admission.rs` check the same rules at a real API server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::CustomResourceExt;
use kube::core::cel::{validate_cel, validate_cel_update};
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use proptest::prelude::*;
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
    assert_eq!(
        columns,
        ["Phase", "Ready", "Reason", "PR", "URL", "Expires", "Age"]
    );
    let spec = &schema_of(&crd)["properties"]["spec"];
    assert_eq!(
        spec["properties"]["prNumber"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        spec["properties"]["services"]["x-kubernetes-list-type"],
        "map"
    );
    assert!(spec["properties"]["ttl"]["pattern"].is_null());
    assert_eq!(
        spec["properties"]["ttl"]["x-kubernetes-validations"][0]["rule"],
        format!("self.matches('{}')", previewd_core::TtlChoice::PATTERN)
    );
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

fn repository(spec: Value) -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": "previews"},
        "spec": spec,
    }))
    .unwrap()
}

fn good_repository_spec() -> Value {
    json!({
        "repository": "acme/shop",
        "baseDomain": "preview.example.com",
        "catalogue": {"services": [
            {"name": "web", "image": "ghcr.io/acme/{{service}}:pr-{{number}}-{{shortSha}}"}
        ]}
    })
}

/// What the CRD's CEL rules say about `object` (raw JSON, so that values the typed spec
/// could not even hold reach the rules, as they reach the API server).
fn cel_refusal<K: CustomResourceExt>(object: Value) -> Option<String> {
    let crd = serde_json::to_value(K::crd()).unwrap();
    kube::core::cel::Validator::new()
        .validate(schema_of(&crd), &object, None)
        .err()
        .map(|e| e.to_string())
}

/// The CEL refusal of the good environment spec with `path` set to `value`.
fn environment_refusal(path: &[&str], value: Value) -> Option<String> {
    let mut object = serde_json::to_value(environment(good_spec())).unwrap();
    set(&mut object["spec"], path, value);
    cel_refusal::<PreviewEnvironment>(object)
}

/// The CEL refusal of the good repository spec with `path` set to `value`.
fn repository_refusal(path: &[&str], value: Value) -> Option<String> {
    let mut object = serde_json::to_value(repository(good_repository_spec())).unwrap();
    set(&mut object["spec"], path, value);
    cel_refusal::<PreviewRepository>(object)
}

fn set(target: &mut Value, path: &[&str], value: Value) {
    let mut node = target;
    for key in &path[..path.len() - 1] {
        node = match key.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => {
                if node.get(*key).is_none() {
                    node[*key] = json!({});
                }
                &mut node[*key]
            }
        };
    }
    node[path[path.len() - 1]] = value;
}

#[test]
fn refusals_say_what_a_value_should_look_like() {
    validate_cel(&repository(good_repository_spec())).unwrap();
    let cases: Vec<(Option<String>, &str)> = vec![
        (
            environment_refusal(&["ttl"], json!("4hours")),
            "'4hours' is not a duration or auto: write a number and a unit (s, m, h, d or w), e.g. 30m",
        ),
        (
            environment_refusal(&["maxLifespan"], json!("1y")),
            "'1y' is not a duration: write a number and a unit",
        ),
        (
            environment_refusal(&["tests", "timeout"], json!("30 min")),
            "'30 min' is not a duration",
        ),
        (
            environment_refusal(&["quota", "memory"], json!("512K")),
            "'512K' is not a Kubernetes quantity: write a number and an optional suffix, e.g. 250m, 1.5, 512Mi",
        ),
        (
            environment_refusal(&["quota", "memory"], json!("512K")),
            "thousands are a lower-case k",
        ),
        (
            environment_refusal(
                &["services", "0", "resources", "limits", "cpu"],
                json!("half"),
            ),
            "'half' is not a Kubernetes quantity",
        ),
        (
            environment_refusal(&["ingress", "host"], json!("PR-1.Example.com")),
            "'PR-1.Example.com' is not a host name: lower-case labels",
        ),
        (
            repository_refusal(&["baseDomain"], json!("-preview.example.com")),
            "'-preview.example.com' is not a host name",
        ),
        (
            repository_refusal(&["defaultTtl"], json!("four hours")),
            "'four hours' is not a duration or auto",
        ),
        (
            repository_refusal(
                &["catalogue", "services", "0", "image"],
                json!("ghcr.io/acme/web:pr-{{nubmer}}"),
            ),
            "unknown variable {{nubmer}} in image template \"ghcr.io/acme/web:pr-{{nubmer}}\" (known: {{number}}, {{sha}}, {{shortSha}}, {{branch}}, {{service}})",
        ),
        (
            repository_refusal(
                &["catalogue", "services", "0", "image"],
                json!("x:{{number}}-{{Sha}}-{{branch}}"),
            ),
            "unknown variable {{Sha}}",
        ),
        (
            repository_refusal(
                &["catalogue", "services", "0", "image"],
                json!("x:{{ number }}"),
            ),
            "has a brace that is not part of a variable such as {{number}} (no spaces inside the braces)",
        ),
    ];
    for (refusal, expected) in cases {
        let refusal = refusal.unwrap_or_else(|| panic!("accepted; expected {expected:?}"));
        assert!(
            refusal.contains(expected),
            "{refusal}\nexpected: {expected}"
        );
        assert!(!refusal.contains("should match"), "{refusal}");
    }
    // The valid spellings the old patterns refused or the parser could not read.
    for (path, value) in [
        (&["quota", "memory"][..], "512k"),
        (&["quota", "cpu"][..], "1.5"),
        (&["quota", "storage"][..], "129e6"),
        (&["ingress", "host"][..], "pr-1.preview.example.com"),
        (&["ttl"][..], "auto"),
        (&["maxLifespan"][..], "1w2d"),
    ] {
        assert_eq!(environment_refusal(path, json!(value)), None, "{value}");
    }
}

/// The largest string a schema node admits (`maxLength`).
fn max_length(crd: &Value, path: &[&str]) -> usize {
    let mut node = schema_of(crd);
    for key in path {
        node = &node["properties"][*key];
    }
    node["maxLength"].as_u64().unwrap() as usize
}

proptest! {
    /// What the shipped CRD admits as a quota quantity (its CEL rule, evaluated as the API
    /// server does, and its `maxLength`) is exactly what the parsers accept: everything
    /// admitted parses, everything that parses is admitted.
    #[test]
    fn the_crd_admits_exactly_the_quantities_that_parse(
        input in prop_oneof![
            "[-+]?[0-9]{0,22}([.][0-9]{0,6})?(Ki|Mi|Gi|Ei|K|k|m|M|E|e[-+]?[0-9]{1,11}|E[0-9]|mi|x)?",
            "[-+0-9.eEkKMGTPimnu ]{0,12}",
            "[0-9]{60,70}",
        ]
    ) {
        let crd = serde_json::to_value(PreviewEnvironment::crd()).unwrap();
        let limit = max_length(&crd, &["spec", "quota", "memory"]);
        let admitted = input.len() <= limit
            && environment_refusal(&["quota", "memory"], json!(input)).is_none();
        let parsed = previewd_core::parse_memory(&input);
        prop_assert_eq!(admitted, parsed.is_ok(), "{:?}: {:?}", input, parsed);
        prop_assert_eq!(admitted, previewd_core::parse_cpu(&input).is_ok(), "{:?}", input);
    }

    /// The message of a refused image template names the variable the renderer refuses.
    #[test]
    fn the_crd_names_the_unknown_variable_the_renderer_names(
        name in "[A-Za-z][A-Za-z0-9_]{0,8}",
        before in "[a-z:./-]{0,8}",
        after in "(-[{][{](number|sha|branch)[}][}])?",
    ) {
        let template = format!("{before}{{{{{name}}}}}{after}");
        let refusal = repository_refusal(&["catalogue", "services", "0", "image"], json!(template));
        match previewd_core::image_template::check(&template) {
            Ok(()) => prop_assert!(refusal.is_none(), "{}: {:?}", template, refusal),
            Err(err) => {
                let refusal = refusal.unwrap_or_default();
                let variable = format!("unknown variable {{{{{name}}}}}");
                prop_assert!(err.to_string().contains(&variable), "{}", err);
                prop_assert!(refusal.contains(&variable), "{}: {}", template, refusal);
            }
        }
    }
}
