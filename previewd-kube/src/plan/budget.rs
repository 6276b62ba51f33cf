//! Cost budgets: the verdict, and what the repository's policy does about it.
//!
//! - The **daily** limit is compared with the daily estimate of the environment as
//!   specified (its desired workloads and volumes, [`super::cost::projected_usage`]),
//!   not with what happens to run at this instant: a rollout's surge does not trip it,
//!   and an environment asleep for its budget stays asleep until the budget allows the
//!   environment awake.
//! - The **total** limit is compared with the spend to date.
//! - Before anything is created, an environment whose daily estimate exceeds the daily
//!   limit, or whose estimate over its TTL exceeds the total limit, is refused (stalled
//!   with reason `BudgetExceeded`), whatever the policy.
//!
//! Sleeping is the annotation [`ANNOTATION_SLEEP`] on the environment: the plan sets it
//! to [`SLEEP_FOR_BUDGET`] (over a sleep for another reason) and removes it once the
//! budget allows the environment again (a sleep for another reason is never undone
//! here). The lifecycle's sleep ([`super::sleep`]) does the rest: workloads at zero,
//! namespace, volumes and Services kept.

use std::time::Duration;

use kube::ResourceExt;
use previewd_core::{Budget, BudgetPolicy, BudgetVerdict, CostEstimate, Money};

use crate::crd::PreviewEnvironment;

/// Annotation on an environment that is asleep; the value says why.
pub use crate::crd::ANNOTATION_SLEEP;
/// Value of [`ANNOTATION_SLEEP`] when the budget put the environment to sleep.
pub const SLEEP_FOR_BUDGET: &str = super::sleep::SLEEP_REQUEST_BUDGET;
/// Reason of the `Stalled` condition of an environment refused for its budget.
pub const REASON_BUDGET_EXCEEDED: &str = "BudgetExceeded";

/// The limits and the policy of an environment, if it has a budget.
pub fn budget_of(env: &PreviewEnvironment) -> Option<(Budget, BudgetPolicy)> {
    let b = env.spec.cost_budget.as_ref()?;
    if b.daily.is_none() && b.total.is_none() {
        return None;
    }
    Some((
        Budget {
            daily: b.daily,
            total: b.total,
        },
        b.policy,
    ))
}

/// Why the environment is asleep, if it is.
pub fn sleep_annotation(env: &PreviewEnvironment) -> Option<&str> {
    env.annotations().get(ANNOTATION_SLEEP).map(String::as_str)
}

/// Why an environment that has nothing yet must not be created, if it must not.
pub fn refuse_creation(
    env: &PreviewEnvironment,
    projected: &CostEstimate,
    ttl: Duration,
) -> Option<String> {
    let (budget, _) = budget_of(env)?;
    if let Some(limit) = budget.daily
        && projected.daily > limit
    {
        return Some(format!(
            "not created: the estimated daily cost {} exceeds the daily budget of {limit}",
            projected.daily
        ));
    }
    let over_ttl = projected.accrued(ttl);
    if let Some(limit) = budget.total
        && over_ttl > limit
    {
        return Some(format!(
            "not created: the estimated cost over the TTL ({} at {}/h) exceeds the total budget of {limit}",
            over_ttl, projected.hourly
        ));
    }
    None
}

/// What the budget asks of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetAction {
    /// Nothing beyond the condition (within budget, or policy `warn`).
    Keep,
    /// Put the environment to sleep.
    Sleep,
    /// The budget allows the environment again: wake it.
    Wake,
    /// Delete the environment.
    Delete,
}

/// The verdict and what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetDecision {
    /// The verdict.
    pub verdict: BudgetVerdict,
    /// The policy.
    pub policy: BudgetPolicy,
    /// What to do.
    pub action: BudgetAction,
}

impl BudgetDecision {
    /// Message for the condition, the Event and the PR comment.
    pub fn message(&self) -> String {
        match (self.verdict.is_exceeded(), self.policy) {
            (false, _) => self.verdict.to_string(),
            (true, BudgetPolicy::Warn) => format!("{} (policy warn)", self.verdict),
            (true, BudgetPolicy::Sleep) => {
                format!("{}; asleep (policy sleep)", self.verdict)
            }
            (true, BudgetPolicy::Delete) => {
                format!("{}; deleting the environment (policy delete)", self.verdict)
            }
        }
    }
}

/// The verdict on the environment's daily estimate (as specified) and spend so far.
pub fn decide(
    env: &PreviewEnvironment,
    projected_daily: Money,
    spent: Money,
) -> Option<BudgetDecision> {
    let (budget, policy) = budget_of(env)?;
    let verdict = budget.evaluate(projected_daily, spent);
    let asleep_for_budget = sleep_annotation(env).is_some_and(super::sleep::is_budget_request);
    let action = match (verdict.is_exceeded(), policy) {
        (true, BudgetPolicy::Delete) => BudgetAction::Delete,
        (true, BudgetPolicy::Sleep) if !asleep_for_budget => BudgetAction::Sleep,
        (false, _) if asleep_for_budget => BudgetAction::Wake,
        _ => BudgetAction::Keep,
    };
    Some(BudgetDecision {
        verdict,
        policy,
        action,
    })
}
