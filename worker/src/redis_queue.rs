//! The apalis-redis side of a queue: how its storage is configured, how idle workers wake,
//! and how finished tasks are removed from Redis. Each setting answers one hazard of
//! apalis-redis 1.0.0 listed in DESIGN.md; `docs/adr/0002-apalis-redis-guards.md` explains them.

use std::{pin::Pin, sync::Arc, time::Duration};

use apalis::prelude::{PollWith, Strategy};
use apalis_redis::{ConnectionManager, RedisStorage};
use futures::Stream;
use redis::Script;
use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::redis::{Keys, RedisError};
use tokio::sync::Notify;

/// The apalis backend of one queue: apalis-redis, woken by a signal rather than a timer.
pub type QueueBackend = PollWith<RedisStorage<Dispatch, ConnectionManager>, Strategy>;

/// How often an idle worker looks at its queue when no wake-up arrives. Wake-ups are lost
/// while Redis restarts, and (measured, cause not yet found) now and then under load, so this
/// bounds how long such a job waits: 500 ms gave a pickup p99 of 230–470 ms, 50 ms gives
/// 90–140 ms, for 20 cheap fetches a second per idle queue.
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
        // Publishes `…:active:available`, which wakes idle workers.
        .emit_events(true)
}

/// The storage the dispatcher pushes into and workers fetch from.
pub fn storage(
    conn: ConnectionManager,
    keys: &Keys,
    queue: Queue,
) -> RedisStorage<Dispatch, ConnectionManager> {
    RedisStorage::new(conn).with_config(config(keys, queue))
}

/// A worker backend that fetches when `wakeups` fires, and at least every [`IDLE_POLL`].
pub fn backend(
    conn: ConnectionManager,
    keys: &Keys,
    queue: Queue,
    wakeups: Arc<Notify>,
) -> QueueBackend {
    let strategy = Strategy::new()
        .stream(notifications(wakeups))
        .interval(IDLE_POLL);
    PollWith::new(storage(conn, keys, queue), strategy)
}

fn notifications(notify: Arc<Notify>) -> Pin<Box<dyn Stream<Item = ()> + Send + Sync>> {
    Box::pin(futures::stream::unfold(notify, |notify| async move {
        notify.notified().await;
        Some(((), notify))
    }))
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
