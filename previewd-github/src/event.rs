//! The parts of GitHub's `pull_request` webhook payload previewd reads.
//!
//! Only the fields needed are declared; everything else in the (20–30 KB) payload is
//! skipped, so new fields GitHub adds never break parsing. A payload missing a required
//! field or carrying a wrong type fails to parse and the delivery is answered 400.

use serde::Deserialize;

/// A `pull_request` delivery.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PullRequestEvent {
    /// `opened`, `synchronize`, `closed`, ... (unknown values are kept as text).
    pub action: String,
    /// PR number.
    pub number: u64,
    /// The pull request after the event.
    pub pull_request: PullRequest,
    /// Base repository.
    pub repository: Repository,
    /// The label added or removed (`labeled` / `unlabeled` only).
    #[serde(default)]
    pub label: Option<Label>,
    /// What changed (`edited` only).
    #[serde(default)]
    pub changes: Option<Changes>,
    /// GitHub App installation that received the event.
    #[serde(default)]
    pub installation: Option<Installation>,
    /// Who triggered the event.
    #[serde(default)]
    pub sender: Option<User>,
}

/// The pull request object.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PullRequest {
    /// PR number.
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    /// Draft PR.
    #[serde(default)]
    pub draft: bool,
    /// Merged (set on `closed`; absent or null otherwise).
    #[serde(default)]
    pub merged: Option<bool>,
    /// Last update, RFC 3339.
    pub updated_at: String,
    /// Title (untrusted).
    #[serde(default)]
    pub title: String,
    /// Web URL.
    #[serde(default)]
    pub html_url: String,
    /// `OWNER`, `MEMBER`, `COLLABORATOR`, `CONTRIBUTOR`, `FIRST_TIME_CONTRIBUTOR`, `NONE`, ...
    #[serde(default)]
    pub author_association: String,
    /// Author.
    pub user: User,
    /// Head branch and commit.
    pub head: Branch,
    /// Base branch.
    pub base: Branch,
    /// Current labels.
    #[serde(default)]
    pub labels: Vec<Label>,
}

/// One side (head or base) of a pull request.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Branch {
    /// Branch name.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Commit SHA.
    pub sha: String,
    /// Repository; null for the head of a PR whose fork was deleted.
    #[serde(default)]
    pub repo: Option<Repository>,
}

/// A repository.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Repository {
    /// `owner/name`.
    pub full_name: String,
    /// The repository is a fork.
    #[serde(default)]
    pub fork: bool,
}

/// A user or bot.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct User {
    /// Login.
    pub login: String,
}

/// A label.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Label {
    /// Label name.
    pub name: String,
}

/// Changes of an `edited` event.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Changes {
    /// Set when the base branch changed.
    #[serde(default)]
    pub base: Option<serde_json::Value>,
}

/// GitHub App installation.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Installation {
    /// Installation id.
    pub id: u64,
}

impl PullRequestEvent {
    /// Base repository `owner/name` (where the PR is opened).
    pub fn base_repository(&self) -> &str {
        self.pull_request
            .base
            .repo
            .as_ref()
            .map_or(self.repository.full_name.as_str(), |r| r.full_name.as_str())
    }

    /// The head is in another repository, or in a deleted one.
    pub fn is_fork(&self) -> bool {
        match &self.pull_request.head.repo {
            Some(head) => !head.full_name.eq_ignore_ascii_case(self.base_repository()),
            None => true,
        }
    }

    /// Merged (only meaningful on `closed`).
    pub fn merged(&self) -> bool {
        self.pull_request.merged.unwrap_or(false)
    }

    /// The PR carries `name` after this event: for `labeled`/`unlabeled` of that label
    /// the event's own label decides (the label list may lag), otherwise the label list.
    pub fn has_label(&self, name: &str) -> bool {
        if let Some(label) = &self.label
            && label.name == name
        {
            match self.action.as_str() {
                "labeled" => return true,
                "unlabeled" => return false,
                _ => {}
            }
        }
        self.pull_request.labels.iter().any(|l| l.name == name)
    }
}

/// The header-level facts of a delivery, for logs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// `action`, when the event has one.
    #[serde(default)]
    pub action: Option<String>,
    /// Repository, when the event has one.
    #[serde(default)]
    pub repository: Option<Repository>,
    /// GitHub App installation that received the event (App webhooks only).
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// A `check_run` delivery (only what the CI gate reads).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CheckRunEvent {
    /// `created`, `completed`, `rerequested`, `requested_action`.
    pub action: String,
    /// The check run.
    pub check_run: CheckRun,
    /// Repository.
    pub repository: Repository,
}

/// A check run.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CheckRun {
    /// Name of the check (what `requiredChecks` names).
    pub name: String,
    /// Commit it checks.
    pub head_sha: String,
    /// `queued`, `in_progress`, `completed`, ...
    pub status: String,
    /// Set once completed.
    #[serde(default)]
    pub conclusion: Option<String>,
    /// When it started, RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it completed, RFC 3339.
    #[serde(default)]
    pub completed_at: Option<String>,
    /// The App that created it (a pull request's own workflow: `github-actions`).
    #[serde(default)]
    pub app: Option<App>,
}

/// A `check_suite` delivery.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CheckSuiteEvent {
    /// `completed`, `requested`, `rerequested`.
    pub action: String,
    /// The check suite.
    pub check_suite: CheckSuite,
    /// Repository.
    pub repository: Repository,
}

/// A check suite: every check run of one GitHub App on one commit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CheckSuite {
    /// Commit it checks.
    pub head_sha: String,
    /// `queued`, `in_progress`, `completed`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// Set once completed.
    #[serde(default)]
    pub conclusion: Option<String>,
    /// Last change, RFC 3339.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The App that runs it (its slug and name are what `requiredChecks` may name).
    #[serde(default)]
    pub app: Option<App>,
}

/// A GitHub App.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct App {
    /// Id: what a required check's `app` names.
    #[serde(default)]
    pub id: Option<u64>,
    /// Short name.
    #[serde(default)]
    pub slug: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// A `status` delivery (a commit status).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StatusEvent {
    /// Commit.
    pub sha: String,
    /// `pending`, `success`, `failure`, `error`.
    pub state: String,
    /// Context (what `requiredChecks` names).
    pub context: String,
    /// Last change, RFC 3339.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Repository.
    pub repository: Repository,
}

/// An `issue_comment` delivery (comments on pull requests arrive as issue comments).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct IssueCommentEvent {
    /// `created`, `edited` or `deleted`.
    pub action: String,
    /// The issue or pull request commented on.
    pub issue: Issue,
    /// The comment.
    pub comment: IssueComment,
    /// Repository.
    pub repository: Repository,
    /// GitHub App installation that received the event.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// The issue of an `issue_comment` event.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Issue {
    /// Issue or PR number.
    pub number: u64,
    /// Present (an object of links) when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

/// A comment.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct IssueComment {
    /// Comment id (increases over time).
    pub id: u64,
    /// Body (untrusted).
    #[serde(default)]
    pub body: String,
    /// Author.
    pub user: User,
    /// The author's association with the repository (`OWNER`, `MEMBER`, ...).
    #[serde(default)]
    pub author_association: String,
}

impl IssueCommentEvent {
    /// The comment is on a pull request (not a plain issue).
    pub fn on_pull_request(&self) -> bool {
        self.issue
            .pull_request
            .as_ref()
            .is_some_and(|v| !v.is_null())
    }
}
