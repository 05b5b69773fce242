//! The apalis-redis side of a queue: how its storage is configured, how idle workers wake,
//! and how finished tasks are removed from Redis. Each setting answers one hazard of
//! apalis-redis 1.0.0 listed in DESIGN.md; `docs/adr/0002-apalis-redis-guards.md` explains them.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::{PollSnapshot, PollStrategy, PollWith};
use apalis_redis::{ConnectionManager, RedisStorage};
use futures::{Stream, StreamExt};
use redis::{Cmd, Pipeline, RedisFuture, Script, Value, aio::ConnectionLike};
use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::redis::{Keys, RedisError};
use tokio::{
    sync::Notify,
    time::{Interval, MissedTickBehavior},
};

/// The apalis backend of one queue: apalis-redis, woken by a signal rather than a timer.
pub type QueueBackend = PollWith<RedisStorage<Dispatch, WatchedConnection>, WakeStrategy>;

/// How often an idle worker looks at its queue when no wake-up arrives: a backstop for
/// wake-ups published while its subscription was down (Redis restarting), and for hosts
/// whose clocks disagree (apalis makes a push due at the dispatcher's current second, and a
/// fetch takes what is due by the worker's; a worker behind by δ finds nothing for pushes in
/// the first δ of each second until it looks again).
const IDLE_POLL: Duration = Duration::from_millis(50);

/// apalis-redis settings for `queue`.
pub fn config(keys: &Keys, queue: Queue) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(keys.queue(queue))
        // Fetch one task at a time: a worker holding prefetched tasks skips heartbeats and
        // loses them to the orphan sweep (hazard 2); and the ledger, not Redis, is the backlog.
        .batch_size(1)
        // Orphans are re-queued after 2 s × 15 = 30 s without a heartbeat, instead of 300 s.
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(15)
        // Locks only add a round trip: the ledger's start is what decides who runs a job.
        .lock_tasks(false)
        // Must stay on: apalis only acknowledges (removes from in-flight) with it.
        .persist_results(true)
        // apalis would publish every acknowledged task on a channel nobody reads. Its
        // `available` event is only for tasks put straight on the active list, which here
        // happens only when apalis hands back a stopping worker's buffered tasks, and the
        // idle poll finds those; new work wakes workers through the dispatcher's own
        // signal (`wake_workers`).
        .emit_events(false)
}

/// The storage the dispatcher pushes into (over a plain connection) and workers fetch from
/// (over a [`WatchedConnection`]).
pub fn storage<C: ConnectionLike + Clone + Send + Sync + 'static>(
    conn: C,
    keys: &Keys,
    queue: Queue,
) -> RedisStorage<Dispatch, C> {
    RedisStorage::new(conn).with_config(config(keys, queue))
}

/// A worker backend that fetches when `wakeups` signals, and at least every [`IDLE_POLL`].
pub fn backend(
    conn: ConnectionManager,
    keys: &Keys,
    queue: Queue,
    wakeups: Arc<Wakeups>,
) -> QueueBackend {
    let conn = WatchedConnection {
        conn,
        wakeups: wakeups.clone(),
    };
    PollWith::new(storage(conn, keys, queue), WakeStrategy::new(wakeups))
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

/// How many pushed tasks of each of `queues` wait in Redis, not yet fetched: apalis keeps a
/// push in the scheduled set until a fetch moves it to the active list. One round trip.
pub async fn waiting(
    conn: &mut ConnectionManager,
    keys: &Keys,
    queues: &[Queue],
) -> Result<Vec<i64>, RedisError> {
    // Redis refuses an empty pipeline.
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for &queue in queues {
        let config = config(keys, queue);
        pipe.llen(config.active_jobs_list())
            .zcard(config.scheduled_jobs_set());
    }
    let counts: Vec<i64> = pipe.query_async(conn).await?;
    Ok(counts.chunks(2).map(|pair| pair.iter().sum()).collect())
}

/// `KEYS[1]` done set, `KEYS[2]` data hash, `KEYS[3]` metadata prefix; `ARGV[1]` batch.
/// apalis-redis keeps every finished task's data, metadata and id forever; the ledger holds
/// the outcome, so Redis copies of finished tasks are deleted.
const FORGET_DONE: &str = r#"
local ids = redis.call('SPOP', KEYS[1], ARGV[1])
for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('DEL', KEYS[3] .. ':' .. id)
end
return #ids
"#;

/// Deletes the Redis copies of up to `batch` finished tasks of `queue`; returns how many.
pub async fn forget_done(
    conn: &mut ConnectionManager,
    keys: &Keys,
    queue: Queue,
    batch: usize,
) -> Result<usize, RedisError> {
    let config = config(keys, queue);
    Script::new(FORGET_DONE)
        .key(config.done_jobs_set())
        .key(config.job_data_hash())
        .key(config.job_meta_hash())
        .arg(batch)
        .invoke_async(conn)
        .await
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicBool,
        task::{Wake, Waker},
    };

    use super::*;

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
        apalis_redis::connect(url).await.expect("Redis answers")
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
    async fn waiting_counts_pushed_tasks_of_each_queue_and_none_for_no_queue() {
        let mut conn = connection().await;
        let prefix = format!("taskfleet-test:{}", uuid::Uuid::now_v7());
        let keys = Keys::new(prefix.clone());
        assert_eq!(
            waiting(&mut conn, &keys, &[]).await.unwrap(),
            Vec::<i64>::new()
        );
        let mut storage = storage(conn.clone(), &keys, Queue::Executor);
        let pushed = (0..3)
            .map(|_| Dispatch {
                job_id: uuid::Uuid::now_v7(),
            })
            .collect();
        apalis::prelude::TaskSink::push_bulk(&mut storage, pushed)
            .await
            .unwrap();
        assert_eq!(
            waiting(&mut conn, &keys, &[Queue::Executor, Queue::Schedule])
                .await
                .unwrap(),
            [3, 0]
        );
        let leftovers: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::AsyncCommands::del(&mut conn, leftovers)
            .await
            .unwrap();
    }

    /// Whether a wake-up is waiting (it is taken).
    async fn woken_now(wakeups: &Wakeups) -> bool {
        tokio::time::timeout(Duration::from_millis(10), wakeups.notify.notified())
            .await
            .is_ok()
    }
}
