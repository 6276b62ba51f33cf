//! The internal endpoint through which seed Jobs reach the model, so that no model
//! credential ever enters a preview namespace (where the pull request's code runs).
//!
//! `POST /v1/data-proposals` with `Authorization: Bearer <token>` and a
//! [`TableRequest`] as JSON answers `{"answer": {...}}` (the model's proposal, which the
//! seed Job validates against the schema) or `{"error": "..."}`:
//!
//! - the token is the one the seed stage minted for the Job's namespace
//!   ([`verify_proposal_token`]); anything else is 401;
//! - a request body over [`MAX_REQUEST_BYTES`], or a question with more than
//!   [`MAX_COLUMNS`] columns or names longer than 63 characters, is refused (413/422);
//! - each namespace has its own budget ([`QUESTIONS_PER_MINUTE`], 429 beyond it) on top of
//!   the provider stack's own rate limit;
//! - the model is asked through the operator's provider stack (secret scrubbing, cache,
//!   rate limit, circuit breaker, retries, deadline), exactly as every other AI feature.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use previewd_data::proposal::{ProposalSource, TableRequest};
use previewd_kube::strategy::seed::verify_proposal_token;
use tokio_util::sync::CancellationToken;

/// Path of the endpoint.
pub const PATH: &str = "/v1/data-proposals";
/// Largest request body.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Most columns one question may list.
pub const MAX_COLUMNS: usize = 64;
/// Questions a namespace may ask per minute (a schema of 60 tables fits in one minute).
pub const QUESTIONS_PER_MINUTE: u32 = 60;

/// State of the endpoint.
#[derive(Clone)]
pub struct ProposalState {
    /// Key of the per-namespace tokens.
    pub key: Arc<Vec<u8>>,
    /// Who answers (the model behind the operator's provider stack).
    pub source: Arc<dyn ProposalSource>,
    /// Per-namespace budget.
    pub budget: Arc<DefaultKeyedRateLimiter<String>>,
}

impl ProposalState {
    /// State with the default per-namespace budget.
    pub fn new(key: Arc<Vec<u8>>, source: Arc<dyn ProposalSource>) -> Self {
        let per_minute = NonZeroU32::new(QUESTIONS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        ProposalState {
            key,
            source,
            budget: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": message.into()}))).into_response()
}

/// The endpoint's router.
pub fn router(state: ProposalState) -> Router {
    Router::new()
        .route(PATH, post(propose))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

fn well_formed(request: &TableRequest) -> Result<(), String> {
    let columns = request.vocabularies.len() + request.lookup_columns.len();
    if columns == 0 || columns > MAX_COLUMNS {
        return Err(format!(
            "{columns} columns; 1 to {MAX_COLUMNS} are accepted"
        ));
    }
    let names = std::iter::once(request.table.as_str()).chain(
        request
            .vocabularies
            .iter()
            .chain(&request.lookup_columns)
            .map(|c| c.name.as_str()),
    );
    for name in names {
        // `schema.table` is two identifiers of at most 63 bytes each.
        if name.is_empty() || name.len() > 127 || name.chars().any(char::is_control) {
            return Err(format!(
                "name {:?} is not an identifier",
                name.chars().take(40).collect::<String>()
            ));
        }
    }
    for c in request.vocabularies.iter().chain(&request.lookup_columns) {
        if c.type_name.len() > 128 || c.hint.len() > 512 {
            return Err(format!("column {} has an oversized type or hint", c.name));
        }
    }
    Ok(())
}

async fn propose(
    State(state): State<ProposalState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(namespace) = token.and_then(|t| verify_proposal_token(&state.key, t.trim())) else {
        return error(StatusCode::UNAUTHORIZED, "a seed Job's token is required");
    };
    if state.budget.check_key(&namespace).is_err() {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "namespace {namespace} asked more than {QUESTIONS_PER_MINUTE} questions a minute"
            ),
        );
    }
    let request: TableRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not a table question: {e}"),
            );
        }
    };
    if let Err(e) = well_formed(&request) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    match state.source.propose(&request).await {
        Ok(answer) => {
            tracing::info!(%namespace, table = %request.table, "data proposal answered");
            (StatusCode::OK, Json(serde_json::json!({"answer": answer}))).into_response()
        }
        Err(e) => {
            tracing::info!(%namespace, table = %request.table, error = %e.0, "data proposal failed");
            error(StatusCode::BAD_GATEWAY, e.0)
        }
    }
}

/// Serves the endpoint on a bound listener until `shutdown` is cancelled.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: ProposalState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "data-proposal endpoint listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Serves the endpoint on `addr` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: ProposalState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_on(tokio::net::TcpListener::bind(addr).await?, state, shutdown).await
}

/// The seed Job's side: a [`ProposalSource`] that asks the operator's endpoint. The answer
/// is read up to [`previewd_data::proposal::MAX_ANSWER_BYTES`] plus room for the envelope;
/// a longer body is refused without being read further.
pub struct OperatorProposals {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl OperatorProposals {
    /// Asks `base_url` (the endpoint's base) with `token`.
    pub fn new(base_url: &str, token: String) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(180))
            .build()?;
        Ok(OperatorProposals {
            client,
            url: format!("{}{PATH}", base_url.trim_end_matches('/')),
            token,
        })
    }
}

#[async_trait::async_trait]
impl ProposalSource for OperatorProposals {
    fn name(&self) -> &str {
        "operator"
    }

    async fn propose(
        &self,
        request: &TableRequest,
    ) -> Result<serde_json::Value, previewd_data::proposal::ProposalError> {
        use previewd_data::proposal::{MAX_ANSWER_BYTES, ProposalError};
        let fail = |m: String| ProposalError(m);
        let mut response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(request)
            .send()
            .await
            .map_err(|e| fail(format!("the operator's endpoint: {e}")))?;
        let status = response.status();
        let limit = MAX_ANSWER_BYTES + 1024;
        if response
            .content_length()
            .is_some_and(|n| n as usize > limit)
        {
            return Err(fail(format!("answer larger than {limit} bytes refused")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(format!("the operator's endpoint: {e}")))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Err(fail(format!("answer larger than {limit} bytes refused")));
            }
        }
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("the operator answered {status} with no JSON: {e}")))?;
        if !status.is_success() {
            let message = value["error"].as_str().unwrap_or("no reason given");
            return Err(fail(format!("{status}: {message}")));
        }
        value
            .get("answer")
            .cloned()
            .ok_or_else(|| fail("the operator's answer has no `answer`".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use previewd_data::proposal::{ColumnHint, ProposalError};
    use previewd_kube::strategy::seed::proposal_token;
    use std::sync::Mutex;

    /// Answers by table name; records what it was asked.
    struct Answers {
        asked: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl ProposalSource for Answers {
        fn name(&self) -> &str {
            "test"
        }
        async fn propose(&self, r: &TableRequest) -> Result<serde_json::Value, ProposalError> {
            self.asked.lock().unwrap().push(r.table.clone());
            match r.table.as_str() {
                "public.huge" => {
                    Ok(serde_json::json!({"values": {"name": ["x".repeat(10 * 1024 * 1024)]}}))
                }
                "public.down" => Err(ProposalError(
                    "unavailable (provider unavailable: 503)".into(),
                )),
                _ => Ok(
                    serde_json::json!({"values": {"name": ["Ada", "Grace", "Edsger"]}, "insert": ""}),
                ),
            }
        }
    }

    fn question(table: &str) -> TableRequest {
        TableRequest {
            table: table.into(),
            vocabularies: vec![ColumnHint {
                name: "name".into(),
                type_name: "text".into(),
                hint: "full_name".into(),
            }],
            lookup_columns: Vec::new(),
        }
    }

    async fn start(key: &[u8]) -> (String, Arc<Answers>, CancellationToken) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let source = Arc::new(Answers {
            asked: Mutex::new(Vec::new()),
        });
        let state = ProposalState::new(Arc::new(key.to_vec()), source.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_on(listener, state, shutdown.clone()));
        (url, source, shutdown)
    }

    #[tokio::test]
    async fn a_seed_job_with_its_token_gets_the_answer() {
        let key = b"k";
        let (url, source, stop) = start(key).await;
        let client = OperatorProposals::new(&url, proposal_token(key, "preview-shop-7")).unwrap();
        let answer = client.propose(&question("public.users")).await.unwrap();
        assert_eq!(answer["values"]["name"][0], "Ada");
        assert_eq!(
            *source.asked.lock().unwrap(),
            vec!["public.users".to_string()]
        );
        // A model failure is reported with its reason, not as an answer.
        let err = client.propose(&question("public.down")).await.unwrap_err();
        assert!(
            err.0.contains("502") && err.0.contains("unavailable"),
            "{}",
            err.0
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn without_a_genuine_token_nothing_reaches_the_model() {
        let (url, source, stop) = start(b"k").await;
        for token in [
            proposal_token(b"another key", "preview-shop-7"),
            "v1.preview-shop-7.00".to_string(),
            String::new(),
        ] {
            let client = OperatorProposals::new(&url, token).unwrap();
            let err = client.propose(&question("public.users")).await.unwrap_err();
            assert!(err.0.starts_with("401"), "{}", err.0);
        }
        let plain = reqwest::Client::new()
            .post(format!("{url}{PATH}"))
            .json(&question("public.users"))
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 401);
        assert!(source.asked.lock().unwrap().is_empty());
        stop.cancel();
    }

    #[tokio::test]
    async fn oversized_or_malformed_questions_are_refused() {
        let key = b"k";
        let (url, source, stop) = start(key).await;
        let token = proposal_token(key, "preview-shop-7");
        let http = reqwest::Client::new();
        let big = serde_json::json!({"table": "public.t", "vocabularies":
            [{"name": "c", "type": "text", "hint": "x".repeat(MAX_REQUEST_BYTES)}]});
        let r = http
            .post(format!("{url}{PATH}"))
            .bearer_auth(&token)
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        let mut many = question("public.t");
        many.vocabularies = (0..=MAX_COLUMNS)
            .map(|i| ColumnHint {
                name: format!("c{i}"),
                type_name: "text".into(),
                hint: String::new(),
            })
            .collect();
        let client = OperatorProposals::new(&url, token.clone()).unwrap();
        let err = client.propose(&many).await.unwrap_err();
        assert!(
            err.0.starts_with("422") && err.0.contains("65 columns"),
            "{}",
            err.0
        );
        let r = http
            .post(format!("{url}{PATH}"))
            .bearer_auth(&token)
            .body("DROP TABLE users")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        assert!(source.asked.lock().unwrap().is_empty());
        stop.cancel();
    }

    #[tokio::test]
    async fn each_namespace_has_its_own_budget() {
        let key = b"k";
        let (url, _source, stop) = start(key).await;
        let busy = OperatorProposals::new(&url, proposal_token(key, "preview-busy-1")).unwrap();
        let mut refused = None;
        for i in 0..=QUESTIONS_PER_MINUTE {
            if let Err(e) = busy.propose(&question("public.users")).await {
                refused = Some((i, e.0));
                break;
            }
        }
        let (at, message) = refused.expect("the budget ends");
        assert_eq!(at, QUESTIONS_PER_MINUTE);
        assert!(message.starts_with("429"), "{message}");
        let other = OperatorProposals::new(&url, proposal_token(key, "preview-calm-2")).unwrap();
        assert!(other.propose(&question("public.users")).await.is_ok());
        stop.cancel();
    }

    #[tokio::test]
    async fn a_huge_answer_is_refused_by_the_seed_job() {
        let key = b"k";
        let (url, _source, stop) = start(key).await;
        let client = OperatorProposals::new(&url, proposal_token(key, "preview-shop-7")).unwrap();
        let err = client.propose(&question("public.huge")).await.unwrap_err();
        assert!(err.0.contains("answer larger than"), "{}", err.0);
        stop.cancel();
    }
}
