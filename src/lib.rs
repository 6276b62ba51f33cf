//! # previewd
//!
//! An isolated, short-lived preview environment for every GitHub pull request, as a
//! Kubernetes operator and as an SDK to embed in your own platform operator.
//!
//! This facade re-exports the workspace crates, and the exact `kube` and `k8s_openapi`
//! versions they are built with, so embedders get matching types:
//!
//! - [`core`]: the pure domain (phases, TTL and expiry, cost, tiers, naming, provider traits);
//! - [`kube_adapter`]: the CRDs, the controller and the child resources;
//! - [`github`]: the webhook receiver and the GitHub client;
//! - [`ai`]: model providers and the advisors with their deterministic answers;
//! - [`operator`]: the operator itself ([`operator::OperatorBuilder`]), with every plug-in
//!   replaceable: deploy strategy, post-ready stages, reporter, advisor, AI provider.
//!
//! See `examples/platform_operator.rs` (a platform team's operator that adds its own child
//! resource to every environment) and `examples/custom_ai_provider.rs` (your own model
//! behind the advisors).

pub use previewd_ai as ai;
pub use previewd_core as core;
pub use previewd_github as github;
pub use previewd_kube as kube_adapter;
pub use previewd_operator as operator;

pub use k8s_openapi;
pub use kube;
