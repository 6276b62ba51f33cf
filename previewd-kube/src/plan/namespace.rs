//! Which namespace an environment uses, and whether a namespace is previewd's own.
//!
//! Labels are for selection only: anybody who may label a namespace can set them. What
//! makes a namespace an environment's is the ownership marker previewd writes when it
//! creates it: the annotation `previewd.io/owner-uid` holding the environment's UID.
//! Adoption and deletion (the controller's and the sweep's) require the marker.

use std::collections::BTreeMap;

use kube::ResourceExt;
use previewd_core::naming;

use crate::children::LABEL_ENV_NAMESPACE;
use crate::crd::{LABEL_ENV, LABEL_MANAGED_BY, MANAGED_BY, PreviewEnvironment};

/// Annotation on a namespace previewd created: the UID of the environment it belongs to.
pub const ANNOTATION_OWNER_UID: &str = "previewd.io/owner-uid";

/// Prefix of every namespace previewd creates.
pub const NAMESPACE_PREFIX: &str = "preview-";

/// What the caches hold about a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The ownership marker, when present.
    pub owner_uid: Option<String>,
    /// A deletion is in progress.
    pub deleting: bool,
    /// The desired-state hash it was last applied with.
    pub applied_hash: Option<String>,
}

/// The namespace name previewd would pick first for an environment.
pub fn primary_name(env: &PreviewEnvironment) -> String {
    naming::namespace_name(
        u64::try_from(env.spec.pr_number).unwrap_or_default(),
        &env.spec.branch,
    )
}

/// The disambiguated name used when the primary one belongs to somebody else: it hashes
/// the branch, repository and the environment's own namespace and name, so two
/// environments never share it.
pub fn alternative_name(env: &PreviewEnvironment) -> String {
    naming::namespace_name(
        u64::try_from(env.spec.pr_number).unwrap_or_default(),
        &format!(
            "{}@{}/{}/{}",
            env.spec.branch,
            env.spec.repository,
            env.namespace().unwrap_or_default(),
            env.name_any()
        ),
    )
}

/// The name recorded in the status, once chosen.
pub fn recorded_name(env: &PreviewEnvironment) -> Option<String> {
    env.status.as_ref().and_then(|s| s.namespace.clone())
}

/// The names the planner may look at, in order of preference.
pub fn candidates(env: &PreviewEnvironment) -> Vec<String> {
    match recorded_name(env) {
        Some(recorded) => vec![recorded],
        None => vec![primary_name(env), alternative_name(env)],
    }
}

/// Whether `ns` (named `name`) is this environment's namespace.
///
/// True when it carries the environment's UID as ownership marker. A namespace without
/// any marker is adopted only when its name is the one recorded in the environment's
/// status (status is written by previewd alone) and its labels name the environment:
/// that is a namespace created by a previewd release that did not write the marker yet.
pub fn is_owned(env: &PreviewEnvironment, name: &str, ns: &NamespaceMeta) -> bool {
    let uid = env.uid();
    match (&ns.owner_uid, &uid) {
        (Some(marker), Some(uid)) => marker == uid,
        (Some(_), None) => false,
        (None, _) => {
            recorded_name(env).as_deref() == Some(name)
                && ns.labels.get(LABEL_ENV) == Some(&env.name_any())
                && ns.labels.get(LABEL_ENV_NAMESPACE) == env.namespace().as_ref()
                && ns.labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        }
    }
}

/// The planner's decision about the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceChoice {
    /// Use (create or keep) the namespace with this name.
    Use(String),
    /// The namespace is ours but still terminating from an earlier life; wait.
    WaitForTermination(String),
    /// No name is available; the message says why.
    Conflict(String),
}

/// Chooses the namespace: the recorded one, else the primary name, else (when the
/// primary belongs to somebody else) the disambiguated one, once.
pub fn choose(
    env: &PreviewEnvironment,
    observed: &BTreeMap<String, NamespaceMeta>,
) -> NamespaceChoice {
    let recorded = recorded_name(env);
    let names = candidates(env);
    for name in &names {
        match observed.get(name) {
            None => return NamespaceChoice::Use(name.clone()),
            Some(ns) if is_owned(env, name, ns) => {
                return if ns.deleting {
                    NamespaceChoice::WaitForTermination(name.clone())
                } else {
                    NamespaceChoice::Use(name.clone())
                };
            }
            Some(_) if recorded.is_some() => break,
            Some(_) => continue,
        }
    }
    let name = names.first().cloned().unwrap_or_default();
    NamespaceChoice::Conflict(format!(
        "namespace {name} exists and does not belong to this environment"
    ))
}

/// Whether the sweep may delete a namespace: previewd's prefix, previewd's labels, and an
/// ownership marker naming an environment that no longer exists.
pub fn is_orphan(
    name: &str,
    ns: &NamespaceMeta,
    live_uids: &std::collections::BTreeSet<String>,
) -> bool {
    name.starts_with(NAMESPACE_PREFIX)
        && ns.labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && ns
            .owner_uid
            .as_ref()
            .is_some_and(|uid| !uid.is_empty() && !live_uids.contains(uid))
}
