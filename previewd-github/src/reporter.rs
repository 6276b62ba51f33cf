//! Reports environment changes to GitHub: the `previewd` commit status, a transient
//! GitHub Deployment per PR (`preview/pr-<n>`) with its statuses, and the sticky PR
//! comment. Implements the controller's [`EnvironmentReporter`].
//!
//! The controller must never wait on GitHub, so each call only records the environment's
//! latest state and spawns a task. Tasks of one environment run one at a time and always
//! report the *latest* recorded state, so a burst of phase changes collapses into the
//! last one and an older state is never written after a newer one. Transient failures
//! (rate limits, outages, timeouts) are retried with a capped exponential backoff (2 s
//! doubling up to 5 min) until the report is delivered or a newer state replaces it;
//! permanent failures (401, 403, 404, 422) are logged and counted, and the next phase
//! change reports again. Deployments and the sticky comment are found before they are
//! created, so a retry never makes a duplicate.
//!
//! Given an acknowledger ([`EnvironmentReporter::acknowledge_with`]), the reporter
//! confirms each delivered report (or each that failed for good) with the view's report
//! token, and the controller keeps the report pending in the environment's status until
//! then: a report survives an operator crash. The same token sent again while queued is
//! ignored; sent again after its delivery, it is only confirmed again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use previewd_core::Phase;
use previewd_core::environment::{
    EnvironmentReporter, EnvironmentView, ReportAcknowledger, ReportAuthoriser,
};
use previewd_core::source_control::{
    CommitState, CommitStatus, DeploymentId, DeploymentRequest, DeploymentState,
    DeploymentStatusUpdate, RepoRef, SourceControl, SourceControlError, deployment_environment,
};
use prometheus_client::metrics::counter::Counter;
use tokio_util::task::TaskTracker;

use crate::comment::{CommentView, render_comment};

/// What to tell GitHub about one environment state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Repository.
    pub repository: RepoRef,
    /// PR number.
    pub number: u64,
    /// Commit the report is about.
    pub sha: String,
    /// Commit status to set, if any.
    pub commit_status: Option<CommitStatus>,
    /// Deployment status to add.
    pub deployment_status: DeploymentStatusUpdate,
    /// Body of the sticky comment.
    pub comment: String,
}

/// The report for an environment's current status (`deleted`: its finalizer ran).
/// `None` when the environment's repository is not `owner/name`.
pub fn plan_report(
    env: &EnvironmentView,
    deleted: bool,
    log_url: Option<String>,
) -> Option<Report> {
    let repository = RepoRef::parse(&env.repository)?;
    let number = Some(env.pr_number).filter(|n| *n > 0)?;
    let sha = env
        .deployed_sha
        .clone()
        .filter(|_| deleted)
        .unwrap_or_else(|| env.head_sha.clone());
    let phase = if deleted {
        Phase::Terminated
    } else {
        env.phase.unwrap_or(Phase::Pending)
    };
    let url = env.url.clone();
    let tests_failed = env.tests.as_ref().is_some_and(|t| t.failed > 0);
    let message = env.message.clone().unwrap_or_default();
    let (commit, deployment, text) = match phase {
        Phase::Pending => (
            Some(CommitState::Pending),
            DeploymentState::Queued,
            "Preview environment queued".to_string(),
        ),
        Phase::Provisioning => (
            Some(CommitState::Pending),
            DeploymentState::InProgress,
            "Preview environment is being deployed".to_string(),
        ),
        Phase::Ready => (
            Some(CommitState::Success),
            DeploymentState::Success,
            "Preview environment is ready".to_string(),
        ),
        Phase::Testing => (
            Some(CommitState::Pending),
            DeploymentState::Success,
            "Preview environment is ready; tests are running".to_string(),
        ),
        Phase::Complete => (
            Some(CommitState::Success),
            DeploymentState::Success,
            "Preview environment is ready; tests passed".to_string(),
        ),
        Phase::Failed => (
            Some(if tests_failed {
                CommitState::Failure
            } else {
                CommitState::Error
            }),
            DeploymentState::Failure,
            if message.is_empty() {
                "Preview environment failed".to_string()
            } else {
                format!("Preview environment failed: {message}")
            },
        ),
        Phase::Terminating | Phase::Terminated => (
            None,
            DeploymentState::Inactive,
            "Preview environment was deleted".to_string(),
        ),
    };
    let asleep = !deleted && env.sleeping.is_some();
    let (deployment, text) = if asleep {
        (
            DeploymentState::Inactive,
            "Preview environment is asleep (scaled to zero); push or comment /preview wake"
                .to_string(),
        )
    } else {
        (deployment, text)
    };
    let mut view = CommentView::from_environment(env);
    view.phase = Some(phase);
    if deleted {
        view.sleeping = None;
        view.expiring_soon = false;
    }
    if deleted {
        view.url = None;
        view.service_urls.clear();
    }
    Some(Report {
        commit_status: commit.map(|state| CommitStatus::new(state, text.clone(), url.clone())),
        deployment_status: DeploymentStatusUpdate {
            state: deployment,
            environment_url: if deleted { None } else { url },
            log_url,
            description: text,
        },
        comment: render_comment(&view),
        repository,
        number,
        sha,
    })
}

/// A report to confirm once delivered: the environment and its report token.
#[derive(Clone)]
struct Confirm {
    env: EnvironmentView,
    token: String,
}

/// The report tokens of one environment the reporter has seen.
#[derive(Default)]
struct Tokens {
    /// The last token queued (queued or being sent).
    queued: Option<String>,
    /// The last token delivered (or failed for good) and confirmed.
    delivered: Option<String>,
}

#[derive(Default)]
struct Slot {
    /// The latest report, its confirmation, the environment it is about and whether it
    /// is the last one (deleted).
    #[allow(clippy::type_complexity)]
    latest: Mutex<Option<(Report, Option<Confirm>, EnvironmentView, bool)>>,
    tokens: Mutex<Tokens>,
    running: tokio::sync::Mutex<()>,
}

struct Inner {
    scm: Arc<dyn SourceControl>,
    log_url_base: Option<String>,
    slots: Mutex<HashMap<(RepoRef, u64), Arc<Slot>>>,
    deployments: moka::sync::Cache<(RepoRef, u64, String), DeploymentId>,
    last_sent: moka::sync::Cache<(RepoRef, u64), Report>,
    tracker: TaskTracker,
    retry_base: Duration,
    failures: Counter,
    refused: Counter,
    acknowledger: OnceLock<Arc<dyn ReportAcknowledger>>,
    authoriser: OnceLock<Arc<dyn ReportAuthoriser>>,
}

/// Reports environments to GitHub in the background. Cheap to clone.
#[derive(Clone)]
pub struct GitHubReporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GitHubReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubReporter").finish_non_exhaustive()
    }
}

/// Longest wait between two attempts of one report.
const RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(300);

impl GitHubReporter {
    /// A reporter writing through `scm`. `log_url_base`, when set, links deployment
    /// statuses to `<base>/<namespace>/<name>` (e.g. a dashboard).
    pub fn new(scm: Arc<dyn SourceControl>, log_url_base: Option<String>) -> Self {
        GitHubReporter {
            inner: Arc::new(Inner {
                scm,
                log_url_base,
                slots: Mutex::new(HashMap::new()),
                deployments: moka::sync::Cache::builder().max_capacity(10_000).build(),
                last_sent: moka::sync::Cache::builder().max_capacity(10_000).build(),
                tracker: TaskTracker::new(),
                retry_base: Duration::from_secs(2),
                failures: Counter::default(),
                refused: Counter::default(),
                acknowledger: OnceLock::new(),
                authoriser: OnceLock::new(),
            }),
        }
    }

    /// Sets the first wait between attempts (doubles each time); default 2 s.
    pub fn with_retry_base(self, retry_base: Duration) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.retry_base = retry_base;
                GitHubReporter {
                    inner: Arc::new(inner),
                }
            }
            Err(shared) => GitHubReporter { inner: shared },
        }
    }

    /// Failed report attempts (transient failures are retried; permanent ones are not).
    pub fn failures(&self) -> u64 {
        self.inner.failures.get()
    }

    /// Registers the reporter's counters in `registry` as
    /// `previewd_github_report_failures_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry
            .sub_registry_with_prefix("previewd_github")
            .register(
                "report_failures",
                "Failed attempts to report an environment to GitHub (transient ones are retried)",
                self.inner.failures.clone(),
            );
        registry
            .sub_registry_with_prefix("previewd_github")
            .register(
                "reports_refused",
                "Reports not sent because no repository claim authorises the environment any more",
                self.inner.refused.clone(),
            );
    }

    /// Reports dropped because the environment was no longer authorised.
    pub fn refused(&self) -> u64 {
        self.inner.refused.get()
    }

    /// Waits until every report queued so far was sent (or given up).
    pub async fn idle(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.tracker.reopen();
    }

    fn enqueue(&self, env: &EnvironmentView, deleted: bool) {
        let log_url = self.inner.log_url_base.as_ref().map(|base| {
            format!(
                "{}/{}/{}",
                base.trim_end_matches('/'),
                env.namespace,
                env.name
            )
        });
        let Some(report) = plan_report(env, deleted, log_url) else {
            tracing::warn!(repository = %env.repository, "cannot report: repository is not owner/name");
            return;
        };
        let key = (report.repository.clone(), report.number);
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(key).or_default().clone()
        };
        // A deletion is never confirmed: the environment is gone once it is reported.
        let confirm = match (&env.report_token, self.inner.acknowledger.get(), deleted) {
            (Some(token), Some(_), false) => Some(Confirm {
                env: env.clone(),
                token: token.clone(),
            }),
            _ => None,
        };
        if let Some(confirm) = &confirm {
            let mut tokens = slot.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if tokens.delivered.as_ref() == Some(&confirm.token) {
                // Delivered before, and the confirmation did not reach the status:
                // confirm again, without calling GitHub.
                drop(tokens);
                if let Some(acknowledger) = self.inner.acknowledger.get().cloned() {
                    let Confirm { env, token } = confirm.clone();
                    self.inner.tracker.spawn(async move {
                        acknowledger.delivered(&env, &token).await;
                    });
                }
                return;
            }
            if tokens.queued.as_ref() == Some(&confirm.token) {
                // Queued or being sent already.
                return;
            }
            tokens.queued = Some(confirm.token.clone());
        }
        *slot.latest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((report, confirm, env.clone(), deleted));
        let inner = self.inner.clone();
        self.inner.tracker.spawn(async move {
            let _running = slot.running.lock().await;
            let Some((report, confirm, view, deleted)) =
                slot.latest.lock().unwrap_or_else(|e| e.into_inner()).take()
            else {
                // An earlier task already sent the latest state.
                return;
            };
            // Asked again right before writing: the claim that allowed the report when
            // it was planned may have been revoked while it waited.
            if let Some(authoriser) = inner.authoriser.get()
                && let Err(why) = authoriser.authorise(&view, deleted)
            {
                inner.refused.inc();
                tracing::warn!(repository = %report.repository, pr = report.number, reason = %why, "not reporting to GitHub: the environment is not authorised for this repository");
                return;
            }
            // Transient failures (outages, rate limits, timeouts) are retried with a
            // capped exponential backoff until the report is delivered or a newer state
            // replaces it, so a long GitHub outage delays reports but never loses them.
            let mut wait = inner.retry_base;
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                match send(&inner, &report).await {
                    Ok(()) => {
                        confirmed(&inner, &slot, confirm).await;
                        return;
                    }
                    Err(err) if err.is_transient() => {
                        inner.failures.inc();
                        tracing::warn!(repository = %report.repository, pr = report.number, attempt, error = %err, retry_in = ?wait, "GitHub report failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_CAP);
                        // A newer state arrived meanwhile: its task reports it.
                        if slot.latest.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                            return;
                        }
                    }
                    Err(err) => {
                        inner.failures.inc();
                        tracing::error!(repository = %report.repository, pr = report.number, category = err.category(), error = %err, "GitHub report failed");
                        // Sending it again cannot help; the next change reports again.
                        confirmed(&inner, &slot, confirm).await;
                        return;
                    }
                }
            }
        });
    }
}

/// Records `confirm`'s token as delivered and confirms it to the acknowledger.
async fn confirmed(inner: &Inner, slot: &Slot, confirm: Option<Confirm>) {
    let (Some(confirm), Some(acknowledger)) = (confirm, inner.acknowledger.get()) else {
        return;
    };
    slot.tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .delivered = Some(confirm.token.clone());
    acknowledger.delivered(&confirm.env, &confirm.token).await;
}

async fn send(inner: &Inner, report: &Report) -> Result<(), SourceControlError> {
    let scm = &inner.scm;
    let repo = &report.repository;
    let key = (repo.clone(), report.number);
    let previous = inner.last_sent.get(&key);
    let same_commit = previous.as_ref().is_some_and(|p| p.sha == report.sha);
    // Identical statuses are not sent again (GitHub keeps at most 1000 per commit and
    // context, and every write costs secondary-limit points).
    if let Some(status) = &report.commit_status {
        let unchanged = same_commit
            && previous
                .as_ref()
                .is_some_and(|p| p.commit_status.as_ref() == Some(status));
        if !unchanged {
            scm.set_commit_status(repo, &report.sha, status).await?;
        }
    }
    let deployment_key = (repo.clone(), report.number, report.sha.clone());
    let deployment = match inner.deployments.get(&deployment_key) {
        Some(id) => id,
        None => {
            let id = scm
                .create_deployment(
                    repo,
                    &DeploymentRequest {
                        git_ref: report.sha.clone(),
                        environment: deployment_environment(report.number),
                        description: format!("previewd environment for PR #{}", report.number),
                    },
                )
                .await?;
            inner.deployments.insert(deployment_key, id);
            id
        }
    };
    let deployment_unchanged = same_commit
        && previous
            .as_ref()
            .is_some_and(|p| p.deployment_status == report.deployment_status);
    if !deployment_unchanged {
        scm.set_deployment_status(repo, deployment, &report.deployment_status)
            .await?;
    }
    scm.upsert_comment(repo, report.number, &report.comment)
        .await?;
    inner.last_sent.insert(key, report.clone());
    Ok(())
}

#[async_trait]
impl EnvironmentReporter for GitHubReporter {
    async fn environment_changed(&self, env: &EnvironmentView) {
        self.enqueue(env, false);
    }

    async fn environment_deleted(&self, env: &EnvironmentView) {
        self.enqueue(env, true);
    }

    fn acknowledge_with(&self, acknowledger: Arc<dyn ReportAcknowledger>) -> bool {
        // The first acknowledger stays (a reporter is wired into one controller).
        let _ = self.inner.acknowledger.set(acknowledger);
        true
    }

    fn authorise_with(&self, authoriser: Arc<dyn ReportAuthoriser>) {
        let _ = self.inner.authoriser.set(authoriser);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    fn env(phase: &str, failed: i64) -> EnvironmentView {
        EnvironmentView {
            namespace: "previews".into(),
            name: "pe".into(),
            repository: "acme/shop".into(),
            pr_number: 7,
            branch: "feat".into(),
            head_sha: "abcdef1234567".into(),
            phase: Some(phase.parse().unwrap()),
            url: Some("https://pr-7.preview.acme.dev".into()),
            tests: Some(previewd_core::environment::TestResults {
                total: 3,
                passed: 3 - failed,
                failed,
                skipped: 0,
                ..Default::default()
            }),
            ..EnvironmentView::default()
        }
    }

    #[test]
    fn phases_map_to_statuses() {
        let r = plan_report(&env("Provisioning", 0), false, None).unwrap();
        assert_eq!(r.commit_status.unwrap().state, CommitState::Pending);
        assert_eq!(r.deployment_status.state, DeploymentState::InProgress);
        let r = plan_report(&env("Ready", 0), false, None).unwrap();
        assert_eq!(
            r.commit_status.as_ref().unwrap().state,
            CommitState::Success
        );
        assert_eq!(
            r.commit_status.unwrap().target_url.as_deref(),
            Some("https://pr-7.preview.acme.dev")
        );
        assert_eq!(
            r.deployment_status.environment_url.as_deref(),
            Some("https://pr-7.preview.acme.dev")
        );
        let r = plan_report(&env("Failed", 2), false, None).unwrap();
        assert_eq!(r.commit_status.unwrap().state, CommitState::Failure);
        let r = plan_report(&env("Failed", 0), false, None).unwrap();
        assert_eq!(r.commit_status.unwrap().state, CommitState::Error);
        let r = plan_report(&env("Ready", 0), true, Some("https://d/x".into())).unwrap();
        assert!(r.commit_status.is_none());
        assert_eq!(r.deployment_status.state, DeploymentState::Inactive);
        assert_eq!(r.deployment_status.environment_url, None);
        assert_eq!(r.deployment_status.log_url.as_deref(), Some("https://d/x"));
        assert!(r.comment.contains("Terminated"));
        assert!(!r.comment.contains("https://pr-7"));
    }

    mod mocked {
        //! Error paths of the reporter against a `mockall` mock of `SourceControl`.
        #![allow(clippy::unwrap_used)]
        use super::*;
        use mockall::Sequence;
        use previewd_core::source_control::{
            ChangedFiles, CommentId, CommentUpsert, CommitStatus, DeploymentId, DeploymentRequest,
            DeploymentStatusUpdate, PullRequestDiff, PullRequestInfo, RepoRef,
        };

        mockall::mock! {
            Scm {}
            #[async_trait]
            impl SourceControl for Scm {
                async fn pull_request(&self, repo: &RepoRef, number: u64) -> Result<PullRequestInfo, SourceControlError>;
                async fn changed_files(&self, repo: &RepoRef, number: u64) -> Result<ChangedFiles, SourceControlError>;
                async fn diff(&self, repo: &RepoRef, number: u64) -> Result<PullRequestDiff, SourceControlError>;
                async fn set_commit_status(&self, repo: &RepoRef, sha: &str, status: &CommitStatus) -> Result<(), SourceControlError>;
                async fn create_deployment(&self, repo: &RepoRef, request: &DeploymentRequest) -> Result<DeploymentId, SourceControlError>;
                async fn set_deployment_status(&self, repo: &RepoRef, deployment: DeploymentId, status: &DeploymentStatusUpdate) -> Result<(), SourceControlError>;
                async fn upsert_comment(&self, repo: &RepoRef, number: u64, body: &str) -> Result<CommentUpsert, SourceControlError>;
            }
        }

        fn delivering(scm: &mut MockScm) {
            scm.expect_create_deployment()
                .times(1)
                .returning(|_, _| Ok(DeploymentId(41)));
            scm.expect_set_deployment_status()
                .times(1)
                .returning(|_, _, _| Ok(()));
            scm.expect_upsert_comment()
                .times(1)
                .returning(|_, _, _| Ok(CommentUpsert::Created(CommentId(5))));
        }

        #[tokio::test]
        async fn a_rate_limited_report_is_retried_until_delivered() {
            let mut scm = MockScm::new();
            let mut seq = Sequence::new();
            scm.expect_set_commit_status()
                .times(2)
                .in_sequence(&mut seq)
                .returning(|_, _, _| {
                    Err(SourceControlError::RateLimited {
                        retry_after_secs: Some(60),
                    })
                });
            scm.expect_set_commit_status()
                .times(1)
                .in_sequence(&mut seq)
                .returning(|_, _, _| Ok(()));
            delivering(&mut scm);
            let reporter =
                GitHubReporter::new(Arc::new(scm), None).with_retry_base(Duration::from_millis(1));
            reporter.environment_changed(&env("Ready", 0)).await;
            reporter.idle().await;
            assert_eq!(reporter.failures(), 2);
            // The mock checks on drop that every write happened exactly as expected.
        }

        #[tokio::test]
        async fn a_refused_report_is_not_retried() {
            let mut scm = MockScm::new();
            scm.expect_set_commit_status()
                .times(1)
                .returning(|_, _, _| {
                    Err(SourceControlError::Forbidden(
                        "Resource not accessible by integration".into(),
                    ))
                });
            scm.expect_create_deployment().never();
            scm.expect_upsert_comment().never();
            let reporter =
                GitHubReporter::new(Arc::new(scm), None).with_retry_base(Duration::from_millis(1));
            reporter.environment_changed(&env("Ready", 0)).await;
            reporter.idle().await;
            assert_eq!(reporter.failures(), 1);
        }

        #[tokio::test]
        async fn an_outage_in_the_middle_resends_from_the_start_without_a_second_deployment() {
            let mut scm = MockScm::new();
            scm.expect_set_commit_status()
                .times(2)
                .returning(|_, _, _| Ok(()));
            scm.expect_create_deployment()
                .times(1)
                .returning(|_, _| Ok(DeploymentId(41)));
            let mut seq = Sequence::new();
            scm.expect_set_deployment_status()
                .times(1)
                .in_sequence(&mut seq)
                .returning(|_, _, _| Err(SourceControlError::Unavailable("502".into())));
            scm.expect_set_deployment_status()
                .times(1)
                .in_sequence(&mut seq)
                .returning(|_, _, _| Ok(()));
            scm.expect_upsert_comment()
                .times(1)
                .returning(|_, _, _| Ok(CommentUpsert::Updated(CommentId(5))));
            let reporter =
                GitHubReporter::new(Arc::new(scm), None).with_retry_base(Duration::from_millis(1));
            reporter.environment_changed(&env("Ready", 0)).await;
            reporter.idle().await;
            assert_eq!(reporter.failures(), 1);
        }
    }
}
