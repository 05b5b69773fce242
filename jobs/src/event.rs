//! Names of the events every lifecycle transition appends to the ledger.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    JobEnqueued,
    JobDispatched,
    JobStarted,
    JobRetryScheduled,
    JobProgress,
    JobSucceeded,
    /// An attempt failed; `job_retry_scheduled` or `job_dead` follows.
    JobFailed,
    JobDead,
    JobCancelled,
    JobCancelRequested,
    JobRetried,
    JobHandedBack,
    LeaseReclaimed,
    ScheduleFired,
    ScheduleSkipped,
    WorkerOnline,
    WorkerOffline,
    /// An operator paused a queue: its jobs are accepted but do not start.
    QueuePaused,
    QueueResumed,
    /// A worker wrote with an epoch that is no longer the job's: nothing changed.
    StaleWriteRejected,
}

impl EventName {
    /// Events after which a job does nothing more unless retried by hand.
    pub const TERMINAL: [EventName; 3] = [
        EventName::JobSucceeded,
        EventName::JobDead,
        EventName::JobCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventName::JobEnqueued => "job_enqueued",
            EventName::JobDispatched => "job_dispatched",
            EventName::JobStarted => "job_started",
            EventName::JobRetryScheduled => "job_retry_scheduled",
            EventName::JobSucceeded => "job_succeeded",
            EventName::JobProgress => "job_progress",
            EventName::JobFailed => "job_failed",
            EventName::JobDead => "job_dead",
            EventName::JobCancelled => "job_cancelled",
            EventName::JobCancelRequested => "job_cancel_requested",
            EventName::JobRetried => "job_retried",
            EventName::JobHandedBack => "job_handed_back",
            EventName::LeaseReclaimed => "lease_reclaimed",
            EventName::ScheduleFired => "schedule_fired",
            EventName::ScheduleSkipped => "schedule_skipped",
            EventName::WorkerOnline => "worker_online",
            EventName::WorkerOffline => "worker_offline",
            EventName::QueuePaused => "queue_paused",
            EventName::QueueResumed => "queue_resumed",
            EventName::StaleWriteRejected => "stale_write_rejected",
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
