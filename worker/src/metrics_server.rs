//! Serves this worker's Prometheus metrics at `/metrics` on `--metrics-addr`, and `/readyz`:
//! whether what the worker's jobs need beyond Postgres and Redis (the vector store) answers.

use anyhow::Context;
use poem::{
    EndpointExt, IntoResponse, Response, Route, Server, get, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Json},
};
use taskfleet_agents::Agents;
use taskfleet_telemetry::metrics;
use tokio_util::sync::CancellationToken;

#[handler]
fn render() -> impl IntoResponse {
    metrics::render().with_content_type(metrics::CONTENT_TYPE)
}

/// How long `/readyz` waits for the vector store: an object store that stops answering is
/// retried by its client for minutes, and a probe wants an answer now.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

#[handler]
async fn readyz(agents: Data<&Agents>) -> Response {
    let failed = match tokio::time::timeout(READY_WITHIN, agents.store.check()).await {
        Ok(Ok(())) => return Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("the vector store did not answer within {READY_WITHIN:?}"),
    };
    Json(serde_json::json!({"error": "not_ready", "message": failed}))
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .into_response()
}

/// A bound metrics listener, not yet serving.
pub struct MetricsServer<A> {
    acceptor: A,
}

pub async fn bind(addr: &str) -> anyhow::Result<MetricsServer<impl Acceptor + use<>>> {
    let acceptor = TcpListener::bind(addr.to_owned())
        .into_acceptor()
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(MetricsServer { acceptor })
}

impl<A: Acceptor + 'static> MetricsServer<A> {
    pub async fn serve(self, agents: Agents, shutdown: CancellationToken) {
        let app = Route::new()
            .at("/metrics", get(render))
            .at("/readyz", get(readyz))
            .data(agents);
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
            .await;
        if let Err(err) = served {
            tracing::warn!(%err, "the metrics server stopped");
        }
    }
}
