//! Pull requests from forks run code nobody in the organisation wrote: their environments
//! get no Secrets by reference and no egress allow-list, whatever the repository says.
//!
//! The webhook marks such environments with the label [`LABEL_FORK`] (`"true"`), from
//! the event (`head.repo` in another repository, or deleted), on create and on every
//! update, and never removes it. The planner plans them against a copy of their
//! `PreviewRepository` without `secrets` and `egress`: no copy is made (copies made before
//! the label was set are deleted), and the namespace's allow policy keeps only DNS and the
//! namespace itself. The [`CONDITION_FORK_RESTRICTED`] condition says what was withheld.

use kube::ResourceExt;

use super::conditions::set_condition;
use crate::crd::{LABEL_FORK, PreviewEnvironment, PreviewEnvironmentStatus, PreviewRepository};

/// Condition type: `True` while a fork's environment is planned without the repository's
/// Secrets and egress rules.
pub const CONDITION_FORK_RESTRICTED: &str = crate::crd::condition::FORK_RESTRICTED;

/// Reason of [`CONDITION_FORK_RESTRICTED`].
pub const REASON_FORK: &str = "ForkPullRequest";

/// The environment belongs to a pull request from a fork.
pub fn is_fork(env: &PreviewEnvironment) -> bool {
    env.labels().get(LABEL_FORK).is_some_and(|v| v == "true")
}

/// The repository settings a fork's environment is planned with: without Secrets and
/// egress rules. `None` when the environment is not a fork's, or there is nothing to
/// withhold (use the repository as it is).
pub fn restricted_repository(
    env: &PreviewEnvironment,
    repository: Option<&PreviewRepository>,
) -> Option<PreviewRepository> {
    let repository = repository?;
    if !is_fork(env) || (repository.spec.secrets.is_empty() && repository.spec.egress.is_empty()) {
        return None;
    }
    let mut restricted = repository.clone();
    restricted.spec.secrets.clear();
    restricted.spec.egress.clear();
    Some(restricted)
}

/// What the condition says about a fork's environment.
pub fn withheld_message(repository: Option<&PreviewRepository>) -> String {
    let (secrets, egress) =
        repository.map_or((0, 0), |r| (r.spec.secrets.len(), r.spec.egress.len()));
    format!(
        "pull request from a fork: the repository's Secrets ({secrets}) and egress rules ({egress}) are withheld; pods reach only DNS and their own namespace"
    )
}

/// Sets [`CONDITION_FORK_RESTRICTED`] for a fork's environment; removes it otherwise.
pub fn record(
    env: &PreviewEnvironment,
    repository: Option<&PreviewRepository>,
    status: &mut PreviewEnvironmentStatus,
    now: jiff::Timestamp,
) {
    if is_fork(env) {
        set_condition(
            &mut status.conditions,
            CONDITION_FORK_RESTRICTED,
            true,
            REASON_FORK,
            &withheld_message(repository),
            env.metadata.generation,
            now,
        );
    } else {
        status
            .conditions
            .retain(|c| c.type_ != CONDITION_FORK_RESTRICTED);
    }
}
