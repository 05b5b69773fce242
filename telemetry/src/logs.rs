//! Log output of both binaries: `RUST_LOG`-style filtering (default `DEFAULT_FILTER`),
//! human-readable lines or JSON lines. Fields of the enclosing spans (request id, job id,
//! queue, kind, attempt, worker) are carried into every line.

use tracing_subscriber::EnvFilter;

/// `info`, without Postgres's notices (such as every migration run's "relation
/// `_sqlx_migrations` already exists, skipping"), which sqlx logs at `info`, and without the
/// Redis cluster client's warnings, one for every reconnection to a dead node, hundreds a
/// second through a failover: the callers log what failed.
const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn,redis::cluster_handling=error";

pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .init()
    } else {
        logs.init()
    }
}
