//! How an accepted PR command is recorded on its `PreviewEnvironment`: the annotations
//! the commands own (field manager `previewd-commands`), the answer for the sticky
//! comment and the reaction. Pure; the planner acts on the annotations
//! (`previewd_kube::plan`).

use std::collections::BTreeMap;

use kube::ResourceExt;
use previewd_core::gating::ForkPolicy;
use previewd_kube::crd::{
    ANNOTATION_COMMAND_IDS, ANNOTATION_COMMAND_REPLY, ANNOTATION_DELETE_REQUESTED,
    ANNOTATION_EXTENDED_UNTIL, ANNOTATION_LAST_COMMAND, ANNOTATION_REDEPLOY, ANNOTATION_RETRY,
    ANNOTATION_SLEEP, ANNOTATION_SLEEP_REQUESTED_AT, COMMAND_ANNOTATIONS, PreviewEnvironment,
};
use previewd_kube::plan::expiry;
use previewd_kube::plan::sleep::{self, SLEEP_REQUEST_COMMAND};

use crate::command::{Command, HELP, Reaction};
use crate::decision::ANNOTATION_APPROVED_SHA;

/// Comment ids remembered for de-duplication.
pub const COMMAND_IDS_KEPT: usize = 20;

/// What to write for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// This comment was handled before: nothing to write.
    Duplicate,
    /// Apply these command annotations (the complete set the commands own) and react.
    Write {
        /// Annotations to apply.
        annotations: BTreeMap<String, String>,
        /// Reaction on the comment.
        reaction: Reaction,
    },
}

/// Whether the fork policy lets commands act on `env`: a fork environment (one with an
/// approved fork head) under `Deny`, or whose deployed head is no longer the approved
/// one under `RequireApproval`, refuses them.
pub fn fork_refusal(env: &PreviewEnvironment, forks: ForkPolicy) -> Option<&'static str> {
    let approved = env.annotations().get(ANNOTATION_APPROVED_SHA)?;
    match forks {
        ForkPolicy::Allow => None,
        ForkPolicy::Deny => Some("fork pull requests get no preview environment"),
        ForkPolicy::RequireApproval if approved != &env.spec.head_sha => {
            Some("the fork's head commit is not approved")
        }
        ForkPolicy::RequireApproval => None,
    }
}

/// The command annotations `env` holds with comment `comment_id` added to the handled
/// ones (the oldest dropped beyond [`COMMAND_IDS_KEPT`]); `None` when it was handled
/// before. The budget's sleep annotations are left out: the commands never own them.
fn with_comment(env: &PreviewEnvironment, comment_id: u64) -> Option<BTreeMap<String, String>> {
    let existing = env.annotations();
    let id = comment_id.to_string();
    let mut ids: Vec<String> = existing
        .get(ANNOTATION_COMMAND_IDS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if ids.contains(&id) {
        return None;
    }
    ids.push(id);
    let skip = ids.len().saturating_sub(COMMAND_IDS_KEPT);
    ids.drain(..skip);

    let budget_sleep = existing
        .get(ANNOTATION_SLEEP)
        .is_some_and(|v| sleep::is_budget_request(v));
    let mut annotations: BTreeMap<String, String> = existing
        .iter()
        .filter(|(k, _)| COMMAND_ANNOTATIONS.contains(&k.as_str()))
        .filter(|(k, _)| {
            !(budget_sleep
                && (k.as_str() == ANNOTATION_SLEEP || k.as_str() == ANNOTATION_SLEEP_REQUESTED_AT))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ANNOTATION_COMMAND_IDS.into(), ids.join(","));
    Some(annotations)
}

/// Records that `command` from comment `comment_id` by `login` was refused because
/// `why` (previewd could not check the commenter's permission): the comment counts as
/// handled and the sticky comment says why, nothing else changes.
pub fn record_refusal(
    env: &PreviewEnvironment,
    command: &Command,
    comment_id: u64,
    login: &str,
    why: &str,
) -> Recorded {
    let Some(mut annotations) = with_comment(env, comment_id) else {
        return Recorded::Duplicate;
    };
    annotations.insert(
        ANNOTATION_COMMAND_REPLY.into(),
        format!(
            "{comment_id} `{command}` by @{login}: refused, {why}; nothing was done, comment again later"
        ),
    );
    Recorded::Write {
        annotations,
        reaction: Reaction::Refused,
    }
}

/// Records `command` from comment `comment_id` by `login` at `now` on `env`.
pub fn record(
    env: &PreviewEnvironment,
    command: &Command,
    comment_id: u64,
    login: &str,
    now: jiff::Timestamp,
) -> Recorded {
    let existing = env.annotations();
    let id = comment_id.to_string();
    let Some(mut annotations) = with_comment(env, comment_id) else {
        return Recorded::Duplicate;
    };
    let budget_sleep = existing
        .get(ANNOTATION_SLEEP)
        .is_some_and(|v| sleep::is_budget_request(v));
    let now_text = now.to_string();
    let by = format!("`{command}` by @{login}");
    let mut reaction = Reaction::Accepted;
    let mut activity = true;
    let reply = match command {
        Command::Extend(duration) => {
            let ttl = duration.unwrap_or_else(|| expiry::expiry_policy(env).ttl);
            let until = now
                .checked_add(ttl.as_signed_duration())
                .unwrap_or(jiff::Timestamp::MAX);
            annotations.insert(ANNOTATION_EXTENDED_UNTIL.into(), until.to_string());
            let cap = expiry::expiry_policy(env).hard_cap(expiry::created_at(env, now));
            if until > cap {
                format!(
                    "{by}: kept until {} UTC, the environment's maximum lifespan",
                    cap.strftime("%Y-%m-%d %H:%M")
                )
            } else {
                format!("{by}: kept until {} UTC", until.strftime("%Y-%m-%d %H:%M"))
            }
        }
        Command::Sleep => {
            annotations.insert(ANNOTATION_SLEEP.into(), SLEEP_REQUEST_COMMAND.into());
            annotations.insert(ANNOTATION_SLEEP_REQUESTED_AT.into(), now_text.clone());
            format!("{by}: going to sleep; `/preview wake` or a push wakes it")
        }
        Command::Wake => {
            if budget_sleep {
                reaction = Reaction::Refused;
                format!("{by}: the environment sleeps because its cost budget is exhausted")
            } else {
                annotations.remove(ANNOTATION_SLEEP);
                annotations.remove(ANNOTATION_SLEEP_REQUESTED_AT);
                format!("{by}: waking up")
            }
        }
        Command::Redeploy => {
            annotations.insert(ANNOTATION_REDEPLOY.into(), id.clone());
            format!("{by}: restarting every service")
        }
        Command::Retry => {
            annotations.insert(ANNOTATION_RETRY.into(), id.clone());
            format!("{by}: rebuilding the environment")
        }
        Command::Delete => {
            annotations.insert(ANNOTATION_DELETE_REQUESTED.into(), id.clone());
            format!("{by}: deleting the environment")
        }
        Command::Help(why) => {
            reaction = Reaction::Confused;
            activity = false;
            if why.is_empty() {
                HELP.to_string()
            } else {
                format!("{why}; {HELP}")
            }
        }
    };
    if activity {
        annotations.insert(ANNOTATION_LAST_COMMAND.into(), now_text);
    }
    annotations.insert(ANNOTATION_COMMAND_REPLY.into(), format!("{id} {reply}"));
    Recorded::Write {
        annotations,
        reaction,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(annotations: serde_json::Value) -> PreviewEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1",
            "kind": "PreviewEnvironment",
            "metadata": {"name": "pe", "namespace": "ns",
                "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": annotations},
            "spec": {"repository": "acme/shop", "prNumber": 1, "branch": "b",
                "headSHA": "abcdef1", "ttl": "4h", "maxLifespan": "1d"},
        }))
        .unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    fn written(r: Recorded) -> (BTreeMap<String, String>, Reaction) {
        match r {
            Recorded::Write {
                annotations,
                reaction,
            } => (annotations, reaction),
            Recorded::Duplicate => panic!("duplicate"),
        }
    }

    #[test]
    fn extend_records_the_time_and_says_when_the_cap_wins() {
        let (a, r) = written(record(
            &env(json!({})),
            &Command::Extend(Some("2h".parse().unwrap())),
            7,
            "alice",
            now(),
        ));
        assert_eq!(r, Reaction::Accepted);
        assert_eq!(a[ANNOTATION_EXTENDED_UNTIL], "2026-01-01T03:00:00Z");
        assert_eq!(a[ANNOTATION_LAST_COMMAND], "2026-01-01T01:00:00Z");
        assert_eq!(a[ANNOTATION_COMMAND_IDS], "7");
        assert!(a[ANNOTATION_COMMAND_REPLY].starts_with("7 `/preview extend 2h` by @alice"));
        let (a, _) = written(record(
            &env(json!({})),
            &Command::Extend(Some("3w".parse().unwrap())),
            8,
            "alice",
            now(),
        ));
        assert!(a[ANNOTATION_COMMAND_REPLY].contains("maximum lifespan"));
    }

    #[test]
    fn a_comment_is_recorded_once_and_ids_are_bounded() {
        let e = env(json!({ANNOTATION_COMMAND_IDS: "5,6,7"}));
        assert_eq!(
            record(&e, &Command::Sleep, 6, "alice", now()),
            Recorded::Duplicate
        );
        let many: Vec<String> = (1..=25).map(|i| i.to_string()).collect();
        let e = env(json!({ANNOTATION_COMMAND_IDS: many.join(",")}));
        let (a, _) = written(record(&e, &Command::Wake, 26, "bob", now()));
        let kept: Vec<&str> = a[ANNOTATION_COMMAND_IDS].split(',').collect();
        assert_eq!(kept.len(), COMMAND_IDS_KEPT);
        assert_eq!(kept.last(), Some(&"26"));
    }

    #[test]
    fn sleep_then_wake_and_the_budget_is_not_ours_to_lift() {
        let (a, _) = written(record(&env(json!({})), &Command::Sleep, 1, "a", now()));
        assert_eq!(a[ANNOTATION_SLEEP], "command");
        let asleep = env(serde_json::to_value(&a).unwrap());
        let (b, r) = written(record(&asleep, &Command::Wake, 2, "a", now()));
        assert_eq!(r, Reaction::Accepted);
        assert!(!b.contains_key(ANNOTATION_SLEEP));
        let budget = env(json!({ANNOTATION_SLEEP: "budget"}));
        let (c, r) = written(record(&budget, &Command::Wake, 3, "a", now()));
        assert_eq!(r, Reaction::Refused);
        assert!(
            !c.contains_key(ANNOTATION_SLEEP),
            "never claims the budget's annotation"
        );
    }

    #[test]
    fn help_is_no_activity_and_other_commands_set_their_tokens() {
        let (a, r) = written(record(
            &env(json!({})),
            &Command::Help("unknown command \"x\"".into()),
            9,
            "a",
            now(),
        ));
        assert_eq!(r, Reaction::Confused);
        assert!(!a.contains_key(ANNOTATION_LAST_COMMAND));
        assert!(a[ANNOTATION_COMMAND_REPLY].contains("/preview extend"));
        for (cmd, key) in [
            (Command::Redeploy, ANNOTATION_REDEPLOY),
            (Command::Retry, ANNOTATION_RETRY),
            (Command::Delete, ANNOTATION_DELETE_REQUESTED),
        ] {
            let (a, _) = written(record(&env(json!({})), &cmd, 10, "a", now()));
            assert_eq!(a[key], "10");
        }
    }

    #[test]
    fn a_refusal_is_recorded_once_and_changes_nothing_else() {
        let e = env(json!({ANNOTATION_SLEEP: "command", ANNOTATION_COMMAND_IDS: "5"}));
        let (a, r) = written(record_refusal(
            &e,
            &Command::Delete,
            6,
            "alice",
            "GitHub could not tell the permission (rate_limited)",
        ));
        assert_eq!(r, Reaction::Refused);
        assert_eq!(a[ANNOTATION_COMMAND_IDS], "5,6");
        assert_eq!(a[ANNOTATION_SLEEP], "command", "kept");
        assert!(!a.contains_key(ANNOTATION_DELETE_REQUESTED));
        assert!(!a.contains_key(ANNOTATION_LAST_COMMAND), "no activity");
        let reply = &a[ANNOTATION_COMMAND_REPLY];
        assert!(
            reply.starts_with("6 `/preview delete` by @alice: refused"),
            "{reply}"
        );
        assert!(reply.contains("rate_limited"), "{reply}");
        assert_eq!(
            record_refusal(&e, &Command::Delete, 5, "alice", "x"),
            Recorded::Duplicate
        );
    }

    #[test]
    fn forks_follow_the_policy() {
        let plain = env(json!({}));
        assert_eq!(fork_refusal(&plain, ForkPolicy::Deny), None);
        let approved = env(json!({ANNOTATION_APPROVED_SHA: "abcdef1"}));
        assert_eq!(fork_refusal(&approved, ForkPolicy::RequireApproval), None);
        assert!(fork_refusal(&approved, ForkPolicy::Deny).is_some());
        let stale = env(json!({ANNOTATION_APPROVED_SHA: "1234567"}));
        assert!(fork_refusal(&stale, ForkPolicy::RequireApproval).is_some());
        assert_eq!(fork_refusal(&stale, ForkPolicy::Allow), None);
    }
}
