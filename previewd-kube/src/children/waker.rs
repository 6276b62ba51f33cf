//! Where a sleeping environment's host points: previewd's waker instead of the
//! scaled-to-zero services.
//!
//! While an environment sleeps (and after it was woken, until it is Ready again), its
//! route (the Ingress, or the HTTPRoutes) sends every path to one Service of its own
//! namespace, [`WAKER_SERVICE`]. That Service has no selector; previewd writes its one
//! `EndpointSlice` itself, holding the address of the operator's waker
//! ([`WakerEndpoint`]: the pod's own IP and the waker's port). The ingress controller or
//! Gateway resolves it like any other Service, so no route ever names a Service in
//! another namespace:
//!
//! - no `ExternalName` Service (refused in preview namespaces by the chart's admission
//!   policy, off by default in Contour and Traefik, and a route that follows DNS);
//! - no `ReferenceGrant` in the operator's namespace letting routes of other namespaces
//!   reach it, and the same design for Ingresses and HTTPRoutes;
//! - the address comes from the operator's own configuration (the downward API), never
//!   from a pull request or a tenant. Writing EndpointSlices is the capability tenants
//!   must never get (CVE-2021-25740); previewd holds it only in the namespaces it created
//!   (the admission policy), and the two objects exist only while the route points at
//!   the waker.
//!
//! Everything else about the route stays as it was (host, TLS, parent Gateway, paths).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, IngressBackend, IngressServiceBackend, ServiceBackendPort,
};

use super::httproute::RouteBackend;
use super::ingress::service_path;
use super::namespace::child_meta;
use crate::crd::PreviewEnvironment;
use crate::strategy::WatchedKind;

/// Name of the waker's Service and EndpointSlice in a preview namespace.
pub const WAKER_SERVICE: &str = "previewd-waker";
/// Port of the waker's Service (the EndpointSlice maps it to the waker's own port).
pub const WAKER_SERVICE_PORT: i32 = 80;
/// Name of that port (the Service's and the EndpointSlice's, which must agree).
pub const WAKER_PORT_NAME: &str = "http";
/// Label naming the controller that manages an EndpointSlice.
pub const LABEL_ENDPOINT_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`LABEL_ENDPOINT_SLICE_MANAGED_BY`] on the waker's EndpointSlice (never the
/// EndpointSlice controller's own value, so that it leaves the slice alone).
pub const ENDPOINT_SLICE_MANAGER: &str = "previewd.io";
/// Label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Where the operator's waker answers: the address written into the EndpointSlice of
/// each sleeping environment's waker Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakerEndpoint {
    /// An IP address of the operator's pod (IPv4 or IPv6).
    pub address: std::net::IpAddr,
    /// The waker's port on that address.
    pub port: i32,
}

/// The waker's Service in the environment's namespace: no selector, one port.
pub fn desired_waker_service(env: &PreviewEnvironment, namespace: &str) -> Service {
    Service {
        metadata: child_meta(env, namespace, WAKER_SERVICE),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![ServicePort {
                name: Some(WAKER_PORT_NAME.into()),
                port: WAKER_SERVICE_PORT,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The waker Service's endpoints: the operator's waker, ready.
pub fn desired_waker_endpoints(
    env: &PreviewEnvironment,
    namespace: &str,
    waker: &WakerEndpoint,
) -> EndpointSlice {
    let mut metadata = child_meta(env, namespace, WAKER_SERVICE);
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(LABEL_SERVICE_NAME.into(), WAKER_SERVICE.into());
    labels.insert(
        LABEL_ENDPOINT_SLICE_MANAGED_BY.into(),
        ENDPOINT_SLICE_MANAGER.into(),
    );
    EndpointSlice {
        metadata,
        address_type: if waker.address.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        }
        .into(),
        endpoints: vec![Endpoint {
            addresses: vec![waker.address.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some(WAKER_PORT_NAME.into()),
            port: Some(waker.port),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// The backends of a route pointing at the waker: the environment's own paths, each
/// sent to the waker's Service (`/` when it has no service).
pub fn waker_backends(env: &PreviewEnvironment) -> Vec<RouteBackend> {
    let mut paths: Vec<String> = env.spec.services.iter().map(service_path).collect();
    if paths.is_empty() {
        paths.push("/".into());
    }
    paths
        .into_iter()
        .map(|path| RouteBackend {
            path,
            service: WAKER_SERVICE.into(),
            namespace: None,
            port: WAKER_SERVICE_PORT,
        })
        .collect()
}

/// The Ingress with every path sent to the waker's Service (host, TLS, class and
/// annotations unchanged).
pub fn ingress_to_waker(mut ingress: Ingress) -> Ingress {
    let waker = IngressBackend {
        service: Some(IngressServiceBackend {
            name: WAKER_SERVICE.into(),
            port: Some(ServiceBackendPort {
                number: Some(WAKER_SERVICE_PORT),
                ..ServiceBackendPort::default()
            }),
        }),
        ..IngressBackend::default()
    };
    for rule in ingress
        .spec
        .iter_mut()
        .flat_map(|s| s.rules.iter_mut().flatten())
    {
        let http = rule.http.get_or_insert_with(Default::default);
        if http.paths.is_empty() {
            http.paths.push(HTTPIngressPath {
                path: Some("/".into()),
                path_type: "Prefix".into(),
                backend: waker.clone(),
            });
        }
        for path in &mut http.paths {
            path.backend = waker.clone();
        }
    }
    ingress
}

/// The kinds the waker adds to what the controller watches in preview namespaces (so
/// that its objects are applied once and pruned when the environment is awake):
/// EndpointSlices and Services, metadata only.
pub fn watched_kinds(waker: Option<&WakerEndpoint>) -> Vec<WatchedKind> {
    match waker {
        None => Vec::new(),
        Some(_) => vec![
            WatchedKind::metadata::<EndpointSlice>(),
            WatchedKind::metadata::<Service>(),
        ],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::children::ingress::desired_ingress;
    use serde_json::json;

    fn env() -> PreviewEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team"},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567",
                     "services": [
                        {"name": "web", "image": "web:1", "port": 8080, "ingressPath": "/"},
                        {"name": "api", "image": "api:1", "port": 9090}
                     ]}
        }))
        .unwrap()
    }

    fn waker() -> WakerEndpoint {
        WakerEndpoint {
            address: "10.1.2.3".parse().unwrap(),
            port: 8090,
        }
    }

    #[test]
    fn the_service_has_no_selector_and_its_slice_points_at_the_waker() {
        let service = desired_waker_service(&env(), "preview-7-shop");
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector, None,
            "endpoints are previewd's, not a selector's"
        );
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(
            service.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "previewd"
        );
        let slice =
            serde_json::to_value(desired_waker_endpoints(&env(), "preview-7-shop", &waker()))
                .unwrap();
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.1.2.3"]));
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(
            slice["ports"],
            json!([{"name": "http", "port": 8090, "protocol": "TCP"}])
        );
        let labels = &slice["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/service-name"], WAKER_SERVICE);
        // Not the EndpointSlice controller's value: it must leave the slice alone.
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"],
            "previewd.io"
        );
        assert_eq!(labels["previewd.io/env"], "shop-pr-7");

        let v6 = WakerEndpoint {
            address: "fd00::5".parse().unwrap(),
            port: 8090,
        };
        let slice = desired_waker_endpoints(&env(), "ns", &v6);
        assert_eq!(slice.address_type, "IPv6");
    }

    #[test]
    fn the_ingress_keeps_its_host_and_tls_and_sends_every_path_to_the_waker() {
        let awake = desired_ingress(
            &env(),
            "ns",
            "pr-7.preview.example.com",
            true,
            Some("nginx"),
            "letsencrypt",
        );
        let asleep = ingress_to_waker(awake.clone());
        assert_eq!(asleep.metadata, awake.metadata);
        let (a, s) = (awake.spec.unwrap(), asleep.spec.unwrap());
        assert_eq!(s.tls, a.tls);
        assert_eq!(s.ingress_class_name, a.ingress_class_name);
        let rule = &s.rules.as_ref().unwrap()[0];
        assert_eq!(rule.host, a.rules.as_ref().unwrap()[0].host);
        let paths = &rule.http.as_ref().unwrap().paths;
        assert_eq!(
            paths
                .iter()
                .map(|p| p.path.clone().unwrap())
                .collect::<Vec<_>>(),
            ["/", "/api"]
        );
        for p in paths {
            let backend = p.backend.service.as_ref().unwrap();
            assert_eq!(backend.name, WAKER_SERVICE);
            assert_eq!(
                backend.port.as_ref().unwrap().number,
                Some(WAKER_SERVICE_PORT)
            );
        }
    }

    #[test]
    fn route_backends_keep_the_paths() {
        let backends = waker_backends(&env());
        assert_eq!(
            backends
                .iter()
                .map(|b| (b.path.as_str(), b.service.as_str(), b.port))
                .collect::<Vec<_>>(),
            [("/", WAKER_SERVICE, 80), ("/api", WAKER_SERVICE, 80)]
        );
        let mut bare = env();
        bare.spec.services.clear();
        assert_eq!(waker_backends(&bare)[0].path, "/");
    }

    #[test]
    fn only_a_configured_waker_watches_slices() {
        assert!(watched_kinds(None).is_empty());
        let kinds = watched_kinds(Some(&waker()));
        assert!(kinds.iter().all(|k| !k.full && !k.optional));
        assert_eq!(kinds[0].resource.plural, "endpointslices");
    }
}
