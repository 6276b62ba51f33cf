//! The environment's public host: only under the base domains the platform team allows,
//! and never the same as another environment's.
//!
//! The host published through external-dns and cert-manager is the environment's
//! `spec.ingress.host`, else `pr-<n>.<base domain>`. It must be a subdomain of one of the
//! operator's allowed base domains (`--allowed-base-domains`, default the base domain).
//! When two environments want the same host (two repositories sharing a base domain
//! both have a `pr-7`), the one that recorded it first, else the older one, keeps it;
//! the other gets `pr-<n>-<hash of its repository>.<domain>` when its host was the
//! default form, and is stalled with `HostConflict` when it named its host itself. The
//! choice is recorded in `status.host` and kept.

use std::collections::BTreeMap;

use kube::ResourceExt;
use previewd_core::naming;
use sha2::{Digest, Sha256};

use super::PlannerConfig;
use crate::crd::PreviewEnvironment;

/// Another environment's claim on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostClaim {
    /// `namespace/name` of the environment.
    pub environment: String,
    /// The host is recorded in that environment's status.
    pub recorded: bool,
    /// Its creation time.
    pub created: jiff::Timestamp,
}

/// The planner's decision about the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostChoice {
    /// Serve under this host.
    Use(String),
    /// The host cannot be used.
    Refused {
        /// `HostNotAllowed` or `HostConflict`.
        reason: &'static str,
        /// What is wrong, for people.
        message: String,
    },
}

/// The host an environment asks for (before conflicts): its recorded host, else the
/// spec's, else the default form under the operator's base domain.
pub fn requested_host(env: &PreviewEnvironment, config: &PlannerConfig) -> String {
    if let Some(recorded) = env.status.as_ref().and_then(|s| s.host.clone()) {
        return recorded;
    }
    env.spec
        .ingress
        .as_ref()
        .and_then(|i| i.host.clone())
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_else(|| naming::ingress_host(pr(env), &config.base_domain))
}

fn pr(env: &PreviewEnvironment) -> u64 {
    u64::try_from(env.spec.pr_number).unwrap_or_default()
}

/// The allowed base domain `host` lies under, if any. The host must have at least one
/// label of its own below the domain, and every label must be a DNS-1123 label.
pub fn allowed_domain<'a>(host: &str, config: &'a PlannerConfig) -> Option<&'a str> {
    let labels_ok = host.len() <= 253 && host.split('.').all(naming::is_dns1123_label);
    if !labels_ok {
        return None;
    }
    config.allowed_base_domains().into_iter().find(|domain| {
        host.len() > domain.len() + 1
            && host.ends_with(domain)
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
    })
}

/// The fallback host for a default-form host taken by another repository's environment.
pub fn fallback_host(env: &PreviewEnvironment, domain: &str) -> String {
    let digest = Sha256::digest(env.spec.repository.to_ascii_lowercase().as_bytes());
    format!("pr-{}-{}.{domain}", pr(env), &hex::encode(digest)[..8])
}

fn beats(claim: &HostClaim, env: &PreviewEnvironment, recorded: bool) -> bool {
    let me = format!("{}/{}", env.namespace().unwrap_or_default(), env.name_any());
    if claim.environment == me {
        return false;
    }
    if claim.recorded != recorded {
        return claim.recorded;
    }
    let created = env
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(jiff::Timestamp::MAX);
    (claim.created, &claim.environment) < (created, &me)
}

/// The hosts [`choose`] may look up for `env`: the host it asks for and, when that is
/// of the default form under an allowed domain, its fallback. The observer gathers other
/// environments' claims on these hosts only, so a reconcile holds a handful of claims
/// whatever the number of environments.
pub fn candidate_hosts(env: &PreviewEnvironment, config: &PlannerConfig) -> Vec<String> {
    let host = requested_host(env, config);
    let fallback = allowed_domain(&host, config)
        .filter(|domain| host == naming::ingress_host(pr(env), domain))
        .map(|domain| fallback_host(env, domain));
    std::iter::once(host).chain(fallback).collect()
}

/// Chooses the host.
pub fn choose(
    env: &PreviewEnvironment,
    config: &PlannerConfig,
    claims: &BTreeMap<String, Vec<HostClaim>>,
) -> HostChoice {
    let recorded = env.status.as_ref().and_then(|s| s.host.as_ref()).is_some();
    let host = requested_host(env, config);
    let Some(domain) = allowed_domain(&host, config) else {
        return HostChoice::Refused {
            reason: "HostNotAllowed",
            message: format!(
                "host {host:?} is not under an allowed base domain ({})",
                config.allowed_base_domains().join(", ")
            ),
        };
    };
    let taken = |h: &str| {
        claims
            .get(h)
            .is_some_and(|cs| cs.iter().any(|c| beats(c, env, recorded)))
    };
    if !taken(&host) {
        return HostChoice::Use(host);
    }
    let default_form = host == naming::ingress_host(pr(env), domain);
    if default_form && !recorded {
        let fallback = fallback_host(env, domain);
        if !taken(&fallback) {
            return HostChoice::Use(fallback);
        }
    }
    let holder = claims
        .get(&host)
        .and_then(|cs| cs.iter().find(|c| beats(c, env, recorded)))
        .map(|c| c.environment.clone())
        .unwrap_or_default();
    HostChoice::Refused {
        reason: "HostConflict",
        message: format!("host {host} is already served by environment {holder}"),
    }
}
