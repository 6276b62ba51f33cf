//! The environment's Ingress: one host, one path per service, TLS from cert-manager and
//! DNS from external-dns.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
};

use super::namespace::child_meta;
use crate::crd::{PreviewEnvironment, ServiceSpec};

/// Name of the Ingress object.
pub const INGRESS_NAME: &str = "preview";
/// Name of the TLS Secret cert-manager fills for the environment.
pub const TLS_SECRET_NAME: &str = "preview-tls";

/// Path of a service on the environment's host.
pub fn service_path(service: &ServiceSpec) -> String {
    service
        .ingress_path
        .clone()
        .unwrap_or_else(|| format!("/{}", service.name))
}

/// URL of the environment and of each service.
pub fn urls(host: &str, tls: bool, services: &[ServiceSpec]) -> (String, BTreeMap<String, String>) {
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{host}/");
    let per_service = services
        .iter()
        .map(|s| {
            let path = service_path(s);
            let path = path.trim_start_matches('/');
            (s.name.clone(), format!("{scheme}://{host}/{path}"))
        })
        .collect();
    (base, per_service)
}

/// The Ingress of the environment.
pub fn desired_ingress(
    env: &PreviewEnvironment,
    namespace: &str,
    host: &str,
    tls: bool,
    class_name: Option<&str>,
    cluster_issuer: &str,
) -> Ingress {
    let mut meta = child_meta(env, namespace, INGRESS_NAME);
    let mut annotations = BTreeMap::from([(
        "external-dns.alpha.kubernetes.io/hostname".to_string(),
        host.to_string(),
    )]);
    if tls {
        annotations.insert(
            "cert-manager.io/cluster-issuer".to_string(),
            cluster_issuer.to_string(),
        );
    }
    meta.annotations = Some(annotations);
    let paths = env
        .spec
        .services
        .iter()
        .map(|s| HTTPIngressPath {
            path: Some(service_path(s)),
            path_type: "Prefix".into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: s.name.clone(),
                    port: Some(ServiceBackendPort {
                        number: Some(s.port),
                        ..ServiceBackendPort::default()
                    }),
                }),
                ..IngressBackend::default()
            },
        })
        .collect();
    Ingress {
        metadata: meta,
        spec: Some(K8sIngressSpec {
            ingress_class_name: class_name.map(str::to_string),
            rules: Some(vec![IngressRule {
                host: Some(host.to_string()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            tls: tls.then(|| {
                vec![IngressTLS {
                    hosts: Some(vec![host.to_string()]),
                    secret_name: Some(TLS_SECRET_NAME.to_string()),
                }]
            }),
            ..K8sIngressSpec::default()
        }),
        status: None,
    }
}
