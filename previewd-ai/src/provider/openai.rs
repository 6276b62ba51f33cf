//! Providers speaking the OpenAI chat-completions dialect: OpenAI itself, vLLM,
//! llama.cpp's `llama-server`, llama-cpp-python's server and Ollama's `/v1` endpoint.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities};
use serde_json::{Value, json};

use super::{classify_status, render_prompt, schema, transport_error, truncate};

/// How the answer schema is passed in `response_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResponseFormatStyle {
    /// OpenAI structured outputs: `{"type": "json_schema", "json_schema": {name, schema,
    /// strict: true}}`.
    #[default]
    JsonSchema,
    /// `{"type": "json_object", "schema": ...}`, understood by llama-cpp-python and
    /// llama.cpp's server.
    JsonObject,
    /// Starts with [`ResponseFormatStyle::JsonSchema`] and switches to
    /// [`ResponseFormatStyle::JsonObject`] for good when the server rejects the former with
    /// an error whose body names both `response_format` and `json_object` (what
    /// llama-cpp-python answers). The default for every server except `api.openai.com`.
    Auto,
}

/// A provider for any server that implements `POST {base_url}/chat/completions`.
pub struct OpenAiCompatible {
    client: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    id: String,
    style: ResponseFormatStyle,
    downgraded: AtomicBool,
    seed: Option<u64>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("style", &self.style)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// A provider for `base_url` (e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8089/v1`) and `model`. Servers whose addresses resolve to this
    /// machine or the cluster's private network are marked non-external; everything else
    /// is external. An `api_key` is refused over plain `http://` unless every address of
    /// the host is a loopback address.
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Result<Self, AiError> {
        let url: reqwest::Url = base_url
            .parse()
            .map_err(|e| AiError::BadRequest(format!("invalid base URL {base_url:?}: {e}")))?;
        let external = !super::is_local_url(&url);
        let api_key = api_key.filter(|k| !k.is_empty());
        let client = super::keyed_http_client(&url, api_key.is_some())?;
        // OpenAI itself always speaks json_schema; elsewhere probe and fall back.
        let style = if url.host_str() == Some("api.openai.com") {
            ResponseFormatStyle::JsonSchema
        } else {
            ResponseFormatStyle::Auto
        };
        Ok(Self {
            client,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
            api_key,
            id: format!("openai:{model}"),
            style,
            downgraded: AtomicBool::new(false),
            seed: Some(0),
            capabilities: Capabilities {
                json_schema: true,
                max_context_tokens: 128_000,
                external,
            },
        })
    }

    /// Sets how the schema is passed (default: [`ResponseFormatStyle::JsonSchema`] for
    /// `api.openai.com`, [`ResponseFormatStyle::Auto`] elsewhere).
    pub fn with_response_format(mut self, style: ResponseFormatStyle) -> Self {
        self.style = style;
        self
    }

    /// Sets the sampling seed sent with every request (default 0; `None` sends none).
    pub fn with_seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    /// Overrides the context window advertised in [`Capabilities`].
    pub fn with_max_context_tokens(mut self, tokens: u32) -> Self {
        self.capabilities.max_context_tokens = tokens;
        self
    }

    /// Overrides whether the server counts as an external third party.
    pub fn with_external(mut self, external: bool) -> Self {
        self.capabilities.external = external;
        self
    }

    fn effective_style(&self) -> ResponseFormatStyle {
        match self.style {
            ResponseFormatStyle::Auto if self.downgraded.load(Ordering::Relaxed) => {
                ResponseFormatStyle::JsonObject
            }
            other => other,
        }
    }

    /// The JSON body sent for `request`.
    pub fn request_body(&self, request: &AiRequest) -> Value {
        self.body_for(request, self.effective_style())
    }

    fn body_for(&self, request: &AiRequest, style: ResponseFormatStyle) -> Value {
        let prompt = render_prompt(request);
        let response_format = match style {
            ResponseFormatStyle::JsonObject => {
                json!({"type": "json_object", "schema": request.schema})
            }
            ResponseFormatStyle::JsonSchema | ResponseFormatStyle::Auto => json!({
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": request.schema,
                    "strict": true,
                },
            }),
        };
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": request.temperature,
            "max_tokens": request.max_output_tokens,
            "response_format": response_format,
            "stream": false,
        });
        if let (Some(seed), Some(map)) = (self.seed, body.as_object_mut()) {
            map.insert("seed".into(), json!(seed));
        }
        body
    }

    async fn send(
        &self,
        request: &AiRequest,
        style: ResponseFormatStyle,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), AiError> {
        let mut http = self
            .client
            .post(&self.endpoint)
            .timeout(request.deadline)
            .json(&self.body_for(request, style));
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key);
        }
        let response = http
            .send()
            .await
            .map_err(|e| transport_error(&e, request.deadline))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| transport_error(&e, request.deadline))?;
        Ok((status, headers, body))
    }
}

#[async_trait]
impl AiProvider for OpenAiCompatible {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn complete_json(&self, request: &AiRequest) -> Result<AiResponse, AiError> {
        let style = self.effective_style();
        let (mut status, mut headers, mut body) = self.send(request, style).await?;
        if self.style == ResponseFormatStyle::Auto
            && style != ResponseFormatStyle::JsonObject
            && (400..600).contains(&status)
            && status != 429
            && body.contains("response_format")
            && body.contains("json_object")
        {
            tracing::info!(
                endpoint = %self.endpoint,
                "server rejected json_schema response_format; using json_object with schema"
            );
            self.downgraded.store(true, Ordering::Relaxed);
            (status, headers, body) = self.send(request, ResponseFormatStyle::JsonObject).await?;
        }
        if !(200..300).contains(&status) {
            return Err(classify_status(status, &headers, &body));
        }
        parse_completion(&body, &request.schema)
    }
}

/// Parses a chat-completions answer and validates its content against `schema`.
pub fn parse_completion(body: &str, schema: &Value) -> Result<AiResponse, AiError> {
    let envelope: Value = serde_json::from_str(body).map_err(|e| {
        AiError::Unavailable(format!(
            "server sent a non-JSON body: {e}: {}",
            truncate(body, 200)
        ))
    })?;
    let choice = envelope
        .pointer("/choices/0")
        .ok_or_else(|| AiError::SchemaViolation("answer has no choices".into()))?;
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = choice.get("message").unwrap_or(&Value::Null);
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return Err(AiError::Refused(truncate(refusal, 300)));
    }
    match finish_reason {
        "length" => {
            return Err(AiError::Truncated(
                "the answer hit max_tokens (finish_reason length)".into(),
            ));
        }
        "content_filter" => {
            return Err(AiError::Refused(
                "the answer was withheld by the content filter".into(),
            ));
        }
        _ => {}
    }
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| AiError::SchemaViolation("answer has no content".into()))?;
    let value = parse_json_content(content)?;
    schema::validate(schema, &value).map_err(AiError::SchemaViolation)?;
    let usage = |name: &str| {
        envelope
            .pointer(&format!("/usage/{name}"))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Ok(AiResponse {
        value,
        model: envelope
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
    })
}

/// Parses the model's text as one JSON value (tolerating a Markdown code fence).
pub(crate) fn parse_json_content(content: &str) -> Result<Value, AiError> {
    let trimmed = content.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced.trim()).map_err(|e| {
        AiError::SchemaViolation(format!(
            "answer is not valid JSON ({e}): {}",
            truncate(trimmed, 200)
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "required": ["tier"], "additionalProperties": false,
               "properties": {"tier": {"type": "string", "enum": ["small", "large"]}}})
    }

    fn completion(content: Value, finish: &str) -> String {
        json!({"model": "m", "choices": [{"index": 0, "finish_reason": finish,
               "message": {"role": "assistant", "content": content}}],
               "usage": {"prompt_tokens": 12, "completion_tokens": 3}})
        .to_string()
    }

    #[test]
    fn parses_a_valid_answer() {
        let r = parse_completion(
            &completion(json!("{\"tier\":\"large\"}"), "stop"),
            &schema(),
        )
        .unwrap();
        assert_eq!(r.value, json!({"tier": "large"}));
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(12), Some(3)));
        let fenced = completion(json!("```json\n{\"tier\":\"small\"}\n```"), "stop");
        assert_eq!(
            parse_completion(&fenced, &schema()).unwrap().value,
            json!({"tier": "small"})
        );
    }

    #[test]
    fn failure_modes_are_typed() {
        let s = schema();
        assert!(matches!(
            parse_completion(&completion(json!("{\"tier\":\"lar"), "length"), &s),
            Err(AiError::Truncated(_))
        ));
        assert!(matches!(
            parse_completion(&completion(json!(""), "content_filter"), &s),
            Err(AiError::Refused(_))
        ));
        assert!(
            matches!(parse_completion(&completion(json!("{\"tier\":"), "stop"), &s), Err(AiError::SchemaViolation(m)) if m.contains("not valid JSON"))
        );
        assert!(
            matches!(parse_completion(&completion(json!("{\"tier\":\"huge\"}"), "stop"), &s), Err(AiError::SchemaViolation(m)) if m.contains("allow-list"))
        );
        let refusal = json!({"choices": [{"finish_reason": "stop", "message": {"content": null, "refusal": "I can't help"}}]}).to_string();
        assert!(
            matches!(parse_completion(&refusal, &s), Err(AiError::Refused(m)) if m == "I can't help")
        );
        assert!(matches!(
            parse_completion("<html>", &s),
            Err(AiError::Unavailable(_))
        ));
    }

    #[test]
    fn body_carries_strict_schema_and_debug_hides_the_key() {
        let p = OpenAiCompatible::new(
            "https://api.openai.com/v1/",
            "gpt-4o-mini",
            Some("sk-secret".into()),
        )
        .unwrap();
        assert!(p.capabilities().external);
        assert!(!format!("{p:?}").contains("sk-secret"));
        let req = previewd_core::ai::AiRequest {
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
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema());
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["max_tokens"], 32);
        assert_eq!(p.style, ResponseFormatStyle::JsonSchema);
        let local = OpenAiCompatible::new("http://127.0.0.1:8089/v1", "m", None).unwrap();
        assert_eq!(local.style, ResponseFormatStyle::Auto);
        let local = local.with_response_format(ResponseFormatStyle::JsonObject);
        assert!(!local.capabilities().external);
        assert_eq!(
            local.request_body(&req)["response_format"],
            json!({"type": "json_object", "schema": schema()})
        );
    }
}
