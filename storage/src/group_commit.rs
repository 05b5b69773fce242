//! Group commit for the ledger's hot writes (River's batch completer plays this role for
//! completions; here the API's submissions and the workers' starts go the same way).
//! Callers hand their item over and wait for its answer; one task writes everything that
//! queued up while its previous write ran, in one call. An idle process writes each item at
//! once; a busy one (its last write, less than [`IDLE_AFTER`] ago, held more than one item)
//! first lingers for more, as long as its owner chose. Writing many items per statement
//! instead of one each is what lets the ledger keep up.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

/// Most items written by one call.
const MAX_BATCH: usize = 1_000;
/// How long a busy writer waits for more items when its callers wait for the answer before
/// going on (a submission's 201): long enough to gather many requests into one statement,
/// short beside a request's own time (ADR 0007). An idle writer does not wait, so pickup
/// latency does not pay for it. The API's submissions linger so; the workers' starts have
/// their own (`START_LINGER` in the worker's executor).
pub const LINGER_WHILE_CALLERS_WAIT: Duration = Duration::from_millis(2);
/// A writer that has written nothing for this long is idle, whatever its last write held.
const IDLE_AFTER: Duration = Duration::from_millis(100);
/// Items waiting at most; executors wait to hand theirs over beyond this.
const MAX_WAITING: usize = 10_000;

/// One item's answer. The error is shared by every item of the failed write.
pub type Answer<Out> = Result<Out, Arc<sqlx::Error>>;

pub struct GroupCommit<In, Out> {
    queue: mpsc::Sender<(In, oneshot::Sender<Answer<Out>>)>,
    /// Cleared when the writing task ends for any reason but its handles being dropped.
    alive: Arc<AtomicBool>,
}

impl<In, Out> Clone for GroupCommit<In, Out> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
            alive: self.alive.clone(),
        }
    }
}

/// Clears the writer's `alive` flag when the writing task ends, however it ends (a panic
/// unwinding through it included).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// True for errors about the data of one item (SQLSTATE classes 22, data exception, and 23,
/// integrity constraint violation): writing the others without it may succeed. Any other
/// refusal (a deadlock, a timeout, an administrator's shutdown) would fail each item alone
/// just as it failed the batch.
fn refused_for_its_data(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

/// The error every item of a batch whose write panicked gets.
fn write_panicked() -> Arc<sqlx::Error> {
    Arc::new(sqlx::Error::Protocol(
        "the group-commit writer panicked while writing this batch".to_owned(),
    ))
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
        let alive = Arc::new(AtomicBool::new(true));
        let guard = Alive(alive.clone());
        tokio::spawn(async move {
            let _guard = guard;
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
                // A panic in one write fails its batch, not the writer: every later item
                // would fail too while the process looked healthy.
                let written = AssertUnwindSafe(async { write(items.clone()).await })
                    .catch_unwind()
                    .await;
                let outs = match written {
                    Ok(Ok(outs)) => outs.into_iter().map(Ok).collect(),
                    // The database refused the statement for one item's data (a NUL in an
                    // error text, say): that item must not fail the others, so each is
                    // written alone.
                    Ok(Err(err)) if items.len() > 1 && refused_for_its_data(&err) => {
                        let mut outs = Vec::with_capacity(items.len());
                        for item in items.iter() {
                            let one = AssertUnwindSafe(async {
                                write(Arc::new(vec![item.clone()])).await
                            })
                            .catch_unwind()
                            .await;
                            outs.push(match one {
                                Ok(out) => out.map(|mut one| one.remove(0)).map_err(Arc::new),
                                Err(_) => Err(write_panicked()),
                            });
                        }
                        outs
                    }
                    // Postgres unreachable, or the statement refused as a whole: every item
                    // gets the error and its sender retries as it would after a write of its
                    // own.
                    Ok(Err(err)) => {
                        let err = Arc::new(err);
                        answers.iter().map(|_| Err(err.clone())).collect::<Vec<_>>()
                    }
                    Err(_) => {
                        tracing::error!(items = items.len(), "a group-commit write panicked");
                        let err = write_panicked();
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
        GroupCommit { queue, alive }
    }

    /// False once the writing task has ended while handles remain: every submit would fail,
    /// so the process should say it is unhealthy, or stop.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use sqlx::PgPool;
    use tokio::sync::{Notify, Semaphore};

    use super::GroupCommit;

    fn pool() -> PgPool {
        let url = std::env::var("TASKFLEET_TEST_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        crate::Db::connect_lazy(&url, 2).unwrap().pool
    }

    /// Holds the writer in its write of the item `gate` until `open`, so the items submitted
    /// meanwhile form one batch.
    #[derive(Clone)]
    struct Gate {
        entered: Arc<Notify>,
        open: Arc<Semaphore>,
    }

    impl Gate {
        fn new() -> Gate {
            Gate {
                entered: Arc::new(Notify::new()),
                open: Arc::new(Semaphore::new(0)),
            }
        }
    }

    /// A writer whose statement is `sql` over the batch's items (`$1::text[]`), answering
    /// each item with a text; it counts its calls, and panics on an item `panic`.
    fn writer(
        sql: &'static str,
        gate: Gate,
        calls: Arc<AtomicUsize>,
    ) -> GroupCommit<String, String> {
        let pool = pool();
        GroupCommit::start(std::time::Duration::ZERO, move |items: Arc<Vec<String>>| {
            let (pool, gate, calls) = (pool.clone(), gate.clone(), calls.clone());
            async move {
                if items.as_slice() == ["gate"] {
                    gate.entered.notify_one();
                    let _open = gate.open.acquire().await.unwrap();
                    return Ok(vec!["gate".to_owned()]);
                }
                calls.fetch_add(1, Ordering::SeqCst);
                assert!(!items.contains(&"panic".to_owned()), "injected panic");
                sqlx::query_scalar(sql)
                    .bind(items.as_slice())
                    .fetch_all(&pool)
                    .await
            }
        })
    }

    /// Submits `items` as one batch; returns each answer, errors as text.
    async fn batch(
        writer: &GroupCommit<String, String>,
        gate: &Gate,
        items: &[&str],
    ) -> Vec<Result<String, String>> {
        let gated = tokio::spawn({
            let writer = writer.clone();
            async move { writer.submit("gate".to_owned()).await }
        });
        gate.entered.notified().await;
        let rest =
            futures::future::join_all(items.iter().map(|item| writer.submit((*item).to_owned())));
        // Polled after `rest` has queued every item.
        let open = async { gate.open.add_permits(1) };
        let (answers, ()) = tokio::join!(rest, open);
        gated.await.unwrap().unwrap();
        answers
            .into_iter()
            .map(|answer| answer.map_err(|err| err.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_batch_refused_for_one_items_data_is_written_item_by_item() {
        let (gate, calls) = (Gate::new(), Arc::new(AtomicUsize::new(0)));
        // `x` is not a number: SQLSTATE 22P02, a data exception.
        let writer = writer(
            "SELECT n::int::text FROM unnest($1::text[]) AS n",
            gate.clone(),
            calls.clone(),
        );
        let answers = batch(&writer, &gate, &["1", "x", "3"]).await;
        assert_eq!(answers[0], Ok("1".to_owned()));
        assert!(answers[1].is_err());
        assert_eq!(answers[2], Ok("3".to_owned()));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "the batch, then each item alone"
        );
    }

    #[tokio::test]
    async fn a_batch_refused_for_any_other_reason_is_not_split() {
        let (gate, calls) = (Gate::new(), Arc::new(AtomicUsize::new(0)));
        // An unknown relation is SQLSTATE 42P01, not a data error: like a deadlock or an
        // administrator's shutdown, it fails the batch as a whole.
        let writer = writer(
            "SELECT n::regclass::text FROM unnest($1::text[]) AS n",
            gate.clone(),
            calls.clone(),
        );
        let answers = batch(&writer, &gate, &["pg_class", "no_such_relation", "pg_type"]).await;
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no statement per item");
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_its_batch_and_the_writer_goes_on() {
        let (gate, calls) = (Gate::new(), Arc::new(AtomicUsize::new(0)));
        let writer = writer(
            "SELECT n FROM unnest($1::text[]) AS n",
            gate.clone(),
            calls.clone(),
        );
        let answers = batch(&writer, &gate, &["a", "panic"]).await;
        assert!(
            answers
                .iter()
                .all(|answer| answer.as_ref().is_err_and(|err| err.contains("panicked")))
        );
        assert!(writer.is_alive());
        assert_eq!(writer.submit("b".to_owned()).await.unwrap(), "b");
    }
}
