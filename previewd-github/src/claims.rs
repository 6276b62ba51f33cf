//! Which `PreviewRepository` owns a repository: the binding between a GitHub repository
//! and the namespace whose settings (images, domain, quotas) its pull requests get.
//!
//! Two rules, both decided here without I/O:
//! 1. **The platform decides who may claim what.** A [`ClaimPolicy`] maps namespaces to
//!    repository patterns (`owner/name`, `owner/*` or `*`, case-insensitive). A
//!    `PreviewRepository` in a namespace the policy does not allow for its repository is
//!    not a claim at all (condition `Claimed=False`, reason `NotAllowed`). Without a policy
//!    (the default, [`ClaimPolicy::open`]) every namespace may claim any repository;
//!    multi-tenant clusters should set `--repository-claims`.
//! 2. **A repository has at most one binding.** When two allowed objects claim the same
//!    repository, neither is used: deliveries for it are answered
//!    `conflicting_claims` and both objects get `Claimed=False`, reason `Conflict`, naming
//!    the other. Whoever created the second claim cannot take the repository over; an
//!    administrator removes the wrong one.

use previewd_kube::crd::PreviewRepository;

/// Reason of `Claimed=True`.
pub const REASON_BOUND: &str = "Bound";
/// Reason of `Claimed=False` when two objects claim one repository.
pub const REASON_CONFLICT: &str = "Conflict";
/// Reason of `Claimed=False` when the claim policy does not allow the namespace.
pub const REASON_NOT_ALLOWED: &str = "NotAllowed";

/// Which namespaces may claim which repositories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimPolicy {
    /// `None`: any namespace may claim any repository.
    rules: Option<Vec<(String, Vec<String>)>>,
}

impl ClaimPolicy {
    /// Every namespace may claim any repository (still at most one claim each).
    pub fn open() -> Self {
        ClaimPolicy { rules: None }
    }

    /// Parses `namespace=pattern[,pattern...]` entries separated by `;` or newlines,
    /// e.g. `team-a=acme/web,acme/api;team-b=acme-b/*`. Patterns are `owner/name`,
    /// `owner/*` or `*`. An empty text means nobody may claim anything.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in text
            .split([';', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (namespace, patterns) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected namespace=pattern[,pattern]"))?;
            let namespace = namespace.trim();
            if namespace.is_empty() {
                return Err(format!("{entry:?}: empty namespace"));
            }
            let mut list = Vec::new();
            for pattern in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let valid = pattern == "*"
                    || pattern.split_once('/').is_some_and(|(owner, name)| {
                        !owner.is_empty()
                            && owner != "*"
                            && !owner.contains('*')
                            && (name == "*" || (!name.is_empty() && !name.contains(['*', '/'])))
                    });
                if !valid {
                    return Err(format!(
                        "{pattern:?}: a pattern is owner/name, owner/* or *"
                    ));
                }
                list.push(pattern.to_ascii_lowercase());
            }
            rules.push((namespace.to_string(), list));
        }
        Ok(ClaimPolicy { rules: Some(rules) })
    }

    /// Whether `namespace` may claim `repository` (`owner/name`).
    pub fn allows(&self, namespace: &str, repository: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let repository = repository.to_ascii_lowercase();
        let owner = repository.split('/').next().unwrap_or_default();
        rules
            .iter()
            .filter(|(ns, _)| ns == namespace)
            .flat_map(|(_, patterns)| patterns)
            .any(|p| {
                p == "*" || *p == repository || p.strip_suffix("/*").is_some_and(|o| o == owner)
            })
    }
}

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
    mut candidates: Vec<PreviewRepository>,
    policy: &ClaimPolicy,
) -> Resolution {
    candidates.retain(|r| r.spec.repository.eq_ignore_ascii_case(repository));
    candidates.sort_by_key(id);
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
        return Resolution {
            bound: None,
            verdicts,
        };
    }
    let bound = allowed.into_iter().next();
    if let Some(r) = &bound {
        let (namespace, name) = id(r);
        verdicts.push(ClaimVerdict {
            message: format!("{repository} is bound to {namespace}/{name}"),
            namespace,
            name,
            claimed: true,
            reason: REASON_BOUND,
        });
    }
    Resolution { bound, verdicts }
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
        assert!(
            ClaimPolicy::parse("")
                .unwrap()
                .rules
                .is_some_and(|r| r.is_empty())
        );
        assert!(!ClaimPolicy::parse("").unwrap().allows("team", "acme/shop"));
        for bad in [
            "team",
            "=acme/x",
            "team=acme",
            "team=*/x",
            "team=ac*e/x",
            "team=a/b/c",
        ] {
            assert!(ClaimPolicy::parse(bad).is_err(), "{bad}");
        }
        assert!(
            ClaimPolicy::parse("team=*")
                .unwrap()
                .allows("team", "any/thing")
        );
    }
}
