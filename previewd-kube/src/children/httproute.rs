//! The environment's Gateway API `HTTPRoute`: the alternative to its Ingress when the
//! platform routes with a Gateway (`--route-kind httproute`).
//!
//! The platform team owns the Gateway and its listeners (hostname, certificate, which
//! namespaces may attach); previewd writes one route per environment into the preview
//! namespace, attached to the configured Gateway (and listener, `sectionName`), with the
//! environment's host and one rule per service. The host obeys the same allow-list and
//! uniqueness as the Ingress's ([`crate::plan::host`]), and one more rule: it is exactly
//! one DNS label below its allowed base domain. A listener `*.preview.example.com`
//! matches hosts any number of labels deep, but its wildcard certificate covers one
//! label only, so a deeper host would attach and then fail TLS.
//!
//! TLS is the listener's business: no certificate is requested per environment.
//! `spec.ingress.tls` only says whether the environment's URL is `https`.
//!
//! [`desired_httproutes`] is the one place a route is rendered, from a list of
//! [`RouteBackend`]s, so that whatever has to point the host elsewhere (a waker that
//! answers while the environment sleeps) swaps the backends and nothing else.

use std::collections::BTreeMap;

use kube::core::ApiResource;
use serde_json::{Value, json};

use super::ingress::service_path;
use super::namespace::child_meta;
use crate::crd::PreviewEnvironment;
use crate::strategy::WatchedKind;

/// API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Name of the environment's (first) HTTPRoute.
pub const HTTPROUTE_NAME: &str = "preview";
/// Rules one HTTPRoute may hold (the CRD's `maxItems`); an environment with more
/// services gets several routes for the same host.
pub const MAX_RULES: usize = 16;

/// How environments are reached from outside the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Routing {
    /// An `Ingress` per environment (TLS from cert-manager, DNS from external-dns).
    #[default]
    Ingress,
    /// A Gateway API `HTTPRoute` per environment, attached to this Gateway.
    HttpRoute(GatewayRef),
}

/// The Gateway (and listener) environments' routes attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
    /// The listener's name (`parentRefs[].sectionName`); `None`: every listener whose
    /// hostname matches.
    pub section_name: Option<String>,
}

/// The HTTPRoute API resource (`gateway.networking.k8s.io/v1`, standard channel).
pub fn http_route_resource() -> ApiResource {
    ApiResource {
        group: GATEWAY_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GATEWAY_GROUP}/v1"),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// The watch of HTTPRoutes: metadata only (their readiness is not judged: a route's
/// status comes from the Gateway's controller, which previewd does not wait for, as it
/// does not wait for an Ingress's address), and optional: a cluster without the Gateway
/// API CRDs stalls only the environments that need a route.
pub fn watched_kind() -> WatchedKind {
    WatchedKind {
        resource: http_route_resource(),
        full: false,
        optional: true,
    }
}

/// The kinds `routing` adds to what the controller watches in preview namespaces.
pub fn watched_kinds(routing: &Routing) -> Vec<WatchedKind> {
    match routing {
        Routing::Ingress => Vec::new(),
        Routing::HttpRoute(_) => vec![watched_kind()],
    }
}

/// Where requests for one path prefix of the environment's host go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteBackend {
    /// Path prefix on the host.
    pub path: String,
    /// The Service.
    pub service: String,
    /// The Service's namespace; `None`: the route's own (a Service elsewhere needs a
    /// `ReferenceGrant` in its namespace).
    pub namespace: Option<String>,
    /// The Service's port.
    pub port: i32,
}

/// The backends of an environment serving its own services: one path per service, as on
/// its Ingress.
pub fn service_backends(env: &PreviewEnvironment) -> Vec<RouteBackend> {
    env.spec
        .services
        .iter()
        .map(|s| RouteBackend {
            path: service_path(s),
            service: s.name.clone(),
            namespace: None,
            port: s.port,
        })
        .collect()
}

/// Whether `host` is exactly one DNS label below `domain`, which a Gateway listener
/// `*.<domain>` and its wildcard certificate both cover.
pub fn one_label_below(host: &str, domain: &str) -> bool {
    host.strip_suffix(domain)
        .and_then(|h| h.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

/// Name of the `index`th route of an environment: `preview`, then `preview-2`, ...
pub fn route_name(index: usize) -> String {
    if index == 0 {
        HTTPROUTE_NAME.to_string()
    } else {
        format!("{HTTPROUTE_NAME}-{}", index + 1)
    }
}

/// The environment's HTTPRoutes: `host` on `gateway`, one rule per backend, at most
/// [`MAX_RULES`] rules per route. Every route carries the environment's labels.
pub fn desired_httproutes(
    env: &PreviewEnvironment,
    namespace: &str,
    host: &str,
    gateway: &GatewayRef,
    backends: &[RouteBackend],
) -> Vec<Value> {
    let mut parent = json!({
        "group": GATEWAY_GROUP,
        "kind": "Gateway",
        "namespace": gateway.namespace,
        "name": gateway.name,
    });
    if let Some(section) = &gateway.section_name {
        parent["sectionName"] = json!(section);
    }
    let chunks: Vec<&[RouteBackend]> = if backends.is_empty() {
        vec![&[]]
    } else {
        backends.chunks(MAX_RULES).collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| {
            let meta = child_meta(env, namespace, &route_name(index));
            let labels: BTreeMap<String, String> = meta.labels.unwrap_or_default();
            let rules: Vec<Value> = chunk.iter().map(rule).collect();
            let mut spec = json!({
                "parentRefs": [parent.clone()],
                "hostnames": [host],
            });
            if !rules.is_empty() {
                spec["rules"] = json!(rules);
            }
            json!({
                "apiVersion": format!("{GATEWAY_GROUP}/v1"),
                "kind": "HTTPRoute",
                "metadata": {"name": route_name(index), "namespace": namespace, "labels": labels},
                "spec": spec,
            })
        })
        .collect()
}

fn rule(backend: &RouteBackend) -> Value {
    let mut reference = json!({
        "group": "",
        "kind": "Service",
        "name": backend.service,
        "port": backend.port,
    });
    if let Some(namespace) = &backend.namespace {
        reference["namespace"] = json!(namespace);
    }
    json!({
        "matches": [{"path": {"type": "PathPrefix", "value": backend.path}}],
        "backendRefs": [reference],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(services: usize) -> PreviewEnvironment {
        let services: Vec<Value> = (0..services)
            .map(|i| {
                if i == 0 {
                    json!({"name": "web", "image": "web:1", "port": 8080, "ingressPath": "/"})
                } else {
                    json!({"name": format!("svc{i}"), "image": "svc:1", "port": 9000 + i})
                }
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567",
                     "services": services}
        }))
        .unwrap()
    }

    fn gateway(section: Option<&str>) -> GatewayRef {
        GatewayRef {
            namespace: "gateway".into(),
            name: "previews".into(),
            section_name: section.map(str::to_string),
        }
    }

    #[test]
    fn a_route_attaches_to_the_gateway_listener_with_one_rule_per_service() {
        let e = env(2);
        let routes = desired_httproutes(
            &e,
            "preview-7-shop",
            "pr-7.preview.example.com",
            &gateway(Some("https")),
            &service_backends(&e),
        );
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(
            route,
            &json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {
                    "name": "preview",
                    "namespace": "preview-7-shop",
                    "labels": crate::children::common_labels(&e),
                },
                "spec": {
                    "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                    "namespace": "gateway", "name": "previews", "sectionName": "https"}],
                    "hostnames": ["pr-7.preview.example.com"],
                    "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                         "backendRefs": [{"group": "", "kind": "Service", "name": "web", "port": 8080}]},
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/svc1"}}],
                         "backendRefs": [{"group": "", "kind": "Service", "name": "svc1", "port": 9001}]},
                    ],
                },
            })
        );
    }

    #[test]
    fn without_a_section_the_route_names_the_whole_gateway() {
        let e = env(1);
        let routes = desired_httproutes(
            &e,
            "ns",
            "h.example.com",
            &gateway(None),
            &service_backends(&e),
        );
        assert!(
            routes[0]["spec"]["parentRefs"][0]
                .get("sectionName")
                .is_none()
        );
    }

    #[test]
    fn more_services_than_one_route_holds_spread_over_routes_for_the_same_host() {
        let e = env(40);
        let routes = desired_httproutes(
            &e,
            "ns",
            "h.example.com",
            &gateway(None),
            &service_backends(&e),
        );
        let names: Vec<&str> = routes
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["preview", "preview-2", "preview-3"]);
        let rules: Vec<usize> = routes
            .iter()
            .map(|r| r["spec"]["rules"].as_array().unwrap().len())
            .collect();
        assert_eq!(rules, [16, 16, 8]);
        for r in &routes {
            assert_eq!(r["spec"]["hostnames"], json!(["h.example.com"]));
        }
    }

    #[test]
    fn swapped_backends_change_only_where_the_rules_point() {
        // What a waker does while the environment sleeps: every path to its own Service.
        let e = env(2);
        let waker: Vec<RouteBackend> = service_backends(&e)
            .into_iter()
            .map(|b| RouteBackend {
                service: "previewd-waker".into(),
                namespace: Some("previewd-system".into()),
                port: 8080,
                ..b
            })
            .collect();
        let awake = desired_httproutes(
            &e,
            "ns",
            "h.example.com",
            &gateway(None),
            &service_backends(&e),
        );
        let asleep = desired_httproutes(&e, "ns", "h.example.com", &gateway(None), &waker);
        assert_eq!(awake[0]["metadata"], asleep[0]["metadata"]);
        assert_eq!(
            awake[0]["spec"]["parentRefs"],
            asleep[0]["spec"]["parentRefs"]
        );
        assert_eq!(
            asleep[0]["spec"]["rules"][1]["backendRefs"][0],
            json!({"group": "", "kind": "Service", "name": "previewd-waker",
                   "namespace": "previewd-system", "port": 8080})
        );
        assert_eq!(
            asleep[0]["spec"]["rules"][1]["matches"],
            awake[0]["spec"]["rules"][1]["matches"]
        );
    }

    #[test]
    fn hosts_exactly_one_label_below_the_domain_are_covered() {
        assert!(one_label_below(
            "pr-7.preview.example.com",
            "preview.example.com"
        ));
        assert!(one_label_below(
            "pr-7-0a1b2c3d.preview.example.com",
            "preview.example.com"
        ));
        assert!(!one_label_below(
            "a.pr-7.preview.example.com",
            "preview.example.com"
        ));
        assert!(!one_label_below(
            "preview.example.com",
            "preview.example.com"
        ));
        assert!(!one_label_below(
            ".preview.example.com",
            "preview.example.com"
        ));
        assert!(!one_label_below(
            "pr-7xpreview.example.com",
            "preview.example.com"
        ));
    }

    #[test]
    fn only_httproute_routing_watches_routes() {
        assert!(watched_kinds(&Routing::Ingress).is_empty());
        let kinds = watched_kinds(&Routing::HttpRoute(gateway(None)));
        assert_eq!(kinds.len(), 1);
        assert!(kinds[0].optional);
        assert_eq!(kinds[0].resource.plural, "httproutes");
    }
}
