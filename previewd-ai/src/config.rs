//! AI configuration: a ConfigMap's `ai.*` keys overridden by environment variables.
//!
//! | ConfigMap key        | Environment      | Meaning                                             |
//! |----------------------|------------------|-----------------------------------------------------|
//! | `ai.enabled`         | `ENABLE_AI`      | switch; defaults to "on when a provider is set"     |
//! | `ai.provider`        | `AI_PROVIDER`    | `openai` (any OpenAI-compatible server), `ollama`, `none` |
//! | `ai.baseURL`         | `AI_BASE_URL`    | e.g. `https://api.openai.com/v1`, `http://ollama:11434` |
//! | `ai.model`           | `AI_MODEL`       | model name; pin a snapshot                           |
//! | —                    | `OPENAI_API_KEY` | bearer key (never printed)                           |
//! | `ai.numCtx`          | —                | Ollama context window (default 8192)                 |
//! | `ai.rateLimit`       | —                | requests per second (default 10)                     |
//! | `ai.timeout`         | —                | total budget per request (default `30s`)             |
//! | `ai.allowForkPRs`    | —                | send fork PRs to external providers (default false)  |
//! | `ai.responseFormat`  | —                | `json_schema`, `json_object` or `auto`               |
//! | `ai.seed`            | —                | sampling seed (default 0)                            |
//! | `ai.maxAttempts`     | —                | attempts per request, retries included (default 3)   |
//! | `ai.external`        | —                | override whether the provider is a third party       |
//!
//! AI off is a first-class mode: [`build_provider`] then returns `None` and every advisor
//! gives its deterministic answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use previewd_core::ai::AiProvider;

use crate::provider::layers::{AiStack, DEFAULT_CACHE_TTL, stack_around};
use crate::provider::ollama::DEFAULT_NUM_CTX;
use crate::provider::{Ollama, OpenAiCompatible, ResponseFormatStyle, parse_duration};

/// OpenAI's public endpoint, the default base URL of the `openai` provider.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Default model for OpenAI's endpoint (a pinned snapshot with strict structured outputs).
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini-2024-07-18";
/// Default base URL of the `ollama` provider.
pub const OLLAMA_BASE_URL: &str = "http://127.0.0.1:11434";

/// Which wire dialect to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI chat completions (OpenAI, vLLM, llama.cpp, llama-cpp-python, Ollama `/v1`).
    OpenAi,
    /// Ollama's native `/api/chat`.
    Ollama,
    /// No provider: AI off.
    #[default]
    None,
}

impl std::str::FromStr for ProviderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" | "openai-compatible" => Ok(Self::OpenAi),
            "ollama" => Ok(Self::Ollama),
            "none" | "off" | "" => Ok(Self::None),
            other => Err(format!(
                "unknown provider {other:?} (expected openai, ollama or none)"
            )),
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be parsed or is out of range.
    #[error("invalid {key} value {value:?}: {reason}")]
    Invalid {
        /// ConfigMap key or environment variable.
        key: String,
        /// The offending value (never a secret).
        value: String,
        /// What is expected.
        reason: String,
    },
    /// A required value is missing.
    #[error("missing {key}: {reason}")]
    Missing {
        /// ConfigMap key or environment variable.
        key: String,
        /// Why it is needed.
        reason: String,
    },
}

impl ConfigError {
    /// Short static category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            ConfigError::Invalid { .. } => "invalid_config",
            ConfigError::Missing { .. } => "missing_config",
        }
    }
}

/// Everything needed to build the provider stack.
#[derive(Clone, PartialEq)]
pub struct AiConfig {
    /// Whether advisors may ask a model at all.
    pub enabled: bool,
    /// Wire dialect.
    pub provider: ProviderKind,
    /// Base URL of the server.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Bearer key; never printed by `Debug`.
    pub api_key: Option<String>,
    /// Ollama `num_ctx`.
    pub num_ctx: u32,
    /// Client-side rate limit, requests per second.
    pub rate_limit_per_sec: u32,
    /// Total budget of one request, retries included.
    pub timeout: Duration,
    /// Whether fork PRs may be sent to an external provider.
    pub allow_external_for_forks: bool,
    /// How the schema is passed to OpenAI-compatible servers.
    pub response_format: ResponseFormatStyle,
    /// Sampling seed.
    pub seed: u64,
    /// Attempts per request, retries included.
    pub max_attempts: u32,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long the circuit stays open.
    pub breaker_cooldown: Duration,
    /// How long the circuit stays open after the quota ran out.
    pub quota_cooldown: Duration,
    /// Lifetime of cached answers.
    pub cache_ttl: Duration,
    /// Maximum number of cached answers.
    pub cache_capacity: u64,
    /// Override of whether the provider is a third party (`None` = guess from the URL).
    pub external: Option<bool>,
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            provider: ProviderKind::None,
            base_url: String::new(),
            model: String::new(),
            api_key: None,
            num_ctx: DEFAULT_NUM_CTX,
            rate_limit_per_sec: 10,
            timeout: Duration::from_secs(30),
            allow_external_for_forks: false,
            response_format: ResponseFormatStyle::JsonSchema,
            seed: 0,
            max_attempts: 3,
            breaker_failure_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            quota_cooldown: Duration::from_secs(15 * 60),
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: 10_000,
            external: None,
        }
    }
}

impl std::fmt::Debug for AiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiConfig")
            .field("enabled", &self.enabled)
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("num_ctx", &self.num_ctx)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("timeout", &self.timeout)
            .field("allow_external_for_forks", &self.allow_external_for_forks)
            .field("response_format", &self.response_format)
            .field("seed", &self.seed)
            .field("max_attempts", &self.max_attempts)
            .field("external", &self.external)
            .finish_non_exhaustive()
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

fn parse_u32_in(key: &str, value: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            key,
            value,
            format!("expected a whole number from {min} to {max}"),
        )),
    }
}

impl AiConfig {
    /// AI switched off.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Reads the ConfigMap `data` and then the environment through `env` (which wins).
    /// `env` is a lookup such as `|name| std::env::var(name).ok()`.
    pub fn load(
        data: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let map = |key: &str| data.get(key).map(|v| v.trim().to_string());
        let env = |key: &str| env(key).map(|v| v.trim().to_string());

        let provider_value = env("AI_PROVIDER")
            .map(|v| ("AI_PROVIDER", v))
            .or_else(|| map("ai.provider").map(|v| ("ai.provider", v)));
        if let Some((key, value)) = &provider_value {
            config.provider = value
                .parse()
                .map_err(|reason: String| invalid(key, value, reason))?;
        }
        let enabled = match (env("ENABLE_AI"), map("ai.enabled")) {
            (Some(v), _) => Some(parse_bool("ENABLE_AI", &v)?),
            (None, Some(v)) => Some(parse_bool("ai.enabled", &v)?),
            (None, None) => None,
        };
        config.enabled = enabled.unwrap_or(config.provider != ProviderKind::None);
        if config.enabled && config.provider == ProviderKind::None {
            return Err(ConfigError::Missing {
                key: "ai.provider / AI_PROVIDER".into(),
                reason: "AI is enabled but no provider (openai or ollama) is set".into(),
            });
        }

        if let Some(v) = map("ai.numCtx") {
            config.num_ctx = parse_u32_in("ai.numCtx", &v, 256, 1 << 21)?;
        }
        if let Some(v) = map("ai.rateLimit") {
            config.rate_limit_per_sec = parse_u32_in("ai.rateLimit", &v, 1, 10_000)?;
        }
        if let Some(v) = map("ai.timeout") {
            config.timeout = parse_duration(&v)
                .filter(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(600))
                .ok_or_else(|| {
                    invalid(
                        "ai.timeout",
                        &v,
                        "expected a duration from 100ms to 10m, e.g. 30s",
                    )
                })?;
        }
        if let Some(v) = map("ai.allowForkPRs") {
            config.allow_external_for_forks = parse_bool("ai.allowForkPRs", &v)?;
        }
        if let Some(v) = map("ai.seed") {
            config.seed = v
                .parse()
                .map_err(|_| invalid("ai.seed", &v, "expected a whole number"))?;
        }
        if let Some(v) = map("ai.maxAttempts") {
            config.max_attempts = parse_u32_in("ai.maxAttempts", &v, 1, 10)?;
        }
        if let Some(v) = map("ai.external") {
            config.external = Some(parse_bool("ai.external", &v)?);
        }

        let (default_url, key_url) = match config.provider {
            ProviderKind::OpenAi => (OPENAI_BASE_URL, "ai.baseURL / AI_BASE_URL"),
            ProviderKind::Ollama => (OLLAMA_BASE_URL, "ai.baseURL / AI_BASE_URL"),
            ProviderKind::None => ("", "ai.baseURL / AI_BASE_URL"),
        };
        config.base_url = env("AI_BASE_URL")
            .or_else(|| map("ai.baseURL"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default_url.to_string());
        if config.provider != ProviderKind::None {
            let url: reqwest::Url = config
                .base_url
                .parse()
                .map_err(|e| invalid(key_url, &config.base_url, format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(
                    key_url,
                    &config.base_url,
                    "expected an http or https URL",
                ));
            }
        }
        let is_openai_cloud = config.base_url.trim_end_matches('/') == OPENAI_BASE_URL;

        config.api_key = env("OPENAI_API_KEY").filter(|k| !k.is_empty());
        config.model = env("AI_MODEL")
            .or_else(|| map("ai.model"))
            .unwrap_or_default();
        if config.model.is_empty() && config.enabled {
            if config.provider == ProviderKind::OpenAi && is_openai_cloud {
                config.model = OPENAI_DEFAULT_MODEL.to_string();
            } else {
                return Err(ConfigError::Missing {
                    key: "ai.model / AI_MODEL".into(),
                    reason: format!("a model name is needed for {}", config.base_url),
                });
            }
        }
        if config.enabled
            && config.provider == ProviderKind::OpenAi
            && is_openai_cloud
            && config.api_key.is_none()
        {
            return Err(ConfigError::Missing {
                key: "OPENAI_API_KEY".into(),
                reason: "OpenAI's API needs a key".into(),
            });
        }

        config.response_format = match map("ai.responseFormat").as_deref() {
            Some("json_schema") => ResponseFormatStyle::JsonSchema,
            Some("json_object") => ResponseFormatStyle::JsonObject,
            Some("auto") => ResponseFormatStyle::Auto,
            Some(other) => {
                return Err(invalid(
                    "ai.responseFormat",
                    other,
                    "expected json_schema, json_object or auto",
                ));
            }
            None if is_openai_cloud => ResponseFormatStyle::JsonSchema,
            None => ResponseFormatStyle::Auto,
        };
        Ok(config)
    }

    /// [`AiConfig::load`] with the process environment.
    pub fn from_process_env(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::load(data, |name| std::env::var(name).ok())
    }
}

/// Builds the bare provider (no layers) for `config`; `None` when AI is off.
pub fn build_bare_provider(config: &AiConfig) -> Result<Option<Arc<dyn AiProvider>>, ConfigError> {
    if !config.enabled || config.provider == ProviderKind::None {
        return Ok(None);
    }
    let wrap = |e: previewd_core::ai::AiError| {
        invalid("ai.baseURL / AI_BASE_URL", &config.base_url, e.to_string())
    };
    let provider: Arc<dyn AiProvider> = match config.provider {
        ProviderKind::OpenAi => {
            let mut p =
                OpenAiCompatible::new(&config.base_url, &config.model, config.api_key.clone())
                    .map_err(wrap)?
                    .with_response_format(config.response_format)
                    .with_seed(Some(config.seed));
            if let Some(external) = config.external {
                p = p.with_external(external);
            }
            Arc::new(p)
        }
        ProviderKind::Ollama => {
            let mut p = Ollama::new(&config.base_url, &config.model)
                .map_err(wrap)?
                .with_num_ctx(config.num_ctx)
                .with_seed(Some(config.seed));
            if let Some(external) = config.external {
                p = p.with_external(external);
            }
            Arc::new(p)
        }
        ProviderKind::None => return Ok(None),
    };
    Ok(Some(provider))
}

/// Builds the full stack (provider inside cache, deadline, rate limit, circuit breaker and
/// retries); `None` when AI is off.
pub fn build_stack(config: &AiConfig) -> Result<Option<AiStack>, ConfigError> {
    Ok(build_bare_provider(config)?.map(|p| stack_around(p, config)))
}

/// The provider advisors should use: the full stack, or `None` when AI is off.
pub fn build_provider(config: &AiConfig) -> Result<Option<Arc<dyn AiProvider>>, ConfigError> {
    Ok(build_stack(config)?.map(|s| s.provider))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn nothing_configured_means_ai_off() {
        let c = AiConfig::load(&BTreeMap::new(), env(&[])).unwrap();
        assert!(!c.enabled);
        assert!(build_provider(&c).unwrap().is_none());
    }

    #[test]
    fn config_map_values_are_read() {
        let c = AiConfig::load(
            &data(&[
                ("ai.provider", "ollama"),
                // Locality is decided by resolved addresses, so the test uses one that
                // resolves here; a cluster service name resolves to a private address.
                ("ai.baseURL", "http://10.96.0.20:11434"),
                ("ai.model", "qwen2.5:7b"),
                ("ai.numCtx", "16384"),
                ("ai.rateLimit", "4"),
                ("ai.timeout", "45s"),
                ("ai.allowForkPRs", "true"),
            ]),
            env(&[]),
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.provider, ProviderKind::Ollama);
        assert_eq!(c.num_ctx, 16384);
        assert_eq!(c.rate_limit_per_sec, 4);
        assert_eq!(c.timeout, Duration::from_secs(45));
        assert!(c.allow_external_for_forks);
        let p = build_provider(&c).unwrap().unwrap();
        assert_eq!(p.id(), "ollama:qwen2.5:7b");
        assert!(!p.capabilities().external);
    }

    #[test]
    fn environment_overrides_the_config_map() {
        let c = AiConfig::load(
            &data(&[("ai.provider", "ollama"), ("ai.model", "llama3")]),
            env(&[
                ("AI_PROVIDER", "openai"),
                ("AI_BASE_URL", "http://127.0.0.1:8089/v1"),
                ("AI_MODEL", "smollm2"),
                ("OPENAI_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz"),
            ]),
        )
        .unwrap();
        assert_eq!(c.provider, ProviderKind::OpenAi);
        assert_eq!(c.model, "smollm2");
        assert_eq!(c.response_format, ResponseFormatStyle::Auto);
        let debug = format!("{c:?}");
        assert!(!debug.contains("abcdefghij"), "{debug}");
        assert!(debug.contains("[REDACTED]"));
        let off = AiConfig::load(
            &data(&[("ai.provider", "ollama"), ("ai.model", "m")]),
            env(&[("ENABLE_AI", "false")]),
        )
        .unwrap();
        assert!(!off.enabled);
        assert!(build_provider(&off).unwrap().is_none());
    }

    #[test]
    fn openai_cloud_defaults_and_requires_a_key() {
        let c = AiConfig::load(
            &data(&[("ai.provider", "openai")]),
            env(&[("OPENAI_API_KEY", "sk-x")]),
        )
        .unwrap();
        assert_eq!(c.base_url, OPENAI_BASE_URL);
        assert_eq!(c.model, OPENAI_DEFAULT_MODEL);
        assert_eq!(c.response_format, ResponseFormatStyle::JsonSchema);
        assert!(build_provider(&c).unwrap().unwrap().capabilities().external);
        let err = AiConfig::load(&data(&[("ai.provider", "openai")]), env(&[])).unwrap_err();
        assert!(matches!(&err, ConfigError::Missing { key, .. } if key == "OPENAI_API_KEY"));
    }

    #[test]
    fn bad_values_give_clear_errors() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs<'_>, Pairs<'_>, &str)] = &[
            (&[("ai.provider", "gemini")], &[], "unknown provider"),
            (
                &[
                    ("ai.provider", "ollama"),
                    ("ai.model", "m"),
                    ("ai.numCtx", "lots"),
                ],
                &[],
                "ai.numCtx",
            ),
            (
                &[
                    ("ai.provider", "ollama"),
                    ("ai.model", "m"),
                    ("ai.rateLimit", "0"),
                ],
                &[],
                "ai.rateLimit",
            ),
            (
                &[
                    ("ai.provider", "ollama"),
                    ("ai.model", "m"),
                    ("ai.timeout", "soon"),
                ],
                &[],
                "ai.timeout",
            ),
            (
                &[
                    ("ai.provider", "ollama"),
                    ("ai.model", "m"),
                    ("ai.allowForkPRs", "maybe"),
                ],
                &[],
                "ai.allowForkPRs",
            ),
            (
                &[
                    ("ai.provider", "ollama"),
                    ("ai.model", "m"),
                    ("ai.baseURL", "ftp://x"),
                ],
                &[],
                "http or https",
            ),
            (&[("ai.provider", "ollama")], &[], "ai.model"),
            (&[], &[("ENABLE_AI", "true")], "no provider"),
            (&[], &[("ENABLE_AI", "perhaps")], "ENABLE_AI"),
        ];
        for (map, vars, needle) in cases {
            let err = AiConfig::load(&data(map), env(vars)).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }
}
