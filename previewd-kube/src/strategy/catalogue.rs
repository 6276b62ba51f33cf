//! The catalogue strategy: one Deployment and one ClusterIP Service per service of the
//! environment, healthy when every Deployment has its replicas available.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};

use super::{DeployStrategy, NamespaceView, RenderInput, StrategyError, WatchedKind};
use crate::children::workload::{desired_deployment, desired_service};
use crate::plan::health::{Health, combine, service_problem};
use crate::plan::object::{ChildKey, DesiredObject};

/// A Deployment and a Service per catalogue service.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatalogueStrategy;

impl DeployStrategy for CatalogueStrategy {
    fn name(&self) -> &str {
        "catalogue"
    }

    fn watched_kinds(&self) -> Vec<WatchedKind> {
        // Deployments and Pods are always watched whole by the controller (readiness);
        // Services need only their metadata.
        vec![WatchedKind::metadata::<Service>()]
    }

    fn desired(&self, input: &RenderInput<'_>) -> Result<Vec<DesiredObject>, StrategyError> {
        let env = input.env;
        // `auto` was resolved against the advice by the planner (effective environment).
        let tier = env.spec.resources.tier.unwrap_or_default().resolve(None);
        let mut objects = Vec::with_capacity(env.spec.services.len() * 2);
        for svc in &env.spec.services {
            let deployment = desired_deployment(
                env,
                input.namespace,
                svc,
                tier,
                input.use_spot,
                &input.config.workload,
            );
            objects.push(DesiredObject::from_typed(&deployment).map_err(serialisation)?);
            let service = desired_service(env, input.namespace, svc);
            objects.push(DesiredObject::from_typed(&service).map_err(serialisation)?);
        }
        Ok(objects)
    }

    fn health(
        &self,
        input: &RenderInput<'_>,
        view: &NamespaceView,
        applying: &BTreeSet<ChildKey>,
    ) -> Health {
        let pods: Vec<&Pod> = view.pods.iter().map(AsRef::as_ref).collect();
        let services = &input.env.spec.services;
        let problems = services.iter().filter_map(|svc| {
            if applying.contains(&ChildKey::of::<Deployment>(&svc.name)) {
                return Some(Health::Progressing(format!(
                    "service {}: rolling out",
                    svc.name
                )));
            }
            service_problem(&svc.name, view.deployment(&svc.name), &pods)
        });
        combine(
            problems.collect::<Vec<_>>(),
            format!("{} service(s) available", services.len()),
        )
    }
}

fn serialisation(e: crate::plan::object::ObjectError) -> StrategyError {
    StrategyError {
        reason: "RenderFailed".into(),
        message: e.to_string(),
    }
}
