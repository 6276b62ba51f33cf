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
mod builds;
mod environment;
mod repository;

pub use application::*;
pub use argocd::*;
pub use builds::*;
pub use environment::*;
pub use repository::*;

/// A host name: lower-case DNS labels of letters, digits and `-` (at most 63 characters,
/// not starting or ending with `-`) separated by dots (RE2 and Rust `regex` syntax, no
/// backslashes: it sits in a CEL string).
pub const HOST_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// The CEL message of a string that is not a host name (`self` is the string).
pub const HOST_MESSAGE_EXPRESSION: &str = "\"'\" + self + \"' is not a host name: lower-case labels of letters, digits and '-' (each at most 63 characters, not starting or ending with '-') separated by dots, e.g. pr-42.preview.example.com\"";

fn host_schema_of(min_length: usize, max_length: usize) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "x-kubernetes-validations": [{
            "rule": format!("self.matches('{HOST_PATTERN}')"),
            "messageExpression": HOST_MESSAGE_EXPRESSION,
        }],
    })
}

/// Schema of an environment's host: a host name of at most 253 characters.
pub fn host_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    host_schema_of(1, 253)
}

/// Schema of a repository's base domain: a host name of at most 200 characters (room
/// for the `pr-<number>.` label in front).
pub fn base_domain_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    host_schema_of(1, 200)
}

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
/// Annotation on a `PreviewEnvironment`: the pull request's title as the newest event
/// applied carried it (untrusted text, at most [`PR_TITLE_MAX_CHARS`] characters), for
/// people reading the environment (the web view).
pub const ANNOTATION_PR_TITLE: &str = "previewd.io/pr-title";
/// Longest PR title kept in [`ANNOTATION_PR_TITLE`] (GitHub allows 256 characters).
pub const PR_TITLE_MAX_CHARS: usize = 256;
/// Annotation on a `PreviewEnvironment`: the pull request's web page (`https://...`), as
/// the newest event applied carried it.
pub const ANNOTATION_PR_URL: &str = "previewd.io/pr-url";
/// Annotation on a `PreviewEnvironment`: when visitors of its sleeping preview woke it
/// (RFC 3339, comma-separated, oldest first), written by the waker; it limits how often
/// visits may wake an environment.
pub const ANNOTATION_VISIT_WAKES: &str = "previewd.io/visit-wakes";
/// Annotation on a `PreviewEnvironment`: what is known about the required checks of the
/// head commit (JSON, `previewd_core::checks::RecordedChecks`), written by the webhook
/// from `check_run`, `check_suite` and `status` events.
pub const ANNOTATION_CHECKS: &str = "previewd.io/checks";

/// Annotation on a `PreviewEnvironment`: a request to put the environment to sleep, with
/// its reason (`command` from `/preview sleep`, `budget` from the budget policy; any
/// other value counts as a command). See [`crate::plan::sleep`].
pub const ANNOTATION_SLEEP: &str = "previewd.io/sleep";
/// Annotation: when the [`ANNOTATION_SLEEP`] request was made (RFC 3339). Activity after
/// it (a push, a command) wakes a `command` sleep; a request without it holds until the
/// annotation is removed.
pub const ANNOTATION_SLEEP_REQUESTED_AT: &str = "previewd.io/sleep-requested-at";
/// Annotation: time of the last accepted PR command (RFC 3339); activity, like a push.
pub const ANNOTATION_LAST_COMMAND: &str = "previewd.io/last-command-at";
/// Annotation: `/preview extend` asked the environment to live until this time (RFC
/// 3339); never honoured past the hard cap (`maxLifespan`).
pub const ANNOTATION_EXTENDED_UNTIL: &str = "previewd.io/extended-until";
/// Annotation: token of the last `/preview redeploy` (the comment id); a new token
/// restarts every workload.
pub const ANNOTATION_REDEPLOY: &str = "previewd.io/redeploy";
/// Annotation: set it to a new value to retry a Failed environment without a new push
/// (`/preview retry` writes the comment id); a new token rebuilds the environment (a
/// failed one gets a fresh readiness deadline).
pub const ANNOTATION_RETRY: &str = "previewd.io/retry";
/// Annotation: `/preview delete` asked for deletion (value: the comment id).
pub const ANNOTATION_DELETE_REQUESTED: &str = "previewd.io/delete-requested";
/// Annotation: ids of the last PR comments handled as commands (comma-separated, newest
/// last); a redelivered comment is recognised and changes nothing.
pub const ANNOTATION_COMMAND_IDS: &str = "previewd.io/command-ids";
/// Annotation: the answer to the last PR command, shown on the sticky comment.
pub const ANNOTATION_COMMAND_REPLY: &str = "previewd.io/command-reply";
/// Field manager of the PR-command writes (separate from [`FIELD_MANAGER`], so that the
/// webhook's apply of a push neither owns nor removes the command annotations).
pub const COMMAND_FIELD_MANAGER: &str = "previewd-commands";
/// Every annotation the PR commands write (under [`COMMAND_FIELD_MANAGER`]).
pub const COMMAND_ANNOTATIONS: [&str; 9] = [
    ANNOTATION_SLEEP,
    ANNOTATION_SLEEP_REQUESTED_AT,
    ANNOTATION_LAST_COMMAND,
    ANNOTATION_EXTENDED_UNTIL,
    ANNOTATION_REDEPLOY,
    ANNOTATION_RETRY,
    ANNOTATION_DELETE_REQUESTED,
    ANNOTATION_COMMAND_IDS,
    ANNOTATION_COMMAND_REPLY,
];
