//! The custom resources of previewd (group `previewd.io`, version `v1alpha1`).
//!
//! - [`PreviewEnvironment`]: one isolated, short-lived environment for one pull request.
//!   Written by the webhook (desired state), reconciled by the controller.
//! - [`PreviewRepository`]: the trusted per-repository settings that platform engineers
//!   own (service catalogue, image templates, base domain, quotas, TTL defaults, gating
//!   and fork policy). The webhook renders environments from it; nothing in it comes from
//!   a pull request.

mod application;
mod argocd;
mod environment;
mod repository;

pub use application::*;
pub use argocd::*;
pub use environment::*;
pub use repository::*;

/// API group of every previewd resource.
pub const GROUP: &str = "previewd.io";
/// API version of the resources in this module.
pub const VERSION: &str = "v1alpha1";
/// Finalizer that guarantees cleanup of the namespace and external state.
pub const FINALIZER: &str = "previewd.io/cleanup";
/// Field manager used for every server-side apply by previewd.
pub const FIELD_MANAGER: &str = "previewd";

/// Label on every namespace and child: the owning environment (`<namespace>.<name>`).
pub const LABEL_ENV: &str = "previewd.io/env";
/// Label: the pull request number.
pub const LABEL_PR: &str = "previewd.io/pr";
/// Label: the repository, as `owner.name` (a slash is not allowed in label values).
pub const LABEL_REPO: &str = "previewd.io/repo";
/// Label: the service a child belongs to.
pub const LABEL_SERVICE: &str = "previewd.io/service";
/// Label on a `PreviewEnvironment`: `"true"` when the pull request comes from a fork.
/// The webhook sets it from the event and never removes it; the planner then withholds
/// the repository's Secrets and egress rules.
pub const LABEL_FORK: &str = "previewd.io/fork";
/// Standard managed-by label.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "previewd";

/// Annotation on a `PreviewEnvironment`: the PR's `updated_at` of the newest event applied.
pub const ANNOTATION_PR_UPDATED_AT: &str = "previewd.io/pr-updated-at";
/// Annotation on a `PreviewEnvironment`: GitHub delivery id of the newest event applied.
pub const ANNOTATION_DELIVERY: &str = "previewd.io/delivery";
/// Annotation on a `PreviewEnvironment`: last activity (push) time, RFC 3339; renews the TTL
/// when `autoExtend` is on.
pub const ANNOTATION_LAST_ACTIVITY: &str = "previewd.io/last-activity";
/// Annotation on a `PreviewEnvironment`: what is known about the required checks of the
/// head commit (JSON, `previewd_core::checks::RecordedChecks`), written by the webhook
/// from `check_run`, `check_suite` and `status` events.
pub const ANNOTATION_CHECKS: &str = "previewd.io/checks";
/// Annotation on a `PreviewEnvironment`: set it to a new value to retry a Failed
/// environment without a new push.
pub const ANNOTATION_RETRY: &str = "previewd.io/retry";
