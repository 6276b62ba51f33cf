//! The source-control provider trait ([`SourceControl`]) and the value types it speaks:
//! pull request metadata, changed files, diffs, commit statuses, deployments and the one
//! sticky pull-request comment previewd keeps up to date.
//!
//! The trait is what the controller and the AI advisors call; `previewd-github`
//! implements it against GitHub's REST API. Implementations handle authentication,
//! pagination, rate limits and retries themselves; callers see typed results only.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A repository, `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RepoRef {
    /// Owner (user or organisation).
    pub owner: String,
    /// Repository name.
    pub name: String,
}

impl RepoRef {
    /// A repository from its owner and name.
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> Self {
        RepoRef {
            owner: owner.into(),
            name: name.into(),
        }
    }

    /// Parses `owner/name`; `None` unless there is exactly one `/` with text on both sides.
    pub fn parse(full_name: &str) -> Option<Self> {
        let (owner, name) = full_name.split_once('/')?;
        if owner.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(RepoRef::new(owner, name))
    }

    /// `owner/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Open or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullRequestState {
    /// Open.
    Open,
    /// Closed (merged or not).
    Closed,
}

/// What previewd needs to know about a pull request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestInfo {
    /// Base repository.
    pub repository: RepoRef,
    /// PR number.
    pub number: u64,
    /// Title (untrusted text).
    pub title: String,
    /// Open or closed.
    pub state: PullRequestState,
    /// Draft PR.
    pub draft: bool,
    /// Merged.
    pub merged: bool,
    /// Head commit SHA.
    pub head_sha: String,
    /// Head branch.
    pub head_ref: String,
    /// Repository of the head branch, `owner/name`; `None` when the fork was deleted.
    pub head_repository: Option<String>,
    /// Base branch.
    pub base_ref: String,
    /// Author login.
    pub author: String,
    /// Author's association with the repository (`OWNER`, `MEMBER`, `CONTRIBUTOR`, ...).
    pub author_association: String,
    /// Label names.
    pub labels: Vec<String>,
    /// Web URL of the PR.
    pub html_url: String,
    /// Last update, RFC 3339.
    pub updated_at: String,
}

impl PullRequestInfo {
    /// The head lives in another repository (or in a deleted one).
    pub fn is_fork(&self) -> bool {
        match &self.head_repository {
            Some(head) => !head.eq_ignore_ascii_case(&self.repository.full_name()),
            None => true,
        }
    }
}

/// How a file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileChangeKind {
    /// New file.
    Added,
    /// Content changed.
    Modified,
    /// Deleted.
    Removed,
    /// Renamed (see `previous_path`).
    Renamed,
    /// Copied.
    Copied,
    /// Changed in some other way (mode, type).
    Changed,
    /// Listed without content change.
    Unchanged,
}

/// One changed file of a pull request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    /// Path after the change.
    pub path: String,
    /// Path before a rename or copy.
    pub previous_path: Option<String>,
    /// How the file changed.
    pub kind: FileChangeKind,
    /// Lines added.
    pub additions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// Unified diff hunk of this file, when the provider included one (absent for
    /// binary or very large files).
    pub patch: Option<String>,
}

/// The changed files of a pull request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFiles {
    /// Files, in provider order.
    pub files: Vec<ChangedFile>,
    /// The provider stopped listing before the end (GitHub lists at most 3000 files);
    /// callers must treat the change as possibly touching anything.
    pub incomplete: bool,
}

impl ChangedFiles {
    /// Paths of the files, including the previous path of renames.
    pub fn paths(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(self.files.len());
        for f in &self.files {
            out.push(f.path.as_str());
            if let Some(prev) = &f.previous_path {
                out.push(prev.as_str());
            }
        }
        out
    }
}

/// A pull request's change, as a unified diff when the provider could produce one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullRequestDiff {
    /// The whole unified diff.
    Unified(String),
    /// The provider refused a unified diff (too large); the per-file list with patches
    /// instead.
    Files(ChangedFiles),
}

impl PullRequestDiff {
    /// The diff as text: the unified diff, or the per-file patches joined with
    /// `diff --git` headers.
    pub fn to_text(&self) -> String {
        match self {
            PullRequestDiff::Unified(text) => text.clone(),
            PullRequestDiff::Files(files) => {
                let mut out = String::new();
                for f in &files.files {
                    let old = f.previous_path.as_deref().unwrap_or(&f.path);
                    out.push_str(&format!("diff --git a/{old} b/{}\n", f.path));
                    if let Some(patch) = &f.patch {
                        out.push_str(patch);
                        if !patch.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                }
                out
            }
        }
    }
}

/// State of a commit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    /// Work in progress.
    Pending,
    /// Done and good.
    Success,
    /// Done and bad (e.g. tests failed).
    Failure,
    /// Could not be done (e.g. the environment failed to start).
    Error,
}

impl CommitState {
    /// Wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error => "error",
        }
    }
}

/// Longest description GitHub accepts on statuses and deployment statuses.
pub const STATUS_DESCRIPTION_MAX: usize = 140;

/// Cuts `text` to at most `max` characters, ending with `…` when cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A commit status to set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    /// State.
    pub state: CommitState,
    /// Link shown next to the status (the preview URL).
    pub target_url: Option<String>,
    /// Short description; cut to [`STATUS_DESCRIPTION_MAX`] characters when sent.
    pub description: String,
    /// Status context; previewd uses `previewd`.
    pub context: String,
}

/// Context of previewd's commit status.
pub const STATUS_CONTEXT: &str = "previewd";

impl CommitStatus {
    /// A status with previewd's context.
    pub fn new(
        state: CommitState,
        description: impl Into<String>,
        target_url: Option<String>,
    ) -> Self {
        CommitStatus {
            state,
            target_url,
            description: description.into(),
            context: STATUS_CONTEXT.to_string(),
        }
    }
}

/// A deployment to create for an environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRequest {
    /// Commit or branch deployed.
    pub git_ref: String,
    /// Environment name: [`PREVIEW_ENVIRONMENT`], shared by every pull request.
    pub environment: String,
    /// Short description.
    pub description: String,
    /// The pull request the deployment belongs to (sent in the deployment's `payload`,
    /// which tells one PR's deployments from another's in the shared environment).
    pub pull_request: u64,
}

/// The one repository environment every preview deployment goes to. Deployments are
/// transient (`transient_environment: true`), so a PR's deployment never marks another
/// PR's inactive, and each carries its own URL (the "View deployment" button on its PR).
/// A name per pull request would create a repository environment per pull request,
/// which only the Administration permission can delete.
pub const PREVIEW_ENVIRONMENT: &str = "preview";

/// Environment name of a PR's deployment: [`PREVIEW_ENVIRONMENT`] for every PR.
pub fn deployment_environment(_pr: u64) -> String {
    PREVIEW_ENVIRONMENT.to_string()
}

/// Identifier of a deployment at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeploymentId(pub u64);

/// State of a deployment status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Queued.
    Queued,
    /// Pending.
    Pending,
    /// Being deployed.
    InProgress,
    /// Live.
    Success,
    /// Failed.
    Failure,
    /// Errored.
    Error,
    /// Torn down (shown as "destroyed" for transient environments).
    Inactive,
}

impl DeploymentState {
    /// Wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Queued => "queued",
            DeploymentState::Pending => "pending",
            DeploymentState::InProgress => "in_progress",
            DeploymentState::Success => "success",
            DeploymentState::Failure => "failure",
            DeploymentState::Error => "error",
            DeploymentState::Inactive => "inactive",
        }
    }
}

/// A deployment status to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatusUpdate {
    /// State.
    pub state: DeploymentState,
    /// URL of the running environment ("View deployment").
    pub environment_url: Option<String>,
    /// URL of logs or details.
    pub log_url: Option<String>,
    /// Short description; cut to [`STATUS_DESCRIPTION_MAX`] characters when sent.
    pub description: String,
}

/// Identifier of a comment at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommentId(pub u64);

/// What an upsert of the sticky comment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommentUpsert {
    /// A new comment was created.
    Created(CommentId),
    /// The existing comment was edited in place.
    Updated(CommentId),
    /// The existing comment already had this body; nothing was sent.
    Unchanged(CommentId),
}

impl CommentUpsert {
    /// The comment's id.
    pub fn id(&self) -> CommentId {
        match self {
            CommentUpsert::Created(id)
            | CommentUpsert::Updated(id)
            | CommentUpsert::Unchanged(id) => *id,
        }
    }
}

/// Why a source-control call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceControlError {
    /// Credentials missing, invalid or expired.
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The repository, PR, deployment or comment does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The provider rejected the request as invalid (e.g. status limit reached).
    #[error("rejected by the provider: {0}")]
    Rejected(String),
    /// Rate limited and out of retries; try again after the given number of seconds.
    #[error("rate limited (retry after {retry_after_secs:?} s)")]
    RateLimited {
        /// Seconds to wait, when known.
        retry_after_secs: Option<u64>,
    },
    /// Timed out or the provider was unavailable after retries.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something we could not read.
    #[error("unexpected response: {0}")]
    InvalidResponse(String),
    /// The client is misconfigured (bad key, bad URL).
    #[error("configuration error: {0}")]
    Config(String),
}

impl SourceControlError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        match self {
            SourceControlError::Unauthorized(_) => "unauthorized",
            SourceControlError::Forbidden(_) => "forbidden",
            SourceControlError::NotFound(_) => "not_found",
            SourceControlError::Rejected(_) => "rejected",
            SourceControlError::RateLimited { .. } => "rate_limited",
            SourceControlError::Unavailable(_) => "unavailable",
            SourceControlError::InvalidResponse(_) => "invalid_response",
            SourceControlError::Config(_) => "config",
        }
    }

    /// Worth trying again later (rate limits, outages); permanent errors are not.
    pub const fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceControlError::RateLimited { .. } | SourceControlError::Unavailable(_)
        )
    }
}

/// A source-control system (GitHub): reads pull requests and reports environments back.
#[async_trait]
pub trait SourceControl: Send + Sync {
    /// Metadata of a pull request.
    async fn pull_request(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestInfo, SourceControlError>;

    /// Changed files of a pull request, all pages, up to the provider's cap (then
    /// `incomplete` is set).
    async fn changed_files(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<ChangedFiles, SourceControlError>;

    /// The pull request's diff; the file list with patches when the provider refuses a
    /// unified diff (too many files or lines).
    async fn diff(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestDiff, SourceControlError>;

    /// Sets a commit status on `sha`.
    async fn set_commit_status(
        &self,
        repo: &RepoRef,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), SourceControlError>;

    /// Creates a deployment (transient, non-production, no required contexts, no auto
    /// merge).
    async fn create_deployment(
        &self,
        repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<DeploymentId, SourceControlError>;

    /// Adds a status to a deployment.
    async fn set_deployment_status(
        &self,
        repo: &RepoRef,
        deployment: DeploymentId,
        status: &DeploymentStatusUpdate,
    ) -> Result<(), SourceControlError>;

    /// Creates or edits in place previewd's one comment on the pull request (found by
    /// its hidden marker and the bot's own authorship).
    async fn upsert_comment(
        &self,
        repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<CommentUpsert, SourceControlError>;

    /// Waits until a mutation about `repo` could be sent now without going over the provider's rate
    /// limits (a pause after a rate-limit answer, a budget of writes), so that a caller
    /// can still change its mind (a newer state to report) after the wait and before
    /// the write. Sends nothing; the write itself still keeps the limits. The default
    /// returns at once.
    async fn write_slot(&self, _repo: &RepoRef) {}

    /// The deployment `request` describes, if it exists, without creating it. The
    /// default creates it (providers that cannot look one up).
    async fn find_deployment(
        &self,
        repo: &RepoRef,
        request: &DeploymentRequest,
    ) -> Result<Option<DeploymentId>, SourceControlError> {
        self.create_deployment(repo, request).await.map(Some)
    }

    /// Edits previewd's comment on the pull request in place if there is one; creates
    /// none (`None`: there was none). The default creates or edits it.
    async fn update_comment(
        &self,
        repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<Option<CommentUpsert>, SourceControlError> {
        self.upsert_comment(repo, number, body).await.map(Some)
    }

    /// The states of the `required` checks of commit `sha` (check runs, commit status
    /// contexts and Apps' check suites, by name; a check bound to an App only from that
    /// App's check runs and suites), for the CI gate's fallback poll. The default answers
    /// that the provider cannot tell.
    async fn commit_checks(
        &self,
        repo: &RepoRef,
        sha: &str,
        required: &[crate::checks::RequiredCheck],
    ) -> Result<crate::checks::RecordedChecks, SourceControlError> {
        let _ = (repo, sha, required);
        Err(SourceControlError::Config(
            "this source-control client does not read checks".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ref_parses_owner_and_name_only() {
        assert_eq!(
            RepoRef::parse("acme/shop"),
            Some(RepoRef::new("acme", "shop"))
        );
        assert_eq!(RepoRef::parse("acme"), None);
        assert_eq!(RepoRef::parse("acme/"), None);
        assert_eq!(RepoRef::parse("/shop"), None);
        assert_eq!(RepoRef::parse("a/b/c"), None);
        assert_eq!(RepoRef::new("acme", "shop").to_string(), "acme/shop");
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate_chars("short", 140), "short");
        let long = "é".repeat(200);
        let cut = truncate_chars(&long, STATUS_DESCRIPTION_MAX);
        assert_eq!(cut.chars().count(), STATUS_DESCRIPTION_MAX);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn fork_detection_uses_head_repository() {
        let mut pr = PullRequestInfo {
            repository: RepoRef::new("acme", "shop"),
            number: 1,
            title: String::new(),
            state: PullRequestState::Open,
            draft: false,
            merged: false,
            head_sha: "abc1234".into(),
            head_ref: "x".into(),
            head_repository: Some("Acme/Shop".into()),
            base_ref: "main".into(),
            author: "a".into(),
            author_association: "MEMBER".into(),
            labels: vec![],
            html_url: String::new(),
            updated_at: String::new(),
        };
        assert!(!pr.is_fork());
        pr.head_repository = Some("mallory/shop".into());
        assert!(pr.is_fork());
        pr.head_repository = None;
        assert!(pr.is_fork());
    }

    #[test]
    fn file_list_diff_text_names_every_file() {
        let diff = PullRequestDiff::Files(ChangedFiles {
            files: vec![ChangedFile {
                path: "b.rs".into(),
                previous_path: Some("a.rs".into()),
                kind: FileChangeKind::Renamed,
                additions: 1,
                deletions: 0,
                patch: Some("@@ -1 +1 @@\n+x".into()),
            }],
            incomplete: false,
        });
        assert_eq!(
            diff.to_text(),
            "diff --git a/a.rs b/b.rs\n@@ -1 +1 @@\n+x\n"
        );
    }
}
