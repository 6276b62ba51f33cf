//! The `manifests` strategy: the catalogue's Deployments and Services plus the templated
//! objects the `PreviewRepository` carries (`spec.manifests`), rendered per environment
//! and applied by server-side apply into the environment's namespace, wave by wave.
//!
//! - **Templates** are structured objects; variables (`{{number}}`, `{{sha}}`,
//!   `{{shortSha}}`, `{{branch}}`, `{{namespace}}`, `{{host}}`) are substituted into
//!   string values only ([`template`]).
//! - **Confinement**: only kinds on the operator's allow-list ([`kinds`]) are rendered;
//!   Namespaces, RBAC objects, cluster-scoped kinds, the guard rails and objects naming
//!   another namespace stall the environment with a reason of their own, and nothing of
//!   the application is written.
//! - **Overrides**: a template that renders an object of the same kind and name as one
//!   the catalogue generates (a Deployment `api`, say) replaces the catalogue's.
//! - **Readiness** ([`readiness`]): workloads rolled out, Jobs complete (a failed Job
//!   fails the environment with its reason), anything with a `Ready` condition ready,
//!   anything else present. **Waves**: the planner applies a wave only once every object
//!   of the earlier waves is ready ([`DeployStrategy::object_ready`]).

pub mod kinds;
pub mod readiness;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

use super::{
    CatalogueStrategy, DeployStrategy, NamespaceView, RenderInput, StrategyError, WatchedKind,
};
use crate::crd::PreviewRepository;
use crate::plan::health::{Health, combine, pod_problem};
use crate::plan::object::{ChildKey, DesiredObject};
pub use kinds::{DEFAULT_KINDS, ManifestKind, ManifestKinds};
use readiness::object_health;
use template::Variables;

/// Templated manifests plus the catalogue.
#[derive(Clone, Debug, Default)]
pub struct ManifestsStrategy {
    kinds: ManifestKinds,
}

impl ManifestsStrategy {
    /// The strategy with the allow-list `kinds`.
    pub fn new(kinds: ManifestKinds) -> ManifestsStrategy {
        ManifestsStrategy { kinds }
    }

    /// The allow-list.
    pub fn kinds(&self) -> &ManifestKinds {
        &self.kinds
    }

    /// Renders the repository's templates for one environment, in template order.
    pub fn render_templates(
        &self,
        input: &RenderInput<'_>,
        repository: &PreviewRepository,
    ) -> Result<Vec<DesiredObject>, StrategyError> {
        let env = input.env;
        let vars = Variables::new(
            env.spec.pr_number,
            &env.spec.head_sha,
            &env.spec.branch,
            input.namespace,
            input.host,
        );
        let labels = crate::children::common_labels(env);
        let mut out = Vec::with_capacity(repository.spec.manifests.len());
        for (i, manifest) in repository.spec.manifests.iter().enumerate() {
            let mut value = manifest.template.clone();
            let at = |v: &Value| {
                let kind = v.get("kind").and_then(Value::as_str).unwrap_or("object");
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                format!("spec.manifests[{i}] ({kind} {name})")
            };
            vars.render(&mut value)
                .map_err(|e| invalid(format!("{}: {e}", at(&manifest.template))))?;
            let api_version = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let (api_version, kind) = (api_version.as_str(), kind.as_str());
            if api_version.is_empty() || kind.is_empty() {
                return Err(invalid(format!(
                    "{}: apiVersion and kind are required",
                    at(&value)
                )));
            }
            if let Some((reason, why)) = kinds::refusal(api_version, kind) {
                return Err(StrategyError {
                    reason: reason.into(),
                    message: format!("{}: {why}; nothing was applied", at(&value)),
                });
            }
            let Some(allowed) = self.kinds.get(api_version, kind) else {
                return Err(StrategyError {
                    reason: "ManifestKindNotAllowed".into(),
                    message: format!(
                        "{}: {api_version} {kind} is not on the operator's allow-list (allowed: {}); nothing was applied",
                        at(&value),
                        self.kinds.names().join(", ")
                    ),
                });
            };
            if let Some(ns) = value.pointer("/metadata/namespace").and_then(Value::as_str)
                && ns != input.namespace
            {
                return Err(StrategyError {
                    reason: "ManifestForeignNamespace".into(),
                    message: format!(
                        "{}: names namespace {ns:?}; objects may only go to the environment's namespace {:?} (leave metadata.namespace out or use {{{{namespace}}}}); nothing was applied",
                        at(&value),
                        input.namespace
                    ),
                });
            }
            let name_ok = value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !name_ok {
                return Err(invalid(format!(
                    "{}: metadata.name is required (generateName is not supported: the object must be found again)",
                    at(&value)
                )));
            }
            clean(&mut value);
            label_pods(kind, &mut value, &labels);
            out.push(
                DesiredObject::from_value(allowed.resource.clone(), value).in_wave(manifest.wave),
            );
        }
        Ok(out)
    }

    fn repository<'a>(
        &self,
        input: &RenderInput<'a>,
    ) -> Result<&'a PreviewRepository, StrategyError> {
        input.repository.ok_or_else(|| StrategyError {
            reason: "RepositoryNotFound".into(),
            message: format!(
                "the manifests strategy renders from the PreviewRepository named by spec.repositoryRef ({}), which does not exist",
                input.env.spec.repository_ref.as_deref().unwrap_or("unset")
            ),
        })
    }
}

impl DeployStrategy for ManifestsStrategy {
    fn name(&self) -> &str {
        "manifests"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        let mut kinds = CatalogueStrategy.watched_kinds();
        kinds.extend(self.kinds.watched());
        kinds
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        let repository = self.repository(input)?;
        let templates = self.render_templates(input, repository)?;
        let mut seen = BTreeSet::new();
        for t in &templates {
            if !seen.insert(t.key()) {
                return Err(invalid(format!(
                    "two templates render {}; names must be unique per kind",
                    t.key()
                )));
            }
        }
        let wave = repository.spec.catalogue_wave.unwrap_or(0);
        let mut objects: Vec<DesiredObject> = CatalogueStrategy
            .desired(input)?
            .into_iter()
            .filter(|o| !seen.contains(&o.key()))
            .map(|o| o.in_wave(wave))
            .collect();
        objects.extend(templates);
        Ok(objects)
    }

    fn health(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        applying: &BTreeSet<ChildKey>,
    ) -> Health {
        let objects = match self.desired(input) {
            Ok(objects) => objects,
            Err(e) => return Health::Failed(e.to_string()),
        };
        let mut waves: BTreeMap<i32, Vec<&DesiredObject>> = BTreeMap::new();
        for o in &objects {
            waves.entry(o.wave).or_default().push(o);
        }
        let pods: Vec<&Pod> = view.pods.iter().map(AsRef::as_ref).collect();
        for (wave, members) in &waves {
            let problems: Vec<Health> = members
                .iter()
                .map(|o| judge(o, view, applying, &pods))
                .collect();
            match combine(problems, String::new()) {
                Health::Available(_) => {}
                Health::Failed(m) => return Health::Failed(m),
                Health::Progressing(m) => {
                    let later = waves.range(wave + 1..).count();
                    let tail = if later > 0 {
                        format!(" ({later} later wave(s) waiting)")
                    } else {
                        String::new()
                    };
                    return Health::Progressing(if waves.len() > 1 {
                        format!("wave {wave}: {m}{tail}")
                    } else {
                        m
                    });
                }
            }
        }
        Health::Available(format!(
            "{} object(s) ready in {} wave(s)",
            objects.len(),
            waves.len()
        ))
    }

    fn object_ready(&self, object: &DesiredObject, view: &NamespaceView) -> bool {
        let pods: Vec<&Pod> = view.pods.iter().map(AsRef::as_ref).collect();
        matches!(
            judge(object, view, &BTreeSet::new(), &pods),
            Health::Available(_)
        )
    }
}

/// Judges one desired object from the caches.
fn judge(
    object: &DesiredObject,
    view: &NamespaceView,
    applying: &BTreeSet<ChildKey>,
    pods: &[&Pod],
) -> Health {
    let key = object.key();
    let what = format!("{} {}", key.kind, key.name);
    if applying.contains(&key) {
        return Health::Progressing(format!("{what}: being applied"));
    }
    let live: Option<Value> = if key.kind == "Deployment" && key.api_version == "apps/v1" {
        view.deployment(&key.name)
            .and_then(|d| serde_json::to_value(d).ok())
    } else {
        view.objects
            .get(&key)
            .and_then(|o| serde_json::to_value(o.as_ref()).ok())
    };
    let health = match live {
        Some(live) => object_health(&what, &key.kind, &live),
        None if view.children.contains_key(&key) => Health::Available(format!("{what} exists")),
        None => return Health::Progressing(format!("{what}: not created yet")),
    };
    match health {
        Health::Progressing(m) => match workload_pods_problem(object, pods) {
            Some((true, p)) => Health::Failed(format!("{what}: {p}")),
            Some((false, p)) => Health::Progressing(format!("{m}: {p}")),
            None => Health::Progressing(m),
        },
        other => other,
    }
}

/// What is wrong with the pods of a workload (selected by its `matchLabels`).
fn workload_pods_problem(object: &DesiredObject, pods: &[&Pod]) -> Option<(bool, String)> {
    let selector: BTreeMap<String, String> = if object.resource.kind == "Job" {
        // Set by the Job controller on every pod of the Job.
        BTreeMap::from([(
            "batch.kubernetes.io/job-name".to_string(),
            object.name.clone(),
        )])
    } else {
        object
            .object
            .pointer("/spec/selector/matchLabels")
            .and_then(|s| serde_json::from_value(s.clone()).ok())?
    };
    if selector.is_empty() {
        return None;
    }
    let mine: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    pod_problem(&mine)
}

fn invalid(message: String) -> StrategyError {
    StrategyError {
        reason: "ManifestInvalid".into(),
        message,
    }
}

/// Drops what a template must not carry into an apply: server-set metadata and status.
fn clean(value: &mut Value) {
    if let Some(obj) = value.as_object_mut() {
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
                "generateName",
            ] {
                meta.remove(field);
            }
        }
    }
}

/// Adds the environment's labels to the pod template of a workload (labels the template
/// sets win), so that its pods are watched and their problems (image pulls, crash loops)
/// explain a workload that does not become ready.
fn label_pods(kind: &str, value: &mut Value, labels: &BTreeMap<String, String>) {
    let pointer = match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return,
    };
    let Some(template) = value.pointer_mut(pointer).and_then(Value::as_object_mut) else {
        return;
    };
    let meta = template
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let existing = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(l) = existing.as_object_mut() {
        for (k, v) in labels {
            l.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
    }
}

#[cfg(test)]
mod tests;
