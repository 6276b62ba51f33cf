//! Waiting for CI: the `check_run`, `check_suite` and `status` webhooks as reports of one
//! check's state on one commit. Pure; the webhook records the reports of required checks
//! on the environments at that commit (`previewd.io/checks`), and the controller's gate
//! (`previewd_core::checks::gate`) decides.

use previewd_core::checks::CheckState;

use crate::event::{CheckRunEvent, CheckSuiteEvent, StatusEvent};

/// Events that report checks.
pub const CHECK_EVENTS: &[&str] = &["check_run", "check_suite", "status"];

/// One check's state on one commit, as an event reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// Repository, `owner/name`.
    pub repository: String,
    /// Commit.
    pub sha: String,
    /// The names a required check may use for it: the check run's name, the status
    /// context, or the slug and name of the App whose check suite it is.
    pub names: Vec<String>,
    /// Its state.
    pub state: CheckState,
    /// When it reached that state (RFC 3339), when the event says.
    pub at: String,
}

/// Parses a check event's payload; `Ok(None)` for actions that report no state
/// (`requested_action`).
pub fn report_of(event: &str, payload: &[u8]) -> Result<Option<CheckReport>, serde_json::Error> {
    Ok(match event {
        "check_run" => {
            let e: CheckRunEvent = serde_json::from_slice(payload)?;
            if e.action == "requested_action" {
                return Ok(None);
            }
            let run = e.check_run;
            Some(CheckReport {
                repository: e.repository.full_name,
                sha: run.head_sha,
                names: vec![run.name],
                state: CheckState::of_check(&run.status, run.conclusion.as_deref()),
                at: utc(run.completed_at.or(run.started_at)),
            })
        }
        "check_suite" => {
            let e: CheckSuiteEvent = serde_json::from_slice(payload)?;
            let suite = e.check_suite;
            let names: Vec<String> = suite
                .app
                .map(|a| [a.slug, a.name].into_iter().flatten().collect())
                .unwrap_or_default();
            Some(CheckReport {
                repository: e.repository.full_name,
                sha: suite.head_sha,
                names,
                state: CheckState::of_check(
                    suite.status.as_deref().unwrap_or("queued"),
                    suite.conclusion.as_deref(),
                ),
                at: utc(suite.updated_at),
            })
        }
        "status" => {
            let e: StatusEvent = serde_json::from_slice(payload)?;
            Some(CheckReport {
                repository: e.repository.full_name,
                sha: e.sha,
                names: vec![e.context],
                state: CheckState::of_status(&e.state),
                at: utc(e.updated_at),
            })
        }
        _ => None,
    })
}

/// A GitHub timestamp in the one form [`previewd_core::checks::RecordedChecks`] compares
/// (`2019-05-15T15:20:55Z`; statuses say `+00:00`); unreadable or absent gives "".
pub fn utc(at: Option<String>) -> String {
    at.and_then(|a| a.parse::<jiff::Timestamp>().ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The required check `report` is about, if any.
pub fn required_name<'a>(report: &CheckReport, required: &'a [String]) -> Option<&'a str> {
    required
        .iter()
        .find(|r| report.names.iter().any(|n| n == *r))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn check_runs_suites_and_statuses_become_reports() {
        let run = json!({
            "action": "completed",
            "check_run": {"name": "build", "head_sha": "abc", "status": "completed",
                          "conclusion": "failure", "started_at": "2026-11-29T12:00:00Z",
                          "completed_at": "2026-11-29T12:05:00Z"},
            "repository": {"full_name": "acme/shop"}
        });
        let r = report_of("check_run", run.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(r.names, vec!["build".to_string()]);
        assert_eq!(r.state, CheckState::Failure);
        assert_eq!(r.at, "2026-11-29T12:05:00Z");
        assert_eq!(r.sha, "abc");
        assert_eq!(r.repository, "acme/shop");

        let suite = json!({
            "action": "completed",
            "check_suite": {"head_sha": "abc", "status": "completed", "conclusion": "success",
                            "updated_at": "2026-11-29T12:06:00Z",
                            "app": {"slug": "octocoders-linter", "name": "Octocoders Linter"}},
            "repository": {"full_name": "acme/shop"}
        });
        let r = report_of("check_suite", suite.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            r.names,
            vec![
                "octocoders-linter".to_string(),
                "Octocoders Linter".to_string()
            ]
        );
        assert_eq!(r.state, CheckState::Success);

        let status = json!({"sha": "abc", "state": "pending", "context": "ci/jenkins",
                            "updated_at": "2019-05-15T15:20:55+00:00",
                            "repository": {"full_name": "acme/shop"}});
        let r = report_of("status", status.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(r.state, CheckState::Pending);
        assert_eq!(
            required_name(&r, &["ci/jenkins".into()]),
            Some("ci/jenkins")
        );
        assert_eq!(required_name(&r, &["build".into()]), None);

        let action = json!({
            "action": "requested_action",
            "check_run": {"name": "build", "head_sha": "abc", "status": "completed"},
            "repository": {"full_name": "acme/shop"}
        });
        assert_eq!(
            report_of("check_run", action.to_string().as_bytes()).unwrap(),
            None
        );
        assert!(report_of("status", b"{}").is_err());
    }
}
