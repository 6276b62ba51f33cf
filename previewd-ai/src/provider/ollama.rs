//! Ollama's native `POST /api/chat` dialect.
//!
//! Ollama silently truncates prompts longer than `num_ctx` (only a server-side warning), and
//! it cuts from the start — the system prompt with our instructions goes first while the
//! attacker-controlled diff stays. The provider therefore always sends `num_ctx`, and fails
//! closed with [`AiError::Truncated`] when truncation is likely:
//!
//! * before sending, when the conservative estimate ([`RenderedPrompt::estimated_tokens`],
//!   one token per four characters) plus the output budget exceeds `num_ctx`;
//! * after answering, when the server's `prompt_eval_count` reaches `num_ctx` minus a small
//!   margin ([`TRUNCATION_MARGIN_TOKENS`]): a prompt that fills the window was almost
//!   certainly clipped to fit it.
//!
//! `prompt_eval_count` is not compared with the estimate in the other direction: Ollama
//! reuses cached prompt prefixes and then reports fewer evaluated tokens than were sent.
//!
//! [`RenderedPrompt::estimated_tokens`]: super::RenderedPrompt::estimated_tokens

use async_trait::async_trait;
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities};
use serde_json::{Value, json};

use super::openai::parse_json_content;
use super::{classify_status, http_client, render_prompt, schema, transport_error, truncate};

/// Default context window sent as `options.num_ctx`.
pub const DEFAULT_NUM_CTX: u32 = 8192;

/// A prompt whose `prompt_eval_count` comes this close to `num_ctx` is taken as truncated.
pub const TRUNCATION_MARGIN_TOKENS: u32 = 32;

/// A provider for an Ollama server (`http://127.0.0.1:11434`).
#[derive(Debug)]
pub struct Ollama {
    client: reqwest::Client,
    endpoint: String,
    model: String,
    id: String,
    num_ctx: u32,
    seed: Option<u64>,
    capabilities: Capabilities,
}

impl Ollama {
    /// A provider for the Ollama server at `base_url` and `model` (e.g. `qwen2.5:7b`), with
    /// `num_ctx` = [`DEFAULT_NUM_CTX`].
    pub fn new(base_url: &str, model: &str) -> Result<Self, AiError> {
        let url: reqwest::Url = base_url
            .parse()
            .map_err(|e| AiError::BadRequest(format!("invalid base URL {base_url:?}: {e}")))?;
        Ok(Self {
            client: http_client()?,
            endpoint: format!("{}/api/chat", base_url.trim_end_matches('/')),
            model: model.to_string(),
            id: format!("ollama:{model}"),
            num_ctx: DEFAULT_NUM_CTX,
            seed: Some(0),
            capabilities: Capabilities {
                json_schema: true,
                max_context_tokens: DEFAULT_NUM_CTX,
                external: !super::is_local_url(&url),
            },
        })
    }

    /// Sets the context window (`options.num_ctx`), also advertised in [`Capabilities`].
    pub fn with_num_ctx(mut self, num_ctx: u32) -> Self {
        self.num_ctx = num_ctx;
        self.capabilities.max_context_tokens = num_ctx;
        self
    }

    /// Sets the sampling seed (default 0; `None` sends none).
    pub fn with_seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    /// Overrides whether the server counts as an external third party.
    pub fn with_external(mut self, external: bool) -> Self {
        self.capabilities.external = external;
        self
    }

    /// The JSON body sent for `request`.
    pub fn request_body(&self, request: &AiRequest) -> Value {
        let prompt = render_prompt(request);
        let mut options = json!({
            "temperature": request.temperature,
            "num_ctx": self.num_ctx,
            "num_predict": request.max_output_tokens,
        });
        if let (Some(seed), Some(map)) = (self.seed, options.as_object_mut()) {
            map.insert("seed".into(), json!(seed));
        }
        json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "format": request.schema,
            "stream": false,
            "options": options,
        })
    }
}

#[async_trait]
impl AiProvider for Ollama {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let estimated = render_prompt(request).estimated_tokens();
        if estimated.saturating_add(request.max_output_tokens) > self.num_ctx {
            return Err(AiError::Truncated(format!(
                "prompt of about {estimated} tokens plus {} output tokens does not fit num_ctx {}",
                request.max_output_tokens, self.num_ctx
            )));
        }
        let response = self
            .client
            .post(&self.endpoint)
            .timeout(request.deadline)
            .json(&self.request_body(request))
            .send()
            .await
            .map_err(|e| transport_error(&e, request.deadline))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| transport_error(&e, request.deadline))?;
        if !(200..300).contains(&status) {
            return Err(classify_status(status, &headers, &body));
        }
        parse_chat(&body, &request.schema, self.num_ctx)
    }
}

/// Parses an `/api/chat` answer, checks it for truncation and validates it against `schema`.
pub fn parse_chat(body: &str, schema: &Value, num_ctx: u32) -> Result<AiResponse, AiError> {
    let envelope: Value = serde_json::from_str(body).map_err(|e| {
        AiError::Unavailable(format!(
            "server sent a non-JSON body: {e}: {}",
            truncate(body, 200)
        ))
    })?;
    if let Some(error) = envelope.get("error").and_then(Value::as_str) {
        return Err(AiError::Unavailable(truncate(error, 300)));
    }
    let count = |name: &str| {
        envelope
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let prompt_tokens = count("prompt_eval_count");
    if let Some(seen) = prompt_tokens
        && seen.saturating_add(TRUNCATION_MARGIN_TOKENS) >= num_ctx
    {
        return Err(AiError::Truncated(format!(
            "prompt truncated by server: prompt_eval_count {seen} reached num_ctx {num_ctx}"
        )));
    }
    if envelope.get("done_reason").and_then(Value::as_str) == Some("length") {
        return Err(AiError::Truncated(
            "the answer hit num_predict (done_reason length)".into(),
        ));
    }
    let content = envelope
        .pointer("/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| AiError::SchemaViolation("answer has no message content".into()))?;
    let value = parse_json_content(content)?;
    schema::validate(schema, &value).map_err(AiError::SchemaViolation)?;
    Ok(AiResponse {
        value,
        model: envelope
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        prompt_tokens,
        completion_tokens: count("eval_count"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "required": ["tier"], "properties": {"tier": {"enum": ["small", "large"]}}})
    }

    fn chat(content: &str, done_reason: &str, prompt_eval_count: u32) -> String {
        json!({"model": "qwen", "message": {"role": "assistant", "content": content}, "done": true,
               "done_reason": done_reason, "prompt_eval_count": prompt_eval_count, "eval_count": 5})
        .to_string()
    }

    #[test]
    fn parses_and_detects_truncation() {
        let ok = parse_chat(&chat("{\"tier\":\"small\"}", "stop", 900), &schema(), 8192).unwrap();
        assert_eq!(ok.value, json!({"tier": "small"}));
        assert_eq!(ok.prompt_tokens, Some(900));
        let clipped = parse_chat(&chat("{\"tier\":\"small\"}", "stop", 2048), &schema(), 2048);
        assert!(
            matches!(clipped, Err(AiError::Truncated(m)) if m.contains("prompt truncated by server"))
        );
        let near = parse_chat(&chat("{\"tier\":\"small\"}", "stop", 2030), &schema(), 2048);
        assert!(matches!(near, Err(AiError::Truncated(_))));
        let long = parse_chat(&chat("{\"tier\":", "length", 100), &schema(), 2048);
        assert!(matches!(long, Err(AiError::Truncated(m)) if m.contains("done_reason")));
        let bad = parse_chat(&chat("{\"tier\":\"huge\"}", "stop", 100), &schema(), 2048);
        assert!(matches!(bad, Err(AiError::SchemaViolation(_))));
    }

    #[test]
    fn body_sets_num_ctx_format_and_no_streaming() {
        let p = Ollama::new("http://127.0.0.1:11434", "qwen2.5:7b")
            .unwrap()
            .with_num_ctx(4096);
        assert!(!p.capabilities().external);
        assert_eq!(p.id(), "ollama:qwen2.5:7b");
        let req = AiRequest {
            feature: "tier".into(),
            prompt_version: 1,
            instructions: "i".into(),
            context: String::new(),
            untrusted: vec![],
            schema_name: "tier".into(),
            schema: schema(),
            temperature: 0.0,
            max_output_tokens: 32,
            deadline: std::time::Duration::from_secs(5),
        };
        let body = p.request_body(&req);
        assert_eq!(body["options"]["num_ctx"], 4096);
        assert_eq!(body["options"]["num_predict"], 32);
        assert_eq!(body["options"]["temperature"], 0.0);
        assert_eq!(body["stream"], false);
        assert_eq!(body["format"], schema());
    }
}
