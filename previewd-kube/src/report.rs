//! Reporting environment changes to the outside world (GitHub commit statuses,
//! deployments, the sticky PR comment).
//!
//! The controller calls the reporter after it recorded a phase change in the status. A
//! reporter must never block or fail the environment: implementations queue the work and
//! retry on their own; the environment's status stays the source of truth.

use async_trait::async_trait;

use crate::crd::PreviewEnvironment;

/// Receives phase changes of environments.
#[async_trait]
pub trait EnvironmentReporter: Send + Sync {
    /// The environment's status changed phase (or its URL or test results changed).
    /// `env.status` holds the new status.
    async fn environment_changed(&self, env: &PreviewEnvironment);

    /// The environment is gone (finalizer released).
    async fn environment_deleted(&self, env: &PreviewEnvironment);
}

/// A reporter that reports nothing (no source-control system configured).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReporter;

#[async_trait]
impl EnvironmentReporter for NoopReporter {
    async fn environment_changed(&self, _env: &PreviewEnvironment) {}
    async fn environment_deleted(&self, _env: &PreviewEnvironment) {}
}
