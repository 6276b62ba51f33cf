//! Approving a fork's head commit: the checks an approval label passes before it
//! approves anything, and the record it leaves.
//!
//! # The rule
//!
//! A `labeled` delivery for the approval label asks to approve the head commit the
//! payload carries. It approves that commit only when, asked at that moment:
//!
//! 1. the payload's head is a full commit SHA (40 or 64 hex digits);
//! 2. whoever added the label (`sender`) is a maintainer: their permission on the
//!    repository passes the [`PermissionPolicy`](crate::permission::PermissionPolicy)
//!    (triage is enough to add a label on GitHub; it is not enough to approve);
//! 3. GitHub's pull request API still reports that head, the pull request open and the
//!    label on it.
//!
//! When the head GitHub reports differs from the payload's, a push landed after (or
//! while) the label was added: nothing is approved, neither the commit the label was
//! added on nor the one pushed, and the maintainer adds the label again once they have
//! looked at the new head. previewd refuses rather than compares times: the times that
//! describe a commit (author and committer dates) are written by whoever pushed it, and
//! GitHub exposes no server-side push time for a fork's commits, so a rule on times would
//! rest on what the attacker chose. Equality of two SHAs GitHub reports is checkable and
//! fails closed.
//!
//! GitHub failing to answer (5xx, rate limits, a timeout) approves nothing either: the
//! delivery is answered 503 and can be redelivered, which asks again.
//!
//! What is left: the head the payload carries is the head when the label was added. A
//! push that lands seconds before a maintainer adds the label is what they approve,
//! whether or not they looked at it; the record below names that commit, and removing
//! the label withdraws the approval.
//!
//! # The record
//!
//! `(pull request, full head SHA, approver, time)`: the environment is that pull
//! request's, and carries `previewd.io/approved-sha`, `previewd.io/approved-by` and
//! `previewd.io/approved-at` (GitHub's time of the label event). The environment is
//! rendered for that SHA, never for "the head": a later push never inherits the approval
//! (see [`crate::policy`]).

use previewd_core::source_control::{PullRequestInfo, PullRequestState};

use crate::event::PullRequestEvent;
use crate::permission::{Permissions, Verdict};

/// An approval of a fork's head commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// The approved commit (full SHA).
    pub sha: String,
    /// Login of the maintainer who approved it; unknown for approvals recorded by earlier
    /// versions.
    pub by: Option<String>,
    /// When (RFC 3339); unknown for approvals recorded by earlier versions.
    pub at: Option<String>,
}

/// The outcome of checking an approval request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalCheck {
    /// Approved: record it.
    Approved(ApprovalRecord),
    /// Refused, and why (nothing is written).
    Refused(String),
    /// GitHub could not tell; nothing is written, and a redelivery asks again.
    Unavailable(String),
}

/// Whether `sha` is a full commit SHA (SHA-1 or SHA-256, lower or upper case hex).
pub fn is_full_sha(sha: &str) -> bool {
    (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The approver a `labeled` event names.
pub fn approver(event: &PullRequestEvent) -> Option<&str> {
    event.sender.as_ref().map(|s| s.login.as_str())
}

/// What can be refused from the payload alone: the approver's login, or why not.
fn precheck<'a>(event: &'a PullRequestEvent, sha: &str) -> Result<&'a str, String> {
    if !is_full_sha(sha) {
        return Err(format!(
            "the head {:?} is not a full commit SHA",
            crate::shorten(sha)
        ));
    }
    approver(event).ok_or_else(|| "the event names no one who added the label".to_string())
}

/// Judges the approval of `sha` requested by `event` (label `label`), given the
/// approver's permission and the pull request as GitHub reports it now. Pure.
pub fn judge(
    event: &PullRequestEvent,
    sha: &str,
    label: &str,
    permission: &Verdict,
    current: Result<&PullRequestInfo, &str>,
    policy: &str,
) -> ApprovalCheck {
    let login = match precheck(event, sha) {
        Ok(login) => login,
        Err(why) => return ApprovalCheck::Refused(why),
    };
    match permission {
        Verdict::Allowed(_) => {}
        Verdict::Refused(held) => {
            return ApprovalCheck::Refused(format!(
                "@{login} has the role {} on {}; approving a fork needs {policy}",
                held.describe(),
                event.base_repository()
            ));
        }
        Verdict::Unknown(why) => {
            return ApprovalCheck::Unavailable(format!(
                "could not check @{login}'s permission: {why}"
            ));
        }
    }
    let pr = match current {
        Ok(pr) => pr,
        Err(why) => return ApprovalCheck::Unavailable(why.to_string()),
    };
    if pr.state != PullRequestState::Open {
        return ApprovalCheck::Refused("the pull request is no longer open".into());
    }
    if !pr.head_sha.eq_ignore_ascii_case(sha) {
        return ApprovalCheck::Refused(format!(
            "the head moved from {} to {} after the label was added; nothing is approved: \
             remove the label and add it again to approve the new head",
            short(sha),
            short(&pr.head_sha)
        ));
    }
    if !pr.labels.iter().any(|l| l == label) {
        return ApprovalCheck::Refused(format!(
            "the label {:?} is no longer on the pull request",
            crate::shorten(label)
        ));
    }
    ApprovalCheck::Approved(ApprovalRecord {
        sha: sha.to_ascii_lowercase(),
        by: Some(login.to_string()),
        at: Some(crate::ci::utc(Some(event.pull_request.updated_at.clone())))
            .filter(|at| !at.is_empty()),
    })
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// Checks the approval of `sha` that `event` (label `label`) requests against GitHub,
/// through `permissions`; without them nothing can be checked and nothing is approved.
pub async fn check(
    permissions: Option<&Permissions>,
    event: &PullRequestEvent,
    sha: &str,
    label: &str,
) -> ApprovalCheck {
    let Some(permissions) = permissions else {
        return ApprovalCheck::Refused(
            "fork approvals need GitHub credentials, to check the approver's permission and \
             the pull request's head"
                .into(),
        );
    };
    let policy = permissions.policy().describe();
    let repository = event.base_repository();
    // Refusals from the payload alone cost no GitHub request.
    let login = match precheck(event, sha) {
        Ok(login) => login,
        Err(why) => return ApprovalCheck::Refused(why),
    };
    let verdict = permissions.check(repository, login).await;
    if !matches!(verdict, Verdict::Allowed(_)) {
        return judge(event, sha, label, &verdict, Err(""), &policy);
    }
    let current = permissions.pull_request(repository, event.number).await;
    judge(
        event,
        sha,
        label,
        &verdict,
        current.as_ref().map_err(String::as_str),
        &policy,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::permission::CollaboratorPermission;
    use previewd_core::source_control::RepoRef;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const LABEL: &str = "preview/approved";

    fn labeled(sha: &str, sender: Option<&str>) -> PullRequestEvent {
        let mut v = json!({
            "action": "labeled",
            "number": 7,
            "label": {"name": LABEL},
            "pull_request": {
                "number": 7, "state": "open", "draft": false,
                "updated_at": "2026-03-01T10:00:00Z",
                "user": {"login": "mallory"},
                "head": {"ref": "feat", "sha": sha, "repo": {"full_name": "mallory/shop", "fork": true}},
                "base": {"ref": "main", "sha": B, "repo": {"full_name": "acme/shop"}},
                "labels": [{"name": LABEL}]
            },
            "repository": {"full_name": "acme/shop"}
        });
        if let Some(login) = sender {
            v["sender"] = json!({"login": login});
        }
        serde_json::from_value(v).unwrap()
    }

    fn current(head: &str, labels: &[&str], state: PullRequestState) -> PullRequestInfo {
        PullRequestInfo {
            repository: RepoRef::new("acme", "shop"),
            number: 7,
            title: String::new(),
            state,
            draft: false,
            merged: false,
            head_sha: head.into(),
            head_ref: "feat".into(),
            head_repository: Some("mallory/shop".into()),
            base_ref: "main".into(),
            author: "mallory".into(),
            author_association: "CONTRIBUTOR".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            html_url: String::new(),
            updated_at: "2026-03-01T10:00:05Z".into(),
        }
    }

    fn writer() -> Verdict {
        Verdict::Allowed(CollaboratorPermission {
            role_name: "write".into(),
            permission: "write".into(),
        })
    }

    fn run(event: &PullRequestEvent, permission: &Verdict, pr: &PullRequestInfo) -> ApprovalCheck {
        judge(event, A, LABEL, permission, Ok(pr), "write or above")
    }

    #[test]
    fn a_maintainer_approves_the_head_that_is_still_the_head() {
        let event = labeled(A, Some("maintainer"));
        let ok = run(
            &event,
            &writer(),
            &current(A, &[LABEL], PullRequestState::Open),
        );
        assert_eq!(
            ok,
            ApprovalCheck::Approved(ApprovalRecord {
                sha: A.into(),
                by: Some("maintainer".into()),
                at: Some("2026-03-01T10:00:00Z".into()),
            })
        );
    }

    #[test]
    fn a_push_after_the_label_approves_neither_commit() {
        let event = labeled(A, Some("maintainer"));
        let moved = run(
            &event,
            &writer(),
            &current(B, &[LABEL], PullRequestState::Open),
        );
        let ApprovalCheck::Refused(why) = moved else {
            panic!("{moved:?}")
        };
        assert!(
            why.contains("head moved from aaaaaaaaaaaa to bbbbbbbbbbbb"),
            "{why}"
        );
    }

    #[test]
    fn no_write_no_label_no_sha_no_approval() {
        let event = labeled(A, Some("triager"));
        let triage = Verdict::Refused(CollaboratorPermission {
            role_name: "triage".into(),
            permission: "read".into(),
        });
        let open = current(A, &[LABEL], PullRequestState::Open);
        assert!(matches!(
            run(&event, &triage, &open),
            ApprovalCheck::Refused(why) if why.contains("role triage") && why.contains("write or above")
        ));
        assert!(matches!(
            run(&event, &Verdict::Unknown("rate limited".into()), &open),
            ApprovalCheck::Unavailable(why) if why.contains("rate limited")
        ));
        assert!(matches!(
            judge(&event, A, LABEL, &writer(), Err("GitHub answered 502"), "w"),
            ApprovalCheck::Unavailable(_)
        ));
        assert!(matches!(
            run(&labeled(A, None), &writer(), &open),
            ApprovalCheck::Refused(_)
        ));
        // The label was removed again meanwhile; the pull request was closed.
        assert!(matches!(
            run(&event, &writer(), &current(A, &[], PullRequestState::Open)),
            ApprovalCheck::Refused(why) if why.contains("no longer on")
        ));
        assert!(matches!(
            run(&event, &writer(), &current(A, &[LABEL], PullRequestState::Closed)),
            ApprovalCheck::Refused(why) if why.contains("no longer open")
        ));
        // An abbreviated SHA is never recorded as an approval.
        assert!(matches!(
            judge(&labeled("aaaaaaa", Some("m")), "aaaaaaa", LABEL, &writer(), Ok(&open), "w"),
            ApprovalCheck::Refused(why) if why.contains("full commit SHA")
        ));
        assert!(is_full_sha(&"A".repeat(64)));
        assert!(!is_full_sha(&"g".repeat(40)));
    }

    #[tokio::test]
    async fn without_github_nothing_is_approved() {
        let event = labeled(A, Some("maintainer"));
        assert!(matches!(
            check(None, &event, A, LABEL).await,
            ApprovalCheck::Refused(why) if why.contains("credentials")
        ));
    }
}
