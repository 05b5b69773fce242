//! Group commit for the ledger's hot writes (River's batch completer plays this role for
//! completions; here the API's submissions and the workers' starts go the same way).
//! Callers hand their item over and wait for its answer; one task writes everything that
//! queued up while its previous write ran, in one call. An idle process writes each item at
//! once; a busy one (its last write, less than [`IDLE_AFTER`] ago, held more than one item)
//! first lingers for more, as long as its owner chose. Writing many items per statement
//! instead of one each is what lets the ledger keep up.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

/// Most items written by one call.
const MAX_BATCH: usize = 1_000;
/// How long a busy writer waits for more items when its callers wait for the answer before
/// going on (a job's start, a submission's 201). Measured on the burn-down when outcomes
/// were waited for too: without it, starts and outcomes were written about 8 to a statement
/// and 2,800–3,200 jobs/s drained; with 2 ms, 12–15 to a statement and 3,600–3,800 jobs/s;
/// 5 ms did no better. An idle writer does not wait, so pickup latency does not pay for it.
/// The API's submissions linger so; the workers' starts linger 1 ms (`START_LINGER` in the
/// worker's executor).
pub const LINGER_WHILE_CALLERS_WAIT: Duration = Duration::from_millis(2);
/// A writer that has written nothing for this long is idle, whatever its last write held.
const IDLE_AFTER: Duration = Duration::from_millis(100);
/// Items waiting at most; executors wait to hand theirs over beyond this.
const MAX_WAITING: usize = 10_000;

/// One item's answer. The error is shared by every item of the failed write.
pub type Answer<Out> = Result<Out, Arc<sqlx::Error>>;

pub struct GroupCommit<In, Out> {
    queue: mpsc::Sender<(In, oneshot::Sender<Answer<Out>>)>,
}

impl<In, Out> Clone for GroupCommit<In, Out> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
        }
    }
}

impl<In: Clone + Send + Sync + 'static, Out: Send + 'static> GroupCommit<In, Out> {
    /// Starts the writing task, which lingers `linger` for more items while busy. `write`
    /// gets a batch (shared, so a batch Postgres refuses can be split without copying every
    /// accepted one) and answers one `Out` per item, in order, landing the batch whole or not
    /// at all. The task ends when every clone of the returned handle is gone.
    pub fn start<W, F>(linger: Duration, mut write: W) -> GroupCommit<In, Out>
    where
        W: FnMut(Arc<Vec<In>>) -> F + Send + 'static,
        F: Future<Output = sqlx::Result<Vec<Out>>> + Send,
    {
        let (queue, mut waiting) = mpsc::channel::<(In, oneshot::Sender<Answer<Out>>)>(MAX_WAITING);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut busy = false;
            let mut last_write = Instant::now();
            while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
                // Busy means the last write held several items and ended moments ago; after
                // a pause, even one that follows a burst, the writer is idle again.
                if busy && last_write.elapsed() < IDLE_AFTER && batch.len() < MAX_BATCH {
                    tokio::time::sleep(linger).await;
                    while batch.len() < MAX_BATCH
                        && let Ok(item) = waiting.try_recv()
                    {
                        batch.push(item);
                    }
                }
                busy = batch.len() > 1;
                let (items, answers): (Vec<In>, Vec<_>) = batch.drain(..).unzip();
                let items = Arc::new(items);
                let outs = match write(items.clone()).await {
                    Ok(outs) => outs.into_iter().map(Ok).collect(),
                    // The database refused the statement: one item it cannot take (a NUL in
                    // an error text, say) must not fail the others, so each is written alone.
                    Err(sqlx::Error::Database(_)) if items.len() > 1 => {
                        let mut outs = Vec::with_capacity(items.len());
                        for item in items.iter() {
                            let out = write(Arc::new(vec![item.clone()]))
                                .await
                                .map(|mut one| one.remove(0));
                            outs.push(out.map_err(Arc::new));
                        }
                        outs
                    }
                    // Postgres unreachable, or a lone item refused: every item gets the error
                    // and its sender retries as it would after a write of its own.
                    Err(err) => {
                        let err = Arc::new(err);
                        answers.iter().map(|_| Err(err.clone())).collect::<Vec<_>>()
                    }
                };
                last_write = Instant::now();
                debug_assert_eq!(outs.len(), answers.len());
                for (answer, out) in answers.into_iter().zip(outs) {
                    let _ = answer.send(out);
                }
            }
        });
        GroupCommit { queue }
    }

    /// Writes `item` with whatever else is waiting and returns its answer.
    pub async fn submit(&self, item: In) -> Answer<Out> {
        let (answer, answered) = oneshot::channel();
        if self.queue.send((item, answer)).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}
