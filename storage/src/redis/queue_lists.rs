//! The queues' lists: one Redis list of job ids per queue, the window the dispatcher fills
//! from the ledger (ADR 0008). The dispatcher and the API push ids to the tail; workers take
//! them from the head with `BLMPOP` and give back, at the head, what they took and will not
//! start.

use std::{collections::HashMap, time::Duration};

use redis::{AsyncCommands, aio::ConnectionManager};
use taskfleet_jobs::Queue;
use uuid::Uuid;

use super::{Keys, RedisError};

/// Appends `jobs` to `queue`'s list; workers waiting on it take them at once.
pub async fn push_jobs(
    conn: &mut ConnectionManager,
    keys: &Keys,
    queue: Queue,
    jobs: &[Uuid],
) -> Result<(), RedisError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = jobs.iter().map(Uuid::to_string).collect();
    let _: i64 = conn.rpush(keys.queue_list(queue), ids).await?;
    Ok(())
}

/// How many dispatched ids of each of `queues` wait in Redis, not yet taken by a worker.
/// One round trip.
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
        pipe.llen(keys.queue_list(queue));
    }
    pipe.query_async(conn).await
}

/// The ids waiting in each of `queues`' lists. One round trip; each list is at most a
/// dispatch window long.
pub async fn waiting_ids(
    conn: &mut ConnectionManager,
    keys: &Keys,
    queues: &[Queue],
) -> Result<Vec<Vec<Uuid>>, RedisError> {
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for &queue in queues {
        pipe.lrange(keys.queue_list(queue), 0, -1);
    }
    let lists: Vec<Vec<String>> = pipe.query_async(conn).await?;
    Ok(queues
        .iter()
        .zip(lists)
        .map(|(&queue, ids)| job_ids(&keys.queue_list(queue), ids))
        .collect())
}

/// The job ids among entries read from `list`; anything else is logged and skipped.
pub fn job_ids(list: &str, entries: Vec<String>) -> Vec<Uuid> {
    entries
        .into_iter()
        .filter_map(|entry| match entry.parse() {
            Ok(id) => Some(id),
            Err(_) => {
                tracing::warn!(%list, %entry, "skipping an entry that is not a job id");
                None
            }
        })
        .collect()
}

/// The window rule of the dispatcher: how many more ids a queue's list takes when `waiting`
/// wait in it, so Redis holds about `window` jobs of a queue and the ledger the backlog.
pub fn dispatch_room(window: i64, waiting: i64) -> i64 {
    (window - waiting).max(0)
}

/// The window rule of the API's own pushes: of jobs bound for `queues` (one entry per job,
/// in order), the first of each queue whose list is empty (`waiting` says how many wait in
/// each queue's list) is pushed by the API itself once its row is in, sparing it a
/// dispatcher round; the others are left to the dispatcher's fair rounds. So a list holds
/// at most the dispatcher's window plus one job per API process.
pub fn own_pushes(queues: &[Queue], waiting: &HashMap<Queue, i64>) -> Vec<bool> {
    let mut empty: HashMap<Queue, bool> = waiting
        .iter()
        .map(|(queue, waiting)| (*queue, *waiting == 0))
        .collect();
    queues
        .iter()
        .map(|queue| empty.get_mut(queue).is_some_and(std::mem::take))
        .collect()
}

/// Takes up to `count` ids from the head of `list`: at once when some wait, else as soon as
/// one arrives, or none once `block` has passed.
pub async fn take_jobs(
    conn: &mut ConnectionManager,
    list: &str,
    block: Duration,
    count: usize,
) -> Result<Vec<Uuid>, RedisError> {
    let popped: Option<(String, Vec<String>)> = redis::cmd("BLMPOP")
        .arg(block.as_secs_f64())
        .arg(1)
        .arg(list)
        .arg("LEFT")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(job_ids(
        list,
        popped.map(|(_, ids)| ids).unwrap_or_default(),
    ))
}

/// Puts `ids` back at the head of `list`, in order, for the next worker to take first.
pub async fn put_back(
    conn: &mut ConnectionManager,
    list: &str,
    ids: &[Uuid],
) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    // `LPUSH` puts each argument at the head in turn: the last one given ends first.
    let reversed: Vec<String> = ids.iter().rev().map(Uuid::to_string).collect();
    let _: i64 = conn.lpush(list, reversed).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use taskfleet_jobs::Queue;

    use super::{dispatch_room, own_pushes};

    #[test]
    fn the_dispatcher_fills_a_window_and_the_api_pushes_one_job_to_an_empty_list() {
        assert_eq!(dispatch_room(500, 120), 380);
        assert_eq!(dispatch_room(500, 600), 0);
        let waiting = HashMap::from([(Queue::Executor, 0), (Queue::Ingest, 3)]);
        let queues = [Queue::Executor, Queue::Ingest, Queue::Executor, Queue::Test];
        assert_eq!(own_pushes(&queues, &waiting), [true, false, false, false]);
    }
}
