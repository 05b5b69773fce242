//! Runs one delivered job: start it in the ledger (of several deliveries of one job only one
//! can start), run its handler with panics caught, and record the outcome under the epoch the
//! start returned, retrying the ledger write while Postgres is unreachable.

use std::{panic::AssertUnwindSafe, time::Duration};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use taskfleet_jobs::{JobSpec, RetryPolicy};
use taskfleet_storage::{Ledger, StartedJob};
use uuid::Uuid;

use crate::handlers::{self, HandlerResult, JobFailure};

/// How long a finished job's outcome is retried against an unreachable ledger before the
/// worker gives up on it (the job then stays `running` in the ledger).
const RECORD_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct JobExecutor {
    ledger: Ledger,
    /// Names this process in the ledger (`jobs.worker`, event actors).
    worker: String,
}

impl JobExecutor {
    pub fn new(ledger: Ledger, worker: String) -> JobExecutor {
        JobExecutor { ledger, worker }
    }

    pub async fn execute(&self, job_id: Uuid) {
        let started = match self.ledger.start(job_id, &self.worker).await {
            Ok(Some(started)) => started,
            Ok(None) => {
                tracing::debug!(%job_id, "not startable (duplicate delivery or finished); skipped");
                return;
            }
            Err(err) => {
                // Still `queued` and dispatched in the ledger: it is pushed again later.
                tracing::warn!(%job_id, %err, "could not start job; it will be redelivered");
                return;
            }
        };
        let span = tracing::info_span!("job", %job_id, attempt = started.attempt);
        let _enter = span.enter();
        let (outcome, retry_at) = match serde_json::from_value::<JobSpec>(started.payload.clone()) {
            Ok(spec) => {
                let outcome = AssertUnwindSafe(handlers::run(&spec))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        Err(JobFailure {
                            message: format!("handler panicked: {}", panic_message(&*panic)),
                            permanent: false,
                        })
                    });
                let retry_at = match &outcome {
                    Err(failure)
                        if !failure.permanent && started.attempt < started.max_attempts =>
                    {
                        let policy = RetryPolicy::for_queue(spec.queue());
                        Some(Utc::now() + policy.delay(started.attempt as u32, &mut rand::rng()))
                    }
                    _ => None,
                };
                (outcome, retry_at)
            }
            Err(err) => (
                Err(JobFailure::permanent(format!(
                    "payload does not decode: {err}"
                ))),
                None,
            ),
        };
        self.record(&started, outcome, retry_at).await;
    }

    /// Writes the outcome; a failure with `retry_at` waits for another attempt, one without
    /// is dead.
    async fn record(
        &self,
        job: &StartedJob,
        outcome: HandlerResult,
        retry_at: Option<DateTime<Utc>>,
    ) {
        let deadline = tokio::time::Instant::now() + RECORD_DEADLINE;
        let mut pause = Duration::from_millis(100);
        loop {
            let written = match &outcome {
                Ok(result) => {
                    self.ledger
                        .succeed(job.id, job.lease_epoch, &self.worker, result)
                        .await
                }
                Err(failure) => {
                    self.ledger
                        .fail(
                            job.id,
                            job.lease_epoch,
                            &self.worker,
                            &failure.message,
                            retry_at,
                        )
                        .await
                }
            };
            match written {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(
                        "stale epoch: another start superseded this one; outcome dropped"
                    );
                    return;
                }
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%err, "could not record the outcome; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    tracing::error!(%err, "gave up recording the outcome");
                    return;
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
