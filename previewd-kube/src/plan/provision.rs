//! Step 5 of a live environment's pass: rolling the application out. Which waves may be
//! applied, whether the services are available, the phases the pass crosses (the
//! post-Ready stages included, [`super::stages`]), and what to apply and to prune.

use std::collections::{BTreeMap, BTreeSet};

use previewd_core::checks::Gate;
use previewd_core::{Observation, Phase};

use super::health::Health;
use super::lifecycle::Lifecycle;
use super::namespace::NamespaceMeta;
use super::object::{ChildKey, ChildRef, DesiredObject};
use super::pass::{Pass, Step};
use super::render::{Rendered, Target, secret_resource};
use super::{Plan, humanize, resource_of, stages};
use crate::strategy::{DeployStrategy, NamespaceView};

/// What rolling out found.
pub(super) struct Rollout {
    /// The namespace exists (not waiting for an earlier one to terminate).
    pub namespace_ready: bool,
    /// The services are available.
    pub services_deployed: bool,
    /// What the environment is doing, for people.
    pub message: String,
    /// The `TestsCompleted` condition: passed, reason, message.
    pub tests_condition: Option<(bool, &'static str, String)>,
}

/// Rolls the application out: fills `plan.apply` and `plan.delete`, moves the pass's
/// phases, and records copies of Secrets in the status.
pub(super) fn rollout(
    pass: &mut Pass<'_, '_>,
    lifecycle: &mut Lifecycle,
    target: &Target,
    strategy: &dyn DeployStrategy,
    rendered: Rendered,
    plan: &mut Plan,
) -> Step<Rollout> {
    let input = pass.input;
    let now = input.now;
    let ns_name = target.namespace.as_str();
    let waiting_for_namespace = target.waiting_for_namespace;
    let holding = lifecycle.holding;
    let empty = NamespaceView::default();
    let view = input.observed.views.get(ns_name).unwrap_or(&empty);
    let ns_meta = input.observed.namespaces.get(ns_name);
    let Rendered {
        base,
        copies,
        app,
        labels,
    } = rendered;

    let mut desired: Vec<DesiredObject> = Vec::new();
    // Objects of later waves that are not applied yet; still wanted (never pruned).
    let mut held: Vec<ChildKey> = Vec::new();
    if !waiting_for_namespace {
        desired.extend(base);
        // Waiting for (or failed by) CI: the application stays as it is (applied
        // objects are neither changed nor pruned).
        if holding {
            held = app.iter().map(DesiredObject::key).collect();
        } else {
            let (now_, later) = open_waves(app, strategy, view, ns_meta);
            desired.extend(now_);
            held = later;
        }
    }

    // Phase: namespace first, then services, then stages.
    let deadline = pass
        .status
        .provisioning_since
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now)
        .checked_add(
            jiff::SignedDuration::try_from(input.config.readiness_timeout).unwrap_or_default(),
        )
        .unwrap_or(jiff::Timestamp::MAX);
    let namespace_ready = !waiting_for_namespace;
    let render = target.render_input(&lifecycle.effective, input.config, now);
    let applying = needs_apply(&desired, view, ns_meta);
    let health = if waiting_for_namespace {
        Health::Progressing(format!(
            "waiting for the previous namespace {ns_name} to finish terminating"
        ))
    } else if holding {
        Health::Progressing(String::new())
    } else {
        strategy.health(&render, view, &applying)
    };
    let (observation, mut message, services_deployed) = match health {
        _ if !waiting_for_namespace && let Gate::Failed(check) = &lifecycle.gate => (
            Observation::ChecksFailed {
                check: check.clone(),
            },
            format!("build failed: {check}"),
            false,
        ),
        _ if !waiting_for_namespace && let Gate::Waiting(names) = &lifecycle.gate => (
            Observation::ChecksPending,
            format!("waiting for checks: {}", names.join(", ")),
            false,
        ),
        Health::Available(message) => (Observation::ServicesAvailable, message, true),
        Health::Failed(message) => (
            Observation::ServiceFailed {
                reason: message.clone(),
            },
            message,
            false,
        ),
        Health::Progressing(message) if now >= deadline && !waiting_for_namespace => (
            Observation::ReadinessDeadlineExceeded,
            format!(
                "services not available within {}: {message}",
                humanize(input.config.readiness_timeout)
            ),
            false,
        ),
        Health::Progressing(message) => (Observation::ServicesProgressing, message, false),
    };
    let phases = &mut lifecycle.phases;
    // While the CI gate holds, a Pending environment does not start provisioning: it
    // waits (or fails) where it is.
    if namespace_ready && !(holding && phases.now == Phase::Pending) {
        phases.observe(
            &Observation::NamespaceReady,
            &format!("namespace {ns_name} ready"),
        );
    }
    phases.observe(&observation, &message);

    // Stages run once the application serves.
    let stage_run = stages::run(
        pass,
        &render,
        view,
        ns_meta,
        &labels,
        services_deployed,
        &mut lifecycle.phases,
    )?;
    let tests_condition = match stage_run {
        Some(run) => {
            desired.extend(run.objects);
            if let Some(m) = run.failure_message {
                message = m;
            }
            Some(run.condition)
        }
        None => None,
    };

    // What to apply and to prune: everything desired is wanted; what differs is applied.
    let wanted: BTreeSet<ChildKey> = desired.iter().map(DesiredObject::key).chain(held).collect();
    let applying = needs_apply(&desired, view, ns_meta);
    desired.retain(|d| applying.contains(&d.key()));
    // Copies of Secrets are never read back (the operator may not read Secrets outside
    // the source namespace): the status records the source version of each copy, and a
    // copy is applied when that changes or the namespace is new.
    let mut copy_keys = BTreeSet::new();
    let mut dropped_copies = Vec::new();
    if !waiting_for_namespace {
        let fresh_namespace = ns_meta.is_none();
        let mut recorded = BTreeMap::new();
        for (copy, version) in copies {
            copy_keys.insert(copy.key());
            if fresh_namespace || pass.old.copied_secrets.get(&copy.name) != Some(&version) {
                desired.push(copy.clone().in_wave(i32::MIN));
            }
            recorded.insert(copy.name.clone(), version);
        }
        if !fresh_namespace {
            dropped_copies = pass
                .old
                .copied_secrets
                .keys()
                .filter(|name| !recorded.contains_key(*name))
                .map(|name| ChildRef {
                    resource: secret_resource(),
                    namespace: Some(ns_name.to_string()),
                    name: name.clone(),
                })
                .collect();
        }
        pass.status.copied_secrets = recorded;
    }
    // The namespace first, then by wave, keeping the strategy's order within a wave.
    desired.sort_by_key(|d| (d.resource.kind != "Namespace", d.wave));
    plan.apply = desired;
    if !waiting_for_namespace && !holding {
        plan.delete = view
            .children
            .iter()
            .filter(|(key, child)| {
                !wanted.contains(key) && !copy_keys.contains(key) && !child.deleting
            })
            .filter_map(|(key, _)| {
                let resource = resource_of(key, input)?;
                let namespace = match input.observed.external.get(key) {
                    Some(external) => external.namespace.clone(),
                    None => ns_name.to_string(),
                };
                Some(ChildRef {
                    resource,
                    namespace: Some(namespace),
                    name: key.name.clone(),
                })
            })
            .collect();
        plan.delete.extend(dropped_copies);
    }
    Ok(Rollout {
        namespace_ready,
        services_deployed,
        message,
        tests_condition,
    })
}

/// The application's objects that may be applied now: every wave up to and including
/// the first one that is not ready (an object of it differs from its live state, or the
/// strategy does not judge it ready), and the keys of the later waves held back.
fn open_waves(
    app: Vec<DesiredObject>,
    strategy: &dyn DeployStrategy,
    view: &NamespaceView,
    ns_meta: Option<&NamespaceMeta>,
) -> (Vec<DesiredObject>, Vec<ChildKey>) {
    let waves: BTreeSet<i32> = app.iter().map(|o| o.wave).collect();
    let first_unready = waves.into_iter().find(|w| {
        !app.iter().filter(|o| o.wave == *w).all(|o| {
            needs_apply(std::slice::from_ref(o), view, ns_meta).is_empty()
                && strategy.object_ready(o, view)
        })
    });
    match first_unready {
        None => (app, Vec::new()),
        Some(open) => {
            let (now, later): (Vec<_>, Vec<_>) = app.into_iter().partition(|o| o.wave <= open);
            (now, later.iter().map(DesiredObject::key).collect())
        }
    }
}

/// The keys whose desired state differs from what the caches hold: missing, applied with
/// another hash, being deleted, or edited by hand (fingerprint).
pub(super) fn needs_apply(
    desired: &[DesiredObject],
    view: &NamespaceView,
    ns_meta: Option<&NamespaceMeta>,
) -> BTreeSet<ChildKey> {
    desired
        .iter()
        .filter(|d| {
            if d.resource.kind == "Namespace" && d.namespace.is_none() {
                return ns_meta.is_none_or(|m| m.applied_hash.as_deref() != Some(d.hash.as_str()));
            }
            match view.children.get(&d.key()) {
                None => true,
                Some(live) => {
                    live.deleting
                        || live.applied_hash.as_deref() != Some(d.hash.as_str())
                        || (d.fingerprint.is_some()
                            && live.fingerprint.is_some()
                            && d.fingerprint != live.fingerprint)
                }
            }
        })
        .map(DesiredObject::key)
        .collect()
}
