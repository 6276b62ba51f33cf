//! The lifecycle of a preview environment as a pure state machine.
//!
//! The controller observes the world once per reconcile, turns what it saw into
//! [`Observation`]s and feeds them, in order, to [`transition`]. The function never
//! performs I/O; it only says which [`Phase`] comes next and why (a CamelCase machine
//! word used as condition reason and Event reason).
//!
//! # Transition table
//!
//! `=` means "stays in the same phase" (`Ok`, no change), `error` means the observation
//! cannot happen in that phase and [`transition`] returns a [`TransitionError`] (the
//! phase is kept; the controller reports the error as a Warning event).
//!
//! | observation \ phase         | Pending      | Provisioning | Ready       | Testing     | Complete    | Failed       | Terminating | Terminated |
//! |-----------------------------|--------------|--------------|-------------|-------------|-------------|--------------|-------------|------------|
//! | `NamespaceReady`            | Provisioning | =            | =           | =           | =           | =            | =           | =          |
//! | `ServicesProgressing`       | error        | =            | =           | =           | =           | =            | =           | =          |
//! | `ServicesAvailable`         | error        | Ready        | =           | =           | =           | =            | =           | =          |
//! | `ServiceFailed`             | Failed       | Failed       | Failed      | Failed      | Failed      | =            | =           | =          |
//! | `ReadinessDeadlineExceeded` | Failed       | Failed       | =           | =           | =           | =            | =           | =          |
//! | `TestsStarted`              | error        | error        | Testing     | =           | Testing     | error        | =           | =          |
//! | `TestsPassed`               | error        | error        | Complete    | Complete    | =           | error        | =           | =          |
//! | `TestsFailed`               | error        | error        | Failed      | Failed      | error       | =            | =           | =          |
//! | `SpecChanged`               | =            | Provisioning | Provisioning| Provisioning| Provisioning| Provisioning | =           | =          |
//! | `Expired`                   | Terminating  | Terminating  | Terminating | Terminating | Terminating | Terminating  | =           | =          |
//! | `DeletionRequested`         | Terminating  | Terminating  | Terminating | Terminating | Terminating | Terminating  | =           | =          |
//! | `CleanupFinished`           | error        | error        | error       | error       | error       | error        | Terminated  | =          |
//! | `ChecksPending`             | =            | Pending      | =           | =           | =           | =            | =           | =          |
//! | `ChecksFailed`              | Failed       | Failed       | Failed      | Failed      | Failed      | =            | =           | =          |
//! | `RetryRequested`            | =            | =            | =           | =           | =           | Provisioning | =           | =          |
//!
//! Decisions worth knowing:
//! - `Terminated` absorbs everything: every observation is an `Ok` no-op there, so a
//!   late or repeated event can never bring a torn-down environment back.
//! - `ReadinessDeadlineExceeded` only fails environments that have not become ready;
//!   once `Ready` the deadline was met and the observation is a no-op.
//! - `TestsPassed` / `TestsFailed` in `Ready` are accepted (a fast test Job may finish
//!   between two reconciles, so `TestsStarted` was never observed).
//! - A `Failed` environment recovers only through `SpecChanged` (a new push) or
//!   `RetryRequested` (the `previewd.io/retry` annotation); services becoming available
//!   again do not hide a failure.
//! - `ChecksPending` (required CI checks of the head commit not finished) holds a
//!   provisioning environment back in `Pending`; a serving one keeps serving its previous
//!   commit only until `SpecChanged` moved it to `Provisioning`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The phase of a preview environment, as written to `status.phase`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Phase {
    /// Accepted, nothing created yet (waiting for the namespace).
    #[default]
    Pending,
    /// Namespace ready, services being deployed.
    Provisioning,
    /// Every service is available; the environment serves traffic.
    Ready,
    /// The test Job is running against the environment.
    Testing,
    /// Tests passed; the environment keeps serving until it expires or is deleted.
    Complete,
    /// A service failed, readiness timed out or tests failed.
    Failed,
    /// Teardown in progress (finalizer running).
    Terminating,
    /// Everything is gone. No observation leaves this phase.
    Terminated,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Ready,
        Phase::Testing,
        Phase::Complete,
        Phase::Failed,
        Phase::Terminating,
        Phase::Terminated,
    ];

    /// The PascalCase name, as serialised.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Provisioning => "Provisioning",
            Phase::Ready => "Ready",
            Phase::Testing => "Testing",
            Phase::Complete => "Complete",
            Phase::Failed => "Failed",
            Phase::Terminating => "Terminating",
            Phase::Terminated => "Terminated",
        }
    }

    /// The environment exists (or is being built) and is not being torn down:
    /// `Pending`, `Provisioning`, `Ready`, `Testing`, `Complete`, `Failed`.
    /// Active environments count towards concurrency caps and budgets.
    pub const fn is_active(self) -> bool {
        !matches!(self, Phase::Terminating | Phase::Terminated)
    }

    /// Nothing can leave this phase: only `Terminated`.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Phase::Terminated)
    }

    /// The environment is settled and waits for an outside event (`Ready`, `Complete`,
    /// `Failed`): the controller needs no readiness polling.
    pub const fn is_settled(self) -> bool {
        matches!(self, Phase::Ready | Phase::Complete | Phase::Failed)
    }

    /// The environment serves traffic: `Ready`, `Testing` or `Complete`.
    pub const fn is_serving(self) -> bool {
        matches!(self, Phase::Ready | Phase::Testing | Phase::Complete)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Phase`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown phase {0:?} (expected one of Pending, Provisioning, Ready, Testing, Complete, Failed, Terminating, Terminated)"
)]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

/// What the controller observed during one reconcile.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Observation {
    /// The namespace and its guard rails (quota, limit range, network policy) exist.
    NamespaceReady,
    /// Services are rolling out and not all available yet.
    ServicesProgressing,
    /// Every service reports availability.
    ServicesAvailable,
    /// A service failed (crash loop, image pull error, failed rollout).
    ServiceFailed {
        /// Human-readable cause, shown in the condition message.
        reason: String,
    },
    /// Services did not become available before the readiness deadline.
    ReadinessDeadlineExceeded,
    /// The test Job started.
    TestsStarted,
    /// The test Job succeeded.
    TestsPassed,
    /// The test Job reported failures.
    TestsFailed {
        /// Number of failed tests.
        failed: u32,
    },
    /// The spec changed (new head SHA, new services): the environment is rebuilt.
    SpecChanged,
    /// The expiry time passed.
    Expired,
    /// The resource is being deleted (deletion timestamp set, PR closed).
    DeletionRequested,
    /// Cleanup finished: children are gone and external state is updated.
    CleanupFinished,
    /// Required CI checks of the head commit have not finished yet.
    ChecksPending,
    /// A required CI check of the head commit failed.
    ChecksFailed {
        /// Name of the failed check.
        check: String,
    },
    /// Somebody asked to retry a failed environment without a new push.
    RetryRequested,
}

impl Observation {
    /// The CamelCase machine word for this observation, used as the transition reason.
    pub const fn reason(&self) -> &'static str {
        match self {
            Observation::NamespaceReady => "NamespaceReady",
            Observation::ServicesProgressing => "ServicesProgressing",
            Observation::ServicesAvailable => "ServicesAvailable",
            Observation::ServiceFailed { .. } => "ServiceFailed",
            Observation::ReadinessDeadlineExceeded => "ReadinessDeadlineExceeded",
            Observation::TestsStarted => "TestsStarted",
            Observation::TestsPassed => "TestsPassed",
            Observation::TestsFailed { .. } => "TestsFailed",
            Observation::SpecChanged => "SpecChanged",
            Observation::Expired => "Expired",
            Observation::DeletionRequested => "DeletionRequested",
            Observation::CleanupFinished => "CleanupFinished",
            Observation::ChecksPending => "WaitingForChecks",
            Observation::ChecksFailed { .. } => "ChecksFailed",
            Observation::RetryRequested => "RetryRequested",
        }
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::ServiceFailed { reason } => write!(f, "ServiceFailed ({reason})"),
            Observation::TestsFailed { failed } => write!(f, "TestsFailed ({failed} failed)"),
            Observation::ChecksFailed { check } => write!(f, "ChecksFailed ({check})"),
            other => f.write_str(other.reason()),
        }
    }
}

/// The outcome of applying one observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The phase after the observation (may equal the current phase).
    pub next: Phase,
    /// CamelCase reason word (the observation's [`Observation::reason`]).
    pub reason: &'static str,
}

impl Transition {
    /// True when `next` differs from `from`, i.e. the controller should record the
    /// transition (condition change, Event).
    pub fn changes(&self, from: Phase) -> bool {
        self.next != from
    }
}

/// An observation that cannot happen in the current phase.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("observation {observation} does not apply in phase {phase}")]
pub struct TransitionError {
    /// The phase the environment was in.
    pub phase: Phase,
    /// The observation's reason word.
    pub observation: &'static str,
}

impl TransitionError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        "InvalidTransition"
    }
}

/// Applies one observation to a phase. See the module documentation for the table.
pub fn transition(phase: Phase, obs: &Observation) -> Result<Transition, TransitionError> {
    use Observation as O;
    use Phase as P;

    let reason = obs.reason();
    let go = |next: Phase| Ok(Transition { next, reason });
    let stay = || {
        Ok(Transition {
            next: phase,
            reason,
        })
    };
    let reject = || {
        Err(TransitionError {
            phase,
            observation: reason,
        })
    };

    if phase == P::Terminated {
        return stay();
    }
    if phase == P::Terminating {
        return match obs {
            O::CleanupFinished => go(P::Terminated),
            _ => stay(),
        };
    }

    // From here on the phase is active (Pending..=Failed).
    match obs {
        O::Expired | O::DeletionRequested => go(P::Terminating),
        O::CleanupFinished => reject(),
        O::SpecChanged => match phase {
            P::Pending => stay(),
            _ => go(P::Provisioning),
        },
        O::ServiceFailed { .. } | O::ChecksFailed { .. } => match phase {
            P::Failed => stay(),
            _ => go(P::Failed),
        },
        O::ChecksPending => match phase {
            P::Provisioning => go(P::Pending),
            _ => stay(),
        },
        O::RetryRequested => match phase {
            P::Failed => go(P::Provisioning),
            _ => stay(),
        },
        O::ReadinessDeadlineExceeded => match phase {
            P::Pending | P::Provisioning => go(P::Failed),
            _ => stay(),
        },
        O::NamespaceReady => match phase {
            P::Pending => go(P::Provisioning),
            _ => stay(),
        },
        O::ServicesProgressing => match phase {
            P::Pending => reject(),
            _ => stay(),
        },
        O::ServicesAvailable => match phase {
            P::Pending => reject(),
            P::Provisioning => go(P::Ready),
            _ => stay(),
        },
        O::TestsStarted => match phase {
            P::Ready | P::Complete => go(P::Testing),
            P::Testing => stay(),
            _ => reject(),
        },
        O::TestsPassed => match phase {
            P::Ready | P::Testing => go(P::Complete),
            P::Complete => stay(),
            _ => reject(),
        },
        O::TestsFailed { .. } => match phase {
            P::Ready | P::Testing => go(P::Failed),
            P::Failed => stay(),
            _ => reject(),
        },
    }
}

/// Applies observations in order, stopping at the first error.
pub fn transition_all<'a>(
    phase: Phase,
    observations: impl IntoIterator<Item = &'a Observation>,
) -> Result<Phase, TransitionError> {
    observations
        .into_iter()
        .try_fold(phase, |p, obs| transition(p, obs).map(|t| t.next))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serde_uses_pascal_case_strings() {
        for p in Phase::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
            assert_eq!(p.to_string().parse::<Phase>().unwrap(), p);
        }
        assert!("pending".parse::<Phase>().is_err());
        assert_eq!(Phase::default(), Phase::Pending);
    }

    #[test]
    fn happy_path() {
        let obs = [
            Observation::NamespaceReady,
            Observation::ServicesProgressing,
            Observation::ServicesAvailable,
            Observation::TestsStarted,
            Observation::TestsPassed,
        ];
        assert_eq!(
            transition_all(Phase::Pending, &obs).unwrap(),
            Phase::Complete
        );
    }

    #[test]
    fn reasons_are_the_observation_words() {
        let t = transition(Phase::Provisioning, &Observation::ReadinessDeadlineExceeded).unwrap();
        assert_eq!(t.next, Phase::Failed);
        assert_eq!(t.reason, "ReadinessDeadlineExceeded");
        let t = transition(
            Phase::Ready,
            &Observation::ServiceFailed {
                reason: "CrashLoopBackOff".into(),
            },
        )
        .unwrap();
        assert_eq!((t.next, t.reason), (Phase::Failed, "ServiceFailed"));
    }

    #[test]
    fn spec_change_rebuilds_settled_environments() {
        for p in [
            Phase::Provisioning,
            Phase::Ready,
            Phase::Testing,
            Phase::Complete,
            Phase::Failed,
        ] {
            let t = transition(p, &Observation::SpecChanged).unwrap();
            assert_eq!(t.next, Phase::Provisioning, "from {p}");
        }
        assert_eq!(
            transition(Phase::Terminating, &Observation::SpecChanged)
                .unwrap()
                .next,
            Phase::Terminating
        );
    }

    #[test]
    fn invalid_observations_are_typed_errors() {
        let err = transition(Phase::Pending, &Observation::TestsPassed).unwrap_err();
        assert_eq!(err.phase, Phase::Pending);
        assert_eq!(err.observation, "TestsPassed");
        assert_eq!(
            err.to_string(),
            "observation TestsPassed does not apply in phase Pending"
        );
        assert!(transition(Phase::Ready, &Observation::CleanupFinished).is_err());
        assert!(transition(Phase::Failed, &Observation::TestsStarted).is_err());
    }

    #[test]
    fn staying_is_reported_as_no_change() {
        let t = transition(Phase::Provisioning, &Observation::ServicesProgressing).unwrap();
        assert!(!t.changes(Phase::Provisioning));
        let t = transition(Phase::Provisioning, &Observation::ServicesAvailable).unwrap();
        assert!(t.changes(Phase::Provisioning));
    }

    #[test]
    fn checks_hold_back_fail_and_retries_recover() {
        let pending = transition(Phase::Provisioning, &Observation::ChecksPending).unwrap();
        assert_eq!(
            (pending.next, pending.reason),
            (Phase::Pending, "WaitingForChecks")
        );
        assert_eq!(
            transition(Phase::Ready, &Observation::ChecksPending)
                .unwrap()
                .next,
            Phase::Ready
        );
        let failed = Observation::ChecksFailed {
            check: "build".into(),
        };
        for p in [
            Phase::Pending,
            Phase::Provisioning,
            Phase::Ready,
            Phase::Complete,
        ] {
            let t = transition(p, &failed).unwrap();
            assert_eq!((t.next, t.reason), (Phase::Failed, "ChecksFailed"));
        }
        assert_eq!(failed.to_string(), "ChecksFailed (build)");
        let retry = transition(Phase::Failed, &Observation::RetryRequested).unwrap();
        assert_eq!(
            (retry.next, retry.reason),
            (Phase::Provisioning, "RetryRequested")
        );
        assert_eq!(
            transition(Phase::Ready, &Observation::RetryRequested)
                .unwrap()
                .next,
            Phase::Ready
        );
    }

    #[test]
    fn predicates() {
        assert!(Phase::Failed.is_active());
        assert!(!Phase::Terminating.is_active());
        assert!(Phase::Terminated.is_terminal());
        assert!(!Phase::Failed.is_terminal());
        assert!(Phase::Testing.is_serving());
        assert!(!Phase::Provisioning.is_settled());
    }
}
