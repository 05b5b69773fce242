//! Assembles the routes, middleware and state, and serves them.

use std::time::Duration;

use anyhow::Context;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Route, Server, listener::TcpListener};
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::{OpenApiService, Tags};
use taskfleet_storage::{
    Db, EventLog, Ledger, Schedules, Tenants, redis as tf_redis, redis::Keys, wait_for,
};

use crate::{
    cli::ApiArgs,
    error::{explain_job_payload, json_error},
    events::{EventHub, EventsApi},
    health::HealthApi,
    jobs::JobsApi,
    schedules::SchedulesApi,
    state::AppState,
};

use taskfleet_storage::tenants::SYSTEM_TENANT;

#[derive(Tags)]
pub enum Tag {
    /// Submit and inspect jobs.
    Jobs,
    /// Live event streams (Server-Sent Events).
    Events,
    /// Cron and one-shot schedules that create jobs.
    Schedules,
    /// Health and readiness.
    Ops,
}

/// Connects to Postgres and Redis (waiting for them), applies migrations, and returns the state.
pub async fn connect(args: &ApiArgs) -> anyhow::Result<AppState> {
    let db = Db::connect_lazy(&args.database_url, 32).context("DATABASE_URL is not valid")?;
    wait_for("Postgres (migrations)", || db.migrate()).await;
    let tenants = Tenants::new(db.pool.clone());
    let system_tenant = wait_for("Postgres", || tenants.ensure(SYSTEM_TENANT)).await;
    let redis = wait_for("Redis", || tf_redis::connect(&args.redis_url)).await;
    let keys = Keys::new(&args.redis_prefix);
    let events = EventLog::new(db.pool.clone());
    let hub = EventHub::start(args.redis_url.clone(), keys.clone(), events.clone());
    Ok(AppState {
        ledger: Ledger::new(db.pool.clone()),
        schedules: Schedules::new(db.pool.clone()),
        events,
        hub,
        tenants,
        db,
        redis,
        keys,
        system_tenant,
        ready_timeout: Duration::from_millis(args.ready_timeout_ms),
        last_round_trip: Default::default(),
        fault_injection: args.fault_injection,
    })
}

/// The whole HTTP application. `server_url` is where the Swagger UI sends requests.
pub fn build_app(
    state: AppState,
    server_url: String,
    max_body_bytes: usize,
) -> impl poem::Endpoint {
    let api = OpenApiService::new(
        (JobsApi, EventsApi, SchedulesApi, HealthApi),
        "taskfleet",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Distributed task queue: typed jobs, a Postgres ledger, Redis queues.")
    .server(server_url);
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .around(move |endpoint, req| limit_body(endpoint, req, max_body_bytes))
        .data(state)
        .catch_all_error(json_error)
}

/// Reads the body up to `limit` bytes and answers 413 past it, whether or not the client sent
/// a `Content-Length` (poem's `SizeLimit` refuses requests without one). Keeps the bytes to
/// explain a job payload that does not parse.
async fn limit_body<E: Endpoint>(
    endpoint: std::sync::Arc<E>,
    mut req: Request,
    limit: usize,
) -> poem::Result<poem::Response> {
    let body = req.take_body().into_bytes_limit(limit).await?;
    req.set_body(body.clone());
    let path = req.uri().path().to_owned();
    match endpoint.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(err) if err.is::<ParseRequestPayloadError>() => {
            Err(explain_job_payload(&path, &body).map_or(err, Into::into))
        }
        Err(err) => Err(err),
    }
}

pub async fn serve(args: ApiArgs) -> anyhow::Result<()> {
    let state = connect(&args).await?;
    let listener = TcpListener::bind(args.addr.clone());
    let app = build_app(state, format!("http://{}", args.addr), args.max_body_bytes);
    tracing::info!(addr = %args.addr, "taskfleet-api listening");
    Server::new(listener)
        .run_with_graceful_shutdown(app, shutdown_signal(), Some(Duration::from_secs(10)))
        .await
        .context("the HTTP server failed")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
