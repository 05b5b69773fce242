//! What every request handler shares.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use taskfleet_connectors::Providers;
use taskfleet_jobs::{Dispatch, ExecutorRules, Queue};
use taskfleet_storage::{
    AuditLog, Budgets, Connectors, Conversations, Db, EventLog, GroupCommit, InsertError, Inserted,
    JobRecord, Ledger, LlmProviders, LlmSettings, NewJob, Queues, Schedules, Sealer, Tasks, Tenant,
    Tenants, Workers,
    group_commit::LINGER_WHILE_CALLERS_WAIT,
    redis as tf_redis,
    redis::{Connection, Keys},
};
use taskfleet_telemetry::metrics;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::events::EventHub;

/// A `/readyz` probe: when it ran, and what failed, if anything.
pub type RoundTrip = (tokio::time::Instant, Result<(), String>);

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub ledger: Ledger,
    /// Inserts single jobs without an idempotency key, many requests' per statement; see
    /// [`submissions`].
    pub submissions: GroupCommit<(Uuid, NewJob), JobRecord>,
    pub schedules: Schedules,
    pub connectors: Connectors,
    pub tasks: Tasks,
    /// Each tenant's monthly LLM token budget and what it spent.
    pub budgets: Budgets,
    /// Tenants' own LLM providers (keys sealed with `sealer`).
    pub llm_providers: LlmProviders,
    pub conversations: Conversations,
    /// The fleet's LLM (for tenants without their own) and the call timeout.
    pub llm: LlmSettings,
    /// Make `POST /v1/llm/test`'s calls: the LLM call timeout, no redirects, tenants' URLs
    /// to public addresses only.
    pub llm_http: crate::llm::LlmTestClients,
    /// Admit tenant LLM providers on this machine or its private network
    /// (`TASKFLEET_ALLOW_LOCAL_SITES`: tests and local fakes only).
    pub allow_local_llm: bool,
    /// The SaaS clients, for OAuth: consent pages, code exchange, site discovery.
    pub providers: Arc<Providers>,
    /// Seals credentials and PKCE verifiers.
    pub sealer: Sealer,
    /// Where people reach this API: OAuth redirect URIs start with it.
    pub public_url: String,
    pub queues: Queues,
    pub workers: Workers,
    pub events: EventLog,
    /// Fans live events out to this process's SSE clients.
    pub hub: Arc<EventHub>,
    pub tenants: Tenants,
    /// Who changed what: keys, queue pauses, schedules, connectors, budgets, retries.
    pub audit: AuditLog,
    /// Checks JWT bearer tokens from the identity provider; none when only API keys work.
    pub jwt: Option<Arc<crate::jwt::Verifier>>,
    pub redis: Connection,
    pub keys: Keys,
    /// The tenant that owns `/readyz` probe jobs.
    pub system_tenant: Tenant,
    pub ready_timeout: Duration,
    /// When the latest `/readyz` queue round trip ran, and how it went.
    pub last_round_trip: Arc<tokio::sync::Mutex<Option<RoundTrip>>>,
    /// When `/metrics` last read its gauges from the ledger.
    pub ledger_gauges_at: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
    /// The commands `executor.run` may name, and whether the `fault` tool is admitted.
    pub executor: ExecutorRules,
    /// How fast each key may call, per class of route.
    pub rate_limits: Arc<crate::rate_limit::RateLimits>,
    /// Tenants' own rate limits as stored; `rate_limits` holds them to it.
    pub tenant_rate_limits: taskfleet_storage::TenantRateLimits,
    /// Front-ends that may call from a browser on another origin.
    pub cors_origins: Arc<crate::cors::CorsOrigins>,
    pub waker: DispatcherWaker,
    /// The SSE streams open, per tenant, and their limits.
    pub streams: Arc<crate::events::OpenStreams>,
}

impl AppState {
    /// Wakes the dispatcher without making the caller wait on Redis.
    pub fn wake_dispatcher(&self) {
        self.waker.wake();
    }
}

/// Wakes the dispatcher (a Redis `PUBLISH`) from one task of its own: no caller waits on
/// Redis, and however many ask while a wake-up is on its way (Redis slow, or hung), one more
/// follows it, instead of a task per submission piling up behind a stalled Redis.
#[derive(Clone)]
pub struct DispatcherWaker {
    asked: mpsc::Sender<()>,
}

impl DispatcherWaker {
    /// Publishes on `keys`' wake channel; the task ends with the last handle.
    pub fn start(redis: Connection, keys: Keys) -> DispatcherWaker {
        DispatcherWaker::with(move || {
            let (mut redis, keys) = (redis.clone(), keys.clone());
            async move { tf_redis::wake_dispatcher(&mut redis, &keys).await }
        })
    }

    fn with<W, F>(mut wake: W) -> DispatcherWaker
    where
        W: FnMut() -> F + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        // One request waiting beside the one being sent: more would wake it no sooner.
        let (asked, mut requests) = mpsc::channel(1);
        tokio::spawn(async move {
            while requests.recv().await.is_some() {
                wake().await;
            }
        });
        DispatcherWaker { asked }
    }

    pub fn wake(&self) {
        // Full: a wake-up is already waiting to be sent after the current one.
        let _ = self.asked.try_send(());
    }
}

/// The group commit behind [`AppState::submissions`]: each item is a tenant and its job.
/// While a queue's Redis list is empty, one job of that queue per write (due now, in a queue
/// not paused) is pushed by the API itself once its row is in: an idle fleet starts it
/// without waiting for a dispatcher round, and the list never holds more than the
/// dispatcher's window plus one job per API process.
pub fn submissions(
    ledger: Ledger,
    redis: Connection,
    keys: Keys,
    waker: DispatcherWaker,
) -> GroupCommit<(Uuid, NewJob), JobRecord> {
    let pushes = OwnPushes {
        redis,
        keys,
        paused_until: Arc::default(),
        waker,
    };
    GroupCommit::start(
        LINGER_WHILE_CALLERS_WAIT,
        move |batch: Arc<Vec<(Uuid, NewJob)>>| {
            let (ledger, pushes) = (ledger.clone(), pushes.clone());
            async move {
                let (tenants, jobs): (Vec<Uuid>, Vec<NewJob>) = batch.iter().cloned().unzip();
                let dispatch = pushes.room(&jobs).await;
                let inserted = ledger
                    .insert_for(&tenants, &jobs, &dispatch, "api")
                    .await
                    .map_err(|err| match err {
                        InsertError::Db(err) => err,
                        // Only jobs without an idempotency key come here; none can conflict.
                        other => sqlx::Error::Protocol(other.to_string()),
                    })?;
                let deliveries: Vec<Dispatch> =
                    inserted.iter().filter_map(Inserted::delivery).collect();
                pushes.push(&ledger, deliveries).await;
                Ok(inserted.into_iter().map(Inserted::into_record).collect())
            }
        },
    )
}

/// The longest a submission waits on Redis for the API's own push. Accepting work must not
/// depend on Redis: past this, the job is left to the dispatcher.
const REDIS_BUDGET: Duration = Duration::from_millis(50);
/// After Redis failed or was slow, the API leaves every push to the dispatcher this long.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// The API's own pushes of lone submissions to empty queues.
#[derive(Clone)]
struct OwnPushes {
    redis: Connection,
    keys: Keys,
    /// Set when Redis last failed a push or its sizing: no pushes until then.
    paused_until: Arc<std::sync::Mutex<Option<Instant>>>,
    waker: DispatcherWaker,
}

impl OwnPushes {
    /// Which of `jobs` the API may push: the first of each queue whose list is empty. None
    /// while Redis is failing.
    async fn room(&self, jobs: &[NewJob]) -> Vec<bool> {
        let held = *self.paused_until.lock().expect("push pause lock");
        if held.is_some_and(|until| Instant::now() < until) {
            return vec![false; jobs.len()];
        }
        let mut queues: Vec<Queue> = jobs.iter().map(|job| job.spec.queue()).collect();
        queues.sort();
        queues.dedup();
        let waiting = tokio::time::timeout(
            REDIS_BUDGET,
            tf_redis::waiting(&mut self.redis.clone(), &self.keys, &queues),
        )
        .await;
        let waiting: HashMap<Queue, i64> = match waiting {
            Ok(Ok(waiting)) => queues.into_iter().zip(waiting).collect(),
            _ => {
                tracing::debug!("Redis did not size the lists in time; the dispatcher pushes");
                self.pause_pushes();
                return vec![false; jobs.len()];
            }
        };
        let bound_for: Vec<Queue> = jobs.iter().map(|job| job.spec.queue()).collect();
        tf_redis::own_pushes(&bound_for, &waiting)
    }

    /// Pushes the jobs the insert marked dispatched. Should Redis refuse or be slow, they are
    /// taken back out of the window and the dispatcher is woken to push them (a push that
    /// lands after all only adds a copy the next dispatch's epoch keeps from starting).
    async fn push(&self, ledger: &Ledger, deliveries: Vec<Dispatch>) {
        let mut by_queue: HashMap<Queue, Vec<Dispatch>> = HashMap::new();
        for delivery in deliveries {
            by_queue.entry(delivery.queue).or_default().push(delivery);
        }
        for (queue, jobs) in by_queue {
            let pushed = tokio::time::timeout(
                REDIS_BUDGET,
                tf_redis::push_jobs(&mut self.redis.clone(), &self.keys, queue, &jobs),
            )
            .await;
            if let Ok(Ok(())) = pushed {
                metrics::JOBS_DISPATCHED
                    .with_label_values(&[queue.as_str()])
                    .inc_by(jobs.len() as u64);
                continue;
            }
            tracing::warn!(%queue, jobs = jobs.len(), "could not push jobs to Redis; the dispatcher will");
            self.pause_pushes();
            let ids: Vec<Uuid> = jobs.iter().map(|job| job.job_id).collect();
            if let Err(err) = ledger.undispatch(&ids).await {
                tracing::warn!(%err, "could not take the jobs back; the stale-dispatch sweep will push them");
            }
            self.waker.wake();
        }
    }

    fn pause_pushes(&self) {
        *self.paused_until.lock().expect("push pause lock") = Some(Instant::now() + REDIS_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::sync::Semaphore;

    use super::DispatcherWaker;

    #[tokio::test]
    async fn wake_ups_asked_while_redis_hangs_become_one_more_not_one_each() {
        let (sent, stuck) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
        let waker = DispatcherWaker::with({
            let (sent, stuck) = (sent.clone(), stuck.clone());
            move || {
                let (sent, stuck) = (sent.clone(), stuck.clone());
                async move {
                    sent.fetch_add(1, Ordering::SeqCst);
                    // Redis hangs until the test lets each publish through.
                    stuck.acquire().await.unwrap().forget();
                }
            }
        });
        waker.wake();
        while sent.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10_000 {
            waker.wake();
        }
        stuck.add_permits(10_000);
        while sent.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }
}
