//! Our apalis backend over a queue's Redis list of deliveries (ADR 0008, ADR 0017).
//!
//! The ledger holds each job and decides who runs it, so Redis only has to carry deliveries
//! (a job's id, fencing epoch and payload) from the dispatcher (or the API) to free slots. A
//! queue is one list: deliveries are appended with `RPUSH`, and a worker takes as many as it
//! has free slots with one blocking pop (`BLMPOP`) on a connection of its own. Redis answers
//! the pop the moment deliveries arrive, so no wake-up message can be lost and no timer
//! polls; an idle worker makes one call per [`BLOCK`]. Nothing is acknowledged in Redis: a
//! worker that dies holding deliveries whose starts it never wrote leaves them `dispatched`
//! in the ledger, and the dispatcher's sweep pushes them again.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use apalis::prelude::{Backend, Layer, Service, Task, WorkerContext};
use apalis_core::backend::{BackendConfig, finalize::Ephemeral};
use futures::{FutureExt, future::BoxFuture};
use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::{
    redis as tf_redis,
    redis::{Connection, Keys, RedisError},
};
use tokio::{task::JoinHandle, time::Sleep};

/// How long one fetch waits on an empty list before it is issued again.
const BLOCK: Duration = Duration::from_secs(1);
/// Pause before fetching again after Redis refused a fetch or did not answer it.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// One queue's list, as an apalis backend. Each fetch takes as many deliveries as the worker
/// has free slots, so a worker never holds jobs it cannot run while another could.
pub struct RedisQueue {
    /// Blocking pops hold their connection until they return: it must be this queue's own.
    fetches: Connection,
    /// Gives fetched deliveries back: the fetching connection may be blocked by the next fetch.
    conn: Connection,
    list: String,
    concurrency: usize,
    /// Jobs handed to the worker whose handler has not returned; kept by [`CountRunning`].
    running: Arc<AtomicUsize>,
    /// Deliveries taken by the last fetch and not yet handed out.
    fetched: VecDeque<Dispatch>,
    /// The fetch in flight, in a task of its own, so that it runs (and, when the worker is
    /// stopping, gives its ids back) whether or not apalis polls the backend.
    fetch: Option<JoinHandle<Result<Vec<Dispatch>, RedisError>>>,
    /// On shutdown, puts deliveries taken but never handed out back at the head of the list.
    giving_back: Option<BoxFuture<'static, ()>>,
    /// Set after a failed fetch: the next one waits for it.
    retry: Option<Pin<Box<Sleep>>>,
    /// Whether the last fetch failed; errors are logged once per outage.
    failing: bool,
}

impl RedisQueue {
    /// A backend for `queue` that takes at most `concurrency` jobs at a time, fetching over
    /// `fetches`, a connection nothing else uses, and giving ids back over `conn`.
    pub fn new(
        fetches: Connection,
        conn: Connection,
        keys: &Keys,
        queue: Queue,
        concurrency: usize,
    ) -> RedisQueue {
        RedisQueue {
            fetches,
            conn,
            list: keys.queue_list(queue),
            concurrency,
            running: Arc::new(AtomicUsize::new(0)),
            fetched: VecDeque::new(),
            fetch: None,
            giving_back: None,
            retry: None,
            failing: false,
        }
    }

    /// Starts a fetch of up to `count` deliveries. Those that arrive once `worker` is stopping
    /// (its pop was already waiting in Redis) go straight back to the list.
    fn take(
        &self,
        count: usize,
        worker: &WorkerContext,
    ) -> JoinHandle<Result<Vec<Dispatch>, RedisError>> {
        let (mut fetches, conn) = (self.fetches.clone(), self.conn.clone());
        let (list, worker) = (self.list.clone(), worker.clone());
        tokio::spawn(async move {
            let jobs = tf_redis::take_jobs(&mut fetches, &list, BLOCK, count).await?;
            if worker.is_shutting_down() && !jobs.is_empty() {
                put_back(conn, list, jobs).await;
                return Ok(Vec::new());
            }
            Ok(jobs)
        })
    }

    /// Deliveries fetched and never handed out, then those of a fetch still in flight, go back
    /// to the head of the list in that order; `None` when there are none.
    fn give_back(&mut self) -> Option<BoxFuture<'static, ()>> {
        let (fetch, fetched) = (self.fetch.take(), std::mem::take(&mut self.fetched));
        if fetch.is_none() && fetched.is_empty() {
            return None;
        }
        let (conn, list) = (self.conn.clone(), self.list.clone());
        let giving_back = async move {
            let mut jobs = Vec::from(fetched);
            if let Some(fetch) = fetch {
                match fetch.await {
                    Ok(Ok(more)) => jobs.extend(more),
                    Ok(Err(err)) => {
                        tracing::warn!(%err, %list, "a fetch failed while the worker stopped")
                    }
                    Err(err) => tracing::warn!(%err, %list, "a fetch ended abnormally"),
                }
            }
            put_back(conn, list, jobs).await;
        };
        Some(giving_back.boxed())
    }

    /// Slots not taken by running jobs or by ids already fetched; at least one, since apalis
    /// asks for a task only when its concurrency limit has room.
    fn free_slots(&self) -> usize {
        self.concurrency
            .saturating_sub(self.running.load(Ordering::SeqCst) + self.fetched.len())
            .max(1)
    }
}

impl Backend for RedisQueue {
    type Task = Task<Dispatch>;
    type Error = RedisError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), RedisError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Dispatch>, RedisError>>> {
        loop {
            if let Some(delivery) = self.fetched.pop_front() {
                self.running.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(Some(Ok(Task::new(delivery))));
            }
            if let Some(retry) = &mut self.retry {
                ready!(retry.as_mut().poll(cx));
                self.retry = None;
            }
            let fetch = match &mut self.fetch {
                Some(fetch) => fetch,
                None => {
                    self.fetch = Some(self.take(self.free_slots(), worker));
                    continue;
                }
            };
            let fetched = ready!(fetch.poll_unpin(cx)).unwrap_or_else(|ended| {
                Err(RedisError::from(std::io::Error::other(ended.to_string())))
            });
            self.fetch = None;
            match fetched {
                // None within the block: the loop issues the next fetch.
                Ok(jobs) => {
                    if std::mem::take(&mut self.failing) {
                        tracing::info!(list = %self.list, "fetching from Redis again");
                    }
                    self.fetched.extend(jobs);
                }
                Err(err) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(%err, list = %self.list, "fetch failed; retrying");
                    }
                    self.retry = Some(Box::pin(tokio::time::sleep(RETRY_AFTER)));
                }
            }
        }
    }

    /// Called once no job of this worker runs any more: deliveries fetched and never handed
    /// out (a fetch can land after intake stopped) go back to the head of the list, in order.
    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), RedisError>> {
        if self.giving_back.is_none() {
            self.giving_back = self.give_back();
        }
        if let Some(giving_back) = &mut self.giving_back {
            ready!(giving_back.poll_unpin(cx));
            self.giving_back = None;
        }
        Poll::Ready(Ok(()))
    }
}

/// A worker dropped before it closed (its drain deadline passed) gives the deliveries it never
/// handed out back from a task of their own; should the process exit first, the dispatcher's
/// sweep pushes them again.
impl Drop for RedisQueue {
    fn drop(&mut self) {
        let giving_back = self.giving_back.take().or_else(|| self.give_back());
        if let (Some(giving_back), Ok(runtime)) =
            (giving_back, tokio::runtime::Handle::try_current())
        {
            runtime.spawn(giving_back);
        }
    }
}

/// Puts `jobs` back at the head of `list`, in order.
async fn put_back(mut conn: Connection, list: String, jobs: Vec<Dispatch>) {
    if let Err(err) = tf_redis::put_back(&mut conn, &list, &jobs).await {
        tracing::warn!(%err, jobs = jobs.len(), "could not give fetched jobs back; the dispatcher's sweep pushes them again");
    }
}

impl BackendConfig for RedisQueue {
    type Args = Dispatch;
    type Id = apalis::prelude::RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = CountRunning;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> CountRunning {
        CountRunning(self.running.clone())
    }
}

/// Counts down [`RedisQueue::running`] when a job's handler returns (or its future is
/// dropped), so the next fetch knows how many slots are free.
#[derive(Clone)]
pub struct CountRunning(Arc<AtomicUsize>);

impl<S> Layer<S> for CountRunning {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> CountedService<S> {
        CountedService {
            inner,
            running: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    running: Arc<AtomicUsize>,
}

impl<S, Request> Service<Request> for CountedService<S>
where
    S: Service<Request>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let ran = Ran(self.running.clone());
        let job = self.inner.call(request);
        async move {
            let _ran = ran;
            job.await
        }
        .boxed()
    }
}

/// Counts one job down when dropped.
struct Ran(Arc<AtomicUsize>);

impl Drop for Ran {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use taskfleet_storage::redis::{RedisConfig, push_jobs, waiting, waiting_ids};
    use uuid::Uuid;

    async fn connection() -> Connection {
        let url = std::env::var("TASKFLEET_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        taskfleet_storage::redis::connect(&RedisConfig::new(url))
            .await
            .expect("Redis answers")
    }

    #[tokio::test]
    async fn a_fetch_waiting_on_an_empty_list_takes_a_delivery_the_moment_it_is_pushed() {
        let mut conn = connection().await;
        let keys = Keys::new(format!("taskfleet-test:{}", Uuid::now_v7()));
        let queue = Queue::Executor;
        let mut list = RedisQueue::new(connection().await, conn.clone(), &keys, queue, 4);
        let worker = WorkerContext::new("test-worker");
        // Nothing waits: the fetch blocks in Redis.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(list.poll_next(&mut cx, &worker).is_pending());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let job = Uuid::now_v7();
        push_jobs(&mut conn, &keys, queue, &[delivery(job)])
            .await
            .unwrap();
        // Well within one block: Redis answered the waiting pop, not a later one.
        let taken = tokio::time::timeout(BLOCK / 2, next_job(&mut list, &worker)).await;
        assert_eq!(taken.expect("the push ends the wait"), job);
        assert_eq!(waiting(&mut conn, &keys, &[queue]).await.unwrap(), [0]);
    }

    #[tokio::test]
    async fn a_fetch_takes_only_free_slots_and_a_stop_gives_unstarted_deliveries_back_in_order() {
        let mut conn = connection().await;
        let keys = Keys::new(format!("taskfleet-test:{}", Uuid::now_v7()));
        let queue = Queue::Executor;
        assert_eq!(
            waiting(&mut conn, &keys, &[]).await.unwrap(),
            Vec::<i64>::new()
        );
        let jobs: [Uuid; 5] = std::array::from_fn(|_| Uuid::now_v7());
        push_jobs(&mut conn, &keys, queue, &jobs.map(delivery))
            .await
            .unwrap();
        assert_eq!(
            waiting(&mut conn, &keys, &[queue, Queue::Schedule])
                .await
                .unwrap(),
            [5, 0]
        );

        let mut list = RedisQueue::new(connection().await, conn.clone(), &keys, queue, 3);
        let mut worker = WorkerContext::new("test-worker");
        let mut handed_out = vec![next_job(&mut list, &worker).await];
        // Three slots free: one fetch took three ids at once.
        assert_eq!(waiting(&mut conn, &keys, &[queue]).await.unwrap(), [2]);
        for _ in 0..2 {
            handed_out.push(next_job(&mut list, &worker).await);
        }
        assert_eq!(handed_out, jobs[..3]);
        assert_eq!(waiting(&mut conn, &keys, &[queue]).await.unwrap(), [2]);

        // One handler returns through the backend's layer; the next fetch takes one id.
        let mut counted = list.middleware(&mut worker).layer(Done);
        Service::call(&mut counted, ()).await.unwrap();
        assert_eq!(next_job(&mut list, &worker).await, jobs[3]);
        assert_eq!(waiting(&mut conn, &keys, &[queue]).await.unwrap(), [1]);

        // Ids a worker fetched and never handed out go back to the head, in order, when it
        // stops…
        let unstarted = [Uuid::now_v7(), Uuid::now_v7()];
        list.fetched.extend(unstarted.map(delivery));
        std::future::poll_fn(|cx| list.poll_close(cx, &worker))
            .await
            .unwrap();
        assert_eq!(
            waiting_ids(&mut conn, &keys, &[queue]).await.unwrap(),
            [[unstarted[0], unstarted[1], jobs[4]]]
        );
        // …and when it is dropped without stopping (its drain deadline passed).
        let list_key = keys.queue_list(queue);
        let _: () = redis::AsyncCommands::del(&mut conn, &list_key)
            .await
            .unwrap();
        list.fetched.extend(unstarted.map(delivery));
        drop(list);
        tokio::time::timeout(Duration::from_secs(5), async {
            while waiting(&mut conn.clone(), &keys, &[queue]).await.unwrap() != [2] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a dropped worker gives its fetched ids back");
        assert_eq!(
            waiting_ids(&mut conn, &keys, &[queue]).await.unwrap(),
            [unstarted]
        );
        let _: () = redis::AsyncCommands::del(&mut conn, &list_key)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn deliveries_that_reach_a_stopping_worker_go_straight_back() {
        let mut conn = connection().await;
        let keys = Keys::new(format!("taskfleet-test:{}", Uuid::now_v7()));
        let queue = Queue::Executor;
        let mut list = RedisQueue::new(connection().await, conn.clone(), &keys, queue, 4);
        let mut worker = WorkerContext::new("test-worker");
        worker.start().unwrap();
        // A fetch waits in Redis on the empty list…
        let mut cx = Context::from_waker(Waker::noop());
        assert!(list.poll_next(&mut cx, &worker).is_pending());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // …when the worker begins to stop; apalis polls the backend no more, yet an id
        // pushed now is back in the list within the block, not held until the drain ends.
        worker.stop().unwrap();
        let job = Uuid::now_v7();
        push_jobs(&mut conn, &keys, queue, &[delivery(job)])
            .await
            .unwrap();
        tokio::time::timeout(BLOCK / 2, async {
            while waiting_ids(&mut conn.clone(), &keys, &[queue])
                .await
                .unwrap()
                != [[job]]
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the stopping worker gave the id back");
        let _: () = redis::AsyncCommands::del(&mut conn, keys.queue_list(queue))
            .await
            .unwrap();
    }

    async fn next_job(list: &mut RedisQueue, worker: &WorkerContext) -> Uuid {
        let next = std::future::poll_fn(|cx| list.poll_next(cx, worker));
        let task = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("a job waits in the list");
        task.expect("a task").expect("no error").args.job_id
    }

    /// A delivery of a no-op job `id`.
    fn delivery(id: Uuid) -> Dispatch {
        Dispatch {
            job_id: id,
            epoch: 1,
            attempt: 1,
            max_attempts: 3,
            tenant_id: Uuid::now_v7(),
            queue: Queue::Executor,
            kind: "executor.run".to_owned(),
            run_at: chrono::Utc::now(),
            request_id: None,
            payload: Some(serde_json::json!({"kind": "executor.run", "tool": "noop"})),
        }
    }

    /// A handler that returns at once.
    struct Done;

    impl Service<()> for Done {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }
}
