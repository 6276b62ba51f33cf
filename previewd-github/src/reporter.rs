//! Reports environment changes to GitHub: the `previewd` commit status, a transient
//! GitHub Deployment per PR and commit in the repository's one shared `preview`
//! environment (its payload names the PR; its URL is the PR's "View deployment"), and
//! the sticky PR comment. Implements the controller's [`EnvironmentReporter`].
//!
//! The controller must never wait on GitHub, so each call only records the pull
//! request's latest state in a queue that holds one state per pull request; one lane
//! sends them under GitHub's secondary limits ([`GitHubReporter`]). A burst of phase
//! changes collapses into the last one and an older state is never written after a
//! newer one. Transient failures (rate limits, outages, timeouts) are retried with a
//! capped exponential backoff (2 s doubling up to 5 min) until the report is delivered
//! or a newer state replaces it; permanent failures (401, 403, 404, 422) are logged and
//! counted, and the next phase change reports again. Deployments and the sticky comment
//! are found before they are created, so a retry never makes a duplicate.
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
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
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

/// The report tokens of one pull request the reporter has seen.
#[derive(Default)]
struct Tokens {
    /// The last token queued (queued or being sent).
    queued: Option<String>,
    /// The last token delivered (or failed for good) and confirmed.
    delivered: Option<String>,
}

/// Pull requests are keyed by repository and number.
type Key = (RepoRef, u64);

/// The latest state of one pull request, waiting for the lane.
struct Pending {
    report: Report,
    confirm: Option<Confirm>,
    view: EnvironmentView,
    deleted: bool,
    /// Since when this pull request has had something unsent (a newer state replacing an
    /// older one keeps the older one's time).
    since: Instant,
    /// Not sent before this (a retry's backoff).
    not_before: Instant,
    /// The next retry's backoff.
    wait: Duration,
}

impl Pending {
    /// Final states go first: the pull request's environment is Ready, Complete or
    /// Failed, or it is gone. Pending, Provisioning, Testing and Terminating are
    /// intermediate.
    fn is_final(&self) -> bool {
        self.deleted
            || matches!(
                self.view.phase,
                Some(Phase::Ready | Phase::Complete | Phase::Failed)
            )
    }
}

#[derive(Default)]
struct Queue {
    /// The latest unsent state of each pull request: at most one each, so a superseded
    /// state is never sent.
    pending: HashMap<Key, Pending>,
    tokens: HashMap<Key, Tokens>,
    /// The pull request the lane is sending now, and since when it has had something
    /// unsent.
    sending: Option<(Key, Instant)>,
}

impl Queue {
    /// The next pull request to send at `now`: final states first, then the oldest.
    /// `Err` holds the earliest time one becomes due (`None`: nothing pending).
    fn pick(&mut self, now: Instant) -> Result<(Key, Pending), Option<Instant>> {
        let next = self
            .pending
            .iter()
            .filter(|(_, p)| p.not_before <= now)
            .min_by_key(|(_, p)| (!p.is_final(), p.since))
            .map(|(k, _)| k.clone());
        match next.and_then(|k| self.pending.remove_entry(&k)) {
            Some(found) => {
                self.sending = Some((found.0.clone(), found.1.since));
                Ok(found)
            }
            None => Err(self.pending.values().map(|p| p.not_before).min()),
        }
    }

    /// Pull requests with something unsent, the one being sent included.
    fn backlog(&self) -> usize {
        let sending_only = self
            .sending
            .as_ref()
            .is_some_and(|(key, _)| !self.pending.contains_key(key));
        self.pending.len() + usize::from(sending_only)
    }

    /// How long the oldest unsent state has waited, the one being sent included.
    fn oldest(&self, now: Instant) -> Duration {
        self.pending
            .values()
            .map(|p| p.since)
            .chain(self.sending.as_ref().map(|(_, since)| *since))
            .map(|since| now.saturating_duration_since(since))
            .max()
            .unwrap_or_default()
    }

    /// Sets the backlog gauges.
    fn show(&self, inner: &Inner, now: Instant) {
        inner
            .backlog
            .set(i64::try_from(self.backlog()).unwrap_or(i64::MAX));
        inner
            .oldest_pending
            .set(i64::try_from(self.oldest(now).as_secs()).unwrap_or(i64::MAX));
    }
}

struct Inner {
    scm: Arc<dyn SourceControl>,
    log_url_base: Option<String>,
    queue: Mutex<Queue>,
    /// Wakes the lane: something was queued.
    wake: Notify,
    /// Wakes [`GitHubReporter::idle`] waiters: the lane finished something.
    progressed: Notify,
    lane: std::sync::Once,
    /// Confirmations sent again outside the lane.
    tracker: TaskTracker,
    deployments: moka::sync::Cache<(RepoRef, u64, String), DeploymentId>,
    last_sent: moka::sync::Cache<(RepoRef, u64), Report>,
    retry_base: Duration,
    failures: Counter,
    refused: Counter,
    superseded: Counter,
    delivered: Counter,
    backlog: Gauge,
    oldest_pending: Gauge,
    acknowledger: OnceLock<Arc<dyn ReportAcknowledger>>,
    authoriser: OnceLock<Arc<dyn ReportAuthoriser>>,
}

/// Reports environments to GitHub in the background. Cheap to clone.
///
/// One lane sends every report, one pull request at a time, under the GitHub client's
/// budget for GitHub's secondary limits ([`crate::client::budget`]). Only the latest
/// state of each pull request waits (a newer state replaces the waiting one, and one
/// being sent stops before its next write); final states (Ready, Complete, Failed,
/// gone) go before intermediate ones, then the oldest first. A pull request whose
/// environment is gone before anything was said about it costs no write: a deletion
/// edits the deployment and the comment only if they exist.
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

/// How often the backlog gauges are refreshed while the lane waits.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

impl GitHubReporter {
    /// A reporter writing through `scm`. `log_url_base`, when set, links deployment
    /// statuses to `<base>/<namespace>/<name>` (e.g. a dashboard).
    pub fn new(scm: Arc<dyn SourceControl>, log_url_base: Option<String>) -> Self {
        GitHubReporter {
            inner: Arc::new(Inner {
                scm,
                log_url_base,
                queue: Mutex::new(Queue::default()),
                wake: Notify::new(),
                progressed: Notify::new(),
                lane: std::sync::Once::new(),
                tracker: TaskTracker::new(),
                deployments: moka::sync::Cache::builder().max_capacity(10_000).build(),
                last_sent: moka::sync::Cache::builder().max_capacity(10_000).build(),
                retry_base: Duration::from_secs(2),
                failures: Counter::default(),
                refused: Counter::default(),
                superseded: Counter::default(),
                delivered: Counter::default(),
                backlog: Gauge::default(),
                oldest_pending: Gauge::default(),
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

    /// States replaced by a newer one of the same pull request before they were sent.
    pub fn superseded(&self) -> u64 {
        self.inner.superseded.get()
    }

    /// Pull requests with a state waiting to be sent (the one being sent included).
    pub fn backlog(&self) -> usize {
        lock(&self.inner.queue).backlog()
    }

    /// Registers the reporter's metrics in `registry` (`previewd_github_report_*`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let sub = registry.sub_registry_with_prefix("previewd_github");
        sub.register(
            "report_failures",
            "Failed attempts to report an environment to GitHub (transient ones are retried)",
            self.inner.failures.clone(),
        );
        sub.register(
            "reports_refused",
            "Reports not sent because no repository claim authorises the environment any more",
            self.inner.refused.clone(),
        );
        sub.register(
            "reports_superseded",
            "Reports replaced by a newer state of the same pull request before they were sent",
            self.inner.superseded.clone(),
        );
        sub.register(
            "reports_delivered",
            "Reports delivered to GitHub",
            self.inner.delivered.clone(),
        );
        sub.register(
            "report_backlog",
            "Pull requests whose latest state is not reported to GitHub yet",
            self.inner.backlog.clone(),
        );
        sub.register(
            "report_oldest_pending_seconds",
            "Age of the oldest state not reported to GitHub yet",
            self.inner.oldest_pending.clone(),
        );
    }

    /// Reports dropped because the environment was no longer authorised.
    pub fn refused(&self) -> u64 {
        self.inner.refused.get()
    }

    /// Waits until every report queued so far was sent (or given up).
    pub async fn idle(&self) {
        loop {
            let progressed = self.inner.progressed.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            {
                let queue = lock(&self.inner.queue);
                if queue.pending.is_empty() && queue.sending.is_none() {
                    break;
                }
            }
            progressed.await;
        }
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
        // A deletion is never confirmed: the environment is gone once it is reported.
        let confirm = match (&env.report_token, self.inner.acknowledger.get(), deleted) {
            (Some(token), Some(_), false) => Some(Confirm {
                env: env.clone(),
                token: token.clone(),
            }),
            _ => None,
        };
        let now = Instant::now();
        {
            let mut queue = lock(&self.inner.queue);
            if let Some(confirm) = &confirm {
                let tokens = queue.tokens.entry(key.clone()).or_default();
                if tokens.delivered.as_ref() == Some(&confirm.token) {
                    // Delivered before, and the confirmation did not reach the status:
                    // confirm again, without calling GitHub.
                    drop(queue);
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
            let since = match queue.pending.get(&key) {
                Some(older) => {
                    self.inner.superseded.inc();
                    older.since
                }
                None => now,
            };
            queue.pending.insert(
                key,
                Pending {
                    report,
                    confirm,
                    view: env.clone(),
                    deleted,
                    since,
                    not_before: now,
                    wait: self.inner.retry_base,
                },
            );
            queue.show(&self.inner, now);
        }
        self.start_lane();
        self.inner.wake.notify_one();
    }

    fn start_lane(&self) {
        self.inner.lane.call_once(|| {
            // The lane holds the reporter weakly: it ends once every handle is dropped.
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(lane(inner));
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The one lane: sends the pull requests' latest states one after the other.
async fn lane(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let now = Instant::now();
        let picked = {
            let mut queue = lock(&inner.queue);
            let picked = queue.pick(now);
            queue.show(&inner, now);
            picked
        };
        match picked {
            Ok((key, pending)) => {
                // A delivery may wait long for the budget (an hour's spent): the gauges
                // keep showing the backlog's age meanwhile.
                let delivery = deliver(&inner, &key, pending);
                tokio::pin!(delivery);
                loop {
                    tokio::select! {
                        () = &mut delivery => break,
                        () = tokio::time::sleep(GAUGE_INTERVAL) => {
                            lock(&inner.queue).show(&inner, Instant::now());
                        }
                    }
                }
                let mut queue = lock(&inner.queue);
                queue.sending = None;
                queue.show(&inner, Instant::now());
                drop(queue);
                inner.progressed.notify_waiters();
            }
            Err(due) => {
                inner.progressed.notify_waiters();
                let wake = inner.wake.notified();
                let until = due
                    .unwrap_or(now + GAUGE_INTERVAL)
                    .min(now + GAUGE_INTERVAL);
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }
}

/// Why a send stopped.
enum Stopped {
    /// A newer state of the same pull request arrived: it is sent instead.
    Superseded,
    /// GitHub answered with an error.
    Failed(SourceControlError),
}

impl From<SourceControlError> for Stopped {
    fn from(err: SourceControlError) -> Self {
        Stopped::Failed(err)
    }
}

/// Sends one pull request's state; on a transient failure puts it back with a backoff
/// unless a newer state replaced it meanwhile.
async fn deliver(inner: &Inner, key: &Key, mut pending: Pending) {
    // Asked again right before writing: the claim that allowed the report when it was
    // planned may have been revoked while it waited.
    if let Some(authoriser) = inner.authoriser.get()
        && let Err(why) = authoriser.authorise(&pending.view, pending.deleted)
    {
        inner.refused.inc();
        tracing::warn!(repository = %pending.report.repository, pr = pending.report.number, reason = %why, "not reporting to GitHub: the environment is not authorised for this repository");
        return;
    }
    match send(inner, key, &pending.report, pending.deleted).await {
        Ok(()) => {
            inner.delivered.inc();
            confirmed(inner, key, pending.confirm).await;
        }
        Err(Stopped::Superseded) => {
            inner.superseded.inc();
        }
        Err(Stopped::Failed(err)) if err.is_transient() => {
            inner.failures.inc();
            tracing::warn!(repository = %pending.report.repository, pr = pending.report.number, error = %err, retry_in = ?pending.wait, "GitHub report failed; retrying");
            let mut queue = lock(&inner.queue);
            // A newer state arrived meanwhile: it is sent instead.
            if !queue.pending.contains_key(key) {
                pending.not_before = Instant::now() + pending.wait;
                pending.wait = (pending.wait * 2).min(RETRY_CAP);
                queue.pending.insert(key.clone(), pending);
            }
        }
        Err(Stopped::Failed(err)) => {
            inner.failures.inc();
            tracing::error!(repository = %pending.report.repository, pr = pending.report.number, category = err.category(), error = %err, "GitHub report failed");
            // Sending it again cannot help; the next change reports again.
            confirmed(inner, key, pending.confirm).await;
        }
    }
}

/// Records `confirm`'s token as delivered and confirms it to the acknowledger.
async fn confirmed(inner: &Inner, key: &Key, confirm: Option<Confirm>) {
    let (Some(confirm), Some(acknowledger)) = (confirm, inner.acknowledger.get()) else {
        return;
    };
    lock(&inner.queue)
        .tokens
        .entry(key.clone())
        .or_default()
        .delivered = Some(confirm.token.clone());
    acknowledger.delivered(&confirm.env, &confirm.token).await;
}

/// Writes what changed since the last delivered report of the pull request; nothing when
/// a newer state arrived before the first write.
async fn send(inner: &Inner, key: &Key, report: &Report, deleted: bool) -> Result<(), Stopped> {
    let scm = &inner.scm;
    // Before each write: wait for the budget to allow one. Before the first, also look
    // whether a newer state replaced this one meanwhile (the wait may be long: an hour's
    // budget spent): then nothing of it is sent. A report that has started is finished
    // (at most four writes): stopping between its writes whenever a newer state arrives
    // starves its last writes (the sticky comment) while the environment keeps changing.
    let repo = &report.repository;
    let started = std::sync::atomic::AtomicBool::new(false);
    let ready = || async {
        scm.write_slot(repo).await;
        let first = !started.swap(true, std::sync::atomic::Ordering::Relaxed);
        if first && lock(&inner.queue).pending.contains_key(key) {
            Err(Stopped::Superseded)
        } else {
            Ok(())
        }
    };
    let previous = inner.last_sent.get(key);
    let same_commit = previous.as_ref().is_some_and(|p| p.sha == report.sha);
    // Identical statuses are not sent again (GitHub keeps at most 1000 per commit and
    // context, and every write costs secondary-limit points).
    if let Some(status) = &report.commit_status {
        let unchanged = same_commit
            && previous
                .as_ref()
                .is_some_and(|p| p.commit_status.as_ref() == Some(status));
        if !unchanged {
            ready().await?;
            scm.set_commit_status(repo, &report.sha, status).await?;
        }
    }
    let request = DeploymentRequest {
        git_ref: report.sha.clone(),
        environment: deployment_environment(report.number),
        description: format!("previewd environment for PR #{}", report.number),
        pull_request: report.number,
    };
    let deployment_key = (repo.clone(), report.number, report.sha.clone());
    let deployment = match inner.deployments.get(&deployment_key) {
        Some(id) => Some(id),
        // Nothing is created only to say it is gone.
        None if deleted => scm.find_deployment(repo, &request).await?,
        None => {
            ready().await?;
            Some(scm.create_deployment(repo, &request).await?)
        }
    };
    // Something was said about this PR already (a report delivered, or a deployment of
    // an earlier report that was superseded before its comment went out).
    let announced = previous.is_some() || deployment.is_some();
    if let Some(id) = deployment {
        inner.deployments.insert(deployment_key, id);
        let deployment_unchanged = same_commit
            && previous
                .as_ref()
                .is_some_and(|p| p.deployment_status == report.deployment_status);
        if !deployment_unchanged {
            ready().await?;
            scm.set_deployment_status(repo, id, &report.deployment_status)
                .await?;
        }
    }
    let comment_unchanged = previous
        .as_ref()
        .is_some_and(|p| p.comment == report.comment);
    if !comment_unchanged {
        if deleted && !announced {
            // Edits the comment only if there is one: nothing is created only to say
            // that a preview nobody heard of is gone.
            scm.update_comment(repo, report.number, &report.comment)
                .await?;
        } else {
            ready().await?;
            scm.upsert_comment(repo, report.number, &report.comment)
                .await?;
        }
    }
    inner.last_sent.insert(key.clone(), report.clone());
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

    /// A GitHub that records every write and lets a write through only when the test
    /// hands out a slot: the lane's order is observed without any timing.
    struct Recorder {
        slots: tokio::sync::Semaphore,
        writes: std::sync::Mutex<Vec<(u64, String)>>,
        deployments: std::sync::Mutex<HashMap<u64, u64>>,
        comments: std::sync::Mutex<HashMap<u64, String>>,
    }

    impl Default for Recorder {
        fn default() -> Self {
            Recorder {
                slots: tokio::sync::Semaphore::new(0),
                writes: Default::default(),
                deployments: Default::default(),
                comments: Default::default(),
            }
        }
    }

    impl Recorder {
        fn write(&self, pr: u64, what: impl Into<String>) {
            self.writes.lock().unwrap().push((pr, what.into()));
        }
        fn writes(&self) -> Vec<(u64, String)> {
            self.writes.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl SourceControl for Recorder {
        async fn pull_request(
            &self,
            _: &RepoRef,
            _: u64,
        ) -> Result<previewd_core::source_control::PullRequestInfo, SourceControlError> {
            Err(SourceControlError::Config("unused".into()))
        }
        async fn changed_files(
            &self,
            _: &RepoRef,
            _: u64,
        ) -> Result<previewd_core::source_control::ChangedFiles, SourceControlError> {
            Err(SourceControlError::Config("unused".into()))
        }
        async fn diff(
            &self,
            _: &RepoRef,
            _: u64,
        ) -> Result<previewd_core::source_control::PullRequestDiff, SourceControlError> {
            Err(SourceControlError::Config("unused".into()))
        }
        async fn write_slot(&self, _repo: &RepoRef) {
            self.slots.acquire().await.unwrap().forget();
        }
        async fn set_commit_status(
            &self,
            _: &RepoRef,
            sha: &str,
            status: &CommitStatus,
        ) -> Result<(), SourceControlError> {
            let pr = u64::from_str_radix(sha, 16).unwrap_or(0);
            self.write(pr, format!("status {}", status.state.as_str()));
            Ok(())
        }
        async fn create_deployment(
            &self,
            _: &RepoRef,
            request: &DeploymentRequest,
        ) -> Result<DeploymentId, SourceControlError> {
            assert_eq!(request.environment, "preview", "one shared environment");
            let mut deployments = self.deployments.lock().unwrap();
            if let Some(id) = deployments.get(&request.pull_request) {
                return Ok(DeploymentId(*id));
            }
            self.write(request.pull_request, "deployment");
            deployments.insert(request.pull_request, request.pull_request + 1000);
            Ok(DeploymentId(request.pull_request + 1000))
        }
        async fn find_deployment(
            &self,
            _: &RepoRef,
            request: &DeploymentRequest,
        ) -> Result<Option<DeploymentId>, SourceControlError> {
            Ok(self
                .deployments
                .lock()
                .unwrap()
                .get(&request.pull_request)
                .map(|id| DeploymentId(*id)))
        }
        async fn set_deployment_status(
            &self,
            _: &RepoRef,
            id: DeploymentId,
            status: &DeploymentStatusUpdate,
        ) -> Result<(), SourceControlError> {
            self.write(id.0 - 1000, format!("deployment {}", status.state.as_str()));
            Ok(())
        }
        async fn upsert_comment(
            &self,
            _: &RepoRef,
            number: u64,
            body: &str,
        ) -> Result<previewd_core::source_control::CommentUpsert, SourceControlError> {
            self.write(number, "comment");
            self.comments
                .lock()
                .unwrap()
                .insert(number, body.to_string());
            Ok(previewd_core::source_control::CommentUpsert::Created(
                previewd_core::source_control::CommentId(number),
            ))
        }
        async fn update_comment(
            &self,
            repo: &RepoRef,
            number: u64,
            body: &str,
        ) -> Result<Option<previewd_core::source_control::CommentUpsert>, SourceControlError>
        {
            if !self.comments.lock().unwrap().contains_key(&number) {
                return Ok(None);
            }
            self.upsert_comment(repo, number, body).await.map(Some)
        }
    }

    fn pr(number: u64, phase: &str) -> EnvironmentView {
        EnvironmentView {
            name: format!("pe-{number}"),
            pr_number: number,
            head_sha: format!("{number:x}"),
            ..env(phase, 0)
        }
    }

    /// Until the lane waits in `write_slot` with `pr` picked (nothing else to wait on).
    async fn until_waiting(reporter: &GitHubReporter) {
        for _ in 0..1000 {
            if lock(&reporter.inner.queue).sending.is_some() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the lane never picked a report");
    }

    #[tokio::test]
    async fn only_the_latest_state_of_a_pull_request_is_sent() {
        let github = Arc::new(Recorder::default());
        let reporter = GitHubReporter::new(github.clone(), None);
        reporter.environment_changed(&pr(7, "Pending")).await;
        // The lane took Pending and waits for a write slot; two newer states arrive.
        until_waiting(&reporter).await;
        reporter.environment_changed(&pr(7, "Provisioning")).await;
        reporter.environment_changed(&pr(7, "Ready")).await;
        assert_eq!(
            reporter.backlog(),
            1,
            "one pull request behind, however many of its states were replaced"
        );
        github.slots.add_permits(100);
        reporter.idle().await;
        let writes = github.writes();
        assert_eq!(
            writes,
            [
                (7, "status success".to_string()),
                (7, "deployment".to_string()),
                (7, "deployment success".to_string()),
                (7, "comment".to_string()),
            ],
            "Pending stopped before its first write, Provisioning never sent"
        );
        assert_eq!(reporter.superseded(), 2);
        assert_eq!(reporter.backlog(), 0);
    }

    #[tokio::test]
    async fn final_states_go_before_intermediate_ones() {
        let github = Arc::new(Recorder::default());
        let reporter = GitHubReporter::new(github.clone(), None);
        reporter.environment_changed(&pr(1, "Ready")).await;
        until_waiting(&reporter).await;
        // Queued while PR 1 is being sent: an older intermediate state, then a final one.
        reporter.environment_changed(&pr(2, "Provisioning")).await;
        reporter.environment_changed(&pr(3, "Failed")).await;
        github.slots.add_permits(100);
        reporter.idle().await;
        let mut order: Vec<u64> = Vec::new();
        for (pr, _) in github.writes() {
            if order.last() != Some(&pr) {
                order.push(pr);
            }
        }
        assert_eq!(order, [1, 3, 2]);
    }

    #[tokio::test]
    async fn a_pull_request_gone_before_it_was_reported_costs_no_write() {
        let github = Arc::new(Recorder::default());
        let reporter = GitHubReporter::new(github.clone(), None);
        reporter.environment_changed(&pr(5, "Provisioning")).await;
        until_waiting(&reporter).await;
        reporter.environment_deleted(&pr(5, "Terminating")).await;
        github.slots.add_permits(100);
        reporter.idle().await;
        assert_eq!(
            github.writes(),
            [],
            "nothing created only to say it is gone"
        );
        // Once reported, its deletion edits what exists.
        reporter.environment_changed(&pr(6, "Ready")).await;
        reporter.idle().await;
        reporter.environment_deleted(&pr(6, "Terminating")).await;
        reporter.idle().await;
        let writes = github.writes();
        assert_eq!(
            writes[writes.len() - 2..],
            [
                (6, "deployment inactive".to_string()),
                (6, "comment".to_string())
            ]
        );
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
