//! Kubernetes adapter of previewd: the custom resources, the controller that drives
//! each `PreviewEnvironment` through its phases (observe from watch caches → [`plan`], a
//! pure function → execute), the plug-in traits ([`strategy::DeployStrategy`],
//! [`strategy::Stage`]), one module per child resource (a pure `desired_*` function), and
//! the cleanup sweep.

pub mod advice;
pub mod children;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod error;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod report;
pub mod strategy;
pub mod tenancy;
#[cfg(feature = "testing")]
pub mod testing;
pub mod usage;

pub use controller::{Context, ControllerConfig, Readiness};
pub use crd::{PreviewEnvironment, PreviewEnvironmentSpec, PreviewEnvironmentStatus};
pub use crd::{PreviewRepository, PreviewRepositorySpec};
pub use error::Error;
