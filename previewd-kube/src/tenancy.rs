//! Tenancy: which `PreviewRepository` holds the claim on a repository, and whether an
//! environment may act for its repository at all.
//!
//! A claim binds a GitHub repository to the namespace whose `PreviewRepository`
//! settings (images, domain, quotas, Secrets) its pull requests get. Two rules, decided
//! here without I/O:
//! 1. **The platform decides who may claim what.** A [`ClaimPolicy`] maps namespaces to
//!    repository patterns. A `PreviewRepository` in a namespace the policy does not allow
//!    for its repository is not a claim at all (condition `Claimed=False`, reason
//!    `NotAllowed`).
//! 2. **A repository has at most one binding.** When two allowed objects claim the same
//!    repository, neither is used (`Claimed=False`, reason `Conflict`, naming the
//!    other). Whoever created the second claim cannot take the repository over; an
//!    administrator removes the wrong one.
//!
//! The webhook applies these rules when it renders an environment; the controller
//! applies them again, through [`authorise`], to every environment before it renders,
//! applies, copies, reads from or reports to anything: an environment is an object a
//! tenant can write directly, so the webhook's check alone proves nothing.

use std::sync::Arc;

pub use previewd_core::tenancy::{ClaimPolicy, RepositoryPatterns};

use crate::crd::PreviewRepository;

/// Reason of `Claimed=True`.
pub const REASON_BOUND: &str = "Bound";
/// Reason of `Claimed=False` when two objects claim one repository.
pub const REASON_CONFLICT: &str = "Conflict";
/// Reason of `Claimed=False` when the claim policy does not allow the namespace.
pub const REASON_NOT_ALLOWED: &str = "NotAllowed";
/// Condition reason of an environment that no claim authorises.
pub const REASON_NOT_CLAIMED: &str = "RepositoryNotClaimed";

/// The verdict on one `PreviewRepository` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimVerdict {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// `Claimed` status.
    pub claimed: bool,
    /// [`REASON_BOUND`], [`REASON_CONFLICT`] or [`REASON_NOT_ALLOWED`].
    pub reason: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

/// The binding of a repository.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The one object whose settings are used, if exactly one allowed object claims it.
    pub bound: Option<PreviewRepository>,
    /// A verdict for every object that names the repository.
    pub verdicts: Vec<ClaimVerdict>,
}

fn id(r: &PreviewRepository) -> (String, String) {
    (
        r.metadata.namespace.clone().unwrap_or_default(),
        r.metadata.name.clone().unwrap_or_default(),
    )
}

/// Resolves the binding of `repository` from every object that names it.
pub fn resolve(
    repository: &str,
    candidates: Vec<PreviewRepository>,
    policy: &ClaimPolicy,
) -> Resolution {
    let refs: Vec<&PreviewRepository> = candidates.iter().collect();
    let (bound, verdicts) = resolve_refs(repository, &refs, policy);
    Resolution {
        bound: bound.cloned(),
        verdicts,
    }
}

/// [`resolve`] over borrowed objects: the bound one, if any, and every verdict.
pub fn resolve_refs<'a>(
    repository: &str,
    candidates: &[&'a PreviewRepository],
    policy: &ClaimPolicy,
) -> (Option<&'a PreviewRepository>, Vec<ClaimVerdict>) {
    let mut candidates: Vec<&PreviewRepository> = candidates
        .iter()
        .copied()
        .filter(|r| r.spec.repository.eq_ignore_ascii_case(repository))
        .collect();
    candidates.sort_by_key(|r| id(r));
    let (allowed, refused): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|r| policy.allows(&id(r).0, repository));
    let mut verdicts: Vec<ClaimVerdict> = refused
        .iter()
        .map(|r| {
            let (namespace, name) = id(r);
            ClaimVerdict {
                message: format!(
                    "namespace {namespace} may not claim {repository} (repository claim policy)"
                ),
                namespace,
                name,
                claimed: false,
                reason: REASON_NOT_ALLOWED,
            }
        })
        .collect();
    if allowed.len() > 1 {
        let all: Vec<String> = allowed
            .iter()
            .map(|r| {
                let (ns, name) = id(r);
                format!("{ns}/{name}")
            })
            .collect();
        for r in &allowed {
            let (namespace, name) = id(r);
            let me = format!("{namespace}/{name}");
            let others: Vec<&str> = all
                .iter()
                .filter(|o| **o != me)
                .map(String::as_str)
                .collect();
            verdicts.push(ClaimVerdict {
                namespace,
                name,
                claimed: false,
                reason: REASON_CONFLICT,
                message: format!(
                    "{repository} is also claimed by {}; no environment is created until only one claim remains",
                    others.join(", ")
                ),
            });
        }
        return (None, verdicts);
    }
    let bound = allowed.into_iter().next();
    if let Some(r) = bound {
        let (namespace, name) = id(r);
        verdicts.push(ClaimVerdict {
            message: format!("{repository} is bound to {namespace}/{name}"),
            namespace,
            name,
            claimed: true,
            reason: REASON_BOUND,
        });
    }
    (bound, verdicts)
}

/// What authorises an environment to act for its repository.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// The settings the environment is rendered from: the `PreviewRepository` that holds
    /// the claim, when the environment names it (`spec.repositoryRef`); `None` for an
    /// environment that names none (it gets no repository settings, no Secrets and no
    /// egress rules).
    pub repository: Option<Arc<PreviewRepository>>,
}

/// Why an environment may not act for its repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Condition reason: [`REASON_NOT_CLAIMED`].
    pub reason: &'static str,
    /// Names the namespace, the repository and what refused it.
    pub message: String,
}

/// What the authorisation of one environment looks at.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The environment's namespace.
    pub namespace: &'a str,
    /// `spec.repository` (`owner/name`): whose commit statuses, deployments, comments,
    /// pull requests and files previewd would touch.
    pub repository: &'a str,
    /// `spec.repositoryRef`: the `PreviewRepository` (same namespace) it is rendered from.
    pub repository_ref: Option<&'a str>,
}

/// The one authorisation point: whether the environment described by `subject` may act
/// for its repository, given every `PreviewRepository` the controller sees and the
/// platform's claim policy.
///
/// 1. The environment's namespace must be allowed to claim the repository.
/// 2. If an allowed `PreviewRepository` claims it, that claim must be the only one and
///    live in the environment's namespace; an environment naming a
///    `PreviewRepository` must name that one.
/// 3. An environment naming a `PreviewRepository` that claims nothing, or another
///    repository, is refused: its settings were never authorised for this repository.
///
/// An environment of a repository nobody claims, in a namespace the policy allows,
/// naming no `PreviewRepository`, is granted with no settings: the single-tenant
/// default (with the open policy) and the way a platform team creates environments
/// by hand.
pub fn authorise(
    subject: Subject<'_>,
    repositories: &[Arc<PreviewRepository>],
    policy: &ClaimPolicy,
) -> Result<Grant, Refusal> {
    let Subject {
        namespace,
        repository,
        repository_ref,
    } = subject;
    let refuse = |message: String| Refusal {
        reason: REASON_NOT_CLAIMED,
        message,
    };
    if !policy.allows(namespace, repository) {
        return Err(refuse(format!(
            "namespace {namespace} may not claim {repository} under {}; previewd neither deploys nor reports for this environment",
            policy.describe()
        )));
    }
    let refs: Vec<&PreviewRepository> = repositories.iter().map(Arc::as_ref).collect();
    let (bound, verdicts) = resolve_refs(repository, &refs, policy);
    if bound.is_none() && verdicts.iter().any(|v| v.reason == REASON_CONFLICT) {
        let claimants: Vec<String> = verdicts
            .iter()
            .filter(|v| v.reason == REASON_CONFLICT)
            .map(|v| format!("{}/{}", v.namespace, v.name))
            .collect();
        return Err(refuse(format!(
            "{repository} is claimed by several PreviewRepositories ({}); nothing is done for it until only one claim remains",
            claimants.join(", ")
        )));
    }
    let named = repository_ref.map(|name| {
        repositories.iter().find(|r| {
            r.metadata.namespace.as_deref() == Some(namespace)
                && r.metadata.name.as_deref() == Some(name)
        })
    });
    match (bound, named) {
        (Some(b), _) if b.metadata.namespace.as_deref() != Some(namespace) => {
            let (ns, name) = id(b);
            Err(refuse(format!(
                "{repository} is claimed by PreviewRepository {ns}/{name}: only environments in namespace {ns} may act for it, not {namespace}"
            )))
        }
        (Some(b), Some(Some(r))) if id(r) == id(b) => Ok(Grant {
            repository: Some(r.clone()),
        }),
        (Some(b), Some(_)) => Err(refuse(format!(
            "the environment names PreviewRepository {namespace}/{}, but {repository} is claimed by {namespace}/{}",
            repository_ref.unwrap_or_default(),
            id(b).1
        ))),
        (_, Some(None)) => Err(refuse(format!(
            "the environment names PreviewRepository {namespace}/{}, which does not exist",
            repository_ref.unwrap_or_default()
        ))),
        (None, Some(Some(r))) => Err(refuse(format!(
            "the environment names PreviewRepository {namespace}/{}, which claims {}, not {repository}",
            repository_ref.unwrap_or_default(),
            r.spec.repository
        ))),
        (_, None) => Ok(Grant { repository: None }),
    }
}

/// The controller's authorisation as reporters ask it, right before each write, from
/// the controller's cache of `PreviewRepository` objects (available once the controller
/// runs; until then nothing is authorised).
#[derive(Clone)]
pub struct ClaimAuthoriser {
    repositories: Arc<std::sync::OnceLock<kube::runtime::reflector::Store<PreviewRepository>>>,
    policy: ClaimPolicy,
}

impl ClaimAuthoriser {
    /// Asks `repositories` (filled when the controller starts) under `policy`.
    pub fn new(
        repositories: Arc<std::sync::OnceLock<kube::runtime::reflector::Store<PreviewRepository>>>,
        policy: ClaimPolicy,
    ) -> Self {
        ClaimAuthoriser {
            repositories,
            policy,
        }
    }
}

impl std::fmt::Debug for ClaimAuthoriser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimAuthoriser")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl previewd_core::environment::ReportAuthoriser for ClaimAuthoriser {
    fn authorise(
        &self,
        env: &previewd_core::environment::EnvironmentView,
        deleted: bool,
    ) -> Result<(), String> {
        let Some(store) = self.repositories.get() else {
            return Err("the controller's cache of PreviewRepositories is not running".into());
        };
        // The last report of a deleted environment needs no settings, only the claim.
        let repository_ref = if deleted {
            None
        } else {
            env.repository_ref.as_deref()
        };
        let relevant: Vec<Arc<PreviewRepository>> = store
            .state()
            .into_iter()
            .filter(|r| {
                r.spec.repository.eq_ignore_ascii_case(&env.repository)
                    || (r.metadata.namespace.as_deref() == Some(env.namespace.as_str())
                        && r.metadata.name.as_deref() == repository_ref)
            })
            .collect();
        authorise(
            Subject {
                namespace: &env.namespace,
                repository: &env.repository,
                repository_ref,
            },
            &relevant,
            &self.policy,
        )
        .map(|_| ())
        .map_err(|refusal| refusal.message)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(namespace: &str, name: &str, repository: &str) -> PreviewRepository {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"repository": repository, "baseDomain": "preview.example.com",
                "catalogue": {"services": []}}
        }))
        .unwrap()
    }

    #[test]
    fn a_second_claim_blocks_both_and_names_the_other() {
        let r = resolve(
            "acme/shop",
            vec![
                claim("attacker", "x", "ACME/shop"),
                claim("team", "shop", "acme/shop"),
                claim("team", "other", "acme/other"),
            ],
            &ClaimPolicy::open(),
        );
        assert!(r.bound.is_none());
        assert_eq!(r.verdicts.len(), 2);
        for v in &r.verdicts {
            assert!(!v.claimed);
            assert_eq!(v.reason, REASON_CONFLICT);
        }
        assert!(r.verdicts[0].message.contains("team/shop"));
        assert!(r.verdicts[1].message.contains("attacker/x"));
    }

    #[test]
    fn the_policy_decides_who_may_claim() {
        let policy = ClaimPolicy::parse("team=acme/*; other=acme/web,zeta/x").unwrap();
        assert!(policy.allows("team", "Acme/Shop"));
        assert!(policy.allows("other", "acme/web"));
        assert!(!policy.allows("other", "acme/shop"));
        assert!(!policy.allows("attacker", "acme/shop"));
        let r = resolve(
            "acme/shop",
            vec![
                claim("attacker", "x", "acme/shop"),
                claim("team", "shop", "acme/shop"),
            ],
            &policy,
        );
        assert_eq!(
            r.bound
                .as_ref()
                .and_then(|b| b.metadata.namespace.as_deref()),
            Some("team")
        );
        let refused = r
            .verdicts
            .iter()
            .find(|v| v.namespace == "attacker")
            .unwrap();
        assert_eq!(
            (refused.claimed, refused.reason),
            (false, REASON_NOT_ALLOWED)
        );
        let bound = r.verdicts.iter().find(|v| v.namespace == "team").unwrap();
        assert_eq!((bound.claimed, bound.reason), (true, REASON_BOUND));
    }

    fn arcs(list: Vec<PreviewRepository>) -> Vec<Arc<PreviewRepository>> {
        list.into_iter().map(Arc::new).collect()
    }

    fn subject<'a>(namespace: &'a str, repository: &'a str, r: Option<&'a str>) -> Subject<'a> {
        Subject {
            namespace,
            repository,
            repository_ref: r,
        }
    }

    #[test]
    fn an_environment_outside_the_policy_is_refused_whatever_it_names() {
        let policy = ClaimPolicy::parse("team=acme/shop").unwrap();
        let repos = arcs(vec![claim("team", "shop", "acme/shop")]);
        for r in [None, Some("shop"), Some("anything")] {
            let refusal =
                authorise(subject("attacker", "acme/shop", r), &repos, &policy).unwrap_err();
            assert_eq!(refusal.reason, REASON_NOT_CLAIMED);
            assert!(
                refusal
                    .message
                    .contains("namespace attacker may not claim acme/shop")
            );
            assert!(refusal.message.contains("--repository-claims"));
        }
    }

    #[test]
    fn only_the_namespace_holding_the_claim_may_act_even_with_the_open_policy() {
        let open = ClaimPolicy::open();
        let repos = arcs(vec![
            claim("team", "shop", "acme/shop"),
            claim("other", "mine", "other/repo"),
        ]);
        let refusal = authorise(subject("other", "acme/shop", None), &repos, &open).unwrap_err();
        assert!(
            refusal
                .message
                .contains("claimed by PreviewRepository team/shop"),
            "{refusal:?}"
        );
        // Rendering acme/shop from a PreviewRepository that claims another repository.
        let refusal =
            authorise(subject("other", "acme/shop", Some("mine")), &repos, &open).unwrap_err();
        assert!(
            refusal
                .message
                .contains("claimed by PreviewRepository team/shop")
        );
        let refusal = authorise(
            subject("other", "nobody/claims", Some("mine")),
            &repos,
            &open,
        )
        .unwrap_err();
        assert!(
            refusal
                .message
                .contains("which claims other/repo, not nobody/claims"),
            "{refusal:?}"
        );
        // The legitimate paths.
        let grant = authorise(subject("team", "acme/shop", Some("shop")), &repos, &open).unwrap();
        assert_eq!(
            grant
                .repository
                .as_ref()
                .and_then(|r| r.metadata.name.as_deref()),
            Some("shop")
        );
        let bare = authorise(subject("team", "ACME/Shop", None), &repos, &open).unwrap();
        assert!(bare.repository.is_none());
        let unclaimed = authorise(subject("any", "nobody/claims", None), &repos, &open).unwrap();
        assert!(unclaimed.repository.is_none());
    }

    #[test]
    fn a_refused_or_conflicting_or_missing_repository_authorises_nothing() {
        let policy = ClaimPolicy::parse("team=acme/*;attacker=attacker/*").unwrap();
        // The attacker's PreviewRepository claims acme/shop; the policy refuses it.
        let repos = arcs(vec![claim("attacker", "x", "acme/shop")]);
        assert!(authorise(subject("attacker", "acme/shop", Some("x")), &repos, &policy).is_err());
        // Two allowed claims: neither holds.
        let repos = arcs(vec![
            claim("team", "a", "acme/shop"),
            claim("team", "b", "acme/shop"),
        ]);
        let refusal =
            authorise(subject("team", "acme/shop", Some("a")), &repos, &policy).unwrap_err();
        assert!(
            refusal
                .message
                .contains("several PreviewRepositories (team/a, team/b)"),
            "{refusal:?}"
        );
        // Naming one that does not exist.
        let refusal =
            authorise(subject("team", "acme/web", Some("gone")), &[], &policy).unwrap_err();
        assert!(refusal.message.contains("team/gone, which does not exist"));
        // Naming another object of the same namespace than the one holding the claim.
        let repos = arcs(vec![
            claim("team", "shop", "acme/shop"),
            claim("team", "web", "acme/web"),
        ]);
        let refusal =
            authorise(subject("team", "acme/shop", Some("web")), &repos, &policy).unwrap_err();
        assert!(
            refusal.message.contains("claimed by team/shop"),
            "{refusal:?}"
        );
    }
}
