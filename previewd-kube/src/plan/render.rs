//! Step 3 of a live environment's pass: every object the environment needs. Its
//! namespace and guard rails, its Ingress on its claimed host, copies of the Secrets its
//! repository names (when their owners allow it), and the application its deploy
//! strategy renders, checked by what each object does ([`rules`]) and placed in the
//! environment's namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::ApiResource;

use super::host::{self, HostChoice};
use super::lifecycle::Lifecycle;
use super::namespace::{self, NamespaceChoice};
use super::object::{ChildKey, DesiredObject};
use super::pass::{Pass, Step};
use super::{PlannerConfig, expiry, fork, sleep};
use crate::children::httproute::{
    Routing, desired_httproutes, http_route_resource, one_label_below, service_backends,
};
use crate::children::ingress::desired_ingress;
use crate::children::namespace::{
    add_egress, desired_allow_policy, desired_default_deny, desired_limit_range, desired_namespace,
    desired_resource_quota,
};
use crate::children::waker::{
    WakerEndpoint, desired_waker_endpoints, desired_waker_service, ingress_to_waker, waker_backends,
};
use crate::crd::{IngressSpec, PreviewEnvironment, PreviewRepository};
use crate::strategy::rules::{self, RuleContext};
use crate::strategy::{DeployStrategy, RenderInput, StrategyError};

/// Where and from what the environment is rendered.
pub(super) struct Target {
    /// Its namespace.
    pub namespace: String,
    /// The namespace's previous incarnation is still terminating.
    pub waiting_for_namespace: bool,
    /// Its claimed host, when it has an Ingress.
    pub host: Option<String>,
    /// `spec.ingress`, defaulted.
    pub ingress: IngressSpec,
    /// The repository settings it is rendered from (without Secrets and egress for a
    /// fork's pull request).
    pub repository: Option<Arc<PreviewRepository>>,
    /// Workloads go to spot capacity.
    pub use_spot: bool,
}

impl Target {
    /// What plug-ins render from.
    pub fn render_input<'r>(
        &'r self,
        env: &'r PreviewEnvironment,
        config: &'r PlannerConfig,
        now: jiff::Timestamp,
    ) -> RenderInput<'r> {
        RenderInput {
            env,
            namespace: &self.namespace,
            config,
            use_spot: self.use_spot,
            host: self.host.as_deref(),
            repository: self.repository.as_deref(),
            now,
        }
    }
}

/// The rendered objects.
pub(super) struct Rendered {
    /// The namespace, its guard rails and the Ingress.
    pub base: Vec<DesiredObject>,
    /// Copies of the repository's Secrets, each with its source's version.
    pub copies: Vec<(DesiredObject, String)>,
    /// The application, scoped to the namespace (or the strategy's external one).
    pub app: Vec<DesiredObject>,
    /// The environment's labels.
    pub labels: BTreeMap<String, String>,
}

/// Chooses the namespace and the host, and the repository settings to render from.
pub(super) fn target(
    pass: &mut Pass<'_, '_>,
    granted: Option<Arc<PreviewRepository>>,
) -> Step<Target> {
    let input = pass.input;
    let env = input.env;
    let (namespace, waiting_for_namespace) =
        match namespace::choose(env, &input.observed.namespaces) {
            NamespaceChoice::Use(name) => (name, false),
            NamespaceChoice::WaitForTermination(name) => (name, true),
            NamespaceChoice::Conflict(message) => {
                return Err(pass.stall("NamespaceConflict", &message));
            }
        };
    pass.status.namespace = Some(namespace.clone());

    let ingress = env.spec.ingress.clone().unwrap_or_default();
    let host = if ingress.enabled {
        match host::choose(env, input.config, &input.observed.host_claims) {
            HostChoice::Use(host) => Some(host),
            HostChoice::Refused { reason, message } => {
                return Err(pass.stall(reason, &message));
            }
        }
    } else {
        None
    };
    if let Some(issuer) = ingress.cluster_issuer.as_deref()
        && ingress.enabled
        && ingress.tls
        && !input.config.allowed_cluster_issuers().contains(&issuer)
    {
        return Err(pass.stall(
            "ClusterIssuerNotAllowed",
            &format!(
                "cluster issuer {issuer:?} is not allowed (allowed: {})",
                input.config.allowed_cluster_issuers().join(", ")
            ),
        ));
    }
    if let (Some(host), Routing::HttpRoute(_)) = (host.as_deref(), &input.config.routing)
        && let Some(domain) = host::allowed_domain(host, input.config)
        && !one_label_below(host, domain)
    {
        return Err(pass.stall(
            "HostNotAllowed",
            &format!(
                "host {host:?} is more than one label below {domain}: the Gateway listener for *.{domain} and its wildcard certificate cover exactly one label"
            ),
        ));
    }
    pass.status.host = host.clone();

    // A fork's environment gets neither the repository's Secrets nor its egress rules.
    fork::record(env, granted.as_deref(), &mut pass.status, input.now);
    let repository = fork::restricted_repository(env, granted.as_deref())
        .map(Arc::new)
        .or(granted);
    let expected_lifespan = expiry::expiry_policy(env).ttl.as_duration();
    Ok(Target {
        namespace,
        waiting_for_namespace,
        host,
        ingress,
        repository,
        use_spot: previewd_core::tier::use_spot(expected_lifespan, env.spec.resources.use_spot),
    })
}

/// The deploy strategy: the environment's, else its repository's, else the default.
pub(super) fn strategy<'s>(
    pass: &Pass<'s, '_>,
    target: &Target,
) -> Step<&'s Arc<dyn DeployStrategy>> {
    let input = pass.input;
    let name = input
        .strategies
        .name_for(input.env, target.repository.as_deref());
    input.strategies.get(name).ok_or_else(|| {
        pass.stall(
            "UnknownStrategy",
            &format!(
                "deploy strategy {name:?} is not available in this operator (available: {})",
                input.strategies.names().join(", ")
            ),
        )
    })
}

/// Renders every object of the environment.
pub(super) fn render(
    pass: &Pass<'_, '_>,
    lifecycle: &Lifecycle,
    target: &Target,
    strategy: &dyn DeployStrategy,
) -> Step<Rendered> {
    let input = pass.input;
    let env = input.env;
    let render = target.render_input(&lifecycle.effective, input.config, input.now);
    let stall = |e: StrategyError| pass.stall(&e.reason, &e.message);

    if target.host.is_some()
        && matches!(input.config.routing, Routing::HttpRoute(_))
        && input
            .observed
            .missing_kinds
            .contains(&super::object::kind_key(
                &http_route_resource().api_version,
                "HTTPRoute",
            ))
    {
        return Err(pass.stall(
            "GatewayApiUnavailable",
            "the operator routes with Gateway API HTTPRoutes (--route-kind httproute), which this cluster does not serve; install the Gateway API CRDs (the operator notices within 30 s)",
        ));
    }
    let waker = sleep::route_to_waker(input.config, lifecycle.sleeping.is_some(), &pass.old);
    let base = base_objects(&render, &target.ingress, waker).map_err(stall)?;
    let copies = secret_copies(&render, &input.observed.source_secrets).map_err(stall)?;
    let labels = crate::children::common_labels(env);
    let external_namespace = strategy.external_namespace(&render);
    let mut objects = strategy.desired(&render).map_err(stall)?;
    confine(&mut objects, &render, external_namespace.as_deref()).map_err(stall)?;
    let mut app = scoped_app(
        objects,
        &target.namespace,
        external_namespace.as_deref(),
        env,
        &labels,
    )
    .map_err(stall)?;
    // A strategy whose kinds this cluster does not serve (Argo CD not installed) cannot
    // work: say so at once instead of waiting for the readiness deadline.
    if let Some(kind) = strategy.watched_kinds().into_iter().find(|k| {
        k.optional
            && input
                .observed
                .missing_kinds
                .contains(&super::object::kind_key(
                    &k.resource.api_version,
                    &k.resource.kind,
                ))
    }) {
        return Err(pass.stall(
            "StrategyUnavailable",
            &format!(
                "deploy strategy {} needs {} {} ({}), which this cluster does not serve; install its CRDs (the operator notices within 30 s)",
                strategy.name(),
                kind.resource.kind,
                kind.resource.api_version,
                kind.resource.plural
            ),
        ));
    }
    if let Some(token) = &lifecycle.restart_token {
        app = app
            .into_iter()
            .map(|o| sleep::restarted(o, token))
            .collect();
    }
    if let Some(key) = first_duplicate(base.iter().chain(app.iter())) {
        return Err(pass.stall(
            "DuplicateObject",
            &format!(
                "{key} is rendered twice (the application names an object previewd creates itself)"
            ),
        ));
    }
    Ok(Rendered {
        base,
        copies,
        app,
        labels,
    })
}

/// Checks objects a plug-in rendered into the environment's namespace by what they do
/// ([`rules::confine`]); objects for the strategy's external namespace (Argo CD's
/// Applications) are the strategy's own and confined there.
pub(super) fn confine(
    objects: &mut Vec<DesiredObject>,
    render: &RenderInput<'_>,
    external: Option<&str>,
) -> Result<(), StrategyError> {
    let (mut outside, mut inside): (Vec<DesiredObject>, Vec<DesiredObject>) =
        std::mem::take(objects)
            .into_iter()
            .partition(|o| external.is_some() && o.namespace.as_deref() == external);
    let result = rules::confine(
        &mut inside,
        &RuleContext {
            rules: &render.config.template_rules,
            host: render.host,
        },
    );
    objects.append(&mut inside);
    objects.append(&mut outside);
    result
}

/// Places every object of a plug-in in the environment's namespace with the
/// environment's labels; an object naming another namespace stalls the environment.
pub(super) fn scoped(
    objects: Vec<DesiredObject>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<DesiredObject>, StrategyError> {
    objects
        .iter()
        .map(|o| {
            o.scoped_to(namespace, labels)
                .map_err(|message| StrategyError {
                    reason: "ForeignNamespace".into(),
                    message,
                })
        })
        .collect()
}

/// The first key rendered twice, if any.
fn first_duplicate<'a>(objects: impl Iterator<Item = &'a DesiredObject>) -> Option<ChildKey> {
    let mut seen = std::collections::BTreeSet::new();
    objects
        .map(DesiredObject::key)
        .find(|k| !seen.insert(k.clone()))
}

/// [`scoped`] for a strategy's objects, which may also go to its external namespace
/// (never a preview namespace), marked with the environment's UID.
fn scoped_app(
    objects: Vec<DesiredObject>,
    namespace: &str,
    external: Option<&str>,
    env: &PreviewEnvironment,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<DesiredObject>, StrategyError> {
    let external = external.filter(|ext| {
        *ext != namespace && !ext.starts_with(namespace::NAMESPACE_PREFIX) && !ext.is_empty()
    });
    let (outside, inside): (Vec<DesiredObject>, Vec<DesiredObject>) = objects
        .into_iter()
        .partition(|o| external.is_some() && o.namespace.as_deref() == external);
    let mut scoped_objects = scoped(inside, namespace, labels)?;
    if !outside.is_empty() {
        let uid = env.uid().ok_or_else(|| StrategyError {
            reason: "RenderFailed".into(),
            message: "the environment has no UID yet".into(),
        })?;
        scoped_objects.extend(
            outside
                .iter()
                .map(|o| o.marked_external(labels, namespace::ANNOTATION_OWNER_UID, &uid)),
        );
    }
    Ok(scoped_objects)
}

/// The copies of the Secrets the repository names, each with the version of its source.
/// A source must be labelled for copying and its owner must allow the environment's
/// repository and namespace ([`crate::children::secrets::may_receive`]).
fn secret_copies(
    render: &RenderInput<'_>,
    sources: &BTreeMap<String, Arc<Secret>>,
) -> Result<Vec<(DesiredObject, String)>, StrategyError> {
    use crate::children::secrets::{
        LABEL_PREVIEW_SECRET, copyable, desired_secret_copy, may_receive, source_version,
    };
    let Some(repository) = render.repository.filter(|r| !r.spec.secrets.is_empty()) else {
        return Ok(Vec::new());
    };
    let Some(source_ns) = render.config.secret_namespace.as_deref() else {
        return Err(StrategyError {
            reason: "SecretsNotConfigured".into(),
            message: "the repository names Secrets to copy, but the operator has no secret source namespace (--secret-namespace)".into(),
        });
    };
    let env_namespace = render.env.namespace().unwrap_or_default();
    let mut copies = Vec::with_capacity(repository.spec.secrets.len());
    for reference in &repository.spec.secrets {
        let Some(source) = sources.get(&reference.name).filter(|s| copyable(s)) else {
            return Err(StrategyError {
                reason: "SecretNotFound".into(),
                message: format!(
                    "Secret {} not found in namespace {source_ns}, or not labelled {LABEL_PREVIEW_SECRET}=true",
                    reference.name
                ),
            });
        };
        may_receive(source, &render.env.spec.repository, &env_namespace).map_err(|message| {
            StrategyError {
                reason: "SecretNotAllowed".into(),
                message,
            }
        })?;
        let copy = desired_secret_copy(render.env, render.namespace, source);
        let object = DesiredObject::from_typed(&copy).map_err(|e| StrategyError {
            reason: "RenderFailed".into(),
            message: e.to_string(),
        })?;
        copies.push((object, source_version(source)));
    }
    Ok(copies)
}

/// Every object a live environment needs in `namespace`, exposed at `host`, deployed by
/// `strategy`: the namespace and its guard rails, the Ingress (or HTTPRoutes) and the
/// application, placed and checked as the planner places and checks them, without the
/// decisions around them (phases, waves, hashes of what is live). The scale scenario's
/// floor applies exactly these objects with no operator, so that what previewd adds is
/// measured against the same shapes.
pub fn desired_objects(
    env: &PreviewEnvironment,
    namespace: &str,
    host: Option<&str>,
    config: &PlannerConfig,
    strategy: &dyn DeployStrategy,
    repository: Option<&PreviewRepository>,
    now: jiff::Timestamp,
) -> Result<Vec<DesiredObject>, StrategyError> {
    let expected_lifespan = expiry::expiry_policy(env).ttl.as_duration();
    let render = RenderInput {
        env,
        namespace,
        config,
        use_spot: previewd_core::tier::use_spot(expected_lifespan, env.spec.resources.use_spot),
        host,
        repository,
        now,
    };
    let ingress = env.spec.ingress.clone().unwrap_or_default();
    // Awake: the route goes to the application, not the waker.
    let mut objects = base_objects(&render, &ingress, None)?;
    let labels = crate::children::common_labels(env);
    let external_namespace = strategy.external_namespace(&render);
    let mut app = strategy.desired(&render)?;
    confine(&mut app, &render, external_namespace.as_deref())?;
    objects.extend(scoped_app(
        app,
        namespace,
        external_namespace.as_deref(),
        env,
        &labels,
    )?);
    Ok(objects)
}

/// The namespace, its guard rails and the Ingress (or the HTTPRoutes); with `waker`, the
/// route sends every path to the waker's Service, which comes with them
/// ([`crate::children::waker`]).
fn base_objects(
    render: &RenderInput<'_>,
    ingress: &IngressSpec,
    waker: Option<&WakerEndpoint>,
) -> Result<Vec<DesiredObject>, StrategyError> {
    let env = render.env;
    let ns = render.namespace;
    let cfg = render.config;
    let mut namespace = desired_namespace(env, ns, &cfg.guard);
    if let Some(uid) = env.uid() {
        namespace
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(namespace::ANNOTATION_OWNER_UID.to_string(), uid);
    }
    let err = |e: super::object::ObjectError| StrategyError {
        reason: "RenderFailed".into(),
        message: e.to_string(),
    };
    let mut allow = desired_allow_policy(env, ns, &cfg.guard);
    if let Some(repository) = render.repository {
        add_egress(&mut allow, &repository.spec.egress).map_err(|message| StrategyError {
            reason: "EgressInvalid".into(),
            message,
        })?;
    }
    let mut objects = vec![
        DesiredObject::from_typed(&namespace).map_err(err)?,
        DesiredObject::from_typed(&desired_resource_quota(env, ns, &cfg.guard)).map_err(err)?,
        DesiredObject::from_typed(&desired_limit_range(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&desired_default_deny(env, ns)).map_err(err)?,
        DesiredObject::from_typed(&allow).map_err(err)?,
    ];
    if ingress.enabled
        && let Some(host) = render.host
        && let Routing::HttpRoute(gateway) = &cfg.routing
    {
        let backends = match waker {
            Some(_) => waker_backends(env),
            None => service_backends(env),
        };
        for route in desired_httproutes(env, ns, host, gateway, &backends) {
            objects.push(DesiredObject::from_value(http_route_resource(), route));
        }
    } else if ingress.enabled
        && let Some(host) = render.host
    {
        let issuer = ingress
            .cluster_issuer
            .clone()
            .unwrap_or_else(|| cfg.cert_issuer.clone());
        let ing = desired_ingress(
            env,
            ns,
            host,
            ingress.tls,
            ingress.class_name.as_deref(),
            &issuer,
        );
        let ing = match waker {
            Some(_) => ingress_to_waker(ing),
            None => ing,
        };
        objects.push(DesiredObject::from_typed(&ing).map_err(err)?);
    }
    if let (Some(waker), Some(_), true) = (waker, render.host, ingress.enabled) {
        objects.push(DesiredObject::from_typed(&desired_waker_service(env, ns)).map_err(err)?);
        objects.push(
            DesiredObject::from_typed(&desired_waker_endpoints(env, ns, waker)).map_err(err)?,
        );
    }
    Ok(objects)
}

/// The API resource of Secrets (copies are pruned by key).
pub(super) fn secret_resource() -> ApiResource {
    ApiResource::erase::<Secret>(&())
}
