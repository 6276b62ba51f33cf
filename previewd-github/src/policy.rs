//! What a `pull_request` delivery means for the PR's environment: apply it, remove it,
//! or leave it alone. Pure; the webhook handler carries the decision out.
//!
//! Rules, in order:
//! 1. `closed` (merged or not) removes the environment.
//! 2. Actions other than `opened`, `reopened`, `synchronize`, `ready_for_review`,
//!    `labeled`, `unlabeled`, `converted_to_draft` and `edited` are ignored; `edited` only
//!    counts when the base branch changed.
//! 3. A PR that is not open gets nothing.
//! 4. Drafts are removed (and never created) when the repository skips drafts.
//! 5. With a required label, a PR without it is removed; removing the label tears the
//!    environment down.
//! 6. Fork PRs (head in another repository, or in a deleted one) follow the repository's
//!    fork policy: `Deny` removes, `Allow` applies, `RequireApproval` applies only the
//!    head commit a maintainer approved.
//!
//! # Approving fork PRs
//!
//! Approval is recorded per head commit. When someone adds the approval label (default
//! `preview/approved`), the `labeled` delivery carries the PR's head SHA at that moment;
//! this module only says that an approval of that commit was requested
//! ([`Approval::Requested`]). The webhook then checks it against GitHub before anything
//! is written ([`crate::approval`]): the sender must be a maintainer (their permission
//! on the repository, [`crate::permission`]), and the head GitHub reports now must still
//! be the payload's head, with the label still on the pull request. Only then is the
//! environment rendered for that commit and the approval recorded: the full SHA, who
//! approved and when (`previewd.io/approved-sha`, `-by`, `-at`).
//!
//! A later push to the fork (`synchronize` with another head SHA) does not move the
//! environment: it keeps serving the approved commit and the delivery is answered
//! `fork_head_not_approved`. To approve the new head, the maintainer removes the label
//! (which tears the environment down) and adds it again. The label still being present
//! on the PR never approves a commit by itself.

use previewd_core::gating::{ForkPolicy, GatingPolicy};

use crate::event::PullRequestEvent;

/// The approval an apply rests on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// None needed: a pull request from the repository itself, or forks allowed.
    NotNeeded,
    /// The fork's head commit was approved earlier and is still the head.
    Kept(String),
    /// The approval label was just added for this head commit: approved only once the
    /// webhook checked it against GitHub ([`crate::approval`]).
    Requested(String),
}

impl Approval {
    /// The fork head commit the apply is for, if it needs an approval.
    pub fn sha(&self) -> Option<&str> {
        match self {
            Approval::NotNeeded => None,
            Approval::Kept(sha) | Approval::Requested(sha) => Some(sha),
        }
    }
}

/// What to do with the PR's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Render and apply the environment, on the approval given.
    Apply {
        /// For a fork PR under `RequireApproval`: its approved (or to be approved) head.
        approval: Approval,
    },
    /// Remove the environment if it exists.
    Remove {
        /// Why, for logs and the response.
        reason: &'static str,
    },
    /// Change nothing.
    Ignore {
        /// Why, for logs and the response.
        reason: &'static str,
    },
}

/// Actions that can change an environment.
pub const HANDLED_ACTIONS: &[&str] = &[
    "opened",
    "reopened",
    "synchronize",
    "ready_for_review",
    "labeled",
    "unlabeled",
    "converted_to_draft",
    "edited",
    "closed",
];

/// Decides what `event` means, given the repository's gating policy and the fork head
/// commit approved earlier (from the existing environment), if any.
pub fn decide(
    event: &PullRequestEvent,
    gating: &GatingPolicy,
    previously_approved_sha: Option<&str>,
) -> Decision {
    let action = event.action.as_str();
    if action == "closed" {
        return Decision::Remove {
            reason: if event.merged() { "merged" } else { "closed" },
        };
    }
    if !HANDLED_ACTIONS.contains(&action) {
        return Decision::Ignore {
            reason: "action_not_handled",
        };
    }
    if action == "edited"
        && event
            .changes
            .as_ref()
            .and_then(|c| c.base.as_ref())
            .is_none()
    {
        return Decision::Ignore {
            reason: "edit_without_base_change",
        };
    }
    if event.pull_request.state != "open" {
        return Decision::Ignore {
            reason: "pull_request_not_open",
        };
    }
    if event.pull_request.draft && gating.skip_drafts {
        return Decision::Remove { reason: "draft" };
    }
    if let Some(required) = &gating.required_label
        && !event.has_label(required)
    {
        return Decision::Remove {
            reason: "missing_required_label",
        };
    }
    if !event.is_fork() {
        return Decision::Apply {
            approval: Approval::NotNeeded,
        };
    }
    match gating.forks {
        ForkPolicy::Allow => Decision::Apply {
            approval: Approval::NotNeeded,
        },
        ForkPolicy::Deny => Decision::Remove {
            reason: "fork_denied",
        },
        ForkPolicy::RequireApproval => {
            let head = event.pull_request.head.sha.as_str();
            let approval_event = event
                .label
                .as_ref()
                .is_some_and(|l| l.name == gating.approval_label);
            if approval_event && action == "labeled" {
                Decision::Apply {
                    approval: Approval::Requested(head.to_string()),
                }
            } else if approval_event && action == "unlabeled" {
                Decision::Remove {
                    reason: "fork_approval_removed",
                }
            } else if previously_approved_sha == Some(head) {
                Decision::Apply {
                    approval: Approval::Kept(head.to_string()),
                }
            } else if previously_approved_sha.is_some() {
                Decision::Ignore {
                    reason: "fork_head_not_approved",
                }
            } else {
                Decision::Ignore {
                    reason: "fork_not_approved",
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(action: &str) -> serde_json::Value {
        json!({
            "action": action,
            "number": 7,
            "pull_request": {
                "number": 7, "state": "open", "draft": false, "merged": false,
                "updated_at": "2024-01-01T00:00:00Z", "title": "t",
                "user": {"login": "dev"},
                "head": {"ref": "feat", "sha": "aaaaaaa", "repo": {"full_name": "acme/shop"}},
                "base": {"ref": "main", "sha": "bbbbbbb", "repo": {"full_name": "acme/shop"}},
                "labels": []
            },
            "repository": {"full_name": "acme/shop"}
        })
    }

    fn parse(v: serde_json::Value) -> PullRequestEvent {
        serde_json::from_value(v).unwrap()
    }

    fn fork(mut v: serde_json::Value) -> serde_json::Value {
        v["pull_request"]["head"]["repo"] = json!({"full_name": "mallory/shop", "fork": true});
        v
    }

    #[test]
    fn lifecycle_actions() {
        let g = GatingPolicy::default();
        assert_eq!(
            decide(&parse(event("opened")), &g, None),
            Decision::Apply {
                approval: Approval::NotNeeded
            }
        );
        let mut closed = event("closed");
        closed["pull_request"]["state"] = json!("closed");
        assert_eq!(
            decide(&parse(closed.clone()), &g, None),
            Decision::Remove { reason: "closed" }
        );
        closed["pull_request"]["merged"] = json!(true);
        assert_eq!(
            decide(&parse(closed), &g, None),
            Decision::Remove { reason: "merged" }
        );
        assert_eq!(
            decide(&parse(event("assigned")), &g, None),
            Decision::Ignore {
                reason: "action_not_handled"
            }
        );
        assert_eq!(
            decide(&parse(event("edited")), &g, None),
            Decision::Ignore {
                reason: "edit_without_base_change"
            }
        );
        let mut base_change = event("edited");
        base_change["changes"] = json!({"base": {"ref": {"from": "develop"}}});
        assert_eq!(
            decide(&parse(base_change), &g, None),
            Decision::Apply {
                approval: Approval::NotNeeded
            }
        );
    }

    #[test]
    fn drafts_are_skipped_unless_allowed() {
        let mut draft = event("converted_to_draft");
        draft["pull_request"]["draft"] = json!(true);
        let mut g = GatingPolicy::default();
        assert_eq!(
            decide(&parse(draft.clone()), &g, None),
            Decision::Remove { reason: "draft" }
        );
        g.skip_drafts = false;
        assert_eq!(
            decide(&parse(draft), &g, None),
            Decision::Apply {
                approval: Approval::NotNeeded
            }
        );
    }

    #[test]
    fn label_gating_uses_the_events_label() {
        let g = GatingPolicy {
            required_label: Some("preview".into()),
            ..GatingPolicy::default()
        };
        assert_eq!(
            decide(&parse(event("opened")), &g, None),
            Decision::Remove {
                reason: "missing_required_label"
            }
        );
        let mut labeled = event("labeled");
        labeled["label"] = json!({"name": "preview"});
        assert_eq!(
            decide(&parse(labeled), &g, None),
            Decision::Apply {
                approval: Approval::NotNeeded
            }
        );
        // The label list still shows the label on `unlabeled`; the event's label wins.
        let mut unlabeled = event("unlabeled");
        unlabeled["label"] = json!({"name": "preview"});
        unlabeled["pull_request"]["labels"] = json!([{"name": "preview"}]);
        assert_eq!(
            decide(&parse(unlabeled), &g, None),
            Decision::Remove {
                reason: "missing_required_label"
            }
        );
    }

    #[test]
    fn fork_prs_need_approval_per_head_commit() {
        let g = GatingPolicy::default();
        let opened = fork(event("opened"));
        assert_eq!(
            decide(&parse(opened.clone()), &g, None),
            Decision::Ignore {
                reason: "fork_not_approved"
            }
        );
        // The label being present does not approve anything on its own.
        let mut labelled_list = opened.clone();
        labelled_list["pull_request"]["labels"] = json!([{"name": "preview/approved"}]);
        assert_eq!(
            decide(&parse(labelled_list), &g, None),
            Decision::Ignore {
                reason: "fork_not_approved"
            }
        );
        let mut approve = fork(event("labeled"));
        approve["label"] = json!({"name": "preview/approved"});
        assert_eq!(
            decide(&parse(approve), &g, None),
            Decision::Apply {
                approval: Approval::Requested("aaaaaaa".into())
            }
        );
        let mut push = fork(event("synchronize"));
        assert_eq!(
            decide(&parse(push.clone()), &g, Some("aaaaaaa")),
            Decision::Apply {
                approval: Approval::Kept("aaaaaaa".into())
            }
        );
        push["pull_request"]["head"]["sha"] = json!("ccccccc");
        assert_eq!(
            decide(&parse(push.clone()), &g, Some("aaaaaaa")),
            Decision::Ignore {
                reason: "fork_head_not_approved"
            }
        );
        let mut unapprove = fork(event("unlabeled"));
        unapprove["label"] = json!({"name": "preview/approved"});
        assert_eq!(
            decide(&parse(unapprove), &g, Some("aaaaaaa")),
            Decision::Remove {
                reason: "fork_approval_removed"
            }
        );
        // Deleted fork: head.repo is null.
        let mut deleted = event("synchronize");
        deleted["pull_request"]["head"]["repo"] = json!(null);
        assert!(parse(deleted.clone()).is_fork());
        let deny = GatingPolicy {
            forks: ForkPolicy::Deny,
            ..GatingPolicy::default()
        };
        assert_eq!(
            decide(&parse(deleted.clone()), &deny, None),
            Decision::Remove {
                reason: "fork_denied"
            }
        );
        let allow = GatingPolicy {
            forks: ForkPolicy::Allow,
            ..GatingPolicy::default()
        };
        assert_eq!(
            decide(&parse(deleted), &allow, None),
            Decision::Apply {
                approval: Approval::NotNeeded
            }
        );
    }
}
