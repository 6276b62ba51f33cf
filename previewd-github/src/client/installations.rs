//! Many installations of one GitHub App: which installation serves which repository.
//!
//! An App is installed per organisation or account, each installation on some or all of
//! its repositories, and each with tokens of its own. The client takes a repository's
//! installation, in this order, from:
//!
//! 1. its [`InstallationDirectory`]: what verified webhook deliveries said
//!    (`installation.id`, recorded by the webhook) and what the backfill found walking the
//!    App's installations;
//! 2. GitHub (`GET /repos/{owner}/{repo}/installation`, with the App's JWT), remembered
//!    for an hour; concurrent requests for one repository share one lookup;
//! 3. the default installation of the credentials, when GitHub names none (404);
//!
//! and fails with "the App is not installed on owner/repo" otherwise. The installation is
//! never read from the `PreviewEnvironment`: an annotation there could be written by
//! whoever may edit the environment, credentials are chosen only from what GitHub says.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use previewd_core::source_control::RepoRef;
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::auth::AuthState;
use super::{AuthKind, GitHubClient, GitHubError, JSON_MEDIA_TYPE, RequestSpec, next_link};

/// How long a repository's installation is reused before GitHub is asked again (a
/// repository can move to another installation when it is transferred).
pub const INSTALLATION_TTL: Duration = Duration::from_secs(3600);

/// Which installation of the App serves which repository (`owner/name`, any case). Cheap
/// to clone; clones share the entries.
#[derive(Clone)]
pub struct InstallationDirectory {
    entries: moka::future::Cache<String, u64>,
}

impl std::fmt::Debug for InstallationDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationDirectory")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for InstallationDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl InstallationDirectory {
    /// An empty directory whose entries last [`INSTALLATION_TTL`].
    pub fn new() -> Self {
        InstallationDirectory {
            entries: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(INSTALLATION_TTL)
                .build(),
        }
    }

    /// Records that `installation` serves `repository` (`owner/name`): from a delivery
    /// whose signature was verified, or from GitHub's own answer.
    pub async fn remember(&self, repository: &str, installation: u64) {
        self.entries
            .insert(repository.to_ascii_lowercase(), installation)
            .await;
    }

    /// The installation recorded for `repository`, if any.
    pub async fn get(&self, repository: &str) -> Option<u64> {
        self.entries.get(&repository.to_ascii_lowercase()).await
    }

    /// Forgets `repository` (its next request asks GitHub again).
    pub async fn forget(&self, repository: &str) {
        self.entries
            .invalidate(&repository.to_ascii_lowercase())
            .await;
    }
}

/// One installation of the App (`GET /app/installations`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AppInstallation {
    /// Installation id.
    pub id: u64,
    /// The organisation or user account it is installed on.
    #[serde(default, deserialize_with = "account_login")]
    pub account: Option<String>,
    /// Set when the installation is suspended (its tokens are refused).
    #[serde(default)]
    pub suspended_at: Option<String>,
}

fn account_login<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Account {
        login: String,
    }
    Ok(Option::<Account>::deserialize(d)?.map(|a| a.login))
}

/// What walking the App's installations found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepositoryInstallations {
    /// Installations of the App (suspended ones included).
    pub installations: usize,
    /// Wanted repositories (`owner/name`, lower case) and the installation serving each.
    pub found: BTreeMap<String, u64>,
    /// Installations whose repositories could not be listed.
    pub failed: Vec<u64>,
}

#[derive(Deserialize)]
struct RepositoryPage {
    #[serde(default)]
    repositories: Vec<RepositoryName>,
}

#[derive(Deserialize)]
struct RepositoryName {
    full_name: String,
}

#[derive(Deserialize)]
struct InstallationId {
    id: u64,
}

impl GitHubClient {
    /// The directory of which installation serves which repository; give it to the
    /// webhook so that deliveries fill it.
    pub fn installations(&self) -> InstallationDirectory {
        self.inner.installations.clone()
    }

    /// Whether the client authenticates as a GitHub App (else with a token).
    pub fn is_app(&self) -> bool {
        matches!(self.inner.auth, AuthState::App { .. })
    }

    /// A handle on the same client whose requests all use `installation`'s token (App
    /// credentials; a token client is returned as is).
    pub fn for_installation(&self, installation: u64) -> GitHubClient {
        GitHubClient {
            inner: self.inner.clone(),
            installation: self.is_app().then_some(installation),
        }
    }

    /// The installation of the App serving `repo` (see the module documentation).
    pub async fn repository_installation(&self, repo: &RepoRef) -> Result<u64, GitHubError> {
        let AuthState::App { credentials, .. } = &self.inner.auth else {
            return Err(GitHubError::Config("not a GitHub App client".into()));
        };
        let key = format!("{}/{}", repo.owner, repo.name).to_ascii_lowercase();
        let looked_up = self
            .inner
            .installations
            .entries
            .try_get_with(key.clone(), async {
                let url = self.url(&format!("repos/{}/{}/installation", repo.owner, repo.name))?;
                let answer = self
                    .execute(RequestSpec {
                        method: Method::GET,
                        url,
                        body: None,
                        accept: JSON_MEDIA_TYPE,
                        auth: AuthKind::AppJwt,
                        creates: false,
                    })
                    .await?;
                let id = answer.json::<InstallationId>()?.id;
                tracing::debug!(repository = %key, installation = id, "installation looked up");
                Ok::<u64, GitHubError>(id)
            })
            .await;
        match looked_up {
            Ok(id) => Ok(id),
            Err(err) => match (err.as_ref(), credentials.installation_id) {
                (GitHubError::NotFound(_), Some(default)) => Ok(default),
                (GitHubError::NotFound(_), None) => Err(GitHubError::NotFound(format!(
                    "the GitHub App is not installed on {key}"
                ))),
                _ => Err((*err).clone()),
            },
        }
    }

    /// The installation whose token a request to `url` carries: the bound one, else that
    /// of the repository the path names, else the default. Returns a boxed future: a
    /// lookup sends a request itself.
    pub(crate) fn installation_for<'a>(
        &'a self,
        url: &'a Url,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, GitHubError>> + Send + 'a>>
    {
        Box::pin(async move {
            if let Some(bound) = self.installation {
                return Ok(bound);
            }
            if let Some(repo) = self.repository_of(url) {
                return self.repository_installation(&repo).await;
            }
            match &self.inner.auth {
                AuthState::App { credentials, .. } => {
                    credentials.installation_id.ok_or_else(|| {
                        GitHubError::Config(format!(
                            "{} names no repository, and no default installation is configured",
                            url.path()
                        ))
                    })
                }
                AuthState::Token(_) => Err(GitHubError::Config("not a GitHub App client".into())),
            }
        })
    }

    /// A handle bound to the installation of `url` (App credentials, unbound handle only),
    /// for requests that follow from it (the pages of a list).
    pub(crate) async fn pinned_for(&self, url: &Url) -> Result<Option<GitHubClient>, GitHubError> {
        if !self.is_app() || self.installation.is_some() {
            return Ok(None);
        }
        let installation = self.installation_for(url).await?;
        Ok(Some(self.for_installation(installation)))
    }

    /// The repository a request path is about: `repos/{owner}/{repo}[/...]` under the API
    /// root.
    fn repository_of(&self, url: &Url) -> Option<RepoRef> {
        let root = self.inner.config.base_url.path();
        let rest = url.path().strip_prefix(root)?;
        let mut segments = rest.split('/');
        match (segments.next(), segments.next(), segments.next()) {
            (Some("repos"), Some(owner), Some(name)) if !owner.is_empty() && !name.is_empty() => {
                Some(RepoRef {
                    owner: owner.to_string(),
                    name: name.to_string(),
                })
            }
            _ => None,
        }
    }

    /// Every installation of the App (`GET /app/installations`, with the JWT, 100 per
    /// page, following `Link: rel="next"`).
    pub async fn app_installations(&self) -> Result<Vec<AppInstallation>, GitHubError> {
        let mut url = self.url("app/installations")?;
        url.query_pairs_mut().append_pair("per_page", "100");
        let mut all = Vec::new();
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let answer = self
                .execute(RequestSpec {
                    method: Method::GET,
                    url,
                    body: None,
                    accept: JSON_MEDIA_TYPE,
                    auth: AuthKind::AppJwt,
                    creates: false,
                })
                .await?;
            let page: Vec<AppInstallation> = answer.json()?;
            if page.is_empty() {
                break;
            }
            all.extend(page);
            if let Some(link) = next_link(&answer.headers) {
                next = Some(self.same_origin(&link)?);
            }
        }
        Ok(all)
    }

    /// Walks every installation of the App (`GET /app/installations`), then, as long as
    /// some of `wanted` (`owner/name`) are not placed yet, each installation's
    /// repositories (`GET /installation/repositories`, with its token), and records where
    /// each wanted repository was found in the directory. An installation whose
    /// repositories cannot be listed is reported in `failed` and skipped.
    pub async fn discover_installations(
        &self,
        wanted: &BTreeSet<String>,
    ) -> Result<RepositoryInstallations, GitHubError> {
        let wanted: BTreeSet<String> = wanted.iter().map(|r| r.to_ascii_lowercase()).collect();
        let installations = self.app_installations().await?;
        let mut result = RepositoryInstallations {
            installations: installations.len(),
            ..RepositoryInstallations::default()
        };
        for installation in &installations {
            if result.found.len() == wanted.len() {
                break;
            }
            if installation.suspended_at.is_some() {
                tracing::info!(
                    installation = installation.id,
                    account = installation.account.as_deref().unwrap_or(""),
                    "GitHub App installation is suspended; skipped"
                );
                continue;
            }
            match self
                .installation_repositories(installation.id, &wanted, &mut result.found)
                .await
            {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(
                        installation = installation.id,
                        account = installation.account.as_deref().unwrap_or(""),
                        error = %err,
                        "cannot list the repositories of a GitHub App installation"
                    );
                    result.failed.push(installation.id);
                }
            }
        }
        Ok(result)
    }

    /// Pages through `installation`'s repositories until every one of `wanted` is in
    /// `found`, recording the wanted ones met.
    async fn installation_repositories(
        &self,
        installation: u64,
        wanted: &BTreeSet<String>,
        found: &mut BTreeMap<String, u64>,
    ) -> Result<(), GitHubError> {
        let client = self.for_installation(installation);
        let mut url = self.url("installation/repositories")?;
        url.query_pairs_mut().append_pair("per_page", "100");
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let answer = client.get(url, JSON_MEDIA_TYPE).await?;
            let page: RepositoryPage = answer.json()?;
            if page.repositories.is_empty() {
                break;
            }
            for repository in page.repositories {
                let name = repository.full_name.to_ascii_lowercase();
                if wanted.contains(&name) && !found.contains_key(&name) {
                    self.inner.installations.remember(&name, installation).await;
                    found.insert(name, installation);
                }
            }
            if found.len() == wanted.len() {
                break;
            }
            if let Some(link) = next_link(&answer.headers) {
                next = Some(self.same_origin(&link)?);
            }
        }
        Ok(())
    }
}
