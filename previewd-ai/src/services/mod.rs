//! Affected-service detection: which services of a repository a pull request changes.
//!
//! The deterministic answer comes first and always stands:
//!
//! 1. **Path matching.** A changed path affects a service when it matches one of the
//!    service's `paths` and none of its `ignore_paths` excludes it. `paths` are directory
//!    prefixes ending in `/`, single files, or globs with Go `filepath.Match` semantics
//!    (`*` and `?` never cross `/`, `[...]` classes, `\` escapes) plus `**` for any number
//!    of directories. A pattern that matches a directory matches everything below it.
//! 2. **Exclusions** follow `.dockerignore` rules: patterns are evaluated in order, the last
//!    one that matches the path *or one of its parent directories* wins, and a leading `!`
//!    re-includes.
//! 3. **Shared paths** (`shared_paths` of the catalogue) affect every service.
//! 4. **Dependency closure.** A service that depends on (`depends_on`) an affected service
//!    is affected too, transitively; cycles are harmless.
//! 5. **Incomplete change lists.** When the list of changed files is known to be incomplete
//!    (GitHub returns at most [`GITHUB_FILE_LIST_CAP`] files), every service is affected and
//!    the reason is recorded.
//! 6. **Build definitions.** When the diff is available, the changed compose, skaffold,
//!    `.env`, Dockerfile and `.dockerignore` files are read ([`crate::builddefs`]): a changed
//!    compose entry affects its service, a changed variable the services whose builds use
//!    it, and so on. What the diff says about such a file replaces a shared path's "every
//!    service" for it; it never removes a service whose paths match. Without a diff, or
//!    for a file a truncated diff does not show, path matching stands and
//!    [`AffectedServices::notes`] says so. Renamed files the diff shows belong to the
//!    service that owned their old path.
//!
//! Then, optionally, a model looks at what the rules could not place (changed files that no
//! service or shared path claims) and may **add** services from an allow-list: the catalogue
//! names not selected yet. It can never remove a service or name one outside the catalogue;
//! any error, schema violation or out-of-allow-list name falls back to the deterministic
//! answer with [`DecisionSource::Fallback`].
//!
//! # Confidence
//!
//! [`AffectedServices::confidence`] estimates how likely the set contains every affected
//! service:
//!
//! * `1.0` — the full change list was matched against the catalogue; every service in the
//!   set is backed by a changed path, a shared path or a dependency edge
//!   ([`CONFIDENCE_PATH_EVIDENCE`]);
//! * `0.7` — the model added services from its reading of the diff
//!   ([`CONFIDENCE_MODEL_ADDED`]); the path-backed part is still exact;
//! * `0.5` — the change list was incomplete and every service was assumed affected
//!   ([`CONFIDENCE_ASSUMED_ALL`]): nothing is missed, but nothing was checked either.

//!
//! # Layout
//!
//! * [`pattern`]: repository path patterns (Go `filepath.Match` plus `**`) and
//!   `.dockerignore`-style exclusion rules;
//! * [`catalogue`]: the compiled catalogue and the deterministic rule, including what the
//!   build definitions in the diff say (see [`crate::builddefs`]);
//! * [`model`]: the advisor and its bounded model step.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub mod catalogue;
pub mod model;
pub mod pattern;

pub use catalogue::CompiledCatalogue;
pub use model::{
    ModelServicesAnswer, ServicesAdvisor, ServicesOptions, diff_excerpt, services_schema,
    validate_model_answer,
};
pub use pattern::{IgnoreRules, PathPattern};

/// long is treated as incomplete.
pub const GITHUB_FILE_LIST_CAP: usize = 3000;

/// Confidence of an answer backed only by path, shared-path and dependency evidence.
pub const CONFIDENCE_PATH_EVIDENCE: f64 = 1.0;
/// Confidence of an answer to which the model added services.
pub const CONFIDENCE_MODEL_ADDED: f64 = 0.7;
/// Confidence of an answer that assumed every service because the change list was incomplete.
pub const CONFIDENCE_ASSUMED_ALL: f64 = 0.5;

/// At most this many evidence entries are kept per service (the count of matching files is
/// kept separately in [`AffectedServices::matched_files`]).
pub const MAX_EVIDENCE_PER_SERVICE: usize = 10;

/// Version of the services prompt; bump it when the instructions or schema change.
pub const SERVICES_PROMPT_VERSION: u32 = 1;

/// Errors building the services advisor from a catalogue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServicesError {
    /// A path or ignore pattern does not parse.
    #[error("service {service:?}: invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// Service name, or `shared` for shared paths.
        service: String,
        /// The offending pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `depends_on` names a service that is not in the catalogue.
    #[error("service {service:?} depends on unknown service {dependency:?}")]
    UnknownDependency {
        /// The service declaring the dependency.
        service: String,
        /// The unknown name.
        dependency: String,
    },
    /// Two services share a name.
    #[error("duplicate service name {0:?}")]
    DuplicateService(String),
}

impl ServicesError {
    /// Short static category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            ServicesError::InvalidPattern { .. } => "invalid_pattern",
            ServicesError::UnknownDependency { .. } => "unknown_dependency",
            ServicesError::DuplicateService(_) => "duplicate_service",
        }
    }
}

// ------------------------------------------------------------------------------------------
// Inputs and outputs
// ------------------------------------------------------------------------------------------

/// What the advisor knows about one pull request (or push).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeInput {
    /// Changed paths, repository-relative; both sides of a rename.
    pub files: Vec<String>,
    /// The caller knows the list is incomplete (GitHub caps, shallow clone without the
    /// merge base): every service is assumed affected.
    #[serde(default)]
    pub file_list_incomplete: bool,
    /// The unified diff, when available. The build-definition rules read the patches of
    /// compose, skaffold, `.env`, Dockerfile and `.dockerignore` files; the model gets an
    /// excerpt, scrubbed and capped. A diff cut short ends with a line starting with
    /// `# [diff truncated` (or a hunk shorter than its header says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The pull request title, when available (untrusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The pull request comes from a fork.
    #[serde(default)]
    pub is_fork: bool,
}

impl ChangeInput {
    /// A change made of the given paths (include both sides of renames).
    pub fn from_files<I, S>(files: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ChangeInput {
            files: files.into_iter().map(Into::into).collect(),
            ..ChangeInput::default()
        }
    }
}

/// Why a service is in the affected set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Evidence {
    /// A changed path matched the service's paths.
    Path {
        /// The changed path.
        path: String,
    },
    /// A changed path matched a shared path.
    SharedPath {
        /// The changed path.
        path: String,
    },
    /// The service depends on an affected service.
    DependsOn {
        /// The affected dependency.
        service: String,
    },
    /// Every service was assumed affected.
    AllServices {
        /// Why.
        reason: String,
    },
    /// The service's build definition changed (a compose or skaffold entry, its
    /// Dockerfile), as read from the diff.
    BuildDefinition {
        /// The build-definition file.
        path: String,
        /// What changed in it.
        detail: String,
    },
    /// A variable the service's build substitutes or passes as a build argument changed
    /// value in an env file.
    BuildArgument {
        /// The env file.
        path: String,
        /// The changed variables the service uses.
        variables: Vec<String>,
    },
    /// A changed pattern of the `.dockerignore` governing the service's context can
    /// change which files enter its build.
    IgnoreFile {
        /// The ignore file.
        path: String,
        /// The changed pattern.
        pattern: String,
    },
    /// A file of the service was renamed or moved; the new path belongs to it too.
    Renamed {
        /// The old path (claimed by the service).
        from: String,
        /// The new path.
        to: String,
    },
    /// The model added the service.
    Model {
        /// The model's explanation (untrusted text, capped).
        reason: String,
    },
}

/// The affected services of one change, with evidence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffectedServices {
    /// Affected service names, sorted.
    pub services: BTreeSet<String>,
    /// Per service, why it is affected (at most [`MAX_EVIDENCE_PER_SERVICE`] entries).
    pub evidence: BTreeMap<String, Vec<Evidence>>,
    /// Per service, how many evidence entries were found in total.
    pub matched_files: BTreeMap<String, usize>,
    /// Changed files that no service path and no shared path claims.
    pub unmapped_files: Vec<String>,
    /// Set when every service was assumed affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_services_reason: Option<String>,
    /// How likely the set holds every affected service (see the module documentation).
    pub confidence: f64,
    /// How the build definitions in the diff were used, and where they could not be
    /// (no diff, a truncated diff, a file the rules cannot read): there the path-matching
    /// answer stands. Meant for the environment's reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl AffectedServices {
    fn add_evidence(&mut self, service: &str, evidence: Evidence) {
        *self.matched_files.entry(service.to_owned()).or_default() += 1;
        let list = self.evidence.entry(service.to_owned()).or_default();
        if list.len() < MAX_EVIDENCE_PER_SERVICE {
            list.push(evidence);
        }
    }
}
