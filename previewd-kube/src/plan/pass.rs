//! One planning pass over a live environment: what it started from, what it has
//! decided so far, and the ways a pass ends early (a stall, a deletion).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::conditions::set_condition;
use super::{FinalizerAction, Plan, PlanInput, PlannedEvent, TEARDOWN_POLL, expiry};
use crate::crd::{FINALIZER, PreviewEnvironmentStatus, condition};

/// A step of the pass either goes on with its result or ends the pass with a plan.
pub(super) type Step<T> = Result<T, Box<Plan>>;

/// The state of one pass.
pub(super) struct Pass<'i, 'a> {
    /// What the planner was given.
    pub input: &'i PlanInput<'a>,
    /// The status as read.
    pub old: PreviewEnvironmentStatus,
    /// The status being built.
    pub status: PreviewEnvironmentStatus,
    /// Whether the finalizer must be added first.
    pub finalizer: FinalizerAction,
    /// When the environment counts as created.
    pub created_at: jiff::Timestamp,
    /// When it expires.
    pub expires_at: jiff::Timestamp,
}

impl<'i, 'a> Pass<'i, 'a> {
    /// Starts a pass: creation and expiry times recorded.
    pub fn start(input: &'i PlanInput<'a>) -> Pass<'i, 'a> {
        let env = input.env;
        let now = input.now;
        let old = env.status.clone().unwrap_or_default();
        let mut status = old.clone();
        let finalizer = if env.finalizers().iter().any(|f| f == FINALIZER) {
            FinalizerAction::Keep
        } else {
            FinalizerAction::Add
        };
        let created_at = expiry::created_at(env, now);
        status.created_at = Some(Time(created_at));
        let expires_at = expiry::expires_at(env, now);
        status.expires_at = Some(Time(expires_at));
        Pass {
            input,
            old,
            status,
            finalizer,
            created_at,
            expires_at,
        }
    }

    /// The environment's generation.
    pub fn generation(&self) -> Option<i64> {
        self.input.env.metadata.generation
    }

    /// Sets a condition on the status being built.
    pub fn set(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        let generation = self.generation();
        set_condition(
            &mut self.status.conditions,
            type_,
            value,
            reason,
            message,
            generation,
            self.input.now,
        );
    }

    /// An empty plan keeping the status as read, with the finalizer decision.
    pub fn idle_plan(&self) -> Plan {
        let mut plan = Plan::idle(self.old.clone());
        plan.finalizer = self.finalizer;
        plan
    }

    /// Ends the pass by deleting the environment (teardown follows through the
    /// finalizer), with one Event; nothing else is written.
    pub fn delete(&self, reason: Option<&'static str>, event: PlannedEvent) -> Box<Plan> {
        let mut plan = self.idle_plan();
        plan.delete_environment = true;
        plan.deletion_reason = reason;
        plan.events.push(event);
        plan.requeue_after = Some(TEARDOWN_POLL);
        Box::new(plan)
    }

    /// Ends the pass on a problem the environment cannot get past by waiting:
    /// `Stalled`, with the reason, and nothing written but the status.
    pub fn stall(&self, reason: &str, message: &str) -> Box<Plan> {
        let generation = self.generation();
        let now = self.input.now;
        let mut status = self.status.clone();
        status.observed_generation = generation;
        status.message = Some(message.to_string());
        if status.phase.is_none() {
            status.phase = Some(previewd_core::Phase::Pending);
        }
        for (type_, value) in [
            (condition::STALLED, true),
            (condition::READY, false),
            (condition::RECONCILING, false),
        ] {
            set_condition(
                &mut status.conditions,
                type_,
                value,
                reason,
                message,
                generation,
                now,
            );
        }
        let mut plan = Plan::idle(status.clone());
        plan.finalizer = self.finalizer;
        if status != self.old {
            plan.events.push(PlannedEvent {
                warning: true,
                reason: reason.to_string(),
                note: message.to_string(),
            });
        }
        plan.requeue_after = Some(self.input.config.resync_interval);
        Box::new(plan)
    }
}
