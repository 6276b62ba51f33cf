//! Teardown of a deleted environment: its objects outside the namespace first (Argo CD
//! Applications, whose finalizers clean the namespace), then its workload controllers
//! and its namespace (only one it owns), then `Terminated` and the finalizer released.
//! An environment that no repository claim authorises is torn down all the same, but
//! reports nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::ApiResource;
use previewd_core::phase::transition;
use previewd_core::{Observation, Phase};

use super::conditions::set_condition;
use super::object::{ChildKey, ChildRef};
use super::{
    FinalizerAction, Plan, PlanInput, PlannedEvent, Report, TEARDOWN_POLL, TEARDOWN_WAIT, admit,
    humanize, is_workload_controller, namespace, resource_of,
};
use crate::crd::{FINALIZER, condition};

/// Teardown: Terminating until the namespace is gone, then Terminated and the finalizer
/// released.
pub(super) fn plan_teardown(input: &PlanInput<'_>) -> Plan {
    let env = input.env;
    let now = input.now;
    let old = env.status.clone().unwrap_or_default();
    let mut plan = Plan::idle(old.clone());
    if !env.finalizers().iter().any(|f| f == FINALIZER) {
        return plan;
    }
    let mut status = old.clone();
    let generation = env.metadata.generation;
    let phase = old.phase.unwrap_or(Phase::Pending);
    let terminating = transition(phase, &Observation::DeletionRequested)
        .map(|t| t.next)
        .unwrap_or(Phase::Terminating);
    status.phase = Some(terminating);
    if status.deleted_at.is_none() {
        status.deleted_at = Some(Time(now));
    }
    set_condition(
        &mut status.conditions,
        condition::READY,
        false,
        "Terminating",
        "environment is being deleted",
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        true,
        "Terminating",
        "deleting the namespace",
        generation,
        now,
    );
    if phase != Phase::Terminating && old != status {
        plan.entered.push(terminating);
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "Terminating".into(),
            note: "deleting the environment's namespace".into(),
        });
        if !admit::refused(input) {
            plan.report = Some(Report::Changed);
        }
    }

    // Objects outside the namespace (Argo CD Applications) go first, and are waited for:
    // their finalizers delete what they deployed into the namespace, which must still
    // exist then.
    if !input.observed.external.is_empty() {
        // In rounds: the lowest rank still present goes first.
        let rank = |key: &ChildKey| {
            input
                .strategies
                .iter()
                .map(|s| s.external_teardown_rank(key))
                .max()
                .unwrap_or(0)
        };
        let round = input.observed.external.keys().map(rank).min().unwrap_or(0);
        for (key, external) in &input.observed.external {
            if external.child.deleting || rank(key) > round {
                continue;
            }
            if let Some(resource) = resource_of(key, input) {
                plan.delete.push(ChildRef {
                    resource,
                    namespace: Some(external.namespace.clone()),
                    name: key.name.clone(),
                });
            }
        }
        let names: Vec<String> = input
            .observed
            .external
            .iter()
            .map(|(k, e)| format!("{} {}/{}", k.kind, e.namespace, k.name))
            .collect();
        let waited = status
            .deleted_at
            .as_ref()
            .map(|t| now.duration_since(t.0))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        let overdue = waited >= input.config.readiness_timeout;
        let message = if overdue {
            format!(
                "{} still not gone after {}; is its controller running? The namespace is deleted once they are",
                names.join(", "),
                humanize(input.config.readiness_timeout)
            )
        } else {
            format!("deleting {} before the namespace", names.join(", "))
        };
        set_condition(
            &mut status.conditions,
            condition::RECONCILING,
            true,
            "Terminating",
            &message,
            generation,
            now,
        );
        set_condition(
            &mut status.conditions,
            condition::STALLED,
            overdue,
            if overdue {
                "ExternalObjectsRemain"
            } else {
                "NotStalled"
            },
            if overdue { message.as_str() } else { "" },
            generation,
            now,
        );
        plan.status = status;
        // Looked at again when the wait becomes overdue, to say so on time.
        let until_overdue = input.config.readiness_timeout.saturating_sub(waited);
        plan.requeue_after = Some(if overdue {
            TEARDOWN_WAIT
        } else {
            TEARDOWN_WAIT.min(until_overdue.max(TEARDOWN_POLL))
        });
        return plan;
    }

    let ns_name = namespace::recorded_name(env).unwrap_or_else(|| namespace::primary_name(env));
    if let Some(ns) = input.observed.namespaces.get(&ns_name)
        && namespace::is_owned(env, &ns_name, ns)
    {
        if !ns.deleting {
            // Workload controllers first, in the same pass: the namespace controller
            // deletes Pods and ReplicaSets before Deployments, and until it reaches them
            // the Deployment and ReplicaSet controllers recreate what it deleted (refused
            // in a terminating namespace, retried, status rewritten): about 20 wasted
            // API requests per environment when 1000 close at once, and a slower
            // teardown for every namespace queued behind.
            if let Some(view) = input.observed.views.get(&ns_name) {
                for (key, child) in &view.children {
                    if child.deleting || !is_workload_controller(key) {
                        continue;
                    }
                    if let Some(resource) = resource_of(key, input) {
                        plan.delete.push(ChildRef {
                            resource,
                            namespace: Some(ns_name.clone()),
                            name: key.name.clone(),
                        });
                    }
                }
            }
            plan.delete.push(ChildRef {
                resource: ApiResource::erase::<Namespace>(&()),
                namespace: None,
                name: ns_name,
            });
        }
        plan.status = status;
        plan.requeue_after = Some(TEARDOWN_WAIT);
        return plan;
    }

    // Namespace gone (or never ours): Terminated, then release the finalizer.
    status.phase = Some(
        transition(terminating, &Observation::CleanupFinished)
            .map(|t| t.next)
            .unwrap_or(Phase::Terminated),
    );
    set_condition(
        &mut status.conditions,
        condition::RECONCILING,
        false,
        "Terminated",
        "namespace deleted",
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        condition::NAMESPACE_READY,
        false,
        "NamespaceDeleted",
        "namespace deleted",
        generation,
        now,
    );
    plan.status = status;
    plan.finalizer = FinalizerAction::Release;
    plan.report = (!admit::refused(input)).then_some(Report::Deleted);
    plan.entered.push(Phase::Terminated);
    plan.events.push(PlannedEvent {
        warning: false,
        reason: "Terminated".into(),
        note: format!("namespace {ns_name} deleted"),
    });
    plan
}
