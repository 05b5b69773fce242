//! Names of the events every lifecycle transition appends to the ledger.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    JobEnqueued,
    JobDispatched,
    JobStarted,
    JobRetryScheduled,
    JobSucceeded,
    JobDead,
}

impl EventName {
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::JobEnqueued => "job_enqueued",
            EventName::JobDispatched => "job_dispatched",
            EventName::JobStarted => "job_started",
            EventName::JobRetryScheduled => "job_retry_scheduled",
            EventName::JobSucceeded => "job_succeeded",
            EventName::JobDead => "job_dead",
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
