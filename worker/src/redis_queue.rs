//! A queue's Redis side: the list of dispatched job ids workers take from, our apalis
//! backend over it, and how idle workers wake (ADR 0008).
//!
//! The ledger holds each job and decides who runs it, so Redis only has to carry ids from
//! the dispatcher to free slots. A queue is one list: the dispatcher appends a round's ids
//! with one `RPUSH`, and a worker takes as many as it has free slots with one `LPOP key n`.
//! Nothing is acknowledged in Redis: a worker that dies holding ids it never started leaves
//! them `dispatched` in the ledger, and the dispatcher's sweep pushes them again.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use apalis::prelude::{
    Backend, Layer, PollSnapshot, PollStrategy, PollWith, Service, Task, WorkerContext,
};
use apalis_core::backend::{BackendConfig, finalize::Ephemeral};
use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
};
use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::redis::{Keys, RedisError};
use tokio::{
    sync::Notify,
    time::{Interval, MissedTickBehavior},
};
use uuid::Uuid;

/// The apalis backend of one queue: its Redis list, woken by a signal rather than a timer.
pub type QueueBackend = PollWith<RedisQueue, WakeStrategy>;

/// How often an idle worker looks at its queue when no wake-up arrives: a backstop for
/// wake-ups published while its subscription was down (Redis restarting) and for a fetch
/// that failed.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// A worker backend for `queue` that fetches when `wakeups` signals, and at least every
/// [`IDLE_POLL`].
pub fn backend(
    conn: ConnectionManager,
    keys: &Keys,
    queue: Queue,
    concurrency: usize,
    wakeups: Arc<Wakeups>,
) -> QueueBackend {
    let list = RedisQueue::new(conn, keys, queue, concurrency, wakeups.clone());
    PollWith::new(list, WakeStrategy::new(wakeups))
}

/// One queue's list, as an apalis backend. Each fetch takes as many ids as the worker has
/// free slots, so a worker never holds jobs it cannot start while another could.
pub struct RedisQueue {
    conn: WatchedConnection,
    list: String,
    concurrency: usize,
    /// Jobs handed to the worker whose handler has not returned; kept by [`CountRunning`].
    running: Arc<AtomicUsize>,
    /// Ids taken by the last fetch and not yet handed out.
    fetched: VecDeque<Uuid>,
    fetch: Option<BoxFuture<'static, Result<Vec<Uuid>, RedisError>>>,
    /// On shutdown, puts ids taken but never handed out back at the head of the list.
    giving_back: Option<BoxFuture<'static, ()>>,
    /// Whether the last fetch failed; errors are logged once per outage.
    failing: bool,
}

impl RedisQueue {
    /// Takes at most `concurrency` jobs at a time; its Redis calls are watched for
    /// `wakeups` (see [`WatchedConnection`]).
    fn new(
        conn: ConnectionManager,
        keys: &Keys,
        queue: Queue,
        concurrency: usize,
        wakeups: Arc<Wakeups>,
    ) -> RedisQueue {
        RedisQueue {
            conn: WatchedConnection { conn, wakeups },
            list: keys.queue_list(queue),
            concurrency,
            running: Arc::new(AtomicUsize::new(0)),
            fetched: VecDeque::new(),
            fetch: None,
            giving_back: None,
            failing: false,
        }
    }

    fn take(&self, count: usize) -> BoxFuture<'static, Result<Vec<Uuid>, RedisError>> {
        let (mut conn, list) = (self.conn.clone(), self.list.clone());
        async move {
            // `LPOP key count` answers nil for a missing (empty) list.
            let ids: Option<Vec<String>> = redis::cmd("LPOP")
                .arg(&list)
                .arg(count)
                .query_async(&mut conn)
                .await?;
            Ok(ids
                .unwrap_or_default()
                .into_iter()
                .filter_map(|id| match id.parse() {
                    Ok(id) => Some(id),
                    Err(_) => {
                        tracing::warn!(%list, %id, "skipping an entry that is not a job id");
                        None
                    }
                })
                .collect())
        }
        .boxed()
    }

    /// Ids fetched and never handed out, then those of a fetch still in flight, go back to
    /// the head of the list in that order; `None` when there are none.
    fn give_back(&mut self) -> Option<BoxFuture<'static, ()>> {
        let (fetch, fetched) = (self.fetch.take(), std::mem::take(&mut self.fetched));
        if fetch.is_none() && fetched.is_empty() {
            return None;
        }
        let (mut conn, list) = (self.conn.clone(), self.list.clone());
        let giving_back = async move {
            let mut ids = Vec::from(fetched);
            if let Some(fetch) = fetch {
                match fetch.await {
                    Ok(more) => ids.extend(more),
                    Err(err) => {
                        tracing::warn!(%err, %list, "a fetch failed while the worker stopped")
                    }
                }
            }
            if ids.is_empty() {
                return;
            }
            // `LPUSH` puts each argument at the head in turn: the last one given ends first.
            let reversed: Vec<String> = ids.iter().rev().map(Uuid::to_string).collect();
            let given_back: Result<i64, RedisError> = redis::cmd("LPUSH")
                .arg(&list)
                .arg(&reversed)
                .query_async(&mut conn)
                .await;
            if let Err(err) = given_back {
                tracing::warn!(%err, jobs = ids.len(), "could not give fetched jobs back; the dispatcher's sweep pushes them again");
            }
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
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Dispatch>, RedisError>>> {
        loop {
            if let Some(job_id) = self.fetched.pop_front() {
                self.running.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(Some(Ok(Task::new(Dispatch { job_id }))));
            }
            let fetch = match &mut self.fetch {
                Some(fetch) => fetch,
                None => {
                    self.fetch = Some(self.take(self.free_slots()));
                    continue;
                }
            };
            let fetched = ready!(fetch.poll_unpin(cx));
            self.fetch = None;
            match fetched {
                Ok(ids) => {
                    if std::mem::take(&mut self.failing) {
                        tracing::info!(list = %self.list, "fetching from Redis again");
                    }
                    if ids.is_empty() {
                        // The wake strategy holds the waker: a signal or the idle tick
                        // brings the next fetch.
                        return Poll::Pending;
                    }
                    self.fetched.extend(ids);
                }
                Err(err) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(%err, list = %self.list, "fetch failed; retrying at each idle tick");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Called once no job of this worker runs any more: ids fetched and never handed out
    /// (a fetch can land after intake stopped) go back to the head of the list, in order.
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

/// A worker dropped before it closed (its drain deadline passed) gives its unstarted ids back
/// from a task of their own; should the process exit first, the dispatcher's sweep pushes
/// them again.
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

/// The dispatcher's "new work" signals for one queue's worker in this process.
///
/// apalis fetches only when its task is polled, so every signal must end in a fetch that
/// starts after it. Two things lose signals in apalis 1.0's own poll strategies (ADR 0002):
/// `Strategy` stops at the first source that is ready, leaving the others (and the next
/// wait of that one) without the task's waker; and a signal consumed while a fetch is in
/// flight is spent on a fetch that may have read Redis before the push, after which apalis
/// parks until something else wakes it. [`WakeStrategy`] fixes the first, and
/// [`WatchedConnection`] the second.
#[derive(Debug, Default)]
pub struct Wakeups {
    notify: Notify,
    /// Signals received so far; lets a Redis call tell whether one came while it ran.
    signals: AtomicU64,
}

impl Wakeups {
    /// New work was pushed: wake the fetch loop (kept as a permit if it is busy).
    pub fn signal(&self) {
        self.signals.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn count(&self) -> u64 {
        self.signals.load(Ordering::SeqCst)
    }
}

/// Drives apalis's fetch loop from [`Wakeups`] and an idle interval. Each poll drains both
/// sources until they are pending, so the task's waker is always registered with both.
pub struct WakeStrategy {
    signals: Pin<Box<dyn Stream<Item = ()> + Send + Sync>>,
    idle: Option<Interval>,
}

impl WakeStrategy {
    fn new(wakeups: Arc<Wakeups>) -> WakeStrategy {
        let signals = futures::stream::unfold(wakeups, |wakeups| async move {
            wakeups.notify.notified().await;
            Some(((), wakeups))
        });
        WakeStrategy {
            signals: Box::pin(signals),
            idle: None,
        }
    }
}

impl PollStrategy for WakeStrategy {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut woken = false;
        while self.signals.poll_next_unpin(cx).is_ready() {
            woken = true;
        }
        // Created on first use: an interval needs the runtime, the backend is built outside it.
        let idle = self.idle.get_or_insert_with(|| {
            let mut idle = tokio::time::interval(IDLE_POLL);
            idle.set_missed_tick_behavior(MissedTickBehavior::Delay);
            idle
        });
        while idle.poll_tick(cx).is_ready() {
            woken = true;
        }
        if woken {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// The worker backend's Redis connection. When a signal arrives while one of its calls (a
/// fetch above all) is in flight, it signals again once the call returns, so a fetch that
/// read the queue before the push is followed by one that reads it after.
#[derive(Clone)]
pub struct WatchedConnection {
    conn: ConnectionManager,
    wakeups: Arc<Wakeups>,
}

impl WatchedConnection {
    fn signal_again_if_missed(&self, before: u64) {
        if self.wakeups.count() != before {
            self.wakeups.notify.notify_one();
        }
    }
}

impl ConnectionLike for WatchedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let before = self.wakeups.count();
        Box::pin(async move {
            let reply = self.conn.req_packed_command(cmd).await;
            self.signal_again_if_missed(before);
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let before = self.wakeups.count();
        Box::pin(async move {
            let replies = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.signal_again_if_missed(before);
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicBool,
        task::{Wake, Waker},
    };

    use super::*;
    use taskfleet_storage::redis::{push_jobs, waiting, waiting_ids};

    /// Records whether it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    async fn connection() -> ConnectionManager {
        let url = std::env::var("TASKFLEET_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        taskfleet_storage::redis::connect(&url)
            .await
            .expect("Redis answers")
    }

    #[tokio::test]
    async fn a_poll_that_takes_a_wake_up_still_hears_the_next_one_and_the_idle_tick() {
        let wakeups = Arc::new(Wakeups::default());
        let mut strategy = WakeStrategy::new(wakeups.clone());
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::default();

        // The interval's first tick is immediate; a signal is waiting too.
        wakeups.signal();
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        flag.take();
        // apalis's `Strategy` would hold no waker here; ours hears the next signal…
        wakeups.signal();
        assert!(flag.take(), "a signal after a ready poll wakes the worker");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        // …and, with no signal at all, the idle tick.
        flag.take();
        tokio::time::sleep(IDLE_POLL * 2).await;
        assert!(flag.take(), "the idle interval wakes the worker");
    }

    #[tokio::test]
    async fn a_wake_up_during_a_redis_call_is_repeated_when_the_call_returns() {
        let wakeups = Arc::new(Wakeups::default());
        let mut conn = WatchedConnection {
            conn: connection().await,
            wakeups: wakeups.clone(),
        };
        let key = format!("taskfleet-test:{}:never-pushed", uuid::Uuid::now_v7());
        // A Redis call that takes `seconds`: a blocking pop from a list nobody pushes to.
        let wait_in_redis = |conn: &mut WatchedConnection, seconds: f64| {
            let mut conn = conn.clone();
            let pop = redis::cmd("BLPOP").arg(&key).arg(seconds).to_owned();
            async move {
                let _: Option<(String, String)> = pop.query_async(&mut conn).await.unwrap();
            }
        };

        // A call that nothing signals during leaves no wake-up behind.
        wait_in_redis(&mut conn, 0.05).await;
        assert!(!woken_now(&wakeups).await);

        // A signal arrives, and is taken, while the call is in flight (as a fetch that read
        // the queue before the push): the worker is woken again once the call returns.
        let call = wait_in_redis(&mut conn, 0.3);
        let signal_and_take = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            wakeups.signal();
            assert!(woken_now(&wakeups).await, "the signal itself wakes");
        };
        tokio::join!(call, signal_and_take);
        assert!(
            woken_now(&wakeups).await,
            "the call that saw a signal in flight signals again"
        );
    }

    #[tokio::test]
    async fn a_fetch_takes_only_free_slots_and_a_stop_gives_unstarted_ids_back_in_order() {
        let mut conn = connection().await;
        let keys = Keys::new(format!("taskfleet-test:{}", Uuid::now_v7()));
        let queue = Queue::Executor;
        assert_eq!(
            waiting(&mut conn, &keys, &[]).await.unwrap(),
            Vec::<i64>::new()
        );
        let jobs: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        push_jobs(&mut conn, &keys, queue, &jobs).await.unwrap();
        assert_eq!(
            waiting(&mut conn, &keys, &[queue, Queue::Schedule])
                .await
                .unwrap(),
            [5, 0]
        );

        let mut list = RedisQueue::new(conn.clone(), &keys, queue, 3, Arc::default());
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
        list.fetched.extend(unstarted);
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
        list.fetched.extend(unstarted);
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

    async fn next_job(list: &mut RedisQueue, worker: &WorkerContext) -> Uuid {
        let next = std::future::poll_fn(|cx| list.poll_next(cx, worker));
        let task = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("a job waits in the list");
        task.expect("a task").expect("no error").args.job_id
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

    /// Whether a wake-up is waiting (it is taken).
    async fn woken_now(wakeups: &Wakeups) -> bool {
        tokio::time::timeout(Duration::from_millis(10), wakeups.notify.notified())
            .await
            .is_ok()
    }
}
