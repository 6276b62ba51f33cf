//! How long GitHub reporting takes to catch up, in simulation: the real reporter
//! ([`previewd_github::GitHubReporter`]: one state per pull request, final states first,
//! the lane) fed with the phase changes a scale run measured, writing to an in-memory
//! GitHub whose every request waits for the same secondary-limit budget the REST client
//! keeps ([`previewd_github::client::budget`]) and the same one-second spacing of
//! mutations. Time is tokio's paused clock, so an hour of GitHub's limits takes a moment
//! and the figures do not depend on the machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use previewd_core::Phase;
use previewd_core::environment::{EnvironmentReporter, EnvironmentView};
use previewd_core::source_control::{
    ChangedFiles, CommentId, CommentUpsert, CommitStatus, DeploymentId, DeploymentRequest,
    DeploymentStatusUpdate, PullRequestDiff, PullRequestInfo, RepoRef, SourceControl,
    SourceControlError,
};
use previewd_github::client::budget::{Budget, BudgetLimits};
use serde_json::{Value, json};
use tokio::time::Instant;

/// What happened to one pull request's environment, as the controller reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Entered this phase.
    Phase(Phase),
    /// Its finalizer ran.
    Deleted,
}

/// `(time since the first event, PR number, change)`.
pub type Timeline = Vec<(Duration, u64, Change)>;

/// One PR of a scale run: number, opened, Ready (if it was), closed, namespace gone (if
/// it was), each since the first delivery.
pub type PrTimes = (u64, Duration, Option<Duration>, Duration, Option<Duration>);

/// The phase changes of a scale run: each PR Pending when opened, Provisioning a moment
/// later, Ready when seen Ready, Terminating when closed and deleted when its namespace
/// was gone.
pub fn timeline(prs: &[PrTimes]) -> Timeline {
    let mut out = Vec::new();
    for &(number, opened, ready, closed, gone) in prs {
        out.push((opened, number, Change::Phase(Phase::Pending)));
        out.push((
            opened + Duration::from_millis(500),
            number,
            Change::Phase(Phase::Provisioning),
        ));
        if let Some(ready) = ready {
            out.push((ready, number, Change::Phase(Phase::Ready)));
        }
        out.push((closed, number, Change::Phase(Phase::Terminating)));
        out.push((gone.unwrap_or(closed), number, Change::Deleted));
    }
    out.sort_by_key(|(at, number, _)| (*at, *number));
    out
}

#[derive(Default)]
struct Counts {
    mutations: u64,
    reads: u64,
    deployments: HashMap<(u64, String), u64>,
    comments: HashMap<u64, String>,
    next_id: u64,
    last_mutation: Option<Instant>,
}

/// An in-memory GitHub behind the client's budget.
struct SimGitHub {
    budget: Mutex<Budget>,
    counts: Mutex<Counts>,
    gate: tokio::sync::Mutex<()>,
    spacing: Duration,
}

impl SimGitHub {
    async fn spend(&self, write: bool) {
        let _gate = if write {
            Some(self.gate.lock().await)
        } else {
            None
        };
        if write {
            let last = self
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_mutation;
            if let Some(last) = last {
                tokio::time::sleep_until(last + self.spacing).await;
            }
        }
        loop {
            let now = Instant::now();
            let at = self
                .budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ready_at(now, write);
            if at <= now {
                self.budget
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(now, write);
                break;
            }
            tokio::time::sleep_until(at).await;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if write {
            counts.mutations += 1;
            counts.last_mutation = Some(Instant::now());
        } else {
            counts.reads += 1;
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Counts) -> T) -> T {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn unused() -> SourceControlError {
    SourceControlError::Config("not used by the reporter".into())
}

#[async_trait]
impl SourceControl for SimGitHub {
    async fn pull_request(
        &self,
        _repo: &RepoRef,
        _number: u64,
    ) -> Result<PullRequestInfo, SourceControlError> {
        Err(unused())
    }

    async fn changed_files(
        &self,
        _repo: &RepoRef,
        _number: u64,
    ) -> Result<ChangedFiles, SourceControlError> {
        Err(unused())
    }

    async fn diff(
        &self,
        _repo: &RepoRef,
        _number: u64,
    ) -> Result<PullRequestDiff, SourceControlError> {
        Err(unused())
    }

    async fn set_commit_status(
        &self,
        _repo: &RepoRef,
        _sha: &str,
        _status: &CommitStatus,
    ) -> Result<(), SourceControlError> {
        self.spend(true).await;
        Ok(())
    }

    async fn create_deployment(
        &self,
        repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<DeploymentId, SourceControlError> {
        if let Some(id) = self.find_deployment(repo, request).await? {
            return Ok(id);
        }
        self.spend(true).await;
        Ok(self.with(|c| {
            c.next_id += 1;
            let id = c.next_id;
            c.deployments
                .insert((request.pull_request, request.git_ref.clone()), id);
            DeploymentId(id)
        }))
    }

    async fn write_slot(&self, _repo: &RepoRef) {
        let _gate = self.gate.lock().await;
        let last = self.with(|c| c.last_mutation);
        if let Some(last) = last {
            tokio::time::sleep_until(last + self.spacing).await;
        }
        loop {
            let now = Instant::now();
            let at = self
                .budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ready_at(now, true);
            if at <= now {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }

    async fn find_deployment(
        &self,
        _repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<Option<DeploymentId>, SourceControlError> {
        self.spend(false).await;
        Ok(self.with(|c| {
            c.deployments
                .get(&(request.pull_request, request.git_ref.clone()))
                .map(|id| DeploymentId(*id))
        }))
    }

    async fn set_deployment_status(
        &self,
        _repo: &RepoRef,
        _deployment: DeploymentId,
        _status: &DeploymentStatusUpdate,
    ) -> Result<(), SourceControlError> {
        self.spend(true).await;
        Ok(())
    }

    async fn upsert_comment(
        &self,
        _repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<CommentUpsert, SourceControlError> {
        self.spend(false).await;
        let existing = self.with(|c| c.comments.get(&number).cloned());
        match existing {
            Some(old) if old == body => Ok(CommentUpsert::Unchanged(CommentId(number))),
            Some(_) => {
                self.spend(true).await;
                self.with(|c| c.comments.insert(number, body.to_string()));
                Ok(CommentUpsert::Updated(CommentId(number)))
            }
            None => {
                self.spend(true).await;
                self.with(|c| c.comments.insert(number, body.to_string()));
                Ok(CommentUpsert::Created(CommentId(number)))
            }
        }
    }

    async fn update_comment(
        &self,
        repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<Option<CommentUpsert>, SourceControlError> {
        if self.with(|c| c.comments.contains_key(&number)) {
            self.upsert_comment(repo, number, body).await.map(Some)
        } else {
            self.spend(false).await;
            Ok(None)
        }
    }
}

fn view(number: u64, phase: Phase) -> EnvironmentView {
    EnvironmentView {
        namespace: "scenario".into(),
        name: format!("shop-pr-{number}"),
        repository: "acme/shop".into(),
        pr_number: number,
        branch: format!("feature/{number}"),
        head_sha: crate::webhook::sha(number),
        deployed_sha: Some(crate::webhook::sha(number)),
        phase: Some(phase),
        url: (phase == Phase::Ready).then(|| format!("http://pr-{number}.preview.scenario.test")),
        services: vec!["svc-0".into()],
        ..EnvironmentView::default()
    }
}

/// Replays `timeline` into the reporter under `limits`; figures as JSON.
pub fn simulate(timeline: Timeline, limits: BudgetLimits) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(async move {
        let github = Arc::new(SimGitHub {
            budget: Mutex::new(Budget::new(limits)),
            counts: Mutex::new(Counts::default()),
            gate: tokio::sync::Mutex::new(()),
            spacing: Duration::from_secs(1),
        });
        let reporter = previewd_github::GitHubReporter::new(github.clone(), None);
        let started = Instant::now();
        let prs: std::collections::BTreeSet<u64> = timeline.iter().map(|(_, n, _)| *n).collect();
        let last_event = timeline.last().map(|(at, _, _)| *at).unwrap_or_default();
        let mut peak_backlog = 0;
        let mut oldest = Duration::ZERO;
        let mut pending_since: HashMap<u64, Duration> = HashMap::new();
        for (at, number, change) in &timeline {
            // Between events, note the backlog once a second.
            while started.elapsed() + Duration::from_secs(1) < *at {
                tokio::time::sleep(Duration::from_secs(1)).await;
                peak_backlog = peak_backlog.max(reporter.backlog());
            }
            tokio::time::sleep_until(started + *at).await;
            pending_since.entry(*number).or_insert(*at);
            match change {
                Change::Phase(phase) => reporter.environment_changed(&view(*number, *phase)).await,
                Change::Deleted => {
                    reporter
                        .environment_deleted(&view(*number, Phase::Terminated))
                        .await
                }
            }
            peak_backlog = peak_backlog.max(reporter.backlog());
        }
        // Until the backlog is gone.
        let mut samples = 0u64;
        while reporter.backlog() > 0 && samples < 7 * 24 * 3600 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            samples += 1;
        }
        reporter.idle().await;
        let drained = started.elapsed();
        if let Some(first) = pending_since.values().min() {
            oldest = drained.saturating_sub(*first);
        }
        let (mutations, reads) = github.with(|c| (c.mutations, c.reads));
        let pr_events = 2 * prs.len() as u64;
        Ok(json!({
            "pull_requests": prs.len(),
            "pr_events": pr_events,
            "limits": {"writes_per_minute": limits.writes_per_minute,
                       "writes_per_hour": limits.writes_per_hour,
                       "points_per_minute": limits.points_per_minute},
            "last_event_s": last_event.as_secs_f64(),
            "drained_s": drained.as_secs_f64(),
            "drained_after_last_event_s": drained.saturating_sub(last_event).as_secs_f64(),
            "mutations": mutations,
            "reads": reads,
            "mutations_per_pr_event": mutations as f64 / pr_events.max(1) as f64,
            "superseded_states": reporter.superseded(),
            "peak_backlog": peak_backlog,
            "first_event_to_drained_s": oldest.as_secs_f64(),
        }))
    })
}

/// Flags of `previewd-scenario report-sim`: a burst of pull requests opened, all Ready,
/// then all closed, replayed into the reporter under the default budget.
#[derive(Clone, Debug, clap::Args)]
pub struct ReportSimArgs {
    /// Pull requests.
    #[arg(long, default_value_t = 1000)]
    pub environments: u64,
    /// Pull requests opened (and later closed) per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds from a PR's opening to its environment Ready (a scale run's
    /// webhook-to-Ready).
    #[arg(long, default_value_t = 90)]
    pub ready_after_s: u64,
    /// Seconds from the last PR's opening to the first close.
    #[arg(long, default_value_t = 600)]
    pub open_for_s: u64,
    /// Seconds from a PR's close to its namespace gone (a scale run's close-to-gone).
    #[arg(long, default_value_t = 30)]
    pub gone_after_s: u64,
}

/// The timeline of [`ReportSimArgs`]: PR `i` opened at `i / rate`, Ready
/// `ready_after_s` later, closed in the same order after `open_for_s`, gone
/// `gone_after_s` after its close.
pub fn burst(args: &ReportSimArgs) -> Vec<PrTimes> {
    let rate = args.rate.max(0.001);
    let last_open = Duration::from_secs_f64(args.environments.saturating_sub(1) as f64 / rate);
    (0..args.environments)
        .map(|i| {
            let offset = Duration::from_secs_f64(i as f64 / rate);
            let closed = last_open + Duration::from_secs(args.open_for_s) + offset;
            (
                i + 1,
                offset,
                Some(offset + Duration::from_secs(args.ready_after_s)),
                closed,
                Some(closed + Duration::from_secs(args.gone_after_s)),
            )
        })
        .collect()
}

/// `previewd-scenario report-sim`: the reporting backlog of [`burst`] at the default
/// budget.
pub fn run(args: &ReportSimArgs) -> anyhow::Result<Value> {
    let mut value = simulate(timeline(&burst(args)), BudgetLimits::default())?;
    value["scenario"] = json!("report-sim");
    value["rate_per_s"] = json!(args.rate);
    value["ready_after_s"] = json!(args.ready_after_s);
    value["open_for_s"] = json!(args.open_for_s);
    value["gone_after_s"] = json!(args.gone_after_s);
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_pull_request_closed_before_anything_was_reported_costs_no_write() {
        // Under a budget of four writes an hour, PR 1 spends the hour's budget; PR 2 is
        // opened and closed while its first write waits for the budget: it costs no
        // mutation at all, and the others' count does not change.
        let limits = BudgetLimits {
            writes_per_minute: 60,
            writes_per_hour: 4,
            points_per_minute: 750,
        };
        let one = simulate(
            timeline(&[(1, secs(0), Some(secs(10)), secs(300), Some(secs(310)))]),
            limits,
        )
        .unwrap();
        let two = simulate(
            timeline(&[
                (1, secs(0), Some(secs(10)), secs(300), Some(secs(310))),
                (2, secs(100), Some(secs(110)), secs(200), Some(secs(210))),
            ]),
            limits,
        )
        .unwrap();
        assert_eq!(one["mutations"], two["mutations"], "{one}\n{two}");
    }

    #[test]
    fn only_the_latest_state_of_each_pull_request_is_sent() {
        let prs: Vec<_> = (1..=50)
            .map(|n| {
                (
                    n,
                    secs(n),
                    Some(secs(n + 30)),
                    secs(600 + n),
                    Some(secs(700 + n)),
                )
            })
            .collect();
        let value = simulate(timeline(&prs), BudgetLimits::default()).unwrap();
        let mutations = value["mutations"].as_u64().unwrap();
        // Sending every state would cost 13 writes a PR (Pending 4: status, deployment,
        // its status, comment; Provisioning 3; Ready 3; Terminating 2; deleted 1):
        // states replaced while they waited were never sent.
        assert!(mutations < 50 * 13, "{value}");
        assert!(value["superseded_states"].as_u64().unwrap() > 0, "{value}");
    }
}
