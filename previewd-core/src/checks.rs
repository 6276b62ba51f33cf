//! Waiting for CI: what is known about a commit's checks, and whether it may be
//! deployed.
//!
//! A repository may name required checks ([`RequiredCheck`]): check runs, commit status
//! contexts, or the name of a GitHub App whose check suite must pass. Their states
//! arrive from the `check_run`, `check_suite` and `status` webhooks and from a fallback
//! poll of the GitHub API, and are recorded per head commit in [`RecordedChecks`].
//! [`gate`] turns them into a verdict: deploy, wait, or fail with the name of the failed
//! check.
//!
//! # Checks bound to an App
//!
//! Anyone who can run a workflow on a commit can publish a check run or a commit status
//! of any name on it (a pull request's own GitHub Actions workflow runs as the
//! `github-actions` App), so a check matched by name alone proves little. A required
//! check with an `app` id is satisfied only by a check run or check suite of that App
//! (`check_run.app.id`, `check_suite.app.id`): never by a commit status of that name
//! (statuses carry no App), nor by another App's check run. A check without `app` is
//! matched by name from any source, as before. Bind to an App the pull request cannot act
//! as: binding to `github-actions` keeps statuses and other Apps out, but a pull
//! request's own workflow reports as `github-actions` too.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// A check a head commit must pass before it is deployed: `name` alone is matched from
/// any source; with `app`, only that GitHub App's check runs and suites count.
///
/// Entries that earlier versions stored as bare names are read as unbound checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequiredCheck {
    /// Name of the check run, commit status context, or GitHub App (slug or name) whose
    /// check suite must pass.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// Id of the GitHub App whose check run or check suite alone satisfies the check
    /// (`check_run.app.id`); commit statuses and other Apps' check runs of the same name
    /// are ignored. Unset: any check run, suite or status of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub app: Option<u64>,
}

impl RequiredCheck {
    /// A check matched by name from any source.
    pub fn named(name: impl Into<String>) -> Self {
        RequiredCheck {
            name: name.into(),
            app: None,
        }
    }

    /// A check satisfied only by check runs or suites of App `app`.
    pub fn bound(name: impl Into<String>, app: u64) -> Self {
        RequiredCheck {
            name: name.into(),
            app: Some(app),
        }
    }

    /// Whether a report named `name` from App `app` (`None`: a commit status, or a
    /// source that names no App) is about this check.
    pub fn accepts(&self, name: &str, app: Option<u64>) -> bool {
        self.name == name && self.app.is_none_or(|bound| app == Some(bound))
    }
}

impl From<&str> for RequiredCheck {
    fn from(name: &str) -> Self {
        RequiredCheck::named(name)
    }
}

impl From<String> for RequiredCheck {
    fn from(name: String) -> Self {
        RequiredCheck::named(name)
    }
}

impl<'de> Deserialize<'de> for RequiredCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Object {
            name: String,
            #[serde(default)]
            app: Option<u64>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Name(String),
            Object(Object),
        }
        match Form::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "a required check is a name or an object with `name` and an optional `app` id",
            )
        })? {
            Form::Name(name) => Ok(RequiredCheck::named(name)),
            Form::Object(Object { name, app }) => Ok(RequiredCheck { name, app }),
        }
    }
}

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
    /// Id of the GitHub App whose check run or suite reported it; unset for a commit
    /// status (and for records of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<u64>,
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
    /// Records `state` of `name` at `at` for `sha`, from a source that names no App (a
    /// commit status): see [`RecordedChecks::record_from`].
    pub fn record(&mut self, sha: &str, name: &str, state: CheckState, at: &str) -> bool {
        self.record_from(sha, name, None, state, at)
    }

    /// Records `state` of `name` at `at` for `sha`, reported by App `app`: a new commit
    /// starts afresh; an older report of the same check is ignored. Returns whether
    /// anything changed.
    pub fn record_from(
        &mut self,
        sha: &str,
        name: &str,
        app: Option<u64>,
        state: CheckState,
        at: &str,
    ) -> bool {
        if self.sha != sha {
            *self = RecordedChecks {
                sha: sha.to_string(),
                checks: BTreeMap::new(),
            };
        }
        let new = CheckRecord {
            state,
            at: at.to_string(),
            app,
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
                self.record_from(&other.sha, name, record.app, record.state, &record.at);
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

/// The verdict for `head_sha` given the required checks and what is recorded. A check
/// bound to an App counts only a record from that App (anything else leaves it
/// waiting). A failure wins over waiting, so a failed build is reported at once.
pub fn gate(required: &[RequiredCheck], head_sha: &str, recorded: &RecordedChecks) -> Gate {
    if required.is_empty() {
        return Gate::Open;
    }
    let current = recorded.sha == head_sha;
    let mut waiting = Vec::new();
    for check in required {
        let record = current
            .then(|| recorded.checks.get(&check.name))
            .flatten()
            .filter(|r| check.app.is_none_or(|bound| r.app == Some(bound)));
        match record {
            Some(CheckRecord {
                state: CheckState::Failure,
                ..
            }) => return Gate::Failed(check.name.clone()),
            Some(CheckRecord {
                state: CheckState::Success,
                ..
            }) => {}
            _ => waiting.push(check.name.clone()),
        }
    }
    if waiting.is_empty() {
        Gate::Open
    } else {
        Gate::Waiting(waiting)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn unbound(n: &[&str]) -> Vec<RequiredCheck> {
        n.iter().map(|s| RequiredCheck::named(*s)).collect()
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
        let required = unbound(&["build", "lint"]);
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
        let required = unbound(&["build", "lint"]);
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

    /// The `github-actions` App: what a pull request's own workflow reports as.
    const ACTIONS: u64 = 15368;
    const LINTER: u64 = 29310;

    #[test]
    fn a_bound_check_is_satisfied_only_by_its_app() {
        let required = vec![RequiredCheck::bound("lint", LINTER)];
        // The pull request's own workflow publishes a passing "lint" check run, and a
        // commit status of that name: neither counts.
        let mut r = RecordedChecks::default();
        r.record_from(
            SHA,
            "lint",
            Some(ACTIONS),
            CheckState::Success,
            "2026-11-29T12:00:00Z",
        );
        assert_eq!(gate(&required, SHA, &r), Gate::Waiting(names(&["lint"])));
        let mut status = RecordedChecks::default();
        status.record(SHA, "lint", CheckState::Success, "2026-11-29T12:00:00Z");
        assert_eq!(
            gate(&required, SHA, &status),
            Gate::Waiting(names(&["lint"]))
        );
        // Nor does another App's failure fail it.
        let mut failed = RecordedChecks::default();
        failed.record_from(
            SHA,
            "lint",
            Some(ACTIONS),
            CheckState::Failure,
            "2026-11-29T12:00:00Z",
        );
        assert_eq!(
            gate(&required, SHA, &failed),
            Gate::Waiting(names(&["lint"]))
        );
        // The bound App's run decides, either way.
        r.record_from(
            SHA,
            "lint",
            Some(LINTER),
            CheckState::Failure,
            "2026-11-29T12:01:00Z",
        );
        assert_eq!(gate(&required, SHA, &r), Gate::Failed("lint".into()));
        r.record_from(
            SHA,
            "lint",
            Some(LINTER),
            CheckState::Success,
            "2026-11-29T12:02:00Z",
        );
        assert_eq!(gate(&required, SHA, &r), Gate::Open);
        // An unbound check of the same name takes any source, as before.
        assert_eq!(gate(&unbound(&["lint"]), SHA, &status), Gate::Open);
    }

    #[test]
    fn a_required_check_reads_a_name_or_an_object_and_accepts_by_app() {
        let read: Vec<RequiredCheck> =
            serde_json::from_str(r#"["build", {"name": "lint", "app": 29310}, {"name": "x"}]"#)
                .unwrap();
        assert_eq!(
            read,
            vec![
                RequiredCheck::named("build"),
                RequiredCheck::bound("lint", LINTER),
                RequiredCheck::named("x"),
            ]
        );
        // Always written as objects.
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::json!([{"name": "build"}, {"name": "lint", "app": 29310}, {"name": "x"}])
        );
        assert!(serde_json::from_str::<RequiredCheck>("42").is_err());
        assert!(serde_json::from_str::<RequiredCheck>(r#"{"app": 1}"#).is_err());
        let bound = RequiredCheck::bound("lint", LINTER);
        assert!(bound.accepts("lint", Some(LINTER)));
        assert!(!bound.accepts("lint", Some(ACTIONS)));
        assert!(!bound.accepts("lint", None));
        assert!(!bound.accepts("build", Some(LINTER)));
        let any = RequiredCheck::named("lint");
        assert!(any.accepts("lint", None) && any.accepts("lint", Some(ACTIONS)));
    }

    #[test]
    fn the_app_of_a_record_is_kept_through_merges() {
        let mut polled = RecordedChecks::default();
        polled.record_from(
            SHA,
            "lint",
            Some(LINTER),
            CheckState::Success,
            "2026-11-29T12:03:00Z",
        );
        let merged = RecordedChecks::default().merged(&polled);
        assert_eq!(merged.checks["lint"].app, Some(LINTER));
        let mut webhook = RecordedChecks::default();
        webhook.record(SHA, "build", CheckState::Pending, "2026-11-29T12:00:00Z");
        let merged = webhook.merged(&polled);
        assert_eq!(merged.checks["lint"].app, Some(LINTER));
        // Records of earlier versions (no app) still read.
        let old: RecordedChecks = serde_json::from_str(
            r#"{"sha": "abc", "checks": {"build": {"state": "success", "at": "2026-11-29T12:00:00Z"}}}"#,
        )
        .unwrap();
        assert_eq!(old.checks["build"].app, None);
    }
}
