//! Renders a [`PreviewEnvironment`] from a repository's trusted settings and a pull
//! request snapshot. Pure: the webhook calls it, then server-side applies the result.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;
use previewd_core::naming;

use crate::crd::{
    ANNOTATION_LAST_ACTIVITY, ANNOTATION_PR_UPDATED_AT, IngressSpec, LABEL_MANAGED_BY, LABEL_PR,
    LABEL_REPO, MANAGED_BY, PreviewEnvironment, PreviewEnvironmentSpec, PreviewRepository,
    ResourcesSpec, ServiceSpec,
};

/// What the webhook knows about a pull request when it renders an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestSnapshot {
    /// Repository, `owner/name`.
    pub repository: String,
    /// PR number.
    pub number: u64,
    /// Head branch.
    pub branch: String,
    /// Head commit SHA.
    pub head_sha: String,
    /// Base branch.
    pub base_branch: Option<String>,
    /// Author login.
    pub author: Option<String>,
    /// The PR's `updated_at`, RFC 3339, used to recognise out-of-order events.
    pub updated_at: Option<String>,
    /// When the head last moved (a push), RFC 3339; renews the TTL with autoExtend.
    pub last_activity: Option<String>,
}

/// Why an environment could not be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The settings belong to another repository.
    #[error("settings are for repository {expected}, event is for {actual}")]
    RepositoryMismatch {
        /// Repository of the settings.
        expected: String,
        /// Repository of the event.
        actual: String,
    },
    /// The head SHA is not a hex commit id.
    #[error("head SHA {0:?} is not a commit id")]
    InvalidSha(String),
    /// The settings have no services.
    #[error("repository settings list no services")]
    NoServices,
    /// A service's image template names an unknown variable or has a stray brace.
    #[error("service {service}: {error}")]
    ImageTemplate {
        /// The catalogue service.
        service: String,
        /// What is wrong with its template.
        error: previewd_core::image_template::ImageTemplateError,
    },
}

impl RenderError {
    /// Short static category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            RenderError::RepositoryMismatch { .. } => "repository_mismatch",
            RenderError::InvalidSha(_) => "invalid_sha",
            RenderError::NoServices => "no_services",
            RenderError::ImageTemplate { .. } => "image_template",
        }
    }
}

/// Name of the `PreviewEnvironment` for a PR of a repository.
pub fn environment_name(repository: &str, pr: u64) -> String {
    naming::environment_name(repository, pr)
}

/// Label value for a repository (`owner/name` → `owner.name`, truncated to 63 characters).
pub fn repo_label_value(repository: &str) -> String {
    let mut value: String = repository
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '.'
            }
        })
        .collect();
    value.truncate(63);
    value
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Replaces `{{number}}`, `{{sha}}`, `{{shortSha}}`, `{{branch}}` and `{{service}}` in an
/// image template (spaces inside the braces allowed). The branch is made safe for an
/// image tag. Any other variable, and a brace outside a variable, is an error that says
/// which ([`previewd_core::image_template`]).
pub fn render_image(
    template: &str,
    pr: &PullRequestSnapshot,
    service: &str,
) -> Result<String, previewd_core::image_template::ImageTemplateError> {
    let short_sha: String = pr.head_sha.chars().take(7).collect();
    let mut branch_tag: String = pr
        .branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    branch_tag.truncate(128);
    previewd_core::image_template::render(template, |name| match name {
        "number" => Some(pr.number.to_string()),
        "sha" => Some(pr.head_sha.clone()),
        "shortSha" => Some(short_sha.clone()),
        "branch" => Some(branch_tag.clone()),
        "service" => Some(service.to_string()),
        _ => None,
    })
}

/// Renders the desired `PreviewEnvironment` for a pull request. The result carries no
/// status and no resourceVersion, ready for server-side apply.
pub fn render_environment(
    settings: &PreviewRepository,
    pr: &PullRequestSnapshot,
) -> Result<PreviewEnvironment, RenderError> {
    let spec = &settings.spec;
    if !spec.repository.eq_ignore_ascii_case(&pr.repository) {
        return Err(RenderError::RepositoryMismatch {
            expected: spec.repository.clone(),
            actual: pr.repository.clone(),
        });
    }
    let sha_ok = (7..=64).contains(&pr.head_sha.len())
        && pr
            .head_sha
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !sha_ok {
        return Err(RenderError::InvalidSha(pr.head_sha.clone()));
    }
    if spec.catalogue.services.is_empty() {
        return Err(RenderError::NoServices);
    }
    let services = spec
        .catalogue
        .services
        .iter()
        .map(|s| {
            Ok(ServiceSpec {
                name: s.name.clone(),
                image: render_image(&s.image, pr, &s.name).map_err(|error| {
                    RenderError::ImageTemplate {
                        service: s.name.clone(),
                        error,
                    }
                })?,
                port: s.port,
                replicas: s.replicas,
                ingress_path: s.ingress_path.clone(),
                env: BTreeMap::new(),
                resources: None,
            })
        })
        .collect::<Result<Vec<_>, RenderError>>()?;
    // `defaultTier: auto` hands the choice to the tier advisor, which starts from the
    // declared tiers itself; otherwise the largest declared tier, else the default.
    let tier = match spec.default_tier {
        Some(crate::crd::TierChoice::Auto) => Some(crate::crd::TierChoice::Auto),
        default => spec
            .catalogue
            .services
            .iter()
            .filter_map(|s| s.tier)
            .max()
            .map(crate::crd::TierChoice::from)
            .or(default),
    };

    let mut labels = BTreeMap::new();
    labels.insert(LABEL_PR.to_string(), pr.number.to_string());
    labels.insert(LABEL_REPO.to_string(), repo_label_value(&pr.repository));
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    let mut annotations = BTreeMap::new();
    if let Some(updated) = &pr.updated_at {
        annotations.insert(ANNOTATION_PR_UPDATED_AT.to_string(), updated.clone());
    }
    if let Some(activity) = &pr.last_activity {
        annotations.insert(ANNOTATION_LAST_ACTIVITY.to_string(), activity.clone());
    }

    let name = environment_name(&spec.repository, pr.number);
    Ok(PreviewEnvironment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: settings.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: PreviewEnvironmentSpec {
            repository: spec.repository.clone(),
            pr_number: i64::try_from(pr.number).unwrap_or(i64::MAX),
            branch: pr.branch.clone(),
            head_sha: pr.head_sha.clone(),
            base_branch: pr.base_branch.clone(),
            author: pr.author.clone(),
            repository_ref: settings.metadata.name.clone(),
            // The repository's strategy is read live by the controller.
            strategy: None,
            services,
            service_selection: Some(spec.deploy),
            test_data: spec.test_data.clone(),
            tests: spec.tests.clone(),
            resources: ResourcesSpec {
                tier,
                use_spot: spec.use_spot,
            },
            ttl: spec.default_ttl,
            auto_extend: spec.auto_extend,
            max_lifespan: spec.max_lifespan,
            cost_budget: spec.cost_budget.clone(),
            ingress: Some(IngressSpec {
                enabled: true,
                host: Some(naming::ingress_host(pr.number, &spec.base_domain)),
                tls: spec.tls,
                class_name: spec.ingress_class_name.clone(),
                cluster_issuer: spec.cluster_issuer.clone(),
            }),
            quota: spec.quota.clone(),
            required_checks: spec.required_checks.clone(),
        },
        status: None,
    })
}
