//! The admin HTTP server: liveness, readiness and Prometheus metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use previewd_kube::Readiness;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// State of the admin server.
#[derive(Clone)]
pub struct AdminState {
    /// Controller readiness (caches synced).
    pub readiness: Readiness,
    /// Metrics registry.
    pub registry: Arc<Registry>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        return (StatusCode::OK, "ready".to_string());
    }
    let failing = state.readiness.failing_watches();
    let why = if failing.is_empty() {
        "caches not synced (or the controller stopped)".to_string()
    } else {
        format!("watches failing: {}", failing.join(", "))
    };
    (StatusCode::SERVICE_UNAVAILABLE, why)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("metrics encoding failed: {e}"),
        ),
    }
}

/// Serves the admin router until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves the admin router on a bound listener until `shutdown` is cancelled.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
