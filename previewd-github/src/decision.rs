//! What one `pull_request` delivery does, given what the cluster records: pure, so every
//! ordering rule is tested without a server.
//!
//! # The order of events
//!
//! GitHub does not deliver events in order and redelivers old ones, so every event is
//! placed in a total order and an event that is not newer than what is recorded changes
//! nothing. The order key of an event is `(updated_at, kind, head SHA)`:
//!
//! 1. `pull_request.updated_at` (RFC 3339, one-second resolution) decides first. An event
//!    whose `updated_at` does not parse is refused (400): it never bypasses the check.
//! 2. On the same `updated_at`, a removal (close, draft, unlabel, fork denial) is newer
//!    than an apply: a close and a push in the same second leave the environment
//!    removed, whichever arrives first, which is the safe side (the next push or a
//!    reopen has a later `updated_at` and brings it back).
//! 3. Between two applies with the same `updated_at`, the one with the greater head SHA
//!    (compared as text) wins. Which push really came last cannot be known from the
//!    payloads; a fixed rule makes every arrival order converge on the same environment,
//!    so a redelivered older push can never move the head SHA back and forth. An apply
//!    with the same key as the recorded one is re-rendered (labels may have changed) and
//!    usually answers `unchanged`.
//!
//! What is recorded survives restarts, because it lives in the cluster:
//! - an environment carries the `updated_at`, head SHA and delivery id of the newest
//!   event applied (annotations on the `PreviewEnvironment`);
//! - a removal — also of an environment that does not exist — records the close as a
//!   tombstone in the status of the repository's `PreviewRepository`
//!   (`status.closedPullRequests`, by environment name), kept for
//!   [`TOMBSTONE_RETENTION`]; a later `opened` or `synchronize` that is not newer than
//!   the tombstone is answered `stale`.
//!
//! A delivery id equal to the one recorded on the environment or the tombstone is a
//! redelivery and answered `duplicate`; the webhook's in-memory delivery cache only saves
//! the API calls for recent ones.

use std::cmp::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use previewd_kube::crd::{
    ANNOTATION_DELIVERY, ANNOTATION_PR_UPDATED_AT, ClosedPullRequest, GatingPolicy,
    PreviewEnvironment,
};

use crate::event::PullRequestEvent;
use crate::policy::{self, Approval, Decision};

/// Annotation: head commit of the newest event applied.
pub const ANNOTATION_HEAD_SHA: &str = "previewd.io/head-sha";
/// Annotation: head commit of a fork PR that a maintainer approved (the full SHA).
pub const ANNOTATION_APPROVED_SHA: &str = "previewd.io/approved-sha";
/// Annotation: login of the maintainer who approved [`ANNOTATION_APPROVED_SHA`].
pub const ANNOTATION_APPROVED_BY: &str = "previewd.io/approved-by";
/// Annotation: when they approved it (RFC 3339, GitHub's time of the label event).
pub const ANNOTATION_APPROVED_AT: &str = "previewd.io/approved-at";

/// How long a tombstone is kept: longer than GitHub lets anyone redeliver an event
/// (3 days on github.com, 7 on GitHub Enterprise Server).
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);

/// Kind of an event in the order: on the same `updated_at`, a removal is newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// Renders and applies the environment.
    Apply,
    /// Removes the environment.
    Remove,
}

/// Place of an event in the total order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    /// `pull_request.updated_at`.
    pub updated_at: Timestamp,
    /// Apply or remove.
    pub kind: EventKind,
    /// Head commit (compared as text; ties of applies only).
    pub head_sha: String,
}

/// What to do with one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do (`ignored`).
    Ignore(&'static str),
    /// The payload cannot be ordered (`bad_request`).
    Invalid(String),
    /// This delivery was already applied (`duplicate`).
    Duplicate,
    /// Not newer than what is recorded (`stale`).
    Stale(String),
    /// The environment is being deleted; an apply has to wait (503).
    Terminating,
    /// Removal of an environment already being deleted (`deleted`).
    AlreadyDeleting(&'static str),
    /// Record a tombstone; delete the environment when `resource_version` is set.
    Remove {
        /// Why.
        reason: &'static str,
        /// The environment to delete, if it exists.
        resource_version: Option<String>,
        /// The tombstone to record.
        tombstone: ClosedPullRequest,
    },
    /// Render and apply.
    Apply {
        /// The approval of a fork's head commit it rests on.
        approval: Approval,
    },
}

fn annotation<'a>(env: &'a PreviewEnvironment, key: &str) -> Option<&'a str> {
    env.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The order key of what an environment records, when it records one that parses.
pub fn recorded_key(env: &PreviewEnvironment) -> Option<OrderKey> {
    let updated_at = annotation(env, ANNOTATION_PR_UPDATED_AT)?
        .parse::<Timestamp>()
        .ok()?;
    Some(OrderKey {
        updated_at,
        kind: EventKind::Apply,
        head_sha: annotation(env, ANNOTATION_HEAD_SHA)
            .unwrap_or_default()
            .to_string(),
    })
}

fn tombstone_key(tombstone: &ClosedPullRequest) -> Option<OrderKey> {
    Some(OrderKey {
        updated_at: tombstone.updated_at.parse().ok()?,
        kind: EventKind::Remove,
        head_sha: String::new(),
    })
}

/// Decides what a delivery does. `existing` is the environment, `tombstone` the recorded
/// close of this environment (from the repository's status).
pub fn plan(
    event: &PullRequestEvent,
    gating: &GatingPolicy,
    delivery: &str,
    existing: Option<&PreviewEnvironment>,
    tombstone: Option<&ClosedPullRequest>,
) -> Plan {
    let approved = existing.and_then(|e| annotation(e, ANNOTATION_APPROVED_SHA));
    let decision = policy::decide(event, gating, approved);
    let kind = match &decision {
        Decision::Ignore { reason } => return Plan::Ignore(reason),
        Decision::Apply { .. } => EventKind::Apply,
        Decision::Remove { .. } => EventKind::Remove,
    };
    let Ok(updated_at) = event.pull_request.updated_at.trim().parse::<Timestamp>() else {
        return Plan::Invalid(format!(
            "pull_request.updated_at {:?} is not an RFC 3339 time",
            crate::shorten(&event.pull_request.updated_at)
        ));
    };
    let incoming = OrderKey {
        updated_at,
        kind,
        head_sha: event.pull_request.head.sha.clone(),
    };
    if existing.is_some_and(|e| annotation(e, ANNOTATION_DELIVERY) == Some(delivery))
        || (existing.is_none() && tombstone.is_some_and(|t| t.delivery == delivery))
    {
        return Plan::Duplicate;
    }
    // Against the environment when it exists (it was created after any tombstone it
    // outlived), against the tombstone otherwise.
    let recorded = match existing {
        Some(env) => recorded_key(env),
        None => tombstone.and_then(tombstone_key),
    };
    if let Some(recorded) = &recorded {
        let newer = match (incoming.kind, recorded.kind) {
            // A removal wins a tie against the applied state.
            (EventKind::Remove, EventKind::Apply) => {
                incoming.updated_at.cmp(&recorded.updated_at) != Ordering::Less
            }
            // An apply equal to the recorded one is re-rendered; older is stale.
            (EventKind::Apply, EventKind::Apply) => incoming >= *recorded,
            _ => incoming > *recorded,
        };
        if !newer {
            let what = if existing.is_some() {
                "the environment"
            } else {
                "the recorded close"
            };
            return Plan::Stale(format!("not newer than {what}"));
        }
    }
    let terminating = existing.is_some_and(|e| e.metadata.deletion_timestamp.is_some());
    match decision {
        Decision::Ignore { reason } => Plan::Ignore(reason),
        Decision::Remove { reason } => {
            if terminating {
                return Plan::AlreadyDeleting(reason);
            }
            Plan::Remove {
                reason,
                resource_version: existing
                    .map(|e| e.metadata.resource_version.clone().unwrap_or_default()),
                tombstone: ClosedPullRequest {
                    updated_at: updated_at.to_string(),
                    delivery: delivery.to_string(),
                },
            }
        }
        Decision::Apply { approval } => {
            if terminating {
                Plan::Terminating
            } else {
                Plan::Apply { approval }
            }
        }
    }
}

/// Most tombstones one repository keeps. They share one object, which etcd limits to
/// 1.5 MiB; at about 160 bytes each, 5000 take some 800 KiB. A repository closing more
/// pull requests than this within [`TOMBSTONE_RETENTION`] loses its oldest tombstones
/// first, which only matters for a redelivery of an event that old.
pub const MAX_TOMBSTONES: usize = 5000;

/// Tombstones of `closed` to drop on the next write, which adds one: those older than the
/// retention at `now`, those nobody can order by, and the oldest beyond
/// [`MAX_TOMBSTONES`].
pub fn expired_tombstones<'a>(
    closed: impl IntoIterator<Item = (&'a String, &'a ClosedPullRequest)>,
    now: Timestamp,
) -> Vec<String> {
    let retention = jiff::SignedDuration::try_from(TOMBSTONE_RETENTION).unwrap_or_default();
    let mut expired = Vec::new();
    let mut kept = Vec::new();
    for (name, tombstone) in closed {
        match tombstone.updated_at.parse::<Timestamp>() {
            Ok(at) if now.duration_since(at) <= retention => kept.push((at, name)),
            // Too old, or an entry nobody can order by.
            _ => expired.push(name.clone()),
        }
    }
    let room = MAX_TOMBSTONES.saturating_sub(1);
    if kept.len() > room {
        kept.sort();
        let excess = kept.len() - room;
        expired.extend(kept.into_iter().take(excess).map(|(_, name)| name.clone()));
    }
    expired
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(action: &str, sha: &str, updated_at: &str) -> PullRequestEvent {
        serde_json::from_value(json!({
            "action": action,
            "number": 12,
            "pull_request": {
                "number": 12, "state": if action == "closed" { "closed" } else { "open" },
                "draft": false, "updated_at": updated_at,
                "user": {"login": "dev"},
                "head": {"ref": "feat/x", "sha": sha, "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "sha": "b", "repo": {"full_name": "acme/shop"}}
            },
            "repository": {"full_name": "acme/shop"}
        }))
        .unwrap()
    }

    fn env(sha: &str, updated_at: &str, delivery: &str) -> PreviewEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "pe", "namespace": "ns", "resourceVersion": "7",
                "annotations": {
                    ANNOTATION_PR_UPDATED_AT: updated_at,
                    ANNOTATION_HEAD_SHA: sha,
                    ANNOTATION_DELIVERY: delivery,
                }},
            "spec": {"repository": "acme/shop", "prNumber": 12, "branch": "feat/x",
                "headSHA": sha, "services": []}
        }))
        .unwrap()
    }

    const T: &str = "2024-01-01T00:00:00Z";
    const T_LATER: &str = "2024-01-01T00:00:01Z";

    fn gating() -> GatingPolicy {
        GatingPolicy::default()
    }

    #[test]
    fn same_updated_at_never_moves_the_head_back() {
        // Pushes bbb then aaa in the same second: aaa is refused, whichever order.
        let current = env("bbb", T, "d1");
        let plan_a = plan(
            &event("synchronize", "aaa", T),
            &gating(),
            "d2",
            Some(&current),
            None,
        );
        assert!(matches!(plan_a, Plan::Stale(_)), "{plan_a:?}");
        // The other arrival order converges on the same head.
        let current = env("aaa", T, "d2");
        let plan_b = plan(
            &event("synchronize", "bbb", T),
            &gating(),
            "d1",
            Some(&current),
            None,
        );
        assert!(matches!(plan_b, Plan::Apply { .. }), "{plan_b:?}");
        // The same key re-renders (e.g. a label event), a later one applies.
        assert!(matches!(
            plan(
                &event("labeled", "bbb", T),
                &gating(),
                "d3",
                Some(&env("bbb", T, "d1")),
                None
            ),
            Plan::Apply { .. }
        ));
        assert!(matches!(
            plan(
                &event("synchronize", "aaa", T_LATER),
                &gating(),
                "d4",
                Some(&env("bbb", T, "d1")),
                None
            ),
            Plan::Apply { .. }
        ));
    }

    #[test]
    fn an_unparsable_updated_at_is_refused_not_waved_through() {
        for bad in ["", "yesterday", "2024-13-01T00:00:00Z", "1e99"] {
            let p = plan(
                &event("synchronize", "aaa", bad),
                &gating(),
                "d",
                Some(&env("bbb", T, "d1")),
                None,
            );
            assert!(matches!(p, Plan::Invalid(_)), "{bad:?}: {p:?}");
            let p = plan(&event("opened", "aaa", bad), &gating(), "d", None, None);
            assert!(matches!(p, Plan::Invalid(_)), "{bad:?}: {p:?}");
        }
    }

    #[test]
    fn a_close_of_an_absent_environment_leaves_a_tombstone_that_holds() {
        let close = plan(
            &event("closed", "aaa", T_LATER),
            &gating(),
            "d9",
            None,
            None,
        );
        let Plan::Remove {
            resource_version: None,
            tombstone,
            ..
        } = close
        else {
            panic!("{close:?}");
        };
        assert_eq!(tombstone.updated_at, T_LATER);
        // A late opened (older, or the same second) stays out.
        for at in [T, T_LATER] {
            let p = plan(
                &event("opened", "aaa", at),
                &gating(),
                "d1",
                None,
                Some(&tombstone),
            );
            assert!(matches!(p, Plan::Stale(_)), "{at}: {p:?}");
        }
        // A real reopen later does not.
        let p = plan(
            &event("reopened", "aaa", "2024-01-01T00:05:00Z"),
            &gating(),
            "d10",
            None,
            Some(&tombstone),
        );
        assert!(matches!(p, Plan::Apply { .. }), "{p:?}");
        // The close redelivered is a duplicate.
        let p = plan(
            &event("closed", "aaa", T_LATER),
            &gating(),
            "d9",
            None,
            Some(&tombstone),
        );
        assert_eq!(p, Plan::Duplicate);
    }

    #[test]
    fn a_close_wins_a_tie_and_an_older_close_is_stale() {
        let p = plan(
            &event("closed", "aaa", T),
            &gating(),
            "d2",
            Some(&env("aaa", T, "d1")),
            None,
        );
        assert!(
            matches!(p, Plan::Remove { resource_version: Some(ref rv), .. } if rv == "7"),
            "{p:?}"
        );
        let p = plan(
            &event("closed", "aaa", T),
            &gating(),
            "d2",
            Some(&env("aaa", T_LATER, "d1")),
            None,
        );
        assert!(matches!(p, Plan::Stale(_)), "{p:?}");
    }

    #[test]
    fn redelivery_of_the_applied_event_is_a_duplicate() {
        let p = plan(
            &event("synchronize", "aaa", T),
            &gating(),
            "d1",
            Some(&env("aaa", T, "d1")),
            None,
        );
        assert_eq!(p, Plan::Duplicate);
    }

    #[test]
    fn old_tombstones_expire() {
        let mut closed = std::collections::BTreeMap::new();
        closed.insert(
            "old".to_string(),
            ClosedPullRequest {
                updated_at: "2024-01-01T00:00:00Z".into(),
                delivery: String::new(),
            },
        );
        closed.insert(
            "new".to_string(),
            ClosedPullRequest {
                updated_at: "2024-01-10T00:00:00Z".into(),
                delivery: String::new(),
            },
        );
        closed.insert(
            "junk".to_string(),
            ClosedPullRequest {
                updated_at: "junk".into(),
                delivery: String::new(),
            },
        );
        let now: Timestamp = "2024-01-12T00:00:00Z".parse().unwrap();
        let mut expired = expired_tombstones(&closed, now);
        expired.sort();
        assert_eq!(expired, vec!["junk".to_string(), "old".to_string()]);
    }

    #[test]
    fn a_repository_keeps_at_most_max_tombstones_dropping_the_oldest() {
        let now: Timestamp = "2024-01-12T00:00:00Z".parse().unwrap();
        let closed: std::collections::BTreeMap<String, ClosedPullRequest> = (0..MAX_TOMBSTONES
            + 10)
            .map(|i| {
                // One second apart, the newest last; names do not sort by age.
                let at = now - jiff::SignedDuration::from_secs((MAX_TOMBSTONES + 10 - i) as i64);
                (
                    format!("pr-{}", (i * 7919) % 100_000),
                    ClosedPullRequest {
                        updated_at: at.to_string(),
                        delivery: String::new(),
                    },
                )
            })
            .collect();
        assert_eq!(closed.len(), MAX_TOMBSTONES + 10);
        let expired = expired_tombstones(&closed, now);
        // Room for the one being written: 11 go, the oldest ones.
        assert_eq!(expired.len(), 11);
        let oldest: std::collections::BTreeSet<String> = (0..11)
            .map(|i| format!("pr-{}", (i * 7919) % 100_000))
            .collect();
        assert_eq!(
            expired
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
            oldest
        );
        // Under the cap, nothing recent goes.
        let few: std::collections::BTreeMap<_, _> = closed.into_iter().take(100).collect();
        assert!(expired_tombstones(&few, now).is_empty());
    }
}
