//! Routing with the Gateway API (`--route-kind httproute`) on the local control plane,
//! with the real standard-channel CRDs of the `sigs.k8s.io/gateway-api` Go module
//! (fetched by `testenv/gateway-api-crds`; nothing hand-written): an environment reaches
//! Ready with an HTTPRoute (and no Ingress) that the API server accepted, attached to the
//! configured Gateway listener with the environment's host; a host deeper than one label
//! below the base domain is refused; switching a running environment's ingress off prunes
//! its route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use previewd_core::Phase;
use previewd_kube::children::httproute::{GatewayRef, Routing, http_route_resource};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::json;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(90);

fn environment(name: &str, pr: i64, ingress: serde_json::Value) -> PreviewEnvironment {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": {
            "repository": "acme/shop",
            "prNumber": pr,
            "branch": format!("gw-{pr}"),
            "headSHA": "0123456789abcdef0123456789abcdef01234567",
            "services": [
                {"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"},
                {"name": "api", "image": "registry.k8s.io/pause:3.10", "port": 9090}
            ],
            "ingress": ingress,
        },
    }))
    .unwrap()
}

fn stalled_reason(e: &PreviewEnvironment) -> Option<String> {
    e.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .map(|c| c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_environment_reaches_ready_with_a_route_on_the_gateway() {
    let client = client().await;
    install_crds(&client).await;
    install_crd_files(
        &client,
        "gateway-api-crds",
        &[
            "gateway.networking.k8s.io_gatewayclasses.yaml",
            "gateway.networking.k8s.io_gateways.yaml",
            "gateway.networking.k8s.io_httproutes.yaml",
            "gateway.networking.k8s.io_referencegrants.yaml",
        ],
    )
    .await;
    let ns = temp_namespace(&client, "gateway").await;
    let mut config = test_config(&ns);
    config.routing = Routing::HttpRoute(GatewayRef {
        namespace: "gateway-system".into(),
        name: "previews".into(),
        section_name: Some("https".into()),
    });
    let op = Operator::start(client.clone(), config).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    envs.create(
        &PostParams::default(),
        &environment("shop-pr-5", 5, json!({"enabled": true})),
    )
    .await
    .unwrap();
    let ready = eventually(TIMEOUT, "Ready with an HTTPRoute", || {
        let envs = envs.clone();
        async move {
            let e = envs.get("shop-pr-5").await.ok()?;
            (e.status.as_ref()?.phase == Some(Phase::Ready)).then_some(e)
        }
    })
    .await;
    let status = ready.status.unwrap();
    let preview_ns = status.namespace.clone().unwrap();
    let host = status.host.clone().unwrap();
    assert_eq!(host, "pr-5.preview.test");
    assert_eq!(status.url.as_deref(), Some("https://pr-5.preview.test/"));

    // The route, as the API server stored it (validated against the real CRD).
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &preview_ns, &http_route_resource());
    let route = routes.get("preview").await.expect("the HTTPRoute exists");
    let spec = &route.data["spec"];
    assert_eq!(
        spec["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                "namespace": "gateway-system", "name": "previews", "sectionName": "https"}])
    );
    assert_eq!(spec["hostnames"], json!([host]));
    let rules = spec["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0]["matches"][0]["path"],
        json!({"type": "PathPrefix", "value": "/"})
    );
    assert_eq!(rules[0]["backendRefs"][0]["name"], "web");
    assert_eq!(rules[0]["backendRefs"][0]["port"], 8080);
    assert_eq!(rules[1]["matches"][0]["path"]["value"], "/api");
    assert_eq!(
        route.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "previewd"
    );
    // No Ingress next to it.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &preview_ns);
    assert!(
        ingresses
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A host two labels below the base domain: the listener's wildcard certificate would
    // not cover it.
    envs.create(
        &PostParams::default(),
        &environment(
            "shop-pr-6",
            6,
            json!({"enabled": true, "host": "a.pr-6.preview.test"}),
        ),
    )
    .await
    .unwrap();
    eventually(TIMEOUT, "HostNotAllowed for a deep host", || {
        let envs = envs.clone();
        async move {
            let e = envs.get("shop-pr-6").await.ok()?;
            (stalled_reason(&e).as_deref() == Some("HostNotAllowed")).then_some(())
        }
    })
    .await;

    // Exposure switched off: the route goes.
    envs.patch(
        "shop-pr-5",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ingress": {"enabled": false}}})),
    )
    .await
    .unwrap();
    eventually(TIMEOUT, "the route pruned", || {
        let routes = routes.clone();
        async move {
            routes
                .get_opt("preview")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    op.stop().await;
    delete_namespace(&client, &ns).await;
}
