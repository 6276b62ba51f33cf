//! The hook through which the AI engine (or any embedder) advises the controller about an
//! environment: which services a change affects, how long the environment should live,
//! how large it should be.
//!
//! The controller asks once per head commit, records the answer in `status.ai`, and, when
//! the environment's `serviceSelection` is `Affected`, deploys only the advised services.
//! An advisor must always answer: when a model is slow, wrong or absent it returns the
//! deterministic answer with the reason (the trait has no error type on purpose).

use async_trait::async_trait;

use crate::crd::{AiStatus, PreviewEnvironment};

/// Advice for one head commit of an environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advice {
    /// Services to deploy; `None` means every service in the spec.
    pub services: Option<Vec<String>>,
    /// What to record in `status.ai`.
    pub status: AiStatus,
}

/// Advises the controller about an environment.
#[async_trait]
pub trait EnvironmentAdvisor: Send + Sync {
    /// Advice for the environment's current head commit.
    async fn advise(&self, env: &PreviewEnvironment) -> Advice;

    /// The environment is gone: drop what was kept for it (cached model answers).
    async fn environment_deleted(&self, _env: &PreviewEnvironment) {}
}

/// The advisor used when no AI engine is configured: every service, nothing recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAdvice;

#[async_trait]
impl EnvironmentAdvisor for NoAdvice {
    async fn advise(&self, _env: &PreviewEnvironment) -> Advice {
        Advice::default()
    }
}
