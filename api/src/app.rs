//! Assembles the routes, middleware and state, and serves them.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Route, Server, get, handler,
    listener::TcpListener, web::Data,
};
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::{OpenApiService, Tags};
use taskfleet_connectors::Providers;
use taskfleet_storage::{
    Budgets, Connectors, Conversations, Db, EventLog, Ledger, LlmProviders, Queues, Schedules,
    Tasks, Tenants, Workers, redis as tf_redis, redis::Keys, wait_for,
};

use crate::{
    chat::ChatApi,
    cli::ApiArgs,
    connectors::ConnectorsApi,
    conversations::ConversationsApi,
    cors::cors,
    dashboard,
    error::{explain_job_payload, json_error},
    events::{EventHub, EventsApi},
    executor_tools::ExecutorToolsApi,
    fleet::FleetApi,
    health::HealthApi,
    jobs::JobsApi,
    llm::LlmApi,
    mcp,
    oauth_callback::OAuthCallbackApi,
    observe::{RouteTemplates, observe},
    rate_limit::rate_limit,
    schedules::SchedulesApi,
    state::AppState,
    task_graph::TaskGraphApi,
    tasks::TasksApi,
    test_all::TestAllApi,
    usage::UsageApi,
};

use taskfleet_storage::{Scope, tenants::SYSTEM_TENANT};
use taskfleet_telemetry::metrics;

#[derive(Tags)]
pub enum Tag {
    /// Submit and inspect jobs.
    Jobs,
    /// Live event streams (Server-Sent Events).
    Events,
    /// Cron and one-shot schedules that create jobs.
    Schedules,
    /// Connected SaaS accounts: OAuth or tokens, sync, tests.
    Connectors,
    /// Work items the connectors brought in.
    Tasks,
    /// Chat with the task assistant, and the conversations it keeps.
    Chat,
    /// The tenant's LLM provider, its test, token usage and budgets.
    #[oai(rename = "LLM")]
    Llm,
    /// Queues, workers, and who the key is.
    Fleet,
    /// Health and readiness.
    Ops,
}

/// Connects to Postgres and Redis (waiting for them), applies migrations, and returns the state.
pub async fn connect(args: &ApiArgs) -> anyhow::Result<AppState> {
    metrics::register_api();
    // Checked first: an API that cannot seal credentials must not accept connectors.
    let sealer = args.encryption.sealer()?;
    args.llm.validate().map_err(anyhow::Error::msg)?;
    let llm_http =
        crate::llm::LlmTestClients::new(args.llm.call_timeout(), args.providers.allow_local_sites)?;
    let db = Db::connect_lazy_limited(&args.database_url, 32, args.postgres)
        .context("DATABASE_URL is not valid")?;
    db.migrate_when_reachable()
        .await
        .context("the database cannot be migrated by this build")?;
    let tenants = Tenants::with_key_cache(
        db.pool.clone(),
        Duration::from_secs(args.api_key_cache_secs),
    );
    let system_tenant = wait_for("Postgres", || tenants.ensure(SYSTEM_TENANT)).await;
    let redis = wait_for("Redis", || tf_redis::connect(&args.redis_url)).await;
    let keys = Keys::new(&args.redis_prefix);
    let events = EventLog::new(db.pool.clone());
    let hub = EventHub::start(args.redis_url.clone(), keys.clone(), events.clone());
    let ledger = Ledger::new(db.pool.clone());
    let waker = crate::state::DispatcherWaker::start(redis.clone(), keys.clone());
    Ok(AppState {
        submissions: crate::state::submissions(
            ledger.clone(),
            redis.clone(),
            keys.clone(),
            waker.clone(),
        ),
        ledger,
        schedules: Schedules::new(db.pool.clone()),
        connectors: Connectors::new(db.pool.clone()),
        tasks: Tasks::new(db.pool.clone()),
        budgets: Budgets::new(db.pool.clone(), args.llm.llm_monthly_tokens),
        llm_providers: LlmProviders::new(db.pool.clone()),
        conversations: Conversations::new(db.pool.clone()),
        llm: args.llm.clone(),
        llm_http,
        allow_local_llm: args.providers.allow_local_sites,
        providers: Arc::new(Providers::new(&args.providers)),
        sealer,
        public_url: args.public_url(),
        queues: Queues::new(db.pool.clone()),
        workers: Workers::new(db.pool.clone()),
        events,
        hub,
        tenants,
        db,
        redis,
        keys,
        system_tenant,
        ready_timeout: Duration::from_millis(args.ready_timeout_ms),
        last_round_trip: Default::default(),
        ledger_gauges_at: Default::default(),
        executor: args.executor_rules()?,
        cors_origins: Arc::new(crate::cors::CorsOrigins::parse(
            args.cors_origins.as_deref(),
        )?),
        rate_limits: {
            let limits = crate::rate_limit::RateLimits::new(&args.rate_limits);
            limits.clone().forget_quiet_keys();
            limits
        },
        waker,
        streams: crate::events::OpenStreams::new(
            args.sse_streams_per_key as usize,
            args.sse_replay_max,
        ),
    })
}

/// The whole HTTP application. `server_url` is where the Swagger UI sends requests.
pub fn build_app(
    state: AppState,
    server_url: String,
    max_body_bytes: usize,
) -> impl poem::Endpoint {
    let api = OpenApiService::new(
        (
            JobsApi,
            ExecutorToolsApi,
            EventsApi,
            SchedulesApi,
            ConnectorsApi,
            OAuthCallbackApi,
            TestAllApi,
            TasksApi,
            TaskGraphApi,
            ChatApi,
            ConversationsApi,
            LlmApi,
            UsageApi,
            FleetApi,
            HealthApi,
        ),
        "taskfleet",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Distributed task queue: typed jobs, a Postgres ledger, Redis queues.")
    .server(server_url);
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let routes = Arc::new(documented_routes(&api.spec()));
    let limits = state.rate_limits.clone();
    let origins = state.cors_origins.clone();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at("/metrics", get(scrape))
        .at("/v1/mcp", mcp::endpoint(max_body_bytes))
        .nest("/dashboard", dashboard::routes())
        .around(move |endpoint, req| limit_body(endpoint, req, max_body_bytes))
        .data(state)
        .around(move |endpoint, req| rate_limit(endpoint, req, limits.clone()))
        .around(move |endpoint, req| {
            let routes = routes.clone();
            async move { observe(endpoint, req, &routes).await }
        })
        .catch_all_error(json_error)
        .around(move |endpoint, req| cors(endpoint, req, origins.clone()))
}

/// The paths of the OpenAPI document, e.g. `/v1/jobs/{id}`.
fn documented_routes(spec: &str) -> RouteTemplates {
    let spec: serde_json::Value = serde_json::from_str(spec).expect("the spec is JSON");
    let paths = spec["paths"].as_object().expect("the spec has paths");
    RouteTemplates::new(paths.keys().cloned())
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

/// How long the ledger-read gauges are reused: scrapes (or anyone who can reach the port)
/// cost the ledger at most one round of queries this often.
const LEDGER_GAUGES_REUSE: Duration = Duration::from_secs(5);

/// Prometheus scrape: refreshes the gauges read from the ledger, then renders everything.
/// When the ledger cannot be read its series are left out rather than reported stale.
#[handler]
async fn scrape(state: Data<&AppState>) -> impl IntoResponse {
    let mut refreshed = state.ledger_gauges_at.lock().await;
    if refreshed.is_none_or(|at| at.elapsed() >= LEDGER_GAUGES_REUSE) {
        *refreshed = refresh_ledger_gauges(&state)
            .await
            .then(tokio::time::Instant::now);
    }
    drop(refreshed);
    metrics::render().with_content_type(metrics::CONTENT_TYPE)
}

/// Whether the ledger could be read.
async fn refresh_ledger_gauges(state: &AppState) -> bool {
    let (stats, online) =
        tokio::join!(state.queues.stats(Scope::All), state.workers.online_count());
    match (stats, online) {
        (Ok(stats), Ok(online)) => {
            for stats in stats {
                let queue = stats.queue.as_str();
                for (job_state, n) in stats.depth {
                    metrics::QUEUE_JOBS
                        .with_label_values(&[queue, job_state.as_str()])
                        .set(n);
                }
                metrics::QUEUE_PAUSED
                    .with_label_values(&[queue])
                    .set(stats.paused.into());
            }
            metrics::WORKERS_ONLINE
                .with_label_values::<&str>(&[])
                .set(online);
            true
        }
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(%err, "metrics: could not read the ledger");
            metrics::QUEUE_JOBS.reset();
            metrics::QUEUE_PAUSED.reset();
            metrics::WORKERS_ONLINE.reset();
            false
        }
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
