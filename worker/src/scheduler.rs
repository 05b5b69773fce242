//! The scheduler (River's periodic job enqueuer plays this role), run by the leader: turns
//! each due slot of each schedule into a `schedule.fire` job, then moves the schedule on to its
//! next slot. Slots missed by more than [`MISSED_AFTER`] (no worker ran, or leadership was
//! changing hands) follow the schedule's policy: `skip` drops them, `catch_up_once` fires once
//! for the latest of them.
//!
//! apalis-cron's `CronStream` fires on every replica with a fresh id per tick (DESIGN.md
//! hazard 9) and holds one fixed schedule per stream, so the slots are computed here with the
//! same `cron` crate it wraps, over schedules stored in the ledger; exactly-once comes from
//! the slot-derived idempotency keys of the fire jobs and their target jobs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde_json::json;
use taskfleet_jobs::{
    EventName, JobOptions, JobSpec, MissedPolicy, Queue, Timing, spec::ScheduleFire,
};
use taskfleet_storage::{
    InsertError, Ledger, NewJob, Queues, ScheduleRecord, Schedules, redis as tf_redis, redis::Keys,
};
use tokio_util::sync::CancellationToken;

use crate::notifications::woken_by;

/// Shortest sleep between rounds: a slot fires at most this late, and a schedule that keeps
/// failing to fire is retried no more often.
const TICK: Duration = Duration::from_millis(100);
/// Longest sleep by default ([`Scheduler::wake_fallback`]): a schedule created or resumed
/// while the change notifications were lost (their connection broke) is still found well
/// within [`MISSED_AFTER`].
pub const WAKE_FALLBACK: Duration = Duration::from_millis(500);
/// A slot later than this is missed rather than merely late.
pub const MISSED_AFTER: Duration = Duration::from_secs(1);
/// Most slots looked at for one schedule in one round.
const MAX_SLOTS: usize = 10_000;

pub struct Scheduler {
    pub schedules: Schedules,
    pub queues: Queues,
    pub ledger: Ledger,
    pub conn: ConnectionManager,
    pub keys: Keys,
    /// Longest sleep without a notification ([`WAKE_FALLBACK`]).
    pub wake_fallback: Duration,
}

impl Scheduler {
    /// Sleeps until the next slot is due, or until schedules or queue pauses change (Postgres
    /// notifies), instead of looking every tick.
    pub async fn run(mut self, stop: CancellationToken) {
        let schedules = self.schedules.clone();
        let changed = woken_by(move || schedules.clone().listen_for_changes(), &stop);
        loop {
            let sleep = match self.round().await {
                Ok(Some(next_due)) => next_due.clamp(TICK, self.wake_fallback),
                Ok(None) => self.wake_fallback,
                // Soon again, as before: a slot due now turns into a missed one after a second.
                Err(err) => {
                    tracing::warn!(%err, "scheduler round failed");
                    TICK
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Fires what is due; returns how long until the next slot, `None` when there is none
    /// to wait for (no schedule has one, or the `schedule` queue is paused).
    pub async fn round(&mut self) -> anyhow::Result<Option<Duration>> {
        // While an operator pauses the `schedule` queue nothing fires; the slots that pass
        // meanwhile are missed, and each schedule's policy decides about them on resume,
        // instead of a pile of fire jobs running all at once.
        if self.queues.paused().await?.contains(&Queue::Schedule) {
            return Ok(None);
        }
        // One clock for the whole round, Postgres's (the one `due` compares with): a round
        // that takes long, or a worker clock that is off, does not turn slots into misses.
        let now = self.schedules.now().await?;
        let mut fired = false;
        for schedule in self.schedules.due(100).await? {
            match self.fire_due(&schedule, now).await {
                Ok(created) => fired |= created,
                // One broken schedule must not hold the others back.
                Err(err) => {
                    tracing::warn!(%err, schedule = %schedule.id, "could not fire schedule")
                }
            }
        }
        if fired {
            tf_redis::wake_dispatcher(&mut self.conn, &self.keys).await;
        }
        Ok(self.schedules.until_next_due().await?)
    }

    /// Fires the due slots of one schedule and moves it on; true if it created fire jobs.
    async fn fire_due(
        &mut self,
        schedule: &ScheduleRecord,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let Some(from) = schedule.next_fire_at else {
            return Ok(false);
        };
        let timing = Timing::parse(
            schedule.cron.as_deref(),
            schedule.time_zone.as_deref(),
            schedule.at,
            None,
        )?;
        let mut slots = vec![from];
        while let Some(next) = timing.next_after(*slots.last().expect("one slot at least")) {
            if next > now || slots.len() >= MAX_SLOTS {
                break;
            }
            slots.push(next);
        }
        let missed_before = now - MISSED_AFTER;
        let (missed, on_time): (Vec<_>, Vec<_>) =
            slots.into_iter().partition(|slot| *slot < missed_before);
        let mut fires: Vec<(DateTime<Utc>, bool)> =
            on_time.iter().map(|slot| (*slot, false)).collect();
        let mut skipped = missed.clone();
        if schedule.missed.parse::<MissedPolicy>()? == MissedPolicy::CatchUpOnce
            && let Some(latest) = skipped.pop()
        {
            fires.insert(0, (latest, true));
        }
        let jobs: Vec<NewJob> = fires
            .iter()
            .map(|&(fire_at, catch_up)| {
                NewJob::new(
                    JobSpec::ScheduleFire(ScheduleFire {
                        schedule_id: schedule.id,
                        fire_at,
                        catch_up,
                        options: JobOptions {
                            // One fire job per slot, however many schedulers get here.
                            idempotency_key: Some(format!(
                                "fire:{}:{}",
                                schedule.id,
                                fire_at.to_rfc3339()
                            )),
                            ..JobOptions::default()
                        },
                    }),
                    None,
                )
            })
            .collect();
        if !jobs.is_empty() {
            match self
                .ledger
                .insert(schedule.tenant_id, &jobs, "scheduler")
                .await
            {
                Ok(_) => {}
                // A slot first fired on time and now seen as missed (or the reverse) after a
                // leader change: its fire job exists already, which is all that matters.
                Err(InsertError::IdempotencyConflict { .. } | InsertError::KeyReleased { .. }) => {}
                Err(InsertError::Db(err)) => return Err(err.into()),
            }
        }
        let last_considered = missed.iter().chain(&on_time).max().copied().unwrap_or(from);
        let next = timing.next_after(last_considered.max(now));
        let moved = self.schedules.advance(schedule.id, from, next).await?;
        if moved && !skipped.is_empty() {
            let details = json!({
                "schedule_id": schedule.id,
                "policy": schedule.missed,
                "skipped": skipped.len(),
                "first": skipped.first(),
                "last": skipped.last(),
            });
            self.schedules
                .record_event(schedule, EventName::ScheduleSkipped, None, details)
                .await?;
        }
        Ok(!jobs.is_empty())
    }
}
