//! The one expiry computation, shared by the controller (which requeues at the expiry
//! time exactly) and the cleanup sweep (the safety net after a restart).

use kube::ResourceExt;
use previewd_core::ttl::{DO_NOT_EXPIRE_LABEL, label_requests_no_expiry};
use previewd_core::{ExpiryPolicy, Ttl};

use crate::crd::{
    ANNOTATION_EXTENDED_UNTIL, ANNOTATION_LAST_ACTIVITY, ANNOTATION_LAST_COMMAND,
    PreviewEnvironment,
};

/// The expiry policy of an environment: spec fields plus the opt-out label.
pub fn expiry_policy(env: &PreviewEnvironment) -> ExpiryPolicy {
    let max_lifespan = env.spec.max_lifespan.unwrap_or(Ttl::MAX_LIFESPAN_DEFAULT);
    let predicted = env
        .status
        .as_ref()
        .and_then(|s| s.ai.as_ref())
        .and_then(|ai| ai.predicted_ttl);
    ExpiryPolicy {
        ttl: env.spec.ttl.map_or(Ttl::DEFAULT, |choice| {
            choice.resolve(predicted, max_lifespan)
        }),
        auto_extend: env.spec.auto_extend,
        max_lifespan,
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
/// counts as no push (the TTL then runs from creation, the safe side).
pub fn last_push(env: &PreviewEnvironment) -> Option<jiff::Timestamp> {
    env.annotations()
        .get(ANNOTATION_LAST_ACTIVITY)
        .and_then(|v| v.parse().ok())
}

/// The last activity that renews the TTL with `autoExtend`: the latest push or accepted
/// PR command (`previewd.io/last-command-at`).
pub fn last_activity(env: &PreviewEnvironment) -> Option<jiff::Timestamp> {
    let command = env
        .annotations()
        .get(ANNOTATION_LAST_COMMAND)
        .and_then(|v| v.parse().ok());
    last_push(env).max(command)
}

/// The time `/preview extend` asked for (`previewd.io/extended-until`), if any.
pub fn extended_until(env: &PreviewEnvironment) -> Option<jiff::Timestamp> {
    env.annotations()
        .get(ANNOTATION_EXTENDED_UNTIL)
        .and_then(|v| v.parse().ok())
}

/// When the environment expires: the policy's expiry, moved later by `/preview extend`,
/// never past the hard cap (`createdAt + maxLifespan`).
pub fn expires_at(env: &PreviewEnvironment, now: jiff::Timestamp) -> jiff::Timestamp {
    let policy = expiry_policy(env);
    let created = created_at(env, now);
    let expiry = policy.expires_at(created, last_activity(env));
    match extended_until(env) {
        Some(until) => expiry.max(until).min(policy.hard_cap(created)),
        None => expiry,
    }
}

/// Whether the environment has expired at `now`.
pub fn is_expired(env: &PreviewEnvironment, now: jiff::Timestamp) -> bool {
    now >= expires_at(env, now)
}

/// When the expiry warning starts: `lead` before the expiry (`None` when `lead` is zero).
pub fn warning_at(
    env: &PreviewEnvironment,
    now: jiff::Timestamp,
    lead: std::time::Duration,
) -> Option<jiff::Timestamp> {
    if lead.is_zero() {
        return None;
    }
    let lead = jiff::SignedDuration::try_from(lead).ok()?;
    Some(
        expires_at(env, now)
            .checked_sub(lead)
            .unwrap_or(jiff::Timestamp::MIN),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn env(auto_extend: bool, annotations: &[(&str, &str)]) -> PreviewEnvironment {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {
                "name": "pe", "namespace": "ns",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": annotations,
            },
            "spec": {
                "repository": "acme/shop", "prNumber": 1, "branch": "b", "headSHA": "abcdef1",
                "ttl": "4h", "maxLifespan": "1d", "autoExtend": auto_extend,
            },
        }))
        .unwrap()
    }

    #[test]
    fn extend_moves_the_expiry_but_never_past_the_cap() {
        let now = t("2026-01-01T01:00:00Z");
        assert_eq!(expires_at(&env(false, &[]), now), t("2026-01-01T04:00:00Z"));
        let extended = env(
            false,
            &[(ANNOTATION_EXTENDED_UNTIL, "2026-01-01T10:00:00Z")],
        );
        assert_eq!(expires_at(&extended, now), t("2026-01-01T10:00:00Z"));
        let too_far = env(
            false,
            &[(ANNOTATION_EXTENDED_UNTIL, "2026-03-01T00:00:00Z")],
        );
        assert_eq!(expires_at(&too_far, now), t("2026-01-02T00:00:00Z"));
        // An extension earlier than the TTL never shortens it.
        let earlier = env(
            false,
            &[(ANNOTATION_EXTENDED_UNTIL, "2026-01-01T02:00:00Z")],
        );
        assert_eq!(expires_at(&earlier, now), t("2026-01-01T04:00:00Z"));
        assert_eq!(
            expires_at(&env(false, &[(ANNOTATION_EXTENDED_UNTIL, "soon")]), now),
            t("2026-01-01T04:00:00Z")
        );
    }

    #[test]
    fn commands_renew_the_ttl_with_auto_extend() {
        let now = t("2026-01-01T05:00:00Z");
        let a = [
            (ANNOTATION_LAST_ACTIVITY, "2026-01-01T01:00:00Z"),
            (ANNOTATION_LAST_COMMAND, "2026-01-01T03:00:00Z"),
        ];
        assert_eq!(expires_at(&env(true, &a), now), t("2026-01-01T07:00:00Z"));
        assert_eq!(expires_at(&env(false, &a), now), t("2026-01-01T04:00:00Z"));
        let late = [(ANNOTATION_LAST_COMMAND, "2026-01-01T23:00:00Z")];
        assert_eq!(
            expires_at(&env(true, &late), now),
            t("2026-01-02T00:00:00Z")
        );
    }

    #[test]
    fn the_warning_starts_lead_before_expiry() {
        let now = t("2026-01-01T01:00:00Z");
        let e = env(false, &[]);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(warning_at(&e, now, hour), Some(t("2026-01-01T03:00:00Z")));
        assert_eq!(warning_at(&e, now, std::time::Duration::ZERO), None);
    }
}
