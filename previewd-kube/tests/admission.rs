//! Admission at a real API server (`export $(testenv/up | tail -n1)`): durations,
//! quantities, hosts and image templates are refused with messages that say what the value
//! should look like, and the quantities the CRD admits are the ones a ResourceQuota admits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use previewd_kube::testing::{client, delete_namespace, install_crds, temp_namespace};
use serde_json::{Value, json};

/// POSTs `body` as JSON (never through the typed spec, which could not even hold some of
/// the values) and returns the API server's refusal, if any.
async fn create(client: &Client, ns: &str, plural: &str, body: &Value) -> Result<(), String> {
    let request = http::Request::post(format!(
        "/apis/previewd.io/v1alpha1/namespaces/{ns}/{plural}"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(body).unwrap())
    .unwrap();
    client
        .request::<Value>(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn environment(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "repository": "acme/shop",
        "prNumber": 1,
        "branch": "feature",
        "headSHA": "0123456789abcdef0123456789abcdef01234567",
        "services": [{"name": "web", "image": "ghcr.io/acme/web:pr-1"}]
    });
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": base
    })
}

fn repository(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "repository": format!("acme/{name}"),
        "baseDomain": "preview.example.com",
        "catalogue": {"services": [{"name": "web", "image": "ghcr.io/acme/{{service}}:pr-{{number}}"}]}
    });
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": name},
        "spec": base
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_a_value_should_look_like() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "admission").await;
    let environments: Vec<(Value, &str)> = vec![
        (
            json!({"ttl": "4hours"}),
            "spec.ttl: Invalid value: \"4hours\": '4hours' is not a duration or auto: write a number and a unit (s, m, h, d or w), e.g. 30m, 4h, 7d or 1h30m",
        ),
        (
            json!({"maxLifespan": "1y"}),
            "spec.maxLifespan: Invalid value: \"1y\": '1y' is not a duration",
        ),
        (
            json!({"tests": {"timeout": "30 min"}}),
            "spec.tests.timeout: Invalid value: \"30 min\": '30 min' is not a duration",
        ),
        (
            json!({"quota": {"memory": "512K"}}),
            "spec.quota.memory: Invalid value: \"512K\": '512K' is not a Kubernetes quantity: write a number and an optional suffix, e.g. 250m, 1.5, 512Mi, 1Gi, 500M or 129e6 (suffixes Ki Mi Gi Ti Pi Ei, n u m k M G T P E; thousands are a lower-case k)",
        ),
        (
            json!({"services": [{"name": "web", "image": "x", "resources": {"requests": {"cpu": "half"}}}]}),
            "spec.services[0].resources.requests.cpu: Invalid value: \"half\": 'half' is not a Kubernetes quantity",
        ),
        (
            json!({"ingress": {"host": "PR-1.Example.com"}}),
            "spec.ingress.host: Invalid value: \"PR-1.Example.com\": 'PR-1.Example.com' is not a host name: lower-case labels of letters, digits and '-'",
        ),
        (
            json!({"ingress": {"host": format!("{}.example.com", "a".repeat(64))}}),
            "is not a host name",
        ),
    ];
    for (i, (spec, expected)) in environments.into_iter().enumerate() {
        let body = environment(&format!("refused-{i}"), spec.clone());
        let refusal = create(&client, &ns, "previewenvironments", &body)
            .await
            .expect_err(&format!("{spec} must be refused"));
        assert!(refusal.contains(expected), "{spec}: {refusal}");
        assert!(!refusal.contains("should match"), "{refusal}");
    }
    let repositories: Vec<(Value, &str)> = vec![
        (
            json!({"catalogue": {"services": [{"name": "web", "image": "ghcr.io/acme/web:pr-{{nubmer}}"}]}}),
            "spec.catalogue.services[0].image: Invalid value: \"ghcr.io/acme/web:pr-{{nubmer}}\": unknown variable {{nubmer}} in image template \"ghcr.io/acme/web:pr-{{nubmer}}\" (known: {{number}}, {{sha}}, {{shortSha}}, {{branch}}, {{service}})",
        ),
        (
            json!({"catalogue": {"services": [{"name": "web", "image": "ghcr.io/acme/web:{{ .Values.tag }}"}]}}),
            "has a brace that is not part of a variable such as {{number}}",
        ),
        (
            json!({"baseDomain": "preview..example.com"}),
            "spec.baseDomain: Invalid value: \"preview..example.com\": 'preview..example.com' is not a host name",
        ),
        (
            json!({"defaultTtl": "four hours"}),
            "spec.defaultTtl: Invalid value: \"four hours\": 'four hours' is not a duration or auto",
        ),
        (
            json!({"quota": {"storage": "10GB"}}),
            "spec.quota.storage: Invalid value: \"10GB\": '10GB' is not a Kubernetes quantity",
        ),
    ];
    for (i, (spec, expected)) in repositories.into_iter().enumerate() {
        let body = repository(&format!("refused-{i}"), spec.clone());
        let refusal = create(&client, &ns, "previewrepositories", &body)
            .await
            .expect_err(&format!("{spec} must be refused"));
        assert!(refusal.contains(expected), "{spec}: {refusal}");
    }
    // The spellings the former patterns refused although Kubernetes takes them.
    create(
        &client,
        &ns,
        "previewenvironments",
        &environment(
            "admitted",
            json!({"quota": {"cpu": "+1.5", "memory": "512k", "storage": "10e9"}, "ttl": "auto"}),
        ),
    )
    .await
    .unwrap();
    create(
        &client,
        &ns,
        "previewrepositories",
        &repository(
            "admitted",
            json!({"catalogue": {"services": [{"name": "web", "image": "r/{{service}}:{{branch}}-{{shortSha}}-{{sha}}"}]}}),
        ),
    )
    .await
    .unwrap();
    delete_namespace(&client, &ns).await;
}

/// The quantities at the edges of the grammar the CRD admits are quantities a ResourceQuota
/// admits too (previewd writes them into each environment's quota), and `512K`, which the
/// former pattern admitted, is one it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_crd_admits_as_a_quantity_a_resource_quota_admits() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "admission-quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    let quota = |name: &str, memory: &str| -> ResourceQuota {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": name},
            "spec": {"hard": {"requests.memory": memory}}
        }))
        .unwrap()
    };
    let edges = [
        "0",
        "+1",
        ".5",
        "1.",
        "512k",
        "1.5Ei",
        "129E6",
        "1e-3",
        "1E+3",
        "0.000001n",
        "999999999Ei",
        "1e99",
        "8Ei",
        "00012Mi",
    ];
    for (i, memory) in edges.iter().enumerate() {
        create(
            &client,
            &ns,
            "previewenvironments",
            &environment(&format!("edge-{i}"), json!({"quota": {"memory": memory}})),
        )
        .await
        .unwrap_or_else(|e| panic!("the CRD refused {memory}: {e}"));
        assert!(previewd_core::parse_memory(memory).is_ok(), "{memory}");
        quotas
            .create(&PostParams::default(), &quota(&format!("edge-{i}"), memory))
            .await
            .unwrap_or_else(|e| panic!("a ResourceQuota refused {memory}: {e}"));
    }
    let refused = quotas
        .create(&PostParams::default(), &quota("upper-k", "512K"))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("unable to parse quantity's suffix"),
        "{refused}"
    );
    let refused = create(
        &client,
        &ns,
        "previewenvironments",
        &environment("upper-k", json!({"quota": {"memory": "512K"}})),
    )
    .await
    .unwrap_err();
    assert!(refused.contains("lower-case k"), "{refused}");
    let _ = quotas
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    delete_namespace(&client, &ns).await;
}
