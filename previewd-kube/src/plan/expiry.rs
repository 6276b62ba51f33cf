//! The one expiry computation, shared by the controller (which requeues at the expiry
//! time exactly) and the cleanup sweep (the safety net after a restart).

use kube::ResourceExt;
use previewd_core::ttl::{DO_NOT_EXPIRE_LABEL, label_requests_no_expiry};
use previewd_core::{ExpiryPolicy, Ttl};

use crate::crd::{ANNOTATION_LAST_ACTIVITY, PreviewEnvironment};

/// The expiry policy of an environment: spec fields plus the opt-out label.
pub fn expiry_policy(env: &PreviewEnvironment) -> ExpiryPolicy {
    ExpiryPolicy {
        ttl: env.spec.ttl.unwrap_or(Ttl::DEFAULT),
        auto_extend: env.spec.auto_extend,
        max_lifespan: env.spec.max_lifespan.unwrap_or(Ttl::MAX_LIFESPAN_DEFAULT),
        do_not_expire: env
            .labels()
            .get(DO_NOT_EXPIRE_LABEL)
            .is_some_and(|v| label_requests_no_expiry(v)),
    }
}

/// When the environment was created: the time recorded in its status, else its
/// creation timestamp, else `now` (an object not yet stored).
pub fn created_at(env: &PreviewEnvironment, now: jiff::Timestamp) -> jiff::Timestamp {
    env.status
        .as_ref()
        .and_then(|s| s.created_at.as_ref())
        .or(env.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now)
}

/// The last push, from the `previewd.io/last-activity` annotation; an unparsable value
/// counts as no activity (the TTL then runs from creation, the safe side).
pub fn last_activity(env: &PreviewEnvironment) -> Option<jiff::Timestamp> {
    env.annotations()
        .get(ANNOTATION_LAST_ACTIVITY)
        .and_then(|v| v.parse().ok())
}

/// When the environment expires.
pub fn expires_at(env: &PreviewEnvironment, now: jiff::Timestamp) -> jiff::Timestamp {
    expiry_policy(env).expires_at(created_at(env, now), last_activity(env))
}

/// Whether the environment has expired at `now`.
pub fn is_expired(env: &PreviewEnvironment, now: jiff::Timestamp) -> bool {
    now >= expires_at(env, now)
}
