//! The scheduler (River's periodic job enqueuer plays this role), run by the leader: turns
//! every due slot of every schedule into a `schedule.fire` job, then moves the schedules on.
//!
//! A round pages through the due schedules, [`PAGE`] at a time: it works out each one's slots
//! in memory, inserts the fire jobs of the whole page with one ledger call, moves the page's
//! schedules on with one statement, and goes on while pages come back full, so thousands of
//! schedules on one slot fire together.
//!
//! A slot is missed only when no scheduler ran at its time (no worker, a leadership
//! hand-over, the `schedule` queue paused); a slot that came due while a scheduler ran fires
//! however late (a slow round, a Postgres pause). To tell the two apart across processes,
//! a running scheduler beats into the ledger every [`BEAT_EVERY`] (`scheduler_clock`), and the
//! next one reads there when the previous run began and when it ended. Missed slots follow
//! the schedule's policy: `skip` drops them, `catch_up_once` fires once for the latest of them.
//!
//! apalis-cron's `CronStream` fires on every replica with a fresh id per tick (DESIGN.md
//! hazard 9) and holds one fixed schedule per stream, so the slots are computed here with the
//! same `cron` crate it wraps, over schedules stored in the ledger; exactly-once comes from
//! the slot-derived idempotency keys of the fire jobs and their target jobs.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use taskfleet_jobs::{JobOptions, JobSpec, MissedPolicy, Queue, Timing, spec::ScheduleFire};
use taskfleet_storage::{
    InsertError, Inserted, Ledger, NewJob, Queues, ScheduleRecord, Schedules, redis as tf_redis,
    redis::{Connection, Keys},
    schedules::{Advance, SchedulerBeat, Skipped},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::notifications::woken_by;

/// Shortest sleep between rounds: a slot fires at most this late, and a schedule that keeps
/// failing to fire is retried no more often.
const TICK: Duration = Duration::from_millis(100);
/// Longest sleep by default ([`Scheduler::wake_fallback`]): a schedule created or resumed
/// while the change notifications were lost (their connection broke) still fires at most
/// this late.
pub const WAKE_FALLBACK: Duration = Duration::from_millis(500);
/// How often a running scheduler records that it runs. A scheduler that stopped without a
/// word is taken to have run until its last beat plus this: the slots of that last stretch
/// fire late rather than count as missed.
const BEAT_EVERY: TimeDelta = TimeDelta::seconds(1);
/// Due schedules read, fired and moved on together.
const PAGE: usize = 500;
/// Most slots one schedule fires in one visit, which bounds a page's insert; a schedule
/// further behind goes on in another pass of the same round.
const SLOTS_PER_VISIT: usize = 20;
/// Most missed slots counted one by one in a gap; past that the walk jumps to the gap's end.
const MAX_MISSED: i64 = 10_000;

pub struct Scheduler {
    schedules: Schedules,
    queues: Queues,
    ledger: Ledger,
    conn: Connection,
    keys: Keys,
    /// Longest sleep without a notification ([`WAKE_FALLBACK`]).
    pub wake_fallback: Duration,
    /// How long leadership takes to pass on when a leader steps down in good order (it
    /// gives the lease up; the others look for it every third of its ttl). A scheduler that
    /// stops so beats that far ahead: the slots of a hand-over fire late rather than count
    /// as missed. A leader that dies without a word leaves a gap, and its slots are missed.
    pub handover: TimeDelta,
    /// When schedulers ran, as far as this one knows; none before its first round and while
    /// the `schedule` queue is paused.
    coverage: Option<Coverage>,
    /// This scheduler's own run, ended by a pause of the `schedule` queue.
    paused_run: Option<Run>,
}

impl Scheduler {
    pub fn new(
        schedules: Schedules,
        queues: Queues,
        ledger: Ledger,
        conn: Connection,
        keys: Keys,
    ) -> Scheduler {
        Scheduler {
            schedules,
            queues,
            ledger,
            conn,
            keys,
            wake_fallback: WAKE_FALLBACK,
            handover: TimeDelta::zero(),
            coverage: None,
            paused_run: None,
        }
    }

    /// Sleeps until the next slot is due, or until schedules or queue pauses change (Postgres
    /// notifies), instead of looking every tick.
    pub async fn run(mut self, stop: CancellationToken) {
        let schedules = self.schedules.clone();
        let changed = woken_by(move || schedules.clone().listen_for_changes(), &stop);
        loop {
            let sleep = match self.round().await {
                Ok(Some(next_due)) => next_due.clamp(TICK, self.wake_fallback),
                Ok(None) => self.wake_fallback,
                // Soon again: what came due meanwhile fires late, it is not missed.
                Err(err) => {
                    tracing::warn!(%err, "scheduler round failed");
                    TICK
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return self.hand_over().await,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// The parting beat of a scheduler that stops in good order: its run is taken to last
    /// until a successor can have taken over.
    async fn hand_over(&self) {
        let Some(coverage) = &self.coverage else {
            return;
        };
        let parting = coverage.ran_at + self.handover;
        if let Err(err) = self.schedules.beat(coverage.since, parting).await {
            tracing::debug!(%err, "could not record the scheduler's hand-over");
        }
    }

    /// Fires what is due; returns how long until the next slot, `None` when there is none
    /// to wait for (no schedule has one, or the `schedule` queue is paused).
    pub async fn round(&mut self) -> anyhow::Result<Option<Duration>> {
        // While an operator pauses the `schedule` queue nothing fires and the scheduler counts
        // as not running: the slots that pass are missed, and each schedule's policy decides
        // about them on resume, instead of a pile of fire jobs running all at once.
        if self.queues.paused().await?.contains(&Queue::Schedule) {
            if let Some(coverage) = self.coverage.take() {
                self.paused_run = Some(Run {
                    since: coverage.since,
                    until: coverage.ran_at,
                });
            }
            return Ok(None);
        }
        // One clock for the whole round, Postgres's (the one `due` compares with).
        let now = self.schedules.now().await?;
        let coverage = self.keep_time(now).await?;
        let mut after = None;
        let mut behind = false;
        loop {
            let page = self.schedules.due(now, after, PAGE as i64).await?;
            behind |= self.fire_page(&page, &coverage, now).await?;
            let last = page.last().and_then(|s| Some((s.next_fire_at?, s.id)));
            if page.len() == PAGE && last.is_some() {
                after = last;
            } else if std::mem::take(&mut behind) {
                // Schedules more than a visit behind: another pass from the start.
                after = None;
            } else {
                break;
            }
        }
        Ok(self.schedules.until_next_due().await?)
    }

    /// What this scheduler knows at `now` of when schedulers ran, recording that it runs
    /// when a beat is due. A round that fails keeps what it knew: this scheduler was running
    /// all along, however long Postgres was away.
    async fn keep_time(&mut self, now: DateTime<Utc>) -> sqlx::Result<Coverage> {
        if self.coverage.is_none() {
            let previous = match self.paused_run {
                Some(run) => Some(run),
                None => self
                    .schedules
                    .last_beat()
                    .await?
                    .map(Run::until_beat_lapsed),
            };
            self.coverage = Some(Coverage::start(previous, now));
            self.paused_run = None;
        }
        let coverage = self.coverage.as_mut().expect("started above");
        coverage.ran_at = now;
        if coverage.beaten_at.is_none_or(|at| now - at >= BEAT_EVERY) {
            self.schedules.beat(coverage.since, now).await?;
            coverage.beaten_at = Some(now);
        }
        Ok(coverage.clone())
    }

    /// Fires the due slots of a page of schedules and moves them on; true if one of them is
    /// still behind after its visit.
    async fn fire_page(
        &mut self,
        page: &[ScheduleRecord],
        coverage: &Coverage,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let mut tenants = Vec::new();
        let mut jobs = Vec::new();
        let mut moves = Vec::with_capacity(page.len());
        let mut behind = false;
        for schedule in page {
            let visit = match visit(schedule, coverage, now) {
                Ok(visit) => visit,
                // One broken schedule must not hold the others back; the round pages past it.
                Err(err) => {
                    tracing::warn!(%err, schedule = %schedule.id, "could not fire schedule");
                    continue;
                }
            };
            for (fire_at, catch_up) in visit.fires {
                tenants.push(schedule.tenant_id);
                jobs.push(fire_job(schedule.id, fire_at, catch_up));
            }
            behind |= visit.behind;
            moves.push(visit.advance);
        }
        let created = self.insert_fire_jobs(tenants, jobs).await?;
        if !moves.is_empty() {
            self.schedules.advance(&moves).await?;
        }
        if created {
            tf_redis::wake_dispatcher(&mut self.conn, &self.keys).await;
        }
        Ok(behind)
    }

    /// Inserts fire jobs, `tenants[i]` owning `jobs[i]`; true if it created any.
    async fn insert_fire_jobs(
        &self,
        mut tenants: Vec<Uuid>,
        mut jobs: Vec<NewJob>,
    ) -> anyhow::Result<bool> {
        while !jobs.is_empty() {
            match self
                .ledger
                .insert_for(&tenants, &jobs, &[], "scheduler")
                .await
            {
                Ok(inserted) => {
                    return Ok(inserted
                        .iter()
                        .any(|job| matches!(job, Inserted::Created(_))));
                }
                // A slot one scheduler fired on time and another saw as missed (or the
                // reverse) has its fire job already, which is all that matters. The call
                // inserted nothing: again without that job.
                Err(InsertError::IdempotencyConflict { index, .. }) => {
                    tenants.remove(index);
                    jobs.remove(index);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(false)
    }
}

/// A `schedule.fire` job for one slot, keyed by the slot so it exists once however many
/// schedulers get there.
fn fire_job(schedule_id: Uuid, fire_at: DateTime<Utc>, catch_up: bool) -> NewJob {
    NewJob::new(
        JobSpec::ScheduleFire(ScheduleFire {
            schedule_id,
            fire_at,
            catch_up,
            options: JobOptions {
                idempotency_key: Some(taskfleet_jobs::schedule::fire_key(schedule_id, fire_at)),
                ..JobOptions::default()
            },
        }),
        None,
    )
}

/// A stretch of time schedulers ran without a break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Run {
    /// The run a beat records, taken to last until the next beat was due.
    fn until_beat_lapsed(beat: SchedulerBeat) -> Run {
        Run {
            since: beat.running_since,
            until: beat.beat_at + BEAT_EVERY,
        }
    }
}

/// What a running scheduler knows of when schedulers ran: the stretches before its run when
/// none did, where slots are missed. Every other slot fires, however late.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Coverage {
    /// Schedulers have run without a break since then; each beat records it.
    since: DateTime<Utc>,
    /// Gaps as open intervals `(after, before)`; no `after` means all time before.
    gaps: Vec<(Option<DateTime<Utc>>, DateTime<Utc>)>,
    /// The clock of the latest round.
    ran_at: DateTime<Utc>,
    /// The clock of the latest beat written.
    beaten_at: Option<DateTime<Utc>>,
}

impl Coverage {
    /// Starting (or resuming) at `now` after `previous`, the last run known.
    fn start(previous: Option<Run>, now: DateTime<Utc>) -> Coverage {
        let (since, gaps) = match previous {
            None => (now, vec![(None, now)]),
            // Taking over without a break: a quick hand-over, or two leaders overlapping.
            Some(run) if run.until >= now => (run.since, vec![(None, run.since)]),
            Some(run) => (now, vec![(None, run.since), (Some(run.until), now)]),
        };
        Coverage {
            since,
            gaps,
            ran_at: now,
            beaten_at: None,
        }
    }

    /// The end of the gap `slot` falls in, if no scheduler ran at its time.
    fn gap_around(&self, slot: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.gaps
            .iter()
            .find(|(after, before)| after.is_none_or(|after| slot > after) && slot < *before)
            .map(|&(_, before)| before)
    }
}

/// What one visit does with a due schedule.
#[derive(Debug, PartialEq)]
struct Visit {
    /// Slots to fire, each with its `catch_up` flag.
    fires: Vec<(DateTime<Utc>, bool)>,
    advance: Advance,
    /// Due slots remain for another visit.
    behind: bool,
}

fn visit(
    schedule: &ScheduleRecord,
    coverage: &Coverage,
    now: DateTime<Utc>,
) -> anyhow::Result<Visit> {
    let timing = Timing::parse(
        schedule.cron.as_deref(),
        schedule.time_zone.as_deref(),
        schedule.at,
        None,
    )?;
    let policy = schedule.missed.parse::<MissedPolicy>()?;
    let from = schedule
        .next_fire_at
        .ok_or_else(|| anyhow::anyhow!("due without a next slot"))?;
    Ok(walk(&timing, policy, schedule.id, from, coverage, now))
}

/// Walks a schedule's slots from `from` up to `now`: slots in a gap are missed, the others
/// fire, up to [`SLOTS_PER_VISIT`].
fn walk(
    timing: &Timing,
    policy: MissedPolicy,
    id: Uuid,
    from: DateTime<Utc>,
    coverage: &Coverage,
    now: DateTime<Utc>,
) -> Visit {
    let mut fires = Vec::new();
    // The missed slots, and the one missed before the latest (what catching up leaves).
    let mut missed: Option<Skipped> = None;
    let mut before_last = None;
    let mut slot = Some(from);
    let mut behind = false;
    while let Some(at) = slot.filter(|at| *at <= now) {
        if let Some(gap_end) = coverage.gap_around(at) {
            let counted = missed.get_or_insert(Skipped {
                count: 0,
                first: at,
                last: at,
            });
            before_last = (counted.count > 0).then_some(counted.last);
            counted.count += 1;
            counted.last = at;
            slot = match counted.count >= MAX_MISSED {
                // The first slot at the gap's end or after.
                true => timing.next_after(gap_end - TimeDelta::nanoseconds(1)),
                false => timing.next_after(at),
            };
        } else if fires.len() == SLOTS_PER_VISIT {
            behind = true;
            break;
        } else {
            fires.push((at, false));
            slot = timing.next_after(at);
        }
    }
    let skipped = match (policy, missed) {
        (MissedPolicy::CatchUpOnce, Some(missed)) => {
            fires.insert(0, (missed.last, true));
            before_last.map(|last| Skipped {
                count: missed.count - 1,
                last,
                ..missed
            })
        }
        (_, missed) => missed,
    };
    Visit {
        fires,
        advance: Advance {
            id,
            from,
            next: slot,
            skipped,
        },
        behind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn every_second() -> Timing {
        Timing::parse(Some("* * * * * *"), None, None, None).unwrap()
    }

    fn slots(visit: &Visit) -> Vec<(i64, bool)> {
        visit
            .fires
            .iter()
            .map(|(slot, catch_up)| (slot.timestamp() - at(0).timestamp(), *catch_up))
            .collect()
    }

    #[test]
    fn a_first_scheduler_misses_what_came_before_it() {
        let coverage = Coverage::start(None, at(10));
        assert_eq!(coverage.since, at(10));
        assert_eq!(coverage.gap_around(at(9)), Some(at(10)));
        assert_eq!(coverage.gap_around(at(10)), None);
    }

    #[test]
    fn a_takeover_within_a_beat_misses_nothing_of_the_previous_run() {
        let previous = Run {
            since: at(0),
            until: at(12),
        };
        let coverage = Coverage::start(Some(previous), at(11));
        assert_eq!(coverage.since, at(0), "one unbroken run");
        assert_eq!(coverage.gap_around(at(5)), None);
        assert_eq!(coverage.gap_around(at(-1)), Some(at(0)));
    }

    #[test]
    fn a_takeover_after_a_gap_misses_only_the_gap() {
        let previous = Run {
            since: at(0),
            until: at(12),
        };
        let coverage = Coverage::start(Some(previous), at(20));
        assert_eq!(coverage.since, at(20));
        assert_eq!(coverage.gap_around(at(12)), None, "the last beat's stretch");
        assert_eq!(coverage.gap_around(at(13)), Some(at(20)));
        assert_eq!(coverage.gap_around(at(20)), None);
    }

    #[test]
    fn slots_due_while_running_fire_however_late() {
        let coverage = Coverage::start(None, at(0));
        let visit = walk(
            &every_second(),
            MissedPolicy::Skip,
            Uuid::nil(),
            at(1),
            &coverage,
            at(5),
        );
        assert_eq!(
            slots(&visit),
            [(1, false), (2, false), (3, false), (4, false), (5, false)]
        );
        assert_eq!(
            (visit.advance.next, visit.advance.skipped),
            (Some(at(6)), None)
        );
        assert!(!visit.behind);
    }

    #[test]
    fn a_schedule_far_behind_fires_a_bounded_visit_and_stays_due() {
        let coverage = Coverage::start(None, at(0));
        let visit = walk(
            &every_second(),
            MissedPolicy::Skip,
            Uuid::nil(),
            at(0),
            &coverage,
            at(100),
        );
        assert_eq!(visit.fires.len(), SLOTS_PER_VISIT);
        assert_eq!(visit.advance.next, Some(at(SLOTS_PER_VISIT as i64)));
        assert!(visit.behind);
    }

    #[test]
    fn missed_slots_are_skipped_or_caught_up_once() {
        let previous = Run {
            since: at(0),
            until: at(2),
        };
        let coverage = Coverage::start(Some(previous), at(8));
        let skip = walk(
            &every_second(),
            MissedPolicy::Skip,
            Uuid::nil(),
            at(2),
            &coverage,
            at(9),
        );
        assert_eq!(slots(&skip), [(2, false), (8, false), (9, false)]);
        let skipped = Skipped {
            count: 5,
            first: at(3),
            last: at(7),
        };
        assert_eq!(skip.advance.skipped, Some(skipped));

        let catch_up = walk(
            &every_second(),
            MissedPolicy::CatchUpOnce,
            Uuid::nil(),
            at(2),
            &coverage,
            at(9),
        );
        assert_eq!(
            slots(&catch_up),
            [(7, true), (2, false), (8, false), (9, false)]
        );
        let rest = Skipped {
            count: 4,
            last: at(6),
            ..skipped
        };
        assert_eq!(catch_up.advance.skipped, Some(rest));
    }

    #[test]
    fn one_missed_slot_caught_up_leaves_nothing_skipped() {
        let coverage = Coverage::start(None, at(5));
        let visit = walk(
            &every_second(),
            MissedPolicy::CatchUpOnce,
            Uuid::nil(),
            at(4),
            &coverage,
            at(5),
        );
        assert_eq!(slots(&visit), [(4, true), (5, false)]);
        assert_eq!(visit.advance.skipped, None);
    }

    #[test]
    fn a_long_gap_is_counted_up_to_a_bound_then_jumped() {
        let coverage = Coverage::start(None, at(50_000));
        let visit = walk(
            &every_second(),
            MissedPolicy::Skip,
            Uuid::nil(),
            at(0),
            &coverage,
            at(50_000),
        );
        assert_eq!(slots(&visit), [(50_000, false)]);
        let skipped = visit.advance.skipped.unwrap();
        assert_eq!(
            (skipped.count, skipped.last),
            (MAX_MISSED, at(MAX_MISSED - 1))
        );
    }
}
