//! Who is a maintainer of a repository: someone whose permission on it, as GitHub
//! computes it, is at least the configured role. Maintainers run PR commands and approve
//! fork pull requests.
//!
//! # Why not `author_association`
//!
//! A webhook's `author_association` says how someone relates to the repository, not what
//! they may do there: `COLLABORATOR` is anyone invited with any role (read included) and
//! `MEMBER` any member of the owning organisation. It is also computed without a viewer,
//! so a member whose membership is private arrives as `CONTRIBUTOR`. previewd therefore
//! asks GitHub's collaborator permission API
//! (`GET /repos/{owner}/{repo}/collaborators/{username}/permission`), which returns the
//! highest role granted through the repository, teams, the organisation and the
//! enterprise: `role_name` (`admin`, `maintain`, `write`, `triage`, `read` or a custom
//! role's name) and the legacy `permission` (`admin`, `write`, `read`, `none`).
//!
//! # The rule
//!
//! [`PermissionPolicy`]: a built-in role counts when it is at least
//! [`PermissionPolicy::minimum`] (default `write`: admin, maintain and write); a custom
//! role counts only when its name is listed in [`PermissionPolicy::custom_roles`],
//! whatever its base role; anything else (404, `none`, an unknown answer) does not. When
//! GitHub answers only the legacy `permission`, `write` is read as `write` (it may be
//! `maintain`, which GitHub maps to it).
//!
//! # Failing closed
//!
//! A 404 is an answer: no permission. Everything else that is not a 200 (5xx, rate
//! limits, 401/403, a timeout, an undecodable body) is no answer, and the action it
//! guards is refused, never allowed ([`Verdict::Unknown`]). Answers (not errors) are
//! cached per (repository, user) for [`Permissions`]' time to live and coalesced while
//! in flight, so a flood of comments by one account costs one request; the `member`,
//! `membership`, `organization` and `team` webhooks drop the affected entries at once.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use previewd_core::source_control::{PullRequestInfo, RepoRef};
use serde::Deserialize;

use crate::client::{GitHubClient, GitHubError};

/// A built-in repository role, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read.
    Read,
    /// Triage: manage issues and pull requests (labels included), no write.
    Triage,
    /// Write: push.
    Write,
    /// Maintain: manage the repository without sensitive settings.
    Maintain,
    /// Admin.
    Admin,
}

impl Role {
    /// GitHub's name of the role.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Triage => "triage",
            Role::Write => "write",
            Role::Maintain => "maintain",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Role::Read),
            "triage" => Ok(Role::Triage),
            "write" => Ok(Role::Write),
            "maintain" => Ok(Role::Maintain),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: one of read, triage, write, maintain, admin"
            )),
        }
    }
}

/// A user's permission on a repository, as GitHub's collaborator permission API answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CollaboratorPermission {
    /// The role's name: a built-in role or a custom one; empty when GitHub sent none.
    #[serde(default)]
    pub role_name: String,
    /// The legacy base role: `admin`, `write`, `read` or `none`.
    #[serde(default)]
    pub permission: String,
}

impl CollaboratorPermission {
    /// No permission at all (GitHub answered 404).
    pub fn none() -> Self {
        CollaboratorPermission {
            role_name: String::new(),
            permission: "none".into(),
        }
    }

    /// What the answer calls the user's role, for messages.
    pub fn describe(&self) -> String {
        let role = self.role_name.trim();
        if role.is_empty() {
            match self.permission.trim() {
                "" => "none".into(),
                p => p.to_ascii_lowercase(),
            }
        } else {
            role.to_ascii_lowercase()
        }
    }
}

/// Who counts as a maintainer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionPolicy {
    /// Least built-in role (default [`Role::Write`]).
    pub minimum: Role,
    /// Custom repository roles that count too (compared case-insensitively); a custom
    /// role not listed never counts.
    pub custom_roles: Vec<String>,
}

impl Default for PermissionPolicy {
    fn default() -> Self {
        PermissionPolicy {
            minimum: Role::Write,
            custom_roles: Vec::new(),
        }
    }
}

impl PermissionPolicy {
    /// Whether `permission` makes its holder a maintainer.
    pub fn allows(&self, permission: &CollaboratorPermission) -> bool {
        let role_name = permission.role_name.trim();
        if !role_name.is_empty() {
            return match role_name.parse::<Role>() {
                Ok(role) => role >= self.minimum,
                Err(_) if role_name.eq_ignore_ascii_case("none") => false,
                Err(_) => self
                    .custom_roles
                    .iter()
                    .any(|c| c.trim().eq_ignore_ascii_case(role_name)),
            };
        }
        // Only the legacy base role: admin, write (write or maintain), read (read or
        // triage), none.
        let legacy = match permission.permission.trim().to_ascii_lowercase().as_str() {
            "admin" => Role::Admin,
            "write" => Role::Write,
            _ => return false,
        };
        legacy >= self.minimum
    }

    /// What the policy asks for, for messages: `write or above` (`, or the custom role
    /// developer`).
    pub fn describe(&self) -> String {
        let mut text = match self.minimum {
            Role::Admin => "admin".to_string(),
            role => format!("{role} or above"),
        };
        if !self.custom_roles.is_empty() {
            text.push_str(&format!(
                " (or the custom role {})",
                self.custom_roles.join(", ")
            ));
        }
        text
    }
}

/// What previewd asks GitHub about a repository to decide who may act on it.
#[async_trait]
pub trait RepositoryAccess: Send + Sync {
    /// `login`'s permission on `repo`; a 404 is [`CollaboratorPermission::none`].
    async fn collaborator_permission(
        &self,
        repo: &RepoRef,
        login: &str,
    ) -> Result<CollaboratorPermission, GitHubError>;

    /// The pull request as GitHub sees it now (head commit, state, labels).
    async fn pull_request(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestInfo, GitHubError>;
}

#[async_trait]
impl RepositoryAccess for GitHubClient {
    async fn collaborator_permission(
        &self,
        repo: &RepoRef,
        login: &str,
    ) -> Result<CollaboratorPermission, GitHubError> {
        GitHubClient::collaborator_permission(self, repo, login).await
    }

    async fn pull_request(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<PullRequestInfo, GitHubError> {
        GitHubClient::pull_request_info(self, repo, number).await
    }
}

/// Whether `login` looks like a GitHub login (letters, digits and hyphens, 1–39
/// characters, optionally a `[bot]` suffix): anything else is never looked up.
pub fn valid_login(login: &str) -> bool {
    let name = login.strip_suffix("[bot]").unwrap_or(login);
    !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The answer about one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A maintainer.
    Allowed(CollaboratorPermission),
    /// GitHub answered, and the answer is not enough.
    Refused(CollaboratorPermission),
    /// No answer (GitHub failed, timed out or is not configured): refuse, saying why.
    Unknown(String),
}

/// Asks GitHub who is a maintainer, with a cache.
pub struct Permissions {
    access: Arc<dyn RepositoryAccess>,
    policy: PermissionPolicy,
    timeout: Duration,
    cache: moka::future::Cache<(String, String), CollaboratorPermission>,
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permissions")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// Most (repository, user) answers kept.
const CACHE_CAPACITY: u64 = 10_000;

impl Permissions {
    /// Asks `access` under `policy`; answers are kept for `ttl`, and each question to
    /// GitHub gets at most `timeout`.
    pub fn new(
        access: Arc<dyn RepositoryAccess>,
        policy: PermissionPolicy,
        ttl: Duration,
        timeout: Duration,
    ) -> Self {
        Permissions {
            access,
            policy,
            timeout,
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &PermissionPolicy {
        &self.policy
    }

    /// Whether `login` is a maintainer of `repository` (`owner/name`).
    pub async fn check(&self, repository: &str, login: &str) -> Verdict {
        let Some(repo) = RepoRef::parse(repository) else {
            return Verdict::Unknown(format!("{repository:?} is not owner/name"));
        };
        if !valid_login(login) {
            return Verdict::Refused(CollaboratorPermission::none());
        }
        let key = (repository.to_ascii_lowercase(), login.to_ascii_lowercase());
        let access = self.access.clone();
        let login_owned = login.to_string();
        let lookup = self.cache.try_get_with(key, async move {
            access.collaborator_permission(&repo, &login_owned).await
        });
        match tokio::time::timeout(self.timeout, lookup).await {
            Err(_) => Verdict::Unknown(format!(
                "GitHub did not answer the permission check within {}s",
                self.timeout.as_secs_f64()
            )),
            Ok(Err(err)) => Verdict::Unknown(format!(
                "GitHub could not tell the permission ({})",
                err.category()
            )),
            Ok(Ok(permission)) if self.policy.allows(&permission) => Verdict::Allowed(permission),
            Ok(Ok(permission)) => Verdict::Refused(permission),
        }
    }

    /// Pull request `number` of `repository` as GitHub sees it now, within the timeout.
    pub async fn pull_request(
        &self,
        repository: &str,
        number: u64,
    ) -> Result<PullRequestInfo, String> {
        let repo = RepoRef::parse(repository)
            .ok_or_else(|| format!("{repository:?} is not owner/name"))?;
        match tokio::time::timeout(self.timeout, self.access.pull_request(&repo, number)).await {
            Err(_) => Err(format!(
                "GitHub did not answer for the pull request within {}s",
                self.timeout.as_secs_f64()
            )),
            Ok(Err(err)) => Err(format!(
                "GitHub could not read the pull request ({})",
                err.category()
            )),
            Ok(Ok(pr)) => Ok(pr),
        }
    }

    /// Drops what is known about `login` on `repository`.
    pub async fn forget(&self, repository: &str, login: &str) {
        self.cache
            .invalidate(&(repository.to_ascii_lowercase(), login.to_ascii_lowercase()))
            .await;
    }

    /// Drops what is known about `login` on every repository.
    pub fn forget_user(&self, login: &str) {
        let login = login.to_ascii_lowercase();
        // Only fails without `support_invalidation_closures`, which is set.
        if self
            .cache
            .invalidate_entries_if(move |(_, user), _| *user == login)
            .is_err()
        {
            self.cache.invalidate_all();
        }
    }

    /// Drops everything (a team's access changed).
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }
}

/// A webhook that says someone's access may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessChange {
    /// A collaborator of one repository (`member`).
    Collaborator {
        /// `owner/name`.
        repository: String,
        /// Login.
        login: String,
    },
    /// A user's organisation or team membership (`membership`, `organization`).
    User(String),
    /// Possibly anyone's (`team`, or an event that names nobody).
    Everyone,
}

#[derive(Deserialize)]
struct Login {
    login: String,
}

#[derive(Deserialize)]
struct RepositoryName {
    full_name: String,
}

#[derive(Deserialize)]
struct MemberEvent {
    member: Login,
    #[serde(default)]
    repository: Option<RepositoryName>,
}

#[derive(Deserialize)]
struct MembershipEvent {
    member: Login,
}

#[derive(Deserialize)]
struct OrganizationMembership {
    #[serde(default)]
    user: Option<Login>,
}

#[derive(Deserialize)]
struct OrganizationEvent {
    #[serde(default)]
    membership: Option<OrganizationMembership>,
}

/// Events that can change someone's permission on a repository.
pub const ACCESS_EVENTS: &[&str] = &["member", "membership", "organization", "team"];

/// What an access event changed; an error for a payload of another shape.
pub fn access_change(event: &str, payload: &[u8]) -> Result<AccessChange, serde_json::Error> {
    Ok(match event {
        "member" => {
            let e: MemberEvent = serde_json::from_slice(payload)?;
            match e.repository {
                Some(repo) => AccessChange::Collaborator {
                    repository: repo.full_name,
                    login: e.member.login,
                },
                None => AccessChange::User(e.member.login),
            }
        }
        "membership" => {
            let e: MembershipEvent = serde_json::from_slice(payload)?;
            AccessChange::User(e.member.login)
        }
        "organization" => {
            let e: OrganizationEvent = serde_json::from_slice(payload)?;
            match e.membership.and_then(|m| m.user) {
                Some(user) => AccessChange::User(user.login),
                None => AccessChange::Everyone,
            }
        }
        _ => {
            serde_json::from_slice::<serde::de::IgnoredAny>(payload)?;
            AccessChange::Everyone
        }
    })
}

impl Permissions {
    /// Forgets what `change` may have made wrong.
    pub async fn apply(&self, change: &AccessChange) {
        match change {
            AccessChange::Collaborator { repository, login } => {
                self.forget(repository, login).await;
            }
            AccessChange::User(login) => self.forget_user(login),
            AccessChange::Everyone => self.forget_all(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn answer(role_name: &str, permission: &str) -> CollaboratorPermission {
        CollaboratorPermission {
            role_name: role_name.into(),
            permission: permission.into(),
        }
    }

    #[test]
    fn write_or_above_by_default_and_custom_roles_only_when_listed() {
        let policy = PermissionPolicy::default();
        for ok in [
            answer("admin", "admin"),
            answer("maintain", "write"),
            answer("write", "write"),
            answer("WRITE", "write"),
            // No role name (older servers): the legacy permission decides.
            answer("", "write"),
            answer("", "admin"),
        ] {
            assert!(policy.allows(&ok), "{ok:?}");
        }
        for refused in [
            answer("triage", "read"),
            answer("read", "read"),
            answer("", "read"),
            answer("", "none"),
            answer("none", "none"),
            CollaboratorPermission::none(),
            CollaboratorPermission::default(),
            // A custom role, even one based on write, counts only when listed.
            answer("deployer", "write"),
        ] {
            assert!(!policy.allows(&refused), "{refused:?}");
        }
        let listed = PermissionPolicy {
            minimum: Role::Maintain,
            custom_roles: vec!["Deployer".into()],
        };
        assert!(listed.allows(&answer("deployer", "write")));
        assert!(listed.allows(&answer("maintain", "write")));
        assert!(!listed.allows(&answer("write", "write")));
        // Legacy `write` may be maintain or write: not enough for `maintain`.
        assert!(!listed.allows(&answer("", "write")));
        let triage = PermissionPolicy {
            minimum: Role::Triage,
            custom_roles: vec![],
        };
        assert!(triage.allows(&answer("triage", "read")));
        assert!(!triage.allows(&answer("read", "read")));
        assert_eq!(PermissionPolicy::default().describe(), "write or above");
        assert_eq!(
            listed.describe(),
            "maintain or above (or the custom role Deployer)"
        );
        assert_eq!("Maintain".parse::<Role>(), Ok(Role::Maintain));
        assert!("owner".parse::<Role>().is_err());
    }

    #[test]
    fn logins_are_checked_before_any_lookup() {
        for ok in ["octocat", "a", "dependabot[bot]", "Octo-Cat-42"] {
            assert!(valid_login(ok), "{ok}");
        }
        for bad in ["", "a/b", "../x", "a b", "[bot]", &"x".repeat(40), "é"] {
            assert!(!valid_login(bad), "{bad}");
        }
    }

    /// Answers from a script, counting questions.
    struct Scripted {
        answers: Mutex<Vec<Result<CollaboratorPermission, GitHubError>>>,
        asked: AtomicUsize,
        delay: Duration,
    }

    impl Scripted {
        fn new(answers: Vec<Result<CollaboratorPermission, GitHubError>>) -> Arc<Self> {
            Arc::new(Scripted {
                answers: Mutex::new(answers),
                asked: AtomicUsize::new(0),
                delay: Duration::ZERO,
            })
        }
    }

    #[async_trait]
    impl RepositoryAccess for Scripted {
        async fn collaborator_permission(
            &self,
            _repo: &RepoRef,
            _login: &str,
        ) -> Result<CollaboratorPermission, GitHubError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                return Err(GitHubError::Transport("no more answers".into()));
            }
            answers.remove(0)
        }

        async fn pull_request(
            &self,
            _repo: &RepoRef,
            _number: u64,
        ) -> Result<PullRequestInfo, GitHubError> {
            Err(GitHubError::NotFound("no pull requests here".into()))
        }
    }

    fn permissions(access: Arc<Scripted>) -> Permissions {
        Permissions::new(
            access,
            PermissionPolicy::default(),
            Duration::from_secs(300),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn errors_refuse_and_are_not_cached_answers_are() {
        let access = Scripted::new(vec![
            Err(GitHubError::Server {
                status: 502,
                attempts: 3,
            }),
            Err(GitHubError::RateLimited { retry_after: None }),
            Ok(answer("write", "write")),
        ]);
        let p = permissions(access.clone());
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Unknown(why) if why.contains("server_error")
        ));
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Unknown(why) if why.contains("rate_limited")
        ));
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Allowed(_)
        ));
        // Cached, also under another spelling of the same names.
        assert!(matches!(
            p.check("Acme/Shop", "ALICE").await,
            Verdict::Allowed(_)
        ));
        assert_eq!(access.asked.load(Ordering::SeqCst), 3);
        // A login that is not one is never looked up.
        assert!(matches!(
            p.check("acme/shop", "../../user").await,
            Verdict::Refused(_)
        ));
        assert_eq!(access.asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn access_events_drop_what_they_may_have_changed() {
        let access = Scripted::new(vec![
            Ok(answer("write", "write")),
            Ok(answer("write", "write")),
            Ok(answer("read", "read")),
            Ok(answer("read", "read")),
            Ok(answer("write", "write")),
        ]);
        let p = permissions(access.clone());
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            p.check("acme/web", "bob").await,
            Verdict::Allowed(_)
        ));
        // alice is made read-only on acme/shop: the `member` event forgets her there.
        p.apply(&AccessChange::Collaborator {
            repository: "ACME/shop".into(),
            login: "Alice".into(),
        })
        .await;
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Refused(_)
        ));
        assert!(matches!(
            p.check("acme/web", "bob").await,
            Verdict::Allowed(_)
        ));
        assert_eq!(access.asked.load(Ordering::SeqCst), 3);
        // bob leaves a team: forgotten everywhere.
        p.apply(&AccessChange::User("bob".into())).await;
        assert!(matches!(
            p.check("acme/web", "bob").await,
            Verdict::Refused(_)
        ));
        p.apply(&AccessChange::Everyone).await;
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Allowed(_)
        ));
        assert_eq!(access.asked.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_slow_github_is_an_unknown_answer() {
        let access = Arc::new(Scripted {
            answers: Mutex::new(vec![Ok(answer("admin", "admin"))]),
            asked: AtomicUsize::new(0),
            delay: Duration::from_secs(3600),
        });
        let p = Permissions::new(
            access,
            PermissionPolicy::default(),
            Duration::from_secs(300),
            Duration::from_millis(20),
        );
        assert!(matches!(
            p.check("acme/shop", "alice").await,
            Verdict::Unknown(why) if why.contains("within")
        ));
    }

    #[test]
    fn access_events_name_who_changed() {
        let member = serde_json::json!({"action": "edited", "member": {"login": "alice"},
            "repository": {"full_name": "acme/shop"}});
        assert_eq!(
            access_change("member", member.to_string().as_bytes()).unwrap(),
            AccessChange::Collaborator {
                repository: "acme/shop".into(),
                login: "alice".into()
            }
        );
        let membership = serde_json::json!({"action": "removed", "member": {"login": "bob"},
            "team": {"name": "devs"}});
        assert_eq!(
            access_change("membership", membership.to_string().as_bytes()).unwrap(),
            AccessChange::User("bob".into())
        );
        let org = serde_json::json!({"action": "member_removed",
            "membership": {"user": {"login": "carol"}}});
        assert_eq!(
            access_change("organization", org.to_string().as_bytes()).unwrap(),
            AccessChange::User("carol".into())
        );
        let renamed = serde_json::json!({"action": "renamed"});
        assert_eq!(
            access_change("organization", renamed.to_string().as_bytes()).unwrap(),
            AccessChange::Everyone
        );
        let team = serde_json::json!({"action": "added_to_repository"});
        assert_eq!(
            access_change("team", team.to_string().as_bytes()).unwrap(),
            AccessChange::Everyone
        );
        assert!(access_change("member", b"{}").is_err());
    }
}
