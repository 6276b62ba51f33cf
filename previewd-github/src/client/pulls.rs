//! Pull request listings for the backfill: GitHub never redelivers a failed webhook, so
//! the operator periodically lists what is open and converges.

use previewd_core::source_control::RepoRef;
use serde_json::Value;

use super::{GitHubClient, GitHubError, JSON_MEDIA_TYPE};

impl GitHubClient {
    /// The open pull requests of `repo` (`GET /repos/{owner}/{name}/pulls?state=open`),
    /// as GitHub sends them (the same shape as a webhook's `pull_request`), following
    /// pagination up to `max_items`. Also returns whether more were left.
    pub async fn list_open_pull_requests(
        &self,
        repo: &RepoRef,
        max_items: usize,
    ) -> Result<(Vec<Value>, bool), GitHubError> {
        let mut url = self.url(&format!("repos/{}/{}/pulls", repo.owner, repo.name))?;
        url.query_pairs_mut()
            .append_pair("state", "open")
            .append_pair("sort", "updated")
            .append_pair("direction", "desc")
            .append_pair("per_page", "100");
        self.get_all::<Value>(url, max_items).await
    }

    /// One pull request as GitHub sends it (`GET /repos/{owner}/{name}/pulls/{number}`).
    pub async fn pull_request_json(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<Value, GitHubError> {
        let url = self.url(&format!(
            "repos/{}/{}/pulls/{number}",
            repo.owner, repo.name
        ))?;
        self.get(url, JSON_MEDIA_TYPE).await?.json()
    }
}
