//! What an application's objects may do, checked on the rendered object before anything
//! is written. The kind allow-list ([`super::manifests::kinds`]) says which kinds a
//! template may create; these rules say what an object of an allowed kind may do once
//! rendered: a Service may not publish itself or intercept traffic, an Ingress may not
//! publish another host or inject controller configuration, a pod may not run as a
//! ServiceAccount previewd did not create, nor bind a node's port, nor carry a
//! ServiceAccount token it did not ask for.
//!
//! The planner applies them to every object a deploy strategy or a stage renders into
//! the environment's namespace (templated manifests, the catalogue, an embedder's own
//! strategy), so one rule covers every path. Each refusal names the object and the
//! field, stalls the environment with reason `ManifestRefused`, and nothing of the
//! application is written.

use std::collections::BTreeSet;

use serde_json::Value;

use super::StrategyError;
use crate::plan::object::DesiredObject;

/// Condition reason of a refused object.
pub const REASON_REFUSED: &str = "ManifestRefused";

/// The platform's settings of the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateRules {
    /// StorageClasses a PersistentVolumeClaim (or a StatefulSet's claim template) may
    /// name (`--allowed-storage-classes`). Empty: any class, and a claim that names none
    /// gets the cluster's default.
    pub allowed_storage_classes: Vec<String>,
}

/// Where the objects go.
#[derive(Clone, Copy, Debug)]
pub struct RuleContext<'a> {
    /// The platform's settings.
    pub rules: &'a TemplateRules,
    /// The environment's claimed host (Ingress hosts must be it or under it); `None`
    /// when the environment has no Ingress, and then no Ingress may be rendered.
    pub host: Option<&'a str>,
}

/// Annotations of the common ingress controllers that inject configuration or publish
/// further hosts: refused whatever their prefix (ingress-nginx, HAProxy, Traefik, Kong,
/// Contour and others name them `*snippet*`, `server-alias`, `configuration-*`).
fn dangerous_annotation(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key).to_ascii_lowercase();
    name.contains("snippet")
        || name == "server-alias"
        || name == "server-aliases"
        || name.starts_with("configuration")
        || name == "custom-http-errors-backend"
        || name == "default-backend"
}

/// Applies the rules to `objects` in place (turning off ServiceAccount tokens nobody
/// asked for); the first refusal is returned.
pub fn confine(objects: &mut [DesiredObject], ctx: &RuleContext<'_>) -> Result<(), StrategyError> {
    let service_accounts: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.resource.kind == "ServiceAccount" && o.resource.group.is_empty())
        .map(|o| o.name.clone())
        .collect();
    for object in objects.iter_mut() {
        let what = format!("{} {}", object.resource.kind, object.name);
        let refuse = |field: &str, why: String| StrategyError {
            reason: REASON_REFUSED.into(),
            message: format!("{what}: {field}: {why}; nothing was applied"),
        };
        let group = object.resource.group.as_str();
        match (group, object.resource.kind.as_str()) {
            ("", "Service") => service(&object.object, &refuse)?,
            ("networking.k8s.io", "Ingress") => ingress(&object.object, ctx, &refuse)?,
            ("", "ServiceAccount") => {
                if let Some(map) = object.object.as_object_mut() {
                    map.entry("automountServiceAccountToken")
                        .or_insert(Value::Bool(false));
                }
            }
            ("", "PersistentVolumeClaim") => {
                storage_class(object.object.pointer("/spec"), ctx, "spec", &refuse)?;
            }
            ("", "Endpoints") | ("discovery.k8s.io", "EndpointSlice") => {
                return Err(refuse(
                    "kind",
                    "hand-made endpoints can point a Service at any address; let Services select pods".into(),
                ));
            }
            _ => {}
        }
        if let Some((pointer, field)) = pod_spec_of(group, &object.resource.kind)
            && let Some(spec) = object.object.pointer_mut(pointer)
        {
            pod_spec(spec, field, &service_accounts, &refuse)?;
        }
        if group == "apps"
            && object.resource.kind == "StatefulSet"
            && let Some(templates) = object
                .object
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
        {
            for (i, t) in templates.iter().enumerate() {
                storage_class(
                    t.get("spec"),
                    ctx,
                    &format!("spec.volumeClaimTemplates[{i}].spec"),
                    &refuse,
                )?;
            }
        }
    }
    Ok(())
}

/// Where a kind keeps its pod spec (JSON pointer, field path for messages).
fn pod_spec_of(group: &str, kind: &str) -> Option<(&'static str, &'static str)> {
    match (group, kind) {
        ("", "Pod") => Some(("/spec", "spec")),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(("/spec/template/spec", "spec.template.spec")),
        ("batch", "CronJob") => Some((
            "/spec/jobTemplate/spec/template/spec",
            "spec.jobTemplate.spec.template.spec",
        )),
        _ => None,
    }
}

fn service(
    object: &Value,
    refuse: &dyn Fn(&str, String) -> StrategyError,
) -> Result<(), StrategyError> {
    let spec = object.get("spec");
    let type_ = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if type_ != "ClusterIP" {
        let why = match type_ {
            "ExternalName" => {
                "an ExternalName Service forwards whatever reaches it (the environment's public Ingress included) to any address"
            }
            "LoadBalancer" | "NodePort" => {
                "it would publish the Service outside the cluster, around the environment's host allow-list and TLS"
            }
            _ => "only ClusterIP (or headless) Services are allowed",
        };
        return Err(refuse("spec.type", format!("{type_} is refused: {why}")));
    }
    if let Some(ips) = spec.and_then(|s| s.get("externalIPs"))
        && ips.as_array().is_none_or(|a| !a.is_empty())
    {
        return Err(refuse(
            "spec.externalIPs",
            "external IPs let a Service intercept traffic to any address (CVE-2020-8554)".into(),
        ));
    }
    for field in [
        "externalName",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
        "loadBalancerClass",
    ] {
        if spec.and_then(|s| s.get(field)).is_some() {
            return Err(refuse(
                &format!("spec.{field}"),
                "only meaningful for Services published outside the cluster, which are refused"
                    .into(),
            ));
        }
    }
    if let Some(ports) = spec.and_then(|s| s.get("ports")).and_then(Value::as_array) {
        for (i, p) in ports.iter().enumerate() {
            if p.get("nodePort").is_some() {
                return Err(refuse(
                    &format!("spec.ports[{i}].nodePort"),
                    "node ports publish the Service on every node".into(),
                ));
            }
        }
    }
    Ok(())
}

fn host_allowed(host: &str, own: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == own
        || host
            .strip_suffix(own)
            .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
}

fn ingress(
    object: &Value,
    ctx: &RuleContext<'_>,
    refuse: &dyn Fn(&str, String) -> StrategyError,
) -> Result<(), StrategyError> {
    if let Some(annotations) = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for key in annotations.keys() {
            if dangerous_annotation(key) {
                return Err(refuse(
                    &format!("metadata.annotations[{key:?}]"),
                    "ingress-controller annotations that inject configuration or publish further hosts are refused".into(),
                ));
            }
        }
    }
    let Some(own) = ctx.host else {
        return Err(refuse(
            "kind",
            "the environment has no host (spec.ingress is disabled), so it may publish none".into(),
        ));
    };
    let spec = object.get("spec");
    if spec.and_then(|s| s.get("defaultBackend")).is_some() {
        return Err(refuse(
            "spec.defaultBackend",
            "a default backend catches the requests of every host of the ingress class".into(),
        ));
    }
    let rules = spec
        .and_then(|s| s.get("rules"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() {
        return Err(refuse(
            "spec.rules",
            "an Ingress must name its hosts (a rule without a host catches every host)".into(),
        ));
    }
    let mut hosts = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        match rule.get("host").and_then(Value::as_str) {
            Some(h) => hosts.push((format!("spec.rules[{i}].host"), h.to_string())),
            None => {
                return Err(refuse(
                    &format!("spec.rules[{i}].host"),
                    "a rule without a host catches every host of the ingress class".into(),
                ));
            }
        }
    }
    if let Some(tls) = spec.and_then(|s| s.get("tls")).and_then(Value::as_array) {
        for (i, t) in tls.iter().enumerate() {
            for (j, h) in t
                .get("hosts")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                hosts.push((
                    format!("spec.tls[{i}].hosts[{j}]"),
                    h.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    for (field, host) in hosts {
        if !host_allowed(&host, own) {
            return Err(refuse(
                &field,
                format!(
                    "host {host:?} is neither the environment's host {own} nor under it (hosts are claimed per environment, under the allowed base domains)"
                ),
            ));
        }
    }
    Ok(())
}

fn storage_class(
    spec: Option<&Value>,
    ctx: &RuleContext<'_>,
    at: &str,
    refuse: &dyn Fn(&str, String) -> StrategyError,
) -> Result<(), StrategyError> {
    let allowed = &ctx.rules.allowed_storage_classes;
    if allowed.is_empty() {
        return Ok(());
    }
    match spec
        .and_then(|s| s.get("storageClassName"))
        .and_then(Value::as_str)
    {
        Some(class) if allowed.iter().any(|a| a == class) => Ok(()),
        Some(class) => Err(refuse(
            &format!("{at}.storageClassName"),
            format!(
                "StorageClass {class:?} is not allowed (allowed: {})",
                allowed.join(", ")
            ),
        )),
        None => Err(refuse(
            &format!("{at}.storageClassName"),
            format!(
                "a claim must name one of the allowed StorageClasses ({})",
                allowed.join(", ")
            ),
        )),
    }
}

fn pod_spec(
    spec: &mut Value,
    at: &str,
    service_accounts: &BTreeSet<String>,
    refuse: &dyn Fn(&str, String) -> StrategyError,
) -> Result<(), StrategyError> {
    for field in ["serviceAccountName", "serviceAccount"] {
        if let Some(name) = spec.get(field).and_then(Value::as_str)
            && name != "default"
            && !service_accounts.contains(name)
        {
            return Err(refuse(
                &format!("{at}.{field}"),
                format!(
                    "ServiceAccount {name:?} was not created by this environment; pods run as `default` or a ServiceAccount the application itself renders"
                ),
            ));
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(containers) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in containers.iter().enumerate() {
            let Some(ports) = c.get("ports").and_then(Value::as_array) else {
                continue;
            };
            for (j, p) in ports.iter().enumerate() {
                if p.get("hostPort")
                    .and_then(Value::as_i64)
                    .is_some_and(|port| port != 0)
                {
                    return Err(refuse(
                        &format!("{at}.{list}[{i}].ports[{j}].hostPort"),
                        "host ports bind a port of the node".into(),
                    ));
                }
            }
        }
    }
    if let Some(map) = spec.as_object_mut() {
        map.entry("automountServiceAccountToken")
            .or_insert(Value::Bool(false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::CronJob;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::core::ApiResource;
    use serde_json::json;

    use super::*;

    fn obj<K: kube::Resource<DynamicType = ()>>(value: Value) -> DesiredObject {
        DesiredObject::from_value(ApiResource::erase::<K>(&()), value)
    }

    fn check(objects: Vec<DesiredObject>) -> Result<Vec<DesiredObject>, StrategyError> {
        check_with(
            objects,
            &TemplateRules::default(),
            Some("pr-1.preview.example.com"),
        )
    }

    fn check_with(
        mut objects: Vec<DesiredObject>,
        rules: &TemplateRules,
        host: Option<&str>,
    ) -> Result<Vec<DesiredObject>, StrategyError> {
        confine(&mut objects, &RuleContext { rules, host }).map(|()| objects)
    }

    fn refused(objects: Vec<DesiredObject>, field: &str) {
        let e = check(objects).unwrap_err();
        assert_eq!(e.reason, REASON_REFUSED);
        assert!(e.message.contains(field), "{field} not in {}", e.message);
        assert!(e.message.contains("nothing was applied"));
    }

    fn svc(spec: Value) -> DesiredObject {
        obj::<Service>(json!({"metadata": {"name": "api"}, "spec": spec}))
    }

    #[test]
    fn services_stay_inside_the_cluster() {
        check(vec![svc(json!({"ports": [{"port": 80}]}))]).unwrap();
        check(vec![svc(
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        )])
        .unwrap();
        refused(vec![svc(json!({"type": "LoadBalancer"}))], "spec.type");
        refused(vec![svc(json!({"type": "NodePort"}))], "spec.type");
        let e = check(vec![svc(
            json!({"type": "ExternalName", "externalName": "169.254.169.254.nip.io"}),
        )])
        .unwrap_err();
        assert!(
            e.message.contains("ExternalName Service forwards"),
            "{}",
            e.message
        );
        refused(
            vec![svc(json!({"externalIPs": ["10.0.0.1"]}))],
            "spec.externalIPs",
        );
        refused(
            vec![svc(json!({"ports": [{"port": 80, "nodePort": 30080}]}))],
            "spec.ports[0].nodePort",
        );
        refused(
            vec![svc(json!({"loadBalancerIP": "1.2.3.4"}))],
            "spec.loadBalancerIP",
        );
        let eps = DesiredObject::from_value(
            ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "Endpoints")),
            json!({"metadata": {"name": "api"}}),
        );
        refused(vec![eps], "hand-made endpoints");
    }

    fn ing(metadata: Value, spec: Value) -> DesiredObject {
        let mut metadata = metadata;
        metadata["name"] = json!("web");
        obj::<Ingress>(json!({"metadata": metadata, "spec": spec}))
    }

    #[test]
    fn ingress_hosts_are_the_environments_own() {
        let rule = |host: &str| json!({"rules": [{"host": host}]});
        check(vec![ing(json!({}), rule("pr-1.preview.example.com"))]).unwrap();
        check(vec![ing(json!({}), rule("api.pr-1.preview.example.com"))]).unwrap();
        check(vec![ing(
            json!({}),
            json!({
            "rules": [{"host": "pr-1.preview.example.com"}],
            "tls": [{"hosts": ["pr-1.preview.example.com"], "secretName": "x"}]}),
        )])
        .unwrap();
        refused(
            vec![ing(json!({}), rule("shop.example.com"))],
            "spec.rules[0].host",
        );
        refused(
            vec![ing(json!({}), rule("pr-2.preview.example.com"))],
            "spec.rules[0].host",
        );
        refused(
            vec![ing(json!({}), rule("xpr-1.preview.example.com"))],
            "spec.rules[0].host",
        );
        refused(
            vec![ing(
                json!({}),
                json!({
            "rules": [{"host": "pr-1.preview.example.com"}],
            "tls": [{"hosts": ["bank.example.com"]}]}),
            )],
            "spec.tls[0].hosts[0]",
        );
        refused(
            vec![ing(json!({}), json!({"rules": [{"http": {}}]}))],
            "spec.rules[0].host",
        );
        refused(vec![ing(json!({}), json!({}))], "spec.rules");
        refused(
            vec![ing(
                json!({}),
                json!({"defaultBackend": {"service": {"name": "api"}},
                "rules": [{"host": "pr-1.preview.example.com"}]}),
            )],
            "spec.defaultBackend",
        );
        for key in [
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "nginx.ingress.kubernetes.io/server-snippet",
            "nginx.ingress.kubernetes.io/server-alias",
            "haproxy.org/backend-config-snippet",
            "ingress.kubernetes.io/configuration-snippet",
        ] {
            refused(
                vec![ing(
                    json!({"annotations": {key: "x"}}),
                    rule("pr-1.preview.example.com"),
                )],
                "metadata.annotations",
            );
        }
        check(vec![ing(
            json!({"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}}),
            rule("pr-1.preview.example.com"),
        )])
        .unwrap();
        let e = check_with(
            vec![ing(json!({}), rule("pr-1.preview.example.com"))],
            &TemplateRules::default(),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("has no host"));
    }

    fn deploy(pod: Value) -> DesiredObject {
        obj::<Deployment>(json!({"metadata": {"name": "api"},
            "spec": {"selector": {}, "template": {"spec": pod}}}))
    }

    #[test]
    fn pods_run_as_their_own_service_accounts_without_tokens_or_host_ports() {
        let objects = check(vec![deploy(
            json!({"containers": [{"name": "a", "image": "x"}]}),
        )])
        .unwrap();
        assert_eq!(
            objects[0]
                .object
                .pointer("/spec/template/spec/automountServiceAccountToken"),
            Some(&json!(false))
        );
        // Asked for explicitly: kept.
        let objects = check(vec![deploy(json!({"automountServiceAccountToken": true,
            "containers": [{"name": "a", "image": "x"}]}))])
        .unwrap();
        assert_eq!(
            objects[0]
                .object
                .pointer("/spec/template/spec/automountServiceAccountToken"),
            Some(&json!(true))
        );
        refused(
            vec![deploy(
                json!({"serviceAccountName": "previewd", "containers": []}),
            )],
            "spec.template.spec.serviceAccountName",
        );
        refused(
            vec![deploy(
                json!({"serviceAccount": "argocd-server", "containers": []}),
            )],
            "spec.template.spec.serviceAccount",
        );
        check(vec![deploy(
            json!({"serviceAccountName": "default", "containers": []}),
        )])
        .unwrap();
        let sa = obj::<ServiceAccount>(json!({"metadata": {"name": "app"}}));
        let objects = check(vec![
            sa,
            deploy(json!({"serviceAccountName": "app", "containers": []})),
        ])
        .unwrap();
        assert_eq!(
            objects[0].object.get("automountServiceAccountToken"),
            Some(&json!(false))
        );
        refused(
            vec![deploy(
                json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
            )],
            "spec.template.spec.containers[0].ports[0].hostPort",
        );
        let cron = obj::<CronJob>(
            json!({"metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {
            "template": {"spec": {"serviceAccountName": "x", "containers": []}}}}}}),
        );
        refused(
            vec![cron],
            "spec.jobTemplate.spec.template.spec.serviceAccountName",
        );
    }

    #[test]
    fn storage_classes_come_from_the_allow_list_when_one_is_set() {
        let pvc = |class: Option<&str>| {
            let mut spec = json!({"resources": {"requests": {"storage": "1Gi"}}});
            if let Some(c) = class {
                spec["storageClassName"] = json!(c);
            }
            obj::<PersistentVolumeClaim>(json!({"metadata": {"name": "data"}, "spec": spec}))
        };
        check(vec![pvc(Some("fast"))]).unwrap();
        let rules = TemplateRules {
            allowed_storage_classes: vec!["standard".into()],
        };
        let host = Some("pr-1.preview.example.com");
        check_with(vec![pvc(Some("standard"))], &rules, host).unwrap();
        let e = check_with(vec![pvc(Some("fast"))], &rules, host).unwrap_err();
        assert!(e.message.contains("spec.storageClassName") && e.message.contains("standard"));
        assert!(check_with(vec![pvc(None)], &rules, host).is_err());
        let sts = obj::<StatefulSet>(json!({"metadata": {"name": "db"}, "spec": {
            "volumeClaimTemplates": [{"spec": {"storageClassName": "fast"}}],
            "template": {"spec": {"containers": []}}}}));
        let e = check_with(vec![sts], &rules, host).unwrap_err();
        assert!(
            e.message
                .contains("spec.volumeClaimTemplates[0].spec.storageClassName")
        );
    }
}
