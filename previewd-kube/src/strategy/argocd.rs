//! The `argocd` strategy: Argo CD deploys the environment from the repository's own
//! manifests (Helm or Kustomize) at the pull request's head commit.
//!
//! previewd writes Argo CD `Application`s itself, one per service when the repository's
//! `spec.argocd.path` contains `{service}`, else one for the whole environment, rather
//! than an `ApplicationSet` with a list generator:
//! - readiness is read from Application status, and previewd sees the Applications it
//!   wrote directly, without waiting for the ApplicationSet controller to (re)generate
//!   them: one controller hop less on every push and on teardown;
//! - affected-service selection, image overrides and the head commit are rendered by the
//!   same code that renders everything else, with no Go template between previewd and
//!   Argo CD (an ApplicationSet's templated fields are a second, weaker template engine);
//! - teardown deletes exactly these objects and waits for them, instead of relying on
//!   the ApplicationSet's deletion policy.
//!
//! Every Application has `targetRevision` = the head commit (so a push changes the spec
//! and Argo CD refreshes at once), destination = the environment's namespace, the
//! service's image set by a Kustomize `images` entry or Helm parameters, automated sync
//! with prune and self-heal, and the `resources-finalizer.argocd.argoproj.io` finalizer
//! (deleting the Application deletes what it deployed).
//!
//! Applications live in Argo CD's namespace, the one place outside an environment's own
//! namespace previewd writes to: only in the namespace the platform configures
//! ([`ArgoCdPlatform`]), with names derived from the environment's namespace, the
//! environment's labels, and its UID in `previewd.io/owner-uid` (the planner adds those
//! and only ever prunes or deletes objects that carry the UID). See docs/SECURITY.md.
//!
//! # Confinement
//!
//! An Application in Argo CD's namespace may name any AppProject, and the project is all
//! that limits what Argo CD deploys with its own (cluster-wide) rights; the built-in
//! `default` project allows everything. So nothing of it comes from a tenant: previewd
//! writes one AppProject per environment (named like its namespace) that allows
//! - one destination: the environment's namespace on the platform's destination server;
//! - one source: the manifests repository, which must be the claimed repository itself
//!   or one the platform allows ([`ArgoCdPlatform::source_repos`]);
//! - no cluster-scoped kind (`clusterResourceWhitelist: []`) and, in the namespace, only
//!   the kinds templates may create (`namespaceResourceWhitelist`, the operator's
//!   allow-list, which never holds RBAC, quotas or network policies);
//! - no other namespace's Applications (`sourceNamespaces: []`).
//!
//! What an AppProject cannot express (a Service's type, external IPs) is refused by the
//! namespace's quota (no load balancer, no node port) and by the chart's admission
//! policy for preview namespaces. A fork's pull request runs code nobody reviewed with
//! Argo CD's rights to the repository's manifests, so fork environments are refused
//! unless the platform opts in ([`ArgoCdPlatform::allow_forks`]).
//!
//! Health (pure, from the Application's status as Argo CD writes it):
//! - available: `sync.status` Synced at the head commit, `health.status` Healthy, the
//!   last operation (if any) Succeeded, and no error condition;
//! - failed: an error condition (`InvalidSpecError`, `ComparisonError`, `SyncError`,
//!   `UnknownError`), the sync operation `Failed` or `Error`, or Degraded at the head
//!   commit, each with Argo CD's own message;
//! - otherwise progressing (the readiness deadline bounds the wait).

use std::collections::BTreeSet;

use kube::core::ApiResource;
use serde_json::{Value, json};

use super::manifests::ManifestKinds;
use super::{DeployStrategy, NamespaceView, RenderInput, StrategyError, WatchedKind};
use crate::crd::{ANNOTATION_RETRY, ArgoCdSettings, ArgoCdTool, ServiceSpec};
use crate::plan::health::{Health, combine};
use crate::plan::object::{ChildKey, DesiredObject};

/// Argo CD's finalizer that deletes an Application's resources with it.
pub const ARGOCD_RESOURCES_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io";

/// Application conditions that mean the Application cannot sync as it is.
pub const ARGOCD_ERROR_CONDITIONS: &[&str] = &[
    "InvalidSpecError",
    "ComparisonError",
    "SyncError",
    "UnknownError",
];

/// Longest Kubernetes label value, which Argo CD's tracking label takes the name as.
const NAME_MAX: usize = 63;

/// The platform's Argo CD settings: where Applications live, where they deploy, which
/// sources they may use. Never read from a tenant's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgoCdPlatform {
    /// Namespace where Argo CD reads Applications and AppProjects (`--argocd-namespace`,
    /// default `argocd`).
    pub namespace: String,
    /// The destination cluster's API server (`--argocd-destination-server`, default
    /// the cluster Argo CD runs in).
    pub destination_server: String,
    /// Manifest repositories allowed besides the claimed repository itself
    /// (`--argocd-source-repos`): exact URLs, or prefixes ending in `/`.
    pub source_repos: Vec<String>,
    /// Deploy fork pull requests through Argo CD (`--argocd-allow-forks`; default off).
    pub allow_forks: bool,
    /// Kinds Argo CD may create in an environment's namespace (its AppProject's
    /// `namespaceResourceWhitelist`): the templates' allow-list.
    pub kinds: ManifestKinds,
}

impl Default for ArgoCdPlatform {
    fn default() -> Self {
        ArgoCdPlatform {
            namespace: "argocd".into(),
            destination_server: IN_CLUSTER.into(),
            source_repos: Vec::new(),
            allow_forks: false,
            kinds: ManifestKinds::default(),
        }
    }
}

/// The API server of the cluster Argo CD runs in, as Argo CD names it.
pub const IN_CLUSTER: &str = "https://kubernetes.default.svc";

/// Deploys through Argo CD Applications.
#[derive(Clone, Debug)]
pub struct ArgoCdStrategy {
    application: ApiResource,
    project: ApiResource,
    platform: ArgoCdPlatform,
}

impl Default for ArgoCdStrategy {
    fn default() -> Self {
        ArgoCdStrategy::new()
    }
}

impl ArgoCdStrategy {
    /// The strategy for Argo CD's `argoproj.io/v1alpha1` Applications, with the default
    /// platform settings.
    pub fn new() -> ArgoCdStrategy {
        ArgoCdStrategy::with_platform(ArgoCdPlatform::default())
    }

    /// The strategy with the platform's settings.
    pub fn with_platform(platform: ArgoCdPlatform) -> ArgoCdStrategy {
        ArgoCdStrategy {
            application: application_resource("argoproj.io", "v1alpha1"),
            project: project_resource("argoproj.io", "v1alpha1"),
            platform,
        }
    }

    /// The strategy for Applications served under another group or version (a fork of
    /// Argo CD, or a cluster that serves none, to see the strategy refused).
    pub fn with_resource(mut self, application: ApiResource) -> ArgoCdStrategy {
        self.project = project_resource(&application.group, &application.version);
        self.application = application;
        self
    }

    /// The Application resource this strategy writes.
    pub fn application(&self) -> &ApiResource {
        &self.application
    }

    /// The platform's settings.
    pub fn platform(&self) -> &ArgoCdPlatform {
        &self.platform
    }
}

/// The `AppProject` resource of an Argo CD API group and version.
pub fn project_resource(group: &str, version: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: "AppProject".into(),
        plural: "appprojects".into(),
    }
}

/// Whether `repo_url` is `repository` (`owner/name`) on GitHub, or one of the
/// platform's allowed sources.
pub fn source_allowed(repo_url: &str, repository: &str, allowed: &[String]) -> bool {
    let normal = |u: &str| {
        u.trim()
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .to_ascii_lowercase()
    };
    let url = normal(repo_url);
    if url == format!("https://github.com/{}", repository.to_ascii_lowercase()) {
        return true;
    }
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        if a.ends_with('/') {
            url.starts_with(&a) && url.len() > a.len()
        } else {
            url == normal(&a)
        }
    })
}

/// The AppProject that confines an environment's Applications: named like its
/// namespace, one destination, one source, no cluster-scoped kind, only `kinds` in the
/// namespace.
pub fn desired_project(
    resource: &ApiResource,
    platform: &ArgoCdPlatform,
    namespace: &str,
    repo_url: &str,
) -> DesiredObject {
    let mut kinds: Vec<Value> = platform
        .kinds
        .resources()
        .map(|r| json!({"group": r.group, "kind": r.kind}))
        .collect();
    kinds.sort_by_key(Value::to_string);
    let object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": project_name(namespace), "namespace": platform.namespace},
        "spec": {
            "description": format!("previewd: the preview environment in namespace {namespace}"),
            "sourceRepos": [repo_url],
            "destinations": [{"server": platform.destination_server, "namespace": namespace}],
            "clusterResourceWhitelist": [],
            "namespaceResourceWhitelist": kinds,
            "sourceNamespaces": [],
        },
    });
    DesiredObject::from_value(resource.clone(), object)
}

/// Name of an environment's AppProject: its namespace (unique in the cluster).
pub fn project_name(namespace: &str) -> String {
    application_name(namespace, None)
}

/// The `Application` resource of an Argo CD API group and version.
pub fn application_resource(group: &str, version: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: "Application".into(),
        plural: "applications".into(),
    }
}

/// One Application previewd wants: its name and the services it deploys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedApplication {
    /// Object name (in Argo CD's namespace).
    pub name: String,
    /// The service it deploys, when there is one Application per service.
    pub service: Option<String>,
}

/// The Applications of an environment whose namespace is `namespace`.
pub fn planned_applications(
    settings: &ArgoCdSettings,
    namespace: &str,
    services: &[ServiceSpec],
) -> Vec<PlannedApplication> {
    if per_service(settings) {
        services
            .iter()
            .map(|s| PlannedApplication {
                name: application_name(namespace, Some(&s.name)),
                service: Some(s.name.clone()),
            })
            .collect()
    } else {
        vec![PlannedApplication {
            name: application_name(namespace, None),
            service: None,
        }]
    }
}

fn per_service(settings: &ArgoCdSettings) -> bool {
    settings.path.contains("{service}")
}

/// Name of an Application: the environment's namespace (unique in the cluster), with the
/// service, shortened with a hash to 63 characters when needed.
pub fn application_name(namespace: &str, service: Option<&str>) -> String {
    let full = match service {
        Some(s) => format!("{namespace}-{s}"),
        None => namespace.to_string(),
    };
    if full.len() <= NAME_MAX {
        return full;
    }
    let hash = previewd_core::naming::short_hash(&full);
    // `full` is ASCII (a DNS label and a service name).
    let keep = NAME_MAX - hash.len() - 1;
    format!("{}-{hash}", full[..keep].trim_end_matches('-'))
}

/// Splits an image into repository and tag (or `sha256:` digest); no tag gives `latest`.
pub fn split_image(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// The Application for `planned`, deploying `services` of the environment into
/// `namespace` at `head_sha`. Labels, the Argo CD namespace and the owner marker are
/// added by the planner.
///
/// With `retry` (the environment's `previewd.io/retry` annotation), the Application
/// also carries that value and a sync `operation`: Argo CD's automated sync does not try
/// a commit whose sync failed again, an explicit operation does. A new retry value
/// changes the desired state, so the operation is written once per retry.
#[allow(clippy::too_many_arguments)]
pub fn desired_application(
    resource: &ApiResource,
    platform: &ArgoCdPlatform,
    settings: &ArgoCdSettings,
    planned: &PlannedApplication,
    namespace: &str,
    head_sha: &str,
    services: &[ServiceSpec],
    retry: Option<&str>,
) -> Result<DesiredObject, StrategyError> {
    let services: Vec<&ServiceSpec> = match &planned.service {
        Some(name) => services.iter().filter(|s| &s.name == name).collect(),
        None => services.iter().collect(),
    };
    let path = match &planned.service {
        Some(name) => settings.path.replace("{service}", name),
        None => settings.path.clone(),
    };
    let revision = settings
        .target_revision
        .clone()
        .unwrap_or_else(|| head_sha.to_string());
    let mut source = json!({
        "repoURL": settings.repo_url,
        "path": path,
        "targetRevision": revision,
    });
    match settings.tool {
        ArgoCdTool::Kustomize => {
            let images: Vec<String> = services
                .iter()
                .map(|s| format!("{}={}", split_image(&s.image).0, s.image))
                .collect();
            source["kustomize"] = json!({ "images": images });
        }
        ArgoCdTool::Helm => {
            let helm = settings.helm.clone().unwrap_or_default();
            let several = planned.service.is_none() && services.len() > 1;
            let mut parameters = Vec::new();
            for s in &services {
                let (repository, tag) = split_image(&s.image);
                for (template, value) in [
                    (&helm.image_repository_parameter, repository),
                    (&helm.image_tag_parameter, tag),
                ] {
                    if several && !template.contains("{service}") {
                        return Err(StrategyError {
                            reason: "ArgoCdSettingsInvalid".into(),
                            message: format!(
                                "spec.argocd.helm parameter {template:?} must contain {{service}}: one Application deploys {} services",
                                services.len()
                            ),
                        });
                    }
                    parameters.push(json!({
                        "name": template.replace("{service}", &s.name),
                        "value": value,
                        "forceString": true,
                    }));
                }
            }
            let mut helm_source = json!({ "parameters": parameters });
            if !helm.value_files.is_empty() {
                helm_source["valueFiles"] = json!(helm.value_files);
            }
            source["helm"] = helm_source;
        }
    }
    let mut object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {
            "name": planned.name,
            "namespace": platform.namespace,
            "finalizers": [ARGOCD_RESOURCES_FINALIZER],
        },
        "spec": {
            "project": project_name(namespace),
            "source": source,
            "destination": {
                "server": platform.destination_server,
                "namespace": namespace,
            },
            "syncPolicy": {
                "automated": {"prune": true, "selfHeal": true},
            },
        },
    });
    if let Some(retry) = retry {
        object["metadata"]["annotations"] = json!({ ANNOTATION_RETRY: retry });
        object["operation"] = json!({
            "sync": {"revision": revision, "prune": true},
            "initiatedBy": {"username": "previewd"},
            "info": [{"name": "Reason", "value": format!("previewd.io/retry {retry}")}],
        });
    }
    Ok(DesiredObject::from_value(resource.clone(), object))
}

/// Judges one Application from its status. `revision` is the commit it must be synced
/// at (`None` when the repository pins another revision, which Argo CD resolves itself).
pub fn application_health(name: &str, app: &Value, revision: Option<&str>) -> Health {
    let status = app.get("status").unwrap_or(&Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    if app.pointer("/metadata/deletionTimestamp").is_some() {
        return Health::Progressing(format!("Argo CD application {name}: being deleted"));
    }
    // An operation previewd requested (a retry) that Argo CD has not finished: the
    // status still describes the previous attempt.
    if app.get("operation").is_some_and(|o| !o.is_null()) {
        return Health::Progressing(format!("Argo CD application {name}: sync requested"));
    }
    for c in status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let type_ = text(c.get("type"));
        if ARGOCD_ERROR_CONDITIONS.contains(&type_.as_str()) {
            return Health::Failed(format!(
                "Argo CD application {name}: {type_}: {}",
                text(c.get("message"))
            ));
        }
    }
    let sync_status = text(status.pointer("/sync/status"));
    let synced_revision = text(status.pointer("/sync/revision"));
    let health = text(status.pointer("/health/status"));
    let health_message = text(status.pointer("/health/message"));
    let at_revision = revision.is_none_or(|r| r == synced_revision);
    let op = status.get("operationState");
    let op_phase = text(op.and_then(|o| o.get("phase")));
    let op_revision = op
        .and_then(|o| {
            o.pointer("/syncResult/revision")
                .or_else(|| o.pointer("/operation/sync/revision"))
        })
        .and_then(Value::as_str);
    let op_current = match (revision, op_revision) {
        (Some(want), Some(done)) => want == done,
        _ => true,
    };
    if op_current && matches!(op_phase.as_str(), "Failed" | "Error") {
        return Health::Failed(format!(
            "Argo CD application {name}: sync {}: {}",
            op_phase.to_lowercase(),
            text(op.and_then(|o| o.get("message")))
        ));
    }
    if at_revision && health == "Degraded" {
        let detail = if health_message.is_empty() {
            String::new()
        } else {
            format!(": {health_message}")
        };
        return Health::Failed(format!("Argo CD application {name}: Degraded{detail}"));
    }
    let op_done = op.is_none() || op_phase == "Succeeded" || !op_current;
    if sync_status == "Synced" && at_revision && health == "Healthy" && op_done {
        return Health::Available(format!("Argo CD application {name}: Synced, Healthy"));
    }
    let mut waiting = format!(
        "Argo CD application {name}: sync {}, health {}",
        or_unknown(&sync_status),
        or_unknown(&health)
    );
    if !at_revision {
        let short: String = revision.unwrap_or_default().chars().take(7).collect();
        waiting.push_str(&format!(", waiting for revision {short}"));
    }
    if !health_message.is_empty() {
        waiting.push_str(&format!(": {health_message}"));
    }
    Health::Progressing(waiting)
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "Unknown" } else { s }
}

impl ArgoCdStrategy {
    fn settings<'a>(&self, input: &RenderInput<'a>) -> Result<&'a ArgoCdSettings, StrategyError> {
        let repository = input.repository.ok_or_else(|| StrategyError {
            reason: "ArgoCdNotConfigured".into(),
            message: "deploy strategy argocd needs the environment's PreviewRepository \
                      (spec.repositoryRef), which was not found"
                .into(),
        })?;
        repository
            .spec
            .argocd
            .as_ref()
            .ok_or_else(|| StrategyError {
                reason: "ArgoCdNotConfigured".into(),
                message: format!(
                    "deploy strategy argocd needs spec.argocd in PreviewRepository {}",
                    repository.metadata.name.as_deref().unwrap_or_default()
                ),
            })
    }

    fn key(&self, name: &str) -> ChildKey {
        ChildKey {
            api_version: self.application.api_version.clone(),
            kind: self.application.kind.clone(),
            name: name.to_string(),
        }
    }
}

impl DeployStrategy for ArgoCdStrategy {
    fn name(&self) -> &str {
        "argocd"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        vec![
            WatchedKind {
                resource: self.application.clone(),
                full: true,
                optional: true,
            },
            WatchedKind {
                resource: self.project.clone(),
                full: false,
                optional: true,
            },
        ]
    }

    fn external_namespace(&self, _input: &RenderInput<'_>) -> Option<String> {
        Some(self.platform.namespace.clone())
    }

    fn external_teardown_rank(&self, key: &ChildKey) -> u8 {
        // An Application's finalizer asks Argo CD, which reads its project, to delete
        // what it deployed: the project goes once no Application is left.
        u8::from(key.kind == self.project.kind && key.api_version == self.project.api_version)
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        let settings = self.settings(input)?;
        if crate::plan::fork::is_fork(input.env) && !self.platform.allow_forks {
            return Err(StrategyError {
                reason: "ArgoCdForkRefused".into(),
                message: "pull requests from forks are not deployed through Argo CD: their manifests would run with Argo CD's rights, unreviewed (the platform may allow it with --argocd-allow-forks)".into(),
            });
        }
        if !source_allowed(
            &settings.repo_url,
            &input.env.spec.repository,
            &self.platform.source_repos,
        ) {
            return Err(StrategyError {
                reason: "ArgoCdSourceRefused".into(),
                message: format!(
                    "spec.argocd.repoURL {:?} is neither the claimed repository https://github.com/{} nor a source the platform allows (--argocd-source-repos)",
                    settings.repo_url, input.env.spec.repository
                ),
            });
        }
        let services = &input.env.spec.services;
        let mut objects = vec![desired_project(
            &self.project,
            &self.platform,
            input.namespace,
            &settings.repo_url,
        )];
        for planned in planned_applications(settings, input.namespace, services) {
            objects.push(desired_application(
                &self.application,
                &self.platform,
                settings,
                &planned,
                input.namespace,
                &input.env.spec.head_sha,
                services,
                input
                    .env
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_RETRY))
                    .map(String::as_str),
            )?);
        }
        Ok(objects)
    }

    fn health(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        applying: &BTreeSet<ChildKey>,
    ) -> Health {
        let Ok(settings) = self.settings(input) else {
            return Health::Progressing("waiting for the Argo CD settings".into());
        };
        let revision = settings
            .target_revision
            .is_none()
            .then_some(input.env.spec.head_sha.as_str());
        let planned = planned_applications(settings, input.namespace, &input.env.spec.services);
        let count = planned.len();
        let problems = planned.into_iter().map(|p| {
            let key = self.key(&p.name);
            if applying.contains(&key) {
                return Health::Progressing(format!("Argo CD application {}: applying", p.name));
            }
            match view.objects.get(&key) {
                None => {
                    Health::Progressing(format!("Argo CD application {}: being created", p.name))
                }
                Some(app) => {
                    let value = serde_json::to_value(app.as_ref()).unwrap_or_default();
                    application_health(&p.name, &value, revision)
                }
            }
        });
        combine(
            problems.collect::<Vec<_>>(),
            format!("{count} Argo CD application(s) Synced and Healthy"),
        )
    }
}

#[cfg(test)]
mod tests;
