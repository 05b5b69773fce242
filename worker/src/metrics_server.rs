//! Serves this worker's Prometheus metrics at `/metrics` on `--metrics-addr`.

use anyhow::Context;
use poem::{
    IntoResponse, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
};
use taskfleet_telemetry::metrics;
use tokio_util::sync::CancellationToken;

#[handler]
fn render() -> impl IntoResponse {
    metrics::render().with_content_type(metrics::CONTENT_TYPE)
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
    pub async fn serve(self, shutdown: CancellationToken) {
        let app = Route::new().at("/metrics", get(render));
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
            .await;
        if let Err(err) = served {
            tracing::warn!(%err, "the metrics server stopped");
        }
    }
}
