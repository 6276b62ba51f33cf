//! Who may see the web view, and which environments.
//!
//! PR titles, branches and preview URLs are not public. Every request is authenticated,
//! then authorised per namespace against the API server's own RBAC, the way
//! kube-rbac-proxy guards the components it fronts:
//!
//! - `kubernetes` (the default): the request carries a bearer token (the `Authorization`
//!   header, or the cookie the login form sets). A `TokenReview` asks the API server
//!   whose token it is; with an audience configured (default `previewd`) only tokens
//!   minted for it are accepted (`kubectl create token NAME --audience previewd`), so
//!   the web view never accepts, and could never replay, a token meant for the API server.
//! - `proxy`: an authenticating proxy in front (oauth2-proxy, an identity-aware proxy)
//!   names the user (and groups) in headers; they are trusted only from the proxy's
//!   configured addresses.
//!
//! Then a `SubjectAccessReview` per namespace holding environments asks whether that user
//! may `list` `previewenvironments.previewd.io` there (one for all namespaces first).
//! The user sees the environments of those namespaces only, and is refused (403) when
//! there is none. Answers are cached briefly ([`CachedReview`]), keyed by a hash of the
//! token (the token itself is never logged or kept as a key), and every failure to ask
//! refuses access.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::model::Visible;

/// An authenticated user, as the API server knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct User {
    /// User name.
    pub name: String,
    /// UID, when known.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes, credential ids).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Asking the API server failed (or timed out): access is refused.
#[derive(Debug, thiserror::Error)]
#[error("could not check access with the API server: {0}")]
pub struct ReviewError(pub String);

/// Authentication and authorisation by the API server.
#[async_trait]
pub trait AccessReview: Send + Sync {
    /// Whose bearer token `token` is; `None` when the API server does not accept it (for
    /// the configured audience).
    async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError>;
    /// Whether `user` may list environments in `namespace` (`None`: in every
    /// namespace).
    async fn may_list(&self, user: &User, namespace: Option<&str>) -> Result<bool, ReviewError>;
}

/// The API server's `TokenReview` and `SubjectAccessReview`.
pub struct KubeReview {
    client: Client,
    audience: Option<String>,
}

impl KubeReview {
    /// Reviews with `client` (the operator's identity, which needs `create` on
    /// `tokenreviews` and `subjectaccessreviews`); tokens must be issued for `audience`
    /// (`None`: the API server's own audiences).
    pub fn new(client: Client, audience: Option<String>) -> KubeReview {
        KubeReview { client, audience }
    }
}

/// Longest wait for one review.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

async fn timed<T>(
    what: &str,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ReviewError> {
    match tokio::time::timeout(REVIEW_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ReviewError(format!("{what}: {e}"))),
        Err(_) => Err(ReviewError(format!("{what}: timed out"))),
    }
}

#[async_trait]
impl AccessReview for KubeReview {
    async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: self.audience.clone().map(|a| vec![a]),
            },
            ..TokenReview::default()
        };
        let answer = timed(
            "TokenReview",
            Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review),
        )
        .await?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        if let Some(audience) = &self.audience
            && !status
                .audiences
                .as_deref()
                .is_some_and(|a| a.iter().any(|x| x == audience))
        {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(user.username.filter(|n| !n.is_empty()).map(|name| User {
            name,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }

    async fn may_list(&self, user: &User, namespace: Option<&str>) -> Result<bool, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(previewd_kube::crd::GROUP.into()),
                    resource: Some("previewenvironments".into()),
                    verb: Some("list".into()),
                    namespace: namespace.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = timed(
            "SubjectAccessReview",
            Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review),
        )
        .await?;
        Ok(answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true)))
    }
}

/// Reviews cached for a short time: a page view asks the API server nothing when the
/// same user looked within the TTL. At most [`MAX_CONCURRENT_REVIEWS`] reviews run at
/// once.
pub struct CachedReview {
    inner: Arc<dyn AccessReview>,
    tokens: moka::future::Cache<[u8; 32], Option<User>>,
    decisions: moka::future::Cache<(User, Option<String>), bool>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Reviews in flight at once.
pub const MAX_CONCURRENT_REVIEWS: usize = 8;

impl CachedReview {
    /// Caches `inner`'s answers for `ttl`.
    pub fn new(inner: Arc<dyn AccessReview>, ttl: Duration) -> CachedReview {
        CachedReview {
            inner,
            tokens: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(10_000)
                .build(),
            decisions: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(100_000)
                .build(),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS)),
        }
    }

    /// The user `token` belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.tokens.get(&key).await {
            return Ok(hit);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ReviewError(e.to_string()))?;
        let user = self.inner.authenticate(token).await?;
        self.tokens.insert(key, user.clone()).await;
        Ok(user)
    }

    async fn may_list(&self, user: &User, namespace: Option<&str>) -> Result<bool, ReviewError> {
        let key = (user.clone(), namespace.map(str::to_string));
        if let Some(hit) = self.decisions.get(&key).await {
            return Ok(hit);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ReviewError(e.to_string()))?;
        let allowed = self.inner.may_list(user, namespace).await?;
        self.decisions.insert(key, allowed).await;
        Ok(allowed)
    }

    /// The namespaces among `namespaces` whose environments `user` may see: all of them
    /// when `user` may list environments everywhere.
    pub async fn visible(
        &self,
        user: &User,
        namespaces: BTreeSet<String>,
    ) -> Result<Visible, ReviewError> {
        if self.may_list(user, None).await? {
            return Ok(Visible::All);
        }
        let answers: Vec<(String, Result<bool, ReviewError>)> =
            futures::stream::iter(namespaces.into_iter().map(|ns| async move {
                let allowed = self.may_list(user, Some(&ns)).await;
                (ns, allowed)
            }))
            .buffer_unordered(MAX_CONCURRENT_REVIEWS)
            .collect()
            .await;
        let mut visible = BTreeSet::new();
        for (ns, allowed) in answers {
            if allowed? {
                visible.insert(ns);
            }
        }
        Ok(Visible::Namespaces(visible))
    }
}

/// How requests are authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Bearer tokens, reviewed by the API server.
    Kubernetes,
    /// Headers set by an authenticating proxy at one of these addresses.
    Proxy(TrustedProxy),
}

/// A request that names a user in the proxy's headers but did not come from the proxy.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the request did not come from the authenticating proxy")]
pub struct NotFromProxy;

/// The authenticating proxy the web view trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxy {
    /// Where its requests come from.
    pub addresses: Vec<ipnet::IpNet>,
    /// Header naming the user.
    pub user_header: String,
    /// Header naming the user's groups (repeated, or comma-separated).
    pub group_header: String,
}

impl TrustedProxy {
    /// The user the proxy names, when the request comes from the proxy; `Err` when it
    /// comes from anywhere else.
    pub fn user(
        &self,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> Result<Option<User>, NotFromProxy> {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if !self.addresses.iter().any(|net| net.contains(&peer)) {
            return Err(NotFromProxy);
        }
        let Some(name) = headers
            .get(&self.user_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let groups = headers
            .get_all(&self.group_header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Some(User {
            name: name.to_string(),
            groups,
            ..User::default()
        }))
    }
}

/// Name of the cookie holding the token the login form was given.
pub const TOKEN_COOKIE: &str = "previewd_token";

/// The bearer token of a request: its `Authorization: Bearer` header, else the login
/// cookie.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Whether `token` can be a bearer token at all (what the login form accepts before
/// asking the API server): printable ASCII without spaces or the characters a cookie
/// value may not hold, at most 16 KiB.
pub fn plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 16 * 1024
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A reviewer that knows one token and one user, who may list `team-a` only.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl AccessReview for Fake {
        async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok((token == "good").then(|| User {
                name: "alice".into(),
                ..User::default()
            }))
        }
        async fn may_list(&self, user: &User, ns: Option<&str>) -> Result<bool, ReviewError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if ns == Some("broken") {
                return Err(ReviewError("boom".into()));
            }
            Ok(user.name == "alice" && ns == Some("team-a"))
        }
    }

    #[tokio::test]
    async fn users_see_the_namespaces_they_may_list_and_answers_are_cached() {
        let fake = Arc::new(Fake::default());
        let review = CachedReview::new(fake.clone(), Duration::from_secs(30));
        assert_eq!(review.authenticate("bad").await.unwrap(), None);
        let alice = review.authenticate("good").await.unwrap().unwrap();
        let namespaces = BTreeSet::from(["team-a".to_string(), "team-b".to_string()]);
        let visible = review.visible(&alice, namespaces.clone()).await.unwrap();
        assert_eq!(
            visible,
            Visible::Namespaces(BTreeSet::from(["team-a".to_string()]))
        );
        let calls = fake.calls.load(Ordering::SeqCst);
        review.authenticate("good").await.unwrap();
        review.visible(&alice, namespaces).await.unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), calls, "cached");
        // An error refuses rather than guesses.
        assert!(
            review
                .visible(&alice, BTreeSet::from(["broken".to_string()]))
                .await
                .is_err()
        );
    }

    #[test]
    fn tokens_come_from_the_header_or_the_login_cookie() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            http::header::COOKIE,
            "a=b; previewd_token=c00kie".parse().unwrap(),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("c00kie"));
        h.insert(http::header::AUTHORIZATION, "Bearer t0ken".parse().unwrap());
        assert_eq!(bearer_token(&h).as_deref(), Some("t0ken"));
        h.insert(
            http::header::AUTHORIZATION,
            "Basic dXNlcg==".parse().unwrap(),
        );
        assert_eq!(bearer_token(&h), None, "another scheme is no token");
        assert!(plausible_token("eyJhbGciOi.abc-_"));
        assert!(!plausible_token("two words"));
        assert!(!plausible_token("a;b"));
        assert!(!plausible_token(""));
    }

    #[test]
    fn proxy_headers_count_only_from_the_proxy() {
        let proxy = TrustedProxy {
            addresses: vec!["10.0.0.0/24".parse().unwrap()],
            user_header: "X-Remote-User".into(),
            group_header: "X-Remote-Group".into(),
        };
        let mut h = http::HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev, ops".parse().unwrap());
        h.append("x-remote-group", "qa".parse().unwrap());
        let user = proxy
            .user("10.0.0.7".parse().unwrap(), &h)
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "ops", "qa"]);
        assert!(proxy.user("10.0.1.7".parse().unwrap(), &h).is_err());
        assert!(
            proxy
                .user("::ffff:10.0.0.7".parse().unwrap(), &h)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            proxy
                .user("10.0.0.7".parse().unwrap(), &http::HeaderMap::new())
                .unwrap(),
            None
        );
    }
}
