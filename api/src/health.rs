//! `/healthz` (the process answers) and `/readyz` (the fleet can run a job end to end).

use std::{collections::BTreeMap, time::Duration};

use poem::{Request, web::Data};
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use redis::AsyncCommands;
use taskfleet_jobs::{ExecutorRun, JobOptions, JobSpec, JobState};
use taskfleet_storage::{NewJob, Role, Scope};

use crate::state::AppState;

#[derive(Debug, Object)]
pub struct Health {
    /// `ok`, or `unhealthy`.
    pub status: String,
    /// What is wrong, when unhealthy.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The process is up and can take submissions.
    #[oai(status = 200)]
    Healthy(Json<Health>),
    /// The process is up but broken (its submission writer stopped): restart it.
    #[oai(status = 503)]
    Unhealthy(Json<Health>),
}

#[derive(Debug, Object)]
pub struct Readiness {
    /// `ready`, or `not_ready`.
    pub status: String,
    /// Each check by name (`postgres`, `redis`, `queue_round_trip`): `ok`, or `failed`
    /// (what failed, for an operator key).
    pub checks: BTreeMap<String, String>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Postgres, Redis and a worker all answered.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A check failed; `checks` says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// How long a `/readyz` round trip's outcome is reused.
const ROUND_TRIP_REUSE: Duration = Duration::from_secs(2);

pub struct HealthApi;

#[OpenApi(tag = "crate::app::Tag::Ops")]
impl HealthApi {
    /// Liveness: the process is up and can take submissions
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self, state: Data<&AppState>) -> HealthResponse {
        if state.submissions.is_alive() {
            HealthResponse::Healthy(Json(Health {
                status: "ok".into(),
                reason: None,
            }))
        } else {
            HealthResponse::Unhealthy(Json(Health {
                status: "unhealthy".into(),
                reason: Some("the submission writer stopped; every submission would fail".into()),
            }))
        }
    }

    /// Readiness: Postgres with migrations applied, Redis, and a `noop` job through a worker
    ///
    /// Anyone may ask; a failed check reads `failed`, and only a caller with an operator key
    /// learns what failed. The probe job runs once at a time and its outcome is reused for
    /// two seconds, however often the endpoint is called.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&AppState>, req: &Request) -> ReadyResponse {
        let mut checks = BTreeMap::new();
        let postgres = match state.db.migrations_applied().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("migrations are not all applied".to_owned()),
            Err(err) => Err(format!("unreachable: {err}")),
        };
        let redis = {
            let mut conn = state.redis.clone();
            match tokio::time::timeout(Duration::from_secs(2), conn.ping::<String>()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(format!("unreachable: {err}")),
                Err(_) => Err("no answer within 2 s".to_owned()),
            }
        };
        let round_trip = if postgres.is_ok() && redis.is_ok() {
            // One probe job at a time, and its outcome reused briefly: frequent or concurrent
            // probes, anyone's, must not flood the fleet with jobs.
            let mut last = state.last_round_trip.lock().await;
            match &*last {
                Some((at, outcome)) if at.elapsed() < ROUND_TRIP_REUSE => outcome.clone(),
                _ => {
                    let outcome = round_trip(&state).await;
                    *last = Some((tokio::time::Instant::now(), outcome.clone()));
                    outcome
                }
            }
        } else {
            Err("skipped: Postgres or Redis is not ready".to_owned())
        };
        // What failed is for operators; anyone else learns which check, not its error.
        let detailed = match crate::auth::bearer_key(req) {
            Some(key) => matches!(
                crate::auth::authenticate(&state, &key).await,
                Ok(tenant) if tenant.role == Role::Operator
            ),
            None => false,
        };
        let mut ready = true;
        for (name, outcome) in [
            ("postgres", postgres),
            ("redis", redis),
            ("queue_round_trip", round_trip),
        ] {
            ready &= outcome.is_ok();
            let shown = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(detail) if detailed => detail,
                Err(_) => "failed".to_owned(),
            };
            checks.insert(name.to_owned(), shown);
        }
        let body = |status: &str| {
            Json(Readiness {
                status: status.into(),
                checks,
            })
        };
        if ready {
            ReadyResponse::Ready(body("ready"))
        } else {
            ReadyResponse::NotReady(body("not_ready"))
        }
    }
}

/// Submits a `noop` job as the system tenant and waits for a worker to finish it.
async fn round_trip(state: &AppState) -> Result<(), String> {
    let probe = NewJob::new(
        JobSpec::ExecutorRun(ExecutorRun {
            tool: "noop".into(),
            input: None,
            files: None,
            args: None,
            options: JobOptions::default(),
        }),
        None,
    );
    let tenant = state.system_tenant.id;
    state
        .ledger
        .insert(tenant, std::slice::from_ref(&probe), "readyz")
        .await
        .map_err(|err| format!("could not enqueue the probe job: {err}"))?;
    state.wake_dispatcher();
    let deadline = tokio::time::Instant::now() + state.ready_timeout;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let job = state
            .ledger
            .get(Scope::Tenant(tenant), probe.id)
            .await
            .map_err(|err| err.to_string())?;
        if job.is_some_and(|job| job.state == JobState::Succeeded.as_str()) {
            return Ok(());
        }
    }
    Err(format!(
        "no worker finished a noop job within {} ms (are workers running for the executor queue?)",
        state.ready_timeout.as_millis()
    ))
}
