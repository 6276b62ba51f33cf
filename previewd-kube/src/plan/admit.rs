//! Step 1 of a live environment's pass: what decides before anything is rendered.
//! Expiry and a delete request delete it; an environment no repository claim
//! authorises, or whose spec the schema could not check, is stalled.

use std::sync::Arc;

use kube::ResourceExt;

use super::pass::{Pass, Step};
use super::{FinalizerAction, PlanInput, PlannedEvent, expiry, truncate};
use crate::crd::{ANNOTATION_DELETE_REQUESTED, PreviewRepository};
use crate::tenancy::{self, Grant, Refusal, Subject};

/// The authorisation of the environment: whether it may act for `spec.repository`, and
/// with which repository settings ([`tenancy::authorise`]).
pub(super) fn authorisation(input: &PlanInput<'_>) -> Result<Grant, Refusal> {
    super::authorisation(input.env, input.observed, input.config)
}

/// Whether no claim authorises the environment.
pub(super) fn refused(input: &PlanInput<'_>) -> bool {
    if input.env.metadata.deletion_timestamp.is_some() {
        return refused_at_teardown(input);
    }
    authorisation(input).is_err()
}

/// Whether the last reports of a deleted environment (Terminating, deleted) must not be
/// sent: its namespace may not claim the repository, or another namespace holds the
/// claim. The `PreviewRepository` it was rendered from may be gone by then (a team
/// removing its settings tears its environments down), and the settings are not used
/// any more, so it is not required.
fn refused_at_teardown(input: &PlanInput<'_>) -> bool {
    let env = input.env;
    let namespace = env.namespace().unwrap_or_default();
    tenancy::authorise(
        Subject {
            namespace: &namespace,
            repository: &env.spec.repository,
            repository_ref: None,
        },
        &input.observed.repositories,
        &input.config.claim_policy,
    )
    .is_err()
}

/// Expiry, a delete request, the authorisation and the spec checks. Returns the
/// repository settings the environment is rendered from.
pub(super) fn admit(pass: &mut Pass<'_, '_>) -> Step<Option<Arc<PreviewRepository>>> {
    let env = pass.input.env;
    let now = pass.input.now;

    // Expiry first: an expired environment is deleted, whatever else is going on.
    if now >= pass.expires_at {
        return Err(pass.delete(
            Some("TTLExpired"),
            PlannedEvent {
                warning: false,
                reason: "TTLExpired".into(),
                note: format!("environment expired at {}; deleting", pass.expires_at),
            },
        ));
    }

    // `/preview delete`: deleted like an expired environment.
    if let Some(comment) = env.annotations().get(ANNOTATION_DELETE_REQUESTED) {
        return Err(pass.delete(
            None,
            PlannedEvent {
                warning: false,
                reason: "DeleteRequested".into(),
                note: format!(
                    "deletion requested by PR comment {}; deleting",
                    truncate(comment, 32)
                ),
            },
        ));
    }

    // Nothing is rendered, applied, copied or reported for an environment no claim
    // authorises: it stalls, and writes nothing but its status. A claim revoked while
    // the environment runs stalls it the same way; what it deployed stays (untouched)
    // until it expires or is deleted, and it resumes if the claim comes back.
    let grant = match authorisation(pass.input) {
        Ok(grant) => grant,
        Err(refusal) => {
            pass.status.pending_report = None;
            // Not even the finalizer is added to an environment previewd never acted
            // for; one that has it keeps it, so that what was deployed is torn down.
            if pass.finalizer == FinalizerAction::Add {
                pass.finalizer = FinalizerAction::Keep;
            }
            return Err(pass.stall(refusal.reason, &refusal.message));
        }
    };

    // Spec problems the schema cannot express stall the environment with a clear message.
    if let Err(e) = expiry::expiry_policy(env).validate() {
        return Err(pass.stall("InvalidSpec", &e.to_string()));
    }
    Ok(grant.repository)
}
