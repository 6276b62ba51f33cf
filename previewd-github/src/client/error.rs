//! Errors of the REST client.

use std::time::Duration;

use previewd_core::source_control::SourceControlError;

/// Why a GitHub REST call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GitHubError {
    /// 401: credentials missing, invalid or expired.
    #[error("GitHub rejected the credentials: {0}")]
    Unauthorized(String),
    /// 403 that is not a rate limit.
    #[error("GitHub refused access: {0}")]
    Forbidden(String),
    /// 404.
    #[error("not found on GitHub: {0}")]
    NotFound(String),
    /// 400, 406, 410, 422 and other non-retryable 4xx.
    #[error("GitHub rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// Rate limited beyond the retry budget or the longest wait allowed.
    #[error("rate limited by GitHub (retry after {retry_after:?})")]
    RateLimited {
        /// How long GitHub asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// 5xx after every retry.
    #[error("GitHub answered {status} after {attempts} attempts")]
    Server {
        /// Last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer within the per-request timeout, after every retry.
    #[error("GitHub did not answer in time after {attempts} attempts")]
    Timeout {
        /// Attempts made.
        attempts: u32,
    },
    /// Connection or protocol failure after every retry.
    #[error("could not reach GitHub: {0}")]
    Transport(String),
    /// The answer could not be decoded.
    #[error("could not decode GitHub's answer: {0}")]
    Decode(String),
    /// Bad configuration (private key, base URL).
    #[error("GitHub client configuration: {0}")]
    Config(String),
}

impl GitHubError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        match self {
            GitHubError::Unauthorized(_) => "unauthorized",
            GitHubError::Forbidden(_) => "forbidden",
            GitHubError::NotFound(_) => "not_found",
            GitHubError::Rejected { .. } => "rejected",
            GitHubError::RateLimited { .. } => "rate_limited",
            GitHubError::Server { .. } => "server_error",
            GitHubError::Timeout { .. } => "timeout",
            GitHubError::Transport(_) => "transport",
            GitHubError::Decode(_) => "decode",
            GitHubError::Config(_) => "config",
        }
    }

    /// The HTTP status GitHub answered, when the error is an HTTP answer.
    pub const fn status(&self) -> Option<u16> {
        match self {
            GitHubError::Unauthorized(_) => Some(401),
            GitHubError::Forbidden(_) => Some(403),
            GitHubError::NotFound(_) => Some(404),
            GitHubError::Rejected { status, .. } | GitHubError::Server { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

impl From<GitHubError> for SourceControlError {
    fn from(err: GitHubError) -> Self {
        let text = err.to_string();
        match err {
            GitHubError::Unauthorized(_) => SourceControlError::Unauthorized(text),
            GitHubError::Forbidden(_) => SourceControlError::Forbidden(text),
            GitHubError::NotFound(_) => SourceControlError::NotFound(text),
            GitHubError::Rejected { .. } => SourceControlError::Rejected(text),
            GitHubError::RateLimited { retry_after } => SourceControlError::RateLimited {
                retry_after_secs: retry_after.map(|d| d.as_secs()),
            },
            GitHubError::Server { .. }
            | GitHubError::Timeout { .. }
            | GitHubError::Transport(_) => SourceControlError::Unavailable(text),
            GitHubError::Decode(_) => SourceControlError::InvalidResponse(text),
            GitHubError::Config(_) => SourceControlError::Config(text),
        }
    }
}
