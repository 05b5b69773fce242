//! Assembles the routes, middleware and state, and serves them.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use poem::{
    EndpointExt, IntoResponse, Route, Server,
    endpoint::make_sync,
    get, handler,
    listener::TcpListener,
    web::{Data, Html},
};
use poem_openapi::{OpenApi, OpenApiService, Tags};
use taskfleet_connectors::Providers;
use taskfleet_storage::{
    AuditLog, Budgets, Connectors, Conversations, Db, EventLog, Ledger, LlmProviders, Queues,
    Schedules, Tasks, Tenants, Workers, redis as tf_redis, redis::Keys, wait_for,
};

use crate::{
    audit::AuditApi,
    chat::ChatApi,
    cli::ApiArgs,
    connectors::ConnectorsApi,
    conversations::ConversationsApi,
    cors::cors,
    dashboard,
    error::json_error,
    events::{EventHub, EventsApi},
    executor_tools::ExecutorToolsApi,
    fleet::FleetApi,
    health::HealthApi,
    jobs::JobsApi,
    llm::LlmApi,
    mcp,
    oauth_callback::OAuthCallbackApi,
    observe::{RouteTemplates, observe},
    openapi_document,
    rate_limit::rate_limit,
    request_limits::{RequestLimits, limit_request},
    schedules::SchedulesApi,
    state::AppState,
    task_graph::TaskGraphApi,
    tasks::TasksApi,
    tenant_limits::TenantLimitsApi,
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
    /// Who changed what, for operators.
    Audit,
    /// Health and readiness.
    Ops,
}

/// Connects to Postgres and Redis (waiting for them), applies migrations, and returns the state.
pub async fn connect(args: &ApiArgs) -> anyhow::Result<AppState> {
    metrics::register_api();
    // Checked first: an API that cannot seal credentials must not accept connectors.
    let sealer = args.encryption.sealer()?;
    let redis_config = tf_redis::RedisConfig::with_tls_files(&args.redis_url, &args.redis_tls)
        .map_err(anyhow::Error::msg)?;
    args.llm.validate().map_err(anyhow::Error::msg)?;
    // Before waiting on Postgres: a provider whose keys cannot be had stops the start at once.
    let jwt = args.jwt.verifier().await?.map(Arc::new);
    let llm_http =
        crate::llm::LlmTestClients::new(args.llm.call_timeout(), args.providers.allow_local_sites)?;
    let db = Db::connect_lazy_limited(&args.database_url, args.pg_max_connections, args.postgres)
        .context("DATABASE_URL is not valid")?;
    db.migrate_when_reachable()
        .await
        .context("the database could not be migrated at start")?;
    let tenants = Tenants::with_key_cache(
        db.pool.clone(),
        Duration::from_secs(args.api_key_cache_secs),
    );
    let system_tenant = wait_for("Postgres", || tenants.ensure(SYSTEM_TENANT)).await;
    let redis = tf_redis::connect_when_reachable(&redis_config).await?;
    let keys = Keys::new(&args.redis_prefix);
    let events = EventLog::new(db.pool.clone());
    let hub = EventHub::start(redis_config, keys.clone(), events.clone());
    let ledger = Ledger::new(&db);
    let waker = crate::state::DispatcherWaker::start(redis.clone(), keys.clone());
    let tenant_rate_limits = taskfleet_storage::TenantRateLimits::new(db.pool.clone());
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
        audit: AuditLog::new(db.pool.clone()),
        jwt,
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
            limits.clone().follow_overrides(tenant_rate_limits.clone());
            limits
        },
        tenant_rate_limits,
        waker,
        streams: crate::events::OpenStreams::new(
            args.sse_streams_per_key as usize,
            args.sse_replay_max,
        ),
    })
}

/// The OpenAPI service: every documented route. `server_url` is where the Swagger UI sends
/// requests.
fn api_service(server_url: String) -> OpenApiService<impl OpenApi, ()> {
    OpenApiService::new(
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
            // poem-openapi takes tuples of up to 16 APIs; a nested one counts as one.
            (UsageApi, TenantLimitsApi),
            FleetApi,
            AuditApi,
            HealthApi,
        ),
        "taskfleet",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Distributed task queue: typed jobs, a Postgres ledger, Redis queues.")
    .server(server_url)
}

/// The OpenAPI document `/openapi.json` serves.
#[cfg(test)]
pub(crate) fn spec() -> String {
    openapi_document::finish(&api_service(String::new()).spec())
}

/// The whole HTTP application. `server_url` is where the Swagger UI sends requests.
pub fn build_app(
    state: AppState,
    server_url: String,
    request_limits: RequestLimits,
) -> impl poem::Endpoint {
    let api = api_service(server_url);
    let written = api.spec();
    let spec: Arc<str> = openapi_document::finish(&written).into();
    // The Swagger UI embeds the document: the finished one, as `/openapi.json` serves it.
    let docs = api.swagger_ui_html().replacen(&written, &spec, 1);
    let routes = Arc::new(documented_routes(&spec));
    let limits = state.rate_limits.clone();
    let origins = state.cors_origins.clone();
    Route::new()
        .nest("/", api)
        .at(
            "/openapi.json",
            make_sync(move |_| spec.to_string().with_content_type("application/json")),
        )
        .nest("/docs", make_sync(move |_| Html(docs.clone())))
        .at("/metrics", get(scrape))
        .at("/v1/mcp", mcp::endpoint(request_limits.max_body_bytes))
        .nest("/dashboard", dashboard::routes())
        .around(move |endpoint, req| limit_request(endpoint, req, request_limits))
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
    let app = build_app(
        state,
        format!("http://{}", args.addr),
        RequestLimits::from(&args.request_limits),
    );
    tracing::info!(addr = %args.addr, "taskfleet-api listening");
    Server::new(listener)
        .idle_timeout(args.request_limits.idle_timeout())
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
