//! Errors of the Kubernetes adapter.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, e.g. `apply Deployment preview-1-x/api`.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object has no namespace or name.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// A JSON (de)serialisation failed.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The namespace chosen for an environment was claimed by another environment first
    /// (or disappeared while it was claimed); the next reconcile chooses again.
    #[error("namespace {0} is not free: another environment claimed it, or it is being deleted")]
    NamespaceTaken(String),
}

impl Error {
    /// Short static category, used as a metric label and an Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.is_conflict() => "conflict",
                kube::Error::Api(status) if status.is_forbidden() => "forbidden",
                kube::Error::Api(status) if status.is_not_found() => "not_found",
                kube::Error::Api(_) => "api_error",
                _ => "transport",
            },
            Error::MissingField(_) => "missing_field",
            Error::Serialization(_) => "serialization",
            Error::NamespaceTaken(_) => "conflict",
        }
    }
}

/// Extension to attach context to kube results.
pub(crate) trait KubeContext<T> {
    fn context(self, action: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn context(self, action: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            action: action(),
            source,
        })
    }
}
