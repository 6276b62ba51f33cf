//! Who may act for which repository: the platform's claim policy and the repository
//! patterns that Secrets and claims are matched against. Pure: the Kubernetes side
//! (which `PreviewRepository` holds a claim) lives in `previewd-kube`.

use std::fmt;

/// A list of repository patterns: `owner/name`, `owner/*` or `*`, matched
/// case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepositoryPatterns(Vec<String>);

impl RepositoryPatterns {
    /// Parses patterns separated by commas or whitespace. An empty text matches nothing.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut list = Vec::new();
        for pattern in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let valid = pattern == "*"
                || pattern.split_once('/').is_some_and(|(owner, name)| {
                    !owner.is_empty()
                        && !owner.contains('*')
                        && (name == "*" || (!name.is_empty() && !name.contains(['*', '/'])))
                });
            if !valid {
                return Err(format!(
                    "{pattern:?}: a repository pattern is owner/name, owner/* or *"
                ));
            }
            list.push(pattern.to_ascii_lowercase());
        }
        Ok(RepositoryPatterns(list))
    }

    /// Whether any pattern matches `repository` (`owner/name`).
    pub fn matches(&self, repository: &str) -> bool {
        let repository = repository.to_ascii_lowercase();
        let owner = repository.split('/').next().unwrap_or_default();
        self.0.iter().any(|p| {
            p == "*" || *p == repository || p.strip_suffix("/*").is_some_and(|o| o == owner)
        })
    }

    /// Whether the list is empty (matches nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RepositoryPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Which namespaces may claim which repositories.
///
/// A claim is the binding between a GitHub repository and the namespace whose
/// `PreviewRepository` settings its pull requests get. Without a policy
/// ([`ClaimPolicy::open`]) any namespace may claim any repository (still at most one
/// claim each); multi-tenant clusters set one (`--repository-claims`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimPolicy {
    /// `None`: any namespace may claim any repository.
    rules: Option<Vec<(String, RepositoryPatterns)>>,
}

impl ClaimPolicy {
    /// Every namespace may claim any repository (still at most one claim each).
    pub fn open() -> Self {
        ClaimPolicy { rules: None }
    }

    /// Whether the policy is open (no `--repository-claims`).
    pub fn is_open(&self) -> bool {
        self.rules.is_none()
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
            let patterns = RepositoryPatterns::parse(&patterns.replace(',', " "))?;
            rules.push((namespace.to_string(), patterns));
        }
        Ok(ClaimPolicy { rules: Some(rules) })
    }

    /// Whether `namespace` may claim `repository` (`owner/name`).
    pub fn allows(&self, namespace: &str, repository: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        rules
            .iter()
            .filter(|(ns, _)| ns == namespace)
            .any(|(_, patterns)| patterns.matches(repository))
    }

    /// How the policy is described in messages: `--repository-claims` or "open".
    pub fn describe(&self) -> &'static str {
        if self.is_open() {
            "the open claim policy"
        } else {
            "the repository claim policy (--repository-claims)"
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_decides_who_may_claim() {
        let policy = ClaimPolicy::parse("team=acme/*; other=acme/web,zeta/x").unwrap();
        assert!(policy.allows("team", "Acme/Shop"));
        assert!(policy.allows("other", "acme/web"));
        assert!(policy.allows("other", "zeta/x"));
        assert!(!policy.allows("other", "acme/shop"));
        assert!(!policy.allows("attacker", "acme/shop"));
        assert!(!policy.is_open());
        assert!(ClaimPolicy::open().allows("anyone", "any/thing"));
        let empty = ClaimPolicy::parse("").unwrap();
        assert!(!empty.is_open());
        assert!(!empty.allows("team", "acme/shop"));
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

    #[test]
    fn repository_patterns_match_exact_owner_and_any() {
        let p = RepositoryPatterns::parse("acme/shop, zeta/*").unwrap();
        assert!(p.matches("ACME/shop"));
        assert!(p.matches("zeta/anything"));
        assert!(!p.matches("acme/web"));
        assert!(!p.matches("acme/shop-fork"));
        assert!(!p.matches("zetaX/a"));
        assert!(RepositoryPatterns::parse("*").unwrap().matches("a/b"));
        let none = RepositoryPatterns::parse("  ").unwrap();
        assert!(none.is_empty() && !none.matches("a/b"));
        assert!(RepositoryPatterns::parse("acme").is_err());
        assert_eq!(p.to_string(), "acme/shop,zeta/*");
    }
}
