//! Signals between the fleet's processes: wake the dispatcher, stop a running job. Each is
//! best effort on its own; the ledger holds what must not be lost.

use redis::AsyncCommands;

use super::{Connection, Keys, RedisError};

/// Tells the dispatcher that new work was accepted. Best effort: the dispatcher also polls,
/// so a lost wake-up delays dispatch by one poll interval and loses nothing.
pub async fn wake_dispatcher(conn: &mut Connection, keys: &Keys) {
    let published: Result<i64, _> = conn.publish(keys.dispatch_wake_channel(), 1).await;
    if let Err(err) = published {
        tracing::debug!(%err, "could not publish a dispatcher wake-up");
    }
}

/// Asks the worker running `job_id` to stop it: a flag its heartbeat reads (kept a day, past
/// any lease), and a message for an immediate stop. Two commands, not one pipeline: on a
/// cluster the flag lives in its job's slot and the channel is routed by its name.
pub async fn request_cancel(
    conn: &mut Connection,
    keys: &Keys,
    job_id: uuid::Uuid,
) -> Result<(), RedisError> {
    let () = conn.set_ex(keys.cancel_flag(job_id), 1, 86_400).await?;
    let _: i64 = conn
        .publish(keys.cancel_channel(), job_id.to_string())
        .await?;
    Ok(())
}

/// Removes a cancellation flag once it has been acted on (or the job is retried), so it
/// cannot stop a later attempt.
pub async fn clear_cancel(
    conn: &mut Connection,
    keys: &Keys,
    job_id: uuid::Uuid,
) -> Result<(), RedisError> {
    let _: i64 = conn.del(keys.cancel_flag(job_id)).await?;
    Ok(())
}
