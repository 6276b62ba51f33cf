//! A live environment's pass from start to end: the steps in order ([`super::admit`],
//! [`super::lifecycle`], [`super::render`], the budget, [`super::provision`]), then
//! what the pass tells people: conditions, Events, the report and when to look again.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use previewd_core::Phase;

use super::budget::{self, BudgetAction, BudgetDecision};
use super::lifecycle::{self, Lifecycle};
use super::pass::{Pass, Step};
use super::provision::{self, Rollout};
use super::render::{self, Target};
use super::sleep::{self, Asleep};
use super::{
    CHECKS_RECHECK, Plan, PlanInput, PlannedEvent, Report, admit, cost, expiry, is_true,
    reason_of_failure, truncate, until,
};
use kube::ResourceExt;

use crate::children::ingress::urls;
use crate::crd::{ANNOTATION_COMMAND_REPLY, condition};
use crate::strategy::NamespaceView;

/// Plans one pass over a live environment.
pub(super) fn plan_live(input: &PlanInput<'_>) -> Plan {
    let mut pass = Pass::start(input);
    match steps(&mut pass) {
        Ok(plan) | Err(plan) => *plan,
    }
}

fn steps(pass: &mut Pass<'_, '_>) -> Step<Box<Plan>> {
    let granted = admit::admit(pass)?;
    let mut lifecycle = lifecycle::lifecycle(pass);
    let target = render::target(pass, granted)?;
    let strategy = render::strategy(pass, &target)?;
    let rendered = render::render(pass, &lifecycle, &target, strategy.as_ref())?;

    // The budget: projected from what is about to be applied, live from what runs.
    let budget = budget_step(pass, &lifecycle, &target, &rendered)?;
    if let Some(reason) = budget.sleeping {
        let desired = if target.waiting_for_namespace {
            Vec::new()
        } else {
            rendered
                .base
                .into_iter()
                .chain(rendered.app.into_iter().map(sleep::asleep))
                .collect()
        };
        let mut plan = sleep::plan_asleep(
            pass,
            Asleep {
                reason,
                namespace: target.namespace,
                desired,
            },
        );
        budget_condition(pass, budget.decision.as_ref(), &mut plan);
        plan.status = pass.status.clone();
        if let Some(value) = budget.annotation {
            plan.annotate.insert(budget::ANNOTATION_SLEEP.into(), value);
        }
        return Ok(Box::new(plan));
    }

    let mut plan = pass.idle_plan();
    let rollout = provision::rollout(
        pass,
        &mut lifecycle,
        &target,
        strategy.as_ref(),
        rendered,
        &mut plan,
    )?;
    finish(
        pass,
        &lifecycle,
        &target,
        rollout,
        budget.decision,
        &mut plan,
    );
    if let Some(value) = budget.annotation {
        plan.annotate.insert(budget::ANNOTATION_SLEEP.into(), value);
    }
    Ok(Box::new(plan))
}

/// What the budget decided.
struct BudgetStep {
    decision: Option<BudgetDecision>,
    /// Why the environment sleeps (the lifecycle's reason, or the budget's).
    sleeping: Option<sleep::SleepReason>,
    /// The sleep annotation to set (`Some(Some)`) or withdraw (`Some(None)`).
    annotation: Option<Option<String>>,
}

fn budget_step(
    pass: &mut Pass<'_, '_>,
    lifecycle: &Lifecycle,
    target: &Target,
    rendered: &render::Rendered,
) -> Step<BudgetStep> {
    let input = pass.input;
    let env = input.env;
    let empty = NamespaceView::default();
    let view = input
        .observed
        .views
        .get(&target.namespace)
        .unwrap_or(&empty);
    let ns_meta = input.observed.namespaces.get(&target.namespace);
    let pricing = &input.config.pricing;
    let projected = cost::projected_usage(&rendered.app).estimate(pricing);
    let expected_lifespan = expiry::expiry_policy(env).ttl.as_duration();
    if ns_meta.is_none()
        && view.children.is_empty()
        && let Some(message) = budget::refuse_creation(env, &projected, expected_lifespan)
    {
        return Err(pass.stall(budget::REASON_BUDGET_EXCEEDED, &message));
    }
    let live = cost::live_usage(view).estimate(pricing);
    let (costs, spent_now) =
        cost::cost_status(pass.old.costs.as_ref(), &live, pass.created_at, input.now);
    pass.status.costs = Some(costs);
    let decision = budget::decide(env, projected.daily, spent_now);
    if let Some(d) = decision
        && d.action == BudgetAction::Delete
    {
        // The condition is recorded (the teardown's report shows it) before the
        // environment is deleted.
        let mut status_plan = pass.idle_plan();
        budget_condition(pass, Some(&d), &mut status_plan);
        let mut plan = pass.delete(
            Some(budget::REASON_BUDGET_EXCEEDED),
            PlannedEvent {
                warning: true,
                reason: d.verdict.reason().into(),
                note: d.message(),
            },
        );
        plan.status = pass.status.clone();
        return Err(plan);
    }
    // The budget's sleep is one of the lifecycle's reasons: it sets the sleep annotation
    // (asleep from this pass on) and withdraws it once the budget allows the environment
    // (awake from the next pass, rolled out like a push).
    let (sleeping, annotation) = match decision.map(|d| d.action) {
        Some(BudgetAction::Sleep) => (
            Some(sleep::SleepReason::Budget),
            Some(Some(budget::SLEEP_FOR_BUDGET.to_string())),
        ),
        Some(BudgetAction::Wake) => (lifecycle.sleeping, Some(None)),
        _ => (lifecycle.sleeping, None),
    };
    Ok(BudgetStep {
        decision,
        sleeping,
        annotation,
    })
}

/// Sets `BudgetExceeded` from the verdict, whatever the policy: a Warning Event and a
/// report once per crossing of the limit, a report when it is back within; removed when
/// the environment has no budget.
fn budget_condition(pass: &mut Pass<'_, '_>, decision: Option<&BudgetDecision>, plan: &mut Plan) {
    let Some(d) = decision else {
        pass.status
            .conditions
            .retain(|c| c.type_ != condition::BUDGET_EXCEEDED);
        return;
    };
    let exceeded = d.verdict.is_exceeded();
    let was_exceeded = is_true(&pass.old, condition::BUDGET_EXCEEDED);
    pass.set(
        condition::BUDGET_EXCEEDED,
        exceeded,
        d.verdict.reason(),
        &d.message(),
    );
    if exceeded && !was_exceeded {
        plan.events.push(PlannedEvent {
            warning: true,
            reason: d.verdict.reason().into(),
            note: d.message(),
        });
        plan.report = Some(Report::Changed);
    } else if !exceeded && was_exceeded {
        plan.report = Some(Report::Changed);
    }
}

/// Status, conditions, Events, the report and the requeue of a pass that rolled out.
fn finish(
    pass: &mut Pass<'_, '_>,
    lifecycle: &Lifecycle,
    target: &Target,
    rollout: Rollout,
    decision: Option<BudgetDecision>,
    plan: &mut Plan,
) {
    let input = pass.input;
    let env = input.env;
    let now = input.now;
    let phases = &lifecycle.phases;
    let next = phases.now;
    let Rollout {
        namespace_ready,
        services_deployed,
        message,
        tests_condition,
    } = rollout;
    let holding = lifecycle.holding;
    let status = &mut pass.status;

    if holding && next == Phase::Pending {
        // The readiness deadline starts when the checks passed.
        status.provisioning_since = None;
    } else if status.provisioning_since.is_none() {
        status.provisioning_since = Some(Time(now));
    }
    // Every phase crossed counts: an environment that goes from Provisioning through
    // Ready to Testing in one pass was Ready.
    if phases.crossed(Phase::Ready) {
        status.ready_at = Some(Time(now));
    }
    status.phase = Some(next);
    status.deployed_sha = Some(env.spec.head_sha.clone());
    status.observed_generation = env.metadata.generation;
    status.message = Some(message.clone());
    match (&target.host, target.ingress.enabled) {
        (Some(host), true) => {
            let (url, per_service) =
                urls(host, target.ingress.tls, &lifecycle.effective.spec.services);
            status.url = Some(url);
            status.urls = per_service;
        }
        _ => {
            status.url = None;
            status.urls.clear();
        }
    }

    // Conditions.
    let serving = next.is_serving();
    let failed = next == Phase::Failed;
    let waiting_for_checks = holding && next == Phase::Pending;
    let ns_name = &target.namespace;
    pass.set(
        condition::NAMESPACE_READY,
        namespace_ready,
        if namespace_ready {
            "NamespaceReady"
        } else {
            "NamespacePending"
        },
        &format!("namespace {ns_name}"),
    );
    pass.set(
        condition::SERVICES_DEPLOYED,
        services_deployed,
        if services_deployed {
            "ServicesAvailable"
        } else if failed {
            "ServicesFailed"
        } else if waiting_for_checks {
            "WaitingForChecks"
        } else {
            "ServicesProgressing"
        },
        &message,
    );
    if let Some((passed, reason, msg)) = &tests_condition {
        pass.set(condition::TESTS_COMPLETED, *passed, reason, msg);
    }
    let failure_reason = reason_of_failure(&pass.old, phases.reason);
    pass.set(
        condition::READY,
        serving,
        if serving {
            "Ready"
        } else if failed {
            failure_reason
        } else if waiting_for_checks {
            "WaitingForChecks"
        } else {
            "Provisioning"
        },
        &message,
    );
    let reconciling = !serving && !failed || next == Phase::Testing;
    pass.set(
        condition::RECONCILING,
        reconciling,
        if next == Phase::Testing {
            "Testing"
        } else if reconciling {
            "Provisioning"
        } else {
            "Settled"
        },
        if next == Phase::Testing {
            "running post-ready stages"
        } else if waiting_for_checks {
            "waiting for CI checks"
        } else if reconciling {
            "rolling out services"
        } else {
            ""
        },
    );
    pass.set(
        condition::STALLED,
        failed,
        if failed { failure_reason } else { "NotStalled" },
        if failed { message.as_str() } else { "" },
    );
    budget_condition(pass, decision.as_ref(), plan);

    if lifecycle.was_asleep {
        pass.set(condition::SLEEPING, false, "Awake", "woken by activity");
        plan.events.push(PlannedEvent {
            warning: false,
            reason: "Woken".into(),
            note: "workloads restored to their replicas".into(),
        });
    }
    if lifecycle_conditions(pass) {
        plan.report = Some(Report::Changed);
    }

    // One Event per phase crossed, in order; the first pass records its phase even when
    // it stays Pending.
    let mut from = phases.original;
    let mut entered = phases.entered.clone();
    if entered.is_empty() && pass.old.phase.is_none() {
        let reason = if waiting_for_checks {
            "WaitingForChecks"
        } else {
            phases.reason
        };
        entered.push((next, reason, message.clone()));
    }
    for (phase, reason, observed) in &entered {
        plan.entered.push(*phase);
        plan.events.push(if *phase == Phase::Failed {
            PlannedEvent {
                warning: true,
                reason: failure_reason.to_string(),
                note: message.clone(),
            }
        } else {
            let note = if *phase == next { &message } else { observed };
            PlannedEvent {
                warning: false,
                reason: reason.to_string(),
                note: format!("phase {from} -> {phase}: {note}"),
            }
        });
        plan.report = Some(Report::Changed);
        from = *phase;
    }

    // Look again at the earliest of expiry, the next poll while busy, the resync.
    let until_expiry = pass
        .expires_at
        .duration_since(now)
        .try_into()
        .unwrap_or(Duration::ZERO)
        + Duration::from_millis(5);
    let mut wait = input.config.resync_interval.min(until_expiry);
    for at in [
        expiry::warning_at(env, now, input.config.expiry_warning),
        sleep::idle_sleep_at(env, now, input.config.idle_sleep_after),
    ]
    .into_iter()
    .flatten()
    .filter(|at| *at > now)
    {
        wait = wait.min(until(now, at));
    }
    if waiting_for_checks {
        wait = wait.min(CHECKS_RECHECK);
    } else if matches!(next, Phase::Provisioning | Phase::Pending | Phase::Testing) {
        wait = wait.min(input.config.poll_interval);
    }
    plan.requeue_after = Some(wait);
    plan.status = pass.status.clone();
}

/// Sets the `ExpiringSoon` condition and records the answer to the last PR command;
/// true when the PR comment must be updated (warning started or ended, new answer).
pub(super) fn lifecycle_conditions(pass: &mut Pass<'_, '_>) -> bool {
    let input = pass.input;
    let env = input.env;
    let now = input.now;
    let expires_at = pass.expires_at;
    let mut changed = false;
    let warning =
        expiry::warning_at(env, now, input.config.expiry_warning).is_some_and(|at| now >= at);
    let was_warning = is_true(&pass.old, condition::EXPIRING_SOON);
    if warning
        || pass
            .old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::EXPIRING_SOON)
    {
        pass.set(
            condition::EXPIRING_SOON,
            warning,
            if warning { "ExpiryNear" } else { "Extended" },
            &if warning {
                format!(
                    "the environment will be deleted at {expires_at}; comment `/preview extend` to keep it"
                )
            } else {
                format!("expires at {expires_at}")
            },
        );
    }
    changed |= warning != was_warning;
    if let Some(reply) = env.annotations().get(ANNOTATION_COMMAND_REPLY) {
        let id = reply.split_once(' ').map_or(reply.as_str(), |(id, _)| id);
        let id = truncate(id, 32);
        if pass.old.answered_command.as_deref() != Some(id.as_str()) {
            changed = true;
        }
        pass.status.answered_command = Some(id);
    }
    changed
}
