//! Step 2 of a live environment's pass: where it stands in its lifecycle before its
//! objects are looked at. Asleep or awake; a redeploy or retry request; a new head
//! commit or spec, which rolls the services again; the CI gate; the advice for the head
//! commit (which services, which tests, the AI engine's decisions).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use previewd_core::checks::Gate;
use previewd_core::phase::transition;
use previewd_core::{Observation, Phase};

use super::pass::Pass;
use super::sleep::{self, SleepReason};
use super::{checks_gate, effective_environment, is_true, ready_reason, truncate};
use crate::crd::{ANNOTATION_REDEPLOY, ANNOTATION_RETRY, PreviewEnvironment, condition};

/// The phases one pass moves through, in order: every phase crossed counts as entered
/// (its timestamp, its metric, its Event), even when the pass ends in a later one.
#[derive(Clone, Debug)]
pub(super) struct Phases {
    /// The phase read from the status.
    pub original: Phase,
    /// The phase reached so far.
    pub now: Phase,
    /// The reason of the last transition (or why the pass started where it did).
    pub reason: &'static str,
    /// Each phase entered: the phase, the transition's reason and what was observed.
    pub entered: Vec<(Phase, &'static str, String)>,
}

impl Phases {
    fn new(original: Phase) -> Phases {
        Phases {
            original,
            now: original,
            reason: "Pending",
            entered: Vec::new(),
        }
    }

    /// Applies an observation; a transition to another phase is recorded as entered.
    pub fn observe(&mut self, observation: &Observation, message: &str) {
        if let Ok(t) = transition(self.now, observation) {
            if t.next != self.now {
                self.reason = t.reason;
                self.entered.push((t.next, t.reason, message.to_string()));
            }
            self.now = t.next;
        }
    }

    /// Whether the pass crossed `phase`.
    pub fn crossed(&self, phase: Phase) -> bool {
        self.entered.iter().any(|(p, _, _)| *p == phase)
    }
}

/// Where the environment stands.
pub(super) struct Lifecycle {
    /// Why it sleeps, if it does (before the budget's verdict).
    pub sleeping: Option<SleepReason>,
    /// It was asleep when read.
    pub was_asleep: bool,
    /// The redeploy and retry requests, as one token: a new token restarts the pods.
    pub restart_token: Option<String>,
    /// The phases of this pass so far.
    pub phases: Phases,
    /// The CI gate on the head commit.
    pub gate: Gate,
    /// The application is held as it is (waiting for, or failed by, CI).
    pub holding: bool,
    /// The environment as deployed ([`effective_environment`]).
    pub effective: PreviewEnvironment,
}

/// The redeploy and retry requests, as one token: a new token restarts the workloads.
pub(super) fn restart_token(env: &PreviewEnvironment) -> Option<String> {
    let annotations = env.annotations();
    let redeploy = annotations
        .get(ANNOTATION_REDEPLOY)
        .map(|v| truncate(v, 32));
    let retry = annotations.get(ANNOTATION_RETRY).map(|v| truncate(v, 32));
    match (redeploy, retry) {
        (None, None) => None,
        (a, b) => Some(format!(
            "{}/{}",
            a.unwrap_or_default(),
            b.unwrap_or_default()
        )),
    }
}

/// Works out where the environment stands and records it in the pass's status.
pub(super) fn lifecycle(pass: &mut Pass<'_, '_>) -> Lifecycle {
    let input = pass.input;
    let env = input.env;
    let now = input.now;
    let old = &pass.old;
    let sleeping = sleep::sleep_reason(
        env,
        now,
        input.config.idle_sleep_after,
        // The budget's verdict needs the rendered application and the live usage; it is
        // applied later, and a budget sleep already decided is the annotation.
        false,
    );
    let was_asleep = is_true(old, condition::SLEEPING);
    let woke = was_asleep && sleeping.is_none();
    let restart_token = restart_token(env);
    // A new redeploy token rolls the environment out again; a new retry token alone is the
    // retry below (a Failed environment gets a fresh deadline; a healthy one only restarts
    // its pods).
    let redeploy_part = |token: Option<&str>| {
        token
            .map(|t| t.split_once('/').map_or(t, |p| p.0).to_string())
            .filter(|p| !p.is_empty())
    };
    let restart_requested = restart_token.is_some()
        && restart_token != old.restarted_for
        && redeploy_part(restart_token.as_deref()) != redeploy_part(old.restarted_for.as_deref());
    pass.status.restarted_for = restart_token.clone();

    // A new head commit or spec rolls the services again; so do waking, redeploy and retry.
    let mut phases = Phases::new(old.phase.unwrap_or(Phase::Pending));
    let generation = env.metadata.generation;
    let spec_changed = old.observed_generation.is_some()
        && (old.observed_generation != generation
            || old.deployed_sha.as_deref() != Some(env.spec.head_sha.as_str()));
    if (spec_changed || woke || restart_requested)
        && sleeping.is_none()
        && phases.now != Phase::Pending
        && transition(phases.now, &Observation::SpecChanged).is_ok()
    {
        phases.observe(&Observation::SpecChanged, "rolling out the new head commit");
        pass.status.provisioning_since = Some(Time(now));
        pass.status.ready_at = None;
    }
    // Results belong to the commit they were found for; the stages record them again.
    let head = Some(env.spec.head_sha.as_str());
    if pass.status.tests.as_ref().and_then(|t| t.sha.as_deref()) != head {
        pass.status.tests = None;
    }
    if pass
        .status
        .test_data
        .as_ref()
        .and_then(|t| t.sha.as_deref())
        != head
    {
        pass.status.test_data = None;
    }

    // Required CI checks of the head commit, and retries: a new value of the retry
    // annotation moves a Failed environment back to Provisioning once; so does a failed
    // check that is no longer failed (re-run on GitHub).
    let gate = checks_gate(env, input.observed.polled_checks.as_ref());
    let retry = env.annotations().get(ANNOTATION_RETRY).cloned();
    let failed_by_checks =
        phases.original == Phase::Failed && ready_reason(old) == Some("ChecksFailed");
    let retried = (retry.is_some() && retry != old.retry)
        || (failed_by_checks && !matches!(gate, Gate::Failed(_)));
    if phases.now == Phase::Failed
        && retried
        && transition(phases.now, &Observation::RetryRequested).is_ok()
    {
        phases.observe(&Observation::RetryRequested, "retry requested");
        pass.status.provisioning_since = Some(Time(now));
        pass.status.ready_at = None;
    }
    pass.status.retry = retry;
    let holding = !matches!(gate, Gate::Open);

    // Advice once per head commit: which services, what the AI engine decided.
    if let Some(advice) = &input.observed.advice
        && pass.status.advised_sha.as_deref() != Some(env.spec.head_sha.as_str())
    {
        let status = &mut pass.status;
        status.ai =
            (advice.status != crate::crd::AiStatus::default()).then(|| advice.status.clone());
        status.selected_services = advice.services.clone();
        status.test_selection = crate::strategy::testrun::recorded_selection(env, advice);
        status.advised_sha = Some(env.spec.head_sha.clone());
    }
    let effective = effective_environment(env, &pass.status);
    Lifecycle {
        sleeping,
        was_asleep,
        restart_token,
        phases,
        gate,
        holding,
        effective,
    }
}
