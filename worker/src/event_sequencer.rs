//! The event sequencer, run by the leader: numbers committed events (`seq`, dense and in
//! commit order) and appends them to the Redis event stream that API replicas fan out to
//! their SSE clients. When Redis misses an append, readers notice the gap in `seq` and read
//! the missing events from Postgres, so a failed append loses nothing.

use std::time::Duration;

use redis::aio::ConnectionManager;
use taskfleet_storage::{EventLog, EventRecord, redis::Keys};
use tokio_util::sync::CancellationToken;

/// Most events numbered in one round.
const BATCH: i64 = 5_000;
/// Pause between rounds while no events wait.
const IDLE_PAUSE: Duration = Duration::from_millis(10);
/// The Redis stream keeps about this many recent events; older ones are read from Postgres.
const STREAM_LENGTH: usize = 100_000;

pub struct EventSequencer {
    pub events: EventLog,
    pub conn: ConnectionManager,
    pub keys: Keys,
}

impl EventSequencer {
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let pause = match self.round().await {
                Ok(n) if n as i64 == BATCH => Duration::ZERO,
                Ok(_) => IDLE_PAUSE,
                Err(err) => {
                    tracing::warn!(%err, "event sequencing failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Numbers the waiting events and publishes them; returns how many.
    pub async fn round(&mut self) -> anyhow::Result<usize> {
        let batch = self.events.sequence(BATCH).await?;
        if !batch.is_empty()
            && let Err(err) = self.publish(&batch).await
        {
            tracing::warn!(%err, events = batch.len(), "could not append events to the Redis stream");
        }
        Ok(batch.len())
    }

    async fn publish(&mut self, batch: &[EventRecord]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for event in batch {
            pipe.cmd("XADD")
                .arg(self.keys.event_stream())
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LENGTH)
                .arg("*")
                .arg("seq")
                .arg(event.seq)
                .arg("event")
                .arg(serde_json::to_string(event)?)
                .ignore();
        }
        let () = pipe.query_async(&mut self.conn).await?;
        Ok(())
    }
}
