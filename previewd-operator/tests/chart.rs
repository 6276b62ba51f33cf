//! The Helm chart (`deploy/helm/previewd`) with the real Helm CLI (`scripts/helm`, Helm 4)
//! and the local control plane:
//! - the plain manifests rendered from it (`deploy/manifests/`) apply, the Deployments roll
//!   out (kwok plays the kubelet) and the webhook Service selects the pods that serve it;
//! - every flag of `previewd run` is set by some value (or is listed with the reason it
//!   is not), and the every-value files set every value;
//! - `helm lint --strict` passes and the schema refuses unknown keys;
//! - `helm install` with every value set is accepted by the API server (the Prometheus
//!   Operator's and the Gateway API's real CRDs included), `helm upgrade` follows, and the
//!   other side of each exclusive choice is accepted too (server-side dry run);
//! - `helm upgrade` across a CRD schema change updates the CRD and keeps its objects, and
//!   `helm uninstall` keeps the CRDs;
//! - the PrometheusRule holds the alerts docs/operations.md lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use previewd_kube::testing::{
    client, delete_namespace, eventually, install_crd_files, install_crds, temp_namespace,
    unique_suffix,
};
use serde_json::{Value, json};
use support::*;

/// The manifest with its namespace replaced by `namespace` and cluster-scoped names made
/// unique with `suffix` (the cluster is shared by concurrent tests).
fn relocate(docs: Vec<Value>, namespace: &str, suffix: &str) -> Vec<Value> {
    let text = serde_json::to_string(&docs).unwrap();
    let text = text
        .replace(
            "system:serviceaccount:previewd-system:",
            &format!("system:serviceaccount:{namespace}:"),
        )
        .replace("'previewd-system'", &format!("'{namespace}'"))
        .replace("\"previewd-system\"", &format!("\"{namespace}\""));
    let docs: Vec<Value> = serde_json::from_str(&text).unwrap();
    docs.into_iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|mut d| {
            let cluster_scoped = matches!(
                d["kind"].as_str(),
                Some(
                    "ClusterRole"
                        | "ClusterRoleBinding"
                        | "ValidatingAdmissionPolicy"
                        | "ValidatingAdmissionPolicyBinding"
                )
            );
            if cluster_scoped {
                let name = format!("{}-{suffix}", d["metadata"]["name"].as_str().unwrap());
                d["metadata"]["name"] = json!(name);
                d["metadata"]["labels"]["previewd.io/test"] = json!("true");
                for key in ["roleRef"] {
                    if let Some(role) = d[key]["name"].as_str() {
                        d[key]["name"] = json!(format!("{role}-{suffix}"));
                    }
                }
                if let Some(policy) = d["spec"]["policyName"].as_str() {
                    d["spec"]["policyName"] = json!(format!("{policy}-{suffix}"));
                }
            }
            d
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_apply_and_roll_out() {
    let admin = client().await;
    install_crds(&admin).await;
    for manifest in ["previewd", "previewd-combined"] {
        let namespace = temp_namespace(&admin, "chart").await;
        let suffix = unique_suffix();
        // The Secret the install expects to exist (the chart refuses to render without one).
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "previewd-github"},
            "stringData": {"webhook-secret": "s3cret", "token": "t0ken"},
        }))
        .unwrap();
        Api::<Secret>::namespaced(admin.clone(), &namespace)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let docs = relocate(rendered(manifest), &namespace, &suffix);
        let mut cluster_objects = Vec::new();
        for doc in &docs {
            apply(&admin, doc).await;
            if doc["metadata"]["namespace"].is_null() {
                cluster_objects.push(doc.clone());
            }
        }
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
        let expected: Vec<String> = docs
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert!(!expected.is_empty());
        for name in &expected {
            eventually(
                Duration::from_secs(90),
                &format!("{manifest}: {name} available"),
                || {
                    let deployments = deployments.clone();
                    let name = name.clone();
                    async move {
                        let d = deployments.get_opt(&name).await.ok().flatten()?;
                        let want = d.spec.as_ref()?.replicas?;
                        (d.status?.available_replicas? >= want).then_some(())
                    }
                },
            )
            .await;
        }
        // The webhook Service selects pods that serve the webhook, in both layouts.
        let endpoints: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(admin.clone(), &namespace);
        eventually(
            Duration::from_secs(60),
            &format!("{manifest}: webhook endpoints"),
            || {
                let endpoints = endpoints.clone();
                async move {
                    let slices = endpoints
                        .list(
                            &kube::api::ListParams::default()
                                .labels("kubernetes.io/service-name=previewd-webhook"),
                        )
                        .await
                        .ok()?;
                    let ready = slices
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                        .count();
                    (ready >= 2).then_some(())
                }
            },
        )
        .await;
        Installed { cluster_objects }.remove(&admin).await;
        delete_namespace(&admin, &namespace).await;
    }
}

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/helm/previewd");

fn every_value() -> String {
    format!("{CHART}/ci/every-value-values.yaml")
}

fn every_value_alt() -> String {
    format!("{CHART}/ci/every-value-alt-values.yaml")
}

/// The helm binary `scripts/helm` builds (once) from its Go module.
fn helm() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/helm");
    let out = Command::new(script).output().expect("run scripts/helm");
    assert!(
        out.status.success(),
        "scripts/helm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("the helm binary's path")
            .trim(),
    )
}

/// Runs helm; returns (success, stdout, stderr).
fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn helm_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_helm(args);
    assert!(ok, "helm {args:?} failed:\n{stderr}");
    stdout
}

/// `helm template` of the chart, one JSON value per object.
fn template(chart: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec![
        "template",
        "previewd",
        chart,
        "--namespace",
        "previewd-system",
    ];
    all.extend_from_slice(args);
    let text = helm_ok(&all);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parse rendered chart");
    docs.into_iter().filter(|d| d.is_object()).collect()
}

/// Environment variable names of every container of every Deployment.
fn env_names(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .clone()
        })
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Flags of `previewd run` the chart does not set, and why.
const NOT_SET_BY_THE_CHART: [(&str, &str); 5] = [
    ("--kubeconfig", "in-cluster configuration"),
    (
        "--leader-elect-namespace",
        "the release namespace, from POD_NAMESPACE",
    ),
    ("--leader-elect-identity", "the pod's name, from POD_NAME"),
    (
        "--github-app-installation-id",
        "an optional default, set from github.app.installationId (checked below)",
    ),
    ("--webhook-secret", "from the Secret, checked below"),
];

#[test]
fn every_flag_of_previewd_run_has_a_value() {
    use clap::CommandFactory;
    let mut cli = previewd_operator::cli::Cli::command();
    cli.build();
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .unwrap()
        .clone();
    // The every-value install, and the other side of each exclusive choice.
    let every = template(CHART, &["-f", &every_value()]);
    let alt = template(CHART, &["-f", &every_value(), "-f", &every_value_alt()]);
    let mut set = env_names(&every);
    set.extend(env_names(&alt));
    let mut missing = Vec::new();
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = format!("--{long}");
        if NOT_SET_BY_THE_CHART.iter().any(|(f, _)| *f == flag) {
            continue;
        }
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("{flag} has no environment variable"))
            .to_string_lossy()
            .into_owned();
        if !set.contains(&env) {
            missing.push(format!("{flag} ({env})"));
        }
    }
    assert!(
        missing.is_empty(),
        "flags of `previewd run` no chart value sets: {missing:?}"
    );
    for env in [
        "PREVIEWD_WEBHOOK_SECRET",
        "PREVIEWD_GITHUB_APP_INSTALLATION_ID",
        "PREVIEWD_HISTORY_POSTGRES_URL",
        "PREVIEWD_GITHUB_TOKEN",
        "AI_BASE_URL",
        "OPENAI_API_KEY",
    ] {
        assert!(set.contains(env), "{env} is never set");
    }
    // Secrets come from Secrets, never as literal values.
    for doc in every.iter().chain(alt.iter()) {
        if doc["kind"] != "Deployment" {
            continue;
        }
        for c in doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            for e in c["env"].as_array().unwrap() {
                let name = e["name"].as_str().unwrap();
                if matches!(
                    name,
                    "PREVIEWD_WEBHOOK_SECRET"
                        | "PREVIEWD_GITHUB_TOKEN"
                        | "PREVIEWD_HISTORY_POSTGRES_URL"
                        | "OPENAI_API_KEY"
                ) {
                    assert!(e.get("value").is_none(), "{name} is a literal value");
                    assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{name}");
                }
            }
        }
    }
}

/// Dotted paths of the leaves of a values document (lists and empty maps are leaves).
fn value_leaves(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                value_leaves(v, &p, out);
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

fn yaml_file(path: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, k| v.get(k))
}

/// Values that hold a Kubernetes object, set as a whole.
const KUBERNETES_OBJECTS: [&str; 7] = [
    "resources",
    "podSecurityContext",
    "securityContext",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "affinity",
];

#[test]
fn the_every_value_files_set_every_value() {
    let defaults = yaml_file(&format!("{CHART}/values.yaml"));
    let every = yaml_file(&every_value());
    let alt = yaml_file(&every_value_alt());
    let mut leaves = BTreeSet::new();
    value_leaves(&defaults, "", &mut leaves);
    let mut unset = Vec::new();
    for path in leaves {
        let changed =
            |doc: &Value| lookup(doc, &path).is_some_and(|v| Some(v) != lookup(&defaults, &path));
        // Inside a Kubernetes object (resources, security contexts, probes), setting the
        // object to another one counts.
        let object_changed = |doc: &Value| {
            let mut prefix = String::new();
            path.split('.').any(|key| {
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(key);
                KUBERNETES_OBJECTS.contains(&key)
                    && lookup(doc, &prefix).is_some_and(|v| Some(v) != lookup(&defaults, &prefix))
            })
        };
        if !(changed(&every) || changed(&alt) || object_changed(&every)) {
            unset.push(path);
        }
    }
    assert!(
        unset.is_empty(),
        "values the every-value files leave at their default: {unset:?}"
    );
}

#[test]
fn lint_is_strict_and_the_schema_refuses_unknown_keys() {
    helm_ok(&["lint", "--strict", CHART, "-f", &every_value()]);
    helm_ok(&[
        "lint",
        "--strict",
        CHART,
        "-f",
        &every_value(),
        "-f",
        &every_value_alt(),
    ]);
    let base = [
        "--set",
        "ingressNamespace=x",
        "--set",
        "github.webhookSecret.existingSecret=s",
    ];
    for unknown in [
        "replicaCont=3",
        "controller.replicaCount=3",
        "webhook.ingress.hosts=x",
    ] {
        let mut args = vec!["template", "previewd", CHART];
        args.extend_from_slice(&base);
        args.extend_from_slice(&["--set", unknown]);
        let (ok, _, stderr) = run_helm(&args);
        let key = unknown
            .split('=')
            .next()
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap();
        assert!(!ok, "the schema accepted {unknown}");
        assert!(stderr.contains(key), "{unknown}: {stderr}");
    }
    // A mistyped value is refused too.
    let mut args = vec!["template", "previewd", CHART];
    args.extend_from_slice(&base);
    args.extend_from_slice(&["--set", "controller.cleanupInterval=five minutes"]);
    assert!(!run_helm(&args).0, "a duration that is none was accepted");
}

#[test]
fn crds_are_templated_kept_and_switchable() {
    let base = [
        "--set",
        "ingressNamespace=x",
        "--set",
        "github.webhookSecret.existingSecret=s",
    ];
    let crds = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        template(CHART, &args)
            .into_iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .collect::<Vec<_>>()
    };
    let installed = crds(&[]);
    let generated: Vec<Value> = previewd_kube::crdgen::crds()
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(installed.len(), generated.len());
    for crd in &installed {
        let name = &crd["metadata"]["name"];
        let same = generated
            .iter()
            .find(|g| &g["metadata"]["name"] == name)
            .unwrap();
        assert_eq!(
            crd["spec"], same["spec"],
            "{name} differs from `previewd crd`"
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    for crd in crds(&["--set", "crds.keep=false"]) {
        assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    }
    assert!(crds(&["--set", "crds.install=false"]).is_empty());
}

#[test]
fn the_prometheus_rule_holds_the_documented_alerts() {
    let docs = template(
        CHART,
        &[
            "--set",
            "ingressNamespace=x",
            "--set",
            "github.webhookSecret.existingSecret=s",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
        ],
    );
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let operations = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let alerts: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(alerts.len() >= 9);
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        assert!(
            operations.contains(&format!("`{name}`")),
            "{name} is not in docs/operations.md"
        );
        // Every expression selects the release's job and namespace.
        let expr = alert["expr"].as_str().unwrap();
        assert!(expr.contains("job=\"previewd-metrics\""), "{name}: {expr}");
        assert!(
            expr.contains("namespace=\"previewd-system\""),
            "{name}: {expr}"
        );
    }
    // Both monitors at once would scrape everything twice.
    let (ok, _, stderr) = run_helm(&[
        "template",
        "previewd",
        CHART,
        "--set",
        "ingressNamespace=x",
        "--set",
        "github.webhookSecret.existingSecret=s",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
    ]);
    assert!(!ok && stderr.contains("not both"), "{stderr}");
}

/// Server-side applies (or, with `dry_run`, validates) one rendered object, finding its
/// resource through discovery.
async fn apply_discovered(client: &kube::Client, doc: &Value, dry_run: bool) {
    let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().unwrap().to_string(),
        ),
    };
    let gvk = kube::core::GroupVersionKind::gvk(&group, &version, doc["kind"].as_str().unwrap());
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<kube::api::DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    let obj: kube::api::DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    let mut params = kube::api::PatchParams::apply("previewd-tests").force();
    params.dry_run = dry_run;
    api.patch(
        doc["metadata"]["name"].as_str().unwrap(),
        &params,
        &kube::api::Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
}

const MONITORING_CRDS: [&str; 3] = [
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_and_upgrades_with_every_value_set() {
    let admin = client().await;
    install_crds(&admin).await;
    install_crd_files(&admin, "prometheus-operator-crds", &MONITORING_CRDS).await;
    let namespace = temp_namespace(&admin, "chart-every").await;
    let other = temp_namespace(&admin, "chart-every-x").await;
    let suffix = unique_suffix();
    let release = format!("pvd-{suffix}");
    let fullname = format!("previewd-every-{suffix}");
    let overrides = [
        format!("fullnameOverride={fullname}"),
        format!("watchNamespace={other}"),
        format!("history.configMap={other}/history"),
        format!("ai.configMap={other}/ai-settings"),
        format!("secrets.sourceNamespace={other}"),
        format!("argocd.namespace={other}"),
        format!("metrics.prometheusRule.job={fullname}-metrics"),
    ];
    let mut args: Vec<String> = vec![
        "--namespace".into(),
        namespace.clone(),
        "-f".into(),
        every_value(),
    ];
    for o in &overrides {
        args.push("--set".into());
        args.push(o.clone());
    }
    let install = |verb: &str, extra: &[&str]| {
        let mut all: Vec<String> = vec![verb.into(), release.clone(), CHART.into()];
        all.extend(args.iter().cloned());
        all.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        helm_ok(&refs)
    };
    // The CRDs exist already (every test installs them): the release takes them over.
    install("install", &["--take-ownership"]);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    let controller = deployments.get(&fullname).await.unwrap();
    let webhook = deployments
        .get(&format!("{fullname}-webhook"))
        .await
        .unwrap();
    let env = |d: &Deployment, name: &str| -> Option<String> {
        d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env(&controller, "PREVIEWD_ROUTE_KIND").as_deref(),
        Some("httproute")
    );
    assert_eq!(
        env(&controller, "PREVIEWD_REPOSITORY_CLAIMS").as_deref(),
        Some("platform=*;team-shop=acme/shop,acme/shop-*")
    );
    assert_eq!(
        env(&webhook, "PREVIEWD_WEBHOOK_ONLY").as_deref(),
        Some("true")
    );
    assert_eq!(
        env(&webhook, "PREVIEWD_MAINTAINER_ROLE").as_deref(),
        Some("maintain")
    );
    assert_eq!(
        webhook
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("previewd-every-hook")
    );
    // The Prometheus Operator's objects were accepted by their real CRDs.
    for (plural, name) in [
        ("servicemonitors", fullname.clone()),
        ("prometheusrules", fullname.clone()),
    ] {
        let resource = kube::core::ApiResource {
            group: "monitoring.coreos.com".into(),
            version: "v1".into(),
            api_version: "monitoring.coreos.com/v1".into(),
            kind: String::new(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(admin.clone(), &namespace, &resource);
        api.get(&name)
            .await
            .unwrap_or_else(|e| panic!("{plural}/{name}: {e}"));
    }

    // An upgrade with a changed value goes through.
    install("upgrade", &["--set", "controller.concurrency=4"]);
    let controller = deployments.get(&fullname).await.unwrap();
    assert_eq!(
        env(&controller, "PREVIEWD_CONCURRENCY").as_deref(),
        Some("4")
    );

    // The other side of each exclusive choice: accepted by the API server (dry run).
    let mut alt_args: Vec<String> = vec![
        "template".into(),
        release.clone(),
        CHART.into(),
        "--namespace".into(),
        namespace.clone(),
        "-f".into(),
        every_value(),
        "-f".into(),
        every_value_alt(),
    ];
    for o in &overrides {
        alt_args.push("--set".into());
        alt_args.push(o.clone());
    }
    // Objects of their own, not changes to the installed ones.
    alt_args.push("--set".into());
    alt_args.push(format!("fullnameOverride={fullname}-alt"));
    let refs: Vec<&str> = alt_args.iter().map(String::as_str).collect();
    let text = helm_ok(&refs);
    let alt: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let alt: Vec<Value> = alt.into_iter().filter(Value::is_object).collect();
    assert!(alt.iter().any(|d| d["kind"] == "PodMonitor"));
    for doc in &alt {
        apply_discovered(&admin, doc, true).await;
    }

    helm_ok(&["uninstall", &release, "--namespace", &namespace]);
    // crds.keep: the CRDs (and every environment of every team) stay.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    assert!(
        crds.get_opt("previewenvironments.previewd.io")
            .await
            .unwrap()
            .is_some()
    );
    delete_namespace(&admin, &other).await;
    delete_namespace(&admin, &namespace).await;
}

/// A copy of the chart holding only its CRDs, renamed into the API group `group` (so
/// that the test owns them alone), with `edit` applied to each CRD.
fn crd_only_chart(dir: &Path, group: &str, edit: impl Fn(&mut Value)) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::create_dir_all(dir.join("files/crds")).unwrap();
    for file in ["Chart.yaml", "values.yaml", "values.schema.json"] {
        std::fs::copy(format!("{CHART}/{file}"), dir.join(file)).unwrap();
    }
    for file in ["_helpers.tpl", "crds.yaml"] {
        std::fs::copy(
            format!("{CHART}/templates/{file}"),
            dir.join("templates").join(file),
        )
        .unwrap();
    }
    for entry in std::fs::read_dir(format!("{CHART}/files/crds")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("previewd.io", group);
        let mut crd: Value = serde_saphyr::from_str(&text).unwrap();
        edit(&mut crd);
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        std::fs::write(
            dir.join("files/crds").join(format!("{name}.yaml")),
            serde_saphyr::to_string(&crd).unwrap(),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_updates_the_crds_and_keeps_the_environments() {
    let admin = client().await;
    let namespace = temp_namespace(&admin, "chart-crd").await;
    let suffix = unique_suffix();
    let group = format!("t{suffix}.previewd-test.io");
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let new = tmp.path().join("new");
    // The old chart's PreviewEnvironment has no spec.ttl yet.
    crd_only_chart(&old, &group, |crd| {
        if crd["spec"]["names"]["kind"] == "PreviewEnvironment" {
            for version in crd["spec"]["versions"].as_array_mut().unwrap() {
                let spec =
                    &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
                assert!(spec.as_object_mut().unwrap().remove("ttl").is_some());
            }
        }
    });
    crd_only_chart(&new, &group, |_| {});
    let release = format!("crd-{suffix}");
    let (old, new) = (
        old.to_str().unwrap().to_string(),
        new.to_str().unwrap().to_string(),
    );
    helm_ok(&["install", &release, &old, "--namespace", &namespace]);

    let resource = kube::core::ApiResource {
        group: group.clone(),
        version: "v1alpha1".into(),
        api_version: format!("{group}/v1alpha1"),
        kind: "PreviewEnvironment".into(),
        plural: "previewenvironments".into(),
    };
    let envs: Api<kube::api::DynamicObject> =
        Api::namespaced_with(admin.clone(), &namespace, &resource);
    let body = json!({
        "apiVersion": format!("{group}/v1alpha1"), "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-1"},
        "spec": {"repository": "acme/shop", "prNumber": 1, "branch": "b",
                 "headSHA": "0123456789abcdef0123456789abcdef01234567", "ttl": "4h"}
    });
    let created = eventually(Duration::from_secs(30), "the old CRD serves", || {
        let envs = envs.clone();
        let body = body.clone();
        async move {
            envs.create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .ok()
        }
    })
    .await;
    // The old schema does not know spec.ttl: the API server pruned it.
    assert!(created.data["spec"].get("ttl").is_none());
    let uid = created.metadata.uid.clone().unwrap();

    helm_ok(&["upgrade", &release, &new, "--namespace", &namespace]);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    let crd_name = format!("previewenvironments.{group}");
    let upgraded = crds.get(&crd_name).await.unwrap();
    let schema = serde_json::to_value(&upgraded.spec.versions[0].schema).unwrap();
    assert!(
        schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["ttl"].is_object(),
        "helm upgrade did not update the CRD"
    );
    // The environment is still there, the same object, and now keeps a TTL.
    let kept = envs.get("shop-pr-1").await.unwrap();
    assert_eq!(kept.metadata.uid.as_deref(), Some(uid.as_str()));
    let patched = eventually(Duration::from_secs(30), "the new field is served", || {
        let envs = envs.clone();
        async move {
            let e = envs
                .patch(
                    "shop-pr-1",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"spec": {"ttl": "4h"}})),
                )
                .await
                .ok()?;
            e.data["spec"].get("ttl").is_some().then_some(e)
        }
    })
    .await;
    assert_eq!(patched.data["spec"]["ttl"], "4h");

    // Uninstalled, the CRDs stay (crds.keep) and so does the environment.
    helm_ok(&["uninstall", &release, "--namespace", &namespace]);
    assert!(crds.get_opt(&crd_name).await.unwrap().is_some());
    assert!(envs.get_opt("shop-pr-1").await.unwrap().is_some());
    for crd in crds.list(&Default::default()).await.unwrap() {
        if crd.spec.group == group {
            let _ = crds.delete(&crd.name_any(), &Default::default()).await;
        }
    }
    delete_namespace(&admin, &namespace).await;
}
