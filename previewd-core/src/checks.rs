//! Waiting for CI: what is known about a commit's checks, and whether it may be
//! deployed.
//!
//! A repository may name required checks: check runs, commit status contexts, or the
//! name of a GitHub App whose check suite must pass. Their states arrive from the
//! `check_run`, `check_suite` and `status` webhooks and from a fallback poll of the
//! GitHub API, and are recorded per head commit in [`RecordedChecks`]. [`gate`] turns
//! them into a verdict: deploy, wait, or fail with the name of the failed check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The state of one check as far as the gate is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// Queued, running, or a status `pending`.
    Pending,
    /// Completed with `success`, `neutral` or `skipped`; a status `success`.
    Success,
    /// Completed with any other conclusion; a status `failure` or `error`.
    Failure,
}

impl CheckState {
    /// The state of a check run or check suite from its `status` and `conclusion`.
    pub fn of_check(status: &str, conclusion: Option<&str>) -> CheckState {
        if status != "completed" {
            return CheckState::Pending;
        }
        match conclusion {
            Some("success" | "neutral" | "skipped") => CheckState::Success,
            // `failure`, `timed_out`, `cancelled`, `action_required`, `startup_failure`,
            // `stale`, and anything GitHub adds: not a pass.
            Some(_) => CheckState::Failure,
            None => CheckState::Pending,
        }
    }

    /// The state of a commit status from its `state`.
    pub fn of_status(state: &str) -> CheckState {
        match state {
            "success" => CheckState::Success,
            "failure" | "error" => CheckState::Failure,
            _ => CheckState::Pending,
        }
    }

    /// Lower-case name, as recorded.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Success => "success",
            CheckState::Failure => "failure",
        }
    }
}

/// One recorded check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// Its state.
    pub state: CheckState,
    /// When GitHub says it reached that state (RFC 3339); an older report never
    /// replaces a newer one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
}

/// What is known about the checks of one commit (the `previewd.io/checks` annotation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedChecks {
    /// The commit.
    pub sha: String,
    /// Required checks seen so far, by name.
    #[serde(default)]
    pub checks: BTreeMap<String, CheckRecord>,
}

impl RecordedChecks {
    /// Records `state` of `name` at `at` for `sha`: a new commit starts afresh; an
    /// older report of the same check is ignored. Returns whether anything changed.
    pub fn record(&mut self, sha: &str, name: &str, state: CheckState, at: &str) -> bool {
        if self.sha != sha {
            *self = RecordedChecks {
                sha: sha.to_string(),
                checks: BTreeMap::new(),
            };
        }
        let new = CheckRecord {
            state,
            at: at.to_string(),
        };
        match self.checks.get(name) {
            Some(old) if old == &new => false,
            // Timestamps are RFC 3339 in UTC with `Z` (normalised by the callers), so they
            // compare as text. At the same second, a finished check is not undone by a
            // report that it is queued (GitHub stamps both with the start time).
            Some(old)
                if !old.at.is_empty()
                    && !at.is_empty()
                    && (at < old.at.as_str()
                        || (at == old.at
                            && state == CheckState::Pending
                            && old.state != CheckState::Pending)) =>
            {
                false
            }
            _ => {
                self.checks.insert(name.to_string(), new);
                true
            }
        }
    }

    /// The records of `other` for the same commit merged in (newest wins); an empty
    /// record takes `other` whole.
    pub fn merged(mut self, other: &RecordedChecks) -> RecordedChecks {
        if self.sha.is_empty() {
            return other.clone();
        }
        if other.sha == self.sha {
            for (name, record) in &other.checks {
                self.record(&other.sha, name, record.state, &record.at);
            }
        }
        self
    }
}

/// The gate's verdict for a head commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// No checks are required, or all of them passed.
    Open,
    /// Some required checks have not finished (or not been seen); their names.
    Waiting(Vec<String>),
    /// A required check failed; its name.
    Failed(String),
}

/// The verdict for `head_sha` given the required check names and what is recorded.
/// A failure wins over waiting, so a failed build is reported at once.
pub fn gate(required: &[String], head_sha: &str, recorded: &RecordedChecks) -> Gate {
    if required.is_empty() {
        return Gate::Open;
    }
    let current = recorded.sha == head_sha;
    let mut waiting = Vec::new();
    for name in required {
        match current.then(|| recorded.checks.get(name)).flatten() {
            Some(CheckRecord {
                state: CheckState::Failure,
                ..
            }) => return Gate::Failed(name.clone()),
            Some(CheckRecord {
                state: CheckState::Success,
                ..
            }) => {}
            _ => waiting.push(name.clone()),
        }
    }
    if waiting.is_empty() {
        Gate::Open
    } else {
        Gate::Waiting(waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn states_follow_githubs_conclusions() {
        assert_eq!(CheckState::of_check("queued", None), CheckState::Pending);
        assert_eq!(
            CheckState::of_check("in_progress", None),
            CheckState::Pending
        );
        for ok in ["success", "neutral", "skipped"] {
            assert_eq!(
                CheckState::of_check("completed", Some(ok)),
                CheckState::Success
            );
        }
        for bad in [
            "failure",
            "timed_out",
            "cancelled",
            "action_required",
            "startup_failure",
            "stale",
            "something_new",
        ] {
            assert_eq!(
                CheckState::of_check("completed", Some(bad)),
                CheckState::Failure
            );
        }
        assert_eq!(CheckState::of_status("success"), CheckState::Success);
        assert_eq!(CheckState::of_status("error"), CheckState::Failure);
        assert_eq!(CheckState::of_status("failure"), CheckState::Failure);
        assert_eq!(CheckState::of_status("pending"), CheckState::Pending);
    }

    #[test]
    fn nothing_required_is_open() {
        assert_eq!(gate(&[], SHA, &RecordedChecks::default()), Gate::Open);
    }

    #[test]
    fn waits_for_every_required_check_of_the_head_commit() {
        let required = names(&["build", "lint"]);
        let mut r = RecordedChecks::default();
        assert_eq!(
            gate(&required, SHA, &r),
            Gate::Waiting(names(&["build", "lint"]))
        );
        r.record(SHA, "build", CheckState::Success, "2026-11-29T12:00:00Z");
        assert_eq!(gate(&required, SHA, &r), Gate::Waiting(names(&["lint"])));
        r.record(SHA, "lint", CheckState::Pending, "2026-11-29T12:00:00Z");
        assert_eq!(gate(&required, SHA, &r), Gate::Waiting(names(&["lint"])));
        r.record(SHA, "lint", CheckState::Success, "2026-11-29T12:01:00Z");
        assert_eq!(gate(&required, SHA, &r), Gate::Open);
        // Checks of another commit say nothing about this one.
        assert_eq!(
            gate(&required, "ffff", &r),
            Gate::Waiting(names(&["build", "lint"]))
        );
    }

    #[test]
    fn a_failed_check_fails_at_once() {
        let required = names(&["build", "lint"]);
        let mut r = RecordedChecks::default();
        r.record(SHA, "lint", CheckState::Failure, "2026-11-29T12:00:00Z");
        assert_eq!(gate(&required, SHA, &r), Gate::Failed("lint".into()));
    }

    #[test]
    fn older_reports_never_replace_newer_ones_and_a_new_commit_starts_afresh() {
        let mut r = RecordedChecks::default();
        assert!(r.record(SHA, "build", CheckState::Success, "2026-11-29T12:05:00Z"));
        assert!(!r.record(SHA, "build", CheckState::Pending, "2026-11-29T12:00:00Z"));
        assert!(!r.record(SHA, "build", CheckState::Success, "2026-11-29T12:05:00Z"));
        assert_eq!(r.checks["build"].state, CheckState::Success);
        // Queued at the same second as the failure: the failure stands; a success at
        // that second (a re-run) replaces it.
        assert!(r.record(SHA, "lint", CheckState::Failure, "2026-11-29T12:05:00Z"));
        assert!(!r.record(SHA, "lint", CheckState::Pending, "2026-11-29T12:05:00Z"));
        assert!(r.record(SHA, "lint", CheckState::Success, "2026-11-29T12:05:00Z"));
        // A re-run reports later and wins.
        assert!(r.record(SHA, "build", CheckState::Failure, "2026-11-29T12:09:00Z"));
        assert!(r.record("ffff", "lint", CheckState::Pending, ""));
        assert_eq!(r.sha, "ffff");
        assert_eq!(r.checks.len(), 1);
    }

    #[test]
    fn merging_keeps_the_newest_of_each_check() {
        let mut webhook = RecordedChecks::default();
        webhook.record(SHA, "build", CheckState::Pending, "2026-11-29T12:00:00Z");
        let mut polled = RecordedChecks::default();
        polled.record(SHA, "build", CheckState::Success, "2026-11-29T12:03:00Z");
        polled.record(SHA, "lint", CheckState::Success, "2026-11-29T12:02:00Z");
        let merged = webhook.clone().merged(&polled);
        assert_eq!(merged.checks["build"].state, CheckState::Success);
        assert_eq!(merged.checks.len(), 2);
        // Another commit's poll does not mix in; an empty record takes the other.
        let mut other = RecordedChecks::default();
        other.record("ffff", "build", CheckState::Failure, "2026-11-29T12:09:00Z");
        assert_eq!(webhook.clone().merged(&other), webhook);
        assert_eq!(RecordedChecks::default().merged(&polled), polled);
    }
}
