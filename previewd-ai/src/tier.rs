//! Resource tier of an environment.
//!
//! The rule, deterministic and deliberately simple:
//!
//! 1. **Declared.** The largest `tier` declared by the affected services and the
//!    `always_deploy` services of the catalogue; [`TierPolicy::default_tier`] (`small`)
//!    when none declares one.
//! 2. **History.** Among the repository's [`TierPolicy::window`] most recent closed
//!    environments with measured usage, if at least [`TierPolicy::bump_after`] hit their
//!    limits (OOM-killed or throttled) while running at a tier at least as large as the
//!    declared one, the tier becomes one above the largest such tier.
//! 3. **Cap.** Never above [`TierPolicy::max_tier`].
//!
//! The model plays no part: a tier is a cost decision, and the inputs are all structured.

use std::collections::BTreeSet;

use previewd_core::ai::{Decision, DecisionSource};
use previewd_core::{ServiceCatalogue, Tier};
use serde::{Deserialize, Serialize};

use crate::history::EnvironmentRecord;

/// Settings of the tier rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierPolicy {
    /// Tier when no service declares one.
    pub default_tier: Tier,
    /// Largest tier the rule may choose.
    pub max_tier: Tier,
    /// Recent environments looked at.
    pub window: usize,
    /// Environments in the window that must have hit their limits to bump.
    pub bump_after: usize,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            default_tier: Tier::Small,
            max_tier: Tier::Large,
            window: 5,
            bump_after: 2,
        }
    }
}

/// The chosen tier and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierAdvice {
    /// The tier to run at.
    pub tier: Tier,
    /// The largest declared tier (or the default).
    pub declared: Tier,
    /// Services that declared the chosen declared tier.
    pub declared_by: Vec<String>,
    /// History raised the tier.
    pub bumped: bool,
    /// Human-readable derivation.
    pub explanation: String,
}

/// One tier up, saturating at `large`.
pub fn next_tier(t: Tier) -> Tier {
    match t {
        Tier::Minimal => Tier::Small,
        Tier::Small => Tier::Medium,
        Tier::Medium | Tier::Large => Tier::Large,
    }
}

/// Chooses the tier for an environment running `affected` services of `catalogue`, given
/// the repository's history (any order).
pub fn advise_tier(
    catalogue: &ServiceCatalogue,
    affected: &BTreeSet<String>,
    history: &[EnvironmentRecord],
    policy: &TierPolicy,
) -> Decision<TierAdvice> {
    let deployed = catalogue
        .services
        .iter()
        .filter(|s| s.always_deploy || affected.contains(&s.name));
    let mut declared: Option<Tier> = None;
    let mut declared_by = Vec::new();
    for s in deployed {
        if let Some(t) = s.tier {
            match declared {
                Some(d) if t < d => {}
                Some(d) if t == d => declared_by.push(s.name.clone()),
                _ => {
                    declared = Some(t);
                    declared_by = vec![s.name.clone()];
                }
            }
        }
    }
    let declared = declared.unwrap_or(policy.default_tier).min(policy.max_tier);

    let mut recent: Vec<&EnvironmentRecord> = history
        .iter()
        .filter(|r| r.closed_at.is_some() && r.peak_usage.is_some())
        .collect();
    recent.sort_by_key(|r| std::cmp::Reverse(r.opened_at));
    recent.truncate(policy.window);
    let hits: Vec<Tier> = recent
        .iter()
        .filter(|r| r.peak_usage.is_some_and(|u| u.hit_limits) && r.tier >= declared)
        .map(|r| r.tier)
        .collect();

    let mut tier = declared;
    let mut bumped = false;
    let mut explanation = if declared_by.is_empty() {
        format!("no service declares a tier: default {}", declared.as_str())
    } else {
        format!(
            "{} declared by {}",
            declared.as_str(),
            declared_by.join(", ")
        )
    };
    if policy.bump_after > 0 && hits.len() >= policy.bump_after {
        let worst = hits.iter().copied().max().unwrap_or(declared);
        let up = next_tier(worst).min(policy.max_tier);
        if up > tier {
            tier = up;
            bumped = true;
            explanation.push_str(&format!(
                "; {} of the last {} environments hit their limits at {}: {}",
                hits.len(),
                recent.len(),
                worst.as_str(),
                tier.as_str()
            ));
        }
    }
    Decision {
        value: TierAdvice {
            tier,
            declared,
            declared_by,
            bumped,
            explanation,
        },
        source: DecisionSource::Deterministic,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::PeakUsage;
    use jiff::Timestamp;
    use previewd_core::CatalogueService;

    fn cat() -> ServiceCatalogue {
        let s = |name: &str, tier: Option<Tier>, always: bool| CatalogueService {
            name: name.to_owned(),
            tier,
            always_deploy: always,
            ..CatalogueService::default()
        };
        ServiceCatalogue {
            services: vec![
                s("api", Some(Tier::Medium), false),
                s("web", Some(Tier::Minimal), false),
                s("db", Some(Tier::Small), true),
                s("docs", None, false),
            ],
            shared_paths: vec![],
        }
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn env(i: i64, tier: Tier, hit: bool) -> EnvironmentRecord {
        let mut r = EnvironmentRecord::opened(
            "acme/shop",
            i as u64,
            "a",
            Timestamp::from_second(1_000_000 + i * 100).unwrap(),
            tier,
        );
        r.closed_at = Some(Timestamp::from_second(1_000_050 + i * 100).unwrap());
        r.peak_usage = Some(PeakUsage {
            cpu_millicores: 100,
            memory_bytes: 1 << 20,
            hit_limits: hit,
        });
        r
    }

    #[test]
    fn largest_declared_among_affected_and_always_deployed() {
        let p = TierPolicy::default();
        let d = advise_tier(&cat(), &names(&["web"]), &[], &p).value;
        assert_eq!(
            d.tier,
            Tier::Small,
            "db is always deployed and declares small"
        );
        assert_eq!(d.declared_by, ["db"]);
        let d = advise_tier(&cat(), &names(&["web", "api"]), &[], &p).value;
        assert_eq!(d.tier, Tier::Medium);
        let mut c = cat();
        c.services.retain(|s| s.name == "docs");
        let d = advise_tier(&c, &names(&["docs"]), &[], &p).value;
        assert_eq!(d.tier, Tier::Small);
        assert!(d.declared_by.is_empty());
    }

    #[test]
    fn repeated_limit_hits_bump_one_tier() {
        let p = TierPolicy::default();
        let affected = names(&["api"]);
        let one = [env(1, Tier::Medium, true), env(2, Tier::Medium, false)];
        assert_eq!(
            advise_tier(&cat(), &affected, &one, &p).value.tier,
            Tier::Medium
        );
        let two = [env(1, Tier::Medium, true), env(2, Tier::Medium, true)];
        let d = advise_tier(&cat(), &affected, &two, &p).value;
        assert_eq!(d.tier, Tier::Large);
        assert!(d.bumped);
        // hits at a smaller tier than declared say nothing about the declared tier
        let small = [env(1, Tier::Small, true), env(2, Tier::Small, true)];
        assert_eq!(
            advise_tier(&cat(), &affected, &small, &p).value.tier,
            Tier::Medium
        );
        // only the window counts: five clean recent ones hide older hits
        let mut old: Vec<_> = (0..2).map(|i| env(i, Tier::Medium, true)).collect();
        old.extend((10..15).map(|i| env(i, Tier::Medium, false)));
        assert_eq!(
            advise_tier(&cat(), &affected, &old, &p).value.tier,
            Tier::Medium
        );
        // the cap holds
        let capped = TierPolicy {
            max_tier: Tier::Medium,
            ..TierPolicy::default()
        };
        assert_eq!(
            advise_tier(&cat(), &affected, &two, &capped).value.tier,
            Tier::Medium
        );
    }
}
