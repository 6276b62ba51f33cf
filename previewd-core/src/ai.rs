//! The AI provider trait and its request, response and error types.
//!
//! Providers are deliberately dumb: they turn one [`AiRequest`] into one JSON value that
//! matches the request's schema. Features (which services a change affects, which tests
//! to run, how long an environment lives, how large it is) live in advisors that always
//! compute a deterministic answer first and only let a model add to it.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a provider can do; advisors and layers adapt to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The server enforces a JSON schema on the output (OpenAI strict mode, Ollama `format`,
    /// llama.cpp grammars). Output is validated client-side either way.
    pub json_schema: bool,
    /// Largest prompt, in tokens, the provider accepts without truncating.
    pub max_context_tokens: u32,
    /// The provider sends data to a third party (OpenAI). Fork PRs and secrets are never
    /// sent to external providers unless the repository allows it.
    pub external: bool,
}

/// A piece of untrusted text (PR title, body, diff) that must never be read as instructions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntrustedInput {
    /// What the text is, e.g. `diff` or `pull request title`.
    pub label: String,
    /// The text itself, already scrubbed of secrets.
    pub text: String,
}

/// One structured completion request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AiRequest {
    /// Feature name (`services`, `tests`, `lifespan`, `tier`, `data`), for metrics and cache keys.
    pub feature: String,
    /// Version of the prompt; bump it when the instructions change so caches miss.
    pub prompt_version: u32,
    /// Trusted instructions (system prompt).
    pub instructions: String,
    /// Trusted context such as the service catalogue and the allow-list.
    pub context: String,
    /// Untrusted inputs, delimited by the provider adapter.
    pub untrusted: Vec<UntrustedInput>,
    /// Name of the schema (letters, digits, `_`, `-`).
    pub schema_name: String,
    /// JSON schema of the answer; its root is always an object.
    pub schema: serde_json::Value,
    /// Sampling temperature; advisors use 0.
    pub temperature: f32,
    /// Upper bound on generated tokens.
    pub max_output_tokens: u32,
    /// Total time budget for the request, retries included.
    pub deadline: Duration,
}

/// A validated answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AiResponse {
    /// The JSON value, already checked against the request schema.
    pub value: serde_json::Value,
    /// The model that answered, as reported by the server.
    pub model: String,
    /// Prompt tokens the server says it read (Ollama's `prompt_eval_count`), when known.
    pub prompt_tokens: Option<u32>,
    /// Tokens generated, when known.
    pub completion_tokens: Option<u32>,
}

/// Why a provider gave no usable answer. Every variant makes advisors fall back to their
/// deterministic answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AiError {
    /// The provider asked us to slow down; retry after the given time if known.
    #[error("rate limited by the provider (retry after {retry_after:?})")]
    RateLimited {
        /// Server-provided wait.
        retry_after: Option<Duration>,
    },
    /// The account has no quota or credit left; never retried.
    #[error("provider quota exhausted: {0}")]
    QuotaExhausted(String),
    /// The deadline passed before an answer arrived.
    #[error("provider timed out after {0:?}")]
    Timeout(Duration),
    /// The model refused to answer.
    #[error("model refused: {0}")]
    Refused(String),
    /// The answer was cut off (length limit) or the prompt was truncated by the server.
    #[error("truncated: {0}")]
    Truncated(String),
    /// The answer was not valid JSON or did not match the schema or the allow-list.
    #[error("answer violates the schema: {0}")]
    SchemaViolation(String),
    /// Authentication failed (bad or missing API key).
    #[error("provider rejected the credentials: {0}")]
    Unauthorized(String),
    /// The request was malformed (HTTP 400/404/422); a bug or a misconfiguration, not retried.
    #[error("provider rejected the request: {0}")]
    BadRequest(String),
    /// The provider is unavailable (5xx, connection refused, circuit open).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// AI is switched off or the input may not be sent to this provider (fork PR, policy).
    #[error("AI not used: {0}")]
    Disabled(String),
}

impl AiError {
    /// Short static category, used as a metric label and as the fallback reason.
    pub fn category(&self) -> &'static str {
        match self {
            AiError::RateLimited { .. } => "rate_limited",
            AiError::QuotaExhausted(_) => "quota_exhausted",
            AiError::Timeout(_) => "timeout",
            AiError::Refused(_) => "refused",
            AiError::Truncated(_) => "truncated",
            AiError::SchemaViolation(_) => "schema_violation",
            AiError::Unauthorized(_) => "unauthorized",
            AiError::BadRequest(_) => "bad_request",
            AiError::Unavailable(_) => "unavailable",
            AiError::Disabled(_) => "disabled",
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AiError::RateLimited { .. } | AiError::Timeout(_) | AiError::Unavailable(_)
        )
    }
}

/// A model provider: OpenAI-compatible servers, Ollama, or your own.
#[async_trait]
pub trait AiProvider: Send + Sync {
    /// Stable identity used in cache keys and audit logs, e.g. `openai:gpt-4o-mini`.
    fn id(&self) -> &str;
    /// What the provider supports.
    fn capabilities(&self) -> Capabilities;
    /// Completes one request with a JSON object matching `request.schema`.
    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError>;
}

/// Where an advisor's answer came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum DecisionSource {
    /// Only the deterministic rule ran (AI off or not needed).
    Deterministic,
    /// The model added to (or confirmed) the deterministic answer.
    Model {
        /// Provider id.
        provider: String,
        /// Served from the response cache.
        cached: bool,
    },
    /// The model was asked but failed; the deterministic answer stands.
    Fallback {
        /// Error category ([`AiError::category`]).
        reason: String,
        /// Human-readable detail.
        detail: String,
    },
}

/// An advisor's answer and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision<T> {
    /// The answer.
    pub value: T,
    /// Its source.
    pub source: DecisionSource,
}
