//! All advisors together: what an environment for one pull request should hold, how big
//! it should be, and how long it should live.
//!
//! Every advisor computes its deterministic answer first; the services and tests advisors
//! may ask a model to add to it; lifespan and tier use only the rules and the history.
//! A history store that fails is treated as empty (the rules still answer) and the
//! failure is reported in [`Advice::history_error`].

use std::sync::Arc;

use jiff::Timestamp;
use previewd_core::ai::{Decision, DecisionSource};

use crate::history::{EnvironmentRecord, HistoryStore};
use crate::lifespan::{HistoryStats, LifespanConfig, LifespanPrediction, PrSize, predict_ttl};
use crate::services::{AffectedServices, ChangeInput, ServicesAdvisor};
use crate::tests_select::{TestChange, TestSelection, TestSelector};
use crate::tier::{TierAdvice, TierPolicy, advise_tier};

/// Records read from the history per query.
pub const HISTORY_QUERY_LIMIT: usize = 200;

/// What the advisors know about one pull request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullRequestFacts {
    /// `owner/name`.
    pub repo: String,
    /// PR number.
    pub pr: u64,
    /// Author login.
    pub author: String,
    /// The change (files, diff, title, fork flag).
    pub change: ChangeInput,
    /// Lines added plus deleted.
    pub lines_changed: usize,
    /// Test inventory for test selection (test files or suites).
    pub test_inventory: Vec<String>,
}

/// The advisors' answers for one pull request.
#[derive(Clone, Debug, PartialEq)]
pub struct Advice {
    /// Affected services.
    pub services: Decision<AffectedServices>,
    /// Selected tests, when a selector is configured.
    pub tests: Option<Decision<TestSelection>>,
    /// Predicted TTL.
    pub lifespan: Decision<LifespanPrediction>,
    /// Resource tier.
    pub tier: Decision<TierAdvice>,
    /// Set when the history store failed and the rules ran without history.
    pub history_error: Option<String>,
}

/// The advisors of one repository.
#[derive(Clone)]
pub struct Advisors {
    /// Affected services.
    pub services: ServicesAdvisor,
    /// Test selection, if configured.
    pub tests: Option<Arc<TestSelector>>,
    /// Lifespan settings.
    pub lifespan: LifespanConfig,
    /// Tier settings.
    pub tier: TierPolicy,
    /// Environment history, if any.
    pub history: Option<Arc<dyn HistoryStore>>,
}

impl std::fmt::Debug for Advisors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advisors")
            .field("services", &self.services)
            .field("tests", &self.tests)
            .field("lifespan", &self.lifespan)
            .field("tier", &self.tier)
            .field("history", &self.history.is_some())
            .finish()
    }
}

impl Advisors {
    /// Advisors with default lifespan and tier settings, no test selection and no history.
    pub fn new(services: ServicesAdvisor) -> Self {
        Advisors {
            services,
            tests: None,
            lifespan: LifespanConfig::default(),
            tier: TierPolicy::default(),
            history: None,
        }
    }

    async fn history(
        &self,
        repo: &str,
        author: &str,
    ) -> (
        Vec<EnvironmentRecord>,
        Vec<EnvironmentRecord>,
        Option<String>,
    ) {
        let Some(store) = &self.history else {
            return (Vec::new(), Vec::new(), None);
        };
        let by_repo = store.by_repo(repo, HISTORY_QUERY_LIMIT).await;
        let by_author = store.by_author(author, HISTORY_QUERY_LIMIT).await;
        match (by_repo, by_author) {
            (Ok(r), Ok(a)) => (r, a, None),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "history unavailable; advising without it");
                (
                    Vec::new(),
                    Vec::new(),
                    Some(format!("{}: {e}", e.category())),
                )
            }
        }
    }

    /// Runs every advisor for `facts` at time `now`.
    pub async fn advise(&self, facts: &PullRequestFacts, now: Timestamp) -> Advice {
        let services = self.services.advise(&facts.change).await;
        let tests = match &self.tests {
            Some(sel) => Some(
                sel.select(
                    &TestChange {
                        files: facts.change.files.clone(),
                        diff: facts.change.diff.clone(),
                        is_fork: facts.change.is_fork,
                    },
                    &facts.test_inventory,
                )
                .await,
            ),
            None => None,
        };
        let (repo_history, author_history, history_error) =
            self.history(&facts.repo, &facts.author).await;
        let alpha = self.lifespan.ewma_alpha;
        let prediction = predict_ttl(
            &self.lifespan,
            &PrSize {
                files: facts.change.files.len(),
                lines: facts.lines_changed,
            },
            &HistoryStats::from_records(&author_history, alpha),
            &HistoryStats::from_records(&repo_history, alpha),
            now,
        );
        let tier = advise_tier(
            self.services.catalogue().catalogue(),
            &services.value.services,
            &repo_history,
            &self.tier,
        );
        Advice {
            services,
            tests,
            lifespan: Decision {
                value: prediction,
                source: DecisionSource::Deterministic,
            },
            tier,
            history_error,
        }
    }
}
