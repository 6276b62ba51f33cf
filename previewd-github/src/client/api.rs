//! The [`SourceControl`] implementation: GitHub endpoints and their wire types.

use async_trait::async_trait;
use previewd_core::checks::{CheckState, RecordedChecks, RequiredCheck};
use previewd_core::source_control::{
    ChangedFile, ChangedFiles, CommentId, CommentUpsert, CommitStatus, DeploymentId,
    DeploymentRequest, DeploymentStatusUpdate, FileChangeKind, PullRequestDiff, PullRequestInfo,
    PullRequestState, RepoRef, STATUS_DESCRIPTION_MAX, SourceControl, SourceControlError,
    truncate_chars,
};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{DIFF_MEDIA_TYPE, GitHubClient, GitHubError, JSON_MEDIA_TYPE};
use crate::comment::{COMMENT_MARKER, cap_body};
use crate::event::PullRequest;

/// GitHub lists at most this many files of a pull request.
pub const MAX_CHANGED_FILES: usize = 3000;

/// `task` of the deployments previewd creates.
pub const DEFAULT_DEPLOYMENT_TASK: &str = "deploy";

const PER_PAGE: &str = "100";

#[derive(Deserialize)]
struct FileEntry {
    filename: String,
    status: String,
    #[serde(default)]
    additions: u64,
    #[serde(default)]
    deletions: u64,
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    previous_filename: Option<String>,
}

impl FileEntry {
    fn into_changed_file(self) -> ChangedFile {
        let kind = match self.status.as_str() {
            "added" => FileChangeKind::Added,
            "removed" => FileChangeKind::Removed,
            "renamed" => FileChangeKind::Renamed,
            "copied" => FileChangeKind::Copied,
            "changed" => FileChangeKind::Changed,
            "unchanged" => FileChangeKind::Unchanged,
            _ => FileChangeKind::Modified,
        };
        ChangedFile {
            path: self.filename,
            previous_path: self.previous_filename,
            kind,
            additions: self.additions,
            deletions: self.deletions,
            patch: self.patch,
        }
    }
}

/// Pages of check runs, suites and statuses read per commit.
const MAX_CHECK_PAGES: usize = 10;

#[derive(Deserialize)]
struct CheckRunList {
    #[serde(default)]
    total_count: usize,
    #[serde(default)]
    check_runs: Vec<crate::event::CheckRun>,
}

#[derive(Deserialize)]
struct CheckSuiteList {
    #[serde(default)]
    total_count: usize,
    #[serde(default)]
    check_suites: Vec<crate::event::CheckSuite>,
}

#[derive(Deserialize)]
struct CombinedStatus {
    #[serde(default)]
    total_count: usize,
    #[serde(default)]
    statuses: Vec<StatusEntry>,
}

#[derive(Deserialize)]
struct StatusEntry {
    context: String,
    state: String,
    #[serde(default)]
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

/// A listed deployment: its id and the payload previewd gave it.
#[derive(Deserialize)]
struct DeploymentEntry {
    id: u64,
    #[serde(default)]
    payload: serde_json::Value,
}

impl DeploymentEntry {
    /// The PR of previewd's payload, `{"pull_request": N}` (GitHub returns a payload sent
    /// as an object as an object; one sent as a string as that string).
    fn pull_request(&self) -> Option<u64> {
        match &self.payload {
            serde_json::Value::String(text) => serde_json::from_str::<serde_json::Value>(text)
                .ok()?
                .get("pull_request")?
                .as_u64(),
            value => value.get("pull_request")?.as_u64(),
        }
    }
}

#[derive(Deserialize)]
struct CommentEntry {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    user: Option<crate::event::User>,
}

fn repo_path(repo: &RepoRef) -> String {
    format!("repos/{}/{}", repo.owner, repo.name)
}

fn pull_request_info(repo: &RepoRef, pr: PullRequest) -> PullRequestInfo {
    PullRequestInfo {
        repository: repo.clone(),
        number: pr.number,
        title: pr.title,
        state: if pr.state == "open" {
            PullRequestState::Open
        } else {
            PullRequestState::Closed
        },
        draft: pr.draft,
        merged: pr.merged.unwrap_or(false),
        head_sha: pr.head.sha,
        head_ref: pr.head.git_ref,
        head_repository: pr.head.repo.map(|r| r.full_name),
        base_ref: pr.base.git_ref,
        author: pr.user.login,
        author_association: pr.author_association,
        labels: pr.labels.into_iter().map(|l| l.name).collect(),
        html_url: pr.html_url,
        updated_at: pr.updated_at,
    }
}

impl GitHubClient {
    /// Changed files, following pagination up to GitHub's 3000-file cap.
    pub async fn list_changed_files(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<ChangedFiles, GitHubError> {
        let mut url = self.url(&format!("{}/pulls/{number}/files", repo_path(repo)))?;
        url.query_pairs_mut().append_pair("per_page", PER_PAGE);
        let (entries, more) = self.get_all::<FileEntry>(url, MAX_CHANGED_FILES).await?;
        let incomplete = more || entries.len() >= MAX_CHANGED_FILES;
        Ok(ChangedFiles {
            files: entries
                .into_iter()
                .map(FileEntry::into_changed_file)
                .collect(),
            incomplete,
        })
    }

    /// The states of the `required` checks of commit `sha`: the latest check run of each
    /// name, each App's check suite (by slug and name) and the latest commit status of
    /// each context (`GET .../commits/{sha}/check-runs`, `.../check-suites`, `.../status`,
    /// 100 per page, at most 10 pages each). Names not required are left out, and so are,
    /// for a check bound to an App, statuses and other Apps' check runs and suites.
    pub async fn commit_checks(
        &self,
        repo: &RepoRef,
        sha: &str,
        required: &[RequiredCheck],
    ) -> Result<RecordedChecks, GitHubError> {
        let mut checks = RecordedChecks::default();
        let base = format!("{}/commits/{sha}", repo_path(repo));
        let mut record = |name: &str, app: Option<u64>, state: CheckState, at: String| {
            if required.iter().any(|r| r.accepts(name, app)) {
                checks.record_from(sha, name, app, state, &at);
            }
        };
        for page in 1..=MAX_CHECK_PAGES {
            let mut url = self.url(&format!("{base}/check-runs"))?;
            url.query_pairs_mut()
                .append_pair("per_page", PER_PAGE)
                .append_pair("page", &page.to_string());
            let list: CheckRunList = self.get(url, JSON_MEDIA_TYPE).await?.json()?;
            let seen = list.check_runs.len();
            for run in list.check_runs {
                let state = CheckState::of_check(&run.status, run.conclusion.as_deref());
                record(
                    &run.name,
                    run.app.and_then(|a| a.id),
                    state,
                    crate::ci::utc(run.completed_at.or(run.started_at)),
                );
            }
            if seen < 100 || page * 100 >= list.total_count {
                break;
            }
        }
        for page in 1..=MAX_CHECK_PAGES {
            let mut url = self.url(&format!("{base}/check-suites"))?;
            url.query_pairs_mut()
                .append_pair("per_page", PER_PAGE)
                .append_pair("page", &page.to_string());
            let list: CheckSuiteList = self.get(url, JSON_MEDIA_TYPE).await?.json()?;
            let seen = list.check_suites.len();
            for suite in list.check_suites {
                let state = CheckState::of_check(
                    suite.status.as_deref().unwrap_or("queued"),
                    suite.conclusion.as_deref(),
                );
                let app = suite.app.unwrap_or_default();
                for name in [app.slug, app.name].into_iter().flatten() {
                    record(
                        &name,
                        app.id,
                        state,
                        crate::ci::utc(suite.updated_at.clone()),
                    );
                }
            }
            if seen < 100 || page * 100 >= list.total_count {
                break;
            }
        }
        for page in 1..=MAX_CHECK_PAGES {
            let mut url = self.url(&format!("{base}/status"))?;
            url.query_pairs_mut()
                .append_pair("per_page", PER_PAGE)
                .append_pair("page", &page.to_string());
            let combined: CombinedStatus = self.get(url, JSON_MEDIA_TYPE).await?.json()?;
            let seen = combined.statuses.len();
            for status in combined.statuses {
                record(
                    &status.context,
                    None,
                    CheckState::of_status(&status.state),
                    crate::ci::utc(status.updated_at),
                );
            }
            if seen < 100 || page * 100 >= combined.total_count {
                break;
            }
        }
        if checks.sha.is_empty() {
            checks.sha = sha.to_string();
        }
        Ok(checks)
    }

    /// Finds previewd's comment on the PR: carries the marker and is authored by the bot.
    pub async fn find_sticky_comment(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<Option<(CommentId, String)>, GitHubError> {
        let login = self.bot_login().await?;
        let mut url = self.url(&format!("{}/issues/{number}/comments", repo_path(repo)))?;
        url.query_pairs_mut().append_pair("per_page", PER_PAGE);
        let (comments, _) = self.get_all::<CommentEntry>(url, 100_000).await?;
        Ok(comments.into_iter().find_map(|c| {
            let body = c.body.unwrap_or_default();
            let mine = c
                .user
                .as_ref()
                .is_some_and(|u| u.login.eq_ignore_ascii_case(&login));
            (mine && body.contains(COMMENT_MARKER)).then_some((CommentId(c.id), body))
        }))
    }

    async fn existing_deployment(
        &self,
        repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<Option<DeploymentId>, GitHubError> {
        let mut url = self.url(&format!("{}/deployments", repo_path(repo)))?;
        url.query_pairs_mut()
            .append_pair("ref", &request.git_ref)
            .append_pair("environment", &request.environment)
            .append_pair("task", DEFAULT_DEPLOYMENT_TASK)
            .append_pair("per_page", PER_PAGE);
        // The shared environment holds every PR's deployments: the payload names the PR
        // (two PRs may have the same head commit). A deployment without the payload is
        // not previewd's.
        let (found, _) = self.get_all::<DeploymentEntry>(url, 1000).await?;
        Ok(found
            .into_iter()
            .find(|d| d.pull_request() == Some(request.pull_request))
            .map(|d| DeploymentId(d.id)))
    }
}

#[async_trait]
impl SourceControl for GitHubClient {
    async fn pull_request(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestInfo, SourceControlError> {
        Ok(self.pull_request_info(repo, number).await?)
    }

    async fn changed_files(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<ChangedFiles, SourceControlError> {
        Ok(self.list_changed_files(repo, number).await?)
    }

    async fn commit_checks(
        &self,
        repo: &RepoRef,
        sha: &str,
        required: &[RequiredCheck],
    ) -> Result<RecordedChecks, SourceControlError> {
        Ok(GitHubClient::commit_checks(self, repo, sha, required).await?)
    }

    async fn diff(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestDiff, SourceControlError> {
        let url = self.url(&format!("{}/pulls/{number}", repo_path(repo)))?;
        match self.get(url, DIFF_MEDIA_TYPE).await {
            Ok(answer) => Ok(PullRequestDiff::Unified(
                String::from_utf8_lossy(&answer.body).into_owned(),
            )),
            // GitHub refuses diffs over 300 files or 20 000 lines with 406 (or 422).
            Err(GitHubError::Rejected { status, message }) if status == 406 || status == 422 => {
                tracing::debug!(%repo, number, status, %message, "diff refused; using the file list");
                Ok(PullRequestDiff::Files(
                    self.list_changed_files(repo, number).await?,
                ))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn set_commit_status(
        &self,
        repo: &RepoRef,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), SourceControlError> {
        let url = self.url(&format!("{}/statuses/{sha}", repo_path(repo)))?;
        let mut body = json!({
            "state": status.state.as_str(),
            "description": truncate_chars(&status.description, STATUS_DESCRIPTION_MAX),
            "context": status.context,
        });
        if let Some(target) = &status.target_url {
            body["target_url"] = json!(target);
        }
        self.send_json(Method::POST, url, body).await?;
        Ok(())
    }

    async fn create_deployment(
        &self,
        repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<DeploymentId, SourceControlError> {
        // Find before create, also after a lost answer: never a second deployment.
        let url = self.url(&format!("{}/deployments", repo_path(repo)))?;
        let body = json!({
            "ref": request.git_ref,
            "environment": request.environment,
            "description": truncate_chars(&request.description, STATUS_DESCRIPTION_MAX),
            "task": DEFAULT_DEPLOYMENT_TASK,
            "transient_environment": true,
            "production_environment": false,
            "required_contexts": [],
            "auto_merge": false,
            "payload": {"pull_request": request.pull_request},
        });
        let id = self
            .find_or_create(
                || self.existing_deployment(repo, request),
                || async {
                    let answer = self.create_json(url.clone(), body.clone()).await?;
                    Ok(DeploymentId(answer.json::<IdOnly>()?.id))
                },
            )
            .await?;
        Ok(id)
    }

    async fn write_slot(&self, repo: &RepoRef) {
        self.wait_for_write_slot(repo).await;
    }

    async fn find_deployment(
        &self,
        repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<Option<DeploymentId>, SourceControlError> {
        Ok(self.existing_deployment(repo, request).await?)
    }

    async fn update_comment(
        &self,
        repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<Option<CommentUpsert>, SourceControlError> {
        let body = cap_body(body);
        let _serial = self.inner.comment_lock.lock().await;
        match self.find_sticky_comment(repo, number).await? {
            None => Ok(None),
            Some((id, existing)) if existing == body => Ok(Some(CommentUpsert::Unchanged(id))),
            Some((id, _)) => {
                let url = self.url(&format!("{}/issues/comments/{}", repo_path(repo), id.0))?;
                self.send_json(Method::PATCH, url, json!({ "body": body }))
                    .await?;
                Ok(Some(CommentUpsert::Updated(id)))
            }
        }
    }

    async fn set_deployment_status(
        &self,
        repo: &RepoRef,
        deployment: DeploymentId,
        status: &DeploymentStatusUpdate,
    ) -> Result<(), SourceControlError> {
        let url = self.url(&format!(
            "{}/deployments/{}/statuses",
            repo_path(repo),
            deployment.0
        ))?;
        // Other PRs' deployments share the environment: a success never inactivates them
        // (they are transient too; `auto_inactive: false` says so explicitly).
        let mut body = json!({
            "state": status.state.as_str(),
            "description": truncate_chars(&status.description, STATUS_DESCRIPTION_MAX),
            "auto_inactive": false,
        });
        if let Some(env_url) = &status.environment_url {
            body["environment_url"] = json!(env_url);
        }
        if let Some(log_url) = &status.log_url {
            body["log_url"] = json!(log_url);
        }
        self.send_json(Method::POST, url, body).await?;
        Ok(())
    }

    async fn upsert_comment(
        &self,
        repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<CommentUpsert, SourceControlError> {
        let body = cap_body(body);
        let _serial = self.inner.comment_lock.lock().await;
        let url = self.url(&format!("{}/issues/{number}/comments", repo_path(repo)))?;
        // Find before create, also after a lost answer: never a second sticky comment.
        let (found, created) = self
            .find_or_create(
                || async {
                    Ok(self
                        .find_sticky_comment(repo, number)
                        .await?
                        .map(|found| (Some(found), None)))
                },
                || async {
                    let answer = self
                        .create_json(url.clone(), json!({ "body": body }))
                        .await?;
                    Ok((None, Some(CommentId(answer.json::<IdOnly>()?.id))))
                },
            )
            .await?;
        match (found, created) {
            (_, Some(id)) => Ok(CommentUpsert::Created(id)),
            (Some((id, existing)), _) if existing == body => Ok(CommentUpsert::Unchanged(id)),
            (Some((id, _)), _) => {
                let url = self.url(&format!("{}/issues/comments/{}", repo_path(repo), id.0))?;
                self.send_json(Method::PATCH, url, json!({ "body": body }))
                    .await?;
                Ok(CommentUpsert::Updated(id))
            }
            (None, None) => Err(GitHubError::Decode("no comment found or created".into()).into()),
        }
    }
}

impl GitHubClient {
    /// Pull request `number` as GitHub sees it now (`GET /repos/{owner}/{repo}/pulls/{n}`).
    pub async fn pull_request_info(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestInfo, GitHubError> {
        let url = self.url(&format!("{}/pulls/{number}", repo_path(repo)))?;
        let answer = self.get(url, JSON_MEDIA_TYPE).await?;
        Ok(pull_request_info(repo, answer.json::<PullRequest>()?))
    }

    /// `login`'s permission on `repo`
    /// (`GET /repos/{owner}/{repo}/collaborators/{username}/permission`, App permission
    /// Metadata: read). A 404 (not a collaborator, no such user) is no permission; every
    /// other failure is an error. See [`crate::permission`].
    pub async fn collaborator_permission(
        &self,
        repo: &RepoRef,
        login: &str,
    ) -> Result<crate::permission::CollaboratorPermission, GitHubError> {
        if !crate::permission::valid_login(login) {
            return Err(GitHubError::Rejected {
                status: 400,
                message: "not a GitHub login".into(),
            });
        }
        let url = self.url(&format!(
            "{}/collaborators/{login}/permission",
            repo_path(repo)
        ))?;
        match self.get(url, JSON_MEDIA_TYPE).await {
            Ok(answer) => answer.json(),
            Err(GitHubError::NotFound(_)) => Ok(crate::permission::CollaboratorPermission::none()),
            Err(err) => Err(err),
        }
    }

    /// Adds a reaction to an issue or pull-request comment
    /// (`POST /repos/{owner}/{repo}/issues/comments/{id}/reactions`). GitHub answers 200
    /// when the same reaction exists already, so a retry never adds a second one.
    pub async fn react_to_comment(
        &self,
        repo: &RepoRef,
        comment_id: u64,
        reaction: crate::command::Reaction,
    ) -> Result<(), GitHubError> {
        let url = self.url(&format!(
            "{}/issues/comments/{comment_id}/reactions",
            repo_path(repo)
        ))?;
        self.send_json(Method::POST, url, json!({ "content": reaction.content() }))
            .await?;
        Ok(())
    }
}
