//! Waiting for CI: the `check_run`, `check_suite` and `status` webhooks as reports of one
//! check's state on one commit. Pure; the webhook records the reports of required checks
//! on the environments at that commit (`previewd.io/checks`), and the controller's gate
//! (`previewd_core::checks::gate`) decides.

use previewd_core::checks::{CheckState, RequiredCheck};

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
    /// Id of the GitHub App whose check run or suite it is; `None` for a commit status.
    pub app: Option<u64>,
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
                app: run.app.and_then(|a| a.id),
                state: CheckState::of_check(&run.status, run.conclusion.as_deref()),
                at: utc(run.completed_at.or(run.started_at)),
            })
        }
        "check_suite" => {
            let e: CheckSuiteEvent = serde_json::from_slice(payload)?;
            let suite = e.check_suite;
            let app = suite.app.unwrap_or_default();
            let id = app.id;
            let names: Vec<String> = [app.slug, app.name].into_iter().flatten().collect();
            Some(CheckReport {
                repository: e.repository.full_name,
                sha: suite.head_sha,
                names,
                app: id,
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
                app: None,
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

/// Whether `report` carries the name of a check that is bound to another App (or to an
/// App, for a commit status): what a pull request's own workflow publishing a check of
/// that name looks like.
pub fn bound_elsewhere(report: &CheckReport, required: &[RequiredCheck]) -> bool {
    required
        .iter()
        .any(|r| r.app.is_some_and(|app| report.app != Some(app)) && report.names.contains(&r.name))
}

/// The required check `report` is about, if any: one whose name the report carries and,
/// for a check bound to an App, from that App (a commit status, or another App's check
/// run of the same name, is about no bound check).
pub fn required_check<'a>(
    report: &CheckReport,
    required: &'a [RequiredCheck],
) -> Option<&'a RequiredCheck> {
    required
        .iter()
        .find(|r| report.names.iter().any(|n| r.accepts(n, report.app)))
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
        let jenkins = RequiredCheck::named("ci/jenkins");
        assert_eq!(
            required_check(&r, std::slice::from_ref(&jenkins)),
            Some(&jenkins)
        );
        assert_eq!(required_check(&r, &["build".into()]), None);
        // A status never satisfies a check bound to an App.
        assert_eq!(
            required_check(&r, &[RequiredCheck::bound("ci/jenkins", 1)]),
            None
        );

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

    #[test]
    fn a_check_bound_to_an_app_takes_reports_of_that_app_only() {
        let run = |app: u64| {
            let payload = json!({
                "action": "completed",
                "check_run": {"name": "build", "head_sha": "abc", "status": "completed",
                              "conclusion": "success", "completed_at": "2026-11-29T12:05:00Z",
                              "app": {"id": app, "slug": "some-app"}},
                "repository": {"full_name": "acme/shop"}
            });
            report_of("check_run", payload.to_string().as_bytes())
                .unwrap()
                .unwrap()
        };
        let required = [RequiredCheck::bound("build", 29310)];
        assert_eq!(run(15368).app, Some(15368));
        assert_eq!(required_check(&run(15368), &required), None);
        assert!(bound_elsewhere(&run(15368), &required));
        assert!(!bound_elsewhere(&run(29310), &required));
        assert_eq!(required_check(&run(29310), &required), Some(&required[0]));
        // Unbound, any App's run of that name counts, as before.
        assert!(required_check(&run(15368), &["build".into()]).is_some());
        // A check suite carries its App's id too.
        let suite = json!({
            "action": "completed",
            "check_suite": {"head_sha": "abc", "status": "completed", "conclusion": "success",
                            "app": {"id": 29310, "slug": "octocoders-linter"}},
            "repository": {"full_name": "acme/shop"}
        });
        let r = report_of("check_suite", suite.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(r.app, Some(29310));
        assert!(required_check(&r, &[RequiredCheck::bound("octocoders-linter", 29310)]).is_some());
        assert!(required_check(&r, &[RequiredCheck::bound("octocoders-linter", 1)]).is_none());
    }
}
