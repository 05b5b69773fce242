//! The queues' lists: one Redis list of deliveries (a job's id, epoch and payload, as JSON)
//! per queue, the window the dispatcher fills from the ledger (ADR 0008, ADR 0017). The
//! dispatcher and the API push to the tail; workers take from the head with `BLMPOP` and give
//! back, at the head, what they took and will not run.

use std::{collections::HashMap, time::Duration};

use redis::AsyncCommands;
use taskfleet_jobs::{Dispatch, Queue};
use uuid::Uuid;

use super::{Connection, Keys, RedisError, pipeline_by_slot};

/// Appends `jobs` to `queue`'s list; workers waiting on it take them at once.
pub async fn push_jobs(
    conn: &mut Connection,
    keys: &Keys,
    queue: Queue,
    jobs: &[Dispatch],
) -> Result<(), RedisError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let _: i64 = conn.rpush(keys.queue_list(queue), entries(jobs)).await?;
    Ok(())
}

/// The longest list entry that carries its job's spec. A queue's window holds hundreds of
/// entries, and a spec may be megabytes (an `executor.run` with its files): past this, the
/// entry leaves the spec out, and the job's start brings it from the ledger.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// Deliveries as list entries, in order.
fn entries<'a>(jobs: impl IntoIterator<Item = &'a Dispatch>) -> Vec<String> {
    jobs.into_iter()
        .map(|job| {
            let entry = serde_json::to_string(job).expect("a delivery always serialises");
            if entry.len() <= MAX_ENTRY_BYTES {
                return entry;
            }
            let without_spec = Dispatch {
                payload: None,
                ..job.clone()
            };
            serde_json::to_string(&without_spec).expect("a delivery always serialises")
        })
        .collect()
}

/// How many dispatched ids of each of `queues` wait in Redis, not yet taken by a worker.
/// One round trip (one per queue, concurrently, on a cluster).
pub async fn waiting(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[Queue],
) -> Result<Vec<i64>, RedisError> {
    let lists: Vec<String> = queues.iter().map(|&queue| keys.queue_list(queue)).collect();
    pipeline_by_slot(
        conn,
        &lists,
        |_| {},
        |pipe, i| {
            pipe.llen(&lists[i]);
        },
    )
    .await
}

/// The ids of the jobs waiting in each of `queues`' lists. One round trip (one per queue,
/// concurrently, on a cluster); each list is at most a dispatch window long.
pub async fn waiting_ids(
    conn: &mut Connection,
    keys: &Keys,
    queues: &[Queue],
) -> Result<Vec<Vec<Uuid>>, RedisError> {
    let lists: Vec<String> = queues.iter().map(|&queue| keys.queue_list(queue)).collect();
    let entries: Vec<Vec<String>> = pipeline_by_slot(
        conn,
        &lists,
        |_| {},
        |pipe, i| {
            pipe.lrange(&lists[i], 0, -1);
        },
    )
    .await?;
    Ok(lists
        .iter()
        .zip(entries)
        .map(|(list, entries)| {
            deliveries(list, entries)
                .into_iter()
                .map(|job| job.job_id)
                .collect()
        })
        .collect())
}

/// The deliveries among entries read from `list`; anything else is logged and skipped.
pub fn deliveries(list: &str, entries: Vec<String>) -> Vec<Dispatch> {
    entries
        .into_iter()
        .filter_map(|entry| match serde_json::from_str(&entry) {
            Ok(job) => Some(job),
            Err(err) => {
                tracing::warn!(%list, %entry, %err, "skipping an entry that is not a delivery");
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

/// Takes up to `count` deliveries from the head of `list`: at once when some wait, else as
/// soon as one arrives, or none once `block` has passed.
pub async fn take_jobs(
    conn: &mut Connection,
    list: &str,
    block: Duration,
    count: usize,
) -> Result<Vec<Dispatch>, RedisError> {
    let popped: Option<(String, Vec<String>)> = redis::cmd("BLMPOP")
        .arg(block.as_secs_f64())
        .arg(1)
        .arg(list)
        .arg("LEFT")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(deliveries(
        list,
        popped.map(|(_, entries)| entries).unwrap_or_default(),
    ))
}

/// Puts `jobs` back at the head of `list`, in order, for the next worker to take first.
pub async fn put_back(
    conn: &mut Connection,
    list: &str,
    jobs: &[Dispatch],
) -> Result<(), RedisError> {
    if jobs.is_empty() {
        return Ok(());
    }
    // `LPUSH` puts each argument at the head in turn: the last one given ends first.
    let _: i64 = conn.lpush(list, entries(jobs.iter().rev())).await?;
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
