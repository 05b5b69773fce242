//! The event sequencer, run by the leader: numbers committed events (`seq`, dense and in
//! commit order) and tells API replicas over the Redis event stream how far numbering has
//! got. The stream carries only that number, one entry a round; a replica with SSE clients
//! reads the events themselves from Postgres by `seq`. When Redis misses an append, replicas
//! still find the events in Postgres (they check it while the stream is quiet or
//! unreadable), so a failed append loses nothing. Rounds run when Postgres notifies that
//! events were appended, not on a timer: an idle fleet's Postgres stays idle.

use std::time::Duration;

use taskfleet_storage::{
    EventLog, redis as tf_redis,
    redis::{Connection, Keys},
};
use tokio_util::sync::CancellationToken;

use crate::notifications::woken_by;

/// Events numbered in one round: whole batches, so a round may pass it by one batch.
const BATCH: i64 = 5_000;
/// Least time between rounds that leave nothing waiting: a busy fleet's events are
/// numbered several statements at a time, not one round per notification.
const ROUND_SPACING: Duration = Duration::from_millis(10);
/// Longest wait for a notification by default ([`EventSequencer::wake_fallback`]): a round
/// runs at least this often, so an event whose notification was lost (the listening
/// connection broke meanwhile) waits no longer.
pub const WAKE_FALLBACK: Duration = Duration::from_secs(1);

pub struct EventSequencer {
    pub events: EventLog,
    pub conn: Connection,
    pub keys: Keys,
    /// Longest wait without a notification ([`WAKE_FALLBACK`]).
    pub wake_fallback: Duration,
}

impl EventSequencer {
    pub async fn run(mut self, stop: CancellationToken) {
        let events = self.events.clone();
        let appended = woken_by(move || events.clone().listen_for_appends(), &stop);
        loop {
            let pause = match self.round().await {
                Ok(n) if n as i64 >= BATCH => Duration::ZERO,
                Ok(_) => ROUND_SPACING,
                Err(err) => {
                    tracing::warn!(%err, "event sequencing failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if pause.is_zero() {
                continue;
            }
            // A notification that came during the round or the pause left its permit: the
            // next round starts at once.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = appended.notified() => {}
                _ = tokio::time::sleep(self.wake_fallback) => {}
            }
        }
    }

    /// Numbers the waiting events and announces the highest number; returns how many.
    pub async fn round(&mut self) -> anyhow::Result<usize> {
        let numbered = self.events.sequence(BATCH).await?;
        if let Some(last_seq) = numbered.last_seq
            && let Err(err) = self.announce(last_seq).await
        {
            tracing::warn!(%err, last_seq, "could not append to the Redis event stream");
        }
        Ok(numbered.count)
    }

    async fn announce(&mut self, last_seq: i64) -> anyhow::Result<()> {
        tf_redis::announce_numbered(&mut self.conn, &self.keys, last_seq).await?;
        Ok(())
    }
}
