//! Log output of both binaries: `RUST_LOG`-style filtering (default `info`), human-readable
//! lines or JSON lines. Fields of the enclosing spans (request id, job id, queue, kind,
//! attempt, worker) are carried into every line.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
